//! Workloads for instruction counting (`scripts/icount.sh` runs each under valgrind's
//! callgrind): `icount CASE REPS` builds the case's fixture (the same page tables and
//! machine as the criterion benches) and runs the case REPS times. The script runs every
//! case with REPS = 0 and REPS = N and divides the difference by N, so set-up drops out
//! and what is left is a repeatable count per repetition, whatever else the machine is
//! doing: the stable number a regression shows in (criterion keeps the time).
//!
//! Cases (one repetition each):
//! - `walk_batched_read` / `walk_batched_write`: the batched walk over 262,144 L1
//!   entries, summing them / flipping a bit in each;
//! - `walk_overhead`: the same walk with a callback that touches no entry;
//! - `walk_per_entry_read`: the per-entry adapter, summing;
//! - `scan_read` / `scan_write`: a plain loop over the same 512 tables (the floor);
//! - `scan_atomic_read`: that loop with one relaxed atomic load per entry;
//! - `mmu_update_512`: one `mmu_update` of 512 validated L1 remaps;
//! - `mmu_update_512_guest`: the same through `Machine::hypercall`, the requests read
//!   from guest memory through the vCPU's page tables (as a VMM serves the exit);
//! - `shared_mmu_update_512` / `shared_mmu_update_512_guest`: the same two through
//!   `SharedMachine` (the concurrent path; the second is what the VMM's exits take);
//! - `pin_unpin_l4_1g`: `PIN_L4_TABLE` then `UNPIN_TABLE` of the 1 GiB tree;
//! - `update_va_mapping`: one `update_va_mapping` moving a VA between two frames.

use std::hint::black_box;
use std::ops::ControlFlow;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};

use pvmmu::{EntryVisit, Pte, Visit, Walker};
use pvmmu_abi::MmuUpdate;
use pvmmu_abi::mmu::{
    MMU_NORMAL_PT_UPDATE, MMUEXT_NEW_BASEPTR, MMUEXT_PIN_L4_TABLE, MMUEXT_UNPIN_TABLE,
};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

#[path = "../benches/common/walk.rs"]
mod walk_fixture;

#[path = "../benches/common/ops.rs"]
mod ops_fixture;

/// The cases, with the number of elements one repetition handles.
const CASES: &[(&str, u64)] = &[
    ("walk_batched_read", walk_fixture::PAGES),
    ("walk_batched_write", walk_fixture::PAGES),
    ("walk_overhead", walk_fixture::PAGES),
    ("walk_per_entry_read", walk_fixture::PAGES),
    ("scan_read", walk_fixture::PAGES),
    ("scan_atomic_read", walk_fixture::PAGES),
    ("scan_write", walk_fixture::PAGES),
    ("mmu_update_512", ops_fixture::BATCH as u64),
    ("mmu_update_512_guest", ops_fixture::BATCH as u64),
    ("shared_mmu_update_512", ops_fixture::BATCH as u64),
    ("shared_mmu_update_512_guest", ops_fixture::BATCH as u64),
    ("pin_unpin_l4_1g", ops_fixture::PAGES),
    ("update_va_mapping", 1),
];

fn walk_case(case: &str, reps: u64) {
    let fx = walk_fixture::fixture();
    let walker = Walker::new(&fx.mem);
    let tables: Vec<&[AtomicU64]> = fx
        .l1_tables
        .iter()
        .map(|m| {
            let p = fx
                .mem
                .get_host_address(GuestAddress(m.addr()))
                .expect("table") as *const AtomicU64;
            // SAFETY: `p` is the 4 KiB-aligned host address of a table frame inside the
            // guest memory mapping, which lives until the end of this function; it holds
            // 512 u64s, and `AtomicU64` has the layout of `u64`.
            unsafe { std::slice::from_raw_parts(p, 512) }
        })
        .collect();
    for _ in 0..reps {
        match case {
            "walk_batched_read" => {
                let mut sum = 0u64;
                let _ = walker.apply_to_existing_page_range(walk_fixture::ROOT, fx.range, |v| {
                    if let Visit::Ptes(batch) = v {
                        let s = batch
                            .with_values(|v| v.iter().fold(0u64, |s, e| s.wrapping_add(e.raw())));
                        sum = sum.wrapping_add(s);
                    }
                    ControlFlow::<()>::Continue(())
                });
                black_box(sum);
            }
            "walk_batched_write" => {
                let _ = walker.apply_to_existing_page_range(walk_fixture::ROOT, fx.range, |v| {
                    if let Visit::Ptes(batch) = v {
                        batch.rewrite(|_, e| Pte(e.raw() ^ walk_fixture::TOGGLE));
                    }
                    ControlFlow::<()>::Continue(())
                });
            }
            "walk_overhead" => {
                let mut n = 0u64;
                let _ = walker.apply_to_existing_page_range(walk_fixture::ROOT, fx.range, |v| {
                    if let Visit::Ptes(batch) = v {
                        n += batch.len() as u64;
                    }
                    ControlFlow::<()>::Continue(())
                });
                black_box(n);
            }
            "walk_per_entry_read" => {
                let mut sum = 0u64;
                let _ = walker.for_each_pte(walk_fixture::ROOT, fx.range, |e| {
                    if let EntryVisit::Pte(p) = e {
                        sum = sum.wrapping_add(p.get().raw());
                    }
                    ControlFlow::<()>::Continue(())
                });
                black_box(sum);
            }
            "scan_read" => {
                let mut sum = 0u64;
                for t in &tables {
                    let p = t.as_ptr() as *const u64;
                    // SAFETY: as above; nothing writes the tables while this runs (one
                    // thread), so a plain shared view of them is sound here.
                    let entries = unsafe { std::slice::from_raw_parts(p, 512) };
                    for e in entries {
                        sum = sum.wrapping_add(*e);
                    }
                }
                black_box(sum);
            }
            "scan_atomic_read" => {
                let mut sum = 0u64;
                for t in &tables {
                    for e in t.iter() {
                        sum = sum.wrapping_add(e.load(Ordering::Relaxed));
                    }
                }
                black_box(sum);
            }
            "scan_write" => {
                for t in &tables {
                    let p = t.as_ptr() as *mut u64;
                    // SAFETY: as above; this is the only view of the table in use while
                    // the loop runs.
                    let entries = unsafe { std::slice::from_raw_parts_mut(p, 512) };
                    for e in entries {
                        *e ^= walk_fixture::TOGGLE;
                    }
                }
            }
            _ => unreachable!("checked by main"),
        }
    }
}

fn ops_case(case: &str, reps: u64) {
    use ops_fixture::*;
    let mut fx = fixture();
    let l4 = fx.l4;
    if case != "pin_unpin_l4_1g" {
        fx.ext(MMUEXT_PIN_L4_TABLE, l4);
        fx.ext(MMUEXT_NEW_BASEPTR, l4);
    }
    let table = fx.l1_tables[1];
    let reqs: [Vec<MmuUpdate>; 2] = [1, 2].map(|off| {
        (0..BATCH as u64)
            .map(|i| MmuUpdate {
                ptr: (table.addr() + i * 8) | MMU_NORMAL_PT_UPDATE,
                val: (data_frame(512 + i + off) << 12) | 0x23,
            })
            .collect()
    });
    let va = BASE + (12345 << 12);
    let vals = [data_frame(1), data_frame(2)].map(|f| (f << 12) | 0x23);
    // The request arrays in guest memory: pages 100..102 and 102..104 of the range
    // (mapped by the first L1 table, which the batches leave alone).
    let arrays = [100u64, 102].map(|p| BASE + (p << 12));
    for (k, &at) in arrays.iter().enumerate() {
        let bytes: Vec<u8> = reqs[k].iter().flat_map(|r| r.to_bytes()).collect();
        for (half, chunk) in bytes.chunks(4096).enumerate() {
            let page = (at - BASE) / 4096 + half as u64;
            fx.m.memory()
                .write_slice(chunk, GuestAddress(data_frame(page) << 12))
                .expect("request array");
        }
    }
    let args = |k: usize| [arrays[k & 1], BATCH as u64, 0, u64::from(SELF), 0];
    if case.starts_with("shared_") {
        let shared = pvmmu::SharedMachine::new(fx.m);
        for k in 0..reps as usize {
            if case == "shared_mmu_update_512" {
                let o = shared.mmu_update(fx.c, black_box(&reqs[k & 1]), SELF);
                assert_eq!(o.map(|o| (o.done, o.result)), Ok((512, Ok(()))));
            } else {
                let o = shared.hypercall_mmu_update(fx.c, black_box(args(k)));
                assert_eq!(o, Ok(pvmmu::SharedCall::Done(0)));
            }
        }
        return;
    }
    for k in 0..reps as usize {
        match case {
            "mmu_update_512" => {
                let o = fx.m.mmu_update(fx.c, black_box(&reqs[k & 1]), SELF);
                assert_eq!(o.map(|o| o.result), Ok(Ok(())));
            }
            "mmu_update_512_guest" => {
                let nr = pvmmu_abi::hypercall::HYPERVISOR_mmu_update;
                let r =
                    fx.m.hypercall(fx.c, nr, black_box(args(k)), &mut pvmmu::NoHandler);
                assert_eq!(r.map(|r| r.rax), Ok(0));
            }
            "pin_unpin_l4_1g" => {
                fx.ext(MMUEXT_PIN_L4_TABLE, l4);
                fx.ext(MMUEXT_UNPIN_TABLE, l4);
            }
            "update_va_mapping" => {
                let r =
                    fx.m.hypercall_update_va_mapping(fx.c, black_box(va), vals[k & 1], 0);
                assert_eq!(r, Ok(0));
            }
            _ => unreachable!("checked by main"),
        }
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (case, reps) = match args.as_slice() {
        [c, r] => match (CASES.iter().find(|(n, _)| n == c), r.parse::<u64>()) {
            (Some(&(name, _)), Ok(reps)) => (name, reps),
            _ => {
                eprintln!("icount: unknown case {c:?} or bad count {r:?}");
                return ExitCode::from(64);
            }
        },
        [l] if l == "--list" => {
            for (name, elements) in CASES {
                println!("{name} {elements}");
            }
            return ExitCode::SUCCESS;
        }
        _ => {
            eprintln!("usage: icount CASE REPS | icount --list");
            return ExitCode::from(64);
        }
    };
    if case.starts_with("walk_") || case.starts_with("scan_") {
        walk_case(case, reps);
    } else {
        ops_case(case, reps);
    }
    ExitCode::SUCCESS
}
