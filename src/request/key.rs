//! Partition keys.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

/// Which budget a request belongs to: an API key, a tenant, a model.
///
/// Cheap to clone and hash (an `Arc<str>` inside). Since it is often a secret,
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
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct PartitionKey(Arc<str>);

impl PartitionKey {
    /// A key from any string.
    pub fn new(key: impl Into<Arc<str>>) -> Self {
        PartitionKey(key.into())
    }

    /// The key itself. Mind where you print it.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A stable 32-bit fingerprint of the key (FNV-1a), safe to log or to use
    /// as a metric label where the key itself is a secret.
    pub fn fingerprint(&self) -> u32 {
        let mut hash: u32 = 0x811c_9dc5;
        for byte in self.0.bytes() {
            hash ^= u32::from(byte);
            hash = hash.wrapping_mul(0x0100_0193);
        }
        hash
    }
}

impl Hash for PartitionKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.hash(state);
    }
}

impl From<&str> for PartitionKey {
    fn from(key: &str) -> Self {
        PartitionKey(key.into())
    }
}

impl From<String> for PartitionKey {
    fn from(key: String) -> Self {
        PartitionKey(key.into())
    }
}

impl From<Arc<str>> for PartitionKey {
    fn from(key: Arc<str>) -> Self {
        PartitionKey(key)
    }
}

impl fmt::Debug for PartitionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let prefix: String = self.0.chars().take(4).collect();
        write!(f, "PartitionKey(\"{prefix}…#{:08x}\")", self.fingerprint())
    }
}
