-- An aggregate's event N is appended only after its event N-1: a writer
-- that decided on a copy of an aggregate that the store never held (one
-- taken from a message anybody could have produced) cannot start a stream
-- in the middle. An event written earlier in the same statement counts
-- (a row-level trigger sees the rows its statement inserted before), so
-- one statement may append several events of one aggregate in order.
-- The append takes the refusal as a lost race: it reloads the aggregate
-- from the store and decides again.
-- The lookup always takes the primary key: the function's plan is made
-- once per session, and one made while the table was small would scan it
-- whole for every event appended after it had grown (a bulk append to a
-- fresh store would take hours).
CREATE OR REPLACE FUNCTION events_follow_their_predecessor() RETURNS trigger
LANGUAGE plpgsql SET enable_seqscan = off AS $$
BEGIN
    IF NEW.sequence < 1 OR (NEW.sequence > 1 AND NOT EXISTS (
        SELECT 1 FROM events
         WHERE aggregate_type = NEW.aggregate_type
           AND aggregate_id = NEW.aggregate_id
           AND sequence = NEW.sequence - 1)) THEN
        RAISE EXCEPTION 'event % of % % does not follow one the store holds',
                        NEW.sequence, NEW.aggregate_type, NEW.aggregate_id
            USING ERRCODE = 'integrity_constraint_violation',
                  CONSTRAINT = 'events_follow_their_predecessor';
    END IF;
    RETURN NEW;
END
$$;

DROP TRIGGER IF EXISTS events_follow_their_predecessor ON events;
CREATE TRIGGER events_follow_their_predecessor
    BEFORE INSERT ON events
    FOR EACH ROW EXECUTE FUNCTION events_follow_their_predecessor();
