//! Making the library's page-table changes visible to a running guest on KVM.
//!
//! KVM on our machines is KVM-PVM with a shadow MMU: a page-table write the VMM makes
//! through its own mapping of guest memory stays invisible to the guest whatever the
//! guest flushes (`docs/kvm-host.md`). Two host-side invalidations work, and are
//! correct on hardware-assisted KVM too (there, zapping a frame's second-level mapping
//! flushes the guest TLB): `mprotect` of the old target frames (leaf remaps, unmaps and
//! downgrades) and deleting and re-adding a small dummy memslot (zaps every shadow page,
//! so it also covers non-leaf changes). This module picks the cheaper correct one for
//! each [`FlushRequest`].

use std::sync::Arc;

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use log::{trace, warn};
use pvmmu::{FlushRequest, Mfn, TlbFlush};
use vm_memory::MmapRegion;

/// Above this many separate runs of stale frames, one memslot cycle is cheaper than the
/// `mprotect` calls (about 8.5 us each against 100-190 us for the cycle).
pub const MAX_MPROTECT_RUNS: usize = 16;
/// Memslot used for the dummy page.
const DUMMY_SLOT: u32 = 1;
/// Guest-physical address of the dummy page: above the largest guest RAM (4 GiB) and
/// past the MMIO test device, so it overlaps neither whatever `--memory` is.
pub const DUMMY_GPA: u64 = 0x1_0010_0000;

const _: () = assert!(
    DUMMY_GPA >= devices::mmio_test::MMIO_TEST_BASE + devices::mmio_test::MMIO_TEST_SIZE
        && DUMMY_GPA >= *platform::domain::MEMORY_MIB.end() << 20
);
/// Size of the dummy memslot.
const DUMMY_SIZE: u64 = 4096;

/// The PV MMU as the VMM drives it: over its guest memory, flushing through KVM.
pub type Vmm = pvmmu::Machine<vm_memory::GuestMemoryMmap<()>, KvmFlush>;

/// Counters of the invalidations done.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FlushStats {
    /// Flush requests received.
    pub requests: u64,
    /// Requests that needed nothing host-side.
    pub nothing: u64,
    /// `mprotect` round trips (one per contiguous run of frames).
    pub mprotects: u64,
    /// Dummy-memslot cycles.
    pub memslot_cycles: u64,
    /// Returns through the ring-0 rewrite of changed entries.
    pub rewrites: u64,
    /// Entries rewritten that way.
    pub rewritten_entries: u64,
    /// Time spent in host-side invalidation (mprotect runs and memslot cycles).
    pub time: std::time::Duration,
}

/// How the VMM invalidates KVM's view of guest page tables after it changed them
/// host-side. Every policy is correct; they differ in cost. The forced ones exist so
/// that each path the automatic choice can take is tested on its own (and so that a
/// host whose costs differ can be measured both ways).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum InvalidationPolicy {
    /// By need, cheapest first: nothing for upgrades and new tables hooked in; for leaf
    /// changes an `mprotect` round trip per contiguous run of old target frames, or one
    /// memslot cycle beyond [`MAX_MPROTECT_RUNS`] runs; a memslot cycle when a present
    /// non-leaf entry was removed, repointed or lost rights.
    #[default]
    Auto,
    /// Leaf changes always by `mprotect` runs, however many (non-leaf revocations still
    /// cycle the memslot: protecting frames cannot reach a whole subtree).
    Mprotect,
    /// Every invalidation that needs anything is a memslot cycle.
    Memslot,
    /// Every invalidation that needs anything is done by the guest's own ring-0
    /// rewrite of the changed entries on the way back from the hypercall, when the
    /// hypercall returns plainly (else as `Auto`).
    Rewrite,
}

impl std::str::FromStr for InvalidationPolicy {
    type Err = String;

    /// `auto`, `mprotect`, `memslot` or `rewrite`.
    ///
    /// ```
    /// use vmm::flush::InvalidationPolicy;
    /// assert_eq!("memslot".parse(), Ok(InvalidationPolicy::Memslot));
    /// assert!("sometimes".parse::<InvalidationPolicy>().is_err());
    /// ```
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(InvalidationPolicy::Auto),
            "mprotect" => Ok(InvalidationPolicy::Mprotect),
            "memslot" => Ok(InvalidationPolicy::Memslot),
            "rewrite" => Ok(InvalidationPolicy::Rewrite),
            other => Err(format!(
                "unknown invalidation policy {other:?} (auto, mprotect, memslot, rewrite)"
            )),
        }
    }
}

/// The host-side invalidation for one VM.
pub struct KvmFlush {
    vm: Arc<VmFd>,
    /// Host address of guest RAM (GPA 0), as registered with KVM.
    host_base: u64,
    ram_frames: u64,
    dummy: MmapRegion<()>,
    /// How to invalidate.
    pub policy: InvalidationPolicy,
    /// Counters.
    pub stats: FlushStats,
    /// Set by the VMM while it serves a hypercall that may return through the rewrite
    /// trampoline ([`platform::layout::STORE_VA`]).
    pub rewrite_possible: bool,
    /// The vCPU whose hypercall is being served, and the vCPUs running (bit `v`: vCPU
    /// `v`), set by the VMM with `rewrite_possible`. The rewrite is chosen only while
    /// the caller is the one vCPU running: it flushes only the calling vCPU's TLB on
    /// hardware-assisted KVM, and it happens after the request returns, while each
    /// change is reported in one request only, so another vCPU flushing for its own
    /// changes in between would find them reported and not yet invalidated. With
    /// several vCPUs running, every invalidation is host-side, complete when the
    /// request returns, and reaches every vCPU.
    pub caller: u32,
    /// See [`KvmFlush::caller`].
    pub running: u64,
    /// Entries (machine addresses) the guest must rewrite on the way back.
    rewrite: Vec<u64>,
    /// What the deferred invalidations would need if the rewrite cannot happen after
    /// all (an upcall or `iret` on the way back): the frames, and whether a non-leaf
    /// entry was revoked.
    deferred: (Vec<Mfn>, bool),
}

/// The cost model behind [`InvalidationPolicy::Auto`], in microseconds, from
/// measurements on this host class (KVM-PVM; `pvmmu bench`, the stress guest): the
/// guest's rewrite costs a ring-0 round trip without an exit (with the TLB flush) plus
/// a trapped store per entry; an mprotect round trip costs the VMM per run and the
/// guest a round of refaults; a memslot cycle costs the VMM more and the guest a
/// refault of everything it touches next (which grows with its working set: the
/// stress guest ran 1.6 s with rewrites against 7.5 s with memslot cycles).
pub mod cost {
    /// Ring-0 round trip of the rewrite trampoline, with the TLB flush.
    pub const REWRITE_BASE: u64 = 30;
    /// Each trapped rewrite.
    pub const REWRITE_PER_ENTRY: u64 = 5;
    /// Each mprotect run, in the VMM.
    pub const MPROTECT_PER_RUN: u64 = 9;
    /// The guest's refaults after mprotect runs.
    pub const MPROTECT_REFAULTS: u64 = 70;
    /// A memslot cycle, in the VMM and in the guest's refaults.
    pub const MEMSLOT: u64 = 650;
}

impl std::fmt::Debug for KvmFlush {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvmFlush")
            .field("stats", &self.stats)
            .finish()
    }
}

impl KvmFlush {
    /// Invalidation for `vm`, whose RAM (`ram_frames` frames at GPA 0) is mapped at host
    /// address `host_base`. Creates the dummy memslot.
    pub fn new(vm: Arc<VmFd>, host_base: u64, ram_frames: u64) -> std::io::Result<KvmFlush> {
        let dummy = MmapRegion::new(DUMMY_SIZE as usize).map_err(std::io::Error::other)?;
        let f = KvmFlush {
            vm,
            host_base,
            ram_frames,
            dummy,
            policy: InvalidationPolicy::Auto,
            stats: FlushStats::default(),
            rewrite_possible: false,
            caller: 0,
            running: 1,
            rewrite: Vec::new(),
            deferred: (Vec::new(), false),
        };
        f.set_dummy(DUMMY_SIZE).map_err(std::io::Error::from)?;
        Ok(f)
    }

    fn set_dummy(&self, size: u64) -> Result<(), kvm_ioctls::Error> {
        let region = kvm_userspace_memory_region {
            slot: DUMMY_SLOT,
            flags: 0,
            guest_phys_addr: DUMMY_GPA,
            memory_size: size,
            userspace_addr: self.dummy.as_ptr() as u64,
        };
        // SAFETY: the dummy page is a live anonymous mapping of DUMMY_SIZE bytes owned by
        // `self` (the region outlives the slot: `drop` deletes the slot first).
        unsafe { self.vm.set_user_memory_region(region) }
    }

    /// Zaps every shadow page: delete and re-add the dummy slot.
    fn memslot_cycle(&mut self) {
        let start = std::time::Instant::now();
        self.stats.memslot_cycles += 1;
        if let Err(e) = self.set_dummy(0).and_then(|()| self.set_dummy(DUMMY_SIZE)) {
            warn!("memslot cycle failed: {e}");
        }
        self.stats.time += start.elapsed();
    }

    fn mprotect_run(&mut self, first: u64, n: u64) {
        let start = std::time::Instant::now();
        self.mprotect_frames(first, n);
        self.stats.time += start.elapsed();
    }

    fn mprotect_frames(&mut self, first: u64, n: u64) {
        self.stats.mprotects += 1;
        // SAFETY: `first..first + n` are RAM frames (checked by the caller), so the
        // range lies inside the guest RAM mapping; no other thread writes guest memory
        // while the vCPU is in the VMM, and the protection is restored immediately.
        unsafe {
            let addr = (self.host_base + first * 4096) as *mut libc::c_void;
            let len = (n * 4096) as usize;
            if libc::mprotect(addr, len, libc::PROT_READ) != 0
                || libc::mprotect(addr, len, libc::PROT_READ | libc::PROT_WRITE) != 0
            {
                warn!(
                    "mprotect of frames {first:#x}+{n} failed: {}",
                    std::io::Error::last_os_error()
                );
            }
        }
    }
}

/// Contiguous runs of `frames` (sorted, deduplicated) as `(first, count)`.
fn runs(frames: &[Mfn]) -> Vec<(u64, u64)> {
    let mut f: Vec<u64> = frames.iter().map(|m| m.0).collect();
    f.sort_unstable();
    f.dedup();
    let mut out: Vec<(u64, u64)> = Vec::new();
    for m in f {
        match out.last_mut() {
            Some((first, n)) if *first + *n == m => *n += 1,
            _ => out.push((m, 1)),
        }
    }
    out
}

impl KvmFlush {
    /// Invalidates every translation to `frames` (the old targets of entries the VMM
    /// changed in its own tables): mprotect runs, or one memslot cycle when there are
    /// many.
    pub fn invalidate(&mut self, frames: &[Mfn]) {
        let ram: Vec<Mfn> = frames
            .iter()
            .copied()
            .filter(|m| m.0 < self.ram_frames)
            .collect();
        let runs = runs(&ram);
        let cycle = match self.policy {
            InvalidationPolicy::Auto | InvalidationPolicy::Rewrite => {
                runs.len() > MAX_MPROTECT_RUNS
            }
            InvalidationPolicy::Mprotect => false,
            InvalidationPolicy::Memslot => !runs.is_empty(),
        };
        if cycle {
            self.memslot_cycle();
        } else {
            for (first, n) in runs {
                self.mprotect_run(first, n);
            }
        }
    }
}

impl TlbFlush for KvmFlush {
    /// Host-side invalidation covers every vCPU at once and stays done: each request
    /// needs only what changed since the previous one (`newly_stale`,
    /// `non_leaf_revoked`), whatever the guest's own TLB scope. A new table hooked in
    /// (a non-present non-leaf entry becoming present) needs nothing: KVM's shadow MMU
    /// finds it on the next fault, as it finds leaf upgrades.
    fn flush(&mut self, req: &FlushRequest) {
        self.stats.requests += 1;
        trace!(
            "flush {:?} stale {} new {} non_leaf {} revoked {}",
            req.reason,
            req.stale.len(),
            req.newly_stale.len(),
            req.non_leaf,
            req.non_leaf_revoked
        );
        let leaf = req.newly_stale.iter().any(|m| m.0 < self.ram_frames);
        if !req.non_leaf_revoked && !leaf {
            self.stats.nothing += 1;
            return;
        }
        if let Some(entries) = self.rewrite_instead(req) {
            self.rewrite.extend_from_slice(entries);
            self.deferred.0.extend_from_slice(&req.newly_stale);
            self.deferred.1 |= req.non_leaf_revoked;
            return;
        }
        if req.non_leaf_revoked {
            self.memslot_cycle();
            return;
        }
        self.invalidate(&req.newly_stale);
    }
}

impl KvmFlush {
    /// The entries to have the guest rewrite instead of a host-side invalidation, when
    /// that path is open for this hypercall and the cost model (or the policy) picks
    /// it.
    fn rewrite_instead<'r>(&self, req: &'r FlushRequest) -> Option<&'r [u64]> {
        let entries = req.revoked_entries.as_deref()?;
        // Only while no other vCPU runs: the request reports each change once, so
        // another vCPU's later flush would find nothing left to do while this one's
        // rewrite has yet to run (it runs when this vCPU goes back to the guest).
        // Host-side invalidation is complete when the request returns.
        let others = self.running & !(1u64.checked_shl(self.caller).unwrap_or(0));
        if !self.rewrite_possible || entries.is_empty() || others != 0 {
            return None;
        }
        let n = self.rewrite.len() + entries.len();
        let fits = n <= platform::layout::STORE_LIST_MAX
            && entries.iter().all(|&a| a >> 12 < self.ram_frames);
        let cheaper = match self.policy {
            InvalidationPolicy::Rewrite => true,
            InvalidationPolicy::Auto => {
                let rewrite = cost::REWRITE_BASE + cost::REWRITE_PER_ENTRY * n as u64;
                let runs = runs(&req.newly_stale).len();
                let host = if req.non_leaf_revoked || runs > MAX_MPROTECT_RUNS {
                    cost::MEMSLOT
                } else {
                    cost::MPROTECT_PER_RUN * runs as u64 + cost::MPROTECT_REFAULTS
                };
                rewrite < host
            }
            InvalidationPolicy::Mprotect | InvalidationPolicy::Memslot => false,
        };
        (fits && cheaper).then_some(entries)
    }

    /// Takes the entries the guest must rewrite on the way back from this hypercall
    /// (empty: none), and closes the path until the next hypercall.
    pub fn take_rewrite(&mut self) -> Vec<u64> {
        self.rewrite_possible = false;
        self.deferred = (Vec::new(), false);
        std::mem::take(&mut self.rewrite)
    }

    /// The rewrite cannot happen after all: invalidates host-side what it would have.
    pub fn rewrite_impossible(&mut self) {
        self.rewrite_possible = false;
        self.rewrite.clear();
        let (frames, non_leaf) = std::mem::take(&mut self.deferred);
        if non_leaf {
            self.memslot_cycle();
        } else {
            self.invalidate(&frames);
        }
    }

    /// Whether entries wait for the guest's rewrite.
    pub fn rewrite_pending(&self) -> bool {
        !self.rewrite.is_empty()
    }

    /// Counts a return through the rewrite of `n` entries.
    pub fn note_rewrite(&mut self, n: usize) {
        self.stats.rewrites += 1;
        self.stats.rewritten_entries += n as u64;
    }
}

impl Drop for KvmFlush {
    fn drop(&mut self) {
        // The slot goes before the region that backs it.
        let _ = self.set_dummy(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_merge_contiguous_frames() {
        let f = [Mfn(5), Mfn(3), Mfn(4), Mfn(9), Mfn(4)];
        assert_eq!(runs(&f), vec![(3, 3), (9, 1)]);
        assert!(runs(&[]).is_empty());
    }
}
