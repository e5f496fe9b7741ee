//! Commands on one stream, within a process: queued, and served by one
//! worker at a time.
//!
//! Concurrent commands on one aggregate (every order of a sale reserving one
//! product) would each load the stream, decide, and all but one lose the
//! append race and load it again: work that grows with the square of the
//! writers. Here they queue on their stream instead. While a stream has
//! commands queued, one worker task serves it: it takes every command queued
//! at that moment, decides them one after another on the aggregate, and
//! appends what they decided together (see `dispatch`). Only writers in
//! other processes still race.
//!
//! The worker keeps the aggregate as its last round left it, so the next
//! round decides on it without loading the stream; once nothing is queued,
//! the worker stops and the aggregate moves to a bounded cache of the
//! streams used last, where the next worker on the stream finds it.

use std::any::Any;
use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use lru::LruCache;

/// Something type-erased: a queued command, or a kept aggregate with its
/// version. The stream's name includes its aggregate type, so whoever takes
/// it out knows its type.
pub(crate) type Boxed = Box<dyn Any + Send>;

/// Streams whose last aggregate a [`Streams`] keeps by default.
pub(crate) const DEFAULT_KEPT_STREAMS: usize = 1024;

/// Commands queued per stream, and the aggregates of the streams used last.
#[derive(Debug, Clone)]
pub(crate) struct Streams {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Debug)]
struct Inner {
    /// Streams a worker serves, with what is queued for it.
    served: HashMap<String, Vec<Boxed>>,
    /// Kept aggregates of streams no worker serves, least recently used
    /// first out.
    recent: Option<LruCache<String, Boxed>>,
}

impl Default for Streams {
    fn default() -> Self {
        Self::keeping(DEFAULT_KEPT_STREAMS)
    }
}

impl Streams {
    /// Streams that keep the aggregates of the `streams` streams used last
    /// once no worker serves them (0: only while a worker serves them).
    pub(crate) fn keeping(streams: usize) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Inner {
                served: HashMap::new(),
                recent: NonZeroUsize::new(streams).map(LruCache::new),
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `job` on `stream`. When no worker serves the stream yet, the
    /// caller must start one: it gets the stream's [`Serving`] (with the
    /// aggregate kept for it, if any), and the job waits for it.
    pub(crate) fn push(&self, stream: &str, job: Boxed) -> Option<Serving> {
        let mut inner = self.lock();
        if let Some(queued) = inner.served.get_mut(stream) {
            queued.push(job);
            return None;
        }
        inner.served.insert(stream.to_owned(), vec![job]);
        let kept = inner.recent.as_mut().and_then(|recent| recent.pop(stream));
        Some(Serving {
            streams: self.clone(),
            stream: stream.to_owned(),
            kept,
            done: false,
        })
    }

    /// Keeps `kept` (an aggregate with its version) for `stream`, unless a
    /// worker serves the stream or a copy is kept already.
    pub(crate) fn offer(&self, stream: &str, kept: impl FnOnce() -> Boxed) {
        let mut inner = self.lock();
        if inner.served.contains_key(stream) {
            return;
        }
        if let Some(recent) = inner.recent.as_mut()
            && !recent.contains(stream)
        {
            recent.put(stream.to_owned(), kept());
        }
    }

    #[cfg(test)]
    fn cached(&self) -> usize {
        self.lock().recent.as_ref().map_or(0, LruCache::len)
    }

    #[cfg(test)]
    fn served(&self) -> usize {
        self.lock().served.len()
    }
}

/// A worker's hold on its stream. Dropped (the worker ended, or panicked),
/// it stops serving the stream: what is still queued is dropped, so that
/// its callers learn that nobody will answer, and the next command starts a
/// new worker.
#[derive(Debug)]
pub(crate) struct Serving {
    streams: Streams,
    stream: String,
    kept: Option<Boxed>,
    done: bool,
}

impl Serving {
    /// The aggregate the stream's last worker left, with its version.
    pub(crate) fn take_kept(&mut self) -> Option<Boxed> {
        self.kept.take()
    }

    /// Up to `max` of the jobs queued since the last call, oldest first.
    /// When none is queued, the worker is done: what `keep` gives (the
    /// aggregate the worker leaves, the fold of committed events only) goes
    /// to the cache and `None` comes back.
    pub(crate) fn next(
        &mut self,
        max: usize,
        keep: impl FnOnce() -> Option<Boxed>,
    ) -> Option<Vec<Boxed>> {
        let mut inner = self.streams.lock();
        let queued = inner.served.get_mut(&self.stream)?;
        if queued.is_empty() {
            inner.served.remove(&self.stream);
            if let (Some(kept), Some(recent)) = (keep(), inner.recent.as_mut()) {
                recent.put(self.stream.clone(), kept);
            }
            self.done = true;
            return None;
        }
        let taken = queued.len().min(max.max(1));
        Some(queued.drain(..taken).collect())
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        if !self.done {
            // The jobs are dropped outside the lock: dropping one answers
            // its caller (the reply channel closes).
            let orphans = self.streams.lock().served.remove(&self.stream);
            drop(orphans);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(n: u32) -> Boxed {
        Box::new(n)
    }

    fn numbers(jobs: Vec<Boxed>) -> Vec<u32> {
        jobs.into_iter()
            .map(|job| *job.downcast::<u32>().unwrap())
            .collect()
    }

    #[test]
    fn the_first_command_on_an_idle_stream_starts_its_worker_and_the_rest_queue() {
        let streams = Streams::default();
        let mut serving = streams
            .push("Product/MUG", job(1))
            .expect("a worker starts");
        assert!(
            streams.push("Product/MUG", job(2)).is_none(),
            "one worker per stream"
        );
        assert!(streams.push("Product/MUG", job(3)).is_none());
        let other = streams.push("Product/TEA", job(9));
        assert!(other.is_some(), "another stream has a worker of its own");
        assert_eq!(
            numbers(serving.next(2, || None).unwrap()),
            vec![1, 2],
            "oldest first, at most max"
        );
        assert!(streams.push("Product/MUG", job(4)).is_none());
        assert_eq!(numbers(serving.next(64, || None).unwrap()), vec![3, 4]);
        assert!(
            serving.next(64, || None).is_none(),
            "nothing queued: the worker is done"
        );
        assert!(
            streams.push("Product/MUG", job(5)).is_some(),
            "the next command starts a new worker"
        );
    }

    #[test]
    fn a_finished_worker_leaves_its_aggregate_to_the_next_one() {
        let streams = Streams::keeping(2);
        for (stream, version) in [
            ("Product/MUG", 3u64),
            ("Product/TEA", 4),
            ("Product/CUP", 5),
        ] {
            let mut serving = streams.push(stream, job(0)).unwrap();
            assert!(serving.take_kept().is_none());
            serving.next(64, || None).unwrap();
            assert!(serving.next(64, || Some(Box::new(version))).is_none());
        }
        assert_eq!(streams.served(), 0);
        assert_eq!(streams.cached(), 2, "at most as many as asked");
        let mut oldest = streams.push("Product/MUG", job(0)).unwrap();
        assert!(
            oldest.take_kept().is_none(),
            "the least recently used left first"
        );
        let mut kept = streams.push("Product/TEA", job(0)).unwrap();
        let version = kept.take_kept().unwrap().downcast::<u64>().unwrap();
        assert_eq!(*version, 4);
        assert!(kept.take_kept().is_none(), "taken once");
    }

    #[test]
    fn an_offered_aggregate_is_kept_only_where_nothing_is() {
        let streams = Streams::keeping(8);
        streams.offer("Order/1", || Box::new(1u64));
        streams.offer("Order/1", || Box::new(9u64));
        let mut serving = streams.push("Order/1", job(0)).unwrap();
        streams.offer("Order/1", || Box::new(9u64));
        let kept = serving.take_kept().unwrap().downcast::<u64>().unwrap();
        assert_eq!(*kept, 1, "the first offer stands; none while served");
        serving.next(64, || None).unwrap();
        assert!(serving.next(64, || None).is_none());
        assert_eq!(streams.cached(), 0);
    }

    #[test]
    fn a_worker_that_keeps_nothing_leaves_no_stale_aggregate_behind() {
        let streams = Streams::keeping(8);
        let mut first = streams.push("Order/1", job(0)).unwrap();
        first.next(64, || None).unwrap();
        assert!(first.next(64, || Some(Box::new(1u64))).is_none());
        let mut failed = streams.push("Order/1", job(0)).unwrap();
        assert!(failed.take_kept().is_some());
        failed.next(64, || None).unwrap();
        // Its command failed: it keeps nothing, and the stream is loaded
        // afresh after it.
        assert!(failed.next(64, || None).is_none());
        assert_eq!(streams.cached(), 0);
        let mut next = streams.push("Order/1", job(0)).unwrap();
        assert!(next.take_kept().is_none());
    }

    #[test]
    fn a_worker_that_dies_drops_what_is_queued_and_frees_the_stream() {
        let streams = Streams::default();
        let (answer, answered) = tokio::sync::oneshot::channel::<()>();
        let serving = streams.push("Order/1", Box::new(answer)).unwrap();
        drop(serving);
        assert!(
            answered.blocking_recv().is_err(),
            "the queued caller learns that nobody will answer"
        );
        assert_eq!(streams.served(), 0);
        assert!(
            streams.push("Order/1", job(1)).is_some(),
            "the next command starts a new worker"
        );
    }
}
