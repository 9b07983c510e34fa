//! The code and stack segments a return to the guest loads (the `iret` hypercall's CS
//! and SS), checked as the CPU checks them.
//!
//! Xen's `do_iret` takes the guest's CS and SS as given (RPL forced to 3) and leaves them
//! to the `iretq` that returns to the guest; when that `iretq` faults, Xen's exception
//! fix-up hands the fault to the guest as if the guest had raised it at its target: a
//! #GP, #NP or #SS with the selector as error code, in a frame holding the target RIP,
//! CS and SS. pvmmu loads CS and SS itself, so it makes the CPU's checks here: the
//! descriptors come from Xen's reserved GDT entries, the guest's GDT, or its LDT (filled
//! on demand, as the CPU's read would fill it).

use pvmmu::{Caller, TlbFlush};
use pvmmu_abi::selector::FIRST_RESERVED_GDT_ENTRY;
use vm_memory::{Bytes, GuestAddress};

use super::Mach;
use crate::hvarea;

/// Descriptor bits (of the 8-byte low word).
const S: u64 = 1 << 44;
const CODE: u64 = 1 << 43;
const CONFORMING_OR_EXPAND_DOWN: u64 = 1 << 42;
const WRITABLE: u64 = 1 << 41;
const PRESENT: u64 = 1 << 47;
const DPL_SHIFT: u32 = 45;

/// #NP.
const NP: u8 = 11;
/// #SS.
const SS_FAULT: u8 = 12;
/// #GP.
const GP: u8 = 13;

/// The descriptor `sel` names for `caller` (low and high words; the high word matters
/// for 16-byte system descriptors only), or `None` beyond the tables. An LDT page the
/// CPU would fill on this read is filled; one that cannot be is `None`.
pub fn descriptor<F: TlbFlush>(m: &mut Mach<F>, caller: Caller, sel: u16) -> Option<(u64, u64)> {
    let index = u32::from(sel >> 3);
    let at = if sel & 4 != 0 {
        let ldt = m.ldt(caller);
        if index >= ldt.ents {
            return None;
        }
        let offset = index * 8;
        let mfn = m.map_ldt_page(caller, offset).ok()?.ok()?;
        mfn.addr() + u64::from(offset % 4096)
    } else if index >= FIRST_RESERVED_GDT_ENTRY as u32 {
        let lo = hvarea::gdt_descriptor(caller.vcpu, sel & !7)?;
        let hi = hvarea::gdt_descriptor(caller.vcpu, (sel & !7) + 8);
        return Some((lo, hi.unwrap_or(0)));
    } else {
        let (frames, ents) = m.gdt(caller);
        if index >= ents {
            // Zero-filled up to Xen's entries: no load accepts a zero descriptor.
            return Some((0, 0));
        }
        let frame = frames.get((index / 512) as usize)?;
        frame.addr() + u64::from(index % 512) * 8
    };
    let lo: u64 = m.memory().read_obj(GuestAddress(at)).ok()?;
    let hi: u64 = m.memory().read_obj(GuestAddress(at + 8)).unwrap_or(0);
    Some((lo, hi))
}

/// The fault a return to CPL3 with code selector `cs` and stack selector `ss` raises,
/// given their descriptors' low words (`None`: beyond the tables): `Some((vector,
/// error code))`, or `None` when both load. The checks are `iretq`'s to an outer
/// privilege level in 64-bit mode, in its order: CS (null, limit, a code segment, DPL
/// against RPL 3, present), then SS (null, limit, a writable data segment with DPL 3,
/// present).
///
/// ```
/// use platform::pv::segments::return_fault;
/// let code64 = 0x00af_fb00_0000_ffff; // DPL 3, 64-bit
/// let data = 0x00cf_f300_0000_ffff;
/// assert_eq!(return_fault(0x33, Some(code64), 0x2b, Some(data)), None);
/// // A data segment as CS: #GP(selector).
/// assert_eq!(return_fault(0x2b, Some(data), 0x2b, Some(data)), Some((13, 0x28)));
/// // Not present: #NP for CS, #SS for SS.
/// assert_eq!(return_fault(0x33, Some(code64 & !(1 << 47)), 0x2b, Some(data)), Some((11, 0x30)));
/// assert_eq!(return_fault(0x33, Some(code64), 0x2b, Some(data & !(1 << 47))), Some((12, 0x28)));
/// ```
pub fn return_fault(
    cs: u16,
    cs_desc: Option<u64>,
    ss: u16,
    ss_desc: Option<u64>,
) -> Option<(u8, u32)> {
    let error = |sel: u16| u32::from(sel & !3);
    let dpl = |d: u64| (d >> DPL_SHIFT) & 3;
    if cs & !3 == 0 {
        return Some((GP, 0));
    }
    let Some(c) = cs_desc else {
        return Some((GP, error(cs)));
    };
    let code = c & S != 0 && c & CODE != 0;
    let conforming = c & CONFORMING_OR_EXPAND_DOWN != 0;
    // Returning to RPL 3: a non-conforming segment needs DPL 3, a conforming one DPL
    // at most 3 (always).
    if !code || (!conforming && dpl(c) != 3) {
        return Some((GP, error(cs)));
    }
    if c & PRESENT == 0 {
        return Some((NP, error(cs)));
    }
    if ss & !3 == 0 {
        return Some((GP, 0));
    }
    let Some(s) = ss_desc else {
        return Some((GP, error(ss)));
    };
    let writable_data = s & S != 0 && s & CODE == 0 && s & WRITABLE != 0;
    if !writable_data || dpl(s) != 3 {
        return Some((GP, error(ss)));
    }
    if s & PRESENT == 0 {
        return Some((SS_FAULT, error(ss)));
    }
    None
}

/// The base a data-segment load of `sel` (RPL 3, at CPL 3) gives, from its descriptor's
/// low word (`None`: beyond the tables): `None` when the load would fault (not a data
/// or readable code segment, DPL below 3 for a data or non-conforming code segment, not
/// present). The null selector loads with base 0.
///
/// ```
/// use platform::pv::segments::data_load_base;
/// assert_eq!(data_load_base(0x2b, Some(0x12cf_f334_5678_ffff)), Some(0x1234_5678));
/// assert_eq!(data_load_base(0, None), Some(0));
/// assert_eq!(data_load_base(0x2b, Some(0)), None);
/// ```
pub fn data_load_base(sel: u16, desc: Option<u64>) -> Option<u64> {
    if sel & !3 == 0 {
        return Some(0);
    }
    let d = desc?;
    let code = d & CODE != 0;
    let readable = !code || d & WRITABLE != 0;
    let conforming_code = code && d & CONFORMING_OR_EXPAND_DOWN != 0;
    let dpl_ok = conforming_code || (d >> DPL_SHIFT) & 3 == 3;
    (d & S != 0 && readable && dpl_ok && d & PRESENT != 0)
        .then_some((d >> 16 & 0xff_ffff) | (d >> 56 & 0xff) << 24)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CODE64: u64 = 0x00af_fb00_0000_ffff;
    const DATA: u64 = 0x00cf_f300_0000_ffff;

    #[test]
    fn checks_in_the_cpus_order() {
        // Null CS, null SS.
        assert_eq!(
            return_fault(3, Some(CODE64), 0x2b, Some(DATA)),
            Some((GP, 0))
        );
        assert_eq!(
            return_fault(0x33, Some(CODE64), 3, Some(DATA)),
            Some((GP, 0))
        );
        // Beyond the tables.
        assert_eq!(return_fault(0x3b, None, 0x2b, Some(DATA)), Some((GP, 0x38)));
        assert_eq!(
            return_fault(0x33, Some(CODE64), 0x43, None),
            Some((GP, 0x40))
        );
        // A DPL 0 code segment (Xen would have raised it to 3; a zero descriptor).
        assert_eq!(
            return_fault(0x33, Some(0x00af_9b00_0000_ffff), 0x2b, Some(DATA)),
            Some((GP, 0x30))
        );
        assert_eq!(
            return_fault(0x3b, Some(0), 0x2b, Some(DATA)),
            Some((GP, 0x38))
        );
        // A read-only data segment as SS, a code segment as SS.
        assert_eq!(
            return_fault(0x33, Some(CODE64), 0x2b, Some(DATA & !WRITABLE)),
            Some((GP, 0x28))
        );
        assert_eq!(
            return_fault(0x33, Some(CODE64), 0x33, Some(CODE64)),
            Some((GP, 0x30))
        );
        // CS is checked before SS.
        assert_eq!(return_fault(0x3b, None, 0x43, None), Some((GP, 0x38)));
        // A conforming code segment of DPL 0 may be returned to.
        let conforming = 0x00af_9f00_0000_ffff;
        assert_eq!(return_fault(0x33, Some(conforming), 0x2b, Some(DATA)), None);
    }
}
