//! Builds a new address space: fresh L1..L4 filled through mmu_update, pinned, switched
//! to with NEW_BASEPTR and back, unpinned, and the frames reused as ordinary memory.
#![no_std]
#![no_main]

use rt::abi::mmu::{MMUEXT_NEW_BASEPTR, MMUEXT_PIN_L4_TABLE, MMUEXT_UNPIN_TABLE};
use rt::abi::{MmuUpdate, StartInfo};
use rt::{mem, peek, poke};
use suite::{A, Check, Frames, P, RW, SELF};

/// VA of the new subtree: L4 slot 1 (512 GiB).
const R: u64 = 1 << 39;

#[unsafe(no_mangle)]
pub fn guest_main(si: &'static StartInfo) {
    let mut c = Check::new();
    let mut frames = Frames::new();
    let tables: [u64; 4] = core::array::from_fn(|_| suite::table_frame(&mut frames));
    let [l4, l3, l2, l1] = tables;
    let data: [u64; 8] = core::array::from_fn(|_| frames.take());
    for &f in &data {
        poke(mem::pfn_to_va(f), 0xa5a5_0000 | f);
    }
    // Fill the new tables: they are not page tables yet, so these are plain writes.
    let mut reqs = [MmuUpdate::default(); 12];
    for (i, &f) in data.iter().enumerate() {
        reqs[i] = MmuUpdate {
            ptr: (l1 << 12) + i as u64 * 8,
            val: (f << 12) | P | RW | A,
        };
    }
    reqs[8] = MmuUpdate {
        ptr: l2 << 12,
        val: (l1 << 12) | P | RW | A,
    };
    reqs[9] = MmuUpdate {
        ptr: l3 << 12,
        val: (l2 << 12) | P | RW | A,
    };
    reqs[10] = MmuUpdate {
        ptr: (l4 << 12) + 8,
        val: (l3 << 12) | P | RW | A,
    };
    // The kernel: share the builder's L3 in slot 0.
    reqs[11] = MmuUpdate {
        ptr: l4 << 12,
        val: peek(si.pt_base),
    };
    c.update("fill", &reqs, SELF, 0, 12);
    c.eq(
        "pin the new L4 (validates L3, L2, L1)",
        rt::mmuext(MMUEXT_PIN_L4_TABLE, l4, 0),
        0,
    );
    c.eq("switch to it", rt::mmuext(MMUEXT_NEW_BASEPTR, l4, 0), 0);
    for (i, &f) in data.iter().enumerate() {
        c.eq(
            "read through the new address space",
            peek(R + i as u64 * 4096) as i64,
            (0xa5a5_0000 | f) as i64,
        );
    }
    poke(R, 0x1111);
    c.eq(
        "write through it",
        peek(mem::pfn_to_va(data[0])) as i64,
        0x1111,
    );
    c.eq(
        "switch back",
        rt::mmuext(MMUEXT_NEW_BASEPTR, suite::builder_l4(), 0),
        0,
    );
    c.eq("unpin", rt::mmuext(MMUEXT_UNPIN_TABLE, l4, 0), 0);
    // Unpinned and unused: the tables are ordinary memory again.
    for &t in &tables {
        let writable = MmuUpdate {
            ptr: suite::l1e_addr(mem::pfn_to_va(t)),
            val: (t << 12) | P | RW | A,
        };
        c.update("map a former table writable", &[writable], SELF, 0, 1);
    }
    c.eq(
        "flush",
        rt::mmuext(rt::abi::mmu::MMUEXT_TLB_FLUSH_LOCAL, 0, 0),
        0,
    );
    for &t in &tables {
        poke(mem::pfn_to_va(t) + 8, 0x2222 + t);
        c.eq(
            "reuse as memory",
            peek(mem::pfn_to_va(t) + 8) as i64,
            (0x2222 + t) as i64,
        );
    }
    // And one of them can become a table again once it is read-only.
    c.update("read-only again", &[suite::make_readonly(l1)], SELF, 0, 1);
    suite::zero_ro(l1);
    c.eq(
        "re-pin as L1",
        rt::mmuext(rt::abi::mmu::MMUEXT_PIN_L1_TABLE, l1, 0),
        0,
    );
    c.eq("unpin", rt::mmuext(MMUEXT_UNPIN_TABLE, l1, 0), 0);
    c.finish();
}
