//! The estimate itself and the bounds every estimate keeps.

use crate::request::TokenEstimate;

/// The most tokens any part of an estimate, or any learned completion, is
/// taken to be: 2^40 (about 1.1 trillion), the bound the rate layer puts on
/// usage reports (`rate::MAX_USAGE_TOKENS`).
///
/// A number above it in a request body (`"max_tokens": 1e300`) is a broken
/// or hostile value, not a budget: the largest context windows hold around
/// 10^7 tokens. Capping each part keeps sums far from `u64::MAX`.
pub const MAX_ESTIMATE_TOKENS: u64 = 1 << 40;

/// `tokens` capped at [`MAX_ESTIMATE_TOKENS`].
pub(crate) const fn cap(tokens: u64) -> u64 {
    if tokens > MAX_ESTIMATE_TOKENS {
        MAX_ESTIMATE_TOKENS
    } else {
        tokens
    }
}

/// A request's expected tokens, input and output apart, so budgets metered
/// separately (input and output tokens per minute) can each be charged
/// their part.
///
/// `total` is `input + output`; [`Estimate::new`] keeps it so, and every
/// estimate this module makes is built with it. Each part is at most
/// [`MAX_ESTIMATE_TOKENS`].
///
/// ```
/// use llm_sluice::estimate::Estimate;
/// use llm_sluice::TokenEstimate;
///
/// let estimate = Estimate::new(120, 512);
/// assert_eq!(estimate.total, 632);
/// assert_eq!(TokenEstimate::from(estimate), TokenEstimate(632));
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Estimate {
    /// Prompt tokens: the text of every message plus their overhead.
    pub input: u64,
    /// The most the reply may generate: the request's maximum times the
    /// number of choices, or a learned or default figure where it sets none.
    pub output: u64,
    /// Input and output together: what a single token budget is charged.
    pub total: u64,
}

impl Estimate {
    /// An estimate of `input` and `output` tokens, each capped at
    /// [`MAX_ESTIMATE_TOKENS`]; the total is their sum.
    pub const fn new(input: u64, output: u64) -> Self {
        let (input, output) = (cap(input), cap(output));
        Estimate {
            input,
            output,
            total: input + output,
        }
    }
}

impl From<Estimate> for TokenEstimate {
    fn from(estimate: Estimate) -> Self {
        TokenEstimate(estimate.total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_are_capped_and_summed() {
        let e = Estimate::new(u64::MAX, u64::MAX);
        assert_eq!(e.input, MAX_ESTIMATE_TOKENS);
        assert_eq!(e.output, MAX_ESTIMATE_TOKENS);
        assert_eq!(e.total, 2 * MAX_ESTIMATE_TOKENS);
        assert_eq!(Estimate::new(3, 4).total, 7);
    }
}
