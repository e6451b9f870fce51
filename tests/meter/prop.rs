//! Split invariance: where the body is cut into chunks never changes what is
//! read, and no input makes the scanner panic or grow past its bound.

use llm_sluice::meter::{BodyKind, UsageScanner, MAX_USAGE_BYTES};
use proptest::prelude::*;
use proptest::sample::Index;

use crate::{scan, scan_split, CASES};

/// Bytes that reach the scanner's interesting states more often than
/// uniform noise would: JSON punctuation, escapes, SSE field names, line
/// ends, the keys it looks for, multi-byte characters, a byte-order mark.
fn tokens() -> impl Strategy<Value = Vec<u8>> {
    const PIECES: &[&str] = &[
        "{",
        "}",
        "[",
        "]",
        "\"",
        "\\",
        "\\\"",
        ":",
        ",",
        " ",
        "\n",
        "\r",
        "\r\n",
        "\n\n",
        "data:",
        "data: ",
        "event: message_delta\n",
        ": ping\n",
        "id: 1\n",
        "\"usage\"",
        "\"message\"",
        "\"response\"",
        "\"delta\"",
        "\"content\"",
        "\"text\"",
        "\"prompt_tokens\"",
        "\"completion_tokens\"",
        "\"input_tokens\"",
        "\"output_tokens\"",
        "\"cache_read_input_tokens\"",
        "\"total_tokens\"",
        "\"prompt_tokens_details\"",
        "\"cached_tokens\"",
        "12",
        "-1",
        "1.5",
        "18446744073709551616",
        "null",
        "\"x\"",
        "é",
        "😀",
        "\u{feff}",
        "[DONE]",
    ];
    prop::collection::vec(
        prop_oneof![
            any::<u8>().prop_map(|b| vec![b]),
            prop::sample::select(PIECES).prop_map(|p| p.as_bytes().to_vec()),
        ],
        0..300,
    )
    .prop_map(|parts| parts.concat())
}

fn kind() -> impl Strategy<Value = BodyKind> {
    prop_oneof![Just(BodyKind::Json), Just(BodyKind::EventStream)]
}

fn cuts() -> impl Strategy<Value = Vec<Index>> {
    prop::collection::vec(any::<Index>(), 0..24)
}

fn positions(cuts: &[Index], len: usize) -> Vec<usize> {
    cuts.iter().map(|i| i.index(len + 1)).collect()
}

fn assert_same(whole: &UsageScanner, split: &UsageScanner) -> Result<(), TestCaseError> {
    prop_assert_eq!(whole.usage(), split.usage());
    prop_assert_eq!(whole.output_seen(), split.output_seen());
    prop_assert_eq!(whole.bytes_seen(), split.bytes_seen());
    prop_assert!(split.retained_capacity() <= MAX_USAGE_BYTES);
    prop_assert!(whole.retained_capacity() <= MAX_USAGE_BYTES);
    Ok(())
}

/// A change to a fixture: overwrite, insert or delete the byte at a place.
#[derive(Debug, Clone)]
enum Mutation {
    Set(Index, u8),
    Insert(Index, u8),
    Delete(Index),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::Set(i, b)),
        (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::Insert(i, b)),
        any::<Index>().prop_map(Mutation::Delete),
    ]
}

fn mutate(body: &[u8], mutations: &[Mutation]) -> Vec<u8> {
    let mut body = body.to_vec();
    for m in mutations {
        match *m {
            Mutation::Set(i, b) if !body.is_empty() => {
                let at = i.index(body.len());
                body[at] = b;
            }
            Mutation::Insert(i, b) => {
                let at = i.index(body.len() + 1);
                body.insert(at, b);
            }
            Mutation::Delete(i) if !body.is_empty() => {
                let at = i.index(body.len());
                body.remove(at);
            }
            _ => {}
        }
    }
    body
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Arbitrary bytes, cut anywhere: no panic, and the same result as the
    /// uncut body.
    #[test]
    fn arbitrary_bytes_split_anywhere_read_as_unsplit(
        kind in kind(),
        body in tokens(),
        cuts in cuts(),
    ) {
        let whole = scan(kind, &body);
        let split = scan_split(kind, &body, &positions(&cuts, body.len()));
        assert_same(&whole, &split)?;
    }

    /// Uniformly random bytes too (no bias toward the grammar).
    #[test]
    fn random_bytes_never_panic(
        kind in kind(),
        body in prop::collection::vec(any::<u8>(), 0..2000),
        cuts in cuts(),
    ) {
        let whole = scan(kind, &body);
        let split = scan_split(kind, &body, &positions(&cuts, body.len()));
        assert_same(&whole, &split)?;
    }

    /// Every fixture, cut anywhere, reads the usage and output it reads
    /// whole.
    #[test]
    fn fixtures_split_anywhere_read_their_usage(
        which in any::<Index>(),
        cuts in cuts(),
        crlf in any::<bool>(),
    ) {
        let case = which.get(CASES);
        let body = if crlf && case.kind == BodyKind::EventStream {
            String::from_utf8_lossy(case.body).replace('\n', "\r\n").into_bytes()
        } else {
            case.body.to_vec()
        };
        let split = scan_split(case.kind, &body, &positions(&cuts, body.len()));
        prop_assert_eq!(split.usage(), case.usage, "{}", case.name);
        prop_assert_eq!(split.output_seen().text_bytes, case.text.0, "{}", case.name);
        prop_assert_eq!(split.output_seen().text_events, case.text.1, "{}", case.name);
    }

    /// Fixtures with a few bytes changed, inserted or deleted: no panic, and
    /// cuts change nothing.
    #[test]
    fn mutated_fixtures_split_anywhere_read_as_unsplit(
        which in any::<Index>(),
        mutations in prop::collection::vec(mutation(), 1..8),
        cuts in cuts(),
    ) {
        let case = which.get(CASES);
        let body = mutate(case.body, &mutations);
        let whole = scan(case.kind, &body);
        let split = scan_split(case.kind, &body, &positions(&cuts, body.len()));
        assert_same(&whole, &split)?;
    }
}
