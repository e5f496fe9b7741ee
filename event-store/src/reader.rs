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
//! before its events, after the aggregate was loaded; so a later command on an
//! aggregate always has a larger transaction id, and the order respects every
//! aggregate's own sequence.
//!
//! The price: a long transaction that has written anything holds back every
//! reader until it ends.

use chrono::{DateTime, Utc};
use serde_json::Value;
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

/// An event as stored, with its place in the global order.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedEvent {
    pub event_id: Uuid,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub sequence: i64,
    pub event_type: String,
    pub event_version: String,
    /// The payload as stored: `{"<event_type>": {...fields}}`.
    pub payload: Value,
    pub metadata: Value,
    pub global_position: i64,
    pub transaction_id: i64,
    pub recorded_at: DateTime<Utc>,
}

impl RecordedEvent {
    /// The place just after this event.
    pub fn checkpoint(&self) -> GlobalCheckpoint {
        GlobalCheckpoint {
            transaction_id: self.transaction_id,
            global_position: self.global_position,
        }
    }

    /// The event's own fields, without the wrapper object keyed by its type.
    pub fn fields(&self) -> &Value {
        self.payload.get(&self.event_type).unwrap_or(&self.payload)
    }
}

const READ_BATCH: &str = "
SELECT event_id, aggregate_type, aggregate_id, sequence, event_type, event_version,
       payload, metadata, global_position, transaction_id::text::bigint AS transaction_id,
       recorded_at
  FROM events
 WHERE (transaction_id, global_position) > ($1::text::xid8, $2)
   AND transaction_id < pg_snapshot_xmin(pg_current_snapshot())
   AND ($4::bigint IS NULL OR global_position >= $4)
   AND ($5::text[] IS NULL OR aggregate_type = ANY($5))
 ORDER BY transaction_id, global_position
 LIMIT $3";

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
        self.read_filtered(after, limit, &ReadFilter::default())
            .await
    }

    /// Like [`read_batch`](Self::read_batch), returning only what `filter` lets
    /// through. An empty batch still means "caught up".
    pub async fn read_filtered(
        &self,
        after: GlobalCheckpoint,
        limit: i64,
        filter: &ReadFilter,
    ) -> Result<Vec<RecordedEvent>, sqlx::Error> {
        sqlx::query(READ_BATCH)
            .bind(after.transaction_id.to_string())
            .bind(after.global_position)
            .bind(limit)
            .bind(filter.min_position)
            .bind(filter.aggregate_types.as_deref())
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(recorded_event)
            .collect()
    }
}

fn recorded_event(row: &PgRow) -> Result<RecordedEvent, sqlx::Error> {
    Ok(RecordedEvent {
        event_id: row.try_get("event_id")?,
        aggregate_type: row.try_get("aggregate_type")?,
        aggregate_id: row.try_get("aggregate_id")?,
        sequence: row.try_get("sequence")?,
        event_type: row.try_get("event_type")?,
        event_version: row.try_get("event_version")?,
        payload: row.try_get("payload")?,
        metadata: row.try_get("metadata")?,
        global_position: row.try_get("global_position")?,
        transaction_id: row.try_get("transaction_id")?,
        recorded_at: row.try_get("recorded_at")?,
    })
}
