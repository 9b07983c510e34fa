//! `Machine::audit` is the oracle the fuzzers, the property tests and every VMM run lean
//! on. Each invariant it claims is broken here on purpose, behind the rules' back (a
//! raw store into guest memory, or the frame table's test hook), and the audit must
//! name that breakage; undone, the audit is clean again.

mod support;

use pvmmu::{Mfn, PageType};
use pvmmu_abi::mmu::{MMUEXT_PIN_L2_TABLE, MMUEXT_UNPIN_TABLE};
use support::*;

/// The problems the audit reports (none: an empty list).
fn problems(g: &Guest) -> Vec<String> {
    match g.m.audit() {
        Ok(()) => Vec::new(),
        Err(e) => e.0,
    }
}

/// Asserts that one reported problem contains `want`.
fn reports(g: &Guest, want: &str) {
    let p = problems(g);
    assert!(
        p.iter().any(|s| s.contains(want)),
        "audit should report {want:?}; it reported {p:?}"
    );
}

/// The first table of the initial tree of type `ty`.
fn table_of(g: &Guest, ty: PageType) -> Mfn {
    *g.tables
        .iter()
        .find(|&&t| g.info(t).ty == ty)
        .expect("a table of that type")
}

#[test]
fn a_wrong_general_count_is_reported() {
    let mut g = guest();
    let f = g.take();
    let p = g.info(f);
    g.m.frames_mut_for_test()
        .edit_for_test(f, |i| i.count = p.count + 1);
    reports(
        &g,
        &format!("{f}: general count {} expected {}", p.count + 1, p.count),
    );
    g.m.frames_mut_for_test().edit_for_test(f, |i| *i = p);
    g.audit();
    teardown(g);
}

#[test]
fn a_wrong_type_count_is_reported() {
    let mut g = guest();
    let l1 = table_of(&g, PageType::L1);
    let p = g.info(l1);
    g.m.frames_mut_for_test()
        .edit_for_test(l1, |i| i.type_count = p.type_count + 1);
    reports(
        &g,
        &format!(
            "{l1}: l1 type count {} expected {}",
            p.type_count + 1,
            p.type_count
        ),
    );
    g.m.frames_mut_for_test().edit_for_test(l1, |i| *i = p);
    g.audit();
    teardown(g);
}

#[test]
fn a_page_table_mapped_writable_is_reported() {
    let g = guest();
    let l1 = table_of(&g, PageType::L1);
    // The kernel's own mapping of the L1 is read-only; make it writable by a raw store.
    let at = g.pte_addr(va_of(l1.0));
    let was = g.read(at);
    assert_eq!(was & RW, 0);
    g.write_raw(at, was | RW);
    reports(&g, &format!("{l1}: mapped writable 1 times but typed l1"));
    g.write_raw(at, was);
    g.audit();
    teardown(g);
}

#[test]
fn a_broken_reserved_l4_slot_is_reported() {
    let g = guest();
    // Slot 260 holds the template's per-domain area; slot 256 may be cleared (strict
    // M2P), so it is 260 that is broken.
    let at = Guest::slot(g.l4, 260);
    let was = g.read(at);
    assert_ne!(was, 0);
    g.write_raw(at, 0);
    reports(&g, &format!("{}: reserved L4 slot 260 holds 0x0", g.l4));
    g.write_raw(at, was);
    g.audit();
    teardown(g);
}

#[test]
fn a_stale_linear_counter_is_reported() {
    let mut g = guest();
    let l2 = table_of(&g, PageType::L2);
    let p = g.info(l2);
    assert_eq!(p.linear, 0);
    g.m.frames_mut_for_test()
        .edit_for_test(l2, |i| i.linear = 1);
    reports(&g, &format!("{l2}: linear count 1 expected 0"));
    g.m.frames_mut_for_test()
        .edit_for_test(l2, |i| i.linear = -1);
    reports(&g, &format!("{l2}: linear count -1 expected 0"));
    g.m.frames_mut_for_test().edit_for_test(l2, |i| *i = p);
    g.audit();
    teardown(g);
}

#[test]
fn a_same_level_entry_written_behind_the_counters_is_reported() {
    let mut g = guest();
    let l2 = table_of(&g, PageType::L2);
    // A second, pinned L2 to point at.
    let other = g.table_frame();
    assert_eq!(g.ext(MMUEXT_PIN_L2_TABLE, other.0, 0).result, Ok(()));
    g.audit();
    let slot = (0..512)
        .find(|&i| g.read(Guest::slot(l2, i)) == 0)
        .expect("a free L2 slot");
    let at = Guest::slot(l2, slot);
    // An L2 -> L2 entry counts +1 on the holder and -1 on the target (XSA-240's
    // counters); written raw, neither counter moved.
    g.write_raw(at, (other.0 << 12) | P | A);
    reports(&g, &format!("{l2}: linear count 0 expected 1"));
    reports(&g, &format!("{other}: linear count 0 expected -1"));
    // Pointing at itself is self-linear: no reference, no counter, nothing to report.
    g.write_raw(at, (l2.0 << 12) | P | A);
    assert_eq!(problems(&g), Vec::<String>::new());
    g.write_raw(at, 0);
    g.audit();
    assert_eq!(g.ext(MMUEXT_UNPIN_TABLE, other.0, 0).result, Ok(()));
    teardown(g);
}

#[test]
fn a_live_table_that_is_not_validated_is_reported() {
    let mut g = guest();
    let l1 = table_of(&g, PageType::L1);
    let p = g.info(l1);
    g.m.frames_mut_for_test()
        .edit_for_test(l1, |i| i.validated = false);
    reports(&g, &format!("{l1}: live l1 table not validated"));
    g.m.frames_mut_for_test().edit_for_test(l1, |i| *i = p);
    g.audit();
    teardown(g);
}

#[test]
fn a_validated_table_with_no_type_reference_is_reported() {
    let mut g = guest();
    let f = g.table_frame();
    let p = g.info(f);
    g.m.frames_mut_for_test().edit_for_test(f, |i| {
        i.ty = PageType::L1;
        i.validated = true;
        i.type_count = 0;
    });
    reports(&g, &format!("{f}: validated l1 table with type count 0"));
    g.m.frames_mut_for_test().edit_for_test(f, |i| *i = p);
    g.audit();
    teardown(g);
}

#[test]
fn an_l1_entry_mapping_a_free_frame_is_reported() {
    let g = guest();
    // Frames past domain 2's are owned by nobody.
    let free = Mfn(DOM2_END + 5);
    assert_eq!(g.info(free).count, 0);
    let spare = *g.data.first().expect("a data frame");
    let at = g.pte_addr(va_of(spare.0));
    let was = g.read(at);
    g.write_raw(at, (free.0 << 12) | P | A);
    let l1 = Mfn(at >> 12);
    reports(&g, &format!("maps free frame {free}"));
    reports(&g, &format!("{l1}["));
    g.write_raw(at, was);
    g.audit();
    teardown(g);
}

#[test]
fn a_table_entry_pointing_at_the_wrong_type_is_reported() {
    let g = guest();
    let l2 = table_of(&g, PageType::L2);
    let slot = (0..512)
        .find(|&i| g.read(Guest::slot(l2, i)) == 0)
        .expect("a free L2 slot");
    // An L2 entry (no PSE) must point at an L1; point it at a data frame.
    let data = *g.data.first().expect("a data frame");
    let at = Guest::slot(l2, slot);
    g.write_raw(at, (data.0 << 12) | P | A);
    reports(
        &g,
        &format!("{l2}[{slot}] (l2) points at {data} of type writable"),
    );
    g.write_raw(at, 0);
    g.audit();
    teardown(g);
}
