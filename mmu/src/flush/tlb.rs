//! What a domain's TLBs may hold stale: the per-domain lists behind each flush request,
//! behind a lock that batches served concurrently take (see [`crate::shared`]).

use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::entry::Mfn;

/// Most frames (and entries) a domain's next flush request lists as newly stale; past
/// it the request asks for everything instead (see [`super::FlushRequest::newly_stale`]).
pub const NEWLY_STALE_MAX: usize = 4096;

/// What a domain's TLBs may hold stale, and what changed since its last flush request.
#[derive(Debug, Clone, Default)]
pub(crate) struct StaleTlb {
    /// Own frames whose translations this domain's TLBs may hold stale.
    pub(crate) stale: Vec<Mfn>,
    /// Frames that became stale since the last flush request (host-side invalidation).
    pub(crate) newly_stale: Vec<Mfn>,
    /// Whether a present non-leaf entry was revoked since the last flush request.
    pub(crate) non_leaf_revoked: bool,
    /// Machine addresses of the entries whose change revoked something since the last
    /// flush request (see [`crate::FlushRequest::revoked_entries`]).
    pub(crate) revoked_entries: Vec<u64>,
    /// Whether some revocation since the last request came with no entry address.
    pub(crate) revoked_entries_unknown: bool,
}

impl StaleTlb {
    /// Adds the entry at machine address `at`, which mapped RAM frame `mfn` (`None` for
    /// I/O memory), to what the next flush request lists as revoked. A guest that
    /// changes entries and never flushes must not grow these lists without bound: past
    /// the cap they are given up for "everything" (`non_leaf_revoked`, and no entry
    /// list).
    pub(crate) fn note_revoked_entry(&mut self, at: u64, mfn: Option<Mfn>) {
        if self.newly_stale.len() >= NEWLY_STALE_MAX {
            self.non_leaf_revoked = true;
            self.revoked_entries_unknown = true;
            self.revoked_entries = Vec::new();
        } else {
            // The entry is named even for I/O memory (no frame to protect there).
            if !self.revoked_entries_unknown {
                self.revoked_entries.push(at);
            }
            if let Some(mfn) = mfn {
                self.newly_stale.push(mfn);
            }
        }
    }
}

/// A [`StaleTlb`] that batches served concurrently add to under its lock, and the
/// exclusive path uses without locking.
#[derive(Debug, Default)]
pub(crate) struct SharedTlb(Mutex<StaleTlb>);

impl Clone for SharedTlb {
    fn clone(&self) -> Self {
        SharedTlb(Mutex::new(self.lock().clone()))
    }
}

impl SharedTlb {
    /// Exclusive access, no locking.
    pub(crate) fn get_mut(&mut self) -> &mut StaleTlb {
        self.0.get_mut().unwrap_or_else(PoisonError::into_inner)
    }

    /// Shared access, locked.
    pub(crate) fn lock(&self) -> MutexGuard<'_, StaleTlb> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
