//! Grant mappings (`pvmmu::grant`): the PTE a host mapping writes, the references each
//! half holds, unmap checks (XSA-224, XSA-227, XSA-234) and teardown.
//!
//! Every refusal asserts the exact status and that no count and no byte of memory
//! changed; every test audits after its steps.

mod support;

use pvmmu::grant::{GrantMapRequest, GrantUnmapped};
use pvmmu::{FlushReason, Mfn};
use pvmmu_abi::grant::{
    GNTMAP_application_map, GNTMAP_contains_pte, GNTMAP_device_map, GNTMAP_host_map,
    GNTMAP_readonly, GNTST_bad_dev_addr, GNTST_bad_handle, GNTST_bad_page, GNTST_general_error,
};
use pvmmu_abi::mmu::MMUEXT_PIN_L1_TABLE;
use pvmmu_abi::{Errno, MmuextOp};
use support::*;

const HOST: u32 = GNTMAP_host_map;
const DEV: u32 = GNTMAP_device_map;
const RO: u32 = GNTMAP_readonly;

/// A first map of grant reference 8 of domain 1 (the guest's own).
fn req(mfn: Mfn, flags: u32, host_addr: u64) -> GrantMapRequest {
    GrantMapRequest {
        granter: 1,
        gref: 8,
        mfn,
        flags,
        host_addr,
        first_pin: true,
    }
}

fn map(g: &mut Guest, r: GrantMapRequest) -> Result<u32, i16> {
    g.m.grant_map(g.c, r).expect("caller exists")
}

/// Unmaps and completes at once (a batch of one).
fn unmap(g: &mut Guest, h: u32, host: u64, dev: u64, new: u64) -> Result<GrantUnmapped, i16> {
    let u =
        g.m.grant_unmap(g.c, h, host, dev, new)
            .expect("caller exists")?;
    g.m.grant_unmap_complete(g.c, &[u]).expect("caller exists");
    Ok(u)
}

/// A refusal: the status, and nothing changed.
fn refused(g: &mut Guest, r: GrantMapRequest, status: i16) {
    let (mem, counts) = (g.snapshot(), g.counts());
    assert_eq!(map(g, r), Err(status));
    assert!(g.snapshot() == mem, "memory changed by a refused map");
    assert_eq!(g.counts(), counts, "counts changed by a refused map");
    assert!(g.m.grant_mappings(g.c.dom).is_empty());
    g.audit();
}

/// The granted frame and a VA whose mapping (of another data frame) the host half
/// replaces.
fn setup(g: &mut Guest) -> (Mfn, u64, Mfn) {
    let frame = g.take();
    let victim = g.take();
    (frame, va_of(victim.0), victim)
}

#[test]
fn writable_host_map_writes_xen_pte_and_takes_a_writable_reference() {
    let mut g = guest();
    let (f, va, victim) = setup(&mut g);
    let before = g.info(f);
    let vbefore = g.info(victim);
    let h = map(&mut g, req(f, HOST, va)).unwrap();
    // P|A|D|NX|RW, then adjusted as a kernel L1 entry: U and the guest-kernel bit.
    assert_eq!(
        g.read(g.pte_addr(va)),
        f.addr() | P | RW | A | D | NX | US | GK
    );
    assert_eq!(g.translate(va), Some(f.addr()));
    let now = g.info(f);
    assert_eq!(
        (now.count, now.type_count),
        (before.count + 1, before.type_count + 1)
    );
    // The entry it replaced gave its references back.
    let v = g.info(victim);
    assert_eq!(
        (v.count, v.type_count),
        (vbefore.count - 1, vbefore.type_count - 1)
    );
    g.audit();
    let m = g.m.grant_mapping(g.c.dom, h).unwrap();
    assert_eq!((m.mfn, m.flags, m.gref), (f, HOST, 8));

    g.m.flusher().take();
    let u = unmap(&mut g, h, va, 0, 0).unwrap();
    assert_eq!(u.done, HOST);
    assert_eq!(g.read(g.pte_addr(va)), 0, "host mapping cleared");
    let now = g.info(f);
    assert_eq!(
        (now.count, now.type_count),
        (before.count, before.type_count)
    );
    let flushes = g.m.flusher().take();
    assert!(
        flushes.iter().any(|r| r.reason == FlushReason::GrantUnmap
            && r.scope == pvmmu::FlushScope::All
            && r.stale.contains(&f)),
        "the batch's flush names the unmapped frame: {flushes:?}"
    );
    assert_eq!(g.m.grant_mapping(g.c.dom, h), None, "handle freed");
    g.audit();
}

#[test]
fn read_only_and_application_maps_set_their_bits() {
    let mut g = guest();
    let (f, va, _) = setup(&mut g);
    let before = g.info(f);
    let flags = HOST | RO | GNTMAP_application_map | (5 << 16);
    let h = map(&mut g, req(f, flags, va)).unwrap();
    // A user mapping: U and G, no guest-kernel bit; available bits 9..11 from the flags.
    assert_eq!(
        g.read(g.pte_addr(va)),
        f.addr() | P | A | D | NX | US | G | (5 << 9)
    );
    let now = g.info(f);
    assert_eq!(
        (now.count, now.type_count),
        (before.count + 1, before.type_count)
    );
    g.audit();
    assert_eq!(unmap(&mut g, h, va, 0, 0).unwrap().done, HOST | RO);
    assert_eq!(g.info(f).count, before.count);
    g.audit();
}

#[test]
fn xsa_224_device_and_host_halves_unmap_separately_with_their_own_references() {
    let mut g = guest();
    let (f, va, _) = setup(&mut g);
    let before = g.info(f);
    let h = map(&mut g, req(f, HOST | DEV, va)).unwrap();
    let now = g.info(f);
    assert_eq!(
        (now.count, now.type_count),
        (before.count + 2, before.type_count + 2)
    );
    g.audit();
    // The host half alone: the device half keeps its two references.
    assert_eq!(unmap(&mut g, h, va, 0, 0).unwrap().done, HOST);
    let now = g.info(f);
    assert_eq!(
        (now.count, now.type_count),
        (before.count + 1, before.type_count + 1)
    );
    assert_eq!(g.m.grant_mapping(g.c.dom, h).unwrap().flags, DEV);
    g.audit();
    // A wrong bus address changes nothing.
    let counts = g.counts();
    assert_eq!(
        g.m.grant_unmap(g.c, h, 0, f.addr() + 0x1000, 0).unwrap(),
        Err(GNTST_bad_dev_addr)
    );
    assert_eq!(g.counts(), counts);
    // Then the device half: exactly one writable reference goes, not one too many.
    assert_eq!(unmap(&mut g, h, 0, f.addr(), 0).unwrap().done, DEV);
    let now = g.info(f);
    assert_eq!(
        (now.count, now.type_count),
        (before.count, before.type_count)
    );
    assert_eq!(g.m.grant_mapping(g.c.dom, h), None);
    // Still mapped writable by the kernel: it cannot become a page table.
    let o = g.ext(MMUEXT_PIN_L1_TABLE, f.0, 0);
    assert_eq!(o.result, Err(Errno::EINVAL));
    g.audit();
}

#[test]
fn xsa_234_replace_checks_the_pte_flags_not_only_the_frame() {
    let mut g = guest();
    let f1 = g.take();
    let f2 = g.take();
    let (va1, va2) = (va_of(g.take().0), va_of(g.take().0));
    // frame1 read-only in the kernel map: its only writable reference is the grant's.
    let o = g.update(&[(g.pte_addr(va_of(f1.0)), f1.addr() | P | A)]);
    assert_eq!(o.result, Ok(()));
    let h1 = map(&mut g, req(f1, HOST, va1)).unwrap();
    let h2 = map(&mut g, req(f2, HOST | RO, va2)).unwrap();
    g.audit();
    // Unmap frame2's mapping, moving va1's PTE (frame1, writable) into va2.
    let u = unmap(&mut g, h2, va2, 0, va1).unwrap();
    assert_eq!(u.done, HOST | RO);
    assert_eq!(g.read(g.pte_addr(va1)), 0, "stolen");
    assert_eq!(g.read(g.pte_addr(va2)) & !0xfff, f1.addr() | NX | GK);
    g.audit();
    // Point va1 at frame1 read-only (a normal mapping), then try to unmap h1 there:
    // the frame matches but RW does not.
    let o = g.update(&[(g.pte_addr(va1), f1.addr() | P | A)]);
    assert_eq!(o.result, Ok(()));
    let counts = g.counts();
    assert_eq!(
        g.m.grant_unmap(g.c, h1, va1, 0, 0).unwrap(),
        Err(GNTST_general_error)
    );
    assert_eq!(g.counts(), counts, "refused unmap changed counts");
    // frame1 is still mapped writable at va2: no page table.
    assert_eq!(g.info(f1).type_count, 1);
    let o = g.ext(MMUEXT_PIN_L1_TABLE, f1.0, 0);
    assert_eq!(o.result, Err(Errno::EINVAL));
    g.audit();
}

#[test]
fn replace_with_a_bad_new_address_keeps_the_mapping() {
    let mut g = guest();
    let (f, va, _) = setup(&mut g);
    let h = map(&mut g, req(f, HOST, va)).unwrap();
    let counts = g.counts();
    // No L1 maps the new address (a hole in the address space).
    assert_eq!(
        g.m.grant_unmap(g.c, h, va, 0, 0x4000_0000).unwrap(),
        Err(GNTST_general_error)
    );
    assert_eq!(g.counts(), counts);
    assert_eq!(g.translate(va), Some(f.addr()));
    // A replace with a stolen PTE that then fails the check drops the stolen PTE.
    let other = g.take();
    let va3 = va_of(other.0);
    let obefore = g.info(other);
    let wrong = va_of(g.take().0); // maps some other frame, not the grant's
    assert_eq!(
        g.m.grant_unmap(g.c, h, wrong, 0, va3).unwrap(),
        Err(GNTST_general_error)
    );
    assert_eq!(
        g.read(g.pte_addr(va3)),
        0,
        "stolen and dropped, as Xen does"
    );
    let o = g.info(other);
    assert_eq!(
        (o.count, o.type_count),
        (obefore.count - 1, obefore.type_count - 1)
    );
    g.audit();
}

#[test]
fn a_page_table_cannot_be_granted_writable_but_read_only_is_fine() {
    let mut g = guest();
    let va = va_of(g.take().0);
    let l1 = Mfn(g.pte_addr(va) >> 12);
    refused(&mut g, req(l1, HOST, va), GNTST_general_error);
    refused(&mut g, req(l1, DEV, 0), GNTST_general_error);
    let other = va_of(g.take().0);
    let h = map(&mut g, req(l1, HOST | RO, other)).unwrap();
    g.audit();
    assert!(g.m.grant_mapping(g.c.dom, h).is_some());
}

#[test]
fn frames_not_the_granters_are_bad_pages_on_first_pin() {
    let mut g = guest();
    let (_, va, _) = setup(&mut g);
    let foreign = Mfn(DOM2_FIRST + 3);
    refused(&mut g, req(foreign, HOST, va), GNTST_bad_page);
    refused(&mut g, req(Mfn(FRAMES + 10), HOST, va), GNTST_bad_page);
    refused(&mut g, req(Mfn(XEN_FRAME), HOST, va), GNTST_bad_page);
    // An entry already pinned whose frame is not the granter's: a general error.
    let r = GrantMapRequest {
        first_pin: false,
        ..req(foreign, HOST, va)
    };
    refused(&mut g, r, GNTST_general_error);
}

#[test]
fn host_address_without_an_l1_is_refused() {
    let mut g = guest();
    let f = g.take();
    // A hole, a non-canonical address, the hypervisor's slots.
    for va in [0x4000_0000u64, 0x0000_8000_0000_0000, 0xffff_8000_0000_0000] {
        refused(&mut g, req(f, HOST, va), GNTST_general_error);
    }
    // Device-only needs no address.
    let h = map(&mut g, req(f, DEV | RO, 0x4000_0000)).unwrap();
    g.audit();
    assert_eq!(unmap(&mut g, h, 0, f.addr(), 0).unwrap().done, DEV | RO);
    g.audit();
}

#[test]
fn xsa_227_pte_addresses_must_be_aligned_l1_entries_of_the_mapper() {
    let mut g = guest();
    let (f, va, _) = setup(&mut g);
    let pte = g.pte_addr(va);
    let cp = HOST | GNTMAP_contains_pte;
    refused(&mut g, req(f, cp, pte + 4), GNTST_general_error);
    let (l4, data) = (g.l4, g.take());
    refused(&mut g, req(f, cp, l4.addr() + 8), GNTST_general_error);
    refused(&mut g, req(f, cp, data.addr()), GNTST_general_error);
    refused(
        &mut g,
        req(f, cp, (DOM2_FIRST + 1) << 12),
        GNTST_general_error,
    );
    let h = map(&mut g, req(f, cp, pte)).unwrap();
    assert_eq!(g.translate(va), Some(f.addr()));
    g.audit();
    // Replace is not offered in this addressing mode.
    let new = va_of(g.take().0);
    assert_eq!(
        g.m.grant_unmap(g.c, h, pte, 0, new).unwrap(),
        Err(GNTST_general_error)
    );
    assert_eq!(unmap(&mut g, h, pte, 0, 0).unwrap().done, HOST);
    assert_eq!(g.read(pte), 0);
    g.audit();
}

#[test]
fn unknown_handles_and_halves_not_mapped() {
    let mut g = guest();
    let (f, va, _) = setup(&mut g);
    assert_eq!(
        g.m.grant_unmap(g.c, 0, va, 0, 0).unwrap(),
        Err(GNTST_bad_handle)
    );
    assert_eq!(
        g.m.grant_unmap(g.c, u32::MAX, va, 0, 0).unwrap(),
        Err(GNTST_bad_handle)
    );
    let h = map(&mut g, req(f, DEV, 0)).unwrap();
    // Nothing asked that the mapping has: nothing done, the handle stays.
    let u = g.m.grant_unmap(g.c, h, va, 0, 0).unwrap().unwrap();
    assert_eq!(u.done, 0);
    g.m.grant_unmap_complete(g.c, &[u]).unwrap();
    assert!(g.m.grant_mapping(g.c.dom, h).is_some());
    g.audit();
    unmap(&mut g, h, 0, f.addr(), 0).unwrap();
    assert_eq!(
        g.m.grant_unmap(g.c, h, 0, f.addr(), 0).unwrap(),
        Err(GNTST_bad_handle)
    );
    g.audit();
}

#[test]
fn a_guest_that_overwrites_its_grant_pte_owns_what_the_pte_held() {
    let mut g = guest();
    let (f, va, _) = setup(&mut g);
    let before = g.info(f);
    let h = map(&mut g, req(f, HOST, va)).unwrap();
    // The guest clears the PTE itself: the references go with it (release build).
    let o = g.update(&[(g.pte_addr(va), 0)]);
    assert_eq!(o.result, Ok(()));
    let now = g.info(f);
    assert_eq!(
        (now.count, now.type_count),
        (before.count, before.type_count)
    );
    g.audit();
    // The grant unmap now finds no matching PTE.
    assert_eq!(
        g.m.grant_unmap(g.c, h, va, 0, 0).unwrap(),
        Err(GNTST_general_error)
    );
    g.audit();
}

#[test]
fn teardown_releases_device_halves_and_host_ptes() {
    let mut g = guest();
    let (f, va, _) = setup(&mut g);
    map(&mut g, req(f, HOST | DEV, va)).unwrap();
    let f2 = g.take();
    map(&mut g, req(f2, DEV | RO, 0)).unwrap();
    g.audit();
    let dom = g.c.dom;
    g.m.destroy_domain(dom).expect("no reference left behind");
    assert_eq!(g.m.frames().get(f).unwrap().count, 0);
    assert_eq!(g.m.frames().get(f2).unwrap().count, 0);
}

#[test]
fn a_batch_flushes_once_before_any_reference_goes() {
    let mut g = guest();
    let frames: Vec<Mfn> = (0..3).map(|_| g.take()).collect();
    let vas: Vec<u64> = (0..3).map(|_| va_of(g.take().0)).collect();
    let hs: Vec<u32> = (0..3)
        .map(|i| map(&mut g, req(frames[i], HOST, vas[i])).unwrap())
        .collect();
    g.m.flusher().take();
    let done: Vec<GrantUnmapped> = (0..3)
        .map(|i| g.m.grant_unmap(g.c, hs[i], vas[i], 0, 0).unwrap().unwrap())
        .collect();
    // Unmapped but not completed: the frames still hold the grant's references.
    assert!(
        g.m.flusher().take().is_empty(),
        "no flush before completion"
    );
    assert!(frames.iter().all(|&f| g.info(f).type_count == 2));
    g.m.grant_unmap_complete(g.c, &done).unwrap();
    let flushes = g.m.flusher().take();
    assert_eq!(flushes.len(), 1, "{flushes:?}");
    assert!(frames.iter().all(|f| flushes[0].stale.contains(f)));
    assert!(frames.iter().all(|&f| g.info(f).type_count == 1));
    g.audit();
}

#[test]
fn pin_after_all_grant_references_go_succeeds() {
    let mut g = guest();
    let f = g.table_frame(); // zeroed, mapped read-only: could become an L1
    let h = map(&mut g, req(f, DEV, 0)).unwrap();
    let op = [MmuextOp::new(MMUEXT_PIN_L1_TABLE, f.0, 0)];
    let o = g.m.mmuext_op(g.c, &op, SELF).unwrap();
    assert_eq!(
        o.result,
        Err(Errno::EINVAL),
        "writable device mapping blocks it"
    );
    unmap(&mut g, h, 0, f.addr(), 0).unwrap();
    let o = g.m.mmuext_op(g.c, &op, SELF).unwrap();
    assert_eq!(o.result, Ok(()), "the same pin without the grant");
    g.audit();
}
