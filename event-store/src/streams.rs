//! One command at a time per stream, within a process.
//!
//! Concurrent commands on one aggregate (every order of a sale reserving one
//! product) would each load the stream, decide, and all but one lose the
//! append race and load it again: work that grows with the square of the
//! writers. Queued on a per-stream lock, they run one after another instead,
//! each on a fresh load, and only writers in other processes still race.
//!
//! While a stream has a queue, the lock also keeps the aggregate as the last
//! turn left it, so the next turn reads only the events appended since (by
//! another process). The copy goes with the lock once nobody waits.

use std::any::Any;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

/// An aggregate and the version it is at: the fold of its events up to then.
type Kept = Option<Box<dyn Any + Send>>;
type Locks = Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<Kept>>>>>;

/// A lock per stream name, kept only while someone holds or waits for it.
#[derive(Debug, Clone, Default)]
pub(crate) struct StreamLocks {
    locks: Locks,
}

/// Held while a command runs on its stream; dropping it lets the next one in.
#[derive(Debug)]
pub(crate) struct StreamTurn {
    locks: Locks,
    stream: String,
    held: Option<tokio::sync::OwnedMutexGuard<Kept>>,
}

impl StreamLocks {
    /// Waits for the turn on `stream` (first come, first served).
    pub(crate) async fn turn(&self, stream: String) -> StreamTurn {
        let lock = {
            let mut locks = self.locks.lock().unwrap_or_else(PoisonError::into_inner);
            Arc::clone(locks.entry(stream.clone()).or_default())
        };
        // Built before the wait, so a caller that gives up waiting still
        // removes a lock nobody else wants.
        let mut turn = StreamTurn {
            locks: Arc::clone(&self.locks),
            stream,
            held: None,
        };
        turn.held = Some(lock.lock_owned().await);
        turn
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.locks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

impl StreamTurn {
    /// The aggregate as the last turn left it, with its version, if kept.
    pub(crate) fn take<A: Send + 'static>(&mut self) -> Option<(A, u64)> {
        let kept = self.held.as_mut()?.take()?;
        kept.downcast::<(A, u64)>().ok().map(|kept| *kept)
    }

    /// Keeps `aggregate` at `version` for the next turn. Only a state that
    /// is the fold of committed events may be kept.
    pub(crate) fn keep<A: Send + 'static>(&mut self, aggregate: A, version: u64) {
        if let Some(held) = self.held.as_mut() {
            **held = Some(Box::new((aggregate, version)));
        }
    }
}

impl Drop for StreamTurn {
    fn drop(&mut self) {
        self.held = None;
        let mut locks = self.locks.lock().unwrap_or_else(PoisonError::into_inner);
        // Only the map's own reference left: nobody holds or waits.
        if locks
            .get(&self.stream)
            .is_some_and(|lock| Arc::strong_count(lock) == 1)
        {
            locks.remove(&self.stream);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn one_turn_at_a_time_per_stream_and_others_run_meanwhile() {
        let locks = StreamLocks::default();
        let first = locks.turn("Product/MUG".into()).await;
        let mut waiting = tokio::spawn({
            let locks = locks.clone();
            async move { locks.turn("Product/MUG".into()).await }
        });
        // Another stream is not held up.
        let other = tokio::time::timeout(Duration::from_secs(5), locks.turn("Product/TEA".into()))
            .await
            .expect("another stream waits for nobody");
        let early = tokio::time::timeout(Duration::from_millis(50), &mut waiting).await;
        assert!(early.is_err(), "the second turn waits for the first");
        drop(first);
        let second = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("the second turn comes once the first is over")
            .unwrap();
        drop((second, other));
        assert_eq!(locks.len(), 0, "locks nobody wants are forgotten");
    }

    #[tokio::test]
    async fn a_kept_aggregate_passes_to_the_next_turn_only_while_someone_waits() {
        let locks = StreamLocks::default();
        let mut first = locks.turn("Product/MUG".into()).await;
        let mut waiting = tokio::spawn({
            let locks = locks.clone();
            async move {
                let mut turn = locks.turn("Product/MUG".into()).await;
                (turn.take::<String>(), turn.take::<String>())
            }
        });
        let queued = tokio::time::timeout(Duration::from_millis(50), &mut waiting).await;
        assert!(queued.is_err(), "the second turn waits for the first");
        first.keep(String::from("state"), 7);
        drop(first);
        let (kept, again) = waiting.await.unwrap();
        assert_eq!(kept, Some(("state".to_owned(), 7)));
        assert_eq!(again, None, "taken once");

        let mut alone = locks.turn("Product/MUG".into()).await;
        alone.keep(String::from("state"), 8);
        drop(alone);
        let mut later = locks.turn("Product/MUG".into()).await;
        assert_eq!(later.take::<String>(), None, "nobody waited: nothing kept");
        assert_eq!(later.take::<u32>(), None);
    }

    #[tokio::test]
    async fn a_caller_that_stops_waiting_leaves_nothing_behind() {
        let locks = StreamLocks::default();
        let first = locks.turn("Order/1".into()).await;
        let gave_up =
            tokio::time::timeout(Duration::from_millis(20), locks.turn("Order/1".into())).await;
        assert!(gave_up.is_err());
        drop(first);
        assert_eq!(locks.len(), 0);
    }
}
