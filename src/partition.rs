//! Bounded per-partition state, shared by the keyed layers (rate windows,
//! circuit breakers).
//!
//! Each [`PartitionKey`] gets its own state, created on first use. Memory must
//! not grow with the number of distinct keys a client can invent, so the map
//! holds at most `max` keyed entries:
//!
//! - when a new key arrives and the map is full, entries that are idle (their
//!   state says so, and no request holds them) are evicted first;
//! - if none is idle, the new key shares one *overflow* state with every other
//!   key that found the map full. Invented keys therefore share one budget
//!   instead of each getting a fresh one, and a key gets its own state again
//!   as soon as room frees up.
//!
//! Requests without a key share the *unkeyed* state.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::time::Instant;

use crate::request::PartitionKey;

/// State that can tell when it no longer matters.
pub(crate) trait Idle {
    /// Whether the state is back to what a new one would be (nothing
    /// reserved, nothing remembered), so dropping it loses nothing.
    fn is_idle(&self, now: Instant) -> bool;
}

const SHARDS: usize = 16;

/// Which state a key was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Placement {
    /// Requests without a key.
    Unkeyed,
    /// The key's own state.
    Own,
    /// The map was full: the shared overflow state.
    Overflow,
}

pub(crate) struct Partitions<V> {
    #[allow(clippy::type_complexity)]
    shards: Box<[Mutex<HashMap<PartitionKey, Arc<V>>>]>,
    hasher: RandomState,
    per_shard: usize,
    live: AtomicUsize,
    unkeyed: Arc<V>,
    overflow: Arc<V>,
}

impl<V: Idle> Partitions<V> {
    /// A map of at most `max` keyed entries (at least one a shard).
    pub(crate) fn new(max: usize, mut make: impl FnMut() -> V) -> Self {
        let shards = SHARDS.min(max.max(1));
        Partitions {
            shards: (0..shards).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
            per_shard: max.max(1).div_ceil(shards),
            live: AtomicUsize::new(0),
            unkeyed: Arc::new(make()),
            overflow: Arc::new(make()),
        }
    }

    /// The state for `key`, created with `make` if it is new.
    pub(crate) fn get(
        &self,
        key: Option<&PartitionKey>,
        now: Instant,
        make: impl FnOnce() -> V,
    ) -> (Arc<V>, Placement) {
        let Some(key) = key else {
            return (self.unkeyed.clone(), Placement::Unkeyed);
        };
        let shard = &self.shards[self.shard_of(key)];
        let mut map = shard.lock();
        if let Some(state) = map.get(key) {
            return (state.clone(), Placement::Own);
        }
        if map.len() >= self.per_shard {
            let before = map.len();
            // An entry only the map holds, and that is idle, loses nothing
            // when dropped.
            map.retain(|_, state| Arc::strong_count(state) > 1 || !state.is_idle(now));
            self.live.fetch_sub(before - map.len(), Ordering::Relaxed);
            if map.len() >= self.per_shard {
                return (self.overflow.clone(), Placement::Overflow);
            }
        }
        let state = Arc::new(make());
        map.insert(key.clone(), state.clone());
        self.live.fetch_add(1, Ordering::Relaxed);
        (state, Placement::Own)
    }

    /// Evicts every idle entry no request holds; returns how many went.
    pub(crate) fn evict_idle(&self, now: Instant) -> usize {
        let mut evicted = 0;
        for shard in self.shards.iter() {
            let mut map = shard.lock();
            let before = map.len();
            map.retain(|_, state| Arc::strong_count(state) > 1 || !state.is_idle(now));
            evicted += before - map.len();
        }
        self.live.fetch_sub(evicted, Ordering::Relaxed);
        evicted
    }

    /// How many keys have their own state now.
    pub(crate) fn len(&self) -> usize {
        self.live.load(Ordering::Relaxed)
    }

    /// Visits every state: the unkeyed one, the overflow one and each key's.
    pub(crate) fn for_each(&self, mut f: impl FnMut(Option<&PartitionKey>, &Arc<V>)) {
        f(None, &self.unkeyed);
        f(None, &self.overflow);
        for shard in self.shards.iter() {
            for (key, state) in shard.lock().iter() {
                f(Some(key), state);
            }
        }
    }

    /// The state of one key, if it has its own.
    pub(crate) fn peek(&self, key: &PartitionKey) -> Option<Arc<V>> {
        self.shards[self.shard_of(key)].lock().get(key).cloned()
    }

    fn shard_of(&self, key: &PartitionKey) -> usize {
        (self.hasher.hash_one(key) as usize) % self.shards.len()
    }
}

impl<V> std::fmt::Debug for Partitions<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Partitions")
            .field("live", &self.live.load(Ordering::Relaxed))
            .field("max", &(self.per_shard * self.shards.len()))
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;

    struct State {
        idle: AtomicBool,
    }

    impl Idle for State {
        fn is_idle(&self, _now: Instant) -> bool {
            self.idle.load(Ordering::Relaxed)
        }
    }

    fn busy() -> State {
        State {
            idle: AtomicBool::new(false),
        }
    }

    #[test]
    fn full_map_sends_new_keys_to_overflow_and_evicts_idle_ones() {
        let now = Instant::now();
        let map = Partitions::new(1, busy);
        let a = PartitionKey::from("a");
        let b = PartitionKey::from("b");
        assert_eq!(map.get(Some(&a), now, busy).1, Placement::Own);
        assert_eq!(map.get(Some(&b), now, busy).1, Placement::Overflow);
        assert_eq!(map.len(), 1);
        // `a` is held by nobody but is busy: still not evicted.
        assert_eq!(map.get(Some(&b), now, busy).1, Placement::Overflow);
        map.peek(&a).unwrap().idle.store(true, Ordering::Relaxed);
        assert_eq!(map.get(Some(&b), now, busy).1, Placement::Own);
        assert_eq!(map.len(), 1);
        assert!(map.peek(&a).is_none());
        assert_eq!(map.get(None, now, busy).1, Placement::Unkeyed);
    }

    #[test]
    fn held_entries_are_never_evicted() {
        let now = Instant::now();
        let map = Partitions::new(1, busy);
        let a = PartitionKey::from("a");
        let (held, _) = map.get(Some(&a), now, busy);
        held.idle.store(true, Ordering::Relaxed);
        assert_eq!(map.evict_idle(now), 0);
        drop(held);
        assert_eq!(map.evict_idle(now), 1);
        assert_eq!(map.len(), 0);
    }

    #[test]
    fn bound_holds_for_many_invented_keys() {
        let now = Instant::now();
        let map = Partitions::new(100, busy);
        for i in 0..10_000 {
            let key = PartitionKey::from(format!("key-{i}"));
            map.get(Some(&key), now, busy);
        }
        assert!(map.len() <= 100 + SHARDS, "live {}", map.len());
    }
}
