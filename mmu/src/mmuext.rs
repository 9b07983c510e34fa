//! `mmuext_op` (hypercall 26): pinning, base pointers, TLB and cache flushes, LDT, page
//! clear/copy, with Xen's semantics and errno values.

use pvmmu_abi::mmu::{
    MMUEXT_CLEAR_PAGE, MMUEXT_COPY_PAGE, MMUEXT_FLUSH_CACHE, MMUEXT_FLUSH_CACHE_GLOBAL,
    MMUEXT_INVLPG_ALL, MMUEXT_INVLPG_LOCAL, MMUEXT_INVLPG_MULTI, MMUEXT_MARK_SUPER,
    MMUEXT_NEW_BASEPTR, MMUEXT_NEW_USER_BASEPTR, MMUEXT_PIN_L1_TABLE, MMUEXT_PIN_L2_TABLE,
    MMUEXT_PIN_L3_TABLE, MMUEXT_PIN_L4_TABLE, MMUEXT_SET_LDT, MMUEXT_TLB_FLUSH_ALL,
    MMUEXT_TLB_FLUSH_LOCAL, MMUEXT_TLB_FLUSH_MULTI, MMUEXT_UNMARK_SUPER, MMUEXT_UNPIN_TABLE,
};
use pvmmu_abi::vmassist::VMASST_TYPE_m2p_strict;
use pvmmu_abi::{Errno, MmuextOp, decode_foreigndom};
use vm_memory::{Bytes, GuestAddress, GuestMemory};

use crate::batch::{
    BatchOutcome, Caller, Entries, GuestEntries, Refusal, SliceEntries, batch_args, continued,
    finish,
};
use crate::entry::{Mfn, Pte};
use crate::flush::{FlushReason, FlushScope, TlbFlush, VcpuSet};
use crate::frame::{Owner, PageType};
use crate::guest::GuestView;
use crate::machine::{Core, FIRST_XEN_L4_SLOT, Machine, MachineError};
use crate::paging::{Level, PAGE_SIZE, PagingMode};
use crate::table::visit_table;

/// Largest LDT (entries).
const LDT_MAX_ENTS: u32 = 8192;

/// Which root of a vCPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Root {
    Kernel,
    User,
}

impl<F: TlbFlush> Core<F> {
    /// Reads a guest vCPU bitmap (64-bit words; stops at the domain's vCPU count).
    fn read_vcpumask<M: GuestMemory + ?Sized>(
        &self,
        view: &mut Option<&mut GuestView<'_, M>>,
        d: Owner,
        ptr: u64,
    ) -> Result<VcpuSet, Errno> {
        let n = self.domains.get(&d).map_or(0, |dom| dom.vcpus.len() as u32);
        let view = view.as_deref_mut().ok_or(Errno::EFAULT)?;
        let word = view.read_u64(ptr)?;
        Ok(VcpuSet(word & VcpuSet::first(n).0))
    }

    /// Installs `mfn` as a root of `caller`'s vCPU (NEW_BASEPTR / NEW_USER_BASEPTR).
    pub(crate) fn set_root<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
        caller: Caller,
        which: Root,
        mfn: Mfn,
    ) -> Result<(), Errno> {
        let d = caller.dom;
        let strict = self
            .domains
            .get(&d)
            .is_some_and(|x| x.has_assist(VMASST_TYPE_m2p_strict));
        let old = self.vcpu_root(caller, which);
        if which == Root::Kernel && old == Some(mfn) {
            // Xen's new_guest_cr3 empties the LDT window whatever the root; the flush
            // that follows covers it.
            self.destroy_ldt(caller);
            let vcpus = VcpuSet::one(caller.vcpu);
            self.flush(d, vcpus, FlushScope::AllNonGlobal, FlushReason::BasePtr);
            return Ok(());
        }
        if which == Root::User && old.map_or(0, |o| o.0) == mfn.0 {
            // Xen's NEW_USER_BASEPTR returns at once for the current user root: no
            // references taken or dropped, and the RO-M2P slot is not zapped again.
            return Ok(());
        }
        if which == Root::User && mfn.0 == 0 {
            self.replace_root(caller, which, None);
            if let Some(o) = old {
                self.put_page_and_type(mem, o);
            }
            return Ok(());
        }
        self.get_page_and_type(mem, mfn, d, PageType::L4)?;
        // The read-only M2P slot: filled in kernel roots without m2p_strict, zapped in
        // user roots with it.
        let slot = FIRST_XEN_L4_SLOT;
        let m2p = self.config.xen_l4_slots[0];
        let zapped = visit_table(mem, mfn, Level::L4, |b| match which {
            Root::Kernel if !strict && !b.get(slot).is_present() => {
                b.set(slot, Pte(m2p));
                false
            }
            Root::User if strict => {
                let was = b.get(slot).is_present();
                b.set(slot, Pte(0));
                was
            }
            _ => false,
        });
        if zapped.unwrap_or(false) {
            self.note_non_leaf_revoked(d, mfn.addr() + slot as u64 * 8);
        }
        self.replace_root(caller, which, Some(mfn));
        if which == Root::Kernel {
            self.destroy_ldt(caller);
            let vcpus = VcpuSet::one(caller.vcpu);
            self.flush(d, vcpus, FlushScope::AllNonGlobal, FlushReason::BasePtr);
        }
        if let Some(o) = old {
            self.put_page_and_type(mem, o);
        }
        Ok(())
    }

    pub(crate) fn vcpu_root(&self, caller: Caller, which: Root) -> Option<Mfn> {
        let v = self.vcpu(caller)?;
        match which {
            Root::Kernel => v.kernel_root,
            Root::User => v.user_root,
        }
    }

    pub(crate) fn replace_root(&mut self, caller: Caller, which: Root, new: Option<Mfn>) {
        if let Some(v) = self.vcpu_mut(caller) {
            match which {
                Root::Kernel => v.kernel_root = new,
                Root::User => v.user_root = new,
            }
            v.roots_changed = true;
        }
    }

    /// One mmuext operation.
    fn mmuext_one<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
        caller: Caller,
        pg_owner: Owner,
        op: &MmuextOp,
        view: &mut Option<&mut GuestView<'_, M>>,
    ) -> Result<(), Errno> {
        let d = caller.dom;
        let local = VcpuSet::one(caller.vcpu);
        let is_self = pg_owner == d;
        match op.cmd {
            MMUEXT_PIN_L1_TABLE | MMUEXT_PIN_L2_TABLE | MMUEXT_PIN_L3_TABLE
            | MMUEXT_PIN_L4_TABLE => {
                let ty = match op.cmd {
                    MMUEXT_PIN_L1_TABLE => PageType::L1,
                    MMUEXT_PIN_L2_TABLE => PageType::L2,
                    MMUEXT_PIN_L3_TABLE => PageType::L3,
                    _ => PageType::L4,
                };
                let mfn = Mfn(op.arg1);
                if !self.frames.owned_by(mfn, pg_owner) || pg_owner == pvmmu_abi::DOMID_IO {
                    return Err(Errno::EINVAL);
                }
                self.get_page_and_type(mem, mfn, pg_owner, ty)?;
                let already = self.frames.get(mfn).is_some_and(|p| p.pinned);
                if already {
                    self.put_page_and_type(mem, mfn);
                    return Err(Errno::EINVAL);
                }
                if let Some(mut p) = self.frames.get_mut(mfn) {
                    p.pinned = true;
                }
                Ok(())
            }
            MMUEXT_UNPIN_TABLE => {
                let mfn = Mfn(op.arg1);
                if !self.frames.owned_by(mfn, pg_owner) {
                    return Err(Errno::EINVAL);
                }
                match self.frames.get_mut(mfn) {
                    Some(mut p) if p.pinned => p.pinned = false,
                    _ => return Err(Errno::EINVAL),
                }
                self.put_page_and_type(mem, mfn);
                Ok(())
            }
            MMUEXT_NEW_BASEPTR | MMUEXT_NEW_USER_BASEPTR => {
                if !is_self {
                    return Err(Errno::EPERM);
                }
                let which = if op.cmd == MMUEXT_NEW_BASEPTR {
                    Root::Kernel
                } else {
                    Root::User
                };
                self.set_root(mem, caller, which, Mfn(op.arg1))?;
                if which == Root::Kernel
                    && let Some(v) = view.as_deref_mut()
                {
                    v.set_root(Some(Mfn(op.arg1)));
                }
                Ok(())
            }
            MMUEXT_TLB_FLUSH_LOCAL | MMUEXT_TLB_FLUSH_ALL | MMUEXT_TLB_FLUSH_MULTI => {
                if !is_self {
                    return Err(Errno::EPERM);
                }
                let vcpus = match op.cmd {
                    MMUEXT_TLB_FLUSH_LOCAL => local,
                    MMUEXT_TLB_FLUSH_ALL => self.all_vcpus(d),
                    _ => self
                        .read_vcpumask(view, d, op.arg2)
                        .map_err(|_| Errno::EINVAL)?,
                };
                self.flush(d, vcpus, FlushScope::All, FlushReason::Mmuext);
                Ok(())
            }
            MMUEXT_INVLPG_LOCAL | MMUEXT_INVLPG_ALL | MMUEXT_INVLPG_MULTI => {
                if !is_self {
                    return Err(Errno::EPERM);
                }
                let va = op.arg1;
                let vcpus = match op.cmd {
                    MMUEXT_INVLPG_LOCAL => local,
                    MMUEXT_INVLPG_ALL => self.all_vcpus(d),
                    _ => self
                        .read_vcpumask(view, d, op.arg2)
                        .map_err(|_| Errno::EINVAL)?,
                };
                // LOCAL skips non-canonical VAs; MULTI/ALL skip non-guest VAs.
                let skip = if op.cmd == MMUEXT_INVLPG_LOCAL {
                    !PagingMode::FourLevel.is_canonical(va)
                } else {
                    !pvmmu_abi::is_guest_va(va)
                };
                if !skip {
                    self.flush(d, vcpus, FlushScope::Va(va), FlushReason::Mmuext);
                }
                Ok(())
            }
            MMUEXT_FLUSH_CACHE | MMUEXT_FLUSH_CACHE_GLOBAL => {
                if !is_self {
                    return Err(Errno::EPERM);
                }
                let ok = self
                    .domains
                    .get(&d)
                    .is_some_and(|x| x.cache_flush_permitted());
                if ok { Ok(()) } else { Err(Errno::EACCES) }
            }
            MMUEXT_SET_LDT => {
                if !is_self {
                    return Err(Errno::EPERM);
                }
                let (base, ents) = (op.arg1, op.arg2 as u32);
                if ents > LDT_MAX_ENTS
                    || (ents != 0 && (base & (PAGE_SIZE - 1) != 0 || !pvmmu_abi::is_guest_va(base)))
                {
                    return Err(Errno::EINVAL);
                }
                self.set_ldt(caller, base, ents);
                Ok(())
            }
            MMUEXT_CLEAR_PAGE => {
                let mfn = Mfn(op.arg1);
                self.with_writable(mfn, pg_owner, |addr| {
                    mem.write_slice(&[0u8; PAGE_SIZE as usize], GuestAddress(addr))
                        .is_ok()
                })
            }
            MMUEXT_COPY_PAGE => {
                let (dst, src) = (Mfn(op.arg1), Mfn(op.arg2));
                if !self.frames.owned_by(src, pg_owner) {
                    return Err(Errno::EINVAL);
                }
                let mut buf = vec![0u8; PAGE_SIZE as usize];
                if mem.read_slice(&mut buf, GuestAddress(src.addr())).is_err() {
                    return Err(Errno::EINVAL);
                }
                self.with_writable(dst, pg_owner, |addr| {
                    mem.write_slice(&buf, GuestAddress(addr)).is_ok()
                })
            }
            MMUEXT_MARK_SUPER | MMUEXT_UNMARK_SUPER => Err(Errno::EOPNOTSUPP),
            _ => Err(Errno::ENOSYS),
        }
    }

    /// Runs `f` on the address of `mfn` while holding a writable type reference (Xen's
    /// CLEAR_PAGE/COPY_PAGE destination rule); -EINVAL if the frame is not the owner's
    /// RAM or is a live page table.
    fn with_writable(
        &mut self,
        mfn: Mfn,
        owner: Owner,
        f: impl FnOnce(u64) -> bool,
    ) -> Result<(), Errno> {
        if owner == pvmmu_abi::DOMID_IO || !self.frames.owned_by(mfn, owner) {
            return Err(Errno::EINVAL);
        }
        self.frames
            .take_type(mfn, PageType::Writable)
            .map_err(|_| Errno::EINVAL)?;
        let ok = f(mfn.addr());
        self.frames.drop_type(mfn);
        if ok { Ok(()) } else { Err(Errno::EINVAL) }
    }

    pub(crate) fn mmuext_batch<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
        caller: Caller,
        entries: &mut dyn Entries<MmuextOp>,
        mut view: Option<&mut GuestView<'_, M>>,
        foreigndom: u32,
    ) -> Result<BatchOutcome, Refusal> {
        let (fd, _) = decode_foreigndom(foreigndom);
        let pg_owner = self.pg_owner(caller.dom, fd).map_err(Refusal::Early)?;
        if !self.may_use(caller.dom, pg_owner) {
            return Err(Refusal::Early(Errno::EPERM));
        }
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
            let r = entries.read(i).and_then(|op| {
                self.mmuext_one(mem, caller, pg_owner, &op, &mut view)?;
                if op.cmd == MMUEXT_NEW_BASEPTR {
                    // Later entries are read through the new tables, as Xen reads them.
                    entries.root_changed(self.vcpu_root(caller, Root::Kernel));
                }
                Ok(())
            });
            if r == Err(Errno::ERESTART) {
                // A validation stopped part-way: this operation is re-issued.
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
        Ok(BatchOutcome {
            done,
            result,
            writes_pdone: true,
            preempted,
        })
    }
}

impl<M: GuestMemory, F: TlbFlush> Machine<M, F> {
    /// `mmuext_op` with the operations given as a slice. Operations that read guest
    /// memory (vCPU bitmaps) read it through the caller's kernel page tables.
    pub fn mmuext_op(
        &mut self,
        caller: Caller,
        ops: &[MmuextOp],
        foreigndom: u32,
    ) -> Result<BatchOutcome, MachineError> {
        self.vcpu_check(caller.dom, caller.vcpu)?;
        let root = self.kernel_root(caller);
        let Machine { mem, core, .. } = self;
        let mut view = GuestView::new(mem, root);
        let mut src = SliceEntries(ops);
        Ok(core
            .mmuext_batch(mem, caller, &mut src, Some(&mut view), foreigndom)
            .unwrap_or_else(Refusal::outcome))
    }

    /// The `mmuext_op` hypercall as the guest issues it (guest virtual pointers);
    /// returns RAX.
    pub fn hypercall_mmuext_op(
        &mut self,
        caller: Caller,
        ops: u64,
        count: u64,
        pdone: u64,
        foreigndom: u64,
    ) -> Result<i64, MachineError> {
        self.vcpu_check(caller.dom, caller.vcpu)?;
        let root = self.kernel_root(caller);
        let Machine { mem, core, reads } = self;
        let mut view = GuestView::new(mem, root);
        let (count, carried) = match batch_args(&mut view, ops, count, pdone, MmuextOp::SIZE) {
            Ok(v) => v,
            Err(rax) => return Ok(rax),
        };
        // Operations and vCPU bitmaps are read through the same view; the view follows
        // NEW_BASEPTR. Entries are read through a second view over the same tables.
        let mut entry_view = GuestView::new(mem, root);
        let mut src = GuestEntries {
            view: &mut entry_view,
            va: ops,
            count,
            log: reads.as_mut(),
            page: Default::default(),
        };
        let outcome = core.mmuext_batch(mem, caller, &mut src, Some(&mut view), foreigndom as u32);
        if let Ok(o) = &outcome
            && o.preempted
        {
            core.preempt.continuation = Some(continued(
                ops,
                MmuextOp::SIZE,
                count,
                o.done,
                pdone,
                foreigndom,
            ));
        }
        Ok(finish(&mut view, outcome, carried, pdone))
    }

    /// The kernel root of a vCPU.
    pub fn kernel_root(&self, caller: Caller) -> Option<Mfn> {
        self.core.vcpu_root(caller, Root::Kernel)
    }

    /// The user root of a vCPU.
    pub fn user_root(&self, caller: Caller) -> Option<Mfn> {
        self.core.vcpu_root(caller, Root::User)
    }

    /// The memory of a vCPU as its kernel addresses it (through its kernel root): where
    /// hypercall arguments point and where the kernel's exception frames go.
    pub fn kernel_view(&self, caller: Caller) -> GuestView<'_, M> {
        GuestView::new(&self.mem, self.kernel_root(caller))
    }
}
