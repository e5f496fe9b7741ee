//! Group commit: jobs submitted at about the same time are handed to one
//! call of a handler, which writes them with one statement and one commit.
//!
//! A worker that becomes free takes every job queued at that moment (up to
//! the batch limit); a lone job goes at once, and nothing waits on a timer.
//! Fewer workers make bigger batches. Jobs carry their own way to answer
//! (a oneshot sender, say): the handler answers each.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};

use tokio::sync::{Mutex, mpsc};

type Handler<J> = Arc<dyn Fn(Vec<J>) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// Hands queued jobs to `handler` in batches. Cheap to clone; clones share
/// the workers, which start on first use (on the runtime of the caller) and
/// stop when every clone is gone.
pub struct Batcher<J> {
    name: &'static str,
    workers: usize,
    max_batch: usize,
    handler: Handler<J>,
    queue: Arc<OnceLock<mpsc::Sender<J>>>,
}

impl<J> Clone for Batcher<J> {
    fn clone(&self) -> Self {
        Self {
            name: self.name,
            workers: self.workers,
            max_batch: self.max_batch,
            handler: Arc::clone(&self.handler),
            queue: Arc::clone(&self.queue),
        }
    }
}

impl<J> std::fmt::Debug for Batcher<J> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batcher")
            .field("name", &self.name)
            .field("workers", &self.workers)
            .field("max_batch", &self.max_batch)
            .finish_non_exhaustive()
    }
}

/// The workers are gone (their runtime shut down).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the batch workers have stopped")]
pub struct Stopped;

impl<J: Send + 'static> Batcher<J> {
    /// `workers` handler calls may run at once, each with at most
    /// `max_batch` jobs. Batch sizes go to the histogram named `name`.
    pub fn new<F, Fut>(name: &'static str, workers: usize, max_batch: usize, handler: F) -> Self
    where
        F: Fn(Vec<J>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        Self {
            name,
            workers: workers.max(1),
            max_batch: max_batch.max(1),
            handler: Arc::new(move |jobs| Box::pin(handler(jobs))),
            queue: Arc::new(OnceLock::new()),
        }
    }

    /// Queues `job` for the next batch; waits while the queue is full.
    pub async fn submit(&self, job: J) -> Result<(), Stopped> {
        self.queue().send(job).await.map_err(|_| Stopped)
    }

    fn queue(&self) -> &mpsc::Sender<J> {
        self.queue.get_or_init(|| {
            let (sender, receiver) = mpsc::channel(4 * self.max_batch);
            let receiver = Arc::new(Mutex::new(receiver));
            for _ in 0..self.workers {
                tokio::spawn(work(
                    self.name,
                    self.max_batch,
                    Arc::clone(&self.handler),
                    Arc::clone(&receiver),
                ));
            }
            sender
        })
    }
}

/// Takes a job and every job queued behind it, and hands them over together.
async fn work<J>(
    name: &'static str,
    max_batch: usize,
    handler: Handler<J>,
    queue: Arc<Mutex<mpsc::Receiver<J>>>,
) {
    loop {
        let mut batch = Vec::with_capacity(max_batch);
        {
            let mut queue = queue.lock().await;
            match queue.recv().await {
                Some(job) => batch.push(job),
                None => return,
            }
            while batch.len() < max_batch {
                match queue.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
        }
        metrics::histogram!(name).record(batch.len() as f64);
        handler(batch).await;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::sync::oneshot;

    use super::*;

    #[tokio::test]
    async fn jobs_queued_together_go_together_and_a_lone_job_goes_at_once() {
        let (release, released) = tokio::sync::watch::channel(false);
        let sizes = Arc::new(std::sync::Mutex::new(Vec::new()));
        let batcher = Batcher::new("test_batch_size", 1, 8, {
            let sizes = Arc::clone(&sizes);
            move |jobs: Vec<(u32, oneshot::Sender<u32>)>| {
                let (sizes, mut released) = (Arc::clone(&sizes), released.clone());
                async move {
                    sizes.lock().unwrap().push(jobs.len());
                    // The first batch waits, so that the next jobs queue up.
                    let _ = released.wait_for(|go| *go).await;
                    for (n, answer) in jobs {
                        let _ = answer.send(n * 10);
                    }
                }
            }
        });
        let submit = |n: u32| {
            let batcher = batcher.clone();
            async move {
                let (answer, answered) = oneshot::channel();
                batcher.submit((n, answer)).await.unwrap();
                answered.await.unwrap()
            }
        };
        let first = tokio::spawn(submit(1));
        while sizes.lock().unwrap().is_empty() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let queued: Vec<_> = (2..=11).map(|n| tokio::spawn(submit(n))).collect();
        tokio::time::sleep(Duration::from_millis(50)).await;
        release.send(true).unwrap();
        assert_eq!(first.await.unwrap(), 10);
        let mut answers = Vec::new();
        for job in queued {
            answers.push(job.await.unwrap());
        }
        assert_eq!(answers, (2..=11).map(|n| n * 10).collect::<Vec<_>>());
        assert_eq!(
            *sizes.lock().unwrap(),
            vec![1, 8, 2],
            "the lone first job went alone; the queued ones in batches of at most 8"
        );
    }
}
