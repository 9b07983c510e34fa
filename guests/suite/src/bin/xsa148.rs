//! XSA-148: setting PSE (bit 7) on an existing, present L2 entry with the same frame
//! looks like a cheap flag change, but PSE changes the translation (a 2 MiB superpage over
//! arbitrary frames): it must go through full validation and be refused with -EINVAL
//! (PSE is disallowed at L2 for 64-bit PV), leaving the entry as it was.
//!
//! Tried on the builder's L2 (which maps the running kernel) and on an L2 built here, with
//! PSE alone, PSE with the stored (adjusted) value, PSE without RW, through
//! `MMU_PT_UPDATE_PRESERVE_AD`, and once more as PSE on an L3 entry (1 GiB pages).
#![no_std]
#![no_main]

use rt::abi::mmu::{MMU_PT_UPDATE_PRESERVE_AD, MMUEXT_TLB_FLUSH_LOCAL};
use rt::abi::{Errno, MmuUpdate, StartInfo};
use rt::{mem, peek, poke};
use suite::{A, Check, Frames, P, RW, SELF, err};

const PSE: u64 = 1 << 7;
const US: u64 = 1 << 2;
const ADDR: u64 = 0x000f_ffff_ffff_f000;
/// Where the range built here lives: L3 slot 1 (1 GiB).
const L3_SLOT: u64 = 1;
const R: u64 = L3_SLOT << 30;
const PAGES: usize = 8;

fn tag(pfn: u64) -> u64 {
    0x7873_6131_3438_0000 | pfn
}

/// Tries each PSE variant of the present L2/L3 entry at machine address `ptr` (readable
/// at the same VA: the table is identity mapped read-only) and checks it is unchanged.
fn refuse_pse(c: &mut Check, ptr: u64) {
    let before = peek(ptr);
    c.ok("entry under test is present", before & P != 0);
    let frame = before & ADDR;
    let tries = [
        // Only PSE added to the value as stored.
        MmuUpdate {
            ptr,
            val: before | PSE,
        },
        // PSE with the minimal flags the guest would write (Xen adds US itself).
        MmuUpdate {
            ptr,
            val: frame | P | RW | A | PSE,
        },
        // PSE and read-only.
        MmuUpdate {
            ptr,
            val: (before & !RW) | PSE,
        },
        // PSE through PRESERVE_AD.
        MmuUpdate {
            ptr: ptr | MMU_PT_UPDATE_PRESERVE_AD,
            val: before | PSE,
        },
    ];
    for t in tries {
        c.update("PSE on a present entry", &[t], SELF, err(Errno::EINVAL), 0);
        c.eq(
            "entry unchanged after the PSE attempt",
            peek(ptr) as i64,
            before as i64,
        );
    }
    // A batch with a valid same-value rewrite first: done must stop at the PSE entry.
    let batch = [
        MmuUpdate { ptr, val: before },
        MmuUpdate {
            ptr,
            val: before | PSE,
        },
    ];
    c.update(
        "batch: rewrite then PSE",
        &batch,
        SELF,
        err(Errno::EINVAL),
        1,
    );
    c.eq(
        "entry unchanged after the batch",
        peek(ptr) as i64,
        before as i64,
    );
}

#[unsafe(no_mangle)]
pub fn guest_main(_si: &'static StartInfo) {
    let mut c = Check::new();
    let mut frames = Frames::new();

    // 1. The builder's L2 entry 0 (maps VA 0..2 MiB, the kernel's own code).
    let l3 = suite::builder_l3();
    let l2 = (peek(mem::pfn_to_va(l3)) & ADDR) >> 12;
    let l2e0 = mem::pfn_to_va(l2);
    rt::println!("xsa148: builder L2 {:#x}, entry 0 = {:#x}", l2, peek(l2e0));
    c.eq(
        "builder L2 entry 0 has no PSE",
        (peek(l2e0) & PSE) as i64,
        0,
    );
    refuse_pse(&mut c, l2e0);

    // 2. An L2 built here, whose entry 0 points at an L1 mapping tagged frames.
    let (nl2, nl1) = (frames.take(), frames.take());
    let data: [u64; PAGES] = core::array::from_fn(|_| frames.take());
    for &d in &data {
        poke(mem::pfn_to_va(d), tag(d));
    }
    let l1_mfn = suite::map_range(nl2, nl1, L3_SLOT, &data);
    let own = mem::pfn_to_va(nl2);
    c.eq(
        "own L2 entry 0 points at the L1",
        ((peek(own) & ADDR) >> 12) as i64,
        l1_mfn as i64,
    );
    c.eq(
        "own L2 entry 0 adjusted (US added)",
        (peek(own) & !ADDR) as i64,
        (P | RW | A | US) as i64,
    );
    refuse_pse(&mut c, own);
    c.eq("flush", rt::mmuext(MMUEXT_TLB_FLUSH_LOCAL, 0, 0), 0);
    for (i, &d) in data.iter().enumerate() {
        c.eq(
            "range still reads its frames",
            peek(R + i as u64 * 4096) as i64,
            tag(d) as i64,
        );
    }
    // A new L2 entry with PSE (not present before) is refused too.
    let free = own + 8;
    c.eq("own L2 entry 1 empty", peek(free) as i64, 0);
    c.update(
        "PSE on a new L2 entry",
        &[MmuUpdate {
            ptr: free,
            val: (data[0] << 12) | P | A | PSE,
        }],
        SELF,
        err(Errno::EINVAL),
        0,
    );
    c.eq("own L2 entry 1 still empty", peek(free) as i64, 0);

    // 3. PSE on the builder's L3 entry for our range (1 GiB page).
    let l3e = mem::pfn_to_va(l3) + L3_SLOT * 8;
    refuse_pse(&mut c, l3e);

    // Clean up: unhook the range built here.
    c.update(
        "unhook the range",
        &[MmuUpdate { ptr: l3e, val: 0 }],
        SELF,
        0,
        1,
    );
    c.eq("L3 entry cleared", peek(l3e) as i64, 0);
    c.finish();
}
