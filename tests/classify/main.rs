//! The HTTP classifier, the header parsers and the error-body layer.
#![cfg(feature = "http")]

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::stream;
use http::{HeaderValue, Response};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Full, StreamBody};
use llm_sluice::classify::http::classify_response;
use llm_sluice::classify::{
    Classification, ErrorBodyLayer, ErrorCode, LimitState, LlmResponse, Outcome, Usage,
};
use tower::{Layer, Service, ServiceExt};
use tower_test::assert_request_eq;

mod parsers;

/// 2023-11-14T22:13:20Z
fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_700_000_000)
}

fn response(status: u16, headers: &[(&str, &str)]) -> Response<()> {
    let mut builder = Response::builder().status(status);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(()).unwrap()
}

fn classify(status: u16, headers: &[(&str, &str)]) -> Classification {
    classify_response(&response(status, headers), now())
}

fn secs(n: u64) -> Option<Duration> {
    Some(Duration::from_secs(n))
}

// ---------------------------------------------------------------- statuses

#[test]
fn every_status_row() {
    // (status, outcome, retryable, breaker failure)
    let rows: &[(u16, Outcome, bool, bool)] = &[
        (200, Outcome::Success, false, false),
        (201, Outcome::Success, false, false),
        (204, Outcome::Success, false, false),
        (400, Outcome::ClientError, false, false),
        (401, Outcome::ClientError, false, false),
        (403, Outcome::ClientError, false, false),
        (404, Outcome::ClientError, false, false),
        (422, Outcome::ClientError, false, false),
        (408, Outcome::Timeout, true, true),
        (409, Outcome::ClientError, true, false),
        (
            429,
            Outcome::RateLimited {
                quota_exhausted: false,
            },
            true,
            false,
        ),
        (500, Outcome::ServerError, true, true),
        (502, Outcome::ServerError, true, true),
        (503, Outcome::ServerError, true, true),
        (504, Outcome::ServerError, true, true),
        (507, Outcome::ServerError, true, true),
        (599, Outcome::ServerError, true, true),
        (529, Outcome::Overloaded, true, true),
        // Decided here: 1xx, 3xx and codes past 599 are client-error-like.
        (101, Outcome::ClientError, false, false),
        (301, Outcome::ClientError, false, false),
        (304, Outcome::ClientError, false, false),
        (600, Outcome::ClientError, false, false),
    ];
    for &(status, outcome, retryable, failure) in rows {
        let c = classify(status, &[]);
        assert_eq!(c.outcome, outcome, "{status}");
        assert_eq!(c.status, Some(status), "{status}");
        assert_eq!(c.is_retryable(), retryable, "{status} retryable");
        assert_eq!(c.is_failure(), failure, "{status} failure");
        assert_eq!(c.is_success(), (200..300).contains(&status), "{status}");
        assert_eq!(c.retry_after, None);
        assert_eq!(c.should_retry, None);
        assert_eq!(c.rate_limits, None);
        assert_eq!(c.usage, None);
    }
}

#[test]
fn llm_response_impl_uses_classify_response() {
    let r = response(503, &[("retry-after", "2")]);
    let c = r.classification();
    assert_eq!(c.outcome, Outcome::ServerError);
    assert_eq!(c.retry_after, secs(2));
    // The default classifier goes through the same impl.
    let c = llm_sluice::classify::Classify::<Response<()>>::classify(
        &llm_sluice::classify::DefaultClassifier,
        Ok(&r),
    );
    assert_eq!(c.status, Some(503));
}

/// Without a given instant, date headers are measured from the system
/// clock, read when a header needs it: a date long past is "now", one far
/// ahead is decades away.
#[test]
fn llm_response_impl_reads_the_wall_clock_for_dates() {
    let r = response(
        429,
        &[
            ("retry-after", "Sun, 06 Nov 1994 08:49:37 GMT"),
            ("anthropic-ratelimit-tokens-remaining", "0"),
            ("anthropic-ratelimit-tokens-reset", "2200-01-01T00:00:00Z"),
        ],
    );
    let c = r.classification();
    let tokens = c.rate_limits.expect("rate-limit headers").tokens;
    let decades = Duration::from_secs(100 * 365 * 24 * 3600);
    // 2200 is 100 to 200 years from any day this test runs.
    let within = |d: Duration| d > decades && d < 2 * decades;
    assert!(tokens.reset.is_some_and(within), "{tokens:?}");
    // The HTTP-date is past: zero is no usable delay, so the reset is used.
    assert!(c.retry_after.is_some_and(within), "{c:?}");
}

// ------------------------------------------------------------ should retry

#[test]
fn x_should_retry_overrides() {
    for (value, expected) in [
        ("true", Some(true)),
        ("false", Some(false)),
        ("TRUE", Some(true)),
        ("False", Some(false)),
        ("  true\t", Some(true)),
        ("yes", None),
        ("1", None),
        ("", None),
        ("truex", None),
    ] {
        let c = classify(400, &[("x-should-retry", value)]);
        assert_eq!(c.should_retry, expected, "{value:?}");
    }
    assert!(classify(400, &[("x-should-retry", "true")]).is_retryable());
    assert!(!classify(500, &[("x-should-retry", "false")]).is_retryable());
    assert!(!classify(429, &[("x-should-retry", "false")]).is_retryable());
    assert!(classify(409, &[("x-should-retry", "maybe")]).is_retryable());
}

// ---------------------------------------------------------- server delays

#[test]
fn retry_after_header_examples() {
    assert_eq!(
        classify(429, &[("retry-after-ms", "1500")]).retry_after,
        Some(Duration::from_millis(1500))
    );
    assert_eq!(
        classify(429, &[("retry-after-ms", "250.5")]).retry_after,
        Some(Duration::from_micros(250_500))
    );
    assert_eq!(
        classify(429, &[("retry-after", "20")]).retry_after,
        secs(20)
    );
    assert_eq!(
        classify(503, &[("retry-after", "1.5")]).retry_after,
        Some(Duration::from_millis(1500))
    );
    // HTTP-date, relative to `now`.
    assert_eq!(
        classify(503, &[("retry-after", "Tue, 14 Nov 2023 22:13:50 GMT")]).retry_after,
        secs(30)
    );
    // A date in the past is zero, and zero is not a usable delay.
    assert_eq!(
        classify(503, &[("retry-after", "Tue, 14 Nov 2023 22:00:00 GMT")]).retry_after,
        None
    );
}

#[test]
fn delay_precedence_most_specific_first() {
    let all = [
        ("retry-after-ms", "700"),
        ("retry-after", "2"),
        ("x-ratelimit-remaining-requests", "0"),
        ("x-ratelimit-reset-requests", "3s"),
        ("anthropic-ratelimit-requests-remaining", "0"),
        ("anthropic-ratelimit-requests-reset", "2023-11-14T22:13:24Z"),
    ];
    assert_eq!(
        classify(429, &all).retry_after,
        Some(Duration::from_millis(700))
    );
    assert_eq!(classify(429, &all[1..]).retry_after, secs(2));
    assert_eq!(classify(429, &all[2..]).retry_after, secs(3));
    assert_eq!(classify(429, &all[4..]).retry_after, secs(4));
    assert_eq!(classify(429, &all[..0]).retry_after, None);
}

#[test]
fn unusable_delays_fall_through_to_the_next_header() {
    for bad in ["0", "-5", "NaN", "inf", "soon", ""] {
        let c = classify(429, &[("retry-after-ms", bad), ("retry-after", "3")]);
        assert_eq!(c.retry_after, secs(3), "retry-after-ms {bad:?}");
        let c = classify(503, &[("retry-after", bad)]);
        assert_eq!(c.retry_after, None, "retry-after {bad:?}");
    }
    let c = classify(
        429,
        &[
            ("retry-after", "0"),
            ("x-ratelimit-remaining-tokens", "0"),
            ("x-ratelimit-reset-tokens", "0s"),
        ],
    );
    assert_eq!(c.retry_after, None);
}

#[test]
fn no_delay_on_success() {
    let c = classify(
        200,
        &[
            ("retry-after", "5"),
            ("x-ratelimit-remaining-requests", "0"),
            ("x-ratelimit-reset-requests", "1s"),
        ],
    );
    assert_eq!(c.retry_after, None);
    // The budget is still reported.
    assert_eq!(c.rate_limits.unwrap().requests.reset, secs(1));
}

#[test]
fn reset_headers_are_a_delay_on_429_only() {
    let headers = [
        ("x-ratelimit-remaining-requests", "0"),
        ("x-ratelimit-reset-requests", "20s"),
    ];
    assert_eq!(classify(429, &headers).retry_after, secs(20));
    assert_eq!(classify(503, &headers).retry_after, None);
    assert_eq!(classify(400, &headers).retry_after, None);
    // An explicit retry-after is honoured on any non-success status.
    assert_eq!(classify(529, &[("retry-after", "9")]).retry_after, secs(9));
}

#[test]
fn reset_of_the_exhausted_limit_wins() {
    // Tokens are exhausted: their (shorter) reset is the right delay.
    let c = classify(
        429,
        &[
            ("x-ratelimit-remaining-requests", "59"),
            ("x-ratelimit-reset-requests", "1m0s"),
            ("x-ratelimit-remaining-tokens", "0"),
            ("x-ratelimit-reset-tokens", "6s"),
        ],
    );
    assert_eq!(c.retry_after, secs(6));
    // Requests exhausted instead.
    let c = classify(
        429,
        &[
            ("x-ratelimit-remaining-requests", "0"),
            ("x-ratelimit-reset-requests", "1s"),
            ("x-ratelimit-remaining-tokens", "10"),
            ("x-ratelimit-reset-tokens", "6m0s"),
        ],
    );
    assert_eq!(c.retry_after, secs(1));
    // None known to be exhausted: the larger reset.
    let c = classify(
        429,
        &[
            ("x-ratelimit-reset-requests", "1s"),
            ("x-ratelimit-reset-tokens", "6m0s"),
        ],
    );
    assert_eq!(c.retry_after, secs(360));
    // Both exhausted: the larger.
    let c = classify(
        429,
        &[
            ("x-ratelimit-remaining-requests", "0"),
            ("x-ratelimit-reset-requests", "2s"),
            ("x-ratelimit-remaining-tokens", "0"),
            ("x-ratelimit-reset-tokens", "12ms"),
        ],
    );
    assert_eq!(c.retry_after, secs(2));
    // Anthropic family: output tokens exhausted.
    let c = classify(
        429,
        &[
            ("anthropic-ratelimit-requests-remaining", "40"),
            ("anthropic-ratelimit-requests-reset", "2023-11-14T22:14:20Z"),
            ("anthropic-ratelimit-output-tokens-remaining", "0"),
            (
                "anthropic-ratelimit-output-tokens-reset",
                "2023-11-14T22:13:27Z",
            ),
        ],
    );
    assert_eq!(c.retry_after, secs(7));
}

// ------------------------------------------------------- rate-limit state

#[test]
fn openai_rate_limit_header_examples() {
    let c = classify(
        200,
        &[
            ("x-ratelimit-limit-requests", "60"),
            ("x-ratelimit-limit-tokens", "150000"),
            ("x-ratelimit-remaining-requests", "59"),
            ("x-ratelimit-remaining-tokens", "149984"),
            ("x-ratelimit-reset-requests", "1s"),
            ("x-ratelimit-reset-tokens", "6m0s"),
        ],
    );
    let limits = c.rate_limits.expect("rate limits");
    assert_eq!(
        limits.requests,
        LimitState {
            limit: Some(60),
            remaining: Some(59),
            reset: secs(1),
        }
    );
    assert_eq!(
        limits.tokens,
        LimitState {
            limit: Some(150_000),
            remaining: Some(149_984),
            reset: secs(360),
        }
    );
    assert!(limits.input_tokens.is_empty() && limits.output_tokens.is_empty());
}

#[test]
fn openai_reset_in_integer_seconds_is_tolerated() {
    let c = classify(200, &[("x-ratelimit-reset-requests", "17")]);
    assert_eq!(c.rate_limits.unwrap().requests.reset, secs(17));
    let c = classify(200, &[("x-ratelimit-reset-tokens", "1h2m3.5s")]);
    assert_eq!(
        c.rate_limits.unwrap().tokens.reset,
        Some(Duration::from_millis(3_723_500))
    );
}

#[test]
fn anthropic_rate_limit_header_examples() {
    let c = classify(
        200,
        &[
            ("anthropic-ratelimit-requests-limit", "50"),
            ("anthropic-ratelimit-requests-remaining", "49"),
            ("anthropic-ratelimit-requests-reset", "2023-11-14T22:13:21Z"),
            ("anthropic-ratelimit-tokens-limit", "90000"),
            ("anthropic-ratelimit-tokens-remaining", "89000"),
            ("anthropic-ratelimit-tokens-reset", "2023-11-14T22:13:30Z"),
            ("anthropic-ratelimit-input-tokens-limit", "40000"),
            ("anthropic-ratelimit-input-tokens-remaining", "39500"),
            (
                "anthropic-ratelimit-input-tokens-reset",
                "2023-11-15T00:13:22+02:00",
            ),
            ("anthropic-ratelimit-output-tokens-limit", "8000"),
            ("anthropic-ratelimit-output-tokens-remaining", "7500"),
            (
                "anthropic-ratelimit-output-tokens-reset",
                "2023-11-14T22:13:20.5Z",
            ),
        ],
    );
    let l = c.rate_limits.expect("rate limits");
    assert_eq!(
        l.requests,
        LimitState {
            limit: Some(50),
            remaining: Some(49),
            reset: secs(1)
        }
    );
    assert_eq!(
        l.tokens,
        LimitState {
            limit: Some(90_000),
            remaining: Some(89_000),
            reset: secs(10)
        }
    );
    assert_eq!(
        l.input_tokens,
        LimitState {
            limit: Some(40_000),
            remaining: Some(39_500),
            reset: secs(2)
        }
    );
    assert_eq!(
        l.output_tokens,
        LimitState {
            limit: Some(8_000),
            remaining: Some(7_500),
            reset: Some(Duration::from_millis(500))
        }
    );
}

#[test]
fn a_past_reset_is_kept_as_zero_in_the_state() {
    let c = classify(
        200,
        &[("anthropic-ratelimit-requests-reset", "2023-11-14T22:00:00Z")],
    );
    assert_eq!(c.rate_limits.unwrap().requests.reset, Some(Duration::ZERO));
}

#[test]
fn openai_headers_win_over_anthropic_for_the_same_field() {
    let c = classify(
        200,
        &[
            ("x-ratelimit-remaining-requests", "5"),
            ("anthropic-ratelimit-requests-remaining", "7"),
            ("anthropic-ratelimit-requests-limit", "50"),
        ],
    );
    let l = c.rate_limits.unwrap();
    assert_eq!(l.requests.remaining, Some(5));
    assert_eq!(l.requests.limit, Some(50));
}

#[test]
fn malformed_headers_are_ignored_one_by_one() {
    let c = classify(
        429,
        &[
            ("x-ratelimit-limit-requests", "sixty"),
            ("x-ratelimit-remaining-requests", "-1"),
            ("x-ratelimit-reset-requests", "soon"),
            ("x-ratelimit-limit-tokens", "150000"),
            ("x-ratelimit-remaining-tokens", "1.5"),
            ("x-ratelimit-reset-tokens", "6m0s"),
            ("anthropic-ratelimit-tokens-reset", "tomorrow"),
            ("retry-after-ms", "NaN"),
            ("retry-after", "Mon, 99 Foo 2023"),
            ("x-should-retry", "perhaps"),
        ],
    );
    assert_eq!(
        c.outcome,
        Outcome::RateLimited {
            quota_exhausted: false
        }
    );
    let l = c.rate_limits.expect("the good values are kept");
    assert!(l.requests.is_empty());
    assert_eq!(
        l.tokens,
        LimitState {
            limit: Some(150_000),
            remaining: None,
            reset: secs(360)
        }
    );
    // Only the token reset is usable as a delay.
    assert_eq!(c.retry_after, secs(360));
    assert_eq!(c.should_retry, None);
}

#[test]
fn non_utf8_header_values_are_ignored() {
    let mut r = response(429, &[("x-ratelimit-limit-tokens", "100")]);
    let junk = HeaderValue::from_bytes(b"\xff\xfe12").unwrap();
    for name in [
        "retry-after-ms",
        "retry-after",
        "x-ratelimit-remaining-tokens",
        "x-ratelimit-reset-tokens",
        "anthropic-ratelimit-requests-reset",
        "x-should-retry",
    ] {
        r.headers_mut().insert(name, junk.clone());
    }
    let c = classify_response(&r, now());
    assert_eq!(c.retry_after, None);
    assert_eq!(c.should_retry, None);
    assert_eq!(
        c.rate_limits.unwrap().tokens,
        LimitState {
            limit: Some(100),
            ..LimitState::default()
        }
    );
}

#[test]
fn only_malformed_rate_limit_headers_mean_no_state() {
    let c = classify(200, &[("x-ratelimit-limit-requests", "many")]);
    assert_eq!(c.rate_limits, None);
}

// --------------------------------------------------------- usage and quota

#[test]
fn usage_from_extensions() {
    let mut r = response(200, &[]);
    let usage = Usage::new(120, 30).with_cached_input(100);
    r.extensions_mut().insert(usage);
    let c = classify_response(&r, now());
    assert_eq!(c.usage, Some(usage));
    assert_eq!(c.usage.unwrap().total_tokens, 150);
    assert_eq!(c.usage.unwrap().uncached_input_tokens(), 20);
    assert_eq!(classify(200, &[]).usage, None);
}

#[test]
fn quota_code_in_extensions_marks_429_not_retryable() {
    for code in [
        ErrorCode::new(Some("insufficient_quota"), None),
        ErrorCode::new(None, Some("insufficient_quota")),
        ErrorCode::new(
            Some("billing_hard_limit_reached"),
            Some("invalid_request_error"),
        ),
        ErrorCode::new(None, Some("enforced_spend_limit_reached")),
    ] {
        let mut r = response(429, &[("x-should-retry", "true"), ("retry-after", "1")]);
        r.extensions_mut().insert(code.clone());
        let c = classify_response(&r, now());
        assert_eq!(
            c.outcome,
            Outcome::RateLimited {
                quota_exhausted: true
            },
            "{code:?}"
        );
        assert_eq!(c.should_retry, Some(false));
        assert!(!c.is_retryable());
        assert!(!c.is_failure());
    }
    // A rate-limit code is back-pressure.
    let mut r = response(429, &[]);
    r.extensions_mut().insert(ErrorCode::new(
        Some("rate_limit_exceeded"),
        Some("requests"),
    ));
    assert!(classify_response(&r, now()).is_retryable());
    // A quota code on another status changes nothing.
    let mut r = response(500, &[]);
    r.extensions_mut()
        .insert(ErrorCode::new(Some("insufficient_quota"), None));
    assert_eq!(classify_response(&r, now()).outcome, Outcome::ServerError);
}

// ------------------------------------------------------- ErrorBodyLayer

const QUOTA_BODY: &str = r#"{
    "error": {
        "message": "You exceeded your current quota, please check your plan and billing details.",
        "type": "insufficient_quota",
        "param": null,
        "code": "insufficient_quota"
    }
}"#;

const SPEND_BODY: &str = r#"{"type":"error","error":{"type":"enforced_spend_limit_reached","message":"Your workspace has reached its spend limit."}}"#;

const RATE_BODY: &str = r#"{"error":{"message":"Rate limit reached for requests","type":"requests","param":null,"code":"rate_limit_exceeded"}}"#;

type BoxBody = http_body_util::combinators::UnsyncBoxBody<Bytes, std::io::Error>;

fn chunked(chunks: &[&'static str]) -> BoxBody {
    let frames: Vec<Result<Frame<Bytes>, std::io::Error>> = chunks
        .iter()
        .map(|c| Ok(Frame::data(Bytes::from_static(c.as_bytes()))))
        .collect();
    StreamBody::new(stream::iter(frames)).boxed_unsync()
}

async fn call<B>(
    layer: &ErrorBodyLayer,
    response: Response<B>,
) -> Response<llm_sluice::classify::ErrorBody<B>>
where
    B: Body + Send + 'static,
{
    let slot = std::sync::Mutex::new(Some(response));
    let upstream = tower::service_fn(move |_: ()| {
        let r = slot.lock().unwrap().take().expect("one call");
        async move { Ok::<_, Infallible>(r) }
    });
    let mut svc = layer.layer(upstream);
    svc.ready().await.unwrap().call(()).await.unwrap()
}

#[tokio::test]
async fn quota_429_through_error_body_layer_is_not_retried() {
    let upstream = Response::builder()
        .status(429)
        .header("content-type", "application/json")
        .header("x-should-retry", "true")
        .body(Full::new(Bytes::from_static(QUOTA_BODY.as_bytes())))
        .unwrap();
    let r = call(&ErrorBodyLayer::new(), upstream).await;
    let code = r
        .extensions()
        .get::<ErrorCode>()
        .expect("error code inserted");
    assert_eq!(code.code(), Some("insufficient_quota"));
    assert_eq!(code.error_type(), Some("insufficient_quota"));
    let c = r.classification();
    assert_eq!(
        c.outcome,
        Outcome::RateLimited {
            quota_exhausted: true
        }
    );
    assert!(!c.is_retryable());
    assert!(r.body().is_buffered());
    let body = r.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, QUOTA_BODY.as_bytes());
}

#[tokio::test]
async fn spend_limit_429_in_chunks() {
    let (a, b) = SPEND_BODY.split_at(20);
    let (b, c) = b.split_at(30);
    let upstream = Response::builder()
        .status(429)
        .body(chunked(&[a, b, c]))
        .unwrap();
    let r = call(&ErrorBodyLayer::new(), upstream).await;
    assert_eq!(
        r.classification().outcome,
        Outcome::RateLimited {
            quota_exhausted: true
        }
    );
    assert_eq!(r.body().size_hint().exact(), Some(SPEND_BODY.len() as u64));
    let body = r.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, SPEND_BODY.as_bytes());
}

#[tokio::test]
async fn rate_limit_429_stays_retryable() {
    let upstream = Response::builder()
        .status(429)
        .header("retry-after-ms", "800")
        .body(Full::new(Bytes::from_static(RATE_BODY.as_bytes())))
        .unwrap();
    let r = call(&ErrorBodyLayer::new(), upstream).await;
    assert_eq!(
        r.extensions().get::<ErrorCode>().and_then(ErrorCode::code),
        Some("rate_limit_exceeded")
    );
    let c = r.classification();
    assert!(c.is_retryable());
    assert_eq!(c.retry_after, Some(Duration::from_millis(800)));
}

#[tokio::test]
async fn non_json_error_body_passes_unchanged() {
    let html = "<html><body>502 Bad Gateway</body></html>";
    let upstream = Response::builder()
        .status(502)
        .body(Full::new(Bytes::from_static(html.as_bytes())))
        .unwrap();
    let r = call(&ErrorBodyLayer::new(), upstream).await;
    assert!(r.extensions().get::<ErrorCode>().is_none());
    assert_eq!(r.classification().outcome, Outcome::ServerError);
    assert_eq!(
        r.into_body().collect().await.unwrap().to_bytes(),
        html.as_bytes()
    );
}

#[tokio::test]
async fn success_body_is_not_read_ahead() {
    // A 2xx stream that never yields: the response must still arrive.
    let pending = StreamBody::new(stream::pending::<Result<Frame<Bytes>, Infallible>>());
    let upstream = Response::builder().status(200).body(pending).unwrap();
    let r = call(&ErrorBodyLayer::new(), upstream).await;
    assert_eq!(r.status(), 200);
    assert!(!r.body().is_buffered());

    let full = Response::builder()
        .status(200)
        .body(Full::new(Bytes::from_static(QUOTA_BODY.as_bytes())))
        .unwrap();
    let r = call(&ErrorBodyLayer::new(), full).await;
    assert!(
        r.extensions().get::<ErrorCode>().is_none(),
        "2xx bodies are never parsed"
    );
    assert_eq!(
        r.into_body().collect().await.unwrap().to_bytes(),
        QUOTA_BODY.as_bytes()
    );
}

#[tokio::test]
async fn body_over_the_limit_is_passed_on_whole_and_unparsed() {
    let layer = ErrorBodyLayer::builder()
        .max_body_bytes(16)
        .build()
        .unwrap();
    // Chunks of 10: reading stops after the second (20 > 16).
    let parts: Vec<&'static str> =
        vec!["{\"error\":{", "\"code\":\"in", "sufficient", "_quota\"}}"];
    let upstream = Response::builder()
        .status(429)
        .body(chunked(&parts))
        .unwrap();
    let r = call(&layer, upstream).await;
    assert!(r.extensions().get::<ErrorCode>().is_none());
    assert_eq!(
        r.classification().outcome,
        Outcome::RateLimited {
            quota_exhausted: false
        }
    );
    let body = r.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, parts.concat().as_bytes());
}

#[tokio::test]
async fn body_with_a_large_size_hint_is_not_read() {
    let layer = ErrorBodyLayer::builder().max_body_bytes(8).build().unwrap();
    let upstream = Response::builder()
        .status(500)
        .body(Full::new(Bytes::from_static(QUOTA_BODY.as_bytes())))
        .unwrap();
    let r = call(&layer, upstream).await;
    assert!(!r.body().is_buffered());
    assert_eq!(
        r.into_body().collect().await.unwrap().to_bytes(),
        QUOTA_BODY.as_bytes()
    );
}

#[tokio::test]
async fn body_error_keeps_read_bytes_then_the_error() {
    let frames: Vec<Result<Frame<Bytes>, std::io::Error>> = vec![
        Ok(Frame::data(Bytes::from_static(b"{\"error\":"))),
        Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "reset",
        )),
    ];
    let upstream = Response::builder()
        .status(503)
        .body(StreamBody::new(stream::iter(frames)))
        .unwrap();
    let r = call(&ErrorBodyLayer::new(), upstream).await;
    assert!(r.extensions().get::<ErrorCode>().is_none());
    assert_eq!(r.classification().outcome, Outcome::ServerError);
    let mut body = r.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(first, &b"{\"error\":"[..]);
    let err = body.frame().await.unwrap().unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset);
    assert!(body.frame().await.is_none());
    assert!(body.is_end_stream());
}

#[tokio::test]
async fn trailers_are_kept() {
    let mut trailers = http::HeaderMap::new();
    trailers.insert("x-trace", HeaderValue::from_static("abc"));
    let frames: Vec<Result<Frame<Bytes>, Infallible>> = vec![
        Ok(Frame::data(Bytes::from_static(RATE_BODY.as_bytes()))),
        Ok(Frame::trailers(trailers.clone())),
    ];
    let upstream = Response::builder()
        .status(429)
        .body(StreamBody::new(stream::iter(frames)))
        .unwrap();
    let r = call(&ErrorBodyLayer::new(), upstream).await;
    assert!(r.extensions().get::<ErrorCode>().is_some());
    let collected = r.into_body().collect().await.unwrap();
    assert_eq!(collected.trailers(), Some(&trailers));
    assert_eq!(collected.to_bytes(), RATE_BODY.as_bytes());
}

#[tokio::test]
async fn empty_error_body_passes_through() {
    let upstream = Response::builder()
        .status(404)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let r = call(&ErrorBodyLayer::new(), upstream).await;
    assert!(r.extensions().get::<ErrorCode>().is_none());
    assert!(r.body().is_end_stream());
    assert_eq!(r.classification().outcome, Outcome::ClientError);
}

#[test]
fn max_body_bytes_zero_is_a_config_error() {
    let err = ErrorBodyLayer::builder()
        .max_body_bytes(0)
        .build()
        .unwrap_err();
    assert_eq!(err.field(), "max_body_bytes");
    assert_eq!(ErrorBodyLayer::new().max_body_bytes(), 64 * 1024);
    assert_eq!(ErrorBodyLayer::default().max_body_bytes(), 64 * 1024);
}

#[tokio::test]
async fn poll_ready_is_the_inner_services() {
    let (mut svc, mut handle) =
        tower_test::mock::spawn_layer::<(), Response<Full<Bytes>>, _>(ErrorBodyLayer::new());
    handle.allow(0);
    tokio_test::assert_pending!(svc.poll_ready());
    handle.allow(1);
    tokio_test::assert_ready_ok!(svc.poll_ready());
    let fut = svc.call(());
    assert_request_eq!(handle, ()).send_response(
        Response::builder()
            .status(429)
            .body(Full::new(Bytes::from_static(QUOTA_BODY.as_bytes())))
            .unwrap(),
    );
    let r = fut.await.unwrap();
    assert!(r
        .extensions()
        .get::<ErrorCode>()
        .unwrap()
        .is_quota_exhausted());
}

#[tokio::test]
async fn inner_errors_pass_through() {
    let (mut svc, mut handle) =
        tower_test::mock::spawn_layer::<(), Response<Full<Bytes>>, _>(ErrorBodyLayer::new());
    handle.allow(1);
    tokio_test::assert_ready_ok!(svc.poll_ready());
    let fut = svc.call(());
    assert_request_eq!(handle, ()).send_error(std::io::Error::other("refused"));
    let err = fut.await.unwrap_err();
    assert_eq!(err.to_string(), "refused");
}

/// A body that never ends and records when it is dropped.
struct Endless {
    dropped: Arc<AtomicBool>,
    sent: bool,
}

impl Body for Endless {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.sent {
            return std::task::Poll::Pending;
        }
        self.sent = true;
        std::task::Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"{")))))
    }
}

impl Drop for Endless {
    fn drop(&mut self) {
        self.dropped.store(true, Ordering::SeqCst);
    }
}

#[tokio::test]
async fn response_future_drop_drops_the_partly_read_body() {
    let dropped = Arc::new(AtomicBool::new(false));
    let body = Endless {
        dropped: dropped.clone(),
        sent: false,
    };
    let upstream = tower::service_fn({
        let slot = std::sync::Mutex::new(Some(body));
        move |_: ()| {
            let body = slot.lock().unwrap().take().unwrap();
            async move { Ok::<_, Infallible>(Response::builder().status(500).body(body).unwrap()) }
        }
    });
    let mut svc = ErrorBodyLayer::new().layer(upstream);
    let mut fut = tokio_test::task::spawn(svc.ready().await.unwrap().call(()));
    // The response arrived; its body is being read and never ends.
    tokio_test::assert_pending!(fut.poll());
    assert!(!dropped.load(Ordering::SeqCst));
    drop(fut);
    assert!(dropped.load(Ordering::SeqCst));
}

#[cfg(feature = "metrics")]
#[tokio::test]
async fn metrics_count_what_came_of_reading_bodies() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};

    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _guard = metrics::set_default_local_recorder(&recorder);

    let full = |status: u16, body: &'static str| {
        Response::builder()
            .status(status)
            .body(Full::new(Bytes::from_static(body.as_bytes())))
            .unwrap()
    };
    let layer = ErrorBodyLayer::new();
    call(&layer, full(429, QUOTA_BODY)).await;
    call(&layer, full(429, RATE_BODY)).await;
    call(&layer, full(502, "<html>bad gateway</html>")).await;
    call(&layer, full(200, QUOTA_BODY)).await; // not counted
    let small = ErrorBodyLayer::builder().max_body_bytes(8).build().unwrap();
    call(&small, full(500, QUOTA_BODY)).await;
    let frames: Vec<Result<Frame<Bytes>, std::io::Error>> =
        vec![Err(std::io::Error::other("reset"))];
    call(
        &layer,
        Response::builder()
            .status(503)
            .body(StreamBody::new(stream::iter(frames)))
            .unwrap(),
    )
    .await;

    let mut counts = std::collections::HashMap::new();
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        let key = key.key();
        assert_eq!(key.name(), "llm_sluice_error_bodies_total");
        let outcome = key
            .labels()
            .find(|l| l.key() == "outcome")
            .map(|l| l.value().to_owned())
            .unwrap();
        assert!(key
            .labels()
            .any(|l| l.key() == "layer" && l.value() == "error_body"));
        if let DebugValue::Counter(n) = value {
            *counts.entry(outcome).or_insert(0) += n;
        }
    }
    assert_eq!(counts.get("parsed"), Some(&2));
    assert_eq!(counts.get("unparsed"), Some(&1));
    assert_eq!(counts.get("too_large"), Some(&1));
    assert_eq!(counts.get("failed"), Some(&1));
}
