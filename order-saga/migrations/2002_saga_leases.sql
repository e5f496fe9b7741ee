-- A driver leases the saga it works on, so that two orchestrator processes do
-- not drive one saga at once. A lease runs out by itself when its driver dies.
ALTER TABLE sagas
    ADD COLUMN lease_owner text,
    ADD COLUMN leased_until timestamptz;
