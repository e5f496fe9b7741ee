-- Every action an operator took on an order's saga: who, when, what, why.
CREATE TABLE saga_actions (
    id        bigserial PRIMARY KEY,
    order_id  text        NOT NULL,
    action    text        NOT NULL CHECK (action IN ('retried')),
    reason    text,
    actor     text        NOT NULL,
    at        timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX saga_actions_order ON saga_actions (order_id);
