//! Guest pages the hypervisor keeps mapped (Xen's `map_guest_area` and friends): the
//! `vcpu_info` a guest moves into its own memory with `VCPUOP_register_vcpu_info`, the
//! runstate and time areas registered by guest-physical address
//! (`VCPUOP_register_runstate_phys_area`, `VCPUOP_register_vcpu_time_phys_area`), and
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

/// A per-vCPU area registered by guest-physical address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GuestArea {
    /// `struct vcpu_runstate_info` (`VCPUOP_register_runstate_phys_area`).
    Runstate,
    /// `struct vcpu_time_info` (`VCPUOP_register_vcpu_time_phys_area`).
    Time,
}

impl GuestArea {
    /// The size of the structure the area holds.
    pub const fn size(self) -> u64 {
        match self {
            GuestArea::Runstate => 48,
            GuestArea::Time => 32,
        }
    }
}

/// The address Xen's `map_guest_area` takes to mean "unregister".
pub const GUEST_AREA_NONE: u64 = u64::MAX;

impl<M: GuestMemory, F: TlbFlush> Machine<M, F> {
    /// Registers (or with [`GUEST_AREA_NONE`] unregisters) `area` of vCPU `target` at
    /// guest-physical address `gaddr`, with Xen's `map_guest_area` checks in order:
    /// -ENXIO if the structure would cross a page or `gaddr` is not 8-byte aligned,
    /// -EINVAL if the frame is not RAM of `target`'s domain, -EACCES if it cannot take
    /// the writable type. The frame then holds a general and a writable type
    /// reference; the one the area had before is released, as is everything at
    /// teardown. (For a PV domain the guest-physical address is the machine address.)
    ///
    /// ```
    /// use pvmmu::{Caller, DomainConfig, Errno, GuestArea, Machine, MachineConfig, Mfn};
    /// use vm_memory::{GuestAddress, GuestMemoryMmap};
    /// let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
    /// let mut m = Machine::new(mem, MachineConfig::default())?;
    /// let d = m.create_domain(DomainConfig::new(1))?;
    /// m.assign_frames(d, (0x10..0x20).map(Mfn))?;
    /// let me = Caller::new(d, 0);
    /// let area = GuestArea::Runstate;
    /// assert_eq!(m.map_guest_area(me, area, 0x12fe0)?, Err(Errno::ENXIO), "crosses a page");
    /// assert_eq!(m.map_guest_area(me, area, 0x12004)?, Err(Errno::ENXIO), "misaligned");
    /// assert_eq!(m.map_guest_area(me, area, 0x30000)?, Err(Errno::EINVAL), "not ours");
    /// assert_eq!(m.map_guest_area(me, area, 0x12040)?, Ok(()));
    /// assert_eq!(m.frames().get(Mfn(0x12)).unwrap().type_count, 1);
    /// assert_eq!(m.map_guest_area(me, area, 0x13000)?, Ok(()), "moved");
    /// assert_eq!(m.frames().get(Mfn(0x12)).unwrap().type_count, 0);
    /// assert_eq!(m.guest_area(me, area), Some(0x13000));
    /// assert_eq!(m.map_guest_area(me, area, pvmmu::GUEST_AREA_NONE)?, Ok(()));
    /// assert_eq!(m.guest_area(me, area), None);
    /// assert!(m.audit().is_ok());
    /// // Teardown releases a registered area.
    /// assert_eq!(m.map_guest_area(me, GuestArea::Time, 0x14000)?, Ok(()));
    /// m.destroy_domain(d)?;
    /// assert_eq!(m.frames().get(Mfn(0x14)).unwrap().count, 0);
    /// # Ok::<(), pvmmu::MachineError>(())
    /// ```
    pub fn map_guest_area(
        &mut self,
        target: Caller,
        area: GuestArea,
        gaddr: u64,
    ) -> Result<Result<(), Errno>, MachineError> {
        self.vcpu_check(target.dom, target.vcpu)?;
        let Machine { mem, core, .. } = self;
        let new = if gaddr == GUEST_AREA_NONE {
            None
        } else {
            let last = gaddr.checked_add(area.size() - 1);
            if last.is_none_or(|l| l >> 12 != gaddr >> 12) || !gaddr.is_multiple_of(8) {
                return Ok(Err(Errno::ENXIO));
            }
            let mfn = Mfn(gaddr >> 12);
            if !core.frames.get_page(mfn, target.dom) {
                return Ok(Err(Errno::EINVAL));
            }
            if core.get_page_type(mem, mfn, PageType::Writable).is_err() {
                core.frames.put_page(mfn);
                return Ok(Err(Errno::EACCES));
            }
            Some(gaddr)
        };
        let old = core.vcpu_mut(target).and_then(|v| {
            let slot = match area {
                GuestArea::Runstate => &mut v.runstate_phys_area,
                GuestArea::Time => &mut v.time_phys_area,
            };
            std::mem::replace(slot, new)
        });
        if let Some(old) = old {
            core.put_page_and_type(mem, Mfn(old >> 12));
        }
        Ok(Ok(()))
    }

    /// Where `area` of vCPU `target` is registered (guest-physical address).
    pub fn guest_area(&self, target: Caller, area: GuestArea) -> Option<u64> {
        let v = self.core.vcpu(target)?;
        match area {
            GuestArea::Runstate => v.runstate_phys_area,
            GuestArea::Time => v.time_phys_area,
        }
    }

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
