//! A scripted upstream shared by the metrics and spans tests (included with
//! `#[path]` by `tests/spans`, which runs alone in its own process).

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use llm_sluice::classify::{Classification, LlmResponse, Outcome};
use llm_sluice::fallback::RecordServedBy;
use llm_sluice::hold::Complete;
use llm_sluice::request::RequestMeta;
use tower::{BoxError, Service};

// ===== a scripted upstream =====

/// A response with just a status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reply(pub u16);

impl LlmResponse for Reply {
    fn classification(&self) -> Classification {
        match self.0 {
            200..=299 => Classification::success(None),
            429 => Classification::new(Outcome::RateLimited {
                quota_exhausted: false,
            })
            .with_status(429)
            .with_retry_after(Some(Duration::from_secs(1))),
            500..=599 => Classification::new(Outcome::ServerError).with_status(self.0),
            _ => Classification::new(Outcome::ClientError).with_status(self.0),
        }
    }
}

impl Complete for Reply {}

impl RecordServedBy for Reply {}

#[derive(Debug, Clone, Copy)]
pub enum Step {
    Status(u16),
    Hang,
}

/// Answers each call with the next scripted step; 200 once the script is
/// spent.
#[derive(Clone, Default)]
pub struct Upstream {
    script: Arc<Mutex<VecDeque<Step>>>,
}

impl Upstream {
    pub fn new(steps: impl IntoIterator<Item = Step>) -> Self {
        Upstream {
            script: Arc::new(Mutex::new(steps.into_iter().collect())),
        }
    }
}

impl Service<RequestMeta> for Upstream {
    type Response = Reply;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Reply, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: RequestMeta) -> Self::Future {
        let step = self.script.lock().unwrap().pop_front();
        Box::pin(async move {
            match step {
                Some(Step::Hang) => std::future::pending().await,
                Some(Step::Status(s)) => Ok(Reply(s)),
                None => Ok(Reply(200)),
            }
        })
    }
}
