//! Guest pages the hypervisor keeps mapped (Xen's `map_guest_area` and friends): the
//! `vcpu_info` a guest moves into its own memory with `VCPUOP_register_vcpu_info`, and
//! the domain's PIRQ EOI bitmap (`PHYSDEVOP_pirq_eoi_gmfn`). The
//! frame must be the guest's and take the writable type, so it can be neither a page
//! table nor a descriptor page while the hypervisor writes into it; the references are
//! held until the domain is torn down, and the audit counts them.

use pvmmu_abi::Errno;
use vm_memory::GuestMemory;

use crate::batch::Caller;
use crate::entry::Mfn;
use crate::flush::TlbFlush;
use crate::frame::PageType;
use crate::machine::{Machine, MachineError};

impl<M: GuestMemory, F: TlbFlush> Machine<M, F> {
    /// Registers frame `mfn` as `caller`'s `vcpu_info` page (Xen's checks in
    /// `VCPUOP_register_vcpu_info` and `map_guest_area`, from the frame on): -EBUSY if
    /// the vCPU already has one, -EINVAL if the frame is not the caller's RAM, -EACCES
    /// if it cannot take the writable type (a page table, a descriptor page). On
    /// success it holds a general and a writable type reference.
    ///
    /// ```
    /// use pvmmu::{Caller, DomainConfig, Errno, Machine, MachineConfig, Mfn};
    /// use vm_memory::{GuestAddress, GuestMemoryMmap};
    /// let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
    /// let mut m = Machine::new(mem, MachineConfig::default())?;
    /// let d = m.create_domain(DomainConfig::new(1))?;
    /// m.assign_frames(d, (0x10..0x20).map(Mfn))?;
    /// let me = Caller::new(d, 0);
    /// assert_eq!(m.register_vcpu_info(me, Mfn(0x12))?, Ok(()));
    /// assert_eq!(m.register_vcpu_info(me, Mfn(0x13))?, Err(Errno::EBUSY), "once");
    /// assert_eq!(m.frames().get(Mfn(0x12)).unwrap().type_count, 1);
    /// # Ok::<(), pvmmu::MachineError>(())
    /// ```
    pub fn register_vcpu_info(
        &mut self,
        caller: Caller,
        mfn: Mfn,
    ) -> Result<Result<(), Errno>, MachineError> {
        self.vcpu_check(caller.dom, caller.vcpu)?;
        let Machine { mem, core, .. } = self;
        if core
            .vcpu(caller)
            .is_some_and(|v| v.vcpu_info_frame.is_some())
        {
            return Ok(Err(Errno::EBUSY));
        }
        if !core.frames.get_page(mfn, caller.dom) {
            return Ok(Err(Errno::EINVAL));
        }
        if core.get_page_type(mem, mfn, PageType::Writable).is_err() {
            core.frames.put_page(mfn);
            return Ok(Err(Errno::EACCES));
        }
        if let Some(v) = core.vcpu_mut(caller) {
            v.vcpu_info_frame = Some(mfn);
        }
        Ok(Ok(()))
    }

    /// Registers frame `mfn` as the domain's PIRQ EOI bitmap (Xen's
    /// `PHYSDEVOP_pirq_eoi_gmfn_v1/v2`): -EINVAL if the frame is not the caller's or
    /// cannot take the writable type, -EBUSY if the domain already has one (the
    /// references just taken are dropped again). On success it holds a general and a
    /// writable type reference until teardown.
    ///
    /// ```
    /// use pvmmu::{Caller, DomainConfig, Errno, Machine, MachineConfig, Mfn};
    /// use vm_memory::{GuestAddress, GuestMemoryMmap};
    /// let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
    /// let mut m = Machine::new(mem, MachineConfig::default())?;
    /// let d = m.create_domain(DomainConfig::new(1))?;
    /// m.assign_frames(d, (0x10..0x20).map(Mfn))?;
    /// let me = Caller::new(d, 0);
    /// assert_eq!(m.register_pirq_eoi_map(me, Mfn(0x30))?, Err(Errno::EINVAL), "not ours");
    /// assert_eq!(m.register_pirq_eoi_map(me, Mfn(0x12))?, Ok(()));
    /// assert_eq!(m.register_pirq_eoi_map(me, Mfn(0x13))?, Err(Errno::EBUSY));
    /// assert_eq!(m.frames().get(Mfn(0x13)).unwrap().type_count, 0);
    /// assert!(m.audit().is_ok());
    /// # Ok::<(), pvmmu::MachineError>(())
    /// ```
    pub fn register_pirq_eoi_map(
        &mut self,
        caller: Caller,
        mfn: Mfn,
    ) -> Result<Result<(), Errno>, MachineError> {
        self.vcpu_check(caller.dom, caller.vcpu)?;
        let Machine { mem, core, .. } = self;
        if core.frames.get(mfn).is_none()
            || core
                .get_page_and_type(mem, mfn, caller.dom, PageType::Writable)
                .is_err()
        {
            return Ok(Err(Errno::EINVAL));
        }
        let Some(d) = core.domains.get_mut(&caller.dom) else {
            return Err(MachineError::NoDomain(caller.dom));
        };
        if d.pirq_eoi_frame.is_some() {
            core.put_page_and_type(mem, mfn);
            return Ok(Err(Errno::EBUSY));
        }
        d.pirq_eoi_frame = Some(mfn);
        Ok(Ok(()))
    }
}
