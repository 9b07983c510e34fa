//! Frames leaving and joining a live domain, as Xen's `memory_op` moves them for a PV
//! (non-translated) domain, whose frame numbers are machine frames:
//! `XENMEM_decrease_reservation` ([`Machine::decrease_reservation`]),
//! `increase_reservation` and `populate_physmap` ([`Machine::increase_reservation`],
//! [`Machine::populate_physmap`]).
//!
//! Xen's rules kept here:
//! - giving a frame back drops only its allocation reference (`guest_remove_page`): a
//!   frame still mapped, pinned or otherwise referenced stays the domain's, typed as it
//!   is, until its last reference goes; then it is free (owner cleared) and may be
//!   handed out again. A frame that is not RAM is -EPERM (a PV domain's "MMIO"), one
//!   that is not the domain's -ENXIO; the batch stops at the first failing extent and
//!   reports how many extents were done. Pages the hypervisor shares with the domain
//!   (grant frames) are its to keep: giving one back leaves it shared, as Xen's
//!   xenheap pages are never freed by the guest.
//! - new frames come from the free pool, `2^order` naturally aligned contiguous frames
//!   per extent, and only up to the domain's `max_pages` (Xen's `assign_pages`
//!   refusal); orders above 9 (Xen's domU limit, 2 MiB) are refused up front.
//!   `populate_physmap` also records each new frame's pseudo-physical number in the
//!   M2P, as Xen does for a PV domain.

use pvmmu_abi::Errno;
use vm_memory::GuestMemory;

use crate::entry::Mfn;
use crate::flush::TlbFlush;
use crate::machine::{Machine, MachineError};

/// Largest extent order a domU may ask for (Xen's `CONFIG_DOMU_MAX_ORDER`).
pub const DOMU_MAX_ORDER: u32 = 9;

/// How a reservation batch or an exchange ended: extents done, the frames obtained, and
/// the error that stopped it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReservationOutcome {
    /// Extents completed (what Xen's `memory_op` returns); for an exchange, the input
    /// extents exchanged (Xen's `nr_exchanged`).
    pub done: usize,
    /// First frame of each extent obtained (increase, populate, and an exchange's
    /// output extents), in order.
    pub frames: Vec<Mfn>,
    /// Why it stopped early, if it did.
    pub stopped: Option<Errno>,
}

impl<M: GuestMemory, F: TlbFlush> Machine<M, F> {
    /// Caps domain `dom`'s pages (Xen's `max_pages`, set by the toolstack): new frames
    /// are refused beyond it. `None`: no cap.
    pub fn set_max_pages(&mut self, dom: u16, max: Option<u64>) -> Result<(), MachineError> {
        self.core
            .domains
            .get_mut(&dom)
            .ok_or(MachineError::NoDomain(dom))?
            .max_pages = max;
        Ok(())
    }

    /// Pages domain `dom` holds (Xen's `tot_pages`): its frames, including those given
    /// back but still referenced (they leave when freed), not those the hypervisor
    /// shares with it.
    pub fn tot_pages(&self, dom: u16) -> u64 {
        self.core
            .frames
            .iter()
            .filter(|(_, p)| p.owner == dom && p.count > 0 && !p.shared)
            .count() as u64
    }

    /// `XENMEM_decrease_reservation` for domain `dom`: gives back the extents of
    /// `2^order` frames starting at each of `gmfns`.
    ///
    /// ```
    /// use pvmmu::{DomainConfig, Errno, Machine, MachineConfig, Mfn};
    /// use vm_memory::{GuestAddress, GuestMemoryMmap};
    /// let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
    /// let mut m = Machine::new(mem, MachineConfig::default())?;
    /// let d = m.create_domain(DomainConfig::new(1))?;
    /// m.assign_frames(d, (0x10..0x20).map(Mfn))?;
    /// let o = m.decrease_reservation(d, &[0x12, 0x14, 0x30, 0x15], 0)?;
    /// assert_eq!((o.done, o.stopped), (2, Some(Errno::ENXIO)), "0x30 is not ours");
    /// assert_eq!(m.frames().get(Mfn(0x12)).unwrap().count, 0, "free again");
    /// assert_eq!(m.tot_pages(d), 14);
    /// # Ok::<(), pvmmu::MachineError>(())
    /// ```
    pub fn decrease_reservation(
        &mut self,
        dom: u16,
        gmfns: &[u64],
        order: u32,
    ) -> Result<ReservationOutcome, MachineError> {
        if !self.core.domains.contains_key(&dom) {
            return Err(MachineError::NoDomain(dom));
        }
        let mut out = ReservationOutcome::default();
        if order > DOMU_MAX_ORDER {
            return Ok(out);
        }
        for &gmfn in gmfns {
            for j in 0..1u64 << order {
                if let Err(e) = self.remove_page(dom, gmfn.wrapping_add(j)) {
                    out.stopped = Some(e);
                    return Ok(out);
                }
            }
            out.done += 1;
        }
        Ok(out)
    }

    /// Xen's `guest_remove_page` for a PV domain.
    fn remove_page(&mut self, dom: u16, mfn: u64) -> Result<(), Errno> {
        let mfn = Mfn(mfn);
        let Some(p) = self.core.frames.get(mfn) else {
            return Err(Errno::EPERM); // not RAM: I/O memory for a PV domain
        };
        if !self.core.frames.get_page(mfn, dom) {
            return Err(Errno::ENXIO);
        }
        if p.allocated && !p.shared {
            if let Some(mut q) = self.core.frames.get_mut(mfn) {
                q.allocated = false;
            }
            self.core.frames.put_page(mfn);
        }
        self.core.frames.put_page(mfn);
        Ok(())
    }

    /// `XENMEM_increase_reservation` for domain `dom`: `extents` new extents of
    /// `2^order` frames from the free pool.
    pub fn increase_reservation(
        &mut self,
        dom: u16,
        extents: usize,
        order: u32,
    ) -> Result<ReservationOutcome, MachineError> {
        self.allocate_extents(dom, extents, order, |_, _| {})
    }

    /// `XENMEM_populate_physmap` for domain `dom`: a new extent of `2^order` frames for
    /// each pseudo-physical frame of `gpfns`, recorded in the M2P (frame `j` of the
    /// extent as `gpfn + j`).
    ///
    /// ```
    /// use pvmmu::{DomainConfig, Machine, MachineConfig, Mfn};
    /// use vm_memory::{GuestAddress, GuestMemoryMmap};
    /// let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
    /// let mut m = Machine::new(mem, MachineConfig::default())?;
    /// let d = m.create_domain(DomainConfig::new(1))?;
    /// m.assign_frames(d, (0x10..0x20).map(Mfn))?;
    /// m.set_max_pages(d, Some(17))?;
    /// let o = m.populate_physmap(d, &[0x40, 0x41], 0)?;
    /// assert_eq!(o.done, 1, "one frame below max_pages");
    /// assert_eq!(m.frames().m2p(o.frames[0]), Some(0x40));
    /// assert!(m.audit().is_ok());
    /// # Ok::<(), pvmmu::MachineError>(())
    /// ```
    pub fn populate_physmap(
        &mut self,
        dom: u16,
        gpfns: &[u64],
        order: u32,
    ) -> Result<ReservationOutcome, MachineError> {
        let gpfns = gpfns.to_vec();
        self.allocate_extents(dom, gpfns.len(), order, |m, (i, first)| {
            for j in 0..1u64 << order {
                let pfn = gpfns[i].wrapping_add(j);
                m.set_m2p(Mfn(first.0 + j), pfn);
            }
        })
    }

    fn allocate_extents(
        &mut self,
        dom: u16,
        extents: usize,
        order: u32,
        mut each: impl FnMut(&mut Self, (usize, Mfn)),
    ) -> Result<ReservationOutcome, MachineError> {
        let d = self
            .core
            .domains
            .get(&dom)
            .ok_or(MachineError::NoDomain(dom))?;
        let max = d.max_pages;
        let mut out = ReservationOutcome::default();
        if order > DOMU_MAX_ORDER {
            return Ok(out);
        }
        let size = 1u64 << order;
        let mut tot = self.tot_pages(dom);
        let mut from = 0u64;
        for i in 0..extents {
            if max.is_some_and(|m| tot + size > m) {
                out.stopped = Some(Errno::ENOMEM);
                break;
            }
            let Some(first) = self.free_block(from, size) else {
                out.stopped = Some(Errno::ENOMEM);
                break;
            };
            self.give_block(dom, first, size);
            tot += size;
            from = first + size;
            each(self, (i, Mfn(first)));
            out.frames.push(Mfn(first));
            out.done += 1;
        }
        Ok(out)
    }

    /// Gives the free block of `size` frames from `first` to `dom`, each with its
    /// allocation reference, once no TLB may still translate it (Xen's TLB-flush filter
    /// on allocation).
    fn give_block(&mut self, dom: u16, first: u64, size: u64) {
        for f in first..first + size {
            self.core.flush_before_type_change(Mfn(f));
            let _ = self.core.frames.allocate(Mfn(f), dom);
        }
    }

    /// The lowest free, naturally aligned block of `size` frames at or above `from`.
    fn free_block(&self, from: u64, size: u64) -> Option<u64> {
        let n = self.core.frames.len() as u64;
        let mut start = from.div_ceil(size) * size;
        while start + size <= n {
            let busy = (start..start + size).rev().find(|&f| {
                !self
                    .core
                    .frames
                    .get(Mfn(f))
                    .is_some_and(|p| p.count == 0 && p.owner == pvmmu_abi::DOMID_INVALID)
            });
            match busy {
                None => return Some(start),
                Some(b) => start = (b / size + 1) * size,
            }
        }
        None
    }
}

impl<M: GuestMemory, F: TlbFlush> Machine<M, F> {
    /// `XENMEM_exchange` for domain `dom` (Xen's `memory_exchange`, the lists already
    /// read): the input extents of `2^in_order` frames at `in_gmfns` are traded, chunk
    /// by chunk, for new output extents of `2^out_order` frames recorded in the M2P at
    /// `out_gpfns`. A chunk is all or nothing: every input frame must be the domain's
    /// with no reference but its allocation (Xen's `steal_page`: not mapped, not typed,
    /// not shared, listed once; else -EINVAL, XSA-212's class), and the outputs must be
    /// available (-ENOMEM); exchanged inputs are freed with their type discarded. The
    /// domain's page count does not change, so `max_pages` does not apply. The caller
    /// has checked the sizes (`in_gmfns.len() << in_order` equal to
    /// `out_gpfns.len() << out_order`, orders at most 9).
    ///
    /// ```
    /// use pvmmu::{DomainConfig, Machine, MachineConfig, Mfn};
    /// use vm_memory::{GuestAddress, GuestMemoryMmap};
    /// let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
    /// let mut m = Machine::new(mem, MachineConfig::default())?;
    /// let d = m.create_domain(DomainConfig::new(1))?;
    /// m.assign_frames(d, (0x10..0x20).map(Mfn))?;
    /// // Four single frames for one naturally aligned 4-frame extent at pfn 0x100.
    /// let o = m.exchange(d, &[0x11, 0x13, 0x15, 0x17], 0, &[0x100], 2)?;
    /// assert_eq!((o.done, o.stopped), (4, None));
    /// assert_eq!(o.frames[0].0 % 4, 0);
    /// assert_eq!(m.frames().m2p(Mfn(o.frames[0].0 + 3)), Some(0x103));
    /// assert_eq!(m.frames().get(Mfn(0x11)).unwrap().count, 0, "the inputs are free");
    /// assert_eq!(m.tot_pages(d), 16);
    /// # Ok::<(), pvmmu::MachineError>(())
    /// ```
    pub fn exchange(
        &mut self,
        dom: u16,
        in_gmfns: &[u64],
        in_order: u32,
        out_gpfns: &[u64],
        out_order: u32,
    ) -> Result<ReservationOutcome, MachineError> {
        if !self.core.domains.contains_key(&dom) {
            return Err(MachineError::NoDomain(dom));
        }
        let mut out = ReservationOutcome::default();
        if in_order > DOMU_MAX_ORDER || out_order > DOMU_MAX_ORDER {
            out.stopped = Some(Errno::EPERM);
            return Ok(out);
        }
        let (in_chunk, out_chunk) = if in_order <= out_order {
            (1usize << (out_order - in_order), 1usize)
        } else {
            (1usize, 1usize << (in_order - out_order))
        };
        let chunks = in_gmfns.len() / in_chunk;
        for i in 0..chunks {
            // The chunk's input frames: each the domain's, with only its allocation
            // reference, listed once.
            let mut inputs = Vec::new();
            for &g in &in_gmfns[i * in_chunk..(i + 1) * in_chunk] {
                for k in 0..1u64 << in_order {
                    inputs.push(Mfn(g.wrapping_add(k)));
                }
            }
            let mut seen = std::collections::HashSet::new();
            let stealable = inputs.iter().all(|&f| {
                seen.insert(f.0)
                    && self.core.frames.get(f).is_some_and(|p| {
                        p.owner == dom && p.allocated && !p.shared && p.count == 1 && !p.pinned
                    })
            });
            if !stealable {
                out.stopped = Some(Errno::EINVAL);
                return Ok(out);
            }
            // The chunk's outputs, all found before anything changes.
            let size = 1u64 << out_order;
            let mut blocks = Vec::new();
            let mut from = 0;
            for _ in 0..out_chunk {
                match self.free_block(from, size) {
                    Some(b) => {
                        blocks.push(b);
                        from = b + size;
                    }
                    None => {
                        out.stopped = Some(Errno::ENOMEM);
                        return Ok(out);
                    }
                }
            }
            // Beyond this point the chunk cannot fail: the inputs go (type discarded),
            // the outputs are the domain's, recorded in the M2P.
            for &f in &inputs {
                if let Some(mut p) = self.core.frames.get_mut(f) {
                    p.allocated = false;
                    p.type_count = 0;
                }
                self.core.frames.put_page(f);
            }
            for (j, &b) in blocks.iter().enumerate() {
                let gpfn = out_gpfns.get(i * out_chunk + j).copied().unwrap_or(0);
                self.give_block(dom, b, size);
                for k in 0..size {
                    self.set_m2p(Mfn(b + k), gpfn.wrapping_add(k));
                }
                out.frames.push(Mfn(b));
            }
            out.done = (i + 1) * in_chunk;
        }
        Ok(out)
    }
}
