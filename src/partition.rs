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
//!   key that found the map full. A scan that finds nothing idle is not
//!   repeated for a second, so invented keys cannot make every request scan
//!   the whole map. Invented keys therefore share one budget
//!   instead of each getting a fresh one, and a key gets its own state again
//!   as soon as room frees up.
//!
//! Requests without a key share the *unkeyed* state.

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use foldhash::fast::RandomState;
use hashbrown::HashTable;
use parking_lot::Mutex;
use tokio::time::{Duration, Instant};

use crate::request::PartitionKey;

/// State that can tell when it no longer matters.
pub(crate) trait Idle {
    /// Whether the state is back to what a new one would be (nothing
    /// reserved, nothing remembered), so dropping it loses nothing.
    fn is_idle(&self, now: Instant) -> bool;
}

const SHARDS: usize = 16;

/// After a scan for idle entries found none, new keys go to the overflow
/// state for this long before the next scan. Without it a client inventing
/// keys against a full map would make every request scan the whole map.
const RESCAN_AFTER: Duration = Duration::from_secs(1);

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

/// One lock-protected slice of the map.
type Shard<V> = Mutex<HashTable<Entry<V>>>;

/// 32 bytes (40 with a hash of its own): the state's pointer next to the
/// key, which keeps its hash (rehashing reads it there). A lookup with a
/// clone of the stored key compares the text pointers and clones the state:
/// two words of one small entry, in one cache line more often than in a
/// 40-byte entry.
#[repr(C)]
struct Entry<V> {
    state: Arc<V>,
    key: PartitionKey,
}

pub(crate) struct Partitions<V> {
    shards: Box<[Shard<V>]>,
    /// foldhash, seeded per map: several times faster than std's SipHash on
    /// short keys, and what `hashbrown` itself defaults to. It is only
    /// "minimally" DoS-resistant (a per-map random seed, no guarantee against
    /// an attacker who can probe timings), which is enough here: the map is
    /// bounded by `max` and split in shards, so colliding keys can slow
    /// lookups in one shard but not grow memory.
    hasher: RandomState,
    max: usize,
    /// Keys with their own state, across all shards. Slots are reserved
    /// before an insert, so the bound holds however many threads race.
    live: AtomicUsize,
    /// When a scan last found nothing to evict.
    fruitless_scan: Mutex<Option<Instant>>,
    unkeyed: Arc<V>,
    overflow: Arc<V>,
}

impl<V: Idle> Partitions<V> {
    /// A map of at most `max` keyed entries (at least one).
    ///
    /// `make` is called for the unkeyed state first, then the overflow one.
    pub(crate) fn new(max: usize, mut make: impl FnMut() -> V) -> Self {
        let unkeyed = Arc::new(make());
        let overflow = Arc::new(make());
        Partitions {
            shards: (0..SHARDS).map(|_| Mutex::new(HashTable::new())).collect(),
            hasher: RandomState::default(),
            max: max.max(1),
            live: AtomicUsize::new(0),
            fruitless_scan: Mutex::new(None),
            unkeyed,
            overflow,
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
        let hash = self.hasher.hash_one(key);
        let shard = self.shard(hash);
        if let Some(entry) = shard.lock().find(hash, |e| e.key == *key) {
            return (entry.state.clone(), Placement::Own);
        }
        if !self.reserve_slot() && (self.evict_idle_if_due(now) == 0 || !self.reserve_slot()) {
            return (self.overflow.clone(), Placement::Overflow);
        }
        let mut table = shard.lock();
        // Another caller may have inserted the key since the first look.
        if let Some(entry) = table.find(hash, |e| e.key == *key) {
            self.live.fetch_sub(1, Ordering::Relaxed);
            return (entry.state.clone(), Placement::Own);
        }
        let state = Arc::new(make());
        table.insert_unique(
            hash,
            Entry {
                state: state.clone(),
                key: key.clone(),
            },
            |e| self.hasher.hash_one(&e.key),
        );
        (state, Placement::Own)
    }

    /// Takes one of the `max` slots, if one is free.
    fn reserve_slot(&self) -> bool {
        self.live
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |live| {
                (live < self.max).then_some(live + 1)
            })
            .is_ok()
    }

    fn evict_idle_if_due(&self, now: Instant) -> usize {
        {
            let last = self.fruitless_scan.lock();
            if last.is_some_and(|at| now < at + RESCAN_AFTER) {
                return 0;
            }
        }
        let evicted = self.evict_idle(now);
        *self.fruitless_scan.lock() = (evicted == 0).then_some(now);
        evicted
    }

    /// Evicts every idle entry no request holds; returns how many went.
    pub(crate) fn evict_idle(&self, now: Instant) -> usize {
        let mut evicted = 0;
        for shard in self.shards.iter() {
            let mut table = shard.lock();
            let before = table.len();
            // An entry only the map holds, and that is idle, loses nothing
            // when dropped.
            table.retain(|e| Arc::strong_count(&e.state) > 1 || !e.state.is_idle(now));
            evicted += before - table.len();
        }
        self.live.fetch_sub(evicted, Ordering::AcqRel);
        evicted
    }

    /// The state of requests without a key (what `get(None, ..)` returns,
    /// borrowed: no reference count is touched).
    pub(crate) fn unkeyed(&self) -> &Arc<V> {
        &self.unkeyed
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
            for entry in shard.lock().iter() {
                f(Some(&entry.key), &entry.state);
            }
        }
    }

    /// The state of one key, if it has its own.
    pub(crate) fn peek(&self, key: &PartitionKey) -> Option<Arc<V>> {
        let hash = self.hasher.hash_one(key);
        self.shard(hash)
            .lock()
            .find(hash, |e| e.key == *key)
            .map(|e| e.state.clone())
    }

    fn shard(&self, hash: u64) -> &Shard<V> {
        // The table uses the low bits of the hash; take the shard from the
        // high ones so the two stay independent.
        &self.shards[(hash >> 58) as usize % SHARDS]
    }
}

impl<V> std::fmt::Debug for Partitions<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Partitions")
            .field("live", &self.live.load(Ordering::Relaxed))
            .field("max", &self.max)
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
        // A fruitless scan is not repeated at once: invented keys cannot make
        // every request scan the map.
        assert_eq!(map.get(Some(&b), now, busy).1, Placement::Overflow);
        let later = now + RESCAN_AFTER;
        assert_eq!(map.get(Some(&b), later, busy).1, Placement::Own);
        assert_eq!(map.len(), 1);
        assert!(map.peek(&a).is_none());
        assert_eq!(map.get(None, now, busy).1, Placement::Unkeyed);
    }

    #[test]
    fn the_bound_is_global_not_per_shard() {
        // Whatever shards the keys hash to, `max` keys get their own state.
        let now = Instant::now();
        for max in 1..40 {
            let map = Partitions::new(max, busy);
            for i in 0..max {
                let key = PartitionKey::from(format!("k{i}"));
                assert_eq!(map.get(Some(&key), now, busy).1, Placement::Own);
            }
            let extra = PartitionKey::from("one-too-many");
            assert_eq!(map.get(Some(&extra), now, busy).1, Placement::Overflow);
            assert_eq!(map.len(), max);
        }
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
        assert_eq!(map.len(), 100);
    }
}
