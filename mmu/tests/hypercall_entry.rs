//! The register-ABI entry `Machine::hypercall`: which numbers the library serves and
//! which reach the embedder's handler, root changes reported to the embedder, and the
//! batch bytes recorded for traces.

mod support;

use pvmmu::{Caller, Errno, HypercallResult, Machine, NoHandler, RecordingFlush, Roots};
use pvmmu_abi::hypercall::{
    HYPERVISOR_console_io, HYPERVISOR_mmu_update, HYPERVISOR_mmuext_op, HYPERVISOR_multicall,
    HYPERVISOR_update_va_mapping, HYPERVISOR_vm_assist,
};
use pvmmu_abi::mmu::{MMUEXT_NEW_BASEPTR, MMUEXT_NEW_USER_BASEPTR, MMUEXT_PIN_L4_TABLE};
use pvmmu_abi::{MmuUpdate, MmuextOp, MulticallEntry};
use support::*;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

type M = Machine<GuestMemoryMmap<()>, RecordingFlush>;

fn write(g: &Guest, at: pvmmu::Mfn, bytes: &[u8]) {
    g.m.memory()
        .write_slice(bytes, GuestAddress(at.addr()))
        .unwrap();
}

#[test]
fn library_numbers_are_served_and_the_rest_reach_the_handler() {
    let mut g = guest();
    let mut seen = Vec::new();
    let mut handler = |_: &mut M, c: Caller, nr: u64, a: [u64; 5]| {
        seen.push((c, nr, a));
        42
    };
    let c = g.c;
    // vm_assist is the library's: the handler never sees it.
    let r =
        g.m.hypercall(c, HYPERVISOR_vm_assist, [0, 2, 0, 0, 0], &mut handler);
    assert_eq!(r.unwrap().rax, 0);
    // An unknown type is the library's -EINVAL, not the handler's answer.
    let r =
        g.m.hypercall(c, HYPERVISOR_vm_assist, [0, 63, 0, 0, 0], &mut handler);
    assert_eq!(r.unwrap().rax, Errno::EINVAL.neg());
    let r =
        g.m.hypercall(c, HYPERVISOR_console_io, [1, 2, 3, 4, 5], &mut handler);
    assert_eq!(r.unwrap().rax, 42);
    assert_eq!(seen, vec![(c, HYPERVISOR_console_io, [1, 2, 3, 4, 5])]);
    // Without a handler, other numbers are -ENOSYS.
    let r = g.m.hypercall(c, 999, [0; 5], &mut NoHandler).unwrap();
    assert_eq!(r.rax, Errno::ENOSYS.neg());
    // A caller that does not exist is the embedder's mistake, not the guest's.
    assert!(
        g.m.hypercall(Caller::new(9, 0), 999, [0; 5], &mut NoHandler)
            .is_err()
    );
    assert!(
        g.m.hypercall(Caller::new(1, 7), 999, [0; 5], &mut NoHandler)
            .is_err()
    );
}

#[test]
fn root_changes_are_reported_once() {
    let mut g = guest();
    let c = g.c;
    // The builder's NEW_BASEPTR is still pending.
    let first = g.m.take_root_change(c).map(|r| r.kernel);
    assert_eq!(first, Some(Some(g.l4)));
    // A fresh L4: a copy of nothing but the guest's own mapping of itself (slot 272).
    let l4 = g.table_frame();
    let old = g.l4;
    let slot272 = g.read(Guest::slot(old, 272));
    let user = g.table_frame();
    let ops = [
        MmuextOp::new(MMUEXT_PIN_L4_TABLE, l4.0, 0),
        MmuextOp::new(MMUEXT_NEW_BASEPTR, l4.0, 0),
    ];
    // Map the new L4 with the same kernel mapping first, so the guest keeps running.
    let o = g.update(&[(Guest::slot(l4, 272), slot272)]);
    assert_eq!(o.result, Ok(()));
    let buf = g.take();
    let bytes: Vec<u8> = ops.iter().flat_map(|o| o.to_bytes()).collect();
    write(&g, buf, &bytes);
    // Nothing changed yet.
    let r =
        g.m.hypercall(c, HYPERVISOR_vm_assist, [0, 2, 0, 0, 0], &mut NoHandler);
    assert_eq!(r.unwrap().roots, None);
    let args = [va_of(buf.0), 2, 0, u64::from(SELF), 0];
    let r: HypercallResult =
        g.m.hypercall(c, HYPERVISOR_mmuext_op, args, &mut NoHandler)
            .unwrap();
    assert_eq!(r.rax, 0);
    assert_eq!(
        r.roots,
        Some(Roots {
            kernel: Some(l4),
            user: None
        })
    );
    assert_eq!(g.m.kernel_root(c), Some(l4));
    // Reported once.
    assert_eq!(g.m.take_root_change(c), None);
    // The user root too, through the slice form, asked for afterwards.
    let o = g.ext(MMUEXT_PIN_L4_TABLE, user.0, 0);
    assert_eq!(o.result, Ok(()));
    let o = g.ext(MMUEXT_NEW_USER_BASEPTR, user.0, 0);
    assert_eq!(o.result, Ok(()));
    assert_eq!(
        g.m.take_root_change(c),
        Some(Roots {
            kernel: Some(l4),
            user: Some(user)
        })
    );
    // NEW_BASEPTR to the current root changes nothing.
    let o = g.ext(MMUEXT_NEW_BASEPTR, l4.0, 0);
    assert_eq!(o.result, Ok(()));
    assert_eq!(g.m.take_root_change(c), None);
    g.audit();
}

#[test]
fn recorded_reads_are_the_entries_the_library_read() {
    let mut g = guest();
    let c = g.c;
    let f = g.take();
    let va = va_of(0x300);
    let pte = g.pte_addr(va);
    let reqs = [
        MmuUpdate {
            ptr: pte,
            val: (f.0 << 12) | P | RW,
        },
        // Refused: the L4 writable. The batch stops here; the third is never read.
        MmuUpdate {
            ptr: pte,
            val: (g.l4.0 << 12) | P | RW,
        },
        MmuUpdate { ptr: pte, val: 0 },
    ];
    let buf = g.take();
    let bytes: Vec<u8> = reqs.iter().flat_map(|r| r.to_bytes()).collect();
    write(&g, buf, &bytes);
    let args = [va_of(buf.0), 3, 0, u64::from(SELF), 0];
    // Not recording: nothing comes back.
    let r =
        g.m.hypercall(c, HYPERVISOR_mmu_update, args, &mut NoHandler)
            .unwrap();
    assert_eq!(r.rax, Errno::EBUSY.neg());
    assert!(r.reads.is_empty());
    g.m.record_reads(true);
    let r =
        g.m.hypercall(c, HYPERVISOR_mmu_update, args, &mut NoHandler)
            .unwrap();
    assert_eq!(r.rax, Errno::EBUSY.neg());
    assert_eq!(r.reads, bytes[..2 * MmuUpdate::SIZE].to_vec());
    // A multicall records its entries and the batches its entries read, in order.
    let mc = [
        MulticallEntry {
            op: HYPERVISOR_update_va_mapping,
            result: 0,
            args: [va, 0, 0, 0, 0, 0],
        },
        MulticallEntry {
            op: HYPERVISOR_mmu_update,
            result: 0,
            args: [va_of(buf.0), 1, 0, u64::from(SELF), 0, 0],
        },
    ];
    let list = g.take();
    let mbytes: Vec<u8> = mc.iter().flat_map(|e| e.to_bytes()).collect();
    write(&g, list, &mbytes);
    let args = [va_of(list.0), 2, 0, 0, 0];
    let r =
        g.m.hypercall(c, HYPERVISOR_multicall, args, &mut NoHandler)
            .unwrap();
    assert_eq!(r.rax, 0);
    let mut want = mbytes[..MulticallEntry::SIZE].to_vec();
    want.extend_from_slice(&mbytes[MulticallEntry::SIZE..]);
    want.extend_from_slice(&bytes[..MmuUpdate::SIZE]);
    assert_eq!(r.reads, want);
    assert_eq!(g.translate(va), Some(f.addr()));
    g.m.record_reads(false);
    let r =
        g.m.hypercall(c, HYPERVISOR_multicall, args, &mut NoHandler)
            .unwrap();
    assert!(r.reads.is_empty());
    g.audit();
}

#[test]
fn a_stop_request_ends_a_guest_multicall_after_its_first_entry() {
    // The embedder's stop flag is checked between entries, never before the first: the
    // first entry runs and gets its result, the call returns -EINTR, and the entries
    // after it keep theirs.
    let mut g = guest();
    let list = g.take();
    let mut calls = Vec::new();
    for k in 0..3u64 {
        let e = MulticallEntry {
            op: 17,
            result: 0x77,
            args: [k, 0, 0, 0, 0, 0],
        };
        calls.extend(e.to_bytes());
    }
    write(&g, list, &calls);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    g.m.set_interrupt(Some(stop.clone()));
    let mut served = 0;
    let mut handler = |_: &mut M, _: Caller, _: u64, _: [u64; 5]| {
        served += 1;
        5
    };
    let c = g.c;
    let r =
        g.m.hypercall(
            c,
            HYPERVISOR_multicall,
            [va_of(list.0), 3, 0, 0, 0],
            &mut handler,
        )
        .unwrap();
    assert_eq!(r.rax, Errno::EINTR.neg());
    assert_eq!(served, 1, "the first entry ran");
    let result = |i: u64| g.read(list.addr() + i * 64 + 8);
    assert_eq!((result(0), result(1), result(2)), (5, 0x77, 0x77));
    // Without the stop, every entry runs.
    stop.store(false, std::sync::atomic::Ordering::SeqCst);
    let mut served = 0;
    let mut handler = |_: &mut M, _: Caller, _: u64, _: [u64; 5]| {
        served += 1;
        6
    };
    let r =
        g.m.hypercall(
            c,
            HYPERVISOR_multicall,
            [va_of(list.0), 3, 0, 0, 0],
            &mut handler,
        )
        .unwrap();
    assert_eq!((r.rax, served), (0, 3));
}

#[test]
fn a_stop_request_ends_an_embedders_multicall_after_its_first_entry() {
    let mut g = guest();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    g.m.set_interrupt(Some(stop));
    let mut calls = [MulticallEntry {
        op: 17,
        result: 0x77,
        args: [0; 6],
    }; 3];
    let mut served = 0;
    let mut handler = |_: &mut M, _: Caller, _: u64, _: [u64; 5]| {
        served += 1;
        5
    };
    let c = g.c;
    let rax = g.m.multicall(c, &mut calls, &mut handler).unwrap();
    assert_eq!(rax, Errno::EINTR.neg());
    assert_eq!(served, 1, "the first entry ran");
    assert_eq!(calls.map(|e| e.result), [5, 0x77, 0x77]);
}
