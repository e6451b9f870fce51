//! One clock read per request on its way in.
//!
//! A request entering a full stack passes six layers in one synchronous
//! chain of `call`s, and four of them want the time: the deadline layer to
//! date it, the concurrency limiter to check the deadline, the rate window
//! to stamp its reservation, the attempt timeout to start its timer. A clock
//! read costs 25-50 ns on a virtual machine, more than most of those layers'
//! own work, and the answers would differ by nanoseconds.
//!
//! So each layer's `call` opens a [`CallScope`]; the outermost open scope on
//! the thread owns a cached instant, read lazily by the first [`now`] inside
//! it and reused by every later one, and forgets it when it closes. Outside
//! any scope, [`now`] reads the clock.
//!
//! The cache is sound because nothing in a chain of `call`s waits: every
//! layer reads the time on its way *in*, before it calls its inner service,
//! and the chain ends with the caller's service, after which no layer of
//! ours reads [`now`] again before the outermost `call` returns. Readings
//! taken after the inner service has run (latencies, expiries, anything in
//! a future's `poll`) use [`tokio::time::Instant::now`] directly. Under
//! tokio's paused clock, time cannot move during a synchronous `call` at
//! all.

use std::cell::Cell;

use tokio::time::Instant;

/// The state of this thread's scope.
#[derive(Clone, Copy)]
enum Slot {
    /// No scope is open: [`now`] reads the clock.
    Closed,
    /// A scope is open; the instant once someone has read it.
    Open(Option<Instant>),
}

thread_local! {
    static SLOT: Cell<Slot> = const { Cell::new(Slot::Closed) };
}

/// Shares one clock reading among the `call`s nested inside it; see the
/// [module docs](self). Opening a scope inside an open one does nothing.
#[must_use = "the scope lasts as long as the guard"]
pub(crate) struct CallScope {
    outermost: bool,
}

/// Opens a scope for the rest of the current `call`.
#[inline]
pub(crate) fn enter() -> CallScope {
    let outermost = SLOT
        .try_with(|slot| match slot.get() {
            Slot::Closed => {
                slot.set(Slot::Open(None));
                true
            }
            Slot::Open(_) => false,
        })
        // The thread is being torn down: no cache, every read is fresh.
        .unwrap_or(false);
    CallScope { outermost }
}

impl Drop for CallScope {
    #[inline]
    fn drop(&mut self) {
        if self.outermost {
            let _ = SLOT.try_with(|slot| slot.set(Slot::Closed));
        }
    }
}

/// The current instant: the scope's reading when a scope is open (read
/// now if it has none yet), the clock's otherwise.
#[inline]
pub(crate) fn now() -> Instant {
    SLOT.try_with(|slot| match slot.get() {
        Slot::Open(Some(at)) => at,
        Slot::Open(None) => {
            let at = Instant::now();
            slot.set(Slot::Open(Some(at)));
            at
        }
        Slot::Closed => Instant::now(),
    })
    .unwrap_or_else(|_| Instant::now())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_scope_reads_once_and_forgets_on_close() {
        let first = {
            let _scope = enter();
            let first = now();
            tokio::time::advance(Duration::from_secs(1)).await;
            // Still inside the scope: the cached reading, not the clock.
            assert_eq!(now(), first);
            first
        };
        // Closed: a fresh reading.
        assert_eq!(now(), first + Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn an_inner_scope_neither_resets_nor_closes_the_outer_one() {
        let outer = enter();
        let first = now();
        {
            let _inner = enter();
            assert_eq!(now(), first);
        }
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(now(), first, "the inner scope closed the outer one");
        drop(outer);
        assert_eq!(now(), first + Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_scope_every_read_is_fresh() {
        let a = now();
        tokio::time::advance(Duration::from_millis(5)).await;
        assert_eq!(now(), a + Duration::from_millis(5));
    }
}
