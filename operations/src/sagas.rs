//! Sagas that need someone: listed, looked at whole, and retried at once,
//! each action recorded in `saga_actions`.

use std::time::Duration;

use chrono::{DateTime, Utc};
use order_saga::store::{self, Inspected};
use serde::Serialize;
use sqlx::PgPool;

/// Work due this long with no driver on it counts as stalled.
pub const STALLED_AFTER: Duration = Duration::from_secs(5 * 60);

/// One action recorded on a saga.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SagaAction {
    pub action: String,
    pub reason: Option<String>,
    pub actor: String,
    pub at: DateTime<Utc>,
}

/// A saga with what operators did to it.
#[derive(Debug, Clone, Serialize)]
pub struct SagaReport {
    #[serde(flatten)]
    pub saga: Inspected,
    pub actions: Vec<SagaAction>,
}

/// Sagas flagged as needing attention, and those whose work has been due
/// for over [`STALLED_AFTER`] with no driver on it.
pub async fn needing_attention(pool: &PgPool) -> anyhow::Result<Vec<Inspected>> {
    Ok(store::needing_attention(pool, STALLED_AFTER).await?)
}

/// One order's saga whole, with its recorded actions.
pub async fn show(pool: &PgPool, order_id: &str) -> anyhow::Result<Option<SagaReport>> {
    let Some(saga) = store::inspect(pool, order_id).await? else {
        return Ok(None);
    };
    let actions: Vec<(String, Option<String>, String, DateTime<Utc>)> = sqlx::query_as(
        "SELECT action, reason, actor, at FROM saga_actions WHERE order_id = $1 ORDER BY id",
    )
    .bind(order_id)
    .fetch_all(pool)
    .await?;
    Ok(Some(SagaReport {
        saga,
        actions: actions
            .into_iter()
            .map(|(action, reason, actor, at)| SagaAction {
                action,
                reason,
                actor,
                at,
            })
            .collect(),
    }))
}

/// Why an operator's action on a saga was refused; the ones to show the
/// operator as they are (`Invalid`, `NotFound`, `Refused`) and the rest.
#[derive(Debug, thiserror::Error)]
pub enum ActionError {
    /// `field` (`actor` or `reason`) is missing, too long or not one line.
    #[error("{message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    #[error("order {0} has no saga")]
    NotFound(String),
    /// The saga is not in a state that allows it (ended, or driven now).
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Store(#[from] sqlx::Error),
}

/// Who took an action and why, checked (see [`crate::clean_text`]); a
/// reason is required when `needed`.
fn who_and_why<'a>(
    actor: &'a str,
    reason: Option<&'a str>,
    needed: bool,
) -> Result<(&'a str, Option<&'a str>), ActionError> {
    let invalid = |field, message| ActionError::Invalid { field, message };
    let actor = crate::clean_text("who took an action", actor, crate::ACTOR_LIMIT)
        .map_err(|message| invalid("actor", message))?
        .ok_or_else(|| invalid("actor", "an action needs who took it".into()))?;
    let reason = match reason {
        Some(reason) => crate::clean_text("a reason", reason, crate::REASON_LIMIT)
            .map_err(|message| invalid("reason", message))?,
        None => None,
    };
    if needed && reason.is_none() {
        return Err(invalid("reason", "say why (a reason is required)".into()));
    }
    Ok((actor, reason))
}

async fn record(
    tx: &mut sqlx::PgConnection,
    order_id: &str,
    action: &str,
    reason: Option<&str>,
    actor: &str,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO saga_actions (order_id, action, reason, actor) VALUES ($1, $2, $3, $4)",
    )
    .bind(order_id)
    .bind(action)
    .bind(reason)
    .bind(actor)
    .execute(tx)
    .await?;
    Ok(())
}

/// Makes the saga's next action due at once with a fresh count of failures
/// (see `store::retry_now`), recorded as `actor`'s, with `reason` if given.
pub async fn retry(
    pool: &PgPool,
    order_id: &str,
    reason: Option<&str>,
    actor: &str,
) -> Result<(), ActionError> {
    let (actor, reason) = who_and_why(actor, reason, false)?;
    let mut tx = pool.begin().await?;
    record(&mut tx, order_id, "retried", reason, actor).await?;
    // In the same transaction: retried and recorded, or neither.
    if !store::retry_now(&mut *tx, order_id).await? {
        return Err(match store::inspect(pool, order_id).await? {
            None => ActionError::NotFound(order_id.to_owned()),
            Some(saga) => ActionError::Refused(format!(
                "the saga of order {order_id} ended {}: there is nothing to retry",
                saga.state
            )),
        });
    }
    tx.commit().await?;
    metrics::counter!("saga_actions_total", "action" => "retried").increment(1);
    tracing::info!(order_id, actor, reason, "saga retried by an operator");
    Ok(())
}

/// Stops the saga for good (see `SagaState::Abandoned`): nothing it holds
/// is undone, and `orders audit` lists its order as abandoned, with
/// `actor` and `reason` (required), instead of checking its books.
pub async fn abandon(
    pool: &PgPool,
    order_id: &str,
    reason: &str,
    actor: &str,
) -> Result<(), ActionError> {
    let (actor, reason) = who_and_why(actor, Some(reason), true)?;
    let reason = reason.unwrap_or_default();
    let mut tx = pool.begin().await?;
    record(&mut tx, order_id, "abandoned", Some(reason), actor).await?;
    let ended_now = match store::abandon(&mut tx, order_id, actor, reason).await {
        Ok(ended_now) => ended_now,
        Err(store::AbandonRefused::NoSaga(id)) => return Err(ActionError::NotFound(id)),
        Err(store::AbandonRefused::Store(error)) => return Err(error.into()),
        Err(refused) => return Err(ActionError::Refused(refused.to_string())),
    };
    tx.commit().await?;
    metrics::counter!("saga_actions_total", "action" => "abandoned").increment(1);
    if ended_now {
        metrics::counter!("sagas_ended_total", "state" => "ABANDONED").increment(1);
    }
    tracing::warn!(order_id, actor, reason, "saga abandoned by an operator");
    Ok(())
}
