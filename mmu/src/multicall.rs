//! `multicall` (hypercall 13): a batch of hypercalls, each with its own result.
//!
//! The MMU hypercalls are served by the library; every other operation goes to the
//! embedder's dispatcher. A failing entry does not stop the batch; `iret` ends it, as
//! does a vCPU that left guest kernel mode (XSA-213); nesting is refused per entry.

use pvmmu_abi::hypercall::{
    HYPERVISOR_iret, HYPERVISOR_mmu_update, HYPERVISOR_mmuext_op, HYPERVISOR_multicall,
    HYPERVISOR_update_va_mapping, HYPERVISOR_update_va_mapping_otherdomain,
};
use pvmmu_abi::{Errno, MulticallEntry};
use vm_memory::GuestMemory;

use crate::batch::{Caller, Entries, GuestEntries};
use crate::flush::TlbFlush;
use crate::guest::{GuestView, guest_range_ok};
use crate::machine::{Machine, MachineError};

/// Serves the entries of a multicall that are not MMU hypercalls: `op` and `args[0..5]`
/// in, RAX out. The embedder's hypercall dispatcher.
pub trait MulticallDispatch<M, F> {
    /// Runs hypercall `op` for `caller`; returns its RAX value.
    fn dispatch(
        &mut self,
        machine: &mut Machine<M, F>,
        caller: Caller,
        op: u64,
        args: [u64; 5],
    ) -> i64;
}

impl<M, F, T> MulticallDispatch<M, F> for T
where
    T: FnMut(&mut Machine<M, F>, Caller, u64, [u64; 5]) -> i64,
{
    fn dispatch(
        &mut self,
        machine: &mut Machine<M, F>,
        caller: Caller,
        op: u64,
        args: [u64; 5],
    ) -> i64 {
        self(machine, caller, op, args)
    }
}

/// Offset of `result` in a multicall entry.
const RESULT_OFFSET: u64 = 8;

impl<M: GuestMemory, F: TlbFlush> Machine<M, F> {
    /// Runs one hypercall of a multicall.
    #[allow(non_upper_case_globals)] // Xen's names for the hypercall numbers
    fn multicall_one(
        &mut self,
        caller: Caller,
        e: &MulticallEntry,
        other: &mut dyn MulticallDispatch<M, F>,
    ) -> Result<i64, MachineError> {
        let a = e.args;
        Ok(match e.op {
            HYPERVISOR_mmu_update => self.hypercall_mmu_update(caller, a[0], a[1], a[2], a[3])?,
            HYPERVISOR_mmuext_op => self.hypercall_mmuext_op(caller, a[0], a[1], a[2], a[3])?,
            HYPERVISOR_update_va_mapping => self.update_va_mapping(caller, a[0], a[1], a[2])?,
            HYPERVISOR_update_va_mapping_otherdomain => {
                self.update_va_mapping_otherdomain(caller, a[0], a[1], a[2], a[3])?
            }
            HYPERVISOR_multicall => Errno::EINVAL.neg(),
            op => other.dispatch(self, caller, op, [a[0], a[1], a[2], a[3], a[4]]),
        })
    }

    /// The `multicall(list, nr_calls)` hypercall; returns RAX.
    pub fn hypercall_multicall(
        &mut self,
        caller: Caller,
        list: u64,
        nr_calls: u64,
        other: &mut dyn MulticallDispatch<M, F>,
    ) -> Result<i64, MachineError> {
        self.vcpu_check(caller.dom, caller.vcpu)?;
        let Some(len) = nr_calls.checked_mul(64) else {
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
            let root = self.kernel_root(caller);
            let entry: Result<MulticallEntry, Errno> = {
                let mut view = GuestView::new(&self.mem, root);
                let mut src = GuestEntries {
                    view: &mut view,
                    va: list,
                    count,
                };
                src.read(i)
            };
            let Ok(entry) = entry else {
                return Ok(Errno::EFAULT.neg());
            };
            let result = self.multicall_one(caller, &entry, other)?;
            let root = self.kernel_root(caller);
            let at = list + u64::from(i) * 64 + RESULT_OFFSET;
            if GuestView::new(&self.mem, root)
                .write(at, &result.to_le_bytes())
                .is_err()
            {
                return Ok(Errno::EFAULT.neg());
            }
            if entry.op == HYPERVISOR_iret {
                return Ok(result);
            }
            let in_kernel = self
                .core
                .domains
                .get(&caller.dom)
                .and_then(|d| d.vcpus.get(caller.vcpu as usize))
                .is_some_and(|v| v.in_kernel);
            if !in_kernel {
                break;
            }
        }
        Ok(0)
    }

    /// Records whether a vCPU is in guest kernel mode (the embedder's iret and trap
    /// delivery switch it).
    pub fn set_kernel_mode(&mut self, caller: Caller, in_kernel: bool) -> Result<(), MachineError> {
        self.vcpu_check(caller.dom, caller.vcpu)?;
        if let Some(v) = self
            .core
            .domains
            .get_mut(&caller.dom)
            .and_then(|d| d.vcpus.get_mut(caller.vcpu as usize))
        {
            v.in_kernel = in_kernel;
        }
        Ok(())
    }
}
