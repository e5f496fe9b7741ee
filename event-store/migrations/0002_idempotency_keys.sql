-- Idempotency keys of accepted commands. A key is written by the same
-- statement that appends the command's events, so a retry after a crash finds
-- it exactly when the events exist. Rows expire; the API deletes old ones.
CREATE TABLE idempotency_keys
(
    key                 text        NOT NULL PRIMARY KEY,
    -- SHA-256 of the request's method, path and canonical JSON body.
    request_fingerprint text        NOT NULL,
    aggregate_type      text        NOT NULL,
    aggregate_id        text        NOT NULL,
    -- The aggregate's version after the command, which the response reports.
    version             bigint      NOT NULL,
    created_at          timestamptz NOT NULL DEFAULT now(),
    expires_at          timestamptz NOT NULL
);

CREATE INDEX idempotency_keys_expires_at_idx ON idempotency_keys (expires_at);
