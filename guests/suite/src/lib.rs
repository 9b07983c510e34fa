//! Helpers shared by the scenario guests.
#![no_std]

use rt::abi::MmuUpdate;
use rt::{mem, peek};

/// Present.
pub const P: u64 = 1;
/// Writable.
pub const RW: u64 = 2;
/// Accessed.
pub const A: u64 = 0x20;

/// Hands out free pseudo-physical frames after the builder's areas.
pub struct Frames {
    next: u64,
}

impl Frames {
    /// Starts after the boot stack.
    pub fn new() -> Frames {
        Frames { next: mem::first_free_pfn() }
    }
    /// One frame.
    pub fn take(&mut self) -> u64 {
        self.next += 1;
        self.next - 1
    }
}

impl Default for Frames {
    fn default() -> Self {
        Frames::new()
    }
}

/// Machine address of the L1 entry that maps `va` in the builder's initial tables.
pub fn l1e_addr(va: u64) -> u64 {
    let si = rt::start_info();
    let mut table_va = si.pt_base;
    for shift in [39u32, 30, 21] {
        let e = peek(table_va + ((va >> shift) & 511) * 8);
        if e & P == 0 {
            rt::finish(Some("path to a builder mapping not present"));
        }
        // The domain's pfn == mfn and the builder maps it identically.
        table_va = mem::pfn_to_va((e & 0x000f_ffff_ffff_f000) >> 12);
    }
    (mem::pfn_to_mfn(table_va >> 12) << 12) + ((va >> 12) & 511) * 8
}

/// Makes `pfn`'s own mapping read-only, so the frame can become a page table.
pub fn make_readonly(pfn: u64) -> MmuUpdate {
    MmuUpdate {
        ptr: l1e_addr(mem::pfn_to_va(pfn)),
        val: (mem::pfn_to_mfn(pfn) << 12) | P | A,
    }
}

/// Zeroes a frame through its builder mapping.
pub fn zero(pfn: u64) {
    for i in 0..512 {
        rt::poke(mem::pfn_to_va(pfn) + i * 8, 0);
    }
}

/// Builds an L2 (`l2`) + L1 (`l1`) under L3 slot `l3_slot` of the builder's L3 (for VA
/// `l3_slot << 30`), the L1 mapping the frames `data` read-write, in one batched
/// mmu_update. `l2` and `l1` must lie in the builder's initial mapping (they are zeroed
/// through it). Returns the L1's mfn.
pub fn map_range(l2: u64, l1: u64, l3_slot: u64, data: &[u64]) -> u64 {
    let si = rt::start_info();
    zero(l2);
    zero(l1);
    let (l1_mfn, l2_mfn) = (mem::pfn_to_mfn(l1), mem::pfn_to_mfn(l2));
    let l3 = peek(si.pt_base) & 0x000f_ffff_ffff_f000;
    let mut batch = [MmuUpdate::default(); 4 + 512];
    batch[0] = make_readonly(l2);
    batch[1] = make_readonly(l1);
    let mut n = 2;
    for (i, pfn) in data.iter().enumerate().take(512) {
        batch[n] = MmuUpdate {
            ptr: (l1_mfn << 12) + i as u64 * 8,
            val: (mem::pfn_to_mfn(*pfn) << 12) | P | RW | A,
        };
        n += 1;
    }
    batch[n] = MmuUpdate { ptr: l2_mfn << 12, val: (l1_mfn << 12) | P | RW | A };
    batch[n + 1] = MmuUpdate { ptr: l3 + l3_slot * 8, val: (l2_mfn << 12) | P | RW | A };
    let (rc, _) = rt::mmu_update(&batch[..n + 2], u32::from(rt::abi::DOMID_SELF));
    if rc != 0 {
        rt::println!("map_range: rc {rc}");
        rt::finish(Some("map_range"));
    }
    l1_mfn
}
