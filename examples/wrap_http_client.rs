//! A hyper client wrapped in llm-sluice, calling an OpenAI-compatible API.
//!
//! The hyper-util "legacy" client is already a `tower::Service` over
//! `http::Request`, so the layers go straight on top of it (a `map_request`
//! turns the shared scenario's `Bytes` bodies into hyper's `Full` bodies). The example
//! starts the simulated upstream behind a real HTTP server on loopback (a
//! provider allowing 5 requests and 20,000 tokens a minute per key) and
//! sends through the stack:
//!
//! 1. a plain chat completion;
//! 2. a streamed one, reading the server-sent events to the end while
//!    watching the concurrency permit: it is held until the *body* ends,
//!    not released when the headers arrive;
//! 3. a request larger than the whole token budget: it fails at once with
//!    `Error::RequestTooLarge` and never reaches the provider;
//! 4. requests until the minute's request budget is spent: the next one
//!    fails locally with `Error::RateLimited { retry_after }` instead of
//!    earning a 429 from the provider.
//!
//! ```text
//! cargo run --example wrap_http_client --features sim-server
//! ```
//!
//! It prints what it saw and exits non-zero if anything differs from what it
//! expects.

#[path = "common/chat_scenario.rs"]
mod chat_scenario;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower::{BoxError, ServiceBuilder};

use chat_scenario::Provider;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), BoxError> {
    let provider = Provider::start().await?;
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let stack = chat_scenario::stack()?;
    let svc = ServiceBuilder::new()
        .layer(stack.clone())
        .map_request(|req: http::Request<Bytes>| req.map(Full::new))
        .service(client);
    chat_scenario::run("wrap_http_client", svc, &stack, provider).await
}
