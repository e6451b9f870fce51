//! The HTTP path: an OpenAI-compatible chat completions endpoint.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use serde::Deserialize;
use tokio::time::{Instant, Sleep};
use tower::BoxError;
use tower_service::Service;

use super::limits::{go_duration, Views};
use super::upstream::{InFlight, PlanKind, Upstream};
use crate::classify::Usage;

/// The model `GET /v1/models` lists. Requests may name any model.
pub const MODEL: &str = "sim-1";

#[derive(Debug, Deserialize)]
struct ChatRequest {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    messages: Vec<Message>,
    #[serde(default)]
    max_tokens: Option<u64>,
    #[serde(default)]
    max_completion_tokens: Option<u64>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
}

#[derive(Debug, Deserialize)]
struct Message {
    #[serde(default)]
    content: serde_json::Value,
}

#[derive(Debug, Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: Option<bool>,
}

/// Prompt tokens of a request: about four characters a token, plus four
/// tokens of overhead per message.
fn prompt_tokens(messages: &[Message]) -> u64 {
    fn chars(v: &serde_json::Value) -> u64 {
        match v {
            serde_json::Value::String(s) => s.chars().count() as u64,
            serde_json::Value::Array(parts) => parts.iter().map(chars).sum(),
            serde_json::Value::Object(part) => part.get("text").map_or(0, chars),
            _ => 0,
        }
    }
    messages
        .iter()
        .map(|m| 4 + chars(&m.content).div_ceil(4))
        .sum()
}

const WORDS: [&str; 8] = [
    "The ", "quick ", "brown ", "fox ", "jumps ", "over ", "lazy ", "dogs. ",
];

fn text(from: u64, to: u64) -> String {
    (from..to).map(|i| WORDS[(i % 8) as usize]).collect()
}

fn json_response(status: StatusCode, body: String) -> Response<SimBody> {
    let mut res = Response::new(SimBody::full(body));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    res
}

fn error_body(kind: &str, code: &str, message: &str) -> String {
    serde_json::json!({
        "error": { "message": message, "type": kind, "code": code, "param": null }
    })
    .to_string()
}

fn header_value(s: String) -> HeaderValue {
    HeaderValue::try_from(s).unwrap_or(HeaderValue::from_static("0"))
}

fn rate_headers(res: &mut Response<SimBody>, views: Views) {
    let h = res.headers_mut();
    for (name, view) in [("requests", views.requests), ("tokens", views.tokens)] {
        let Some(v) = view else { continue };
        let limit = match name {
            "requests" => [
                "x-ratelimit-limit-requests",
                "x-ratelimit-remaining-requests",
                "x-ratelimit-reset-requests",
            ],
            _ => [
                "x-ratelimit-limit-tokens",
                "x-ratelimit-remaining-tokens",
                "x-ratelimit-reset-tokens",
            ],
        };
        h.insert(limit[0], header_value(v.limit.to_string()));
        h.insert(limit[1], header_value(v.remaining.to_string()));
        h.insert(limit[2], header_value(go_duration(v.reset)));
    }
}

/// The body of a simulated response: a whole JSON document, or a
/// `text/event-stream` that yields `data:` chunks in (virtual) time.
///
/// The request stays in flight at the upstream until the body ends or is
/// dropped.
pub struct SimBody {
    full: Option<Bytes>,
    sse: Option<Box<Sse>>,
    in_flight: Option<InFlight>,
}

impl fmt::Debug for SimBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimBody")
            .field("streaming", &self.sse.is_some())
            .field("done", &self.in_flight.is_none())
            .finish()
    }
}

impl SimBody {
    fn full(body: impl Into<Bytes>) -> SimBody {
        SimBody {
            full: Some(body.into()),
            sse: None,
            in_flight: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Tokens,
    Finish,
    Usage,
    Done,
    End,
}

struct Sse {
    sleep: Pin<Box<Sleep>>,
    start: Instant,
    ttft: Duration,
    tokens_per_second: f64,
    total: u64,
    sent: u64,
    max_tokens: u64,
    chunk: u64,
    include_usage: bool,
    usage: Usage,
    /// `"id":...,"object":...,"created":0,"model":...` prefix of each chunk.
    head: String,
    phase: Phase,
}

impl Sse {
    fn event(&self, rest: &str) -> Bytes {
        Bytes::from(format!("data: {{{},{rest}}}\n\n", self.head))
    }

    fn next_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        loop {
            match self.phase {
                Phase::Tokens if self.sent < self.total => {
                    let to = (self.sent + self.chunk).min(self.total);
                    let offset = (to - 1) as f64 / self.tokens_per_second;
                    let at = self.start + self.ttft + super::upstream::secs(offset);
                    if self.sleep.deadline() != at {
                        self.sleep.as_mut().reset(at);
                    }
                    std::task::ready!(self.sleep.as_mut().poll(cx));
                    let role = if self.sent == 0 {
                        "\"role\":\"assistant\","
                    } else {
                        ""
                    };
                    let content = serde_json::to_string(&text(self.sent, to)).unwrap_or_default();
                    self.sent = to;
                    return Poll::Ready(Some(self.event(&format!(
                        "\"choices\":[{{\"index\":0,\"delta\":{{{role}\"content\":{content}}},\"finish_reason\":null}}]"
                    ))));
                }
                Phase::Tokens => {
                    // No tokens at all still waits for the first-token time.
                    if self.total == 0 {
                        let at = self.start + self.ttft;
                        if self.sleep.deadline() != at {
                            self.sleep.as_mut().reset(at);
                        }
                        std::task::ready!(self.sleep.as_mut().poll(cx));
                    }
                    self.phase = Phase::Finish;
                }
                Phase::Finish => {
                    self.phase = if self.include_usage {
                        Phase::Usage
                    } else {
                        Phase::Done
                    };
                    let reason = if self.total >= self.max_tokens {
                        "length"
                    } else {
                        "stop"
                    };
                    return Poll::Ready(Some(self.event(&format!(
                        "\"choices\":[{{\"index\":0,\"delta\":{{}},\"finish_reason\":\"{reason}\"}}]"
                    ))));
                }
                Phase::Usage => {
                    self.phase = Phase::Done;
                    let u = self.usage;
                    return Poll::Ready(Some(self.event(&format!(
                        "\"choices\":[],\"usage\":{{\"prompt_tokens\":{},\"completion_tokens\":{},\"total_tokens\":{}}}",
                        u.prompt_tokens, u.completion_tokens, u.total_tokens
                    ))));
                }
                Phase::Done => {
                    self.phase = Phase::End;
                    return Poll::Ready(Some(Bytes::from_static(b"data: [DONE]\n\n")));
                }
                Phase::End => return Poll::Ready(None),
            }
        }
    }
}

impl Body for SimBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        let this = self.get_mut();
        let next = if let Some(sse) = &mut this.sse {
            std::task::ready!(sse.next_frame(cx))
        } else {
            this.full.take()
        };
        if next.is_none() || this.is_end_stream() {
            this.in_flight = None;
        }
        Poll::Ready(next.map(|b| Ok(Frame::data(b))))
    }

    fn is_end_stream(&self) -> bool {
        match &self.sse {
            Some(sse) => sse.phase == Phase::End,
            None => self.full.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match (&self.sse, &self.full) {
            (None, Some(b)) => SizeHint::with_exact(b.len() as u64),
            (None, None) => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

type HttpFuture = Pin<Box<dyn Future<Output = Result<Response<SimBody>, std::io::Error>> + Send>>;

impl<B> Service<Request<B>> for Upstream
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    type Response = Response<SimBody>;
    type Error = std::io::Error;
    type Future = HttpFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> HttpFuture {
        let this = self.clone();
        // Drawn at the call, in call order, like the typed path's.
        let transit = this.draw_transit();
        Box::pin(async move {
            if let Some(delay) = transit {
                tokio::time::sleep(delay).await;
            }
            this.handle(req).await
        })
    }
}

impl Upstream {
    async fn handle<B>(self, req: Request<B>) -> Result<Response<SimBody>, std::io::Error>
    where
        B: Body,
        B::Error: Into<BoxError>,
    {
        let path = req.uri().path();
        match (req.method(), path) {
            (&Method::GET, "/v1/models") => {
                let body = serde_json::json!({
                    "object": "list",
                    "data": [{ "id": MODEL, "object": "model", "created": 0, "owned_by": "llm-sluice" }]
                });
                Ok(json_response(StatusCode::OK, body.to_string()))
            }
            (&Method::POST, "/v1/chat/completions") => self.chat(req).await,
            _ => {
                self.count_bad_request();
                Ok(json_response(
                    StatusCode::NOT_FOUND,
                    error_body("invalid_request_error", "unknown_url", "unknown path"),
                ))
            }
        }
    }

    async fn chat<B>(self, req: Request<B>) -> Result<Response<SimBody>, std::io::Error>
    where
        B: Body,
        B::Error: Into<BoxError>,
    {
        let key = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(|k| k.trim().to_owned())
            .filter(|k| !k.is_empty());
        let Some(key) = key else {
            self.count_bad_request();
            return Ok(json_response(
                StatusCode::UNAUTHORIZED,
                error_body(
                    "invalid_request_error",
                    "invalid_api_key",
                    "missing `Authorization: Bearer` API key",
                ),
            ));
        };
        let bytes = match req.into_body().collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(e) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    e.into(),
                ))
            }
        };
        let chat: ChatRequest = match serde_json::from_slice(&bytes) {
            Ok(chat) => chat,
            Err(e) => {
                self.count_bad_request();
                return Ok(json_response(
                    StatusCode::BAD_REQUEST,
                    error_body("invalid_request_error", "invalid_json", &e.to_string()),
                ));
            }
        };
        let cfg = self.config();
        let max_tokens = chat
            .max_completion_tokens
            .or(chat.max_tokens)
            .unwrap_or(cfg.default_max_tokens);
        let prompt = prompt_tokens(&chat.messages);
        let model = chat.model.unwrap_or_else(|| MODEL.to_owned());
        let stream = chat.stream.unwrap_or(false);
        let include_usage = chat
            .stream_options
            .and_then(|o| o.include_usage)
            .unwrap_or(false);

        let start = Instant::now();
        let in_flight = self.enter();
        let plan = self.plan(start, &key, prompt, max_tokens);
        let mut res = match plan.kind {
            PlanKind::RateLimited { retry_after } => {
                let which = match plan.views.requests {
                    Some(r) if r.remaining == 0 => "requests",
                    _ => "tokens",
                };
                let mut res = json_response(
                    StatusCode::TOO_MANY_REQUESTS,
                    error_body(
                        which,
                        "rate_limit_exceeded",
                        &format!(
                            "Rate limit reached for {which}. Please try again in {}.",
                            go_duration(retry_after)
                        ),
                    ),
                );
                let h = res.headers_mut();
                let secs = retry_after.as_millis().div_ceil(1000);
                h.insert(header::RETRY_AFTER, header_value(secs.to_string()));
                h.insert(
                    "retry-after-ms",
                    header_value(retry_after.as_millis().to_string()),
                );
                res
            }
            PlanKind::TooLarge { limit } => {
                let mut res = json_response(
                    StatusCode::TOO_MANY_REQUESTS,
                    error_body(
                        "tokens",
                        "rate_limit_exceeded",
                        &format!(
                            "Request too large: limit {limit} tokens, requested {}.",
                            prompt + max_tokens
                        ),
                    ),
                );
                res.headers_mut()
                    .insert("x-should-retry", HeaderValue::from_static("false"));
                res
            }
            PlanKind::Quota => {
                let mut res = json_response(
                    StatusCode::TOO_MANY_REQUESTS,
                    error_body(
                        "insufficient_quota",
                        "insufficient_quota",
                        "You exceeded your current quota.",
                    ),
                );
                res.headers_mut()
                    .insert("x-should-retry", HeaderValue::from_static("false"));
                res
            }
            PlanKind::Status { status, after } => {
                tokio::time::sleep_until(start + after).await;
                let (kind, message) = match status {
                    529 => ("overloaded_error", "Overloaded"),
                    503 => ("server_error", "The server is temporarily unavailable."),
                    _ => (
                        "server_error",
                        "The server had an error processing your request.",
                    ),
                };
                json_response(
                    StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                    error_body(kind, kind, message),
                )
            }
            PlanKind::Reset { after } => {
                tokio::time::sleep_until(start + after).await;
                return Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionReset,
                    "connection reset by simulated upstream",
                ));
            }
            // Never answers; `in_flight` is held until the future is dropped.
            PlanKind::Hang => return std::future::pending().await,
            PlanKind::Success {
                ttft,
                generation,
                completion_tokens,
                tokens_per_second,
            } => {
                let usage = Usage::new(prompt, completion_tokens);
                let model_json = serde_json::to_string(&model).unwrap_or_default();
                let id = format!("chatcmpl-sim-{}", plan.id);
                if stream {
                    let sse = Sse {
                        sleep: Box::pin(tokio::time::sleep_until(start + ttft)),
                        start,
                        ttft,
                        tokens_per_second,
                        total: completion_tokens,
                        sent: 0,
                        max_tokens,
                        chunk: cfg.tokens_per_chunk,
                        include_usage,
                        usage,
                        head: format!(
                            "\"id\":\"{id}\",\"object\":\"chat.completion.chunk\",\"created\":0,\"model\":{model_json}"
                        ),
                        phase: Phase::Tokens,
                    };
                    let mut res = Response::new(SimBody {
                        full: None,
                        sse: Some(Box::new(sse)),
                        in_flight: Some(in_flight),
                    });
                    let h = res.headers_mut();
                    h.insert(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("text/event-stream"),
                    );
                    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
                    rate_headers(&mut res, plan.views);
                    res.headers_mut()
                        .insert("x-request-id", header_value(format!("req_sim_{}", plan.id)));
                    return Ok(res);
                }
                tokio::time::sleep_until(start + ttft + generation).await;
                let reason = if completion_tokens >= max_tokens {
                    "length"
                } else {
                    "stop"
                };
                let body = format!(
                    "{{\"id\":\"{id}\",\"object\":\"chat.completion\",\"created\":0,\"model\":{model_json},\
                     \"choices\":[{{\"index\":0,\"message\":{{\"role\":\"assistant\",\"content\":{}}},\"finish_reason\":\"{reason}\"}}],\
                     \"usage\":{{\"prompt_tokens\":{},\"completion_tokens\":{},\"total_tokens\":{}}}}}",
                    serde_json::to_string(&text(0, completion_tokens)).unwrap_or_default(),
                    usage.prompt_tokens,
                    usage.completion_tokens,
                    usage.total_tokens
                );
                let mut res = json_response(StatusCode::OK, body);
                res.extensions_mut().insert(usage);
                res.body_mut().in_flight = Some(in_flight);
                rate_headers(&mut res, plan.views);
                res.headers_mut()
                    .insert("x-request-id", header_value(format!("req_sim_{}", plan.id)));
                return Ok(res);
            }
        };
        rate_headers(&mut res, plan.views);
        res.headers_mut()
            .insert("x-request-id", header_value(format!("req_sim_{}", plan.id)));
        drop(in_flight);
        Ok(res)
    }
}
