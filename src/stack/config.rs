//! The configuration of a whole stack: a plain struct per layer, with the
//! defaults a first deployment should start from.

use std::time::Duration;

#[cfg(feature = "serde")]
use serde::{Deserialize, Serialize};

use crate::breaker::{CircuitBreakerBuilder, CircuitBreakerLayer};
use crate::concurrency::ConcurrencyLimitLayer;
use crate::error::ConfigError;
use crate::rate::{Budget, Charging, LearnLimits, RateLimitLayer};
use crate::retry::{Jitter, RetryBudget, RetryLayer};
use crate::timeout::{DeadlineLayer, TimeoutLayer};

#[cfg(feature = "serde")]
use super::duration::{guard_serde, opt_serde, plain as dur_serde};

/// Everything [`LlmStack`](super::LlmStack) needs, one section per layer.
///
/// `StackConfig::default()` is a sound start for one upstream: a queue of
/// 1,024 in front of 64 requests in flight, a breaker that opens at a 50%
/// failure rate, two retries with full-jitter backoff, a 120 s attempt
/// timeout and a 60 s idle timeout between body chunks. The rate window is
/// off until a limit is set, because only the provider's limits make sense
/// there. Each section can be turned off with `enabled = false`.
///
/// With the `serde` feature the configuration reads from TOML, JSON or any
/// serde format; missing fields take their defaults, unknown fields are
/// refused, durations are written as `"30s"`, `"1m 30s"`, `"250ms"`, and
/// `"off"` turns off an optional one whose default is on. Read through
/// `StackConfig::from_deserializer` (feature `serde`), a value that cannot
/// be read is a [`ConfigError`] naming its section and field
/// (`retry.backoff_base`), as [`LlmStack::from_config`](super::LlmStack::from_config)
/// names a value that reads but is invalid:
///
/// ```
/// # #[cfg(feature = "serde")] {
/// use llm_sluice::stack::StackConfig;
///
/// let config: StackConfig = serde_json::from_str(r#"{
///     "deadline": "5m",
///     "rate": { "requests_per_minute": 500, "tokens_per_minute": 200000 },
///     "concurrency": { "max_in_flight": 32 },
///     "retry": { "enabled": false }
/// }"#).unwrap();
/// assert_eq!(config.concurrency.max_in_flight, 32);
/// assert_eq!(config.concurrency.max_queued, 1024); // the default
/// assert!(!config.retry.enabled);
/// # }
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
#[cfg_attr(feature = "serde", derive(Serialize, Deserialize))]
#[cfg_attr(feature = "serde", serde(default, deny_unknown_fields))]
#[non_exhaustive]
pub struct StackConfig {
    /// The total time a request may take, all attempts, waits and fallback
    /// included (the outermost [`DeadlineLayer`]). Default: none, so only a
    /// caller's own [`Deadline`](crate::Deadline) bounds it.
    #[cfg_attr(feature = "serde", serde(with = "opt_serde"))]
    pub deadline: Option<Duration>,
    /// Retries of failed attempts.
    pub retry: RetryConfig,
    /// The circuit breaker.
    pub breaker: BreakerConfig,
    /// The concurrency limit and its priority queue.
    pub concurrency: ConcurrencyConfig,
    /// The sliding RPM/TPM window.
    pub rate: RateConfig,
    /// Timeouts of one attempt.
    pub timeout: TimeoutConfig,
}

/// Settings of the [`ConcurrencyLimitLayer`]. Its services share one limiter.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(Serialize, Deserialize))]
#[cfg_attr(feature = "serde", serde(default, deny_unknown_fields))]
#[non_exhaustive]
pub struct ConcurrencyConfig {
    /// Whether the layer is in the stack (default `true`).
    pub enabled: bool,
    /// Requests in the upstream at once (default 64).
    pub max_in_flight: usize,
    /// Requests that may wait for a permit (default 1,024).
    pub max_queued: usize,
    /// The longest a request waits in the queue (default 30 s).
    #[cfg_attr(feature = "serde", serde(with = "dur_serde"))]
    pub max_queue_wait: Duration,
    /// Time for a waiting request to rise one priority level (default 5 s);
    /// `None` is strict priority.
    #[cfg_attr(feature = "serde", serde(with = "opt_serde"))]
    pub aging: Option<Duration>,
}

impl Default for ConcurrencyConfig {
    fn default() -> Self {
        ConcurrencyConfig {
            enabled: true,
            max_in_flight: 64,
            max_queued: 1024,
            max_queue_wait: Duration::from_secs(30),
            aging: Some(crate::concurrency::DEFAULT_AGING),
        }
    }
}

impl ConcurrencyConfig {
    /// The layer, and whether it limits anything. The part cannot simply be
    /// left out: it changes the response type (an `http::Response` body then
    /// holds its permit), so when disabled it is a limiter without a limit.
    pub(crate) fn layer(
        &self,
        stats: Option<&crate::stats::Stats>,
    ) -> Result<(ConcurrencyLimitLayer, bool), ConfigError> {
        if !self.enabled {
            let mut unlimited =
                ConcurrencyLimitLayer::builder().max_in_flight(crate::concurrency::MAX_PERMITS);
            if let Some(stats) = stats {
                unlimited = unlimited.stats(stats);
            }
            let unlimited = unlimited
                .build_shared()
                .map_err(|e| e.in_section("concurrency"))?;
            return Ok((unlimited, false));
        }
        let mut builder = ConcurrencyLimitLayer::builder()
            .max_in_flight(self.max_in_flight)
            .max_queued(self.max_queued)
            .max_queue_wait(self.max_queue_wait);
        builder = match self.aging {
            Some(aging) => builder.aging(aging),
            None => builder.without_aging(),
        };
        if let Some(stats) = stats {
            builder = builder.stats(stats);
        }
        builder
            .build_shared()
            .map(|layer| (layer, true))
            .map_err(|e| e.in_section("concurrency"))
    }
}

/// Settings of the [`RateLimitLayer`]: budgets per window, per partition
/// unless the name starts with `global_`.
///
/// The layer is in the stack when `enabled` is `true` and at least one
/// budget is set, or `learn_limits` is given as `tighten_only` or `follow`
/// (then every budget starts unlimited and is learned from the provider's
/// rate-limit headers); otherwise there is nothing to enforce.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(Serialize, Deserialize))]
#[cfg_attr(feature = "serde", serde(default, deny_unknown_fields))]
#[non_exhaustive]
pub struct RateConfig {
    /// Whether the layer is in the stack when a budget is set (default `true`).
    pub enabled: bool,
    /// Requests per window, per partition.
    pub requests_per_minute: Option<u64>,
    /// Tokens (input + output) per window, per partition.
    pub tokens_per_minute: Option<u64>,
    /// Input tokens per window, per partition.
    pub input_tokens_per_minute: Option<u64>,
    /// Output tokens per window, per partition.
    pub output_tokens_per_minute: Option<u64>,
    /// Paces requests: at most this many in any `window * burst / limit`.
    pub request_burst: Option<u64>,
    /// Paces tokens the same way.
    pub token_burst: Option<u64>,
    /// Requests per window across all partitions.
    pub global_requests_per_minute: Option<u64>,
    /// Tokens per window across all partitions.
    pub global_tokens_per_minute: Option<u64>,
    /// How the provider counts the token budget: `admission` (from the
    /// estimate, never corrected: OpenAI's TPM), `reconcile` (estimated,
    /// then corrected to actual usage; the default) or `actual` (counted
    /// from actual usage). See [`Charging`].
    pub token_charging: Charging,
    /// The same for the input-token budget.
    pub input_token_charging: Charging,
    /// The same for the output-token budget.
    pub output_token_charging: Charging,
    /// Whether the limits the provider reports are learned:
    /// `tighten_only` (never above a configured limit; the layer's default),
    /// `follow` or `off`. Given as `tighten_only` or `follow`, the layer is
    /// in the stack even with no budget set. See [`LearnLimits`].
    pub learn_limits: Option<LearnLimits>,
    /// The window length (default 60 s).
    #[cfg_attr(feature = "serde", serde(with = "dur_serde"))]
    pub window: Duration,
    /// How much longer than the window each reservation counts, so that
    /// transit to the provider does not land requests just inside its
    /// window (see [`guard_band`](crate::rate::Builder::guard_band)).
    /// `None` (or leaving it out) is the layer's default:
    /// [`DEFAULT_GUARD_BAND`](crate::rate::DEFAULT_GUARD_BAND), 250 ms, at
    /// most a hundredth of the window; `"0s"` or `"off"` turns it off.
    #[cfg_attr(
        feature = "serde",
        serde(default, with = "guard_serde", skip_serializing_if = "Option::is_none")
    )]
    pub guard_band: Option<Duration>,
    /// The longest a request waits for room (default: the window and its
    /// guard band).
    #[cfg_attr(feature = "serde", serde(with = "opt_serde"))]
    pub max_wait: Option<Duration>,
    /// Requests that may wait for room (default 10,000).
    pub max_waiters: usize,
    /// Partitions with a window of their own (default 10,000).
    pub max_partitions: usize,
}

impl Default for RateConfig {
    fn default() -> Self {
        RateConfig {
            enabled: true,
            requests_per_minute: None,
            tokens_per_minute: None,
            input_tokens_per_minute: None,
            output_tokens_per_minute: None,
            request_burst: None,
            token_burst: None,
            global_requests_per_minute: None,
            global_tokens_per_minute: None,
            token_charging: Charging::Reconcile,
            input_token_charging: Charging::Reconcile,
            output_token_charging: Charging::Reconcile,
            learn_limits: None,
            window: Duration::from_secs(60),
            guard_band: None,
            max_wait: None,
            max_waiters: 10_000,
            max_partitions: 10_000,
        }
    }
}

impl RateConfig {
    fn has_budget(&self) -> bool {
        [
            self.requests_per_minute,
            self.tokens_per_minute,
            self.input_tokens_per_minute,
            self.output_tokens_per_minute,
            self.global_requests_per_minute,
            self.global_tokens_per_minute,
        ]
        .iter()
        .any(Option::is_some)
    }

    pub(crate) fn layer<C>(&self, classifier: C) -> Result<Option<RateLimitLayer<C>>, ConfigError> {
        let learns = matches!(
            self.learn_limits,
            Some(LearnLimits::TightenOnly | LearnLimits::Follow)
        );
        if !self.enabled || !(self.has_budget() || learns) {
            return Ok(None);
        }
        let mut b = RateLimitLayer::builder()
            .classifier(classifier)
            .window(self.window)
            .max_waiters(self.max_waiters)
            .max_partitions(self.max_partitions)
            .charging(Budget::Tokens, self.token_charging)
            .charging(Budget::InputTokens, self.input_token_charging)
            .charging(Budget::OutputTokens, self.output_token_charging);
        if let Some(learn) = self.learn_limits {
            b = b.learn_limits(learn);
        }
        let optional = [
            (
                self.requests_per_minute,
                Builder::requests_per_minute as Setter<C>,
            ),
            (self.tokens_per_minute, Builder::tokens_per_minute),
            (
                self.input_tokens_per_minute,
                Builder::input_tokens_per_minute,
            ),
            (
                self.output_tokens_per_minute,
                Builder::output_tokens_per_minute,
            ),
            (self.request_burst, Builder::request_burst),
            (self.token_burst, Builder::token_burst),
            (
                self.global_requests_per_minute,
                Builder::global_requests_per_minute,
            ),
            (
                self.global_tokens_per_minute,
                Builder::global_tokens_per_minute,
            ),
        ];
        for (value, set) in optional {
            if let Some(value) = value {
                b = set(b, value);
            }
        }
        if let Some(wait) = self.max_wait {
            b = b.max_wait(wait);
        }
        if let Some(guard) = self.guard_band {
            b = b.guard_band(guard);
        }
        b.build().map(Some).map_err(|e| e.in_section("rate"))
    }
}

type Builder<C> = crate::rate::Builder<C>;
type Setter<C> = fn(Builder<C>, u64) -> Builder<C>;

/// Settings of the [`CircuitBreakerLayer`].
///
/// With neither `consecutive_failures` nor `failure_rate` nor a slow-call
/// rule set, the breaker opens at a 50% failure rate over the last 100 calls.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(Serialize, Deserialize))]
#[cfg_attr(feature = "serde", serde(default, deny_unknown_fields))]
#[non_exhaustive]
pub struct BreakerConfig {
    /// Whether the layer is in the stack (default `true`).
    pub enabled: bool,
    /// Opens after this many failures in a row.
    pub consecutive_failures: Option<u32>,
    /// Opens when this fraction (in `(0, 1]`) of the window's calls failed.
    pub failure_rate: Option<f64>,
    /// Measures rates over the last this many calls (default 100).
    pub count_window: Option<u32>,
    /// Measures rates over a time window instead of a count.
    #[cfg_attr(feature = "serde", serde(with = "opt_serde"))]
    pub time_window: Option<Duration>,
    /// Rates count once the window holds this many calls (default 20).
    pub minimum_calls: u32,
    /// A call slower than this (to its response) is slow.
    #[cfg_attr(feature = "serde", serde(with = "opt_serde"))]
    pub slow_call_threshold: Option<Duration>,
    /// Opens when this fraction of the window's calls were slow (default 1.0;
    /// used only with `slow_call_threshold`).
    pub slow_call_rate: f64,
    /// How long the breaker stays open (default 30 s).
    #[cfg_attr(feature = "serde", serde(with = "dur_serde"))]
    pub open_duration: Duration,
    /// Multiplies the open duration for each consecutive opening (at least 1).
    pub open_duration_multiplier: Option<f64>,
    /// The longest open duration the multiplier reaches (default 10 min).
    #[cfg_attr(feature = "serde", serde(with = "dur_serde"))]
    pub max_open_duration: Duration,
    /// Probe calls let through when half-open (default 3).
    pub half_open_probes: u32,
    /// The longest a half-open probe may stay unanswered before it counts as
    /// a failed probe (default 120 s). Keep it longer than a probe's queue
    /// wait + window wait + attempt timeout: probes wait in the queue like
    /// any request.
    #[cfg_attr(feature = "serde", serde(with = "dur_serde"))]
    pub half_open_max_wait: Duration,
    /// One breaker per partition key, at most this many.
    pub per_partition: Option<usize>,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            enabled: true,
            consecutive_failures: None,
            failure_rate: None,
            count_window: None,
            time_window: None,
            minimum_calls: 20,
            slow_call_threshold: None,
            slow_call_rate: 1.0,
            open_duration: Duration::from_secs(30),
            open_duration_multiplier: None,
            max_open_duration: Duration::from_secs(600),
            half_open_probes: 3,
            half_open_max_wait: Duration::from_secs(120),
            per_partition: None,
        }
    }
}

impl BreakerConfig {
    pub(crate) fn layer<C>(
        &self,
        classifier: C,
        on_change: Option<&super::OnChange>,
    ) -> Result<Option<CircuitBreakerLayer<C>>, ConfigError> {
        if !self.enabled {
            return Ok(None);
        }
        let mut b: CircuitBreakerBuilder<C> = CircuitBreakerLayer::builder()
            .classifier(classifier)
            .minimum_calls(self.minimum_calls)
            .open_duration(self.open_duration)
            .half_open_probes(self.half_open_probes)
            .half_open_max_wait(self.half_open_max_wait);
        if let Some(n) = self.consecutive_failures {
            b = b.consecutive_failures(n);
        }
        if let Some(rate) = self.failure_rate {
            b = b.failure_rate(rate);
        }
        if let Some(n) = self.count_window {
            b = b.count_window(n);
        }
        if let Some(window) = self.time_window {
            b = b.time_window(window);
        }
        if let Some(threshold) = self.slow_call_threshold {
            b = b.slow_call(threshold, self.slow_call_rate);
        }
        if let Some(multiplier) = self.open_duration_multiplier {
            b = b.open_duration_backoff(multiplier, self.max_open_duration);
        }
        if let Some(max) = self.per_partition {
            b = b.per_partition(max);
        }
        if let Some(callback) = on_change {
            let callback = callback.clone();
            b = b.on_state_change(move |change| callback(change));
        }
        b.build().map(Some).map_err(|e| {
            // two builder settings are two fields each in the configuration
            // (the builder's reason says which half is wrong; tests/stack
            // checks each mapping)
            let field = match (e.field(), e.reason()) {
                ("slow_call", r) if r.starts_with("rate") => "slow_call_rate",
                ("slow_call", _) => "slow_call_threshold",
                ("open_duration_backoff", r) if r.starts_with("multiplier") => {
                    "open_duration_multiplier"
                }
                ("open_duration_backoff", _) => "max_open_duration",
                (other, _) => other,
            };
            ConfigError::new(field, e.reason().to_owned()).in_section("breaker")
        })
    }
}

/// Settings of the [`RetryLayer`].
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(Serialize, Deserialize))]
#[cfg_attr(feature = "serde", serde(default, deny_unknown_fields))]
#[non_exhaustive]
pub struct RetryConfig {
    /// Whether the layer is in the stack (default `true`).
    pub enabled: bool,
    /// Retries after the first attempt (default 2).
    pub max_retries: u32,
    /// The first backoff ceiling (default 500 ms).
    #[cfg_attr(feature = "serde", serde(with = "dur_serde"))]
    pub backoff_base: Duration,
    /// The largest backoff ceiling (default 8 s).
    #[cfg_attr(feature = "serde", serde(with = "dur_serde"))]
    pub backoff_cap: Duration,
    /// How the delay is drawn under the ceiling (default `full`).
    pub jitter: Jitter,
    /// The longest server delay (`retry-after`) honoured (default 60 s).
    #[cfg_attr(feature = "serde", serde(with = "dur_serde"))]
    pub max_server_delay: Duration,
    /// A retry budget shared by the stack's services: at most `ratio` retries
    /// per request over `budget_ttl`, plus `budget_min_per_sec`. Default on
    /// (10 s, 10 per second, 0.2), so a failing upstream gets at most 20% more
    /// load from retries.
    pub budget: bool,
    /// Over how long the budget counts (default 10 s).
    #[cfg_attr(feature = "serde", serde(with = "dur_serde"))]
    pub budget_ttl: Duration,
    /// Retries a second the budget always allows (default 10).
    pub budget_min_per_sec: u32,
    /// Retries allowed per request (default 0.2).
    pub budget_ratio: f64,
    /// Seeds the jitter, for reproducible runs (default: random).
    pub seed: Option<u64>,
}

impl Default for RetryConfig {
    fn default() -> Self {
        let backoff = crate::retry::Backoff::default();
        RetryConfig {
            enabled: true,
            max_retries: 2,
            backoff_base: backoff.base(),
            backoff_cap: backoff.cap(),
            jitter: backoff.jitter(),
            max_server_delay: Duration::from_secs(60),
            budget: true,
            budget_ttl: Duration::from_secs(10),
            budget_min_per_sec: 10,
            budget_ratio: 0.2,
            seed: None,
        }
    }
}

impl RetryConfig {
    pub(crate) fn layer<C, P>(
        &self,
        classifier: C,
        replay: P,
    ) -> Result<Option<RetryLayer<C, P>>, ConfigError> {
        if !self.enabled || self.max_retries == 0 {
            return Ok(None);
        }
        let section = |e: ConfigError| e.in_section("retry");
        let mut b = RetryLayer::builder()
            .classifier(classifier)
            .replay(replay)
            .max_retries(self.max_retries)
            .backoff_base(self.backoff_base)
            .backoff_cap(self.backoff_cap)
            .jitter(self.jitter)
            .max_server_delay(self.max_server_delay);
        if self.budget {
            let budget =
                RetryBudget::new(self.budget_ttl, self.budget_min_per_sec, self.budget_ratio)
                    .map_err(section)?;
            b = b.budget(budget);
        }
        if let Some(seed) = self.seed {
            b = b.seed(seed);
        }
        b.build()
            .map(Some)
            .map_err(|e| section(self.blame_the_base(e)))
    }

    /// A base above the cap is a conflict of two fields, which the builder
    /// reports as the cap. When the cap is still its default and the base
    /// is not, the base is what was set (`backoff_base = "10s"` alone), and
    /// the error names it.
    fn blame_the_base(&self, e: ConfigError) -> ConfigError {
        let defaults = crate::retry::Backoff::default();
        let conflict = e.field() == "backoff_cap" && self.backoff_base > self.backoff_cap;
        if conflict && self.backoff_cap == defaults.cap() && self.backoff_base != defaults.base() {
            return ConfigError::new(
                "backoff_base",
                format!(
                    "must not be more than backoff_cap ({})",
                    humantime::format_duration(self.backoff_cap)
                ),
            );
        }
        e
    }
}

/// Timeouts of one attempt (the innermost [`TimeoutLayer`]).
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(Serialize, Deserialize))]
#[cfg_attr(feature = "serde", serde(default, deny_unknown_fields))]
#[non_exhaustive]
pub struct TimeoutConfig {
    /// Whether the layer is in the stack (default `true`).
    pub enabled: bool,
    /// The longest one attempt may take to its response (its headers, for a
    /// streamed body). Default 120 s: a long non-streamed completion.
    #[cfg_attr(feature = "serde", serde(with = "opt_serde"))]
    pub attempt: Option<Duration>,
    /// The longest wait for the first body chunk after the headers.
    #[cfg_attr(feature = "serde", serde(with = "opt_serde"))]
    pub first_chunk: Option<Duration>,
    /// The longest gap between two body chunks (default 60 s).
    #[cfg_attr(feature = "serde", serde(with = "opt_serde"))]
    pub idle: Option<Duration>,
}

impl Default for TimeoutConfig {
    fn default() -> Self {
        TimeoutConfig {
            enabled: true,
            attempt: Some(Duration::from_secs(120)),
            first_chunk: None,
            idle: Some(Duration::from_secs(60)),
        }
    }
}

impl TimeoutConfig {
    /// The layer, and whether it has a timeout of its own. Like the
    /// concurrency part, it changes the response type (the body enforces its
    /// timeouts), so when disabled it is a layer with no timeouts, which
    /// still ends an attempt at the request's deadline.
    pub(crate) fn layer(&self) -> Result<(TimeoutLayer, bool), ConfigError> {
        let mut b = TimeoutLayer::builder();
        let on = self.enabled && (self.attempt, self.first_chunk, self.idle) != (None, None, None);
        if !on {
            return b
                .build()
                .map(|layer| (layer, false))
                .map_err(|e| e.in_section("timeout"));
        }
        if let Some(t) = self.attempt {
            b = b.attempt(t);
        }
        if let Some(t) = self.first_chunk {
            b = b.first_chunk(t);
        }
        if let Some(t) = self.idle {
            b = b.idle(t);
        }
        b.build()
            .map(|layer| (layer, true))
            .map_err(|e| e.in_section("timeout"))
    }
}

impl StackConfig {
    pub(crate) fn deadline_layer(&self) -> Result<Option<DeadlineLayer>, ConfigError> {
        match self.deadline {
            None => Ok(None),
            Some(after) => {
                crate::error::check_duration("deadline", after)?;
                DeadlineLayer::builder()
                    .after(after)
                    .build()
                    .map(Some)
                    .map_err(|e| {
                        // the builder calls it `after`; the configuration `deadline`
                        ConfigError::new("deadline", e.reason().to_owned())
                    })
            }
        }
    }
}
