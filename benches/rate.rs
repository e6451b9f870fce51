//! Per-admission cost of the sliding-window limiter, against `governor` and
//! `tower::limit::RateLimit`, in one group; plus the utilization of a
//! saturating paced run (printed after the group).
//!
//! What each contender does per iteration:
//!
//! - `*_call` (sluice, tower, and governor wrapped in the same minimal tower
//!   service): one full `Service::call` of an inner `service_fn`, its future
//!   polled to completion. This is what a user pays per request.
//! - `governor_*_check_n`: governor's bare decision, no service around it:
//!   a lower bound the service numbers are compared against.
//!
//! Every `*_call` contender clones its request (and, keyed, its key's
//! `Arc`) inside the timed part, as a caller building a request would; the
//! bare `check_n` numbers borrow the key.
//!
//! The paced saturation run is done *after* the group on purpose: it uses a
//! paused clock, and once any runtime has paused tokio's clock, every later
//! `tokio::time::Instant::now()` in the process (with `test-util`, which
//! dev-dependencies enable) takes a slow locked path instead of reading the
//! OS clock. Running it first made every sluice admission pay that.

use std::hint::black_box;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, Criterion};
use futures::future::{self, Either, Ready};
use futures::FutureExt;
use governor::clock::DefaultClock;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use llm_sluice::rate::RateLimitLayer;
use llm_sluice::{LlmRequest, PartitionKey};
use parking_lot::Mutex;
use tower::{Layer, Service, ServiceExt};

/// A minimal request: tokens and an optional key.
#[derive(Clone)]
struct Req {
    tokens: u64,
    key: Option<PartitionKey>,
}

impl LlmRequest for Req {
    fn token_estimate(&self) -> u64 {
        self.tokens
    }
    fn partition(&self) -> Option<PartitionKey> {
        self.key.clone()
    }
}

const KEYS: usize = 10_000;

type Rejected = Ready<Result<(), tower::BoxError>>;

/// governor's direct limiter as a minimal tower service: check, then call.
struct Governed<S> {
    limiter: Arc<RateLimiter<NotKeyed, InMemoryState, DefaultClock>>,
    inner: S,
    n: NonZeroU32,
}

impl<S: Service<Req, Response = (), Error = tower::BoxError>> Service<Req> for Governed<S> {
    type Response = ();
    type Error = tower::BoxError;
    type Future = Either<S::Future, Rejected>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, r: Req) -> Self::Future {
        match self.limiter.check_n(self.n) {
            Ok(Ok(())) => Either::Left(self.inner.call(r)),
            _ => Either::Right(future::ready(Err("rate limited".into()))),
        }
    }
}

/// governor's keyed limiter as a minimal tower service: check the request's
/// key, then call.
struct GovernedKeyed<S> {
    limiter: Arc<RateLimiter<PartitionKey, DefaultKeyedStateStore<PartitionKey>, DefaultClock>>,
    inner: S,
    n: NonZeroU32,
}

impl<S: Service<Req, Response = (), Error = tower::BoxError>> Service<Req> for GovernedKeyed<S> {
    type Response = ();
    type Error = tower::BoxError;
    type Future = Either<S::Future, Rejected>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, r: Req) -> Self::Future {
        let Some(key) = r.key.as_ref() else {
            return Either::Left(self.inner.call(r));
        };
        match self.limiter.check_key_n(key, self.n) {
            Ok(Ok(())) => Either::Left(self.inner.call(r)),
            _ => Either::Right(future::ready(Err("rate limited".into()))),
        }
    }
}

fn admission(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let keys: Vec<PartitionKey> = (0..KEYS)
        .map(|i| PartitionKey::new(format!("sk-bench-key-{i}")))
        .collect();

    let mut group = c.benchmark_group("rate_admission");

    // llm-sluice, one partition: requests and tokens budgets that never bind
    // (a 10 ms window keeps the logs short under the real clock).
    let layer = RateLimitLayer::builder()
        .requests_per_minute(u64::MAX / 4)
        .tokens_per_minute(u64::MAX / 4)
        .window(Duration::from_millis(10))
        .build()
        .unwrap();
    let mut svc = layer.layer(tower::service_fn(|_r: Req| async {
        Ok::<_, tower::BoxError>(())
    }));
    let unkeyed = Req {
        tokens: 100,
        key: None,
    };
    group.bench_function("sluice_unkeyed_call", |b| {
        b.iter(|| {
            let fut = svc.call(black_box(unkeyed.clone()));
            black_box(fut.now_or_never().unwrap().is_ok())
        })
    });

    // llm-sluice, 10,000 partitions.
    let layer = RateLimitLayer::builder()
        .requests_per_minute(u64::MAX / 4)
        .tokens_per_minute(u64::MAX / 4)
        .window(Duration::from_millis(10))
        .max_partitions(4 * KEYS)
        .build()
        .unwrap();
    let mut svc = layer.layer(tower::service_fn(|_r: Req| async {
        Ok::<_, tower::BoxError>(())
    }));
    let reqs: Vec<Req> = keys
        .iter()
        .map(|k| Req {
            tokens: 100,
            key: Some(k.clone()),
        })
        .collect();
    let mut i = 0;
    group.bench_function("sluice_keyed_10k_call", |b| {
        b.iter(|| {
            i = (i + 1) % KEYS;
            let fut = svc.call(black_box(reqs[i].clone()));
            black_box(fut.now_or_never().unwrap().is_ok())
        })
    });

    // governor: GCRA, direct and keyed, check_n with the same token amount.
    let quota = Quota::per_second(NonZeroU32::new(u32::MAX).unwrap());
    let direct = RateLimiter::direct(quota);
    let n = NonZeroU32::new(100).unwrap();
    group.bench_function("governor_direct_check_n", |b| {
        b.iter(|| black_box(direct.check_n(black_box(n)).unwrap().is_ok()))
    });
    let keyed = RateLimiter::<PartitionKey, _, _>::keyed(quota);
    let mut i = 0;
    group.bench_function("governor_keyed_10k_check_n", |b| {
        b.iter(|| {
            i = (i + 1) % KEYS;
            black_box(keyed.check_key_n(black_box(&keys[i]), n).unwrap().is_ok())
        })
    });

    // governor in the same minimal service machinery as the others: check,
    // then call the inner service.
    let mut gov_svc = Governed {
        limiter: Arc::new(RateLimiter::direct(quota)),
        inner: tower::service_fn(|_r: Req| async { Ok::<_, tower::BoxError>(()) }),
        n,
    };
    group.bench_function("governor_direct_call", |b| {
        b.iter(|| {
            let fut = gov_svc.call(black_box(unkeyed.clone()));
            black_box(fut.now_or_never().unwrap().is_ok())
        })
    });
    let mut gov_keyed_svc = GovernedKeyed {
        limiter: Arc::new(RateLimiter::keyed(quota)),
        inner: tower::service_fn(|_r: Req| async { Ok::<_, tower::BoxError>(()) }),
        n,
    };
    let mut i = 0;
    group.bench_function("governor_keyed_10k_call", |b| {
        b.iter(|| {
            i = (i + 1) % KEYS;
            let fut = gov_keyed_svc.call(black_box(reqs[i].clone()));
            black_box(fut.now_or_never().unwrap().is_ok())
        })
    });

    // tower's fixed-window RateLimit, through poll_ready + call.
    let mut tower_svc = tower::limit::RateLimitLayer::new(u64::MAX / 4, Duration::from_secs(3600))
        .layer(tower::service_fn(|_r: Req| async {
            Ok::<_, tower::BoxError>(())
        }));
    group.bench_function("tower_rate_limit_call", |b| {
        b.iter(|| {
            let ready = tower_svc.ready().now_or_never().unwrap().unwrap();
            let fut = ready.call(black_box(unkeyed.clone()));
            black_box(fut.now_or_never().unwrap().is_ok())
        })
    });
    // References: the least any exact sliding log can do per admission
    // (see `floor`), bare like governor's `check_n`, with the same budgets.
    let floor = floor::Unkeyed::new(Duration::from_millis(10));
    group.bench_function("ref_exact_log_floor_unkeyed", |b| {
        b.iter(|| black_box(floor.admit(black_box(100))))
    });
    let floor = floor::Keyed::new(Duration::from_millis(10), &keys);
    let mut i = 0;
    group.bench_function("ref_exact_log_floor_keyed_10k", |b| {
        b.iter(|| {
            i = (i + 1) % KEYS;
            black_box(floor.admit(black_box(&keys[i]), black_box(100)))
        })
    });
    // References: the clock read every sluice admission pays (tokio's, which
    // is std's plus a check that the clock was never paused).
    group.bench_function("ref_tokio_instant_now", |b| {
        b.iter(|| black_box(tokio::time::Instant::now()))
    });
    group.bench_function("ref_std_instant_now", |b| {
        b.iter(|| black_box(std::time::Instant::now()))
    });
    group.finish();
}

/// The floor of an exact sliding window: what any limiter that keeps
/// every admission inside every interval of length W must at least do per
/// admission. Read the clock; lock the scope; drop the entries that left the
/// window; compare two sums with their limits; append one entry. Nothing
/// else: no reservation ticket to correct later, no waiting queue, no
/// server feedback, no metrics, no service around it. Keyed, one hash-map
/// lookup in 16 locked shards (the same hasher as `llm_sluice`'s map).
mod floor {
    use std::collections::{HashMap, VecDeque};
    use std::hash::BuildHasher;
    use std::time::Duration;

    use llm_sluice::PartitionKey;
    use parking_lot::Mutex;
    use tokio::time::Instant;

    const REQUESTS: u64 = u64::MAX / 4;
    const TOKENS: u64 = u64::MAX / 4;

    #[derive(Default)]
    struct Log {
        entries: VecDeque<(u64, u64)>,
        requests: u64,
        tokens: u64,
    }

    impl Log {
        fn admit(&mut self, t: u64, span: u64, tokens: u64) -> bool {
            while let Some(&(at, n)) = self.entries.front() {
                if at + span > t {
                    break;
                }
                self.entries.pop_front();
                self.requests -= 1;
                self.tokens -= n;
            }
            if self.requests + 1 > REQUESTS || self.tokens + tokens > TOKENS {
                return false;
            }
            self.entries.push_back((t, tokens));
            self.requests += 1;
            self.tokens += tokens;
            true
        }
    }

    fn nanos_since(origin: Instant) -> u64 {
        Instant::now().saturating_duration_since(origin).as_nanos() as u64
    }

    pub struct Unkeyed {
        origin: Instant,
        span: u64,
        log: Mutex<Log>,
    }

    impl Unkeyed {
        pub fn new(window: Duration) -> Self {
            Unkeyed {
                origin: Instant::now(),
                span: window.as_nanos() as u64,
                log: Mutex::new(Log::default()),
            }
        }

        pub fn admit(&self, tokens: u64) -> bool {
            let t = nanos_since(self.origin);
            self.log.lock().admit(t, self.span, tokens)
        }
    }

    type Shard = Mutex<HashMap<PartitionKey, Log, foldhash::fast::RandomState>>;

    pub struct Keyed {
        origin: Instant,
        span: u64,
        hasher: foldhash::fast::RandomState,
        shards: Vec<Shard>,
    }

    impl Keyed {
        /// Every key present from the start: admissions measure lookups.
        pub fn new(window: Duration, keys: &[PartitionKey]) -> Self {
            let hasher = foldhash::fast::RandomState::default();
            let shards: Vec<Shard> = (0..16)
                .map(|_| Mutex::new(HashMap::with_hasher(hasher.clone())))
                .collect();
            for key in keys {
                let shard = hasher.hash_one(key) as usize % shards.len();
                shards[shard].lock().insert(key.clone(), Log::default());
            }
            Keyed {
                origin: Instant::now(),
                span: window.as_nanos() as u64,
                hasher,
                shards,
            }
        }

        pub fn admit(&self, key: &PartitionKey, tokens: u64) -> bool {
            let t = nanos_since(self.origin);
            let shard = self.hasher.hash_one(key) as usize % self.shards.len();
            let mut map = self.shards[shard].lock();
            if let Some(log) = map.get_mut(key) {
                return log.admit(t, self.span, tokens);
            }
            map.entry(key.clone())
                .or_default()
                .admit(t, self.span, tokens)
        }
    }
}

/// Saturating demand for 10 windows on paused time: prints the share of the
/// request and token limits that was admitted.
fn saturation() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    let (rpm, tpm) = (1_000u64, 100_000u64);
    let window = Duration::from_secs(60);
    let (requests, tokens) = rt.block_on(async move {
        let layer = RateLimitLayer::builder()
            .requests_per_minute(rpm)
            .tokens_per_minute(tpm)
            .max_wait(Duration::from_secs(3_600))
            .build()
            .unwrap();
        let admitted = Arc::new(Mutex::new((0u64, 0u64)));
        let end = tokio::time::Instant::now() + 10 * window;
        let seen = admitted.clone();
        let svc = layer.layer(tower::service_fn(move |r: Req| {
            if tokio::time::Instant::now() < end {
                let mut s = seen.lock();
                s.0 += 1;
                s.1 += r.tokens;
            }
            async { Ok::<_, tower::BoxError>(()) }
        }));
        let mut tasks = Vec::new();
        for worker in 0..64u64 {
            let mut svc = svc.clone();
            tasks.push(tokio::spawn(async move {
                let mut i = worker;
                while tokio::time::Instant::now() < end {
                    let tokens = 1 + (i * 7_919) % 199;
                    i += 64;
                    let r = Req { tokens, key: None };
                    let _ = svc.ready().await.unwrap().call(r).await;
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let a = *admitted.lock();
        a
    });
    println!(
        "saturation over 10 windows: requests {:.2}% of {} allowed, tokens {:.2}% of {} allowed",
        100.0 * requests as f64 / (10 * rpm) as f64,
        10 * rpm,
        100.0 * tokens as f64 / (10 * tpm) as f64,
        10 * tpm,
    );
}

/// `RATE_PROFILE=<unkeyed|keyed>:N`: only N admissions (1,000,000 if N is
/// missing or not a number) of the sluice service, as `sluice_unkeyed_call`
/// or `sluice_keyed_10k_call` makes them, with no criterion around them,
/// for a profiler to watch: `valgrind --tool=callgrind` (instruction counts
/// per admission: run two N and divide the difference) or `perf record`.
fn profile(spec: &str) {
    let (kind, n) = spec.split_once(':').unwrap_or((spec, ""));
    let n: usize = n.parse().unwrap_or(1_000_000);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let keyed = match kind {
        "unkeyed" => false,
        "keyed" => true,
        other => panic!("RATE_PROFILE: `{other}` is not `unkeyed` or `keyed`"),
    };
    let mut builder = RateLimitLayer::builder()
        .requests_per_minute(u64::MAX / 4)
        .tokens_per_minute(u64::MAX / 4)
        .window(Duration::from_millis(10));
    if keyed {
        builder = builder.max_partitions(4 * KEYS);
    }
    let mut svc = builder
        .build()
        .unwrap()
        .layer(tower::service_fn(|_r: Req| async {
            Ok::<_, tower::BoxError>(())
        }));
    let reqs: Vec<Req> = if keyed {
        (0..KEYS)
            .map(|i| Req {
                tokens: 100,
                key: Some(PartitionKey::new(format!("sk-bench-key-{i}"))),
            })
            .collect()
    } else {
        vec![Req {
            tokens: 100,
            key: None,
        }]
    };
    // Every key seen once first, so N counts lookups, not inserts.
    for r in &reqs {
        let _ = svc.call(r.clone()).now_or_never();
    }
    let mut admitted = 0usize;
    for i in 0..n {
        let fut = svc.call(black_box(reqs[i % reqs.len()].clone()));
        admitted += usize::from(black_box(fut.now_or_never().unwrap().is_ok()));
    }
    println!("{kind}: {admitted} of {n} admitted");
}

criterion_group!(benches, admission);

fn main() {
    if let Ok(spec) = std::env::var("RATE_PROFILE") {
        return profile(&spec);
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
    // After the group: it pauses tokio's clock (see the module docs).
    saturation();
}
