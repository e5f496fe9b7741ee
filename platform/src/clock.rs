//! One clock for the times that processes compare: the database's.
//!
//! Times one process writes and another reads (when a retry is due, when a
//! charge's deadline started) must come from one clock, or a node whose
//! clock is off skips its backoffs or delays work unseen. Statements take
//! `now()` themselves where they can; where a process must hold a time
//! (a saga's step times, kept in its JSON), it reads [`DbClock::now`]: its
//! own clock corrected by the offset to the database's, measured with
//! `clock_timestamp()` at start and again every few seconds.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;

/// How often the offset is measured again.
pub const RESYNC_EVERY: Duration = Duration::from_secs(30);

/// The database's clock, as seen from this process. Cheap to clone.
#[derive(Debug, Clone)]
pub struct DbClock {
    /// Database time minus this process's time, in microseconds.
    offset_micros: Arc<AtomicI64>,
    /// This process's clock (replaced in tests by a skewed one).
    local: fn() -> DateTime<Utc>,
}

impl Default for DbClock {
    fn default() -> Self {
        Self::with_local_clock(Utc::now)
    }
}

impl DbClock {
    /// A clock that reads `local` as this process's time (tests pass a
    /// skewed one); it reads `local` unchanged until [`sync`](Self::sync).
    pub fn with_local_clock(local: fn() -> DateTime<Utc>) -> Self {
        Self {
            offset_micros: Arc::new(AtomicI64::new(0)),
            local,
        }
    }

    /// The database's time now.
    pub fn now(&self) -> DateTime<Utc> {
        (self.local)() + chrono::Duration::microseconds(self.offset_micros.load(Ordering::Relaxed))
    }

    /// Measures the offset to `pool`'s database: half way between sending
    /// the question and reading its answer is taken as when it answered.
    pub async fn sync(&self, pool: &PgPool) -> sqlx::Result<()> {
        let asked = (self.local)();
        let answered: DateTime<Utc> = sqlx::query_scalar("SELECT clock_timestamp()")
            .fetch_one(pool)
            .await?;
        let heard = (self.local)();
        let midway = asked + (heard - asked) / 2;
        let offset = (answered - midway).num_microseconds().unwrap_or(0);
        self.offset_micros.store(offset, Ordering::Relaxed);
        Ok(())
    }

    /// Measures the offset now, then every [`RESYNC_EVERY`] until dropped
    /// with the task running it.
    pub async fn keep_synced(self, pool: PgPool) {
        loop {
            if let Err(error) = self.sync(&pool).await {
                tracing::warn!(%error, "cannot read the database's clock; keeping the last offset");
            }
            tokio::time::sleep(RESYNC_EVERY).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsynced_it_reads_the_local_clock() {
        fn an_hour_ahead() -> DateTime<Utc> {
            Utc::now() + chrono::Duration::hours(1)
        }
        let clock = DbClock::with_local_clock(an_hour_ahead);
        let read = clock.now() - Utc::now();
        assert!(read > chrono::Duration::minutes(59), "{read}");
    }
}
