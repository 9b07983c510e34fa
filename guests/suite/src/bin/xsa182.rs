//! XSA-182: the same-frame fast path of mod_lN_entry may only accept changes to the
//! whitelisted bits (NX, AVAIL, G, D, A, US). Adding RW with the same frame must take the
//! full path and be refused:
//! (a) an L1 entry mapping one of the guest's own page-table frames read-only, with RW
//!     added: -EBUSY (a live page table can't get a writable mapping);
//! (b) a read-only linear (self-referencing) entry at L4, L3 and L2, with RW added:
//!     -EINVAL (a linear entry must be read-only).
//! Every refused update leaves the entry unchanged; whitelisted changes on the same
//! entries are accepted through the fast path.
#![no_std]
#![no_main]

use rt::abi::mmu::{MMU_PT_UPDATE_PRESERVE_AD, MMUEXT_TLB_FLUSH_LOCAL, UVMF_INVLPG};
use rt::abi::{Errno, MmuUpdate, StartInfo};
use rt::{mem, peek, poke};
use suite::{A, Check, Frames, P, RW, SELF, err};

const US: u64 = 1 << 2;
const AVAIL9: u64 = 1 << 9;
const GUEST_KERNEL: u64 = 1 << 52;
const ADDR: u64 = 0x000f_ffff_ffff_f000;
const L3_SLOT: u64 = 1;
const R: u64 = L3_SLOT << 30;

/// Sign-extends a 48-bit VA.
fn canon(va: u64) -> u64 {
    if va & (1 << 47) != 0 {
        va | 0xffff_0000_0000_0000
    } else {
        va
    }
}

/// (a) for the page-table frame `pt`: its identity L1 entry is read-only; adding RW with
/// the same frame must be -EBUSY in every form.
fn ro_pt_mapping(c: &mut Check, pt: u64) {
    let va = mem::pfn_to_va(pt);
    let ptr = suite::l1e_addr(va);
    let cur = peek(ptr);
    c.eq(
        "PT frame mapped read-only (adjusted value)",
        cur as i64,
        ((pt << 12) | P | A | US | GUEST_KERNEL) as i64,
    );
    let tries = [
        MmuUpdate { ptr, val: cur | RW },
        MmuUpdate {
            ptr,
            val: (pt << 12) | P | RW | A,
        },
        MmuUpdate {
            ptr,
            val: cur | RW | (1 << 6),
        },
        MmuUpdate {
            ptr: ptr | MMU_PT_UPDATE_PRESERVE_AD,
            val: cur | RW,
        },
    ];
    for t in tries {
        c.update(
            "RW on a read-only PT-frame mapping",
            &[t],
            SELF,
            err(Errno::EBUSY),
            0,
        );
        c.eq("PT-frame mapping unchanged", peek(ptr) as i64, cur as i64);
    }
    c.eq(
        "update_va_mapping: RW on a PT-frame mapping",
        rt::update_va_mapping(va, cur | RW, UVMF_INVLPG),
        err(Errno::EBUSY),
    );
    c.eq(
        "PT-frame mapping unchanged (uvm)",
        peek(ptr) as i64,
        cur as i64,
    );
    // The same entry with only a whitelisted bit changed: the fast path accepts it.
    c.update(
        "whitelisted change on a PT-frame mapping",
        &[MmuUpdate {
            ptr,
            val: cur | AVAIL9,
        }],
        SELF,
        0,
        1,
    );
    c.eq(
        "whitelisted change stored",
        peek(ptr) as i64,
        (cur | AVAIL9) as i64,
    );
    c.update(
        "whitelisted change reverted",
        &[MmuUpdate { ptr, val: cur }],
        SELF,
        0,
        1,
    );
    c.eq("entry back to its value", peek(ptr) as i64, cur as i64);
}

/// (b) a read-only self-referencing entry in slot `slot` of the table `table` (an Ln,
/// n >= 2, readable at its identity VA): installed ok; RW with the same frame refused
/// with -EINVAL; a whitelisted change accepted. `linear_va` reads the table's own entry
/// `slot` through the new linear mapping. Leaves the entry installed.
fn linear_entry(c: &mut Check, table: u64, slot: u64, want_extra: u64, linear_va: u64) {
    let ptr = (table << 12) + slot * 8;
    c.eq("free slot for the linear entry", peek(ptr) as i64, 0);
    // A writable linear entry is refused outright.
    c.update(
        "new RW linear entry",
        &[MmuUpdate {
            ptr,
            val: (table << 12) | P | RW | A,
        }],
        SELF,
        err(Errno::EINVAL),
        0,
    );
    c.eq("slot still empty", peek(ptr) as i64, 0);
    c.update(
        "read-only linear entry",
        &[MmuUpdate {
            ptr,
            val: (table << 12) | P | A,
        }],
        SELF,
        0,
        1,
    );
    let cur = peek(ptr);
    c.eq(
        "linear entry stored (adjusted)",
        cur as i64,
        ((table << 12) | P | A | want_extra) as i64,
    );
    let tries = [
        MmuUpdate { ptr, val: cur | RW },
        MmuUpdate {
            ptr,
            val: (table << 12) | P | RW | A,
        },
        MmuUpdate {
            ptr,
            val: cur | RW | (1 << 6),
        },
        MmuUpdate {
            ptr: ptr | MMU_PT_UPDATE_PRESERVE_AD,
            val: cur | RW,
        },
    ];
    for t in tries {
        c.update(
            "RW flip on a read-only linear entry",
            &[t],
            SELF,
            err(Errno::EINVAL),
            0,
        );
        c.eq("linear entry unchanged", peek(ptr) as i64, cur as i64);
    }
    // Batch: a whitelisted change, then the RW flip: done 1, only the first applied.
    let batch = [
        MmuUpdate {
            ptr,
            val: cur | AVAIL9,
        },
        MmuUpdate {
            ptr,
            val: cur | AVAIL9 | RW,
        },
    ];
    c.update(
        "batch: whitelisted change then RW flip",
        &batch,
        SELF,
        err(Errno::EINVAL),
        1,
    );
    c.eq(
        "only the whitelisted change applied",
        peek(ptr) as i64,
        (cur | AVAIL9) as i64,
    );
    c.update(
        "whitelisted change reverted",
        &[MmuUpdate { ptr, val: cur }],
        SELF,
        0,
        1,
    );
    c.eq(
        "linear entry back to its value",
        peek(ptr) as i64,
        cur as i64,
    );
    c.eq("flush", rt::mmuext(MMUEXT_TLB_FLUSH_LOCAL, 0, 0), 0);
    c.eq(
        "the table reads itself through the linear mapping",
        peek(linear_va) as i64,
        cur as i64,
    );
}

#[unsafe(no_mangle)]
pub fn guest_main(si: &'static StartInfo) {
    let mut c = Check::new();
    let mut frames = Frames::new();

    // A range of our own, so that our own L2 and L1 are page tables too.
    let (l2, l1) = (frames.take(), frames.take());
    let data: [u64; 4] = core::array::from_fn(|_| frames.take());
    for &d in &data {
        poke(mem::pfn_to_va(d), 0x1820_0000 | d);
    }
    suite::map_range(l2, l1, L3_SLOT, &data);

    // (a) every builder page-table frame (L4, L3, L2, L1s) and our own L2 and L1.
    let first_pt = si.pt_base >> 12;
    rt::println!(
        "xsa182: builder page tables {:#x}..{:#x}, own L2 {:#x} L1 {:#x}",
        first_pt,
        first_pt + si.nr_pt_frames,
        l2,
        l1
    );
    for pt in first_pt..first_pt + si.nr_pt_frames {
        ro_pt_mapping(&mut c, pt);
    }
    ro_pt_mapping(&mut c, l2);
    ro_pt_mapping(&mut c, l1);
    c.eq("flush", rt::mmuext(MMUEXT_TLB_FLUSH_LOCAL, 0, 0), 0);
    for (i, &d) in data.iter().enumerate() {
        c.eq(
            "own range still readable",
            peek(R + i as u64 * 4096) as i64,
            (0x1820_0000 | d) as i64,
        );
    }

    // (b) L4: slot 300 of the current L4 points at the L4 itself.
    let l4 = suite::builder_l4();
    let s4 = 300u64;
    let l4_self = canon((s4 << 39) | (s4 << 30) | (s4 << 21) | (s4 << 12));
    linear_entry(&mut c, l4, s4, US, l4_self + s4 * 8);
    c.eq(
        "L4 slot 0 through the linear mapping",
        peek(l4_self) as i64,
        peek(si.pt_base) as i64,
    );
    // L3: slot 400 of the builder's L3 points at that L3.
    let l3 = suite::builder_l3();
    let s3 = 400u64;
    let l3_self = (s3 << 30) | (s3 << 21) | (s3 << 12);
    linear_entry(&mut c, l3, s3, US, l3_self + s3 * 8);
    // L2: slot 300 of the builder's L2 points at that L2.
    let bl2 = (peek(mem::pfn_to_va(l3)) & ADDR) >> 12;
    let s2 = 300u64;
    let l2_self = (s2 << 21) | (s2 << 12);
    linear_entry(&mut c, bl2, s2, US, l2_self + s2 * 8);
    // Through the L2's linear mapping, page 0 is the builder's first L1.
    let bl1 = (peek(mem::pfn_to_va(bl2)) & ADDR) >> 12;
    c.eq(
        "first L1 through the L2 linear mapping",
        peek(s2 << 21) as i64,
        peek(mem::pfn_to_va(bl1)) as i64,
    );

    // Clean up: remove the three linear entries and the range.
    let clear = [
        MmuUpdate {
            ptr: (l4 << 12) + s4 * 8,
            val: 0,
        },
        MmuUpdate {
            ptr: (l3 << 12) + s3 * 8,
            val: 0,
        },
        MmuUpdate {
            ptr: (bl2 << 12) + s2 * 8,
            val: 0,
        },
        MmuUpdate {
            ptr: (l3 << 12) + L3_SLOT * 8,
            val: 0,
        },
    ];
    c.update(
        "remove the linear entries and the range",
        &clear,
        SELF,
        0,
        clear.len() as u32,
    );
    for r in clear {
        c.eq("entry removed", peek(r.ptr) as i64, 0);
    }
    c.finish();
}
