//! An independent reference model of Xen's x86-64 PV MMU, used as the oracle of the
//! `mmu_ops` harness (and available to the property tests): it predicts the exact
//! result of every operation (errno and `done` count of every batch, RAX of the single
//! calls, the outcome of a writable-page-table write), applies its own prediction to
//! its own state, and [`XenModel::compare`] then checks the library's frame table,
//! roots and memory against that state.
//!
//! # What it models
//!
//! The rules of the project's Xen reference (`reference/xen-pvmmu.md`, checked against
//! Xen's `arch/x86/mm.c` where it is silent) for a 64-bit PV guest, release build:
//!
//! - its own frame table: per RAM frame the owner, general count, allocation reference,
//!   type (none, L1..L4, descriptor, shared, writable), type count, validated and
//!   pinned bits and the XSA-240 linear counter; general and type references are taken
//!   and dropped as Xen takes and drops them (`get_page`, `get_page_type` with the type
//!   change at type count 0, recursive promotion of a new subtree, recursive demotion
//!   on the last type reference, freeing on the last general reference);
//! - its own copy of guest memory: every byte any operation writes (validated entries,
//!   the rewrite of guest entries, the hypervisor's L4 slots, raw stores into frames
//!   that are not live tables, `CLEAR_PAGE`, `COPY_PAGE`, the RO-M2P slot on a new base
//!   pointer) is written by the model itself; it reads the library's memory only once,
//!   when it is created;
//! - per-level rules: disallowed flags (with Xen's relaxed L1 mask for domains with I/O
//!   rights), the guest-kernel rewrite of L1 entries (US + bit 52 for kernel mappings,
//!   US + G for user ones; US at L2/L3; A + US at L4), the fast path for whitelisted
//!   flag changes, ownership and the privileged-mapping exception, I/O memory with its
//!   permission checks (the caller's rights for FD = DOMID_IO) and forced-UC flip,
//!   -EACCES for non-WB attributes on the hypervisor's own and shared pages, reserved L4
//!   slots, linear page tables with the single-level rule and the 16-bit counters;
//! - the operations: `mmu_update` (normal, preserve-A/D, no-translate, machphys, bad
//!   commands), every `mmuext_op` command, `update_va_mapping(_otherdomain)` with the
//!   flush-target read that may fail after the update, ptwr writes (with CMPXCHG),
//!   `vm_assist`, a guest's own store into its memory, and domain teardown; foreign
//!   domain (FD/PFD) decoding and the dummy XSM permission policy.
//!
//! # What it does not model
//!
//! - Every TLB flush: [`XenModel::flush_needs`] lists the flushes Xen performs that
//!   the guest asked for or that XSA-286 requires (the `mmuext_op` flush commands,
//!   `NEW_BASEPTR`'s CR3 reload, `update_va_mapping`'s `UVMF_*` flush, the flush of
//!   the table owner's vCPUs after an `mmu_update` batch that changed an L2..L4
//!   entry), and [`check_recorded`] requires the library's requests to cover them;
//!   the flushes before a frame changes type are not predicted (Xen decides them from
//!   TLB-flush timestamps), nor is which frames a request reports stale.
//! - The L1TF check on non-present entries (the library does not implement it either;
//!   the reference §4.9 leaves that choice to a model that controls guest walks).
//! - Descriptor pages (GDT, filled LDT windows), grant mappings and registered guest
//!   areas: the harness never creates them, and [`XenModel::from_machine`] refuses a
//!   machine that has any. `MMUEXT_SET_LDT` is modelled (it only records the LDT).
//! - Preemption and continuations: every operation runs to completion, as in the
//!   library.
//!
//! # Where it disagrees with the library
//!
//! Where Xen and the library differ the model follows Xen, so the harness reports the
//! difference if it reaches it. The three it found were fixed in the library
//! (`NEW_USER_BASEPTR` naming the current user root returns at once; FD = DOMID_IO
//! stands for the caller's I/O-memory rights, not the table owner's; -EACCES for
//! non-write-back mappings of the hypervisor's own pages), each with a test in
//! `tests/xen_model.rs`.
//!
//! # Independence
//!
//! The model never calls the library's validation, permission or frame-table code:
//! it uses only pvmmu-abi's command numbers, domain ids and errno values, pvmmu's plain
//! data types (`Caller`, `DomainConfig`, `MachineConfig`, `PtwrWrite`, ...), and reads
//! the library's frame table and memory only to initialise itself
//! ([`XenModel::from_machine`]; the harness instead builds it from its own setup
//! description with [`XenModel::new`]) and in [`XenModel::compare`].

use std::collections::BTreeMap;
use std::ops::RangeInclusive;
use std::sync::Arc;

use pvmmu::{
    BatchOutcome, Caller, DomainConfig, FlushRequest, FlushScope, Machine, MachineConfig, Mfn,
    PageType, PtwrOutcome, PtwrRefusal, PtwrWrite, RecordingFlush, TlbFlush,
};
use pvmmu_abi::mmu as abi;
use pvmmu_abi::{DOMID_INVALID, DOMID_IO, DOMID_SELF, DOMID_XEN, Errno, MmuUpdate, MmuextOp};
use vm_memory::{Bytes, GuestAddress, GuestMemory};

const P: u64 = 1;
const RW: u64 = 1 << 1;
const US: u64 = 1 << 2;
const PWT: u64 = 1 << 3;
const PCD: u64 = 1 << 4;
const ACC: u64 = 1 << 5;
const DIRTY: u64 = 1 << 6;
/// PAT at L1, PSE at L2/L3.
const BIT7: u64 = 1 << 7;
const GLOBAL: u64 = 1 << 8;
const GUEST_KERNEL: u64 = 1 << 52;
const ADDR: u64 = 0x000f_ffff_ffff_f000;
/// NX, bits 52..62, bits 9..11, G, D, A, US: what the fast path lets change.
const FAST_OK: u64 = 0xfff0_0000_0000_0000 | 0xe00 | GLOBAL | DIRTY | ACC | US;
/// The PTE bits Xen treats as flags: 0..=11 and 52..=63 (`get_pte_flags`).
const FLAG_BITS: u64 = 0xfff0_0000_0000_0fff;
/// Xen's software-available bits 9..=11 (`_PAGE_AVAIL`).
const AVAIL: u64 = 0xe00;
/// Bits 52..=62 (`_PAGE_AVAIL_HIGH`).
const AVAIL_HIGH: u64 = 0x7ff << 52;
/// No-execute (bit 63).
const NX: u64 = 1 << 63;
/// What `arch_init_memory` lets a guest set in any entry (`base_disallow_mask` is the
/// complement): P, RW, US, A, D, AVAIL, AVAIL_HIGH and NX (the CPU has NX).
const BASE_ALLOWED: u64 = P | RW | US | ACC | DIRTY | AVAIL | AVAIL_HIGH | NX;
/// `base_disallow_mask` as PTE flag bits: PWT, PCD, bit 7 (PSE/PAT), G.
const BASE_DISALLOW: u64 = FLAG_BITS & !BASE_ALLOWED;
/// Xen's cache-attribute bits of an L1 entry (`PAGE_CACHE_ATTRS`): PAT, PCD, PWT.
const CACHE_ATTRS: u64 = BIT7 | PCD | PWT;
/// `L1_DISALLOW_MASK`, release build: `(base | _PAGE_GNTTAB) & ~_PAGE_GLOBAL`, with
/// `_PAGE_GNTTAB` 0 outside debug builds: G is allowed at L1 (user mappings).
const L1_DISALLOW: u64 = BASE_DISALLOW & !GLOBAL;
/// `L2_DISALLOW_MASK`, `l3_disallow_mask(d)` for a 64-bit guest and
/// `L4_DISALLOW_MASK`: all `base_disallow_mask`, so no superpage (PSE) at L2 or L3
/// for a 64-bit PV guest, no cache attributes and no G above L1.
const L2_DISALLOW: u64 = BASE_DISALLOW;
/// See [`L2_DISALLOW`].
const L3_DISALLOW: u64 = BASE_DISALLOW;
/// See [`L2_DISALLOW`].
const L4_DISALLOW: u64 = BASE_DISALLOW;
const _: () = assert!(BASE_DISALLOW == PWT | PCD | BIT7 | GLOBAL);
const _: () = assert!(L1_DISALLOW == PWT | PCD | BIT7);

/// The flag bits Xen refuses in a present entry of a table at `level` (1..=4) owned by
/// a domain with (`io`) or without I/O rights: `l1_disallow_mask(d)` drops the cache
/// attributes for DOMID_IO and for a domain that may flush caches (I/O memory or
/// ports), the upper levels' masks do not depend on the domain.
const fn disallowed(level: u8, io: bool) -> u64 {
    match level {
        1 if io => L1_DISALLOW & !CACHE_ATTRS,
        1 => L1_DISALLOW,
        2 => L2_DISALLOW,
        3 => L3_DISALLOW,
        _ => L4_DISALLOW,
    }
}

/// The hypervisor's L4 slots of a 64-bit PV guest, which no guest update may change:
/// `ROOT_PAGETABLE_FIRST_XEN_SLOT` (256) ..= `ROOT_PAGETABLE_LAST_XEN_SLOT` (271)
/// (`is_guest_l4_slot`).
const XEN_SLOTS: RangeInclusive<usize> = 256..=271;
const M2P_SLOT: usize = 256;
const ENTRIES: usize = 512;
const PAGE: usize = 4096;
/// General counts stop two short of the 56-bit field's end.
const COUNT_LIMIT: u64 = (1 << 56) - 1;
/// Type counts are 55 bits.
const TYPE_LIMIT: u64 = (1 << 55) - 1;
const ASSIST_WRITABLE_PT: u32 = 2;
const ASSIST_M2P_STRICT: u32 = 32;
/// Types `vm_assist` accepts for a 64-bit PV guest: 0..=5 and 32.
const ASSIST_VALID: u64 = 0x3f | (1 << 32);

/// A frame's type, as the model keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FrameType {
    /// No type.
    #[default]
    None,
    /// A page table of level 1..=4.
    Table(u8),
    /// A GDT/LDT page.
    SegDesc,
    /// A mem-sharing page.
    Shared,
    /// Ordinary writable memory.
    Writable,
}

impl FrameType {
    fn level(self) -> Option<u8> {
        match self {
            FrameType::Table(l) => Some(l),
            _ => None,
        }
    }

    fn of(t: PageType) -> FrameType {
        match t {
            PageType::None => FrameType::None,
            PageType::L1 => FrameType::Table(1),
            PageType::L2 => FrameType::Table(2),
            PageType::L3 => FrameType::Table(3),
            PageType::L4 => FrameType::Table(4),
            PageType::SegDesc => FrameType::SegDesc,
            PageType::Shared => FrameType::Shared,
            PageType::Writable => FrameType::Writable,
        }
    }
}

/// The model's bookkeeping of one RAM frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame {
    /// Owner (a domain id, `DOMID_XEN`, `DOMID_IO`), `DOMID_INVALID` when free.
    pub owner: u16,
    /// General reference count.
    pub count: u64,
    /// Whether the allocation reference is held.
    pub allocated: bool,
    /// Whether the hypervisor shares the frame (one permanent type reference).
    pub shared: bool,
    /// Type (the last one when the type count is 0).
    pub ty: FrameType,
    /// Type count.
    pub type_count: u64,
    /// Whether the contents were validated for the type.
    pub validated: bool,
    /// Whether pinned.
    pub pinned: bool,
    /// XSA-240 counter: > 0 holds that many same-level entries, < 0 is referenced by
    /// that many.
    pub linear: i16,
}

impl Default for Frame {
    fn default() -> Self {
        Frame {
            owner: DOMID_INVALID,
            count: 0,
            allocated: false,
            shared: false,
            ty: FrameType::None,
            type_count: 0,
            validated: false,
            pinned: false,
            linear: 0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Dom {
    privileged: bool,
    device_model_of: Option<u16>,
    iomem: Vec<RangeInclusive<u64>>,
    ioports: bool,
    vm_assist: u64,
    /// Per vCPU: (kernel root, user root).
    roots: Vec<(Option<u64>, Option<u64>)>,
}

impl Dom {
    fn new(c: &DomainConfig) -> Dom {
        Dom {
            privileged: c.privileged,
            device_model_of: c.device_model_of,
            iomem: c.iomem.clone(),
            ioports: c.ioports,
            vm_assist: 0,
            roots: vec![(None, None); c.vcpus as usize],
        }
    }

    fn io_rights(&self) -> bool {
        !self.iomem.is_empty() || self.ioports
    }

    fn assist(&self, ty: u32) -> bool {
        ty < 64 && self.vm_assist & (1 << ty) != 0
    }
}

/// One operation, as the model and [`execute`] take it.
#[derive(Debug, Clone)]
pub enum ModelOp {
    /// `mmu_update(reqs, foreigndom)` from `caller`.
    MmuUpdate {
        /// Who calls.
        caller: Caller,
        /// The requests.
        reqs: Vec<MmuUpdate>,
        /// `foreigndom`.
        foreigndom: u32,
    },
    /// `mmuext_op(ops, foreigndom)` from `caller`.
    Mmuext {
        /// Who calls.
        caller: Caller,
        /// The operations.
        ops: Vec<MmuextOp>,
        /// `foreigndom`.
        foreigndom: u32,
    },
    /// `update_va_mapping(va, val, flags)`.
    UpdateVaMapping {
        /// Who calls.
        caller: Caller,
        /// The VA whose L1 entry changes.
        va: u64,
        /// The new entry.
        val: u64,
        /// `UVMF_*` flags (or a vCPU-bitmap pointer).
        flags: u64,
    },
    /// `update_va_mapping_otherdomain(va, val, flags, domid)`.
    UpdateVaMappingOtherdomain {
        /// Who calls.
        caller: Caller,
        /// The VA whose L1 entry changes.
        va: u64,
        /// The new entry.
        val: u64,
        /// `UVMF_*` flags.
        flags: u64,
        /// The owner of the mapped frame.
        domid: u64,
    },
    /// A guest kernel write to one of its L1 tables that faulted at `fault_va`.
    Ptwr {
        /// Who writes.
        caller: Caller,
        /// The faulting VA.
        fault_va: u64,
        /// The write.
        write: PtwrWrite,
    },
    /// `vm_assist(cmd, ty)`.
    VmAssist {
        /// Who calls.
        caller: Caller,
        /// Enable (0) / disable (1) / anything.
        cmd: u64,
        /// The assist type.
        ty: u64,
    },
    /// An 8-byte store the guest made directly into its own memory (through one of its
    /// writable mappings): no hypercall, the model just records the bytes.
    GuestStore {
        /// Machine address (8-byte aligned).
        addr: u64,
        /// The value.
        value: u64,
    },
    /// Domain teardown.
    Teardown {
        /// The domain.
        dom: u16,
    },
}

/// The result of one operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A batch (`mmu_update`, `mmuext_op`).
    Batch(BatchOutcome),
    /// The value for RAX (`update_va_mapping*`, `vm_assist`).
    Rax(i64),
    /// A writable-page-table write.
    Ptwr(Result<PtwrOutcome, PtwrRefusal>),
    /// A direct guest store (nothing to predict).
    Stored,
    /// Teardown: the number of frames still referenced by other domains (0: clean).
    Teardown(usize),
    /// The caller (or domain) does not exist: the library refuses with an embedder
    /// error.
    NoSuchCaller,
}

/// What a TLB flush Xen performs invalidates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NeedScope {
    /// Every non-global translation (`FLUSH_TLB`: `flush_tlb_local`, `flush_tlb_mask`,
    /// a CR3 reload). A request for every translation covers it too.
    Tlb,
    /// The translations of one virtual address (`flush_tlb_one_*`, `paging_invlpg`):
    /// covered by an invalidation of that address or of everything, global entries
    /// included (a CR3 reload keeps a global user mapping).
    Va(u64),
}

/// A TLB flush Xen performs during an operation: the library must request one that
/// covers it (the same domain, at least these vCPUs, at least this scope).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlushNeed {
    /// The domain whose vCPUs are flushed.
    pub domain: u16,
    /// The vCPUs (bit `i`: vCPU `i`) that must be flushed; Xen flushes the physical
    /// CPUs they may have run on, and the model counts every vCPU as having run.
    pub vcpus: u64,
    /// What must be invalidated.
    pub scope: NeedScope,
    /// Whether the flush must follow everything the operation changed: the last request
    /// for `domain` during the operation must cover it (`mmu_update`'s flush after an
    /// L2..L4 change, XSA-286; `update_va_mapping`'s flush after the update).
    /// Otherwise the needs of an operation are matched in order, each by a later
    /// request than the one before it (an `mmuext_op` batch's flush commands).
    pub last: bool,
}

impl NeedScope {
    fn covered_by(self, s: FlushScope) -> bool {
        match (self, s) {
            (_, FlushScope::All) => true,
            (NeedScope::Tlb, FlushScope::AllNonGlobal) => true,
            (NeedScope::Va(v), FlushScope::Va(w)) => v == w,
            _ => false,
        }
    }
}

impl FlushNeed {
    /// Whether `req` carries this flush out.
    pub fn covered_by(&self, req: &FlushRequest) -> bool {
        req.domain == self.domain
            && req.vcpus.0 & self.vcpus == self.vcpus
            && self.scope.covered_by(req.scope)
    }
}

/// Checks the flush requests the library made during one operation (`log`, oldest
/// first) against what Xen flushes (`needs`, from [`XenModel::flush_needs`]): every
/// need is covered (see [`FlushNeed::last`] for where). Requests nothing needs (the
/// library's flushes before a type change, which the model does not predict) are
/// allowed.
pub fn check_flushes(needs: &[FlushNeed], log: &[FlushRequest]) -> Result<(), String> {
    let mut next = 0;
    for n in needs {
        if n.last {
            let last = log.iter().rev().find(|r| r.domain == n.domain);
            if !last.is_some_and(|r| n.covered_by(r)) {
                return Err(format!(
                    "Xen flushes {n:x?} after everything the operation changed; the last \
                     request for domain {} was {last:x?}",
                    n.domain
                ));
            }
        } else {
            match log[next.min(log.len())..]
                .iter()
                .position(|r| n.covered_by(r))
            {
                Some(k) => next += k + 1,
                None => {
                    return Err(format!(
                        "Xen flushes {n:x?}; no request covers it (after the one matching \
                         the previous need): {log:x?}"
                    ));
                }
            }
        }
    }
    Ok(())
}

/// Why a model could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModelError {
    /// Guest memory could not be read.
    #[error("guest memory frame {0:#x} unreadable")]
    Memory(u64),
    /// The machine uses something the model does not model.
    #[error("not modelled: {0}")]
    Unsupported(String),
}

/// How an entry is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum How {
    Plain,
    KeepAd,
    IfEqual(u64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wrote {
    Yes,
    Mismatch(u64),
}

/// The model's copy of guest memory, little-endian, 4096 bytes per RAM frame: the
/// contents as loaded, shared by every clone, and the pages written since, each copied
/// on its first write. A clone of a model (a snapshot) so costs the pages written, not
/// the whole memory.
#[derive(Debug, Clone)]
struct Memory {
    /// The contents as loaded (`frames * PAGE` bytes).
    base: Arc<[u8]>,
    /// Per frame: 0 for the loaded page, `k` for `written[k - 1]`.
    map: Vec<u32>,
    written: Vec<Box<[u8]>>,
}

impl Memory {
    fn new(base: Arc<[u8]>) -> Memory {
        Memory {
            map: vec![0; base.len() / PAGE],
            base,
            written: Vec::new(),
        }
    }

    fn frames(&self) -> usize {
        self.map.len()
    }

    /// The page of frame `f`, if it is RAM.
    fn page(&self, f: usize) -> Option<&[u8]> {
        match *self.map.get(f)? {
            0 => self.base.get(f * PAGE..(f + 1) * PAGE),
            k => self.written.get(k as usize - 1).map(|p| &p[..]),
        }
    }

    /// The page of frame `f` for writing (copied from the loaded one first).
    fn page_mut(&mut self, f: usize) -> Option<&mut [u8]> {
        let k = *self.map.get(f)?;
        let k = if k == 0 {
            let copy = self.base.get(f * PAGE..(f + 1) * PAGE)?.into();
            self.written.push(copy);
            let k = u32::try_from(self.written.len()).ok()?;
            self.map[f] = k;
            k
        } else {
            k
        };
        self.written.get_mut(k as usize - 1).map(|p| &mut p[..])
    }

    /// The frames written since the contents were loaded.
    fn written_frames(&self) -> impl Iterator<Item = u64> + '_ {
        self.map
            .iter()
            .enumerate()
            .filter(|(_, k)| **k != 0)
            .map(|(f, _)| f as u64)
    }
}

/// Equal contents, however they are stored.
impl PartialEq for Memory {
    fn eq(&self, o: &Memory) -> bool {
        self.frames() == o.frames() && (0..self.frames()).all(|f| self.page(f) == o.page(f))
    }
}

impl Eq for Memory {}

/// The independent model of one machine's PV MMU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XenModel {
    frames: Vec<Frame>,
    /// The model's copy of guest memory.
    mem: Memory,
    m2p: Vec<u64>,
    doms: BTreeMap<u16, Dom>,
    xen_slots: [u64; 16],
    ro_mmio: Vec<RangeInclusive<u64>>,
    touched: Vec<u64>,
    /// The flushes Xen performs during the operation last predicted.
    needs: Vec<FlushNeed>,
    /// The domain whose hypercall is being modelled (Xen's `current->domain`).
    current: u16,
}

impl XenModel {
    /// An empty machine of `frames` RAM frames (all free, memory all zero) with the
    /// library's machine configuration (hypervisor L4 slots, read-only MMIO).
    pub fn new(frames: usize, config: &MachineConfig) -> XenModel {
        XenModel {
            frames: vec![Frame::default(); frames],
            mem: Memory::new(vec![0; frames * PAGE].into()),
            m2p: vec![u64::MAX; frames],
            doms: BTreeMap::new(),
            xen_slots: config.xen_l4_slots,
            ro_mmio: config.ro_mmio.clone(),
            touched: Vec::new(),
            needs: Vec::new(),
            current: DOMID_INVALID,
        }
    }

    /// Adds a domain, as `Machine::create_domain` does.
    pub fn create_domain(&mut self, config: &DomainConfig) {
        self.doms.insert(config.id, Dom::new(config));
    }

    /// Changes a domain's rights (privilege, device-model target, I/O memory, I/O ports)
    /// to `config`'s, as the library's rights calls (`permit_iomem`, `set_privileged`,
    /// ...) change them; the vCPUs, roots and assists stay.
    pub fn set_rights(&mut self, config: &DomainConfig) {
        if let Some(d) = self.doms.get_mut(&config.id) {
            d.privileged = config.privileged;
            d.device_model_of = config.device_model_of;
            d.iomem = config.iomem.clone();
            d.ioports = config.ioports;
        }
    }

    /// Gives free frames to `owner` (a domain, `DOMID_XEN` or `DOMID_IO`) with their
    /// allocation references; `false` (and stops) at a frame that is not free RAM.
    pub fn assign_frames(&mut self, owner: u16, frames: impl IntoIterator<Item = Mfn>) -> bool {
        for mfn in frames {
            match self.frame_mut(mfn.0) {
                Some(f) if f.count == 0 && f.owner == DOMID_INVALID => {
                    *f = Frame {
                        owner,
                        count: 1,
                        allocated: true,
                        ..Frame::default()
                    }
                }
                _ => return false,
            }
        }
        true
    }

    /// Copies the contents of every RAM frame from `mem` (the memory the guest and the
    /// builder prepared before the first modelled operation).
    pub fn load_memory<M: GuestMemory>(&mut self, mem: &M) -> Result<(), ModelError> {
        let mut bytes = vec![0u8; self.frames.len() * PAGE];
        for (f, page) in bytes.chunks_exact_mut(PAGE).enumerate() {
            let f = f as u64;
            mem.read_slice(page, GuestAddress(f << 12))
                .map_err(|_| ModelError::Memory(f))?;
        }
        self.mem = Memory::new(bytes.into());
        Ok(())
    }

    /// The model's copy of RAM frame `mfn`'s contents.
    pub fn page(&self, mfn: u64) -> Option<&[u8]> {
        self.mem.page(usize::try_from(mfn).ok()?)
    }

    /// The frames whose contents the model wrote since its memory was loaded (a superset
    /// of those that differ from the loaded contents).
    pub fn written_frames(&self) -> impl Iterator<Item = u64> + '_ {
        self.mem.written_frames()
    }

    /// A model of `m` as it is now: its frame table, domains, roots, assists and
    /// memory are copied once; from then on the model follows only its own
    /// predictions. Refuses machines with state the model does not model (descriptor
    /// pages, LDT windows, registered `vcpu_info` pages, grant mappings). A registered
    /// PIRQ EOI map is not visible through the library's API: its references are
    /// copied, but the model would not release them at teardown.
    pub fn from_machine<M: GuestMemory, F: TlbFlush>(
        m: &Machine<M, F>,
    ) -> Result<XenModel, ModelError> {
        let mut x = XenModel::new(m.frames().len(), m.config());
        for (mfn, p) in m.frames().iter() {
            if p.ty == PageType::SegDesc && p.type_count > 0 {
                return Err(ModelError::Unsupported(format!("descriptor page {mfn}")));
            }
            if let Some(f) = x.frame_mut(mfn.0) {
                *f = Frame {
                    owner: p.owner,
                    count: p.count,
                    allocated: p.allocated,
                    shared: p.shared,
                    ty: FrameType::of(p.ty),
                    type_count: p.type_count,
                    validated: p.validated,
                    pinned: p.pinned,
                    linear: p.linear,
                };
            }
            if let (Some(e), Some(v)) = (x.m2p.get_mut(mfn.0 as usize), m.frames().m2p(mfn)) {
                *e = v;
            }
        }
        for id in m.domain_ids() {
            let Some(d) = m.domain(id) else { continue };
            if !m.grant_mappings(id).is_empty() {
                return Err(ModelError::Unsupported(format!("grant mappings of {id}")));
            }
            let mut dom = Dom::new(d.config());
            dom.vm_assist = d.vm_assist();
            for (i, v) in d.vcpus().iter().enumerate() {
                if !v.gdt_frames.is_empty()
                    || v.ldt_mapped.iter().any(Option::is_some)
                    || v.vcpu_info_frame.is_some()
                {
                    return Err(ModelError::Unsupported(format!("vCPU {i} of {id} areas")));
                }
                if let Some(r) = dom.roots.get_mut(i) {
                    *r = (v.kernel_root.map(|m| m.0), v.user_root.map(|m| m.0));
                }
            }
            x.doms.insert(id, dom);
        }
        x.load_memory(m.memory())?;
        Ok(x)
    }

    /// The model's bookkeeping of `mfn`, if it is RAM.
    pub fn frame(&self, mfn: u64) -> Option<&Frame> {
        usize::try_from(mfn).ok().and_then(|i| self.frames.get(i))
    }

    /// The model's copy of entry `idx` of frame `mfn`.
    pub fn entry(&self, mfn: u64, idx: usize) -> Option<u64> {
        let o = self.slot(mfn, idx)?;
        self.mem
            .page(o / PAGE)
            .and_then(|p| p.get(o % PAGE..o % PAGE + 8))
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
    }

    /// Whether domain `dom` exists in the model.
    pub fn has_domain(&self, dom: u16) -> bool {
        self.doms.contains_key(&dom)
    }

    /// The kernel root of a vCPU.
    pub fn kernel_root(&self, c: Caller) -> Option<u64> {
        self.roots(c).and_then(|r| r.0)
    }

    fn frame_mut(&mut self, mfn: u64) -> Option<&mut Frame> {
        usize::try_from(mfn)
            .ok()
            .and_then(|i| self.frames.get_mut(i))
    }

    /// The byte offset of entry `idx` of frame `mfn` in the model's memory.
    fn slot(&self, mfn: u64, idx: usize) -> Option<usize> {
        let f = usize::try_from(mfn).ok()?;
        (f < self.frames.len() && idx < ENTRIES).then_some(f * PAGE + idx * 8)
    }

    fn read(&self, mfn: u64, idx: usize) -> u64 {
        self.entry(mfn, idx).unwrap_or(0)
    }

    fn write(&mut self, mfn: u64, idx: usize, v: u64) {
        if let Some(b) = self.slot(mfn, idx).and_then(|o| {
            self.mem
                .page_mut(o / PAGE)
                .and_then(|p| p.get_mut(o % PAGE..o % PAGE + 8))
        }) {
            b.copy_from_slice(&v.to_le_bytes());
            if self.touched.last() != Some(&mfn) {
                self.touched.push(mfn);
            }
        }
    }

    fn roots(&self, c: Caller) -> Option<(Option<u64>, Option<u64>)> {
        self.doms
            .get(&c.dom)
            .and_then(|d| d.roots.get(c.vcpu as usize))
            .copied()
    }

    fn caller_ok(&self, c: Caller) -> bool {
        self.roots(c).is_some()
    }

    // ---- Permissions ----------------------------------------------------------------

    /// Whether domain `a` may act on `b` (itself, privilege, device model).
    fn controls(&self, a: u16, b: u16) -> bool {
        a == b
            || self
                .doms
                .get(&a)
                .is_some_and(|d| d.privileged || d.device_model_of == Some(b))
    }

    /// The dummy XSM's `XSM_TARGET` for a foreign domain (DOMID_XEN needs privilege).
    fn may_use(&self, caller: u16, target: u16) -> bool {
        if target == caller {
            return true;
        }
        let Some(d) = self.doms.get(&caller) else {
            return false;
        };
        if target == DOMID_XEN {
            return d.privileged;
        }
        d.privileged || d.device_model_of == Some(target)
    }

    /// Xen's `get_pg_owner`.
    fn pg_owner(&self, caller: u16, fd: u16) -> Result<u16, Errno> {
        if fd == DOMID_SELF {
            Ok(caller)
        } else if fd == caller {
            Err(Errno::ESRCH)
        } else if fd == DOMID_IO || fd == DOMID_XEN || self.doms.contains_key(&fd) {
            Ok(fd)
        } else {
            Err(Errno::ESRCH)
        }
    }

    fn iomem_ok(&self, d: u16, mfn: u64) -> bool {
        self.doms
            .get(&d)
            .is_some_and(|x| x.iomem.iter().any(|r| r.contains(&mfn)))
    }

    fn l1_bad(&self, d: u16) -> u64 {
        disallowed(
            1,
            d == DOMID_IO || self.doms.get(&d).is_some_and(Dom::io_rights),
        )
    }

    fn owned_by(&self, mfn: u64, owner: u16) -> bool {
        self.frame(mfn)
            .is_some_and(|f| f.owner == owner && f.count > 0)
    }

    // ---- References -----------------------------------------------------------------

    fn get_page(&mut self, mfn: u64, owner: u16) -> bool {
        match self.frame_mut(mfn) {
            Some(f) if f.owner == owner && f.count > 0 && f.count + 1 < COUNT_LIMIT - 1 => {
                f.count += 1;
                true
            }
            _ => false,
        }
    }

    fn put_page(&mut self, mfn: u64) {
        if let Some(f) = self.frame_mut(mfn) {
            f.count = f.count.saturating_sub(1);
            if f.count == 0 {
                *f = Frame::default();
            }
        }
    }

    /// Takes a type reference; `Ok(true)` if the frame must now be validated.
    fn take_type(&mut self, mfn: u64, ty: FrameType) -> Result<bool, Errno> {
        let f = self.frame_mut(mfn).ok_or(Errno::EINVAL)?;
        if f.type_count >= TYPE_LIMIT {
            return Err(Errno::EINVAL);
        }
        if f.type_count == 0 {
            if f.ty != ty {
                f.ty = ty;
                f.validated = false;
                f.linear = 0;
            }
            if matches!(ty, FrameType::Writable | FrameType::Shared) {
                f.validated = true;
            }
        } else if f.ty != ty {
            return Err(Errno::EINVAL);
        }
        f.type_count += 1;
        Ok(!f.validated)
    }

    /// `get_page_type`: takes the type, promoting the frame on its first reference.
    fn get_type(&mut self, mfn: u64, ty: FrameType) -> Result<(), Errno> {
        if !self.take_type(mfn, ty)? {
            return Ok(());
        }
        let r = match ty.level() {
            Some(level) => self.promote(mfn, level),
            None => Err(Errno::EINVAL),
        };
        if let Some(f) = self.frame_mut(mfn) {
            match r {
                Ok(()) => f.validated = true,
                Err(_) => {
                    f.ty = FrameType::None;
                    f.type_count = 0;
                    f.validated = false;
                    f.pinned = false;
                    f.linear = 0;
                }
            }
        }
        r
    }

    /// `put_page_type`: the last reference of a validated table demotes it.
    fn put_type(&mut self, mfn: u64) {
        let Some(f) = self.frame_mut(mfn) else {
            return;
        };
        f.type_count = f.type_count.saturating_sub(1);
        if f.type_count > 0 {
            return;
        }
        f.pinned = false;
        if let (Some(level), true) = (f.ty.level(), f.validated) {
            f.validated = false;
            self.demote(mfn, level);
        }
    }

    fn get_page_and_type(&mut self, mfn: u64, owner: u16, ty: FrameType) -> Result<(), Errno> {
        if !self.get_page(mfn, owner) {
            return Err(Errno::EINVAL);
        }
        self.get_type(mfn, ty).inspect_err(|_| self.put_page(mfn))
    }

    fn put_page_and_type(&mut self, mfn: u64) {
        self.put_type(mfn);
        self.put_page(mfn);
    }

    /// `get_page_from_l1e` for a present entry of a table owned by `pt` mapping a
    /// frame of `fd`: the bits to flip in the stored entry.
    fn get_l1e(&mut self, e: u64, pt: u16, fd: u16) -> Result<u64, Errno> {
        if e & self.l1_bad(pt) != 0 {
            return Err(Errno::EINVAL);
        }
        let mfn = (e & ADDR) >> 12;
        match self.frame(mfn).map(|f| f.owner) {
            Some(real) if real != DOMID_IO => {
                // RAM (free RAM included): must be FD's, or a frame of a domain FD
                // controls when FD maps into someone else's table.
                let mut pg = fd;
                if real != fd {
                    if fd != pt && self.doms.contains_key(&fd) && self.controls(fd, real) {
                        pg = real;
                    } else {
                        return Err(Errno::EBUSY);
                    }
                }
                if !self.get_page(mfn, pg) {
                    return Err(Errno::EBUSY);
                }
                if e & RW != 0 && self.take_type(mfn, FrameType::Writable).is_err() {
                    self.put_page(mfn);
                    return Err(Errno::EBUSY);
                }
                // Non-WB attributes on a hypervisor page (Xen's "special" pages: its
                // own frames and the frames it shares with guests) are refused.
                let special = self
                    .frame(mfn)
                    .is_some_and(|f| f.owner == DOMID_XEN || f.shared);
                if e & (BIT7 | PCD | PWT) != 0 && special {
                    if e & RW != 0 {
                        self.put_type(mfn);
                    }
                    self.put_page(mfn);
                    return Err(Errno::EACCES);
                }
                Ok(0)
            }
            _ => {
                // I/O memory: no references, permission of FD and of the table
                // owner. FD DOMID_IO means the *calling* domain's permission (Xen's
                // `pg_owner = curr->domain`), which differs from the table owner's
                // when a privileged caller names a foreign PFD.
                let pg = if fd == DOMID_IO { self.current } else { fd };
                if !self.iomem_ok(pg, mfn) || (pg != pt && !self.iomem_ok(pt, mfn)) {
                    return Err(if mfn == ADDR >> 12 {
                        Errno::EINVAL
                    } else {
                        Errno::EPERM
                    });
                }
                let mut flip = 0;
                if e & RW != 0 && self.ro_mmio.iter().any(|r| r.contains(&mfn)) {
                    flip |= RW;
                }
                // PAT index from PAT:PCD:PWT; anything but UC (3), UC- (2), WC (4)
                // becomes UC.
                let idx = ((e & BIT7) >> 5) | ((e & PCD) >> 3) | ((e & PWT) >> 3);
                if !matches!(idx, 2..=4) {
                    flip |= (e & (BIT7 | PCD | PWT)) ^ (PCD | PWT);
                }
                Ok(flip)
            }
        }
    }

    /// `put_page_from_l1e`.
    fn put_l1e(&mut self, e: u64) {
        if e & P == 0 {
            return;
        }
        let mfn = (e & ADDR) >> 12;
        if !self
            .frame(mfn)
            .is_some_and(|f| f.owner != DOMID_IO && f.count > 0)
        {
            return;
        }
        if e & RW != 0 {
            self.put_type(mfn);
        }
        self.put_page(mfn);
    }

    /// `get_page_from_l2e/l3e/l4e` for entry `e` of `table` (level `level`, owner `d`).
    fn get_upper(&mut self, level: u8, e: u64, table: u64, d: u16) -> Result<(), Errno> {
        if e & disallowed(level, false) != 0 {
            return Err(Errno::EINVAL);
        }
        let target = (e & ADDR) >> 12;
        match self.get_page_and_type(target, d, FrameType::Table(level - 1)) {
            Err(Errno::EINVAL) => {
                if self.linear(level, e, table, d) {
                    Ok(())
                } else {
                    Err(Errno::EINVAL)
                }
            }
            r => r,
        }
    }

    /// The linear page-table rule (same-level entry), XSA-240 counters included.
    fn linear(&mut self, level: u8, e: u64, table: u64, d: u16) -> bool {
        if e & RW != 0 {
            return false;
        }
        let target = (e & ADDR) >> 12;
        if target == table {
            return true;
        }
        let (Some(t), Some(p)) = (self.frame(target).copied(), self.frame(table).copied()) else {
            return false;
        };
        if p.linear < 0 || p.linear == i16::MAX || t.linear > 0 || t.linear == i16::MIN {
            return false;
        }
        if t.owner != d || p.owner != d {
            return false;
        }
        if t.ty != FrameType::Table(level) || !t.validated || t.type_count == 0 {
            return false;
        }
        if !self.get_page(target, d) {
            return false;
        }
        if self.take_type(target, FrameType::Table(level)).is_err() {
            self.put_page(target);
            return false;
        }
        if let Some(f) = self.frame_mut(table) {
            f.linear += 1;
        }
        if let Some(f) = self.frame_mut(target) {
            f.linear -= 1;
        }
        true
    }

    /// `put_page_from_l2e/l3e/l4e`.
    fn put_upper(&mut self, level: u8, e: u64, table: u64) {
        if e & P == 0 {
            return;
        }
        let target = (e & ADDR) >> 12;
        if target == table {
            return;
        }
        if self
            .frame(target)
            .is_some_and(|f| f.ty == FrameType::Table(level))
        {
            if let Some(f) = self.frame_mut(target) {
                f.linear += 1;
            }
            if let Some(f) = self.frame_mut(table) {
                f.linear -= 1;
            }
        }
        self.put_page_and_type(target);
    }

    fn release(&mut self, level: u8, e: u64, table: u64) {
        if level == 1 {
            self.put_l1e(e);
        } else {
            self.put_upper(level, e, table);
        }
    }

    /// Validates `mfn` as a table of `level`, recursively; all or nothing (but entries
    /// before a failing one keep their rewritten values, as in Xen).
    fn promote(&mut self, mfn: u64, level: u8) -> Result<(), Errno> {
        let d = self.frame(mfn).map(|f| f.owner).ok_or(Errno::EINVAL)?;
        if self.slot(mfn, 0).is_none() {
            return Err(Errno::EINVAL);
        }
        if let Some(f) = self.frame_mut(mfn) {
            f.linear = 0;
        }
        for i in 0..ENTRIES {
            if level == 4 && XEN_SLOTS.contains(&i) {
                continue;
            }
            let e = self.read(mfn, i);
            if e & P == 0 {
                continue;
            }
            let r = if level == 1 {
                self.get_l1e(e, d, d).map(|flip| e ^ flip)
            } else {
                self.get_upper(level, e, mfn, d).map(|()| e)
            };
            match r {
                Ok(v) => {
                    let adjusted = adjust(level, v);
                    if adjusted != e {
                        self.write(mfn, i, adjusted);
                    }
                }
                Err(err) => {
                    for j in (0..i).rev() {
                        if level == 4 && XEN_SLOTS.contains(&j) {
                            continue;
                        }
                        let done = self.read(mfn, j);
                        self.release(level, done, mfn);
                    }
                    return Err(err);
                }
            }
        }
        if level == 4 {
            let strict = self
                .doms
                .get(&d)
                .is_some_and(|x| x.assist(ASSIST_M2P_STRICT));
            for (k, v) in self.xen_slots.into_iter().enumerate() {
                let v = if k == 0 && strict { 0 } else { v };
                self.write(mfn, M2P_SLOT + k, v);
            }
        }
        Ok(())
    }

    /// De-validates `mfn` (a table of `level`): releases what every entry holds.
    fn demote(&mut self, mfn: u64, level: u8) {
        for i in 0..ENTRIES {
            if level == 4 && XEN_SLOTS.contains(&i) {
                continue;
            }
            let e = self.read(mfn, i);
            self.release(level, e, mfn);
        }
        if let Some(f) = self.frame_mut(mfn) {
            f.linear = 0;
        }
    }

    // ---- Entry modification ---------------------------------------------------------

    fn store(&mut self, table: u64, idx: usize, v: u64, how: How) -> Wrote {
        let cur = self.read(table, idx);
        match how {
            How::Plain => self.write(table, idx, v),
            How::KeepAd => self.write(table, idx, v | (cur & (ACC | DIRTY))),
            How::IfEqual(o) if o == cur => self.write(table, idx, v),
            How::IfEqual(_) => return Wrote::Mismatch(cur),
        }
        Wrote::Yes
    }

    /// `mod_l1_entry`.
    #[allow(clippy::too_many_arguments)]
    fn mod_l1(
        &mut self,
        table: u64,
        idx: usize,
        new: u64,
        how: How,
        pt: u16,
        fd: u16,
        fast_path: bool,
    ) -> Result<Wrote, Errno> {
        let old = match how {
            How::IfEqual(o) => o,
            _ => self.read(table, idx),
        };
        if new & P == 0 {
            let w = self.store(table, idx, new, how);
            if w == Wrote::Yes {
                self.put_l1e(old);
            }
            return Ok(w);
        }
        if new & self.l1_bad(pt) != 0 {
            return Err(Errno::EINVAL);
        }
        let nl = adjust(1, new);
        if fast_path && old & P != 0 && (old ^ nl) & !FAST_OK == 0 {
            return Ok(self.store(table, idx, nl, how));
        }
        let nl = nl ^ self.get_l1e(nl, pt, fd)?;
        let w = self.store(table, idx, nl, how);
        match w {
            Wrote::Yes => self.put_l1e(old),
            Wrote::Mismatch(_) => self.put_l1e(nl),
        }
        Ok(w)
    }

    /// `mod_l2_entry` .. `mod_l4_entry`.
    fn mod_upper(
        &mut self,
        level: u8,
        table: u64,
        idx: usize,
        new: u64,
        how: How,
        d: u16,
    ) -> Result<(), Errno> {
        if level == 4 && XEN_SLOTS.contains(&idx) {
            return Err(Errno::EINVAL);
        }
        let old = self.read(table, idx);
        if new & P == 0 {
            self.store(table, idx, new, how);
            self.put_upper(level, old, table);
            return Ok(());
        }
        if new & disallowed(level, false) != 0 {
            return Err(Errno::EINVAL);
        }
        let nl = adjust(level, new);
        if old & P != 0 && (old ^ nl) & !FAST_OK == 0 {
            self.store(table, idx, nl, how);
            return Ok(());
        }
        self.get_upper(level, nl, table, d)?;
        self.store(table, idx, nl, how);
        self.put_upper(level, old, table);
        Ok(())
    }

    /// One page-table update request (commands 0, 2, 3); `Ok` with the level of the
    /// live table whose entry it changed (0: a plain store into a frame that is not
    /// one).
    fn pt_update(&mut self, ptr: u64, val: u64, how: How, pt: u16, fd: u16) -> Result<u8, Errno> {
        let table = ptr >> 12;
        let idx = ((ptr & 0xfff) >> 3) as usize;
        let f = *self.frame(table).ok_or(Errno::EINVAL)?;
        if f.owner != pt || f.count == 0 {
            return Err(Errno::EINVAL);
        }
        let live = f.type_count > 0 && f.validated;
        if !live || f.ty == FrameType::Writable {
            // Not a live table: a plain store under a temporary writable reference.
            if !live {
                self.take_type(table, FrameType::Writable)
                    .map_err(|_| Errno::EINVAL)?;
            }
            self.write(table, idx, val);
            if !live {
                self.put_type(table);
            }
            return Ok(0);
        }
        match f.ty {
            FrameType::Table(1) => self.mod_l1(table, idx, val, how, pt, fd, true).map(|_| 1),
            FrameType::Table(level) => {
                if fd != pt {
                    return Err(Errno::EINVAL);
                }
                self.mod_upper(level, table, idx, val, how, pt)
                    .map(|()| level)
            }
            _ => Err(Errno::EINVAL),
        }
    }

    // ---- Guest virtual memory -------------------------------------------------------

    /// The L1 table, index and entry that map `va` under `root`, walking the model's
    /// memory as the library's walker does (present at L4..L2, no superpage, tables
    /// inside RAM).
    fn walk(&self, root: u64, va: u64) -> Option<(u64, usize, u64)> {
        let mut table = root;
        for level in [4u32, 3, 2] {
            self.slot(table, 0)?;
            let e = self.read(table, ((va >> (12 + 9 * (level - 1))) & 511) as usize);
            if e & P == 0 || (level < 4 && e & BIT7 != 0) {
                return None;
            }
            table = (e & ADDR) >> 12;
        }
        self.slot(table, 0)?;
        let idx = ((va >> 12) & 511) as usize;
        Some((table, idx, self.read(table, idx)))
    }

    /// Whether 8 bytes at `va` (within one page) can be read through `root`.
    fn readable(&self, root: Option<u64>, va: u64) -> bool {
        if !pvmmu_abi::is_guest_va(va) {
            return false;
        }
        let Some((_, _, e)) = root.and_then(|r| self.walk(r, va)) else {
            return false;
        };
        e & P != 0 && self.slot((e & ADDR) >> 12, 0).is_some()
    }

    /// The 8 bytes at guest `va` read through `root` (each byte's page translated).
    fn read_guest_u64(&self, root: Option<u64>, va: u64) -> Option<u64> {
        let mut b = [0u8; 8];
        for (k, x) in b.iter_mut().enumerate() {
            let a = va.checked_add(k as u64)?;
            if !pvmmu_abi::is_guest_va(a) {
                return None;
            }
            let (_, _, e) = root.and_then(|r| self.walk(r, a))?;
            if e & P == 0 {
                return None;
            }
            *x = *self.page((e & ADDR) >> 12)?.get((a & 0xfff) as usize)?;
        }
        Some(u64::from_le_bytes(b))
    }

    /// Xen's `vcpumask_to_pcpumask` for the caller's domain: the vCPUs named by the
    /// bitmap at `va` (its first word: the model's domains have at most 64 vCPUs),
    /// past the domain's last vCPU ignored; `None` if it cannot be read.
    fn vcpumask(&self, caller: Caller, va: u64) -> Option<u64> {
        let word = self.read_guest_u64(self.kernel_root(caller), va)?;
        Some(word & self.all_vcpus(caller.dom))
    }

    /// Every vCPU of `d` (Xen's dirty mask, counting every vCPU as having run).
    fn all_vcpus(&self, d: u16) -> u64 {
        match self.doms.get(&d).map_or(0, |x| x.roots.len()) {
            n if n >= 64 => u64::MAX,
            n => (1u64 << n) - 1,
        }
    }

    /// Records a flush Xen performs (none if no vCPU is named).
    fn need(&mut self, domain: u16, vcpus: u64, scope: NeedScope, last: bool) {
        if vcpus != 0 {
            self.needs.push(FlushNeed {
                domain,
                vcpus,
                scope,
                last,
            });
        }
    }

    /// The flushes Xen performs during the operation last given to
    /// [`XenModel::predict_and_apply`], in order: `mmu_update`'s flush of every vCPU of
    /// the table owner after a batch that changed an L2..L4 entry (XSA-286, even when
    /// a later entry failed), the TLB flush and INVLPG commands of `mmuext_op`, the
    /// CR3 reload of `NEW_BASEPTR`, and `update_va_mapping`'s `UVMF_*` flush after a
    /// successful update. Not predicted: the flushes before a frame changes type
    /// (they depend on which TLBs may hold it, which Xen tracks with timestamps), and
    /// `SET_LDT`'s.
    pub fn flush_needs(&self) -> &[FlushNeed] {
        &self.needs
    }

    /// Xen's `map_guest_l1e` check for `update_va_mapping`.
    fn guest_l1e(&self, root: Option<u64>, va: u64, d: u16) -> Result<(u64, usize), Errno> {
        if !pvmmu_abi::is_guest_va(va) {
            return Err(Errno::EINVAL);
        }
        let (table, idx, _) = root.and_then(|r| self.walk(r, va)).ok_or(Errno::EINVAL)?;
        match self.frame(table) {
            Some(f)
                if f.owner == d
                    && f.ty == FrameType::Table(1)
                    && f.validated
                    && f.type_count > 0 =>
            {
                Ok((table, idx))
            }
            _ => Err(Errno::EINVAL),
        }
    }

    // ---- Operations -----------------------------------------------------------------

    /// Predicts the result of `op` and applies it to the model's state.
    pub fn predict_and_apply(&mut self, op: &ModelOp) -> Outcome {
        self.needs.clear();
        self.current = match op {
            ModelOp::MmuUpdate { caller, .. }
            | ModelOp::Mmuext { caller, .. }
            | ModelOp::UpdateVaMapping { caller, .. }
            | ModelOp::UpdateVaMappingOtherdomain { caller, .. }
            | ModelOp::Ptwr { caller, .. }
            | ModelOp::VmAssist { caller, .. } => caller.dom,
            ModelOp::GuestStore { .. } | ModelOp::Teardown { .. } => DOMID_INVALID,
        };
        match op {
            ModelOp::MmuUpdate {
                caller,
                reqs,
                foreigndom,
            } => self.mmu_update(*caller, reqs, *foreigndom),
            ModelOp::Mmuext {
                caller,
                ops,
                foreigndom,
            } => self.mmuext(*caller, ops, *foreigndom),
            ModelOp::UpdateVaMapping {
                caller,
                va,
                val,
                flags,
            } => {
                if !self.caller_ok(*caller) {
                    return Outcome::NoSuchCaller;
                }
                Outcome::Rax(rax(self.uvm(*caller, *va, *val, *flags, caller.dom)))
            }
            ModelOp::UpdateVaMappingOtherdomain {
                caller,
                va,
                val,
                flags,
                domid,
            } => {
                if !self.caller_ok(*caller) {
                    return Outcome::NoSuchCaller;
                }
                let fd = *domid as u16;
                let r = self.pg_owner(caller.dom, fd).and_then(|pg| {
                    if fd != DOMID_SELF && !self.may_use(caller.dom, pg) {
                        return Err(Errno::EPERM);
                    }
                    self.uvm(*caller, *va, *val, *flags, pg)
                });
                Outcome::Rax(rax(r))
            }
            ModelOp::Ptwr {
                caller,
                fault_va,
                write,
            } => {
                if !self.caller_ok(*caller) {
                    return Outcome::NoSuchCaller;
                }
                Outcome::Ptwr(self.ptwr(*caller, *fault_va, write))
            }
            ModelOp::VmAssist { caller, cmd, ty } => {
                if !self.caller_ok(*caller) {
                    return Outcome::NoSuchCaller;
                }
                let (cmd, ty) = (*cmd as u32, *ty as u32);
                if ty >= 64 || ASSIST_VALID & (1 << ty) == 0 {
                    return Outcome::Rax(Errno::EINVAL.neg());
                }
                if cmd > 1 {
                    return Outcome::Rax(Errno::ENOSYS.neg());
                }
                if let Some(d) = self.doms.get_mut(&caller.dom) {
                    if cmd == 0 {
                        d.vm_assist |= 1 << ty;
                    } else {
                        d.vm_assist &= !(1 << ty);
                    }
                }
                Outcome::Rax(0)
            }
            ModelOp::GuestStore { addr, value } => {
                self.write(addr >> 12, ((addr & 0xfff) >> 3) as usize, *value);
                Outcome::Stored
            }
            ModelOp::Teardown { dom } => self.teardown(*dom),
        }
    }

    fn mmu_update(&mut self, caller: Caller, reqs: &[MmuUpdate], foreigndom: u32) -> Outcome {
        if !self.caller_ok(caller) {
            return Outcome::NoSuchCaller;
        }
        let refuse = |e: Errno, writes_pdone: bool| {
            Outcome::Batch(BatchOutcome {
                done: 0,
                result: Err(e),
                writes_pdone,
                preempted: false,
            })
        };
        let fd = (foreigndom & 0xffff) as u16;
        let pt = match foreigndom >> 16 {
            0 => caller.dom,
            n => {
                let id = (n - 1) as u16;
                if id != caller.dom && !self.doms.contains_key(&id) {
                    return refuse(Errno::ESRCH, false);
                }
                id
            }
        };
        let pg = match self.pg_owner(caller.dom, fd) {
            Ok(pg) => pg,
            Err(e) => return refuse(e, true),
        };
        let mut done = 0;
        // Whether an L2..L4 entry was changed (Xen's `flush_linear_pt`).
        let mut non_leaf = false;
        for r in reqs {
            let res = match r.ptr & 7 {
                0 | 2 | 3 => {
                    let permitted = (pg == DOMID_IO || self.may_use(caller.dom, pg))
                        && self.may_use(caller.dom, pt);
                    if permitted {
                        let how = if r.ptr & 7 == 2 {
                            How::KeepAd
                        } else {
                            How::Plain
                        };
                        self.pt_update(r.ptr & !7, r.val, how, pt, pg)
                            .map(|level| non_leaf |= level >= 2)
                    } else {
                        Err(Errno::EPERM)
                    }
                }
                1 => {
                    let mfn = r.ptr >> 12;
                    if pt != caller.dom || !(pg == DOMID_IO || self.may_use(caller.dom, pg)) {
                        Err(Errno::EPERM)
                    } else if !self.owned_by(mfn, pg) {
                        Err(Errno::EINVAL)
                    } else {
                        if let Some(e) = self.m2p.get_mut(mfn as usize) {
                            *e = r.val;
                        }
                        Ok(())
                    }
                }
                _ => Err(Errno::ENOSYS),
            };
            if let Err(e) = res {
                self.non_leaf_flush(pt, non_leaf);
                return Outcome::Batch(BatchOutcome {
                    done,
                    result: Err(e),
                    writes_pdone: true,
                    preempted: false,
                });
            }
            done += 1;
        }
        self.non_leaf_flush(pt, non_leaf);
        Outcome::Batch(BatchOutcome {
            done,
            result: Ok(()),
            writes_pdone: true,
            preempted: false,
        })
    }

    /// XSA-286: after a batch that changed an L2..L4 entry (even if a later entry
    /// failed), before returning, Xen flushes the TLBs (non-global) of every CPU dirty
    /// for the table owner, so that no linear-page-table access (its own or the
    /// guest's) uses paging structures from before the change.
    fn non_leaf_flush(&mut self, pt: u16, non_leaf: bool) {
        if non_leaf {
            self.need(pt, self.all_vcpus(pt), NeedScope::Tlb, true);
        }
    }

    fn mmuext(&mut self, caller: Caller, ops: &[MmuextOp], foreigndom: u32) -> Outcome {
        if !self.caller_ok(caller) {
            return Outcome::NoSuchCaller;
        }
        let early = |e: Errno| {
            Outcome::Batch(BatchOutcome {
                done: 0,
                result: Err(e),
                writes_pdone: false,
                preempted: false,
            })
        };
        let pg = match self.pg_owner(caller.dom, (foreigndom & 0xffff) as u16) {
            Ok(pg) => pg,
            Err(e) => return early(e),
        };
        if !self.may_use(caller.dom, pg) {
            return early(Errno::EPERM);
        }
        let mut done = 0;
        for op in ops {
            if let Err(e) = self.mmuext_one(caller, pg, op) {
                return Outcome::Batch(BatchOutcome {
                    done,
                    result: Err(e),
                    writes_pdone: true,
                    preempted: false,
                });
            }
            done += 1;
        }
        Outcome::Batch(BatchOutcome {
            done,
            result: Ok(()),
            writes_pdone: true,
            preempted: false,
        })
    }

    fn mmuext_one(&mut self, caller: Caller, pg: u16, op: &MmuextOp) -> Result<(), Errno> {
        let d = caller.dom;
        let own = pg == d;
        let root = self.kernel_root(caller);
        match op.cmd {
            abi::MMUEXT_PIN_L1_TABLE..=abi::MMUEXT_PIN_L4_TABLE => {
                let level = (op.cmd - abi::MMUEXT_PIN_L1_TABLE + 1) as u8;
                let mfn = op.arg1;
                if !self.owned_by(mfn, pg) || pg == DOMID_IO {
                    return Err(Errno::EINVAL);
                }
                self.get_page_and_type(mfn, pg, FrameType::Table(level))?;
                if self.frame(mfn).is_some_and(|f| f.pinned) {
                    self.put_page_and_type(mfn);
                    return Err(Errno::EINVAL);
                }
                if let Some(f) = self.frame_mut(mfn) {
                    f.pinned = true;
                }
                Ok(())
            }
            abi::MMUEXT_UNPIN_TABLE => {
                let mfn = op.arg1;
                if !self.owned_by(mfn, pg) || !self.frame(mfn).is_some_and(|f| f.pinned) {
                    return Err(Errno::EINVAL);
                }
                if let Some(f) = self.frame_mut(mfn) {
                    f.pinned = false;
                }
                self.put_page_and_type(mfn);
                Ok(())
            }
            abi::MMUEXT_NEW_BASEPTR | abi::MMUEXT_NEW_USER_BASEPTR => {
                if !own {
                    return Err(Errno::EPERM);
                }
                self.set_root(caller, op.cmd == abi::MMUEXT_NEW_BASEPTR, op.arg1)
            }
            abi::MMUEXT_TLB_FLUSH_LOCAL
            | abi::MMUEXT_TLB_FLUSH_ALL
            | abi::MMUEXT_INVLPG_LOCAL
            | abi::MMUEXT_INVLPG_ALL => {
                if !own {
                    return Err(Errno::EPERM);
                }
                let va = op.arg1;
                match op.cmd {
                    abi::MMUEXT_TLB_FLUSH_LOCAL => {
                        self.need(d, vcpu_bit(caller.vcpu), NeedScope::Tlb, false);
                    }
                    abi::MMUEXT_TLB_FLUSH_ALL => {
                        self.need(d, self.all_vcpus(d), NeedScope::Tlb, false);
                    }
                    // `paging_invlpg`: nothing for a non-canonical address.
                    abi::MMUEXT_INVLPG_LOCAL if canonical(va) => {
                        self.need(d, vcpu_bit(caller.vcpu), NeedScope::Va(va), false);
                    }
                    // Only a guest address (`__addr_ok`).
                    abi::MMUEXT_INVLPG_ALL if pvmmu_abi::is_guest_va(va) => {
                        self.need(d, self.all_vcpus(d), NeedScope::Va(va), false);
                    }
                    _ => {}
                }
                Ok(())
            }
            abi::MMUEXT_TLB_FLUSH_MULTI | abi::MMUEXT_INVLPG_MULTI => {
                if !own {
                    Err(Errno::EPERM)
                } else if self.readable(root, op.arg2) {
                    // The bitmap is read whole (`copy_from_guest`); the model's
                    // callers give page-aligned ones, which `readable` covers.
                    let vcpus = self.vcpumask(caller, op.arg2).unwrap_or(0);
                    if op.cmd == abi::MMUEXT_TLB_FLUSH_MULTI {
                        self.need(d, vcpus, NeedScope::Tlb, false);
                    } else if pvmmu_abi::is_guest_va(op.arg1) {
                        self.need(d, vcpus, NeedScope::Va(op.arg1), false);
                    }
                    Ok(())
                } else {
                    Err(Errno::EINVAL)
                }
            }
            abi::MMUEXT_FLUSH_CACHE | abi::MMUEXT_FLUSH_CACHE_GLOBAL => {
                if !own {
                    Err(Errno::EPERM)
                } else if self.doms.get(&d).is_some_and(Dom::io_rights) {
                    Ok(())
                } else {
                    Err(Errno::EACCES)
                }
            }
            abi::MMUEXT_SET_LDT => {
                let (base, ents) = (op.arg1, op.arg2 as u32);
                if !own {
                    Err(Errno::EPERM)
                } else if ents > abi::MMUEXT_SET_LDT_MAX_ENTS
                    || (ents != 0 && (base & 0xfff != 0 || !pvmmu_abi::is_guest_va(base)))
                {
                    Err(Errno::EINVAL)
                } else {
                    // Only recorded: the window is filled on use, which the model's
                    // callers never trigger.
                    Ok(())
                }
            }
            abi::MMUEXT_CLEAR_PAGE => self.with_writable(op.arg1, pg, None),
            abi::MMUEXT_COPY_PAGE => {
                let src = op.arg2;
                if !self.owned_by(src, pg) {
                    return Err(Errno::EINVAL);
                }
                self.with_writable(op.arg1, pg, Some(src))
            }
            abi::MMUEXT_MARK_SUPER | abi::MMUEXT_UNMARK_SUPER => Err(Errno::EOPNOTSUPP),
            _ => Err(Errno::ENOSYS),
        }
    }

    /// CLEAR_PAGE (`src` None) / COPY_PAGE destination rule and the copy itself.
    fn with_writable(&mut self, mfn: u64, owner: u16, src: Option<u64>) -> Result<(), Errno> {
        if owner == DOMID_IO || !self.owned_by(mfn, owner) {
            return Err(Errno::EINVAL);
        }
        self.take_type(mfn, FrameType::Writable)
            .map_err(|_| Errno::EINVAL)?;
        for i in 0..ENTRIES {
            let v = src.map_or(0, |s| self.read(s, i));
            self.write(mfn, i, v);
        }
        self.put_type(mfn);
        Ok(())
    }

    fn set_root(&mut self, caller: Caller, kernel: bool, mfn: u64) -> Result<(), Errno> {
        let d = caller.dom;
        let strict = self
            .doms
            .get(&d)
            .is_some_and(|x| x.assist(ASSIST_M2P_STRICT));
        let (k, u) = self.roots(caller).ok_or(Errno::EINVAL)?;
        let old = if kernel { k } else { u };
        // The same root again: the kernel root is just reloaded; the user root is left
        // alone entirely (Xen returns before taking references or zapping the RO-M2P
        // slot).
        if old == Some(mfn) || (!kernel && old.is_none() && mfn == 0) {
            if kernel {
                // `write_ptbase`: a CR3 reload on this vCPU.
                self.need(d, vcpu_bit(caller.vcpu), NeedScope::Tlb, false);
            }
            return Ok(());
        }
        if !kernel && mfn == 0 {
            self.replace_root(caller, kernel, None);
            if let Some(o) = old {
                self.put_page_and_type(o);
            }
            return Ok(());
        }
        self.get_page_and_type(mfn, d, FrameType::Table(4))?;
        if kernel && !strict && self.read(mfn, M2P_SLOT) == 0 {
            self.write(mfn, M2P_SLOT, self.xen_slots[0]);
        } else if !kernel && strict {
            self.write(mfn, M2P_SLOT, 0);
        }
        self.replace_root(caller, kernel, Some(mfn));
        if kernel {
            // `write_ptbase` after installing the new root.
            self.need(d, vcpu_bit(caller.vcpu), NeedScope::Tlb, false);
        }
        if let Some(o) = old {
            self.put_page_and_type(o);
        }
        Ok(())
    }

    fn replace_root(&mut self, caller: Caller, kernel: bool, new: Option<u64>) {
        if let Some(r) = self
            .doms
            .get_mut(&caller.dom)
            .and_then(|d| d.roots.get_mut(caller.vcpu as usize))
        {
            if kernel {
                r.0 = new;
            } else {
                r.1 = new;
            }
        }
    }

    fn uvm(&mut self, caller: Caller, va: u64, val: u64, flags: u64, pg: u16) -> Result<(), Errno> {
        let d = caller.dom;
        let root = self.kernel_root(caller);
        let (table, idx) = self.guest_l1e(root, va, d)?;
        self.mod_l1(table, idx, val, How::Plain, d, pg, true)?;
        // The flush, only after a successful update (XSA-279): UVMF_TLB_FLUSH (1) or
        // UVMF_INVLPG (2) of this vCPU (UVMF_LOCAL, 0), every vCPU (UVMF_ALL, 4) or
        // those of a vCPU bitmap; only a bitmap pointer can still fail, after the
        // update, and then nothing is flushed.
        let scope = match flags & 3 {
            1 => NeedScope::Tlb,
            2 => NeedScope::Va(va),
            _ => return Ok(()),
        };
        let vcpus = match flags & !3 {
            0 => vcpu_bit(caller.vcpu),
            4 => self.all_vcpus(d),
            target => {
                let root = self.kernel_root(caller);
                if !self.readable(root, target) {
                    return Err(Errno::EFAULT);
                }
                self.vcpumask(caller, target).unwrap_or(0)
            }
        };
        self.need(d, vcpus, scope, true);
        Ok(())
    }

    fn ptwr(
        &mut self,
        caller: Caller,
        fault_va: u64,
        w: &PtwrWrite,
    ) -> Result<PtwrOutcome, PtwrRefusal> {
        let d = caller.dom;
        if !self
            .doms
            .get(&d)
            .is_some_and(|x| x.assist(ASSIST_WRITABLE_PT))
        {
            return Err(PtwrRefusal::NotEnabled);
        }
        if !pvmmu_abi::is_guest_va(fault_va) {
            return Err(PtwrRefusal::NotL1Table);
        }
        let size = u64::from(w.size);
        if !matches!(size, 1 | 2 | 4 | 8)
            || !w.addr.is_multiple_of(size)
            || (w.addr ^ fault_va) >> 12 != 0
        {
            return Err(PtwrRefusal::BadAccess);
        }
        let table = self
            .kernel_root(caller)
            .and_then(|r| self.walk(r, fault_va))
            .and_then(|(_, _, e)| (e & P != 0 && e & RW == 0).then_some((e & ADDR) >> 12))
            .ok_or(PtwrRefusal::NotL1Table)?;
        match self.frame(table) {
            Some(f)
                if f.owner == d
                    && f.ty == FrameType::Table(1)
                    && f.validated
                    && f.type_count > 0 => {}
            _ => return Err(PtwrRefusal::NotL1Table),
        }
        let idx = ((w.addr & 0xfff) >> 3) as usize;
        let shift = (w.addr & 7) * 8;
        let mask = if size == 8 {
            u64::MAX
        } else {
            ((1u64 << (size * 8)) - 1) << shift
        };
        let current = self.read(table, idx);
        let merge = |v: u64| (current & !mask) | ((v << shift) & mask);
        let how = w.cmpxchg.map_or(How::Plain, |o| How::IfEqual(merge(o)));
        match self.mod_l1(table, idx, merge(w.value), how, d, d, false) {
            Ok(Wrote::Yes) => Ok(PtwrOutcome::Written),
            Ok(Wrote::Mismatch(seen)) => Ok(PtwrOutcome::Mismatch {
                current: (seen & mask) >> shift,
            }),
            Err(e) => Err(PtwrRefusal::Refused(e)),
        }
    }

    /// Domain teardown, in the library's order: roots, pins, forced demotion from L4
    /// down (breaking linear cycles), then the allocation references.
    fn teardown(&mut self, dom: u16) -> Outcome {
        let Some(d) = self.doms.get_mut(&dom) else {
            return Outcome::NoSuchCaller;
        };
        let roots: Vec<u64> = d
            .roots
            .iter_mut()
            .flat_map(|r| [r.0.take(), r.1.take()])
            .flatten()
            .collect();
        for r in roots {
            self.put_page_and_type(r);
        }
        let owned: Vec<u64> = (0..self.frames.len() as u64)
            .filter(|&m| self.owned_by(m, dom))
            .collect();
        for &m in &owned {
            if self.frame(m).is_some_and(|f| f.pinned) {
                if let Some(f) = self.frame_mut(m) {
                    f.pinned = false;
                }
                self.put_page_and_type(m);
            }
        }
        for level in [4u8, 3, 2, 1] {
            for &m in &owned {
                let live = self.frame(m).is_some_and(|f| {
                    f.owner == dom && f.validated && f.ty == FrameType::Table(level)
                });
                if live {
                    if let Some(f) = self.frame_mut(m) {
                        f.validated = false;
                    }
                    self.demote(m, level);
                }
            }
        }
        let mut left = 0;
        for &m in &owned {
            if self.frame(m).is_some_and(|f| f.owner == dom && f.shared)
                && let Some(f) = self.frame_mut(m)
            {
                f.shared = false;
                f.type_count = f.type_count.saturating_sub(1);
                if f.type_count == 0 {
                    f.pinned = false;
                }
            }
            if self.frame(m).is_some_and(|f| f.owner == dom && f.allocated) {
                if let Some(f) = self.frame_mut(m) {
                    f.allocated = false;
                }
                self.put_page(m);
            }
            if let Some(f) = self.frame_mut(m)
                && f.owner == dom
            {
                if f.count > 0 {
                    left += 1;
                } else {
                    *f = Frame::default();
                }
            }
        }
        self.doms.remove(&dom);
        Outcome::Teardown(left)
    }

    // ---- Comparison -----------------------------------------------------------------

    /// Compares the model's bookkeeping with the library's: every frame's owner,
    /// counts, type, validated/pinned bits and linear counter, every vCPU's roots, the
    /// assists, the M2P, and the memory of every live page table and of every frame the
    /// model wrote since the last comparison. `Err` names the first differences.
    pub fn compare<M: GuestMemory, F: TlbFlush>(
        &mut self,
        m: &Machine<M, F>,
    ) -> Result<(), String> {
        let mut diffs = Vec::new();
        let ft = m.frames();
        if ft.len() != self.frames.len() {
            diffs.push(format!(
                "frame table sizes differ: library {} model {}",
                ft.len(),
                self.frames.len()
            ));
        }
        // Both frame tables with their M2P entries, encoded as words and compared in one
        // go; frame by frame below only when they differ, to name the differences. (The
        // fuzzer's comparison tracing makes a comparison per frame and field cost more
        // than most operations.)
        let lib_words: Vec<[u64; 4]> = ft
            .iter()
            .map(|(mfn, p)| frame_words(&lib_frame(&p), ft.m2p(mfn)))
            .collect();
        let model_words: Vec<[u64; 4]> = (0..self.frames.len())
            .map(|i| frame_words(&self.frames[i], self.m2p.get(i).copied()))
            .collect();
        let frames_differ = lib_words != model_words;
        for (mfn, p) in ft.iter().filter(|_| frames_differ) {
            let Some(x) = self.frame(mfn.0) else { break };
            let lib = lib_frame(&p);
            if lib != *x {
                diffs.push(format!("frame {mfn}: library {lib:?}, model {x:?}"));
            }
            if ft.m2p(mfn) != self.m2p.get(mfn.0 as usize).copied() {
                diffs.push(format!(
                    "m2p of {mfn}: library {:?}, model {:?}",
                    ft.m2p(mfn),
                    self.m2p.get(mfn.0 as usize)
                ));
            }
        }
        let ids = m.domain_ids();
        if ids != self.doms.keys().copied().collect::<Vec<_>>() {
            diffs.push(format!(
                "domains: library {ids:?}, model {:?}",
                self.doms.keys().collect::<Vec<_>>()
            ));
        }
        for (&id, d) in &self.doms {
            let Some(ld) = m.domain(id) else { continue };
            if ld.vm_assist() != d.vm_assist {
                diffs.push(format!(
                    "vm_assist of {id}: library {:#x}, model {:#x}",
                    ld.vm_assist(),
                    d.vm_assist
                ));
            }
            for (i, (v, r)) in ld.vcpus().iter().zip(&d.roots).enumerate() {
                let lib = (v.kernel_root.map(|x| x.0), v.user_root.map(|x| x.0));
                if lib != *r {
                    diffs.push(format!("roots of {id}.{i}: library {lib:x?}, model {r:x?}"));
                }
            }
        }
        // Frames the model wrote, and every live page table (so that a write only the
        // library made to a table is seen at once).
        let mut touched = std::mem::take(&mut self.touched);
        touched.extend((0..self.frames.len() as u64).filter(|&f| {
            self.frame(f)
                .is_some_and(|x| x.ty.level().is_some() && x.type_count > 0)
        }));
        touched.sort_unstable();
        touched.dedup();
        let mut page = [0u8; PAGE];
        for f in touched {
            let Some(ours) = self.slot(f, 0).and_then(|o| self.mem.page(o / PAGE)) else {
                continue;
            };
            if m.memory()
                .read_slice(&mut page, GuestAddress(f << 12))
                .is_err()
            {
                diffs.push(format!("frame {f:#x} unreadable"));
                continue;
            }
            if page[..] == *ours {
                continue;
            }
            let first = page
                .chunks_exact(8)
                .zip(ours.chunks_exact(8))
                .position(|(a, b)| a != b)
                .unwrap_or(0);
            diffs.push(format!(
                "entry {first} of frame {f:#x}: library {:#x}, model {:#x}",
                le(&page, first),
                le(ours, first)
            ));
        }
        if diffs.is_empty() {
            Ok(())
        } else {
            let n = diffs.len();
            diffs.truncate(8);
            Err(format!("{n} difference(s):\n  {}", diffs.join("\n  ")))
        }
    }
}

/// The library's bookkeeping of a frame in the model's terms.
fn lib_frame(p: &pvmmu::PageInfo) -> Frame {
    Frame {
        owner: p.owner,
        count: p.count,
        allocated: p.allocated,
        shared: p.shared,
        ty: FrameType::of(p.ty),
        type_count: p.type_count,
        validated: p.validated,
        pinned: p.pinned,
        linear: p.linear,
    }
}

/// A frame's bookkeeping and M2P entry as words: equal words, equal fields.
fn frame_words(f: &Frame, m2p: Option<u64>) -> [u64; 4] {
    let ty: u64 = match f.ty {
        FrameType::None => 0,
        FrameType::SegDesc => 1,
        FrameType::Shared => 2,
        FrameType::Writable => 3,
        FrameType::Table(l) => 8 + u64::from(l),
    };
    [
        f.count,
        f.type_count,
        u64::from(f.owner)
            | u64::from(f.linear as u16) << 16
            | u64::from(f.allocated) << 32
            | u64::from(f.shared) << 33
            | u64::from(f.validated) << 34
            | u64::from(f.pinned) << 35
            | u64::from(m2p.is_some()) << 36
            | ty << 40,
        m2p.unwrap_or(0),
    ]
}

/// Xen's rewrite of a present guest entry at `level`.
fn adjust(level: u8, e: u64) -> u64 {
    if e & P == 0 {
        return e;
    }
    match level {
        1 => {
            let mut v = e;
            if v & US == 0 {
                v |= US | GUEST_KERNEL;
            }
            if v & GUEST_KERNEL == 0 {
                v |= US | GLOBAL;
            }
            v
        }
        2 | 3 => e | US,
        _ => e | US | ACC,
    }
}

/// Entry `i` of a page as bytes.
fn le(page: &[u8], i: usize) -> u64 {
    page.get(i * 8..i * 8 + 8)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u64::from_le_bytes)
}

/// vCPU `v` as a bit (none past 63).
fn vcpu_bit(v: u32) -> u64 {
    1u64.checked_shl(v).unwrap_or(0)
}

/// Whether `va` is canonical for 4-level paging (bits 63..47 all equal).
fn canonical(va: u64) -> bool {
    let top = va >> 47;
    top == 0 || top == (1 << 17) - 1
}

fn rax(r: Result<(), Errno>) -> i64 {
    match r {
        Ok(()) => 0,
        Err(e) => e.neg(),
    }
}

/// Runs `op` on the library machine and returns its outcome in the model's terms.
pub fn execute<M: GuestMemory, F: TlbFlush>(m: &mut Machine<M, F>, op: &ModelOp) -> Outcome {
    let r = match op {
        ModelOp::MmuUpdate {
            caller,
            reqs,
            foreigndom,
        } => m.mmu_update(*caller, reqs, *foreigndom).map(Outcome::Batch),
        ModelOp::Mmuext {
            caller,
            ops,
            foreigndom,
        } => m.mmuext_op(*caller, ops, *foreigndom).map(Outcome::Batch),
        ModelOp::UpdateVaMapping {
            caller,
            va,
            val,
            flags,
        } => m
            .hypercall_update_va_mapping(*caller, *va, *val, *flags)
            .map(Outcome::Rax),
        ModelOp::UpdateVaMappingOtherdomain {
            caller,
            va,
            val,
            flags,
            domid,
        } => m
            .hypercall_update_va_mapping_otherdomain(*caller, *va, *val, *flags, *domid)
            .map(Outcome::Rax),
        ModelOp::Ptwr {
            caller,
            fault_va,
            write,
        } => m.ptwr_write(*caller, *fault_va, *write).map(Outcome::Ptwr),
        ModelOp::VmAssist { caller, cmd, ty } => {
            m.hypercall_vm_assist(*caller, *cmd, *ty).map(Outcome::Rax)
        }
        ModelOp::GuestStore { addr, value } => {
            let _ = m.memory().write_obj(*value, GuestAddress(*addr));
            Ok(Outcome::Stored)
        }
        ModelOp::Teardown { dom } => match m.destroy_domain(*dom) {
            Ok(()) => Ok(Outcome::Teardown(0)),
            Err(pvmmu::MachineError::Teardown { frames, .. }) => Ok(Outcome::Teardown(frames)),
            Err(e) => Err(e),
        },
    };
    r.unwrap_or(Outcome::NoSuchCaller)
}

/// Predicts `op` with `model`, runs it on `m`, and checks that the outcomes agree and
/// that the bookkeeping agrees afterwards. Returns the outcome, or a description of
/// the disagreement.
pub fn check<M: GuestMemory, F: TlbFlush>(
    model: &mut XenModel,
    m: &mut Machine<M, F>,
    op: &ModelOp,
) -> Result<Outcome, String> {
    let predicted = model.predict_and_apply(op);
    let actual = execute(m, op);
    if predicted != actual {
        return Err(format!(
            "the model predicted {predicted:?}, the library returned {actual:?} for {op:x?}"
        ));
    }
    model
        .compare(m)
        .map_err(|e| format!("bookkeeping differs after {op:x?}: {e}"))?;
    Ok(actual)
}

/// [`check`] on a machine that records its flush requests, and then
/// [`check_flushes`]: the requests made during `op` must cover every flush Xen
/// performs ([`XenModel::flush_needs`]). The log is emptied before and after.
pub fn check_recorded<M: GuestMemory>(
    model: &mut XenModel,
    m: &mut Machine<M, RecordingFlush>,
    op: &ModelOp,
) -> Result<Outcome, String> {
    m.flusher().log.clear();
    let outcome = check(model, m, op)?;
    let log = m.flusher().take();
    check_flushes(model.flush_needs(), &log).map_err(|e| format!("flushes after {op:x?}: {e}"))?;
    Ok(outcome)
}
