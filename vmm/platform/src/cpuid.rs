//! CPUID as Xen answers it to a 64-bit PV guest: the host's leaves, with only the
//! features Xen offers every guest by default (its feature set marks them "A"; the masks
//! below are those bits, word by word), the hypervisor bit set, leaves that describe
//! hardware a PV guest does not own cleared, out-of-range leaves all zero, and Xen's
//! own leaves at 0x40000000 (signature, version, hypercall-page MSR, time, PV
//! parameters).

/// One host CPUID leaf, as the VMM reads them (KVM's supported CPUID).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostLeaf {
    /// EAX input.
    pub leaf: u32,
    /// ECX input (0 where the leaf has no subleaves).
    pub subleaf: u32,
    /// Whether the subleaf selects the answer.
    pub indexed: bool,
    /// EAX, EBX, ECX, EDX.
    pub regs: [u32; 4],
}

/// Register indices.
const EAX: usize = 0;
const EBX: usize = 1;
const ECX: usize = 2;
const EDX: usize = 3;

/// Features Xen offers every guest by default, per (leaf, subleaf, register): the bits
/// of Xen's feature words 0-15 marked "A".
const PV_FEATURES: &[(u32, u32, usize, u32)] = &[
    // Word 0, 1.EDX: FPU DE TSC MSR PAE MCE CX8 APIC SEP MCA CMOV PAT CLFLUSH ACPI MMX
    // FXSR SSE SSE2 SS HTT.
    (0x1, 0, EDX, 0x1fc9_cbf5),
    // Word 1, 1.ECX: SSE3 PCLMULQDQ SSSE3 FMA CX16 SSE4_1 SSE4_2 MOVBE POPCNT AESNI XSAVE
    // AVX F16C RDRAND HYPERVISOR.
    (0x1, 0, ECX, 0xf6d8_3203),
    // Word 2, 0x80000001.EDX: SYSCALL NX MMXEXT FFXSR RDTSCP LM 3DNOWEXT 3DNOW.
    (0x8000_0001, 0, EDX, 0xea50_0800),
    // Word 3, 0x80000001.ECX: LAHF_LM CMP_LEGACY ABM SSE4A MISALIGNSSE 3DNOWPREFETCH XOP
    // FMA4 TBM DBEXT ADDR_MSK_EXT.
    (0x8000_0001, 0, ECX, 0x4421_09e3),
    // Word 4, 0xD:1.EAX: XSAVEOPT XSAVEC XGETBV1.
    (0xd, 1, EAX, 0x7),
    // Word 5, 7:0.EBX: FSGSBASE BMI1 AVX2 BMI2 ERMS RTM AVX512F AVX512DQ RDSEED ADX
    // AVX512_IFMA CLFLUSHOPT CLWB AVX512CD SHA AVX512BW AVX512VL.
    (0x7, 0, EBX, 0xf1af_0b29),
    // Word 6, 7:0.ECX: PREFETCHWT1 AVX512_VBMI AVX512_VBMI2 GFNI VAES VPCLMULQDQ
    // AVX512_VNNI AVX512_BITALG AVX512_VPOPCNTDQ RDPID CLDEMOTE.
    (0x7, 0, ECX, 0x0240_5f43),
    // Word 7, 0x80000007.EDX: none by default.
    (0x8000_0007, 0, EDX, 0),
    // Word 8, 0x80000008.EBX: CLZERO RSTR_FP_ERR_PTRS IBPB SSB_NO BTC_NO IBPB_RET.
    (0x8000_0008, 0, EBX, 0x6400_1005),
    // Word 9, 7:0.EDX: FSRM MD_CLEAR SERIALIZE AVX512_FP16 IBRSB STIBP ARCH_CAPS SSBD.
    (0x7, 0, EDX, 0xac80_4410),
    // Word 10, 7:1.EAX: SHA512 SM3 SM4 AVX_VNNI AVX512_BF16 FZRM FSRS FSRCS AVX_IFMA.
    (0x7, 1, EAX, 0x0080_1c37),
    // Word 11, 0x80000021.EAX.
    (0x8000_0021, 0, EAX, 0x781c_0c65),
    // Word 12, 7:1.EBX: none by default.
    (0x7, 1, EBX, 0),
    // Word 13, 7:2.EDX: INTEL_PSFD MCDT_NO.
    (0x7, 2, EDX, 0x21),
    // Word 14, 7:1.ECX: none by default.
    (0x7, 1, ECX, 0),
    // Word 15, 7:1.EDX: AVX_VNNI_INT8 AVX_NE_CONVERT AVX_VNNI_INT16 PREFETCHI.
    (0x7, 1, EDX, 0x4430),
];

/// 1.EDX.APIC: a PV guest has no local APIC.
const APIC: u32 = 1 << 9;
/// 1.ECX.HYPERVISOR.
const HYPERVISOR: u32 = 1 << 31;
/// 1.ECX.XSAVE and OSXSAVE.
const XSAVE: u32 = 1 << 26;
const OSXSAVE: u32 = 1 << 27;

/// Leaves describing hardware a PV guest does not own: MONITOR/MWAIT, thermal and
/// power, performance monitoring.
const HIDDEN_LEAVES: &[u32] = &[0x5, 0x6, 0xa];

/// The highest basic and extended leaves offered (the ones the feature words above
/// describe; later leaves describe features a PV guest is not offered).
const MAX_BASIC: u32 = 0xd;
const MAX_EXTENDED: u32 = 0x8000_0021;

/// Xen's hypervisor leaves: base, and how many follow it.
pub const XEN_CPUID_BASE: u32 = 0x4000_0000;
const XEN_CPUID_LEAVES: u32 = 5;
/// "XenVMMXenVMM".
const XEN_SIGNATURE: [u32; 3] = [0x566e_6558, 0x6558_4d4d, 0x4d4d_566e];
/// 0x40000002.ECX: `mmu_update` honours MMU_PT_UPDATE_PRESERVE_AD.
const XEN_CPUID_FEAT1_MMU_PT_UPDATE_PRESERVE_AD: u32 = 1 << 0;

/// The CPUID a PV guest sees.
#[derive(Debug, Clone, Default)]
pub struct CpuidPolicy {
    leaves: Vec<HostLeaf>,
    /// Xen's version, `(major << 16) | minor`.
    version: u32,
    /// Bits of the highest machine address.
    maddr_bits: u32,
}

impl CpuidPolicy {
    /// The policy over the host's leaves, for a Xen of `version` (`(major << 16) |
    /// minor`) with machine frames below `max_mfn`.
    ///
    /// ```
    /// use platform::cpuid::{CpuidPolicy, HostLeaf};
    /// let host = [HostLeaf { leaf: 1, subleaf: 0, indexed: false, regs: [0x906ea, 0x0508_0800, 0x7ffa_fbff, 0xbfeb_fbff] }];
    /// let p = CpuidPolicy::new(&host, 0x4_0017, 1 << 20);
    /// let [_, ebx, ecx, edx] = p.query(1, 0);
    /// assert_eq!(ebx, 0x0008_0800, "no initial APIC ID for a PV vCPU");
    /// assert_ne!(ecx & (1 << 31), 0, "hypervisor bit");
    /// assert_eq!(ecx & (1 << 5), 0, "no VMX");
    /// assert_eq!(edx & (1 << 9), 0, "no local APIC");
    /// assert_eq!(p.query(0x4000_0000, 0)[1], u32::from_le_bytes(*b"XenV"));
    /// ```
    pub fn new(host: &[HostLeaf], version: u32, max_mfn: u64) -> CpuidPolicy {
        let mut leaves: Vec<HostLeaf> = host
            .iter()
            .copied()
            .filter(|l| l.leaf <= MAX_BASIC || (0x8000_0000..=MAX_EXTENDED).contains(&l.leaf))
            .filter(|l| l.leaf != 0x7 || l.subleaf <= 2)
            .collect();
        for l in &mut leaves {
            if l.leaf == 0 {
                l.regs[EAX] = l.regs[EAX].min(MAX_BASIC);
            }
            if l.leaf == 0x8000_0000 {
                l.regs[EAX] = l.regs[EAX].min(MAX_EXTENDED);
            }
            if HIDDEN_LEAVES.contains(&l.leaf) {
                l.regs = [0; 4];
            }
            for &(leaf, sub, reg, mask) in PV_FEATURES {
                if l.leaf == leaf && (l.subleaf == sub || !l.indexed) {
                    l.regs[reg] &= mask;
                }
            }
            if l.leaf == 1 {
                // Xen gives a PV vCPU no initial APIC ID (every vCPU reads 0).
                l.regs[EBX] &= 0x00ff_ffff;
                l.regs[EDX] &= !APIC;
                l.regs[ECX] |= HYPERVISOR;
                // Xen leaks OSXSAVE to PV guests whenever XSAVE is offered (Linux
                // relies on it).
                if l.regs[ECX] & XSAVE != 0 {
                    l.regs[ECX] |= OSXSAVE;
                } else {
                    l.regs[ECX] &= !OSXSAVE;
                }
            }
        }
        let maddr_bits = 64 - max_mfn.max(1).leading_zeros() + 12;
        CpuidPolicy {
            leaves,
            version,
            maddr_bits,
        }
    }

    /// The answer to CPUID `leaf`, `subleaf`: EAX, EBX, ECX, EDX.
    pub fn query(&self, leaf: u32, subleaf: u32) -> [u32; 4] {
        if (XEN_CPUID_BASE..XEN_CPUID_BASE + 0x200).contains(&leaf) {
            return self.xen_leaf(leaf & 0xff, subleaf);
        }
        self.leaves
            .iter()
            .find(|l| l.leaf == leaf && (!l.indexed || l.subleaf == subleaf))
            .map_or([0; 4], |l| l.regs)
    }

    /// Whether the CPU is AMD's or Hygon's (by leaf 0's vendor string), whose
    /// instruction decoding differs from Intel's in places (far branches ignore REX.W).
    ///
    /// ```
    /// use platform::cpuid::{CpuidPolicy, HostLeaf};
    /// let amd = HostLeaf { leaf: 0, subleaf: 0, indexed: false, regs: [0xd, 0x6874_7541, 0x444d_4163, 0x6974_6e65] };
    /// assert!(CpuidPolicy::new(&[amd], 0x4_0017, 1 << 20).is_amd());
    /// assert!(!CpuidPolicy::new(&[], 0x4_0017, 1 << 20).is_amd());
    /// ```
    pub fn is_amd(&self) -> bool {
        // "Auth"enticAMD, "Hygo"nGenuine.
        matches!(self.query(0, 0)[1], 0x6874_7541 | 0x6f67_7948)
    }

    fn xen_leaf(&self, idx: u32, subleaf: u32) -> [u32; 4] {
        match idx {
            0 => [
                XEN_CPUID_BASE + XEN_CPUID_LEAVES,
                XEN_SIGNATURE[0],
                XEN_SIGNATURE[1],
                XEN_SIGNATURE[2],
            ],
            1 => [self.version, 0, 0, 0],
            // One hypercall page, written through MSR 0x40000000.
            2 => [
                1,
                XEN_CPUID_BASE,
                XEN_CPUID_FEAT1_MMU_PT_UPDATE_PRESERVE_AD,
                0,
            ],
            5 if subleaf == 0 => [0, self.maddr_bits, 0, 0],
            _ => [0; 4],
        }
    }
}
