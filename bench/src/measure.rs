//! What the saga benchmarks read of the platform they run: the statements
//! and commits each order cost, and when the sagas of a burst have ended.

use std::time::{Duration, Instant};

use platform_tests::TestPlatform;
use sqlx::PgPool;

/// Statements and commits on the platform's and the gateway's databases
/// since [`Counts::start`].
pub struct Counts {
    oids: Vec<sqlx::postgres::types::Oid>,
    commits: i64,
}

impl Counts {
    /// Resets pg_stat_statements; `None` when the server does not load it.
    pub async fn start(pool: &PgPool, databases: &[String]) -> anyhow::Result<Option<Self>> {
        if sqlx::query("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            .execute(pool)
            .await
            .is_err()
            || sqlx::query("SELECT pg_stat_statements_reset()")
                .execute(pool)
                .await
                .is_err()
        {
            println!(
                "statements per order: not counted (the server does not load pg_stat_statements; scripts/services does)"
            );
            return Ok(None);
        }
        let oids = sqlx::query_scalar("SELECT oid FROM pg_database WHERE datname = ANY($1)")
            .bind(databases)
            .fetch_all(pool)
            .await?;
        let commits = commits(pool, &oids).await?;
        Ok(Some(Self { oids, commits }))
    }

    pub async fn print(&self, pool: &PgPool, orders: usize) -> anyhow::Result<()> {
        // Backends report their transaction counts at most once a second.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let commits = commits(pool, &self.oids).await? - self.commits;
        let top: Vec<(i64, String)> = sqlx::query_as(
            "SELECT calls, query FROM pg_stat_statements WHERE dbid = ANY($1) ORDER BY calls DESC",
        )
        .bind(&self.oids)
        .fetch_all(pool)
        .await?;
        let statements: i64 = top.iter().map(|(calls, _)| calls).sum();
        let per = |n: i64| n as f64 / orders as f64;
        println!(
            "per order (everything on both databases, relay and projections included): {:.1} statements, {:.1} commits",
            per(statements),
            per(commits)
        );
        for (calls, query) in top.iter().take(12) {
            let query: String = query.split_whitespace().collect::<Vec<_>>().join(" ");
            let query: String = query.chars().take(110).collect();
            println!("  {:>5.2}  {query}", per(*calls));
        }
        Ok(())
    }
}

async fn commits(pool: &PgPool, oids: &[sqlx::postgres::types::Oid]) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(
        "SELECT coalesce(sum(xact_commit), 0)::bigint FROM pg_stat_database WHERE datid = ANY($1)",
    )
    .bind(oids)
    .fetch_one(pool)
    .await?)
}

/// Sagas stored so far, whatever their state.
pub async fn sagas_stored(pool: &PgPool) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar("SELECT count(*) FROM sagas")
        .fetch_one(pool)
        .await?)
}

/// Waits until the sagas of `ids` (placed after `before` sagas were stored)
/// have all ended, and checks that they all ended CONFIRMED. The looks
/// while they run are cheap for the database whatever the history (the
/// sagas not done have an index of their own), so the benchmark does not
/// load the platform it measures.
pub async fn wait_confirmed(
    platform: &TestPlatform,
    ids: &[String],
    before: i64,
    within: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    loop {
        let running: i64 = sqlx::query_scalar("SELECT count(*) FROM sagas WHERE NOT done")
            .fetch_one(&platform.pool)
            .await?;
        if running == 0 && sagas_stored(&platform.pool).await? >= before + ids.len() as i64 {
            let confirmed: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM sagas WHERE state = 'CONFIRMED' AND order_id = ANY($1)",
            )
            .bind(ids)
            .fetch_one(&platform.pool)
            .await?;
            anyhow::ensure!(
                confirmed == ids.len() as i64,
                "{confirmed} of {} orders ended CONFIRMED",
                ids.len()
            );
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{running} sagas still running after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
