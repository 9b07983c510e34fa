//! update_va_mapping with each UVMF flush form: every form that flushes makes the new
//! mapping visible at once; NONE and the unmatched type 3 need an explicit flush.
#![no_std]
#![no_main]

use rt::abi::mmu::{
    MMUEXT_TLB_FLUSH_LOCAL, UVMF_ALL, UVMF_INVLPG, UVMF_LOCAL, UVMF_NONE, UVMF_TLB_FLUSH,
};
use rt::abi::{Errno, StartInfo};
use rt::{mem, peek, poke};
use suite::{A, Check, Frames, P, RW, err};

const R: u64 = 1 << 30;

/// The vCPU bitmap for UVMF_MULTI: vCPU 0.
static MASK: u64 = 1;

#[unsafe(no_mangle)]
pub fn guest_main(_si: &'static StartInfo) {
    let mut c = Check::new();
    let mut frames = Frames::new();
    let (l2, l1) = (frames.take(), frames.take());
    let data: [u64; 8] = core::array::from_fn(|_| frames.take());
    let alt: [u64; 8] = core::array::from_fn(|_| frames.take());
    for &f in data.iter().chain(alt.iter()) {
        poke(mem::pfn_to_va(f), 0xf00d_0000 | f);
    }
    suite::map_range(l2, l1, 1, &data);
    let mask = &MASK as *const u64 as u64;
    let forms: [(&str, u64, bool); 7] = [
        ("INVLPG|LOCAL", UVMF_INVLPG | UVMF_LOCAL, true),
        ("TLB_FLUSH|LOCAL", UVMF_TLB_FLUSH | UVMF_LOCAL, true),
        ("INVLPG|ALL", UVMF_INVLPG | UVMF_ALL, true),
        ("TLB_FLUSH|ALL", UVMF_TLB_FLUSH | UVMF_ALL, true),
        ("INVLPG|MULTI", UVMF_INVLPG | mask, true),
        ("TLB_FLUSH|MULTI", UVMF_TLB_FLUSH | mask, true),
        ("NONE", UVMF_NONE, false),
    ];
    for (i, (name, flags, flushes)) in forms.iter().enumerate() {
        let va = R + i as u64 * 4096;
        let f = alt[i];
        let rc = rt::update_va_mapping(va, (mem::pfn_to_mfn(f) << 12) | P | RW | A, *flags);
        c.eq("update_va_mapping", rc, 0);
        let seen = peek(va);
        if *flushes {
            c.eq(
                "read after a flushing form",
                seen as i64,
                (0xf00d_0000 | f) as i64,
            );
        } else {
            c.ok(
                "read without a flush: old or new",
                seen == (0xf00d_0000 | f) || seen == (0xf00d_0000 | data[i]),
            );
            c.eq("flush", rt::mmuext(MMUEXT_TLB_FLUSH_LOCAL, 0, 0), 0);
            c.eq(
                "read after the explicit flush",
                peek(va) as i64,
                (0xf00d_0000 | f) as i64,
            );
        }
        rt::println!("uvm {name}: ok");
    }
    // Flush type 3 is not a flush type: no flush, but the update is done.
    let va = R + 7 * 4096;
    c.eq(
        "type 3",
        rt::update_va_mapping(va, (alt[7] << 12) | P | A, 3),
        0,
    );
    c.eq("flush", rt::mmuext(MMUEXT_TLB_FLUSH_LOCAL, 0, 0), 0);
    c.eq(
        "type 3: read",
        peek(va) as i64,
        (0xf00d_0000 | alt[7]) as i64,
    );
    // A bad bitmap pointer: -EFAULT, though the entry was already changed.
    let rc = rt::update_va_mapping(R, (data[0] << 12) | P | A, UVMF_INVLPG | 0x7000_0000_0000);
    c.eq("bad vCPU bitmap pointer", rc, err(Errno::EFAULT));
    c.eq("flush", rt::mmuext(MMUEXT_TLB_FLUSH_LOCAL, 0, 0), 0);
    c.eq(
        "entry changed anyway",
        peek(R) as i64,
        (0xf00d_0000 | data[0]) as i64,
    );
    c.finish();
}
