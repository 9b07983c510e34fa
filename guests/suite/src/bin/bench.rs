//! The `pvmmu bench` guest: rounds of null hypercalls (the exit cost), then rounds of
//! mmu_update batches of 1, 8, 64 and 512 validated L1 remaps, then rounds of an
//! exception (`ud2`) delivered to the guest's handler and returned from with `iret`.
#![no_std]
#![no_main]

use rt::abi::{DOMID_SELF, MmuUpdate, StartInfo};
use suite::{A, Frames, P, RW};

/// Rounds per batch size (the VMM times them).
const ROUNDS: u64 = 40;

#[unsafe(no_mangle)]
pub fn guest_main(_si: &'static StartInfo) {
    let mut frames = Frames::new();
    let (l2, l1) = (frames.take(), frames.take());
    let data: [u64; 512] = core::array::from_fn(|_| frames.take());
    let alt: [u64; 512] = core::array::from_fn(|_| frames.take());
    let l1 = suite::map_range(l2, l1, 1, &data);
    for _ in 0..ROUNDS {
        rt::xen_version(0, 0);
    }
    let mut reqs = [MmuUpdate::default(); 512];
    for size in [1usize, 8, 64, 512] {
        for round in 0..ROUNDS {
            let set = if round % 2 == 0 { &alt } else { &data };
            for (i, r) in reqs.iter_mut().enumerate().take(size) {
                *r = MmuUpdate {
                    ptr: (l1 << 12) + i as u64 * 8,
                    val: (rt::mem::pfn_to_mfn(set[i]) << 12) | P | RW | A,
                };
            }
            let (rc, done) = rt::mmu_update(&reqs[..size], u32::from(DOMID_SELF));
            if rc != 0 || done as usize != size {
                rt::println!("bench: batch of {size}: rc {rc} done {done}");
                rt::finish(Some("bench batch"));
            }
        }
    }
    if suite::traps::install() != 0 {
        rt::finish(Some("bench: set_trap_table"));
    }
    suite::traps::SKIP.store(2, core::sync::atomic::Ordering::SeqCst);
    for _ in 0..ROUNDS {
        // SAFETY: the #UD handler moves RIP past the two-byte ud2 and returns.
        unsafe { core::arch::asm!("ud2") };
    }
    if suite::traps::COUNT.load(core::sync::atomic::Ordering::SeqCst) != ROUNDS {
        rt::finish(Some("bench: exceptions lost"));
    }
    rt::finish(None);
}
