//! The relay: publishes every committed event to Kafka, in the store's global
//! order, at least once.
//!
//! The events table is the outbox. The relay tails it with the gap-safe
//! [`GlobalReader`], publishes each batch with an idempotent producer, and
//! moves its checkpoint (in PostgreSQL) only after Kafka acknowledged every
//! event of the batch. A crash between the acknowledgement and the checkpoint
//! publishes the batch again: consumers deduplicate.
//!
//! Exactly one relay publishes at a time: it holds a PostgreSQL advisory lock
//! on a connection of its own, and writes its checkpoint through that
//! connection. Standbys try the lock every second and take over when the
//! holder's connection goes away.
//!
//! This crate reads the event store and writes only its own checkpoint.

mod feed;
pub mod publisher;
pub mod topics;

use std::collections::VecDeque;
use std::future::Future;
use std::pin::pin;
use std::time::Duration;

use anyhow::Context;
use event_contract::Topics;
use event_store::{GlobalCheckpoint, GlobalReader, ReadFilter};
use sqlx::{Connection, PgConnection, PgPool, Row};

/// The channel the command bus notifies after appends commit.
pub use event_store::wake::EVENTS_CHANNEL;

/// How a relay runs.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Names the checkpoint and the lock: relays with one name share both.
    pub name: String,
    pub brokers: String,
    pub topics: Topics,
    /// Partitions of each topic the relay creates.
    pub partitions: i32,
    /// Replication factor of each topic the relay creates.
    pub replication: i32,
    /// Events read and published per round.
    pub batch_size: i64,
    /// How long to wait for a notification before looking anyway.
    pub poll_interval: Duration,
    /// How long the producer waits to fill a request.
    pub linger: Duration,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            name: "relay".into(),
            brokers: "127.0.0.1:9092".into(),
            topics: Topics::default(),
            partitions: 3,
            replication: 1,
            batch_size: 2000,
            poll_interval: Duration::from_millis(500),
            linger: Duration::from_millis(2),
        }
    }
}

/// Runs the relay until `shutdown` completes: waits to lead, then publishes.
/// Losing the lead (its connection broke) sends it back to waiting.
pub async fn run(
    pool: PgPool,
    config: RelayConfig,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let mut shutdown = pin!(shutdown);
    // The broker may not be up yet; the relay waits for it rather than failing.
    loop {
        match topics::ensure(&config).await {
            Ok(()) => break,
            Err(error) => {
                tracing::warn!(error = %format!("{error:#}"), "cannot create the topics yet; retrying");
                tokio::select! {
                    () = &mut shutdown => return Ok(()),
                    () = tokio::time::sleep(Duration::from_secs(2)) => {}
                }
            }
        }
    }
    loop {
        let leader = tokio::select! {
            () = &mut shutdown => return Ok(()),
            leader = Leader::acquire(&pool, &config.name) => leader,
        };
        let leader = match leader {
            Ok(leader) => leader,
            Err(error) => {
                tracing::warn!(error = %format!("{error:#}"), "relay cannot take the lead; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        tracing::info!(name = %config.name, "relay leads");
        metrics::gauge!("relay_leader", "name" => config.name.clone()).set(1.0);
        let led = tokio::select! {
            () = &mut shutdown => Ok(()),
            led = lead(&pool, &config, leader) => led,
        };
        metrics::gauge!("relay_leader", "name" => config.name.clone()).set(0.0);
        match led {
            Ok(()) => return Ok(()),
            Err(error) => {
                tracing::warn!(error = %format!("{error:#}"), "relay lost the lead; waiting to lead again");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// The lock holder: a connection of its own that holds the advisory lock and
/// is the only way the checkpoint is written.
struct Leader {
    connection: PgConnection,
    name: String,
}

impl Leader {
    /// Waits until this process holds the relay's lock.
    async fn acquire(pool: &PgPool, name: &str) -> anyhow::Result<Self> {
        let mut connection = pool
            .acquire()
            .await
            .context("connecting to take the relay lock")?
            .detach();
        loop {
            let locked: bool =
                sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtextextended($1, 0))")
                    .bind(lock_name(name))
                    .fetch_one(&mut connection)
                    .await?;
            if locked {
                return Ok(Self {
                    connection,
                    name: name.to_owned(),
                });
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    async fn checkpoint(&mut self) -> anyhow::Result<GlobalCheckpoint> {
        let row = sqlx::query(
            "SELECT transaction_id, global_position FROM relay_checkpoints WHERE name = $1",
        )
        .bind(&self.name)
        .fetch_optional(&mut self.connection)
        .await?;
        Ok(match row {
            Some(row) => GlobalCheckpoint {
                transaction_id: row.try_get("transaction_id")?,
                global_position: row.try_get("global_position")?,
            },
            None => GlobalCheckpoint::default(),
        })
    }

    /// Fails if the lock connection is gone, in which case another relay may
    /// lead already and this one must stop.
    async fn save(&mut self, checkpoint: GlobalCheckpoint) -> anyhow::Result<()> {
        sqlx::query(
            "INSERT INTO relay_checkpoints (name, transaction_id, global_position)
             VALUES ($1, $2, $3)
             ON CONFLICT (name) DO UPDATE
                SET transaction_id = $2, global_position = $3, updated_at = now()",
        )
        .bind(&self.name)
        .bind(checkpoint.transaction_id)
        .bind(checkpoint.global_position)
        .execute(&mut self.connection)
        .await
        .context("saving the relay checkpoint")?;
        Ok(())
    }

    async fn still_connected(&mut self) -> anyhow::Result<()> {
        self.connection
            .ping()
            .await
            .context("the relay's lock connection broke")
    }
}

fn lock_name(name: &str) -> String {
    format!("orders-platform relay {name}")
}

/// Batches handed to the producer and not yet acknowledged, at most.
/// Reading the next batches while the broker acknowledges the earlier ones
/// keeps the database, the encoding and the broker busy at once.
const MAX_IN_FLIGHT: usize = 4;

/// A batch handed to the producer: the checkpoint it reaches once
/// acknowledged, its size, when it was handed over, and its pending records.
struct Flight {
    checkpoint: GlobalCheckpoint,
    events: usize,
    started: std::time::Instant,
    acknowledged: futures::future::BoxFuture<'static, Result<(), publisher::PublishError>>,
}

/// Publishes from the checkpoint on, for as long as the lead holds. Batches
/// are read ahead by a [`feed::Feed`]; they are acknowledged, and the
/// checkpoint saved, strictly in order.
async fn lead(pool: &PgPool, config: &RelayConfig, mut leader: Leader) -> anyhow::Result<()> {
    let mut saved = leader.checkpoint().await?;
    // Acknowledged by Kafka, not yet written to the checkpoint (its write
    // failed while the lock held): written with the next acknowledgement or
    // liveness tick, and never a reason to send the batches again.
    let mut unsaved: Option<GlobalCheckpoint> = None;
    let mut producer = publisher::producer(&config.brokers, config.linger)?;
    let mut feed = feed::Feed::start(pool.clone(), config, saved);
    let mut in_flight: VecDeque<Flight> = VecDeque::new();
    let mut liveness = tokio::time::interval(config.poll_interval);
    loop {
        let room = in_flight.len() < MAX_IN_FLIGHT;
        let oldest = async {
            match in_flight.front_mut() {
                Some(flight) => flight.acknowledged.as_mut().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            batch = feed.next(), if room => {
                let batch = batch?;
                let Some(last) = batch.last() else { continue };
                let checkpoint = last.checkpoint();
                match publisher::enqueue(&producer, &config.topics, &batch).await {
                    Ok(flight) => in_flight.push_back(Flight {
                        checkpoint,
                        events: batch.len(),
                        started: std::time::Instant::now(),
                        acknowledged: Box::pin(flight.acknowledged()),
                    }),
                    Err(error) => {
                        producer = start_over(config, &error, &mut in_flight).await?;
                        feed = feed::Feed::start(pool.clone(), config, saved);
                    }
                }
            }
            acknowledged = oldest => {
                let Some(flight) = in_flight.pop_front() else { continue };
                match acknowledged {
                    Ok(()) => {
                        metrics::counter!("relay_published_total").increment(flight.events as u64);
                        metrics::histogram!("relay_batch_seconds")
                            .record(flight.started.elapsed().as_secs_f64());
                        unsaved = Some(flight.checkpoint);
                        if let Some(written) = save_pending(&mut leader, &mut unsaved).await? {
                            saved = written;
                        }
                    }
                    Err(error) => {
                        producer = start_over(config, &error, &mut in_flight).await?;
                        feed = feed::Feed::start(pool.clone(), config, saved);
                    }
                }
            }
            _ = liveness.tick() => {
                leader.still_connected().await?;
                if let Some(written) = save_pending(&mut leader, &mut unsaved).await? {
                    saved = written;
                }
            }
        }
    }
}

/// Writes the acknowledged checkpoint still `unsaved`, if any; returns it
/// once written. A write that fails while the lock's connection still
/// answers (the table refuses it for now) leaves it pending: the batches
/// are in Kafka, and sending them again would not help. A lost connection
/// loses the lead.
async fn save_pending(
    leader: &mut Leader,
    unsaved: &mut Option<GlobalCheckpoint>,
) -> anyhow::Result<Option<GlobalCheckpoint>> {
    let Some(checkpoint) = *unsaved else {
        return Ok(None);
    };
    match leader.save(checkpoint).await {
        Ok(()) => {
            *unsaved = None;
            Ok(Some(checkpoint))
        }
        Err(error) => {
            leader.still_connected().await?;
            metrics::counter!("relay_checkpoint_failures_total").increment(1);
            tracing::warn!(error = %format!("{error:#}"), "cannot write the relay checkpoint; publishing goes on and the write is tried again");
            Ok(None)
        }
    }
}

/// After a failure, everything after the saved checkpoint is sent again, in
/// order, by a new producer: the old one (and what it still holds) is dropped,
/// so that nothing it queued can arrive after the records sent again.
async fn start_over(
    config: &RelayConfig,
    error: &publisher::PublishError,
    in_flight: &mut VecDeque<Flight>,
) -> anyhow::Result<rdkafka::producer::FutureProducer> {
    metrics::counter!("relay_publish_failures_total").increment(1);
    tracing::warn!(%error, "publishing failed; sending again from the last checkpoint");
    in_flight.clear();
    tokio::time::sleep(Duration::from_millis(500)).await;
    publisher::producer(&config.brokers, config.linger)
}

/// The `relay_lag_events` gauge: events committed but not yet published,
/// counted at most every few seconds and up to a cap.
struct LagGauge {
    name: String,
    last: Option<std::time::Instant>,
    /// When a transaction holding events back was last named in the log.
    warned: Option<std::time::Instant>,
}

impl LagGauge {
    const EVERY: Duration = Duration::from_secs(2);
    const CAP: i64 = 1_000_000;
    /// How long a writing transaction may stay open before the relay names it.
    const HELD_BACK_AFTER: Duration = Duration::from_secs(30);

    fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            last: None,
            warned: None,
        }
    }

    async fn update(&mut self, pool: &PgPool, checkpoint: GlobalCheckpoint) {
        if self.last.is_some_and(|last| last.elapsed() < Self::EVERY) {
            return;
        }
        self.last = Some(std::time::Instant::now());
        match lag(pool, checkpoint, Self::CAP).await {
            Ok(lag) => {
                metrics::gauge!("relay_lag_events", "name" => self.name.clone()).set(lag as f64);
                if lag > 0 {
                    self.name_what_holds_it_back(pool).await;
                } else {
                    metrics::gauge!("relay_oldest_writer_seconds", "name" => self.name.clone())
                        .set(0.0);
                }
            }
            Err(error) => tracing::debug!(%error, "cannot measure the relay lag"),
        }
    }

    /// With events waiting, the oldest transaction that has written
    /// anything in the database server (in any of its databases: a
    /// transaction id is the server's) may be what holds them: no event
    /// committed after it began is read until it ends, since it could still
    /// commit an event before them. Long ones are named in the log, and
    /// their age is the `relay_oldest_writer_seconds` gauge.
    async fn name_what_holds_it_back(&mut self, pool: &PgPool) {
        // (pid, database, application, seconds open)
        // A session of another role shows its transaction id but not when
        // it began, unless the relay's role may read every session's
        // (`pg_monitor`).
        type Writer = (i32, Option<String>, Option<String>, Option<f64>);
        let oldest: sqlx::Result<Option<Writer>> = sqlx::query_as(
            "SELECT pid, datname, application_name,
                    extract(epoch FROM clock_timestamp() - xact_start)::float8
               FROM pg_stat_activity
              WHERE backend_xid IS NOT NULL
              ORDER BY age(backend_xid) DESC LIMIT 1",
        )
        .fetch_optional(pool)
        .await;
        let Ok(oldest) = oldest else { return };
        let seconds = oldest
            .as_ref()
            .and_then(|(_, _, _, seconds)| *seconds)
            .unwrap_or(0.0);
        metrics::gauge!("relay_oldest_writer_seconds", "name" => self.name.clone()).set(seconds);
        if let Some((pid, database, application, _)) = oldest
            && seconds >= Self::HELD_BACK_AFTER.as_secs_f64()
            && self
                .warned
                .is_none_or(|warned| warned.elapsed() >= Self::HELD_BACK_AFTER)
        {
            self.warned = Some(std::time::Instant::now());
            tracing::warn!(
                pid,
                database = database.as_deref().unwrap_or("?"),
                application = application.as_deref().unwrap_or("?"),
                open_for_secs = seconds.round(),
                "events wait to be published behind a transaction that has written and is still open: nothing committed after it began is published until it ends (end it, or give such sessions a statement or idle-in-transaction timeout)"
            );
        }
    }
}

/// Committed events after `checkpoint`, counting at most `cap`.
pub async fn lag(pool: &PgPool, checkpoint: GlobalCheckpoint, cap: i64) -> sqlx::Result<i64> {
    sqlx::query_scalar(
        "SELECT count(*) FROM (
            SELECT 1 FROM events
             WHERE (transaction_id, global_position) > ($1::text::xid8, $2)
             LIMIT $3) AS behind",
    )
    .bind(checkpoint.transaction_id.to_string())
    .bind(checkpoint.global_position)
    .bind(cap)
    .fetch_one(pool)
    .await
}

/// Publishes every event at `from_position` or later, in commit order, for a
/// consumer that needs them again. Leaves the relay's checkpoint alone.
/// Returns how many events were published.
pub async fn republish(
    pool: &PgPool,
    config: &RelayConfig,
    from_position: i64,
) -> anyhow::Result<u64> {
    topics::ensure(config).await?;
    let producer = publisher::producer(&config.brokers, config.linger)?;
    let reader = GlobalReader::new(pool.clone());
    let filter = ReadFilter {
        min_position: Some(from_position),
        aggregate_types: None,
    };
    let mut checkpoint = GlobalCheckpoint::default();
    let mut published = 0;
    loop {
        let batch = reader
            .read_raw(checkpoint, config.batch_size, &filter)
            .await?;
        let Some(last) = batch.last() else {
            return Ok(published);
        };
        publisher::publish(&producer, &config.topics, &batch).await?;
        checkpoint = last.checkpoint();
        published += batch.len() as u64;
    }
}
