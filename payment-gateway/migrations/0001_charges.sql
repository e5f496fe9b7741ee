-- The gateway's ledger: one row per charge key. A refund of a key that was
-- never charged leaves a `voided` row without an amount, so that the charge,
-- should it arrive later, is never taken.
CREATE TABLE charges
(
    key            text        NOT NULL PRIMARY KEY,
    status         text        NOT NULL
        CHECK (status IN ('pending', 'approved', 'declined', 'refunded', 'voided')),
    amount_cents   bigint,
    currency       text,
    payment_method text,
    -- The capture's reference, once approved.
    reference      text,
    -- Why it was declined.
    reason         text,
    -- Transient failures answered so far (`tok_flaky`).
    failures       integer     NOT NULL DEFAULT 0,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now()
);
