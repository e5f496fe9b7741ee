//! Snapshots against a real PostgreSQL: written every N events from the
//! state the bus holds, read back with the events after them, and passed
//! over when they no longer read as the aggregate.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: a panic is the failure report.
mod common;

use std::time::{Duration, Instant};

use command_bus::{CommandBus, Expect};
use common::{context, create_product, migrated_database};
use domain::values::OrderId;
use domain::{Product, ProductCommand};
use sqlx::PgPool;

async fn run(bus: &CommandBus, command: ProductCommand) {
    bus.execute::<Product>("MUG", command, &context("snap"), Expect::Existing)
        .await
        .unwrap();
}

/// A history with stock, reservations, commits and a release: 1 + 3 + 3 * 3 events.
async fn history(bus: &CommandBus) {
    create_product(bus, "MUG", 1250, "EUR").await;
    for quantity in [5, 7, 9] {
        run(bus, ProductCommand::AddStock { quantity }).await;
    }
    for n in 1..=3u128 {
        let order_id = OrderId::new(uuid::Uuid::from_u128(n));
        run(
            bus,
            ProductCommand::ReserveStock {
                order_id,
                quantity: 2,
            },
        )
        .await;
        run(bus, ProductCommand::CommitReservation { order_id }).await;
        let again = OrderId::new(uuid::Uuid::from_u128(n + 100));
        run(
            bus,
            ProductCommand::ReserveStock {
                order_id: again,
                quantity: 1,
            },
        )
        .await;
    }
    run(
        bus,
        ProductCommand::ReleaseReservation {
            order_id: OrderId::new(uuid::Uuid::from_u128(101)),
        },
    )
    .await;
}

/// Waits (bounded) until the stored snapshot of MUG is at `sequence`;
/// snapshots are written in the background after the append commits.
async fn snapshot_at(pool: &PgPool, sequence: i64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let stored: Vec<i64> = sqlx::query_scalar(
            "SELECT last_sequence FROM snapshots WHERE aggregate_type = 'Product' AND aggregate_id = 'MUG'",
        )
        .fetch_all(pool)
        .await
        .unwrap();
        if stored == [sequence] {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "snapshots at {stored:?}, not [{sequence}]"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// MUG as a fresh bus (nothing kept in memory) with snapshots every
/// `every` events loads it; 0 folds the events alone.
async fn load(pool: &PgPool, every: u64) -> (Product, u64) {
    CommandBus::new(pool.clone())
        .with_snapshots(every)
        .load::<Product>("MUG")
        .await
        .unwrap()
}

/// A database holding [`history`] written with snapshots every four events:
/// 14 events, snapshots at 4, 8 and 12, one row kept, the newest.
async fn snapshotted_history() -> (platform::testing::TestDatabase, PgPool, CommandBus) {
    let (db, pool) = migrated_database().await;
    let bus = CommandBus::new(pool.clone()).with_snapshots(4);
    history(&bus).await;
    snapshot_at(&pool, 12).await;
    (db, pool, bus)
}

#[tokio::test]
async fn a_load_from_the_newest_snapshot_equals_the_fold_of_every_event() {
    let (_db, pool, _bus) = snapshotted_history().await;
    let (whole, version) = load(&pool, 0).await;
    assert_eq!(version, 14);
    assert_eq!(load(&pool, 4).await, (whole.clone(), 14));
    assert_eq!((whole.on_hand(), whole.reserved()), (21 - 6, 2));

    // The load really starts from the snapshot: a snapshot saying otherwise
    // (never written by the bus) shows through.
    sqlx::query(
        "UPDATE snapshots SET payload = jsonb_set(payload::jsonb, '{on_hand}', '1000')::json",
    )
    .execute(&pool)
    .await
    .unwrap();
    let (doctored, _) = load(&pool, 4).await;
    assert_eq!(doctored.on_hand(), 1000);
}

#[tokio::test]
async fn a_snapshot_that_no_longer_reads_as_the_aggregate_is_passed_over() {
    let (_db, pool, bus) = snapshotted_history().await;
    sqlx::query("UPDATE snapshots SET payload = '{\"shape\": \"of another version\"}'")
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(load(&pool, 4).await, load(&pool, 0).await);
    // The next command past a multiple of four replaces it.
    run(&bus, ProductCommand::AddStock { quantity: 1 }).await;
    run(&bus, ProductCommand::AddStock { quantity: 1 }).await;
    snapshot_at(&pool, 16).await;
    assert_eq!(load(&pool, 4).await.0.on_hand(), 21 - 6 + 2);
}

#[tokio::test]
async fn snapshots_off_writes_none_and_an_older_snapshot_never_replaces_a_newer_one() {
    let (_db, pool) = migrated_database().await;
    let off = CommandBus::new(pool.clone()).with_snapshots(0);
    history(&off).await;
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM snapshots")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(count, 0);

    let repository = off.repository();
    let (state, _) = off.load::<Product>("MUG").await.unwrap();
    let state = serde_json::to_string(&state).unwrap();
    repository
        .write_snapshot("Product", "MUG", 14, &state)
        .await
        .unwrap();
    repository
        .write_snapshot("Product", "MUG", 9, "{}")
        .await
        .unwrap();
    snapshot_at(&pool, 14).await;
}

#[tokio::test]
async fn cqrs_es_reads_the_newest_snapshot_when_two_rows_were_left() {
    // Two writers past different multiples at once can each insert a row
    // (neither sees the other's); every reader must take the newer.
    use cqrs_es::persist::PersistedEventRepository;
    let (_db, pool, bus) = snapshotted_history().await;
    let (state, _) = load(&pool, 0).await;
    sqlx::query(
        "INSERT INTO snapshots (aggregate_type, aggregate_id, last_sequence, current_snapshot, payload)
         VALUES ('Product', 'MUG', 14, 9, $1::json), ('Product', 'MUG', 2, 10, '{}')",
    )
    .bind(serde_json::to_string(&state).unwrap())
    .execute(&pool)
    .await
    .unwrap();
    let newest = bus
        .repository()
        .get_snapshot::<Product>("MUG")
        .await
        .unwrap()
        .expect("a snapshot");
    assert_eq!(newest.current_sequence, 14);
    assert_eq!(load(&pool, 4).await, (state, 14));
}
