//! `mmu_update` (hypercall 1): page-table updates by machine address, M2P updates, and
//! the per-entry modification rules shared with `update_va_mapping` and ptwr
//! (Xen's `mod_l1_entry` .. `mod_l4_entry`).

use pvmmu_abi::domid::DOMID_IO;
use pvmmu_abi::pte::FASTPATH_FLAG_WHITELIST;
use pvmmu_abi::{Errno, MmuUpdate, MmuUpdateCmd, decode_foreigndom};
use vm_memory::GuestMemory;

use crate::batch::{
    BatchOutcome, Caller, Entries, GuestEntries, Refusal, SliceEntries, batch_args, continued,
    finish,
};
use crate::entry::{Mfn, Pte};
use crate::flush::{FlushReason, FlushScope, TlbFlush};
use crate::frame::{Owner, PageType};
use crate::guest::GuestView;
use crate::machine::{Core, Machine, MachineError};
use crate::paging::Level;
use crate::table::visit_table;
use crate::validate::{adjust, is_xen_slot, upper_disallow_mask};
use crate::write::{EntryWrite, Store, Stored, store};

/// Whether `new` differs from `old` in anything but the fast-path whitelist (the frame
/// included): Xen's `l?e_has_changed(old, new, ~FASTPATH_FLAG_WHITELIST)`.
pub(crate) const fn needs_full_path(old: u64, new: u64) -> bool {
    (old ^ new) & !FASTPATH_FLAG_WHITELIST != 0
}

impl<F: TlbFlush> Core<F> {
    /// Xen's `mod_l1_entry`: entry `idx` of L1 table `table` (owned by `pt_owner`)
    /// becomes `new`, data frames owned by `pg_owner`.
    pub(crate) fn mod_l1_entry<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
        w: EntryWrite,
        pt_owner: Owner,
        pg_owner: Owner,
        fast_path: bool,
    ) -> Result<Stored, Errno> {
        let page = crate::table::table_page(mem, w.table).map_err(|_| Errno::EINVAL)?;
        self.mod_l1_entry_in(&page, w, pt_owner, pg_owner, fast_path)
    }

    pub(crate) fn mod_l1_entry_in<B: vm_memory::bitmap::BitmapSlice>(
        &mut self,
        page: &crate::table::TablePage<'_, B>,
        w: EntryWrite,
        pt_owner: Owner,
        pg_owner: Owner,
        fast_path: bool,
    ) -> Result<Stored, Errno> {
        let EntryWrite {
            table,
            idx,
            new,
            how,
        } = w;
        let mask = self.l1_disallow_mask(pt_owner);
        crate::table::visit_page(page, table, Level::L1, |b| -> Result<Stored, Errno> {
            let old = match how {
                Store::IfEqual(o) => o,
                _ => b.get(idx).raw(),
            };
            if new & 1 == 0 {
                let s = store(b, idx, new, how);
                if s == Stored::Done {
                    self.put_page_from_l1e(old, pt_owner);
                    self.note_stale(pt_owner, old, new, Some(table.addr() + idx as u64 * 8));
                }
                return Ok(s);
            }
            if new & mask != 0 {
                return Err(Errno::EINVAL);
            }
            let nl = adjust(Level::L1, new);
            if fast_path && old & 1 != 0 && !needs_full_path(old, nl) {
                let s = store(b, idx, nl, how);
                if s == Stored::Done {
                    self.note_stale(pt_owner, old, nl, Some(table.addr() + idx as u64 * 8));
                }
                return Ok(s);
            }
            let flip = self.get_page_from_l1e(nl, mask, pt_owner, pg_owner)?;
            let nl = nl ^ flip;
            let s = store(b, idx, nl, how);
            match s {
                Stored::Done => {
                    self.put_page_from_l1e(old, pt_owner);
                    self.note_stale(pt_owner, old, nl, Some(table.addr() + idx as u64 * 8));
                }
                Stored::Mismatch(_) => self.put_page_from_l1e(nl, pt_owner),
            }
            Ok(s)
        })
    }

    /// Xen's `mod_l2_entry` .. `mod_l4_entry`.
    pub(crate) fn mod_upper_entry<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
        level: Level,
        w: EntryWrite,
        d: Owner,
    ) -> Result<(), Errno> {
        let EntryWrite {
            table,
            idx,
            new,
            how,
        } = w;
        if level == Level::L4 && is_xen_slot(idx) {
            return Err(Errno::EINVAL);
        }
        let r = visit_table(mem, table, level, |b| -> Result<(u64, u64), Errno> {
            let old = b.get(idx).raw();
            if new & 1 == 0 {
                store(b, idx, new, how);
                self.put_page_from_upper(mem, level, old, table);
                return Ok((old, new));
            }
            if new & upper_disallow_mask(level) != 0 {
                return Err(Errno::EINVAL);
            }
            let nl = adjust(level, new);
            if old & 1 != 0 && !needs_full_path(old, nl) {
                store(b, idx, nl, how);
                return Ok((old, nl));
            }
            self.get_page_from_upper(mem, level, nl, table, d)?;
            store(b, idx, nl, how);
            self.put_page_from_upper(mem, level, old, table);
            Ok((old, nl))
        });
        let (old, stored) = r.map_err(|_| Errno::EINVAL)??;
        if crate::flush::stale::revokes(old, stored) {
            self.note_non_leaf_revoked(d, table.addr() + idx as u64 * 8);
        }
        Ok(())
    }

    /// One `MMU_NORMAL_PT_UPDATE` / `PRESERVE_AD` / `NO_TRANSLATE` request. Returns the
    /// level written (for the non-leaf flush) on success.
    fn pt_update<'m, M: GuestMemory + ?Sized>(
        &mut self,
        mem: &'m M,
        cache: &mut Option<(Mfn, crate::table::PageOf<'m, M>)>,
        ptr: u64,
        val: u64,
        how: Store,
        (pt_owner, pg_owner): (Owner, Owner),
    ) -> Result<Option<Level>, Errno> {
        let table = Mfn::containing(ptr);
        let idx = ((ptr & 0xfff) >> 3) as usize;
        let (owner, count, ty, type_count, validated) =
            self.frames.brief(table).ok_or(Errno::EINVAL)?;
        if owner != pt_owner || count == 0 {
            return Err(Errno::EINVAL);
        }
        let locked = type_count > 0 && validated;
        if !locked || ty == PageType::Writable {
            // Not a live table: a plain write into the guest's own memory, under a
            // temporary writable type reference.
            if !locked {
                self.frames
                    .take_type(table, PageType::Writable)
                    .map_err(|_| Errno::EINVAL)?;
            }
            let r = visit_table(mem, table, Level::L1, |b| b.set(idx, Pte(val)));
            if !locked {
                self.frames.drop_type(table);
            }
            r.map_err(|_| Errno::EINVAL)?;
            return Ok(None);
        }
        let w = EntryWrite {
            table,
            idx,
            new: val,
            how,
        };
        match ty {
            PageType::L1 => {
                if cache.as_ref().map(|c| c.0) != Some(table) {
                    let page = crate::table::table_page(mem, table).map_err(|_| Errno::EINVAL)?;
                    *cache = Some((table, page));
                }
                let page = &cache.as_ref().ok_or(Errno::EINVAL)?.1;
                self.mod_l1_entry_in(page, w, pt_owner, pg_owner, true)?;
                Ok(Some(Level::L1))
            }
            PageType::L2 | PageType::L3 | PageType::L4 => {
                if pg_owner != pt_owner {
                    return Err(Errno::EINVAL);
                }
                let level = ty.level().ok_or(Errno::EINVAL)?;
                self.mod_upper_entry(mem, level, w, pt_owner)?;
                Ok(Some(level))
            }
            _ => Err(Errno::EINVAL),
        }
    }

    /// Resolves `foreigndom` for `mmu_update`: `(pt_owner, pg_owner)`.
    pub(crate) fn mmu_update_owners(
        &self,
        caller: u16,
        foreigndom: u32,
    ) -> Result<(Owner, Owner), Refusal> {
        let (fd, pfd) = decode_foreigndom(foreigndom);
        let pt_owner = match pfd {
            None => caller,
            Some(id) if id == caller => caller,
            Some(id) => {
                if !self.domains.contains_key(&id) {
                    return Err(Refusal::Early(Errno::ESRCH));
                }
                id
            }
        };
        let pg_owner = self.pg_owner(caller, fd).map_err(Refusal::AtEntry)?;
        Ok((pt_owner, pg_owner))
    }

    /// Xen's `xsm_mmu_update` (dummy policy, `XSM_TARGET`), checked per entry in the arms
    /// that need it: the caller's right over the frame owner (not needed for DOMID_IO)
    /// and, for page-table updates, over the page-table owner.
    fn mmu_update_permitted(&self, caller: u16, pt_owner: Option<Owner>, pg_owner: Owner) -> bool {
        (pg_owner == DOMID_IO || self.may_use(caller, pg_owner))
            && pt_owner.is_none_or(|t| self.may_use(caller, t))
    }

    /// The body of `mmu_update` after argument decoding.
    pub(crate) fn mmu_update_batch<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
        caller: Caller,
        entries: &mut dyn Entries<MmuUpdate>,
        foreigndom: u32,
    ) -> Result<BatchOutcome, Refusal> {
        let (pt_owner, pg_owner) = self.mmu_update_owners(caller.dom, foreigndom)?;
        self.io_caller = Some(caller.dom);
        let r = self.mmu_update_entries(mem, caller, entries, pt_owner, pg_owner);
        self.io_caller = None;
        r
    }

    fn mmu_update_entries<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
        caller: Caller,
        entries: &mut dyn Entries<MmuUpdate>,
        pt_owner: Owner,
        pg_owner: Owner,
    ) -> Result<BatchOutcome, Refusal> {
        let mut cache = None;
        let mut non_leaf = false;
        let mut done = 0;
        let mut result = Ok(());
        let mut preempted = false;
        let partial_ok = std::mem::replace(&mut self.preempt.partial_ok, true);
        // A de-validation this vCPU left part-way is finished first (Xen's
        // `put_old_guest_table`); if it stops again, the call is re-issued whole.
        let parked_done = self.finish_parked(mem, caller);
        for i in (0..entries.count()).take_while(|_| parked_done) {
            if i > 0 && self.interrupted() {
                result = Err(Errno::EINTR);
                break;
            }
            if self.preempt_before(i, 1) {
                preempted = true;
                break;
            }
            let r = entries.read(i).and_then(|req| {
                let ptr = req.addr();
                match req.cmd().map_err(|_| Errno::ENOSYS)? {
                    cmd @ (MmuUpdateCmd::NormalPtUpdate
                    | MmuUpdateCmd::PtUpdatePreserveAd
                    | MmuUpdateCmd::PtUpdateNoTranslate) => {
                        if !self.mmu_update_permitted(caller.dom, Some(pt_owner), pg_owner) {
                            return Err(Errno::EPERM);
                        }
                        let how = if cmd == MmuUpdateCmd::PtUpdatePreserveAd {
                            Store::PreserveAd
                        } else {
                            Store::Plain
                        };
                        let level = self.pt_update(
                            mem,
                            &mut cache,
                            ptr,
                            req.val,
                            how,
                            (pt_owner, pg_owner),
                        )?;
                        entries.entry_written(ptr);
                        if level.is_some_and(|l| l != Level::L1) {
                            non_leaf = true;
                        }
                        Ok(())
                    }
                    MmuUpdateCmd::MachphysUpdate => {
                        if pt_owner != caller.dom
                            || !self.mmu_update_permitted(caller.dom, None, pg_owner)
                        {
                            return Err(Errno::EPERM);
                        }
                        let mfn = Mfn::containing(ptr);
                        if !self.frames.owned_by(mfn, pg_owner) {
                            return Err(Errno::EINVAL);
                        }
                        self.write_m2p(mem, mfn, req.val);
                        Ok(())
                    }
                }
            });
            if r == Err(Errno::ERESTART) {
                // A new table's validation stopped part-way: this entry is re-issued.
                preempted = true;
                break;
            }
            if let Err(e) = r {
                self.stats.rejected += 1;
                result = Err(e);
                break;
            }
            self.stats.applied += 1;
            done += 1;
        }
        self.park_on(caller);
        preempted |= !parked_done;
        self.preempt.partial_ok = partial_ok;
        if non_leaf {
            // XSA-286: paging-structure changes are flushed before returning.
            if let Some(d) = self.domains.get_mut(&pt_owner) {
                d.non_leaf_pending = true;
            }
            let vcpus = self.all_vcpus(pt_owner);
            self.flush(pt_owner, vcpus, FlushScope::All, FlushReason::NonLeafUpdate);
        }
        Ok(BatchOutcome {
            done,
            result,
            writes_pdone: true,
            preempted,
        })
    }
}

impl<M: GuestMemory, F: TlbFlush> Machine<M, F> {
    /// `mmu_update` with the requests given as a slice (for embedders and tests).
    ///
    /// Entries are applied in order; the first failure stops the batch, earlier
    /// entries stay applied. Errors that Xen reports before touching any entry come
    /// back as a `BatchOutcome` with `done == 0`.
    pub fn mmu_update(
        &mut self,
        caller: Caller,
        reqs: &[MmuUpdate],
        foreigndom: u32,
    ) -> Result<BatchOutcome, MachineError> {
        self.vcpu_check(caller.dom, caller.vcpu)?;
        let Machine { mem, core, .. } = self;
        let mut src = SliceEntries(reqs);
        Ok(core
            .mmu_update_batch(mem, caller, &mut src, foreigndom)
            .unwrap_or_else(Refusal::outcome))
    }

    /// The `mmu_update` hypercall as the guest issues it: `reqs` and `pdone` are guest
    /// virtual addresses (read and written through the vCPU's kernel page tables);
    /// returns the value for RAX.
    pub fn hypercall_mmu_update(
        &mut self,
        caller: Caller,
        reqs: u64,
        count: u64,
        pdone: u64,
        foreigndom: u64,
    ) -> Result<i64, MachineError> {
        self.vcpu_check(caller.dom, caller.vcpu)?;
        let root = self.kernel_root(caller);
        let Machine { mem, core, reads } = self;
        let mut view = GuestView::new(mem, root);
        let (count, carried) = match batch_args(&mut view, reqs, count, pdone, MmuUpdate::SIZE) {
            Ok(v) => v,
            Err(rax) => return Ok(rax),
        };
        let mut src = GuestEntries {
            view: &mut view,
            va: reqs,
            count,
            log: reads.as_mut(),
            page: Default::default(),
        };
        let outcome = core.mmu_update_batch(mem, caller, &mut src, foreigndom as u32);
        if let Ok(o) = &outcome
            && o.preempted
        {
            core.preempt.continuation = Some(continued(
                reqs,
                MmuUpdate::SIZE,
                count,
                o.done,
                pdone,
                foreigndom,
            ));
        }
        Ok(finish(&mut view, outcome, carried, pdone))
    }
}
