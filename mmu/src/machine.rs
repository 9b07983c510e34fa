//! The machine: guest memory, the frame table shared by all domains, the domains, and
//! the embedder's flush hook. Every PV MMU operation is a method of [`Machine`].

use std::collections::BTreeMap;
use std::ops::RangeInclusive;

use log::debug;
use pvmmu_abi::domid::{DOMID_FIRST_RESERVED, DOMID_IO, DOMID_XEN};
use vm_memory::{GuestMemory, GuestMemoryBackend};

use crate::domain::{Domain, DomainConfig};
use crate::entry::Mfn;
use crate::flush::{NoFlush, TlbFlush};
use crate::frame::FrameTable;
use crate::paging::PAGE_SIZE;

/// Number of Xen-reserved L4 slots (256..=271).
pub const XEN_L4_SLOTS: usize = 16;
/// First Xen-reserved L4 slot.
pub const FIRST_XEN_L4_SLOT: usize = 256;

/// Embedder errors (guest mistakes are Xen errno values instead).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MachineError {
    /// The guest memory has no RAM region starting at address 0... or is too large.
    #[error("guest memory layout unsupported: {0}")]
    Memory(String),
    /// A domain id is reserved or already in use.
    #[error("domain id {0} is reserved or in use")]
    DomainId(u16),
    /// No such domain.
    #[error("no domain {0}")]
    NoDomain(u16),
    /// A vCPU count outside 1..=64.
    #[error("bad vCPU count {0}")]
    Vcpus(u32),
    /// No such vCPU.
    #[error("domain {0} has no vCPU {1}")]
    NoVcpu(u16, u32),
    /// A frame is not free RAM.
    #[error("frame {0} is not free RAM")]
    FrameNotFree(Mfn),
    /// A frame is not one the hypervisor shares with that domain.
    #[error("frame {0} is not shared with the domain")]
    NotShared(Mfn),
    /// Teardown could not return every frame.
    #[error("teardown of domain {domain} left {frames} frames referenced")]
    Teardown {
        /// The domain.
        domain: u16,
        /// Frames still referenced (by other domains' mappings).
        frames: usize,
    },
}

/// Fixed machine-wide settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineConfig {
    /// Raw entries the library writes into L4 slots 256..=271 of every L4 it validates
    /// (the embedder's hypervisor area). Slot 256 is the read-only M2P: left empty in new
    /// L4s of domains with `VMASST_TYPE_m2p_strict`.
    pub xen_l4_slots: [u64; XEN_L4_SLOTS],
    /// I/O-memory frames that are read-only: Xen clears RW on mappings of them.
    pub ro_mmio: Vec<RangeInclusive<u64>>,
    /// Guest-physical address of a guest-readable copy of the M2P (8 bytes per frame),
    /// kept up to date by the library; `None` keeps the M2P only in the frame table.
    pub m2p_mirror: Option<u64>,
}

impl Default for MachineConfig {
    fn default() -> Self {
        MachineConfig {
            xen_l4_slots: [0; XEN_L4_SLOTS],
            ro_mmio: Vec::new(),
            m2p_mirror: None,
        }
    }
}

/// Counters of PV MMU work, for `--stats` and benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Entries checked during (recursive) validation.
    pub validated: u64,
    /// Entries written on a guest's request.
    pub applied: u64,
    /// Requests refused with an errno.
    pub rejected: u64,
    /// Flush requests issued.
    pub flushes: u64,
    /// Of `applied`, the entries served concurrently with other threads (see
    /// [`SharedMachine`](crate::SharedMachine)).
    pub concurrent: u64,
}

/// The PV MMU of one machine.
///
/// ```
/// use pvmmu::{DomainConfig, Machine, MachineConfig, Mfn};
/// use vm_memory::{GuestAddress, GuestMemoryMmap};
///
/// let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
/// let mut m = Machine::new(mem, MachineConfig::default()).unwrap();
/// m.create_domain(DomainConfig::new(1)).unwrap();
/// m.assign_frames(1, (0x10..0x100).map(Mfn)).unwrap();
/// assert_eq!(m.frames().get(Mfn(0x10)).unwrap().owner, 1);
/// assert!(m.audit().is_ok());
/// ```
#[derive(Debug)]
pub struct Machine<M, F = NoFlush> {
    pub(crate) mem: M,
    pub(crate) core: Core<F>,
    /// The bytes of every batch entry read from guest memory, when the embedder records
    /// them (see [`Machine::record_reads`]).
    pub(crate) reads: Option<Vec<u8>>,
}

/// Everything of a machine but its memory (so that operations can borrow the memory
/// and the bookkeeping separately).
#[derive(Debug, Clone)]
pub(crate) struct Core<F> {
    pub(crate) frames: FrameTable,
    pub(crate) domains: BTreeMap<u16, Domain>,
    pub(crate) config: MachineConfig,
    pub(crate) flusher: F,
    pub(crate) stats: Stats,
    /// Stale translations held by a domain's TLBs of frames it does not own.
    pub(crate) stale_foreign: std::collections::HashSet<(u16, u64)>,
    /// Set by the embedder to stop long batches between entries.
    pub(crate) interrupt: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
    /// The domain whose rights an FD of DOMID_IO stands for in the batch being served
    /// (Xen's `current->domain` in `get_page_from_l1e`): the caller of `mmu_update`.
    pub(crate) io_caller: Option<u16>,
    /// Preemption of long batched hypercalls (see [`Machine::set_preempt_budget`]).
    pub(crate) preempt: Preempt,
    /// What batches served concurrently leave to the exclusive path (see
    /// [`crate::concurrent`]).
    pub(crate) concurrent: crate::concurrent::Concurrent,
}

/// Work units of one multicall entry (reading it, dispatching it, writing its result)
/// against one `mmu_update` entry, as measured (about 430 ns against 40-50 ns).
pub const MULTICALL_ENTRY_UNITS: u64 = 8;

/// Where a top-level batched hypercall may stop and ask to be re-issued.
#[derive(Debug, Default, Clone)]
pub(crate) struct Preempt {
    /// Work units after which a call stops at its next preemption point.
    pub(crate) budget: Option<u64>,
    /// Set while a top-level call (not a multicall entry) runs.
    pub(crate) armed: bool,
    /// Set while a batch whose table validation Xen makes preemptible runs (pins, new
    /// base pointers and upper-level `mmu_update` entries): validation may then stop
    /// part-way (see [`crate::validate`]).
    pub(crate) partial_ok: bool,
    /// Tables whose de-validation stopped part-way during the current call, to be
    /// handed to the calling vCPU.
    pub(crate) parked: Vec<crate::entry::Mfn>,
    /// Work done when the call began.
    pub(crate) start: u64,
    /// Entries processed by batched calls (validation counts separately, in
    /// [`Stats::validated`]).
    pub(crate) work: u64,
    /// The arguments the call is to be re-issued with, when it stopped.
    pub(crate) continuation: Option<[u64; 5]>,
}

/// A copy of the machine's bookkeeping (frame table and M2P, domains and their vCPUs,
/// stale-TLB and flush state, counters, settings) over `M`'s clone of the memory. For
/// `GuestMemoryMmap`, whose regions are reference-counted, that is the same memory, not
/// a copy of it: the clone is a snapshot of everything but the memory, for embedders
/// (fuzzers, tests) that save and restore the memory themselves. Two machines over one
/// memory must not both serve guests.
///
/// ```
/// use pvmmu::{DomainConfig, Machine, MachineConfig, Mfn};
/// use vm_memory::{GuestAddress, GuestMemoryMmap};
///
/// let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
/// let mut m = Machine::new(mem, MachineConfig::default()).unwrap();
/// m.create_domain(DomainConfig::new(1)).unwrap();
/// m.assign_frames(1, (0x10..0x100).map(Mfn)).unwrap();
/// let snapshot = m.clone();
/// m.destroy_domain(1).unwrap();
/// assert_eq!(m.frames().get(Mfn(0x10)).unwrap().count, 0);
/// m = snapshot.clone(); // back to the snapshot (the memory was not written here)
/// assert_eq!(m.frames().get(Mfn(0x10)).unwrap().owner, 1);
/// assert_eq!(m.domain_ids(), [1]);
/// ```
impl<M: Clone, F: Clone> Clone for Machine<M, F> {
    fn clone(&self) -> Self {
        Machine {
            mem: self.mem.clone(),
            core: self.core.clone(),
            reads: self.reads.clone(),
        }
    }
}

impl<M: GuestMemory> Machine<M, NoFlush> {
    /// A machine over `mem` that flushes nothing (for embedders whose guests do not run
    /// on a CPU, such as tools that only inspect or build page tables; see
    /// [`Machine::with_flusher`] for everything else).
    pub fn new(mem: M, config: MachineConfig) -> Result<Self, MachineError> {
        Machine::with_flusher(mem, config, NoFlush)
    }
}

impl<M: GuestMemory, F: TlbFlush> Machine<M, F> {
    /// A machine over `mem` that hands its flushes to `flusher`. Every frame backed by
    /// `mem` is RAM in the frame table, initially free.
    pub fn with_flusher(mem: M, config: MachineConfig, flusher: F) -> Result<Self, MachineError> {
        let phys = mem
            .physical_memory()
            .ok_or_else(|| MachineError::Memory("no physical memory view".into()))?;
        let end = phys
            .iter()
            .map(|r| {
                use vm_memory::{Address, GuestMemoryRegion};
                r.last_addr().raw_value()
            })
            .max()
            .unwrap_or(0);
        let frames = usize::try_from(end / PAGE_SIZE + 1)
            .map_err(|_| MachineError::Memory("too many frames".into()))?;
        debug!("machine with {frames} frames");
        Ok(Machine {
            mem,
            core: Core {
                frames: FrameTable::new(frames),
                domains: BTreeMap::new(),
                config,
                flusher,
                stats: Stats::default(),
                stale_foreign: std::collections::HashSet::new(),
                interrupt: None,
                preempt: Preempt::default(),
                io_caller: None,
                concurrent: Default::default(),
            },
            reads: None,
        })
    }

    /// The guest memory.
    pub fn memory(&self) -> &M {
        &self.mem
    }

    /// The frame table.
    pub fn frames(&self) -> &FrameTable {
        &self.core.frames
    }

    /// Mutable access to the frame table, for tests that force counters.
    #[doc(hidden)]
    pub fn frames_mut_for_test(&mut self) -> &mut FrameTable {
        &mut self.core.frames
    }

    /// The flush hook.
    pub fn flusher(&mut self) -> &mut F {
        &mut self.core.flusher
    }

    /// Installs a flag the embedder sets when it is stopping the guest: batched
    /// hypercalls (mmu_update, mmuext_op, multicall) check it between entries, where
    /// Xen would check for preemption, and stop early with -EINTR. Meant for tearing a
    /// guest down promptly; a guest that keeps running would see the truncated batch.
    pub fn set_interrupt(&mut self, flag: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>) {
        self.core.interrupt = flag;
    }

    /// Lets long batched hypercalls made through [`Machine::hypercall`] stop at Xen's
    /// preemption points (between entries of `mmu_update`, `mmuext_op` and
    /// `multicall`) once they have done `budget` units of work (an entry of
    /// `mmu_update` or `mmuext_op` processed or an entry validated is one unit, a
    /// multicall entry [`MULTICALL_ENTRY_UNITS`]: about 40 ns of work each on a
    /// current x86 host), and ask to be re-issued, as Xen's continuations
    /// do: [`HypercallResult::continuation`](crate::HypercallResult::continuation)
    /// carries the rewritten arguments (the rest of the array, the count with
    /// `MMU_UPDATE_PREEMPTED` and `*pdone` holding what was done so far). `None` (the
    /// default) never stops. The slice forms and multicall entries never stop.
    pub fn set_preempt_budget(&mut self, budget: Option<u64>) {
        self.core.preempt.budget = budget;
    }

    /// Starts (`true`) or stops recording the bytes of every batch entry the
    /// hypercalls read from guest memory (requests of `mmu_update` and `mmuext_op`,
    /// multicall entries), in the order read. [`Machine::hypercall`] hands them back
    /// with each call's result; traces store them.
    pub fn record_reads(&mut self, on: bool) {
        self.reads = on.then(Vec::new);
    }

    /// Takes the entry bytes recorded since the last call (empty when not recording).
    pub fn take_reads(&mut self) -> Vec<u8> {
        self.reads.as_mut().map(std::mem::take).unwrap_or_default()
    }

    /// The machine configuration.
    pub fn config(&self) -> &MachineConfig {
        &self.core.config
    }

    /// Work counters.
    pub fn stats(&self) -> Stats {
        self.core.stats
    }

    /// A domain.
    pub fn domain(&self, id: u16) -> Option<&Domain> {
        self.core.domains.get(&id)
    }

    /// All domain ids.
    pub fn domain_ids(&self) -> Vec<u16> {
        self.core.domains.keys().copied().collect()
    }

    /// Creates a domain.
    pub fn create_domain(&mut self, config: DomainConfig) -> Result<u16, MachineError> {
        let id = config.id;
        if id >= DOMID_FIRST_RESERVED || self.core.domains.contains_key(&id) {
            return Err(MachineError::DomainId(id));
        }
        if config.vcpus == 0 || config.vcpus > 64 {
            return Err(MachineError::Vcpus(config.vcpus));
        }
        self.core.domains.insert(id, Domain::new(config));
        Ok(id)
    }

    /// Gives free RAM frames to domain `dom` (each with its allocation reference). On
    /// error, frames assigned before the bad one stay assigned.
    pub fn assign_frames(
        &mut self,
        dom: u16,
        frames: impl IntoIterator<Item = Mfn>,
    ) -> Result<(), MachineError> {
        if !self.core.domains.contains_key(&dom) {
            return Err(MachineError::NoDomain(dom));
        }
        self.give(dom, frames)
    }

    /// Gives free RAM frames to domain `dom` as pages the hypervisor shares with it
    /// (Xen's `share_xen_page_with_guest`: grant-table frames, for instance). Each holds
    /// its allocation reference and a permanent type reference: `writable` ones the
    /// writable type (the guest may map them read-write, never use them as page tables
    /// or descriptor pages), read-only ones no type, which refuses every other (the
    /// guest may map them read-only only). On error, frames shared before the bad one
    /// stay shared.
    ///
    /// ```
    /// use pvmmu::{DomainConfig, Machine, MachineConfig, Mfn, PageType};
    /// use vm_memory::{GuestAddress, GuestMemoryMmap};
    /// let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
    /// let mut m = Machine::new(mem, MachineConfig::default())?;
    /// let d = m.create_domain(DomainConfig::new(1))?;
    /// m.share_frames(d, [Mfn(0x20)], true)?;
    /// let p = m.frames().get(Mfn(0x20)).unwrap();
    /// assert_eq!((p.owner, p.ty, p.type_count, p.shared), (d, PageType::Writable, 1, true));
    /// # Ok::<(), pvmmu::MachineError>(())
    /// ```
    pub fn share_frames(
        &mut self,
        dom: u16,
        frames: impl IntoIterator<Item = Mfn>,
        writable: bool,
    ) -> Result<(), MachineError> {
        if !self.core.domains.contains_key(&dom) {
            return Err(MachineError::NoDomain(dom));
        }
        for mfn in frames {
            if !self.core.frames.share(mfn, dom, writable) {
                return Err(MachineError::FrameNotFree(mfn));
            }
        }
        Ok(())
    }

    /// Takes back a frame shared with `dom` by [`Machine::share_frames`], freeing it,
    /// if nothing but the sharing holds it: `Ok(false)` (and nothing changes) while the
    /// guest still maps or otherwise references it (Xen's -EBUSY when it releases grant
    /// status frames, XSA-255), `Ok(true)` when freed.
    ///
    /// ```
    /// use pvmmu::{DomainConfig, Machine, MachineConfig, Mfn};
    /// use vm_memory::{GuestAddress, GuestMemoryMmap};
    /// let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
    /// let mut m = Machine::new(mem, MachineConfig::default())?;
    /// let d = m.create_domain(DomainConfig::new(1))?;
    /// m.share_frames(d, [Mfn(0x20)], true)?;
    /// assert!(m.unshare_frame(d, Mfn(0x20))?);
    /// assert_eq!(m.frames().get(Mfn(0x20)).unwrap().count, 0);
    /// # Ok::<(), pvmmu::MachineError>(())
    /// ```
    pub fn unshare_frame(&mut self, dom: u16, mfn: Mfn) -> Result<bool, MachineError> {
        match self.core.frames.get(mfn) {
            Some(p) if p.owner == dom && p.shared && p.allocated => {
                if p.count > 1 || p.type_count > 1 {
                    return Ok(false);
                }
            }
            _ => return Err(MachineError::NotShared(mfn)),
        }
        if let Some(mut p) = self.core.frames.get_mut(mfn) {
            p.shared = false;
            p.allocated = false;
        }
        self.core.frames.drop_type(mfn);
        self.core.frames.put_page(mfn);
        Ok(true)
    }

    /// Reserves RAM frames for the hypervisor itself (owner `DOMID_XEN`): the embedder's
    /// hypervisor area. Guests cannot map them.
    pub fn reserve_xen_frames(
        &mut self,
        frames: impl IntoIterator<Item = Mfn>,
    ) -> Result<(), MachineError> {
        self.give(DOMID_XEN, frames)
    }

    /// Marks RAM frames as I/O memory (owner `DOMID_IO`); frames beyond RAM are I/O
    /// memory implicitly.
    pub fn assign_io_frames(
        &mut self,
        frames: impl IntoIterator<Item = Mfn>,
    ) -> Result<(), MachineError> {
        self.give(DOMID_IO, frames)
    }

    fn give(
        &mut self,
        owner: u16,
        frames: impl IntoIterator<Item = Mfn>,
    ) -> Result<(), MachineError> {
        for mfn in frames {
            if !self.core.frames.allocate(mfn, owner) {
                return Err(MachineError::FrameNotFree(mfn));
            }
        }
        Ok(())
    }

    /// Sets the M2P entry of `mfn` (as Xen does when it allocates a frame to a guest).
    pub fn set_m2p(&mut self, mfn: Mfn, pfn: u64) -> bool {
        self.core.write_m2p(&self.mem, mfn, pfn)
    }

    pub(crate) fn vcpu_check(&self, dom: u16, vcpu: u32) -> Result<(), MachineError> {
        let d = self
            .core
            .domains
            .get(&dom)
            .ok_or(MachineError::NoDomain(dom))?;
        if (vcpu as usize) < d.vcpus.len() {
            Ok(())
        } else {
            Err(MachineError::NoVcpu(dom, vcpu))
        }
    }
}

impl<F> Core<F> {
    /// Counts one entry of a batched call as `units` of work, and says whether the call
    /// should stop before it (Xen's `hypercall_preempt_check` between entries: not
    /// before the first one).
    pub(crate) fn preempt_before(&mut self, i: u32, units: u64) -> bool {
        self.preempt.work += units;
        let p = &self.preempt;
        i > 0
            && p.armed
            && p.budget
                .is_some_and(|b| (p.work + self.stats.validated).saturating_sub(p.start) > b)
    }

    /// Work done so far (for [`Preempt::start`]).
    pub(crate) fn work_now(&self) -> u64 {
        self.preempt.work + self.stats.validated
    }

    /// Whether the embedder asked long batches to stop.
    /// Whether a preemptible validation should stop before its next entry (Xen's
    /// `hypercall_preempt_check` inside `alloc_lN_table`).
    pub(crate) fn validation_preempt_due(&self) -> bool {
        let p = &self.preempt;
        p.partial_ok
            && p.armed
            && p.budget
                .is_some_and(|b| (p.work + self.stats.validated).saturating_sub(p.start) > b)
    }

    pub(crate) fn interrupted(&self) -> bool {
        self.interrupt
            .as_ref()
            .is_some_and(|f| f.load(std::sync::atomic::Ordering::Relaxed))
    }

    pub(crate) fn write_m2p<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
        mfn: Mfn,
        pfn: u64,
    ) -> bool {
        if !self.frames.set_m2p(mfn, pfn) {
            return false;
        }
        if let Some(base) = self.config.m2p_mirror {
            use vm_memory::{Bytes, GuestAddress};
            let addr = mfn.0.checked_mul(8).and_then(|o| o.checked_add(base));
            if let Some(a) = addr {
                let _ = mem.write_obj(pfn, GuestAddress(a));
            }
        }
        true
    }
}
