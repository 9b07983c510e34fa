//! A trap table whose #PF handler is not mapped, then a page fault: each delivery faults
//! again at the handler and pushes another bounce frame, until the frames run off the
//! writable stack. Xen crashes the domain then (a fault writing the bounce frame); the
//! VMM must do the same and say why, never loop or panic.
#![no_std]
#![no_main]

use rt::abi::hypercall::HYPERVISOR_set_trap_table;
use rt::abi::{StartInfo, TrapInfo};

#[unsafe(no_mangle)]
pub fn guest_main(_si: &'static StartInfo) {
    let table = [
        suite::traps::trap(14, 0, unmapped_handler()),
        TrapInfo::default(),
    ];
    // SAFETY: the table lives on the stack for the call.
    let rc = unsafe { rt::hypercall(HYPERVISOR_set_trap_table, table.as_ptr() as u64, 0, 0, 0, 0) };
    if rc != 0 {
        rt::finish(Some("set_trap_table"));
    }
    rt::println!("bad_bounce: #PF handler at an unmapped address, now faulting");
    let v = rt::peek(0x4000_0000);
    rt::println!("read {v:#x}: the domain was not crashed");
    rt::finish(Some("not crashed"));
}

/// A canonical address nothing maps, as a handler.
fn unmapped_handler() -> unsafe extern "C" fn() {
    // SAFETY: never called by this guest: it only goes into the trap table, where the
    // hypervisor bounces to it (and faults fetching it).
    unsafe { core::mem::transmute::<u64, unsafe extern "C" fn()>(0x0000_6000_0000_0000) }
}
