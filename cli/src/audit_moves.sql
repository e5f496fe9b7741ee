-- What each order moved on each product, summed over the products' events:
-- the audit's staging, in a temporary table of its own session, so that the
-- audit looks up a thousand orders' moves at a time instead of holding every
-- move of the store in memory.
CREATE TEMPORARY TABLE IF NOT EXISTS audit_moves
    (order_id text, sku text, reserved bigint, released bigint, committed bigint, returned bigint);
TRUNCATE audit_moves;
INSERT INTO audit_moves
SELECT body ->> 'order_id' AS order_id,
       aggregate_id AS sku,
       coalesce(sum(quantity) FILTER (WHERE event_type = 'StockReserved'), 0),
       coalesce(sum(quantity) FILTER (WHERE event_type = 'ReservationReleased'), 0),
       coalesce(sum(quantity) FILTER (WHERE event_type = 'ReservationCommitted'), 0),
       coalesce(sum(quantity) FILTER (WHERE event_type = 'SoldStockReturned'), 0)
  FROM (SELECT aggregate_id, event_type, payload::jsonb -> event_type AS body,
               (payload::jsonb -> event_type ->> 'quantity')::bigint AS quantity
          FROM events
         WHERE aggregate_type = 'Product'
           AND event_type IN ('StockReserved', 'ReservationReleased',
                              'ReservationCommitted', 'SoldStockReturned')) AS moves
 GROUP BY 1, 2;
CREATE INDEX IF NOT EXISTS audit_moves_order ON audit_moves (order_id);
