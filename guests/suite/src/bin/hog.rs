//! Issues one enormous multicall (16.7 million null entries, a 4 KiB list mapped over
//! and over through one L1 table referenced by a whole L2): the VMM must still stop it
//! promptly on SIGINT.
#![no_std]
#![no_main]

use rt::abi::hypercall::{HYPERVISOR_multicall, HYPERVISOR_xen_version};
use rt::abi::{MmuUpdate, MulticallEntry, StartInfo};
use rt::{mem, poke};
use suite::{A, Frames, P, RW, SELF};

/// The list appears at 2 GiB (L3 slot 2), 1 GiB long.
const LIST_VA: u64 = 2 << 30;

#[unsafe(no_mangle)]
pub fn guest_main(_si: &'static StartInfo) {
    let mut frames = Frames::new();
    let list = frames.take();
    let entry = MulticallEntry {
        op: HYPERVISOR_xen_version,
        result: 0,
        args: [0; 6],
    };
    for i in 0..64u64 {
        for (k, b) in entry.to_bytes().chunks(8).enumerate() {
            let mut w = [0u8; 8];
            w.copy_from_slice(b);
            poke(
                mem::pfn_to_va(list) + i * 64 + k as u64 * 8,
                u64::from_le_bytes(w),
            );
        }
    }
    let l1 = suite::table_frame(&mut frames);
    let l2 = suite::table_frame(&mut frames);
    let mut reqs = [MmuUpdate::default(); 512];
    for (i, r) in reqs.iter_mut().enumerate() {
        *r = MmuUpdate {
            ptr: (l1 << 12) + i as u64 * 8,
            val: (mem::pfn_to_mfn(list) << 12) | P | RW | A,
        };
    }
    assert_ok(rt::mmu_update(&reqs, SELF).0);
    for (i, r) in reqs.iter_mut().enumerate() {
        *r = MmuUpdate {
            ptr: (l2 << 12) + i as u64 * 8,
            val: (l1 << 12) | P | RW | A,
        };
    }
    assert_ok(rt::mmu_update(&reqs, SELF).0);
    let l3 = suite::builder_l3();
    assert_ok(
        rt::mmu_update(
            &[MmuUpdate {
                ptr: (l3 << 12) + 2 * 8,
                val: (l2 << 12) | P | RW | A,
            }],
            SELF,
        )
        .0,
    );
    rt::println!("hog: one multicall of {} entries", 512u64 * 512 * 64);
    // SAFETY: the list is mapped read-write over the whole range at LIST_VA; the
    // hypervisor only reads entries and writes their results there.
    let rc = unsafe { rt::hypercall(HYPERVISOR_multicall, LIST_VA, 512 * 512 * 64, 0, 0, 0) };
    rt::println!("hog: multicall returned {rc}");
    rt::finish(Some("the multicall was not stopped"));
}

fn assert_ok(rc: i64) {
    if rc != 0 {
        rt::println!("hog: setup rc {rc}");
        rt::finish(Some("setup"));
    }
}
