//! `pvmmu`: boots Xen PV guests on KVM with the pvmmu PV MMU.

use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::thread::JoinHandleExt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::{Parser, Subcommand};
use devices::SerialConsole;
use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use vmm::guests;
use vmm::vm::{GuestExit, RunReport, Vm, VmConfig};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

/// Exit codes of `pvmmu run`.
mod code {
    pub const POWEROFF: u8 = 0;
    pub const VMM_ERROR: u8 = 1;
    pub const CRASH: u8 = 2;
    pub const FAULT: u8 = 3;
    pub const OTHER_SHUTDOWN: u8 = 4;
    pub const INTERRUPTED: u8 = 130;
}

#[derive(Parser, Debug)]
#[command(
    name = "pvmmu",
    version,
    about = "Boot Xen PV guests on KVM, their page tables validated by the pvmmu library"
)]
struct Cli {
    /// Log level (error, warn, info, debug, trace).
    #[arg(long, global = true, default_value = "warn")]
    log_level: String,
    /// What to do (default: `run`, booting the demo guest).
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Boot a guest (the built-in demo guest by default). Exit code: 0 poweroff, 2 crash,
    /// 3 guest fault or triple fault, 4 other shutdown reasons, 1 VMM error, 130 SIGINT.
    Run {
        /// A Xen PV ELF image to boot instead of a built-in guest.
        file: Option<PathBuf>,
        /// A built-in guest (see `pvmmu guests`).
        #[arg(long, conflicts_with = "file")]
        guest: Option<String>,
        /// Guest memory in MiB.
        #[arg(long, default_value_t = 64)]
        memory: u64,
        /// Number of vCPUs.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1))]
        vcpus: u32,
        /// Guest command line (start_info.cmd_line).
        #[arg(long, default_value = "")]
        cmdline: String,
        /// Print counters (exits, hypercalls, entries validated/applied/rejected,
        /// flushes) on exit.
        #[arg(long)]
        stats: bool,
        /// Record every hypercall (and the guest's memory writes between them) into
        /// this trace file, for `pvmmu replay`.
        #[arg(long, value_name = "FILE")]
        trace: Option<PathBuf>,
    },
    /// Build a guest's domain (without running it) and print its initial page tables,
    /// ptdump style.
    Dump {
        /// A Xen PV ELF image instead of a built-in guest.
        file: Option<PathBuf>,
        /// A built-in guest (default: demo).
        #[arg(long, conflicts_with = "file")]
        guest: Option<String>,
        /// Guest memory in MiB.
        #[arg(long, default_value_t = 64)]
        memory: u64,
    },
    /// Replay a trace recorded with `run --trace` against the library, without KVM, and
    /// check that every result is identical. Exit code 0 if so, 1 otherwise.
    Replay {
        /// The trace file.
        file: PathBuf,
    },
    /// List the built-in guests.
    Guests,
    /// Measure guest launch and end-to-end mmu_update cost against the library's own.
    Bench {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Launches of the demo guest to time.
        #[arg(long, default_value_t = 5)]
        launches: usize,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    env_logger::Builder::new()
        .parse_filters(&cli.log_level)
        .init();
    let cmd = cli.cmd.unwrap_or(Cmd::Run {
        file: None,
        guest: None,
        memory: 64,
        vcpus: 1,
        cmdline: String::new(),
        stats: false,
        trace: None,
    });
    match cmd {
        Cmd::Bench { json, launches } => match vmm::bench::run(launches) {
            Ok(r) => {
                if json {
                    println!("{}", r.to_json());
                } else {
                    print!("{}", vmm::bench::table(&r));
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("pvmmu bench: {e}");
                ExitCode::from(code::VMM_ERROR)
            }
        },
        Cmd::Replay { file } => replay(&file),
        Cmd::Dump {
            file,
            guest,
            memory,
        } => dump(file, guest, memory),
        Cmd::Guests => {
            for g in guests::GUESTS {
                println!("{:<12} {}", g.name, g.about);
            }
            ExitCode::SUCCESS
        }
        Cmd::Run {
            file,
            guest,
            memory,
            vcpus,
            cmdline,
            stats,
            trace,
        } => {
            let mut iomem = true;
            let image = match (file, guest) {
                (Some(path), _) => match std::fs::read(&path) {
                    Ok(b) => b,
                    Err(e) => {
                        eprintln!("pvmmu: cannot read {}: {e}", path.display());
                        return ExitCode::from(code::VMM_ERROR);
                    }
                },
                (None, name) => {
                    let name = name.unwrap_or_else(|| "demo".into());
                    match guests::find(&name) {
                        Some(g) => {
                            iomem = g.iomem;
                            g.image.to_vec()
                        }
                        None => {
                            eprintln!("pvmmu: no built-in guest '{name}' (see `pvmmu guests`)");
                            return ExitCode::from(code::VMM_ERROR);
                        }
                    }
                }
            };
            let cfg = VmConfig {
                memory_mib: memory,
                vcpus,
                image,
                cmdline,
                console_out: Box::new(std::io::stdout()),
                iomem,
            };
            match run(cfg, trace.as_deref()) {
                Ok(report) => {
                    if stats {
                        print_stats(&report);
                    }
                    ExitCode::from(exit_code(&report))
                }
                Err(e) => {
                    eprintln!("pvmmu: {e}");
                    ExitCode::from(code::VMM_ERROR)
                }
            }
        }
    }
}

fn exit_code(r: &RunReport) -> u8 {
    if let Err(e) = &r.audit {
        eprintln!("pvmmu: PV MMU audit failed after the run: {e}");
        return code::VMM_ERROR;
    }
    match &r.exit {
        GuestExit::Shutdown(0) => code::POWEROFF,
        GuestExit::Shutdown(3) => {
            eprintln!("pvmmu: the guest crashed (shutdown reason crash)");
            code::CRASH
        }
        GuestExit::Shutdown(reason) => {
            eprintln!("pvmmu: the guest shut down with reason {reason}");
            code::OTHER_SHUTDOWN
        }
        GuestExit::Fault(f) => {
            eprintln!("pvmmu: {f}");
            code::FAULT
        }
        GuestExit::TripleFault { rip } => {
            eprintln!("pvmmu: the guest triple-faulted (RIP {rip:#x})");
            code::FAULT
        }
        GuestExit::ExitPort(c) => *c,
        GuestExit::Stopped => {
            eprintln!("pvmmu: stopped");
            code::INTERRUPTED
        }
    }
}

fn print_stats(r: &RunReport) {
    let s = &r.stats;
    eprintln!("--- stats ({:?} wall)", s.wall);
    eprintln!("vcpu exits: {}", s.exits);
    for (nr, n) in &s.hypercalls.by_number {
        let name = pvmmu_abi::Hypercall::try_from(*nr)
            .map_or_else(|_| format!("#{nr}"), |h| h.to_string());
        eprintln!("hypercall {name}: {n}");
    }
    eprintln!(
        "entries: {} validated, {} applied, {} rejected; ptwr writes emulated: {}",
        s.mmu.validated, s.mmu.applied, s.mmu.rejected, s.ptwr
    );
    eprintln!(
        "flushes: {} requested; host-side: {} mprotect runs, {} memslot cycles, {} needing nothing",
        s.flush.requests, s.flush.mprotects, s.flush.memslot_cycles, s.flush.nothing
    );
}

/// Feeds stdin into the console UART.
struct StdinReader {
    serial: Arc<Mutex<SerialConsole>>,
}

impl MutEventSubscriber for StdinReader {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let mut buf = [0u8; 256];
        match std::io::stdin().read(&mut buf) {
            Ok(n) if n > 0 => {
                if let Ok(mut s) = self.serial.lock() {
                    s.enqueue_input(&buf[..n]);
                }
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
    signals: std::os::fd::OwnedFd,
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
fn signal_fd() -> std::io::Result<std::os::fd::OwnedFd> {
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
        Ok(std::os::fd::OwnedFd::from_raw_fd(fd))
    }
}

extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

fn run(
    cfg: VmConfig,
    trace: Option<&std::path::Path>,
) -> Result<RunReport, Box<dyn std::error::Error>> {
    let kick = vmm_sys_util::signal::SIGRTMIN();
    vmm_sys_util::signal::register_signal_handler(kick, kick_handler)?;
    let signals = signal_fd()?;
    let mut vm = Vm::new(cfg)?;
    if let Some(path) = trace {
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
    let mut em = EventManager::<Arc<Mutex<dyn MutEventSubscriber + Send>>>::new()?;
    em.add_subscriber(Arc::new(Mutex::new(StdinReader { serial })));
    em.add_subscriber(Arc::new(Mutex::new(Watcher {
        vcpu_done,
        signals,
        done: done.clone(),
        stop: stop.clone(),
    })));
    while !done.load(Ordering::SeqCst) {
        em.run_with_timeout(50)?;
        if stop.load(Ordering::SeqCst) && !done.load(Ordering::SeqCst) {
            // Kick the vCPU out of KVM_RUN; repeat until it notices.
            // SAFETY: signals a live thread of this process with a handler installed.
            unsafe { libc::pthread_kill(handle.as_pthread_t(), kick) };
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    let report = handle.join().map_err(|_| "the vCPU thread panicked")??;
    Ok(report)
}

fn replay(file: &std::path::Path) -> ExitCode {
    let (header, records) = match vmm::trace::read_file(file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("pvmmu replay: {}: {e}", file.display());
            return ExitCode::from(code::VMM_ERROR);
        }
    };
    match vmm::trace::replay(&header, &records) {
        Ok(r) => {
            println!(
                "replayed {} records ({} hypercalls)",
                r.records, r.hypercalls
            );
            if let Some(d) = &r.divergence {
                eprintln!(
                    "pvmmu replay: first divergence at record {}: {}\n  recorded: {}\n  replayed: {}",
                    d.index, d.what, d.recorded, d.replayed
                );
                return ExitCode::from(code::VMM_ERROR);
            }
            if let Err(e) = &r.audit {
                eprintln!("pvmmu replay: audit after the replay failed: {e}");
                return ExitCode::from(code::VMM_ERROR);
            }
            println!("every result identical; audit clean");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("pvmmu replay: {e}");
            ExitCode::from(code::VMM_ERROR)
        }
    }
}

fn dump(file: Option<PathBuf>, guest: Option<String>, memory: u64) -> ExitCode {
    let image = match (file, guest) {
        (Some(path), _) => std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display())),
        (None, name) => {
            let name = name.unwrap_or_else(|| "demo".into());
            guests::find(&name)
                .map(|g| g.image.to_vec())
                .ok_or(format!("no built-in guest '{name}'"))
        }
    };
    let result = image.and_then(|image| {
        let parsed = vmm::elf::parse(&image).map_err(|e| e.to_string())?;
        if !(16..=4096).contains(&memory) {
            return Err(format!(
                "memory size {memory} MiB is not supported (16..=4096)"
            ));
        }
        let cfg = VmConfig {
            memory_mib: memory,
            vcpus: 1,
            image,
            cmdline: String::new(),
            console_out: Box::new(std::io::sink()),
            iomem: true,
        };
        let size = memory << 20;
        let mem = vm_memory::GuestMemoryMmap::<()>::from_ranges(&[(
            vm_memory::GuestAddress(0),
            size as usize,
        )])
        .map_err(|e| e.to_string())?;
        let (m, _hv, boot) = vmm::vm::build_domain(
            mem,
            size >> 12,
            &parsed,
            &cfg,
            pvmmu::RecordingFlush::default(),
        )
        .map_err(|e| e.to_string())?;
        let ranges = pvmmu::Walker::new(m.memory())
            .dump(boot.l4)
            .map_err(|e| e.to_string())?;
        println!(
            "L4 {} (entry {:#x}, start_info {:#x})",
            boot.l4, boot.entry, boot.start_info
        );
        for r in ranges {
            println!("{r}");
        }
        Ok(())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pvmmu dump: {e}");
            ExitCode::from(code::VMM_ERROR)
        }
    }
}
