-- An order's shipments and returns, as the domain folds them (orders placed
-- before shipments existed have none), and each order's money: what was
-- authorized, captured and refunded, folded from its payment.
ALTER TABLE order_summary
    ADD COLUMN IF NOT EXISTS fulfilment jsonb NOT NULL DEFAULT '{"shipments": [], "returns": []}';

CREATE TABLE IF NOT EXISTS order_payment
(
    order_id        uuid        NOT NULL PRIMARY KEY,
    status          text        NOT NULL,
    currency        text        NOT NULL,
    authorized_cents bigint     NOT NULL,
    captured_cents  bigint      NOT NULL,
    refunded_cents  bigint      NOT NULL,
    -- The payment as the domain folds it, from which the figures above are read.
    state           jsonb       NOT NULL,
    updated_at      timestamptz NOT NULL,
    version         bigint      NOT NULL,
    global_position bigint      NOT NULL
);
