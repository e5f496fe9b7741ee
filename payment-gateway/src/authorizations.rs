//! Authorize, then capture: the gateway's ledger of authorizations, their
//! captures and the captures' refunds, as card networks keep them.
//!
//! An authorization holds an amount on the card until it expires or is
//! voided. Captures take parts of it, never more in all than it holds;
//! refunds give parts of a capture back, never more in all than it took.
//! Every call is idempotent by the key its caller chose: a repeated key
//! answers what the first call did, and a key reused for something else is
//! refused. Each operation locks the authorization's row (a refund locks its
//! capture's authorization first, then the capture), so two calls about one
//! authorization are answered one after the other.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::{PgPool, Postgres, Transaction};

use crate::ledger::{Answer, FLAKY_FAILURES};

/// How long an authorization holds when its card does not say otherwise:
/// the week card networks commonly give a merchant to capture.
pub const STANDARD_VALIDITY: Duration = Duration::from_secs(7 * 24 * 3600);

/// Where an authorization stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, sqlx::Type)]
#[serde(rename_all = "snake_case")]
#[sqlx(type_name = "text", rename_all = "snake_case")]
pub enum AuthorizationStatus {
    /// Asked for, not decided yet (`tok_timeout` stays here).
    Pending,
    /// The amount is held; captures may take it until `expires_at`.
    Authorized,
    /// Refused; nothing is held.
    Declined,
    /// Released: what was not captured never will be.
    Voided,
    /// Authorized, and its expiry has passed: nothing more can be captured.
    /// Never stored; an authorized row past its expiry reads so.
    Expired,
}

impl AuthorizationStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Authorized => "authorized",
            Self::Declined => "declined",
            Self::Voided => "voided",
            Self::Expired => "expired",
        }
    }
}

/// One authorization as the gateway knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct Authorization {
    pub key: String,
    pub status: AuthorizationStatus,
    /// `None` for a key voided before its authorization arrived.
    pub amount_cents: Option<i64>,
    pub currency: Option<String>,
    pub payment_method: Option<String>,
    /// The network's reference, once authorized.
    pub reference: Option<String>,
    /// Why it was declined.
    pub reason: Option<String>,
    pub expires_at: Option<DateTime<Utc>>,
    /// What its captures took in all.
    pub captured_cents: i64,
    /// What refunds of its captures gave back in all.
    pub refunded_cents: i64,
    /// What a capture may still take now: nothing unless it is authorized
    /// and unexpired.
    #[sqlx(skip)]
    pub capturable_cents: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl Authorization {
    /// The authorization as it reads at `now`: expired once its expiry has
    /// passed, with what may still be captured.
    fn at(mut self, now: DateTime<Utc>) -> Self {
        if self.status == AuthorizationStatus::Authorized
            && self.expires_at.is_some_and(|expires_at| expires_at <= now)
        {
            self.status = AuthorizationStatus::Expired;
        }
        self.capturable_cents = if self.status == AuthorizationStatus::Authorized {
            self.amount_cents.unwrap_or(0) - self.captured_cents
        } else {
            0
        };
        self
    }
}

/// Where a capture stands. Only `captured` took money.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, sqlx::Type)]
#[serde(rename_all = "snake_case")]
#[sqlx(type_name = "text", rename_all = "snake_case")]
pub enum CaptureStatus {
    Captured,
    /// The card's issuer refused it (`reason` says why).
    Declined,
    /// The authorization had expired: authorize again, then capture.
    Expired,
}

impl CaptureStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Captured => "captured",
            Self::Declined => "declined",
            Self::Expired => "expired",
        }
    }
}

/// One capture of an authorization.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct Capture {
    pub key: String,
    pub authorization_key: String,
    pub status: CaptureStatus,
    pub amount_cents: i64,
    /// What refunds of it gave back in all.
    pub refunded_cents: i64,
    pub reference: Option<String>,
    pub reason: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// One refund of a capture.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct Refund {
    pub key: String,
    pub capture_key: String,
    pub amount_cents: i64,
    pub reference: String,
    pub created_at: DateTime<Utc>,
}

/// An amount to hold on a card.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorizationRequest {
    pub key: String,
    pub amount_cents: i64,
    pub currency: String,
    pub payment_method: String,
}

/// Why the gateway refused a call. A refusal records nothing: the same call
/// is refused again until the ledger changes.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// The key was first used for another call.
    #[error("the key {0} was used for a different request")]
    KeyReused(String),
    /// No authorization or capture has that key.
    #[error("no {0} has that key")]
    NotFound(&'static str),
    /// The authorization cannot be captured: not decided yet, declined or
    /// voided.
    #[error("the authorization is {}: nothing can be captured", .0.as_str())]
    NotCapturable(AuthorizationStatus),
    /// More than the authorization still holds.
    #[error("the authorization holds only {capturable_cents} more")]
    ExceedsAuthorization { capturable_cents: i64 },
    /// Only a capture that took money can be refunded.
    #[error("the capture is {}: it took nothing to refund", .0.as_str())]
    NotCaptured(CaptureStatus),
    /// More than the capture has left to give back.
    #[error("the capture has only {refundable_cents} left to refund")]
    ExceedsCapture { refundable_cents: i64 },
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

const AUTHORIZATION: &str = "key, status, amount_cents, currency, payment_method, reference, \
     reason, expires_at, captured_cents, refunded_cents, created_at, updated_at";
const CAPTURE: &str = "key, authorization_key, status, amount_cents, refunded_cents, reference, \
     reason, created_at, updated_at";
const REFUND: &str = "key, capture_key, amount_cents, reference, created_at";

/// What a payment method's card network answers to an authorization.
enum Network {
    /// Authorized, holding for this long.
    Holds(Duration),
    Declines(&'static str),
    /// Answers after the gateway's slow delay (`tok_slow`).
    Slowly,
    /// Never answers (`tok_timeout`).
    Silent,
    /// Fails for a while, then holds (`tok_flaky`).
    Flaky,
}

fn network(payment_method: &str, expiring: Duration) -> Network {
    match payment_method {
        "tok_visa" | "tok_capture_declined" => Network::Holds(STANDARD_VALIDITY),
        "tok_expiring" => Network::Holds(expiring),
        "tok_declined" => Network::Declines("card declined"),
        "tok_slow" => Network::Slowly,
        "tok_timeout" => Network::Silent,
        "tok_flaky" => Network::Flaky,
        _ => Network::Declines("unknown payment method"),
    }
}

/// Holds the amount once per key (`expiring`: how long a `tok_expiring`
/// authorization holds). A repeated key gets the authorization as it
/// stands; only a pending one is decided (by its payment method).
pub async fn authorize(
    pool: &PgPool,
    request: &AuthorizationRequest,
    expiring: Duration,
) -> Result<Answer<Authorization>, Refusal> {
    // A key seen for the first time with a card the network answers at
    // once is one statement: the authorization goes in with its outcome.
    // Anything else (a key seen before, a card that answers later or fails
    // for a while) takes the row lock below.
    let decided = match network(&request.payment_method, expiring) {
        Network::Holds(validity) => Some((
            AuthorizationStatus::Authorized,
            Some(reference("au")),
            Some(Utc::now() + validity),
            None,
        )),
        Network::Declines(reason) => {
            Some((AuthorizationStatus::Declined, None, None, Some(reason)))
        }
        Network::Slowly | Network::Silent | Network::Flaky => None,
    };
    if let Some((status, reference, expires_at, reason)) = decided {
        let inserted: Option<Authorization> = sqlx::query_as(&format!(
            "INSERT INTO authorizations
                    (key, status, amount_cents, currency, payment_method, reference, expires_at, reason)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
             ON CONFLICT (key) DO NOTHING
             RETURNING {AUTHORIZATION}"
        ))
        .bind(&request.key)
        .bind(status.as_str())
        .bind(request.amount_cents)
        .bind(&request.currency)
        .bind(&request.payment_method)
        .bind(reference)
        .bind(expires_at)
        .bind(reason)
        .fetch_optional(pool)
        .await?;
        if let Some(authorization) = inserted {
            return Ok(Answer::Now(authorization.at(Utc::now())));
        }
    }
    let mut tx = pool.begin().await?;
    sqlx::query(
        "INSERT INTO authorizations (key, status, amount_cents, currency, payment_method)
         VALUES ($1, 'pending', $2, $3, $4)
         ON CONFLICT (key) DO NOTHING",
    )
    .bind(&request.key)
    .bind(request.amount_cents)
    .bind(&request.currency)
    .bind(&request.payment_method)
    .execute(&mut *tx)
    .await?;
    let (authorization, failures) = locked_authorization(&mut tx, &request.key).await?;
    // A key voided before its authorization arrived has no amount to compare.
    if authorization.amount_cents.is_some()
        && (authorization.amount_cents != Some(request.amount_cents)
            || authorization.currency.as_deref() != Some(&request.currency)
            || authorization.payment_method.as_deref() != Some(&request.payment_method))
    {
        return Err(Refusal::KeyReused(request.key.clone()));
    }
    if authorization.status != AuthorizationStatus::Pending {
        return Ok(Answer::Now(authorization.at(Utc::now())));
    }
    let answer = match network(&request.payment_method, expiring) {
        Network::Silent => Answer::Never,
        Network::Flaky if failures < FLAKY_FAILURES => {
            sqlx::query(
                "UPDATE authorizations SET failures = failures + 1, updated_at = now() WHERE key = $1",
            )
            .bind(&request.key)
            .execute(&mut *tx)
            .await?;
            Answer::TryAgain
        }
        Network::Holds(validity) => Answer::Now(hold(&mut tx, &request.key, validity).await?),
        Network::Flaky => Answer::Now(hold(&mut tx, &request.key, STANDARD_VALIDITY).await?),
        Network::Slowly => Answer::Later(hold(&mut tx, &request.key, STANDARD_VALIDITY).await?),
        Network::Declines(reason) => Answer::Now(
            sqlx::query_as(&format!(
                "UPDATE authorizations SET status = 'declined', reason = $2, updated_at = now()
                  WHERE key = $1 RETURNING {AUTHORIZATION}"
            ))
            .bind(&request.key)
            .bind(reason)
            .fetch_one(&mut *tx)
            .await?,
        ),
    };
    tx.commit().await?;
    Ok(match answer {
        Answer::Now(authorization) => Answer::Now(authorization.at(Utc::now())),
        Answer::Later(authorization) => Answer::Later(authorization.at(Utc::now())),
        Answer::Never => Answer::Never,
        Answer::TryAgain => Answer::TryAgain,
    })
}

async fn hold(
    tx: &mut Transaction<'_, Postgres>,
    key: &str,
    validity: Duration,
) -> Result<Authorization, sqlx::Error> {
    let expires_at = Utc::now() + validity;
    sqlx::query_as(&format!(
        "UPDATE authorizations SET status = 'authorized', reference = $2, expires_at = $3,
                updated_at = now()
          WHERE key = $1 RETURNING {AUTHORIZATION}"
    ))
    .bind(key)
    .bind(reference("au"))
    .bind(expires_at)
    .fetch_one(&mut **tx)
    .await
}

/// A capture to take from an authorization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureRequest {
    pub key: String,
    pub amount_cents: i64,
}

/// Takes `request.amount_cents` of the authorization `authorization_key`,
/// once per capture key. An expired authorization, or an issuer that
/// refuses (`tok_capture_declined`), records a capture that took nothing:
/// asked again, the key answers the same.
pub async fn capture(
    pool: &PgPool,
    authorization_key: &str,
    request: &CaptureRequest,
) -> Result<(Capture, Authorization), Refusal> {
    let mut tx = pool.begin().await?;
    let Some(authorization) = find_authorization_locked(&mut tx, authorization_key).await? else {
        return Err(Refusal::NotFound("authorization"));
    };
    let now = Utc::now();
    let authorization = authorization.at(now);
    let earlier: Option<Capture> =
        sqlx::query_as(&format!("SELECT {CAPTURE} FROM captures WHERE key = $1"))
            .bind(&request.key)
            .fetch_optional(&mut *tx)
            .await?;
    if let Some(earlier) = earlier {
        if earlier.authorization_key != authorization_key
            || earlier.amount_cents != request.amount_cents
        {
            return Err(Refusal::KeyReused(request.key.clone()));
        }
        return Ok((earlier, authorization));
    }
    let (status, reason) = match authorization.status {
        AuthorizationStatus::Authorized => {
            if request.amount_cents > authorization.capturable_cents {
                return Err(Refusal::ExceedsAuthorization {
                    capturable_cents: authorization.capturable_cents,
                });
            }
            if authorization.payment_method.as_deref() == Some("tok_capture_declined") {
                (
                    CaptureStatus::Declined,
                    Some("the card's issuer refused the capture"),
                )
            } else {
                (CaptureStatus::Captured, None)
            }
        }
        AuthorizationStatus::Expired => (
            CaptureStatus::Expired,
            Some("the authorization expired: authorize again"),
        ),
        status => return Err(Refusal::NotCapturable(status)),
    };
    let captured: Capture = sqlx::query_as(&format!(
        "INSERT INTO captures (key, authorization_key, status, amount_cents, reference, reason)
         VALUES ($1, $2, $3, $4, $5, $6) RETURNING {CAPTURE}"
    ))
    .bind(&request.key)
    .bind(authorization_key)
    .bind(status)
    .bind(request.amount_cents)
    .bind((status == CaptureStatus::Captured).then(|| reference("cp")))
    .bind(reason)
    .fetch_one(&mut *tx)
    .await
    .map_err(|error| reused_or(error, &request.key))?;
    let authorization = if status == CaptureStatus::Captured {
        sqlx::query_as::<_, Authorization>(&format!(
            "UPDATE authorizations SET captured_cents = captured_cents + $2, updated_at = now()
              WHERE key = $1 RETURNING {AUTHORIZATION}"
        ))
        .bind(authorization_key)
        .bind(request.amount_cents)
        .fetch_one(&mut *tx)
        .await?
        .at(now)
    } else {
        authorization
    };
    tx.commit().await?;
    Ok((captured, authorization))
}

/// Releases what the authorization holds and was not captured, or makes
/// sure it is never held: a pending or unknown key is voided (a late
/// authorization under it is never taken), an authorized one too; its
/// captures stay as they are. Repeating it changes nothing.
pub async fn void(pool: &PgPool, key: &str) -> Result<Authorization, sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query(
        "INSERT INTO authorizations (key, status) VALUES ($1, 'voided') ON CONFLICT (key) DO NOTHING",
    )
    .bind(key)
    .execute(&mut *tx)
    .await?;
    let (authorization, _) = locked_authorization(&mut tx, key).await?;
    let authorization = match authorization.status {
        AuthorizationStatus::Pending | AuthorizationStatus::Authorized => {
            sqlx::query_as(&format!(
                "UPDATE authorizations SET status = 'voided', updated_at = now()
                  WHERE key = $1 RETURNING {AUTHORIZATION}"
            ))
            .bind(key)
            .fetch_one(&mut *tx)
            .await?
        }
        _ => authorization,
    };
    tx.commit().await?;
    Ok(authorization.at(Utc::now()))
}

/// A refund to make of a capture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundRequest {
    pub key: String,
    pub amount_cents: i64,
}

/// Gives `request.amount_cents` of the capture `capture_key` back, once per
/// refund key.
pub async fn refund(
    pool: &PgPool,
    capture_key: &str,
    request: &RefundRequest,
) -> Result<(Refund, Capture), Refusal> {
    let mut tx = pool.begin().await?;
    let authorization_key: Option<String> =
        sqlx::query_scalar("SELECT authorization_key FROM captures WHERE key = $1")
            .bind(capture_key)
            .fetch_optional(&mut *tx)
            .await?;
    let Some(authorization_key) = authorization_key else {
        return Err(Refusal::NotFound("capture"));
    };
    // The authorization first, as every call locks it first.
    locked_authorization(&mut tx, &authorization_key).await?;
    let capture: Capture = sqlx::query_as(&format!(
        "SELECT {CAPTURE} FROM captures WHERE key = $1 FOR UPDATE"
    ))
    .bind(capture_key)
    .fetch_one(&mut *tx)
    .await?;
    let earlier: Option<Refund> =
        sqlx::query_as(&format!("SELECT {REFUND} FROM refunds WHERE key = $1"))
            .bind(&request.key)
            .fetch_optional(&mut *tx)
            .await?;
    if let Some(earlier) = earlier {
        if earlier.capture_key != capture_key || earlier.amount_cents != request.amount_cents {
            return Err(Refusal::KeyReused(request.key.clone()));
        }
        return Ok((earlier, capture));
    }
    if capture.status != CaptureStatus::Captured {
        return Err(Refusal::NotCaptured(capture.status));
    }
    let refundable_cents = capture.amount_cents - capture.refunded_cents;
    if request.amount_cents > refundable_cents {
        return Err(Refusal::ExceedsCapture { refundable_cents });
    }
    let refunded: Refund = sqlx::query_as(&format!(
        "INSERT INTO refunds (key, capture_key, amount_cents, reference)
         VALUES ($1, $2, $3, $4) RETURNING {REFUND}"
    ))
    .bind(&request.key)
    .bind(capture_key)
    .bind(request.amount_cents)
    .bind(reference("re"))
    .fetch_one(&mut *tx)
    .await
    .map_err(|error| reused_or(error, &request.key))?;
    let capture: Capture = sqlx::query_as(&format!(
        "UPDATE captures SET refunded_cents = refunded_cents + $2, updated_at = now()
          WHERE key = $1 RETURNING {CAPTURE}"
    ))
    .bind(capture_key)
    .bind(request.amount_cents)
    .fetch_one(&mut *tx)
    .await?;
    sqlx::query(
        "UPDATE authorizations SET refunded_cents = refunded_cents + $2, updated_at = now()
          WHERE key = $1",
    )
    .bind(&authorization_key)
    .bind(request.amount_cents)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok((refunded, capture))
}

/// The authorization under `key` with its captures, oldest first.
pub async fn find_authorization(
    pool: &PgPool,
    key: &str,
) -> Result<Option<(Authorization, Vec<Capture>)>, sqlx::Error> {
    let authorization: Option<Authorization> = sqlx::query_as(&format!(
        "SELECT {AUTHORIZATION} FROM authorizations WHERE key = $1"
    ))
    .bind(key)
    .fetch_optional(pool)
    .await?;
    let Some(authorization) = authorization else {
        return Ok(None);
    };
    let captures = sqlx::query_as(&format!(
        "SELECT {CAPTURE} FROM captures WHERE authorization_key = $1 ORDER BY created_at, key"
    ))
    .bind(key)
    .fetch_all(pool)
    .await?;
    Ok(Some((authorization.at(Utc::now()), captures)))
}

/// The capture under `key` with its refunds, oldest first.
pub async fn find_capture(
    pool: &PgPool,
    key: &str,
) -> Result<Option<(Capture, Vec<Refund>)>, sqlx::Error> {
    let capture: Option<Capture> =
        sqlx::query_as(&format!("SELECT {CAPTURE} FROM captures WHERE key = $1"))
            .bind(key)
            .fetch_optional(pool)
            .await?;
    let Some(capture) = capture else {
        return Ok(None);
    };
    let refunds = sqlx::query_as(&format!(
        "SELECT {REFUND} FROM refunds WHERE capture_key = $1 ORDER BY created_at, key"
    ))
    .bind(key)
    .fetch_all(pool)
    .await?;
    Ok(Some((capture, refunds)))
}

/// The refund under `key`.
pub async fn find_refund(pool: &PgPool, key: &str) -> Result<Option<Refund>, sqlx::Error> {
    sqlx::query_as(&format!("SELECT {REFUND} FROM refunds WHERE key = $1"))
        .bind(key)
        .fetch_optional(pool)
        .await
}

/// Up to `limit` authorizations with keys after `after`, in key order.
pub async fn list(
    pool: &PgPool,
    after: &str,
    limit: i64,
) -> Result<Vec<Authorization>, sqlx::Error> {
    let now = Utc::now();
    let rows: Vec<Authorization> = sqlx::query_as(&format!(
        "SELECT {AUTHORIZATION} FROM authorizations WHERE key > $1 ORDER BY key LIMIT $2"
    ))
    .bind(after)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(|row| row.at(now)).collect())
}

/// The authorization's row, locked until the transaction ends, with its
/// count of transient failures.
async fn locked_authorization(
    tx: &mut Transaction<'_, Postgres>,
    key: &str,
) -> Result<(Authorization, i32), sqlx::Error> {
    #[derive(sqlx::FromRow)]
    struct Locked {
        #[sqlx(flatten)]
        authorization: Authorization,
        failures: i32,
    }
    let row: Locked = sqlx::query_as(&format!(
        "SELECT {AUTHORIZATION}, failures FROM authorizations WHERE key = $1 FOR UPDATE"
    ))
    .bind(key)
    .fetch_one(&mut **tx)
    .await?;
    Ok((row.authorization, row.failures))
}

async fn find_authorization_locked(
    tx: &mut Transaction<'_, Postgres>,
    key: &str,
) -> Result<Option<Authorization>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {AUTHORIZATION} FROM authorizations WHERE key = $1 FOR UPDATE"
    ))
    .bind(key)
    .fetch_optional(&mut **tx)
    .await
}

/// A key taken at the same moment under another authorization or capture
/// (the row locks of one parent do not order calls on two): the key was
/// reused.
fn reused_or(error: sqlx::Error, key: &str) -> Refusal {
    match &error {
        sqlx::Error::Database(database) if database.code().as_deref() == Some("23505") => {
            Refusal::KeyReused(key.to_owned())
        }
        _ => Refusal::Database(error),
    }
}

fn reference(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::new_v4().simple())
}
