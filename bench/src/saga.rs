//! `bench saga`: orders from placement to CONFIRMED through the saga.
//!
//! The whole platform runs in this process (API, relay, projections, saga
//! orchestrator, and the payment gateway service) against the real
//! PostgreSQL and Kafka. In one run:
//!
//! - the raw write ceiling: orders placed by 64 clients on a platform
//!   without the saga (its own database), in commands/s;
//! - completion time at a steady rate (open loop): from the 202 on
//!   `POST /api/orders` to the orchestrator recording the order confirmed;
//! - throughput at saturation: a burst of orders placed as fast as 64
//!   clients can, and the rate at which their sagas reach CONFIRMED, with
//!   the statements and commits each order cost (pg_stat_statements and
//!   pg_stat_database over the platform's and the gateway's databases);
//! - the same burst with every order on one product;
//! - the lifecycle run (see [`crate::lifecycle`]): orders placed, shipped in
//!   two parts, delivered, one in ten returned, in orders/s through all of
//!   it and statements per order;
//! - the same burst again after half the products were given a long
//!   history (written by SQL), as a ratio of the first.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use hdrhistogram::Histogram;
use platform_tests::TestPlatform;

use crate::measure::{Counts, sagas_stored, wait_confirmed};
use saga_orchestrator::driver::Policy;
use serde_json::{Value, json};
use sqlx::PgPool;

#[derive(Debug, clap::Args)]
pub struct Options {
    /// Orders per second for the completion-time run.
    #[arg(long, default_value_t = 200)]
    rate: u32,
    /// Measured seconds of the completion-time run.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Orders in each saturation burst.
    #[arg(long, default_value_t = 10_000)]
    burst: usize,
    /// Events of history written over half the products before the last
    /// burst (0: no history run).
    #[arg(long, default_value_t = 200_000)]
    history_events: u64,
    /// Clients placing orders at once in the bursts.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Orders in the lifecycle run (placed, shipped in two parts,
    /// delivered, one in ten returned; 0: no lifecycle run).
    #[arg(long, default_value_t = 2_000)]
    lifecycle: usize,
}

const PRODUCTS: usize = 100;
const HOT: &str = "SAGA-HOT";

pub async fn run(options: Options) -> anyhow::Result<()> {
    let ceiling = write_ceiling(&options).await?;
    println!(
        "raw write ceiling: {} orders placed by {} clients in {:.2} s on a platform without the saga: {:.0} commands/s",
        options.burst,
        options.clients,
        ceiling.as_secs_f64(),
        options.burst as f64 / ceiling.as_secs_f64()
    );

    let (platform, gateway) = TestPlatform::start_with_saga(Policy::default()).await;
    let platform = Arc::new(platform);
    let databases = [
        platform.database.name.clone(),
        gateway.database.name.clone(),
    ];
    let skus: Vec<String> = (0..PRODUCTS).map(|n| format!("SAGA-{n:03}")).collect();
    for sku in skus.iter().chain([&HOT.to_owned()]) {
        platform.create_product(sku, 1250, 1_000_000).await;
    }
    println!(
        "saga: POST /api/orders (tok_visa, 1-2 lines over {PRODUCTS} products) -> saga CONFIRMED; \
         API, relay, projections and orchestrator in one process"
    );

    let counts = Counts::start(&platform.pool, &databases).await?;
    let cpu = CpuTicks::now();
    let (completion, accepted) = steady(&platform, &skus, &options).await?;
    let busy = cpu.busy_since();
    let ms = |q: f64| completion.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "at {:>4} orders/s: p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms over {} orders (target p99 < 100 ms)",
        options.rate,
        ms(0.5),
        ms(0.9),
        ms(0.99),
        completion.max() as f64 / 1000.0,
        completion.len()
    );
    if let Some(busy) = busy {
        println!(
            "  the machine's CPU was {:.0}% busy meanwhile (all processes, {} cores)",
            busy * 100.0,
            std::thread::available_parallelism().map_or(0, usize::from)
        );
    }
    if let Some(counts) = counts {
        counts
            .print(&platform.pool, completion.len() as usize)
            .await?;
    }
    breakdown(&platform.pool, &accepted).await?;

    let counts = Counts::start(&platform.pool, &databases).await?;
    let spread = saturate(&platform, options.burst, options.clients, &skus).await?;
    spread.print("saturation, over many products", options.burst);
    if let Some(counts) = counts {
        counts.print(&platform.pool, options.burst).await?;
    }
    let hot = [HOT.to_owned()];
    let one = saturate(&platform, options.burst, options.clients, &hot).await?;
    one.print(&format!("saturation, all on {HOT}"), options.burst);

    if options.lifecycle > 0 {
        crate::lifecycle::run(
            &platform,
            &skus,
            options.lifecycle,
            options.clients,
            &databases,
        )
        .await?;
    }

    if options.history_events > 0 {
        let history_skus = &skus[..PRODUCTS / 2];
        let (written, caught_up) = history(&platform, history_skus, options.history_events).await?;
        println!(
            "history: {written} events over {} products written by SQL; the products read model applied them in {:.1} s",
            PRODUCTS / 2,
            caught_up.as_secs_f64()
        );
        // Written behind the platform's back, the history is news to the
        // aggregates the command side keeps: the first command on each
        // product folds its history once (and snapshots it). A platform that
        // lived through its history never pays that, so it is timed apart.
        let started = Instant::now();
        for sku in history_skus {
            platform
                .command(
                    &format!("/api/products/{sku}/stock"),
                    &json!({"quantity": 1}),
                    202,
                )
                .await;
        }
        println!(
            "first command on each of those products (folds its history once): {:.2} s for {}",
            started.elapsed().as_secs_f64(),
            history_skus.len()
        );
        let after = saturate(&platform, options.burst, options.clients, &skus).await?;
        after.print("saturation after the history", options.burst);
        println!(
            "history ratio (after / before): {:.2} (target >= 0.9)",
            spread.confirmed.as_secs_f64() / after.confirmed.as_secs_f64()
        );
    }
    if let Ok(platform) = Arc::try_unwrap(platform) {
        platform.stop().await;
    }
    drop(gateway);
    Ok(())
}

/// Orders placed by `clients` clients on a platform without the saga
/// (API, relay and projections on a database of their own).
async fn write_ceiling(options: &Options) -> anyhow::Result<Duration> {
    let platform = Arc::new(TestPlatform::start().await);
    let skus: Vec<String> = (0..PRODUCTS).map(|n| format!("RAW-{n:03}")).collect();
    for sku in &skus {
        platform.create_product(sku, 1250, 1_000_000).await;
    }
    let started = Instant::now();
    let (burst, clients) = (options.burst, options.clients);
    let ids = place(&platform, burst, clients, &skus).await?;
    let took = started.elapsed();
    anyhow::ensure!(
        ids.len() == burst,
        "only {} of {burst} orders accepted",
        ids.len()
    );
    if let Ok(platform) = Arc::try_unwrap(platform) {
        platform.stop().await;
    }
    Ok(took)
}

/// How long a burst took to be placed and to be confirmed.
struct Burst {
    placed: Duration,
    confirmed: Duration,
}

impl Burst {
    fn print(&self, what: &str, burst: usize) {
        println!(
            "{what}: {burst} orders placed in {:.2} s ({:.0} orders/s accepted); all CONFIRMED after {:.2} s: {:.0} orders/s",
            self.placed.as_secs_f64(),
            burst as f64 / self.placed.as_secs_f64(),
            self.confirmed.as_secs_f64(),
            burst as f64 / self.confirmed.as_secs_f64()
        );
    }
}

/// The whole machine's CPU time from `/proc/stat`: busy and total ticks;
/// `None` where there is no such file.
struct CpuTicks(Option<(u64, u64)>);

impl CpuTicks {
    fn now() -> Self {
        let read = || {
            let stat = std::fs::read_to_string("/proc/stat").ok()?;
            let ticks: Vec<u64> = stat
                .lines()
                .next()?
                .split_whitespace()
                .skip(1)
                .take(8)
                .map(str::parse)
                .collect::<Result<_, _>>()
                .ok()?;
            // user nice system idle iowait irq softirq steal
            let idle = ticks.get(3)? + ticks.get(4)?;
            let total: u64 = ticks.iter().sum();
            Some((total - idle, total))
        };
        Self(read())
    }

    /// The share of the machine's CPU time that was busy since `self`.
    fn busy_since(&self) -> Option<f64> {
        let (busy, total) = self.0?;
        let (busy_now, total_now) = Self::now().0?;
        let total = total_now.checked_sub(total).filter(|t| *t > 0)?;
        Some(busy_now.saturating_sub(busy) as f64 / total as f64)
    }
}

/// Gives each of `skus` a long history: reservations committed for orders
/// that never existed, `events` in all, written by SQL; then waits for the
/// products read model to apply them (the relay publishes them first).
async fn history(
    platform: &TestPlatform,
    skus: &[String],
    events: u64,
) -> anyhow::Result<(u64, Duration)> {
    let per_product = (events / skus.len() as u64).next_multiple_of(2);
    let started = Instant::now();
    for sku in skus {
        sqlx::query(
            r#"
INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
SELECT 'Product', $1, s.base + g.n, t.name, '1.0',
       json_build_object(t.name, json_build_object(
           'order_id', md5($1 || ':' || ((g.n + 1) / 2))::uuid, 'quantity', 1)),
       '{"correlation_id":"bench-history","causation_id":"bench-history"}'::json
  FROM (SELECT max(sequence) AS base FROM events
         WHERE aggregate_type = 'Product' AND aggregate_id = $1) s,
       generate_series(1, $2) g(n),
       LATERAL (SELECT CASE WHEN g.n % 2 = 1 THEN 'StockReserved'
                            ELSE 'ReservationCommitted' END AS name) t"#,
        )
        .bind(sku)
        .bind(i64::try_from(per_product)?)
        .execute(&platform.pool)
        .await?;
    }
    let deadline = Instant::now() + Duration::from_secs(1800);
    loop {
        let behind: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM product_stock p
               JOIN (SELECT aggregate_id, max(sequence) AS version FROM events
                      WHERE aggregate_type = 'Product' GROUP BY aggregate_id) e
                 ON e.aggregate_id = p.sku
              WHERE p.version < e.version",
        )
        .fetch_one(&platform.pool)
        .await?;
        if behind == 0 {
            return Ok((per_product * skus.len() as u64, started.elapsed()));
        }
        anyhow::ensure!(Instant::now() < deadline, "{behind} products still behind");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn body(skus: &[String], n: usize) -> Value {
    let mut lines = vec![json!({"sku": skus[n % skus.len()], "quantity": 1})];
    if n.is_multiple_of(2) && skus.len() > 1 {
        lines.push(json!({"sku": skus[(n + 37) % skus.len()], "quantity": 2}));
    }
    json!({"customer_id": format!("bench-{}", n % 500), "lines": lines, "payment_method": "tok_visa"})
}

/// Sends orders at `rate` for the run, then returns the time from each 202
/// to its saga's confirmation, in microseconds, and when each order was
/// accepted.
async fn steady(
    platform: &Arc<TestPlatform>,
    skus: &[String],
    options: &Options,
) -> anyhow::Result<(Histogram<u64>, HashMap<String, DateTime<Utc>>)> {
    let accepted: Arc<Mutex<HashMap<String, DateTime<Utc>>>> = Arc::default();
    let before = sagas_stored(&platform.pool).await?;
    let end = Instant::now() + Duration::from_secs(options.seconds);
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(options.rate)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut sent = Vec::new();
    let mut n = 0;
    while Instant::now() < end {
        tick.tick().await;
        let (platform, accepted, order) =
            (Arc::clone(platform), Arc::clone(&accepted), body(skus, n));
        n += 1;
        sent.push(tokio::spawn(async move {
            let response = platform.post("/api/orders", &order).await;
            let at = Utc::now();
            if response.status() == 202 {
                let answer: Value = response.json().await.unwrap_or_default();
                if let Some(id) = answer["order_id"].as_str() {
                    lock(&accepted).insert(id.to_owned(), at);
                }
            }
        }));
    }
    for request in sent {
        request.await?;
    }
    let accepted = std::mem::take(&mut *lock(&accepted));
    let ids: Vec<String> = accepted.keys().cloned().collect();
    wait_confirmed(platform, &ids, before, Duration::from_secs(120)).await?;
    let ended: Vec<(String, DateTime<Utc>)> =
        sqlx::query_as("SELECT order_id, updated_at FROM sagas WHERE order_id = ANY($1)")
            .bind(&ids)
            .fetch_all(&platform.pool)
            .await?;
    let mut completion = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
    for (id, at) in ended {
        if let Some(placed) = accepted.get(&id) {
            let micros = (at - *placed).num_microseconds().unwrap_or(0).max(1);
            completion.record(micros as u64)?;
        }
    }
    Ok((completion, accepted))
}

/// The events that mark an order's way through its saga, in order; a
/// product event counts when it names the order.
const MARKS: [&str; 5] = [
    "OrderPlaced",
    "StockReserved",
    "AuthorizationRequested",
    "PaymentAuthorized",
    "OrderConfirmed",
];

/// Where the orders of `accepted` spent their time, from the commit times
/// of the events that mark each stage (the last of a stage's events when
/// an order has several lines) and of the saga's last save: each stage's
/// p50 and p99.
async fn breakdown(pool: &PgPool, accepted: &HashMap<String, DateTime<Utc>>) -> anyhow::Result<()> {
    let Some(since) = accepted.values().min() else {
        return Ok(());
    };
    let rows: Vec<(String, String, Option<String>, DateTime<Utc>)> = sqlx::query_as(
        "SELECT aggregate_id, event_type, payload -> event_type ->> 'order_id', recorded_at
           FROM events WHERE recorded_at >= $1 - interval '1 second' AND event_type = ANY($2)",
    )
    .bind(since)
    .bind(&MARKS[..])
    .fetch_all(pool)
    .await?;
    let mut marks: HashMap<String, [Option<DateTime<Utc>>; MARKS.len() + 1]> = HashMap::new();
    for (aggregate_id, event_type, order_id, at) in rows {
        let order = order_id.unwrap_or(aggregate_id);
        let (Some(stage), Some(order)) = (
            MARKS.iter().position(|mark| *mark == event_type),
            accepted.get_key_value(&order).map(|(id, _)| id),
        ) else {
            continue;
        };
        let slot = &mut marks.entry(order.clone()).or_default()[stage];
        *slot = (*slot).max(Some(at));
    }
    let ended: Vec<(String, DateTime<Utc>)> =
        sqlx::query_as("SELECT order_id, updated_at FROM sagas WHERE order_id = ANY($1)")
            .bind(accepted.keys().collect::<Vec<_>>())
            .fetch_all(pool)
            .await?;
    for (order, at) in ended {
        if let Some(marks) = marks.get_mut(&order) {
            marks[MARKS.len()] = Some(at);
        }
    }
    let stages = [
        "placed -> stock reserved (relay, Kafka, saga intake, reservations)",
        "stock reserved -> authorization requested",
        "authorization requested -> authorized (save, gateway, recording)",
        "authorized -> order confirmed (the units stay reserved until they ship)",
        "order confirmed -> saga saved as ended",
    ];
    println!("  where the time went, from the events' commit times:");
    for (n, stage) in stages.iter().enumerate() {
        let mut spent = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
        for marks in marks.values() {
            if let (Some(from), Some(to)) = (marks[n], marks[n + 1]) {
                spent.record((to - from).num_microseconds().unwrap_or(0).max(1) as u64)?;
            }
        }
        println!(
            "    {stage}: p50 {:.1} ms, p99 {:.1} ms",
            spent.value_at_quantile(0.5) as f64 / 1000.0,
            spent.value_at_quantile(0.99) as f64 / 1000.0
        );
    }
    Ok(())
}

/// Places `burst` orders over `skus` from `clients` clients at once and waits until
/// every one is confirmed.
async fn saturate(
    platform: &Arc<TestPlatform>,
    burst: usize,
    clients: usize,
    skus: &[String],
) -> anyhow::Result<Burst> {
    let before = sagas_stored(&platform.pool).await?;
    let started = Instant::now();
    let ids = place(platform, burst, clients, skus).await?;
    let placed = started.elapsed();
    anyhow::ensure!(
        ids.len() == burst,
        "only {} of {burst} orders accepted",
        ids.len()
    );
    wait_confirmed(platform, &ids, before, Duration::from_secs(900)).await?;
    Ok(Burst {
        placed,
        confirmed: started.elapsed(),
    })
}

/// Places `burst` orders from `clients` clients; returns the accepted ids.
async fn place(
    platform: &Arc<TestPlatform>,
    burst: usize,
    clients: usize,
    skus: &[String],
) -> anyhow::Result<Vec<String>> {
    static ROUND: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(1);
    let round = ROUND.fetch_add(1, std::sync::atomic::Ordering::Relaxed) * 1_000_000;
    let orders = (0..burst)
        .map(|n| ("/api/orders".to_owned(), body(skus, round + n)))
        .collect();
    crate::connection::send_all(platform.address, clients, orders)
        .await?
        .iter()
        .map(|answer| {
            answer["order_id"]
                .as_str()
                .map(str::to_owned)
                .ok_or_else(|| anyhow::anyhow!("no order_id in {answer}"))
        })
        .collect()
}

fn lock<T>(value: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    value
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
