//! Group commit: concurrent commands share one append statement and one commit.
//!
//! Every command still gets its answer only after its events are committed,
//! so guarantee 1 is untouched; what changes is that, under load, PostgreSQL
//! parses, plans and commits once for several commands instead of once each.
//! A lone command goes alone, without waiting for company: a worker takes
//! whatever is queued when it becomes free, never waits on a timer (see
//! `platform::batch`).
//!
//! A batch fails as a whole (a conflict of one command rolls back the
//! others), so a failed batch is retried command by command, and each command
//! gets its own answer, exactly as if it had never been batched.
//!
//! After an append commits, the relay is woken: in memory when it leads in
//! this process (see `wake`), else with a `NOTIFY` on [`EVENTS_CHANNEL`] of
//! its own, outside the append's transaction: a `NOTIFY` inside it would
//! take the database's notification lock at commit and hold it until the
//! commit is flushed, one append after another. At most one such
//! notification is on its way per batcher; appends that commit meanwhile
//! are announced by the next.

use std::sync::{Arc, Mutex, PoisonError};

use platform::batch::Batcher;
use sqlx::PgPool;
use tokio::sync::oneshot;
use tracing::Instrument;

use event_store::repository::{
    AppendError, IdempotencyClaim, NewEvent, PendingAppend, PgEventRepository,
};

/// How many commands one statement takes at most.
const MAX_BATCH: usize = 64;

pub use event_store::wake::EVENTS_CHANNEL;

/// A command's events and its idempotency key.
pub type Command = (Vec<NewEvent>, Option<IdempotencyClaim>);

/// Commands waiting to be appended together: all of them or none.
struct Job {
    commands: Vec<Command>,
    /// The `traceparent` of each command's append, linked from the
    /// statement's span.
    traces: Vec<String>,
    done: oneshot::Sender<Result<(), AppendError>>,
}

/// Appends commands' events through a few workers that batch whatever is
/// queued. Cheap to clone; clones share the workers.
#[derive(Debug, Clone)]
pub struct AppendBatcher {
    batcher: Batcher<Job>,
}

impl AppendBatcher {
    /// `workers` statements may be in flight at once (each holds one
    /// connection); fewer workers make bigger batches.
    pub fn new(pool: PgPool, workers: usize) -> Self {
        let announcer = Announcer::new(pool.clone());
        let repository = PgEventRepository::new(pool);
        Self {
            batcher: Batcher::new("append_batch_commands", workers, MAX_BATCH, move |batch| {
                let (repository, announcer) = (repository.clone(), announcer.clone());
                async move {
                    if append_batch(&repository, batch).await {
                        announcer.announce();
                    }
                }
            }),
        }
    }

    /// Appends one command's events and key, sharing the statement with other
    /// commands queued at the same moment. Same contract as
    /// [`PgEventRepository::append`].
    pub async fn append(
        &self,
        events: Vec<NewEvent>,
        claim: Option<IdempotencyClaim>,
    ) -> Result<(), AppendError> {
        self.append_together(vec![(events, claim)], Vec::new())
            .await
    }

    /// Appends several commands' events and keys, all of them or none,
    /// sharing the statement with other commands queued at the same moment.
    /// Same contract as [`PgEventRepository::append_commands`]. `traces`
    /// are the commands' trace contexts, which the statement's span links.
    pub async fn append_together(
        &self,
        commands: Vec<Command>,
        traces: Vec<String>,
    ) -> Result<(), AppendError> {
        let (done, answer) = oneshot::channel();
        let job = Job {
            commands,
            traces,
            done,
        };
        self.batcher
            .submit(job)
            .await
            .map_err(|_| AppendError::Database(sqlx::Error::PoolClosed))?;
        answer
            .await
            .map_err(|_| AppendError::Database(sqlx::Error::WorkerCrashed))?
    }
}

/// Appends the batch and answers each job; whether anything committed. The
/// statements run in a span of their own, linked to every command's trace.
async fn append_batch(repository: &PgEventRepository, mut batch: Vec<Job>) -> bool {
    // A caller that stopped waiting (it timed out and will try again, or
    // settle the key) gets no append behind its back.
    batch.retain(|job| !job.done.is_closed());
    let span = tracing::info_span!(
        parent: None,
        "append statement",
        commands = batch.iter().map(|job| job.commands.len()).sum::<usize>()
    );
    platform::trace::link_all(
        &span,
        batch.iter().flat_map(|job| &job.traces).map(String::as_str),
    );
    append_batch_in(repository, batch).instrument(span).await
}

async fn append_batch_in(repository: &PgEventRepository, batch: Vec<Job>) -> bool {
    if batch.len() > 1 {
        let pending: Vec<PendingAppend<'_>> = batch
            .iter()
            .flat_map(|job| &job.commands)
            .map(|(events, claim)| PendingAppend {
                events,
                claim: claim.as_ref(),
            })
            .collect();
        let started = std::time::Instant::now();
        let appended = repository.append_commands(&pending).await;
        metrics::histogram!("append_statement_seconds").record(started.elapsed().as_secs_f64());
        match appended {
            Ok(()) => {
                for job in batch {
                    let _ = job.done.send(Ok(()));
                }
                return true;
            }
            // Cut off from the server, the statement may have committed
            // before its answer was lost: appending the jobs again would
            // find their own rows and take that for a lost race. Each
            // learns that the store is out of reach.
            Err(AppendError::Database(error)) if crate::dispatch::database_unavailable(&error) => {
                let text = error.to_string();
                for job in batch {
                    let copy = sqlx::Error::Io(std::io::Error::other(text.clone()));
                    let _ = job.done.send(Err(AppendError::Database(copy)));
                }
                // It may have committed.
                return true;
            }
            // The server refused the statement (a job lost a race or reused
            // a key, say), so nothing of it committed: find out which job,
            // one by one, each with its own answer.
            Err(_) => {}
        }
    }
    let mut committed = false;
    for job in batch {
        let pending: Vec<PendingAppend<'_>> = job
            .commands
            .iter()
            .map(|(events, claim)| PendingAppend {
                events,
                claim: claim.as_ref(),
            })
            .collect();
        let started = std::time::Instant::now();
        let result = repository.append_commands(&pending).await;
        metrics::histogram!("append_statement_seconds").record(started.elapsed().as_secs_f64());
        committed |= !matches!(result, Err(AppendError::Conflict | AppendError::KeyTaken));
        let _ = job.done.send(result);
    }
    committed
}

/// Sends `NOTIFY events_appended` after appends commit: at once when none
/// is on its way, else once more when that one is done.
#[derive(Debug, Clone)]
struct Announcer {
    pool: PgPool,
    /// The database, for a relay leading in this process.
    database: Arc<str>,
    /// A notification is on its way; another is wanted after it.
    state: Arc<Mutex<(bool, bool)>>,
}

impl Announcer {
    fn new(pool: PgPool) -> Self {
        Self {
            database: event_store::wake::database_key(&pool).into(),
            pool,
            state: Arc::default(),
        }
    }

    fn announce(&self) {
        if event_store::wake::appended(&self.database) {
            return;
        }
        {
            let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            if state.0 {
                state.1 = true;
                return;
            }
            *state = (true, false);
        }
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                // A notification lost (the database away) costs the relay a
                // wait for its poll, nothing more.
                if let Err(error) = sqlx::query("SELECT pg_notify($1, '')")
                    .bind(EVENTS_CHANNEL)
                    .execute(&this.pool)
                    .await
                {
                    tracing::debug!(%error, "cannot announce appended events");
                }
                let mut state = this.state.lock().unwrap_or_else(PoisonError::into_inner);
                if state.1 {
                    state.1 = false;
                } else {
                    state.0 = false;
                    return;
                }
            }
        });
    }
}
