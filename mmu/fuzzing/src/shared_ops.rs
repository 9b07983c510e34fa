//! The `shared_ops` harness: the operation sequences of [`crate::mmu_ops`] run twice,
//! once on a [`Machine`](pvmmu::Machine) and once through a [`SharedMachine`] (its
//! concurrent `mmu_update` path, everything else under its lock). The two must agree
//! after every operation: the outcome, every frame's bookkeeping and the flush requests
//! handed to the embedder; and at the end the contents of every frame. Every other
//! `mmu_update` goes through the guest-pointer forms instead
//! ([`SharedMachine::hypercall_mmu_update`] with its exclusive rest served as an
//! embedder does, against `Machine::hypercall`): the requests are written into a data
//! frame of the caller's, read through its page tables (which the batch itself may
//! change), and RAX and `*pdone` must agree too.

use arbitrary::{Arbitrary, Unstructured};
use pvmmu::{Caller, Mfn, NoHandler, PageType, SharedCall, SharedMachine};
use pvmmu_abi::MmuUpdate;
use pvmmu_abi::hypercall::HYPERVISOR_mmu_update;
use vm_memory::{Bytes, GuestAddress};

use crate::ops::{D1, D2, Fixture, HarnessMachine, KBASE, Op};
use crate::xen_model::{ModelOp, Outcome, execute};

type Shared = SharedMachine<crate::ops::HarnessMemory, pvmmu::RecordingFlush>;

/// Where the guest-pointer form puts a domain's request array (and `*pdone`, at
/// `PDONE`): its last frame, mapped at `KBASE + frame * 4096` by the fixture's tree.
fn array_frame(dom: u16) -> u64 {
    if dom == 1 { D1.1 - 1 } else { D2.1 - 1 }
}
const PDONE: u64 = 0xff0;

/// Runs `mmu_update(reqs)` through the guest-pointer forms on both machines, when the
/// array frame can hold it (a frame the guest could write: no type but writable);
/// returns RAX and `*pdone` of each, or `None` when not run.
fn guest_form(
    a: &mut HarnessMachine,
    shared: &Shared,
    caller: Caller,
    reqs: &[MmuUpdate],
    foreigndom: u32,
) -> Option<((i64, u32), (i64, u32))> {
    let frame = array_frame(caller.dom);
    let writable = a
        .frames()
        .get(Mfn(frame))
        .is_some_and(|p| matches!(p.ty, PageType::None | PageType::Writable));
    if !writable {
        return None;
    }
    let bytes: Vec<u8> = reqs.iter().flat_map(|r| r.to_bytes()).collect();
    let at = GuestAddress(frame << 12);
    for m in [a.memory(), shared.read().memory()] {
        m.write_slice(&bytes, at).ok()?;
        m.write_obj(0xffff_ffffu32, GuestAddress(at.0 + PDONE))
            .ok()?;
    }
    let va = KBASE + (frame << 12);
    let args = [va, reqs.len() as u64, va + PDONE, u64::from(foreigndom), 0];
    let pdone = |m: &HarnessMachine| m.memory().read_obj::<u32>(GuestAddress(at.0 + PDONE));
    let want = a
        .hypercall(caller, HYPERVISOR_mmu_update, args, &mut NoHandler)
        .map_or(i64::MIN, |r| r.rax);
    let mut next = args;
    let got = loop {
        match shared.hypercall_mmu_update(caller, next) {
            Ok(SharedCall::Done(rax)) => break rax,
            Ok(SharedCall::Preempted(more)) => next = more,
            Ok(SharedCall::Exclusive(rest)) => {
                break shared
                    .lock()
                    .hypercall(caller, HYPERVISOR_mmu_update, rest, &mut NoHandler)
                    .map_or(i64::MIN, |r| r.rax);
            }
            Err(_) => break i64::MIN,
        }
    };
    let b = shared.lock();
    Some(((got, pdone(&b).ok()?), (want, pdone(a).ok()?)))
}

/// Runs `op` through the shared machine: `mmu_update` by its concurrent path, the rest
/// under its lock.
fn execute_shared(shared: &Shared, op: &ModelOp) -> Outcome {
    match op {
        ModelOp::MmuUpdate {
            caller,
            reqs,
            foreigndom,
        } => shared
            .mmu_update(*caller, reqs, *foreigndom)
            .map_or(Outcome::NoSuchCaller, Outcome::Batch),
        _ => execute(&mut shared.lock(), op),
    }
}

fn memory(m: &HarnessMachine) -> Vec<u8> {
    crate::ops::read_memory(m.memory())
}

/// The harness: decode `data` as [`crate::mmu_ops`] does and check that the two
/// machines agree; panics where they first differ.
///
/// ```
/// pvmmu_fuzzing::shared_ops(&[0u8; 64]);
/// pvmmu_fuzzing::shared_ops(b"arbitrary bytes decode to operations");
/// ```
pub fn shared_ops(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let Ok(ops) = Vec::<Op>::arbitrary(&mut u) else {
        return;
    };
    let mut a = Fixture::new();
    let shared = SharedMachine::new(Fixture::new().m);
    for (i, op) in ops.iter().take(64).enumerate() {
        // Decoded against the plain machine; the shared one is in the same state.
        let Some(mop) = a.decode(op) else {
            continue;
        };
        let guest = match &mop {
            ModelOp::MmuUpdate {
                caller,
                reqs,
                foreigndom,
            } if i % 2 == 1 => guest_form(&mut a.m, &shared, *caller, reqs, *foreigndom),
            _ => None,
        };
        if let Some((got, want)) = guest {
            assert_eq!(got, want, "operation {i} (guest form): {mop:x?}");
        } else {
            let want = execute(&mut a.m, &mop);
            let got = execute_shared(&shared, &mop);
            assert_eq!(got, want, "operation {i}: {mop:x?}");
        }
        let mut b = shared.lock();
        let fa: Vec<_> = a.m.frames().iter().collect();
        let fb: Vec<_> = b.frames().iter().collect();
        if let Some(k) = (0..fa.len()).find(|&k| fa[k] != fb[k]) {
            panic!(
                "operation {i} ({mop:x?}): frame {:#x} is {:?} through SharedMachine, {:?} alone",
                k, fb[k], fa[k]
            );
        }
        assert_eq!(b.stats().applied, a.m.stats().applied, "operation {i}");
        assert_eq!(
            b.flusher().take(),
            a.m.flusher().take(),
            "operation {i} ({mop:x?}): flush requests"
        );
    }
    let b = shared.into_inner();
    assert!(memory(&a.m) == memory(&b), "memory differs at the end");
    if let Err(e) = b.audit() {
        panic!("audit of the shared machine: {e}");
    }
}
