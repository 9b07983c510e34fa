//! One VM: KVM, guest memory, the hypervisor area, the PV MMU, the domain, one vCPU
//! (the design admits several: state per vCPU is indexed by its number) and the run loop
//! that serves hypercall, fault and device exits.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use devices::mmio_test::{MMIO_TEST_BASE, MMIO_TEST_SIZE};
use devices::{ExitPort, MmioDevice, MmioTestDevice, PioDevice, SerialConsole};
use kvm_bindings::{
    CpuId, KVM_MAX_CPUID_ENTRIES, Msrs, kvm_fpu, kvm_msr_entry, kvm_regs, kvm_segment,
    kvm_userspace_memory_region, kvm_xcr, kvm_xcrs,
};
use kvm_ioctls::{Kvm, SyncReg, VcpuExit, VcpuFd, VmFd};
use log::{debug, info, warn};
use pvmmu::{Caller, DomainConfig, MachineConfig, Mfn};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use crate::builder::{self, BootInfo};
use crate::elf;
use crate::fault::{self, FaultReport, Frame};
use crate::flush::{FlushStats, KvmFlush};
use crate::hvarea;
use crate::hypercall::{self, Console, HypercallStats, Outcome, Vmm};
use crate::layout::*;

/// The guest's domain id.
pub const DOMID: u16 = 1;

/// Errors of the VMM itself (not of the guest).
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// KVM refused something.
    #[error("KVM: {0}")]
    Kvm(#[from] kvm_ioctls::Error),
    /// /dev/kvm could not be opened.
    #[error("cannot open /dev/kvm: {0}")]
    NoKvm(kvm_ioctls::Error),
    /// Bad memory size.
    #[error("memory size {0} MiB is not supported (16..=4096)")]
    MemorySize(u64),
    /// Guest memory could not be created.
    #[error("guest memory: {0}")]
    Memory(String),
    /// The guest image is bad.
    #[error("guest image: {0}")]
    Elf(#[from] elf::ElfError),
    /// The domain could not be built.
    #[error("domain builder: {0}")]
    Build(#[from] builder::BuildError),
    /// The hypervisor area could not be built.
    #[error("hypervisor area: {0}")]
    HvArea(#[from] hvarea::HvAreaError),
    /// The PV MMU refused the embedder.
    #[error("pvmmu: {0}")]
    Machine(#[from] pvmmu::MachineError),
    /// Host I/O.
    #[error("host: {0}")]
    Io(#[from] std::io::Error),
    /// A vCPU exit the VMM cannot serve.
    #[error("unexpected vCPU exit: {0}")]
    Exit(String),
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
    /// Stopped from outside (signal).
    Stopped,
}

/// Configuration of one run.
pub struct VmConfig {
    /// Guest RAM in MiB.
    pub memory_mib: u64,
    /// Number of vCPUs (1 for now).
    pub vcpus: u32,
    /// The guest ELF image.
    pub image: Vec<u8>,
    /// Guest command line.
    pub cmdline: String,
    /// Where the console goes.
    pub console_out: Box<dyn Write + Send>,
    /// Whether the domain may map the MMIO test device (I/O-memory permission).
    pub iomem: bool,
}

impl std::fmt::Debug for VmConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmConfig")
            .field("memory_mib", &self.memory_mib)
            .field("vcpus", &self.vcpus)
            .field("image_len", &self.image.len())
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

/// The result of a run.
#[derive(Debug)]
pub struct RunReport {
    /// How the guest ended.
    pub exit: GuestExit,
    /// Counters.
    pub stats: RunStats,
    /// The domain audit after the run, and after teardown (every frame returned).
    pub audit: Result<(), String>,
    /// Hypercall timings, if recorded.
    pub timings: Vec<HypercallTiming>,
}

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

/// Builds the PV side of a VM without KVM: the hypervisor area in the top frames of
/// `mem`, the PV MMU over `mem` with `flusher`, domain [`DOMID`] owning the rest, and the
/// guest from `image`. The same function serves KVM runs, trace replay and fuzzing, so
/// all three start from the same state.
pub fn build_domain<F: pvmmu::TlbFlush>(
    mem: GuestMemoryMmap<()>,
    frames: u64,
    image: &elf::GuestImage,
    cfg: &VmConfig,
    flusher: F,
) -> Result<(hypercall::Mach<F>, hvarea::HvArea, BootInfo), VmError> {
    let hv = hvarea::build(&mem, frames)?;
    let config = MachineConfig {
        xen_l4_slots: hv.l4_slots,
        ro_mmio: Vec::new(),
        m2p_mirror: Some(hv.m2p_gpa),
    };
    let mut machine = pvmmu::Machine::with_flusher(mem, config, flusher)?;
    let mmio = MMIO_TEST_BASE / PAGE..=(MMIO_TEST_BASE + MMIO_TEST_SIZE - 1) / PAGE;
    let mut dom = DomainConfig::new(DOMID).vcpus(cfg.vcpus.max(1));
    if cfg.iomem {
        dom = dom.iomem(mmio);
    }
    machine.create_domain(dom)?;
    machine.assign_frames(DOMID, (0..hv.first_frame).map(Mfn))?;
    machine.reserve_xen_frames((hv.first_frame..frames).map(Mfn))?;
    let boot = builder::build(
        &mut machine,
        DOMID,
        hv.first_frame,
        image,
        &cfg.image,
        &cfg.cmdline,
    )?;
    Ok((machine, hv, boot))
}

/// A prepared VM, ready to run its first vCPU.
pub struct Vm {
    vm: Arc<VmFd>,
    ram_size: u64,
    host: u64,
    header: crate::trace::TraceHeader,
    trace: Option<crate::trace::TraceWriter>,
    vcpu: VcpuFd,
    machine: Vmm,
    hv: hvarea::HvArea,
    boot: BootInfo,
    /// The console UART (shared with the stdin reader).
    pub serial: Arc<Mutex<SerialConsole>>,
    exit_port: ExitPort,
    mmio: MmioTestDevice,
    started: Instant,
    stats: RunStats,
    cr3: Mfn,
    /// Hypercall timings, when recording (for `pvmmu bench`).
    pub timings: Option<Vec<HypercallTiming>>,
    /// Set from outside to stop the guest; also stops long batched hypercalls.
    stop: Arc<AtomicBool>,
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

impl std::fmt::Debug for Vm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vm")
            .field("boot", &self.boot)
            .finish_non_exhaustive()
    }
}

fn segment(selector: u16, code: bool, dpl: u8) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_: if code { 0xb } else { 0x3 },
        present: 1,
        dpl,
        db: u8::from(!code),
        s: 1,
        l: u8::from(code),
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

impl Vm {
    /// Creates the VM and builds the guest.
    pub fn new(cfg: VmConfig) -> Result<Vm, VmError> {
        let started = Instant::now();
        if !(16..=4096).contains(&cfg.memory_mib) {
            return Err(VmError::MemorySize(cfg.memory_mib));
        }
        let image = elf::parse(&cfg.image)?;
        let kvm = Kvm::new().map_err(VmError::NoKvm)?;
        let vm = Arc::new(kvm.create_vm()?);
        let size = cfg.memory_mib << 20;
        let frames = size / PAGE;
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), size as usize)])
            .map_err(|e| VmError::Memory(e.to_string()))?;
        let host = mem
            .get_host_address(GuestAddress(0))
            .map_err(|e| VmError::Memory(e.to_string()))?;
        let region = kvm_userspace_memory_region {
            slot: 0,
            flags: 0,
            guest_phys_addr: 0,
            memory_size: size,
            userspace_addr: host as u64,
        };
        // SAFETY: `host` maps `size` bytes of guest RAM owned by `mem`, which the
        // machine keeps alive as long as the VM.
        unsafe { vm.set_user_memory_region(region)? };
        let flusher = KvmFlush::new(vm.clone(), host, frames)?;
        let (machine, hv, boot) = build_domain(mem, frames, &image, &cfg, flusher)?;
        info!(
            "built domain {DOMID}: entry {:#x}, L4 {}, {} pages mapped",
            boot.entry, boot.l4, boot.mapped_pages
        );
        let vcpu = vm.create_vcpu(0)?;
        let header = crate::trace::TraceHeader {
            memory_mib: cfg.memory_mib as u32,
            vcpus: cfg.vcpus,
            iomem: cfg.iomem,
            cmdline: cfg.cmdline.clone(),
            image: cfg.image.clone(),
        };
        let mut v = Vm {
            vm,
            ram_size: size,
            host: host as u64,
            header,
            trace: None,
            vcpu,
            machine,
            hv,
            boot,
            serial: Arc::new(Mutex::new(SerialConsole::new(cfg.console_out))),
            exit_port: ExitPort::default(),
            mmio: MmioTestDevice::default(),
            started,
            stats: RunStats::default(),
            cr3: boot.l4,
            timings: None,
            stop: Arc::new(AtomicBool::new(false)),
        };
        v.machine.set_interrupt(Some(v.stop.clone()));
        v.setup_vcpu(&kvm)?;
        Ok(v)
    }

    fn setup_vcpu(&mut self, kvm: &Kvm) -> Result<(), VmError> {
        let cpuid: CpuId = kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)?;
        self.vcpu.set_cpuid2(&cpuid)?;
        // CPUID.1:ECX.XSAVE (bit 26): enable XSAVE with x87 and SSE state, as a CPU
        // running SSE code must (our KVM does not enforce it; hardware KVM does).
        let xsave = cpuid
            .as_slice()
            .iter()
            .any(|e| e.function == 1 && e.ecx & (1 << 26) != 0);
        let mut sregs = self.vcpu.get_sregs()?;
        sregs.cs = segment(pvmmu_abi::selector::FLAT_RING3_CS64, true, 3);
        sregs.ss = segment(pvmmu_abi::selector::FLAT_RING3_SS64, false, 3);
        let null = kvm_segment {
            unusable: 1,
            present: 0,
            ..segment(0, false, 3)
        };
        (sregs.ds, sregs.es, sregs.fs, sregs.gs) = (null, null, null, null);
        sregs.tr = kvm_segment {
            base: TSS_VA,
            limit: TSS_LIMIT,
            selector: TSS_SEL,
            type_: 0xb,
            present: 1,
            dpl: 0,
            db: 0,
            s: 0,
            l: 0,
            g: 0,
            avl: 0,
            unusable: 0,
            padding: 0,
        };
        sregs.ldt = kvm_segment {
            unusable: 1,
            present: 0,
            type_: 2,
            ..null
        };
        sregs.gdt.base = GDT_VA;
        sregs.gdt.limit = 0xffff;
        sregs.idt.base = IDT_VA;
        sregs.idt.limit = 32 * 16 - 1;
        sregs.cr0 = 0x8001_0033; // PE MP ET NE WP PG
        sregs.cr4 = 0x6a0; // PAE PGE OSFXSR OSXMMEXCPT
        if xsave {
            sregs.cr4 |= 1 << 18; // OSXSAVE
        }
        sregs.efer = 0xd00; // LME LMA NXE
        sregs.cr3 = self.boot.l4.addr();
        self.vcpu.set_sregs(&sregs)?;
        let check = self.vcpu.get_sregs()?;
        debug!(
            "efer {:#x} cr0 {:#x} cr4 {:#x}",
            check.efer, check.cr0, check.cr4
        );
        let msrs = Msrs::from_entries(&[kvm_msr_entry {
            index: 0x277, // IA32_PAT
            data: XEN_PAT,
            ..Default::default()
        }])
        .map_err(|e| VmError::Exit(format!("msrs: {e:?}")))?;
        self.vcpu.set_msrs(&msrs)?;
        let fpu = kvm_fpu {
            fcw: 0x37f,
            mxcsr: 0x1f80,
            ..Default::default()
        };
        self.vcpu.set_fpu(&fpu)?;
        if xsave {
            let mut xcrs = kvm_xcrs {
                nr_xcrs: 1,
                ..Default::default()
            };
            xcrs.xcrs[0] = kvm_xcr {
                xcr: 0,
                reserved: 0,
                value: 0x3, // x87 | SSE
            };
            self.vcpu.set_xcrs(&xcrs)?;
        }
        let regs = kvm_regs {
            rip: self.boot.entry,
            rsp: self.boot.stack_top,
            rsi: self.boot.start_info,
            rflags: 0x202,
            ..Default::default()
        };
        self.vcpu.set_regs(&regs)?;
        self.vcpu.set_sync_valid_reg(SyncReg::Register);
        Ok(())
    }

    /// Starts recording a hypercall trace into `path` (see [`crate::trace`]): turns on
    /// KVM's dirty log for guest RAM so the guest's own writes are captured too.
    pub fn start_trace(&mut self, path: &std::path::Path) -> Result<(), VmError> {
        let region = kvm_userspace_memory_region {
            slot: 0,
            flags: kvm_bindings::KVM_MEM_LOG_DIRTY_PAGES,
            guest_phys_addr: 0,
            memory_size: self.ram_size,
            userspace_addr: self.host,
        };
        // SAFETY: the same mapping as registered in `new`, only with dirty logging on.
        unsafe { self.vm.set_user_memory_region(region)? };
        self.trace = Some(crate::trace::TraceWriter::create(path, &self.header)?);
        Ok(())
    }

    /// Records the pages the guest wrote since the last call (tracing only).
    fn trace_pages(&mut self) -> Result<(), VmError> {
        if self.trace.is_none() {
            return Ok(());
        }
        let bitmap = self.vm.get_dirty_log(0, self.ram_size as usize)?;
        let mut pages = Vec::new();
        for (w, bits) in bitmap.iter().enumerate() {
            let mut b = *bits;
            while b != 0 {
                let pfn = w as u64 * 64 + u64::from(b.trailing_zeros());
                b &= b - 1;
                let mut page = vec![0u8; PAGE as usize];
                self.machine
                    .memory()
                    .read_slice(&mut page, GuestAddress(pfn * PAGE))
                    .map_err(|e| VmError::Exit(e.to_string()))?;
                pages.push((pfn, page));
            }
        }
        if !pages.is_empty()
            && let Some(t) = self.trace.as_mut()
        {
            t.record(&crate::trace::Record::Pages(pages))?;
        }
        Ok(())
    }

    /// The batch a batched MMU hypercall reads, for the trace (best effort).
    #[allow(non_upper_case_globals)] // Xen's names for the hypercall numbers
    fn batch_bytes(&self, nr: u64, a: [u64; 5]) -> Vec<u8> {
        use pvmmu_abi::hypercall::{
            HYPERVISOR_mmu_update, HYPERVISOR_mmuext_op, HYPERVISOR_multicall,
        };
        let size = match nr {
            HYPERVISOR_mmu_update => 16,
            HYPERVISOR_mmuext_op => 24,
            HYPERVISOR_multicall => 64,
            _ => return Vec::new(),
        };
        let count = if nr == HYPERVISOR_multicall {
            a[1]
        } else {
            a[1] & 0x7fff_ffff
        };
        let len = count.saturating_mul(size).min(1 << 20) as usize;
        let mut buf = vec![0u8; len];
        let root = self.machine.kernel_root(self.caller());
        match pvmmu::GuestView::new(self.machine.memory(), root).read(a[0], &mut buf) {
            Ok(()) => buf,
            Err(_) => Vec::new(),
        }
    }

    /// The PV MMU (for tests and `pvmmu dump`).
    pub fn machine(&self) -> &Vmm {
        &self.machine
    }

    fn caller(&self) -> Caller {
        Caller::new(DOMID, 0)
    }

    /// Follows NEW_BASEPTR: loads the vCPU's kernel root into CR3.
    fn sync_cr3(&mut self) -> Result<(), VmError> {
        if let Some(root) = self.machine.kernel_root(self.caller())
            && root != self.cr3
        {
            let mut sregs = self.vcpu.get_sregs()?;
            sregs.cr3 = root.addr();
            self.vcpu.set_sregs(&sregs)?;
            self.cr3 = root;
        }
        Ok(())
    }

    fn hypercall(&mut self) -> Result<Option<GuestExit>, VmError> {
        let arrived = Instant::now();
        let regs = self.vcpu.sync_regs().regs;
        self.trace_pages()?;
        let batch = if self.trace.is_some() {
            self.batch_bytes(regs.rax, hypercall::args(&regs))
        } else {
            Vec::new()
        };
        let mut console = SerialSink(self.serial.clone());
        let caller = self.caller();
        let out = hypercall::dispatch(
            &mut self.machine,
            &mut console,
            &mut self.stats.hypercalls,
            caller,
            regs.rax,
            hypercall::args(&regs),
        )?;
        if let Some(t) = self.trace.as_mut() {
            t.record(&crate::trace::Record::Hypercall {
                vcpu: caller.vcpu,
                nr: regs.rax,
                args: hypercall::args(&regs),
                batch,
                outcome: out,
            })?;
        }
        if let Some(t) = self.timings.as_mut() {
            t.push(HypercallTiming {
                nr: regs.rax,
                count: regs.rsi,
                at: arrived - self.started,
                served: arrived.elapsed(),
            });
        }
        match out {
            Outcome::Return(v) => {
                self.vcpu.sync_regs_mut().regs.rax = v as u64;
                self.vcpu.set_sync_dirty_reg(SyncReg::Register);
                self.sync_cr3()?;
                Ok(None)
            }
            Outcome::Shutdown(reason) => Ok(Some(GuestExit::Shutdown(reason))),
        }
    }

    fn fault(&mut self) -> Result<Option<GuestExit>, VmError> {
        let mut regs = self.vcpu.sync_regs().regs;
        let sregs = self.vcpu.get_sregs()?;
        let frame_gpa = self.hv.stack_gpa + regs.rsp.wrapping_sub(STACK_VA);
        let mut words = [0u64; 7];
        for (i, w) in words.iter_mut().enumerate() {
            *w = self
                .machine
                .memory()
                .read_obj(GuestAddress(frame_gpa + i as u64 * 8))
                .map_err(|e| VmError::Exit(format!("fault frame at {:#x}: {e}", regs.rsp)))?;
        }
        let frame = Frame::from_words(words);
        let caller = self.caller();
        let mut note = None;
        // A write to a present page: a candidate for writable page tables.
        if frame.vector == 14 && frame.error & 0b11011 == 0b00011 {
            self.trace_pages()?;
            let mut seen = None;
            let mut on_write =
                |w: &pvmmu::PtwrWrite, r: &Result<pvmmu::PtwrOutcome, pvmmu::PtwrRefusal>| {
                    seen = Some((*w, crate::trace::ptwr_code(r)));
                };
            let result = fault::try_ptwr(
                &mut self.machine,
                caller,
                &frame,
                sregs.cr2,
                &regs,
                &sregs,
                &mut on_write,
            );
            if let (Some(t), Some((write, outcome))) = (self.trace.as_mut(), seen) {
                t.record(&crate::trace::Record::Ptwr {
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
                    let rip_at = GuestAddress(frame_gpa + 16);
                    mem.write_obj(frame.rip + em.len, rip_at)
                        .map_err(|e| VmError::Exit(e.to_string()))?;
                    if let Some(zf) = em.zf {
                        let fl = if zf {
                            frame.rflags | 0x40
                        } else {
                            frame.rflags & !0x40
                        };
                        mem.write_obj(fl, GuestAddress(frame_gpa + 32))
                            .map_err(|e| VmError::Exit(e.to_string()))?;
                    }
                    if let Some(rax) = em.rax {
                        regs.rax = rax;
                    }
                    if let Some((r, v)) = em.xchg {
                        fault::set_reg(&mut regs, r, v);
                    }
                    self.vcpu.sync_regs_mut().regs = regs;
                    self.vcpu.set_sync_dirty_reg(SyncReg::Register);
                    return Ok(None);
                }
                Err(why) => note = Some(why),
            }
        }
        let path = fault::describe_path(
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

    fn pio_out(&mut self, port: u16, data: &[u8]) {
        match port {
            p if (devices::serial::COM1_PORT
                ..devices::serial::COM1_PORT + devices::serial::COM1_LEN)
                .contains(&p) =>
            {
                if let Ok(mut s) = self.serial.lock() {
                    s.write(p - devices::serial::COM1_PORT, data);
                }
            }
            devices::exit::EXIT_PORT => self.exit_port.write(0, data),
            _ => debug!("out to unclaimed port {port:#x}"),
        }
    }

    /// The flag that stops this VM: setting it (and kicking the vCPU thread out of
    /// KVM_RUN) ends `run` with [`GuestExit::Stopped`], even in the middle of a long
    /// batched hypercall.
    pub fn stop_flag(&self) -> Arc<AtomicBool> {
        self.stop.clone()
    }

    /// Runs the vCPU until the guest shuts down, faults, or `stop` or the VM's own stop
    /// flag is set.
    pub fn run(&mut self, stop: &AtomicBool) -> Result<GuestExit, VmError> {
        loop {
            if stop.load(Ordering::Relaxed) || self.stop.load(Ordering::Relaxed) {
                return Ok(GuestExit::Stopped);
            }
            self.stats.exits += 1;
            let exit = match self.vcpu.run() {
                Ok(VcpuExit::IoOut(port, data)) => {
                    let data = data.to_vec();
                    match port {
                        HYPERCALL_PORT => self.hypercall()?,
                        FAULT_PORT => self.fault()?,
                        _ => {
                            self.pio_out(port, &data);
                            self.exit_port.code().map(GuestExit::ExitPort)
                        }
                    }
                }
                Ok(VcpuExit::IoIn(port, data)) => {
                    let base = devices::serial::COM1_PORT;
                    if (base..base + devices::serial::COM1_LEN).contains(&port) {
                        if let Ok(mut s) = self.serial.lock() {
                            s.read(port - base, data);
                        }
                    } else {
                        data.fill(0xff);
                    }
                    None
                }
                Ok(VcpuExit::MmioRead(addr, data)) => {
                    if (MMIO_TEST_BASE..MMIO_TEST_BASE + MMIO_TEST_SIZE).contains(&addr) {
                        self.mmio.read(addr - MMIO_TEST_BASE, data);
                    } else {
                        data.fill(0xff);
                    }
                    None
                }
                Ok(VcpuExit::MmioWrite(addr, data)) => {
                    if (MMIO_TEST_BASE..MMIO_TEST_BASE + MMIO_TEST_SIZE).contains(&addr) {
                        self.mmio.write(addr - MMIO_TEST_BASE, data);
                    }
                    None
                }
                Ok(VcpuExit::Shutdown) => {
                    let rip = self.vcpu.get_regs().map(|r| r.rip).unwrap_or(0);
                    Some(GuestExit::TripleFault { rip })
                }
                Ok(VcpuExit::Hlt) => return Err(VmError::Exit("the guest executed HLT".into())),
                Ok(VcpuExit::FailEntry(reason, cpu)) => {
                    return Err(VmError::Exit(format!(
                        "VM entry failed: reason {reason:#x} on cpu {cpu}"
                    )));
                }
                Ok(VcpuExit::Intr) => None,
                Ok(other) => return Err(VmError::Exit(format!("{other:?}"))),
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
        if let Some(t) = self.trace.take() {
            t.finish()?;
        }
        self.stats.mmu = self.machine.stats();
        let mut audit = self.machine.audit().map_err(|e| e.to_string());
        if audit.is_ok() {
            audit = self
                .machine
                .destroy_domain(DOMID)
                .map_err(|e| e.to_string())
                .and_then(|()| self.machine.audit().map_err(|e| e.to_string()));
        }
        self.stats.flush = self.machine.flusher().stats;
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
