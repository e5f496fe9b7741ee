-- Sagas that need attention, for the census that the metrics take every few
-- seconds: a count over this index costs the same however many sagas ended
-- before (the sagas not done have `sagas_due`).
CREATE INDEX IF NOT EXISTS sagas_attention ON sagas (order_id) WHERE needs_attention;
