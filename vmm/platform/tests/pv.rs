//! The PV vCPU without KVM: trap tables, bounce frames byte for byte as Xen's
//! `create_bounce_frame` lays them out, `iret`, callbacks, and the crashes Xen gives for
//! what cannot be delivered.

use platform::elf::minimal_image;
use platform::pv::{Crash, GuestContext, PvVcpu};
use platform::{Domain, DomainSpec};
use pvmmu::{Errno, GuestView, NoFlush};
use pvmmu_abi::{CallbackRegister, IretContext, TrapInfo};
use vm_memory::{Bytes, GuestAddress};

type Dom = Domain<NoFlush>;

fn domain() -> (Dom, PvVcpu) {
    let d = Domain::create(&DomainSpec::new(minimal_image(&[0xf4]), 16), NoFlush).expect("domain");
    let pv = d.pv_vcpu(0);
    (d, pv)
}

/// Writes `bytes` at guest VA `va` (in the boot mapping, which is identity + writable).
fn poke(d: &Dom, va: u64, bytes: &[u8]) {
    let root = d.machine.kernel_root(pv_caller());
    GuestView::new(d.machine.memory(), root)
        .write(va, bytes)
        .expect("guest write");
}

/// Writes `frame` below the top of the boot stack and returns a context whose RSP
/// points at it, as the guest's `iret` hypercall finds it.
fn stacked(d: &Dom, frame: &IretContext) -> GuestContext {
    let at = STACK - 0x100;
    poke(d, at, &frame.to_bytes());
    GuestContext {
        rsp: at,
        ..GuestContext::default()
    }
}

fn peek(d: &Dom, va: u64, n: usize) -> Vec<u64> {
    let root = d.machine.kernel_root(pv_caller());
    let mut b = vec![0u8; n * 8];
    GuestView::new(d.machine.memory(), root)
        .read(va, &mut b)
        .expect("guest read");
    b.chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
        .collect()
}

fn pv_caller() -> pvmmu::Caller {
    pvmmu::Caller::new(platform::DOMID, 0)
}

fn trap(vector: u8, flags: u8, address: u64) -> TrapInfo {
    TrapInfo {
        vector,
        flags,
        cs: 0xe030,
        _pad: 0,
        address,
    }
}

/// A scratch area in the boot mapping: page 0x150 of the domain.
const SCRATCH: u64 = 0x15_0000;
/// A kernel stack top in the boot mapping.
const STACK: u64 = 0x16_0000;

fn set_traps(d: &Dom, pv: &mut PvVcpu, traps: &[TrapInfo]) -> i64 {
    let mut bytes: Vec<u8> = traps.iter().flat_map(|t| t.to_bytes()).collect();
    bytes.extend_from_slice(&[0u8; 16]);
    poke(d, SCRATCH, &bytes);
    pv.set_trap_table(&d.machine, SCRATCH)
}

/// Clears vCPU 0's upcall mask (the builder leaves it set, as Xen's does).
fn unmask_upcalls(d: &Dom) {
    d.machine
        .memory()
        .write_obj(0u8, GuestAddress(d.boot.shared_info + 1))
        .expect("vcpu_info");
}

fn upcall_mask(d: &Dom) -> u8 {
    d.machine
        .memory()
        .read_obj(GuestAddress(d.boot.shared_info + 1))
        .expect("vcpu_info")
}

#[test]
fn trap_tables_as_xen_reads_them() {
    let (d, mut pv) = domain();
    assert_eq!(
        set_traps(&d, &mut pv, &[trap(14, 4, 0x1234), trap(3, 3, 0x5678)]),
        0
    );
    assert_eq!(pv.trap(14).address, 0x1234);
    assert_eq!(
        pv.trap(14).cs,
        0xe033,
        "the selector's RPL is fixed up to 3"
    );
    assert_eq!(pv.trap(3).flags, 3);
    // A non-canonical handler: -EINVAL (entries before it stay set).
    assert_eq!(
        set_traps(
            &d,
            &mut pv,
            &[trap(6, 0, 0x4242), trap(13, 0, 0x8000_0000_0000_0000)]
        ),
        Errno::EINVAL.neg()
    );
    assert_eq!(pv.trap(6).address, 0x4242);
    // An unreadable table: -EFAULT. A null table clears everything.
    assert_eq!(
        pv.set_trap_table(&d.machine, 0xdead_0000_0000),
        Errno::EFAULT.neg()
    );
    assert_eq!(pv.set_trap_table(&d.machine, 0), 0);
    assert_eq!(pv.trap(14).address, 0);
}

#[test]
fn the_builder_masks_upcalls_as_xen_does() {
    let (d, _) = domain();
    assert_eq!(upcall_mask(&d), 1);
}

#[test]
fn a_kernel_mode_page_fault_is_bounced_onto_the_current_stack() {
    let (mut d, mut pv) = domain();
    unmask_upcalls(&d);
    set_traps(&d, &mut pv, &[trap(14, 4, 0xabc0)]);
    let mut ctx = GuestContext {
        rip: 0x20_1000,
        cs: 0xe033,
        rflags: 0x10202 | (1 << 8), // RF, IF, TF
        rsp: STACK - 0x18,          // not 16-aligned: aligned down first
        ss: 0xe02b,
        rcx: 0x1111,
        r11: 0x2222,
    };
    let t = pv
        .inject_exception(&mut d.machine, &mut ctx, 14, Some(0x7), Some(0x4000))
        .expect("delivered");
    assert!(!t.mode_switched);
    let aligned = (STACK - 0x18) & !0xf;
    assert_eq!(ctx.rsp, aligned - 8 * 8);
    let frame = peek(&d, ctx.rsp, 8);
    assert_eq!(frame[0], 0x1111, "RCX lowest");
    assert_eq!(frame[1], 0x2222, "then R11");
    assert_eq!(frame[2], 0x3, "error code with U cleared in kernel mode");
    assert_eq!(frame[3], 0x20_1000, "RIP");
    assert_eq!(
        frame[4], 0xe030,
        "CS with RPL 0 for kernel context, saved mask 0"
    );
    assert_eq!(frame[5] & (1 << 9), 1 << 9, "IF = !saved upcall mask");
    assert_eq!(frame[6], STACK - 0x18, "the interrupted RSP");
    assert_eq!(frame[7], 0xe02b);
    assert_eq!((ctx.rip, ctx.cs, ctx.ss), (0xabc0, 0xe033, 0xe02b));
    assert_eq!(ctx.rflags & ((1 << 8) | (1 << 16)), 0, "TF and RF cleared");
    assert_eq!(upcall_mask(&d), 1, "the trap masks events");
    assert_eq!(pv.cr2, 0x4000);
    let arch_cr2: u64 = d
        .machine
        .memory()
        .read_obj(GuestAddress(d.boot.shared_info + 16))
        .expect("vcpu_info.arch.cr2");
    assert_eq!(arch_cr2, 0x4000);
    // A second fault, with events now masked: the saved mask is 1 in CS bits 32-39 and
    // IF is clear in the saved RFLAGS.
    let mut ctx2 = ctx;
    pv.inject_exception(&mut d.machine, &mut ctx2, 14, Some(0x5), Some(0x5000))
        .expect("delivered");
    let frame = peek(&d, ctx2.rsp, 8);
    assert_eq!(frame[4], 0xe030 | 1 << 32);
    assert_eq!(frame[5] & (1 << 9), 0);
}

#[test]
fn vectors_without_an_error_code_push_none() {
    let (mut d, mut pv) = domain();
    unmask_upcalls(&d);
    set_traps(&d, &mut pv, &[trap(6, 0, 0xabc0)]);
    let mut ctx = GuestContext {
        rip: 0x20_1000,
        cs: 0xe033,
        rflags: 0x202,
        rsp: STACK,
        ss: 0xe02b,
        rcx: 1,
        r11: 2,
    };
    pv.inject_exception(&mut d.machine, &mut ctx, 6, Some(0x99), None)
        .expect("delivered");
    assert_eq!(ctx.rsp, STACK - 7 * 8);
    assert_eq!(peek(&d, ctx.rsp, 3), vec![1, 2, 0x20_1000]);
    assert_eq!(
        upcall_mask(&d),
        0,
        "no mask bit in the trap: events stay as they were"
    );
}

#[test]
fn undeliverable_exceptions_crash_the_domain() {
    let (mut d, mut pv) = domain();
    let mut ctx = GuestContext {
        rip: 0x20_1000,
        cs: 0xe033,
        rflags: 0x202,
        rsp: STACK,
        ss: 0xe02b,
        ..GuestContext::default()
    };
    assert_eq!(
        pv.inject_exception(&mut d.machine, &mut ctx.clone(), 13, Some(0), None),
        Err(Crash::NoHandler {
            vector: 13,
            error: 0
        })
    );
    set_traps(&d, &mut pv, &[trap(13, 0, 0xabc0)]);
    // A stack pointer in the hypervisor's range (XTF's arch_crash_hard uses a
    // non-canonical one).
    ctx.rsp = 0xffff_8000_0000_1000;
    assert!(matches!(
        pv.inject_exception(&mut d.machine, &mut ctx.clone(), 13, Some(0), None),
        Err(Crash::BadStack { vector: 13, .. })
    ));
    // A stack that is not mapped.
    ctx.rsp = 0x7000_0000_0000;
    assert!(matches!(
        pv.inject_exception(&mut d.machine, &mut ctx.clone(), 13, Some(0), None),
        Err(Crash::StackFault { vector: 13, .. })
    ));
    // A non-canonical one is not a guest address either.
    ctx.rsp = 0x8000_0000_0bad_c0de;
    assert!(
        pv.inject_exception(&mut d.machine, &mut ctx, 13, Some(0), None)
            .is_err()
    );
}

#[test]
fn iret_restores_the_frame_and_the_upcall_mask() {
    let (mut d, mut pv) = domain();
    let frame = IretContext {
        rax: 0x55,
        r11: 0x66,
        rcx: 0x77,
        flags: 0,
        rip: 0x20_2000,
        cs: 0xe030,
        rflags: 0x3000 | (1 << 17) | 0xcd5, // IOPL and VM dropped, IF clear
        rsp: 0x15_8000,
        ss: 0xe02b,
    };
    let mut ctx = stacked(&d, &frame);
    let (rax, t) = pv.iret(&mut d.machine, &mut ctx).expect("iret");
    assert_eq!(rax, 0x55);
    assert!(!t.mode_switched);
    assert_eq!(
        (ctx.rip, ctx.cs, ctx.rsp, ctx.ss),
        (0x20_2000, 0xe033, 0x15_8000, 0xe02b)
    );
    assert_eq!(
        ctx.rflags,
        0xcd5 | (1 << 9) | 2,
        "IOPL/VM dropped, IF and bit 1 forced"
    );
    assert_eq!((ctx.rcx, ctx.r11), (0x77, 0x66));
    assert_eq!(upcall_mask(&d), 1, "IF clear in the frame masks events");
    // VGCF_in_syscall: RCX and R11 are left alone.
    let frame = IretContext {
        flags: 0x100,
        rflags: 0x202,
        ..frame
    };
    let mut ctx = GuestContext {
        rcx: 1,
        r11: 2,
        ..stacked(&d, &frame)
    };
    pv.iret(&mut d.machine, &mut ctx).expect("iret");
    assert_eq!((ctx.rcx, ctx.r11), (1, 2));
    assert_eq!(upcall_mask(&d), 0);
    // An unreadable frame crashes the domain.
    let mut ctx = GuestContext {
        rsp: 0x7000_0000_0000,
        ..GuestContext::default()
    };
    assert_eq!(
        pv.iret(&mut d.machine, &mut ctx),
        Err(Crash::IretFrame {
            rsp: 0x7000_0000_0000
        })
    );
}

#[test]
fn iret_to_user_mode_needs_user_tables_and_switches_mode() {
    let (mut d, mut pv) = domain();
    let frame = IretContext {
        rip: 0x20_2000,
        cs: 0xe033,
        rflags: 0x202,
        rsp: 0x15_8000,
        ss: 0xe02b,
        ..IretContext::default()
    };
    let mut ctx = stacked(&d, &frame);
    assert_eq!(pv.iret(&mut d.machine, &mut ctx), Err(Crash::NoUserRoot));
    assert!(pv.in_kernel(&d.machine));
    // With a user root (the kernel's, as XTF does), the iret switches to user mode.
    let l4 = d.boot.l4;
    let op = pvmmu_abi::MmuextOp::new(pvmmu_abi::mmu::MMUEXT_NEW_USER_BASEPTR, l4.0, 0);
    let o = d
        .machine
        .mmuext_op(pv_caller(), &[op], u32::from(pvmmu_abi::DOMID_SELF))
        .expect("mmuext");
    assert_eq!(o.result, Ok(()));
    let mut ctx = stacked(&d, &frame);
    let (_, t) = pv.iret(&mut d.machine, &mut ctx).expect("iret");
    assert!(t.mode_switched);
    assert!(!pv.in_kernel(&d.machine));
    // A fault in user mode goes to the stack_switch stack, in kernel mode again, with
    // the user's CS (RPL 3) saved and U set in a #PF error code.
    set_traps(&d, &mut pv, &[trap(14, 0, 0xabc0)]);
    pv.stack_switch(0xe02b, STACK);
    let mut uctx = GuestContext {
        rip: 0x40_0000,
        cs: 0xe033,
        rflags: 0x202,
        rsp: 0x15_9000,
        ss: 0xe02b,
        ..GuestContext::default()
    };
    let t = pv
        .inject_exception(&mut d.machine, &mut uctx, 14, Some(0x4), Some(0))
        .expect("delivered");
    assert!(t.mode_switched);
    assert!(pv.in_kernel(&d.machine));
    assert_eq!(uctx.rsp, STACK - 8 * 8);
    let f = peek(&d, uctx.rsp, 8);
    assert_eq!((f[2], f[4], f[6]), (0x4, 0xe033, 0x15_9000));
}

#[test]
fn callbacks_register_as_xen_registers_them() {
    let (d, mut pv) = domain();
    let reg = |ty: u16, flags: u16, address: u64| CallbackRegister {
        ty,
        flags,
        address,
        ..CallbackRegister::default()
    };
    let call = |pv: &mut PvVcpu, cmd: u64, bytes: &[u8]| {
        poke(&d, SCRATCH, bytes);
        pv.callback_op(&d.machine, cmd, SCRATCH)
    };
    assert_eq!(call(&mut pv, 0, &reg(0, 0, 0x1000).to_bytes()), 0);
    assert_eq!(call(&mut pv, 0, &reg(2, 1, 0x2000).to_bytes()), 0);
    assert_eq!(pv.callbacks.event, 0x1000);
    assert_eq!(
        (pv.callbacks.syscall, pv.callbacks.syscall_masks),
        (0x2000, true)
    );
    // A non-canonical address: -EINVAL; an unknown type: -ENOSYS; an unknown command:
    // -ENOSYS.
    assert_eq!(
        call(&mut pv, 0, &reg(0, 0, 0x8000_0000_0000_0000).to_bytes()),
        Errno::EINVAL.neg()
    );
    assert_eq!(
        call(&mut pv, 0, &reg(9, 0, 0x1000).to_bytes()),
        Errno::ENOSYS.neg()
    );
    assert_eq!(call(&mut pv, 7, &[0; 16]), Errno::ENOSYS.neg());
    // Unregistering: only the NMI callback can go.
    assert_eq!(call(&mut pv, 1, &[0, 0, 0, 0]), Errno::EINVAL.neg());
    assert_eq!(call(&mut pv, 0, &reg(4, 0, 0x3000).to_bytes()), 0);
    assert_eq!(pv.trap(2).address, 0x3000);
    assert_eq!(call(&mut pv, 1, &[4, 0, 0, 0]), 0);
    assert_eq!(pv.trap(2).address, 0);
    // set_callbacks ignores bad addresses and returns 0.
    assert_eq!(pv.set_callbacks(0x4000, 0x8000_0000_0000_0000, 0x5000), 0);
    assert_eq!((pv.callbacks.event, pv.callbacks.syscall), (0x4000, 0x5000));
}

#[test]
fn debug_registers_as_xen_keeps_them() {
    let (_d, mut pv) = domain();
    // Initial state.
    assert_eq!(pv.get_debugreg(6), Some(0xffff_0ff0));
    assert_eq!(pv.get_debugreg(7), Some(0x400));
    // Breakpoint addresses in Xen's range: -EPERM; guest addresses are kept.
    assert_eq!(pv.set_debugreg(0, 0xffff_8000_0000_1000), Err(Errno::EPERM));
    assert_eq!(pv.set_debugreg(0, 0x1234), Ok(()));
    assert_eq!(pv.get_debugreg(0), Some(0x1234));
    assert!(pv.debug.dirty, "hardware must be reloaded");
    // DR6/DR7: the upper half is reserved (-EINVAL); reserved bits are forced.
    assert_eq!(pv.set_debugreg(6, 1 << 32), Err(Errno::EINVAL));
    assert_eq!(pv.set_debugreg(6, 0), Ok(()));
    assert_eq!(pv.get_debugreg(6), Some(0xffff_0ff0));
    assert_eq!(pv.set_debugreg(7, 0xd000), Ok(()));
    assert_eq!(pv.get_debugreg(7), Some(0x400), "bits 12, 14, 15 read as 0");
    // General detect is not for guests.
    assert_eq!(pv.set_debugreg(7, 1 << 13), Err(Errno::EPERM));
    // An I/O breakpoint needs CR4.DE, and is emulated, not loaded.
    let io0 = (2 << 16) | (1 << 1) | (1 << 9) | 0x400;
    assert_eq!(pv.set_debugreg(7, io0), Err(Errno::EPERM));
    pv.cr4 |= platform::pv::cr4::DE;
    assert_eq!(pv.set_debugreg(7, io0), Ok(()));
    assert_eq!(
        pv.get_debugreg(7),
        Some(io0),
        "the guest reads what it wrote"
    );
    assert_eq!(
        pv.debug.dr7 & 0x3,
        0,
        "the I/O enable is not loaded into hardware"
    );
    // With CR4.DE, DR4 and DR5 are not aliases any more.
    assert_eq!(pv.get_debugreg(4), None);
    assert_eq!(pv.set_debugreg(5, 0), Err(Errno::ENODEV));
    // A #DB: hardware's breakpoint bits replace the recorded ones, others accumulate.
    pv.merge_dr6(0xffff_0ff1 | (1 << 14));
    assert_eq!(pv.get_debugreg(6), Some(0xffff_0ff1 | (1 << 14)));
    pv.merge_dr6(0xffff_0ff2);
    assert_eq!(pv.get_debugreg(6), Some(0xffff_0ff2 | (1 << 14)));
}
