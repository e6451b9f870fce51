use std::fmt;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;
use tower::BoxError;
use tower_service::Service;

use super::backoff::Backoff;
use super::budget::RetryBudget;
use super::future::ResponseFuture;
use super::metrics::{GaveUp, Metrics};
use super::policy::OverCap;
use super::replay::Replay;
use crate::classify::{Classification, Classify};
use crate::clock;
use crate::request::LlmRequest;

#[derive(Debug, Clone, Copy)]
pub(crate) struct Config {
    pub(crate) max_retries: u32,
    pub(crate) backoff: Backoff,
    pub(crate) max_server_delay: Duration,
    pub(crate) over_cap: OverCap,
    pub(crate) total_timeout: Option<Duration>,
}

/// What one service (and its response futures) shares.
pub(crate) struct Shared<C, P, S> {
    /// A clone of the inner service, never called: retries are sent
    /// through clones of it. A response future that is never retried (the
    /// success path) then costs no clone of the whole stack inside, only
    /// the reference count of this `Arc`, which it holds anyway.
    pub(crate) template: Mutex<S>,
    pub(crate) config: Config,
    pub(crate) classifier: C,
    pub(crate) replay: P,
    pub(crate) budget: RetryBudget,
    pub(crate) rng: Arc<Mutex<fastrand::Rng>>,
    pub(crate) metrics: Metrics,
}

/// What to do with a result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Return it as it is.
    Return,
    /// Send the next attempt at this instant.
    RetryAt(Instant),
}

impl<C, P, S> Shared<C, P, S> {
    /// Decides whether a classified result is retried and when. `retries` is
    /// how many retries were made already; `replayable` whether a copy of the
    /// request exists.
    pub(crate) fn decide(
        &self,
        class: &Classification,
        retries: u32,
        replayable: bool,
        deadline: Option<Instant>,
    ) -> Decision {
        if !class.is_retryable() {
            return Decision::Return;
        }
        let config = &self.config;
        if retries >= config.max_retries {
            return self.give_up(GaveUp::MaxRetries, class);
        }
        if !replayable {
            return self.give_up(GaveUp::NotReplayable, class);
        }
        let server_delay = class.retry_after.filter(|d| !d.is_zero());
        let (delay, from_server) = match server_delay {
            Some(d) if d <= config.max_server_delay => (d, true),
            Some(d) => match config.over_cap {
                OverCap::Fail => {
                    tracing::debug!(
                        server_delay = ?d,
                        cap = ?config.max_server_delay,
                        "retry: server delay above the cap, returning the result"
                    );
                    return self.give_up(GaveUp::OverCap, class);
                }
                OverCap::UseBackoff => (self.backoff(retries), false),
            },
            None => (self.backoff(retries), false),
        };
        let now = Instant::now();
        // An attempt that starts at the deadline cannot finish before it.
        let at = match (now.checked_add(delay), deadline) {
            (Some(at), Some(deadline)) if at < deadline => at,
            (Some(at), None) => at,
            _ => {
                tracing::debug!(?delay, "retry: next attempt would start past the deadline");
                return self.give_up(GaveUp::Deadline, class);
            }
        };
        if !self.budget.withdraw_at(now) {
            return self.give_up(GaveUp::Budget, class);
        }
        if from_server {
            self.metrics.server_delay(delay);
        }
        self.metrics.retry(class.outcome);
        tracing::debug!(
            outcome = class.outcome.as_str(),
            retry = retries + 1,
            ?delay,
            from_server,
            "retrying"
        );
        Decision::RetryAt(at)
    }

    fn backoff(&self, retries: u32) -> Duration {
        self.config.backoff.delay(retries, &mut self.rng.lock())
    }

    fn give_up(&self, why: GaveUp, class: &Classification) -> Decision {
        tracing::debug!(
            reason = why.as_str(),
            outcome = class.outcome.as_str(),
            "retry: returning a retryable result"
        );
        self.metrics.gave_up(why);
        Decision::Return
    }
}

/// Retries failed calls to the inner service. Made by
/// [`RetryLayer`](super::RetryLayer); see the [module docs](super).
///
/// The inner service must be `Clone`: a response future that retries sends
/// its retries through a clone of it, made only when a retry is decided (put
/// a `tower::buffer::Buffer` in front of a service that is not). Errors are
/// boxed: the inner service's errors pass through inside the box unchanged.
pub struct Retry<S, C, P> {
    inner: S,
    /// `None`: no retries, calls pass through (the stack's disabled part).
    shared: Option<Arc<Shared<C, P, S>>>,
}

impl<S, C, P> Retry<S, C, P> {
    pub(crate) fn new(inner: S, shared: Arc<Shared<C, P, S>>) -> Self {
        Retry {
            inner,
            shared: Some(shared),
        }
    }

    /// A retry layer that sends each request once and counts nothing:
    /// [`LlmStack`](crate::LlmStack) puts one where retries are off, so that
    /// part costs a branch rather than a wrapper future.
    pub(crate) fn pass_through(inner: S) -> Self {
        Retry {
            inner,
            shared: None,
        }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service, unwrapped.
    pub fn into_inner(self) -> S {
        self.inner
    }

    /// The budget this service draws from.
    pub fn budget(&self) -> &RetryBudget {
        match &self.shared {
            Some(shared) => &shared.budget,
            // Only the stack makes a pass-through, and never exposes it.
            None => unused_budget(),
        }
    }
}

impl<S: Clone, C, P> Clone for Retry<S, C, P> {
    fn clone(&self) -> Self {
        Retry {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
        }
    }
}

/// The budget of a pass-through [`Retry`]: nothing deposits or withdraws.
fn unused_budget() -> &'static RetryBudget {
    static UNUSED: OnceLock<RetryBudget> = OnceLock::new();
    UNUSED.get_or_init(RetryBudget::default)
}

impl<S: fmt::Debug, C, P> fmt::Debug for Retry<S, C, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Retry");
        d.field("inner", &self.inner);
        match &self.shared {
            Some(shared) => d
                .field("config", &shared.config)
                .field("budget", &shared.budget),
            None => d.field("config", &"pass-through"),
        };
        d.finish_non_exhaustive()
    }
}

impl<S, C, P, Req> Service<Req> for Retry<S, C, P>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
    C: Classify<S::Response>,
    P: Replay<Req>,
    Req: LlmRequest,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S, C, P, Req>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut request: Req) -> Self::Future {
        let Some(shared) = &self.shared else {
            return ResponseFuture::passed(self.inner.call(request));
        };
        let _scope = clock::enter();
        let needs_deadline = shared.config.total_timeout.is_some() && request.deadline().is_none();
        // A request already dated by a layer outside (the deadline layer
        // sets it) is stamped with that instant, which is when it entered
        // the stack: the clock is read only when it is not.
        let now = match request.arrival() {
            Some(arrival) if !needs_deadline => arrival,
            arrival => {
                let now = clock::now();
                // Keep the request's place in line: queues inside order
                // retried attempts by this first arrival, not by when the
                // retry was sent.
                if arrival.is_none() {
                    request.set_arrival(now);
                }
                now
            }
        };
        if needs_deadline {
            if let Some(deadline) = shared.config.total_timeout.and_then(|t| now.checked_add(t)) {
                request.set_deadline(deadline);
            }
        }
        let deadline = request.deadline();
        // Dated at the arrival when there is one: a deposit older than the
        // budget's ttl is simply not counted.
        shared.budget.deposit_at(now);
        shared.metrics.attempt();
        let copy = if shared.config.max_retries > 0 {
            shared.replay.replay(&request)
        } else {
            None
        };
        // The ready service takes this call; a retry goes through a clone
        // of the shared template, made when it is decided.
        let span = super::future::attempt_span(1);
        let future = {
            let _entered = span.enter();
            self.inner.call(request)
        };
        ResponseFuture::new(future, copy, shared.clone(), deadline, span)
    }
}
