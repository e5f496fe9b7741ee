//! Rebuilding a read model from the event store without downtime.
//!
//! 1. Fold every event of the model's aggregate, in global order, into rows in
//!    memory (the same fold the live worker runs), and write them into a fresh
//!    table `<table>_rebuild`. Queries keep reading the live table meanwhile.
//! 2. In one transaction that holds the projection's lock alone (live workers
//!    take it shared for each batch, so they pause): fold the events that
//!    committed since, swap the fresh table in by renaming, drop the old one.
//! 3. The live worker carries on from its Kafka offsets; whatever it receives
//!    that the rebuild already applied is at or below the rows' versions and
//!    changes nothing, so nothing is missed or doubled.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use event_store::{Envelope, GlobalCheckpoint, GlobalReader, ReadFilter};
use indicatif::ProgressBar;
use sqlx::{Acquire, PgPool};

use crate::model::{ReadModel, fold_all};
use crate::worker::{announce, lock_name};

/// Events read per round and rows written per statement.
const CHUNK: usize = 10_000;

/// What a rebuild did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RebuildReport {
    pub projection: &'static str,
    /// Events folded, the ones that arrived during the swap included.
    pub events: u64,
    /// Rows in the rebuilt table.
    pub rows: usize,
    /// Events the fold refused (the live worker sends those to the DLQ).
    pub refused: usize,
    pub elapsed: Duration,
}

/// Rebuilds one read model; `progress` shows events folded against the total.
pub async fn rebuild<M: ReadModel>(
    pool: &PgPool,
    progress: &ProgressBar,
) -> anyhow::Result<RebuildReport> {
    rebuild_then_swap::<M>(pool, progress, async {}).await
}

/// Like [`rebuild`], awaiting `before_swap` between writing the fresh table
/// and swapping it in: the moment when the live workers still write to the
/// old table. Tests use it to make that moment as long as they need.
pub async fn rebuild_then_swap<M: ReadModel>(
    pool: &PgPool,
    progress: &ProgressBar,
    before_swap: impl std::future::Future<Output = ()>,
) -> anyhow::Result<RebuildReport> {
    let started = Instant::now();
    let fresh = format!("{}_rebuild", M::TABLE);
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM events WHERE aggregate_type = $1")
        .bind(M::AGGREGATE_TYPE)
        .fetch_one(pool)
        .await?;
    progress.set_length(u64::try_from(total).unwrap_or(0));
    progress.set_message(M::NAME);
    sqlx::query(&format!("DROP TABLE IF EXISTS {fresh}"))
        .execute(pool)
        .await?;
    sqlx::query(&format!(
        "CREATE TABLE {fresh} (LIKE {} INCLUDING ALL)",
        M::TABLE
    ))
    .execute(pool)
    .await?;

    // 1. Everything committed so far, folded in memory, then written.
    let reader = GlobalReader::new(pool.clone());
    let filter = ReadFilter {
        min_position: None,
        aggregate_types: Some(vec![M::AGGREGATE_TYPE.to_owned()]),
    };
    let mut rows: HashMap<String, M::Row> = HashMap::new();
    let mut checkpoint = GlobalCheckpoint::default();
    let mut events = 0u64;
    let mut refused = 0usize;
    loop {
        let batch = read(&reader, &mut checkpoint, &filter).await?;
        if batch.is_empty() {
            break;
        }
        refused += fold_all::<M>(&mut rows, &batch).poisoned.len();
        events += batch.len() as u64;
        progress.inc(batch.len() as u64);
    }
    let mut connection = pool.acquire().await?;
    let all: Vec<M::Row> = rows.values().cloned().collect();
    for chunk in all.chunks(CHUNK) {
        M::store(&mut connection, &fresh, chunk).await?;
    }

    before_swap.await;

    // 2. The swap, with the live workers paused.
    let mut tx = connection.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
        .bind(lock_name(M::NAME))
        .execute(&mut *tx)
        .await?;
    let mut changed = Vec::new();
    let mut last_position = None;
    loop {
        let batch = read(&reader, &mut checkpoint, &filter).await?;
        if batch.is_empty() {
            break;
        }
        let fold = fold_all::<M>(&mut rows, &batch);
        refused += fold.poisoned.len();
        changed.extend(fold.changed);
        events += batch.len() as u64;
        last_position = batch.last().map(|e| e.global_position);
        progress.inc(batch.len() as u64);
    }
    changed.sort_unstable();
    changed.dedup();
    let late: Vec<M::Row> = changed
        .iter()
        .filter_map(|id| rows.get(id).cloned())
        .collect();
    for chunk in late.chunks(CHUNK) {
        M::store(&mut tx, &fresh, chunk).await?;
    }
    swap_tables(&mut tx, M::TABLE).await?;
    sqlx::query(
        "INSERT INTO projection_status (projection, last_global_position, rebuilt_at)
         VALUES ($1, $2, now())
         ON CONFLICT (projection) DO UPDATE SET
            last_global_position = greatest(projection_status.last_global_position, $2),
            rebuilt_at = now(), updated_at = now()",
    )
    .bind(M::NAME)
    .bind(
        last_position
            .or(Some(checkpoint.global_position))
            .unwrap_or(0),
    )
    .execute(&mut *tx)
    .await?;
    announce(&mut tx, M::NAME, &changed).await?;
    tx.commit().await?;
    progress.finish();
    Ok(RebuildReport {
        projection: M::NAME,
        events,
        rows: rows.len(),
        refused,
        elapsed: started.elapsed(),
    })
}

/// The next events after `checkpoint` that `filter` lets through, as envelopes.
async fn read(
    reader: &GlobalReader,
    checkpoint: &mut GlobalCheckpoint,
    filter: &ReadFilter,
) -> sqlx::Result<Vec<Envelope>> {
    let batch = reader
        .read_filtered(*checkpoint, CHUNK as i64, filter)
        .await?;
    if let Some(last) = batch.last() {
        *checkpoint = last.checkpoint();
    }
    Ok(batch.iter().map(Envelope::from).collect())
}

/// Puts `<table>_rebuild` in the place of `<table>` and gives its indexes the
/// live table's naming, so that the next rebuild starts from the same names.
async fn swap_tables(tx: &mut sqlx::PgConnection, table: &str) -> sqlx::Result<()> {
    let fresh = format!("{table}_rebuild");
    let retired = format!("{table}_retired");
    sqlx::query(&format!("ALTER TABLE {table} RENAME TO {retired}"))
        .execute(&mut *tx)
        .await?;
    sqlx::query(&format!("ALTER TABLE {fresh} RENAME TO {table}"))
        .execute(&mut *tx)
        .await?;
    sqlx::query(&format!("DROP TABLE {retired}"))
        .execute(&mut *tx)
        .await?;
    let indexes: Vec<String> = sqlx::query_scalar(
        "SELECT indexname FROM pg_indexes
          WHERE schemaname = current_schema() AND tablename = $1 AND indexname LIKE $2",
    )
    .bind(table)
    .bind(format!("{fresh}%"))
    .fetch_all(&mut *tx)
    .await?;
    for index in indexes {
        let renamed = index.replacen(&fresh, table, 1);
        sqlx::query(&format!("ALTER INDEX {index} RENAME TO {renamed}"))
            .execute(&mut *tx)
            .await?;
    }
    Ok(())
}
