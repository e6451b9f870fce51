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

/// What one request asks of the budgets: one request and its tokens.
///
/// Before the call only an estimate exists, and it is charged to every token
/// budget (total, input and output alike, since it bounds each of them);
/// after the call [`Demand::from_usage`] splits the actual usage.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Demand {
    /// Requests (1 for a call, 0 for a released one).
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
    /// tokens.
    pub const fn from_usage(usage: &crate::classify::Usage) -> Self {
        Demand {
            requests: 1,
            tokens: usage.total_tokens,
            input_tokens: usage.uncached_input_tokens(),
            output_tokens: usage.completion_tokens,
        }
    }

    /// The amount this demand puts on each budget, by index.
    pub(crate) const fn amounts(&self) -> [u64; 6] {
        [
            self.requests,
            self.tokens,
            self.input_tokens,
            self.output_tokens,
            self.requests,
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

/// The limits of one scope: a window length and up to six budgets.
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(C)] // the mask and the first budgets side by side (the window is cold)
pub struct Limits {
    /// Bit `budget.index()` set when `budget` is.
    mask: u8,
    /// Per budget: its limit (0 where unset) and the sliding interval it is
    /// counted over in nanoseconds (the window, or the burst interval
    /// `window * burst / limit`, rounded up). Side by side, so an admission
    /// reads one place per budget; the whole value is small enough that
    /// every partition keeps a copy.
    budgets: [(u64, u64); 6],
    window: Duration,
}

impl Limits {
    pub(crate) fn new(window: Duration) -> Self {
        Limits {
            window,
            mask: 0,
            budgets: [(0, duration_nanos(window)); 6],
        }
    }

    /// The window length.
    pub fn window(&self) -> Duration {
        self.window
    }

    /// The limit of `budget`, if set.
    pub fn get(&self, budget: Budget) -> Option<u64> {
        let i = budget.index();
        (self.mask & (1 << i) != 0).then_some(self.budgets[i].0)
    }

    /// The sliding interval `budget` is counted over: the window, or for a
    /// burst bound `window * burst / limit` (rounded up to the nanosecond, so
    /// pacing is never faster than a bucket refilled at `limit / window`).
    pub fn span(&self, budget: Budget) -> Duration {
        let nanos = self.budgets[budget.index()].1;
        if nanos == duration_nanos(self.window) {
            self.window
        } else {
            Duration::from_nanos(nanos)
        }
    }

    /// Whether any budget is set.
    pub fn is_empty(&self) -> bool {
        self.mask == 0
    }

    pub(crate) fn set(&mut self, budget: Budget, value: Option<u64>) {
        let i = budget.index();
        match value {
            Some(v) => {
                self.mask |= 1 << i;
                self.budgets[i].0 = v;
            }
            None => {
                self.mask &= !(1 << i);
                self.budgets[i].0 = 0;
            }
        }
        self.recompute_spans();
    }

    fn recompute_spans(&mut self) {
        let window = duration_nanos(self.window);
        for budget in Budget::ALL {
            let span = match (budget.paced(), self.get(budget)) {
                (Some(paced), Some(burst)) => match self.get(paced) {
                    Some(limit) if limit > 0 => {
                        let nanos = u128::from(window) * u128::from(burst);
                        let nanos = nanos.div_ceil(u128::from(limit));
                        u64::try_from(nanos).unwrap_or(u64::MAX)
                    }
                    _ => window,
                },
                _ => window,
            };
            self.budgets[budget.index()].1 = span;
        }
    }

    /// Bit `budget.index()` is set when `budget` is.
    #[inline]
    pub(crate) fn mask(&self) -> u8 {
        self.mask
    }

    /// The limit (0 when unset) and the span in nanoseconds of the budget
    /// with index `i`.
    #[inline]
    pub(crate) fn budget(&self, i: usize) -> (u64, u64) {
        self.budgets[i]
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

/// Words of one [`Limits`] in a [`LimitsCell`]: mask, six (limit, span)
/// pairs, window seconds, window nanoseconds.
const WORDS: usize = 15;

/// The partition and global limits, readable without a lock (a sequence
/// lock over atomic words).
///
/// Every admission reads the limits. A lock (even a read lock: two atomic
/// read-modify-writes on one shared line) costs more than the admission's own
/// work, and a copy per partition costs a cache miss per keyed admission in a
/// large map; this one copy stays in every core's cache while the limits do
/// not change. Writers are serialized by the caller (the limiter's write
/// lock); a reader that overlaps a write sees an odd or changed sequence and
/// reports `None`, and the caller takes the lock instead.
pub(crate) struct LimitsCell {
    seq: AtomicU64,
    limits: [AtomicU64; WORDS],
    /// Whether global limits are set (0 or 1), then their words.
    has_global: AtomicU64,
    global: [AtomicU64; WORDS],
}

impl LimitsCell {
    pub(crate) fn new(limits: &Limits, global: Option<&Limits>) -> Self {
        let cell = LimitsCell {
            seq: AtomicU64::new(0),
            limits: std::array::from_fn(|_| AtomicU64::new(0)),
            has_global: AtomicU64::new(0),
            global: std::array::from_fn(|_| AtomicU64::new(0)),
        };
        cell.write(limits, global);
        cell
    }

    /// Publishes new limits. Callers must not write concurrently (hold the
    /// limiter's write lock).
    pub(crate) fn write(&self, limits: &Limits, global: Option<&Limits>) {
        let seq = self.seq.load(Ordering::Relaxed);
        // Odd: a write is under way.
        self.seq.store(seq.wrapping_add(1), Ordering::Relaxed);
        fence(Ordering::Release);
        store_words(&self.limits, limits.to_words());
        self.has_global
            .store(u64::from(global.is_some()), Ordering::Relaxed);
        if let Some(global) = global {
            store_words(&self.global, global.to_words());
        }
        self.seq.store(seq.wrapping_add(2), Ordering::Release);
    }

    /// The limits, or `None` while a write is under way.
    #[inline]
    pub(crate) fn read(&self) -> Option<(Limits, Option<Limits>)> {
        let seq = self.seq.load(Ordering::Acquire);
        if seq & 1 == 1 {
            return None;
        }
        let limits = load_words(&self.limits);
        let global =
            (self.has_global.load(Ordering::Relaxed) == 1).then(|| load_words(&self.global));
        fence(Ordering::Acquire);
        if self.seq.load(Ordering::Relaxed) != seq {
            return None;
        }
        Some((
            Limits::from_words(&limits),
            global.map(|g| Limits::from_words(&g)),
        ))
    }
}

fn store_words(cells: &[AtomicU64; WORDS], words: [u64; WORDS]) {
    for (cell, word) in cells.iter().zip(words) {
        cell.store(word, Ordering::Relaxed);
    }
}

#[inline(always)]
fn load_words(cells: &[AtomicU64; WORDS]) -> [u64; WORDS] {
    std::array::from_fn(|i| cells[i].load(Ordering::Relaxed))
}

impl Limits {
    fn to_words(self) -> [u64; WORDS] {
        let mut words = [0; WORDS];
        words[0] = u64::from(self.mask);
        for (i, (limit, span)) in self.budgets.into_iter().enumerate() {
            words[1 + 2 * i] = limit;
            words[2 + 2 * i] = span;
        }
        words[13] = self.window.as_secs();
        words[14] = u64::from(self.window.subsec_nanos());
        words
    }

    #[inline(always)]
    fn from_words(words: &[u64; WORDS]) -> Self {
        Limits {
            // Written from a u8 by `to_words`; a torn read is discarded.
            mask: words[0] as u8,
            budgets: std::array::from_fn(|i| (words[1 + 2 * i], words[2 + 2 * i])),
            // `subsec_nanos` is below 10^9, so this cannot carry (a torn
            // read is discarded before it is used).
            window: Duration::new(words[13], (words[14] % 1_000_000_000) as u32),
        }
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
        d.field("window", &self.window);
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
    fn limits_cell_round_trips_both_scopes() {
        let mut limits = Limits::new(Duration::new(60, 123_456_789));
        limits.set(Budget::Requests, Some(60));
        limits.set(Budget::RequestBurst, Some(5));
        limits.set(Budget::OutputTokens, Some(u64::MAX));
        let mut global = Limits::new(Duration::from_secs(60));
        global.set(Budget::Tokens, Some(1_000));
        let cell = LimitsCell::new(&limits, None);
        assert_eq!(cell.read(), Some((limits, None)));
        cell.write(&limits, Some(&global));
        assert_eq!(cell.read(), Some((limits, Some(global))));
        cell.write(&global, None);
        assert_eq!(cell.read(), Some((global, None)));
    }

    #[test]
    fn limits_cell_readers_never_see_a_torn_write() {
        // One writer flips between two sets; readers must see one of them
        // whole (or `None`), never a mix.
        let mut a = Limits::new(Duration::from_secs(60));
        a.set(Budget::Requests, Some(1));
        a.set(Budget::Tokens, Some(1));
        let mut b = Limits::new(Duration::from_secs(1));
        b.set(Budget::Requests, Some(u64::MAX));
        b.set(Budget::InputTokens, Some(u64::MAX));
        let cell = LimitsCell::new(&a, None);
        let seen = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|scope| {
            for _ in 0..2 {
                scope.spawn(|| {
                    for _ in 0..20_000 {
                        match cell.read() {
                            Some((l, None)) => assert!(l == a || l == b, "torn: {l:?}"),
                            Some((l, Some(g))) => {
                                assert!(l == b && g == a, "torn: {l:?} {g:?}")
                            }
                            None => {}
                        }
                        seen.fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
            for i in 0..20_000 {
                match i % 3 {
                    0 => cell.write(&a, None),
                    1 => cell.write(&b, None),
                    _ => cell.write(&b, Some(&a)),
                }
            }
        });
        assert_eq!(seen.load(Ordering::Relaxed), 40_000);
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
