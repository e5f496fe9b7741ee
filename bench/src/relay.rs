//! `bench relay`: how fast the relay moves a backlog of committed events into
//! Kafka, next to what a bare rdkafka producer with the same settings sends to
//! the same broker in the same run.

use std::time::{Duration, Instant};

use anyhow::Context;
use event_contract::Topics;
use event_store::{GlobalCheckpoint, GlobalReader};
use futures::future::join_all;
use platform::testing::{TestDatabase, TestTopics, kafka_brokers};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::FutureRecord;
use relay::RelayConfig;
use sqlx::PgPool;

#[derive(Debug, clap::Args)]
pub struct Options {
    /// Events in the backlog (two per order).
    #[arg(long, default_value_t = 200_000)]
    events: i64,
    /// Events the relay reads and publishes per round (the platform's default).
    #[arg(long, default_value_t = relay::RelayConfig::default().batch_size)]
    batch_size: i64,
}

pub async fn run(options: Options) -> anyhow::Result<()> {
    platform::telemetry::init_logging(platform::telemetry::LogFormat::Text, "warn,sqlx=error");
    let database = TestDatabase::create().await?;
    let pool = database.pool(8).await?;
    event_store::migrate(&pool).await?;
    crate::seed::orders(&pool, 1, options.events / 2).await?;
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&pool)
        .await?;
    let sample = sample_envelope(&pool).await?;
    println!(
        "relay: {events} committed events, envelopes of about {} bytes, broker {}",
        sample.len(),
        kafka_brokers()
    );

    let raw_topics = TestTopics::new();
    let raw = raw_producer(&raw_topics, events, &sample).await?;
    let relay_topics = TestTopics::new();
    let relayed = relay(&pool, &relay_topics, options.batch_size).await?;

    let rate = |elapsed: Duration| events as f64 / elapsed.as_secs_f64();
    println!(
        "raw producer: {:>9.0} messages/s ({events} in {:.2} s)",
        rate(raw),
        raw.as_secs_f64()
    );
    println!(
        "relay:        {:>9.0} events/s   ({events} in {:.2} s, batches of {})",
        rate(relayed),
        relayed.as_secs_f64(),
        options.batch_size
    );
    println!(
        "ratio:        {:>9.2}x (target at least 0.5x)",
        rate(relayed) / rate(raw)
    );
    Ok(())
}

/// One envelope as the relay would publish it, to size the raw messages alike.
async fn sample_envelope(pool: &PgPool) -> anyhow::Result<Vec<u8>> {
    let batch = GlobalReader::new(pool.clone())
        .read_raw(GlobalCheckpoint::default(), 1, &Default::default())
        .await?;
    let first = batch.first().context("no events")?;
    Ok(event_contract::encode(first)?)
}

/// Sends `count` messages like the relay's (same size, a key per order,
/// same producer settings) as fast as the producer takes them.
async fn raw_producer(topics: &TestTopics, count: i64, payload: &[u8]) -> anyhow::Result<Duration> {
    let topic = Topics::with_prefix(&topics.prefix)
        .for_aggregate("Order")
        .context("no topic")?;
    platform::kafka::create_topics(&kafka_brokers(), std::slice::from_ref(&topic), 3, 1).await?;
    let producer = relay::publisher::producer(&kafka_brokers(), RelayConfig::default().linger)?;
    let started = Instant::now();
    let mut pending = Vec::with_capacity(10_000);
    for n in 0..count {
        let key = format!("{:032x}", n / 2);
        let mut record = FutureRecord::to(&topic).key(&key).payload(payload);
        let delivery = loop {
            match producer.send_result(record) {
                Ok(delivery) => break delivery,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                Err((error, _)) => return Err(error.into()),
            }
        };
        pending.push(delivery);
        if pending.len() == 10_000 {
            for outcome in join_all(pending.drain(..)).await {
                outcome?.map_err(|(error, _)| error)?;
            }
        }
    }
    for outcome in join_all(pending).await {
        outcome?.map_err(|(error, _)| error)?;
    }
    Ok(started.elapsed())
}

/// Runs the relay from an empty checkpoint until it has published everything.
async fn relay(pool: &PgPool, topics: &TestTopics, batch_size: i64) -> anyhow::Result<Duration> {
    let config = RelayConfig {
        brokers: kafka_brokers(),
        topics: Topics::with_prefix(&topics.prefix),
        batch_size,
        ..RelayConfig::default()
    };
    // Topic creation is not part of the measurement.
    relay::topics::ensure(&config).await?;
    let last: i64 = sqlx::query_scalar("SELECT max(global_position) FROM events")
        .fetch_one(pool)
        .await?;
    let started = Instant::now();
    let relay = crate::catchup::Relay::start(pool, config);
    relay.wait_for(pool, last).await?;
    let elapsed = started.elapsed();
    relay.stop().await?;
    Ok(elapsed)
}
