//! TLB flushes: what the library asks the embedder to invalidate, and when.
//!
//! The library decides *when* and *what* to flush, at exactly the points where Xen
//! flushes; the embedder carries it out (on KVM: host-side invalidation). Every request
//! carries the frames whose translations went stale since the previous request, so an
//! embedder can invalidate precisely. The bookkeeping behind that (which frames went
//! stale for which domain, and when a full flush forgets them) is in `flush/stale.rs`.

use crate::entry::Mfn;

pub(crate) mod stale;
pub(crate) mod tlb;

pub use tlb::NEWLY_STALE_MAX;

/// A set of vCPUs of one domain (up to 64).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct VcpuSet(pub u64);

impl VcpuSet {
    /// The single vCPU `v` (empty if `v >= 64`).
    pub fn one(v: u32) -> VcpuSet {
        VcpuSet(1u64.checked_shl(v).unwrap_or(0))
    }
    /// The first `n` vCPUs.
    pub fn first(n: u32) -> VcpuSet {
        VcpuSet(if n >= 64 { u64::MAX } else { (1u64 << n) - 1 })
    }
    /// Whether `v` is in the set.
    pub fn contains(&self, v: u32) -> bool {
        v < 64 && self.0 & (1 << v) != 0
    }
    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.0 == 0
    }
    /// The vCPU numbers in the set.
    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        (0..64).filter(|v| self.contains(*v))
    }
}

/// What to invalidate on the target vCPUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FlushScope {
    /// One virtual address (INVLPG).
    Va(u64),
    /// Every translation except global ones (a CR3 reload).
    AllNonGlobal,
    /// Every translation, global ones included.
    All,
}

/// Why the library flushes (the Xen operation that triggers it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FlushReason {
    /// `update_va_mapping` with a UVMF flush.
    UpdateVaMapping,
    /// An MMUEXT TLB_FLUSH / INVLPG operation.
    Mmuext,
    /// `mmu_update` changed an L2..L4 entry (XSA-286).
    NonLeafUpdate,
    /// `NEW_BASEPTR` / `NEW_USER_BASEPTR` switched a root.
    BasePtr,
    /// A frame took a page-table type while a stale translation of it may exist.
    TypeChange,
    /// `SET_LDT` replaced the LDT.
    Ldt,
    /// `set_gdt` replaced the GDT.
    Gdt,
    /// A batch of grant unmaps removed host mappings.
    GrantUnmap,
}

/// One flush the embedder must carry out before the hypercall returns to the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlushRequest {
    /// Domain (raw id).
    pub domain: u16,
    /// vCPUs whose TLBs to flush.
    pub vcpus: VcpuSet,
    /// What to flush.
    pub scope: FlushScope,
    /// Frames that some TLB may still translate to with rights removed since the last
    /// flush (old targets of remapped, unmapped or downgraded L1 entries).
    pub stale: Vec<Mfn>,
    /// Whether an L2..L4 entry changed since the last flush (paging-structure caches
    /// must go too).
    pub non_leaf: bool,
    /// The frames of [`FlushRequest::stale`] that became stale since the domain's
    /// previous request (each reported once, sorted): what an invalidation that reaches
    /// every vCPU at once (a host-side one, e.g. a shadow-MMU zap) still has to cover.
    /// At most [`NEWLY_STALE_MAX`] frames are listed: a domain that changes more entries
    /// between two requests gets `non_leaf_revoked` set instead (invalidate everything)
    /// and no [`FlushRequest::revoked_entries`], so a guest that never flushes cannot
    /// make the lists grow without bound.
    pub newly_stale: Vec<Mfn>,
    /// Whether, since the domain's previous request, a present L2..L4 entry was removed,
    /// repointed or lost rights (see [`FlushRequest::newly_stale`]). Hooking in a new
    /// table (a non-present entry becoming present) does not count: no cache holds
    /// non-present entries.
    pub non_leaf_revoked: bool,
    /// The machine addresses of the page-table entries whose change, since the
    /// domain's previous request, revoked something a TLB or paging-structure cache may
    /// hold (leaf and non-leaf alike; sorted, each once), or `None` when some such
    /// change has no single entry to name. An embedder whose host tracks guest writes
    /// to page tables (a shadow MMU) can invalidate exactly these entries by having
    /// the guest rewrite them, instead of zapping frames or everything
    /// ([`FlushRequest::newly_stale`], [`FlushRequest::non_leaf_revoked`] describe the
    /// same changes by their targets).
    pub revoked_entries: Option<Vec<u64>>,
    /// The operation that asked for it.
    pub reason: FlushReason,
}

/// Carries out the library's flushes. Implemented by the embedding VMM.
pub trait TlbFlush {
    /// Performs `req`. Called synchronously, inside the hypercall.
    fn flush(&mut self, req: &FlushRequest);
}

/// A [`TlbFlush`] that records every request (for tests and fuzzers).
#[derive(Debug, Clone, Default)]
pub struct RecordingFlush {
    /// Every request, oldest first.
    pub log: Vec<FlushRequest>,
}

impl RecordingFlush {
    /// Takes the recorded requests, leaving the log empty.
    pub fn take(&mut self) -> Vec<FlushRequest> {
        std::mem::take(&mut self.log)
    }
}

impl TlbFlush for RecordingFlush {
    fn flush(&mut self, req: &FlushRequest) {
        self.log.push(req.clone());
    }
}

/// A [`TlbFlush`] that does nothing (for embedders whose guests do not run).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoFlush;

impl TlbFlush for NoFlush {
    fn flush(&mut self, _req: &FlushRequest) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vcpu_sets() {
        assert_eq!(VcpuSet::one(3).0, 8);
        assert_eq!(VcpuSet::one(64), VcpuSet(0));
        assert_eq!(VcpuSet::first(64).0, u64::MAX);
        assert_eq!(VcpuSet::first(3).iter().collect::<Vec<_>>(), vec![0, 1, 2]);
    }
}
