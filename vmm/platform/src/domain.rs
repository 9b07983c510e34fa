//! The one recipe for a domain: what describes it ([`DomainSpec`]) and how it is built
//! ([`Domain::build`]): guest memory, the hypervisor area in the top frames, the PV MMU
//! over that memory with the embedder's flush hook, domain [`DOMID`] owning the rest,
//! and the guest loaded by the domain builder. KVM runs, `pvmmu dump`, trace replay and
//! the fuzzers all start from this same state.

use std::ops::ControlFlow;

use devices::mmio_test::{MMIO_TEST_BASE, MMIO_TEST_SIZE};
use pvmmu::{DomainConfig, Machine, MachineConfig, Mfn, TlbFlush, Walker};
use vm_memory::{GuestAddress, GuestMemoryMmap};

use crate::builder::{self, BootInfo};
use crate::elf::{self, GuestImage};
use crate::hvarea::{self, HvArea};
use crate::layout::PAGE;

/// The guest's domain id.
pub const DOMID: u16 = 1;

/// The backend domain: on a Xen host the guest's xenstore and console backends live in
/// the control domain 0, which always exists; here the VMM serves them, and domain 0
/// exists in the PV MMU (privileged, no memory, never run) so that a guest naming it
/// gets what a domU gets on Xen (its operations on it refused for permission, its grant
/// table granting the guest nothing), not "no such domain".
pub const BACKEND_DOMID: u16 = 0;

/// Smallest and largest guest memory, in MiB.
pub const MEMORY_MIB: std::ops::RangeInclusive<u64> = 16..=4096;

/// Work a batched hypercall may do before it stops at a preemption point and is
/// re-issued by the guest ([`pvmmu::Machine::set_preempt_budget`]): entries processed
/// plus entries validated. Every user of a domain built here (the VMM, replay, the
/// fuzzers) has the same, so a replay preempts where the run did.
pub const PREEMPT_BUDGET: u64 = 16_384;

// RAM (from 0) ends at or below the MMIO test device whatever the size.
const _: () = assert!(*MEMORY_MIB.end() << 20 <= MMIO_TEST_BASE);

/// The PV MMU over the VMM's guest memory with flush hook `F`.
pub type Mach<F> = Machine<GuestMemoryMmap<()>, F>;

/// Errors building a domain.
#[derive(Debug, thiserror::Error)]
pub enum DomainError {
    /// A memory size outside [`MEMORY_MIB`].
    #[error("memory size {0} MiB is not supported (16..=4096)")]
    MemorySize(u64),
    /// A vCPU count the PV MMU refuses.
    #[error("{0} vCPUs are not supported")]
    Vcpus(u32),
    /// Guest memory could not be allocated.
    #[error("guest memory: {0}")]
    Memory(#[from] vm_memory::mmap::FromRangesError),
    /// The guest image is bad.
    #[error("guest image: {0}")]
    Image(#[from] elf::ElfError),
    /// The hypervisor area could not be built.
    #[error("hypervisor area: {0}")]
    HvArea(#[from] hvarea::HvAreaError),
    /// The domain builder failed.
    #[error("domain builder: {0}")]
    Build(#[from] builder::BuildError),
    /// The PV MMU refused the embedder.
    #[error("pvmmu: {0}")]
    Machine(#[from] pvmmu::MachineError),
    /// Walking the built page tables failed (`dump`).
    #[error("page tables: {0}")]
    Walk(#[from] pvmmu::WalkError),
}

/// What a domain is made of: everything a run, a dump or a trace replay needs to build
/// the same domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainSpec {
    /// Guest RAM in MiB.
    pub memory_mib: u64,
    /// Number of vCPUs.
    pub vcpus: u32,
    /// The guest's PV ELF image.
    pub image: Vec<u8>,
    /// Guest command line (`start_info.cmd_line`).
    pub cmdline: String,
    /// Whether the domain may map the MMIO test device (I/O-memory permission).
    pub iomem: bool,
    /// The boot module (an initrd), if any.
    pub initrd: Option<Vec<u8>>,
}

impl DomainSpec {
    /// A one-vCPU domain of `memory_mib` MiB running `image`, with I/O-memory permission
    /// for the MMIO test device and an empty command line.
    pub fn new(image: Vec<u8>, memory_mib: u64) -> DomainSpec {
        DomainSpec {
            memory_mib,
            vcpus: 1,
            image,
            cmdline: String::new(),
            iomem: true,
            initrd: None,
        }
    }

    /// Guest RAM in frames.
    pub fn frames(&self) -> u64 {
        (self.memory_mib << 20) / PAGE
    }

    /// Checks the sizes and parses the image: the errors a run can report before
    /// allocating anything.
    pub fn check(&self) -> Result<GuestImage, DomainError> {
        if !MEMORY_MIB.contains(&self.memory_mib) {
            return Err(DomainError::MemorySize(self.memory_mib));
        }
        if self.vcpus == 0 || self.vcpus > 64 {
            return Err(DomainError::Vcpus(self.vcpus));
        }
        Ok(elf::parse(&self.image)?)
    }

    /// Allocates the guest memory (anonymous, at guest-physical 0).
    pub fn guest_memory(&self) -> Result<GuestMemoryMmap<()>, DomainError> {
        if !MEMORY_MIB.contains(&self.memory_mib) {
            return Err(DomainError::MemorySize(self.memory_mib));
        }
        let size = usize::try_from(self.memory_mib << 20)
            .map_err(|_| DomainError::MemorySize(self.memory_mib))?;
        Ok(GuestMemoryMmap::from_ranges(&[(GuestAddress(0), size)])?)
    }
}

/// A built domain: the PV MMU with the guest loaded, ready for its first instruction.
#[derive(Debug)]
pub struct Domain<F> {
    /// The PV MMU (guest memory, frame table, the domain).
    pub machine: Mach<F>,
    /// The hypervisor area.
    pub hv: HvArea,
    /// Where the guest starts.
    pub boot: BootInfo,
}

impl<F: TlbFlush> Domain<F> {
    /// Builds the domain of `spec` in `mem` (from [`DomainSpec::guest_memory`]) with
    /// flush hook `flusher`.
    pub fn build(
        spec: &DomainSpec,
        mem: GuestMemoryMmap<()>,
        flusher: F,
    ) -> Result<Domain<F>, DomainError> {
        let image = spec.check()?;
        let frames = spec.frames();
        let hv = hvarea::build(&mem, frames, spec.vcpus)?;
        let config = MachineConfig {
            xen_l4_slots: hv.l4_slots,
            ro_mmio: Vec::new(),
            m2p_mirror: Some(hv.m2p_gpa),
        };
        let mut machine = Machine::with_flusher(mem, config, flusher)?;
        machine.set_preempt_budget(Some(PREEMPT_BUDGET));
        let mut dom = DomainConfig::new(DOMID).vcpus(spec.vcpus);
        if spec.iomem {
            dom = dom.iomem(MMIO_TEST_BASE / PAGE..=(MMIO_TEST_BASE + MMIO_TEST_SIZE - 1) / PAGE);
        }
        machine.create_domain(dom)?;
        machine.create_domain(DomainConfig::new(BACKEND_DOMID).privileged(true))?;
        // The domain's frames, its grant area (frames the hypervisor shares with it,
        // the first at once, as Xen allocates one grant frame at domain creation), the
        // hypervisor area.
        let grant_first = hv
            .first_frame
            .checked_sub(crate::grant::GRANT_AREA_FRAMES)
            .ok_or(hvarea::HvAreaError::TooSmall(
                crate::grant::GRANT_AREA_FRAMES,
            ))?;
        machine.assign_frames(DOMID, (0..grant_first).map(Mfn))?;
        machine.share_frames(DOMID, [Mfn(grant_first)], true)?;
        machine.reserve_xen_frames((hv.first_frame..frames).map(Mfn))?;
        let mut boot = builder::build(
            &mut machine,
            DOMID,
            grant_first,
            &image,
            &spec.image,
            &spec.cmdline,
            spec.initrd.as_deref(),
        )?;
        boot.grant_first = grant_first;
        // The toolstack's max_mem: what the domain was built with.
        let built = machine.tot_pages(DOMID);
        machine.set_max_pages(DOMID, Some(built))?;
        boot.machine_frames = frames;
        boot.m2p_first = hv.m2p_gpa / PAGE;
        vm_memory::Bytes::write_slice(
            machine.memory(),
            &[0u8; PAGE as usize],
            vm_memory::GuestAddress(grant_first * PAGE),
        )
        .map_err(hvarea::HvAreaError::from)?;
        log::info!(
            "built domain {DOMID}: entry {:#x}, L4 {}, {} pages mapped",
            boot.entry,
            boot.l4,
            boot.mapped_pages
        );
        Ok(Domain { machine, hv, boot })
    }

    /// Builds the domain of `spec` in fresh guest memory.
    pub fn create(spec: &DomainSpec, flusher: F) -> Result<Domain<F>, DomainError> {
        let mem = spec.guest_memory()?;
        Domain::build(spec, mem, flusher)
    }
}

impl<F> Domain<F> {
    /// The PV state of vCPU `vcpu`, fresh (no traps, no callbacks), its `vcpu_info` in
    /// the shared_info page.
    pub fn pv_vcpu(&self, vcpu: u32) -> crate::pv::PvVcpu {
        crate::pv::PvVcpu::new(
            pvmmu::Caller::new(DOMID, vcpu),
            self.boot.shared_info + u64::from(vcpu) * pvmmu_abi::shared_info::VCPU_INFO_SIZE as u64,
        )
    }
}

/// `pvmmu dump`: builds the domain of `spec` without running it and describes its
/// initial page tables, ptdump style, one line per range.
pub fn dump(spec: &DomainSpec) -> Result<Vec<String>, DomainError> {
    let d = Domain::create(spec, pvmmu::NoFlush)?;
    let mut out = vec![format!(
        "L4 {} (entry {:#x}, start_info {:#x})",
        d.boot.l4, d.boot.entry, d.boot.start_info
    )];
    let ranges = Walker::new(d.machine.memory()).dump(d.boot.l4)?;
    out.extend(ranges.iter().map(ToString::to_string));
    Ok(out)
}

/// The guest's page-table path to `va` under `root`, for fault reports.
pub fn describe_path(mem: &GuestMemoryMmap<()>, root: Option<Mfn>, va: u64) -> String {
    use pvmmu::{VaRange, Visit};
    let Some(root) = root else {
        return "no kernel root".into();
    };
    let mut out = format!("L4 {root}");
    let r = Walker::new(mem).apply_to_existing_page_range(root, VaRange::page(va), |v| {
        match v {
            Visit::Ptes(b) => {
                for (e, l) in b.path().iter().zip(["L4e", "L3e", "L2e"]) {
                    out.push_str(&format!(" -> {l} {e}"));
                }
                out.push_str(&format!(" -> L1e {}", b.get(0)));
            }
            Visit::Superpage(b) => {
                out.push_str(&format!(" -> {} superpage {}", b.level(), b.get(0)))
            }
            Visit::Hole(h) => out.push_str(&format!(" -> not present at {}", h.level)),
        }
        ControlFlow::<()>::Break(())
    });
    if let Err(e) = r {
        out.push_str(&format!(" -> {e}"));
    }
    out
}
