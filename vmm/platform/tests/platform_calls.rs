//! The platform's hypercalls through the dispatch a VMM uses, without KVM: what a domU
//! learns from `xen_version` and the `vcpu_op` calls Linux makes at boot, as Xen answers
//! them.

use platform::dispatch::{self, DomainState, Outcome};
use platform::elf::minimal_image;
use platform::evtchn::NR_PIRQS;
use platform::pv::{GuestContext, PvVcpu};
use platform::{Domain, DomainSpec, NullConsole};
use pvmmu::{Errno, GuestView, NoFlush};
use pvmmu_abi::hypercall::{HYPERVISOR_vcpu_op, HYPERVISOR_xen_version};

type Dom = Domain<NoFlush>;

/// Scratch memory in the boot mapping (identity, writable).
const ARG: u64 = 0x15_0000;

struct World {
    d: Dom,
    state: DomainState,
    pv: PvVcpu,
}

fn world() -> World {
    world_with(1)
}

fn world_with(vcpus: u32) -> World {
    let spec = DomainSpec {
        vcpus,
        ..DomainSpec::new(minimal_image(&[0xf4]), 16)
    };
    let d = Domain::create(&spec, NoFlush).expect("domain");
    let state = DomainState::new(&d.boot, vcpus);
    let pv = d.pv_vcpu(0);
    World { d, state, pv }
}

impl World {
    fn call(&mut self, nr: u64, args: [u64; 5]) -> i64 {
        let mut ctx = GuestContext::default();
        let served = dispatch::dispatch(
            &mut self.d.machine,
            &mut NullConsole,
            &mut self.state,
            &mut self.pv,
            &mut ctx,
            nr,
            args,
        )
        .expect("dispatch");
        match served.outcome {
            Outcome::Return(v) => v,
            other => panic!("hypercall {nr}: {other:?}"),
        }
    }

    fn poke(&self, va: u64, bytes: &[u8]) {
        let root = self.d.machine.kernel_root(self.pv.caller());
        GuestView::new(self.d.machine.memory(), root)
            .write(va, bytes)
            .expect("guest write");
    }

    fn peek<const N: usize>(&self, va: u64) -> [u8; N] {
        let root = self.d.machine.kernel_root(self.pv.caller());
        let mut b = [0u8; N];
        GuestView::new(self.d.machine.memory(), root)
            .read(va, &mut b)
            .expect("guest read");
        b
    }
}

#[test]
fn the_feature_submap_is_xens_for_a_pv_domu() {
    let mut w = world();
    w.poke(ARG, &[0u8; 8]);
    assert_eq!(w.call(HYPERVISOR_xen_version, [6, ARG, 0, 0, 0]), 0);
    let submap = u32::from_le_bytes(w.peek::<8>(ARG)[4..].try_into().unwrap());
    assert_eq!(submap, dispatch::PV_FEATURES);
    // Linux refuses to run without these two.
    assert_ne!(submap & (1 << 5), 0, "mmu_pt_update_preserve_ad");
    assert_ne!(submap & (1 << 7), 0, "gnttab_map_avail_bits");
    // Not a PV feature: writable page tables are a VM assist for PV.
    assert_eq!(submap & 1, 0);
    // Only submap 0 exists.
    w.poke(ARG, &1u32.to_le_bytes());
    assert_eq!(
        w.call(HYPERVISOR_xen_version, [6, ARG, 0, 0, 0]),
        Errno::EINVAL.neg()
    );
    let _ = HYPERVISOR_vcpu_op;
}

/// `vcpu_op(cmd, vcpu, arg)`.
fn vcpu_op(w: &mut World, cmd: u64, vcpu: u64, arg: u64) -> i64 {
    w.call(HYPERVISOR_vcpu_op, [cmd, vcpu, arg, 0, 0])
}

#[test]
fn the_runstate_area_is_written_where_the_guest_registers_it() {
    let mut w = world();
    let area = ARG + 0x100;
    w.poke(area, &[0xffu8; 48]);
    w.poke(ARG, &area.to_le_bytes());
    assert_eq!(vcpu_op(&mut w, 5, 0, ARG), 0);
    let info = w.peek::<48>(area);
    assert_eq!(
        u32::from_le_bytes(info[..4].try_into().unwrap()),
        0,
        "running"
    );
    let times: Vec<u64> = (0..4)
        .map(|i| u64::from_le_bytes(info[16 + i * 8..24 + i * 8].try_into().unwrap()))
        .collect();
    assert_eq!(times[1..], [0, 0, 0], "never runnable, blocked or offline");
    // get_runstate_info copies the same structure out.
    assert_eq!(vcpu_op(&mut w, 4, 0, ARG + 0x200), 0);
    assert_eq!(w.peek::<4>(ARG + 0x200), [0; 4]);
    // An area in the hypervisor's range; a vCPU the domain does not have.
    w.poke(ARG, &0xffff_8000_0000_0000u64.to_le_bytes());
    assert_eq!(vcpu_op(&mut w, 5, 0, ARG), Errno::EFAULT.neg());
    assert_eq!(vcpu_op(&mut w, 5, 7, ARG), Errno::ENOENT.neg());
    assert_eq!(vcpu_op(&mut w, 3, 0, 0), 1, "vCPU 0 is up");
    // VCPUOP_initialise of the vCPU the domain was built with: it has its context.
    assert_eq!(vcpu_op(&mut w, 0, 0, ARG), Errno::EEXIST.neg());
}

#[test]
fn vcpu_info_moves_into_a_guest_frame_once() {
    let mut w = world();
    let frame = 0x160u64; // a data page of the boot mapping (pfn == mfn)
    let register = |w: &mut World, mfn: u64, offset: u32| {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&mfn.to_le_bytes());
        b[8..12].copy_from_slice(&offset.to_le_bytes());
        w.poke(ARG, &b);
        vcpu_op(w, 10, 0, ARG)
    };
    assert_eq!(
        register(&mut w, frame, 4096 - 56),
        Errno::ENXIO.neg(),
        "no room"
    );
    assert_eq!(register(&mut w, frame, 4), Errno::ENXIO.neg(), "misaligned");
    assert_eq!(
        register(&mut w, frame, 4096),
        Errno::EINVAL.neg(),
        "beyond the frame"
    );
    let l4 = w.d.boot.l4.0;
    assert_eq!(register(&mut w, l4, 0), Errno::EACCES.neg(), "a page table");
    assert_eq!(
        register(&mut w, 0x7fff_ffff, 0),
        Errno::EINVAL.neg(),
        "no such frame"
    );
    // The old vcpu_info's time version, to see it copied.
    let old_time: [u8; 8] = vm_memory::Bytes::read_obj(
        w.d.machine.memory(),
        vm_memory::GuestAddress(w.d.boot.shared_info + 32),
    )
    .unwrap();
    let before = w.d.machine.frames().get(pvmmu::Mfn(frame)).unwrap();
    assert_eq!(register(&mut w, frame, 64), 0);
    let new = frame * 4096 + 64;
    let info = w.peek::<64>(new);
    assert_eq!(info[0], 1, "upcall pending");
    assert_eq!(&info[8..16], &[0xff; 8], "every selector bit pending");
    assert_eq!(&info[32..40], &old_time, "contents moved");
    let p = w.d.machine.frames().get(pvmmu::Mfn(frame)).unwrap();
    assert_eq!(p.ty, pvmmu::PageType::Writable);
    assert_eq!(
        (p.count, p.type_count),
        (before.count + 1, before.type_count + 1),
        "a general and a writable type reference held"
    );
    assert_eq!(
        register(&mut w, frame + 1, 0),
        Errno::EBUSY.neg(),
        "only once"
    );
    // -EBUSY comes before the area's own checks, -EINVAL before both.
    assert_eq!(register(&mut w, frame + 1, 4), Errno::EBUSY.neg());
    assert_eq!(register(&mut w, frame + 1, 5000), Errno::EINVAL.neg());
    w.d.machine.audit().unwrap();
    let mut d = w.d;
    d.machine.destroy_domain(platform::DOMID).unwrap();
    assert_eq!(d.machine.frames().get(pvmmu::Mfn(frame)).unwrap().count, 0);
}

/// `event_channel_op(cmd, arg)` with `arg` bytes written at [`ARG`] first.
fn evtchn(w: &mut World, cmd: u64, arg: &[u8]) -> i64 {
    w.poke(ARG, arg);
    w.call(
        pvmmu_abi::hypercall::HYPERVISOR_event_channel_op,
        [cmd, ARG, 0, 0, 0],
    )
}

fn u32s(v: &[u32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// (status, vcpu, u0, u1) of `port`.
fn status(w: &mut World, port: u32) -> (i64, [u32; 4]) {
    let mut arg = u32s(&[0x7ff0, port]);
    arg.extend([0u8; 16]);
    let rc = evtchn(w, 5, &arg);
    let b = w.peek::<24>(ARG);
    let f = |i: usize| u32::from_le_bytes(b[8 + i * 4..12 + i * 4].try_into().unwrap());
    (rc, [f(0), f(1), f(2), f(3)])
}

/// The shared_info bit `port` of the pending (or mask) bitmap, and vCPU 0's selector
/// word and upcall-pending byte.
fn bits(w: &World, mask: bool, port: u32) -> (bool, u64, u8) {
    let mem = w.d.machine.memory();
    let si = w.d.boot.shared_info;
    let base = if mask { 2560 } else { 2048 };
    let word: u64 = vm_memory::Bytes::read_obj(
        mem,
        vm_memory::GuestAddress(si + base + u64::from(port / 64) * 8),
    )
    .unwrap();
    let sel: u64 = vm_memory::Bytes::read_obj(mem, vm_memory::GuestAddress(si + 8)).unwrap();
    let pending: u8 = vm_memory::Bytes::read_obj(mem, vm_memory::GuestAddress(si)).unwrap();
    (word & (1 << (port % 64)) != 0, sel, pending)
}

#[test]
fn event_channels_bind_notify_and_close_as_xen() {
    let mut w = world();
    // The console and store ports (1, 2) are bound to the VMM's backends, in domain
    // 0's place.
    assert_eq!(status(&mut w, 1), (0, [2, 0, 0, 1]));
    assert_eq!(status(&mut w, 2), (0, [2, 0, 0, 2]));
    assert_eq!(status(&mut w, 0).1[0], 0, "port 0 is reserved: closed");
    // alloc_unbound takes the lowest free port.
    assert_eq!(evtchn(&mut w, 6, &u32s(&[0x7ff0_7ff0, 0])), 0);
    let unbound = u32::from_le_bytes(w.peek::<8>(ARG)[4..].try_into().unwrap());
    assert_eq!(unbound, 3);
    assert_eq!(
        status(&mut w, 3),
        (0, [1, 0, 1, 0]),
        "unbound, remote: ourselves"
    );
    assert_eq!(evtchn(&mut w, 6, &u32s(&[0x0005, 0])), Errno::ESRCH.neg());
    // bind_virq: the timer on vCPU 0; once only; checks in Xen's order.
    assert_eq!(evtchn(&mut w, 1, &u32s(&[0, 0, 0])), 0);
    let timer = u32::from_le_bytes(w.peek::<12>(ARG)[8..].try_into().unwrap());
    assert_eq!(timer, 4);
    assert_eq!(status(&mut w, timer), (0, [4, 0, 0, 0]));
    assert_eq!(evtchn(&mut w, 1, &u32s(&[0, 0, 0])), Errno::EEXIST.neg());
    assert_eq!(evtchn(&mut w, 1, &u32s(&[24, 0, 0])), Errno::EINVAL.neg());
    assert_eq!(
        evtchn(&mut w, 1, &u32s(&[2, 1, 0])),
        Errno::EINVAL.neg(),
        "global on vCPU 1"
    );
    assert_eq!(evtchn(&mut w, 1, &u32s(&[0, 1, 0])), Errno::ENOENT.neg());
    // An IPI to ourselves: pending bit, selector bit, upcall pending.
    assert_eq!(evtchn(&mut w, 7, &u32s(&[0, 0])), 0);
    let ipi = u32::from_le_bytes(w.peek::<8>(ARG)[4..].try_into().unwrap());
    assert_eq!(bits(&w, false, ipi), (false, 0, 0));
    assert_eq!(evtchn(&mut w, 4, &u32s(&[ipi])), 0);
    assert_eq!(bits(&w, false, ipi), (true, 1, 1));
    // Masked, pending, then unmasked: the selector and upcall are raised again.
    let mem = w.d.machine.memory();
    let si = w.d.boot.shared_info;
    vm_memory::Bytes::write_obj(mem, 1u64 << ipi, vm_memory::GuestAddress(si + 2560)).unwrap();
    vm_memory::Bytes::write_obj(mem, 0u64, vm_memory::GuestAddress(si + 8)).unwrap();
    vm_memory::Bytes::write_obj(mem, 0u8, vm_memory::GuestAddress(si)).unwrap();
    assert_eq!(evtchn(&mut w, 9, &u32s(&[ipi])), 0);
    assert!(!bits(&w, true, ipi).0, "mask cleared");
    assert_eq!(bits(&w, false, ipi), (true, 1, 1));
    // Sending on a VIRQ port, or one out of range: -EINVAL. Unbound: dropped.
    assert_eq!(evtchn(&mut w, 4, &u32s(&[timer])), Errno::EINVAL.neg());
    assert_eq!(evtchn(&mut w, 4, &u32s(&[4096])), Errno::EINVAL.neg());
    assert_eq!(evtchn(&mut w, 4, &u32s(&[unbound])), 0);
    // close frees the port (pending cleared), and closing again is -EINVAL.
    assert_eq!(evtchn(&mut w, 3, &u32s(&[ipi])), 0);
    assert_eq!(status(&mut w, ipi).1[0], 0);
    assert!(!bits(&w, false, ipi).0);
    assert_eq!(evtchn(&mut w, 3, &u32s(&[ipi])), Errno::EINVAL.neg());
    assert_eq!(evtchn(&mut w, 4, &u32s(&[ipi])), Errno::EINVAL.neg());
    // The timer VIRQ can be bound again once closed.
    assert_eq!(evtchn(&mut w, 3, &u32s(&[timer])), 0);
    assert_eq!(evtchn(&mut w, 1, &u32s(&[0, 0, 0])), 0);
    // bind_vcpu: a per-vCPU VIRQ cannot move; an unbound port can (to vCPU 0).
    let timer = u32::from_le_bytes(w.peek::<12>(ARG)[8..].try_into().unwrap());
    assert_eq!(evtchn(&mut w, 8, &u32s(&[timer, 0])), Errno::EINVAL.neg());
    assert_eq!(evtchn(&mut w, 8, &u32s(&[unbound, 0])), 0);
    assert_eq!(evtchn(&mut w, 8, &u32s(&[unbound, 3])), Errno::ENOENT.neg());
}

#[test]
fn pirqs_priorities_and_reset_as_xen_answers_a_domu() {
    let mut w = world();
    // bind_pirq: beyond the domain's PIRQs -EINVAL, any other -EPERM (no IRQ
    // permission); the range check comes first.
    assert_eq!(
        evtchn(&mut w, 2, &u32s(&[NR_PIRQS, 0, 0])),
        Errno::EINVAL.neg()
    );
    assert_eq!(
        evtchn(&mut w, 2, &u32s(&[u32::MAX, 0, 0])),
        Errno::EINVAL.neg()
    );
    assert_eq!(
        evtchn(&mut w, 2, &u32s(&[NR_PIRQS - 1, 0, 0])),
        Errno::EPERM.neg()
    );
    assert_eq!(evtchn(&mut w, 2, &u32s(&[9, 0, 0])), Errno::EPERM.neg());
    // set_priority: a port that is not valid -EINVAL, a valid one -ENOSYS (2-level).
    assert_eq!(evtchn(&mut w, 13, &u32s(&[1, 3])), Errno::ENOSYS.neg());
    assert_eq!(
        evtchn(&mut w, 13, &u32s(&[60, 3])),
        Errno::ENOSYS.neg(),
        "valid, free"
    );
    assert_eq!(evtchn(&mut w, 13, &u32s(&[4096, 3])), Errno::EINVAL.neg());
    // An unreadable argument is -EFAULT for each.
    for cmd in [2u64, 10, 13, 14] {
        let rc = w.call(
            pvmmu_abi::hypercall::HYPERVISOR_event_channel_op,
            [cmd, 0x0000_8000_0000_0000, 0, 0, 0],
        );
        assert_eq!(rc, Errno::EFAULT.neg(), "cmd {cmd}");
    }
    // Bind an IPI and a loopback pair, then reset: every port closed.
    assert_eq!(evtchn(&mut w, 7, &u32s(&[0, 0])), 0);
    let ipi = u32::from_le_bytes(w.peek::<8>(ARG)[4..].try_into().unwrap());
    assert_eq!(evtchn(&mut w, 6, &u32s(&[0x7ff0_7ff0, 0])), 0);
    let unbound = u32::from_le_bytes(w.peek::<8>(ARG)[4..].try_into().unwrap());
    let mut arg = vec![0xf0, 0x7f, 0, 0];
    arg.extend(u32s(&[unbound, 0]));
    assert_eq!(evtchn(&mut w, 0, &arg), 0, "bind_interdomain to ourselves");
    // reset of another domain: unknown -ESRCH, domain 0 -EPERM; reset_cont with no
    // reset under way -EBUSY; nothing closed by any of these.
    assert_eq!(evtchn(&mut w, 10, &[5, 0]), Errno::ESRCH.neg());
    assert_eq!(evtchn(&mut w, 10, &[0, 0]), Errno::EPERM.neg());
    assert_eq!(evtchn(&mut w, 14, &[0xf0, 0x7f]), Errno::EBUSY.neg());
    assert_ne!(status(&mut w, ipi).1[0], 0);
    assert_eq!(evtchn(&mut w, 10, &[0xf0, 0x7f]), 0, "reset DOMID_SELF");
    for port in [1, 2, ipi, unbound, unbound + 1] {
        assert_eq!(
            status(&mut w, port),
            (0, [0, 0, 0, 0]),
            "port {port} closed"
        );
    }
    // The ports are free for use again.
    assert_eq!(evtchn(&mut w, 7, &u32s(&[0, 0])), 0);
    let again = u32::from_le_bytes(w.peek::<8>(ARG)[4..].try_into().unwrap());
    assert_eq!(again, 1, "the lowest free port");
}

#[test]
fn timers_arm_fire_and_stop_as_xen_keeps_them() {
    let mut w = world();
    // A PV vCPU starts with Xen's 10 ms periodic timer.
    assert_eq!(w.pv.timers.period, 10_000_000);
    assert_eq!(vcpu_op(&mut w, 7, 0, 0), 0, "stop_periodic_timer");
    assert_eq!(w.pv.next_deadline(), None);
    // set_timer_op: arm, then 0 disarms.
    let set_timer = |w: &mut World, t: u64| w.call(15, [t, 0, 0, 0, 0]);
    assert_eq!(set_timer(&mut w, 5_000_000_000), 0);
    assert_eq!(w.pv.next_deadline(), Some(5_000_000_000));
    assert!(!w.pv.expire_timers(4_999_999_999));
    assert!(w.pv.expire_timers(5_000_000_000), "fires at its deadline");
    assert_eq!(w.pv.next_deadline(), None, "once");
    assert_eq!(set_timer(&mut w, 7), 0);
    assert_eq!(set_timer(&mut w, 0), 0);
    assert_eq!(w.pv.next_deadline(), None);
    // A timeout wrapped negative is Xen's "in 100 ms".
    assert_eq!(set_timer(&mut w, u64::MAX - 5), 0);
    let d = w.pv.next_deadline().unwrap();
    let now = w.pv.system_time_ns();
    assert!(d > now && d <= now + 100_000_000, "{d} vs {now}");
    // VCPUOP_set_singleshot_timer: Xen ignores the flags, VCPU_SSHOTTMR_future too; a
    // timeout in the past is due at once.
    let mut arg = 1u64.to_le_bytes().to_vec();
    arg.extend(1u32.to_le_bytes());
    arg.extend(0u32.to_le_bytes());
    w.poke(ARG, &arg);
    assert_eq!(vcpu_op(&mut w, 8, 0, ARG), 0);
    assert_eq!(w.pv.next_deadline(), Some(1));
    let mut arg = (now + 1_000_000_000).to_le_bytes().to_vec();
    arg.extend(1u32.to_le_bytes());
    arg.extend(0u32.to_le_bytes());
    w.poke(ARG, &arg);
    assert_eq!(vcpu_op(&mut w, 8, 0, ARG), 0);
    assert_eq!(w.pv.next_deadline(), Some(now + 1_000_000_000));
    assert_eq!(vcpu_op(&mut w, 9, 0, 0), 0, "stop_singleshot_timer");
    assert_eq!(w.pv.next_deadline(), None);
    // A periodic timer below 1 ms or from 2^62 ns is refused; one of 2 ms fires by
    // whole periods.
    w.poke(ARG, &999_999u64.to_le_bytes());
    assert_eq!(vcpu_op(&mut w, 6, 0, ARG), Errno::EINVAL.neg());
    w.poke(ARG, &(1u64 << 62).to_le_bytes());
    assert_eq!(vcpu_op(&mut w, 6, 0, ARG), Errno::EINVAL.neg());
    w.poke(ARG, &2_000_000u64.to_le_bytes());
    assert_eq!(vcpu_op(&mut w, 6, 0, ARG), 0);
    let next = w.pv.next_deadline().unwrap();
    assert!(w.pv.expire_timers(next + 5_000_000));
    assert_eq!(w.pv.next_deadline(), Some(next + 6_000_000));
}

const MEMORY_OP: u64 = pvmmu_abi::hypercall::HYPERVISOR_memory_op;
/// A second scratch page.
const BUF: u64 = ARG + 0x1000;

#[test]
fn memory_op_sizes_as_xen_reports_them_to_a_domu() {
    let mut w = world();
    let nr_pages = w.d.boot.nr_pages;
    // maximum_ram_page: the machine's frames (16 MiB here); no continuation allowed.
    assert_eq!(w.call(MEMORY_OP, [2, 0, 0, 0, 0]), 16 << 8);
    assert_eq!(
        w.call(MEMORY_OP, [2 | 1 << 6, 0, 0, 0, 0]),
        Errno::EINVAL.neg()
    );
    // current and maximum reservation of ourselves (DOMID_SELF or our id).
    for dom in [0x7ff0u16, platform::DOMID] {
        w.poke(ARG, &dom.to_le_bytes());
        assert_eq!(w.call(MEMORY_OP, [3, ARG, 0, 0, 0]), nr_pages as i64);
        assert_eq!(w.call(MEMORY_OP, [4, ARG, 0, 0, 0]), nr_pages as i64);
    }
    // The backend domain: not ours to look at; a missing one: no such domain.
    w.poke(ARG, &platform::BACKEND_DOMID.to_le_bytes());
    assert_eq!(w.call(MEMORY_OP, [3, ARG, 0, 0, 0]), Errno::EPERM.neg());
    w.poke(ARG, &7u16.to_le_bytes());
    assert_eq!(w.call(MEMORY_OP, [4, ARG, 0, 0, 0]), Errno::ESRCH.neg());
    assert_eq!(
        w.call(MEMORY_OP, [3, 0x7000_0000_0000, 0, 0, 0]),
        Errno::EFAULT.neg()
    );
    // maximum_gpfn: from the max_pfn the guest wrote into shared_info (0 before).
    w.poke(ARG, &0x7ff0u16.to_le_bytes());
    assert_eq!(w.call(MEMORY_OP, [14, ARG, 0, 0, 0]), 0);
    vm_memory::Bytes::write_obj(
        w.d.machine.memory(),
        0x1234u64,
        vm_memory::GuestAddress(w.d.boot.shared_info + 3088),
    )
    .unwrap();
    assert_eq!(w.call(MEMORY_OP, [14, ARG, 0, 0, 0]), 0x1233);
    // The host's memory map is privileged; unknown sub-ops are -ENOSYS.
    assert_eq!(w.call(MEMORY_OP, [10, ARG, 0, 0, 0]), Errno::EPERM.neg());
    assert_eq!(w.call(MEMORY_OP, [63, ARG, 0, 0, 0]), Errno::ENOSYS.neg());
}

/// `memory_map` with room for `n` entries: (RAX, entries written back, the entries).
fn memory_map(w: &mut World, n: u32) -> (i64, u32, Vec<[u8; 20]>) {
    let mut arg = [0u8; 16];
    arg[..4].copy_from_slice(&n.to_le_bytes());
    arg[8..].copy_from_slice(&BUF.to_le_bytes());
    w.poke(ARG, &arg);
    w.poke(BUF, &[0xaa; 60]);
    let rc = w.call(MEMORY_OP, [9, ARG, 0, 0, 0]);
    let got = u32::from_le_bytes(w.peek::<4>(ARG));
    let all = w.peek::<60>(BUF);
    let entries = (0..3)
        .map(|i| all[i * 20..i * 20 + 20].try_into().unwrap())
        .collect();
    (rc, got, entries)
}

#[test]
fn memory_map_is_the_toolstacks_and_the_guest_may_replace_its_own() {
    let mut w = world();
    let ram = w.d.boot.nr_pages * 4096;
    let (rc, n, e) = memory_map(&mut w, 8);
    assert_eq!((rc, n), (0, 1));
    assert_eq!(u64::from_le_bytes(e[0][..8].try_into().unwrap()), 0);
    assert_eq!(u64::from_le_bytes(e[0][8..16].try_into().unwrap()), ram);
    assert_eq!(u32::from_le_bytes(e[0][16..].try_into().unwrap()), 1, "RAM");
    assert_eq!(e[1], [0xaa; 20], "nothing beyond the map");
    // Room for none: nothing copied, 0 written back.
    let (rc, n, e) = memory_map(&mut w, 0);
    assert_eq!((rc, n, e[0]), (0, 0, [0xaa; 20]));
    // set_memory_map on ourselves: two entries, then read back with room for one.
    let mut entries = Vec::new();
    for (addr, size, kind) in [(0u64, 0x9f000u64, 1u32), (0x100000, 0x200000, 2)] {
        entries.extend(addr.to_le_bytes());
        entries.extend(size.to_le_bytes());
        entries.extend(kind.to_le_bytes());
    }
    w.poke(BUF + 0x100, &entries);
    let mut fmap = [0u8; 24];
    fmap[..2].copy_from_slice(&0x7ff0u16.to_le_bytes());
    fmap[8..12].copy_from_slice(&2u32.to_le_bytes());
    fmap[16..].copy_from_slice(&(BUF + 0x100).to_le_bytes());
    w.poke(ARG + 0x800, &fmap);
    assert_eq!(w.call(MEMORY_OP, [13, ARG + 0x800, 0, 0, 0]), 0);
    let (rc, n, e) = memory_map(&mut w, 1);
    assert_eq!((rc, n), (0, 1));
    assert_eq!(u64::from_le_bytes(e[0][8..16].try_into().unwrap()), 0x9f000);
    assert_eq!(e[1], [0xaa; 20]);
    assert_eq!(memory_map(&mut w, 5).1, 2);
    // Too many entries, another domain's map, an unreadable buffer.
    fmap[8..12].copy_from_slice(&1025u32.to_le_bytes());
    w.poke(ARG + 0x800, &fmap);
    assert_eq!(
        w.call(MEMORY_OP, [13, ARG + 0x800, 0, 0, 0]),
        Errno::EINVAL.neg()
    );
    fmap[8..12].copy_from_slice(&1u32.to_le_bytes());
    fmap[..2].copy_from_slice(&platform::BACKEND_DOMID.to_le_bytes());
    w.poke(ARG + 0x800, &fmap);
    assert_eq!(
        w.call(MEMORY_OP, [13, ARG + 0x800, 0, 0, 0]),
        Errno::EPERM.neg()
    );
    fmap[..2].copy_from_slice(&0x7ff0u16.to_le_bytes());
    fmap[16..].copy_from_slice(&0x7000_0000_0000u64.to_le_bytes());
    w.poke(ARG + 0x800, &fmap);
    assert_eq!(
        w.call(MEMORY_OP, [13, ARG + 0x800, 0, 0, 0]),
        Errno::EFAULT.neg()
    );
    assert_eq!(memory_map(&mut w, 5).1, 2, "a refused set changes nothing");
    // An empty map set by the guest: Xen answers -ENOSYS then, as with none.
    fmap[8..12].copy_from_slice(&0u32.to_le_bytes());
    w.poke(ARG + 0x800, &fmap);
    assert_eq!(w.call(MEMORY_OP, [13, ARG + 0x800, 0, 0, 0]), 0);
    assert_eq!(memory_map(&mut w, 5).0, Errno::ENOSYS.neg());
}

#[test]
fn the_m2p_is_described_where_guests_can_read_it() {
    let mut w = world();
    // machphys_mapping: the alias window and the largest MFN it can hold.
    assert_eq!(w.call(MEMORY_OP, [12, ARG, 0, 0, 0]), 0);
    let b = w.peek::<24>(ARG);
    let start = u64::from_le_bytes(b[..8].try_into().unwrap());
    assert_eq!(start, platform::layout::M2P_ALIAS_VA);
    // machphys_mfn_list: 16 MiB of machine needs 128 KiB of M2P, one 2 MiB extent.
    let mut arg = [0u8; 24];
    arg[..4].copy_from_slice(&8u32.to_le_bytes());
    arg[8..16].copy_from_slice(&BUF.to_le_bytes());
    w.poke(ARG, &arg);
    assert_eq!(w.call(MEMORY_OP, [5, ARG, 0, 0, 0]), 0);
    let out = w.peek::<24>(ARG);
    assert_eq!(u32::from_le_bytes(out[16..20].try_into().unwrap()), 1);
    assert_eq!(u64::from_le_bytes(w.peek::<8>(BUF)), w.d.boot.m2p_first);
    // The first entry of that frame is frame 0's M2P entry, i.e. the M2P it lists.
    assert_ne!(w.d.boot.m2p_first, 0);
    // max_extents 0: none listed.
    w.poke(ARG, &[0u8; 4]);
    assert_eq!(w.call(MEMORY_OP, [5, ARG, 0, 0, 0]), 0);
    assert_eq!(
        u32::from_le_bytes(w.peek::<24>(ARG)[16..20].try_into().unwrap()),
        0
    );
}

#[test]
fn physdev_ops_a_domu_makes_at_boot() {
    let mut w = world();
    const PHYSDEV: u64 = pvmmu_abi::hypercall::HYPERVISOR_physdev_op;
    // PIRQ EOI bitmap: a frame of ours, once; held with a writable type reference.
    let frame = ARG >> 12; // the boot mapping is the identity
    let l4 = w.d.boot.l4.0;
    w.poke(ARG, &l4.to_le_bytes());
    assert_eq!(
        w.call(PHYSDEV, [28, ARG, 0, 0, 0]),
        Errno::EINVAL.neg(),
        "a page table"
    );
    w.poke(ARG, &0xf_ffffu64.to_le_bytes());
    assert_eq!(
        w.call(PHYSDEV, [28, ARG, 0, 0, 0]),
        Errno::EINVAL.neg(),
        "not ours"
    );
    w.poke(ARG, &(frame + 1).to_le_bytes());
    let before =
        w.d.machine
            .frames()
            .get(pvmmu::Mfn(frame + 1))
            .unwrap()
            .type_count;
    assert_eq!(w.call(PHYSDEV, [28, ARG, 0, 0, 0]), 0);
    let now =
        w.d.machine
            .frames()
            .get(pvmmu::Mfn(frame + 1))
            .unwrap()
            .type_count;
    assert_eq!(now, before + 1);
    w.poke(ARG, &(frame + 2).to_le_bytes());
    assert_eq!(
        w.call(PHYSDEV, [17, ARG, 0, 0, 0]),
        Errno::EBUSY.neg(),
        "one per domain"
    );
    assert_eq!(
        w.call(PHYSDEV, [28, 0x7000_0000_0000, 0, 0, 0]),
        Errno::EFAULT.neg()
    );
    // The legacy unmask notification: nothing to unmask; unknown commands: -ENOSYS.
    assert_eq!(w.call(PHYSDEV, [4, 0, 0, 0, 0]), 0);
    assert_eq!(w.call(PHYSDEV, [99, ARG, 0, 0, 0]), Errno::ENOSYS.neg());
    // No virtual PMU: Xen's answer without `vpmu` on its command line.
    assert_eq!(
        w.call(
            pvmmu_abi::hypercall::HYPERVISOR_xenpmu_op,
            [4, ARG, 0, 0, 0]
        ),
        Errno::EOPNOTSUPP.neg()
    );
    w.d.machine.audit().unwrap();
    w.d.machine.destroy_domain(platform::DOMID).unwrap();
    w.d.machine.audit().unwrap();
}

/// `memory_op(op | start << 6, reservation)` with `list` of `nr` entries.
fn reservation(w: &mut World, op: u64, start: u64, list: &[u64], order: u32, dom: u16) -> i64 {
    let list_va = BUF + 0x400;
    for (i, v) in list.iter().enumerate() {
        w.poke(list_va + i as u64 * 8, &v.to_le_bytes());
    }
    let mut r = [0u8; 32];
    r[..8].copy_from_slice(&list_va.to_le_bytes());
    r[8..16].copy_from_slice(&(list.len() as u64).to_le_bytes());
    r[16..20].copy_from_slice(&order.to_le_bytes());
    r[24..26].copy_from_slice(&dom.to_le_bytes());
    w.poke(ARG + 0x900, &r);
    w.call(MEMORY_OP, [op | start << 6, ARG + 0x900, 0, 0, 0])
}

#[test]
fn the_reservation_shrinks_and_grows_as_xen_counts_it() {
    let mut w = world();
    const SELF: u16 = 0x7ff0;
    let current = |w: &mut World| {
        w.poke(ARG, &SELF.to_le_bytes());
        w.call(MEMORY_OP, [3, ARG, 0, 0, 0])
    };
    let before = current(&mut w);
    // Two frames of the boot mapping, unmapped first (a mapped frame would stay).
    let frames = [0x180u64, 0x181];
    for f in frames {
        let rc =
            w.d.machine
                .hypercall_update_va_mapping(w.pv.caller(), f << 12, 0, 2)
                .unwrap();
        assert_eq!(rc, 0);
    }
    assert_eq!(
        reservation(&mut w, 1, 0, &frames, 0, SELF),
        2,
        "decrease: 2 extents"
    );
    assert_eq!(current(&mut w), before - 2);
    // A frame that is not RAM stops the batch after the extents before it; 0x182 is
    // still mapped, so it stays counted until unmapped.
    assert_eq!(
        reservation(&mut w, 1, 0, &[0x182, 0xf_ffff, 0x183], 0, SELF),
        1
    );
    assert_eq!(current(&mut w), before - 2);
    let rc =
        w.d.machine
            .hypercall_update_va_mapping(w.pv.caller(), 0x182 << 12, 0, 2)
            .unwrap();
    assert_eq!(rc, 0);
    assert_eq!(current(&mut w), before - 3, "freed with its last mapping");
    // Growing back: only up to what the domain was built with.
    assert_eq!(
        reservation(&mut w, 0, 0, &[0, 0, 0, 0], 0, SELF),
        3,
        "increase to the cap"
    );
    let got: Vec<u64> = (0..3)
        .map(|i| u64::from_le_bytes(w.peek::<8>(BUF + 0x400 + i * 8)))
        .collect();
    assert!(got.iter().all(|&f| f != 0), "{got:?}");
    assert_eq!(reservation(&mut w, 0, 0, &[0], 0, SELF), 0, "at max_pages");
    // populate_physmap records the M2P: give one back, populate it at pfn 0x7777.
    assert_eq!(reservation(&mut w, 1, 0, &got[..1], 0, SELF), 1);
    assert_eq!(reservation(&mut w, 6, 0, &[0x7777], 0, SELF), 1);
    let mfn = u64::from_le_bytes(w.peek::<8>(BUF + 0x400));
    assert_eq!(w.d.machine.frames().m2p(pvmmu::Mfn(mfn)), Some(0x7777));
    // Refused arguments answer the continuation's start: another domain, order 10, a
    // start beyond the list, a list outside guest space.
    assert_eq!(
        reservation(&mut w, 0, 0, &[0], 0, platform::BACKEND_DOMID),
        0
    );
    assert_eq!(reservation(&mut w, 0, 0, &[0], 10, SELF), 0);
    assert_eq!(reservation(&mut w, 1, 5, &[0, 0], 0, SELF), 5);
    let mut r = [0u8; 32];
    r[..8].copy_from_slice(&0xffff_8000_0000_0000u64.to_le_bytes());
    r[8..16].copy_from_slice(&1u64.to_le_bytes());
    w.poke(ARG + 0x900, &r);
    assert_eq!(w.call(MEMORY_OP, [1, ARG + 0x900, 0, 0, 0]), 0);
    w.d.machine.audit().unwrap();
    w.d.machine.destroy_domain(platform::DOMID).unwrap();
    w.d.machine.audit().unwrap();
}

/// `XENMEM_exchange`: (RAX, nr_exchanged written back, the output list).
fn exchange(
    w: &mut World,
    ins: &[u64],
    in_order: u32,
    outs: &[u64],
    out_order: u32,
    doms: (u16, u16),
    done: u64,
) -> (i64, u64, Vec<u64>) {
    let (in_va, out_va) = (BUF + 0x200, BUF + 0x600);
    for (i, v) in ins.iter().enumerate() {
        w.poke(in_va + i as u64 * 8, &v.to_le_bytes());
    }
    for (i, v) in outs.iter().enumerate() {
        w.poke(out_va + i as u64 * 8, &v.to_le_bytes());
    }
    let mut x = [0u8; 72];
    x[..8].copy_from_slice(&in_va.to_le_bytes());
    x[8..16].copy_from_slice(&(ins.len() as u64).to_le_bytes());
    x[16..20].copy_from_slice(&in_order.to_le_bytes());
    x[24..26].copy_from_slice(&doms.0.to_le_bytes());
    x[32..40].copy_from_slice(&out_va.to_le_bytes());
    x[40..48].copy_from_slice(&(outs.len() as u64).to_le_bytes());
    x[48..52].copy_from_slice(&out_order.to_le_bytes());
    x[56..58].copy_from_slice(&doms.1.to_le_bytes());
    x[64..72].copy_from_slice(&done.to_le_bytes());
    w.poke(ARG + 0xa00, &x);
    let rc = w.call(MEMORY_OP, [11, ARG + 0xa00, 0, 0, 0]);
    let n = u64::from_le_bytes(w.peek::<72>(ARG + 0xa00)[64..].try_into().unwrap());
    let list = (0..outs.len() as u64)
        .map(|i| u64::from_le_bytes(w.peek::<8>(out_va + i * 8)))
        .collect();
    (rc, n, list)
}

#[test]
fn exchange_checks_in_xens_order_and_trades_unreferenced_frames() {
    let mut w = world();
    const SELF: u16 = 0x7ff0;
    let ins = [0x190u64, 0x191];
    for f in ins {
        let rc =
            w.d.machine
                .hypercall_update_va_mapping(w.pv.caller(), f << 12, 0, 2)
                .unwrap();
        assert_eq!(rc, 0);
    }
    // Orders beyond 9: -EPERM; sizes that differ, or two domains: -EINVAL; nothing
    // left to do: 0. nr_exchanged written back as it was.
    assert_eq!(
        exchange(&mut w, &ins, 10, &[0], 11, (SELF, SELF), 0).0,
        Errno::EPERM.neg()
    );
    assert_eq!(
        exchange(&mut w, &ins, 0, &[0], 0, (SELF, SELF), 0),
        (Errno::EINVAL.neg(), 0, vec![0])
    );
    assert_eq!(
        exchange(&mut w, &ins, 0, &[0], 1, (SELF, 1), 0).0,
        Errno::EINVAL.neg()
    );
    assert_eq!(exchange(&mut w, &ins, 0, &[0], 1, (SELF, SELF), 2).0, 0);
    // Another domain's: -EPERM after the checks above.
    let b = platform::BACKEND_DOMID;
    assert_eq!(
        exchange(&mut w, &ins, 0, &[0], 1, (b, b), 0),
        (Errno::EPERM.neg(), 0, vec![0])
    );
    // A mapped input (0x192 is still mapped): -EINVAL, nothing exchanged.
    assert_eq!(
        exchange(&mut w, &[0x190, 0x192], 0, &[0x4000], 1, (SELF, SELF), 0).0,
        Errno::EINVAL.neg()
    );
    // Two unreferenced frames for one 2-frame extent recorded at pfn 0x4000.
    let (rc, n, list) = exchange(&mut w, &ins, 0, &[0x4000], 1, (SELF, SELF), 0);
    assert_eq!((rc, n), (0, 2));
    assert_eq!(list[0] % 2, 0, "naturally aligned");
    assert_eq!(
        w.d.machine.frames().m2p(pvmmu::Mfn(list[0] + 1)),
        Some(0x4001)
    );
    assert_eq!(
        w.d.machine.frames().get(pvmmu::Mfn(0x190)).unwrap().count,
        0
    );
    w.d.machine.audit().unwrap();
    w.d.machine.destroy_domain(platform::DOMID).unwrap();
    w.d.machine.audit().unwrap();
}

#[test]
fn answers_in_xens_order_where_review_found_them_different() {
    use pvmmu_abi::hypercall::{HYPERVISOR_sched_op, HYPERVISOR_set_debugreg};
    let mut w = world();
    // xen_version's variable-length forms are refused to a domU.
    for cmd in 11..=14 {
        assert_eq!(
            w.call(HYPERVISOR_xen_version, [cmd, ARG, 0, 0, 0]),
            Errno::EPERM.neg()
        );
    }
    // sched_op: another domain's shutdown, pinning overrides, the shutdown code.
    w.poke(ARG, &[1, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(
        w.call(HYPERVISOR_sched_op, [4, ARG, 0, 0, 0]),
        Errno::EPERM.neg()
    );
    w.poke(ARG, &[9, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(
        w.call(HYPERVISOR_sched_op, [4, ARG, 0, 0, 0]),
        Errno::ESRCH.neg()
    );
    assert_eq!(
        w.call(HYPERVISOR_sched_op, [7, ARG, 0, 0, 0]),
        Errno::EPERM.neg()
    );
    assert_eq!(w.call(HYPERVISOR_sched_op, [5, ARG, 0, 0, 0]), 0);
    // set_debugreg: an unknown register is -ENODEV; a non-canonical breakpoint -EPERM.
    assert_eq!(
        w.call(HYPERVISOR_set_debugreg, [8, 0, 0, 0, 0]),
        Errno::ENODEV.neg()
    );
    let noncanonical = 0x0000_8000_0000_0000;
    assert_eq!(
        w.call(HYPERVISOR_set_debugreg, [0, noncanonical, 0, 0, 0]),
        Errno::EPERM.neg()
    );
    assert_eq!(w.call(HYPERVISOR_set_debugreg, [0, 0x1000, 0, 0, 0]), 0);
    // vcpu_op: up on the caller (already up), an NMI with an argument, the physical
    // CPU id.
    assert_eq!(vcpu_op(&mut w, 1, 0, 0), 0);
    assert_eq!(vcpu_op(&mut w, 11, 0, ARG), Errno::EINVAL.neg());
    assert_eq!(vcpu_op(&mut w, 12, 0, ARG), Errno::EINVAL.neg());
    // EVTCHNOP_status: another domain's bad port is -EINVAL before -EPERM; the union
    // bytes that do not apply keep what the guest passed (an IPI port: none apply).
    let evtchn_op = pvmmu_abi::hypercall::HYPERVISOR_event_channel_op;
    let mut st = [0u8; 24];
    st[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
    w.poke(ARG, &st);
    assert_eq!(w.call(evtchn_op, [5, ARG, 0, 0, 0]), Errno::EINVAL.neg());
    st[4..8].copy_from_slice(&5u32.to_le_bytes());
    w.poke(ARG, &st);
    assert_eq!(w.call(evtchn_op, [5, ARG, 0, 0, 0]), Errno::EPERM.neg());
    let mut ipi = [0u8; 8];
    w.poke(ARG, &ipi);
    assert_eq!(w.call(evtchn_op, [7, ARG, 0, 0, 0]), 0);
    ipi.copy_from_slice(&w.peek::<8>(ARG));
    let port = u32::from_le_bytes(ipi[4..8].try_into().unwrap());
    let mut st = [0xabu8; 24];
    st[..2].copy_from_slice(&0x7ff0u16.to_le_bytes());
    st[4..8].copy_from_slice(&port.to_le_bytes());
    w.poke(ARG, &st);
    assert_eq!(w.call(evtchn_op, [5, ARG, 0, 0, 0]), 0);
    let out = w.peek::<24>(ARG);
    assert_eq!(
        u32::from_le_bytes(out[8..12].try_into().unwrap()),
        5,
        "EVTCHNSTAT_ipi"
    );
    assert_eq!(out[16..24], [0xab; 8], "union untouched");
    // Ports of the first bucket are valid before they are allocated: unmask succeeds,
    // status says closed, send is refused for the state; beyond the bucket, -EINVAL.
    w.poke(ARG, &40u32.to_le_bytes());
    assert_eq!(w.call(evtchn_op, [9, ARG, 0, 0, 0]), 0, "unmask");
    assert_eq!(
        w.call(evtchn_op, [4, ARG, 0, 0, 0]),
        Errno::EINVAL.neg(),
        "send"
    );
    let mut st = [0u8; 24];
    st[..2].copy_from_slice(&0x7ff0u16.to_le_bytes());
    st[4..8].copy_from_slice(&40u32.to_le_bytes());
    w.poke(ARG, &st);
    assert_eq!(w.call(evtchn_op, [5, ARG, 0, 0, 0]), 0);
    assert_eq!(
        u32::from_le_bytes(w.peek::<24>(ARG)[8..12].try_into().unwrap()),
        0,
        "closed"
    );
    w.poke(ARG, &64u32.to_le_bytes());
    assert_eq!(w.call(evtchn_op, [9, ARG, 0, 0, 0]), Errno::EINVAL.neg());
    // bind_virq of a global VIRQ (VIRQ_CONSOLE): its handler is the hardware domain.
    let mut b = [0u8; 12];
    b[..4].copy_from_slice(&2u32.to_le_bytes());
    w.poke(ARG, &b);
    assert_eq!(
        w.call(
            pvmmu_abi::hypercall::HYPERVISOR_event_channel_op,
            [1, ARG, 0, 0, 0]
        ),
        Errno::EBUSY.neg()
    );
}

#[test]
fn bind_interdomain_pairs_own_unbound_ports_as_xen_checks_them() {
    let mut w = world();
    let op = pvmmu_abi::hypercall::HYPERVISOR_event_channel_op;
    // An unbound port offered to ourselves.
    let mut a = [0u8; 8];
    a[..2].copy_from_slice(&0x7ff0u16.to_le_bytes());
    a[2..4].copy_from_slice(&0x7ff0u16.to_le_bytes());
    w.poke(ARG, &a);
    assert_eq!(w.call(op, [6, ARG, 0, 0, 0]), 0);
    let unbound = u32::from_le_bytes(w.peek::<8>(ARG)[4..].try_into().unwrap());
    let bind = |w: &mut World, dom: u16, port: u32| {
        let mut b = [0u8; 12];
        b[..2].copy_from_slice(&dom.to_le_bytes());
        b[4..8].copy_from_slice(&port.to_le_bytes());
        w.poke(ARG, &b);
        let rc = w.call(op, [0, ARG, 0, 0, 0]);
        (
            rc,
            u32::from_le_bytes(w.peek::<12>(ARG)[8..].try_into().unwrap()),
        )
    };
    // A missing domain, the backend's ports (none offered to us), a port not unbound.
    assert_eq!(bind(&mut w, 9, unbound).0, Errno::ESRCH.neg());
    assert_eq!(
        bind(&mut w, platform::BACKEND_DOMID, 1).0,
        Errno::EINVAL.neg()
    );
    assert_eq!(
        bind(&mut w, 0x7ff0, 1).0,
        Errno::EINVAL.neg(),
        "the console's port"
    );
    // Our own unbound port: a loopback pair; each end's send is the other's event.
    let (rc, local) = bind(&mut w, 0x7ff0, unbound);
    assert_eq!(rc, 0);
    assert_ne!(local, unbound);
    let word_at =
        |port: u32| vm_memory::GuestAddress(w.d.boot.shared_info + 2048 + u64::from(port / 64) * 8);
    let (local_word, unbound_word) = (word_at(local), word_at(unbound));
    let pending = |w: &World, port: u32| {
        let at = if port == local {
            local_word
        } else {
            unbound_word
        };
        let word: u64 = vm_memory::Bytes::read_obj(w.d.machine.memory(), at).unwrap();
        word >> (port % 64) & 1 == 1
    };
    // Notifications sent to the unbound end were dropped: Xen sets the new local port
    // pending, whatever happened (found by the evtchn_ops fuzz target's model).
    assert!(pending(&w, local) && !pending(&w, unbound));
    vm_memory::Bytes::write_obj(w.d.machine.memory(), 0u64, local_word).unwrap();
    w.poke(ARG, &local.to_le_bytes());
    assert_eq!(w.call(op, [4, ARG, 0, 0, 0]), 0);
    assert!(pending(&w, unbound) && !pending(&w, local));
    // Closing one end leaves the other unbound again: bindable once more.
    w.poke(ARG, &local.to_le_bytes());
    assert_eq!(w.call(op, [3, ARG, 0, 0, 0]), 0);
    assert_eq!(bind(&mut w, 0x7ff0, unbound).0, 0);
}

#[test]
fn a_domain_virq_moved_to_another_vcpu_closes_as_xen_closes_it() {
    // VIRQ_ARGO is a per-domain VIRQ: bound on vCPU 0 (its table entry is vCPU 0's),
    // its events may go to another vCPU (bind_vcpu), and closing it frees vCPU 0's
    // entry wherever its events went, so it can be bound again (Xen's evtchn_close).
    // Found by the evtchn_ops fuzz target's model.
    const VIRQ_ARGO: u32 = 11;
    let mut w = world_with(2);
    assert_eq!(evtchn(&mut w, 1, &u32s(&[VIRQ_ARGO, 0, 0])), 0);
    let port = u32::from_le_bytes(w.peek::<12>(ARG)[8..].try_into().unwrap());
    assert_eq!(
        evtchn(&mut w, 8, &u32s(&[port, 1])),
        0,
        "bind_vcpu to vCPU 1"
    );
    assert_eq!(status(&mut w, port).1[1], 1, "its events go to vCPU 1");
    assert_eq!(
        evtchn(&mut w, 1, &u32s(&[VIRQ_ARGO, 0, 0])),
        Errno::EEXIST.neg(),
        "still bound"
    );
    assert_eq!(evtchn(&mut w, 3, &u32s(&[port])), 0, "close");
    assert_eq!(
        evtchn(&mut w, 1, &u32s(&[VIRQ_ARGO, 0, 0])),
        0,
        "bound again"
    );
}
