//! Event channels, timers and the console ring from inside, what Linux does not do at
//! boot: an event callback that scans the 2-level bitmaps; storms of sends on IPI
//! ports, each delivered exactly once at the send's return; masked ports (nothing
//! delivered, one upcall at unmask); the upcall mask (events held, one upcall when the
//! guest lets them through); a singleshot timer firing during a long `mmu_update`,
//! delivered as that hypercall returns; `SCHEDOP_poll` (a pending port returns at once,
//! a quiet one waits for the timeout); port exhaustion (-ENOSPC); and, with
//! `console-input` on the command line, a line typed at the console read from the
//! ring's input half.
#![no_std]
#![no_main]

use core::sync::atomic::{AtomicU64, Ordering};

use rt::abi::hypercall::{HYPERVISOR_sched_op, HYPERVISOR_vcpu_op, HYPERVISOR_xen_version};
use rt::abi::{MmuUpdate, StartInfo};
use rt::{mem, peek};
use suite::events::{self, MASK, PENDING, byte, evtchn, word};
use suite::{A, Check, Frames, P, RW, l1e_addr};

/// Upcalls taken, and events seen per port (ports below 64).
static UPCALLS: AtomicU64 = AtomicU64::new(0);
static SEEN: [AtomicU64; 64] = [const { AtomicU64::new(0) }; 64];

const EVTCHNOP_CLOSE: u64 = 3;
const EVTCHNOP_SEND: u64 = 4;
const EVTCHNOP_BIND_VIRQ: u64 = 1;
const EVTCHNOP_BIND_IPI: u64 = 7;
const EVTCHNOP_UNMASK: u64 = 9;
const VCPUOP_SET_SINGLESHOT_TIMER: u64 = 8;
const VCPUOP_STOP_PERIODIC_TIMER: u64 = 7;
const SCHEDOP_BLOCK: u64 = 1;
const SCHEDOP_POLL: u64 = 3;
const ENOSPC: i64 = -28;

/// vCPU 0's event callback: count the upcall, take every pending port.
#[unsafe(no_mangle)]
extern "C" fn suite_evt_handler(vcpu: u64) {
    UPCALLS.fetch_add(1, Ordering::SeqCst);
    events::scan(vcpu, |port| {
        if let Some(c) = SEEN.get(port) {
            c.fetch_add(1, Ordering::SeqCst);
        }
        true
    });
}

fn send(port: u32) -> i64 {
    evtchn(EVTCHNOP_SEND, &mut [port])
}

fn seen(port: u32) -> u64 {
    SEEN[port as usize].load(Ordering::SeqCst)
}

/// Xen's system time now (ns), from vcpu_info 0's `vcpu_time_info`.
fn system_time() -> u64 {
    loop {
        let t = events::word(0).as_ptr() as u64 + 32;
        let version = peek(t) as u32;
        let tsc_stamp = peek(t + 8);
        let sys = peek(t + 16);
        let mul_shift = peek(t + 24);
        if version & 1 != 0 || peek(t) as u32 != version {
            continue;
        }
        // SAFETY: rdtsc has no memory effects.
        let tsc = unsafe { core::arch::x86_64::_rdtsc() };
        let mut delta = tsc.wrapping_sub(tsc_stamp);
        let shift = (mul_shift >> 32) as u8 as i8;
        if shift < 0 {
            delta >>= -shift;
        } else {
            delta <<= shift;
        }
        let mul = mul_shift as u32;
        return sys + ((u128::from(delta) * u128::from(mul)) >> 32) as u64;
    }
}

/// `SCHEDOP_poll` on `ports` until `timeout` (absolute system time; 0: none).
fn poll(ports: &[u32], timeout: u64) -> i64 {
    let arg = [ports.as_ptr() as u64, ports.len() as u64, timeout];
    // SAFETY: the argument and the port list live for the call.
    unsafe {
        rt::hypercall(
            HYPERVISOR_sched_op,
            SCHEDOP_POLL,
            arg.as_ptr() as u64,
            0,
            0,
            0,
        )
    }
}

fn set_singleshot(deadline: u64) -> i64 {
    let arg = [deadline, 0u64];
    // SAFETY: the argument block lives for the call.
    unsafe {
        rt::hypercall(
            HYPERVISOR_vcpu_op,
            VCPUOP_SET_SINGLESHOT_TIMER,
            0,
            arg.as_ptr() as u64,
            0,
            0,
        )
    }
}

#[unsafe(no_mangle)]
pub fn guest_main(si: &'static StartInfo) {
    let mut c = Check::new();
    let mut frames = Frames::new();
    events::map_shared_info(&mut frames, si.shared_info >> 12);
    let rc = events::register_callback();
    c.eq("register the event callback", rc, 0);
    // SAFETY: no argument.
    let rc = unsafe { rt::hypercall(HYPERVISOR_vcpu_op, VCPUOP_STOP_PERIODIC_TIMER, 0, 0, 0, 0) };
    c.eq("stop the periodic timer", rc, 0);
    byte(1).store(0, Ordering::SeqCst); // events on (the builder leaves them masked)

    // 1. A storm: 16 IPI ports, 200 sends each, each delivered exactly once, at the
    //    return of its send.
    let mut ipis = [0u32; 16];
    for p in ipis.iter_mut() {
        let mut arg = [0u32, 0];
        c.eq("bind_ipi", evtchn(EVTCHNOP_BIND_IPI, &mut arg), 0);
        *p = arg[1];
    }
    c.ok("IPI ports below 64", ipis.iter().all(|&p| p > 0 && p < 64));
    let before = UPCALLS.load(Ordering::SeqCst);
    let mut late = 0;
    for round in 0..200 {
        for &p in &ipis {
            let was = seen(p);
            c.eq("send", send(p), 0);
            if seen(p) != was + 1 {
                late += 1;
            }
            let _ = round;
        }
    }
    c.eq("every send delivered at its return", late, 0);
    c.eq(
        "upcalls for the storm",
        (UPCALLS.load(Ordering::SeqCst) - before) as i64,
        3200,
    );
    c.ok(
        "200 events on every port",
        ipis.iter().all(|&p| seen(p) == 200),
    );
    rt::println!("storm: 3200 sends on 16 IPI ports, each delivered once at its return");

    // 2. A masked port: sends set the pending bit only; unmask delivers one event.
    let p = ipis[3];
    let bit = 1u64 << (p % 64);
    word(MASK).fetch_or(bit, Ordering::SeqCst);
    let was = seen(p);
    for _ in 0..50 {
        send(p);
    }
    c.eq("masked: nothing delivered", (seen(p) - was) as i64, 0);
    c.ok(
        "masked: pending",
        word(PENDING).load(Ordering::SeqCst) & bit != 0,
    );
    c.eq("unmask", evtchn(EVTCHNOP_UNMASK, &mut [p]), 0);
    c.eq("unmask delivers one event", (seen(p) - was) as i64, 1);
    c.ok("unmasked", word(MASK).load(Ordering::SeqCst) & bit == 0);

    // 3. The upcall mask: events are held, then one upcall takes them all.
    byte(1).store(1, Ordering::SeqCst);
    let before = UPCALLS.load(Ordering::SeqCst);
    for &p in &ipis[..3] {
        send(p);
        send(p);
    }
    c.eq(
        "held while masked",
        (UPCALLS.load(Ordering::SeqCst) - before) as i64,
        0,
    );
    c.eq(
        "upcall pending",
        i64::from(byte(0).load(Ordering::SeqCst)),
        1,
    );
    let was: [u64; 3] = core::array::from_fn(|i| seen(ipis[i]));
    byte(1).store(0, Ordering::SeqCst);
    // Any hypercall lets a pending upcall through (Linux uses xen_version(0)).
    // SAFETY: no pointer argument.
    unsafe { rt::hypercall(HYPERVISOR_xen_version, 0, 0, 0, 0, 0) };
    c.eq(
        "one upcall for all",
        (UPCALLS.load(Ordering::SeqCst) - before) as i64,
        1,
    );
    c.ok(
        "each port once (sends coalesce)",
        (0..3).all(|i| seen(ipis[i]) == was[i] + 1),
    );

    // 4. A timer that fires during a long mmu_update: delivered as it returns.
    let mut arg = [0u32, 0, 0]; // VIRQ_TIMER on vCPU 0
    c.eq("bind_virq timer", evtchn(EVTCHNOP_BIND_VIRQ, &mut arg), 0);
    let timer = arg[2];
    c.ok("timer port below 64", timer > 0 && timer < 64);
    // 32,768 updates rewriting one L1 entry with its own value: milliseconds of work.
    let data = frames.take();
    let entry = MmuUpdate {
        ptr: l1e_addr(mem::pfn_to_va(data)),
        val: (mem::pfn_to_mfn(data) << 12) | P | RW | A,
    };
    const N: usize = 32768;
    let batch_pfn = frames.take();
    for _ in 1..(N * 16).div_ceil(4096) {
        frames.take();
    }
    let batch_va = mem::pfn_to_va(batch_pfn);
    // SAFETY: N entries fit in the consecutive free frames taken above, mapped by the
    // builder's initial mapping.
    let batch = unsafe { core::slice::from_raw_parts_mut(batch_va as *mut MmuUpdate, N) };
    batch.fill(entry);
    // The deadline leaves the arming call 2 ms (a loaded host can take that long).
    const DELAY: u64 = 2_000_000;
    let t0 = system_time();
    c.eq("singleshot timer", set_singleshot(t0 + DELAY), 0);
    let was = seen(timer);
    let (rc, done) = rt::mmu_update(batch, u32::from(rt::abi::DOMID_SELF));
    let t1 = system_time();
    c.eq("long mmu_update", rc, 0);
    c.eq("all done", i64::from(done), N as i64);
    if was == 0 && t1 - t0 > DELAY {
        c.eq(
            "timer delivered as the hypercall returned",
            (seen(timer) - was) as i64,
            1,
        );
    } else {
        rt::println!(
            "timer: the batch took only {} us; not checked",
            (t1 - t0) / 1000
        );
    }
    rt::println!("timer: fired during a {} us mmu_update", (t1 - t0) / 1000);
    // A deadline in the past fires at once.
    let was = seen(timer);
    c.eq("past deadline", set_singleshot(1), 0);
    c.eq(
        "past deadline fires at the call's return",
        (seen(timer) - was) as i64,
        1,
    );

    // 4b. SCHEDOP_poll: a pending (masked) port returns at once; a quiet one waits for
    //     the timeout; too many ports or one beyond the ABI are -EINVAL.
    let p = ipis[7];
    let bit = 1u64 << (p % 64);
    word(MASK).fetch_or(bit, Ordering::SeqCst);
    send(p);
    c.eq("poll a pending port", poll(&[p], 0), 0);
    word(PENDING).fetch_and(!bit, Ordering::SeqCst);
    let t0 = system_time();
    c.eq(
        "poll a quiet port with a timeout",
        poll(&[p], t0 + 3_000_000),
        0,
    );
    let waited = system_time() - t0;
    c.ok("poll waited for its timeout", waited >= 3_000_000);
    c.eq("unmask after poll", evtchn(EVTCHNOP_UNMASK, &mut [p]), 0);
    let many = [p; 129];
    c.eq("poll 129 ports", poll(&many, 0), -22);
    c.eq("poll a port beyond the ABI", poll(&[5000], 0), -22);
    rt::println!(
        "poll: returned at once for a pending port, waited {} us for a quiet one",
        waited / 1000
    );

    // 5. Ports run out: -ENOSPC, and closing one makes room again.
    let mut last = 0;
    let mut n = 0;
    loop {
        let mut arg = [0u32, 0];
        let rc = evtchn(EVTCHNOP_BIND_IPI, &mut arg);
        if rc == ENOSPC {
            break;
        }
        if rc != 0 || n > 5000 {
            c.eq("bind_ipi until the ports run out", rc, ENOSPC);
            break;
        }
        last = arg[1];
        n += 1;
    }
    c.eq(
        "last port (xl's default limit, 1023)",
        i64::from(last),
        1023,
    );
    c.eq("close", evtchn(EVTCHNOP_CLOSE, &mut [last]), 0);
    let mut arg = [0u32, 0];
    c.eq(
        "a closed port is free again",
        evtchn(EVTCHNOP_BIND_IPI, &mut arg),
        0,
    );
    c.eq("the same port", i64::from(arg[1]), i64::from(last));
    rt::println!("ports: {} more bound before -ENOSPC", n);

    // 6. Console input through the ring, when the command line asks for it.
    let cmdline = &si.cmd_line;
    let wants = cmdline.windows(13).any(|w| w == b"console-input");
    if wants {
        console_input(&mut c, &mut frames, si);
    }
    // The domain's two watchdog timers (SCHEDOP_watchdog): taken by id 0, rearmed and
    // released by id, refused beyond them; none left armed to fire.
    let watchdog = rt::watchdog;
    c.eq("watchdog: first", watchdog(0, 3600), 1);
    c.eq("watchdog: second", watchdog(0, 3600), 2);
    c.eq("watchdog: none left", watchdog(0, 3600), ENOSPC);
    c.eq("watchdog: rearm 1", watchdog(1, 7200), 0);
    c.eq("watchdog: id 3", watchdog(3, 10), -22);
    c.eq("watchdog: release 1", watchdog(1, 0), 0);
    c.eq("watchdog: 1 not in use", watchdog(1, 10), -22);
    c.eq("watchdog: 1 again", watchdog(0, 3600), 1);
    c.eq("watchdog: release 1", watchdog(1, 0), 0);
    c.eq("watchdog: release 2", watchdog(2, 0), 0);
    c.finish()
}

/// Tells the console backend it listens (a notification on the ring's event
/// channel), waits (blocked) up to 5 s for a line in the ring's input half, prints it.
fn console_input(c: &mut Check, frames: &mut Frames, si: &StartInfo) {
    let ring = events::map_frame(frames, si.console_mfn);
    rt::println!("events: type a line");
    send(si.console_evtchn);
    let deadline = system_time() + 5_000_000_000;
    let mut line = [0u8; 64];
    let mut len = 0;
    while system_time() < deadline && !line[..len].contains(&b'\n') {
        let cons = peek(ring + 3072) as u32;
        let prod = (peek(ring + 3072) >> 32) as u32;
        let mut k = cons;
        while k != prod && len < line.len() {
            // SAFETY: a byte of the ring's input half.
            line[len] =
                unsafe { core::ptr::read_volatile((ring + u64::from(k & 1023)) as *const u8) };
            len += 1;
            k = k.wrapping_add(1);
        }
        // SAFETY: in_cons, a u32 of the mapped ring page.
        unsafe { core::ptr::write_volatile((ring + 3072) as *mut u32, k) };
        if k == prod {
            set_singleshot(system_time() + 50_000_000);
            // SAFETY: no argument.
            unsafe { rt::hypercall(HYPERVISOR_sched_op, SCHEDOP_BLOCK, 0, 0, 0, 0) };
        }
    }
    let text = core::str::from_utf8(&line[..len]).unwrap_or("?").trim_end();
    rt::println!("console input: {text}");
    c.ok("a line arrived", len > 0);
}
