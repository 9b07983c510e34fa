//! Multicall batches with a failing entry in the middle: every entry runs, each gets its
//! own result, the multicall itself returns 0; nesting is refused per entry.
#![no_std]
#![no_main]

use rt::abi::hypercall::*;
use rt::abi::mmu::{MMUEXT_TLB_FLUSH_LOCAL, UVMF_INVLPG};
use rt::abi::{Errno, MmuUpdate, MmuextOp, MulticallEntry, StartInfo};
use rt::{mem, peek, poke};
use suite::{A, Check, Frames, P, RW, SELF, err};

const R: u64 = 1 << 30;

#[unsafe(no_mangle)]
pub fn guest_main(_si: &'static StartInfo) {
    let mut c = Check::new();
    let mut frames = Frames::new();
    let (l2, l1) = (frames.take(), frames.take());
    let data: [u64; 4] = core::array::from_fn(|_| frames.take());
    let alt: [u64; 4] = core::array::from_fn(|_| frames.take());
    for &f in data.iter().chain(alt.iter()) {
        poke(mem::pfn_to_va(f), 0xca11_0000 | f);
    }
    let l1m = suite::map_range(l2, l1, 1, &data);
    let l4 = suite::builder_l4();
    let inner = [MmuUpdate {
        ptr: (l1m << 12) + 2 * 8,
        val: (alt[2] << 12) | P | RW | A,
    }];
    let bad_op = [MmuextOp::new(99, 0, 0)];
    let mut done = 0u32;
    let e = |op: u64, args: [u64; 6]| MulticallEntry {
        op,
        result: 0x5555,
        args,
    };
    let mut list = [
        e(
            HYPERVISOR_update_va_mapping,
            [R, (alt[0] << 12) | P | RW | A, UVMF_INVLPG, 0, 0, 0],
        ),
        e(
            HYPERVISOR_update_va_mapping,
            [R + 4096, (l4 << 12) | P | RW | A, UVMF_INVLPG, 0, 0, 0],
        ),
        e(
            HYPERVISOR_mmu_update,
            [
                inner.as_ptr() as u64,
                1,
                &mut done as *mut u32 as u64,
                u64::from(SELF),
                0,
                0,
            ],
        ),
        e(
            HYPERVISOR_mmuext_op,
            [bad_op.as_ptr() as u64, 1, 0, u64::from(SELF), 0, 0],
        ),
        e(HYPERVISOR_xen_version, [0; 6]),
        e(HYPERVISOR_multicall, [0, 0, 0, 0, 0, 0]),
        e(
            HYPERVISOR_update_va_mapping,
            [
                R + 3 * 4096,
                (alt[3] << 12) | P | RW | A,
                UVMF_INVLPG,
                0,
                0,
                0,
            ],
        ),
    ];
    // SAFETY: the list and everything its entries point at live on this stack.
    let rc = unsafe {
        rt::hypercall(
            HYPERVISOR_multicall,
            list.as_mut_ptr() as u64,
            list.len() as u64,
            0,
            0,
            0,
        )
    };
    c.eq("multicall returns 0", rc, 0);
    let want = [
        0,
        err(Errno::EBUSY),
        0,
        err(Errno::ENOSYS),
        0x0004_0017,
        err(Errno::EINVAL),
        0,
    ];
    for (i, w) in want.iter().enumerate() {
        c.eq("per-entry result", list[i].result as i64, *w);
    }
    c.eq("inner mmu_update done", i64::from(done), 1);
    c.eq("flush", rt::mmuext(MMUEXT_TLB_FLUSH_LOCAL, 0, 0), 0);
    c.eq(
        "entry 0 applied",
        peek(R) as i64,
        (0xca11_0000 | alt[0]) as i64,
    );
    c.eq(
        "entry 1 refused: page 1 unchanged",
        peek(R + 4096) as i64,
        (0xca11_0000 | data[1]) as i64,
    );
    c.eq(
        "entry 2 applied",
        peek(R + 2 * 4096) as i64,
        (0xca11_0000 | alt[2]) as i64,
    );
    c.eq(
        "entry 6 applied after the failures",
        peek(R + 3 * 4096) as i64,
        (0xca11_0000 | alt[3]) as i64,
    );
    // An inaccessible list.
    // SAFETY: the hypervisor only reads the (invalid) list pointer.
    let rc = unsafe { rt::hypercall(HYPERVISOR_multicall, 0xffff_8000_0000_0000, 1, 0, 0, 0) };
    c.eq("list in the hypervisor's range", rc, err(Errno::EFAULT));
    c.finish();
}
