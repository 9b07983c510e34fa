//! One VM: KVM, the guest memory registered with it, the domain built by
//! [`platform::Domain`], the devices on their buses, one vCPU (state elsewhere is per
//! vCPU already), and the run loop that routes every exit:
//!
//! ```text
//! KVM_RUN exit --+-- out to the hypercall port --> hypercall(): platform::dispatch
//!                |                                  -> pvmmu::Machine::hypercall
//!                |                                  -> entry writes, TlbFlush (KvmFlush)
//!                |                                  -> RAX, CR3 if a root changed
//!                +-- out to the fault port -------> exception(): fault frame,
//!                |                                  emulate::try_ptwr, else a report
//!                +-- other port I/O, MMIO --------> the device buses
//!                +-- shutdown ---------------------> triple fault
//! ```
//!
//! Event delivery to the guest (upcalls, trap bounces) enters the same loop before each
//! KVM_RUN.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use devices::mmio_test::{MMIO_TEST_BASE, MMIO_TEST_SIZE};
use devices::serial::{COM1_LEN, COM1_PORT};
use devices::{ExitPort, MmioTestDevice, SerialConsole};
use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::{Kvm, VcpuExit, VmFd};
use log::{error, warn};
use platform::builder::BootInfo;
use platform::cpuid::CpuidPolicy;
use platform::dispatch::{Console, DomainState, HypercallStats};
use platform::domain::{DOMID, Domain, DomainError, DomainSpec};
use platform::hvarea::HvArea;
use platform::layout::{FAULT_PORT, HYPERCALL_PORT, PAGE, SYSCALL_PORT};
use platform::pv::{Crash, PvVcpu};
use platform::trace::TraceHeader;
use pvmmu::{AuditError, Caller, MachineError};
use vm_memory::{GuestAddress, GuestMemoryBackend};

use crate::bus::{BusOverlap, MmioBus, PioBus};
use crate::fault::FaultReport;
use crate::flush::{FlushStats, KvmFlush, Vmm};
use crate::tracer::{RamSlot, TraceError, Tracer};
use crate::vcpu::{Vcpu, VcpuError};

mod descriptors;
mod exception;
mod hypercall;
mod timer;

/// The RAM memslot.
const RAM_SLOT: u32 = 0;

/// Errors of the VMM itself (not of the guest).
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// /dev/kvm could not be opened.
    #[error("cannot open /dev/kvm: {0}")]
    NoKvm(kvm_ioctls::Error),
    /// KVM refused something.
    #[error("KVM: {0}")]
    Kvm(#[from] kvm_ioctls::Error),
    /// The domain could not be built (bad image, memory size, ...).
    #[error(transparent)]
    Domain(#[from] DomainError),
    /// The vCPU could not be set up.
    #[error("vCPU: {0}")]
    Vcpu(#[from] VcpuError),
    /// The host-side invalidation could not be set up.
    #[error("invalidation memslot: {0}")]
    Flush(std::io::Error),
    /// Two devices claim the same addresses.
    #[error("{0}")]
    Bus(#[from] BusOverlap),
    /// Guest memory the VMM must read (an exception frame) is not there.
    #[error("guest memory: {0}")]
    GuestMemory(#[from] vm_memory::GuestMemoryError),
    /// Recording the trace failed.
    #[error("trace: {0}")]
    Trace(#[from] TraceError),
    /// The library refused the VMM (an embedder error).
    #[error("pvmmu: {0}")]
    Machine(#[from] MachineError),
    /// The guest executed HLT, which a PV vCPU never reaches at CPL3.
    #[error("the guest executed HLT")]
    Hlt,
    /// KVM could not enter the guest.
    #[error("VM entry failed: reason {reason:#x} on cpu {cpu}")]
    FailEntry {
        /// Hardware reason.
        reason: u64,
        /// Host CPU.
        cpu: u32,
    },
    /// The timer thread could not be started.
    #[error("timer thread: {0}")]
    Timer(std::io::Error),
    /// An exit the VMM has no route for.
    #[error("unexpected vCPU exit: {0}")]
    UnhandledExit(String),
}

/// How a guest run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuestExit {
    /// `SCHEDOP_shutdown` with this reason.
    Shutdown(u32),
    /// An exception the VMM does not handle.
    Fault(Box<FaultReport>),
    /// A triple fault (KVM shutdown exit).
    TripleFault {
        /// RIP at the time.
        rip: u64,
    },
    /// The guest wrote to the exit port.
    ExitPort(u8),
    /// The domain crashed, as Xen crashes it (a bounce or `iret` that cannot be done).
    Crash(Crash),
    /// Stopped from outside (signal).
    Stopped,
}

/// Configuration of one run.
pub struct VmConfig {
    /// The domain.
    pub domain: DomainSpec,
    /// Where the console goes.
    pub console_out: Box<dyn Write + Send>,
}

impl VmConfig {
    /// A run of `domain` with the console on stdout.
    pub fn new(domain: DomainSpec) -> VmConfig {
        VmConfig {
            domain,
            console_out: Box::new(std::io::stdout()),
        }
    }
}

impl std::fmt::Debug for VmConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmConfig")
            .field("memory_mib", &self.domain.memory_mib)
            .field("vcpus", &self.domain.vcpus)
            .field("image_len", &self.domain.image.len())
            .finish()
    }
}

/// Counters of one run.
#[derive(Debug, Clone, Default)]
pub struct RunStats {
    /// vCPU exits.
    pub exits: u64,
    /// vCPU exits by reason: `hypercall`, `syscall hypercall`, `exception #GP` (and the
    /// other vectors), `port I/O`, `MMIO`, `kick` (timer or stop signal), `other`.
    pub exit_reasons: std::collections::BTreeMap<String, u64>,
    /// Hypercalls by number.
    pub hypercalls: HypercallStats,
    /// Library counters (validated / applied / rejected / flushes).
    pub mmu: pvmmu::Stats,
    /// Host-side invalidations by kind.
    pub flush: FlushStats,
    /// Writes emulated for writable page tables.
    pub ptwr: u64,
    /// Time from VM creation to the end of the run.
    pub wall: Duration,
}

/// What the audit at the end of a run found wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuditFailure {
    /// The PV MMU's state after the run.
    #[error("after the run: {0}")]
    Run(AuditError),
    /// Teardown could not return every frame.
    #[error("teardown: {0}")]
    Teardown(MachineError),
    /// The PV MMU's state after teardown.
    #[error("after teardown: {0}")]
    AfterTeardown(AuditError),
}

/// The result of a run.
#[derive(Debug)]
pub struct RunReport {
    /// How the guest ended.
    pub exit: GuestExit,
    /// Counters.
    pub stats: RunStats,
    /// The domain audit after the run, and after teardown (every frame returned).
    pub audit: Result<(), AuditFailure>,
    /// Hypercall timings, if recorded.
    pub timings: Vec<HypercallTiming>,
}

/// When one hypercall exit arrived and how long serving it took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HypercallTiming {
    /// Hypercall number.
    pub nr: u64,
    /// Its second argument (the count of a batched call).
    pub count: u64,
    /// Arrival, from VM creation.
    pub at: Duration,
    /// Time spent serving it.
    pub served: Duration,
    /// Of which host-side invalidation.
    pub invalidation: Duration,
}

/// The console of `console_io`: the serial UART.
struct SerialSink(Arc<Mutex<SerialConsole>>);

impl Console for SerialSink {
    fn write(&mut self, bytes: &[u8]) {
        if let Ok(mut s) = self.0.lock() {
            s.transmit(bytes);
        }
    }
    fn read(&mut self, buf: &mut [u8]) -> usize {
        self.0.lock().map(|mut s| s.receive(buf)).unwrap_or(0)
    }
}

/// A prepared VM, ready to run its first vCPU.
pub struct Vm {
    vm: Arc<VmFd>,
    ram: RamSlot,
    header: TraceHeader,
    tracer: Option<Tracer>,
    vcpu: Vcpu,
    pv: PvVcpu,
    platform: DomainState,
    cpuid: CpuidPolicy,
    machine: Vmm,
    hv: HvArea,
    boot: BootInfo,
    /// The console UART (shared with the stdin reader).
    pub serial: Arc<Mutex<SerialConsole>>,
    exit_port: Arc<Mutex<ExitPort>>,
    pio: PioBus,
    mmio: MmioBus,
    started: Instant,
    stats: RunStats,
    /// Hypercall timings, when recording (for `pvmmu bench`).
    pub timings: Option<Vec<HypercallTiming>>,
    /// Set from outside to stop the guest; also stops long batched hypercalls.
    stop: Arc<AtomicBool>,
    /// Whether `syscall` enters ring 0 on this host (found at the first one).
    syscall_ring0: Option<bool>,
    /// The last page fault retried as spurious (RIP, CR2): a second one in a row goes
    /// to the guest.
    last_spurious: Option<(u64, u64)>,
    /// The LDT descriptor words loaded into the vCPU's LDT register (zero: none).
    ldt_loaded: (u64, u64),
    /// Whether the vCPU may hold code and stack selectors other than Xen's flat pair.
    nonflat_segments: bool,
    /// The thread that kicks the vCPU at its timers' deadlines.
    timer: Option<timer::TimerKick>,
    /// Xen's virtual MCA state: MCG_STATUS, then STATUS/ADDR/MISC of the two banks.
    vmce: [u64; 7],
}

/// How a hypercall reached the VMM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Entry {
    /// The hypercall page's `out`.
    Page,
    /// `syscall`, through the syscall stub.
    Syscall,
}

impl std::fmt::Debug for Vm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vm")
            .field("boot", &self.boot)
            .finish_non_exhaustive()
    }
}

impl Vm {
    /// Creates the VM and builds the guest.
    pub fn new(cfg: VmConfig) -> Result<Vm, VmError> {
        let started = Instant::now();
        let spec = cfg.domain;
        spec.check()?;
        let kvm = Kvm::new().map_err(VmError::NoKvm)?;
        let vm = Arc::new(kvm.create_vm()?);
        let mem = spec.guest_memory()?;
        let host = mem.get_host_address(GuestAddress(0))? as u64;
        let ram = RamSlot {
            slot: RAM_SLOT,
            size: spec.frames() * PAGE,
            host,
        };
        let region = kvm_userspace_memory_region {
            slot: ram.slot,
            flags: 0,
            guest_phys_addr: 0,
            memory_size: ram.size,
            userspace_addr: ram.host,
        };
        // SAFETY: `host` maps `ram.size` bytes of guest RAM owned by `mem`, which the
        // machine keeps alive as long as the VM.
        unsafe { vm.set_user_memory_region(region)? };
        let flusher = KvmFlush::new(vm.clone(), host, spec.frames()).map_err(VmError::Flush)?;
        let domain = Domain::build(&spec, mem, flusher)?;
        let pv = domain.pv_vcpu(0);
        let platform = DomainState::new(&domain.boot);
        let Domain { machine, hv, boot } = domain;
        let vcpu = Vcpu::new(&kvm, &vm, Caller::new(DOMID, 0), &boot)?;
        // Time: the wallclock at system time 0, and vCPU 0's pvclock.
        let mut pv = pv;
        let unix_ns = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        PvVcpu::set_wallclock(&machine, boot.shared_info, unix_ns);
        let (tsc, tsc_khz) = vcpu.tsc()?;
        pv.update_time(&machine, tsc, tsc_khz);
        let cpuid = CpuidPolicy::new(
            &crate::vcpu::host_cpuid(&kvm)?,
            pvmmu_abi::version::XEN_VERSION_VALUE,
            spec.frames(),
        );
        let serial = Arc::new(Mutex::new(SerialConsole::new(cfg.console_out)));
        let exit_port = Arc::new(Mutex::new(ExitPort::default()));
        let mut pio = PioBus::default();
        pio.insert(COM1_PORT, COM1_LEN, serial.clone())?;
        pio.insert(devices::exit::EXIT_PORT, 1, exit_port.clone())?;
        let mut mmio = MmioBus::default();
        let test_device = Arc::new(Mutex::new(MmioTestDevice::default()));
        mmio.insert(MMIO_TEST_BASE, MMIO_TEST_SIZE, test_device)?;
        let mut v = Vm {
            vm,
            ram,
            header: TraceHeader::new(&spec),
            tracer: None,
            vcpu,
            pv,
            platform,
            cpuid,
            machine,
            hv,
            boot,
            serial,
            exit_port,
            pio,
            mmio,
            started,
            stats: RunStats::default(),
            timings: None,
            stop: Arc::new(AtomicBool::new(false)),
            syscall_ring0: None,
            last_spurious: None,
            ldt_loaded: (0, 0),
            nonflat_segments: false,
            timer: None,
            vmce: [0; 7],
        };
        v.machine.set_interrupt(Some(v.stop.clone()));
        // The builder's NEW_BASEPTR is already in CR3.
        let _ = v.machine.take_root_change(v.vcpu.caller);
        Ok(v)
    }

    /// Starts recording a hypercall trace into `path` (see [`platform::trace`]): turns on
    /// KVM's dirty log for guest RAM so the guest's own writes are captured too, and
    /// the library's recording of the batch entries it reads.
    pub fn start_trace(&mut self, path: &std::path::Path) -> Result<(), VmError> {
        self.tracer = Some(Tracer::start(
            self.vm.clone(),
            self.ram,
            path,
            &self.header,
        )?);
        self.machine.record_reads(true);
        Ok(())
    }

    /// The PV MMU (for tests).
    pub fn machine(&self) -> &Vmm {
        &self.machine
    }

    /// The root the vCPU runs on: the kernel's in guest kernel mode, the user's in user
    /// mode.
    fn current_root(&self) -> Option<pvmmu::Mfn> {
        let caller = self.vcpu.caller;
        if self.pv.in_kernel(&self.machine) {
            self.machine.kernel_root(caller)
        } else {
            self.machine.user_root(caller)
        }
    }

    /// The flag that stops this VM: setting it (and kicking the vCPU thread out of
    /// KVM_RUN) ends `run` with [`GuestExit::Stopped`], even in the middle of a long
    /// batched hypercall.
    pub fn stop_flag(&self) -> Arc<AtomicBool> {
        self.stop.clone()
    }

    /// Runs the vCPU until the guest shuts down, faults, or `stop` or the VM's own stop
    /// flag is set. Every exit is routed here.
    pub fn run(&mut self, stop: &AtomicBool) -> Result<GuestExit, VmError> {
        if self.timer.is_none() {
            self.timer = Some(timer::TimerKick::start(self.pv.epoch()).map_err(VmError::Timer)?);
        }
        if let Some(k) = &self.timer {
            k.attach();
        }
        self.service_timers();
        loop {
            if stop.load(Ordering::Relaxed) || self.stop.load(Ordering::Relaxed) {
                return Ok(GuestExit::Stopped);
            }
            self.stats.exits += 1;
            let ran = self.vcpu.fd.run();
            let reason = match &ran {
                Ok(VcpuExit::IoOut(HYPERCALL_PORT, _)) => "hypercall",
                Ok(VcpuExit::IoOut(SYSCALL_PORT, _)) => "syscall hypercall",
                Ok(VcpuExit::IoOut(FAULT_PORT, _)) => "exception",
                Ok(VcpuExit::IoOut(..) | VcpuExit::IoIn(..)) => "port I/O",
                Ok(VcpuExit::MmioRead(..) | VcpuExit::MmioWrite(..)) => "MMIO",
                Ok(VcpuExit::Intr) => "kick",
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => "kick",
                _ => "other",
            };
            if reason != "exception" {
                *self.stats.exit_reasons.entry(reason.into()).or_default() += 1;
            }
            let exit = match ran {
                Ok(VcpuExit::IoOut(HYPERCALL_PORT, _)) => self.hypercall(Entry::Page)?,
                Ok(VcpuExit::IoOut(SYSCALL_PORT, _)) => self.hypercall(Entry::Syscall)?,
                Ok(VcpuExit::IoOut(FAULT_PORT, _)) => self.exception()?,
                Ok(VcpuExit::IoOut(port, data)) => {
                    self.pio.write(port, data);
                    self.exit_port
                        .lock()
                        .ok()
                        .and_then(|p| p.code())
                        .map(GuestExit::ExitPort)
                }
                Ok(VcpuExit::IoIn(port, data)) => {
                    self.pio.read(port, data);
                    None
                }
                Ok(VcpuExit::MmioRead(addr, data)) => {
                    self.mmio.read(addr, data);
                    None
                }
                Ok(VcpuExit::MmioWrite(addr, data)) => {
                    self.mmio.write(addr, data);
                    None
                }
                Ok(VcpuExit::Shutdown) => {
                    let rip = self.vcpu.fd.get_regs().map(|r| r.rip).unwrap_or(0);
                    Some(GuestExit::TripleFault { rip })
                }
                Ok(VcpuExit::Hlt) => return Err(VmError::Hlt),
                Ok(VcpuExit::FailEntry(reason, cpu)) => {
                    return Err(VmError::FailEntry { reason, cpu });
                }
                Ok(VcpuExit::Intr) => self.timer_kick()?,
                // The guest ran something the host must emulate and cannot: the
                // guest's doing, so the domain ends (crashed) rather than the VMM.
                Ok(VcpuExit::InternalError) => {
                    let suberror = self.internal_suberror();
                    let rip = self.vcpu.fd.get_regs().map(|r| r.rip).unwrap_or(0);
                    warn!("KVM internal error {suberror} at {rip:#x}: crashing the domain");
                    Some(GuestExit::Crash(Crash::Unemulated { rip, suberror }))
                }
                Ok(other) => return Err(VmError::UnhandledExit(format!("{other:?}"))),
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                    self.timer_kick()?
                }
                Err(e) => return Err(e.into()),
            };
            if let Some(exit) = exit {
                return Ok(exit);
            }
        }
    }

    /// Audits the domain, tears it down and audits what is left.
    fn audit_and_teardown(&mut self) -> Result<(), AuditFailure> {
        self.machine
            .audit()
            .map_err(AuditFailure::Run)
            .and_then(|()| {
                self.machine
                    .destroy_domain(DOMID)
                    .map_err(AuditFailure::Teardown)
            })
            .and_then(|()| self.machine.audit().map_err(AuditFailure::AfterTeardown))
    }

    /// Chooses how host-side invalidation is done (default: by need).
    pub fn set_invalidation(&mut self, policy: crate::flush::InvalidationPolicy) {
        self.machine.flusher().policy = policy;
    }

    /// KVM's `internal.suberror` after an internal-error exit.
    fn internal_suberror(&mut self) -> u32 {
        let run = self.vcpu.fd.get_kvm_run();
        // SAFETY: the last exit was KVM_EXIT_INTERNAL_ERROR, for which KVM fills the
        // `internal` member of the exit union; it is plain integers.
        unsafe { run.__bindgen_anon_1.internal.suberror }
    }

    /// Runs to the end and tears the domain down, auditing before and after. The trace
    /// is ended and the domain audited and torn down however the run ends, a VMM error
    /// included (the error is returned after, with the audit's verdict logged).
    pub fn run_to_end(mut self, stop: &AtomicBool) -> Result<RunReport, VmError> {
        let ran = self.run(stop);
        let traced = self.tracer.take().map_or(Ok(()), |t| t.finish());
        let exit = match ran {
            Ok(exit) => exit,
            Err(e) => {
                let audit = self.audit_and_teardown();
                error!("the run failed ({e}); audit after it: {audit:?}");
                return Err(e);
            }
        };
        traced?;
        self.stats.mmu = self.machine.stats();
        let audit = self.audit_and_teardown();
        self.stats.flush = self.machine.flusher().stats;
        self.stats.hypercalls = self.platform.stats.clone();
        self.stats.wall = self.started.elapsed();
        if let Err(e) = &audit {
            warn!("audit: {e}");
        }
        Ok(RunReport {
            exit,
            stats: self.stats,
            audit,
            timings: self.timings.unwrap_or_default(),
        })
    }
}
