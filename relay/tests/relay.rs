//! The relay against a real PostgreSQL and Kafka.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: a panic is the failure report.

use std::collections::HashMap;
use std::time::Duration;

use command_bus::{CommandBus, CommandContext, Expect};
use domain::values::{Currency, Money, ProductName, Sku};
use domain::{Product, ProductCommand};
use event_contract::{Envelope, Topics};
use platform::testing::{TestDatabase, TestTopics, consume, header, kafka_brokers};
use rdkafka::Message;
use relay::RelayConfig;
use sqlx::PgPool;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

async fn database() -> (TestDatabase, PgPool) {
    let database = TestDatabase::create().await.unwrap();
    let pool = database.pool(10).await.unwrap();
    event_store::migrate(&pool).await.unwrap();
    (database, pool)
}

fn config(topics: &TestTopics) -> RelayConfig {
    RelayConfig {
        brokers: kafka_brokers(),
        topics: Topics::with_prefix(&topics.prefix),
        poll_interval: Duration::from_millis(200),
        ..RelayConfig::default()
    }
}

fn start(
    pool: &PgPool,
    config: RelayConfig,
) -> (oneshot::Sender<()>, JoinHandle<anyhow::Result<()>>) {
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(relay::run(pool.clone(), config, async {
        stopped.await.ok();
    }));
    (stop, task)
}

/// Creates `skus` and adds stock `rounds` times to each: 1 + rounds events per SKU.
async fn write_events(pool: &PgPool, skus: &[&str], rounds: u32) {
    let bus = CommandBus::new(pool.clone());
    let context = CommandContext {
        correlation_id: "0190a0b0-aaaa-7bbb-8ccc-dddddddddddd".into(),
        causation_id: "test".into(),
        ..CommandContext::default()
    };
    for sku in skus {
        let create = ProductCommand::CreateProduct {
            sku: Sku::parse(sku).unwrap(),
            name: ProductName::parse(sku).unwrap(),
            price: Money::price(100, Currency::parse("EUR").unwrap()).unwrap(),
        };
        bus.execute::<Product>(sku, create, &context, Expect::New)
            .await
            .unwrap();
    }
    for quantity in 1..=rounds {
        for sku in skus {
            bus.execute::<Product>(
                sku,
                ProductCommand::AddStock { quantity },
                &context,
                Expect::Existing,
            )
            .await
            .unwrap();
        }
    }
}

fn envelopes(messages: &[rdkafka::message::OwnedMessage]) -> Vec<Envelope> {
    messages
        .iter()
        .map(|m| serde_json::from_slice(m.payload().unwrap()).unwrap())
        .collect()
}

/// Each aggregate's events arrive in sequence order, once or more, none missing.
fn assert_complete_and_ordered(envelopes: &[Envelope], expected_per_aggregate: i64) {
    let mut last: HashMap<&str, i64> = HashMap::new();
    for envelope in envelopes {
        let previous = last.entry(&envelope.aggregate_id).or_insert(0);
        assert!(
            envelope.sequence <= *previous + 1,
            "{} jumped from {} to {}",
            envelope.aggregate_id,
            previous,
            envelope.sequence
        );
        *previous = (*previous).max(envelope.sequence);
    }
    assert!(
        last.values().all(|seq| *seq == expected_per_aggregate),
        "{last:?}"
    );
}

#[tokio::test]
async fn committed_events_reach_their_topic_with_key_envelope_and_headers() {
    let (_db, pool) = database().await;
    let topics = TestTopics::new();
    let (stop, task) = start(&pool, config(&topics));
    write_events(&pool, &["MUG", "TEA", "JAM"], 4).await;

    let published = Topics::with_prefix(&topics.prefix).all();
    let messages = consume(&published, 15, Duration::from_secs(30))
        .await
        .unwrap();

    assert_eq!(messages.len(), 15);
    let products_topic = Topics::with_prefix(&topics.prefix)
        .for_aggregate("Product")
        .unwrap();
    for message in &messages {
        assert_eq!(message.topic(), products_topic);
        let envelope: Envelope = serde_json::from_slice(message.payload().unwrap()).unwrap();
        assert_eq!(message.key().unwrap(), envelope.aggregate_id.as_bytes());
        assert_eq!(
            header(message, "event_id"),
            Some(envelope.event_id.to_string())
        );
        assert_eq!(
            header(message, "event_type"),
            Some(envelope.event_type.clone())
        );
        let traceparent = header(message, "traceparent").unwrap();
        assert!(
            traceparent.starts_with("00-0190a0b0aaaa7bbb8cccdddddddddddd-"),
            "{traceparent}"
        );
        assert_eq!(envelope.metadata["causation_id"], "test");
        // The payload is the event's own fields, decodable by the domain.
        let event: domain::ProductEvent = envelope.decode().unwrap();
        if envelope.sequence == 1 {
            assert!(matches!(event, domain::ProductEvent::ProductCreated(_)));
            assert_eq!(envelope.payload["price"]["amount_cents"], 100);
        }
    }
    assert_complete_and_ordered(&envelopes(&messages), 5);

    // The checkpoint reached the last event.
    checkpoint_reaches_the_last_event(&pool).await;
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_relay_leads_and_a_standby_takes_over_when_it_dies() {
    let (_db, pool) = database().await;
    let topics = TestTopics::new();
    let published = Topics::with_prefix(&topics.prefix).all();
    let (_stop_first, first) = start(&pool, config(&topics));
    write_events(&pool, &["A", "B"], 2).await;
    assert_eq!(
        consume(&published, 6, Duration::from_secs(30))
            .await
            .unwrap()
            .len(),
        6
    );
    // The second relay waits: the first holds the lock.
    let (stop_second, second) = start(&pool, config(&topics));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let leaders: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(leaders, 1);

    // The leader dies (its connection closes with it); the standby goes on.
    first.abort();
    let _ = first.await;
    let died = tokio::time::Instant::now();
    write_events(&pool, &["C"], 3).await;
    let messages = consume(&published, 10, Duration::from_secs(30))
        .await
        .unwrap();

    assert!(
        died.elapsed() < Duration::from_secs(10),
        "took over in {:?}",
        died.elapsed()
    );
    let envelopes = envelopes(&messages);
    let c: Vec<i64> = envelopes
        .iter()
        .filter(|e| e.aggregate_id == "C")
        .map(|e| e.sequence)
        .collect();
    assert_eq!(c, [1, 2, 3, 4]);
    stop_second.send(()).unwrap();
    second.await.unwrap().unwrap();
}

#[tokio::test]
async fn republishing_from_a_position_sends_that_event_and_everything_after() {
    let (_db, pool) = database().await;
    write_events(&pool, &["MUG", "TEA"], 2).await;
    let positions: Vec<i64> =
        sqlx::query_scalar("SELECT global_position FROM events ORDER BY global_position")
            .fetch_all(&pool)
            .await
            .unwrap();
    let topics = TestTopics::new();
    let config = config(&topics);

    let count = relay::republish(&pool, &config, positions[2])
        .await
        .unwrap();

    assert_eq!(count, 4);
    let published = Topics::with_prefix(&topics.prefix).all();
    let messages = consume(&published, 4, Duration::from_secs(30))
        .await
        .unwrap();
    let mut got: Vec<i64> = envelopes(&messages)
        .iter()
        .map(|e| e.global_position)
        .collect();
    got.sort_unstable();
    assert_eq!(got, positions[2..], "republished from {}", positions[2]);
    let checkpoints: i64 = sqlx::query_scalar("SELECT count(*) FROM relay_checkpoints")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(
        checkpoints, 0,
        "republishing leaves the relay's checkpoint alone"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_held_behind_an_older_transaction_is_published_when_that_one_ends() {
    // Only commits wake the relay here (its poll is half a minute). An event
    // committed while an older transaction runs is not readable until that
    // one ends, and nothing announces its end: the relay must look again
    // by itself, not wait for the next commit or the poll.
    let (_db, pool) = database().await;
    let topics = TestTopics::new();
    let config = RelayConfig {
        poll_interval: Duration::from_secs(30),
        ..config(&topics)
    };
    let (stop, task) = start(&pool, config);
    write_events(&pool, &["MUG"], 0).await;
    let published = Topics::with_prefix(&topics.prefix).all();
    consume(&published, 1, Duration::from_secs(30))
        .await
        .unwrap();

    let mut older = pool.begin().await.unwrap();
    sqlx::query("SELECT pg_current_xact_id()")
        .execute(&mut *older)
        .await
        .unwrap();
    write_events(&pool, &["TEA"], 0).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    older.commit().await.unwrap();

    let messages = consume(&published, 2, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(
        messages.len(),
        2,
        "the held-back event waited for another commit or the poll"
    );
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_the_table_refuses_is_written_later_and_nothing_is_sent_again() {
    let (_db, pool) = database().await;
    let topics = TestTopics::new();
    // Every write of the checkpoint fails while the lock's connection lives.
    sqlx::query(
        "ALTER TABLE relay_checkpoints ADD CONSTRAINT refuse_for_now CHECK (false) NOT VALID",
    )
    .execute(&pool)
    .await
    .unwrap();
    let (stop, task) = start(&pool, config(&topics));
    write_events(&pool, &["MUG", "TEA"], 2).await;
    let published = Topics::with_prefix(&topics.prefix).all();
    // Published once, and not again while the checkpoint cannot be written
    // (it was sent again every second, for ever).
    let messages = consume(&published, 100, Duration::from_secs(6))
        .await
        .unwrap();
    assert_eq!(
        messages.len(),
        6,
        "{} messages for 6 events",
        messages.len()
    );
    let saved: Option<i64> =
        sqlx::query_scalar("SELECT global_position FROM relay_checkpoints WHERE name = 'relay'")
            .fetch_optional(&pool)
            .await
            .unwrap();
    assert_eq!(saved, None);
    // The table takes writes again: the checkpoint follows.
    sqlx::query("ALTER TABLE relay_checkpoints DROP CONSTRAINT refuse_for_now")
        .execute(&pool)
        .await
        .unwrap();
    checkpoint_reaches_the_last_event(&pool).await;
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_kafka_will_never_take_goes_to_the_dead_letters_and_the_rest_is_published() {
    let (_db, pool) = database().await;
    let topics = TestTopics::new();
    let (stop, task) = start(&pool, config(&topics));
    write_events(&pool, &["MUG"], 1).await;
    // An event larger than any message the broker takes (written by hand:
    // the API bounds what a command may carry).
    sqlx::query(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version,
                             payload, metadata, event_id)
         VALUES ('Product', 'HUGE', 1, 'ProductCreated', '1.0',
                 json_build_object('ProductCreated', json_build_object('note', repeat('x', 2000000))),
                 '{}'::json, gen_random_uuid())",
    )
    .execute(&pool)
    .await
    .unwrap();
    write_events(&pool, &["TEA"], 1).await;
    let published = Topics::with_prefix(&topics.prefix).all();
    let messages = consume(&published, 4, Duration::from_secs(30))
        .await
        .unwrap();
    let ids: Vec<String> = envelopes(&messages)
        .iter()
        .map(|e| e.aggregate_id.clone())
        .collect();
    assert_eq!(messages.len(), 4, "{ids:?}");
    assert!(!ids.contains(&"HUGE".to_owned()), "{ids:?}");
    let products = Topics::with_prefix(&topics.prefix)
        .for_aggregate("Product")
        .unwrap();
    let noted = consume(
        &[Topics::dead_letter(&products)],
        1,
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    assert_eq!(noted.len(), 1);
    let note: serde_json::Value = serde_json::from_slice(noted[0].payload().unwrap()).unwrap();
    assert_eq!(note["aggregate_id"], "HUGE");
    assert_eq!(note["sequence"], 1);
    let error = header(&noted[0], "error").unwrap();
    assert!(
        error.to_lowercase().contains("size") || error.contains("large"),
        "{error}"
    );
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
}

/// Waits (10 s at most) until the relay's checkpoint stands at the store's
/// last event.
async fn checkpoint_reaches_the_last_event(pool: &PgPool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let saved: Option<i64> = sqlx::query_scalar(
            "SELECT global_position FROM relay_checkpoints WHERE name = 'relay'",
        )
        .fetch_optional(pool)
        .await
        .unwrap();
        let last: i64 = sqlx::query_scalar("SELECT max(global_position) FROM events")
            .fetch_one(pool)
            .await
            .unwrap();
        if saved == Some(last) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "checkpoint at {saved:?}, last event at {last}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_left_open_is_named_while_it_holds_events_back() {
    let metrics = platform::telemetry::metrics();
    let (_db, pool) = database().await;
    let topics = TestTopics::new();
    let (stop, task) = start(
        &pool,
        RelayConfig {
            name: "held-back".into(),
            ..config(&topics)
        },
    );
    // A session (of any program, in any database of the server) has
    // written and stays open: nothing committed after it began can be
    // published until it ends, since it could still commit an event before.
    let mut open = pool.begin().await.unwrap();
    sqlx::query("SELECT pg_current_xact_id()")
        .execute(&mut *open)
        .await
        .unwrap();
    write_events(&pool, &["MUG"], 1).await;
    let gauge = |text: &str| -> Option<f64> {
        text.lines()
            .find(|line| line.starts_with("relay_oldest_writer_seconds{name=\"held-back\"}"))
            .and_then(|line| line.rsplit(' ').next())
            .and_then(|value| value.parse().ok())
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while gauge(&metrics.render()).is_none_or(|seconds| seconds <= 0.0) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the open transaction was never measured"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Once it ends, the events go out.
    open.commit().await.unwrap();
    let published = Topics::with_prefix(&topics.prefix).all();
    let messages = consume(&published, 2, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(messages.len(), 2);
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
}
