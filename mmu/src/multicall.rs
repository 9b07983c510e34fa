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
            let root = self.kernel_root(caller);
            let entry: Result<MulticallEntry, Errno> = {
                let mut view = GuestView::new(&self.mem, root);
                let mut src = GuestEntries {
                    view: &mut view,
                    va: list,
                    count,
                    log: self.reads.as_mut(),
                };
                src.read(i)
            };
            let Ok(entry) = entry else {
                return Ok(Errno::EFAULT.neg());
            };
            let a = entry.args;
            let args = [a[0], a[1], a[2], a[3], a[4]];
            let result = self.dispatch(caller, entry.op, args, other, true)?;
            let at = list + u64::from(i) * MulticallEntry::SIZE as u64 + RESULT_OFFSET;
            if self
                .kernel_view(caller)
                .write(at, &result.to_le_bytes())
                .is_err()
            {
                return Ok(Errno::EFAULT.neg());
            }
            if entry.op == HYPERVISOR_iret {
                return Ok(result);
            }
            let in_kernel = self.core.vcpu(caller).is_some_and(|v| v.in_kernel);
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
        if let Some(v) = self.core.vcpu_mut(caller) {
            v.in_kernel = in_kernel;
        }
        Ok(())
    }
}
