//! A hostile guest with I/O-memory rights: maps the MMIO test device and runs `xsave64`
//! (x87 and SSE state) into it. On Xen the hardware executes it; under KVM the store
//! needs emulation KVM does not have (its emulator has no XSAVE; `fxsave64` it has
//! on some hosts). Either way the VMM must end the run as the guest's doing (a domain
//! crash that names the instruction, or the store done), never as a VMM error.
#![no_std]
#![no_main]

use rt::abi::{DOMID_IO, MmuUpdate, StartInfo};
use suite::{A, Check, Frames, P, RW};

const R: u64 = 1 << 30;
const DEVICE: u64 = 0x1_0000_0000;

#[unsafe(no_mangle)]
pub fn guest_main(_si: &'static StartInfo) {
    let mut c = Check::new();
    let mut frames = Frames::new();
    let (l2, l1) = (frames.take(), frames.take());
    let data = [frames.take()];
    let l1m = suite::map_range(l2, l1, 1, &data);
    let map = [MmuUpdate {
        ptr: (l1m << 12) + 8,
        val: DEVICE | P | RW | A,
    }];
    c.update("map the device", &map, u32::from(DOMID_IO), 0, 1);
    rt::println!("xsave64 into the device");
    // SAFETY: R+4K maps the 4 KiB test device read-write; the 576-byte save area of the
    // x87 and SSE components lies inside it and is 64-byte aligned. Nothing in this guest reads the device after.
    unsafe {
        core::arch::asm!(
            "xsave64 [{}]",
            in(reg) R + 4096,
            in("eax") 3u32,
            in("edx") 0u32,
            options(nostack),
        );
    }
    c.ok("xsave64 into MMIO completed", true);
    c.finish();
}
