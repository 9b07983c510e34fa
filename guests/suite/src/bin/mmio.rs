//! Maps the MMIO test device (owned by DOMID_IO, outside RAM) with one batched mmu_update
//! and drives its registers.
#![no_std]
#![no_main]

use rt::abi::{DOMID_IO, MmuUpdate, StartInfo};
use rt::{mem, peek, poke};
use suite::{A, Check, Frames, P, RW};

const R: u64 = 1 << 30;
const DEVICE: u64 = 0x1_0000_0000;
const ID: u64 = u64::from_le_bytes(*b"PVMMUDEV");

#[unsafe(no_mangle)]
pub fn guest_main(_si: &'static StartInfo) {
    let mut c = Check::new();
    let mut frames = Frames::new();
    let (l2, l1) = (frames.take(), frames.take());
    let data = [frames.take()];
    let l1m = suite::map_range(l2, l1, 1, &data);
    // One batch: the device read-write at R+4K and read-only at R+8K.
    let batch = [
        MmuUpdate {
            ptr: (l1m << 12) + 8,
            val: DEVICE | P | RW | A,
        },
        MmuUpdate {
            ptr: (l1m << 12) + 16,
            val: DEVICE | P | A,
        },
    ];
    c.update("map the device", &batch, u32::from(DOMID_IO), 0, 2);
    // Xen forces UC (PCD|PWT) on MMIO mapped with WB attributes.
    let stored = peek(mem::pfn_to_va(l1) + 8);
    c.eq("cache bits forced to UC", (stored & 0x98) as i64, 0x18);
    c.eq("ID register", peek(R + 4096) as i64, ID as i64);
    poke(R + 4096 + 8, 0xdead_beef);
    c.eq("scratch register", peek(R + 4096 + 8) as i64, 0xdead_beef);
    c.eq(
        "scratch through the read-only alias",
        peek(R + 2 * 4096 + 8) as i64,
        0xdead_beef,
    );
    let reads = peek(R + 4096 + 0x10);
    let writes = peek(R + 4096 + 0x18);
    c.ok("the device counted our accesses", reads >= 3 && writes == 1);
    // Unmapping it takes no reference either way.
    let unmap = [
        MmuUpdate {
            ptr: (l1m << 12) + 8,
            val: 0,
        },
        MmuUpdate {
            ptr: (l1m << 12) + 16,
            val: 0,
        },
    ];
    c.update("unmap the device", &unmap, suite::SELF, 0, 2);
    c.finish();
}
