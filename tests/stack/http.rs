//! `LlmStack` over an HTTP client: `http::Request` in, a streamed
//! `http::Response` out (the in-process simulated upstream, virtual time).

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use llm_sluice::sim::{Dist, Upstream};
use llm_sluice::stack::{LlmStack, StackConfig};
use llm_sluice::{PartitionKey, TokenEstimate};
use tower::{Service, ServiceBuilder, ServiceExt};

fn chat(stream: bool) -> http::Request<Full<Bytes>> {
    let body = serde_json::json!({
        "model": "m",
        "messages": [{"role": "user", "content": "Say hello"}],
        "max_tokens": 40,
        "stream": stream,
    });
    let mut req = http::Request::post("/v1/chat/completions")
        .header("content-type", "application/json")
        .header("authorization", "Bearer sk-1")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    req.extensions_mut().insert(PartitionKey::new("sk-1"));
    req.extensions_mut().insert(TokenEstimate(60));
    req
}

/// The simulated upstream's HTTP side, as one concrete service type.
///
/// `Upstream` serves typed `SimRequest`s and `http::Request<B>` for any body:
/// under a stack of a dozen generic layers, proving which of its `Service`
/// impls applies at every level took rustc minutes. A client with one
/// `Service` impl (hyper's, reqwest's, a boxed service) compiles at once.
type Client = tower::util::BoxCloneService<
    http::Request<Full<Bytes>>,
    http::Response<llm_sluice::sim::SimBody>,
    std::io::Error,
>;

fn upstream() -> Client {
    let up = Upstream::builder()
        .time_to_first_token(Dist::fixed(Duration::from_millis(200)))
        .tokens_per_second(Dist::Fixed(20.0))
        .tokens_per_chunk(10)
        .build()
        .unwrap();
    tower::util::BoxCloneService::new(up)
}

#[tokio::test(start_paused = true)]
async fn a_streamed_body_holds_its_permit_until_it_ends() {
    let mut config = StackConfig::default();
    config.rate.requests_per_minute = Some(100);
    let stack = LlmStack::from_config(&config).unwrap();
    let limit = stack.concurrency().unwrap().clone();
    let mut svc = ServiceBuilder::new().layer(stack).service(upstream());

    let res = svc.ready().await.unwrap().call(chat(true)).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(
        limit.stats().unwrap().in_flight,
        1,
        "headers came, the body did not"
    );
    let body = res.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8(body.to_vec()).unwrap();
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
    assert_eq!(
        limit.stats().unwrap().in_flight,
        0,
        "the end of the body freed it"
    );

    let res = svc.ready().await.unwrap().call(chat(false)).await.unwrap();
    let json: serde_json::Value =
        serde_json::from_slice(&res.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert!(
        json["usage"]["total_tokens"].as_u64().unwrap() > 0,
        "{json}"
    );
}

#[tokio::test(start_paused = true)]
async fn with_every_part_off_the_stack_still_serves_http() {
    let mut config = StackConfig::default();
    config.retry.enabled = false;
    config.breaker.enabled = false;
    config.concurrency.enabled = false;
    config.timeout.enabled = false;
    let stack = LlmStack::from_config(&config).unwrap();
    assert!(stack.concurrency().is_none() && stack.timeout().is_none());
    let res = ServiceBuilder::new()
        .layer(stack)
        .service(upstream())
        .oneshot(chat(true))
        .await
        .unwrap();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert!(body.ends_with(b"data: [DONE]\n\n"));
}

#[tokio::test(start_paused = true)]
async fn the_idle_timeout_of_the_stack_ends_a_stalled_stream() {
    let mut config = StackConfig::default();
    config.timeout.idle = Some(Duration::from_millis(100)); // chunks come every 500 ms
    let stack = LlmStack::from_config(&config).unwrap();
    let limit = stack.concurrency().unwrap().clone();
    let res = ServiceBuilder::new()
        .layer(stack)
        .service(upstream())
        .oneshot(chat(true))
        .await
        .unwrap();
    let err = res.into_body().collect().await.unwrap_err();
    // the first chunk is due 200 ms after the headers: with no first-chunk
    // timeout of its own, the idle timeout covers that gap too
    assert!(
        matches!(
            err.downcast_ref::<llm_sluice::Error>(),
            Some(llm_sluice::Error::Timeout {
                kind: llm_sluice::TimeoutKind::FirstChunk
            })
        ),
        "{err:?}"
    );
    assert_eq!(limit.stats().unwrap().in_flight, 0);
}
