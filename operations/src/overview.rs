//! Where the platform stands, for `orders status` and the console: how far
//! the relay has published, how far behind each read model is, and the
//! sagas at work. Every figure is read through an index over a bounded
//! range (at most [`WINDOW`] positions past a reader's), under a statement
//! timeout, so asking every few seconds costs the same however large the
//! store grows.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;

/// How many global positions past a reader's position are looked at: the
/// events behind it are counted among those (`behind_more` says that
/// positions beyond were not looked at).
pub const WINDOW: i64 = 20_000;
/// How long one statement of the overview may take.
const STATEMENT_TIMEOUT_MS: i64 = 2_000;

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

/// How far a reader of the events is behind them.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Lag {
    /// Events after its position (of its aggregate type, for a read model)
    /// among the next [`WINDOW`] positions.
    pub behind: i64,
    /// Positions beyond the window exist: `behind` is a lower bound. (A read
    /// model of a rare aggregate type sits far back even when it is up to
    /// date: its position moves only with its own events.)
    pub behind_more: bool,
    /// When the first of those events was recorded: how long it has waited.
    pub oldest_behind_at: Option<DateTime<Utc>>,
}

/// One relay's checkpoint.
#[derive(Debug, Clone, Serialize)]
pub struct Relay {
    pub name: String,
    /// The last event Kafka acknowledged.
    pub global_position: i64,
    #[serde(flatten)]
    pub lag: Lag,
    pub updated_at: DateTime<Utc>,
}

/// One read model's progress.
#[derive(Debug, Clone, Serialize)]
pub struct Projection {
    pub name: String,
    pub table: String,
    /// The highest global position it applied (0 before its first).
    pub last_global_position: i64,
    #[serde(flatten)]
    pub lag: Lag,
    pub updated_at: Option<DateTime<Utc>>,
    pub rebuilt_at: Option<DateTime<Utc>>,
}

/// The sagas at work by state, and those needing attention.
#[derive(Debug, Clone, Serialize)]
pub struct Sagas {
    pub in_progress: std::collections::BTreeMap<String, i64>,
    pub needing_attention: i64,
}

/// The lag of a reader at `position` (of `aggregate_type`, if given), with
/// `last` the last position stored.
async fn lag(
    connection: &mut sqlx::PgConnection,
    position: i64,
    aggregate_type: Option<&str>,
    last: Option<i64>,
) -> sqlx::Result<Lag> {
    let (behind, oldest_behind_at): (i64, Option<DateTime<Utc>>) = sqlx::query_as(
        "SELECT count(*), min(recorded_at) FROM events
          WHERE global_position > $1 AND global_position <= $1 + $3
            AND ($2::text IS NULL OR aggregate_type = $2)",
    )
    .bind(position)
    .bind(aggregate_type)
    .bind(WINDOW)
    .fetch_one(connection)
    .await?;
    Ok(Lag {
        behind,
        behind_more: last.is_some_and(|last| last > position.saturating_add(WINDOW)),
        oldest_behind_at,
    })
}

/// The platform's overview, with `models` for the read models.
pub async fn overview(pool: &PgPool, models: &[ReadModel]) -> sqlx::Result<Overview> {
    // One read-only transaction, each statement bounded in time.
    let mut tx = pool.begin().await?;
    sqlx::query("SET TRANSACTION READ ONLY")
        .execute(&mut *tx)
        .await?;
    sqlx::query(&format!(
        "SET LOCAL statement_timeout = {STATEMENT_TIMEOUT_MS}"
    ))
    .execute(&mut *tx)
    .await?;
    let (last_position, last_recorded_at): (Option<i64>, Option<DateTime<Utc>>) = sqlx::query_as(
        "SELECT global_position, recorded_at FROM events ORDER BY global_position DESC LIMIT 1",
    )
    .fetch_optional(&mut *tx)
    .await?
    .map_or((None, None), |(position, at)| (Some(position), Some(at)));
    let checkpoints: Vec<(String, i64, DateTime<Utc>)> = sqlx::query_as(
        "SELECT name, global_position, updated_at FROM relay_checkpoints ORDER BY name",
    )
    .fetch_all(&mut *tx)
    .await?;
    let mut relay = Vec::with_capacity(checkpoints.len());
    for (name, global_position, updated_at) in checkpoints {
        relay.push(Relay {
            name,
            global_position,
            lag: lag(&mut tx, global_position, None, last_position).await?,
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
        .fetch_optional(&mut *tx)
        .await?;
        let (last_global_position, updated_at, rebuilt_at) = status
            .map_or((0, None, None), |(position, updated, rebuilt)| {
                (position, Some(updated), rebuilt)
            });
        projections.push(Projection {
            name: model.name.to_owned(),
            table: model.table.to_owned(),
            last_global_position,
            lag: lag(
                &mut tx,
                last_global_position,
                Some(model.aggregate_type),
                last_position,
            )
            .await?,
            updated_at,
            rebuilt_at,
        });
    }
    tx.commit().await?;
    let (by_state, needing_attention) = order_saga::store::in_progress(pool).await?;
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
