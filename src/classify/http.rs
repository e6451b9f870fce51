//! The default classifier for `http::Response`: status, `x-should-retry`,
//! the server's delay, its rate-limit state, usage and quota codes.
//!
//! ```
//! use std::time::{Duration, SystemTime};
//! use llm_sluice::classify::{http::classify_response, Outcome};
//!
//! let response = http::Response::builder()
//!     .status(429)
//!     .header("retry-after-ms", "1500")
//!     .header("x-ratelimit-remaining-requests", "0")
//!     .header("x-ratelimit-reset-requests", "1s")
//!     .body(())
//!     .unwrap();
//! let c = classify_response(&response, SystemTime::now());
//! assert_eq!(c.outcome, Outcome::RateLimited { quota_exhausted: false });
//! assert_eq!(c.status, Some(429));
//! assert_eq!(c.retry_after, Some(Duration::from_millis(1500)));
//! assert_eq!(c.rate_limits.unwrap().requests.remaining, Some(0));
//! assert!(c.is_retryable() && !c.is_failure());
//! ```
//!
//! # Status
//!
//! | status | outcome | retryable | breaker failure |
//! |---|---|---|---|
//! | 2xx | `Success` | no | no |
//! | 408 | `Timeout` | yes | yes |
//! | 409 | `ClientError` | yes | no |
//! | 429 | `RateLimited` (`quota_exhausted` from the [`ErrorCode`] extension) | unless quota | no |
//! | 529 | `Overloaded` | yes | yes |
//! | other 5xx (500, 502, 503, 504, ...) | `ServerError` | yes | yes |
//! | other 4xx (400, 401, 403, 404, 422, ...) | `ClientError` | no | no |
//! | 1xx, 3xx, and codes 600-999 | `ClientError` | no | no |
//!
//! A 1xx or 3xx that reaches a classifier is not something a retry or a
//! breaker can act on (a redirect the client did not follow is a
//! configuration problem, not an unhealthy upstream), so it is treated like
//! a client error: not a success, not a failure, not retried.
//!
//! `x-should-retry: true|false` (trimmed, any case) sets
//! [`Classification::should_retry`], which overrides the retry column; any
//! other value is ignored. A 429 whose body says the quota is spent is
//! marked `should_retry: Some(false)` even when the server says `true`: the
//! body's error code is more specific than a header written per status.
//!
//! # Server delay
//!
//! [`Classification::retry_after`] is set on non-success responses only (a
//! successful response needs no retry, and its reset headers describe
//! budget, which [`Classification::rate_limits`] reports). The first usable
//! delay wins, most specific first:
//!
//! 1. `retry-after-ms` (float milliseconds);
//! 2. `retry-after` (seconds or an HTTP-date);
//! 3. on a 429 only: `x-ratelimit-reset-requests` / `-tokens` (Go
//!    durations);
//! 4. on a 429 only: `anthropic-ratelimit-*-reset` (RFC 3339).
//!
//! A value that is zero, negative, non-finite or unparseable is not usable:
//! the next header is tried, and with none left `retry_after` is `None`, so a
//! retry layer uses its computed backoff. A value too large for a
//! [`Duration`] (`retry-after: 1e20`) is usable: it saturates to
//! [`Duration::MAX`] (see [`headers`](super::headers)), so a retry layer
//! finds it above its `max_server_delay` (and by default returns the result
//! without retrying) and a rate layer cools the partition down for its
//! longest cooldown.
//!
//! Reset headers are used on a 429 only: on a 5xx they say when a budget is
//! full again, which has nothing to do with when the upstream recovers, and
//! could be minutes long. Of several reset headers the classifier takes the
//! reset of an *exhausted* limit (one whose `remaining` is `0`): that is the
//! limit that refused the call. With several exhausted, or none known to be,
//! it takes the largest reset, the one that cannot be too early.
//!
//! # Rate-limit state
//!
//! [`Classification::rate_limits`] is filled from
//! `x-ratelimit-{limit,remaining,reset}-{requests,tokens}` and
//! `anthropic-ratelimit-{requests,tokens,input-tokens,output-tokens}-{limit,remaining,reset}`
//! on every response, success included; it is `None` when no such header is
//! present or none parses. Each header is parsed on its own: a malformed
//! value leaves that one field `None` and keeps the others. Where both
//! families carry the same field, the `x-ratelimit-*` value is kept. Reset
//! times here are kept even when zero ("full now").
//!
//! # Usage
//!
//! [`Classification::usage`] is the [`Usage`] found in the
//! response's extensions: a layer that parses the body, or a typed client,
//! inserts it there.

use std::cell::Cell;
use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderValue};

use super::headers::{
    parse_count, parse_go_duration, parse_retry_after, parse_retry_after_ms, parse_rfc3339_delay,
};
use super::{Classification, ErrorCode, LimitState, LlmResponse, Outcome, RateLimitState, Usage};

/// Classifies a response by status and headers, with `now` as the wall clock
/// for HTTP-date and RFC 3339 headers. See the [module docs](self) for the
/// rules.
pub fn classify_response<B>(response: &http::Response<B>, now: SystemTime) -> Classification {
    classify(response, &WallClock::at(now))
}

/// The wall clock, for the headers that give a date (an HTTP-date
/// `retry-after`, an RFC 3339 reset): a given instant, or the system clock
/// read the first time a header needs it. Most responses carry no such
/// header, and reading the system clock costs more than parsing a dozen
/// headers on some machines: a classifier that every layer runs should not
/// pay it for nothing.
struct WallClock(Cell<Option<SystemTime>>);

impl WallClock {
    fn at(now: SystemTime) -> Self {
        WallClock(Cell::new(Some(now)))
    }

    fn lazy() -> Self {
        WallClock(Cell::new(None))
    }

    fn now(&self) -> SystemTime {
        match self.0.get() {
            Some(now) => now,
            None => {
                let now = SystemTime::now();
                self.0.set(Some(now));
                now
            }
        }
    }
}

fn classify<B>(response: &http::Response<B>, now: &WallClock) -> Classification {
    let status = response.status().as_u16();
    let extensions = response.extensions();
    let seen = Seen::scan(response.headers());

    let outcome = outcome_of(status, extensions.get::<ErrorCode>());
    let (rate_limits, resets) = seen.rate_limits(now);

    let mut should_retry = seen.should_retry.and_then(should_retry);
    let mut retry_after = None;
    if outcome != Outcome::Success {
        retry_after = seen.server_delay(now);
        if retry_after.is_none() && matches!(outcome, Outcome::RateLimited { .. }) {
            retry_after = resets.pick();
        }
    }
    if outcome
        == (Outcome::RateLimited {
            quota_exhausted: true,
        })
    {
        should_retry = Some(false);
    }

    let mut c = Classification::new(outcome)
        .with_status(status)
        .with_retry_after(retry_after)
        .with_should_retry(should_retry);
    c.usage = extensions.get::<Usage>().copied();
    c.rate_limits = rate_limits;
    c
}

impl<B> LlmResponse for http::Response<B> {
    fn classification(&self) -> Classification {
        classify(self, &WallClock::lazy())
    }
}

fn outcome_of(status: u16, code: Option<&ErrorCode>) -> Outcome {
    match status {
        200..=299 => Outcome::Success,
        408 => Outcome::Timeout,
        429 => Outcome::RateLimited {
            quota_exhausted: code.is_some_and(ErrorCode::is_quota_exhausted),
        },
        529 => Outcome::Overloaded,
        500..=599 => Outcome::ServerError,
        // 409 is a client error the retry table retries; 1xx, 3xx and codes
        // beyond 599 are neither success nor an upstream failure.
        _ => Outcome::ClientError,
    }
}

fn should_retry(value: &HeaderValue) -> Option<bool> {
    let value = value.as_bytes().trim_ascii();
    if value.eq_ignore_ascii_case(b"true") {
        Some(true)
    } else if value.eq_ignore_ascii_case(b"false") {
        Some(false)
    } else {
        None
    }
}

fn usable(delay: Option<Duration>) -> Option<Duration> {
    delay.filter(|d| !d.is_zero())
}

/// Which limit a rate-limit header is about, as an index into
/// [`Seen::openai`] / [`Seen::anthropic`].
const REQUESTS: usize = 0;
const TOKENS: usize = 1;
const INPUT_TOKENS: usize = 2;
const OUTPUT_TOKENS: usize = 3;

/// Which part of a limit a header gives.
const LIMIT: usize = 0;
const REMAINING: usize = 1;
const RESET: usize = 2;

/// The headers the classifier reads, found in one pass over the map (a
/// response carries a dozen or two headers; one pass with string matches is
/// several times cheaper than twenty hashed look-ups). Like
/// `HeaderMap::get`, the first value of a repeated header is used.
#[derive(Default)]
struct Seen<'a> {
    retry_after_ms: Option<&'a HeaderValue>,
    retry_after: Option<&'a HeaderValue>,
    should_retry: Option<&'a HeaderValue>,
    /// `x-ratelimit-{limit,remaining,reset}-{requests,tokens}`.
    openai: [[Option<&'a HeaderValue>; 3]; 2],
    /// `anthropic-ratelimit-{requests,tokens,input-tokens,output-tokens}-{limit,remaining,reset}`.
    anthropic: [[Option<&'a HeaderValue>; 3]; 4],
}

impl<'a> Seen<'a> {
    fn scan(headers: &'a HeaderMap) -> Self {
        let mut seen = Seen::default();
        for (name, value) in headers {
            let name = name.as_str();
            let slot = if let Some(rest) = name.strip_prefix("x-ratelimit-") {
                let (part, rest) = if let Some(rest) = rest.strip_prefix("limit-") {
                    (LIMIT, rest)
                } else if let Some(rest) = rest.strip_prefix("remaining-") {
                    (REMAINING, rest)
                } else if let Some(rest) = rest.strip_prefix("reset-") {
                    (RESET, rest)
                } else {
                    continue;
                };
                let limit = match rest {
                    "requests" => REQUESTS,
                    "tokens" => TOKENS,
                    _ => continue,
                };
                &mut seen.openai[limit][part]
            } else if let Some(rest) = name.strip_prefix("anthropic-ratelimit-") {
                let (rest, part) = if let Some(rest) = rest.strip_suffix("-limit") {
                    (rest, LIMIT)
                } else if let Some(rest) = rest.strip_suffix("-remaining") {
                    (rest, REMAINING)
                } else if let Some(rest) = rest.strip_suffix("-reset") {
                    (rest, RESET)
                } else {
                    continue;
                };
                let limit = match rest {
                    "requests" => REQUESTS,
                    "tokens" => TOKENS,
                    "input-tokens" => INPUT_TOKENS,
                    "output-tokens" => OUTPUT_TOKENS,
                    _ => continue,
                };
                &mut seen.anthropic[limit][part]
            } else {
                match name {
                    "retry-after-ms" => &mut seen.retry_after_ms,
                    "retry-after" => &mut seen.retry_after,
                    "x-should-retry" => &mut seen.should_retry,
                    _ => continue,
                }
            };
            if slot.is_none() {
                *slot = Some(value);
            }
        }
        seen
    }

    /// `retry-after-ms`, then `retry-after`; the first usable (positive) one.
    fn server_delay(&self, now: &WallClock) -> Option<Duration> {
        let ms = self
            .retry_after_ms
            .and_then(|v| parse_retry_after_ms(v.as_bytes()));
        usable(ms).or_else(|| {
            let after = self
                .retry_after
                .and_then(|v| parse_retry_after(v.as_bytes(), now.now()));
            usable(after)
        })
    }

    fn rate_limits(&self, now: &WallClock) -> (Option<RateLimitState>, Resets) {
        let count = |v: Option<&HeaderValue>| v.and_then(|v| parse_count(v.as_bytes()));
        let openai = self.openai.map(|[limit, remaining, reset]| LimitState {
            limit: count(limit),
            remaining: count(remaining),
            reset: reset.and_then(|v| parse_go_duration(v.as_bytes())),
        });
        let anthropic = self.anthropic.map(|[limit, remaining, reset]| LimitState {
            limit: count(limit),
            remaining: count(remaining),
            reset: reset.and_then(|v| parse_rfc3339_delay(v.as_bytes(), now.now())),
        });

        let resets = Resets {
            openai: Resets::of(&openai),
            anthropic: Resets::of(&anthropic),
        };

        let [requests, tokens] = openai;
        let [a_requests, a_tokens, input_tokens, output_tokens] = anthropic;
        let state = RateLimitState {
            requests: merge(requests, a_requests),
            tokens: merge(tokens, a_tokens),
            input_tokens,
            output_tokens,
        };
        ((!state.is_empty()).then_some(state), resets)
    }
}

/// The largest usable (non-zero) reset of one header family, among the
/// exhausted limits (remaining 0) and among all.
#[derive(Default, Clone, Copy)]
struct FamilyReset {
    exhausted: Option<Duration>,
    any: Option<Duration>,
}

/// Reset delays of the `x-ratelimit-*` and `anthropic-ratelimit-*` families.
struct Resets {
    openai: FamilyReset,
    anthropic: FamilyReset,
}

impl Resets {
    fn of(limits: &[LimitState]) -> FamilyReset {
        let mut family = FamilyReset::default();
        for limit in limits {
            let Some(reset) = usable(limit.reset) else {
                continue;
            };
            family.any = family.any.max(Some(reset));
            if limit.remaining == Some(0) {
                family.exhausted = family.exhausted.max(Some(reset));
            }
        }
        family
    }

    /// The most specific family that has a usable reset; within it, the
    /// largest reset of an exhausted limit, else the largest reset.
    fn pick(&self) -> Option<Duration> {
        [self.openai, self.anthropic]
            .into_iter()
            .find_map(|family| family.exhausted.or(family.any))
    }
}

/// `preferred`, with its unknown fields filled from `fallback`.
fn merge(preferred: LimitState, fallback: LimitState) -> LimitState {
    LimitState {
        limit: preferred.limit.or(fallback.limit),
        remaining: preferred.remaining.or(fallback.remaining),
        reset: preferred.reset.or(fallback.reset),
    }
}
