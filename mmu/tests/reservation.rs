//! Frames leaving and joining a live domain (`pvmmu::reservation`): what stays while
//! referenced, what is freed, where new frames come from, the cap, and the flush a
//! reused frame needs.

mod support;

use pvmmu::{Errno, FlushReason, Mfn, PageType};
use pvmmu_abi::mmu::{MMUEXT_PIN_L1_TABLE, MMUEXT_UNPIN_TABLE};
use support::*;

#[test]
fn a_frame_given_back_leaves_when_its_last_reference_goes() {
    let mut g = guest();
    let f = g.take();
    let tot = g.m.tot_pages(1);
    // Still mapped (its KBASE mapping): the allocation reference goes, the frame stays.
    let o = g.m.decrease_reservation(1, &[f.0], 0).unwrap();
    assert_eq!((o.done, o.stopped), (1, None));
    let p = g.info(f);
    assert!(!p.allocated && p.owner == 1 && p.count == 1, "{p:?}");
    assert_eq!(g.m.tot_pages(1), tot, "counted until freed");
    g.audit();
    // The mapping goes: the frame is free.
    assert_eq!(g.update(&[(g.pte_addr(va_of(f.0)), 0)]).result, Ok(()));
    assert_eq!(g.info(f).count, 0);
    assert_eq!(g.info(f).owner, pvmmu_abi::DOMID_INVALID);
    assert_eq!(g.m.tot_pages(1), tot - 1);
    g.audit();
    // Given back twice: not the domain's any more.
    let o = g.m.decrease_reservation(1, &[f.0], 0).unwrap();
    assert_eq!((o.done, o.stopped), (0, Some(Errno::ENXIO)));
}

#[test]
fn a_pinned_table_given_back_stays_typed_until_unpinned() {
    let mut g = guest();
    let t = g.table_frame();
    assert_eq!(g.ext(MMUEXT_PIN_L1_TABLE, t.0, 0).result, Ok(()));
    let o = g.m.decrease_reservation(1, &[t.0], 0).unwrap();
    assert_eq!(o.done, 1);
    assert_eq!(g.info(t).ty, PageType::L1);
    assert!(g.info(t).pinned);
    g.audit();
    assert_eq!(g.ext(MMUEXT_UNPIN_TABLE, t.0, 0).result, Ok(()));
    // Still mapped read-only at KBASE: owned until that goes too.
    assert_eq!(g.info(t).owner, 1);
    assert_eq!(g.update(&[(g.pte_addr(va_of(t.0)), 0)]).result, Ok(()));
    assert_eq!(g.info(t).count, 0);
    g.audit();
}

#[test]
fn refusals_stop_the_batch_at_the_failing_extent() {
    let mut g = guest();
    let (a, b) = (g.take(), g.take());
    // Not RAM: -EPERM (I/O memory for a PV domain); another domain's: -ENXIO.
    let o =
        g.m.decrease_reservation(1, &[a.0, 0xf_0000, b.0], 0)
            .unwrap();
    assert_eq!((o.done, o.stopped), (1, Some(Errno::EPERM)));
    let o = g.m.decrease_reservation(1, &[b.0, DOM2_FIRST], 0).unwrap();
    assert_eq!((o.done, o.stopped), (1, Some(Errno::ENXIO)));
    // Orders beyond 9 are refused before any extent.
    let c = g.take();
    let o = g.m.decrease_reservation(1, &[c.0], 10).unwrap();
    assert_eq!((o.done, o.stopped), (0, None));
    assert!(g.info(c).allocated);
    // Hypervisor frames are not the domain's.
    let o = g.m.decrease_reservation(1, &[XEN_FRAME], 0).unwrap();
    assert_eq!((o.done, o.stopped), (0, Some(Errno::ENXIO)));
    g.audit();
}

#[test]
fn new_frames_come_from_the_free_pool_up_to_max_pages() {
    let mut g = guest();
    let free: Vec<Mfn> =
        g.m.frames()
            .iter()
            .filter(|(_, p)| p.count == 0 && p.owner == pvmmu_abi::DOMID_INVALID)
            .map(|(m, _)| m)
            .collect();
    g.m.set_max_pages(1, Some(g.m.tot_pages(1) + 3)).unwrap();
    let o = g.m.increase_reservation(1, 5, 0).unwrap();
    assert_eq!((o.done, o.stopped), (3, Some(Errno::ENOMEM)), "capped");
    assert_eq!(o.frames, free[..3], "the lowest free frames");
    for f in &o.frames {
        let p = g.info(*f);
        assert!(p.owner == 1 && p.allocated && p.count == 1, "{p:?}");
    }
    g.m.set_max_pages(1, None).unwrap();
    // Order 2: four naturally aligned contiguous frames.
    let o = g.m.populate_physmap(1, &[0x5000, 0x6000], 2).unwrap();
    assert_eq!(o.done, 2);
    for (i, f) in o.frames.iter().enumerate() {
        assert_eq!(f.0 % 4, 0);
        for j in 0..4 {
            assert_eq!(g.info(Mfn(f.0 + j)).owner, 1);
            assert_eq!(
                g.m.frames().m2p(Mfn(f.0 + j)),
                Some([0x5000, 0x6000][i] + j)
            );
        }
    }
    g.audit();
    let dom = g.c.dom;
    g.m.destroy_domain(dom)
        .expect("teardown returns the new frames too");
}

#[test]
fn a_reused_frame_is_flushed_from_every_tlb_first() {
    let mut g = guest();
    g.m.set_max_pages(1, None).unwrap();
    // Free some frame while a TLB may still translate it: unmapped without a flush.
    let f = g.take();
    assert_eq!(g.m.decrease_reservation(1, &[f.0], 0).unwrap().done, 1);
    assert_eq!(g.update(&[(g.pte_addr(va_of(f.0)), 0)]).result, Ok(()));
    assert_eq!(g.info(f).count, 0);
    g.m.flusher().take();
    // Handing it out again (after the free frames below it) flushes first.
    let below =
        g.m.frames()
            .iter()
            .filter(|(m, p)| m.0 < f.0 && p.count == 0 && p.owner == pvmmu_abi::DOMID_INVALID)
            .count();
    let o = g.m.increase_reservation(1, below + 1, 0).unwrap();
    assert_eq!(o.frames.last(), Some(&f));
    let fl = g.m.flusher().take();
    assert!(
        fl.iter()
            .any(|r| r.reason == FlushReason::TypeChange && r.stale.contains(&f)),
        "{fl:?}"
    );
    g.audit();
}

/// Frames of the domain with nothing but their allocation reference: unmapped.
fn unmapped(g: &mut Guest, n: usize) -> Vec<Mfn> {
    (0..n)
        .map(|_| {
            let f = g.take();
            assert_eq!(g.update(&[(g.pte_addr(va_of(f.0)), 0)]).result, Ok(()));
            f
        })
        .collect()
}

#[test]
fn exchange_trades_whole_chunks_of_frames_nobody_references() {
    let mut g = guest();
    let tot = g.m.tot_pages(1);
    let ins = unmapped(&mut g, 6);
    let mapped = g.take();
    // A referenced input (still mapped), a listed-twice input, another domain's, a
    // pinned table: -EINVAL, nothing changed.
    let t = g.table_frame();
    assert_eq!(g.ext(MMUEXT_PIN_L1_TABLE, t.0, 0).result, Ok(()));
    for bad in [
        vec![ins[0].0, mapped.0],
        vec![ins[0].0, ins[0].0],
        vec![ins[0].0, DOM2_FIRST],
        vec![ins[0].0, t.0],
    ] {
        let counts = g.counts();
        let o = g.m.exchange(1, &bad, 0, &[0x900], 1).unwrap();
        assert_eq!((o.done, o.stopped), (0, Some(Errno::EINVAL)), "{bad:x?}");
        assert_eq!(g.counts(), counts);
    }
    // Orders beyond 9: -EPERM before anything.
    let o = g.m.exchange(1, &[ins[0].0], 10, &[0], 10).unwrap();
    assert_eq!(o.stopped, Some(Errno::EPERM));
    // Two chunks of two frames for two 2-frame extents; the second chunk's input is
    // bad, so only the first is exchanged.
    let o =
        g.m.exchange(
            1,
            &[ins[0].0, ins[1].0, ins[2].0, mapped.0],
            0,
            &[0x500, 0x600],
            1,
        )
        .unwrap();
    assert_eq!((o.done, o.stopped), (2, Some(Errno::EINVAL)));
    assert_eq!(o.frames.len(), 1);
    assert_eq!(g.info(ins[0]).count, 0, "exchanged inputs are free");
    assert!(
        g.info(ins[2]).allocated,
        "the failed chunk's inputs are kept"
    );
    assert_eq!(g.m.frames().m2p(Mfn(o.frames[0].0 + 1)), Some(0x501));
    assert_eq!(g.m.tot_pages(1), tot, "an exchange keeps the page count");
    // Larger to smaller: one 2-frame input extent (aligned) for two single frames.
    let pair = g.m.populate_physmap(1, &[0x700], 1).unwrap().frames[0];
    let tot = g.m.tot_pages(1);
    let o = g.m.exchange(1, &[pair.0], 1, &[0x800, 0x801], 0).unwrap();
    assert_eq!((o.done, o.stopped, o.frames.len()), (1, None, 2));
    assert_eq!(g.m.tot_pages(1), tot);
    g.audit();
    let dom = g.c.dom;
    g.m.destroy_domain(dom).expect("teardown");
}
