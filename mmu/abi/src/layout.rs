//! Xen's virtual-address layout as a 64-bit PV guest sees it: the reserved
//! L4 slots 256..=271, the read-only M2P and the guest-address check.
//!
//! Slots 0..=255 and 272..=511 belong to the guest; a 64-bit PV kernel
//! lives above `0xFFFF_8800_0000_0000`.

/// Page size.
pub const PAGE_SIZE: u64 = 4096;
/// Page shift.
pub const PAGE_SHIFT: u32 = 12;
/// Entries per page table.
pub const PAGETABLE_ENTRIES: usize = 512;
/// Shift of the L4 index in a VA (each slot spans 512 GiB).
pub const L4_SLOT_SHIFT: u32 = 39;
/// Bytes mapped by one L4 slot.
pub const L4_SLOT_BYTES: u64 = 1 << L4_SLOT_SHIFT;

/// First Xen-reserved L4 slot.
pub const ROOT_PAGETABLE_FIRST_XEN_SLOT: usize = 256;
/// Last Xen-reserved L4 slot (inclusive).
pub const ROOT_PAGETABLE_LAST_XEN_SLOT: usize = 271;
/// Number of Xen-reserved L4 slots.
pub const ROOT_PAGETABLE_XEN_SLOTS: usize =
    ROOT_PAGETABLE_LAST_XEN_SLOT - ROOT_PAGETABLE_FIRST_XEN_SLOT + 1;

/// Slot 256: read-only, guest-readable M2P.
pub const L4_SLOT_RO_MPT: usize = 256;
/// Slot 257: PCI MMCONFIG area.
pub const L4_SLOT_PCI_MMCFG: usize = 257;
/// Slot 258: Xen's self-linear map of this L4 (not guest accessible).
pub const L4_SLOT_LINEAR_PT: usize = 258;
/// Slot 259: shadow linear map (empty unless shadowed).
pub const L4_SLOT_SHADOW_LINEAR: usize = 259;
/// Slot 260: per-domain area (GDT/LDT shadows, map cache, ...).
pub const L4_SLOT_PERDOMAIN: usize = 260;
/// Slot 261: Xen text/data, RW M2P, vmap, compat M2P, frame table.
pub const L4_SLOT_XEN: usize = 261;
/// First slot of (part of) the direct map.
pub const L4_SLOT_DIRECTMAP_FIRST: usize = 262;
/// Last slot of the Xen-reserved part of the direct map.
pub const L4_SLOT_DIRECTMAP_LAST: usize = 271;

/// Start of Xen's reserved VA range (slot 256).
pub const HYPERVISOR_VIRT_START: u64 = 0xFFFF_8000_0000_0000;
/// End (exclusive) of Xen's reserved VA range (start of slot 272).
pub const HYPERVISOR_VIRT_END: u64 = 0xFFFF_8800_0000_0000;
/// VA of the read-only machine-to-phys table (slot 256).
pub const RO_MPT_VIRT_START: u64 = 0xFFFF_8000_0000_0000;
/// Public-header name for the M2P start ([`RO_MPT_VIRT_START`]).
pub const MACH2PHYS_VIRT_START: u64 = RO_MPT_VIRT_START;
/// Public-header end (exclusive) of the M2P VA range (256 GiB).
pub const MACH2PHYS_VIRT_END: u64 = 0xFFFF_8040_0000_0000;
/// Size of one M2P entry (one per MFN).
pub const M2P_ENTRY_SIZE: u64 = 8;
/// Number of M2P entries the M2P VA range can hold.
pub const MACH2PHYS_NR_ENTRIES: u64 = (MACH2PHYS_VIRT_END - MACH2PHYS_VIRT_START) / M2P_ENTRY_SIZE;
/// M2P entry of a frame with no guest PFN.
pub const INVALID_M2P_ENTRY: u64 = !0;
/// M2P entry of a shared (mem-sharing) frame. M2P contents are
/// guest-controlled: never trust them.
pub const SHARED_M2P_ENTRY: u64 = !0 - 1;

/// End (exclusive) of the lower canonical half: `2^47`.
pub const CANONICAL_LOWER_END: u64 = 1 << 47;
/// Start of the upper canonical half.
pub const CANONICAL_UPPER_START: u64 = 0xFFFF_8000_0000_0000;

const _: () = assert!(HYPERVISOR_VIRT_START == l4_slot_base(ROOT_PAGETABLE_FIRST_XEN_SLOT));
const _: () = assert!(HYPERVISOR_VIRT_END == l4_slot_base(ROOT_PAGETABLE_LAST_XEN_SLOT + 1));
const _: () = assert!(ROOT_PAGETABLE_XEN_SLOTS == 16);

/// `true` if L4 slot `slot` is reserved for Xen (256..=271). Guest writes
/// there fail with `-EINVAL`; validation ignores and overwrites them.
#[must_use]
pub const fn is_xen_l4_slot(slot: usize) -> bool {
    slot >= ROOT_PAGETABLE_FIRST_XEN_SLOT && slot <= ROOT_PAGETABLE_LAST_XEN_SLOT
}

/// Xen's `__addr_ok`: `true` if `va` is a guest address, i.e.
/// `va < 2^47` or `va >= 0xFFFF_8800_0000_0000` (canonical and outside
/// Xen's reserved range). Non-canonical VAs are not guest addresses.
#[must_use]
pub const fn is_guest_va(va: u64) -> bool {
    va < CANONICAL_LOWER_END || va >= HYPERVISOR_VIRT_END
}

/// `true` if `va` is canonical for 48-bit virtual addresses.
#[must_use]
pub const fn is_canonical(va: u64) -> bool {
    va < CANONICAL_LOWER_END || va >= CANONICAL_UPPER_START
}

/// The L4 slot (index 0..512) that maps `va`.
#[must_use]
pub const fn l4_slot_of(va: u64) -> usize {
    ((va >> L4_SLOT_SHIFT) & 0x1FF) as usize
}

/// The canonical base VA of L4 slot `slot` (only the low 9 bits of `slot`
/// are used).
#[must_use]
pub const fn l4_slot_base(slot: usize) -> u64 {
    let s = (slot & 0x1FF) as u64;
    let va = s << L4_SLOT_SHIFT;
    if s >= 256 {
        va | 0xFFFF_0000_0000_0000
    } else {
        va
    }
}

/// The VA of the read-only M2P entry for `mfn`, or `None` if `mfn` is
/// beyond the M2P range.
#[must_use]
pub const fn m2p_entry_va(mfn: u64) -> Option<u64> {
    if mfn < MACH2PHYS_NR_ENTRIES {
        Some(RO_MPT_VIRT_START + mfn * M2P_ENTRY_SIZE)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xen_slots() {
        assert!(!is_xen_l4_slot(0));
        assert!(!is_xen_l4_slot(255));
        assert!(is_xen_l4_slot(256));
        assert!(is_xen_l4_slot(263));
        assert!(is_xen_l4_slot(271));
        assert!(!is_xen_l4_slot(272));
        assert!(!is_xen_l4_slot(511));
        assert!(!is_xen_l4_slot(usize::MAX));
        for slot in 0..PAGETABLE_ENTRIES {
            assert_eq!(
                is_xen_l4_slot(slot),
                l4_slot_base(slot) >= HYPERVISOR_VIRT_START
                    && l4_slot_base(slot) < HYPERVISOR_VIRT_END
            );
            assert_eq!(l4_slot_of(l4_slot_base(slot)), slot);
        }
    }

    #[test]
    fn guest_va_edges() {
        assert!(is_guest_va(0));
        assert!(is_guest_va((1 << 47) - 1));
        assert!(!is_guest_va(1 << 47));
        assert!(!is_guest_va(0x0000_8000_0000_0001));
        assert!(!is_guest_va(0x7FFF_FFFF_FFFF_FFFF));
        assert!(!is_guest_va(0xFFFF_7FFF_FFFF_FFFF));
        assert!(!is_guest_va(HYPERVISOR_VIRT_START));
        assert!(!is_guest_va(HYPERVISOR_VIRT_END - 1));
        assert!(is_guest_va(HYPERVISOR_VIRT_END));
        assert!(is_guest_va(u64::MAX));
        assert!(is_canonical(HYPERVISOR_VIRT_START));
        assert!(!is_canonical(0xFFFF_7FFF_FFFF_FFFF));
        assert!(!is_canonical(1 << 47));
    }

    #[test]
    fn m2p() {
        assert_eq!(INVALID_M2P_ENTRY, u64::MAX);
        assert_eq!(SHARED_M2P_ENTRY, u64::MAX - 1);
        assert_eq!(m2p_entry_va(0), Some(RO_MPT_VIRT_START));
        assert_eq!(m2p_entry_va(0x154), Some(RO_MPT_VIRT_START + 0x154 * 8));
        assert_eq!(m2p_entry_va(MACH2PHYS_NR_ENTRIES), None);
        assert_eq!(m2p_entry_va(u64::MAX), None);
        assert_eq!(
            m2p_entry_va(MACH2PHYS_NR_ENTRIES - 1),
            Some(MACH2PHYS_VIRT_END - 8)
        );
        assert_eq!(l4_slot_of(MACH2PHYS_VIRT_END - 1), L4_SLOT_RO_MPT);
    }
}
