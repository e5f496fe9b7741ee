//! Appends of several commands in one statement, against a real PostgreSQL.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: a panic is the failure report.

mod common;

use std::sync::Arc;
use std::time::Duration;

use command_bus::batch::AppendBatcher;
use common::migrated_database;
use event_store::repository::PendingAppend;
use event_store::{AppendError, IdempotencyClaim, IdempotencyKey, NewEvent, PgEventRepository};
use sqlx::PgPool;

fn event(aggregate_id: &str, sequence: i64) -> NewEvent {
    NewEvent {
        event_id: uuid::Uuid::now_v7(),
        aggregate_type: "Test".into(),
        aggregate_id: aggregate_id.into(),
        sequence,
        event_type: "Happened".into(),
        event_version: "1.0".into(),
        payload: r#"{"Happened":{}}"#.into(),
        metadata: "{}".into(),
    }
}

fn claim(key: &str) -> IdempotencyClaim {
    IdempotencyClaim {
        key: IdempotencyKey::internal(key),
        fingerprint: format!("fingerprint-{key}"),
        ttl: Duration::from_secs(60),
    }
}

async fn stored(pool: &PgPool) -> Vec<(String, i64)> {
    sqlx::query_as("SELECT aggregate_id, sequence FROM events ORDER BY global_position")
        .fetch_all(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn several_commands_append_in_one_statement_in_their_order_with_their_keys() {
    let (_db, pool) = migrated_database().await;
    let repository = PgEventRepository::new(pool.clone());
    let (a, b) = ([event("a", 1), event("a", 2)], [event("b", 1)]);
    let key = claim("k-a");

    repository
        .append_commands(&[
            PendingAppend {
                events: &a,
                claim: Some(&key),
            },
            PendingAppend {
                events: &b,
                claim: None,
            },
        ])
        .await
        .unwrap();

    assert_eq!(
        stored(&pool).await,
        [("a".into(), 1), ("a".into(), 2), ("b".into(), 1)]
    );
    let remembered = event_store::idempotency::remembered(&pool, "k-a")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (remembered.aggregate_id.as_str(), remembered.version),
        ("a", 2)
    );
}

#[tokio::test]
async fn one_conflicting_command_makes_the_whole_statement_write_nothing() {
    let (_db, pool) = migrated_database().await;
    let repository = PgEventRepository::new(pool.clone());
    repository.append(&[event("a", 1)], None).await.unwrap();
    let (fresh, stale) = ([event("b", 1)], [event("a", 1)]);

    let result = repository
        .append_commands(&[
            PendingAppend {
                events: &fresh,
                claim: None,
            },
            PendingAppend {
                events: &stale,
                claim: None,
            },
        ])
        .await;

    assert!(matches!(result, Err(AppendError::Conflict)));
    assert_eq!(stored(&pool).await, [("a".into(), 1)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_commands_each_get_their_own_answer() {
    let (_db, pool) = migrated_database().await;
    let batcher = AppendBatcher::new(pool.clone(), 1);
    // Two commands race for ("hot", 1); forty others are independent.
    let jobs: Vec<_> = (0..42)
        .map(|n| {
            let batcher = batcher.clone();
            let aggregate = if n < 2 {
                "hot".to_owned()
            } else {
                format!("cold-{n}")
            };
            tokio::spawn(async move { batcher.append(vec![event(&aggregate, 1)], None).await })
        })
        .collect();
    let mut results = Vec::new();
    for job in jobs {
        results.push(job.await.unwrap());
    }

    let conflicts = results
        .iter()
        .filter(|r| matches!(r, Err(AppendError::Conflict)))
        .count();
    assert_eq!(conflicts, 1, "{results:?}");
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 41);
    assert_eq!(stored(&pool).await.len(), 41);
}

#[tokio::test]
async fn a_key_taken_inside_a_batch_is_reported_to_its_command_only() {
    let (_db, pool) = migrated_database().await;
    let batcher = Arc::new(AppendBatcher::new(pool.clone(), 1));
    let jobs: Vec<_> = (0..6)
        .map(|n| {
            let batcher = Arc::clone(&batcher);
            // Commands 0 and 1 claim the same key.
            let key = if n < 2 {
                claim("shared")
            } else {
                claim(&format!("own-{n}"))
            };
            tokio::spawn(async move {
                batcher
                    .append(vec![event(&format!("agg-{n}"), 1)], Some(key))
                    .await
            })
        })
        .collect();
    let mut results = Vec::new();
    for job in jobs {
        results.push(job.await.unwrap());
    }

    let taken = results
        .iter()
        .filter(|r| matches!(r, Err(AppendError::KeyTaken)))
        .count();
    assert_eq!(taken, 1, "{results:?}");
    assert_eq!(stored(&pool).await.len(), 5);
}
