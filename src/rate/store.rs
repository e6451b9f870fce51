//! The storage seam: where the window state lives.
//!
//! The layer keeps the *waiting* (queues, wakers, the timer) and asks a
//! [`RateStore`] about the *budgets*: whether a demand fits, to reserve it,
//! and to correct, release, cool down or clamp afterwards. The in-memory
//! [`MemoryStore`] is the default; a store shared by several processes (a
//! Redis script keeping the same sliding logs, say) implements the same
//! trait and plugs in with [`Builder::store`](super::Builder::store) without
//! any change to the layer.
//!
//! The layer calls every method with the partition's lock held (and, for an
//! admission that also spends the global budget, the global lock after it),
//! so `check` followed by `reserve` is atomic for one process. A shared store
//! must make its own `reserve` atomic across processes; it may then treat
//! `check` as a hint.

use std::fmt;
use std::time::Duration;

use tokio::time::Instant;

use super::limits::{duration_nanos, Budget, Demand, Limits};
use super::window::{self, LogVerdict, SlidingLog, Verdict};
use crate::classify::{LimitState, RateLimitState};

/// Where the budgets of each partition are kept. See the [module docs](self).
///
/// All methods are given `now` (tokio's clock): implementations keep no
/// clock of their own, so paused-time tests drive them.
pub trait RateStore: Send + Sync + 'static {
    /// The state of one scope (a partition, or the global budget).
    type Window: WindowState;
    /// What a reservation needs to be corrected or released later.
    type Ticket: Send + Sync + 'static;

    /// The state of a new scope.
    fn window(&self) -> Self::Window;

    /// Whether `demand` fits every budget of `limits` at `now`.
    fn check(
        &self,
        window: &mut Self::Window,
        demand: &Demand,
        limits: &Limits,
        now: Instant,
    ) -> Verdict;

    /// Reserves `demand` in every budget of `limits` at `now`. Called only
    /// right after `check` said [`Verdict::Fits`], under the same lock.
    fn reserve(
        &self,
        window: &mut Self::Window,
        demand: &Demand,
        limits: &Limits,
        now: Instant,
    ) -> Self::Ticket;

    /// [`check`](Self::check), then [`reserve`](Self::reserve) if it fits:
    /// the reservation, or the verdict that refused it. A store may do both
    /// in one pass (the in-memory one does); the default calls the two.
    fn try_reserve(
        &self,
        window: &mut Self::Window,
        demand: &Demand,
        limits: &Limits,
        now: Instant,
    ) -> Result<Self::Ticket, Verdict> {
        check_then_reserve(self, window, demand, limits, now)
    }

    /// Replaces a reservation's amounts with `actual`, at the reservation's
    /// original timestamp. A part that has already left the window is not
    /// changed.
    fn reconcile(
        &self,
        window: &mut Self::Window,
        ticket: &Self::Ticket,
        actual: &Demand,
        now: Instant,
    );

    /// Gives a reservation back: the request never reached the upstream.
    fn release(&self, window: &mut Self::Window, ticket: &Self::Ticket, now: Instant) {
        self.reconcile(window, ticket, &Demand::default(), now);
    }

    /// What `budget` (a whole-window one: requests, tokens, input or output
    /// tokens) held right after the reservation behind `ticket`, this
    /// reservation included: the local view at its admission, which the
    /// server's rate-limit headers are compared with to check the token
    /// budgets' charging rules, and which a `429` the window did not expect
    /// teaches a limit from. `None` where the budget did not count the
    /// reservation, or the store does not keep it (the default: then neither
    /// happens).
    fn held(&self, ticket: &Self::Ticket, budget: Budget) -> Option<u64> {
        let _ = (ticket, budget);
        None
    }

    /// Admits nothing in this scope before `until` (the server asked to wait).
    fn cool_down(&self, window: &mut Self::Window, until: Instant);

    /// Takes the server's word on what remains, as it stood when the server
    /// admitted the request behind `ticket`.
    ///
    /// Where the server says fewer remain than the local window held at that
    /// reservation's admission, the difference is usage the local window
    /// cannot see (another client on the same key, a restart): it counts
    /// against the local limit until the server's reset (a missing reset
    /// lasts one window). Local entries keep expiring as usual, so a server
    /// that frees capacity continuously (a sliding window or a bucket) is not
    /// mistaken for one that frees it all at the reset. Budgets without a
    /// local limit are not clamped.
    fn clamp(
        &self,
        window: &mut Self::Window,
        ticket: &Self::Ticket,
        state: &RateLimitState,
        limits: &Limits,
        now: Instant,
    );
}

/// [`RateStore::try_reserve`] in two steps: the full `check` (cooldowns,
/// server clamps, the verdict's wait), then `reserve` if it fits. The trait's
/// default, and the memory store's path whenever its one-pass fast path
/// cannot decide.
fn check_then_reserve<St: RateStore + ?Sized>(
    store: &St,
    window: &mut St::Window,
    demand: &Demand,
    limits: &Limits,
    now: Instant,
) -> Result<St::Ticket, Verdict> {
    match store.check(window, demand, limits, now) {
        Verdict::Fits => Ok(store.reserve(window, demand, limits, now)),
        verdict => Err(verdict),
    }
}

/// [`check_then_reserve`] kept out of line, so the memory store's fast path
/// stays small enough to inline into the admission.
#[cold]
#[inline(never)]
fn slow_reserve(
    store: &MemoryStore,
    window: &mut MemoryWindow,
    demand: &Demand,
    limits: &Limits,
    now: Instant,
) -> Result<MemoryTicket, Verdict> {
    check_then_reserve(store, window, demand, limits, now)
}

/// The state of one scope as the partition map sees it.
pub trait WindowState: Send + 'static {
    /// Whether the state is what a new one would be at `now`: nothing in the
    /// window, no cooldown or clamp in force. Idle partitions may be evicted.
    fn is_idle(&mut self, now: Instant) -> bool;
}

/// The default store: one sliding log per scope in process memory.
///
/// Memory per partition is one 32-byte entry per reservation inside its
/// window, whatever budgets are set (the timestamp once, with the request
/// count in its low bit, then total, input and output tokens; the burst
/// bounds read the same entries), so at most `requests_per_minute` entries
/// when a request budget is set. The buffer doubles as needed (a power of
/// two, from 2 entries: one cache line) and keeps its size while the scope
/// lives. Beside it a scope keeps about 230 bytes (a partition's slot).
#[derive(Debug, Clone, Copy, Default)]
pub struct MemoryStore;

/// [`MemoryStore`]'s state of one scope.
///
/// Time inside is nanoseconds since `origin` (the first instant the scope
/// was asked about). One sliding log holds every budget: an entry per
/// reservation with all its amounts, so one sequence number identifies a
/// reservation in all of them.
#[derive(Default)]
#[repr(C)] // what an admission touches first (80 bytes), side by side
pub struct MemoryWindow {
    /// The server's feedback, `Some` only while a cooldown or a clamp may be
    /// in force (then admission takes the path that looks at them): most
    /// partitions never get any, so it is not kept inline.
    feedback: Option<Box<Feedback>>,
    origin: Option<Instant>,
    log: SlidingLog,
    /// The window length in nanoseconds: the longest span of any budget,
    /// which `is_idle` expires the log with.
    span: u64,
}

impl MemoryWindow {
    /// How many bytes from its start an admission reads (the feedback
    /// pointer, the origin and the log's head).
    #[cfg(test)]
    pub(crate) const HOT_BYTES: usize = 8 + 16 + SlidingLog::HOT_BYTES;
}

/// What the server said about one scope.
#[derive(Debug, Default)]
struct Feedback {
    cooldown: Option<Instant>,
    /// Server clamps on requests, tokens, input and output tokens.
    clamps: [Option<Clamp>; 4],
}

impl Feedback {
    /// Whether nothing is in force any more.
    fn is_empty(&self) -> bool {
        self.cooldown.is_none() && self.clamps.iter().all(Option::is_none)
    }
}

/// Usage the server counts and the local window does not, until `until`.
#[derive(Debug, Clone, Copy)]
struct Clamp {
    until: Instant,
    unseen: u64,
}

/// [`MemoryStore`]'s reservation: its sequence number in the scope's log,
/// which budgets it went into, and what the request, token, input and
/// output budgets held right after it (the local view at admission, which
/// the server's rate-limit headers are compared with).
#[derive(Debug, Clone, Copy)]
pub struct MemoryTicket {
    seq: u64,
    mask: u8,
    used: [u64; 4],
}

const CLAMPED: [Budget; 4] = [
    Budget::Requests,
    Budget::Tokens,
    Budget::InputTokens,
    Budget::OutputTokens,
];

/// Calls `f` with the index of each bit set in `mask` (of six), lowest
/// first, while it returns `true`; whether it always did. Unrolled, so on the
/// admission path each budget's body is inlined with a constant index (no
/// bounds check, no bit scan).
#[inline(always)]
fn all_bits(mask: u8, mut f: impl FnMut(usize) -> bool) -> bool {
    (mask & 1 == 0 || f(0))
        && (mask & 2 == 0 || f(1))
        && (mask & 4 == 0 || f(2))
        && (mask & 8 == 0 || f(3))
        && (mask & 16 == 0 || f(4))
        && (mask & 32 == 0 || f(5))
}

/// The indices of the bits set in `mask`, lowest first.
#[inline]
fn bits(mut mask: u8) -> impl Iterator<Item = usize> {
    std::iter::from_fn(move || {
        if mask == 0 {
            return None;
        }
        let i = mask.trailing_zeros() as usize;
        mask &= mask - 1;
        Some(i)
    })
}

/// The span budget `i` is counted over: the limits' span, a burst's never
/// longer than the window (so it never looks before the window's start in
/// the shared log; validated limits never ask for more).
#[inline(always)]
fn span_of(limits: &Limits, i: usize) -> u64 {
    let span = limits.budget(i).1;
    if i >= 4 {
        span.min(limits.budget(0).1)
    } else {
        span
    }
}

impl MemoryWindow {
    /// `now` in the window's time: nanoseconds since its origin, which the
    /// first call sets. An instant before the origin counts as the origin:
    /// every entry is at or after it, so no entry expires either way, and
    /// an entry recorded there only expires later than it would have.
    #[inline]
    fn time(&mut self, now: Instant) -> u64 {
        let origin = *self.origin.get_or_insert(now);
        duration_nanos(now.saturating_duration_since(origin)).min(window::MAX_TIME)
    }

    /// The instant of window time `t` (after [`time`](Self::time)).
    fn instant(&self, t: u64, now: Instant) -> Instant {
        let origin = self.origin.unwrap_or(now);
        origin
            .checked_add(Duration::from_nanos(t))
            .unwrap_or(now + crate::error::LONGEST_SETTING)
    }

    /// Makes the live budgets those of `limits` (a budget newly set starts
    /// empty).
    #[inline]
    fn sync(&mut self, limits: &Limits) {
        let mask = limits.mask();
        if self.log.active() != mask {
            self.resync(limits);
        }
    }

    #[cold]
    #[inline(never)]
    fn resync(&mut self, limits: &Limits) {
        self.log.activate(limits.mask());
        self.span = limits.budget(0).1;
    }

    /// Records `amounts` at window time `t` (nothing when no budget is set).
    #[inline(always)]
    fn push(&mut self, t: u64, amounts: &[u64; 6]) -> MemoryTicket {
        let active = self.log.active();
        if active == 0 {
            return MemoryTicket {
                seq: 0,
                mask: 0,
                used: [0; 4],
            };
        }
        let seq = self.log.push(t, amounts);
        // Only the live budgets are reported (the others' sums mean
        // nothing). Built as one value (not stored element by element into a
        // local and then copied, which stalls a wide load on the narrow
        // stores before it).
        let log = &self.log;
        let sum = |i: usize| {
            if active & (1 << i) != 0 {
                log.sum(i)
            } else {
                0
            }
        };
        MemoryTicket {
            seq,
            mask: active,
            used: [sum(0), sum(1), sum(2), sum(3)],
        }
    }
}

impl RateStore for MemoryStore {
    type Window = MemoryWindow;
    type Ticket = MemoryTicket;

    fn window(&self) -> MemoryWindow {
        MemoryWindow::default()
    }

    fn check(
        &self,
        window: &mut MemoryWindow,
        demand: &Demand,
        limits: &Limits,
        now: Instant,
    ) -> Verdict {
        let t = window.time(now);
        window.sync(limits);
        let amounts = demand.amounts();
        if let Some(feedback) = &mut window.feedback {
            for clamp in &mut feedback.clamps {
                if clamp.is_some_and(|c| now >= c.until) {
                    *clamp = None;
                }
            }
            if feedback.cooldown.is_some_and(|until| now >= until) {
                feedback.cooldown = None;
            }
            if feedback.is_empty() {
                window.feedback = None;
            }
        }
        let (cooldown, clamps) = match &window.feedback {
            Some(f) => (f.cooldown, f.clamps),
            None => (None, [None; 4]),
        };
        let mut verdict = Verdict::Fits;
        for i in bits(limits.mask()) {
            let limit = limits.budget(i).0;
            let span = span_of(limits, i);
            let unseen = clamps
                .get(i)
                .copied()
                .flatten()
                .map(|c| (c.unseen, c.until));
            window.log.expire_budget(i, t, span);
            let amount = amounts[i];
            // Fits under what the server leaves (when it clamps), or waits
            // for local entries to expire or the unseen usage to reset,
            // whichever comes first.
            let (cap, until) = match unseen {
                None => (limit, None),
                Some(_) if amount > limit => return Verdict::Never { amount, limit },
                Some((unseen, until)) => (limit - unseen.min(limit), Some(until)),
            };
            let v = match (window.log.verdict(i, t, span, amount, cap), until) {
                (LogVerdict::Fits, _) => Verdict::Fits,
                (LogVerdict::NotUntil(at), None) => Verdict::NotUntil(window.instant(at, now)),
                (LogVerdict::NotUntil(at), Some(until)) => {
                    Verdict::NotUntil(window.instant(at, now).min(until))
                }
                (LogVerdict::Never, None) => return Verdict::Never { amount, limit },
                (LogVerdict::Never, Some(until)) => Verdict::NotUntil(until),
            };
            verdict = verdict.and(v);
        }
        if let Some(until) = cooldown {
            verdict = verdict.and(Verdict::NotUntil(until));
        }
        verdict
    }

    fn reserve(
        &self,
        window: &mut MemoryWindow,
        demand: &Demand,
        limits: &Limits,
        now: Instant,
    ) -> MemoryTicket {
        let t = window.time(now);
        window.sync(limits);
        window.push(t, &demand.amounts())
    }

    /// One pass: expires and checks each budget that is set, then pushes
    /// into all of them. Anything unusual (a cooldown or clamp, a budget
    /// without room) goes through [`check`](Self::check) for the verdict.
    #[inline(always)]
    fn try_reserve(
        &self,
        window: &mut MemoryWindow,
        demand: &Demand,
        limits: &Limits,
        now: Instant,
    ) -> Result<MemoryTicket, Verdict> {
        if window.feedback.is_some() {
            return slow_reserve(self, window, demand, limits, now);
        }
        let t = window.time(now);
        let mask = limits.mask();
        window.sync(limits);
        let amounts = demand.amounts();
        // The whole-window budgets share one start: expired once.
        if mask & 15 != 0 {
            window.log.expire(t, limits.budget(0).1);
        }
        let log = &mut window.log;
        let room = all_bits(mask, |i| {
            let limit = limits.budget(i).0;
            if i >= 4 {
                log.expire_burst(i - 4, t, span_of(limits, i));
            }
            window::fits(log.sum(i), amounts[i], limit)
        });
        if !room {
            return slow_reserve(self, window, demand, limits, now);
        }
        Ok(window.push(t, &amounts))
    }

    fn reconcile(
        &self,
        window: &mut MemoryWindow,
        ticket: &MemoryTicket,
        actual: &Demand,
        _now: Instant,
    ) {
        // A budget set after the reservation (or emptied since) does not
        // count it, and an entry that left the window is gone.
        if ticket.mask != 0 {
            window.log.set(ticket.seq, &actual.amounts());
        }
    }

    fn held(&self, ticket: &MemoryTicket, budget: Budget) -> Option<u64> {
        let i = budget.index();
        (i < 4 && ticket.mask & (1 << i) != 0).then(|| ticket.used[i])
    }

    fn cool_down(&self, window: &mut MemoryWindow, until: Instant) {
        let feedback = window.feedback.get_or_insert_with(Box::default);
        feedback.cooldown = Some(feedback.cooldown.map_or(until, |c| c.max(until)));
    }

    fn clamp(
        &self,
        window: &mut MemoryWindow,
        ticket: &MemoryTicket,
        state: &RateLimitState,
        limits: &Limits,
        now: Instant,
    ) {
        let states: [&LimitState; 4] = [
            &state.requests,
            &state.tokens,
            &state.input_tokens,
            &state.output_tokens,
        ];
        for ((i, budget), s) in CLAMPED.into_iter().enumerate().zip(states) {
            let (Some(remaining), Some(limit)) = (s.remaining, limits.get(budget)) else {
                continue;
            };
            if ticket.mask & (1 << budget.index()) == 0 {
                continue;
            }
            // What the local window left at admission, less what the server
            // left: usage only the server saw. A newer answer replaces an
            // older one's view.
            let local_left = limit.saturating_sub(ticket.used[i]);
            let unseen = local_left.saturating_sub(remaining);
            // Capped: a header can say anything.
            let reset = s
                .reset
                .unwrap_or(limits.window())
                .min(crate::error::LONGEST_SETTING);
            let clamp = (unseen > 0 && reset > Duration::ZERO).then(|| Clamp {
                until: now + reset,
                unseen,
            });
            match (&mut window.feedback, clamp) {
                (Some(feedback), clamp) => feedback.clamps[i] = clamp,
                (None, Some(clamp)) => {
                    let mut feedback = Box::<Feedback>::default();
                    feedback.clamps[i] = Some(clamp);
                    window.feedback = Some(feedback);
                }
                (None, None) => {}
            }
        }
        if window.feedback.as_ref().is_some_and(|f| f.is_empty()) {
            window.feedback = None;
        }
    }
}

impl WindowState for MemoryWindow {
    fn is_idle(&mut self, now: Instant) -> bool {
        if let Some(feedback) = &self.feedback {
            if feedback.cooldown.is_some_and(|c| now < c) {
                return false;
            }
            if feedback.clamps.iter().flatten().any(|c| now < c.until) {
                return false;
            }
        }
        // An emptied log is as good as a new one.
        let t = self.time(now);
        let span = self.span;
        self.log.is_empty_at(t, span)
    }
}

impl fmt::Debug for MemoryWindow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryWindow")
            .field("entries", &self.log.len())
            .field("cooldown", &self.feedback.as_ref().and_then(|f| f.cooldown))
            .finish_non_exhaustive()
    }
}
