//! reqwest wrapped in llm-sluice, calling an OpenAI-compatible API.
//!
//! `reqwest::Client` is not a `tower::Service`, so the example first makes
//! it one: a `tower::service_fn` that turns an `http::Request` into a
//! `reqwest::Request`, executes it, and turns the `reqwest::Response` back
//! into an `http::Response` whose body is reqwest's streaming body. The
//! layers then wrap that service like any other.
//!
//! Against the simulated upstream behind a real HTTP server on loopback (a
//! provider allowing 5 requests and 20,000 tokens a minute per key) it sends:
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
//! cargo run --example reqwest_client --features sim-server
//! ```
//!
//! It prints what it saw and exits non-zero if anything differs from what it
//! expects.

#[path = "common/chat_scenario.rs"]
mod chat_scenario;

use bytes::Bytes;
use tower::{BoxError, Service, ServiceBuilder};

use chat_scenario::Provider;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), BoxError> {
    let provider = Provider::start().await?;
    // The client as a tower service. `no_proxy`: the example talks to
    // loopback, whatever proxy the environment names.
    let client = reqwest_service(reqwest::Client::builder().no_proxy().build()?);
    let stack = chat_scenario::stack()?;
    let svc = ServiceBuilder::new().layer(stack.clone()).service(client);
    chat_scenario::run("reqwest_client", svc, &stack, provider).await
}

/// The adapter: `reqwest::Client` as a `tower::Service` over `http` types.
///
/// The layers read the request's extensions before this point, so losing
/// them in the conversion is fine. The response body stays reqwest's
/// streaming `Body` (an `http_body::Body`), so the layers can hold their
/// permits until it ends. reqwest's errors (connect, reset, timeouts) pass
/// through boxed; the default classifier reads them as transport errors.
fn reqwest_service(
    client: reqwest::Client,
) -> impl Service<http::Request<Bytes>, Response = http::Response<reqwest::Body>, Error = BoxError> + Clone
{
    tower::service_fn(move |req: http::Request<Bytes>| {
        let client = client.clone();
        async move {
            let req = reqwest::Request::try_from(req)?;
            let res = client.execute(req).await?;
            Ok::<_, BoxError>(http::Response::from(res))
        }
    })
}
