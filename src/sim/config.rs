//! The upstream's configuration: limits, faults, latency, seed.

use std::time::Duration;

use crate::error::ConfigError;

/// How the upstream enforces its per-key limits.
///
/// Providers differ here, and a client limiter must cope with both:
///
/// - [`SlidingWindow`](LimitMode::SlidingWindow): an exact sliding window.
///   A request is admitted when the requests (and tokens) admitted in the last
///   `window` plus this one stay within the limit. A whole minute's budget may
///   be spent in one burst.
/// - [`Bucket`](LimitMode::Bucket): a bucket refilled continuously at
///   `limit / window`, holding at most `burst`'s worth of the limit. 60 RPM
///   with a one-second burst admits about one request a second; a client that
///   bursts its minute's budget at once is rejected. A request larger than a
///   full bucket is admitted when the bucket is full and leaves it in debt, so
///   the long-run rate still never exceeds the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitMode {
    /// An exact sliding window of length `window` (default).
    SlidingWindow,
    /// A continuously refilled bucket holding `burst`'s worth of the limit.
    Bucket {
        /// How much of the window's budget the bucket holds when full
        /// (`limit * burst / window`, at least one request). Must be greater
        /// than zero and at most the window.
        burst: Duration,
    },
}

/// How a request's tokens count against the tokens-per-minute limit: the
/// charging rules providers use (see the rate layer's
/// [`Charging`](crate::rate::Charging), which mirrors the first three).
///
/// "Actual" usage is the prompt plus the completion tokens the request
/// generates; a request that fails after admission (a `500`, `503`, `529` or
/// a reset) generated nothing and is counted its prompt; a hang is never
/// corrected. Usage is counted at the request's arrival instant, from the
/// moment the response ends (the last token, or the error), whether or not
/// the caller read it all: a stream dropped midway is counted in full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TokenCharge {
    /// Charged at admission with the prompt plus `max_tokens`, never
    /// corrected (OpenAI documents its TPM this way; the default). A request
    /// is admitted when that charge fits.
    #[default]
    Admission,
    /// Charged at admission with the prompt plus `max_tokens`, then corrected
    /// to the actual usage when the response ends (Anthropic-style output
    /// limits). A request is admitted when its admission charge fits beside
    /// what the window holds: the estimates of requests still running and the
    /// actual usage of those done.
    Reconcile,
    /// Counted from actual usage only: nothing is charged at admission, and
    /// a request is admitted while the usage counted in the window is below
    /// the limit (other OpenAI-compatible servers). A burst admitted while
    /// there was room can take the window past its limit once it is counted;
    /// the `x-ratelimit-remaining-tokens` header says what is left of the
    /// usage counted so far.
    Actual,
    /// Charged at admission with the prompt plus the completion tokens the
    /// request will generate, never corrected: a provider that knows each
    /// completion's length in advance. No real provider does; it is the
    /// closest a client's estimate can get, kept for simulations that want
    /// the tokens delivered rather than a charging rule.
    Used,
}

#[allow(non_upper_case_globals)]
impl TokenCharge {
    /// The former name of [`TokenCharge::Admission`].
    #[deprecated(note = "renamed `TokenCharge::Admission`")]
    pub const Requested: TokenCharge = TokenCharge::Admission;
}

/// Per-key limits, as a provider enforces them for each API key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Requests per window; `None` for no request limit.
    pub requests: Option<u64>,
    /// Tokens per window; `None` for no token limit.
    pub tokens: Option<u64>,
    /// The window the limits are counted over (default one minute).
    pub window: Duration,
    /// Sliding window or continuously refilled bucket.
    pub mode: LimitMode,
    /// What a request is charged in tokens.
    pub charge: TokenCharge,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            requests: None,
            tokens: None,
            window: Duration::from_secs(60),
            mode: LimitMode::SlidingWindow,
            charge: TokenCharge::Admission,
        }
    }
}

/// Fault rates, each the probability in `[0, 1]` that an admitted request
/// meets that fault. The rates together must not exceed 1.
///
/// One seeded draw per request picks at most one fault, so the same seed and
/// the same calls give the same faults.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Faults {
    /// `500 Internal Server Error` after the time to first token.
    pub error_500: f64,
    /// `503 Service Unavailable` after the time to first token.
    pub error_503: f64,
    /// `529` (provider-wide overload) after the time to first token.
    pub overloaded_529: f64,
    /// A call that never answers until it is dropped.
    pub hang: f64,
    /// An `io::ErrorKind::ConnectionReset` error after the time to first
    /// token.
    pub reset: f64,
    /// A `429` quota error (`insufficient_quota`) that will never succeed on
    /// retry, at once and without spending the rate limits.
    pub quota_429: f64,
}

impl Faults {
    /// No faults.
    pub const NONE: Faults = Faults {
        error_500: 0.0,
        error_503: 0.0,
        overloaded_529: 0.0,
        hang: 0.0,
        reset: 0.0,
        quota_429: 0.0,
    };

    /// Every fault at the same `rate` (so `6 * rate` of requests fail).
    pub const fn all(rate: f64) -> Faults {
        Faults {
            error_500: rate,
            error_503: rate,
            overloaded_529: rate,
            hang: rate,
            reset: rate,
            quota_429: rate,
        }
    }

    pub(crate) fn as_array(&self) -> [(&'static str, f64); 6] {
        [
            ("error_500", self.error_500),
            ("error_503", self.error_503),
            ("overloaded_529", self.overloaded_529),
            ("hang", self.hang),
            ("reset", self.reset),
            ("quota_429", self.quota_429),
        ]
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let mut sum = 0.0;
        for (name, rate) in self.as_array() {
            if !(0.0..=1.0).contains(&rate) {
                return Err(ConfigError::new(name, "must be a rate in [0, 1]"));
            }
            sum += rate;
        }
        if sum > 1.0 + 1e-9 {
            return Err(ConfigError::new(
                "faults",
                "the fault rates add up to more than 1",
            ));
        }
        Ok(())
    }
}

/// A seeded distribution of non-negative values (seconds, or tokens per
/// second).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Dist {
    /// Always this value.
    Fixed(f64),
    /// Uniform in `[low, high]`.
    Uniform {
        /// Lowest value.
        low: f64,
        /// Highest value.
        high: f64,
    },
    /// Log-normal with this median and shape `sigma` (the usual shape of
    /// service latencies: most calls near the median, a long right tail).
    LogNormal {
        /// The median value.
        median: f64,
        /// The standard deviation of the underlying normal; 0 is `Fixed`.
        sigma: f64,
    },
}

impl Dist {
    /// A fixed duration, in seconds.
    pub fn fixed(d: Duration) -> Dist {
        Dist::Fixed(d.as_secs_f64())
    }

    /// Uniform between two durations, in seconds.
    pub fn uniform(low: Duration, high: Duration) -> Dist {
        Dist::Uniform {
            low: low.as_secs_f64(),
            high: high.as_secs_f64(),
        }
    }

    pub(crate) fn sample(&self, rng: &mut fastrand::Rng) -> f64 {
        // Draw the same number of values whatever the variant, so switching
        // a distribution does not shift every later draw.
        let u1 = rng.f64();
        let u2 = rng.f64();
        match *self {
            Dist::Fixed(v) => v,
            Dist::Uniform { low, high } => low + (high - low) * u1,
            Dist::LogNormal { median, sigma } => {
                // Box-Muller: a standard normal from two uniforms.
                let z = (-2.0 * (1.0 - u1).ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
                median * (sigma * z).exp()
            }
        }
    }

    fn validate(&self, field: &'static str, positive: bool) -> Result<(), ConfigError> {
        let ok = |v: f64| v.is_finite() && if positive { v > 0.0 } else { v >= 0.0 };
        let valid = match *self {
            Dist::Fixed(v) => ok(v),
            Dist::Uniform { low, high } => ok(low) && ok(high) && low <= high,
            Dist::LogNormal { median, sigma } => ok(median) && sigma.is_finite() && sigma >= 0.0,
        };
        if valid {
            Ok(())
        } else if positive {
            Err(ConfigError::new(
                field,
                "values must be finite and greater than zero",
            ))
        } else {
            Err(ConfigError::new(
                field,
                "values must be finite and not negative",
            ))
        }
    }
}

/// How long a request takes: time to first token, then tokens at a rate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Latency {
    /// Time to first token, in seconds (default fixed 0.5 s).
    pub time_to_first_token: Dist,
    /// Generation speed, in tokens per second (default fixed 50).
    pub tokens_per_second: Dist,
    /// The share of `max_tokens` a completion really generates, in `[0, 1]`
    /// (default fixed 1: every completion runs to `max_tokens`).
    pub output_fraction: Dist,
}

impl Default for Latency {
    fn default() -> Self {
        Latency {
            time_to_first_token: Dist::Fixed(0.5),
            tokens_per_second: Dist::Fixed(50.0),
            output_fraction: Dist::Fixed(1.0),
        }
    }
}

impl Latency {
    /// No latency at all: every call answers at once.
    pub const INSTANT: Latency = Latency {
        time_to_first_token: Dist::Fixed(0.0),
        tokens_per_second: Dist::Fixed(f64::INFINITY),
        output_fraction: Dist::Fixed(1.0),
    };
}

/// A window of time when the upstream is down: every request received in
/// it is answered with `status` after its time to first token, without
/// reaching the rate limits (a provider that is down meters nothing).
///
/// Times count from the upstream's start: the moment it was built, on
/// tokio's clock (build it inside the runtime whose clock drives it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outage {
    /// When the outage begins, from the upstream's start.
    pub start: Duration,
    /// How long it lasts; greater than zero.
    pub length: Duration,
    /// The status every request gets meanwhile, a 5xx (`503` is typical,
    /// `529` a provider-wide overload).
    pub status: u16,
}

impl Outage {
    /// Whether `elapsed` (time since the upstream's start) falls in the
    /// outage: `[start, start + length)`.
    pub fn covers(&self, elapsed: Duration) -> bool {
        elapsed >= self.start && elapsed - self.start < self.length
    }
}

/// Latency spikes: a share of admitted requests whose time to first token
/// grows by an extra delay (a cold replica, a long queue at the provider).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LatencySpikes {
    /// The probability in `[0, 1]` that an admitted request is slowed.
    pub rate: f64,
    /// The extra time to first token of a slowed request, in seconds.
    pub extra: Dist,
}

/// Everything the simulated upstream does, as a plain value.
///
/// Build it with [`Upstream::builder`](super::Upstream::builder) or fill the
/// fields and pass it to [`Upstream::new`](super::Upstream::new); both check
/// it and name the invalid field in a [`ConfigError`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct UpstreamConfig {
    /// Per-key limits (default: none).
    pub limits: Limits,
    /// Fault rates (default: none).
    pub faults: Faults,
    /// Latency model.
    pub latency: Latency,
    /// Seed of every random draw (default 0).
    pub seed: u64,
    /// `max_tokens` of an HTTP request that sets none (default 256).
    pub default_max_tokens: u64,
    /// Completion tokens per streamed chunk (default 1).
    pub tokens_per_chunk: u64,
    /// Keep a log of every request received, for
    /// [`Upstream::log`](super::Upstream::log) and
    /// [`Upstream::peak`](super::Upstream::peak) (default true).
    pub record_log: bool,
    /// Windows of time when the upstream is down (default none).
    pub outages: Vec<Outage>,
    /// Whether a request refused with a rate-limit `429` still spends one
    /// request of the request limit (default false). Some providers work
    /// this way ("unsuccessful requests contribute to your per-minute
    /// limit"), so a client that resends at once keeps its own window full.
    pub count_refused: bool,
    /// Latency spikes (default none). When set, every request makes two
    /// more random draws (so setting it changes later draws of a seed).
    pub latency_spikes: Option<LatencySpikes>,
    /// The time from a client's call to the request's arrival, in seconds,
    /// drawn per request (default none: it arrives at the call). The
    /// upstream stamps, limits and answers a request when it arrives, as a
    /// provider does, so a distribution that varies (network jitter, a
    /// connection set-up now and then) moves requests admitted at a client's
    /// window edge across the upstream's. The draw is made at the call,
    /// from the same seeded generator (two more draws per request), and a
    /// request's other draws when it arrives, in arrival order.
    pub transit: Option<Dist>,
    /// Whether responses report the limits: `x-ratelimit-limit-*`,
    /// `-remaining-*` and `-reset-*` headers, and
    /// [`SimResponse::rate_limits`](super::SimResponse::rate_limits)
    /// (default true). Off, the upstream is a provider that says nothing
    /// about its limits but its `429`s.
    pub rate_limit_headers: bool,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            limits: Limits::default(),
            faults: Faults::NONE,
            latency: Latency::default(),
            seed: 0,
            default_max_tokens: 256,
            tokens_per_chunk: 1,
            record_log: true,
            outages: Vec::new(),
            count_refused: false,
            latency_spikes: None,
            transit: None,
            rate_limit_headers: true,
        }
    }
}

impl UpstreamConfig {
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        let l = &self.limits;
        if l.requests == Some(0) {
            return Err(ConfigError::new(
                "requests_per_window",
                "must be greater than zero",
            ));
        }
        if l.tokens == Some(0) {
            return Err(ConfigError::new(
                "tokens_per_window",
                "must be greater than zero",
            ));
        }
        if l.window.is_zero() {
            return Err(ConfigError::new("window", "must be greater than zero"));
        }
        if let LimitMode::Bucket { burst } = l.mode {
            if burst.is_zero() || burst > l.window {
                return Err(ConfigError::new(
                    "burst",
                    "must be greater than zero and at most the window",
                ));
            }
        }
        self.faults.validate()?;
        self.latency
            .time_to_first_token
            .validate("time_to_first_token", false)?;
        self.latency
            .tokens_per_second
            .validate_rate("tokens_per_second")?;
        self.latency
            .output_fraction
            .validate("output_fraction", false)?;
        if let Dist::Fixed(v) | Dist::Uniform { high: v, .. } = self.latency.output_fraction {
            if v > 1.0 {
                return Err(ConfigError::new("output_fraction", "must be at most 1"));
            }
        }
        if self.default_max_tokens == 0 {
            return Err(ConfigError::new(
                "default_max_tokens",
                "must be greater than zero",
            ));
        }
        if self.tokens_per_chunk == 0 {
            return Err(ConfigError::new(
                "tokens_per_chunk",
                "must be greater than zero",
            ));
        }
        for outage in &self.outages {
            if outage.length.is_zero() {
                return Err(ConfigError::new(
                    "outage",
                    "length must be greater than zero",
                ));
            }
            if !(500..=599).contains(&outage.status) {
                return Err(ConfigError::new("outage", "status must be a 5xx"));
            }
        }
        if let Some(spikes) = &self.latency_spikes {
            if !(0.0..=1.0).contains(&spikes.rate) {
                return Err(ConfigError::new(
                    "latency_spikes",
                    "rate must be a rate in [0, 1]",
                ));
            }
            spikes.extra.validate("latency_spikes", false)?;
        }
        if let Some(transit) = &self.transit {
            transit.validate("transit", false)?;
        }
        Ok(())
    }
}

impl Dist {
    fn validate_rate(&self, field: &'static str) -> Result<(), ConfigError> {
        // A rate may be infinite (instant generation) but must be positive.
        let ok = |v: f64| !v.is_nan() && v > 0.0;
        let valid = match *self {
            Dist::Fixed(v) => ok(v),
            Dist::Uniform { low, high } => ok(low) && ok(high) && low <= high,
            Dist::LogNormal { median, sigma } => {
                ok(median) && median.is_finite() && sigma.is_finite() && sigma >= 0.0
            }
        };
        if valid {
            Ok(())
        } else {
            Err(ConfigError::new(field, "rates must be greater than zero"))
        }
    }
}

/// Builds an [`Upstream`](super::Upstream).
///
/// ```
/// use std::time::Duration;
/// use llm_sluice::sim::{Faults, LimitMode, Upstream};
///
/// let upstream = Upstream::builder()
///     .requests_per_window(60)
///     .tokens_per_window(100_000)
///     .limit_mode(LimitMode::Bucket { burst: Duration::from_secs(1) })
///     .faults(Faults { error_500: 0.01, ..Faults::NONE })
///     .seed(7)
///     .build()
///     .unwrap();
/// # let _ = upstream;
/// let err = Upstream::builder().requests_per_window(0).build().unwrap_err();
/// assert_eq!(err.field(), "requests_per_window");
/// ```
#[derive(Debug, Clone, Default)]
pub struct UpstreamBuilder {
    config: UpstreamConfig,
}

impl UpstreamBuilder {
    /// Requests admitted per key per window (RPM with the default window).
    pub fn requests_per_window(mut self, limit: u64) -> Self {
        self.config.limits.requests = Some(limit);
        self
    }

    /// Tokens admitted per key per window (TPM with the default window).
    pub fn tokens_per_window(mut self, limit: u64) -> Self {
        self.config.limits.tokens = Some(limit);
        self
    }

    /// The window the limits count over (default one minute).
    pub fn window(mut self, window: Duration) -> Self {
        self.config.limits.window = window;
        self
    }

    /// Sliding window (default) or continuously refilled bucket.
    pub fn limit_mode(mut self, mode: LimitMode) -> Self {
        self.config.limits.mode = mode;
        self
    }

    /// How a request's tokens count against the token limit (default
    /// [`TokenCharge::Admission`]: prompt + `max_tokens`, never corrected).
    pub fn token_charge(mut self, charge: TokenCharge) -> Self {
        self.config.limits.charge = charge;
        self
    }

    /// Fault rates.
    pub fn faults(mut self, faults: Faults) -> Self {
        self.config.faults = faults;
        self
    }

    /// The latency model.
    pub fn latency(mut self, latency: Latency) -> Self {
        self.config.latency = latency;
        self
    }

    /// Time to first token.
    pub fn time_to_first_token(mut self, dist: Dist) -> Self {
        self.config.latency.time_to_first_token = dist;
        self
    }

    /// Generation speed in tokens per second.
    pub fn tokens_per_second(mut self, dist: Dist) -> Self {
        self.config.latency.tokens_per_second = dist;
        self
    }

    /// The share of `max_tokens` a completion generates.
    pub fn output_fraction(mut self, dist: Dist) -> Self {
        self.config.latency.output_fraction = dist;
        self
    }

    /// The seed of every random draw.
    pub fn seed(mut self, seed: u64) -> Self {
        self.config.seed = seed;
        self
    }

    /// `max_tokens` of an HTTP request that sets none.
    pub fn default_max_tokens(mut self, tokens: u64) -> Self {
        self.config.default_max_tokens = tokens;
        self
    }

    /// Completion tokens per streamed chunk.
    pub fn tokens_per_chunk(mut self, tokens: u64) -> Self {
        self.config.tokens_per_chunk = tokens;
        self
    }

    /// Whether to keep a log of every request received.
    pub fn record_log(mut self, record: bool) -> Self {
        self.config.record_log = record;
        self
    }

    /// Adds an outage: from `start` (after the upstream is built) for
    /// `length`, every request is answered with `status` (a 5xx).
    pub fn outage(mut self, start: Duration, length: Duration, status: u16) -> Self {
        self.config.outages.push(Outage {
            start,
            length,
            status,
        });
        self
    }

    /// Whether requests refused with a rate-limit `429` still spend one
    /// request of the request limit (see [`UpstreamConfig::count_refused`]).
    pub fn count_refused(mut self, count: bool) -> Self {
        self.config.count_refused = count;
        self
    }

    /// Slows a share `rate` of admitted requests: their time to first token
    /// grows by a draw of `extra` (seconds).
    pub fn latency_spikes(mut self, rate: f64, extra: Dist) -> Self {
        self.config.latency_spikes = Some(LatencySpikes { rate, extra });
        self
    }

    /// Delays each request's arrival after its call by a draw of `dist`
    /// (seconds; see [`UpstreamConfig::transit`]).
    pub fn transit(mut self, dist: Dist) -> Self {
        self.config.transit = Some(dist);
        self
    }

    /// Whether responses report the limits (default true; see
    /// [`UpstreamConfig::rate_limit_headers`]).
    pub fn rate_limit_headers(mut self, on: bool) -> Self {
        self.config.rate_limit_headers = on;
        self
    }

    /// Checks the configuration and builds the upstream.
    pub fn build(self) -> Result<super::Upstream, ConfigError> {
        super::Upstream::new(self.config)
    }
}
