//! Filling the event store fast for benchmarks that read it: realistic events
//! (they decode into the domain's events), written by SQL in bulk rather than
//! through commands.

use sqlx::PgPool;

/// Orders per statement.
const CHUNK: i64 = 25_000;

/// Appends `orders` orders of two events each (`OrderPlaced`,
/// `OrderConfirmed`), numbered from `first`.
pub async fn orders(pool: &PgPool, first: i64, orders: i64) -> sqlx::Result<()> {
    let mut from = first;
    while from < first + orders {
        let to = (from + CHUNK).min(first + orders) - 1;
        sqlx::query(
            "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
             SELECT 'Order', o.id::text, s.seq,
                    CASE s.seq WHEN 1 THEN 'OrderPlaced' ELSE 'OrderConfirmed' END, '1.0',
                    CASE s.seq WHEN 1 THEN json_build_object('OrderPlaced', json_build_object(
                        'order_id', o.id,
                        'customer_id', 'customer-' || (o.n % 5000),
                        'lines', json_build_array(
                            json_build_object('sku', 'SKU-' || (o.n % 1000), 'quantity', 1 + o.n % 3, 'unit_price_cents', 1250),
                            json_build_object('sku', 'SKU-' || (o.n % 997 + 1000), 'quantity', 1, 'unit_price_cents', 499)),
                        'currency', 'EUR',
                        'total_cents', 1250 * (1 + o.n % 3) + 499,
                        'payment_method', 'tok_visa'))
                    ELSE json_build_object('OrderConfirmed', json_build_object()) END,
                    json_build_object('correlation_id', o.id, 'causation_id', o.id)
               FROM (SELECT n, lpad(to_hex(n), 32, '0')::uuid AS id
                       FROM generate_series($1::bigint, $2::bigint) AS n) AS o
              CROSS JOIN (VALUES (1), (2)) AS s(seq)
              ORDER BY o.n, s.seq",
        )
        .bind(from)
        .bind(to)
        .execute(pool)
        .await?;
        from = to + 1;
    }
    sqlx::query("VACUUM ANALYZE events").execute(pool).await?;
    Ok(())
}
