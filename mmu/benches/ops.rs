//! PV MMU operation benchmarks (group `ops`), over a `GuestMemoryMmap` of 16 MiB holding
//! page tables that map 1 GiB with 4 KiB pages (262,144 L1 entries in 512 L1 tables),
//! built the way Xen's domain builder does, all entries read-write to 256 data frames:
//!
//! - `mmu_update_l1`: a batch of 512 `MMU_NORMAL_PT_UPDATE` requests to validated L1
//!   entries, each moving its entry to another writable frame (full validation path:
//!   new references taken, old ones dropped);
//! - `pin_l4_1g`: `MMUEXT_PIN_L4_TABLE` of the unvalidated tree (recursive validation of
//!   every entry), timed alone;
//! - `unpin_l4_1g`: the matching `MMUEXT_UNPIN_TABLE` (recursive de-validation), timed
//!   alone;
//! - `update_va_mapping`: one `update_va_mapping` call moving one VA between two frames.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use pvmmu_abi::mmu::{
    MMU_NORMAL_PT_UPDATE, MMUEXT_NEW_BASEPTR, MMUEXT_PIN_L4_TABLE, MMUEXT_UNPIN_TABLE,
};
use pvmmu_abi::{MmuUpdate, MmuextOp};

#[path = "common/ops.rs"]
mod fixture;
use fixture::*;

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("ops");
    g.sample_size(20);
    g.warm_up_time(Duration::from_millis(500));
    g.measurement_time(Duration::from_secs(3));

    // mmu_update: 512 entries of one validated L1 table, moved each iteration between two
    // sets of targets (offset 1 and offset 2 from the initial data frame).
    {
        let mut fx = fixture();
        fx.ext(MMUEXT_PIN_L4_TABLE, fx.l4);
        fx.ext(MMUEXT_NEW_BASEPTR, fx.l4);
        let table = fx.l1_tables[1];
        let first_page = 512; // the pages `table` maps
        let reqs: [Vec<MmuUpdate>; 2] = [1, 2].map(|off| {
            (0..BATCH as u64)
                .map(|i| MmuUpdate {
                    ptr: (table.addr() + i * 8) | MMU_NORMAL_PT_UPDATE,
                    val: (data_frame(first_page + i + off) << 12) | 0x23, // P | RW | A
                })
                .collect()
        });
        let validated = fx.m.stats().validated;
        for r in &reqs {
            let o = fx.m.mmu_update(fx.c, r, SELF).expect("mmu_update");
            assert_eq!((o.done, o.result), (BATCH as u32, Ok(())));
        }
        assert_eq!(fx.m.stats().validated, validated, "no revalidation");
        fx.m.audit().expect("audit after mmu_update");
        let mut k = 0;
        g.throughput(Throughput::Elements(BATCH as u64));
        g.bench_function("mmu_update_l1", |b| {
            b.iter(|| {
                k ^= 1;
                let o = fx.m.mmu_update(fx.c, black_box(&reqs[k]), SELF);
                black_box(o)
            })
        });
        assert_eq!(fx.m.stats().rejected, 0);
        fx.m.audit().expect("audit after mmu_update bench");
    }

    // Pin and unpin of the whole 1 GiB tree.
    {
        let mut fx = fixture();
        let l4 = fx.l4;
        let before = fx.m.stats().validated;
        fx.ext(MMUEXT_PIN_L4_TABLE, l4);
        // L1 entries + L2 entries + one L3 entry + one L4 entry.
        assert_eq!(fx.m.stats().validated - before, PAGES + 512 + 2);
        fx.m.audit().expect("audit after pin");
        fx.ext(MMUEXT_UNPIN_TABLE, l4);
        fx.m.audit().expect("audit after unpin");
        let pin = [MmuextOp::new(MMUEXT_PIN_L4_TABLE, l4.0, 0)];
        let unpin = [MmuextOp::new(MMUEXT_UNPIN_TABLE, l4.0, 0)];

        g.throughput(Throughput::Elements(PAGES));
        g.bench_function("pin_l4_1g", |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let t = Instant::now();
                    let o = fx.m.mmuext_op(fx.c, black_box(&pin), SELF);
                    total += t.elapsed();
                    assert_eq!(o.map(|o| o.result), Ok(Ok(())));
                    fx.ext(MMUEXT_UNPIN_TABLE, l4);
                }
                total
            })
        });
        g.bench_function("unpin_l4_1g", |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    fx.ext(MMUEXT_PIN_L4_TABLE, l4);
                    let t = Instant::now();
                    let o = fx.m.mmuext_op(fx.c, black_box(&unpin), SELF);
                    total += t.elapsed();
                    assert_eq!(o.map(|o| o.result), Ok(Ok(())));
                }
                total
            })
        });
        fx.m.audit().expect("audit after pin bench");
    }

    // update_va_mapping: one VA moved between two frames, no flush requested.
    {
        let mut fx = fixture();
        fx.ext(MMUEXT_PIN_L4_TABLE, fx.l4);
        fx.ext(MMUEXT_NEW_BASEPTR, fx.l4);
        let va = BASE + (12345 << 12);
        let vals = [data_frame(1), data_frame(2)].map(|f| (f << 12) | 0x23);
        for v in vals {
            assert_eq!(fx.m.hypercall_update_va_mapping(fx.c, va, v, 0), Ok(0));
        }
        let mut k = 0;
        g.throughput(Throughput::Elements(1));
        g.bench_function("update_va_mapping", |b| {
            b.iter(|| {
                k ^= 1;
                black_box(fx.m.hypercall_update_va_mapping(fx.c, black_box(va), vals[k], 0))
            })
        });
        assert_eq!(fx.m.stats().rejected, 0);
        fx.m.audit().expect("audit after update_va_mapping bench");
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
