//! What a response (or an error) means: one classification that the retry,
//! breaker and rate layers agree on.
//!
//! [`Classify`] turns `Result<&Response, &Error>` into a [`Classification`]:
//! an [`Outcome`] (success, rate limited, overloaded, server error, timeout,
//! transport error, client error, rejected by a local layer) plus what the
//! server said about itself: its requested delay, `x-should-retry`, the
//! tokens actually used ([`Usage`]) and its rate-limit state
//! ([`RateLimitState`]).
//!
//! [`DefaultClassifier`] is what every layer uses unless told otherwise. It
//! classifies errors by type (this crate's [`Error`], I/O and
//! timeout errors) and responses through [`LlmResponse`], which
//! `http::Response<B>` implements by the status and header rules of
//! OpenAI-compatible APIs (see [`http`] for the table), and a typed client's
//! response implements by hand.
//!
//! | outcome | retryable by default | breaker failure |
//! |---|---|---|
//! | `Success` | no | no |
//! | `ClientError` (400, 401, 403, 404, 422, ...) | only 409 | no |
//! | `RateLimited` (429) | yes, unless the quota is exhausted | no |
//! | `Overloaded` (529) | yes | yes |
//! | `ServerError` (5xx) | yes | yes |
//! | `Timeout` (408, attempt timeout) | yes (not a total-deadline timeout) | yes |
//! | `Transport` | yes | yes |
//! | `Rejected` (this crate's own limiters) | no | no |
//!
//! A server's `x-should-retry` header overrides the retry column.
//!
//! A 429 is a spent quota rather than back-pressure when its error body's
//! code says so ([`is_quota_exhausted`]); [`ErrorBodyLayer`] (feature `http`)
//! reads error bodies and records the code as an [`ErrorCode`] extension.
//!
//! gRPC calls answer HTTP 200 and carry their status in `grpc-status`:
//! [`GrpcClassifier`] (feature `http`) classifies them by it.

#[cfg(feature = "http")]
pub mod error_body;
mod error_code;
#[cfg(feature = "http")]
mod grpc;
pub mod headers;
#[cfg(feature = "http")]
pub mod http;
mod usage;

#[cfg(feature = "http")]
pub use error_body::{ErrorBody, ErrorBodyLayer, ErrorBodyLayerBuilder, ErrorBodyService};
pub use error_code::{is_quota_exhausted, ErrorCode};
#[cfg(feature = "http")]
pub use grpc::GrpcClassifier;
pub use usage::{LimitState, RateLimitState, Usage};

use std::error::Error as StdError;
use std::time::Duration;

use crate::error::{Error, TimeoutKind};

/// A borrowed error, as layers see it after boxing the inner service's error.
pub type ErrorRef<'a> = &'a (dyn StdError + Send + Sync + 'static);

/// What kind of result a call had.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Outcome {
    /// The upstream answered successfully.
    Success,
    /// The upstream refused the call for rate (429).
    RateLimited {
        /// The refusal is a spent quota or spending limit: it will not succeed
        /// on retry.
        quota_exhausted: bool,
    },
    /// The upstream is overloaded as a whole (529).
    Overloaded,
    /// The upstream failed (5xx).
    ServerError,
    /// The call timed out (408, or one of this crate's timeouts).
    Timeout,
    /// The call never got a response: connect, reset, TLS, EOF.
    Transport,
    /// The caller's fault (4xx other than 408 and 429); the upstream is
    /// healthy.
    ClientError,
    /// One of this crate's own layers refused the call before it reached the
    /// upstream (queue full, circuit open, window full, deadline).
    Rejected,
}

impl Outcome {
    /// A short lowercase name, for metric labels.
    pub const fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::RateLimited {
                quota_exhausted: false,
            } => "rate_limited",
            Outcome::RateLimited {
                quota_exhausted: true,
            } => "quota_exhausted",
            Outcome::Overloaded => "overloaded",
            Outcome::ServerError => "server_error",
            Outcome::Timeout => "timeout",
            Outcome::Transport => "transport",
            Outcome::ClientError => "client_error",
            Outcome::Rejected => "rejected",
        }
    }
}

/// A classified result: the outcome and what the server said with it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Classification {
    /// What kind of result it was.
    pub outcome: Outcome,
    /// The HTTP status, when there was a response.
    pub status: Option<u16>,
    /// The server's requested delay before the next attempt, when it gave a
    /// usable one (already parsed from `retry-after-ms`, `retry-after` and the
    /// reset headers, most specific first).
    pub retry_after: Option<Duration>,
    /// The server's `x-should-retry`, or this crate's own verdict for errors
    /// it knows must not be retried (a total-deadline timeout).
    pub should_retry: Option<bool>,
    /// Tokens the call really used, when known.
    pub usage: Option<Usage>,
    /// The server's view of its rate limits, when the response carried it.
    pub rate_limits: Option<RateLimitState>,
}

impl Classification {
    /// A classification with just an outcome.
    pub const fn new(outcome: Outcome) -> Self {
        Classification {
            outcome,
            status: None,
            retry_after: None,
            should_retry: None,
            usage: None,
            rate_limits: None,
        }
    }

    /// A success, with the tokens used if known.
    pub const fn success(usage: Option<Usage>) -> Self {
        let mut c = Classification::new(Outcome::Success);
        c.usage = usage;
        c
    }

    /// Sets the HTTP status.
    pub const fn with_status(mut self, status: u16) -> Self {
        self.status = Some(status);
        self
    }

    /// Sets the server's requested delay.
    pub const fn with_retry_after(mut self, delay: Option<Duration>) -> Self {
        self.retry_after = delay;
        self
    }

    /// Sets the retry override.
    pub const fn with_should_retry(mut self, should_retry: Option<bool>) -> Self {
        self.should_retry = should_retry;
        self
    }

    /// Whether the upstream answered successfully.
    pub const fn is_success(&self) -> bool {
        matches!(self.outcome, Outcome::Success)
    }

    /// Whether this counts against the upstream's health (circuit breaker).
    pub const fn is_failure(&self) -> bool {
        matches!(
            self.outcome,
            Outcome::Overloaded | Outcome::ServerError | Outcome::Timeout | Outcome::Transport
        )
    }

    /// Whether trying again may succeed: the table in the [module
    /// docs](self), overridden by `should_retry` when set.
    pub const fn is_retryable(&self) -> bool {
        if let Some(verdict) = self.should_retry {
            return verdict;
        }
        match self.outcome {
            Outcome::RateLimited { quota_exhausted } => !quota_exhausted,
            Outcome::Overloaded | Outcome::ServerError | Outcome::Timeout | Outcome::Transport => {
                true
            }
            Outcome::ClientError => matches!(self.status, Some(409)),
            Outcome::Success | Outcome::Rejected => false,
        }
    }
}

/// Turns a call's result into a [`Classification`].
///
/// Layers take a classifier as a builder setting; [`DefaultClassifier`] is
/// used when none is given. Implement this for a policy of your own, e.g. to
/// read a quota error code from a buffered body.
pub trait Classify<Res> {
    /// Classifies one result. Errors arrive boxed, as the layers see them.
    fn classify(&self, result: Result<&Res, ErrorRef<'_>>) -> Classification;
}

/// A response that can say what it means.
///
/// `http::Response<B>` implements it (feature `http`) by status and headers.
/// A typed client's response implements it from its own fields; the default
/// is a success with no usage.
///
/// A typed client's response reports its usage, and a spent quota (a 429
/// whose error code says it can never succeed) so that no layer retries it:
///
/// ```
/// use llm_sluice::classify::{is_quota_exhausted, Classification, LlmResponse, Outcome, Usage};
///
/// enum Completion {
///     Ok { prompt: u64, completion: u64 },
///     ApiError { status: u16, code: Option<String> },
/// }
///
/// impl LlmResponse for Completion {
///     fn classification(&self) -> Classification {
///         match self {
///             Completion::Ok { prompt, completion } => {
///                 Classification::success(Some(Usage::new(*prompt, *completion)))
///             }
///             Completion::ApiError { status: 429, code } => {
///                 let quota_exhausted = code.as_deref().is_some_and(is_quota_exhausted);
///                 Classification::new(Outcome::RateLimited { quota_exhausted }).with_status(429)
///             }
///             Completion::ApiError { status, .. } if *status >= 500 => {
///                 Classification::new(Outcome::ServerError).with_status(*status)
///             }
///             Completion::ApiError { status, .. } => {
///                 Classification::new(Outcome::ClientError).with_status(*status)
///             }
///         }
///     }
/// }
///
/// let spent = Completion::ApiError { status: 429, code: Some("insufficient_quota".into()) };
/// assert!(!spent.classification().is_retryable());
/// let busy = Completion::ApiError { status: 429, code: Some("rate_limit_exceeded".into()) };
/// assert!(busy.classification().is_retryable());
/// let done = Completion::Ok { prompt: 12, completion: 30 };
/// assert_eq!(done.classification().usage.unwrap().total_tokens, 42);
/// ```
///
/// For `http::Response`, the quota is read from an [`ErrorCode`] in the
/// response's extensions, which [`ErrorBodyLayer`] inserts from the error
/// body.
pub trait LlmResponse {
    /// What this response means.
    fn classification(&self) -> Classification {
        Classification::success(None)
    }
}

macro_rules! always_success {
    ($($t:ty),*) => { $(impl LlmResponse for $t {})* };
}
always_success!((), String, &'static str, bool, u32, u64, i32, i64);
impl<T> LlmResponse for Vec<T> {}
#[cfg(feature = "http")]
impl LlmResponse for bytes::Bytes {}

/// The classifier every layer uses unless given another.
///
/// Responses are classified through [`LlmResponse`]; errors through
/// [`classify_error`].
#[derive(Debug, Clone, Copy, Default)]
pub struct DefaultClassifier;

impl<Res: LlmResponse> Classify<Res> for DefaultClassifier {
    fn classify(&self, result: Result<&Res, ErrorRef<'_>>) -> Classification {
        match result {
            Ok(response) => response.classification(),
            Err(err) => classify_error(err),
        }
    }
}

impl<Res, F> Classify<Res> for F
where
    F: Fn(Result<&Res, ErrorRef<'_>>) -> Classification,
{
    fn classify(&self, result: Result<&Res, ErrorRef<'_>>) -> Classification {
        self(result)
    }
}

/// Classifies an error by its type, looking through its `source()` chain:
///
/// - this crate's [`Error`]: timeouts are `Timeout` (a total-deadline timeout
///   or an exceeded deadline is marked not retryable), everything else it
///   creates is `Rejected` (with the retry-after it carries);
/// - `std::io::Error` of kind `TimedOut`, and tower's and tokio's elapsed
///   errors, are `Timeout`;
/// - anything else is `Transport`: the call did not produce a response.
pub fn classify_error(err: ErrorRef<'_>) -> Classification {
    let mut current: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(e) = current {
        if let Some(own) = e.downcast_ref::<Error>() {
            return classify_own(own);
        }
        if e.is::<tower::timeout::error::Elapsed>() || e.is::<tokio::time::error::Elapsed>() {
            return Classification::new(Outcome::Timeout);
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::TimedOut {
                return Classification::new(Outcome::Timeout);
            }
        }
        current = e.source();
    }
    Classification::new(Outcome::Transport)
}

fn classify_own(err: &Error) -> Classification {
    match err {
        Error::Timeout {
            kind: TimeoutKind::Total,
        } => Classification::new(Outcome::Timeout).with_should_retry(Some(false)),
        Error::Timeout { .. } => Classification::new(Outcome::Timeout),
        other => Classification::new(Outcome::Rejected).with_retry_after(other.retry_after()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_errors_are_rejections_or_timeouts() {
        let open = Error::CircuitOpen {
            retry_after: Duration::from_secs(3),
        };
        let c = classify_error(&open);
        assert_eq!(c.outcome, Outcome::Rejected);
        assert_eq!(c.retry_after, Some(Duration::from_secs(3)));
        assert!(!c.is_retryable() && !c.is_failure());

        let attempt = Error::Timeout {
            kind: TimeoutKind::Attempt,
        };
        assert!(classify_error(&attempt).is_retryable());
        assert!(classify_error(&attempt).is_failure());
        let total = Error::Timeout {
            kind: TimeoutKind::Total,
        };
        assert!(!classify_error(&total).is_retryable());
    }

    #[test]
    fn errors_are_found_through_their_sources() {
        #[derive(Debug, thiserror::Error)]
        #[error("wrapped")]
        struct Wrapper(#[source] std::io::Error);
        let err = Wrapper(std::io::Error::new(std::io::ErrorKind::TimedOut, "slow"));
        assert_eq!(classify_error(&err).outcome, Outcome::Timeout);
        let reset = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        assert_eq!(classify_error(&reset).outcome, Outcome::Transport);
        assert!(classify_error(&reset).is_retryable());
    }

    #[test]
    fn should_retry_overrides_the_table() {
        let c = Classification::new(Outcome::ClientError).with_status(400);
        assert!(!c.is_retryable());
        assert!(c.clone().with_should_retry(Some(true)).is_retryable());
        let c = Classification::new(Outcome::ServerError).with_status(500);
        assert!(!c.with_should_retry(Some(false)).is_retryable());
        assert!(Classification::new(Outcome::ClientError)
            .with_status(409)
            .is_retryable());
        assert!(!Classification::new(Outcome::RateLimited {
            quota_exhausted: true
        })
        .is_retryable());
    }
}
