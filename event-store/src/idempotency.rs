//! Remembered outcomes of commands sent with an idempotency key.
//!
//! Keys are recorded by [`PgEventRepository::append`](crate::PgEventRepository::append)
//! in the statement that appends the events; this module reads them back and
//! forgets them when they expire.

use sqlx::{PgPool, Row};

/// What an earlier command with the same key did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RememberedOutcome {
    pub request_fingerprint: String,
    pub aggregate_type: String,
    pub aggregate_id: String,
    /// The aggregate's version right after that command.
    pub version: u64,
}

/// Looks up an unexpired key.
pub async fn remembered(
    pool: &PgPool,
    key: &str,
) -> Result<Option<RememberedOutcome>, sqlx::Error> {
    let row = sqlx::query(
        "SELECT request_fingerprint, aggregate_type, aggregate_id, version
           FROM idempotency_keys
          WHERE key = $1 AND expires_at > now()",
    )
    .bind(key)
    .fetch_optional(pool)
    .await?;
    row.map(|row| {
        let version: i64 = row.try_get("version")?;
        Ok(RememberedOutcome {
            request_fingerprint: row.try_get("request_fingerprint")?,
            aggregate_type: row.try_get("aggregate_type")?,
            aggregate_id: row.try_get("aggregate_id")?,
            version: u64::try_from(version).map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
        })
    })
    .transpose()
}

/// Deletes up to `batch` expired keys and says how many went. Small batches
/// keep each delete short; call again while it returns `batch`.
pub async fn forget_expired(pool: &PgPool, batch: i64) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "DELETE FROM idempotency_keys
          WHERE key IN (SELECT key FROM idempotency_keys
                         WHERE expires_at <= now()
                         ORDER BY expires_at
                         LIMIT $1
                           FOR UPDATE SKIP LOCKED)",
    )
    .bind(batch)
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}

/// Deletes `key` if it has expired, so that it can be used again at once
/// instead of after the next cleanup. Returns whether a row went.
pub async fn forget_if_expired(pool: &PgPool, key: &str) -> Result<bool, sqlx::Error> {
    let done = sqlx::query("DELETE FROM idempotency_keys WHERE key = $1 AND expires_at <= now()")
        .bind(key)
        .execute(pool)
        .await?;
    Ok(done.rows_affected() > 0)
}

/// The fingerprint a fence records in place of a request's: no request has it,
/// so a command that comes with the fenced key is refused as a reused key.
pub const FENCE_FINGERPRINT: &str = "fence: this key will never be used";

/// Makes sure the command that would use `key` either has landed or never
/// will, and says which: it records a fence under the key unless a command
/// holds it already. A command still on its way (queued, or its statement
/// running) either committed before the fence, and is found, or finds the
/// fence and appends nothing. Returns the row holding the key afterwards.
pub async fn fence(
    pool: &PgPool,
    key: &str,
    aggregate_type: &str,
    aggregate_id: &str,
    ttl: std::time::Duration,
) -> Result<RememberedOutcome, sqlx::Error> {
    // Two rounds at most: the second runs only when an expired row held the key.
    for _ in 0..2 {
        // Waits for a transaction that is inserting the same key right now.
        sqlx::query(
            "INSERT INTO idempotency_keys
                 (key, request_fingerprint, aggregate_type, aggregate_id, version, expires_at)
             VALUES ($1, $2, $3, $4, 0, now() + make_interval(secs => $5))
             ON CONFLICT (key) DO NOTHING",
        )
        .bind(key)
        .bind(FENCE_FINGERPRINT)
        .bind(aggregate_type)
        .bind(aggregate_id)
        .bind(ttl.as_secs_f64())
        .execute(pool)
        .await?;
        if let Some(holder) = remembered(pool, key).await? {
            return Ok(holder);
        }
        forget_if_expired(pool, key).await?;
    }
    Err(sqlx::Error::Protocol(format!(
        "idempotency key {key} neither held nor fenceable"
    )))
}
