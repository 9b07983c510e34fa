//! x86-64 PTE bits as Xen's 64-bit PV MMU checks them: Xen's software
//! bits, the per-level disallowed-flag masks and the fast-path whitelist.
//!
//! Xen checks flags in a packed 24-bit form: flag bits 0..=11 are PTE bits
//! 0..=11 and flag bits 12..=23 are PTE bits 52..=63 ([`get_pte_flags`]).
//! The masks here are given as **PTE bits** (`u64`).

/// Present.
pub const PAGE_PRESENT: u64 = 1 << 0;
/// Writable.
pub const PAGE_RW: u64 = 1 << 1;
/// User-accessible.
pub const PAGE_USER: u64 = 1 << 2;
/// Write-through.
pub const PAGE_PWT: u64 = 1 << 3;
/// Cache disable.
pub const PAGE_PCD: u64 = 1 << 4;
/// Accessed.
pub const PAGE_ACCESSED: u64 = 1 << 5;
/// Dirty.
pub const PAGE_DIRTY: u64 = 1 << 6;
/// PAT (L1 entries).
pub const PAGE_PAT: u64 = 1 << 7;
/// Page size (L2/L3 entries; never allowed for 64-bit PV).
pub const PAGE_PSE: u64 = 1 << 7;
/// Global.
pub const PAGE_GLOBAL: u64 = 1 << 8;
/// Software-available bits 9..=11.
pub const PAGE_AVAIL: u64 = 0x7 << 9;
/// Software-available bits 52..=62 (Xen's `_PAGE_AVAIL_HIGH`).
pub const PAGE_AVAIL_HIGH: u64 = 0x7FF << 52;
/// Xen's "guest kernel mapping" marker (PTE bit 52), set by Xen on L1
/// kernel mappings (see [`adjust_guest_l1e`]).
pub const PAGE_GUEST_KERNEL: u64 = 1 << 52;
/// Xen's grant-mapping marker (PTE bit 62); disallowed in L1 entries only
/// in debug builds.
pub const PAGE_GNTTAB: u64 = 1 << 62;
/// No-execute.
pub const PAGE_NX: u64 = 1 << 63;

/// Xen's physical address width.
pub const PADDR_BITS: u32 = 52;
/// Frame-address bits of a PTE (12..=51).
pub const PTE_ADDR_MASK: u64 = ((1 << PADDR_BITS) - 1) & !0xFFF;

/// Disallowed bits at all levels (NX-capable CPU): PWT, PCD, PAT/PSE, G.
pub const BASE_DISALLOW_MASK: u64 = 0x198;
/// Disallowed bits at all levels on a CPU without NX (adds NX).
pub const BASE_DISALLOW_MASK_NO_NX: u64 = BASE_DISALLOW_MASK | PAGE_NX;
/// L1 disallowed bits for an ordinary domU, **release** build: PWT, PCD,
/// PAT (G allowed at L1).
pub const L1_DISALLOW_MASK_RELEASE: u64 = 0x98;
/// L1 disallowed bits for an ordinary domU, **debug** build (adds bit 62).
pub const L1_DISALLOW_MASK_DEBUG: u64 = L1_DISALLOW_MASK_RELEASE | PAGE_GNTTAB;
/// L2 disallowed bits: PWT, PCD, PSE, G.
pub const L2_DISALLOW_MASK: u64 = BASE_DISALLOW_MASK;
/// L3 disallowed bits (64-bit guest): PWT, PCD, PSE, G.
pub const L3_DISALLOW_MASK: u64 = BASE_DISALLOW_MASK;
/// L4 disallowed bits: PWT, PCD, bit 7, G.
pub const L4_DISALLOW_MASK: u64 = BASE_DISALLOW_MASK;

/// Bits that may change on an existing entry (same frame) without full
/// revalidation (`FASTPATH_FLAG_WHITELIST`): NX, AVAIL_HIGH, AVAIL, G, D,
/// A, US. Not P, RW, PWT, PCD, PAT/PSE (XSA-148, XSA-182).
pub const FASTPATH_FLAG_WHITELIST: u64 =
    PAGE_NX | PAGE_AVAIL_HIGH | PAGE_AVAIL | PAGE_GLOBAL | PAGE_DIRTY | PAGE_ACCESSED | PAGE_USER;

const _: () = assert!(BASE_DISALLOW_MASK == PAGE_PWT | PAGE_PCD | PAGE_PSE | PAGE_GLOBAL);
const _: () = assert!(L1_DISALLOW_MASK_RELEASE == PAGE_PWT | PAGE_PCD | PAGE_PAT);
const _: () = assert!(FASTPATH_FLAG_WHITELIST == 0xFFF0_0000_0000_0F64);
const _: () = assert!(PTE_ADDR_MASK == 0x000F_FFFF_FFFF_F000);

/// Packs a PTE's flag bits into Xen's 24-bit form.
#[must_use]
pub const fn get_pte_flags(pte: u64) -> u32 {
    (((pte >> 40) & 0xFF_F000) | (pte & 0xFFF)) as u32
}

/// Expands Xen's 24-bit flag form back to PTE bits (bits above 23 of
/// `flags` are ignored).
#[must_use]
pub const fn put_pte_flags(flags: u32) -> u64 {
    let f = flags as u64;
    ((f & 0xFF_F000) << 40) | (f & 0xFFF)
}

/// The machine frame number a PTE names (bits 51:12).
#[must_use]
pub const fn pte_mfn(pte: u64) -> u64 {
    (pte & PTE_ADDR_MASK) >> 12
}

/// Xen's L1 rewrite for a 64-bit PV guest (applied to present entries;
/// the result is what is stored): a kernel mapping (US clear) gets US and
/// [`PAGE_GUEST_KERNEL`]; a user mapping (bit 52 clear after that) gets G
/// and US. Non-present entries are returned unchanged.
#[must_use]
pub const fn adjust_guest_l1e(pte: u64) -> u64 {
    if pte & PAGE_PRESENT == 0 {
        return pte;
    }
    let mut v = pte;
    if v & PAGE_USER == 0 {
        v |= PAGE_USER | PAGE_GUEST_KERNEL;
    }
    if v & PAGE_GUEST_KERNEL == 0 {
        v |= PAGE_GLOBAL | PAGE_USER;
    }
    v
}

/// Xen's L2/L3 rewrite for a 64-bit PV guest: present entries get US.
#[must_use]
pub const fn adjust_guest_l2e_l3e(pte: u64) -> u64 {
    if pte & PAGE_PRESENT == 0 {
        pte
    } else {
        pte | PAGE_USER
    }
}

/// Xen's L4 rewrite for a 64-bit PV guest: present entries get A and US.
#[must_use]
pub const fn adjust_guest_l4e(pte: u64) -> u64 {
    if pte & PAGE_PRESENT == 0 {
        pte
    } else {
        pte | PAGE_ACCESSED | PAGE_USER
    }
}

/// Index into Xen's PAT from a 4 KiB PTE's PAT:PCD:PWT bits.
#[must_use]
pub const fn l1_pat_index(pte: u64) -> u8 {
    (((pte & PAGE_PAT) >> 5) | ((pte & PAGE_PCD) >> 3) | ((pte & PAGE_PWT) >> 3)) as u8
}

/// Xen PAT index 0: write-back.
pub const PAT_IDX_WB: u8 = 0;
/// Xen PAT index 1: write-through.
pub const PAT_IDX_WT: u8 = 1;
/// Xen PAT index 2: uncached-minus.
pub const PAT_IDX_UCM: u8 = 2;
/// Xen PAT index 3: uncached.
pub const PAT_IDX_UC: u8 = 3;
/// Xen PAT index 4: write-combining.
pub const PAT_IDX_WC: u8 = 4;
/// Xen PAT index 5: write-protect.
pub const PAT_IDX_WP: u8 = 5;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_packing() {
        assert_eq!(get_pte_flags(PAGE_NX), 1 << 23);
        assert_eq!(get_pte_flags(PAGE_GUEST_KERNEL), 1 << 12);
        assert_eq!(get_pte_flags(PAGE_GNTTAB), 1 << 22);
        assert_eq!(get_pte_flags(0x1234_5000 | 0x67), 0x67);
        assert_eq!(get_pte_flags(BASE_DISALLOW_MASK_NO_NX), 0x80_0198);
        assert_eq!(get_pte_flags(L1_DISALLOW_MASK_DEBUG), 0x40_0098);
        for pte in [
            0u64,
            u64::MAX,
            0x8000_0000_1234_5067,
            PAGE_AVAIL_HIGH | PAGE_AVAIL,
        ] {
            let flags = pte & !PTE_ADDR_MASK;
            assert_eq!(put_pte_flags(get_pte_flags(pte)), flags);
        }
        assert_eq!(put_pte_flags(u32::MAX), !PTE_ADDR_MASK);
    }

    #[test]
    fn mfn_and_adjust() {
        assert_eq!(pte_mfn(0x8000_0000_1234_5067), 0x12345);
        assert_eq!(pte_mfn(u64::MAX), (1 << 40) - 1);
        // Kernel mapping: US + bit 52, no G.
        assert_eq!(adjust_guest_l1e(0x5003), 0x5007 | PAGE_GUEST_KERNEL);
        // User mapping: US + G.
        assert_eq!(adjust_guest_l1e(0x5007), 0x5107);
        assert_eq!(adjust_guest_l1e(0x5002), 0x5002);
        assert_eq!(adjust_guest_l2e_l3e(0x5003), 0x5007);
        assert_eq!(adjust_guest_l2e_l3e(0x5000), 0x5000);
        assert_eq!(adjust_guest_l4e(0x5003), 0x5027);
        assert_eq!(adjust_guest_l4e(0), 0);
    }

    #[test]
    fn pat_index() {
        assert_eq!(l1_pat_index(0), PAT_IDX_WB);
        assert_eq!(l1_pat_index(PAGE_PWT), PAT_IDX_WT);
        assert_eq!(l1_pat_index(PAGE_PCD), PAT_IDX_UCM);
        assert_eq!(l1_pat_index(PAGE_PCD | PAGE_PWT), PAT_IDX_UC);
        assert_eq!(l1_pat_index(PAGE_PAT), PAT_IDX_WC);
        assert_eq!(l1_pat_index(PAGE_PAT | PAGE_PWT), PAT_IDX_WP);
        assert_eq!(l1_pat_index(u64::MAX), 7);
    }
}
