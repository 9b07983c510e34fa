//! Without I/O-memory permission, mapping the MMIO test device is refused with -EPERM.
#![no_std]
#![no_main]

use rt::abi::{DOMID_IO, Errno, MmuUpdate, StartInfo};
use suite::{A, Check, Frames, P, RW, SELF, err};

const DEVICE: u64 = 0x1_0000_0000;

#[unsafe(no_mangle)]
pub fn guest_main(_si: &'static StartInfo) {
    let mut c = Check::new();
    let mut frames = Frames::new();
    let (l2, l1) = (frames.take(), frames.take());
    let data = [frames.take()];
    let l1m = suite::map_range(l2, l1, 1, &data);
    let batch = [
        MmuUpdate {
            ptr: l1m << 12,
            val: (data[0] << 12) | P | RW | A,
        },
        MmuUpdate {
            ptr: (l1m << 12) + 8,
            val: DEVICE | P | RW | A,
        },
    ];
    c.update(
        "map the device with FD = DOMID_IO",
        &batch,
        u32::from(DOMID_IO),
        err(Errno::EPERM),
        1,
    );
    c.update(
        "map the device with FD = self",
        &batch[1..],
        SELF,
        err(Errno::EPERM),
        0,
    );
    c.eq(
        "rejected entry untouched",
        rt::peek(rt::mem::pfn_to_va(l1) + 8) as i64,
        0,
    );
    c.finish();
}
