//! Reading ahead: a task that reads batches in global order from a
//! checkpoint and queues them for the publisher, waiting for commit
//! notifications (or the poll interval) when it has caught up.

use std::time::Duration;

use event_store::wake::LocalLead;
use event_store::{GlobalCheckpoint, GlobalReader, ReadFilter};
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::{EVENTS_CHANNEL, LagGauge, RelayConfig};
use event_contract::RawEvent;

/// Batches read but not yet taken by the publisher, at most.
const READ_AHEAD: usize = 2;

/// The first wait before reading again when a notified commit was not
/// readable yet.
const FIRST_LOOK_AGAIN: Duration = Duration::from_millis(1);

/// The read-ahead task and what it has read. Dropping it stops the task.
pub(crate) struct Feed {
    batches: mpsc::Receiver<anyhow::Result<Vec<RawEvent>>>,
    task: JoinHandle<()>,
}

impl Feed {
    /// Starts reading after `from`.
    pub(crate) fn start(pool: PgPool, config: &RelayConfig, from: GlobalCheckpoint) -> Self {
        let (sender, batches) = mpsc::channel(READ_AHEAD);
        // Registered before the first read: an append after it wakes the
        // feed in memory; one before it is found by that read.
        let local = LocalLead::new(&pool);
        let task = tokio::spawn(read_ahead(
            pool,
            config.name.clone(),
            config.batch_size,
            config.poll_interval,
            from,
            (sender, local),
        ));
        Self { batches, task }
    }

    /// The next batch, in order; waits while there is none.
    pub(crate) async fn next(&mut self) -> anyhow::Result<Vec<RawEvent>> {
        match self.batches.recv().await {
            Some(batch) => batch,
            None => anyhow::bail!("the relay's reader stopped"),
        }
    }
}

impl Drop for Feed {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn read_ahead(
    pool: PgPool,
    name: String,
    batch_size: i64,
    poll_interval: Duration,
    mut at: GlobalCheckpoint,
    (batches, mut local): (mpsc::Sender<anyhow::Result<Vec<RawEvent>>>, LocalLead),
) {
    let reader = GlobalReader::new(pool.clone());
    let everything = ReadFilter::default();
    let mut lag = LagGauge::new(&name);
    let mut listener = match listen(&pool).await {
        Ok(listener) => listener,
        Err(error) => {
            let _ = batches.send(Err(error.into())).await;
            return;
        }
    };
    // How soon to read again after a read found nothing although a commit
    // was notified: its events are held behind an older transaction still
    // running (the reader's horizon), which no notification announces the
    // end of. Doubles from 1 ms while reads keep finding nothing.
    let mut held_back: Option<Duration> = None;
    loop {
        // Behind or caught up alike (the gauge counts every few seconds).
        lag.update(&pool, at).await;
        match reader.read_raw(at, batch_size, &everything).await {
            Ok(batch) if batch.is_empty() => {
                // Events committed after the read above notify, so nothing
                // is missed; the poll interval covers a lost connection.
                let wait = held_back.unwrap_or(poll_interval);
                let woken = async {
                    tokio::select! {
                        _ = listener.recv() => {}
                        () = local.appended() => {}
                    }
                };
                held_back = match tokio::time::timeout(wait, woken).await {
                    Ok(()) => Some(FIRST_LOOK_AGAIN),
                    Err(_) => held_back
                        .map(|wait| wait * 2)
                        .filter(|wait| *wait < poll_interval),
                };
            }
            Ok(batch) => {
                held_back = None;
                if let Some(last) = batch.last() {
                    at = last.checkpoint();
                }
                if batches.send(Ok(batch)).await.is_err() {
                    return;
                }
            }
            Err(error) => {
                let _ = batches.send(Err(error.into())).await;
                return;
            }
        }
    }
}

async fn listen(pool: &PgPool) -> sqlx::Result<PgListener> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(EVENTS_CHANNEL).await?;
    Ok(listener)
}
