//! `http::Response` outcomes, and streamed bodies counted when they end.

use std::time::Duration;

use bytes::Bytes;
use futures::channel::mpsc;
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use llm_sluice::classify::ErrorCode;
use llm_sluice::stats::Stats;
use tokio::time::advance;
use tower::{BoxError, Layer, Service, ServiceExt};

use super::assert_close;

fn response(status: u16) -> http::Response<String> {
    let mut response = http::Response::builder()
        .status(status)
        .body(String::new())
        .unwrap();
    if status == 402 {
        // a spent quota: a 429 whose error code says so
        *response.status_mut() = http::StatusCode::TOO_MANY_REQUESTS;
        response
            .extensions_mut()
            .insert(ErrorCode::new(Some("insufficient_quota"), None));
    }
    response
}

#[tokio::test(start_paused = true)]
async fn status_codes_are_counted_by_outcome() {
    let stats = Stats::new();
    let inner = tower::service_fn(|status: u16| async move { Ok::<_, BoxError>(response(status)) });
    let mut svc = stats.layer().layer(inner);
    for status in [200, 201, 429, 402, 529, 500, 503, 408, 400, 404] {
        let response = svc.ready().await.unwrap().call(status).await.unwrap();
        // a body read to its end (empty bodies end at once)
        response.into_body().collect().await.unwrap();
    }
    let o = stats.snapshot().outcomes;
    assert_eq!(o.success, 2);
    assert_eq!(o.rate_limited, 1);
    assert_eq!(o.quota_exhausted, 1);
    assert_eq!(o.overloaded, 1);
    assert_eq!(o.server_error, 2);
    assert_eq!(o.timeout, 1);
    assert_eq!(o.client_error, 2);
    assert_eq!(o.total(), 10);
}

type Chunks = mpsc::UnboundedSender<Result<Frame<Bytes>, BoxError>>;

#[tokio::test(start_paused = true)]
async fn streamed_body_is_counted_when_it_ends() {
    let stats = Stats::new();
    let (tx, rx) = std::sync::mpsc::channel::<Chunks>();
    let inner = tower::service_fn(move |_: ()| {
        let (chunks, body) = mpsc::unbounded();
        tx.send(chunks).unwrap();
        async move { Ok::<_, BoxError>(http::Response::new(StreamBody::new(body))) }
    });
    let mut svc = stats.layer().layer(inner);

    let response = svc.ready().await.unwrap().call(()).await.unwrap();
    let chunks = rx.recv().unwrap();
    let mut body = response.into_body();
    assert!(body.is_holding());
    chunks
        .unbounded_send(Ok(Frame::data(Bytes::from("data: hi\n\n"))))
        .unwrap();
    body.frame().await.unwrap().unwrap();
    advance(Duration::from_secs(5)).await;
    assert_eq!(stats.snapshot().total, 0, "still streaming");
    drop(chunks);
    assert!(body.frame().await.is_none());
    assert!(!body.is_holding());
    let snap = stats.snapshot();
    assert_eq!(snap.outcomes.success, 1);
    assert_close(snap.end_to_end.max, Duration::from_secs(5));

    // a body dropped half-way counts under its response's outcome
    let response = svc.ready().await.unwrap().call(()).await.unwrap();
    let _chunks = rx.recv().unwrap();
    advance(Duration::from_secs(2)).await;
    drop(response);
    let snap = stats.snapshot();
    assert_eq!((snap.total, snap.outcomes.success), (2, 2));
    assert_eq!(snap.outcomes.cancelled, 0);
    assert_eq!(snap.end_to_end.count, 2);
    assert_close(snap.end_to_end.p50, Duration::from_secs(2));
}
