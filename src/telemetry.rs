//! Thin metric handles over the `metrics` facade, and the catalog of every
//! metric the crate emits.
//!
//! Layers register their handles once, when they are built (or, for a
//! partition with its own label, when its state is created), and clone them
//! into services; a request only touches an already-resolved handle. Without
//! the `metrics` feature every handle is a zero-sized no-op.
//!
//! Naming, shared by all layers: the prefix `llm_sluice_`, `_total` on
//! counters, `_seconds` on durations, and the label keys `layer`, `reason`
//! and `outcome` for the same ideas everywhere. Every metric carries
//! `layer`; a layer built with `metrics_name` adds `name`; a per-partition
//! layer built with `partition_label` adds `partition` (a fingerprint, never
//! the key). Label values come from bounded sets; [`CATALOG`] lists every
//! metric, and a test checks both the list and what the layers emit against
//! these rules.
//!
//! Handles resolve against the recorder installed when they are created:
//! install the recorder before building layers.

use std::collections::HashSet;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use parking_lot::Mutex;

use crate::error::ConfigError;
use crate::request::PartitionKey;

/// Label pairs: static keys and values only, so cardinality stays bounded.
pub(crate) type Labels<'a> = &'a [(&'static str, &'static str)];

/// The labels every metric of one layer instance carries: `layer`, then
/// `name` if the layer was given one, then `partition` for a partition's own
/// handles. Made once per layer (or per partition state), never per request.
#[derive(Clone)]
pub(crate) struct Scope {
    layer: &'static str,
    name: Option<&'static str>,
    #[cfg(feature = "metrics")]
    partition: Option<metrics::SharedString>,
}

impl Scope {
    /// The labels of a layer, with its optional instance name.
    pub(crate) fn new(layer: &'static str, name: Option<&'static str>) -> Self {
        Scope {
            layer,
            name,
            #[cfg(feature = "metrics")]
            partition: None,
        }
    }

    /// These labels plus `partition="<value>"` for a static value
    /// (`none`, `overflow`, `other`).
    pub(crate) fn with_partition(&self, value: &'static str) -> Self {
        #[cfg(feature = "metrics")]
        return Scope {
            partition: Some(value.into()),
            ..self.clone()
        };
        #[cfg(not(feature = "metrics"))]
        {
            let _ = value;
            self.clone()
        }
    }

    /// These labels plus `partition="<fingerprint>"` (8 hex digits).
    fn with_fingerprint(&self, fingerprint: u32) -> Self {
        #[cfg(feature = "metrics")]
        return Scope {
            partition: Some(format!("{fingerprint:08x}").into()),
            ..self.clone()
        };
        #[cfg(not(feature = "metrics"))]
        {
            let _ = fingerprint;
            self.clone()
        }
    }

    #[cfg(feature = "metrics")]
    fn labels(&self, extra: Labels<'_>) -> Vec<metrics::Label> {
        let mut labels = Vec::with_capacity(3 + extra.len());
        labels.push(metrics::Label::from_static_parts("layer", self.layer));
        if let Some(name) = self.name {
            labels.push(metrics::Label::from_static_parts("name", name));
        }
        for &(key, value) in extra {
            labels.push(metrics::Label::from_static_parts(key, value));
        }
        if let Some(partition) = &self.partition {
            labels.push(metrics::Label::new("partition", partition.clone()));
        }
        labels
    }
}

impl fmt::Debug for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Scope");
        d.field("layer", &self.layer).field("name", &self.name);
        #[cfg(feature = "metrics")]
        d.field("partition", &self.partition.as_deref());
        d.finish()
    }
}

/// Checks a `metrics_name` setting.
pub(crate) fn check_name(name: &'static str) -> Result<(), ConfigError> {
    if name.is_empty() {
        return Err(ConfigError::new("metrics_name", "must not be empty"));
    }
    Ok(())
}

/// The most distinct values a `partition_label` may allow: each value is a
/// set of time series in the user's metrics backend.
pub(crate) const MAX_PARTITION_LABELS: usize = 10_000;

/// Gives partitions their `partition` label value, capped in cardinality:
/// the first `max` distinct keys (by fingerprint) get their fingerprint, every
/// later one shares `other`. Asked once per partition state created, never
/// per request.
pub(crate) struct PartitionLabels {
    max: usize,
    seen: Mutex<HashSet<u32>>,
    /// Whether the cap was reported (once per layer).
    capped: AtomicBool,
}

impl PartitionLabels {
    /// Checks the `partition_label` setting and makes the labeller.
    pub(crate) fn new(max: usize) -> Result<Self, ConfigError> {
        if max == 0 {
            return Err(ConfigError::new(
                "partition_label",
                "must allow at least 1 value (leave it unset for no partition label)",
            ));
        }
        if max > MAX_PARTITION_LABELS {
            return Err(ConfigError::new(
                "partition_label",
                "must allow at most 10000 values (each value is a set of time series)",
            ));
        }
        Ok(PartitionLabels {
            max,
            seen: Mutex::new(HashSet::new()),
            capped: AtomicBool::new(false),
        })
    }

    /// The scope for a new state of `key`, and whether the value is the
    /// key's own (not the shared `other`).
    pub(crate) fn scope(&self, base: &Scope, key: &PartitionKey) -> (Scope, bool) {
        let fingerprint = key.fingerprint();
        let own = {
            let mut seen = self.seen.lock();
            seen.contains(&fingerprint) || (seen.len() < self.max && seen.insert(fingerprint))
        };
        if own {
            (base.with_fingerprint(fingerprint), true)
        } else {
            if !self.capped.swap(true, Ordering::Relaxed) {
                tracing::info!(
                    layer = base.layer,
                    max = self.max,
                    "partition label cap reached: later partitions are labelled \"other\""
                );
            }
            (base.with_partition(OTHER), false)
        }
    }
}

impl fmt::Debug for PartitionLabels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PartitionLabels")
            .field("max", &self.max)
            .field("used", &self.seen.lock().len())
            .finish()
    }
}

/// `partition` value of requests without a key.
pub(crate) const UNKEYED: &str = "none";
/// `partition` value of the overflow state of a full partition map.
pub(crate) const OVERFLOW: &str = "overflow";
/// `partition` value shared by keys past the label cap.
pub(crate) const OTHER: &str = "other";

/// A monotonic counter.
#[derive(Clone)]
pub(crate) struct Counter {
    #[cfg(feature = "metrics")]
    inner: metrics::Counter,
}

impl Counter {
    /// Registers `name` with the scope's labels plus `extra`.
    pub(crate) fn new(name: &'static str, scope: &Scope, extra: Labels<'_>) -> Self {
        #[cfg(feature = "metrics")]
        return Counter {
            inner: metrics::counter!(name, scope.labels(extra)),
        };
        #[cfg(not(feature = "metrics"))]
        {
            let _ = (name, scope, extra);
            Counter {}
        }
    }

    #[inline]
    pub(crate) fn increment(&self, n: u64) {
        #[cfg(feature = "metrics")]
        self.inner.increment(n);
        #[cfg(not(feature = "metrics"))]
        let _ = n;
    }
}

/// A value that goes up and down.
#[derive(Clone)]
pub(crate) struct Gauge {
    #[cfg(feature = "metrics")]
    inner: metrics::Gauge,
}

impl Gauge {
    /// Registers `name` with the scope's labels plus `extra`.
    pub(crate) fn new(name: &'static str, scope: &Scope, extra: Labels<'_>) -> Self {
        #[cfg(feature = "metrics")]
        return Gauge {
            inner: metrics::gauge!(name, scope.labels(extra)),
        };
        #[cfg(not(feature = "metrics"))]
        {
            let _ = (name, scope, extra);
            Gauge {}
        }
    }

    #[inline]
    pub(crate) fn set(&self, value: f64) {
        #[cfg(feature = "metrics")]
        self.inner.set(value);
        #[cfg(not(feature = "metrics"))]
        let _ = value;
    }

    #[inline]
    pub(crate) fn increment(&self, value: f64) {
        #[cfg(feature = "metrics")]
        self.inner.increment(value);
        #[cfg(not(feature = "metrics"))]
        let _ = value;
    }

    #[inline]
    pub(crate) fn decrement(&self, value: f64) {
        #[cfg(feature = "metrics")]
        self.inner.decrement(value);
        #[cfg(not(feature = "metrics"))]
        let _ = value;
    }
}

/// A distribution of values.
#[derive(Clone)]
pub(crate) struct Histogram {
    #[cfg(feature = "metrics")]
    inner: metrics::Histogram,
}

impl Histogram {
    /// Registers `name` with the scope's labels plus `extra`.
    pub(crate) fn new(name: &'static str, scope: &Scope, extra: Labels<'_>) -> Self {
        #[cfg(feature = "metrics")]
        return Histogram {
            inner: metrics::histogram!(name, scope.labels(extra)),
        };
        #[cfg(not(feature = "metrics"))]
        {
            let _ = (name, scope, extra);
            Histogram {}
        }
    }

    #[inline]
    pub(crate) fn record(&self, value: f64) {
        #[cfg(feature = "metrics")]
        self.inner.record(value);
        #[cfg(not(feature = "metrics"))]
        let _ = value;
    }

    #[inline]
    pub(crate) fn record_duration(&self, value: Duration) {
        self.record(value.as_secs_f64());
    }
}

/// What kind of metric a [`MetricDef`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    /// A monotonic count: the name ends in `_total`.
    Counter,
    /// A value that goes up and down.
    Gauge,
    /// A distribution: durations, named `_seconds`.
    Histogram,
}

/// The unit of a [`MetricDef`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricUnit {
    /// A count of things (requests, tokens, breakers).
    Count,
    /// Seconds.
    Seconds,
    /// A ratio of two quantities, 1 when they are equal: the name ends in
    /// `_ratio`. Described to the recorder without a unit (the facade has
    /// none for it).
    Ratio,
}

/// One metric the crate can emit.
#[derive(Debug, Clone, Copy)]
pub struct MetricDef {
    /// The full name.
    pub name: &'static str,
    /// Counter, gauge or histogram.
    pub kind: MetricKind,
    /// Its unit.
    pub unit: MetricUnit,
    /// The values its `layer` label takes.
    pub layers: &'static [&'static str],
    /// Its label keys besides `layer`, and the optional `name` and
    /// `partition`.
    pub labels: &'static [&'static str],
    /// Whether a per-partition layer built with `partition_label` adds the
    /// `partition` label to it.
    pub partitioned: bool,
    /// What it measures.
    pub help: &'static str,
}

const fn def(
    name: &'static str,
    kind: MetricKind,
    unit: MetricUnit,
    layers: &'static [&'static str],
    labels: &'static [&'static str],
    partitioned: bool,
    help: &'static str,
) -> MetricDef {
    MetricDef {
        name,
        kind,
        unit,
        layers,
        labels,
        partitioned,
        help,
    }
}

use MetricKind::{Counter as C, Gauge as G, Histogram as H};
use MetricUnit::{Count, Ratio, Seconds};

pub(crate) const ADMITTED: &str = "llm_sluice_admitted_total";
pub(crate) const REJECTED: &str = "llm_sluice_rejected_total";
pub(crate) const PARTITIONS: &str = "llm_sluice_partitions";

#[rustfmt::skip]
/// Every metric the crate can emit. Each layer describes its own entries to
/// the recorder once per process; a test checks every entry against the
/// naming rules and every emitted series against its entry.
pub static CATALOG: &[MetricDef] = &[
    def(ADMITTED, C, Count, &["concurrency", "rate"], &[], true,
        "Requests a layer let through to the next one."),
    def(REJECTED, C, Count, &["concurrency", "rate", "breaker"], &["reason", "priority"], true,
        "Requests a layer refused, by reason (concurrency rejections also by priority level)."),
    def("llm_sluice_in_flight", G, Count, &["concurrency"], &[], false,
        "Requests holding a concurrency permit (until the response body ends)."),
    def("llm_sluice_queue_depth", G, Count, &["concurrency"], &[], false,
        "Requests waiting in the concurrency limiter's queue."),
    def("llm_sluice_queue_wait_seconds", H, Seconds, &["concurrency"], &[], false,
        "Time an admitted or timed-out request waited for a concurrency permit (0 when none was needed)."),
    def("llm_sluice_rate_tokens_reserved_total", C, Count, &["rate"], &[], true,
        "Tokens reserved in the rate windows: estimates, plus usage above them."),
    def("llm_sluice_rate_tokens_refunded_total", C, Count, &["rate"], &[], true,
        "Tokens given back to the rate windows: over-estimates and released reservations."),
    def("llm_sluice_rate_wait_seconds", H, Seconds, &["rate"], &[], true,
        "Time an admitted request waited for room in the rate windows (0 when it fit at once)."),
    def("llm_sluice_rate_cooldowns_total", C, Count, &["rate"], &[], true,
        "Times a partition cooled down because the server answered 429 with a delay."),
    def("llm_sluice_rate_usage_capped_total", C, Count, &["rate"], &[], true,
        "Usage reports above MAX_USAGE_TOKENS (2^40), capped before they reached the rate windows."),
    def("llm_sluice_rate_learned_limit", G, Count, &["rate"], &["budget"], true,
        "A partition's limit after what it learned from the wire (reported limits, 429s), by budget: requests, tokens, input_tokens, output_tokens (set when it changes; without a partition label, the last partition's)."),
    def("llm_sluice_rate_charging_mismatch_total", C, Count, &["rate"], &["budget"], true,
        "Rate-limit reports whose count says a token budget's charging rule is wrong, by budget: tokens, input_tokens, output_tokens."),
    def(PARTITIONS, G, Count, &["rate"], &[], false,
        "Partition keys with state of their own."),
    def("llm_sluice_breaker_state", G, Count, &["breaker"], &[], true,
        "State of a circuit breaker: 0 closed, 1 half-open, 2 open (the unkeyed one; each labelled partition's too with partition_label)."),
    def("llm_sluice_breaker_open", G, Count, &["breaker"], &[], false,
        "Circuit breakers (keyed ones included) open or half-open now."),
    def("llm_sluice_breaker_transitions_total", C, Count, &["breaker"], &["from", "to"], true,
        "Circuit breaker state changes, by from and to state."),
    def("llm_sluice_breaker_calls_total", C, Count, &["breaker"], &["outcome"], true,
        "Calls a circuit breaker recorded, by outcome."),
    def("llm_sluice_timeouts_total", C, Count, &["timeout", "deadline"], &["reason"], false,
        "Timeouts that fired, by reason: attempt, first_chunk, idle, total."),
    def("llm_sluice_retry_attempts_total", C, Count, &["retry"], &[], false,
        "Attempts sent by the retry layer, first attempts included."),
    def("llm_sluice_retries_total", C, Count, &["retry"], &["reason"], false,
        "Retries, by the outcome that caused them."),
    def("llm_sluice_retry_server_delay_seconds", H, Seconds, &["retry"], &[], false,
        "Server-requested delays (retry-after and reset headers) honoured before a retry."),
    def("llm_sluice_retry_gave_up_total", C, Count, &["retry"], &["reason"], false,
        "Retryable results returned without a retry, by reason: max_retries, deadline, over_cap, not_replayable, budget."),
    def("llm_sluice_fallbacks_total", C, Count, &["fallback"], &["reason"], false,
        "Requests sent to the fallback service, by the primary's failure reason."),
    def("llm_sluice_error_bodies_total", C, Count, &["error_body"], &["outcome"], false,
        "Non-2xx response bodies read by ErrorBodyLayer, by outcome: parsed, unparsed, too_large, failed."),
    def("llm_sluice_estimate_ratio", H, Ratio, &["estimate"], &["budget"], false,
        "Actual tokens over estimated tokens of each request, by budget: total, input, output (1 is exact, below 1 an over-estimate)."),
];

/// Describes every [`CATALOG`] entry of `layer` to the recorder. Call it
/// once per process per layer (behind a `std::sync::Once`).
pub(crate) fn describe(layer: &'static str) {
    #[cfg(feature = "metrics")]
    for def in CATALOG.iter().filter(|d| d.layers.contains(&layer)) {
        let (name, help) = (def.name, def.help);
        let unit = match def.unit {
            MetricUnit::Count => metrics::Unit::Count,
            MetricUnit::Seconds => metrics::Unit::Seconds,
            MetricUnit::Ratio => {
                match def.kind {
                    MetricKind::Counter => metrics::describe_counter!(name, help),
                    MetricKind::Gauge => metrics::describe_gauge!(name, help),
                    MetricKind::Histogram => metrics::describe_histogram!(name, help),
                }
                continue;
            }
        };
        match def.kind {
            MetricKind::Counter => metrics::describe_counter!(name, unit, help),
            MetricKind::Gauge => metrics::describe_gauge!(name, unit, help),
            MetricKind::Histogram => metrics::describe_histogram!(name, unit, help),
        }
    }
    #[cfg(not(feature = "metrics"))]
    let _ = layer;
}
