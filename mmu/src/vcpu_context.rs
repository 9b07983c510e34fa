//! A vCPU's context set by another vCPU (`VCPUOP_initialise`, Xen's
//! `arch_set_info_guest`): the page-table roots and the LDT it starts with.

use pvmmu_abi::Errno;
use vm_memory::GuestMemory;

use crate::batch::Caller;
use crate::entry::Mfn;
use crate::flush::TlbFlush;
use crate::machine::{Machine, MachineError};
use crate::mmuext::Root;

impl<M: GuestMemory, F: TlbFlush> Machine<M, F> {
    /// Gives vCPU `target`, which has no context yet, its roots and LDT as Xen's
    /// `VCPUOP_initialise` does: the kernel root `kernel` (a frame of the domain that
    /// takes the L4 type, with the read-only M2P slot filled unless `m2p_strict`), then
    /// the user root `user` if not 0 (the same rules, the slot zapped with
    /// `m2p_strict`), then the LDT. A root that is not the domain's or does not take the
    /// L4 type is -EINVAL; a user root refused drops the kernel root again, so a failed
    /// call leaves no reference behind.
    ///
    /// ```
    /// use pvmmu::{Caller, DomainConfig, Errno, Machine, MachineConfig, Mfn};
    /// use vm_memory::{GuestAddress, GuestMemoryMmap};
    ///
    /// let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
    /// let mut m = Machine::new(mem, MachineConfig::default()).unwrap();
    /// m.create_domain(DomainConfig::new(1).vcpus(2)).unwrap();
    /// m.assign_frames(1, (0x10..0x100).map(Mfn)).unwrap();
    /// let ap = Caller::new(1, 1);
    /// assert_eq!(m.initialise_vcpu(ap, 0x200, 0, 0, 0)?, Err(Errno::EINVAL));
    /// assert_eq!(m.initialise_vcpu(ap, 0x20, 0, 0, 0)?, Ok(()));
    /// assert_eq!(m.kernel_root(ap), Some(Mfn(0x20)));
    /// assert!(m.audit().is_ok());
    /// # Ok::<(), pvmmu::MachineError>(())
    /// ```
    pub fn initialise_vcpu(
        &mut self,
        target: Caller,
        kernel: u64,
        user: u64,
        ldt_base: u64,
        ldt_ents: u32,
    ) -> Result<Result<(), Errno>, MachineError> {
        self.vcpu_check(target.dom, target.vcpu)?;
        let Machine { mem, core, .. } = self;
        if core
            .set_root(mem, target, Root::Kernel, Mfn(kernel))
            .is_err()
        {
            return Ok(Err(Errno::EINVAL));
        }
        if user != 0 && core.set_root(mem, target, Root::User, Mfn(user)).is_err() {
            core.replace_root(target, Root::Kernel, None);
            core.put_page_and_type(mem, Mfn(kernel));
            return Ok(Err(Errno::EINVAL));
        }
        core.set_ldt(target, ldt_base, ldt_ents);
        Ok(Ok(()))
    }
}
