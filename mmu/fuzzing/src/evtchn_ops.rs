//! The `evtchn_ops` harness: a domain's 2-level event channels (`EVTCHNOP_alloc_unbound`,
//! `bind_interdomain` (loopback), `bind_virq`, `bind_ipi`, `close`, `send`, `unmask`,
//! `bind_vcpu`) among the guest's own work on the bitmaps (masking and unmasking ports,
//! acknowledging events as its upcall handler does), on a domain of two vCPUs the VMM's
//! own recipe built (`platform::Domain`, no KVM).
//!
//! The oracle is a model of Xen's event-channel rules written from Xen's
//! `common/event_channel.c` and `event_2l.c`, not from the platform crate: it predicts
//! each call's result and the port it hands back, every port's binding and vCPU, the
//! ports that exist (buckets of 64 up to port 1023), the shared pending and mask
//! bitmaps, each vCPU's pending selector and upcall flag, and which vCPUs are kicked.

use arbitrary::{Arbitrary, Unstructured};
use platform::dispatch::DomainState;
use platform::evtchn::PortState;
use platform::{Domain, DomainSpec};
use pvmmu::{Caller, NoFlush};
use pvmmu_abi::shared_info::{
    SHARED_INFO_EVTCHN_MASK_OFFSET, SHARED_INFO_EVTCHN_PENDING_OFFSET,
    VCPU_INFO_PENDING_SEL_OFFSET, VCPU_INFO_UPCALL_PENDING_OFFSET,
};
use vm_memory::{Bytes, GuestAddress};

/// Where the harness puts a call's argument structure (guest virtual == physical in the
/// builder's initial mapping of the minimal image).
const ARG: u64 = 0x15_0000;
/// Ports per bucket, the highest port the toolstack allows, Xen's VIRQ count.
const BUCKET: usize = 64;
const MAX_PORT: usize = 1023;
const NR_VIRQS: u32 = 24;
const VCPUS: u32 = 2;
/// A domain id that does not exist.
const NO_DOMAIN: u16 = 0x7ef0;

const EVTCHNOP_BIND_INTERDOMAIN: u32 = 0;
const EVTCHNOP_BIND_VIRQ: u32 = 1;
const EVTCHNOP_CLOSE: u32 = 3;
const EVTCHNOP_SEND: u32 = 4;
const EVTCHNOP_ALLOC_UNBOUND: u32 = 6;
const EVTCHNOP_BIND_IPI: u32 = 7;
const EVTCHNOP_BIND_VCPU: u32 = 8;
const EVTCHNOP_UNMASK: u32 = 9;

const EINVAL: i64 = -22;
const ENOENT: i64 = -2;
const ESRCH: i64 = -3;
const EEXIST: i64 = -17;
const EBUSY: i64 = -16;
const ENOSPC: i64 = -28;

/// A port: one in use, or any number.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum PortSel {
    /// The `n`-th port in use (by the model).
    Used(u8),
    /// A number up to somewhat beyond the last valid port.
    Raw(u16),
}

/// A domain argument.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum DomSel {
    /// DOMID_SELF.
    SelfDom,
    /// The domain's own id.
    Own,
    /// One that does not exist.
    Missing,
}

/// One operation.
#[derive(Arbitrary, Debug, Clone)]
pub enum Op {
    /// `alloc_unbound { dom, remote_dom }`.
    AllocUnbound(DomSel, DomSel),
    /// `bind_interdomain { remote_dom, remote_port }` (the domain's own unbound ports:
    /// a loopback pair).
    BindInterdomain(DomSel, PortSel),
    /// `bind_virq { virq, vcpu }`.
    BindVirq(u8, u8),
    /// `bind_ipi { vcpu }`.
    BindIpi(u8),
    /// `close`.
    Close(PortSel),
    /// `send`.
    Send(PortSel),
    /// `unmask`.
    Unmask(PortSel),
    /// `bind_vcpu { port, vcpu }`.
    BindVcpu(PortSel, u8),
    /// The guest sets or clears a port's mask bit itself.
    GuestMask(PortSel, bool),
    /// The guest's upcall handler on vCPU `.0`: clears the upcall flag and the selector
    /// and the pending bits of the words it names.
    GuestAck(u8),
    /// A port masked by the guest, sent to, then unmasked with `EVTCHNOP_unmask` (the
    /// path where unmasking delivers what arrived meanwhile).
    MaskSendUnmask(PortSel),
}

/// A binding, as the model keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Free,
    Reserved,
    Unbound(u16),
    Interdomain(u16, u32),
    Virq(u32),
    Ipi,
}

#[derive(Debug, Clone, Copy)]
struct Chan {
    state: State,
    vcpu: u32,
}

/// The model: Xen's `struct evtchn` array and `virq_to_evtchn`.
struct Model {
    chans: Vec<Chan>,
    virq: [[u32; NR_VIRQS as usize]; VCPUS as usize],
}

/// The 2-level bitmaps as the guest sees them.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Bits {
    pending: Vec<u64>,
    mask: Vec<u64>,
    sel: [u64; VCPUS as usize],
    upcall: [u8; VCPUS as usize],
}

struct World {
    d: Domain<NoFlush>,
    state: DomainState,
    dom: u16,
    model: Model,
    shared_info: u64,
}

fn get(v: &[u64], bit: usize) -> bool {
    v.get(bit / 64).is_some_and(|w| w >> (bit % 64) & 1 != 0)
}

fn put(v: &mut [u64], bit: usize, on: bool) {
    if let Some(w) = v.get_mut(bit / 64) {
        if on {
            *w |= 1 << (bit % 64);
        } else {
            *w &= !(1 << (bit % 64));
        }
    }
}

impl Model {
    fn new() -> Model {
        let mut chans = vec![
            Chan {
                state: State::Free,
                vcpu: 0
            };
            BUCKET
        ];
        chans[0].state = State::Reserved;
        Model {
            chans,
            virq: [[0; NR_VIRQS as usize]; VCPUS as usize],
        }
    }

    /// Xen's `get_free_port`: the lowest free valid port; beyond them a new bucket while
    /// the port is within the toolstack's limit.
    fn free_port(&mut self) -> Result<u32, i64> {
        if let Some(p) = self.chans.iter().position(|c| c.state == State::Free) {
            return Ok(p as u32);
        }
        let p = self.chans.len();
        if p > MAX_PORT {
            return Err(ENOSPC);
        }
        self.chans.extend(std::iter::repeat_n(
            Chan {
                state: State::Free,
                vcpu: 0,
            },
            BUCKET,
        ));
        Ok(p as u32)
    }

    fn valid(&self, p: u32) -> bool {
        (p as usize) < self.chans.len()
    }
}

/// Xen's `get_virq_type`: per vCPU, per domain, or global (the hardware domain's).
fn virq_per_vcpu(v: u32) -> bool {
    matches!(v, 0 | 1 | 7 | 13)
}
fn virq_global(v: u32) -> bool {
    !virq_per_vcpu(v) && v != 11
}

impl World {
    fn new() -> Option<World> {
        let spec = DomainSpec {
            vcpus: VCPUS,
            ..DomainSpec::new(platform::elf::minimal_image(&[0x0f, 0x0b]), 16)
        };
        let d = Domain::create(&spec, NoFlush).ok()?;
        let state = DomainState::new(&d.boot, VCPUS);
        let shared_info = d.boot.shared_info;
        let dom = platform::DOMID;
        // The builder's own bindings (the console's and the store's ports, bound to
        // the VMM's backends) are where the model starts.
        let mut model = Model::new();
        for p in 1..BUCKET as u32 {
            if let Some(q) = state.evtchn.port(p) {
                let st = match q.state {
                    PortState::Free => State::Free,
                    PortState::Reserved => State::Reserved,
                    PortState::Unbound { remote } => State::Unbound(remote),
                    PortState::Interdomain {
                        remote,
                        remote_port,
                    } => State::Interdomain(remote, remote_port),
                    PortState::Virq(v) => State::Virq(v),
                    PortState::Ipi => State::Ipi,
                };
                model.chans[p as usize] = Chan {
                    state: st,
                    vcpu: q.vcpu,
                };
            }
        }
        Some(World {
            d,
            state,
            dom,
            model,
            shared_info,
        })
    }

    fn bits(&self) -> Bits {
        let mem = self.d.machine.memory();
        let words = |off: usize| -> Vec<u64> {
            (0..64)
                .map(|i| {
                    mem.read_obj(GuestAddress(self.shared_info + off as u64 + i * 8))
                        .unwrap_or(0)
                })
                .collect()
        };
        let mut b = Bits {
            pending: words(SHARED_INFO_EVTCHN_PENDING_OFFSET),
            mask: words(SHARED_INFO_EVTCHN_MASK_OFFSET),
            sel: [0; VCPUS as usize],
            upcall: [0; VCPUS as usize],
        };
        for v in 0..VCPUS as usize {
            let info = self.state.evtchn.vcpu_info[v];
            b.sel[v] = mem
                .read_obj(GuestAddress(info + VCPU_INFO_PENDING_SEL_OFFSET as u64))
                .unwrap_or(0);
            b.upcall[v] = mem
                .read_obj(GuestAddress(info + VCPU_INFO_UPCALL_PENDING_OFFSET as u64))
                .unwrap_or(0);
        }
        b
    }

    fn write_bits(&self, b: &Bits) {
        let mem = self.d.machine.memory();
        for i in 0..64u64 {
            let at = |off: usize| GuestAddress(self.shared_info + off as u64 + i * 8);
            let _ = mem.write_obj(b.pending[i as usize], at(SHARED_INFO_EVTCHN_PENDING_OFFSET));
            let _ = mem.write_obj(b.mask[i as usize], at(SHARED_INFO_EVTCHN_MASK_OFFSET));
        }
        for v in 0..VCPUS as usize {
            let info = self.state.evtchn.vcpu_info[v];
            let _ = mem.write_obj(
                b.sel[v],
                GuestAddress(info + VCPU_INFO_PENDING_SEL_OFFSET as u64),
            );
            let _ = mem.write_obj(
                b.upcall[v],
                GuestAddress(info + VCPU_INFO_UPCALL_PENDING_OFFSET as u64),
            );
        }
    }

    fn port(&self, sel: PortSel) -> u32 {
        match sel {
            PortSel::Used(i) => {
                let used: Vec<u32> = (1..self.model.chans.len() as u32)
                    .filter(|&p| self.model.chans[p as usize].state != State::Free)
                    .collect();
                used.get(usize::from(i) % used.len().max(1))
                    .copied()
                    .unwrap_or(u32::from(i))
            }
            PortSel::Raw(r) => u32::from(r) % 1100,
        }
    }

    fn dom_arg(&self, d: DomSel) -> u16 {
        match d {
            DomSel::SelfDom => pvmmu_abi::DOMID_SELF,
            DomSel::Own => self.dom,
            DomSel::Missing => NO_DOMAIN,
        }
    }

    fn resolve(&self, d: u16) -> u16 {
        if d == pvmmu_abi::DOMID_SELF {
            self.dom
        } else {
            d
        }
    }

    /// Xen's `evtchn_2l_set_pending` for the port's vCPU `v`; returns the vCPUs to kick.
    fn set_pending(b: &mut Bits, port: u32, v: u32) -> u64 {
        let p = port as usize;
        if get(&b.pending, p) {
            return 0;
        }
        put(&mut b.pending, p, true);
        if get(&b.mask, p) {
            return 0;
        }
        Self::mark(b, p / 64, v)
    }

    /// The selector bit `word` and the upcall of vCPU `v` (Xen's `vcpu_mark_events_pending`
    /// after setting the selector): kicks `v` when its upcall becomes pending.
    fn mark(b: &mut Bits, word: usize, v: u32) -> u64 {
        let Some(sel) = b.sel.get_mut(v as usize) else {
            return 0;
        };
        if *sel >> word & 1 != 0 {
            return 0;
        }
        *sel |= 1 << word;
        let up = &mut b.upcall[v as usize];
        if *up != 0 {
            return 0;
        }
        *up = 1;
        1 << v
    }

    /// Runs `op` on the platform and the model; describes the first difference.
    fn apply(&mut self, op: &Op) -> Result<(), String> {
        let mut bits = self.bits();
        let caller = Caller::new(self.dom, 0);
        let mut arg = [0u8; 24];
        let wr = |a: &mut [u8; 24], at: usize, v: &[u8]| a[at..at + v.len()].copy_from_slice(v);
        // (command, predicted RAX, where the handed-out port goes and its value, kicks)
        let (cmd, want, out, kicks): (u32, i64, Option<(usize, u32)>, u64) = match *op {
            Op::AllocUnbound(dom, remote) => {
                let (dom, remote) = (self.dom_arg(dom), self.dom_arg(remote));
                wr(&mut arg, 0, &dom.to_le_bytes());
                wr(&mut arg, 2, &remote.to_le_bytes());
                let r = if self.resolve(dom) != self.dom {
                    Err(ESRCH)
                } else {
                    self.model.free_port()
                };
                match r {
                    Ok(p) => {
                        self.model.chans[p as usize] = Chan {
                            state: State::Unbound(self.resolve(remote)),
                            vcpu: 0,
                        };
                        (EVTCHNOP_ALLOC_UNBOUND, 0, Some((4, p)), 0)
                    }
                    Err(e) => (EVTCHNOP_ALLOC_UNBOUND, e, None, 0),
                }
            }
            Op::BindInterdomain(rdom, rport) => {
                let (rdom, rport) = (self.dom_arg(rdom), self.port(rport));
                wr(&mut arg, 0, &rdom.to_le_bytes());
                wr(&mut arg, 4, &rport.to_le_bytes());
                let rd = self.resolve(rdom);
                let r = if rd != self.dom {
                    Err(ESRCH)
                } else {
                    self.model.free_port().and_then(|lport| {
                        let offered = self.model.valid(rport)
                            && self.model.chans[rport as usize].state == State::Unbound(self.dom);
                        if offered { Ok(lport) } else { Err(EINVAL) }
                    })
                };
                match r {
                    Ok(lport) => {
                        self.model.chans[lport as usize] = Chan {
                            state: State::Interdomain(self.dom, rport),
                            vcpu: 0,
                        };
                        self.model.chans[rport as usize].state =
                            State::Interdomain(self.dom, lport);
                        // Notifications lost on the unbound remote end are made up
                        // for: the local port is always set pending.
                        let k = Self::set_pending(&mut bits, lport, 0);
                        (EVTCHNOP_BIND_INTERDOMAIN, 0, Some((8, lport)), k)
                    }
                    Err(e) => (EVTCHNOP_BIND_INTERDOMAIN, e, None, 0),
                }
            }
            Op::BindVirq(virq, vcpu) => {
                // The per-domain VIRQ (Argo's) often: it alone may move between vCPUs.
                let virq = if virq >= 200 {
                    11
                } else {
                    u32::from(virq % 26)
                };
                let vcpu = u32::from(vcpu % 3);
                wr(&mut arg, 0, &virq.to_le_bytes());
                wr(&mut arg, 4, &vcpu.to_le_bytes());
                let r = if virq >= NR_VIRQS || (!virq_per_vcpu(virq) && vcpu != 0) {
                    Err(EINVAL)
                } else if vcpu >= VCPUS {
                    Err(ENOENT)
                } else if virq_global(virq) {
                    Err(EBUSY)
                } else if self.model.virq[vcpu as usize][virq as usize] != 0 {
                    Err(EEXIST)
                } else {
                    self.model.free_port()
                };
                match r {
                    Ok(p) => {
                        self.model.chans[p as usize] = Chan {
                            state: State::Virq(virq),
                            vcpu,
                        };
                        self.model.virq[vcpu as usize][virq as usize] = p;
                        (EVTCHNOP_BIND_VIRQ, 0, Some((8, p)), 0)
                    }
                    Err(e) => (EVTCHNOP_BIND_VIRQ, e, None, 0),
                }
            }
            Op::BindIpi(vcpu) => {
                let vcpu = u32::from(vcpu % 3);
                wr(&mut arg, 0, &vcpu.to_le_bytes());
                let r = if vcpu >= VCPUS {
                    Err(ENOENT)
                } else {
                    self.model.free_port()
                };
                match r {
                    Ok(p) => {
                        self.model.chans[p as usize] = Chan {
                            state: State::Ipi,
                            vcpu,
                        };
                        (EVTCHNOP_BIND_IPI, 0, Some((4, p)), 0)
                    }
                    Err(e) => (EVTCHNOP_BIND_IPI, e, None, 0),
                }
            }
            Op::Close(p) => {
                let p = self.port(p);
                wr(&mut arg, 0, &p.to_le_bytes());
                let rc = if !self.model.valid(p)
                    || matches!(
                        self.model.chans[p as usize].state,
                        State::Free | State::Reserved
                    ) {
                    EINVAL
                } else {
                    let c = self.model.chans[p as usize];
                    match c.state {
                        // A VIRQ that is not per vCPU is vCPU 0's in the table,
                        // wherever its events go.
                        State::Virq(v) => {
                            let on = if virq_per_vcpu(v) { c.vcpu } else { 0 };
                            self.model.virq[on as usize][v as usize] = 0;
                        }
                        State::Interdomain(rd, rp) if rd == self.dom && rp != p => {
                            self.model.chans[rp as usize].state = State::Unbound(self.dom);
                        }
                        _ => {}
                    }
                    put(&mut bits.pending, p as usize, false);
                    self.model.chans[p as usize] = Chan {
                        state: State::Free,
                        vcpu: 0,
                    };
                    0
                };
                (EVTCHNOP_CLOSE, rc, None, 0)
            }
            Op::Send(p) => {
                let p = self.port(p);
                wr(&mut arg, 0, &p.to_le_bytes());
                let (rc, k) = if !self.model.valid(p) {
                    (EINVAL, 0)
                } else {
                    match self.model.chans[p as usize].state {
                        // A loopback pair: the other end is set pending.
                        State::Interdomain(rd, rp) if rd == self.dom => {
                            let v = self.model.chans[rp as usize].vcpu;
                            (0, Self::set_pending(&mut bits, rp, v))
                        }
                        // The VMM's backends: nothing of this domain changes.
                        State::Interdomain(..) => (0, 0),
                        State::Ipi => {
                            let v = self.model.chans[p as usize].vcpu;
                            (0, Self::set_pending(&mut bits, p, v))
                        }
                        State::Unbound(_) => (0, 0),
                        _ => (EINVAL, 0),
                    }
                };
                (EVTCHNOP_SEND, rc, None, k)
            }
            Op::Unmask(p) => {
                let p = self.port(p);
                wr(&mut arg, 0, &p.to_le_bytes());
                let (rc, k) = if !self.model.valid(p) {
                    (EINVAL, 0)
                } else {
                    let i = p as usize;
                    let v = self.model.chans[i].vcpu;
                    let was = get(&bits.mask, i);
                    put(&mut bits.mask, i, false);
                    let k = if was && get(&bits.pending, i) {
                        Self::mark(&mut bits, i / 64, v)
                    } else {
                        0
                    };
                    (0, k)
                };
                (EVTCHNOP_UNMASK, rc, None, k)
            }
            Op::BindVcpu(p, vcpu) => {
                let (p, vcpu) = (self.port(p), u32::from(vcpu % 3));
                wr(&mut arg, 0, &p.to_le_bytes());
                wr(&mut arg, 4, &vcpu.to_le_bytes());
                let rc = if vcpu >= VCPUS {
                    ENOENT
                } else if !self.model.valid(p) {
                    EINVAL
                } else {
                    let c = &mut self.model.chans[p as usize];
                    match c.state {
                        // Any VIRQ but a per-vCPU one (a domain VIRQ too).
                        State::Virq(v) if !virq_per_vcpu(v) => {
                            c.vcpu = vcpu;
                            0
                        }
                        State::Unbound(_) | State::Interdomain(..) => {
                            c.vcpu = vcpu;
                            0
                        }
                        _ => EINVAL,
                    }
                };
                (EVTCHNOP_BIND_VCPU, rc, None, 0)
            }
            Op::GuestMask(p, on) => {
                let p = self.port(p) as usize;
                if p < 4096 {
                    put(&mut bits.mask, p, on);
                    self.write_bits(&bits);
                }
                return self.compare(&bits, 0);
            }
            Op::MaskSendUnmask(p) => {
                for op in [Op::GuestMask(p, true), Op::Send(p), Op::Unmask(p)] {
                    self.apply(&op)?;
                }
                return Ok(());
            }
            Op::GuestAck(v) => {
                let v = usize::from(v) % VCPUS as usize;
                bits.upcall[v] = 0;
                let sel = std::mem::take(&mut bits.sel[v]);
                for w in 0..64 {
                    if sel >> w & 1 != 0 {
                        bits.pending[w] &= bits.mask[w];
                    }
                }
                self.write_bits(&bits);
                return self.compare(&bits, 0);
            }
        };
        let mem = self.d.machine.memory();
        mem.write_slice(&arg, GuestAddress(ARG))
            .map_err(|e| e.to_string())?;
        let _ = self.state.evtchn.take_kicks();
        let got = self
            .state
            .evtchn
            .op(&mut self.d.machine, caller, cmd, ARG)
            .map(|(rc, _)| rc);
        if got != Some(want) {
            return Err(format!("{op:?}: got {got:?}, want {want}"));
        }
        if let Some((at, port)) = out {
            let handed: u32 = self
                .d
                .machine
                .memory()
                .read_obj(GuestAddress(ARG + at as u64))
                .map_err(|e| e.to_string())?;
            if handed != port {
                return Err(format!("{op:?}: handed out port {handed}, want {port}"));
            }
        }
        self.compare(&bits, kicks)
    }

    fn compare(&self, bits: &Bits, kicks: u64) -> Result<(), String> {
        let got = self.bits();
        if &got != bits {
            return Err(format!("bitmaps: got {got:x?}, want {bits:x?}"));
        }
        let kicked = self.state.evtchn.take_kicks();
        if kicked != kicks {
            return Err(format!("kicked {kicked:#b}, want {kicks:#b}"));
        }
        for p in 0..1100u32 {
            let want = self.model.chans.get(p as usize).map(|c| {
                let state = match c.state {
                    State::Free => PortState::Free,
                    State::Reserved => PortState::Reserved,
                    State::Unbound(remote) => PortState::Unbound { remote },
                    State::Interdomain(remote, remote_port) => PortState::Interdomain {
                        remote,
                        remote_port,
                    },
                    State::Virq(v) => PortState::Virq(v),
                    State::Ipi => PortState::Ipi,
                };
                (state, c.vcpu)
            });
            let got = self.state.evtchn.port(p).map(|q| (q.state, q.vcpu));
            if got != want {
                return Err(format!("port {p}: got {got:?}, want {want:?}"));
            }
        }
        Ok(())
    }
}

/// The harness: decode `data` into operations, run them, check the oracle; panics when
/// it fails.
pub fn evtchn_ops(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let Ok(ops) = Vec::<Op>::arbitrary(&mut u) else {
        return;
    };
    let Some(mut w) = World::new() else {
        panic!("the harness domain does not build");
    };
    for op in ops.iter().take(96) {
        if let Err(e) = w.apply(op) {
            panic!("{e}");
        }
    }
}
