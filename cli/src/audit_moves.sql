-- What each order moved on each product in one range of the store's global
-- positions, summed: one batch of the audit's staging. A batch is its own
-- short transaction, so the relay's reader (which waits for every writing
-- transaction older than the events it reads) is held back a moment at a
-- time, not for the length of the audit.
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
         WHERE global_position > $1 AND global_position <= $2
           AND aggregate_type = 'Product'
           AND event_type IN ('StockReserved', 'ReservationReleased',
                              'ReservationCommitted', 'SoldStockReturned')) AS moves
 GROUP BY 1, 2
