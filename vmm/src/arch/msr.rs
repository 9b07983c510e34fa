//! The MSR numbers the VMM loads into a vCPU or emulates for a PV guest.

/// IA32_APIC_BASE.
pub const APIC_BASE: u32 = 0x1b;
/// IA32_PAT.
pub const PAT: u32 = 0x277;
/// IA32_PERF_CAPABILITIES.
pub const PERF_CAPABILITIES: u32 = 0x345;
/// IA32_EFER.
pub const EFER: u32 = 0xc000_0080;
/// IA32_TSC: the time-stamp counter.
pub const TSC: u32 = 0x10;
/// STAR: the selectors `syscall` and `sysret` load.
pub const STAR: u32 = 0xc000_0081;
/// LSTAR: where a 64-bit `syscall` enters.
pub const LSTAR: u32 = 0xc000_0082;
/// CSTAR: where a compatibility-mode `syscall` enters.
pub const CSTAR: u32 = 0xc000_0083;
/// SFMASK: the RFLAGS bits `syscall` clears.
pub const SFMASK: u32 = 0xc000_0084;
/// FS.base.
pub const FS_BASE: u32 = 0xc000_0100;
/// GS.base.
pub const GS_BASE: u32 = 0xc000_0101;
/// IA32_KERNEL_GS_BASE: what `swapgs` exchanges with GS.base.
pub const SHADOW_GS_BASE: u32 = 0xc000_0102;

/// IA32_MCG_CAP: machine-check capabilities.
pub const MCG_CAP: u32 = 0x179;
/// IA32_MCG_STATUS.
pub const MCG_STATUS: u32 = 0x17a;
/// IA32_MCG_CTL.
pub const MCG_CTL: u32 = 0x17b;
/// The first machine-check bank MSR (MC0_CTL); each bank has CTL, STATUS, ADDR, MISC.
pub const MC_BANKS_FIRST: u32 = 0x400;
/// The last bank MSR Xen routes to its virtual MCA (32 banks' worth).
pub const MC_BANKS_LAST: u32 = 0x400 + 4 * 32 - 1;
/// Banks Xen gives a guest (`GUEST_MC_BANK_NUM`).
pub const GUEST_MC_BANKS: u64 = 2;
/// MCG_CAP: threshold-based error status present.
pub const MCG_TES_P: u64 = 1 << 11;
/// MCG_CAP: software error recovery supported.
pub const MCG_SER_P: u64 = 1 << 24;
