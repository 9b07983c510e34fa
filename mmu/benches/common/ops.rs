//! The ops benchmarks' machine (shared by `benches/ops.rs` and the instruction counts of
//! `examples/icount.rs`): domain 1 over 16 MiB with an unpinned, unvalidated tree mapping
//! 1 GiB with 4 KiB pages (262,144 L1 entries in 512 L1 tables), built the way Xen's
//! domain builder does, all entries read-write to 256 data frames.
#![allow(dead_code)]

use std::ops::ControlFlow;

use pvmmu::{
    Caller, DomainConfig, Level, Machine, MachineConfig, Mfn, Pte, PteFlags, RecordingFlush,
    VaRange, Visit, Walker,
};
use pvmmu_abi::{DOMID_SELF, MmuextOp};
use vm_memory::{GuestAddress, GuestMemoryMmap};

/// Machine frames (16 MiB).
pub const FRAMES: u64 = 4096;
/// Hypervisor frames the reserved L4 slots point at.
pub const XEN_FRAME: u64 = 0x10;
/// The domain's frames: page tables from `DOM_FIRST` on, data frames at `DATA_FIRST..`.
pub const DOM_FIRST: u64 = 0x100;
/// End of the domain's frames.
pub const DOM_END: u64 = FRAMES;
pub const DATA_FIRST: u64 = 0x800;
/// Data frames the entries point at.
pub const DATA_FRAMES: u64 = 256;
/// The mapped range: 1 GiB at VA 1 GiB (L4 slot 0, L3 slot 1).
pub const BASE: u64 = 1 << 30;
/// Its size.
pub const SIZE: u64 = 1 << 30;
/// Pages (L1 entries) in it.
pub const PAGES: u64 = SIZE >> 12;
/// The domain.
pub const DOM: u16 = 1;
/// FD = DOMID_SELF.
pub const SELF: u32 = DOMID_SELF as u32;
/// Requests in an mmu_update batch.
pub const BATCH: usize = 512;

/// The machine, the caller and the tree.
pub struct Fixture {
    pub m: Machine<GuestMemoryMmap<()>, RecordingFlush>,
    pub c: Caller,
    pub l4: Mfn,
    pub l1_tables: Vec<Mfn>,
}

/// The data frame that page `page` of the range maps initially.
pub fn data_frame(page: u64) -> u64 {
    DATA_FIRST + page % DATA_FRAMES
}

/// A machine with domain 1 and its (unpinned, unvalidated) 1 GiB tree.
pub fn fixture() -> Fixture {
    fixture_with_vcpus(1)
}

/// [`fixture`] with a domain of `vcpus` vCPUs.
pub fn fixture_with_vcpus(vcpus: u32) -> Fixture {
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), (FRAMES << 12) as usize)])
        .expect("memory");
    let mut slots = [0u64; 16];
    slots[0] = (XEN_FRAME << 12) | 0x5; // read-only M2P
    slots[4] = ((XEN_FRAME + 1) << 12) | 0x3;
    let config = MachineConfig {
        xen_l4_slots: slots,
        ..MachineConfig::default()
    };
    let mut m = Machine::with_flusher(mem, config, RecordingFlush::default()).expect("machine");
    m.create_domain(DomainConfig::new(DOM).vcpus(vcpus))
        .expect("domain");
    m.assign_frames(DOM, (DOM_FIRST..DOM_END).map(Mfn))
        .expect("frames");
    m.reserve_xen_frames((XEN_FRAME..XEN_FRAME + 4).map(Mfn))
        .expect("xen frames");
    for f in DOM_FIRST..DOM_END {
        m.set_m2p(Mfn(f), f - DOM_FIRST);
    }
    let l4 = Mfn(DOM_FIRST);
    let mut next = DOM_FIRST + 1;
    let mut alloc = |_: Level| {
        next += 1;
        (next <= DATA_FIRST).then_some(Mfn(next - 1))
    };
    let mut l1_tables = Vec::new();
    let range = VaRange::new(BASE, SIZE).expect("range");
    // The page-table frames are not mapped at all, so never writable.
    let r = Walker::new(m.memory()).apply_to_page_range(l4, range, &mut alloc, |v| {
        if let Visit::Ptes(b) = v {
            l1_tables.push(b.table());
            for i in 0..b.len() {
                let page = (b.va(i) - BASE) >> 12;
                let flags = PteFlags::PRESENT | PteFlags::RW | PteFlags::ACCESSED;
                b.set(i, Pte::new(Mfn(data_frame(page)), flags));
            }
        }
        ControlFlow::<()>::Continue(())
    });
    assert!(r.expect("build tree").is_continue());
    assert_eq!(l1_tables.len(), 512);
    Fixture {
        m,
        c: Caller::new(DOM, 0),
        l4,
        l1_tables,
    }
}

impl Fixture {
    /// One mmuext_op command on `mfn`, which must succeed.
    pub fn ext(&mut self, cmd: u32, mfn: Mfn) {
        let o = self
            .m
            .mmuext_op(self.c, &[MmuextOp::new(cmd, mfn.0, 0)], SELF)
            .expect("mmuext_op");
        assert_eq!(o.result, Ok(()), "mmuext {cmd}");
    }
}
