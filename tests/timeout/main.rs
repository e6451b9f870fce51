//! The timeout and deadline layers, on paused time.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use llm_sluice::hold::GuardedBody;
use llm_sluice::request::RequestMeta;
use llm_sluice::timeout::{DeadlineLayer, TimeoutBody, TimeoutLayer};
use llm_sluice::{Error, TimeoutKind};
use tokio::sync::mpsc;
use tokio::time::{advance, Instant};
use tokio_test::{assert_pending, assert_ready, assert_ready_ok, task};
use tower::{BoxError, Layer, Service, ServiceExt};
use tower_test::{assert_request_eq, mock};

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn timeout_kind(err: &BoxError) -> Option<TimeoutKind> {
    match err.downcast_ref::<Error>() {
        Some(Error::Timeout { kind }) => Some(*kind),
        _ => None,
    }
}

/// A streamed body fed from a channel, like a server-sent event stream.
struct ChanBody {
    rx: mpsc::UnboundedReceiver<Result<Bytes, std::io::Error>>,
}

impl Body for ChanBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        self.rx
            .poll_recv(cx)
            .map(|chunk| chunk.map(|r| r.map(Frame::data)))
    }
}

type Tx = mpsc::UnboundedSender<Result<Bytes, std::io::Error>>;

fn chan_body() -> (Tx, ChanBody) {
    let (tx, rx) = mpsc::unbounded_channel();
    (tx, ChanBody { rx })
}

fn chunk(tx: &Tx, text: &'static str) {
    tx.send(Ok(Bytes::from_static(text.as_bytes()))).unwrap();
}

/// One poll of a body for its next frame.
type Polled<B> = Poll<Option<Result<Frame<<B as Body>::Data>, <B as Body>::Error>>>;

/// Polls the next frame of `body` once, as a reader would.
fn poll_frame<B: Body + Unpin>(body: &mut B) -> Polled<B> {
    let mut t = task::spawn(body.frame());
    t.poll()
}

fn body_error_kind<B>(polled: Poll<Option<Result<Frame<B>, BoxError>>>) -> Option<TimeoutKind> {
    match polled {
        Poll::Ready(Some(Err(err))) => timeout_kind(&err),
        _ => None,
    }
}

// ---- attempt timeouts -------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn attempt_timeout_fires_at_its_time_and_not_before() {
    let layer = TimeoutLayer::builder().attempt(secs(10)).build().unwrap();
    let (mut svc, mut handle) = mock::spawn_layer::<RequestMeta, &'static str, _>(layer);
    assert_ready_ok!(svc.poll_ready());
    let mut fut = task::spawn(svc.call(RequestMeta::new()));
    let _req = handle.next_request().await.unwrap();

    advance(Duration::from_millis(9_999)).await;
    assert_pending!(fut.poll());
    advance(Duration::from_millis(1)).await;
    let err = assert_ready!(fut.poll()).unwrap_err();
    assert_eq!(timeout_kind(&err), Some(TimeoutKind::Attempt));
}

#[tokio::test(start_paused = true)]
async fn response_in_time_passes_through() {
    let layer = TimeoutLayer::builder().attempt(secs(10)).build().unwrap();
    let (mut svc, mut handle) = mock::spawn_layer::<RequestMeta, &'static str, _>(layer);
    assert_ready_ok!(svc.poll_ready());
    let mut fut = task::spawn(svc.call(RequestMeta::new().tokens(7)));
    advance(secs(9)).await;
    assert_request_eq!(handle, RequestMeta::new().tokens(7)).send_response("ok");
    assert_eq!(assert_ready_ok!(fut.poll()), "ok");
}

#[tokio::test(start_paused = true)]
async fn inner_errors_pass_through_typed() {
    let layer = TimeoutLayer::builder().attempt(secs(10)).build().unwrap();
    let (mut svc, mut handle) = mock::spawn_layer::<RequestMeta, &'static str, _>(layer);
    assert_ready_ok!(svc.poll_ready());
    let mut fut = task::spawn(svc.call(RequestMeta::new()));
    let (_, send) = handle.next_request().await.unwrap();
    send.send_error(Error::Overloaded { queued: 3 });
    let err = assert_ready!(fut.poll()).unwrap_err();
    assert_eq!(
        err.downcast_ref::<Error>(),
        Some(&Error::Overloaded { queued: 3 })
    );
}

#[tokio::test(start_paused = true)]
async fn request_deadline_bounds_the_attempt_as_total() {
    let layer = TimeoutLayer::builder().attempt(secs(10)).build().unwrap();
    let (mut svc, mut handle) = mock::spawn_layer::<RequestMeta, &'static str, _>(layer);
    assert_ready_ok!(svc.poll_ready());
    let deadline = Instant::now() + secs(3);
    let mut fut = task::spawn(svc.call(RequestMeta::new().deadline(deadline)));
    let _req = handle.next_request().await.unwrap();

    advance(Duration::from_millis(2_999)).await;
    assert_pending!(fut.poll());
    advance(Duration::from_millis(1)).await;
    let err = assert_ready!(fut.poll()).unwrap_err();
    assert_eq!(timeout_kind(&err), Some(TimeoutKind::Total));
    let c = llm_sluice::classify::classify_error(&*err);
    assert!(!c.is_retryable(), "a deadline timeout is not retried");
}

#[tokio::test(start_paused = true)]
async fn attempt_earlier_than_deadline_is_an_attempt_timeout() {
    let layer = TimeoutLayer::builder().attempt(secs(2)).build().unwrap();
    let (mut svc, mut handle) = mock::spawn_layer::<RequestMeta, &'static str, _>(layer);
    assert_ready_ok!(svc.poll_ready());
    let deadline = Instant::now() + secs(30);
    let mut fut = task::spawn(svc.call(RequestMeta::new().deadline(deadline)));
    let _req = handle.next_request().await.unwrap();
    advance(secs(2)).await;
    let err = assert_ready!(fut.poll()).unwrap_err();
    assert_eq!(timeout_kind(&err), Some(TimeoutKind::Attempt));
    assert!(llm_sluice::classify::classify_error(&*err).is_retryable());
}

#[tokio::test(start_paused = true)]
async fn total_timeout_covers_the_wait_for_headers() {
    let layer = TimeoutLayer::builder()
        .attempt(secs(10))
        .total(secs(4))
        .build()
        .unwrap();
    let (mut svc, mut handle) = mock::spawn_layer::<RequestMeta, &'static str, _>(layer);
    assert_ready_ok!(svc.poll_ready());
    let mut fut = task::spawn(svc.call(RequestMeta::new()));
    let _req = handle.next_request().await.unwrap();
    advance(secs(4)).await;
    let err = assert_ready!(fut.poll()).unwrap_err();
    assert_eq!(timeout_kind(&err), Some(TimeoutKind::Total));
}

#[tokio::test(start_paused = true)]
async fn no_timeouts_and_no_deadline_never_fire() {
    let layer = TimeoutLayer::builder().build().unwrap();
    let (mut svc, mut handle) = mock::spawn_layer::<RequestMeta, &'static str, _>(layer);
    assert_ready_ok!(svc.poll_ready());
    let mut fut = task::spawn(svc.call(RequestMeta::new()));
    let (_, send) = handle.next_request().await.unwrap();
    advance(secs(86_400)).await;
    assert_pending!(fut.poll());
    send.send_response("late but fine");
    assert_eq!(assert_ready_ok!(fut.poll()), "late but fine");
}

#[tokio::test(start_paused = true)]
async fn response_future_drop_drops_the_inner_call() {
    let held = Arc::new(());
    let inner_held = held.clone();
    let inner = tower::service_fn(move |_req: RequestMeta| {
        let guard = inner_held.clone();
        async move {
            let _guard = guard;
            std::future::pending::<()>().await;
            Ok::<_, BoxError>("never")
        }
    });
    let mut svc = TimeoutLayer::builder()
        .attempt(secs(1))
        .build()
        .unwrap()
        .layer(inner);
    let mut fut = task::spawn(svc.ready().await.unwrap().call(RequestMeta::new()));
    assert_pending!(fut.poll());
    assert_eq!(Arc::strong_count(&held), 3);
    drop(fut);
    assert_eq!(Arc::strong_count(&held), 2, "the inner future is dropped");
}

#[tokio::test(start_paused = true)]
async fn timed_out_inner_call_is_dropped_when_the_timeout_fires() {
    let held = Arc::new(());
    let inner_held = held.clone();
    let inner = tower::service_fn(move |_req: RequestMeta| {
        let guard = inner_held.clone();
        async move {
            let _guard = guard;
            std::future::pending::<()>().await;
            Ok::<_, BoxError>("never")
        }
    });
    let svc = TimeoutLayer::builder()
        .attempt(secs(1))
        .build()
        .unwrap()
        .layer(inner);
    let err = svc.oneshot(RequestMeta::new()).await.unwrap_err();
    assert_eq!(timeout_kind(&err), Some(TimeoutKind::Attempt));
    assert_eq!(Arc::strong_count(&held), 1);
}

#[test]
fn builder_rejects_zero_durations_by_name() {
    let zero = Duration::ZERO;
    let cases = [
        ("attempt", TimeoutLayer::builder().attempt(zero)),
        ("first_chunk", TimeoutLayer::builder().first_chunk(zero)),
        ("idle", TimeoutLayer::builder().idle(zero)),
        ("total", TimeoutLayer::builder().total(zero)),
    ];
    for (field, builder) in cases {
        assert_eq!(builder.build().unwrap_err().field(), field);
    }
    let layer = TimeoutLayer::builder()
        .attempt(secs(1))
        .idle(secs(2))
        .build()
        .unwrap();
    assert_eq!(layer.attempt(), Some(secs(1)));
    assert_eq!(layer.idle(), Some(secs(2)));
    assert_eq!(layer.first_chunk(), None);
    assert!(format!("{layer:?}").contains("TimeoutLayer"));
}

// ---- body timeouts ----------------------------------------------------------

type HttpRes = http::Response<ChanBody>;

/// Calls a timeout-wrapped mock and answers at once with a channel body.
async fn streamed(layer: TimeoutLayer, req: RequestMeta) -> (Tx, TimeoutBody<ChanBody>) {
    let (mut svc, mut handle) = mock::spawn_layer::<RequestMeta, HttpRes, _>(layer);
    assert_ready_ok!(svc.poll_ready());
    let mut fut = task::spawn(svc.call(req));
    let (tx, body) = chan_body();
    let (_, send) = handle.next_request().await.unwrap();
    send.send_response(http::Response::new(body));
    let response = assert_ready_ok!(fut.poll());
    (tx, response.into_body())
}

#[tokio::test(start_paused = true)]
async fn first_chunk_timeout_on_a_slow_stream() {
    let layer = TimeoutLayer::builder()
        .first_chunk(secs(5))
        .idle(secs(60))
        .build()
        .unwrap();
    let (_tx, mut body) = streamed(layer, RequestMeta::new()).await;
    advance(Duration::from_millis(4_999)).await;
    assert!(poll_frame(&mut body).is_pending());
    advance(Duration::from_millis(1)).await;
    assert_eq!(
        body_error_kind(poll_frame(&mut body)),
        Some(TimeoutKind::FirstChunk)
    );
    assert!(body.is_end_stream() && body.is_done());
    assert!(matches!(poll_frame(&mut body), Poll::Ready(None)));
}

#[tokio::test(start_paused = true)]
async fn idle_timeout_resets_on_every_chunk_and_fires_on_a_gap() {
    let layer = TimeoutLayer::builder().idle(secs(5)).build().unwrap();
    let (tx, mut body) = streamed(layer, RequestMeta::new()).await;
    // ten chunks, 4s apart: 40s in all, longer than the idle time, no timeout
    for _ in 0..10 {
        advance(secs(4)).await;
        chunk(&tx, "data: {}\n\n");
        assert!(matches!(poll_frame(&mut body), Poll::Ready(Some(Ok(_)))));
    }
    advance(Duration::from_millis(4_999)).await;
    assert!(poll_frame(&mut body).is_pending());
    advance(Duration::from_millis(1)).await;
    assert_eq!(
        body_error_kind(poll_frame(&mut body)),
        Some(TimeoutKind::Idle)
    );
}

#[tokio::test(start_paused = true)]
async fn idle_applies_to_the_first_chunk_when_first_chunk_is_unset() {
    let layer = TimeoutLayer::builder().idle(secs(5)).build().unwrap();
    let (_tx, mut body) = streamed(layer, RequestMeta::new()).await;
    advance(secs(5)).await;
    assert_eq!(
        body_error_kind(poll_frame(&mut body)),
        Some(TimeoutKind::FirstChunk)
    );
}

#[tokio::test(start_paused = true)]
async fn total_timeout_ends_a_steady_stream() {
    let layer = TimeoutLayer::builder()
        .idle(secs(5))
        .total(secs(12))
        .build()
        .unwrap();
    let (tx, mut body) = streamed(layer, RequestMeta::new()).await;
    for _ in 0..2 {
        advance(secs(4)).await;
        chunk(&tx, "x");
        assert!(matches!(poll_frame(&mut body), Poll::Ready(Some(Ok(_)))));
    }
    // t = 8s; the idle timer would fire at 13s, the total fires at 12s
    advance(Duration::from_millis(3_999)).await;
    assert!(poll_frame(&mut body).is_pending());
    advance(Duration::from_millis(1)).await;
    assert_eq!(
        body_error_kind(poll_frame(&mut body)),
        Some(TimeoutKind::Total)
    );
}

#[tokio::test(start_paused = true)]
async fn request_deadline_bounds_the_body() {
    let layer = TimeoutLayer::builder().idle(secs(60)).build().unwrap();
    let deadline = Instant::now() + secs(3);
    let (tx, mut body) = streamed(layer, RequestMeta::new().deadline(deadline)).await;
    advance(secs(2)).await;
    chunk(&tx, "x");
    assert!(matches!(poll_frame(&mut body), Poll::Ready(Some(Ok(_)))));
    advance(secs(1)).await;
    assert_eq!(
        body_error_kind(poll_frame(&mut body)),
        Some(TimeoutKind::Total)
    );
}

#[tokio::test(start_paused = true)]
async fn body_that_ends_in_time_ends_cleanly() {
    let layer = TimeoutLayer::builder().idle(secs(5)).build().unwrap();
    let (tx, body) = streamed(layer, RequestMeta::new()).await;
    chunk(&tx, "hello ");
    chunk(&tx, "world");
    drop(tx);
    let bytes = body.collect().await.unwrap().to_bytes();
    assert_eq!(&bytes[..], b"hello world");
}

#[tokio::test(start_paused = true)]
async fn inner_body_errors_pass_through() {
    let layer = TimeoutLayer::builder().idle(secs(5)).build().unwrap();
    let (tx, mut body) = streamed(layer, RequestMeta::new()).await;
    tx.send(Err(std::io::Error::new(
        std::io::ErrorKind::ConnectionReset,
        "reset",
    )))
    .unwrap();
    match poll_frame(&mut body) {
        Poll::Ready(Some(Err(err))) => {
            assert_eq!(
                err.downcast_ref::<std::io::Error>().unwrap().kind(),
                std::io::ErrorKind::ConnectionReset
            );
        }
        other => panic!("unexpected: {other:?}"),
    }
    assert!(body.is_done());
}

#[tokio::test(start_paused = true)]
async fn body_timeout_releases_a_guard_held_inside() {
    // a limiter inside holds its permit in the body until the body ends
    let permit = Arc::new(());
    let inner_permit = permit.clone();
    let inner = tower::service_fn(move |_req: RequestMeta| {
        let guard = inner_permit.clone();
        async move {
            let (tx, body) = chan_body();
            // keep the sender alive so the stream stays open
            std::mem::forget(tx);
            Ok::<_, BoxError>(http::Response::new(GuardedBody::new(body, guard)))
        }
    });
    let svc = TimeoutLayer::builder()
        .first_chunk(secs(5))
        .build()
        .unwrap()
        .layer(inner);
    let response = svc.oneshot(RequestMeta::new()).await.unwrap();
    let mut body = response.into_body();
    // the service was consumed by `oneshot`: the body's guard is the only other
    assert_eq!(Arc::strong_count(&permit), 2, "held by the body");
    assert!(poll_frame(&mut body).is_pending());
    advance(secs(5)).await;
    assert_eq!(
        body_error_kind(poll_frame(&mut body)),
        Some(TimeoutKind::FirstChunk)
    );
    assert_eq!(
        Arc::strong_count(&permit),
        1,
        "the timeout dropped the inner body and its guard"
    );
}

// ---- deadline layer ---------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn deadline_layer_sets_a_deadline_when_there_is_none() {
    let (mut svc, mut handle) =
        mock::spawn_layer::<RequestMeta, &'static str, _>(DeadlineLayer::new(secs(30)));
    assert_ready_ok!(svc.poll_ready());
    let start = Instant::now();
    let mut fut = task::spawn(svc.call(RequestMeta::new()));
    let (req, send) = handle.next_request().await.unwrap();
    assert_eq!(req.deadline, Some(start + secs(30)));
    send.send_response("ok");
    assert_ready_ok!(fut.poll());
}

#[tokio::test(start_paused = true)]
async fn deadline_layer_keeps_an_earlier_deadline_and_tightens_a_later_one() {
    let (mut svc, mut handle) =
        mock::spawn_layer::<RequestMeta, &'static str, _>(DeadlineLayer::new(secs(30)));
    let start = Instant::now();
    for (theirs, expected) in [(secs(10), secs(10)), (secs(100), secs(30))] {
        assert_ready_ok!(svc.poll_ready());
        let _fut = svc.call(RequestMeta::new().deadline(start + theirs));
        let (req, _send) = handle.next_request().await.unwrap();
        assert_eq!(req.deadline, Some(start + expected));
    }
}

#[tokio::test(start_paused = true)]
async fn deadline_layer_enforces_the_deadline_as_total() {
    let (mut svc, mut handle) =
        mock::spawn_layer::<RequestMeta, &'static str, _>(DeadlineLayer::new(secs(30)));
    assert_ready_ok!(svc.poll_ready());
    let mut fut = task::spawn(svc.call(RequestMeta::new()));
    let _req = handle.next_request().await.unwrap();
    advance(Duration::from_millis(29_999)).await;
    assert_pending!(fut.poll());
    advance(Duration::from_millis(1)).await;
    let err = assert_ready!(fut.poll()).unwrap_err();
    assert_eq!(timeout_kind(&err), Some(TimeoutKind::Total));
}

#[tokio::test(start_paused = true)]
async fn deadline_layer_without_enforcement_only_sets() {
    let layer = DeadlineLayer::builder()
        .after(secs(1))
        .enforce(false)
        .build()
        .unwrap();
    let (mut svc, mut handle) = mock::spawn_layer::<RequestMeta, &'static str, _>(layer);
    assert_ready_ok!(svc.poll_ready());
    let mut fut = task::spawn(svc.call(RequestMeta::new()));
    let (req, send) = handle.next_request().await.unwrap();
    assert!(req.deadline.is_some());
    advance(secs(10)).await;
    assert_pending!(fut.poll());
    send.send_response("late");
    assert_eq!(assert_ready_ok!(fut.poll()), "late");
}

#[tokio::test(start_paused = true)]
async fn deadline_layer_with_no_duration_enforces_the_callers_deadline() {
    let layer = DeadlineLayer::builder().build().unwrap();
    let (mut svc, mut handle) = mock::spawn_layer::<RequestMeta, &'static str, _>(layer);
    assert_ready_ok!(svc.poll_ready());
    let mut fut = task::spawn(svc.call(RequestMeta::new().deadline(Instant::now() + secs(2))));
    let _req = handle.next_request().await.unwrap();
    advance(secs(2)).await;
    let err = assert_ready!(fut.poll()).unwrap_err();
    assert_eq!(timeout_kind(&err), Some(TimeoutKind::Total));
}

#[test]
fn deadline_builder_rejects_bad_settings() {
    let err = DeadlineLayer::builder()
        .after(Duration::ZERO)
        .build()
        .unwrap_err();
    assert_eq!(err.field(), "after");
    let err = DeadlineLayer::builder().enforce(false).build().unwrap_err();
    assert_eq!(err.field(), "after");
}

#[tokio::test(start_paused = true)]
async fn deadline_set_outside_bounds_a_timeout_layer_inside() {
    // DeadlineLayer (not enforcing) → TimeoutLayer: the attempt timeout of
    // 60s is cut to the 5s deadline and reported as Total.
    let svc = tower::ServiceBuilder::new()
        .layer(
            DeadlineLayer::builder()
                .after(secs(5))
                .enforce(false)
                .build()
                .unwrap(),
        )
        .layer(TimeoutLayer::builder().attempt(secs(60)).build().unwrap())
        .service_fn(|_req: RequestMeta| async {
            std::future::pending::<()>().await;
            Ok::<_, BoxError>("never")
        });
    let start = Instant::now();
    let err = svc.oneshot(RequestMeta::new()).await.unwrap_err();
    assert_eq!(timeout_kind(&err), Some(TimeoutKind::Total));
    assert_eq!(start.elapsed(), secs(5));
}

// ---- metrics ----------------------------------------------------------------

#[test]
fn timeouts_are_counted_by_kind() {
    use metrics_util::debugging::DebuggingRecorder;

    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        let layer = TimeoutLayer::builder().attempt(secs(1)).build().unwrap();
        rt.block_on(async {
            let svc = layer.layer(tower::service_fn(|_req: RequestMeta| async {
                std::future::pending::<()>().await;
                Ok::<_, BoxError>("never")
            }));
            for _ in 0..3 {
                let err = svc.clone().oneshot(RequestMeta::new()).await.unwrap_err();
                assert_eq!(timeout_kind(&err), Some(TimeoutKind::Attempt));
            }
        });
    });
    assert_eq!(timeouts_counted(&snapshotter, "attempt"), Some(3));
}

/// `llm_sluice_timeouts_total{layer="timeout", reason}` in a snapshot.
fn timeouts_counted(
    snapshotter: &metrics_util::debugging::Snapshotter,
    reason: &str,
) -> Option<u64> {
    use metrics_util::debugging::DebugValue;

    snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .find_map(|(key, _, _, value)| {
            let k = key.key();
            let hit = k.name() == "llm_sluice_timeouts_total"
                && k.labels()
                    .any(|l| l.key() == "reason" && l.value() == reason)
                && k.labels()
                    .any(|l| l.key() == "layer" && l.value() == "timeout");
            match value {
                DebugValue::Counter(n) if hit => Some(n),
                _ => None,
            }
        })
}

#[test]
fn body_timeouts_are_counted_by_the_layer() {
    use metrics_util::debugging::DebuggingRecorder;

    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        rt.block_on(async {
            let layer = TimeoutLayer::builder().idle(secs(5)).build().unwrap();
            let (tx, mut body) = streamed(layer, RequestMeta::new()).await;
            chunk(&tx, "data: {}\n\n");
            assert!(matches!(poll_frame(&mut body), Poll::Ready(Some(Ok(_)))));
            advance(secs(5)).await;
            assert_eq!(
                body_error_kind(poll_frame(&mut body)),
                Some(TimeoutKind::Idle)
            );
        });
    });
    assert_eq!(timeouts_counted(&snapshotter, "idle"), Some(1));
}

// ---- property: a body fails exactly on the first gap that is too long ------

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

    #[test]
    fn body_fails_on_the_first_gap_too_long_with_the_right_kind(
        gaps in proptest::collection::vec(0u64..8_000, 1..12),
        first in 1u64..6_000,
        idle in 1u64..6_000,
        total in proptest::option::of(1u64..40_000),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        rt.block_on(async move {
            let ms = Duration::from_millis;
            let mut builder = TimeoutLayer::builder().first_chunk(ms(first)).idle(ms(idle));
            if let Some(total) = total {
                builder = builder.total(ms(total));
            }
            let start = Instant::now();
            let (tx, mut body) = streamed(builder.build().unwrap(), RequestMeta::new()).await;
            let total_at = total.map(|t| start + ms(t));
            let mut last = start;
            for (i, gap) in gaps.iter().enumerate() {
                let (limit, kind) = if i == 0 {
                    (ms(first), TimeoutKind::FirstChunk)
                } else {
                    (ms(idle), TimeoutKind::Idle)
                };
                let (deadline, kind) = match total_at {
                    Some(at) if at <= last + limit => (at, TimeoutKind::Total),
                    _ => (last + limit, kind),
                };
                // an active reader: it polls at the deadline if no chunk came
                if last + ms(*gap) <= deadline {
                    advance(ms(*gap)).await;
                    chunk(&tx, "x");
                    assert!(
                        matches!(poll_frame(&mut body), Poll::Ready(Some(Ok(_)))),
                        "chunk {i} in time"
                    );
                    last = Instant::now();
                } else {
                    if let Some(before) = (deadline - last).checked_sub(ms(1)) {
                        advance(before).await;
                        assert!(poll_frame(&mut body).is_pending(), "not before its time");
                        advance(ms(1)).await;
                    }
                    assert_eq!(body_error_kind(poll_frame(&mut body)), Some(kind), "chunk {i} late");
                    assert!(body.is_done());
                    return;
                }
            }
        });
    }
}

// keep the `Future` import used on all feature sets
#[allow(dead_code)]
fn _assert_future<F: Future>(_: F) {}

// ===== what the success path costs =====

#[tokio::test(start_paused = true)]
async fn deadline_layer_dates_the_arrival_and_keeps_an_earlier_one() {
    let svc =
        DeadlineLayer::new(secs(30)).layer(tower::service_fn(|req: RequestMeta| async move {
            Ok::<_, BoxError>(req.arrival)
        }));
    let now = Instant::now();
    assert_eq!(
        svc.clone().oneshot(RequestMeta::new()).await.unwrap(),
        Some(now)
    );

    advance(secs(5)).await;
    let dated = RequestMeta {
        arrival: Some(now),
        ..RequestMeta::new()
    };
    assert_eq!(svc.oneshot(dated).await.unwrap(), Some(now));
}

/// The timers are made only when the inner future is pending: a response
/// ready on its first poll never needs tokio's timer, so it completes even
/// outside a runtime (making a `Sleep` there would panic).
#[test]
fn ready_response_never_arms_a_timer() {
    let ready = tower::service_fn(|_: RequestMeta| async { Ok::<_, BoxError>(()) });
    let mut svc = tower::ServiceBuilder::new()
        .layer(DeadlineLayer::new(secs(30)))
        .layer(TimeoutLayer::builder().attempt(secs(5)).build().unwrap())
        .service(ready);
    let reply = futures::executor::block_on(async {
        svc.ready().await.unwrap().call(RequestMeta::new()).await
    });
    assert!(reply.is_ok());
}
