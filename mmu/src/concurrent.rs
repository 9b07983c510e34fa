//! What batches served concurrently (see [`crate::shared`]) leave to the exclusive path:
//! the machine's part of that bookkeeping, kept apart from the code that fills it.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use crate::entry::Mfn;
use crate::frame::Owner;

/// Work the concurrent path leaves to the exclusive one, in the order it arose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Deferred {
    /// The last general reference of a frame: dropping it frees the frame.
    Put(Mfn),
    /// Xen's stale-TLB note for an entry of domain `d` at machine address `entry`
    /// replaced from `old` to `new`.
    Stale {
        /// The domain whose table held the entry.
        d: Owner,
        /// The entry's old value.
        old: u64,
        /// Its new value.
        new: u64,
        /// Its machine address.
        entry: u64,
    },
}

/// What the concurrent path owes the machine's bookkeeping.
#[derive(Debug, Default)]
pub(crate) struct Concurrent {
    /// Last references and stale notes, in order.
    pub(crate) log: Mutex<Vec<Deferred>>,
    /// Entries applied concurrently since the exclusive path last counted them.
    pub(crate) applied: AtomicU64,
    /// Entry swaps still to fail on purpose (a test hook).
    pub(crate) spurious: AtomicU32,
}

impl Clone for Concurrent {
    fn clone(&self) -> Self {
        let log = self.log.lock().unwrap_or_else(PoisonError::into_inner);
        Concurrent {
            log: Mutex::new(log.clone()),
            applied: AtomicU64::new(self.applied.load(Ordering::Acquire)),
            spurious: AtomicU32::new(self.spurious.load(Ordering::Acquire)),
        }
    }
}
