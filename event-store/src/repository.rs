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

/// An idempotency key, in the namespace of whoever chose it. Keys that
/// clients send live under `client:`; keys the platform derives itself (a
/// saga step's, say) live outside it. No client key can therefore name a key
/// of the platform's, nor block or replay one of its commands.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    const CLIENT: &'static str = "client:";

    /// A key the caller `caller` sent in `Idempotency-Key`. Each caller has
    /// its own namespace: the caller's length comes first, so no choice of
    /// caller and key can spell another caller's key.
    pub fn client(caller: &str, raw: &str) -> Self {
        Self(format!("{}{}:{caller}:{raw}", Self::CLIENT, caller.len()))
    }

    /// A key the platform derives itself, such as `saga:<order>:reserve:<sku>`.
    /// It is stored as given unless it would fall into the clients'
    /// namespace, which it is then moved out of.
    pub fn internal(name: impl Into<String>) -> Self {
        let name = name.into();
        if name.starts_with(Self::CLIENT) {
            Self(format!("internal:{name}"))
        } else {
            Self(name)
        }
    }

    /// Whether a client chose the key (see [`IdempotencyKey::client`]).
    pub fn is_client(&self) -> bool {
        self.0.starts_with(Self::CLIENT)
    }

    /// The key as stored.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for IdempotencyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// An idempotency key to record with a command's events.
#[derive(Debug, Clone)]
pub struct IdempotencyClaim {
    pub key: IdempotencyKey,
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

/// An event ready to be appended: identity, type and JSON text. The global
/// position, transaction id and time are given by the database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    pub event_id: Uuid,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub sequence: i64,
    pub event_type: String,
    pub event_version: String,
    /// The payload as JSON text, as cqrs-es serializes it.
    pub payload: String,
    /// The metadata object as JSON text.
    pub metadata: String,
}

impl NewEvent {
    /// From cqrs-es's serialized form, with a new event id.
    pub fn from_serialized(event: &SerializedEvent) -> Result<Self, AppendError> {
        Ok(Self {
            event_id: Uuid::now_v7(),
            aggregate_type: event.aggregate_type.clone(),
            aggregate_id: event.aggregate_id.clone(),
            sequence: i64::try_from(event.sequence)
                .map_err(|e| AppendError::Database(sqlx::Error::Encode(Box::new(e))))?,
            event_type: event.event_type.clone(),
            event_version: event.event_version.clone(),
            payload: event.payload.to_string(),
            metadata: event.metadata.to_string(),
        })
    }
}

/// Appends the events of any number of commands, and their idempotency keys,
/// in one statement. Events keep the order of the arrays (command by command,
/// each in sequence order), so global positions follow it.
const APPEND: &str = r#"
WITH appended AS (
    INSERT INTO events
        (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata, event_id)
    SELECT e.aggregate_type, e.aggregate_id, e.sequence, e.event_type, e.event_version,
           e.payload::json, e.metadata::json, e.event_id
      FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::text[], $5::text[],
                  $6::text[], $7::text[], $8::uuid[])
           WITH ORDINALITY
           AS e(aggregate_type, aggregate_id, sequence, event_type, event_version,
                payload, metadata, event_id, n)
     ORDER BY e.n
), claimed AS (
    INSERT INTO idempotency_keys
        (key, request_fingerprint, aggregate_type, aggregate_id, version, expires_at)
    SELECT c.key, c.fingerprint, c.aggregate_type, c.aggregate_id, c.version,
           now() + make_interval(secs => c.ttl)
      FROM UNNEST($9::text[], $10::text[], $11::text[], $12::text[], $13::bigint[],
                  $14::float8[])
           AS c(key, fingerprint, aggregate_type, aggregate_id, version, ttl)
)
SELECT 1
"#;

/// The common case, one event and no idempotency key, as a plain INSERT: the
/// same rows as `APPEND`, with less for PostgreSQL to plan and execute.
const APPEND_ONE: &str = "
INSERT INTO events
    (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata, event_id)
VALUES ($1, $2, $3, $4, $5, $6::json, $7::json, $8)";

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

/// An aggregate's newest snapshot (if any) and the events after it, in one
/// round trip: the snapshot comes first, marked by a NULL
/// `event_type`, with its last sequence as `sequence`.
const SELECT_SNAPSHOT_AND_EVENTS: &str = "
WITH s AS (
    SELECT last_sequence, payload
      FROM snapshots
     WHERE aggregate_type = $1 AND aggregate_id = $2
     ORDER BY last_sequence DESC
     LIMIT 1
)
SELECT * FROM (
    SELECT $1 AS aggregate_type, $2 AS aggregate_id, last_sequence AS sequence,
           NULL::text AS event_type, NULL::text AS event_version, payload, NULL::json AS metadata
      FROM s
    UNION ALL
    -- Limited inside: the snapshot's sequence is known only as the
    -- statement runs, so the planner takes the events after it for a third
    -- of the stream, and without the limit here it scanned the whole table
    -- for the few events of a hot aggregate after its snapshot.
    (SELECT aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata
       FROM events
      WHERE aggregate_type = $1 AND aggregate_id = $2
        AND sequence > COALESCE((SELECT last_sequence FROM s), 0)
      ORDER BY sequence
      LIMIT $3)
) AS stream
ORDER BY sequence";

/// Replaces an aggregate's snapshot with one at a later sequence, keeping
/// postgres-es's layout (one row per aggregate, `current_snapshot` counting
/// the replacements). A snapshot older than the stored one is not written.
/// Two writers at once may each insert (neither sees the other's row), so
/// readers take the newest row, and the next write removes the older.
const WRITE_SNAPSHOT: &str = "
WITH older AS (
    DELETE FROM snapshots
     WHERE aggregate_type = $1 AND aggregate_id = $2 AND last_sequence < $3
 RETURNING current_snapshot
)
INSERT INTO snapshots (aggregate_type, aggregate_id, last_sequence, current_snapshot, payload)
SELECT $1, $2, $3, COALESCE((SELECT max(current_snapshot) FROM older), 0) + 1, $4::json
 WHERE NOT EXISTS (SELECT 1 FROM snapshots
                    WHERE aggregate_type = $1 AND aggregate_id = $2 AND last_sequence >= $3)
ON CONFLICT DO NOTHING";

/// The newest snapshot: concurrent writers may have left more than one row.
const SELECT_SNAPSHOT: &str = "
SELECT aggregate_id, last_sequence, current_snapshot, payload
  FROM snapshots
 WHERE aggregate_type = $1 AND aggregate_id = $2
 ORDER BY last_sequence DESC
 LIMIT 1";

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
        events: &[NewEvent],
        claim: Option<&IdempotencyClaim>,
    ) -> Result<(), AppendError> {
        self.append_commands(&[PendingAppend { events, claim }])
            .await
    }

    /// Appends the events and keys of several commands in one statement and
    /// one transaction: all of them are written or none is. A conflict or a
    /// taken key anywhere fails the whole statement; the caller must retry
    /// the commands one by one to learn which.
    pub async fn append_commands(&self, commands: &[PendingAppend<'_>]) -> Result<(), AppendError> {
        let written = match commands {
            [] => return Ok(()),
            [
                PendingAppend {
                    events: [event],
                    claim: None,
                },
            ] => {
                sqlx::query(APPEND_ONE)
                    .bind(&event.aggregate_type)
                    .bind(&event.aggregate_id)
                    .bind(event.sequence)
                    .bind(&event.event_type)
                    .bind(&event.event_version)
                    .bind(&event.payload)
                    .bind(&event.metadata)
                    .bind(event.event_id)
                    .execute(&self.pool)
                    .await
            }
            _ => {
                let columns = Columns::of(commands);
                append_query(&columns).execute(&self.pool).await
            }
        };
        written.map(drop).map_err(classify_write_error)
    }

    /// The newest snapshot of the aggregate, if any, and the events after
    /// it (all of them without one).
    /// At most `limit` events after the snapshot: when as many came, more
    /// may follow the last.
    pub async fn snapshot_and_events<A: Aggregate>(
        &self,
        aggregate_id: &str,
        limit: i64,
    ) -> Result<(Option<StoredSnapshot>, Vec<SerializedEvent>), sqlx::Error> {
        let rows = sqlx::query(SELECT_SNAPSHOT_AND_EVENTS)
            .bind(A::TYPE)
            .bind(aggregate_id)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        let mut snapshot = None;
        let mut events = Vec::with_capacity(rows.len());
        for row in rows {
            let event_type: Option<String> = row.try_get("event_type")?;
            if event_type.is_none() {
                let sequence: i64 = row.try_get("sequence")?;
                snapshot = Some(StoredSnapshot {
                    sequence: u64::try_from(sequence)
                        .map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
                    state: row.try_get("payload")?,
                });
            } else {
                events.push(serialized_event(&row)?);
            }
        }
        Ok((snapshot, events))
    }

    /// Stores `state` (JSON text) as the aggregate's snapshot at `sequence`,
    /// unless a snapshot at that sequence or later is stored already. The
    /// state must be the fold of the aggregate's events up to `sequence`.
    pub async fn write_snapshot(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
        sequence: u64,
        state: &str,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(WRITE_SNAPSHOT)
            .bind(aggregate_type)
            .bind(aggregate_id)
            .bind(i64::try_from(sequence).unwrap_or(i64::MAX))
            .bind(state)
            .execute(&self.pool)
            .await
            .map(drop)
    }

    async fn select_events<A: Aggregate>(
        &self,
        aggregate_id: &str,
        after_sequence: usize,
    ) -> Result<Vec<SerializedEvent>, PersistenceError> {
        self.events_after::<A>(aggregate_id, after_sequence)
            .try_collect()
            .await
    }

    /// One aggregate's events after `after_sequence`, oldest first, as they
    /// stream in from one statement: a fold of a long stream holds one
    /// event at a time, not the stream.
    pub fn events_after<'a, A: Aggregate>(
        &'a self,
        aggregate_id: &'a str,
        after_sequence: usize,
    ) -> impl futures::Stream<Item = Result<SerializedEvent, PersistenceError>> + Send + 'a {
        let after = i64::try_from(after_sequence).unwrap_or(i64::MAX);
        sqlx::query(SELECT_EVENTS)
            .bind(A::TYPE)
            .bind(aggregate_id)
            .bind(after)
            .fetch(&self.pool)
            .map_err(database_error)
            .and_then(|row| async move { serialized_event(&row).map_err(database_error) })
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
        let events = new_events(events)?;
        let columns = Columns::of(&[PendingAppend {
            events: &events,
            claim: None,
        }]);
        append_query(&columns)
            .execute(&mut *tx)
            .await
            .map_err(classify_write_error)?;
        let last_sequence = events.last().map_or(0, |event| event.sequence);
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

/// An aggregate's state as stored in `snapshots`: the fold of its events up
/// to `sequence`, as the aggregate serializes itself.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredSnapshot {
    pub sequence: u64,
    pub state: Value,
}

/// One command's share of an append.
#[derive(Debug, Clone, Copy)]
pub struct PendingAppend<'a> {
    pub events: &'a [NewEvent],
    pub claim: Option<&'a IdempotencyClaim>,
}

/// The events and keys of an append, as arrays for `UNNEST`.
#[derive(Default)]
struct Columns<'e> {
    aggregate_types: Vec<&'e str>,
    aggregate_ids: Vec<&'e str>,
    sequences: Vec<i64>,
    event_types: Vec<&'e str>,
    event_versions: Vec<&'e str>,
    payloads: Vec<&'e str>,
    metadata: Vec<&'e str>,
    event_ids: Vec<Uuid>,
    keys: Vec<&'e str>,
    fingerprints: Vec<&'e str>,
    key_aggregate_types: Vec<&'e str>,
    key_aggregate_ids: Vec<&'e str>,
    key_versions: Vec<i64>,
    key_ttls: Vec<f64>,
}

impl<'e> Columns<'e> {
    fn of(commands: &[PendingAppend<'e>]) -> Self {
        let mut columns = Self::default();
        for command in commands {
            for event in command.events {
                columns.aggregate_types.push(&event.aggregate_type);
                columns.aggregate_ids.push(&event.aggregate_id);
                columns.sequences.push(event.sequence);
                columns.event_types.push(&event.event_type);
                columns.event_versions.push(&event.event_version);
                columns.payloads.push(&event.payload);
                columns.metadata.push(&event.metadata);
                columns.event_ids.push(event.event_id);
            }
            if let (Some(claim), Some(last)) = (command.claim, command.events.last()) {
                columns.keys.push(claim.key.as_str());
                columns.fingerprints.push(&claim.fingerprint);
                columns.key_aggregate_types.push(&last.aggregate_type);
                columns.key_aggregate_ids.push(&last.aggregate_id);
                // The version the command leaves the aggregate at.
                columns.key_versions.push(last.sequence);
                columns.key_ttls.push(claim.ttl.as_secs_f64());
            }
        }
        columns
    }
}

fn new_events(events: &[SerializedEvent]) -> Result<Vec<NewEvent>, AppendError> {
    events.iter().map(NewEvent::from_serialized).collect()
}

fn append_query<'q>(
    columns: &'q Columns<'q>,
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
        .bind(&columns.keys)
        .bind(&columns.fingerprints)
        .bind(&columns.key_aggregate_types)
        .bind(&columns.key_aggregate_ids)
        .bind(&columns.key_versions)
        .bind(&columns.key_ttls)
}

/// Unique violations tell a lost race (events' primary key) from a key used
/// twice (idempotency_keys' primary key). An event that does not follow one
/// the store holds (migration 0006) was decided on a copy of the aggregate
/// the store never held: a conflict too, so the writer reloads the
/// aggregate from the store and decides again.
fn classify_write_error(error: sqlx::Error) -> AppendError {
    if let sqlx::Error::Database(db) = &error {
        if db.constraint() == Some("events_follow_their_predecessor") {
            return AppendError::Conflict;
        }
        if db.is_unique_violation() {
            return match db.constraint() {
                Some("idempotency_keys_pkey") => AppendError::KeyTaken,
                _ => AppendError::Conflict,
            };
        }
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
            None => {
                let events = new_events(events)?;
                self.append(&events, None).await.map_err(Into::into)
            }
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
