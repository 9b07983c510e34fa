//! A PV guest set up the way Xen's domain builder leaves it, for the PV MMU tests.
#![allow(dead_code)]

use std::ops::ControlFlow;

use pvmmu::{
    BatchOutcome, Caller, DomainConfig, Errno, Level, Machine, MachineConfig, Mfn, PageInfo, Pte,
    PteFlags, RecordingFlush, VaRange, Visit, Walker,
};
use pvmmu_abi::mmu::{MMU_NORMAL_PT_UPDATE, MMUEXT_NEW_BASEPTR, MMUEXT_PIN_L4_TABLE};
use pvmmu_abi::{DOMID_SELF, MmuUpdate, MmuextOp};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Total machine frames (16 MiB).
pub const FRAMES: u64 = 4096;
/// The domain's frames.
pub const DOM_FIRST: u64 = 0x100;
pub const DOM_END: u64 = 0x800;
/// A second domain's frames.
pub const DOM2_FIRST: u64 = 0x800;
pub const DOM2_END: u64 = 0x900;
/// Hypervisor frames (the reserved L4 slots point here).
pub const XEN_FRAME: u64 = 0x10;
/// Where the domain's frames are mapped: VA = KBASE + mfn * 4096 (L4 slot 272).
pub const KBASE: u64 = 0xffff_8800_0000_0000;
/// The template for L4 slots 256..=271: slot 256 is the RO M2P.
pub const M2P_SLOT: u64 = (XEN_FRAME << 12) | 0x5; // present, user, read-only
pub const SELF: u32 = DOMID_SELF as u32;

pub const P: u64 = 1;
pub const RW: u64 = 2;
pub const US: u64 = 4;
pub const A: u64 = 0x20;
pub const D: u64 = 0x40;
pub const PSE: u64 = 0x80;
pub const G: u64 = 0x100;
pub const NX: u64 = 1 << 63;
pub const GK: u64 = 1 << 52;

pub fn va_of(mfn: u64) -> u64 {
    KBASE + (mfn << 12)
}

pub struct Guest {
    pub m: Machine<GuestMemoryMmap<()>, RecordingFlush>,
    pub c: Caller,
    pub l4: Mfn,
    /// Every page-table frame of the initial tree.
    pub tables: Vec<Mfn>,
    /// Frames of the domain that are not page tables (free for tests to use).
    pub data: Vec<Mfn>,
}

pub fn template() -> [u64; 16] {
    let mut t = [0u64; 16];
    t[0] = M2P_SLOT;
    t[4] = ((XEN_FRAME + 1) << 12) | 0x3; // a supervisor per-domain area, say
    t
}

/// A machine with domain 1 (frames 0x100..0x800, mapped at KBASE, tables read-only,
/// L4 pinned and installed on vCPU 0) and domain 2 (frames 0x800..0x900, no tables).
pub fn guest() -> Guest {
    guest_with(DomainConfig::new(1).vcpus(2))
}

pub fn guest_with(cfg: DomainConfig) -> Guest {
    let mem =
        GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), (FRAMES << 12) as usize)]).unwrap();
    let config = MachineConfig {
        xen_l4_slots: template(),
        ..MachineConfig::default()
    };
    let mut m = Machine::with_flusher(mem, config, RecordingFlush::default()).unwrap();
    let dom = m.create_domain(cfg).unwrap();
    m.create_domain(DomainConfig::new(2)).unwrap();
    m.assign_frames(dom, (DOM_FIRST..DOM_END).map(Mfn)).unwrap();
    m.assign_frames(2, (DOM2_FIRST..DOM2_END).map(Mfn)).unwrap();
    m.reserve_xen_frames((XEN_FRAME..XEN_FRAME + 4).map(Mfn))
        .unwrap();
    for f in DOM_FIRST..DOM_END {
        m.set_m2p(Mfn(f), f - DOM_FIRST);
    }
    let l4 = Mfn(DOM_FIRST);
    let mut next = DOM_FIRST + 1;
    let mut tables = vec![l4];
    let range = VaRange::new(va_of(DOM_FIRST), (DOM_END - DOM_FIRST) << 12).unwrap();
    let walker = Walker::new(m.memory());
    // Pass 1: allocate the tables; pass 2: fill the L1 entries.
    let mut alloc = |_: Level| {
        next += 1;
        tables.push(Mfn(next - 1));
        Some(Mfn(next - 1))
    };
    let r = walker.apply_to_page_range(l4, range, &mut alloc, |_| ControlFlow::<()>::Continue(()));
    assert!(r.unwrap().is_continue());
    let tables_now = tables.clone();
    let r = walker.apply_to_existing_page_range(l4, range, |v| {
        if let Visit::Ptes(b) = v {
            for i in 0..b.len() {
                let mfn = (b.va(i) - KBASE) >> 12;
                let rw = if tables_now.contains(&Mfn(mfn)) {
                    0
                } else {
                    RW
                };
                b.set(i, Pte((mfn << 12) | P | A | rw));
            }
        }
        ControlFlow::<()>::Continue(())
    });
    assert!(r.unwrap().is_continue());
    let data = (next..DOM_END).map(Mfn).collect();
    let c = Caller::new(dom, 0);
    let mut g = Guest {
        m,
        c,
        l4,
        tables,
        data,
    };
    let o = g.ext(MMUEXT_PIN_L4_TABLE, l4.0, 0);
    assert_eq!(o.result, Ok(()), "initial pin");
    let o = g.ext(MMUEXT_NEW_BASEPTR, l4.0, 0);
    assert_eq!(o.result, Ok(()), "initial baseptr");
    g.m.flusher().take();
    g.audit();
    g
}

impl Guest {
    pub fn audit(&self) {
        if let Err(e) = self.m.audit() {
            panic!("{e}");
        }
    }

    /// The machine address of the L1 entry that maps `va` under the kernel root.
    pub fn pte_addr(&self, va: u64) -> u64 {
        let root = self.m.kernel_root(self.c).unwrap();
        let mut out = None;
        let _ = Walker::new(self.m.memory()).apply_to_existing_page_range(
            root,
            VaRange::page(va),
            |v| {
                if let Visit::Ptes(b) = v {
                    out = Some(b.entry_addr(0));
                }
                ControlFlow::<()>::Break(())
            },
        );
        out.expect("va mapped by an L1 table")
    }

    /// The machine address of entry `idx` of table `table`.
    pub fn slot(table: Mfn, idx: usize) -> u64 {
        table.addr() + idx as u64 * 8
    }

    pub fn read(&self, addr: u64) -> u64 {
        self.m.memory().read_obj(GuestAddress(addr)).unwrap()
    }

    pub fn write_raw(&self, addr: u64, v: u64) {
        self.m.memory().write_obj(v, GuestAddress(addr)).unwrap()
    }

    pub fn info(&self, mfn: Mfn) -> PageInfo {
        self.m.frames().get(mfn).unwrap()
    }

    pub fn update(&mut self, reqs: &[(u64, u64)]) -> BatchOutcome {
        self.update_fd(reqs, SELF)
    }

    pub fn update_fd(&mut self, reqs: &[(u64, u64)], fd: u32) -> BatchOutcome {
        let reqs: Vec<MmuUpdate> = reqs
            .iter()
            .map(|&(ptr, val)| MmuUpdate { ptr, val })
            .collect();
        self.m.mmu_update(self.c, &reqs, fd).unwrap()
    }

    pub fn ext(&mut self, cmd: u32, arg1: u64, arg2: u64) -> BatchOutcome {
        self.m
            .mmuext_op(self.c, &[MmuextOp::new(cmd, arg1, arg2)], SELF)
            .unwrap()
    }

    pub fn ext_fd(&mut self, cmd: u32, arg1: u64, arg2: u64, fd: u32) -> BatchOutcome {
        self.m
            .mmuext_op(self.c, &[MmuextOp::new(cmd, arg1, arg2)], fd)
            .unwrap()
    }

    /// Takes a data frame out of the free pool.
    pub fn take(&mut self) -> Mfn {
        self.data.pop().unwrap()
    }

    /// A fresh zeroed frame, no longer mapped writable anywhere (its KBASE mapping is
    /// made read-only), ready to become a page table.
    pub fn table_frame(&mut self) -> Mfn {
        let f = self.take();
        let o = self.update(&[(self.pte_addr(va_of(f.0)), (f.0 << 12) | P | A)]);
        assert_eq!(o.result, Ok(()));
        self.write_raw_page_zero(f);
        f
    }

    pub fn write_raw_page_zero(&self, f: Mfn) {
        self.m
            .memory()
            .write_slice(&[0u8; 4096], GuestAddress(f.addr()))
            .unwrap();
    }

    /// A copy of all guest memory.
    pub fn snapshot(&self) -> Vec<u8> {
        let mut v = vec![0u8; (FRAMES << 12) as usize];
        self.m.memory().read_slice(&mut v, GuestAddress(0)).unwrap();
        v
    }

    /// Every frame's bookkeeping.
    /// Every frame's counts and live type (without the TLB-staleness bookkeeping,
    /// which a flush may legitimately clear, and without the meaningless type word of
    /// a frame with type count 0): what a refusal must leave unchanged.
    pub fn counts(&self) -> Vec<PageInfo> {
        self.frame_state()
            .into_iter()
            .map(|p| {
                let idle = p.type_count == 0;
                PageInfo {
                    stale: false,
                    ty: if idle { pvmmu::PageType::None } else { p.ty },
                    validated: p.validated && !idle,
                    ..p
                }
            })
            .collect()
    }

    pub fn frame_state(&self) -> Vec<PageInfo> {
        self.m.frames().iter().map(|(_, p)| p).collect()
    }

    pub fn normal(addr: u64) -> u64 {
        addr | MMU_NORMAL_PT_UPDATE
    }

    pub fn translate(&self, va: u64) -> Option<u64> {
        let root = self.m.kernel_root(self.c)?;
        Walker::new(self.m.memory())
            .translate(root, va)
            .unwrap()
            .map(|t| t.paddr)
    }
}

/// Asserts that a batch failed with `errno` after `done` entries and that nothing but
/// what the first `done` entries did changed.
pub fn assert_refused(o: BatchOutcome, errno: Errno, done: u32) {
    assert_eq!(o.result, Err(errno), "errno");
    assert_eq!(o.done, done, "done count");
}

pub fn flags(pte: u64) -> PteFlags {
    Pte(pte).flags()
}

/// Destroys domain 1 (and 2): every frame they owned must come back free, with no
/// reference.
pub fn teardown(mut g: Guest) {
    g.audit();
    let owned: Vec<u64> = (0..FRAMES)
        .filter(|&f| matches!(g.info(Mfn(f)).owner, 1 | 2))
        .collect();
    g.m.destroy_domain(1).expect("domain 1 torn down cleanly");
    g.m.destroy_domain(2).expect("domain 2 torn down cleanly");
    for f in (DOM_FIRST..DOM_END)
        .chain(DOM2_FIRST..DOM2_END)
        .chain(owned)
    {
        let p = g.info(Mfn(f));
        assert_eq!(
            (p.count, p.type_count, p.pinned, p.validated),
            (0, 0, false, false),
            "frame {f:#x}"
        );
        assert_eq!(p.owner, pvmmu_abi::DOMID_INVALID, "frame {f:#x}");
    }
    g.audit();
}
