//! Paging structure geometry: levels, paging modes, indices and canonical addresses.
//!
//! Everything that turns a virtual address into table indices, or back, lives here, so
//! that no other module does raw shift-and-mask arithmetic on addresses. Four-level
//! paging is what Xen's 64-bit PV ABI uses; five-level paging is modelled by the same
//! types so the walker handles it unchanged.

use std::fmt;

/// Number of entries in one page-table page.
pub const ENTRIES_PER_TABLE: usize = 512;
/// Size of a page and of a page-table page, in bytes.
pub const PAGE_SIZE: u64 = 4096;
/// log2 of [`PAGE_SIZE`].
pub const PAGE_SHIFT: u32 = 12;
/// log2 of [`ENTRIES_PER_TABLE`]: the number of VA bits one level translates.
pub const BITS_PER_LEVEL: u32 = 9;

/// A level of the paging hierarchy. `L1` tables hold the 4 KiB leaf entries.
///
/// ```
/// use pvmmu::Level;
/// assert_eq!(Level::L2.entry_span(), 2 << 20);
/// assert_eq!(Level::L4.lower(), Some(Level::L3));
/// assert_eq!(Level::L1.lower(), None);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum Level {
    /// Page table (PT): entries map 4 KiB pages.
    L1 = 1,
    /// Page directory (PD): entries map 2 MiB (superpage) or point at an L1.
    L2 = 2,
    /// Page-directory-pointer table (PDPT): entries map 1 GiB or point at an L2.
    L3 = 3,
    /// PML4: entries point at an L3.
    L4 = 4,
    /// PML5 (five-level paging): entries point at an L4.
    L5 = 5,
}

impl Level {
    /// All levels, lowest first.
    pub const ALL: [Level; 5] = [Level::L1, Level::L2, Level::L3, Level::L4, Level::L5];

    /// The level as a number, 1 for L1.
    pub const fn number(self) -> u32 {
        self as u32
    }

    /// Builds a level from its number (1..=5).
    pub const fn from_number(n: u32) -> Option<Level> {
        match n {
            1 => Some(Level::L1),
            2 => Some(Level::L2),
            3 => Some(Level::L3),
            4 => Some(Level::L4),
            5 => Some(Level::L5),
            _ => None,
        }
    }

    /// Bit position of the lowest VA bit this level's index takes (12 for L1).
    pub const fn shift(self) -> u32 {
        PAGE_SHIFT + BITS_PER_LEVEL * (self as u32 - 1)
    }

    /// Bytes of address space one entry of this level covers.
    pub const fn entry_span(self) -> u64 {
        1 << self.shift()
    }

    /// Bytes of address space one whole table of this level covers.
    pub const fn table_span(self) -> u128 {
        1u128 << (self.shift() + BITS_PER_LEVEL)
    }

    /// Index into a table of this level for a linear address (see [`PagingMode::linear`]).
    pub const fn index(self, linear: u64) -> usize {
        ((linear >> self.shift()) as usize) & (ENTRIES_PER_TABLE - 1)
    }

    /// The next level down, or `None` for L1.
    pub const fn lower(self) -> Option<Level> {
        Level::from_number(self as u32 - 1)
    }

    /// The next level up, or `None` for L5.
    pub const fn higher(self) -> Option<Level> {
        Level::from_number(self as u32 + 1)
    }

    /// Whether an entry with the PSE bit set is a leaf (superpage) at this level:
    /// 2 MiB at L2, 1 GiB at L3. At L4/L5 bit 7 is reserved, at L1 it is PAT.
    pub const fn may_be_superpage(self) -> bool {
        matches!(self, Level::L2 | Level::L3)
    }

    /// The conventional name of a table of this level, as Linux's ptdump prints it.
    pub const fn ptdump_name(self) -> &'static str {
        match self {
            Level::L1 => "pte",
            Level::L2 => "pmd",
            Level::L3 => "pud",
            Level::L4 => "p4d",
            Level::L5 => "pgd",
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "L{}", *self as u8)
    }
}

/// The paging mode: how many levels translate a virtual address.
///
/// Addresses are handled internally as *linear* offsets: the VA with the sign-extension
/// bits above the mode's width stripped, so both canonical halves form one contiguous
/// range `0..2^bits` and the top of the address space needs no 65-bit arithmetic.
///
/// ```
/// use pvmmu::PagingMode;
/// let m = PagingMode::FourLevel;
/// assert!(m.is_canonical(0xffff_8000_0000_0000));
/// assert!(!m.is_canonical(0x0000_8000_0000_0000));
/// assert_eq!(m.va(m.linear(0xffff_ffff_ffff_f000)), 0xffff_ffff_ffff_f000);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum PagingMode {
    /// Four-level paging (48-bit virtual addresses), as used by 64-bit Xen PV guests.
    #[default]
    FourLevel,
    /// Five-level paging (57-bit virtual addresses, CR4.LA57).
    FiveLevel,
}

impl PagingMode {
    /// The root level of this mode.
    pub const fn top(self) -> Level {
        match self {
            PagingMode::FourLevel => Level::L4,
            PagingMode::FiveLevel => Level::L5,
        }
    }

    /// Number of significant virtual-address bits (48 or 57).
    pub const fn va_bits(self) -> u32 {
        self.top().shift() + BITS_PER_LEVEL
    }

    /// Mask of the linear-offset bits.
    const fn linear_mask(self) -> u64 {
        (1u64 << self.va_bits()) - 1
    }

    /// Whether `va` is canonical: every bit above `va_bits - 1` equals bit `va_bits - 1`.
    pub const fn is_canonical(self, va: u64) -> bool {
        let shift = 64 - self.va_bits();
        (((va << shift) as i64) >> shift) as u64 == va
    }

    /// The linear offset of a (canonical) VA: its low `va_bits` bits.
    pub const fn linear(self, va: u64) -> u64 {
        va & self.linear_mask()
    }

    /// The canonical VA of a linear offset (sign-extended from bit `va_bits - 1`).
    pub const fn va(self, linear: u64) -> u64 {
        let shift = 64 - self.va_bits();
        (((linear << shift) as i64) >> shift) as u64
    }

    /// The first VA of the upper canonical half.
    pub const fn upper_half_start(self) -> u64 {
        self.va(1u64 << (self.va_bits() - 1))
    }

    /// The last VA of the lower canonical half.
    pub const fn lower_half_last(self) -> u64 {
        (1u64 << (self.va_bits() - 1)) - 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn level_geometry() {
        assert_eq!(Level::L1.shift(), 12);
        assert_eq!(Level::L2.shift(), 21);
        assert_eq!(Level::L3.shift(), 30);
        assert_eq!(Level::L4.shift(), 39);
        assert_eq!(Level::L5.shift(), 48);
        assert_eq!(Level::L4.table_span(), 1u128 << 48);
        assert_eq!(Level::L5.higher(), None);
        assert_eq!(Level::L1.higher(), Some(Level::L2));
        assert_eq!(Level::L3.index(0x0000_7fc0_0000_0000), 0x100);
        assert_eq!(
            Level::L4.index(0xffff_8000_0000_0000 & 0xffff_ffff_ffff),
            256
        );
        assert!(Level::L2.may_be_superpage() && !Level::L4.may_be_superpage());
        assert_eq!(Level::from_number(0), None);
    }

    #[test]
    fn canonical_edges() {
        let m = PagingMode::FourLevel;
        assert!(m.is_canonical(0));
        assert!(m.is_canonical(0x0000_7fff_ffff_ffff));
        assert!(!m.is_canonical(0x0000_8000_0000_0000));
        assert!(!m.is_canonical(0xffff_7fff_ffff_ffff));
        assert!(m.is_canonical(0xffff_8000_0000_0000));
        assert!(m.is_canonical(u64::MAX));
        assert_eq!(m.upper_half_start(), 0xffff_8000_0000_0000);
        assert_eq!(m.lower_half_last(), 0x0000_7fff_ffff_ffff);
        let f = PagingMode::FiveLevel;
        assert_eq!(f.va_bits(), 57);
        assert!(f.is_canonical(0x00ff_ffff_ffff_ffff));
        assert!(!f.is_canonical(0x0100_0000_0000_0000));
        assert_eq!(f.upper_half_start(), 0xff00_0000_0000_0000);
        assert_eq!(f.va(f.linear(0xff00_0000_0000_1000)), 0xff00_0000_0000_1000);
    }
}
