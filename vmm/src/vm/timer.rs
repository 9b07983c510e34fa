//! Time passing for the guest, and vCPUs waking each other: each vCPU's timers
//! (`platform::pv::timer`) fire VIRQ_TIMER at their deadlines. A helper thread per vCPU
//! sleeps until the next deadline and kicks the vCPU thread out of KVM_RUN with a signal
//! (again every millisecond until the vCPU thread has seen it); the vCPU thread expires
//! the timers, raises the VIRQ, and delivers the upcall where it interrupted the guest.
//! A kick from another vCPU (an event for this one) sets the deadline to now.
//! `SCHEDOP_block` and `SCHEDOP_poll` wait here, without the domain lock, for an event,
//! the next deadline or console input, without spinning; so does a vCPU that is down.
//! Console input is moved into the guest's console ring at kicks and while a vCPU
//! waits.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use platform::evtchn::VIRQ_TIMER;
use platform::layout::HV_BASE;
use pvmmu_abi::sched::SHUTDOWN_watchdog;

use super::{Cpu, Exit, GuestExit, Shared, VmError, Wait};

/// No deadline.
const NONE: u64 = u64::MAX;
/// Longest single wait of a blocked vCPU before it looks at the stop flag again.
const BLOCK_SLICE: Duration = Duration::from_millis(50);

/// What the vCPU thread and the timer thread share.
#[derive(Debug)]
struct TimerShared {
    /// The next deadline, in ns since `epoch` ([`NONE`]: none).
    deadline: AtomicU64,
    /// The vCPU thread (`pthread_t`), once it runs.
    thread: AtomicU64,
    /// Ends the timer thread.
    quit: AtomicBool,
    /// The vCPU's system time 0.
    epoch: Instant,
}

/// The timer thread of one vCPU.
#[derive(Debug)]
pub(super) struct TimerKick {
    shared: Arc<TimerShared>,
    thread: Option<JoinHandle<()>>,
}

/// A handle that kicks one vCPU (through its timer thread).
#[derive(Debug, Clone)]
pub(super) struct Kicker {
    shared: Arc<TimerShared>,
    thread: std::thread::Thread,
}

impl Kicker {
    /// Kicks the vCPU out of KVM_RUN at once, and again every millisecond until it has
    /// taken an exit and seen it.
    pub(super) fn kick(&self) {
        self.shared.deadline.store(0, Ordering::SeqCst);
        self.thread.unpark();
    }
}

/// The signal that kicks a vCPU thread out of KVM_RUN (its handler does nothing).
fn kick_signal() -> libc::c_int {
    vmm_sys_util::signal::SIGRTMIN()
}

extern "C" fn ignore(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

impl TimerKick {
    /// Starts the timer thread for vCPU `vcpu`, whose system time 0 is `epoch`.
    pub(super) fn start(epoch: Instant, vcpu: u32) -> std::io::Result<TimerKick> {
        vmm_sys_util::signal::register_signal_handler(kick_signal(), ignore)
            .map_err(std::io::Error::from)?;
        let shared = Arc::new(TimerShared {
            deadline: AtomicU64::new(NONE),
            thread: AtomicU64::new(0),
            quit: AtomicBool::new(false),
            epoch,
        });
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name(format!("vcpu{vcpu}-timer"))
            .spawn(move || timer_thread(&s))?;
        Ok(TimerKick {
            shared,
            thread: Some(thread),
        })
    }

    /// The handle other threads kick the vCPU with.
    pub(super) fn kicker(&self) -> Kicker {
        Kicker {
            shared: self.shared.clone(),
            thread: self
                .thread
                .as_ref()
                .map_or_else(std::thread::current, |t| t.thread().clone()),
        }
    }

    /// Records the calling thread as the vCPU thread to kick.
    pub(super) fn attach(&self) {
        // SAFETY: pthread_self has no preconditions.
        let me = unsafe { libc::pthread_self() };
        self.shared.thread.store(me as u64, Ordering::SeqCst);
    }

    /// Sets the next deadline (system time, ns) and wakes the timer thread.
    pub(super) fn set_deadline(&self, deadline: Option<u64>) {
        let d = deadline.unwrap_or(NONE);
        if self.shared.deadline.swap(d, Ordering::SeqCst) != d
            && let Some(t) = &self.thread
        {
            t.thread().unpark();
        }
    }
}

impl Drop for TimerKick {
    fn drop(&mut self) {
        self.shared.quit.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

fn timer_thread(s: &TimerShared) {
    while !s.quit.load(Ordering::SeqCst) {
        let d = s.deadline.load(Ordering::SeqCst);
        let now = u64::try_from(s.epoch.elapsed().as_nanos()).unwrap_or(NONE);
        if d == NONE {
            std::thread::park_timeout(BLOCK_SLICE);
        } else if now < d {
            std::thread::park_timeout(Duration::from_nanos(d - now));
        } else {
            let t = s.thread.load(Ordering::SeqCst);
            if t != 0 {
                // SAFETY: `t` is the vCPU thread of this VM, alive while the VM runs
                // (the VM stops this thread before it goes), with a handler for the
                // signal installed.
                unsafe { libc::pthread_kill(t as libc::pthread_t, kick_signal()) };
            }
            std::thread::park_timeout(Duration::from_millis(1));
        }
    }
}

impl Exit<'_> {
    /// Expires the vCPU's due timers (raising VIRQ_TIMER) and tells the timer thread
    /// the next deadline. While the guest has not bound VIRQ_TIMER a timer firing
    /// changes nothing it can see, so the vCPU is not kicked for it (the timers still
    /// expire here, at the next exit).
    pub(super) fn service_timers(&mut self) {
        let vcpu = self.cpu.vcpu.caller.vcpu;
        let now = self.cpu.pv.system_time_ns();
        if self.cpu.pv.expire_timers(now) {
            self.c.platform.evtchn.raise_virq(self.m, vcpu, VIRQ_TIMER);
        }
        if let Some(k) = &self.cpu.timer {
            let bound = self.c.platform.evtchn.virq_bound(vcpu, VIRQ_TIMER);
            let own = self.cpu.pv.next_deadline().filter(|_| bound);
            let watchdog = self.c.platform.next_watchdog();
            k.set_deadline([own, watchdog].into_iter().flatten().min());
        }
    }

    /// Moves console input into the guest's console ring (at kicks and while blocked:
    /// not on every hypercall's return; the guest's own console notifications and
    /// yields feed it too).
    pub(super) fn feed_console(&mut self) {
        let mut console = super::SerialSink(self.s.serial.clone());
        self.c.platform.feed_console(self.m, &mut console);
    }

    /// After the timer thread kicked the vCPU out of the guest: services the timers and
    /// delivers a pending upcall where the guest was interrupted, if it was running its
    /// own code (not the hypervisor's stubs).
    pub(super) fn timer_kick(&mut self) -> Result<Option<GuestExit>, VmError> {
        self.feed_console();
        self.service_timers();
        let sregs = self.cpu.vcpu.sregs()?;
        let rip = self.cpu.vcpu.regs().rip;
        // Not inside the hypervisor's ring-0 stubs or its syscall stub (L4 slots 260
        // and 257).
        let hv = HV_BASE..HV_BASE + (1 << 39);
        let stub = platform::layout::M2P_ALIAS_VA..platform::layout::M2P_ALIAS_VA + (1 << 39);
        if sregs.cs.dpl != 3 || hv.contains(&rip) || stub.contains(&rip) {
            return Ok(None);
        }
        // An exception KVM has yet to inject (the kick can come between a guest fault
        // and its delivery to the ring-0 stub) must find the guest as it faulted.
        let events = self.cpu.vcpu.fd.get_vcpu_events()?;
        if events.exception.injected != 0
            || events.exception.pending != 0
            || events.interrupt.injected != 0
            || events.nmi.injected != 0
        {
            return Ok(None);
        }
        self.deliver_pending_upcall(false)
    }
}

/// Whether the vCPU should stop waiting because the VM is ending.
fn leaving(shared: &Shared, stop: &AtomicBool) -> bool {
    stop.load(Ordering::Relaxed)
        || shared.stop.load(Ordering::Relaxed)
        || shared.ended.load(Ordering::SeqCst)
}

/// Waits out `SCHEDOP_block` (until an event is pending for the vCPU: a timer firing
/// raises one) or `SCHEDOP_poll` (until one of the polled ports is pending, or with
/// several ports, as in Xen, any event for the vCPU; or the poll's deadline passes),
/// or until the VM is ending. Timers keep running meanwhile; the domain is locked only
/// to look. A pending upcall is delivered at the end, where the guest continues.
pub(super) fn wait(
    shared: &Shared,
    cpu: &mut Cpu,
    what: &Wait,
    stop: &AtomicBool,
) -> Result<Option<GuestExit>, VmError> {
    let vcpu = cpu.vcpu.caller.vcpu;
    loop {
        let next = {
            let (mut core, mut m) = shared.lock_both();
            let mut x = Exit {
                s: shared,
                c: &mut core,
                m: &mut m,
                cpu,
            };
            x.feed_console();
            x.service_timers();
            let ev = &x.c.platform.evtchn;
            let m = &*x.m;
            let now = x.cpu.pv.system_time_ns();
            let (done, deadline, out_pending) = match what {
                Wait::Block(out_pending) => (ev.upcall_pending(m, vcpu), None, *out_pending),
                Wait::Poll(poll, out_pending) => {
                    let polled = poll.ports.iter().any(|&p| ev.is_pending(m, p));
                    let any = poll.ports.len() != 1 && ev.upcall_pending(m, vcpu);
                    let due = poll.deadline.is_some_and(|d| now >= d);
                    (polled || any || due, poll.deadline, *out_pending)
                }
            };
            let polling = matches!(what, Wait::Poll(..));
            x.c.platform.evtchn.set_polling(vcpu, polling && !done);
            if x.c.platform.watchdog_due(now) {
                x.c.platform.evtchn.set_polling(vcpu, false);
                return Ok(Some(GuestExit::Shutdown(SHUTDOWN_watchdog)));
            }
            if done {
                return x.deliver_pending_upcall(out_pending);
            }
            let next = [
                x.cpu.pv.next_deadline(),
                deadline,
                x.c.platform.next_watchdog(),
            ]
            .into_iter()
            .flatten()
            .min();
            next.map_or(BLOCK_SLICE, |d| Duration::from_nanos(d.saturating_sub(now)))
        };
        if leaving(shared, stop) {
            shared.lock().platform.evtchn.set_polling(vcpu, false);
            return Ok(None);
        }
        // Console input and events from other vCPUs unpark the thread.
        std::thread::park_timeout(next.min(BLOCK_SLICE));
    }
}

/// Waits while the vCPU is down (`VCPUOP_down`), until another vCPU brings it up or the
/// VM is ending. Its timers keep running.
pub(super) fn wait_until_up(shared: &Shared, cpu: &mut Cpu, stop: &AtomicBool) {
    let vcpu = cpu.vcpu.caller.vcpu;
    loop {
        {
            let (mut core, mut m) = shared.lock_both();
            if core.platform.is_up(vcpu) {
                return;
            }
            Exit {
                s: shared,
                c: &mut core,
                m: &mut m,
                cpu,
            }
            .service_timers();
        }
        if leaving(shared, stop) {
            return;
        }
        std::thread::park_timeout(BLOCK_SLICE);
    }
}
