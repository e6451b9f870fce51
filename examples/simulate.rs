//! The main job: one workload, run twice in virtual time against the same
//! simulated provider — once through a hand-written client (a semaphore, a
//! timeout, retries with plain backoff), once through the llm-sluice stack —
//! and a side-by-side report of what each achieved.
//!
//! Tokio's clock is paused, so ten minutes of traffic take a second or two of
//! wall time, and the same seed gives the same report on every run.
//!
//! ```text
//! cargo run --release --example simulate
//! ```

use std::collections::BTreeMap;
use std::time::Duration;

use llm_sluice::classify::{Classification, LlmResponse};
use llm_sluice::fallback::RecordServedBy;
use llm_sluice::hold::Complete;
use llm_sluice::sim::{Dist, Faults, SimRequest, SimResponse, Upstream};
use llm_sluice::{
    CircuitBreakerLayer, ConcurrencyLimitLayer, Error, Priority, RateLimitLayer, RetryLayer,
    TimeoutLayer,
};
use tokio::time::Instant;
use tower::{BoxError, ServiceBuilder, ServiceExt};

/// The workload and the provider. Demand sits above the provider's limits on
/// purpose: that is when a client's policy matters.
const SEED: u64 = 7;
const DURATION: Duration = Duration::from_secs(10 * 60);
const ARRIVALS_PER_SECOND: f64 = 10.0;
const TENANTS: [&str; 4] = ["tenant-a", "tenant-b", "tenant-c", "tenant-d"];
/// The provider's limits, per API key (one key per tenant).
const PROVIDER_RPM: u64 = 120;
const PROVIDER_TPM: u64 = 200_000;
/// The concurrency both clients allow.
const MAX_IN_FLIGHT: usize = 64;

#[tokio::main(flavor = "current_thread", start_paused = true)]
async fn main() -> Result<(), BoxError> {
    let workload = Workload::generate(SEED);
    println!(
        "workload: {} requests over {:?} from {} tenants ({:.0} RPM each) against a provider allowing {} RPM and {} TPM per key, with faults\n",
        workload.requests.len(),
        DURATION,
        TENANTS.len(),
        ARRIVALS_PER_SECOND * 60.0 / TENANTS.len() as f64,
        PROVIDER_RPM,
        PROVIDER_TPM,
    );

    let naive = run_naive(&workload).await?;
    let sluice = run_sluice(&workload).await?;
    print_report(&naive, &sluice);
    Ok(())
}

/// One request of the workload.
#[derive(Clone)]
struct Planned {
    at: Duration,
    request: SimRequest,
}

struct Workload {
    requests: Vec<Planned>,
}

impl Workload {
    /// Poisson arrivals; prompt sizes from a heavy-tailed (Pareto) law, as
    /// real prompts are mostly short with a few very long ones; a mix of
    /// priorities.
    fn generate(seed: u64) -> Workload {
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut requests = Vec::new();
        let mut at = 0.0_f64;
        loop {
            at += -(1.0 - rng.f64()).ln() / ARRIVALS_PER_SECOND;
            if at >= DURATION.as_secs_f64() {
                break;
            }
            let tenant = rng.usize(..TENANTS.len());
            let prompt = (300.0 / (1.0 - rng.f64()).powf(0.7)).min(12_000.0) as u64;
            let max_tokens = [256, 512, 1024][rng.usize(..3)];
            let priority = match rng.u8(..10) {
                0 => Priority::HIGH,
                1..=2 => Priority::LOW,
                _ => Priority::NORMAL,
            };
            requests.push(Planned {
                at: Duration::from_secs_f64(at),
                request: SimRequest::new(TENANTS[tenant], prompt, max_tokens).priority(priority),
            });
        }
        Workload { requests }
    }
}

/// The simulated provider: the same for both runs.
fn provider() -> Result<Upstream, BoxError> {
    Ok(Upstream::builder()
        .requests_per_window(PROVIDER_RPM)
        .tokens_per_window(PROVIDER_TPM)
        .faults(Faults {
            error_500: 0.02,
            error_503: 0.01,
            overloaded_529: 0.01,
            hang: 0.002,
            reset: 0.005,
            quota_429: 0.0,
        })
        .time_to_first_token(Dist::uniform(
            Duration::from_millis(300),
            Duration::from_millis(1500),
        ))
        .tokens_per_second(Dist::Fixed(150.0))
        .record_log(false)
        .seed(SEED)
        .build()?)
}

/// What became of one request.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Fate {
    Success,
    Failed(&'static str),
}

struct Report {
    name: &'static str,
    fates: BTreeMap<Fate, u64>,
    shed_by_priority: BTreeMap<&'static str, u64>,
    latencies: Vec<Duration>,
    sent_to_provider: u64,
    rate_limited_by_provider: u64,
    max_in_flight: u64,
    tokens_used: u64,
    /// From the first arrival until the last request ended.
    elapsed: Duration,
}

/// The response as the layers see it: complete on arrival (these requests
/// do not stream), classified as the provider's answer.
struct Answer(SimResponse);

impl Complete for Answer {}
impl RecordServedBy for Answer {}
impl LlmResponse for Answer {
    fn classification(&self) -> Classification {
        self.0.classification()
    }
}

/// The client people write by hand: a semaphore of `MAX_IN_FLIGHT`, a 60 s
/// timeout, and up to three retries of any failure after 1 s, 2 s, 4 s,
/// whatever the server said.
async fn run_naive(workload: &Workload) -> Result<Report, BoxError> {
    let upstream = provider()?;
    let client = ServiceBuilder::new()
        .concurrency_limit(MAX_IN_FLIGHT)
        .timeout(Duration::from_secs(60))
        .service(upstream.clone());
    let start = Instant::now();
    let mut tasks = Vec::new();
    for planned in &workload.requests {
        let client = client.clone();
        let planned = planned.clone();
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep_until(start + planned.at).await;
            let begun = Instant::now();
            let mut attempt = 0;
            let mut tokens = 0;
            let fate = loop {
                let result = client.clone().oneshot(planned.request.clone()).await;
                let fate = match &result {
                    Ok(r) if r.is_success() => {
                        tokens = r.usage.map_or(0, |u| u.total_tokens);
                        break Fate::Success;
                    }
                    Ok(r) => Fate::Failed(status_name(r.status)),
                    Err(e) => Fate::Failed(error_name(e)),
                };
                if attempt == 3 {
                    break fate;
                }
                tokio::time::sleep(Duration::from_secs(1 << attempt)).await;
                attempt += 1;
            };
            (fate, planned.request.priority, begun.elapsed(), tokens)
        }));
    }
    collect("naive client", start, tasks, &upstream).await
}

/// The llm-sluice stack, outermost first: retry (server delays honoured,
/// budgeted) → circuit breaker per key → concurrency limit with a priority
/// queue → sliding RPM/TPM window per key → attempt timeout → provider.
async fn run_sluice(workload: &Workload) -> Result<Report, BoxError> {
    let upstream = provider()?;
    let stack = ServiceBuilder::new()
        .layer(RetryLayer::builder().max_retries(3).seed(SEED).build()?)
        .layer(
            CircuitBreakerLayer::builder()
                .failure_rate(0.5)
                .count_window(20)
                .minimum_calls(10)
                .open_duration(Duration::from_secs(10))
                .per_partition(16)
                .build()?,
        )
        .layer(
            ConcurrencyLimitLayer::builder()
                .max_in_flight(MAX_IN_FLIGHT)
                .max_queued(2_000)
                .max_queue_wait(Duration::from_secs(120))
                .build()?,
        )
        .layer(
            RateLimitLayer::builder()
                .requests_per_minute(PROVIDER_RPM)
                .tokens_per_minute(PROVIDER_TPM)
                .max_wait(Duration::from_secs(120))
                .build()?,
        )
        .layer(
            TimeoutLayer::builder()
                .attempt(Duration::from_secs(60))
                .build()?,
        )
        .map_response(Answer)
        .service(upstream.clone());
    let start = Instant::now();
    let mut tasks = Vec::new();
    for planned in &workload.requests {
        let stack = stack.clone();
        let planned = planned.clone();
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep_until(start + planned.at).await;
            let begun = Instant::now();
            let (fate, tokens) = match stack.oneshot(planned.request.clone()).await {
                Ok(Answer(r)) if r.is_success() => {
                    (Fate::Success, r.usage.map_or(0, |u| u.total_tokens))
                }
                Ok(Answer(r)) => (Fate::Failed(status_name(r.status)), 0),
                Err(e) => (Fate::Failed(error_name(&e)), 0),
            };
            (fate, planned.request.priority, begun.elapsed(), tokens)
        }));
    }
    collect("llm-sluice", start, tasks, &upstream).await
}

async fn collect(
    name: &'static str,
    start: Instant,
    tasks: Vec<tokio::task::JoinHandle<(Fate, Priority, Duration, u64)>>,
    upstream: &Upstream,
) -> Result<Report, BoxError> {
    let mut report = Report {
        name,
        fates: BTreeMap::new(),
        shed_by_priority: BTreeMap::new(),
        latencies: Vec::with_capacity(tasks.len()),
        sent_to_provider: 0,
        rate_limited_by_provider: 0,
        max_in_flight: 0,
        tokens_used: 0,
        elapsed: Duration::ZERO,
    };
    for task in tasks {
        let (fate, priority, latency, tokens) = task.await?;
        *report.fates.entry(fate).or_default() += 1;
        report.tokens_used += tokens;
        if fate == Fate::Success {
            report.latencies.push(latency);
        } else if matches!(
            fate,
            Fate::Failed("shed: overloaded" | "shed: queue timeout")
        ) {
            *report
                .shed_by_priority
                .entry(priority.level_name())
                .or_default() += 1;
        }
    }
    report.elapsed = start.elapsed();
    let stats = upstream.stats();
    report.sent_to_provider = stats.received;
    report.rate_limited_by_provider = stats.rate_limited;
    report.max_in_flight = stats.max_in_flight;
    report.latencies.sort();
    Ok(report)
}

fn status_name(status: u16) -> &'static str {
    match status {
        429 => "429 from provider",
        500 => "500 from provider",
        503 => "503 from provider",
        529 => "529 from provider",
        _ => "other status",
    }
}

fn error_name(err: &BoxError) -> &'static str {
    match err.downcast_ref::<Error>() {
        Some(Error::Overloaded { .. }) => "shed: overloaded",
        Some(Error::QueueTimeout { .. }) => "shed: queue timeout",
        Some(Error::RateLimited { .. }) => "local rate limit wait",
        Some(Error::CircuitOpen { .. }) => "circuit open",
        Some(Error::Timeout { .. }) => "timeout",
        Some(Error::DeadlineExceeded) => "deadline",
        Some(Error::RequestTooLarge { .. }) => "too large",
        Some(_) => "other llm-sluice error",
        None if err.is::<tower::timeout::error::Elapsed>() => "timeout",
        None if err.is::<std::io::Error>() => "connection reset",
        None => "other error",
    }
}

fn percentile(sorted: &[Duration], p: f64) -> String {
    if sorted.is_empty() {
        return "-".into();
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    format!("{:.1}s", sorted[i].as_secs_f64())
}

fn print_report(a: &Report, b: &Report) {
    let row = |label: &str, x: String, y: String| println!("{label:<34}{x:>16}{y:>16}");
    row("", a.name.into(), b.name.into());
    let total = |r: &Report| r.fates.values().sum::<u64>();
    row("requests", total(a).to_string(), total(b).to_string());
    let count = |r: &Report, f: Fate| r.fates.get(&f).copied().unwrap_or(0);
    row(
        "successes",
        count(a, Fate::Success).to_string(),
        count(b, Fate::Success).to_string(),
    );
    let mut failures: Vec<Fate> = a.fates.keys().chain(b.fates.keys()).copied().collect();
    failures.sort();
    failures.dedup();
    for fate in failures {
        if let Fate::Failed(reason) = fate {
            row(
                &format!("  failed: {reason}"),
                count(a, fate).to_string(),
                count(b, fate).to_string(),
            );
        }
    }
    for level in ["low", "normal", "high"] {
        let shed = |r: &Report| r.shed_by_priority.get(level).copied().unwrap_or(0);
        row(
            &format!("  of which shed, {level} priority"),
            shed(a).to_string(),
            shed(b).to_string(),
        );
    }
    row(
        "calls sent to the provider",
        a.sent_to_provider.to_string(),
        b.sent_to_provider.to_string(),
    );
    row(
        "429s received",
        a.rate_limited_by_provider.to_string(),
        b.rate_limited_by_provider.to_string(),
    );
    row(
        "most in flight at the provider",
        a.max_in_flight.to_string(),
        b.max_in_flight.to_string(),
    );
    let budget = |r: &Report| {
        let allowed = PROVIDER_TPM as f64 * TENANTS.len() as f64 * r.elapsed.as_secs_f64() / 60.0;
        format!("{:.1}%", 100.0 * r.tokens_used as f64 / allowed)
    };
    row("token budget used by successes", budget(a), budget(b));
    row(
        "time to finish the workload",
        format!("{:.0}s", a.elapsed.as_secs_f64()),
        format!("{:.0}s", b.elapsed.as_secs_f64()),
    );
    for (label, p) in [("p50", 0.5), ("p95", 0.95), ("p99", 0.99)] {
        row(
            &format!("latency of successes, {label}"),
            percentile(&a.latencies, p),
            percentile(&b.latencies, p),
        );
    }
}
