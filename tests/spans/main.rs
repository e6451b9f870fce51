//! The retry layer's per-attempt span, seen by a small recording subscriber.
//!
//! In a test binary of its own: `tracing` caches each callsite's interest
//! process-wide, and a callsite first hit by another test's thread while no
//! subscriber was registered could be cached as "never" in a race with this
//! test's `set_default`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use llm_sluice::request::RequestMeta;
use llm_sluice::{RetryLayer, TimeoutLayer};
use tower::{Layer, Service, ServiceExt};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};

#[path = "../metrics/upstream.rs"]
mod upstream;

use upstream::{Reply, Step, Upstream};

type Fields = BTreeMap<String, String>;

#[derive(Default)]
struct Seen {
    /// Every span made: its id, name and fields (recorded ones included).
    spans: Vec<(u64, &'static str, Fields)>,
    /// The spans entered now, innermost last.
    entered: Vec<u64>,
    /// Every event: its message and the span it happened in.
    events: Vec<(String, Option<u64>)>,
}

#[derive(Clone, Default)]
struct Recorder {
    seen: Arc<Mutex<Seen>>,
    next: Arc<AtomicU64>,
}

struct Collect<'a>(&'a mut Fields);

impl Visit for Collect<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0
            .insert(field.name().to_string(), format!("{value:?}"));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_string(), value.to_string());
    }
}

impl Subscriber for Recorder {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }

    fn new_span(&self, span: &Attributes<'_>) -> Id {
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let mut fields = Fields::new();
        span.record(&mut Collect(&mut fields));
        let mut seen = self.seen.lock().unwrap();
        seen.spans.push((id, span.metadata().name(), fields));
        Id::from_u64(id)
    }

    fn record(&self, span: &Id, values: &Record<'_>) {
        let mut seen = self.seen.lock().unwrap();
        if let Some((.., fields)) = seen
            .spans
            .iter_mut()
            .find(|(id, ..)| *id == span.into_u64())
        {
            values.record(&mut Collect(fields));
        }
    }

    fn record_follows_from(&self, _: &Id, _: &Id) {}

    fn event(&self, event: &Event<'_>) {
        let mut fields = Fields::new();
        event.record(&mut Collect(&mut fields));
        let mut seen = self.seen.lock().unwrap();
        let within = seen.entered.last().copied();
        let message = fields.remove("message").unwrap_or_default();
        seen.events.push((message, within));
    }

    fn enter(&self, span: &Id) {
        self.seen.lock().unwrap().entered.push(span.into_u64());
    }

    fn exit(&self, span: &Id) {
        let mut seen = self.seen.lock().unwrap();
        if let Some(at) = seen.entered.iter().rposition(|id| *id == span.into_u64()) {
            seen.entered.remove(at);
        }
    }
}

#[tokio::test(start_paused = true)]
async fn each_attempt_has_a_span_with_its_number_and_outcome() {
    let recorder = Recorder::default();
    let _default = tracing::subscriber::set_default(recorder.clone());

    let upstream = Upstream::new([Step::Hang, Step::Status(500), Step::Status(200)]);
    let timeout = TimeoutLayer::builder()
        .attempt(Duration::from_secs(1))
        .build()
        .unwrap();
    let retry = RetryLayer::builder()
        .max_retries(2)
        .seed(3)
        .build()
        .unwrap();
    let mut svc = retry.layer(timeout.layer(upstream));
    let reply = svc
        .ready()
        .await
        .unwrap()
        .call(RequestMeta::new())
        .await
        .unwrap();
    assert_eq!(reply, Reply(200));

    let seen = recorder.seen.lock().unwrap();
    let attempts: Vec<(u64, &str, &str)> = seen
        .spans
        .iter()
        .filter(|(_, name, _)| *name == "llm_sluice.attempt")
        .map(|(id, _, fields)| (*id, fields["attempt"].as_str(), fields["outcome"].as_str()))
        .collect();
    let numbered: Vec<(&str, &str)> = attempts.iter().map(|(_, a, o)| (*a, *o)).collect();
    assert_eq!(
        numbered,
        [("1", "timeout"), ("2", "server_error"), ("3", "success")]
    );
    // The timeout layer's event belongs to the attempt that timed out.
    let timed_out: Vec<Option<u64>> = seen
        .events
        .iter()
        .filter(|(message, _)| message == "request timed out")
        .map(|(_, within)| *within)
        .collect();
    assert_eq!(timed_out, [Some(attempts[0].0)]);
    // The retry decisions are made outside any attempt's span.
    let retrying: Vec<Option<u64>> = seen
        .events
        .iter()
        .filter(|(message, _)| message == "retrying")
        .map(|(_, within)| *within)
        .collect();
    assert_eq!(retrying, [None, None]);
    assert!(seen.entered.is_empty(), "every span was left");
}
