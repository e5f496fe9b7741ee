//! Sagas in PostgreSQL: one row per order, written with optimistic locking.

use chrono::{DateTime, Utc};
use sqlx::{PgPool, Row};

use crate::saga::OrderSaga;

/// A saga as loaded, with what it takes to save it again.
#[derive(Debug, Clone, PartialEq)]
pub struct Loaded {
    pub saga: OrderSaga,
    pub version: i64,
    /// The customer's cancel, if one arrived.
    pub cancel_reason: Option<String>,
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

pub async fn load(pool: &PgPool, order_id: &str) -> sqlx::Result<Option<Loaded>> {
    let row = sqlx::query("SELECT saga, version, cancel_reason FROM sagas WHERE order_id = $1")
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
                leased_until = now() + make_interval(secs => $3)
          WHERE order_id = $1
            AND (leased_until IS NULL OR leased_until < now() OR lease_owner = $2)
      RETURNING saga, version, cancel_reason",
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
    sqlx::query("UPDATE sagas SET leased_until = NULL WHERE order_id = $1 AND lease_owner = $2")
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
    })
}

/// How a save went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Saved {
    /// The row now holds the saga at `version`; `cancel_reason` is the
    /// row's as the save found it, so that the saver need not read the row
    /// again before its next step.
    Saved {
        version: i64,
        cancel_reason: Option<String>,
    },
    /// Someone saved the saga since it was loaded; load it again.
    Stale,
}

/// Saves `saga` over version `expected`, renewing `owner`'s lease.
#[allow(clippy::too_many_arguments)] // One statement's parameters, each named.
pub async fn save(
    pool: &PgPool,
    saga: &OrderSaga,
    expected: i64,
    next_attempt_at: DateTime<Utc>,
    needs_attention: bool,
    owner: &str,
    lease: std::time::Duration,
) -> sqlx::Result<Saved> {
    // A cancel that arrives after the saga took in the last one reopens it,
    // and is due at once, whatever backoff the save asks for. A driver whose
    // lease ran out and went to another saves nothing.
    let updated = sqlx::query(
        "UPDATE sagas SET state = $2, saga = $3, version = version + 1,
                done = $4 AND (cancel_reason IS NULL OR $5),
                needs_attention = $6,
                next_attempt_at = CASE WHEN cancel_reason IS NOT NULL AND NOT $5
                                       THEN now() ELSE $7 END,
                updated_at = $8,
                lease_owner = $10, leased_until = now() + make_interval(secs => $11)
          WHERE order_id = $1 AND version = $9
            AND (lease_owner IS NULL OR lease_owner = $10
                 OR leased_until IS NULL OR leased_until < now())
      RETURNING version, cancel_reason",
    )
    .bind(&saga.order_id)
    .bind(saga.state.as_str())
    .bind(sqlx::types::Json(saga))
    .bind(saga.next_action().is_none())
    .bind(saga.order_cancelled)
    .bind(needs_attention)
    .bind(next_attempt_at)
    .bind(saga.updated_at)
    .bind(expected)
    .bind(owner)
    .bind(lease.as_secs_f64())
    .fetch_optional(pool)
    .await?;
    updated.map_or(Ok(Saved::Stale), |row| {
        Ok(Saved::Saved {
            version: row.try_get("version")?,
            cancel_reason: row.try_get("cancel_reason")?,
        })
    })
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

/// Sagas by state, and how many need attention, for the metrics.
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
