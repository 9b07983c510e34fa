//! Xen ELF notes (`XEN_ELFNOTE_*`) and guest feature flags (`XENFEAT_*`).
//!
//! Xen notes are ELF notes whose owner name is [`XEN_ELFNOTE_OWNER`]
//! (`"Xen"`, stored NUL terminated as [`XEN_ELFNOTE_OWNER_BYTES`]).
//!
//! Defaults when a note is absent: `VIRT_BASE` 0, `PADDR_OFFSET` 0 (when
//! notes exist), `ENTRY` = ELF `e_entry`.
#![allow(non_upper_case_globals)]

/// Owner name of Xen ELF notes.
pub const XEN_ELFNOTE_OWNER: &str = "Xen";
/// Owner name as stored in the note (`namesz` = 4, NUL terminated).
pub const XEN_ELFNOTE_OWNER_BYTES: &[u8; 4] = b"Xen\0";

/// Padding / informational.
pub const XEN_ELFNOTE_INFO: u32 = 0;
/// Entry point (virtual address).
pub const XEN_ELFNOTE_ENTRY: u32 = 1;
/// Virtual address of the page to fill with hypercall stubs.
pub const XEN_ELFNOTE_HYPERCALL_PAGE: u32 = 2;
/// Virtual base of the image.
pub const XEN_ELFNOTE_VIRT_BASE: u32 = 3;
/// Offset between virtual and physical load addresses.
pub const XEN_ELFNOTE_PADDR_OFFSET: u32 = 4;
/// ABI the guest expects (string, e.g. [`ELFNOTE_XEN_VERSION_XEN_3_0`]).
pub const XEN_ELFNOTE_XEN_VERSION: u32 = 5;
/// Guest OS name (informational string).
pub const XEN_ELFNOTE_GUEST_OS: u32 = 6;
/// Guest version (informational string).
pub const XEN_ELFNOTE_GUEST_VERSION: u32 = 7;
/// Loader kind (string, [`ELFNOTE_LOADER_GENERIC`]).
pub const XEN_ELFNOTE_LOADER: u32 = 8;
/// PAE mode (32-bit guests only).
pub const XEN_ELFNOTE_PAE_MODE: u32 = 9;
/// `|`-separated feature list; a leading `!` marks a feature as required
/// (see [`parse_features`]).
pub const XEN_ELFNOTE_FEATURES: u32 = 10;
/// BSD symbol table loading.
pub const XEN_ELFNOTE_BSD_SYMTAB: u32 = 11;
/// Lowest hypervisor VA (32-bit guests).
pub const XEN_ELFNOTE_HV_START_LOW: u32 = 12;
/// L1 MFN-valid mask/value.
pub const XEN_ELFNOTE_L1_MFN_VALID: u32 = 13;
/// Guest supports suspend cancellation.
pub const XEN_ELFNOTE_SUSPEND_CANCEL: u32 = 14;
/// Virtual address for the initial p2m.
pub const XEN_ELFNOTE_INIT_P2M: u32 = 15;
/// Guest understands `mod_start` as a PFN.
pub const XEN_ELFNOTE_MOD_START_PFN: u32 = 16;
/// Bitmap of supported features (numeric form of `FEATURES`).
pub const XEN_ELFNOTE_SUPPORTED_FEATURES: u32 = 17;
/// 32-bit physical entry point (PVH).
pub const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;
/// Highest defined note type.
pub const XEN_ELFNOTE_MAX: u32 = XEN_ELFNOTE_PHYS32_ENTRY;

/// Value of the `XEN_VERSION` note for the 3.0 ABI.
pub const ELFNOTE_XEN_VERSION_XEN_3_0: &str = "xen-3.0";
/// Value of the `LOADER` note for a generic ELF loader.
pub const ELFNOTE_LOADER_GENERIC: &str = "generic";

abi_enum! {
    /// A Xen ELF note type.
    pub enum ElfNoteType: u32, raw u32 {
        /// [`XEN_ELFNOTE_INFO`]
        Info = XEN_ELFNOTE_INFO => "INFO",
        /// [`XEN_ELFNOTE_ENTRY`]
        Entry = XEN_ELFNOTE_ENTRY => "ENTRY",
        /// [`XEN_ELFNOTE_HYPERCALL_PAGE`]
        HypercallPage = XEN_ELFNOTE_HYPERCALL_PAGE => "HYPERCALL_PAGE",
        /// [`XEN_ELFNOTE_VIRT_BASE`]
        VirtBase = XEN_ELFNOTE_VIRT_BASE => "VIRT_BASE",
        /// [`XEN_ELFNOTE_PADDR_OFFSET`]
        PaddrOffset = XEN_ELFNOTE_PADDR_OFFSET => "PADDR_OFFSET",
        /// [`XEN_ELFNOTE_XEN_VERSION`]
        XenVersion = XEN_ELFNOTE_XEN_VERSION => "XEN_VERSION",
        /// [`XEN_ELFNOTE_GUEST_OS`]
        GuestOs = XEN_ELFNOTE_GUEST_OS => "GUEST_OS",
        /// [`XEN_ELFNOTE_GUEST_VERSION`]
        GuestVersion = XEN_ELFNOTE_GUEST_VERSION => "GUEST_VERSION",
        /// [`XEN_ELFNOTE_LOADER`]
        Loader = XEN_ELFNOTE_LOADER => "LOADER",
        /// [`XEN_ELFNOTE_PAE_MODE`]
        PaeMode = XEN_ELFNOTE_PAE_MODE => "PAE_MODE",
        /// [`XEN_ELFNOTE_FEATURES`]
        Features = XEN_ELFNOTE_FEATURES => "FEATURES",
        /// [`XEN_ELFNOTE_BSD_SYMTAB`]
        BsdSymtab = XEN_ELFNOTE_BSD_SYMTAB => "BSD_SYMTAB",
        /// [`XEN_ELFNOTE_HV_START_LOW`]
        HvStartLow = XEN_ELFNOTE_HV_START_LOW => "HV_START_LOW",
        /// [`XEN_ELFNOTE_L1_MFN_VALID`]
        L1MfnValid = XEN_ELFNOTE_L1_MFN_VALID => "L1_MFN_VALID",
        /// [`XEN_ELFNOTE_SUSPEND_CANCEL`]
        SuspendCancel = XEN_ELFNOTE_SUSPEND_CANCEL => "SUSPEND_CANCEL",
        /// [`XEN_ELFNOTE_INIT_P2M`]
        InitP2m = XEN_ELFNOTE_INIT_P2M => "INIT_P2M",
        /// [`XEN_ELFNOTE_MOD_START_PFN`]
        ModStartPfn = XEN_ELFNOTE_MOD_START_PFN => "MOD_START_PFN",
        /// [`XEN_ELFNOTE_SUPPORTED_FEATURES`]
        SupportedFeatures = XEN_ELFNOTE_SUPPORTED_FEATURES => "SUPPORTED_FEATURES",
        /// [`XEN_ELFNOTE_PHYS32_ENTRY`]
        Phys32Entry = XEN_ELFNOTE_PHYS32_ENTRY => "PHYS32_ENTRY",
    }
}

raw_error! {
    /// An ELF note type Xen does not define.
    UnknownElfNote(u32), "unknown Xen ELF note type {}"
}

abi_try_from!(ElfNoteType, u32, UnknownElfNote);

// ---------------------------------------------------------------------------
// XENFEAT_*
// ---------------------------------------------------------------------------

/// Guest writes to its L1 page tables are trapped and emulated ("ptwr").
pub const XENFEAT_writable_page_tables: u32 = 0;
/// Descriptor tables may be mapped writable.
pub const XENFEAT_writable_descriptor_tables: u32 = 1;
/// Guest physical memory is auto-translated (HVM/PVH style).
pub const XENFEAT_auto_translated_physmap: u32 = 2;
/// Guest kernel runs in ring 0.
pub const XENFEAT_supervisor_mode_kernel: u32 = 3;
/// PAE page directories may live above 4 GiB (32-bit only).
pub const XENFEAT_pae_pgdir_above_4gb: u32 = 4;
/// `MMU_PT_UPDATE_PRESERVE_AD` is available.
pub const XENFEAT_mmu_pt_update_preserve_ad: u32 = 5;
/// Highmem assist (32-bit).
pub const XENFEAT_highmem_assist: u32 = 6;
/// Grant mappings may carry guest-available PTE bits.
pub const XENFEAT_gnttab_map_avail_bits: u32 = 7;
/// HVM callback vector.
pub const XENFEAT_hvm_callback_vector: u32 = 8;
/// HVM safe pvclock.
pub const XENFEAT_hvm_safe_pvclock: u32 = 9;
/// HVM PIRQs.
pub const XENFEAT_hvm_pirqs: u32 = 10;
/// The domain is dom0.
pub const XENFEAT_dom0: u32 = 11;
/// Grant map identity.
pub const XENFEAT_grant_map_identity: u32 = 12;
/// vNUMA memory_op support.
pub const XENFEAT_memory_op_vnode_supported: u32 = 13;
/// Arm SMCCC supported.
pub const XENFEAT_ARM_SMCCC_supported: u32 = 14;
/// Linux may place the RSDP anywhere.
pub const XENFEAT_linux_rsdp_unrestricted: u32 = 15;
/// Domain memory is not direct mapped.
pub const XENFEAT_not_direct_mapped: u32 = 16;
/// Domain memory is direct mapped.
pub const XENFEAT_direct_mapped: u32 = 17;
/// `VCPUOP_register_runstate_phys_area` is available.
pub const XENFEAT_runstate_phys_area: u32 = 18;
/// `VCPUOP_register_vcpu_time_phys_area` is available.
pub const XENFEAT_vcpu_time_phys_area: u32 = 19;

/// Number of 32-bit feature submaps (`XENFEAT_NR_SUBMAPS`).
pub const XENFEAT_NR_SUBMAPS: u32 = 1;

/// Every feature name with its bit number, in bit order.
pub const XEN_FEATURES: &[(&str, u32)] = &[
    ("writable_page_tables", XENFEAT_writable_page_tables),
    (
        "writable_descriptor_tables",
        XENFEAT_writable_descriptor_tables,
    ),
    ("auto_translated_physmap", XENFEAT_auto_translated_physmap),
    ("supervisor_mode_kernel", XENFEAT_supervisor_mode_kernel),
    ("pae_pgdir_above_4gb", XENFEAT_pae_pgdir_above_4gb),
    (
        "mmu_pt_update_preserve_ad",
        XENFEAT_mmu_pt_update_preserve_ad,
    ),
    ("highmem_assist", XENFEAT_highmem_assist),
    ("gnttab_map_avail_bits", XENFEAT_gnttab_map_avail_bits),
    ("hvm_callback_vector", XENFEAT_hvm_callback_vector),
    ("hvm_safe_pvclock", XENFEAT_hvm_safe_pvclock),
    ("hvm_pirqs", XENFEAT_hvm_pirqs),
    ("dom0", XENFEAT_dom0),
    ("grant_map_identity", XENFEAT_grant_map_identity),
    (
        "memory_op_vnode_supported",
        XENFEAT_memory_op_vnode_supported,
    ),
    ("ARM_SMCCC_supported", XENFEAT_ARM_SMCCC_supported),
    ("linux_rsdp_unrestricted", XENFEAT_linux_rsdp_unrestricted),
    ("not_direct_mapped", XENFEAT_not_direct_mapped),
    ("direct_mapped", XENFEAT_direct_mapped),
];

/// Looks a feature up by its exact (case-sensitive) name, e.g.
/// `"writable_page_tables"` → `Some(0)`.
#[must_use]
pub fn feature_by_name(name: &str) -> Option<u32> {
    XEN_FEATURES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|&(_, bit)| bit)
}

/// The name of feature bit `bit`, if defined.
#[must_use]
pub fn feature_name(bit: u32) -> Option<&'static str> {
    XEN_FEATURES
        .iter()
        .find(|(_, b)| *b == bit)
        .map(|&(n, _)| n)
}

/// One item of a `FEATURES` note string.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FeatureRequest<'a> {
    /// The feature name (without the `!`).
    pub name: &'a str,
    /// `true` if the item had a leading `!` (the guest *requires* it);
    /// otherwise it is merely supported.
    pub required: bool,
}

impl FeatureRequest<'_> {
    /// The feature's bit number, or `None` if the name is unknown.
    #[must_use]
    pub fn bit(&self) -> Option<u32> {
        feature_by_name(self.name)
    }
}

/// Iterator over the items of a `FEATURES` note string; see
/// [`parse_features`].
#[derive(Clone, Debug)]
pub struct FeatureIter<'a> {
    rest: core::str::Split<'a, char>,
}

impl<'a> Iterator for FeatureIter<'a> {
    type Item = FeatureRequest<'a>;

    fn next(&mut self) -> Option<FeatureRequest<'a>> {
        loop {
            let item = self.rest.next()?;
            let (name, required) = match item.strip_prefix('!') {
                Some(n) => (n, true),
                None => (item, false),
            };
            if !name.is_empty() {
                return Some(FeatureRequest { name, required });
            }
        }
    }
}

/// Splits a `FEATURES` note value (`|`-separated, without its terminating
/// NUL) into items; empty items are skipped. Unknown names are yielded
/// too (check [`FeatureRequest::bit`]).
///
/// ```
/// use pvmmu_abi::elfnote::{parse_features, XENFEAT_writable_page_tables};
/// let mut it = parse_features("!writable_page_tables|pae_pgdir_above_4gb");
/// let first = it.next().unwrap();
/// assert!(first.required);
/// assert_eq!(first.bit(), Some(XENFEAT_writable_page_tables));
/// assert_eq!(it.next().unwrap().name, "pae_pgdir_above_4gb");
/// assert!(it.next().is_none());
/// ```
#[must_use]
pub fn parse_features(s: &str) -> FeatureIter<'_> {
    FeatureIter { rest: s.split('|') }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::string::ToString;
    use std::vec::Vec;

    #[test]
    fn note_types() {
        assert_eq!(ElfNoteType::ALL.len(), 19);
        for (i, &n) in ElfNoteType::ALL.iter().enumerate() {
            assert_eq!(n.raw(), i as u32);
            assert_eq!(ElfNoteType::try_from(n.raw()), Ok(n));
        }
        for bad in [19u32, 20, 0x100, u32::MAX] {
            assert_eq!(ElfNoteType::try_from(bad), Err(UnknownElfNote(bad)));
        }
        assert_eq!(ElfNoteType::HypercallPage.to_string(), "HYPERCALL_PAGE");
        assert_eq!(&XEN_ELFNOTE_OWNER_BYTES[..3], XEN_ELFNOTE_OWNER.as_bytes());
    }

    #[test]
    fn features() {
        assert_eq!(XEN_FEATURES.len(), 18);
        for (i, &(name, bit)) in XEN_FEATURES.iter().enumerate() {
            assert_eq!(bit, i as u32);
            assert_eq!(feature_by_name(name), Some(bit));
            assert_eq!(feature_name(bit), Some(name));
        }
        assert_eq!(feature_by_name("ARM_SMCCC_supported"), Some(14));
        assert_eq!(feature_by_name("direct_mapped"), Some(17));
        assert_eq!(feature_by_name("Writable_page_tables"), None);
        assert_eq!(feature_by_name(""), None);
        assert_eq!(feature_name(18), None);
    }

    #[test]
    fn feature_parsing() {
        let items: Vec<_> = parse_features("|!writable_page_tables||bogus|!|").collect();
        assert_eq!(
            items,
            [
                FeatureRequest {
                    name: "writable_page_tables",
                    required: true
                },
                FeatureRequest {
                    name: "bogus",
                    required: false
                },
            ]
        );
        assert_eq!(items[1].bit(), None);
        assert_eq!(parse_features("").count(), 0);
    }
}
