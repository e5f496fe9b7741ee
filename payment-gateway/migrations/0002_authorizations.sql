-- Authorize, then capture: an authorization holds an amount on the card
-- until it expires or is voided; captures take parts of it (never more in
-- all than it holds); refunds give parts of a capture back (never more in
-- all than it took). Every row is kept by the key its caller chose, so that
-- a repeated call answers what the first one did.
CREATE TABLE authorizations
(
    key            text        NOT NULL PRIMARY KEY,
    status         text        NOT NULL
        CHECK (status IN ('pending', 'authorized', 'declined', 'voided')),
    -- `NULL` for a key voided before its authorization arrived.
    amount_cents   bigint      CHECK (amount_cents >= 0),
    currency       text,
    payment_method text,
    reference      text,
    reason         text,
    -- After this instant nothing more can be captured.
    expires_at     timestamptz,
    -- What its captures took, and what their refunds gave back.
    captured_cents bigint      NOT NULL DEFAULT 0 CHECK (captured_cents >= 0),
    refunded_cents bigint      NOT NULL DEFAULT 0 CHECK (refunded_cents >= 0),
    failures       integer     NOT NULL DEFAULT 0,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    CHECK (captured_cents <= coalesce(amount_cents, 0)),
    CHECK (refunded_cents <= captured_cents)
);

CREATE TABLE captures
(
    key               text        NOT NULL PRIMARY KEY,
    authorization_key text        NOT NULL REFERENCES authorizations (key),
    -- `captured` took the money; `declined` and `expired` took nothing.
    status            text        NOT NULL CHECK (status IN ('captured', 'declined', 'expired')),
    amount_cents      bigint      NOT NULL CHECK (amount_cents >= 1),
    refunded_cents    bigint      NOT NULL DEFAULT 0 CHECK (refunded_cents >= 0),
    reference         text,
    reason            text,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    CHECK (refunded_cents <= amount_cents)
);

CREATE INDEX captures_of_an_authorization ON captures (authorization_key);

CREATE TABLE refunds
(
    key          text        NOT NULL PRIMARY KEY,
    capture_key  text        NOT NULL REFERENCES captures (key),
    amount_cents bigint      NOT NULL CHECK (amount_cents >= 1),
    reference    text        NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX refunds_of_a_capture ON refunds (capture_key);
