//! The gateway's ledger in PostgreSQL: what happened to each charge key.
//!
//! Each operation runs in one transaction that locks the key's row, so two
//! requests for one key (a retry racing the first try, two callers) are
//! answered one after the other and never charge twice.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::{PgPool, Postgres, Transaction};

/// The largest charge the gateway takes, in minor units: 100 million major
/// units. The platform refuses orders above it when they are placed.
pub const MAX_AMOUNT_CENTS: i64 = 10_000_000_000;

/// Transient failures a `tok_flaky` charge answers before it is approved.
pub const FLAKY_FAILURES: i32 = 2;

/// Where a charge stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, sqlx::Type)]
#[serde(rename_all = "snake_case")]
#[sqlx(type_name = "text", rename_all = "snake_case")]
pub enum Status {
    /// Asked for, not decided yet (`tok_timeout` stays here).
    Pending,
    /// The money is captured.
    Approved,
    /// Refused; nothing was captured.
    Declined,
    /// Captured, then given back.
    Refunded,
    /// Cancelled before anything was captured; it never will be.
    Voided,
}

/// One charge as the gateway knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct Charge {
    pub key: String,
    pub status: Status,
    /// `None` for a key refunded before its charge arrived.
    pub amount_cents: Option<i64>,
    pub currency: Option<String>,
    pub payment_method: Option<String>,
    /// The capture's reference, once approved.
    pub reference: Option<String>,
    /// Why the charge was declined.
    pub reason: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A charge to take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChargeRequest {
    pub key: String,
    pub amount_cents: i64,
    pub currency: String,
    pub payment_method: String,
}

/// What a request to a card network (a charge, an authorization) comes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer<T = Charge> {
    /// Answer with it now.
    Now(T),
    /// Answer with it once the token's delay is over (`tok_slow`).
    Later(T),
    /// The token never answers (`tok_timeout`); the request stays pending.
    Never,
    /// A transient failure (`tok_flaky`): try again.
    TryAgain,
}

/// Why a charge request was refused.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// The key was first used for another amount, currency or payment method.
    #[error("the key {0} was used for a different charge")]
    KeyReused(String),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

const COLUMNS: &str = "key, status, amount_cents, currency, payment_method, reference, reason, created_at, updated_at";

/// Takes the charge once per key. A repeated key gets the charge as it
/// stands; only a pending charge is decided (by its payment token).
pub async fn charge(pool: &PgPool, request: &ChargeRequest) -> Result<Answer, LedgerError> {
    // A key seen for the first time with a token the network answers at
    // once is one statement: the charge goes in with its outcome. Anything
    // else (a key seen before, a token that answers later or fails for a
    // while) takes the row lock below.
    if let Some((status, reference, reason)) = immediate(&request.payment_method) {
        let inserted: Option<Charge> = sqlx::query_as(&format!(
            "INSERT INTO charges (key, status, amount_cents, currency, payment_method, reference, reason)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (key) DO NOTHING
             RETURNING {COLUMNS}"
        ))
        .bind(&request.key)
        .bind(status)
        .bind(request.amount_cents)
        .bind(&request.currency)
        .bind(&request.payment_method)
        .bind(reference)
        .bind(reason)
        .fetch_optional(pool)
        .await?;
        if let Some(charge) = inserted {
            return Ok(Answer::Now(charge));
        }
    }
    let mut tx = pool.begin().await?;
    sqlx::query(
        "INSERT INTO charges (key, status, amount_cents, currency, payment_method)
         VALUES ($1, 'pending', $2, $3, $4)
         ON CONFLICT (key) DO NOTHING",
    )
    .bind(&request.key)
    .bind(request.amount_cents)
    .bind(&request.currency)
    .bind(&request.payment_method)
    .execute(&mut *tx)
    .await?;
    let (charge, failures) = locked(&mut tx, &request.key).await?;
    // A key voided before its charge arrived has no amount to compare.
    if charge.amount_cents.is_some()
        && (charge.amount_cents != Some(request.amount_cents)
            || charge.currency.as_deref() != Some(&request.currency)
            || charge.payment_method.as_deref() != Some(&request.payment_method))
    {
        return Err(LedgerError::KeyReused(request.key.clone()));
    }
    if charge.status != Status::Pending {
        return Ok(Answer::Now(charge));
    }
    let answer = match request.payment_method.as_str() {
        "tok_timeout" => Answer::Never,
        "tok_flaky" if failures < FLAKY_FAILURES => {
            sqlx::query(
                "UPDATE charges SET failures = failures + 1, updated_at = now() WHERE key = $1",
            )
            .bind(&request.key)
            .execute(&mut *tx)
            .await?;
            Answer::TryAgain
        }
        "tok_visa" | "tok_flaky" => Answer::Now(approve(&mut tx, &request.key).await?),
        "tok_slow" => Answer::Later(approve(&mut tx, &request.key).await?),
        "tok_declined" => Answer::Now(decline(&mut tx, &request.key, "card declined").await?),
        _ => Answer::Now(decline(&mut tx, &request.key, "unknown payment method").await?),
    };
    tx.commit().await?;
    Ok(answer)
}

/// Gives the money of `key` back, or makes sure it is never taken: an
/// approved charge is refunded, a pending or unknown one voided. Repeating it
/// changes nothing.
pub async fn refund(pool: &PgPool, key: &str) -> Result<Charge, sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query(
        "INSERT INTO charges (key, status) VALUES ($1, 'voided') ON CONFLICT (key) DO NOTHING",
    )
    .bind(key)
    .execute(&mut *tx)
    .await?;
    let (charge, _) = locked(&mut tx, key).await?;
    let next = match charge.status {
        Status::Approved => Status::Refunded,
        Status::Pending => Status::Voided,
        unchanged => unchanged,
    };
    let charge = if next == charge.status {
        charge
    } else {
        sqlx::query_as(&format!(
            "UPDATE charges SET status = $2, updated_at = now() WHERE key = $1 RETURNING {COLUMNS}"
        ))
        .bind(key)
        .bind(next)
        .fetch_one(&mut *tx)
        .await?
    };
    tx.commit().await?;
    Ok(charge)
}

/// The charge made under `key`, if any.
pub async fn find(pool: &PgPool, key: &str) -> Result<Option<Charge>, sqlx::Error> {
    sqlx::query_as(&format!("SELECT {COLUMNS} FROM charges WHERE key = $1"))
        .bind(key)
        .fetch_optional(pool)
        .await
}

/// Up to `limit` charges with keys after `after`, in key order.
pub async fn list(pool: &PgPool, after: &str, limit: i64) -> Result<Vec<Charge>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM charges WHERE key > $1 ORDER BY key LIMIT $2"
    ))
    .bind(after)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// The key's row, locked until the transaction ends, with its failure count.
async fn locked(
    tx: &mut Transaction<'_, Postgres>,
    key: &str,
) -> Result<(Charge, i32), sqlx::Error> {
    #[derive(sqlx::FromRow)]
    struct Locked {
        #[sqlx(flatten)]
        charge: Charge,
        failures: i32,
    }
    let row: Locked = sqlx::query_as(&format!(
        "SELECT {COLUMNS}, failures FROM charges WHERE key = $1 FOR UPDATE"
    ))
    .bind(key)
    .fetch_one(&mut **tx)
    .await?;
    Ok((row.charge, row.failures))
}

/// What the network answers at once for a payment method: the status, and
/// the capture's reference or the decline's reason. `None` for the tokens
/// that answer later, never, or after transient failures.
fn immediate(payment_method: &str) -> Option<(Status, Option<String>, Option<&'static str>)> {
    match payment_method {
        "tok_visa" => Some((Status::Approved, Some(new_reference()), None)),
        "tok_declined" => Some((Status::Declined, None, Some("card declined"))),
        "tok_timeout" | "tok_flaky" | "tok_slow" => None,
        _ => Some((Status::Declined, None, Some("unknown payment method"))),
    }
}

fn new_reference() -> String {
    format!("ch_{}", uuid::Uuid::new_v4().simple())
}

async fn approve(tx: &mut Transaction<'_, Postgres>, key: &str) -> Result<Charge, sqlx::Error> {
    sqlx::query_as(&format!(
        "UPDATE charges SET status = 'approved', reference = $2, updated_at = now()
          WHERE key = $1 RETURNING {COLUMNS}"
    ))
    .bind(key)
    .bind(new_reference())
    .fetch_one(&mut **tx)
    .await
}

async fn decline(
    tx: &mut Transaction<'_, Postgres>,
    key: &str,
    reason: &str,
) -> Result<Charge, sqlx::Error> {
    sqlx::query_as(&format!(
        "UPDATE charges SET status = 'declined', reason = $2, updated_at = now()
          WHERE key = $1 RETURNING {COLUMNS}"
    ))
    .bind(key)
    .bind(reason)
    .fetch_one(&mut **tx)
    .await
}
