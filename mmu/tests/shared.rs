//! Frames the hypervisor shares with a guest (Xen's `share_xen_page_with_guest`, used for
//! grant-table frames): read-write ones can be mapped writable but never become page
//! tables or descriptor pages; read-only ones can only be mapped read-only. Each holds
//! a permanent type reference the audit accounts for; teardown frees them.

mod support;

use pvmmu::{Errno, MachineError, Mfn, PageType};
use pvmmu_abi::mmu::{MMUEXT_PIN_L1_TABLE, MMUEXT_PIN_L2_TABLE};
use support::*;

/// Free frames (above both domains) to share.
const RW_FRAME: Mfn = Mfn(0xa00);
const RO_FRAME: Mfn = Mfn(0xa01);

fn shared_guest() -> Guest {
    let mut g = guest();
    let d = g.c.dom;
    g.m.share_frames(d, [RW_FRAME], true).unwrap();
    g.m.share_frames(d, [RO_FRAME], false).unwrap();
    g.audit();
    g
}

/// The L1 slot of a data frame's KBASE mapping, to map other frames through.
fn slot(g: &Guest) -> u64 {
    g.pte_addr(va_of(0x300))
}

#[test]
fn shared_frames_hold_a_permanent_type_reference() {
    let g = shared_guest();
    let rw = g.info(RW_FRAME);
    assert_eq!(
        (rw.owner, rw.count, rw.ty, rw.type_count, rw.shared),
        (g.c.dom, 1, PageType::Writable, 1, true)
    );
    let ro = g.info(RO_FRAME);
    assert_eq!(
        (ro.count, ro.ty, ro.type_count, ro.shared),
        (1, PageType::None, 1, true)
    );
    teardown(g);
}

#[test]
fn a_read_write_shared_frame_maps_writable_but_is_never_a_table() {
    let mut g = shared_guest();
    let s = slot(&g);
    assert_eq!(g.update(&[(s, (RW_FRAME.0 << 12) | P | RW)]).result, Ok(()));
    assert_eq!(g.info(RW_FRAME).type_count, 2);
    g.audit();
    let frames = g.counts();
    assert_refused(g.ext(MMUEXT_PIN_L1_TABLE, RW_FRAME.0, 0), Errno::EINVAL, 0);
    assert_refused(g.ext(MMUEXT_PIN_L2_TABLE, RW_FRAME.0, 0), Errno::EINVAL, 0);
    assert_eq!(
        g.m.set_gdt(g.c, &[RW_FRAME.0], 512).unwrap(),
        Err(Errno::EINVAL)
    );
    assert!(g.counts() == frames, "refusals changed nothing");
    // Unmapped, it keeps its permanent reference (and still cannot be a table).
    assert_eq!(g.update(&[(s, 0)]).result, Ok(()));
    assert_eq!(g.info(RW_FRAME).type_count, 1);
    assert_refused(g.ext(MMUEXT_PIN_L1_TABLE, RW_FRAME.0, 0), Errno::EINVAL, 0);
    g.audit();
    teardown(g);
}

#[test]
fn a_read_only_shared_frame_maps_read_only_only() {
    let mut g = shared_guest();
    let s = slot(&g);
    let frames = g.counts();
    assert_refused(
        g.update(&[(s, (RO_FRAME.0 << 12) | P | RW)]),
        Errno::EBUSY,
        0,
    );
    assert_refused(g.ext(MMUEXT_PIN_L1_TABLE, RO_FRAME.0, 0), Errno::EINVAL, 0);
    assert!(g.counts() == frames, "refusals changed nothing");
    // Minus the RW bit: accepted.
    assert_eq!(g.update(&[(s, (RO_FRAME.0 << 12) | P)]).result, Ok(()));
    assert_eq!(g.info(RO_FRAME).count, 2);
    assert_eq!(g.info(RO_FRAME).type_count, 1);
    g.audit();
    teardown(g);
}

#[test]
fn only_free_frames_can_be_shared() {
    let mut g = guest();
    let d = g.c.dom;
    let owned = Mfn(DOM_FIRST + 0x300);
    assert!(matches!(
        g.m.share_frames(d, [owned], true),
        Err(MachineError::FrameNotFree(m)) if m == owned
    ));
    assert!(matches!(
        g.m.share_frames(99, [RW_FRAME], true),
        Err(MachineError::NoDomain(99))
    ));
    assert!(!g.info(RW_FRAME).shared);
    teardown(g);
}

#[test]
fn unsharing_frees_a_frame_only_when_nothing_else_holds_it() {
    let mut g = shared_guest();
    let d = g.c.dom;
    let s = slot(&g);
    assert_eq!(g.update(&[(s, (RW_FRAME.0 << 12) | P | RW)]).result, Ok(()));
    let before = g.counts();
    assert!(!g.m.unshare_frame(d, RW_FRAME).unwrap(), "mapped: busy");
    assert!(g.counts() == before, "nothing changed");
    assert_eq!(g.update(&[(s, 0)]).result, Ok(()));
    assert!(g.m.unshare_frame(d, RW_FRAME).unwrap());
    let p = g.info(RW_FRAME);
    assert_eq!((p.count, p.type_count, p.shared), (0, 0, false));
    assert_eq!(p.owner, pvmmu_abi::DOMID_INVALID);
    // Not shared (any more, or ever): an embedder error.
    assert!(matches!(
        g.m.unshare_frame(d, RW_FRAME),
        Err(MachineError::NotShared(_))
    ));
    assert!(matches!(
        g.m.unshare_frame(d, Mfn(DOM_FIRST + 0x300)),
        Err(MachineError::NotShared(_))
    ));
    g.audit();
    teardown(g);
}
