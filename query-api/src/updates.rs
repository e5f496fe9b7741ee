//! What the projections changed, as it happens: their commit notifications,
//! fanned out to GraphQL subscriptions in this process.

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::broadcast;

use projections::worker::UPDATES_CHANNEL;

/// A change to one row of one read model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Updated {
    pub projection: Arc<str>,
    pub id: Arc<str>,
}

/// Fans out read-model changes to any number of subscribers. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Updates {
    sender: broadcast::Sender<Updated>,
}

impl Updates {
    /// Listens to the projections' notifications for as long as a clone
    /// lives; reconnects after database failures.
    pub fn listen(pool: PgPool) -> Self {
        let (sender, _) = broadcast::channel(4096);
        let updates = Self { sender };
        let weak = updates.sender.downgrade();
        tokio::spawn(async move {
            // Ends when the last clone of `Updates` is gone.
            while weak.strong_count() > 0 {
                if let Err(error) = forward(&pool, &weak).await {
                    if weak.strong_count() == 0 {
                        return;
                    }
                    tracing::warn!(%error, "listening for read model updates failed; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        });
        updates
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Updated> {
        self.sender.subscribe()
    }
}

/// Forwards notifications until no sender is left.
async fn forward(pool: &PgPool, sender: &broadcast::WeakSender<Updated>) -> sqlx::Result<()> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(UPDATES_CHANNEL).await?;
    loop {
        let notification = listener.recv().await?;
        let Some(sender) = sender.upgrade() else {
            return Ok(());
        };
        let Some((projection, ids)) = notification.payload().split_once(':') else {
            continue;
        };
        let projection: Arc<str> = projection.into();
        for id in ids.split(',') {
            // No subscriber is not an error.
            let _ = sender.send(Updated {
                projection: Arc::clone(&projection),
                id: id.into(),
            });
        }
    }
}
