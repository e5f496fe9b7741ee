//! Projection workers against a real Kafka and PostgreSQL, fed with envelopes
//! produced straight into their topic: events the store holds (written to it
//! here, as the command bus would), and messages it does not.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: a panic is the failure report.

use std::time::Duration;

use chrono::Utc;
use event_contract::{Envelope, Topics};
use platform::testing::{TestDatabase, TestTopics, consume, header, kafka_brokers};
use projections::model::products::ProductStock;
use projections::worker::{self, WorkerConfig};
use rdkafka::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio::sync::oneshot;

struct Fixture {
    pool: PgPool,
    topics: TestTopics,
    config: WorkerConfig,
    _database: TestDatabase,
}

async fn fixture() -> Fixture {
    let database = TestDatabase::create().await.unwrap();
    let pool = database.pool(10).await.unwrap();
    event_store::migrate(&pool).await.unwrap();
    projections::migrate(&pool).await.unwrap();
    let topics = TestTopics::new();
    let config = WorkerConfig {
        brokers: kafka_brokers(),
        topics: Topics::with_prefix(&topics.prefix),
        group_prefix: topics.prefix.clone(),
        ..WorkerConfig::default()
    };
    Fixture {
        pool,
        topics,
        config,
        _database: database,
    }
}

fn product_event(sku: &str, sequence: i64, event_type: &str, payload: Value) -> Envelope {
    Envelope {
        event_id: uuid::Uuid::now_v7(),
        aggregate_type: "Product".into(),
        aggregate_id: sku.into(),
        sequence,
        global_position: sequence,
        event_type: event_type.into(),
        event_version: "1.0".into(),
        recorded_at: Utc::now(),
        payload,
        metadata: json!({}),
    }
}

fn created(sku: &str) -> Envelope {
    product_event(
        sku,
        1,
        "ProductCreated",
        json!({"sku": sku, "name": sku, "price": {"amount_cents": 500, "currency": "EUR"}}),
    )
}

fn added(sku: &str, sequence: i64, quantity: u32) -> Envelope {
    product_event(sku, sequence, "StockAdded", json!({"quantity": quantity}))
}

async fn produce(fixture: &Fixture, key: &str, payload: &[u8]) {
    let producer: FutureProducer = platform::kafka::client_config(&kafka_brokers(), "test")
        .create()
        .unwrap();
    let topic = fixture.config.topics.for_aggregate("Product").unwrap();
    producer
        .send(
            FutureRecord::to(&topic).key(key).payload(payload),
            Duration::from_secs(30),
        )
        .await
        .unwrap();
}

/// Writes `events` into the store, as appends would have (once each).
async fn store(fixture: &Fixture, events: &[Envelope]) {
    for event in events {
        sqlx::query(
            "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version,
                                 payload, metadata, event_id)
             VALUES ($1, $2, $3, $4, $5, $6::json, $7::json, $8) ON CONFLICT DO NOTHING",
        )
        .bind(&event.aggregate_type)
        .bind(&event.aggregate_id)
        .bind(event.sequence)
        .bind(&event.event_type)
        .bind(&event.event_version)
        .bind(json!({ event.event_type.as_str(): event.payload }).to_string())
        .bind(event.metadata.to_string())
        .bind(event.event_id)
        .execute(&fixture.pool)
        .await
        .unwrap();
    }
}

/// Stores `events` and publishes them, as the command bus and the relay do.
async fn produce_events(fixture: &Fixture, events: &[Envelope]) {
    store(fixture, events).await;
    publish(fixture, events).await;
}

/// Publishes `events` without storing them: what anybody who can produce to
/// the topic can do.
async fn publish(fixture: &Fixture, events: &[Envelope]) {
    for event in events {
        produce(
            fixture,
            &event.aggregate_id,
            &serde_json::to_vec(event).unwrap(),
        )
        .await;
    }
}

fn start(
    fixture: &Fixture,
) -> (
    oneshot::Sender<()>,
    tokio::task::JoinHandle<anyhow::Result<()>>,
) {
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(worker::run::<ProductStock>(
        fixture.pool.clone(),
        fixture.config.clone(),
        async {
            stopped.await.ok();
        },
    ));
    (stop, task)
}

/// Waits until the product's row reaches `version`; returns (on_hand, version).
async fn stock_at(pool: &PgPool, sku: &str, version: i64) -> (i64, i64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let row: Option<(i64, i64)> =
            sqlx::query_as("SELECT on_hand, version FROM product_stock WHERE sku = $1")
                .bind(sku)
                .fetch_optional(pool)
                .await
                .unwrap();
        if let Some(row) = row
            && row.1 >= version
        {
            return row;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{sku} stuck at {row:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn events_are_applied_and_offsets_recorded_with_them() {
    let fixture = fixture().await;
    let (stop, task) = start(&fixture);
    produce_events(
        &fixture,
        &[created("MUG"), added("MUG", 2, 5), added("MUG", 3, 2)],
    )
    .await;

    assert_eq!(stock_at(&fixture.pool, "MUG", 3).await, (7, 3));
    let recorded: i64 = sqlx::query_scalar(
        "SELECT coalesce(sum(next_offset), 0)::bigint FROM projection_offsets WHERE projection = 'products'",
    )
    .fetch_one(&fixture.pool)
    .await
    .unwrap();
    assert_eq!(recorded, 3);
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn duplicates_injected_into_kafka_change_nothing() {
    let fixture = fixture().await;
    let events = [created("MUG"), added("MUG", 2, 5), added("MUG", 3, 2)];
    let (stop, task) = start(&fixture);
    produce_events(&fixture, &events).await;
    assert_eq!(stock_at(&fixture.pool, "MUG", 3).await, (7, 3));

    // The same events again, in a different order, then one new event.
    produce_events(
        &fixture,
        &[events[2].clone(), events[0].clone(), events[1].clone()],
    )
    .await;
    produce_events(&fixture, &[added("MUG", 4, 1)]).await;

    assert_eq!(stock_at(&fixture.pool, "MUG", 4).await, (8, 4));
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn the_same_event_twice_in_one_batch_is_a_redelivery_not_a_forgery() {
    let fixture = fixture().await;
    let events = [created("MUG"), added("MUG", 2, 5), added("MUG", 3, 2)];
    store(&fixture, &events).await;
    // A relay that started over publishes some events twice: waiting in the
    // topic, they reach the worker in one batch.
    publish(
        &fixture,
        &[
            events[0].clone(),
            events[1].clone(),
            events[1].clone(),
            events[0].clone(),
            events[2].clone(),
            events[2].clone(),
        ],
    )
    .await;
    // Then a message that is poison for sure: once its dead letter is out,
    // so is any other of the batches before it.
    produce(&fixture, "MUG", b"not an envelope").await;
    let (stop, task) = start(&fixture);
    assert_eq!(stock_at(&fixture.pool, "MUG", 3).await, (7, 3));
    let dead_letters =
        Topics::dead_letter(&fixture.config.topics.for_aggregate("Product").unwrap());
    let messages = consume(&[dead_letters], 2, Duration::from_secs(5))
        .await
        .unwrap();
    let errors: Vec<String> = messages
        .iter()
        .map(|m| header(m, "error").unwrap())
        .collect();
    assert_eq!(messages.len(), 1, "{errors:?}");
    assert_eq!(messages[0].payload().unwrap(), b"not an envelope");
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_poison_message_goes_to_the_dead_letter_topic_and_later_events_still_apply() {
    let fixture = fixture().await;
    let (stop, task) = start(&fixture);
    produce_events(&fixture, &[created("MUG")]).await;
    produce(&fixture, "MUG", b"{ this is not an envelope").await;
    let unknown = product_event("TEA", 1, "ProductVanished", json!({}));
    produce_events(&fixture, &[unknown.clone(), added("MUG", 2, 4)]).await;

    assert_eq!(stock_at(&fixture.pool, "MUG", 2).await, (4, 2));
    let dead_letters =
        Topics::dead_letter(&fixture.config.topics.for_aggregate("Product").unwrap());
    let messages = consume(&[dead_letters], 2, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(messages.len(), 2);
    // (payload, error header) of each dead letter, in any order: they came
    // from different partitions.
    let mut letters: Vec<(Vec<u8>, String)> = messages
        .iter()
        .map(|m| {
            let error = header(m, "error").unwrap();
            (m.payload().unwrap().to_vec(), error)
        })
        .collect();
    letters.sort();
    assert_eq!(letters[0].0, b"{ this is not an envelope");
    assert!(letters[0].1.contains("envelope"), "{letters:?}");
    assert_eq!(letters[1].0, serde_json::to_vec(&unknown).unwrap());
    assert!(letters[1].1.contains("ProductVanished"), "{letters:?}");
    let tea: i64 = sqlx::query_scalar("SELECT count(*) FROM product_stock WHERE sku = 'TEA'")
        .fetch_one(&fixture.pool)
        .await
        .unwrap();
    assert_eq!(tea, 0);
    drop(fixture.topics);
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn events_already_in_the_topic_before_the_worker_starts_are_applied() {
    let fixture = fixture().await;
    produce_events(&fixture, &[created("MUG"), added("MUG", 2, 5)]).await;
    let (stop, task) = start(&fixture);

    assert_eq!(stock_at(&fixture.pool, "MUG", 2).await, (5, 2));
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_message_the_store_does_not_hold_is_never_applied() {
    let fixture = fixture().await;
    let (stop, task) = start(&fixture);
    let real = [created("MUG"), added("MUG", 2, 5)];
    produce_events(&fixture, &real).await;
    assert_eq!(stock_at(&fixture.pool, "MUG", 2).await, (5, 2));

    // A forged event of the next sequence, and a real event's id with a
    // doctored body: the first is dead-lettered, the second applied as the
    // store holds it.
    let forged = added("MUG", 3, 1_000);
    publish(&fixture, std::slice::from_ref(&forged)).await;
    let mut doctored = added("MUG", 3, 2);
    store(&fixture, std::slice::from_ref(&doctored)).await;
    doctored.payload = json!({"quantity": 900});
    publish(&fixture, &[doctored]).await;

    assert_eq!(stock_at(&fixture.pool, "MUG", 3).await, (7, 3));
    let dead_letters =
        Topics::dead_letter(&fixture.config.topics.for_aggregate("Product").unwrap());
    let messages = consume(&[dead_letters], 1, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(messages.len(), 1);
    let letter = &messages[0];
    assert_eq!(
        letter.payload().unwrap(),
        serde_json::to_vec(&forged).unwrap()
    );
    let error = header(letter, "error").unwrap();
    assert!(error.contains("holds no such event"), "{error}");
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_row_behind_the_event_heard_of_catches_up_from_the_store() {
    let fixture = fixture().await;
    let (stop, task) = start(&fixture);
    // Only the last of four events reaches Kafka (the others were lost, or
    // come later): the row reads the rest from the store.
    let events = [
        created("MUG"),
        added("MUG", 2, 5),
        added("MUG", 3, 2),
        added("MUG", 4, 1),
    ];
    store(&fixture, &events).await;
    publish(&fixture, &events[3..]).await;
    assert_eq!(stock_at(&fixture.pool, "MUG", 4).await, (8, 4));
    // The ones that arrive late change nothing.
    publish(&fixture, &events[..3]).await;
    produce_events(&fixture, &[added("MUG", 5, 10)]).await;
    assert_eq!(stock_at(&fixture.pool, "MUG", 5).await, (18, 5));
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn one_stored_event_the_projection_cannot_apply_does_not_freeze_its_row() {
    let fixture = fixture().await;
    let (stop, task) = start(&fixture);
    let vanished = product_event("MUG", 2, "StockVanished", json!({"quantity": 3}));
    produce_events(
        &fixture,
        &[
            created("MUG"),
            vanished,
            added("MUG", 3, 4),
            added("MUG", 4, 1),
        ],
    )
    .await;
    // Stepped over (and dead-lettered): the events after it apply.
    assert_eq!(stock_at(&fixture.pool, "MUG", 4).await, (5, 4));
    let dead_letters =
        Topics::dead_letter(&fixture.config.topics.for_aggregate("Product").unwrap());
    let messages = consume(&[dead_letters], 1, Duration::from_secs(30))
        .await
        .unwrap();
    let error = header(&messages[0], "error").unwrap();
    assert!(error.contains("StockVanished"), "{error}");
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
}
