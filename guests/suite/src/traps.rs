//! Exception handlers for guests that run with a trap table: entry stubs for #BP, #UD,
//! #GP, #PF and the software interrupts 0x80 and 0x81, which record what arrived (vector,
//! error code, RIP, saved CS), move RIP on by a chosen length and return with the `iret`
//! hypercall, as a PV kernel's handlers do.

use core::arch::global_asm;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use rt::abi::TrapInfo;
use rt::abi::hypercall::HYPERVISOR_set_trap_table;

/// What the last exception looked like: vector, error code, RIP, saved CS, count.
pub static VEC: AtomicU64 = AtomicU64::new(0);
pub static ERR: AtomicU64 = AtomicU64::new(0);
pub static RIP: AtomicU64 = AtomicU64::new(0);
pub static CS: AtomicU64 = AtomicU64::new(0);
pub static COUNT: AtomicU64 = AtomicU64::new(0);
/// Bytes the handler moves RIP forward (the faulting instruction's length).
pub static SKIP: AtomicU64 = AtomicU64::new(0);
/// Set: the next exception resumes with Xen's flat CS and SS (once).
pub static FLAT_RESUME: AtomicBool = AtomicBool::new(false);
// Entry points. Xen's bounce frame is {RCX, R11, [error], RIP, CS, RFLAGS, RSP, SS};
// each entry pushes its vector (and a 0 error code where the vector has none, so one
// common path serves all), calls `pvt_handler` with the frame, and returns with the
// `iret` hypercall (slot 23 of the hypercall page, which wants a flags word on top of
// the RIP..SS frame).
global_asm!(
    concat!(
        r#"
    .macro NOERR vec, name
    .globl \name
\name:
    pop %rcx
    pop %r11
    push $0
    push %r11
    push %rcx
    push $\vec
    jmp pvt_common
    .endm

    .macro ERRC vec, name
    .globl \name
\name:
    push $\vec
    jmp pvt_common
    .endm

    NOERR 3, pvt_bp
    NOERR 6, pvt_ud
    ERRC 13, pvt_gp
    ERRC 14, pvt_pf
    NOERR 0x80, pvt_int80
    NOERR 0x81, pvt_int81

pvt_common:
    # [vec, rcx, r11, err, rip, cs, rflags, rsp, ss]
    push %rax
    "#,
        push_scratch!(),
        r#"
    push %rbp
    lea 64(%rsp), %rdi
    mov %rsp, %rbp
    and $-16, %rsp
    call pvt_handler
    mov %rbp, %rsp
    pop %rbp
    "#,
        pop_scratch!(),
        r#"
    pop %rax
    add $8, %rsp
    pop %rcx
    pop %r11
    add $8, %rsp
    push $0
    jmp hypercall_page + 23 * 32
    "#
    ),
    options(att_syntax)
);

unsafe extern "C" {
    fn pvt_bp();
    fn pvt_ud();
    fn pvt_gp();
    fn pvt_pf();
    fn pvt_int80();
    fn pvt_int81();
}

#[unsafe(no_mangle)]
extern "C" fn pvt_handler(frame: *mut u64) {
    // SAFETY: `frame` points at the frame the entry stub built on this stack: vector,
    // RCX, R11, error, RIP, CS, RFLAGS, RSP, SS.
    let f = unsafe { core::slice::from_raw_parts_mut(frame, 9) };
    VEC.store(f[0], Ordering::SeqCst);
    ERR.store(f[3], Ordering::SeqCst);
    RIP.store(f[4], Ordering::SeqCst);
    CS.store(f[5], Ordering::SeqCst);
    COUNT.fetch_add(1, Ordering::SeqCst);
    f[4] += SKIP.load(Ordering::SeqCst);
    if FLAT_RESUME.swap(false, Ordering::SeqCst) {
        // Resume in kernel mode with Xen's flat selectors (the faulting context's were
        // refused).
        (f[5], f[8]) = (0xe030, 0xe02b);
    }
}

pub fn trap(vector: u8, dpl: u8, handler: unsafe extern "C" fn()) -> TrapInfo {
    TrapInfo {
        vector,
        flags: dpl,
        cs: 0xe033,
        _pad: 0,
        address: handler as *const () as u64,
    }
}

/// Runs `f` expecting exactly one exception; returns (vector, error, RIP, CS).
pub fn expect_one(skip: u64, f: impl FnOnce()) -> (u64, u64, u64, u64) {
    SKIP.store(skip, Ordering::SeqCst);
    let before = COUNT.load(Ordering::SeqCst);
    f();
    let n = COUNT.load(Ordering::SeqCst) - before;
    if n != 1 {
        rt::println!("FAIL: {n} exceptions where one was expected");
        return (u64::MAX, 0, 0, 0);
    }
    (
        VEC.load(Ordering::SeqCst),
        ERR.load(Ordering::SeqCst),
        RIP.load(Ordering::SeqCst),
        CS.load(Ordering::SeqCst),
    )
}

/// Installs the handlers: #BP (DPL 3), #UD, #GP, #PF, `int $0x80` (DPL 3), `int $0x81`
/// (DPL 0). Returns `set_trap_table`'s result.
pub fn install() -> i64 {
    let table = [
        trap(3, 3, pvt_bp),
        trap(6, 0, pvt_ud),
        trap(13, 0, pvt_gp),
        trap(14, 0, pvt_pf),
        trap(0x80, 3, pvt_int80),
        trap(0x81, 0, pvt_int81),
        TrapInfo::default(),
    ];
    // SAFETY: the table lives on the stack for the call.
    unsafe { rt::hypercall(HYPERVISOR_set_trap_table, table.as_ptr() as u64, 0, 0, 0, 0) }
}
