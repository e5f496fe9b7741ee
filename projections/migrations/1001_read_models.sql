-- Read models. Every row records the last event applied to it (`version`, the
-- aggregate's sequence, and its `global_position`), which is how a redelivered
-- event is recognised and skipped. Versions start at 1001 so that these
-- migrations never collide with the event store's.

CREATE TABLE order_summary
(
    order_id            uuid        NOT NULL PRIMARY KEY,
    customer_id         text        NOT NULL,
    status              text        NOT NULL,
    lines               jsonb       NOT NULL,
    total_cents         bigint      NOT NULL,
    currency            text        NOT NULL,
    payment_method      text        NOT NULL,
    cancellation_reason text,
    placed_at           timestamptz NOT NULL,
    updated_at          timestamptz NOT NULL,
    version             bigint      NOT NULL,
    global_position     bigint      NOT NULL
);
CREATE INDEX order_summary_newest ON order_summary (placed_at DESC, order_id DESC);
CREATE INDEX order_summary_by_status ON order_summary (status, placed_at DESC, order_id DESC);

CREATE TABLE product_stock
(
    sku             text        NOT NULL PRIMARY KEY,
    name            text        NOT NULL,
    price_cents     bigint      NOT NULL,
    currency        text        NOT NULL,
    on_hand         bigint      NOT NULL,
    reserved        bigint      NOT NULL,
    created_at      timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL,
    version         bigint      NOT NULL,
    global_position bigint      NOT NULL
);

-- Each customer's orders, newest first.
CREATE TABLE customer_order
(
    order_id        uuid        NOT NULL PRIMARY KEY,
    customer_id     text        NOT NULL,
    status          text        NOT NULL,
    total_cents     bigint      NOT NULL,
    currency        text        NOT NULL,
    placed_at       timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL,
    version         bigint      NOT NULL,
    global_position bigint      NOT NULL
);
CREATE INDEX customer_order_by_customer ON customer_order (customer_id, placed_at DESC, order_id DESC);
CREATE INDEX customer_order_by_customer_status ON customer_order (customer_id, status, placed_at DESC, order_id DESC);

-- Where each projection's consumer is in each partition, written in the
-- transaction that applies the messages before it.
CREATE TABLE projection_offsets
(
    projection  text        NOT NULL,
    topic       text        NOT NULL,
    partition   integer     NOT NULL,
    next_offset bigint      NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (projection, topic, partition)
);

-- Each projection's progress in the event store's global order.
CREATE TABLE projection_status
(
    projection           text        NOT NULL PRIMARY KEY,
    last_global_position bigint      NOT NULL DEFAULT 0,
    updated_at           timestamptz NOT NULL DEFAULT now(),
    rebuilt_at           timestamptz
);
