//! `multicall` (hypercall 13): a batch of hypercalls, each with its own result.
//!
//! Each entry goes through the library's one hypercall dispatch ([`Machine::hypercall`]):
//! the MMU hypercalls are served by the library, every other operation by the
//! embedder's [`HypercallHandler`]. A failing entry does not stop the batch; `iret` ends
//! it, as does a vCPU that left guest kernel mode (XSA-213); nesting is refused per
//! entry.

use pvmmu_abi::hypercall::HYPERVISOR_iret;
use pvmmu_abi::{Errno, MulticallEntry};
use vm_memory::GuestMemory;

use crate::batch::{Caller, Entries, GuestEntries};
use crate::flush::TlbFlush;
use crate::guest::{GuestView, guest_range_ok};
use crate::hypercall::HypercallHandler;
use crate::machine::{Machine, MachineError};

/// Offset of `result` in a multicall entry.
const RESULT_OFFSET: u64 = 8;

impl<M: GuestMemory, F: TlbFlush> Machine<M, F> {
    /// The `multicall(list, nr_calls)` hypercall; returns RAX.
    pub fn hypercall_multicall(
        &mut self,
        caller: Caller,
        list: u64,
        nr_calls: u64,
        other: &mut dyn HypercallHandler<M, F>,
    ) -> Result<i64, MachineError> {
        self.vcpu_check(caller.dom, caller.vcpu)?;
        let Some(len) = nr_calls.checked_mul(MulticallEntry::SIZE as u64) else {
            return Ok(Errno::EFAULT.neg());
        };
        if !guest_range_ok(list, len) {
            return Ok(Errno::EFAULT.neg());
        }
        let count = u32::try_from(nr_calls).unwrap_or(u32::MAX);
        for i in 0..count {
            if i > 0 && self.core.interrupted() {
                return Ok(Errno::EINTR.neg());
            }
            if self
                .core
                .preempt_before(i, crate::machine::MULTICALL_ENTRY_UNITS)
            {
                // Xen's continuation: the rest of the list, re-issued.
                let rest = list.wrapping_add(u64::from(i) * MulticallEntry::SIZE as u64);
                self.core.preempt.continuation = Some([rest, nr_calls - u64::from(i), 0, 0, 0]);
                return Ok(0);
            }
            let root = self.kernel_root(caller);
            let entry: Result<MulticallEntry, Errno> = {
                // Each entry on its own: the one before may have changed anything.
                let mut view = GuestView::new(&self.mem, root);
                let mut src = GuestEntries {
                    view: &mut view,
                    va: list.wrapping_add(u64::from(i) * MulticallEntry::SIZE as u64),
                    count: 1,
                    log: self.reads.as_mut(),
                    page: Default::default(),
                };
                src.read(0)
            };
            let Ok(entry) = entry else {
                return Ok(Errno::EFAULT.neg());
            };
            // An entry is never preempted on its own (the list is, between entries).
            let armed = std::mem::replace(&mut self.core.preempt.armed, false);
            let served = self.multicall_entry(caller, &entry, other);
            self.core.preempt.armed = armed;
            let (result, end) = served?;
            let at = list + u64::from(i) * MulticallEntry::SIZE as u64 + RESULT_OFFSET;
            if self
                .kernel_view(caller)
                .write(at, &result.to_le_bytes())
                .is_err()
            {
                return Ok(Errno::EFAULT.neg());
            }
            if let Some(rax) = end {
                return Ok(rax);
            }
        }
        Ok(0)
    }

    /// `multicall` over entries the embedder holds (read from the guest, or built
    /// itself): each entry runs through the library's dispatch, the MMU hypercalls
    /// served by the library and every other number by `other`, and its `result` is set
    /// as Xen sets it in the guest's array; the batch ends early as Xen's does (after an
    /// `iret`, or when an entry left guest kernel mode). Returns the value for RAX: 0,
    /// or the `iret`'s result. Entries after the end keep their `result`.
    ///
    /// ```
    /// use pvmmu::{Caller, DomainConfig, Machine, MachineConfig, Mfn};
    /// use pvmmu_abi::{Errno, MulticallEntry};
    /// use vm_memory::{GuestAddress, GuestMemoryMmap};
    /// let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
    /// let mut m = Machine::new(mem, MachineConfig::default())?;
    /// let d = m.create_domain(DomainConfig::new(1))?;
    /// m.assign_frames(d, (0x10..0x20).map(Mfn))?;
    /// let me = Caller::new(d, 0);
    /// // vm_assist (the library's) enabling writable page tables, then a call the
    /// // embedder serves (xen_version), then one nobody serves.
    /// let mut calls = [
    ///     MulticallEntry { op: 21, result: 0, args: [0, 2, 0, 0, 0, 0] },
    ///     MulticallEntry { op: 17, result: 0, args: [0; 6] },
    ///     MulticallEntry { op: 99, result: 0, args: [0; 6] },
    /// ];
    /// let mut embedder = |_: &mut Machine<_, _>, _: Caller, nr: u64, _: [u64; 5]| {
    ///     if nr == 17 { 0x40011 } else { Errno::ENOSYS.neg() }
    /// };
    /// assert_eq!(m.multicall(me, &mut calls, &mut embedder)?, 0);
    /// assert_eq!(calls.map(|c| c.result as i64), [0, 0x40011, Errno::ENOSYS.neg()]);
    /// assert!(m.domain(d).unwrap().has_assist(2));
    /// # Ok::<(), pvmmu::MachineError>(())
    /// ```
    pub fn multicall(
        &mut self,
        caller: Caller,
        entries: &mut [MulticallEntry],
        other: &mut dyn HypercallHandler<M, F>,
    ) -> Result<i64, MachineError> {
        self.vcpu_check(caller.dom, caller.vcpu)?;
        for (i, entry) in entries.iter_mut().enumerate() {
            if i > 0 && self.core.interrupted() {
                return Ok(Errno::EINTR.neg());
            }
            let (result, end) = self.multicall_entry(caller, entry, other)?;
            entry.result = result as u64;
            if let Some(rax) = end {
                return Ok(rax);
            }
        }
        Ok(0)
    }

    /// One multicall entry: its result, and `Some(RAX)` when the batch ends after it.
    fn multicall_entry(
        &mut self,
        caller: Caller,
        entry: &MulticallEntry,
        other: &mut dyn HypercallHandler<M, F>,
    ) -> Result<(i64, Option<i64>), MachineError> {
        let a = entry.args;
        let args = [a[0], a[1], a[2], a[3], a[4]];
        let result = self.dispatch(caller, entry.op, args, other, true)?;
        if entry.op == HYPERVISOR_iret {
            return Ok((result, Some(result)));
        }
        let in_kernel = self.core.vcpu(caller).is_some_and(|v| v.in_kernel);
        Ok((result, (!in_kernel).then_some(0)))
    }

    /// Records whether a vCPU is in guest kernel mode (the embedder's iret and trap
    /// delivery switch it).
    pub fn set_kernel_mode(&mut self, caller: Caller, in_kernel: bool) -> Result<(), MachineError> {
        self.vcpu_check(caller.dom, caller.vcpu)?;
        if let Some(v) = self.core.vcpu_mut(caller) {
            v.in_kernel = in_kernel;
        }
        Ok(())
    }
}
