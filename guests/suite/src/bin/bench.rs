//! The `pvmmu bench` guest: rounds of null hypercalls (the exit cost), then rounds of
//! mmu_update batches of 1, 8, 64 and 512 validated L1 remaps, each followed by the
//! local TLB flush a kernel makes after moving present mappings, then rounds of an
//! exception (`ud2`) delivered to the guest's handler and returned from with `iret`.
//! With `probe=ADDR` on its command line it also times, with its own TSC, a null
//! hypercall, a call of the hypervisor's ring-0 probe at ADDR (an `int3` whose exception
//! returns from ring 0 at once, no exit) and the exception round trip, and prints
//! `bench-ticks exit=E probe=P bounce=B` (medians).
//!
//! Then the patterns a kernel makes, each phase opened by `xen_version(0, MARK + k)`
//! (the VMM splits its timings there): hooking a fresh pinned L1 into an L2 entry that
//! was not present (one `mmu_update` each), replacing a present L2 entry's L1, pinning
//! and unpinning a fresh L1, and a remap storm (one L1 remap and an INVLPG each).
#![no_std]
#![no_main]

use rt::abi::mmu::{
    MMUEXT_INVLPG_LOCAL, MMUEXT_PIN_L1_TABLE, MMUEXT_TLB_FLUSH_LOCAL, MMUEXT_UNPIN_TABLE,
};
use rt::abi::{DOMID_SELF, MmuUpdate, StartInfo};
use suite::{A, Frames, P, RW};

/// Phase markers: `xen_version(0, MARK + k)` opens kernel pattern `k` (0 hook-in,
/// 1 replace, 2 pin/unpin, 3 remap storm); `MARK + 4` ends the last.
const MARK: u64 = 0xbe00;

/// Rounds per batch size (the VMM times them).
const ROUNDS: u64 = 40;

#[unsafe(no_mangle)]
pub fn guest_main(si: &'static StartInfo) {
    let mut frames = Frames::new();
    let (l2, l1) = (frames.take(), frames.take());
    let data: [u64; 512] = core::array::from_fn(|_| frames.take());
    let alt: [u64; 512] = core::array::from_fn(|_| frames.take());
    // The kernel patterns' fresh L1s: frames beyond everything touched so far.
    let fresh: [u64; ROUNDS as usize + 1] = core::array::from_fn(|_| frames.take());
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
            // What a kernel does after moving present mappings: flush, so that no
            // stale translation of the old frames survives (the host invalidates them).
            ext(MMUEXT_TLB_FLUSH_LOCAL, 0, "flush after a batch");
        }
    }
    kernel_patterns(&fresh, l2, l1, &data, &alt);
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

fn update(reqs: &[MmuUpdate], what: &str) {
    let (rc, _) = rt::mmu_update(reqs, u32::from(DOMID_SELF));
    if rc != 0 {
        rt::println!("bench: {what}: rc {rc}");
        rt::finish(Some("bench kernel pattern"));
    }
}

fn ext(cmd: u32, arg: u64, what: &str) {
    let rc = rt::mmuext(cmd, arg, 0);
    if rc != 0 {
        rt::println!("bench: {what}: rc {rc}");
        rt::finish(Some("bench kernel pattern"));
    }
}

/// The kernel patterns (see the module documentation): `pfns` the frames for fresh L1s,
/// `l2`/`l1` the pfn of the range's L2 and the mfn of its L1, whose entry 0 maps
/// `data[0]`.
fn kernel_patterns(pfns: &[u64], l2: u64, l1: u64, data: &[u64], alt: &[u64]) {
    let n = ROUNDS as usize;
    let l2 = rt::mem::pfn_to_mfn(l2);
    // Fresh L1s, pinned: frames the builder's map leaves out are untouched (zero) and
    // mapped nowhere; one it maps is zeroed and made read-only first.
    let mut fresh = [0u64; ROUNDS as usize + 1];
    for (f, &pfn) in fresh.iter_mut().zip(pfns) {
        if pfn < rt::mem::mapped_end_pfn() {
            suite::zero(pfn);
            update(&[suite::make_readonly(pfn)], "read-only");
        }
        *f = rt::mem::pfn_to_mfn(pfn);
        ext(MMUEXT_PIN_L1_TABLE, *f, "pin");
    }
    let hook = |slot: u64, l1: u64| MmuUpdate {
        ptr: (l2 << 12) + slot * 8,
        val: if l1 == 0 { 0 } else { (l1 << 12) | P | RW | A },
    };
    // 0: hook-ins, each into a slot that was not present.
    rt::xen_version(0, MARK);
    for (i, &f) in fresh.iter().enumerate().take(n) {
        update(&[hook(1 + i as u64, f)], "hook-in");
    }
    // 1: replaces of one present L2 entry.
    rt::xen_version(0, MARK + 1);
    for round in 0..n {
        update(&[hook(1, fresh[round % 2 + 1])], "replace");
    }
    let unhook: [MmuUpdate; ROUNDS as usize] = core::array::from_fn(|i| hook(1 + i as u64, 0));
    update(&unhook, "unhook");
    for &f in &fresh[1..] {
        ext(MMUEXT_UNPIN_TABLE, f, "unpin");
    }
    // 2: pin and unpin of a fresh L1.
    rt::xen_version(0, MARK + 2);
    for _ in 0..n {
        ext(MMUEXT_PIN_L1_TABLE, fresh[1], "pin");
        ext(MMUEXT_UNPIN_TABLE, fresh[1], "unpin");
    }
    // 3: a remap storm: one L1 entry remapped, then invalidated, each time.
    rt::xen_version(0, MARK + 3);
    for round in 0..n {
        let set = if round % 2 == 0 { alt } else { data };
        let r = MmuUpdate {
            ptr: l1 << 12,
            val: (rt::mem::pfn_to_mfn(set[0]) << 12) | P | RW | A,
        };
        update(&[r], "remap");
        ext(MMUEXT_INVLPG_LOCAL, 1 << 30, "invlpg");
    }
    rt::xen_version(0, MARK + 4);
    ext(MMUEXT_UNPIN_TABLE, fresh[0], "unpin");
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
