//! The fields of a `usage` object and how they become a [`Usage`].

use serde_json::{Map, Value};

use crate::classify::Usage;

/// The usage fields of every supported format, as last reported.
///
/// A field is `None` until a report carries it as a JSON integer in
/// `0..=u64::MAX`; any other value (null, negative, fractional, larger than
/// `u64::MAX`, a string) leaves it as it was.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct RawUsage {
    // OpenAI chat completions.
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    total_tokens: Option<u64>,
    /// `prompt_tokens_details.cached_tokens`
    prompt_cached: Option<u64>,
    // Anthropic messages and the Responses API.
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
    /// `cache_read_input_tokens` (Anthropic)
    cache_read: Option<u64>,
    /// `cache_creation_input_tokens` (Anthropic)
    cache_creation: Option<u64>,
    /// `input_tokens_details.cached_tokens` (Responses)
    input_cached: Option<u64>,
}

fn int(map: &Map<String, Value>, name: &str) -> Option<u64> {
    map.get(name)?.as_u64()
}

fn nested(map: &Map<String, Value>, outer: &str, name: &str) -> Option<u64> {
    map.get(outer)?.as_object()?.get(name)?.as_u64()
}

fn set(field: &mut Option<u64>, value: Option<u64>) {
    if value.is_some() {
        *field = value;
    }
}

impl RawUsage {
    /// Merges one captured `usage` object: each field it carries replaces the
    /// last one reported. Bytes that are not a JSON object change nothing.
    pub(super) fn merge_json(&mut self, bytes: &[u8]) {
        let Ok(map) = serde_json::from_slice::<Map<String, Value>>(bytes) else {
            return;
        };
        set(&mut self.prompt_tokens, int(&map, "prompt_tokens"));
        set(&mut self.completion_tokens, int(&map, "completion_tokens"));
        set(&mut self.total_tokens, int(&map, "total_tokens"));
        set(
            &mut self.prompt_cached,
            nested(&map, "prompt_tokens_details", "cached_tokens"),
        );
        set(&mut self.input_tokens, int(&map, "input_tokens"));
        set(&mut self.output_tokens, int(&map, "output_tokens"));
        set(&mut self.cache_read, int(&map, "cache_read_input_tokens"));
        set(
            &mut self.cache_creation,
            int(&map, "cache_creation_input_tokens"),
        );
        set(
            &mut self.input_cached,
            nested(&map, "input_tokens_details", "cached_tokens"),
        );
    }

    /// The usage these fields describe, or `None` when no token count was
    /// reported. See the module docs for the mapping.
    pub(super) fn to_usage(self) -> Option<Usage> {
        let input = match (self.input_tokens, self.cache_read, self.cache_creation) {
            (None, None, None) => None,
            (a, b, c) => Some(
                a.unwrap_or(0)
                    .saturating_add(b.unwrap_or(0))
                    .saturating_add(c.unwrap_or(0)),
            ),
        };
        let prompt = self.prompt_tokens.or(input);
        let completion = self.completion_tokens.or(self.output_tokens);
        if prompt.is_none() && completion.is_none() && self.total_tokens.is_none() {
            return None;
        }
        let prompt = prompt.unwrap_or(0);
        let completion = completion.unwrap_or(0);
        let total = self
            .total_tokens
            .unwrap_or(0)
            .max(prompt.saturating_add(completion));
        let cached = self
            .prompt_cached
            .or(self.cache_read)
            .or(self.input_cached)
            .unwrap_or(0)
            .min(prompt);
        Some(Usage {
            prompt_tokens: prompt,
            completion_tokens: completion,
            total_tokens: total,
            cached_input_tokens: cached,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(json: &str) -> Option<Usage> {
        let mut raw = RawUsage::default();
        raw.merge_json(json.as_bytes());
        raw.to_usage()
    }

    #[test]
    fn openai_chat() {
        assert_eq!(
            usage(
                r#"{"prompt_tokens":19,"completion_tokens":9,"total_tokens":28,
                    "prompt_tokens_details":{"cached_tokens":8}}"#
            ),
            Some(Usage::new(19, 9).with_cached_input(8))
        );
    }

    #[test]
    fn anthropic_adds_cache_to_the_prompt() {
        assert_eq!(
            usage(
                r#"{"input_tokens":10,"cache_read_input_tokens":100,
                    "cache_creation_input_tokens":20,"output_tokens":5}"#
            ),
            Some(Usage::new(130, 5).with_cached_input(100))
        );
    }

    #[test]
    fn responses_input_includes_cache() {
        assert_eq!(
            usage(
                r#"{"input_tokens":50,"input_tokens_details":{"cached_tokens":30},
                    "output_tokens":7,"output_tokens_details":{"reasoning_tokens":3},"total_tokens":57}"#
            ),
            Some(Usage::new(50, 7).with_cached_input(30))
        );
    }

    #[test]
    fn absurd_values_are_absent() {
        assert_eq!(
            usage(r#"{"prompt_tokens":-1,"completion_tokens":2.5}"#),
            None
        );
        assert_eq!(
            usage(r#"{"prompt_tokens":"12","completion_tokens":18446744073709551616}"#),
            None
        );
        assert_eq!(usage("null"), None);
        assert_eq!(usage("{}"), None);
        assert_eq!(usage("{"), None);
        // Sums saturate.
        assert_eq!(
            usage(r#"{"input_tokens":18446744073709551615,"cache_read_input_tokens":5}"#),
            Some(Usage {
                prompt_tokens: u64::MAX,
                completion_tokens: 0,
                total_tokens: u64::MAX,
                cached_input_tokens: 5,
            })
        );
    }

    #[test]
    fn total_is_never_less_than_its_parts() {
        assert_eq!(
            usage(r#"{"prompt_tokens":10,"completion_tokens":5,"total_tokens":3}"#),
            Some(Usage::new(10, 5))
        );
        assert_eq!(
            usage(r#"{"prompt_tokens":10,"completion_tokens":5,"total_tokens":40}"#)
                .map(|u| u.total_tokens),
            Some(40)
        );
    }

    #[test]
    fn later_reports_replace_fields_they_carry() {
        let mut raw = RawUsage::default();
        raw.merge_json(br#"{"input_tokens":25,"cache_read_input_tokens":4,"output_tokens":1}"#);
        raw.merge_json(br#"{"output_tokens":15}"#);
        raw.merge_json(br#"{"output_tokens":null}"#);
        assert_eq!(
            raw.to_usage(),
            Some(Usage::new(29, 15).with_cached_input(4))
        );
    }
}
