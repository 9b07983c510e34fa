//! The order of Xen's checks, where it changes a result: which refusals come before the
//! batch loop (no `*pdone` written) and which at an entry, and which argument a
//! hypercall looks at first. Each test asserts RAX, `done` and whether `*pdone` is
//! written, through the slice API and through the guest's register ABI.

mod support;

use pvmmu::{BatchOutcome, Errno, GuestView};
use pvmmu_abi::domid::DOMID_IO;
use pvmmu_abi::mmu::{MMU_MACHPHYS_UPDATE, MMUEXT_TLB_FLUSH_LOCAL};
use pvmmu_abi::{MmuUpdate, MmuextOp};
use support::*;

/// A page of the guest's own memory for arguments, as (VA, machine address).
fn scratch(g: &mut Guest) -> (u64, u64) {
    let f = g.take();
    (va_of(f.0), f.addr())
}

/// `mmu_update` through the register ABI with `*pdone` preset to 0xdead: (RAX, *pdone).
fn mmu_update_abi(g: &mut Guest, reqs: &[MmuUpdate], fd: u32) -> (i64, u32) {
    let (va, pa) = scratch(g);
    for (i, r) in reqs.iter().enumerate() {
        g.write_raw(pa + i as u64 * 16, r.ptr);
        g.write_raw(pa + i as u64 * 16 + 8, r.val);
    }
    let pdone = va + 0x800;
    g.write_raw(pa + 0x800, 0xdead);
    let rax =
        g.m.hypercall_mmu_update(g.c, va, reqs.len() as u64, pdone, u64::from(fd))
            .unwrap();
    (rax, g.read(pa + 0x800) as u32)
}

/// `mmuext_op` through the register ABI, `*pdone` preset to 0xdead: (RAX, *pdone).
fn mmuext_abi(g: &mut Guest, ops: &[MmuextOp], fd: u32) -> (i64, u32) {
    let (va, pa) = scratch(g);
    let root = g.m.kernel_root(g.c);
    let mut view = GuestView::new(g.m.memory(), root);
    for (i, op) in ops.iter().enumerate() {
        view.write(va + i as u64 * 24, &op.to_bytes()).unwrap();
    }
    let pdone = va + 0x800;
    g.write_raw(pa + 0x800, 0xdead);
    let rax =
        g.m.hypercall_mmuext_op(g.c, va, ops.len() as u64, pdone, u64::from(fd))
            .unwrap();
    (rax, g.read(pa + 0x800) as u32)
}

fn outcome(done: u32, result: Result<(), Errno>, writes_pdone: bool) -> BatchOutcome {
    BatchOutcome {
        done,
        result,
        writes_pdone,
        preempted: false,
    }
}

const DOM2: u32 = 2;

#[test]
fn mmu_update_checks_the_right_over_a_foreign_domain_per_entry() {
    let mut g = guest();
    let f = g.take();
    let pte = g.pte_addr(va_of(f.0));
    // An empty batch naming domain 2 as FD: nothing to check, 0, *pdone written.
    assert_eq!(g.update_fd(&[], DOM2), outcome(0, Ok(()), true));
    assert_eq!(mmu_update_abi(&mut g, &[], DOM2), (0, 0));
    // A first entry with an unknown command: -ENOSYS at it, before any right matters.
    let bad = MmuUpdate {
        ptr: pte | 5,
        val: 0,
    };
    assert_eq!(
        mmu_update_abi(&mut g, &[bad], DOM2),
        (Errno::ENOSYS.neg(), 0)
    );
    // A page-table update: -EPERM at that entry, *pdone written with the entries before.
    let upd = MmuUpdate {
        ptr: pte,
        val: f.addr() | P | A,
    };
    let same = MmuUpdate {
        ptr: pte,
        val: g.read(pte),
    };
    let counts = g.counts();
    assert_eq!(
        mmu_update_abi(&mut g, &[upd], DOM2),
        (Errno::EPERM.neg(), 0)
    );
    // With DOMID_SELF the same entry is fine: the refusal is for the right alone.
    assert_eq!(mmu_update_abi(&mut g, &[same], SELF), (0, 1));
    assert_eq!(g.counts(), counts);
    // A MACHPHYS update naming domain 2: -EPERM too.
    let m2p = MmuUpdate {
        ptr: f.addr() | MMU_MACHPHYS_UPDATE,
        val: 5,
    };
    assert_eq!(
        mmu_update_abi(&mut g, &[m2p], DOM2),
        (Errno::EPERM.neg(), 0)
    );
    // DOMID_IO as FD is exempt from the check (mmu_update only): an MMIO-less update of
    // our own table proceeds to the usual rules.
    assert_eq!(
        g.update_fd(&[(pte, g.read(pte))], u32::from(DOMID_IO)),
        outcome(1, Ok(()), true)
    );
    // A foreign page-table owner (PFD = 2 + 1): the empty batch passes, an update is
    // -EPERM at the entry.
    let pfd = (DOM2 + 1) << 16 | SELF;
    assert_eq!(mmu_update_abi(&mut g, &[], pfd), (0, 0));
    assert_eq!(
        mmu_update_abi(&mut g, &[same], pfd),
        (Errno::EPERM.neg(), 0)
    );
    // A page-table owner that does not exist: -ESRCH up front, *pdone untouched.
    assert_eq!(
        mmu_update_abi(&mut g, &[same], 9 << 16 | SELF),
        (Errno::ESRCH.neg(), 0xdead)
    );
    g.audit();
}

#[test]
fn mmuext_op_refuses_a_domid_io_fd_up_front_whatever_the_commands() {
    let mut g = guest();
    let io = u32::from(DOMID_IO);
    let flush = MmuextOp::new(MMUEXT_TLB_FLUSH_LOCAL, 0, 0);
    for ops in [&[][..], &[flush][..], &[MmuextOp::new(99, 0, 0)][..]] {
        assert_eq!(mmuext_abi(&mut g, ops, io), (Errno::EPERM.neg(), 0xdead));
        assert_eq!(
            g.m.mmuext_op(g.c, ops, io).unwrap(),
            outcome(0, Err(Errno::EPERM), false)
        );
    }
    // The same batch for ourselves: fine.
    assert_eq!(mmuext_abi(&mut g, &[flush], SELF), (0, 1));
    // Another domain: -EPERM up front as well.
    assert_eq!(
        mmuext_abi(&mut g, &[flush], DOM2),
        (Errno::EPERM.neg(), 0xdead)
    );
    g.audit();
}

#[test]
fn update_va_mapping_otherdomain_does_not_exempt_domid_io() {
    let mut g = guest();
    let f = g.take();
    let va = va_of(f.0);
    let val = g.read(g.pte_addr(va));
    let rax =
        g.m.hypercall_update_va_mapping_otherdomain(g.c, va, val, 0, u64::from(DOMID_IO))
            .unwrap();
    assert_eq!(rax, Errno::EPERM.neg());
    let rax = g
        .m
        .hypercall_update_va_mapping_otherdomain(g.c, va, val, 0, u64::from(pvmmu_abi::DOMID_SELF))
        .unwrap();
    assert_eq!(rax, 0);
}

#[test]
fn vm_assist_checks_the_type_before_the_command() {
    let mut g = guest();
    // An invalid type with an unknown command: -EINVAL (the type is checked first).
    assert_eq!(
        g.m.hypercall_vm_assist(g.c, 7, 63).unwrap(),
        Errno::EINVAL.neg()
    );
    // A valid type with an unknown command: -ENOSYS.
    assert_eq!(
        g.m.hypercall_vm_assist(g.c, 7, 2).unwrap(),
        Errno::ENOSYS.neg()
    );
    // Both valid: done.
    assert_eq!(g.m.hypercall_vm_assist(g.c, 0, 2).unwrap(), 0);
}

#[test]
fn a_request_that_remaps_the_array_itself_is_seen_by_the_next_entry() {
    // Xen reads each request when it comes to it: entry 0 points the array's own VA at
    // another frame holding different requests, and entry 1 is read from there.
    let mut g = guest();
    let (a, b) = (g.take(), g.take());
    let (target1, target2) = (g.take(), g.take());
    let va = va_of(a.0);
    let pte = g.pte_addr(va);
    let p1 = g.pte_addr(va_of(target1.0));
    let p2 = g.pte_addr(va_of(target2.0));
    // Frame a: [remap va -> b, make target1 read-only]; frame b: entry 1 makes target2
    // read-only instead.
    let write = |g: &Guest, f: pvmmu::Mfn, i: u64, r: MmuUpdate| {
        g.write_raw(f.addr() + i * 16, r.ptr);
        g.write_raw(f.addr() + i * 16 + 8, r.val);
    };
    write(
        &g,
        a,
        0,
        MmuUpdate {
            ptr: pte,
            val: b.addr() | P | RW | A,
        },
    );
    write(
        &g,
        a,
        1,
        MmuUpdate {
            ptr: p1,
            val: target1.addr() | P | A,
        },
    );
    write(
        &g,
        b,
        1,
        MmuUpdate {
            ptr: p2,
            val: target2.addr() | P | A,
        },
    );
    let rax =
        g.m.hypercall_mmu_update(g.c, va, 2, 0, u64::from(SELF))
            .unwrap();
    assert_eq!(rax, 0);
    assert_eq!(
        g.read(p1) & RW,
        RW,
        "entry 1 was not read from the old page"
    );
    assert_eq!(
        g.read(p2) & RW,
        0,
        "entry 1 was read through the new mapping"
    );
    g.audit();
}

#[test]
fn a_request_array_kept_in_a_page_table_is_read_after_its_own_requests_rewrite_it() {
    // The array lies in a pinned L1 table (readable through the kernel's read-only
    // mapping of it). Request 0 rewrites the word that is
    // request 1's `ptr`; Xen reads request 1 when it comes to it, so the new `ptr` is
    // used (a copy of the page taken before request 0 would still hold the old one).
    let mut g = guest();
    // A fresh pinned L1 (zeroed, mapped read-only by another L1 of the kernel map).
    let last = g.table_frame();
    let pin = g.ext(pvmmu_abi::mmu::MMUEXT_PIN_L1_TABLE, last.0, 0);
    assert_eq!(pin.result, Ok(()));
    let base = 100;
    for i in base..base + 12 {
        assert_eq!(g.read(Guest::slot(last, i)), 0, "entry {i} free");
    }
    let target = g.take();
    let p1 = g.pte_addr(va_of(target.0));
    let mapped = g.read(p1);
    // Entries base..base+4 (not present as PTEs): request 0 = (entry base+2 of
    // `last`, p1), request 1 = (entry base+10 of `last`, 0x7770).
    let words = [
        Guest::slot(last, base + 2),
        p1,
        Guest::slot(last, base + 10),
        0x7770,
    ];
    for (i, w) in words.iter().enumerate() {
        g.write_raw(Guest::slot(last, base + i), *w);
    }
    let va = va_of(last.0) + base as u64 * 8;
    let rax =
        g.m.hypercall_mmu_update(g.c, va, 2, 0, u64::from(SELF))
            .unwrap();
    assert_eq!(rax, 0);
    assert_eq!(g.read(Guest::slot(last, base + 2)), p1, "request 0 applied");
    assert_eq!(
        g.read(p1),
        0x7770,
        "request 1 was read after request 0 rewrote it (it unmapped the target)"
    );
    assert_eq!(
        g.read(Guest::slot(last, base + 10)),
        0,
        "not the stale request 1"
    );
    assert_ne!(mapped, 0x7770);
    for i in base..base + 4 {
        g.write_raw(Guest::slot(last, i), 0);
    }
    g.audit();
    assert_eq!(
        g.ext(pvmmu_abi::mmu::MMUEXT_UNPIN_TABLE, last.0, 0).result,
        Ok(())
    );
}
