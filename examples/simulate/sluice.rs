//! The llm-sluice stack, outermost first: deadline → retry (server delays
//! honoured, budgeted) → circuit breaker per tenant → concurrency limit
//! with a priority queue → sliding RPM/TPM window per tenant → attempt
//! timeout → provider.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use llm_sluice::breaker::CircuitHandle;
use llm_sluice::rate::{Charging, DispatchLayer, RateLimitHandle};
use llm_sluice::sim::SimResponse;
use llm_sluice::{
    CircuitBreakerLayer, CircuitState, ConcurrencyLimitLayer, DeadlineLayer, Error, PartitionKey,
    RateLimitLayer, RetryLayer, TimeoutKind, TimeoutLayer,
};
use tower::util::BoxCloneService;
use tower::{BoxError, ServiceBuilder, ServiceExt};

use crate::options::Options;
use crate::run::{status_reason, Client, Fate, Probe};
use crate::workload::{tenant_name, Job};

/// How long a caller waits for an answer at most, retries included.
const DEADLINE: Duration = Duration::from_secs(120);

/// The stack and handles on its parts.
#[derive(Clone)]
pub struct SluiceClient {
    service: BoxCloneService<Job, SimResponse, BoxError>,
    concurrency: ConcurrencyLimitLayer,
    rate: RateLimitHandle,
    breakers: CircuitHandle,
    tenants: Arc<[PartitionKey]>,
    openings: Arc<AtomicU64>,
}

impl SluiceClient {
    /// The stack with the provider's limits, and the same number of calls
    /// in flight as the naive client; its token window reconciles
    /// reservations to the usage (the default, `Charging::Reconcile`).
    pub fn new(opts: &Options, probe: Probe) -> Result<SluiceClient, BoxError> {
        SluiceClient::with_charging(opts, probe, Charging::Reconcile)
    }

    /// The stack whose token window charges by `charging`.
    pub fn with_charging(
        opts: &Options,
        probe: Probe,
        charging: Charging,
    ) -> Result<SluiceClient, BoxError> {
        let openings = Arc::new(AtomicU64::new(0));
        let breaker = CircuitBreakerLayer::builder()
            .failure_rate(0.5)
            .count_window(20)
            .minimum_calls(10)
            .open_duration(Duration::from_secs(5))
            .per_partition(opts.tenants.max(1))
            .on_state_change({
                let openings = openings.clone();
                move |change| {
                    if change.to == CircuitState::Open {
                        openings.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
            .build()?;
        let concurrency = ConcurrencyLimitLayer::builder()
            .max_in_flight(opts.max_in_flight.max(1))
            .max_queued(1_000)
            .max_queue_wait(Duration::from_secs(60))
            .build_shared()?;
        let rate = RateLimitLayer::builder()
            .requests_per_minute(opts.rpm)
            .tokens_per_minute(opts.tpm)
            .token_charging(charging)
            .max_wait(Duration::from_secs(60))
            .build()?;
        let (rate_handle, breakers) = (rate.handle(), breaker.handle());
        let service = ServiceBuilder::new()
            .layer(DeadlineLayer::new(DEADLINE))
            .layer(
                RetryLayer::builder()
                    .max_retries(3)
                    .seed(opts.seed)
                    .build()?,
            )
            .layer(breaker)
            // the window split around the queue, as `LlmStack` does
            .layer(rate.admission())
            .layer(concurrency.clone())
            .layer(DispatchLayer::new())
            .layer(
                TimeoutLayer::builder()
                    .attempt(Duration::from_secs(60))
                    .build()?,
            )
            .service(probe)
            .map_err(BoxError::from)
            .boxed_clone();
        Ok(SluiceClient {
            service,
            concurrency,
            rate: rate_handle,
            breakers,
            tenants: (0..opts.tenants.max(1))
                .map(|i| tenant_name(i).into())
                .collect(),
            openings,
        })
    }
}

/// What an error of the stack means for the report.
fn error_fate(err: &BoxError) -> Fate {
    match err.downcast_ref::<Error>() {
        Some(Error::Overloaded { .. }) => Fate::Shed("shed: queue full"),
        Some(Error::QueueTimeout { .. }) => Fate::Shed("shed: queue timeout"),
        Some(Error::RateLimited { .. }) => Fate::Shed("shed: rate window wait"),
        Some(Error::CircuitOpen { .. }) => Fate::Shed("shed: circuit open"),
        Some(Error::RequestTooLarge { .. }) => Fate::Shed("shed: too large"),
        Some(Error::DeadlineExceeded)
        | Some(Error::Timeout {
            kind: TimeoutKind::Total,
        }) => Fate::Failed("deadline exceeded"),
        Some(Error::Timeout { .. }) => Fate::Failed("attempt timeout"),
        Some(_) => Fate::Failed("other error"),
        None if err.is::<std::io::Error>() => Fate::Failed("connection reset"),
        None => Fate::Failed("other error"),
    }
}

impl Client for SluiceClient {
    fn send(&self, job: Job) -> Pin<Box<dyn Future<Output = Fate> + Send>> {
        let service = self.service.clone();
        Box::pin(async move {
            match service.oneshot(job).await {
                Ok(res) if res.is_success() => Fate::Success {
                    tokens: res.usage.map_or(0, |u| u.total_tokens),
                    completion: res.usage.map_or(0, |u| u.completion_tokens),
                },
                Ok(res) => Fate::Failed(status_reason(res.status)),
                Err(err) => error_fate(&err),
            }
        })
    }

    fn queue_depth(&self) -> u64 {
        let queued = self.concurrency.stats().map_or(0, |s| s.queued);
        (queued + self.rate.stats().waiting) as u64
    }

    fn breakers_open(&self) -> u64 {
        self.tenants
            .iter()
            .filter(|key| {
                !matches!(
                    self.breakers.partition_state(key),
                    None | Some(CircuitState::Closed)
                )
            })
            .count() as u64
    }

    fn breaker_openings(&self) -> u64 {
        self.openings.load(Ordering::Relaxed)
    }
}
