//! Partition keys.

use std::fmt;
use std::hash::BuildHasher;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, OnceLock};

/// Which budget a request belongs to: an API key, a tenant, a model.
///
/// Cheap to clone and to hash: an `Arc<str>` inside, with its hash computed
/// once when the key is made, so a keyed layer looking the key up per
/// request neither hashes nor reads the string (only a key that differs in
/// the hash's bits is compared byte by byte). Build a key once per tenant
/// and clone it into requests.
///
/// # Printing
///
/// Since a key is often a secret, its `Debug` never shows it whole: a key
/// of 16 characters or more shows its first four (a quarter of it at most:
/// enough to tell an `sk-p…` key from an `sk-a…` one) and its
/// [`fingerprint`](Self::fingerprint); a shorter key shows only the
/// fingerprint, because four of its characters would be most of it. There
/// is no `Display`: [`as_str`](Self::as_str) gives the key itself, for where
/// it is meant to go. The crate prints keys only through `Debug`, and labels
/// metrics only with fingerprints.
///
/// ```
/// use llm_sluice::PartitionKey;
/// let key = PartitionKey::new("sk-very-secret-value");
/// let shown = format!("{key:?}");
/// assert!(!shown.contains("secret"));
/// assert!(shown.starts_with("PartitionKey(\"sk-v…#"));
/// assert_eq!(key, PartitionKey::from("sk-very-secret-value"));
///
/// let short = PartitionKey::new("acme");
/// assert_eq!(format!("{short:?}"), format!("PartitionKey(\"…#{:08x}\")", short.fingerprint()));
/// ```
#[derive(Clone)]
pub struct PartitionKey {
    text: Arc<str>,
    /// `text` hashed with this process's seed (see [`hash_text`]).
    hash: u64,
}

/// Hashes a key's text once, when the key is made. foldhash with a seed
/// drawn once per process: keys are hashed alike everywhere in it (maps mix
/// in a seed of their own on top), and an outside party cannot predict the
/// values.
fn hash_text(text: &str) -> u64 {
    static SEED: OnceLock<foldhash::quality::RandomState> = OnceLock::new();
    SEED.get_or_init(Default::default).hash_one(text)
}

impl PartitionKey {
    /// A key from any string.
    pub fn new(key: impl Into<Arc<str>>) -> Self {
        let text = key.into();
        PartitionKey {
            hash: hash_text(&text),
            text,
        }
    }

    /// The key itself. Mind where you print it.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// A stable 32-bit fingerprint of the key (FNV-1a), to log or to use as a
    /// metric label where the key itself is a secret.
    ///
    /// It hides a key only as well as the key is long: anyone can compute
    /// it, so a key of a few characters is found again by trying every
    /// string that short. API keys (tens of random characters) are safe
    /// behind it; a short tenant name is not a secret it can keep.
    pub fn fingerprint(&self) -> u32 {
        let mut hash: u32 = 0x811c_9dc5;
        for byte in self.text.bytes() {
            hash ^= u32::from(byte);
            hash = hash.wrapping_mul(0x0100_0193);
        }
        hash
    }
}

/// Equal keys have equal text. Clones of one key share their `Arc`, so the
/// pointers are compared first; different hashes settle most other cases
/// without reading either string.
impl PartialEq for PartitionKey {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.text, &other.text) || (self.hash == other.hash && self.text == other.text)
    }
}

impl Eq for PartitionKey {}

/// Ordered by text.
impl PartialOrd for PartitionKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for PartitionKey {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.text.cmp(&other.text)
    }
}

/// Feeds the hash computed when the key was made: equal keys feed equal
/// values, and the string is not read again.
impl Hash for PartitionKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

impl From<&str> for PartitionKey {
    fn from(key: &str) -> Self {
        PartitionKey::new(key)
    }
}

impl From<String> for PartitionKey {
    fn from(key: String) -> Self {
        PartitionKey::new(key)
    }
}

impl From<Arc<str>> for PartitionKey {
    fn from(key: Arc<str>) -> Self {
        PartitionKey::new(key)
    }
}

/// How many characters of a key its `Debug` shows, and how long the key
/// must be for that: four of at least sixteen is at most a quarter, and
/// leaves twelve or more characters hidden.
const SHOWN_PREFIX: usize = 4;
const SHOWN_FROM: usize = 16;

/// `PartitionKey("sk-p…#1a2b3c4d")`, or `PartitionKey("…#1a2b3c4d")` for a
/// key shorter than 16 characters (see [Printing](PartitionKey#printing)).
impl fmt::Debug for PartitionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PartitionKey(\"")?;
        // Counted in characters, not bytes: a prefix never splits one, and
        // a multibyte key is not "longer" for its encoding.
        if self.text.chars().nth(SHOWN_FROM - 1).is_some() {
            for c in self.text.chars().take(SHOWN_PREFIX) {
                // Escaped, so a key cannot write quotes or line breaks into
                // a log line.
                write!(f, "{}", c.escape_debug())?;
            }
        }
        write!(f, "…#{:08x}\")", self.fingerprint())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn keys_made_apart_from_one_text_are_one_key() {
        let a = PartitionKey::new("tenant-a");
        let b = PartitionKey::from(String::from("tenant-a"));
        assert!(!Arc::ptr_eq(&a.text, &b.text));
        assert_eq!(a, b);
        let set: HashSet<PartitionKey> = [a.clone(), b, a.clone()].into_iter().collect();
        assert_eq!(set.len(), 1);
        assert!(set.contains(&PartitionKey::from("tenant-a")));
        assert!(!set.contains(&PartitionKey::from("tenant-b")));
    }

    /// What `Debug` shows of a key, with its fingerprint taken out.
    fn shown_without_fingerprint(key: &PartitionKey) -> String {
        format!("{key:?}").replacen(&format!("#{:08x}", key.fingerprint()), "#", 1)
    }

    #[test]
    fn a_short_key_shows_none_of_its_characters() {
        // None of these characters is in `PartitionKey("…#")` or in a hex
        // digit, so any of them in the output would come from the key.
        let alphabet = ['x', 'z', 'Q', '€', '🔑', '\n', '\u{0}'];
        for len in 1..SHOWN_FROM {
            let key: String = alphabet.iter().cycle().take(len).collect();
            let shown = format!("{:?}", PartitionKey::new(key.as_str()));
            assert!(
                !shown.contains(alphabet.as_slice()),
                "{len} characters: {shown}"
            );
        }
        let long: String = alphabet.iter().cycle().take(SHOWN_FROM).collect();
        let shown = format!("{:?}", PartitionKey::new(long));
        assert!(shown.starts_with("PartitionKey(\"xzQ€…#"), "{shown}");
        assert!(!shown.contains('🔑'), "{shown}");
    }

    proptest::proptest! {
        /// `Debug` depends on nothing but the fingerprint for a key shorter
        /// than 16 characters, and on the first four characters too for a
        /// longer one: two keys alike in those print alike, whatever else
        /// they hold. Arbitrary strings, multibyte ones included, never
        /// panic on a character boundary.
        #[test]
        fn debug_reveals_at_most_a_prefix_of_a_long_key(
            text in proptest::prop_oneof![
                proptest::arbitrary::any::<String>(),
                "\\PC{0,20}",
                "[a-z0-9€🔑é]{0,20}",
            ],
        ) {
            let key = PartitionKey::new(text.as_str());
            let chars = text.chars().count();
            // A key printed alike if only that much of it is shown.
            let stand_in: String = if chars >= SHOWN_FROM {
                text.chars()
                    .take(SHOWN_PREFIX)
                    .chain(std::iter::repeat_n('\u{0}', SHOWN_FROM))
                    .collect()
            } else {
                String::new()
            };
            proptest::prop_assert_eq!(
                shown_without_fingerprint(&key),
                shown_without_fingerprint(&PartitionKey::new(stand_in))
            );
        }
    }

    #[test]
    fn keys_order_by_text() {
        let mut keys: Vec<PartitionKey> = ["b", "a", "ab"].map(PartitionKey::from).into();
        keys.sort();
        let texts: Vec<&str> = keys.iter().map(PartitionKey::as_str).collect();
        assert_eq!(texts, ["a", "ab", "b"]);
    }
}
