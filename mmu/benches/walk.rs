//! The walker benchmark: page tables mapping 1 GiB with 4 KiB pages (262,144 L1 entries)
//! in a `GuestMemoryMmap`, read (visit every entry) and rewritten (every entry), by:
//!
//! - `batched`: the batched walker, one callback per L1 table;
//! - `per_entry`: the per-entry adapter over it;
//! - `naive`: one full four-level descent per page through `vm-memory`;
//! - `x86_64_crate`: the `x86_64` crate's `OffsetPageTable` over the same memory;
//! - `scan_limit`: a plain loop over the L1 tables' bytes (the memory-bandwidth floor);
//! - `scan_limit_atomic`: the same loop with one relaxed atomic access per entry, as
//!   the walker must make (the compiler cannot vectorise it);
//! - `walk_overhead`: the batched walk with a callback that touches no entry.

use std::hint::black_box;
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use pvmmu::{EntryVisit, Level, Pte, Visit, Walker};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

#[path = "common/walk.rs"]
mod fixture;
use fixture::*;
use x86_64::structures::paging::mapper::{Translate, TranslateResult};
use x86_64::structures::paging::{
    Mapper, OffsetPageTable, Page, PageTable, PageTableFlags, Size4KiB,
};

fn naive_leaf(mem: &GuestMemoryMmap<()>, va: u64) -> GuestAddress {
    let mut table = ROOT.0 << 12;
    for level in [Level::L4, Level::L3, Level::L2] {
        let idx = (va >> level.shift()) & 511;
        let e: u64 = mem.read_obj(GuestAddress(table + idx * 8)).expect("entry");
        table = Pte(e).addr();
    }
    GuestAddress(table + ((va >> 12) & 511) * 8)
}

fn bench(c: &mut Criterion) {
    let fx = fixture();
    let walker = Walker::new(&fx.mem);
    let mut g = c.benchmark_group("walk");
    g.throughput(Throughput::Elements(PAGES));
    g.sample_size(20);
    g.warm_up_time(Duration::from_millis(500));
    g.measurement_time(Duration::from_secs(3));

    g.bench_function(BenchmarkId::new("batched", "read"), |b| {
        b.iter(|| {
            let mut sum = 0u64;
            let _ = walker.apply_to_existing_page_range(ROOT, fx.range, |v| {
                if let Visit::Ptes(batch) = v {
                    let s =
                        batch.with_values(|v| v.iter().fold(0u64, |s, e| s.wrapping_add(e.raw())));
                    sum = sum.wrapping_add(s);
                }
                ControlFlow::<()>::Continue(())
            });
            black_box(sum)
        })
    });
    g.bench_function(BenchmarkId::new("batched_fold", "read"), |b| {
        b.iter(|| {
            let mut sum = 0u64;
            let _ = walker.apply_to_existing_page_range(ROOT, fx.range, |v| {
                if let Visit::Ptes(batch) = v {
                    sum = batch.fold(sum, |s, _, e| s.wrapping_add(e.raw()));
                }
                ControlFlow::<()>::Continue(())
            });
            black_box(sum)
        })
    });
    g.bench_function(BenchmarkId::new("batched_iter", "read"), |b| {
        b.iter(|| {
            let mut sum = 0u64;
            let _ = walker.apply_to_existing_page_range(ROOT, fx.range, |v| {
                if let Visit::Ptes(batch) = v {
                    let mut s = 0u64;
                    for e in batch.iter() {
                        s = s.wrapping_add(e.raw());
                    }
                    sum = sum.wrapping_add(s);
                }
                ControlFlow::<()>::Continue(())
            });
            black_box(sum)
        })
    });
    g.bench_function(BenchmarkId::new("batched", "write"), |b| {
        b.iter(|| {
            walker.apply_to_existing_page_range(ROOT, fx.range, |v| {
                if let Visit::Ptes(batch) = v {
                    batch.rewrite(|_, e| Pte(e.raw() ^ TOGGLE));
                }
                ControlFlow::<()>::Continue(())
            })
        })
    });

    g.bench_function(BenchmarkId::new("walk_overhead", "read"), |b| {
        b.iter(|| {
            let mut n = 0u64;
            let _ = walker.apply_to_existing_page_range(ROOT, fx.range, |v| {
                if let Visit::Ptes(batch) = v {
                    n += batch.len() as u64;
                }
                ControlFlow::<()>::Continue(())
            });
            black_box(n)
        })
    });
    g.bench_function(BenchmarkId::new("per_entry", "read"), |b| {
        b.iter(|| {
            let mut sum = 0u64;
            let _ = walker.for_each_pte(ROOT, fx.range, |e| {
                if let EntryVisit::Pte(p) = e {
                    sum = sum.wrapping_add(p.get().raw());
                }
                ControlFlow::<()>::Continue(())
            });
            black_box(sum)
        })
    });
    g.bench_function(BenchmarkId::new("per_entry", "write"), |b| {
        b.iter(|| {
            walker.for_each_pte(ROOT, fx.range, |e| {
                if let EntryVisit::Pte(mut p) = e {
                    let v = p.get();
                    p.set(Pte(v.raw() ^ TOGGLE));
                }
                ControlFlow::<()>::Continue(())
            })
        })
    });

    g.bench_function(BenchmarkId::new("naive", "read"), |b| {
        b.iter(|| {
            let mut sum = 0u64;
            for p in 0..PAGES {
                let addr = naive_leaf(&fx.mem, BASE + (p << 12));
                sum = sum.wrapping_add(fx.mem.read_obj::<u64>(addr).expect("pte"));
            }
            black_box(sum)
        })
    });
    g.bench_function(BenchmarkId::new("naive", "write"), |b| {
        b.iter(|| {
            for p in 0..PAGES {
                let addr = naive_leaf(&fx.mem, BASE + (p << 12));
                let v: u64 = fx.mem.read_obj(addr).expect("pte");
                fx.mem.write_obj(v ^ TOGGLE, addr).expect("pte");
            }
        })
    });

    let host_base = fx
        .mem
        .get_host_address(GuestAddress(0))
        .expect("host address");
    // SAFETY: the root table frame lies inside the mapping of `fx.mem`, which outlives the
    // mapper; the page is 4 KiB-aligned and nothing else accesses guest memory while the
    // `x86_64` benchmarks run (the walker above is idle).
    let l4 = unsafe { &mut *(host_base.add(ROOT.addr() as usize) as *mut PageTable) };
    // SAFETY: every table frame the tables name lies in the single region mapped at
    // `host_base` (physical address 0), so physical + offset is its host address.
    let mut mapper = unsafe { OffsetPageTable::new(l4, x86_64::VirtAddr::new(host_base as u64)) };
    g.bench_function(BenchmarkId::new("x86_64_crate", "read"), |b| {
        b.iter(|| {
            let mut sum = 0u64;
            for p in 0..PAGES {
                if let TranslateResult::Mapped { frame, .. } =
                    mapper.translate(x86_64::VirtAddr::new(BASE + (p << 12)))
                {
                    sum = sum.wrapping_add(frame.start_address().as_u64());
                }
            }
            black_box(sum)
        })
    });
    let mut odd = false;
    g.bench_function(BenchmarkId::new("x86_64_crate", "write"), |b| {
        b.iter(|| {
            odd = !odd;
            let mut flags =
                PageTableFlags::PRESENT | PageTableFlags::WRITABLE | PageTableFlags::ACCESSED;
            if odd {
                flags |= PageTableFlags::BIT_9;
            }
            for p in 0..PAGES {
                let page =
                    Page::<Size4KiB>::containing_address(x86_64::VirtAddr::new(BASE + (p << 12)));
                // SAFETY: only a software-available bit changes; the mapping stays the same
                // and no CPU uses these tables.
                if let Ok(flush) = unsafe { mapper.update_flags(page, flags) } {
                    flush.ignore();
                }
            }
        })
    });

    let tables: Vec<*mut u64> = fx
        .l1_tables
        .iter()
        .map(|m| {
            fx.mem
                .get_host_address(GuestAddress(m.addr()))
                .expect("table") as *mut u64
        })
        .collect();
    g.bench_function(BenchmarkId::new("scan_limit", "read"), |b| {
        b.iter(|| {
            let mut sum = 0u64;
            for &t in &tables {
                // SAFETY: `t` is the 4 KiB-aligned host address of a table frame inside
                // the guest memory mapping, valid for 512 u64s; nothing writes it now.
                let entries = unsafe { std::slice::from_raw_parts(t, 512) };
                for e in entries {
                    sum = sum.wrapping_add(*e);
                }
            }
            black_box(sum)
        })
    });
    g.bench_function(BenchmarkId::new("scan_limit", "write"), |b| {
        b.iter(|| {
            for &t in &tables {
                // SAFETY: as above; this is the only reference to the table while it lives.
                let entries = unsafe { std::slice::from_raw_parts_mut(t, 512) };
                for e in entries {
                    *e ^= TOGGLE;
                }
            }
        })
    });
    // The same floor, but reading and writing each entry with a relaxed atomic access
    // as the walker must (no SIMD): isolates the walker's own overhead.
    let atomic_tables: Vec<&[AtomicU64]> = tables
        .iter()
        // SAFETY: as above; `AtomicU64` has the layout of `u64`, and these slices are only
        // used while no plain reference to the same tables is live.
        .map(|&t| unsafe { std::slice::from_raw_parts(t as *const AtomicU64, 512) })
        .collect();
    g.bench_function(BenchmarkId::new("scan_limit_atomic", "read"), |b| {
        b.iter(|| {
            let mut sum = 0u64;
            for t in &atomic_tables {
                for e in t.iter() {
                    sum = sum.wrapping_add(e.load(Ordering::Relaxed));
                }
            }
            black_box(sum)
        })
    });
    g.bench_function(BenchmarkId::new("scan_limit_atomic", "write"), |b| {
        b.iter(|| {
            for t in &atomic_tables {
                for e in t.iter() {
                    e.store(e.load(Ordering::Relaxed) ^ TOGGLE, Ordering::Relaxed);
                }
            }
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
