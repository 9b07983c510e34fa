//! The demo guest: maps, remaps and unmaps a range with batched `mmu_update`, builds,
//! pins and switches to a second L4 and back, maps the MMIO test device, and reports
//! what it saw.
#![no_std]
#![no_main]

use rt::abi::mmu::{
    MMUEXT_NEW_BASEPTR, MMUEXT_PIN_L4_TABLE, MMUEXT_TLB_FLUSH_LOCAL, MMUEXT_UNPIN_TABLE,
    UVMF_INVLPG,
};
use rt::abi::{DOMID_IO, DOMID_SELF, MmuUpdate, StartInfo};
use rt::{mem, peek, poke, println};

const P: u64 = 1;
const RW: u64 = 2;
const A: u64 = 0x20;
/// Where the demo maps its range: 1 GiB (L4 slot 0, L3 slot 1).
const RANGE_VA: u64 = 1 << 30;
const PAGES: u64 = 16;
/// The MMIO test device (guest-physical address, as the VMM places it).
const MMIO_GPA: u64 = 0x1_0000_0000;
const MMIO_VA: u64 = RANGE_VA + PAGES * 4096;

struct Frames {
    next: u64,
}

impl Frames {
    fn take(&mut self) -> u64 {
        self.next += 1;
        self.next - 1
    }
}

/// Machine address of the L1 entry that maps `va` in the builder's initial tables
/// (identity mapped, so every table is readable at its pfn's VA).
fn l1e_addr(va: u64) -> u64 {
    let si = rt::start_info();
    let mut table_va = si.pt_base;
    for shift in [39u32, 30, 21] {
        let e = peek(table_va + ((va >> shift) & 511) * 8);
        assert!(e & P != 0, "path to {va:#x} not present");
        table_va = mem::pfn_to_va(m2p((e & 0x000f_ffff_ffff_f000) >> 12));
    }
    mfn_of_va(table_va) + ((va >> 12) & 511) * 8
}

/// pfn of an mfn through the read-only M2P (its alias in slot 257: KVM-PVM refuses
/// CPL3 accesses to slot 256, where Xen's ABI puts it).
fn m2p(mfn: u64) -> u64 {
    peek(0xffff_8080_0000_0000 + mfn * 8)
}

fn mfn_of_va(va: u64) -> u64 {
    mem::pfn_to_mfn(va >> 12) << 12
}

fn check(what: &str, rc: i64) {
    if rc != 0 {
        println!("{what}: rc {rc}");
        rt::finish(Some(what));
    }
}

/// Makes `pfn`'s own mapping read-only, so the frame can become a page table.
fn make_readonly(pfn: u64) -> MmuUpdate {
    MmuUpdate {
        ptr: l1e_addr(mem::pfn_to_va(pfn)),
        val: (mem::pfn_to_mfn(pfn) << 12) | P | A,
    }
}

#[unsafe(no_mangle)]
pub fn guest_main(si: &'static StartInfo) {
    println!(
        "demo guest: {} pages, start_info at {:p}, pt_base {:#x} ({} frames)",
        si.nr_pages, si, si.pt_base, si.nr_pt_frames
    );
    println!("xen_version {:#x}", rt::xen_version(0, 0));
    let mut frames = Frames {
        next: mem::first_free_pfn(),
    };
    let self_dom = u32::from(DOMID_SELF);

    // 1. A new L2 and L1 for 1 GiB, filled and hooked in with ONE batched mmu_update:
    //    make the two frames read-only, write the L1 entries and the L2 entry raw (the
    //    frames are not tables yet), then the L3 entry, which validates the new tree.
    let (l2, l1) = (frames.take(), frames.take());
    let data: [u64; PAGES as usize] = core::array::from_fn(|_| frames.take());
    let alt: [u64; PAGES as usize] = core::array::from_fn(|_| frames.take());
    for pfn in [l2, l1] {
        for i in 0..512 {
            poke(mem::pfn_to_va(pfn) + i * 8, 0);
        }
    }
    for (i, pfn) in data.iter().chain(alt.iter()).enumerate() {
        poke(mem::pfn_to_va(*pfn), 0x1000 + i as u64);
    }
    let (l1_mfn, l2_mfn) = (mem::pfn_to_mfn(l1), mem::pfn_to_mfn(l2));
    let l3_entry = {
        let l4e = peek(si.pt_base);
        (l4e & 0x000f_ffff_ffff_f000) | 8 // L3 slot 1 of the L3 under L4 slot 0
    };
    let mut batch = [MmuUpdate::default(); 3 + PAGES as usize + 2];
    batch[0] = make_readonly(l2);
    batch[1] = make_readonly(l1);
    for i in 0..PAGES {
        batch[2 + i as usize] = MmuUpdate {
            ptr: (l1_mfn << 12) + i * 8,
            val: (mem::pfn_to_mfn(data[i as usize]) << 12) | P | RW | A,
        };
    }
    let n = 2 + PAGES as usize;
    batch[n] = MmuUpdate {
        ptr: l2_mfn << 12,
        val: (l1_mfn << 12) | P | RW | A,
    };
    batch[n + 1] = MmuUpdate {
        ptr: l3_entry,
        val: (l2_mfn << 12) | P | RW | A,
    };
    let (rc, done) = rt::mmu_update(&batch[..n + 2], self_dom);
    println!(
        "map: one mmu_update of {} entries: rc {} done {}",
        n + 2,
        rc,
        done
    );
    check("map", rc);
    for i in 0..PAGES {
        let v = peek(RANGE_VA + i * 4096);
        if v != 0x1000 + i {
            println!("page {i}: read {v:#x}");
            rt::finish(Some("map: wrong contents"));
        }
    }
    println!("map: read {} pages through {:#x}", PAGES, RANGE_VA);

    // 2. Remap every page to its alternate frame, flush, read the new contents.
    let mut remap = [MmuUpdate::default(); PAGES as usize];
    for i in 0..PAGES {
        remap[i as usize] = MmuUpdate {
            ptr: (l1_mfn << 12) + i * 8,
            val: (mem::pfn_to_mfn(alt[i as usize]) << 12) | P | RW | A,
        };
    }
    let before = peek(RANGE_VA);
    check("remap", rt::mmu_update(&remap, self_dom).0);
    check("flush", rt::mmuext(MMUEXT_TLB_FLUSH_LOCAL, 0, 0));
    println!(
        "remap: read {:#x} before the flush (either value is allowed)",
        before
    );
    for i in 0..PAGES {
        let v = peek(RANGE_VA + i * 4096);
        if v != 0x1000 + PAGES + i {
            println!("page {i}: read {v:#x} after remap");
            rt::finish(Some("remap: stale mapping after flush"));
        }
    }
    println!("remap: all {} pages show their new frames", PAGES);

    // 2b. Non-leaf replace: point the L2 entry at a second L1 that maps the first
    //     frames again, then back. Each replace must be visible after the flush
    //     mmu_update does for a non-leaf change (XSA-286).
    let l1b = frames.take();
    let l1b_mfn = mem::pfn_to_mfn(l1b);
    for i in 0..512 {
        poke(mem::pfn_to_va(l1b) + i * 8, 0);
    }
    for i in 0..PAGES {
        let e = (mem::pfn_to_mfn(data[i as usize]) << 12) | P | RW | A;
        poke(mem::pfn_to_va(l1b) + i * 8, e);
    }
    let swap = |l1: u64| MmuUpdate {
        ptr: l2_mfn << 12,
        val: (l1 << 12) | P | RW | A,
    };
    check(
        "replace",
        rt::mmu_update(&[make_readonly(l1b), swap(l1b_mfn)], self_dom).0,
    );
    for i in 0..PAGES {
        let v = peek(RANGE_VA + i * 4096);
        if v != 0x1000 + i {
            println!("page {i}: read {v:#x} after the L2 entry was replaced");
            rt::finish(Some("non-leaf replace: stale subtree"));
        }
    }
    check("replace back", rt::mmu_update(&[swap(l1_mfn)], self_dom).0);
    for i in 0..PAGES {
        let v = peek(RANGE_VA + i * 4096);
        if v != 0x1000 + PAGES + i {
            println!("page {i}: read {v:#x} after the L2 entry was put back");
            rt::finish(Some("non-leaf replace back: stale subtree"));
        }
    }
    println!("non-leaf replace: both subtrees seen right after each replace");

    // 3. Permission downgrade of page 0 and unmap of page 1 with update_va_mapping.
    check(
        "downgrade",
        rt::update_va_mapping(
            RANGE_VA,
            (mem::pfn_to_mfn(alt[0]) << 12) | P | A,
            UVMF_INVLPG,
        ),
    );
    check(
        "unmap",
        rt::update_va_mapping(RANGE_VA + 4096, 0, UVMF_INVLPG),
    );
    let (e0, e1) = (peek(mem::pfn_to_va(l1)), peek(mem::pfn_to_va(l1) + 8));
    println!("downgrade/unmap: L1[0] = {e0:#x} (read-only), L1[1] = {e1:#x}");
    if e0 & RW != 0 || e1 != 0 {
        rt::finish(Some("downgrade/unmap not applied"));
    }

    // 4. Writable page tables: a direct store to our own (read-only) L1 table, emulated
    //    and validated by the hypervisor, then a flush.
    check(
        "vm_assist",
        rt::vm_assist(0, rt::abi::vmassist::VMASST_TYPE_writable_pagetables),
    );
    let slot2 = mem::pfn_to_va(l1) + 2 * 8;
    let new = (mem::pfn_to_mfn(data[2]) << 12) | P | RW | A;
    poke(slot2, new);
    check(
        "invlpg",
        rt::mmuext(rt::abi::mmu::MMUEXT_INVLPG_LOCAL, RANGE_VA + 2 * 4096, 0),
    );
    let v = peek(RANGE_VA + 2 * 4096);
    println!(
        "ptwr: stored L1[2] directly, entry now {:#x}, page 2 reads {:#x}",
        peek(slot2),
        v
    );
    if v != 0x1002 {
        rt::finish(Some("ptwr: direct L1 write not applied"));
    }
    // Read-modify-write stores as Linux makes them on PTEs: `lock btr` of the accessed
    // bit (CF says it was set), `lock and` clearing RW.
    let was_young: u8;
    // SAFETY: atomic bit operations on our own L1 entry, emulated by the hypervisor.
    unsafe {
        core::arch::asm!(
            "lock btrq $5, ({p})",
            "setc {y}",
            "lock andb $0xfd, ({p})",
            p = in(reg) slot2,
            y = out(reg_byte) was_young,
            options(att_syntax, nostack),
        );
    }
    let after = peek(slot2);
    println!("ptwr: lock btr/and: accessed was {was_young}, entry now {after:#x}");
    if was_young != 1 || after & (A | RW) != 0 || after & P == 0 {
        rt::finish(Some("ptwr: read-modify-write not applied"));
    }

    // 5. A second L4 sharing the kernel's L3: pin it, switch to it, run, switch back.
    let l4b = frames.take();
    for i in 0..512 {
        poke(mem::pfn_to_va(l4b) + i * 8, 0);
    }
    let l4b_mfn = mem::pfn_to_mfn(l4b);
    check(
        "l4b ro",
        rt::mmu_update(
            &[
                make_readonly(l4b),
                MmuUpdate {
                    ptr: l4b_mfn << 12,
                    val: peek(si.pt_base),
                },
            ],
            self_dom,
        )
        .0,
    );
    check("pin l4b", rt::mmuext(MMUEXT_PIN_L4_TABLE, l4b_mfn, 0));
    check("switch to l4b", rt::mmuext(MMUEXT_NEW_BASEPTR, l4b_mfn, 0));
    println!(
        "second L4: running on {:#x}, page 3 reads {:#x}",
        l4b_mfn,
        peek(RANGE_VA + 3 * 4096)
    );
    check(
        "switch back",
        rt::mmuext(MMUEXT_NEW_BASEPTR, mfn_of_va(si.pt_base) >> 12, 0),
    );
    check("unpin l4b", rt::mmuext(MMUEXT_UNPIN_TABLE, l4b_mfn, 0));
    println!("second L4: switched back and unpinned");

    // 6. The MMIO device: one batched mmu_update with FD = DOMID_IO.
    let mmio_l1 = [MmuUpdate {
        ptr: (l1_mfn << 12) + PAGES * 8,
        val: MMIO_GPA | P | RW | A,
    }];
    let (rc, _) = rt::mmu_update(&mmio_l1, u32::from(DOMID_IO));
    if rc != 0 {
        println!("mmio: mapping refused, rc {rc}");
    } else {
        let id = peek(MMIO_VA);
        poke(MMIO_VA + 8, 0x1234_5678);
        let back = peek(MMIO_VA + 8);
        println!(
            "mmio: id {:#x}, scratch wrote 0x12345678 read {:#x}",
            id, back
        );
        if back != 0x1234_5678 {
            rt::finish(Some("mmio scratch register"));
        }
    }
    rt::finish(None);
}
