//! A second service for when the first one fails.
//!
//! [`FallbackLayer`] wraps a primary service. When the primary's result is
//! one its policy names — by default the primary is unavailable (circuit
//! open, overloaded) or failed in a way retries could not fix (server error,
//! timeout, transport error, also when a spent retry budget returned that
//! result as it was; see [`DefaultPolicy`]) — the
//! same request goes to the secondary service, optionally rewritten first
//! (for example to another model name). The secondary's result is returned
//! as it is, whatever it is.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use std::time::Duration;
//! use llm_sluice::fallback::{FallbackLayer, RecordServedBy};
//! use llm_sluice::request::RequestMeta;
//! use llm_sluice::Error;
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//!
//! let backup = service_fn(|_req: RequestMeta| async {
//!     Ok::<_, tower::BoxError>(http::Response::new("from the backup"))
//! });
//! let primary = service_fn(|_req: RequestMeta| async {
//!     Err::<http::Response<&str>, _>(tower::BoxError::from(Error::CircuitOpen {
//!         retry_after: Duration::from_secs(5),
//!     }))
//! });
//! let layer = FallbackLayer::builder(backup).name("backup").build().unwrap();
//! let svc = ServiceBuilder::new().layer(layer).service(primary);
//!
//! let response = svc.oneshot(RequestMeta::new()).await.unwrap();
//! assert_eq!(*response.body(), "from the backup");
//! assert_eq!(response.served_by().unwrap().name(), "backup");
//! # }
//! ```
//!
//! # Why these defaults
//!
//! Falling back costs: another provider's price, another model's quality.
//! So the default triggers are the failures that say the primary cannot serve
//! now — its breaker is open, it is overloaded, or it kept failing after the
//! retry layer inside had its go — and not the ones a second service would
//! answer the same way (a bad request) or that mean the caller has stopped
//! waiting (a total timeout). Rate limits and spent quotas are opt-in:
//! whether another key or provider may absorb them is the operator's call.
//!
//! # Requests
//!
//! The request must be `Clone`: a copy is kept until the primary's result is
//! known. For `http::Request<B>` that means a body that clones (such as
//! `Full<Bytes>`). No fallback happens once the request's
//! [`Deadline`](crate::Deadline) has passed: the primary's result is returned.
//!
//! # Chains
//!
//! The secondary can itself be a [`Fallback`], and a fallback can wrap a
//! fallback: `A → B → C` is `FallbackLayer::new(C)` around
//! `FallbackLayer::new(B)` around `A`, or `FallbackLayer::new(B-with-C)`
//! around `A`. Either way the [`ServedBy`] marker names the service that
//! really answered: the innermost layer sets it, outer ones keep it.
//!
//! # Backpressure
//!
//! `poll_ready` waits for the primary only. The secondary (each service gets
//! its own clone) is readied in the response future, only when a request
//! falls back; a secondary that fails to become ready fails that request with
//! its error.
//!
//! # Where to put it
//!
//! Outside the retry layers, one per service: `Fallback(Retry(primary),
//! Retry(secondary))`, so that the primary's retries are spent before the
//! secondary is tried, and inside a `DeadlineLayer` so both share one
//! deadline.
//!
//! # Cancel safety
//!
//! Dropping the response future drops the call in flight, on either service,
//! and the request copy; it holds no other reservation.
//!
//! # Metrics
//!
//! `llm_sluice_fallbacks_total{layer="fallback", reason}` counts requests
//! sent to a secondary, `reason` being a [`FallbackReason`] name (plus
//! `name` with [`metrics_name`](FallbackLayerBuilder::metrics_name)).

pub mod future;
mod layer;
mod metrics;
mod policy;
mod served;
mod service;

pub use layer::{FallbackLayer, FallbackLayerBuilder};
pub use policy::{DefaultPolicy, FallbackPolicy, FallbackReason, NoRewrite, Rewrite};
pub use served::{RecordServedBy, ServedBy};
pub use service::Fallback;
