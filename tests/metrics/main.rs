//! What the layers emit through the `metrics` facade: exact names, label sets
//! and values for known scenarios (each layer alone, with an instance name
//! and with partition labels, and a composed stack), and the naming rules
//! checked over the whole catalog and over every series a scenario emits.
//!
//! Each test installs its own `DebuggingRecorder` as the thread's local
//! recorder on a current-thread runtime, so tests never share a recorder.
#![cfg(feature = "metrics")]

use std::collections::BTreeMap;
use std::time::Duration;

use llm_sluice::__metrics::{MetricKind, MetricUnit, CATALOG};
use llm_sluice::request::RequestMeta;
use llm_sluice::{
    CircuitBreakerLayer, ConcurrencyLimitLayer, DeadlineLayer, Error, FallbackLayer, PartitionKey,
    Priority, RateLimitLayer, RetryLayer, TimeoutLayer,
};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use tokio_test::{assert_pending, assert_ready_err, assert_ready_ok, task};
use tower::{Layer, Service, ServiceBuilder, ServiceExt};

mod upstream;

use upstream::{Reply, Step, Upstream};
use Step::{Hang, Status};

// ===== reading a snapshot =====

#[derive(Debug, Clone, PartialEq)]
enum V {
    C(u64),
    G(f64),
    H(Vec<f64>),
}

/// One series: `name{k=v,...}` with the labels sorted by key.
type Series = BTreeMap<String, V>;

fn series_key(name: &str, labels: &[(&str, &str)]) -> String {
    let mut labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    labels.sort();
    format!("{name}{{{}}}", labels.join(","))
}

/// Takes the snapshot, checks every series against the catalog, and returns
/// them all.
fn take(snapshotter: &Snapshotter) -> Series {
    let mut out = Series::new();
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        let (kind, key) = key.into_parts();
        let labels: Vec<(&str, &str)> = key.labels().map(|l| (l.key(), l.value())).collect();
        check_series(key.name(), kind, &labels);
        let value = match value {
            DebugValue::Counter(n) => V::C(n),
            DebugValue::Gauge(g) => V::G(g.into_inner()),
            DebugValue::Histogram(h) => {
                let mut h: Vec<f64> = h.into_iter().map(|v| v.into_inner()).collect();
                h.sort_by(f64::total_cmp);
                V::H(h)
            }
        };
        out.insert(series_key(key.name(), &labels), value);
    }
    out
}

/// The series that say something: counters above 0, gauges not 0,
/// histograms with values.
fn nonzero(series: &Series) -> Series {
    series
        .iter()
        .filter(|(_, v)| match v {
            V::C(n) => *n > 0,
            V::G(g) => *g != 0.0,
            V::H(h) => !h.is_empty(),
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Label pairs of one series.
type Labels<'a> = &'a [(&'a str, &'a str)];

fn expect(items: &[(&str, Labels<'_>, V)]) -> Series {
    items
        .iter()
        .map(|(name, labels, v)| (series_key(name, labels), v.clone()))
        .collect()
}

fn assert_series(actual: &Series, expected: &Series) {
    if actual != expected {
        let mut diff = String::new();
        for (k, v) in expected {
            if actual.get(k) != Some(v) {
                diff += &format!("  expected {k} = {v:?}, got {:?}\n", actual.get(k));
            }
        }
        for (k, v) in actual {
            if !expected.contains_key(k) {
                diff += &format!("  unexpected {k} = {v:?}\n");
            }
        }
        panic!("series differ:\n{diff}");
    }
}

fn fp(key: &str) -> String {
    format!("{:08x}", PartitionKey::new(key).fingerprint())
}

// ===== the naming rules =====

const LABEL_KEYS: [&str; 6] = ["reason", "outcome", "priority", "from", "to", "budget"];

fn is_snake(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !s.starts_with('_')
        && !s.ends_with('_')
        && !s.contains("__")
}

/// A series is in the catalog, of the catalog's kind, with `layer` set to
/// one of its layers and no label key the catalog does not name.
fn check_series(name: &str, kind: metrics_util::MetricKind, labels: &[(&str, &str)]) {
    let def = CATALOG
        .iter()
        .find(|d| d.name == name)
        .unwrap_or_else(|| panic!("{name} is emitted but not in the catalog"));
    let kind = match kind {
        metrics_util::MetricKind::Counter => MetricKind::Counter,
        metrics_util::MetricKind::Gauge => MetricKind::Gauge,
        metrics_util::MetricKind::Histogram => MetricKind::Histogram,
    };
    assert_eq!(kind, def.kind, "{name}: emitted as another kind");
    let layer = labels
        .iter()
        .find(|(k, _)| *k == "layer")
        .unwrap_or_else(|| panic!("{name} {labels:?}: no layer label"));
    assert!(def.layers.contains(&layer.1), "{name}: layer {}", layer.1);
    let mut keys: Vec<&str> = labels.iter().map(|(k, _)| *k).collect();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), labels.len(), "{name}: a label key twice");
    for (k, v) in labels {
        let allowed = *k == "layer"
            || *k == "name"
            || (*k == "partition" && def.partitioned)
            || def.labels.contains(k);
        assert!(allowed, "{name}: label {k} not in the catalog");
        assert!(!v.is_empty(), "{name}: empty value for {k}");
        if *k == "partition" {
            let fingerprint = v.len() == 8 && v.bytes().all(|b| b.is_ascii_hexdigit());
            assert!(
                fingerprint || ["none", "overflow", "other"].contains(v),
                "{name}: partition={v} is neither a fingerprint nor a fixed value"
            );
        } else if *k != "name" {
            assert!(is_snake(v), "{name}: {k}={v} is not a snake_case value");
        }
    }
}

#[test]
fn every_cataloged_metric_follows_the_naming_rules() {
    let mut names: Vec<&str> = CATALOG.iter().map(|d| d.name).collect();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), CATALOG.len(), "a name listed twice");
    for def in CATALOG {
        let name = def.name;
        assert!(name.starts_with("llm_sluice_"), "{name}: prefix");
        assert!(is_snake(name), "{name}: not snake_case");
        match def.kind {
            MetricKind::Counter => {
                assert!(name.ends_with("_total"), "{name}: a counter ends in _total");
                assert_eq!(def.unit, MetricUnit::Count, "{name}: a counter counts");
            }
            MetricKind::Gauge | MetricKind::Histogram => {
                assert!(
                    !name.ends_with("_total"),
                    "{name}: only counters end in _total"
                )
            }
        }
        assert_eq!(
            def.unit == MetricUnit::Seconds,
            name.ends_with("_seconds"),
            "{name}: durations, and only they, end in _seconds"
        );
        assert!(!def.layers.is_empty(), "{name}: no layer");
        for layer in def.layers {
            assert!(is_snake(layer), "{name}: layer {layer}");
        }
        for label in def.labels {
            assert!(LABEL_KEYS.contains(label), "{name}: label key {label}");
        }
        assert!(!def.help.is_empty(), "{name}: no help");
    }
}

// ===== each layer =====

#[tokio::test(start_paused = true)]
async fn concurrency_admitted_shed_and_waited() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);

    let layer = ConcurrencyLimitLayer::builder()
        .max_in_flight(1)
        .max_queued(1)
        .max_queue_wait(Duration::from_secs(10))
        .metrics_name("primary")
        .build()
        .unwrap();
    let (mock, mut handle) = tower_test::mock::pair::<RequestMeta, Reply>();
    let mut svc = layer.layer(mock);

    let mut first = task::spawn(svc.call(RequestMeta::new()));
    assert_pending!(first.poll());
    let mut queued = task::spawn(svc.call(RequestMeta::new().priority(Priority::LOW)));
    assert_pending!(queued.poll());
    let mut shed = task::spawn(svc.call(RequestMeta::new().priority(Priority::HIGH)));
    let err = assert_ready_err!(shed.poll());
    assert!(matches!(
        err.downcast_ref::<Error>(),
        Some(Error::Overloaded { .. })
    ));

    tokio::time::advance(Duration::from_secs(2)).await;
    let (_, send) = handle.next_request().await.unwrap();
    send.send_response(Reply(200));
    assert_ready_ok!(first.poll());
    assert_pending!(queued.poll());
    let (_, send) = handle.next_request().await.unwrap();
    send.send_response(Reply(200));
    assert_ready_ok!(queued.poll());

    let all = take(&snapshotter);
    let l: &[(&str, &str)] = &[("layer", "concurrency"), ("name", "primary")];
    let shed_labels: &[(&str, &str)] = &[
        ("layer", "concurrency"),
        ("name", "primary"),
        ("reason", "queue_full"),
        ("priority", "high"),
    ];
    assert_series(
        &nonzero(&all),
        &expect(&[
            ("llm_sluice_admitted_total", l, V::C(2)),
            ("llm_sluice_rejected_total", shed_labels, V::C(1)),
            ("llm_sluice_queue_wait_seconds", l, V::H(vec![0.0, 2.0])),
        ]),
    );
    // Both gauges went up and back down: registered, at 0.
    assert_eq!(
        all.get(&series_key("llm_sluice_in_flight", l)),
        Some(&V::G(0.0))
    );
    assert_eq!(
        all.get(&series_key("llm_sluice_queue_depth", l)),
        Some(&V::G(0.0))
    );
    // Every reason and priority level is registered up front, and no other
    // priority value exists.
    let rejected = all
        .keys()
        .filter(|k| k.starts_with("llm_sluice_rejected_total{"))
        .count();
    assert_eq!(rejected, 3 * 4);
}

#[tokio::test(start_paused = true)]
async fn rate_partition_label_is_a_capped_fingerprint() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);

    let layer = RateLimitLayer::builder()
        .requests_per_minute(1)
        .max_wait(Duration::ZERO)
        .partition_label(2)
        .build()
        .unwrap();
    let mut svc = layer.layer(Upstream::default());
    let keyed = |key: &str| {
        RequestMeta::new()
            .tokens(10)
            .partition(PartitionKey::new(key))
    };
    for key in ["sk-tenant-a", "sk-tenant-b", "sk-tenant-c"] {
        svc.ready().await.unwrap().call(keyed(key)).await.unwrap();
    }
    let err = svc
        .ready()
        .await
        .unwrap()
        .call(keyed("sk-tenant-a"))
        .await
        .unwrap_err();
    assert!(matches!(
        err.downcast_ref::<Error>(),
        Some(Error::RateLimited { .. })
    ));
    svc.ready()
        .await
        .unwrap()
        .call(RequestMeta::new().tokens(10))
        .await
        .unwrap();

    let all = take(&snapshotter);
    let (a, b) = (fp("sk-tenant-a"), fp("sk-tenant-b"));
    let mut expected = Series::new();
    for part in [a.as_str(), b.as_str(), "other", "none"] {
        let labels: &[(&str, &str)] = &[("layer", "rate"), ("partition", part)];
        expected.insert(series_key("llm_sluice_admitted_total", labels), V::C(1));
        expected.insert(
            series_key("llm_sluice_rate_tokens_reserved_total", labels),
            V::C(10),
        );
        expected.insert(
            series_key("llm_sluice_rate_wait_seconds", labels),
            V::H(vec![0.0]),
        );
    }
    expected.insert(
        series_key(
            "llm_sluice_rejected_total",
            &[
                ("layer", "rate"),
                ("partition", &a),
                ("reason", "wait_timeout"),
            ],
        ),
        V::C(1),
    );
    expected.insert(
        series_key("llm_sluice_partitions", &[("layer", "rate")]),
        V::G(3.0),
    );
    assert_series(&nonzero(&all), &expected);
    for key in all.keys() {
        assert!(!key.contains("tenant"), "a raw key in {key}");
    }
}

#[tokio::test(start_paused = true)]
async fn breaker_transitions_and_rejections_by_partition() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);

    let layer = CircuitBreakerLayer::builder()
        .consecutive_failures(1)
        .per_partition(10)
        .partition_label(1)
        .build()
        .unwrap();
    let upstream = Upstream::new([Status(500), Status(500)]);
    let mut svc = layer.layer(upstream);
    let keyed = |key: &str| RequestMeta::new().partition(PartitionKey::new(key));
    // a fails: its breaker opens; a again: refused
    assert_eq!(
        svc.ready().await.unwrap().call(keyed("a")).await.unwrap(),
        Reply(500)
    );
    let err = svc
        .ready()
        .await
        .unwrap()
        .call(keyed("a"))
        .await
        .unwrap_err();
    assert!(matches!(
        err.downcast_ref::<Error>(),
        Some(Error::CircuitOpen { .. })
    ));
    // b (past the label cap) fails and opens; no key succeeds
    assert_eq!(
        svc.ready().await.unwrap().call(keyed("b")).await.unwrap(),
        Reply(500)
    );
    assert_eq!(
        svc.ready()
            .await
            .unwrap()
            .call(RequestMeta::new())
            .await
            .unwrap(),
        Reply(200)
    );

    let all = take(&snapshotter);
    let a = fp("a");
    let l = |part: &str, extra: &[(&'static str, &'static str)]| {
        let mut labels = vec![("layer", "breaker"), ("partition", part)];
        labels.extend_from_slice(extra);
        labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<Vec<_>>()
    };
    let key = |name: &str, labels: Vec<(String, String)>| {
        let labels: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (&**k, &**v)).collect();
        series_key(name, &labels)
    };
    let opened = [("from", "closed"), ("to", "open")];
    let expected: Series = [
        (
            key(
                "llm_sluice_breaker_calls_total",
                l(&a, &[("outcome", "failure")]),
            ),
            V::C(1),
        ),
        (
            key(
                "llm_sluice_breaker_calls_total",
                l("other", &[("outcome", "failure")]),
            ),
            V::C(1),
        ),
        (
            key(
                "llm_sluice_breaker_calls_total",
                l("none", &[("outcome", "success")]),
            ),
            V::C(1),
        ),
        (
            key("llm_sluice_breaker_transitions_total", l(&a, &opened)),
            V::C(1),
        ),
        (
            key("llm_sluice_breaker_transitions_total", l("other", &opened)),
            V::C(1),
        ),
        (
            key(
                "llm_sluice_rejected_total",
                l(&a, &[("reason", "circuit_open")]),
            ),
            V::C(1),
        ),
        (key("llm_sluice_breaker_state", l(&a, &[])), V::G(2.0)),
        (
            series_key("llm_sluice_breaker_open", &[("layer", "breaker")]),
            V::G(2.0),
        ),
    ]
    .into_iter()
    .collect();
    assert_series(&nonzero(&all), &expected);
    // A breaker whose label value is shared has no state gauge of its own.
    assert!(!all.contains_key(&key("llm_sluice_breaker_state", l("other", &[]))));
    // The unkeyed breaker has one (closed: 0).
    assert_eq!(
        all.get(&key("llm_sluice_breaker_state", l("none", &[]))),
        Some(&V::G(0.0))
    );
}

#[tokio::test(start_paused = true)]
async fn breaker_without_partition_label_has_no_partition() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);

    let layer = CircuitBreakerLayer::builder()
        .consecutive_failures(1)
        .per_partition(10)
        .build()
        .unwrap();
    let mut svc = layer.layer(Upstream::new([Status(500)]));
    let keyed = RequestMeta::new().partition(PartitionKey::new("a"));
    assert_eq!(
        svc.ready().await.unwrap().call(keyed).await.unwrap(),
        Reply(500)
    );

    let all = take(&snapshotter);
    let l: &[(&str, &str)] = &[("layer", "breaker")];
    assert_series(
        &nonzero(&all),
        &expect(&[
            (
                "llm_sluice_breaker_calls_total",
                &[("layer", "breaker"), ("outcome", "failure")],
                V::C(1),
            ),
            (
                "llm_sluice_breaker_transitions_total",
                &[("layer", "breaker"), ("from", "closed"), ("to", "open")],
                V::C(1),
            ),
            ("llm_sluice_breaker_open", l, V::G(1.0)),
        ]),
    );
    // A keyed breaker does not move the unkeyed breaker's state gauge.
    assert_eq!(
        all.get(&series_key("llm_sluice_breaker_state", l)),
        Some(&V::G(0.0))
    );
}

#[tokio::test(start_paused = true)]
async fn retry_counts_attempts_retries_and_giving_up() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);

    let layer = RetryLayer::builder()
        .max_retries(2)
        .seed(7)
        .metrics_name("primary")
        .build()
        .unwrap();
    let upstream = Upstream::new([
        Status(500),
        Status(500),
        Status(200),
        Status(500),
        Status(429),
        Status(500),
    ]);
    let mut svc = layer.layer(upstream);
    let ok = svc
        .ready()
        .await
        .unwrap()
        .call(RequestMeta::new())
        .await
        .unwrap();
    assert_eq!(ok, Reply(200));
    let failed = svc
        .ready()
        .await
        .unwrap()
        .call(RequestMeta::new())
        .await
        .unwrap();
    assert_eq!(failed, Reply(500));

    let l = |extra: &[(&'static str, &'static str)]| {
        let mut labels = vec![("layer", "retry"), ("name", "primary")];
        labels.extend_from_slice(extra);
        labels
    };
    assert_series(
        &nonzero(&take(&snapshotter)),
        &expect(&[
            ("llm_sluice_retry_attempts_total", &l(&[]), V::C(6)),
            (
                "llm_sluice_retries_total",
                &l(&[("reason", "server_error")]),
                V::C(3),
            ),
            (
                "llm_sluice_retries_total",
                &l(&[("reason", "rate_limited")]),
                V::C(1),
            ),
            (
                "llm_sluice_retry_server_delay_seconds",
                &l(&[]),
                V::H(vec![1.0]),
            ),
            (
                "llm_sluice_retry_gave_up_total",
                &l(&[("reason", "max_retries")]),
                V::C(1),
            ),
        ]),
    );
}

#[tokio::test(start_paused = true)]
async fn timeouts_count_by_layer_and_reason() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);

    let attempt = TimeoutLayer::builder()
        .attempt(Duration::from_secs(1))
        .metrics_name("primary")
        .build()
        .unwrap();
    let err = attempt
        .layer(Upstream::new([Hang]))
        .oneshot(RequestMeta::new())
        .await
        .unwrap_err();
    assert!(matches!(
        err.downcast_ref::<Error>(),
        Some(Error::Timeout { .. })
    ));
    let deadline = DeadlineLayer::new(Duration::from_secs(5));
    let err = deadline
        .layer(Upstream::new([Hang]))
        .oneshot(RequestMeta::new())
        .await
        .unwrap_err();
    assert!(matches!(
        err.downcast_ref::<Error>(),
        Some(Error::Timeout { .. })
    ));

    assert_series(
        &nonzero(&take(&snapshotter)),
        &expect(&[
            (
                "llm_sluice_timeouts_total",
                &[
                    ("layer", "timeout"),
                    ("name", "primary"),
                    ("reason", "attempt"),
                ],
                V::C(1),
            ),
            (
                "llm_sluice_timeouts_total",
                &[("layer", "deadline"), ("reason", "total")],
                V::C(1),
            ),
        ]),
    );
}

#[tokio::test(start_paused = true)]
async fn fallback_counts_by_reason() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);

    let layer = FallbackLayer::builder(Upstream::default())
        .metrics_name("to_backup")
        .build()
        .unwrap();
    let mut svc = layer.layer(Upstream::new([Status(500), Status(200)]));
    for _ in 0..2 {
        let reply = svc
            .ready()
            .await
            .unwrap()
            .call(RequestMeta::new())
            .await
            .unwrap();
        assert_eq!(reply, Reply(200));
    }

    assert_series(
        &nonzero(&take(&snapshotter)),
        &expect(&[(
            "llm_sluice_fallbacks_total",
            &[
                ("layer", "fallback"),
                ("name", "to_backup"),
                ("reason", "server_error"),
            ],
            V::C(1),
        )]),
    );
}

// ===== the composed stack =====

/// fallback → retry → breaker → concurrency → rate → attempt timeout →
/// upstream, the recommended order, every layer named `primary`.
#[tokio::test(start_paused = true)]
async fn composed_stack_scenario() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);

    let primary = Upstream::new([
        // request 1: a 500, then a success on the retry
        Status(500),
        Status(200),
        // request 2: two hung attempts; the second failure opens the breaker
        Hang,
        Hang,
    ]);
    let secondary = Upstream::default();
    let mut svc = ServiceBuilder::new()
        .layer(
            FallbackLayer::builder(secondary)
                .metrics_name("primary")
                .build()
                .unwrap(),
        )
        .layer(
            RetryLayer::builder()
                .max_retries(1)
                .seed(1)
                .metrics_name("primary")
                .build()
                .unwrap(),
        )
        .layer(
            CircuitBreakerLayer::builder()
                .consecutive_failures(2)
                .metrics_name("primary")
                .build()
                .unwrap(),
        )
        .layer(
            ConcurrencyLimitLayer::builder()
                .max_in_flight(4)
                .metrics_name("primary")
                .build()
                .unwrap(),
        )
        .layer(
            RateLimitLayer::builder()
                .requests_per_minute(100)
                .metrics_name("primary")
                .build()
                .unwrap(),
        )
        .layer(
            TimeoutLayer::builder()
                .attempt(Duration::from_secs(1))
                .metrics_name("primary")
                .build()
                .unwrap(),
        )
        .service(primary);

    for _ in 0..3 {
        let reply = svc
            .ready()
            .await
            .unwrap()
            .call(RequestMeta::new())
            .await
            .unwrap();
        assert_eq!(reply, Reply(200));
    }

    let l = |layer: &'static str, extra: &[(&'static str, &'static str)]| {
        let mut labels = vec![("layer", layer), ("name", "primary")];
        labels.extend_from_slice(extra);
        labels
    };
    let all = take(&snapshotter);
    assert_series(
        &nonzero(&all),
        &expect(&[
            // request 3 met the open breaker
            ("llm_sluice_retry_attempts_total", &l("retry", &[]), V::C(5)),
            (
                "llm_sluice_retries_total",
                &l("retry", &[("reason", "server_error")]),
                V::C(1),
            ),
            (
                "llm_sluice_retries_total",
                &l("retry", &[("reason", "timeout")]),
                V::C(1),
            ),
            (
                "llm_sluice_retry_gave_up_total",
                &l("retry", &[("reason", "max_retries")]),
                V::C(1),
            ),
            (
                "llm_sluice_breaker_calls_total",
                &l("breaker", &[("outcome", "failure")]),
                V::C(3),
            ),
            (
                "llm_sluice_breaker_calls_total",
                &l("breaker", &[("outcome", "success")]),
                V::C(1),
            ),
            (
                "llm_sluice_breaker_transitions_total",
                &l("breaker", &[("from", "closed"), ("to", "open")]),
                V::C(1),
            ),
            ("llm_sluice_breaker_state", &l("breaker", &[]), V::G(2.0)),
            ("llm_sluice_breaker_open", &l("breaker", &[]), V::G(1.0)),
            (
                "llm_sluice_rejected_total",
                &l("breaker", &[("reason", "circuit_open")]),
                V::C(1),
            ),
            ("llm_sluice_admitted_total", &l("concurrency", &[]), V::C(4)),
            (
                "llm_sluice_queue_wait_seconds",
                &l("concurrency", &[]),
                V::H(vec![0.0; 4]),
            ),
            ("llm_sluice_admitted_total", &l("rate", &[]), V::C(4)),
            (
                "llm_sluice_rate_wait_seconds",
                &l("rate", &[]),
                V::H(vec![0.0; 4]),
            ),
            ("llm_sluice_partitions", &l("rate", &[]), V::G(0.0)),
            (
                "llm_sluice_timeouts_total",
                &l("timeout", &[("reason", "attempt")]),
                V::C(2),
            ),
            (
                "llm_sluice_fallbacks_total",
                &l("fallback", &[("reason", "timeout")]),
                V::C(1),
            ),
            (
                "llm_sluice_fallbacks_total",
                &l("fallback", &[("reason", "circuit_open")]),
                V::C(1),
            ),
        ])
        .into_iter()
        .filter(|(_, v)| *v != V::G(0.0))
        .collect(),
    );
    // Every series of the stack carries the instance name.
    for key in all.keys() {
        assert!(key.contains("name=primary"), "{key}");
    }
}

// ===== settings =====

#[test]
fn metric_settings_are_checked_at_build() {
    let err = ConcurrencyLimitLayer::builder()
        .max_in_flight(1)
        .metrics_name("")
        .build()
        .unwrap_err();
    assert_eq!(err.field(), "metrics_name");
    let err = RateLimitLayer::builder()
        .requests_per_minute(1)
        .partition_label(0)
        .build()
        .unwrap_err();
    assert_eq!(err.field(), "partition_label");
    let err = RateLimitLayer::builder()
        .requests_per_minute(1)
        .partition_label(10_001)
        .build()
        .unwrap_err();
    assert_eq!(err.field(), "partition_label");
    let err = CircuitBreakerLayer::builder()
        .partition_label(5)
        .build()
        .unwrap_err();
    assert_eq!(err.field(), "partition_label", "needs per_partition");
    let err = RetryLayer::builder().metrics_name("").build().unwrap_err();
    assert_eq!(err.field(), "metrics_name");
    let err = TimeoutLayer::builder()
        .metrics_name("")
        .build()
        .unwrap_err();
    assert_eq!(err.field(), "metrics_name");
}
