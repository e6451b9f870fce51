//! When to fall back, and how to rewrite the request for the secondary.

use std::error::Error as StdError;
use std::fmt;

use crate::classify::{Classify, DefaultClassifier, ErrorRef, Outcome};
use crate::error::{Error, TimeoutKind};

/// Why a request went to the secondary service; the `reason` label of
/// `llm_sluice_fallbacks_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FallbackReason {
    /// The primary's circuit breaker was open.
    CircuitOpen,
    /// The primary was overloaded: a local queue was full, or the upstream
    /// answered 529.
    Overloaded,
    /// The primary failed with a server error (5xx).
    ServerError,
    /// An attempt on the primary timed out.
    Timeout,
    /// The primary could not be reached (connect, reset, EOF).
    Transport,
    /// The primary refused for rate (a 429 or a local rate limit or queue
    /// timeout). Off by default.
    RateLimited,
    /// The primary's quota or spending limit is exhausted. Off by default.
    QuotaExhausted,
    /// A custom policy's own reason.
    Other,
}

impl FallbackReason {
    /// A short lowercase name, for metric labels.
    pub const fn as_str(self) -> &'static str {
        match self {
            FallbackReason::CircuitOpen => "circuit_open",
            FallbackReason::Overloaded => "overloaded",
            FallbackReason::ServerError => "server_error",
            FallbackReason::Timeout => "timeout",
            FallbackReason::Transport => "transport",
            FallbackReason::RateLimited => "rate_limited",
            FallbackReason::QuotaExhausted => "quota_exhausted",
            FallbackReason::Other => "other",
        }
    }

    pub(crate) const ALL: [FallbackReason; 8] = [
        FallbackReason::CircuitOpen,
        FallbackReason::Overloaded,
        FallbackReason::ServerError,
        FallbackReason::Timeout,
        FallbackReason::Transport,
        FallbackReason::RateLimited,
        FallbackReason::QuotaExhausted,
        FallbackReason::Other,
    ];

    pub(crate) const fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for FallbackReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Decides whether the primary's result sends the request to the secondary.
///
/// Implemented by [`DefaultPolicy`] and by any
/// `Fn(Result<&Res, ErrorRef<'_>>) -> Option<FallbackReason>`.
pub trait FallbackPolicy<Res> {
    /// The reason to fall back, or `None` to return the result as it is.
    fn fallback_reason(&self, result: Result<&Res, ErrorRef<'_>>) -> Option<FallbackReason>;
}

impl<Res, F> FallbackPolicy<Res> for F
where
    F: Fn(Result<&Res, ErrorRef<'_>>) -> Option<FallbackReason>,
{
    fn fallback_reason(&self, result: Result<&Res, ErrorRef<'_>>) -> Option<FallbackReason> {
        self(result)
    }
}

/// The default policy: fall back when the primary is unavailable or failed
/// in a way a retry would have tried to fix — what is left after the retry
/// layer gave up.
///
/// | primary result | falls back | reason |
/// |---|---|---|
/// | [`Error::CircuitOpen`] | yes | `circuit_open` |
/// | [`Error::Overloaded`], or classified `Overloaded` (529) | yes | `overloaded` |
/// | classified `ServerError` (5xx) | yes | `server_error` |
/// | `Timeout { Attempt / FirstChunk / Idle }`, or classified `Timeout` (408) | yes | `timeout` |
/// | `Timeout { Total }`, [`Error::DeadlineExceeded`] | no: the caller has stopped waiting | |
/// | classified `Transport` | yes | `transport` |
/// | 429, [`Error::RateLimited`], [`Error::QueueTimeout`] | only with [`on_rate_limited`](Self::on_rate_limited) | `rate_limited` |
/// | a 429 for an exhausted quota | only with [`on_quota_exhausted`](Self::on_quota_exhausted) | `quota_exhausted` |
/// | success, client errors, [`Error::RequestTooLarge`] | no | |
///
/// This crate's errors are found anywhere in an error's `source()` chain;
/// everything else goes through the classifier (`C`, [`DefaultClassifier`]
/// unless set). `x-should-retry: false` does not stop a fallback: it speaks
/// for the primary, not for another service.
#[derive(Debug, Clone, Copy, Default)]
pub struct DefaultPolicy<C = DefaultClassifier> {
    classifier: C,
    rate_limited: bool,
    quota_exhausted: bool,
}

impl DefaultPolicy {
    /// The default triggers with the default classifier.
    pub const fn new() -> Self {
        DefaultPolicy {
            classifier: DefaultClassifier,
            rate_limited: false,
            quota_exhausted: false,
        }
    }
}

impl<C> DefaultPolicy<C> {
    /// The same triggers, classifying responses with `classifier`.
    pub fn classifier<C2>(self, classifier: C2) -> DefaultPolicy<C2> {
        DefaultPolicy {
            classifier,
            rate_limited: self.rate_limited,
            quota_exhausted: self.quota_exhausted,
        }
    }

    /// Also fall back on rate limiting (429, local windows and queues).
    pub fn on_rate_limited(mut self, yes: bool) -> Self {
        self.rate_limited = yes;
        self
    }

    /// Also fall back on an exhausted quota or spending limit.
    pub fn on_quota_exhausted(mut self, yes: bool) -> Self {
        self.quota_exhausted = yes;
        self
    }

    fn own_error(&self, err: &Error) -> Option<FallbackReason> {
        match err {
            Error::CircuitOpen { .. } => Some(FallbackReason::CircuitOpen),
            Error::Overloaded { .. } => Some(FallbackReason::Overloaded),
            Error::Timeout {
                kind: TimeoutKind::Total,
            } => None,
            Error::Timeout { .. } => Some(FallbackReason::Timeout),
            Error::RateLimited { .. } | Error::QueueTimeout { .. } if self.rate_limited => {
                Some(FallbackReason::RateLimited)
            }
            _ => None,
        }
    }
}

impl<Res, C: Classify<Res>> FallbackPolicy<Res> for DefaultPolicy<C> {
    fn fallback_reason(&self, result: Result<&Res, ErrorRef<'_>>) -> Option<FallbackReason> {
        if let Err(err) = result {
            let mut current: Option<&(dyn StdError + 'static)> = Some(err);
            while let Some(e) = current {
                if let Some(own) = e.downcast_ref::<Error>() {
                    return self.own_error(own);
                }
                current = e.source();
            }
        }
        let c = self.classifier.classify(result);
        match c.outcome {
            Outcome::Overloaded => Some(FallbackReason::Overloaded),
            Outcome::ServerError => Some(FallbackReason::ServerError),
            Outcome::Timeout => Some(FallbackReason::Timeout),
            Outcome::Transport => Some(FallbackReason::Transport),
            Outcome::RateLimited {
                quota_exhausted: false,
            } if self.rate_limited => Some(FallbackReason::RateLimited),
            Outcome::RateLimited {
                quota_exhausted: true,
            } if self.quota_exhausted => Some(FallbackReason::QuotaExhausted),
            _ => None,
        }
    }
}

/// Turns the request for the primary into the request for the secondary.
///
/// Implemented by [`NoRewrite`] (the default) and by any `Fn(Req) -> Req`,
/// e.g. one that changes the model name.
pub trait Rewrite<Req> {
    /// The request for the secondary.
    fn rewrite(&self, request: Req) -> Req;
}

impl<Req, F: Fn(Req) -> Req> Rewrite<Req> for F {
    fn rewrite(&self, request: Req) -> Req {
        self(request)
    }
}

/// Sends the secondary the same request as the primary.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoRewrite;

impl<Req> Rewrite<Req> for NoRewrite {
    #[inline]
    fn rewrite(&self, request: Req) -> Req {
        request
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::classify::Classification;

    struct Res(Classification);
    impl crate::classify::LlmResponse for Res {
        fn classification(&self) -> Classification {
            self.0.clone()
        }
    }

    fn on_ok(policy: &DefaultPolicy, outcome: Outcome) -> Option<FallbackReason> {
        policy.fallback_reason(Ok(&Res(Classification::new(outcome))))
    }

    fn on_err(policy: &DefaultPolicy, err: Error) -> Option<FallbackReason> {
        let boxed: tower::BoxError = Box::new(err);
        FallbackPolicy::<Res>::fallback_reason(policy, Err(&*boxed))
    }

    #[test]
    fn default_triggers_follow_the_table() {
        let p = DefaultPolicy::new();
        assert_eq!(on_ok(&p, Outcome::Success), None);
        assert_eq!(on_ok(&p, Outcome::ClientError), None);
        assert_eq!(on_ok(&p, Outcome::Rejected), None);
        assert_eq!(
            on_ok(&p, Outcome::ServerError),
            Some(FallbackReason::ServerError)
        );
        assert_eq!(
            on_ok(&p, Outcome::Overloaded),
            Some(FallbackReason::Overloaded)
        );
        assert_eq!(on_ok(&p, Outcome::Timeout), Some(FallbackReason::Timeout));
        assert_eq!(
            on_ok(&p, Outcome::Transport),
            Some(FallbackReason::Transport)
        );
        let limited = Outcome::RateLimited {
            quota_exhausted: false,
        };
        let quota = Outcome::RateLimited {
            quota_exhausted: true,
        };
        assert_eq!(on_ok(&p, limited), None);
        assert_eq!(on_ok(&p, quota), None);

        let open = Error::CircuitOpen {
            retry_after: Duration::from_secs(1),
        };
        assert_eq!(on_err(&p, open), Some(FallbackReason::CircuitOpen));
        assert_eq!(
            on_err(&p, Error::Overloaded { queued: 1 }),
            Some(FallbackReason::Overloaded)
        );
        for kind in [
            TimeoutKind::Attempt,
            TimeoutKind::FirstChunk,
            TimeoutKind::Idle,
        ] {
            assert_eq!(
                on_err(&p, Error::Timeout { kind }),
                Some(FallbackReason::Timeout)
            );
        }
        assert_eq!(
            on_err(
                &p,
                Error::Timeout {
                    kind: TimeoutKind::Total
                }
            ),
            None
        );
        assert_eq!(on_err(&p, Error::DeadlineExceeded), None);
        assert_eq!(
            on_err(
                &p,
                Error::RequestTooLarge {
                    tokens: 9,
                    limit: 1
                }
            ),
            None
        );
        assert_eq!(on_err(&p, Error::RateLimited { retry_after: None }), None);
        assert_eq!(
            on_err(
                &p,
                Error::QueueTimeout {
                    waited: Duration::ZERO
                }
            ),
            None
        );
    }

    #[test]
    fn rate_and_quota_triggers_are_opt_in() {
        let p = DefaultPolicy::new()
            .on_rate_limited(true)
            .on_quota_exhausted(true);
        let limited = Outcome::RateLimited {
            quota_exhausted: false,
        };
        let quota = Outcome::RateLimited {
            quota_exhausted: true,
        };
        assert_eq!(on_ok(&p, limited), Some(FallbackReason::RateLimited));
        assert_eq!(on_ok(&p, quota), Some(FallbackReason::QuotaExhausted));
        assert_eq!(
            on_err(
                &p,
                Error::QueueTimeout {
                    waited: Duration::ZERO
                }
            ),
            Some(FallbackReason::RateLimited)
        );
    }

    #[test]
    fn own_errors_are_found_through_sources_and_others_are_transport() {
        #[derive(Debug, thiserror::Error)]
        #[error("wrapped")]
        struct Wrapper(#[source] Error);
        let p = DefaultPolicy::new();
        let wrapped: tower::BoxError = Box::new(Wrapper(Error::CircuitOpen {
            retry_after: Duration::ZERO,
        }));
        assert_eq!(
            FallbackPolicy::<Res>::fallback_reason(&p, Err(&*wrapped)),
            Some(FallbackReason::CircuitOpen)
        );
        let reset: tower::BoxError = Box::new(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "reset",
        ));
        assert_eq!(
            FallbackPolicy::<Res>::fallback_reason(&p, Err(&*reset)),
            Some(FallbackReason::Transport)
        );
    }

    #[test]
    fn reason_names_are_distinct_and_indexed() {
        let mut names: Vec<_> = FallbackReason::ALL.iter().map(|r| r.as_str()).collect();
        for (i, r) in FallbackReason::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
        }
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), FallbackReason::ALL.len());
    }
}
