//! [`GrpcClassifier`]: what a gRPC call's `grpc-status` means.
//!
//! gRPC answers failures with HTTP 200 and puts its own status in the
//! `grpc-status` header of a "trailers-only" response (how a unary call that
//! fails before any message answers, interceptor refusals included) or, once
//! messages were sent, in the trailers. A classifier sees a response when
//! its headers arrive, so it reads the header: a failed unary call is
//! classified when its response arrives, and a status that comes in the
//! trailers of a streamed response arrives after every layer has classified
//! the call as the success its headers said.

use std::time::Duration;

use super::{classify_error, Classification, Classify, DefaultClassifier, ErrorRef, Outcome};

/// The gRPC status codes this classifier tells apart (from the gRPC
/// specification's status code table).
mod code {
    pub(super) const OK: i32 = 0;
    pub(super) const UNKNOWN: i32 = 2;
    pub(super) const DEADLINE_EXCEEDED: i32 = 4;
    pub(super) const RESOURCE_EXHAUSTED: i32 = 8;
    pub(super) const ABORTED: i32 = 10;
    pub(super) const INTERNAL: i32 = 13;
    pub(super) const UNAVAILABLE: i32 = 14;
    pub(super) const DATA_LOSS: i32 = 15;
}

/// Classifies a gRPC call (an `http::Response` from a tonic channel or any
/// gRPC client built on `http`) by its `grpc-status` header.
///
/// A response without `grpc-status` is a success so far (its status comes
/// in the trailers). The HTTP status still counts first: a proxy's 503 is a
/// server error whatever gRPC would have said, and is classified by
/// [`DefaultClassifier`]. Errors (transport, this crate's own) are
/// classified as usual.
///
/// | gRPC code | outcome | retried |
/// |---|---|---|
/// | OK, none | success | no |
/// | UNAVAILABLE | server error | yes |
/// | RESOURCE_EXHAUSTED | rate limited (`grpc-retry-pushback-ms` as the delay) | yes |
/// | DEADLINE_EXCEEDED | timeout | yes |
/// | INTERNAL, UNKNOWN, DATA_LOSS | server error | no |
/// | ABORTED | client error | yes |
/// | any other | client error | no |
///
/// A `grpc-retry-pushback-ms` that is negative or malformed means "do not
/// retry" (gRPC's retry design), which overrides the table. One too large
/// for a [`Duration`] saturates to [`Duration::MAX`], like the HTTP delay
/// headers ([`headers`](super::headers)): a very long delay, above any retry
/// cap, not a malformed one. A malformed `grpc-status` is ignored: the
/// response is a success so far.
///
/// ```
/// use llm_sluice::classify::{Classify, GrpcClassifier, Outcome};
///
/// let response = http::Response::builder()
///     .header("grpc-status", "8")
///     .header("grpc-retry-pushback-ms", "250")
///     .body(())
///     .unwrap();
/// let class = GrpcClassifier.classify(Ok(&response));
/// assert!(matches!(class.outcome, Outcome::RateLimited { .. }));
/// assert_eq!(class.retry_after, Some(std::time::Duration::from_millis(250)));
/// assert!(class.is_retryable());
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct GrpcClassifier;

impl<B> Classify<http::Response<B>> for GrpcClassifier {
    fn classify(&self, result: Result<&http::Response<B>, ErrorRef<'_>>) -> Classification {
        let response = match result {
            Ok(response) => response,
            Err(error) => return classify_error(error),
        };
        if response.status() != http::StatusCode::OK {
            return DefaultClassifier.classify(Ok(response));
        }
        let headers = response.headers();
        let Some(status) = headers
            .get("grpc-status")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<i32>().ok())
        else {
            return Classification::success(None);
        };
        let (outcome, retry) = match status {
            code::OK => return Classification::success(None),
            code::UNAVAILABLE => (Outcome::ServerError, None),
            code::RESOURCE_EXHAUSTED => (
                Outcome::RateLimited {
                    quota_exhausted: false,
                },
                None,
            ),
            code::DEADLINE_EXCEEDED => (Outcome::Timeout, None),
            code::INTERNAL | code::UNKNOWN | code::DATA_LOSS => (Outcome::ServerError, Some(false)),
            code::ABORTED => (Outcome::ClientError, Some(true)),
            _ => (Outcome::ClientError, None),
        };
        let mut class = Classification::new(outcome).with_should_retry(retry);
        if let Some(value) = headers.get("grpc-retry-pushback-ms") {
            match pushback(value.as_bytes()) {
                Some(delay) => class = class.with_retry_after(Some(delay)),
                None => class = class.with_should_retry(Some(false)),
            }
        }
        class
    }
}

/// `grpc-retry-pushback-ms`: a non-negative integer of milliseconds
/// (surrounding whitespace and a leading `+` tolerated). More digits than a
/// `u64` holds saturate to [`Duration::MAX`]; anything else not a plain
/// integer is `None`.
fn pushback(value: &[u8]) -> Option<Duration> {
    let value = value.trim_ascii();
    let digits = value.strip_prefix(b"+").unwrap_or(value);
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let ms = digits.iter().try_fold(0u64, |acc, &d| {
        acc.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    });
    Some(ms.map_or(Duration::MAX, Duration::from_millis))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grpc(status: Option<&str>, pushback: Option<&str>) -> Classification {
        let mut response = http::Response::builder();
        if let Some(s) = status {
            response = response.header("grpc-status", s);
        }
        if let Some(p) = pushback {
            response = response.header("grpc-retry-pushback-ms", p);
        }
        GrpcClassifier.classify(Ok(&response.body(()).unwrap()))
    }

    #[test]
    fn codes_map_to_outcomes_and_retries() {
        let cases = [
            (None, Outcome::Success, false),
            (Some("0"), Outcome::Success, false),
            (Some("14"), Outcome::ServerError, true),
            (
                Some("8"),
                Outcome::RateLimited {
                    quota_exhausted: false,
                },
                true,
            ),
            (Some("4"), Outcome::Timeout, true),
            (Some("13"), Outcome::ServerError, false),
            (Some("2"), Outcome::ServerError, false),
            (Some("15"), Outcome::ServerError, false),
            (Some("10"), Outcome::ClientError, true),
            (Some("3"), Outcome::ClientError, false),
            (Some("16"), Outcome::ClientError, false),
            (Some("not a number"), Outcome::Success, false),
        ];
        for (status, outcome, retried) in cases {
            let class = grpc(status, None);
            assert_eq!(class.outcome, outcome, "grpc-status {status:?}");
            assert_eq!(class.is_retryable(), retried, "grpc-status {status:?}");
        }
    }

    #[test]
    fn pushback_is_the_delay_and_a_bad_one_stops_retries() {
        let class = grpc(Some("14"), Some("1500"));
        assert_eq!(class.retry_after, Some(Duration::from_millis(1500)));
        assert!(class.is_retryable());
        for bad in ["-1", "soon", "", "1e20", "1.5", "+"] {
            let class = grpc(Some("14"), Some(bad));
            assert!(!class.is_retryable(), "pushback {bad:?}");
        }
    }

    #[test]
    fn the_http_status_counts_first() {
        let response = http::Response::builder()
            .status(503)
            .header("grpc-status", "0")
            .body(())
            .unwrap();
        let class = GrpcClassifier.classify(Ok(&response));
        assert_eq!(class.outcome, Outcome::ServerError);
    }

    #[test]
    fn errors_are_classified_as_usual() {
        let error: tower::BoxError = Box::new(crate::Error::DeadlineExceeded);
        let class = <GrpcClassifier as Classify<http::Response<()>>>::classify(
            &GrpcClassifier,
            Err(&*error),
        );
        assert_eq!(class.outcome, Outcome::Rejected);
    }
}
