//! The errors this crate creates.
//!
//! Every layer that creates errors returns [`tower::BoxError`]; the reason is
//! recovered with `err.downcast_ref::<llm_sluice::Error>()`. Errors of the
//! inner service pass through unchanged inside the box.
//!
//! Invalid configuration is a separate type, [`ConfigError`], returned by every
//! builder's `build()` so that a bad setting fails at start-up and never as a
//! request error.

use std::borrow::Cow;
use std::fmt;
use std::time::Duration;

/// An error created by one of this crate's layers.
///
/// Each variant carries what a caller needs to act on it: how long to wait
/// before trying again, how large a request was, how long it waited.
///
/// ```
/// use llm_sluice::Error;
/// use tower::BoxError;
///
/// let err: BoxError = Box::new(Error::QueueTimeout { waited: std::time::Duration::from_secs(5) });
/// match err.downcast_ref::<Error>() {
///     Some(Error::QueueTimeout { waited }) => assert_eq!(waited.as_secs(), 5),
///     other => panic!("unexpected: {other:?}"),
/// }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The concurrency limiter's queue was full: the request was shed at once.
    #[error("overloaded: {queued} requests already queued")]
    Overloaded {
        /// How many requests were waiting when this one was shed.
        queued: usize,
    },

    /// The request waited in a queue for its whole allowed time.
    #[error("no capacity within the queue wait of {waited:?}")]
    QueueTimeout {
        /// How long the request waited.
        waited: Duration,
    },

    /// The request's deadline passed (or would have passed) before it could be
    /// served.
    #[error("request deadline exceeded")]
    DeadlineExceeded,

    /// The request needs more tokens than a limit allows in a whole window: it
    /// can never be admitted, so it fails at once instead of waiting.
    #[error("request of {tokens} tokens exceeds the limit of {limit} tokens")]
    RequestTooLarge {
        /// The request's token estimate.
        tokens: u64,
        /// The limit it exceeds.
        limit: u64,
    },

    /// A rate limit had no room for the request within its allowed wait.
    #[error("rate limited")]
    RateLimited {
        /// When the request would have fitted, if known.
        retry_after: Option<Duration>,
    },

    /// The circuit breaker is open: the upstream is failing and calls fail fast.
    #[error("circuit open")]
    CircuitOpen {
        /// Time until the breaker lets probe calls through again.
        retry_after: Duration,
    },

    /// A timeout fired.
    #[error("request timed out ({kind})")]
    Timeout {
        /// Which timeout fired.
        kind: TimeoutKind,
    },
}

impl Error {
    /// The delay after which trying again may succeed, when the error says.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Error::RateLimited { retry_after } => *retry_after,
            Error::CircuitOpen { retry_after } => Some(*retry_after),
            _ => None,
        }
    }
}

/// Which timeout fired. See the [`timeout`](crate::timeout) module.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TimeoutKind {
    /// One attempt took too long to produce a response (its headers).
    Attempt,
    /// The first body chunk of a streamed response took too long.
    FirstChunk,
    /// Too long passed between two body chunks.
    Idle,
    /// The whole exchange, body included, took too long.
    Total,
}

impl TimeoutKind {
    /// A short lowercase name, used in messages and metric labels.
    pub const fn as_str(self) -> &'static str {
        match self {
            TimeoutKind::Attempt => "attempt",
            TimeoutKind::FirstChunk => "first_chunk",
            TimeoutKind::Idle => "idle",
            TimeoutKind::Total => "total",
        }
    }
}

impl fmt::Display for TimeoutKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The longest duration any setting takes: 31 days. Longer values would be
/// "forever" in practice and could overflow the clock when added to it, so
/// builders refuse them instead of panicking later.
pub(crate) const LONGEST_SETTING: Duration = Duration::from_secs(31 * 24 * 3600);

/// Refuses a duration setting longer than [`LONGEST_SETTING`].
pub(crate) fn check_duration(field: &'static str, value: Duration) -> Result<(), ConfigError> {
    if value > LONGEST_SETTING {
        return Err(ConfigError::new(field, "must be at most 31 days"));
    }
    Ok(())
}

/// An invalid setting, reported by a builder's `build()`.
///
/// It names the field and says what is wrong with it. Errors from a whole
/// [`StackConfig`](crate::stack::StackConfig) also name the section the field
/// is in, as a configuration file spells it (`rate.window`).
///
/// ```
/// use llm_sluice::ConcurrencyLimitLayer;
///
/// let err = ConcurrencyLimitLayer::builder().max_in_flight(0).build().unwrap_err();
/// assert_eq!(err.field(), "max_in_flight");
/// assert_eq!(err.section(), None);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    section: Option<&'static str>,
    field: &'static str,
    reason: Cow<'static, str>,
}

impl std::error::Error for ConfigError {}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.section {
            Some(section) => write!(f, "invalid `{section}.{}`: {}", self.field, self.reason),
            None => write!(f, "invalid `{}`: {}", self.field, self.reason),
        }
    }
}

impl ConfigError {
    /// A new error for `field`.
    pub fn new(field: &'static str, reason: impl Into<Cow<'static, str>>) -> Self {
        ConfigError {
            section: None,
            field,
            reason: reason.into(),
        }
    }

    /// The same error, for a field inside `section` of a larger configuration.
    pub(crate) fn in_section(mut self, section: &'static str) -> Self {
        self.section = Some(section);
        self
    }

    /// The name of the setting that is invalid, as the builder spells it.
    pub fn field(&self) -> &'static str {
        self.field
    }

    /// The section of a [`StackConfig`](crate::stack::StackConfig) the field
    /// is in (`"rate"`, `"breaker"`, ...), when the error came from one.
    pub fn section(&self) -> Option<&'static str> {
        self.section
    }

    /// What is wrong with it.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}
