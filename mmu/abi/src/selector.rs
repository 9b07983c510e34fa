//! Flat segment selectors, Xen's reserved GDT area and `set_segment_base`.
//!
//! The 64-bit PV kernel runs in ring 3, so the kernel selectors equal the
//! ring-3 ones. All flat selectors live in Xen's reserved GDT page
//! (entries `>= 7168`, page 14 and up).

/// First GDT page reserved by Xen.
pub const FIRST_RESERVED_GDT_PAGE: usize = 14;
/// Size of one GDT descriptor.
pub const GDT_ENTRY_SIZE: usize = 8;
/// First GDT entry reserved by Xen (`14 * 4096 / 8`).
pub const FIRST_RESERVED_GDT_ENTRY: usize = FIRST_RESERVED_GDT_PAGE * 4096 / GDT_ENTRY_SIZE;
/// Byte offset of the first reserved GDT entry.
pub const FIRST_RESERVED_GDT_BYTE: usize = FIRST_RESERVED_GDT_PAGE * 4096;

const _: () = assert!(FIRST_RESERVED_GDT_ENTRY == 7168);
const _: () = assert!(FIRST_RESERVED_GDT_BYTE == 57344);

/// Ring-3 32-bit code selector (GDT index 7172).
pub const FLAT_RING3_CS32: u16 = 0xe023;
/// Ring-3 64-bit code selector (GDT index 7174, DPL 3).
pub const FLAT_RING3_CS64: u16 = 0xe033;
/// Ring-3 32-bit data selector (GDT index 7173).
pub const FLAT_RING3_DS32: u16 = 0xe02b;
/// Ring-3 64-bit data selector: the null selector.
pub const FLAT_RING3_DS64: u16 = 0x0000;
/// Ring-3 32-bit stack selector.
pub const FLAT_RING3_SS32: u16 = 0xe02b;
/// Ring-3 64-bit stack selector (GDT index 7173).
pub const FLAT_RING3_SS64: u16 = 0xe02b;

/// Kernel 64-bit code selector (= [`FLAT_RING3_CS64`]).
pub const FLAT_KERNEL_CS64: u16 = FLAT_RING3_CS64;
/// Kernel 64-bit data selector (= [`FLAT_RING3_DS64`], null).
pub const FLAT_KERNEL_DS64: u16 = FLAT_RING3_DS64;
/// Kernel 64-bit stack selector (= [`FLAT_RING3_SS64`]).
pub const FLAT_KERNEL_SS64: u16 = FLAT_RING3_SS64;
/// Kernel 32-bit code selector (= [`FLAT_RING3_CS32`]).
pub const FLAT_KERNEL_CS32: u16 = FLAT_RING3_CS32;
/// Kernel 32-bit data selector (= [`FLAT_RING3_DS32`]).
pub const FLAT_KERNEL_DS32: u16 = FLAT_RING3_DS32;
/// Kernel 32-bit stack selector (= [`FLAT_RING3_SS32`]).
pub const FLAT_KERNEL_SS32: u16 = FLAT_RING3_SS32;
/// Kernel code selector (64-bit).
pub const FLAT_KERNEL_CS: u16 = FLAT_KERNEL_CS64;
/// Kernel data selector (64-bit).
pub const FLAT_KERNEL_DS: u16 = FLAT_KERNEL_DS64;
/// Kernel stack selector (64-bit).
pub const FLAT_KERNEL_SS: u16 = FLAT_KERNEL_SS64;
/// User 64-bit code selector.
pub const FLAT_USER_CS64: u16 = FLAT_RING3_CS64;
/// User 64-bit data selector.
pub const FLAT_USER_DS64: u16 = FLAT_RING3_DS64;
/// User 64-bit stack selector.
pub const FLAT_USER_SS64: u16 = FLAT_RING3_SS64;
/// User 32-bit code selector.
pub const FLAT_USER_CS32: u16 = FLAT_RING3_CS32;
/// User 32-bit data selector.
pub const FLAT_USER_DS32: u16 = FLAT_RING3_DS32;
/// User 32-bit stack selector.
pub const FLAT_USER_SS32: u16 = FLAT_RING3_SS32;
/// User code selector (64-bit).
pub const FLAT_USER_CS: u16 = FLAT_USER_CS64;
/// User data selector (64-bit).
pub const FLAT_USER_DS: u16 = FLAT_USER_DS64;
/// User stack selector (64-bit).
pub const FLAT_USER_SS: u16 = FLAT_USER_SS64;

/// The descriptor-table index of a selector (`sel >> 3`).
#[must_use]
pub const fn selector_index(sel: u16) -> u16 {
    sel >> 3
}

/// The RPL of a selector (`sel & 3`).
#[must_use]
pub const fn selector_rpl(sel: u16) -> u16 {
    sel & 3
}

/// `true` if the selector's TI bit selects the LDT.
#[must_use]
pub const fn selector_is_ldt(sel: u16) -> bool {
    sel & 4 != 0
}

/// `true` if a GDT selector names one of Xen's reserved entries.
#[must_use]
pub const fn selector_is_xen_reserved(sel: u16) -> bool {
    !selector_is_ldt(sel) && selector_index(sel) as usize >= FIRST_RESERVED_GDT_ENTRY
}

/// `set_segment_base`: FS base (must be canonical).
pub const SEGBASE_FS: u32 = 0;
/// `set_segment_base`: user GS base (must be canonical).
pub const SEGBASE_GS_USER: u32 = 1;
/// `set_segment_base`: kernel GS base (must be canonical).
pub const SEGBASE_GS_KERNEL: u32 = 2;
/// `set_segment_base`: load the user `%gs` selector from `base[15:0]`.
pub const SEGBASE_GS_USER_SEL: u32 = 3;

abi_enum! {
    /// The `which` argument of `set_segment_base` (others → `-EINVAL`).
    pub enum SegBase: u32, raw u32 {
        /// [`SEGBASE_FS`]
        Fs = SEGBASE_FS => "SEGBASE_FS",
        /// [`SEGBASE_GS_USER`]
        GsUser = SEGBASE_GS_USER => "SEGBASE_GS_USER",
        /// [`SEGBASE_GS_KERNEL`]
        GsKernel = SEGBASE_GS_KERNEL => "SEGBASE_GS_KERNEL",
        /// [`SEGBASE_GS_USER_SEL`]
        GsUserSel = SEGBASE_GS_USER_SEL => "SEGBASE_GS_USER_SEL",
    }
}

raw_error! {
    /// An unknown `set_segment_base` selector (`-EINVAL`).
    UnknownSegBase(u32), "unknown set_segment_base selector {}"
}

abi_try_from!(SegBase, u32, UnknownSegBase);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors() {
        assert_eq!(selector_index(FLAT_RING3_CS64), 7174);
        assert_eq!(selector_index(FLAT_RING3_SS64), 7173);
        assert_eq!(selector_index(FLAT_RING3_CS32), 7172);
        assert_eq!(selector_rpl(FLAT_KERNEL_CS), 3);
        assert!(selector_is_xen_reserved(FLAT_KERNEL_CS64));
        assert!(selector_is_xen_reserved(FLAT_KERNEL_SS64));
        assert!(!selector_is_xen_reserved(FLAT_KERNEL_DS64));
        assert!(!selector_is_xen_reserved(0xe034));
        assert_eq!(FLAT_KERNEL_DS64, 0);
    }

    #[test]
    fn segbase() {
        for &s in SegBase::ALL {
            assert_eq!(SegBase::try_from(s.raw()), Ok(s));
        }
        for bad in [4u32, 5, u32::MAX] {
            assert_eq!(SegBase::try_from(bad), Err(UnknownSegBase(bad)));
        }
    }
}
