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
use log::{debug, warn};
use platform::builder::BootInfo;
use platform::cpuid::CpuidPolicy;
use platform::dispatch::{self, Console, DomainState, HypercallStats, Outcome};
use platform::domain::{DOMID, Domain, DomainError, DomainSpec, describe_path};
use platform::hvarea::HvArea;
use platform::layout::{FAULT_PORT, HYPERCALL_PORT, PAGE, STACK_VA, SYSCALL_PORT};
use platform::pv::{Crash, GuestContext, PvVcpu, Transfer};
use platform::trace::{Record, TraceHeader, ptwr_code};
use pvmmu::{AuditError, Caller, MachineError};
use pvmmu_abi::layout::RO_MPT_VIRT_START;
use pvmmu_abi::selector::{FLAT_RING3_CS64, FLAT_RING3_SS64};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use crate::arch::regs::hypercall_args;
use crate::bus::{BusOverlap, MmioBus, PioBus};
use crate::emulate;
use crate::fault::{ExceptionFrame, FaultReport, vector_name};
use crate::flush::{FlushStats, KvmFlush, Vmm};
use crate::tracer::{RamSlot, TraceError, Tracer};
use crate::vcpu::{Vcpu, VcpuError};

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
}

/// MSR numbers the PV emulation knows.
mod msr {
    pub const APIC_BASE: u32 = 0x1b;
    pub const PAT: u32 = 0x277;
    pub const PERF_CAPABILITIES: u32 = 0x345;
    pub const EFER: u32 = 0xc000_0080;
    pub const FS_BASE: u32 = 0xc000_0100;
    pub const GS_BASE: u32 = 0xc000_0101;
    pub const SHADOW_GS_BASE: u32 = 0xc000_0102;
}

/// How a hypercall reached the VMM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Entry {
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

    /// The flag that stops this VM: setting it (and kicking the vCPU thread out of
    /// KVM_RUN) ends `run` with [`GuestExit::Stopped`], even in the middle of a long
    /// batched hypercall.
    pub fn stop_flag(&self) -> Arc<AtomicBool> {
        self.stop.clone()
    }

    /// A `syscall` or hypercall-page exit. From guest kernel mode it is a hypercall:
    /// dispatch, trace, result, CR3. From guest user mode it is a system call for the
    /// guest kernel, as Xen treats a `syscall` there (the hypercall page's too).
    fn hypercall(&mut self, entry: Entry) -> Result<Option<GuestExit>, VmError> {
        let arrived = Instant::now();
        let mut regs = self.vcpu.regs();
        if entry == Entry::Syscall && self.syscall_ring0 != Some(false) {
            // Where `syscall` entered ring 0 (hardware KVM), go back to CPL3 first.
            let ring0 = self.vcpu.sregs()?.cs.dpl == 0;
            self.syscall_ring0 = Some(ring0);
            if ring0 {
                self.vcpu.leave_ring0()?;
            }
        }
        if !self.pv.in_kernel(&self.machine) {
            return self.user_syscall(entry, regs);
        }
        let (nr, args) = (regs.rax, hypercall_args(&regs));
        if let Some(t) = self.tracer.as_mut() {
            t.pages(self.machine.memory())?;
        }
        let mut console = SerialSink(self.serial.clone());
        let caller = self.vcpu.caller;
        let context = GuestContext {
            rip: regs.rip,
            cs: u64::from(FLAT_RING3_CS64),
            rflags: regs.rflags,
            rsp: regs.rsp,
            ss: u64::from(FLAT_RING3_SS64),
            rcx: regs.rcx,
            r11: regs.r11,
        };
        let mut ctx = context;
        let served = dispatch::dispatch(
            &mut self.machine,
            &mut console,
            &mut self.platform,
            &mut self.pv,
            &mut ctx,
            nr,
            args,
        )?;
        if let Some(t) = self.tracer.as_mut() {
            t.record(&Record::Hypercall {
                vcpu: caller.vcpu,
                nr,
                args,
                batch: served.reads,
                outcome: served.outcome,
                context,
            })?;
        }
        if let Some(t) = self.timings.as_mut() {
            t.push(HypercallTiming {
                nr,
                count: args[1],
                at: arrived - self.started,
                served: arrived.elapsed(),
            });
        }
        match served.outcome {
            Outcome::Return(v) => {
                if served.context_changed {
                    // `iret`: the guest continues where the frame says (RIP differs
                    // from the `out`, so KVM does not complete it by skipping).
                    regs.rax = v as u64;
                    regs.rip = ctx.rip;
                    regs.rsp = ctx.rsp;
                    regs.rflags = ctx.rflags;
                    regs.rcx = ctx.rcx;
                    regs.r11 = ctx.r11;
                    self.vcpu.set_regs(regs);
                } else if entry == Entry::Syscall {
                    // Back after the `syscall`, as Xen's return to the guest does.
                    regs.rax = v as u64;
                    regs.rip = regs.rcx;
                    regs.rflags = regs.r11 | platform::pv::rflags::IF;
                    self.vcpu.set_regs(regs);
                } else {
                    self.vcpu.set_rax(v as u64);
                }
                self.transfer(served.transfer)?;
                self.load_debugregs()?;
                if let Some((which, base)) = served.segment_base {
                    use crate::vcpu::SegmentBase as B;
                    use platform::dispatch::SegmentBase as S;
                    // In kernel mode the user GS base is the shadow one.
                    let which = match which {
                        S::Fs => B::Fs,
                        S::GsKernel => B::Gs,
                        S::GsUser => B::ShadowGs,
                    };
                    self.vcpu.set_segment_base(which, base)?;
                }
                if let Some((frames, _)) = self.machine.take_gdt_change(caller) {
                    let stale =
                        platform::hvarea::map_guest_gdt(self.machine.memory(), &self.hv, &frames)
                            .map_err(DomainError::from)?;
                    self.machine.flusher().invalidate(&stale);
                }
                if let Some(roots) = served.roots
                    && self.pv.in_kernel(&self.machine)
                {
                    self.vcpu.load_root(roots.kernel)?;
                }
                Ok(None)
            }
            Outcome::Shutdown(reason) => Ok(Some(GuestExit::Shutdown(reason))),
            Outcome::Crash(c) => Ok(Some(GuestExit::Crash(c))),
        }
    }

    /// A system call from guest user mode (a `syscall`, or a call through the hypercall
    /// page, which is a `syscall` on Xen): delivered to the guest kernel's syscall
    /// callback.
    fn user_syscall(
        &mut self,
        entry: Entry,
        mut regs: kvm_bindings::kvm_regs,
    ) -> Result<Option<GuestExit>, VmError> {
        if entry == Entry::Page {
            // The page's `out` stands for the `syscall` Xen's page holds: it returns
            // after it, with the flags at the call.
            regs.rcx = regs.rip + 2;
            regs.r11 = regs.rflags;
        }
        let mut ctx = GuestContext {
            rip: regs.rcx,
            cs: u64::from(FLAT_RING3_CS64),
            rflags: regs.r11,
            rsp: regs.rsp,
            ss: u64::from(FLAT_RING3_SS64),
            rcx: regs.rcx,
            r11: regs.r11,
        };
        match self.pv.user_syscall(&mut self.machine, &mut ctx, 2) {
            Ok(t) => {
                regs.rip = ctx.rip;
                regs.rsp = ctx.rsp;
                regs.rflags = ctx.rflags | platform::pv::rflags::IF;
                self.vcpu.set_regs(regs);
                self.transfer(t)?;
                Ok(None)
            }
            Err(c) => Ok(Some(GuestExit::Crash(c))),
        }
    }

    /// Loads the guest's debug registers into the vCPU when they changed.
    fn load_debugregs(&mut self) -> Result<(), VmError> {
        let d = &mut self.pv.debug;
        if !d.dirty {
            return Ok(());
        }
        d.dirty = false;
        let regs = kvm_bindings::kvm_debugregs {
            db: d.dr,
            dr6: d.dr6,
            dr7: d.dr7,
            ..Default::default()
        };
        self.vcpu.fd.set_debug_regs(&regs)?;
        Ok(())
    }

    /// RDMSR as Xen emulates it for a 64-bit PV kernel: `None` means #GP. Unlisted MSRs
    /// read as 0 while the guest has no #GP handler (Xen's early-boot leniency), else
    /// fault.
    fn read_msr(&mut self, index: u32) -> Result<Option<u64>, VmError> {
        let (fs, gs, shadow) = self.vcpu.segment_bases()?;
        Ok(match index {
            msr::FS_BASE => Some(fs),
            msr::GS_BASE => Some(gs),
            msr::SHADOW_GS_BASE => Some(shadow),
            msr::EFER => Some(crate::arch::regs::EFER),
            msr::PAT => Some(platform::layout::XEN_PAT),
            msr::APIC_BASE => {
                let bsp = if self.vcpu.caller.vcpu == 0 {
                    1 << 8
                } else {
                    0
                };
                Some(0xfee0_0000 | (1 << 11) | bsp)
            }
            msr::PERF_CAPABILITIES => Some(0),
            _ if self.pv.trap(13).address == 0 && index >> 16 != 0x4000 => Some(0),
            _ => None,
        })
    }

    /// WRMSR as Xen emulates it for a 64-bit PV kernel: `false` means #GP.
    fn write_msr(&mut self, index: u32, value: u64) -> Result<bool, VmError> {
        use crate::vcpu::SegmentBase;
        let which = match index {
            msr::FS_BASE => SegmentBase::Fs,
            msr::GS_BASE => SegmentBase::Gs,
            msr::SHADOW_GS_BASE => SegmentBase::ShadowGs,
            // Writing EFER back unchanged is allowed (Linux does); changing it is not.
            msr::EFER => return Ok(value == crate::arch::regs::EFER),
            _ => return Ok(false),
        };
        if !pvmmu_abi::layout::is_canonical(value) {
            return Ok(false);
        }
        self.vcpu.set_segment_base(which, value)?;
        Ok(true)
    }

    /// Carries out a kernel/user mode switch: CR3 to the new mode's root, GS swapped.
    fn transfer(&mut self, t: Transfer) -> Result<(), VmError> {
        if t.mode_switched {
            let caller = self.vcpu.caller;
            let root = if self.pv.in_kernel(&self.machine) {
                self.machine.kernel_root(caller)
            } else {
                self.machine.user_root(caller)
            };
            self.vcpu.switch_mode(root)?;
        }
        Ok(())
    }

    /// An exception exit. First what the hypervisor itself decides (writable page
    /// tables, M2P reads at Xen's address, the forced-emulation CPUID, privileged
    /// instructions), then delivery to the guest kernel's handler; with no handler, a
    /// fault report.
    fn exception(&mut self) -> Result<Option<GuestExit>, VmError> {
        let mut regs = self.vcpu.regs();
        let sregs = self.vcpu.sregs()?;
        let mem = self.machine.memory();
        let ef = ExceptionFrame::read(mem, STACK_VA, self.hv.stack_gpa, regs.rsp)?;
        let frame = ef.frame;
        debug!(
            "exception {} ({}) error {:#x} at {:#x} (CS {:#x}), CR2 {:#x}",
            frame.vector,
            vector_name(frame.vector),
            frame.error,
            frame.rip,
            frame.cs,
            sregs.cr2
        );
        let caller = self.vcpu.caller;
        // The guest's registers: the stub's own RSP is not the guest's.
        let mut gregs = regs;
        gregs.rsp = frame.rsp;
        gregs.rip = frame.rip;
        let mut note = None;
        if frame.is_ptwr_candidate() {
            if let Some(t) = self.tracer.as_mut() {
                t.pages(self.machine.memory())?;
            }
            let mut seen = None;
            let mut on_write =
                |w: &pvmmu::PtwrWrite, r: &Result<pvmmu::PtwrOutcome, pvmmu::PtwrRefusal>| {
                    seen = Some((*w, ptwr_code(r)));
                };
            let result = emulate::try_ptwr(
                &mut self.machine,
                caller,
                &frame,
                sregs.cr2,
                &gregs,
                &sregs,
                &mut on_write,
            );
            if let (Some(t), Some((write, outcome))) = (self.tracer.as_mut(), seen) {
                t.record(&Record::Ptwr {
                    vcpu: caller.vcpu,
                    fault_va: sregs.cr2,
                    write,
                    outcome,
                })?;
            }
            match result {
                Ok(em) => {
                    self.stats.ptwr += 1;
                    let mem = self.machine.memory();
                    ef.set_rip(mem, frame.rip + em.len)?;
                    if let Some(zf) = em.zf {
                        ef.set_zf(mem, zf)?;
                    }
                    if let Some(rax) = em.rax {
                        regs.rax = rax;
                    }
                    if let Some((r, v)) = em.xchg {
                        emulate::set_reg(&mut regs, r, v);
                    }
                    self.vcpu.set_regs(regs);
                    debug!("emulated a page-table write at {:#x}", frame.rip);
                    return Ok(None);
                }
                Err(why) => note = Some(why.to_string()),
            }
        }
        // The emulated instruction sees the guest's RSP, not the stub's.
        let guest_rsp = frame.rsp;
        if let Some((skip, new_rsp)) = self.emulate(&frame, sregs.cr2, &mut regs, guest_rsp)? {
            let mut ctx = ef.context(regs.rcx, regs.r11);
            ctx.rip = frame.rip.wrapping_add(skip);
            if let Some(rsp) = new_rsp {
                ctx.rsp = rsp;
            }
            ef.set_context(self.machine.memory(), &ctx)?;
            self.vcpu.set_regs(regs);
            return Ok(None);
        }
        // Deliver it to the guest kernel, as Xen does. A software interrupt `int $n`
        // arrives as #GP(n*8+2) from a gate the guest may not use (hardware KVM) or as
        // #UD at the instruction (this host's KVM-PVM): both become Xen's softint rule.
        let mut vector = frame.vector as u8;
        let mut raw_error = frame.error;
        if vector == 12 && raw_error == 0 {
            let b = emulate::fetch(&self.machine, caller, frame.rip);
            if emulate::decode(&b, frame.rip).is_some_and(|i| !emulate::is_stack_access(&i)) {
                (vector, raw_error) = (13, 0);
            }
        }
        let mut ctx = ef.context(regs.rcx, regs.r11);
        let softint = match vector {
            6 => {
                let b = emulate::fetch(&self.machine, caller, frame.rip);
                (b.len() >= 2 && b[0] == 0xcd).then(|| (b[1], 2))
            }
            13 if frame.error & 3 == 2 => {
                // The instruction's length: `int3` and `into` are one byte.
                let b = emulate::fetch(&self.machine, caller, frame.rip);
                let len = if matches!(b.first(), Some(0xcc | 0xce)) {
                    1
                } else {
                    2
                };
                Some(((frame.error >> 3) as u8, len))
            }
            _ => None,
        };
        let delivered = match softint {
            Some((n, len)) => self
                .pv
                .software_interrupt(&mut self.machine, &mut ctx, n, len),
            None => {
                if vector == 1 {
                    // What hardware recorded goes into the guest's DR6, and hardware's
                    // DR6 is reset for the next #DB.
                    let hw = self.vcpu.fd.get_debug_regs()?;
                    self.pv.merge_dr6(hw.dr6);
                    self.pv.debug.dirty = true;
                    self.load_debugregs()?;
                }
                let error = emulate_error_code(vector, raw_error);
                let cr2 = (vector == 14).then_some(sregs.cr2);
                self.pv
                    .inject_exception(&mut self.machine, &mut ctx, vector, error, cr2)
            }
        };
        match delivered {
            Ok(t) => {
                ef.set_context(self.machine.memory(), &ctx)?;
                self.transfer(t)?;
                debug!(
                    "delivered {} to the guest handler at {:#x}",
                    vector_name(frame.vector),
                    ctx.rip
                );
                Ok(None)
            }
            Err(Crash::NoHandler { .. }) => {
                let path = describe_path(
                    self.machine.memory(),
                    self.machine.kernel_root(caller),
                    sregs.cr2,
                );
                Ok(Some(GuestExit::Fault(Box::new(FaultReport {
                    frame,
                    cr2: sregs.cr2,
                    path,
                    note,
                }))))
            }
            Err(c) => Ok(Some(GuestExit::Crash(c))),
        }
    }

    /// The instructions the hypervisor carries out itself at an exception: the forced-
    /// emulation CPUID (#UD), privileged instructions (#GP), loads from the M2P at Xen's
    /// address (#PF). Returns the bytes to skip when it emulated one, and the guest's
    /// new RSP when the instruction wrote it (it lives in the exception frame).
    fn emulate(
        &mut self,
        frame: &crate::fault::Frame,
        cr2: u64,
        regs: &mut kvm_bindings::kvm_regs,
        guest_rsp: u64,
    ) -> Result<Option<(u64, Option<u64>)>, VmError> {
        // Operands are read with the guest's RSP; an instruction that would write RSP
        // is not emulated (RSP in `regs` is the exception stub's).
        let operands = kvm_bindings::kvm_regs {
            rsp: guest_rsp,
            ..*regs
        };
        let caller = self.vcpu.caller;
        let m2p_len = self.machine.frames().len() as u64 * 8;
        let wanted = match frame.vector {
            6 | 13 => true,
            14 => (RO_MPT_VIRT_START..RO_MPT_VIRT_START + m2p_len).contains(&cr2),
            _ => false,
        };
        if !wanted {
            return Ok(None);
        }
        let bytes = emulate::fetch(&self.machine, caller, frame.rip);
        if frame.vector == 6 {
            let Some(len) = emulate::forced_cpuid(&bytes) else {
                return Ok(None);
            };
            let [a, b, c, d] = self.cpuid.query(regs.rax as u32, regs.rcx as u32);
            (regs.rax, regs.rbx, regs.rcx, regs.rdx) =
                (u64::from(a), u64::from(b), u64::from(c), u64::from(d));
            debug!("forced-emulation cpuid at {:#x}", frame.rip);
            return Ok(Some((len, None)));
        }
        let Some(ins) = emulate::decode(&bytes, frame.rip) else {
            return Ok(None);
        };
        if frame.vector == 13 {
            let len = ins.len() as u64;
            let kernel = self.pv.in_kernel(&self.machine);
            let value = match emulate::privileged_op(&ins) {
                // Control registers, from guest kernel mode only (user mode gets the #GP).
                Some(emulate::PrivilegedOp::ReadCr { cr, dst }) if kernel => {
                    let v = match cr {
                        0 => platform::pv::cr4::CR0,
                        2 => self.pv.cr2,
                        3 => self.machine.kernel_root(caller).map_or(0, |r| r.addr()),
                        _ => self.pv.cr4,
                    };
                    (dst, v)
                }
                Some(emulate::PrivilegedOp::WriteCr { cr: 4, src }) if kernel => {
                    let v = emulate::gpr(&operands, src).unwrap_or(0);
                    let fsgsbase = self.cpuid.query(7, 0)[1] & 1 != 0;
                    self.pv.cr4 = platform::pv::cr4::fixup(v, fsgsbase);
                    // The guest's FSGSBASE choice is the hardware's.
                    self.vcpu
                        .set_fsgsbase(self.pv.cr4 & platform::pv::cr4::FSGSBASE != 0)?;
                    return Ok(Some((len, None)));
                }
                // With the I/O privilege the guest asked for: `cli`/`sti` do nothing
                // (Xen does not track them), port reads from ports a domU does not own
                // give all ones and writes are dropped, as Xen's emulation does.
                Some(emulate::PrivilegedOp::InterruptFlag | emulate::PrivilegedOp::Out)
                    if self.pv.iopl_ok(&self.machine) =>
                {
                    return Ok(Some((len, None)));
                }
                Some(emulate::PrivilegedOp::In { dst }) if self.pv.iopl_ok(&self.machine) => {
                    (dst, u64::MAX)
                }
                Some(emulate::PrivilegedOp::ReadDr { dr, dst }) if kernel => {
                    match self.pv.get_debugreg(dr) {
                        Some(v) => (dst, v),
                        None => return Ok(None),
                    }
                }
                Some(emulate::PrivilegedOp::WriteDr { dr, src }) if kernel => {
                    let v = emulate::gpr(&operands, src).unwrap_or(0);
                    if self.pv.set_debugreg(dr, v).is_err() {
                        return Ok(None);
                    }
                    self.load_debugregs()?;
                    return Ok(Some((len, None)));
                }
                Some(emulate::PrivilegedOp::Rdmsr) if kernel => {
                    match self.read_msr(regs.rcx as u32)? {
                        Some(v) => {
                            regs.rax = v & 0xffff_ffff;
                            regs.rdx = v >> 32;
                            return Ok(Some((len, None)));
                        }
                        None => return Ok(None),
                    }
                }
                Some(emulate::PrivilegedOp::Wrmsr) if kernel => {
                    let v = (regs.rdx << 32) | (regs.rax & 0xffff_ffff);
                    return Ok(self.write_msr(regs.rcx as u32, v)?.then_some((len, None)));
                }
                // The rest: the guest gets the #GP.
                _ => return Ok(None),
            };
            return Ok(Some((len, set_operand(regs, value.0, value.1, guest_rsp))));
        }
        // A load from the read-only M2P: read the M2P itself (the guest may read any
        // of it; a load straddling its end reads what there is).
        let Some((dst, size)) = emulate::plain_load(&ins) else {
            return Ok(None);
        };
        let mut b = [0u8; 8];
        let n = size.min(8);
        let at = self.hv.m2p_gpa + (cr2 - RO_MPT_VIRT_START);
        if self
            .machine
            .memory()
            .read_slice(&mut b[..n], GuestAddress(at))
            .is_err()
        {
            return Ok(None);
        }
        let new_rsp = set_operand(regs, dst, u64::from_le_bytes(b), guest_rsp);
        Ok(Some((ins.len() as u64, new_rsp)))
    }

    /// Runs the vCPU until the guest shuts down, faults, or `stop` or the VM's own stop
    /// flag is set. Every exit is routed here.
    pub fn run(&mut self, stop: &AtomicBool) -> Result<GuestExit, VmError> {
        loop {
            if stop.load(Ordering::Relaxed) || self.stop.load(Ordering::Relaxed) {
                return Ok(GuestExit::Stopped);
            }
            self.stats.exits += 1;
            let exit = match self.vcpu.fd.run() {
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
                Ok(VcpuExit::Intr) => None,
                Ok(other) => return Err(VmError::UnhandledExit(format!("{other:?}"))),
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => None,
                Err(e) => return Err(e.into()),
            };
            if let Some(exit) = exit {
                return Ok(exit);
            }
        }
    }

    /// Runs to the end and tears the domain down, auditing before and after.
    pub fn run_to_end(mut self, stop: &AtomicBool) -> Result<RunReport, VmError> {
        let exit = self.run(stop)?;
        if let Some(t) = self.tracer.take() {
            t.finish()?;
        }
        self.stats.mmu = self.machine.stats();
        let audit = self
            .machine
            .audit()
            .map_err(AuditFailure::Run)
            .and_then(|()| {
                self.machine
                    .destroy_domain(DOMID)
                    .map_err(AuditFailure::Teardown)
            })
            .and_then(|()| self.machine.audit().map_err(AuditFailure::AfterTeardown));
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

/// Writes an emulated instruction's result to register `r`: into `regs`, or, for RSP,
/// as the guest's new RSP (returned; it belongs in the exception frame).
fn set_operand(
    regs: &mut kvm_bindings::kvm_regs,
    r: iced_x86::Register,
    value: u64,
    guest_rsp: u64,
) -> Option<u64> {
    if r.full_register() == iced_x86::Register::RSP {
        let mut scratch = kvm_bindings::kvm_regs {
            rsp: guest_rsp,
            ..Default::default()
        };
        emulate::set_reg(&mut scratch, r, value);
        return Some(scratch.rsp);
    }
    emulate::set_reg(regs, r, value);
    None
}

/// The error code exception `vector` delivers, if it has one.
fn emulate_error_code(vector: u8, error: u64) -> Option<u32> {
    platform::pv::has_error_code(vector).then_some(error as u32)
}
