//! Grant mappings: the PV MMU half of `GNTTABOP_map_grant_ref`, `unmap_grant_ref` and
//! `unmap_and_replace` (Xen's `map_grant_ref` from the frame onward, `unmap_common`,
//! `unmap_common_complete`, and PV's `create_grant_pv_mapping` /
//! `replace_grant_pv_mapping`).
//!
//! The embedder keeps the grant table itself (the shared entries, their
//! `GTF_reading`/`GTF_writing` status, the per-reference pin counts) and resolves a
//! grant reference to a frame; the library then takes the references a mapping needs,
//! writes the host mapping's PTE and records the mapping under a handle (Xen's
//! maptrack). Reference counts, as Xen keeps them for a PV mapper:
//! - every mapping holds a general reference, and a writable type reference unless
//!   read-only, for each of its halves: the device half (`GNTMAP_device_map`) is held
//!   by the mapping record, the host half (`GNTMAP_host_map`) belongs to the PTE once it
//!   is written, exactly as if the guest had written that PTE with `mmu_update`. So a
//!   guest that overwrites a grant PTE itself drops those references (Xen's release
//!   build does the same: its `_PAGE_GNTTAB` marker exists only in debug builds), and the
//!   audit counts host halves through the page tables and device halves through the
//!   records.
//! - a host mapping's PTE is `P|A|D|NX`, `RW` unless read-only, `U` for
//!   `GNTMAP_application_map`, the guest's available bits from the flags' top half, then
//!   adjusted as every 64-bit PV L1 entry is. It replaces whatever the entry held (whose
//!   references are dropped), with no check of the old entry: the L1 must only be the
//!   mapper's own validated L1.
//! - unmapping a host half checks that the PTE still maps the frame with the mapping's
//!   present and writable bits (XSA-234) before clearing it (or moving another
//!   address's PTE into it, `unmap_and_replace`); the references go only after the
//!   flush that follows the batch ([`Machine::grant_unmap_complete`]).

use pvmmu_abi::grant::{
    GNTMAP_application_map, GNTMAP_contains_pte, GNTMAP_device_map, GNTMAP_guest_avail0_shift,
    GNTMAP_host_map, GNTMAP_readonly, GNTST_bad_dev_addr, GNTST_bad_handle, GNTST_bad_page,
    GNTST_general_error, GNTST_no_space,
};
use pvmmu_abi::pte::{
    PAGE_ACCESSED, PAGE_AVAIL, PAGE_DIRTY, PAGE_NX, PAGE_PRESENT, PAGE_RW, PAGE_USER,
};
use vm_memory::GuestMemory;

use crate::batch::Caller;
use crate::entry::{Mfn, Pte};
use crate::flush::{FlushReason, FlushScope, TlbFlush};
use crate::frame::{Owner, PageType};
use crate::machine::{Core, Machine, MachineError};
use crate::mmuext::Root;
use crate::paging::Level;
use crate::table::visit_table;
use crate::validate::adjust;

pub use crate::maptrack::{GrantMapping, MAPTRACK_LIMIT};

/// A `GNTST_*` status (the constants of [`pvmmu_abi::grant`]).
pub type GrantStatus = i16;

/// A grant to map, resolved by the embedder from the granting domain's table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GrantMapRequest {
    /// The granting domain.
    pub granter: u16,
    /// The grant reference.
    pub gref: u32,
    /// The granted frame (the entry's frame: for a PV granter, a machine frame).
    pub mfn: Mfn,
    /// `GNTMAP_*` from the guest's request (device and/or host, read-only, ...).
    pub flags: u32,
    /// Where to map the host half: a linear address in the mapper's current tables, or
    /// with `GNTMAP_contains_pte` the machine address of the L1 entry to write.
    pub host_addr: u64,
    /// Whether the reference had no mapping before (Xen resolves the frame then, and a
    /// frame not the granter's is `GNTST_bad_page` rather than a general error).
    pub first_pin: bool,
}

/// What one unmap did, to be completed after the flush ([`Machine::grant_unmap_complete`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GrantUnmapped {
    /// The granting domain.
    pub granter: u16,
    /// The grant reference.
    pub gref: u32,
    /// The frame.
    pub mfn: Mfn,
    /// The halves unmapped (`GNTMAP_host_map` and/or `GNTMAP_device_map`), with
    /// `GNTMAP_readonly` if the mapping was read-only; 0 if nothing was.
    pub done: u32,
}

/// Xen's `grant_to_pte_flags` for a RAM frame (no cache attributes).
fn grant_pte_flags(flags: u32) -> u64 {
    let mut f = PAGE_PRESENT | PAGE_ACCESSED | PAGE_DIRTY | PAGE_NX;
    if flags & GNTMAP_application_map != 0 {
        f |= PAGE_USER;
    }
    if flags & GNTMAP_readonly == 0 {
        f |= PAGE_RW;
    }
    f | (u64::from(flags >> GNTMAP_guest_avail0_shift) << 9) & PAGE_AVAIL
}

impl<F: TlbFlush> Core<F> {
    /// The L1 entry a host mapping at `addr` writes: the mapper's own validated L1 found
    /// by the linear address, or named by machine address (`GNTMAP_contains_pte`, 8-byte
    /// aligned).
    fn grant_l1e<M: GuestMemory + ?Sized>(
        &self,
        mem: &M,
        caller: Caller,
        addr: u64,
        contains_pte: bool,
    ) -> Option<(Mfn, usize)> {
        if !contains_pte {
            let root = self.vcpu_root(caller, Root::Kernel);
            return self.guest_l1e(mem, root, addr, caller.dom).ok();
        }
        if !addr.is_multiple_of(8) {
            return None;
        }
        let table = Mfn(addr >> 12);
        match self.frames.get(table) {
            Some(p)
                if p.owner == caller.dom
                    && p.count > 0
                    && p.ty == PageType::L1
                    && p.validated
                    && p.type_count > 0 =>
            {
                Some((table, (addr & 0xfff) as usize / 8))
            }
            _ => None,
        }
    }

    /// Stores `new` in entry `idx` of L1 `table` as Xen's `UPDATE_ENTRY` does for grant
    /// PTEs (no reference taken for `new`); returns the old entry.
    fn swap_l1e<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
        d: Owner,
        table: Mfn,
        idx: usize,
        new: u64,
    ) -> Option<u64> {
        let old = visit_table(mem, table, Level::L1, |b| {
            let old = b.get(idx).raw();
            b.set(idx, Pte(new));
            old
        })
        .ok()?;
        self.note_stale(d, old, new, Some(table.addr() + idx as u64 * 8));
        Some(old)
    }

    /// Xen's `create_grant_pv_mapping`.
    fn create_grant_mapping<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
        caller: Caller,
        addr: u64,
        mfn: Mfn,
        flags: u32,
    ) -> Result<(), GrantStatus> {
        let new = adjust(Level::L1, mfn.addr() | grant_pte_flags(flags));
        let (table, idx) = self
            .grant_l1e(mem, caller, addr, flags & GNTMAP_contains_pte != 0)
            .ok_or(GNTST_general_error)?;
        let old = self
            .swap_l1e(mem, caller.dom, table, idx, new)
            .ok_or(GNTST_general_error)?;
        self.put_page_from_l1e(old, caller.dom);
        Ok(())
    }

    /// Xen's `replace_grant_pv_mapping`: clears the host mapping at `addr` (or moves the
    /// PTE at `new_addr` into it) if it still maps `mfn` with the grant's present and
    /// writable bits.
    fn replace_grant_mapping<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
        caller: Caller,
        addr: u64,
        mfn: Mfn,
        new_addr: u64,
        flags: u32,
    ) -> Result<(), GrantStatus> {
        let want = grant_pte_flags(flags);
        let contains_pte = flags & GNTMAP_contains_pte != 0;
        if contains_pte && new_addr != 0 {
            return Err(GNTST_general_error);
        }
        // The PTE moved in, stolen from `new_addr` (its references come with it).
        let mut moved = 0;
        if new_addr != 0 {
            let (t, i) = self
                .grant_l1e(mem, caller, new_addr, false)
                .ok_or(GNTST_general_error)?;
            moved = self
                .swap_l1e(mem, caller.dom, t, i, 0)
                .ok_or(GNTST_general_error)?;
        }
        let done = (|| {
            let (table, idx) = self.grant_l1e(mem, caller, addr, contains_pte)?;
            let old = visit_table(mem, table, Level::L1, |b| b.get(idx)).ok()?;
            if old.mfn() != mfn || (old.raw() ^ want) & (PAGE_PRESENT | PAGE_RW) != 0 {
                log::debug!("grant unmap: PTE {old} at {addr:#x} does not match {mfn}");
                return None;
            }
            self.swap_l1e(mem, caller.dom, table, idx, moved)
        })();
        if done.is_none() {
            // Still responsible for the stolen PTE: its references go.
            self.put_page_from_l1e(moved, caller.dom);
            return Err(GNTST_general_error);
        }
        Ok(())
    }
}

impl<M: GuestMemory, F: TlbFlush> Machine<M, F> {
    /// Whether `dom` has no mapping handle left (`GNTST_no_space`, checked by Xen before
    /// the grant reference).
    pub fn grant_maptrack_full(&self, dom: u16) -> bool {
        self.core
            .domains
            .get(&dom)
            .is_none_or(|d| d.maptrack.full())
    }

    /// The grant mapping `handle` of domain `dom`.
    pub fn grant_mapping(&self, dom: u16, handle: u32) -> Option<GrantMapping> {
        self.core.domains.get(&dom)?.maptrack.get(handle).copied()
    }

    /// Every grant mapping of domain `dom`, by handle.
    pub fn grant_mappings(&self, dom: u16) -> Vec<(u32, GrantMapping)> {
        self.core
            .domains
            .get(&dom)
            .map(|d| d.maptrack.iter().map(|(h, m)| (h, *m)).collect())
            .unwrap_or_default()
    }

    /// Maps a grant for `caller` (Xen's `map_grant_ref` once the embedder has checked
    /// the flags, the domains, the reference and pinned the entry): takes the frame's
    /// references, writes the host mapping, records the mapping. Returns its handle, or
    /// the status with nothing changed.
    ///
    /// ```
    /// use pvmmu::grant::GrantMapRequest;
    /// use pvmmu::{Caller, DomainConfig, Machine, MachineConfig, Mfn};
    /// use pvmmu_abi::grant::{GNTMAP_device_map, GNTST_bad_page};
    /// use vm_memory::{GuestAddress, GuestMemoryMmap};
    /// let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
    /// let mut m = Machine::new(mem, MachineConfig::default())?;
    /// let d = m.create_domain(DomainConfig::new(1))?;
    /// m.assign_frames(d, (0x10..0x20).map(Mfn))?;
    /// let me = Caller::new(d, 0);
    /// let req = GrantMapRequest { granter: d, gref: 8, mfn: Mfn(0x12), flags: GNTMAP_device_map,
    ///     host_addr: 0, first_pin: true };
    /// let h = m.grant_map(me, req)?.unwrap();
    /// assert_eq!(m.frames().get(Mfn(0x12)).unwrap().type_count, 1, "writable device map");
    /// let bad = GrantMapRequest { mfn: Mfn(0x30), ..req };
    /// assert_eq!(m.grant_map(me, bad)?, Err(GNTST_bad_page), "not the granter's frame");
    /// let u = m.grant_unmap(me, h, 0, 0x12000, 0)?.unwrap();
    /// m.grant_unmap_complete(me, &[u])?;
    /// assert_eq!(m.frames().get(Mfn(0x12)).unwrap().type_count, 0);
    /// assert!(m.audit().is_ok());
    /// # Ok::<(), pvmmu::MachineError>(())
    /// ```
    pub fn grant_map(
        &mut self,
        caller: Caller,
        req: GrantMapRequest,
    ) -> Result<Result<u32, GrantStatus>, MachineError> {
        self.vcpu_check(caller.dom, caller.vcpu)?;
        if self.grant_maptrack_full(caller.dom) {
            return Ok(Err(GNTST_no_space));
        }
        let Machine { mem, core, .. } = self;
        let (mfn, flags) = (req.mfn, req.flags);
        let readonly = flags & GNTMAP_readonly != 0;
        let (device, host) = (flags & GNTMAP_device_map != 0, flags & GNTMAP_host_map != 0);
        // The frame's first reference: the granter's frame (a new pin resolves it and
        // refuses anything else as a bad page; a frame that changed hands since cannot
        // be pinned).
        if !core.frames.get_page(mfn, req.granter) {
            return Ok(Err(if req.first_pin {
                GNTST_bad_page
            } else {
                GNTST_general_error
            }));
        }
        let (mut refs, mut types) = (1u32, 0u32);
        let mut result = Ok(());
        if device && !readonly {
            if core.get_page_type(mem, mfn, PageType::Writable).is_ok() {
                types += 1;
            } else {
                result = Err(GNTST_general_error);
            }
        }
        if result.is_ok() && host {
            if device {
                if core.frames.get_page(mfn, req.granter) {
                    refs += 1;
                } else {
                    result = Err(GNTST_general_error);
                }
            }
            if result.is_ok() && !readonly {
                if core.get_page_type(mem, mfn, PageType::Writable).is_ok() {
                    types += 1;
                } else {
                    result = Err(GNTST_general_error);
                }
            }
            if result.is_ok() {
                result = core.create_grant_mapping(mem, caller, req.host_addr, mfn, flags);
            }
        }
        let record = GrantMapping {
            granter: req.granter,
            gref: req.gref,
            flags,
            mfn,
        };
        let handle = match result {
            Ok(()) => core
                .domains
                .get_mut(&caller.dom)
                .and_then(|d| d.maptrack.insert(record)),
            Err(_) => None,
        };
        if let Some(h) = handle {
            return Ok(Ok(h));
        }
        for _ in 0..types {
            core.put_page_type(mem, mfn);
        }
        for _ in 0..refs {
            core.frames.put_page(mfn);
        }
        Ok(Err(result.err().unwrap_or(GNTST_no_space)))
    }

    /// Unmaps halves of grant mapping `handle` (Xen's `unmap_common`): the host half if
    /// `host_addr` is not 0 (clearing the PTE there, or moving the PTE at `new_addr`
    /// into it), the device half if `dev_bus_addr` is not 0 (it must be the frame's
    /// address). The references go in [`Machine::grant_unmap_complete`], after the flush
    /// Xen issues once per batch.
    pub fn grant_unmap(
        &mut self,
        caller: Caller,
        handle: u32,
        host_addr: u64,
        dev_bus_addr: u64,
        new_addr: u64,
    ) -> Result<Result<GrantUnmapped, GrantStatus>, MachineError> {
        self.vcpu_check(caller.dom, caller.vcpu)?;
        let Machine { mem, core, .. } = self;
        let Some(map) = core
            .domains
            .get(&caller.dom)
            .and_then(|d| d.maptrack.get(handle))
            .copied()
        else {
            return Ok(Err(GNTST_bad_handle));
        };
        let mut out = GrantUnmapped {
            granter: map.granter,
            gref: map.gref,
            mfn: map.mfn,
            done: 0,
        };
        let ro = map.flags & GNTMAP_readonly;
        if dev_bus_addr != 0 && map.flags & GNTMAP_device_map != 0 && dev_bus_addr != map.mfn.addr()
        {
            return Ok(Err(GNTST_bad_dev_addr));
        }
        let mut left = map.flags;
        if host_addr != 0 && map.flags & GNTMAP_host_map != 0 {
            if let Err(s) =
                core.replace_grant_mapping(mem, caller, host_addr, map.mfn, new_addr, map.flags)
            {
                return Ok(Err(s));
            }
            left &= !GNTMAP_host_map;
            out.done |= GNTMAP_host_map | ro;
        }
        if dev_bus_addr != 0 && map.flags & GNTMAP_device_map != 0 {
            left &= !GNTMAP_device_map;
            out.done |= GNTMAP_device_map | ro;
        }
        if let Some(d) = core.domains.get_mut(&caller.dom) {
            if left & (GNTMAP_host_map | GNTMAP_device_map) == 0 {
                d.maptrack.remove(handle);
            } else if let Some(m) = d.maptrack.get_mut(handle) {
                m.flags = left;
            }
        }
        Ok(Ok(out))
    }

    /// Completes a batch of unmaps (Xen's `gnttab_flush_tlb` then
    /// `unmap_common_complete` for each): flushes every vCPU of `caller`'s domain, then
    /// drops the references each unmapped half held.
    pub fn grant_unmap_complete(
        &mut self,
        caller: Caller,
        done: &[GrantUnmapped],
    ) -> Result<(), MachineError> {
        self.vcpu_check(caller.dom, caller.vcpu)?;
        let Machine { mem, core, .. } = self;
        let all = core.all_vcpus(caller.dom);
        core.flush(caller.dom, all, FlushScope::All, FlushReason::GrantUnmap);
        for u in done {
            for half in [GNTMAP_device_map, GNTMAP_host_map] {
                if u.done & half == 0 {
                    continue;
                }
                if u.done & GNTMAP_readonly == 0 {
                    core.put_page_type(mem, u.mfn);
                }
                core.frames.put_page(u.mfn);
            }
        }
        Ok(())
    }
}

impl<F: TlbFlush> Core<F> {
    /// Drops what the device halves of `dom`'s grant mappings hold (Xen's
    /// `gnttab_release_mappings` for a PV domain: host halves belong to their PTEs and
    /// go with the page tables). Returns the mappings, for the embedder's pins.
    pub(crate) fn release_grant_mappings<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
        dom: u16,
    ) -> Vec<GrantMapping> {
        let maps = self
            .domains
            .get_mut(&dom)
            .map(|d| d.maptrack.take_all())
            .unwrap_or_default();
        for m in &maps {
            if m.flags & GNTMAP_device_map != 0 {
                if m.flags & GNTMAP_readonly == 0 {
                    self.put_page_type(mem, m.mfn);
                }
                self.frames.put_page(m.mfn);
            }
        }
        maps
    }
}
