-- The relay is woken by the command bus after each append commits (see
-- event-store/src/batch.rs), not by a trigger inside the append: a NOTIFY
-- inside a transaction takes the database's notification lock at commit and
-- holds it until the commit is flushed, so every append committed after the
-- one before it, one flush at a time. Events written by other means are found
-- by the relay's poll.
DROP TRIGGER IF EXISTS events_appended ON events;
DROP FUNCTION IF EXISTS notify_events_appended();
