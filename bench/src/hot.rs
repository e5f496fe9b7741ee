//! `bench hot-product`: one product that sold to a million orders. Its
//! history is written by SQL (a reservation and its commit per order), then
//! the command bus loads it and runs one command on it, as the platform
//! would on the next order: how large its state and its snapshot are, how
//! long the fold takes, and the process's peak memory. The state grows with
//! the reservations that are open, not with the orders the product sold to.

use std::time::{Duration, Instant};

use command_bus::{CommandBus, CommandContext, Expect};
use domain::{Product, ProductCommand};
use platform::testing::TestDatabase;
use sqlx::PgPool;

#[derive(Debug, clap::Args)]
pub struct Options {
    /// Orders the product sold to (two events each).
    #[arg(long, default_value_t = 1_000_000)]
    orders: i64,
}

const SKU: &str = "HOT-1";

pub async fn run(options: Options) -> anyhow::Result<()> {
    platform::telemetry::init_logging(platform::telemetry::LogFormat::Text, "warn,sqlx=error");
    let database = TestDatabase::create().await?;
    let pool = database.pool(4).await?;
    event_store::migrate(&pool).await?;
    let seeding = Instant::now();
    let events = seed(&pool, options.orders).await?;
    println!(
        "hot product: {} orders sold, {events} events, written in {:.1} s",
        options.orders,
        seeding.elapsed().as_secs_f64()
    );

    let bus = CommandBus::new(pool.clone());
    let started = Instant::now();
    let (product, version) = bus.load::<Product>(SKU).await?;
    let folded = started.elapsed();
    anyhow::ensure!(
        product.sold() == u64::try_from(options.orders)?,
        "the fold sold {} units",
        product.sold()
    );
    println!(
        "fold of {version} events:  {:.2} s; the state is {} bytes of JSON",
        folded.as_secs_f64(),
        serde_json::to_vec(&product)?.len()
    );

    // The next command, as the platform runs it: it crosses a snapshot
    // boundary (the history was padded for it), so the bus writes one.
    let context = CommandContext {
        correlation_id: "bench-hot".into(),
        causation_id: "bench-hot".into(),
        ..CommandContext::default()
    };
    let started = Instant::now();
    bus.execute::<Product>(
        SKU,
        ProductCommand::AddStock { quantity: 1 },
        &context,
        Expect::Existing,
    )
    .await?;
    let command = started.elapsed();
    let snapshot = snapshot_bytes(&pool).await?;
    println!(
        "one command on it:   {:.2} s; its snapshot is {snapshot} bytes",
        command.as_secs_f64()
    );
    // A process that starts afresh (nothing kept in memory) loads it from
    // the snapshot, as every later command does.
    let fresh = CommandBus::new(pool.clone());
    let started = Instant::now();
    fresh.load::<Product>(SKU).await?;
    println!(
        "a load in a fresh process, from the snapshot: {:.3} s",
        started.elapsed().as_secs_f64()
    );
    let fresh = CommandBus::new(pool.clone());
    let started = Instant::now();
    fresh
        .execute::<Product>(
            SKU,
            ProductCommand::AddStock { quantity: 1 },
            &context,
            Expect::Existing,
        )
        .await?;
    println!(
        "a command in a fresh process, from the snapshot: {:.3} s",
        started.elapsed().as_secs_f64()
    );
    println!(
        "peak memory of this process: {} MiB (VmHWM)",
        peak_kib()? / 1024
    );
    Ok(())
}

/// The product created, stocked, and sold once to each of `orders` orders;
/// padded with deliveries so that one more event reaches a snapshot
/// boundary. Returns the events written.
async fn seed(pool: &PgPool, orders: i64) -> anyhow::Result<i64> {
    let every = i64::try_from(command_bus::dispatch::DEFAULT_SNAPSHOT_EVERY)?;
    // ProductCreated, the deliveries, then two events per order.
    let deliveries_needed = ((orders + 999_999) / 1_000_000).max(1);
    let before_padding = 1 + deliveries_needed + 2 * orders;
    let padding = (every - (before_padding + 1) % every) % every;
    let deliveries = deliveries_needed + padding;
    crate::seed::hot_product(pool, SKU, 1).await?;
    // The stock first (a million a delivery), then the padding (one each).
    sqlx::query(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
         SELECT 'Product', $1, n, 'StockAdded', '1.0',
                json_build_object('StockAdded', json_build_object('quantity',
                    CASE WHEN n <= 1 + $2 THEN 1000000 ELSE 1 END)),
                '{\"correlation_id\":\"bench-hot\",\"causation_id\":\"bench-hot\"}'::json
           FROM generate_series(2::bigint, 1 + $3::bigint) AS n
          ORDER BY n",
    )
    .bind(SKU)
    .bind(deliveries_needed)
    .bind(deliveries)
    .execute(pool)
    .await?;
    let first = 2 + deliveries;
    let mut from = 1;
    while from <= orders {
        let to = (from + 100_000 - 1).min(orders);
        sqlx::query(
            "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
             SELECT 'Product', $1, $2 + 2 * (o.n - 1) + s.k,
                    CASE s.k WHEN 0 THEN 'StockReserved' ELSE 'ReservationCommitted' END, '1.0',
                    json_build_object(CASE s.k WHEN 0 THEN 'StockReserved' ELSE 'ReservationCommitted' END,
                                      json_build_object('order_id', lpad(to_hex(o.n), 32, '0')::uuid, 'quantity', 1)),
                    '{\"correlation_id\":\"bench-hot\",\"causation_id\":\"bench-hot\"}'::json
               FROM generate_series($3::bigint, $4::bigint) AS o(n)
              CROSS JOIN (VALUES (0), (1)) AS s(k)
              ORDER BY o.n, s.k",
        )
        .bind(SKU)
        .bind(first)
        .bind(from)
        .bind(to)
        .execute(pool)
        .await?;
        from = to + 1;
    }
    sqlx::query("VACUUM ANALYZE events").execute(pool).await?;
    Ok(sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(pool)
        .await?)
}

/// The size of the product's snapshot, once the bus has written it.
async fn snapshot_bytes(pool: &PgPool) -> anyhow::Result<i64> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let size: Option<i64> = sqlx::query_scalar(
            "SELECT octet_length(payload::text)::bigint FROM snapshots
              WHERE aggregate_type = 'Product' AND aggregate_id = $1",
        )
        .bind(SKU)
        .fetch_optional(pool)
        .await?;
        if let Some(size) = size {
            return Ok(size);
        }
        anyhow::ensure!(Instant::now() < deadline, "no snapshot was written");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The process's peak resident memory, in KiB (`VmHWM`).
fn peak_kib() -> anyhow::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no VmHWM in /proc/self/status"))
}
