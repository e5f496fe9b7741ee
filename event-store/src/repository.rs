//! `PgEventRepository`: cqrs-es's `PersistedEventRepository` over the
//! postgres-es events table, plus an `append` that writes a command's events
//! and its idempotency key in one statement.
//!
//! Why not postgres-es's own repository: its `persist` runs BEGIN, one INSERT
//! per event and COMMIT (three or more round trips), and gives no way to write
//! another row in the same transaction. `append` is one round trip and one
//! commit, and carries the idempotency key with the events. Rows stay in
//! postgres-es's layout; the extra columns have defaults, so either repository
//! can read what the other wrote.

use cqrs_es::Aggregate;
use cqrs_es::persist::{
    PersistedEventRepository, PersistenceError, ReplayStream, SerializedEvent, SerializedSnapshot,
};
use futures::TryStreamExt;
use serde_json::Value;
use sqlx::postgres::PgRow;
use sqlx::{PgPool, Row};
use uuid::Uuid;

/// An idempotency key to record with a command's events.
#[derive(Debug, Clone)]
pub struct IdempotencyClaim {
    pub key: String,
    /// Identifies the request the key was first used with (see `command-api`).
    pub fingerprint: String,
    /// How long the key is remembered.
    pub ttl: std::time::Duration,
}

/// Why `append` wrote nothing.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    /// Another writer appended to the aggregate first. Reload it and decide again.
    #[error("the aggregate was changed concurrently")]
    Conflict,
    /// The idempotency key was recorded by another request meanwhile. Look it up.
    #[error("the idempotency key was used concurrently")]
    KeyTaken,
    /// The database failed; nothing was written. Retrying later may succeed.
    #[error("event store database error: {0}")]
    Database(#[from] sqlx::Error),
}

impl From<AppendError> for PersistenceError {
    fn from(error: AppendError) -> Self {
        match error {
            AppendError::Conflict => Self::OptimisticLockError,
            AppendError::KeyTaken => Self::UnknownError(Box::new(error)),
            AppendError::Database(error) => database_error(error),
        }
    }
}

fn database_error(error: sqlx::Error) -> PersistenceError {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => PersistenceError::ConnectionError(Box::new(error)),
        other => PersistenceError::UnknownError(Box::new(other)),
    }
}

/// What `append` wrote.
#[derive(Debug, Clone)]
pub struct Appended {
    /// Global positions of the appended events, in sequence order.
    pub global_positions: Vec<i64>,
}

const APPEND: &str = r#"
WITH appended AS (
    INSERT INTO events
        (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata, event_id)
    SELECT e.aggregate_type, e.aggregate_id, e.sequence, e.event_type, e.event_version,
           e.payload::json, e.metadata::json, e.event_id
      FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::text[], $5::text[],
                  $6::jsonb[], $7::jsonb[], $8::uuid[])
           AS e(aggregate_type, aggregate_id, sequence, event_type, event_version,
                payload, metadata, event_id)
     ORDER BY e.sequence
    RETURNING sequence, global_position
), claimed AS (
    INSERT INTO idempotency_keys
        (key, request_fingerprint, aggregate_type, aggregate_id, version, expires_at)
    SELECT $9, $10, $1[1], $2[1], (SELECT max(sequence) FROM appended),
           now() + make_interval(secs => $11)
     WHERE $9::text IS NOT NULL
)
SELECT global_position FROM appended ORDER BY sequence
"#;

const SELECT_EVENTS: &str = "
SELECT aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata
  FROM events
 WHERE aggregate_type = $1 AND aggregate_id = $2 AND sequence > $3
 ORDER BY sequence";

/// Events of one aggregate type in the order they committed.
const SELECT_ALL_EVENTS: &str = "
SELECT aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata
  FROM events
 WHERE aggregate_type = $1 AND ($2 = '' OR aggregate_id = $2)
 ORDER BY transaction_id, global_position";

const SELECT_SNAPSHOT: &str = "
SELECT aggregate_id, last_sequence, current_snapshot, payload
  FROM snapshots
 WHERE aggregate_type = $1 AND aggregate_id = $2";

/// A cqrs-es event repository on the platform's PostgreSQL event store.
#[derive(Debug, Clone)]
pub struct PgEventRepository {
    pool: PgPool,
}

impl PgEventRepository {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Appends one command's events, and records `claim` when given, in a
    /// single statement: both are written or neither is.
    ///
    /// Events must belong to one aggregate and carry consecutive sequence
    /// numbers following the aggregate's current one; a sequence that exists
    /// already means another writer won ([`AppendError::Conflict`]).
    pub async fn append(
        &self,
        events: &[SerializedEvent],
        claim: Option<&IdempotencyClaim>,
    ) -> Result<Appended, AppendError> {
        if events.is_empty() {
            return Ok(Appended {
                global_positions: Vec::new(),
            });
        }
        let columns = EventColumns::of(events)?;
        let rows = append_query(&columns, claim)
            .fetch_all(&self.pool)
            .await
            .map_err(classify_write_error)?;
        let global_positions = rows
            .iter()
            .map(|row| row.try_get("global_position"))
            .collect::<Result<_, _>>()?;
        Ok(Appended { global_positions })
    }

    async fn select_events<A: Aggregate>(
        &self,
        aggregate_id: &str,
        after_sequence: usize,
    ) -> Result<Vec<SerializedEvent>, PersistenceError> {
        let after = i64::try_from(after_sequence).unwrap_or(i64::MAX);
        sqlx::query(SELECT_EVENTS)
            .bind(A::TYPE)
            .bind(aggregate_id)
            .bind(after)
            .fetch(&self.pool)
            .map_err(database_error)
            .and_then(|row| async move { serialized_event(&row).map_err(database_error) })
            .try_collect()
            .await
    }

    fn stream(&self, aggregate_type: &str, aggregate_id: &str) -> ReplayStream {
        let (mut feed, stream) = ReplayStream::new(256);
        let pool = self.pool.clone();
        let (aggregate_type, aggregate_id) = (aggregate_type.to_owned(), aggregate_id.to_owned());
        tokio::spawn(async move {
            let mut rows = sqlx::query(SELECT_ALL_EVENTS)
                .bind(&aggregate_type)
                .bind(&aggregate_id)
                .fetch(&pool);
            // Errors go to the consumer of the stream instead of panicking here.
            loop {
                let item = match rows.try_next().await {
                    Ok(Some(row)) => serialized_event(&row).map_err(database_error),
                    Ok(None) => return,
                    Err(error) => Err(database_error(error)),
                };
                let failed = item.is_err();
                if feed.push(item).await.is_err() || failed {
                    return;
                }
            }
        });
        stream
    }

    async fn persist_with_snapshot<A: Aggregate>(
        &self,
        events: &[SerializedEvent],
        (aggregate_id, payload, current_snapshot): (String, Value, usize),
    ) -> Result<(), PersistenceError> {
        let mut tx = self.pool.begin().await.map_err(database_error)?;
        let columns = EventColumns::of(events)?;
        append_query(&columns, None)
            .fetch_all(&mut *tx)
            .await
            .map_err(classify_write_error)?;
        let last_sequence = columns.sequences.last().copied().unwrap_or(0);
        let snapshot = i64::try_from(current_snapshot).unwrap_or(i64::MAX);
        // One snapshot row per aggregate, replaced in place, as postgres-es does;
        // the previous snapshot number guards against a concurrent replacement.
        let written = if current_snapshot == 1 {
            sqlx::query(
                "INSERT INTO snapshots (aggregate_type, aggregate_id, last_sequence, current_snapshot, payload)
                 VALUES ($1, $2, $3, $4, $5::jsonb::json)",
            )
            .bind(A::TYPE)
            .bind(&aggregate_id)
            .bind(last_sequence)
            .bind(snapshot)
            .bind(&payload)
            .execute(&mut *tx)
            .await
        } else {
            sqlx::query(
                "UPDATE snapshots SET last_sequence = $3, current_snapshot = $4, payload = $6::jsonb::json
                  WHERE aggregate_type = $1 AND aggregate_id = $2 AND current_snapshot = $5",
            )
            .bind(A::TYPE)
            .bind(&aggregate_id)
            .bind(last_sequence)
            .bind(snapshot)
            .bind(snapshot - 1)
            .bind(&payload)
            .execute(&mut *tx)
            .await
        }
        .map_err(classify_write_error)?;
        if written.rows_affected() != 1 {
            return Err(PersistenceError::OptimisticLockError);
        }
        tx.commit().await.map_err(database_error)
    }
}

/// The events of one append, as arrays for `UNNEST`.
struct EventColumns {
    aggregate_types: Vec<String>,
    aggregate_ids: Vec<String>,
    sequences: Vec<i64>,
    event_types: Vec<String>,
    event_versions: Vec<String>,
    payloads: Vec<Value>,
    metadata: Vec<Value>,
    event_ids: Vec<Uuid>,
}

impl EventColumns {
    fn of(events: &[SerializedEvent]) -> Result<Self, AppendError> {
        let mut columns = Self::with_capacity(events.len());
        for event in events {
            columns.push(event)?;
        }
        Ok(columns)
    }

    fn with_capacity(n: usize) -> Self {
        Self {
            aggregate_types: Vec::with_capacity(n),
            aggregate_ids: Vec::with_capacity(n),
            sequences: Vec::with_capacity(n),
            event_types: Vec::with_capacity(n),
            event_versions: Vec::with_capacity(n),
            payloads: Vec::with_capacity(n),
            metadata: Vec::with_capacity(n),
            event_ids: Vec::with_capacity(n),
        }
    }

    fn push(&mut self, event: &SerializedEvent) -> Result<(), AppendError> {
        let sequence = i64::try_from(event.sequence)
            .map_err(|e| AppendError::Database(sqlx::Error::Decode(Box::new(e))))?;
        self.aggregate_types.push(event.aggregate_type.clone());
        self.aggregate_ids.push(event.aggregate_id.clone());
        self.sequences.push(sequence);
        self.event_types.push(event.event_type.clone());
        self.event_versions.push(event.event_version.clone());
        self.payloads.push(event.payload.clone());
        self.metadata.push(event.metadata.clone());
        // Version 7 ids are time-ordered, which keeps the unique index compact.
        self.event_ids.push(Uuid::now_v7());
        Ok(())
    }
}

fn append_query<'q>(
    columns: &'q EventColumns,
    claim: Option<&'q IdempotencyClaim>,
) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    sqlx::query(APPEND)
        .bind(&columns.aggregate_types)
        .bind(&columns.aggregate_ids)
        .bind(&columns.sequences)
        .bind(&columns.event_types)
        .bind(&columns.event_versions)
        .bind(&columns.payloads)
        .bind(&columns.metadata)
        .bind(&columns.event_ids)
        .bind(claim.map(|c| c.key.as_str()))
        .bind(claim.map(|c| c.fingerprint.as_str()))
        .bind(claim.map_or(0.0, |c| c.ttl.as_secs_f64()))
}

/// Unique violations tell a lost race (events' primary key) from a key used
/// twice (idempotency_keys' primary key).
fn classify_write_error(error: sqlx::Error) -> AppendError {
    if let sqlx::Error::Database(db) = &error
        && db.is_unique_violation()
    {
        return match db.constraint() {
            Some("idempotency_keys_pkey") => AppendError::KeyTaken,
            _ => AppendError::Conflict,
        };
    }
    AppendError::Database(error)
}

fn serialized_event(row: &PgRow) -> Result<SerializedEvent, sqlx::Error> {
    let sequence: i64 = row.try_get("sequence")?;
    Ok(SerializedEvent {
        aggregate_id: row.try_get("aggregate_id")?,
        sequence: usize::try_from(sequence).map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
        aggregate_type: row.try_get("aggregate_type")?,
        event_type: row.try_get("event_type")?,
        event_version: row.try_get("event_version")?,
        payload: row.try_get("payload")?,
        metadata: row.try_get("metadata")?,
    })
}

impl PersistedEventRepository for PgEventRepository {
    async fn get_events<A: Aggregate>(
        &self,
        aggregate_id: &str,
    ) -> Result<Vec<SerializedEvent>, PersistenceError> {
        self.select_events::<A>(aggregate_id, 0).await
    }

    async fn get_last_events<A: Aggregate>(
        &self,
        aggregate_id: &str,
        last_sequence: usize,
    ) -> Result<Vec<SerializedEvent>, PersistenceError> {
        self.select_events::<A>(aggregate_id, last_sequence).await
    }

    async fn get_snapshot<A: Aggregate>(
        &self,
        aggregate_id: &str,
    ) -> Result<Option<SerializedSnapshot>, PersistenceError> {
        let Some(row) = sqlx::query(SELECT_SNAPSHOT)
            .bind(A::TYPE)
            .bind(aggregate_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(database_error)?
        else {
            return Ok(None);
        };
        let decode = |row: &PgRow| -> Result<SerializedSnapshot, sqlx::Error> {
            let last_sequence: i64 = row.try_get("last_sequence")?;
            let current_snapshot: i64 = row.try_get("current_snapshot")?;
            let to_usize =
                |n: i64| usize::try_from(n).map_err(|e| sqlx::Error::Decode(Box::new(e)));
            Ok(SerializedSnapshot {
                aggregate_id: row.try_get("aggregate_id")?,
                aggregate: row.try_get("payload")?,
                current_sequence: to_usize(last_sequence)?,
                current_snapshot: to_usize(current_snapshot)?,
            })
        };
        decode(&row).map(Some).map_err(database_error)
    }

    async fn persist<A: Aggregate>(
        &self,
        events: &[SerializedEvent],
        snapshot_update: Option<(String, Value, usize)>,
    ) -> Result<(), PersistenceError> {
        match snapshot_update {
            None => self
                .append(events, None)
                .await
                .map(drop)
                .map_err(Into::into),
            Some(snapshot) => self.persist_with_snapshot::<A>(events, snapshot).await,
        }
    }

    async fn stream_events<A: Aggregate>(
        &self,
        aggregate_id: &str,
    ) -> Result<ReplayStream, PersistenceError> {
        Ok(self.stream(A::TYPE, aggregate_id))
    }

    async fn stream_all_events<A: Aggregate>(&self) -> Result<ReplayStream, PersistenceError> {
        Ok(self.stream(A::TYPE, ""))
    }
}
