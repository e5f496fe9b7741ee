-- Wakes the relay when events commit: one notification per append statement,
-- delivered only when its transaction commits.
CREATE FUNCTION notify_events_appended() RETURNS trigger
    LANGUAGE plpgsql AS
$$
BEGIN
    PERFORM pg_notify('events_appended', '');
    RETURN NULL;
END
$$;

CREATE TRIGGER events_appended
    AFTER INSERT ON events
    FOR EACH STATEMENT
    EXECUTE FUNCTION notify_events_appended();

-- How far each relay has published: the last event Kafka acknowledged, as a
-- place in the global order (see event-store/src/reader.rs).
CREATE TABLE relay_checkpoints
(
    name            text        NOT NULL PRIMARY KEY,
    transaction_id  bigint      NOT NULL,
    global_position bigint      NOT NULL,
    updated_at      timestamptz NOT NULL DEFAULT now()
);
