//! What the layers need to know about a request.
//!
//! Every layer reads four facts through [`LlmRequest`]: a token estimate, a
//! [`Priority`], a [`PartitionKey`] (which budget the request spends) and a
//! deadline. The trait is implemented for `http::Request<B>` (feature `http`),
//! which carries the facts as typed extensions:
//!
//! ```
//! use llm_sluice::{Deadline, LlmRequest, PartitionKey, Priority, TokenEstimate};
//!
//! let mut req = http::Request::new(());
//! req.extensions_mut().insert(TokenEstimate(1_200));
//! req.extensions_mut().insert(Priority::HIGH);
//! req.extensions_mut().insert(PartitionKey::new("tenant-a"));
//!
//! assert_eq!(req.token_estimate(), 1_200);
//! assert_eq!(req.priority(), Priority::HIGH);
//! assert_eq!(req.partition().unwrap().as_str(), "tenant-a");
//! assert_eq!(req.deadline(), None);
//! ```
//!
//! # Your own request type
//!
//! A typed client implements the trait on its request; every method has a
//! default, so only what the type knows needs writing:
//!
//! ```
//! use llm_sluice::{LlmRequest, PartitionKey, Priority};
//!
//! struct ChatRequest { api_key: PartitionKey, prompt: String, max_tokens: u64 }
//!
//! impl LlmRequest for ChatRequest {
//!     fn token_estimate(&self) -> u64 {
//!         // about four characters a token, plus the output budget
//!         self.prompt.len() as u64 / 4 + self.max_tokens
//!     }
//!     fn partition(&self) -> Option<PartitionKey> {
//!         Some(self.api_key.clone())
//!     }
//! }
//! ```
//!
//! # Foreign request types
//!
//! A type from another crate cannot implement the trait here. Wrap it in
//! [`Annotated`], by hand or with [`AnnotateLayer`] and a closure that reads
//! the facts off the request; unwrap it again in front of the client with
//! [`Annotated::into_inner`]:
//!
//! ```
//! use llm_sluice::request::{AnnotateLayer, Annotated, RequestMeta};
//! use llm_sluice::Priority;
//! use tower::{Service, ServiceBuilder, ServiceExt};
//!
//! struct Foreign { urgent: bool }
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let client = tower::service_fn(|req: Foreign| async move { Ok::<_, tower::BoxError>(req.urgent) });
//! let mut svc = ServiceBuilder::new()
//!     .layer(AnnotateLayer::new(|req: &Foreign| {
//!         RequestMeta::new().priority(if req.urgent { Priority::HIGH } else { Priority::NORMAL })
//!     }))
//!     // ... llm-sluice layers go here: they see `Annotated<Foreign>` ...
//!     .map_request(Annotated::into_inner)
//!     .service(client);
//! assert!(svc.ready().await.unwrap().call(Foreign { urgent: true }).await.unwrap());
//! # }
//! ```

mod annotate;
mod key;
mod priority;

pub use annotate::{Annotate, AnnotateLayer, Annotated, RequestMeta};
pub use key::PartitionKey;
pub use priority::Priority;

use tokio::time::Instant;

/// A request's token estimate: prompt tokens plus the most it may generate.
///
/// Insert it into an `http::Request`'s extensions; zero is valid.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TokenEstimate(pub u64);

/// The instant after which the caller no longer wants the response.
///
/// Queues and windows shed a request that cannot be served before it; retries
/// never sleep past it. Read on tokio's clock, so paused-time tests drive it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Deadline(pub Instant);

/// When the request first joined a queue.
///
/// The retry layer records it on the first attempt, so a retried attempt keeps
/// its place in line (FIFO order and aging) instead of going to the back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Arrival(pub Instant);

/// The facts about a request that the layers read.
///
/// All methods have defaults: no tokens, [`Priority::NORMAL`], no partition, no
/// deadline. The setters are how layers pass facts inwards (the timeout layer
/// sets a deadline, the retry layer an arrival time); a type that cannot store
/// them keeps the default no-op, and then those facts do not travel.
pub trait LlmRequest {
    /// Tokens the request is expected to consume (prompt plus maximum output).
    fn token_estimate(&self) -> u64 {
        0
    }

    /// How urgent the request is.
    fn priority(&self) -> Priority {
        Priority::NORMAL
    }

    /// Which budget the request belongs to: an API key, a tenant, a model.
    fn partition(&self) -> Option<PartitionKey> {
        None
    }

    /// When the caller stops caring about the response.
    fn deadline(&self) -> Option<Instant> {
        None
    }

    /// Records a deadline on the request. The default does nothing.
    fn set_deadline(&mut self, deadline: Instant) {
        let _ = deadline;
    }

    /// When the request first joined a queue, if a layer recorded it.
    fn arrival(&self) -> Option<Instant> {
        None
    }

    /// Records when the request first joined a queue. The default does nothing.
    fn set_arrival(&mut self, at: Instant) {
        let _ = at;
    }
}

#[cfg(feature = "http")]
impl<B> LlmRequest for http::Request<B> {
    fn token_estimate(&self) -> u64 {
        self.extensions().get::<TokenEstimate>().map_or(0, |t| t.0)
    }

    fn priority(&self) -> Priority {
        self.extensions()
            .get::<Priority>()
            .copied()
            .unwrap_or_default()
    }

    fn partition(&self) -> Option<PartitionKey> {
        self.extensions().get::<PartitionKey>().cloned()
    }

    fn deadline(&self) -> Option<Instant> {
        self.extensions().get::<Deadline>().map(|d| d.0)
    }

    fn set_deadline(&mut self, deadline: Instant) {
        self.extensions_mut().insert(Deadline(deadline));
    }

    fn arrival(&self) -> Option<Instant> {
        self.extensions().get::<Arrival>().map(|a| a.0)
    }

    fn set_arrival(&mut self, at: Instant) {
        self.extensions_mut().insert(Arrival(at));
    }
}
