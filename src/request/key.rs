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
/// and clone it into requests. Since it is often a secret,
/// its `Debug` shows only the first four characters and a short fingerprint,
/// never the whole key; [`as_str`](Self::as_str) gives the key itself.
///
/// ```
/// use llm_sluice::PartitionKey;
/// let key = PartitionKey::new("sk-very-secret-value");
/// let shown = format!("{key:?}");
/// assert!(!shown.contains("secret"));
/// assert!(shown.starts_with("PartitionKey(\"sk-v…"));
/// assert_eq!(key, PartitionKey::from("sk-very-secret-value"));
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

    /// A stable 32-bit fingerprint of the key (FNV-1a), safe to log or to use
    /// as a metric label where the key itself is a secret.
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

impl fmt::Debug for PartitionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let prefix: String = self.text.chars().take(4).collect();
        write!(f, "PartitionKey(\"{prefix}…#{:08x}\")", self.fingerprint())
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

    #[test]
    fn keys_order_by_text() {
        let mut keys: Vec<PartitionKey> = ["b", "a", "ab"].map(PartitionKey::from).into();
        keys.sort();
        let texts: Vec<&str> = keys.iter().map(PartitionKey::as_str).collect();
        assert_eq!(texts, ["a", "ab", "b"]);
    }
}
