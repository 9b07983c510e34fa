//! Domains and their vCPUs: what the PV MMU keeps per guest.

use std::ops::RangeInclusive;

use crate::entry::Mfn;

/// How to create a domain.
///
/// ```
/// use pvmmu::DomainConfig;
/// let cfg = DomainConfig::new(1).vcpus(2).iomem(0xfee00..=0xfee00);
/// assert_eq!(cfg.vcpus, 2);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainConfig {
    /// Domain id (below `DOMID_FIRST_RESERVED`).
    pub id: u16,
    /// Number of vCPUs (1..=64).
    pub vcpus: u32,
    /// Control-domain privilege: may operate on other domains' frames and tables.
    pub privileged: bool,
    /// Domain whose device model this domain is (may touch it like a privileged domain).
    pub device_model_of: Option<u16>,
    /// I/O-memory frames the domain may map (inclusive MFN ranges).
    pub iomem: Vec<RangeInclusive<u64>>,
    /// Whether the domain has I/O-port access rights.
    pub ioports: bool,
}

impl DomainConfig {
    /// An unprivileged domain `id` with one vCPU and no I/O rights.
    pub fn new(id: u16) -> DomainConfig {
        DomainConfig {
            id,
            vcpus: 1,
            privileged: false,
            device_model_of: None,
            iomem: Vec::new(),
            ioports: false,
        }
    }

    /// Sets the number of vCPUs.
    pub fn vcpus(mut self, n: u32) -> Self {
        self.vcpus = n;
        self
    }

    /// Makes the domain privileged (a control domain).
    pub fn privileged(mut self, yes: bool) -> Self {
        self.privileged = yes;
        self
    }

    /// Grants I/O-memory access to a range of frames.
    pub fn iomem(mut self, frames: RangeInclusive<u64>) -> Self {
        self.iomem.push(frames);
        self
    }

    /// Grants I/O-port rights.
    pub fn ioports(mut self, yes: bool) -> Self {
        self.ioports = yes;
        self
    }
}

/// Pages in a vCPU's LDT window (8192 descriptors of 8 bytes).
pub const LDT_PAGES: usize = 16;

/// Per-vCPU PV MMU state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Vcpu {
    /// Kernel root table (`guest_table`, set by `NEW_BASEPTR`); holds a general and an
    /// L4 type reference.
    pub kernel_root: Option<Mfn>,
    /// User root table (`guest_table_user`, set by `NEW_USER_BASEPTR`).
    pub user_root: Option<Mfn>,
    /// LDT base VA (`SET_LDT`).
    pub ldt_base: u64,
    /// LDT entries (`SET_LDT`).
    pub ldt_ents: u32,
    /// The frames filling the LDT window (see [`crate::ldt`]), each holding a general
    /// and a `seg_desc` type reference.
    pub ldt_mapped: [Option<Mfn>; LDT_PAGES],
    /// Whether the LDT or its window changed since the embedder last asked.
    pub(crate) ldt_changed: bool,
    /// Whether the vCPU is in guest kernel mode (hypercalls are only served then).
    pub in_kernel: bool,
    /// Whether a root changed since the embedder last asked.
    pub(crate) roots_changed: bool,
    /// The GDT's frames (`set_gdt`), each holding a general and a `seg_desc` type
    /// reference.
    pub gdt_frames: Vec<Mfn>,
    /// Entries of the GDT.
    pub gdt_ents: u32,
    /// Whether the GDT changed since the embedder last asked.
    pub(crate) gdt_changed: bool,
    /// The frame holding the vCPU's registered `vcpu_info` (see [`crate::area`]),
    /// holding a general and a writable type reference.
    pub vcpu_info_frame: Option<Mfn>,
    /// The guest-physical address of its runstate area registered by
    /// `VCPUOP_register_runstate_phys_area` (see [`crate::area`]); its frame holds a
    /// general and a writable type reference.
    pub runstate_phys_area: Option<u64>,
    /// The same for `VCPUOP_register_vcpu_time_phys_area`.
    pub time_phys_area: Option<u64>,
    /// Tables whose de-validation stopped part-way in this vCPU's calls (Xen's
    /// `old_guest_table`): its next `mmu_update` or `mmuext_op` finishes them first.
    pub(crate) parked: Vec<Mfn>,
}

/// A domain's PV MMU state.
#[derive(Debug, Clone)]
pub struct Domain {
    pub(crate) config: DomainConfig,
    pub(crate) vcpus: Vec<Vcpu>,
    pub(crate) vm_assist: u64,
    /// Whether an L2..L4 entry of this domain changed since its last full flush.
    pub(crate) non_leaf_pending: bool,
    /// What its TLBs may hold stale (behind a lock: batches served concurrently add
    /// to it).
    pub(crate) tlb: crate::flush::tlb::SharedTlb,
    /// Its grant mappings (see [`crate::grant`]).
    pub(crate) maptrack: crate::maptrack::Maptrack,
    /// The PIRQ EOI bitmap frame (see [`crate::area`]): a general and a writable type
    /// reference.
    pub(crate) pirq_eoi_frame: Option<Mfn>,
    /// The most pages it may hold (see [`crate::reservation`]); `None`: no cap.
    pub(crate) max_pages: Option<u64>,
}

impl Domain {
    pub(crate) fn new(config: DomainConfig) -> Domain {
        let vcpus = (0..config.vcpus)
            .map(|_| Vcpu {
                in_kernel: true,
                ..Vcpu::default()
            })
            .collect();
        Domain {
            config,
            vcpus,
            vm_assist: 0,
            non_leaf_pending: false,
            tlb: Default::default(),
            maptrack: crate::maptrack::Maptrack::default(),
            pirq_eoi_frame: None,
            max_pages: None,
        }
    }

    /// The domain's id.
    pub fn id(&self) -> u16 {
        self.config.id
    }

    /// The configuration it was created with.
    pub fn config(&self) -> &DomainConfig {
        &self.config
    }

    /// Its vCPUs.
    pub fn vcpus(&self) -> &[Vcpu] {
        &self.vcpus
    }

    /// The vm_assist bits enabled (bit n = `VMASST_TYPE` n).
    pub fn vm_assist(&self) -> u64 {
        self.vm_assist
    }

    /// Whether `VMASST_TYPE` `ty` is enabled.
    pub fn has_assist(&self, ty: u32) -> bool {
        ty < 64 && self.vm_assist & (1 << ty) != 0
    }

    /// Whether the domain may map I/O-memory frame `mfn`.
    pub fn iomem_permitted(&self, mfn: u64) -> bool {
        self.config.iomem.iter().any(|r| r.contains(&mfn))
    }

    /// Xen's `cache_flush_permitted`: any I/O-memory or I/O-port rights.
    pub fn cache_flush_permitted(&self) -> bool {
        !self.config.iomem.is_empty() || self.config.ioports
    }

    /// Whether this domain may operate on domain `other` (itself, or by privilege).
    pub fn may_control(&self, other: u16) -> bool {
        other == self.config.id
            || self.config.privileged
            || self.config.device_model_of == Some(other)
    }
}
