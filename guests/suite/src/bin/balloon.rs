//! Ballooning from inside: frames given back with `XENMEM_decrease_reservation` leave
//! the reservation (a frame still mapped only when its mapping goes), frames asked for
//! with `populate_physmap` come back as new machine frames recorded in the M2P, mapped
//! and used again, and the reservation never grows beyond what the domain was built
//! with.
#![no_std]
#![no_main]

use rt::abi::hypercall::HYPERVISOR_memory_op;
use rt::abi::{DOMID_SELF, MmuUpdate, StartInfo};
use rt::{mem, peek, poke};
use suite::{A, Check, Frames, P, RW, l1e_addr};

const DECREASE: u64 = 1;
const INCREASE: u64 = 0;
const CURRENT: u64 = 3;
const POPULATE: u64 = 6;
const N: usize = 64;

/// `memory_op(op, &reservation)` over `list`.
fn reservation(op: u64, list: &mut [u64]) -> i64 {
    let r: [u64; 4] = [
        list.as_mut_ptr() as u64,
        list.len() as u64,
        0, // extent_order 0, mem_flags 0
        u64::from(DOMID_SELF),
    ];
    // SAFETY: the reservation and its list live for the call.
    unsafe { rt::hypercall(HYPERVISOR_memory_op, op, r.as_ptr() as u64, 0, 0, 0) }
}

fn current() -> i64 {
    let dom = DOMID_SELF;
    // SAFETY: the domid lives for the call.
    unsafe {
        rt::hypercall(
            HYPERVISOR_memory_op,
            CURRENT,
            &dom as *const u16 as u64,
            0,
            0,
            0,
        )
    }
}

fn map(pfn: u64, mfn: u64) -> MmuUpdate {
    MmuUpdate {
        ptr: l1e_addr(mem::pfn_to_va(pfn)),
        val: if mfn == 0 {
            0
        } else {
            (mfn << 12) | P | RW | A
        },
    }
}

fn update(reqs: &[MmuUpdate]) -> i64 {
    rt::mmu_update(reqs, u32::from(DOMID_SELF)).0
}

#[unsafe(no_mangle)]
pub fn guest_main(si: &'static StartInfo) {
    let mut c = Check::new();
    let mut frames = Frames::new();
    let r0 = current();
    c.ok("current reservation", r0 > 0);
    let pfns: [u64; N] = core::array::from_fn(|_| frames.take());
    let mut mfns: [u64; N] = core::array::from_fn(|i| mem::pfn_to_mfn(pfns[i]));

    // Down: unmap the frames, give them back.
    for &p in &pfns {
        c.eq("unmap", update(&[map(p, 0)]), 0);
    }
    let mut list = mfns;
    c.eq("decrease 64", reservation(DECREASE, &mut list), N as i64);
    c.eq("reservation down by 64", current(), r0 - N as i64);
    c.eq(
        "given back twice: not ours",
        reservation(DECREASE, &mut list[..1]),
        0,
    );
    // Mapping a frame given back is refused (it is free now, not ours).
    c.eq("map a freed frame", update(&[map(pfns[0], mfns[0])]), -16);
    rt::println!("balloon: down by {N} frames, reservation {}", current());

    // Up: populate the same pseudo-physical frames with new machine frames.
    let mut list = pfns;
    c.eq("populate 64", reservation(POPULATE, &mut list), N as i64);
    c.eq("reservation back", current(), r0);
    for i in 0..N {
        mfns[i] = list[i];
        // The guest's own p2m, then the mapping, then a pattern through it.
        poke(si.mfn_list + pfns[i] * 8, mfns[i]);
        c.eq("map a new frame", update(&[map(pfns[i], mfns[i])]), 0);
        poke(mem::pfn_to_va(pfns[i]), 0xb000 + i as u64);
    }
    c.ok(
        "patterns read back",
        (0..N).all(|i| peek(mem::pfn_to_va(pfns[i])) == 0xb000 + i as u64),
    );
    // Beyond what the domain was built with: nothing.
    let mut one = [0u64];
    c.eq(
        "increase beyond max_pages",
        reservation(INCREASE, &mut one),
        0,
    );

    // A frame given back while still mapped stays readable until its mapping goes.
    let keep = pfns[5];
    let mut list = [mfns[5]];
    c.eq(
        "decrease a mapped frame",
        reservation(DECREASE, &mut list),
        1,
    );
    c.eq("still readable", peek(mem::pfn_to_va(keep)) as i64, 0xb005);
    c.eq("still counted", current(), r0);
    c.eq("unmap it", update(&[map(keep, 0)]), 0);
    c.eq("now it leaves", current(), r0 - 1);
    rt::println!("balloon: up again, a mapped frame left with its mapping");
    c.finish()
}
