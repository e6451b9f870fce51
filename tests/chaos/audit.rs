//! An audit of the circuit breakers' half-open probe slots, kept from
//! outside the breaker by two thin layers: one inside it (sees the calls it
//! lets through) and one outside it (sees the calls it refuses).

use std::sync::{Arc, Mutex};

use llm_sluice::breaker::{CircuitHandle, StateChange};
use llm_sluice::classify::{Classify, DefaultClassifier};
use llm_sluice::sim::{SimRequest, SimResponse};
use llm_sluice::{CircuitState, Error, PartitionKey};
use tokio::time::Instant;
use tower::{BoxError, Layer};

use crate::HALF_OPEN_PROBES;

/// A model of each key's half-open probe slots, kept from outside the
/// breaker: a call that passes the breaker while it is half-open is a probe;
/// it holds its slot until it is dropped or its result is one the breaker
/// ignores (neither success nor failure), and keeps it once counted. The
/// breaker must refuse a call in half-open only when the model's slots are
/// all taken, and must never let more probes through than it has slots.
#[derive(Clone, Default)]
pub(crate) struct ProbeAudit {
    inner: Arc<Mutex<AuditState>>,
}

#[derive(Default)]
struct AuditState {
    periods: std::collections::HashMap<String, Period>,
    probes: u64,
    rejections: u64,
    violations: Vec<String>,
}

#[derive(Default, Clone, Copy)]
struct Period {
    id: u64,
    in_flight: u32,
    counted: u32,
}

impl ProbeAudit {
    pub(crate) fn state_changed(&self, change: &StateChange) {
        if change.to != CircuitState::HalfOpen {
            return;
        }
        let Some(key) = &change.partition else { return };
        let mut state = self.inner.lock().unwrap();
        let period = state.periods.entry(key.as_str().to_owned()).or_default();
        *period = Period {
            id: period.id + 1,
            in_flight: 0,
            counted: 0,
        };
    }

    pub(crate) fn probes(&self) -> u64 {
        self.inner.lock().unwrap().probes
    }

    pub(crate) fn rejections(&self) -> u64 {
        self.inner.lock().unwrap().rejections
    }

    pub(crate) fn violations(&self) -> Vec<String> {
        self.inner.lock().unwrap().violations.clone()
    }

    pub(crate) fn probes_layer(&self, handle: CircuitHandle) -> AuditLayer {
        AuditLayer {
            audit: self.clone(),
            handle,
            inside: true,
        }
    }

    pub(crate) fn rejections_layer(&self, handle: CircuitHandle) -> AuditLayer {
        AuditLayer {
            audit: self.clone(),
            handle,
            inside: false,
        }
    }

    /// A call passed the breaker; if it is half-open, the call is a probe.
    fn passed(&self, handle: &CircuitHandle, key: &PartitionKey) -> Option<ProbeTicket> {
        if handle.partition_state(key) != Some(CircuitState::HalfOpen) {
            return None;
        }
        let mut state = self.inner.lock().unwrap();
        state.probes += 1;
        let period = state.periods.entry(key.as_str().to_owned()).or_default();
        let taken = period.in_flight + period.counted;
        let id = period.id;
        period.in_flight += 1;
        if taken >= HALF_OPEN_PROBES {
            state.violations.push(format!(
                "{key:?}: a probe passed with {taken} of {HALF_OPEN_PROBES} slots taken at {:?}",
                Instant::now()
            ));
        }
        Some(ProbeTicket {
            audit: self.clone(),
            key: key.as_str().to_owned(),
            id,
            settled: false,
        })
    }

    /// The breaker refused a call.
    fn refused(&self, handle: &CircuitHandle, key: &PartitionKey) {
        if handle.partition_state(key) != Some(CircuitState::HalfOpen) {
            return;
        }
        let mut state = self.inner.lock().unwrap();
        state.rejections += 1;
        let period = state.periods.get(key.as_str()).copied().unwrap_or_default();
        let taken = period.in_flight + period.counted;
        if taken < HALF_OPEN_PROBES {
            state.violations.push(format!(
                "{key:?}: refused in half-open with only {taken} of {HALF_OPEN_PROBES} slots taken at {:?}",
                Instant::now()
            ));
        }
    }
}

/// One probe's slot in the model.
struct ProbeTicket {
    audit: ProbeAudit,
    key: String,
    id: u64,
    settled: bool,
}

impl ProbeTicket {
    fn settle(mut self, counted: bool) {
        self.settled = true;
        self.release(counted);
    }

    fn release(&self, counted: bool) {
        let mut state = self.audit.inner.lock().unwrap();
        if let Some(period) = state.periods.get_mut(&self.key) {
            if period.id == self.id {
                period.in_flight -= 1;
                period.counted += u32::from(counted);
            }
        }
    }
}

impl Drop for ProbeTicket {
    fn drop(&mut self) {
        if !self.settled {
            // dropped before its result: the breaker gives the slot back
            self.release(false);
        }
    }
}

#[derive(Clone)]
pub(crate) struct AuditLayer {
    audit: ProbeAudit,
    handle: CircuitHandle,
    /// Inside the breaker (sees probes) or outside (sees refusals).
    inside: bool,
}

impl<S> Layer<S> for AuditLayer {
    type Service = Audited<S>;

    fn layer(&self, inner: S) -> Audited<S> {
        Audited {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
pub(crate) struct Audited<S> {
    inner: S,
    layer: AuditLayer,
}

impl<S> tower::Service<SimRequest> for Audited<S>
where
    S: tower::Service<SimRequest, Response = SimResponse, Error = BoxError>,
{
    type Response = SimResponse;
    type Error = BoxError;
    type Future = AuditedFuture<S::Future>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: SimRequest) -> Self::Future {
        let key = req.key.clone();
        let ticket = if self.layer.inside {
            self.layer.audit.passed(&self.layer.handle, &key)
        } else {
            None
        };
        AuditedFuture {
            future: self.inner.call(req),
            ticket,
            refusals: (!self.layer.inside).then(|| (self.layer.clone(), key)),
        }
    }
}

pin_project_lite::pin_project! {
    pub(crate) struct AuditedFuture<F> {
        #[pin]
        future: F,
        ticket: Option<ProbeTicket>,
        refusals: Option<(AuditLayer, PartitionKey)>,
    }
}

impl<F> std::future::Future for AuditedFuture<F>
where
    F: std::future::Future<Output = Result<SimResponse, BoxError>>,
{
    type Output = F::Output;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<F::Output> {
        let this = self.project();
        let result = std::task::ready!(this.future.poll(cx));
        let class = DefaultClassifier.classify(result.as_ref().map_err(|e| &**e));
        if let Some(ticket) = this.ticket.take() {
            ticket.settle(class.is_success() || class.is_failure());
        }
        if let Some((layer, key)) = this.refusals.take() {
            if let Err(err) = &result {
                if let Some(Error::CircuitOpen { .. }) = err.downcast_ref::<Error>() {
                    layer.audit.refused(&layer.handle, &key);
                }
            }
        }
        std::task::Poll::Ready(result)
    }
}
