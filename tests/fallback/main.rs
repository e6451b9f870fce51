//! The fallback layer: when it falls back, what it sends, who answered.

use std::future::Ready;
use std::time::Duration;

use llm_sluice::classify::{classify_error, Classification, ErrorRef, LlmResponse, Outcome};
use llm_sluice::fallback::{FallbackLayer, FallbackReason, RecordServedBy, ServedBy};
use llm_sluice::request::{Annotated, RequestMeta};
use llm_sluice::timeout::TimeoutLayer;
use llm_sluice::{Error, TimeoutKind};
use tokio::time::{advance, Instant};
use tokio_test::{assert_pending, assert_ready, assert_ready_ok, task};
use tower::{BoxError, Layer, Service, ServiceBuilder, ServiceExt};
use tower_test::{assert_request_eq, mock};

/// A typed completion that says what it means and records who served it.
#[derive(Debug, Clone, PartialEq)]
struct Completion {
    status: u16,
    text: &'static str,
    served_by: Option<ServedBy>,
}

fn completion(status: u16, text: &'static str) -> Completion {
    Completion {
        status,
        text,
        served_by: None,
    }
}

impl LlmResponse for Completion {
    fn classification(&self) -> Classification {
        let outcome = match self.status {
            200 => Outcome::Success,
            429 => Outcome::RateLimited {
                quota_exhausted: self.text == "insufficient_quota",
            },
            529 => Outcome::Overloaded,
            500..=599 => Outcome::ServerError,
            _ => Outcome::ClientError,
        };
        Classification::new(outcome).with_status(self.status)
    }
}

// complete on arrival: no body to time or to hold a permit for
impl llm_sluice::hold::Complete for Completion {}

impl RecordServedBy for Completion {
    fn served_by(&self) -> Option<ServedBy> {
        self.served_by
    }
    fn set_served_by(&mut self, by: ServedBy) {
        self.served_by = Some(by);
    }
}

/// A request naming its model.
type Chat = Annotated<&'static str>;

fn chat(model: &'static str) -> Chat {
    Annotated::new(model, RequestMeta::new())
}

type Handle = mock::Handle<Chat, Completion>;

fn kind(err: &BoxError) -> Option<&Error> {
    err.downcast_ref::<Error>()
}

fn circuit_open() -> Error {
    Error::CircuitOpen {
        retry_after: Duration::from_secs(5),
    }
}

/// A fallback over two mocks, with the secondary named "backup".
fn two_mocks() -> (
    impl Service<Chat, Response = Completion, Error = BoxError, Future: Send> + Clone,
    Handle,
    Handle,
) {
    let (primary, primary_handle) = mock::pair::<Chat, Completion>();
    let (secondary, secondary_handle) = mock::pair::<Chat, Completion>();
    let layer = FallbackLayer::builder(secondary)
        .name("backup")
        .build()
        .unwrap();
    (layer.layer(primary), primary_handle, secondary_handle)
}

#[tokio::test]
async fn falls_back_on_open_circuit() {
    let (mut svc, mut primary, mut secondary) = two_mocks();
    let mut fut = task::spawn(svc.ready().await.unwrap().call(chat("main")));
    assert_request_eq!(primary, chat("main")).send_error(circuit_open());
    assert_pending!(fut.poll());
    assert_request_eq!(secondary, chat("main")).send_response(completion(200, "hi"));
    let response = assert_ready_ok!(fut.poll());
    assert_eq!(response.text, "hi");
    assert_eq!(response.served_by, Some(ServedBy::new("backup")));
}

#[tokio::test]
async fn falls_back_on_local_overload() {
    let (mut svc, mut primary, mut secondary) = two_mocks();
    let mut fut = task::spawn(svc.ready().await.unwrap().call(chat("main")));
    assert_request_eq!(primary, chat("main")).send_error(Error::Overloaded { queued: 10 });
    assert_pending!(fut.poll());
    assert_request_eq!(secondary, chat("main")).send_response(completion(200, "hi"));
    assert_eq!(assert_ready_ok!(fut.poll()).text, "hi");
}

#[tokio::test]
async fn falls_back_on_a_final_503_and_529() {
    for status in [503, 529] {
        let (mut svc, mut primary, mut secondary) = two_mocks();
        let mut fut = task::spawn(svc.ready().await.unwrap().call(chat("main")));
        assert_request_eq!(primary, chat("main")).send_response(completion(status, "down"));
        assert_pending!(fut.poll());
        assert_request_eq!(secondary, chat("main")).send_response(completion(200, "up"));
        let response = assert_ready_ok!(fut.poll());
        assert_eq!(response.text, "up");
        assert_eq!(response.served_by.unwrap().name(), "backup");
    }
}

#[tokio::test]
async fn does_not_fall_back_on_success_or_client_errors() {
    for (status, text) in [(200, "fine"), (400, "bad request"), (429, "slow down")] {
        let (mut svc, mut primary, mut secondary) = two_mocks();
        let mut fut = task::spawn(svc.ready().await.unwrap().call(chat("main")));
        assert_request_eq!(primary, chat("main")).send_response(completion(status, text));
        let response = assert_ready_ok!(fut.poll());
        assert_eq!(response, completion(status, text), "returned as it was");
        assert!(
            matches!(secondary.poll_request(), std::task::Poll::Pending),
            "secondary never called for {status}"
        );
    }
}

#[tokio::test]
async fn does_not_fall_back_on_a_deadline_timeout() {
    let (mut svc, mut primary, mut secondary) = two_mocks();
    let mut fut = task::spawn(svc.ready().await.unwrap().call(chat("main")));
    assert_request_eq!(primary, chat("main")).send_error(Error::Timeout {
        kind: TimeoutKind::Total,
    });
    let err = assert_ready!(fut.poll()).unwrap_err();
    assert_eq!(
        kind(&err),
        Some(&Error::Timeout {
            kind: TimeoutKind::Total
        })
    );
    assert!(matches!(secondary.poll_request(), std::task::Poll::Pending));
}

#[tokio::test(start_paused = true)]
async fn does_not_fall_back_once_the_request_deadline_passed() {
    let (mut svc, mut primary, mut secondary) = two_mocks();
    let deadline = Instant::now() + Duration::from_secs(1);
    let req = Annotated::new("main", RequestMeta::new().deadline(deadline));
    let mut fut = task::spawn(svc.ready().await.unwrap().call(req));
    let (_, send) = primary.next_request().await.unwrap();
    advance(Duration::from_secs(2)).await;
    send.send_error(circuit_open());
    let err = assert_ready!(fut.poll()).unwrap_err();
    assert_eq!(kind(&err), Some(&circuit_open()), "the primary's error");
    assert!(matches!(secondary.poll_request(), std::task::Poll::Pending));
}

#[tokio::test]
async fn rewrite_is_applied_to_the_secondary_request_only() {
    let (primary, mut primary_handle) = mock::pair::<Chat, Completion>();
    let (secondary, mut secondary_handle) = mock::pair::<Chat, Completion>();
    let layer = FallbackLayer::builder(secondary)
        .rewrite(|mut req: Chat| {
            req.request = "small-model";
            req
        })
        .build()
        .unwrap();
    let mut svc = layer.layer(primary);
    let mut fut = task::spawn(svc.ready().await.unwrap().call(chat("big-model")));
    assert_request_eq!(primary_handle, chat("big-model")).send_error(circuit_open());
    assert_pending!(fut.poll());
    assert_request_eq!(secondary_handle, chat("small-model")).send_response(completion(200, "ok"));
    assert_eq!(
        assert_ready_ok!(fut.poll()).served_by,
        Some(ServedBy::new("fallback"))
    );
}

#[tokio::test]
async fn secondary_errors_keep_their_typed_reason() {
    let (mut svc, mut primary, mut secondary) = two_mocks();
    let mut fut = task::spawn(svc.ready().await.unwrap().call(chat("main")));
    assert_request_eq!(primary, chat("main")).send_error(circuit_open());
    assert_pending!(fut.poll());
    assert_request_eq!(secondary, chat("main")).send_error(Error::Overloaded { queued: 2 });
    let err = assert_ready!(fut.poll()).unwrap_err();
    assert_eq!(kind(&err), Some(&Error::Overloaded { queued: 2 }));
}

#[tokio::test]
async fn poll_ready_waits_for_the_primary_only() {
    let (mut svc, mut primary, mut secondary) = two_mocks();
    secondary.allow(0);
    let mut svc_task = task::spawn(());
    svc_task.enter(|cx, _| assert!(svc.poll_ready(cx).is_ready()));

    // a fallback then waits for the secondary to become ready
    let mut fut = task::spawn(svc.call(chat("main")));
    assert_request_eq!(primary, chat("main")).send_error(circuit_open());
    assert_pending!(fut.poll());
    secondary.allow(1);
    assert!(fut.is_woken());
    assert_pending!(fut.poll());
    assert_request_eq!(secondary, chat("main")).send_response(completion(200, "ok"));
    assert_ready_ok!(fut.poll());

    primary.allow(0);
    svc_task.enter(|cx, _| assert!(svc.poll_ready(cx).is_pending()));
}

#[tokio::test]
async fn rate_limits_fall_back_only_when_enabled() {
    let (primary, mut primary_handle) = mock::pair::<Chat, Completion>();
    let (secondary, mut secondary_handle) = mock::pair::<Chat, Completion>();
    let layer = FallbackLayer::builder(secondary)
        .on_rate_limited(true)
        .build()
        .unwrap();
    let mut svc = layer.layer(primary);

    // a 429 falls back
    let mut fut = task::spawn(svc.ready().await.unwrap().call(chat("a")));
    assert_request_eq!(primary_handle, chat("a")).send_response(completion(429, "slow down"));
    assert_pending!(fut.poll());
    assert_request_eq!(secondary_handle, chat("a")).send_response(completion(200, "ok"));
    assert_ready_ok!(fut.poll());

    // an exhausted quota does not (not enabled)
    let mut fut = task::spawn(svc.ready().await.unwrap().call(chat("b")));
    assert_request_eq!(primary_handle, chat("b"))
        .send_response(completion(429, "insufficient_quota"));
    assert_eq!(assert_ready_ok!(fut.poll()).status, 429);

    // a local rate limit falls back
    let mut fut = task::spawn(svc.ready().await.unwrap().call(chat("c")));
    assert_request_eq!(primary_handle, chat("c"))
        .send_error(Error::RateLimited { retry_after: None });
    assert_pending!(fut.poll());
    assert_request_eq!(secondary_handle, chat("c")).send_response(completion(200, "ok"));
    assert_ready_ok!(fut.poll());
}

#[tokio::test]
async fn custom_policy_decides() {
    let (primary, mut primary_handle) = mock::pair::<Chat, Completion>();
    let (secondary, mut secondary_handle) = mock::pair::<Chat, Completion>();
    // fall back on anything but a 200
    let layer = FallbackLayer::builder(secondary)
        .policy(|result: Result<&Completion, ErrorRef<'_>>| match result {
            Ok(c) if c.status == 200 => None,
            _ => Some(FallbackReason::Other),
        })
        .build()
        .unwrap();
    let mut svc = layer.layer(primary);
    let mut fut = task::spawn(svc.ready().await.unwrap().call(chat("a")));
    assert_request_eq!(primary_handle, chat("a")).send_response(completion(400, "bad"));
    assert_pending!(fut.poll());
    assert_request_eq!(secondary_handle, chat("a")).send_response(completion(200, "ok"));
    assert_eq!(assert_ready_ok!(fut.poll()).text, "ok");
}

#[test]
fn builder_rejects_an_empty_name() {
    let (secondary, _h) = mock::pair::<Chat, Completion>();
    let err = FallbackLayer::builder(secondary)
        .name("")
        .build()
        .unwrap_err();
    assert_eq!(err.field(), "name");
}

// ---- http responses ---------------------------------------------------------

#[tokio::test]
async fn http_503_falls_back_and_marks_the_response() {
    type Res = http::Response<&'static str>;
    let status_classifier = |result: Result<&Res, ErrorRef<'_>>| match result {
        Ok(res) if res.status().is_server_error() => {
            Classification::new(Outcome::ServerError).with_status(res.status().as_u16())
        }
        Ok(res) if res.status().is_client_error() => {
            Classification::new(Outcome::ClientError).with_status(res.status().as_u16())
        }
        Ok(_) => Classification::success(None),
        Err(err) => classify_error(err),
    };
    let with_status = |status: u16, body: &'static str| {
        let mut res = http::Response::new(body);
        *res.status_mut() = http::StatusCode::from_u16(status).unwrap();
        res
    };
    let (primary, mut primary_handle) = mock::pair::<RequestMeta, Res>();
    let (secondary, mut secondary_handle) = mock::pair::<RequestMeta, Res>();
    let mut svc = FallbackLayer::builder(secondary)
        .classifier(status_classifier)
        .name("backup")
        .build()
        .unwrap()
        .layer(primary);

    let mut fut = task::spawn(svc.ready().await.unwrap().call(RequestMeta::new()));
    assert_request_eq!(primary_handle, RequestMeta::new()).send_response(with_status(503, "x"));
    assert_pending!(fut.poll());
    assert_request_eq!(secondary_handle, RequestMeta::new()).send_response(with_status(200, "ok"));
    let response = assert_ready_ok!(fut.poll());
    assert_eq!(*response.body(), "ok");
    assert_eq!(
        response.extensions().get::<ServedBy>(),
        Some(&ServedBy::new("backup"))
    );

    // a 400 is the caller's fault: returned, no marker
    let mut fut = task::spawn(svc.ready().await.unwrap().call(RequestMeta::new()));
    assert_request_eq!(primary_handle, RequestMeta::new()).send_response(with_status(400, "bad"));
    let response = assert_ready_ok!(fut.poll());
    assert_eq!(response.status(), 400);
    assert_eq!(response.served_by(), None);
}

// ---- chains -----------------------------------------------------------------

/// A service that answers with `status`, naming itself in the text.
fn answering(
    name: &'static str,
    status: u16,
) -> impl Service<Chat, Response = Completion, Error = BoxError, Future: Send> + Clone {
    tower::service_fn(move |_req: Chat| async move { Ok(completion(status, name)) })
}

/// A service that always fails with an open circuit.
fn open() -> impl Service<Chat, Response = Completion, Error = BoxError, Future: Send> + Clone {
    tower::service_fn(|_req: Chat| async { Err(BoxError::from(circuit_open())) })
}

fn named<T>(secondary: T, name: &'static str) -> FallbackLayer<T> {
    FallbackLayer::builder(secondary)
        .name(name)
        .build()
        .unwrap()
}

#[tokio::test]
async fn chain_of_three_nested_outwards() {
    // Fallback(Fallback(A, B), C)
    let chain = |a, b, c| {
        ServiceBuilder::new()
            .layer(named(answering("c", c), "c"))
            .layer(named(answering("b", b), "b"))
            .service(answering("a", a))
    };
    let served = |res: Completion| (res.text, res.served_by.map(|s| s.name()));
    let r = chain(200, 200, 200).oneshot(chat("m")).await.unwrap();
    assert_eq!(served(r), ("a", None));
    let r = chain(503, 200, 200).oneshot(chat("m")).await.unwrap();
    assert_eq!(served(r), ("b", Some("b")));
    let r = chain(503, 500, 200).oneshot(chat("m")).await.unwrap();
    assert_eq!(served(r), ("c", Some("c")));
    let r = chain(503, 500, 502).oneshot(chat("m")).await.unwrap();
    assert_eq!(
        (r.status, served(r.clone())),
        (502, ("c", Some("c"))),
        "the last service's result is returned as it is"
    );
}

#[tokio::test]
async fn chain_of_three_nested_inwards() {
    // Fallback(A, Fallback(B, C))
    let chain = |a, b, c| {
        let b_then_c = named(answering("c", c), "c").layer(answering("b", b));
        named(b_then_c, "b").layer(answering("a", a))
    };
    let served = |res: Completion| (res.text, res.served_by.map(|s| s.name()));
    let r = chain(200, 200, 200).oneshot(chat("m")).await.unwrap();
    assert_eq!(served(r), ("a", None));
    let r = chain(503, 200, 200).oneshot(chat("m")).await.unwrap();
    assert_eq!(served(r), ("b", Some("b")));
    let r = chain(503, 500, 200).oneshot(chat("m")).await.unwrap();
    assert_eq!(served(r), ("c", Some("c")), "the inner marker is kept");
}

#[tokio::test]
async fn chain_error_path_keeps_the_typed_reason() {
    let svc = ServiceBuilder::new()
        .layer(named(open(), "c"))
        .layer(named(open(), "b"))
        .service(open());
    let err = svc.oneshot(chat("m")).await.unwrap_err();
    assert_eq!(kind(&err), Some(&circuit_open()));
}

// ---- with retries and timeouts ------------------------------------------------

/// tower's retry with a fixed number of attempts on 5xx.
#[derive(Clone)]
struct Attempts(usize);

impl tower::retry::Policy<Chat, Completion, BoxError> for Attempts {
    type Future = Ready<()>;

    fn retry(
        &mut self,
        _req: &mut Chat,
        result: &mut Result<Completion, BoxError>,
    ) -> Option<Self::Future> {
        let failed = match result {
            Ok(res) => res.status >= 500,
            Err(_) => true,
        };
        if failed && self.0 > 1 {
            self.0 -= 1;
            Some(std::future::ready(()))
        } else {
            None
        }
    }

    fn clone_request(&mut self, req: &Chat) -> Option<Chat> {
        Some(req.clone())
    }
}

#[tokio::test]
async fn falls_back_on_exhausted_retries() {
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = calls.clone();
    let primary = tower::service_fn(move |_req: Chat| {
        counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        async { Ok::<_, BoxError>(completion(503, "primary")) }
    });
    let svc = ServiceBuilder::new()
        .layer(named(answering("secondary", 200), "secondary"))
        .layer(tower::retry::RetryLayer::new(Attempts(3)))
        .service(primary);
    let response = svc.oneshot(chat("m")).await.unwrap();
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 3);
    assert_eq!(response.text, "secondary");
    assert_eq!(response.served_by.unwrap().name(), "secondary");
}

#[tokio::test(start_paused = true)]
async fn falls_back_on_an_attempt_timeout() {
    let slow = tower::service_fn(|_req: Chat| async {
        tokio::time::sleep(Duration::from_secs(600)).await;
        Ok::<_, BoxError>(completion(200, "slow"))
    });
    let svc = ServiceBuilder::new()
        .layer(named(answering("fast", 200), "fast"))
        .layer(
            TimeoutLayer::builder()
                .attempt(Duration::from_secs(10))
                .build()
                .unwrap(),
        )
        .service(slow);
    let start = Instant::now();
    let response = svc.oneshot(chat("m")).await.unwrap();
    assert_eq!(response.text, "fast");
    assert_eq!(start.elapsed(), Duration::from_secs(10));
}

#[tokio::test(start_paused = true)]
async fn typed_reasons_survive_the_whole_stack() {
    use llm_sluice::timeout::DeadlineLayer;

    let attempt = || {
        TimeoutLayer::builder()
            .attempt(Duration::from_secs(10))
            .build()
            .unwrap()
    };
    let never = || {
        tower::service_fn(|_req: Chat| async {
            std::future::pending::<()>().await;
            Ok::<_, BoxError>(completion(200, "never"))
        })
    };

    // deadline → fallback → timeout → open circuit; the secondary is shed
    let secondary = ServiceBuilder::new()
        .layer(attempt())
        .service(tower::service_fn(|_req: Chat| async {
            Err::<Completion, _>(BoxError::from(Error::Overloaded { queued: 4 }))
        }));
    let svc = ServiceBuilder::new()
        .layer(DeadlineLayer::new(Duration::from_secs(30)))
        .layer(named(secondary, "backup"))
        .layer(attempt())
        .service(open());
    let err = svc.oneshot(chat("m")).await.unwrap_err();
    assert_eq!(kind(&err), Some(&Error::Overloaded { queued: 4 }));

    // both attempts time out at 10s each: the secondary's attempt timeout
    let svc = ServiceBuilder::new()
        .layer(DeadlineLayer::new(Duration::from_secs(30)))
        .layer(named(
            ServiceBuilder::new().layer(attempt()).service(never()),
            "backup",
        ))
        .layer(attempt())
        .service(never());
    let start = Instant::now();
    let err = svc.oneshot(chat("m")).await.unwrap_err();
    assert_eq!(
        kind(&err),
        Some(&Error::Timeout {
            kind: TimeoutKind::Attempt
        })
    );
    assert_eq!(start.elapsed(), Duration::from_secs(20));

    // a 15s deadline cuts the secondary's attempt short: Total, at 15s
    let svc = ServiceBuilder::new()
        .layer(DeadlineLayer::new(Duration::from_secs(15)))
        .layer(named(
            ServiceBuilder::new().layer(attempt()).service(never()),
            "backup",
        ))
        .layer(attempt())
        .service(never());
    let start = Instant::now();
    let err = svc.oneshot(chat("m")).await.unwrap_err();
    assert_eq!(
        kind(&err),
        Some(&Error::Timeout {
            kind: TimeoutKind::Total
        })
    );
    assert_eq!(start.elapsed(), Duration::from_secs(15));
}

// ---- metrics ----------------------------------------------------------------

#[test]
fn fallbacks_are_counted_by_reason() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};

    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let svc = named(answering("b", 200), "b").layer(open());
        rt.block_on(async {
            for _ in 0..2 {
                svc.clone().oneshot(chat("m")).await.unwrap();
            }
        });
    });
    let count = |reason: &str| {
        snapshotter
            .snapshot()
            .into_vec()
            .into_iter()
            .find_map(|(key, _, _, value)| {
                let k = key.key();
                let hit = k.name() == "llm_sluice_fallbacks_total"
                    && k.labels()
                        .any(|l| l.key() == "reason" && l.value() == reason);
                match value {
                    DebugValue::Counter(n) if hit => Some(n),
                    _ => None,
                }
            })
    };
    assert_eq!(count("circuit_open"), Some(2));
}
