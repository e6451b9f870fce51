//! The workload: who asks for what, and when. Generated once from the seed
//! and replayed identically against both clients.

use std::time::Duration;

use llm_sluice::sim::SimRequest;
use llm_sluice::{LlmRequest, PartitionKey, Priority};
use tokio::time::Instant;

use crate::options::{Options, Scenario};

/// One request of the workload.
#[derive(Debug, Clone)]
pub struct Arrival {
    /// Its number, from 0, in arrival order.
    pub id: usize,
    /// When it arrives, from the start of the run.
    pub at: Duration,
    /// The request itself.
    pub request: SimRequest,
}

/// Every arrival of the run, in order.
#[derive(Debug, Clone)]
pub struct Workload {
    /// The tenants' API keys.
    pub tenants: Vec<PartitionKey>,
    /// The arrivals, oldest first.
    pub arrivals: Vec<Arrival>,
}

/// A standard normal draw (Box-Muller).
fn normal(rng: &mut fastrand::Rng) -> f64 {
    let (u1, u2) = (rng.f64(), rng.f64());
    (-2.0 * (1.0 - u1).ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// A log-normal draw with this median and shape, clamped to `[lo, hi]`.
fn log_normal(rng: &mut fastrand::Rng, median: f64, sigma: f64, lo: f64, hi: f64) -> u64 {
    (median * (sigma * normal(rng)).exp()).clamp(lo, hi).round() as u64
}

/// The name of tenant `i`: `tenant-a`, `tenant-b`, ...
pub fn tenant_name(i: usize) -> String {
    match u8::try_from(i).ok().filter(|i| *i < 26) {
        Some(i) => format!("tenant-{}", char::from(b'a' + i)),
        None => format!("tenant-{}", i + 1),
    }
}

impl Workload {
    /// Poisson arrivals at `rate` per second; tenants drawn with weights
    /// 1, 1/2, 1/3, ... (one heavy tenant, a long tail of light ones);
    /// prompts and `max_tokens` log-normal (most short, a few very long),
    /// as real traffic is; 10% high priority, 60% normal, 30% low. The
    /// pessimistic scenario draws shorter prompts (median 200 tokens) and a
    /// completion (median 300), and asks for `estimate_factor` times it.
    pub fn generate(opts: &Options) -> Workload {
        let mut rng = fastrand::Rng::with_seed(opts.seed);
        let n = opts.tenants.max(1);
        let tenants: Vec<PartitionKey> = (0..n).map(|i| tenant_name(i).into()).collect();
        let weights: Vec<f64> = (0..n).map(|i| 1.0 / (i + 1) as f64).collect();
        let total_weight: f64 = weights.iter().sum();
        let mut arrivals = Vec::new();
        let mut at = 0.0_f64;
        let rate = opts.rate.max(1e-9);
        loop {
            at += -(1.0 - rng.f64()).ln() / rate;
            if at >= opts.duration.as_secs_f64() {
                break;
            }
            let mut pick = rng.f64() * total_weight;
            let tenant = weights
                .iter()
                .position(|w| {
                    pick -= w;
                    pick < 0.0
                })
                .unwrap_or(n - 1);
            let (prompt, max_tokens) = match opts.scenario {
                Scenario::Default => (
                    log_normal(&mut rng, 700.0, 1.0, 20.0, 24_000.0),
                    log_normal(&mut rng, 350.0, 0.6, 16.0, 4_096.0),
                ),
                // Completion-heavy calls whose `max_tokens` is a multiple of
                // the completion the provider will generate (it generates
                // `1 / estimate_factor` of `max_tokens`).
                Scenario::Pessimistic => {
                    let prompt = log_normal(&mut rng, 200.0, 0.6, 20.0, 4_000.0);
                    let completion = log_normal(&mut rng, 300.0, 0.6, 16.0, 1_024.0);
                    let max_tokens = (completion as f64 * opts.estimate_factor.max(1.0)).round();
                    (prompt, max_tokens as u64)
                }
            };
            let priority = match rng.u8(..10) {
                0 => Priority::HIGH,
                1..=3 => Priority::LOW,
                _ => Priority::NORMAL,
            };
            arrivals.push(Arrival {
                id: arrivals.len(),
                at: Duration::from_secs_f64(at),
                request: SimRequest::new(tenants[tenant].clone(), prompt, max_tokens)
                    .priority(priority),
            });
        }
        Workload { tenants, arrivals }
    }

    /// Tokens (prompt + `max_tokens`) asked for per minute, on average.
    pub fn tokens_per_minute(&self, duration: Duration) -> f64 {
        let total: u64 = self
            .arrivals
            .iter()
            .map(|a| a.request.token_estimate())
            .sum();
        total as f64 * 60.0 / duration.as_secs_f64().max(1e-9)
    }
}

/// A workload request on its way through a client: the request and its
/// number, so the innermost service can tell which request reached the
/// provider and when.
#[derive(Debug, Clone)]
pub struct Job {
    /// The arrival's number.
    pub id: usize,
    /// The request.
    pub request: SimRequest,
}

impl LlmRequest for Job {
    fn token_estimate(&self) -> u64 {
        self.request.token_estimate()
    }

    fn priority(&self) -> Priority {
        self.request.priority
    }

    fn partition(&self) -> Option<PartitionKey> {
        Some(self.request.key.clone())
    }

    fn deadline(&self) -> Option<Instant> {
        self.request.deadline
    }

    fn set_deadline(&mut self, deadline: Instant) {
        self.request.set_deadline(deadline);
    }

    fn arrival(&self) -> Option<Instant> {
        self.request.arrival
    }

    fn set_arrival(&mut self, at: Instant) {
        self.request.set_arrival(at);
    }
}
