//! Descriptor tables: `set_gdt` (hypercall 2) and `update_descriptor` (hypercall 10) with
//! Xen's page typing. A frame in a vCPU's GDT holds a general and a `seg_desc` type
//! reference; taking that type checks every descriptor of the page (Xen's
//! `check_descriptor`, fixing DPLs up in place), so a descriptor page can be neither a
//! page table nor mapped writable while in use, and its descriptors change only through
//! `update_descriptor`, which checks each one.

use pvmmu_abi::Errno;
use vm_memory::{Bytes, GuestAddress, GuestMemory};

use crate::batch::Caller;
use crate::entry::Mfn;
use crate::flush::{FlushReason, FlushScope, TlbFlush, VcpuSet};
use crate::frame::{Owner, PageType};
use crate::machine::{Core, Machine, MachineError};

/// Descriptors per page.
pub const DESCRIPTORS_PER_PAGE: u32 = 512;
/// The first GDT entry the hypervisor reserves (Xen's `FIRST_RESERVED_GDT_ENTRY`): a guest
/// GDT has at most this many entries (14 pages).
pub const FIRST_RESERVED_GDT_ENTRY: u32 = 14 * DESCRIPTORS_PER_PAGE;
/// Most frames a guest GDT occupies.
pub const MAX_GDT_FRAMES: usize = 14;

/// High-word bits of a descriptor.
const SEG_TYPE: u32 = 0xf << 8;
const SEG_S: u32 = 1 << 12;
const SEG_DPL: u32 = 3 << 13;
const SEG_P: u32 = 1 << 15;
/// A 64-bit call gate's type.
const CALL_GATE: u32 = 0xc << 8;
/// The guest kernel's privilege level (a 64-bit PV kernel runs in ring 3).
const GUEST_KERNEL_RPL: u32 = 3;
/// Xen's flat 64-bit kernel code selector.
const FLAT_KERNEL_CS: u32 = 0xe033;

/// Whether a call gate may name code selector `sel`: a guest GDT or LDT selector, or
/// Xen's flat kernel code segment.
const fn gate_selector_ok(sel: u32) -> bool {
    (sel >> 3) < FIRST_RESERVED_GDT_ENTRY || sel == FLAT_KERNEL_CS || sel & 4 != 0
}

/// Xen's `check_descriptor` for a 64-bit PV guest: `Some(descriptor as stored)` (DPL
/// raised to the guest kernel's, call gates retargeted so that using them faults into
/// the hypervisor) or `None` if the descriptor is refused.
///
/// ```
/// use pvmmu::descriptor::check_descriptor;
/// // A present ring-0 64-bit code segment is stored with DPL 3.
/// assert_eq!(check_descriptor(0x00af_9a00_0000_ffff), Some(0x00af_fa00_0000_ffff));
/// // Not present: anything goes.
/// assert_eq!(check_descriptor(0x1234_0000_5678), Some(0x1234_0000_5678));
/// // A present TSS (system type 9) is refused.
/// assert_eq!(check_descriptor(0x0000_8900_0000_0067), None);
/// ```
pub const fn check_descriptor(desc: u64) -> Option<u64> {
    let mut a = desc as u32;
    let mut b = (desc >> 32) as u32;
    if b & SEG_P == 0 {
        return Some(desc);
    }
    let mut dpl = (b >> 13) & 3;
    if dpl < GUEST_KERNEL_RPL {
        dpl = GUEST_KERNEL_RPL;
    }
    b = (b & !SEG_DPL) | (dpl << 13);
    if b & SEG_S == 0 {
        // A system descriptor: type 0 (the upper half of a call gate) is harmless,
        // a call gate is made to fault, everything else is refused.
        if b & SEG_TYPE == 0 {
            return Some(desc);
        }
        if b & SEG_TYPE != CALL_GATE {
            return None;
        }
        let cs = a >> 16;
        if !gate_selector_ok(cs) {
            return None;
        }
        // DPL 0 makes any use #GP with the gate in the error code (for emulation); the
        // original DPL goes into the target selector's RPL.
        b &= !SEG_DPL;
        let cs = (cs & !3) | dpl;
        a = (a & 0xffff) | (cs << 16);
        if b & 0xff != 0 {
            return None;
        }
    }
    Some(((b as u64) << 32) | a as u64)
}

impl<F: TlbFlush> Core<F> {
    /// Validates a frame taking the `seg_desc` type: every descriptor checked and fixed
    /// up in place (Xen's `validate_segdesc_page`).
    pub(crate) fn validate_segdesc<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
        mfn: Mfn,
    ) -> Result<(), Errno> {
        let base = mfn.addr();
        for i in 0..u64::from(DESCRIPTORS_PER_PAGE) {
            let at = GuestAddress(base + i * 8);
            let d: u64 = mem.read_obj(at).map_err(|_| Errno::EINVAL)?;
            let fixed = check_descriptor(d).ok_or(Errno::EINVAL)?;
            if fixed != d {
                mem.write_obj(fixed, at).map_err(|_| Errno::EINVAL)?;
            }
        }
        Ok(())
    }

    /// Drops the references of `caller`'s GDT frames and empties it (Xen's
    /// `pv_destroy_gdt`).
    pub(crate) fn destroy_gdt<M: GuestMemory + ?Sized>(&mut self, mem: &M, caller: Caller) {
        let frames = self
            .vcpu_mut(caller)
            .map(|v| {
                v.gdt_ents = 0;
                std::mem::take(&mut v.gdt_frames)
            })
            .unwrap_or_default();
        for f in frames {
            self.put_page_and_type(mem, f);
        }
    }

    /// Xen's `pv_set_gdt`.
    fn set_gdt<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
        caller: Caller,
        frames: &[u64],
        entries: u32,
    ) -> Result<(), Errno> {
        if entries > FIRST_RESERVED_GDT_ENTRY {
            return Err(Errno::EINVAL);
        }
        // The frames the entries occupy; any further ones are not looked at (Xen copies
        // exactly that many from the guest).
        let nr = entries.div_ceil(DESCRIPTORS_PER_PAGE) as usize;
        let frames = frames.get(..nr).ok_or(Errno::EINVAL)?;
        let d: Owner = caller.dom;
        let mut taken = Vec::with_capacity(frames.len());
        for &f in frames {
            let ok = self.frames.get(Mfn(f)).is_some()
                && self
                    .get_page_and_type(mem, Mfn(f), d, PageType::SegDesc)
                    .is_ok();
            if !ok {
                for t in taken {
                    self.put_page_and_type(mem, t);
                }
                return Err(Errno::EINVAL);
            }
            taken.push(Mfn(f));
        }
        self.destroy_gdt(mem, caller);
        if let Some(v) = self.vcpu_mut(caller) {
            v.gdt_ents = entries;
            v.gdt_frames = taken;
            v.gdt_changed = true;
        }
        self.flush(
            d,
            VcpuSet::one(caller.vcpu),
            FlushScope::AllNonGlobal,
            FlushReason::Gdt,
        );
        Ok(())
    }

    /// Xen's `do_update_descriptor`.
    fn update_descriptor<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
        caller: Caller,
        maddr: u64,
        desc: u64,
    ) -> Result<(), Errno> {
        if !maddr.is_multiple_of(8) {
            return Err(Errno::EINVAL);
        }
        let desc = check_descriptor(desc).ok_or(Errno::EINVAL)?;
        let mfn = Mfn::containing(maddr);
        if !self.frames.get_page(mfn, caller.dom) {
            return Err(Errno::EINVAL);
        }
        let ty = match self.frames.get(mfn).map(|p| p.ty) {
            Some(PageType::SegDesc) => PageType::SegDesc,
            _ => PageType::Writable,
        };
        let r = match self.get_page_type(mem, mfn, ty) {
            Ok(()) => {
                let w = mem.write_obj(desc, GuestAddress(maddr));
                self.put_page_type(mem, mfn);
                w.map_err(|_| Errno::EINVAL)
            }
            Err(_) => Err(Errno::EINVAL),
        };
        self.frames.put_page(mfn);
        r
    }
}

impl<M: GuestMemory, F: TlbFlush> Machine<M, F> {
    /// `set_gdt` with the frames given as a slice: the GDT of `caller` becomes the first
    /// `ceil(entries / 512)` of `frames` (fewer is -EINVAL; more are ignored). Every frame
    /// must be the caller's and take the `seg_desc` type; on success the old GDT's
    /// frames are released.
    pub fn set_gdt(
        &mut self,
        caller: Caller,
        frames: &[u64],
        entries: u32,
    ) -> Result<Result<(), Errno>, MachineError> {
        self.vcpu_check(caller.dom, caller.vcpu)?;
        let Machine { mem, core, .. } = self;
        Ok(core.set_gdt(mem, caller, frames, entries))
    }

    /// The `set_gdt(frame_list, entries)` hypercall (guest virtual pointer); returns
    /// RAX.
    pub fn hypercall_set_gdt(
        &mut self,
        caller: Caller,
        frame_list: u64,
        entries: u64,
    ) -> Result<i64, MachineError> {
        self.vcpu_check(caller.dom, caller.vcpu)?;
        let entries = entries as u32;
        if entries > FIRST_RESERVED_GDT_ENTRY {
            return Ok(Errno::EINVAL.neg());
        }
        let n = entries.div_ceil(DESCRIPTORS_PER_PAGE) as usize;
        let mut bytes = vec![0u8; n * 8];
        if self
            .kernel_view(caller)
            .read(frame_list, &mut bytes)
            .is_err()
        {
            return Ok(Errno::EFAULT.neg());
        }
        let frames: Vec<u64> = bytes
            .chunks_exact(8)
            .map(|c| {
                let mut w = [0u8; 8];
                w.copy_from_slice(c);
                u64::from_le_bytes(w)
            })
            .collect();
        Ok(match self.set_gdt(caller, &frames, entries)? {
            Ok(()) => 0,
            Err(e) => e.neg(),
        })
    }

    /// The `update_descriptor(maddr, desc)` hypercall; returns RAX.
    pub fn hypercall_update_descriptor(
        &mut self,
        caller: Caller,
        maddr: u64,
        desc: u64,
    ) -> Result<i64, MachineError> {
        self.vcpu_check(caller.dom, caller.vcpu)?;
        let Machine { mem, core, .. } = self;
        Ok(match core.update_descriptor(mem, caller, maddr, desc) {
            Ok(()) => 0,
            Err(e) => e.neg(),
        })
    }

    /// The GDT of `caller`: its frames and number of entries.
    pub fn gdt(&self, caller: Caller) -> (Vec<Mfn>, u32) {
        self.core
            .vcpu(caller)
            .map_or((Vec::new(), 0), |v| (v.gdt_frames.clone(), v.gdt_ents))
    }

    /// The GDT of `caller` if it changed since the last time this was asked (the
    /// embedder maps the new frames where the CPU reads its GDT).
    pub fn take_gdt_change(&mut self, caller: Caller) -> Option<(Vec<Mfn>, u32)> {
        let v = self.core.vcpu_mut(caller)?;
        std::mem::take(&mut v.gdt_changed).then(|| (v.gdt_frames.clone(), v.gdt_ents))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptors_as_xen_checks_them() {
        // Flat 64-bit user code and data: unchanged.
        assert_eq!(
            check_descriptor(0x00af_fb00_0000_ffff),
            Some(0x00af_fb00_0000_ffff)
        );
        assert_eq!(
            check_descriptor(0x00cf_f300_0000_ffff),
            Some(0x00cf_f300_0000_ffff)
        );
        // Ring-0 data: DPL raised.
        assert_eq!(
            check_descriptor(0x00cf_9300_0000_ffff),
            Some(0x00cf_f300_0000_ffff)
        );
        // LDT descriptor (type 2), present: refused.
        assert_eq!(check_descriptor(0x0000_8200_0000_ffff), None);
        // Type 0 system descriptor: harmless, unchanged even if "present".
        assert_eq!(
            check_descriptor(0x0000_8000_1234_5678),
            Some(0x0000_8000_1234_5678)
        );
        // A call gate to a guest selector 0x10, DPL 3: stored with DPL 0 and RPL 3.
        let gate = (0xec00u64 << 32) | (0x10 << 16) | 0x1000;
        let stored = check_descriptor(gate).unwrap();
        assert_eq!((stored >> 45) & 3, 0, "DPL 0");
        assert_eq!((stored >> 16) & 0xffff, 0x13, "RPL carries the DPL");
        // A call gate to a hypervisor selector: refused.
        let bad = (0xec00u64 << 32) | (0xe008 << 16);
        assert_eq!(check_descriptor(bad), None);
        // A call gate to Xen's flat kernel CS is allowed.
        let ok = (0xec00u64 << 32) | (0xe033 << 16);
        assert!(check_descriptor(ok).is_some());
        // Reserved bits set in a gate: refused.
        assert_eq!(check_descriptor(gate | (1 << 32)), None);
    }
}
