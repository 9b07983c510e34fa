//! The LDT, mapped on demand as Xen maps it (`pv_map_ldt_shadow_page`,
//! `pv_destroy_ldt`).
//!
//! `MMUEXT_SET_LDT` only records where the guest's LDT is (a linear address and a number
//! of entries). The CPU reads the LDT through a hypervisor window of 16 pages; a page of
//! that window is filled the first time the CPU touches it: the guest's kernel tables
//! must map the page (present at every level, no superpage), the frame must be the
//! guest's own and take the `seg_desc` type, which checks every descriptor in it. The
//! window then holds a general and a type reference on the frame, so the frame can be
//! neither a page table nor mapped writable while the CPU may read it.
//!
//! The window is emptied, and its references dropped, when the LDT changes
//! (`SET_LDT`), when the kernel root changes (`NEW_BASEPTR`), when the domain is
//! destroyed, and (Xen's "blow the entire shadow LDT") whenever an L1 entry of the
//! domain that mapped one of its own descriptor pages is dropped: every vCPU of the
//! domain loses its window then, and they are refilled on demand.

use vm_memory::GuestMemory;

use crate::batch::Caller;
use crate::entry::Mfn;
use crate::flush::{FlushReason, FlushScope, TlbFlush, VcpuSet};
use crate::frame::{Owner, PageType};
use crate::machine::{Core, Machine, MachineError};
use crate::paging::Level;
use crate::walk::Walker;

pub use crate::domain::LDT_PAGES;

/// A vCPU's LDT: where the guest keeps it and which pages of the window are filled.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ldt {
    /// The LDT's linear address (0 when it has no entries).
    pub base: u64,
    /// Its number of entries (0: no LDT).
    pub ents: u32,
    /// The frame each page of the window maps, if filled.
    pub mapped: [Option<Mfn>; LDT_PAGES],
}

impl Ldt {
    /// The LDT's limit in bytes (the descriptor table's limit is this minus one); 0 for
    /// no LDT.
    ///
    /// ```
    /// let ldt = pvmmu::Ldt { ents: 3, ..Default::default() };
    /// assert_eq!(ldt.limit_bytes(), 24);
    /// ```
    pub fn limit_bytes(&self) -> u32 {
        self.ents * 8
    }
}

/// Why a page of the LDT window could not be filled (Xen then passes the fault on to
/// the guest: a #PF at `va`, or, if `va` is not canonical, #GP with the selector).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LdtFault {
    /// The offset lies beyond the LDT's entries (the CPU's limit check should have
    /// caught it; nothing is mapped).
    #[error("LDT offset {offset:#x} beyond its {ents} entries")]
    Limit {
        /// Byte offset into the LDT.
        offset: u32,
        /// The LDT's entries.
        ents: u32,
    },
    /// The guest's kernel tables do not map the page.
    #[error("LDT page at {va:#x} is not mapped")]
    NotPresent {
        /// The faulting linear address (`base + offset`).
        va: u64,
    },
    /// The frame is not the guest's or cannot take the descriptor type (a page table,
    /// mapped writable, or holding a descriptor Xen refuses).
    #[error("LDT page at {va:#x} (frame {mfn}) cannot be a descriptor page")]
    Refused {
        /// The faulting linear address.
        va: u64,
        /// The frame the tables map there.
        mfn: Mfn,
    },
}

impl LdtFault {
    /// The linear address the guest's page fault reports, if this is one.
    pub fn fault_va(&self) -> Option<u64> {
        match *self {
            LdtFault::Limit { .. } => None,
            LdtFault::NotPresent { va } | LdtFault::Refused { va, .. } => Some(va),
        }
    }
}

impl<F: TlbFlush> Core<F> {
    /// Empties `caller`'s LDT window, dropping its references (Xen's `pv_destroy_ldt`).
    /// Returns whether anything was mapped (then the vCPU's TLB needs a flush).
    /// Descriptor pages are never validated tables, so dropping their type needs no
    /// memory access.
    pub(crate) fn destroy_ldt(&mut self, caller: Caller) -> bool {
        let Some(v) = self.vcpu_mut(caller) else {
            return false;
        };
        let mapped = std::mem::take(&mut v.ldt_mapped);
        let dropped: Vec<Mfn> = mapped.into_iter().flatten().collect();
        if dropped.is_empty() {
            return false;
        }
        v.ldt_changed = true;
        for mfn in dropped {
            self.frames.drop_type(mfn);
            self.frames.put_page(mfn);
        }
        true
    }

    /// Xen's check in `put_page_from_l1e`: dropping an entry that maps a descriptor page
    /// in use, from a table of the page's own domain, empties the LDT window of every
    /// vCPU of that domain (and flushes the ones that had something mapped).
    pub(crate) fn drop_ldts_for(&mut self, mfn: Mfn, l1e_owner: Owner) {
        let in_use = self
            .frames
            .get(mfn)
            .is_some_and(|p| p.ty == PageType::SegDesc && p.type_count > 0 && p.owner == l1e_owner);
        if !in_use {
            return;
        }
        let n = self.domains.get(&l1e_owner).map_or(0, |d| d.vcpus.len());
        let mut flushed = VcpuSet::default();
        for vcpu in 0..n as u32 {
            if self.destroy_ldt(Caller {
                dom: l1e_owner,
                vcpu,
            }) {
                flushed = VcpuSet(flushed.0 | VcpuSet::one(vcpu).0);
            }
        }
        if !flushed.is_empty() {
            self.flush(
                l1e_owner,
                flushed,
                FlushScope::AllNonGlobal,
                FlushReason::Ldt,
            );
        }
    }

    /// Xen's `pv_map_ldt_shadow_page`: fills the window page holding byte `offset` of
    /// `caller`'s LDT.
    fn map_ldt_page<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
        caller: Caller,
        offset: u32,
    ) -> Result<Mfn, LdtFault> {
        let (base, ents, root, slot) = match self.vcpu(caller) {
            Some(v) => (
                v.ldt_base,
                v.ldt_ents,
                v.kernel_root,
                v.ldt_mapped.get((offset / 4096) as usize).copied(),
            ),
            None => (0, 0, None, None),
        };
        if offset >> 3 >= ents {
            return Err(LdtFault::Limit { offset, ents });
        }
        if let Some(Some(mfn)) = slot {
            return Ok(mfn);
        }
        let va = base.wrapping_add(u64::from(offset));
        let not_present = LdtFault::NotPresent { va };
        let root = root.ok_or(not_present)?;
        let t = Walker::new(mem)
            .translate(root, va)
            .ok()
            .flatten()
            .ok_or(not_present)?;
        if t.level != Level::L1 {
            return Err(not_present);
        }
        let mfn = t.mfn();
        if self
            .get_page_and_type(mem, mfn, caller.dom, PageType::SegDesc)
            .is_err()
        {
            return Err(LdtFault::Refused { va, mfn });
        }
        if let Some(v) = self.vcpu_mut(caller) {
            v.ldt_mapped[(offset / 4096) as usize] = Some(mfn);
            v.ldt_changed = true;
        }
        Ok(mfn)
    }

    /// `MMUEXT_SET_LDT` for `caller` (the checks are the caller's): a new LDT empties the
    /// window (flushing the vCPU if anything was mapped).
    pub(crate) fn set_ldt(&mut self, caller: Caller, base: u64, ents: u32) {
        let base = if ents == 0 { 0 } else { base };
        let same = self
            .vcpu(caller)
            .is_none_or(|v| v.ldt_base == base && v.ldt_ents == ents);
        if same {
            return;
        }
        if self.destroy_ldt(caller) {
            self.flush(
                caller.dom,
                VcpuSet::one(caller.vcpu),
                FlushScope::AllNonGlobal,
                FlushReason::Ldt,
            );
        }
        if let Some(v) = self.vcpu_mut(caller) {
            v.ldt_base = base;
            v.ldt_ents = ents;
            v.ldt_changed = true;
        }
    }
}

impl<M: GuestMemory, F: TlbFlush> Machine<M, F> {
    /// Fills the page of `caller`'s LDT window that holds byte `offset` of its LDT, as
    /// Xen does when the CPU first touches it: returns the frame to map there (already
    /// mapped: the same frame, no new reference). On failure nothing changes and the
    /// embedder passes the fault on to the guest ([`LdtFault::fault_va`]).
    ///
    /// ```
    /// use pvmmu::{Caller, DomainConfig, LdtFault, Machine, MachineConfig};
    /// use vm_memory::{GuestAddress, GuestMemoryMmap};
    /// let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
    /// let mut m = Machine::new(mem, MachineConfig::default())?;
    /// m.create_domain(DomainConfig::new(1))?;
    /// let me = Caller::new(1, 0);
    /// // No LDT: every offset is beyond it.
    /// assert_eq!(m.map_ldt_page(me, 0)?, Err(LdtFault::Limit { offset: 0, ents: 0 }));
    /// assert_eq!(m.ldt(me).ents, 0);
    /// # Ok::<(), pvmmu::MachineError>(())
    /// ```
    pub fn map_ldt_page(
        &mut self,
        caller: Caller,
        offset: u32,
    ) -> Result<Result<Mfn, LdtFault>, MachineError> {
        self.vcpu_check(caller.dom, caller.vcpu)?;
        let Machine { mem, core, .. } = self;
        Ok(core.map_ldt_page(mem, caller, offset))
    }

    /// `caller`'s LDT: where it is and which window pages are filled.
    pub fn ldt(&self, caller: Caller) -> Ldt {
        self.core.vcpu(caller).map_or_else(Ldt::default, |v| Ldt {
            base: v.ldt_base,
            ents: v.ldt_ents,
            mapped: v.ldt_mapped,
        })
    }

    /// `caller`'s LDT if it (or its window) changed since the last time this was asked:
    /// the embedder reloads the CPU's LDT register and unmaps the window pages that are
    /// no longer filled.
    pub fn take_ldt_change(&mut self, caller: Caller) -> Option<Ldt> {
        let changed = std::mem::take(&mut self.core.vcpu_mut(caller)?.ldt_changed);
        changed.then(|| self.ldt(caller))
    }
}
