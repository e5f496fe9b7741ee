//! The relay, the projection workers and the saga orchestrator as separate
//! `orders` processes, killed with SIGKILL in the middle of their work and
//! started again.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: a panic is the failure report.

use std::collections::{HashMap, HashSet};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use domain::values::{Currency, Money, ProductName, Sku};
use domain::{Product, ProductCommand};
use event_store::{CommandBus, CommandContext, Envelope, Expect, Topics};
use indicatif::ProgressBar;
use platform::testing::{TestDatabase, TestTopics, kafka_brokers};
use projections::model::ReadModel;
use projections::model::products::ProductStock;
use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use sqlx::PgPool;

/// A running `orders` process, killed with SIGKILL when dropped (so that a
/// failing test leaves no process behind).
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `orders run --role <role>` against the test's database and topics.
fn spawn(
    role: &str,
    database: &TestDatabase,
    topics: &TestTopics,
    extra: &[(&str, &str)],
) -> Running {
    let mut command = Command::new(env!("CARGO_BIN_EXE_orders"));
    command
        .args(["run", "--role", role, "--no-migrate"])
        .env("DATABASE_URL", &database.url)
        .env("KAFKA_BROKERS", kafka_brokers())
        .env("ORDERS_KAFKA_TOPIC_PREFIX", &topics.prefix)
        .env("ORDERS_LOG_FILTER", "error")
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    for (name, value) in extra {
        command.env(name, value);
    }
    Running(command.spawn().expect("orders starts"))
}

/// SIGKILL, then wait for the process to be gone.
fn kill(process: Running) {
    drop(process);
}

async fn database() -> (TestDatabase, PgPool) {
    let database = TestDatabase::create().await.unwrap();
    let pool = database.pool(10).await.unwrap();
    event_store::migrate(&pool).await.unwrap();
    projections::migrate(&pool).await.unwrap();
    (database, pool)
}

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
    let (database, pool) = database().await;
    let topics = TestTopics::new();
    write_product_events(&pool, 100, 50).await;
    let total = scalar(&pool, "SELECT count(*) FROM events").await;
    assert_eq!(total, 5_000);

    // Small batches, so that the kill lands in the middle of the stream.
    let small = [("ORDERS_RELAY_BATCH_SIZE", "50")];
    let relay = spawn("relay", &database, &topics, &small);
    let at_kill = wait_for(&pool, PUBLISHED, Duration::from_secs(60), |n| n >= 500).await;
    kill(relay);
    let after_kill = scalar(&pool, PUBLISHED).await;
    assert!(
        after_kill < total,
        "the relay had finished ({after_kill}) before the kill"
    );
    let relay = spawn("relay", &database, &topics, &small);
    wait_for(&pool, PUBLISHED, Duration::from_secs(120), |n| n == total).await;
    kill(relay);

    let topic = Topics::with_prefix(&topics.prefix)
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
    envelopes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_projection_worker_killed_mid_stream_ends_equal_to_a_fresh_rebuild() {
    let (database, pool) = database().await;
    let topics = TestTopics::new();
    write_product_events(&pool, 60, 40).await;
    let total = scalar(&pool, "SELECT count(*) FROM events").await;
    // Everything is in Kafka before the worker starts.
    let relay_config = relay::RelayConfig {
        brokers: kafka_brokers(),
        topics: Topics::with_prefix(&topics.prefix),
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
    let small = [("ORDERS_PROJECTION_BATCH_SIZE", "20")];
    let worker = spawn("projections", &database, &topics, &small);
    wait_for(&pool, applied, Duration::from_secs(60), |n| n >= 300).await;
    kill(worker);
    let after_kill = scalar(&pool, applied).await;
    assert!(
        after_kill < total,
        "the worker had finished before the kill"
    );
    let worker = spawn("projections", &database, &topics, &small);
    wait_for(&pool, applied, Duration::from_secs(120), |n| n == total).await;
    kill(worker);

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

/// A free port on 127.0.0.1 (free when asked; nothing else binds it here).
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// Waits until the API child answers `/healthz`.
async fn api_ready(client: &reqwest::Client, base: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while client.get(format!("{base}/healthz")).send().await.is_err() {
        assert!(Instant::now() < deadline, "the API did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Orders whose saga has not finished: no confirmation and no cancellation.
const UNFINISHED: &str = "SELECT count(*) FROM events p
  WHERE p.aggregate_type = 'Order' AND p.event_type = 'OrderPlaced'
    AND NOT EXISTS (SELECT 1 FROM sagas s WHERE s.order_id = p.aggregate_id AND s.done)";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saga_orchestrator_killed_at_random_moments_still_ends_every_order_cleanly() {
    const ORDERS: usize = 1000;
    let (database, pool) = database().await;
    saga_orchestrator::migrate(&pool).await.unwrap();
    let topics = TestTopics::new();
    let port = free_port().to_string();
    let base = format!("http://127.0.0.1:{port}");
    let gateway_port = free_port();
    let gateway_url = format!("http://127.0.0.1:{gateway_port}");
    let gateway_database = TestDatabase::create().await.unwrap();
    let settings = [
        ("ORDERS_LISTEN", format!("127.0.0.1:{port}")),
        ("ORDERS_GATEWAY_LISTEN", format!("127.0.0.1:{gateway_port}")),
        ("ORDERS_GATEWAY_DATABASE_URL", gateway_database.url.clone()),
        ("ORDERS_PAYMENT_GATEWAY_URL", gateway_url.clone()),
        ("ORDERS_SAGA_PAYMENT_DEADLINE_MS", "1500".to_owned()),
    ];
    let settings: Vec<(&str, &str)> = settings.iter().map(|(k, v)| (*k, v.as_str())).collect();
    // The API, the gateway and the relay live through the test; the saga
    // does not.
    let _gateway = spawn("gateway", &database, &topics, &settings);
    let _api = spawn("api", &database, &topics, &settings);
    let _relay = spawn("relay", &database, &topics, &settings);
    let client = reqwest::Client::new();
    api_ready(&client, &base).await;

    let skus: Vec<String> = (0..8).map(|n| format!("SKU-{n}")).collect();
    for sku in &skus {
        let product =
            serde_json::json!({"sku": sku, "name": sku, "price_cents": 300, "currency": "EUR"});
        let created = client
            .post(format!("{base}/api/products"))
            .json(&product)
            .send()
            .await
            .unwrap();
        assert_eq!(created.status(), 201);
        let stock = serde_json::json!({"quantity": 150});
        let added = client
            .post(format!("{base}/api/products/{sku}/stock"))
            .json(&stock)
            .send()
            .await
            .unwrap();
        assert_eq!(added.status(), 202);
    }

    let mut saga = Some(spawn("saga", &database, &topics, &settings));
    let placing = {
        let (client, base, skus) = (client.clone(), base.clone(), skus.clone());
        tokio::spawn(async move {
            let tokens = [
                "tok_visa",
                "tok_visa",
                "tok_visa",
                "tok_visa",
                "tok_declined",
                "tok_flaky",
                "tok_timeout",
            ];
            let mut ids = Vec::new();
            for batch in 0..ORDERS / 20 {
                let sends = (0..20).map(|n| {
                    let i = batch * 20 + n;
                    let lines = if i % 3 == 0 {
                        serde_json::json!([{"sku": skus[i % 8], "quantity": 1}, {"sku": skus[(i + 3) % 8], "quantity": 2}])
                    } else {
                        serde_json::json!([{"sku": skus[i % 8], "quantity": 1 + i % 2}])
                    };
                    let body = serde_json::json!({"customer_id": format!("c-{}", i % 50), "lines": lines, "payment_method": tokens[i % tokens.len()]});
                    let (client, base) = (client.clone(), base.clone());
                    async move {
                        let answer: serde_json::Value = client.post(format!("{base}/api/orders")).json(&body).send().await.unwrap().json().await.unwrap();
                        answer["order_id"].as_str().unwrap().to_owned()
                    }
                });
                let placed = futures::future::join_all(sends).await;
                // Some customers change their minds, in flight or later.
                for id in placed.iter().step_by(9) {
                    let cancel = serde_json::json!({"reason": "changed my mind"});
                    client
                        .post(format!("{base}/api/orders/{id}/cancel"))
                        .json(&cancel)
                        .send()
                        .await
                        .unwrap();
                }
                ids.extend(placed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            ids
        })
    };
    // Kill the orchestrator at moments that vary from run to run.
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(600 + fastrand::u64(0..1200))).await;
        kill(saga.take().unwrap());
        tokio::time::sleep(Duration::from_millis(fastrand::u64(0..300))).await;
        saga = Some(spawn("saga", &database, &topics, &settings));
    }
    let ids = placing.await.unwrap();
    assert_eq!(ids.len(), ORDERS);
    wait_for(
        &pool,
        "SELECT count(*) FROM sagas",
        Duration::from_secs(180),
        |n| n == ORDERS as i64,
    )
    .await;
    wait_for(&pool, UNFINISHED, Duration::from_secs(180), |n| n == 0).await;
    kill(saga.take().unwrap());

    // Every order ended, confirmed or cancelled.
    let endings: Vec<(String, String)> = sqlx::query_as(
        "SELECT DISTINCT ON (aggregate_id) aggregate_id, event_type FROM events
          WHERE aggregate_type = 'Order' ORDER BY aggregate_id, sequence DESC",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(endings.len(), ORDERS);
    let confirmed: HashSet<&str> = endings
        .iter()
        .filter(|(_, last)| last == "OrderConfirmed")
        .map(|(id, _)| id.as_str())
        .collect();
    let cancelled = endings
        .iter()
        .filter(|(_, last)| last == "OrderCancelled")
        .count();
    assert_eq!(confirmed.len() + cancelled, ORDERS, "{endings:?}");
    assert!(!confirmed.is_empty() && cancelled > 0);

    // Stock is conserved: nothing stays reserved, and what left the stock is
    // exactly what the confirmed orders bought.
    let stock: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT aggregate_id,
                coalesce(sum(CASE event_type WHEN 'StockReserved' THEN q WHEN 'ReservationReleased' THEN -q
                                             WHEN 'ReservationCommitted' THEN -q ELSE 0 END), 0)::bigint,
                coalesce(sum(CASE event_type WHEN 'ReservationCommitted' THEN q WHEN 'SoldStockReturned' THEN -q
                                             ELSE 0 END), 0)::bigint
           FROM (SELECT aggregate_id, event_type,
                        coalesce((payload -> event_type ->> 'quantity')::bigint, 0) AS q
                   FROM events WHERE aggregate_type = 'Product') e
          GROUP BY aggregate_id ORDER BY aggregate_id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let bought: HashMap<String, i64> = sqlx::query_as::<_, (String, i64)>(
        "SELECT line ->> 'sku', sum((line ->> 'quantity')::bigint)::bigint
           FROM events, json_array_elements(payload -> 'OrderPlaced' -> 'lines') AS line
          WHERE aggregate_type = 'Order' AND event_type = 'OrderPlaced' AND aggregate_id = ANY($1)
          GROUP BY 1",
    )
    .bind(
        confirmed
            .iter()
            .map(|id| id.to_string())
            .collect::<Vec<_>>(),
    )
    .fetch_all(&pool)
    .await
    .unwrap()
    .into_iter()
    .collect();
    let held: Vec<String> = sqlx::query_scalar(
        "SELECT s.saga::text FROM sagas s
          WHERE (SELECT coalesce(sum(CASE event_type WHEN 'StockReserved' THEN 1
                                     WHEN 'ReservationReleased' THEN -1
                                     WHEN 'ReservationCommitted' THEN -1 ELSE 0 END), 0)
                   FROM events e WHERE e.aggregate_type = 'Product'
                    AND e.payload -> e.event_type ->> 'order_id' = s.order_id) <> 0",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert!(held.is_empty(), "sagas that left a reservation: {held:#?}");
    for (sku, reserved, sold) in &stock {
        assert_eq!(*reserved, 0, "{sku} still holds reservations");
        assert_eq!(*sold, bought.get(sku).copied().unwrap_or(0), "{sku}");
        assert!(*sold <= 150, "{sku} oversold");
    }

    // Money: confirmed orders hold one captured charge, cancelled ones none,
    // and no payment was approved or refunded twice.
    let listed: serde_json::Value = client
        .get(format!("{gateway_url}/charges?limit=1000"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let charges: HashMap<String, String> = listed["charges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["key"].as_str().unwrap().to_owned(),
                c["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert!(listed["next_after"].is_null() || charges.len() == 1000);
    for (id, last) in &endings {
        let charge = charges
            .get(&saga_orchestrator::driver::charge_key(id))
            .map(String::as_str);
        if last == "OrderConfirmed" {
            assert_eq!(charge, Some("approved"), "{id}");
        } else {
            assert_ne!(
                charge,
                Some("approved"),
                "cancelled order {id} keeps its money"
            );
        }
    }
    let doubled: i64 = scalar(
        &pool,
        "SELECT count(*) FROM (SELECT aggregate_id FROM events
           WHERE aggregate_type = 'Payment' AND event_type IN ('ChargeApproved', 'PaymentRefunded')
           GROUP BY aggregate_id, event_type HAVING count(*) > 1) d",
    )
    .await;
    assert_eq!(doubled, 0);
}
