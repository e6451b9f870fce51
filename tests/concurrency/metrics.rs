//! The limiter's metrics, read back through a debugging recorder.

use std::time::Duration;

use llm_sluice::concurrency::ConcurrencyLimitLayer;
use llm_sluice::request::RequestMeta;
use llm_sluice::{Error, Priority};
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use metrics_util::MetricKind;
use tokio_test::{assert_pending, assert_ready_err, assert_ready_ok, task};
use tower::{BoxError, Layer, Service};

type Snapshot = [(
    metrics_util::CompositeKey,
    Option<metrics::Unit>,
    Option<metrics::SharedString>,
    DebugValue,
)];

/// A recorded value, comparable in asserts.
#[derive(Debug, Clone, PartialEq)]
enum Value {
    Counter(u64),
    Gauge(f64),
    Histogram(Vec<f64>),
}

fn find(
    snapshot: &Snapshot,
    kind: MetricKind,
    name: &str,
    labels: &[(&str, &str)],
) -> Option<Value> {
    snapshot.iter().find_map(|(key, _, _, value)| {
        let k = key.key();
        let matches = key.kind() == kind
            && k.name() == name
            && labels
                .iter()
                .all(|(lk, lv)| k.labels().any(|l| l.key() == *lk && l.value() == *lv));
        matches.then(|| match value {
            DebugValue::Counter(v) => Value::Counter(*v),
            DebugValue::Gauge(v) => Value::Gauge(v.into_inner()),
            DebugValue::Histogram(v) => {
                Value::Histogram(v.iter().map(|x| x.into_inner()).collect())
            }
        })
    })
}

#[test]
fn metrics_count_in_flight_queue_and_rejections() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _guard = metrics::set_default_local_recorder(&recorder);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();

    rt.block_on(async {
        let layer = ConcurrencyLimitLayer::builder()
            .max_in_flight(1)
            .max_queued(1)
            .max_queue_wait(Duration::from_secs(1))
            .build()
            .unwrap();
        let (mock, mut handle) = tower_test::mock::pair::<RequestMeta, String>();
        let mut svc = layer.layer(mock);

        let mut f1 = task::spawn(svc.call(RequestMeta::new()));
        assert_pending!(f1.poll());
        let mut f2 = task::spawn(svc.call(RequestMeta::new().priority(Priority::LOW)));
        assert_pending!(f2.poll());
        let mut f3 = task::spawn(svc.call(RequestMeta::new().priority(Priority::HIGH)));
        let err: BoxError = assert_ready_err!(f3.poll());
        assert!(matches!(
            err.downcast_ref::<Error>(),
            Some(Error::Overloaded { .. })
        ));

        let snapshot = snapshotter.snapshot().into_vec();
        let layer_label = [("layer", "concurrency")];
        assert_eq!(
            find(
                &snapshot,
                MetricKind::Gauge,
                "llm_sluice_in_flight",
                &layer_label
            ),
            Some(Value::Gauge(1.0))
        );
        assert_eq!(
            find(
                &snapshot,
                MetricKind::Gauge,
                "llm_sluice_queue_depth",
                &layer_label
            ),
            Some(Value::Gauge(1.0))
        );
        let shed = [
            ("layer", "concurrency"),
            ("reason", "queue_full"),
            ("priority", "high"),
        ];
        assert_eq!(
            find(
                &snapshot,
                MetricKind::Counter,
                "llm_sluice_rejected_total",
                &shed
            ),
            Some(Value::Counter(1))
        );
        assert_eq!(
            find(
                &snapshot,
                MetricKind::Histogram,
                "llm_sluice_queue_wait_seconds",
                &layer_label
            ),
            Some(Value::Histogram(vec![0.0])),
            "the fast path records a zero wait"
        );

        tokio::time::advance(Duration::from_secs(1)).await;
        let err: BoxError = assert_ready_err!(f2.poll());
        assert!(matches!(
            err.downcast_ref::<Error>(),
            Some(Error::QueueTimeout { .. })
        ));

        match handle.poll_request() {
            std::task::Poll::Ready(Some((_, tx))) => tx.send_response("ok".into()),
            _ => panic!("expected a request"),
        }
        assert_ready_ok!(f1.poll());
    });

    let snapshot = snapshotter.snapshot().into_vec();
    let rejected = |reason: &str, priority: &str| {
        find(
            &snapshot,
            MetricKind::Counter,
            "llm_sluice_rejected_total",
            &[
                ("layer", "concurrency"),
                ("reason", reason),
                ("priority", priority),
            ],
        )
    };
    // A debugging snapshot drains every value (counters, histograms, and
    // gauges too, to 0): the shed request and the fast path's zero wait were
    // in the first one, and the gauges now show the changes since then.
    assert_eq!(rejected("queue_full", "high"), Some(Value::Counter(0)));
    assert_eq!(rejected("queue_timeout", "low"), Some(Value::Counter(1)));
    assert_eq!(rejected("deadline", "normal"), Some(Value::Counter(0)));
    let layer_label = [("layer", "concurrency")];
    assert_eq!(
        find(
            &snapshot,
            MetricKind::Gauge,
            "llm_sluice_in_flight",
            &layer_label
        ),
        Some(Value::Gauge(-1.0)),
        "the one permit was released: back to 0 in total"
    );
    assert_eq!(
        find(
            &snapshot,
            MetricKind::Gauge,
            "llm_sluice_queue_depth",
            &layer_label
        ),
        Some(Value::Gauge(-1.0)),
        "the one waiter left: back to 0 in total"
    );
    match find(
        &snapshot,
        MetricKind::Histogram,
        "llm_sluice_queue_wait_seconds",
        &layer_label,
    ) {
        Some(Value::Histogram(mut values)) => {
            values.sort_by(f64::total_cmp);
            assert_eq!(values, [1.0], "the timed-out wait");
        }
        other => panic!("no queue wait histogram: {other:?}"),
    }
}
