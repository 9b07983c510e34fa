//! The PV vCPU from inside: a trap table, exceptions delivered to its handlers with Xen's
//! frame (error code, #PF user bit, CR2, saved CS), `iret` back, software interrupts by
//! their DPL, the forced-emulation CPUID, emulated CR3 reads, a round trip through guest
//! user mode (`iret` to user mode, a system call back into the kernel through the
//! syscall callback) and a raw `syscall` hypercall from the kernel.
#![no_std]
#![no_main]

use core::arch::{asm, global_asm};
use core::sync::atomic::{AtomicU64, Ordering};

use rt::abi::callback::{CALLBACKF_mask_events, CALLBACKOP_register, CALLBACKTYPE_syscall};
use rt::abi::hypercall::{HYPERVISOR_callback_op, HYPERVISOR_stack_switch, HYPERVISOR_xen_version};
use rt::abi::mmu::MMUEXT_NEW_USER_BASEPTR;
use rt::abi::{CallbackRegister, StartInfo};
use suite::Check;
use suite::traps::{self, expect_one};

/// Where a system call from user mode returns to in the kernel, and its stack.
static KERNEL_RIP: AtomicU64 = AtomicU64::new(0);
static KERNEL_RSP: AtomicU64 = AtomicU64::new(0);
/// The RCX a user-mode `syscall` delivered to the callback.
static SYSCALL_RCX: AtomicU64 = AtomicU64::new(0);

// The syscall callback and the user-mode code of the round trip.
global_asm!(
    r#"
    # The syscall callback: a system call from user mode lands here in kernel mode
    # with [RCX, R11, RIP, CS, RFLAGS, RSP, SS]. It records RCX and goes back to the
    # kernel code that entered user mode.
    .globl pvt_syscall
pvt_syscall:
    mov (%rsp), %rax
    mov %rax, {syscall_rcx}(%rip)
    mov {kernel_rsp}(%rip), %rsp
    jmp *{kernel_rip}(%rip)

    # User mode: a load from an unmapped address (a user-mode #PF, whose handler
    # skips the 10-byte instruction and returns to user mode), then a system call.
    .globl pvt_user
pvt_user:
    movabs 0x500000000, %rax
    syscall
    ud2
    "#,
    syscall_rcx = sym SYSCALL_RCX,
    kernel_rsp = sym KERNEL_RSP,
    kernel_rip = sym KERNEL_RIP,
    options(att_syntax)
);

unsafe extern "C" {
    fn pvt_syscall();
    fn pvt_user();
}

static USER_STACK: [u64; 512] = [0; 512];

#[unsafe(no_mangle)]
pub fn guest_main(si: &'static StartInfo) {
    let mut c = Check::new();
    c.eq("set_trap_table", traps::install(), 0);

    // ud2: #UD, no error code, RIP at the instruction, CS with RPL 0 (kernel context).
    let (v, _, rip, cs) = expect_one(2, || {
        // SAFETY: the handler skips the two-byte ud2.
        unsafe { asm!("ud2") }
    });
    c.eq("ud2 vector", v as i64, 6);
    c.eq("ud2 saved CS (kernel)", cs as i64 & 0xffff, 0xe030);
    c.ok("ud2 RIP reported", rip != 0);

    // A kernel read of an unmapped address: #PF with U clear (PV kernel mode), CR2 set.
    let (v, err, _, _) = expect_one(3, || {
        // SAFETY: the handler skips the three-byte load (mov (%rax), %rax).
        unsafe {
            asm!("mov (%rax), %rax", inout("rax") 0x5_0000_0000u64 => _, options(att_syntax));
        }
    });
    c.eq("#PF vector", v as i64, 14);
    c.eq("#PF error code: not present, read, kernel", err as i64, 0);
    let cr2: u64;
    // SAFETY: reading CR2 is emulated by the hypervisor for a PV kernel.
    unsafe { asm!("mov %cr2, {r}", r = out(reg) cr2, options(att_syntax, nomem, nostack)) };
    c.eq("CR2", cr2 as i64, 0x5_0000_0000);

    // int $0x80 (DPL 3): delivered as vector 0x80 with RIP after the instruction.
    let (v, _, rip_after, _) = expect_one(0, || {
        // SAFETY: the handler returns after the instruction.
        unsafe { asm!("int $0x80", options(att_syntax)) }
    });
    c.eq("int $0x80 vector", v as i64, 0x80);
    // int $0x81 (DPL 0) from kernel mode: #GP with error 0x81 * 8 + 2 at the instruction.
    let (v, err, rip_at, _) = expect_one(2, || {
        // SAFETY: the #GP handler skips the two-byte int.
        unsafe { asm!("int $0x81", options(att_syntax)) }
    });
    c.eq("int $0x81 → #GP", v as i64, 13);
    c.eq("int $0x81 #GP error", err as i64, 0x81 * 8 + 2);
    c.ok("softint RIPs: after vs at", rip_after > 0 && rip_at > 0);
    // int3: #BP, RIP after it.
    let (v, _, _, _) = expect_one(0, || {
        // SAFETY: #BP is a trap: RIP is already past the int3.
        unsafe { asm!("int3") }
    });
    c.eq("int3 vector", v as i64, 3);

    // Selectors beyond the descriptor tables: #GP with the selector (RPL cleared), as
    // hardware reports it. No LDT: a far call through an LDT selector, and a
    // data-segment load from the LDT; GDT entry 100 is beyond this guest's GDT.
    // `rex64 lcall` reads m16:32 on AMD (selector at +4) and m16:64 on Intel (at +8,
    // here the null selector: #GP(0)); this host's KVM decodes it the Intel way on AMD.
    let ebx: u32;
    // SAFETY: forced-emulation CPUID leaf 0; RBX is saved around it.
    unsafe {
        asm!(
            "push rbx", "ud2", ".ascii \"xen\"", "cpuid", "mov {s:e}, ebx", "pop rbx",
            s = out(reg) ebx,
            inout("eax") 0u32 => _, inout("ecx") 0u32 => _, out("edx") _,
        );
    }
    let amd = ebx == u32::from_le_bytes(*b"Auth") || ebx == u32::from_le_bytes(*b"Hygo");
    static FAR_PTR: [u16; 8] = [0, 0, 0x1007, 0, 0, 0, 0, 0];
    let (v, err, _, _) = expect_one(3, || {
        // SAFETY: the #GP handler skips the three-byte `rex64 lcall *(%rax)`.
        unsafe { asm!(".byte 0x48, 0xff, 0x18", in("rax") FAR_PTR.as_ptr(), options(att_syntax)) }
    });
    c.eq("lcall through a missing LDT → #GP", v as i64, 13);
    c.eq(
        "lcall #GP error: the selector the vendor's form reads",
        err as i64,
        if amd { 0x1004 } else { 0 },
    );
    for (name, sel, want) in [
        ("LDT", 0x000fu64, 0x000ci64),
        ("GDT", 100 << 3 | 3, 100 << 3),
    ] {
        let (v, err, _, _) = expect_one(2, || {
            // SAFETY: the #GP handler skips the two-byte `mov %eax, %ds`.
            unsafe { asm!("mov %eax, %ds", in("eax") sel as u32, options(att_syntax)) }
        });
        c.eq(name, v as i64, 13);
        c.eq(name, err as i64, want);
    }

    // Forced-emulation CPUID of Xen's leaf, and an emulated CR3 read.
    let sig: u32;
    // SAFETY: as above; the signature's first word comes back in EBX.
    unsafe {
        asm!(
            "push rbx", "ud2", ".ascii \"xen\"", "cpuid", "mov {s:e}, ebx", "pop rbx",
            s = out(reg) sig,
            inout("eax") 0x4000_0000u32 => _, inout("ecx") 0u32 => _, out("edx") _,
        );
    }
    c.eq(
        "CPUID 0x40000000 signature",
        i64::from(sig),
        i64::from(u32::from_le_bytes(*b"XenV")),
    );
    let cr3: u64;
    // SAFETY: reading CR3 is emulated for a PV kernel.
    unsafe { asm!("mov %cr3, {r}", r = out(reg) cr3, options(att_syntax, nomem, nostack)) };
    c.eq(
        "CR3 is the L4",
        cr3 as i64,
        (rt::mem::pfn_to_mfn(si.pt_base >> 12) << 12) as i64,
    );

    // MSRs as Xen emulates them: the segment bases, EFER; a non-canonical base is #GP.
    let rdmsr = |idx: u32| -> u64 {
        let (lo, hi): (u32, u32);
        // SAFETY: rdmsr is emulated for a PV kernel.
        unsafe { asm!("rdmsr", in("ecx") idx, out("eax") lo, out("edx") hi) };
        (u64::from(hi) << 32) | u64::from(lo)
    };
    let wrmsr = |idx: u32, v: u64| {
        // SAFETY: wrmsr is emulated for a PV kernel (the GS base is not used here).
        unsafe { asm!("wrmsr", in("ecx") idx, in("eax") v as u32, in("edx") (v >> 32) as u32) };
    };
    c.eq("EFER", rdmsr(0xc000_0080) as i64, 0xd01);
    wrmsr(0xc000_0102, 0x1234_5000);
    c.eq(
        "shadow GS base written and read",
        rdmsr(0xc000_0102) as i64,
        0x1234_5000,
    );
    // SAFETY: set_segment_base(SEGBASE_FS, base): FS is not used by this guest.
    let rc = unsafe { rt::hypercall(25, 0, 0x7777_0000, 0, 0, 0) };
    c.eq("set_segment_base(FS)", rc, 0);
    c.eq(
        "FS base through rdmsr",
        rdmsr(0xc000_0100) as i64,
        0x7777_0000,
    );
    // SAFETY: as above, refused.
    let rc = unsafe { rt::hypercall(25, 0, 0x8000_0000_0000_0000, 0, 0, 0) };
    c.eq("set_segment_base non-canonical", rc, -22);
    let (v, err, _, _) = expect_one(2, || wrmsr(0xc000_0102, 0x8000_0000_0000_0000));
    c.eq("wrmsr of a non-canonical base → #GP", v as i64, 13);
    c.eq("#GP error", err as i64, 0);
    wrmsr(0xc000_0102, 0);

    // CR0.TS follows fpu_taskswitch and clts (in one asm block: no FPU or SSE
    // instruction may run while TS is set).
    let (rc, with_ts, without_ts): (i64, u64, u64);
    // SAFETY: fpu_taskswitch(1) through the hypercall page, two emulated CR0 reads and
    // an emulated clts; only the listed registers change.
    unsafe {
        asm!(
            "mov eax, 5",
            "mov edi, 1",
            "call hypercall_page + 5 * 32",
            "mov {rc}, rax",
            "mov {a}, cr0",
            "clts",
            "mov {b}, cr0",
            rc = out(reg) rc, a = out(reg) with_ts, b = out(reg) without_ts,
            out("rax") _, out("rdi") _,
        );
    }
    c.eq("fpu_taskswitch(1)", rc, 0);
    c.eq("CR0.TS set", (with_ts >> 3 & 1) as i64, 1);
    c.eq("CR0.TS cleared by clts", (without_ts >> 3 & 1) as i64, 0);

    // Where the read-only M2P is (XENMEM_machphys_mapping): its alias in slot 257,
    // which reads without a fault on every KVM; and it reads as the M2P there.
    let mut mapping = [0u64; 3];
    // SAFETY: memory_op(XENMEM_machphys_mapping, &mapping): three words written.
    let rc = unsafe { rt::hypercall(12, 12, mapping.as_mut_ptr() as u64, 0, 0, 0) };
    c.eq("XENMEM_machphys_mapping", rc, 0);
    c.eq(
        "M2P start",
        mapping[0] as i64,
        0xffff_8080_0000_0000u64 as i64,
    );
    c.eq(
        "M2P end",
        mapping[1] as i64,
        0xffff_80c0_0000_0000u64 as i64,
    );
    c.eq(
        "the M2P there maps the L4's frame to its pfn",
        rt::peek(mapping[0] + (cr3 >> 12) * 8) as i64,
        (si.pt_base >> 12) as i64,
    );

    // A raw `syscall` from kernel mode is a hypercall.
    let version: i64;
    // SAFETY: xen_version(XENVER_version); syscall clobbers RCX and R11.
    unsafe {
        asm!("syscall", inout("rax") HYPERVISOR_xen_version as i64 => version,
             inlateout("rdi") 0u64 => _, inlateout("rsi") 0u64 => _, out("rcx") _,
             out("r11") _);
    }
    c.eq("syscall hypercall", version, 0x4_0017);

    // User mode and back: the user root is the kernel's (as XTF does), the kernel stack
    // for events from user mode is this one, the syscall callback is registered; an
    // `iret` enters user mode at `pvt_user`, whose `syscall` comes back through the
    // callback.
    c.eq(
        "NEW_USER_BASEPTR",
        rt::mmuext(MMUEXT_NEW_USER_BASEPTR, cr3 >> 12, 0),
        0,
    );
    let reg = CallbackRegister {
        ty: CALLBACKTYPE_syscall,
        flags: CALLBACKF_mask_events,
        address: pvt_syscall as *const () as u64,
        ..CallbackRegister::default()
    };
    // SAFETY: `reg` lives on the stack for the call.
    let rc = unsafe {
        rt::hypercall(
            HYPERVISOR_callback_op,
            u64::from(CALLBACKOP_register),
            &reg as *const _ as u64,
            0,
            0,
            0,
        )
    };
    c.eq("register the syscall callback", rc, 0);
    let user_sp = USER_STACK.as_ptr() as u64 + 8 * 500;
    let faults = traps::COUNT.load(Ordering::SeqCst);
    traps::SKIP.store(10, Ordering::SeqCst);
    // SAFETY: the round trip returns to label 3 with this stack; every register the
    // asm does not list is preserved by the hypervisor and the callback, and the
    // callee-saved ones are saved around it.
    unsafe {
        asm!(
            "push rbx", "push rbp", "push r12", "push r13", "push r14", "push r15",
            "lea rax, [rip + 3f]",
            "mov [rip + {krip}], rax",
            "mov [rip + {krsp}], rsp",
            // stack_switch(FLAT_KERNEL_SS, rsp - 256): events from user mode land below.
            "lea rsi, [rsp - 256]",
            "mov rdi, 0xe02b",
            "mov eax, {stack_switch}",
            "call hypercall_page + 3 * 32",
            // iret to user mode: {flags, rip, cs, rflags, rsp, ss}.
            "push 0xe02b",
            "push {usp}",
            "push 0x202",
            "push 0xe033",
            "push {uip}",
            "push 0",
            "jmp hypercall_page + 23 * 32",
            "3:",
            "pop r15", "pop r14", "pop r13", "pop r12", "pop rbp", "pop rbx",
            krip = sym KERNEL_RIP,
            krsp = sym KERNEL_RSP,
            stack_switch = const HYPERVISOR_stack_switch,
            usp = in(reg) user_sp,
            uip = in(reg) pvt_user as *const () as u64,
            out("rax") _, out("rcx") _, out("rdx") _, out("rsi") _, out("rdi") _,
            out("r8") _, out("r9") _, out("r10") _, out("r11") _,
        );
    }
    let ret = SYSCALL_RCX.load(Ordering::SeqCst);
    c.eq(
        "user syscall's RCX is after it",
        ret as i64,
        pvt_user as *const () as i64 + 12,
    );
    c.eq(
        "one user-mode #PF",
        (traps::COUNT.load(Ordering::SeqCst) - faults) as i64,
        1,
    );
    c.eq(
        "user #PF vector",
        traps::VEC.load(Ordering::SeqCst) as i64,
        14,
    );
    c.eq(
        "user #PF error code: user, read, not present",
        traps::ERR.load(Ordering::SeqCst) as i64,
        4,
    );
    c.eq(
        "user #PF saved CS keeps RPL 3",
        traps::CS.load(Ordering::SeqCst) as i64 & 0xffff,
        0xe033,
    );
    c.eq(
        "user #PF RIP",
        traps::RIP.load(Ordering::SeqCst) as i64,
        pvt_user as *const () as i64,
    );
    c.finish();
}
