//! Updates per second from one and from two threads (group `concurrency`), over the
//! `ops` machine (1 GiB mapped with 4 KiB pages, the tree pinned and installed). Each
//! thread owns one validated L1 table and 128 data frames of its own (disjoint tables,
//! disjoint targets) and moves the table's 512 entries between two sets of 64 writable
//! frames each batch (every entry takes new references, drops its old ones and leaves
//! a stale-TLB note):
//!
//! - `exclusive_1_thread`: `Machine::mmu_update`, the single-threaded baseline;
//! - `shared_1_thread`: `SharedMachine::mmu_update` from one thread;
//! - `shared_2_threads`: the same from two threads at once, each on its own table.
//!
//! Throughput is in entries: the ratio of `shared_2_threads` to `shared_1_thread` is
//! what the second thread adds.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use pvmmu::{Caller, SharedMachine};
use pvmmu_abi::MmuUpdate;
use pvmmu_abi::mmu::{MMU_NORMAL_PT_UPDATE, MMUEXT_NEW_BASEPTR, MMUEXT_PIN_L4_TABLE};

#[path = "common/ops.rs"]
mod fixture;
use fixture::*;

/// The two batches thread `t` alternates between.
fn batches(table: pvmmu::Mfn, t: u64) -> [Vec<MmuUpdate>; 2] {
    [0, 64].map(|half| {
        (0..BATCH as u64)
            .map(|i| MmuUpdate {
                ptr: (table.addr() + i * 8) | MMU_NORMAL_PT_UPDATE,
                val: ((DATA_FIRST + t * 128 + half + i % 64) << 12) | 0x23, // P | RW | A
            })
            .collect()
    })
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("concurrency");
    g.sample_size(20);
    g.warm_up_time(Duration::from_millis(500));
    g.measurement_time(Duration::from_secs(3));

    let mut fx = fixture_with_vcpus(2);
    fx.ext(MMUEXT_PIN_L4_TABLE, fx.l4);
    fx.ext(MMUEXT_NEW_BASEPTR, fx.l4);
    let work: Vec<[Vec<MmuUpdate>; 2]> = (0..2u64)
        .map(|t| batches(fx.l1_tables[1 + t as usize], t))
        .collect();
    // Which batch each thread issues next, kept across samples so that every batch
    // moves every entry.
    let parity = [AtomicBool::new(false), AtomicBool::new(false)];
    let next = |t: usize| usize::from(parity[t].fetch_xor(true, Ordering::Relaxed));

    g.throughput(Throughput::Elements(BATCH as u64));
    g.bench_function("exclusive_1_thread", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                let o =
                    fx.m.mmu_update(fx.c, &work[0][next(0)], SELF)
                        .expect("mmu_update");
                assert_eq!(o.done, BATCH as u32);
            }
            start.elapsed()
        })
    });

    let shared = SharedMachine::new(fx.m);
    let run = |threads: usize, iters: u64| {
        std::thread::scope(|s| {
            let start = Instant::now();
            let workers: Vec<_> = (0..threads)
                .map(|t| {
                    let (shared, work, next) = (&shared, &work, &next);
                    s.spawn(move || {
                        let me = Caller::new(DOM, t as u32);
                        for _ in 0..iters {
                            let o = shared.mmu_update(me, &work[t][next(t)], SELF);
                            assert_eq!(o.map(|o| o.done), Ok(BATCH as u32));
                        }
                    })
                })
                .collect();
            for w in workers {
                w.join().expect("worker");
            }
            start.elapsed()
        })
    };
    g.bench_function("shared_1_thread", |b| b.iter_custom(|iters| run(1, iters)));
    g.throughput(Throughput::Elements(2 * BATCH as u64));
    g.bench_function("shared_2_threads", |b| b.iter_custom(|iters| run(2, iters)));
    g.finish();

    let m = shared.into_inner();
    m.audit().expect("audit after the concurrent batches");
    let st = m.stats();
    assert!(st.concurrent > 0, "{st:?}");
}

criterion_group!(benches, bench);
criterion_main!(benches);
