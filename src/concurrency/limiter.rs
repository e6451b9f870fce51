//! The shared limiter state: free permits and the priority queue, under one
//! lock, plus the RAII values that own a permit or a queue entry.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Once, Weak};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use parking_lot::{Mutex, MutexGuard};
use tokio::time::{Instant, Sleep};

use super::queue::{Key, Node, Queue, GRANTED, LEFT, WAITING};
use crate::clock;
use crate::request::{LlmRequest, Priority};
use crate::stats::Stats;
use crate::telemetry::{self, Counter, Gauge, Histogram, Scope};
use crate::Error;

/// The settings of one limiter, validated by the builder.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Config {
    pub(crate) max_in_flight: usize,
    pub(crate) max_queued: usize,
    pub(crate) max_queue_wait: Duration,
    pub(crate) aging: Option<Duration>,
}

/// Times in ordering keys are microseconds from the limiter's creation,
/// clamped to ±(2^53 - 1) µs (about 285 years), and so is `aging`: every key
/// then fits an `i64` with room to spare (|key| < 2^62).
const TIME_CLAMP: i64 = (1 << 53) - 1;
/// The no-aging key puts the priority above bit 54, the arrival time below.
const PRIORITY_SHIFT: u32 = 54;
/// How far (in arrival time) a request's key may fall behind the last one
/// queued, at the same priority, and still be queued after it; see
/// [`Limiter::order_key`].
const HANDOFF_SLACK_MICROS: i64 = 1_000;

/// A duration in whole microseconds, clamped to `TIME_CLAMP`.
fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).map_or(TIME_CLAMP, |us| us.min(TIME_CLAMP))
}

/// The permit word: the free permits times `ONE`, plus `WAITERS` while the
/// queue may hold entries.
///
/// Free permits are taken with one compare-and-swap, without the lock. The
/// `WAITERS` bit is set and cleared only under the lock, set before an entry
/// is inserted and cleared once the queue is empty; a release puts a permit
/// back without the lock only while the bit is clear (one compare-and-swap on
/// the whole word, so a bit set in between makes it fail and take the lock).
/// Hence the invariant: free permits (`word >= ONE`) imply no *live* waiter
/// (one whose time has not run out), because while anyone waits, a freed
/// permit goes to the first live waiter, under the lock.
const WAITERS: usize = 1;
const ONE: usize = 2;
/// The most permits the word can count.
pub(crate) const MAX_PERMITS: usize = usize::MAX / ONE;

/// Under the limiter's lock. `repr(C)` keeps what every enqueue and
/// release touches (the queue, the sequence, the last wait end and the
/// timer's instant) on the two cache lines after the lock's byte, ahead of
/// what only timeouts, deadlines and mixed priorities need: a lock handed
/// from one core to the other then pulls two lines, not three.
#[repr(C)]
struct State {
    /// Waiters by position. Every waiter in it is `WAITING` or `EXPIRED`;
    /// one removed by a releaser has been `GRANTED` a permit.
    queue: Queue,
    next_seq: u64,
    /// The latest `max_queue_wait` end handed out: later ones are clamped
    /// to at least this, so both FIFOs stay in order even if the clock
    /// steps back or two threads read it in one order and lock in the other.
    last_wait_end: Option<Instant>,
    /// What `timer` is armed for.
    timer_at: Option<Instant>,
    /// The waiters outside the queue's tail whose wait ends after
    /// `max_queue_wait`, in arrival order, which is also the order their
    /// time runs out (see `last_wait_end`): a FIFO instead of a sorted
    /// index. (The tail is in arrival order too and keeps its own expiries.)
    /// Entries are removed lazily: one whose node is no longer `WAITING` is
    /// dropped when it reaches the front, or when dead entries outnumber
    /// live ones (so it stays within twice the queue plus a constant).
    waits: VecDeque<(Instant, Arc<Node>)>,
    /// The waiters whose own deadline ends the wait, by `(deadline, seq)`:
    /// removed eagerly, so all are `WAITING`.
    deadlines: BTreeMap<(Instant, u64), Arc<Node>>,
    /// The one timer of this limiter, armed for the earliest expiry.
    timer: Option<Pin<Box<Sleep>>>,
}

impl State {
    /// Drops dead entries from the front of `waits`.
    fn pop_dead_waits(&mut self) {
        while self
            .waits
            .front()
            .is_some_and(|(_, node)| !node.is_waiting())
        {
            self.waits.pop_front();
        }
    }

    /// The earliest time a waiter's wait ends, if anyone waits with one.
    fn next_expiry(&mut self) -> Option<Instant> {
        self.pop_dead_waits();
        let wait = self.waits.front().map(|(at, _)| *at);
        let tail = self.queue.next_tail_expiry();
        let deadline = self.deadlines.first_key_value().map(|(k, _)| k.0);
        [wait, tail, deadline].into_iter().flatten().min()
    }

    /// Takes the waker of a waiting waiter, to hand it a duty (arm the
    /// timer). One never polled has none yet, but will poll.
    fn first_waiting_waker(&self) -> Option<Waker> {
        self.queue.any_waiting().and_then(|node| node.waker.take())
    }
}

/// Keeps a value on cache lines of its own: the permit word and the lock are
/// written by every core, the settings next to them only read.
#[repr(align(64))]
struct Padded<T>(T);

impl<T> std::ops::Deref for Padded<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

/// One concurrency limiter. Every clone of a service (and, for a shared
/// layer, every service the layer made) points to the same one.
///
/// Its `Padded` fields align it to 64 bytes, which also puts it on a cache
/// line apart from its `Arc`'s reference counts (written by every clone and
/// drop of a service, permit or waiter on any core): reading the settings
/// then misses no cache line.
pub(crate) struct Limiter {
    /// Free permits and the `WAITERS` bit, see [`WAITERS`].
    permits: Padded<AtomicUsize>,
    state: Padded<Mutex<State>>,
    config: Config,
    /// `aging` in microseconds (at least 1); `None` for strict priority.
    aging_micros: Option<i64>,
    /// [`HANDOFF_SLACK_MICROS`] in ordering-key units.
    handoff_slack: i64,
    /// Instants are turned into signed nanoseconds from here.
    epoch: Instant,
    metrics: Metrics,
    /// Registered with `timer`; runs [`Limiter::on_timer`].
    timer_waker: Waker,
    /// Set (under the lock) when the timer must be armed for an earlier
    /// expiry than it is armed for; the next waiter poll that sees it arms
    /// the timer (from the waiter's runtime) and clears it. Polls that do
    /// not see it take no lock.
    arm_pending: AtomicBool,
}

/// Wakes the limiter when its timer fires.
struct TimerWake(Weak<Limiter>);

impl Wake for TimerWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if let Some(limiter) = self.0.upgrade() {
            limiter.on_timer();
        }
    }
}

/// What `call` got from the limiter.
pub(crate) enum Admission {
    /// A permit was free and nobody was waiting.
    Permit(Permit),
    /// The request joined the queue.
    Queued(Waiter),
    /// The request was refused at once.
    Rejected(Error),
}

impl Limiter {
    pub(crate) fn new(config: Config, metrics: Metrics) -> Arc<Self> {
        Arc::new_cyclic(|weak| Limiter {
            permits: Padded(AtomicUsize::new(
                config.max_in_flight.min(MAX_PERMITS) * ONE,
            )),
            state: Padded(Mutex::new(State {
                queue: Queue::default(),
                waits: VecDeque::new(),
                last_wait_end: None,
                deadlines: BTreeMap::new(),
                timer: None,
                timer_at: None,
                next_seq: 0,
            })),
            aging_micros: config.aging.map(|a| micros(a).max(1)),
            handoff_slack: match config.aging {
                Some(_) => HANDOFF_SLACK_MICROS * i64::from(Priority::LEVEL),
                None => HANDOFF_SLACK_MICROS,
            },
            config,
            epoch: Instant::now(),
            metrics,
            timer_waker: Waker::from(Arc::new(TimerWake(weak.clone()))),
            arm_pending: AtomicBool::new(false),
        })
    }

    /// Admits, queues or rejects a request. Never blocks; when a permit is
    /// free, takes it with one compare-and-swap: no lock, no allocation, and
    /// no clock read unless the request has a deadline (then one, to reject
    /// it if it is already past, shared with the layers around: see
    /// `crate::clock`). A free permit means nobody live is waiting, so
    /// taking it barges past no one.
    #[inline]
    pub(crate) fn admit<R: LlmRequest>(self: &Arc<Self>, request: &R) -> Admission {
        let deadline = request.deadline();
        if let Some(deadline) = deadline {
            if deadline <= clock::now() {
                return self.reject(
                    Error::DeadlineExceeded,
                    Reason::Deadline,
                    request.priority(),
                );
            }
        }
        if self.try_acquire() {
            return Admission::Permit(self.fresh_permit());
        }
        self.enqueue(request.priority(), request.arrival(), deadline)
    }

    /// The slow path of admission, under the lock: tries again (a permit
    /// may have been released since), else joins the queue, marking it
    /// non-empty first, or is shed.
    #[inline(never)]
    fn enqueue(
        self: &Arc<Self>,
        priority: Priority,
        arrival: Option<Instant>,
        deadline: Option<Instant>,
    ) -> Admission {
        // Outside the lock: the clock read (shared with the layers around
        // through `crate::clock`), the key's arithmetic and the allocation.
        let now = clock::now();
        let order = self.order_key(priority, arrival.unwrap_or(now));
        let wait_end = now + self.config.max_queue_wait;
        let deadline = deadline.filter(|deadline| *deadline <= wait_end);
        let node = Arc::new(Node::new(deadline));
        let queued_node = Arc::clone(&node);

        let mut guard = self.state.lock();
        let state = &mut *guard;
        let queued = state.queue.len();
        if queued >= self.config.max_queued {
            if self.try_acquire() {
                drop(guard);
                return Admission::Permit(self.fresh_permit());
            }
            drop(guard);
            return self.reject(Error::Overloaded { queued }, Reason::QueueFull, priority);
        }
        if self.acquire_or_mark_waiters() {
            drop(guard);
            return Admission::Permit(self.fresh_permit());
        }
        let seq = state.next_seq;
        state.next_seq += 1;
        let mut key = (order, seq);
        let mut in_tail = state.queue.fits_tail(key);
        if !in_tail {
            // Concurrent calls read the clock before they take the lock, so
            // one may come a hair behind the last key queued: queue it after
            // that one (in the order the lock was taken), in the tail,
            // rather than in the sorted map (see `order_key`).
            if let Some(((last, _), last_priority)) = state.queue.last_in_tail() {
                if last_priority == priority && last - order <= self.handoff_slack {
                    key = (last, seq);
                    in_tail = true;
                }
            }
        }
        // Keep the FIFOs of queue waits in order (see `last_wait_end`).
        let wait_end = state
            .last_wait_end
            .map_or(wait_end, |last| wait_end.max(last));
        state.last_wait_end = Some(wait_end);
        let expires = match deadline {
            Some(deadline) => {
                state
                    .deadlines
                    .insert((deadline, seq), Arc::clone(&queued_node));
                deadline
            }
            None => wait_end,
        };
        if in_tail {
            // The tail keeps the queue-wait expiry itself; for a deadline-
            // bound waiter it is no earlier than the deadline, so a no-op.
            state.queue.push_tail(key, priority, wait_end, queued_node);
        } else {
            if deadline.is_none() {
                if state.waits.len() >= 2 * queued + 32 {
                    state.waits.retain(|(_, node)| node.is_waiting());
                }
                state.waits.push_back((wait_end, Arc::clone(&queued_node)));
            }
            state.queue.insert_sorted(key, queued_node);
        }
        if state.timer_at.is_none_or(|at| expires < at) {
            self.arm_pending.store(true, Ordering::Release);
        }
        drop(guard);
        self.metrics.queue_depth.increment(1.0);

        Admission::Queued(Waiter {
            held: Some(Held {
                limiter: Arc::clone(self),
                node,
            }),
            key,
            in_tail,
            enqueued: now,
            priority,
            deadline_bound: deadline.is_some(),
        })
    }

    /// Takes a free permit, if any, without the lock.
    #[inline]
    fn try_acquire(&self) -> bool {
        let mut word = self.permits.load(Ordering::Relaxed);
        while word >= ONE {
            match self.permits.compare_exchange_weak(
                word,
                word - ONE,
                Ordering::Acquire,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(actual) => word = actual,
            }
        }
        false
    }

    /// Under the lock: takes a free permit if there is one, else sets the
    /// `WAITERS` bit (so that releases from now on take the lock and see
    /// the entry about to be inserted).
    fn acquire_or_mark_waiters(&self) -> bool {
        let mut word = self.permits.load(Ordering::Relaxed);
        loop {
            let (new, acquired) = if word >= ONE {
                (word - ONE, true)
            } else if word & WAITERS == 0 {
                (word | WAITERS, false)
            } else {
                return false;
            };
            match self
                .permits
                .compare_exchange_weak(word, new, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return acquired,
                Err(actual) => word = actual,
            }
        }
    }

    /// Under the lock: clears the `WAITERS` bit (and the dead entries of
    /// `waits`) once the queue is empty.
    fn unmark_if_empty(&self, state: &mut State) {
        if state.queue.is_empty() {
            self.permits.fetch_and(!WAITERS, Ordering::Release);
            state.waits.clear();
            state.queue.pop_dead_tail();
        }
    }

    /// Under the lock: removes a waiter's entry (it leaves: dropped, or
    /// failed after expiring).
    fn remove_waiter(&self, state: &mut State, node: &Node, key: Key, in_tail: bool) {
        if !state.queue.remove(key, node, in_tail) {
            return;
        }
        node.state.store(LEFT, Ordering::Release);
        if let Some(deadline) = node.deadline {
            state.deadlines.remove(&(deadline, key.1));
        }
        state.queue.pop_dead_tail();
        state.pop_dead_waits();
        self.unmark_if_empty(state);
    }

    #[inline]
    fn fresh_permit(self: &Arc<Self>) -> Permit {
        self.metrics.admitted.increment(1);
        self.metrics.in_flight.increment(1.0);
        self.metrics.queue_wait.record(0.0);
        self.metrics.stats_queue_wait(Duration::ZERO);
        Permit {
            limiter: Arc::clone(self),
        }
    }

    fn reject(&self, error: Error, reason: Reason, priority: Priority) -> Admission {
        self.metrics.rejected(reason, priority).increment(1);
        tracing::debug!(
            layer = "concurrency",
            reason = reason.as_str(),
            priority = priority.level_name(),
            "request rejected: {error}"
        );
        Admission::Rejected(error)
    }

    /// The static ordering key (lower is served first).
    ///
    /// With aging, the effective priority at time `t` is
    /// `p + (t - arrival) * LEVEL / aging`. Comparing two waiters at the same
    /// `t`, the `t` terms cancel, so ordering by `arrival * LEVEL - p * aging`
    /// (ascending) is the same order at every `t`: keys never need updating.
    ///
    /// Keys are in microseconds: requests within one microsecond of each
    /// other are ordered by their sequence number (FIFO). Calls on two
    /// threads read the clock before they take the lock, in either order; a
    /// request whose key comes less than [`HANDOFF_SLACK_MICROS`] (1 ms of
    /// arrival) behind the last key queued, at the same priority, gets that
    /// key instead, so it goes after it (in the order the lock was taken)
    /// and to the queue's tail, not to its sorted map.
    fn order_key(&self, priority: Priority, arrival: Instant) -> i64 {
        let t = if arrival >= self.epoch {
            micros(arrival - self.epoch)
        } else {
            -micros(self.epoch - arrival)
        };
        let p = i64::from(priority.get());
        match self.aging_micros {
            Some(aging) => t * i64::from(Priority::LEVEL) - p * aging,
            None => -(p << PRIORITY_SHIFT) + t,
        }
    }

    /// Gives a permit back: to the first live waiter if there is one (it is
    /// woken, and only it), else to the pool. Waiters whose time has run out
    /// but who have not yet seen it are skipped: they are about to fail.
    #[inline]
    fn release(&self) {
        // Nobody waits: put the permit back with one compare-and-swap. The
        // swap fails if a waiter set `WAITERS` meanwhile.
        let mut word = self.permits.load(Ordering::Relaxed);
        while word & WAITERS == 0 {
            match self.permits.compare_exchange_weak(
                word,
                word + ONE,
                Ordering::Release,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    self.metrics.in_flight.decrement(1.0);
                    return;
                }
                Err(actual) => word = actual,
            }
        }
        self.release_to_waiter();
    }

    #[inline(never)]
    fn release_to_waiter(&self) {
        let state = self.state.lock();
        self.release_locked(state);
    }

    fn release_locked(&self, mut guard: MutexGuard<'_, State>) {
        let state = &mut *guard;
        // The first waiter that still waits: nearly always the head.
        match state.queue.pop_first_waiting() {
            Some(((_, seq), node)) => {
                node.state.store(GRANTED, Ordering::Release);
                if let Some(deadline) = node.deadline {
                    state.deadlines.remove(&(deadline, seq));
                }
                // The dead entries this leaves at the fronts of the tail
                // and of `waits` are dropped by the next pop or expiry
                // check: looking at the next node now would read its cache
                // line under the lock.
                self.unmark_if_empty(state);
                drop(guard);
                self.metrics.queue_depth.decrement(1.0);
                node.waker.wake();
            }
            None => {
                // No live waiter: back to the pool (and the bit cleared if
                // the queue is empty), one atomic step under the lock.
                let clear = if state.queue.is_empty() { WAITERS } else { 0 };
                let mut current = self.permits.load(Ordering::Relaxed);
                loop {
                    match self.permits.compare_exchange_weak(
                        current,
                        (current + ONE) & !clear,
                        Ordering::Release,
                        Ordering::Relaxed,
                    ) {
                        Ok(_) => break,
                        Err(actual) => current = actual,
                    }
                }
                drop(guard);
                self.metrics.in_flight.decrement(1.0);
            }
        }
    }

    /// Marks every waiter whose time is up to `now` as expired (removes its
    /// expiry) and collects its waker.
    fn expire(state: &mut State, now: Instant, wakers: &mut Vec<Waker>) {
        while state.waits.front().is_some_and(|(at, _)| *at <= now) {
            if let Some((_, node)) = state.waits.pop_front() {
                node.expire(wakers);
            }
        }
        state.queue.expire_tail(now, wakers);
        while let Some(entry) = state.deadlines.first_entry() {
            if entry.key().0 > now {
                break;
            }
            entry.remove().expire(wakers);
        }
    }

    /// From a waiter's poll that saw `arm_pending`: arms the timer and wakes
    /// any waiter that turned out to be due already.
    #[cold]
    fn arm_from_poll(&self) {
        let mut wakers = Vec::new();
        let mut guard = self.state.lock();
        self.arm(&mut guard, &mut wakers);
        drop(guard);
        wakers.into_iter().for_each(Waker::wake);
    }

    /// Arms the timer for the earliest expiry, unless it is armed for that
    /// or earlier, and clears `arm_pending`. Called from a waiter's `poll`,
    /// so a new `Sleep` always belongs to the runtime that is running the
    /// waiter; an existing one is replaced, never reset (it may belong to a
    /// runtime that is gone). A new timer that is already due expires the
    /// waiters it was for (their wakers go to `wakers`).
    fn arm(&self, state: &mut State, wakers: &mut Vec<Waker>) {
        while let Some(next) = state.next_expiry() {
            if state.timer_at.is_some_and(|at| at <= next) {
                break;
            }
            let mut sleep = Box::pin(tokio::time::sleep_until(next));
            let mut cx = Context::from_waker(&self.timer_waker);
            // Unconstrained: an exhausted coop budget would wake the timer
            // waker at once, which takes this (held) lock.
            let fired = Pin::new(&mut tokio::task::unconstrained(sleep.as_mut()))
                .poll(&mut cx)
                .is_ready();
            if !fired {
                state.timer = Some(sleep);
                state.timer_at = Some(next);
                break;
            }
            state.timer = None;
            state.timer_at = None;
            Self::expire(state, Instant::now().max(next), wakers);
        }
        self.arm_pending.store(false, Ordering::Release);
    }

    /// The timer fired: expire the waiters that are due and wake them. To
    /// arm for the next expiry, set `arm_pending` and wake a waiter: it
    /// re-arms from its own poll, in its own runtime.
    fn on_timer(&self) {
        let mut wakers = Vec::new();
        let mut guard = self.state.lock();
        let state = &mut *guard;
        let sleep = state.timer.take();
        state.timer_at = None;
        Self::expire(state, Instant::now(), &mut wakers);
        if state.next_expiry().is_some() {
            self.arm_pending.store(true, Ordering::Release);
            wakers.extend(state.first_waiting_waker());
        }
        drop(guard);
        drop(sleep);
        for waker in wakers {
            waker.wake();
        }
    }

    pub(crate) fn stats(&self) -> LimiterStats {
        let state = self.state.lock();
        let available = self.permits.load(Ordering::Acquire) / ONE;
        LimiterStats {
            in_flight: self.config.max_in_flight - available,
            queued: state.queue.len(),
            available,
            max_in_flight: self.config.max_in_flight,
            max_queued: self.config.max_queued,
        }
    }
}

impl fmt::Debug for Limiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let stats = self.stats();
        f.debug_struct("Limiter")
            .field("in_flight", &stats.in_flight)
            .field("queued", &stats.queued)
            .field("config", &self.config)
            .finish()
    }
}

/// A snapshot of a limiter's counts, taken under its lock (so the numbers
/// agree with each other).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct LimiterStats {
    /// Permits held: requests running in the inner service (or whose
    /// response body is still being read), plus waiters granted a permit that
    /// have not been polled since.
    pub in_flight: usize,
    /// Requests waiting in the queue.
    pub queued: usize,
    /// Free permits. Never more than zero while `queued` is more than zero.
    pub available: usize,
    /// The `max_in_flight` setting.
    pub max_in_flight: usize,
    /// The `max_queued` setting.
    pub max_queued: usize,
}

/// A concurrency permit: while it lives, it counts against `max_in_flight`.
///
/// The limiter moves it into the response with
/// [`HoldGuard`](crate::hold::HoldGuard), so it is released when the response
/// is *done*: at once for a complete response, when the body ends, fails or is
/// dropped for an `http::Response`. Dropping it hands the permit straight to
/// the first waiter in the queue, if any.
pub struct Permit {
    limiter: Arc<Limiter>,
}

impl Drop for Permit {
    #[inline]
    fn drop(&mut self) {
        self.limiter.release();
    }
}

impl fmt::Debug for Permit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit").finish_non_exhaustive()
    }
}

/// A queue entry, owned by the response future while it waits.
///
/// Dropping it removes the entry; if a permit had already been handed to it
/// (the entry was removed by a releaser), the permit goes on to the next
/// waiter, so a cancelled waiter never swallows a permit.
pub(crate) struct Waiter {
    /// `None` once the wait has ended: the entry is gone and any permit it
    /// had was taken (moved into the [`Permit`]).
    held: Option<Held>,
    key: Key,
    /// Where the queue put it (see [`Queue::insert`]).
    in_tail: bool,
    enqueued: Instant,
    priority: Priority,
    /// The wait ends at the request's deadline.
    deadline_bound: bool,
}

/// What a waiter holds while it waits.
struct Held {
    limiter: Arc<Limiter>,
    node: Arc<Node>,
}

impl Waiter {
    /// Waits for a permit, the queue wait, or the deadline, whichever first.
    ///
    /// Takes no lock unless the timer must be armed or the wait failed: the
    /// waker is registered in the waiter's node, and a grant is seen there.
    /// Ready with `Ok(())` once a permit was handed to it: then
    /// [`take_grant`](Self::take_grant) takes it.
    pub(crate) fn poll_wait(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        let Held { limiter, node } = self.held.as_ref().expect("polled after the wait ended");
        let mut state = node.state.load(Ordering::Acquire);
        if state == WAITING {
            // Register, then look again: a grant or expiry in between either
            // shows in the state or wakes the waker just registered.
            node.waker.register(cx.waker());
            state = node.state.load(Ordering::Acquire);
        }
        if limiter.arm_pending.load(Ordering::Acquire) {
            limiter.arm_from_poll();
            state = node.state.load(Ordering::Acquire);
        }
        match state {
            WAITING => Poll::Pending,
            GRANTED => Poll::Ready(Ok(())),
            _ => Poll::Ready(Err(self.give_up())),
        }
    }

    /// Time is up: leave the queue and say why.
    #[cold]
    fn give_up(&mut self) -> Error {
        let Held { limiter, node } = self.held.take().expect("polled after the wait ended");
        let mut guard = limiter.state.lock();
        limiter.remove_waiter(&mut guard, &node, self.key, self.in_tail);
        drop(guard);
        limiter.metrics.queue_depth.decrement(1.0);
        let waited = Instant::now().saturating_duration_since(self.enqueued);
        limiter.metrics.queue_wait.record_duration(waited);
        limiter.metrics.stats_queue_wait(waited);
        let (error, reason) = if self.deadline_bound {
            (Error::DeadlineExceeded, Reason::Deadline)
        } else {
            (Error::QueueTimeout { waited }, Reason::QueueTimeout)
        };
        limiter.metrics.rejected(reason, self.priority).increment(1);
        tracing::debug!(
            layer = "concurrency",
            reason = reason.as_str(),
            priority = self.priority.level_name(),
            ?waited,
            "queued request gave up: {error}"
        );
        error
    }

    /// The permit is ours (after [`poll_wait`](Self::poll_wait) said so):
    /// the limiter handle moves into it. Reads the clock through
    /// [`crate::clock`], for the queue wait.
    pub(crate) fn take_grant(&mut self) -> Permit {
        let Held { limiter, .. } = self.held.take().expect("polled after the wait ended");
        limiter.metrics.admitted.increment(1);
        let waited = clock::now().saturating_duration_since(self.enqueued);
        limiter.metrics.queue_wait.record_duration(waited);
        limiter.metrics.stats_queue_wait(waited);
        Permit { limiter }
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        let Some(Held { limiter, node }) = self.held.take() else {
            return;
        };
        let mut guard = limiter.state.lock();
        if node.state.load(Ordering::Relaxed) == GRANTED {
            // Granted but never observed: pass the permit on.
            limiter.release_locked(guard);
            return;
        }
        limiter.remove_waiter(&mut guard, &node, self.key, self.in_tail);
        // If this waiter was to arm the timer, hand that on.
        let duty = if limiter.arm_pending.load(Ordering::Relaxed) {
            guard.first_waiting_waker()
        } else {
            None
        };
        drop(guard);
        limiter.metrics.queue_depth.decrement(1.0);
        if let Some(waker) = duty {
            waker.wake();
        }
    }
}

impl fmt::Debug for Waiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Waiter")
            .field("priority", &self.priority)
            .field("enqueued", &self.enqueued)
            .finish_non_exhaustive()
    }
}

/// Why a request was rejected: the `reason` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reason {
    QueueFull = 0,
    QueueTimeout = 1,
    Deadline = 2,
}

impl Reason {
    const ALL: [Reason; 3] = [Reason::QueueFull, Reason::QueueTimeout, Reason::Deadline];

    const fn as_str(self) -> &'static str {
        match self {
            Reason::QueueFull => "queue_full",
            Reason::QueueTimeout => "queue_timeout",
            Reason::Deadline => "deadline",
        }
    }
}

const PRIORITY_LABELS: [&str; 4] = ["low", "normal", "high", "critical"];

/// The named level at or below `priority`, as an index into
/// `PRIORITY_LABELS` (the same bands as [`Priority::level_name`]).
fn priority_index(priority: Priority) -> usize {
    usize::from(priority.get() / Priority::LEVEL)
}

/// The limiter's metric handles, registered once per layer.
#[derive(Clone)]
pub(crate) struct Metrics {
    admitted: Counter,
    in_flight: Gauge,
    queue_depth: Gauge,
    queue_wait: Histogram,
    /// By reason, then by priority level.
    rejected: Arc<[[Counter; 4]; 3]>,
    /// Also records queue waits, when the builder was given one.
    pub(crate) stats: Option<Stats>,
}

pub(crate) const IN_FLIGHT: &str = "llm_sluice_in_flight";
pub(crate) const QUEUE_DEPTH: &str = "llm_sluice_queue_depth";
pub(crate) const QUEUE_WAIT: &str = "llm_sluice_queue_wait_seconds";

impl Metrics {
    /// Handles labelled `layer="concurrency"` (and `name`, if given).
    pub(crate) fn new(name: Option<&'static str>) -> Self {
        static DESCRIBE: Once = Once::new();
        DESCRIBE.call_once(|| telemetry::describe("concurrency"));
        let scope = Scope::new("concurrency", name);
        // `priority` is bucketed to the four named levels: a bounded set.
        let rejected = Reason::ALL.map(|reason| {
            PRIORITY_LABELS.map(|priority| {
                Counter::new(
                    telemetry::REJECTED,
                    &scope,
                    &[("reason", reason.as_str()), ("priority", priority)],
                )
            })
        });
        Metrics {
            admitted: Counter::new(telemetry::ADMITTED, &scope, &[]),
            in_flight: Gauge::new(IN_FLIGHT, &scope, &[]),
            queue_depth: Gauge::new(QUEUE_DEPTH, &scope, &[]),
            queue_wait: Histogram::new(QUEUE_WAIT, &scope, &[]),
            rejected: Arc::new(rejected),
            stats: None,
        }
    }

    /// Records a queue wait into the [`Stats`], if any.
    #[inline]
    fn stats_queue_wait(&self, waited: Duration) {
        if let Some(stats) = &self.stats {
            stats.record_queue_wait(waited);
        }
    }

    fn rejected(&self, reason: Reason, priority: Priority) -> &Counter {
        &self.rejected[reason as usize][priority_index(priority)]
    }
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(aging: Option<Duration>) -> Arc<Limiter> {
        Limiter::new(
            Config {
                max_in_flight: 1,
                max_queued: 10,
                max_queue_wait: Duration::from_secs(60),
                aging,
            },
            Metrics::new(None),
        )
    }

    #[test]
    fn strict_priority_key_orders_by_priority_then_arrival() {
        let l = limiter(None);
        let t0 = l.epoch;
        let later = t0 + Duration::from_secs(3600);
        assert!(l.order_key(Priority::HIGH, later) < l.order_key(Priority::NORMAL, t0));
        assert!(l.order_key(Priority::LOW, t0) < l.order_key(Priority::LOW, later));
        let before = t0 - Duration::from_millis(1);
        assert!(l.order_key(Priority::LOW, before) < l.order_key(Priority::LOW, t0));
    }

    #[test]
    fn aging_key_matches_effective_priority() {
        let aging = Duration::from_secs(10);
        let l = limiter(Some(aging));
        let t0 = l.epoch;
        // LOW at t0 vs HIGH arriving 2 levels' time later: equal effective
        // priority, so equal keys (the sequence number then decides).
        let low = l.order_key(Priority::LOW, t0);
        assert_eq!(low, l.order_key(Priority::HIGH, t0 + 2 * aging));
        // a HIGH arriving a moment earlier is still ahead of the LOW one
        assert!(l.order_key(Priority::HIGH, t0 + 2 * aging - Duration::from_micros(1)) < low);
        // and one arriving later is behind it
        assert!(low < l.order_key(Priority::HIGH, t0 + 2 * aging + Duration::from_micros(1)));
        // CRITICAL (three levels above LOW) catches up after 3 levels' time
        assert_eq!(low, l.order_key(Priority::CRITICAL, t0 + 3 * aging));
    }

    fn queued(admission: Admission) -> Waiter {
        match admission {
            Admission::Queued(waiter) => waiter,
            _ => panic!("expected to queue"),
        }
    }

    fn arriving(at: Instant, priority: Priority) -> crate::request::RequestMeta {
        let mut meta = crate::request::RequestMeta::new().priority(priority);
        meta.arrival = Some(at);
        meta
    }

    /// Two threads read the clock, then take the lock in the other order:
    /// the second key comes a hair behind the first. It goes after it, in
    /// the tail (served in lock order); a key further behind, or one of
    /// another priority, still goes where its key says.
    #[test]
    fn a_key_a_hair_behind_the_last_queues_after_it() {
        for aging in [Some(Duration::from_secs(5)), None] {
            let l = limiter(aging);
            let Admission::Permit(permit) = l.admit(&crate::request::RequestMeta::new()) else {
                panic!("a permit was free");
            };
            let now = Instant::now();
            let first = queued(l.admit(&arriving(now, Priority::NORMAL)));
            let hair = now - Duration::from_micros(HANDOFF_SLACK_MICROS as u64 / 2);
            let behind = queued(l.admit(&arriving(hair, Priority::NORMAL)));
            assert!(first.in_tail && behind.in_tail);
            assert!(behind.key > first.key, "served in lock order");
            let older = now - Duration::from_micros(HANDOFF_SLACK_MICROS as u64 * 2);
            let older = queued(l.admit(&arriving(older, Priority::NORMAL)));
            assert!(!older.in_tail && older.key < first.key, "served first");
            let high = queued(l.admit(&arriving(hair, Priority::HIGH)));
            assert!(
                !high.in_tail && high.key < older.key,
                "higher priority first"
            );
            // The grants follow the keys: high, older, first, behind. A
            // waiter dropped after its grant passes the permit on.
            let mut waiters = vec![high, older, first, behind];
            let nodes: Vec<_> = waiters
                .iter()
                .map(|w| Arc::clone(&w.held.as_ref().expect("waiting").node))
                .collect();
            drop(permit);
            for (i, node) in nodes.iter().enumerate() {
                assert_eq!(node.state.load(Ordering::Acquire), GRANTED, "grant {i}");
                for later in &nodes[i + 1..] {
                    assert_eq!(later.state.load(Ordering::Acquire), WAITING);
                }
                drop(waiters.remove(0));
            }
            assert_eq!(l.stats().queued, 0);
        }
    }

    #[test]
    fn extreme_instants_do_not_overflow() {
        let l = limiter(Some(Duration::MAX));
        let far = l.epoch + Duration::from_secs(u32::MAX as u64 * 100);
        let _ = l.order_key(Priority::CRITICAL, far);
        let l = limiter(None);
        assert!(l.order_key(Priority::CRITICAL, far) < l.order_key(Priority::HIGH, l.epoch));
    }
}
