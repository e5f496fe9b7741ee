-- The order sagas: one row per order, the saga itself as JSON, and a version
-- for optimistic locking. Versions start at 2001, beside the event store's and
-- the read models' migrations in the same database.

CREATE TABLE sagas
(
    order_id        text        NOT NULL PRIMARY KEY,
    state           text        NOT NULL,
    saga            jsonb       NOT NULL,
    version         bigint      NOT NULL,
    -- The customer's reason, once the order's OrderCancelled event arrived;
    -- the driver takes it in at its next step.
    cancel_reason   text,
    -- Nothing left to do: the saga ended and no cancel waits.
    done            boolean     NOT NULL DEFAULT false,
    -- An undo has failed so many times in a row that someone should look.
    needs_attention boolean     NOT NULL DEFAULT false,
    -- When to try the next step again after a failure.
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX sagas_due ON sagas (next_attempt_at) WHERE NOT done;
