//! Events from inside, shared by the guests that take them: shared_info mapped into
//! the guest, the event callbacks of vCPUs 0 and 1 (Xen's bounce frame saved, a Rust
//! handler called, `iret` back), and the 2-level scan of a vCPU's pending ports.

use core::arch::global_asm;
use core::sync::atomic::{AtomicU8, AtomicU64, Ordering};

use rt::abi::MmuUpdate;
use rt::mem;

use crate::{A, Frames, P, RW, l1e_addr};

/// Where shared_info is mapped (0 until [`map_shared_info`]).
static SHINFO: AtomicU64 = AtomicU64::new(0);
/// The event bitmaps, after the 32 `vcpu_info`s in shared_info.
pub const PENDING: u64 = 2048;
/// The mask bitmap.
pub const MASK: u64 = 2560;

// The callbacks of vCPUs 0 and 1: Xen's frame is [RCX, R11, RIP, CS, RFLAGS, RSP, SS].
// Save what the handler may clobber, call `suite_evt_handler(vcpu)` (each guest that
// registers a callback defines it; weak, so the others link without one), and return
// with the `iret` hypercall.
global_asm!(
    concat!(
        r#"
    .weak suite_evt_handler
    .macro SUITE_EVT vcpu
    .globl suite_evt\vcpu
suite_evt\vcpu:
    pop %rcx
    pop %r11
    push %rax
    push %rcx
    "#,
        push_scratch!(),
        r#"
    push %r11
    push %rbp
    mov %rsp, %rbp
    and $-16, %rsp
    mov $\vcpu, %edi
    call suite_evt_handler
    mov %rbp, %rsp
    pop %rbp
    pop %r11
    "#,
        pop_scratch!(),
        r#"
    pop %rcx
    pop %rax
    push $0
    jmp hypercall_page + 23 * 32
    .endm

    SUITE_EVT 0
    SUITE_EVT 1
    "#
    ),
    options(att_syntax)
);

unsafe extern "C" {
    fn suite_evt0();
    fn suite_evt1();
}

/// The address of vCPU `vcpu`'s event callback entry (0 or 1).
pub fn callback(vcpu: u32) -> u64 {
    if vcpu == 0 {
        suite_evt0 as *const () as u64
    } else {
        suite_evt1 as *const () as u64
    }
}

/// Registers vCPU 0's event callback ([`callback`]) with `CALLBACKOP_register`:
/// returns RAX.
pub fn register_callback() -> i64 {
    let cb = rt::abi::CallbackRegister {
        ty: rt::abi::callback::CALLBACKTYPE_event,
        flags: 0,
        _pad: 0,
        address: callback(0),
    };
    // SAFETY: the registration block lives for the call.
    unsafe {
        rt::hypercall(
            rt::abi::hypercall::HYPERVISOR_callback_op,
            u64::from(rt::abi::callback::CALLBACKOP_register),
            &cb as *const _ as u64,
            0,
            0,
            0,
        )
    }
}

/// `event_channel_op(cmd, arg)`: returns RAX.
pub fn evtchn(cmd: u64, arg: &mut [u32]) -> i64 {
    // SAFETY: `arg` is the command's argument block.
    unsafe {
        rt::hypercall(
            rt::abi::hypercall::HYPERVISOR_event_channel_op,
            cmd,
            arg.as_mut_ptr() as u64,
            0,
            0,
            0,
        )
    }
}

/// Maps frame `mfn` at the VA of a free pseudo-physical frame; returns the VA.
pub fn map_frame(frames: &mut Frames, mfn: u64) -> u64 {
    let va = mem::pfn_to_va(frames.take());
    let u = [MmuUpdate {
        ptr: l1e_addr(va),
        val: (mfn << 12) | P | RW | A,
    }];
    if rt::mmu_update(&u, u32::from(rt::abi::DOMID_SELF)).0 != 0 {
        rt::finish(Some("mapping a hypervisor page"));
    }
    va
}

/// Maps shared_info (machine frame `mfn`) for [`word`] and [`byte`]; returns its VA.
pub fn map_shared_info(frames: &mut Frames, mfn: u64) -> u64 {
    let va = map_frame(frames, mfn);
    SHINFO.store(va, Ordering::SeqCst);
    va
}

/// A word of shared_info.
pub fn word(off: u64) -> &'static AtomicU64 {
    // SAFETY: shared_info is mapped at SHINFO for the whole run (the guests map it
    // first); offsets are aligned words inside the page.
    unsafe { &*((SHINFO.load(Ordering::Relaxed) + off) as *const AtomicU64) }
}

/// A byte of shared_info.
pub fn byte(off: u64) -> &'static AtomicU8 {
    // SAFETY: as `word`, one byte.
    unsafe { &*((SHINFO.load(Ordering::Relaxed) + off) as *const AtomicU8) }
}

/// Xen's 2-level scan for vCPU `vcpu`: clears its upcall-pending flag and selector
/// and offers every pending, unmasked port to `take`; a port it takes is cleared.
/// Repeats until nothing is pending.
pub fn scan(vcpu: u64, mut take: impl FnMut(usize) -> bool) {
    let info = vcpu * 64;
    loop {
        byte(info).store(0, Ordering::SeqCst); // evtchn_upcall_pending
        let sel = word(info + 8).swap(0, Ordering::SeqCst);
        if sel == 0 {
            return;
        }
        for w in 0..64 {
            if sel & (1 << w) == 0 {
                continue;
            }
            let bits = word(PENDING + w * 8).load(Ordering::SeqCst)
                & !word(MASK + w * 8).load(Ordering::SeqCst);
            for b in 0..64 {
                if bits & (1 << b) != 0 && take((w * 64 + b) as usize) {
                    word(PENDING + w * 8).fetch_and(!(1 << b), Ordering::SeqCst);
                }
            }
        }
    }
}
