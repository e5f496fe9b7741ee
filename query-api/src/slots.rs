//! What each caller holds at once (open connections, connections not yet
//! signed in, queries waiting for `afterPosition`), counted per caller so
//! that no caller can take what every other one needs. A slot is given back
//! when it is dropped.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex, PoisonError};

/// Counts of held slots, by caller. Cheap to clone.
#[derive(Debug)]
pub struct Slots<K>(Arc<Mutex<HashMap<K, usize>>>);

impl<K> Clone for Slots<K> {
    fn clone(&self) -> Self {
        Self(Arc::clone(&self.0))
    }
}

impl<K> Default for Slots<K> {
    fn default() -> Self {
        Self(Arc::default())
    }
}

impl<K: Hash + Eq + Clone> Slots<K> {
    /// One more slot for `key`, unless it holds `max` already.
    pub fn take(&self, key: K, max: usize) -> Option<Slot<K>> {
        let mut held = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let count = held.entry(key.clone()).or_default();
        if *count >= max {
            if *count == 0 {
                held.remove(&key);
            }
            return None;
        }
        *count += 1;
        Some(Slot {
            slots: self.clone(),
            key,
        })
    }

    /// How many slots `key` holds.
    pub fn held(&self, key: &K) -> usize {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key)
            .copied()
            .unwrap_or(0)
    }
}

/// One slot of a caller's; given back when dropped.
#[derive(Debug)]
pub struct Slot<K: Hash + Eq + Clone> {
    slots: Slots<K>,
    key: K,
}

impl<K: Hash + Eq + Clone> Drop for Slot<K> {
    fn drop(&mut self) {
        let mut held = self.slots.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = held.get_mut(&self.key) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                held.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_caller_holds_at_most_its_share_and_gets_it_back() {
        let slots = Slots::default();
        let first = slots.take("a", 2).expect("one");
        let _second = slots.take("a", 2).expect("two");
        assert!(slots.take("a", 2).is_none());
        assert!(
            slots.take("b", 2).is_some(),
            "another caller is not held up"
        );
        drop(first);
        assert_eq!(slots.held(&"a"), 1);
        assert!(slots.take("a", 2).is_some());
        assert!(slots.take("c", 0).is_none());
        assert_eq!(slots.held(&"c"), 0);
    }
}
