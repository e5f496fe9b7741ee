//! Where the platform stands, for `orders status` and the console: how far
//! the relay has published, how far behind each read model is, and the
//! sagas at work. Every figure is read through an index, so asking often
//! costs the same however large the store grows.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;

/// Counts of events behind stop here: past it, the lag is "at least".
pub const COUNT_LIMIT: i64 = 100_000;

/// A read model as the overview needs it (the caller has the registry).
#[derive(Debug, Clone, Copy)]
pub struct ReadModel {
    /// Its name in `projection_status`.
    pub name: &'static str,
    pub table: &'static str,
    /// The aggregate type whose events it applies.
    pub aggregate_type: &'static str,
}

#[derive(Debug, Clone, Serialize)]
pub struct Overview {
    pub events: Events,
    pub relay: Vec<Relay>,
    pub projections: Vec<Projection>,
    pub sagas: Sagas,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Events {
    /// The highest global position stored; `None` for an empty store.
    pub last_position: Option<i64>,
    pub last_recorded_at: Option<DateTime<Utc>>,
}

/// One relay's checkpoint.
#[derive(Debug, Clone, Serialize)]
pub struct Relay {
    pub name: String,
    /// The last event Kafka acknowledged.
    pub global_position: i64,
    /// Events stored after it, up to [`COUNT_LIMIT`].
    pub behind: i64,
    /// When the oldest of those was recorded: how long the oldest has waited.
    pub oldest_unpublished_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
}

/// One read model's progress.
#[derive(Debug, Clone, Serialize)]
pub struct Projection {
    pub name: String,
    pub table: String,
    /// The highest global position it applied (0 before its first).
    pub last_global_position: i64,
    /// Events of its aggregate type stored after that, up to [`COUNT_LIMIT`].
    pub behind: i64,
    pub oldest_unapplied_at: Option<DateTime<Utc>>,
    pub updated_at: Option<DateTime<Utc>>,
    pub rebuilt_at: Option<DateTime<Utc>>,
}

/// The sagas at work by state, and those needing attention.
#[derive(Debug, Clone, Serialize)]
pub struct Sagas {
    pub in_progress: std::collections::BTreeMap<String, i64>,
    pub needing_attention: i64,
}

/// Events after `position` (of `aggregate_type`, if given): how many, up to
/// [`COUNT_LIMIT`], and when the first of them was recorded.
async fn after(
    pool: &PgPool,
    position: i64,
    aggregate_type: Option<&str>,
) -> sqlx::Result<(i64, Option<DateTime<Utc>>)> {
    sqlx::query_as(
        "SELECT count(*), min(recorded_at) FROM (
             SELECT recorded_at FROM events
              WHERE global_position > $1 AND ($2::text IS NULL OR aggregate_type = $2)
              ORDER BY global_position LIMIT $3) AS behind",
    )
    .bind(position)
    .bind(aggregate_type)
    .bind(COUNT_LIMIT)
    .fetch_one(pool)
    .await
}

/// The platform's overview, with `models` for the read models.
pub async fn overview(pool: &PgPool, models: &[ReadModel]) -> sqlx::Result<Overview> {
    let (last_position, last_recorded_at): (Option<i64>, Option<DateTime<Utc>>) = sqlx::query_as(
        "SELECT global_position, recorded_at FROM events ORDER BY global_position DESC LIMIT 1",
    )
    .fetch_optional(pool)
    .await?
    .map_or((None, None), |(position, at)| (Some(position), Some(at)));
    let checkpoints: Vec<(String, i64, DateTime<Utc>)> = sqlx::query_as(
        "SELECT name, global_position, updated_at FROM relay_checkpoints ORDER BY name",
    )
    .fetch_all(pool)
    .await?;
    let mut relay = Vec::with_capacity(checkpoints.len());
    for (name, global_position, updated_at) in checkpoints {
        let (behind, oldest_unpublished_at) = after(pool, global_position, None).await?;
        relay.push(Relay {
            name,
            global_position,
            behind,
            oldest_unpublished_at,
            updated_at,
        });
    }
    let mut projections = Vec::with_capacity(models.len());
    for model in models {
        let status: Option<(i64, DateTime<Utc>, Option<DateTime<Utc>>)> = sqlx::query_as(
            "SELECT last_global_position, updated_at, rebuilt_at
               FROM projection_status WHERE projection = $1",
        )
        .bind(model.name)
        .fetch_optional(pool)
        .await?;
        let (last_global_position, updated_at, rebuilt_at) = status
            .map_or((0, None, None), |(position, updated, rebuilt)| {
                (position, Some(updated), rebuilt)
            });
        let (behind, oldest_unapplied_at) =
            after(pool, last_global_position, Some(model.aggregate_type)).await?;
        projections.push(Projection {
            name: model.name.to_owned(),
            table: model.table.to_owned(),
            last_global_position,
            behind,
            oldest_unapplied_at,
            updated_at,
            rebuilt_at,
        });
    }
    let (by_state, needing_attention) = saga_orchestrator::store::in_progress(pool).await?;
    Ok(Overview {
        events: Events {
            last_position,
            last_recorded_at,
        },
        relay,
        projections,
        sagas: Sagas {
            in_progress: by_state.into_iter().collect(),
            needing_attention,
        },
        at: Utc::now(),
    })
}
