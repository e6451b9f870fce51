//! The retry layer, on paused time.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::{self, Ready};
use llm_sluice::classify::{Classification, LlmResponse, Outcome};
use llm_sluice::request::RequestMeta;
use llm_sluice::retry::{
    Backoff, Jitter, OverCap, QuotaAware, ResponseErrorCode, RetryBudget, RetryLayer,
    RetryLayerBuilder,
};
use llm_sluice::{Error, LlmRequest, Priority};
use tokio::time::Instant;
use tokio_test::{assert_pending, assert_ready};
use tower::{BoxError, Layer, Service, ServiceExt};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A typed response whose classification the test controls.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Reply {
    status: u16,
    retry_after: Option<Duration>,
    should_retry: Option<bool>,
    code: Option<&'static str>,
}

impl Reply {
    fn status(status: u16) -> Self {
        Reply {
            status,
            retry_after: None,
            should_retry: None,
            code: None,
        }
    }
    fn ok() -> Self {
        Reply::status(200)
    }
    fn after(mut self, delay: Duration) -> Self {
        self.retry_after = Some(delay);
        self
    }
    fn should_retry(mut self, verdict: bool) -> Self {
        self.should_retry = Some(verdict);
        self
    }
    fn code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }
}

impl LlmResponse for Reply {
    fn classification(&self) -> Classification {
        let outcome = match self.status {
            200..=299 => Outcome::Success,
            408 => Outcome::Timeout,
            429 => Outcome::RateLimited {
                quota_exhausted: false,
            },
            529 => Outcome::Overloaded,
            500..=599 => Outcome::ServerError,
            _ => Outcome::ClientError,
        };
        Classification::new(outcome)
            .with_status(self.status)
            .with_retry_after(self.retry_after)
            .with_should_retry(self.should_retry)
    }
}

impl ResponseErrorCode for Reply {
    fn error_code(&self) -> Option<&str> {
        self.code
    }
}

type Step = Result<Reply, std::io::ErrorKind>;

/// An upstream that answers from a script (repeating its last step) and
/// records when each attempt arrived and what it carried.
#[derive(Clone)]
struct Upstream {
    script: Arc<Mutex<VecDeque<Step>>>,
    calls: Arc<Mutex<Vec<(Instant, RequestMeta)>>>,
}

impl Upstream {
    fn new(script: impl IntoIterator<Item = Step>) -> Self {
        Upstream {
            script: Arc::new(Mutex::new(script.into_iter().collect())),
            calls: Arc::default(),
        }
    }
    fn always(step: Step) -> Self {
        Upstream::new([step])
    }
    fn count(&self) -> usize {
        self.calls.lock().unwrap().len()
    }
    fn times(&self) -> Vec<Instant> {
        self.calls.lock().unwrap().iter().map(|c| c.0).collect()
    }
    fn metas(&self) -> Vec<RequestMeta> {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .map(|c| c.1.clone())
            .collect()
    }
}

impl Service<RequestMeta> for Upstream {
    type Response = Reply;
    type Error = BoxError;
    type Future = Ready<Result<Reply, BoxError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: RequestMeta) -> Self::Future {
        self.calls.lock().unwrap().push((Instant::now(), req));
        let mut script = self.script.lock().unwrap();
        let step = if script.len() > 1 {
            script.pop_front().expect("non-empty")
        } else {
            script.front().cloned().expect("a script")
        };
        future::ready(step.map_err(|kind| std::io::Error::new(kind, "upstream").into()))
    }
}

fn builder() -> RetryLayerBuilder {
    RetryLayer::builder().seed(7)
}

async fn call<S>(svc: &mut S, req: RequestMeta) -> Result<Reply, BoxError>
where
    S: Service<RequestMeta, Response = Reply, Error = BoxError>,
{
    svc.ready().await?.call(req).await
}

fn gaps(times: &[Instant]) -> Vec<Duration> {
    times.windows(2).map(|w| w[1] - w[0]).collect()
}

// ===== what is retried =====

#[tokio::test(start_paused = true)]
async fn retries_a_retryable_response_until_success() {
    let upstream = Upstream::new([
        Ok(Reply::status(503)),
        Ok(Reply::status(529)),
        Ok(Reply::ok()),
    ]);
    let mut svc = builder()
        .max_retries(5)
        .build()
        .unwrap()
        .layer(upstream.clone());
    let reply = call(&mut svc, RequestMeta::new()).await.unwrap();
    assert_eq!(reply.status, 200);
    assert_eq!(upstream.count(), 3);
}

#[tokio::test(start_paused = true)]
async fn returns_the_last_response_when_retries_run_out() {
    let upstream = Upstream::always(Ok(Reply::status(500)));
    let mut svc = builder()
        .max_retries(2)
        .build()
        .unwrap()
        .layer(upstream.clone());
    let reply = call(&mut svc, RequestMeta::new()).await.unwrap();
    assert_eq!(reply.status, 500, "the real response, not an error");
    assert_eq!(upstream.count(), 3, "1 + max_retries attempts");
}

#[tokio::test(start_paused = true)]
async fn max_retries_zero_sends_once() {
    let upstream = Upstream::always(Ok(Reply::status(503)));
    let mut svc = builder()
        .max_retries(0)
        .build()
        .unwrap()
        .layer(upstream.clone());
    assert_eq!(
        call(&mut svc, RequestMeta::new()).await.unwrap().status,
        503
    );
    assert_eq!(upstream.count(), 1);
}

#[tokio::test(start_paused = true)]
async fn client_errors_are_not_retried_but_409_and_408_are() {
    for (status, attempts) in [(400, 1), (401, 1), (404, 1), (422, 1), (409, 3), (408, 3)] {
        let upstream = Upstream::always(Ok(Reply::status(status)));
        let mut svc = builder().build().unwrap().layer(upstream.clone());
        assert_eq!(
            call(&mut svc, RequestMeta::new()).await.unwrap().status,
            status
        );
        assert_eq!(upstream.count(), attempts, "status {status}");
    }
}

#[tokio::test(start_paused = true)]
async fn x_should_retry_overrides_the_status() {
    let upstream = Upstream::always(Ok(Reply::status(503).should_retry(false)));
    let mut svc = builder().build().unwrap().layer(upstream.clone());
    call(&mut svc, RequestMeta::new()).await.unwrap();
    assert_eq!(upstream.count(), 1, "should-retry: false on a 503");

    let upstream = Upstream::new([Ok(Reply::status(400).should_retry(true)), Ok(Reply::ok())]);
    let mut svc = builder().build().unwrap().layer(upstream.clone());
    assert_eq!(
        call(&mut svc, RequestMeta::new()).await.unwrap().status,
        200
    );
    assert_eq!(upstream.count(), 2, "should-retry: true on a 400");
}

#[tokio::test(start_paused = true)]
async fn quota_exhausted_429_is_not_retried() {
    let layer = builder()
        .classifier(QuotaAware::new(llm_sluice::classify::DefaultClassifier))
        .build()
        .unwrap();

    let upstream = Upstream::always(Ok(Reply::status(429).code("insufficient_quota")));
    let mut svc = layer.layer(upstream.clone());
    assert_eq!(
        call(&mut svc, RequestMeta::new()).await.unwrap().status,
        429
    );
    assert_eq!(upstream.count(), 1, "a spent quota never succeeds on retry");

    let upstream = Upstream::always(Ok(Reply::status(429).code("enforced_spend_limit_reached")));
    let mut svc = layer.layer(upstream.clone());
    call(&mut svc, RequestMeta::new()).await.unwrap();
    assert_eq!(upstream.count(), 1);

    let upstream = Upstream::new([
        Ok(Reply::status(429).code("rate_limit_exceeded")),
        Ok(Reply::ok()),
    ]);
    let mut svc = layer.layer(upstream.clone());
    assert_eq!(
        call(&mut svc, RequestMeta::new()).await.unwrap().status,
        200
    );
    assert_eq!(upstream.count(), 2, "back-pressure is retried");
}

#[tokio::test(start_paused = true)]
async fn transport_errors_are_retried_and_the_last_keeps_its_type() {
    let upstream = Upstream::always(Err(std::io::ErrorKind::ConnectionReset));
    let mut svc = builder().build().unwrap().layer(upstream.clone());
    let err = call(&mut svc, RequestMeta::new()).await.unwrap_err();
    assert_eq!(upstream.count(), 3);
    let io = err
        .downcast_ref::<std::io::Error>()
        .expect("the inner error");
    assert_eq!(io.kind(), std::io::ErrorKind::ConnectionReset);
}

#[tokio::test(start_paused = true)]
async fn own_rejections_are_not_retried_and_keep_their_reason() {
    let svc_fn = tower::service_fn(|_req: RequestMeta| async {
        Err::<Reply, BoxError>(Box::new(Error::CircuitOpen {
            retry_after: Duration::from_secs(5),
        }))
    });
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = {
        let calls = calls.clone();
        tower::ServiceBuilder::new()
            .map_request(move |r: RequestMeta| {
                calls.fetch_add(1, Ordering::SeqCst);
                r
            })
            .service(svc_fn)
    };
    let mut svc = builder().build().unwrap().layer(counted);
    let err = call(&mut svc, RequestMeta::new()).await.unwrap_err();
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert!(matches!(
        err.downcast_ref::<Error>(),
        Some(Error::CircuitOpen { .. })
    ));
}

#[tokio::test(start_paused = true)]
async fn total_deadline_timeout_is_not_retried() {
    let svc_fn = tower::service_fn(|_req: RequestMeta| async {
        Err::<Reply, BoxError>(Box::new(Error::Timeout {
            kind: llm_sluice::TimeoutKind::Total,
        }))
    });
    let mut svc = builder().build().unwrap().layer(svc_fn);
    let start = Instant::now();
    let err = call(&mut svc, RequestMeta::new()).await.unwrap_err();
    assert_eq!(Instant::now(), start, "returned at once");
    assert!(matches!(
        err.downcast_ref::<Error>(),
        Some(Error::Timeout {
            kind: llm_sluice::TimeoutKind::Total
        })
    ));
}

// ===== when: backoff =====

#[tokio::test(start_paused = true)]
async fn backoff_without_jitter_doubles_up_to_the_cap() {
    let upstream = Upstream::always(Ok(Reply::status(503)));
    let mut svc = builder()
        .max_retries(6)
        .jitter(Jitter::None)
        .backoff_base(ms(100))
        .backoff_cap(ms(1_000))
        .build()
        .unwrap()
        .layer(upstream.clone());
    call(&mut svc, RequestMeta::new()).await.unwrap();
    assert_eq!(
        gaps(&upstream.times()),
        [100, 200, 400, 800, 1_000, 1_000].map(ms)
    );
}

#[tokio::test(start_paused = true)]
async fn full_jitter_sequence_is_exact_for_a_seed() {
    let run = |seed| async move {
        let upstream = Upstream::always(Ok(Reply::status(503)));
        let mut svc = RetryLayer::builder()
            .seed(seed)
            .max_retries(6)
            .build()
            .unwrap()
            .layer(upstream.clone());
        call(&mut svc, RequestMeta::new()).await.unwrap();
        gaps(&upstream.times())
    };
    let observed = run(11).await;
    assert_eq!(observed, run(11).await, "same seed, same delays");
    assert_ne!(observed, run(12).await, "another seed, other delays");

    // The layer draws exactly the delays of `Backoff::delay` with the same
    // seed; tokio's timer fires on whole milliseconds, never earlier.
    let backoff = Backoff::default();
    let mut rng = fastrand::Rng::with_seed(11);
    let expected: Vec<_> = (0..6).map(|n| backoff.delay(n, &mut rng)).collect();
    assert_eq!(observed.len(), expected.len());
    for (n, (seen, want)) in observed.iter().zip(&expected).enumerate() {
        assert!(
            *seen >= *want && *seen < *want + ms(1),
            "retry {n}: waited {seen:?}, drew {want:?}"
        );
        assert!(*want <= backoff.ceiling(n as u32));
    }
}

#[tokio::test(start_paused = true)]
async fn scaled_jitter_stays_in_the_sdk_range() {
    let upstream = Upstream::always(Ok(Reply::status(503)));
    let mut svc = builder()
        .max_retries(4)
        .jitter(Jitter::Scaled)
        .build()
        .unwrap()
        .layer(upstream.clone());
    call(&mut svc, RequestMeta::new()).await.unwrap();
    let ceilings = [500, 1_000, 2_000, 4_000].map(ms);
    for (gap, ceiling) in gaps(&upstream.times()).into_iter().zip(ceilings) {
        assert!(
            gap > ceiling.mul_f64(0.75) && gap <= ceiling + ms(1),
            "{gap:?}"
        );
    }
}

// ===== when: the server's delay =====

#[tokio::test(start_paused = true)]
async fn server_delay_is_honoured_exactly() {
    let upstream = Upstream::new([
        Ok(Reply::status(429).after(ms(1_500))),
        Ok(Reply::status(503).after(ms(7))),
        Ok(Reply::ok()),
    ]);
    let mut svc = builder()
        .max_retries(3)
        .build()
        .unwrap()
        .layer(upstream.clone());
    assert_eq!(
        call(&mut svc, RequestMeta::new()).await.unwrap().status,
        200
    );
    assert_eq!(gaps(&upstream.times()), [ms(1_500), ms(7)]);
}

#[tokio::test(start_paused = true)]
async fn server_delay_is_never_early() {
    // A tiny backoff must not shorten a longer server delay.
    let (mock, mut handle) = tower_test::mock::pair::<RequestMeta, Reply>();
    let mut svc = builder()
        .backoff_base(ms(1))
        .backoff_cap(ms(1))
        .build()
        .unwrap()
        .layer(mock);
    handle.allow(10);
    assert!(svc.ready().await.is_ok());
    let mut fut = tokio_test::task::spawn(svc.call(RequestMeta::new()));
    assert_pending!(fut.poll());
    let (_, send) = handle.next_request().await.unwrap();
    send.send_response(Reply::status(429).after(ms(2_000)));
    assert_pending!(fut.poll());

    tokio::time::advance(ms(1_999)).await;
    assert_pending!(fut.poll());
    assert!(
        handle.poll_request().is_pending(),
        "not a millisecond early"
    );

    tokio::time::advance(ms(1)).await;
    assert_pending!(fut.poll());
    let (_, send) = handle.next_request().await.unwrap();
    send.send_response(Reply::ok());
    assert_eq!(assert_ready!(fut.poll()).unwrap().status, 200);
}

#[tokio::test(start_paused = true)]
async fn server_delay_above_the_cap_fails_by_default() {
    let upstream = Upstream::always(Ok(Reply::status(429).after(Duration::from_secs(61))));
    let mut svc = builder().build().unwrap().layer(upstream.clone());
    let start = Instant::now();
    let reply = call(&mut svc, RequestMeta::new()).await.unwrap();
    assert_eq!(
        reply.retry_after,
        Some(Duration::from_secs(61)),
        "as it was"
    );
    assert_eq!(upstream.count(), 1);
    assert_eq!(Instant::now(), start, "returned at once");

    // exactly the cap is honoured
    let upstream = Upstream::new([
        Ok(Reply::status(429).after(Duration::from_secs(60))),
        Ok(Reply::ok()),
    ]);
    let mut svc = builder().build().unwrap().layer(upstream.clone());
    assert_eq!(
        call(&mut svc, RequestMeta::new()).await.unwrap().status,
        200
    );
    assert_eq!(gaps(&upstream.times()), [Duration::from_secs(60)]);
}

#[tokio::test(start_paused = true)]
async fn server_delay_above_the_cap_can_use_the_backoff() {
    let upstream = Upstream::new([
        Ok(Reply::status(429).after(Duration::from_secs(30))),
        Ok(Reply::ok()),
    ]);
    let mut svc = builder()
        .max_server_delay(Duration::from_secs(10))
        .over_cap(OverCap::UseBackoff)
        .jitter(Jitter::None)
        .backoff_base(ms(250))
        .build()
        .unwrap()
        .layer(upstream.clone());
    assert_eq!(
        call(&mut svc, RequestMeta::new()).await.unwrap().status,
        200
    );
    assert_eq!(gaps(&upstream.times()), [ms(250)]);
}

#[tokio::test(start_paused = true)]
async fn zero_server_delay_falls_back_to_backoff() {
    let upstream = Upstream::new([
        Ok(Reply::status(503).after(Duration::ZERO)),
        Ok(Reply::ok()),
    ]);
    let mut svc = builder()
        .jitter(Jitter::None)
        .backoff_base(ms(300))
        .build()
        .unwrap()
        .layer(upstream.clone());
    call(&mut svc, RequestMeta::new()).await.unwrap();
    assert_eq!(gaps(&upstream.times()), [ms(300)]);
}

// ===== deadlines =====

#[tokio::test(start_paused = true)]
async fn deadline_stops_a_backoff_that_would_end_past_it() {
    let upstream = Upstream::always(Ok(Reply::status(503)));
    let mut svc = builder()
        .max_retries(10)
        .jitter(Jitter::None)
        .backoff_base(ms(100))
        .build()
        .unwrap()
        .layer(upstream.clone());
    let start = Instant::now();
    // 100 + 200 + 400 = 700 ms fit before 1 s; the next 800 ms do not.
    let req = RequestMeta::new().deadline(start + ms(1_000));
    assert_eq!(call(&mut svc, req).await.unwrap().status, 503);
    assert_eq!(upstream.count(), 4);
    assert_eq!(
        Instant::now(),
        start + ms(700),
        "no sleep past the deadline"
    );
}

#[tokio::test(start_paused = true)]
async fn deadline_stops_a_server_delay_that_would_end_past_it() {
    let upstream = Upstream::always(Ok(Reply::status(429).after(Duration::from_secs(5))));
    let mut svc = builder().build().unwrap().layer(upstream.clone());
    let start = Instant::now();
    let req = RequestMeta::new().deadline(start + Duration::from_secs(5));
    assert_eq!(call(&mut svc, req).await.unwrap().status, 429);
    assert_eq!(upstream.count(), 1);
    assert_eq!(Instant::now(), start);
}

#[tokio::test(start_paused = true)]
async fn total_timeout_sets_a_deadline_inner_layers_see() {
    let upstream = Upstream::new([Ok(Reply::status(503)), Ok(Reply::ok())]);
    let layer = builder()
        .total_timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let mut svc = layer.layer(upstream.clone());
    let start = Instant::now();
    call(&mut svc, RequestMeta::new()).await.unwrap();
    for meta in upstream.metas() {
        assert_eq!(meta.deadline, Some(start + Duration::from_secs(30)));
    }

    // a request's own deadline is kept
    let upstream = Upstream::always(Ok(Reply::ok()));
    let mut svc = layer.layer(upstream.clone());
    let own = start + Duration::from_secs(3);
    call(&mut svc, RequestMeta::new().deadline(own))
        .await
        .unwrap();
    assert_eq!(upstream.metas()[0].deadline, Some(own));
}

// ===== place in line =====

#[tokio::test(start_paused = true)]
async fn retries_keep_priority_and_first_arrival() {
    let upstream = Upstream::new([
        Ok(Reply::status(503)),
        Ok(Reply::status(503)),
        Ok(Reply::ok()),
    ]);
    let mut svc = builder().build().unwrap().layer(upstream.clone());
    let start = Instant::now();
    call(&mut svc, RequestMeta::new().priority(Priority::HIGH))
        .await
        .unwrap();
    let metas = upstream.metas();
    assert_eq!(metas.len(), 3);
    assert!(Instant::now() > start, "time passed between attempts");
    for meta in metas {
        assert_eq!(meta.priority, Priority::HIGH);
        assert_eq!(
            meta.arrival(),
            Some(start),
            "the first arrival, not the retry time"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn an_earlier_arrival_is_kept() {
    let upstream = Upstream::always(Ok(Reply::ok()));
    let mut svc = builder().build().unwrap().layer(upstream.clone());
    let earlier = Instant::now();
    tokio::time::advance(Duration::from_secs(1)).await;
    let mut req = RequestMeta::new();
    req.set_arrival(earlier);
    call(&mut svc, req).await.unwrap();
    assert_eq!(upstream.metas()[0].arrival, Some(earlier));
}

// ===== replay =====

#[tokio::test(start_paused = true)]
async fn a_request_that_cannot_be_replayed_is_sent_once() {
    let upstream = Upstream::always(Ok(Reply::status(503)));
    let mut svc = builder()
        .replay(|_: &RequestMeta| None)
        .build()
        .unwrap()
        .layer(upstream.clone());
    assert_eq!(
        call(&mut svc, RequestMeta::new()).await.unwrap().status,
        503
    );
    assert_eq!(upstream.count(), 1);
}

#[tokio::test(start_paused = true)]
async fn replay_strategy_is_asked_for_each_further_attempt() {
    // The strategy can refuse part-way: here it allows one copy only.
    let copies = Arc::new(AtomicUsize::new(0));
    let counter = copies.clone();
    let upstream = Upstream::always(Ok(Reply::status(503)));
    let mut svc = builder()
        .max_retries(5)
        .replay(move |req: &RequestMeta| {
            (counter.fetch_add(1, Ordering::SeqCst) == 0).then(|| req.clone())
        })
        .build()
        .unwrap()
        .layer(upstream.clone());
    call(&mut svc, RequestMeta::new()).await.unwrap();
    assert_eq!(upstream.count(), 2);
    assert_eq!(copies.load(Ordering::SeqCst), 2);
}

#[cfg(feature = "http")]
mod http_bodies {
    use super::*;
    use bytes::Bytes;
    use http_body_util::{BodyExt, StreamBody};
    use llm_sluice::classify::ErrorRef;
    use llm_sluice::retry::{ReplayBodies, ReplayBody};

    type Frames = futures::stream::Iter<
        std::vec::IntoIter<Result<http_body::Frame<Bytes>, std::convert::Infallible>>,
    >;

    fn stream(chunks: &[&'static str]) -> StreamBody<Frames> {
        let frames: Vec<_> = chunks
            .iter()
            .map(|c| Ok(http_body::Frame::data(Bytes::from_static(c.as_bytes()))))
            .collect();
        StreamBody::new(futures::stream::iter(frames))
    }

    /// Classifies by status only: does not depend on the header parser.
    fn by_status(result: Result<&http::Response<()>, ErrorRef<'_>>) -> Classification {
        match result {
            Ok(r) if r.status().is_server_error() => {
                Classification::new(Outcome::ServerError).with_status(r.status().as_u16())
            }
            Ok(_) => Classification::success(None),
            Err(e) => llm_sluice::classify::classify_error(e),
        }
    }

    fn recording_upstream(
        bodies: Arc<Mutex<Vec<Bytes>>>,
    ) -> impl Service<
        http::Request<ReplayBody<StreamBody<Frames>>>,
        Response = http::Response<()>,
        Error = BoxError,
    > + Clone {
        tower::service_fn(move |req: http::Request<ReplayBody<StreamBody<Frames>>>| {
            let bodies = bodies.clone();
            async move {
                assert_eq!(req.headers()["x-test"], "1", "the head is replayed");
                let body = req.into_body().collect().await.unwrap().to_bytes();
                let mut bodies = bodies.lock().unwrap();
                bodies.push(body);
                let status = if bodies.len() < 3 { 503 } else { 200 };
                Ok::<_, BoxError>(http::Response::builder().status(status).body(()).unwrap())
            }
        })
    }

    fn request(
        body: ReplayBody<StreamBody<Frames>>,
    ) -> http::Request<ReplayBody<StreamBody<Frames>>> {
        http::Request::builder()
            .header("x-test", "1")
            .body(body)
            .unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn buffered_bodies_are_replayed_whole() {
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let mut svc = builder()
            .classifier(by_status)
            .replay(ReplayBodies)
            .max_retries(3)
            .build()
            .unwrap()
            .layer(recording_upstream(bodies.clone()));
        let body = ReplayBody::buffer(stream(&["{\"model\":", "\"a\"}"]), 64)
            .await
            .unwrap();
        assert!(body.is_replayable());
        let res = svc
            .ready()
            .await
            .unwrap()
            .call(request(body))
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        let bodies = bodies.lock().unwrap();
        assert_eq!(bodies.len(), 3);
        assert!(bodies.iter().all(|b| b == "{\"model\":\"a\"}"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_over_the_limit_is_sent_once_whole() {
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let mut svc = builder()
            .classifier(by_status)
            .replay(ReplayBodies)
            .build()
            .unwrap()
            .layer(recording_upstream(bodies.clone()));
        let body = ReplayBody::buffer(stream(&["0123456789", "abcdef", "XYZ"]), 12)
            .await
            .unwrap();
        assert!(!body.is_replayable());
        let res = svc
            .ready()
            .await
            .unwrap()
            .call(request(body))
            .await
            .unwrap();
        assert_eq!(res.status(), 503, "the first result, as it was");
        let bodies = bodies.lock().unwrap();
        assert_eq!(bodies.as_slice(), ["0123456789abcdefXYZ"], "nothing lost");
    }

    #[tokio::test(start_paused = true)]
    async fn clone_bodies_replay_with_the_default_strategy() {
        let calls = Arc::new(AtomicUsize::new(0));
        let counter = calls.clone();
        let upstream = tower::service_fn(move |req: http::Request<String>| {
            let n = counter.fetch_add(1, Ordering::SeqCst);
            async move {
                assert_eq!(req.body(), "prompt");
                let status = if n == 0 { 502 } else { 200 };
                Ok::<_, BoxError>(http::Response::builder().status(status).body(()).unwrap())
            }
        });
        let mut svc = builder()
            .classifier(by_status)
            .backoff_base(ms(1))
            .backoff_cap(ms(1))
            .build()
            .unwrap()
            .layer(upstream);
        let res = svc
            .ready()
            .await
            .unwrap()
            .call(http::Request::new("prompt".to_string()))
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }
}

// ===== the budget =====

#[tokio::test(start_paused = true)]
async fn budget_bounds_retries_against_an_always_failing_upstream() {
    const REQUESTS: usize = 10_000;
    // 10% of requests, plus a floor of 10 a second over 10 s: 1,100 retries.
    let budget = RetryBudget::new(Duration::from_secs(10), 10, 0.1).unwrap();
    let upstream = Upstream::always(Err(std::io::ErrorKind::ConnectionReset));
    let svc = builder()
        .max_retries(3)
        .budget(budget.clone())
        .backoff_base(ms(1))
        .backoff_cap(ms(4))
        .build()
        .unwrap()
        .layer(upstream.clone());
    let start = Instant::now();
    let futures: Vec<_> = (0..REQUESTS)
        .map(|_| svc.clone().oneshot(RequestMeta::new()))
        .collect();
    let results = future::join_all(futures).await;
    assert!(results.iter().all(Result::is_err));
    assert!(
        Instant::now() - start < Duration::from_secs(1),
        "all inside one ttl"
    );

    let retries = upstream.count() - REQUESTS;
    let budgeted = 100 + REQUESTS / 10;
    assert!(retries <= budgeted, "{retries} retries, budget {budgeted}");
    assert!(retries >= budgeted - 1, "the budget was used: {retries}");
    assert!(retries < REQUESTS * 3, "far below the unbudgeted 30,000");
    assert_eq!(budget.available(), 0);
}

#[tokio::test(start_paused = true)]
async fn budget_is_shared_by_clones() {
    let budget = RetryBudget::new(Duration::from_secs(10), 0, 0.0).unwrap();
    let layer = builder().budget(budget.clone()).build().unwrap();
    assert!(layer.budget().ptr_eq(&budget));
    assert!(layer.clone().budget().ptr_eq(&budget));
    let svc = layer.layer(Upstream::always(Ok(Reply::ok())));
    assert!(svc.clone().budget().ptr_eq(&budget));
}

#[tokio::test(start_paused = true)]
async fn spent_budget_returns_the_last_result_at_once() {
    let budget = RetryBudget::new(Duration::from_secs(10), 0, 0.0).unwrap();
    let upstream = Upstream::always(Ok(Reply::status(503)));
    let mut svc = builder()
        .budget(budget)
        .build()
        .unwrap()
        .layer(upstream.clone());
    let start = Instant::now();
    assert_eq!(
        call(&mut svc, RequestMeta::new()).await.unwrap().status,
        503
    );
    assert_eq!(upstream.count(), 1);
    assert_eq!(Instant::now(), start);
}

// ===== readiness and release paths =====

#[tokio::test(start_paused = true)]
async fn retry_waits_for_the_inner_service_to_be_ready() {
    let (mock, mut handle) = tower_test::mock::pair::<RequestMeta, Reply>();
    let mut svc = builder()
        .jitter(Jitter::None)
        .backoff_base(ms(10))
        .build()
        .unwrap()
        .layer(mock);
    handle.allow(1);
    assert!(svc.ready().await.is_ok());
    let mut fut = tokio_test::task::spawn(svc.call(RequestMeta::new()));
    assert_pending!(fut.poll());
    let (_, send) = handle.next_request().await.unwrap();
    send.send_response(Reply::status(503));
    assert_pending!(fut.poll());
    tokio::time::advance(ms(10)).await;
    assert_pending!(fut.poll(), "inner not ready");
    assert!(handle.poll_request().is_pending());

    handle.allow(1);
    assert!(fut.is_woken());
    assert_pending!(fut.poll());
    let (_, send) = handle.next_request().await.unwrap();
    send.send_response(Reply::ok());
    assert_eq!(assert_ready!(fut.poll()).unwrap().status, 200);
}

#[tokio::test(start_paused = true)]
async fn inner_readiness_error_is_returned() {
    let (mock, mut handle) = tower_test::mock::pair::<RequestMeta, Reply>();
    let mut svc = builder().build().unwrap().layer(mock);
    handle.allow(1);
    assert!(svc.ready().await.is_ok());
    let mut fut = tokio_test::task::spawn(svc.call(RequestMeta::new()));
    assert_pending!(fut.poll());
    let (_, send) = handle.next_request().await.unwrap();
    send.send_response(Reply::status(503));
    assert_pending!(fut.poll(), "waiting out the backoff");
    handle.send_error("inner broke");
    tokio::time::advance(Duration::from_secs(10)).await;
    let err = assert_ready!(fut.poll()).unwrap_err();
    assert_eq!(err.to_string(), "inner broke");
}

/// An upstream whose attempts hold a guard until they are dropped.
#[derive(Clone)]
struct Held {
    guard: Arc<()>,
    fail_first: Arc<AtomicUsize>,
}

impl Service<RequestMeta> for Held {
    type Response = Reply;
    type Error = BoxError;
    type Future = futures::future::BoxFuture<'static, Result<Reply, BoxError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: RequestMeta) -> Self::Future {
        let guard = self.guard.clone();
        if self.fail_first.fetch_add(1, Ordering::SeqCst) == 0 {
            Box::pin(async move {
                drop(guard);
                Ok(Reply::status(503))
            })
        } else {
            Box::pin(async move {
                let _guard = guard;
                future::pending::<()>().await;
                unreachable!()
            })
        }
    }
}

#[tokio::test(start_paused = true)]
async fn response_future_drop_releases_the_attempt_in_flight() {
    let guard = Arc::new(());
    let held = Held {
        guard: guard.clone(),
        fail_first: Arc::new(AtomicUsize::new(1)),
    };
    let mut svc = builder().build().unwrap().layer(held);
    assert!(svc.ready().await.is_ok());
    let mut fut = tokio_test::task::spawn(svc.call(RequestMeta::new()));
    assert_pending!(fut.poll());
    // here, the service, its retry template, the attempt
    assert_eq!(Arc::strong_count(&guard), 4, "the attempt holds it");
    drop(fut);
    assert_eq!(Arc::strong_count(&guard), 3, "only the service's two");
}

#[tokio::test(start_paused = true)]
async fn response_future_drop_during_backoff_releases_everything() {
    let guard = Arc::new(());
    let held = Held {
        guard: guard.clone(),
        fail_first: Arc::new(AtomicUsize::new(0)),
    };
    let mut svc = builder().jitter(Jitter::None).build().unwrap().layer(held);
    assert!(svc.ready().await.is_ok());
    let mut fut = tokio_test::task::spawn(svc.call(RequestMeta::new()));
    assert_pending!(fut.poll(), "waiting out the backoff");
    // here, the service and its retry template: the failed attempt is gone
    // and the clone for the retry is made only when the wait is over
    assert_eq!(Arc::strong_count(&guard), 3);
    drop(fut);
    assert_eq!(Arc::strong_count(&guard), 3);
    tokio::time::advance(Duration::from_secs(10)).await;
    assert_eq!(Arc::strong_count(&guard), 3, "no attempt after the drop");
}

#[tokio::test(start_paused = true)]
async fn response_future_drop_during_a_retry_releases_its_clone_and_attempt() {
    let guard = Arc::new(());
    let held = Held {
        guard: guard.clone(),
        fail_first: Arc::new(AtomicUsize::new(0)),
    };
    let mut svc = builder().jitter(Jitter::None).build().unwrap().layer(held);
    assert!(svc.ready().await.is_ok());
    let mut fut = tokio_test::task::spawn(svc.call(RequestMeta::new()));
    assert_pending!(fut.poll(), "waiting out the backoff");
    tokio::time::advance(Duration::from_secs(10)).await;
    assert_pending!(fut.poll(), "the retry is in flight");
    // the service, its retry template, the future's clone for the retry,
    // and the retry in flight
    assert_eq!(Arc::strong_count(&guard), 5);
    drop(fut);
    assert_eq!(Arc::strong_count(&guard), 3, "only the service's two");
}

// ===== config =====

#[test]
fn invalid_settings_are_config_errors() {
    let field = |b: RetryLayerBuilder| b.build().unwrap_err().field();
    assert_eq!(
        field(RetryLayer::builder().backoff_base(Duration::ZERO)),
        "backoff_base"
    );
    assert_eq!(
        field(
            RetryLayer::builder()
                .backoff_base(ms(10))
                .backoff_cap(ms(5))
        ),
        "backoff_cap"
    );
    assert_eq!(
        field(RetryLayer::builder().max_server_delay(Duration::ZERO)),
        "max_server_delay"
    );
    assert_eq!(
        field(RetryLayer::builder().total_timeout(Duration::ZERO)),
        "total_timeout"
    );
    // Past the longest setting (31 days), each is refused under its own
    // name: a huge base is not a cap below the base.
    let days = |n: u64| Duration::from_secs(n * 24 * 3_600);
    assert_eq!(
        field(RetryLayer::builder().backoff_base(days(32))),
        "backoff_base"
    );
    assert_eq!(
        field(RetryLayer::builder().backoff_cap(days(32))),
        "backoff_cap"
    );
    assert_eq!(
        field(RetryLayer::builder().max_server_delay(Duration::MAX)),
        "max_server_delay"
    );
    assert_eq!(
        field(RetryLayer::builder().total_timeout(days(32))),
        "total_timeout"
    );
    assert!(RetryLayer::builder()
        .backoff_base(days(31))
        .backoff_cap(days(31))
        .max_server_delay(days(31))
        .total_timeout(days(31))
        .build()
        .is_ok());
    assert!(RetryLayer::builder().build().is_ok());
}

#[test]
fn layer_is_clone_and_debug() {
    let layer = RetryLayer::builder().build().unwrap();
    let text = format!("{:?}", layer.clone());
    assert!(text.contains("RetryLayer") && text.contains("max_retries"));
}

// ===== metrics =====

#[cfg(feature = "metrics")]
#[test]
fn metrics_count_attempts_retries_delays_and_exhaustion() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};

    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    metrics::with_local_recorder(&recorder, || {
        rt.block_on(async {
            let budget = RetryBudget::new(Duration::from_secs(10), 0, 2.0).unwrap();
            let upstream = Upstream::new([
                Ok(Reply::status(503)),
                Ok(Reply::status(429).after(ms(1_500))),
                Ok(Reply::status(503)),
            ]);
            let mut svc = builder()
                .max_retries(5)
                .budget(budget)
                .build()
                .unwrap()
                .layer(upstream.clone());
            // one deposit allows two retries: after the 503, after the 429
            // (its server delay), and the third result finds the budget spent
            let _ = call(&mut svc, RequestMeta::new()).await;
            assert_eq!(upstream.count(), 3);
        })
    });

    let snapshot = snapshotter.snapshot().into_vec();
    let find = |name: &str, label: Option<(&str, &str)>| {
        snapshot
            .iter()
            .find(|(key, ..)| {
                key.key().name() == name
                    && label.is_none_or(|(k, v)| {
                        key.key().labels().any(|l| l.key() == k && l.value() == v)
                    })
            })
            .map(|(.., value)| value)
    };
    assert!(matches!(
        find("llm_sluice_retry_attempts_total", None),
        Some(DebugValue::Counter(3))
    ));
    assert!(matches!(
        find("llm_sluice_retries_total", Some(("reason", "server_error"))),
        Some(DebugValue::Counter(1))
    ));
    assert!(matches!(
        find("llm_sluice_retries_total", Some(("reason", "rate_limited"))),
        Some(DebugValue::Counter(1))
    ));
    assert!(matches!(
        find("llm_sluice_retry_gave_up_total", Some(("reason", "budget"))),
        Some(DebugValue::Counter(1))
    ));
    match find("llm_sluice_retry_server_delay_seconds", None) {
        Some(DebugValue::Histogram(values)) => {
            assert_eq!(
                values.iter().map(|v| v.into_inner()).collect::<Vec<_>>(),
                [1.5]
            )
        }
        other => panic!("{other:?}"),
    }
}

// ===== invariants =====

mod invariants {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Whatever the server asks and whatever the deadline: no attempt
        /// before the server's delay has passed, none at or after the
        /// deadline, and no more than 1 + max_retries attempts.
        #[test]
        fn never_early_never_past_the_deadline(
            delays in proptest::collection::vec(proptest::option::of(1u64..3_000), 1..8),
            deadline_ms in proptest::option::of(1u64..8_000),
            max_retries in 0u32..6,
            seed: u64,
        ) {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .start_paused(true)
                .build()
                .unwrap();
            rt.block_on(async {
                let script: Vec<Step> = delays
                    .iter()
                    .map(|d| {
                        let reply = Reply::status(429);
                        Ok(match d { Some(d) => reply.after(ms(*d)), None => reply })
                    })
                    .collect();
                let upstream = Upstream::new(script);
                let mut svc = RetryLayer::builder()
                    .seed(seed)
                    .max_retries(max_retries)
                    .budget(RetryBudget::new(Duration::from_secs(10), 1_000, 0.0).unwrap())
                    .build()
                    .unwrap()
                    .layer(upstream.clone());
                let start = Instant::now();
                let mut req = RequestMeta::new();
                if let Some(d) = deadline_ms {
                    req = req.deadline(start + ms(d));
                }
                let reply = call(&mut svc, req).await.unwrap();
                let times = upstream.times();
                prop_assert!(times.len() <= 1 + max_retries as usize);
                prop_assert_eq!(reply.status, 429);
                for (n, gap) in gaps(&times).into_iter().enumerate() {
                    // the step that preceded this attempt
                    let asked = delays[n.min(delays.len() - 1)];
                    if let Some(asked) = asked {
                        prop_assert_eq!(gap, ms(asked), "server delay honoured exactly");
                    } else {
                        prop_assert!(gap <= Backoff::default().ceiling(n as u32) + ms(1));
                    }
                }
                if let Some(d) = deadline_ms {
                    for t in &times {
                        prop_assert!(*t < start + ms(d), "an attempt at or after the deadline");
                    }
                    prop_assert!(Instant::now() < start + ms(d), "slept past the deadline");
                }
                Ok(())
            })?;
        }
    }
}

// ===== end to end with the HTTP classifier (status and headers) =====

#[cfg(feature = "http")]
mod http_headers {
    use super::*;
    use bytes::Bytes;
    use http_body_util::Full;
    use llm_sluice::classify::ErrorBodyLayer;

    type Script = Arc<Mutex<VecDeque<http::Response<Full<Bytes>>>>>;

    fn response(
        status: u16,
        headers: &[(&str, String)],
        body: &'static str,
    ) -> http::Response<Full<Bytes>> {
        let mut builder = http::Response::builder().status(status);
        for (name, value) in headers {
            builder = builder.header(*name, value.as_str());
        }
        builder
            .body(Full::new(Bytes::from_static(body.as_bytes())))
            .unwrap()
    }

    /// An HTTP upstream answering from a script and recording attempt times.
    type Times = Arc<Mutex<Vec<Instant>>>;

    fn upstream(
        script: Vec<http::Response<Full<Bytes>>>,
    ) -> (
        impl Service<http::Request<String>, Response = http::Response<Full<Bytes>>, Error = BoxError>
            + Clone,
        Times,
    ) {
        let script: Script = Arc::new(Mutex::new(script.into()));
        let times = Arc::new(Mutex::new(Vec::new()));
        let recorded = times.clone();
        let svc = tower::service_fn(move |_req: http::Request<String>| {
            recorded.lock().unwrap().push(Instant::now());
            let next = script.lock().unwrap().pop_front();
            async move { next.ok_or_else(|| BoxError::from("script ran out")) }
        });
        (svc, times)
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_ms_and_seconds_are_honoured_exactly() {
        let (svc, times) = upstream(vec![
            response(429, &[("retry-after-ms", "1250".into())], ""),
            response(503, &[("retry-after", "2".into())], ""),
            response(200, &[], "{}"),
        ]);
        let mut svc = builder().max_retries(3).build().unwrap().layer(svc);
        let res = svc
            .ready()
            .await
            .unwrap()
            .call(http::Request::new(String::new()))
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(
            gaps(&times.lock().unwrap()),
            [ms(1_250), Duration::from_secs(2)]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_http_date_is_never_early() {
        // The HTTP-date is read against the wall clock; whole seconds.
        let at = std::time::SystemTime::now() + Duration::from_secs(3);
        let (svc, times) = upstream(vec![
            response(503, &[("retry-after", httpdate::fmt_http_date(at))], ""),
            response(200, &[], "{}"),
        ]);
        let mut svc = builder().build().unwrap().layer(svc);
        let res = svc
            .ready()
            .await
            .unwrap()
            .call(http::Request::new(String::new()))
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        let gap = gaps(&times.lock().unwrap())[0];
        // fmt_http_date truncates to the second: between 2 and 3 seconds,
        // never the sub-second computed backoff.
        assert!(
            gap > Duration::from_secs(1) && gap <= Duration::from_secs(3),
            "{gap:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn server_delay_over_the_cap_returns_the_response() {
        let (svc, times) = upstream(vec![response(429, &[("retry-after", "120".into())], "")]);
        let mut svc = builder().build().unwrap().layer(svc);
        let res = svc
            .ready()
            .await
            .unwrap()
            .call(http::Request::new(String::new()))
            .await
            .unwrap();
        assert_eq!(res.status(), 429);
        assert_eq!(res.headers()["retry-after"], "120", "as the server sent it");
        assert_eq!(times.lock().unwrap().len(), 1);
    }

    /// `retry-after: 1e20` is more seconds than a `Duration` holds. It used
    /// to read as no delay at all, so the 429 was retried at once on the
    /// computed backoff; saturated to `Duration::MAX`, it is above the cap
    /// and, by default, returned as it is, with the delay it asked for.
    #[cfg(feature = "metrics")]
    #[test]
    fn a_delay_too_large_to_represent_is_over_the_cap_not_no_delay() {
        use llm_sluice::classify::http::classify_response;
        use metrics_util::debugging::{DebugValue, DebuggingRecorder};

        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        metrics::with_local_recorder(&recorder, || {
            rt.block_on(async {
                let forever = || response(429, &[("retry-after", "1e20".into())], "");
                let (svc, times) = upstream((0..5).map(|_| forever()).collect());
                let mut svc = builder().max_retries(4).build().unwrap().layer(svc);
                let start = Instant::now();
                let res = svc
                    .ready()
                    .await
                    .unwrap()
                    .call(http::Request::new(String::new()))
                    .await
                    .unwrap();
                assert_eq!(res.status(), 429);
                assert_eq!(times.lock().unwrap().len(), 1, "not retried");
                assert_eq!(Instant::now(), start, "returned at once");
                let class = classify_response(&res, std::time::SystemTime::now());
                assert_eq!(
                    class.retry_after,
                    Some(Duration::MAX),
                    "the delay it asked for"
                );
            })
        });
        let snapshot = snapshotter.snapshot().into_vec();
        let gave_up = |reason: &str| {
            snapshot.iter().find_map(|(key, _, _, value)| {
                (key.key().name() == "llm_sluice_retry_gave_up_total"
                    && key
                        .key()
                        .labels()
                        .any(|l| l.key() == "reason" && l.value() == reason))
                .then_some(value)
            })
        };
        assert_eq!(gave_up("over_cap"), Some(&DebugValue::Counter(1)));
    }

    #[tokio::test(start_paused = true)]
    async fn x_should_retry_header_overrides() {
        let (svc, times) = upstream(vec![response(
            500,
            &[("x-should-retry", "false".into())],
            "",
        )]);
        let mut svc = builder().build().unwrap().layer(svc);
        let res = svc
            .ready()
            .await
            .unwrap()
            .call(http::Request::new(String::new()))
            .await
            .unwrap();
        assert_eq!(res.status(), 500);
        assert_eq!(times.lock().unwrap().len(), 1);

        let (svc, times) = upstream(vec![
            response(400, &[("x-should-retry", "true".into())], ""),
            response(200, &[], "{}"),
        ]);
        let mut svc = builder().build().unwrap().layer(svc);
        let res = svc
            .ready()
            .await
            .unwrap()
            .call(http::Request::new(String::new()))
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(times.lock().unwrap().len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn quota_429_body_is_not_retried_behind_the_error_body_layer() {
        const QUOTA: &str = r#"{"error":{"message":"You exceeded your current quota","type":"insufficient_quota","code":"insufficient_quota"}}"#;
        const BUSY: &str = r#"{"error":{"message":"Rate limit reached","type":"requests","code":"rate_limit_exceeded"}}"#;

        let (svc, times) = upstream(vec![response(429, &[], QUOTA)]);
        let mut svc = builder()
            .build()
            .unwrap()
            .layer(ErrorBodyLayer::new().layer(svc));
        let res = svc
            .ready()
            .await
            .unwrap()
            .call(http::Request::new(String::new()))
            .await
            .unwrap();
        assert_eq!(res.status(), 429);
        assert_eq!(
            times.lock().unwrap().len(),
            1,
            "a spent quota is not retried"
        );

        let (svc, times) = upstream(vec![response(429, &[], BUSY), response(200, &[], "{}")]);
        let mut svc = builder()
            .build()
            .unwrap()
            .layer(ErrorBodyLayer::new().layer(svc));
        let res = svc
            .ready()
            .await
            .unwrap()
            .call(http::Request::new(String::new()))
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(times.lock().unwrap().len(), 2, "back-pressure is retried");
    }
}

// ===== the clock read on the first attempt =====

#[tokio::test(start_paused = true)]
async fn deposit_is_dated_at_the_requests_arrival() {
    let start = Instant::now();
    let budget = RetryBudget::new(Duration::from_secs(10), 0, 1.0).unwrap();
    let mut svc = builder()
        .budget(budget.clone())
        .build()
        .unwrap()
        .layer(tower::service_fn(|_: RequestMeta| {
            future::ready(Ok::<_, BoxError>(Reply::status(200)))
        }));
    tokio::time::advance(Duration::from_secs(30)).await;

    // Dated by a layer outside 30 s ago, older than the budget's ttl: the
    // deposit lands in a slot that has expired, and no clock was needed.
    let stale = RequestMeta {
        arrival: Some(start),
        ..RequestMeta::new()
    };
    call(&mut svc, stale).await.unwrap();
    assert_eq!(budget.available(), 0);

    // Without an arrival the layer reads the clock and the deposit counts.
    call(&mut svc, RequestMeta::new()).await.unwrap();
    assert_eq!(budget.available(), 1);
}
