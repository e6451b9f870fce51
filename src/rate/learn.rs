//! Limits learned from the wire, and the check of each token budget's
//! charging rule against the provider's count: per partition, kept out of
//! line (see the [module docs](super#limits-learned-from-the-wire)).

use std::time::Duration;

use tokio::time::Instant;

use super::limits::{Budget, Charging, Demand, Limits};
use crate::classify::{LimitState, RateLimitState};

/// Whether a limiter takes the limits the provider reports
/// (`x-ratelimit-limit-*`, `anthropic-ratelimit-*-limit`) and learns from
/// `429`s it did not expect. See the
/// [module docs](super#limits-learned-from-the-wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
#[non_exhaustive]
pub enum LearnLimits {
    /// Only the configured limits count.
    Off,
    /// A partition's limit is the lower of the configured one and what the
    /// provider reports (or what a `429` taught); a budget with no
    /// configured limit takes the provider's. Never above a configured
    /// limit. The default.
    #[default]
    TightenOnly,
    /// A partition's limit is what the provider reports, above the
    /// configured one too (which holds until the provider reports one);
    /// `429`s still only tighten it.
    Follow,
}

/// How many windows (each with its guard band) a limit taught by a `429`
/// holds after the last `429` that taught it.
pub(crate) const HOLD_WINDOWS: u32 = 10;

/// The whole-window budgets, by index: what headers report and `429`s teach.
pub(crate) const LEARNED: [Budget; 4] = [
    Budget::Requests,
    Budget::Tokens,
    Budget::InputTokens,
    Budget::OutputTokens,
];

/// What one partition has learned, from
/// [`RateLimitHandle::learned`](super::RateLimitHandle::learned).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LearnedLimits {
    reported: [Option<u64>; 4],
    refused: [Option<u64>; 4],
    limits: Limits,
}

impl LearnedLimits {
    /// The limit of `budget` the provider reported, where it changes the
    /// limit in force (below the configured one, or where none is
    /// configured; with [`LearnLimits::Follow`], any other value).
    pub fn reported(&self, budget: Budget) -> Option<u64> {
        index(budget).and_then(|i| self.reported[i])
    }

    /// The limit of `budget` a `429` taught, while it holds.
    pub fn refused(&self, budget: Budget) -> Option<u64> {
        index(budget).and_then(|i| self.refused[i])
    }

    /// The limit of `budget` the partition's window enforces now: the
    /// configured one with what was learned applied.
    pub fn limit(&self, budget: Budget) -> Option<u64> {
        self.limits.get(budget)
    }

    /// The limits the partition's window enforces now.
    pub fn limits(&self) -> Limits {
        self.limits
    }
}

/// The index of a whole-window budget in [`LEARNED`].
fn index(budget: Budget) -> Option<usize> {
    (budget.index() < 4).then_some(budget.index())
}

/// What one partition learned, kept out of line (most partitions learn
/// nothing). Zero stands for "nothing": every limit is at least 1.
#[derive(Debug, Default)]
pub(crate) struct Learning {
    /// What the provider's headers reported, where it changes the limit.
    reported: [u64; 4],
    /// Caps taught by `429`s, until `refused_until`.
    refused: [u64; 4],
    refused_until: Option<Instant>,
    /// The token budgets' refunds, for the charging check; kept once the
    /// provider has counted more than the window held (boxed: a partition
    /// that only learns a limit, or only queues, does not carry it).
    refunds: Option<Box<Tally>>,
}

impl Learning {
    /// Whether a learned limit is in force.
    #[inline]
    pub(crate) fn in_force(&self) -> bool {
        self.reported.iter().chain(&self.refused).any(|&v| v != 0)
    }

    /// Whether a learned limit is in force at `now` (a cap whose hold has
    /// passed is not, though it is cleared only by [`lapse`](Self::lapse)).
    pub(crate) fn in_force_at(&self, now: Instant) -> bool {
        self.reported
            .iter()
            .chain(&self.refused_at(now))
            .any(|&v| v != 0)
    }

    /// Whether nothing is kept.
    pub(crate) fn is_empty(&self) -> bool {
        !self.in_force() && self.refunds.is_none()
    }

    /// Drops the caps taught by `429`s once their hold has passed; whether
    /// any went.
    pub(crate) fn lapse(&mut self, now: Instant) -> bool {
        match self.refused_until {
            Some(until) if now >= until => {
                self.refused_until = None;
                let had = self.refused.iter().any(|&v| v != 0);
                self.refused = [0; 4];
                had
            }
            _ => false,
        }
    }

    /// The caps taught by `429`s still holding at `now`.
    fn refused_at(&self, now: Instant) -> [u64; 4] {
        match self.refused_until {
            Some(until) if now < until => self.refused,
            _ => [0; 4],
        }
    }

    /// `configured` with what was learned applied at `now`, by `mode`. A cap
    /// taught by a `429` never makes `demand` too large to fit: it is only a
    /// guess of the provider's limit, and the provider may admit it.
    pub(crate) fn apply(
        &self,
        mode: LearnLimits,
        configured: &Limits,
        demand: Option<&Demand>,
        now: Instant,
    ) -> Limits {
        let mut limits = *configured;
        let refused = self.refused_at(now);
        for (i, budget) in LEARNED.into_iter().enumerate() {
            let mut limit = base(mode, configured.get(budget), nonzero(self.reported[i]));
            if let (Some(l), Some(cap)) = (limit, nonzero(refused[i])) {
                let floor = demand.map_or(0, |d| d.amount(budget));
                limit = Some(l.min(cap.max(floor)));
            }
            if limit != configured.get(budget) {
                limits.set(budget, limit);
            }
        }
        // A burst bound never above the budget it paces.
        for (burst, paced) in [
            (Budget::RequestBurst, Budget::Requests),
            (Budget::TokenBurst, Budget::Tokens),
        ] {
            match (limits.get(burst), limits.get(paced)) {
                (Some(b), Some(l)) if b > l => limits.set(burst, Some(l)),
                (Some(_), None) => limits.set(burst, None),
                _ => {}
            }
        }
        limits
    }

    /// Takes the limits `state` reports; whether what is in force changed.
    /// A reported limit above a cap taught by a `429` lifts the cap.
    pub(crate) fn report(
        &mut self,
        mode: LearnLimits,
        configured: &Limits,
        state: &RateLimitState,
    ) -> bool {
        let mut changed = false;
        for (i, s) in states(state).into_iter().enumerate() {
            let Some(limit) = s.limit.filter(|&l| l > 0) else {
                continue;
            };
            let configured = configured.get(LEARNED[i]);
            let differs = match mode {
                LearnLimits::Off => false,
                LearnLimits::TightenOnly => configured.is_none_or(|c| limit < c),
                LearnLimits::Follow => configured != Some(limit),
            };
            let reported = if differs { limit } else { 0 };
            if reported != self.reported[i] {
                self.reported[i] = reported;
                changed = true;
            }
            if self.refused[i] != 0 && limit > self.refused[i] {
                self.refused[i] = 0;
                changed = true;
            }
        }
        changed
    }

    /// A `429` the window did not expect: caps budget `i` at what the window
    /// held before the refused request (`held_before`), at least half the
    /// limit in force (`limit`) and at least 1, until `hold` after `now`.
    /// The cap of an earlier `429` is kept if lower. Whether it changed.
    pub(crate) fn refuse(
        &mut self,
        i: usize,
        held_before: u64,
        limit: u64,
        now: Instant,
        hold: Duration,
    ) -> bool {
        let cap = held_before.max(limit / 2).max(1);
        self.refused_until = Some(now + hold);
        let old = self.refused[i];
        let new = match old {
            0 if cap >= limit => return false,
            0 => cap,
            old => old.min(cap),
        };
        self.refused[i] = new;
        new != old
    }

    /// The refunds tally, made on first use.
    pub(crate) fn refunds(&mut self, now: Instant, span: Duration) -> &mut Tally {
        self.refunds
            .get_or_insert_with(|| Box::new(Tally::new(now, span)))
    }

    /// The refunds tally, if kept.
    pub(crate) fn tally(&mut self) -> Option<&mut Tally> {
        self.refunds.as_deref_mut()
    }

    /// The public view at `now`, with `limits` in force.
    pub(crate) fn view(&self, limits: Limits, now: Instant) -> LearnedLimits {
        LearnedLimits {
            reported: self.reported.map(nonzero),
            refused: self.refused_at(now).map(nonzero),
            limits,
        }
    }
}

/// The budgets' states, in [`LEARNED`] order.
fn states(state: &RateLimitState) -> [&LimitState; 4] {
    [
        &state.requests,
        &state.tokens,
        &state.input_tokens,
        &state.output_tokens,
    ]
}

/// The limit a budget counts under before any `429`: configured, reported,
/// or both, by `mode`.
fn base(mode: LearnLimits, configured: Option<u64>, reported: Option<u64>) -> Option<u64> {
    match (mode, configured, reported) {
        (LearnLimits::Off, c, _) => c,
        (LearnLimits::Follow, c, r) => r.or(c),
        (LearnLimits::TightenOnly, Some(c), Some(r)) => Some(c.min(r)),
        (LearnLimits::TightenOnly, c, r) => c.or(r),
    }
}

fn nonzero(v: u64) -> Option<u64> {
    (v != 0).then_some(v)
}

/// Refunds in the token budgets (tokens, input, output) over about the
/// last span, from two spans' sums (the older one weighted by how much of
/// it the last span still covers): enough for a warning's threshold, in
/// six words.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Tally {
    start: Instant,
    span: Duration,
    current: [u64; 3],
    previous: [u64; 3],
}

impl Tally {
    fn new(now: Instant, span: Duration) -> Self {
        Tally {
            start: now,
            span: span.max(Duration::from_nanos(1)),
            current: [0; 3],
            previous: [0; 3],
        }
    }

    fn roll(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.start);
        if elapsed < self.span {
            return;
        }
        self.previous = if elapsed < 2 * self.span {
            self.current
        } else {
            [0; 3]
        };
        self.current = [0; 3];
        // The span's start, in steps of one span (at most two behind).
        self.start = now - Duration::from_nanos((elapsed.as_nanos() % self.span.as_nanos()) as u64);
    }

    /// Counts refunds made at `now`.
    pub(crate) fn add(&mut self, now: Instant, refunds: [u64; 3]) {
        self.roll(now);
        for (c, r) in self.current.iter_mut().zip(refunds) {
            *c = c.saturating_add(r);
        }
    }

    /// About the refunds of token budget `k` (0 tokens, 1 input, 2 output)
    /// over the last span.
    pub(crate) fn sum(&mut self, now: Instant, k: usize) -> u64 {
        self.roll(now);
        let into = now.saturating_duration_since(self.start).as_secs_f64();
        let left = 1.0 - (into / self.span.as_secs_f64()).min(1.0);
        self.current[k].saturating_add((self.previous[k] as f64 * left) as u64)
    }
}

/// How far apart the provider's count and the window's may be before the
/// charging check speaks: a tenth of the limit (a guard band's entries,
/// requests crossing in transit and estimates that differ a little stay
/// well inside it).
pub(crate) fn tolerance(limit: u64) -> u64 {
    (limit / 10).max(1)
}

/// Whether a report of a token budget says its charging rule is wrong:
/// the provider's count (`provider`) against what the window held at the
/// same reservation (`local`), under the `limit`. `refunds` is what the
/// window gave back in that budget over about the last window, when known.
///
/// - [`Charging::Admission`]: the provider counts well below the window
///   (it corrects to actual usage, or the estimates run above its own).
///   Other clients on the same key only ever make it count more.
/// - [`Charging::Reconcile`] / [`Charging::Actual`]: the provider counts
///   well above the window, and by at least three quarters of what the
///   window refunded: it still counts the estimates the window gave back.
///   (Another client on the key also makes it count more; it is told from
///   a charging rule only by the refunds, so a second client spending
///   three quarters of this one's refunds looks the same.)
pub(crate) fn mismatch(
    charging: Charging,
    local: u64,
    provider: u64,
    limit: u64,
    refunds: Option<u64>,
) -> bool {
    let tol = tolerance(limit);
    match charging {
        Charging::Admission => provider.saturating_add(tol) < local,
        Charging::Reconcile | Charging::Actual => match refunds {
            Some(refunds) => {
                let more = provider.saturating_sub(local);
                more > tol && refunds >= tol && more >= refunds - refunds / 4
            }
            None => false,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(requests: Option<u64>, tokens: Option<u64>) -> Limits {
        let mut l = Limits::new(Duration::from_secs(60));
        l.set(Budget::Requests, requests);
        l.set(Budget::Tokens, tokens);
        l
    }

    fn reporting(requests: u64) -> RateLimitState {
        RateLimitState {
            requests: LimitState {
                limit: Some(requests),
                ..LimitState::default()
            },
            ..RateLimitState::default()
        }
    }

    #[test]
    fn tighten_only_never_raises_a_configured_limit_and_fills_an_unset_one() {
        let t0 = Instant::now();
        let configured = limits(Some(120), None);
        let mut l = Learning::default();
        assert!(!l.report(LearnLimits::TightenOnly, &configured, &reporting(200)));
        assert!(!l.in_force(), "above the configured limit: nothing learned");
        assert!(l.report(LearnLimits::TightenOnly, &configured, &reporting(60)));
        let applied = l.apply(LearnLimits::TightenOnly, &configured, None, t0);
        assert_eq!(applied.get(Budget::Requests), Some(60));
        let mut state = reporting(60);
        state.tokens.limit = Some(90_000);
        l.report(LearnLimits::TightenOnly, &configured, &state);
        let applied = l.apply(LearnLimits::TightenOnly, &configured, None, t0);
        assert_eq!(applied.get(Budget::Tokens), Some(90_000));
        // Follow takes a higher report too.
        let mut f = Learning::default();
        f.report(LearnLimits::Follow, &configured, &reporting(200));
        let applied = f.apply(LearnLimits::Follow, &configured, None, t0);
        assert_eq!(applied.get(Budget::Requests), Some(200));
    }

    #[test]
    fn a_429_caps_at_what_the_window_held_at_most_halving_and_lapses() {
        let t0 = Instant::now();
        let hold = Duration::from_secs(600);
        let configured = limits(Some(200), None);
        let mut l = Learning::default();
        // Held 60 before the refused request: at most half of 200 at once.
        assert!(l.refuse(0, 60, 200, t0, hold));
        let applied = l.apply(LearnLimits::TightenOnly, &configured, None, t0);
        assert_eq!(applied.get(Budget::Requests), Some(100));
        assert!(l.refuse(0, 60, 100, t0, hold));
        assert_eq!(l.refused[0], 60);
        // A later 429 from a request admitted before the cap keeps it.
        assert!(!l.refuse(0, 70, 60, t0, hold));
        assert_eq!(l.refused[0], 60);
        assert!(!l.lapse(t0 + hold - Duration::from_millis(1)));
        assert!(l.lapse(t0 + hold));
        assert!(!l.in_force());
        // A report above a cap lifts it.
        l.refuse(0, 60, 100, t0, hold);
        assert!(l.report(LearnLimits::TightenOnly, &configured, &reporting(150)));
        assert_eq!(l.refused[0], 0);
        assert_eq!(l.reported[0], 150);
    }

    #[test]
    fn a_cap_never_makes_a_demand_too_large() {
        let configured = limits(None, Some(10_000));
        let mut l = Learning::default();
        let t0 = Instant::now();
        l.refuse(1, 6_000, 10_000, t0, Duration::from_secs(1));
        let big = Demand::estimate(8_000);
        let applied = l.apply(LearnLimits::TightenOnly, &configured, Some(&big), t0);
        assert_eq!(applied.get(Budget::Tokens), Some(8_000));
        let small = Demand::estimate(100);
        let applied = l.apply(LearnLimits::TightenOnly, &configured, Some(&small), t0);
        assert_eq!(applied.get(Budget::Tokens), Some(6_000));
    }

    #[test]
    fn the_tally_forgets_after_two_spans() {
        let t0 = Instant::now();
        let span = Duration::from_secs(60);
        let mut t = Tally::new(t0, span);
        t.add(t0, [100, 0, 0]);
        assert_eq!(t.sum(t0 + Duration::from_secs(30), 0), 100);
        // Half-way into the next span, half of the older one still counts.
        assert_eq!(t.sum(t0 + Duration::from_secs(90), 0), 50);
        assert_eq!(t.sum(t0 + Duration::from_secs(121), 0), 0);
    }

    #[test]
    fn mismatch_reads_the_direction_the_rule_gets_wrong() {
        // Admission: the provider counted 2,000 of 10,000 less: it corrects.
        assert!(mismatch(Charging::Admission, 5_000, 3_000, 10_000, None));
        assert!(!mismatch(Charging::Admission, 5_000, 4_500, 10_000, None));
        // More than the window is another client's, or the refunds'.
        assert!(!mismatch(Charging::Admission, 5_000, 9_000, 10_000, None));
        assert!(!mismatch(Charging::Reconcile, 5_000, 9_000, 10_000, None));
        assert!(mismatch(
            Charging::Reconcile,
            5_000,
            9_000,
            10_000,
            Some(4_000)
        ));
        assert!(!mismatch(
            Charging::Reconcile,
            5_000,
            9_000,
            10_000,
            Some(8_000)
        ));
        assert!(!mismatch(
            Charging::Actual,
            5_000,
            3_000,
            10_000,
            Some(4_000)
        ));
    }
}
