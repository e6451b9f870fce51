//! Thin metric handles over the `metrics` facade.
//!
//! Layers register their handles once, when they are built, and clone them
//! into services; a request only touches an already-resolved handle. Without
//! the `metrics` feature every handle is a zero-sized no-op.
//!
//! Naming, shared by all layers: the prefix `llm_sluice_`, `_total` on
//! counters, `_seconds` on durations, and the label keys `layer`, `reason`
//! and `outcome` for the same ideas everywhere. Label values are static
//! strings from a bounded set; a partition key is never a label.
//!
//! Handles resolve against the recorder installed when they are created:
//! install the recorder before building layers.

use std::time::Duration;

/// Label pairs: static keys and values only, so cardinality stays bounded.
pub(crate) type Labels<'a> = &'a [(&'static str, &'static str)];

/// A monotonic counter.
#[derive(Clone)]
pub(crate) struct Counter {
    #[cfg(feature = "metrics")]
    inner: metrics::Counter,
}

impl Counter {
    pub(crate) fn new(name: &'static str, labels: Labels<'_>) -> Self {
        #[cfg(feature = "metrics")]
        return Counter {
            inner: metrics::counter!(name, labels),
        };
        #[cfg(not(feature = "metrics"))]
        {
            let _ = (name, labels);
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
    pub(crate) fn new(name: &'static str, labels: Labels<'_>) -> Self {
        #[cfg(feature = "metrics")]
        return Gauge {
            inner: metrics::gauge!(name, labels),
        };
        #[cfg(not(feature = "metrics"))]
        {
            let _ = (name, labels);
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
    pub(crate) fn new(name: &'static str, labels: Labels<'_>) -> Self {
        #[cfg(feature = "metrics")]
        return Histogram {
            inner: metrics::histogram!(name, labels),
        };
        #[cfg(not(feature = "metrics"))]
        {
            let _ = (name, labels);
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

/// What kind of metric a description is for.
#[derive(Clone, Copy)]
pub(crate) enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// The unit of a described metric.
#[derive(Clone, Copy)]
pub(crate) enum Unit {
    Count,
    Seconds,
}

/// Describes metrics to the recorder: `(kind, name, unit, help)`. Call it once
/// per process for each layer's set of metrics (behind a `std::sync::Once`).
pub(crate) fn describe(list: &[(Kind, &'static str, Unit, &'static str)]) {
    #[cfg(feature = "metrics")]
    for &(kind, name, unit, help) in list {
        let unit = match unit {
            Unit::Count => metrics::Unit::Count,
            Unit::Seconds => metrics::Unit::Seconds,
        };
        match kind {
            Kind::Counter => metrics::describe_counter!(name, unit, help),
            Kind::Gauge => metrics::describe_gauge!(name, unit, help),
            Kind::Histogram => metrics::describe_histogram!(name, unit, help),
        }
    }
    #[cfg(not(feature = "metrics"))]
    let _ = list;
}
