//! Translating one virtual address, on top of the batched walker.

use std::ops::ControlFlow;

use vm_memory::GuestMemory;

use crate::entry::{Mfn, PTE_ADDR_MASK, Pte, PteFlags};
use crate::paging::Level;
use crate::range::VaRange;
use crate::walk::{Visit, WalkError, Walker};

/// Access rights that result from a whole walk: RW and USER only if every level allows
/// them, NX if any level sets it.
pub fn effective_flags(path: &[Pte], leaf: Pte) -> PteFlags {
    let mut flags =
        leaf.flags() & (PteFlags::PRESENT | PteFlags::RW | PteFlags::USER | PteFlags::NX);
    for e in path {
        if !e.has(PteFlags::RW) {
            flags.remove(PteFlags::RW);
        }
        if !e.has(PteFlags::USER) {
            flags.remove(PteFlags::USER);
        }
        if e.has(PteFlags::NX) {
            flags.insert(PteFlags::NX);
        }
    }
    flags
}

/// Where a virtual address leads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Translation {
    /// The translated VA.
    pub va: u64,
    /// The guest-physical address it maps to.
    pub paddr: u64,
    /// The level of the leaf entry (L1 for a 4 KiB page, L2/L3 for superpages).
    pub level: Level,
    /// The leaf entry.
    pub pte: Pte,
    /// Effective rights (see [`effective_flags`]).
    pub flags: PteFlags,
}

impl Translation {
    /// The frame of the mapped page (for a superpage, the 4 KiB frame inside it).
    pub fn mfn(&self) -> Mfn {
        Mfn::containing(self.paddr)
    }
    /// Whether a write through this mapping is allowed by every level.
    pub fn writable(&self) -> bool {
        self.flags.contains(PteFlags::RW)
    }
    /// Whether CPL3 may use the mapping.
    pub fn user(&self) -> bool {
        self.flags.contains(PteFlags::USER)
    }
}

impl<'m, M: GuestMemory + ?Sized> Walker<'m, M> {
    /// Translates `va` under `root`: `Ok(None)` if it is not mapped.
    pub fn translate(&self, root: Mfn, va: u64) -> Result<Option<Translation>, WalkError> {
        let mut out = None;
        let _stopped = self.apply_to_existing_page_range(root, VaRange::page(va), |visit| {
            let (batch, size) = match visit {
                Visit::Ptes(b) => (b, Level::L1.entry_span()),
                Visit::Superpage(b) => {
                    let size = b.level().entry_span();
                    (b, size)
                }
                Visit::Hole(_) => return ControlFlow::Break(()),
            };
            let pte = batch.get(0);
            if pte.is_present() {
                // A superpage's address field also holds its PAT bit (bit 12): mask
                // everything below the superpage size.
                let base = pte.raw() & PTE_ADDR_MASK & !(size - 1);
                out = Some(Translation {
                    va,
                    paddr: base + (va & (size - 1)),
                    level: batch.level(),
                    pte,
                    flags: effective_flags(batch.path(), pte),
                });
            }
            ControlFlow::Break(())
        })?;
        Ok(out)
    }
}
