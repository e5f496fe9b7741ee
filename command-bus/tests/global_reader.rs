//! The global reader against a real PostgreSQL: transactions that commit out of
//! order never make it skip an event or return one twice.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: a panic is the failure report.
mod common;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::migrated_database;
use event_store::{GlobalCheckpoint, GlobalReader, RecordedEvent};
use sqlx::{Acquire, PgPool, Postgres, Transaction};

/// Inserts one event the way the append does (positions and transaction ids
/// from the column defaults) inside an open transaction.
async fn insert_event(tx: &mut Transaction<'_, Postgres>, aggregate_id: &str, sequence: i64) {
    sqlx::query(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
         VALUES ('Test', $1, $2, 'Happened', '1.0', '{\"Happened\":{}}', '{}')",
    )
    .bind(aggregate_id)
    .bind(sequence)
    .execute(&mut **tx)
    .await
    .unwrap();
}

/// Reads until `expected` events came or ten seconds passed. Transactions of
/// other tests on the same server hold the reader back for a moment too (the
/// horizon is server-wide), so one pass may legitimately come back short.
async fn read_until(
    reader: &GlobalReader,
    from: &mut GlobalCheckpoint,
    expected: usize,
) -> Vec<RecordedEvent> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut all = Vec::new();
    while all.len() < expected && tokio::time::Instant::now() < deadline {
        all.extend(drain(reader, from, 3).await);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    all
}

/// Reads everything there is now, batch by batch, from `from`.
async fn drain(
    reader: &GlobalReader,
    from: &mut GlobalCheckpoint,
    batch: i64,
) -> Vec<RecordedEvent> {
    let mut all = Vec::new();
    loop {
        let events = reader.read_batch(*from, batch).await.unwrap();
        if events.is_empty() {
            return all;
        }
        *from = events.last().unwrap().checkpoint();
        all.extend(events);
    }
}

#[tokio::test]
async fn an_event_committed_late_with_a_lower_position_is_not_skipped() {
    let (_db, pool) = migrated_database().await;
    let reader = GlobalReader::new(pool.clone());
    let mut checkpoint = GlobalCheckpoint::default();

    // T1 takes the lower position and stays open; T2 takes a higher one and commits.
    let mut t1 = pool.begin().await.unwrap();
    insert_event(&mut t1, "a", 1).await;
    let mut t2 = pool.begin().await.unwrap();
    insert_event(&mut t2, "b", 1).await;
    t2.commit().await.unwrap();

    // T2 is committed, but reading it now would move the reader past T1's
    // position; the reader waits while T1 may still commit.
    assert!(drain(&reader, &mut checkpoint, 10).await.is_empty());

    t1.commit().await.unwrap();
    let events = read_until(&reader, &mut checkpoint, 2).await;
    let ids: Vec<&str> = events.iter().map(|e| e.aggregate_id.as_str()).collect();
    assert_eq!(ids, ["a", "b"]);
    assert!(drain(&reader, &mut checkpoint, 10).await.is_empty());
}

#[tokio::test]
async fn a_rolled_back_transaction_leaves_no_gap_behind() {
    let (_db, pool) = migrated_database().await;
    let reader = GlobalReader::new(pool.clone());
    let mut checkpoint = GlobalCheckpoint::default();

    let mut aborted = pool.begin().await.unwrap();
    insert_event(&mut aborted, "gone", 1).await;
    let mut kept = pool.begin().await.unwrap();
    insert_event(&mut kept, "kept", 1).await;
    kept.commit().await.unwrap();
    aborted.rollback().await.unwrap();

    let events = read_until(&reader, &mut checkpoint, 1).await;
    let ids: Vec<&str> = events.iter().map(|e| e.aggregate_id.as_str()).collect();
    assert_eq!(ids, ["kept"]);
}

#[tokio::test]
async fn batches_split_inside_one_transaction_continue_where_they_stopped() {
    let (_db, pool) = migrated_database().await;
    let reader = GlobalReader::new(pool.clone());
    let mut tx = pool.begin().await.unwrap();
    for sequence in 1..=7 {
        insert_event(&mut tx, "many", sequence).await;
    }
    tx.commit().await.unwrap();

    let mut checkpoint = GlobalCheckpoint::default();
    let events = read_until(&reader, &mut checkpoint, 7).await;
    let sequences: Vec<i64> = events.iter().map(|e| e.sequence).collect();
    assert_eq!(sequences, (1..=7).collect::<Vec<_>>());
}

/// Many writers commit transactions of random sizes after random pauses,
/// so their positions become visible out of order, while a reader tails the
/// store in small batches. The reader must see every committed event exactly
/// once and each aggregate's events in sequence order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tailing_reader_sees_every_event_once_under_concurrent_out_of_order_commits() {
    let (_db, pool) = migrated_database().await;
    let writers_done = Arc::new(AtomicBool::new(false));

    let reader = GlobalReader::new(pool.clone());
    let reader_task = {
        let reader = reader.clone();
        let writers_done = Arc::clone(&writers_done);
        tokio::spawn(async move {
            let mut checkpoint = GlobalCheckpoint::default();
            let mut seen = Vec::new();
            while !writers_done.load(Ordering::SeqCst) {
                seen.extend(drain(&reader, &mut checkpoint, 7).await);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            (seen, checkpoint)
        })
    };

    let writers: Vec<_> = (0..12)
        .map(|writer| {
            let pool = pool.clone();
            tokio::spawn(async move { write_randomly(&pool, writer).await })
        })
        .collect();
    let mut committed = 0;
    for writer in writers {
        committed += writer.await.unwrap();
    }
    writers_done.store(true, Ordering::SeqCst);
    let (mut seen, mut checkpoint) = reader_task.await.unwrap();
    // Whatever the tail had not reached yet when the writers finished.
    let missing = committed.saturating_sub(seen.len());
    seen.extend(read_until(&reader, &mut checkpoint, missing).await);
    // Give a wrongly repeated event the chance to show up.
    tokio::time::sleep(Duration::from_millis(50)).await;
    seen.extend(drain(&reader, &mut checkpoint, 7).await);

    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(stored as usize, committed);
    assert_eq!(seen.len(), committed, "every committed event is read");
    let unique: HashSet<_> = seen.iter().map(|e| e.event_id).collect();
    assert_eq!(unique.len(), seen.len(), "no event is read twice");
    let mut last_sequence: HashMap<&str, i64> = HashMap::new();
    for event in &seen {
        let previous = last_sequence.insert(&event.aggregate_id, event.sequence);
        assert_eq!(
            previous.unwrap_or(0) + 1,
            event.sequence,
            "{} out of order",
            event.aggregate_id
        );
    }
    let checkpoints: Vec<_> = seen.iter().map(RecordedEvent::checkpoint).collect();
    assert!(checkpoints.windows(2).all(|w| w[0] < w[1]));
}

/// One writer: 40 transactions of 1-4 events each on its own aggregate, some
/// rolled back, each held open for a random moment before it ends.
async fn write_randomly(pool: &PgPool, writer: usize) -> usize {
    let aggregate = format!("w{writer}");
    let mut next_sequence = 1;
    let mut committed = 0;
    let mut connection = pool.acquire().await.unwrap();
    for _ in 0..40 {
        let mut tx = connection.begin().await.unwrap();
        let count = fastrand::i64(1..=4);
        for offset in 0..count {
            insert_event(&mut tx, &aggregate, next_sequence + offset).await;
        }
        tokio::time::sleep(Duration::from_micros(fastrand::u64(0..5000))).await;
        if fastrand::u8(0..10) == 0 {
            tx.rollback().await.unwrap();
        } else {
            tx.commit().await.unwrap();
            next_sequence += count;
            committed += count as usize;
        }
    }
    committed
}
