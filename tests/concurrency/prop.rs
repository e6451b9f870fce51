//! Random sequences of arrivals, completions, cancellations and time
//! advances; the limiter's invariants are checked after every step.

use std::collections::HashMap;
use std::task::Poll;
use std::time::Duration;

use llm_sluice::concurrency::{ConcurrencyLimit, ConcurrencyLimitLayer, Permit};
use llm_sluice::hold::HoldGuard;
use llm_sluice::request::RequestMeta;
use llm_sluice::{Error, Priority};
use proptest::prelude::*;
use tokio::time::Instant;
use tokio_test::task::{self, Spawn};
use tower::{Layer, Service};
use tower_test::mock;

/// A response that keeps the permit until the test drops it (like a
/// streamed body).
#[derive(Debug)]
struct Reply;

#[derive(Debug)]
struct Held(#[allow(dead_code)] Permit);

impl HoldGuard<Permit> for Reply {
    type Output = Held;
    fn hold_guard(self, guard: Permit) -> Held {
        Held(guard)
    }
}

type Svc = ConcurrencyLimit<mock::Mock<RequestMeta, Reply>>;
type Pending = Spawn<<Svc as Service<RequestMeta>>::Future>;

#[derive(Debug, Clone)]
enum Op {
    Arrive {
        priority: u8,
        deadline_ms: Option<u16>,
    },
    /// The inner service answers one of the running requests.
    Respond(usize),
    /// A caller finishes reading one response (drops it, and its permit).
    Finish(usize),
    /// A caller drops one of its pending futures (queued or running).
    Cancel(usize),
    Advance(u16),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (any::<u8>(), proptest::option::of(0u16..3000))
            .prop_map(|(priority, deadline_ms)| Op::Arrive { priority, deadline_ms }),
        2 => any::<usize>().prop_map(Op::Respond),
        2 => any::<usize>().prop_map(Op::Finish),
        1 => any::<usize>().prop_map(Op::Cancel),
        2 => (0u16..1500).prop_map(Op::Advance),
    ]
}

#[derive(Debug, Clone)]
struct Setup {
    max_in_flight: usize,
    max_queued: usize,
    max_queue_wait_ms: u64,
    aging_ms: Option<u64>,
}

fn setup() -> impl Strategy<Value = Setup> {
    (
        1usize..4,
        0usize..6,
        1u64..2000,
        proptest::option::of(1u64..2000),
    )
        .prop_map(
            |(max_in_flight, max_queued, max_queue_wait_ms, aging_ms)| Setup {
                max_in_flight,
                max_queued,
                max_queue_wait_ms,
                aging_ms,
            },
        )
}

struct Sim {
    svc: Svc,
    handle: mock::Handle<RequestMeta, Reply>,
    setup: Setup,
    /// Futures not yet resolved, by request id.
    pending: Vec<(u64, Priority, Pending)>,
    /// When each request's wait must end at the latest, by id.
    expires: HashMap<u64, Instant>,
    /// Requests the inner service is working on, by id.
    running: HashMap<u64, mock::SendResponse<Reply>>,
    /// Responses the callers still hold.
    held: Vec<Held>,
    next_id: u64,
}

impl Sim {
    fn new(setup: Setup) -> Self {
        let mut builder = ConcurrencyLimitLayer::builder()
            .max_in_flight(setup.max_in_flight)
            .max_queued(setup.max_queued)
            .max_queue_wait(Duration::from_millis(setup.max_queue_wait_ms));
        builder = match setup.aging_ms {
            Some(ms) => builder.aging(Duration::from_millis(ms)),
            None => builder.without_aging(),
        };
        let (mock, handle) = mock::pair();
        Sim {
            svc: builder.build().unwrap().layer(mock),
            handle,
            setup,
            pending: Vec::new(),
            running: HashMap::new(),
            expires: HashMap::new(),
            held: Vec::new(),
            next_id: 0,
        }
    }

    async fn step(&mut self, op: Op) {
        match op {
            Op::Arrive {
                priority,
                deadline_ms,
            } => {
                let id = self.next_id;
                self.next_id += 1;
                let priority = Priority::new(priority);
                let mut req = RequestMeta::new().tokens(id).priority(priority);
                let mut expires =
                    Instant::now() + Duration::from_millis(self.setup.max_queue_wait_ms);
                if let Some(ms) = deadline_ms {
                    let deadline = Instant::now() + Duration::from_millis(ms.into());
                    req = req.deadline(deadline);
                    expires = expires.min(deadline);
                }
                self.expires.insert(id, expires);
                let mut ready = task::spawn(());
                assert!(ready.enter(|cx, _| self.svc.poll_ready(cx)).is_ready());
                let future = task::spawn(self.svc.call(req));
                self.pending.push((id, priority, future));
            }
            Op::Respond(i) => {
                if !self.running.is_empty() {
                    let mut ids: Vec<u64> = self.running.keys().copied().collect();
                    ids.sort_unstable();
                    let id = ids[i % ids.len()];
                    self.running.remove(&id).unwrap().send_response(Reply);
                }
            }
            Op::Finish(i) => {
                if !self.held.is_empty() {
                    let at = i % self.held.len();
                    drop(self.held.swap_remove(at));
                }
            }
            Op::Cancel(i) => {
                if !self.pending.is_empty() {
                    let at = i % self.pending.len();
                    let (id, _, future) = self.pending.remove(at);
                    drop(future);
                    self.running.remove(&id);
                }
            }
            Op::Advance(ms) => tokio::time::advance(Duration::from_millis(ms.into())).await,
        }
        self.settle();
        self.check();
    }

    /// Polls until nothing more happens: every grant has been seen and every
    /// admitted request has reached the inner service.
    fn settle(&mut self) {
        let mut first = true;
        loop {
            let mut progressed = false;
            let mut i = 0;
            while i < self.pending.len() {
                let (_, _, future) = &mut self.pending[i];
                if !(first || future.is_woken()) {
                    i += 1;
                    continue;
                }
                progressed = true;
                match future.poll() {
                    Poll::Pending => i += 1,
                    Poll::Ready(result) => {
                        let (id, _, _) = self.pending.remove(i);
                        assert!(!self.running.contains_key(&id));
                        match result {
                            Ok(held) => self.held.push(held),
                            Err(err) => match err.downcast_ref::<Error>() {
                                Some(
                                    Error::Overloaded { .. }
                                    | Error::QueueTimeout { .. }
                                    | Error::DeadlineExceeded,
                                ) => {}
                                other => panic!("unexpected error {other:?}: {err}"),
                            },
                        }
                    }
                }
            }
            let mut admitted = Vec::new();
            while let Poll::Ready(Some((req, send))) = self.handle.poll_request() {
                progressed = true;
                admitted.push(req.tokens);
                self.running.insert(req.tokens, send);
            }
            for id in admitted {
                self.on_admitted(id);
            }
            first = false;
            if !progressed {
                break;
            }
        }
    }

    /// With strict priority, a request reaching the inner service must not
    /// leave a higher priority waiting behind it.
    fn on_admitted(&self, id: u64) {
        if self.setup.aging_ms.is_some() {
            return;
        }
        let Some(priority) = self
            .pending
            .iter()
            .find(|(i, _, _)| *i == id)
            .map(|(_, p, _)| *p)
        else {
            return;
        };
        // Everyone still pending and not running is queued (or rejected,
        // which settle removes); none of them may outrank the admitted one.
        for (other, p, _) in &self.pending {
            if *other != id && !self.running.contains_key(other) {
                assert!(
                    *p <= priority,
                    "request {id} ({priority:?}) admitted while {other} ({p:?}) waited"
                );
            }
        }
    }

    fn check(&self) {
        let stats = self.svc.stats();
        assert!(stats.in_flight <= self.setup.max_in_flight, "{stats:?}");
        assert!(stats.queued <= self.setup.max_queued, "{stats:?}");
        assert_eq!(stats.in_flight + stats.available, self.setup.max_in_flight);
        assert!(
            stats.available == 0 || stats.queued == 0,
            "a free permit while requests wait: {stats:?}"
        );
        // Every permit is accounted for: a running request or a held response.
        assert_eq!(
            stats.in_flight,
            self.running.len() + self.held.len(),
            "{stats:?}"
        );
        // No waiter outlives its queue wait or deadline: the timer fired.
        let now = Instant::now();
        for (id, _, _) in &self.pending {
            if !self.running.contains_key(id) {
                assert!(now < self.expires[id], "request {id} waits past its time");
            }
        }
        // Every pending future is either running or queued.
        assert_eq!(
            self.pending.len(),
            self.running.len() + stats.queued,
            "{stats:?}"
        );
    }

    fn finish(mut self) {
        self.pending.clear();
        self.running.clear();
        self.held.clear();
        let stats = self.svc.stats();
        assert_eq!(
            stats.available, self.setup.max_in_flight,
            "every permit is back"
        );
        assert_eq!(stats.in_flight, 0);
        assert_eq!(stats.queued, 0, "the queue is empty");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn limits_hold_under_random_traffic(
        setup in setup(),
        ops in proptest::collection::vec(op(), 1..80),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        rt.block_on(async move {
            let mut sim = Sim::new(setup);
            for op in ops {
                sim.step(op).await;
            }
            sim.finish();
        });
    }
}
