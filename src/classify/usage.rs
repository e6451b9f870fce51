//! Token usage and the server's rate-limit state.

use std::time::Duration;

/// Tokens a call really used, as the response reports them.
///
/// A typed client reports usage from its response type (see
/// [`LlmResponse`](super::LlmResponse)); for `http::Response` insert a `Usage`
/// into the response's extensions once the body has been parsed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Usage {
    /// Input (prompt) tokens, cached ones included.
    pub prompt_tokens: u64,
    /// Output (completion) tokens.
    pub completion_tokens: u64,
    /// All tokens the call counted against the budget.
    pub total_tokens: u64,
    /// Input tokens served from the provider's prompt cache (some providers do
    /// not count them against input-token limits).
    pub cached_input_tokens: u64,
}

impl Usage {
    /// Usage with prompt and completion tokens; the total is their sum.
    pub const fn new(prompt_tokens: u64, completion_tokens: u64) -> Self {
        Usage {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens.saturating_add(completion_tokens),
            cached_input_tokens: 0,
        }
    }

    /// Sets the cached input tokens.
    pub const fn with_cached_input(mut self, cached: u64) -> Self {
        self.cached_input_tokens = cached;
        self
    }

    /// Input tokens that count against an input-token limit: the prompt less
    /// its cached part.
    pub const fn uncached_input_tokens(&self) -> u64 {
        self.prompt_tokens.saturating_sub(self.cached_input_tokens)
    }
}

/// One limit as the server reports it: every part is optional because servers
/// send some headers and not others.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct LimitState {
    /// The server's limit for this key.
    pub limit: Option<u64>,
    /// What is left of it now.
    pub remaining: Option<u64>,
    /// Time until the limit is back to full.
    pub reset: Option<Duration>,
}

impl LimitState {
    /// Whether no part is known.
    pub const fn is_empty(&self) -> bool {
        self.limit.is_none() && self.remaining.is_none() && self.reset.is_none()
    }
}

/// The server's view of its rate limits, from `x-ratelimit-*` or
/// `anthropic-ratelimit-*` headers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct RateLimitState {
    /// Requests.
    pub requests: LimitState,
    /// Tokens (input and output together).
    pub tokens: LimitState,
    /// Input tokens, where metered on their own.
    pub input_tokens: LimitState,
    /// Output tokens, where metered on their own.
    pub output_tokens: LimitState,
}

impl RateLimitState {
    /// Whether no limit is known.
    pub const fn is_empty(&self) -> bool {
        self.requests.is_empty()
            && self.tokens.is_empty()
            && self.input_tokens.is_empty()
            && self.output_tokens.is_empty()
    }
}
