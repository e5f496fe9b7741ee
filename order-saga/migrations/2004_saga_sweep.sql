-- How far the sweep has looked through the orders' events for placements
-- whose saga never started (their message lost, or never published): one
-- row, a place in the store's global order.
CREATE TABLE IF NOT EXISTS saga_sweep
(
    name           text   NOT NULL PRIMARY KEY,
    transaction_id bigint NOT NULL,
    global_position bigint NOT NULL
);
