//! Page-table entries: the [`Pte`] value type, its [`PteFlags`], and frame numbers.
//!
//! In pvmmu a *machine frame number* ([`Mfn`]) is the guest-physical frame number of the
//! embedder's `GuestMemory`: a PV guest is not translated, so the numbers it writes into
//! its page tables are exactly these.

use std::fmt;

use bitflags::bitflags;

use crate::paging::{Level, PAGE_SHIFT};

/// A machine frame number: guest-physical address >> 12.
///
/// ```
/// use pvmmu::Mfn;
/// assert_eq!(Mfn(0x1234).addr(), 0x1234000);
/// assert_eq!(Mfn::containing(0x1234abc), Mfn(0x1234));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Mfn(pub u64);

impl Mfn {
    /// The physical address of the first byte of the frame.
    pub const fn addr(self) -> u64 {
        self.0 << PAGE_SHIFT
    }

    /// The frame containing physical address `paddr`.
    pub const fn containing(paddr: u64) -> Mfn {
        Mfn(paddr >> PAGE_SHIFT)
    }
}

impl fmt::Display for Mfn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

bitflags! {
    /// The flag bits of an x86-64 page-table entry (everything but the address).
    ///
    /// Bit 7 is PAT in an L1 entry and PSE (superpage) in an L2/L3 entry; both names are
    /// provided. Bits 52..=62 are available to software: Xen uses bit 52 for "guest
    /// kernel mapping" and leaves the rest to the guest.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
    pub struct PteFlags: u64 {
        /// Present.
        const PRESENT = 1 << 0;
        /// Writable.
        const RW = 1 << 1;
        /// User-accessible.
        const USER = 1 << 2;
        /// Page-level write-through.
        const PWT = 1 << 3;
        /// Page-level cache disable.
        const PCD = 1 << 4;
        /// Accessed (set by the hardware walker).
        const ACCESSED = 1 << 5;
        /// Dirty (set by the hardware walker on a write through a leaf).
        const DIRTY = 1 << 6;
        /// Superpage leaf at L2/L3.
        const PSE = 1 << 7;
        /// PAT index bit at L1 (same bit as `PSE`).
        const PAT = 1 << 7;
        /// Global translation.
        const GLOBAL = 1 << 8;
        /// Software-available bit 9.
        const AVAIL0 = 1 << 9;
        /// Software-available bit 10.
        const AVAIL1 = 1 << 10;
        /// Software-available bit 11.
        const AVAIL2 = 1 << 11;
        /// The software-available low bits 9..=11.
        const AVAIL = 0x7 << 9;
        /// Xen's "guest kernel mapping" marker (software bit 52).
        const GUEST_KERNEL = 1 << 52;
        /// Xen's grant-mapping marker (software bit 62).
        const GNTTAB = 1 << 62;
        /// The software-available high bits 52..=62.
        const AVAIL_HIGH = 0x7ff << 52;
        /// No-execute.
        const NX = 1 << 63;
    }
}

/// Mask of the physical-address bits of an entry (bits 12..=51).
pub const PTE_ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;
/// Mask of the A and D bits, the bits a hardware walker sets by itself.
pub const PTE_AD_MASK: u64 = PteFlags::ACCESSED.bits() | PteFlags::DIRTY.bits();

/// One page-table entry value, at any level.
///
/// ```
/// use pvmmu::{Level, Mfn, Pte, PteFlags};
/// let pte = Pte::new(Mfn(0x42), PteFlags::PRESENT | PteFlags::RW);
/// assert_eq!(pte.raw(), 0x42003);
/// assert!(pte.is_present());
/// assert_eq!(pte.mfn(), Mfn(0x42));
/// assert!(!pte.is_superpage(Level::L2));
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(transparent)]
pub struct Pte(pub u64);

impl Pte {
    /// The all-zero, not-present entry.
    pub const EMPTY: Pte = Pte(0);

    /// An entry pointing at `mfn` with `flags`.
    pub const fn new(mfn: Mfn, flags: PteFlags) -> Pte {
        Pte(((mfn.0 << PAGE_SHIFT) & PTE_ADDR_MASK) | flags.bits())
    }

    /// The raw 64-bit value.
    pub const fn raw(self) -> u64 {
        self.0
    }

    /// The flag bits (everything outside the address field).
    pub const fn flags(self) -> PteFlags {
        PteFlags::from_bits_retain(self.0 & !PTE_ADDR_MASK)
    }

    /// The frame the entry names.
    pub const fn mfn(self) -> Mfn {
        Mfn((self.0 & PTE_ADDR_MASK) >> PAGE_SHIFT)
    }

    /// The physical address field (bits 12..=51).
    pub const fn addr(self) -> u64 {
        self.0 & PTE_ADDR_MASK
    }

    /// Whether the present bit is set.
    pub const fn is_present(self) -> bool {
        self.0 & PteFlags::PRESENT.bits() != 0
    }

    /// Whether all of `flags` are set.
    pub const fn has(self, flags: PteFlags) -> bool {
        self.0 & flags.bits() == flags.bits()
    }

    /// Whether this is a present superpage leaf when found at `level` (PSE at L2/L3).
    pub const fn is_superpage(self, level: Level) -> bool {
        self.is_present() && level.may_be_superpage() && self.has(PteFlags::PSE)
    }

    /// The same entry with a different frame.
    pub const fn with_mfn(self, mfn: Mfn) -> Pte {
        Pte((self.0 & !PTE_ADDR_MASK) | ((mfn.0 << PAGE_SHIFT) & PTE_ADDR_MASK))
    }

    /// The same entry with `flags` set.
    pub const fn set(self, flags: PteFlags) -> Pte {
        Pte(self.0 | flags.bits())
    }

    /// The same entry with `flags` cleared.
    pub const fn clear(self, flags: PteFlags) -> Pte {
        Pte(self.0 & !flags.bits())
    }

    /// Xen's packed 24-bit view of the flags: PTE bits 0..=11 as flag bits 0..=11 and
    /// PTE bits 52..=63 as flag bits 12..=23.
    pub const fn packed_flags(self) -> u32 {
        ((self.0 & 0xfff) | ((self.0 >> 40) & 0xff_f000)) as u32
    }

    /// The PTE bits of a packed 24-bit flag value (the inverse of [`Pte::packed_flags`]).
    pub const fn unpack_flags(packed: u32) -> u64 {
        let p = packed as u64;
        (p & 0xfff) | ((p & 0xff_f000) << 40)
    }
}

impl fmt::Debug for Pte {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pte({:#018x})", self.0)
    }
}

impl fmt::Display for Pte {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#018x}", self.0)
    }
}

impl From<u64> for Pte {
    fn from(raw: u64) -> Pte {
        Pte(raw)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_field_is_bits_12_to_51() {
        let p = Pte(u64::MAX);
        assert_eq!(p.addr(), PTE_ADDR_MASK);
        assert_eq!(p.mfn(), Mfn(0xff_ffff_ffff));
        assert_eq!(p.flags().bits(), !PTE_ADDR_MASK);
        // A frame number too wide for the field is truncated, never spills into flags.
        let q = Pte::new(Mfn(u64::MAX), PteFlags::empty());
        assert_eq!(q.flags(), PteFlags::empty());
        assert_eq!(Pte(0x1003).with_mfn(Mfn(7)).raw(), 0x7003);
    }

    #[test]
    fn superpage_only_at_l2_l3() {
        let p = Pte::new(Mfn(0), PteFlags::PRESENT | PteFlags::PSE);
        assert!(p.is_superpage(Level::L2));
        assert!(p.is_superpage(Level::L3));
        assert!(!p.is_superpage(Level::L1));
        assert!(!p.is_superpage(Level::L4));
        assert!(!p.clear(PteFlags::PRESENT).is_superpage(Level::L2));
    }

    #[test]
    fn packed_flags_round_trip() {
        let raw = 0x8010_0000_0000_0198u64 | (1 << 62);
        let packed = Pte(raw).packed_flags();
        assert_eq!(packed, 0xc0_1198);
        assert_eq!(Pte::unpack_flags(packed), raw & !PTE_ADDR_MASK);
        assert_eq!(PteFlags::NX.bits(), Pte::unpack_flags(1 << 23));
    }
}
