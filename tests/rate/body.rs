//! Usage read from response bodies (issue 15, item 2): the reservation is
//! corrected when the body ends, never refunded for a body cut off before
//! its usage, and the input and output budgets are corrected apart.

use std::convert::Infallible;

use bytes::Bytes;
use futures::stream::{self, Iter};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use llm_sluice::TokenEstimate;
use tokio::time::timeout;

use super::*;

type Frames = Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>;
type Body = StreamBody<Frames>;

fn body(chunks: &[&str]) -> Body {
    let frames: Vec<Result<Frame<Bytes>, Infallible>> = chunks
        .iter()
        .map(|c| Ok(Frame::data(Bytes::from(c.to_string()))))
        .collect();
    StreamBody::new(stream::iter(frames))
}

/// An upstream answering every request with `chunks` as a body of
/// `content_type`.
fn answering(
    content_type: &'static str,
    chunks: &'static [&'static str],
) -> impl Service<http::Request<()>, Response = http::Response<Body>, Error = BoxError, Future: Send>
       + Clone {
    tower::service_fn(move |_req: http::Request<()>| async move {
        Ok::<_, BoxError>(
            http::Response::builder()
                .header("content-type", content_type)
                .body(body(chunks))
                .unwrap(),
        )
    })
}

fn tokens(n: u64) -> http::Request<()> {
    let mut req = http::Request::new(());
    req.extensions_mut().insert(TokenEstimate(n));
    req
}

const JSON: &[&str] = &[
    r#"{"id":"chatcmpl-1","object":"chat.completion","choices":[{"index":0,"message":"#,
    r#"{"role":"assistant","content":"Hello there"},"finish_reason":"stop"}],"usage":"#,
    r#"{"prompt_tokens":60,"completion_tokens":40,"total_tokens":100}}"#,
];

const SSE: &[&str] = &[
    "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hel\"}}],\"usage\":null}\n\n",
    "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"lo\"}}],\"usage\":null}\n\n",
    "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":60,\"completion_tokens\":40,\"total_tokens\":100}}\n\n",
    "data: [DONE]\n\n",
];

/// 400 bytes of generated text (100 tokens at four characters a token),
/// then the usage, which a caller that goes away never reads.
const LONG_SSE: &[&str] = &[
    concat!(
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"",
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        "\"}}]}\n\n"
    ),
    concat!(
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"",
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        "\"}}]}\n\n"
    ),
    "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":100,\"total_tokens\":105}}\n\n",
    "data: [DONE]\n\n",
];

fn limiter() -> RateLimitLayer {
    RateLimitLayer::builder()
        .tokens_per_minute(1_000)
        .guard_band(Duration::ZERO)
        .build()
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn usage_in_a_json_body_corrects_the_reservation_when_the_body_ends() {
    let layer = limiter();
    let mut svc = layer.layer(answering("application/json", JSON));
    let response = svc.ready().await.unwrap().call(tokens(900)).await.unwrap();
    // headers only: the estimate of 900 still stands
    let mut next = task::spawn(svc.ready().await.unwrap().call(tokens(200)));
    assert_pending!(next.poll());
    let read = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(read, JSON.concat().as_bytes(), "the body passes unchanged");
    // the body said 100: 800 given back, and the waiter let in
    assert!(next.is_woken());
    assert_ready!(next.poll()).unwrap();
    let fits = svc.ready().await.unwrap().call(tokens(700));
    assert!(
        timeout(Duration::ZERO, fits).await.is_ok(),
        "100 + 200 + 700 fit"
    );
}

#[tokio::test(start_paused = true)]
async fn usage_in_the_last_event_of_a_stream_corrects_the_reservation() {
    let layer = limiter();
    let mut svc = layer.layer(answering("text/event-stream", SSE));
    let response = svc.ready().await.unwrap().call(tokens(900)).await.unwrap();
    let mut next = task::spawn(svc.ready().await.unwrap().call(tokens(200)));
    assert_pending!(next.poll());
    let read = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(read, SSE.concat().as_bytes());
    assert_ready!(next.poll()).unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_stream_cut_off_before_its_usage_keeps_the_estimate() {
    let layer = limiter();
    let mut svc = layer.layer(answering("text/event-stream", SSE));
    let response = svc.ready().await.unwrap().call(tokens(900)).await.unwrap();
    let mut body = response.into_body();
    body.frame().await.unwrap().unwrap();
    drop(body); // the caller went away before the usage
    let mut next = task::spawn(svc.ready().await.unwrap().call(tokens(200)));
    assert_pending!(next.poll(), "the 900 may have been spent: not refunded");
    advance(MINUTE).await;
    assert_ready!(next.poll()).unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_cut_off_stream_is_charged_what_it_showed_when_that_is_more() {
    // estimated at 10, but 100 tokens of text came before the cut
    let layer = limiter();
    let mut svc = layer.layer(answering("text/event-stream", LONG_SSE));
    let response = svc.ready().await.unwrap().call(tokens(10)).await.unwrap();
    let mut body = response.into_body();
    body.frame().await.unwrap().unwrap();
    body.frame().await.unwrap().unwrap();
    drop(body);
    // charged 100, not 10: 100 + 901 does not fit, 100 + 900 does
    let mut over = task::spawn(svc.ready().await.unwrap().call(tokens(901)));
    assert_pending!(over.poll());
    drop(over);
    let fits = svc.ready().await.unwrap().call(tokens(900));
    assert!(timeout(Duration::ZERO, fits).await.is_ok());
}

#[tokio::test(start_paused = true)]
async fn input_and_output_budgets_are_corrected_apart_from_the_body() {
    // total 1,000, input 500, output 500. The estimate of 400 is charged to
    // all three; the body says 300 prompt tokens, 200 of them cached, and
    // 50 completion tokens: total 350, uncached input 100, output 50.
    const CACHED: &[&str] = &[concat!(
        r#"{"choices":[{"index":0,"message":{"role":"assistant","content":"ok"}}],"#,
        r#""usage":{"prompt_tokens":300,"completion_tokens":50,"total_tokens":350,"#,
        r#""prompt_tokens_details":{"cached_tokens":200}}}"#
    )];
    let layer = RateLimitLayer::builder()
        .tokens_per_minute(1_000)
        .input_tokens_per_minute(500)
        .output_tokens_per_minute(500)
        .guard_band(Duration::ZERO)
        .build()
        .unwrap();
    let mut svc = layer.layer(answering("application/json", CACHED));
    let response = svc.ready().await.unwrap().call(tokens(400)).await.unwrap();
    response.into_body().collect().await.unwrap();
    // a 450 would take input to 550: it waits
    let mut big = task::spawn(svc.ready().await.unwrap().call(tokens(450)));
    assert_pending!(big.poll());
    drop(big);
    // a 400 takes input to exactly 500 (had the cached 200 been counted,
    // 700), output to 450, total to 750: it fits
    let fits = svc.ready().await.unwrap().call(tokens(400));
    assert!(timeout(Duration::ZERO, fits).await.is_ok());
}
