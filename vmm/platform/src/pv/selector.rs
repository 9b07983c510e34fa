//! Selector loads checked against the descriptor tables a PV guest has, as hardware
//! checks them under Xen.
//!
//! Under Xen the hardware walks the guest's descriptor tables itself: the GDT register
//! covers the full 64 KiB (the guest's frames, zero-filled up to Xen's reserved entries at
//! 7168 and above) and the LDT register covers `SET_LDT`'s entries (none: a null LDT).
//! A selector load (`mov %sreg`, `pop %sreg`, `lfs`/`lgs`/`lss`, a far `call`/`jmp`)
//! whose descriptor lies beyond those entries faults with #GP and the selector, RPL
//! cleared, as its error code; Xen passes that #GP on unchanged (64-bit PV guests get no
//! gate emulation). A host that reports such a fault with another error code is corrected
//! with [`beyond_table_error`]: this host's KVM-PVM, on an AMD CPU, reads a `rex64
//! lcall`'s far pointer the Intel way (m16:64 where AMD reads m16:32), so it finds
//! another selector there (often the null one: #GP(0)).

use pvmmu_abi::selector::FIRST_RESERVED_GDT_ENTRY;

/// The selector's table-indicator bit (set: LDT).
const TI: u16 = 1 << 2;

/// The #GP error code hardware reports for loading `sel` when its descriptor lies beyond
/// the guest's tables: `gdt_ents` GDT entries (past them, up to Xen's reserved entries,
/// the descriptors are zero, which no load accepts) and `ldt_ents` LDT entries (the LDT
/// limit). `None` when the descriptor is one of the guest's (or Xen's): then the
/// descriptor itself decides, and the caller keeps what the host reported. A null
/// selector gives `None` too (loading it is not a limit fault).
///
/// ```
/// use platform::pv::selector::beyond_table_error;
/// // No LDT: any LDT selector faults with the selector, RPL cleared.
/// assert_eq!(beyond_table_error(0x1007, 16, 0), Some(0x1004));
/// assert_eq!(beyond_table_error(0x1007, 16, 0x201), None);
/// // GDT entry 20 of a 16-entry GDT is zero: #GP(selector).
/// assert_eq!(beyond_table_error(20 << 3 | 3, 16, 0), Some(20 << 3));
/// // Xen's reserved selectors are always there.
/// assert_eq!(beyond_table_error(0xe033, 16, 0), None);
/// ```
pub fn beyond_table_error(sel: u16, gdt_ents: u32, ldt_ents: u32) -> Option<u32> {
    let index = u32::from(sel >> 3);
    let beyond = if sel & TI != 0 {
        index >= ldt_ents
    } else {
        index != 0 && index >= gdt_ents && index < FIRST_RESERVED_GDT_ENTRY as u32
    };
    beyond.then_some(u32::from(sel & !3))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldt_limit_is_the_entry_count() {
        assert_eq!(beyond_table_error(0x0004, 16, 0), Some(0x0004));
        assert_eq!(beyond_table_error(0x0004, 16, 1), None);
        assert_eq!(beyond_table_error(0x000f, 16, 1), Some(0x000c));
        assert_eq!(beyond_table_error(0xfffc, 16, 8192), None);
    }

    #[test]
    fn gdt_covers_guest_entries_and_xens() {
        assert_eq!(beyond_table_error(0, 0, 0), None);
        assert_eq!(beyond_table_error(3, 0, 0), None);
        assert_eq!(beyond_table_error(15 << 3, 16, 0), None);
        assert_eq!(beyond_table_error(16 << 3, 16, 0), Some(16 << 3));
        assert_eq!(beyond_table_error((7167 << 3) | 3, 16, 0), Some(7167 << 3));
        assert_eq!(beyond_table_error(7168 << 3, 16, 0), None);
    }
}
