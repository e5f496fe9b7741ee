//! One command at a time per stream, within a process.
//!
//! Concurrent commands on one aggregate (every order of a sale reserving one
//! product) would each load the stream, decide, and all but one lose the
//! append race and load it again: work that grows with the square of the
//! writers. Queued on a per-stream lock, they run one after another instead,
//! each on a fresh load, and only writers in other processes still race.
//!
//! The lock also keeps the aggregate as the last turn left it, so the next
//! turn reads only the events appended since (by another process) instead
//! of loading the stream: while a stream has a queue the copy passes from
//! turn to turn, and once nobody waits it moves to a bounded cache of the
//! streams used last, where the next turn on the stream finds it.

use std::any::Any;
use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex, PoisonError};

use lru::LruCache;

/// An aggregate and the version it is at: the fold of its events up to then.
type Kept = Option<Box<dyn Any + Send>>;
type Locks = Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<Kept>>>>>;
/// Kept aggregates of streams nobody holds, the least recently used first out.
type Recent = Arc<Mutex<LruCache<String, Box<dyn Any + Send>>>>;

/// Streams whose last aggregate a [`StreamLocks`] keeps by default.
pub(crate) const DEFAULT_KEPT_STREAMS: usize = 1024;

/// A lock per stream name, kept only while someone holds or waits for it,
/// and the aggregates of the streams used last.
#[derive(Debug, Clone)]
pub(crate) struct StreamLocks {
    locks: Locks,
    recent: Option<Recent>,
}

impl Default for StreamLocks {
    fn default() -> Self {
        Self::keeping(DEFAULT_KEPT_STREAMS)
    }
}

/// Held while a command runs on its stream; dropping it lets the next one in.
#[derive(Debug)]
pub(crate) struct StreamTurn {
    locks: Locks,
    recent: Option<Recent>,
    stream: String,
    held: Option<tokio::sync::OwnedMutexGuard<Kept>>,
}

impl StreamLocks {
    /// Locks that keep the aggregates of the `streams` streams used last
    /// once nobody waits for them (0: only while someone waits).
    pub(crate) fn keeping(streams: usize) -> Self {
        Self {
            locks: Locks::default(),
            recent: NonZeroUsize::new(streams).map(|n| Arc::new(Mutex::new(LruCache::new(n)))),
        }
    }

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
            recent: self.recent.clone(),
            stream,
            held: None,
        };
        let mut held = lock.lock_owned().await;
        if held.is_none()
            && let Some(recent) = &self.recent
        {
            *held = recent
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .pop(&turn.stream);
        }
        turn.held = Some(held);
        turn
    }

    #[cfg(test)]
    fn cached(&self) -> usize {
        self.recent.as_ref().map_or(0, |recent| {
            recent.lock().unwrap_or_else(PoisonError::into_inner).len()
        })
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
        // Nobody takes a new reference to the lock without the map's lock.
        let mut locks = self.locks.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(mut held) = self.held.take() else {
            // Gave up waiting: remove the lock if nobody else wants it.
            if locks
                .get(&self.stream)
                .is_some_and(|lock| Arc::strong_count(lock) == 1)
            {
                locks.remove(&self.stream);
            }
            return;
        };
        // The map's reference and this turn's: nobody waits, so the kept
        // aggregate moves to the cache and the lock goes.
        if locks
            .get(&self.stream)
            .is_some_and(|lock| Arc::strong_count(lock) == 2)
        {
            let kept = held.take();
            drop(held);
            locks.remove(&self.stream);
            if let (Some(kept), Some(recent)) = (kept, &self.recent) {
                recent
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .put(std::mem::take(&mut self.stream), kept);
            }
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
    async fn without_a_cache_a_kept_aggregate_passes_to_the_next_turn_only_while_someone_waits() {
        let locks = StreamLocks::keeping(0);
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
    async fn the_streams_used_last_keep_their_aggregate_once_nobody_waits() {
        let locks = StreamLocks::keeping(2);
        for (stream, version) in [("Product/MUG", 3), ("Product/TEA", 4), ("Product/CUP", 5)] {
            let mut turn = locks.turn(stream.into()).await;
            turn.keep(String::from(stream), version);
        }
        assert_eq!(locks.len(), 0, "the locks go, the aggregates stay");
        assert_eq!(locks.cached(), 2, "at most as many as asked");
        let mut oldest = locks.turn("Product/MUG".into()).await;
        assert_eq!(
            oldest.take::<String>(),
            None,
            "the least recently used left first"
        );
        drop(oldest);
        let mut kept = locks.turn("Product/TEA".into()).await;
        assert_eq!(kept.take::<String>(), Some(("Product/TEA".to_owned(), 4)));
        drop(kept);
        let mut taken = locks.turn("Product/TEA".into()).await;
        assert_eq!(
            taken.take::<String>(),
            None,
            "a taken aggregate is not kept twice"
        );
        drop(taken);
        let mut last = locks.turn("Product/CUP".into()).await;
        assert_eq!(last.take::<String>(), Some(("Product/CUP".to_owned(), 5)));
    }

    #[tokio::test]
    async fn a_turn_that_keeps_nothing_leaves_no_stale_aggregate_behind() {
        let locks = StreamLocks::keeping(8);
        let mut first = locks.turn("Order/1".into()).await;
        first.keep(String::from("v1"), 1);
        drop(first);
        // The next turn takes the aggregate and keeps nothing (its command
        // failed): the stream is loaded afresh after it.
        let mut failed = locks.turn("Order/1".into()).await;
        assert_eq!(failed.take::<String>(), Some(("v1".to_owned(), 1)));
        drop(failed);
        assert_eq!(locks.cached(), 0);
        let mut next = locks.turn("Order/1".into()).await;
        assert_eq!(next.take::<String>(), None);
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
