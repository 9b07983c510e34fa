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
}

impl std::str::FromStr for InvalidationPolicy {
    type Err = String;

    /// `auto`, `mprotect` or `memslot`.
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
            other => Err(format!(
                "unknown invalidation policy {other:?} (auto, mprotect, memslot)"
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
            InvalidationPolicy::Auto => runs.len() > MAX_MPROTECT_RUNS,
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
        if req.non_leaf_revoked {
            self.memslot_cycle();
            return;
        }
        if !req.newly_stale.iter().any(|m| m.0 < self.ram_frames) {
            self.stats.nothing += 1;
            return;
        }
        self.invalidate(&req.newly_stale);
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
