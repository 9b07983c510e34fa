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
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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
use pvmmu::{AuditError, MachineError, SharedMachine};
use vm_memory::GuestMemoryMmap;
use vm_memory::{GuestAddress, GuestMemoryBackend};

use crate::bus::{BusOverlap, MmioBus, PioBus};
use crate::fault::FaultReport;
use crate::flush::{FlushStats, KvmFlush, Vmm};
use crate::tracer::{RamSlot, TraceError, Tracer};
use crate::vcpu::{Vcpu, VcpuError};

mod descriptors;
mod exception;
mod hypercall;
mod smp;
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
    /// Batched hypercalls stopped at a preemption point and re-issued by the guest.
    pub continuations: u64,
    /// `mmu_update` exits served wholly without the domain lock, concurrently with
    /// other vCPUs' (counted in `exits` and the hypercall counts too).
    pub concurrent_exits: u64,
    /// `mmu_update` calls served without the domain lock that began while another
    /// vCPU's was being served so.
    pub concurrent_overlaps: u64,
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

/// The VM's vCPUs share this, behind one lock (the domain lock: exits of different
/// vCPUs are served one at a time, while the vCPUs run guest code in parallel). The
/// PV MMU is beside it ([`Shared::machine`]): an exit holding the domain lock holds
/// the whole machine too, and `mmu_update` exits are served without either as far as
/// they can run concurrently (see `hypercall::concurrent_mmu_update`).
pub(crate) struct Core {
    platform: DomainState,
    hv: HvArea,
    boot: BootInfo,
    cpuid: CpuidPolicy,
    tracer: Option<Tracer>,
    stats: RunStats,
    timings: Option<Vec<HypercallTiming>>,
}

/// What every vCPU thread of a VM reaches without the domain lock.
pub(crate) struct Shared {
    kvm: Kvm,
    vm: Arc<VmFd>,
    ram: RamSlot,
    core: Mutex<Core>,
    /// The PV MMU. Locked after `core` (never before), or alone, shared, by an
    /// `mmu_update` exit served concurrently.
    machine: SharedMachine<GuestMemoryMmap<()>, KvmFlush>,
    /// `mmu_update` exits served wholly without the domain lock (counted into the
    /// run's statistics at its end).
    concurrent_exits: AtomicU64,
    /// `mmu_update` calls being served without the domain lock right now, and how many
    /// began while another was (the evidence that they really overlap).
    in_flight: std::sync::atomic::AtomicU32,
    concurrent_overlaps: AtomicU64,
    /// Timings of the hypercalls served without the domain lock, when recording.
    concurrent_timings: Mutex<Option<Vec<HypercallTiming>>>,
    serial: Arc<Mutex<SerialConsole>>,
    exit_port: Arc<Mutex<ExitPort>>,
    pio: PioBus,
    mmio: MmioBus,
    started: Instant,
    header: TraceHeader,
    /// Set from outside to stop the guest; also stops long batched hypercalls.
    stop: Arc<AtomicBool>,
    /// How the domain ended, once one vCPU ended it (the first one wins).
    end: Mutex<Option<Result<GuestExit, VmError>>>,
    /// Set together with `end`: every vCPU thread leaves.
    ended: AtomicBool,
    /// Each started vCPU's thread, to kick it out of KVM_RUN or a wait.
    threads: Mutex<Vec<Option<VcpuThread>>>,
}

/// The whole machine, held by an exit.
type MachineGuard<'a> = pvmmu::MachineGuard<'a, GuestMemoryMmap<()>, KvmFlush>;

/// A started vCPU thread.
#[derive(Default)]
struct VcpuThread {
    /// The thread, to wake it from a wait.
    thread: Option<std::thread::Thread>,
    /// Its timer thread, which kicks it out of KVM_RUN (until it has seen the kick).
    kicker: Option<timer::Kicker>,
    /// Its end, for the secondary vCPUs (vCPU 0 runs on the caller's thread).
    join: Option<std::thread::JoinHandle<()>>,
}

impl Shared {
    /// Locks the domain. A vCPU thread that panicked while holding it has ended the
    /// run already; the others carry on to their own end.
    fn lock(&self) -> std::sync::MutexGuard<'_, Core> {
        self.core
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Locks the domain, then the whole machine (the one order both are taken in).
    fn lock_both(&self) -> (std::sync::MutexGuard<'_, Core>, MachineGuard<'_>) {
        let core = self.lock();
        (core, self.machine.lock())
    }

    /// Ends the domain with `how`, unless it has ended already, and kicks every vCPU
    /// so that it notices.
    fn end(&self, how: Result<GuestExit, VmError>) {
        if let Ok(mut e) = self.end.lock()
            && e.is_none()
        {
            *e = Some(how);
        }
        self.ended.store(true, Ordering::SeqCst);
        self.kick(u64::MAX);
    }

    /// Kicks the vCPUs in `mask` (bit `v`: vCPU `v`) out of KVM_RUN, or out of a wait
    /// (Xen's `vcpu_kick`): the vCPU's timer thread signals it until it has taken an
    /// exit, so a kick that arrives just before KVM_RUN is not lost.
    fn kick(&self, mask: u64) {
        let Ok(threads) = self.threads.lock() else {
            return;
        };
        for (v, t) in threads.iter().enumerate() {
            if let Some(t) = t
                && v < 64
                && mask & (1 << v) != 0
            {
                if let Some(k) = &t.kicker {
                    k.kick();
                }
                if let Some(t) = &t.thread {
                    t.unpark();
                }
            }
        }
    }
}

/// One vCPU, as its own thread holds it.
pub(crate) struct Cpu {
    vcpu: Vcpu,
    pv: PvVcpu,
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
    /// What the vCPU waits for after the exit being served (outside the domain lock).
    wait: Option<Wait>,
    /// EFAULT returns of KVM_RUN in a row.
    fault_retries: u32,
    /// What an `mmu_update` exit served without the domain lock left to the locked
    /// path, and when the exit arrived.
    handoff: Option<(Instant, hypercall::Handoff)>,
}

/// What a vCPU waits for between two runs, and whether it exited on the hypercall
/// page's `out` and continues after it (see [`Exit::after_out`]).
#[derive(Debug, Clone)]
pub(crate) enum Wait {
    /// `SCHEDOP_block`: an event.
    Block(bool),
    /// `SCHEDOP_poll`.
    Poll(platform::dispatch::Poll, bool),
}

/// One exit being served: the vCPU that took it, with the domain and its machine
/// locked.
pub(crate) struct Exit<'a> {
    s: &'a Shared,
    c: &'a mut Core,
    m: &'a mut Vmm,
    cpu: &'a mut Cpu,
}

/// A prepared VM, ready to run its first vCPU.
pub struct Vm {
    shared: Arc<Shared>,
    boot_cpu: Cpu,
    /// The console UART (shared with the stdin reader).
    pub serial: Arc<Mutex<SerialConsole>>,
    /// Hypercall timings, when recording (for `pvmmu bench`).
    pub timings: Option<Vec<HypercallTiming>>,
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
            .field("boot", &self.shared.lock().boot)
            .finish_non_exhaustive()
    }
}

impl Cpu {
    /// vCPU `v` with PV state `pv`, its KVM vCPU created in long mode at CPL3.
    fn new(kvm: &Kvm, vm: &VmFd, boot: &BootInfo, pv: PvVcpu) -> Result<Cpu, VmError> {
        let vcpu = Vcpu::new(kvm, vm, pv.caller(), boot)?;
        Ok(Cpu {
            vcpu,
            pv,
            syscall_ring0: None,
            last_spurious: None,
            ldt_loaded: (0, 0),
            nonflat_segments: false,
            timer: None,
            vmce: [0; 7],
            wait: None,
            fault_retries: 0,
            handoff: None,
        })
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
        let platform = DomainState::new(&domain.boot, spec.vcpus);
        let Domain { machine, hv, boot } = domain;
        let mut cpu = Cpu::new(&kvm, &vm, &boot, pv)?;
        // Time: the wallclock at system time 0, and vCPU 0's pvclock.
        let unix_ns = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        PvVcpu::set_wallclock(&machine, boot.shared_info, unix_ns);
        let (tsc, tsc_khz) = cpu.vcpu.tsc()?;
        cpu.pv.update_time(&machine, tsc, tsc_khz);
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
        let stop = Arc::new(AtomicBool::new(false));
        let mut machine = machine;
        machine.set_interrupt(Some(stop.clone()));
        // The builder's NEW_BASEPTR is already in CR3.
        let _ = machine.take_root_change(cpu.vcpu.caller);
        let core = Core {
            platform,
            hv,
            boot,
            cpuid,
            tracer: None,
            stats: RunStats::default(),
            timings: None,
        };
        let vcpus = spec.vcpus as usize;
        let shared = Arc::new(Shared {
            kvm,
            vm,
            ram,
            core: Mutex::new(core),
            machine: SharedMachine::new(machine),
            concurrent_exits: AtomicU64::new(0),
            in_flight: std::sync::atomic::AtomicU32::new(0),
            concurrent_overlaps: AtomicU64::new(0),
            concurrent_timings: Mutex::new(None),
            serial: serial.clone(),
            exit_port,
            pio,
            mmio,
            started,
            header: TraceHeader::new(&spec),
            stop,
            end: Mutex::new(None),
            ended: AtomicBool::new(false),
            threads: Mutex::new((0..vcpus).map(|_| None).collect()),
        });
        Ok(Vm {
            shared,
            boot_cpu: cpu,
            serial,
            timings: None,
        })
    }

    /// Starts recording a hypercall trace into `path` (see [`platform::trace`]): turns on
    /// KVM's dirty log for guest RAM so the guest's own writes are captured too, and
    /// the library's recording of the batch entries it reads.
    pub fn start_trace(&mut self, path: &std::path::Path) -> Result<(), VmError> {
        let (mut core, mut m) = self.shared.lock_both();
        core.tracer = Some(Tracer::start(
            self.shared.vm.clone(),
            self.shared.ram,
            path,
            &self.shared.header,
        )?);
        m.record_reads(true);
        Ok(())
    }

    /// The flag that stops this VM: setting it (and kicking the vCPU threads out of
    /// KVM_RUN) ends `run` with [`GuestExit::Stopped`], even in the middle of a long
    /// batched hypercall.
    pub fn stop_flag(&self) -> Arc<AtomicBool> {
        self.shared.stop.clone()
    }

    /// Chooses how host-side invalidation is done (default: by need).
    pub fn set_invalidation(&mut self, policy: crate::flush::InvalidationPolicy) {
        self.shared.machine.lock().flusher().policy = policy;
    }

    /// Runs the guest until it shuts down, faults or crashes, or `stop` or the VM's own
    /// stop flag is set: vCPU 0 on the calling thread, every other vCPU the guest
    /// brings up on a thread of its own. Returns once every vCPU thread has ended.
    fn run(&mut self, stop: &AtomicBool) -> Result<GuestExit, VmError> {
        if let Some(t) = self.timings.take() {
            self.shared.lock().timings = Some(t);
            if let Ok(mut c) = self.shared.concurrent_timings.lock() {
                *c = Some(Vec::new());
            }
        }
        let shared = self.shared.clone();
        let r = run_vcpu(&shared, &mut self.boot_cpu, stop);
        if !shared.ended.load(Ordering::SeqCst) {
            shared.end(r);
        }
        // The other vCPUs leave at the kick `end` gave them.
        let joins: Vec<_> = shared
            .threads
            .lock()
            .map(|mut t| {
                t.iter_mut()
                    .filter_map(|t| t.as_mut()?.join.take())
                    .collect()
            })
            .unwrap_or_default();
        for j in joins {
            let _ = j.join();
        }
        let how = shared.end.lock().ok().and_then(|mut e| e.take());
        how.unwrap_or(Ok(GuestExit::Stopped))
    }

    /// Audits the domain, tears it down and audits what is left.
    fn audit_and_teardown(m: &mut Vmm) -> Result<(), AuditFailure> {
        m.audit()
            .map_err(AuditFailure::Run)
            .and_then(|()| m.destroy_domain(DOMID).map_err(AuditFailure::Teardown))
            .and_then(|()| m.audit().map_err(AuditFailure::AfterTeardown))
    }

    /// Runs to the end and tears the domain down, auditing before and after. The trace
    /// is ended and the domain audited and torn down however the run ends, a VMM error
    /// included (the error is returned after, with the audit's verdict logged).
    pub fn run_to_end(mut self, stop: &AtomicBool) -> Result<RunReport, VmError> {
        let ran = self.run(stop);
        let (mut core, mut m) = self.shared.lock_both();
        let traced = core.tracer.take().map_or(Ok(()), |t| t.finish());
        let exit = match ran {
            Ok(exit) => exit,
            Err(e) => {
                let audit = Vm::audit_and_teardown(&mut m);
                error!("the run failed ({e}); audit after it: {audit:?}");
                return Err(e);
            }
        };
        traced?;
        core.stats.mmu = m.stats();
        let audit = Vm::audit_and_teardown(&mut m);
        core.stats.flush = m.flusher().stats;
        core.stats.hypercalls = core.platform.stats.clone();
        // The exits served without the domain lock.
        let concurrent = self.shared.concurrent_exits.load(Ordering::Relaxed);
        core.stats.concurrent_exits = concurrent;
        core.stats.concurrent_overlaps = self.shared.concurrent_overlaps.load(Ordering::Relaxed);
        if concurrent > 0 {
            core.stats.exits += concurrent;
            *core
                .stats
                .exit_reasons
                .entry("hypercall".into())
                .or_default() += concurrent;
            *core
                .stats
                .hypercalls
                .by_number
                .entry(pvmmu_abi::hypercall::HYPERVISOR_mmu_update)
                .or_default() += concurrent;
        }
        let mut timings = core.timings.take().unwrap_or_default();
        if let Some(more) = self
            .shared
            .concurrent_timings
            .lock()
            .ok()
            .and_then(|mut t| t.take())
        {
            timings.extend(more);
            timings.sort_by_key(|t| t.at);
        }
        core.stats.wall = self.shared.started.elapsed();
        if let Err(e) = &audit {
            warn!("audit: {e}");
        }
        Ok(RunReport {
            exit,
            stats: std::mem::take(&mut core.stats),
            audit,
            timings,
        })
    }
}

/// Records the calling thread as vCPU `v`'s, kicked through `kicker`.
fn register_thread(shared: &Shared, v: u32, kicker: timer::Kicker) {
    if let Ok(mut t) = shared.threads.lock()
        && let Some(slot) = t.get_mut(v as usize)
    {
        let slot = slot.get_or_insert_with(VcpuThread::default);
        slot.thread = Some(std::thread::current());
        slot.kicker = Some(kicker);
    }
}

/// Starts the threads of the vCPUs brought up since the last call.
fn start_vcpus(shared: &Arc<Shared>, stop: &Arc<AtomicBool>) -> Result<(), VmError> {
    // Up for the first time: a thread of its own (vCPU 0 has the caller's).
    let starting: Vec<u32> = {
        let mut core = shared.lock();
        (0u32..)
            .zip(core.platform.vcpus.iter_mut())
            .filter(|(_, slot)| slot.up && !slot.started && slot.start.is_some())
            .map(|(v, slot)| {
                slot.started = true;
                v
            })
            .collect()
    };
    for v in starting {
        let s = shared.clone();
        let stop = stop.clone();
        let handle = std::thread::Builder::new()
            .name(format!("vcpu{v}"))
            .spawn(move || {
                let cpu = {
                    let mut core = s.lock();
                    let start = core
                        .platform
                        .vcpus
                        .get_mut(v as usize)
                        .and_then(|slot| slot.start.take());
                    match start {
                        Some(start) => secondary_cpu(&s, &mut core, *start),
                        None => Err(VmError::UnhandledExit(format!(
                            "vCPU {v} brought up with no context"
                        ))),
                    }
                };
                let r = cpu.and_then(|mut cpu| run_vcpu(&s, &mut cpu, &stop));
                // A secondary vCPU's own end ends the domain; `Stopped` means it left
                // because the domain ended or was stopped.
                if !matches!(r, Ok(GuestExit::Stopped)) {
                    s.end(r);
                }
            })
            .map_err(VmError::Timer)?;
        if let Ok(mut t) = shared.threads.lock()
            && let Some(slot) = t.get_mut(v as usize)
        {
            slot.get_or_insert_with(VcpuThread::default).join = Some(handle);
        }
    }
    Ok(())
}

/// The KVM vCPU and PV state of a secondary vCPU, from the context `VCPUOP_initialise`
/// gave it.
fn secondary_cpu(
    shared: &Shared,
    core: &mut Core,
    start: platform::vcpus::StartContext,
) -> Result<Cpu, VmError> {
    let mut cpu = Cpu::new(&shared.kvm, &shared.vm, &core.boot, start.pv)?;
    let (tsc, tsc_khz) = cpu.vcpu.tsc()?;
    let mut m = shared.machine.lock();
    cpu.pv.update_time(&m, tsc, tsc_khz);
    let mut x = Exit {
        s: shared,
        c: core,
        m: &mut m,
        cpu: &mut cpu,
    };
    x.load_start_context(&start.regs)?;
    Ok(cpu)
}

/// Runs one vCPU until the domain ends or is stopped: every exit routed, the domain
/// locked while one is served.
fn run_vcpu(shared: &Arc<Shared>, cpu: &mut Cpu, stop: &AtomicBool) -> Result<GuestExit, VmError> {
    let me = cpu.vcpu.caller.vcpu;
    if cpu.timer.is_none() {
        cpu.timer = Some(timer::TimerKick::start(cpu.pv.epoch(), me).map_err(VmError::Timer)?);
    }
    if let Some(k) = &cpu.timer {
        k.attach();
        register_thread(shared, me, k.kicker());
    }
    {
        let (mut core, mut m) = shared.lock_both();
        follow(&mut core, cpu);
        Exit {
            s: shared,
            c: &mut core,
            m: &mut m,
            cpu,
        }
        .service_timers();
    }
    let stop_arc = shared.stop.clone();
    let stopping = || {
        stop.load(Ordering::Relaxed)
            || shared.stop.load(Ordering::Relaxed)
            || shared.ended.load(Ordering::SeqCst)
    };
    loop {
        if stopping() {
            return Ok(GuestExit::Stopped);
        }
        if !shared.lock().platform.is_up(me) {
            timer::wait_until_up(shared, cpu, stop);
            continue;
        }
        let mut event = run_once(shared, cpu);
        // `mmu_update` exits served without the domain lock, back to back.
        while let Event::Hypercall(entry) = event
            && hypercall::concurrent_mmu_update(shared, cpu, entry)?
        {
            if stopping() {
                return Ok(GuestExit::Stopped);
            }
            event = run_once(shared, cpu);
        }
        let (exit, kicks) = {
            let (mut core, mut m) = shared.lock_both();
            follow(&mut core, cpu);
            let mut x = Exit {
                s: shared,
                c: &mut core,
                m: &mut m,
                cpu,
            };
            let mut exit = x.route(event);
            // A domain watchdog that fired shuts the domain down (Xen's
            // `domain_watchdog_timeout`).
            if matches!(exit, Ok(None)) && x.c.platform.watchdog_due(x.cpu.pv.system_time_ns()) {
                warn!("a domain watchdog fired: shutting the domain down");
                exit = Ok(Some(GuestExit::Shutdown(
                    pvmmu_abi::sched::SHUTDOWN_watchdog,
                )));
            }
            (exit, core.platform.evtchn.take_kicks())
        };
        shared.kick(kicks & !(1u64 << me.min(63)));
        start_vcpus(shared, &stop_arc)?;
        if let Some(exit) = exit? {
            return Ok(exit);
        }
        if let Some(w) = cpu.wait.take()
            && let Some(exit) = timer::wait(shared, cpu, &w, stop)?
        {
            return Ok(exit);
        }
    }
}

/// Makes the vCPU follow what another vCPU registered for it (`vcpu_info`, runstate
/// area, periodic timer, secondary time area).
fn follow(core: &mut Core, cpu: &mut Cpu) {
    let me = cpu.vcpu.caller.vcpu as usize;
    let info = core.platform.evtchn.vcpu_info.get(me).copied().unwrap_or(0);
    let (area, period, time) = core
        .platform
        .vcpus
        .get_mut(me)
        .map_or((None, None, None), |s| {
            (s.runstate_area.take(), s.period.take(), s.time_area.take())
        });
    if info != cpu.pv.vcpu_info() || area.is_some() || period.is_some() || time.is_some() {
        cpu.pv.follow(info, area, period, time);
    }
}

impl Exit<'_> {
    /// The root the vCPU runs on: the kernel's in guest kernel mode, the user's in user
    /// mode.
    fn current_root(&self) -> Option<pvmmu::Mfn> {
        let caller = self.cpu.vcpu.caller;
        if self.cpu.pv.in_kernel(self.m) {
            self.m.kernel_root(caller)
        } else {
            self.m.user_root(caller)
        }
    }

    /// Routes one KVM_RUN exit.
    fn route(&mut self, event: Event) -> Result<Option<GuestExit>, VmError> {
        self.c.stats.exits += 1;
        let reason = match &event {
            Event::Hypercall(Entry::Page) => "hypercall",
            Event::Hypercall(Entry::Syscall) => "syscall hypercall",
            Event::Exception => "exception",
            Event::Device(what, _) => what,
            Event::Kick => "kick",
            Event::Fault => "memory fault",
            _ => "other",
        };
        if reason != "exception" {
            *self.c.stats.exit_reasons.entry(reason.into()).or_default() += 1;
        }
        match event {
            Event::Hypercall(entry) => self.hypercall(entry),
            Event::Exception => self.exception(),
            Event::Device(_, exit_code) => Ok(exit_code.map(GuestExit::ExitPort)),
            Event::Shutdown => {
                let rip = self.cpu.vcpu.fd.get_regs().map(|r| r.rip).unwrap_or(0);
                Ok(Some(GuestExit::TripleFault { rip }))
            }
            Event::Hlt => Err(VmError::Hlt),
            Event::FailEntry(reason, cpu) => Err(VmError::FailEntry { reason, cpu }),
            Event::Kick => self.timer_kick(),
            // Another vCPU's host-side invalidation had the frame protected for a
            // moment (it held the domain lock, now taken): run again.
            Event::Fault => Ok(None),
            // The guest ran something the host must emulate and cannot: the
            // guest's doing, so the domain ends (crashed) rather than the VMM.
            Event::Internal => {
                let suberror = self.internal_suberror();
                let rip = self.cpu.vcpu.fd.get_regs().map(|r| r.rip).unwrap_or(0);
                warn!("KVM internal error {suberror} at {rip:#x}: crashing the domain");
                Ok(Some(GuestExit::Crash(Crash::Unemulated { rip, suberror })))
            }
            Event::Other(what) => Err(VmError::UnhandledExit(what)),
            Event::Error(e) => Err(e.into()),
        }
    }

    /// KVM's `internal.suberror` after an internal-error exit.
    fn internal_suberror(&mut self) -> u32 {
        let run = self.cpu.vcpu.fd.get_kvm_run();
        // SAFETY: the last exit was KVM_EXIT_INTERNAL_ERROR, for which KVM fills the
        // `internal` member of the exit union; it is plain integers.
        unsafe { run.__bindgen_anon_1.internal.suberror }
    }
}

/// A KVM_RUN exit, with the device accesses already done (they need no domain lock).
#[derive(Debug)]
enum Event {
    /// A hypercall (or a guest system call).
    Hypercall(Entry),
    /// A ring-0 stub reported an exception.
    Exception,
    /// Port I/O or MMIO served by a device (the reason name); a code written to the
    /// exit port.
    Device(&'static str, Option<u8>),
    /// A triple fault.
    Shutdown,
    /// HLT.
    Hlt,
    /// VM entry failed (hardware reason, host CPU).
    FailEntry(u64, u32),
    /// A signal kicked the vCPU out.
    Kick,
    /// KVM could not fault a page in (EFAULT): another vCPU's host-side invalidation had
    /// it protected.
    Fault,
    /// KVM could not emulate something.
    Internal,
    /// Any other exit.
    Other(String),
    /// KVM_RUN failed.
    Error(kvm_ioctls::Error),
}

/// Most EFAULT returns of KVM_RUN in a row taken for another vCPU's invalidation.
const MAX_FAULT_RETRIES: u32 = 1000;

/// Runs the vCPU once and serves the device accesses of the exit.
fn run_once(shared: &Shared, cpu: &mut Cpu) -> Event {
    let ran = cpu.vcpu.fd.run();
    let event = match ran {
        Ok(VcpuExit::IoOut(HYPERCALL_PORT, _)) => Event::Hypercall(Entry::Page),
        Ok(VcpuExit::IoOut(SYSCALL_PORT, _)) => Event::Hypercall(Entry::Syscall),
        Ok(VcpuExit::IoOut(FAULT_PORT, _)) => Event::Exception,
        Ok(VcpuExit::IoOut(port, data)) => {
            shared.pio.write(port, data);
            let code = shared.exit_port.lock().ok().and_then(|p| p.code());
            Event::Device("port I/O", code)
        }
        Ok(VcpuExit::IoIn(port, data)) => {
            shared.pio.read(port, data);
            Event::Device("port I/O", None)
        }
        Ok(VcpuExit::MmioRead(addr, data)) => {
            shared.mmio.read(addr, data);
            Event::Device("MMIO", None)
        }
        Ok(VcpuExit::MmioWrite(addr, data)) => {
            shared.mmio.write(addr, data);
            Event::Device("MMIO", None)
        }
        Ok(VcpuExit::Shutdown) => Event::Shutdown,
        Ok(VcpuExit::Hlt) => Event::Hlt,
        Ok(VcpuExit::FailEntry(reason, c)) => Event::FailEntry(reason, c),
        Ok(VcpuExit::Intr) => Event::Kick,
        Ok(VcpuExit::InternalError) => Event::Internal,
        Ok(other) => Event::Other(format!("{other:?}")),
        Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => Event::Kick,
        Err(e) if e.errno() == libc::EFAULT && cpu.fault_retries < MAX_FAULT_RETRIES => {
            cpu.fault_retries += 1;
            return Event::Fault;
        }
        Err(e) => Event::Error(e),
    };
    cpu.fault_retries = 0;
    event
}
