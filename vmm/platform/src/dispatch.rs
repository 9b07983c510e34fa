//! Hypercall dispatch, from the vCPU's registers to a result: Xen's 64-bit register ABI
//! (number in RAX; arguments in RDI, RSI, RDX, R10, R8; result in RAX). The PV MMU
//! hypercalls are the library's ([`pvmmu::Machine::hypercall`]); this module is the
//! embedder's [`HypercallHandler`] for the rest: the PV vCPU's own calls
//! (`set_trap_table`, `stack_switch`, `set_callbacks`, `callback_op`, `iret`; see
//! [`crate::pv`]), `console_io`, `sched_op` and `xen_version` here, `-ENOSYS` for
//! everything else. `multicall` entries reach the same handler through the library.

#![allow(non_upper_case_globals)] // Xen's names for hypercall and command numbers

use std::collections::BTreeMap;

use log::debug;
use pvmmu::{Caller, Errno, HypercallHandler, MachineError, Roots, TlbFlush};
use pvmmu_abi::console::{CONSOLEIO_read, CONSOLEIO_write};
use pvmmu_abi::evtchn::{EVTCHNOP_expand_array, EVTCHNOP_init_control};
use pvmmu_abi::hypercall::{
    HYPERVISOR_callback_op, HYPERVISOR_console_io, HYPERVISOR_event_channel_op,
    HYPERVISOR_fpu_taskswitch, HYPERVISOR_get_debugreg, HYPERVISOR_grant_table_op, HYPERVISOR_iret,
    HYPERVISOR_memory_op, HYPERVISOR_physdev_op, HYPERVISOR_sched_op, HYPERVISOR_set_callbacks,
    HYPERVISOR_set_debugreg, HYPERVISOR_set_segment_base, HYPERVISOR_set_timer_op,
    HYPERVISOR_set_trap_table, HYPERVISOR_stack_switch, HYPERVISOR_vcpu_op, HYPERVISOR_xen_version,
    HYPERVISOR_xenpmu_op,
};
use pvmmu_abi::sched::{SCHEDOP_block, SCHEDOP_shutdown, SCHEDOP_yield};
use pvmmu_abi::version::{
    XENVER_capabilities, XENVER_extraversion, XENVER_get_features, XENVER_pagesize, XENVER_version,
};

pub use crate::console::{Console, NullConsole};
use crate::domain::Mach;
use crate::evtchn::{EventChannels, PortState};
use crate::grant::GrantTable;
use crate::memory::MemoryOps;
use crate::pv::{Crash, GuestContext, PvVcpu, Transfer, segments};
use crate::ring::ConsoleRing;
use crate::xenstore::Xenstore;

/// Largest console write served in one call (longer writes are truncated, as Xen's
/// console ring would).
const CONSOLE_MAX: u64 = 64 * 1024;

/// What the vCPU must do after a hypercall.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Return this value in RAX.
    Return(i64),
    /// The guest asked to shut down with this reason.
    Shutdown(u32),
    /// The call crashed the domain, as Xen's `domain_crash` (e.g. `iret` with a bad
    /// frame).
    Crash(Crash),
}

/// One served hypercall.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Served {
    /// What the vCPU does next.
    pub outcome: Outcome,
    /// The caller's page-table roots, when the call changed them (load the kernel root
    /// into CR3 before resuming).
    pub roots: Option<Roots>,
    /// The batch entries the library read, when recording (traces).
    pub reads: Vec<u8>,
    /// Whether the call changed the vCPU's context (`iret`): the VMM loads it.
    pub context_changed: bool,
    /// A switch between guest kernel and user mode the VMM must carry out.
    pub transfer: Transfer,
    /// A segment base the VMM must load (`set_segment_base`).
    pub segment_base: Option<(SegmentBase, u64)>,
    /// The vCPU blocks (`SCHEDOP_block` with no event pending): the VMM waits for an
    /// event or a timer before resuming it.
    pub block: bool,
    /// The vCPU polls (`SCHEDOP_poll` with none of its ports pending): the VMM waits
    /// until one of them is pending or the deadline passes.
    pub poll: Option<Poll>,
    /// The call stopped at a preemption point: the VMM resumes the guest at its
    /// hypercall instruction with these argument registers (Xen's continuation).
    pub continuation: Option<[u64; 5]>,
}

/// What a vCPU blocked in `SCHEDOP_poll` waits for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Poll {
    /// The ports; any of them pending (masked or not) wakes it.
    pub ports: Vec<u32>,
    /// System time at which it wakes anyway (`None`: no timeout).
    pub deadline: Option<u64>,
}

/// A segment base `set_segment_base` sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SegmentBase {
    /// FS (`SEGBASE_FS`).
    Fs,
    /// The user GS base (`SEGBASE_GS_USER`): the shadow one while in kernel mode.
    GsUser,
    /// The kernel GS base (`SEGBASE_GS_KERNEL`): the active one in kernel mode.
    GsKernel,
}

/// Per-VM hypercall counters.
#[derive(Debug, Clone, Default)]
pub struct HypercallStats {
    /// Direct calls per hypercall number (a multicall counts once).
    pub by_number: BTreeMap<u64, u64>,
}

/// The platform's state of one domain: its console ring, its event channels (today the
/// console's and the store's, set up by the builder) and counters.
#[derive(Debug, Clone, Default)]
pub struct DomainState {
    /// Counters.
    pub stats: HypercallStats,
    /// The PV console ring, if the domain has one.
    pub ring: Option<ConsoleRing>,
    /// The event channels (the console's and the store's bound to the VMM's backends
    /// at build time).
    pub evtchn: EventChannels,
    /// The grant table.
    pub grant: GrantTable,
    /// The xenstore on the store ring.
    pub xenstore: Xenstore,
    /// `memory_op`'s view of the domain.
    pub memory: MemoryOps,
    /// The vCPUs: which are initialised and up.
    pub vcpus: Vec<crate::vcpus::VcpuSlot>,
    /// The domain's watchdog timers (`SCHEDOP_watchdog`): the system time each one
    /// fires at, for those in use.
    pub watchdogs: [Option<u64>; NR_WATCHDOGS],
}

/// Watchdog timers per domain (Xen's `NR_DOMAIN_WATCHDOG_TIMERS`).
pub const NR_WATCHDOGS: usize = 2;

impl DomainState {
    /// Moves pending console input into the console ring and, if any moved, raises the
    /// ring's event channel; returns the byte count. The VMM calls it when input
    /// arrives (and it runs at every console notification and yield). Input goes to the
    /// ring once the guest uses it (writes output there or notifies its event channel:
    /// its console is the PV console then); before, `console_io` reads get it.
    pub fn feed_console<F: TlbFlush>(&mut self, m: &Mach<F>, console: &mut dyn Console) -> usize {
        let Some(ring) = self.ring.as_mut().filter(|r| r.used || r.notified) else {
            return 0;
        };
        let n = ring.fill(m.memory(), console);
        if n > 0 {
            self.evtchn.set_pending(m, ring.port);
        }
        n
    }

    /// Whether vCPU `vcpu` is up (runs).
    pub fn is_up(&self, vcpu: u32) -> bool {
        self.vcpus.get(vcpu as usize).is_some_and(|v| v.up)
    }

    /// The state of a domain built with `boot`, of `vcpus` vCPUs: the console ring, the
    /// console and store event channels, vCPU 0 up.
    pub fn new(boot: &crate::builder::BootInfo, vcpus: u32) -> DomainState {
        use crate::builder::{CONSOLE_EVTCHN, STORE_EVTCHN};
        DomainState {
            stats: HypercallStats::default(),
            ring: Some(ConsoleRing::new(boot.console_ring, CONSOLE_EVTCHN)),
            evtchn: {
                // The toolstack's ports, bound by the VMM's backends in domain 0's
                // place: the console's and the store's.
                let mut e = EventChannels::new(boot.shared_info, vcpu_infos(boot, vcpus));
                for port in [CONSOLE_EVTCHN, STORE_EVTCHN] {
                    let state = PortState::Interdomain {
                        remote: 0,
                        remote_port: port,
                    };
                    let _ = e.allocate(state, 0);
                }
                e
            },
            grant: GrantTable::new(boot.grant_first),
            xenstore: Xenstore::new(
                boot.store_ring,
                crate::domain::DOMID,
                boot.nr_pages * 4,
                vcpus,
            ),
            memory: MemoryOps::new(boot),
            vcpus: crate::vcpus::at_creation(vcpus),
            watchdogs: [None; NR_WATCHDOGS],
        }
    }

    /// `SCHEDOP_watchdog` at system time `now`, as Xen's `domain_watchdog`: id 0 takes
    /// the first free timer, set `timeout` seconds from now, and returns its id (1 or
    /// 2; -ENOSPC when both are taken); another id must be in use (-EINVAL; above 2
    /// too) and is rearmed, or released with a timeout of 0. A timer that fires shuts
    /// the domain down with `SHUTDOWN_watchdog` (see [`DomainState::watchdog_due`]).
    ///
    /// ```
    /// let mut d = platform::dispatch::DomainState::default();
    /// assert_eq!(d.watchdog(0, 30, 0), 1);
    /// assert_eq!(d.watchdog(0, 30, 0), 2);
    /// assert_eq!(d.watchdog(0, 30, 0), -28, "ENOSPC");
    /// assert_eq!(d.watchdog(1, 0, 0), 0, "released");
    /// assert_eq!(d.watchdog(1, 5, 0), -22, "EINVAL: not in use");
    /// assert_eq!(d.watchdog(3, 5, 0), -22);
    /// assert_eq!(d.watchdog_due(29_000_000_000), false);
    /// assert_eq!(d.watchdog_due(30_000_000_000), true);
    /// ```
    pub fn watchdog(&mut self, id: u32, timeout: u32, now: u64) -> i64 {
        let at = now.saturating_add(u64::from(timeout) * 1_000_000_000);
        if id as usize > NR_WATCHDOGS {
            return Errno::EINVAL.neg();
        }
        if id == 0 {
            return match self.watchdogs.iter().position(Option::is_none) {
                Some(k) => {
                    self.watchdogs[k] = Some(at);
                    k as i64 + 1
                }
                None => Errno::ENOSPC.neg(),
            };
        }
        let slot = &mut self.watchdogs[id as usize - 1];
        if slot.is_none() {
            return Errno::EINVAL.neg();
        }
        *slot = (timeout != 0).then_some(at);
        0
    }

    /// The earliest system time a watchdog fires at, if one is in use.
    pub fn next_watchdog(&self) -> Option<u64> {
        self.watchdogs.iter().flatten().copied().min()
    }

    /// Whether a watchdog has fired by system time `now` (the domain shuts down with
    /// `SHUTDOWN_watchdog`).
    pub fn watchdog_due(&self, now: u64) -> bool {
        self.next_watchdog().is_some_and(|t| now >= t)
    }
}

/// Where each vCPU's `vcpu_info` is at creation: in `shared_info` for the first
/// `XEN_LEGACY_MAX_VCPUS` (32); none (0, Xen's dummy) for the others until they
/// register one.
fn vcpu_infos(boot: &crate::builder::BootInfo, vcpus: u32) -> Vec<u64> {
    use pvmmu_abi::shared_info::{VCPU_INFO_SIZE, XEN_LEGACY_MAX_VCPUS};
    (0..u64::from(vcpus))
        .map(|v| {
            if v < XEN_LEGACY_MAX_VCPUS as u64 {
                boot.shared_info + v * VCPU_INFO_SIZE as u64
            } else {
                0
            }
        })
        .collect()
}

/// The platform's hypercalls for one domain: its console, and a shutdown request noted
/// while serving (it may come inside a multicall, whose later entries still run, as on
/// Xen, where the shutdown takes effect when the vCPU would return to the guest).
pub struct Platform<'c> {
    console: &'c mut dyn Console,
    dom: &'c mut DomainState,
    pv: &'c mut PvVcpu,
    ctx: &'c mut GuestContext,
    shutdown: Option<u32>,
    crash: Option<Crash>,
    context_changed: bool,
    transfer: Transfer,
    segment_base: Option<(SegmentBase, u64)>,
    block: bool,
    poll: Option<Poll>,
}

impl std::fmt::Debug for Platform<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Platform")
            .field("shutdown", &self.shutdown)
            .finish_non_exhaustive()
    }
}

impl<'c> Platform<'c> {
    /// The platform's calls for the vCPU `pv` of the domain `dom`, whose context at the
    /// call is `ctx`, with `console`.
    pub fn new(
        console: &'c mut dyn Console,
        dom: &'c mut DomainState,
        pv: &'c mut PvVcpu,
        ctx: &'c mut GuestContext,
    ) -> Platform<'c> {
        Platform {
            console,
            dom,
            pv,
            ctx,
            shutdown: None,
            crash: None,
            context_changed: false,
            transfer: Transfer::default(),
            segment_base: None,
            block: false,
            poll: None,
        }
    }
}

impl Platform<'_> {
    /// The `vcpu_op` commands that reach other vCPUs (`VCPUOP_initialise`, `up`,
    /// `down`, `is_up`, and the registrations and runstate of another vCPU); `None` for
    /// the ones `PvVcpu::vcpu_op` serves (the caller's own state). A `vcpuid` that names
    /// no vCPU is -ENOENT first, whatever the command.
    fn smp_vcpu_op<F: TlbFlush>(
        &mut self,
        m: &mut Mach<F>,
        caller: Caller,
        a: [u64; 5],
    ) -> Option<i64> {
        use crate::vcpus::{VCPUOP_DOWN, VCPUOP_INITIALISE, VCPUOP_IS_UP, VCPUOP_UP};
        const VCPUOP_GET_RUNSTATE_INFO: u32 = 4;
        const VCPUOP_REGISTER_RUNSTATE_MEMORY_AREA: u32 = 5;
        const VCPUOP_REGISTER_VCPU_INFO: u32 = 10;
        let (cmd, target) = (a[0] as u32, a[1] as u32);
        if target as usize >= self.dom.vcpus.len() {
            return Some(Errno::ENOENT.neg());
        }
        let own = target == caller.vcpu;
        Some(match cmd {
            VCPUOP_INITIALISE => {
                let dom = &mut *self.dom;
                crate::vcpus::initialise(m, &mut dom.vcpus, &dom.evtchn, self.pv, target, a[2])
            }
            VCPUOP_UP => crate::vcpus::up(&mut self.dom.vcpus, &self.dom.evtchn, target),
            VCPUOP_DOWN => {
                let (rc, shutdown) =
                    crate::vcpus::down(&mut self.dom.vcpus, &self.dom.evtchn, target);
                if shutdown.is_some() {
                    self.shutdown = shutdown;
                }
                rc
            }
            VCPUOP_IS_UP => i64::from(self.dom.is_up(target)),
            VCPUOP_REGISTER_VCPU_INFO if !own => {
                let t = Caller::new(caller.dom, target);
                let current = self
                    .dom
                    .evtchn
                    .vcpu_info
                    .get(target as usize)
                    .copied()
                    .unwrap_or(0);
                match crate::pv::vcpu_op::register_vcpu_info(m, caller, t, current, a[2]) {
                    Ok(new) => {
                        if let Some(slot) = self.dom.evtchn.vcpu_info.get_mut(target as usize) {
                            *slot = new;
                        }
                        self.dom.evtchn.kick(target);
                        0
                    }
                    Err(rc) => rc,
                }
            }
            VCPUOP_REGISTER_RUNSTATE_MEMORY_AREA if !own => {
                let va = match m.kernel_view(caller).read_u64(a[2]) {
                    Ok(va) => va,
                    Err(e) => return Some(e.neg()),
                };
                if !pvmmu::guest_range_ok(va, crate::pv::vcpu_op::RUNSTATE_INFO_SIZE as u64) {
                    return Some(Errno::EFAULT.neg());
                }
                if let Some(slot) = self.dom.vcpus.get_mut(target as usize) {
                    slot.runstate_area = Some(va);
                }
                let info = self.other_runstate(target);
                let _ = m.kernel_view(caller).write(va, &info);
                0
            }
            // Another vCPU's secondary time area (Xen's `time_info_guest` of the
            // target): filled at once from the target's `vcpu_info` (Xen's
            // `force_update_vcpu_system_time`, through the caller's page tables),
            // recorded in its slot, followed at its next exit for later updates.
            crate::pv::vcpu_op::VCPUOP_REGISTER_VCPU_TIME_MEMORY_AREA if !own => {
                let va = match m.kernel_view(caller).read_u64(a[2]) {
                    Ok(va) => va,
                    Err(e) => return Some(e.neg()),
                };
                if !pvmmu::guest_range_ok(va, crate::pv::vcpu_op::TIME_INFO_SIZE as u64) {
                    return Some(Errno::EFAULT.neg());
                }
                if let Some(slot) = self.dom.vcpus.get_mut(target as usize) {
                    slot.time_area = Some(va);
                }
                if va != 0 {
                    self.fill_time_area(m, caller, target, Some(va));
                }
                self.dom.evtchn.kick(target);
                0
            }
            // Xen's periodic-timer commands take any vCPU of the domain; the target
            // follows at its next exit.
            crate::pv::timer::VCPUOP_SET_PERIODIC_TIMER
            | crate::pv::timer::VCPUOP_STOP_PERIODIC_TIMER
                if !own =>
            {
                let period = if cmd == crate::pv::timer::VCPUOP_SET_PERIODIC_TIMER {
                    let p = match m.kernel_view(caller).read_u64(a[2]) {
                        Ok(p) => p,
                        Err(e) => return Some(e.neg()),
                    };
                    use crate::pv::timer::{MIN_PERIOD_NS, STIME_DELTA_MAX};
                    if !(MIN_PERIOD_NS..=STIME_DELTA_MAX).contains(&p) {
                        return Some(Errno::EINVAL.neg());
                    }
                    p
                } else {
                    0
                };
                if let Some(slot) = self.dom.vcpus.get_mut(target as usize) {
                    slot.period = Some(period);
                }
                self.dom.evtchn.kick(target);
                0
            }
            // Areas by guest-physical address, for any vCPU of the domain (Xen's
            // `map_guest_area`); the area is filled at once where its content is known.
            c @ (crate::pv::vcpu_op::VCPUOP_REGISTER_RUNSTATE_PHYS_AREA
            | crate::pv::vcpu_op::VCPUOP_REGISTER_VCPU_TIME_PHYS_AREA) => {
                let gaddr = match m.kernel_view(caller).read_u64(a[2]) {
                    Ok(g) => g,
                    Err(e) => return Some(e.neg()),
                };
                let area = if c == crate::pv::vcpu_op::VCPUOP_REGISTER_RUNSTATE_PHYS_AREA {
                    pvmmu::GuestArea::Runstate
                } else {
                    pvmmu::GuestArea::Time
                };
                let t = Caller::new(caller.dom, target);
                match m.map_guest_area(t, area, gaddr) {
                    Ok(Ok(())) => {
                        match area {
                            pvmmu::GuestArea::Runstate if own => self.pv.update_runstate_area(m),
                            pvmmu::GuestArea::Runstate => {
                                let info = self.other_runstate(target);
                                crate::pv::vcpu_op::write_runstate_phys(m, gaddr, &info);
                            }
                            pvmmu::GuestArea::Time if own => self.pv.update_secondary_time(m),
                            // Another vCPU's from its `vcpu_info`, as Xen's
                            // `time_area_populate` does.
                            pvmmu::GuestArea::Time => self.fill_time_area(m, caller, target, None),
                        }
                        0
                    }
                    Ok(Err(e)) => e.neg(),
                    Err(_) => Errno::ENOENT.neg(),
                }
            }
            VCPUOP_GET_RUNSTATE_INFO if !own => {
                let info = self.other_runstate(target);
                m.kernel_view(caller)
                    .write(a[2], &info)
                    .map_or_else(|e| e.neg(), |()| 0)
            }
            _ => return None,
        })
    }

    /// Fills vCPU `target`'s secondary time area (the physical one if registered, else
    /// `va`) with the time record it last published.
    fn fill_time_area<F: TlbFlush>(
        &self,
        m: &Mach<F>,
        caller: Caller,
        target: u32,
        va: Option<u64>,
    ) {
        let info = self
            .dom
            .evtchn
            .vcpu_info
            .get(target as usize)
            .copied()
            .unwrap_or(0);
        if let Some(record) = self.pv.time_record_of(m, info) {
            let t = Caller::new(caller.dom, target);
            crate::pv::time::write_secondary_time(m, caller, t, va, &record);
        }
    }

    /// Another vCPU's `struct vcpu_runstate_info`: running since system time 0 while
    /// it is up (each vCPU has a host thread of its own), offline while down.
    fn other_runstate(&self, target: u32) -> [u8; crate::pv::vcpu_op::RUNSTATE_INFO_SIZE] {
        let now = self.pv.system_time_ns();
        let state: u32 = if self.dom.is_up(target) { 0 } else { 3 };
        let mut b = [0u8; crate::pv::vcpu_op::RUNSTATE_INFO_SIZE];
        b[..4].copy_from_slice(&state.to_le_bytes());
        let at = 16 + state as usize * 8;
        b[at..at + 8].copy_from_slice(&now.to_le_bytes());
        b
    }
}

/// The name of hypercall `nr`, for logs and reports.
pub fn name(nr: u64) -> String {
    pvmmu_abi::Hypercall::try_from(nr).map_or_else(|_| format!("#{nr}"), |h| h.to_string())
}

/// Serves hypercall `nr` with arguments `args` for the vCPU `pv`, whose context at the
/// call is `ctx`: the whole route from the registers to the result. Logged at debug
/// level (number, arguments, result).
pub fn dispatch<F: TlbFlush>(
    m: &mut Mach<F>,
    console: &mut dyn Console,
    dom: &mut DomainState,
    pv: &mut PvVcpu,
    ctx: &mut GuestContext,
    nr: u64,
    args: [u64; 5],
) -> Result<Served, MachineError> {
    *dom.stats.by_number.entry(nr).or_default() += 1;
    let caller = pv.caller();
    let mut platform = Platform::new(console, dom, pv, ctx);
    let r = m.hypercall(caller, nr, args, &mut platform)?;
    let outcome = match (platform.crash, platform.shutdown) {
        (Some(c), _) => Outcome::Crash(c),
        (None, Some(reason)) => Outcome::Shutdown(reason),
        (None, None) => Outcome::Return(r.rax),
    };
    debug!(
        "hypercall {} ({nr}) {:#x?} from {}.{}: {outcome:?}",
        name(nr),
        args,
        caller.dom,
        caller.vcpu
    );
    Ok(Served {
        outcome,
        roots: r.roots,
        reads: r.reads,
        context_changed: platform.context_changed,
        transfer: platform.transfer,
        segment_base: platform.segment_base,
        block: platform.block,
        poll: platform.poll,
        continuation: r.continuation,
    })
}

impl<F: TlbFlush> HypercallHandler<vm_memory::GuestMemoryMmap<()>, F> for Platform<'_> {
    fn hypercall(&mut self, m: &mut Mach<F>, caller: Caller, nr: u64, a: [u64; 5]) -> i64 {
        if self.crash.is_some() {
            return 0;
        }
        match nr {
            HYPERVISOR_set_trap_table => self.pv.set_trap_table(m, a[0]),
            HYPERVISOR_stack_switch => self.pv.stack_switch(a[0], a[1]),
            HYPERVISOR_set_callbacks => self.pv.set_callbacks(a[0], a[1], a[2]),
            HYPERVISOR_callback_op => self.pv.callback_op(m, a[0], a[1]),
            HYPERVISOR_iret => match self.pv.iret(m, self.ctx) {
                Ok((rax, t)) => {
                    self.context_changed = true;
                    self.transfer.mode_switched ^= t.mode_switched;
                    rax
                }
                Err(c) => {
                    self.crash = Some(c);
                    0
                }
            },
            HYPERVISOR_console_io => self.console_io(m, caller, a),
            HYPERVISOR_set_timer_op => self.pv.set_timer_op(a[0]),
            HYPERVISOR_vcpu_op => {
                let rc = match self.smp_vcpu_op(m, caller, a) {
                    Some(rc) => rc,
                    None => self
                        .pv
                        .vcpu_op(m, a[0], a[1], a[2])
                        .unwrap_or(Errno::ENOSYS.neg()),
                };
                // Events find the vCPU's vcpu_info where it is now.
                if let Some(slot) = self.dom.evtchn.vcpu_info.get_mut(caller.vcpu as usize) {
                    *slot = self.pv.vcpu_info;
                }
                rc
            }
            HYPERVISOR_grant_table_op => self.dom.grant.op(m, caller, a[0], a[1], a[2]),
            HYPERVISOR_physdev_op => self.physdev_op(m, caller, a),
            // Xen offers no virtual PMU unless booted with `vpmu`.
            HYPERVISOR_xenpmu_op => Errno::EOPNOTSUPP.neg(),
            HYPERVISOR_memory_op => self.dom.memory.op(m, caller, a[0], a[1]),
            HYPERVISOR_set_segment_base => self.set_segment_base(m, caller, a[0], a[1]),
            HYPERVISOR_fpu_taskswitch => self.pv.fpu_taskswitch(a[0] as i32 != 0),
            HYPERVISOR_set_debugreg => match self.pv.set_debugreg(a[0] as u32, a[1]) {
                Ok(()) => 0,
                Err(e) => e.neg(),
            },
            HYPERVISOR_get_debugreg => match self.pv.get_debugreg(a[0] as u32) {
                Some(v) => v as i64,
                None => Errno::ENODEV.neg(),
            },
            HYPERVISOR_event_channel_op => self.event_channel_op(m, caller, a),
            HYPERVISOR_sched_op => self.sched_op(m, caller, a),
            HYPERVISOR_xen_version => xen_version(m, caller, a),
            _ => Errno::ENOSYS.neg(),
        }
    }
}

impl Platform<'_> {
    fn console_io<F: TlbFlush>(&mut self, m: &Mach<F>, caller: Caller, a: [u64; 5]) -> i64 {
        let (cmd, count, buf) = (a[0] as u32, u64::from(a[1] as u32), a[2]);
        let mut view = m.kernel_view(caller);
        match cmd {
            CONSOLEIO_write => {
                let n = count.min(CONSOLE_MAX) as usize;
                let mut bytes = vec![0u8; n];
                if let Err(e) = view.read(buf, &mut bytes) {
                    return e.neg();
                }
                // Only printable characters (and line structure) from a domU, as Xen does.
                bytes.retain(|&b| b == b'\n' || b == b'\t' || (0x20..0x7f).contains(&b));
                // A guest that drives its console ring writes every line there too; the
                // console shows the ring then, as xl's console does.
                if !self.dom.ring.is_some_and(|r| r.used) {
                    self.console.write(&bytes);
                }
                0
            }
            CONSOLEIO_read => {
                if count > i32::MAX as u64 {
                    return Errno::E2BIG.neg();
                }
                let mut bytes = vec![0u8; count.min(4096) as usize];
                let n = self.console.read(&mut bytes);
                match view.write(buf, &bytes[..n]) {
                    Ok(()) => n as i64,
                    Err(e) => e.neg(),
                }
            }
            _ => Errno::ENOSYS.neg(),
        }
    }

    /// Drains the console ring, if there is one.
    fn drain_ring<F: TlbFlush>(&mut self, m: &Mach<F>) {
        if let Some(ring) = self.dom.ring.as_mut() {
            ring.drain(m.memory(), self.console);
        }
        self.dom.feed_console(m, self.console);
    }

    fn event_channel_op<F: TlbFlush>(
        &mut self,
        m: &mut Mach<F>,
        caller: Caller,
        a: [u64; 5],
    ) -> i64 {
        if let Some((rc, effects)) = self.dom.evtchn.op(m, caller, a[0] as u32, a[1]) {
            if let Some(port) = effects.backend_notified {
                if let Some(ring) = self.dom.ring.as_mut().filter(|r| r.port == port) {
                    ring.notified = true;
                    self.drain_ring(m);
                }
                if port == crate::builder::STORE_EVTCHN {
                    self.serve_store(m);
                }
            }
            return rc;
        }
        match a[0] as u32 {
            EVTCHNOP_init_control => self.fifo_init_control(m, caller, a[1]),
            // No FIFO control block was accepted, so there is no array to expand.
            EVTCHNOP_expand_array => Errno::EOPNOTSUPP.neg(),
            _ => Errno::ENOSYS.neg(),
        }
    }

    /// Answers what the guest put on the store ring, and raises the store port if
    /// answers went out.
    fn serve_store<F: TlbFlush>(&mut self, m: &Mach<F>) {
        if self.dom.xenstore.process(m.memory()) {
            self.dom.evtchn.set_pending(m, crate::builder::STORE_EVTCHN);
        }
    }

    /// `EVTCHNOP_init_control`, checked as Xen checks it (vCPU, offset, the control
    /// frame being the domain's writable RAM). The FIFO event-channel ABI itself is not
    /// offered yet: a request that passes the checks gets -EOPNOTSUPP, Xen's answer when
    /// it is built without FIFO event channels.
    fn fifo_init_control<F: TlbFlush>(&mut self, m: &Mach<F>, caller: Caller, arg: u64) -> i64 {
        // struct { u64 control_gfn; u32 offset; u32 vcpu; u8 link_bits; u8 pad[7]; }
        let mut b = [0u8; 24];
        if let Err(e) = m.kernel_view(caller).read(arg, &mut b) {
            return e.neg();
        }
        let gfn = u64::from_le_bytes(b[0..8].try_into().unwrap_or([0; 8]));
        let offset = u32::from_le_bytes(b[8..12].try_into().unwrap_or([0; 4]));
        let vcpu = u32::from_le_bytes(b[12..16].try_into().unwrap_or([0; 4]));
        let vcpus = m.domain(caller.dom).map_or(0, |d| d.vcpus().len());
        if vcpu as usize >= vcpus {
            return Errno::ENOENT.neg();
        }
        // The control block (ready, reserved, 16 queue heads) must fit in the page
        // and be 8-byte aligned.
        const CONTROL_BLOCK: u32 = 8 + 16 * 4;
        if offset > 4096 - CONTROL_BLOCK || !offset.is_multiple_of(8) {
            return Errno::EINVAL.neg();
        }
        let writable_ram = m.frames().get(pvmmu::Mfn(gfn)).is_some_and(|p| {
            p.owner == caller.dom
                && p.count > 0
                && (p.type_count == 0 || p.ty == pvmmu::PageType::Writable)
        });
        if !writable_ram {
            return Errno::EINVAL.neg();
        }
        Errno::EOPNOTSUPP.neg()
    }

    /// `set_segment_base(which, base)`: FS and the two GS bases (canonical only, else
    /// -EINVAL), or the user GS selector (`SEGBASE_GS_USER_SEL`, always 0); another
    /// `which` is -EINVAL.
    fn set_segment_base<F: TlbFlush>(
        &mut self,
        m: &mut Mach<F>,
        caller: Caller,
        which: u64,
        base: u64,
    ) -> i64 {
        let which = match which as u32 {
            0 => SegmentBase::Fs,
            1 => SegmentBase::GsUser,
            2 => SegmentBase::GsKernel,
            3 => {
                // SEGBASE_GS_USER_SEL: the user GS selector loaded from the descriptor
                // tables (RPL forced to 3); its base becomes the user GS base. A load
                // that faults loads the null selector instead (base 0), and the call
                // still succeeds, as Xen does (Linux cannot take a failure here).
                let sel = base as u16 | if base as u16 > 3 { 3 } else { 0 };
                let desc = segments::descriptor(m, caller, sel).map(|d| d.0);
                let base = segments::data_load_base(sel, desc).unwrap_or(0);
                self.segment_base = Some((SegmentBase::GsUser, base));
                return 0;
            }
            _ => return Errno::EINVAL.neg(),
        };
        if !pvmmu_abi::layout::is_canonical(base) {
            return Errno::EINVAL.neg();
        }
        self.segment_base = Some((which, base));
        0
    }

    /// `physdev_op`: a domU with no devices has only `PHYSDEVOP_set_iopl` to use.
    /// `physdev_op` as Xen answers a domU: the virtual IOPL, the PIRQ EOI bitmap (held
    /// by the library like any page the hypervisor keeps mapped; a domain without
    /// PIRQs never sees a bit set), the legacy unmask notification (nothing to
    /// unmask); other commands -ENOSYS.
    fn physdev_op<F: TlbFlush>(&mut self, m: &mut Mach<F>, caller: Caller, a: [u64; 5]) -> i64 {
        /// `PHYSDEVOP_IRQ_UNMASK_NOTIFY`, `PHYSDEVOP_set_iopl`,
        /// `PHYSDEVOP_pirq_eoi_gmfn_v1` and `_v2`.
        const UNMASK_NOTIFY: u32 = 4;
        const SET_IOPL: u32 = 6;
        const EOI_GMFN_V1: u32 = 17;
        const EOI_GMFN_V2: u32 = 28;
        match a[0] as u32 {
            SET_IOPL => match m.kernel_view(caller).read_u32(a[1]) {
                Ok(iopl) => self.pv.set_iopl(iopl),
                Err(e) => e.neg(),
            },
            EOI_GMFN_V1 | EOI_GMFN_V2 => match m.kernel_view(caller).read_u64(a[1]) {
                // For a PV guest the frame number is the machine frame.
                Ok(gmfn) => match m.register_pirq_eoi_map(caller, pvmmu::Mfn(gmfn)) {
                    Ok(r) => rc(r),
                    Err(e) => {
                        log::warn!("pirq_eoi_gmfn for {caller:?}: {e}");
                        Errno::EINVAL.neg()
                    }
                },
                Err(e) => e.neg(),
            },
            UNMASK_NOTIFY => 0,
            _ => Errno::ENOSYS.neg(),
        }
    }

    fn sched_op<F: TlbFlush>(&mut self, m: &Mach<F>, caller: Caller, a: [u64; 5]) -> i64 {
        match a[0] as u32 {
            SCHEDOP_yield => {
                self.drain_ring(m);
                self.serve_store(m);
                0
            }
            SCHEDOP_block => {
                // Xen's do_block: events are enabled, and the vCPU blocks unless one
                // is already waiting.
                self.drain_ring(m);
                self.pv.set_upcall_mask(m, 0);
                if !self.dom.evtchn.upcall_pending(m, caller.vcpu) {
                    self.block = true;
                }
                0
            }
            // Xen keeps the reason as a byte.
            SCHEDOP_shutdown => match m.kernel_view(caller).read_u32(a[1]) {
                Ok(reason) => {
                    self.shutdown = Some(reason & 0xff);
                    0
                }
                Err(e) => e.neg(),
            },
            // The code a later shutdown reports: accepted (nothing reports it here).
            SCHEDOP_SHUTDOWN_CODE => match m.kernel_view(caller).read_u32(a[1]) {
                Ok(_) => 0,
                Err(e) => e.neg(),
            },
            // Another domain's shutdown: its device model's or the control domain's
            // business (-ESRCH for a domain that does not exist).
            SCHEDOP_REMOTE_SHUTDOWN => match m.kernel_view(caller).read_array::<8>(a[1]) {
                Ok(b) => match m.domain(u16::from_le_bytes([b[0], b[1]])) {
                    Some(_) => Errno::EPERM.neg(),
                    None => Errno::ESRCH.neg(),
                },
                Err(e) => e.neg(),
            },
            // Only the hardware domain may override vCPU pinning.
            SCHEDOP_PIN_OVERRIDE => Errno::EPERM.neg(),
            SCHEDOP_POLL => self
                .sched_poll(m, caller, a[1])
                .map_or_else(Errno::neg, |()| 0),
            pvmmu_abi::sched::SCHEDOP_watchdog => match m.kernel_view(caller).read_array::<8>(a[1])
            {
                Ok(b) => {
                    let id = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                    let timeout = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
                    let now = self.pv.system_time_ns();
                    self.dom.watchdog(id, timeout, now)
                }
                Err(e) => e.neg(),
            },
            _ => Errno::ENOSYS.neg(),
        }
    }
}

/// `SCHEDOP_poll`, and the most ports one poll may name (Xen's limit).
const SCHEDOP_POLL: u32 = 3;
const POLL_MAX_PORTS: u32 = 128;

/// `SCHEDOP_remote_shutdown`, `SCHEDOP_shutdown_code`, `SCHEDOP_pin_override`.
const SCHEDOP_REMOTE_SHUTDOWN: u32 = 4;
const SCHEDOP_SHUTDOWN_CODE: u32 = 5;
const SCHEDOP_PIN_OVERRIDE: u32 = 7;

impl Platform<'_> {
    /// Xen's `do_poll`: `struct sched_poll { evtchn_port_t *ports; unsigned int
    /// nr_ports; uint64_t timeout; }`. More than 128 ports -EINVAL, a list outside the
    /// guest -EFAULT, a port beyond the ABI's -EINVAL; if one is already pending the
    /// call returns at once, else the vCPU waits for one (or the absolute `timeout`,
    /// when not 0). Events stay as the guest left them (unlike `SCHEDOP_block`).
    fn sched_poll<F: TlbFlush>(
        &mut self,
        m: &Mach<F>,
        caller: Caller,
        arg: u64,
    ) -> Result<(), Errno> {
        let b = m.kernel_view(caller).read_array::<24>(arg)?;
        let list = u64::from_le_bytes(b[..8].try_into().unwrap_or_default());
        let nr = u32::from_le_bytes(b[8..12].try_into().unwrap_or_default());
        let timeout = u64::from_le_bytes(b[16..24].try_into().unwrap_or_default());
        if nr > POLL_MAX_PORTS {
            return Err(Errno::EINVAL);
        }
        if !pvmmu::guest_range_ok(list, u64::from(nr) * 4) {
            return Err(Errno::EFAULT);
        }
        let mut ports = Vec::with_capacity(nr as usize);
        let mut view = m.kernel_view(caller);
        for i in 0..u64::from(nr) {
            let port = view.read_u32(list.wrapping_add(i * 4))?;
            if port as usize >= pvmmu_abi::shared_info::EVTCHN_2L_NR_CHANNELS {
                return Err(Errno::EINVAL);
            }
            if self.dom.evtchn.is_pending(m, port) {
                return Ok(());
            }
            ports.push(port);
        }
        self.drain_ring(m);
        self.poll = Some(Poll {
            ports,
            deadline: (timeout != 0).then_some(timeout),
        });
        Ok(())
    }
}

fn rc(r: Result<(), Errno>) -> i64 {
    r.map_or_else(|e| e.neg(), |()| 0)
}

/// What a domU is told instead of restricted build details (Xen's `xen_deny()`).
const DENIED: &[u8] = b"<denied>";

/// The `XENVER_get_features` submap 0 for a 64-bit PV domU, as Xen builds it: PTE
/// updates preserving A/D, the highmem assist, grant mappings carrying the PTE's
/// available bits, directly mapped memory, PAE page directories anywhere, and the
/// device-model MSI-X writes bit Xen sets for every x86 domain, and the runstate and
/// vcpu-time physical areas. (Xen also sets the vNUMA bit, which pvmmu does not
/// offer.)
pub const PV_FEATURES: u32 = {
    use pvmmu_abi::elfnote::{
        XENFEAT_direct_mapped, XENFEAT_gnttab_map_avail_bits, XENFEAT_highmem_assist,
        XENFEAT_mmu_pt_update_preserve_ad, XENFEAT_pae_pgdir_above_4gb, XENFEAT_runstate_phys_area,
        XENFEAT_vcpu_time_phys_area,
    };
    (1 << XENFEAT_pae_pgdir_above_4gb)
        | (1 << XENFEAT_mmu_pt_update_preserve_ad)
        | (1 << XENFEAT_highmem_assist)
        | (1 << XENFEAT_gnttab_map_avail_bits)
        | (1 << XENFEAT_direct_mapped)
        | (1 << XENFEAT_runstate_phys_area)
        | (1 << XENFEAT_vcpu_time_phys_area)
        | (1 << 20) // XENFEAT_dm_msix_all_writes
};

/// `xen_version(cmd, arg)` as Xen answers an unprivileged domain under the default XSM
/// policy: version, platform parameters and features for anyone; build strings in
/// fixed, NUL-padded buffers; the command line `<denied>`; build ids refused.
fn xen_version<F: TlbFlush>(m: &Mach<F>, caller: Caller, a: [u64; 5]) -> i64 {
    use pvmmu_abi::version::{
        XEN_CAPABILITIES_INFO_LEN, XEN_CHANGESET_INFO_LEN, XEN_EXTRAVERSION_LEN,
        XEN_GUEST_HANDLE_LEN, XENVER_build_id, XENVER_changeset, XENVER_commandline,
        XENVER_compile_info, XENVER_guest_handle, XENVER_platform_parameters,
    };
    let mut view = m.kernel_view(caller);
    let mut put = |bytes: &[u8]| rc(view.write(a[1], bytes));
    let padded = |s: &[u8], len: usize| {
        let mut b = vec![0u8; len];
        let n = s.len().min(len.saturating_sub(1));
        b[..n].copy_from_slice(&s[..n]);
        b
    };
    match a[0] as u32 {
        XENVER_version => i64::from(pvmmu_abi::version::XEN_VERSION_VALUE),
        XENVER_extraversion => put(&padded(b"-pvmmu", XEN_EXTRAVERSION_LEN)),
        XENVER_compile_info => {
            // compiler[64], compile_by[16], compile_domain[32], compile_date[32].
            let mut b = padded(b"rustc", 64);
            b.extend(padded(b"pvmmu", 16));
            b.extend(padded(b"", 32));
            b.extend(padded(b"", 32));
            put(&b)
        }
        XENVER_capabilities => put(&padded(b"xen-3.0-x86_64", XEN_CAPABILITIES_INFO_LEN)),
        XENVER_changeset => put(&padded(b"pvmmu", XEN_CHANGESET_INFO_LEN)),
        XENVER_platform_parameters => put(&pvmmu_abi::layout::HYPERVISOR_VIRT_START.to_le_bytes()),
        XENVER_get_features => {
            // struct { u32 submap_idx; u32 submap; }, copied in whole: submap 0 is
            // Xen's for a PV domU (writable page tables are a VM assist for PV, not a
            // feature); any other index is -EINVAL.
            let mut whole = [0u8; 8];
            if let Err(e) = view.read(a[1], &mut whole) {
                return e.neg();
            }
            let idx = [whole[0], whole[1], whole[2], whole[3]];
            if u32::from_le_bytes(idx) != 0 {
                return Errno::EINVAL.neg();
            }
            rc(view.write(a[1] + 4, &PV_FEATURES.to_le_bytes()))
        }
        XENVER_pagesize if a[1] != 0 => Errno::EINVAL.neg(),
        XENVER_pagesize => 4096,
        // The handle of a domain made without one: zeros.
        XENVER_guest_handle => put(&[0u8; XEN_GUEST_HANDLE_LEN]),
        // Restricted to privileged domains: a domU reads "<denied>".
        XENVER_commandline => put(&padded(DENIED, DENIED.len() + 1)),
        XENVER_build_id => Errno::EPERM.neg(),
        // The variable-length forms (extraversion2, capabilities2, changeset2,
        // commandline2): refused to a domU by the default policy.
        11..=14 => Errno::EPERM.neg(),
        _ => Errno::ENOSYS.neg(),
    }
}
