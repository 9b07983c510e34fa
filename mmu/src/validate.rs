//! Xen's per-level validation rules and the reference counting around them: taking and
//! releasing the references an entry holds, recursive validation of a table when it
//! first takes a page-table type, and recursive de-validation when it drops the last.
//!
//! The rules follow Xen's `get_page_from_l[1-4]e`, `put_page_from_l[1-4]e`,
//! `promote_l[1-4]_table`, `demote_l[1-4]_table` and the linear-page-table checks for a
//! 64-bit PV guest (release build).
//!
//! Validation of L2..L4 tables is preemptible where Xen's is (pins, new base pointers,
//! upper-level `mmu_update` entries, when the embedder set a preemption budget): it
//! stops before an entry once the budget is spent, and the frame keeps its progress
//! (Xen's `PGT_partial` and `nr_validated_ptes`). A partial frame holds exactly one type
//! reference (its type count is 1) and one general reference of its own; its entries
//! below the recorded index hold their references, the others none (an entry whose
//! child table was itself interrupted holds nothing: the child holds its own). The
//! next request for the same type resumes the validation where it stopped (the caller
//! re-issues its hypercall as a continuation, or any other caller does the work); when
//! it completes, the partial state's type reference becomes the caller's and its
//! general reference is dropped. A failure after a stop releases every entry validated
//! so far, in all slices. De-validation is done to completion in one call.

use pvmmu_abi::Errno;
use pvmmu_abi::domid::{DOMID_INVALID, DOMID_IO, DOMID_XEN};
use pvmmu_abi::pte::{
    L1_DISALLOW_MASK_RELEASE, L2_DISALLOW_MASK, L3_DISALLOW_MASK, L4_DISALLOW_MASK, PAGE_PAT,
    PAGE_PCD, PAGE_PWT, PAGE_RW, PAT_IDX_UC, PAT_IDX_UCM, PAT_IDX_WC, adjust_guest_l1e,
    adjust_guest_l2e_l3e, adjust_guest_l4e, l1_pat_index,
};
use pvmmu_abi::vmassist::VMASST_TYPE_m2p_strict;
use vm_memory::GuestMemory;

use crate::entry::{Mfn, Pte};
use crate::flush::TlbFlush;
use crate::frame::{Owner, PageType};
use crate::machine::{Core, FIRST_XEN_L4_SLOT, XEN_L4_SLOTS};

/// The cache-attribute bits of an L1 entry (PAT, PCD, PWT): all clear is write-back.
const CACHE_ATTR_BITS: u64 = PAGE_PAT | PAGE_PCD | PAGE_PWT;
use crate::paging::{ENTRIES_PER_TABLE, Level};
use crate::table::visit_table;

/// Xen's disallowed-flag mask for an upper level.
pub(crate) const fn upper_disallow_mask(level: Level) -> u64 {
    match level {
        Level::L2 => L2_DISALLOW_MASK,
        Level::L3 => L3_DISALLOW_MASK,
        _ => L4_DISALLOW_MASK,
    }
}

/// Xen's guest-entry adjustment for `level` (what the guest reads back).
pub(crate) const fn adjust(level: Level, raw: u64) -> u64 {
    match level {
        Level::L1 => adjust_guest_l1e(raw),
        Level::L2 | Level::L3 => adjust_guest_l2e_l3e(raw),
        _ => adjust_guest_l4e(raw),
    }
}

/// Whether L4 slot `i` belongs to Xen.
pub(crate) const fn is_xen_slot(i: usize) -> bool {
    i >= FIRST_XEN_L4_SLOT && i < FIRST_XEN_L4_SLOT + XEN_L4_SLOTS
}

impl<F: TlbFlush> Core<F> {
    /// Xen's `l1_disallow_mask(d)`: PAT/PCD/PWT are refused unless the domain has I/O
    /// rights (or is DOMID_IO).
    pub(crate) fn l1_disallow_mask(&self, d: Owner) -> u64 {
        let relaxed = d == DOMID_IO
            || self
                .domains
                .get(&d)
                .is_some_and(|dom| dom.cache_flush_permitted());
        if relaxed { 0 } else { L1_DISALLOW_MASK_RELEASE }
    }

    fn iomem_permitted(&self, d: Owner, mfn: u64) -> bool {
        self.domains
            .get(&d)
            .is_some_and(|dom| dom.iomem_permitted(mfn))
    }

    fn is_ro_mmio(&self, mfn: u64) -> bool {
        self.config.ro_mmio.iter().any(|r| r.contains(&mfn))
    }

    fn privileged_over(&self, d: Owner, target: Owner) -> bool {
        self.domains
            .get(&d)
            .is_some_and(|dom| dom.may_control(target))
    }

    /// Xen's `get_page_from_l1e` for a present entry: takes the references the entry
    /// needs and returns the flag bits Xen flips in the stored entry. `mask` is
    /// [`Core::l1_disallow_mask`] of `l1e_owner`, computed once by the caller. RAM owned
    /// by `pg_owner` that needs no type change takes a one-lookup fast path.
    #[inline]
    pub(crate) fn get_page_from_l1e(
        &mut self,
        l1e: u64,
        mask: u64,
        l1e_owner: Owner,
        pg_owner: Owner,
    ) -> Result<u64, Errno> {
        if l1e & mask != 0 {
            return Err(Errno::EINVAL);
        }
        if self.frames.get_l1e_refs_common(
            Pte(l1e).mfn(),
            pg_owner,
            l1e & PAGE_RW != 0,
            l1e & CACHE_ATTR_BITS != 0,
        ) {
            return Ok(0);
        }
        self.get_page_from_l1e_slow(l1e, l1e_owner, pg_owner)
    }

    #[inline(never)]
    fn get_page_from_l1e_slow(
        &mut self,
        l1e: u64,
        l1e_owner: Owner,
        pg_owner: Owner,
    ) -> Result<u64, Errno> {
        let pte = Pte(l1e);
        let mfn = pte.mfn();
        let owner = self.frames.get(mfn).map(|p| p.owner);
        // RAM known to the frame table and not I/O memory (free RAM included: mapping
        // it is -EBUSY below, never the MMIO path).
        let is_ram = owner.is_some_and(|o| o != DOMID_IO);
        if !is_ram {
            if mfn.0 == (crate::entry::PTE_ADDR_MASK >> 12) {
                return Err(Errno::EINVAL);
            }
            // I/O memory: DOMID_IO as FD means "with the caller's permissions" (the
            // caller of mmu_update, who may be another domain than the table's owner).
            let pg = if pg_owner == DOMID_IO {
                self.io_caller.unwrap_or(l1e_owner)
            } else {
                pg_owner
            };
            if !self.iomem_permitted(pg, mfn.0)
                || (pg != l1e_owner && !self.iomem_permitted(l1e_owner, mfn.0))
            {
                return Err(Errno::EPERM);
            }
            let mut flip = 0;
            if l1e & PAGE_RW != 0 && self.is_ro_mmio(mfn.0) {
                flip |= PAGE_RW;
            }
            let idx = l1_pat_index(l1e);
            if !matches!(idx, PAT_IDX_UC | PAT_IDX_UCM | PAT_IDX_WC) {
                // Force UC: PAT:PCD:PWT = 0:1:1.
                let want = PAGE_PCD | PAGE_PWT;
                flip |= (l1e & (PAGE_PAT | PAGE_PCD | PAGE_PWT)) ^ want;
            }
            return Ok(flip);
        }
        let real = owner.unwrap_or(0);
        let mut pg = pg_owner;
        if real != pg {
            // A privileged FD may map frames of a domain it controls when FD is not the
            // page-table owner (the stub-domain case).
            if pg != l1e_owner && self.privileged_over(pg, real) {
                pg = real;
            } else {
                return Err(Errno::EBUSY);
            }
        }
        if !self.frames.get_page(mfn, pg) {
            return Err(Errno::EBUSY);
        }
        if l1e & PAGE_RW != 0 {
            // A writable mapping needs the writable type: never of a live page table.
            if self.frames.take_type(mfn, PageType::Writable).is_err() {
                self.frames.put_page(mfn);
                return Err(Errno::EBUSY);
            }
        }
        // The hypervisor's own pages (shared with the guest, or its reserved frames)
        // keep write-back caching: another attribute is -EACCES, after the references
        // are taken, and those are given back (Xen's "Attempt to change cache
        // attributes of Xen heap page").
        if l1e & CACHE_ATTR_BITS != 0
            && self
                .frames
                .get(mfn)
                .is_some_and(|p| p.shared || p.owner == DOMID_XEN)
        {
            if l1e & PAGE_RW != 0 {
                self.frames.drop_type(mfn);
            }
            self.frames.put_page(mfn);
            return Err(Errno::EACCES);
        }
        Ok(0)
    }

    /// Xen's `put_page_from_l1e`: releases what a present entry of a table owned by
    /// `l1e_owner` held. Dropping a read-only mapping of a descriptor page in use
    /// empties the owner's LDT windows first (see [`crate::ldt`]).
    pub(crate) fn put_page_from_l1e(&mut self, l1e: u64, l1e_owner: Owner) {
        let pte = Pte(l1e);
        if !pte.is_present() {
            return;
        }
        let mfn = pte.mfn();
        match self.frames.brief(mfn) {
            Some((o, count, ..)) if o != DOMID_IO && count > 0 => {}
            _ => return, // I/O memory holds no references
        }
        if l1e & PAGE_RW != 0 {
            self.frames.drop_type(mfn);
        } else {
            self.drop_ldts_for(mfn, l1e_owner);
        }
        self.frames.put_page(mfn);
    }

    /// Xen's `get_page_type`, validating the frame if this is its first reference of
    /// the type, or resuming its interrupted validation. `Err(ERESTART)`: the
    /// validation stopped part-way (see the module docs); the caller holds no type
    /// reference and re-issues its request.
    pub(crate) fn get_page_type<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
        mfn: Mfn,
        ty: PageType,
    ) -> Result<(), Errno> {
        if self.frames.partial(mfn).is_some() {
            return self.resume_validation(mem, mfn, ty);
        }
        let taken = self.frames.take_type(mfn, ty)?;
        if taken.changed && ty != PageType::Writable {
            // No CPU may keep a (writable) translation of a frame that becomes a table
            // (XSA-241/401/408: after the new type is taken, before it is used).
            self.flush_before_type_change(mfn);
        }
        if taken.needs_validation {
            let checked = match ty.level() {
                Some(level) => self.promote(mem, mfn, level),
                None if ty == PageType::SegDesc => self.validate_segdesc(mem, mfn),
                None => Err(Errno::EINVAL),
            };
            match checked {
                Ok(()) => self.frames.type_validated(mfn),
                Err(Errno::ERESTART) => {
                    // The partial state keeps the type reference just taken, and a
                    // general reference of its own.
                    self.frames.hold(mfn);
                    return Err(Errno::ERESTART);
                }
                Err(e) => {
                    self.frames.type_failed(mfn);
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// `get_page_type(ty)` of a frame whose validation stopped part-way: only its own
    /// type continues it (another type meets a live type count of 1: -EINVAL).
    fn resume_validation<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
        mfn: Mfn,
        ty: PageType,
    ) -> Result<(), Errno> {
        let Some(level) = self
            .frames
            .get(mfn)
            .filter(|p| p.ty == ty)
            .and_then(|p| p.ty.level())
        else {
            return Err(Errno::EINVAL);
        };
        match self.promote(mem, mfn, level) {
            Ok(()) => {
                self.frames.type_validated(mfn);
                self.frames.put_page(mfn);
                Ok(())
            }
            Err(Errno::ERESTART) => Err(Errno::ERESTART),
            Err(e) => {
                self.frames.type_failed(mfn);
                self.frames.put_page(mfn);
                Err(e)
            }
        }
    }

    /// Xen's `put_page_type`: de-validates on the last reference of a validated table.
    pub(crate) fn put_page_type<M: GuestMemory + ?Sized>(&mut self, mem: &M, mfn: Mfn) {
        // Only tables' de-validation stops, and the callers that put tables use
        // `put_page_and_type`.
        let _ = self.put_page_type_or_park(mem, mfn);
    }

    /// `put_page_type`, whose de-validation may stop part-way (see the module docs):
    /// `false` when it did, the frame then being partial with the type reference kept
    /// and parked for the calling vCPU, and the caller's general reference handed to
    /// the partial state.
    fn put_page_type_or_park<M: GuestMemory + ?Sized>(&mut self, mem: &M, mfn: Mfn) -> bool {
        let Some(level) = self.frames.drop_type(mfn) else {
            return true;
        };
        match self.demote_from(mem, mfn, level, ENTRIES_PER_TABLE) {
            None => true,
            Some(held) => {
                self.frames.hold_type(mfn);
                self.frames.set_partial(mfn, Some(held));
                self.preempt.parked.push(mfn);
                false
            }
        }
    }

    /// Finishes the de-validations parked on `caller` (Xen's `old_guest_table`, put
    /// at the start of the vCPU's next `mmu_update` or `mmuext_op`). `false`: one
    /// stopped again, the call is to be re-issued.
    pub(crate) fn finish_parked<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
        caller: crate::batch::Caller,
    ) -> bool {
        let parked = match self.vcpu_mut(caller) {
            Some(v) if !v.parked.is_empty() => std::mem::take(&mut v.parked),
            _ => return true,
        };
        let mut left = Vec::new();
        for mfn in parked {
            if !left.is_empty() {
                left.push(mfn);
                continue;
            }
            // Someone may have resumed its validation meanwhile (then it is no longer
            // partial and nothing is owed).
            let Some(p) = self.frames.get(mfn) else {
                continue;
            };
            let (Some(held), Some(level)) = (p.partial, p.ty.level()) else {
                continue;
            };
            match self.demote_from(mem, mfn, level, usize::from(held)) {
                None => {
                    self.frames.set_partial(mfn, None);
                    self.frames.drop_type(mfn);
                    self.frames.put_page(mfn);
                }
                Some(k) => {
                    self.frames.set_partial(mfn, Some(k));
                    left.push(mfn);
                }
            }
        }
        left.append(&mut self.preempt.parked);
        let done = left.is_empty();
        if let Some(v) = self.vcpu_mut(caller) {
            v.parked = left;
        }
        done
    }

    /// Hands what this call parked to the calling vCPU.
    pub(crate) fn park_on(&mut self, caller: crate::batch::Caller) {
        if self.preempt.parked.is_empty() {
            return;
        }
        let parked = std::mem::take(&mut self.preempt.parked);
        if let Some(v) = self.vcpu_mut(caller) {
            v.parked.extend(parked);
        }
    }

    /// `get_page` + `get_page_type`; on type failure the general reference is dropped.
    pub(crate) fn get_page_and_type<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
        mfn: Mfn,
        d: Owner,
        ty: PageType,
    ) -> Result<(), Errno> {
        if !self.frames.get_page(mfn, d) {
            return Err(Errno::EINVAL);
        }
        if let Err(e) = self.get_page_type(mem, mfn, ty) {
            self.frames.put_page(mfn);
            return Err(e);
        }
        Ok(())
    }

    pub(crate) fn put_page_and_type<M: GuestMemory + ?Sized>(&mut self, mem: &M, mfn: Mfn) {
        if self.put_page_type_or_park(mem, mfn) {
            self.frames.put_page(mfn);
        }
    }

    /// Xen's `get_page_from_l2e/l3e/l4e` for a present entry of the table `table` of
    /// `level` owned by `d`.
    pub(crate) fn get_page_from_upper<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
        level: Level,
        entry: u64,
        table: Mfn,
        d: Owner,
    ) -> Result<(), Errno> {
        if entry & upper_disallow_mask(level) != 0 {
            return Err(Errno::EINVAL);
        }
        let lower = level
            .lower()
            .and_then(PageType::table)
            .ok_or(Errno::EINVAL)?;
        match self.get_page_and_type(mem, Pte(entry).mfn(), d, lower) {
            Err(Errno::EINVAL) => {
                if self.get_linear(level, entry, table, d) {
                    Ok(())
                } else {
                    Err(Errno::EINVAL)
                }
            }
            r => r,
        }
    }

    /// Xen's linear ("recursive") page-table rule for an entry of `table` (of `level`)
    /// pointing at another table of the same level.
    fn get_linear(&mut self, level: Level, entry: u64, table: Mfn, d: Owner) -> bool {
        let Some(ty) = PageType::table(level) else {
            return false;
        };
        if entry & PAGE_RW != 0 {
            return false; // a writable linear entry would expose page tables
        }
        let target = Pte(entry).mfn();
        if target == table {
            return true; // self-reference: no reference taken
        }
        let (Some(tp), Some(pp)) = (self.frames.get(target), self.frames.get(table)) else {
            return false;
        };
        // XSA-240: a table may contain same-level entries or be referenced by them,
        // never both; 16-bit counters.
        if pp.linear < 0 || pp.linear == i16::MAX || tp.linear > 0 || tp.linear == i16::MIN {
            return false;
        }
        if tp.owner != d || pp.owner != d {
            return false;
        }
        if tp.ty != ty || !tp.validated || tp.type_count == 0 {
            return false;
        }
        if !self.frames.get_page(target, d) {
            return false;
        }
        if self.frames.take_type(target, ty).is_err() {
            self.frames.put_page(target);
            return false;
        }
        if let Some(mut p) = self.frames.get_mut(table) {
            p.linear += 1;
        }
        if let Some(mut p) = self.frames.get_mut(target) {
            p.linear -= 1;
        }
        true
    }

    /// Xen's `put_page_from_l2e/l3e/l4e`.
    pub(crate) fn put_page_from_upper<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
        level: Level,
        entry: u64,
        table: Mfn,
    ) {
        let pte = Pte(entry);
        if !pte.is_present() {
            return;
        }
        let target = pte.mfn();
        if target == table {
            return;
        }
        let same_level = PageType::table(level);
        if self.frames.get(target).map(|p| p.ty) == same_level {
            if let Some(mut p) = self.frames.get_mut(target) {
                p.linear += 1;
            }
            if let Some(mut p) = self.frames.get_mut(table) {
                p.linear -= 1;
            }
        }
        self.put_page_and_type(mem, target);
    }

    /// Validates the table `mfn` of `level` (Xen's `promote_lN_table`): takes every
    /// reference its entries need and stores the adjusted entries, from where an
    /// interrupted validation stopped. All or nothing, or `Err(ERESTART)` with the
    /// progress recorded in the frame (L2..L4 only; see the module docs).
    pub(crate) fn promote<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
        mfn: Mfn,
        level: Level,
    ) -> Result<(), Errno> {
        let d = self.frames.get(mfn).map(|p| p.owner).ok_or(Errno::EINVAL)?;
        let l1_mask = self.l1_disallow_mask(d);
        let start = usize::from(self.frames.partial(mfn).unwrap_or(0));
        // An L1's entries are counted at its end (it is never split); upper levels count
        // as they go, for the preemption check.
        let mut l1_counted = 0;
        let r = visit_table(mem, mfn, level, |batch| -> Result<(), Errno> {
            let n = batch.len();
            for i in start..n {
                if level == Level::L4 && is_xen_slot(i) {
                    continue;
                }
                if level != Level::L1 && i > start && self.validation_preempt_due() {
                    // `i` < 512 fits.
                    self.frames.set_partial(mfn, Some(i as u16));
                    return Err(Errno::ERESTART);
                }
                let e = batch.get(i).raw();
                if e & 1 == 0 {
                    continue;
                }
                if level == Level::L1 {
                    l1_counted += 1;
                } else {
                    self.stats.validated += 1;
                }
                let r = if level == Level::L1 {
                    self.get_page_from_l1e(e, l1_mask, d, d)
                        .map(|flip| e ^ flip)
                } else {
                    self.get_page_from_upper(mem, level, e, mfn, d).map(|()| e)
                };
                match r {
                    Ok(v) => {
                        let adjusted = adjust(level, v);
                        if adjusted != e {
                            batch.set(i, Pte(adjusted));
                        }
                    }
                    Err(Errno::ERESTART) => {
                        // The child stopped part-way: it holds its own references;
                        // this entry holds none yet.
                        self.frames.set_partial(mfn, Some(i as u16));
                        return Err(Errno::ERESTART);
                    }
                    Err(err) => {
                        // Every entry validated so far, in this call or an earlier one.
                        for j in (0..i).rev() {
                            if level == Level::L4 && is_xen_slot(j) {
                                continue;
                            }
                            let done = batch.get(j).raw();
                            self.release_entry(mem, level, done, mfn);
                        }
                        self.frames.set_partial(mfn, None);
                        return Err(err);
                    }
                }
            }
            if level == Level::L4 {
                let strict = self
                    .domains
                    .get(&d)
                    .is_some_and(|dom| dom.has_assist(VMASST_TYPE_m2p_strict));
                for (k, raw) in self.config.xen_l4_slots.iter().enumerate() {
                    let v = if k == 0 && strict { 0 } else { *raw };
                    batch.set(FIRST_XEN_L4_SLOT + k, Pte(v));
                }
            }
            self.frames.set_partial(mfn, None);
            Ok(())
        });
        self.stats.validated += l1_counted;
        r.map_err(|_| Errno::EINVAL)?
    }

    /// Gives up the interrupted validation of `mfn` (domain teardown): releases the
    /// entries validated so far, and the frame's own type and general references.
    pub(crate) fn abandon_partial<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
        mfn: Mfn,
        level: Level,
    ) {
        let Some(k) = self.frames.partial(mfn) else {
            return;
        };
        let _ = visit_table(mem, mfn, level, |batch| {
            for j in (0..usize::from(k)).rev() {
                if level == Level::L4 && is_xen_slot(j) {
                    continue;
                }
                let e = batch.get(j).raw();
                self.release_entry(mem, level, e, mfn);
            }
        });
        self.frames.type_failed(mfn);
        self.frames.put_page(mfn);
    }

    /// Releases what one present entry of a table of `level` holds.
    pub(crate) fn release_entry<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
        level: Level,
        entry: u64,
        table: Mfn,
    ) {
        if entry & 1 == 0 {
            return;
        }
        if level == Level::L1 {
            let owner = self.frames.get(table).map_or(DOMID_INVALID, |p| p.owner);
            self.put_page_from_l1e(entry, owner);
        } else {
            self.put_page_from_upper(mem, level, entry, table);
        }
    }

    /// De-validates the table `mfn` of `level` (Xen's `demote_lN_table`), to the end.
    pub(crate) fn demote<M: GuestMemory + ?Sized>(&mut self, mem: &M, mfn: Mfn, level: Level) {
        let partial_ok = std::mem::replace(&mut self.preempt.partial_ok, false);
        let _ = self.demote_from(mem, mfn, level, ENTRIES_PER_TABLE);
        self.preempt.partial_ok = partial_ok;
    }

    /// De-validates the entries below `held` of the table `mfn` of `level`, from the
    /// top down. Where Xen's is preemptible (see the module docs) it may stop before
    /// an entry: `Some(k)`, the entries below `k` still holding their references.
    fn demote_from<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
        mfn: Mfn,
        level: Level,
        held: usize,
    ) -> Option<u16> {
        let d = self.frames.get(mfn).map_or(DOMID_IO, |p| p.owner);
        let stopped = visit_table(mem, mfn, level, |batch| {
            if level == Level::L1 {
                // Never split: in order, the owner looked up once.
                let mut released = 0;
                for i in 0..held.min(batch.len()) {
                    let e = batch.get(i).raw();
                    if e & 1 == 0 {
                        continue;
                    }
                    released += 1;
                    self.put_page_from_l1e(e, d);
                    // The table is unreachable now, but TLBs may still hold its entries.
                    self.note_stale(d, e, 0, None);
                }
                self.preempt.work += released;
                return None;
            }
            for i in (0..held.min(batch.len())).rev() {
                if level == Level::L4 && is_xen_slot(i) {
                    continue;
                }
                if i + 1 < held && self.validation_preempt_due() {
                    // `i + 1` <= 512 fits.
                    return Some((i + 1) as u16);
                }
                let e = batch.get(i).raw();
                if e & 1 != 0 {
                    self.preempt.work += 1;
                }
                self.release_entry(mem, level, e, mfn);
            }
            None
        });
        let stopped = stopped.ok().flatten();
        if stopped.is_none()
            && let Some(mut p) = self.frames.get_mut(mfn)
        {
            p.linear = 0;
        }
        stopped
    }
}
