//! `LlmStack` around a client of `http::Response`s, whose type the attempt
//! timeout and the concurrency limit change (`TimeoutBody`, `GuardedBody`):
//! it must wrap such a client with every part on and with every part off.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use llm_sluice::stack::{LlmStack, StackConfig};
use llm_sluice::{PartitionKey, TokenEstimate};
use tower::{BoxError, ServiceBuilder, ServiceExt};

fn request() -> http::Request<Full<Bytes>> {
    let mut req = http::Request::new(Full::new(Bytes::from_static(b"{}")));
    req.extensions_mut().insert(TokenEstimate(10));
    req.extensions_mut().insert(PartitionKey::new("k"));
    req
}

async fn client(_req: http::Request<Full<Bytes>>) -> Result<http::Response<Full<Bytes>>, BoxError> {
    Ok(http::Response::new(Full::new(Bytes::from_static(
        b"answer",
    ))))
}

#[tokio::test(start_paused = true)]
async fn wraps_an_http_client_and_holds_the_permit_until_the_body_ends() {
    let mut config = StackConfig::default();
    config.rate.requests_per_minute = Some(10);
    config.deadline = Some(Duration::from_secs(60));
    let stack = LlmStack::from_config(&config).unwrap();
    let svc = ServiceBuilder::new()
        .layer(stack.clone())
        .service_fn(client);

    let res = svc.oneshot(request()).await.unwrap();
    let in_flight = || stack.concurrency().unwrap().stats().unwrap().in_flight;
    assert_eq!(in_flight(), 1, "the body holds the permit");
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "answer");
    assert_eq!(in_flight(), 0, "released when the body ended");
}

#[tokio::test(start_paused = true)]
async fn wraps_an_http_client_with_every_part_off() {
    let mut config = StackConfig::default();
    config.retry.enabled = false;
    config.breaker.enabled = false;
    config.concurrency.enabled = false;
    config.timeout.enabled = false;
    let stack = LlmStack::from_config(&config).unwrap();
    assert!(stack.concurrency().is_none());
    let svc = ServiceBuilder::new().layer(stack).service_fn(client);
    let res = svc.oneshot(request()).await.unwrap();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "answer");
}
