//! Running a VM the way the binary does: the vCPU on its own thread, an
//! `event-manager` loop on the calling thread that feeds stdin to the console UART,
//! notices the vCPU thread ending, and turns SIGINT/SIGTERM (through a signalfd) into a
//! stop, kicking the vCPU out of KVM_RUN with a real-time signal until it notices.

use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::thread::JoinHandleExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use devices::SerialConsole;
use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use crate::vm::{RunReport, Vm, VmConfig, VmError};

/// Errors of a run outside the VM itself.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The VM failed.
    #[error(transparent)]
    Vm(#[from] VmError),
    /// Signals, event fds or the event loop.
    #[error("host: {0}")]
    Host(#[from] std::io::Error),
    /// The event manager.
    #[error("event loop: {0:?}")]
    EventLoop(event_manager::Error),
    /// The vCPU thread panicked.
    #[error("the vCPU thread panicked")]
    VcpuPanic,
}

/// Options of [`run`] beyond the VM's configuration.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Record a trace into this file.
    pub trace: Option<PathBuf>,
    /// How host-side invalidation is done.
    pub invalidation: crate::flush::InvalidationPolicy,
}

/// Feeds stdin into the console UART (whose input the PV console ring also takes), and
/// wakes the vCPU thread if it is blocked.
struct StdinReader {
    serial: Arc<Mutex<SerialConsole>>,
    vcpu: std::thread::Thread,
}

impl MutEventSubscriber for StdinReader {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let mut buf = [0u8; 256];
        match std::io::stdin().read(&mut buf) {
            Ok(n) if n > 0 => {
                if let Ok(mut s) = self.serial.lock() {
                    s.enqueue_input(&buf[..n]);
                }
                self.vcpu.unpark();
            }
            _ => {
                let _ = ops.remove(events);
            }
        }
    }
    fn init(&mut self, ops: &mut EventOps) {
        let _ = ops.add(Events::new_raw(0, EventSet::IN));
    }
}

/// Ends the loop when the vCPU thread is done, or on SIGINT/SIGTERM.
struct Watcher {
    vcpu_done: EventFd,
    signals: OwnedFd,
    done: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
}

impl MutEventSubscriber for Watcher {
    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        if events.fd() == self.vcpu_done.as_raw_fd() {
            let _ = self.vcpu_done.read();
            self.done.store(true, Ordering::SeqCst);
        } else {
            let mut info = [0u8; 128];
            // SAFETY: reads one signalfd_siginfo (128 bytes) into a buffer of that size.
            let _ = unsafe {
                libc::read(
                    self.signals.as_raw_fd(),
                    info.as_mut_ptr().cast(),
                    info.len(),
                )
            };
            self.stop.store(true, Ordering::SeqCst);
        }
    }
    fn init(&mut self, ops: &mut EventOps) {
        let _ = ops.add(Events::new(&self.vcpu_done, EventSet::IN));
        let _ = ops.add(Events::new_raw(self.signals.as_raw_fd(), EventSet::IN));
    }
}

/// Blocks SIGINT and SIGTERM (in this thread and the threads it spawns) and returns a
/// signalfd for them.
fn signal_fd() -> std::io::Result<OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: plain libc signal-set manipulation on a zeroed set; the fd returned by
    // signalfd is checked and owned.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        if libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let fd = libc::signalfd(-1, &set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(OwnedFd::from_raw_fd(fd))
    }
}

extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// Boots `cfg` and runs it to the end: the guest's console on the configured output,
/// stdin fed to it, SIGINT/SIGTERM stopping it (blocked for the calling thread and
/// delivered through a signalfd while the run lasts).
pub fn run(cfg: VmConfig, opts: &RunOptions) -> Result<RunReport, RunError> {
    let kick = vmm_sys_util::signal::SIGRTMIN();
    vmm_sys_util::signal::register_signal_handler(kick, kick_handler)
        .map_err(std::io::Error::from)?;
    let signals = signal_fd()?;
    let mut vm = Vm::new(cfg)?;
    vm.set_invalidation(opts.invalidation);
    if let Some(path) = &opts.trace {
        vm.start_trace(path)?;
    }
    let serial = vm.serial.clone();
    let stop = vm.stop_flag();
    let done = Arc::new(AtomicBool::new(false));
    let vcpu_done = EventFd::new(libc::EFD_NONBLOCK)?;
    let notify = vcpu_done.try_clone()?;
    let stop_vcpu = stop.clone();
    let handle = std::thread::Builder::new()
        .name("vcpu0".into())
        .spawn(move || {
            let r = vm.run_to_end(&stop_vcpu);
            let _ = notify.write(1);
            r
        })?;
    let mut em = EventManager::<Arc<Mutex<dyn MutEventSubscriber + Send>>>::new()
        .map_err(RunError::EventLoop)?;
    em.add_subscriber(Arc::new(Mutex::new(StdinReader {
        serial,
        vcpu: handle.thread().clone(),
    })));
    em.add_subscriber(Arc::new(Mutex::new(Watcher {
        vcpu_done,
        signals,
        done: done.clone(),
        stop: stop.clone(),
    })));
    while !done.load(Ordering::SeqCst) {
        em.run_with_timeout(50).map_err(RunError::EventLoop)?;
        if stop.load(Ordering::SeqCst) && !done.load(Ordering::SeqCst) {
            // Kick the vCPU out of KVM_RUN; repeat until it notices.
            // SAFETY: signals a live thread of this process with a handler installed.
            unsafe { libc::pthread_kill(handle.as_pthread_t(), kick) };
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    Ok(handle.join().map_err(|_| RunError::VcpuPanic)??)
}
