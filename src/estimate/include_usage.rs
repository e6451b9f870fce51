//! `stream_options.include_usage` on streamed chat requests.

use std::fmt;
use std::ops::Range;

use bytes::Bytes;
use serde_json::{Map, Value};

/// Marks a request whose body [`ensure_include_usage`] changed: the caller
/// did not ask for the usage chunk, so the response side should take it out
/// of the stream before the caller sees it (after reading the usage).
///
/// [`EstimateLayer`](super::EstimateLayer) inserts it into the request's
/// extensions when it adds the option, and into the response's extensions
/// too, where the code that rewrites the stream can find it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct UsageAdded;

/// The error of [`ensure_include_usage`]: the body is not a JSON object, so
/// there is nothing to set the option on. A request with such a body would
/// be refused by the provider anyway; send it on unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotJsonObject;

impl fmt::Display for NotJsonObject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("request body is not a json object")
    }
}

impl std::error::Error for NotJsonObject {}

/// The option added, when the request has no `stream_options`.
const OPTIONS: &[u8] = br#""stream_options":{"include_usage":true}"#;
/// The option object, replacing `stream_options: null` or `{}`.
const OPTIONS_OBJECT: &[u8] = br#"{"include_usage":true}"#;
/// The member added to an object of other options.
const MEMBER: &[u8] = br#""include_usage":true"#;

/// Asks for the usage chunk on a streamed Chat Completions request: returns
/// the body with `stream_options.include_usage: true` when the request
/// streams and does not say whether it wants usage, `None` when it is left
/// as it is.
///
/// Without the option, a streamed response carries no usage at all, so
/// nothing downstream can learn what the call really cost. With it, the
/// stream ends with one more chunk (`"choices": []` and the `usage`) before
/// `data: [DONE]`; a proxy should remove that chunk again for a caller who
/// did not ask for it (see [`UsageAdded`]).
///
/// # The rules
///
/// - Only a body with `"stream": true` changes. Not streamed, `false`, or
///   anything else (`"true"`, `1`): unchanged.
/// - No `stream_options`, or `"stream_options": null` (`null` is "not
///   given" in the OpenAI API): the option object is added, or replaces the
///   `null`.
/// - `stream_options` an object without `include_usage`, or with
///   `"include_usage": null`: the member is added to it (or replaces the
///   `null`), its other options kept.
/// - `include_usage` already `true` or `false`: unchanged. `false` is the
///   caller saying no: it may be a client that cannot handle the extra
///   chunk, or one that must not be billed for reading it; the proxy is not
///   the place to override it, and its usage stays unknown (the estimate
///   stands).
/// - `stream_options` or `include_usage` of another type (a string, an
///   array): unchanged; the provider refuses such a request with a 400.
///
/// Only for Chat Completions (and legacy Completions) bodies: the
/// Responses API and Anthropic's Messages API always report usage in their
/// streams, and the latter refuses fields it does not know.
///
/// # What is kept
///
/// The body is edited in place, not parsed and written again: every other
/// byte (field order, whitespace, number formatting, escapes) stays as it
/// was; the option is inserted after the last member of its object, or
/// replaces a `null`. Where a key appears twice, the last one is edited, as
/// serde_json (and most parsers) read the last one. A `content-length`
/// header sent with the old body must be set again.
///
/// # Errors
///
/// [`NotJsonObject`] if the body is not a JSON object (not JSON at all, or
/// another JSON value).
///
/// ```
/// use llm_sluice::estimate::ensure_include_usage;
///
/// let body = br#"{"model": "gpt-4o", "stream": true, "messages": []}"#;
/// let changed = ensure_include_usage(body)?.expect("a streamed request without the option");
/// assert_eq!(
///     &changed[..],
///     br#"{"model": "gpt-4o", "stream": true, "messages": [],"stream_options":{"include_usage":true}}"#
/// );
///
/// // The caller said no: left alone.
/// let body = br#"{"stream": true, "stream_options": {"include_usage": false}}"#;
/// assert_eq!(ensure_include_usage(body)?, None);
/// // Not streamed: left alone.
/// assert_eq!(ensure_include_usage(br#"{"stream": false}"#)?, None);
/// # Ok::<(), llm_sluice::estimate::NotJsonObject>(())
/// ```
pub fn ensure_include_usage(body: &[u8]) -> Result<Option<Bytes>, NotJsonObject> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(include_usage(body, &map)),
        _ => Err(NotJsonObject),
    }
}

/// The rewrite of `body`, already parsed as `map`, or `None`.
pub(crate) fn include_usage(body: &[u8], map: &Map<String, Value>) -> Option<Bytes> {
    if map.get("stream") != Some(&Value::Bool(true)) {
        return None;
    }
    let edit = match map.get("stream_options") {
        None => {
            let top = members(body, skip_ws(body, 0))?;
            let after = top.last()?.value.end;
            Edit::insert(after, b",", OPTIONS)
        }
        Some(Value::Null) => Edit::replace(last_value(body, 0, "stream_options")?, OPTIONS_OBJECT),
        Some(Value::Object(options)) => {
            let object = last_value(body, 0, "stream_options")?;
            match options.get("include_usage") {
                None => match members(body, object.start)?.last() {
                    None => Edit::replace(object, OPTIONS_OBJECT),
                    Some(last) => Edit::insert(last.value.end, b",", MEMBER),
                },
                Some(Value::Null) => {
                    Edit::replace(last_value(body, object.start, "include_usage")?, b"true")
                }
                Some(_) => return None,
            }
        }
        Some(_) => return None,
    };
    edit.apply(body)
}

/// One splice: `range` of the body replaced by `with` (both parts, in
/// order).
struct Edit<'a> {
    range: Range<usize>,
    with: [&'a [u8]; 2],
}

impl<'a> Edit<'a> {
    fn insert(at: usize, first: &'a [u8], second: &'a [u8]) -> Self {
        Edit {
            range: at..at,
            with: [first, second],
        }
    }

    fn replace(range: Range<usize>, with: &'a [u8]) -> Self {
        Edit {
            range,
            with: [with, b""],
        }
    }

    fn apply(&self, body: &[u8]) -> Option<Bytes> {
        let (before, after) = (body.get(..self.range.start)?, body.get(self.range.end..)?);
        let mut out = Vec::with_capacity(
            before.len() + self.with[0].len() + self.with[1].len() + after.len(),
        );
        out.extend_from_slice(before);
        out.extend_from_slice(self.with[0]);
        out.extend_from_slice(self.with[1]);
        out.extend_from_slice(after);
        Some(Bytes::from(out))
    }
}

// ===== a scanner over JSON that serde_json has already accepted =====
//
// It finds where members are, nothing more; the body is valid JSON, so the
// structure is known good. Every index is checked all the same (`get`), and
// a surprise is `None`: the body is then left as it is.

/// One member of an object: where its key (quotes included) and its value
/// are.
struct Member {
    key: Range<usize>,
    value: Range<usize>,
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while matches!(b.get(i), Some(b' ' | b'\t' | b'\n' | b'\r')) {
        i += 1;
    }
    i
}

/// The end (exclusive) of the string whose opening quote is at `i`.
fn string_end(b: &[u8], i: usize) -> Option<usize> {
    let mut j = i + 1;
    loop {
        match b.get(j)? {
            b'\\' => j += 2,
            b'"' => return Some(j + 1),
            _ => j += 1,
        }
    }
}

/// The end (exclusive) of the value that starts at `i`.
fn value_end(b: &[u8], i: usize) -> Option<usize> {
    match b.get(i)? {
        b'"' => string_end(b, i),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut j = i;
            loop {
                match b.get(j)? {
                    b'"' => {
                        j = string_end(b, j)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth = depth.checked_sub(1)?;
                        if depth == 0 {
                            return Some(j + 1);
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
        }
        _ => {
            let mut j = i;
            while !matches!(
                b.get(j),
                None | Some(b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r')
            ) {
                j += 1;
            }
            Some(j)
        }
    }
}

/// The members of the object that opens at `i`.
fn members(b: &[u8], i: usize) -> Option<Vec<Member>> {
    if b.get(i) != Some(&b'{') {
        return None;
    }
    let mut out = Vec::new();
    let mut j = skip_ws(b, i + 1);
    if b.get(j) == Some(&b'}') {
        return Some(out);
    }
    loop {
        let key = j..string_end(b, j)?;
        j = skip_ws(b, key.end);
        if b.get(j) != Some(&b':') {
            return None;
        }
        let start = skip_ws(b, j + 1);
        let value = start..value_end(b, start)?;
        j = skip_ws(b, value.end);
        out.push(Member { key, value });
        match b.get(j)? {
            b',' => j = skip_ws(b, j + 1),
            b'}' => return Some(out),
            _ => return None,
        }
    }
}

/// Where the value of the last member named `name` is, in the object that
/// opens at `object` (after any whitespace).
fn last_value(b: &[u8], object: usize, name: &str) -> Option<Range<usize>> {
    members(b, skip_ws(b, object))?
        .into_iter()
        .rev()
        .find(|m| key_is(b, &m.key, name))
        .map(|m| m.value)
}

/// Whether the key at `range` (with its quotes) is `name`, escapes
/// decoded.
fn key_is(b: &[u8], range: &Range<usize>, name: &str) -> bool {
    let Some(raw) = b.get(range.clone()) else {
        return false;
    };
    if raw.contains(&b'\\') {
        serde_json::from_slice::<String>(raw).is_ok_and(|k| k == name)
    } else {
        raw.get(1..raw.len() - 1) == Some(name.as_bytes())
    }
}
