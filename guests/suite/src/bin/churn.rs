//! Non-leaf churn: L2 and L3 entries hooked in, replaced and removed over and over with
//! mmu_update, each change read through at once. Xen flushes paging-structure changes
//! before `mmu_update` returns (XSA-286), so no guest flush is needed: every read after
//! a replace must see the new subtree's frames, never the old one's.
#![no_std]
#![no_main]

use rt::abi::{MmuUpdate, StartInfo};
use rt::{mem, peek, poke};
use suite::{A, Check, Frames, P, RW, SELF, make_readonly, zero};

/// VA of L3 slot 1.
const R: u64 = 1 << 30;
/// Pages each L1 maps.
const N: usize = 8;
/// Rounds of churn.
const ROUNDS: usize = 150;

fn tag(pfn: u64) -> u64 {
    0xc4a2_0000_0000 | pfn
}

/// A zeroed frame holding `entries` from slot 0, then made read-only so that it can
/// become a table: its pfn (== mfn).
fn table(frames: &mut Frames, entries: &[u64]) -> u64 {
    let f = frames.take();
    zero(f);
    for (i, e) in entries.iter().enumerate() {
        poke(mem::pfn_to_va(f) + i as u64 * 8, *e);
    }
    if rt::mmu_update(&[make_readonly(f)], SELF).0 != 0 {
        rt::finish(Some("making a table frame read-only"));
    }
    f
}

fn pte(pfn: u64) -> u64 {
    (mem::pfn_to_mfn(pfn) << 12) | P | RW | A
}

/// Reads the N pages through R and checks they are `want`'s.
fn reads(c: &mut Check, what: &'static str, want: &[u64; N]) {
    for (i, &f) in want.iter().enumerate() {
        c.eq(what, peek(R + i as u64 * 4096) as i64, tag(f) as i64);
    }
}

#[unsafe(no_mangle)]
pub fn guest_main(si: &'static StartInfo) {
    let mut c = Check::new();
    let mut frames = Frames::new();
    let a: [u64; N] = core::array::from_fn(|_| frames.take());
    let b: [u64; N] = core::array::from_fn(|_| frames.take());
    for &f in a.iter().chain(b.iter()) {
        poke(mem::pfn_to_va(f), tag(f));
    }
    // Two L1s (A's pages, B's pages) and two L2s (entry 0 -> L1 A, entry 0 -> L1 B).
    let l1a = table(&mut frames, &a.map(pte));
    let l1b = table(&mut frames, &b.map(pte));
    let l2a = table(&mut frames, &[pte(l1a)]);
    let l2b = table(&mut frames, &[pte(l1b)]);
    let l3 = peek(si.pt_base) & 0x000f_ffff_ffff_f000;
    let l3_slot = l3 + 8;
    let l2_slot = mem::pfn_to_mfn(l2a) << 12;
    let set = |ptr: u64, val: u64| [MmuUpdate { ptr, val }];
    // Hook-in: L3 slot 1 -> L2 A (validating L2 A and L1 A).
    c.update("hook in L2 A", &set(l3_slot, pte(l2a)), SELF, 0, 1);
    reads(&mut c, "after hook-in: A", &a);
    for round in 0..ROUNDS {
        // An L2 entry replaced (L1 A -> L1 B) and back.
        c.update("L2 entry -> L1 B", &set(l2_slot, pte(l1b)), SELF, 0, 1);
        reads(&mut c, "after the L2 replace: B", &b);
        c.update("L2 entry -> L1 A", &set(l2_slot, pte(l1a)), SELF, 0, 1);
        reads(&mut c, "after the L2 replace back: A", &a);
        // Removed (L1 A de-validated: nothing else holds it) and hooked in again.
        c.update("L2 entry removed", &set(l2_slot, 0), SELF, 0, 1);
        c.eq(
            "removed: entry reads 0",
            peek(mem::pfn_to_va(l2a)) as i64,
            0,
        );
        c.update(
            "L2 entry hooked in again",
            &set(l2_slot, pte(l1a)),
            SELF,
            0,
            1,
        );
        reads(&mut c, "after the re-hook: A", &a);
        // Every few rounds, the L3 entry replaced (L2 A -> L2 B) and back.
        if round % 10 == 0 {
            c.update("L3 entry -> L2 B", &set(l3_slot, pte(l2b)), SELF, 0, 1);
            reads(&mut c, "after the L3 replace: B", &b);
            c.update("L3 entry -> L2 A", &set(l3_slot, pte(l2a)), SELF, 0, 1);
            reads(&mut c, "after the L3 replace back: A", &a);
        }
    }
    // Unhook everything; the frames are writable data again.
    c.update("unhook", &set(l3_slot, 0), SELF, 0, 1);
    c.finish();
}
