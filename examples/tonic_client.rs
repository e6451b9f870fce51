//! llm-sluice layers on a tonic gRPC channel.
//!
//! A tonic `Channel` is a `tower::Service` over `http::Request`, so the
//! layers wrap it like any HTTP client, and the generated client takes the
//! wrapped service in its place. The example starts a gRPC server on
//! loopback with the standard health service (`tonic-health`, whose code is
//! pre-generated: no protoc needed) behind a server-side interceptor that
//! can be told to fail, and then calls `Check` through the stack:
//!
//! 1. while healthy;
//! 2. after the health status flips to NOT_SERVING: an answer, not an error,
//!    so nothing reacts;
//! 3. when two calls fail with UNAVAILABLE: the retry layer tries again and
//!    the caller sees one success;
//! 4. when the server answers RESOURCE_EXHAUSTED with
//!    `grpc-retry-pushback-ms`: the retry waits the pushback, no less;
//! 5. during an outage: the retries fail, the breaker opens, and the next
//!    call fails fast with `CircuitOpen` without reaching the server;
//! 6. after the outage: a probe closes the breaker again.
//!
//! gRPC puts its status in `grpc-status`, not in the HTTP status: in the
//! headers of a "trailers-only" response (how a unary call that fails
//! before any message answers, interceptor refusals included) and otherwise
//! in the trailers. llm-sluice's `GrpcClassifier` reads the headers, so layers
//! classify a failed unary call when its response arrives; a status sent in
//! the trailers of a streamed response comes after every layer has
//! classified the call and counts as the success the headers said.
//!
//! Retrying needs a copy of the request. tonic's request body is a stream,
//! so an outer `AsyncFilterLayer` buffers it into a `ReplayBody` (unary
//! requests are small; anything over 64 KiB is sent once, not retried) and
//! the retry layer replays it with `ReplayBodies`.
//!
//! ```text
//! cargo run --example tonic_client
//! ```
//!
//! It prints what it saw and exits non-zero if anything differs from what it
//! expects.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use llm_sluice::breaker::CircuitState;
use llm_sluice::classify::{Classify, GrpcClassifier};
use llm_sluice::retry::{ReplayBodies, ReplayBody};
use llm_sluice::{Error, LlmStack, StackConfig};
use tokio::time::Instant;
use tonic::metadata::MetadataMap;
use tonic::transport::{Channel, Server};
use tonic::{Code, Status};
use tonic_health::pb::health_check_response::ServingStatus as Answer;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::health_server::HealthServer;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::server::{HealthReporter, HealthService};
use tonic_health::ServingStatus;
use tower::filter::AsyncFilterLayer;
use tower::{BoxError, ServiceBuilder};

#[path = "common/checks.rs"]
mod checks;
use checks::Checks;

/// The service whose health is checked.
const SERVICE: &str = "llm.Generate";
/// How long the breaker stays open before letting a probe through.
const OPEN_FOR: Duration = Duration::from_millis(500);
/// The pushback the server asks for when it answers RESOURCE_EXHAUSTED.
const PUSHBACK: Duration = Duration::from_millis(150);

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), BoxError> {
    let mut checks = Checks::default();

    // The server: the health service behind an interceptor that follows a
    // script of failures, and counts every call that reaches it.
    let script = Arc::new(Script::default());
    let reporter = HealthReporter::new();
    reporter
        .set_service_status(SERVICE, ServingStatus::Serving)
        .await;
    let health =
        HealthServer::with_interceptor(HealthService::from_health_reporter(reporter.clone()), {
            let script = script.clone();
            move |req| script.intercept(req)
        });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        Server::builder()
            .add_service(health)
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(listener),
                async {
                    let _ = stopped.await;
                },
            ),
    );
    println!("gRPC health server on {addr}");

    // The client: a channel wrapped in the stack, every layer classifying
    // with the gRPC status and the retry layer replaying buffered bodies.
    // In front of it, the body buffering that makes attempts replayable;
    // behind it, the conversion back to tonic's body type.
    let channel = Channel::from_shared(format!("http://{addr}"))?
        .connect()
        .await?;
    let mut config = StackConfig::default();
    config.deadline = Some(Duration::from_secs(10));
    config.retry.max_retries = 2;
    config.retry.backoff_base = Duration::from_millis(20);
    config.retry.backoff_cap = Duration::from_millis(100);
    config.breaker.consecutive_failures = Some(3);
    config.breaker.open_duration = OPEN_FOR;
    config.breaker.half_open_probes = 1;
    config.concurrency.max_in_flight = 8;
    config.timeout.attempt = Some(Duration::from_secs(2));
    let layers = LlmStack::builder(config)
        .classifier(GrpcClassifier)
        .replay(ReplayBodies)
        .build()?;
    let breaker_state = layers.breaker_handle().ok_or("the breaker is on")?;
    let concurrency = layers
        .concurrency()
        .ok_or("the concurrency limit is on")?
        .clone();
    let stack = ServiceBuilder::new()
        .layer(AsyncFilterLayer::new(buffer_body))
        .layer(layers)
        .map_request(|req: http::Request<ReplayBody<tonic::body::Body>>| {
            req.map(tonic::body::Body::new)
        })
        .service(channel);
    let mut client = HealthClient::new(stack);
    let check = HealthCheckRequest {
        service: SERVICE.into(),
    };

    // 1. Healthy.
    let mut answers = Vec::new();
    for _ in 0..3 {
        let answer = client.check(check.clone()).await?.into_inner().status();
        answers.push(answer.as_str_name());
    }
    println!(
        "healthy: {} calls answered {:?}, breaker {:?}",
        answers.len(),
        answers,
        breaker_state.state()
    );
    checks.expect(
        answers.iter().all(|a| *a == "SERVING") && script.calls() == 3,
        "three healthy calls answer SERVING",
    );

    // 2. The service reports NOT_SERVING: a successful call with bad news.
    reporter
        .set_service_status(SERVICE, ServingStatus::NotServing)
        .await;
    let answer = client.check(check.clone()).await?.into_inner().status();
    println!(
        "not serving: answered {}, breaker {:?} (an answer is not a failure)",
        answer.as_str_name(),
        breaker_state.state()
    );
    checks.expect(
        answer == Answer::NotServing,
        "the flipped status is reported",
    );
    checks.expect(
        breaker_state.state() == CircuitState::Closed,
        "a NOT_SERVING answer does not count against the breaker",
    );
    reporter
        .set_service_status(SERVICE, ServingStatus::Serving)
        .await;

    // 3. Two transient UNAVAILABLE answers: retried, the caller sees success.
    script.fail_next([Code::Unavailable, Code::Unavailable]);
    let before = script.calls();
    let answer = client.check(check.clone()).await?.into_inner().status();
    let attempts = script.calls() - before;
    println!(
        "unavailable twice: answered {} after {attempts} attempts (retry)",
        answer.as_str_name()
    );
    checks.expect(
        answer == Answer::Serving && attempts == 3,
        "UNAVAILABLE is retried until it succeeds",
    );

    // 4. RESOURCE_EXHAUSTED with a pushback: retried, never before it.
    script.fail_next([Code::ResourceExhausted]);
    let (before, start) = (script.calls(), Instant::now());
    let answer = client.check(check.clone()).await?.into_inner().status();
    let (attempts, waited) = (script.calls() - before, start.elapsed());
    println!(
        "resource exhausted: answered {} after {attempts} attempts, waited {} ms (pushback {} ms)",
        answer.as_str_name(),
        waited.as_millis(),
        PUSHBACK.as_millis()
    );
    checks.expect(
        answer == Answer::Serving && attempts == 2 && waited >= PUSHBACK,
        "RESOURCE_EXHAUSTED is retried after the server's pushback",
    );

    // 5. An outage: the retries fail, the breaker opens, the next call fails
    // fast without reaching the server.
    script.outage.store(true, Ordering::SeqCst);
    let before = script.calls();
    let status = client.check(check.clone()).await.err();
    let attempts = script.calls() - before;
    println!(
        "outage: failed with {:?} after {attempts} attempts, breaker {:?}",
        status.as_ref().map(Status::code),
        breaker_state.state()
    );
    checks.expect(
        status.as_ref().map(Status::code) == Some(Code::Unavailable) && attempts == 3,
        "an outage fails after the retries with the server's UNAVAILABLE",
    );
    checks.expect(
        breaker_state.state() == CircuitState::Open,
        "three consecutive failures open the breaker",
    );

    let before = script.calls();
    let status = client.check(check.clone()).await.err();
    // tonic turns the layer's error into a `Status` whose source is the
    // original error: that is where the typed reason is.
    let reason = status
        .as_ref()
        .and_then(|s| std::error::Error::source(s))
        .and_then(|e| e.downcast_ref::<Error>());
    match reason {
        Some(Error::CircuitOpen { retry_after }) => println!(
            "breaker open: failed fast with CircuitOpen (retry after {} ms), {} calls reached the server",
            retry_after.as_millis(),
            script.calls() - before
        ),
        other => println!("breaker open: unexpected {other:?} / {status:?}"),
    }
    checks.expect(
        matches!(reason, Some(Error::CircuitOpen { .. })) && script.calls() == before,
        "an open breaker fails fast with CircuitOpen",
    );

    // 6. Recovery: after the open time a probe goes through and closes it.
    script.outage.store(false, Ordering::SeqCst);
    tokio::time::sleep(OPEN_FOR + Duration::from_millis(20)).await;
    let answer = client.check(check.clone()).await?.into_inner().status();
    println!(
        "recovered: answered {}, breaker {:?}",
        answer.as_str_name(),
        breaker_state.state()
    );
    checks.expect(
        answer == Answer::Serving && breaker_state.state() == CircuitState::Closed,
        "a successful probe closes the breaker",
    );

    // The classifier's table, on trailers-only responses.
    let table: Vec<String> = [
        Code::Unavailable,
        Code::ResourceExhausted,
        Code::DeadlineExceeded,
        Code::InvalidArgument,
    ]
    .into_iter()
    .map(|code| {
        let res = Status::new(code, "").into_http::<()>();
        let outcome = GrpcClassifier.classify(Ok(&res)).outcome;
        format!("{code:?} -> {}", outcome.as_str())
    })
    .collect();
    println!("classifier: {}", table.join(", "));
    checks.expect(
        table
            == [
                "Unavailable -> server_error",
                "ResourceExhausted -> rate_limited",
                "DeadlineExceeded -> timeout",
                "InvalidArgument -> client_error",
            ],
        "the classifier maps gRPC codes to outcomes",
    );
    let in_flight = concurrency.stats().map_or(usize::MAX, |s| s.in_flight);
    checks.expect(in_flight == 0, "every permit was released");

    let _ = stop.send(());
    server.await??;
    checks.finish("tonic_client")
}

/// Buffers a request body so the retry layer can send it again.
async fn buffer_body(
    req: http::Request<tonic::body::Body>,
) -> Result<http::Request<ReplayBody<tonic::body::Body>>, BoxError> {
    let (parts, body) = req.into_parts();
    let body = ReplayBody::buffer(body, 64 * 1024).await?;
    Ok(http::Request::from_parts(parts, body))
}

/// What the server-side interceptor does: fail the next calls with the
/// codes queued, fail every call during an outage, count every call.
#[derive(Default)]
struct Script {
    calls: AtomicU32,
    next: Mutex<VecDeque<Code>>,
    outage: AtomicBool,
}

impl Script {
    fn intercept(&self, req: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let scripted = self.next.lock().map_or(None, |mut next| next.pop_front());
        match scripted {
            Some(Code::ResourceExhausted) => {
                let mut meta = MetadataMap::new();
                meta.insert(
                    "grpc-retry-pushback-ms",
                    (PUSHBACK.as_millis() as u64).into(),
                );
                Err(Status::with_metadata(
                    Code::ResourceExhausted,
                    "slow down",
                    meta,
                ))
            }
            Some(code) => Err(Status::new(code, "scripted failure")),
            None if self.outage.load(Ordering::SeqCst) => Err(Status::unavailable("outage")),
            None => Ok(req),
        }
    }

    fn fail_next(&self, codes: impl IntoIterator<Item = Code>) {
        if let Ok(mut next) = self.next.lock() {
            next.extend(codes);
        }
    }

    fn calls(&self) -> u32 {
        self.calls.load(Ordering::SeqCst)
    }
}
