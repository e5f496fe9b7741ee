//! `bench catchup`: a live projection worker applying a backlog that waits in
//! Kafka, next to a rebuild of the same read model from the same events; and
//! how far the relay falls behind while a rebuild runs.
//!
//! - Many aggregates: orders written by SQL (two events each), the orders
//!   read model.
//! - One hot aggregate: a single product stream of the same length, the
//!   products read model.
//! - Relay lag: a store of `--rebuild-events` order events, the relay caught
//!   up, new orders committed at `--write-rate` per second; the time from
//!   each commit to the relay's checkpoint passing it (Kafka acknowledged),
//!   before and while the orders read model is rebuilt.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use indicatif::ProgressBar;
use platform::testing::{TestDatabase, TestTopics, kafka_brokers};
use projections::model::ReadModel;
use projections::model::orders::OrderSummary;
use projections::model::products::ProductStock;
use projections::worker::WorkerConfig;
use relay::RelayConfig;
use sqlx::PgPool;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

#[derive(Debug, clap::Args)]
pub struct Options {
    /// Events in each catch-up backlog.
    #[arg(long, default_value_t = 200_000)]
    events: i64,
    /// Events in the store the relay-lag run rebuilds (two per order).
    #[arg(long, default_value_t = 1_000_000)]
    rebuild_events: i64,
    /// Messages a live worker applies per transaction at most (the
    /// platform's default).
    #[arg(long, default_value_t = WorkerConfig::default().max_batch)]
    projection_batch: usize,
    /// Orders committed per second during the relay-lag run.
    #[arg(long, default_value_t = 100)]
    write_rate: u32,
}

const HOT_SKU: &str = "HOT-1";

pub async fn run(options: Options) -> anyhow::Result<()> {
    platform::telemetry::init_logging(platform::telemetry::LogFormat::Text, "warn,sqlx=error");
    let (events, batch) = (options.events, options.projection_batch);
    catch_up::<OrderSummary, _>(
        "many aggregates (orders)",
        events,
        batch,
        |pool| async move {
            crate::seed::orders(&pool, 1, events / 2).await?;
            Ok(())
        },
    )
    .await?;
    catch_up::<ProductStock, _>(
        "one hot aggregate (products)",
        events,
        batch,
        |pool| async move { crate::seed::hot_product(&pool, HOT_SKU, events).await },
    )
    .await?;
    relay_lag(&options).await
}

/// Seeds a fresh store, has the relay publish it all, then times a live
/// worker applying the backlog from Kafka, and a rebuild of the same model.
async fn catch_up<M, F>(
    label: &str,
    events: i64,
    max_batch: usize,
    seed: impl FnOnce(PgPool) -> F,
) -> anyhow::Result<()>
where
    M: ReadModel,
    F: std::future::Future<Output = anyhow::Result<()>>,
{
    let database = TestDatabase::create().await?;
    let pool = database.pool(8).await?;
    event_store::migrate(&pool).await?;
    projections::migrate(&pool).await?;
    seed(pool.clone()).await?;
    let last = last_position(&pool).await?;
    let topics = TestTopics::new();
    let config = relay_config(&topics);
    relay::topics::ensure(&config).await?;
    let relay = Relay::start(&pool, config);
    let relayed = Instant::now();
    relay.wait_for(&pool, last).await?;
    let relayed = relayed.elapsed();
    relay.stop().await?;

    let (stop, stopped) = oneshot::channel::<()>();
    let worker = tokio::spawn(projections::worker::run::<M>(
        pool.clone(),
        WorkerConfig {
            brokers: kafka_brokers(),
            topics: event_contract::Topics::with_prefix(&topics.prefix),
            group_prefix: topics.prefix.clone(),
            max_batch,
            ..WorkerConfig::default()
        },
        async {
            stopped.await.ok();
        },
    ));
    let started = Instant::now();
    let mut first = None;
    loop {
        let at: Option<i64> = sqlx::query_scalar(
            "SELECT last_global_position FROM projection_status WHERE projection = $1",
        )
        .bind(M::NAME)
        .fetch_optional(&pool)
        .await?;
        if at.is_some() && first.is_none() {
            first = Some(Instant::now());
        }
        if at == Some(last) {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(1800),
            "the {} worker is still behind",
            M::NAME
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let applying = first.map_or(Duration::ZERO, |first| first.elapsed());
    let joined = started.elapsed() - applying;
    let _ = stop.send(());
    worker.await??;

    let rebuilding = Instant::now();
    let report = projections::rebuild::rebuild::<M>(&pool, &ProgressBar::hidden()).await?;
    let rebuilt = rebuilding.elapsed();
    anyhow::ensure!(report.events == events as u64);

    let rate = |elapsed: Duration| events as f64 / elapsed.as_secs_f64();
    println!("catch-up, {label}: {events} events, batches of up to {max_batch}");
    println!(
        "  relay published the backlog: {:>9.0} events/s ({:.2} s)",
        rate(relayed),
        relayed.as_secs_f64()
    );
    println!(
        "  live worker applied it:      {:>9.0} events/s ({:.2} s, after {:.2} s joining the group)",
        rate(applying),
        applying.as_secs_f64(),
        joined.as_secs_f64()
    );
    println!(
        "  rebuild of the same model:   {:>9.0} events/s ({:.2} s)",
        rate(rebuilt),
        rebuilt.as_secs_f64()
    );
    println!(
        "  catch-up / rebuild:          {:>9.2}x (target at least 0.25x)",
        rate(applying) / rate(rebuilt)
    );
    Ok(())
}

/// The relay's lag behind commits before and during a rebuild of the orders
/// read model.
async fn relay_lag(options: &Options) -> anyhow::Result<()> {
    let database = TestDatabase::create().await?;
    let pool = database.pool(8).await?;
    event_store::migrate(&pool).await?;
    projections::migrate(&pool).await?;
    let orders = options.rebuild_events / 2;
    crate::seed::orders(&pool, 1, orders).await?;
    let topics = TestTopics::new();
    let config = relay_config(&topics);
    relay::topics::ensure(&config).await?;
    let relay = Relay::start(&pool, config);
    relay.wait_for(&pool, last_position(&pool).await?).await?;

    // Commits waiting for the relay: (last global position, committed at).
    let waiting: Arc<Mutex<VecDeque<(i64, Instant)>>> = Arc::default();
    let (stop_writing, mut writing_stopped) = oneshot::channel::<()>();
    let writer = tokio::spawn({
        let (pool, waiting) = (pool.clone(), Arc::clone(&waiting));
        let every = Duration::from_secs(1) / options.write_rate.max(1);
        async move {
            let mut tick = tokio::time::interval(every);
            let mut next = orders + 1;
            loop {
                tokio::select! {
                    _ = &mut writing_stopped => return Ok::<_, sqlx::Error>(()),
                    _ = tick.tick() => {}
                }
                let position = crate::seed::insert_orders(&pool, next, next).await?;
                // As the platform's appenders do: the relay is woken rather
                // than finding the commit at its next poll.
                sqlx::query("SELECT pg_notify($1, '')")
                    .bind(relay::EVENTS_CHANNEL)
                    .execute(&pool)
                    .await?;
                waiting
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push_back((position, Instant::now()));
                next += 1;
            }
        }
    });
    let measure = |pool: PgPool, waiting: Arc<Mutex<VecDeque<(i64, Instant)>>>| async move {
        let mut lags = Histogram::<u64>::new(3)?;
        let (stop, mut stopped) = oneshot::channel::<()>();
        let sampler = tokio::spawn(async move {
            loop {
                let done = matches!(stopped.try_recv(), Ok(()));
                let at: i64 = sqlx::query_scalar("SELECT global_position FROM relay_checkpoints")
                    .fetch_one(&pool)
                    .await?;
                let now = Instant::now();
                let passed: Vec<Instant> = {
                    let mut waiting = waiting
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    let count = waiting.partition_point(|(position, _)| *position <= at);
                    waiting
                        .drain(..count)
                        .map(|(_, committed)| committed)
                        .collect()
                };
                for committed in passed {
                    lags.record(now.duration_since(committed).as_micros() as u64)?;
                }
                if done {
                    return Ok::<_, anyhow::Error>(lags);
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        });
        Ok::<_, anyhow::Error>((stop, sampler))
    };

    let (stop, sampler) = measure(pool.clone(), Arc::clone(&waiting)).await?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let _ = stop.send(());
    let before = sampler.await??;

    let (stop, sampler) = measure(pool.clone(), Arc::clone(&waiting)).await?;
    let rebuilding = Instant::now();
    let report =
        projections::rebuild::rebuild::<OrderSummary>(&pool, &ProgressBar::hidden()).await?;
    let rebuilt = rebuilding.elapsed();
    let _ = stop_writing.send(());
    writer.await??;
    // The last commits get their checkpoint too.
    relay.wait_for(&pool, last_position(&pool).await?).await?;
    let _ = stop.send(());
    let during = sampler.await??;
    relay.stop().await?;

    let ms = |lags: &Histogram<u64>, q: f64| lags.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "relay lag, commit -> checkpoint (Kafka acknowledged), {} orders/s committed:",
        options.write_rate
    );
    for (when, lags) in [
        ("before the rebuild", &before),
        ("during the rebuild", &during),
    ] {
        println!(
            "  {when}: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms over {} commits",
            ms(lags, 0.5),
            ms(lags, 0.99),
            lags.max() as f64 / 1000.0,
            lags.len()
        );
    }
    println!(
        "  the rebuild: {} events, {} rows in {:.2} s; target: lag never above 1 s",
        report.events,
        report.rows,
        rebuilt.as_secs_f64()
    );
    Ok(())
}

fn relay_config(topics: &TestTopics) -> RelayConfig {
    RelayConfig {
        brokers: kafka_brokers(),
        topics: event_contract::Topics::with_prefix(&topics.prefix),
        ..RelayConfig::default()
    }
}

async fn last_position(pool: &PgPool) -> sqlx::Result<i64> {
    sqlx::query_scalar("SELECT max(global_position) FROM events")
        .fetch_one(pool)
        .await
}

/// A relay running in this process until stopped.
pub struct Relay {
    stop: oneshot::Sender<()>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Relay {
    pub fn start(pool: &PgPool, config: RelayConfig) -> Self {
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(relay::run(pool.clone(), config, async {
            stopped.await.ok();
        }));
        Self { stop, task }
    }

    /// Waits until the relay's checkpoint has passed `position`.
    pub async fn wait_for(&self, pool: &PgPool, position: i64) -> anyhow::Result<()> {
        loop {
            let at: Option<i64> =
                sqlx::query_scalar("SELECT global_position FROM relay_checkpoints")
                    .fetch_optional(pool)
                    .await?;
            if at.is_some_and(|at| at >= position) {
                return Ok(());
            }
            anyhow::ensure!(!self.task.is_finished(), "the relay stopped");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    pub async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(());
        self.task.await?
    }
}
