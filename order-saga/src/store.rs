//! Sagas in PostgreSQL: one row per order, written with optimistic locking.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use platform::batch::Batcher;
use sqlx::{PgPool, Row};
use tokio::sync::oneshot;

use crate::saga::{OrderSaga, SagaState, StepRecord};

/// A saga as loaded, with what it takes to save it again.
#[derive(Debug, Clone, PartialEq)]
pub struct Loaded {
    pub saga: OrderSaga,
    pub version: i64,
    /// The customer's cancel, if one arrived.
    pub cancel_reason: Option<String>,
    /// The latest version of the order that calls for the saga's work
    /// (see [`wake`]); the saga takes it in when it is past its own.
    pub order_version: i64,
}

/// Stores a new saga unless the order has one already (a redelivered
/// `OrderPlaced`). Returns whether it was new.
pub async fn insert(pool: &PgPool, saga: &OrderSaga) -> sqlx::Result<bool> {
    let inserted = sqlx::query(
        "INSERT INTO sagas (order_id, state, saga, version, updated_at)
         VALUES ($1, $2, $3, 1, $4)
         ON CONFLICT (order_id) DO NOTHING",
    )
    .bind(&saga.order_id)
    .bind(saga.state.as_str())
    .bind(sqlx::types::Json(saga))
    .bind(saga.updated_at)
    .execute(pool)
    .await?;
    Ok(inserted.rows_affected() == 1)
}

/// New sagas as the columns of one `INSERT ... SELECT FROM UNNEST`: order
/// ids, states, the sagas as JSON, times; each order once.
struct NewSagas(
    Vec<String>,
    Vec<&'static str>,
    Vec<String>,
    Vec<DateTime<Utc>>,
);

impl NewSagas {
    fn of(sagas: &[OrderSaga]) -> sqlx::Result<Self> {
        let mut columns = Self(Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut seen = std::collections::HashSet::new();
        for saga in sagas.iter().filter(|saga| seen.insert(&saga.order_id)) {
            columns.0.push(saga.order_id.clone());
            columns.1.push(saga.state.as_str());
            columns.2.push(
                serde_json::to_string(saga)
                    .map_err(|error| sqlx::Error::Encode(Box::new(error)))?,
            );
            columns.3.push(saga.updated_at);
        }
        Ok(columns)
    }
}

/// Stores new sagas in one statement, due at once and leased to nobody
/// (the resume scan hands them to free drivers), unless their order has one
/// already. Returns the order ids of those that were new.
pub async fn insert_due(pool: &PgPool, sagas: &[OrderSaga]) -> sqlx::Result<Vec<String>> {
    let columns = NewSagas::of(sagas)?;
    sqlx::query_scalar(
        "INSERT INTO sagas (order_id, state, saga, version, updated_at)
         SELECT n.order_id, n.state, n.saga::jsonb, 1, n.updated_at
           FROM UNNEST($1::text[], $2::text[], $3::text[], $4::timestamptz[])
                AS n(order_id, state, saga, updated_at)
         ON CONFLICT (order_id) DO NOTHING
      RETURNING order_id",
    )
    .bind(&columns.0)
    .bind(&columns.1)
    .bind(&columns.2)
    .bind(&columns.3)
    .fetch_all(pool)
    .await
}

/// Stores new sagas in one statement, each leased to `owner` for `lease`,
/// unless its order has one already (a redelivered `OrderPlaced`). Returns
/// the order ids of those that were new, and of those `owner` stored
/// before and has not saved since (a retry after an answer that was lost:
/// they are its to drive).
pub async fn insert_leased(
    pool: &PgPool,
    sagas: &[OrderSaga],
    owner: &str,
    lease: std::time::Duration,
) -> sqlx::Result<Vec<String>> {
    let columns = NewSagas::of(sagas)?;
    sqlx::query_scalar(
        "INSERT INTO sagas (order_id, state, saga, version, updated_at, lease_owner, leased_until,
                            next_attempt_at)
         SELECT n.order_id, n.state, n.saga::jsonb, 1, n.updated_at,
                $5, now() + make_interval(secs => $6), now() + make_interval(secs => $6)
           FROM UNNEST($1::text[], $2::text[], $3::text[], $4::timestamptz[])
                AS n(order_id, state, saga, updated_at)
         ON CONFLICT (order_id) DO UPDATE SET leased_until = EXCLUDED.leased_until,
                                              next_attempt_at = EXCLUDED.next_attempt_at
          WHERE sagas.lease_owner = EXCLUDED.lease_owner AND sagas.version = 1
      RETURNING order_id",
    )
    .bind(&columns.0)
    .bind(&columns.1)
    .bind(&columns.2)
    .bind(&columns.3)
    .bind(owner)
    .bind(lease.as_secs_f64())
    .fetch_all(pool)
    .await
}

pub async fn load(pool: &PgPool, order_id: &str) -> sqlx::Result<Option<Loaded>> {
    let row = sqlx::query(
        "SELECT saga, version, cancel_reason, order_version FROM sagas WHERE order_id = $1",
    )
    .bind(order_id)
    .fetch_optional(pool)
    .await?;
    row.as_ref().map(loaded).transpose()
}

/// Loads the saga and leases it to `owner` for `lease`, unless another
/// driver holds an unexpired lease on it (or there is no such saga): `None`.
pub async fn claim(
    pool: &PgPool,
    order_id: &str,
    owner: &str,
    lease: std::time::Duration,
) -> sqlx::Result<Option<Loaded>> {
    let row = sqlx::query(
        "UPDATE sagas SET lease_owner = $2,
                leased_until = now() + make_interval(secs => $3),
                next_attempt_at = now() + make_interval(secs => $3)
          WHERE order_id = $1
            AND (leased_until IS NULL OR leased_until < now() OR lease_owner = $2)
      RETURNING saga, version, cancel_reason, order_version",
    )
    .bind(order_id)
    .bind(owner)
    .bind(lease.as_secs_f64())
    .fetch_optional(pool)
    .await?;
    row.as_ref().map(loaded).transpose()
}

/// Gives up `owner`'s lease on the saga, if it still holds it.
pub async fn release(pool: &PgPool, order_id: &str, owner: &str) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE sagas SET leased_until = NULL, next_attempt_at = least(next_attempt_at, now())
          WHERE order_id = $1 AND lease_owner = $2",
    )
    .bind(order_id)
    .bind(owner)
    .execute(pool)
    .await?;
    Ok(())
}

fn loaded(row: &sqlx::postgres::PgRow) -> sqlx::Result<Loaded> {
    let sqlx::types::Json(saga) = row.try_get("saga")?;
    Ok(Loaded {
        saga,
        version: row.try_get("version")?,
        cancel_reason: row.try_get("cancel_reason")?,
        order_version: row.try_get("order_version")?,
    })
}

/// How a save went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Saved {
    /// The row now holds the saga at `version`; `cancel_reason` is the
    /// row's as the save found it, so that the saver need not read the row
    /// again before its next step. `released`: the save gave the lease up
    /// (see [`Save`]).
    Saved {
        version: i64,
        cancel_reason: Option<String>,
        order_version: i64,
        released: bool,
    },
    /// Someone saved the saga since it was loaded; load it again.
    Stale,
}

/// One saga to save over version `expected`.
#[derive(Debug, Clone)]
pub struct Save {
    pub saga: OrderSaga,
    pub expected: i64,
    /// How long after the save the saga is due again (when it waits). The
    /// database adds it to its own clock: every process and the scan then
    /// compare times of one clock, whatever a node's own clock says.
    pub retry_after: std::time::Duration,
    pub needs_attention: bool,
    /// The driver stops after this save to wait for a retry (the scan
    /// picks the saga up again once `retry_after` has passed).
    pub waits: bool,
}

/// Sagas saved together: one statement and one commit for every save
/// queued at the same moment (group commit, see `platform::batch`). Each
/// save is checked on its own: the row must be at the expected version,
/// and leased to `owner` or to nobody live.
///
/// A save renews `owner`'s lease, or gives it up when the driver stops
/// after it: the saga waits for a retry, or it ended and no cancel arrived
/// that it has not taken in. A cancel that arrives after the saga took in
/// the last one reopens it, due at once whatever backoff the save asked for.
#[derive(Debug, Clone)]
pub struct Saves {
    batcher: Batcher<(Save, oneshot::Sender<sqlx::Result<Saved>>)>,
}

/// Saves in one statement at most.
const MAX_SAVES: usize = 128;

impl Saves {
    pub fn new(pool: PgPool, owner: String, lease: std::time::Duration) -> Self {
        let owner: Arc<str> = owner.into();
        Self {
            batcher: Batcher::new("saga_save_batch_sagas", 1, MAX_SAVES, move |batch| {
                let (pool, owner) = (pool.clone(), Arc::clone(&owner));
                async move { save_batch(&pool, &owner, lease, batch).await }
            }),
        }
    }

    pub async fn save(&self, save: Save) -> sqlx::Result<Saved> {
        let (answer, answered) = oneshot::channel();
        self.batcher
            .submit((save, answer))
            .await
            .map_err(|_| sqlx::Error::PoolClosed)?;
        answered.await.map_err(|_| sqlx::Error::WorkerCrashed)?
    }
}

async fn save_batch(
    pool: &PgPool,
    owner: &str,
    lease: std::time::Duration,
    batch: Vec<(Save, oneshot::Sender<sqlx::Result<Saved>>)>,
) {
    // One driver task per saga and process: an order appears once. Should
    // it not, its later saves go in later statements, one per statement.
    let mut rest = batch;
    while !rest.is_empty() {
        let mut seen = std::collections::HashSet::new();
        let (part, later): (Vec<_>, Vec<_>) = rest
            .into_iter()
            .partition(|(save, _)| seen.insert(save.saga.order_id.clone()));
        rest = later;
        let error = match save_all(pool, owner, lease, part.iter().map(|(save, _)| save)).await {
            Ok(mut saved) => {
                for (save, answer) in part {
                    let outcome = saved.remove(&save.saga.order_id).unwrap_or(Saved::Stale);
                    let _ = answer.send(Ok(outcome));
                }
                continue;
            }
            Err(error) => error,
        };
        if part.len() == 1 {
            if let Some((_, answer)) = part.into_iter().next() {
                let _ = answer.send(Err(error));
            }
            continue;
        }
        // The statement failed: each save alone, so that each gets its own
        // answer.
        for (save, answer) in part {
            let saved = save_all(pool, owner, lease, std::iter::once(&save))
                .await
                .map(|mut saved| saved.remove(&save.saga.order_id).unwrap_or(Saved::Stale));
            let _ = answer.send(saved);
        }
    }
}

/// Saves every saga of `saves` (distinct orders) in one statement; those
/// saved, by order id.
async fn save_all<'a>(
    pool: &PgPool,
    owner: &str,
    lease: std::time::Duration,
    saves: impl Iterator<Item = &'a Save>,
) -> sqlx::Result<HashMap<String, Saved>> {
    let mut columns = SaveColumns::default();
    for save in saves {
        columns
            .push(save)
            .map_err(|error| sqlx::Error::Encode(Box::new(error)))?;
    }
    let rows = sqlx::query(
        "UPDATE sagas AS s
            SET state = u.state, saga = u.saga::jsonb, version = s.version + 1,
                done = u.ended AND (s.cancel_reason IS NULL OR u.cancelled)
                       AND s.order_version <= u.order_version,
                needs_attention = u.attention,
                next_attempt_at = CASE
                    WHEN NOT (u.waits OR (u.ended AND (s.cancel_reason IS NULL OR u.cancelled)
                                          AND s.order_version <= u.order_version))
                        THEN now() + make_interval(secs => $12)
                    WHEN (s.cancel_reason IS NOT NULL AND NOT u.cancelled)
                         OR s.order_version > u.order_version THEN now()
                    ELSE now() + make_interval(secs => u.retry_after) END,
                updated_at = u.updated_at,
                lease_owner = $11,
                leased_until = CASE WHEN u.waits OR (u.ended AND (s.cancel_reason IS NULL OR u.cancelled)
                                                     AND s.order_version <= u.order_version)
                                    THEN NULL
                                    ELSE now() + make_interval(secs => $12) END
           FROM UNNEST($1::text[], $2::text[], $3::text[], $4::bool[], $5::bool[], $6::bool[],
                       $7::float8[], $8::timestamptz[], $9::bigint[], $10::bool[], $13::bigint[])
                AS u(order_id, state, saga, ended, cancelled, attention,
                     retry_after, updated_at, expected, waits, order_version)
          WHERE s.order_id = u.order_id AND s.version = u.expected
            AND (s.lease_owner IS NULL OR s.lease_owner = $11
                 OR s.leased_until IS NULL OR s.leased_until < now())
      RETURNING s.order_id, s.version, s.cancel_reason, s.order_version,
                s.leased_until IS NULL AS released",
    )
    .bind(&columns.order_id)
    .bind(&columns.state)
    .bind(&columns.saga)
    .bind(&columns.ended)
    .bind(&columns.cancelled)
    .bind(&columns.attention)
    .bind(&columns.retry_after)
    .bind(&columns.updated_at)
    .bind(&columns.expected)
    .bind(&columns.waits)
    .bind(owner)
    .bind(lease.as_secs_f64())
    .bind(&columns.order_version)
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|row| {
            Ok((
                row.try_get("order_id")?,
                Saved::Saved {
                    version: row.try_get("version")?,
                    cancel_reason: row.try_get("cancel_reason")?,
                    order_version: row.try_get("order_version")?,
                    released: row.try_get("released")?,
                },
            ))
        })
        .collect()
}

/// The saves as the statement's arrays.
#[derive(Default)]
struct SaveColumns {
    order_id: Vec<String>,
    state: Vec<&'static str>,
    saga: Vec<String>,
    ended: Vec<bool>,
    cancelled: Vec<bool>,
    attention: Vec<bool>,
    retry_after: Vec<f64>,
    updated_at: Vec<DateTime<Utc>>,
    expected: Vec<i64>,
    waits: Vec<bool>,
    order_version: Vec<i64>,
}

impl SaveColumns {
    fn push(&mut self, save: &Save) -> serde_json::Result<()> {
        self.saga.push(serde_json::to_string(&save.saga)?);
        self.order_id.push(save.saga.order_id.clone());
        self.state.push(save.saga.state.as_str());
        self.ended.push(save.saga.is_over());
        // An abandoned saga waits for no cancel: it takes none in.
        self.cancelled
            .push(save.saga.order_cancelled || save.saga.state == SagaState::Abandoned);
        self.attention.push(save.needs_attention);
        self.retry_after.push(save.retry_after.as_secs_f64());
        self.updated_at.push(save.saga.updated_at);
        self.expected.push(save.expected);
        self.waits.push(save.waits);
        self.order_version.push(save.saga.order_version);
        Ok(())
    }
}

/// Notes the customer's cancel of `order_id` for its saga. Returns whether
/// the order has a saga.
pub async fn request_cancel(pool: &PgPool, order_id: &str, reason: &str) -> sqlx::Result<bool> {
    let updated = sqlx::query(
        "UPDATE sagas SET cancel_reason = coalesce(cancel_reason, $2), done = false,
                next_attempt_at = now()
          WHERE order_id = $1",
    )
    .bind(order_id)
    .bind(reason)
    .execute(pool)
    .await?;
    Ok(updated.rows_affected() == 1)
}

/// Notes that the order, at `order_version`, has work for its saga (a
/// shipment asked for, a return received): the saga is due at once and not
/// done until it has taken that version in. Returns whether the order has
/// a saga that had not heard of that version.
pub async fn wake(pool: &PgPool, order_id: &str, order_version: i64) -> sqlx::Result<bool> {
    let updated = sqlx::query(
        "UPDATE sagas SET order_version = $2, done = false,
                next_attempt_at = least(next_attempt_at, now())
          WHERE order_id = $1 AND order_version < $2",
    )
    .bind(order_id)
    .bind(order_version)
    .execute(pool)
    .await?;
    Ok(updated.rows_affected() == 1)
}

/// A saga as an operator looks at it: the row's bookkeeping beside the saga.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Inspected {
    pub order_id: String,
    pub state: String,
    pub done: bool,
    pub needs_attention: bool,
    pub cancel_reason: Option<String>,
    pub next_attempt_at: chrono::DateTime<chrono::Utc>,
    pub lease_owner: Option<String>,
    pub leased_until: Option<chrono::DateTime<chrono::Utc>>,
    pub updated_at: chrono::DateTime<chrono::Utc>,
    pub version: i64,
    pub saga: serde_json::Value,
}

const INSPECTED: &str = "SELECT order_id, state, done, needs_attention, cancel_reason,
        next_attempt_at, lease_owner, leased_until, updated_at, version, saga
   FROM sagas";

fn inspected(row: &sqlx::postgres::PgRow) -> sqlx::Result<Inspected> {
    Ok(Inspected {
        order_id: row.try_get("order_id")?,
        state: row.try_get("state")?,
        done: row.try_get("done")?,
        needs_attention: row.try_get("needs_attention")?,
        cancel_reason: row.try_get("cancel_reason")?,
        next_attempt_at: row.try_get("next_attempt_at")?,
        lease_owner: row.try_get("lease_owner")?,
        leased_until: row.try_get("leased_until")?,
        updated_at: row.try_get("updated_at")?,
        version: row.try_get("version")?,
        saga: row.try_get("saga")?,
    })
}

/// One saga, as an operator looks at it.
pub async fn inspect(pool: &PgPool, order_id: &str) -> sqlx::Result<Option<Inspected>> {
    sqlx::query(&format!("{INSPECTED} WHERE order_id = $1"))
        .bind(order_id)
        .fetch_optional(pool)
        .await?
        .as_ref()
        .map(inspected)
        .transpose()
}

/// Sagas someone should look at: flagged as needing attention, or with work
/// due for over `stalled` that no driver holds. Oldest change first.
pub async fn needing_attention(
    pool: &PgPool,
    stalled: std::time::Duration,
) -> sqlx::Result<Vec<Inspected>> {
    sqlx::query(&format!(
        "{INSPECTED}
          WHERE needs_attention
             OR (NOT done AND next_attempt_at < now() - make_interval(secs => $1)
                 AND (leased_until IS NULL OR leased_until < now()))
          ORDER BY updated_at LIMIT 1000"
    ))
    .bind(stalled.as_secs_f64())
    .fetch_all(pool)
    .await?
    .iter()
    .map(inspected)
    .collect()
}

/// An operator's retry: the saga's next action is due at once, with a fresh
/// count of failures and its attention flag cleared (a driver that fails
/// again flags it again). The version moves on, so a driver holding the
/// saga reloads it before its next save. `false` if there is no such saga
/// or it has nothing left to do.
pub async fn retry_now<'c>(
    executor: impl sqlx::PgExecutor<'c>,
    order_id: &str,
) -> sqlx::Result<bool> {
    let updated = sqlx::query(
        "UPDATE sagas
            SET next_attempt_at = now(), needs_attention = false, version = version + 1,
                saga = jsonb_set(jsonb_set(saga, '{attempts}', '0'), '{attention}', 'null'),
                updated_at = now()
          WHERE order_id = $1 AND NOT done",
    )
    .bind(order_id)
    .execute(executor)
    .await?;
    Ok(updated.rows_affected() == 1)
}

/// Why an operator's abandon was refused.
#[derive(Debug, thiserror::Error)]
pub enum AbandonRefused {
    #[error("order {0} has no saga")]
    NoSaga(String),
    #[error("the saga of order {order_id} ended {state}: there is nothing to abandon")]
    Ended { order_id: String, state: String },
    #[error(
        "a driver ({owner}) is at work on the saga of order {order_id} until {until}; try again then"
    )]
    Driven {
        order_id: String,
        owner: String,
        until: DateTime<Utc>,
    },
    #[error(transparent)]
    Store(#[from] sqlx::Error),
}

/// An operator abandons the saga of `order_id` (see
/// [`SagaState::Abandoned`]): `who` and `why` go into its log (after a
/// cancel still waiting for the driver), it is done and no longer needs
/// attention, and nothing it holds is undone. Refused while a driver holds
/// its lease (the step in its hands could land after), and for a saga that
/// ended (but for an abandoned one flagged since). Run it in the
/// transaction that records the action. `true` if the saga ended now
/// (not when an abandoned one is abandoned again).
pub async fn abandon(
    tx: &mut sqlx::PgConnection,
    order_id: &str,
    who: &str,
    why: &str,
) -> Result<bool, AbandonRefused> {
    let row = sqlx::query(
        "SELECT saga, version, lease_owner, leased_until > now() AS leased, leased_until,
                cancel_reason, clock_timestamp() AS at
           FROM sagas WHERE order_id = $1 FOR UPDATE",
    )
    .bind(order_id)
    .fetch_optional(&mut *tx)
    .await?
    .ok_or_else(|| AbandonRefused::NoSaga(order_id.to_owned()))?;
    let sqlx::types::Json(mut saga): sqlx::types::Json<OrderSaga> = row.try_get("saga")?;
    let version: i64 = row.try_get("version")?;
    // The database's clock, as every saga time is.
    let at: DateTime<Utc> = row.try_get("at")?;
    if row.try_get::<Option<bool>, _>("leased")? == Some(true) {
        return Err(AbandonRefused::Driven {
            order_id: order_id.to_owned(),
            owner: row
                .try_get::<Option<String>, _>("lease_owner")?
                .unwrap_or_default(),
            until: row
                .try_get::<Option<DateTime<Utc>>, _>("leased_until")?
                .unwrap_or(at),
        });
    }
    // A cancel the driver has not taken in yet is noted first: the
    // operator abandons the saga knowing of it.
    if let Some(reason) = row.try_get::<Option<String>, _>("cancel_reason")?
        && !saga.order_cancelled
        && !saga.state.is_final()
    {
        saga.order_cancelled(&reason, at);
    }
    let ends_now = saga.state != SagaState::Abandoned;
    if !saga.abandon(who, why, at) {
        return Err(AbandonRefused::Ended {
            order_id: order_id.to_owned(),
            state: saga.state.as_str().to_owned(),
        });
    }
    // A shipment or return the saga was woken for and has not taken in
    // keeps it running: its driver takes it in and flags it (an abandoned
    // saga carries nothing out), instead of the order waiting unseen.
    sqlx::query(
        "UPDATE sagas
            SET saga = $2, state = $3, version = version + 1,
                done = order_version <= $6, next_attempt_at = now(),
                needs_attention = false, leased_until = NULL, updated_at = $4
          WHERE order_id = $1 AND version = $5",
    )
    .bind(order_id)
    .bind(sqlx::types::Json(&saga))
    .bind(saga.state.as_str())
    .bind(saga.updated_at)
    .bind(version)
    .bind(saga.order_version)
    .execute(&mut *tx)
    .await?;
    Ok(ends_now)
}

/// Sagas with something to do now that no driver holds: new ones, ones
/// whose retry is due, and ones a crash left in the middle (once their
/// driver's lease ran out).
pub async fn due(pool: &PgPool, limit: i64) -> sqlx::Result<Vec<String>> {
    sqlx::query_scalar(
        "SELECT order_id FROM sagas
          WHERE NOT done AND next_attempt_at <= now()
            AND (leased_until IS NULL OR leased_until < now())
          ORDER BY next_attempt_at LIMIT $1",
    )
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// Sagas not done by state, and how many need attention: the metrics'
/// census, which reads only the indexes of those sagas, so its cost does
/// not grow with the sagas that ended.
pub async fn in_progress(pool: &PgPool) -> sqlx::Result<(Vec<(String, i64)>, i64)> {
    let by_state: Vec<(String, i64)> = sqlx::query_as(
        "SELECT state, count(*) FROM sagas WHERE NOT done GROUP BY state ORDER BY state",
    )
    .fetch_all(pool)
    .await?;
    let attention: i64 = sqlx::query_scalar("SELECT count(*) FROM sagas WHERE needs_attention")
        .fetch_one(pool)
        .await?;
    Ok((by_state, attention))
}

/// Every saga by state, and how many need attention (`orders status`: a
/// scan of the whole table).
pub async fn counts(pool: &PgPool) -> sqlx::Result<(Vec<(String, i64)>, i64)> {
    let by_state: Vec<(String, i64)> =
        sqlx::query_as("SELECT state, count(*) FROM sagas GROUP BY state ORDER BY state")
            .fetch_all(pool)
            .await?;
    let attention: i64 = sqlx::query_scalar("SELECT count(*) FROM sagas WHERE needs_attention")
        .fetch_one(pool)
        .await?;
    Ok((by_state, attention))
}

/// What others may see of a saga (GraphQL's `saga` field on an order): where
/// it stands and the steps it took, without its working state.
#[derive(Debug, Clone, PartialEq)]
pub struct SagaView {
    pub order_id: String,
    pub state: SagaState,
    /// Every step taken, oldest first.
    pub steps: Vec<StepRecord>,
    pub updated_at: DateTime<Utc>,
    /// An undo failed repeatedly, or the records disagree: someone should look.
    pub needs_attention: bool,
    /// The id of the order's trace (hex), which every step continues.
    pub trace_id: Option<String>,
}

/// The sagas of `order_ids` that exist, in no particular order.
pub async fn views(pool: &PgPool, order_ids: &[String]) -> sqlx::Result<Vec<SagaView>> {
    let rows = sqlx::query(
        "SELECT order_id, saga -> 'state' AS state, saga -> 'steps' AS steps, updated_at,
                needs_attention, saga ->> 'trace' AS trace
           FROM sagas WHERE order_id = ANY($1)",
    )
    .bind(order_ids)
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|row| {
            let sqlx::types::Json(state) = row.try_get("state")?;
            let sqlx::types::Json(steps) = row.try_get("steps")?;
            Ok(SagaView {
                order_id: row.try_get("order_id")?,
                state,
                steps,
                updated_at: row.try_get("updated_at")?,
                needs_attention: row.try_get("needs_attention")?,
                trace_id: row
                    .try_get::<Option<String>, _>("trace")?
                    .as_deref()
                    .and_then(trace_id_of),
            })
        })
        .collect()
}

/// The trace id (hex) of a W3C `traceparent`, if it is a valid one.
fn trace_id_of(traceparent: &str) -> Option<String> {
    platform::trace::parse(traceparent).map(|context| context.trace_id().to_string())
}
