//! The boundary between the queue and the window: a request is counted when
//! it is sent, waiting for room holds no permit, refusals that the window
//! can foresee come at once, and nothing is held by a request dropped in
//! between.

use std::time::Duration;

use llm_sluice::request::RequestMeta;
use llm_sluice::stack::{LlmStack, StackConfig};
use llm_sluice::{Error, PartitionKey, Priority};
use tokio::time::{advance, timeout, Instant};
use tower::{BoxError, ServiceBuilder, ServiceExt};
use tower_test::mock;

use super::{own, small};

fn keyed(key: &str) -> RequestMeta {
    RequestMeta::new()
        .tokens(10)
        .partition(PartitionKey::new(key))
}

fn rate_limited(err: &BoxError) -> Duration {
    match own(err) {
        Some(Error::RateLimited {
            retry_after: Some(delay),
        }) => *delay,
        other => panic!("not RateLimited with a delay: {other:?} ({err})"),
    }
}

#[tokio::test(start_paused = true)]
async fn the_window_dates_a_request_when_it_is_sent_not_when_it_queues() {
    // rpm 2, one permit. The second request queues for 5 s behind the
    // first and is sent at t=5: its entry must last until t=65, as the
    // server's does. Dated at t=0, a fourth request would go at t=62.
    let mut config = small();
    config.rate.guard_band = Some(Duration::ZERO); // exact figures
    config.rate.requests_per_minute = Some(2);
    let stack = LlmStack::from_config(&config).unwrap();
    let (inner, mut upstream) = mock::pair::<RequestMeta, &'static str>();
    let svc = ServiceBuilder::new().layer(stack).service(inner);
    let t0 = Instant::now();

    let first = tokio::spawn(svc.clone().oneshot(keyed("k")));
    let (_, first_reply) = upstream.next_request().await.unwrap();
    let second = tokio::spawn(svc.clone().oneshot(keyed("k")));
    tokio::task::yield_now().await;
    advance(Duration::from_secs(5)).await;
    first_reply.send_response("one");
    assert_eq!(first.await.unwrap().unwrap(), "one");
    let (_, second_reply) = upstream.next_request().await.unwrap();
    assert_eq!(Instant::now() - t0, Duration::from_secs(5));
    second_reply.send_response("two");
    assert_eq!(second.await.unwrap().unwrap(), "two");

    advance(Duration::from_secs(57)).await; // t=62: the first has expired
    let third = tokio::spawn(svc.clone().oneshot(keyed("k")));
    let (_, third_reply) = upstream.next_request().await.unwrap();
    third_reply.send_response("three");
    assert_eq!(third.await.unwrap().unwrap(), "three");
    let fourth = tokio::spawn(svc.clone().oneshot(keyed("k")));
    assert!(
        timeout(Duration::from_secs(2), upstream.next_request())
            .await
            .is_err(),
        "sent before the second request's entry expired"
    );
    let (_, fourth_reply) = upstream.next_request().await.unwrap();
    assert_eq!(Instant::now() - t0, Duration::from_secs(65));
    fourth_reply.send_response("four");
    assert_eq!(fourth.await.unwrap().unwrap(), "four");
}

#[tokio::test(start_paused = true)]
async fn a_flooding_key_waits_on_its_window_while_another_keys_requests_pass() {
    // one permit for everyone; the flooding key's budget is spent, and its
    // requests wait for room without holding it
    let mut config = small();
    config.rate.guard_band = Some(Duration::ZERO); // exact figures
    config.rate.requests_per_minute = Some(2);
    config.rate.max_wait = Some(Duration::from_secs(120));
    let stack = LlmStack::from_config(&config).unwrap();
    let rate = stack.rate_handle().unwrap();
    let concurrency = stack.concurrency().unwrap().clone();
    let (inner, mut upstream) = mock::pair::<RequestMeta, &'static str>();
    let svc = ServiceBuilder::new().layer(stack).service(inner);
    let t0 = Instant::now();

    for _ in 0..2 {
        let call = tokio::spawn(svc.clone().oneshot(keyed("flood")));
        let (_, reply) = upstream.next_request().await.unwrap();
        reply.send_response("ok");
        call.await.unwrap().unwrap();
    }
    let flood: Vec<_> = (0..5)
        .map(|_| tokio::spawn(svc.clone().oneshot(keyed("flood"))))
        .collect();
    tokio::task::yield_now().await;
    assert_eq!(rate.stats().waiting, 5);
    let stats = concurrency.stats().unwrap();
    assert_eq!((stats.in_flight, stats.queued), (0, 0), "{stats:?}");

    for i in 0..3 {
        // a key of its own each time: within its own budget
        let key = format!("other-{i}");
        let call = tokio::spawn(svc.clone().oneshot(keyed(&key)));
        let (request, reply) = upstream.next_request().await.unwrap();
        assert_eq!(request.partition.unwrap().as_str(), key);
        assert_eq!(
            Instant::now() - t0,
            Duration::from_secs(20 * i),
            "sent at once"
        );
        reply.send_response("ok");
        call.await.unwrap().unwrap();
        advance(Duration::from_secs(20)).await;
    }
    // t=60: the flooding key's window has room for two again
    for _ in 0..2 {
        let (request, reply) = upstream.next_request().await.unwrap();
        assert_eq!(request.partition.unwrap().as_str(), "flood");
        assert_eq!(Instant::now() - t0, Duration::from_secs(60));
        reply.send_response("ok");
    }
    assert_eq!(rate.stats().waiting, 3);
    for call in flood {
        call.abort();
    }
}

#[tokio::test(start_paused = true)]
async fn a_request_larger_than_a_budget_fails_before_it_queues() {
    type Set = fn(&mut StackConfig);
    let budgets: [(&str, Set); 5] = [
        ("tokens_per_minute", |c| {
            c.rate.tokens_per_minute = Some(1_000)
        }),
        ("input_tokens_per_minute", |c| {
            c.rate.input_tokens_per_minute = Some(1_000)
        }),
        ("output_tokens_per_minute", |c| {
            c.rate.output_tokens_per_minute = Some(1_000)
        }),
        ("token_burst", |c| {
            c.rate.tokens_per_minute = Some(100_000);
            c.rate.token_burst = Some(1_000);
        }),
        ("global_tokens_per_minute", |c| {
            c.rate.global_tokens_per_minute = Some(1_000)
        }),
    ];
    for (name, set) in budgets {
        let mut config = small();
        set(&mut config);
        let stack = LlmStack::from_config(&config).unwrap();
        let (inner, mut upstream) = mock::pair::<RequestMeta, &'static str>();
        let svc = ServiceBuilder::new().layer(stack).service(inner);
        // the only permit is taken
        let busy = tokio::spawn(svc.clone().oneshot(keyed("k")));
        let (_, _reply) = upstream.next_request().await.unwrap();
        let big = RequestMeta::new()
            .tokens(5_000)
            .partition(PartitionKey::new("k"));
        let t = Instant::now();
        let err = svc.clone().oneshot(big).await.unwrap_err();
        assert_eq!(Instant::now(), t, "{name}: refused at once");
        assert!(
            matches!(
                own(&err),
                Some(Error::RequestTooLarge {
                    tokens: 5_000,
                    limit: 1_000
                })
            ),
            "{name}: {err:?}"
        );
        busy.abort();
    }
}

#[tokio::test(start_paused = true)]
async fn a_refusal_the_window_foresees_is_immediate_and_holds_no_permit() {
    // rpm 1, max_wait 5 s: the next room is a minute away
    let mut config = small();
    config.rate.guard_band = Some(Duration::ZERO); // exact figures
    config.rate.requests_per_minute = Some(1);
    config.rate.max_wait = Some(Duration::from_secs(5));
    let stack = LlmStack::from_config(&config).unwrap();
    let concurrency = stack.concurrency().unwrap().clone();
    let (inner, mut upstream) = mock::pair::<RequestMeta, &'static str>();
    let svc = ServiceBuilder::new().layer(stack).service(inner);
    let first = tokio::spawn(svc.clone().oneshot(keyed("k")));
    let (_, reply) = upstream.next_request().await.unwrap();
    reply.send_response("ok");
    first.await.unwrap().unwrap();
    advance(Duration::from_secs(10)).await;

    let t = Instant::now();
    let err = svc.clone().oneshot(keyed("k")).await.unwrap_err();
    assert_eq!(Instant::now(), t, "refused without waiting");
    assert_eq!(rate_limited(&err), Duration::from_secs(50));
    assert_eq!(concurrency.stats().unwrap().in_flight, 0);

    // a deadline before the room: the same, with the same delay
    let deadline = Instant::now() + Duration::from_secs(2);
    let err = svc
        .clone()
        .oneshot(keyed("k").deadline(deadline))
        .await
        .unwrap_err();
    assert_eq!(Instant::now(), t);
    assert_eq!(rate_limited(&err), Duration::from_secs(50));
}

#[tokio::test(start_paused = true)]
async fn order_within_a_priority_is_kept_across_both_stages() {
    // rpm 3, one permit: the first is sent, two queue for the permit
    // (admitted by the window), the rest wait for the window; all leave in
    // the order they came, priority first
    let mut config = small();
    config.rate.requests_per_minute = Some(3);
    config.rate.max_wait = Some(Duration::from_secs(600));
    config.concurrency.max_queue_wait = Duration::from_secs(600);
    let stack = LlmStack::from_config(&config).unwrap();
    let (inner, mut upstream) = mock::pair::<RequestMeta, &'static str>();
    let svc = ServiceBuilder::new().layer(stack).service(inner);
    let priorities = [
        Priority::NORMAL,
        Priority::NORMAL,
        Priority::NORMAL,
        Priority::NORMAL,
        Priority::HIGH,
        Priority::NORMAL,
    ];
    let mut calls = Vec::new();
    for (i, priority) in priorities.into_iter().enumerate() {
        let request = keyed("k").priority(priority).tokens(i as u64);
        calls.push(tokio::spawn(svc.clone().oneshot(request)));
        tokio::task::yield_now().await;
        advance(Duration::from_millis(10)).await;
    }
    let mut sent = Vec::new();
    for _ in 0..priorities.len() {
        let (request, reply) = upstream.next_request().await.unwrap();
        sent.push(request.tokens);
        reply.send_response("ok");
    }
    // 0 is sent at once, 1 and 2 hold the window's room before 4 came
    assert_eq!(sent, [0, 1, 2, 4, 3, 5]);
    for call in calls {
        call.await.unwrap().unwrap();
    }
}

#[tokio::test(start_paused = true)]
async fn a_request_dropped_between_the_stages_gives_its_room_back() {
    let mut config = small();
    config.rate.requests_per_minute = Some(2);
    let stack = LlmStack::from_config(&config).unwrap();
    let rate = stack.rate_handle().unwrap();
    let (inner, mut upstream) = mock::pair::<RequestMeta, &'static str>();
    let svc = ServiceBuilder::new().layer(stack).service(inner);
    let first = tokio::spawn(svc.clone().oneshot(keyed("k")));
    let (_, reply) = upstream.next_request().await.unwrap();
    // admitted by the window, queued for the permit, then dropped
    let second = tokio::spawn(svc.clone().oneshot(keyed("k")));
    tokio::task::yield_now().await;
    second.abort();
    let _ = second.await;
    // its room is free again: the third is admitted by the window (and
    // queues for the permit) instead of waiting for room
    let third = tokio::spawn(svc.clone().oneshot(keyed("k")));
    tokio::task::yield_now().await;
    assert_eq!(rate.stats().waiting, 0);
    reply.send_response("one");
    first.await.unwrap().unwrap();
    let (_, reply) = upstream.next_request().await.unwrap();
    reply.send_response("three");
    assert_eq!(third.await.unwrap().unwrap(), "three");
}

mod prop {
    //! The two stages under random traffic: random keys, sizes, priorities
    //! and upstream latencies, and callers that give up at random moments.

    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};

    use llm_sluice::concurrency::ConcurrencyLimitLayer;
    use llm_sluice::rate::{DispatchLayer, RateLimitLayer};
    use proptest::prelude::*;
    use tower::Layer;

    use super::*;

    #[derive(Debug, Clone)]
    struct Call {
        at_ms: u64,
        tokens: u64,
        key: u8,
        priority: u8,
        /// Gives up after this long, if set.
        give_up_ms: Option<u64>,
    }

    fn call() -> impl Strategy<Value = Call> {
        (
            0u64..20_000,
            0u64..300,
            0u8..3,
            any::<u8>(),
            proptest::option::weighted(0.3, 0u64..8_000),
        )
            .prop_map(|(at_ms, tokens, key, priority, give_up_ms)| Call {
                at_ms,
                tokens,
                key,
                priority,
                give_up_ms,
            })
    }

    /// What reached the upstream: when, whose, how many tokens.
    type Sent = Arc<Mutex<Vec<(Instant, String, u64)>>>;

    fn request(key: &str, tokens: u64) -> RequestMeta {
        RequestMeta::new()
            .tokens(tokens)
            .partition(PartitionKey::new(key))
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]

        #[test]
        fn no_window_over_its_limit_and_nothing_held_at_the_end(
            rpm in 1u64..6,
            tpm in 300u64..1_000,
            in_flight in 1usize..4,
            window_ms in 2_000u64..10_000,
            calls in proptest::collection::vec(call(), 1..50),
        ) {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .start_paused(true)
                .build()
                .unwrap();
            let window = Duration::from_millis(window_ms);
            let rate = RateLimitLayer::builder()
                .window(window)
                .requests_per_minute(rpm)
                .tokens_per_minute(tpm)
                .max_wait(window * 2)
                .build()
                .unwrap();
            let concurrency = ConcurrencyLimitLayer::builder()
                .max_in_flight(in_flight)
                .max_queued(8)
                .max_queue_wait(Duration::from_secs(5))
                .build_shared()
                .unwrap();
            let sent: Sent = Arc::default();
            let calls_made = calls.len();
            let (ended, refused_later) = rt.block_on(async {
                let log = sent.clone();
                // the upstream takes 10 ms a token
                let upstream = tower::service_fn(move |r: RequestMeta| {
                    let key = r.partition.as_ref().map_or(String::new(), |k| k.as_str().to_owned());
                    log.lock().unwrap().push((Instant::now(), key, r.tokens));
                    async move {
                        tokio::time::sleep(Duration::from_millis(10 * r.tokens)).await;
                        Ok::<_, BoxError>(())
                    }
                });
                let svc = ServiceBuilder::new()
                    .layer(rate.admission())
                    .layer(concurrency.clone())
                    .layer(DispatchLayer::new())
                    .service(upstream);
                let t0 = Instant::now();
                // the callers, polled together in this task (not spawned:
                // nothing here needs to be `Send`)
                let callers = calls.into_iter().map(|c| {
                    let svc = svc.clone();
                    async move {
                        tokio::time::sleep_until(t0 + Duration::from_millis(c.at_ms)).await;
                        let call = svc.oneshot(
                            request(&format!("k{}", c.key), c.tokens)
                                .priority(Priority::new(c.priority)),
                        );
                        match c.give_up_ms {
                            Some(ms) => {
                                let _ = timeout(Duration::from_millis(ms), call).await;
                            }
                            None => {
                                let _ = call.await;
                            }
                        }
                    }
                });
                // every caller ends (a lost wake-up would hang here)
                let ended = timeout(
                    Duration::from_secs(3_600),
                    futures::future::join_all(callers),
                )
                .await
                .map_or(0, |ended| ended.len());
                // every entry leaves the window; then each key's whole
                // budget is there again, at once: no reservation leaked
                tokio::time::sleep(window * 2).await;
                let probe = rate.layer(tower::service_fn(|_: RequestMeta| async {
                    Ok::<_, BoxError>(())
                }));
                let mut refused_later = 0;
                for key in ["k0", "k1", "k2"] {
                    for _ in 0..rpm {
                        let call = probe.clone().oneshot(request(key, tpm / rpm));
                        if !matches!(timeout(Duration::ZERO, call).await, Ok(Ok(()))) {
                            refused_later += 1;
                        }
                    }
                }
                (ended, refused_later)
            });
            prop_assert_eq!(ended, calls_made, "a caller never ended");
            prop_assert_eq!(refused_later, 0, "a reservation outlived its request");
            let sent = sent.lock().unwrap().clone();
            // no sliding window of any key over its limits, by send time
            let mut by_key: HashMap<&str, Vec<(Instant, u64)>> = HashMap::new();
            for (at, key, tokens) in &sent {
                by_key.entry(key.as_str()).or_default().push((*at, *tokens));
            }
            for (key, sends) in &by_key {
                for (i, &(t, _)) in sends.iter().enumerate() {
                    let live = sends[..=i].iter().filter(|(s, _)| *s + window > t);
                    let (requests, tokens) = live.fold((0, 0), |(r, k), (_, x)| (r + 1, k + x));
                    prop_assert!(requests <= rpm, "{key}: {requests} requests > {rpm}");
                    prop_assert!(tokens <= tpm, "{key}: {tokens} tokens > {tpm}");
                }
            }
            let stats = concurrency.stats().unwrap();
            prop_assert_eq!((stats.in_flight, stats.queued), (0, 0));
            prop_assert_eq!(rate.handle().stats().waiting, 0);
        }
    }
}
