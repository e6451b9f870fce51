//! The scenario `wrap_http_client` and `reqwest_client` share: the
//! simulated provider on loopback, the stack's settings, the requests, and
//! the checks. Each example brings only its own HTTP client. Included by
//! path (`#[path = "common/chat_scenario.rs"]`); not an example itself.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use llm_sluice::sim::{Dist, ServerHandle, Upstream};
use llm_sluice::{Error, LlmStack, PartitionKey, StackConfig, TokenEstimate};
use tower::{BoxError, Service, ServiceExt};

#[path = "checks.rs"]
mod checks;
use checks::Checks;

/// The provider's limits per API key, and so the client's windows.
pub const PROVIDER_RPM: u64 = 5;
pub const PROVIDER_TPM: u64 = 20_000;
const API_KEY: &str = "sk-example-0001";

/// The simulated provider on a free loopback port, quick to answer so the
/// example finishes in well under a second.
pub struct Provider {
    pub upstream: Upstream,
    pub url: String,
    server: ServerHandle,
}

impl Provider {
    pub async fn start() -> Result<Provider, BoxError> {
        let upstream = Upstream::builder()
            .requests_per_window(PROVIDER_RPM)
            .tokens_per_window(PROVIDER_TPM)
            .time_to_first_token(Dist::fixed(Duration::from_millis(20)))
            .tokens_per_second(Dist::Fixed(400.0))
            .seed(1)
            .build()?;
        let (addr, server) =
            llm_sluice::sim::serve(upstream.clone(), "127.0.0.1:0".parse()?).await?;
        println!(
            "provider on {addr}: {PROVIDER_RPM} requests and {PROVIDER_TPM} tokens a minute per key"
        );
        Ok(Provider {
            upstream,
            url: format!("http://{addr}/v1/chat/completions"),
            server,
        })
    }
}

/// The stack around the client: the provider's limits as the rate window,
/// four requests in flight, the defaults for the rest (retries, breaker,
/// timeouts). Its concurrency limit is shared by everything it wraps, so its
/// counts can be read while requests run.
pub fn stack() -> Result<LlmStack, BoxError> {
    let mut config = StackConfig::default();
    config.deadline = Some(Duration::from_secs(30));
    config.concurrency.max_in_flight = 4;
    config.concurrency.max_queued = 32;
    config.rate.requests_per_minute = Some(PROVIDER_RPM);
    config.rate.tokens_per_minute = Some(PROVIDER_TPM);
    // fail at once rather than wait for the window to turn over
    config.rate.max_wait = Some(Duration::ZERO);
    Ok(LlmStack::from_config(&config)?)
}

/// Runs the four steps through `svc` (the client inside `stack`), prints
/// what it saw, and exits non-zero if anything differs from what it expects.
pub async fn run<S, B>(
    name: &str,
    mut svc: S,
    stack: &LlmStack,
    provider: Provider,
) -> Result<(), BoxError>
where
    S: Service<http::Request<Bytes>, Response = http::Response<B>, Error = BoxError>,
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let (upstream, url) = (&provider.upstream, &provider.url);
    let limit = stack
        .concurrency()
        .ok_or("the stack has a concurrency limit")?;
    let in_flight = || limit.stats().map_or(usize::MAX, |s| s.in_flight);
    let mut checks = Checks::default();

    // 1. A plain completion.
    let res = svc
        .ready()
        .await?
        .call(chat(url, "Say hello.", 16, false))
        .await?;
    let status = res.status();
    let remaining = header(&res, "x-ratelimit-remaining-requests");
    let json: serde_json::Value = serde_json::from_slice(
        &res.into_body()
            .collect()
            .await
            .map_err(Into::into)?
            .to_bytes(),
    )?;
    let total_tokens = json["usage"]["total_tokens"].as_u64().unwrap_or(0);
    println!(
        "non-streaming: status {status}, {total_tokens} tokens used, provider says {remaining} requests remain"
    );
    checks.expect(status == 200, "the plain completion succeeds");
    checks.expect(total_tokens > 0, "the plain completion reports its usage");

    // 2. A streamed completion: the permit lives as long as the body.
    let before = in_flight();
    let res = svc
        .ready()
        .await?
        .call(chat(url, "Tell a short story.", 32, true))
        .await?;
    let at_headers = in_flight();
    let mut body = std::pin::pin!(res.into_body());
    let (mut chunks, mut during, mut done) = (0, None, false);
    while let Some(frame) = body.as_mut().frame().await {
        let Ok(data) = frame.map_err(Into::into)?.into_data() else {
            continue;
        };
        for line in String::from_utf8_lossy(&data).lines() {
            match line.strip_prefix("data: ") {
                Some("[DONE]") => done = true,
                Some(_) => chunks += 1,
                None => {}
            }
        }
        during.get_or_insert_with(in_flight);
    }
    let after = in_flight();
    println!(
        "streaming: {chunks} events{}; in flight before {before}, at headers {at_headers}, mid-stream {}, after the body ended {after}",
        if done { " then [DONE]" } else { ", no [DONE]" },
        during.unwrap_or(0),
    );
    checks.expect(done && chunks > 1, "the stream is read to [DONE]");
    checks.expect(
        (before, at_headers, during, after) == (0, 1, Some(1), 0),
        "the permit is held from the call until the body ends",
    );
    if before == 0 && at_headers == 1 && after == 0 {
        println!("streaming: permit held until the body ended");
    }

    // 3. More tokens than the provider allows in a whole minute: it can
    // never fit, so it fails now instead of waiting.
    let received_before = upstream.stats().received;
    let err = svc
        .ready()
        .await?
        .call(chat(url, "Write a novel.", 50_000, false))
        .await
        .err();
    match err.as_ref().and_then(|e| e.downcast_ref::<Error>()) {
        Some(Error::RequestTooLarge { tokens, limit }) => {
            println!("too large: RequestTooLarge ({tokens} tokens, limit {limit}), not sent")
        }
        other => println!("too large: unexpected {other:?} / {err:?}"),
    }
    checks.expect(
        matches!(
            err.as_ref().and_then(|e| e.downcast_ref::<Error>()),
            Some(Error::RequestTooLarge { .. })
        ),
        "an oversized request fails with RequestTooLarge",
    );
    checks.expect(
        upstream.stats().received == received_before,
        "the oversized request never reaches the provider",
    );

    // 4. Spend the rest of the minute's requests; the next one is refused
    // locally, with the time until the window has room again.
    let mut sent = 2;
    let refused = loop {
        let result = svc
            .ready()
            .await?
            .call(chat(url, "Count to three.", 8, false))
            .await;
        match result {
            Ok(res) => {
                sent += 1;
                checks.expect(res.status() == 200, "requests inside the budget succeed");
                res.into_body().collect().await.map_err(Into::into)?;
            }
            Err(err) => break err,
        }
        if sent > PROVIDER_RPM + 1 {
            return Err("the rate limit never refused a request".into());
        }
    };
    match refused.downcast_ref::<Error>() {
        Some(Error::RateLimited { retry_after }) => println!(
            "rate limited: RateLimited after {sent} requests, retry after {:.1} s",
            retry_after.unwrap_or_default().as_secs_f64()
        ),
        other => println!("rate limited: unexpected {other:?} ({refused})"),
    }
    let retry_after = match refused.downcast_ref::<Error>() {
        Some(Error::RateLimited { retry_after }) => *retry_after,
        _ => None,
    };
    checks.expect(
        sent == PROVIDER_RPM,
        "the client sends exactly the provider's RPM",
    );
    checks.expect(
        retry_after.is_some_and(|d| d > Duration::ZERO && d <= Duration::from_secs(60)),
        "the refusal says when the window has room again",
    );

    let stats = upstream.stats();
    println!(
        "provider: received {}, admitted {}, answered 429 {} times",
        stats.received, stats.admitted, stats.rate_limited
    );
    checks.expect(
        stats.received == PROVIDER_RPM,
        "the provider saw only what fit",
    );
    checks.expect(
        stats.rate_limited == 0,
        "the provider never had to answer 429",
    );

    provider.server.shutdown().await;
    checks.finish(name)
}

/// A chat completion request, with what the layers read in its extensions:
/// the token estimate (about four characters a token, plus `max_tokens`) and
/// the API key as the partition.
///
/// The body is `Bytes`, which is `Clone`, so the retry layer can send the
/// request again as it is.
fn chat(url: &str, prompt: &str, max_tokens: u64, stream: bool) -> http::Request<Bytes> {
    let body = serde_json::json!({
        "model": "sim-1",
        "messages": [{ "role": "user", "content": prompt }],
        "max_tokens": max_tokens,
        "stream": stream,
    });
    let mut req = http::Request::post(url)
        .header("authorization", format!("Bearer {API_KEY}"))
        .header("content-type", "application/json")
        .body(Bytes::from(body.to_string()))
        .expect("a valid request");
    let estimate = prompt.len() as u64 / 4 + 4 + max_tokens;
    req.extensions_mut().insert(TokenEstimate(estimate));
    req.extensions_mut().insert(PartitionKey::new(API_KEY));
    req
}

fn header<B>(res: &http::Response<B>, name: &str) -> String {
    res.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("?")
        .to_owned()
}
