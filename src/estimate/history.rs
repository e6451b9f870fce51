//! Completion lengths learned per model.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use parking_lot::Mutex;

use super::tokens::{cap, MAX_ESTIMATE_TOKENS};
use crate::error::ConfigError;

/// Completions remembered per model by default: the last 256.
pub const DEFAULT_WINDOW: usize = 256;
/// Models remembered by default: 64.
pub const DEFAULT_MAX_MODELS: usize = 64;
/// Completions a model needs before its quantile is used, by default: 20,
/// the fewest for which the 95th percentile is not simply the largest
/// (it is the 19th of 20).
pub const DEFAULT_MIN_SAMPLES: usize = 20;
/// The quantile answered by default: the 95th percentile.
pub const DEFAULT_QUANTILE: f64 = 0.95;
/// The output estimate before a model has enough completions, by default:
/// 256 tokens.
pub const DEFAULT_OUTPUT_TOKENS: u64 = 256;
/// The longest model name remembered, in bytes: 256. A longer name is
/// neither recorded nor looked up (it gets the default), so a caller cannot
/// make the history hold long strings.
pub const MAX_MODEL_NAME: usize = 256;

/// The largest `window` and `max_models` settings: each is a factor of the
/// memory bound.
const MAX_WINDOW: usize = 1 << 16;
const MAX_MODELS: usize = 1 << 16;
/// Quantiles are kept in parts per million, so a rank is exact integer
/// arithmetic (`0.95 * 100` is 95.00000000000001 in floating point).
const PPM: u64 = 1_000_000;

/// Observed completion lengths per model, answering a high quantile of the
/// recent ones as the output estimate of a request that sets no maximum.
///
/// A request without `max_tokens` may generate up to the model's limit (tens
/// of thousands of tokens): charging that would starve a token budget, and
/// a fixed guess is wrong for every model in its own way. The history keeps
/// the last completions of each model and answers a high quantile of them:
/// most completions of that model fit, and the window follows the traffic
/// as it changes.
///
/// # What it remembers
///
/// For each of at most `max_models` models (64 by default), the last
/// `window` completion lengths (256 by default) in a ring. A new model past
/// the limit evicts the least recently used one (recorded or asked about
/// last). Model names longer than [`MAX_MODEL_NAME`] bytes are ignored.
/// Memory is therefore bounded by `max_models * (window * 8 + 256)` bytes
/// plus the maps' overhead, whatever the traffic: about 150 KiB with the
/// defaults. Asking about a model allocates nothing; only
/// [`record`](Self::record) adds a model.
///
/// # What it answers
///
/// [`quantile`](Self::quantile) is the nearest-rank quantile of the window:
/// with `n` completions sorted ascending, the one at rank `ceil(q * n)` (1
/// based), so the 95th percentile of 1, 2, ..., 100 is 95, and `q = 1` is
/// the largest. It needs `min_samples` completions (20 by default);
/// before that [`output_estimate`](Self::output_estimate) answers the
/// model's configured default, else the history's default (256 tokens).
///
/// # Cost
///
/// One mutex over a small map. [`record`](Self::record) selects the
/// quantile once per completion (linear in the window: about a microsecond
/// for 256) and keeps it; a lookup reads the kept value, so the per-request
/// path is a hash of the model name and a lock.
///
/// Clones share the history: build one and give it to every estimator that
/// should learn from the same traffic.
///
/// ```
/// use llm_sluice::estimate::CompletionHistory;
///
/// let history = CompletionHistory::builder().min_samples(10).build()?;
/// assert_eq!(history.output_estimate("gpt-4o-mini"), 256); // nothing learned yet
/// for tokens in 1..=100 {
///     history.record("gpt-4o-mini", tokens);
/// }
/// assert_eq!(history.quantile("gpt-4o-mini"), Some(95));
/// assert_eq!(history.output_estimate("gpt-4o-mini"), 95);
/// assert_eq!(history.output_estimate("another-model"), 256);
/// # Ok::<(), llm_sluice::ConfigError>(())
/// ```
#[derive(Clone)]
pub struct CompletionHistory {
    shared: Arc<Shared>,
}

struct Shared {
    window: usize,
    max_models: usize,
    min_samples: usize,
    quantile_ppm: u64,
    default_output: u64,
    model_defaults: HashMap<Box<str>, u64>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    models: HashMap<Box<str>, Model>,
    /// Bumped on every use; a model's `last_used` is the tick of its last.
    tick: u64,
    /// Reused for selecting the quantile, so a record does not allocate.
    scratch: Vec<u64>,
}

struct Model {
    /// The last `window` completions; `next` is where the next one goes once
    /// the ring is full.
    ring: Vec<u64>,
    next: usize,
    last_used: u64,
    /// The quantile of `ring`, once it holds `min_samples`.
    quantile: Option<u64>,
}

impl CompletionHistory {
    /// A history with the defaults: the last 256 completions of at most 64
    /// models, the 95th percentile from 20 completions, 256 tokens before.
    pub fn new() -> Self {
        CompletionHistory::builder()
            .build()
            .expect("the defaults are valid")
    }

    /// A builder, to change the defaults.
    pub fn builder() -> CompletionHistoryBuilder {
        CompletionHistoryBuilder::default()
    }

    /// Records one completion of `model`: its output tokens per choice
    /// (`usage.completion_tokens`, divided by `n` for a request of several
    /// choices), capped at [`MAX_ESTIMATE_TOKENS`].
    ///
    /// Record the completions of requests that set no maximum: a maximum
    /// cuts completions short, and they would teach the history less than
    /// the model writes. ([`EstimateLayer`](super::EstimateLayer) records
    /// only those.)
    pub fn record(&self, model: &str, completion_tokens: u64) {
        if model.len() > MAX_MODEL_NAME {
            return;
        }
        let shared = &*self.shared;
        let mut guard = shared.state.lock();
        let state = &mut *guard;
        state.tick += 1;
        let tick = state.tick;
        if !state.models.contains_key(model) {
            if state.models.len() >= shared.max_models {
                let oldest = state
                    .models
                    .iter()
                    .min_by_key(|(_, m)| m.last_used)
                    .map(|(name, _)| name.clone());
                if let Some(oldest) = oldest {
                    state.models.remove(&oldest);
                }
            }
            state.models.insert(
                model.into(),
                Model {
                    ring: Vec::new(),
                    next: 0,
                    last_used: tick,
                    quantile: None,
                },
            );
        }
        let Some(entry) = state.models.get_mut(model) else {
            return;
        };
        entry.last_used = tick;
        let tokens = cap(completion_tokens);
        if entry.ring.len() < shared.window {
            entry.ring.push(tokens);
        } else {
            entry.ring[entry.next] = tokens;
            entry.next = (entry.next + 1) % shared.window;
        }
        if entry.ring.len() >= shared.min_samples {
            state.scratch.clear();
            state.scratch.extend_from_slice(&entry.ring);
            entry.quantile = Some(select(&mut state.scratch, shared.quantile_ppm));
        }
    }

    /// The configured quantile of `model`'s recent completions, once it has
    /// `min_samples` of them.
    pub fn quantile(&self, model: &str) -> Option<u64> {
        let mut state = self.shared.state.lock();
        state.tick += 1;
        let tick = state.tick;
        let entry = state.models.get_mut(model)?;
        entry.last_used = tick;
        entry.quantile
    }

    /// The output estimate for a request of `model` that sets no maximum:
    /// the learned [`quantile`](Self::quantile), else the model's configured
    /// default, else the history's default.
    pub fn output_estimate(&self, model: &str) -> u64 {
        self.quantile(model)
            .or_else(|| self.shared.model_defaults.get(model).copied())
            .unwrap_or(self.shared.default_output)
    }

    /// The default output estimate, for models without enough completions
    /// and no default of their own.
    pub fn default_output(&self) -> u64 {
        self.shared.default_output
    }

    /// How many models the history holds now (at most `max_models`).
    pub fn models(&self) -> usize {
        self.shared.state.lock().models.len()
    }

    /// How many completions of `model` the history holds now (at most
    /// `window`). Does not count as a use of the model.
    pub fn samples(&self, model: &str) -> usize {
        self.shared
            .state
            .lock()
            .models
            .get(model)
            .map_or(0, |m| m.ring.len())
    }
}

impl Default for CompletionHistory {
    fn default() -> Self {
        CompletionHistory::new()
    }
}

impl fmt::Debug for CompletionHistory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &*self.shared;
        f.debug_struct("CompletionHistory")
            .field("window", &s.window)
            .field("max_models", &s.max_models)
            .field("min_samples", &s.min_samples)
            .field("quantile", &(s.quantile_ppm as f64 / PPM as f64))
            .field("default_output", &s.default_output)
            .field("models", &s.state.lock().models.len())
            .finish_non_exhaustive()
    }
}

/// The 1-based rank of the nearest-rank quantile `ppm` (parts per million,
/// in `1..=1_000_000`) among `n >= 1` values: `ceil(ppm * n / 10^6)`, at
/// least 1.
pub(crate) fn rank(ppm: u64, n: usize) -> usize {
    let n = n as u64;
    (ppm * n).div_ceil(PPM).clamp(1, n) as usize
}

/// The nearest-rank quantile of `values` (not empty), reordering them.
fn select(values: &mut [u64], ppm: u64) -> u64 {
    let index = rank(ppm, values.len()) - 1;
    *values.select_nth_unstable(index).1
}

/// Builds a [`CompletionHistory`]; every setting is checked by
/// [`build`](Self::build).
///
/// ```
/// use llm_sluice::estimate::CompletionHistory;
///
/// let history = CompletionHistory::builder()
///     .window(512)
///     .max_models(16)
///     .quantile(0.99)
///     .min_samples(50)
///     .default_output(1_024)
///     .model_default("gpt-4o-mini", 16_384)
///     .build()?;
/// assert_eq!(history.output_estimate("gpt-4o-mini"), 16_384);
/// assert_eq!(history.output_estimate("gpt-4o"), 1_024);
///
/// let err = CompletionHistory::builder().quantile(1.5).build().unwrap_err();
/// assert_eq!(err.field(), "quantile");
/// # Ok::<(), llm_sluice::ConfigError>(())
/// ```
#[derive(Debug, Clone)]
pub struct CompletionHistoryBuilder {
    window: usize,
    max_models: usize,
    min_samples: usize,
    quantile: f64,
    default_output: u64,
    model_defaults: Vec<(Box<str>, u64)>,
}

impl Default for CompletionHistoryBuilder {
    fn default() -> Self {
        CompletionHistoryBuilder {
            window: DEFAULT_WINDOW,
            max_models: DEFAULT_MAX_MODELS,
            min_samples: DEFAULT_MIN_SAMPLES,
            quantile: DEFAULT_QUANTILE,
            default_output: DEFAULT_OUTPUT_TOKENS,
            model_defaults: Vec::new(),
        }
    }
}

impl CompletionHistoryBuilder {
    /// Completions remembered per model, `1..=65536` (default 256).
    pub fn window(mut self, window: usize) -> Self {
        self.window = window;
        self
    }

    /// Models remembered, `1..=65536` (default 64); a new one past it
    /// evicts the least recently used.
    pub fn max_models(mut self, max_models: usize) -> Self {
        self.max_models = max_models;
        self
    }

    /// Completions a model needs before its quantile is used,
    /// `1..=window` (default 20).
    pub fn min_samples(mut self, min_samples: usize) -> Self {
        self.min_samples = min_samples;
        self
    }

    /// The quantile answered, in `(0, 1]` (default 0.95), to the nearest
    /// millionth.
    pub fn quantile(mut self, quantile: f64) -> Self {
        self.quantile = quantile;
        self
    }

    /// The output estimate before a model has enough completions (default
    /// 256), at most [`MAX_ESTIMATE_TOKENS`].
    pub fn default_output(mut self, tokens: u64) -> Self {
        self.default_output = tokens;
        self
    }

    /// A default of one model's own, used before it has enough completions:
    /// its documented output limit, say. At most [`MAX_ESTIMATE_TOKENS`];
    /// a name longer than [`MAX_MODEL_NAME`] is refused. These names are
    /// configuration, kept whatever the traffic, and do not count against
    /// `max_models`.
    pub fn model_default(mut self, model: impl Into<Box<str>>, tokens: u64) -> Self {
        self.model_defaults.push((model.into(), tokens));
        self
    }

    /// The history, or the first invalid setting.
    pub fn build(self) -> Result<CompletionHistory, ConfigError> {
        if !(1..=MAX_WINDOW).contains(&self.window) {
            return Err(ConfigError::new("window", "must be in 1..=65536"));
        }
        if !(1..=MAX_MODELS).contains(&self.max_models) {
            return Err(ConfigError::new("max_models", "must be in 1..=65536"));
        }
        if !(1..=self.window).contains(&self.min_samples) {
            return Err(ConfigError::new(
                "min_samples",
                "must be at least 1 and at most the window",
            ));
        }
        let quantile_ppm = (self.quantile * PPM as f64).round();
        if !(self.quantile > 0.0 && self.quantile <= 1.0 && quantile_ppm >= 1.0) {
            return Err(ConfigError::new(
                "quantile",
                "must be in (0, 1], at least one millionth",
            ));
        }
        if self.default_output > MAX_ESTIMATE_TOKENS {
            return Err(ConfigError::new("default_output", "must be at most 2^40"));
        }
        let mut model_defaults = HashMap::with_capacity(self.model_defaults.len());
        for (model, tokens) in self.model_defaults {
            if model.len() > MAX_MODEL_NAME {
                return Err(ConfigError::new(
                    "model_default",
                    "a model name must be at most 256 bytes",
                ));
            }
            if tokens > MAX_ESTIMATE_TOKENS {
                return Err(ConfigError::new("model_default", "must be at most 2^40"));
            }
            model_defaults.insert(model, tokens);
        }
        Ok(CompletionHistory {
            shared: Arc::new(Shared {
                window: self.window,
                max_models: self.max_models,
                min_samples: self.min_samples,
                quantile_ppm: quantile_ppm as u64,
                default_output: self.default_output,
                model_defaults,
                state: Mutex::new(State::default()),
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn history(window: usize, max_models: usize, min_samples: usize) -> CompletionHistory {
        CompletionHistory::builder()
            .window(window)
            .max_models(max_models)
            .min_samples(min_samples)
            .build()
            .unwrap()
    }

    #[test]
    fn ranks_are_exact() {
        assert_eq!(rank(950_000, 100), 95);
        assert_eq!(rank(950_000, 20), 19);
        assert_eq!(rank(950_000, 1), 1);
        assert_eq!(rank(500_000, 3), 2);
        assert_eq!(rank(1_000_000, 7), 7);
        assert_eq!(rank(1, 7), 1);
    }

    #[test]
    fn nothing_before_min_samples() {
        let h = history(8, 4, 3);
        h.record("m", 10);
        h.record("m", 30);
        assert_eq!(h.quantile("m"), None);
        assert_eq!(h.output_estimate("m"), DEFAULT_OUTPUT_TOKENS);
        h.record("m", 20);
        assert_eq!(h.quantile("m"), Some(30));
    }

    #[test]
    fn the_ring_forgets_the_oldest() {
        let h = history(4, 4, 1);
        for t in [1000, 1, 2, 3, 4] {
            h.record("m", t);
        }
        assert_eq!(h.samples("m"), 4);
        assert_eq!(h.quantile("m"), Some(4));
    }

    #[test]
    fn the_least_recently_used_model_is_evicted() {
        let h = history(4, 2, 1);
        h.record("a", 1);
        h.record("b", 2);
        // "a" is used again, so "b" is now the least recently used.
        assert_eq!(h.quantile("a"), Some(1));
        h.record("c", 3);
        assert_eq!(h.models(), 2);
        assert_eq!(h.samples("b"), 0);
        assert_eq!(h.samples("a"), 1);
        assert_eq!(h.samples("c"), 1);
    }

    #[test]
    fn long_names_are_ignored_and_values_capped() {
        let h = history(4, 2, 1);
        let long = "m".repeat(MAX_MODEL_NAME + 1);
        h.record(&long, 5);
        assert_eq!(h.models(), 0);
        h.record("m", u64::MAX);
        assert_eq!(h.quantile("m"), Some(MAX_ESTIMATE_TOKENS));
    }

    #[test]
    fn settings_are_checked() {
        let field = |b: CompletionHistoryBuilder| b.build().unwrap_err().field();
        let b = CompletionHistory::builder;
        assert_eq!(field(b().window(0)), "window");
        assert_eq!(field(b().window(MAX_WINDOW + 1)), "window");
        assert_eq!(field(b().max_models(0)), "max_models");
        assert_eq!(field(b().min_samples(0)), "min_samples");
        assert_eq!(field(b().window(10).min_samples(11)), "min_samples");
        for q in [0.0, -0.5, 1.01, f64::NAN, f64::INFINITY, 1e-9] {
            assert_eq!(field(b().quantile(q)), "quantile", "{q}");
        }
        assert_eq!(field(b().default_output(u64::MAX)), "default_output");
        assert_eq!(field(b().model_default("m", u64::MAX)), "model_default");
        assert!(b().quantile(1.0).min_samples(1).window(1).build().is_ok());
    }

    proptest::proptest! {
        /// Whatever the models and completions, the history holds at most
        /// `max_models` models and `window` completions of each.
        #[test]
        fn memory_is_bounded(
            window in 1usize..16,
            max_models in 1usize..8,
            ops in proptest::collection::vec((0u8..40, proptest::num::u64::ANY), 0..400),
        ) {
            let h = history(window, max_models, 1);
            for (model, tokens) in ops {
                let name = format!("model-{model}");
                h.record(&name, tokens);
                proptest::prop_assert!(h.models() <= max_models);
                proptest::prop_assert!(h.samples(&name) <= window);
                proptest::prop_assert!(h.samples(&name) >= 1);
            }
        }

        /// The kept quantile is the nearest-rank quantile of the last
        /// `window` completions, as a full sort finds it.
        #[test]
        fn quantile_matches_a_sort(
            window in 1usize..64,
            ppm in 1u64..=1_000_000,
            values in proptest::collection::vec(0u64..10_000, 1..200),
        ) {
            let h = CompletionHistory::builder()
                .window(window)
                .min_samples(1)
                .quantile(ppm as f64 / 1e6)
                .build()
                .unwrap();
            for (i, &v) in values.iter().enumerate() {
                h.record("m", v);
                let start = (i + 1).saturating_sub(window);
                let mut recent = values[start..=i].to_vec();
                recent.sort_unstable();
                let expected = recent[rank(ppm, recent.len()) - 1];
                proptest::prop_assert_eq!(h.quantile("m"), Some(expected));
            }
        }
    }
}
