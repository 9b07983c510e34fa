//! Time passing for the guest: the vCPU's timers (`platform::pv::timer`) fire VIRQ_TIMER
//! at their deadlines. A helper thread sleeps until the next deadline and kicks the vCPU
//! thread out of KVM_RUN with a signal (again every millisecond until the vCPU thread
//! has seen it); the vCPU thread expires the timers, raises the VIRQ, and delivers the
//! upcall where it interrupted the guest. `SCHEDOP_block` waits here for an event, the
//! next deadline or console input, without spinning; console input is moved into the
//! guest's console ring at kicks and while the vCPU waits.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use platform::evtchn::VIRQ_TIMER;
use platform::layout::HV_BASE;

use super::{GuestExit, Vm, VmError};

/// No deadline.
const NONE: u64 = u64::MAX;
/// Longest single wait of a blocked vCPU before it looks at the stop flag again.
const BLOCK_SLICE: Duration = Duration::from_millis(50);

/// What the vCPU thread and the timer thread share.
#[derive(Debug)]
struct Shared {
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
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// The signal that kicks a vCPU thread out of KVM_RUN (its handler does nothing).
fn kick_signal() -> libc::c_int {
    vmm_sys_util::signal::SIGRTMIN()
}

extern "C" fn ignore(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

impl TimerKick {
    /// Starts the timer thread for a vCPU whose system time 0 is `epoch`.
    pub(super) fn start(epoch: Instant) -> std::io::Result<TimerKick> {
        vmm_sys_util::signal::register_signal_handler(kick_signal(), ignore)
            .map_err(std::io::Error::from)?;
        let shared = Arc::new(Shared {
            deadline: AtomicU64::new(NONE),
            thread: AtomicU64::new(0),
            quit: AtomicBool::new(false),
            epoch,
        });
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("vcpu0-timer".into())
            .spawn(move || timer_thread(&s))?;
        Ok(TimerKick {
            shared,
            thread: Some(thread),
        })
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

fn timer_thread(s: &Shared) {
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

impl Vm {
    /// Expires the vCPU's due timers (raising VIRQ_TIMER) and tells the timer thread
    /// the next deadline. While the guest has not bound VIRQ_TIMER a timer firing
    /// changes nothing it can see, so the vCPU is not kicked for it (the timers still
    /// expire here, at the next exit).
    pub(super) fn service_timers(&mut self) {
        let vcpu = self.vcpu.caller.vcpu;
        let now = self.pv.system_time_ns();
        if self.pv.expire_timers(now) {
            self.platform
                .evtchn
                .raise_virq(&self.machine, vcpu, VIRQ_TIMER);
        }
        if let Some(k) = &self.timer {
            let bound = self.platform.evtchn.virq_bound(vcpu, VIRQ_TIMER);
            k.set_deadline(self.pv.next_deadline().filter(|_| bound));
        }
    }

    /// Moves console input into the guest's console ring (at kicks and while blocked:
    /// not on every hypercall's return; the guest's own console notifications and
    /// yields feed it too).
    fn feed_console(&mut self) {
        let mut console = super::SerialSink(self.serial.clone());
        self.platform.feed_console(&self.machine, &mut console);
    }

    /// After the timer thread kicked the vCPU out of the guest: services the timers and
    /// delivers a pending upcall where the guest was interrupted, if it was running its
    /// own code (not the hypervisor's stubs).
    pub(super) fn timer_kick(&mut self) -> Result<Option<GuestExit>, VmError> {
        self.feed_console();
        self.service_timers();
        let sregs = self.vcpu.sregs()?;
        let rip = self.vcpu.regs().rip;
        // Not inside the hypervisor's ring-0 stubs or its syscall stub (L4 slots 260
        // and 257).
        let hv = HV_BASE..HV_BASE + (1 << 39);
        let stub = platform::layout::M2P_ALIAS_VA..platform::layout::M2P_ALIAS_VA + (1 << 39);
        if sregs.cs.dpl != 3 || hv.contains(&rip) || stub.contains(&rip) {
            return Ok(None);
        }
        // An exception KVM has yet to inject (the kick can come between a guest fault
        // and its delivery to the ring-0 stub) must find the guest as it faulted.
        let events = self.vcpu.fd.get_vcpu_events()?;
        if events.exception.injected != 0
            || events.exception.pending != 0
            || events.interrupt.injected != 0
            || events.nmi.injected != 0
        {
            return Ok(None);
        }
        self.deliver_pending_upcall(false)
    }

    /// `SCHEDOP_poll`: waits until one of the polled ports is pending (with several
    /// ports, as in Xen, any event for the vCPU wakes it too), the poll's deadline
    /// passes, or the VM is stopped. Timers keep running meanwhile.
    pub(super) fn poll(&mut self, poll: &platform::dispatch::Poll) {
        let vcpu = self.vcpu.caller.vcpu;
        loop {
            self.feed_console();
            self.service_timers();
            let ev = &self.platform.evtchn;
            let polled = poll.ports.iter().any(|&p| ev.is_pending(&self.machine, p));
            let any = poll.ports.len() != 1 && ev.upcall_pending(&self.machine, vcpu);
            let now = self.pv.system_time_ns();
            if polled
                || any
                || poll.deadline.is_some_and(|d| now >= d)
                || self.stop.load(Ordering::Relaxed)
            {
                return;
            }
            let next = [self.pv.next_deadline(), poll.deadline]
                .into_iter()
                .flatten()
                .min();
            let wait = next.map_or(BLOCK_SLICE, |d| Duration::from_nanos(d.saturating_sub(now)));
            std::thread::park_timeout(wait.min(BLOCK_SLICE));
        }
    }

    /// `SCHEDOP_block`: waits until an event is pending for the vCPU (a timer firing
    /// raises one) or the VM is stopped.
    pub(super) fn block(&mut self) {
        let vcpu = self.vcpu.caller.vcpu;
        loop {
            self.feed_console();
            self.service_timers();
            if self.platform.evtchn.upcall_pending(&self.machine, vcpu)
                || self.stop.load(Ordering::Relaxed)
            {
                return;
            }
            let now = self.pv.system_time_ns();
            let wait = self
                .pv
                .next_deadline()
                .map_or(BLOCK_SLICE, |d| Duration::from_nanos(d.saturating_sub(now)));
            // Console input unparks the thread (see `runner`).
            std::thread::park_timeout(wait.min(BLOCK_SLICE));
        }
    }
}
