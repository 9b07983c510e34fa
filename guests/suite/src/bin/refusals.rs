//! Every refusal a guest can provoke from inside, each with the exact errno and `done`
//! count, and nothing applied past the failing entry.
#![no_std]
#![no_main]

use rt::abi::mmu::*;
use rt::abi::{Errno, MmuUpdate, MmuextOp, StartInfo};
use rt::{mem, peek};
use suite::{A, Check, Frames, P, RW, SELF, err};

#[unsafe(no_mangle)]
pub fn guest_main(si: &'static StartInfo) {
    let mut c = Check::new();
    let mut frames = Frames::new();
    let data = frames.take();
    let other = frames.take();
    let slot = suite::l1e_addr(mem::pfn_to_va(data)); // L1 entry mapping `data`
    let old = peek(mem::pfn_to_va(slot >> 12) + (slot & 0xfff));
    let l1_table = slot >> 12; // one of the builder's L1 tables (mapped read-only)
    let l4 = suite::builder_l4();
    let up = |ptr: u64, val: u64| MmuUpdate { ptr, val };

    // Writable mappings of page-table frames.
    c.update(
        "RW map of an own L1 table",
        &[up(slot, (l1_table << 12) | P | RW | A)],
        SELF,
        err(Errno::EBUSY),
        0,
    );
    c.update(
        "RW map of the current L4",
        &[up(slot, (l4 << 12) | P | RW | A)],
        SELF,
        err(Errno::EBUSY),
        0,
    );
    // Read-only is fine (and is undone below).
    c.update(
        "RO map of an own L1 table",
        &[up(slot, (l1_table << 12) | P | A)],
        SELF,
        0,
        1,
    );
    c.update("restore", &[up(slot, old)], SELF, 0, 1);

    // A batch stops at the failing entry; earlier entries stay, later are not run.
    let slot2 = suite::l1e_addr(mem::pfn_to_va(other));
    let old2 = peek(mem::pfn_to_va(slot2 >> 12) + (slot2 & 0xfff));
    let batch = [
        up(slot, (data << 12) | P | A),
        up(slot, (l4 << 12) | P | RW | A),
        up(slot2, 0),
    ];
    c.update(
        "batch with a bad middle entry",
        &batch,
        SELF,
        err(Errno::EBUSY),
        1,
    );
    c.eq(
        "first entry applied (read-only now)",
        (peek(mem::pfn_to_va(slot >> 12) + (slot & 0xfff)) & RW) as i64,
        0,
    );
    c.eq(
        "third entry not run",
        peek(mem::pfn_to_va(slot2 >> 12) + (slot2 & 0xfff)) as i64,
        old2 as i64,
    );
    c.update("restore", &[up(slot, old)], SELF, 0, 1);

    // Reserved L4 slots.
    for s in [256u64, 260, 271] {
        c.update(
            "write to a reserved L4 slot",
            &[up((l4 << 12) + s * 8, 0)],
            SELF,
            err(Errno::EINVAL),
            0,
        );
    }
    // Foreign frames: the hypervisor's (above the domain's pages).
    let xen_frame = si.nr_pages + 5;
    c.update(
        "map a hypervisor frame",
        &[up(slot, (xen_frame << 12) | P | A)],
        SELF,
        err(Errno::EBUSY),
        0,
    );
    // Disallowed flags: PWT, PCD, PAT at L1 for a domain without I/O rights...
    for bad in [0x8u64, 0x10, 0x80] {
        c.update(
            "disallowed L1 flag",
            &[up(slot, (data << 12) | P | A | bad)],
            SELF,
            err(Errno::EINVAL),
            0,
        );
    }
    // ...PSE at L2, G at L4.
    let l3 = suite::builder_l3();
    let l2_entry = peek(mem::pfn_to_va(l3));
    let l2 = (l2_entry & 0x000f_ffff_ffff_f000) >> 12;
    let l2e0 = peek(mem::pfn_to_va(l2));
    c.update(
        "PSE at L2",
        &[up(l2 << 12, l2e0 | 0x80)],
        SELF,
        err(Errno::EINVAL),
        0,
    );
    let l4e0 = peek(si.pt_base);
    c.update(
        "G at L4",
        &[up(l4 << 12, l4e0 | 0x100)],
        SELF,
        err(Errno::EINVAL),
        0,
    );

    // Pinning.
    c.ext(
        "pin a frame mapped writable",
        &[MmuextOp::new(MMUEXT_PIN_L1_TABLE, data, 0)],
        SELF,
        err(Errno::EINVAL),
        0,
    );
    let t = suite::table_frame(&mut frames);
    c.ext(
        "pin a fresh L1",
        &[MmuextOp::new(MMUEXT_PIN_L1_TABLE, t, 0)],
        SELF,
        0,
        1,
    );
    c.ext(
        "double pin",
        &[MmuextOp::new(MMUEXT_PIN_L1_TABLE, t, 0)],
        SELF,
        err(Errno::EINVAL),
        0,
    );
    c.ext(
        "pin as another level",
        &[MmuextOp::new(MMUEXT_PIN_L2_TABLE, t, 0)],
        SELF,
        err(Errno::EINVAL),
        0,
    );
    c.ext(
        "unpin",
        &[MmuextOp::new(MMUEXT_UNPIN_TABLE, t, 0)],
        SELF,
        0,
        1,
    );
    c.ext(
        "unpin an unpinned table",
        &[MmuextOp::new(MMUEXT_UNPIN_TABLE, t, 0)],
        SELF,
        err(Errno::EINVAL),
        0,
    );
    c.ext(
        "pin a hypervisor frame",
        &[MmuextOp::new(MMUEXT_PIN_L1_TABLE, xen_frame, 0)],
        SELF,
        err(Errno::EINVAL),
        0,
    );
    c.ext(
        "NEW_BASEPTR to a writable frame",
        &[MmuextOp::new(MMUEXT_NEW_BASEPTR, data, 0)],
        SELF,
        err(Errno::EINVAL),
        0,
    );

    // Misaligned and out-of-memory ptr: the low three bits are the command.
    c.update(
        "ptr with bit 2 set (command 4)",
        &[up(slot | 4, old)],
        SELF,
        err(Errno::ENOSYS),
        0,
    );
    c.update(
        "command 7",
        &[up(slot | 7, old)],
        SELF,
        err(Errno::ENOSYS),
        0,
    );
    c.update(
        "ptr beyond memory",
        &[up(0xf_ffff_f000, 0)],
        SELF,
        err(Errno::EINVAL),
        0,
    );
    c.update(
        "ptr to a hypervisor frame",
        &[up(xen_frame << 12, 0)],
        SELF,
        err(Errno::EINVAL),
        0,
    );

    // Unknown and retired commands.
    c.ext(
        "mmuext 14",
        &[MmuextOp::new(14, 0, 0)],
        SELF,
        err(Errno::ENOSYS),
        0,
    );
    c.ext(
        "mmuext 99",
        &[MmuextOp::new(99, 0, 0)],
        SELF,
        err(Errno::ENOSYS),
        0,
    );
    c.ext(
        "MARK_SUPER",
        &[MmuextOp::new(MMUEXT_MARK_SUPER, data, 0)],
        SELF,
        err(Errno::EOPNOTSUPP),
        0,
    );
    let ops = [
        MmuextOp::new(MMUEXT_TLB_FLUSH_LOCAL, 0, 0),
        MmuextOp::new(99, 0, 0),
    ];
    c.ext(
        "mmuext batch stops at the unknown op",
        &ops,
        SELF,
        err(Errno::ENOSYS),
        1,
    );

    // Bad foreigndom.
    c.update(
        "own numeric domain id as FD",
        &[up(slot, old)],
        1,
        err(Errno::ESRCH),
        0,
    );
    c.update("unknown FD", &[up(slot, old)], 77, err(Errno::ESRCH), 0);
    c.update(
        "DOMID_XEN as FD",
        &[up(slot, old)],
        u32::from(rt::abi::DOMID_XEN),
        err(Errno::EPERM),
        0,
    );
    c.update(
        "unknown PFD",
        &[up(slot, old)],
        (78 << 16) | SELF,
        err(Errno::ESRCH),
        0,
    );
    c.ext(
        "TLB flush for DOMID_IO",
        &[MmuextOp::new(MMUEXT_TLB_FLUSH_LOCAL, 0, 0)],
        u32::from(rt::abi::DOMID_IO),
        err(Errno::EPERM),
        0,
    );

    // update_va_mapping on a VA no L1 maps.
    c.eq(
        "update_va_mapping on a hole",
        rt::update_va_mapping(0x4000_0000_0000, 0, UVMF_INVLPG),
        err(Errno::EINVAL),
    );
    c.eq(
        "entry untouched by all of this",
        peek(mem::pfn_to_va(slot >> 12) + (slot & 0xfff)) as i64,
        old as i64,
    );
    c.finish();
}
