//! Rebuilding a read model from the event store without downtime.
//!
//! 1. Fold every event of the model's aggregate, in global order, into rows in
//!    memory (the same fold the live worker runs), and write them into a fresh
//!    table `<table>_rebuild` that already has the live table's keys and
//!    indexes, with `COPY`, a few thousand rows per transaction. Queries keep
//!    reading the live table meanwhile.
//! 2. In one transaction that holds the projection's lock alone (live workers
//!    take it shared for each batch, so they pause): fold the events that
//!    committed since, swap the fresh table in by renaming, drop the old one.
//! 3. The live worker carries on from its Kafka offsets; whatever it receives
//!    that the rebuild already applied is at or below the rows' versions and
//!    changes nothing, so nothing is missed or doubled.
//!
//! No transaction of a rebuild stays open long: one that has written holds
//! back the gap-safe reader (see `event_store::reader`), so a long `COPY` or
//! an index built over the whole table would stop the relay publishing for
//! as long as it runs. Hence the indexes come before the rows, and the rows
//! go in chunks.

use std::collections::HashMap;
use std::future::Future;
use std::time::{Duration, Instant};

use event_store::{GlobalCheckpoint, GlobalReader, ReadFilter, RecordedEvent};
use futures::TryStreamExt;
use indicatif::ProgressBar;
use sqlx::{Acquire, PgPool};

use crate::model::copy::copy_rows;
use crate::model::{ReadModel, fold_all, fold_untracked};
use crate::worker::{announce, lock_name};

/// Events folded per round, and late rows written per statement.
const CHUNK: usize = 10_000;

/// Rows written per `COPY`, each its own transaction.
const COPY_ROWS: usize = 5_000;

/// Connections writing the fresh table at once.
const WRITERS: usize = 2;

/// Marks the fresh table's keys and indexes until the swap names them.
const SUFFIX: &str = "_rebuild";

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
    /// How the rebuilt table differs from the live one, when asked for
    /// ([`Mode::Diff`]); nothing was swapped then.
    pub diff: Option<Diff>,
}

/// What a rebuild does once the fresh table is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Swap it in.
    Swap,
    /// Compare it with the live table and leave both as they are
    /// (`<table>_rebuild` stays for inspection until the next rebuild).
    Diff,
}

/// How a freshly folded table differs from the live one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Diff {
    /// Rows at the same version in both, with different contents: what a
    /// change of the fold changes.
    pub differing: usize,
    /// Rows the live table lacks.
    pub missing_live: usize,
    /// Live rows with no events behind them.
    pub only_live: i64,
    /// Rows at another version in the live table (its worker is behind, or
    /// went on after the rebuild read the events): not compared.
    pub other_version: usize,
    /// The first differing rows, live then rebuilt.
    pub examples: Vec<String>,
}

/// Examples a [`Diff`] keeps.
const EXAMPLES: usize = 5;

/// Rebuilds one read model; `progress` shows events folded against the total.
pub async fn rebuild<M: ReadModel>(
    pool: &PgPool,
    progress: &ProgressBar,
) -> anyhow::Result<RebuildReport> {
    rebuild_as::<M>(pool, progress, Mode::Swap).await
}

/// Rebuilds one read model into its fresh table, then does what `mode` says.
pub async fn rebuild_as<M: ReadModel>(
    pool: &PgPool,
    progress: &ProgressBar,
    mode: Mode,
) -> anyhow::Result<RebuildReport> {
    rebuild_pausing_as::<M>(
        pool,
        progress,
        Pauses {
            while_writing: async {},
            before_swap: async {},
        },
        mode,
    )
    .await
}

/// Moments at which [`rebuild_pausing`] waits: tests use them to make those
/// moments as long as they need.
#[derive(Debug)]
pub struct Pauses<W, S> {
    /// After the first rows went into the fresh table, before the others.
    pub while_writing: W,
    /// Between writing the fresh table and swapping it in: the live workers
    /// still write to the old table.
    pub before_swap: S,
}

/// Like [`rebuild`], awaiting each of `pauses` at its moment.
pub async fn rebuild_pausing<M: ReadModel>(
    pool: &PgPool,
    progress: &ProgressBar,
    pauses: Pauses<impl Future<Output = ()>, impl Future<Output = ()>>,
) -> anyhow::Result<RebuildReport> {
    rebuild_pausing_as::<M>(pool, progress, pauses, Mode::Swap).await
}

async fn rebuild_pausing_as<M: ReadModel>(
    pool: &PgPool,
    progress: &ProgressBar,
    pauses: Pauses<impl Future<Output = ()>, impl Future<Output = ()>>,
    mode: Mode,
) -> anyhow::Result<RebuildReport> {
    let started = Instant::now();
    let fresh = format!("{}{SUFFIX}", M::TABLE);
    // One rebuild of a model at a time: two would share the fresh table. The
    // lock lives as long as this connection, which is closed (not returned
    // to the pool) when the rebuild ends, however it ends; the swap runs on
    // it.
    let mut alone = pool.acquire().await?.detach();
    let took: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtextextended($1, 0))")
        .bind(format!("rebuild:{}", M::NAME))
        .fetch_one(&mut alone)
        .await?;
    anyhow::ensure!(took, "a rebuild of {} is already running", M::NAME);
    // Counting the aggregates sizes the rows' map once, rather than moving
    // every row each time it grows.
    let (total, aggregates): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE sequence = 1) FROM events
          WHERE aggregate_type = $1",
    )
    .bind(M::AGGREGATE_TYPE)
    .fetch_one(pool)
    .await?;
    progress.set_length(u64::try_from(total).unwrap_or(0));
    progress.set_message(M::NAME);
    sqlx::query(&format!("DROP TABLE IF EXISTS {fresh}"))
        .execute(pool)
        .await?;
    sqlx::query(&format!(
        "CREATE TABLE {fresh} (LIKE {} INCLUDING ALL EXCLUDING INDEXES)",
        M::TABLE
    ))
    .execute(pool)
    .await?;
    index_fresh(pool, M::TABLE, &fresh).await?;

    // 1. Everything committed so far, folded in memory, then written. A task
    //    reads ahead while this one folds, so PostgreSQL and the fold overlap.
    let filter = ReadFilter {
        min_position: None,
        aggregate_types: Some(vec![M::AGGREGATE_TYPE.to_owned()]),
    };
    let (batches, mut incoming) = tokio::sync::mpsc::channel(2);
    let read_ahead = tokio::spawn({
        let reader = GlobalReader::new(pool.clone());
        let filter = filter.clone();
        async move {
            let mut checkpoint = GlobalCheckpoint::default();
            let mut events = reader
                .stream_text(checkpoint, &filter)
                .try_chunks(CHUNK)
                .map_err(|error| error.1);
            while let Some(batch) = events.try_next().await? {
                if let Some(last) = batch.last() {
                    checkpoint = last.checkpoint();
                }
                if batches.send(batch).await.is_err() {
                    break;
                }
            }
            Ok::<_, sqlx::Error>(checkpoint)
        }
    });
    let mut rows: HashMap<String, M::Row> =
        HashMap::with_capacity(usize::try_from(aggregates).unwrap_or(0));
    let mut events = 0u64;
    let mut refused = 0usize;
    while let Some(batch) = incoming.recv().await {
        refused += fold_untracked::<M>(&mut rows, &batch).poisoned.len();
        events += batch.len() as u64;
        progress.inc(batch.len() as u64);
    }
    let checkpoint = read_ahead.await??;
    write_fresh::<M>(pool, &fresh, &rows, pauses.while_writing).await?;
    let diff = if mode == Mode::Diff {
        Some(diff::<M>(pool, &rows).await?)
    } else {
        let reader = GlobalReader::new(pool.clone());

        pauses.before_swap.await;

        // 2. The swap, with the live workers paused, on the connection that
        // holds the rebuild's lock: if it was lost (the connection died),
        // another rebuild may share the fresh table, and nothing is swapped.
        let mut tx = alone.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
            .bind(lock_name(M::NAME))
            .execute(&mut *tx)
            .await?;
        let late_events: Vec<RecordedEvent<String>> = reader
            .stream_text(checkpoint, &filter)
            .try_collect()
            .await?;
        let fold = fold_all::<M>(&mut rows, &late_events);
        refused += fold.poisoned.len();
        // Each changed id once, as the fold lists them.
        let changed = fold.changed;
        events += late_events.len() as u64;
        progress.inc(late_events.len() as u64);
        let last_position = late_events.last().map(|e| e.global_position);
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
        None
    };
    progress.finish();
    let report = RebuildReport {
        projection: M::NAME,
        events,
        rows: rows.len(),
        refused,
        elapsed: started.elapsed(),
        diff,
    };
    // Freeing millions of rows takes a while; nobody needs to wait for it.
    tokio::task::spawn_blocking(move || drop(rows));
    Ok(report)
}

/// Compares the freshly folded `rows` (what the fresh table holds) with the
/// live table, row by row, a thousand at a time.
async fn diff<M: ReadModel>(pool: &PgPool, rows: &HashMap<String, M::Row>) -> anyhow::Result<Diff> {
    let mut diff = Diff::default();
    let mut connection = pool.acquire().await?;
    let mut ids: Vec<&str> = rows.keys().map(String::as_str).collect();
    ids.sort_unstable();
    let mut found = 0i64;
    for chunk in ids.chunks(1000) {
        let live = M::load(&mut connection, M::TABLE, chunk).await?;
        found += live.len() as i64;
        for id in chunk {
            let rebuilt = &rows[*id];
            match live.get(*id) {
                None => diff.missing_live += 1,
                Some(row) if M::version(row) != M::version(rebuilt) => diff.other_version += 1,
                Some(row) if row != rebuilt => {
                    diff.differing += 1;
                    if diff.examples.len() < EXAMPLES {
                        diff.examples
                            .push(format!("{id}: live {row:?}, rebuilt {rebuilt:?}"));
                    }
                }
                Some(_) => {}
            }
        }
    }
    let live_rows: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {}", M::TABLE))
        .fetch_one(&mut *connection)
        .await?;
    diff.only_live = live_rows - found;
    Ok(diff)
}

/// Gives the empty fresh table the live table's keys and indexes, named
/// `<name>_rebuild` until the swap. Built on an empty table, each takes no
/// time; built over the loaded rows, one would be a long transaction.
async fn index_fresh(pool: &PgPool, table: &str, fresh: &str) -> anyhow::Result<()> {
    let constraints: Vec<(String, String)> = sqlx::query_as(
        "SELECT conname::text, pg_get_constraintdef(oid) FROM pg_constraint
          WHERE conrelid = $1::regclass AND conindid <> 0",
    )
    .bind(table)
    .fetch_all(pool)
    .await?;
    let indexes: Vec<(String, bool, String)> = sqlx::query_as(
        "SELECT c.relname::text, i.indisunique, pg_get_indexdef(i.indexrelid)
           FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
          WHERE i.indrelid = $1::regclass
            AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid)",
    )
    .bind(table)
    .fetch_all(pool)
    .await?;
    let mut statements: Vec<String> = constraints
        .iter()
        .map(|(name, definition)| {
            format!("ALTER TABLE {fresh} ADD CONSTRAINT {name}{SUFFIX} {definition}")
        })
        .collect();
    for (name, unique, definition) in &indexes {
        let (_, method) = definition
            .split_once(" USING ")
            .ok_or_else(|| anyhow::anyhow!("unexpected index definition: {definition}"))?;
        let unique = if *unique { "UNIQUE " } else { "" };
        statements.push(format!(
            "CREATE {unique}INDEX {name}{SUFFIX} ON {fresh} USING {method}"
        ));
    }
    for statement in &statements {
        sqlx::query(statement).execute(pool).await?;
    }
    Ok(())
}

/// Writes every row into the fresh table with `COPY`, [`COPY_ROWS`] per
/// transaction, on a few connections at once. `while_writing` is awaited
/// after the first chunk committed.
async fn write_fresh<M: ReadModel>(
    pool: &PgPool,
    fresh: &str,
    rows: &HashMap<String, M::Row>,
    while_writing: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let mut all: Vec<&M::Row> = rows.values().collect();
    all.sort_unstable_by(|a, b| M::copy_order(a, b));
    let mut chunks = all.chunks(COPY_ROWS);
    if let Some(first) = chunks.next() {
        copy_rows::<M>(&mut *pool.acquire().await?, fresh, first).await?;
    }
    while_writing.await;
    let chunks = std::sync::Mutex::new(chunks);
    let next = || {
        chunks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .next()
    };
    futures::future::try_join_all((0..WRITERS).map(|_| async {
        let mut connection = pool.acquire().await?;
        while let Some(chunk) = next() {
            copy_rows::<M>(&mut connection, fresh, chunk).await?;
        }
        Ok::<_, sqlx::Error>(())
    }))
    .await?;
    Ok(())
}

/// Puts `<table>_rebuild` in the place of `<table>` and gives its keys and
/// indexes the live table's names.
async fn swap_tables(tx: &mut sqlx::PgConnection, table: &str) -> sqlx::Result<()> {
    let fresh = format!("{table}{SUFFIX}");
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
        "SELECT c.relname::text FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
          WHERE i.indrelid = $1::regclass AND right(c.relname, length($2)) = $2",
    )
    .bind(table)
    .bind(SUFFIX)
    .fetch_all(&mut *tx)
    .await?;
    for index in indexes {
        let renamed = &index[..index.len() - SUFFIX.len()];
        sqlx::query(&format!("ALTER INDEX {index} RENAME TO {renamed}"))
            .execute(&mut *tx)
            .await?;
    }
    Ok(())
}
