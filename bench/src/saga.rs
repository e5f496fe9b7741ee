//! `bench saga`: orders from placement to CONFIRMED through the saga.
//!
//! The whole platform runs in this process (API, relay, projections, saga
//! orchestrator, and the payment gateway service) against the real
//! PostgreSQL and Kafka. Two measurements:
//!
//! - completion time at a steady rate (open loop): from the 202 on
//!   `POST /api/orders` to the orchestrator recording the order confirmed;
//! - throughput at saturation: a burst of orders placed as fast as 64
//!   clients can, and the rate at which their sagas reach CONFIRMED.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use hdrhistogram::Histogram;
use platform_tests::TestPlatform;
use saga_orchestrator::driver::Policy;
use serde_json::{Value, json};

#[derive(Debug, clap::Args)]
pub struct Options {
    /// Orders per second for the completion-time run.
    #[arg(long, default_value_t = 50)]
    rate: u32,
    /// Measured seconds of the completion-time run.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Orders in the saturation burst.
    #[arg(long, default_value_t = 3000)]
    burst: usize,
}

const PRODUCTS: usize = 100;

pub async fn run(options: Options) -> anyhow::Result<()> {
    let (platform, _gateway) = TestPlatform::start_with_saga(Policy::default()).await;
    let platform = Arc::new(platform);
    let skus: Vec<String> = (0..PRODUCTS).map(|n| format!("SAGA-{n:03}")).collect();
    for sku in &skus {
        platform.create_product(sku, 1250, 1_000_000).await;
    }
    println!(
        "saga: POST /api/orders (tok_visa, 1-2 lines over {PRODUCTS} products) -> saga CONFIRMED; \
         API, relay, projections and orchestrator in one process"
    );

    let completion = steady(&platform, &skus, &options).await?;
    let ms = |q: f64| completion.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "at {:>4} orders/s: p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms over {} orders (target p99 < 500 ms)",
        options.rate,
        ms(0.5),
        ms(0.9),
        ms(0.99),
        completion.max() as f64 / 1000.0,
        completion.len()
    );

    let (placed, confirmed) = saturate(&platform, &skus, options.burst).await?;
    println!(
        "saturation: {} orders placed in {:.2} s ({:.0} orders/s accepted); all CONFIRMED after {:.2} s: {:.0} orders/s",
        options.burst,
        placed.as_secs_f64(),
        options.burst as f64 / placed.as_secs_f64(),
        confirmed.as_secs_f64(),
        options.burst as f64 / confirmed.as_secs_f64()
    );
    if let Ok(platform) = Arc::try_unwrap(platform) {
        platform.stop().await;
    }
    Ok(())
}

fn body(skus: &[String], n: usize) -> Value {
    let mut lines = vec![json!({"sku": skus[n % skus.len()], "quantity": 1})];
    if n.is_multiple_of(2) {
        lines.push(json!({"sku": skus[(n + 37) % skus.len()], "quantity": 2}));
    }
    json!({"customer_id": format!("bench-{}", n % 500), "lines": lines, "payment_method": "tok_visa"})
}

/// Sends orders at `rate` for the run, then returns the time from each 202
/// to its saga's confirmation, in microseconds.
async fn steady(
    platform: &Arc<TestPlatform>,
    skus: &[String],
    options: &Options,
) -> anyhow::Result<Histogram<u64>> {
    let accepted: Arc<Mutex<HashMap<String, DateTime<Utc>>>> = Arc::default();
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
    wait_confirmed(platform, &ids, Duration::from_secs(120)).await?;
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
    Ok(completion)
}

/// Places `burst` orders from 64 clients at once; returns how long placing
/// took and how long until every one was confirmed.
async fn saturate(
    platform: &Arc<TestPlatform>,
    skus: &[String],
    burst: usize,
) -> anyhow::Result<(Duration, Duration)> {
    let started = Instant::now();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let clients = (0..64).map(|_| {
        let (platform, next, skus) = (Arc::clone(platform), Arc::clone(&next), skus.to_vec());
        tokio::spawn(async move {
            let mut ids = Vec::new();
            loop {
                let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if n >= burst {
                    return ids;
                }
                let response = platform
                    .post("/api/orders", &body(&skus, 1_000_000 + n))
                    .await;
                let answer: Value = response.json().await.unwrap_or_default();
                if let Some(id) = answer["order_id"].as_str() {
                    ids.push(id.to_owned());
                }
            }
        })
    });
    let mut ids = Vec::new();
    for client in clients {
        ids.extend(client.await?);
    }
    let placed = started.elapsed();
    anyhow::ensure!(
        ids.len() == burst,
        "only {} of {burst} orders accepted",
        ids.len()
    );
    wait_confirmed(platform, &ids, Duration::from_secs(600)).await?;
    Ok((placed, started.elapsed()))
}

/// Waits until the sagas of `ids` are all CONFIRMED.
async fn wait_confirmed(
    platform: &TestPlatform,
    ids: &[String],
    within: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    loop {
        let confirmed: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM sagas WHERE state = 'CONFIRMED' AND order_id = ANY($1)",
        )
        .bind(ids)
        .fetch_one(&platform.pool)
        .await?;
        if confirmed == ids.len() as i64 {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{confirmed} of {} confirmed after {within:?}",
            ids.len()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn lock<T>(value: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    value
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
