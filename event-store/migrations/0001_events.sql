-- The event store: postgres-es's events table, extended for a global order.
--
-- The first two tables are exactly postgres-es's layout, so stores written by
-- postgres-es upgrade in place (existing rows get positions in physical order).

CREATE TABLE IF NOT EXISTS events
(
    aggregate_type text                         NOT NULL,
    aggregate_id   text                         NOT NULL,
    sequence       bigint CHECK (sequence >= 0) NOT NULL,
    event_type     text                         NOT NULL,
    event_version  text                         NOT NULL,
    payload        json                         NOT NULL,
    metadata       json                         NOT NULL,
    PRIMARY KEY (aggregate_type, aggregate_id, sequence)
);

CREATE TABLE IF NOT EXISTS snapshots
(
    aggregate_type   text                                 NOT NULL,
    aggregate_id     text                                 NOT NULL,
    last_sequence    bigint CHECK (last_sequence >= 0)    NOT NULL,
    current_snapshot bigint CHECK (current_snapshot >= 0) NOT NULL,
    payload          json                                 NOT NULL,
    PRIMARY KEY (aggregate_type, aggregate_id, last_sequence)
);

-- Positions come from a sequence, so they are unique and ascending but become
-- visible out of order when transactions commit out of order. Readers of the
-- global order therefore order by (transaction_id, global_position) and only
-- read transactions older than every transaction still running; see
-- event-store/src/reader.rs.
CREATE SEQUENCE IF NOT EXISTS events_global_position_seq AS bigint;

ALTER TABLE events
    ADD COLUMN IF NOT EXISTS event_id        uuid        NOT NULL DEFAULT gen_random_uuid(),
    ADD COLUMN IF NOT EXISTS global_position bigint      NOT NULL DEFAULT nextval('events_global_position_seq'),
    ADD COLUMN IF NOT EXISTS transaction_id  xid8        NOT NULL DEFAULT pg_current_xact_id(),
    ADD COLUMN IF NOT EXISTS recorded_at     timestamptz NOT NULL DEFAULT now();

ALTER SEQUENCE events_global_position_seq OWNED BY events.global_position;

CREATE UNIQUE INDEX IF NOT EXISTS events_event_id_key ON events (event_id);
CREATE UNIQUE INDEX IF NOT EXISTS events_global_position_key ON events (global_position);
CREATE INDEX IF NOT EXISTS events_commit_order_idx ON events (transaction_id, global_position);
