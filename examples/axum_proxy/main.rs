//! An OpenAI-compatible proxy that keeps its callers inside their limits.
//!
//! ```text
//! cargo run --example axum_proxy --features sim-server                 # serve, embedded upstream
//! cargo run --example axum_proxy --features sim-server -- --self-test  # what CI runs
//! cargo run --example axum_proxy --features sim-server -- \
//!     --listen 127.0.0.1:8080 --upstream http://127.0.0.1:9000 --upstream-key "$KEY"
//! ```
//!
//! # Routes
//!
//! - `POST /v1/chat/completions`: forwarded through the llm-sluice stack.
//!   JSON answers come back whole; `"stream": true` answers
//!   (`text/event-stream`) are passed through chunk by chunk as they arrive.
//!   The upstream's status, headers (`x-ratelimit-*`, `retry-after`, ...)
//!   and body pass through unchanged, except for the retry advice added to
//!   a failed answer (see "Retries" below).
//! - `GET /v1/models`: the upstream's list.
//! - `GET /health`: `{"status":"ok", "circuit", "circuits", "in_flight",
//!   "queued", "rate_waiting", "keys"}`: `circuits` maps the cheap and the
//!   strong model to their breaker's state, `circuit` is the worse of the
//!   two.
//! - `GET /metrics`: every `llm_sluice_*` metric and `proxy_responses_total`
//!   in Prometheus text (`metrics-exporter-prometheus`, no HTTP listener of
//!   its own). The recorder is installed before the layers are built,
//!   because the layers resolve their metric handles when built.
//!
//! # What each request goes through
//!
//! 1. `Authorization: Bearer <key>` is required (401 in the OpenAI error
//!    shape otherwise). The key is the request's `PartitionKey`: each key has
//!    its own requests- and tokens-per-minute windows, so one key's flood
//!    does not spend another key's budget. The key is never logged: its
//!    `Debug` shows a fingerprint, and the first four characters only of a
//!    key of at least sixteen.
//! 2. Tokens are estimated from the body by the library's
//!    `estimate::EstimateLayer`: prompt characters / 4 plus a few tokens per
//!    message, plus `max_completion_tokens` (or `max_tokens`) times `n`;
//!    without either, a high quantile of the model's recent completions (256
//!    until it has seen enough). A streamed request sent without
//!    `stream_options.include_usage` gets it, so the stream ends with the
//!    provider's usage; that chunk is read, then removed from what the
//!    caller receives (`meter::StripUsageChunk`). The rate windows reserve the estimate and, when the
//!    response body ends, correct it to the usage the body reported (a JSON
//!    body's `usage`, a stream's usage chunk); a stream cut off before its
//!    usage keeps its estimate. `/health` shows the estimated and actual
//!    tokens so far.
//! 3. `x-priority: low|normal|high|critical` orders the queues;
//!    `x-deadline-ms: N` gives up after N ms (at most, and by default, the
//!    stack's deadline of 120 s), with a 504.
//! 4. **Routing by complexity.** A request for model `auto` (or for no
//!    model) goes to the strong model (`--strong-model`, default `sim-1`) if
//!    its prompt has at least `--strong-from-chars` characters (default
//!    2,000) or contains one of the words "step by step", "prove",
//!    "analyze", "analyse", "refactor", "debug"; otherwise to the cheap model
//!    (`--cheap-model`, default `sim-1-mini`). The answer's `x-routed-model`
//!    header says which. A request naming any other model is sent as it is.
//! 5. The stack is the llm-sluice stack in the order `LlmStack` uses
//!    (outermost first: deadline → retry → circuit breaker → per-key rate
//!    windows' admission → concurrency limit with its priority queue → the
//!    windows' dispatch → attempt timeouts), then `ErrorBodyLayer` (so a spent-quota 429 is never
//!    retried), then the hyper-util client. It is built from one
//!    `StackConfig` in two parts, because the breaker is keyed by model and
//!    the limits by caller key (see "Circuit breakers per model"). The
//!    settings are `ProxyConfig::default_stack()`: `StackConfig::default()`
//!    plus a 120 s deadline and, per caller key, 60 requests and 60,000
//!    tokens a minute with at most 1,024 requests waiting 5 s for room. A TOML
//!    file (`--config`, feature `serde`) replaces them; `--rpm`, `--tpm` and
//!    `--max-in-flight` override single values. Streamed answers hold their
//!    concurrency slot until the stream ends.
//!
//! # Circuit breakers per model
//!
//! One upstream serves every model, but a model can fail alone (an
//! overloaded deployment, a bad rollout), so each model has its own breaker:
//! a run of 500s from the strong model opens its breaker, and requests
//! routed to the cheap model still pass. The breaker reads the model as the
//! request's partition key while the request passes it; the concurrency
//! limit and the rate windows, inside it, read the caller's key, put back
//! in its place. The stack's `breaker.per_partition` bounds how many models
//! have a breaker of their own (64 when unset; past that, idle ones are
//! evicted, and while none is idle new models share one).
//!
//! # Isolation between keys
//!
//! Each key spends its own window, so one key's flood cannot use up
//! another's budget, nor the shared upstream slots: a request waits for
//! room in its key's window *before* it queues for a slot, holding none
//! (the window is split around the concurrency limit; a request is still
//! counted from when it is sent). A request whose room comes later than
//! the 5 s it may wait, or after its deadline, is refused at once with
//! 429 and the exact delay.
//!
//! # Errors
//!
//! The library's refusals become HTTP statuses with an OpenAI-shaped body:
//!
//! | error | status | `retry-after` |
//! |---|---|---|
//! | `RateLimited` (the key's window and its wait queue are full) | 429 | when room is expected, rounded up to seconds (also `retry-after-ms`) |
//! | `Overloaded`, `QueueTimeout` | 503 | 1 s |
//! | `CircuitOpen` | 503 | until the breaker probes again |
//! | `Timeout`, `DeadlineExceeded` | 504 | — |
//! | `RequestTooLarge` (estimate over the key's tokens per minute) | 413 | — |
//! | the upstream could not be reached | 502 | — |
//!
//! # Retries: the proxy's, not the caller's too
//!
//! The official OpenAI SDKs retry 408, 409, 429 and 5xx twice on their own,
//! unless the answer says `x-should-retry: false`. Behind a proxy that has
//! retried already, that multiplies: an upstream answering 429 to
//! everything got 9 attempts per SDK call (3 by the proxy times 3 by the
//! SDK). So a failed answer carries `x-should-retry: false` when a retry by
//! the caller is spent or pointless:
//!
//! - the proxy made more than one attempt (its own retries are spent; this
//!   includes a breaker that opened between two attempts);
//! - the proxy retries, and stopped at the first attempt of a retryable
//!   answer (its retry budget is spent, the server's delay is over its cap,
//!   or the deadline is too near);
//! - the answer is one no retry fixes: a spent quota (read from the error
//!   body), a caller error, the upstream's own `x-should-retry: false`, a
//!   request larger than the key's tokens a minute;
//! - the delay it knows is over `retry.max_server_delay` (60 s by default,
//!   the shortest any official SDK honours), as from a breaker open for
//!   long: an SDK would come back after its own shorter backoff.
//!
//! With it goes the delay the proxy knows, as `retry-after-ms` and
//! `retry-after` when the upstream's answer had neither (OpenAI often puts
//! it only in `x-ratelimit-reset-requests`, which the SDKs do not read).
//! Otherwise the header is left as the upstream sent it: the proxy's own
//! refusals (its rate window, a full queue, an open breaker's short wait, a
//! half-open breaker whose probes are all out, a deadline that ran out) and
//! anything when the proxy's retries are off are for the caller to retry
//! after `retry-after`. Against an upstream that always answers 429, an
//! SDK call now makes 3 upstream attempts (`tests/proxy`).
//!
//! Without `--upstream` the proxy starts a simulated OpenAI-compatible
//! upstream (`llm_sluice::sim`) on `127.0.0.1:0`, so it runs with no setup.
//! `--upstream` takes a plain `http://` URL (put a TLS-terminating sidecar in
//! front of an `https://` provider, or swap in a TLS connector).

mod router;

use std::future::IntoFuture;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{header, Method, Request, StatusCode};
use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use llm_sluice::sim::{self, Dist, Upstream};
use serde_json::{json, Value};

use llm_sluice::StackConfig;
use router::{install_metrics, Proxy, ProxyConfig, Routing};

// No `Debug`: it would print `--upstream-key` whole.
#[derive(Parser)]
#[command(about = "An OpenAI-compatible proxy built on llm-sluice")]
struct Args {
    /// Address to serve on (port 0 picks a free one; the address is printed).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Upstream base URL (http://host:port). Default: an embedded simulated
    /// upstream on 127.0.0.1:0.
    #[arg(long)]
    upstream: Option<String>,
    /// Key sent upstream instead of the caller's.
    #[arg(long)]
    upstream_key: Option<String>,
    /// The stack's settings as a TOML `StackConfig` (needs `--features
    /// serde`). Default: `ProxyConfig::default_stack()`.
    #[arg(long)]
    config: Option<std::path::PathBuf>,
    /// Requests per minute, per caller key (default 60).
    #[arg(long)]
    rpm: Option<u64>,
    /// Tokens per minute, per caller key (default 60,000).
    #[arg(long)]
    tpm: Option<u64>,
    /// Requests upstream at once, over all keys (default 64).
    #[arg(long)]
    max_in_flight: Option<usize>,
    /// Model for simple `auto` requests.
    #[arg(long, default_value = "sim-1-mini")]
    cheap_model: String,
    /// Model for complex `auto` requests.
    #[arg(long, default_value = "sim-1")]
    strong_model: String,
    /// Prompt characters from which an `auto` request is complex.
    #[arg(long, default_value_t = 2_000)]
    strong_from_chars: usize,
    /// Start, check a few requests against itself, print the results, exit
    /// (0 only if all are as expected).
    #[arg(long)]
    self_test: bool,
}

/// Requests per minute per key in `--self-test`: small, so the test can
/// show a 429 after a few requests.
const SELF_TEST_RPM: u64 = 4;

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(args).await {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<ExitCode, tower::BoxError> {
    // Before any layer is built: layers resolve their metric handles then.
    let metrics = install_metrics();

    let mut sim_server = None;
    let upstream = match &args.upstream {
        Some(url) => url.clone(),
        None => {
            let latency = if args.self_test {
                (Duration::from_millis(5), 2_000.0)
            } else {
                (Duration::from_millis(300), 80.0)
            };
            // Per-key limits like a provider's, above the proxy's own.
            let upstream = Upstream::builder()
                .requests_per_window(1_000)
                .tokens_per_window(1_000_000)
                .time_to_first_token(Dist::fixed(latency.0))
                .tokens_per_second(Dist::Fixed(latency.1))
                .tokens_per_chunk(4)
                .default_max_tokens(64)
                .record_log(false)
                .build()?;
            let (addr, handle) = sim::serve(upstream, "127.0.0.1:0".parse()?).await?;
            sim_server = Some(handle);
            format!("http://{addr}")
        }
    };

    let mut stack = match &args.config {
        Some(path) => read_stack_config(path)?,
        None => ProxyConfig::default_stack(),
    };
    if let Some(rpm) = args.rpm {
        stack.rate.requests_per_minute = Some(rpm);
    }
    if let Some(tpm) = args.tpm {
        stack.rate.tokens_per_minute = Some(tpm);
    }
    if let Some(n) = args.max_in_flight {
        stack.concurrency.max_in_flight = n;
    }
    if args.self_test {
        // Over-budget requests fail at once instead of waiting. No guard
        // band: the refusal's delay is then the window's 60 s, within what
        // the SDKs honour, so the caller is left to retry (with the 250 ms
        // band it would be 60.25 s, and the answer would say
        // `x-should-retry: false`, see "Retries" above).
        stack.rate.requests_per_minute = Some(SELF_TEST_RPM);
        stack.rate.max_wait = Some(Duration::ZERO);
        stack.rate.guard_band = Some(Duration::ZERO);
    }
    let config = ProxyConfig {
        upstream_key: args.upstream_key.clone(),
        routing: Routing {
            cheap: args.cheap_model.clone(),
            strong: args.strong_model.clone(),
            strong_from_chars: args.strong_from_chars,
            ..Routing::default()
        },
        stack,
        ..ProxyConfig::new(upstream.clone())
    };
    let proxy = Proxy::new(config, metrics)?;

    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    let addr = listener.local_addr()?;
    println!("axum_proxy listening on http://{addr} (upstream {upstream})");
    if !args.self_test {
        println!(
            "try: curl -N http://{addr}/v1/chat/completions -H 'authorization: Bearer sk-test-1' \\\n     \
             -d '{{\"model\":\"auto\",\"stream\":true,\"messages\":[{{\"role\":\"user\",\"content\":\"Hello\"}}]}}'"
        );
    }
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        axum::serve(listener, proxy.router.clone())
            .with_graceful_shutdown(async move {
                let _ = stop_rx.await;
            })
            .into_future(),
    );

    let code = if args.self_test {
        let passed = self_test(addr, &args).await;
        if let (Some(rate), Some(breaker)) = (&proxy.rate, &proxy.breaker) {
            let rate = rate.stats();
            let circuit = |model: &str| {
                breaker
                    .partition_state(&router::route_key(model))
                    .map_or_else(|| "unused".to_owned(), |s| s.to_string())
            };
            println!(
                "stack: {} requests admitted for {} keys, circuits: {} {}, {} {}",
                rate.admitted,
                rate.partitions,
                args.cheap_model,
                circuit(&args.cheap_model),
                args.strong_model,
                circuit(&args.strong_model),
            );
        }
        let _ = stop_tx.send(());
        let _ = server.await;
        if passed {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        }
    } else {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            res = server => { res??; }
        }
        drop(stop_tx);
        ExitCode::SUCCESS
    };
    if let Some(handle) = sim_server {
        handle.shutdown().await;
    }
    Ok(code)
}

/// A `StackConfig` from a TOML file.
#[cfg(feature = "serde")]
fn read_stack_config(path: &std::path::Path) -> Result<StackConfig, tower::BoxError> {
    let text = std::fs::read_to_string(path)?;
    // Read through the library, so an error names the setting it is about
    // (`retry.backoff_base`), not only a line and column.
    let document = toml::Deserializer::parse(&text)?;
    Ok(StackConfig::from_deserializer(document)?)
}

#[cfg(not(feature = "serde"))]
fn read_stack_config(_path: &std::path::Path) -> Result<StackConfig, tower::BoxError> {
    Err("--config needs the `serde` feature: --features sim-server,serde".into())
}

/// One answer, read whole, with the number of body chunks it came in.
struct Answer {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: String,
    chunks: usize,
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
}

type TestClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

async fn send(
    client: &TestClient,
    addr: SocketAddr,
    method: Method,
    path: &str,
    key: Option<&str>,
    body: Option<Value>,
) -> Result<Answer, tower::BoxError> {
    let mut req = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"));
    if let Some(key) = key {
        req = req.header(header::AUTHORIZATION, format!("Bearer {key}"));
    }
    let body = match body {
        Some(json) => {
            req = req.header(header::CONTENT_TYPE, "application/json");
            Bytes::from(json.to_string())
        }
        None => Bytes::new(),
    };
    let res = client.request(req.body(Full::new(body))?).await?;
    let (parts, mut incoming) = res.into_parts();
    let mut text = Vec::new();
    let mut chunks = 0;
    while let Some(frame) = incoming.frame().await {
        if let Ok(data) = frame?.into_data() {
            chunks += 1;
            text.extend_from_slice(&data);
        }
    }
    Ok(Answer {
        status: parts.status,
        headers: parts.headers,
        body: String::from_utf8_lossy(&text).into_owned(),
        chunks,
    })
}

fn chat(prompt: &str, stream: bool) -> Value {
    json!({
        "model": "auto",
        "messages": [{ "role": "user", "content": prompt }],
        "max_tokens": 16,
        "stream": stream,
    })
}

/// Sends a few requests through the proxy at `addr`, prints each result,
/// and says whether all were as expected.
async fn self_test(addr: SocketAddr, args: &Args) -> bool {
    let client: TestClient = Client::builder(TokioExecutor::new()).build_http();
    let mut failures = 0;
    let mut checks = 0;
    let mut check = |name: &str, ok: bool, detail: String| {
        checks += 1;
        if !ok {
            failures += 1;
        }
        println!("{} {name}: {detail}", if ok { "ok  " } else { "FAIL" });
    };
    let post = Method::POST;
    let chat_path = "/v1/chat/completions";

    match send(&client, addr, Method::GET, "/health", None, None).await {
        Ok(a) => check(
            "GET /health",
            a.status == 200 && a.json()["status"] == "ok",
            format!("{} {}", a.status, a.body),
        ),
        Err(e) => check("GET /health", false, e.to_string()),
    }
    match send(
        &client,
        addr,
        Method::GET,
        "/v1/models",
        Some("sk-alice-0001"),
        None,
    )
    .await
    {
        Ok(a) => check(
            "GET /v1/models",
            a.status == 200 && a.body.contains(sim::MODEL),
            format!("{} {}", a.status, a.body),
        ),
        Err(e) => check("GET /v1/models", false, e.to_string()),
    }
    let body = chat("Say hello.", false);
    match send(
        &client,
        addr,
        post.clone(),
        chat_path,
        Some("sk-alice-0001"),
        Some(body),
    )
    .await
    {
        Ok(a) => {
            let total = a.json()["usage"]["total_tokens"].as_u64().unwrap_or(0);
            check(
                "chat, JSON",
                a.status == 200
                    && total > 0
                    && a.header(router::ROUTED_HEADER) == args.cheap_model
                    && !a.header("x-ratelimit-remaining-requests").is_empty(),
                format!(
                    "{} model={} total_tokens={total} x-ratelimit-remaining-requests={}",
                    a.status,
                    a.header(router::ROUTED_HEADER),
                    a.header("x-ratelimit-remaining-requests"),
                ),
            )
        }
        Err(e) => check("chat, JSON", false, e.to_string()),
    }
    let body = chat("Explain step by step how a sliding window works.", true);
    match send(
        &client,
        addr,
        post.clone(),
        chat_path,
        Some("sk-alice-0001"),
        Some(body),
    )
    .await
    {
        Ok(a) => {
            let events = a.body.matches("data: ").count();
            check(
                "chat, streamed",
                a.status == 200
                    && a.header("content-type").starts_with("text/event-stream")
                    && a.body.trim_end().ends_with("data: [DONE]")
                    && a.chunks > 1
                    && a.header(router::ROUTED_HEADER) == args.strong_model,
                format!(
                    "{} {} model={} events={events} chunks={}",
                    a.status,
                    a.header("content-type"),
                    a.header(router::ROUTED_HEADER),
                    a.chunks
                ),
            )
        }
        Err(e) => check("chat, streamed", false, e.to_string()),
    }
    let body = chat("Say hello.", false);
    match send(&client, addr, post.clone(), chat_path, None, Some(body)).await {
        Ok(a) => check(
            "chat, no key",
            a.status == 401 && a.json()["error"]["code"] == "invalid_api_key",
            format!("{} {}", a.status, a.body),
        ),
        Err(e) => check("chat, no key", false, e.to_string()),
    }
    // alice has spent 2 of her 4 requests a minute (models bypass the
    // windows): two more pass, the next is refused with a delay.
    let mut statuses = Vec::new();
    let mut retry_after = String::new();
    let mut should_retry = String::new();
    for _ in 0..3 {
        match send(
            &client,
            addr,
            post.clone(),
            chat_path,
            Some("sk-alice-0001"),
            Some(chat("Hi.", false)),
        )
        .await
        {
            Ok(a) => {
                statuses.push(a.status.as_u16());
                retry_after = a.header("retry-after").to_owned();
                should_retry = a.header(router::SHOULD_RETRY_HEADER).to_owned();
            }
            Err(e) => check("chat, over budget", false, e.to_string()),
        }
    }
    // The proxy's own window refused it without retrying: the caller may
    // retry after `retry-after`, so no `x-should-retry: false`.
    check(
        "chat, over budget",
        statuses == [200, 200, 429]
            && retry_after.parse::<u64>().is_ok_and(|s| s > 0)
            && should_retry != "false",
        format!("statuses={statuses:?} retry-after={retry_after} x-should-retry={should_retry:?}"),
    );
    match send(
        &client,
        addr,
        post.clone(),
        chat_path,
        Some("sk-bob-0002"),
        Some(chat("Hi.", false)),
    )
    .await
    {
        Ok(a) => check(
            "chat, another key",
            a.status == 200,
            format!("{} (bob's budget is his own)", a.status),
        ),
        Err(e) => check("chat, another key", false, e.to_string()),
    }
    match send(&client, addr, Method::GET, "/metrics", None, None).await {
        Ok(a) => {
            let admitted = metric_line(&a.body, "llm_sluice_admitted_total{layer=\"rate\"}");
            let refused = metric_line(&a.body, "llm_sluice_rejected_total{layer=\"rate\"");
            let answered = metric_line(
                &a.body,
                "proxy_responses_total{route=\"chat_completions\",status=\"429\"}",
            );
            check(
                "GET /metrics",
                a.status == 200 && admitted.is_some() && refused.is_some() && answered.is_some(),
                format!(
                    "{} | {} | {} | {}",
                    a.status,
                    admitted.unwrap_or("no admitted counter"),
                    refused.unwrap_or("no rate rejection counter"),
                    answered.unwrap_or("no 429 counter"),
                ),
            );
        }
        Err(e) => check("GET /metrics", false, e.to_string()),
    }

    if failures == 0 {
        println!("self-test passed: {checks} checks");
        true
    } else {
        println!("self-test FAILED: {failures} of {checks} checks");
        false
    }
}

/// The first line of Prometheus text that starts with `prefix` and counts
/// more than zero.
fn metric_line<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    text.lines().find(|l| {
        l.starts_with(prefix)
            && l.rsplit(' ')
                .next()
                .and_then(|v| v.parse::<f64>().ok())
                .is_some_and(|v| v > 0.0)
    })
}
