//! Reading one's own writes, and reading the past.
//!
//! `afterPosition`: a command answers the position of its last event (see
//! `event_store::Position`); a query given it waits until every read model
//! it reads has applied that event: the model's row of that aggregate is at
//! its sequence or later (a model of another aggregate type has nothing to
//! apply). The wait holds no database connection: it looks once, then
//! sleeps until the projections announce a commit touching that aggregate
//! (their change notifications, the ones subscriptions use), looks again,
//! and gives up after the configured bound with an error naming how far
//! behind each model is.
//!
//! `asOf`: an order or a product as it was at a version or an instant,
//! folded from the event store by the same pure fold the projections run.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_graphql::{Context, Error, ErrorExtensions, InputObject, Result};
use chrono::{DateTime, Utc};
use event_store::Position;
use event_store::reader::Until;
use futures::future::BoxFuture;
use identity::Caller;
use sqlx::PgPool;
use tokio::sync::{Semaphore, broadcast};

use super::limits::GraphqlLimits;
use super::slots::Slots;
use super::updates::{Updated, Updates};
use projections::model::orders::OrderSummary;
use projections::model::{ReadModel, fold_all};

/// Error code of an `afterPosition` that is not one this API gave the caller.
pub const BAD_POSITION: &str = "BAD_POSITION";
/// Error code of a wait that ran out before the read models caught up.
pub const NOT_CAUGHT_UP: &str = "NOT_CAUGHT_UP";
/// Error code of a wait refused because too many are waiting.
pub const TOO_MANY_WAITING: &str = "TOO_MANY_WAITING";

/// Events an `asOf` view folds at most: a longer history is refused rather
/// than read whole for one request.
pub const MAX_AS_OF_EVENTS: i64 = 20_000;

/// What an `asOf` argument adds to a query's complexity (the limit is
/// `MAX_COMPLEXITY`): a fold reads a history, not a row.
pub const AS_OF_COST: usize = 500;

/// How long an `asOf` view waits for its turn before it is refused.
const FOLD_TURN_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// `asOf` folds running at once in a process; more wait their turn.
const FOLDS_AT_ONCE: usize = 4;

/// How often a waiting query looks again even without a notification (one
/// may be lost while the listener reconnects).
const LOOK_AGAIN: Duration = Duration::from_millis(500);

/// A read model, as a wait sees it.
#[derive(Clone, Copy)]
pub struct Model {
    name: &'static str,
    aggregate_type: &'static str,
    /// The version of its row of an aggregate (0: no row yet).
    version: for<'a> fn(&'a PgPool, &'a str) -> BoxFuture<'a, sqlx::Result<i64>>,
}

impl Model {
    pub fn of<M: ReadModel>() -> Self {
        Self {
            name: M::NAME,
            aggregate_type: M::AGGREGATE_TYPE,
            version: |pool, id| Box::pin(version_of::<M>(pool, id)),
        }
    }
}

async fn version_of<M: ReadModel>(pool: &PgPool, id: &str) -> sqlx::Result<i64> {
    // The connection goes back to the pool before any waiting.
    let mut connection = pool.acquire().await?;
    let rows = M::load(&mut connection, M::TABLE, &[id]).await?;
    Ok(rows.get(id).map_or(0, M::version))
}

/// Bounds on waiting and folding, shared by every request of a schema.
#[derive(Debug, Clone)]
pub struct Waits {
    bound: Duration,
    permits: Arc<Semaphore>,
    /// Waits per caller, so that one caller cannot take every permit.
    per_caller: Slots<String>,
    per_caller_max: usize,
    folds: Arc<Semaphore>,
}

impl Waits {
    pub fn new(limits: &GraphqlLimits) -> Self {
        Self {
            bound: limits.after_position_wait,
            permits: Arc::new(Semaphore::new(limits.after_position_waiters.max(1))),
            per_caller: Slots::default(),
            per_caller_max: limits.after_position_waiters_per_caller.max(1),
            folds: Arc::new(Semaphore::new(FOLDS_AT_ONCE)),
        }
    }
}

fn bad_position() -> Error {
    Error::new("afterPosition is not a position this API gave you")
        .extend_with(|_, e| e.set("code", BAD_POSITION))
}

/// Waits until every one of `models` has applied `token` (a position a
/// command answered `caller`), within the configured bound.
pub async fn after_position(
    ctx: &Context<'_>,
    token: &str,
    caller: &Caller,
    models: &[Model],
) -> Result<()> {
    let position: Position = token.parse().map_err(|_| bad_position())?;
    let pool = ctx.data::<PgPool>()?;
    authorize(pool, &position, caller).await?;
    let models: Vec<Model> = models
        .iter()
        .filter(|model| model.aggregate_type == position.aggregate_type)
        .copied()
        .collect();
    if models.is_empty() {
        return Ok(());
    }
    let waits = ctx.data::<Waits>()?;
    let Some(_own) = waits
        .per_caller
        .take(caller.customer().as_str().to_owned(), waits.per_caller_max)
    else {
        return Err(Error::new(format!(
            "this caller has {} queries waiting for afterPosition already; try again shortly",
            waits.per_caller_max
        ))
        .extend_with(|_, e| e.set("code", TOO_MANY_WAITING)));
    };
    let Ok(_permit) = waits.permits.try_acquire() else {
        return Err(Error::new(
            "too many queries are waiting for afterPosition; try again shortly",
        )
        .extend_with(|_, e| e.set("code", TOO_MANY_WAITING)));
    };
    // Subscribed before the first look, so no commit falls between the two.
    let mut commits = ctx.data::<Updates>()?.subscribe();
    let deadline = tokio::time::Instant::now() + waits.bound;
    let target = i64::try_from(position.sequence).unwrap_or(i64::MAX);
    let mut last_known: Vec<(&'static str, i64)> =
        models.iter().map(|model| (model.name, target)).collect();
    loop {
        // Each look is bounded too: a slow database does not stretch the wait.
        let looked = tokio::time::timeout_at(
            deadline,
            behind(pool, &position.aggregate_id, target, &models),
        )
        .await;
        match looked {
            Ok(Ok(behind)) if behind.is_empty() => return Ok(()),
            Ok(Ok(behind)) => last_known = behind,
            Ok(Err(error)) => return Err(error),
            Err(_elapsed) => return Err(not_caught_up(waits.bound, &last_known)),
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(not_caught_up(waits.bound, &last_known));
        }
        // Asleep until one of them commits a change to this aggregate, or a
        // while (a notification can be lost while the listener reconnects),
        // or the bound; then a look again.
        let look_again = (tokio::time::Instant::now() + LOOK_AGAIN).min(deadline);
        loop {
            match tokio::time::timeout_at(look_again, commits.recv()).await {
                Err(_elapsed) => break,
                Ok(Ok(Updated { projection, id }))
                    if *id == *position.aggregate_id
                        && last_known.iter().any(|(name, _)| **name == *projection) =>
                {
                    break;
                }
                Ok(Ok(_)) => {}
                Ok(Err(broadcast::error::RecvError::Lagged(_))) => break,
                Ok(Err(broadcast::error::RecvError::Closed)) => {
                    tokio::time::sleep_until(look_again).await;
                    break;
                }
            }
        }
    }
}

/// The models not yet at `target` for `id`, with how many events each lacks.
async fn behind(
    pool: &PgPool,
    id: &str,
    target: i64,
    models: &[Model],
) -> Result<Vec<(&'static str, i64)>> {
    let mut behind = Vec::new();
    for model in models {
        let version = (model.version)(pool, id).await?;
        if version < target {
            behind.push((model.name, target - version));
        }
    }
    Ok(behind)
}

fn not_caught_up(bound: Duration, behind: &[(&'static str, i64)]) -> Error {
    let lag: Vec<String> = behind
        .iter()
        .map(|(name, events)| format!("{name} lacks {events} event(s) of it"))
        .collect();
    let lags: HashMap<&str, i64> = behind.iter().copied().collect();
    Error::new(format!(
        "the read models did not reach afterPosition within {} ms: {}",
        bound.as_millis(),
        lag.join(", ")
    ))
    .extend_with(move |_, e| {
        e.set("code", NOT_CAUGHT_UP);
        e.set(
            "lag",
            async_graphql::Value::from_json(serde_json::json!(lags)).unwrap_or_default(),
        );
    })
}

/// A position names an event that exists (so a wait can end), of something
/// the caller may read: a product (public), an order of theirs (its events
/// say whose it is), anything for `admin`. Anything else is refused as an
/// unknown position would be, so that a position cannot tell whether
/// another customer's order exists.
async fn authorize(pool: &PgPool, position: &Position, caller: &Caller) -> Result<()> {
    let sequence = i64::try_from(position.sequence).map_err(|_| bad_position())?;
    let until = Until::Sequence(sequence);
    let (aggregate_type, id) = (
        position.aggregate_type.as_str(),
        position.aggregate_id.as_str(),
    );
    let last = event_store::reader::last_sequence_until(pool, aggregate_type, id, until).await?;
    let readable = match aggregate_type {
        _ if last != sequence => false,
        _ if caller.is_admin() => true,
        "Product" => true,
        // Whose order it is, its first event says: one event, read without
        // waiting behind the asOf folds.
        "Order" => fold::<OrderSummary>(pool, aggregate_type, id, Until::Sequence(1))
            .await?
            .is_some_and(|order| caller.may_see(&order.customer_id)),
        _ => false,
    };
    if readable {
        Ok(())
    } else {
        Err(bad_position())
    }
}

/// A point in an aggregate's history: `{version: 3}` or
/// `{at: "2026-12-05T10:00:00Z"}`, exactly one of them.
#[derive(Debug, Clone, InputObject)]
pub struct AsOf {
    /// The aggregate's state after its event of this sequence (0: before
    /// it existed; a version beyond the last is the last).
    pub version: Option<i32>,
    /// The aggregate's state after the events recorded at or before this
    /// instant.
    pub at: Option<DateTime<Utc>>,
}

impl AsOf {
    fn until(&self) -> Result<Until> {
        match (self.version, self.at) {
            (Some(version), None) if version >= 0 => Ok(Until::Sequence(i64::from(version))),
            (Some(_), None) => Err(Error::new("asOf.version must be 0 or more")),
            (None, Some(at)) => Ok(Until::Recorded(at)),
            _ => Err(Error::new("asOf takes exactly one of version and at")),
        }
    }
}

/// The row `M` would hold for aggregate `id` at `as_of`, folded from the
/// event store; `None` before the aggregate existed.
pub async fn as_of<M: ReadModel>(
    ctx: &Context<'_>,
    id: &str,
    as_of: &AsOf,
) -> Result<Option<M::Row>> {
    let until = as_of.until()?;
    // The folds of a process take turns, reading included (an instant is
    // found among all of an aggregate's events); a request that waits too
    // long for its turn is told so.
    let _turn = tokio::time::timeout(
        FOLD_TURN_WAIT,
        ctx.data::<Waits>()?.folds.clone().acquire_owned(),
    )
    .await
    .map_err(|_| Error::new("too many asOf views are being folded; retry in a moment"))??;
    fold::<M>(ctx.data::<PgPool>()?, M::AGGREGATE_TYPE, id, until).await
}

/// The row `M` would hold for aggregate `id` up to `until`, folded from the
/// event store. The caller takes a turn if the history may be long.
async fn fold<M: ReadModel>(
    pool: &PgPool,
    aggregate_type: &str,
    id: &str,
    until: Until,
) -> Result<Option<M::Row>> {
    // A history too long is refused from the key's index, before any event
    // is read.
    let last = event_store::reader::last_sequence_until(pool, aggregate_type, id, until).await?;
    if last > MAX_AS_OF_EVENTS {
        return Err(Error::new(format!(
            "asOf folds at most {MAX_AS_OF_EVENTS} events, and this history is longer up to that point"
        )));
    }
    if last == 0 {
        return Ok(None);
    }
    let events = event_store::reader::stream_until::<String>(
        pool,
        aggregate_type,
        id,
        until,
        MAX_AS_OF_EVENTS + 1,
    )
    .await?;
    if events.len() as i64 > MAX_AS_OF_EVENTS {
        return Err(Error::new(format!(
            "asOf folds at most {MAX_AS_OF_EVENTS} events, and this history is longer up to that point"
        )));
    }
    let mut rows = HashMap::new();
    let folded = fold_all::<M>(&mut rows, events.iter());
    if let Some((_, error)) = folded.poisoned.first() {
        return Err(Error::new(format!(
            "the stored events cannot be folded: {error}"
        )));
    }
    Ok(rows.remove(id))
}
