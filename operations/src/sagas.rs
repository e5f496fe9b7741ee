//! Sagas that need someone: listed, looked at whole, and retried at once,
//! each action recorded in `saga_actions`.

use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use saga_orchestrator::store::{self, Inspected};
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

/// Makes the saga's next action due at once with a fresh count of failures
/// (see `store::retry_now`), recorded as `actor`'s, with `reason` if given.
pub async fn retry(
    pool: &PgPool,
    order_id: &str,
    reason: Option<&str>,
    actor: &str,
) -> anyhow::Result<()> {
    let actor = actor.trim();
    anyhow::ensure!(
        !actor.is_empty() && actor.chars().count() <= 200,
        "an action needs who took it (1 to 200 characters)"
    );
    let reason = reason.map(str::trim).filter(|reason| !reason.is_empty());
    anyhow::ensure!(
        reason.is_none_or(|reason| reason.chars().count() <= 500),
        "a reason has at most 500 characters"
    );
    let mut tx = pool.begin().await?;
    sqlx::query(
        "INSERT INTO saga_actions (order_id, action, reason, actor) VALUES ($1, 'retried', $2, $3)",
    )
    .bind(order_id)
    .bind(reason)
    .bind(actor)
    .execute(&mut *tx)
    .await
    .context("recording the action")?;
    // In the same transaction: retried and recorded, or neither.
    anyhow::ensure!(
        store::retry_now(&mut *tx, order_id).await?,
        "order {order_id} has no saga with anything left to do"
    );
    tx.commit().await?;
    metrics::counter!("saga_actions_total", "action" => "retried").increment(1);
    tracing::info!(order_id, actor, reason, "saga retried by an operator");
    Ok(())
}
