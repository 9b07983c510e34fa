//! What each flush request tells an embedder whose invalidation reaches every vCPU at
//! once (a host-side one): the frames that became stale since the domain's previous
//! request, each once, and whether a present non-leaf entry was revoked since then,
//! while `stale` and `non_leaf` keep the guest-TLB view until a full flush.

mod support;

use pvmmu::{FlushRequest, Mfn};
use pvmmu_abi::mmu::{MMUEXT_NEW_BASEPTR, MMUEXT_PIN_L1_TABLE, MMUEXT_TLB_FLUSH_LOCAL};
use support::*;

fn flushes(g: &mut Guest) -> Vec<FlushRequest> {
    g.m.flusher().take()
}

#[test]
fn a_stale_frame_is_newly_stale_in_one_request_only() {
    let mut g = guest();
    let victim = g.take();
    let va = va_of(victim.0);
    let o = g.update(&[(g.pte_addr(va), 0)]);
    assert_eq!(o.result, Ok(()));
    // A local flush (not full): the guest view keeps the frame stale...
    g.ext(MMUEXT_TLB_FLUSH_LOCAL, 0, 0);
    let fl = flushes(&mut g);
    assert_eq!(fl.len(), 1);
    assert_eq!(fl[0].stale, vec![victim]);
    assert_eq!(fl[0].newly_stale, vec![victim]);
    assert_eq!(
        fl[0].revoked_entries,
        Some(vec![g.pte_addr(va)]),
        "the entry named"
    );
    // ...but a second request reports nothing new to invalidate.
    let l4 = g.l4;
    g.ext(MMUEXT_NEW_BASEPTR, l4.0, 0);
    let fl = flushes(&mut g);
    assert_eq!(fl.len(), 1);
    assert_eq!(fl[0].stale, vec![victim], "still possibly in a guest TLB");
    assert!(
        fl[0].newly_stale.is_empty(),
        "already invalidated host-side"
    );
    assert_eq!(fl[0].revoked_entries, Some(vec![]));
    // Mapped again and downgraded again: new once more.
    let o = g.update(&[(g.pte_addr(va), victim.addr() | P | RW | A)]);
    assert_eq!(o.result, Ok(()));
    let o = g.update(&[(g.pte_addr(va), victim.addr() | P | A)]);
    assert_eq!(o.result, Ok(()));
    g.ext(MMUEXT_TLB_FLUSH_LOCAL, 0, 0);
    let fl = flushes(&mut g);
    assert_eq!(fl[0].newly_stale, vec![victim]);
    g.audit();
}

#[test]
fn upgrades_are_not_newly_stale() {
    let mut g = guest();
    let next = g.take();
    let f = g.take();
    assert_eq!(next.0, f.0 + 1);
    let va = va_of(f.0);
    let ptr = g.pte_addr(va);
    // Read-only to writable, then a new mapping where there was none.
    assert_eq!(g.update(&[(ptr, f.addr() | P | A)]).result, Ok(()));
    flushes(&mut g);
    g.ext(MMUEXT_TLB_FLUSH_LOCAL, 0, 0);
    flushes(&mut g);
    assert_eq!(g.update(&[(ptr, f.addr() | P | RW | A)]).result, Ok(()));
    g.ext(MMUEXT_TLB_FLUSH_LOCAL, 0, 0);
    let fl = flushes(&mut g);
    assert!(fl[0].newly_stale.is_empty(), "RO to RW revokes nothing");
    assert_eq!(fl[0].revoked_entries, Some(vec![]));
    // Clearing the next entry revokes; making it present again does not.
    assert_eq!(g.update(&[(ptr + 8, 0)]).result, Ok(()));
    let other = g.take();
    assert_eq!(g.update(&[(ptr + 8, other.addr() | P | A)]).result, Ok(()));
    g.ext(MMUEXT_TLB_FLUSH_LOCAL, 0, 0);
    let fl = flushes(&mut g);
    assert_eq!(fl[0].newly_stale, vec![next]);
    assert_eq!(
        fl[0].revoked_entries,
        Some(vec![ptr + 8]),
        "the cleared entry, once"
    );
    g.audit();
}

/// A fresh L1 (pinned) to hook in at L2 entry `idx` of the L2 that maps KBASE.
fn fresh_l1(g: &mut Guest) -> Mfn {
    let t = g.table_frame();
    assert_eq!(g.ext(MMUEXT_PIN_L1_TABLE, t.0, 0).result, Ok(()));
    t
}

#[test]
fn hooking_in_a_table_revokes_nothing_but_replacing_or_removing_one_does() {
    let mut g = guest();
    let l1a = fresh_l1(&mut g);
    let l1b = fresh_l1(&mut g);
    // The L2 that maps KBASE (L4 slot 272, L3 entry 0): its last entry is unused.
    let next = |t: Mfn, i: u64| Mfn(g.read(t.addr() + i * 8) >> 12 & 0xff_ffff_ffff);
    let l2_of = next(next(g.l4, 272), 0);
    let slot = l2_of.addr() + 511 * 8;
    assert_eq!(g.read(slot), 0, "an unused L2 entry");
    flushes(&mut g);
    // Hook-in: the XSA-286 flush happens, with nothing revoked.
    assert_eq!(g.update(&[(slot, l1a.addr() | P | RW | A)]).result, Ok(()));
    let fl = flushes(&mut g);
    assert_eq!(fl.len(), 1);
    assert!(fl[0].non_leaf, "a non-leaf change: the guest's caches go");
    assert!(!fl[0].non_leaf_revoked, "nothing cached could be wrong");
    assert_eq!(fl[0].revoked_entries, Some(vec![]));
    // A flag change that adds nothing lost: no revocation either.
    assert_eq!(
        g.update(&[(slot, l1a.addr() | P | RW | A | D)]).result,
        Ok(())
    );
    assert!(!flushes(&mut g)[0].non_leaf_revoked);
    // Replace: revoked.
    assert_eq!(g.update(&[(slot, l1b.addr() | P | RW | A)]).result, Ok(()));
    let fl = flushes(&mut g);
    assert!(fl[0].non_leaf && fl[0].non_leaf_revoked);
    assert_eq!(
        fl[0].revoked_entries,
        Some(vec![slot]),
        "the L2 entry replaced"
    );
    // Write access removed: revoked.
    assert_eq!(g.update(&[(slot, l1b.addr() | P | A)]).result, Ok(()));
    assert!(flushes(&mut g)[0].non_leaf_revoked);
    // Removal: revoked; and reported once only.
    assert_eq!(g.update(&[(slot, 0)]).result, Ok(()));
    assert!(flushes(&mut g)[0].non_leaf_revoked);
    g.ext(MMUEXT_TLB_FLUSH_LOCAL, 0, 0);
    assert!(!flushes(&mut g)[0].non_leaf_revoked);
    g.audit();
}

#[test]
fn a_guest_that_never_flushes_cannot_grow_the_lists_without_bound() {
    let mut g = guest();
    let a = g.take();
    let b = g.take();
    let ptr = g.pte_addr(va_of(a.0));
    // Remap one entry back and forth, far more often than the cap, with no flush.
    for k in 0..(pvmmu::NEWLY_STALE_MAX as u64 + 100) {
        let to = if k % 2 == 0 { b } else { a };
        assert_eq!(g.update(&[(ptr, to.addr() | P | RW | A)]).result, Ok(()));
    }
    g.ext(MMUEXT_TLB_FLUSH_LOCAL, 0, 0);
    let fl = flushes(&mut g);
    assert_eq!(fl.len(), 1);
    // Past the cap: "everything", with no list of entries to rewrite.
    assert!(fl[0].newly_stale.len() <= pvmmu::NEWLY_STALE_MAX);
    assert!(fl[0].non_leaf_revoked, "invalidate everything");
    assert_eq!(fl[0].revoked_entries, None);
    // And the next request starts afresh.
    assert_eq!(g.update(&[(ptr, 0)]).result, Ok(()));
    g.ext(MMUEXT_TLB_FLUSH_LOCAL, 0, 0);
    let fl = flushes(&mut g);
    assert!(!fl[0].non_leaf_revoked);
    assert_eq!(fl[0].revoked_entries, Some(vec![ptr]));
    g.audit();
}

#[test]
fn a_full_flush_forgets_only_its_own_domains_stale_foreign_frames() {
    use pvmmu_abi::mmu::MMUEXT_TLB_FLUSH_ALL;
    // Domain 1 is privileged over domain 2: it maps one of domain 2's frames, then
    // unmaps it, so its TLBs may hold a stale translation of a frame it does not own.
    let mut g = guest_with(pvmmu::DomainConfig::new(1).vcpus(2).privileged(true));
    let theirs = Mfn(DOM2_FIRST + 3);
    let mine = g.take();
    let slot = g.pte_addr(va_of(mine.0));
    let flushes_before = g.m.stats().flushes;
    let o = g.update_fd(&[(slot, theirs.addr() | P | A)], 2);
    assert_eq!(o.result, Ok(()));
    assert_eq!(g.update(&[(slot, 0)]).result, Ok(()));
    assert_eq!(
        g.info(theirs).stale_foreign,
        1,
        "domain 1 may hold it stale"
    );
    // A flush that is not full keeps it; a full one by domain 1 forgets it.
    g.ext(MMUEXT_TLB_FLUSH_LOCAL, 0, 0);
    assert_eq!(g.info(theirs).stale_foreign, 1);
    g.ext(MMUEXT_TLB_FLUSH_ALL, 0, 0);
    assert_eq!(
        g.info(theirs).stale_foreign,
        0,
        "forgotten by its own full flush"
    );
    // Every request was counted.
    assert_eq!(g.m.stats().flushes, flushes_before + 2);
    assert_eq!(flushes(&mut g).len(), 2);
    g.audit();
}

#[test]
fn another_domains_full_flush_does_not_forget_them() {
    use pvmmu_abi::mmu::MMUEXT_TLB_FLUSH_ALL;
    let mut g = guest_with(pvmmu::DomainConfig::new(1).vcpus(2).privileged(true));
    let theirs = Mfn(DOM2_FIRST + 4);
    let mine = g.take();
    let slot = g.pte_addr(va_of(mine.0));
    assert_eq!(
        g.update_fd(&[(slot, theirs.addr() | P | A)], 2).result,
        Ok(())
    );
    assert_eq!(g.update(&[(slot, 0)]).result, Ok(()));
    assert_eq!(g.info(theirs).stale_foreign, 1);
    // Domain 2 flushes all its TLBs: domain 1's may still hold the frame.
    let o =
        g.m.mmuext_op(
            pvmmu::Caller::new(2, 0),
            &[pvmmu_abi::MmuextOp::new(MMUEXT_TLB_FLUSH_ALL, 0, 0)],
            SELF,
        )
        .unwrap();
    assert_eq!(o.result, Ok(()));
    assert_eq!(g.info(theirs).stale_foreign, 1, "not domain 2's to forget");
    g.ext(MMUEXT_TLB_FLUSH_ALL, 0, 0);
    assert_eq!(g.info(theirs).stale_foreign, 0);
    g.audit();
}
