//! Several threads on one machine (`SharedMachine`): a batch served through the
//! concurrent path gives exactly what the same batch gives through `Machine` alone
//! (outcome, frame table, entries, flush bookkeeping); threads hammering their own and
//! common tables at once leave a machine whose audit is clean and whose counts are
//! those of the entries; a last reference dropped concurrently frees its frame before
//! the call returns.

mod support;

use pvmmu::{Caller, Errno, Machine, Mfn, NoHandler, RecordingFlush, SharedCall, SharedMachine};
use pvmmu_abi::hypercall::HYPERVISOR_mmu_update;
use pvmmu_abi::mmu::{
    MMU_MACHPHYS_UPDATE, MMU_PT_UPDATE_PRESERVE_AD, MMUEXT_PIN_L1_TABLE, MMUEXT_TLB_FLUSH_ALL,
    MMUEXT_UNPIN_TABLE,
};
use pvmmu_abi::{MmuUpdate, MmuextOp};
use support::*;
use vm_memory::GuestMemoryMmap;

type M = Machine<GuestMemoryMmap<()>, RecordingFlush>;

/// A small deterministic generator (xorshift64*), so that every run is reproducible.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A guest with `n` fresh L1 tables pinned, and `data` data frames to map.
fn world(n: usize, data: usize) -> (Guest, Vec<Mfn>, Vec<Mfn>) {
    let mut g = guest_with(pvmmu::DomainConfig::new(1).vcpus(4));
    let tables: Vec<Mfn> = (0..n).map(|_| g.table_frame()).collect();
    for t in &tables {
        assert_eq!(g.ext(MMUEXT_PIN_L1_TABLE, t.0, 0).result, Ok(()));
    }
    let data = (0..data).map(|_| g.take()).collect();
    g.m.flusher().take();
    (g, tables, data)
}

/// One random request against `tables`/`data`, drawn from the kinds a kernel makes
/// and from the kinds Xen refuses (each refused one goes to the exclusive path).
fn request(r: &mut Rng, tables: &[Mfn], data: &[Mfn], g: &Guest) -> MmuUpdate {
    let t = tables[r.below(tables.len() as u64) as usize];
    let slot = r.below(16);
    let ptr = t.addr() + slot * 8;
    let frame = data[r.below(data.len() as u64) as usize];
    let flags = match r.below(8) {
        0 => P,
        1 => P | RW,
        2 => P | RW | US | A | D,
        3 => P | US | NX,
        4 => P | G | A,
        _ => P | RW | A,
    };
    let (ptr, val) = match r.below(40) {
        // unmaps, plain or keeping A/D
        0..=7 => (ptr, 0),
        8 => (ptr | MMU_PT_UPDATE_PRESERVE_AD, 0),
        9 => (ptr | MMU_PT_UPDATE_PRESERVE_AD, (frame.0 << 12) | flags),
        // a page table mapped writable (-EBUSY) or read-only (fine)
        10 => (ptr, (tables[0].0 << 12) | P | RW),
        11 => (ptr, (tables[0].0 << 12) | P),
        // another domain's frame (-EBUSY), a cache attribute (-EINVAL)
        12 => (ptr, (DOM2_FIRST << 12) | P),
        13 => (ptr, (frame.0 << 12) | P | 0x10),
        // an M2P update, then a write into a frame that is not a table
        14 => (frame.addr() | MMU_MACHPHYS_UPDATE, 0x1234),
        15 => (frame.addr() + slot * 8, (frame.0 << 12) | P),
        // an L1 entry of the guest's own kernel mapping (a live table of its tree)
        16 => (g.pte_addr(va_of(frame.0)), (frame.0 << 12) | P | RW | A),
        _ => (ptr, (frame.0 << 12) | flags),
    };
    MmuUpdate { ptr, val }
}

fn snapshot(m: &M, tables: &[Mfn]) -> Vec<u64> {
    use vm_memory::{Bytes, GuestAddress};
    let mut out = Vec::new();
    for t in tables {
        let mut page = [0u8; 4096];
        m.memory()
            .read_slice(&mut page, GuestAddress(t.addr()))
            .unwrap();
        out.extend(
            page.chunks(8)
                .map(|c| u64::from_le_bytes(c.try_into().unwrap())),
        );
    }
    out
}

/// A full flush, so that the stale-TLB bookkeeping each machine kept comes out.
fn flush_all(m: &mut M, c: Caller) -> Vec<pvmmu::FlushRequest> {
    let o = m
        .mmuext_op(c, &[MmuextOp::new(MMUEXT_TLB_FLUSH_ALL, 0, 0)], SELF)
        .unwrap();
    assert_eq!(o.result, Ok(()));
    m.flusher().take()
}

#[test]
fn the_concurrent_path_gives_what_the_exclusive_path_gives() {
    for seed in 1..=12u64 {
        let (mut a, tables, data) = world(3, 12);
        let (b, _, _) = world(3, 12);
        let c = a.c;
        let mut twin_ms = Vec::new();
        let kernel_l1 = vec![Mfn::containing(a.pte_addr(va_of(data[0].0)))];
        let shared = SharedMachine::new(b.m);
        let mut r = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        for batch in 0..60 {
            let n = 1 + r.below(24) as usize;
            let reqs: Vec<MmuUpdate> = (0..n)
                .map(|_| request(&mut r, &tables, &data, &a))
                .collect();
            let want = a.m.mmu_update(c, &reqs, SELF).unwrap();
            // Every other batch, its first entry swap fails once, as a weak
            // compare-and-swap may (or a racing vCPU would make it): the references
            // taken for it go back and the entry is replanned.
            if batch % 2 == 0 {
                shared.fail_entry_swaps_for_test(1);
            }
            let got = shared.mmu_update(c, &reqs, SELF).unwrap();
            assert_eq!(got, want, "seed {seed} batch {batch}: {reqs:x?}");
            if batch % 15 == 14 {
                // An exclusive operation in between: unpin and re-pin a table.
                let t = tables[r.below(3) as usize];
                let mut m = shared.lock();
                for cmd in [MMUEXT_UNPIN_TABLE, MMUEXT_PIN_L1_TABLE] {
                    let op = [MmuextOp::new(cmd, t.0, 0)];
                    let want = a.m.mmuext_op(c, &op, SELF).unwrap();
                    assert_eq!(m.mmuext_op(c, &op, SELF).unwrap(), want);
                }
            }
        }
        let mut b = shared.into_inner();
        assert_eq!(
            a.m.frames().iter().collect::<Vec<_>>(),
            b.frames().iter().collect::<Vec<_>>()
        );
        let all: Vec<Mfn> = tables.iter().chain(&kernel_l1).copied().collect();
        assert_eq!(snapshot(&a.m, &all), snapshot(&b, &all), "seed {seed}");
        let served = b.stats();
        assert_eq!(
            pvmmu::Stats {
                concurrent: 0,
                ..served
            },
            a.m.stats(),
            "seed {seed}"
        );
        // Most accepted entries of this mix take the concurrent path.
        assert!(
            served.concurrent * 2 > served.applied,
            "seed {seed}: {served:?}"
        );
        twin_ms.push(flush_all(&mut b, c));
        assert_eq!(
            flush_all(&mut a.m, c),
            twin_ms[0],
            "seed {seed}: flush bookkeeping"
        );
        a.audit();
        assert!(b.audit().is_ok());
    }
}

#[test]
fn threads_on_own_and_common_tables_leave_exact_counts() {
    const THREADS: usize = 4;
    let (g, tables, data) = world(THREADS + 2, 24);
    let c = g.c;
    let shared = SharedMachine::new(g.m);
    let common = tables[THREADS];
    // Pinned and unpinned meanwhile; never written.
    let spare = tables[THREADS + 1];
    let total: u64 = std::thread::scope(|s| {
        let mut workers = Vec::new();
        for (t, &own) in tables[..THREADS].iter().enumerate() {
            let (shared, data) = (&shared, &data);
            workers.push(s.spawn(move || {
                let me = Caller::new(c.dom, t as u32);
                let mut r = Rng(0x5eed + t as u64);
                let mut applied = 0;
                for round in 0..400 {
                    let n = 1 + r.below(64);
                    let reqs: Vec<MmuUpdate> = (0..n)
                        .map(|_| {
                            // Mostly the thread's own table; a quarter into 4 entries of the
                            // common table that every thread fights over.
                            let (table, slots) = if r.below(4) == 0 {
                                (common, 4)
                            } else {
                                (own, 512)
                            };
                            let f = data[r.below(data.len() as u64) as usize];
                            let val = match r.below(4) {
                                0 => 0,
                                1 => (f.0 << 12) | P,
                                2 => (f.0 << 12) | P | US | NX,
                                _ => (f.0 << 12) | P | RW,
                            };
                            MmuUpdate {
                                ptr: table.addr() + r.below(slots) * 8,
                                val,
                            }
                        })
                        .collect();
                    let o = shared.mmu_update(me, &reqs, SELF).unwrap();
                    assert_eq!(
                        (o.done, o.result),
                        (n as u32, Ok(())),
                        "thread {t} round {round}"
                    );
                    applied += n;
                    if t == 0 && round % 50 == 0 {
                        // Exclusive work meanwhile: unpin and re-pin the spare table.
                        let mut m = shared.lock();
                        for cmd in [MMUEXT_UNPIN_TABLE, MMUEXT_PIN_L1_TABLE] {
                            let op = [MmuextOp::new(cmd, spare.0, 0)];
                            assert_eq!(m.mmuext_op(me, &op, SELF).unwrap().result, Ok(()));
                        }
                    }
                }
                applied
            }));
        }
        workers.into_iter().map(|w| w.join().unwrap()).sum()
    });
    let m = shared.into_inner();
    assert_eq!(
        m.stats().concurrent,
        total,
        "every entry took the concurrent path"
    );
    // The audit recounts every reference from the entries that hold it.
    if let Err(e) = m.audit() {
        panic!("{e}");
    }
    let mapped: u64 = data
        .iter()
        .map(|f| m.frames().get(*f).unwrap().count - 2) // allocation + KBASE mapping
        .sum();
    let present = tables
        .iter()
        .flat_map(|t| snapshot(&m, &[*t]))
        .filter(|e| e & P != 0)
        .count() as u64;
    assert_eq!(mapped, present, "one general reference per present entry");
    assert!(present > 0);
}

#[test]
fn a_last_reference_dropped_concurrently_frees_the_frame_before_the_call_returns() {
    let (mut g, tables, data) = world(1, 1);
    let f = data[0];
    let c = g.c;
    // Map `f` from the new table, drop its KBASE mapping and give it back to Xen: the
    // new entry holds the last reference.
    let at = tables[0].addr();
    assert_eq!(g.update(&[(at, (f.0 << 12) | P)]).result, Ok(()));
    assert_eq!(g.update(&[(g.pte_addr(va_of(f.0)), 0)]).result, Ok(()));
    let o = g.m.decrease_reservation(1, &[f.0], 0).unwrap();
    assert_eq!(o.done, 1);
    assert_eq!(g.info(f).count, 1, "only the new entry holds it");
    let shared = SharedMachine::new(g.m);
    let o = shared
        .mmu_update(c, &[MmuUpdate { ptr: at, val: 0 }], SELF)
        .unwrap();
    assert_eq!((o.done, o.result), (1, Ok(())));
    // The frame is free at once: mapping it again is refused as Xen refuses it.
    let o = shared
        .mmu_update(
            c,
            &[MmuUpdate {
                ptr: at,
                val: (f.0 << 12) | P,
            }],
            SELF,
        )
        .unwrap();
    assert_eq!((o.done, o.result), (0, Err(Errno::EBUSY)));
    let m = shared.into_inner();
    let p = m.frames().get(f).unwrap();
    assert_eq!((p.count, p.owner), (0, pvmmu_abi::DOMID_INVALID));
    assert!(m.audit().is_ok());
}

#[test]
fn a_batch_that_does_not_qualify_gets_the_exclusive_answer_even_when_empty() {
    // Found by the shared_ops fuzz target: an empty batch with the caller's own id as
    // FD is -ESRCH (Xen refuses that id), not a concurrent "nothing to do".
    let (g, _, _) = world(1, 1);
    let c = g.c;
    let shared = SharedMachine::new(g.m);
    let own_id = u32::from(c.dom);
    let o = shared.mmu_update(c, &[], own_id).unwrap();
    assert_eq!((o.done, o.result), (0, Err(Errno::ESRCH)));
    let o = shared.mmu_update(c, &[], SELF).unwrap();
    assert_eq!((o.done, o.result), (0, Ok(())));
}

/// A twin pair: the same world twice, one served through `SharedMachine`.
fn twins(cfg: pvmmu::DomainConfig) -> (Guest, SharedMachine<GuestMemoryMmap<()>, RecordingFlush>) {
    let a = guest_with(cfg.clone());
    let b = guest_with(cfg);
    (a, SharedMachine::new(b.m))
}

/// Issues `reqs` on both and checks they agree (outcome, frames, flushes).
fn both(
    a: &mut Guest,
    shared: &SharedMachine<GuestMemoryMmap<()>, RecordingFlush>,
    reqs: &[(u64, u64)],
) -> pvmmu::BatchOutcome {
    let reqs: Vec<MmuUpdate> = reqs
        .iter()
        .map(|&(ptr, val)| MmuUpdate { ptr, val })
        .collect();
    let want = a.m.mmu_update(a.c, &reqs, SELF).unwrap();
    let got = shared.mmu_update(a.c, &reqs, SELF).unwrap();
    assert_eq!(got, want, "{reqs:x?}");
    let mut b = shared.lock();
    assert_eq!(
        a.m.frames().iter().collect::<Vec<_>>(),
        b.frames().iter().collect::<Vec<_>>()
    );
    assert_eq!(a.m.flusher().take(), b.flusher().take());
    want
}

#[test]
fn io_memory_and_shared_frames_take_the_exclusive_path() {
    const MMIO: u64 = 0xfee00;
    const PCD: u64 = 0x10;
    let cfg = pvmmu::DomainConfig::new(1).vcpus(2).iomem(MMIO..=MMIO + 3);
    let (mut a, shared) = twins(cfg);
    let page = a.take();
    let pte = a.pte_addr(va_of(page.0));
    // I/O memory mapped, then replaced by RAM: neither is one word's change.
    let o = both(&mut a, &shared, &[(pte, (MMIO << 12) | P | RW)]);
    assert_eq!(o.result, Ok(()));
    let o = both(&mut a, &shared, &[(pte, (page.0 << 12) | P | RW)]);
    assert_eq!(o.result, Ok(()));
    // A frame the hypervisor shares keeps write-back caching: -EACCES.
    let frame = Mfn(0x900);
    a.m.share_frames(1, [frame], true).unwrap();
    shared.lock().share_frames(1, [frame], true).unwrap();
    let o = both(&mut a, &shared, &[(pte, (frame.0 << 12) | P | RW | PCD)]);
    assert_eq!(o.result, Err(Errno::EACCES));
    let o = both(&mut a, &shared, &[(pte, (frame.0 << 12) | P | RW)]);
    assert_eq!(o.result, Ok(()));
    assert_eq!(
        shared.lock().stats().concurrent,
        1,
        "only the plain shared-frame mapping"
    );
    a.audit();
    assert!(shared.into_inner().audit().is_ok());
}

#[test]
fn dropping_a_mapping_of_a_descriptor_page_in_use_empties_the_ldt_window() {
    let (mut a, shared) = twins(pvmmu::DomainConfig::new(1).vcpus(2));
    // A zeroed frame mapped read-only twice, in use as vCPU 0's LDT.
    let f = a.table_frame();
    let _ = shared.mmu_update(
        a.c,
        &[MmuUpdate {
            ptr: a.pte_addr(va_of(f.0)),
            val: (f.0 << 12) | P | A,
        }],
        SELF,
    );
    let alias = a.pte_addr(va_of(0x300));
    both(&mut a, &shared, &[(alias, (f.0 << 12) | P)]);
    let set_ldt = [MmuextOp::new(
        pvmmu_abi::mmu::MMUEXT_SET_LDT,
        va_of(f.0),
        16,
    )];
    assert_eq!(a.m.mmuext_op(a.c, &set_ldt, SELF).unwrap().result, Ok(()));
    assert_eq!(
        shared.lock().mmuext_op(a.c, &set_ldt, SELF).unwrap().result,
        Ok(())
    );
    assert_eq!(a.m.map_ldt_page(a.c, 0).unwrap(), Ok(f));
    assert_eq!(shared.lock().map_ldt_page(a.c, 0).unwrap(), Ok(f));
    a.m.flusher().take();
    shared.lock().flusher().take();
    // Dropping the alias empties the window (and flushes), as Xen's put_page_from_l1e.
    both(&mut a, &shared, &[(alias, 0)]);
    assert_eq!(shared.lock().ldt(a.c).mapped, [None; 16]);
    a.audit();
    assert!(shared.into_inner().audit().is_ok());
}

#[test]
fn a_stop_request_ends_a_concurrent_batch_after_its_first_entry_as_it_does_alone() {
    let cfg = pvmmu::DomainConfig::new(1).vcpus(2);
    let (mut a, shared) = twins(cfg);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    a.m.set_interrupt(Some(stop.clone()));
    shared.lock().set_interrupt(Some(stop));
    let pages: Vec<Mfn> = (0..3).map(|_| a.take()).collect();
    let reqs: Vec<(u64, u64)> = pages
        .iter()
        .map(|p| (a.pte_addr(va_of(p.0)), (p.0 << 12) | P))
        .collect();
    let o = both(&mut a, &shared, &reqs);
    assert_eq!((o.done, o.result), (1, Err(Errno::EINTR)));
    assert_eq!(shared.lock().stats().concurrent, 1);
}

/// Serves `mmu_update(args)` through `SharedMachine::hypercall_mmu_update` as an
/// embedder does: the concurrent part, then any exclusive rest at once, and the
/// re-issue after a preemption. Returns RAX and the route each step took.
fn serve_shared(
    shared: &SharedMachine<GuestMemoryMmap<()>, RecordingFlush>,
    c: Caller,
    mut args: [u64; 5],
) -> (i64, Vec<&'static str>) {
    let mut route = Vec::new();
    loop {
        match shared.hypercall_mmu_update(c, args).unwrap() {
            SharedCall::Done(rax) => {
                route.push("done");
                return (rax, route);
            }
            SharedCall::Preempted(next) => {
                route.push("preempted");
                args = next;
            }
            SharedCall::Exclusive(rest) => {
                route.push("exclusive");
                let r = shared
                    .lock()
                    .hypercall(c, HYPERVISOR_mmu_update, rest, &mut NoHandler)
                    .unwrap();
                match r.continuation {
                    Some(next) => args = next,
                    None => return (r.rax, route),
                }
            }
        }
    }
}

/// The same call through `Machine::hypercall` alone, re-issued after preemptions.
fn serve_alone(m: &mut M, c: Caller, mut args: [u64; 5]) -> i64 {
    loop {
        let r = m
            .hypercall(c, HYPERVISOR_mmu_update, args, &mut NoHandler)
            .unwrap();
        match r.continuation {
            Some(next) => args = next,
            None => return r.rax,
        }
    }
}

#[test]
fn the_guest_pointer_form_gives_what_machine_hypercall_gives() {
    use vm_memory::{Bytes, GuestAddress};
    const PDONE_SEED: u32 = 7;
    // (name, budget, pdone given, the route expected through the shared machine)
    type Scenario = (&'static str, Option<u64>, bool, &'static [&'static str]);
    let scenarios: [Scenario; 6] = [
        ("all concurrent", None, true, &["done"]),
        ("an M2P update in the middle", None, true, &["exclusive"]),
        ("a refused entry in the middle", None, true, &["exclusive"]),
        (
            "preempted twice",
            Some(8),
            true,
            &["preempted", "preempted", "done"],
        ),
        ("the batch remaps its own array", None, true, &["done"]),
        ("no pdone", None, false, &["exclusive"]),
    ];
    for (k, &(name, budget, with_pdone, route)) in scenarios.iter().enumerate() {
        let (mut a, tables, data) = world(3, 12);
        let (mut b, _, _) = world(3, 12);
        let (arr, arr2, pd) = (a.take(), a.take(), a.take());
        assert_eq!((b.take(), b.take(), b.take()), (arr, arr2, pd));
        let c = a.c;
        let remap = |i: u64, f: Mfn| MmuUpdate {
            ptr: tables[(i % 3) as usize].addr() + (i / 3 % 512) * 8,
            val: (f.0 << 12) | P | RW | A,
        };
        let mut reqs: Vec<MmuUpdate> = (0..20).map(|i| remap(i, data[i as usize % 12])).collect();
        let mut second = Vec::new();
        match k {
            1 | 5 => {
                reqs[9] = MmuUpdate {
                    ptr: data[0].addr() | MMU_MACHPHYS_UPDATE,
                    val: 0x42,
                }
            }
            // Another domain's frame: -EINVAL at entry 5, entries after it not run.
            2 => reqs[5].val = (DOM2_FIRST << 12) | P,
            4 => {
                // Entry 0 points the array's page at `arr2`, whose entry 1 differs:
                // entry 1 must be read through the new mapping.
                reqs[0] = MmuUpdate {
                    ptr: a.pte_addr(va_of(arr.0)),
                    val: (arr2.0 << 12) | P | RW | A,
                };
                second = reqs.clone();
                second[1] = remap(1, data[11]);
            }
            _ => {}
        }
        let bytes = |r: &[MmuUpdate]| r.iter().flat_map(|q| q.to_bytes()).collect::<Vec<u8>>();
        for m in [&a.m, &b.m] {
            let mem = m.memory();
            mem.write_slice(&bytes(&reqs), GuestAddress(arr.addr()))
                .unwrap();
            mem.write_slice(&bytes(&second), GuestAddress(arr2.addr()))
                .unwrap();
            mem.write_obj(PDONE_SEED, GuestAddress(pd.addr())).unwrap();
        }
        let pdone = if with_pdone { va_of(pd.0) } else { 0 };
        let args = [va_of(arr.0), reqs.len() as u64, pdone, SELF.into(), 0];
        a.m.set_preempt_budget(budget);
        b.m.set_preempt_budget(budget);
        let want = serve_alone(&mut a.m, c, args);
        let shared = SharedMachine::new(b.m);
        let (got, taken) = serve_shared(&shared, c, args);
        assert_eq!(got, want, "{name}");
        assert_eq!(taken, route, "{name}");
        let mut bm = shared.into_inner();
        let read_pdone = |m: &M| m.memory().read_obj::<u32>(GuestAddress(pd.addr())).unwrap();
        assert_eq!(read_pdone(&bm), read_pdone(&a.m), "{name}: *pdone");
        let expect_done = match k {
            // A fresh call (no continuation flag) counts from zero.
            2 => 5,
            5 => PDONE_SEED,
            _ => 20,
        };
        assert_eq!(read_pdone(&a.m), expect_done, "{name}: *pdone");
        if k == 4 {
            let slot = tables[1].addr();
            let frame = (a.read(slot) & 0x000f_ffff_ffff_f000) >> 12;
            assert_eq!(frame, data[11].0, "entry 1 read through the new mapping");
        }
        let kernel_l1 = Mfn::containing(a.pte_addr(va_of(arr.0)));
        let all: Vec<Mfn> = tables.iter().copied().chain([kernel_l1]).collect();
        assert_eq!(snapshot(&a.m, &all), snapshot(&bm, &all), "{name}");
        assert_eq!(
            a.m.frames().iter().collect::<Vec<_>>(),
            bm.frames().iter().collect::<Vec<_>>(),
            "{name}"
        );
        let served = bm.stats();
        assert_eq!(
            pvmmu::Stats {
                concurrent: 0,
                ..served
            },
            a.m.stats(),
            "{name}"
        );
        if k != 5 {
            assert!(served.concurrent > 0, "{name}: {served:?}");
        }
        assert_eq!(flush_all(&mut a.m, c), flush_all(&mut bm, c), "{name}");
        a.audit();
        assert!(bm.audit().is_ok());
    }
}
