//! Group commit: concurrent commands share one append statement and one commit.
//!
//! Every command still gets its answer only after its events are committed,
//! so guarantee 1 is untouched; what changes is that, under load, PostgreSQL
//! parses, plans and commits once for several commands instead of once each.
//! A lone command goes alone, without waiting for company: a worker takes
//! whatever is queued when it becomes free, never waits on a timer.
//!
//! A batch fails as a whole (a conflict of one command rolls back the
//! others), so a failed batch is retried command by command, and each command
//! gets its own answer, exactly as if it had never been batched.

use std::sync::{Arc, OnceLock};

use sqlx::PgPool;
use tokio::sync::{Mutex, mpsc, oneshot};

use crate::repository::{
    AppendError, IdempotencyClaim, NewEvent, PendingAppend, PgEventRepository,
};

/// How many commands one statement takes at most.
const MAX_BATCH: usize = 64;

/// One command waiting to be appended.
struct Job {
    events: Vec<NewEvent>,
    claim: Option<IdempotencyClaim>,
    done: oneshot::Sender<Result<(), AppendError>>,
}

/// Appends commands' events through a few workers that batch whatever is
/// queued. Cheap to clone; clones share the workers. The workers start on
/// first use (on the runtime of the caller) and stop when every clone is gone.
#[derive(Debug, Clone)]
pub struct AppendBatcher {
    repository: PgEventRepository,
    workers: usize,
    queue: Arc<OnceLock<mpsc::Sender<Job>>>,
}

impl AppendBatcher {
    /// `workers` statements may be in flight at once (each holds one
    /// connection); fewer workers make bigger batches.
    pub fn new(pool: PgPool, workers: usize) -> Self {
        Self {
            repository: PgEventRepository::new(pool),
            workers: workers.max(1),
            queue: Arc::new(OnceLock::new()),
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
        let (done, answer) = oneshot::channel();
        let job = Job {
            events,
            claim,
            done,
        };
        self.queue()
            .send(job)
            .await
            .map_err(|_| AppendError::Database(sqlx::Error::PoolClosed))?;
        answer
            .await
            .map_err(|_| AppendError::Database(sqlx::Error::WorkerCrashed))?
    }

    fn queue(&self) -> &mpsc::Sender<Job> {
        self.queue.get_or_init(|| {
            let (sender, receiver) = mpsc::channel(4 * MAX_BATCH);
            let receiver = Arc::new(Mutex::new(receiver));
            for _ in 0..self.workers {
                tokio::spawn(work(self.repository.clone(), Arc::clone(&receiver)));
            }
            sender
        })
    }
}

/// Takes a job and every job queued behind it, appends them together, answers.
async fn work(repository: PgEventRepository, queue: Arc<Mutex<mpsc::Receiver<Job>>>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    loop {
        {
            let mut queue = queue.lock().await;
            match queue.recv().await {
                Some(job) => batch.push(job),
                None => return,
            }
            while batch.len() < MAX_BATCH {
                match queue.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
        }
        metrics::histogram!("append_batch_commands").record(batch.len() as f64);
        append_batch(&repository, &mut batch).await;
    }
}

async fn append_batch(repository: &PgEventRepository, batch: &mut Vec<Job>) {
    // A caller that stopped waiting (it timed out and will try again, or
    // settle the key) gets no append behind its back.
    batch.retain(|job| !job.done.is_closed());
    if batch.len() > 1 {
        let pending: Vec<PendingAppend<'_>> = batch
            .iter()
            .map(|job| PendingAppend {
                events: &job.events,
                claim: job.claim.as_ref(),
            })
            .collect();
        if repository.append_commands(&pending).await.is_ok() {
            for job in batch.drain(..) {
                let _ = job.done.send(Ok(()));
            }
            return;
        }
        // Something in the batch failed; find out what, command by command.
    }
    for job in batch.drain(..) {
        let result = repository.append(&job.events, job.claim.as_ref()).await;
        let _ = job.done.send(result);
    }
}
