//! The `pvmmu bench` guest: rounds of null hypercalls (the exit cost), then rounds of
//! mmu_update batches of 1, 8, 64 and 512 validated L1 remaps, then rounds of an
//! exception (`ud2`) delivered to the guest's handler and returned from with `iret`.
//! With `probe=ADDR` on its command line it also times, with its own TSC, a null
//! hypercall, a call of the hypervisor's ring-0 probe at ADDR (an `int3` whose exception
//! returns from ring 0 at once, no exit) and the exception round trip, and prints
//! `bench-ticks exit=E probe=P bounce=B` (medians).
#![no_std]
#![no_main]

use rt::abi::{DOMID_SELF, MmuUpdate, StartInfo};
use suite::{A, Frames, P, RW};

/// Rounds per batch size (the VMM times them).
const ROUNDS: u64 = 40;

#[unsafe(no_mangle)]
pub fn guest_main(si: &'static StartInfo) {
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
    if let Some(probe) = probe_address(si) {
        let exit = median_ticks(|| {
            rt::xen_version(0, 0);
        });
        // SAFETY: the probe is `int3; ret` in the hypervisor's user-executable page; the
        // call clobbers nothing else.
        let probe = median_ticks(|| unsafe { core::arch::asm!("call {p}", p = in(reg) probe) });
        // SAFETY: as above, the handler skips the ud2.
        let bounce = median_ticks(|| unsafe { core::arch::asm!("ud2") });
        rt::println!("bench-ticks exit={exit} probe={probe} bounce={bounce}");
    }
    rt::finish(None);
}

/// The `probe=ADDR` (hex, `0x` prefixed) of the command line.
fn probe_address(si: &StartInfo) -> Option<u64> {
    let line = core::str::from_utf8(si.cmd_line_bytes()).ok()?;
    let hex = line.split(' ').find_map(|w| w.strip_prefix("probe=0x"))?;
    u64::from_str_radix(hex, 16).ok()
}

/// The median of `ROUNDS` timings of `f`, in TSC ticks.
fn median_ticks(mut f: impl FnMut()) -> u64 {
    let tsc = || {
        let (lo, hi): (u32, u32);
        // SAFETY: rdtsc after lfence (so earlier work has finished); no memory access.
        unsafe {
            core::arch::asm!("lfence", "rdtsc", out("eax") lo, out("edx") hi, options(nomem, nostack))
        };
        u64::from(hi) << 32 | u64::from(lo)
    };
    let mut t = [0u64; ROUNDS as usize];
    for slot in t.iter_mut() {
        let t0 = tsc();
        f();
        *slot = tsc() - t0;
    }
    t.sort_unstable();
    t[t.len() / 2]
}
