//! The budgets of one scope (a partition, or the global budget).

use std::fmt;
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
    /// tokens.
    pub const fn from_usage(usage: &crate::classify::Usage) -> Self {
        Demand {
            requests: 1,
            tokens: usage.total_tokens,
            input_tokens: usage.uncached_input_tokens(),
            output_tokens: usage.completion_tokens,
        }
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
