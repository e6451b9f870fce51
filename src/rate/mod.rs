//! Sliding-window RPM/TPM rate limiting: exact windows, token reservations
//! counted the way the provider counts them, per-partition budgets, and
//! feedback from the server, limits learned from it included.
//!
//! ```
//! use std::time::Duration;
//! use llm_sluice::rate::RateLimitLayer;
//! use llm_sluice::request::RequestMeta;
//! use tower::{Service, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), tower::BoxError> {
//! let layer = RateLimitLayer::builder()
//!     .requests_per_minute(500)
//!     .tokens_per_minute(90_000)
//!     .max_wait(Duration::from_secs(10))
//!     .build()?;
//! let handle = layer.handle();
//! # let client = tower::service_fn(|_req: RequestMeta| async { Ok::<_, tower::BoxError>(()) });
//! let mut svc = ServiceBuilder::new().layer(layer).service(client);
//!
//! // one request of ~1,200 tokens for tenant-a
//! let req = RequestMeta::new().tokens(1_200).partition("tenant-a");
//! svc.ready().await?.call(req).await?;
//! assert_eq!(handle.stats().admitted, 1);
//! # Ok(()) }
//! ```
//!
//! Requests say what they spend through [`LlmRequest`](crate::LlmRequest):
//! a token estimate, a [`PartitionKey`](crate::PartitionKey), a priority
//! and a deadline.
//!
//! # Algorithm: an exact sliding log
//!
//! Each partition keeps one log of entries, one per reservation still inside
//! the window, each holding its timestamp and its amount in every budget,
//! with a running sum per budget. A request is admitted at `t` only if, in
//! every budget it touches, the entries of `(t - W - g, t]` plus its own
//! amount stay within the limit, where `W` is the window and `g` its
//! [guard band](#the-guard-band-at-the-window-edge) (250 ms by default).
//! Old entries leave from the front as time passes, so admission is O(1)
//! amortized (each entry is pushed once and passed once).
//!
//! This bounds **every** interval of length `W + g` (so every interval of
//! length `W`), not only those ending at an admission: an interval's
//! content is that of the interval ending at its last admission, which was
//! checked. There are no boundary bursts (the fixed window of
//! `tower::limit::RateLimit` admits 2× its limit across a window edge) and
//! no approximation that can overshoot.
//!
//! The running sums are exact: each is the sum of the amounts its entries
//! hold, never past `u64::MAX` (a sum that would pass it does not fit, even
//! under a limit of `u64::MAX`), so a log whose entries have all expired
//! holds zero in every budget.
//!
//! Why not the alternatives:
//!
//! - **GCRA / token bucket** (`governor`): one number of state and very fast,
//!   but it promises a *bucket*: after an idle period it allows a full burst,
//!   and the requests of any `W` can reach limit + burst. A provider that
//!   meters a true 60 s window sees no more than its limit only if the
//!   bucket is made smaller than the limit, which wastes budget.
//! - **Bucketed counters** (a sliding window approximated by sub-window
//!   counts, or the "previous window × overlap" estimate): bounded memory,
//!   but approximate: depending on where in the bucket the requests fell,
//!   they over- or under-count, and over-admit by up to a bucket's worth.
//!
//! What exactness costs in time: per admission, a clock read, the
//! partition's lock and one appended entry. `benches/rate.rs` times that
//! bare floor (`ref_exact_log_floor_*`, no service around it) beside
//! governor's GCRA check, which updates one atomic word. On the 2-core VM
//! this crate is measured on, the floor alone took 102-105 ns unkeyed (half
//! of it the clock read) and 1.8x-2.9x governor's keyed check over 10,000
//! keys; the layer costs about twice the floor, for what it keeps beyond a
//! sum: the reservation ticket that usage corrects later, the waiting
//! queue, the server's feedback, the metrics and the response future.
//!
//! The log costs one 32-byte entry per admission inside the window, whatever
//! budgets are set (bounded by the request limit when one is set): the
//! timestamp once, with the request count in its low bit, then the total,
//! input and output tokens. It is a ring buffer that doubles when full and
//! never allocates per admission. It also gives what the others cannot:
//! each reservation has an identity (a sequence number, its place in the
//! ring) so it can be **corrected at its original timestamp** in O(1) when
//! the actual usage is known.
//!
//! An admission that fits is one pass: the whole-window budgets expire
//! their old entries together (they share one start), each burst bound
//! expires from its own start over its shorter span, every budget compares
//! its sum, then one entry is written.
//!
//! The window state is pure (`now` is an argument) and lives behind the
//! [`RateStore`] seam; [`MemoryStore`] is the default.
//!
//! # Budgets
//!
//! Per partition: requests, tokens, and optionally input and output tokens
//! (for providers that meter them apart), plus burst bounds. Optionally the
//! same set again as a **global** budget over all partitions (an org-wide
//! TPM above per-key TPMs). A request is admitted only if every budget it
//! touches, in its partition and globally, has room; then it reserves in all
//! of them atomically (under the partition lock, then the global one).
//!
//! An admission that fits reads the clock once and takes only those locks:
//! the limits are read without a lock from one copy per limiter (a sequence
//! lock over atomic words, which [`RateLimitHandle::set_limit`] writes), so
//! they stay in cache however many partitions there are. Requests without a
//! key touch no reference count.
//!
//! # Memory and cache lines per partition
//!
//! A partition costs about 300 bytes while it lives: its slot (lock, queue
//! pointer, admission count, window head and a cold tail; 216 bytes with
//! [`MemoryStore`]) with the `Arc`'s counts, and its log's buffer, which
//! starts at two entries (one cache line) and doubles while the window
//! holds more. What only some partitions need is made when first needed: the
//! waiting queue (for the first waiter) and, in the same box, the limits it
//! learned from the wire (see [below](#limits-learned-from-the-wire)); the
//! server's cooldown and clamps (on the first 429 or rate-limit headers
//! that say less remains than the window thinks). A keyed admission reads
//! one map entry, then the first 128 bytes of the slot's allocation (the
//! counts, the lock and the window's head) and the log's newest and oldest
//! entries; a log found empty takes its next entry where the newest was,
//! so a partition used now and then touches one buffer line.
//!
//! The clock is read even when the request carries its
//! [`arrival`](crate::LlmRequest::arrival): an entry stamped earlier than the
//! instant it was admitted would leave the window early, and an interval of
//! length W could then hold more than the limit. The one reading this layer
//! shares is the one taken by the layers around it in the same synchronous
//! chain of `call`s (the deadline layer's, in a full stack): nothing waits
//! between that reading and the admission, so it is as early as any clock
//! read taken before a lock is (a stamp always precedes the send a little).
//!
//! Before the call only the estimate is known, so it is charged to every
//! token budget (it bounds input, output and total alike).
//!
//! A request whose estimate exceeds a token limit (of its partition, the
//! global budget, or a token burst) can never fit: it fails at once with
//! [`Error::RequestTooLarge`](crate::Error::RequestTooLarge).
//!
//! # Reconciliation
//!
//! ## Where the usage comes from
//!
//! The provider reports what it counted in the response: for most
//! responses in the **body**, which arrives after the headers, for a stream
//! at its very end. So the window settles a reservation when the response
//! is *done*, not when its headers arrive ([`MeterResponse`](crate::meter::MeterResponse)):
//!
//! - an `http::Response`'s body is wrapped in a
//!   [`UsageBody`](crate::meter::UsageBody), which hands every frame on
//!   unchanged and reads the usage as it streams (a JSON body's `usage`; the
//!   last chunk of an OpenAI-compatible stream sent with
//!   `stream_options.include_usage`; Anthropic's `message_start` and
//!   `message_delta`; the Responses API's `response.completed`), in bounded
//!   memory, and reports when the body ends, fails or is dropped;
//! - a typed response reports through its classification
//!   ([`LlmResponse`](crate::classify::LlmResponse)), settled at once; so is usage a
//!   client put into an `http::Response`'s extensions.
//!
//! The server's feedback in the headers (a cooldown, the clamps) is taken
//! at once, when they arrive.
//!
//! ## A body that reports nothing
//!
//! A stream cut off before its usage (the caller went away, a timeout, a
//! reset) was still billed for what the provider generated before it
//! noticed, and one sent without `include_usage` reports nothing at all.
//! The window **never refunds** such a request: its estimate stands, or is
//! raised to what the body showed was spent when that is more (the input of
//! a partial report, Anthropic's `message_start`, plus the output read so
//! far, at four characters a token). Likewise a response whose body is never
//! read keeps its estimate.
//!
//! ## The correction
//!
//! When the usage is known, each
//! reservation is rewritten to the actual count (total, uncached input,
//! output) **at its original timestamp**, in every token budget whose
//! [charging rule](#charging-rules) corrects it (all of them by default): a
//! refund when the estimate was high, an extra charge when it was low. A
//! budget charged at admission keeps the estimate. A correction of an entry that has
//! already left the window changes nothing, as it should. An extra charge can
//! take a window above its limit; later admissions then wait until it is
//! back under, that is until the entry expires: a partition recovers from
//! any report within one window (and guard band) of the reservation.
//!
//! A count above [`MAX_USAGE_TOKENS`] (2^40 tokens) is a broken report (a
//! client that casts `-1` to `u64` sends 2^64 - 1), not usage: it is capped
//! there, counted in `llm_sluice_rate_usage_capped_total` and logged as a
//! warning. Capped, it still fills the window for every realistic limit
//! until it expires. The window also stores a correction only as far as
//! its sums can take it without passing `u64::MAX`, so that the entry gives
//! back exactly what it added when it expires.
//!
//! A result classified [`Outcome::Rejected`](crate::classify::Outcome) (a
//! layer further in refused it: it never reached the upstream) releases its
//! reservation entirely. Any other result, and dropping the response future
//! after admission, keeps the estimate: the request reached the upstream
//! (transport errors included, since a reset may come after the server
//! counted the request).
//!
//! # Charging rules
//!
//! Providers count tokens against a limit in different ways, and a window
//! protects a provider only if it counts the way the provider does. Each
//! token budget (tokens, input tokens, output tokens; per partition and
//! globally alike) has a [`Charging`] rule, set with
//! [`Builder::charging`] (or [`Builder::token_charging`] for all three, or
//! `token_charging`, `input_token_charging` and `output_token_charging` in
//! the stack's configuration):
//!
//! | rule | the provider | the window |
//! |---|---|---|
//! | [`Admission`](Charging::Admission) | charges each request at admission, from `max_tokens` and an estimate of the prompt, and never corrects it (OpenAI's TPM) | charges the estimate; usage changes nothing in the budget |
//! | [`Reconcile`](Charging::Reconcile) (the default) | charges an estimate at admission and corrects it to the actual usage when the response ends (Anthropic-style output limits) | charges the estimate, then rewrites it to the usage at its original timestamp |
//! | [`Actual`](Charging::Actual) | counts actual usage only, and admits while what it counted is under the limit (other OpenAI-compatible servers) | as `Reconcile` |
//!
//! `Actual` behaves in the window as `Reconcile` does: the usage is not
//! known before the response ends, so the estimate holds the room until
//! then, and the provider will count the usage. What differs is at the
//! provider, which counts nothing for a request still running: the window
//! holds the estimates of requests in flight and the provider does not, so
//! in front of long streams the window admits a little less than the
//! provider would (each interval still holds at most the limit). A result
//! without usage (a cut stream, an error, a transport failure) keeps its
//! estimate under both: the provider may have counted up to it, and only
//! usage can say less. The request budget counts one per request under
//! every rule.
//!
//! **The default is `Reconcile`**, the behaviour before the rules existed.
//! Of the two ways a rule can be wrong, this is the one that shows and
//! stays bounded. In front of a provider that charges at admission,
//! refunding lets the window admit more than the provider counts: that
//! comes back as `429`s, the provider's `x-ratelimit-remaining-tokens`
//! clamps the window until its reset, and the mismatch metric (below)
//! counts it. `Admission` in front of a provider that corrects to actual
//! usage is wrong silently: the window keeps whole estimates the provider no
//! longer counts, and the budget goes unused (39% measured through the proxy
//! with the official SDK, estimates of 72 tokens for 28 used). Set
//! `Admission` for OpenAI's TPM, with an estimate that mirrors OpenAI's
//! (about four prompt characters a token, plus `max_tokens`): there the
//! estimate is the count.
//!
//! Measured against the simulated provider
//! ([`TokenCharge`](crate::sim::TokenCharge)) at 20,000 tokens a minute,
//! calls of 100 prompt tokens and `max_tokens` 400 of which a quarter is
//! generated (estimated 500, used 200), five times the demand a provider
//! counting usage allows, for ten windows (`tests/rate_feedback/charging.rs`;
//! "used" is the provider's count in windows 2 to 10 against their limit):
//!
//! | provider \ window | `Admission` | `Reconcile` | `Actual` |
//! |---|---|---|---|
//! | `Admission` | no 429s, 100% used | 32 429s in 433 calls, 100% used | as `Reconcile` |
//! | `Reconcile` | no 429s, 40% used | no 429s, 98% used | no 429s, 98% used |
//! | `Actual` | no 429s, 40% used | no 429s, 98% used | no 429s, 98% used |
//!
//! ## Telling a wrong rule from the wire
//!
//! Where the provider sends `x-ratelimit-remaining-tokens` (or the input or
//! output ones) and its limit, each answer says what the provider had
//! counted when it admitted the request, and the reservation says what the
//! window held at its admission ([`RateStore::held`]). The difference tells
//! the rules apart:
//!
//! - Under `Admission`, a provider counting less than the window by more
//!   than a tenth of the limit corrects to actual usage (or counts from a
//!   smaller estimate than the window's). Other clients on the same key
//!   only ever make a provider count more, so they cannot be taken for it.
//! - Under `Reconcile` or `Actual`, a provider counting more than the window
//!   by more than a tenth of the limit, and by at least three quarters of
//!   what the window refunded in that budget over about the last window,
//!   still counts the estimates the window gave back: it charges at
//!   admission. Counting more alone is what another client on the key does
//!   (the clamp takes care of that), so the first time the window sees it,
//!   it starts keeping its refunds (a few words, out of line with the
//!   learned limits) and speaks only when they explain the difference. A
//!   second client spending three quarters of this one's refunds looks the
//!   same.
//!
//! Each such answer counts in `llm_sluice_rate_charging_mismatch_total`
//! with its `budget`, and a warning is logged at most once a window per
//! budget. The rule is not switched on its own: each direction has a cause
//! other than the rule (an estimator above the provider's, another
//! client), and a wrong switch to `Reconcile` would overshoot a provider
//! that charges at admission.
//!
//! # Feedback from the server
//!
//! - A 429 ([`Outcome::RateLimited`](crate::classify::Outcome)) with a
//!   server delay puts the request's partition in **cooldown**: nothing more
//!   is admitted there until the delay passes. Queued requests stay queued.
//! - `remaining` / `reset` ([`RateLimitState`](crate::classify::RateLimitState),
//!   from `x-ratelimit-*` or `anthropic-ratelimit-*`) **clamp** the local
//!   view: until `now + reset` (one window if no reset is given) at most
//!   `remaining` more requests or tokens are admitted in that partition,
//!   whatever the local window thinks. Requests admitted after the server
//!   wrote its headers but before they arrive are not subtracted, so the
//!   clamp is as good as the server's snapshot.
//! - `limit` and unexpected 429s teach the partition its limits (next).
//!
//! # Limits learned from the wire
//!
//! The limits a provider reports (`x-ratelimit-limit-requests` / `-tokens`,
//! `anthropic-ratelimit-{requests,tokens,input-tokens,output-tokens}-limit`,
//! read into [`LimitState::limit`](crate::classify::LimitState)) and the
//! `429`s it sends teach each partition its limits, as
//! [`Builder::learn_limits`] says ([`LearnLimits`]):
//!
//! - [`TightenOnly`](LearnLimits::TightenOnly), the default: a partition's
//!   limit is the lower of the configured one and the reported one, and a
//!   budget with no configured limit takes the reported one. Never above a
//!   configured limit: a header cannot loosen what you set (and a wrong one
//!   cannot make the window overshoot).
//! - [`Follow`](LearnLimits::Follow): the reported limit replaces the
//!   configured one, above it too; the configured one holds until a report
//!   comes.
//! - [`Off`](LearnLimits::Off): only the configured limits count.
//!
//! **Zero configuration.** Given `learn_limits(TightenOnly)` (or `Follow`),
//! a builder needs no budget: each partition starts unlimited and counts a
//! budget from the first answer that reports its limit. Until that answer
//! comes back, nothing holds the partition back.
//!
//! **From reports.** A reported limit applies to the partition whose answer
//! carried it, from that answer on, until a later report says otherwise (or
//! the partition is evicted, being idle: its next answer teaches it again).
//! It is taken as counted over this layer's window (60 s by default, as
//! the providers' per-minute limits are). The remaining count clamps the
//! window as [above](#feedback-from-the-server), against the learned limit.
//!
//! **From 429s the window did not expect.** Every `429` but a spent quota
//! is one, since the window admitted the request. Unless the answer reports
//! the limit of the budget it says is spent (then the report teaches), the
//! `429` caps that budget (`remaining: 0`), or else the one the window found
//! fullest at the reservation, at what the window held there before the
//! refused request, and never below half the limit in force, so a stray
//! `429` cannot collapse it (from twice the provider's limit, two `429`s
//! find it). A later `429` lowers the cap further only to what the window
//! then held, so the `429`s of requests sent before the first came back
//! change nothing. A cap never makes a request too large to fit (it is a
//! guess; the provider may take the request), and it holds for ten windows
//! (with their guard bands) after the last `429` that taught or confirmed
//! it, then lapses; a report of a higher limit lifts it sooner. In front of
//! a provider that stays lower, a lapse costs one `429` in ten windows. A
//! budget the window does not count (no limit configured or reported)
//! learns nothing from a `429`.
//!
//! Measured against the simulated provider at 60 a minute, with a window
//! configured at 120 and five times the demand, for ten windows
//! (`tests/rate_feedback/learn.rs`): without rate-limit headers and not
//! learning, 58 or 59 `429`s every window after the first (the proxy of
//! the report: 121 in 267 requests); learning, one `429` in the first window
//! and none after, 60 admitted in every window. With headers and not
//! learning, the remaining count clamps the window only until each reset:
//! 0, 1, 2, 3, 5, 6, 9, 10, 12 and 16 `429`s in windows 1 to 10; learning,
//! none. With no limit configured, the partition takes 60 from the first
//! answer and no request is refused.
//!
//! **Where it is kept.** A partition's learned limits live out of line, in
//! the box that holds its waiting queue, made when something is first
//! learned (or the charging check first keeps refunds) and dropped when
//! nothing is left in it: a partition that never learns costs nothing more,
//! and an admission that finds no box takes the fast path as before (the
//! same instructions, measured with callgrind). A partition with a learned
//! limit in force works its limits out under its lock at each admission (a
//! few comparisons). Learned limits are per partition; the global budget
//! counts only its configured limits.
//!
//! They show in [`RateLimitHandle::learned`] (per partition),
//! [`RateStats::learned`] (how many partitions) and the
//! `llm_sluice_rate_learned_limit` gauge with its `budget`: the partition's
//! limit after learning, set when it changes (0 until then); with
//! [`partition_label`](Builder::partition_label) per labelled partition,
//! without it the last partition's to change.
//!
//! # Waiting
//!
//! A request that does not fit waits, at most `max_wait` and never past its
//! deadline, then fails with
//! [`Error::RateLimited { retry_after }`](crate::Error::RateLimited) (or
//! [`Error::DeadlineExceeded`](crate::Error::DeadlineExceeded) when its
//! deadline passed while it waited). At most `max_waiters` wait at once;
//! more fail at once.
//!
//! ## Refusals known in advance
//!
//! When the windows already know that the request's room comes later than
//! it may wait (a cooldown longer than `max_wait`, or the instant enough
//! entries expire lies past its deadline), it is refused at once with
//! `RateLimited` and the exact delay, instead of waiting in vain. The same
//! holds for a waiter whose room moves past its wait while it queues (the
//! request ahead of it took the room, a cooldown began): it leaves when that
//! is known, not when its wait runs out. The instant is computed from what
//! the windows hold; only a refund (usage below an estimate) arriving later
//! could have let it in sooner, and the delay tells the caller when to come
//! back.
//!
//! ## Every refusal carries a delay
//!
//! A refusal's `retry_after` is never zero, which callers read as "no
//! hint": it is the time until the windows have room for the request, or,
//! when they have room now but the request could not wait for its turn
//! (the waiter list was full, or others queue ahead of it), the time the
//! windows take to free that much room at the limits' own pace (one
//! request at 60 a minute: 1 s), and at least 1 ms. Only a request that can
//! never fit has none (it fails with `RequestTooLarge`).
//!
//! Waiters are queued per partition, ordered by priority, then arrival time
//! (a retried request keeps its first [`Arrival`](crate::request::Arrival)).
//! Only the head of a queue may be admitted, and only the head holds a timer:
//! it is set to the instant the head will fit, computed from the window (the
//! instant enough entries expire), or to the earliest expiry of any waiter in
//! the queue if that comes first, and it is reset in place. Everyone else
//! parks with its waker and is woken in order. There is no polling loop and
//! no timer per waiter. Refunds, releases and limit changes wake the head
//! early.
//!
//! # Two stages around a queue
//!
//! [`RateLimitLayer`] waits and reserves in one step, at the instant it
//! calls the inner service: the right place for it is just in front of the
//! client. With a queue (a concurrency limit) in front of the client, the
//! window goes in two stages around it, as [`LlmStack`](crate::LlmStack)
//! does:
//!
//! ```
//! # use std::time::Duration;
//! use llm_sluice::concurrency::ConcurrencyLimitLayer;
//! use llm_sluice::rate::{DispatchLayer, RateLimitLayer};
//! use llm_sluice::request::RequestMeta;
//! use tower::{Service, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), tower::BoxError> {
//! # let client = tower::service_fn(|_req: RequestMeta| async { Ok::<_, tower::BoxError>(()) });
//! let rate = RateLimitLayer::builder().requests_per_minute(500).build()?;
//! let mut svc = ServiceBuilder::new()
//!     .layer(rate.admission()) // waits for room, holding no permit
//!     .layer(ConcurrencyLimitLayer::builder().max_in_flight(8).build()?)
//!     .layer(DispatchLayer::new()) // dates the reservation when sent
//!     .service(client);
//! svc.ready().await?.call(RequestMeta::new().tokens(100)).await?;
//! assert_eq!(rate.handle().stats().admitted, 1);
//! # Ok(()) }
//! ```
//!
//! [`Admission`] waits for room exactly as [`RateLimit`] does, reserves it,
//! and passes the request on as an [`Admitted`], which carries the
//! reservation. [`Dispatch`] moves the reservation to the instant it is
//! called (when the request leaves the queue), so its entry expires when
//! the server's does, then corrects it from the result as [`RateLimit`]
//! does. While the request queues in between, its reservation counts from
//! its admission: never less than the server will count.
//!
//! - **Dated when sent.** A request sent in the same chain of calls that
//!   admitted it is dated once. One that queued is given back and reserved
//!   again at the send instant, under the partition's lock: nothing changes
//!   unless the windows changed while it queued. If it no longer fits (it
//!   queued longer than a burst bound's span or the whole window, or a
//!   cooldown, a server clamp or a lowered limit came), it is not sent: it
//!   fails with `RateLimited` and the delay until it would fit (metric
//!   reason `changed`), and its room goes to the partition's head.
//! - **No permit while waiting.** A partition whose budget is spent keeps
//!   its requests in its own queue, not in the concurrency queue, so it
//!   never takes permits or queue places from other partitions.
//! - **Cancel safety.** An [`Admitted`] dropped before [`Dispatch`] (shed or
//!   timed out by the queue, cancelled by its caller) gives its reservation
//!   back and wakes the partition's head.
//!
//! # Fairness
//!
//! **Head of line is strict.** A large request at the head of a partition's
//! queue holds back smaller ones behind it, even those that would fit now.
//! This is what keeps large requests from starving: the window drains
//! towards it and nothing overtakes it, so it is admitted at the latest when
//! every entry present when it reached the head has expired. A waiter
//! therefore waits at most for the requests of higher priority, or earlier
//! arrival, queued in front of it. Lower-priority requests can be overtaken
//! indefinitely by a steady stream of higher-priority ones (that is what
//! priority means); within one priority the order is FIFO.
//!
//! Across partitions there is no order: each partition's head competes for
//! the global budget when its own timer fires. A refund to the global budget
//! does not wake other partitions early.
//!
//! # The guard band at the window edge
//!
//! A provider's window starts when a request *arrives* there, not when it
//! was admitted here, and the time in between (the rest of the stack, the
//! network, a connection set-up, a large body on its way) varies from
//! request to request. A request admitted at the instant the oldest entry
//! of a full window expires can then arrive a few milliseconds before that
//! entry's request leaves the provider's window, and be refused with a 429:
//! 2 of 200 requests at 60 RPM, in the report that led here, arrived so.
//!
//! So each reservation counts for the window plus a **guard band** `g`: an
//! entry made at `t` counts over `[t, t + W + g)` in the request and token
//! budgets (per partition and global). If the delay from admission to the
//! provider's arrival stamp varies by less than `g`, the requests arriving
//! in any interval of length `W` at the provider were admitted within less
//! than `W + g` here, which the log bounds by the limit.
//!
//! The default is [`DEFAULT_GUARD_BAND`], 250 ms (a hundredth of the window
//! when that is shorter, so windows under 25 s): several times the jitter
//! of a warm connection, and room for a fresh connection's TCP and TLS 1.3
//! handshakes (two round trips) on routes up to about 100 ms round trip.
//! Set it with [`Builder::guard_band`] (zero turns it off; it must
//! be shorter than the window), or `guard_band` in the stack's
//! configuration. The default `max_wait` is the window plus the guard band:
//! the longest a request that fits can have to wait.
//!
//! What it costs: under steady overload each window's budget is spent once
//! per `W + g` instead of once per `W`, so `g / (W + g)` of the throughput,
//! 0.41% of a 60 s window. Measured against the simulated provider
//! enforcing the same limits over a 60 s sliding window, with requests
//! arriving 5 to 120 ms after admission, over 1,000 windows of steady
//! overload (`tests/sim/edge.rs` runs the same scenario over 100 windows;
//! "used" is the budget's long-run use, its limit per window being 100%):
//!
//! | guard band | 60 RPM binds: 429s | requests used | 60,000 TPM binds: 429s | tokens used |
//! |---|---|---|---|---|
//! | none, and no transit delay | 0 | 100% | 0 | 98.97% |
//! | none | 2,818 | 95.29% | 2,477 | 93.91% |
//! | 100 ms | 0 | 99.83% | 0 | 98.79% |
//! | 250 ms (default) | 0 | 99.58% | 0 | 98.56% |
//! | 500 ms | 0 | 99.17% | 0 | 98.16% |
//! | 1 s | 0 | 98.36% | 0 | 97.40% |
//!
//! (Requests of 200 to 1,800 tokens leave a little of a token budget
//! unused whatever the guard band.) Without a guard band the 429s cost more
//! than the guard band does: each refused request spent its reservation
//! here too. A transit spread wider than the guard band brings them back:
//! 5 to 400 ms against a 100 ms guard band gave 87 in three runs of 30
//! windows.
//!
//! # Burst bounds for bucket-style providers
//!
//! Some providers enforce "60 per minute" as a bucket refilled continuously
//! (about one a second) rather than a 60 s window; a client that spends its
//! whole minute at once is then rejected. [`Builder::request_burst`] and
//! [`Builder::token_burst`] add a second sliding window of length
//! `W · B / limit` holding at most `B`: paced admission. Any sequence that
//! passes it also passes a bucket of capacity `B` refilled at `limit / W`
//! (the interval is rounded up, never down). Use it when the provider's
//! documentation speaks of a bucket or of per-second enforcement, or when
//! 429s arrive although the minute's budget was not spent; leave it off for
//! true windows, where it only delays requests.
//!
//! The guard band does not stretch the burst spans. Pacing spans are short
//! (one second at 60 RPM with a burst of 1), so the same 250 ms would cost a
//! fifth of the throughput rather than 0.4%; and a bucket absorbs arrival
//! jitter through its capacity rather than its timing. Set the burst below
//! the provider's bucket by the jitter's worth: one request of slack lets a
//! request arrive up to one refill interval (`W / limit`) early.
//!
//! # Partitions
//!
//! Budgets apply per [`PartitionKey`](crate::PartitionKey): each API key,
//! tenant or model gets its own windows; requests without a key share one.
//! Memory does not grow with the number of distinct keys a client can
//! invent: at most `max_partitions` keys have their own windows. When a new
//! key arrives and the map is full, idle partitions (empty windows, no
//! waiter, no cooldown or clamp in force, no request in flight) are evicted;
//! if none is idle, the new key shares one **overflow** window with every
//! other key that found the map full, so invented keys share one budget
//! instead of each getting a fresh one.
//!
//! # Cancel safety
//!
//! Dropping a waiting [`ResponseFuture`](future::ResponseFuture) leaves its
//! queue, waking the next waiter if it was at the head; it held no
//! reservation, so it releases none. After admission the reservation is kept
//! (the request reached the upstream) and corrected when the result arrives.
//!
//! # Runtime changes
//!
//! [`RateLimitLayer::handle`] gives a [`RateLimitHandle`] that changes any
//! limit of a live limiter (every partition at once) and reads its
//! counters.
//!
//! # Metrics
//!
//! All labelled `layer="rate"` (plus `name` with
//! [`metrics_name`](Builder::metrics_name)):
//!
//! | name | type | labels | meaning |
//! |---|---|---|---|
//! | `llm_sluice_admitted_total` | counter | | requests admitted |
//! | `llm_sluice_rejected_total` | counter | `reason`: `too_large`, `wait_timeout`, `deadline`, `waiters_full`, `changed` | requests refused (`changed`: at dispatch, see above) |
//! | `llm_sluice_rate_tokens_reserved_total` | counter | | tokens reserved: estimates, plus usage above them |
//! | `llm_sluice_rate_tokens_refunded_total` | counter | | tokens given back: over-estimates, released reservations |
//! | `llm_sluice_rate_wait_seconds` | histogram | | wait of each admitted request (0 when it fit at once) |
//! | `llm_sluice_rate_cooldowns_total` | counter | | cooldowns after a 429 with a delay |
//! | `llm_sluice_rate_usage_capped_total` | counter | | usage reports above [`MAX_USAGE_TOKENS`], capped |
//! | `llm_sluice_rate_learned_limit` | gauge | `budget`: `requests`, `tokens`, `input_tokens`, `output_tokens` | a partition's limit after what it learned from the wire, set when it changes (0 until then; see [above](#limits-learned-from-the-wire)) |
//! | `llm_sluice_rate_charging_mismatch_total` | counter | `budget`: `tokens`, `input_tokens`, `output_tokens` | answers whose remaining count says the budget's [charging rule](#charging-rules) is wrong |
//! | `llm_sluice_partitions` | gauge | | partition keys with a window of their own |
//!
//! A partition key is never a label. With
//! [`partition_label(n)`](Builder::partition_label), every metric but
//! `llm_sluice_partitions` also carries `partition`: the key's 8-hex-digit
//! [fingerprint](crate::PartitionKey::fingerprint) for the first `n`
//! distinct keys, `other` after them, `none` without a key, `overflow` for
//! the shared window of a full map. A partition's handles are made when its
//! window is; a request only uses them.

pub mod future;
mod handle;
pub(crate) use handle::Control;
mod layer;
mod learn;
mod limits;
mod service;
mod shared;
mod stage;
pub mod store;
mod window;

pub use handle::{RateLimitHandle, RateStats};
pub use layer::{Builder, RateLimitLayer, DEFAULT_GUARD_BAND};
pub use learn::{LearnLimits, LearnedLimits};
pub use limits::{Budget, Charging, Demand, Limits, MAX_USAGE_TOKENS};
pub use service::RateLimit;
pub use stage::{Admission, AdmissionLayer, Admitted, Dispatch, DispatchLayer};
pub use store::{MemoryStore, RateStore};
pub use window::Verdict;
