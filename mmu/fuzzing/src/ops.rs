//! The `mmu_ops` harness: structured PV MMU operation sequences on two domains.
//!
//! Every input starts from the same world: two domains with pinned, installed trees
//! ([`Fixture::new`], every step checked against the reference model). Building it
//! costs far more than most inputs, so [`mmu_ops`] builds it once per thread and
//! restores it after each input instead (see `World`): the machine's and the model's
//! bookkeeping from a snapshot, and the memory pages the input wrote from a copy. An
//! input gets the same verdict whatever ran before it in the process; test builds check
//! every restored world against a freshly built one.

use std::cell::RefCell;
use std::ops::ControlFlow;

use arbitrary::{Arbitrary, Unstructured};
use pvmmu::{
    Caller, DomainConfig, Level, Machine, MachineConfig, Mfn, PageType, Pte, PtwrWrite,
    RecordingFlush, VaRange, Visit, Walker,
};
use pvmmu_abi::{MmuUpdate, MmuextOp};
use vm_memory::bitmap::AtomicBitmap;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use crate::xen_model::{self, ModelOp, Outcome, XenModel};

/// The harness's guest memory: its dirty bitmap tells which pages an input wrote.
pub type HarnessMemory = GuestMemoryMmap<AtomicBitmap>;

/// The harness's machine (recorded flushes).
pub type HarnessMachine = Machine<HarnessMemory, RecordingFlush>;

/// Machine frames (4 MiB of RAM).
pub const FRAMES: u64 = 1024;
/// Domain 1's frames.
pub const D1: (u64, u64) = (0x100, 0x200);
/// Domain 2's frames (a privileged domain).
pub const D2: (u64, u64) = (0x200, 0x240);
/// Hypervisor frames.
pub const XEN: (u64, u64) = (0x10, 0x14);
/// I/O memory domain 1 may map (beyond RAM).
pub const MMIO: u64 = 0xfee00;
/// Domain 1's spare page tables: empty, pinned at setup and hooked nowhere, one per
/// upper level (L2, L3, L4), so that a linear entry (a table pointing at another of
/// its level) and a second one chaining through it (XSA-240's rule) are two
/// mmu_update requests away, not an unmap and a pin more. Mapped read-only, as
/// tables are.
pub const SPARE_TABLES: [(u64, u8); 3] = [(D1.1 - 3, 2), (D1.1 - 2, 3), (D1.1 - 1, 4)];

/// Where each domain maps its own frames: VA = KBASE + mfn * 4096 (L4 slot 272).
pub const KBASE: u64 = 0xffff_8800_0000_0000;

/// Which domain an operation acts as.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Dom {
    /// Domain 1 (unprivileged, I/O memory, 2 vCPUs).
    One,
    /// Domain 2 (privileged over domain 1).
    Two,
}

impl Dom {
    fn id(self) -> u16 {
        match self {
            Dom::One => 1,
            Dom::Two => 2,
        }
    }
    fn frames(self) -> (u64, u64) {
        match self {
            Dom::One => D1,
            Dom::Two => D2,
        }
    }
}

/// A frame, chosen mostly among the interesting ones.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum FrameSel {
    /// One of the acting domain's frames (`i % 256`); with the top two bits of `i`
    /// set, one of those with no type reference (free to become a page table: none in
    /// the starting world, where every frame is mapped, and any the input unmapped).
    Own(u16),
    /// One of its current page-table frames.
    Table(u16),
    /// A frame of the other domain.
    Other(u16),
    /// A hypervisor frame.
    Xen(u8),
    /// I/O memory.
    Mmio(u8),
    /// Beyond everything.
    Raw(u64),
}

/// An entry value.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Val {
    /// Maps a frame with flag bits (bit 0..8 as in a PTE, bit 9 NX, bit 10 bit 52; P
    /// always set). Bits 11..12 may pick the frame from the table being written
    /// instead (see `Fixture::val_for`): 1, a page table of the same level (a
    /// linear entry); 2, one of the level below (hooking in a table). Bit 13 clears RW,
    /// PWT, PCD and G (bit 7 stays as given): with 1 or 2, an entry Xen accepts or
    /// refuses only for its bit 7 (PSE at L2/L3).
    Map(FrameSel, u16),
    /// Not present.
    Zero,
    /// Anything.
    Raw(u64),
}

/// The PTE an operation addresses.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Slot {
    /// Entry `index` of one of the acting domain's page tables (index as by
    /// [`entry_index`]).
    Table(u16, u16),
    /// Entry `index` of any frame (index as by [`entry_index`]).
    Frame(FrameSel, u16),
    /// Anything.
    Raw(u64),
}

/// `foreigndom`.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Fd {
    /// DOMID_SELF.
    SelfDom,
    /// The other domain.
    Other,
    /// DOMID_IO.
    Io,
    /// DOMID_XEN.
    Xen,
    /// The caller's own numeric id (refused).
    OwnId,
    /// Anything.
    Raw(u32),
}

/// One mmu_update request.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub struct Req {
    /// The entry.
    pub slot: Slot,
    /// The command selector (0..=9 normal, 10 machphys, 11 preserve-A/D, 12
    /// no-translate, 13..=15 invalid).
    pub cmd: u8,
    /// The value.
    pub val: Val,
}

/// One mmuext operation.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub struct Ext {
    /// The command (modulo 22).
    pub cmd: u8,
    /// The frame argument.
    pub frame: FrameSel,
    /// Selects the VA argument (one of the domain's first 64 pages).
    pub va: u16,
    /// The second frame argument (COPY_PAGE's source).
    pub arg2: FrameSel,
}

/// One operation of a sequence.
#[derive(Arbitrary, Debug, Clone)]
pub enum Op {
    /// An mmu_update batch.
    MmuUpdate(Dom, Vec<Req>, Fd),
    /// An mmuext_op batch.
    Mmuext(Dom, Vec<Ext>, Fd),
    /// update_va_mapping on one of the domain's pages.
    Uvm(Dom, bool, u16, Val, u8),
    /// A direct write to an L1 table (writable page tables).
    Ptwr(Dom, u16, u16, Val, u8, Option<Val>),
    /// vm_assist.
    VmAssist(Dom, bool, u8),
    /// Domain teardown.
    Teardown(Dom),
}

/// The machine, the reference model following it, and what the harness knows.
#[derive(Clone)]
pub struct Fixture {
    /// The machine.
    pub m: HarnessMachine,
    /// The independent reference model of the same machine.
    pub model: XenModel,
    alive: [bool; 2],
    /// Operations issued and judged so far.
    pub judged: Judged,
}

/// How much of a run the reference model judged.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Judged {
    /// Operations decoded from the input (the first 64), issued or not (a dead
    /// domain's operations are not issued).
    pub decoded: u64,
    /// Operations issued to the library.
    pub ops: u64,
    /// Operations whose outcome and bookkeeping the model predicted and checked.
    pub ops_judged: u64,
    /// Batch entries (mmu_update requests, mmuext operations) issued.
    pub entries: u64,
    /// Batch entries whose result the model predicted: those of judged batches (the
    /// model predicts the `done` count and errno, so also which entries never ran).
    pub entries_judged: u64,
}

impl std::ops::AddAssign for Judged {
    fn add_assign(&mut self, o: Judged) {
        self.decoded += o.decoded;
        self.ops += o.ops;
        self.ops_judged += o.ops_judged;
        self.entries += o.entries;
        self.entries_judged += o.entries_judged;
    }
}

/// Entry indices at the edges of the hypervisor's reserved L4 slots (Xen's
/// `ROOT_PAGETABLE_FIRST_XEN_SLOT` 256 ..= `ROOT_PAGETABLE_LAST_XEN_SLOT` 271, stated
/// here from Xen, not taken from the library) and of a table.
pub const EDGE_INDICES: [u64; 8] = [255, 256, 257, 270, 271, 272, 0, 511];

/// The entry index a slot's `u16` names: `i % 512`, or with the top two bits of `i`
/// set (a quarter of the values), one of [`EDGE_INDICES`], so that an update of
/// exactly the first or last reserved L4 slot is not a 1-in-512 draw.
pub fn entry_index(i: u16) -> u64 {
    if i >> 14 == 3 {
        EDGE_INDICES[usize::from(i & 7)]
    } else {
        u64::from(i % 512)
    }
}

/// The number a frame selector carries (an index among its candidates).
fn sel_number(sel: FrameSel) -> usize {
    match sel {
        FrameSel::Own(i) | FrameSel::Table(i) | FrameSel::Other(i) => usize::from(i),
        FrameSel::Xen(i) | FrameSel::Mmio(i) => usize::from(i),
        FrameSel::Raw(r) => r as usize,
    }
}

/// A page-table type's level.
fn level_of(t: PageType) -> Option<u8> {
    match t {
        PageType::L1 => Some(1),
        PageType::L2 => Some(2),
        PageType::L3 => Some(3),
        PageType::L4 => Some(4),
        _ => None,
    }
}

fn template() -> [u64; 16] {
    let mut t = [0u64; 16];
    t[0] = (XEN.0 << 12) | 0x5;
    t[4] = ((XEN.0 + 1) << 12) | 0x3;
    t
}

/// Maps the domain's frames at KBASE (tables and `spare` read-only) with the walker,
/// writing guest memory only: the harness pins and installs the L4 through checked
/// operations.
fn build_tree(m: &mut HarnessMachine, (first, end): (u64, u64), spare: &[u64]) {
    let l4 = Mfn(first);
    let mut next = first + 1;
    let mut tables = vec![l4];
    tables.extend(spare.iter().map(|&f| Mfn(f)));
    let range = VaRange::new(KBASE + (first << 12), (end - first) << 12).expect("range");
    let walker = Walker::new(m.memory());
    let mut alloc = |_: Level| {
        next += 1;
        tables.push(Mfn(next - 1));
        Some(Mfn(next - 1))
    };
    let _ = walker.apply_to_page_range(l4, range, &mut alloc, |_| ControlFlow::<()>::Continue(()));
    let _ = walker.apply_to_existing_page_range(l4, range, |v| {
        if let Visit::Ptes(b) = v {
            for i in 0..b.len() {
                let f = (b.va(i) - KBASE) >> 12;
                let rw = if tables.contains(&Mfn(f)) { 0 } else { 2 };
                b.set(i, Pte((f << 12) | 0x21 | rw));
            }
        }
        ControlFlow::<()>::Continue(())
    });
}

impl Fixture {
    /// Domain 1 (2 vCPUs, I/O memory at MMIO) and domain 2 (privileged), each with a
    /// pinned, installed tree mapping its frames, and domain 1 with its pinned
    /// [`SPARE_TABLES`]. The model is built from the same
    /// description (domains, frames, the memory the walker wrote) and judges the pins
    /// and base-pointer switches of the setup like any other operation.
    pub fn new() -> Fixture {
        let mem = HarnessMemory::from_ranges(&[(GuestAddress(0), (FRAMES << 12) as usize)])
            .expect("memory");
        let config = MachineConfig {
            xen_l4_slots: template(),
            ..MachineConfig::default()
        };
        let mut model = XenModel::new(FRAMES as usize, &config);
        let mut m = Machine::with_flusher(mem, config, RecordingFlush::default()).expect("machine");
        let doms = [
            DomainConfig::new(1).vcpus(2).iomem(MMIO..=MMIO + 3),
            DomainConfig::new(2).privileged(true),
        ];
        for cfg in &doms {
            m.create_domain(cfg.clone()).expect("domain");
            model.create_domain(cfg);
        }
        for (id, (first, end)) in [(1, D1), (2, D2), (pvmmu_abi::DOMID_XEN, XEN)] {
            if id == pvmmu_abi::DOMID_XEN {
                m.reserve_xen_frames((first..end).map(Mfn)).expect("xen");
            } else {
                m.assign_frames(id, (first..end).map(Mfn)).expect("frames");
            }
            assert!(
                model.assign_frames(id, (first..end).map(Mfn)),
                "model frames"
            );
        }
        let spare: Vec<u64> = SPARE_TABLES.iter().map(|(f, _)| *f).collect();
        build_tree(&mut m, D1, &spare);
        build_tree(&mut m, D2, &[]);
        model.load_memory(m.memory()).expect("model memory");
        let mut f = Fixture {
            m,
            model,
            alive: [true, true],
            judged: Judged::default(),
        };
        let spare_pins = SPARE_TABLES.iter().map(|&(f, level)| {
            let pin = pvmmu_abi::mmu::MMUEXT_PIN_L1_TABLE + u32::from(level) - 1;
            (1, pin, f)
        });
        let setup = [(1, D1), (2, D2)]
            .into_iter()
            .flat_map(|(dom, (first, _))| {
                [
                    (dom, pvmmu_abi::mmu::MMUEXT_PIN_L4_TABLE, first),
                    (dom, pvmmu_abi::mmu::MMUEXT_NEW_BASEPTR, first),
                ]
            })
            .chain(spare_pins);
        for (dom, cmd, mfn) in setup {
            let op = ModelOp::Mmuext {
                caller: Caller::new(dom, 0),
                ops: vec![MmuextOp::new(cmd, mfn, 0)],
                foreigndom: pvmmu_abi::DOMID_SELF.into(),
            };
            let o = xen_model::check_recorded(&mut f.model, &mut f.m, &op);
            assert!(
                matches!(&o, Ok(Outcome::Batch(b)) if b.done == 1 && b.result.is_ok()),
                "fixture: {cmd}: {o:?}"
            );
        }
        f.m.flusher().take();
        f
    }

    fn tables(&self, dom: u16) -> Vec<Mfn> {
        self.m
            .frames()
            .iter()
            .filter(|(_, p)| p.owner == dom && p.ty.is_page_table() && p.type_count > 0)
            .map(|(m, _)| m)
            .collect()
    }

    /// The acting domain's live page tables of `level`.
    fn tables_at(&self, dom: u16, level: u8) -> Vec<Mfn> {
        self.m
            .frames()
            .iter()
            .filter(|(_, p)| p.owner == dom && level_of(p.ty) == Some(level) && p.type_count > 0)
            .map(|(m, _)| m)
            .collect()
    }

    /// The level of the live page table `mfn`, if it is one.
    fn live_level(&self, mfn: u64) -> Option<u8> {
        self.m
            .frames()
            .get(Mfn(mfn))
            .filter(|p| p.type_count > 0)
            .and_then(|p| level_of(p.ty))
    }

    fn frame(&self, d: Dom, sel: FrameSel) -> u64 {
        let (first, end) = d.frames();
        let other = match d {
            Dom::One => D2,
            Dom::Two => D1,
        };
        match sel {
            FrameSel::Own(i) if i >> 14 == 3 => {
                let untyped: Vec<Mfn> = self
                    .m
                    .frames()
                    .iter()
                    .filter(|(m, p)| {
                        (first..end).contains(&m.0) && p.owner == d.id() && p.type_count == 0
                    })
                    .map(|(m, _)| m)
                    .collect();
                untyped
                    .get(usize::from(i) % untyped.len().max(1))
                    .map_or(first + u64::from(i) % (end - first), |m| m.0)
            }
            FrameSel::Own(i) => first + u64::from(i) % (end - first),
            FrameSel::Table(i) => {
                let t = self.tables(d.id());
                t.get(usize::from(i) % t.len().max(1))
                    .map_or(first, |m| m.0)
            }
            FrameSel::Other(i) => other.0 + u64::from(i) % (other.1 - other.0),
            FrameSel::Xen(i) => XEN.0 + u64::from(i) % (XEN.1 - XEN.0),
            FrameSel::Mmio(i) => MMIO + u64::from(i % 8),
            FrameSel::Raw(r) => r & 0xff_ffff_ffff,
        }
    }

    /// The value `v` for an entry of a table of `level` (`None`: not a live page
    /// table), see [`Val::Map`].
    fn val_for(&self, d: Dom, v: Val, level: Option<u8>) -> u64 {
        match v {
            Val::Map(f, flags) => {
                let mut bits = u64::from(flags & 0x1ff)
                    | (u64::from(flags >> 9 & 1) << 63)
                    | (u64::from(flags >> 10 & 1) << 52);
                if flags & (1 << 13) != 0 {
                    // RW, PWT, PCD, G.
                    bits &= !0x11a;
                }
                let target = match (flags >> 11 & 3, level) {
                    (1, Some(l)) => Some(l),
                    (2, Some(l)) if l > 1 => Some(l - 1),
                    _ => None,
                };
                let frame = target
                    .map(|l| self.tables_at(d.id(), l))
                    .and_then(|t| t.get(sel_number(f) % t.len().max(1)).map(|m| m.0))
                    .unwrap_or_else(|| self.frame(d, f));
                (frame << 12) | bits | 1
            }
            Val::Zero => 0,
            Val::Raw(r) => r,
        }
    }

    fn slot(&self, d: Dom, s: Slot) -> u64 {
        match s {
            Slot::Table(t, i) => {
                let tables = self.tables(d.id());
                let f = tables
                    .get(usize::from(t) % tables.len().max(1))
                    .map_or(d.frames().0, |m| m.0);
                (f << 12) + entry_index(i) * 8
            }
            Slot::Frame(f, i) => (self.frame(d, f) << 12) + entry_index(i) * 8,
            Slot::Raw(r) => r & !7,
        }
    }

    fn fd(d: Dom, fd: Fd) -> u32 {
        match fd {
            Fd::SelfDom => pvmmu_abi::DOMID_SELF.into(),
            Fd::Other => match d {
                Dom::One => 2,
                Dom::Two => 1,
            },
            Fd::Io => pvmmu_abi::DOMID_IO.into(),
            Fd::Xen => pvmmu_abi::DOMID_XEN.into(),
            Fd::OwnId => d.id().into(),
            Fd::Raw(r) => r,
        }
    }

    /// Decodes `op` into the operation the library and the model receive (`None`: not
    /// issued, e.g. a dead domain's, or a ptwr write when there is no L1 table).
    pub fn decode(&self, op: &Op) -> Option<ModelOp> {
        let alive = |d: &Dom| self.alive[usize::from(d.id() - 1)];
        Some(match op {
            Op::MmuUpdate(d, reqs, fd) if alive(d) => ModelOp::MmuUpdate {
                caller: Caller::new(d.id(), 0),
                foreigndom: Self::fd(*d, *fd),
                reqs: reqs
                    .iter()
                    .take(64)
                    .map(|r| {
                        let cmd = match r.cmd % 16 {
                            0..=9 => 0,
                            10 => 1,
                            11 => 2,
                            12 => 3,
                            n => u64::from(n - 9),
                        };
                        let ptr = self.slot(*d, r.slot);
                        MmuUpdate {
                            ptr: ptr | cmd,
                            val: self.val_for(*d, r.val, self.live_level(ptr >> 12)),
                        }
                    })
                    .collect(),
            },
            Op::Mmuext(d, ops, fd) if alive(d) => ModelOp::Mmuext {
                caller: Caller::new(d.id(), 0),
                foreigndom: Self::fd(*d, *fd),
                ops: ops
                    .iter()
                    .take(16)
                    .map(|e| {
                        let cmd = u32::from(e.cmd % 22);
                        let frame = self.frame(*d, e.frame);
                        let va = KBASE + ((d.frames().0 + u64::from(e.va) % 64) << 12);
                        let (a1, a2) = match cmd {
                            7 | 9 | 11 => (va, va),
                            8 => (0, va),
                            13 => (va, u64::from(e.va % 16)),
                            17 => (frame, self.frame(*d, e.arg2)),
                            _ => (frame, 0),
                        };
                        MmuextOp::new(cmd, a1, a2)
                    })
                    .collect(),
            },
            Op::Uvm(d, vcpu, page, v, flags) if alive(d) => {
                let (first, end) = d.frames();
                ModelOp::UpdateVaMapping {
                    caller: Caller::new(d.id(), u32::from(*vcpu && d.id() == 1)),
                    va: KBASE + ((first + u64::from(*page) % (end - first)) << 12),
                    val: self.val_for(*d, *v, Some(1)),
                    flags: u64::from(*flags),
                }
            }
            Op::Ptwr(d, t, i, v, size, cmp) if alive(d) => {
                let tables: Vec<Mfn> = self
                    .tables(d.id())
                    .into_iter()
                    .filter(|m| {
                        self.m
                            .frames()
                            .get(*m)
                            .is_some_and(|p| p.ty == PageType::L1)
                    })
                    .collect();
                let table = tables.get(usize::from(*t) % tables.len().max(1))?;
                let size = [1u8, 2, 4, 8][usize::from(size % 4)];
                let addr = KBASE + (table.0 << 12) + (u64::from(i % 512) * 8);
                ModelOp::Ptwr {
                    caller: Caller::new(d.id(), 0),
                    fault_va: addr,
                    write: PtwrWrite {
                        addr,
                        size,
                        value: self.val_for(*d, *v, Some(1)),
                        cmpxchg: cmp.map(|x| self.val_for(*d, x, Some(1))),
                    },
                }
            }
            Op::VmAssist(d, enable, ty) if alive(d) => ModelOp::VmAssist {
                caller: Caller::new(d.id(), 0),
                cmd: u64::from(!enable),
                ty: u64::from(ty % 40),
            },
            Op::Teardown(d) if alive(d) => ModelOp::Teardown { dom: d.id() },
            _ => return None,
        })
    }

    /// Runs one operation and checks the oracles: the model's prediction of its
    /// outcome, the model's bookkeeping afterwards, and the audit. Returns the outcome
    /// (`None`: the operation was not issued); `Err` describes the first oracle that
    /// failed.
    pub fn try_apply(&mut self, op: &Op) -> Result<Option<Outcome>, String> {
        let Some(mop) = self.decode(op) else {
            return Ok(None);
        };
        let entries = match &mop {
            ModelOp::MmuUpdate { reqs, .. } => reqs.len() as u64,
            ModelOp::Mmuext { ops, .. } => ops.len() as u64,
            _ => 0,
        };
        self.judged.ops += 1;
        self.judged.entries += entries;
        let outcome = xen_model::check_recorded(&mut self.model, &mut self.m, &mop)?;
        self.judged.ops_judged += 1;
        self.judged.entries_judged += entries;
        if let ModelOp::Teardown { dom } = mop {
            self.alive[usize::from(dom - 1)] = false;
        }
        self.m
            .audit()
            .map_err(|e| format!("audit failed after {op:?}: {e}"))?;
        Ok(Some(outcome))
    }

    /// Runs one operation and checks the oracles; panics if one fails.
    pub fn apply(&mut self, op: &Op) {
        if let Err(e) = self.try_apply(op) {
            panic!("{e}");
        }
    }

    /// Tears everything down (checked against the model) and checks every frame came
    /// back.
    pub fn finish(mut self) -> Judged {
        self.tear_down();
        self.judged
    }

    /// [`Fixture::finish`], leaving the fixture to be looked at (and restored).
    fn tear_down(&mut self) {
        for id in [1u16, 2] {
            if self.alive[usize::from(id - 1)] {
                let op = ModelOp::Teardown { dom: id };
                if let Err(e) = xen_model::check_recorded(&mut self.model, &mut self.m, &op) {
                    panic!("{e}");
                }
            }
        }
        for (mfn, p) in self.m.frames().iter() {
            let xen = (XEN.0..XEN.1).contains(&mfn.0);
            if !xen {
                assert!(
                    p.count == 0 && p.type_count == 0 && !p.pinned,
                    "frame {mfn} not returned after teardown: {p:?}"
                );
            }
        }
        if let Err(e) = self.m.audit() {
            panic!("audit failed after teardown: {e}");
        }
    }
}

impl Default for Fixture {
    fn default() -> Self {
        Fixture::new()
    }
}

/// The harness: decode `data` into operations, run them, check the oracles, tear down.
pub fn mmu_ops(data: &[u8]) {
    let _ = mmu_ops_judged(data);
}

/// [`mmu_ops`], returning how much the reference model judged.
pub fn mmu_ops_judged(data: &[u8]) -> Judged {
    mmu_ops_outcomes(data).0
}

/// [`mmu_ops`], returning how much the reference model judged and the outcome of every
/// operation (`None`: not issued).
pub fn mmu_ops_outcomes(data: &[u8]) -> (Judged, Vec<Option<Outcome>>) {
    let Some(ops) = decode_input(data) else {
        return Default::default();
    };
    let mut world = World::take();
    let mut f = world.start();
    let outcomes = run(&mut f, &ops);
    f.tear_down();
    world.restore(&f);
    WORLD.set(Some(world));
    (f.judged, outcomes)
}

/// [`mmu_ops_outcomes`] on a freshly built fixture (no snapshot, nothing restored): the
/// reference the restored world is tested against.
pub fn mmu_ops_fresh(data: &[u8]) -> (Judged, Vec<Option<Outcome>>) {
    let Some(ops) = decode_input(data) else {
        return Default::default();
    };
    let mut f = Fixture::new();
    let outcomes = run(&mut f, &ops);
    f.tear_down();
    (f.judged, outcomes)
}

/// Runs the first `stop` operations of `data` on the restored world and panics, as a
/// failing oracle does (for the tests of the restore).
#[doc(hidden)]
pub fn mmu_ops_panicking_after_for_test(data: &[u8], stop: usize) {
    let ops = decode_input(data).unwrap_or_default();
    let world = World::take();
    let mut f = world.start();
    run(&mut f, &ops[..stop.min(ops.len())]);
    panic!("an oracle failed (on purpose)");
}

fn decode_input(data: &[u8]) -> Option<Vec<Op>> {
    let mut u = Unstructured::new(data);
    Vec::<Op>::arbitrary(&mut u).ok()
}

fn run(f: &mut Fixture, ops: &[Op]) -> Vec<Option<Outcome>> {
    ops.iter()
        .take(64)
        .map(|op| {
            f.judged.decoded += 1;
            match f.try_apply(op) {
                Ok(o) => o,
                Err(e) => panic!("{e}"),
            }
        })
        .collect()
}

/// Whether every restored world is checked against a freshly built one: in debug
/// builds (`cargo test`), not when fuzzing.
#[allow(unexpected_cfgs)]
const CHECK_EVERY_RESTORE: bool = cfg!(all(debug_assertions, not(fuzzing)));

/// Inputs between two full checks of the restored memory in other builds.
const MEMORY_CHECK_INTERVAL: u32 = 1024;

thread_local! {
    /// This thread's starting world, between inputs (`None` until the first input, and
    /// again after an input that panicked: the next one builds it afresh).
    static WORLD: RefCell<Option<World>> = const { RefCell::new(None) };
}

/// The starting world of every input, built once per thread: a fixture as built by
/// [`Fixture::new`], never run, and a copy of its memory. An input runs on a clone of
/// the fixture (the machine's and the model's bookkeeping are copied; the memory is
/// shared), and afterwards every page it wrote is copied back: the pages in the
/// memory's dirty bitmap (every write through `vm-memory` and every entry the library
/// stores marks it) and, in case the library ever wrote a page without marking it, the
/// pages the model wrote. Every [`MEMORY_CHECK_INTERVAL`] inputs (every input in debug
/// builds) the whole memory is compared with the copy.
struct World {
    start: Fixture,
    memory: Vec<u8>,
    since_check: u32,
}

impl World {
    fn take() -> World {
        WORLD.take().unwrap_or_else(World::build)
    }

    fn build() -> World {
        let start = Fixture::new();
        let memory = read_memory(start.m.memory());
        bitmap(start.m.memory()).reset();
        World {
            start,
            memory,
            since_check: 0,
        }
    }

    /// A fixture in the starting state.
    fn start(&self) -> Fixture {
        let f = self.start.clone();
        if CHECK_EVERY_RESTORE {
            let fresh = Fixture::new();
            assert_eq!(
                bookkeeping(&f.m),
                bookkeeping(&fresh.m),
                "restored machine differs from a fresh one"
            );
            assert!(
                f.model == fresh.model,
                "restored model differs from a fresh one"
            );
            assert!(
                read_memory(f.m.memory()) == read_memory(fresh.m.memory()),
                "restored memory differs from a fresh one"
            );
            assert_eq!((f.alive, f.judged), (fresh.alive, fresh.judged));
        }
        f
    }

    /// Copies back every page `f` (run from [`World::start`]) wrote.
    fn restore(&mut self, f: &Fixture) {
        let mem = f.m.memory();
        let bits = bitmap(mem);
        let mut dirty = bits.get_and_reset();
        for frame in f.model.written_frames() {
            if let Some(w) = dirty.get_mut((frame / 64) as usize) {
                *w |= 1 << (frame % 64);
            }
        }
        for (i, w) in dirty.iter().enumerate() {
            let mut w = *w;
            while w != 0 {
                let frame = i * 64 + w.trailing_zeros() as usize;
                w &= w - 1;
                let page = &self.memory[frame << 12..(frame + 1) << 12];
                mem.write_slice(page, GuestAddress((frame as u64) << 12))
                    .expect("harness memory");
            }
        }
        bits.reset();
        self.since_check += 1;
        if CHECK_EVERY_RESTORE || self.since_check >= MEMORY_CHECK_INTERVAL {
            self.since_check = 0;
            let mut page = [0u8; 4096];
            for (frame, want) in self.memory.chunks_exact(4096).enumerate() {
                mem.read_slice(&mut page, GuestAddress((frame as u64) << 12))
                    .expect("harness memory");
                assert!(
                    page[..] == *want,
                    "frame {frame:#x} was written without being marked dirty: the restored \
                     world is not the starting one (the input that wrote it ran earlier)"
                );
            }
        }
    }
}

/// The dirty bitmap of the harness's one memory region.
fn bitmap(mem: &HarnessMemory) -> &AtomicBitmap {
    mem.iter().next().expect("one region").bitmap()
}

/// All of the harness's memory.
pub fn read_memory(mem: &HarnessMemory) -> Vec<u8> {
    let mut bytes = vec![0u8; (FRAMES << 12) as usize];
    mem.read_slice(&mut bytes, GuestAddress(0))
        .expect("the harness's memory");
    bytes
}

/// Everything of a machine but its memory, as text.
fn bookkeeping(m: &HarnessMachine) -> String {
    format!("{m:?}").replacen(&format!("{:?}", m.memory()), "", 1)
}
