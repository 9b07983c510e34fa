//! Rights that change while a domain runs, as a toolstack changes them through Xen's
//! domctls: I/O-memory ranges (`XEN_DOMCTL_iomem_permission`), I/O-port access
//! (`XEN_DOMCTL_ioport_permission`, here one right for all ports), control privilege,
//! and the domain a device model serves (`XEN_DOMCTL_set_target`).
//!
//! As in Xen, a right is consulted when a mapping is made, never afterwards: revoking
//! I/O-memory access leaves the guest's existing mappings of those frames in place (they
//! hold no references; Xen's domctl changes only the rangeset and walks no page table)
//! until the guest replaces them, and a mapping of another domain's frame made with a
//! privilege keeps its references until it is removed or the domain is torn down. The
//! embedder that wants old mappings gone tears the domain down or has the guest
//! remove them. Without I/O rights a domain's L1 entries may not carry PAT/PCD/PWT again
//! (Xen's `l1_disallow_mask`), for new entries.

use std::ops::RangeInclusive;

use vm_memory::GuestMemory;

use crate::flush::TlbFlush;
use crate::machine::{Machine, MachineError};

impl<M: GuestMemory, F: TlbFlush> Machine<M, F> {
    /// Lets domain `dom` map I/O-memory frames `frames` (from now on).
    ///
    /// ```
    /// use pvmmu::{DomainConfig, Machine, MachineConfig};
    /// use vm_memory::{GuestAddress, GuestMemoryMmap};
    /// let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
    /// let mut m = Machine::new(mem, MachineConfig::default())?;
    /// let d = m.create_domain(DomainConfig::new(1))?;
    /// m.permit_iomem(d, 0xfe000..=0xfe00f)?;
    /// m.revoke_iomem(d, 0xfe004..=0xfe007)?;
    /// let dom = m.domain(d).unwrap();
    /// assert!(dom.iomem_permitted(0xfe003) && !dom.iomem_permitted(0xfe005));
    /// assert!(dom.iomem_permitted(0xfe008));
    /// # Ok::<(), pvmmu::MachineError>(())
    /// ```
    pub fn permit_iomem(
        &mut self,
        dom: u16,
        frames: RangeInclusive<u64>,
    ) -> Result<(), MachineError> {
        let d = self.domain_mut(dom)?;
        if !frames.is_empty() {
            d.config.iomem.push(frames);
        }
        Ok(())
    }

    /// Withdraws domain `dom`'s right to map I/O-memory frames `frames` (from now on;
    /// existing mappings stay, see the module documentation).
    pub fn revoke_iomem(
        &mut self,
        dom: u16,
        frames: RangeInclusive<u64>,
    ) -> Result<(), MachineError> {
        let d = self.domain_mut(dom)?;
        let (lo, hi) = (*frames.start(), *frames.end());
        let mut kept = Vec::new();
        for r in d.config.iomem.drain(..) {
            let (a, b) = (*r.start(), *r.end());
            if b < lo || a > hi || lo > hi {
                kept.push(r);
                continue;
            }
            if a < lo {
                kept.push(a..=lo - 1);
            }
            if b > hi {
                kept.push(hi + 1..=b);
            }
        }
        d.config.iomem = kept;
        Ok(())
    }

    /// Grants or withdraws domain `dom`'s I/O-port access.
    pub fn set_ioport_access(&mut self, dom: u16, allowed: bool) -> Result<(), MachineError> {
        self.domain_mut(dom)?.config.ioports = allowed;
        Ok(())
    }

    /// Makes domain `dom` a control domain, or not.
    pub fn set_privileged(&mut self, dom: u16, privileged: bool) -> Result<(), MachineError> {
        self.domain_mut(dom)?.config.privileged = privileged;
        Ok(())
    }

    /// Makes domain `dom` the device model of `target` (which must exist), or of none.
    pub fn set_device_model_target(
        &mut self,
        dom: u16,
        target: Option<u16>,
    ) -> Result<(), MachineError> {
        if let Some(t) = target
            && !self.core.domains.contains_key(&t)
        {
            return Err(MachineError::NoDomain(t));
        }
        self.domain_mut(dom)?.config.device_model_of = target;
        Ok(())
    }

    fn domain_mut(&mut self, dom: u16) -> Result<&mut crate::domain::Domain, MachineError> {
        self.core
            .domains
            .get_mut(&dom)
            .ok_or(MachineError::NoDomain(dom))
    }
}
