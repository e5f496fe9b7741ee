//! The relay, the projection workers and the saga orchestrator as separate
//! `orders` processes, killed with SIGKILL in the middle of their work and
//! started again.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: a panic is the failure report.

mod support;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use command_bus::{CommandBus, CommandContext, Expect};
use domain::values::{Currency, Money, ProductName, Sku};
use domain::{Product, ProductCommand};
use event_contract::{Envelope, Topics};
use indicatif::ProgressBar;
use platform::testing::kafka_brokers;
use projections::model::ReadModel;
use projections::model::products::ProductStock;
use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use sqlx::PgPool;
use support::{Cluster, FlowPlan, flow};

/// `products` products with `per_product - 1` stock additions each.
async fn write_product_events(pool: &PgPool, products: usize, per_product: u32) {
    let bus = Arc::new(CommandBus::new(pool.clone()));
    let context = CommandContext {
        correlation_id: "crash-test".into(),
        causation_id: "crash-test".into(),
        ..CommandContext::default()
    };
    let writers: Vec<_> = (0..products)
        .map(|n| {
            let (bus, context) = (Arc::clone(&bus), context.clone());
            tokio::spawn(async move {
                let sku = format!("SKU-{n:04}");
                let create = ProductCommand::CreateProduct {
                    sku: Sku::parse(&sku).unwrap(),
                    name: ProductName::parse(&sku).unwrap(),
                    price: Money::price(100, Currency::parse("EUR").unwrap()).unwrap(),
                };
                bus.execute::<Product>(&sku, create, &context, Expect::New)
                    .await
                    .unwrap();
                for quantity in 1..per_product {
                    let add = ProductCommand::AddStock { quantity };
                    bus.execute::<Product>(&sku, add, &context, Expect::Existing)
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap();
    }
}

/// Events at or before the relay's checkpoint: those it has published.
const PUBLISHED: &str = "SELECT count(*) FROM events e, relay_checkpoints c
                          WHERE (e.transaction_id::text::bigint, e.global_position)
                             <= (c.transaction_id, c.global_position)";

async fn scalar(pool: &PgPool, query: &str) -> i64 {
    sqlx::query_scalar::<_, Option<i64>>(query)
        .fetch_one(pool)
        .await
        .unwrap()
        .unwrap_or(0)
}

/// Polls `query` until `accept` takes its value, for at most `within`.
async fn wait_for(
    pool: &PgPool,
    query: &str,
    within: Duration,
    accept: impl Fn(i64) -> bool,
) -> i64 {
    let deadline = Instant::now() + within;
    loop {
        let value = scalar(pool, query).await;
        if accept(value) {
            return value;
        }
        assert!(Instant::now() < deadline, "{query} stuck at {value}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_killed_mid_stream_publishes_every_event_in_order_after_a_restart() {
    let mut cluster = Cluster::new("crash-relay").await;
    let pool = cluster.pool.clone();
    write_product_events(&pool, 100, 50).await;
    let total = scalar(&pool, "SELECT count(*) FROM events").await;
    assert_eq!(total, 5_000);

    // Small batches, so that the kill lands in the middle of the stream.
    let metrics = format!("127.0.0.1:{}", support::free_port());
    cluster.add(
        "relay",
        "relay",
        &[
            ("ORDERS_RELAY_BATCH_SIZE", "50"),
            ("ORDERS_METRICS_LISTEN", &metrics),
        ],
    );
    let at_kill = wait_for(&pool, PUBLISHED, Duration::from_secs(60), |n| n >= 500).await;
    // A relay process on its own is scraped at its metrics address.
    let scraped = reqwest::get(format!("http://{metrics}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(scraped.contains("relay_published_total"), "{scraped}");
    cluster.kill("relay");
    let after_kill = scalar(&pool, PUBLISHED).await;
    assert!(
        after_kill < total,
        "the relay had finished ({after_kill}) before the kill"
    );
    cluster.start("relay");
    wait_for(&pool, PUBLISHED, Duration::from_secs(120), |n| n == total).await;
    cluster.kill("relay");

    let topic = Topics::with_prefix(&cluster.topics.prefix)
        .for_aggregate("Product")
        .unwrap();
    let envelopes = read_until_all_seen(&topic, total as usize).await;
    let unique: HashSet<_> = envelopes.iter().map(|e| e.event_id).collect();
    assert_eq!(
        unique.len(),
        5_000,
        "every event reached Kafka (killed at {at_kill})"
    );
    // Each aggregate's events first arrive in sequence order; repeats after
    // the restart are allowed (at least once), gaps and reorderings are not.
    let mut next: HashMap<&str, i64> = HashMap::new();
    for envelope in &envelopes {
        let expected = next.entry(&envelope.aggregate_id).or_insert(1);
        assert!(
            envelope.sequence <= *expected,
            "{} arrived at {} before {}",
            envelope.aggregate_id,
            envelope.sequence,
            expected
        );
        if envelope.sequence == *expected {
            *expected += 1;
        }
    }
    assert!(next.values().all(|n| *n == 51));
}

/// Reads the topic from the start until `count` distinct events arrived.
async fn read_until_all_seen(topic: &str, count: usize) -> Vec<Envelope> {
    let consumer: StreamConsumer = platform::kafka::client_config(&kafka_brokers(), "crash-reader")
        .set("group.id", format!("crash-reader-{}", uuid::Uuid::new_v4()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let mut envelopes = Vec::new();
    let mut seen = HashSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while seen.len() < count {
        let message = tokio::time::timeout_at(deadline, consumer.recv())
            .await
            .expect("all events within two minutes")
            .unwrap();
        let envelope: Envelope = serde_json::from_slice(message.payload().unwrap()).unwrap();
        seen.insert(envelope.event_id);
        envelopes.push(envelope);
    }
    platform::kafka::close(consumer).await;
    envelopes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_projection_worker_killed_mid_stream_ends_equal_to_a_fresh_rebuild() {
    let mut cluster = Cluster::new("crash-projections").await;
    let pool = cluster.pool.clone();
    write_product_events(&pool, 60, 40).await;
    let total = scalar(&pool, "SELECT count(*) FROM events").await;
    // Everything is in Kafka before the worker starts.
    let relay_config = relay::RelayConfig {
        brokers: kafka_brokers(),
        topics: Topics::with_prefix(&cluster.topics.prefix),
        ..relay::RelayConfig::default()
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let relay = tokio::spawn(relay::run(pool.clone(), relay_config, async {
        stopped.await.ok();
    }));
    wait_for(&pool, PUBLISHED, Duration::from_secs(60), |n| n == total).await;
    stop.send(()).unwrap();
    relay.await.unwrap().unwrap();

    let applied = "SELECT sum(version)::bigint FROM product_stock";
    cluster.add(
        "projections",
        "projections",
        &[("ORDERS_PROJECTION_BATCH_SIZE", "20")],
    );
    wait_for(&pool, applied, Duration::from_secs(60), |n| n >= 300).await;
    cluster.kill("projections");
    let after_kill = scalar(&pool, applied).await;
    assert!(
        after_kill < total,
        "the worker had finished before the kill"
    );
    cluster.start("projections");
    wait_for(&pool, applied, Duration::from_secs(120), |n| n == total).await;
    cluster.kill("projections");

    let live = table(&pool).await;
    projections::rebuild::rebuild::<ProductStock>(&pool, &ProgressBar::hidden())
        .await
        .unwrap();
    let rebuilt = table(&pool).await;
    assert_eq!(live.len(), 60);
    assert_eq!(live, rebuilt);
}

/// Every product row, as text, in SKU order.
async fn table(pool: &PgPool) -> Vec<String> {
    sqlx::query_scalar(&format!(
        "SELECT t::text FROM {} t ORDER BY sku",
        ProductStock::TABLE
    ))
    .fetch_all(pool)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saga_orchestrator_killed_at_random_moments_still_ends_every_order_cleanly() {
    let mut cluster = Cluster::new("crash-saga").await;
    for role in ["gateway", "api", "relay", "projections", "saga"] {
        cluster.add(role, role, &[]);
    }
    cluster.ready().await;
    let skus: Vec<String> = (0..8).map(|n| format!("SKU-{n}")).collect();
    cluster.products(&skus, 150).await;

    let plan = FlowPlan {
        clients: 20,
        cancel_every: 9,
        rate: None,
        lifecycle_every: 5,
        ..FlowPlan::mixed(1000, &skus)
    };
    let flowing = tokio::spawn(flow(cluster.apis(), plan, Arc::default()));
    // Kill the orchestrator at moments that vary from run to run.
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(600 + fastrand::u64(0..1200))).await;
        cluster.kill("saga");
        tokio::time::sleep(Duration::from_millis(fastrand::u64(0..300))).await;
        cluster.start("saga");
    }
    let report = flowing.await.unwrap();
    assert!(report.wrong.is_empty(), "{:#?}", report.wrong);
    assert_eq!(report.accepted.len(), 1000);
    // Every order ended and the books balance: nothing reserved, sold what
    // the confirmed orders bought (never more than the stock), one capture
    // per confirmed order and none on a cancelled one, nothing twice.
    let confirmed = cluster
        .all_ended(&report.accepted, Duration::from_secs(180))
        .await;
    assert!(confirmed > 0 && confirmed < 1000);
    // The warehouse shipped, delivered, took back and cancelled after a
    // partial shipment while the orchestrator died under it.
    eprintln!("the warehouse's orders: {:?}", report.lifecycle);
    for fate in support::warehouse::Fate::ALL {
        assert!(
            report.lifecycle.get(fate.name()).is_some_and(|&n| n > 0),
            "no order was {}: {:?}",
            fate.name(),
            report.lifecycle
        );
    }
    cluster.books_balance(Duration::from_secs(30)).await;
}

/// The first step the saga took for `order_id`: when its saga row appeared.
async fn saga_started(pool: &PgPool, order_id: &str, within: Duration) -> Instant {
    let query = format!("SELECT count(*) FROM sagas WHERE order_id = '{order_id}'");
    wait_for(pool, &query, within, |n| n == 1).await;
    Instant::now()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_saga_process_takes_its_partitions_back_without_waiting_out_the_session() {
    let mut cluster = Cluster::new("restart-saga").await;
    for role in ["gateway", "api", "relay"] {
        cluster.add(role, role, &[]);
    }
    // A dynamic member coming back after a kill waits for the group to give
    // up on the dead one: the whole session timeout.
    let session = Duration::from_secs(30);
    let timeout_ms = session.as_millis().to_string();
    cluster.add(
        "saga",
        "saga",
        &[("ORDERS_KAFKA_SESSION_TIMEOUT_MS", &timeout_ms)],
    );
    cluster.ready().await;
    let sku = "SKU-RESTART".to_owned();
    cluster.products(std::slice::from_ref(&sku), 10).await;
    let first = flow(cluster.apis(), FlowPlan::paid(1, &sku, 1), Arc::default()).await;
    cluster
        .all_ended(&first.accepted, Duration::from_secs(60))
        .await;

    cluster.kill("saga");
    let second = flow(cluster.apis(), FlowPlan::paid(1, &sku, 1), Arc::default()).await;
    // The relay has published it: only the saga's consumer is missing.
    let written = scalar(&cluster.pool, "SELECT count(*) FROM events").await;
    wait_for(&cluster.pool, PUBLISHED, Duration::from_secs(30), |n| {
        n == written
    })
    .await;
    let started = Instant::now();
    cluster.start("saga");
    let stepped = saga_started(&cluster.pool, &second.accepted[0], session).await;
    let rejoined = stepped - started;
    eprintln!("first saga step {rejoined:.2?} after the saga process started");
    assert!(
        rejoined < session * 2 / 3,
        "the restarted saga waited {rejoined:?}, as a new member would (logs: {})",
        cluster.logs.display()
    );
    cluster
        .all_ended(&second.accepted, Duration::from_secs(60))
        .await;
}
