//! The guest's descriptor tables as the CPU sees them: the guest GDT mapped into the
//! hypervisor's GDT area, and the LDT window filled on demand (the library decides what
//! may be mapped, `pvmmu::ldt`; this maps it and loads the LDT register).

use log::debug;
use platform::domain::DomainError;
use platform::hvarea;
use platform::layout::ldt_va;
use platform::pv::segments;
use pvmmu::{LDT_PAGES, LdtFault};
use pvmmu_abi::selector::{FLAT_RING3_CS64, FLAT_RING3_SS64};

use crate::arch::regs::segment_from_descriptor;

use super::{Exit, VmError};

/// Bytes in the LDT window.
const LDT_WINDOW: u64 = LDT_PAGES as u64 * 4096;

/// What became of a page fault in the LDT window.
pub(super) enum LdtOutcome {
    /// The page is mapped now: the instruction is retried.
    Mapped,
    /// The guest gets a #PF at this address (the error code as the CPU reported it).
    PageFault(u64),
    /// The guest gets #GP with this error code (the LDT address would not be
    /// canonical).
    GeneralProtection(u32),
}

impl Exit<'_> {
    /// Carries the library's descriptor-table changes into the CPU's view: a new GDT is
    /// mapped into the GDT area; a changed LDT (or LDT window) is mapped into the
    /// window and the LDT register reloaded. Translations of frames no longer mapped
    /// there are invalidated.
    pub(super) fn sync_descriptor_tables(&mut self) -> Result<(), VmError> {
        let caller = self.cpu.vcpu.caller;
        if let Some((frames, _)) = self.m.take_gdt_change(caller) {
            let stale = hvarea::map_guest_gdt(self.m.memory(), &self.c.hv, caller.vcpu, &frames)
                .map_err(DomainError::from)?;
            self.m.flusher().invalidate(&stale);
        }
        if let Some(ldt) = self.m.take_ldt_change(caller) {
            let mem = self.m.memory();
            let stale = hvarea::map_ldt_window(mem, &self.c.hv, caller.vcpu, &ldt.mapped)
                .map_err(DomainError::from)?;
            let (lo, hi) =
                hvarea::set_ldt_descriptor(mem, &self.c.hv, caller.vcpu, ldt.limit_bytes())
                    .map_err(DomainError::from)?;
            self.m.flusher().invalidate(&stale);
            if (lo, hi) != self.cpu.ldt_loaded {
                self.cpu.vcpu.load_ldt(lo, hi)?;
                self.cpu.ldt_loaded = (lo, hi);
            }
        }
        Ok(())
    }

    /// Loads code selector `cs` and stack selector `ss` (already checked by the `iret`
    /// that chose them, `platform::pv::segments`) into the vCPU, when they differ from
    /// Xen's flat 64-bit pair or the vCPU may hold others; a no-op (no ioctl) in the
    /// common case.
    pub(super) fn load_code_and_stack(&mut self, cs: u16, ss: u16) -> Result<(), VmError> {
        let flat = (cs, ss) == (FLAT_RING3_CS64, FLAT_RING3_SS64);
        if flat && !self.cpu.nonflat_segments {
            return Ok(());
        }
        let caller = self.cpu.vcpu.caller;
        let mut segment = |sel: u16| {
            let (lo, hi) = segments::descriptor(self.m, caller, sel).unwrap_or((0, 0));
            segment_from_descriptor(sel, lo, hi)
        };
        let (cs_seg, ss_seg) = (segment(cs), segment(ss));
        debug!("loading CS {cs:#x} and SS {ss:#x}");
        self.cpu.vcpu.load_code_and_stack(cs_seg, ss_seg)?;
        self.cpu.nonflat_segments = !flat;
        // Reading an LDT descriptor may have filled a window page.
        self.sync_descriptor_tables()
    }

    /// A page fault at `cr2` in the LDT window (the CPU reading a descriptor of the
    /// guest's LDT for the first time): the library fills the page if the guest's LDT
    /// allows it, else the fault goes to the guest as Xen passes it on. `None` when
    /// `cr2` is not in the window.
    pub(super) fn ldt_fault(&mut self, cr2: u64) -> Result<Option<LdtOutcome>, VmError> {
        let caller = self.cpu.vcpu.caller;
        let window = ldt_va(caller.vcpu);
        if !(window..window + LDT_WINDOW).contains(&cr2) {
            return Ok(None);
        }
        let offset = (cr2 - window) as u32;
        let outcome = match self.m.map_ldt_page(caller, offset)? {
            Ok(mfn) => {
                debug!("LDT page {} filled with frame {mfn}", offset / 4096);
                self.sync_descriptor_tables()?;
                LdtOutcome::Mapped
            }
            Err(why) => {
                debug!("LDT page {} not filled: {why}", offset / 4096);
                let va = match why {
                    LdtFault::Limit { .. } => self.m.ldt(caller).base + u64::from(offset),
                    _ => why.fault_va().unwrap_or_default(),
                };
                if pvmmu_abi::layout::is_canonical(va) {
                    LdtOutcome::PageFault(va)
                } else {
                    // Xen's error code: the offset with the LDT bit, EXT and IDT clear.
                    LdtOutcome::GeneralProtection((offset & !3) | 4)
                }
            }
        };
        Ok(Some(outcome))
    }
}
