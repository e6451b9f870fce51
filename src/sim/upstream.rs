//! The shared upstream: its limiter, random source, counters and log.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

use super::config::{TokenCharge, UpstreamBuilder, UpstreamConfig};
use super::limits::{KeyLimiter, Refusal, Views};
use crate::error::ConfigError;
use crate::PartitionKey;

/// A simulated OpenAI-compatible upstream.
///
/// Cloning is cheap and every clone shares the same limits, random source,
/// counters and log: clone it into a service stack and keep one to read
/// [`stats`](Self::stats) afterwards.
///
/// It is a [`tower::Service`] for two request types: the typed
/// [`SimRequest`](super::SimRequest) (cheap, for simulations of many
/// requests) and `http::Request<B>` with an OpenAI-compatible JSON body; and
/// [`serve`](super::serve) puts it behind a real HTTP server.
#[derive(Clone)]
pub struct Upstream {
    pub(crate) shared: Arc<Shared>,
}

impl fmt::Debug for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Upstream")
            .field("config", &self.shared.config)
            .field("stats", &self.stats())
            .finish()
    }
}

pub(crate) struct Shared {
    pub(crate) config: UpstreamConfig,
    inner: Mutex<Inner>,
    in_flight: AtomicU64,
    max_in_flight: AtomicU64,
    /// When it was built: outages count from here.
    epoch: Instant,
}

struct Inner {
    rng: fastrand::Rng,
    keys: HashMap<Arc<str>, KeyState>,
    stats: SimStats,
    next_id: u64,
}

struct KeyState {
    limiter: KeyLimiter,
    log: Vec<Received>,
}

/// What the upstream has seen and done so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SimStats {
    /// Requests that reached the upstream (every call, whatever its fate).
    pub received: u64,
    /// Requests admitted by the rate limits (the ones that spent budget).
    pub admitted: u64,
    /// Requests chosen to be answered with a success (counted on arrival: a
    /// caller that drops the call before the answer still counts here).
    pub succeeded: u64,
    /// `429` rate-limit refusals (over the limit now).
    pub rate_limited: u64,
    /// `429` refusals of a request larger than the whole token limit.
    pub too_large: u64,
    /// HTTP requests refused before the limits: bad JSON (400), no API key
    /// (401), unknown path (404).
    pub bad_requests: u64,
    /// Faults injected, by kind.
    pub faults: FaultCounts,
    /// Requests in flight now: from the call until the response (its body,
    /// when streamed) is done or dropped.
    pub in_flight: u64,
    /// The most requests ever in flight at once.
    pub max_in_flight: u64,
}

/// Faults injected, by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct FaultCounts {
    /// `500`s.
    pub error_500: u64,
    /// `503`s.
    pub error_503: u64,
    /// `529`s.
    pub overloaded_529: u64,
    /// Calls that hang until dropped.
    pub hang: u64,
    /// Connection resets.
    pub reset: u64,
    /// Non-retryable `429` quota errors.
    pub quota_429: u64,
    /// Requests answered with an error because they arrived during an
    /// [`Outage`](super::Outage) (not counted in [`total`](Self::total)).
    pub outage: u64,
    /// Admitted requests slowed by a latency spike (not counted in
    /// [`total`](Self::total): they still answer).
    pub latency_spike: u64,
}

impl FaultCounts {
    /// All faults together.
    pub fn total(&self) -> u64 {
        self.error_500
            + self.error_503
            + self.overloaded_529
            + self.hang
            + self.reset
            + self.quota_429
    }
}

/// One request as the upstream received it, in the per-key log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Received {
    /// When it arrived.
    pub at: Instant,
    /// Its prompt tokens.
    pub prompt_tokens: u64,
    /// Its `max_tokens`.
    pub max_tokens: u64,
    /// What it was charged against the token limit (per [`TokenCharge`]):
    /// under the rules that correct, the charge once its response ended.
    pub charged_tokens: u64,
    /// Whether the rate limits admitted it.
    pub admitted: bool,
}

/// The busiest stretch of one key's traffic: see [`Upstream::peak`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Peak {
    /// The most requests within any one window.
    pub requests: u64,
    /// The most charged tokens within any one window.
    pub tokens: u64,
}

/// Which requests [`Upstream::peak`] counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Count {
    /// Every request received: what the client sent.
    Received,
    /// Only the requests the limits admitted.
    Admitted,
}

/// The fate of one request, decided in one step when it arrives.
#[derive(Debug)]
pub(crate) struct Plan {
    pub(crate) id: u64,
    pub(crate) kind: PlanKind,
    pub(crate) views: Views,
    pub(crate) prompt_tokens: u64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum PlanKind {
    Success {
        ttft: Duration,
        /// Time from the first token to the last.
        generation: Duration,
        completion_tokens: u64,
        tokens_per_second: f64,
    },
    RateLimited {
        retry_after: Duration,
    },
    TooLarge {
        limit: u64,
    },
    Quota,
    Status {
        status: u16,
        after: Duration,
    },
    Reset {
        after: Duration,
    },
    Hang,
}

/// Counts a request in flight until dropped.
pub(crate) struct InFlight(Arc<Shared>);

impl fmt::Debug for InFlight {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("InFlight")
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

pub(crate) fn secs(v: f64) -> Duration {
    if v.is_finite() && v > 0.0 {
        Duration::from_secs_f64(v.min(1e9))
    } else {
        Duration::ZERO
    }
}

impl Upstream {
    /// Starts a builder with no limits, no faults and the default latency.
    pub fn builder() -> UpstreamBuilder {
        UpstreamBuilder::default()
    }

    /// An upstream from a configuration, checked first.
    pub fn new(config: UpstreamConfig) -> Result<Upstream, ConfigError> {
        config.validate()?;
        let rng = fastrand::Rng::with_seed(config.seed);
        Ok(Upstream {
            shared: Arc::new(Shared {
                config,
                inner: Mutex::new(Inner {
                    rng,
                    keys: HashMap::new(),
                    stats: SimStats::default(),
                    next_id: 0,
                }),
                in_flight: AtomicU64::new(0),
                max_in_flight: AtomicU64::new(0),
                epoch: Instant::now(),
            }),
        })
    }

    /// Its configuration.
    pub fn config(&self) -> &UpstreamConfig {
        &self.shared.config
    }

    /// When it was built (on tokio's clock): [`Outage`](super::Outage)s
    /// count from here.
    pub fn started_at(&self) -> Instant {
        self.shared.epoch
    }

    /// The outage covering `at`, if any: its status.
    fn outage_at(&self, at: Instant) -> Option<u16> {
        let elapsed = at.saturating_duration_since(self.shared.epoch);
        self.shared
            .config
            .outages
            .iter()
            .find(|o| o.covers(elapsed))
            .map(|o| o.status)
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> SimStats {
        let mut stats = self.shared.inner.lock().stats;
        stats.in_flight = self.shared.in_flight.load(Ordering::Acquire);
        stats.max_in_flight = self.shared.max_in_flight.load(Ordering::Acquire);
        stats
    }

    /// The requests `key` sent, oldest first (empty unless
    /// [`record_log`](UpstreamConfig::record_log) is on).
    pub fn log(&self, key: &str) -> Vec<Received> {
        self.shared
            .inner
            .lock()
            .keys
            .get(key)
            .map(|k| k.log.clone())
            .unwrap_or_default()
    }

    /// The API keys seen so far.
    pub fn keys(&self) -> Vec<PartitionKey> {
        let mut keys: Vec<_> = self
            .shared
            .inner
            .lock()
            .keys
            .keys()
            .map(|k| PartitionKey::new(k.clone()))
            .collect();
        keys.sort();
        keys
    }

    /// The most requests and charged tokens of `key` within any window of
    /// length `window` (a request at `t` counts in `(t - window, t]`, as the
    /// sliding window does), counting every request received or only the
    /// admitted ones.
    ///
    /// A test checks a client's rate limiter with it: with
    /// [`Count::Received`], the peak must stay within the upstream's limits.
    pub fn peak(&self, key: &str, window: Duration, count: Count) -> Peak {
        let inner = self.shared.inner.lock();
        let Some(state) = inner.keys.get(key) else {
            return Peak::default();
        };
        let log = state
            .log
            .iter()
            .filter(|r| count == Count::Received || r.admitted);
        let mut queue = std::collections::VecDeque::new();
        let (mut tokens, mut peak) = (0u64, Peak::default());
        for r in log {
            while let Some(&(at, t)) = queue.front() {
                if at + window > r.at {
                    break;
                }
                queue.pop_front();
                tokens -= t;
            }
            queue.push_back((r.at, r.charged_tokens));
            tokens += r.charged_tokens;
            peak.requests = peak.requests.max(queue.len() as u64);
            peak.tokens = peak.tokens.max(tokens);
        }
        peak
    }

    /// The transit delay of a request called now: a draw of
    /// [`transit`](UpstreamConfig::transit), made in call order; `None`
    /// when it arrives at once.
    pub(crate) fn draw_transit(&self) -> Option<Duration> {
        let dist = self.shared.config.transit?;
        let delay = secs(dist.sample(&mut self.shared.inner.lock().rng));
        (!delay.is_zero()).then_some(delay)
    }

    /// Counts a request that never reached the limits (bad HTTP request).
    pub(crate) fn count_bad_request(&self) {
        self.shared.inner.lock().stats.bad_requests += 1;
    }

    /// Counts a request in flight from now until the guard drops.
    pub(crate) fn enter(&self) -> InFlight {
        let now = self.shared.in_flight.fetch_add(1, Ordering::AcqRel) + 1;
        self.shared.max_in_flight.fetch_max(now, Ordering::AcqRel);
        InFlight(self.shared.clone())
    }

    /// Decides the fate of one request: quota, limits, faults, latency.
    ///
    /// Every request makes the same random draws in the same order whatever
    /// its fate, so one request's outcome does not shift another's.
    pub(crate) fn plan(
        &self,
        now: Instant,
        key: &str,
        prompt_tokens: u64,
        max_tokens: u64,
    ) -> Plan {
        let cfg = &self.shared.config;
        let mut guard = self.shared.inner.lock();
        let inner = &mut *guard;
        inner.stats.received += 1;
        let id = inner.next_id;
        inner.next_id += 1;

        let fault_roll = inner.rng.f64();
        let ttft = secs(cfg.latency.time_to_first_token.sample(&mut inner.rng));
        let tps = cfg.latency.tokens_per_second.sample(&mut inner.rng);
        let fraction = cfg
            .latency
            .output_fraction
            .sample(&mut inner.rng)
            .clamp(0.0, 1.0);
        let completion_tokens = ((max_tokens as f64 * fraction).round() as u64).min(max_tokens);
        // Drawn only when spikes are set, so a seed without them keeps the
        // draws it always had.
        let spike = cfg.latency_spikes.and_then(|s| {
            let roll = inner.rng.f64();
            let extra = secs(s.extra.sample(&mut inner.rng));
            (roll < s.rate).then_some(extra)
        });

        let fault = {
            let mut acc = 0.0;
            let mut hit = None;
            for (name, rate) in cfg.faults.as_array() {
                acc += rate;
                if fault_roll < acc {
                    hit = Some(name);
                    break;
                }
            }
            hit
        };

        let state = match inner.keys.get_mut(key) {
            Some(state) => state,
            None => inner
                .keys
                .entry(Arc::from(key))
                .or_insert_with(|| KeyState {
                    limiter: KeyLimiter::new(&cfg.limits, now),
                    log: Vec::new(),
                }),
        };
        // What the request is charged at admission.
        let requested = prompt_tokens.saturating_add(max_tokens);
        let charged = match cfg.limits.charge {
            TokenCharge::Admission | TokenCharge::Reconcile => requested,
            TokenCharge::Actual => 0,
            TokenCharge::Used => prompt_tokens.saturating_add(completion_tokens),
        };
        let mut final_charge = charged;
        let (kind, views, admitted) = if let Some(status) = self.outage_at(now) {
            inner.stats.faults.outage += 1;
            (
                PlanKind::Status {
                    status,
                    after: ttft,
                },
                Views::default(),
                false,
            )
        } else if fault == Some("quota_429") {
            inner.stats.faults.quota_429 += 1;
            (PlanKind::Quota, Views::default(), false)
        } else {
            let (verdict, views) = state.limiter.admit(&cfg.limits, now, charged);
            match verdict.map(|seq| seq.unwrap_or(0)) {
                Err(Refusal::NotYet { retry_after }) => {
                    inner.stats.rate_limited += 1;
                    if cfg.count_refused {
                        state.limiter.charge_refused(&cfg.limits, now);
                    }
                    (PlanKind::RateLimited { retry_after }, views, false)
                }
                Err(Refusal::TooLarge { limit }) => {
                    inner.stats.too_large += 1;
                    (PlanKind::TooLarge { limit }, views, false)
                }
                Ok(seq) => {
                    inner.stats.admitted += 1;
                    let f = &mut inner.stats.faults;
                    let ttft = match spike {
                        Some(extra) => {
                            f.latency_spike += 1;
                            ttft + extra
                        }
                        None => ttft,
                    };
                    let kind = match fault {
                        Some("error_500") => {
                            f.error_500 += 1;
                            PlanKind::Status {
                                status: 500,
                                after: ttft,
                            }
                        }
                        Some("error_503") => {
                            f.error_503 += 1;
                            PlanKind::Status {
                                status: 503,
                                after: ttft,
                            }
                        }
                        Some("overloaded_529") => {
                            f.overloaded_529 += 1;
                            PlanKind::Status {
                                status: 529,
                                after: ttft,
                            }
                        }
                        Some("hang") => {
                            f.hang += 1;
                            PlanKind::Hang
                        }
                        Some("reset") => {
                            f.reset += 1;
                            PlanKind::Reset { after: ttft }
                        }
                        _ => {
                            inner.stats.succeeded += 1;
                            PlanKind::Success {
                                ttft,
                                generation: secs(completion_tokens as f64 / tps),
                                completion_tokens,
                                tokens_per_second: tps,
                            }
                        }
                    };
                    // Under the rules that correct, the response's end
                    // fixes the charge: its actual usage (a failure
                    // generated nothing: its prompt; a hang never ends).
                    let ends = match kind {
                        PlanKind::Success {
                            ttft,
                            generation,
                            completion_tokens,
                            ..
                        } => Some((
                            ttft + generation,
                            prompt_tokens.saturating_add(completion_tokens),
                        )),
                        PlanKind::Status { after, .. } | PlanKind::Reset { after } => {
                            Some((after, prompt_tokens))
                        }
                        _ => None,
                    };
                    let corrects = matches!(
                        cfg.limits.charge,
                        TokenCharge::Reconcile | TokenCharge::Actual
                    );
                    if let (true, Some((after, actual))) = (corrects, ends) {
                        state.limiter.settle(seq, now + after, charged, actual);
                        final_charge = actual;
                    }
                    (kind, views, true)
                }
            }
        };
        match kind {
            PlanKind::Success { .. } => {}
            PlanKind::RateLimited { retry_after } => {
                tracing::debug!(
                    request = id,
                    ?retry_after,
                    "simulated upstream: rate limited"
                )
            }
            other => tracing::debug!(request = id, fault = ?other, "simulated upstream: fault"),
        }
        if cfg.record_log {
            state.log.push(Received {
                at: now,
                prompt_tokens,
                max_tokens,
                charged_tokens: final_charge,
                admitted,
            });
        }
        Plan {
            id,
            kind,
            views: if cfg.rate_limit_headers {
                views
            } else {
                Views::default()
            },
            prompt_tokens,
        }
    }
}

impl Views {
    /// The views as the classifier's [`RateLimitState`](crate::classify::RateLimitState).
    pub(crate) fn to_state(self) -> Option<crate::classify::RateLimitState> {
        use crate::classify::{LimitState, RateLimitState};
        let conv = |v: Option<super::limits::LimitView>| {
            v.map_or(LimitState::default(), |v| LimitState {
                limit: Some(v.limit),
                remaining: Some(v.remaining),
                reset: Some(v.reset),
            })
        };
        let state = RateLimitState {
            requests: conv(self.requests),
            tokens: conv(self.tokens),
            ..RateLimitState::default()
        };
        (!state.is_empty()).then_some(state)
    }
}
