//! The typed path: [`SimRequest`] in, [`SimResponse`] out, no JSON.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower_service::Service;

use super::upstream::{InFlight, PlanKind, Upstream};
use crate::classify::{Classification, LlmResponse, Outcome, RateLimitState, Usage};
use crate::fallback::{RecordServedBy, ServedBy};
use crate::hold::HoldGuard;
use crate::meter::{BodyEnd, MeterResponse, OnBodyEnd, OutputSeen};
use crate::timeout::{BodyTimeouts, TimeoutResponse};
use crate::{LlmRequest, PartitionKey, Priority};

/// A chat completion request without the JSON: who sends it and how many
/// tokens it needs.
///
/// It implements [`LlmRequest`]: the token estimate is `prompt_tokens +
/// max_tokens`, the partition is the API key.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SimRequest {
    /// The API key; limits are per key.
    pub key: PartitionKey,
    /// Tokens in the prompt.
    pub prompt_tokens: u64,
    /// The most tokens the completion may generate.
    pub max_tokens: u64,
    /// Whether to answer at the first token with a [`SimStream`] that ends
    /// when the last token is generated, instead of answering once at the end.
    pub stream: bool,
    /// The request's priority, for the layers in front.
    pub priority: Priority,
    /// The request's deadline, for the layers in front (a retry layer's
    /// `total_timeout` sets it through [`LlmRequest::set_deadline`]).
    pub deadline: Option<Instant>,
    /// When the request first joined a queue, recorded by a retry layer in
    /// front ([`LlmRequest::set_arrival`]) so retried attempts keep their
    /// place in line.
    pub arrival: Option<Instant>,
}

impl SimRequest {
    /// A non-streamed request of normal priority with no deadline.
    pub fn new(key: impl Into<PartitionKey>, prompt_tokens: u64, max_tokens: u64) -> Self {
        SimRequest {
            key: key.into(),
            prompt_tokens,
            max_tokens,
            stream: false,
            priority: Priority::NORMAL,
            deadline: None,
            arrival: None,
        }
    }

    /// Sets whether the response streams.
    pub fn stream(mut self, stream: bool) -> Self {
        self.stream = stream;
        self
    }

    /// Sets the priority.
    pub fn priority(mut self, priority: Priority) -> Self {
        self.priority = priority;
        self
    }

    /// Sets the deadline.
    pub fn deadline(mut self, deadline: Instant) -> Self {
        self.deadline = Some(deadline);
        self
    }
}

impl LlmRequest for SimRequest {
    fn token_estimate(&self) -> u64 {
        self.prompt_tokens.saturating_add(self.max_tokens)
    }

    fn priority(&self) -> Priority {
        self.priority
    }

    fn partition(&self) -> Option<PartitionKey> {
        Some(self.key.clone())
    }

    fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    fn set_deadline(&mut self, deadline: Instant) {
        self.deadline = Some(deadline);
    }

    fn arrival(&self) -> Option<Instant> {
        self.arrival
    }

    fn set_arrival(&mut self, at: Instant) {
        self.arrival = Some(at);
    }
}

/// The upstream's answer to a [`SimRequest`].
///
/// It says what it means through [`LlmResponse`] the way an HTTP response
/// with the same status and headers would: a success with its [`Usage`], a
/// `429` with its delay and rate-limit state (a quota `429` or a request
/// larger than the whole token limit is not retryable), or a `500`, `503` or
/// `529`.
///
/// A streamed success carries a [`SimStream`] that keeps the request in
/// flight at the upstream until it ends or is dropped; a guard given to
/// [`HoldGuard::hold_guard`] lives in the stream as long.
#[derive(Debug)]
#[non_exhaustive]
pub struct SimResponse {
    /// The request's number at the upstream, from 0.
    pub id: u64,
    /// The HTTP status it stands for.
    pub status: u16,
    /// Tokens used, on a success.
    pub usage: Option<Usage>,
    /// The server's delay, on a `429`.
    pub retry_after: Option<Duration>,
    /// The `429` is a spent quota or a request too large for the limit: it
    /// will never succeed on retry.
    pub quota_exhausted: bool,
    /// The limits of the key after this request (the `x-ratelimit-*`
    /// headers).
    pub rate_limits: Option<RateLimitState>,
    /// The rest of a streamed success.
    pub stream: Option<SimStream>,
    /// Which fallback service answered, when a fallback layer in front
    /// served it from its secondary ([`RecordServedBy`]).
    pub served_by: Option<ServedBy>,
}

impl SimResponse {
    /// Whether the status is 2xx.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// Takes the stream of a streamed success.
    pub fn take_stream(&mut self) -> Option<SimStream> {
        self.stream.take()
    }
}

impl LlmResponse for SimResponse {
    fn classification(&self) -> Classification {
        let outcome = match self.status {
            200..=299 => Outcome::Success,
            429 => Outcome::RateLimited {
                quota_exhausted: self.quota_exhausted,
            },
            529 => Outcome::Overloaded,
            500..=599 => Outcome::ServerError,
            _ => Outcome::ClientError,
        };
        let mut c = Classification::new(outcome)
            .with_status(self.status)
            .with_retry_after(self.retry_after)
            .with_should_retry(self.quota_exhausted.then_some(false));
        c.usage = self.usage;
        c.rate_limits = self.rate_limits;
        c
    }
}

impl<G: Send + Sync + 'static> HoldGuard<G> for SimResponse {
    type Output = SimResponse;

    /// A streamed response keeps `guard` until its stream ends or is dropped;
    /// any other response drops it at once.
    fn hold_guard(mut self, guard: G) -> SimResponse {
        if let Some(stream) = &mut self.stream {
            if stream.in_flight.is_some() {
                stream.held.push(Box::new(guard));
            }
        }
        self
    }
}

impl<F: OnBodyEnd> MeterResponse<F> for SimResponse {
    type Output = SimResponse;

    /// Told at once: a simulated response's classification carries its
    /// usage (a streamed one's too: the simulation knows it in advance).
    fn meter(self, on_end: F) -> SimResponse {
        on_end.on_end(BodyEnd::Complete {
            usage: None,
            output: OutputSeen::default(),
        });
        self
    }

    fn unmetered(self) -> SimResponse {
        self
    }
}

impl RecordServedBy for SimResponse {
    fn served_by(&self) -> Option<ServedBy> {
        self.served_by
    }

    fn set_served_by(&mut self, by: ServedBy) {
        self.served_by = Some(by);
    }
}

impl TimeoutResponse for SimResponse {
    type Output = SimResponse;

    /// A typed response has no body of chunks to time: it is returned as
    /// it is. A [`SimStream`] is not cut by `first_chunk`, `idle` or
    /// `total`; time streamed completions through the HTTP path
    /// ([`SimBody`](super::SimBody) in a `TimeoutBody`), or drop the stream
    /// to end it.
    fn with_body_timeouts(self, _timeouts: BodyTimeouts) -> SimResponse {
        self
    }
}

pin_project! {
    /// The rest of a streamed completion: resolves to its [`Usage`] when the
    /// last token is generated. The request is in flight at the upstream
    /// (and any guard held by [`HoldGuard`] is kept) until then, or until
    /// the stream is dropped.
    pub struct SimStream {
        #[pin]
        sleep: Sleep,
        usage: Usage,
        in_flight: Option<InFlight>,
        held: Vec<Box<dyn Send + Sync>>,
    }
}

impl std::fmt::Debug for SimStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimStream")
            .field("ends_at", &self.sleep.deadline())
            .field("usage", &self.usage)
            .field("done", &self.in_flight.is_none())
            .finish()
    }
}

impl SimStream {
    /// When the last token will be generated.
    pub fn ends_at(&self) -> Instant {
        self.sleep.deadline()
    }
}

impl Future for SimStream {
    type Output = Usage;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Usage> {
        let this = self.project();
        if this.in_flight.is_some() {
            std::task::ready!(this.sleep.poll(cx));
            this.in_flight.take();
            this.held.clear();
        }
        Poll::Ready(*this.usage)
    }
}

pin_project! {
    /// The response future of the typed path.
    ///
    /// An answer that is due at once (a `429`, a zero latency) costs no
    /// timer.
    ///
    /// # Cancel safety
    ///
    /// Dropping it ends the request at the upstream: it leaves the in-flight
    /// count at once. The request still counts as received, and against the
    /// limits if it was admitted, as it would at a real server. Dropped
    /// before it arrives (with a [`transit`](super::UpstreamConfig::transit)
    /// delay), it never reaches the upstream.
    pub struct SimFuture {
        #[pin]
        state: FutState,
    }
}

pin_project! {
    #[project = FutStateProj]
    enum FutState {
        Transit { #[pin] sleep: Sleep, request: Option<(Upstream, SimRequest)> },
        Now { pending: Option<Pending> },
        Later { #[pin] sleep: Sleep, pending: Option<Pending> },
        Hang { in_flight: InFlight },
    }
}

#[derive(Debug)]
struct Pending {
    response: Result<SimResponse, std::io::Error>,
    in_flight: InFlight,
    /// A streamed success: the stream ends at this time.
    stream_ends: Option<Instant>,
}

impl std::fmt::Debug for SimFuture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("SimFuture");
        match &self.state {
            FutState::Transit { sleep, .. } => d.field("arrives_at", &sleep.deadline()),
            FutState::Now { pending } => d.field("answer", pending),
            FutState::Later { sleep, pending } => d
                .field("answers_at", &sleep.deadline())
                .field("answer", pending),
            FutState::Hang { .. } => d.field("hang", &true),
        };
        d.finish()
    }
}

impl Future for SimFuture {
    type Output = Result<SimResponse, std::io::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.project().state;
        let pending = loop {
            match state.as_mut().project() {
                FutStateProj::Transit { sleep, request } => {
                    std::task::ready!(sleep.poll(cx));
                    let (upstream, req) = request.take().expect("SimFuture polled after arrival");
                    // Arrived: the upstream stamps and decides it now.
                    state.set(upstream.arrive(req).state);
                }
                FutStateProj::Now { pending } => break pending.take(),
                FutStateProj::Later { sleep, pending } => {
                    std::task::ready!(sleep.poll(cx));
                    break pending.take();
                }
                // Never answers; the in-flight guard goes when the future does.
                FutStateProj::Hang { .. } => return Poll::Pending,
            }
        };
        let pending = pending.expect("SimFuture polled after completion");
        let mut response = pending.response;
        match (&mut response, pending.stream_ends) {
            (Ok(resp), Some(ends)) if resp.usage.is_some() => {
                resp.stream = Some(SimStream {
                    sleep: tokio::time::sleep_until(ends),
                    usage: resp.usage.unwrap_or_default(),
                    in_flight: Some(pending.in_flight),
                    held: Vec::new(),
                });
            }
            _ => drop(pending.in_flight),
        }
        Poll::Ready(response)
    }
}

impl Upstream {
    /// Sends a typed request: the same as `Service::call`, without naming
    /// the request type (the upstream is a service for two) and without
    /// `&mut`.
    pub fn send(&self, req: SimRequest) -> SimFuture {
        match self.draw_transit() {
            Some(delay) => SimFuture {
                state: FutState::Transit {
                    sleep: tokio::time::sleep(delay),
                    request: Some((self.clone(), req)),
                },
            },
            None => self.arrive(req),
        }
    }

    /// The request arrives now: stamped, limited and answered.
    fn arrive(&self, req: SimRequest) -> SimFuture {
        let now = Instant::now();
        let in_flight = self.enter();
        let plan = self.plan(now, req.key.as_str(), req.prompt_tokens, req.max_tokens);
        let response = |status: u16| SimResponse {
            id: plan.id,
            status,
            usage: None,
            retry_after: None,
            quota_exhausted: false,
            rate_limits: plan.views.to_state(),
            stream: None,
            served_by: None,
        };
        let (at, response, hang, stream_ends) = match plan.kind {
            PlanKind::Success {
                ttft,
                generation,
                completion_tokens,
                ..
            } => {
                let mut r = response(200);
                r.usage = Some(Usage::new(plan.prompt_tokens, completion_tokens));
                if req.stream {
                    (now + ttft, Ok(r), false, Some(now + ttft + generation))
                } else {
                    (now + ttft + generation, Ok(r), false, None)
                }
            }
            PlanKind::RateLimited { retry_after } => {
                let mut r = response(429);
                r.retry_after = Some(retry_after);
                (now, Ok(r), false, None)
            }
            PlanKind::TooLarge { .. } | PlanKind::Quota => {
                let mut r = response(429);
                r.quota_exhausted = true;
                (now, Ok(r), false, None)
            }
            PlanKind::Status { status, after } => (now + after, Ok(response(status)), false, None),
            PlanKind::Reset { after } => (
                now + after,
                Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionReset,
                    "connection reset by simulated upstream",
                )),
                false,
                None,
            ),
            PlanKind::Hang => (now, Ok(response(200)), true, None),
        };
        let state = if hang {
            FutState::Hang { in_flight }
        } else {
            let pending = Some(Pending {
                response,
                in_flight,
                stream_ends,
            });
            if at <= now {
                FutState::Now { pending }
            } else {
                FutState::Later {
                    sleep: tokio::time::sleep_until(at),
                    pending,
                }
            }
        };
        SimFuture { state }
    }
}

impl Service<SimRequest> for Upstream {
    type Response = SimResponse;
    type Error = std::io::Error;
    type Future = SimFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: SimRequest) -> SimFuture {
        self.send(req)
    }
}
