use std::fmt;
use std::sync::Arc;

use super::shared::{Breaker, Registry};
use super::state::CircuitState;
use crate::request::PartitionKey;

/// Reads and steers the breakers of one [`CircuitBreakerLayer`].
///
/// Made by [`CircuitBreakerLayer::handle`]. The methods without a key act on
/// the unkeyed breaker: the only one of a layer without partitions, and the
/// one requests without a key share in a partitioned layer.
///
/// [`CircuitBreakerLayer`]: super::CircuitBreakerLayer
/// [`CircuitBreakerLayer::handle`]: super::CircuitBreakerLayer::handle
#[derive(Clone)]
pub struct CircuitHandle {
    pub(crate) registry: Arc<Registry>,
}

impl fmt::Debug for CircuitHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitHandle")
            .field("state", &self.state())
            .field("partitions", &self.partitions())
            .finish()
    }
}

impl CircuitHandle {
    pub(crate) fn new(registry: Arc<Registry>) -> Self {
        CircuitHandle { registry }
    }

    fn unkeyed(&self) -> Arc<Breaker> {
        self.registry.breaker(None)
    }

    /// The state of the unkeyed breaker now. Reading it applies what time
    /// alone changes (an open breaker whose open duration has passed reads
    /// as half-open).
    pub fn state(&self) -> CircuitState {
        self.unkeyed().state()
    }

    /// Forces the unkeyed breaker open until [`force_closed`] or [`reset`]:
    /// every call fails fast with [`Error::CircuitOpen`](crate::Error).
    ///
    /// [`force_closed`]: Self::force_closed
    /// [`reset`]: Self::reset
    pub fn force_open(&self) {
        self.unkeyed().force(CircuitState::ForcedOpen);
    }

    /// Forces the unkeyed breaker closed until [`reset`](Self::reset) or
    /// [`force_open`](Self::force_open): every call passes and no outcome is
    /// recorded.
    pub fn force_closed(&self) {
        self.unkeyed().force(CircuitState::ForcedClosed);
    }

    /// Resets the unkeyed breaker: closed, an empty window, the open duration
    /// back at its base.
    pub fn reset(&self) {
        self.unkeyed().force(CircuitState::Closed);
    }

    /// The state of `key`'s own breaker, or `None` if it has none (never
    /// used, evicted, or the layer is not partitioned).
    pub fn partition_state(&self, key: &PartitionKey) -> Option<CircuitState> {
        self.registry.peek(key).map(|b| b.state())
    }

    /// Forces `key`'s breaker open, creating it if needed (a full map gives
    /// the overflow breaker, which is then forced open for every key in it).
    /// Without partitions this is the unkeyed breaker.
    pub fn force_open_partition(&self, key: &PartitionKey) {
        self.registry
            .breaker(Some(key))
            .force(CircuitState::ForcedOpen);
    }

    /// Forces `key`'s breaker closed; see
    /// [`force_open_partition`](Self::force_open_partition).
    pub fn force_closed_partition(&self, key: &PartitionKey) {
        self.registry
            .breaker(Some(key))
            .force(CircuitState::ForcedClosed);
    }

    /// Resets `key`'s own breaker, if it has one.
    pub fn reset_partition(&self, key: &PartitionKey) {
        if let Some(b) = self.registry.peek(key) {
            b.force(CircuitState::Closed);
        }
    }

    /// Resets every breaker of the layer.
    pub fn reset_all(&self) {
        self.registry.for_each(|b| b.force(CircuitState::Closed));
    }

    /// Calls `f` with the state of every breaker of the layer now: the
    /// unkeyed one, and with partitions the overflow one and each key's.
    pub(crate) fn for_each_state(&self, mut f: impl FnMut(CircuitState)) {
        self.registry.for_each(|b| f(b.state()));
    }

    /// How many keys have their own breaker now.
    pub fn partitions(&self) -> usize {
        self.registry.partitions()
    }

    /// Drops the keyed breakers that are idle (closed, no failure or slow
    /// call remembered) and that no call holds; returns how many went. The
    /// map also does this by itself when it is full.
    pub fn evict_idle(&self) -> usize {
        self.registry.evict_idle()
    }
}
