//! The default estimator for OpenAI-compatible (and Anthropic-style) JSON
//! request bodies.

use serde_json::{Map, Value};

use super::history::{CompletionHistory, DEFAULT_OUTPUT_TOKENS, MAX_MODEL_NAME};
use super::tokens::{cap, Estimate, MAX_ESTIMATE_TOKENS};

/// Characters per token of the text estimate: about 4 for English text in
/// the tokenizers of current OpenAI and Anthropic models.
pub const CHARS_PER_TOKEN: u64 = 4;
/// Tokens of overhead per message: OpenAI's cookbook counts 3 per message
/// for current models, plus 1 for a `name` (the role's own token is in the
/// 3); 4 covers both.
pub const MESSAGE_TOKENS: u64 = 4;
/// Tokens that prime the reply (`<|start|>assistant<|message|>`): 3, as
/// OpenAI's cookbook counts, once per request.
pub const REPLY_TOKENS: u64 = 3;
/// Tokens of one image, audio, file or document part: 765, what OpenAI
/// counts for a 1024×1024 image at high detail (85 plus 4 tiles of 170).
/// Its data (a URL, or base64 that may run to megabytes) is not counted as
/// text.
pub const MEDIA_PART_TOKENS: u64 = 765;
/// The most choices (`n`) a request is taken to ask for: 128, OpenAI's
/// documented maximum.
pub const MAX_CHOICES: u64 = 128;
/// The deepest nesting the estimator reads; values below it count nothing.
/// Bodies parsed by serde_json stop at 128 levels already; this bounds the
/// recursion on a [`Value`] built in code too.
const MAX_DEPTH: usize = 128;

/// Content part types counted as [`MEDIA_PART_TOKENS`], not as text.
const MEDIA_TYPES: [&str; 10] = [
    "image_url",
    "image",
    "input_image",
    "input_audio",
    "audio",
    "file",
    "input_file",
    "document",
    "video",
    "video_url",
];

/// Output fields, in the order they are read: the first that holds a count
/// is the request's maximum.
const MAX_FIELDS: [&str; 3] = ["max_completion_tokens", "max_tokens", "max_output_tokens"];

/// Estimates the tokens of a chat request from its JSON body, the way
/// providers admit it: the prompt from its characters, the output from the
/// request's maximum.
///
/// # The formula
///
/// ```text
/// input  = ceil(characters / 4) + 4 * messages + 765 * media parts + 3
/// output = maximum * n                (maximum: max_completion_tokens,
///                                      else max_tokens, else max_output_tokens)
///        | learned or default * n     (no maximum)
/// total  = input + output
/// ```
///
/// **Characters** (Unicode scalar values, not bytes) are counted in:
///
/// - `messages` (Chat Completions and Anthropic Messages), each one
///   message: its `content` — a string, or an array of parts where a part
///   with a `text` counts its text, an image, audio, file or document part
///   (`image_url`, `image`, `input_image`, `input_audio`, `file`,
///   `input_file`, `document`, ...) counts [`MEDIA_PART_TOKENS`] and none
///   of its data, and any other part (`tool_use`, `tool_result`,
///   `thinking`, ...) counts its keys and string values, reading a nested
///   `content` by the same rules; and every other field of the message but
///   `role` and `type` (`name`, `tool_calls` with their arguments, ...): its
///   keys and string values;
/// - `system` (Anthropic) and `instructions` (Responses): one message more
///   each;
/// - `input` (Responses) and `prompt` (Completions): a string is one
///   message, an array one message per item;
/// - `tools`, `functions`, `tool_choice`, `response_format` and `text` (the
///   Responses API's output format): the keys and string values of their
///   definitions, a coarse stand-in for the schema the provider renders
///   into the prompt.
///
/// Numbers, booleans and nulls count nothing; other fields (`model`,
/// `temperature`, ...) count nothing. [`MESSAGE_TOKENS`] is added per
/// message and [`REPLY_TOKENS`] once.
///
/// **Output** is read from the first of `max_completion_tokens`,
/// `max_tokens` and `max_output_tokens` that holds a count, times `n`
/// (Chat Completions' number of choices; 1 when absent). Without a maximum
/// it is the [`CompletionHistory`]'s answer for the body's `model`, if the
/// estimator has one, else [`default_output`](Self::default_output) (256
/// by default), times `n`.
///
/// # Hostile bodies
///
/// Estimating never panics and never fails:
///
/// - an empty body (or one of whitespace only) asks for no tokens: 0, 0
///   (a `GET` through the same stack, say);
/// - a body that is not JSON, or JSON but not an object, is estimated from
///   its length: `ceil(bytes / 4)` input tokens, and the default output
///   (no model is known to learn from);
/// - a count (`max_*`, `n`) is read from a JSON number, or from a string
///   holding one (lenient servers accept `"100"`): a fraction is rounded
///   up, anything above [`MAX_ESTIMATE_TOKENS`] is that bound. A negative
///   count is no count at all — some servers (llama.cpp) read
///   `max_tokens: -1` as "no limit", so it falls through to the next field
///   or the default, never to 0; so does anything else (`true`, `null`, an
///   array, `"many"`);
/// - `n` is at least 1 and at most [`MAX_CHOICES`];
/// - input and output are each at most [`MAX_ESTIMATE_TOKENS`].
///
/// ```
/// use llm_sluice::estimate::ChatEstimator;
///
/// let body = br#"{
///     "model": "gpt-4o-mini",
///     "messages": [
///         {"role": "system", "content": "You are terse."},
///         {"role": "user", "content": "Name three primes."}
///     ],
///     "max_tokens": 50,
///     "n": 2
/// }"#;
/// let estimate = ChatEstimator::new().estimate(body);
/// // 14 + 18 characters: ceil(32 / 4) = 8; 2 messages: 8; the reply: 3.
/// assert_eq!(estimate.input, 8 + 8 + 3);
/// assert_eq!(estimate.output, 100);
/// assert_eq!(estimate.total, 119);
///
/// // Not JSON: a quarter of its length, and the default output.
/// let estimate = ChatEstimator::new().estimate(b"not json at all!");
/// assert_eq!((estimate.input, estimate.output), (4, 256));
/// ```
#[derive(Debug, Clone)]
pub struct ChatEstimator {
    default_output: u64,
    history: Option<CompletionHistory>,
}

/// What the layer needs besides the estimate: whom to teach the completion.
#[derive(Debug)]
pub(crate) struct Inspection {
    pub(crate) estimate: Estimate,
    /// The model and the number of choices, when the history answered the
    /// output (the request set no maximum).
    pub(crate) learn: Option<(Box<str>, u64)>,
}

impl From<Estimate> for Inspection {
    fn from(estimate: Estimate) -> Self {
        Inspection {
            estimate,
            learn: None,
        }
    }
}

impl ChatEstimator {
    /// An estimator with a default output of 256 tokens and no history.
    pub const fn new() -> Self {
        ChatEstimator {
            default_output: DEFAULT_OUTPUT_TOKENS,
            history: None,
        }
    }

    /// The output per choice of a request without a maximum, when the
    /// estimator has no history (default 256), capped at
    /// [`MAX_ESTIMATE_TOKENS`]. With a history, the history's defaults
    /// apply instead.
    pub fn default_output(mut self, tokens: u64) -> Self {
        self.default_output = cap(tokens);
        self
    }

    /// Learn the output of requests without a maximum from `history`,
    /// keyed by the body's `model`.
    pub fn history(mut self, history: CompletionHistory) -> Self {
        self.history = Some(history);
        self
    }

    /// The history the estimator asks, if any.
    pub fn completion_history(&self) -> Option<&CompletionHistory> {
        self.history.as_ref()
    }

    /// The estimate of a JSON request body. See the [formula](Self#the-formula).
    pub fn estimate(&self, body: &[u8]) -> Estimate {
        self.inspect_bytes(body).estimate
    }

    /// The estimate of a body already parsed (the same as
    /// [`estimate`](Self::estimate) on its bytes, for a caller that parsed
    /// it anyway). A value that is not an object is estimated like a body
    /// that is not one, from the characters of its keys and strings (its
    /// JSON text is not rebuilt to measure it).
    pub fn estimate_json(&self, body: &Value) -> Estimate {
        match body {
            Value::Object(map) => self.inspect(map).estimate,
            other => {
                let mut count = Count::default();
                count.strings(other, 0);
                self.fallback(count.chars)
            }
        }
    }

    fn inspect_bytes(&self, body: &[u8]) -> Inspection {
        match serde_json::from_slice::<Value>(body) {
            Ok(Value::Object(map)) => self.inspect(&map),
            _ => self.unparsed(body).into(),
        }
    }

    /// The estimate of a body that is not a JSON object: none for an empty
    /// one, else from its length.
    pub(crate) fn unparsed(&self, body: &[u8]) -> Estimate {
        if body.iter().all(u8::is_ascii_whitespace) {
            Estimate::default()
        } else {
            self.fallback(body.len() as u64)
        }
    }

    /// The estimate of a body that is not a JSON object, `len` bytes long.
    fn fallback(&self, len: u64) -> Estimate {
        let output = match &self.history {
            Some(history) => history.default_output(),
            None => self.default_output,
        };
        Estimate::new(len.div_ceil(CHARS_PER_TOKEN), output)
    }

    pub(crate) fn inspect(&self, body: &Map<String, Value>) -> Inspection {
        let mut count = Count::default();
        if let Some(messages) = body.get("messages") {
            match messages {
                Value::Array(items) => items.iter().for_each(|m| count.message(m, 0)),
                other => count.message(other, 0),
            }
        }
        for key in ["system", "instructions"] {
            if let Some(v) = body.get(key).filter(|v| !v.is_null()) {
                count.message(v, 0);
            }
        }
        for key in ["input", "prompt"] {
            match body.get(key) {
                Some(Value::Array(items)) => items.iter().for_each(|m| count.message(m, 0)),
                Some(Value::Null) | None => {}
                Some(other) => count.message(other, 0),
            }
        }
        for key in [
            "tools",
            "functions",
            "tool_choice",
            "response_format",
            "text",
        ] {
            if let Some(v) = body.get(key) {
                count.strings(v, 0);
            }
        }
        let input = count
            .chars
            .div_ceil(CHARS_PER_TOKEN)
            .saturating_add(count.messages.saturating_mul(MESSAGE_TOKENS))
            .saturating_add(count.media.saturating_mul(MEDIA_PART_TOKENS))
            .saturating_add(REPLY_TOKENS);

        let choices = body
            .get("n")
            .and_then(read_count)
            .unwrap_or(1)
            .clamp(1, MAX_CHOICES);
        let max = MAX_FIELDS
            .iter()
            .find_map(|field| body.get(*field).and_then(read_count));
        let model = body.get("model").and_then(Value::as_str);
        let (per_choice, learn) = match (max, &self.history) {
            (Some(max), _) => (max, None),
            (None, Some(history)) => match model {
                Some(model) => (
                    history.output_estimate(model),
                    (model.len() <= MAX_MODEL_NAME).then(|| (model.into(), choices)),
                ),
                None => (history.default_output(), None),
            },
            (None, None) => (self.default_output, None),
        };
        Inspection {
            estimate: Estimate::new(input, per_choice.saturating_mul(choices)),
            learn,
        }
    }
}

impl Default for ChatEstimator {
    fn default() -> Self {
        ChatEstimator::new()
    }
}

/// A count from a JSON value: a non-negative number (a fraction rounded up,
/// capped at [`MAX_ESTIMATE_TOKENS`]), or a string holding one. Anything
/// else, negative numbers included, is no count.
fn read_count(value: &Value) -> Option<u64> {
    match value {
        Value::Number(n) => match n.as_u64() {
            Some(n) => Some(cap(n)),
            None => n.as_f64().and_then(from_float),
        },
        Value::String(s) => {
            let s = s.trim();
            match s.parse::<u64>() {
                Ok(n) => Some(cap(n)),
                Err(_) => s.parse::<f64>().ok().and_then(from_float),
            }
        }
        _ => None,
    }
}

/// A float as a count: rounded up, capped; negative or not finite is none.
fn from_float(f: f64) -> Option<u64> {
    if !f.is_finite() || f < 0.0 {
        None
    } else if f >= MAX_ESTIMATE_TOKENS as f64 {
        Some(MAX_ESTIMATE_TOKENS)
    } else {
        Some(f.ceil() as u64)
    }
}

/// What the input counts of a body.
#[derive(Debug, Default)]
struct Count {
    chars: u64,
    messages: u64,
    media: u64,
}

impl Count {
    fn text(&mut self, s: &str) {
        self.chars = self.chars.saturating_add(s.chars().count() as u64);
    }

    /// One message: its content by the part rules, its other fields but
    /// `role` and `type` by their keys and strings.
    fn message(&mut self, message: &Value, depth: usize) {
        self.messages += 1;
        match message {
            Value::Object(fields) => {
                for (key, value) in fields {
                    match key.as_str() {
                        "role" | "type" => {}
                        "content" => self.content(value, depth + 1),
                        _ => {
                            self.text(key);
                            self.strings(value, depth + 1);
                        }
                    }
                }
            }
            other => self.content(other, depth + 1),
        }
    }

    /// Message content: a string, or parts.
    fn content(&mut self, content: &Value, depth: usize) {
        if depth > MAX_DEPTH {
            return;
        }
        match content {
            Value::String(s) => self.text(s),
            Value::Array(parts) => parts.iter().for_each(|p| self.content(p, depth + 1)),
            Value::Object(part) => {
                if let Some(Value::String(text)) = part.get("text") {
                    self.text(text);
                } else if part
                    .get("type")
                    .and_then(Value::as_str)
                    .is_some_and(|t| MEDIA_TYPES.contains(&t))
                {
                    self.media += 1;
                } else {
                    for (key, value) in part {
                        match key.as_str() {
                            "type" => {}
                            "content" => self.content(value, depth + 1),
                            _ => {
                                self.text(key);
                                self.strings(value, depth + 1);
                            }
                        }
                    }
                }
            }
            Value::Number(_) | Value::Bool(_) | Value::Null => {}
        }
    }

    /// The keys and string values of any JSON.
    fn strings(&mut self, value: &Value, depth: usize) {
        if depth > MAX_DEPTH {
            return;
        }
        match value {
            Value::String(s) => self.text(s),
            Value::Array(items) => items.iter().for_each(|v| self.strings(v, depth + 1)),
            Value::Object(fields) => {
                for (key, value) in fields {
                    self.text(key);
                    self.strings(value, depth + 1);
                }
            }
            Value::Number(_) | Value::Bool(_) | Value::Null => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn counts(value: Value) -> Option<u64> {
        read_count(&value)
    }

    #[test]
    fn counts_are_read_leniently_and_bounded() {
        assert_eq!(counts(json!(100)), Some(100));
        assert_eq!(counts(json!(0)), Some(0));
        assert_eq!(counts(json!(99.2)), Some(100));
        assert_eq!(counts(json!(-0.0)), Some(0));
        assert_eq!(counts(json!(1e300)), Some(MAX_ESTIMATE_TOKENS));
        assert_eq!(counts(json!(u64::MAX)), Some(MAX_ESTIMATE_TOKENS));
        assert_eq!(counts(json!(" 42 ")), Some(42));
        assert_eq!(counts(json!("7.5")), Some(8));
        assert_eq!(counts(json!("1e400")), None);
        assert_eq!(
            counts(json!("99999999999999999999999")),
            Some(MAX_ESTIMATE_TOKENS)
        );
        for none in [
            json!(-1),
            json!(-0.5),
            json!("-3"),
            json!("NaN"),
            json!("inf"),
            json!("many"),
            json!(true),
            json!(null),
            json!([1]),
            json!({"n": 1}),
        ] {
            assert_eq!(read_count(&none), None, "{none}");
        }
    }

    #[test]
    fn deep_values_built_in_code_do_not_overflow_the_stack() {
        let deep = || {
            let mut deep = json!("abcd");
            for _ in 0..100_000 {
                deep = Value::Array(vec![deep]);
            }
            deep
        };
        let mut message = Map::new();
        message.insert("content".into(), deep());
        let mut body = Map::new();
        body.insert(
            "messages".into(),
            Value::Array(vec![Value::Object(message)]),
        );
        body.insert("max_tokens".into(), json!(1));
        let body = Value::Object(body);
        let estimate = ChatEstimator::new().estimate_json(&body);
        assert_eq!(estimate.input, 4 + 3);
        let other = deep();
        assert_eq!(ChatEstimator::new().estimate_json(&other).input, 0);
        // serde_json drops nested values recursively; keep the test's own
        // drops from overflowing the stack.
        std::mem::forget(body);
        std::mem::forget(other);
    }
}
