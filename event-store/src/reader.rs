//! The gap-safe global reader: every event, once, in one stable total order.
//!
//! `global_position` comes from a sequence, and sequence values become visible
//! in commit order, not in the order they were taken: a transaction that took
//! position 10 may commit after one that took 11. A reader that tails by
//! position alone would move past 10 and never see it.
//!
//! So events are read in `(transaction_id, global_position)` order, and only
//! from transactions older than every transaction still running
//! (`transaction_id < pg_snapshot_xmin(pg_current_snapshot())`): those can no
//! longer commit anything, so nothing can appear behind the reader. A
//! transaction gets its id at its first write, and the append writes nothing
//! before its events; a command decides on an aggregate whose last event it
//! saw committed, and its first event takes the next sequence, which a
//! concurrent writer's uncommitted event would hold. So a later command on an
//! aggregate always has a larger transaction id, and the order respects every
//! aggregate's own sequence.
//!
//! The price: a long transaction that has written anything holds back every
//! reader until it ends.

use chrono::{DateTime, Utc};
use serde_json::Value;
use serde_json::value::RawValue;
use sqlx::postgres::PgRow;
use sqlx::{PgPool, Row};
use uuid::Uuid;

/// A place in the global order: just after the event at this pair.
/// `GlobalCheckpoint::default()` is the start of the store.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GlobalCheckpoint {
    pub transaction_id: i64,
    pub global_position: i64,
}

/// An event as stored, with its place in the global order. Its JSON comes
/// parsed (`J = Value`) or as raw text checked to be JSON (`J = Box<RawValue>`),
/// for readers that only pass it on.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedEvent<J = Value> {
    pub event_id: Uuid,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub sequence: i64,
    pub event_type: String,
    pub event_version: String,
    /// The payload as stored: `{"<event_type>": {...fields}}`.
    pub payload: J,
    pub metadata: J,
    pub global_position: i64,
    pub transaction_id: i64,
    pub recorded_at: DateTime<Utc>,
}

impl<J> RecordedEvent<J> {
    /// The place just after this event.
    pub fn checkpoint(&self) -> GlobalCheckpoint {
        GlobalCheckpoint {
            transaction_id: self.transaction_id,
            global_position: self.global_position,
        }
    }
}

/// How the reader hands over an event's JSON.
pub trait Json: Sized {
    fn from_text(text: String) -> Result<Self, serde_json::Error>;
}

impl Json for Value {
    fn from_text(text: String) -> Result<Self, serde_json::Error> {
        serde_json::from_str(&text)
    }
}

/// The text as PostgreSQL prints it from the `json` columns, which it checked
/// on the way in; not checked again.
impl Json for String {
    fn from_text(text: String) -> Result<Self, serde_json::Error> {
        Ok(text)
    }
}

impl Json for Box<RawValue> {
    fn from_text(text: String) -> Result<Self, serde_json::Error> {
        RawValue::from_string(text)
    }
}

// A NULL limit is no limit. The ORDER BY names the table's columns: the bare name would mean the
// select list's `transaction_id` (the text cast), which no index serves.
const READ_BATCH: &str = "
SELECT event_id, aggregate_type, aggregate_id, sequence, event_type, event_version,
       payload::text AS payload, metadata::text AS metadata, global_position,
       transaction_id::text::bigint AS transaction_id, recorded_at
  FROM events
 WHERE (transaction_id, global_position) > ($1::text::xid8, $2)
   AND transaction_id < pg_snapshot_xmin(pg_current_snapshot())
   AND ($4::bigint IS NULL OR global_position >= $4)
   AND ($5::text[] IS NULL OR aggregate_type = ANY($5))
 ORDER BY events.transaction_id, events.global_position
 LIMIT $3";

const READ_STREAMS: &str = "
SELECT event_id, aggregate_type, aggregate_id, sequence, event_type, event_version,
       payload::text AS payload, metadata::text AS metadata, global_position,
       transaction_id::text::bigint AS transaction_id, recorded_at
  FROM events
 WHERE aggregate_type = $1 AND aggregate_id = ANY($2)
 ORDER BY aggregate_id, sequence";

/// Every committed event of the aggregates `aggregate_ids` of one type,
/// aggregate by aggregate, each in its own order: their histories, for
/// showing (not for following the store, which [`GlobalReader`] does).
pub async fn streams<J: Json>(
    pool: &PgPool,
    aggregate_type: &str,
    aggregate_ids: &[String],
) -> Result<Vec<RecordedEvent<J>>, sqlx::Error> {
    sqlx::query(READ_STREAMS)
        .bind(aggregate_type)
        .bind(aggregate_ids)
        .fetch_all(pool)
        .await?
        .iter()
        .map(recorded_event)
        .collect()
}

const READ_BY_IDS: &str = "
SELECT event_id, aggregate_type, aggregate_id, sequence, event_type, event_version,
       payload::text AS payload, metadata::text AS metadata, global_position,
       transaction_id::text::bigint AS transaction_id, recorded_at
  FROM events
 WHERE event_id = ANY($1)";

/// The events among `event_ids` that the store holds (in no particular
/// order): what a consumer takes a message for. A message is news that an
/// event was committed; the event itself is the store's.
pub async fn by_ids<J: Json>(
    connection: &mut sqlx::PgConnection,
    event_ids: &[Uuid],
) -> Result<Vec<RecordedEvent<J>>, sqlx::Error> {
    if event_ids.is_empty() {
        return Ok(Vec::new());
    }
    sqlx::query(READ_BY_IDS)
        .bind(event_ids)
        .fetch_all(connection)
        .await?
        .iter()
        .map(recorded_event)
        .collect()
}

const READ_AGGREGATES: &str = "
SELECT event_id, aggregate_type, aggregate_id, sequence, event_type, event_version,
       payload::text AS payload, metadata::text AS metadata, global_position,
       transaction_id::text::bigint AS transaction_id, recorded_at
  FROM events
 WHERE aggregate_type = $1
 ORDER BY aggregate_id, sequence";

/// Every event of `aggregate_type`, aggregate after aggregate (the events
/// of one aggregate next to each other, in order), streamed as the database
/// reads them along its key: a reader that folds one aggregate at a time
/// holds one aggregate in memory, however large the store. (Aggregates come
/// in the key's order; which order that is does not matter to such a
/// reader.) Committed events only, as any statement sees.
pub fn stream_aggregates<'a>(
    pool: &'a PgPool,
    aggregate_type: &'a str,
) -> impl futures::Stream<Item = Result<RecordedEvent<String>, sqlx::Error>> + Send + 'a {
    use futures::StreamExt;
    sqlx::query(READ_AGGREGATES)
        .bind(aggregate_type)
        .fetch(pool)
        .map(|row| row.and_then(|row| recorded_event(&row)))
}

/// The events of the next aggregate of `stream` (see [`stream_aggregates`]),
/// `None` at its end. `held` keeps the first event of the aggregate after,
/// read to see that one aggregate had ended.
pub async fn next_aggregate<S>(
    stream: &mut S,
    held: &mut Option<RecordedEvent<String>>,
) -> Result<Option<Vec<RecordedEvent<String>>>, sqlx::Error>
where
    S: futures::Stream<Item = Result<RecordedEvent<String>, sqlx::Error>> + Unpin,
{
    use futures::TryStreamExt;
    let Some(first) = (match held.take() {
        Some(event) => Some(event),
        None => stream.try_next().await?,
    }) else {
        return Ok(None);
    };
    let mut events = vec![first];
    while let Some(event) = stream.try_next().await? {
        if event.aggregate_id != events[0].aggregate_id {
            *held = Some(event);
            break;
        }
        events.push(event);
    }
    Ok(Some(events))
}

const READ_BETWEEN: &str = "
SELECT e.event_id, e.aggregate_type, e.aggregate_id, e.sequence, e.event_type, e.event_version,
       e.payload::text AS payload, e.metadata::text AS metadata, e.global_position,
       e.transaction_id::text::bigint AS transaction_id, e.recorded_at
  FROM UNNEST($2::text[], $3::bigint[], $4::bigint[]) AS g(aggregate_id, after, before)
  JOIN events e ON e.aggregate_type = $1 AND e.aggregate_id = g.aggregate_id
               AND e.sequence > g.after AND e.sequence < g.before
 ORDER BY e.aggregate_id, e.sequence
 LIMIT $5";

/// Of aggregates of `aggregate_type`, the events strictly between two
/// sequences (`(aggregate id, after, before)`), each aggregate's in order,
/// at most `limit` in all: what a consumer that heard of a later event
/// missed of the earlier ones. Events below one a consumer heard of have
/// committed (an aggregate's events commit in order).
pub async fn between<J: Json>(
    connection: &mut sqlx::PgConnection,
    aggregate_type: &str,
    ranges: &[(String, i64, i64)],
    limit: i64,
) -> Result<Vec<RecordedEvent<J>>, sqlx::Error> {
    if ranges.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<&str> = ranges.iter().map(|(id, _, _)| id.as_str()).collect();
    let after: Vec<i64> = ranges.iter().map(|(_, after, _)| *after).collect();
    let before: Vec<i64> = ranges.iter().map(|(_, _, before)| *before).collect();
    sqlx::query(READ_BETWEEN)
        .bind(aggregate_type)
        .bind(ids)
        .bind(after)
        .bind(before)
        .bind(limit)
        .fetch_all(connection)
        .await?
        .iter()
        .map(recorded_event)
        .collect()
}

const READ_STREAM_UNTIL: &str = "
SELECT event_id, aggregate_type, aggregate_id, sequence, event_type, event_version,
       payload::text AS payload, metadata::text AS metadata, global_position,
       transaction_id::text::bigint AS transaction_id, recorded_at
  FROM events
 WHERE aggregate_type = $1 AND aggregate_id = $2
   AND ($3::bigint IS NULL OR sequence <= $3)
   AND ($4::timestamptz IS NULL OR sequence <= (
        SELECT coalesce(max(sequence), 0) FROM events
         WHERE aggregate_type = $1 AND aggregate_id = $2 AND recorded_at <= $4))
 ORDER BY sequence
 LIMIT $5";

const LAST_SEQUENCE_UNTIL: &str = "
SELECT coalesce(max(sequence), 0) FROM events
 WHERE aggregate_type = $1 AND aggregate_id = $2
   AND ($3::bigint IS NULL OR sequence <= $3)
   AND ($4::timestamptz IS NULL OR recorded_at <= $4)";

/// How far into an aggregate's history [`stream_until`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Until {
    /// Up to and including this sequence.
    Sequence(i64),
    /// The events recorded at or before this instant.
    Recorded(chrono::DateTime<chrono::Utc>),
}

/// The sequence of one aggregate's last event up to `until` (0: none), from
/// the key's index alone: what a read up to there would hold.
pub async fn last_sequence_until(
    pool: &PgPool,
    aggregate_type: &str,
    aggregate_id: &str,
    until: Until,
) -> Result<i64, sqlx::Error> {
    let (sequence, at) = match until {
        Until::Sequence(sequence) => (Some(sequence), None),
        Until::Recorded(at) => (None, Some(at)),
    };
    sqlx::query_scalar(LAST_SEQUENCE_UNTIL)
        .bind(aggregate_type)
        .bind(aggregate_id)
        .bind(sequence)
        .bind(at)
        .fetch_one(pool)
        .await
}

/// The first events of one aggregate, oldest first, up to `until` (an
/// instant cuts after the last event recorded by then), and at most `limit`
/// of them.
pub async fn stream_until<J: Json>(
    pool: &PgPool,
    aggregate_type: &str,
    aggregate_id: &str,
    until: Until,
    limit: i64,
) -> Result<Vec<RecordedEvent<J>>, sqlx::Error> {
    let (sequence, at) = match until {
        Until::Sequence(sequence) => (Some(sequence), None),
        Until::Recorded(at) => (None, Some(at)),
    };
    sqlx::query(READ_STREAM_UNTIL)
        .bind(aggregate_type)
        .bind(aggregate_id)
        .bind(sequence)
        .bind(at)
        .bind(limit)
        .fetch_all(pool)
        .await?
        .iter()
        .map(recorded_event)
        .collect()
}

/// Which events a read returns, besides being after the checkpoint.
#[derive(Debug, Clone, Default)]
pub struct ReadFilter {
    /// Only events at this global position or later (a republish from a
    /// position); the order is still commit order.
    pub min_position: Option<i64>,
    /// Only events of these aggregate types (a rebuild of one read model).
    pub aggregate_types: Option<Vec<String>>,
}

/// Reads the event store in global order.
#[derive(Debug, Clone)]
pub struct GlobalReader {
    pool: PgPool,
}

impl GlobalReader {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// Up to `limit` events after `after`, in global order. An empty batch
    /// means the reader is caught up with every finished transaction; events of
    /// transactions still running come in a later call.
    pub async fn read_batch(
        &self,
        after: GlobalCheckpoint,
        limit: i64,
    ) -> Result<Vec<RecordedEvent>, sqlx::Error> {
        self.read::<Value>(after, limit, &ReadFilter::default())
            .await
    }

    /// Like [`read_batch`](Self::read_batch), returning only what `filter` lets
    /// through (an empty batch still means "caught up"), with the JSON left as
    /// text: for the relay, which passes it on without looking inside.
    pub async fn read_raw(
        &self,
        after: GlobalCheckpoint,
        limit: i64,
        filter: &ReadFilter,
    ) -> Result<Vec<RecordedEvent<Box<RawValue>>>, sqlx::Error> {
        self.read::<Box<RawValue>>(after, limit, filter).await
    }

    /// Every event after `after` that `filter` lets through and that no running
    /// transaction can still precede, in global order, as one statement read
    /// as it streams in; the JSON as unchecked text, for readers that parse it
    /// anyway (the rebuild). The last event's checkpoint is where a later
    /// [`read_batch`](Self::read_batch) carries on without a gap.
    pub fn stream_text<'a>(
        &'a self,
        after: GlobalCheckpoint,
        filter: &'a ReadFilter,
    ) -> impl futures::Stream<Item = Result<RecordedEvent<String>, sqlx::Error>> + Send + 'a {
        use futures::StreamExt;
        sqlx::query(READ_BATCH)
            .bind(after.transaction_id.to_string())
            .bind(after.global_position)
            .bind(None::<i64>)
            .bind(filter.min_position)
            .bind(filter.aggregate_types.as_deref())
            .fetch(&self.pool)
            .map(|row| row.and_then(|row| recorded_event(&row)))
    }

    async fn read<J: Json>(
        &self,
        after: GlobalCheckpoint,
        limit: i64,
        filter: &ReadFilter,
    ) -> Result<Vec<RecordedEvent<J>>, sqlx::Error> {
        sqlx::query(READ_BATCH)
            .bind(after.transaction_id.to_string())
            .bind(after.global_position)
            .bind(Some(limit))
            .bind(filter.min_position)
            .bind(filter.aggregate_types.as_deref())
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(recorded_event)
            .collect()
    }
}

fn recorded_event<J: Json>(row: &PgRow) -> Result<RecordedEvent<J>, sqlx::Error> {
    let json = |column: &str| -> Result<J, sqlx::Error> {
        J::from_text(row.try_get(column)?).map_err(|e| sqlx::Error::Decode(Box::new(e)))
    };
    Ok(RecordedEvent {
        event_id: row.try_get("event_id")?,
        aggregate_type: row.try_get("aggregate_type")?,
        aggregate_id: row.try_get("aggregate_id")?,
        sequence: row.try_get("sequence")?,
        event_type: row.try_get("event_type")?,
        event_version: row.try_get("event_version")?,
        payload: json("payload")?,
        metadata: json("metadata")?,
        global_position: row.try_get("global_position")?,
        transaction_id: row.try_get("transaction_id")?,
        recorded_at: row.try_get("recorded_at")?,
    })
}
