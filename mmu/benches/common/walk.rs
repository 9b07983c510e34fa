//! The walk benchmarks' page tables (shared by `benches/walk.rs` and the instruction
//! counts of `examples/icount.rs`): 1 GiB mapped with 4 KiB pages (262,144 L1 entries in
//! 512 L1 tables) in a `GuestMemoryMmap` of 4 MiB.
#![allow(dead_code)]

use std::ops::ControlFlow;

use pvmmu::{Level, Mfn, Pte, PteFlags, VaRange, Visit, Walker};
use vm_memory::{GuestAddress, GuestMemoryMmap};

/// Start of the mapped range.
pub const BASE: u64 = 1 << 30;
/// Its size.
pub const SIZE: u64 = 1 << 30;
/// Pages (L1 entries) in it.
pub const PAGES: u64 = SIZE >> 12;
/// The root table.
pub const ROOT: Mfn = Mfn(0);
/// The bit the write passes flip.
pub const TOGGLE: u64 = PteFlags::AVAIL0.bits();

/// The tables and where they are.
pub struct Fixture {
    pub mem: GuestMemoryMmap<()>,
    pub range: VaRange,
    pub l1_tables: Vec<Mfn>,
}

/// Builds the tables.
pub fn fixture() -> Fixture {
    let mem =
        GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 4 << 20)]).expect("guest memory");
    let range = VaRange::new(BASE, SIZE).expect("range");
    let mut next = 1;
    let mut alloc = |_: Level| {
        next += 1;
        Some(Mfn(next - 1))
    };
    let mut l1_tables = vec![];
    let _complete = Walker::new(&mem)
        .apply_to_page_range(ROOT, range, &mut alloc, |v| {
            if let Visit::Ptes(b) = v {
                l1_tables.push(b.table());
                for i in 0..b.len() {
                    let frame = Mfn(0x10_0000 + (b.va(i) >> 12));
                    b.set(
                        i,
                        Pte::new(frame, PteFlags::PRESENT | PteFlags::RW | PteFlags::ACCESSED),
                    );
                }
            }
            ControlFlow::<()>::Continue(())
        })
        .expect("build page tables");
    assert_eq!(l1_tables.len(), 512);
    Fixture {
        mem,
        range,
        l1_tables,
    }
}
