//! The `shared_ops` harness: the operation sequences of [`crate::mmu_ops`] run twice,
//! once on a [`Machine`](pvmmu::Machine) and once through a [`SharedMachine`] (its
//! concurrent `mmu_update` path, everything else under its lock). The two must agree
//! after every operation: the outcome, every frame's bookkeeping and the flush requests
//! handed to the embedder; and at the end the contents of every frame.

use arbitrary::{Arbitrary, Unstructured};
use pvmmu::SharedMachine;

use crate::ops::{Fixture, HarnessMachine, Op};
use crate::xen_model::{ModelOp, Outcome, execute};

/// Runs `op` through the shared machine: `mmu_update` by its concurrent path, the rest
/// under its lock.
fn execute_shared(
    shared: &SharedMachine<crate::ops::HarnessMemory, pvmmu::RecordingFlush>,
    op: &ModelOp,
) -> Outcome {
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
        let want = execute(&mut a.m, &mop);
        let got = execute_shared(&shared, &mop);
        assert_eq!(got, want, "operation {i}: {mop:x?}");
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
