//! XSA-279: update_va_mapping must audit the VA before using it, and must not flush
//! after a failed update (Xen used to INVLPG the unaudited, possibly non-canonical VA).
//! A non-canonical VA, or one in Xen's range, is -EINVAL with every flush form, and the
//! guest survives. A bogus vCPU-bitmap pointer is never read when the update failed
//! (-EINVAL, not -EFAULT). Afterwards update_va_mapping still works on a real range.
#![no_std]
#![no_main]

use rt::abi::mmu::{UVMF_ALL, UVMF_INVLPG, UVMF_LOCAL, UVMF_NONE, UVMF_TLB_FLUSH};
use rt::abi::{Errno, StartInfo};
use rt::{mem, peek, poke};
use suite::{A, Check, Frames, P, RW, err};

const L3_SLOT: u64 = 1;
const R: u64 = L3_SLOT << 30;
const US: u64 = 1 << 2;
const GUEST_KERNEL: u64 = 1 << 52;

fn tag(pfn: u64) -> u64 {
    0x7873_6132_3739_0000 | pfn
}

#[unsafe(no_mangle)]
pub fn guest_main(_si: &'static StartInfo) {
    let mut c = Check::new();
    let mut frames = Frames::new();
    let (l2, l1) = (frames.take(), frames.take());
    let data: [u64; 4] = core::array::from_fn(|_| frames.take());
    let spare = frames.take();
    for &d in data.iter().chain(core::iter::once(&spare)) {
        poke(mem::pfn_to_va(d), tag(d));
    }
    let l1 = suite::map_range(l2, l1, L3_SLOT, &data);

    let flag_forms = [
        UVMF_INVLPG | UVMF_ALL,
        UVMF_TLB_FLUSH | UVMF_LOCAL,
        UVMF_INVLPG | UVMF_LOCAL,
        UVMF_TLB_FLUSH | UVMF_ALL,
        UVMF_NONE,
        3, // flush type 3: no flush
        // A vCPU-bitmap pointer that can't be read: only used for a flush, which a failed
        // update never does.
        0xdead_0000_0000_0000 | UVMF_INVLPG,
        0xdead_0000_0000_0000 | UVMF_TLB_FLUSH,
    ];
    let values = [(spare << 12) | P | RW | A, (spare << 12) | P | A, 0];
    // Non-canonical VAs, then Xen's range (slots 256..271).
    let bad_vas = [
        0x0000_8000_0000_0000u64,
        0x0000_8000_0000_1000,
        0x8000_0000_0000_0000,
        0x1234_5678_9abc_d000,
        0xffff_7fff_ffff_f000,
        0xffff_8000_0000_1000,
        0xffff_8000_0000_0000,
        0xffff_8040_0000_0000,
        0xffff_87ff_ffff_f000,
    ];
    let mut n = 0;
    for &va in &bad_vas {
        for &f in &flag_forms {
            for &v in &values {
                c.eq(
                    "update_va_mapping on a bad VA",
                    rt::update_va_mapping(va, v, f),
                    err(Errno::EINVAL),
                );
                n += 1;
            }
        }
    }
    // The two forms the advisory names, once more on their own.
    c.eq(
        "non-canonical VA, INVLPG|ALL",
        rt::update_va_mapping(0x0000_8000_0000_0000, values[0], UVMF_INVLPG | UVMF_ALL),
        err(Errno::EINVAL),
    );
    c.eq(
        "non-canonical VA, TLB_FLUSH|LOCAL",
        rt::update_va_mapping(
            0x0000_8000_0000_0000,
            values[0],
            UVMF_TLB_FLUSH | UVMF_LOCAL,
        ),
        err(Errno::EINVAL),
    );
    c.eq(
        "Xen-range VA, INVLPG|ALL",
        rt::update_va_mapping(0xffff_8000_0000_1000, values[0], UVMF_INVLPG | UVMF_ALL),
        err(Errno::EINVAL),
    );
    c.eq(
        "Xen-range VA, TLB_FLUSH|LOCAL",
        rt::update_va_mapping(
            0xffff_8000_0000_1000,
            values[0],
            UVMF_TLB_FLUSH | UVMF_LOCAL,
        ),
        err(Errno::EINVAL),
    );
    // Canonical guest VAs without an L1 behind them: -EINVAL, no flush.
    for va in [
        0x0000_7000_0000_0000u64,
        9 << 30,
        0xffff_8800_0000_0000,
        0xffff_ffff_ffff_f000,
    ] {
        for &f in &flag_forms {
            c.eq(
                "update_va_mapping without an L1",
                rt::update_va_mapping(va, values[0], f),
                err(Errno::EINVAL),
            );
            n += 1;
        }
    }
    rt::println!(
        "xsa279: {} refused update_va_mapping calls, still running",
        n + 4
    );

    // The guest is alive and update_va_mapping works: remap page 1 of the range to the
    // spare frame with each flush form in turn and read through it.
    let va = R + 4096;
    for (i, &f) in [
        UVMF_INVLPG | UVMF_ALL,
        UVMF_TLB_FLUSH | UVMF_LOCAL,
        UVMF_INVLPG | UVMF_LOCAL,
        UVMF_TLB_FLUSH | UVMF_ALL,
    ]
    .iter()
    .enumerate()
    {
        let target = if i % 2 == 0 { spare } else { data[1] };
        c.eq(
            "valid update_va_mapping",
            rt::update_va_mapping(va, (target << 12) | P | RW | A, f),
            0,
        );
        c.eq(
            "entry stored",
            peek((l1 << 12) + 8) as i64,
            ((target << 12) | P | RW | A | US | GUEST_KERNEL) as i64,
        );
        c.eq(
            "read through the remapped page",
            peek(va) as i64,
            tag(target) as i64,
        );
    }
    for (i, &d) in data.iter().enumerate() {
        c.eq(
            "range intact",
            peek(R + i as u64 * 4096) as i64,
            tag(d) as i64,
        );
    }
    let l3e = (suite::builder_l3() << 12) + L3_SLOT * 8;
    c.update(
        "unhook the range",
        &[rt::abi::MmuUpdate { ptr: l3e, val: 0 }],
        suite::SELF,
        0,
        1,
    );
    c.finish();
}
