//! The permit lives in an `http::Response` body until the body is done.

use std::task::Poll;

use bytes::Bytes;
use futures::channel::mpsc;
use futures::SinkExt;
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use llm_sluice::concurrency::{ConcurrencyLimit, ConcurrencyLimitLayer};
use tokio_test::{assert_pending, assert_ready_ok, task};
use tower::{BoxError, Layer, Service};
use tower_test::mock;

type Chunk = Result<Frame<Bytes>, BoxError>;
type Body = StreamBody<mpsc::Receiver<Chunk>>;
type Mock = mock::Mock<http::Request<()>, http::Response<Body>>;
type Handle = mock::Handle<http::Request<()>, http::Response<Body>>;

fn limited() -> (ConcurrencyLimit<Mock>, Handle) {
    let layer = ConcurrencyLimitLayer::builder()
        .max_in_flight(1)
        .build()
        .unwrap();
    let (mock, handle) = mock::pair();
    (layer.layer(mock), handle)
}

/// Sends one request and answers it with a streamed body; returns the
/// response (with the permit in its body) and the body's sender.
async fn streamed_response(
    svc: &mut ConcurrencyLimit<Mock>,
    handle: &mut Handle,
) -> (
    http::Response<llm_sluice::hold::GuardedBody<Body, llm_sluice::concurrency::Permit>>,
    mpsc::Sender<Chunk>,
) {
    let mut f = task::spawn(svc.call(http::Request::new(())));
    assert_pending!(f.poll());
    let (tx, rx) = mpsc::channel(4);
    match handle.poll_request() {
        Poll::Ready(Some((_, send))) => {
            send.send_response(http::Response::new(StreamBody::new(rx)))
        }
        _ => panic!("expected a request"),
    }
    let response = assert_ready_ok!(f.poll());
    (response, tx)
}

#[tokio::test(start_paused = true)]
async fn permit_held_after_headers() {
    let (mut svc, mut handle) = limited();
    let (response, _tx) = streamed_response(&mut svc, &mut handle).await;
    assert!(response.body().is_holding());
    assert_eq!(
        svc.stats().in_flight,
        1,
        "headers are not the end of the response"
    );
}

#[tokio::test(start_paused = true)]
async fn body_drop_mid_stream_releases_capacity() {
    let (mut svc, mut handle) = limited();
    let (response, mut tx) = streamed_response(&mut svc, &mut handle).await;
    let mut body = response.into_body();
    tx.send(Ok(Frame::data(Bytes::from_static(b"data: {}\n\n"))))
        .await
        .unwrap();
    let frame = body.frame().await.unwrap().unwrap();
    assert_eq!(frame.into_data().unwrap(), "data: {}\n\n");
    assert_eq!(svc.stats().in_flight, 1, "still streaming");
    drop(body);
    assert_eq!(svc.stats().in_flight, 0);
    assert_eq!(svc.stats().available, 1);
}

#[tokio::test(start_paused = true)]
async fn body_read_to_end_releases_capacity() {
    let (mut svc, mut handle) = limited();
    let (response, mut tx) = streamed_response(&mut svc, &mut handle).await;
    let mut body = response.into_body();
    tx.send(Ok(Frame::data(Bytes::from_static(b"data: [DONE]\n\n"))))
        .await
        .unwrap();
    drop(tx);
    assert!(body.frame().await.unwrap().is_ok());
    assert_eq!(svc.stats().in_flight, 1);
    assert!(body.frame().await.is_none(), "end of stream");
    assert!(!body.is_holding());
    assert_eq!(
        svc.stats().in_flight,
        0,
        "released at the end, body still alive"
    );
    drop(body);
    assert_eq!(svc.stats().available, 1);
}

#[tokio::test(start_paused = true)]
async fn body_error_releases_capacity() {
    let (mut svc, mut handle) = limited();
    let (response, mut tx) = streamed_response(&mut svc, &mut handle).await;
    let mut body = response.into_body();
    tx.send(Err("connection reset".into())).await.unwrap();
    assert!(body.frame().await.unwrap().is_err());
    assert_eq!(
        svc.stats().in_flight,
        0,
        "released on the error, body still alive"
    );
}
