//! XSA-286: after an L2 (or L3/L4) entry changes, the hypervisor's own accesses through
//! the guest's linear page tables must not use stale translations. A range R is mapped
//! through an L2 entry pointing at L1 table X; ONE mmu_update re-points that L2 entry at
//! L1 table Y (mapping other frames); an update_va_mapping of R + page issued right
//! after, without any explicit flush, must land in Y, not in X. Then the same back to X,
//! and once more one level up (the L3 entry re-pointed at another L2).
#![no_std]
#![no_main]

use rt::abi::mmu::{MMUEXT_TLB_FLUSH_LOCAL, UVMF_NONE};
use rt::abi::{MmuUpdate, StartInfo};
use rt::{mem, peek, poke};
use suite::{A, Check, Frames, P, RW, SELF};

const L3_SLOT: u64 = 1;
const R: u64 = L3_SLOT << 30;
const PAGES: usize = 16;
const US: u64 = 1 << 2;
const GUEST_KERNEL: u64 = 1 << 52;

fn tag(pfn: u64) -> u64 {
    0x7873_6132_3836_0000 | pfn
}

/// A kernel RW mapping of `pfn` as the guest writes it.
fn map(pfn: u64) -> u64 {
    (pfn << 12) | P | RW | A
}

/// The same, as Xen stores it.
fn stored(pfn: u64) -> u64 {
    map(pfn) | US | GUEST_KERNEL
}

/// Entry `i` of the table `t` (read-only identity mapped).
fn entry(t: u64, i: usize) -> u64 {
    peek(mem::pfn_to_va(t) + i as u64 * 8)
}

/// Reads every page of R and checks it shows the frames of `want`, except page `skip`
/// (which must show `skip_frame`).
fn check_range(
    c: &mut Check,
    what: &'static str,
    want: &[u64; PAGES],
    skip: usize,
    skip_frame: u64,
) {
    for (i, &f) in want.iter().enumerate() {
        let f = if i == skip { skip_frame } else { f };
        c.eq(what, peek(R + i as u64 * 4096) as i64, tag(f) as i64);
    }
}

#[unsafe(no_mangle)]
pub fn guest_main(_si: &'static StartInfo) {
    let mut c = Check::new();
    let mut frames = Frames::new();
    let (l2, x) = (frames.take(), frames.take());
    let y = frames.take();
    let l2b = frames.take();
    let dx: [u64; PAGES] = core::array::from_fn(|_| frames.take());
    let dy: [u64; PAGES] = core::array::from_fn(|_| frames.take());
    let fresh: [u64; 3] = core::array::from_fn(|_| frames.take());
    for &d in dx.iter().chain(dy.iter()).chain(fresh.iter()) {
        poke(mem::pfn_to_va(d), tag(d));
    }
    suite::map_range(l2, x, L3_SLOT, &dx);
    // Y: an L1 mapping the dy frames, written while it is still an ordinary page, then
    // made read-only (it becomes an L1 when the L2 entry points at it).
    suite::zero(y);
    for (i, &d) in dy.iter().enumerate() {
        poke(mem::pfn_to_va(y) + i as u64 * 8, map(d));
    }
    // L2b: an L2 whose entry 0 points at Y.
    suite::zero(l2b);
    poke(mem::pfn_to_va(l2b), (y << 12) | P | RW | A);
    c.update(
        "make Y and L2b read-only",
        &[suite::make_readonly(y), suite::make_readonly(l2b)],
        SELF,
        0,
        2,
    );
    rt::println!("xsa286: L2 {l2:#x}, L1 X {x:#x}, L1 Y {y:#x}, L2b {l2b:#x}");

    // Load the TLB with translations through X.
    check_range(&mut c, "R reads X's frames", &dx, PAGES, 0);

    // 1. ONE mmu_update re-points the L2 entry at Y; update_va_mapping right after.
    let l2e = MmuUpdate {
        ptr: l2 << 12,
        val: (y << 12) | P | RW | A,
    };
    c.update("L2 entry: X -> Y", &[l2e], SELF, 0, 1);
    c.eq(
        "uvm(R + page 1) right after",
        rt::update_va_mapping(R + 4096, map(fresh[0]), UVMF_NONE),
        0,
    );
    // The L2 change flushed before returning: page 2, read before, now shows Y's frame.
    c.eq(
        "R + page 2 after the L2 change (no explicit flush)",
        peek(R + 2 * 4096) as i64,
        tag(dy[2]) as i64,
    );
    c.eq("flush", rt::mmuext(MMUEXT_TLB_FLUSH_LOCAL, 0, 0), 0);
    c.eq(
        "Y[1] got the update",
        entry(y, 1) as i64,
        stored(fresh[0]) as i64,
    );
    c.eq("X[1] untouched", entry(x, 1) as i64, stored(dx[1]) as i64);
    for i in 0..PAGES {
        if i != 1 {
            c.eq(
                "Y's other entries as written",
                entry(y, i) as i64,
                stored(dy[i]) as i64,
            );
        }
        c.eq(
            "X's entries untouched",
            entry(x, i) as i64,
            stored(dx[i]) as i64,
        );
    }
    check_range(
        &mut c,
        "R reads Y's frames, page 1 the new one",
        &dy,
        1,
        fresh[0],
    );

    // 2. Back to X with one mmu_update; update_va_mapping of page 3 lands in X.
    c.update(
        "L2 entry: Y -> X",
        &[MmuUpdate {
            ptr: l2 << 12,
            val: (x << 12) | P | RW | A,
        }],
        SELF,
        0,
        1,
    );
    c.eq(
        "uvm(R + page 3) right after",
        rt::update_va_mapping(R + 3 * 4096, map(fresh[1]), UVMF_NONE),
        0,
    );
    c.eq(
        "R + page 1 after the L2 change (no explicit flush)",
        peek(R + 4096) as i64,
        tag(dx[1]) as i64,
    );
    c.eq("flush", rt::mmuext(MMUEXT_TLB_FLUSH_LOCAL, 0, 0), 0);
    c.eq(
        "X[3] got the update",
        entry(x, 3) as i64,
        stored(fresh[1]) as i64,
    );
    c.eq("Y[3] untouched", entry(y, 3) as i64, stored(dy[3]) as i64);
    c.eq(
        "Y[1] keeps the earlier update",
        entry(y, 1) as i64,
        stored(fresh[0]) as i64,
    );
    check_range(
        &mut c,
        "R reads X's frames, page 3 the new one",
        &dx,
        3,
        fresh[1],
    );

    // 3. One level up: the L3 entry re-pointed from L2 (-> X) to L2b (-> Y).
    let l3e = (suite::builder_l3() << 12) + L3_SLOT * 8;
    c.update(
        "L3 entry: L2 -> L2b",
        &[MmuUpdate {
            ptr: l3e,
            val: (l2b << 12) | P | RW | A,
        }],
        SELF,
        0,
        1,
    );
    c.eq(
        "uvm(R + page 5) right after",
        rt::update_va_mapping(R + 5 * 4096, map(fresh[2]), UVMF_NONE),
        0,
    );
    c.eq(
        "R + page 3 after the L3 change (no explicit flush)",
        peek(R + 3 * 4096) as i64,
        tag(dy[3]) as i64,
    );
    c.eq("flush", rt::mmuext(MMUEXT_TLB_FLUSH_LOCAL, 0, 0), 0);
    c.eq(
        "Y[5] got the update",
        entry(y, 5) as i64,
        stored(fresh[2]) as i64,
    );
    c.eq("X[5] untouched", entry(x, 5) as i64, stored(dx[5]) as i64);
    for (i, &d) in dy.iter().enumerate() {
        let want = match i {
            1 => tag(fresh[0]),
            5 => tag(fresh[2]),
            _ => tag(d),
        };
        c.eq(
            "R reads Y's frames through L2b",
            peek(R + i as u64 * 4096) as i64,
            want as i64,
        );
    }

    // Clean up.
    c.update(
        "unhook the range",
        &[MmuUpdate { ptr: l3e, val: 0 }],
        SELF,
        0,
        1,
    );
    c.eq("L3 entry removed", peek(l3e) as i64, 0);
    c.finish();
}
