//! `vcpu_op` (hypercall 24) for the calling vCPU's own state, as Xen serves a domU:
//! the runstate area (`VCPUOP_register_runstate_memory_area`, `get_runstate_info`),
//! `vcpu_info` moved into the guest's memory (`VCPUOP_register_vcpu_info`) and whether
//! a vCPU is up, and the timers (`pv::timer`). Bringing other vCPUs up is the SMP
//! work's; until then those commands answer -ENOSYS, as Xen answers a command it does
//! not know.

use pvmmu::{Errno, TlbFlush};

use super::{Mach, PvVcpu};

/// `VCPUOP_up`.
const VCPUOP_UP: u32 = 1;
/// `VCPUOP_is_up`.
const VCPUOP_IS_UP: u32 = 3;
/// `VCPUOP_send_nmi`, `VCPUOP_get_physid`.
const VCPUOP_SEND_NMI: u32 = 11;
const VCPUOP_GET_PHYSID: u32 = 12;
/// `VCPUOP_get_runstate_info`.
const VCPUOP_GET_RUNSTATE_INFO: u32 = 4;
/// `VCPUOP_register_runstate_memory_area`.
const VCPUOP_REGISTER_RUNSTATE_MEMORY_AREA: u32 = 5;
/// `VCPUOP_register_vcpu_info`.
const VCPUOP_REGISTER_VCPU_INFO: u32 = 10;

/// `struct vcpu_runstate_info`: state, the time it was entered, and the time spent in
/// each of the four states (running, runnable, blocked, offline), in ns of system time.
pub const RUNSTATE_INFO_SIZE: usize = 48;
/// `VCPUOP_register_vcpu_time_memory_area`.
pub(crate) const VCPUOP_REGISTER_VCPU_TIME_MEMORY_AREA: u32 = 13;
/// `VCPUOP_register_runstate_phys_area`.
pub(crate) const VCPUOP_REGISTER_RUNSTATE_PHYS_AREA: u32 = 14;
/// `VCPUOP_register_vcpu_time_phys_area`.
pub(crate) const VCPUOP_REGISTER_VCPU_TIME_PHYS_AREA: u32 = 15;
/// `XEN_RUNSTATE_UPDATE`: set in `state_entry_time` while the area is being written.
const XEN_RUNSTATE_UPDATE: u64 = 1 << 63;
/// Size of `struct vcpu_time_info`.
pub const TIME_INFO_SIZE: usize = 32;

/// Writes a runstate record into an area registered by guest-physical address, with
/// `XEN_RUNSTATE_UPDATE` set in `state_entry_time` meanwhile (as Xen updates it).
pub(crate) fn write_runstate_phys<F: TlbFlush>(
    m: &Mach<F>,
    gaddr: u64,
    info: &[u8; RUNSTATE_INFO_SIZE],
) {
    use vm_memory::{Bytes, GuestAddress};
    let mem = m.memory();
    let entry = u64::from_le_bytes(info[8..16].try_into().unwrap_or_default());
    let _ = mem.write_obj(entry | XEN_RUNSTATE_UPDATE, GuestAddress(gaddr + 8));
    let mut updating = *info;
    updating[8..16].copy_from_slice(&(entry | XEN_RUNSTATE_UPDATE).to_le_bytes());
    let _ = mem.write_slice(&updating, GuestAddress(gaddr));
    let _ = mem.write_obj(entry, GuestAddress(gaddr + 8));
}

impl PvVcpu {
    /// Nanoseconds of system time (since the vCPU was created, which is the domain's
    /// start).
    pub fn system_time_ns(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// This vCPU's `struct vcpu_runstate_info` now: running since it was created (it
    /// is never descheduled in Xen's sense: each vCPU has its own host thread).
    pub fn runstate_info(&self) -> [u8; RUNSTATE_INFO_SIZE] {
        let now = self.system_time_ns();
        let mut b = [0u8; RUNSTATE_INFO_SIZE];
        // state 0 = RUNSTATE_running, entered at time 0; time[running] = now.
        b[16..24].copy_from_slice(&now.to_le_bytes());
        b
    }

    /// Writes the runstate to the registered area, if any (Xen's
    /// `update_runstate_area`); a failed write is ignored, as Xen ignores it.
    /// An area registered by guest-physical address takes precedence: the virtual one
    /// is then not written (Xen's rule).
    pub fn update_runstate_area<F: TlbFlush>(&self, m: &Mach<F>) {
        if let Some(gaddr) = m.guest_area(self.caller, pvmmu::GuestArea::Runstate) {
            write_runstate_phys(m, gaddr, &self.runstate_info());
        } else if let Some(va) = self.runstate_area {
            let _ = m.kernel_view(self.caller).write(va, &self.runstate_info());
        }
    }

    /// `vcpu_op(cmd, vcpuid, arg)` for the commands served here; `None` for the others
    /// (the caller answers them). A `vcpuid` that names no vCPU of the domain is
    /// -ENOENT, before the command is looked at (Xen's `domain_vcpu` check).
    pub fn vcpu_op<F: TlbFlush>(
        &mut self,
        m: &mut Mach<F>,
        cmd: u64,
        vcpuid: u64,
        arg: u64,
    ) -> Option<i64> {
        let nr_vcpus = m
            .domain(self.caller.dom)
            .map_or(0, |d| d.vcpus().len() as u64);
        if vcpuid as u32 as u64 >= nr_vcpus {
            return Some(Errno::ENOENT.neg());
        }
        let own = vcpuid as u32 == self.caller.vcpu;
        Some(match cmd as u32 {
            // Other vCPUs are not brought up yet: only the caller is up.
            VCPUOP_IS_UP => i64::from(own),
            // The caller is up already: nothing to do.
            VCPUOP_UP if own => 0,
            // An NMI takes no argument; the physical CPU is the hardware domain's.
            VCPUOP_SEND_NMI if arg != 0 => Errno::EINVAL.neg(),
            VCPUOP_GET_PHYSID => Errno::EINVAL.neg(),
            VCPUOP_GET_RUNSTATE_INFO if own => {
                let r = m.kernel_view(self.caller).write(arg, &self.runstate_info());
                r.map_or_else(|e| e.neg(), |()| 0)
            }
            VCPUOP_REGISTER_RUNSTATE_MEMORY_AREA if own => {
                let va = match m.kernel_view(self.caller).read_u64(arg) {
                    Ok(va) => va,
                    Err(e) => return Some(e.neg()),
                };
                if !pvmmu::guest_range_ok(va, RUNSTATE_INFO_SIZE as u64) {
                    return Some(Errno::EFAULT.neg());
                }
                self.runstate_area = Some(va);
                self.update_runstate_area(m);
                0
            }
            VCPUOP_REGISTER_VCPU_INFO if own => self.register_vcpu_info(m, arg),
            // The secondary time area, by virtual address (Xen's `time_info_guest`):
            // filled at once and at every time update.
            VCPUOP_REGISTER_VCPU_TIME_MEMORY_AREA if own => {
                let va = match m.kernel_view(self.caller).read_u64(arg) {
                    Ok(va) => va,
                    Err(e) => return Some(e.neg()),
                };
                if !pvmmu::guest_range_ok(va, TIME_INFO_SIZE as u64) {
                    return Some(Errno::EFAULT.neg());
                }
                // A null handle unregisters (Linux does that when the TSC is not
                // stable).
                self.time_area = (va != 0).then_some(va);
                self.update_secondary_time(m);
                0
            }
            // Timers: the periodic ones of any vCPU in Xen, the single-shot one of the
            // caller only (-EINVAL for another).
            c @ (super::timer::VCPUOP_SET_PERIODIC_TIMER
            | super::timer::VCPUOP_STOP_PERIODIC_TIMER
            | super::timer::VCPUOP_SET_SINGLESHOT_TIMER
            | super::timer::VCPUOP_STOP_SINGLESHOT_TIMER)
                if own =>
            {
                self.timer_op(m, c, arg)
            }
            super::timer::VCPUOP_SET_SINGLESHOT_TIMER
            | super::timer::VCPUOP_STOP_SINGLESHOT_TIMER => Errno::EINVAL.neg(),
            _ => return None,
        })
    }

    /// `VCPUOP_register_vcpu_info`: `vcpu_info` moves to byte `offset` of frame `mfn`
    /// (`struct vcpu_register_vcpu_info { mfn, offset, rsvd }`), checked in Xen's order:
    /// an offset beyond the frame -EINVAL, a second registration -EBUSY, an area that
    /// does not fit or is not 8-aligned -ENXIO, a frame not the guest's -EINVAL, one
    /// that cannot be writable -EACCES.
    /// The contents move with it, and every event is marked pending, as Xen does.
    fn register_vcpu_info<F: TlbFlush>(&mut self, m: &mut Mach<F>, arg: u64) -> i64 {
        match register_vcpu_info(m, self.caller, self.caller, self.vcpu_info, arg) {
            Ok(new) => {
                self.vcpu_info = new;
                0
            }
            Err(rc) => rc,
        }
    }
}

/// `VCPUOP_register_vcpu_info` by `caller` (whose kernel page tables the argument is
/// read through) for vCPU `target`, whose `vcpu_info` is at `current` now (0: Xen's
/// dummy, read as zeros with events masked): the checks in Xen's order (see
/// [`PvVcpu::vcpu_op`]'s command), then the contents copied to the new place with every
/// event marked pending. Returns the new guest-physical address, or RAX on failure.
pub fn register_vcpu_info<F: TlbFlush>(
    m: &mut Mach<F>,
    caller: pvmmu::Caller,
    target: pvmmu::Caller,
    current: u64,
    arg: u64,
) -> Result<u64, i64> {
    use pvmmu_abi::shared_info::{
        VCPU_INFO_PENDING_SEL_OFFSET, VCPU_INFO_SIZE, VCPU_INFO_UPCALL_MASK_OFFSET,
        VCPU_INFO_UPCALL_PENDING_OFFSET,
    };
    use vm_memory::{Bytes, GuestAddress};
    {
        let b = match m.kernel_view(caller).read_array::<16>(arg) {
            Ok(b) => b,
            Err(e) => return Err(e.neg()),
        };
        let mfn = u64::from_le_bytes(b[..8].try_into().unwrap_or_default());
        let offset = u64::from(u32::from_le_bytes(b[8..12].try_into().unwrap_or_default()));
        // Xen's order: the address must stay in frame `mfn` (-EINVAL), the vCPU must
        // have none yet (-EBUSY), the area must fit in the frame, 8-aligned (-ENXIO),
        // then the frame's own checks (the library's).
        let gaddr = (mfn << 12).wrapping_add(offset);
        if gaddr == u64::MAX || gaddr >> 12 != mfn || mfn >> 52 != 0 {
            return Err(Errno::EINVAL.neg());
        }
        let registered = m
            .domain(target.dom)
            .and_then(|d| d.vcpus().get(target.vcpu as usize))
            .is_some_and(|v| v.vcpu_info_frame.is_some());
        if registered {
            return Err(Errno::EBUSY.neg());
        }
        if offset > 4096 - VCPU_INFO_SIZE as u64 || offset % 8 != 0 {
            return Err(Errno::ENXIO.neg());
        }
        match m.register_vcpu_info(target, pvmmu::Mfn(mfn)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e.neg()),
            Err(_) => return Err(Errno::EINVAL.neg()),
        }
        let new = mfn * 4096 + offset;
        let mut info = [0u8; VCPU_INFO_SIZE];
        let mem = m.memory();
        if current == 0 {
            info[VCPU_INFO_UPCALL_MASK_OFFSET] = 1;
        } else {
            let _ = mem.read_slice(&mut info, GuestAddress(current));
        }
        info[VCPU_INFO_PENDING_SEL_OFFSET..VCPU_INFO_PENDING_SEL_OFFSET + 8]
            .copy_from_slice(&u64::MAX.to_le_bytes());
        info[VCPU_INFO_UPCALL_PENDING_OFFSET] = 1;
        let _ = mem.write_slice(&info, GuestAddress(new));
        Ok(new)
    }
}
