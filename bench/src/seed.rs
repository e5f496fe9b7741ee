//! Filling the event store fast for benchmarks that read it: realistic events
//! (they decode into the domain's events), written by SQL in bulk rather than
//! through commands.

use sqlx::PgPool;

/// Orders per statement.
const CHUNK: i64 = 25_000;

/// Appends `orders` orders of two events each (`OrderPlaced`,
/// `OrderConfirmed`), numbered from `first`, then vacuums.
pub async fn orders(pool: &PgPool, first: i64, orders: i64) -> sqlx::Result<()> {
    let mut from = first;
    while from < first + orders {
        let to = (from + CHUNK).min(first + orders) - 1;
        insert_orders(pool, from, to).await?;
        from = to + 1;
    }
    sqlx::query("VACUUM ANALYZE events").execute(pool).await?;
    Ok(())
}

/// Orders `from..=to` in one statement; returns the last global position.
pub async fn insert_orders(pool: &PgPool, from: i64, to: i64) -> sqlx::Result<i64> {
    sqlx::query_scalar(
        "WITH written AS (
         INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
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
              ORDER BY o.n, s.seq
         RETURNING global_position)
         SELECT max(global_position) FROM written",
    )
    .bind(from)
    .bind(to)
    .fetch_one(pool)
    .await
}

/// One product, `sku`, created and then given `events - 1` deliveries of
/// one unit each: a single stream of `events` events. Vacuums after.
pub async fn hot_product(pool: &PgPool, sku: &str, events: i64) -> anyhow::Result<()> {
    let created = domain::ProductEvent::ProductCreated(domain::product::ProductCreated {
        sku: domain::values::Sku::parse(sku)?,
        name: domain::values::ProductName::parse("Flash sale")?,
        price: domain::values::Money::price(1250, domain::values::Currency::parse("EUR")?)?,
    });
    sqlx::query(
        r#"INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
           SELECT 'Product', $1, n,
                  CASE n WHEN 1 THEN 'ProductCreated' ELSE 'StockAdded' END, '1.0',
                  CASE n WHEN 1 THEN $2::json
                         ELSE json_build_object('StockAdded', json_build_object('quantity', 1)) END,
                  '{"correlation_id":"bench-hot","causation_id":"bench-hot"}'::json
             FROM generate_series(1::bigint, $3::bigint) AS n
            ORDER BY n"#,
    )
    .bind(sku)
    .bind(serde_json::to_value(&created)?)
    .bind(events)
    .execute(pool)
    .await?;
    sqlx::query("VACUUM ANALYZE events").execute(pool).await?;
    Ok(())
}
