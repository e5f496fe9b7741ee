//! `bench rebuild`: rebuilding the orders read model from a large event store,
//! next to a plain sequential read of the same events in the same run.

use std::time::{Duration, Instant};

use futures::TryStreamExt;
use indicatif::ProgressBar;
use platform::testing::TestDatabase;
use projections::model::orders::OrderSummary;
use sqlx::{PgPool, Row};

#[derive(Debug, clap::Args)]
pub struct Options {
    /// Events in the store (two per order).
    #[arg(long, default_value_t = 1_000_000)]
    events: i64,
}

pub async fn run(options: Options) -> anyhow::Result<()> {
    platform::telemetry::init_logging(platform::telemetry::LogFormat::Text, "warn,sqlx=error");
    let database = TestDatabase::create().await?;
    let pool = database.pool(8).await?;
    event_store::migrate(&pool).await?;
    projections::migrate(&pool).await?;
    let seeding = Instant::now();
    crate::seed::orders(&pool, 1, options.events / 2).await?;
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&pool)
        .await?;
    println!(
        "rebuild: {events} events ({} orders) written in {:.1} s",
        events / 2,
        seeding.elapsed().as_secs_f64()
    );

    // Warm the cache alike for both: the first full read brings the table in.
    raw_read(&pool).await?;
    let (read, rows_read) = raw_read(&pool).await?;
    let started = Instant::now();
    let report =
        projections::rebuild::rebuild::<OrderSummary>(&pool, &ProgressBar::hidden()).await?;
    let rebuilt = started.elapsed();
    anyhow::ensure!(rows_read == events as u64 && report.events == events as u64);

    let rate = |elapsed: Duration| events as f64 / elapsed.as_secs_f64();
    println!(
        "raw sequential read: {:>9.0} events/s ({:.2} s)",
        rate(read),
        read.as_secs_f64()
    );
    println!(
        "rebuild of orders:   {:>9.0} events/s ({:.2} s, {} rows written)",
        rate(rebuilt),
        rebuilt.as_secs_f64(),
        report.rows
    );
    println!(
        "ratio:               {:>9.2}x (target at least 0.25x, and under 60 s)",
        rate(rebuilt) / rate(read)
    );
    Ok(())
}

/// Every column of every event in global order, streamed through sqlx; the
/// payloads as text, unparsed. Returns the time taken and the rows read.
async fn raw_read(pool: &PgPool) -> anyhow::Result<(Duration, u64)> {
    let started = Instant::now();
    let mut rows = sqlx::query(
        "SELECT event_id, aggregate_type, aggregate_id, sequence, event_type, event_version,
                payload::text AS payload, metadata::text AS metadata, global_position,
                transaction_id::text::bigint AS transaction_id, recorded_at
           FROM events ORDER BY events.transaction_id, events.global_position",
    )
    .fetch(pool);
    let mut count = 0u64;
    let mut bytes = 0usize;
    while let Some(row) = rows.try_next().await? {
        let payload: &str = row.try_get("payload")?;
        bytes += payload.len();
        count += 1;
    }
    anyhow::ensure!(bytes > 0);
    Ok((started.elapsed(), count))
}
