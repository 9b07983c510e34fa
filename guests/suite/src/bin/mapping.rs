//! Mapping, remapping, unmapping and permission downgrade of L1 entries through
//! mmu_update, checked by reading through the VA after the flush the ABI promises (and a
//! read before the flush that tolerates either value).
#![no_std]
#![no_main]

use rt::abi::mmu::{MMUEXT_INVLPG_LOCAL, MMUEXT_TLB_FLUSH_LOCAL};
use rt::abi::{MmuUpdate, StartInfo};
use rt::{mem, peek, poke};
use suite::{A, Check, Frames, P, RW, SELF};

const R: u64 = 1 << 30;
const N: usize = 16;

fn tag(pfn: u64) -> u64 {
    0x7a67_0000_0000 | pfn
}

#[unsafe(no_mangle)]
pub fn guest_main(_si: &'static StartInfo) {
    let mut c = Check::new();
    let mut frames = Frames::new();
    let (l2, l1) = (frames.take(), frames.take());
    let data: [u64; N] = core::array::from_fn(|_| frames.take());
    let alt: [u64; N] = core::array::from_fn(|_| frames.take());
    for &f in data.iter().chain(alt.iter()) {
        poke(mem::pfn_to_va(f), tag(f));
    }
    let l1m = suite::map_range(l2, l1, 1, &data);
    let entry = |i: usize| (l1m << 12) + i as u64 * 8;
    let table_va = |i: usize| mem::pfn_to_va(l1) + i as u64 * 8;

    // Map: new mappings are visible at once (nothing stale to flush).
    for (i, &f) in data.iter().enumerate() {
        c.eq(
            "map: read through the new mapping",
            peek(R + i as u64 * 4096) as i64,
            tag(f) as i64,
        );
    }

    // Remap every page in one batch; before a flush either value may be read.
    let mut reqs = [MmuUpdate::default(); N];
    for (i, r) in reqs.iter_mut().enumerate() {
        *r = MmuUpdate {
            ptr: entry(i),
            val: (mem::pfn_to_mfn(alt[i]) << 12) | P | RW | A,
        };
    }
    c.update("remap batch", &reqs, SELF, 0, N as u32);
    let before = peek(R);
    c.ok(
        "remap: read before the flush is the old or the new frame",
        before == tag(data[0]) || before == tag(alt[0]),
    );
    c.eq("flush", rt::mmuext(MMUEXT_TLB_FLUSH_LOCAL, 0, 0), 0);
    for (i, &f) in alt.iter().enumerate() {
        c.eq(
            "remap: read after the flush",
            peek(R + i as u64 * 4096) as i64,
            tag(f) as i64,
        );
    }
    // The guest reads back the adjusted entries (kernel mapping: US and bit 52 added).
    c.eq(
        "remap: adjusted entry",
        peek(table_va(0)) as i64,
        ((alt[0] << 12) | P | RW | A | 4 | (1 << 52)) as i64,
    );

    // Permission downgrade of page 4 (same frame, RW cleared).
    c.update(
        "downgrade",
        &[MmuUpdate {
            ptr: entry(4),
            val: (alt[4] << 12) | P | A,
        }],
        SELF,
        0,
        1,
    );
    c.eq(
        "invlpg",
        rt::mmuext(MMUEXT_INVLPG_LOCAL, R + 4 * 4096, 0),
        0,
    );
    c.eq(
        "downgrade: entry read-only",
        (peek(table_va(4)) & RW) as i64,
        0,
    );
    c.eq(
        "downgrade: still readable",
        peek(R + 4 * 4096) as i64,
        tag(alt[4]) as i64,
    );

    // Unmap pages 0..4 (not read through afterwards: that would fault).
    let unmap: [MmuUpdate; 4] = core::array::from_fn(|i| MmuUpdate {
        ptr: entry(i),
        val: 0,
    });
    c.update("unmap", &unmap, SELF, 0, 4);
    c.eq("flush", rt::mmuext(MMUEXT_TLB_FLUSH_LOCAL, 0, 0), 0);
    for i in 0..4 {
        c.eq("unmap: entry cleared", peek(table_va(i)) as i64, 0);
    }
    // The unmapped frames are free again: map one of them writable somewhere else.
    c.update(
        "re-map a released frame",
        &[MmuUpdate {
            ptr: entry(0),
            val: (data[1] << 12) | P | RW | A,
        }],
        SELF,
        0,
        1,
    );
    c.eq("flush", rt::mmuext(MMUEXT_TLB_FLUSH_LOCAL, 0, 0), 0);
    c.eq("re-map: read", peek(R) as i64, tag(data[1]) as i64);
    poke(R, 0x55);
    c.eq(
        "re-map: written through",
        peek(mem::pfn_to_va(data[1])) as i64,
        0x55,
    );
    c.finish();
}
