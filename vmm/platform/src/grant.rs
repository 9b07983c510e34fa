//! A domain's grant table, as Xen keeps it (common/grant_table.c): frames the hypervisor
//! shares with the guest read-write (`pvmmu::Machine::share_frames`), one at first,
//! grown on demand up to [`MAX_GRANT_FRAMES`], plus the version 2 status frames; the
//! entry format (version 1 or 2) switched only as Xen allows it. Served:
//! `GNTTABOP_setup_table`, `query_size`, `set_version`, `get_status_frames`,
//! `get_version`, and grant mappings: `map_grant_ref`, `unmap_grant_ref`,
//! `unmap_and_replace`. The table keeps what Xen's active entries keep (a pin count per
//! reference, the mapper, the frame) and the shared entries' `GTF_reading` /
//! `GTF_writing` status; the mapping itself (references, PTE, handle) is PV MMU work
//! done by the library (`pvmmu::grant`). The one other domain a guest can name is the
//! backend domain 0 (see `crate::domain`), whose table grants nothing. Other commands:
//! -ENOSYS, Xen's answer to a command it does not know.

#![allow(non_upper_case_globals)] // Xen's names for the grant-table constants

use std::collections::HashMap;

use pvmmu::grant::{GrantMapRequest, GrantUnmapped};
use pvmmu::{Caller, Errno, Mfn, TlbFlush};
use pvmmu_abi::grant::{
    GNTMAP_device_map, GNTMAP_host_map, GNTMAP_readonly, GNTST_bad_domain, GNTST_bad_gntref,
    GNTST_bad_handle, GNTST_bad_virt_addr, GNTST_general_error, GNTST_no_space, GNTST_okay,
    GNTST_permission_denied, GNTTAB_NR_RESERVED_ENTRIES, GNTTABOP_get_status_frames,
    GNTTABOP_get_version, GNTTABOP_map_grant_ref, GNTTABOP_query_size, GNTTABOP_set_version,
    GNTTABOP_setup_table, GNTTABOP_unmap_and_replace, GNTTABOP_unmap_grant_ref, GTF_permit_access,
    GTF_reading, GTF_readonly, GTF_sub_page, GTF_transitive, GTF_type_mask, GTF_writing,
    GnttabGetStatusFrames, GnttabGetVersion, GnttabMapGrantRef, GnttabQuerySize, GnttabSetupTable,
    GnttabUnmap,
};
use vm_memory::{Bytes, GuestAddress};

use crate::named::own_domain;

/// The machine a grant table lives in.
type Mach<F> = pvmmu::Machine<vm_memory::GuestMemoryMmap<()>, F>;

/// Largest number of grant-table frames (Xen's default `max_grant_frames`).
pub const MAX_GRANT_FRAMES: u32 = 64;
/// Status frames for [`MAX_GRANT_FRAMES`] in version 2.
pub const MAX_STATUS_FRAMES: u32 = status_frames(MAX_GRANT_FRAMES);
/// Frames a domain's grant table may use: its grant frames, then its status frames.
pub const GRANT_AREA_FRAMES: u64 = (MAX_GRANT_FRAMES + MAX_STATUS_FRAMES) as u64;

/// Version 2 status frames for `n` grant frames (256 entries a frame, 2048 statuses a
/// status frame).
pub const fn status_frames(n: u32) -> u32 {
    (n * 256).div_ceil(2048)
}

/// The status bits the hypervisor sets while a grant is in use.
const GTF_IN_USE: u16 = GTF_reading | GTF_writing;

/// Pin count increments of an active entry (Xen's `GNTPIN_*`): host read, host
/// write, device read, device write, one byte each.
const PIN_HSTR: u32 = 1;
const PIN_HSTW: u32 = 1 << 8;
const PIN_DEVR: u32 = 1 << 16;
const PIN_DEVW: u32 = 1 << 24;
/// Any writable pin.
const PIN_WRITE_MASK: u32 = 0xff00_ff00;
/// `GNTTABOP_cache_flush`, the one command that takes a continuation argument.
const GNTTABOP_CACHE_FLUSH: u32 = 12;
/// Unmaps completed per flush (Xen's `GNTTAB_UNMAP_BATCH_SIZE`).
const UNMAP_BATCH: u64 = 32;
/// Entries of the backend domain's table (one version 1 frame).
const BACKEND_ENTRIES: u32 = 512;

/// A grant reference in use (Xen's active entry).
#[derive(Debug, Clone, Copy)]
struct Active {
    /// `PIN_*` counts of the mappings of this reference.
    pin: u32,
    /// The mapping domain.
    domid: u16,
    /// The frame.
    mfn: Mfn,
}

/// One domain's grant table (the default: none, every command -ENOSYS).
#[derive(Debug, Clone, Default)]
pub struct GrantTable {
    /// The first frame of the domain's grant area ([`GRANT_AREA_FRAMES`] frames); 0 for
    /// a domain without one.
    first: u64,
    /// Entry format, 1 (Xen's initial) or 2; 0 for no table.
    version: u32,
    /// Grant frames shared with the guest.
    nr_frames: u32,
    /// Status frames shared with the guest (version 2).
    nr_status: u32,
    /// References in use by mappings.
    active: HashMap<u32, Active>,
}

impl GrantTable {
    /// The table of a domain whose grant area starts at frame `first` and whose first
    /// grant frame is already shared with it (the domain builder does that, as Xen
    /// allocates one frame at domain creation).
    pub fn new(first: u64) -> GrantTable {
        GrantTable {
            first,
            version: u32::from(first != 0),
            nr_frames: u32::from(first != 0),
            nr_status: 0,
            active: HashMap::new(),
        }
    }

    /// Grant frame `i`.
    fn frame(&self, i: u32) -> Mfn {
        Mfn(self.first + u64::from(i))
    }

    /// Status frame `i`.
    fn status_frame(&self, i: u32) -> Mfn {
        Mfn(self.first + u64::from(MAX_GRANT_FRAMES + i))
    }

    /// `grant_table_op(cmd, uop, count)` for `caller`; returns RAX.
    pub fn op<F: TlbFlush>(
        &mut self,
        m: &mut Mach<F>,
        caller: Caller,
        cmd: u64,
        uop: u64,
        count: u64,
    ) -> i64 {
        if self.first == 0 {
            return Errno::ENOSYS.neg();
        }
        if (count as i32) < 0 {
            return Errno::EINVAL.neg();
        }
        // Bits above the command are a continuation's argument, which only
        // GNTTABOP_cache_flush takes.
        let (cmd, opaque) = (cmd as u32 & 0xfff, cmd as u32 & !0xfff);
        if cmd != GNTTABOP_CACHE_FLUSH && opaque != 0 {
            return Errno::EINVAL.neg();
        }
        // The batched commands check the whole array's range first.
        let entry = match cmd {
            GNTTABOP_map_grant_ref => GnttabMapGrantRef::SIZE,
            GNTTABOP_unmap_grant_ref | GNTTABOP_unmap_and_replace => GnttabUnmap::SIZE,
            _ => 0,
        };
        if entry != 0 && !pvmmu::guest_range_ok(uop, count * entry as u64) {
            return Errno::EFAULT.neg();
        }
        let r = match cmd {
            GNTTABOP_setup_table => self.setup_table(m, caller, uop, count),
            GNTTABOP_query_size => self.query_size(m, caller, uop, count),
            GNTTABOP_set_version => self.set_version(m, caller, uop),
            GNTTABOP_get_status_frames => self.get_status_frames(m, caller, uop, count),
            GNTTABOP_get_version => self.get_version(m, caller, uop),
            GNTTABOP_map_grant_ref => self.map_grant_refs(m, caller, uop, count),
            GNTTABOP_unmap_grant_ref => self.unmaps(m, caller, uop, count, false),
            GNTTABOP_unmap_and_replace => self.unmaps(m, caller, uop, count, true),
            _ => Err(Errno::ENOSYS),
        };
        r.map_or_else(Errno::neg, |()| 0)
    }

    /// The `GNTST_*` for naming domain `dom`: only the caller's own table is served
    /// (another existing domain: no permission, as Xen's XSM policy for a domU).
    fn domain_status<F: TlbFlush>(m: &Mach<F>, caller: Caller, dom: u16) -> i16 {
        match own_domain(m, caller, dom) {
            Ok(()) => GNTST_okay,
            Err(Errno::EPERM) => GNTST_permission_denied,
            Err(_) => GNTST_bad_domain,
        }
    }

    /// Writes the frame numbers of `frames` to the guest array at `list`: the status
    /// to report (`GNTST_bad_virt_addr` at the first that cannot be written).
    fn write_frames<F: TlbFlush>(
        m: &mut Mach<F>,
        caller: Caller,
        list: u64,
        frames: impl Iterator<Item = Mfn>,
    ) -> i16 {
        let mut view = m.kernel_view(caller);
        for (i, f) in frames.enumerate() {
            let at = list.wrapping_add(i as u64 * 8);
            if view.write(at, &f.0.to_le_bytes()).is_err() {
                return GNTST_bad_virt_addr;
            }
        }
        GNTST_okay
    }

    /// Writes `status` at `at` (the `status` field of the guest's argument).
    fn write_status<F: TlbFlush>(
        m: &mut Mach<F>,
        caller: Caller,
        at: u64,
        status: i16,
    ) -> Result<(), Errno> {
        m.kernel_view(caller).write(at, &status.to_le_bytes())
    }

    /// Shares grant frames up to `n` and, in version 2, the status frames they need
    /// (Xen's `gnttab_grow_table`). `false` if a frame cannot be shared.
    fn grow<F: TlbFlush>(&mut self, m: &mut Mach<F>, dom: u16, n: u32) -> bool {
        let frames: Vec<Mfn> = (self.nr_frames..n).map(|i| self.frame(i)).collect();
        if !share_zeroed(m, dom, &frames) {
            return false;
        }
        self.nr_frames = self.nr_frames.max(n);
        if self.version == 2 {
            return self.populate_status(m, dom);
        }
        true
    }

    /// Shares the status frames the grant frames need (Xen's
    /// `gnttab_populate_status_frames`).
    fn populate_status<F: TlbFlush>(&mut self, m: &mut Mach<F>, dom: u16) -> bool {
        let want = status_frames(self.nr_frames);
        let frames: Vec<Mfn> = (self.nr_status..want)
            .map(|i| self.status_frame(i))
            .collect();
        if !share_zeroed(m, dom, &frames) {
            return false;
        }
        self.nr_status = self.nr_status.max(want);
        true
    }

    fn setup_table<F: TlbFlush>(
        &mut self,
        m: &mut Mach<F>,
        caller: Caller,
        uop: u64,
        count: u64,
    ) -> Result<(), Errno> {
        if count != 1 {
            return Err(Errno::EINVAL);
        }
        let b = m
            .kernel_view(caller)
            .read_array::<{ GnttabSetupTable::SIZE }>(uop)?;
        let op = GnttabSetupTable::from_bytes(&b);
        if !pvmmu::guest_range_ok(op.frame_list, u64::from(op.nr_frames) * 8) {
            return Err(Errno::EFAULT);
        }
        let mut status = Self::domain_status(m, caller, op.dom);
        if status == GNTST_okay {
            status = if op.nr_frames > MAX_GRANT_FRAMES {
                GNTST_general_error
            } else {
                let grow = op.nr_frames > self.nr_frames
                    || (self.version > 1 && status_frames(op.nr_frames) > self.nr_status);
                if grow && !self.grow(m, caller.dom, op.nr_frames) {
                    GNTST_general_error
                } else {
                    let frames = (0..op.nr_frames).map(|i| self.frame(i));
                    Self::write_frames(m, caller, op.frame_list, frames)
                }
            };
        }
        Self::write_status(m, caller, uop + GnttabSetupTable::STATUS_OFFSET, status)
    }

    fn query_size<F: TlbFlush>(
        &mut self,
        m: &mut Mach<F>,
        caller: Caller,
        uop: u64,
        count: u64,
    ) -> Result<(), Errno> {
        if count != 1 {
            return Err(Errno::EINVAL);
        }
        let b = m
            .kernel_view(caller)
            .read_array::<{ GnttabQuerySize::SIZE }>(uop)?;
        let mut op = GnttabQuerySize::from_bytes(&b);
        op.status = Self::domain_status(m, caller, op.dom);
        if op.status == GNTST_okay {
            op.nr_frames = self.nr_frames;
            op.max_nr_frames = MAX_GRANT_FRAMES;
        }
        m.kernel_view(caller).write(uop, &op.to_bytes())
    }

    fn get_status_frames<F: TlbFlush>(
        &mut self,
        m: &mut Mach<F>,
        caller: Caller,
        uop: u64,
        count: u64,
    ) -> Result<(), Errno> {
        if count != 1 {
            return Err(Errno::EINVAL);
        }
        let b = m
            .kernel_view(caller)
            .read_array::<{ GnttabGetStatusFrames::SIZE }>(uop)?;
        let op = GnttabGetStatusFrames::from_bytes(&b);
        if !pvmmu::guest_range_ok(op.frame_list, u64::from(op.nr_frames) * 8) {
            return Err(Errno::EFAULT);
        }
        let mut status = Self::domain_status(m, caller, op.dom);
        if status == GNTST_okay {
            status = if op.nr_frames > self.nr_status {
                GNTST_general_error
            } else {
                let frames = (0..op.nr_frames).map(|i| self.status_frame(i));
                Self::write_frames(m, caller, op.frame_list, frames)
            };
        }
        Self::write_status(
            m,
            caller,
            uop + GnttabGetStatusFrames::STATUS_OFFSET,
            status,
        )
    }

    fn get_version<F: TlbFlush>(
        &mut self,
        m: &mut Mach<F>,
        caller: Caller,
        uop: u64,
    ) -> Result<(), Errno> {
        let b = m
            .kernel_view(caller)
            .read_array::<{ GnttabGetVersion::SIZE }>(uop)?;
        own_domain(m, caller, u16::from_le_bytes([b[0], b[1]]))?;
        m.kernel_view(caller).write_u32(uop + 4, self.version)
    }

    /// Xen's `gnttab_set_version`: the result, with the version in force written back
    /// whatever it is.
    fn set_version<F: TlbFlush>(
        &mut self,
        m: &mut Mach<F>,
        caller: Caller,
        uop: u64,
    ) -> Result<(), Errno> {
        let want = m.kernel_view(caller).read_u32(uop)?;
        let r = self.switch_version(m, caller.dom, want);
        m.kernel_view(caller).write_u32(uop, self.version)?;
        r
    }

    fn switch_version<F: TlbFlush>(
        &mut self,
        m: &mut Mach<F>,
        dom: u16,
        want: u32,
    ) -> Result<(), Errno> {
        if want != 1 && want != 2 {
            return Err(Errno::EINVAL);
        }
        if self.version == want {
            return Ok(());
        }
        // Only the toolstack's reserved entries may be in use across a switch. Xen's
        // steps in order: status frames for v2, the reserved entries kept, status
        // frames given back for v1, the frames cleared.
        let first_free = GNTTAB_NR_RESERVED_ENTRIES as u32;
        if self
            .active
            .iter()
            .any(|(&r, a)| r >= first_free && r < self.nr_entries() && a.pin != 0)
        {
            return Err(Errno::EBUSY);
        }
        let mut reserved = [(0u16, 0u16, 0u64); GNTTAB_NR_RESERVED_ENTRIES];
        match self.version {
            1 => {
                if !self.populate_status(m, dom) {
                    return Err(Errno::ENOMEM);
                }
                for (i, r) in reserved.iter_mut().enumerate() {
                    let e: u64 = read(m, self.frame(0), i * 8);
                    *r = (e as u16, (e >> 16) as u16, e >> 32);
                }
            }
            2 => {
                for i in 0..GNTTAB_NR_RESERVED_ENTRIES {
                    let hdr: u64 = read(m, self.frame(0), i * 16);
                    let frame: u64 = read(m, self.frame(0), i * 16 + 8);
                    match hdr as u16 & GTF_type_mask {
                        GTF_permit_access if frame >> 32 != 0 => return Err(Errno::ERANGE),
                        GTF_transitive => return Err(Errno::ERANGE),
                        _ => {}
                    }
                }
                for (i, r) in reserved.iter_mut().enumerate() {
                    let hdr: u64 = read(m, self.frame(0), i * 16);
                    let frame: u64 = read(m, self.frame(0), i * 16 + 8);
                    let status: u16 = read(m, self.status_frame(0), i * 2);
                    if hdr as u16 & GTF_type_mask == GTF_permit_access {
                        *r = (hdr as u16 | status, (hdr >> 16) as u16, frame);
                    }
                }
                // Give the status frames back: refused while the guest still maps one.
                for i in 0..self.nr_status {
                    if !matches!(m.unshare_frame(dom, self.status_frame(i)), Ok(true)) {
                        // Those before it are shared again, as Xen does.
                        let back: Vec<Mfn> = (0..i).map(|k| self.status_frame(k)).collect();
                        let _ = m.share_frames(dom, back, true);
                        return Err(Errno::EBUSY);
                    }
                }
                self.nr_status = 0;
            }
            _ => {}
        }
        for i in 0..self.nr_frames {
            zero(m, self.frame(i));
        }
        {
            let at = |i: usize, off: usize| GuestAddress(self.frame(0).addr() + (i * off) as u64);
            for (i, &(flags, domid, frame)) in reserved.iter().enumerate() {
                let mem = m.memory();
                if want == 1 {
                    let e = u64::from(flags) | u64::from(domid) << 16 | (frame & 0xffff_ffff) << 32;
                    let _ = mem.write_obj(e, at(i, 8));
                } else {
                    let hdr = u64::from(flags & !GTF_IN_USE) | u64::from(domid) << 16;
                    let _ = mem.write_obj(hdr, at(i, 16));
                    let _ = mem.write_obj(frame, GuestAddress(at(i, 16).0 + 8));
                    let s = GuestAddress(self.status_frame(0).addr() + i as u64 * 2);
                    let _ = mem.write_obj(flags & GTF_IN_USE, s);
                }
            }
        }
        self.version = want;
        Ok(())
    }
}

/// Grant mappings.
impl GrantTable {
    /// Entries the table holds in its current version.
    fn nr_entries(&self) -> u32 {
        self.nr_frames * if self.version == 2 { 256 } else { 512 }
    }

    /// Guest address of the header (flags, domid) of entry `r`.
    fn header_addr(&self, r: u32) -> GuestAddress {
        let size = if self.version == 2 { 16 } else { 8 };
        let at = u64::from(r) * size;
        GuestAddress(self.frame((at / 4096) as u32).addr() + at % 4096)
    }

    /// Guest address of the status of entry `r`: its flags in version 1, its status
    /// entry in version 2.
    fn status_addr(&self, r: u32) -> GuestAddress {
        if self.version != 2 {
            return self.header_addr(r);
        }
        let at = u64::from(r) * 2;
        GuestAddress(self.status_frame((at / 4096) as u32).addr() + at % 4096)
    }

    /// The frame entry `r` grants.
    fn entry_frame<F: TlbFlush>(&self, m: &Mach<F>, r: u32) -> u64 {
        let h = self.header_addr(r);
        if self.version == 2 {
            m.memory().read_obj(GuestAddress(h.0 + 8)).unwrap_or(0)
        } else {
            u64::from(
                m.memory()
                    .read_obj::<u32>(GuestAddress(h.0 + 4))
                    .unwrap_or(0),
            )
        }
    }

    /// Xen's `_set_status` for a map: checks the shared entry grants `mapper` access
    /// (unless already pinned) and marks it read, and written unless `readonly`.
    fn set_status<F: TlbFlush>(
        &self,
        m: &Mach<F>,
        r: u32,
        pinned: bool,
        readonly: bool,
        mapper: u16,
    ) -> Result<(), i16> {
        let mem = m.memory();
        let h = self.header_addr(r);
        let flags: u16 = mem.read_obj(h).unwrap_or(0);
        let domid: u16 = mem.read_obj(GuestAddress(h.0 + 2)).unwrap_or(0);
        let grants = flags & (GTF_type_mask | GTF_sub_page) == GTF_permit_access;
        if !pinned && (!grants || domid != mapper) {
            log::debug!("grant ref {r}: flags {flags:#x} dom {domid}, not for d{mapper}");
            return Err(GNTST_general_error);
        }
        if !readonly && flags & GTF_readonly != 0 {
            return Err(GNTST_general_error);
        }
        let set = GTF_reading | if readonly { 0 } else { GTF_writing };
        let at = self.status_addr(r);
        let now: u16 = mem.read_obj(at).unwrap_or(0);
        let _ = mem.write_obj(now | set, at);
        Ok(())
    }

    /// Xen's `reduce_status_for_pin`: drops `GTF_reading` / `GTF_writing` the pins no
    /// longer need.
    fn reduce_status<F: TlbFlush>(&self, m: &Mach<F>, r: u32, readonly: bool) {
        let pin = self.active.get(&r).map_or(0, |a| a.pin);
        let mut clear = if pin == 0 { GTF_reading } else { 0 };
        if !readonly && pin & PIN_WRITE_MASK == 0 {
            clear |= GTF_writing;
        }
        if clear != 0 {
            let at = self.status_addr(r);
            let now: u16 = m.memory().read_obj(at).unwrap_or(0);
            let _ = m.memory().write_obj(now & !clear, at);
        }
    }

    fn map_grant_refs<F: TlbFlush>(
        &mut self,
        m: &mut Mach<F>,
        caller: Caller,
        uop: u64,
        count: u64,
    ) -> Result<(), Errno> {
        for i in 0..count {
            let at = uop.wrapping_add(i * GnttabMapGrantRef::SIZE as u64);
            let b = m
                .kernel_view(caller)
                .read_array::<{ GnttabMapGrantRef::SIZE }>(at)?;
            let mut op = GnttabMapGrantRef::from_bytes(&b);
            self.map_one(m, caller, &mut op);
            m.kernel_view(caller).write(at, &op.to_bytes())?;
        }
        Ok(())
    }

    /// Xen's `map_grant_ref` up to the frame (the library does the rest).
    fn map_one<F: TlbFlush>(
        &mut self,
        m: &mut Mach<F>,
        caller: Caller,
        op: &mut GnttabMapGrantRef,
    ) {
        let readonly = op.flags & GNTMAP_readonly != 0;
        let mut incr = 0;
        if op.flags & GNTMAP_device_map != 0 {
            incr += if readonly { PIN_DEVR } else { PIN_DEVW };
        }
        if op.flags & GNTMAP_host_map != 0 {
            incr += if readonly { PIN_HSTR } else { PIN_HSTW };
        }
        op.status = if incr == 0 {
            GNTST_bad_gntref
        } else if m.domain(op.dom).is_none() {
            GNTST_bad_domain
        } else if m.grant_maptrack_full(caller.dom) {
            GNTST_no_space
        } else if op.dom != caller.dom {
            // The backend domain: an entry in its table grants nothing to anyone.
            if op.r#ref >= BACKEND_ENTRIES {
                GNTST_bad_gntref
            } else {
                GNTST_general_error
            }
        } else if op.r#ref >= self.nr_entries() {
            GNTST_bad_gntref
        } else {
            match self.map_own(m, caller, op, incr) {
                Ok(()) => GNTST_okay,
                Err(s) => s,
            }
        };
    }

    /// A map of one of the caller's own grant references, pinned by `incr`.
    fn map_own<F: TlbFlush>(
        &mut self,
        m: &mut Mach<F>,
        caller: Caller,
        op: &mut GnttabMapGrantRef,
        incr: u32,
    ) -> Result<(), i16> {
        let r = op.r#ref;
        let readonly = op.flags & GNTMAP_readonly != 0;
        let act = self.active.get(&r).copied().filter(|a| a.pin != 0);
        if let Some(a) = act
            && (a.domid != caller.dom || a.pin & (incr << 7) != 0)
        {
            return Err(GNTST_general_error);
        }
        let pinned = act.is_some();
        let writes_new = !readonly && act.is_none_or(|a| a.pin & PIN_WRITE_MASK == 0);
        if !pinned || writes_new {
            self.set_status(m, r, pinned, readonly, caller.dom)?;
        }
        let mfn = act.map_or_else(|| Mfn(self.entry_frame(m, r)), |a| a.mfn);
        let req = GrantMapRequest {
            granter: caller.dom,
            gref: r,
            mfn,
            flags: op.flags,
            host_addr: op.host_addr,
            first_pin: !pinned,
        };
        match m.grant_map(caller, req) {
            Ok(Ok(handle)) => {
                let a = self.active.entry(r).or_insert(Active {
                    pin: 0,
                    domid: caller.dom,
                    mfn,
                });
                a.pin += incr;
                op.handle = handle;
                op.dev_bus_addr = mfn.addr();
                Ok(())
            }
            Ok(Err(s)) => {
                self.reduce_status(m, r, readonly);
                Err(s)
            }
            Err(e) => {
                log::warn!("grant map for {caller:?}: {e}");
                self.reduce_status(m, r, readonly);
                Err(GNTST_general_error)
            }
        }
    }

    /// `unmap_grant_ref` (`replace` false) and `unmap_and_replace`: batches of
    /// [`UNMAP_BATCH`], each completed after one flush, also when a guest argument
    /// faults midway (the entries before it are complete).
    fn unmaps<F: TlbFlush>(
        &mut self,
        m: &mut Mach<F>,
        caller: Caller,
        uop: u64,
        count: u64,
        replace: bool,
    ) -> Result<(), Errno> {
        let mut i = 0;
        while i < count {
            let n = (count - i).min(UNMAP_BATCH);
            let mut done = Vec::with_capacity(n as usize);
            let mut fault = Ok(());
            for k in i..i + n {
                let at = uop.wrapping_add(k * GnttabUnmap::SIZE as u64);
                let op = match m
                    .kernel_view(caller)
                    .read_array::<{ GnttabUnmap::SIZE }>(at)
                {
                    Ok(b) => GnttabUnmap::from_bytes(&b),
                    Err(e) => {
                        fault = Err(e);
                        break;
                    }
                };
                let (dev, new) = if replace {
                    (0, op.second)
                } else {
                    (op.second, 0)
                };
                let status = match self.unmap_one(m, caller, op.handle, op.host_addr, dev, new) {
                    Ok(u) => {
                        done.push(u);
                        GNTST_okay
                    }
                    Err(s) => s,
                };
                let st = at.wrapping_add(GnttabUnmap::STATUS_OFFSET);
                if let Err(e) = m.kernel_view(caller).write(st, &status.to_le_bytes()) {
                    fault = Err(e);
                    break;
                }
            }
            if let Err(e) = m.grant_unmap_complete(caller, &done) {
                log::warn!("grant unmap for {caller:?}: {e}");
            }
            for u in &done {
                self.unpin(m, u);
            }
            fault?;
            i += n;
        }
        Ok(())
    }

    /// Xen's `unmap_common` for the caller's handle.
    fn unmap_one<F: TlbFlush>(
        &mut self,
        m: &mut Mach<F>,
        caller: Caller,
        handle: u32,
        host_addr: u64,
        dev_bus_addr: u64,
        new_addr: u64,
    ) -> Result<GrantUnmapped, i16> {
        let map = m
            .grant_mapping(caller.dom, handle)
            .ok_or(GNTST_bad_handle)?;
        if map.granter == caller.dom && map.gref >= self.nr_entries() {
            return Err(GNTST_bad_handle);
        }
        match m.grant_unmap(caller, handle, host_addr, dev_bus_addr, new_addr) {
            Ok(r) => r,
            Err(e) => {
                log::warn!("grant unmap for {caller:?}: {e}");
                Err(GNTST_general_error)
            }
        }
    }

    /// Xen's `unmap_common_complete` for the table: the pins of what was unmapped go,
    /// and the entry's status with them.
    fn unpin<F: TlbFlush>(&mut self, m: &Mach<F>, u: &GrantUnmapped) {
        if u.done == 0 {
            return;
        }
        let readonly = u.done & GNTMAP_readonly != 0;
        if let Some(a) = self.active.get_mut(&u.gref) {
            if u.done & GNTMAP_device_map != 0 {
                a.pin = a
                    .pin
                    .saturating_sub(if readonly { PIN_DEVR } else { PIN_DEVW });
            }
            if u.done & GNTMAP_host_map != 0 {
                a.pin = a
                    .pin
                    .saturating_sub(if readonly { PIN_HSTR } else { PIN_HSTW });
            }
            if a.pin == 0 {
                self.active.remove(&u.gref);
            }
        }
        self.reduce_status(m, u.gref, readonly);
    }
}

/// Reads the `T` at byte `off` of frame `f` (0 if it cannot be read).
fn read<F: TlbFlush, T: vm_memory::ByteValued + Default>(m: &Mach<F>, f: Mfn, off: usize) -> T {
    m.memory()
        .read_obj(GuestAddress(f.addr() + off as u64))
        .unwrap_or_default()
}

/// Shares `frames` read-write with `dom` and clears them: `false` if one cannot be
/// shared.
fn share_zeroed<F: TlbFlush>(m: &mut Mach<F>, dom: u16, frames: &[Mfn]) -> bool {
    if m.share_frames(dom, frames.iter().copied(), true).is_err() {
        return false;
    }
    for &f in frames {
        zero(m, f);
    }
    true
}

/// Clears frame `f`.
fn zero<F: TlbFlush>(m: &Mach<F>, f: Mfn) {
    let _ = m.memory().write_slice(&[0u8; 4096], GuestAddress(f.addr()));
}
