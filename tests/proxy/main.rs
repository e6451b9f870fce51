//! End to end: the `axum_proxy` example's router in front of the simulated
//! upstream's HTTP server, driven by a hyper-util client over loopback.
//!
//! Real sockets run on the wall clock, so nothing here measures time: the
//! tests assert on statuses, headers, bodies, order and counts. Limits are
//! small, the simulated upstream answers at once, and a request that must
//! still be waiting when something else is checked waits on a budget that
//! frees only after a minute (far longer than any test takes).

#[allow(dead_code)]
#[path = "../../examples/axum_proxy/router.rs"]
mod router;

use std::future::IntoFuture;
use std::net::SocketAddr;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use llm_sluice::sim::{self, Dist, Faults, ServerHandle, Upstream};
use llm_sluice::{Error, TimeoutKind};
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};
use tower::BoxError;

use llm_sluice::StackConfig;
use router::{install_metrics, Proxy, ProxyConfig};

type TestClient = Client<HttpConnector, Full<Bytes>>;

/// A proxy on loopback, its upstream, and a client.
struct Harness {
    addr: SocketAddr,
    proxy: Proxy,
    upstream: Option<Upstream>,
    client: TestClient,
    _sim: Option<ServerHandle>,
    _stop: oneshot::Sender<()>,
}

/// A simulated upstream that answers at once, with generous per-key limits
/// (so its `x-ratelimit-*` headers are sent) and the given faults.
fn fast_upstream(faults: Faults) -> Upstream {
    Upstream::builder()
        .requests_per_window(1_000)
        .tokens_per_window(1_000_000)
        .time_to_first_token(Dist::fixed(Duration::ZERO))
        .tokens_per_second(Dist::Fixed(f64::INFINITY))
        .tokens_per_chunk(2)
        .faults(faults)
        .seed(7)
        .build()
        .expect("valid simulated upstream")
}

/// Small limits: two requests a minute per key, two waiters in all, who
/// wait for as long as the window takes.
fn small_limits() -> StackConfig {
    let mut stack = ProxyConfig::default_stack();
    stack.rate.requests_per_minute = Some(2);
    stack.rate.tokens_per_minute = Some(10_000);
    stack.rate.max_waiters = 2;
    stack.rate.max_wait = Some(Duration::from_secs(600));
    stack.concurrency.max_in_flight = 16;
    stack
}

async fn serve_proxy(config: ProxyConfig) -> (SocketAddr, Proxy, oneshot::Sender<()>) {
    let proxy = Proxy::new(config, install_metrics()).expect("valid proxy config");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let server = axum::serve(listener, proxy.router.clone()).with_graceful_shutdown(async move {
        let _ = stopped.await;
    });
    tokio::spawn(server.into_future());
    (addr, proxy, stop)
}

async fn harness_with(upstream: Upstream, stack: StackConfig) -> Harness {
    let (sim_addr, sim) = sim::serve(upstream.clone(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let config = ProxyConfig {
        stack,
        ..ProxyConfig::new(format!("http://{sim_addr}"))
    };
    let (addr, proxy, stop) = serve_proxy(config).await;
    Harness {
        addr,
        proxy,
        upstream: Some(upstream),
        client: Client::builder(TokioExecutor::new()).build_http(),
        _sim: Some(sim),
        _stop: stop,
    }
}

async fn harness() -> Harness {
    harness_with(fast_upstream(Faults::NONE), small_limits()).await
}

/// An answer read to its end.
#[derive(Debug)]
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }

    fn error_code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or("")
            .to_owned()
    }
}

fn chat_body(prompt: &str, stream: bool) -> Value {
    json!({
        "model": "auto",
        "messages": [{ "role": "system", "content": "Be brief." }, { "role": "user", "content": prompt }],
        "max_tokens": 8,
        "stream": stream,
        "stream_options": { "include_usage": true },
    })
}

impl Harness {
    fn request(
        &self,
        method: Method,
        path: &str,
        key: Option<&str>,
        body: Option<&Value>,
    ) -> Request<Full<Bytes>> {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.addr));
        if let Some(key) = key {
            req = req.header(header::AUTHORIZATION, format!("Bearer {key}"));
        }
        let bytes = body.map_or_else(Bytes::new, |b| Bytes::from(b.to_string()));
        req.body(Full::new(bytes)).unwrap()
    }

    async fn send(&self, req: Request<Full<Bytes>>) -> Answer {
        let res = self.client.request(req).await.expect("the proxy answers");
        let (parts, body) = res.into_parts();
        let bytes = body.collect().await.expect("the body ends").to_bytes();
        Answer {
            status: parts.status,
            headers: parts.headers,
            body: String::from_utf8_lossy(&bytes).into_owned(),
        }
    }

    async fn chat(&self, key: &str, prompt: &str) -> Answer {
        let body = chat_body(prompt, false);
        self.send(self.request(Method::POST, "/v1/chat/completions", Some(key), Some(&body)))
            .await
    }

    /// Sends a chat request in the background: it will wait in the proxy.
    fn chat_in_background(&self, key: &str) -> tokio::task::JoinHandle<Answer> {
        let req = self.request(
            Method::POST,
            "/v1/chat/completions",
            Some(key),
            Some(&chat_body("Hello?", false)),
        );
        let client = self.client.clone();
        tokio::spawn(async move {
            let res = client.request(req).await.expect("the proxy answers");
            let (parts, body) = res.into_parts();
            let bytes = body.collect().await.expect("the body ends").to_bytes();
            Answer {
                status: parts.status,
                headers: parts.headers,
                body: String::from_utf8_lossy(&bytes).into_owned(),
            }
        })
    }

    /// Waits (by yielding, with no time limit of its own) until `n` requests
    /// wait in the proxy's rate windows.
    async fn until_rate_waiting(&self, n: usize) {
        while self
            .proxy
            .rate
            .as_ref()
            .expect("rate window on")
            .stats()
            .waiting
            != n
        {
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    fn upstream_received(&self) -> u64 {
        self.upstream.as_ref().map_or(0, |u| u.stats().received)
    }
}

#[tokio::test]
async fn chat_json_passes_status_headers_and_body_through() {
    let h = harness().await;
    let a = h.chat("sk-alice-0001", "Say hello.").await;

    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert!(a.header("content-type").starts_with("application/json"));
    let json = a.json();
    assert_eq!(json["object"], "chat.completion");
    assert!(json["usage"]["total_tokens"].as_u64().unwrap() > 0);
    // the upstream's rate-limit headers reach the caller
    assert_eq!(a.header("x-ratelimit-limit-requests"), "1000");
    assert_eq!(a.header("x-ratelimit-remaining-requests"), "999");
    assert_eq!(h.upstream_received(), 1);
    assert_eq!(h.proxy.rate.as_ref().unwrap().stats().admitted, 1);
}

#[tokio::test]
async fn chat_stream_passes_event_stream_through() {
    let h = harness().await;
    let body = chat_body("Say hello.", true);
    let res = h
        .client
        .request(h.request(
            Method::POST,
            "/v1/chat/completions",
            Some("sk-alice-0001"),
            Some(&body),
        ))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(res.headers()[header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let mut body = res.into_body();
    let mut events = Vec::new();
    let mut text = String::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            text.push_str(std::str::from_utf8(&data).unwrap());
        }
    }
    for line in text.lines().filter(|l| l.starts_with("data: ")) {
        events.push(line.trim_start_matches("data: ").to_owned());
    }
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    assert!(chunks
        .iter()
        .all(|c| c["object"] == "chat.completion.chunk"));
    let content: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert!(!content.is_empty());
    // include_usage: the last chunk before [DONE] carries the usage
    let usage = &chunks.last().unwrap()["usage"];
    assert_eq!(usage["completion_tokens"], 8);
    assert_eq!(h.upstream_received(), 1);
}

#[tokio::test]
async fn a_stream_asked_without_its_usage_gets_none_but_the_proxy_reads_it() {
    // The proxy asks the upstream for the usage chunk (include_usage), so
    // the window is corrected at the end of the stream, and removes it, so
    // the caller gets what it asked for.
    let h = harness().await;
    let mut body = chat_body("Say hello.", true);
    body.as_object_mut().unwrap().remove("stream_options");
    let res = h
        .client
        .request(h.request(
            Method::POST,
            "/v1/chat/completions",
            Some("sk-erin-0005"),
            Some(&body),
        ))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    let text = std::str::from_utf8(&bytes).unwrap();
    let events: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .collect();
    assert_eq!(events.last(), Some(&"[DONE]"), "{text}");
    for event in &events[..events.len() - 1] {
        let chunk: Value = serde_json::from_str(event).unwrap();
        assert!(
            chunk["usage"].is_null() && chunk["choices"].as_array().is_some_and(|c| !c.is_empty()),
            "a chunk the caller did not ask for: {event}"
        );
    }
    // the usage was read on the way: the estimator saw the actual tokens
    let health = h
        .send(h.request(Method::GET, "/health", None, None))
        .await
        .json();
    assert_eq!(health["estimates"]["requests"], 1, "{health}");
    assert!(
        health["estimates"]["actual_tokens"].as_u64() > Some(0),
        "{health}"
    );
}

/// An upstream whose stream the test feeds by hand: one chunk, then (when
/// told) the rest.
async fn manual_upstream() -> (SocketAddr, mpsc::Sender<&'static str>, oneshot::Sender<()>) {
    let (tx, rx) = mpsc::channel::<&'static str>(4);
    let rx = std::sync::Arc::new(std::sync::Mutex::new(Some(rx)));
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        axum::routing::post(move || {
            let rx = rx.lock().unwrap().take().expect("one streamed request");
            async move {
                let chunks = futures::stream::unfold(rx, |mut rx| async move {
                    let chunk = rx.recv().await?;
                    Some((Ok::<_, std::io::Error>(Bytes::from(chunk)), rx))
                });
                axum::http::Response::builder()
                    .header(header::CONTENT_TYPE, "text/event-stream")
                    .body(Body::from_stream(chunks))
                    .unwrap()
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        let _ = stopped.await;
    });
    tokio::spawn(server.into_future());
    (addr, tx, stop)
}

#[tokio::test]
async fn stream_chunks_arrive_before_the_upstream_finishes() {
    let (up_addr, feed, _stop_up) = manual_upstream().await;
    let config = ProxyConfig {
        stack: small_limits(),
        ..ProxyConfig::new(format!("http://{up_addr}"))
    };
    let (addr, _proxy, _stop) = serve_proxy(config).await;
    let client: TestClient = Client::builder(TokioExecutor::new()).build_http();
    let req = Request::post(format!("http://{addr}/v1/chat/completions"))
        .header(header::AUTHORIZATION, "Bearer sk-stream-01")
        .body(Full::new(Bytes::from(chat_body("Hi", true).to_string())))
        .unwrap();

    feed.send("data: {\"n\":1}\n\n").await.unwrap();
    let res = client.request(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let mut body = res.into_body();
    // The first chunk reaches the caller while the upstream has not sent
    // the second: the proxy does not buffer the stream.
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(first, "data: {\"n\":1}\n\n");

    feed.send("data: {\"n\":2}\n\n").await.unwrap();
    let second = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(second, "data: {\"n\":2}\n\n");
    feed.send("data: [DONE]\n\n").await.unwrap();
    drop(feed);
    let rest = body.collect().await.unwrap().to_bytes();
    assert_eq!(rest, "data: [DONE]\n\n");
}

#[tokio::test]
async fn missing_or_malformed_key_is_401_in_the_openai_shape() {
    let h = harness().await;
    let body = chat_body("Hi", false);
    let no_key = h
        .send(h.request(Method::POST, "/v1/chat/completions", None, Some(&body)))
        .await;
    assert_eq!(no_key.status, StatusCode::UNAUTHORIZED);
    assert_eq!(no_key.error_code(), "invalid_api_key");
    assert_eq!(no_key.json()["error"]["type"], "invalid_request_error");
    assert!(no_key.json()["error"]["message"].is_string());

    for bad in ["Basic c2stYWxpY2U=", "Bearer ", "sk-alice-0001"] {
        let mut req = h.request(Method::POST, "/v1/chat/completions", None, Some(&body));
        req.headers_mut()
            .insert(header::AUTHORIZATION, bad.parse().unwrap());
        let a = h.send(req).await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{bad:?}");
    }
    let models = h
        .send(h.request(Method::GET, "/v1/models", None, None))
        .await;
    assert_eq!(models.status, StatusCode::UNAUTHORIZED);
    assert_eq!(h.upstream_received(), 0, "nothing reached the upstream");
    assert_eq!(h.proxy.rate.as_ref().unwrap().stats().admitted, 0);
}

#[tokio::test]
async fn full_budget_and_queue_give_429_with_retry_after() {
    let h = harness().await;
    // the key's two requests a minute
    for _ in 0..2 {
        assert_eq!(h.chat("sk-alice-0001", "Hi").await.status, StatusCode::OK);
    }
    // two more wait for room (all the waiter slots there are)
    let waiting = [
        h.chat_in_background("sk-alice-0001"),
        h.chat_in_background("sk-alice-0001"),
    ];
    h.until_rate_waiting(2).await;

    let refused = h.chat("sk-alice-0001", "Hi").await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(refused.error_code(), "rate_limit_exceeded");
    let retry_after: u64 = refused
        .header("retry-after")
        .parse()
        .expect("retry-after in seconds");
    // At most one window and its guard band (60.25 s), rounded up.
    assert!((1..=61).contains(&retry_after), "retry-after {retry_after}");
    assert!(refused.header("retry-after-ms").parse::<u64>().is_ok());
    assert_eq!(
        h.upstream_received(),
        2,
        "refusals never reach the upstream"
    );
    assert_eq!(
        h.proxy.rate.as_ref().unwrap().stats().waiting,
        2,
        "the waiters still wait"
    );
    for task in waiting {
        task.abort();
    }
}

#[tokio::test]
async fn a_refusal_the_window_foresees_comes_at_once_with_the_exact_delay() {
    // rpm 1, a 5 s wait: the second request's room is a minute away. It
    // used to wait its 5 s holding an upstream slot, then hear 55 s; now it
    // hears at once how long the whole minute and its 250 ms guard band are
    // (rounded up: 61, allowing a few seconds for a slow machine between the
    // two requests, never 56).
    let mut stack = small_limits();
    stack.rate.requests_per_minute = Some(1);
    stack.rate.max_wait = Some(Duration::from_secs(5));
    let h = harness_with(fast_upstream(Faults::NONE), stack).await;
    assert_eq!(h.chat("sk-dave-0004", "Hi").await.status, StatusCode::OK);
    let refused = h.chat("sk-dave-0004", "Hi").await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
    let retry_after: u64 = refused.header("retry-after").parse().expect("seconds");
    assert!(
        (58..=61).contains(&retry_after),
        "retry-after {retry_after}"
    );
    let retry_after_ms: u64 = refused.header("retry-after-ms").parse().expect("ms");
    assert!(retry_after_ms > 57_000, "retry-after-ms {retry_after_ms}");
    assert_eq!(h.proxy.rate.as_ref().unwrap().stats().waiting, 0);
    assert_eq!(h.upstream_received(), 1);
}

#[tokio::test]
async fn one_keys_flood_does_not_delay_another_key() {
    // one upstream slot for everyone: alice's requests waiting for room in
    // her window hold none of it, so bob's pass
    let mut stack = small_limits();
    stack.concurrency.max_in_flight = 1;
    let h = harness_with(fast_upstream(Faults::NONE), stack).await;
    // alice floods: her budget is spent, her waiters fill the queue, the
    // rest of her requests are refused
    for _ in 0..2 {
        assert_eq!(h.chat("sk-alice-0001", "Hi").await.status, StatusCode::OK);
    }
    let waiting = [
        h.chat_in_background("sk-alice-0001"),
        h.chat_in_background("sk-alice-0001"),
    ];
    h.until_rate_waiting(2).await;
    let flood: Vec<_> = (0..8)
        .map(|_| h.chat_in_background("sk-alice-0001"))
        .collect();
    for task in flood {
        assert_eq!(task.await.unwrap().status, StatusCode::TOO_MANY_REQUESTS);
    }
    let health = h
        .send(h.request(Method::GET, "/health", None, None))
        .await
        .json();
    assert_eq!(
        health["in_flight"], 0,
        "alice's waiters hold no slot: {health}"
    );
    assert_eq!(health["queued"], 0, "{health}");

    // bob is served at once, ahead of alice's waiters, from his own budget
    for _ in 0..2 {
        let bob = h.chat("sk-bob-0002", "Hi").await;
        assert_eq!(bob.status, StatusCode::OK, "{}", bob.body);
        assert_eq!(bob.header("x-ratelimit-limit-requests"), "1000");
    }
    assert_eq!(
        h.proxy.rate.as_ref().unwrap().stats().waiting,
        2,
        "alice's waiters are still waiting"
    );
    assert!(waiting.iter().all(|t| !t.is_finished()));
    assert_eq!(h.upstream_received(), 4, "two of alice's and two of bob's");
    for task in waiting {
        task.abort();
    }
}

/// Every `value` of the Prometheus lines that start with `prefix`, summed.
fn metric_sum(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn metrics_show_the_counters() {
    let h = harness().await;
    for _ in 0..2 {
        assert_eq!(h.chat("sk-carol-003", "Hi").await.status, StatusCode::OK);
    }
    let waiting = [
        h.chat_in_background("sk-carol-003"),
        h.chat_in_background("sk-carol-003"),
    ];
    h.until_rate_waiting(2).await;
    assert_eq!(
        h.chat("sk-carol-003", "Hi").await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    let body = chat_body("Hi", false);
    let no_key = h
        .send(h.request(Method::POST, "/v1/chat/completions", None, Some(&body)))
        .await;
    assert_eq!(no_key.status, StatusCode::UNAUTHORIZED);

    let m = h.send(h.request(Method::GET, "/metrics", None, None)).await;
    assert_eq!(m.status, StatusCode::OK);
    assert!(m.header("content-type").starts_with("text/plain"));
    // the recorder is shared by every test in this process: at least ours
    assert!(
        metric_sum(&m.body, "llm_sluice_admitted_total{layer=\"rate\"}") >= 2.0,
        "{}",
        m.body
    );
    assert!(
        metric_sum(&m.body, "llm_sluice_rejected_total{layer=\"rate\"") >= 1.0,
        "{}",
        m.body
    );
    assert!(m.body.contains("llm_sluice_in_flight"), "{}", m.body);
    assert!(
        metric_sum(
            &m.body,
            "proxy_responses_total{route=\"chat_completions\",status=\"429\"}"
        ) >= 1.0
    );
    assert!(
        metric_sum(
            &m.body,
            "proxy_responses_total{route=\"chat_completions\",status=\"401\"}"
        ) >= 1.0
    );
    assert!(!m.body.contains("sk-carol"), "no key in the metrics");
    for task in waiting {
        task.abort();
    }
}

#[tokio::test]
async fn complexity_rule_routes_auto_requests() {
    let mut stack = small_limits();
    stack.rate.requests_per_minute = Some(100);
    let h = harness_with(fast_upstream(Faults::NONE), stack).await;
    let model_of = |a: &Answer| {
        (
            a.header(router::ROUTED_HEADER).to_owned(),
            a.json()["model"].clone(),
        )
    };

    let simple = h.chat("sk-dave-0004", "What is 2 + 2?").await;
    assert_eq!(
        model_of(&simple),
        ("sim-1-mini".into(), json!("sim-1-mini"))
    );
    let keyword = h
        .chat(
            "sk-dave-0004",
            "Prove that there are infinitely many primes.",
        )
        .await;
    assert_eq!(model_of(&keyword), ("sim-1".into(), json!("sim-1")));
    let long = h.chat("sk-dave-0004", &"word ".repeat(500)).await;
    assert_eq!(model_of(&long), ("sim-1".into(), json!("sim-1")));

    // a named model is left alone
    let mut body = chat_body("Prove it.", false);
    body["model"] = json!("my-model");
    let named = h
        .send(h.request(
            Method::POST,
            "/v1/chat/completions",
            Some("sk-dave-0004"),
            Some(&body),
        ))
        .await;
    assert_eq!(named.header(router::ROUTED_HEADER), "");
    assert_eq!(named.json()["model"], "my-model");
}

#[tokio::test]
async fn request_larger_than_the_token_budget_is_413() {
    let h = harness().await;
    let mut body = chat_body("Hi", false);
    body["max_tokens"] = json!(50_000); // over the key's 10,000 a minute
    let a = h
        .send(h.request(
            Method::POST,
            "/v1/chat/completions",
            Some("sk-erin-0005"),
            Some(&body),
        ))
        .await;
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(a.error_code(), "request_too_large");
    assert_eq!(h.upstream_received(), 0);
}

#[tokio::test]
async fn bad_priority_deadline_or_body_is_400() {
    let h = harness().await;
    let body = chat_body("Hi", false);
    for (name, value) in [
        (router::PRIORITY_HEADER, "urgent"),
        (router::DEADLINE_HEADER, "soon"),
    ] {
        let mut req = h.request(
            Method::POST,
            "/v1/chat/completions",
            Some("sk-fay-00006"),
            Some(&body),
        );
        req.headers_mut().insert(name, value.parse().unwrap());
        assert_eq!(h.send(req).await.status, StatusCode::BAD_REQUEST, "{name}");
    }
    let mut req = h.request(
        Method::POST,
        "/v1/chat/completions",
        Some("sk-fay-00006"),
        None,
    );
    *req.body_mut() = Full::new(Bytes::from_static(b"not json"));
    assert_eq!(h.send(req).await.status, StatusCode::BAD_REQUEST);

    // valid ones are accepted
    let mut req = h.request(
        Method::POST,
        "/v1/chat/completions",
        Some("sk-fay-00006"),
        Some(&body),
    );
    req.headers_mut()
        .insert(router::PRIORITY_HEADER, "high".parse().unwrap());
    req.headers_mut()
        .insert(router::DEADLINE_HEADER, "30000".parse().unwrap());
    assert_eq!(h.send(req).await.status, StatusCode::OK);
    assert_eq!(h.upstream_received(), 1);
}

#[tokio::test]
async fn upstream_error_passes_through_untouched() {
    // every request meets a quota 429: not retryable, passed on as it is
    let faults = Faults {
        quota_429: 1.0,
        ..Faults::NONE
    };
    let h = harness_with(fast_upstream(faults), small_limits()).await;
    let a = h.chat("sk-gus-00007", "Hi").await;
    assert_eq!(a.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(a.error_code(), "insufficient_quota");
    assert_eq!(h.upstream_received(), 1, "a spent quota is not retried");
}

#[tokio::test]
async fn unreachable_upstream_is_502() {
    // a port that was free a moment ago and has nobody listening now
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let mut stack = small_limits();
    stack.retry.enabled = false;
    let config = ProxyConfig {
        stack,
        ..ProxyConfig::new(format!("http://{closed}"))
    };
    let (addr, _proxy, _stop) = serve_proxy(config).await;
    let client: TestClient = Client::builder(TokioExecutor::new()).build_http();
    let req = Request::post(format!("http://{addr}/v1/chat/completions"))
        .header(header::AUTHORIZATION, "Bearer sk-hal-00008")
        .body(Full::new(Bytes::from(chat_body("Hi", false).to_string())))
        .unwrap();
    let res = client.request(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::BAD_GATEWAY);
}

#[tokio::test]
async fn health_reports_the_stack() {
    let h = harness().await;
    assert_eq!(h.chat("sk-ivy-00009", "Hi").await.status, StatusCode::OK);
    let a = h.send(h.request(Method::GET, "/health", None, None)).await;
    assert_eq!(a.status, StatusCode::OK);
    let json = a.json();
    assert_eq!(json["status"], "ok");
    assert_eq!(json["circuit"], "closed");
    assert_eq!(json["keys"], 1);
    assert_eq!(
        json["in_flight"], 0,
        "the answer was read: its slot is back"
    );
}

#[tokio::test]
async fn models_are_listed_from_the_upstream() {
    let h = harness().await;
    let a = h
        .send(h.request(Method::GET, "/v1/models", Some("sk-jo-000010"), None))
        .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.json()["data"][0]["id"], sim::MODEL);
}

#[test]
fn library_errors_map_to_statuses_and_retry_after() {
    let cases: [(Error, u16, Option<&str>); 8] = [
        (
            Error::RateLimited {
                retry_after: Some(Duration::from_millis(2_500)),
            },
            429,
            Some("3"),
        ),
        (Error::RateLimited { retry_after: None }, 429, Some("1")),
        (Error::Overloaded { queued: 10 }, 503, Some("1")),
        (
            Error::QueueTimeout {
                waited: Duration::from_secs(5),
            },
            503,
            Some("1"),
        ),
        (
            Error::CircuitOpen {
                retry_after: Duration::from_secs(10),
            },
            503,
            Some("10"),
        ),
        (
            Error::Timeout {
                kind: TimeoutKind::Attempt,
            },
            504,
            None,
        ),
        (Error::DeadlineExceeded, 504, None),
        (
            Error::RequestTooLarge {
                tokens: 10,
                limit: 5,
            },
            413,
            None,
        ),
    ];
    for (err, status, retry_after) in cases {
        let boxed: BoxError = Box::new(err.clone());
        let res = router::error_response(&boxed);
        assert_eq!(res.status().as_u16(), status, "{err:?}");
        let header = res
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap());
        assert_eq!(header, retry_after, "{err:?}");
    }
    let other: BoxError = "connection refused".into();
    assert_eq!(
        router::error_response(&other).status(),
        StatusCode::BAD_GATEWAY
    );
}

#[tokio::test]
async fn upstream_key_replaces_the_callers_key() {
    // an upstream that answers with the Authorization header it received
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        axum::routing::post(|headers: HeaderMap| async move {
            let auth = headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned();
            axum::Json(json!({ "auth": auth }))
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up_addr = listener.local_addr().unwrap();
    tokio::spawn(axum::serve(listener, app).into_future());

    let client: TestClient = Client::builder(TokioExecutor::new()).build_http();
    for (upstream_key, expected) in [
        (Some("sk-proxy-own"), "Bearer sk-proxy-own"),
        (None, "Bearer sk-kim-000011"),
    ] {
        let config = ProxyConfig {
            upstream_key: upstream_key.map(String::from),
            stack: small_limits(),
            ..ProxyConfig::new(format!("http://{up_addr}"))
        };
        let (addr, _proxy, _stop) = serve_proxy(config).await;
        let req = Request::post(format!("http://{addr}/v1/chat/completions"))
            .header(header::AUTHORIZATION, "Bearer sk-kim-000011")
            .body(Full::new(Bytes::from(chat_body("Hi", false).to_string())))
            .unwrap();
        let res = client.request(req).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        let body = res.into_body().collect().await.unwrap().to_bytes();
        let json: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["auth"], expected);
    }
}

#[test]
fn bad_settings_are_config_errors() {
    for upstream in ["https://api.example.com", "not a url", "http://"] {
        let err = Proxy::new(ProxyConfig::new(upstream), None).unwrap_err();
        assert_eq!(err.field(), "upstream", "{upstream}");
    }
    let config = ProxyConfig {
        upstream_key: Some("bad\nkey".into()),
        ..ProxyConfig::new("http://127.0.0.1:1")
    };
    assert_eq!(
        Proxy::new(config, None).unwrap_err().field(),
        "upstream_key"
    );
    let mut config = ProxyConfig::new("http://127.0.0.1:1");
    config.stack.concurrency.max_in_flight = 0;
    let err = Proxy::new(config, None).unwrap_err();
    assert_eq!(
        (err.section(), err.field()),
        (Some("concurrency"), "max_in_flight")
    );
}

/// An upstream that logs the prompt of every request it receives; the
/// prompt "hold" gets a stream that ends when `release` is dropped, any
/// other a small JSON answer.
async fn recording_upstream() -> (
    SocketAddr,
    std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    mpsc::Sender<&'static str>,
) {
    let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let (release, rx) = mpsc::channel::<&'static str>(1);
    let rx = std::sync::Arc::new(std::sync::Mutex::new(Some(rx)));
    let seen = log.clone();
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        axum::routing::post(move |body: Bytes| {
            let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let prompt = json["messages"][1]["content"]
                .as_str()
                .unwrap_or("")
                .to_owned();
            seen.lock().unwrap().push(prompt.clone());
            let held = (prompt == "hold")
                .then(|| rx.lock().unwrap().take())
                .flatten();
            async move {
                let body = match held {
                    Some(rx) => {
                        Body::from_stream(futures::stream::unfold(rx, |mut rx| async move {
                            let chunk = rx.recv().await?;
                            Some((Ok::<_, std::io::Error>(Bytes::from(chunk)), rx))
                        }))
                    }
                    None => Body::from(r#"{"object":"chat.completion"}"#),
                };
                axum::http::Response::new(body)
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(axum::serve(listener, app).into_future());
    (addr, log, release)
}

#[tokio::test]
async fn priority_header_orders_the_queue() {
    let (up_addr, log, release) = recording_upstream().await;
    let mut stack = small_limits();
    stack.rate.requests_per_minute = Some(100);
    stack.concurrency.max_in_flight = 1;
    let config = ProxyConfig {
        stack,
        ..ProxyConfig::new(format!("http://{up_addr}"))
    };
    let (addr, _proxy, _stop) = serve_proxy(config).await;
    let client: TestClient = Client::builder(TokioExecutor::new()).build_http();
    let request = |prompt: &str, priority: &str| {
        Request::post(format!("http://{addr}/v1/chat/completions"))
            .header(header::AUTHORIZATION, "Bearer sk-lee-000012")
            .header(router::PRIORITY_HEADER, priority)
            .body(Full::new(Bytes::from(chat_body(prompt, true).to_string())))
            .unwrap()
    };
    let queued = || {
        let client = client.clone();
        async move {
            let req = Request::get(format!("http://{addr}/health"))
                .body(Full::new(Bytes::new()))
                .unwrap();
            let res = client.request(req).await.unwrap();
            let body = res.into_body().collect().await.unwrap().to_bytes();
            serde_json::from_slice::<Value>(&body).unwrap()["queued"].as_u64()
        }
    };
    let until_queued = |n: u64| async move {
        while queued().await != Some(n) {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    };

    // the one upstream slot is held by a stream that has not ended
    let held = client.request(request("hold", "normal")).await.unwrap();
    assert_eq!(held.status(), StatusCode::OK);
    // low arrives first, high second
    let low = tokio::spawn(client.request(request("low", "low")));
    until_queued(1).await;
    let high = tokio::spawn(client.request(request("high", "high")));
    until_queued(2).await;

    drop(release); // the stream ends, its slot is freed
    held.into_body().collect().await.unwrap();
    assert_eq!(high.await.unwrap().unwrap().status(), StatusCode::OK);
    assert_eq!(low.await.unwrap().unwrap().status(), StatusCode::OK);
    assert_eq!(*log.lock().unwrap(), ["hold", "high", "low"]);
}

#[tokio::test]
async fn deadline_header_gives_504_when_the_upstream_hangs() {
    // every request hangs upstream: only the caller's deadline ends it
    let faults = Faults {
        hang: 1.0,
        ..Faults::NONE
    };
    let h = harness_with(fast_upstream(faults), small_limits()).await;
    let body = chat_body("Hi", false);
    let mut req = h.request(
        Method::POST,
        "/v1/chat/completions",
        Some("sk-max-000013"),
        Some(&body),
    );
    req.headers_mut()
        .insert(router::DEADLINE_HEADER, "50".parse().unwrap());
    let a = h.send(req).await;
    assert_eq!(a.status, StatusCode::GATEWAY_TIMEOUT, "{}", a.body);
    assert_eq!(a.error_code(), "timeout");
    assert_eq!(h.upstream_received(), 1, "a passed deadline is not retried");
}

/// An upstream that answers every chat request with what `answer` makes of
/// the requested model, and counts the requests per model.
async fn scripted_upstream(
    answer: fn(&str) -> axum::http::Response<Body>,
) -> (
    SocketAddr,
    std::sync::Arc<std::sync::Mutex<std::collections::BTreeMap<String, u32>>>,
) {
    let counts = std::sync::Arc::new(std::sync::Mutex::new(std::collections::BTreeMap::new()));
    let seen = counts.clone();
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        axum::routing::post(move |body: Bytes| {
            let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let model = json["model"].as_str().unwrap_or("").to_owned();
            *seen.lock().unwrap().entry(model.clone()).or_insert(0) += 1;
            async move { answer(&model) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(axum::serve(listener, app).into_future());
    (addr, counts)
}

/// A 429 the way OpenAI sends one when a key's requests are spent: the
/// delay only in `x-ratelimit-reset-requests`, which the SDKs do not read.
fn always_429(_model: &str) -> axum::http::Response<Body> {
    axum::http::Response::builder()
        .status(StatusCode::TOO_MANY_REQUESTS)
        .header(header::CONTENT_TYPE, "application/json")
        .header("x-ratelimit-limit-requests", "60")
        .header("x-ratelimit-remaining-requests", "0")
        .header("x-ratelimit-reset-requests", "20ms")
        .body(Body::from(
            r#"{"error":{"message":"Rate limit reached","type":"requests","param":null,"code":"rate_limit_exceeded"}}"#,
        ))
        .unwrap()
}

/// A chat call as the official SDKs make it: retried up to twice on 408,
/// 409, 429 and 5xx, unless the answer says `x-should-retry: false` (or
/// forced by `x-should-retry: true`). Returns the last answer.
async fn sdk_call(h: &Harness, key: &str, body: &Value) -> Answer {
    let mut retries = 0;
    loop {
        let a = h
            .send(h.request(Method::POST, "/v1/chat/completions", Some(key), Some(body)))
            .await;
        let status = a.status.as_u16();
        let retryable = match a.header("x-should-retry") {
            "true" => true,
            "false" => false,
            _ => matches!(status, 408 | 409 | 429) || status >= 500,
        };
        if !retryable || retries == 2 {
            return a;
        }
        retries += 1;
    }
}

async fn proxy_for(upstream: SocketAddr, stack: StackConfig) -> Harness {
    let (addr, proxy, stop) = serve_proxy(ProxyConfig {
        stack,
        ..ProxyConfig::new(format!("http://{upstream}"))
    })
    .await;
    Harness {
        addr,
        proxy,
        upstream: None,
        client: Client::builder(TokioExecutor::new()).build_http(),
        _sim: None,
        _stop: stop,
    }
}

#[tokio::test]
async fn an_sdk_call_to_an_always_429_upstream_costs_one_proxy_retry_run() {
    let (up, counts) = scripted_upstream(always_429).await;
    let mut stack = small_limits();
    stack.rate.requests_per_minute = Some(100);
    let h = proxy_for(up, stack).await;
    let body = chat_body("Hi", false);
    let mut per_call = Vec::new();
    for _ in 0..3 {
        let before: u32 = counts.lock().unwrap().values().sum();
        let a = sdk_call(&h, "sk-nia-000014", &body).await;
        per_call.push(counts.lock().unwrap().values().sum::<u32>() - before);

        assert_eq!(a.status, StatusCode::TOO_MANY_REQUESTS, "{}", a.body);
        assert_eq!(a.error_code(), "rate_limit_exceeded", "the upstream's body");
        // The proxy retried: the caller is told not to, and when to come
        // back, in the headers the SDKs read.
        assert_eq!(a.header("x-should-retry"), "false");
        let ms: u64 = a.header("retry-after-ms").parse().expect("retry-after-ms");
        let secs: u64 = a.header("retry-after").parse().expect("retry-after");
        assert!(
            ms > 0 && secs > 0,
            "retry-after-ms {ms}, retry-after {secs}"
        );
        assert_eq!(a.header("x-ratelimit-reset-requests"), "20ms");
    }
    eprintln!("upstream attempts per SDK call, always 429: {per_call:?}");
    // 1 + the proxy's 2 retries, not multiplied by the SDK's 2 retries (9)
    assert_eq!(per_call, [3, 3, 3]);
}

/// A spent quota as OpenAI sends it: a 429 that only its body tells apart,
/// with no `x-should-retry`.
fn quota_spent(_model: &str) -> axum::http::Response<Body> {
    axum::http::Response::builder()
        .status(StatusCode::TOO_MANY_REQUESTS)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(
            r#"{"error":{"message":"You exceeded your current quota.","type":"insufficient_quota","param":null,"code":"insufficient_quota"}}"#,
        ))
        .unwrap()
}

#[tokio::test]
async fn a_spent_quota_reaches_the_upstream_once_per_sdk_call() {
    let (up, counts) = scripted_upstream(quota_spent).await;
    let mut stack = small_limits();
    stack.rate.requests_per_minute = Some(100);
    let h = proxy_for(up, stack).await;
    let a = sdk_call(&h, "sk-quinn-0017", &chat_body("Hi", false)).await;
    assert_eq!(a.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(a.error_code(), "insufficient_quota");
    // Not retried by the proxy (it read the body), nor by the SDK, which
    // cannot tell this 429 from a passing one without the header.
    assert_eq!(a.header("x-should-retry"), "false");
    assert_eq!(counts.lock().unwrap().values().sum::<u32>(), 1);
}

/// 500 for the strong model, a small completion for any other.
fn strong_model_fails(model: &str) -> axum::http::Response<Body> {
    let (status, body) = if model == "sim-1" {
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            r#"{"error":{"message":"boom","type":"server_error","param":null,"code":null}}"#,
        )
    } else {
        (
            StatusCode::OK,
            r#"{"object":"chat.completion","choices":[]}"#,
        )
    };
    axum::http::Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body))
        .unwrap()
}

#[tokio::test]
async fn a_run_of_500s_on_one_model_opens_only_that_models_breaker() {
    let (up, counts) = scripted_upstream(strong_model_fails).await;
    let mut stack = small_limits();
    stack.rate.requests_per_minute = Some(100);
    stack.breaker.consecutive_failures = Some(3);
    let h = proxy_for(up, stack).await;
    let complex = chat_body("Prove that the sky is blue.", false);
    let simple = chat_body("Hi", false);

    // The strong model's three attempts fail: its breaker opens.
    let failed = h
        .send(h.request(
            Method::POST,
            "/v1/chat/completions",
            Some("sk-olga-00015"),
            Some(&complex),
        ))
        .await;
    assert_eq!(failed.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(failed.header(router::ROUTED_HEADER), "sim-1");
    assert_eq!(
        failed.header("x-should-retry"),
        "false",
        "the proxy retried"
    );
    let refused = h
        .send(h.request(
            Method::POST,
            "/v1/chat/completions",
            Some("sk-olga-00015"),
            Some(&complex),
        ))
        .await;
    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(refused.error_code(), "upstream_unavailable");
    assert_ne!(
        refused.header("x-should-retry"),
        "false",
        "not retried, and a probe may pass after retry-after"
    );
    assert_eq!(counts.lock().unwrap().get("sim-1"), Some(&3));

    // Requests routed to the cheap model, from any key, are unaffected.
    for key in ["sk-olga-00015", "sk-pete-00016"] {
        let ok = h
            .send(h.request(
                Method::POST,
                "/v1/chat/completions",
                Some(key),
                Some(&simple),
            ))
            .await;
        assert_eq!(ok.status, StatusCode::OK, "{}", ok.body);
        assert_eq!(ok.header(router::ROUTED_HEADER), "sim-1-mini");
    }
    let breakers = h.proxy.breaker.as_ref().expect("breaker on");
    let state = |model: &str| breakers.partition_state(&llm_sluice::PartitionKey::new(model));
    assert_eq!(state("sim-1"), Some(llm_sluice::CircuitState::Open));
    assert_eq!(state("sim-1-mini"), Some(llm_sluice::CircuitState::Closed));
    let health = h
        .send(h.request(Method::GET, "/health", None, None))
        .await
        .json();
    assert_eq!(health["circuits"]["sim-1"], "open", "{health}");
    assert_eq!(health["circuits"]["sim-1-mini"], "closed", "{health}");
}

#[test]
fn retry_advice_says_false_only_when_a_caller_retry_is_spent_or_pointless() {
    use llm_sluice::classify::{Classification, Outcome};
    use router::{retry_advice, Ending, RetryPolicy};
    let on = RetryPolicy {
        retries: true,
        max_delay: Duration::from_secs(60),
    };
    let off = RetryPolicy {
        retries: false,
        ..on
    };
    let limited = |delay: u64| {
        Classification::new(Outcome::RateLimited {
            quota_exhausted: false,
        })
        .with_status(429)
        .with_retry_after(Some(Duration::from_secs(delay)))
    };
    let spent = Classification::new(Outcome::RateLimited {
        quota_exhausted: true,
    })
    .with_status(429);
    let failed = Classification::new(Outcome::ServerError).with_status(500);
    let ok = Classification::success(None).with_status(200);
    let open = |secs: u64| Error::CircuitOpen {
        retry_after: Duration::from_secs(secs),
    };
    let window = Error::RateLimited {
        retry_after: Some(Duration::from_secs(3)),
    };
    let attempt = Error::Timeout {
        kind: TimeoutKind::Attempt,
    };
    let too_large = Error::RequestTooLarge {
        tokens: 10,
        limit: 5,
    };
    let no = Some(false);
    let cases: [(&str, Ending<'_>, u32, RetryPolicy, Option<bool>); 18] = [
        ("success", Ending::Upstream(&ok), 3, on, None),
        ("429 retried", Ending::Upstream(&limited(1)), 3, on, no),
        ("429 declined", Ending::Upstream(&limited(1)), 1, on, no),
        (
            "429, proxy retries off",
            Ending::Upstream(&limited(1)),
            1,
            off,
            None,
        ),
        (
            "429 over the cap",
            Ending::Upstream(&limited(600)),
            1,
            off,
            no,
        ),
        ("spent quota", Ending::Upstream(&spent), 1, off, no),
        ("500 retried", Ending::Upstream(&failed), 3, on, no),
        (
            "500, proxy retries off",
            Ending::Upstream(&failed),
            1,
            off,
            None,
        ),
        ("unreachable, retried", Ending::Unreachable, 3, on, no),
        (
            "unreachable, retries off",
            Ending::Unreachable,
            1,
            off,
            None,
        ),
        (
            "breaker open, short wait",
            Ending::Refused(&open(30)),
            1,
            on,
            None,
        ),
        (
            "breaker open, long wait",
            Ending::Refused(&open(600)),
            1,
            on,
            no,
        ),
        (
            "breaker opened mid-retry",
            Ending::Refused(&open(30)),
            2,
            on,
            no,
        ),
        ("probe slots taken", Ending::ProbesInFlight, 1, on, None),
        (
            "probe slots taken, retried",
            Ending::ProbesInFlight,
            2,
            on,
            no,
        ),
        ("own rate window", Ending::Refused(&window), 1, on, None),
        (
            "attempt timeout declined",
            Ending::Refused(&attempt),
            1,
            on,
            no,
        ),
        ("never fits", Ending::Refused(&too_large), 1, off, no),
    ];
    for (name, ending, attempts, policy, expected) in cases {
        assert_eq!(retry_advice(ending, attempts, policy), expected, "{name}");
    }
}
