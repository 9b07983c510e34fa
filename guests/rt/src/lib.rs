//! Runtime for freestanding Xen PV test guests: the entry point, the Xen ELF notes, the
//! hypercall page, hypercall wrappers over `pvmmu-abi`, a console, and a panic handler
//! that reports failure.
#![no_std]

use core::arch::{asm, global_asm};
use core::fmt::{self, Write};

pub use pvmmu_abi as abi;
use pvmmu_abi::{MmuUpdate, MmuextOp, StartInfo};

// The entry point: Xen starts the kernel with RSI = start_info and RSP = top of the
// one-page boot stack. Switch to the runtime's own 64 KiB stack and call into Rust.
global_asm!(
    r#"
    .section .text._start, "ax"
    .globl _start
_start:
    lea rt_stack_top(%rip), %rsp
    mov %rsi, %rdi
    call rt_entry
    ud2

    .section .bss.rt_stack, "aw", @nobits
    .balign 4096
    .space 65536
rt_stack_top:
    "#,
    options(att_syntax)
);

// The hypercall page: filled with `ret` until the hypervisor writes its stubs.
global_asm!(
    r#"
    .section .text.hypercall_page, "ax"
    .balign 4096
    .globl hypercall_page
hypercall_page:
    .fill 4096, 1, 0xc3
    "#,
    options(att_syntax)
);

// Xen ELF notes: guest OS, ABI version, loader, hypercall page.
global_asm!(
    r#"
    .section .note.Xen, "a", @note
    .balign 4
    .long 4, 22f - 21f, 6
    .asciz "Xen"
21: .asciz "pvmmu-test"
22: .balign 4
    .long 4, 24f - 23f, 5
    .asciz "Xen"
23: .asciz "xen-3.0"
24: .balign 4
    .long 4, 26f - 25f, 8
    .asciz "Xen"
25: .asciz "generic"
26: .balign 4
    .long 4, 8, 2
    .asciz "Xen"
    .quad hypercall_page
    .balign 4
    .long 4, 28f - 27f, 10
    .asciz "Xen"
27: .asciz "writable_page_tables|pae_pgdir_above_4gb"
28: .balign 4
    "#,
    options(att_syntax)
);

unsafe extern "C" {
    static hypercall_page: u8;
}

unsafe extern "Rust" {
    /// The guest program: defined by each guest with `#[unsafe(no_mangle)]`.
    fn guest_main(si: &'static StartInfo);
}

static mut START_INFO: *const StartInfo = core::ptr::null();

/// The start_info page the hypervisor passed.
pub fn start_info() -> &'static StartInfo {
    // SAFETY: set once in `rt_entry` before any guest code runs, never written again;
    // the page stays mapped for the guest's life.
    unsafe { &*START_INFO }
}

#[unsafe(no_mangle)]
extern "C" fn rt_entry(si: *const StartInfo) -> ! {
    // SAFETY: single-threaded boot; `si` is the start_info VA the hypervisor passed.
    unsafe { START_INFO = si };
    // SAFETY: provided by the guest program.
    unsafe { guest_main(start_info()) };
    shutdown(abi::sched::SHUTDOWN_poweroff)
}

/// Raw hypercall `nr` with up to five arguments (Xen's 64-bit register ABI).
///
/// # Safety
/// The arguments must be valid for the hypercall: pointers to memory the hypervisor may
/// read or write.
pub unsafe fn hypercall(nr: u64, a1: u64, a2: u64, a3: u64, a4: u64, a5: u64) -> i64 {
    // SAFETY: the hypercall page is mapped and was filled by the hypervisor.
    let stub = unsafe { core::ptr::addr_of!(hypercall_page).add(nr as usize * 32) };
    let ret: i64;
    // SAFETY: the stub changes RAX, and, as Xen's ABI allows, the argument registers (a
    // preempted call is re-issued with them rewritten) and RCX/R11 (Xen's stubs use
    // `syscall`); the red zone is skipped before the call pushes its return address.
    unsafe {
        asm!(
            "sub rsp, 128",
            "call {stub}",
            "add rsp, 128",
            stub = in(reg) stub,
            inlateout("rax") nr as i64 => ret,
            inlateout("rdi") a1 => _, inlateout("rsi") a2 => _, inlateout("rdx") a3 => _,
            inlateout("r10") a4 => _, inlateout("r8") a5 => _,
            out("rcx") _, out("r11") _,
        );
    }
    ret
}

/// `mmu_update`: returns (rc, done).
pub fn mmu_update(reqs: &[MmuUpdate], foreigndom: u32) -> (i64, u32) {
    let mut done = 0u32;
    // SAFETY: the array and `done` are valid guest memory.
    let rc = unsafe {
        hypercall(
            abi::hypercall::HYPERVISOR_mmu_update,
            reqs.as_ptr() as u64,
            reqs.len() as u64,
            &mut done as *mut u32 as u64,
            u64::from(foreigndom),
            0,
        )
    };
    (rc, done)
}

/// `mmuext_op`: returns (rc, done).
pub fn mmuext_op(ops: &[MmuextOp], foreigndom: u32) -> (i64, u32) {
    let mut done = 0u32;
    // SAFETY: as for `mmu_update`.
    let rc = unsafe {
        hypercall(
            abi::hypercall::HYPERVISOR_mmuext_op,
            ops.as_ptr() as u64,
            ops.len() as u64,
            &mut done as *mut u32 as u64,
            u64::from(foreigndom),
            0,
        )
    };
    (rc, done)
}

/// One mmuext operation on this domain.
pub fn mmuext(cmd: u32, arg1: u64, arg2: u64) -> i64 {
    mmuext_op(
        &[MmuextOp::new(cmd, arg1, arg2)],
        u32::from(abi::DOMID_SELF),
    )
    .0
}

/// `update_va_mapping(va, val, flags)`.
pub fn update_va_mapping(va: u64, val: u64, flags: u64) -> i64 {
    // SAFETY: no pointers unless `flags` carries a vCPU bitmap pointer the caller owns.
    unsafe {
        hypercall(
            abi::hypercall::HYPERVISOR_update_va_mapping,
            va,
            val,
            flags,
            0,
            0,
        )
    }
}

/// `vm_assist(cmd, type)`.
pub fn vm_assist(cmd: u32, ty: u32) -> i64 {
    // SAFETY: no pointers.
    unsafe {
        hypercall(
            abi::hypercall::HYPERVISOR_vm_assist,
            cmd.into(),
            ty.into(),
            0,
            0,
            0,
        )
    }
}

/// `xen_version(cmd, arg)`.
pub fn xen_version(cmd: u32, arg: u64) -> i64 {
    // SAFETY: `arg` is null or a buffer the caller owns.
    unsafe {
        hypercall(
            abi::hypercall::HYPERVISOR_xen_version,
            cmd.into(),
            arg,
            0,
            0,
            0,
        )
    }
}

/// Writes bytes to the hypervisor console.
pub fn console_write(bytes: &[u8]) -> i64 {
    // SAFETY: the buffer is valid guest memory.
    unsafe {
        hypercall(
            abi::hypercall::HYPERVISOR_console_io,
            u64::from(abi::console::CONSOLEIO_write),
            bytes.len() as u64,
            bytes.as_ptr() as u64,
            0,
            0,
        )
    }
}

/// `key=N` on the guest's command line (decimal or 0x hex), if present and valid.
pub fn cmdline_arg(si: &StartInfo, key: &[u8]) -> Option<u64> {
    let line = &si.cmd_line;
    let end = line.iter().position(|&b| b == 0).unwrap_or(line.len());
    line[..end].split(|&b| b == b' ').find_map(|w| {
        let v = w.strip_prefix(key)?.strip_prefix(b"=")?;
        let (digits, radix) = match v.strip_prefix(b"0x") {
            Some(h) => (h, 16),
            None => (v, 10),
        };
        let s = core::str::from_utf8(digits).ok()?;
        u64::from_str_radix(s, radix).ok()
    })
}

/// Arms (or with `timeout_s` 0 releases) one of the domain's watchdog timers
/// (`SCHEDOP_watchdog`): returns the timer's id, 0, or -errno.
pub fn watchdog(id: u32, timeout_s: u32) -> i64 {
    let arg = [id, timeout_s];
    // SAFETY: the argument block lives on the stack for the call.
    unsafe {
        hypercall(
            abi::hypercall::HYPERVISOR_sched_op,
            6, // SCHEDOP_watchdog
            arg.as_ptr() as u64,
            0,
            0,
            0,
        )
    }
}

/// Shuts the domain down with `reason`.
pub fn shutdown(reason: u32) -> ! {
    let arg = abi::SchedShutdown { reason };
    loop {
        // SAFETY: `arg` lives on the stack for the call.
        unsafe {
            hypercall(
                abi::hypercall::HYPERVISOR_sched_op,
                u64::from(abi::sched::SCHEDOP_shutdown),
                &arg as *const _ as u64,
                0,
                0,
                0,
            );
        }
    }
}

/// The console, as a `core::fmt::Write`.
pub struct Console;

impl Write for Console {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for chunk in s.as_bytes().chunks(512) {
            if console_write(chunk) < 0 {
                return Err(fmt::Error);
            }
        }
        Ok(())
    }
}

/// Formats into a line buffer and hands it to the console in as few hypercalls as
/// possible.
pub struct Buffered {
    buf: [u8; 256],
    len: usize,
}

impl Buffered {
    /// An empty buffer.
    pub const fn new() -> Buffered {
        Buffered {
            buf: [0; 256],
            len: 0,
        }
    }

    /// Writes out what is buffered.
    pub fn flush(&mut self) {
        if self.len > 0 {
            console_write(&self.buf[..self.len]);
            self.len = 0;
        }
    }
}

impl Default for Buffered {
    fn default() -> Self {
        Buffered::new()
    }
}

impl Write for Buffered {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for &b in s.as_bytes() {
            if self.len == self.buf.len() {
                self.flush();
            }
            self.buf[self.len] = b;
            self.len += 1;
        }
        Ok(())
    }
}

/// Prints to the hypervisor console (one hypercall per 256 bytes).
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => {{
        let mut b = $crate::Buffered::new();
        let _ = core::fmt::Write::write_fmt(&mut b, format_args!($($arg)*));
        b.flush();
    }};
}

/// Prints a line to the hypervisor console.
#[macro_export]
macro_rules! println {
    () => { $crate::print!("\n") };
    ($($arg:tt)*) => {{
        let mut b = $crate::Buffered::new();
        let _ = core::fmt::Write::write_fmt(&mut b, format_args!($($arg)*));
        let _ = core::fmt::Write::write_str(&mut b, "\n");
        b.flush();
    }};
}

/// Reports the verdict as the last console line and shuts down accordingly.
pub fn finish(failure: Option<&str>) -> ! {
    match failure {
        None => {
            println!("Test result: SUCCESS");
            shutdown(abi::sched::SHUTDOWN_poweroff)
        }
        Some(what) => {
            println!("Test result: FAILURE: {}", what);
            shutdown(abi::sched::SHUTDOWN_crash)
        }
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    println!("PANIC: {}", info);
    println!("Test result: FAILURE: panic");
    shutdown(abi::sched::SHUTDOWN_crash)
}

/// Needed by the precompiled libcore (built for unwinding); never called (panic=abort).
#[unsafe(no_mangle)]
pub extern "C" fn rust_eh_personality() {}

/// # Safety
/// As C's `memcpy`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memcpy(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    // SAFETY: the caller guarantees both ranges; `rep movsb` copies forwards.
    unsafe {
        asm!("rep movsb", inout("rcx") n => _, inout("rdi") dst => _, inout("rsi") src => _, options(nostack, preserves_flags));
    }
    dst
}

/// # Safety
/// As C's `memmove`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memmove(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    if (dst as usize) <= (src as usize) || (dst as usize) >= (src as usize + n) {
        // SAFETY: forwards copy is safe when dst does not start inside src.
        return unsafe { memcpy(dst, src, n) };
    }
    let mut i = n;
    while i > 0 {
        i -= 1;
        // SAFETY: in bounds of both ranges, copying backwards.
        unsafe { core::ptr::write_volatile(dst.add(i), core::ptr::read_volatile(src.add(i))) };
    }
    dst
}

/// # Safety
/// As C's `memset`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memset(dst: *mut u8, c: i32, n: usize) -> *mut u8 {
    // SAFETY: the caller guarantees the range.
    unsafe {
        asm!("rep stosb", inout("rcx") n => _, inout("rdi") dst => _, in("al") c as u8, options(nostack, preserves_flags));
    }
    dst
}

/// # Safety
/// As C's `memcmp`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    for i in 0..n {
        // SAFETY: the caller guarantees both ranges.
        let (x, y) = unsafe {
            (
                core::ptr::read_volatile(a.add(i)),
                core::ptr::read_volatile(b.add(i)),
            )
        };
        if x != y {
            return i32::from(x) - i32::from(y);
        }
    }
    0
}

/// # Safety
/// As C's `bcmp`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    // SAFETY: same contract.
    unsafe { memcmp(a, b, n) }
}

/// Reads the 8-byte value at a virtual address.
pub fn peek(va: u64) -> u64 {
    // SAFETY: the caller names a mapped, readable address (a fault ends the test).
    unsafe { core::ptr::read_volatile(va as *const u64) }
}

/// Writes the 8-byte value at a virtual address.
pub fn poke(va: u64, v: u64) {
    // SAFETY: the caller names a mapped, writable address (a fault ends the test).
    unsafe { core::ptr::write_volatile(va as *mut u64, v) }
}

/// Simple frame bookkeeping over the builder's layout.
pub mod mem {
    use super::start_info;

    /// Virtual address of a pseudo-physical frame inside the builder's initial mapping.
    pub fn pfn_to_va(pfn: u64) -> u64 {
        pfn << 12
    }

    /// The MFN of a pfn (through the guest's p2m list).
    pub fn pfn_to_mfn(pfn: u64) -> u64 {
        super::peek(start_info().mfn_list + pfn * 8)
    }

    /// First pfn after the builder's areas (the boot stack is the last of them).
    pub fn first_free_pfn() -> u64 {
        let si = start_info();
        (si.pt_base >> 12) + si.nr_pt_frames + 1
    }

    /// One past the last pfn of the builder's initial mapping (4 MiB aligned).
    pub fn mapped_end_pfn() -> u64 {
        (((first_free_pfn() << 12) + (512 << 10)).div_ceil(4 << 20) * (4 << 20)) >> 12
    }
}
