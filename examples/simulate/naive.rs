//! The client people write by hand: a fixed number of calls in flight (a
//! semaphore, first come first served), a timeout per call, and up to three
//! retries of any failure after 1 s, 2 s, 4 s, whatever the server said.
//! No rate windows, no priorities, no circuit breaker.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tower::BoxError;

use crate::options::Options;
use crate::run::{status_reason, Client, Fate, Probe};
use crate::workload::Job;

/// Retries after the first call.
const RETRIES: u32 = 3;
/// The timeout of one call.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// A semaphore, a timeout and plain exponential backoff.
#[derive(Clone)]
pub struct NaiveClient {
    inner: Arc<Inner>,
}

struct Inner {
    probe: Probe,
    slots: Semaphore,
    waiting: AtomicU64,
}

impl NaiveClient {
    /// A client allowing `max_in_flight` calls at once.
    pub fn new(opts: &Options, probe: Probe) -> Result<NaiveClient, BoxError> {
        Ok(NaiveClient {
            inner: Arc::new(Inner {
                probe,
                slots: Semaphore::new(opts.max_in_flight.max(1)),
                waiting: AtomicU64::new(0),
            }),
        })
    }
}

impl Inner {
    /// One call: wait for a slot, then call the provider with a timeout.
    async fn attempt(&self, job: &Job) -> Fate {
        self.waiting.fetch_add(1, Ordering::Relaxed);
        let permit = self.slots.acquire().await;
        self.waiting.fetch_sub(1, Ordering::Relaxed);
        let Ok(_permit) = permit else {
            return Fate::Failed("client closed");
        };
        match tokio::time::timeout(CALL_TIMEOUT, self.probe.send(job.clone())).await {
            Ok(Ok(res)) if res.is_success() => Fate::Success {
                tokens: res.usage.map_or(0, |u| u.total_tokens),
                completion: res.usage.map_or(0, |u| u.completion_tokens),
            },
            Ok(Ok(res)) => Fate::Failed(status_reason(res.status)),
            Ok(Err(_reset)) => Fate::Failed("connection reset"),
            Err(_elapsed) => Fate::Failed("attempt timeout"),
        }
    }
}

impl Client for NaiveClient {
    fn send(&self, job: Job) -> Pin<Box<dyn Future<Output = Fate> + Send>> {
        let inner = self.inner.clone();
        Box::pin(async move {
            let mut retry = 0;
            loop {
                let fate = inner.attempt(&job).await;
                if matches!(fate, Fate::Success { .. }) || retry == RETRIES {
                    return fate;
                }
                tokio::time::sleep(Duration::from_secs(1 << retry)).await;
                retry += 1;
            }
        })
    }

    fn queue_depth(&self) -> u64 {
        self.inner.waiting.load(Ordering::Relaxed)
    }

    fn breakers_open(&self) -> u64 {
        0
    }

    fn breaker_openings(&self) -> u64 {
        0
    }
}
