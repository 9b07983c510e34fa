//! The `mmu_ops` harness: structured PV MMU operation sequences on two domains.

use std::ops::ControlFlow;

use arbitrary::{Arbitrary, Unstructured};
use pvmmu::{
    BatchOutcome, Caller, DomainConfig, Level, Machine, MachineConfig, Mfn, PageType, Pte,
    PtwrWrite, VaRange, Visit, Walker,
};
use pvmmu_abi::{MmuUpdate, MmuextOp};
use vm_memory::{GuestAddress, GuestMemoryMmap};

use crate::model::{self, HarnessMachine};

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
    /// One of the acting domain's frames.
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
    /// Maps a frame with flag bits (bit 0..8 as in a PTE, bit 9 NX, bit 10 bit 52).
    Map(FrameSel, u16),
    /// Not present.
    Zero,
    /// Anything.
    Raw(u64),
}

/// The PTE an operation addresses.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Slot {
    /// Entry `index` of one of the acting domain's page tables.
    Table(u16, u16),
    /// Entry `index` of any frame.
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
    slot: Slot,
    cmd: u8,
    val: Val,
}

/// One mmuext operation.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub struct Ext {
    cmd: u8,
    frame: FrameSel,
    va: u16,
    arg2: FrameSel,
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

/// The machine and what the harness knows about it.
pub struct Fixture {
    /// The machine.
    pub m: HarnessMachine,
    alive: [bool; 2],
}

fn template() -> [u64; 16] {
    let mut t = [0u64; 16];
    t[0] = (XEN.0 << 12) | 0x5;
    t[4] = ((XEN.0 + 1) << 12) | 0x3;
    t
}

/// Maps the domain's frames at KBASE (tables read-only), pins the L4, installs it.
fn build_tree(m: &mut HarnessMachine, dom: u16, (first, end): (u64, u64)) {
    let l4 = Mfn(first);
    let mut next = first + 1;
    let mut tables = vec![l4];
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
    let c = Caller::new(dom, 0);
    for cmd in [
        pvmmu_abi::mmu::MMUEXT_PIN_L4_TABLE,
        pvmmu_abi::mmu::MMUEXT_NEW_BASEPTR,
    ] {
        let o = m.mmuext_op(
            c,
            &[MmuextOp::new(cmd, l4.0, 0)],
            pvmmu_abi::DOMID_SELF.into(),
        );
        assert_eq!(o.map(|o| o.result), Ok(Ok(())), "fixture: {cmd}");
    }
    m.flusher().take();
}

impl Fixture {
    /// Domain 1 (2 vCPUs, I/O memory at MMIO) and domain 2 (privileged), each with a
    /// pinned, installed tree mapping its frames.
    pub fn new() -> Fixture {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), (FRAMES << 12) as usize)])
            .expect("memory");
        let config = MachineConfig {
            xen_l4_slots: template(),
            ..MachineConfig::default()
        };
        let mut m =
            Machine::with_flusher(mem, config, pvmmu::RecordingFlush::default()).expect("machine");
        m.create_domain(DomainConfig::new(1).vcpus(2).iomem(MMIO..=MMIO + 3))
            .expect("dom1");
        m.create_domain(DomainConfig::new(2).privileged(true))
            .expect("dom2");
        m.assign_frames(1, (D1.0..D1.1).map(Mfn)).expect("frames");
        m.assign_frames(2, (D2.0..D2.1).map(Mfn)).expect("frames");
        m.reserve_xen_frames((XEN.0..XEN.1).map(Mfn)).expect("xen");
        build_tree(&mut m, 1, D1);
        build_tree(&mut m, 2, D2);
        Fixture {
            m,
            alive: [true, true],
        }
    }

    fn tables(&self, dom: u16) -> Vec<Mfn> {
        self.m
            .frames()
            .iter()
            .filter(|(_, p)| p.owner == dom && p.ty.is_page_table() && p.type_count > 0)
            .map(|(m, _)| m)
            .collect()
    }

    fn frame(&self, d: Dom, sel: FrameSel) -> u64 {
        let (first, end) = d.frames();
        let other = match d {
            Dom::One => D2,
            Dom::Two => D1,
        };
        match sel {
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

    fn val(&self, d: Dom, v: Val) -> u64 {
        match v {
            Val::Map(f, flags) => {
                let bits = u64::from(flags & 0x1ff)
                    | (u64::from(flags >> 9 & 1) << 63)
                    | (u64::from(flags >> 10 & 1) << 52);
                (self.frame(d, f) << 12) | bits | 1
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
                (f << 12) + u64::from(i % 512) * 8
            }
            Slot::Frame(f, i) => (self.frame(d, f) << 12) + u64::from(i % 512) * 8,
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

    fn read(&self, addr: u64) -> Option<u64> {
        use vm_memory::Bytes;
        self.m.memory().read_obj(GuestAddress(addr)).ok()
    }

    /// Runs one operation and checks the oracles.
    pub fn apply(&mut self, op: &Op) {
        let alive = |d: Dom, a: &[bool; 2]| a[usize::from(d.id() - 1)];
        match op {
            Op::MmuUpdate(d, reqs, fd) if alive(*d, &self.alive) => {
                let c = Caller::new(d.id(), 0);
                let fdv = Self::fd(*d, *fd);
                let reqs: Vec<MmuUpdate> = reqs
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
                        MmuUpdate {
                            ptr: self.slot(*d, r.slot) | cmd,
                            val: self.val(*d, r.val),
                        }
                    })
                    .collect();
                let predicted = reqs.first().and_then(|r| self.predict_l1(d.id(), fdv, r));
                let o = self.m.mmu_update(c, &reqs, fdv).expect("caller exists");
                if let Some(p) = predicted {
                    let actual = first_result(&o);
                    assert_eq!(actual, p, "reference model disagrees on {:#x?}", reqs[0]);
                }
            }
            Op::Mmuext(d, ops, fd) if alive(*d, &self.alive) => {
                let c = Caller::new(d.id(), 0);
                let ops: Vec<MmuextOp> = ops
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
                    .collect();
                let fdv = Self::fd(*d, *fd);
                let predicted = ops.first().and_then(|o| self.predict_ext(d.id(), fdv, o));
                let o = self.m.mmuext_op(c, &ops, fdv).expect("caller exists");
                if let Some(p) = predicted {
                    assert_eq!(
                        first_result(&o),
                        p,
                        "reference model disagrees on {:#x?}",
                        ops[0]
                    );
                }
            }
            Op::Uvm(d, vcpu, page, v, flags) if alive(*d, &self.alive) => {
                let c = Caller::new(d.id(), u32::from(*vcpu && d.id() == 1));
                let (first, end) = d.frames();
                let va = KBASE + ((first + u64::from(*page) % (end - first)) << 12);
                let val = self.val(*d, *v);
                let _ = self
                    .m
                    .hypercall_update_va_mapping(c, va, val, u64::from(*flags))
                    .expect("caller");
            }
            Op::Ptwr(d, t, i, v, size, cmp) if alive(*d, &self.alive) => {
                let c = Caller::new(d.id(), 0);
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
                let Some(table) = tables.get(usize::from(*t) % tables.len().max(1)) else {
                    return;
                };
                let size = [1u8, 2, 4, 8][usize::from(size % 4)];
                let addr = KBASE + (table.0 << 12) + (u64::from(i % 512) * 8);
                let w = PtwrWrite {
                    addr,
                    size,
                    value: self.val(*d, *v),
                    cmpxchg: cmp.map(|x| self.val(*d, x)),
                };
                let _ = self.m.ptwr_write(c, addr, w).expect("caller");
            }
            Op::VmAssist(d, enable, ty) if alive(*d, &self.alive) => {
                let _ = self.m.hypercall_vm_assist(
                    Caller::new(d.id(), 0),
                    u64::from(!enable),
                    u64::from(ty % 40),
                );
            }
            Op::Teardown(d) if alive(*d, &self.alive) => {
                let _ = self.m.destroy_domain(d.id());
                self.alive[usize::from(d.id() - 1)] = false;
            }
            _ => return,
        }
        if let Err(e) = self.m.audit() {
            panic!("audit failed after {op:?}: {e}");
        }
    }

    /// The reference model's answer for a page-table update request, when it applies.
    fn predict_l1(&self, pt: u16, fd: u32, r: &MmuUpdate) -> Option<Result<(), pvmmu::Errno>> {
        if fd != u32::from(pvmmu_abi::DOMID_SELF) || r.ptr & 7 != 0 {
            return None;
        }
        let table = Mfn(r.ptr >> 12);
        let p = self.m.frames().get(table)?;
        if p.owner != pt || !p.validated || p.type_count == 0 {
            return None;
        }
        let old = self.read(r.ptr)?;
        let index = ((r.ptr & 0xfff) >> 3) as usize;
        match p.ty {
            PageType::L1 => Some(model::l1_update(&self.m, pt, pt, old, r.val)),
            PageType::L2 => model::upper_update(&self.m, pt, 2, index, old, r.val),
            PageType::L3 => model::upper_update(&self.m, pt, 3, index, old, r.val),
            PageType::L4 => model::upper_update(&self.m, pt, 4, index, old, r.val),
            _ => None,
        }
    }

    /// The reference model's answer for an mmuext pin/unpin, when it applies.
    fn predict_ext(&self, d: u16, fd: u32, op: &MmuextOp) -> Option<Result<(), pvmmu::Errno>> {
        if fd != u32::from(pvmmu_abi::DOMID_SELF) {
            return None;
        }
        match op.cmd {
            0..=3 => model::pin(&self.m, d, op.cmd as u8 + 1, Mfn(op.arg1)),
            4 => Some(model::unpin(&self.m, d, Mfn(op.arg1))),
            _ => None,
        }
    }

    /// Tears everything down and checks every frame came back.
    pub fn finish(mut self) {
        for id in [1u16, 2] {
            if self.alive[usize::from(id - 1)] {
                let _ = self.m.destroy_domain(id);
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

fn first_result(o: &BatchOutcome) -> Result<(), pvmmu::Errno> {
    if o.done > 0 { Ok(()) } else { o.result }
}

/// The harness: decode `data` into operations, run them, check the oracles, tear down.
pub fn mmu_ops(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let Ok(ops) = Vec::<Op>::arbitrary(&mut u) else {
        return;
    };
    let mut f = Fixture::new();
    for op in ops.iter().take(64) {
        f.apply(op);
    }
    f.finish();
}
