//! The window in two stages, for a queue between them: [`Admission`] waits
//! for room and reserves it, [`Dispatch`] dates the reservation when the
//! request is sent. See [the module docs](super#two-stages-around-a-queue).

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::time::Instant;
use tower::BoxError;
use tower_layer::Layer;
use tower_service::Service;

use super::future::{AdmissionFuture, ResponseFuture, Settle};
use super::limits::Demand;
use super::shared::{Enter, Reservation, Shared};
use super::store::{MemoryStore, RateStore};
use super::RateLimitLayer;
use crate::classify::{Classify, DefaultClassifier};
use crate::clock;
use crate::meter::MeterResponse;
use crate::request::{LlmRequest, PartitionKey, Priority};

/// A request the window has admitted, on its way to [`Dispatch`].
///
/// It carries the reservation [`Admission`] made. Layers between the two
/// stages see it as the request it wraps (it implements
/// [`LlmRequest`] by asking the request). Dropping it before it reaches
/// [`Dispatch`] (a queue that sheds it or times it out, a caller that gives
/// up) gives the reservation back: the request was never sent.
pub struct Admitted<Req, C = DefaultClassifier, St: RateStore = MemoryStore> {
    request: Req,
    held: Option<Held<C, St>>,
}

/// A reservation not yet sent. Its `Drop` gives it back.
struct Held<C, St: RateStore> {
    reservation: Option<Reservation<St>>,
    /// The instant of admission: the reservation's timestamp.
    at: Instant,
    shared: Arc<Shared<C, St>>,
}

impl<C, St: RateStore> Drop for Held<C, St> {
    fn drop(&mut self) {
        if let Some(reservation) = self.reservation.take() {
            self.shared.release(reservation);
        }
    }
}

impl<Req, C, St: RateStore> Admitted<Req, C, St> {
    fn new(request: Req, held: Option<Held<C, St>>) -> Self {
        Admitted { request, held }
    }

    /// The request.
    pub fn get_ref(&self) -> &Req {
        &self.request
    }

    /// The request, mutably.
    pub fn get_mut(&mut self) -> &mut Req {
        &mut self.request
    }

    /// The request, giving its reservation back (as dropping it would):
    /// use [`Dispatch`] to send a request the window counts.
    pub fn into_inner(self) -> Req {
        self.request
    }

    /// The request and what [`Dispatch`] needs of its reservation.
    #[allow(clippy::type_complexity)]
    fn into_parts(mut self) -> (Req, Option<(Reservation<St>, Instant, Arc<Shared<C, St>>)>) {
        let held = self.held.take().and_then(|mut held| {
            let reservation = held.reservation.take()?;
            Some((reservation, held.at, held.shared.clone()))
        });
        (self.request, held)
    }
}

impl<Req: LlmRequest, C, St: RateStore> LlmRequest for Admitted<Req, C, St> {
    fn token_estimate(&self) -> u64 {
        self.request.token_estimate()
    }

    fn priority(&self) -> Priority {
        self.request.priority()
    }

    fn partition(&self) -> Option<PartitionKey> {
        self.request.partition()
    }

    fn deadline(&self) -> Option<Instant> {
        self.request.deadline()
    }

    fn set_deadline(&mut self, deadline: Instant) {
        self.request.set_deadline(deadline);
    }

    fn arrival(&self) -> Option<Instant> {
        self.request.arrival()
    }

    fn set_arrival(&mut self, at: Instant) {
        self.request.set_arrival(at);
    }
}

impl<Req: fmt::Debug, C, St: RateStore> fmt::Debug for Admitted<Req, C, St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Admitted")
            .field("request", &self.request)
            .field("reserved", &self.held.is_some())
            .finish()
    }
}

impl<C, St> RateLimitLayer<C, St>
where
    St: RateStore,
{
    /// The first stage of this window, for a queue between it and
    /// [`DispatchLayer`]: waits for room and reserves it, holding nothing
    /// else while it waits. Shares the windows of this layer and its clones.
    pub fn admission(&self) -> AdmissionLayer<C, St> {
        AdmissionLayer {
            shared: self.shared.clone(),
        }
    }
}

/// Makes [`Admission`]s; from [`RateLimitLayer::admission`].
pub struct AdmissionLayer<C = DefaultClassifier, St: RateStore = MemoryStore> {
    shared: Arc<Shared<C, St>>,
}

impl<C, St: RateStore> Clone for AdmissionLayer<C, St> {
    fn clone(&self) -> Self {
        AdmissionLayer {
            shared: self.shared.clone(),
        }
    }
}

impl<C, St: RateStore> fmt::Debug for AdmissionLayer<C, St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdmissionLayer")
            .field("shared", &self.shared)
            .finish()
    }
}

impl<S, C, St: RateStore> Layer<S> for AdmissionLayer<C, St> {
    type Service = Admission<S, C, St>;

    fn layer(&self, inner: S) -> Self::Service {
        Admission {
            inner,
            shared: Some(self.shared.clone()),
        }
    }
}

/// The window's first stage: waits for room in the windows, reserves it,
/// and passes the request on as an [`Admitted`] for [`Dispatch`] to date
/// when it is sent.
///
/// `poll_ready` is the inner service's. A request that must wait takes the
/// readied inner service with it (a clone stays behind), as
/// [`RateLimit`](super::RateLimit) does.
pub struct Admission<S, C = DefaultClassifier, St: RateStore = MemoryStore> {
    inner: S,
    /// `None`: no window; requests pass on with no reservation.
    shared: Option<Arc<Shared<C, St>>>,
}

impl<S, C, St: RateStore> Admission<S, C, St> {
    /// No window: every request passes on at once, with no reservation
    /// ([`LlmStack`](crate::LlmStack) puts one where its window is off).
    pub(crate) fn pass_through(inner: S) -> Self {
        Admission {
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

    /// The inner service, consuming the stage.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Clone, C, St: RateStore> Clone for Admission<S, C, St> {
    fn clone(&self) -> Self {
        Admission {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<S: fmt::Debug, C, St: RateStore> fmt::Debug for Admission<S, C, St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Admission")
            .field("inner", &self.inner)
            .field("shared", &self.shared)
            .finish()
    }
}

impl<S, Req, C, St> Service<Req> for Admission<S, C, St>
where
    S: Service<Admitted<Req, C, St>> + Clone,
    S::Error: Into<BoxError>,
    Req: LlmRequest,
    St: RateStore,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = AdmissionFuture<S, Req, C, St>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    #[inline]
    fn call(&mut self, request: Req) -> Self::Future {
        let Some(shared) = &self.shared else {
            return AdmissionFuture::called(self.inner.call(Admitted::new(request, None)));
        };
        let _scope = clock::enter();
        let demand = Demand::estimate(request.token_estimate());
        let key = request.partition();
        let entered = shared.enter(
            key.as_ref(),
            &demand,
            request.priority(),
            request.arrival(),
            request.deadline(),
        );
        match entered {
            Enter::Admitted(reservation) => {
                // The reading `enter` stamped the reservation with.
                let held = Held {
                    reservation: Some(reservation),
                    at: clock::now(),
                    shared: shared.clone(),
                };
                AdmissionFuture::called(self.inner.call(Admitted::new(request, Some(held))))
            }
            Enter::Failed(error) => AdmissionFuture::failed(error),
            Enter::Wait(guard) => {
                let clone = self.inner.clone();
                let ready = std::mem::replace(&mut self.inner, clone);
                AdmissionFuture::waiting(ready, request, demand, guard)
            }
        }
    }
}

/// Wraps an admitted request for the next stage (the admission future's
/// side of [`Admission::call`]).
pub(crate) fn admitted<Req, C, St: RateStore>(
    request: Req,
    reservation: Reservation<St>,
    at: Instant,
    shared: Arc<Shared<C, St>>,
) -> Admitted<Req, C, St> {
    Admitted::new(
        request,
        Some(Held {
            reservation: Some(reservation),
            at,
            shared,
        }),
    )
}

/// Makes [`Dispatch`]es. It holds nothing: what a request reserved comes
/// with it.
#[derive(Debug, Clone, Copy, Default)]
pub struct DispatchLayer {
    _private: (),
}

impl DispatchLayer {
    /// The window's second stage.
    pub const fn new() -> Self {
        DispatchLayer { _private: () }
    }
}

impl<S> Layer<S> for DispatchLayer {
    type Service = Dispatch<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Dispatch { inner }
    }
}

/// The window's second stage: sends an [`Admitted`] request, dating its
/// reservation at the instant it is sent, then corrects it from the result
/// as [`RateLimit`](super::RateLimit) does.
///
/// A request that no longer fits when it is sent (see
/// [the module docs](super#two-stages-around-a-queue)) fails with
/// [`Error::RateLimited`](crate::Error::RateLimited) and is not sent.
#[derive(Debug, Clone)]
pub struct Dispatch<S> {
    inner: S,
}

impl<S> Dispatch<S> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service, consuming the stage.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, Req, C, St> Service<Admitted<Req, C, St>> for Dispatch<S>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    S::Response: MeterResponse<Settle<C, St>>,
    C: Classify<S::Response>,
    St: RateStore,
{
    type Response = <S::Response as MeterResponse<Settle<C, St>>>::Output;
    type Error = BoxError;
    type Future = ResponseFuture<S, Req, C, St>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    #[inline]
    fn call(&mut self, admitted: Admitted<Req, C, St>) -> Self::Future {
        let (request, held) = admitted.into_parts();
        let Some((reservation, at, shared)) = held else {
            return ResponseFuture::passed(self.inner.call(request));
        };
        let _scope = clock::enter();
        match shared.redate(reservation, at, clock::now()) {
            Ok(reservation) => {
                ResponseFuture::calling(self.inner.call(request), reservation, shared)
            }
            Err(error) => ResponseFuture::failed(error),
        }
    }
}
