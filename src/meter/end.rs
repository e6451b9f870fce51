//! How a metered response ended, and who hears of it. Free of HTTP: typed
//! responses report through the same values.

use crate::classify::Usage;

/// How a metered body ended, with what was read from it: the one value a
/// [`UsageBody`](super::UsageBody) hands its callback.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BodyEnd {
    /// The body was read to its end.
    Complete {
        /// The provider's usage; `None` if the body carried none (a stream
        /// requested without `stream_options.include_usage`, an error body,
        /// a format this module does not know).
        usage: Option<Usage>,
        /// The generated text the body carried.
        output: OutputSeen,
    },
    /// The body failed or was dropped before its end: the provider may have
    /// generated (and billed) more than was read.
    CutOff {
        /// The usage reported before the cut, usually `None`: providers
        /// report it last. In an Anthropic stream it can be the input from
        /// `message_start` with the output counted so far.
        usage: Option<Usage>,
        /// The generated text read before the cut.
        output: OutputSeen,
        /// Why the body ended early.
        reason: CutOffReason,
    },
}

impl BodyEnd {
    /// The usage the provider reported, if any.
    pub fn usage(&self) -> Option<Usage> {
        match self {
            BodyEnd::Complete { usage, .. } | BodyEnd::CutOff { usage, .. } => *usage,
        }
    }

    /// The generated text read.
    pub fn output(&self) -> OutputSeen {
        match self {
            BodyEnd::Complete { output, .. } | BodyEnd::CutOff { output, .. } => *output,
        }
    }

    /// Whether the body was read to its end.
    pub fn is_complete(&self) -> bool {
        matches!(self, BodyEnd::Complete { .. })
    }
}

/// Why a body ended before its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CutOffReason {
    /// The inner body returned an error (a reset, a timeout, a broken
    /// connection).
    Error,
    /// The body was dropped before its end (the caller went away).
    Dropped,
}

/// Generated text seen in a body, whether or not its usage arrived: what a
/// caller can go on when a stream is cut off before its usage.
///
/// Generated text is, in an event stream, what sits under a `delta`: a
/// string `delta` (Responses API `*.delta` events) and the `content`, `text`,
/// `arguments`, `partial_json`, `thinking`, `reasoning`, `reasoning_content`
/// and `refusal` strings inside a `delta` object (OpenAI chat chunks,
/// Anthropic `content_block_delta`). In a JSON body it is every string under
/// one of those keys. Keys, ids, roles, finish reasons and the `.done`
/// events that repeat the text are not counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct OutputSeen {
    /// Bytes of generated text, as escaped in the JSON (`\n` counts 2,
    /// `\u00e9` counts 6): at least its UTF-8 length for text without
    /// escapes, a little more with them.
    pub text_bytes: u64,
    /// Events that carried some generated text (0 for a JSON body). OpenAI
    /// sends about one token per chunk, so this is close to the tokens
    /// streamed; Anthropic sends several per event.
    pub text_events: u64,
}

impl OutputSeen {
    /// A rough count of the output tokens this text is: the larger of
    /// [`text_events`](Self::text_events) and
    /// [`text_bytes`](Self::text_bytes) / 4 rounded up (the usual four
    /// characters per token). An estimate, not a bound: text in scripts
    /// with fewer bytes per token counts low.
    pub const fn estimated_tokens(&self) -> u64 {
        let by_bytes = self.text_bytes.div_ceil(4);
        if by_bytes > self.text_events {
            by_bytes
        } else {
            self.text_events
        }
    }
}

/// What hears how a metered response ended: [`BodyEnd`] once.
///
/// Implemented for every `FnOnce(BodyEnd)`; a layer can implement it for a
/// named type of its own, so the response type that carries it can be
/// named too.
pub trait OnBodyEnd {
    /// Takes the end.
    fn on_end(self, end: BodyEnd);
}

impl<F: FnOnce(BodyEnd)> OnBodyEnd for F {
    fn on_end(self, end: BodyEnd) {
        self(end)
    }
}
