//! Preemptible validation (Xen's `PGT_partial`, the XSA-45/58/290/299/309/310 class):
//! pinning, installing or hooking in a large tree under a preemption budget stops
//! part-way and is re-issued as a continuation; the partial state holds exactly one
//! general and one type reference (the audit checks every slice); resuming to the end
//! gives what one unpreempted call gives; a failure found in a later slice releases
//! what every earlier slice took; another caller may finish the work; teardown of an
//! abandoned partial tree frees everything.

mod support;

use std::ops::ControlFlow;

use pvmmu::{Errno, Level, Mfn, NoHandler, Pte, PteFlags, VaRange, Visit, Walker};
use pvmmu_abi::hypercall::{HYPERVISOR_mmu_update, HYPERVISOR_mmuext_op};
use pvmmu_abi::mmu::{
    MMUEXT_NEW_BASEPTR, MMUEXT_PIN_L2_TABLE, MMUEXT_PIN_L4_TABLE, MMUEXT_UNPIN_TABLE,
};
use pvmmu_abi::{MmuUpdate, MmuextOp};
use support::*;
use vm_memory::{Bytes, GuestAddress};

/// Frames outside the KBASE mapping (never mapped writable) for the big tree.
const TREE_FIRST: u64 = 0x900;
const TREE_END: u64 = 0xd00;
/// L1 tables in the big tree (each maps 512 data frames read-write).
const L1S: u64 = 200;

struct Tree {
    l4: Mfn,
    l3: Mfn,
    l2s: Vec<Mfn>,
}

/// Builds, raw in memory, an unvalidated tree mapping `L1S * 2 MiB` from VA 1 GiB with
/// 4 KiB pages onto domain 1's data frames (read-write), in frames of domain 1 that
/// nothing maps.
fn big_tree(g: &mut Guest) -> Tree {
    g.m.assign_frames(1, (TREE_FIRST..TREE_END).map(Mfn))
        .unwrap();
    let mut next = TREE_FIRST;
    let mut alloc = |_: Level| {
        next += 1;
        (next <= TREE_END).then_some(Mfn(next - 1))
    };
    let l4 = alloc(Level::L4).unwrap();
    let range = VaRange::new(1 << 30, L1S << 21).unwrap();
    let data: Vec<u64> = g.data.iter().map(|m| m.0).collect();
    let mut k = 0usize;
    let mut l2s = Vec::new();
    let r = Walker::new(g.m.memory()).apply_to_page_range(l4, range, &mut alloc, |v| {
        if let Visit::Ptes(b) = v {
            for i in 0..b.len() {
                let f = data[k % data.len()];
                k += 1;
                b.set(i, Pte::new(Mfn(f), PteFlags::PRESENT | PteFlags::RW));
            }
        }
        ControlFlow::<()>::Continue(())
    });
    assert!(r.unwrap().is_continue());
    let entry = |t: Mfn, i: u64| -> u64 {
        g.m.memory()
            .read_obj(GuestAddress(t.addr() + i * 8))
            .unwrap()
    };
    let l3 = Pte(entry(l4, 0)).mfn();
    for i in 1..=L1S.div_ceil(512) {
        l2s.push(Pte(entry(l3, i)).mfn());
    }
    Tree { l4, l3, l2s }
}

fn write_ops(g: &mut Guest, ops: &[MmuextOp]) -> [u64; 5] {
    let buf = g.take();
    let pdone = g.take();
    let bytes: Vec<u8> = ops.iter().flat_map(|o| o.to_bytes()).collect();
    g.m.memory()
        .write_slice(&bytes, GuestAddress(buf.addr()))
        .unwrap();
    [
        va_of(buf.0),
        ops.len() as u64,
        va_of(pdone.0),
        u64::from(SELF),
        0,
    ]
}

/// Issues the call once, then its continuations until it completes, auditing the
/// machine between every two slices; returns RAX and the number of slices.
fn run_audited(g: &mut Guest, nr: u64, mut args: [u64; 5]) -> (i64, usize) {
    let mut slices = 0;
    loop {
        let r = g.m.hypercall(g.c, nr, args, &mut NoHandler).unwrap();
        slices += 1;
        if let Err(e) = g.m.audit() {
            panic!("after slice {slices}: {e}");
        }
        match r.continuation {
            Some(next) => args = next,
            None => return (r.rax, slices),
        }
        assert!(slices < 100_000, "no progress");
    }
}

fn partial_frames(g: &Guest) -> Vec<(Mfn, u16)> {
    g.m.frames()
        .iter()
        .filter_map(|(m, p)| p.partial.map(|k| (m, k)))
        .collect()
}

#[test]
fn xsa_45_a_large_pin_stops_part_way_and_resumes_to_what_one_call_gives() {
    let mut g = guest();
    let mut twin = guest();
    let tree = big_tree(&mut g);
    let twin_tree = big_tree(&mut twin);
    assert_eq!(tree.l4, twin_tree.l4);
    let pin = [MmuextOp::new(MMUEXT_PIN_L4_TABLE, tree.l4.0, 0)];
    let args = write_ops(&mut g, &pin);
    let _ = (twin.take(), twin.take());
    g.m.set_preempt_budget(Some(8192));
    // The first slice leaves the L4 and its L3 and one L2 partial.
    let r =
        g.m.hypercall(g.c, HYPERVISOR_mmuext_op, args, &mut NoHandler)
            .unwrap();
    let next = r.continuation.expect("a pin of 102,400 entries stops");
    assert_eq!(next[0], args[0], "the same operation, re-issued");
    assert_eq!(
        next[1],
        args[1] | u64::from(pvmmu_abi::mmu::MMU_UPDATE_PREEMPTED)
    );
    let partial = partial_frames(&g);
    assert!(partial.iter().any(|(m, _)| *m == tree.l4), "{partial:x?}");
    assert!(partial.iter().any(|(m, _)| *m == tree.l3), "{partial:x?}");
    let l4 = g.info(tree.l4);
    assert_eq!((l4.type_count, l4.validated, l4.pinned), (1, false, false));
    g.audit();
    let (rax, slices) = run_audited(&mut g, HYPERVISOR_mmuext_op, next);
    assert_eq!(rax, 0);
    assert!(slices > 5, "{slices} slices");
    assert!(partial_frames(&g).is_empty());
    let o = twin.m.mmuext_op(twin.c, &pin, SELF).unwrap();
    assert_eq!((o.done, o.result), (1, Ok(())));
    assert!(g.frame_state() == twin.frame_state(), "frame tables differ");
    for t in [tree.l4, tree.l3] {
        for i in 0..512 {
            assert_eq!(g.read(t.addr() + i * 8), twin.read(t.addr() + i * 8));
        }
    }
    // Unpinning gives every reference back.
    let o = g.m.mmuext_op(
        g.c,
        &[MmuextOp::new(MMUEXT_UNPIN_TABLE, tree.l4.0, 0)],
        SELF,
    );
    assert_eq!(o.unwrap().result, Ok(()));
    teardown(g);
}

#[test]
fn a_new_base_pointer_and_a_hooked_in_subtree_are_preemptible_too() {
    let mut g = guest();
    let tree = big_tree(&mut g);
    g.m.set_preempt_budget(Some(8192));
    // The L3 hooked into slot 1 of the guest's validated L4 by mmu_update.
    let buf = g.take();
    let pdone = g.take();
    let req = MmuUpdate {
        ptr: g.l4.addr() + 8,
        val: (tree.l3.0 << 12) | P | RW | US,
    };
    g.m.memory()
        .write_slice(&req.to_bytes(), GuestAddress(buf.addr()))
        .unwrap();
    let args = [va_of(buf.0), 1, va_of(pdone.0), u64::from(SELF), 0];
    let (rax, slices) = run_audited(&mut g, HYPERVISOR_mmu_update, args);
    assert_eq!(rax, 0);
    assert!(slices > 5, "{slices} slices");
    let done: u32 = g.m.memory().read_obj(GuestAddress(pdone.addr())).unwrap();
    assert_eq!(done, 1);
    assert!(g.info(tree.l3).validated);
    // Unhook it, then install the big L4 as the kernel root.
    assert_eq!(g.update(&[(g.l4.addr() + 8, 0)]).result, Ok(()));
    assert!(
        !g.info(tree.l3).validated,
        "the last reference de-validated it"
    );
    // The op is read through the current root at every slice: the root changes only
    // when the validation has completed.
    let args = write_ops(&mut g, &[MmuextOp::new(MMUEXT_NEW_BASEPTR, tree.l4.0, 0)]);
    let (rax, slices) = run_audited(&mut g, HYPERVISOR_mmuext_op, args);
    assert_eq!(rax, 0);
    assert!(slices > 5, "{slices} slices");
    assert_eq!(g.m.kernel_root(g.c), Some(tree.l4));
    assert!(partial_frames(&g).is_empty());
    g.audit();
}

/// The last L1 of the tree maps the L4 itself writable: found late, refused up the
/// tree (the L1 cannot be validated, so neither can its L2, L3, L4).
fn poison(g: &mut Guest, tree: &Tree) {
    let last_l2 = *tree.l2s.last().unwrap();
    let l1 = Pte(g.read(last_l2.addr() + ((L1S - 1) % 512) * 8)).mfn();
    g.write_raw(l1.addr() + 511 * 8, (tree.l4.0 << 12) | P | RW);
}

#[test]
fn xsa_58_a_failure_in_a_later_slice_releases_what_every_slice_took() {
    let mut g = guest();
    let tree = big_tree(&mut g);
    poison(&mut g, &tree);
    let mut twin = guest();
    let twin_tree = big_tree(&mut twin);
    poison(&mut twin, &twin_tree);
    let pin = [MmuextOp::new(MMUEXT_PIN_L4_TABLE, tree.l4.0, 0)];
    let want = twin.m.mmuext_op(twin.c, &pin, SELF).unwrap().result;
    assert_eq!(want, Err(Errno::EBUSY), "the L1's -EBUSY, up the tree");
    let args = write_ops(&mut g, &pin);
    let before = g.counts();
    g.m.set_preempt_budget(Some(8192));
    let (rax, slices) = run_audited(&mut g, HYPERVISOR_mmuext_op, args);
    assert!(slices > 5, "{slices} slices");
    assert_eq!(rax, Errno::EBUSY.neg(), "the errno of one unpreempted call");
    assert!(partial_frames(&g).is_empty());
    assert!(
        g.counts() == before,
        "every reference of every slice given back"
    );
    teardown(g);
}

#[test]
fn xsa_299_another_caller_finishes_an_interrupted_validation() {
    let mut g = guest();
    let tree = big_tree(&mut g);
    let args = write_ops(&mut g, &[MmuextOp::new(MMUEXT_PIN_L4_TABLE, tree.l4.0, 0)]);
    g.m.set_preempt_budget(Some(8192));
    let r =
        g.m.hypercall(g.c, HYPERVISOR_mmuext_op, args, &mut NoHandler)
            .unwrap();
    let next = r.continuation.expect("stopped");
    // While it is partial, the L4 takes no other type: not writable (-EBUSY), not
    // writable through mmu_update (it is no validated table: -EINVAL).
    let pte = g.pte_addr(va_of(g.data[0].0));
    let o = g.update(&[(pte, (tree.l4.0 << 12) | P | RW)]);
    assert_refused(o, Errno::EBUSY, 0);
    let o = g.update(&[(tree.l4.addr(), 0)]);
    assert_refused(o, Errno::EINVAL, 0);
    // The first L2 is (at least partly) done; pin it from the slice form, which is
    // never preempted: it finishes that L2's validation and owns its type reference.
    let l2 = tree.l2s[0];
    let o =
        g.m.mmuext_op(g.c, &[MmuextOp::new(MMUEXT_PIN_L2_TABLE, l2.0, 0)], SELF);
    assert_eq!(o.unwrap().result, Ok(()));
    assert!(g.info(l2).validated && g.info(l2).pinned);
    g.audit();
    // The re-issued pin completes; the L2 now has two type references (pin, L3 entry).
    let (rax, _) = run_audited(&mut g, HYPERVISOR_mmuext_op, next);
    assert_eq!(rax, 0);
    assert_eq!(g.info(l2).type_count, 2);
    assert!(g.info(tree.l4).pinned);
    teardown(g);
}

#[test]
fn xsa_310_teardown_frees_an_abandoned_partial_tree() {
    let mut g = guest();
    let tree = big_tree(&mut g);
    let args = write_ops(&mut g, &[MmuextOp::new(MMUEXT_PIN_L4_TABLE, tree.l4.0, 0)]);
    g.m.set_preempt_budget(Some(8192));
    let r =
        g.m.hypercall(g.c, HYPERVISOR_mmuext_op, args, &mut NoHandler)
            .unwrap();
    assert!(r.continuation.is_some());
    // One more slice, then the guest never comes back.
    let r =
        g.m.hypercall(g.c, HYPERVISOR_mmuext_op, args, &mut NoHandler)
            .unwrap();
    assert!(r.continuation.is_some());
    assert!(!partial_frames(&g).is_empty());
    teardown(g);
}

#[test]
fn xsa_309_linear_counters_persist_across_a_resumed_validation() {
    let mut g = guest();
    let tree = big_tree(&mut g);
    // Slot 2 of the big L4: the guest's own (validated) L4, read-only: a linear entry,
    // validated in a later slice than slot 0's big subtree.
    g.write_raw(tree.l4.addr() + 2 * 8, (g.l4.0 << 12) | P);
    let args = write_ops(&mut g, &[MmuextOp::new(MMUEXT_PIN_L4_TABLE, tree.l4.0, 0)]);
    g.m.set_preempt_budget(Some(8192));
    let (rax, slices) = run_audited(&mut g, HYPERVISOR_mmuext_op, args);
    assert_eq!((rax, slices > 5), (0, true));
    // The audit recounted both counters at every slice; at the end one linear use each.
    assert_eq!((g.info(tree.l4).linear, g.info(g.l4).linear), (1, -1));
    // So the guest's L4 cannot take a same-level entry of its own (XSA-240 chains).
    let o = g.update(&[(g.l4.addr() + 3 * 8, (tree.l4.0 << 12) | P)]);
    assert_refused(o, Errno::EINVAL, 0);
    teardown(g);
}

/// Pins the big tree without a budget, then sets the budget.
fn pinned_tree(g: &mut Guest) -> Tree {
    let tree = big_tree(g);
    let pin = [MmuextOp::new(MMUEXT_PIN_L4_TABLE, tree.l4.0, 0)];
    assert_eq!(g.m.mmuext_op(g.c, &pin, SELF).unwrap().result, Ok(()));
    g.m.set_preempt_budget(Some(8192));
    tree
}

#[test]
fn xsa_45_a_large_unpin_finishes_in_the_vcpus_next_calls() {
    let mut g = guest();
    let tree = pinned_tree(&mut g);
    let mut twin = guest();
    let _ = pinned_tree(&mut twin);
    let unpin = [MmuextOp::new(MMUEXT_UNPIN_TABLE, tree.l4.0, 0)];
    let o = twin.m.mmuext_op(twin.c, &unpin, SELF).unwrap();
    assert_eq!(o.result, Ok(()));
    let _ = (twin.take(), twin.take(), twin.take(), twin.take());
    // The unpin itself completes (done 1, RAX 0) with the de-validation parked.
    let args = write_ops(&mut g, &unpin);
    let r =
        g.m.hypercall(g.c, HYPERVISOR_mmuext_op, args, &mut NoHandler)
            .unwrap();
    assert_eq!((r.rax, r.continuation), (0, None));
    // The L4 itself is done (its one entry was released last), but its L3 and L2
    // stopped part-way, holding what they still hold.
    assert!(!g.info(tree.l4).pinned);
    let parked = partial_frames(&g);
    assert!(parked.iter().any(|(m, _)| *m == tree.l3), "{parked:x?}");
    g.audit();
    // The vCPU's next mmuext_op finishes it first, in slices, before its own ops.
    let flush = write_ops(
        &mut g,
        &[MmuextOp::new(pvmmu_abi::mmu::MMUEXT_TLB_FLUSH_LOCAL, 0, 0)],
    );
    let (rax, slices) = run_audited(&mut g, HYPERVISOR_mmuext_op, flush);
    assert_eq!(rax, 0);
    assert!(slices > 3, "{slices} slices");
    assert!(partial_frames(&g).is_empty());
    assert!(
        g.counts() == twin.counts(),
        "the same as one unpreempted unpin"
    );
    teardown(g);
}

#[test]
fn xsa_299_a_repin_resumes_a_parked_de_validation_as_validation() {
    let mut g = guest();
    let tree = pinned_tree(&mut g);
    let mut twin = guest();
    let _ = pinned_tree(&mut twin);
    let unpin = [MmuextOp::new(MMUEXT_UNPIN_TABLE, tree.l4.0, 0)];
    let args = write_ops(&mut g, &unpin);
    let _ = (twin.take(), twin.take());
    let r =
        g.m.hypercall(g.c, HYPERVISOR_mmuext_op, args, &mut NoHandler)
            .unwrap();
    assert_eq!(r.rax, 0);
    assert!(g.info(tree.l3).partial.is_some());
    // Another vCPU pins it again: the interrupted de-validation is undone by resuming
    // validation; the parked work then finds nothing owed.
    let other = pvmmu::Caller::new(1, 1);
    let pin = [MmuextOp::new(MMUEXT_PIN_L4_TABLE, tree.l4.0, 0)];
    assert_eq!(g.m.mmuext_op(other, &pin, SELF).unwrap().result, Ok(()));
    g.audit();
    let o = g.m.mmuext_op(g.c, &[], SELF).unwrap();
    assert_eq!((o.done, o.result, o.preempted), (0, Ok(()), false));
    assert!(partial_frames(&g).is_empty());
    assert!(g.counts() == twin.counts(), "as pinned once");
    teardown(g);
}

#[test]
fn xsa_310_teardown_frees_a_parked_de_validation() {
    let mut g = guest();
    let tree = pinned_tree(&mut g);
    let args = write_ops(&mut g, &[MmuextOp::new(MMUEXT_UNPIN_TABLE, tree.l4.0, 0)]);
    let r =
        g.m.hypercall(g.c, HYPERVISOR_mmuext_op, args, &mut NoHandler)
            .unwrap();
    assert_eq!(r.rax, 0);
    assert!(!partial_frames(&g).is_empty());
    // The vCPU never calls again.
    teardown(g);
}
