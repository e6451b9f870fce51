//! What to do with a server's delay, and recognising spent quotas.

use crate::classify::{is_quota_exhausted, Classification, Classify, ErrorRef, Outcome};

/// What the retry layer does when the server asks for a delay longer than the
/// layer's cap on honoured delays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum OverCap {
    /// Do not retry: return the response or error as it is (the default).
    /// The caller sees the server's delay and can decide, e.g. fall back to
    /// another provider.
    #[default]
    Fail,
    /// Retry after the computed backoff instead, ignoring the server's delay.
    /// Only sensible when the server's delays are known to be pessimistic:
    /// the retry may well be refused again.
    UseBackoff,
}

/// A typed response that carries the provider's error code.
///
/// Implement it for a typed client's response (or the part of it that holds
/// an API error) and wrap the classifier in [`QuotaAware`]: a 429 whose code
/// is a quota code ([`is_quota_exhausted`]: `insufficient_quota`,
/// `billing_hard_limit_reached`, `enforced_spend_limit_reached`) is then not
/// retried.
pub trait ResponseErrorCode {
    /// The provider's `error.code` (or `error.type`), when the response is an
    /// error that has one.
    fn error_code(&self) -> Option<&str>;
}

/// A classifier that marks a rate-limited response whose [`ResponseErrorCode`] names
/// a spent quota as `RateLimited { quota_exhausted: true }`: not retryable.
///
/// ```
/// use llm_sluice::classify::{Classification, Classify, DefaultClassifier, LlmResponse, Outcome};
/// use llm_sluice::retry::{QuotaAware, ResponseErrorCode};
///
/// struct Reply { status: u16, code: Option<String> }
/// impl LlmResponse for Reply {
///     fn classification(&self) -> Classification {
///         match self.status {
///             429 => Classification::new(Outcome::RateLimited { quota_exhausted: false }).with_status(429),
///             _ => Classification::success(None),
///         }
///     }
/// }
/// impl ResponseErrorCode for Reply {
///     fn error_code(&self) -> Option<&str> { self.code.as_deref() }
/// }
///
/// let classifier = QuotaAware::new(DefaultClassifier);
/// let busy = Reply { status: 429, code: Some("rate_limit_exceeded".into()) };
/// let broke = Reply { status: 429, code: Some("insufficient_quota".into()) };
/// assert!(classifier.classify(Ok(&busy)).is_retryable());
/// assert!(!classifier.classify(Ok(&broke)).is_retryable());
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct QuotaAware<C> {
    inner: C,
}

impl<C> QuotaAware<C> {
    /// Wraps `inner`, which classifies everything else.
    pub const fn new(inner: C) -> Self {
        QuotaAware { inner }
    }
}

impl<Res, C> Classify<Res> for QuotaAware<C>
where
    Res: ResponseErrorCode,
    C: Classify<Res>,
{
    fn classify(&self, result: Result<&Res, ErrorRef<'_>>) -> Classification {
        let mut class = self.inner.classify(result);
        if let (Ok(response), Outcome::RateLimited { .. }) = (result, class.outcome) {
            if response.error_code().is_some_and(is_quota_exhausted) {
                class.outcome = Outcome::RateLimited {
                    quota_exhausted: true,
                };
            }
        }
        class
    }
}
