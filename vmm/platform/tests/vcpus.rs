//! `vcpu_op` across vCPUs, without KVM, as Xen serves a 64-bit PV domU:
//! `VCPUOP_initialise` (its refusals in Xen's order, with nothing kept after one; the
//! context it records: selectors with RPL 3, IOPL moved out of RFLAGS, IF forced), `up`,
//! `down` (the last vCPU's powering the domain off), `is_up`, and the registrations a
//! kernel makes for a vCPU before it runs.

use platform::dispatch::{self, DomainState, Outcome};
use platform::elf::minimal_image;
use platform::pv::{GuestContext, PvVcpu};
use platform::vcpus::{
    VCPU_GUEST_CONTEXT_SIZE, VCPUOP_DOWN, VCPUOP_INITIALISE, VCPUOP_IS_UP, VCPUOP_UP,
};
use platform::{Domain, DomainSpec, NullConsole};
use pvmmu::{Caller, Errno, GuestView, Mfn, NoFlush};
use pvmmu_abi::hypercall::HYPERVISOR_vcpu_op;
use pvmmu_abi::sched::SHUTDOWN_poweroff;

/// Scratch memory in the boot mapping (identity, writable).
const ARG: u64 = 0x15_0000;
/// Word offsets in `struct vcpu_guest_context`.
const FLAGS: usize = 64;
const RIP: usize = 81;
const CS: usize = 82;
const RFLAGS: usize = 83;
const RSP: usize = 84;
const SS: usize = 85;
const KERNEL_SS: usize = 621;
const CR3: usize = 626;
const GS_BASE_KERNEL: usize = 644;
const VGCF_IN_KERNEL: u64 = 4;

struct World {
    d: Domain<NoFlush>,
    state: DomainState,
    pv: PvVcpu,
}

fn world() -> World {
    let spec = DomainSpec {
        vcpus: 2,
        ..DomainSpec::new(minimal_image(&[0xf4]), 16)
    };
    let d = Domain::create(&spec, NoFlush).expect("domain");
    let state = DomainState::new(&d.boot, 2);
    let pv = d.pv_vcpu(0);
    World { d, state, pv }
}

impl World {
    fn call(&mut self, cmd: u32, vcpu: u64, arg: u64) -> Outcome {
        let mut ctx = GuestContext::default();
        dispatch::dispatch(
            &mut self.d.machine,
            &mut NullConsole,
            &mut self.state,
            &mut self.pv,
            &mut ctx,
            HYPERVISOR_vcpu_op,
            [u64::from(cmd), vcpu, arg, 0, 0],
        )
        .expect("dispatch")
        .outcome
    }

    fn op(&mut self, cmd: u32, vcpu: u64, arg: u64) -> i64 {
        match self.call(cmd, vcpu, arg) {
            Outcome::Return(v) => v,
            other => panic!("vcpu_op {cmd}: {other:?}"),
        }
    }

    /// Writes a context into guest memory at ARG and initialises vCPU 1 with it.
    fn initialise(&mut self, ctx: &[u64]) -> i64 {
        let bytes: Vec<u8> = ctx.iter().flat_map(|w| w.to_le_bytes()).collect();
        let root = self.d.machine.kernel_root(self.pv.caller());
        GuestView::new(self.d.machine.memory(), root)
            .write(ARG, &bytes)
            .expect("guest write");
        self.op(VCPUOP_INITIALISE, 1, ARG)
    }

    /// A context Linux would give its secondary CPU.
    fn context(&self) -> Vec<u64> {
        let mut c = vec![0u64; VCPU_GUEST_CONTEXT_SIZE / 8];
        c[FLAGS] = VGCF_IN_KERNEL;
        c[RIP] = 0x10_0000;
        c[CS] = 0x10;
        c[RFLAGS] = 0x1000;
        c[RSP] = 0x14_0000;
        c[SS] = 0x18;
        c[KERNEL_SS] = 0x18;
        c[CR3] = self.d.boot.l4.addr();
        c[GS_BASE_KERNEL] = 0x1234_5000;
        c
    }
}

#[test]
fn initialise_refusals_keep_nothing_and_a_good_context_is_recorded() {
    let mut w = world();
    let einval = Errno::EINVAL.neg();
    assert_eq!(w.op(VCPUOP_IS_UP, 1, 0), 0);
    assert_eq!(w.op(VCPUOP_IS_UP, 2, 0), Errno::ENOENT.neg());
    assert_eq!(w.op(VCPUOP_UP, 1, 0), einval, "up before initialise");
    assert_eq!(
        w.op(VCPUOP_INITIALISE, 1, 0xffff_8000_0000_0000),
        Errno::EFAULT.neg()
    );
    let good = w.context();
    let mut bad = good.clone();
    bad[RIP] = 0x8000_0000_0000_0000;
    assert_eq!(w.initialise(&bad), einval, "non-canonical RIP");
    let mut bad = good.clone();
    bad[631 + 7] = 1 << 32;
    assert_eq!(w.initialise(&bad), einval, "DR7 upper half");
    let mut bad = good.clone();
    bad[FLAGS] = 0;
    assert_eq!(w.initialise(&bad), einval, "user mode with no user root");
    let mut bad = good.clone();
    bad[620] = 17 * 512;
    assert_eq!(w.initialise(&bad), einval, "more than 16 GDT frames");
    // A root that cannot be an L4 (a data page of the boot mapping, mapped writable):
    // refused, and the references the GDT took are given back.
    let mut bad = good.clone();
    bad[CR3] = 0x140 << 12;
    assert_eq!(
        w.initialise(&bad),
        einval,
        "a root that is not a page table"
    );
    let ap = Caller::new(w.pv.caller().dom, 1);
    assert_eq!(w.d.machine.kernel_root(ap), None);
    assert!(w.d.machine.audit().is_ok());
    assert!(!w.state.vcpus[1].initialised);
    // The good one.
    assert_eq!(w.initialise(&good), 0);
    assert_eq!(w.initialise(&good), Errno::EEXIST.neg());
    assert_eq!(w.d.machine.kernel_root(ap), Some(w.d.boot.l4));
    let slot = &w.state.vcpus[1];
    assert!(slot.initialised && !slot.up, "initialised, still down");
    let start = slot.start.as_ref().expect("start context");
    let r = start.regs;
    assert_eq!(
        (r.rip, r.rsp, r.cs, r.ss),
        (0x10_0000, 0x14_0000, 0x13, 0x1b)
    );
    assert_eq!(r.rflags, 0x202, "IOPL moved out, IF on");
    assert_eq!(start.pv.iopl, 0x1000);
    assert_eq!(start.pv.kernel_ss, 0x1b);
    assert!(r.kernel);
    assert_eq!(r.gs_base_kernel, 0x1234_5000);
    assert_eq!(w.op(VCPUOP_IS_UP, 1, 0), 0);
    assert!(w.d.machine.audit().is_ok());
}

#[test]
fn up_down_and_the_last_vcpu_going_down() {
    let mut w = world();
    let good = w.context();
    assert_eq!(w.initialise(&good), 0);
    assert_eq!(w.op(VCPUOP_UP, 1, 0), 0);
    assert_eq!(w.op(VCPUOP_IS_UP, 1, 0), 1);
    assert_eq!(w.op(VCPUOP_UP, 1, 0), 0, "up again: nothing to do");
    assert_eq!(w.state.evtchn.take_kicks() & 2, 2, "vCPU 1 is kicked");
    assert_eq!(w.op(VCPUOP_DOWN, 1, 0), 0);
    assert_eq!(w.op(VCPUOP_IS_UP, 1, 0), 0);
    assert_eq!(w.op(VCPUOP_DOWN, 1, 0), 0, "down again");
    // vCPU 0 is the last one up: its down powers the domain off, and vCPU 0 stays up.
    assert_eq!(
        w.call(VCPUOP_DOWN, 0, 0),
        Outcome::Shutdown(SHUTDOWN_poweroff)
    );
    assert!(w.state.is_up(0));
    // Brought up again, vCPU 1 lets vCPU 0 go down.
    assert_eq!(w.op(VCPUOP_UP, 1, 0), 0);
    assert_eq!(w.op(VCPUOP_DOWN, 0, 0), 0);
    assert!(!w.state.is_up(0));
}

#[test]
fn vcpu_info_registered_for_a_vcpu_that_has_not_run() {
    let mut w = world();
    let frame = 0x160u64;
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&frame.to_le_bytes());
    b[8..12].copy_from_slice(&64u32.to_le_bytes());
    let root = w.d.machine.kernel_root(w.pv.caller());
    GuestView::new(w.d.machine.memory(), root)
        .write(ARG, &b)
        .expect("write");
    const REGISTER_VCPU_INFO: u32 = 10;
    assert_eq!(w.op(REGISTER_VCPU_INFO, 1, ARG), 0);
    assert_eq!(
        w.op(REGISTER_VCPU_INFO, 1, ARG),
        Errno::EBUSY.neg(),
        "once per vCPU"
    );
    // The events of vCPU 1 go there now, and it starts from there.
    assert_eq!(w.state.evtchn.vcpu_info[1], frame * 4096 + 64);
    let mut info = [0u8; 16];
    GuestView::new(w.d.machine.memory(), root)
        .read(frame * 4096 + 64, &mut info)
        .expect("read");
    assert_eq!(info[0], 1, "upcall pending");
    assert_eq!(info[1], 1, "still masked, as the toolstack left it");
    assert_eq!(&info[8..16], &[0xff; 8], "every selector bit");
    assert_eq!(w.initialise(&w.context()), 0);
    let start = w.state.vcpus[1].start.as_ref().expect("start");
    assert_eq!(start.pv.vcpu_info(), frame * 4096 + 64);
    let ap = Caller::new(w.pv.caller().dom, 1);
    let held =
        w.d.machine
            .domain(ap.dom)
            .and_then(|d| d.vcpus().get(1).and_then(|v| v.vcpu_info_frame));
    assert_eq!(held, Some(Mfn(frame)));
}

#[test]
fn a_port_becoming_pending_kicks_the_pollers_even_when_masked() {
    let w = world();
    let e = &w.state.evtchn;
    let m = &w.d.machine;
    let port = 5;
    // Masked: no upcall for anyone, but a vCPU polling is woken.
    let mask_word = w.d.boot.shared_info + 2560;
    vm_memory::Bytes::write_obj(m.memory(), 1u64 << port, vm_memory::GuestAddress(mask_word))
        .expect("mask");
    let _ = e.take_kicks();
    e.set_polling(1, true);
    e.set_pending(m, port);
    assert_eq!(e.take_kicks(), 2, "the poller, not the port's vCPU");
    // Pending already: nothing new.
    e.set_pending(m, port);
    assert_eq!(e.take_kicks(), 0);
    e.set_polling(1, false);
    assert!(e.is_pending(m, port));
}

#[test]
fn the_periodic_timer_of_another_vcpu() {
    let mut w = world();
    const SET_PERIODIC: u32 = 6;
    const STOP_PERIODIC: u32 = 7;
    const SET_SINGLESHOT: u32 = 8;
    let root = w.d.machine.kernel_root(w.pv.caller());
    GuestView::new(w.d.machine.memory(), root)
        .write(ARG, &500_000u64.to_le_bytes())
        .expect("write");
    assert_eq!(
        w.op(SET_PERIODIC, 1, ARG),
        Errno::EINVAL.neg(),
        "below 1 ms"
    );
    GuestView::new(w.d.machine.memory(), root)
        .write(ARG, &5_000_000u64.to_le_bytes())
        .expect("write");
    let _ = w.state.evtchn.take_kicks();
    assert_eq!(w.op(SET_PERIODIC, 1, ARG), 0);
    assert_eq!(w.state.vcpus[1].period, Some(5_000_000));
    assert_eq!(w.state.evtchn.take_kicks(), 2, "vCPU 1 is kicked to follow");
    assert_eq!(w.op(STOP_PERIODIC, 1, 0), 0);
    assert_eq!(w.state.vcpus[1].period, Some(0));
    // The single-shot timer is the caller's own only.
    assert_eq!(w.op(SET_SINGLESHOT, 1, ARG), Errno::EINVAL.neg());
    // The vCPU follows what was set for it.
    let mut ap = w.pv.sibling(pvmmu::Caller::new(w.pv.caller().dom, 1), 0);
    ap.follow(0, None, w.state.vcpus[1].period.take(), None);
    assert_eq!(ap.timers.period, 0);
    assert_eq!(ap.next_deadline(), None);
}

#[test]
fn initialise_keeps_the_whole_kernel_ss_word() {
    // `kernel_ss` is an unsigned long in the context and Xen keeps all of it, as
    // `stack_switch` does; only the RPL is forced to 3.
    let mut w = world();
    let mut c = w.context();
    c[KERNEL_SS] = 0x1_0000_0018;
    assert_eq!(w.initialise(&c), 0);
    let start = w.state.vcpus[1].start.as_ref().expect("start context");
    assert_eq!(start.pv.kernel_ss, 0x1_0000_001b);
}

/// Reads `n` bytes of guest-physical memory.
fn read_phys(w: &World, at: u64, n: usize) -> Vec<u8> {
    use vm_memory::{Bytes, GuestAddress};
    let mut b = vec![0u8; n];
    w.d.machine
        .memory()
        .read_slice(&mut b, GuestAddress(at))
        .expect("guest memory");
    b
}

fn word_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

impl World {
    /// Writes `v` at ARG.
    fn put_arg(&mut self, v: u64) {
        let root = self.d.machine.kernel_root(self.pv.caller());
        GuestView::new(self.d.machine.memory(), root)
            .write(ARG, &v.to_le_bytes())
            .expect("guest write");
    }

    /// `vcpu_op(cmd, vcpu, &gaddr)`: the argument through guest memory at ARG.
    fn area_op(&mut self, cmd: u32, vcpu: u64, gaddr: u64) -> i64 {
        self.put_arg(gaddr);
        self.op(cmd, vcpu, ARG)
    }
}

#[test]
fn runstate_and_time_areas_by_guest_physical_address() {
    const RUNSTATE_PHYS: u32 = 14;
    const TIME_PHYS: u32 = 15;
    const REGISTER_RUNSTATE_VA: u32 = 5;
    let mut w = world();
    let (enxio, einval) = (Errno::ENXIO.neg(), Errno::EINVAL.neg());
    // Map_guest_area's refusals, in Xen's order.
    assert_eq!(
        w.area_op(RUNSTATE_PHYS, 0, 0x16_0fe0),
        enxio,
        "crosses a page"
    );
    assert_eq!(
        w.area_op(RUNSTATE_PHYS, 0, 0x16_0004),
        enxio,
        "not 8-byte aligned"
    );
    assert_eq!(
        w.area_op(RUNSTATE_PHYS, 0, 0x4000_0000),
        einval,
        "not the domain's RAM"
    );
    let l4 = w.d.boot.l4.addr();
    assert_eq!(
        w.area_op(RUNSTATE_PHYS, 0, l4),
        Errno::EACCES.neg(),
        "a page table"
    );
    assert_eq!(
        w.op(RUNSTATE_PHYS, 0, 0xffff_8000_0000_0000),
        Errno::EFAULT.neg()
    );
    assert_eq!(w.op(RUNSTATE_PHYS, 2, ARG), Errno::ENOENT.neg());
    // A virtual area first; once a physical one is registered, only that is written.
    let va_area = 0x17_0000;
    assert_eq!(w.area_op(REGISTER_RUNSTATE_VA, 0, va_area), 0);
    let frame = Mfn(0x160);
    let before = w.d.machine.frames().get(frame).unwrap();
    assert_eq!(w.area_op(RUNSTATE_PHYS, 0, 0x16_0040), 0);
    let after = w.d.machine.frames().get(frame).unwrap();
    assert_eq!(
        (after.count, after.type_count),
        (before.count + 1, before.type_count + 1)
    );
    let r = read_phys(&w, 0x16_0040, 48);
    assert_eq!(word_at(&r, 0), 0, "running");
    assert_eq!(
        word_at(&r, 8) >> 63,
        0,
        "XEN_RUNSTATE_UPDATE clear after the write"
    );
    assert!(word_at(&r, 16) > 0, "time running");
    let va_before = read_phys(&w, va_area, 48);
    std::thread::sleep(std::time::Duration::from_millis(2));
    w.pv.update_runstate_area(&w.d.machine);
    assert_eq!(
        read_phys(&w, va_area, 48),
        va_before,
        "the virtual area is left alone"
    );
    assert!(word_at(&read_phys(&w, 0x16_0040, 48), 16) > word_at(&r, 16));
    // Another vCPU's time area, filled at once (vCPU 1 has published no time yet: the
    // caller's record, the same system time); then ours, filled from vcpu_info at each
    // update.
    w.pv.update_time(&w.d.machine, 111_111, 2_000_000);
    let info = w.pv.vcpu_info() + pvmmu_abi::shared_info::VCPU_INFO_TIME_OFFSET as u64;
    assert_eq!(w.area_op(TIME_PHYS, 1, 0x16_0100), 0);
    assert_eq!(
        read_phys(&w, 0x16_0100, 32),
        read_phys(&w, info, 32),
        "vCPU 1's area filled at registration"
    );
    let ap = Caller::new(w.pv.caller().dom, 1);
    assert_eq!(
        w.d.machine.guest_area(ap, pvmmu::GuestArea::Time),
        Some(0x16_0100)
    );
    assert_eq!(w.area_op(TIME_PHYS, 0, 0x16_0200), 0);
    w.pv.update_time(&w.d.machine, 123_456_789, 2_000_000);
    let primary = read_phys(&w, info, 32);
    let secondary = read_phys(&w, 0x16_0200, 32);
    assert_eq!(
        secondary, primary,
        "the same record, the same (even) version"
    );
    assert_eq!(word_at(&secondary, 8), 123_456_789);
    assert_eq!(secondary[0] & 1, 0);
    // ~0 unregisters: the references go back.
    assert_eq!(w.area_op(RUNSTATE_PHYS, 0, u64::MAX), 0);
    let back = w.d.machine.frames().get(frame).unwrap();
    assert_eq!(
        (back.count, back.type_count),
        (before.count + 2, before.type_count + 2),
        "the two time areas' (vCPU 0's and 1's, same frame)"
    );
    assert_eq!(w.area_op(TIME_PHYS, 0, u64::MAX), 0);
    assert_eq!(w.area_op(TIME_PHYS, 1, u64::MAX), 0);
    assert_eq!(w.d.machine.frames().get(frame).unwrap(), before);
    assert!(w.d.machine.audit().is_ok());
}

#[test]
fn another_vcpus_time_area_is_followed() {
    const TIME_VA: u32 = 13;
    let mut w = world();
    assert_eq!(
        w.area_op(TIME_VA, 1, 0xffff_8000_0000_0000),
        Errno::EFAULT.neg()
    );
    let _ = w.state.evtchn.take_kicks();
    // vCPU 1 has published a time record in its vcpu_info (mid-update: version odd):
    // its area is filled with it at once, with the version the update ends with.
    let ap_info = w.state.evtchn.vcpu_info[1];
    let mut record = [0u8; 32];
    record[0..4].copy_from_slice(&7u32.to_le_bytes());
    record[8..16].copy_from_slice(&0xabcd_u64.to_le_bytes());
    record[16..24].copy_from_slice(&0x1234_u64.to_le_bytes());
    {
        use vm_memory::{Bytes, GuestAddress};
        let at = ap_info + pvmmu_abi::shared_info::VCPU_INFO_TIME_OFFSET as u64;
        w.d.machine
            .memory()
            .write_slice(&record, GuestAddress(at))
            .unwrap();
    }
    assert_eq!(w.area_op(TIME_VA, 1, 0x16_0300), 0);
    let mut want = record;
    want[0..4].copy_from_slice(&8u32.to_le_bytes());
    assert_eq!(
        read_phys(&w, 0x16_0300, 32),
        want.to_vec(),
        "filled at once"
    );
    assert_eq!(w.state.vcpus[1].time_area, Some(0x16_0300));
    assert_eq!(w.state.evtchn.take_kicks(), 2, "vCPU 1 is kicked to follow");
    let mut ap = w.pv.sibling(Caller::new(w.pv.caller().dom, 1), 0);
    ap.follow(0, None, None, w.state.vcpus[1].time_area.take());
    assert_eq!(ap.time_area, Some(0x16_0300));
    // A null handle unregisters, for another vCPU as for the caller.
    assert_eq!(w.area_op(TIME_VA, 1, 0), 0);
    ap.follow(0, None, None, w.state.vcpus[1].time_area.take());
    assert_eq!(ap.time_area, None);
    assert_eq!(w.area_op(TIME_VA, 0, 0x16_0300), 0);
    assert_eq!(w.pv.time_area, Some(0x16_0300));
}
