//! Every request is counted exactly once, whatever mix of outcomes and
//! dropped futures.

use std::time::Duration;

use llm_sluice::stats::Stats;
use llm_sluice::Error;
use proptest::prelude::*;
use tokio_test::task;
use tower::{BoxError, Layer, Service};

#[derive(Debug, Clone, Copy)]
enum Step {
    Ok,
    Fail,
    Shed,
    /// Dropped before it finishes.
    Drop,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        Just(Step::Ok),
        Just(Step::Fail),
        Just(Step::Shed),
        Just(Step::Drop)
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn each_request_is_counted_once(steps in proptest::collection::vec(step(), 0..60)) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        rt.block_on(async {
            let stats = Stats::new();
            let inner = tower::service_fn(|step: Step| async move {
                tokio::time::sleep(Duration::from_millis(10)).await;
                match step {
                    Step::Ok | Step::Drop => Ok::<_, BoxError>("ok".to_owned()),
                    Step::Fail => Err("reset".into()),
                    Step::Shed => Err(Box::new(Error::Overloaded { queued: 1 }) as BoxError),
                }
            });
            let mut svc = stats.layer().layer(inner);
            for &s in &steps {
                let mut fut = task::spawn(svc.call(s));
                if matches!(s, Step::Drop) {
                    let _ = fut.poll();
                    drop(fut);
                } else {
                    let _ = fut.await;
                }
            }
            let count = |want: fn(&Step) -> bool| steps.iter().filter(|s| want(s)).count() as u64;
            let snap = stats.snapshot();
            assert_eq!(snap.total, steps.len() as u64);
            assert_eq!(snap.outcomes.success, count(|s| matches!(s, Step::Ok)));
            assert_eq!(snap.outcomes.transport, count(|s| matches!(s, Step::Fail)));
            assert_eq!(snap.rejected.queue_full, count(|s| matches!(s, Step::Shed)));
            assert_eq!(snap.outcomes.cancelled, count(|s| matches!(s, Step::Drop)));
            assert_eq!(snap.end_to_end.count, snap.total - snap.outcomes.cancelled);
        });
    }
}
