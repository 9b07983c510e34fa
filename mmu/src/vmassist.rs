//! `vm_assist` (hypercall 21): enabling and disabling the assists the PV MMU honours
//! (writable page tables, m2p_strict) and the others Xen accepts for 64-bit PV.

use pvmmu_abi::Errno;
use pvmmu_abi::vmassist::{PV64_VM_ASSIST_MASK, VMASST_CMD_disable, VMASST_CMD_enable};
use vm_memory::GuestMemory;

use crate::batch::Caller;
use crate::flush::TlbFlush;
use crate::machine::{Machine, MachineError};

impl<M: GuestMemory, F: TlbFlush> Machine<M, F> {
    /// `vm_assist(cmd, type)`; returns RAX.
    pub fn hypercall_vm_assist(
        &mut self,
        caller: Caller,
        cmd: u64,
        ty: u64,
    ) -> Result<i64, MachineError> {
        self.vcpu_check(caller.dom, caller.vcpu)?;
        let cmd = cmd as u32;
        let ty = ty as u32;
        // Xen's do_vm_assist checks the type first, then the command.
        if ty >= 64 || PV64_VM_ASSIST_MASK & (1u64 << ty) == 0 {
            return Ok(Errno::EINVAL.neg());
        }
        if cmd != VMASST_CMD_enable && cmd != VMASST_CMD_disable {
            return Ok(Errno::ENOSYS.neg());
        }
        if let Some(d) = self.core.domains.get_mut(&caller.dom) {
            if cmd == VMASST_CMD_enable {
                d.vm_assist |= 1 << ty;
            } else {
                d.vm_assist &= !(1 << ty);
            }
        }
        Ok(0)
    }
}
