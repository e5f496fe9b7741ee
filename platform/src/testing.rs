//! For tests and benchmarks (feature `testing`, which nothing that ships
//! turns on): throwaway databases against the real PostgreSQL, topics of
//! their own on the real Kafka, and the gateway token of a test platform.
//!
//! Each test gets a database of its own, so tests run in parallel and leave
//! nothing behind: the database is dropped when the handle is.

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool};

pub use crate::postgres::with_database;

/// The token this process's test platforms give their payment gateway and
/// its client (`ORDERS_GATEWAY_TOKEN`): random, drawn once per process.
pub fn gateway_token() -> &'static str {
    static TOKEN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TOKEN.get_or_init(|| {
        format!(
            "{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        )
    })
}

/// Where the tests' PostgreSQL is: `DATABASE_URL`, or the local default.
pub fn database_url() -> String {
    std::env::var("DATABASE_URL").unwrap_or_else(|_| "postgres://127.0.0.1:5432/orders".into())
}

/// Where the tests' Kafka is: `KAFKA_BROKERS`, or the local default.
pub fn kafka_brokers() -> String {
    std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

/// A database created for one test and dropped with this handle.
#[derive(Debug)]
pub struct TestDatabase {
    pub name: String,
    /// A URL that connects to this database.
    pub url: String,
    admin: PgConnectOptions,
}

impl TestDatabase {
    /// Creates an empty database with a unique name on the tests' server.
    pub async fn create() -> anyhow::Result<Self> {
        let base = database_url();
        let admin = PgConnectOptions::from_str(&base)?;
        let name = format!("test_{}", uuid::Uuid::new_v4().simple());
        let mut connection = PgConnection::connect_with(&admin).await.map_err(|error| {
            anyhow::anyhow!(
                "cannot reach PostgreSQL at {base} ({error}); start it with `scripts/services start`"
            )
        })?;
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut connection)
            .await?;
        connection.close().await?;
        Ok(Self {
            url: with_database(&base, &name),
            name,
            admin,
        })
    }

    /// A pool of `size` connections to this database.
    pub async fn pool(&self, size: u32) -> anyhow::Result<PgPool> {
        Ok(PgPoolOptions::new()
            .max_connections(size)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(crate::postgres::tuned(
                self.admin.clone().database(&self.name),
            ))
            .await?)
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let admin = self.admin.clone();
        let statement = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        // Drop runs inside the test's runtime, which cannot be blocked on; a
        // thread of its own with a small runtime does the cleanup.
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async {
                let mut connection = PgConnection::connect_with(&admin).await?;
                sqlx::query(&statement).execute(&mut connection).await?;
                connection.close().await?;
                anyhow::Ok(())
            })
        });
        if let Ok(Err(error)) = cleanup.join() {
            eprintln!("could not drop test database {}: {error}", self.name);
        }
    }
}

/// A topic-name prefix of its own for one test; the topics under it are
/// deleted from the broker when the handle is dropped.
#[derive(Debug)]
pub struct TestTopics {
    pub prefix: String,
    brokers: String,
}

impl TestTopics {
    pub fn new() -> Self {
        Self {
            prefix: format!("test-{}.", uuid::Uuid::new_v4().simple()),
            brokers: kafka_brokers(),
        }
    }
}

impl Default for TestTopics {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TestTopics {
    fn drop(&mut self) {
        use rdkafka::admin::{AdminClient, AdminOptions};
        use rdkafka::client::DefaultClientContext;

        let (prefix, brokers) = (self.prefix.clone(), self.brokers.clone());
        let cleanup = std::thread::spawn(move || -> anyhow::Result<()> {
            let admin: AdminClient<DefaultClientContext> =
                crate::kafka::client_config(&brokers, "test-cleanup").create()?;
            let metadata = admin
                .inner()
                .fetch_metadata(None, Duration::from_secs(10))?;
            let names: Vec<String> = metadata
                .topics()
                .iter()
                .map(|topic| topic.name().to_owned())
                .filter(|name| name.starts_with(&prefix))
                .collect();
            if names.is_empty() {
                return Ok(());
            }
            let names: Vec<&str> = names.iter().map(String::as_str).collect();
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(admin.delete_topics(&names, &AdminOptions::new()))?;
            Ok(())
        });
        if let Ok(Err(error)) = cleanup.join() {
            eprintln!("could not delete test topics {}*: {error}", self.prefix);
        }
    }
}

/// Reads `topics` from the beginning with a fresh consumer group until
/// `expected` messages arrived or `within` passed, and returns them.
pub async fn consume(
    topics: &[String],
    expected: usize,
    within: Duration,
) -> anyhow::Result<Vec<rdkafka::message::OwnedMessage>> {
    use rdkafka::consumer::{Consumer, StreamConsumer};

    let consumer: StreamConsumer = crate::kafka::client_config(&kafka_brokers(), "test-reader")
        .set(
            "group.id",
            format!("test-reader-{}", uuid::Uuid::new_v4().simple()),
        )
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "50")
        .create()?;
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    consumer.subscribe(&names)?;
    let deadline = tokio::time::Instant::now() + within;
    let mut messages = Vec::with_capacity(expected);
    while messages.len() < expected {
        match tokio::time::timeout_at(deadline, consumer.recv()).await {
            Ok(Ok(message)) => messages.push(message.detach()),
            // A topic not created yet, a partition without its leader for a
            // moment (a broker that just started): the reader keeps reading
            // until the deadline, and says what it saw.
            Ok(Err(error @ rdkafka::error::KafkaError::MessageConsumption(_))) => {
                eprintln!("test reader: {error} (reading on)");
            }
            Ok(Err(error)) => {
                crate::kafka::close(consumer).await;
                return Err(error.into());
            }
            Err(_) => {
                eprintln!(
                    "test reader: {} of {expected} messages from {topics:?} within {within:?}",
                    messages.len()
                );
                break;
            }
        }
    }
    crate::kafka::close(consumer).await;
    Ok(messages)
}

/// The text of a message's header `key`, if it carries one.
pub fn header(message: &impl rdkafka::Message, key: &str) -> Option<String> {
    use rdkafka::message::Headers;

    message
        .headers()?
        .iter()
        .find(|h| h.key == key)
        .and_then(|h| h.value)
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

/// Writes `payloads` to `topic` under `key`, as a broken producer would:
/// poison for the platform's consumers.
pub async fn produce_poison(topic: &str, key: &str, payloads: &[&str]) -> anyhow::Result<()> {
    use rdkafka::producer::{FutureProducer, FutureRecord};

    let producer: FutureProducer =
        crate::kafka::client_config(&kafka_brokers(), "test-poison").create()?;
    for payload in payloads {
        producer
            .send(
                FutureRecord::to(topic).key(key).payload(*payload),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(error, _)| anyhow::anyhow!("cannot write to {topic}: {error}"))?;
    }
    Ok(())
}

/// Waits until a statement of this database (one starting with
/// `statement_prefix`, when given) waits for a lock, for at most `within`.
pub async fn lock_waiter(
    pool: &PgPool,
    statement_prefix: Option<&str>,
    within: Duration,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity
              WHERE datname = current_database() AND wait_event_type = 'Lock'
                AND ($1::text IS NULL OR starts_with(query, $1))",
        )
        .bind(statement_prefix)
        .fetch_one(pool)
        .await?;
        if waiting > 0 {
            return Ok(());
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "no statement waited for a lock within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
