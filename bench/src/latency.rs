//! `bench latency`: the time from a 202 on `POST /api/orders` to the order
//! being visible in GraphQL, at steady rates of commands.
//!
//! The whole platform runs in this process (API, relay, projection workers)
//! against the real PostgreSQL and Kafka. Orders are sent at a fixed rate
//! whatever the answers take (an open loop); one poller asks GraphQL for the
//! newest orders every 2 ms and notes when each order first appears.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use platform_tests::{TestPlatform, order_body};
use serde_json::{Value, json};

#[derive(Debug, clap::Args)]
pub struct Options {
    /// Commands per second, one run each.
    #[arg(long, value_delimiter = ',', default_value = "100,500")]
    rates: Vec<u32>,
    /// Measured seconds per rate.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Unmeasured seconds before each run.
    #[arg(long, default_value_t = 3)]
    warmup: u64,
}

type Times = Arc<Mutex<HashMap<String, Instant>>>;

pub async fn run(options: Options) -> anyhow::Result<()> {
    let platform = Arc::new(TestPlatform::start().await);
    let skus: Vec<String> = (0..50).map(|n| format!("LAT-{n:02}")).collect();
    for sku in &skus {
        platform.create_product(sku, 1250, 1_000_000).await;
    }
    println!(
        "latency: REST command accepted (202) -> order visible in GraphQL; API, relay and \
         projections in one process; {} s per rate after {} s warm-up; poll every 2 ms",
        options.seconds, options.warmup
    );
    println!(
        "{:>8} | {:>8} {:>8} {:>8} {:>8} | {:>9} {:>7}",
        "cmd/s", "p50 ms", "p90 ms", "p99 ms", "max ms", "measured", "missed"
    );
    for &rate in &options.rates {
        let (latency, measured, missed) = measure(&platform, &skus, rate, &options).await?;
        let ms = |q: f64| latency.value_at_quantile(q) as f64 / 1000.0;
        println!(
            "{:>8} | {:>8.1} {:>8.1} {:>8.1} {:>8.1} | {:>9} {:>7}",
            rate,
            ms(0.5),
            ms(0.9),
            ms(0.99),
            latency.max() as f64 / 1000.0,
            measured,
            missed
        );
    }
    if let Ok(platform) = Arc::try_unwrap(platform) {
        platform.stop().await;
    }
    Ok(())
}

async fn measure(
    platform: &Arc<TestPlatform>,
    skus: &[String],
    rate: u32,
    options: &Options,
) -> anyhow::Result<(Histogram<u64>, usize, usize)> {
    let accepted: Times = Arc::default();
    let seen: Times = Arc::default();
    let polling = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let poller = tokio::spawn(poll(
        Arc::clone(platform),
        Arc::clone(&seen),
        Arc::clone(&polling),
    ));

    let started = Instant::now();
    let measure_from = started + Duration::from_secs(options.warmup);
    let end = measure_from + Duration::from_secs(options.seconds);
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut sent = Vec::new();
    let mut n = 0usize;
    while Instant::now() < end {
        tick.tick().await;
        let (platform, accepted) = (Arc::clone(platform), Arc::clone(&accepted));
        let lines = [
            (skus[n % skus.len()].as_str(), 1),
            (skus[(n + 7) % skus.len()].as_str(), 2),
        ];
        let body = order_body(&lines);
        let measured = Instant::now() >= measure_from;
        n += 1;
        sent.push(tokio::spawn(async move {
            let response = platform.post("/api/orders", &body).await;
            let at = Instant::now();
            if response.status() == 202 && measured {
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
    // Give the last orders time to show up.
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let all_seen = {
            let (accepted, seen) = (lock(&accepted), lock(&seen));
            accepted.keys().all(|id| seen.contains_key(id))
        };
        if all_seen {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    polling.store(false, std::sync::atomic::Ordering::SeqCst);
    poller.await?;

    let mut latency = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
    let (accepted, seen) = (lock(&accepted), lock(&seen));
    let mut missed = 0;
    for (id, at) in accepted.iter() {
        match seen.get(id) {
            Some(visible) => {
                let micros = visible.saturating_duration_since(*at).as_micros() as u64;
                latency.record(micros.max(1))?;
            }
            None => missed += 1,
        }
    }
    Ok((latency, accepted.len() - missed, missed))
}

/// Asks GraphQL for the newest orders every 2 ms and notes when each id first
/// appears.
async fn poll(
    platform: Arc<TestPlatform>,
    seen: Times,
    polling: Arc<std::sync::atomic::AtomicBool>,
) {
    let query = "{ orders(first: 100) { edges { node { id } } } }";
    while polling.load(std::sync::atomic::Ordering::SeqCst) {
        let response = platform.graphql(query, json!({})).await;
        let at = Instant::now();
        if let Some(edges) = response["data"]["orders"]["edges"].as_array() {
            let mut seen = lock(&seen);
            for edge in edges {
                if let Some(id) = edge["node"]["id"].as_str() {
                    seen.entry(id.to_owned()).or_insert(at);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn lock(times: &Times) -> std::sync::MutexGuard<'_, HashMap<String, Instant>> {
    times
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
