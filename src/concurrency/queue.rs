//! The waiters' queue: a sorted map plus an append-only tail.
//!
//! Waiters are served in key order (see `Limiter::order_key`). Most new keys
//! are larger than every key already queued (one priority, arrival = now:
//! FIFO), and most grants take the smallest. A `BTreeMap` pays `O(log n)`
//! with a full node scan per level for exactly that case, so a key larger
//! than every queued key is appended to `tail`, a `VecDeque` that therefore
//! stays sorted; any other key (a higher priority, an older arrival) goes to
//! `sorted`. The queue is the merge of the two: its head is the smaller of
//! their heads. Single-priority traffic then queues and dequeues in `O(1)`;
//! mixed traffic is never worse than the map alone.
//!
//! Tail entries leave lazily: one granted or gone is marked in its node
//! (`GRANTED`/`LEFT`), counted out of `tail_live`, and dropped when it
//! reaches the front, or when dead entries outnumber live ones at an insert
//! (so the tail never holds more than twice the queue's peak length plus a
//! constant, and `max_queued` bounds that).

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use futures_util::task::AtomicWaker;
use tokio::time::Instant;

use crate::request::Priority;

/// A queue position: the static ordering key, then a sequence number that
/// breaks ties in arrival order and makes every key unique.
pub(super) type Key = (i64, u64);

/// What a waiter shares with the limiter: its state and its waker, both
/// readable without the lock, so a waiter's polls (the first, which
/// registers the waker, and the one that finds the permit) take no lock.
/// The state changes only under the limiter's lock.
pub(super) struct Node {
    pub(super) state: AtomicU8,
    pub(super) waker: AtomicWaker,
    /// The request's deadline, if it (not `max_queue_wait`) ends the wait:
    /// the node is then in the limiter's `deadlines` index.
    pub(super) deadline: Option<Instant>,
}

/// In the queue, waiting.
pub(super) const WAITING: u8 = 0;
/// Removed from the queue by a releaser: the permit is the waiter's.
pub(super) const GRANTED: u8 = 1;
/// The timer saw its time run out: still queued, skipped by releases, fails
/// when polled.
pub(super) const EXPIRED: u8 = 2;
/// Removed from the queue by its own waiter (dropped or failed).
pub(super) const LEFT: u8 = 3;

impl Node {
    pub(super) fn new(deadline: Option<Instant>) -> Self {
        Node {
            state: AtomicU8::new(WAITING),
            waker: AtomicWaker::new(),
            deadline,
        }
    }

    /// Under the lock: whether it still waits (not granted, expired or gone).
    pub(super) fn is_waiting(&self) -> bool {
        self.state.load(Ordering::Relaxed) == WAITING
    }

    /// Under the lock: marks it expired and takes its waker, if it waits.
    pub(super) fn expire(&self, wakers: &mut Vec<std::task::Waker>) {
        if self.is_waiting() {
            self.state.store(EXPIRED, Ordering::Release);
            wakers.extend(self.waker.take());
        }
    }

    /// Under the lock: whether it is still queued (waiting or expired).
    fn is_queued(&self) -> bool {
        matches!(self.state.load(Ordering::Relaxed), WAITING | EXPIRED)
    }
}

/// An entry of the tail: its key, when its `max_queue_wait` ends, its node.
struct TailEntry {
    key: Key,
    expires: Instant,
    node: Arc<Node>,
}

#[derive(Default)]
pub(super) struct Queue {
    sorted: BTreeMap<Key, Arc<Node>>,
    /// Sorted by key; every key larger than every key in `sorted` was at
    /// the time it was appended. Appended in arrival order, so also sorted
    /// by `expires`: the tail is its own FIFO of queue-wait expiries.
    tail: VecDeque<TailEntry>,
    /// Queued (not dead) entries of `tail`.
    tail_live: usize,
    /// The tail's front entries already passed by [`expire_tail`](Self::expire_tail)
    /// (or skipped as not waiting): their queue wait has been dealt with.
    tail_expired: usize,
    /// The priority of the entry at the tail's back (the last one appended).
    back_priority: Priority,
}

impl Queue {
    /// Waiters queued (waiting or expired).
    pub(super) fn len(&self) -> usize {
        self.sorted.len() + self.tail_live
    }

    pub(super) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether a node under `key` would go to the tail: its key is larger
    /// than every queued key.
    pub(super) fn fits_tail(&self, key: Key) -> bool {
        self.sorted.last_key_value().is_none_or(|(k, _)| key > *k)
            && self.tail.back().is_none_or(|e| key > e.key)
    }

    /// The key and priority of the tail's back entry (the last appended), if
    /// it holds the largest key queued.
    pub(super) fn last_in_tail(&self) -> Option<(Key, Priority)> {
        let back = self.tail.back()?;
        self.sorted
            .last_key_value()
            .is_none_or(|(k, _)| *k < back.key)
            .then_some((back.key, self.back_priority))
    }

    /// Appends a node to the tail; `key` must [fit](Self::fits_tail), and
    /// `expires` (when its queue wait ends) must be no earlier than that of
    /// any entry appended before.
    pub(super) fn push_tail(
        &mut self,
        key: Key,
        priority: Priority,
        expires: Instant,
        node: Arc<Node>,
    ) {
        debug_assert!(self.fits_tail(key));
        debug_assert!(self.tail.back().is_none_or(|e| e.expires <= expires));
        if self.tail.len() >= 2 * self.tail_live + 32 {
            let mut index = 0;
            let mut expired = 0;
            let passed = self.tail_expired;
            self.tail.retain(|e| {
                let keep = e.node.is_queued();
                if keep && index < passed {
                    expired += 1;
                }
                index += 1;
                keep
            });
            self.tail_expired = expired;
        }
        self.tail.push_back(TailEntry { key, expires, node });
        self.back_priority = priority;
        self.tail_live += 1;
    }

    /// Queues a node under a key that does not [fit](Self::fits_tail) the
    /// tail.
    pub(super) fn insert_sorted(&mut self, key: Key, node: Arc<Node>) {
        self.sorted.insert(key, node);
    }

    /// Takes a queued waiter out (it leaves); the caller marks its node
    /// `LEFT` right after. Returns whether it was queued.
    pub(super) fn remove(&mut self, key: Key, node: &Node, in_tail: bool) -> bool {
        if in_tail {
            if !node.is_queued() {
                return false;
            }
            self.tail_live -= 1;
            true
        } else {
            self.sorted.remove(&key).is_some()
        }
    }

    /// Takes the first waiter that still waits (skipping expired ones) out of
    /// the queue; the caller marks its node `GRANTED` right after.
    pub(super) fn pop_first_waiting(&mut self) -> Option<(Key, Arc<Node>)> {
        // The common case: one priority, the head still waits.
        if self.sorted.is_empty() {
            if let Some(front) = self.tail.front().filter(|e| e.node.is_waiting()) {
                let key = front.key;
                self.tail_live -= 1;
                return self.pop_tail_front().map(|node| (key, node));
            }
        }
        self.pop_dead_tail();
        let in_sorted = self
            .sorted
            .iter()
            .find(|(_, node)| node.is_waiting())
            .map(|(key, _)| *key);
        let in_tail = self
            .tail
            .iter()
            .position(|e| e.node.is_waiting())
            .map(|at| (at, self.tail[at].key));
        match (in_sorted, in_tail) {
            (Some(key), Some((_, tail_key))) if key < tail_key => self.sorted.remove_entry(&key),
            (Some(key), None) => self.sorted.remove_entry(&key),
            (_, Some((at, key))) => {
                self.tail_live -= 1;
                let node = if at == 0 {
                    self.pop_tail_front()
                } else {
                    Some(Arc::clone(&self.tail[at].node))
                };
                node.map(|node| (key, node))
            }
            (None, None) => None,
        }
    }

    /// The first node that still waits, in no particular order (any can
    /// take a duty such as arming the timer).
    pub(super) fn any_waiting(&self) -> Option<&Arc<Node>> {
        self.tail
            .iter()
            .map(|e| &e.node)
            .chain(self.sorted.values())
            .find(|node| node.is_waiting())
    }

    /// Drops dead entries from the front of the tail, and all of it once
    /// nothing is queued.
    pub(super) fn pop_dead_tail(&mut self) {
        if self.tail_live == 0 {
            self.tail.clear();
            self.tail_expired = 0;
            return;
        }
        while self.tail.front().is_some_and(|e| !e.node.is_queued()) {
            self.pop_tail_front();
        }
    }

    fn pop_tail_front(&mut self) -> Option<Arc<Node>> {
        let entry = self.tail.pop_front()?;
        self.tail_expired = self.tail_expired.saturating_sub(1);
        Some(entry.node)
    }

    /// The earliest queue-wait expiry of a tail entry that still waits.
    pub(super) fn next_tail_expiry(&mut self) -> Option<Instant> {
        while self
            .tail
            .get(self.tail_expired)
            .is_some_and(|e| !e.node.is_waiting())
        {
            self.tail_expired += 1;
        }
        self.tail.get(self.tail_expired).map(|e| e.expires)
    }

    /// Expires the tail entries whose queue wait ends by `now` (collecting
    /// their wakers).
    pub(super) fn expire_tail(&mut self, now: Instant, wakers: &mut Vec<std::task::Waker>) {
        while let Some(entry) = self.tail.get(self.tail_expired) {
            if entry.expires > now {
                break;
            }
            entry.node.expire(wakers);
            self.tail_expired += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Random inserts (mostly increasing keys, some smaller), grants, leaves
    /// and expiries against a `BTreeMap` model: the queue serves the same
    /// waiter first every time and counts the same length.
    #[test]
    fn serves_in_key_order_like_a_sorted_map() {
        let mut rng = fastrand::Rng::with_seed(7);
        let now = Instant::now();
        for _ in 0..50 {
            let mut queue = Queue::default();
            // key -> (node, in_tail)
            let mut model: BTreeMap<Key, (Arc<Node>, bool)> = BTreeMap::new();
            let mut seq = 0u64;
            let mut clock = 0i64;
            let mut peak = 0;
            for _ in 0..400 {
                match rng.u8(0..10) {
                    0..=4 => {
                        clock += rng.i64(0..3);
                        let order = if rng.u8(0..4) == 0 {
                            clock - rng.i64(0..50)
                        } else {
                            clock
                        };
                        let key = (order, seq);
                        seq += 1;
                        let node = Arc::new(Node::new(None));
                        let in_tail = queue.fits_tail(key);
                        if in_tail {
                            queue.push_tail(key, Priority::NORMAL, now, Arc::clone(&node));
                        } else {
                            queue.insert_sorted(key, Arc::clone(&node));
                        }
                        model.insert(key, (node, in_tail));
                    }
                    5..=6 => {
                        let expected = model
                            .iter()
                            .find(|(_, (node, _))| node.is_waiting())
                            .map(|(key, _)| *key);
                        let got = queue.pop_first_waiting().map(|(key, node)| {
                            node.state.store(GRANTED, Ordering::Relaxed);
                            key
                        });
                        assert_eq!(got, expected);
                        if let Some(key) = got {
                            model.remove(&key);
                        }
                        queue.pop_dead_tail();
                    }
                    7 => {
                        let pick = model.keys().nth(rng.usize(0..model.len().max(1)));
                        if let Some(key) = pick.copied() {
                            let (node, in_tail) = model.remove(&key).unwrap();
                            assert!(queue.remove(key, &node, in_tail));
                            node.state.store(LEFT, Ordering::Relaxed);
                            queue.pop_dead_tail();
                        }
                    }
                    _ => {
                        let pick = model.values().nth(rng.usize(0..model.len().max(1)));
                        if let Some((node, _)) = pick {
                            node.expire(&mut Vec::new());
                        }
                    }
                }
                assert_eq!(queue.len(), model.len());
                // Dead tail entries are bounded by the queue's peak length.
                peak = peak.max(model.len());
                assert!(queue.tail.len() <= 2 * peak + 33);
            }
        }
    }

    /// The tail's expiry cursor under random appends, grants, leaves,
    /// expiries and compactions: the next expiry it reports is always the
    /// earliest of the tail entries that still wait, and expiring up to a
    /// time marks exactly the waiting entries due by then.
    #[test]
    fn tail_expiries_follow_pops_and_compaction() {
        let mut rng = fastrand::Rng::with_seed(11);
        let start = Instant::now();
        for _ in 0..50 {
            let mut queue = Queue::default();
            // Every tail entry ever pushed: (expires, node).
            let mut pushed: Vec<(Instant, Arc<Node>, Key)> = Vec::new();
            let mut seq = 0u64;
            let mut clock = 0u64;
            let mut expired_to = start;
            for _ in 0..300 {
                match rng.u8(0..10) {
                    0..=4 => {
                        clock += rng.u64(0..3);
                        let key = (clock as i64, seq);
                        seq += 1;
                        let expires = start + std::time::Duration::from_millis(clock);
                        let node = Arc::new(Node::new(None));
                        assert!(queue.fits_tail(key));
                        queue.push_tail(key, Priority::NORMAL, expires, Arc::clone(&node));
                        pushed.push((expires, node, key));
                    }
                    5 | 6 => {
                        if let Some((_, node)) = queue.pop_first_waiting() {
                            node.state.store(GRANTED, Ordering::Relaxed);
                        }
                        queue.pop_dead_tail();
                    }
                    7 => {
                        let live: Vec<_> = pushed.iter().filter(|e| e.1.is_queued()).collect();
                        if !live.is_empty() {
                            let (_, node, key) = live[rng.usize(0..live.len())];
                            assert!(queue.remove(*key, node, true));
                            node.state.store(LEFT, Ordering::Relaxed);
                            queue.pop_dead_tail();
                        }
                    }
                    _ => {
                        let to = start + std::time::Duration::from_millis(rng.u64(0..=clock + 1));
                        let to = to.max(expired_to);
                        let mut wakers = Vec::new();
                        queue.expire_tail(to, &mut wakers);
                        expired_to = to;
                        for (expires, node, _) in &pushed {
                            if *expires <= to {
                                assert!(!node.is_waiting(), "an entry due was not expired");
                            }
                        }
                    }
                }
                let expected = pushed
                    .iter()
                    .filter(|(_, node, _)| node.is_waiting())
                    .map(|(at, _, _)| *at)
                    .min();
                assert_eq!(queue.next_tail_expiry(), expected);
            }
        }
    }
}
