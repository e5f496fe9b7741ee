-- The latest version of the order that calls for its saga's work (a
-- shipment asked for, a return received), as the orchestrator saw its
-- events: a saga that has not taken in that version is not done.
ALTER TABLE sagas ADD COLUMN IF NOT EXISTS order_version bigint NOT NULL DEFAULT 0;
