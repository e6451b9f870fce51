//! The simulation: the provider, the measuring probe in front of it, and
//! the driver that replays the workload through a client in virtual time.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use llm_sluice::sim::{Dist, Faults, SimFuture, SimResponse, Upstream};
use llm_sluice::Priority;
use tokio::time::Instant;
use tower::{BoxError, Service};

use crate::options::{Options, Scenario};
use crate::report::{ChargeReport, Minute, Percentiles, Report, RunReport};
use crate::workload::{Job, Workload};

/// What became of one request, as its caller saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// A completion, with the tokens it used.
    Success {
        /// Prompt plus completion tokens.
        tokens: u64,
        /// Completion tokens.
        completion: u64,
    },
    /// The provider's failure, after whatever retries the client made.
    Failed(&'static str),
    /// Refused by the client itself, without (another) call to the
    /// provider.
    Shed(&'static str),
}

/// A client under test: sends a job and says what became of it.
pub trait Client: Clone + Send + 'static {
    /// Sends one request through the client, retries included.
    fn send(&self, job: Job) -> Pin<Box<dyn Future<Output = Fate> + Send>>;
    /// Requests waiting in the client for a slot now (not counting those
    /// sleeping between retries).
    fn queue_depth(&self) -> u64;
    /// Tenants whose circuit breaker is open or half-open now.
    fn breakers_open(&self) -> u64;
    /// Times a circuit breaker opened so far.
    fn breaker_openings(&self) -> u64;
}

/// The simulated provider, the same for both runs: per-key limits, faults,
/// latency spikes and an outage.
pub fn provider(opts: &Options) -> Result<Upstream, BoxError> {
    let mut builder = Upstream::builder()
        .requests_per_window(opts.rpm)
        .tokens_per_window(opts.tpm)
        .token_charge(opts.provider_charge.token_charge())
        // As some providers do: a refused request still spends the RPM window.
        .count_refused(true)
        .faults(Faults {
            error_500: opts.error_500,
            error_503: opts.error_503,
            overloaded_529: opts.overloaded_529,
            hang: opts.hang,
            reset: opts.reset,
            quota_429: 0.0,
        })
        .time_to_first_token(Dist::LogNormal {
            median: 0.6,
            sigma: 0.5,
        })
        .tokens_per_second(Dist::uniform(
            Duration::from_secs(60),
            Duration::from_secs(120),
        ))
        .output_fraction(match opts.scenario {
            Scenario::Default => Dist::Uniform {
                low: 0.3,
                high: 1.0,
            },
            // `max_tokens` is `estimate_factor` times the completion.
            Scenario::Pessimistic => Dist::Fixed(1.0 / opts.estimate_factor.max(1.0)),
        })
        .latency_spikes(
            opts.spikes,
            Dist::LogNormal {
                median: 10.0,
                sigma: 0.5,
            },
        )
        .seed(opts.seed);
    if !opts.outage_length.is_zero() {
        builder = builder.outage(opts.outage_start, opts.outage_length, 503);
    }
    Ok(builder.build()?)
}

/// The innermost service of both clients: notes when each request first
/// reached the provider (the end of its queue wait), then calls it.
#[derive(Clone)]
pub struct Probe {
    upstream: Upstream,
    first_call: Arc<Mutex<Vec<Option<Instant>>>>,
}

impl Probe {
    fn new(upstream: Upstream, requests: usize) -> Probe {
        Probe {
            upstream,
            first_call: Arc::new(Mutex::new(vec![None; requests])),
        }
    }

    /// Calls the provider.
    pub fn send(&self, job: Job) -> SimFuture {
        if let Ok(mut first) = self.first_call.lock() {
            if let Some(slot @ None) = first.get_mut(job.id) {
                *slot = Some(Instant::now());
            }
        }
        self.upstream.send(job.request)
    }
}

impl Service<Job> for Probe {
    type Response = SimResponse;
    type Error = std::io::Error;
    type Future = SimFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, job: Job) -> SimFuture {
        self.send(job)
    }
}

/// The reason a provider's answer failed, for the report.
pub fn status_reason(status: u16) -> &'static str {
    match status {
        429 => "429 from provider",
        529 => "529 from provider",
        500..=599 => "5xx from provider",
        _ => "other status",
    }
}

/// Runs the workload through both clients and reports.
///
/// Each run gets its own current-thread runtime with a paused clock: an
/// hour of traffic takes seconds, and the same options give the same report.
pub fn run(opts: &Options) -> Result<Report, BoxError> {
    let workload = Workload::generate(opts);
    let progress = progress(opts, 2);
    let naive = one_run(
        "naive client",
        &workload,
        opts,
        crate::naive::NaiveClient::new,
        &progress,
        0,
    )?;
    let sluice = one_run(
        "llm-sluice",
        &workload,
        opts,
        crate::sluice::SluiceClient::new,
        &progress,
        1,
    )?;
    progress.finish_and_clear();
    Ok(report(&workload, opts, naive, sluice))
}

/// The pessimistic scenario: the workload through the naive client, the
/// llm-sluice stack with reconciliation (its default, `Charging::Reconcile`)
/// and the stack without (`Charging::Admission`).
pub fn run_pessimistic(opts: &Options) -> Result<ChargeReport, BoxError> {
    let workload = Workload::generate(opts);
    let progress = progress(opts, 3);
    let naive = one_run(
        "naive client",
        &workload,
        opts,
        crate::naive::NaiveClient::new,
        &progress,
        0,
    )?;
    let sluice = one_run(
        "llm-sluice (reconcile)",
        &workload,
        opts,
        crate::sluice::SluiceClient::new,
        &progress,
        1,
    )?;
    let admission = one_run(
        "llm-sluice (admission)",
        &workload,
        opts,
        |opts, probe| {
            crate::sluice::SluiceClient::with_charging(
                opts,
                probe,
                llm_sluice::rate::Charging::Admission,
            )
        },
        &progress,
        2,
    )?;
    progress.finish_and_clear();
    Ok(ChargeReport {
        base: report(&workload, opts, naive, sluice),
        admission,
        provider_charge: opts.provider_charge,
        estimate_factor: opts.estimate_factor.max(1.0),
        tpm_per_key: opts.tpm,
    })
}

/// A progress bar over `runs` runs of the workload's span.
fn progress(opts: &Options, runs: u64) -> ProgressBar {
    if opts.quiet {
        return ProgressBar::hidden();
    }
    // Hidden by indicatif when stderr is not a terminal.
    let bar = ProgressBar::with_draw_target(
        Some(runs * opts.duration.as_secs().max(1)),
        ProgressDrawTarget::stderr(),
    );
    if let Ok(style) = ProgressStyle::with_template("{msg:>14} [{bar:40}] {pos}/{len} virtual s") {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

/// One client's run, `index`-th of the bar, on its own runtime.
fn one_run<C: Client>(
    name: &'static str,
    workload: &Workload,
    opts: &Options,
    make: fn(&Options, Probe) -> Result<C, BoxError>,
    progress: &ProgressBar,
    index: u64,
) -> Result<RunReport, BoxError> {
    progress.set_message(name);
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()?
        .block_on(drive(
            name,
            workload,
            opts,
            make,
            progress,
            index * opts.duration.as_secs(),
        ))
}

/// The side-by-side report of two runs over `workload`.
fn report(workload: &Workload, opts: &Options, naive: RunReport, sluice: RunReport) -> Report {
    let tenants = workload.tenants.len() as u64;
    Report {
        requests: workload.arrivals.len() as u64,
        tenants,
        duration: opts.duration,
        seed: opts.seed,
        demand_rpm: workload.arrivals.len() as f64 * 60.0 / opts.duration.as_secs_f64(),
        demand_tpm: workload.tokens_per_minute(opts.duration),
        limit_rpm: opts.rpm * tenants,
        limit_tpm: opts.tpm * tenants,
        naive,
        sluice,
    }
}

/// One run: every arrival at its time through `client`, sampling the
/// client's queue and breakers each virtual second.
async fn drive<C: Client>(
    name: &'static str,
    workload: &Workload,
    opts: &Options,
    make: fn(&Options, Probe) -> Result<C, BoxError>,
    progress: &ProgressBar,
    offset: u64,
) -> Result<RunReport, BoxError> {
    let upstream = provider(opts)?;
    let probe = Probe::new(upstream.clone(), workload.arrivals.len());
    let client = make(opts, probe.clone())?;
    let start = Instant::now();

    let done = Arc::new(AtomicBool::new(false));
    let sampler = tokio::spawn({
        let (client, done, progress) = (client.clone(), done.clone(), progress.clone());
        let horizon = opts.duration.as_secs();
        async move {
            let mut minutes: Vec<(u64, u64)> = Vec::new();
            let mut second = 0u64;
            while !done.load(Ordering::Acquire) {
                second += 1;
                tokio::time::sleep_until(start + Duration::from_secs(second)).await;
                let minute = (second - 1) as usize / 60;
                if minutes.len() <= minute {
                    minutes.resize(minute + 1, (0, 0));
                }
                let m = &mut minutes[minute];
                m.0 = m.0.max(client.queue_depth());
                m.1 = m.1.max(client.breakers_open());
                progress.set_position(offset + second.min(horizon));
            }
            minutes
        }
    });

    let mut tasks = Vec::with_capacity(workload.arrivals.len());
    for arrival in &workload.arrivals {
        let client = client.clone();
        let job = Job {
            id: arrival.id,
            request: arrival.request.clone(),
        };
        let at = start + arrival.at;
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep_until(at).await;
            let fate = client.send(job).await;
            (fate, at.elapsed())
        }));
    }

    let mut report = RunReport::new(name);
    let mut end_to_end = Percentiles::recorder();
    for (task, arrival) in tasks.into_iter().zip(&workload.arrivals) {
        let (fate, latency) = task.await?;
        report.requests += 1;
        match fate {
            Fate::Success { tokens, completion } => {
                report.successes += 1;
                report.tokens_delivered += tokens;
                report.completion_delivered += completion;
                Percentiles::record(&mut end_to_end, latency);
            }
            Fate::Failed(reason) => *report.failures.entry(reason).or_default() += 1,
            Fate::Shed(reason) => {
                *report.failures.entry(reason).or_default() += 1;
                let level = match arrival.request.priority {
                    p if p < Priority::NORMAL => 0,
                    p if p == Priority::NORMAL => 1,
                    _ => 2,
                };
                report.shed_by_priority[level] += 1;
            }
        }
    }
    report.finished_after = start.elapsed();
    done.store(true, Ordering::Release);
    let samples = sampler.await?;

    report.end_to_end = Percentiles::from(&end_to_end);
    let mut queue_wait = Percentiles::recorder();
    if let Ok(first) = probe.first_call.lock() {
        for (called, arrival) in first.iter().zip(&workload.arrivals) {
            if let Some(called) = called {
                Percentiles::record(&mut queue_wait, *called - (start + arrival.at));
            }
        }
    }
    report.queue_wait = Percentiles::from(&queue_wait);

    let stats = upstream.stats();
    report.sent_to_provider = stats.received;
    report.provider_admitted = stats.admitted;
    report.provider_429s = stats.rate_limited;
    report.max_in_flight = stats.max_in_flight;
    report.breaker_openings = client.breaker_openings();
    report.token_budget = opts.tpm * workload.tenants.len() as u64 * opts.duration.as_secs() / 60;

    // Per minute: what each key sent and what the provider admitted.
    let minutes = report.finished_after.as_secs().div_ceil(60).max(1) as usize;
    report.series = vec![Minute::default(); minutes];
    for key in &workload.tenants {
        let log = upstream.log(key.as_str());
        report.max_window_tokens = report.max_window_tokens.max(max_window(&log));
        for received in log {
            let minute = (received.at - start).as_secs() as usize / 60;
            let Some(m) = report.series.get_mut(minute) else {
                continue;
            };
            m.sent += 1;
            if received.admitted {
                m.admitted += 1;
                m.tokens += received.charged_tokens;
                report.tokens_charged += received.charged_tokens;
            }
        }
    }
    for (m, (queue, breakers)) in report.series.iter_mut().zip(samples) {
        m.queue_depth = queue;
        m.breakers_open = breakers;
    }
    Ok(report)
}

/// The most tokens the provider counted in any 60-second window of one key's
/// log: what each admitted request was charged in the end (corrected to its
/// usage under the rules that correct), at its arrival instant.
fn max_window(log: &[llm_sluice::sim::Received]) -> u64 {
    let window = Duration::from_secs(60);
    let admitted: Vec<_> = log.iter().filter(|r| r.admitted).collect();
    let (mut start, mut sum, mut most) = (0, 0u64, 0u64);
    for r in &admitted {
        sum += r.charged_tokens;
        while admitted[start].at + window <= r.at {
            sum -= admitted[start].charged_tokens;
            start += 1;
        }
        most = most.max(sum);
    }
    most
}
