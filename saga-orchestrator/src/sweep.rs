//! The sweep: placements whose saga never started, and shipments and
//! returns that never reached their saga.
//!
//! A saga starts when its order's `OrderPlaced` message arrives, but a
//! message is a wake-up, not the truth, and a wake-up can fail to come: the
//! relay could not publish the event (it went to the dead letters), the
//! topic lost it, somebody moved the group's offsets past it. Every little
//! while the sweep reads the orders' events in the store's global order from
//! where it last stopped, and starts the saga of each placement old enough
//! (`grace`) that its message should have started it, that has none, and
//! that has not ended without one (cancelled first). The saga is stored due
//! and leased to nobody: the resume scan hands it to a free driver, so the
//! sweep never waits for one. The saga's row is the guard: a placement
//! taken in twice starts one saga. A shipment asked for or a return
//! received that its saga has not heard of wakes the saga the same way
//! (`store::wake`, which changes nothing for a saga that heard of it).

use std::time::Duration;

use domain::OrderEvent;
use event_store::reader::{GlobalCheckpoint, GlobalReader, ReadFilter};
use sqlx::PgPool;

use crate::saga::OrderSaga;

/// Order events read at once.
const PAGE: i64 = 1_000;

/// Placements found without a saga, as the sagas to start for them.
#[derive(Debug, Default)]
pub struct Found {
    pub sagas: Vec<OrderSaga>,
    /// Orders with a shipment or a return for their saga, at that version.
    pub wakes: Vec<(String, i64)>,
    /// Where the sweep stands once these are stored.
    pub checkpoint: Option<GlobalCheckpoint>,
}

/// Where the sweep stopped last. The first sweep of a store starts at its
/// end as it stands then: orders placed before the sweep existed are the
/// audit's to report (starting their sagas now could charge a customer
/// for an order long given up), not the sweep's to take in.
pub async fn checkpoint(pool: &PgPool) -> sqlx::Result<GlobalCheckpoint> {
    let read = || {
        sqlx::query_as::<_, (i64, i64)>(
            "SELECT transaction_id, global_position FROM saga_sweep WHERE name = 'placements'",
        )
        .fetch_optional(pool)
    };
    if let Some((transaction_id, global_position)) = read().await? {
        return Ok(GlobalCheckpoint {
            transaction_id,
            global_position,
        });
    }
    sqlx::query(
        "INSERT INTO saga_sweep (name, transaction_id, global_position)
         SELECT 'placements', coalesce(max(transaction_id::text::bigint), 0),
                coalesce(max(global_position), 0)
           FROM (SELECT transaction_id, global_position FROM events
                  WHERE transaction_id < pg_snapshot_xmin(pg_current_snapshot())
                  ORDER BY transaction_id DESC, global_position DESC LIMIT 1) AS last
         ON CONFLICT (name) DO NOTHING",
    )
    .execute(pool)
    .await?;
    // (Another process may have written it first: its checkpoint stands.)
    let (transaction_id, global_position) = read().await?.ok_or(sqlx::Error::RowNotFound)?;
    Ok(GlobalCheckpoint {
        transaction_id,
        global_position,
    })
}

/// Records that the sweep got to `checkpoint` (never moving it back: two
/// processes may sweep at once).
pub async fn save(pool: &PgPool, checkpoint: GlobalCheckpoint) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO saga_sweep (name, transaction_id, global_position)
         VALUES ('placements', $1, $2)
         ON CONFLICT (name) DO UPDATE
            SET transaction_id = EXCLUDED.transaction_id, global_position = EXCLUDED.global_position
          WHERE (saga_sweep.transaction_id, saga_sweep.global_position)
              < (EXCLUDED.transaction_id, EXCLUDED.global_position)",
    )
    .bind(checkpoint.transaction_id)
    .bind(checkpoint.global_position)
    .execute(pool)
    .await?;
    Ok(())
}

/// One page of the orders' events after `after`: the placements older than
/// `grace` (by the database's clock `now`) that have no saga. It stops at
/// the first event younger than that, whose message may still be on its way.
pub async fn look(
    pool: &PgPool,
    after: GlobalCheckpoint,
    grace: Duration,
    now: chrono::DateTime<chrono::Utc>,
) -> anyhow::Result<Found> {
    let filter = ReadFilter {
        aggregate_types: Some(vec![<domain::Order as cqrs_es::Aggregate>::TYPE.to_owned()]),
        ..ReadFilter::default()
    };
    let events = GlobalReader::new(pool.clone())
        .read_raw(after, PAGE, &filter)
        .await?;
    let old_enough = now - chrono::Duration::from_std(grace)?;
    let mut found = Found::default();
    let mut candidates = Vec::new();
    for event in &events {
        if event.recorded_at > old_enough {
            break;
        }
        found.checkpoint = Some(event.checkpoint());
        if event.sequence == 1 {
            candidates.push(event);
        }
        if crate::saga::calls_for_work(&event.event_type) {
            found
                .wakes
                .push((event.aggregate_id.clone(), event.sequence));
        }
    }
    if candidates.is_empty() {
        return Ok(found);
    }
    // An order with a saga needs none; one with an event after its
    // placement ended without one (its customer cancelled it before any
    // saga started: nothing was reserved or charged, and nothing is now).
    let ids: Vec<&str> = candidates.iter().map(|e| e.aggregate_id.as_str()).collect();
    let started: std::collections::HashSet<String> = sqlx::query_scalar(
        "SELECT order_id FROM sagas WHERE order_id = ANY($1)
         UNION
         SELECT aggregate_id FROM events
          WHERE aggregate_type = $2 AND aggregate_id = ANY($1) AND sequence > 1",
    )
    .bind(&ids)
    .bind(<domain::Order as cqrs_es::Aggregate>::TYPE)
    .fetch_all(pool)
    .await?
    .into_iter()
    .collect();
    for event in candidates {
        if started.contains(&event.aggregate_id) {
            continue;
        }
        match event_contract::decode_stored::<OrderEvent>(event.payload.get()) {
            Ok(OrderEvent::OrderPlaced(placed)) => {
                let metadata: serde_json::Value =
                    serde_json::from_str(event.metadata.get()).unwrap_or_default();
                let correlation = metadata
                    .get(event_contract::trace::CORRELATION_ID)
                    .and_then(serde_json::Value::as_str)
                    .unwrap_or_default();
                tracing::warn!(
                    order_id = %event.aggregate_id,
                    placed_at = %event.recorded_at,
                    "an order was placed without its saga starting (its message never came): starting it from the store"
                );
                found
                    .sagas
                    .push(OrderSaga::start(&placed, correlation, event.recorded_at));
            }
            // The first event of every order is its placement; one that is
            // not, or does not decode, the audit reports.
            Ok(_) | Err(_) => {
                tracing::warn!(order_id = %event.aggregate_id, event_type = %event.event_type, "an order's first event is not a placement the saga can read");
            }
        }
    }
    Ok(found)
}
