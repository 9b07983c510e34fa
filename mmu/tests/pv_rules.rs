//! One test per PV MMU rule (docs/xen-pv-mmu-rules.md §2-§7), positive and negative:
//! exact errno, exact `done`, and nothing else changed.
//!
//! One file of over a thousand lines on purpose: the tests follow the rule book section
//! by section, so the file read top to bottom is the rule list as an executable
//! specification, and a rule's positive and negative cases sit side by side.

mod support;

use pvmmu::{DomainConfig, Machine};
use pvmmu::{
    Errno, FlushReason, FlushScope, Mfn, PageType, PtwrOutcome, PtwrRefusal, PtwrWrite, VcpuSet,
};
use pvmmu_abi::mmu::*;
use pvmmu_abi::vmassist::{VMASST_TYPE_m2p_strict, VMASST_TYPE_writable_pagetables};
use pvmmu_abi::{DOMID_IO, DOMID_XEN, MmuUpdate, MmuextOp, MulticallEntry};
use support::*;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Runs `f` and asserts that guest memory and the frame table are exactly as before.
fn unchanged(g: &mut Guest, f: impl FnOnce(&mut Guest)) {
    let (mem, frames) = (g.snapshot(), g.counts());
    f(g);
    assert!(g.snapshot() == mem, "guest memory changed");
    assert!(g.counts() == frames, "frame table changed");
    g.audit();
}

// ---------------------------------------------------------------- mmu_update, L1

#[test]
fn l1_map_takes_refs_and_stores_the_adjusted_entry() {
    let mut g = guest();
    let f = g.take();
    let va = va_of(0x300);
    let ptr = g.pte_addr(va);
    let before = g.info(f);
    let o = g.update(&[(ptr, (f.0 << 12) | P | RW)]);
    assert_eq!((o.done, o.result), (1, Ok(())));
    // Kernel mapping: US and bit 52 added; the guest reads back the adjusted value.
    assert_eq!(g.read(ptr), (f.0 << 12) | P | RW | US | GK);
    assert_eq!(g.info(f).count, before.count + 1);
    assert_eq!(g.info(f).type_count, before.type_count + 1);
    // A user mapping (US set by the guest) becomes global instead.
    let o = g.update(&[(ptr, (f.0 << 12) | P | US)]);
    assert_eq!(o.result, Ok(()));
    assert_eq!(g.read(ptr), (f.0 << 12) | P | US | G);
    assert_eq!(
        g.info(f).type_count,
        before.type_count,
        "RW dropped: writable ref released"
    );
    // Mapping frame 0x300 was released (it was the old target).
    assert_eq!(g.info(Mfn(0x300)).count, 1);
    g.audit();
}

#[test]
fn l1_remap_and_unmap_release_the_old_frame_and_mark_it_stale() {
    let mut g = guest();
    let ptr = g.pte_addr(va_of(0x300));
    let f = g.take();
    let o = g.update(&[(ptr, (f.0 << 12) | P | RW), (ptr, 0)]);
    assert_eq!((o.done, o.result), (2, Ok(())));
    assert_eq!(g.read(ptr), 0);
    assert_eq!(g.info(Mfn(0x300)).type_count, 0);
    assert_eq!(g.info(Mfn(0x300)).count, 1);
    assert_eq!(g.info(f).count, 2, "allocation + its own KBASE mapping");
    // L1 updates never flush by themselves; the stale frames ride on the next flush.
    assert!(g.m.flusher().take().is_empty());
    g.ext(MMUEXT_TLB_FLUSH_LOCAL, 0, 0);
    let fl = g.m.flusher().take();
    assert_eq!(fl.len(), 1);
    let mut stale = fl[0].stale.clone();
    stale.sort();
    assert_eq!(stale, vec![Mfn(0x300), f]);
    g.audit();
}

#[test]
fn l1_disallowed_cache_bits_are_refused_for_a_plain_domu() {
    for bad in [
        PSE,  /* PAT at L1 */
        0x8,  /* PWT */
        0x10, /* PCD */
    ] {
        let mut g = guest();
        let ptr = g.pte_addr(va_of(0x300));
        let f = g.take();
        unchanged(&mut g, |g| {
            let o = g.update(&[(ptr, (f.0 << 12) | P | RW | bad)]);
            assert_refused(o, Errno::EINVAL, 0);
        });
    }
    // G is allowed at L1.
    let mut g = guest();
    let ptr = g.pte_addr(va_of(0x300));
    assert_eq!(g.update(&[(ptr, (0x300 << 12) | P | G)]).result, Ok(()));
}

#[test]
fn l1_cache_bits_allowed_with_io_rights() {
    let mut g = guest_with(DomainConfig::new(1).ioports(true));
    let ptr = g.pte_addr(va_of(0x300));
    let o = g.update(&[(ptr, (0x300 << 12) | P | RW | 0x18)]);
    assert_eq!(o.result, Ok(()));
    g.audit();
}

#[test]
fn l1_writable_mapping_of_a_page_table_is_refused() {
    let mut g = guest();
    let l1 = Mfn::containing(g.pte_addr(va_of(0x300)));
    let ptr = g.pte_addr(va_of(0x300));
    unchanged(&mut g, |g| {
        assert_refused(g.update(&[(ptr, (l1.0 << 12) | P | RW)]), Errno::EBUSY, 0);
        // The current L4, too.
        let l4 = g.l4;
        assert_refused(g.update(&[(ptr, (l4.0 << 12) | P | RW)]), Errno::EBUSY, 0);
    });
    // Read-only is fine.
    assert_eq!(g.update(&[(ptr, (l1.0 << 12) | P)]).result, Ok(()));
    g.audit();
}

#[test]
fn l1_foreign_frame_needs_privilege() {
    let mut g = guest();
    let ptr = g.pte_addr(va_of(0x300));
    let foreign = (DOM2_FIRST << 12) | P;
    unchanged(&mut g, |g| {
        assert_refused(g.update(&[(ptr, foreign)]), Errno::EBUSY, 0);
        assert_refused(g.update_fd(&[(ptr, foreign)], 2), Errno::EPERM, 0);
        assert_refused(
            g.update_fd(&[(ptr, foreign)], DOMID_XEN as u32),
            Errno::EPERM,
            0,
        );
        // Hypervisor frames are nobody's to map.
        assert_refused(g.update(&[(ptr, (XEN_FRAME << 12) | P)]), Errno::EBUSY, 0);
    });
    let mut g = guest_with(DomainConfig::new(1).privileged(true));
    let ptr = g.pte_addr(va_of(0x300));
    let o = g.update_fd(&[(ptr, foreign)], 2);
    assert_eq!(o.result, Ok(()));
    assert_eq!(g.info(Mfn(DOM2_FIRST)).count, 2);
    g.audit();
}

#[test]
fn l1_mmio_needs_iomem_permission_and_is_forced_uncached() {
    let mmio = 0xfee00u64; // beyond RAM
    let mut g = guest();
    let ptr = g.pte_addr(va_of(0x300));
    unchanged(&mut g, |g| {
        assert_refused(g.update(&[(ptr, (mmio << 12) | P | RW)]), Errno::EPERM, 0);
        assert_refused(
            g.update_fd(&[(ptr, (mmio << 12) | P | RW)], DOMID_IO as u32),
            Errno::EPERM,
            0,
        );
        // The all-ones frame number.
        assert_refused(
            g.update(&[(ptr, 0x000f_ffff_ffff_f000 | P)]),
            Errno::EINVAL,
            0,
        );
    });
    let mut g = guest_with(DomainConfig::new(1).iomem(mmio..=mmio + 3));
    let ptr = g.pte_addr(va_of(0x300));
    let o = g.update_fd(&[(ptr, (mmio << 12) | P | RW)], DOMID_IO as u32);
    assert_eq!(o.result, Ok(()));
    // WB requested: Xen forces UC (PCD|PWT) in the stored entry; no refs for MMIO.
    assert_eq!(g.read(ptr), (mmio << 12) | P | RW | 0x18 | US | GK);
    // WC (PAT index 4 = PAT bit) is kept.
    let o = g.update_fd(&[(ptr, ((mmio + 1) << 12) | P | RW | PSE)], DOMID_IO as u32);
    assert_eq!(o.result, Ok(()));
    assert_eq!(g.read(ptr) & 0x98, PSE);
    g.audit();
}

#[test]
fn l1_read_only_mmio_loses_rw() {
    let mmio = 0xfee00u64;
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
    let mut cfg = pvmmu::MachineConfig::default();
    cfg.ro_mmio.push(mmio..=mmio);
    let mut m = Machine::new(mem, cfg).unwrap();
    m.create_domain(DomainConfig::new(1).iomem(mmio..=mmio))
        .unwrap();
    m.assign_frames(1, (0x10..0x20).map(Mfn)).unwrap();
    let c = pvmmu::Caller::new(1, 0);
    // Frame 0x10 as an L1 table with one RW MMIO entry, pinned.
    m.memory()
        .write_obj((mmio << 12) | P | RW, GuestAddress(0x10_000))
        .unwrap();
    let o = m
        .mmuext_op(c, &[MmuextOp::new(MMUEXT_PIN_L1_TABLE, 0x10, 0)], SELF)
        .unwrap();
    assert_eq!(o.result, Ok(()));
    let e: u64 = m.memory().read_obj(GuestAddress(0x10_000)).unwrap();
    assert_eq!(e & RW, 0, "RW silently cleared");
    assert!(m.audit().is_ok());
}

#[test]
fn fast_path_changes_whitelisted_flags_without_touching_refs() {
    let mut g = guest();
    let ptr = g.pte_addr(va_of(0x300));
    let before = g.counts();
    let old = g.read(ptr);
    let o = g.update(&[(ptr, old | NX | D | (1 << 9) | (1 << 60))]);
    assert_eq!(o.result, Ok(()));
    assert_eq!(g.read(ptr), old | NX | D | (1 << 9) | (1 << 60));
    assert!(g.counts() == before, "no reference changed");
    // Gaining NX is a downgrade: the frame's translation is stale until a flush.
    assert!(g.info(Mfn(0x300)).stale);
    // Dropping RW on the same frame takes the full path: the writable ref goes.
    let o = g.update(&[(ptr, (old & !RW) | NX)]);
    assert_eq!(o.result, Ok(()));
    assert_eq!(g.info(Mfn(0x300)).type_count, 0);
    g.audit();
}

#[test]
fn rw_upgrade_of_a_read_only_table_mapping_takes_the_full_path() {
    // XSA-182 shape at L1: same frame, only RW added, frame is a page table.
    let mut g = guest();
    let l1 = Mfn::containing(g.pte_addr(va_of(0x300)));
    let ptr = g.pte_addr(va_of(l1.0));
    let old = g.read(ptr);
    assert_eq!(old & RW, 0);
    unchanged(&mut g, |g| {
        assert_refused(g.update(&[(ptr, old | RW)]), Errno::EBUSY, 0)
    });
}

#[test]
fn ptr_must_name_a_frame_of_the_page_table_owner() {
    let mut g = guest();
    unchanged(&mut g, |g| {
        assert_refused(g.update(&[((DOM2_FIRST << 12) | 8, 0)]), Errno::EINVAL, 0);
        assert_refused(g.update(&[((XEN_FRAME << 12) | 8, 0)]), Errno::EINVAL, 0);
        assert_refused(g.update(&[(FRAMES << 12, 0)]), Errno::EINVAL, 0);
        assert_refused(g.update(&[(!7, 0)]), Errno::EINVAL, 0);
    });
}

#[test]
fn ptr_into_ordinary_memory_is_a_raw_write() {
    let mut g = guest();
    let f = g.take();
    let before = g.frame_state();
    let o = g.update(&[((f.0 << 12) + 0x18, 0xdead_beef_0000_0003)]);
    assert_eq!(o.result, Ok(()));
    assert_eq!(
        g.read((f.0 << 12) + 0x18),
        0xdead_beef_0000_0003,
        "stored raw, not validated"
    );
    assert!(g.frame_state() == before);
    g.audit();
}

#[test]
fn unknown_commands_and_machphys() {
    let mut g = guest();
    let ptr = g.pte_addr(va_of(0x300));
    unchanged(&mut g, |g| {
        for cmd in 4..8 {
            assert_refused(g.update(&[(ptr | cmd, 0)]), Errno::ENOSYS, 0);
        }
    });
    let o = g.update(&[((0x300 << 12) | MMU_MACHPHYS_UPDATE, 0x1234)]);
    assert_eq!(o.result, Ok(()));
    assert_eq!(g.m.frames().m2p(Mfn(0x300)), Some(0x1234));
    unchanged(&mut g, |g| {
        assert_refused(
            g.update(&[((DOM2_FIRST << 12) | MMU_MACHPHYS_UPDATE, 1)]),
            Errno::EINVAL,
            0,
        );
        // A foreign PFD (own id through the PFD field is "self", id 2 is foreign).
        let fd = (3 << 16) | SELF;
        assert_refused(
            g.update_fd(&[((0x300 << 12) | MMU_MACHPHYS_UPDATE, 1)], fd),
            Errno::EPERM,
            0,
        );
    });
    let own_pfd = (2 << 16) | SELF;
    assert_eq!(
        g.update_fd(&[((0x300 << 12) | MMU_MACHPHYS_UPDATE, 7)], own_pfd)
            .result,
        Ok(())
    );
}

#[test]
fn preserve_ad_keeps_hardware_set_bits() {
    let mut g = guest();
    let ptr = g.pte_addr(va_of(0x300));
    let f = g.take();
    // The "hardware" set D on the current entry.
    g.write_raw(ptr, g.read(ptr) | D);
    let o = g.update(&[(ptr | MMU_PT_UPDATE_PRESERVE_AD, (f.0 << 12) | P | RW)]);
    assert_eq!(o.result, Ok(()));
    assert_eq!(g.read(ptr), (f.0 << 12) | P | RW | US | GK | A | D);
    g.audit();
}

#[test]
fn batch_stops_at_the_first_failure_earlier_entries_stay() {
    let mut g = guest();
    let (a, b, c) = (
        g.pte_addr(va_of(0x300)),
        g.pte_addr(va_of(0x301)),
        g.pte_addr(va_of(0x302)),
    );
    let (old_c, f) = (g.read(c), g.take());
    let o = g.update(&[(a, 0), (b, (f.0 << 12) | P | 0x10), (c, 0)]);
    assert_refused(o, Errno::EINVAL, 1);
    assert_eq!(g.read(a), 0, "first applied");
    assert_eq!(g.read(c), old_c, "third not attempted");
    g.audit();
}

#[test]
fn foreigndom_decoding() {
    let mut g = guest();
    let ptr = g.pte_addr(va_of(0x300));
    unchanged(&mut g, |g| {
        assert_refused(g.update_fd(&[(ptr, 0)], 1), Errno::ESRCH, 0); // own numeric id
        assert_refused(g.update_fd(&[(ptr, 0)], 77), Errno::ESRCH, 0);
        assert_refused(g.update_fd(&[(ptr, 0)], (78 << 16) | SELF), Errno::ESRCH, 0);
        assert_refused(g.update_fd(&[(ptr, 0)], 0x7FF3), Errno::ESRCH, 0); // DOMID_COW
    });
}

// ---------------------------------------------------------------- mmu_update, L2..L4

/// The L2 table and index covering `va`.
fn l2_slot(g: &Guest, va: u64) -> u64 {
    let l1 = Mfn::containing(g.pte_addr(va));
    // Find the L2 entry that names `l1`.
    for t in &g.tables {
        for i in 0..512u64 {
            let e = g.read(t.addr() + i * 8);
            if e & P != 0 && (e >> 12) & 0xff_ffff_ffff == l1.0 && g.info(*t).ty == PageType::L2 {
                return t.addr() + i * 8;
            }
        }
    }
    panic!("no L2 entry for {va:#x}");
}

#[test]
fn l2_entries_validate_their_l1_and_refuse_bad_targets() {
    let mut g = guest();
    let l2e = l2_slot(&g, va_of(0x300));
    let l2 = Mfn::containing(l2e);
    let free = Guest::slot(l2, 100); // an unused L2 slot
    assert_eq!(g.read(free), 0);
    let t = g.table_frame();
    let data = g.take();
    unchanged(&mut g, |g| {
        // PSE is disallowed at L2 (no PV superpages), as are PWT/PCD/G.
        for bad in [PSE, 0x8, 0x10, G] {
            assert_refused(g.update(&[(free, (t.0 << 12) | P | bad)]), Errno::EINVAL, 0);
        }
        // A data frame mapped writable cannot become an L1.
        assert_refused(
            g.update(&[(free, (data.0 << 12) | P | RW)]),
            Errno::EINVAL,
            0,
        );
        // Foreign or hypervisor frames.
        assert_refused(
            g.update(&[(free, (DOM2_FIRST << 12) | P)]),
            Errno::EINVAL,
            0,
        );
        // L2..L4 updates with FD != PFD.
        assert_refused(
            g.update_fd(&[(free, (t.0 << 12) | P)], DOMID_IO as u32),
            Errno::EINVAL,
            0,
        );
    });
    let o = g.update(&[(free, (t.0 << 12) | P | RW)]);
    assert_eq!(o.result, Ok(()));
    assert_eq!(g.read(free), (t.0 << 12) | P | RW | US);
    assert_eq!(
        (g.info(t).ty, g.info(t).type_count, g.info(t).validated),
        (PageType::L1, 1, true)
    );
    // The L2 change flushed all vCPUs, non-leaf (XSA-286).
    // t was mapped writable until table_frame() remapped it: it becomes a table only
    // after a flush that names it; then the L2 change flushes all vCPUs, non-leaf
    // (XSA-286).
    let fl = g.m.flusher().take();
    assert_eq!(fl.len(), 2);
    assert!(fl[0].reason == FlushReason::TypeChange && fl[0].stale.contains(&t));
    assert!(
        fl[1].non_leaf && fl[1].reason == FlushReason::NonLeafUpdate && fl[1].vcpus == VcpuSet(3)
    );
    // Removing it de-validates the L1.
    assert_eq!(g.update(&[(free, 0)]).result, Ok(()));
    assert_eq!((g.info(t).type_count, g.info(t).validated), (0, false));
    g.audit();
}

#[test]
fn nested_validation_errors_propagate() {
    let mut g = guest();
    let free = Guest::slot(Mfn::containing(l2_slot(&g, va_of(0x300))), 101);
    let t = g.table_frame();
    let pt = g.l4;
    // The new L1 would map the L4 writable: -EBUSY from inside.
    g.write_raw(t.addr(), (pt.0 << 12) | P | RW);
    unchanged(&mut g, |g| {
        assert_refused(g.update(&[(free, (t.0 << 12) | P)]), Errno::EBUSY, 0)
    });
    assert_eq!(
        g.info(t).ty,
        PageType::None,
        "failed validation resets the type"
    );
}

#[test]
fn reserved_l4_slots_are_immutable() {
    let mut g = guest();
    let l3 = g.table_frame();
    unchanged(&mut g, |g| {
        for slot in [256, 260, 271] {
            let ptr = Guest::slot(g.l4, slot);
            assert_refused(g.update(&[(ptr, (l3.0 << 12) | P)]), Errno::EINVAL, 0);
            assert_refused(g.update(&[(ptr, 0)]), Errno::EINVAL, 0);
        }
    });
    let o = g.update(&[(Guest::slot(g.l4, 300), (l3.0 << 12) | P)]);
    assert_eq!(o.result, Ok(()));
    assert_eq!(g.read(Guest::slot(g.l4, 300)), (l3.0 << 12) | P | US | A);
    assert_eq!(g.info(l3).ty, PageType::L3);
    g.audit();
}

#[test]
fn linear_page_tables_read_only_same_level_only() {
    let mut g = guest();
    let l4 = g.l4;
    let slot = Guest::slot(l4, 400);
    unchanged(&mut g, |g| {
        assert_refused(g.update(&[(slot, (l4.0 << 12) | P | RW)]), Errno::EINVAL, 0)
    });
    // Read-only self map: accepted, no reference taken.
    let before = g.info(l4);
    assert_eq!(g.update(&[(slot, (l4.0 << 12) | P)]).result, Ok(()));
    assert_eq!(g.info(l4).count, before.count);
    assert_eq!(g.info(l4).type_count, before.type_count);
    // L2 -> another validated L2, read-only: counted as linear.
    let l2e = l2_slot(&g, va_of(0x300));
    let l2 = Mfn::containing(l2e);
    let other_l2 = g.table_frame();
    let l3_free = g.table_frame();
    assert_eq!(
        g.update(&[(Guest::slot(g.l4, 401), (l3_free.0 << 12) | P)])
            .result,
        Ok(())
    );
    assert_eq!(
        g.update(&[(Guest::slot(l3_free, 0), (other_l2.0 << 12) | P)])
            .result,
        Ok(())
    );
    assert_eq!(
        g.update(&[(Guest::slot(l2, 200), (other_l2.0 << 12) | P)])
            .result,
        Ok(())
    );
    assert_eq!(g.info(l2).linear, 1);
    assert_eq!(g.info(other_l2).linear, -1);
    g.audit();
    // XSA-240: other_l2 is referenced linearly, so it may not contain linear entries.
    let l2_again = Guest::slot(other_l2, 5);
    unchanged(&mut g, |g| {
        assert_refused(g.update(&[(l2_again, (l2.0 << 12) | P)]), Errno::EINVAL, 0)
    });
    assert_eq!(g.update(&[(Guest::slot(l2, 200), 0)]).result, Ok(()));
    assert_eq!((g.info(l2).linear, g.info(other_l2).linear), (0, 0));
    g.audit();
}

// ---------------------------------------------------------------- mmuext_op

#[test]
fn pin_unpin_and_their_refusals() {
    let mut g = guest();
    let t = g.table_frame();
    let o = g.ext(MMUEXT_PIN_L1_TABLE, t.0, 0);
    assert_eq!(o.result, Ok(()));
    assert!(g.info(t).pinned && g.info(t).validated && g.info(t).type_count == 1);
    unchanged(&mut g, |g| {
        assert_refused(g.ext(MMUEXT_PIN_L1_TABLE, t.0, 0), Errno::EINVAL, 0); // double pin
        assert_refused(g.ext(MMUEXT_PIN_L2_TABLE, t.0, 0), Errno::EINVAL, 0); // type conflict
        assert_refused(g.ext(MMUEXT_PIN_L1_TABLE, DOM2_FIRST, 0), Errno::EINVAL, 0);
        assert_refused(g.ext(MMUEXT_PIN_L1_TABLE, 0x300, 0), Errno::EINVAL, 0); // mapped RW
        assert_refused(g.ext(MMUEXT_UNPIN_TABLE, 0x301, 0), Errno::EINVAL, 0); // not pinned
        assert_refused(g.ext(MMUEXT_UNPIN_TABLE, FRAMES + 5, 0), Errno::EINVAL, 0);
    });
    assert_eq!(g.ext(MMUEXT_UNPIN_TABLE, t.0, 0).result, Ok(()));
    assert!(!g.info(t).pinned && g.info(t).type_count == 0 && !g.info(t).validated);
    g.audit();
}

#[test]
fn new_baseptr_switches_roots_and_flushes() {
    let mut g = guest();
    // A second L4 sharing the kernel L3.
    let l4b = g.table_frame();
    let kslot = g.read(Guest::slot(g.l4, 272));
    g.write_raw(Guest::slot(l4b, 272), kslot);
    unchanged(&mut g, |g| {
        let o = g.ext_fd(MMUEXT_NEW_BASEPTR, l4b.0, 0, 2);
        assert_refused(o, Errno::EPERM, 0);
        assert_refused(g.ext(MMUEXT_NEW_BASEPTR, 0x300, 0), Errno::EINVAL, 0);
    });
    g.m.flusher().take();
    assert_eq!(g.ext(MMUEXT_NEW_BASEPTR, l4b.0, 0).result, Ok(()));
    assert_eq!(g.m.kernel_root(g.c), Some(l4b));
    let fl = g.m.flusher().take();
    assert_eq!(
        fl.len(),
        2,
        "type change of the stale frame, then the CR3 reload"
    );
    assert_eq!(fl[0].reason, FlushReason::TypeChange);
    assert_eq!(
        (fl[1].reason, fl[1].scope, fl[1].vcpus),
        (FlushReason::BasePtr, FlushScope::AllNonGlobal, VcpuSet(1))
    );
    // Validation filled the reserved slots of the new L4.
    assert_eq!(g.read(Guest::slot(l4b, 256)), M2P_SLOT);
    assert_eq!((g.info(g.l4).type_count, g.info(l4b).type_count), (1, 1));
    // Back, and the user root.
    let l4 = g.l4;
    assert_eq!(g.ext(MMUEXT_NEW_BASEPTR, l4.0, 0).result, Ok(()));
    assert_eq!(g.info(l4b).type_count, 0, "old root dropped");
    assert_eq!(g.ext(MMUEXT_NEW_USER_BASEPTR, l4.0, 0).result, Ok(()));
    assert_eq!(g.info(l4).type_count, 3);
    assert_eq!(g.ext(MMUEXT_NEW_USER_BASEPTR, 0, 0).result, Ok(()));
    assert_eq!(g.m.user_root(g.c), None);
    assert_eq!(g.info(l4).type_count, 2);
    g.audit();
}

#[test]
fn m2p_strict_zaps_the_m2p_slot_of_user_roots() {
    let mut g = guest();
    assert_eq!(
        g.m.hypercall_vm_assist(g.c, 0, u64::from(VMASST_TYPE_m2p_strict))
            .unwrap(),
        0
    );
    let l4 = g.l4;
    assert_eq!(g.ext(MMUEXT_NEW_USER_BASEPTR, l4.0, 0).result, Ok(()));
    assert_eq!(g.read(Guest::slot(l4, 256)), 0);
    // Re-installing it as kernel root without m2p_strict fills the slot again.
    assert_eq!(
        g.m.hypercall_vm_assist(g.c, 1, u64::from(VMASST_TYPE_m2p_strict))
            .unwrap(),
        0
    );
    let l4b = g.table_frame();
    assert_eq!(g.ext(MMUEXT_NEW_BASEPTR, l4b.0, 0).result, Ok(()));
    assert_eq!(g.ext(MMUEXT_NEW_BASEPTR, l4.0, 0).result, Ok(()));
    assert_eq!(g.read(Guest::slot(l4, 256)), M2P_SLOT);
    g.audit();
}

#[test]
fn tlb_flush_and_invlpg_ops() {
    let mut g = guest();
    let cases: [(u32, u64, FlushScope, VcpuSet); 4] = [
        (MMUEXT_TLB_FLUSH_LOCAL, 0, FlushScope::All, VcpuSet(1)),
        (MMUEXT_TLB_FLUSH_ALL, 0, FlushScope::All, VcpuSet(3)),
        (
            MMUEXT_INVLPG_LOCAL,
            0x1000,
            FlushScope::Va(0x1000),
            VcpuSet(1),
        ),
        (
            MMUEXT_INVLPG_ALL,
            0x2000,
            FlushScope::Va(0x2000),
            VcpuSet(3),
        ),
    ];
    for (cmd, va, scope, vcpus) in cases {
        assert_eq!(g.ext(cmd, va, 0).result, Ok(()));
        let fl = g.m.flusher().take();
        assert_eq!(
            (fl.len(), fl[0].scope, fl[0].vcpus),
            (1, scope, vcpus),
            "cmd {cmd}"
        );
    }
    // Non-canonical (LOCAL) / non-guest (ALL) VAs: silently nothing.
    assert_eq!(
        g.ext(MMUEXT_INVLPG_LOCAL, 0x8000_0000_0000, 0).result,
        Ok(())
    );
    assert_eq!(
        g.ext(MMUEXT_INVLPG_ALL, 0xffff_8000_0000_0000, 0).result,
        Ok(())
    );
    assert!(g.m.flusher().take().is_empty());
    // MULTI reads a vCPU bitmap from guest memory.
    let f = g.take();
    g.write_raw(f.addr(), 0b10);
    assert_eq!(g.ext(MMUEXT_TLB_FLUSH_MULTI, 0, va_of(f.0)).result, Ok(()));
    assert_eq!(g.m.flusher().take()[0].vcpus, VcpuSet(2));
    assert_refused(
        g.ext(MMUEXT_TLB_FLUSH_MULTI, 0, 0x5000_0000),
        Errno::EINVAL,
        0,
    );
    assert_refused(
        g.ext(MMUEXT_INVLPG_MULTI, 0x1000, 0x5000_0000),
        Errno::EINVAL,
        0,
    );
    // Not for another domain.
    for cmd in [
        MMUEXT_TLB_FLUSH_LOCAL,
        MMUEXT_INVLPG_ALL,
        MMUEXT_SET_LDT,
        MMUEXT_FLUSH_CACHE,
    ] {
        assert_refused(g.ext_fd(cmd, 0, 0, 2), Errno::EPERM, 0);
    }
    assert!(g.m.flusher().take().is_empty());
}

#[test]
fn cache_flush_needs_io_rights_and_ldt_is_checked() {
    let mut g = guest();
    assert_refused(g.ext(MMUEXT_FLUSH_CACHE, 0, 0), Errno::EACCES, 0);
    assert_refused(g.ext(MMUEXT_FLUSH_CACHE_GLOBAL, 0, 0), Errno::EACCES, 0);
    let mut io = guest_with(DomainConfig::new(1).ioports(true));
    assert_eq!(io.ext(MMUEXT_FLUSH_CACHE, 0, 0).result, Ok(()));
    assert_refused(g.ext(MMUEXT_SET_LDT, 0x10000, 8193), Errno::EINVAL, 0);
    assert_refused(g.ext(MMUEXT_SET_LDT, 0x10008, 16), Errno::EINVAL, 0);
    assert_refused(
        g.ext(MMUEXT_SET_LDT, 0xffff_8000_0000_0000, 16),
        Errno::EINVAL,
        0,
    );
    assert_eq!(g.ext(MMUEXT_SET_LDT, 0x10000, 8192).result, Ok(()));
    assert_eq!(g.m.domain(1).unwrap().vcpus()[0].ldt_ents, 8192);
    assert_eq!(
        g.ext(MMUEXT_SET_LDT, 0xffff_8000_0000_0000, 0).result,
        Ok(()),
        "0 entries: base unchecked"
    );
}

#[test]
fn clear_and_copy_page() {
    let mut g = guest();
    let (a, b) = (g.take(), g.take());
    g.write_raw(a.addr() + 64, 0x55);
    assert_eq!(g.ext(MMUEXT_COPY_PAGE, b.0, a.0).result, Ok(()));
    assert_eq!(g.read(b.addr() + 64), 0x55);
    assert_eq!(g.ext(MMUEXT_CLEAR_PAGE, a.0, 0).result, Ok(()));
    assert_eq!(g.read(a.addr() + 64), 0);
    let l4 = g.l4;
    unchanged(&mut g, |g| {
        assert_refused(g.ext(MMUEXT_CLEAR_PAGE, l4.0, 0), Errno::EINVAL, 0);
        assert_refused(g.ext(MMUEXT_COPY_PAGE, l4.0, b.0), Errno::EINVAL, 0);
        assert_refused(g.ext(MMUEXT_COPY_PAGE, b.0, DOM2_FIRST), Errno::EINVAL, 0);
        assert_refused(g.ext(MMUEXT_CLEAR_PAGE, DOM2_FIRST, 0), Errno::EINVAL, 0);
    });
    // The table can be copied *from*.
    assert_eq!(g.ext(MMUEXT_COPY_PAGE, b.0, l4.0).result, Ok(()));
    g.audit();
}

#[test]
fn obsolete_and_unknown_mmuext_commands() {
    let mut g = guest();
    unchanged(&mut g, |g| {
        assert_refused(g.ext(MMUEXT_MARK_SUPER, 0x300, 0), Errno::EOPNOTSUPP, 0);
        assert_refused(g.ext(MMUEXT_UNMARK_SUPER, 0x300, 0), Errno::EOPNOTSUPP, 0);
        assert_refused(g.ext(14, 0, 0), Errno::ENOSYS, 0);
        assert_refused(g.ext(99, 0, 0), Errno::ENOSYS, 0);
    });
    let ops = [
        MmuextOp::new(MMUEXT_TLB_FLUSH_LOCAL, 0, 0),
        MmuextOp::new(99, 0, 0),
        MmuextOp::new(MMUEXT_TLB_FLUSH_LOCAL, 0, 0),
    ];
    let o = g.m.mmuext_op(g.c, &ops, SELF).unwrap();
    assert_refused(o, Errno::ENOSYS, 1);
    assert_eq!(g.m.flusher().take().len(), 1);
}

// ---------------------------------------------------------------- update_va_mapping

#[test]
fn update_va_mapping_remaps_and_flushes_as_asked() {
    let mut g = guest();
    let va = va_of(0x300);
    let f = g.take();
    let rc =
        g.m.hypercall_update_va_mapping(g.c, va, (f.0 << 12) | P | RW, UVMF_INVLPG | UVMF_LOCAL)
            .unwrap();
    assert_eq!(rc, 0);
    assert_eq!(g.translate(va), Some(f.addr()));
    let fl = g.m.flusher().take();
    assert_eq!(
        (fl[0].scope, fl[0].vcpus, fl[0].stale.clone()),
        (FlushScope::Va(va), VcpuSet(1), vec![Mfn(0x300)])
    );
    let rc =
        g.m.hypercall_update_va_mapping(g.c, va, (0x300 << 12) | P, UVMF_TLB_FLUSH | UVMF_ALL)
            .unwrap();
    assert_eq!(rc, 0);
    let fl = g.m.flusher().take();
    assert_eq!((fl[0].scope, fl[0].vcpus), (FlushScope::All, VcpuSet(3)));
    // A bitmap pointer: flush those vCPUs.
    let bm = g.take();
    g.write_raw(bm.addr(), 0b10);
    let rc =
        g.m.hypercall_update_va_mapping(
            g.c,
            va,
            (0x300 << 12) | P | RW,
            UVMF_TLB_FLUSH | va_of(bm.0),
        )
        .unwrap();
    assert_eq!(rc, 0);
    assert_eq!(g.m.flusher().take()[0].vcpus, VcpuSet(2));
    // Flush type 3 and 0: none.
    assert_eq!(
        g.m.hypercall_update_va_mapping(g.c, va, (0x300 << 12) | P, 3)
            .unwrap(),
        0
    );
    assert!(g.m.flusher().take().is_empty());
    // A bad bitmap pointer: -EFAULT, but the PTE was changed.
    let rc =
        g.m.hypercall_update_va_mapping(g.c, va, (f.0 << 12) | P, UVMF_INVLPG | 0x5000_0000)
            .unwrap();
    assert_eq!(rc, Errno::EFAULT.neg());
    assert_eq!(g.translate(va), Some(f.addr()));
    g.audit();
}

#[test]
fn update_va_mapping_refusals() {
    let mut g = guest();
    unchanged(&mut g, |g| {
        // Not mapped by any L1 (hole), Xen's range, non-canonical.
        for va in [0x1000, 0xffff_8000_0000_0000, 0x8000_0000_0000] {
            let rc =
                g.m.hypercall_update_va_mapping(g.c, va, 0, UVMF_INVLPG | UVMF_ALL)
                    .unwrap();
            assert_eq!(rc, Errno::EINVAL.neg(), "{va:#x}");
        }
        // Refused entry: no flush.
        let l4 = g.l4;
        let rc =
            g.m.hypercall_update_va_mapping(
                g.c,
                va_of(0x300),
                (l4.0 << 12) | P | RW,
                UVMF_TLB_FLUSH | UVMF_ALL,
            )
            .unwrap();
        assert_eq!(rc, Errno::EBUSY.neg());
        let rc = g
            .m
            .hypercall_update_va_mapping_otherdomain(g.c, va_of(0x300), DOM2_FIRST << 12 | P, 0, 2)
            .unwrap();
        assert_eq!(rc, Errno::EPERM.neg());
        let rc = g
            .m
            .hypercall_update_va_mapping_otherdomain(g.c, va_of(0x300), DOM2_FIRST << 12 | P, 0, 1)
            .unwrap();
        assert_eq!(rc, Errno::ESRCH.neg());
    });
    assert!(g.m.flusher().take().is_empty());
    let rc = g
        .m
        .hypercall_update_va_mapping_otherdomain(g.c, va_of(0x300), (0x300 << 12) | P, 0, 0x7FF0)
        .unwrap();
    assert_eq!(rc, 0);
}

// ---------------------------------------------------------------- guest-VA hypercalls

#[test]
fn hypercall_form_reads_requests_and_writes_pdone_through_guest_memory() {
    let mut g = guest();
    let buf = g.take();
    let f = g.take();
    let (a, b) = (g.pte_addr(va_of(0x300)), g.pte_addr(va_of(0x301)));
    let reqs = [
        MmuUpdate {
            ptr: a,
            val: (f.0 << 12) | P,
        },
        MmuUpdate {
            ptr: b,
            val: 0x18 | P | (f.0 << 12),
        },
    ];
    let bytes: Vec<u8> = reqs.iter().flat_map(|r| r.to_bytes()).collect();
    g.m.memory()
        .write_slice(&bytes, GuestAddress(buf.addr()))
        .unwrap();
    let pdone = va_of(buf.0) + 0x800;
    let rc =
        g.m.hypercall_mmu_update(g.c, va_of(buf.0), 2, pdone, u64::from(SELF))
            .unwrap();
    assert_eq!(rc, Errno::EINVAL.neg());
    assert_eq!(g.read(buf.addr() + 0x800) as u32, 1);
    // Continuation form: count with bit 31 carries `done` from *pdone.
    let rc =
        g.m.hypercall_mmu_update(g.c, va_of(buf.0), 1 | 0x8000_0000, pdone, u64::from(SELF))
            .unwrap();
    assert_eq!(rc, 0);
    assert_eq!(g.read(buf.addr() + 0x800) as u32, 2);
    // The array must lie in guest space; an unmapped page faults at that entry.
    let rc =
        g.m.hypercall_mmu_update(g.c, 0xffff_8000_0000_0000, 1, 0, u64::from(SELF))
            .unwrap();
    assert_eq!(rc, Errno::EFAULT.neg());
    let rc =
        g.m.hypercall_mmu_update(
            g.c,
            va_of(buf.0) + 0x1000 * 0x1000,
            1,
            pdone,
            u64::from(SELF),
        )
        .unwrap();
    assert_eq!(rc, Errno::EFAULT.neg());
    assert_eq!(g.read(buf.addr() + 0x800) as u32, 0);
    // Huge counts are just long arrays, processed until the first failure...
    let rc =
        g.m.hypercall_mmu_update(g.c, va_of(buf.0), 0x7fff_ffff, pdone, u64::from(SELF))
            .unwrap();
    assert_eq!(rc, Errno::EINVAL.neg());
    assert_eq!(g.read(buf.addr() + 0x800) as u32, 1);
    // ...unless the array would run past the guest's space.
    let rc =
        g.m.hypercall_mmu_update(g.c, 0xffff_ffff_ffff_f000, 0x7fff_ffff, 0, u64::from(SELF))
            .unwrap();
    assert_eq!(rc, Errno::EFAULT.neg());
    g.audit();
}

#[test]
fn multicall_runs_every_entry_and_records_results() {
    let mut g = guest();
    let buf = g.take();
    let f = g.take();
    let va = va_of(0x300);
    let l4 = g.l4;
    let entry = |op: u64, args: [u64; 6]| MulticallEntry {
        op,
        result: 0,
        args,
    };
    let list = [
        entry(14, [va, (f.0 << 12) | P, 0, 0, 0, 0]),
        entry(14, [va, (l4.0 << 12) | P | RW, 0, 0, 0, 0]), // refused
        entry(13, [0; 6]),                                  // nested
        entry(99, [0; 6]),                                  // to the embedder
        entry(14, [va, (0x300 << 12) | P | RW, 0, 0, 0, 0]),
        entry(23, [0; 6]),              // iret ends the batch
        entry(14, [va, 0, 0, 0, 0, 0]), // never runs
    ];
    let bytes: Vec<u8> = list.iter().flat_map(|e| e.to_bytes()).collect();
    g.m.memory()
        .write_slice(&bytes, GuestAddress(buf.addr()))
        .unwrap();
    let seen = std::cell::RefCell::new(vec![]);
    let mut other = |_m: &mut Machine<GuestMemoryMmap<()>, pvmmu::RecordingFlush>, _c, op, _a| {
        seen.borrow_mut().push(op);
        if op == 23 { 7 } else { Errno::ENOSYS.neg() }
    };
    let rc =
        g.m.hypercall_multicall(g.c, va_of(buf.0), list.len() as u64, &mut other)
            .unwrap();
    assert_eq!(rc, 7, "the iret entry's result");
    assert_eq!(*seen.borrow(), vec![99, 23]);
    let results: Vec<i64> = (0..list.len() as u64)
        .map(|i| g.read(buf.addr() + i * 64 + 8) as i64)
        .collect();
    assert_eq!(
        results,
        vec![
            0,
            Errno::EBUSY.neg(),
            Errno::EINVAL.neg(),
            Errno::ENOSYS.neg(),
            0,
            7,
            0
        ]
    );
    assert_eq!(g.translate(va), Some(0x300 << 12), "entry 6 did not run");
    let rc =
        g.m.hypercall_multicall(g.c, 0xffff_8000_0000_0000, 1, &mut other)
            .unwrap();
    assert_eq!(rc, Errno::EFAULT.neg());
    g.audit();
}

#[test]
fn multicall_over_a_slice_matches_the_guest_form() {
    let mut g = guest();
    let f = g.take();
    let va = va_of(0x300);
    let l4 = g.l4;
    let entry = |op: u64, args: [u64; 6]| MulticallEntry {
        op,
        result: 0x5e,
        args,
    };
    let mut list = [
        entry(14, [va, (f.0 << 12) | P, 0, 0, 0, 0]),
        entry(14, [va, (l4.0 << 12) | P | RW, 0, 0, 0, 0]), // refused
        entry(13, [0; 6]),                                  // nested
        entry(99, [0; 6]),                                  // to the embedder
        entry(14, [va, (0x300 << 12) | P | RW, 0, 0, 0, 0]),
        entry(23, [0; 6]),              // iret ends the batch
        entry(14, [va, 0, 0, 0, 0, 0]), // never runs
    ];
    let seen = std::cell::RefCell::new(vec![]);
    let mut other = |_m: &mut Machine<GuestMemoryMmap<()>, pvmmu::RecordingFlush>, _c, op, _a| {
        seen.borrow_mut().push(op);
        if op == 23 { 7 } else { Errno::ENOSYS.neg() }
    };
    assert_eq!(g.m.multicall(g.c, &mut list, &mut other).unwrap(), 7);
    assert_eq!(*seen.borrow(), vec![99, 23]);
    let results: Vec<i64> = list.iter().map(|e| e.result as i64).collect();
    assert_eq!(
        results,
        vec![
            0,
            Errno::EBUSY.neg(),
            Errno::EINVAL.neg(),
            Errno::ENOSYS.neg(),
            0,
            7,
            0x5e
        ],
        "the entry after the iret keeps its result"
    );
    assert_eq!(g.translate(va), Some(0x300 << 12), "entry 6 did not run");
    g.audit();
}

#[test]
fn vm_assist_values() {
    let mut g = guest();
    let c = g.c;
    assert_eq!(g.m.hypercall_vm_assist(c, 0, 2).unwrap(), 0);
    assert!(g.m.domain(1).unwrap().has_assist(2));
    assert_eq!(g.m.hypercall_vm_assist(c, 1, 2).unwrap(), 0);
    assert_eq!(
        g.m.hypercall_vm_assist(c, 2, 2).unwrap(),
        Errno::ENOSYS.neg()
    );
    assert_eq!(
        g.m.hypercall_vm_assist(c, 0, 6).unwrap(),
        Errno::EINVAL.neg()
    );
    assert_eq!(
        g.m.hypercall_vm_assist(c, 0, 64).unwrap(),
        Errno::EINVAL.neg()
    );
    assert_eq!(g.m.hypercall_vm_assist(c, 0, 32).unwrap(), 0);
}

// ---------------------------------------------------------------- ptwr

#[test]
fn ptwr_emulates_valid_writes_to_own_l1_tables_only() {
    let mut g = guest();
    let target_va = va_of(0x300);
    let ptr = g.pte_addr(target_va);
    let l1 = Mfn::containing(ptr);
    let pt_va = va_of(l1.0) + (ptr & 0xfff); // the guest's own (read-only) view of the PTE
    let f = g.take();
    let w = |value, size, cmpxchg| PtwrWrite {
        addr: pt_va,
        size,
        value,
        cmpxchg,
    };
    let c = g.c;
    let r =
        g.m.ptwr_write(c, pt_va, w((f.0 << 12) | P | RW, 8, None))
            .unwrap();
    assert_eq!(r, Err(PtwrRefusal::NotEnabled));
    g.m.hypercall_vm_assist(c, 0, u64::from(VMASST_TYPE_writable_pagetables))
        .unwrap();
    let r =
        g.m.ptwr_write(c, pt_va, w((f.0 << 12) | P | RW, 8, None))
            .unwrap();
    assert_eq!(r, Ok(PtwrOutcome::Written));
    assert_eq!(g.read(ptr), (f.0 << 12) | P | RW | US | GK);
    g.audit();
    let l4 = g.l4;
    unchanged(&mut g, |g| {
        let r =
            g.m.ptwr_write(c, pt_va, w((l4.0 << 12) | P | RW, 8, None))
                .unwrap();
        assert_eq!(r, Err(PtwrRefusal::Refused(Errno::EBUSY)));
        let r =
            g.m.ptwr_write(
                c,
                pt_va,
                PtwrWrite {
                    addr: pt_va + 2,
                    size: 4,
                    value: 0,
                    cmpxchg: None,
                },
            )
            .unwrap();
        assert_eq!(r, Err(PtwrRefusal::BadAccess));
        let r =
            g.m.ptwr_write(
                c,
                pt_va,
                PtwrWrite {
                    addr: pt_va + 0x1000,
                    size: 8,
                    value: 0,
                    cmpxchg: None,
                },
            )
            .unwrap();
        assert_eq!(r, Err(PtwrRefusal::BadAccess));
        // A data page is not an L1 table.
        let r = g.m.ptwr_write(
            c,
            va_of(0x300),
            PtwrWrite {
                addr: va_of(0x300),
                size: 8,
                value: 0,
                cmpxchg: None,
            },
        );
        assert_eq!(r.unwrap(), Err(PtwrRefusal::NotL1Table));
        // CMPXCHG against a stale expected value: nothing happens.
        let r = g.m.ptwr_write(c, pt_va, w(0, 8, Some(0x1234))).unwrap();
        assert_eq!(
            r,
            Ok(PtwrOutcome::Mismatch {
                current: g.read(ptr)
            })
        );
    });
    // A 4-byte write of the low half merges with the high half.
    let cur = g.read(ptr);
    let r =
        g.m.ptwr_write(
            c,
            pt_va,
            PtwrWrite {
                addr: pt_va,
                size: 4,
                value: 0,
                cmpxchg: None,
            },
        )
        .unwrap();
    assert_eq!(r, Ok(PtwrOutcome::Written));
    assert_eq!(g.read(ptr), cur & !0xffff_ffff);
    assert_eq!(
        g.info(f).count,
        2,
        "unmapped: only the allocation and KBASE refs left"
    );
    g.audit();
}

#[test]
fn ptwr_writes_any_entry_of_the_faulting_page_and_any_aligned_part_of_it() {
    let mut g = guest();
    let c = g.c;
    g.m.hypercall_vm_assist(c, 0, u64::from(VMASST_TYPE_writable_pagetables))
        .unwrap();
    let target_va = va_of(0x300);
    let ptr = g.pte_addr(target_va);
    let l1 = Mfn::containing(ptr);
    let pt_va = va_of(l1.0) + (ptr & 0xfff);
    // The fault VA is the page; the write may land on another entry of it.
    let next = ptr + 8;
    let before = g.read(next);
    let r =
        g.m.ptwr_write(
            c,
            pt_va,
            PtwrWrite {
                addr: pt_va + 8,
                size: 8,
                value: before & !RW,
                cmpxchg: None,
            },
        )
        .unwrap();
    assert_eq!(r, Ok(PtwrOutcome::Written));
    assert_eq!(
        g.read(next),
        before & !RW,
        "the neighbouring entry, read-only now"
    );
    // A 4-byte write of the high half sets NX there, and leaves the low half alone.
    let cur = g.read(ptr);
    let r =
        g.m.ptwr_write(
            c,
            pt_va,
            PtwrWrite {
                addr: pt_va + 4,
                size: 4,
                value: (cur >> 32) | 0x8000_0000,
                cmpxchg: None,
            },
        )
        .unwrap();
    assert_eq!(r, Ok(PtwrOutcome::Written));
    assert_eq!(g.read(ptr), cur | NX);
    // A 4-byte CMPXCHG of the high half against a stale value fails and reports the
    // high half as it is; the counters see one write applied, one refused.
    let (applied, rejected) = (g.m.stats().applied, g.m.stats().rejected);
    let r =
        g.m.ptwr_write(
            c,
            pt_va,
            PtwrWrite {
                addr: pt_va + 4,
                size: 4,
                value: 0,
                cmpxchg: Some(0x1234),
            },
        )
        .unwrap();
    assert_eq!(
        r,
        Ok(PtwrOutcome::Mismatch {
            current: (cur | NX) >> 32
        })
    );
    let r =
        g.m.ptwr_write(
            c,
            pt_va,
            PtwrWrite {
                addr: pt_va + 4,
                size: 4,
                value: (cur >> 32) | 0x8000_0000,
                cmpxchg: Some((cur | NX) >> 32),
            },
        )
        .unwrap();
    assert_eq!(r, Ok(PtwrOutcome::Written));
    let l4 = g.l4;
    let r =
        g.m.ptwr_write(
            c,
            pt_va,
            PtwrWrite {
                addr: pt_va,
                size: 8,
                value: (l4.0 << 12) | P | RW,
                cmpxchg: None,
            },
        )
        .unwrap();
    assert_eq!(r, Err(PtwrRefusal::Refused(Errno::EBUSY)));
    assert_eq!(g.m.stats().applied, applied + 1);
    assert_eq!(g.m.stats().rejected, rejected + 1);
    g.audit();
    // A not-present entry that still names an L1 table in its address bits does not
    // make the page it would map a page table: nothing is written through it.
    let f = g.take();
    let va = va_of(f.0);
    let p = g.pte_addr(va);
    assert_eq!(g.update(&[(p, l1.addr())]).result, Ok(()));
    unchanged(&mut g, |g| {
        let r =
            g.m.ptwr_write(
                c,
                va,
                PtwrWrite {
                    addr: va,
                    size: 8,
                    value: 0,
                    cmpxchg: None,
                },
            )
            .unwrap();
        assert_eq!(r, Err(PtwrRefusal::NotL1Table));
    });
    g.audit();
}

// ---------------------------------------------------------------- audit and teardown

#[test]
fn teardown_returns_every_frame() {
    let mut g = guest();
    let t = g.table_frame();
    assert_eq!(g.ext(MMUEXT_PIN_L1_TABLE, t.0, 0).result, Ok(()));
    let l4 = g.l4;
    assert_eq!(g.ext(MMUEXT_NEW_USER_BASEPTR, l4.0, 0).result, Ok(()));
    assert_eq!(
        g.update(&[(Guest::slot(l4, 400), (l4.0 << 12) | P)]).result,
        Ok(())
    );
    g.m.destroy_domain(1).unwrap();
    for f in DOM_FIRST..DOM_END {
        let p = g.info(Mfn(f));
        assert_eq!(
            (p.count, p.type_count, p.pinned, p.validated),
            (0, 0, false, false),
            "frame {f:#x}"
        );
        assert_eq!(p.owner, pvmmu_abi::DOMID_INVALID);
    }
    g.audit();
}

#[test]
fn teardown_reports_frames_still_mapped_by_another_domain() {
    let mut g = guest_with(DomainConfig::new(1).privileged(true));
    let ptr = g.pte_addr(va_of(0x300));
    assert_eq!(
        g.update_fd(&[(ptr, (DOM2_FIRST << 12) | P)], 2).result,
        Ok(())
    );
    let r = g.m.destroy_domain(2);
    assert_eq!(
        r,
        Err(pvmmu::MachineError::Teardown {
            domain: 2,
            frames: 1
        })
    );
}

#[test]
fn audit_catches_a_change_behind_the_library_s_back() {
    let g = guest();
    let ptr = g.pte_addr(va_of(0x300));
    g.write_raw(ptr, (g.l4.0 << 12) | P | RW);
    let e = g.m.audit().unwrap_err();
    assert!(e.0.iter().any(|p| p.contains("mapped writable")), "{e}");
}

#[test]
fn an_embedder_interrupt_stops_long_batches_between_entries() {
    let mut g = guest();
    let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    g.m.set_interrupt(Some(flag.clone()));
    let (a, b) = (g.pte_addr(va_of(0x300)), g.pte_addr(va_of(0x301)));
    flag.store(true, std::sync::atomic::Ordering::Relaxed);
    // The first entry always runs (Xen checks for preemption before later ones only).
    let o = g.update(&[(a, 0), (b, 0)]);
    assert_refused(o, Errno::EINTR, 1);
    assert_eq!(g.read(a), 0);
    assert_ne!(g.read(b), 0);
    let ops = [
        MmuextOp::new(MMUEXT_TLB_FLUSH_LOCAL, 0, 0),
        MmuextOp::new(MMUEXT_TLB_FLUSH_LOCAL, 0, 0),
    ];
    assert_refused(g.m.mmuext_op(g.c, &ops, SELF).unwrap(), Errno::EINTR, 1);
    flag.store(false, std::sync::atomic::Ordering::Relaxed);
    assert_eq!(g.update(&[(b, 0)]).result, Ok(()));
    g.audit();
}
