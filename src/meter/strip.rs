//! Removing the usage-only chunk from a chat stream whose caller did not ask
//! for it.

use std::collections::VecDeque;
use std::fmt;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use super::json::find2;
use super::scanner::BodyKind;
use super::sse::{EventSink, SseFramer};
use super::MAX_HELD_EVENT_BYTES;

pin_project! {
    /// A `text/event-stream` body with the provider's usage-only chat chunk
    /// removed: the event whose data is a JSON object with `"choices": []`
    /// and a `usage` object, which an OpenAI-compatible server sends just
    /// before `data: [DONE]` when the request set
    /// `stream_options.include_usage`. Every other byte passes unchanged.
    ///
    /// Wrap a response whose request had `include_usage` added by a proxy
    /// (the caller did not ask for it), so that the caller receives what it
    /// would have received without the proxy. To read the usage as well,
    /// put a [`UsageBody`](super::UsageBody) inside, on the unchanged
    /// stream. See the [module docs](super#removing-a-usage-chunk-the-caller-did-not-ask-for)
    /// for the rules.
    ///
    /// ```
    /// use bytes::Bytes;
    /// use http_body_util::{BodyExt, Full};
    /// use llm_sluice::meter::StripUsageChunk;
    ///
    /// let stream = concat!(
    ///     "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"}}],\"usage\":null}\n\n",
    ///     "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":1}}\n\n",
    ///     "data: [DONE]\n\n",
    /// );
    /// let body = StripUsageChunk::new(Full::new(Bytes::from(stream)));
    /// let read = futures::executor::block_on(body.collect()).unwrap().to_bytes();
    /// assert_eq!(
    ///     read,
    ///     concat!(
    ///         "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"}}],\"usage\":null}\n\n",
    ///         "data: [DONE]\n\n",
    ///     )
    /// );
    /// ```
    ///
    /// # Frames
    ///
    /// Data comes out as [`Bytes`]: an input `Bytes` is cut into slices of
    /// itself, never copied, except for the start of an event that is still
    /// undecided when its frame ends, which is copied aside until it is
    /// decided (at most [`MAX_HELD_EVENT_BYTES`]). Other `Buf`s are turned
    /// into `Bytes` with [`Buf::copy_to_bytes`]. Where the frames are cut
    /// may differ from the input's; the bytes, concatenated, are the input's
    /// minus the removed events, however the input was split. Trailers and
    /// errors pass through, after the data held before them.
    ///
    /// `size_hint` has no exact size and no lower bound (the body may
    /// shrink): its upper bound is the inner body's plus what is held.
    /// `is_end_stream` is true once the inner body's end is known and
    /// nothing is held or queued.
    ///
    /// # Cancel safety
    ///
    /// No waiting of its own: dropping it drops what it holds (at most one
    /// event's start) with the inner body.
    pub struct StripUsageChunk<B>
    where
        B: Body,
    {
        #[pin]
        inner: B,
        // `None`: the body passes through untouched.
        strip: Option<Stripper>,
        // Data ready to hand out, in order.
        ready: VecDeque<Bytes>,
        // Trailers or an error that come after `ready`.
        after: Option<Result<Frame<Bytes>, B::Error>>,
        // The inner body has returned its end.
        done: bool,
    }
}

impl<B: Body> StripUsageChunk<B> {
    /// Wraps `inner`, a `text/event-stream` body, removing its usage-only
    /// chat chunk.
    pub fn new(inner: B) -> Self {
        Self::with(inner, Some(Stripper::new()))
    }

    /// Wraps `inner` without touching it: frames pass as they come (their
    /// data as [`Bytes`]), and the hints are the inner body's. What to hand
    /// on where the type must be the same as a stripped body's.
    pub fn passthrough(inner: B) -> Self {
        Self::with(inner, None)
    }

    fn with(inner: B, strip: Option<Stripper>) -> Self {
        StripUsageChunk {
            inner,
            strip,
            ready: VecDeque::new(),
            after: None,
            done: false,
        }
    }

    /// Wraps the body of `response`: stripped if its headers say it is a
    /// readable event stream (see [`BodyKind::from_headers`]:
    /// `content-type: text/event-stream` and no `content-encoding`, since a
    /// compressed body cannot be read as it passes), otherwise passed
    /// through. A stripped body may shrink, so its `content-length`, if it
    /// had one, is removed.
    pub fn wrap_response(response: http::Response<B>) -> http::Response<Self> {
        let (mut parts, body) = response.into_parts();
        let body = if BodyKind::from_headers(&parts.headers) == BodyKind::EventStream {
            parts.headers.remove(http::header::CONTENT_LENGTH);
            Self::new(body)
        } else {
            Self::passthrough(body)
        };
        http::Response::from_parts(parts, body)
    }

    /// Whether the body is being stripped (not passed through).
    pub fn is_stripping(&self) -> bool {
        self.strip.is_some()
    }

    /// Events removed so far.
    pub fn removed(&self) -> u64 {
        self.strip.as_ref().map_or(0, |strip| strip.state.removed)
    }

    /// The wrapped body.
    pub fn get_ref(&self) -> &B {
        &self.inner
    }

    fn held(&self) -> usize {
        self.strip
            .as_ref()
            .map_or(0, |strip| strip.state.held.len())
    }
}

fn into_bytes<D: Buf>(mut data: D) -> Bytes {
    data.copy_to_bytes(data.remaining())
}

impl<B: Body> Body for StripUsageChunk<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let mut this = self.project();
        let Some(strip) = this.strip.as_mut() else {
            return this
                .inner
                .poll_frame(cx)
                .map(|frame| frame.map(|frame| frame.map(|frame| frame.map_data(into_bytes))));
        };
        loop {
            if let Some(data) = this.ready.pop_front() {
                return Poll::Ready(Some(Ok(Frame::data(data))));
            }
            if let Some(after) = this.after.take() {
                return Poll::Ready(Some(after));
            }
            if *this.done {
                return Poll::Ready(None);
            }
            match ready!(this.inner.as_mut().poll_frame(cx)) {
                None => {
                    *this.done = true;
                    strip.release(this.ready);
                }
                Some(Err(error)) => {
                    strip.release(this.ready);
                    *this.after = Some(Err(error));
                }
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => strip.feed(into_bytes(data), this.ready),
                    Err(frame) => {
                        strip.release(this.ready);
                        *this.after = Some(Ok(frame.map_data(into_bytes)));
                    }
                },
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ready.is_empty()
            && self.after.is_none()
            && self.held() == 0
            && (self.done || self.inner.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        if self.strip.is_none() {
            return self.inner.size_hint();
        }
        let mut hint = SizeHint::new();
        if let Some(upper) = self.inner.size_hint().upper() {
            let queued: usize = self.ready.iter().map(Bytes::len).sum();
            let buffered = queued.saturating_add(self.held()) as u64;
            hint.set_upper(if self.done { 0 } else { upper }.saturating_add(buffered));
        }
        hint
    }
}

impl<B: Body + fmt::Debug> fmt::Debug for StripUsageChunk<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StripUsageChunk")
            .field("inner", &self.inner)
            .field("stripping", &self.is_stripping())
            .field("removed", &self.removed())
            .field("held", &self.held())
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

/// The pure part: SSE bytes in, the bytes to hand on out.
#[derive(Debug)]
struct Stripper {
    framer: SseFramer,
    state: State,
}

#[derive(Debug)]
struct State {
    /// The current event may still be the usage-only chunk: its bytes are
    /// not handed on yet.
    holding: bool,
    /// Where the current event starts in the frame being fed (0 if it began
    /// in an earlier frame: its bytes from there are in `held`).
    start: usize,
    /// Its first byte's offset in the stream.
    start_offset: u64,
    /// The shape check of its data, once `live`.
    shape: Shape,
    /// `shape` has read all the event's data so far and reads the rest as
    /// it comes. An event is checked live only from the end of the frame it
    /// began in (if it is still undecided there): until then only `empty`
    /// is kept, since an event that ends in the frame it began in is decided
    /// at its end, which the shape check could not bring forward.
    live: bool,
    /// Whether its data so far has an empty array (`[` and `]` with only
    /// whitespace between), which the usage chunk's `"choices": []` is.
    empty: EmptyArray,
    /// The current event's bytes from earlier frames, while `holding`.
    held: BytesMut,
    /// Stream offset of the first byte of the frame being fed.
    offset: u64,
    /// The last event ended in a CR: the offset a LF completing it would
    /// have, and whether the event was removed.
    cr_end: Option<(u64, bool)>,
    removed: u64,
}

impl Stripper {
    fn new() -> Self {
        Stripper {
            framer: SseFramer::new(),
            state: State {
                holding: true,
                start: 0,
                start_offset: 0,
                shape: Shape::new(),
                live: false,
                empty: EmptyArray::default(),
                held: BytesMut::new(),
                offset: 0,
                cr_end: None,
                removed: 0,
            },
        }
    }

    /// Reads the next frame of the stream; what is decided goes to `out`.
    fn feed(&mut self, frame: Bytes, out: &mut VecDeque<Bytes>) {
        let mut feed = Feed {
            state: &mut self.state,
            frame: &frame,
            out,
            run: 0,
        };
        self.framer.feed(&frame, &mut feed);
        let Feed {
            state, out, run, ..
        } = feed;
        let len = frame.len();
        if state.holding {
            let event_len = state.held.len() + (len - state.start);
            if event_len > MAX_HELD_EVENT_BYTES {
                // Too long to be a usage chunk: it passes as it comes.
                state.stop_holding(out);
                push(out, &frame, run, len);
            } else {
                if !state.live {
                    state.check_live(&frame);
                }
                if state.holding {
                    push(out, &frame, run, state.start);
                    state.held.extend_from_slice(&frame[state.start..]);
                } else {
                    push(out, &frame, run, len);
                }
            }
        } else {
            push(out, &frame, run, len);
        }
        state.start = 0;
        state.offset += len as u64;
    }

    /// Hands on what is held: the stream ended (or failed, or reached its
    /// trailers) inside an event, which is then not removed.
    fn release(&mut self, out: &mut VecDeque<Bytes>) {
        self.state.stop_holding(out);
    }
}

impl State {
    /// A framer at the current event's start.
    fn event_framer(&self) -> SseFramer {
        if self.start_offset == 0 {
            SseFramer::new()
        } else {
            SseFramer::after_first_line()
        }
    }

    /// The current event, begun at `start` in `frame`, is still undecided
    /// at the frame's end: its data so far is read into the shape check,
    /// which reads the rest live, so that the event is handed on as soon as
    /// its data rules it out.
    fn check_live(&mut self, frame: &[u8]) {
        struct Check<'a>(&'a mut Shape);
        impl EventSink for Check<'_> {
            fn data(&mut self, bytes: &[u8]) {
                self.0.feed(bytes);
            }
            fn dispatch(&mut self, _end: usize) {}
        }
        debug_assert!(self.holding && self.held.is_empty());
        self.event_framer()
            .feed(&frame[self.start..], &mut Check(&mut self.shape));
        self.live = true;
        if self.shape.is_ruled_out() {
            self.holding = false;
        }
    }

    /// The current event is not the usage-only chunk: what is held of it
    /// goes out, and its bytes from here pass as they come.
    fn stop_holding(&mut self, out: &mut VecDeque<Bytes>) {
        if self.holding {
            self.holding = false;
            if !self.held.is_empty() {
                out.push_back(self.held.split().freeze());
            }
        }
    }

    /// Whether the current event, which ends at `end` in `frame`, is the
    /// usage-only chunk.
    ///
    /// Called at the end of an event that was held to its end (so its bytes
    /// are all here: `held` and `frame[start..end]`, at most
    /// [`MAX_HELD_EVENT_BYTES`]) and could be the chunk: they are framed
    /// again to collect the data, which must pass the [`Shape`] check (if it
    /// was not live) and serde_json.
    fn is_usage_only(&self, frame: &[u8], end: usize) -> bool {
        if self.live {
            if !self.shape.is_candidate() {
                return false;
            }
        } else if !self.empty.found {
            return false;
        }
        struct Collect(Vec<u8>);
        impl EventSink for Collect {
            fn data(&mut self, bytes: &[u8]) {
                self.0.extend_from_slice(bytes);
            }
            fn dispatch(&mut self, _end: usize) {}
        }
        let mut framer = self.event_framer();
        let mut data = Collect(Vec::with_capacity(self.held.len() + end - self.start));
        framer.feed(&self.held, &mut data);
        framer.feed(&frame[self.start..end], &mut data);
        if !self.live {
            let mut shape = Shape::new();
            shape.feed(&data.0);
            if !shape.is_candidate() {
                return false;
            }
        }
        let Ok(serde_json::Value::Object(chunk)) = serde_json::from_slice(&data.0) else {
            return false;
        };
        matches!(chunk.get("choices"), Some(serde_json::Value::Array(choices)) if choices.is_empty())
            && chunk.get("usage").is_some_and(serde_json::Value::is_object)
    }
}

/// Queues `frame[from..to]` if it is not empty.
fn push(out: &mut VecDeque<Bytes>, frame: &Bytes, from: usize, to: usize) {
    if from < to {
        out.push_back(if from == 0 && to == frame.len() {
            frame.clone()
        } else {
            frame.slice(from..to)
        });
    }
}

/// One frame being read.
struct Feed<'a> {
    state: &'a mut State,
    frame: &'a Bytes,
    out: &'a mut VecDeque<Bytes>,
    /// Where the bytes of this frame not yet queued start: up to the current
    /// event's start while it is held, to the current byte otherwise.
    run: usize,
}

impl EventSink for Feed<'_> {
    #[inline]
    fn data(&mut self, bytes: &[u8]) {
        let state = &mut *self.state;
        if state.holding {
            if !state.live {
                state.empty.feed(bytes);
            } else if !state.shape.feed(bytes) {
                state.stop_holding(self.out);
            }
        }
    }

    fn dispatch(&mut self, end: usize) {
        let state = &mut *self.state;
        let mut removed = false;
        if state.holding {
            let event_len = state.held.len() + (end - state.start);
            if event_len <= MAX_HELD_EVENT_BYTES && state.is_usage_only(self.frame, end) {
                push(self.out, self.frame, self.run, state.start);
                state.held.clear();
                self.run = end;
                state.removed = state.removed.saturating_add(1);
                removed = true;
            } else {
                state.stop_holding(self.out);
            }
        }
        let end_offset = state.offset + end as u64;
        state.cr_end = (self.frame[end - 1] == b'\r').then_some((end_offset, removed));
        state.holding = true;
        state.start = end;
        state.start_offset = end_offset;
        state.shape = Shape::new();
        state.live = false;
        state.empty = EmptyArray::default();
    }

    fn lf_after_cr(&mut self, at: usize) {
        let state = &mut *self.state;
        let at_offset = state.offset + at as u64;
        if let Some((cr_end, removed)) = state.cr_end.take() {
            if cr_end == at_offset {
                // The LF of the blank line that ended the last event: it
                // belongs to that event, not to the next.
                debug_assert!(state.holding && state.held.is_empty() && state.start == at);
                state.start = at + 1;
                state.start_offset = at_offset + 1;
                if removed {
                    self.run = at + 1;
                }
            }
        }
    }
}

/// JSON whitespace.
#[inline]
fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

/// Looks for an empty array (`[`, whitespace, `]`) in data read in pieces:
/// a cheap condition every usage chunk meets (its `"choices": []`) and
/// content chunks, whose `choices` has an element, rarely do. Strings are
/// not told apart (a `[]` in a string counts too): it only rules out.
#[derive(Debug, Clone, Copy, Default)]
struct EmptyArray {
    /// The last byte read that is not whitespace (0 before any).
    last: u8,
    found: bool,
}

impl EmptyArray {
    #[inline]
    fn feed(&mut self, s: &[u8]) {
        if self.found {
            return;
        }
        let mut from = 0;
        while let Some(off) = find2(&s[from..], b']', b']') {
            let at = from + off;
            let before = match s[..at].iter().rposition(|&b| !is_ws(b)) {
                Some(p) => s[p],
                None => self.last,
            };
            if before == b'[' {
                self.found = true;
                return;
            }
            from = at + 1;
        }
        if let Some(p) = s.iter().rposition(|&b| !is_ws(b)) {
            self.last = s[p];
        }
    }
}

/// The top-level keys the shape check tells apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TopKey {
    Other,
    Choices,
    Usage,
    /// A key written with an escape: none a usage chunk has.
    Escaped,
}

/// The longest key compared (`choices`).
const MAX_TOP_KEY: usize = 7;

/// A streaming check of an event's data: could it still be one JSON object
/// whose top-level keys are written without escapes, with one `choices`,
/// `[]`, and one `usage`, an object? It says no as early as it can
/// (`"choices":[{` in a content chunk, `"usage":null`, data that is not an
/// object), so that an event that is not the usage chunk is handed on at
/// once. It tracks the top level only (depth, strings, escapes, keys) and
/// does not validate the rest: serde_json does, at the event's end, for
/// what it lets through.
#[derive(Debug, Clone)]
struct Shape {
    /// A byte other than whitespace has been read.
    started: bool,
    /// The top-level object has closed.
    closed: bool,
    /// The data cannot be the usage-only chunk.
    no: bool,
    depth: u32,
    in_string: bool,
    escaped: bool,
    /// The string being read is at the top level (a key, if a colon
    /// follows).
    top_string: bool,
    /// It has an escape.
    key_escaped: bool,
    key: [u8; MAX_TOP_KEY],
    /// Bytes of the key read; `None` once it cannot be one we look for.
    key_len: Option<usize>,
    /// A top-level string just closed: the key it is if a colon follows.
    key_read: TopKey,
    /// A top-level key and its colon were read: its value comes next.
    value_of: TopKey,
    /// `choices` opened an array: the next token must close it.
    choices_open: bool,
    /// A `choices` key was read (its value must be `[]`).
    choices_seen: bool,
    /// `"choices": []` was read.
    choices_empty: bool,
    /// A `usage` key was read (its value must be an object).
    usage_seen: bool,
}

impl Shape {
    fn new() -> Self {
        Shape {
            started: false,
            closed: false,
            no: false,
            depth: 0,
            in_string: false,
            escaped: false,
            top_string: false,
            key_escaped: false,
            key: [0; MAX_TOP_KEY],
            key_len: Some(0),
            key_read: TopKey::Other,
            value_of: TopKey::Other,
            choices_open: false,
            choices_seen: false,
            choices_empty: false,
            usage_seen: false,
        }
    }

    /// The whole data was read and it has the shape.
    fn is_candidate(&self) -> bool {
        !self.no && self.closed
    }

    /// The data cannot be the usage-only chunk, whatever follows.
    fn is_ruled_out(&self) -> bool {
        self.no
    }

    fn push_key(&mut self, bytes: &[u8]) {
        if let Some(len) = self.key_len {
            let end = len + bytes.len();
            if end <= MAX_TOP_KEY {
                self.key[len..end].copy_from_slice(bytes);
                self.key_len = Some(end);
            } else {
                self.key_len = None;
            }
        }
    }

    fn no(&mut self) -> bool {
        self.no = true;
        false
    }

    /// Reads the next bytes of the data; false once it cannot be the
    /// usage-only chunk.
    fn feed(&mut self, s: &[u8]) -> bool {
        let mut i = 0;
        while i < s.len() {
            if self.no {
                return false;
            }
            if self.in_string {
                if self.escaped {
                    // The escaped byte belongs to the string whatever it is.
                    self.escaped = false;
                    i += 1;
                    continue;
                }
                match find2(&s[i..], b'"', b'\\') {
                    None => {
                        if self.top_string {
                            self.push_key(&s[i..]);
                        }
                        return true;
                    }
                    Some(off) => {
                        let at = i + off;
                        if self.top_string {
                            self.push_key(&s[i..at]);
                        }
                        if s[at] == b'\\' {
                            self.key_escaped = true;
                            self.escaped = true;
                        } else {
                            self.in_string = false;
                            if self.top_string {
                                self.key_read = match self.key_len.map(|len| &self.key[..len]) {
                                    _ if self.key_escaped => TopKey::Escaped,
                                    Some(b"choices") => TopKey::Choices,
                                    Some(b"usage") => TopKey::Usage,
                                    _ => TopKey::Other,
                                };
                            }
                        }
                        i = at + 1;
                    }
                }
                continue;
            }
            let b = s[i];
            i += 1;
            if is_ws(b) {
                continue;
            }
            if !self.started {
                self.started = true;
                if b != b'{' {
                    return self.no();
                }
                self.depth = 1;
                continue;
            }
            if self.closed {
                // Something after the object.
                return self.no();
            }
            if self.choices_open {
                self.choices_open = false;
                if b != b']' {
                    return self.no();
                }
                self.choices_empty = true;
                continue;
            }
            match std::mem::replace(&mut self.value_of, TopKey::Other) {
                TopKey::Choices if b == b'[' => {
                    self.choices_open = true;
                    continue;
                }
                TopKey::Usage if b == b'{' => {
                    self.depth += 1;
                    continue;
                }
                TopKey::Choices | TopKey::Usage => return self.no(),
                TopKey::Other | TopKey::Escaped => {}
            }
            let key = std::mem::replace(&mut self.key_read, TopKey::Other);
            match b {
                b'"' => {
                    self.in_string = true;
                    self.top_string = self.depth == 1;
                    self.key_escaped = false;
                    self.key_len = Some(0);
                }
                b':' if self.depth == 1 => {
                    let repeated = match key {
                        TopKey::Choices => std::mem::replace(&mut self.choices_seen, true),
                        TopKey::Usage => std::mem::replace(&mut self.usage_seen, true),
                        TopKey::Escaped => true,
                        TopKey::Other => false,
                    };
                    if repeated {
                        return self.no();
                    }
                    self.value_of = key;
                }
                b'{' | b'[' => self.depth = self.depth.saturating_add(1),
                b'}' | b']' => {
                    self.depth -= 1;
                    if self.depth == 0 {
                        self.closed = true;
                        if !(self.choices_empty && self.usage_seen) {
                            return self.no();
                        }
                    }
                }
                _ => {}
            }
        }
        !self.no
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(data: &str) -> (bool, bool) {
        let mut shape = Shape::new();
        let going = shape.feed(data.as_bytes());
        (going, shape.is_candidate())
    }

    #[test]
    fn empty_array_is_found_across_pieces() {
        let found = |pieces: &[&str]| {
            let mut empty = EmptyArray::default();
            for piece in pieces {
                empty.feed(piece.as_bytes());
            }
            empty.found
        };
        assert!(found(&[r#"{"choices":[],"#]));
        assert!(found(&[r#"{"choices":["#, "", " \n\t", "]"]));
        assert!(found(&["[ \r", "  ]"]));
        assert!(found(&["[{}]", "[]"]));
        assert!(!found(&[r#"{"choices":[{"a":[1]}]}"#]));
        assert!(!found(&["[x", "]"]));
        assert!(!found(&["]", "[", "x]"]));
        assert!(!found(&[" ]"]));
    }

    #[test]
    fn shape_says_no_as_early_as_it_can() {
        assert_eq!(shape(r#"{"id":"x","choices":[{"#), (false, false));
        assert_eq!(shape(r#"{"id":"x","choices":[ {"#), (false, false));
        assert_eq!(shape(r#"{"choices":[],"usage":null"#), (false, false));
        assert_eq!(shape(r#"{"choices":{}"#), (false, false));
        assert_eq!(shape("[DONE]"), (false, false));
        assert_eq!(shape(r#"{"choices":[],"usage":{"a":1}} x"#), (false, false));
        // Other events: no at their end.
        assert_eq!(shape(r#"{"type":"message_stop"}"#), (false, false));
        assert_eq!(shape(r#"{"choices":[]}"#), (false, false));
    }

    #[test]
    fn shape_refuses_escaped_and_repeated_keys() {
        assert_eq!(shape(r#"{"ch\u006fices":[],"usage":{}}"#), (false, false));
        assert_eq!(
            shape(r#"{"x\"":1,"choices":[],"usage":{}}"#),
            (false, false)
        );
        assert_eq!(
            shape(r#"{"choices":[],"choices":[],"usage":{}}"#),
            (false, false)
        );
        assert_eq!(
            shape(r#"{"choices":[],"usage":{},"usage":{}}"#),
            (false, false)
        );
    }

    #[test]
    fn shape_waits_while_it_could_be_the_chunk() {
        assert_eq!(shape(r#"{"id":"x","choices":["#), (true, false));
        assert_eq!(
            shape(r#"{"id":"x","choices":[],"usage":{"p":1}"#),
            (true, false)
        );
        assert_eq!(
            shape(r#" { "choices" : [ ] , "usage" : { "p" : [1] } } "#),
            (true, true)
        );
        // Keys in nested objects and in strings are not top-level keys.
        assert_eq!(
            shape(
                r#"{"x":{"choices":[1],"usage":null},"s":"\"choices\":[{","choices":[],"usage":{}}"#
            ),
            (true, true)
        );
        // Escapes in values are fine.
        assert_eq!(
            shape(r#"{"id":"a\"b\\","choices":[],"usage":{"k":"\""}}"#),
            (true, true)
        );
    }
}
