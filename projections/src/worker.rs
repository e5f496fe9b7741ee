//! A projection worker: one Kafka consumer group per read model.
//!
//! Each batch of messages is applied in one PostgreSQL transaction that also
//! records the rows' versions (which makes a redelivered event change nothing)
//! and the consumer's offsets; Kafka offsets are committed only after that
//! transaction commits. A message is only news of an event: the event is
//! read from the store by its id, and one the store does not hold is never
//! applied. Events a row missed before the first one heard of are read from
//! the store too. A message that cannot be decoded, applied or found goes to
//! `<topic>.dlq` with the error in a header, and the worker goes on.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use event_contract::{Envelope, Topics};
use event_store::RecordedEvent;
use futures::FutureExt;
use platform::kafka::{GroupMember, LagGauge, Membership};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::BorrowedMessage;
use rdkafka::producer::FutureProducer;
use rdkafka::{Message, Offset, TopicPartitionList};
use sqlx::PgPool;
use tracing::Instrument;

use crate::model::{ApplyError, ReadModel, fold_all};

/// How a projection worker runs.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub brokers: String,
    pub topics: Topics,
    /// Put before the consumer group's name; tests use one per run.
    pub group_prefix: String,
    /// Partitions of the topics, if the worker has to create them.
    pub partitions: i32,
    /// Replication factor of the topics, if the worker has to create them.
    pub replication: i32,
    /// Most messages applied in one transaction.
    pub max_batch: usize,
    /// How the worker joins its consumer group.
    pub membership: Membership,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            brokers: "127.0.0.1:9092".into(),
            topics: Topics::default(),
            group_prefix: String::new(),
            partitions: 3,
            replication: 1,
            max_batch: 2000,
            membership: Membership::default(),
        }
    }
}

/// The consumer group of a projection.
pub fn group_id(config: &WorkerConfig, projection: &str) -> String {
    format!(
        "{}orders-platform.projection.{projection}",
        config.group_prefix
    )
}

/// The advisory lock a projection's writers share and its rebuild takes alone
/// to swap tables.
pub(crate) fn lock_name(projection: &str) -> String {
    format!("orders-platform projection {projection}")
}

/// The channel on which a projection announces the aggregate ids it changed,
/// at commit (payload: ids separated by commas, prefixed with the projection).
pub const UPDATES_CHANNEL: &str = "read_model_updated";

/// Consumes the read model's topic and applies it until `shutdown` completes.
pub async fn run<M: ReadModel>(
    pool: PgPool,
    config: WorkerConfig,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let topic = config
        .topics
        .for_aggregate(M::AGGREGATE_TYPE)
        .context("the aggregate has no topic")?;
    let dead_letters = Topics::dead_letter(&topic);
    event_contract::dead_letter::register(&topic, M::NAME);
    let mut shutdown = pin!(shutdown);
    // The broker may not be up yet; the worker waits for it rather than failing.
    let names = [topic.clone(), dead_letters.clone()];
    let (partitions, replication) = (config.partitions, config.replication);
    if !platform::kafka::create_topics_when_up(
        &config.brokers,
        &names,
        partitions,
        replication,
        shutdown.as_mut(),
    )
    .await
    {
        return Ok(());
    }
    let mut member = GroupMember::new(
        &config.brokers,
        &format!("orders-projection-{}", M::NAME),
        &group_id(&config, M::NAME),
        &topic,
        &config.membership,
    );
    let mut consumer: Arc<StreamConsumer> = Arc::new(member.consumer()?);
    let producer: FutureProducer =
        platform::kafka::client_config(&config.brokers, "orders-dead-letters")
            .set("enable.idempotence", "true")
            .create()?;
    // Per partition (`consumer_lag_messages`), and in all for the projection.
    let mut lag = LagGauge::new(M::NAME, |total| {
        metrics::gauge!("projection_lag_events", "projection" => M::NAME).set(total as f64);
    });
    tracing::info!(projection = M::NAME, %topic, "projection worker started");
    loop {
        let first = tokio::select! {
            () = &mut shutdown => break,
            message = consumer.recv() => message,
        };
        let mut batch = match first {
            Ok(message) => vec![message],
            Err(error) => {
                let Some(fatal) = GroupMember::fatal_error(&consumer) else {
                    tracing::debug!(%error, projection = M::NAME, "consumer error");
                    continue;
                };
                let delay = member.replacement_delay(&fatal);
                tokio::select! {
                    () = &mut shutdown => break,
                    () = tokio::time::sleep(delay) => {}
                }
                lag.finish().await;
                platform::kafka::close(consumer).await;
                consumer = Arc::new(member.consumer()?);
                continue;
            }
        };
        // Take what is already fetched, without waiting for more.
        while batch.len() < config.max_batch {
            match consumer.recv().now_or_never() {
                Some(Ok(message)) => batch.push(message),
                _ => break,
            }
        }
        if !apply_with_retries::<M>(&pool, &producer, &dead_letters, &batch, shutdown.as_mut())
            .await
        {
            // Stopping before the batch committed: its offsets stay, and the
            // next member of the group applies it.
            break;
        }
        // The offsets go to Kafka with the next commit (every second, and
        // when the member leaves). One that fails (the broker is away) only
        // means the batch comes again, which the rows' versions make
        // harmless.
        if let Err(error) =
            next_offsets(&batch).and_then(|offsets| Ok(consumer.store_offsets(&offsets)?))
        {
            tracing::debug!(error = %format!("{error:#}"), projection = M::NAME, "cannot store offsets; they will be redelivered");
        }
        lag.update(&consumer);
    }
    lag.finish().await;
    platform::kafka::close(consumer).await;
    Ok(())
}

/// Applies a batch, retrying on database failures until it commits: the
/// messages stay unacknowledged meanwhile, so nothing is skipped. Returns
/// `false` if `shutdown` came first.
async fn apply_with_retries<M: ReadModel>(
    pool: &PgPool,
    producer: &FutureProducer,
    dead_letters: &str,
    batch: &[BorrowedMessage<'_>],
    mut shutdown: std::pin::Pin<&mut impl Future<Output = ()>>,
) -> bool {
    let mut delay = Duration::from_millis(100);
    loop {
        let started = Instant::now();
        let applied = tokio::select! {
            () = shutdown.as_mut() => return false,
            applied = apply_batch::<M>(pool, producer, dead_letters, batch) => applied,
        };
        match applied {
            Ok(applied) => {
                metrics::counter!("projection_events_total", "projection" => M::NAME)
                    .increment(applied as u64);
                metrics::histogram!("projection_batch_seconds", "projection" => M::NAME)
                    .record(started.elapsed().as_secs_f64());
                return true;
            }
            Err(error) => {
                metrics::counter!("projection_failures_total", "projection" => M::NAME)
                    .increment(1);
                tracing::error!(error = %format!("{error:#}"), projection = M::NAME, "applying a batch failed; retrying");
                tokio::select! {
                    () = shutdown.as_mut() => return false,
                    () = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(Duration::from_secs(10));
            }
        }
    }
}

/// One transaction: lock, load the touched rows, fold, store, record offsets
/// and progress, announce the changes. Poison messages go to the dead-letter
/// topic after the commit. Returns how many messages were applied.
async fn apply_batch<M: ReadModel>(
    pool: &PgPool,
    producer: &FutureProducer,
    dead_letters: &str,
    batch: &[BorrowedMessage<'_>],
) -> anyhow::Result<usize> {
    let span = event_contract::trace::batch_span(batch, M::NAME);
    apply_batch_in::<M>(pool, producer, dead_letters, batch)
        .instrument(span)
        .await
}

async fn apply_batch_in<M: ReadModel>(
    pool: &PgPool,
    producer: &FutureProducer,
    dead_letters: &str,
    batch: &[BorrowedMessage<'_>],
) -> anyhow::Result<usize> {
    // Each message's span, in its own trace, lasts until the batch is
    // applied.
    let _spans: Vec<tracing::Span> = batch
        .iter()
        .map(|message| event_contract::trace::consume_span(message, M::NAME))
        .collect();
    let decoded: Vec<Result<Envelope, ApplyError>> = batch.iter().map(decode).collect();
    let envelopes: Vec<(usize, &Envelope)> = decoded
        .iter()
        .enumerate()
        .filter_map(|(index, envelope)| envelope.as_ref().ok().map(|e| (index, e)))
        .collect();

    // The transaction begins with the lock in the same round trip (the
    // name is the projection's own, never a caller's).
    let mut tx = pool
        .begin_with(format!(
            "BEGIN; SELECT pg_advisory_xact_lock_shared(hashtextextended('{}', 0))",
            lock_name(M::NAME).replace('\'', "''")
        ))
        .await?;
    // A message is news that an event was committed, not the event: each
    // is looked up in the store by its id, and what the store holds is
    // applied. One the store does not hold as the message says (anybody who
    // can produce to the topic could have written it) is poison.
    let mut poison: Vec<(usize, String)> = decoded
        .iter()
        .enumerate()
        .filter_map(|(index, envelope)| envelope.as_ref().err().map(|e| (index, e.to_string())))
        .collect();
    let ids: Vec<uuid::Uuid> = envelopes.iter().map(|(_, e)| e.event_id).collect();
    let stored: HashMap<uuid::Uuid, RecordedEvent<String>> =
        event_store::reader::by_ids::<String>(&mut tx, &ids)
            .await?
            .into_iter()
            .map(|event| (event.event_id, event))
            .collect();
    // (A message may come twice in one batch, from a relay that started
    // over: the second is a redelivery the fold skips, not a forgery.)
    let mut events: Vec<(Option<usize>, RecordedEvent<String>)> = Vec::new();
    for (index, envelope) in &envelopes {
        match stored.get(&envelope.event_id) {
            Some(event) if envelope.names(event) => {
                events.push((Some(*index), event.clone()));
            }
            _ => poison.push((*index, NOT_IN_THE_STORE.to_owned())),
        }
    }
    let mut ids: Vec<&str> = events
        .iter()
        .filter(|(_, e)| e.aggregate_type == M::AGGREGATE_TYPE)
        .map(|(_, e)| e.aggregate_id.as_str())
        .collect();
    ids.sort_unstable();
    ids.dedup();
    let mut rows = M::load(&mut tx, M::TABLE, &ids).await?;
    // Events the row has not seen below the first one heard of here (a
    // message lost or dead-lettered, or one published out of order by a
    // relay that restarted) are read from the store, and applied first.
    let missed = missed::<M>(&mut tx, &rows, &events).await?;
    let events: Vec<(Option<usize>, RecordedEvent<String>)> = missed
        .into_iter()
        .map(|event| (None, event))
        .chain(events)
        .collect();
    let fold = fold_all::<M>(&mut rows, events.iter().map(|(_, e)| e));
    let changed: Vec<M::Row> = fold
        .changed
        .iter()
        .filter_map(|id| rows.get(id).cloned())
        .collect();
    M::store(&mut tx, M::TABLE, &changed).await?;

    // Poison: undecodable or unknown messages, and events the fold refused
    // (or stepped over). An event read from the store that cannot be
    // applied has no message to dead-letter: it is reported here.
    for (position, error) in &fold.poisoned {
        match &events[*position] {
            (Some(index), _) => poison.push((*index, error.to_string())),
            (None, event) => {
                tracing::warn!(projection = M::NAME, aggregate_id = %event.aggregate_id, sequence = event.sequence, %error, "an event read from the store cannot be applied");
                metrics::counter!("projection_dead_letters_total", "projection" => M::NAME)
                    .increment(1);
            }
        }
    }

    let position = events.iter().map(|(_, e)| e.global_position).max();
    record_progress(&mut tx, M::NAME, batch, position, &fold.changed).await?;
    tx.commit().await?;
    // Dead letters go out after the commit (a transaction that has written
    // must not wait on the broker: it would hold back every reader of the
    // global order), and before the Kafka offsets move: if sending fails,
    // the batch is applied again (changing nothing) and they go out then.
    for (index, error) in &poison {
        event_contract::dead_letter::send(producer, dead_letters, &batch[*index], M::NAME, error)
            .await?;
    }
    metrics::counter!("projection_dead_letters_total", "projection" => M::NAME)
        .increment(poison.len() as u64);
    Ok(batch.len() - poison.len())
}

/// Why a message the store does not hold is refused.
pub const NOT_IN_THE_STORE: &str =
    "the event store holds no such event: only what the platform published is applied";

/// Most events read from the store in one batch for rows behind the events
/// heard of; the rest come with the next batch.
const MISSED_PER_BATCH: i64 = 10_000;

/// Whether `event`, as stored, is what `envelope` says was published.
/// The stored events between each row's version and the first of its
/// aggregate's `events`.
async fn missed<M: ReadModel>(
    tx: &mut sqlx::PgConnection,
    rows: &HashMap<String, M::Row>,
    events: &[(Option<usize>, RecordedEvent<String>)],
) -> sqlx::Result<Vec<RecordedEvent<String>>> {
    let mut first: BTreeMap<&str, i64> = BTreeMap::new();
    for (_, event) in events {
        if event.aggregate_type == M::AGGREGATE_TYPE {
            let lowest = first.entry(event.aggregate_id.as_str()).or_insert(i64::MAX);
            *lowest = (*lowest).min(event.sequence);
        }
    }
    let ranges: Vec<(String, i64, i64)> = first
        .into_iter()
        .filter_map(|(id, lowest)| {
            let version = rows.get(id).map_or(0, M::version);
            (lowest > version + 1).then(|| (id.to_owned(), version, lowest))
        })
        .collect();
    event_store::reader::between(tx, M::AGGREGATE_TYPE, &ranges, MISSED_PER_BATCH).await
}

fn decode(message: &BorrowedMessage<'_>) -> Result<Envelope, ApplyError> {
    let payload = message.payload().unwrap_or_default();
    event_contract::decode(payload).map_err(|error| ApplyError::Decode {
        event_type: "envelope".into(),
        reason: error.to_string(),
    })
}

/// In the batch's transaction and one statement: where the consumer is in
/// each partition, the last global position applied (if the batch held an
/// event), and the notification of the changed ids (delivered at commit).
async fn record_progress(
    tx: &mut sqlx::PgConnection,
    projection: &str,
    batch: &[BorrowedMessage<'_>],
    position: Option<i64>,
    changed: &[String],
) -> sqlx::Result<()> {
    let (mut topics, mut partitions, mut offsets) = (Vec::new(), Vec::new(), Vec::new());
    for ((topic, partition), offset) in next_offset_by_partition(batch) {
        topics.push(topic);
        partitions.push(partition);
        offsets.push(offset);
    }
    sqlx::query(
        "WITH offsets AS (
            INSERT INTO projection_offsets (projection, topic, partition, next_offset)
            SELECT $1, * FROM UNNEST($2::text[], $3::int[], $4::bigint[])
            ON CONFLICT (projection, topic, partition) DO UPDATE SET
               next_offset = greatest(projection_offsets.next_offset, EXCLUDED.next_offset),
               updated_at = now()
         ), status AS (
            INSERT INTO projection_status (projection, last_global_position)
            SELECT $1, $5 WHERE $5 IS NOT NULL
            ON CONFLICT (projection) DO UPDATE SET
               last_global_position = greatest(projection_status.last_global_position,
                                               EXCLUDED.last_global_position),
               updated_at = now()
         )
         SELECT pg_notify($6, payload) FROM UNNEST($7::text[]) AS payload",
    )
    .bind(projection)
    .bind(topics)
    .bind(partitions)
    .bind(offsets)
    .bind(position)
    .bind(UPDATES_CHANNEL)
    .bind(announcements(projection, changed))
    .execute(tx)
    .await?;
    Ok(())
}

/// The payloads that announce `changed`: a notification carries at most
/// 8000 bytes, so at most 100 ids each.
fn announcements(projection: &str, changed: &[String]) -> Vec<String> {
    changed
        .chunks(100)
        .map(|chunk| format!("{projection}:{}", chunk.join(",")))
        .collect()
}

/// Notifies `UPDATES_CHANNEL` with the changed ids, delivered at commit.
pub(crate) async fn announce(
    tx: &mut sqlx::PgConnection,
    projection: &str,
    changed: &[String],
) -> sqlx::Result<()> {
    for payload in announcements(projection, changed) {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(UPDATES_CHANNEL)
            .bind(payload)
            .execute(&mut *tx)
            .await?;
    }
    Ok(())
}

/// One past the last message of each partition in the batch.
fn next_offset_by_partition<'m>(batch: &'m [BorrowedMessage<'_>]) -> BTreeMap<(&'m str, i32), i64> {
    let mut next = BTreeMap::new();
    for message in batch {
        let entry: &mut i64 = next
            .entry((message.topic(), message.partition()))
            .or_default();
        *entry = (*entry).max(message.offset() + 1);
    }
    next
}

/// The offsets to commit to Kafka after the batch's transaction.
fn next_offsets(batch: &[BorrowedMessage<'_>]) -> anyhow::Result<TopicPartitionList> {
    let mut list = TopicPartitionList::new();
    for ((topic, partition), offset) in next_offset_by_partition(batch) {
        list.add_partition_offset(topic, partition, Offset::Offset(offset))?;
    }
    Ok(list)
}
