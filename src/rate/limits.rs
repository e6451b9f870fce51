//! The budgets of one scope (a partition, or the global budget).

use std::fmt;
use std::sync::atomic::{fence, AtomicU64, Ordering};
use std::time::Duration;

use crate::error::ConfigError;

/// One budget a request spends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Budget {
    /// Requests per window.
    Requests,
    /// Tokens (input and output together) per window.
    Tokens,
    /// Input tokens per window, where metered on their own.
    InputTokens,
    /// Output tokens per window, where metered on their own.
    OutputTokens,
    /// The burst bound on requests: at most this many in any
    /// `window * burst / requests` interval (paced admission).
    RequestBurst,
    /// The burst bound on tokens: at most this many in any
    /// `window * burst / tokens` interval.
    TokenBurst,
}

impl Budget {
    /// Every budget, in index order.
    pub const ALL: [Budget; 6] = [
        Budget::Requests,
        Budget::Tokens,
        Budget::InputTokens,
        Budget::OutputTokens,
        Budget::RequestBurst,
        Budget::TokenBurst,
    ];

    /// A stable index in `0..6`, for stores that keep budgets in arrays.
    pub const fn index(self) -> usize {
        match self {
            Budget::Requests => 0,
            Budget::Tokens => 1,
            Budget::InputTokens => 2,
            Budget::OutputTokens => 3,
            Budget::RequestBurst => 4,
            Budget::TokenBurst => 5,
        }
    }

    /// The builder's name for the per-partition setting.
    pub const fn field(self) -> &'static str {
        match self {
            Budget::Requests => "requests_per_minute",
            Budget::Tokens => "tokens_per_minute",
            Budget::InputTokens => "input_tokens_per_minute",
            Budget::OutputTokens => "output_tokens_per_minute",
            Budget::RequestBurst => "request_burst",
            Budget::TokenBurst => "token_burst",
        }
    }

    const fn global_field(self) -> &'static str {
        match self {
            Budget::Requests => "global_requests_per_minute",
            Budget::Tokens => "global_tokens_per_minute",
            Budget::InputTokens => "global_input_tokens_per_minute",
            Budget::OutputTokens => "global_output_tokens_per_minute",
            Budget::RequestBurst => "global_request_burst",
            Budget::TokenBurst => "global_token_burst",
        }
    }

    /// The budget a burst bound paces, if this is one.
    const fn paced(self) -> Option<Budget> {
        match self {
            Budget::RequestBurst => Some(Budget::Requests),
            Budget::TokenBurst => Some(Budget::Tokens),
            _ => None,
        }
    }
}

/// How the provider counts a token budget against its limit, and so how the
/// window counts it: see the [module docs](super#charging-rules).
///
/// Set per token budget with [`Builder::charging`](super::Builder::charging)
/// (the same rule holds for the budget per partition and globally); the
/// request budget counts one per request whatever the rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
#[non_exhaustive]
pub enum Charging {
    /// Charged at admission from the estimate, never corrected: actual
    /// usage changes nothing in this budget. OpenAI documents its TPM this
    /// way (`max_tokens` plus an estimate from the prompt's characters);
    /// give the layer an estimate that mirrors the provider's.
    Admission,
    /// Estimated at admission, corrected to the actual usage when the
    /// response ends (Anthropic-style output-token limits). The default.
    #[default]
    Reconcile,
    /// Counted from actual usage only (other OpenAI-compatible servers).
    /// The window still holds the estimate until the usage is known, as
    /// with [`Reconcile`](Charging::Reconcile): it cannot know the usage
    /// before, and the provider will count it.
    Actual,
}

impl Charging {
    /// Whether actual usage corrects what was charged.
    pub const fn corrects(self) -> bool {
        !matches!(self, Charging::Admission)
    }
}

/// The most tokens one usage report is taken to count: 2^40 (about 1.1
/// trillion). [`Demand::from_usage`] caps every count at it, and the rate
/// layer counts each report it caps (`llm_sluice_rate_usage_capped_total`)
/// and logs a warning.
///
/// A report above it is a broken count, not usage: the largest context
/// windows hold around 10^7 tokens, 10^5 times less, while a client that
/// casts `-1` to `u64` reports 2^64 - 1. Taken as it is, such a report
/// fills the window for every realistic limit until it expires, as a capped
/// one does too (so the partition still waits one window, and recovers
/// then); but the token counters would jump by 2^64, and the window's sums
/// would have no margin left. 2^40 leaves 2^24 (16.7 million) such
/// reports before a `u64` sum could fill up, where the window also stops
/// them (each entry holds only what its sums can take; see the
/// [module docs](super#reconciliation)).
pub const MAX_USAGE_TOKENS: u64 = 1 << 40;

/// `tokens` capped at [`MAX_USAGE_TOKENS`].
const fn cap_usage(tokens: u64) -> u64 {
    if tokens > MAX_USAGE_TOKENS {
        MAX_USAGE_TOKENS
    } else {
        tokens
    }
}

/// What one request asks of the budgets: one request and its tokens.
///
/// Before the call only an estimate exists, and it is charged to every token
/// budget (total, input and output alike, since it bounds each of them);
/// after the call [`Demand::from_usage`] splits the actual usage.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Demand {
    /// Requests (1 for a call, 0 for a released one; the in-memory store
    /// counts any other non-zero value as 1).
    pub requests: u64,
    /// Total tokens.
    pub tokens: u64,
    /// Input tokens.
    pub input_tokens: u64,
    /// Output tokens.
    pub output_tokens: u64,
}

impl Demand {
    /// One request with a token estimate, charged to every token budget.
    pub const fn estimate(tokens: u64) -> Self {
        Demand {
            requests: 1,
            tokens,
            input_tokens: tokens,
            output_tokens: tokens,
        }
    }

    /// What a call really used: total tokens, uncached input tokens, output
    /// tokens, each capped at [`MAX_USAGE_TOKENS`] (a report above it is a
    /// broken count, not usage).
    pub const fn from_usage(usage: &crate::classify::Usage) -> Self {
        Demand {
            requests: 1,
            tokens: cap_usage(usage.total_tokens),
            input_tokens: cap_usage(usage.uncached_input_tokens()),
            output_tokens: cap_usage(usage.completion_tokens),
        }
    }

    /// Whether [`from_usage`](Self::from_usage) caps any count of `usage`.
    pub(crate) const fn caps_usage(usage: &crate::classify::Usage) -> bool {
        usage.total_tokens > MAX_USAGE_TOKENS
            || usage.uncached_input_tokens() > MAX_USAGE_TOKENS
            || usage.completion_tokens > MAX_USAGE_TOKENS
    }

    /// The amount this demand puts on each budget, by index, as the memory
    /// store counts it: a request is one (or none), whatever `requests`
    /// says above one.
    pub(crate) const fn amounts(&self) -> [u64; 6] {
        let requests = (self.requests != 0) as u64;
        [
            requests,
            self.tokens,
            self.input_tokens,
            self.output_tokens,
            requests,
            self.tokens,
        ]
    }

    /// The amount this demand puts on `budget`.
    pub const fn amount(&self, budget: Budget) -> u64 {
        match budget {
            Budget::Requests | Budget::RequestBurst => self.requests,
            Budget::Tokens | Budget::TokenBurst => self.tokens,
            Budget::InputTokens => self.input_tokens,
            Budget::OutputTokens => self.output_tokens,
        }
    }
}

/// The limits of one scope: a window length, its guard band and up to six
/// budgets.
///
/// Ten words, all plain integers: every admission takes a copy of them from
/// the limiter's one lock-free copy, so the copy is a copy of words, nothing
/// to convert.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Bit `budget.index()` set when `budget` is, in the low byte; above it,
    /// the guard band in nanoseconds. One word, so the copy an admission
    /// takes stays ten words: the guard is only needed where the counted
    /// span (below) is made, and the mask is a byte read.
    head: u64,
    /// Per budget: its limit (0 where unset).
    limits: [u64; 6],
    /// The burst bounds' sliding intervals in nanoseconds: `window * burst /
    /// limit`, rounded up (`span` while unset, so that a copy of the usual
    /// limits fills them from one word). The other budgets count over
    /// `span`.
    spans: [u64; 2],
    /// What the whole-window budgets count over, in nanoseconds: the window
    /// plus the guard band. Exact: a window is at most 31 days (the cap on
    /// every duration setting) and the guard shorter, far inside a `u64` of
    /// nanoseconds.
    span: u64,
}

/// The most guard band `head` can hold above the mask's byte.
const MAX_GUARD_NANOS: u64 = u64::MAX >> 8;

impl Limits {
    pub(crate) fn new(window: Duration) -> Self {
        let window = duration_nanos(window);
        Limits {
            head: 0,
            limits: [0; 6],
            spans: [window; 2],
            span: window,
        }
    }

    /// The same window and guard band, with no budget set.
    pub(crate) fn cleared(&self) -> Self {
        let mut cleared = Limits::new(self.window());
        cleared.set_guard_band(self.guard_band());
        cleared
    }

    /// The window length.
    pub fn window(&self) -> Duration {
        Duration::from_nanos(self.span - self.guard_nanos())
    }

    /// The guard band: how much longer than the window each reservation
    /// counts in the request and token budgets (see the
    /// [module docs](super#the-guard-band-at-the-window-edge)).
    pub fn guard_band(&self) -> Duration {
        Duration::from_nanos(self.guard_nanos())
    }

    #[inline]
    fn guard_nanos(&self) -> u64 {
        self.head >> 8
    }

    /// Sets the guard band (validated by the builder: shorter than the
    /// window).
    pub(crate) fn set_guard_band(&mut self, guard: Duration) {
        let window = self.span - self.guard_nanos();
        let guard = duration_nanos(guard).min(MAX_GUARD_NANOS);
        self.head = u64::from(self.mask()) | guard << 8;
        self.span = window.saturating_add(guard);
        self.recompute_spans();
    }

    /// The limit of `budget`, if set.
    pub fn get(&self, budget: Budget) -> Option<u64> {
        let i = budget.index();
        (self.mask() & (1 << i) != 0).then_some(self.limits[i])
    }

    /// The sliding interval `budget` is counted over: for the request and
    /// token budgets the window plus the [guard band](Self::guard_band); for
    /// a burst bound `window * burst / limit` (rounded up to the nanosecond,
    /// so pacing is never faster than a bucket refilled at `limit / window`),
    /// without the guard band.
    pub fn span(&self, budget: Budget) -> Duration {
        Duration::from_nanos(self.budget(budget.index()).1)
    }

    /// How long the windows take to free room for `demand` at the limits'
    /// own pace: the longest, over the whole-window budgets, of the window's
    /// share that `demand` is of the limit (one request at 60 per minute:
    /// 1 s). Zero with no budget set. What a refusal tells a caller to wait
    /// when the windows would fit the demand now but it could not wait for
    /// its turn.
    pub(crate) fn pace(&self, demand: &Demand) -> Duration {
        let amounts = demand.amounts();
        // Over the span an entry counts for: the window and its guard band.
        let mask = self.mask();
        let nanos = (0..4)
            .filter(|&i| mask & (1 << i) != 0 && self.limits[i] > 0)
            .map(|i| {
                let share = u128::from(self.span) * u128::from(amounts[i]);
                share.div_ceil(u128::from(self.limits[i]))
            })
            .max()
            .unwrap_or(0);
        let nanos = u64::try_from(nanos).unwrap_or(u64::MAX);
        Duration::from_nanos(nanos.min(self.span))
    }

    /// Whether any budget is set.
    pub fn is_empty(&self) -> bool {
        self.mask() == 0
    }

    pub(crate) fn set(&mut self, budget: Budget, value: Option<u64>) {
        let i = budget.index();
        match value {
            Some(v) => {
                self.head |= 1 << i;
                self.limits[i] = v;
            }
            None => {
                self.head &= !(1 << i);
                self.limits[i] = 0;
            }
        }
        self.recompute_spans();
    }

    fn recompute_spans(&mut self) {
        // Over the window itself: the guard band is not a burst's (see the
        // module docs).
        let window = self.span - self.guard_nanos();
        for budget in [Budget::RequestBurst, Budget::TokenBurst] {
            let span = match (budget.paced(), self.get(budget)) {
                (Some(paced), Some(burst)) => match self.get(paced) {
                    Some(limit) if limit > 0 => {
                        let nanos = u128::from(window) * u128::from(burst);
                        let nanos = nanos.div_ceil(u128::from(limit));
                        u64::try_from(nanos).unwrap_or(u64::MAX)
                    }
                    _ => window,
                },
                // Unset: as `load` fills it.
                _ => self.span,
            };
            self.spans[budget.index() - 4] = span;
        }
    }

    /// Bit `budget.index()` is set when `budget` is.
    #[inline]
    pub(crate) fn mask(&self) -> u8 {
        self.head as u8
    }

    /// The limit (0 when unset) and the span in nanoseconds of the budget
    /// with index `i`.
    #[inline(always)]
    pub(crate) fn budget(&self, i: usize) -> (u64, u64) {
        let span = match i {
            4 | 5 => self.spans[i - 4],
            _ => self.span,
        };
        (self.limits[i], span)
    }

    /// Checks every setting; `global` picks the field names.
    pub(crate) fn validate(&self, global: bool) -> Result<(), ConfigError> {
        let name = |b: Budget| if global { b.global_field() } else { b.field() };
        for budget in Budget::ALL {
            let Some(value) = self.get(budget) else {
                continue;
            };
            if value == 0 {
                return Err(ConfigError::new(name(budget), "must be at least 1"));
            }
            if let Some(paced) = budget.paced() {
                match self.get(paced) {
                    None => {
                        return Err(ConfigError::new(
                            name(budget),
                            "a burst bound needs the budget it paces to be set",
                        ))
                    }
                    Some(limit) if value > limit => {
                        return Err(ConfigError::new(
                            name(budget),
                            "a burst bound cannot exceed the budget it paces",
                        ))
                    }
                    Some(_) => {}
                }
            }
        }
        Ok(())
    }
}

/// How many words [`SeqLimits`] keeps per scope: the mask (with the guard
/// band), the six limits, the two burst spans and the counted span.
const WORDS: usize = 10;

impl Limits {
    /// The limits as words, for [`SeqLimits`].
    fn to_words(self) -> [u64; WORDS] {
        let l = &self.limits;
        [
            self.head,
            l[0],
            l[1],
            l[2],
            l[3],
            l[4],
            l[5],
            self.spans[0],
            self.spans[1],
            self.span,
        ]
    }
}

/// The partition and global limits of one limiter, read by every admission
/// without a lock: a sequence lock over atomic words (no `unsafe`).
///
/// One copy for the whole limiter, so it stays in cache however many
/// partitions there are (a copy per partition cost a cache miss per keyed
/// admission). Writers are serialized by the caller (the limiter's limits
/// lock); a writer makes the sequence number odd, stores the words, and makes
/// it even again. A reader loads the sequence number, the words, then the
/// number again, and retries if it changed or was odd: it never returns a
/// mix of two versions.
pub(crate) struct SeqLimits {
    seq: AtomicU64,
    part: [AtomicU64; WORDS],
    /// All zero (mask 0) when no global limits are set.
    global: [AtomicU64; WORDS],
}

impl SeqLimits {
    pub(crate) fn new(part: &Limits, global: Option<&Limits>) -> Self {
        let words = |w: [u64; WORDS]| w.map(AtomicU64::new);
        SeqLimits {
            seq: AtomicU64::new(0),
            part: words(part.to_words()),
            global: words(global.map_or([0; WORDS], |g| g.to_words())),
        }
    }

    /// Publishes new limits. The caller serializes writers (holds the
    /// limits' write lock).
    pub(crate) fn store(&self, part: &Limits, global: Option<&Limits>) {
        let seq = self.seq.load(Ordering::Relaxed);
        self.seq.store(seq.wrapping_add(1), Ordering::Relaxed);
        // Orders the odd number before the words: a reader that sees any new
        // word sees the sequence number changed when it looks again.
        fence(Ordering::Release);
        for (slot, w) in self.part.iter().zip(part.to_words()) {
            slot.store(w, Ordering::Relaxed);
        }
        let global = global.map_or([0; WORDS], |g| g.to_words());
        for (slot, w) in self.global.iter().zip(global) {
            slot.store(w, Ordering::Relaxed);
        }
        self.seq.store(seq.wrapping_add(2), Ordering::Release);
    }

    /// The partition limits, when no global limits are set and no writer
    /// interferes: one straight pass (no loop, no second value), so the
    /// words load straight into the returned value. `None` means: ask
    /// [`load`](Self::load).
    #[inline(always)]
    pub(crate) fn partition_only(&self) -> Option<Limits> {
        let seq = self.seq.load(Ordering::Acquire);
        let part = load(&self.part);
        let global = self.global[0].load(Ordering::Relaxed);
        // Orders the word loads before the second look: if any of them saw
        // a write, that writer's odd sequence number is seen now.
        fence(Ordering::Acquire);
        (seq & 1 == 0 && global == 0 && self.seq.load(Ordering::Relaxed) == seq).then_some(part)
    }

    /// The partition limits and the global ones (if set), as of one write.
    pub(crate) fn load(&self) -> (Limits, Option<Limits>) {
        loop {
            let seq = self.seq.load(Ordering::Acquire);
            if seq & 1 == 0 {
                let part = load(&self.part);
                let global =
                    (self.global[0].load(Ordering::Relaxed) != 0).then(|| load(&self.global));
                // As in `partition_only`.
                fence(Ordering::Acquire);
                if self.seq.load(Ordering::Relaxed) == seq {
                    return (part, global);
                }
            }
            std::hint::spin_loop();
        }
    }
}

/// The limits in `w` (as [`Limits::to_words`] made them), each word loaded
/// straight into its field. With only requests and tokens set (the usual
/// case) the other words are known without loading them: an unset limit is
/// 0 and an unset burst's span is the counted span.
#[inline(always)]
fn load(w: &[AtomicU64; WORDS]) -> Limits {
    let word = |i: usize| w[i].load(Ordering::Relaxed);
    let head = word(0);
    let span = word(9);
    if head & 0b1111_1100 == 0 {
        return Limits {
            head,
            limits: [word(1), word(2), 0, 0, 0, 0],
            spans: [span; 2],
            span,
        };
    }
    Limits {
        head,
        limits: [word(1), word(2), word(3), word(4), word(5), word(6)],
        spans: [word(7), word(8)],
        span,
    }
}

/// A duration in whole nanoseconds, saturating (settings are capped far
/// below the 584 years a `u64` holds).
pub(crate) fn duration_nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl fmt::Debug for Limits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Limits");
        d.field("window", &self.window());
        d.field("guard_band", &self.guard_band());
        for budget in Budget::ALL {
            if let Some(v) = self.get(budget) {
                d.field(budget.field(), &v);
            }
        }
        d.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_span_is_the_bucket_refill_time_rounded_up() {
        let mut limits = Limits::new(Duration::from_secs(60));
        limits.set(Budget::Requests, Some(60));
        limits.set(Budget::RequestBurst, Some(5));
        assert_eq!(limits.span(Budget::RequestBurst), Duration::from_secs(5));
        limits.set(Budget::Requests, Some(7));
        limits.set(Budget::RequestBurst, Some(1));
        // 60/7 s = 8.571428571428... s, rounded up
        assert_eq!(
            limits.span(Budget::RequestBurst),
            Duration::from_nanos(8_571_428_572)
        );
        assert_eq!(limits.span(Budget::Requests), Duration::from_secs(60));
    }

    #[test]
    fn seq_limits_round_trip_every_setting() {
        let mut part = Limits::new(Duration::from_millis(1500));
        part.set(Budget::Requests, Some(7));
        part.set(Budget::RequestBurst, Some(2));
        part.set(Budget::OutputTokens, Some(u64::MAX));
        let mut global = Limits::new(Duration::from_millis(1500));
        global.set(Budget::Tokens, Some(1000));
        global.set(Budget::TokenBurst, Some(3));
        let seq = SeqLimits::new(&part, None);
        assert_eq!(seq.load(), (part, None));
        // The guard band shares the mask's word; the usual two budgets load
        // by the short path.
        let mut guarded = Limits::new(Duration::from_secs(60));
        guarded.set_guard_band(Duration::from_millis(250));
        guarded.set(Budget::Requests, Some(60));
        guarded.set(Budget::Tokens, Some(1_000));
        let loaded = SeqLimits::new(&guarded, None).partition_only().unwrap();
        assert_eq!(loaded, guarded);
        assert_eq!(loaded.mask(), 0b11);
        assert_eq!(
            (loaded.window(), loaded.guard_band()),
            (Duration::from_secs(60), Duration::from_millis(250))
        );
        assert_eq!(loaded.span(Budget::Tokens), Duration::from_millis(60_250));
        assert_eq!(loaded.cleared().guard_band(), Duration::from_millis(250));
        seq.store(&part, Some(&global));
        assert_eq!(seq.load(), (part, Some(global)));
        assert_eq!(
            seq.load().1.unwrap().span(Budget::TokenBurst),
            global.span(Budget::TokenBurst)
        );
        seq.store(&global, None);
        assert_eq!(seq.load(), (global, None));
    }

    #[test]
    fn seq_limits_readers_never_see_a_torn_write() {
        // Two versions that differ in every word; a reader racing the
        // writer sees one or the other, whole.
        let mut a = Limits::new(Duration::from_secs(60));
        let mut b = Limits::new(Duration::from_secs(30));
        for (i, budget) in Budget::ALL.into_iter().enumerate().take(4) {
            a.set(budget, Some(100 + i as u64));
            b.set(budget, Some(200 + i as u64));
        }
        a.set(Budget::RequestBurst, Some(10));
        b.set(Budget::TokenBurst, Some(20));
        let seq = std::sync::Arc::new(SeqLimits::new(&a, Some(&b)));
        let writer = {
            let seq = seq.clone();
            std::thread::spawn(move || {
                for i in 0..20_000 {
                    if i % 2 == 0 {
                        seq.store(&b, Some(&a));
                    } else {
                        seq.store(&a, Some(&b));
                    }
                }
            })
        };
        for _ in 0..20_000 {
            let got = seq.load();
            assert!(got == (a, Some(b)) || got == (b, Some(a)), "{got:?}");
        }
        writer.join().unwrap();
    }

    #[test]
    fn validation_names_the_field() {
        let mut limits = Limits::new(Duration::from_secs(60));
        limits.set(Budget::TokenBurst, Some(10));
        assert_eq!(limits.validate(false).unwrap_err().field(), "token_burst");
        limits.set(Budget::Tokens, Some(5));
        assert_eq!(
            limits.validate(true).unwrap_err().field(),
            "global_token_burst"
        );
        limits.set(Budget::Tokens, Some(0));
        assert_eq!(
            limits.validate(false).unwrap_err().field(),
            "tokens_per_minute"
        );
    }
}
