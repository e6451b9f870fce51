//! The proxy itself: settings, the llm-sluice stack around the HTTP client,
//! and the axum router. Kept apart from `main.rs` so the end-to-end test
//! (`tests/proxy`) can include it with `#[path]` and drive the same code.

use std::fmt;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri};
use axum::routing::{get, post};
use axum::Router;
use http_body_util::Full;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use llm_sluice::breaker::CircuitHandle;
use llm_sluice::classify::{Classification, Classify, DefaultClassifier, ErrorBodyLayer};
use llm_sluice::estimate::{
    ChatEstimator, CompletionHistory, EstimateFeedback, EstimateLayer, UsageAdded,
};
use llm_sluice::meter::{BodyEnd, StripUsageChunk, UsageBody};
use llm_sluice::rate::RateLimitHandle;
use llm_sluice::{
    CircuitState, ConcurrencyLimitLayer, ConfigError, Deadline, DeadlineLayer, Error, LlmStack,
    PartitionKey, Priority, StackConfig, TimeoutKind,
};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde_json::{json, Value};
use tower::util::BoxCloneSyncService;
use tower::{BoxError, ServiceBuilder, ServiceExt};

/// The header that sets a request's priority: `low`, `normal`, `high` or
/// `critical` (default `normal`).
pub const PRIORITY_HEADER: &str = "x-priority";
/// The header that sets a request's deadline, in milliseconds from its
/// arrival. The stack's `deadline` is the default and the upper bound: its
/// layer keeps an earlier deadline and tightens a later one.
pub const DEADLINE_HEADER: &str = "x-deadline-ms";
/// The response header naming the model a request was routed to.
pub const ROUTED_HEADER: &str = "x-routed-model";
/// The model name that asks the proxy to choose (as does no model at all).
pub const AUTO_MODEL: &str = "auto";
/// The response header the official SDKs obey over their own retry rule.
pub const SHOULD_RETRY_HEADER: &str = "x-should-retry";
/// Breakers kept, one per model, when the stack's `breaker.per_partition`
/// is not set: past this many models seen at once, an idle one is evicted
/// (or new ones share one breaker while none is idle).
pub const ROUTE_BREAKERS: usize = 64;

/// Everything the proxy needs to know. Its `Debug` leaves the upstream key
/// out.
#[derive(Clone)]
pub struct ProxyConfig {
    /// Base URL of the upstream, `http://host:port` (a path prefix is kept:
    /// `http://host/openai` forwards to `http://host/openai/v1/...`).
    pub upstream: String,
    /// Sent upstream as `Authorization: Bearer` instead of the caller's key,
    /// when set. Without it the caller's key is passed through.
    pub upstream_key: Option<String>,
    /// Which model a request for [`AUTO_MODEL`] goes to.
    pub routing: Routing,
    /// Output tokens assumed for a request that sets no `max_tokens`.
    pub default_max_tokens: u64,
    /// The llm-sluice stack; the rate budgets are per caller key.
    pub stack: StackConfig,
}

impl fmt::Debug for ProxyConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProxyConfig")
            .field("upstream", &self.upstream)
            .field("upstream_key", &self.upstream_key.as_ref().map(|_| "<set>"))
            .field("routing", &self.routing)
            .field("default_max_tokens", &self.default_max_tokens)
            .field("stack", &self.stack)
            .finish()
    }
}

impl ProxyConfig {
    /// A proxy for `upstream` with the default routing and
    /// [`default_stack`](Self::default_stack).
    pub fn new(upstream: impl Into<String>) -> Self {
        ProxyConfig {
            upstream: upstream.into(),
            upstream_key: None,
            routing: Routing::default(),
            default_max_tokens: 256,
            stack: Self::default_stack(),
        }
    }

    /// `StackConfig::default()` with what a proxy in front of one provider
    /// account adds: a 120 s deadline, 60 requests and 60,000 tokens a
    /// minute per caller key, and a short rate wait.
    ///
    /// A request waiting for its key's window holds no upstream slot (the
    /// window's admission comes before the concurrency limit), so the
    /// waiters need no small cap to keep one key's flood off the slots; the
    /// 1,024 only bounds memory. `rate.max_wait` (5 s) is short because a
    /// caller's HTTP connection is held while its request waits: a request
    /// whose room comes later is told so at once, with the delay.
    pub fn default_stack() -> StackConfig {
        let mut stack = StackConfig::default();
        stack.deadline = Some(Duration::from_secs(120));
        stack.rate.requests_per_minute = Some(60);
        stack.rate.tokens_per_minute = Some(60_000);
        stack.rate.max_wait = Some(Duration::from_secs(5));
        stack.rate.max_waiters = 1_024;
        stack
    }
}

/// The complexity rule: a request for [`AUTO_MODEL`] (or for no model) goes
/// to `strong` if its prompt has at least `strong_from_chars` characters or
/// contains one of `keywords` (case-insensitive), else to `cheap`. A request
/// that names another model is sent as it is.
#[derive(Debug, Clone)]
pub struct Routing {
    /// The cheaper model, for short and simple prompts.
    pub cheap: String,
    /// The stronger model.
    pub strong: String,
    /// Prompt length (characters) from which a request counts as complex.
    pub strong_from_chars: usize,
    /// Words that mark a prompt as complex, lowercase.
    pub keywords: Vec<String>,
}

impl Default for Routing {
    fn default() -> Self {
        Routing {
            cheap: "sim-1-mini".into(),
            strong: "sim-1".into(),
            strong_from_chars: 2_000,
            keywords: [
                "step by step",
                "prove",
                "analyze",
                "analyse",
                "refactor",
                "debug",
            ]
            .map(String::from)
            .to_vec(),
        }
    }
}

impl Routing {
    /// The model for a prompt.
    pub fn choose(&self, prompt: &str) -> &str {
        let lower = prompt.to_lowercase();
        if prompt.chars().count() >= self.strong_from_chars
            || self.keywords.iter().any(|k| lower.contains(k.as_str()))
        {
            &self.strong
        } else {
            &self.cheap
        }
    }
}

/// The recorder behind `GET /metrics`, installed once per process.
///
/// The layers resolve their metric handles when they are built, so call this
/// before [`Proxy::new`]. Returns `None` if another recorder was installed
/// first.
pub fn install_metrics() -> Option<PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).ok()?;
            Some(handle)
        })
        .clone()
}

type Stack = BoxCloneSyncService<Request<Bytes>, Response<Body>, BoxError>;

/// The proxy: its router and handles on the stack's live state.
#[derive(Debug, Clone)]
pub struct Proxy {
    /// The routes, ready for `axum::serve`.
    pub router: Router,
    /// The per-key rate windows (admitted, waiting, keys), if enabled.
    pub rate: Option<RateLimitHandle>,
    /// The circuit breakers, one per model ([`route_key`]), if enabled.
    pub breaker: Option<CircuitHandle>,
}

struct AppState {
    stack: Stack,
    client: Client<HttpConnector, Full<Bytes>>,
    config: ProxyConfig,
    chat_uri: Uri,
    models_uri: Uri,
    metrics: Option<PrometheusHandle>,
    rate: Option<RateLimitHandle>,
    breaker: Option<CircuitHandle>,
    concurrency: Option<ConcurrencyLimitLayer>,
    /// `Bearer <upstream key>`, when the proxy has a key of its own.
    upstream_auth: Option<HeaderValue>,
    /// What the proxy's own retries do, for `x-should-retry`.
    retries: RetryPolicy,
    /// The request estimator, and how far its estimates were off.
    estimate: EstimateLayer,
}

impl AppState {
    /// The `Authorization` sent upstream: the proxy's own key, or the
    /// caller's header as it came (already checked by [`api_key`]).
    fn upstream_auth(&self, headers: &HeaderMap) -> HeaderValue {
        match (&self.upstream_auth, headers.get(header::AUTHORIZATION)) {
            (Some(own), _) | (None, Some(own)) => own.clone(),
            (None, None) => HeaderValue::from_static(""),
        }
    }
}

impl Proxy {
    /// Builds the stack and the routes; a bad setting is a [`ConfigError`]
    /// naming it. `metrics` serves `GET /metrics` (404 without it).
    pub fn new(
        config: ProxyConfig,
        metrics: Option<PrometheusHandle>,
    ) -> Result<Proxy, ConfigError> {
        let base = config.upstream.trim_end_matches('/');
        let uri = |path: &str| match format!("{base}{path}").parse::<Uri>() {
            Ok(uri) if uri.scheme_str() == Some("http") && uri.host().is_some() => Ok(uri),
            _ => Err(ConfigError::new(
                "upstream",
                "must be an http:// URL with a host",
            )),
        };
        let (chat_uri, models_uri) = (uri("/v1/chat/completions")?, uri("/v1/models")?);
        let upstream_auth = match &config.upstream_key {
            None => None,
            Some(key) => match HeaderValue::try_from(format!("Bearer {key}")) {
                Ok(mut value) => {
                    value.set_sensitive(true);
                    Some(value)
                }
                Err(_) => return Err(ConfigError::new("upstream_key", "must be printable ASCII")),
            },
        };
        // The rate windows budget per caller key and the breakers guard one
        // route (model) each, but the stack's layers read one partition key.
        // So the stack goes in two parts around a key swap:
        // deadline -> retry -> (count the attempt) -> breaker by model
        //   -> (caller key) -> concurrency -> rate -> timeout.
        let mut stack_config = config.stack.clone();
        stack_config.breaker.per_partition =
            Some(stack_config.breaker.per_partition.unwrap_or(ROUTE_BREAKERS));
        // `parts` checks every section and gives the retry and breaker
        // layers (its other parts stay unused); `inner` is the same settings
        // without them.
        let parts = LlmStack::from_config(&stack_config)?;
        let mut inner_config = stack_config.clone();
        inner_config.deadline = None;
        inner_config.retry.enabled = false;
        inner_config.breaker.enabled = false;
        let inner = LlmStack::from_config(&inner_config)?;
        let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
        // Estimates once per request (not per attempt), from the body: the
        // library's chat estimator, with the output of requests that set no
        // maximum learned per model; asks a stream for its usage
        // (`include_usage`) so the windows can be corrected at its end.
        let estimator = ChatEstimator::new()
            .default_output(config.default_max_tokens)
            .history(CompletionHistory::new());
        let estimate = EstimateLayer::builder()
            .estimator(estimator)
            .include_usage(true)
            .build()?;
        let service = ServiceBuilder::new()
            .map_response(|res: Response<_>| res.map(Body::new))
            .layer(estimate.clone())
            .map_request(|req: Request<Bytes>| req.map(Full::new))
            .option_layer(stack_config.deadline.map(DeadlineLayer::new))
            .option_layer(parts.retry().cloned())
            .map_request(|req: Request<Full<Bytes>>| {
                if let Some(attempts) = req.extensions().get::<Attempts>() {
                    attempts.0.fetch_add(1, Ordering::Relaxed);
                }
                req
            })
            .option_layer(parts.breaker().cloned())
            .map_request(|mut req: Request<Full<Bytes>>| {
                if let Some(CallerKey(key)) = req.extensions_mut().remove::<CallerKey>() {
                    req.extensions_mut().insert(key);
                }
                req
            })
            .layer(inner.clone())
            // reads error bodies, so a spent quota (a 429 that never
            // succeeds) is not retried
            .layer(ErrorBodyLayer::new())
            .service(client.clone());
        let state = Arc::new(AppState {
            stack: BoxCloneSyncService::new(service),
            client,
            chat_uri,
            models_uri,
            upstream_auth,
            metrics,
            rate: inner.rate_handle(),
            breaker: parts.breaker_handle(),
            concurrency: inner.concurrency().cloned(),
            retries: RetryPolicy::of(&stack_config),
            estimate,
            config,
        });
        let router = Router::new()
            .route("/v1/chat/completions", post(chat_completions))
            .route("/v1/models", get(models))
            .route("/health", get(health))
            .route("/metrics", get(render_metrics))
            .with_state(state.clone());
        Ok(Proxy {
            router,
            rate: state.rate.clone(),
            breaker: state.breaker.clone(),
        })
    }
}

/// An error in the OpenAI-compatible shape:
/// `{"error": {"message", "type", "param", "code"}}`.
fn api_error(status: StatusCode, kind: &str, code: &str, message: &str) -> Response<Body> {
    let body =
        json!({ "error": { "message": message, "type": kind, "param": null, "code": code } });
    let mut res = Response::new(Body::from(body.to_string()));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    res
}

/// The caller's API key from `Authorization: Bearer <key>`.
fn api_key(headers: &HeaderMap) -> Option<PartitionKey> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, key) = value.split_once(' ')?;
    let key = key.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !key.is_empty()).then(|| PartitionKey::new(key))
}

fn unauthorized() -> Response<Body> {
    let mut res = api_error(
        StatusCode::UNAUTHORIZED,
        "invalid_request_error",
        "invalid_api_key",
        "Missing API key: send `Authorization: Bearer <key>`.",
    );
    res.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    res
}

fn bad_request(message: &str) -> Response<Body> {
    api_error(
        StatusCode::BAD_REQUEST,
        "invalid_request_error",
        "invalid_request",
        message,
    )
}

fn priority(headers: &HeaderMap) -> Result<Priority, &'static str> {
    let Some(value) = headers.get(PRIORITY_HEADER) else {
        return Ok(Priority::NORMAL);
    };
    match value.to_str().map(str::to_ascii_lowercase).as_deref() {
        Ok("low") => Ok(Priority::LOW),
        Ok("normal") => Ok(Priority::NORMAL),
        Ok("high") => Ok(Priority::HIGH),
        Ok("critical") => Ok(Priority::CRITICAL),
        _ => Err("x-priority must be low, normal, high or critical"),
    }
}

/// The longest deadline a caller may ask for.
const MAX_DEADLINE: Duration = Duration::from_secs(3600);

fn deadline(headers: &HeaderMap) -> Result<Option<Duration>, &'static str> {
    let Some(value) = headers.get(DEADLINE_HEADER) else {
        return Ok(None);
    };
    match value
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
    {
        Some(ms) if ms > 0 => Ok(Some(Duration::from_millis(ms).min(MAX_DEADLINE))),
        _ => Err("x-deadline-ms must be a positive number of milliseconds"),
    }
}

/// The text of every message: strings, and the `text` of content parts.
pub fn prompt_text(body: &Value) -> String {
    fn push(out: &mut String, content: &Value) {
        match content {
            Value::String(s) => {
                out.push_str(s);
                out.push('\n');
            }
            Value::Array(parts) => parts.iter().for_each(|p| push(out, p)),
            Value::Object(part) => part.get("text").into_iter().for_each(|t| push(out, t)),
            _ => {}
        }
    }
    let mut out = String::new();
    if let Some(messages) = body.get("messages").and_then(Value::as_array) {
        for message in messages {
            if let Some(content) = message.get("content") {
                push(&mut out, content);
            }
        }
    }
    out
}

/// Headers that belong to one connection, not to the message. The length
/// goes too: the server frames the body again.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "content-length",
];

/// An upstream response, passed through: status, headers (rate-limit
/// headers included) and a body that streams as it arrives.
fn pass_through(mut upstream: Response<Body>) -> Response<Body> {
    let headers = upstream.headers_mut();
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    upstream
}

/// The response with its body read for the usage the estimate is checked
/// against (and the per-model output learned from): the estimator's
/// feedback hears it when the body is complete. (The rate windows read the
/// same body for their own correction, inside the stack.)
///
/// A stream whose usage chunk the proxy asked for on the caller's behalf
/// (`UsageAdded`) loses that chunk after it is read, so the caller gets
/// what it asked for.
fn learn_from(upstream: Response<Body>) -> Response<Body> {
    let added = upstream.extensions().get::<UsageAdded>().is_some();
    let upstream = match upstream.extensions().get::<EstimateFeedback>().cloned() {
        Some(feedback) => UsageBody::wrap_response(upstream, move |end: BodyEnd| {
            if let (true, Some(usage)) = (end.is_complete(), end.usage()) {
                feedback.record(&usage);
            }
        })
        .map(Body::new),
        None => upstream,
    };
    if added {
        StripUsageChunk::wrap_response(upstream).map(Body::new)
    } else {
        upstream
    }
}

/// Whole seconds for `retry-after`, rounded up, at least 1. Saturates: an
/// upstream may send any delay.
fn retry_after_secs(delay: Duration) -> u64 {
    let secs = delay
        .as_secs()
        .saturating_add(u64::from(delay.subsec_nanos() > 0));
    secs.max(1)
}

/// Whole milliseconds for `retry-after-ms`, rounded up, saturating.
fn retry_after_ms(delay: Duration) -> u64 {
    u64::try_from(delay.as_micros().div_ceil(1_000)).unwrap_or(u64::MAX)
}

/// What the proxy's own retries do, read from its stack's settings.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Whether the proxy retries at all (`retry.enabled`, `max_retries > 0`).
    pub retries: bool,
    /// The longest server delay the proxy honours (`retry.max_server_delay`,
    /// 60 s by default, the shortest the official SDKs honour).
    pub max_delay: Duration,
}

impl RetryPolicy {
    /// The policy of `stack`.
    pub fn of(stack: &StackConfig) -> Self {
        RetryPolicy {
            retries: stack.retry.enabled && stack.retry.max_retries > 0,
            max_delay: stack.retry.max_server_delay,
        }
    }
}

/// How a request through the stack ended, for [`retry_advice`].
#[derive(Debug, Clone, Copy)]
pub enum Ending<'a> {
    /// The upstream answered; its answer is passed on.
    Upstream(&'a Classification),
    /// The proxy's own layers refused the request or gave up on it.
    Refused(&'a Error),
    /// The route's breaker is half-open and its probe slots are taken: a
    /// slot frees as soon as a probe answers, long before the `retry-after`
    /// (the time left of the oldest probe's maximum wait).
    ProbesInFlight,
    /// The upstream could not be reached (connect, reset, ...).
    Unreachable,
}

/// Whether the proxy's answer says `x-should-retry: false`, given how the
/// request ended and how many attempts the proxy's retry layer made.
///
/// The official SDKs retry 408, 409, 429 and 5xx twice on their own; behind
/// a proxy that retried already, that multiplies the attempts (an always-429
/// upstream got 9 per SDK call). So the answer says `false` when:
///
/// - the proxy made more than one attempt: its retries are spent;
/// - the upstream answered something no retry fixes (a spent quota, a
///   caller error, its own `x-should-retry: false`);
/// - the proxy's retry layer was on and stopped at the first attempt of a
///   retryable answer: it judged a retry pointless (its retry budget is
///   spent, the delay is over its cap, or the deadline is too near);
/// - the known delay is over the cap (`max_delay`): the SDKs would retry
///   after their own, shorter, backoff and be refused again;
/// - the request can never fit (`RequestTooLarge`).
///
/// Otherwise (`None`) the header is left as the upstream sent it, or off:
/// the proxy did not retry and one after the delay may pass (its own rate
/// window, a full queue, an open breaker that lets a probe through after
/// `retry-after`, a half-open one whose probe slots may free at any moment,
/// a deadline that ran out, or the proxy's retries turned off).
pub fn retry_advice(ending: Ending<'_>, attempts: u32, policy: RetryPolicy) -> Option<bool> {
    let over_cap = |delay: Option<Duration>| delay.is_some_and(|d| d > policy.max_delay);
    let pointless = match ending {
        Ending::Upstream(class) if class.is_success() => return None,
        _ if attempts > 1 => true,
        Ending::Upstream(class) => {
            !class.is_retryable() || over_cap(class.retry_after) || policy.retries
        }
        Ending::Unreachable => policy.retries,
        Ending::ProbesInFlight => false,
        Ending::Refused(err) => match err {
            Error::RequestTooLarge { .. } => true,
            Error::Timeout {
                kind: TimeoutKind::Total,
            } => false,
            Error::Timeout { .. } => policy.retries,
            other => over_cap(other.retry_after()),
        },
    };
    pointless.then_some(false)
}

/// Marks `res` with `x-should-retry: false` and, where the upstream's
/// headers do not already say it in a form the SDKs read, the known delay
/// as `retry-after-ms` and `retry-after`.
fn advise(res: &mut Response<Body>, advice: Option<bool>, delay: Option<Duration>) {
    if advice != Some(false) {
        return;
    }
    let h = res.headers_mut();
    h.insert(SHOULD_RETRY_HEADER, HeaderValue::from_static("false"));
    if let Some(delay) = delay.filter(|d| !d.is_zero()) {
        if !h.contains_key("retry-after-ms") {
            h.insert("retry-after-ms", HeaderValue::from(retry_after_ms(delay)));
        }
        if !h.contains_key(header::RETRY_AFTER) {
            h.insert(
                header::RETRY_AFTER,
                HeaderValue::from(retry_after_secs(delay)),
            );
        }
    }
}

/// This library's errors as HTTP statuses; anything else is the upstream
/// failing to answer (502).
pub fn error_response(err: &BoxError) -> Response<Body> {
    let (status, kind, code, retry_after) = match err.downcast_ref::<Error>() {
        Some(Error::RateLimited { retry_after }) => (
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_error",
            "rate_limit_exceeded",
            Some(retry_after.unwrap_or(Duration::from_secs(1))),
        ),
        Some(Error::Overloaded { .. }) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            "overloaded",
            Some(Duration::from_secs(1)),
        ),
        Some(Error::QueueTimeout { .. }) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            "queue_timeout",
            Some(Duration::from_secs(1)),
        ),
        Some(Error::CircuitOpen { retry_after }) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            "upstream_unavailable",
            Some(*retry_after),
        ),
        Some(Error::Timeout { .. }) => {
            (StatusCode::GATEWAY_TIMEOUT, "server_error", "timeout", None)
        }
        Some(Error::DeadlineExceeded) => (
            StatusCode::GATEWAY_TIMEOUT,
            "server_error",
            "deadline_exceeded",
            None,
        ),
        Some(Error::RequestTooLarge { .. }) => (
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            "request_too_large",
            None,
        ),
        Some(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "internal",
            None,
        ),
        None => (
            StatusCode::BAD_GATEWAY,
            "server_error",
            "upstream_error",
            None,
        ),
    };
    let mut res = api_error(status, kind, code, &err.to_string());
    if let Some(delay) = retry_after {
        let h = res.headers_mut();
        h.insert(
            header::RETRY_AFTER,
            HeaderValue::from(retry_after_secs(delay)),
        );
        h.insert(
            "retry-after-ms",
            HeaderValue::from(delay.as_millis() as u64),
        );
    }
    res
}

fn count(route: &'static str, status: StatusCode) {
    let status = match status.as_u16() {
        200 => "200",
        400 => "400",
        401 => "401",
        413 => "413",
        429 => "429",
        500 => "500",
        502 => "502",
        503 => "503",
        504 => "504",
        529 => "529",
        _ => "other",
    };
    metrics::counter!("proxy_responses_total", "route" => route, "status" => status).increment(1);
}

async fn chat_completions(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response<Body> {
    let res = chat(&state, &headers, body).await;
    count("chat_completions", res.status());
    res
}

async fn chat(state: &AppState, headers: &HeaderMap, body: Bytes) -> Response<Body> {
    let Some(key) = api_key(headers) else {
        return unauthorized();
    };
    let (priority, deadline) = match (priority(headers), deadline(headers)) {
        (Ok(p), Ok(d)) => (p, d),
        (Err(message), _) | (_, Err(message)) => return bad_request(message),
    };
    let mut json: Value = match serde_json::from_slice(&body) {
        Ok(v @ Value::Object(_)) => v,
        _ => return bad_request("the body must be a JSON object"),
    };
    let prompt = prompt_text(&json);
    let routed = match json.get("model").and_then(Value::as_str) {
        None | Some(AUTO_MODEL) => {
            let model = state.config.routing.choose(&prompt).to_owned();
            json["model"] = Value::String(model.clone());
            Some(model)
        }
        Some(_) => None,
    };
    let body = if routed.is_some() {
        Bytes::from(json.to_string())
    } else {
        body
    };
    tracing::info!(key = ?key, priority = priority.level_name(), model = ?routed, "chat completion");

    let mut req = Request::new(body);
    *req.method_mut() = Method::POST;
    *req.uri_mut() = state.chat_uri.clone();
    let h = req.headers_mut();
    h.insert(header::AUTHORIZATION, state.upstream_auth(headers));
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some(accept) = headers.get(header::ACCEPT) {
        h.insert(header::ACCEPT, accept.clone());
    }
    let model = json
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let route = route_key(&model);
    let attempts = Attempts::default();
    let ext = req.extensions_mut();
    // The breaker reads the route; the swap inside the stack gives the
    // concurrency limit and the rate windows the caller's key.
    ext.insert(route.clone());
    ext.insert(CallerKey(key));
    ext.insert(attempts.clone());
    ext.insert(priority);
    if let Some(after) = deadline {
        ext.insert(Deadline(tokio::time::Instant::now() + after));
    }

    let result = state.stack.clone().oneshot(req).await;
    let made = attempts.0.load(Ordering::Relaxed);
    match result {
        Ok(upstream) => {
            let class = DefaultClassifier.classify(Ok(&upstream));
            let mut res = pass_through(learn_from(upstream));
            let advice = retry_advice(Ending::Upstream(&class), made, state.retries);
            advise(&mut res, advice, class.retry_after);
            if let Some(model) = routed.and_then(|m| HeaderValue::try_from(m).ok()) {
                res.headers_mut().insert(ROUTED_HEADER, model);
            }
            res
        }
        Err(err) => {
            tracing::debug!(error = %err, attempts = made, "chat completion refused");
            let mut res = error_response(&err);
            let half_open = || {
                let breaker = state.breaker.as_ref();
                breaker.and_then(|b| b.partition_state(&route)) == Some(CircuitState::HalfOpen)
            };
            let (ending, delay) = match err.downcast_ref::<Error>() {
                Some(own @ Error::CircuitOpen { .. }) if half_open() => {
                    (Ending::ProbesInFlight, own.retry_after())
                }
                Some(own) => (Ending::Refused(own), own.retry_after()),
                None => (Ending::Unreachable, None),
            };
            advise(&mut res, retry_advice(ending, made, state.retries), delay);
            res
        }
    }
}

/// The breaker's key for a request: its model. The proxy has one upstream,
/// so a model is a route; a model's failures open only its breaker.
pub fn route_key(model: &str) -> PartitionKey {
    PartitionKey::new(model)
}

/// The caller's key while the request passes the breaker (keyed by route);
/// put back as the `PartitionKey` for the concurrency limit and the rate
/// windows, which budget per caller.
#[derive(Clone)]
struct CallerKey(PartitionKey);

/// Attempts the retry layer sent towards the breaker for one request,
/// shared by the request's copies (a retry clones the extensions).
#[derive(Clone, Default)]
struct Attempts(Arc<AtomicU32>);

/// `GET /v1/models`: the upstream's list, fetched with the caller's key (or
/// the upstream key). Listing spends no token budget, so it bypasses the
/// stack.
async fn models(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response<Body> {
    if api_key(&headers).is_none() {
        count("models", StatusCode::UNAUTHORIZED);
        return unauthorized();
    }
    let mut req = Request::new(Full::new(Bytes::new()));
    *req.uri_mut() = state.models_uri.clone();
    req.headers_mut()
        .insert(header::AUTHORIZATION, state.upstream_auth(&headers));
    let res = match state.client.request(req).await {
        Ok(res) => pass_through(res.map(Body::new)),
        Err(err) => error_response(&err.into()),
    };
    count("models", res.status());
    res
}

/// `GET /health`: the proxy is up; what its stack holds now.
async fn health(State(state): State<Arc<AppState>>) -> Response<Body> {
    let rate = state.rate.as_ref().map(RateLimitHandle::stats);
    let accuracy = state.estimate.accuracy().summary();
    let conc = state
        .concurrency
        .as_ref()
        .and_then(ConcurrencyLimitLayer::stats);
    // The breakers of the models `auto` routes to; a model never called has
    // none yet, which reads as closed.
    let routing = &state.config.routing;
    let circuits: Option<Vec<(&str, CircuitState)>> = state.breaker.as_ref().map(|b| {
        [routing.cheap.as_str(), routing.strong.as_str()]
            .map(|model| {
                let s = b.partition_state(&route_key(model));
                (model, s.unwrap_or(CircuitState::Closed))
            })
            .to_vec()
    });
    let worst = circuits.as_ref().and_then(|c| {
        c.iter()
            .map(|(_, s)| *s)
            .max_by(|a, b| a.gauge_value().total_cmp(&b.gauge_value()))
    });
    let body = json!({
        "status": "ok",
        "circuit": worst.map(|s| s.to_string()),
        "circuits": circuits.map(|c| {
            c.into_iter()
                .map(|(m, s)| (m.to_owned(), Value::String(s.to_string())))
                .collect::<serde_json::Map<_, _>>()
        }),
        "in_flight": conc.map(|s| s.in_flight),
        "queued": conc.map(|s| s.queued),
        "rate_waiting": rate.map(|r| r.waiting),
        "keys": rate.map(|r| r.partitions),
        // how far the estimates were off: actual tokens over estimated
        "estimates": {
            "requests": accuracy.requests,
            "estimated_tokens": accuracy.total.estimated,
            "actual_tokens": accuracy.total.actual,
        },
    });
    let mut res = Response::new(Body::from(body.to_string()));
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    res
}

/// `GET /metrics`: Prometheus text.
async fn render_metrics(State(state): State<Arc<AppState>>) -> Response<Body> {
    let Some(handle) = &state.metrics else {
        return api_error(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "not_found",
            "no metrics recorder",
        );
    };
    handle.run_upkeep();
    let mut res = Response::new(Body::from(handle.render()));
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    res
}
