//! A domain's event channels with Xen's 2-level ABI (common/event_channel.c,
//! event_2l.c): ports, their states (unbound, interdomain, VIRQ, IPI), and the pending
//! and mask bitmaps in `shared_info` with the per-vCPU selector and upcall flag in
//! `vcpu_info`. `EVTCHNOP_alloc_unbound`, `bind_virq`, `bind_ipi`, `close`, `send`,
//! `status`, `bind_vcpu`, `unmask`, `bind_pirq` (a domU has no PIRQ to bind), `reset` and
//! `set_priority` (none in the 2-level ABI) are served with Xen's checks and errno; the
//! hypervisor raises VIRQs with [`EventChannels::raise_virq`]. Delivering the upcall is
//! the vCPU's (`PvVcpu::deliver_upcall`).

#![allow(non_upper_case_globals)]

use pvmmu::{Caller, Errno, TlbFlush};
use pvmmu_abi::shared_info::{
    EVTCHN_2L_NR_CHANNELS, SHARED_INFO_EVTCHN_MASK_OFFSET, SHARED_INFO_EVTCHN_PENDING_OFFSET,
    VCPU_INFO_PENDING_SEL_OFFSET, VCPU_INFO_UPCALL_PENDING_OFFSET,
};
use vm_memory::{Bytes, GuestAddress};

use crate::named::{own_domain, resolve};

/// The machine event channels live in.
type Mach<F> = pvmmu::Machine<vm_memory::GuestMemoryMmap<()>, F>;

/// `EVTCHNOP_*` commands served here.
pub const EVTCHNOP_bind_virq: u32 = 1;
/// See [`EVTCHNOP_bind_virq`].
pub const EVTCHNOP_close: u32 = 3;
/// See [`EVTCHNOP_bind_virq`].
pub const EVTCHNOP_send: u32 = 4;
/// See [`EVTCHNOP_bind_virq`].
pub const EVTCHNOP_status: u32 = 5;
/// See [`EVTCHNOP_bind_virq`].
pub const EVTCHNOP_alloc_unbound: u32 = 6;
/// See [`EVTCHNOP_bind_virq`].
pub const EVTCHNOP_bind_ipi: u32 = 7;
/// See [`EVTCHNOP_bind_virq`].
pub const EVTCHNOP_bind_vcpu: u32 = 8;
/// See [`EVTCHNOP_bind_virq`].
pub const EVTCHNOP_unmask: u32 = 9;
/// See [`EVTCHNOP_bind_virq`].
pub const EVTCHNOP_bind_pirq: u32 = 2;
/// See [`EVTCHNOP_bind_virq`].
pub const EVTCHNOP_reset: u32 = 10;
/// See [`EVTCHNOP_bind_virq`].
pub const EVTCHNOP_set_priority: u32 = 13;
/// See [`EVTCHNOP_bind_virq`].
pub const EVTCHNOP_reset_cont: u32 = 14;

/// PIRQs of a PV domU: Xen gives it `nr_static_irqs + extra_domU_irqs`, the host's
/// IO-APIC GSIs (24 with one IO-APIC, taken here) plus 32 by default.
pub const NR_PIRQS: u32 = 24 + 32;

/// Number of VIRQs.
pub const NR_VIRQS: u32 = 24;
/// The per-vCPU timer VIRQ.
pub const VIRQ_TIMER: u32 = 0;

/// `EVTCHNSTAT_*`.
const STAT_CLOSED: u32 = 0;
const STAT_UNBOUND: u32 = 1;
const STAT_INTERDOMAIN: u32 = 2;
const STAT_VIRQ: u32 = 4;
const STAT_IPI: u32 = 5;

/// What a port is bound to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PortState {
    /// Not in use.
    #[default]
    Free,
    /// Port 0: never allocated.
    Reserved,
    /// Allocated, waiting for `remote` to bind it.
    Unbound {
        /// The domain allowed to bind it.
        remote: u16,
    },
    /// Bound to a port of another domain (here: the VMM's backends, domain 0).
    Interdomain {
        /// The remote domain.
        remote: u16,
        /// Its port.
        remote_port: u32,
    },
    /// Bound to a VIRQ.
    Virq(u32),
    /// An inter-processor interrupt.
    Ipi,
}

/// One port.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Port {
    /// Its binding.
    pub state: PortState,
    /// The vCPU its events go to.
    pub vcpu: u32,
}

/// What the hypervisor must do after an `event_channel_op`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Effects {
    /// The guest notified a port bound to the VMM's backends: that port.
    pub backend_notified: Option<u32>,
}

/// A domain's event channels.
#[derive(Debug, Clone)]
pub struct EventChannels {
    ports: Vec<Port>,
    /// Guest-physical address of `shared_info`.
    shared_info: u64,
    /// Guest-physical address of each vCPU's `vcpu_info` (moved by
    /// `VCPUOP_register_vcpu_info`: the embedder keeps this current).
    pub vcpu_info: Vec<u64>,
    /// `virq_to_evtchn` per vCPU.
    virqs: Vec<[u32; NR_VIRQS as usize]>,
    /// vCPUs whose upcall became pending since [`EventChannels::take_kicks`] (bit `v`:
    /// vCPU `v`): the embedder kicks them (Xen's `vcpu_kick`).
    kicks: std::cell::Cell<u64>,
    /// vCPUs waiting in `SCHEDOP_poll` (bit `v`: vCPU `v`).
    pollers: std::cell::Cell<u64>,
}

/// `EVTCHNOP_bind_interdomain`.
const EVTCHNOP_BIND_INTERDOMAIN: u32 = 0;

/// Ports per bucket (Xen's `EVTCHNS_PER_BUCKET` on x86-64: a page of 64-byte
/// `struct evtchn`s); a port is valid once its bucket exists.
const PORTS_PER_BUCKET: usize = 64;

/// The highest port a domain may bind: the toolstack's `max_event_channels` less one,
/// as xl creates a domU (1023 by default; the 2-level ABI itself has 4096).
pub const MAX_PORT: u32 = 1023;
const _: () = assert!((MAX_PORT as usize) < EVTCHN_2L_NR_CHANNELS);

impl Default for EventChannels {
    fn default() -> Self {
        EventChannels::new(0, Vec::new())
    }
}

impl EventChannels {
    /// Event channels of a domain whose `shared_info` is at `shared_info` and whose
    /// vCPUs' `vcpu_info` are at `vcpu_info`: only port 0 (reserved) exists.
    pub fn new(shared_info: u64, vcpu_info: Vec<u64>) -> EventChannels {
        let n = vcpu_info.len();
        // The first bucket exists from the start: port 0 reserved, the rest free.
        let mut ports = vec![Port::default(); PORTS_PER_BUCKET];
        ports[0].state = PortState::Reserved;
        EventChannels {
            ports,
            shared_info,
            vcpu_info,
            virqs: vec![[0; NR_VIRQS as usize]; n],
            kicks: std::cell::Cell::new(0),
            pollers: std::cell::Cell::new(0),
        }
    }

    /// Port `port`, if it is valid (in a bucket that exists; free ports included, as
    /// Xen's `port_is_valid`).
    pub fn port(&self, port: u32) -> Option<Port> {
        self.ports.get(port as usize).copied()
    }

    /// Binds the lowest free port as `state` for `vcpu` (Xen's `get_free_port`, which
    /// adds a bucket of ports when the ones there are taken): -ENOSPC beyond
    /// [`MAX_PORT`].
    pub fn allocate(&mut self, state: PortState, vcpu: u32) -> Result<u32, Errno> {
        let port = self.free_port()?;
        if port == self.ports.len() {
            self.ports.resize(port + PORTS_PER_BUCKET, Port::default());
        }
        self.ports[port] = Port { state, vcpu };
        Ok(port as u32)
    }

    /// The port [`EventChannels::allocate`] would take: the lowest free one, or the
    /// first of a new bucket; -ENOSPC beyond [`MAX_PORT`].
    fn free_port(&self) -> Result<usize, Errno> {
        match self.ports.iter().position(|p| p.state == PortState::Free) {
            Some(p) if p <= MAX_PORT as usize => Ok(p),
            None if self.ports.len() <= MAX_PORT as usize => Ok(self.ports.len()),
            _ => Err(Errno::ENOSPC),
        }
    }

    fn nr_vcpus(&self) -> u32 {
        self.vcpu_info.len() as u32
    }

    /// Byte address of word `w` of the pending (or mask) bitmap.
    fn bitmap_word(&self, mask: bool, w: u64) -> GuestAddress {
        let off = if mask {
            SHARED_INFO_EVTCHN_MASK_OFFSET
        } else {
            SHARED_INFO_EVTCHN_PENDING_OFFSET
        };
        GuestAddress(self.shared_info + off as u64 + w * 8)
    }

    /// Whether `port` is pending (masked or not), as `SCHEDOP_poll` looks at it.
    pub fn is_pending<F: TlbFlush>(&self, m: &Mach<F>, port: u32) -> bool {
        (port as usize) < EVTCHN_2L_NR_CHANNELS && self.test_bit(m, false, port)
    }

    fn test_bit<F: TlbFlush>(&self, m: &Mach<F>, mask: bool, port: u32) -> bool {
        let w: u64 = m
            .memory()
            .read_obj(self.bitmap_word(mask, u64::from(port / 64)))
            .unwrap_or(0);
        w & (1 << (port % 64)) != 0
    }

    /// Sets or clears a bitmap bit: whether it was set.
    fn change_bit<F: TlbFlush>(&self, m: &Mach<F>, mask: bool, port: u32, set: bool) -> bool {
        let at = self.bitmap_word(mask, u64::from(port / 64));
        let w: u64 = m.memory().read_obj(at).unwrap_or(0);
        let bit = 1 << (port % 64);
        let new = if set { w | bit } else { w & !bit };
        if new != w {
            let _ = m.memory().write_obj(new, at);
        }
        w & bit != 0
    }

    /// Marks selector bit `sel` of `vcpu` and its upcall pending (Xen's
    /// `vcpu_mark_events_pending` after the selector test-and-set).
    fn mark_pending<F: TlbFlush>(&self, m: &Mach<F>, vcpu: u32, sel: u32) {
        let Some(&info) = self.vcpu_info.get(vcpu as usize).filter(|&&i| i != 0) else {
            return;
        };
        let at = GuestAddress(info + VCPU_INFO_PENDING_SEL_OFFSET as u64);
        let w: u64 = m.memory().read_obj(at).unwrap_or(0);
        if w & (1 << sel) != 0 {
            return;
        }
        let _ = m.memory().write_obj(w | (1 << sel), at);
        let pending = GuestAddress(info + VCPU_INFO_UPCALL_PENDING_OFFSET as u64);
        if m.memory().read_obj::<u8>(pending).unwrap_or(0) == 0 {
            let _ = m.memory().write_obj(1u8, pending);
            if vcpu < 64 {
                self.kicks.set(self.kicks.get() | 1 << vcpu);
            }
        }
    }

    /// Asks the embedder to kick `vcpu` (it must look at its state again).
    pub fn kick(&self, vcpu: u32) {
        if vcpu < 64 {
            self.kicks.set(self.kicks.get() | 1 << vcpu);
        }
    }

    /// The vCPUs whose upcall became pending since the last call (bit `v`: vCPU `v`),
    /// which the embedder must kick out of the guest (or wake) so that they see it.
    ///
    /// ```
    /// let e = platform::evtchn::EventChannels::default();
    /// assert_eq!(e.take_kicks(), 0);
    /// ```
    pub fn take_kicks(&self) -> u64 {
        self.kicks.replace(0)
    }

    /// Xen's `evtchn_2l_set_pending`: the port's pending bit, and if it is not masked,
    /// its selector bit and the upcall of the port's vCPU.
    pub fn set_pending<F: TlbFlush>(&self, m: &Mach<F>, port: u32) {
        let vcpu = self.port(port).map_or(0, |p| p.vcpu);
        if self.change_bit(m, false, port, true) {
            return;
        }
        if !self.test_bit(m, true, port) {
            self.mark_pending(m, vcpu, port / 64);
        }
        // Xen's `evtchn_check_pollers`: a port newly pending wakes the vCPUs waiting in
        // `SCHEDOP_poll`, masked or not (a spinlock waiter polls a masked port).
        self.kicks.set(self.kicks.get() | self.pollers.get());
    }

    /// Marks vCPU `vcpu` as waiting in `SCHEDOP_poll` (`true`) or no longer (`false`):
    /// a port becoming pending kicks it, whatever the port's mask.
    pub fn set_polling(&self, vcpu: u32, polling: bool) {
        if vcpu < 64 {
            let bit = 1u64 << vcpu;
            let p = self.pollers.get();
            self.pollers.set(if polling { p | bit } else { p & !bit });
        }
    }

    /// Raises `virq` on `vcpu`, if the guest bound it.
    pub fn raise_virq<F: TlbFlush>(&self, m: &Mach<F>, vcpu: u32, virq: u32) {
        let port = self
            .virqs
            .get(vcpu as usize)
            .and_then(|v| v.get(virq as usize))
            .copied()
            .unwrap_or(0);
        if port != 0 {
            self.set_pending(m, port);
        }
    }

    /// Whether the guest bound `virq` on `vcpu` (raising it does something).
    pub fn virq_bound(&self, vcpu: u32, virq: u32) -> bool {
        self.virqs
            .get(vcpu as usize)
            .and_then(|v| v.get(virq as usize))
            .is_some_and(|&port| port != 0)
    }

    /// Whether `vcpu` has an upcall pending (`vcpu_info.evtchn_upcall_pending`).
    pub fn upcall_pending<F: TlbFlush>(&self, m: &Mach<F>, vcpu: u32) -> bool {
        self.vcpu_info.get(vcpu as usize).is_some_and(|&info| {
            info != 0
                && m.memory()
                    .read_obj::<u8>(GuestAddress(info + VCPU_INFO_UPCALL_PENDING_OFFSET as u64))
                    .unwrap_or(0)
                    != 0
        })
    }

    /// `event_channel_op(cmd, arg)` for `caller`; returns RAX and what the VMM must do.
    /// `None` for commands not served here.
    pub fn op<F: TlbFlush>(
        &mut self,
        m: &mut Mach<F>,
        caller: Caller,
        cmd: u32,
        arg: u64,
    ) -> Option<(i64, Effects)> {
        let mut effects = Effects::default();
        let r = match cmd {
            EVTCHNOP_alloc_unbound => self.alloc_unbound(m, caller, arg),
            EVTCHNOP_BIND_INTERDOMAIN => self.bind_interdomain(m, caller, arg),
            EVTCHNOP_bind_virq => self.bind_virq(m, caller, arg),
            EVTCHNOP_bind_ipi => self.bind_ipi(m, caller, arg),
            EVTCHNOP_close => self.close(m, caller, arg),
            EVTCHNOP_send => self.send(m, caller, arg, &mut effects),
            EVTCHNOP_status => self.status(m, caller, arg),
            EVTCHNOP_bind_vcpu => self.bind_vcpu(m, caller, arg),
            EVTCHNOP_unmask => self.unmask(m, caller, arg),
            EVTCHNOP_bind_pirq => self.bind_pirq(m, caller, arg),
            EVTCHNOP_reset | EVTCHNOP_reset_cont => {
                self.reset(m, caller, arg, cmd == EVTCHNOP_reset_cont)
            }
            EVTCHNOP_set_priority => self.set_priority(m, caller, arg),
            _ => return None,
        };
        log::debug!("event_channel_op {cmd}: {r:?} {effects:?}");
        Some((r.map_or_else(Errno::neg, |()| 0), effects))
    }

    fn alloc_unbound<F: TlbFlush>(
        &mut self,
        m: &Mach<F>,
        caller: Caller,
        arg: u64,
    ) -> Result<(), Errno> {
        // struct { domid_t dom, remote_dom; evtchn_port_t port; }
        let b = m.kernel_view(caller).read_array::<8>(arg)?;
        let dom = u16::from_le_bytes([b[0], b[1]]);
        let remote = u16::from_le_bytes([b[2], b[3]]);
        own_domain(m, caller, dom)?;
        let remote = resolve(caller, remote);
        let port = self.allocate(PortState::Unbound { remote }, 0)?;
        m.kernel_view(caller).write_u32(arg + 4, port)
    }

    /// Xen's `evtchn_bind_interdomain`: the remote domain (-ESRCH), a free local port
    /// (-ENOSPC), then the remote port, which must be unbound and offered to the caller
    /// (-EINVAL); the new local port is set pending. The caller can bind its own
    /// unbound ports (a loopback pair); the backend domain offers it none of its ports.
    fn bind_interdomain<F: TlbFlush>(
        &mut self,
        m: &Mach<F>,
        caller: Caller,
        arg: u64,
    ) -> Result<(), Errno> {
        // struct { domid_t remote_dom; evtchn_port_t remote_port; evtchn_port_t
        //          local_port; }
        let b = m.kernel_view(caller).read_array::<12>(arg)?;
        let rdom = u16::from_le_bytes([b[0], b[1]]);
        let rport = u32::from_le_bytes(b[4..8].try_into().unwrap_or_default());
        let rdom = resolve(caller, rdom);
        if m.domain(rdom).is_none() {
            return Err(Errno::ESRCH);
        }
        self.free_port()?;
        let offered = rdom == caller.dom
            && self
                .port(rport)
                .is_some_and(|p| p.state == PortState::Unbound { remote: caller.dom });
        if !offered {
            return Err(Errno::EINVAL);
        }
        let lport = self.allocate(
            PortState::Interdomain {
                remote: caller.dom,
                remote_port: rport,
            },
            0,
        )?;
        if let Some(p) = self.ports.get_mut(rport as usize) {
            p.state = PortState::Interdomain {
                remote: caller.dom,
                remote_port: lport,
            };
        }
        // Notifications sent to the unbound end were dropped: Xen makes up for them by
        // always setting the new local port pending.
        self.set_pending(m, lport);
        m.kernel_view(caller).write_u32(arg + 8, lport)
    }

    fn bind_virq<F: TlbFlush>(
        &mut self,
        m: &Mach<F>,
        caller: Caller,
        arg: u64,
    ) -> Result<(), Errno> {
        // struct { uint32_t virq; uint32_t vcpu; evtchn_port_t port; }
        let b = m.kernel_view(caller).read_array::<12>(arg)?;
        let virq = u32::from_le_bytes(b[0..4].try_into().unwrap_or_default());
        let vcpu = u32::from_le_bytes(b[4..8].try_into().unwrap_or_default());
        if virq >= NR_VIRQS {
            return Err(Errno::EINVAL);
        }
        if virq_is_global(virq) && vcpu != 0 {
            return Err(Errno::EINVAL);
        }
        if vcpu >= self.nr_vcpus() {
            return Err(Errno::ENOENT);
        }
        // A global VIRQ goes to its handler domain, the hardware domain unless the
        // toolstack moved it: never a domU's to bind.
        if virq_is_global(virq) && virq != VIRQ_ARGO {
            return Err(Errno::EBUSY);
        }
        if self.virqs[vcpu as usize][virq as usize] != 0 {
            return Err(Errno::EEXIST);
        }
        let port = self.allocate(PortState::Virq(virq), vcpu)?;
        self.virqs[vcpu as usize][virq as usize] = port;
        m.kernel_view(caller).write_u32(arg + 8, port)
    }

    fn bind_ipi<F: TlbFlush>(
        &mut self,
        m: &Mach<F>,
        caller: Caller,
        arg: u64,
    ) -> Result<(), Errno> {
        // struct { uint32_t vcpu; evtchn_port_t port; }
        let b = m.kernel_view(caller).read_array::<8>(arg)?;
        let vcpu = u32::from_le_bytes(b[0..4].try_into().unwrap_or_default());
        if vcpu >= self.nr_vcpus() {
            return Err(Errno::ENOENT);
        }
        let port = self.allocate(PortState::Ipi, vcpu)?;
        m.kernel_view(caller).write_u32(arg + 4, port)
    }

    /// The port named by the `u32` at `arg`, if it is a valid port number.
    fn port_arg<F: TlbFlush>(&self, m: &Mach<F>, caller: Caller, arg: u64) -> Result<u32, Errno> {
        let port = m.kernel_view(caller).read_u32(arg)?;
        if (port as usize) < self.ports.len() {
            Ok(port)
        } else {
            Err(Errno::EINVAL)
        }
    }

    /// `EVTCHNOP_bind_pirq` (Xen's `evtchn_bind_pirq`): a PIRQ beyond the domain's is
    /// -EINVAL; any other is -EPERM, a domU holding no IRQ permission (no device is
    /// passed through).
    fn bind_pirq<F: TlbFlush>(&self, m: &Mach<F>, caller: Caller, arg: u64) -> Result<(), Errno> {
        // struct { uint32_t pirq; uint32_t flags; evtchn_port_t port; }
        let b = m.kernel_view(caller).read_array::<12>(arg)?;
        let pirq = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        if pirq >= NR_PIRQS {
            return Err(Errno::EINVAL);
        }
        Err(Errno::EPERM)
    }

    /// `EVTCHNOP_set_priority`: -EINVAL for a port that is not valid, else -ENOSYS
    /// (the 2-level ABI has no priorities).
    fn set_priority<F: TlbFlush>(
        &self,
        m: &Mach<F>,
        caller: Caller,
        arg: u64,
    ) -> Result<(), Errno> {
        // struct { evtchn_port_t port; uint32_t priority; }
        let b = m.kernel_view(caller).read_array::<8>(arg)?;
        let port = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        if (port as usize) < self.ports.len() {
            Err(Errno::ENOSYS)
        } else {
            Err(Errno::EINVAL)
        }
    }

    /// `EVTCHNOP_reset` / `EVTCHNOP_reset_cont` of the domain named in `struct
    /// evtchn_reset { domid_t dom; }`: an unknown domain -ESRCH, another one -EPERM (a
    /// domU controls none); its own: every port closed, as Xen's `evtchn_reset` does
    /// (`reset_cont` with no reset under way is -EBUSY).
    fn reset<F: TlbFlush>(
        &mut self,
        m: &Mach<F>,
        caller: Caller,
        arg: u64,
        resuming: bool,
    ) -> Result<(), Errno> {
        let b = m.kernel_view(caller).read_array::<2>(arg)?;
        crate::named::own_domain(m, caller, u16::from_le_bytes(b))?;
        if resuming {
            // A reset runs to completion in one call here: none is ever under way.
            return Err(Errno::EBUSY);
        }
        for port in 1..self.ports.len() as u32 {
            if !matches!(
                self.ports[port as usize].state,
                PortState::Free | PortState::Reserved
            ) {
                self.close_port(m, caller, port);
            }
        }
        Ok(())
    }

    fn close<F: TlbFlush>(&mut self, m: &Mach<F>, caller: Caller, arg: u64) -> Result<(), Errno> {
        let port = self.port_arg(m, caller, arg)?;
        if matches!(
            self.ports[port as usize].state,
            PortState::Free | PortState::Reserved
        ) {
            return Err(Errno::EINVAL);
        }
        self.close_port(m, caller, port);
        Ok(())
    }

    /// Closes a port in use (Xen's `evtchn_close`).
    fn close_port<F: TlbFlush>(&mut self, m: &Mach<F>, caller: Caller, port: u32) {
        let p = self.ports[port as usize];
        match p.state {
            PortState::Virq(virq) => {
                // A VIRQ that is not per vCPU sits in vCPU 0's table wherever its
                // events go (`bind_vcpu` moves only those).
                let on = if virq_is_global(virq) { 0 } else { p.vcpu };
                if let Some(v) = self.virqs.get_mut(on as usize) {
                    v[virq as usize] = 0;
                }
            }
            // The other end of a loopback pair waits again, unbound, as Xen leaves it.
            PortState::Interdomain {
                remote,
                remote_port,
            } if remote == caller.dom && remote_port != port => {
                if let Some(q) = self.ports.get_mut(remote_port as usize) {
                    q.state = PortState::Unbound { remote };
                }
            }
            _ => {}
        }
        self.change_bit(m, false, port, false);
        self.ports[port as usize] = Port::default();
    }

    fn send<F: TlbFlush>(
        &mut self,
        m: &Mach<F>,
        caller: Caller,
        arg: u64,
        effects: &mut Effects,
    ) -> Result<(), Errno> {
        let port = self.port_arg(m, caller, arg)?;
        match self.ports[port as usize].state {
            PortState::Interdomain {
                remote,
                remote_port,
            } if remote == caller.dom => {
                // A loopback pair: the other end's port is pending.
                self.set_pending(m, remote_port);
                Ok(())
            }
            PortState::Interdomain { .. } => {
                effects.backend_notified = Some(port);
                Ok(())
            }
            PortState::Ipi => {
                self.set_pending(m, port);
                Ok(())
            }
            // Nobody is there yet: Xen drops the notification silently.
            PortState::Unbound { .. } => Ok(()),
            _ => Err(Errno::EINVAL),
        }
    }

    fn status<F: TlbFlush>(&mut self, m: &Mach<F>, caller: Caller, arg: u64) -> Result<(), Errno> {
        // struct { domid_t dom; evtchn_port_t port; uint32_t status; uint32_t vcpu;
        //          union { ... } u; }, copied in whole and back in whole: only the
        // union member that applies is set, the rest keeps what the guest passed.
        let mut b = m.kernel_view(caller).read_array::<24>(arg)?;
        let dom = u16::from_le_bytes([b[0], b[1]]);
        let port = u32::from_le_bytes(b[4..8].try_into().unwrap_or_default());
        match own_domain(m, caller, dom) {
            Ok(()) => {}
            // Another domain's port: checked before the permission (its ports are
            // not modelled: any the 2-level ABI can name counts as valid).
            Err(Errno::EPERM) if port as usize >= EVTCHN_2L_NR_CHANNELS => {
                return Err(Errno::EINVAL);
            }
            Err(e) => return Err(e),
        }
        let p = self.port(port).ok_or(Errno::EINVAL)?;
        let put = |b: &mut [u8; 24], at: usize, v: &[u8]| b[at..at + v.len()].copy_from_slice(v);
        let status = match p.state {
            PortState::Free | PortState::Reserved => STAT_CLOSED,
            PortState::Unbound { remote } => {
                put(&mut b, 16, &remote.to_le_bytes());
                STAT_UNBOUND
            }
            PortState::Interdomain {
                remote,
                remote_port,
            } => {
                put(&mut b, 16, &remote.to_le_bytes());
                put(&mut b, 20, &remote_port.to_le_bytes());
                STAT_INTERDOMAIN
            }
            PortState::Virq(v) => {
                put(&mut b, 16, &v.to_le_bytes());
                STAT_VIRQ
            }
            PortState::Ipi => STAT_IPI,
        };
        put(&mut b, 8, &status.to_le_bytes());
        put(&mut b, 12, &p.vcpu.to_le_bytes());
        m.kernel_view(caller).write(arg, &b)
    }

    fn bind_vcpu<F: TlbFlush>(
        &mut self,
        m: &Mach<F>,
        caller: Caller,
        arg: u64,
    ) -> Result<(), Errno> {
        // struct { evtchn_port_t port; uint32_t vcpu; }
        let b = m.kernel_view(caller).read_array::<8>(arg)?;
        let port = u32::from_le_bytes(b[0..4].try_into().unwrap_or_default());
        let vcpu = u32::from_le_bytes(b[4..8].try_into().unwrap_or_default());
        if vcpu >= self.nr_vcpus() {
            return Err(Errno::ENOENT);
        }
        let p = self.port(port).ok_or(Errno::EINVAL)?;
        match p.state {
            PortState::Virq(v) if !virq_is_global(v) => Err(Errno::EINVAL),
            PortState::Virq(_) | PortState::Unbound { .. } | PortState::Interdomain { .. } => {
                self.ports[port as usize].vcpu = vcpu;
                Ok(())
            }
            _ => Err(Errno::EINVAL),
        }
    }

    fn unmask<F: TlbFlush>(&mut self, m: &Mach<F>, caller: Caller, arg: u64) -> Result<(), Errno> {
        let port = self.port_arg(m, caller, arg)?;
        self.unmask_port(m, port);
        Ok(())
    }

    /// Xen's `evtchn_2l_unmask`: clears the mask bit; a port that was masked and is
    /// pending raises its selector bit and upcall.
    pub fn unmask_port<F: TlbFlush>(&self, m: &Mach<F>, port: u32) {
        let vcpu = self.port(port).map_or(0, |p| p.vcpu);
        if self.change_bit(m, true, port, false) && self.test_bit(m, false, port) {
            self.mark_pending(m, vcpu, port / 64);
        }
    }
}

/// Xen's `virq_is_global`: the timer, debug, xenoprof and PMU VIRQs are per vCPU.
/// `VIRQ_ARGO`: a per-domain VIRQ (neither per-vCPU nor global).
const VIRQ_ARGO: u32 = 11;

const fn virq_is_global(virq: u32) -> bool {
    !matches!(virq, 0 | 1 | 7 | 13)
}
