//! Rights changed while a domain runs (`pvmmu::rights`): consulted when a mapping is
//! made, never afterwards, as Xen's domctls change them.

mod support;

use pvmmu::{DomainConfig, Errno, Mfn};
use pvmmu_abi::domid::DOMID_IO;
use support::*;

/// An I/O-memory frame (beyond RAM).
const MMIO: u64 = 0xfe000;
const PCD: u64 = 0x10;

#[test]
fn iomem_permission_granted_and_revoked_applies_to_new_mappings_only() {
    let mut g = guest_with(DomainConfig::new(1).vcpus(1));
    let slot_frame = g.take();
    let slot = g.pte_addr(va_of(slot_frame.0));
    let io = u32::from(DOMID_IO);
    let map = (MMIO << 12) | P | RW | A;
    // No right: -EPERM, and PCD is a disallowed bit for a domain without I/O rights.
    assert_eq!(g.update_fd(&[(slot, map)], io).result, Err(Errno::EPERM));
    let f = g.take();
    let other = g.pte_addr(va_of(f.0));
    assert_eq!(
        g.update(&[(other, f.addr() | P | A | PCD)]).result,
        Err(Errno::EINVAL)
    );
    // Granted: the mapping is made (cache attributes forced to UC, as Xen does).
    g.m.permit_iomem(1, MMIO..=MMIO + 3).unwrap();
    assert_eq!(g.update_fd(&[(slot, map)], io).result, Ok(()));
    assert_eq!(g.read(slot) >> 12 & 0xff_ffff_ffff, MMIO);
    assert_eq!(g.update(&[(other, f.addr() | P | A | PCD)]).result, Ok(()));
    g.audit();
    // Revoked: the existing mapping stays, a new one is refused.
    g.m.revoke_iomem(1, MMIO..=MMIO + 3).unwrap();
    assert_eq!(
        g.read(slot) >> 12 & 0xff_ffff_ffff,
        MMIO,
        "existing mapping kept"
    );
    let slot2_frame = g.take();
    let slot2 = g.pte_addr(va_of(slot2_frame.0));
    assert_eq!(g.update_fd(&[(slot2, map)], io).result, Err(Errno::EPERM));
    // And without I/O rights PCD is disallowed again for new entries.
    assert_eq!(
        g.update(&[(other, f.addr() | P | A | PCD | RW)]).result,
        Err(Errno::EINVAL)
    );
    // The guest can still remove the old mapping.
    assert_eq!(g.update(&[(slot, 0)]).result, Ok(()));
    g.audit();
}

#[test]
fn partial_revocation_splits_the_range() {
    let mut g = guest();
    g.m.permit_iomem(1, 0x100..=0x1ff).unwrap();
    g.m.revoke_iomem(1, 0x140..=0x17f).unwrap();
    let d = g.m.domain(1).unwrap();
    for (f, ok) in [
        (0x100, true),
        (0x13f, true),
        (0x140, false),
        (0x17f, false),
        (0x180, true),
        (0x1ff, true),
    ] {
        assert_eq!(d.iomem_permitted(f), ok, "frame {f:#x}");
    }
    // An empty range changes nothing; a missing domain is an embedder error.
    #[allow(clippy::reversed_empty_ranges)]
    let empty = 5..=4;
    g.m.revoke_iomem(1, empty).unwrap();
    assert!(g.m.domain(1).unwrap().iomem_permitted(0x100));
    assert!(g.m.permit_iomem(77, 1..=2).is_err());
    assert!(g.m.set_device_model_target(1, Some(77)).is_err());
}

#[test]
fn a_device_model_maps_its_targets_frames_until_the_target_is_withdrawn() {
    let mut g = guest();
    // Domain 2 (frames 0x800..) becomes domain 1's device model... the other way round
    // here: domain 1 may map domain 2's frames as FD once it is 2's device model.
    let theirs = Mfn(DOM2_FIRST + 5);
    let slot_frame = g.take();
    let slot = g.pte_addr(va_of(slot_frame.0));
    let map = theirs.addr() | P | A;
    assert_eq!(g.update_fd(&[(slot, map)], 2).result, Err(Errno::EPERM));
    g.m.set_device_model_target(1, Some(2)).unwrap();
    assert_eq!(g.update_fd(&[(slot, map)], 2).result, Ok(()));
    let count = g.info(theirs).count;
    g.m.set_device_model_target(1, None).unwrap();
    // The mapping keeps its reference; new ones are refused.
    assert_eq!(g.info(theirs).count, count);
    let slot2_frame = g.take();
    let slot2 = g.pte_addr(va_of(slot2_frame.0));
    assert_eq!(g.update_fd(&[(slot2, map)], 2).result, Err(Errno::EPERM));
    g.audit();
    // Privilege works the same way.
    g.m.set_privileged(1, true).unwrap();
    assert_eq!(g.update_fd(&[(slot2, map)], 2).result, Ok(()));
    g.m.set_privileged(1, false).unwrap();
    assert_eq!(g.update(&[(slot2, 0), (slot, 0)]).result, Ok(()));
    assert_eq!(g.info(theirs).count, count - 1);
    g.audit();
}
