//! `EstimateLayer`: what it inserts into requests and responses, the body
//! it rewrites, and what it records.

use std::sync::{Arc, Mutex};

use http::header::CONTENT_LENGTH;
use tower::{Layer, Service, ServiceExt};

use super::*;

/// What the client saw of one request.
#[derive(Debug, Clone)]
struct Seen {
    body: Bytes,
    estimate: Option<Estimate>,
    token_estimate: u64,
    usage_added: bool,
    content_length: Option<String>,
}

/// What the client saw, request by request.
type Log = Arc<Mutex<Vec<Seen>>>;

/// A client that remembers each request and answers with `usage` in the
/// response's extensions, if given.
fn client(
    usage: Option<Usage>,
) -> (
    impl Service<http::Request<Bytes>, Response = http::Response<()>, Error = tower::BoxError> + Clone,
    Log,
) {
    let seen = Log::default();
    let log = seen.clone();
    let svc = tower::service_fn(move |req: http::Request<Bytes>| {
        log.lock().unwrap().push(Seen {
            body: req.body().clone(),
            estimate: req.extensions().get::<Estimate>().copied(),
            token_estimate: req.token_estimate(),
            usage_added: req.extensions().get::<UsageAdded>().is_some(),
            content_length: req
                .headers()
                .get(CONTENT_LENGTH)
                .map(|v| v.to_str().unwrap().to_owned()),
        });
        let mut res = http::Response::new(());
        if let Some(usage) = usage {
            res.extensions_mut().insert(usage);
        }
        async move { Ok::<_, tower::BoxError>(res) }
    });
    (svc, seen)
}

fn post(path: &str, body: &str) -> http::Request<Bytes> {
    http::Request::post(path)
        .header(CONTENT_LENGTH, body.len())
        .body(Bytes::from(body.to_owned()))
        .unwrap()
}

const STREAMED: &str = r#"{"model": "gpt-4o", "stream": true, "max_tokens": 10, "messages": [{"role": "user", "content": "abcd"}]}"#;

#[tokio::test]
async fn inserts_the_estimate_and_leaves_the_body_by_default() {
    let (client, seen) = client(None);
    let mut svc = EstimateLayer::new().layer(client);
    let res = svc
        .ready()
        .await
        .unwrap()
        .call(post("/v1/chat/completions", STREAMED))
        .await
        .unwrap();
    let seen = seen.lock().unwrap()[0].clone();
    let expected = Estimate::new(1 + 4 + 3, 10);
    assert_eq!(seen.estimate, Some(expected));
    assert_eq!(seen.token_estimate, expected.total);
    assert_eq!(seen.body, STREAMED);
    assert!(!seen.usage_added);
    assert!(res.extensions().get::<UsageAdded>().is_none());
    let feedback = res.extensions().get::<EstimateFeedback>().unwrap();
    assert_eq!(feedback.estimate(), expected);
}

#[tokio::test]
async fn include_usage_rewrites_streamed_chat_requests_and_marks_them() {
    let (client, seen) = client(None);
    let layer = EstimateLayer::builder()
        .include_usage(true)
        .build()
        .unwrap();
    let mut svc = layer.layer(client);

    let res = svc
        .ready()
        .await
        .unwrap()
        .call(post("/v1/chat/completions", STREAMED))
        .await
        .unwrap();
    let first = seen.lock().unwrap()[0].clone();
    let expected = STREAMED.replacen("}]}", r#"}],"stream_options":{"include_usage":true}}"#, 1);
    assert_eq!(first.body, expected);
    assert_eq!(first.content_length, Some(expected.len().to_string()));
    assert!(first.usage_added);
    assert!(res.extensions().get::<UsageAdded>().is_some());
    // The estimate is the body's, not changed by the option.
    assert_eq!(first.estimate, Some(Estimate::new(8, 10)));

    // The caller said no; another API; not streamed: untouched, unmarked.
    let said_no = r#"{"stream": true, "stream_options": {"include_usage": false}}"#;
    let messages = r#"{"stream": true, "max_tokens": 10, "messages": []}"#;
    let not_streamed = r#"{"messages": []}"#;
    for (path, body) in [
        ("/v1/chat/completions", said_no),
        ("/v1/messages", messages),
        ("/v1/responses", messages),
        ("/v1/chat/completions", not_streamed),
        ("/v1/chat/completions", "not json"),
    ] {
        let res = svc
            .ready()
            .await
            .unwrap()
            .call(post(path, body))
            .await
            .unwrap();
        let last = seen.lock().unwrap().last().unwrap().clone();
        assert_eq!(last.body, body, "{path} {body}");
        assert_eq!(last.content_length, Some(body.len().to_string()));
        assert!(!last.usage_added);
        assert!(res.extensions().get::<UsageAdded>().is_none());
    }
}

#[tokio::test]
async fn a_vec_body_works_too_and_no_body_costs_nothing() {
    let client = tower::service_fn(|req: http::Request<Vec<u8>>| async move {
        Ok::<_, tower::BoxError>(http::Response::new(req.token_estimate()))
    });
    let mut svc = EstimateLayer::new().layer(client);
    for (body, tokens) in [(&b"not json"[..], 2 + 256), (b"", 0)] {
        let req = http::Request::new(body.to_vec());
        let res = svc.ready().await.unwrap().call(req).await.unwrap();
        assert_eq!(*res.body(), tokens);
    }
    // A request that carried an estimate of its own gets the layer's.
    let mut req = http::Request::new(b"{}".to_vec());
    req.extensions_mut().insert(TokenEstimate(1_000_000));
    let res = svc.ready().await.unwrap().call(req).await.unwrap();
    assert_eq!(*res.body(), 3 + 256);
}

#[tokio::test]
async fn usage_in_the_response_is_recorded_once_and_teaches_the_history() {
    let history = CompletionHistory::builder().min_samples(1).build().unwrap();
    let layer = EstimateLayer::builder()
        .estimator(ChatEstimator::new().history(history.clone()))
        .build()
        .unwrap();
    let accuracy = layer.accuracy().clone();
    let (client, _) = client(Some(Usage::new(9, 90)));
    let mut svc = layer.layer(client);

    // No maximum, 3 choices: the history learns 90 / 3 per choice.
    let body = r#"{"model": "m", "n": 3, "messages": [{"role": "user", "content": "abcd"}]}"#;
    let res = svc
        .ready()
        .await
        .unwrap()
        .call(post("/v1/chat/completions", body))
        .await
        .unwrap();
    let feedback = res.extensions().get::<EstimateFeedback>().unwrap();
    assert!(feedback.learns());
    assert!(
        !feedback.record(&Usage::new(1, 1)),
        "recorded by the layer already"
    );
    assert_eq!(history.quantile("m"), Some(30));
    let s = accuracy.summary();
    assert_eq!(s.requests, 1);
    assert_eq!((s.input.estimated, s.input.actual), (8, 9));
    assert_eq!((s.output.estimated, s.output.actual), (3 * 256, 90));
    assert_eq!(s.input.under_estimated, 1);

    // With a maximum: recorded, but the history does not learn from it.
    let body = r#"{"model": "m", "max_tokens": 5, "messages": []}"#;
    let res = svc
        .ready()
        .await
        .unwrap()
        .call(post("/v1/chat/completions", body))
        .await
        .unwrap();
    assert!(!res.extensions().get::<EstimateFeedback>().unwrap().learns());
    assert_eq!(history.samples("m"), 1);
    assert_eq!(accuracy.summary().requests, 2);
}

#[tokio::test]
async fn usage_reported_later_goes_through_the_feedback() {
    let layer = EstimateLayer::new();
    let accuracy = layer.accuracy().clone();
    let (client, _) = client(None);
    let mut svc = layer.layer(client);
    let res = svc
        .ready()
        .await
        .unwrap()
        .call(post("/v1/chat/completions", STREAMED))
        .await
        .unwrap();
    assert_eq!(accuracy.summary().requests, 0);
    // The stream ends; its usage chunk is read; the feedback is told.
    let feedback = res.extensions().get::<EstimateFeedback>().unwrap().clone();
    drop(res);
    assert!(feedback.record(&Usage::new(8, 5)));
    assert!(!feedback.record(&Usage::new(8, 5)));
    let s = accuracy.summary();
    assert_eq!(s.requests, 1);
    assert_eq!(s.total.ratio(), Some(13.0 / 18.0));
}

#[cfg(feature = "metrics")]
#[test]
fn the_layer_records_the_ratio_histogram() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};

    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();

    let layer = EstimateLayer::new();
    let (client, _) = client(Some(Usage::new(4, 5)));
    let mut svc = layer.layer(client);
    rt.block_on(async {
        svc.ready()
            .await
            .unwrap()
            .call(post("/v1/chat/completions", STREAMED))
            .await
            .unwrap();
    });

    let mut ratios = std::collections::BTreeMap::new();
    for (key, unit, _, value) in snapshotter.snapshot().into_vec() {
        let (_, key) = key.into_parts();
        assert_eq!(key.name(), "llm_sluice_estimate_ratio");
        assert_eq!(unit, None, "a ratio has no unit");
        let labels: Vec<(String, String)> = key
            .labels()
            .map(|l| (l.key().to_owned(), l.value().to_owned()))
            .collect();
        assert_eq!(labels[0], ("layer".into(), "estimate".into()));
        let DebugValue::Histogram(values) = value else {
            panic!("not a histogram");
        };
        let values: Vec<f64> = values.into_iter().map(|v| v.into_inner()).collect();
        ratios.insert(labels[1].1.clone(), values);
    }
    // Estimate: 8 in, 10 out. Usage: 4 in, 5 out.
    assert_eq!(ratios["input"], [0.5]);
    assert_eq!(ratios["output"], [0.5]);
    assert_eq!(ratios["total"], [0.5]);
    assert_eq!(ratios.len(), 3);
}

#[test]
fn builder_settings_are_checked() {
    assert_eq!(
        EstimateLayer::builder()
            .metrics_name("")
            .build()
            .unwrap_err()
            .field(),
        "metrics_name"
    );
    let shared = llm_sluice::estimate::EstimateAccuracy::new();
    assert_eq!(
        EstimateLayer::builder()
            .accuracy(shared)
            .metrics_name("x")
            .build()
            .unwrap_err()
            .field(),
        "metrics_name"
    );
}
