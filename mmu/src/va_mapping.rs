//! `update_va_mapping` and `update_va_mapping_otherdomain` (hypercalls 14 and 22): set
//! the L1 entry that maps a VA in the caller's current page tables, then flush as asked.

use std::ops::ControlFlow;

use pvmmu_abi::mmu::{UvmfFlush, UvmfTarget};
use pvmmu_abi::{DOMID_SELF, Errno, Uvmf, is_guest_va};
use vm_memory::GuestMemory;

use crate::batch::Caller;
use crate::entry::Mfn;
use crate::flush::{FlushReason, FlushScope, TlbFlush, VcpuSet};
use crate::frame::{Owner, PageType};
use crate::guest::GuestView;
use crate::machine::{Core, Machine, MachineError};
use crate::range::VaRange;
use crate::walk::{Visit, Walker};
use crate::write::{EntryWrite, Store};

impl<F: TlbFlush> Core<F> {
    /// Xen's `map_guest_l1e`: the L1 table and index that map `va` under `root`, if the
    /// path to it is present (no superpage) and the table is a validated L1 of `d`.
    pub(crate) fn guest_l1e<M: GuestMemory + ?Sized>(
        &self,
        mem: &M,
        root: Option<Mfn>,
        va: u64,
        d: Owner,
    ) -> Result<(Mfn, usize), Errno> {
        if !is_guest_va(va) {
            return Err(Errno::EINVAL);
        }
        let root = root.ok_or(Errno::EINVAL)?;
        let mut found = None;
        let _ = Walker::new(mem).apply_to_existing_page_range(root, VaRange::page(va), |v| {
            if let Visit::Ptes(b) = v {
                found = Some((b.table(), b.first_index()));
            }
            ControlFlow::<()>::Break(())
        });
        let (table, idx) = found.ok_or(Errno::EINVAL)?;
        match self.frames.get(table) {
            Some(p) if p.owner == d && p.ty == PageType::L1 && p.validated && p.type_count > 0 => {
                Ok((table, idx))
            }
            _ => Err(Errno::EINVAL),
        }
    }

    pub(crate) fn update_va_mapping<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
        caller: Caller,
        va: u64,
        val: u64,
        flags: u64,
        pg_owner: Owner,
    ) -> Result<(), Errno> {
        let d = caller.dom;
        let root = self.vcpu_root(caller, crate::mmuext::Root::Kernel);
        let (table, idx) = self.guest_l1e(mem, root, va, d)?;
        if let Err(e) = self.mod_l1_entry(
            mem,
            EntryWrite {
                table,
                idx,
                new: val,
                how: Store::Plain,
            },
            d,
            pg_owner,
            true,
        ) {
            self.stats.rejected += 1;
            return Err(e); // XSA-279: no flush, no use of the VA
        }
        self.stats.applied += 1;
        let uvmf = Uvmf::decode(flags);
        let scope = match uvmf.flush {
            UvmfFlush::None => return Ok(()),
            UvmfFlush::TlbFlush => FlushScope::All,
            UvmfFlush::Invlpg => FlushScope::Va(va),
        };
        let vcpus = match uvmf.target {
            UvmfTarget::Local => VcpuSet::one(caller.vcpu),
            UvmfTarget::All => self.all_vcpus(d),
            UvmfTarget::Multi(ptr) => {
                let n = self.domains.get(&d).map_or(0, |x| x.vcpus.len() as u32);
                let mut view = GuestView::new(mem, root);
                // The PTE is already changed: a bad bitmap still fails the call.
                let word = view.read_u64(ptr).map_err(|_| Errno::EFAULT)?;
                VcpuSet(word & VcpuSet::first(n).0)
            }
        };
        self.flush(d, vcpus, scope, FlushReason::UpdateVaMapping);
        Ok(())
    }
}

impl<M: GuestMemory, F: TlbFlush> Machine<M, F> {
    /// `update_va_mapping(va, val, flags)`; returns RAX.
    pub fn hypercall_update_va_mapping(
        &mut self,
        caller: Caller,
        va: u64,
        val: u64,
        flags: u64,
    ) -> Result<i64, MachineError> {
        self.vcpu_check(caller.dom, caller.vcpu)?;
        let Machine { mem, core, .. } = self;
        Ok(rc(core.update_va_mapping(
            mem, caller, va, val, flags, caller.dom,
        )))
    }

    /// `update_va_mapping_otherdomain(va, val, flags, domid)`: the mapped frame must
    /// belong to `domid` (which the caller must control); returns RAX.
    pub fn hypercall_update_va_mapping_otherdomain(
        &mut self,
        caller: Caller,
        va: u64,
        val: u64,
        flags: u64,
        domid: u64,
    ) -> Result<i64, MachineError> {
        self.vcpu_check(caller.dom, caller.vcpu)?;
        let Machine { mem, core, .. } = self;
        let fd = domid as u16;
        let pg_owner = match core.pg_owner(caller.dom, fd) {
            Ok(o) => o,
            Err(e) => return Ok(e.neg()),
        };
        if fd != DOMID_SELF && !core.may_use(caller.dom, pg_owner) {
            return Ok(Errno::EPERM.neg());
        }
        Ok(rc(
            core.update_va_mapping(mem, caller, va, val, flags, pg_owner)
        ))
    }
}

fn rc(r: Result<(), Errno>) -> i64 {
    match r {
        Ok(()) => 0,
        Err(e) => e.neg(),
    }
}
