//! `PgEventRepository` as a cqrs-es repository: snapshots and replay streams,
//! against a real PostgreSQL.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: a panic is the failure report.

mod common;

use command_bus::{CommandBus, Expect};
use common::{context, create_product, migrated_database};
use cqrs_es::persist::{PersistedEventRepository, PersistenceError, SerializedEvent};
use domain::{Product, ProductCommand};
use event_store::PgEventRepository;
use serde_json::json;

fn serialized(aggregate_id: &str, sequence: usize) -> SerializedEvent {
    SerializedEvent {
        aggregate_id: aggregate_id.into(),
        sequence,
        aggregate_type: "Product".into(),
        event_type: "StockAdded".into(),
        event_version: "1.0".into(),
        payload: json!({"StockAdded": {"quantity": 1}}),
        metadata: json!({}),
    }
}

#[tokio::test]
async fn snapshots_are_written_with_their_events_and_replaced_in_turn() {
    let (_db, pool) = migrated_database().await;
    let repository = PgEventRepository::new(pool.clone());

    repository
        .persist::<Product>(
            &[serialized("MUG", 1)],
            Some(("MUG".into(), json!({"v": 1}), 1)),
        )
        .await
        .unwrap();
    let first = repository
        .get_snapshot::<Product>("MUG")
        .await
        .unwrap()
        .unwrap();
    assert_eq!((first.current_sequence, first.current_snapshot), (1, 1));
    assert_eq!(first.aggregate, json!({"v": 1}));

    repository
        .persist::<Product>(
            &[serialized("MUG", 2)],
            Some(("MUG".into(), json!({"v": 2}), 2)),
        )
        .await
        .unwrap();
    let second = repository
        .get_snapshot::<Product>("MUG")
        .await
        .unwrap()
        .unwrap();
    assert_eq!((second.current_sequence, second.current_snapshot), (2, 2));

    // A writer that read snapshot 1 loses to the one that wrote snapshot 2,
    // and its events are not kept either.
    let stale = repository
        .persist::<Product>(
            &[serialized("MUG", 3)],
            Some(("MUG".into(), json!({"v": 9}), 2)),
        )
        .await;
    assert!(matches!(stale, Err(PersistenceError::OptimisticLockError)));
    assert_eq!(
        repository.get_events::<Product>("MUG").await.unwrap().len(),
        2
    );
    assert!(
        repository
            .get_snapshot::<Product>("TEA")
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn replay_streams_return_events_in_commit_order() {
    let (_db, pool) = migrated_database().await;
    let bus = CommandBus::new(pool.clone());
    create_product(&bus, "MUG", 1, "EUR").await;
    create_product(&bus, "TEA", 1, "EUR").await;
    bus.execute::<Product>(
        "MUG",
        ProductCommand::AddStock { quantity: 3 },
        &context("r"),
        Expect::Existing,
    )
    .await
    .unwrap();
    let repository = PgEventRepository::new(pool.clone());

    let mut all = repository.stream_all_events::<Product>().await.unwrap();
    let mut seen = Vec::new();
    while let Some(event) = all.next::<Product>(&[]).await {
        let event = event.unwrap();
        seen.push((event.aggregate_id, event.sequence));
    }
    assert_eq!(
        seen,
        [("MUG".into(), 1), ("TEA".into(), 1), ("MUG".into(), 2)]
    );

    let mut one = repository.stream_events::<Product>("TEA").await.unwrap();
    let mut count = 0;
    while let Some(event) = one.next::<Product>(&[]).await {
        assert_eq!(event.unwrap().aggregate_id, "TEA");
        count += 1;
    }
    assert_eq!(count, 1);
}

#[tokio::test]
async fn a_database_error_during_a_replay_reaches_the_reader() {
    let (_db, pool) = migrated_database().await;
    let repository = PgEventRepository::new(pool.clone());
    pool.close().await;

    let mut stream = repository.stream_all_events::<Product>().await.unwrap();

    assert!(matches!(stream.next::<Product>(&[]).await, Some(Err(_))));
    assert!(stream.next::<Product>(&[]).await.is_none());
}
