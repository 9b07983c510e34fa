//! Preemptible batched hypercalls, as Xen's continuations: with a work budget, a long
//! `mmu_update`, `mmuext_op` or `multicall` made through `Machine::hypercall` stops
//! between entries, writes what it did to `*pdone`, and hands back the arguments it is
//! to be re-issued with; re-issuing until it completes leaves exactly what one
//! unpreempted call leaves. Multicall entries and the slice forms never stop.

mod support;

use pvmmu::{MULTICALL_ENTRY_UNITS, Machine, Mfn, NoHandler, RecordingFlush};
use pvmmu_abi::hypercall::{HYPERVISOR_mmu_update, HYPERVISOR_mmuext_op, HYPERVISOR_multicall};
use pvmmu_abi::mmu::{MMU_UPDATE_PREEMPTED, MMUEXT_PIN_L1_TABLE, MMUEXT_UNPIN_TABLE};
use pvmmu_abi::{MmuUpdate, MmuextOp, MulticallEntry};
use support::*;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

type M = Machine<GuestMemoryMmap<()>, RecordingFlush>;

fn write(g: &Guest, at: Mfn, bytes: &[u8]) {
    g.m.memory()
        .write_slice(bytes, GuestAddress(at.addr()))
        .unwrap();
}

/// Re-issues `nr` from `args` until it completes; returns the final RAX and every
/// continuation's arguments.
fn run_to_completion(g: &mut Guest, nr: u64, mut args: [u64; 5]) -> (i64, Vec<[u64; 5]>) {
    let mut seen = Vec::new();
    loop {
        let r = g.m.hypercall(g.c, nr, args, &mut NoHandler).unwrap();
        match r.continuation {
            Some(next) => {
                seen.push(next);
                args = next;
            }
            None => return (r.rax, seen),
        }
        assert!(seen.len() < 10_000, "no progress");
    }
}

/// 300 L1 updates mapping data frames (each in its own slot of the guest's L1).
fn requests(g: &mut Guest) -> Vec<MmuUpdate> {
    let va = va_of(0x300);
    let pte = g.pte_addr(va);
    (0..300u64)
        .map(|i| {
            let f = g.take();
            MmuUpdate {
                ptr: pte + (i % 64) * 8,
                val: (f.0 << 12) | P | RW,
            }
        })
        .collect()
}

#[test]
fn a_long_mmu_update_stops_and_is_continued_to_the_same_end() {
    let mut g = guest();
    let mut twin = guest();
    let reqs = requests(&mut g);
    let reqs_twin = requests(&mut twin);
    assert_eq!(reqs, reqs_twin);
    let buf = g.take();
    let pdone = g.take();
    let _ = (twin.take(), twin.take());
    let bytes: Vec<u8> = reqs.iter().flat_map(|r| r.to_bytes()).collect();
    write(&g, buf, &bytes);
    g.m.set_preempt_budget(Some(40));
    let args = [va_of(buf.0), 300, va_of(pdone.0), u64::from(SELF), 0];
    let first =
        g.m.hypercall(g.c, HYPERVISOR_mmu_update, args, &mut NoHandler)
            .unwrap();
    let next = first.continuation.expect("stopped");
    // The rest of the array, the count left with the preempted flag, *pdone = done.
    let done: u32 = g.m.memory().read_obj(GuestAddress(pdone.addr())).unwrap();
    assert!(done > 0 && done < 300, "done {done}");
    assert_eq!(
        next[0],
        va_of(buf.0) + u64::from(done) * MmuUpdate::SIZE as u64
    );
    assert_eq!(next[1], u64::from((300 - done) | MMU_UPDATE_PREEMPTED));
    assert_eq!(next[2..4], args[2..4]);
    let (rax, rest) = run_to_completion(&mut g, HYPERVISOR_mmu_update, next);
    assert_eq!(rax, 0);
    assert!(
        rest.len() >= 2,
        "a budget of 40 stops 300 entries more than twice"
    );
    let done: u32 = g.m.memory().read_obj(GuestAddress(pdone.addr())).unwrap();
    assert_eq!(done, 300, "the count carried across continuations");
    // The same as one unpreempted call.
    let o = twin.m.mmu_update(twin.c, &reqs_twin, SELF).unwrap();
    assert_eq!((o.done, o.result, o.preempted), (300, Ok(()), false));
    assert!(g.frame_state() == twin.frame_state(), "frame tables differ");
    let pte = g.pte_addr(va_of(0x300));
    for k in 0..64 {
        assert_eq!(g.read(pte + k * 8), twin.read(pte + k * 8), "entry {k}");
    }
    g.audit();
}

#[test]
fn a_failure_after_a_continuation_counts_from_the_start() {
    let mut g = guest();
    let mut reqs = requests(&mut g);
    // Entry 250 maps the L4 writable: -EBUSY there.
    reqs[250].val = (g.l4.0 << 12) | P | RW;
    let buf = g.take();
    let pdone = g.take();
    let bytes: Vec<u8> = reqs.iter().flat_map(|r| r.to_bytes()).collect();
    write(&g, buf, &bytes);
    g.m.set_preempt_budget(Some(50));
    let args = [va_of(buf.0), 300, va_of(pdone.0), u64::from(SELF), 0];
    let (rax, seen) = run_to_completion(&mut g, HYPERVISOR_mmu_update, args);
    assert_eq!(rax, pvmmu::Errno::EBUSY.neg());
    assert!(!seen.is_empty());
    let done: u32 = g.m.memory().read_obj(GuestAddress(pdone.addr())).unwrap();
    assert_eq!(done, 250);
    g.audit();
}

#[test]
fn mmuext_op_and_multicall_are_continued_too() {
    let mut g = guest();
    // 40 pins then 40 unpins of fresh L1s.
    let l1s: Vec<Mfn> = (0..40).map(|_| g.table_frame()).collect();
    let ops: Vec<MmuextOp> = l1s
        .iter()
        .map(|f| MmuextOp::new(MMUEXT_PIN_L1_TABLE, f.0, 0))
        .chain(
            l1s.iter()
                .map(|f| MmuextOp::new(MMUEXT_UNPIN_TABLE, f.0, 0)),
        )
        .collect();
    let buf = g.take();
    let _ = g.take();
    let _ = g.take();
    let pdone = g.take();
    let bytes: Vec<u8> = ops.iter().flat_map(|o| o.to_bytes()).collect();
    write(&g, buf, &bytes);
    g.m.set_preempt_budget(Some(20));
    let args = [va_of(buf.0), 80, va_of(pdone.0), u64::from(SELF), 0];
    let (rax, seen) = run_to_completion(&mut g, HYPERVISOR_mmuext_op, args);
    assert_eq!(rax, 0);
    assert!(!seen.is_empty(), "80 operations against a budget of 20");
    let done: u32 = g.m.memory().read_obj(GuestAddress(pdone.addr())).unwrap();
    assert_eq!(done, 80);
    for f in &l1s {
        assert_eq!(g.info(*f).type_count, 0, "unpinned");
    }
    // A multicall of 100 entries, each an mmu_update of one entry (never stopped on
    // its own): the list is continued between entries, every result written once.
    let pte = g.pte_addr(va_of(0x300));
    let f = g.take();
    let one = g.take();
    write(
        &g,
        one,
        &MmuUpdate {
            ptr: pte,
            val: (f.0 << 12) | P | RW,
        }
        .to_bytes(),
    );
    let upper = g.take();
    let entries: Vec<u8> = (0..100)
        .flat_map(|_| {
            MulticallEntry {
                op: HYPERVISOR_mmu_update,
                result: 0x55,
                args: [va_of(one.0), 1, 0, u64::from(SELF), 0, 0],
            }
            .to_bytes()
        })
        .collect();
    assert!(entries.len() <= 4096 * 2);
    let list = g.take();
    assert_eq!(list.0 + 1, upper.0, "two contiguous frames for the list");
    write(&g, list, &entries);
    g.m.set_preempt_budget(Some(10 * MULTICALL_ENTRY_UNITS));
    let args = [va_of(list.0), 100, 0, 0, 0];
    let (rax, seen) = run_to_completion(&mut g, HYPERVISOR_multicall, args);
    assert_eq!(rax, 0);
    assert!(seen.len() >= 5, "{} continuations", seen.len());
    assert!(
        seen.iter()
            .all(|a| a[0] > va_of(list.0) && a[1] < 100 && a[2] == 0)
    );
    for i in 0..100u64 {
        let result: u64 =
            g.m.memory()
                .read_obj(GuestAddress(list.addr() + i * 64 + 8))
                .unwrap();
        assert_eq!(result, 0, "entry {i} ran");
    }
    assert_eq!(g.translate(va_of(0x300)), Some(f.addr()));
    // No budget: nothing stops.
    g.m.set_preempt_budget(None);
    let (_, seen) = run_to_completion(&mut g, HYPERVISOR_multicall, args);
    assert!(seen.is_empty());
    g.audit();
}

#[test]
fn slice_forms_never_stop() {
    let mut g = guest();
    let reqs = requests(&mut g);
    g.m.set_preempt_budget(Some(1));
    let o = g.m.mmu_update(g.c, &reqs, SELF).unwrap();
    assert_eq!((o.done, o.result, o.preempted), (300, Ok(()), false));
    let _: Option<&M> = None;
    g.audit();
}
