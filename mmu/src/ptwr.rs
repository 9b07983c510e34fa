//! Writable page tables (Xen's ptwr, `VMASST_TYPE_writable_pagetables`): a guest kernel
//! write that faulted on one of its own read-only L1 tables is validated and applied as
//! Xen's emulation would, or refused (the embedder then delivers the page fault).

use std::ops::ControlFlow;

use pvmmu_abi::vmassist::VMASST_TYPE_writable_pagetables;
use pvmmu_abi::{Errno, is_guest_va};
use vm_memory::GuestMemory;

use crate::batch::Caller;
use crate::entry::PteFlags;
use crate::flush::TlbFlush;
use crate::frame::PageType;
use crate::machine::{Machine, MachineError};
use crate::mmuext::Root;
use crate::range::VaRange;
use crate::walk::{Visit, Walker};
use crate::write::{EntryWrite, Store, Stored};

/// One memory write of the faulting instruction, as the embedder's decoder saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PtwrWrite {
    /// Guest virtual address written.
    pub addr: u64,
    /// Access size in bytes (1, 2, 4 or 8).
    pub size: u8,
    /// Value written (low `size` bytes).
    pub value: u64,
    /// For a CMPXCHG: the expected old value (low `size` bytes).
    pub cmpxchg: Option<u64>,
}

/// What happened to an accepted write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PtwrOutcome {
    /// The entry was validated and written.
    Written,
    /// A CMPXCHG found another value in memory (low `size` bytes of the entry): nothing
    /// changed; the instruction completes as a failed compare.
    Mismatch {
        /// The current value, as the instruction reads it.
        current: u64,
    },
}

/// Why a write is not emulated: the guest gets the page fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PtwrRefusal {
    /// The domain did not enable writable page tables.
    #[error("writable page tables not enabled")]
    NotEnabled,
    /// The faulting VA is not mapped read-only to a validated L1 table of the domain.
    #[error("not a write to the domain's own L1 table")]
    NotL1Table,
    /// The access has the wrong shape (size, alignment, another page).
    #[error("unsupported access shape")]
    BadAccess,
    /// Xen's validation refused the new entry.
    #[error("entry refused: {0}")]
    Refused(Errno),
}

impl<M: GuestMemory, F: TlbFlush> Machine<M, F> {
    /// Emulates a guest kernel write to its own L1 page table that faulted at
    /// `fault_va`. No TLB flush is done (the guest flushes as on hardware).
    pub fn ptwr_write(
        &mut self,
        caller: Caller,
        fault_va: u64,
        write: PtwrWrite,
    ) -> Result<Result<PtwrOutcome, PtwrRefusal>, MachineError> {
        self.vcpu_check(caller.dom, caller.vcpu)?;
        let d = caller.dom;
        if !self
            .core
            .domains
            .get(&d)
            .is_some_and(|x| x.has_assist(VMASST_TYPE_writable_pagetables))
        {
            return Ok(Err(PtwrRefusal::NotEnabled));
        }
        if !is_guest_va(fault_va) {
            return Ok(Err(PtwrRefusal::NotL1Table));
        }
        let size = u64::from(write.size);
        if !matches!(size, 1 | 2 | 4 | 8)
            || !write.addr.is_multiple_of(size)
            || (write.addr ^ fault_va) >> 12 != 0
        {
            return Ok(Err(PtwrRefusal::BadAccess));
        }
        // The L1 entry mapping the faulting VA in the kernel tables: present, read-only,
        // naming a validated L1 table of the domain.
        let root = self.core.vcpu_root(caller, Root::Kernel);
        let mut target = None;
        if let Some(root) = root {
            let _ = Walker::new(&self.mem).apply_to_existing_page_range(
                root,
                VaRange::page(fault_va),
                |v| {
                    if let Visit::Ptes(b) = v {
                        let e = b.get(0);
                        if e.is_present() && !e.has(PteFlags::RW) {
                            target = Some(e.mfn());
                        }
                    }
                    ControlFlow::<()>::Break(())
                },
            );
        }
        let Some(table) = target else {
            return Ok(Err(PtwrRefusal::NotL1Table));
        };
        match self.core.frames.get(table) {
            Some(p) if p.owner == d && p.ty == PageType::L1 && p.validated && p.type_count > 0 => {}
            _ => return Ok(Err(PtwrRefusal::NotL1Table)),
        }
        let idx = ((write.addr & 0xfff) >> 3) as usize;
        let shift = (write.addr & 7) * 8;
        let mask = if size == 8 {
            u64::MAX
        } else {
            ((1u64 << (size * 8)) - 1) << shift
        };
        let current = crate::table::visit_table(&self.mem, table, crate::paging::Level::L1, |b| {
            b.get(idx).raw()
        })
        .map_err(|_| MachineError::FrameNotFree(table))?;
        let merge = |v: u64| (current & !mask) | ((v << shift) & mask);
        let new = merge(write.value);
        let how = match write.cmpxchg {
            None => Store::Plain,
            Some(old) => Store::IfEqual(merge(old)),
        };
        let Machine { mem, core, .. } = self;
        Ok(
            match core.mod_l1_entry(
                mem,
                EntryWrite {
                    table,
                    idx,
                    new,
                    how,
                },
                d,
                d,
                false,
            ) {
                Ok(Stored::Done) => {
                    core.stats.applied += 1;
                    Ok(PtwrOutcome::Written)
                }
                Ok(Stored::Mismatch(seen)) => Ok(PtwrOutcome::Mismatch {
                    current: (seen & mask) >> shift,
                }),
                Err(e) => {
                    core.stats.rejected += 1;
                    Err(PtwrRefusal::Refused(e))
                }
            },
        )
    }
}
