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

use super::limits::{Budget, Demand, Limits};
use super::window::{SlidingLog, Verdict};
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

/// The state of one scope as the partition map sees it.
pub trait WindowState: Send + 'static {
    /// Whether the state is what a new one would be at `now`: nothing in the
    /// window, no cooldown or clamp in force. Idle partitions may be evicted.
    fn is_idle(&mut self, now: Instant) -> bool;
}

/// The default store: sliding logs in process memory.
///
/// Memory per partition is one entry per reservation inside its window, in
/// each budget that is set (so at most `requests_per_minute` entries a budget
/// when a request budget is set).
#[derive(Debug, Clone, Copy, Default)]
pub struct MemoryStore;

/// [`MemoryStore`]'s state of one scope.
#[derive(Default)]
pub struct MemoryWindow {
    logs: [Option<Log>; 6],
    cooldown: Option<Instant>,
    /// Server clamps on requests, tokens, input and output tokens.
    clamps: [Option<Clamp>; 4],
}

/// One budget's log and the span it was last counted over (for expiry in
/// `is_idle`), kept side by side so an admission touches one place.
#[derive(Default)]
struct Log {
    log: SlidingLog,
    span: Duration,
}

/// Usage the server counts and the local window does not, until `until`.
#[derive(Debug, Clone, Copy)]
struct Clamp {
    until: Instant,
    unseen: u64,
}

/// [`MemoryStore`]'s reservation: a sequence number in each budget's log,
/// and what each log held right after it (the local view at admission, which
/// the server's rate-limit headers are compared with).
#[derive(Debug, Clone, Copy)]
pub struct MemoryTicket {
    /// `NONE` where the budget was not set.
    seqs: [u64; 6],
    used: [u64; 6],
}

const NONE: u64 = u64::MAX;

const CLAMPED: [Budget; 4] = [
    Budget::Requests,
    Budget::Tokens,
    Budget::InputTokens,
    Budget::OutputTokens,
];

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
        let mut verdict = Verdict::Fits;
        for budget in Budget::ALL {
            let Some(limit) = limits.get(budget) else {
                continue;
            };
            let span = limits.span(budget);
            let unseen = clamp_of(budget).and_then(|i| match window.clamps[i] {
                Some(c) if now < c.until => Some((c.unseen, c.until)),
                Some(_) => {
                    window.clamps[i] = None;
                    None
                }
                None => None,
            });
            let entry = window.logs[budget.index()].get_or_insert_with(Log::default);
            entry.span = span;
            let amount = demand.amount(budget);
            let v = match unseen {
                None => entry.log.check(now, span, amount, limit),
                Some(_) if amount > limit => Verdict::Never { amount, limit },
                // Fits under what the server leaves, or waits for local
                // entries to expire or the unseen usage to reset, whichever
                // comes first.
                Some((unseen, until)) => {
                    match entry
                        .log
                        .check(now, span, amount, limit - unseen.min(limit))
                    {
                        Verdict::Fits => Verdict::Fits,
                        Verdict::NotUntil(at) => Verdict::NotUntil(at.min(until)),
                        Verdict::Never { .. } => Verdict::NotUntil(until),
                    }
                }
            };
            if let Verdict::Never { .. } = v {
                return v;
            }
            verdict = verdict.and(v);
        }
        if let Some(until) = window.cooldown {
            if now < until {
                verdict = verdict.and(Verdict::NotUntil(until));
            } else {
                window.cooldown = None;
            }
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
        let mut seqs = [NONE; 6];
        let mut used = [0; 6];
        for budget in Budget::ALL {
            if limits.get(budget).is_none() {
                continue;
            }
            let entry = window.logs[budget.index()].get_or_insert_with(Log::default);
            seqs[budget.index()] = entry.log.push(now, demand.amount(budget));
            used[budget.index()] = entry.log.sum();
        }
        MemoryTicket { seqs, used }
    }

    fn reconcile(
        &self,
        window: &mut MemoryWindow,
        ticket: &MemoryTicket,
        actual: &Demand,
        _now: Instant,
    ) {
        for budget in Budget::ALL {
            let seq = ticket.seqs[budget.index()];
            if let (true, Some(entry)) = (seq != NONE, &mut window.logs[budget.index()]) {
                entry.log.set(seq, actual.amount(budget));
            }
        }
    }

    fn cool_down(&self, window: &mut MemoryWindow, until: Instant) {
        window.cooldown = Some(window.cooldown.map_or(until, |c| c.max(until)));
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
            if ticket.seqs[budget.index()] == NONE {
                continue;
            }
            // What the local window left at admission, less what the server
            // left: usage only the server saw. A newer answer replaces an
            // older one's view.
            let local_left = limit.saturating_sub(ticket.used[budget.index()]);
            let unseen = local_left.saturating_sub(remaining);
            // Capped: a header can say anything.
            let reset = s
                .reset
                .unwrap_or(limits.window())
                .min(crate::error::LONGEST_SETTING);
            window.clamps[i] = (unseen > 0 && reset > Duration::ZERO).then(|| Clamp {
                until: now + reset,
                unseen,
            });
        }
    }
}

/// Which clamp slot a budget has, if the server reports on it.
fn clamp_of(budget: Budget) -> Option<usize> {
    CLAMPED.iter().position(|&b| b == budget)
}

impl WindowState for MemoryWindow {
    fn is_idle(&mut self, now: Instant) -> bool {
        if self.cooldown.is_some_and(|c| now < c) {
            return false;
        }
        if self.clamps.iter().flatten().any(|c| now < c.until) {
            return false;
        }
        // An emptied log is as good as a new one.
        self.logs.iter_mut().all(|entry| match entry {
            Some(entry) => entry.log.is_empty_at(now, entry.span),
            None => true,
        })
    }
}

impl fmt::Debug for MemoryWindow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryWindow")
            .field(
                "entries",
                &self
                    .logs
                    .iter()
                    .map(|l| l.as_ref().map_or(0, |e| e.log.len()))
                    .sum::<usize>(),
            )
            .field("cooldown", &self.cooldown)
            .finish_non_exhaustive()
    }
}
