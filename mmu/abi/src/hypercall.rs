//! Hypercall numbers, the 64-bit PV calling convention and the hypercall
//! page.
//!
//! Calling convention (64-bit PV): number in `rax`; arguments 1..5 in `rdi`,
//! `rsi`, `rdx`, `r10`, `r8`; result in `rax` (0 / a positive value, or a
//! negated [`Errno`](crate::Errno)). An unknown number returns `-ENOSYS`.
//! A `SYSCALL` from guest *kernel* mode is the hypercall instruction; from
//! guest *user* mode it is bounced to the registered syscall callback.
#![allow(non_upper_case_globals)]

/// `set_trap_table(const trap_info_t *traps)`.
pub const HYPERVISOR_set_trap_table: u64 = 0;
/// `mmu_update(mmu_update_t *reqs, unsigned count, unsigned *pdone, unsigned foreigndom)`.
pub const HYPERVISOR_mmu_update: u64 = 1;
/// `set_gdt(xen_ulong_t *frame_list, unsigned entries)`.
pub const HYPERVISOR_set_gdt: u64 = 2;
/// `stack_switch(unsigned long ss, unsigned long sp)`.
pub const HYPERVISOR_stack_switch: u64 = 3;
/// `set_callbacks(event_addr, failsafe_addr, syscall_addr)`.
pub const HYPERVISOR_set_callbacks: u64 = 4;
/// `fpu_taskswitch(int set)`.
pub const HYPERVISOR_fpu_taskswitch: u64 = 5;
/// `sched_op_compat(int cmd, unsigned long arg)` (legacy).
pub const HYPERVISOR_sched_op_compat: u64 = 6;
/// `platform_op(xen_platform_op_t *op)`.
pub const HYPERVISOR_platform_op: u64 = 7;
/// `set_debugreg(int reg, unsigned long value)`.
pub const HYPERVISOR_set_debugreg: u64 = 8;
/// `get_debugreg(int reg)`.
pub const HYPERVISOR_get_debugreg: u64 = 9;
/// `update_descriptor(uint64_t maddr, uint64_t desc)`.
pub const HYPERVISOR_update_descriptor: u64 = 10;
/// `memory_op(unsigned long cmd, void *arg)`; see [`crate::memory`].
pub const HYPERVISOR_memory_op: u64 = 12;
/// `multicall(multicall_entry_t *list, unsigned long nr_calls)`.
pub const HYPERVISOR_multicall: u64 = 13;
/// `update_va_mapping(unsigned long va, uint64_t val, unsigned long flags)`.
pub const HYPERVISOR_update_va_mapping: u64 = 14;
/// `set_timer_op(s_time_t timeout)`.
pub const HYPERVISOR_set_timer_op: u64 = 15;
/// `event_channel_op_compat` (legacy).
pub const HYPERVISOR_event_channel_op_compat: u64 = 16;
/// `xen_version(int cmd, void *arg)`; see [`crate::version`].
pub const HYPERVISOR_xen_version: u64 = 17;
/// `console_io(unsigned cmd, unsigned count, char *buf)`; see [`crate::console`].
pub const HYPERVISOR_console_io: u64 = 18;
/// `physdev_op_compat` (legacy).
pub const HYPERVISOR_physdev_op_compat: u64 = 19;
/// `grant_table_op(unsigned cmd, void *uop, unsigned count)`.
pub const HYPERVISOR_grant_table_op: u64 = 20;
/// `vm_assist(unsigned cmd, unsigned type)`; see [`crate::vmassist`].
pub const HYPERVISOR_vm_assist: u64 = 21;
/// `update_va_mapping_otherdomain(va, val, flags, domid_t domid)`.
pub const HYPERVISOR_update_va_mapping_otherdomain: u64 = 22;
/// `iret` (no register arguments; frame on the guest stack, see
/// [`crate::trap::IretContext`]).
pub const HYPERVISOR_iret: u64 = 23;
/// `vcpu_op(int cmd, unsigned vcpuid, void *arg)`.
pub const HYPERVISOR_vcpu_op: u64 = 24;
/// `set_segment_base(unsigned which, unsigned long base)`; see [`crate::selector`].
pub const HYPERVISOR_set_segment_base: u64 = 25;
/// `mmuext_op(mmuext_op_t *ops, unsigned count, unsigned *pdone, unsigned foreigndom)`.
pub const HYPERVISOR_mmuext_op: u64 = 26;
/// `xsm_op(void *op)`.
pub const HYPERVISOR_xsm_op: u64 = 27;
/// `nmi_op(unsigned cmd, void *arg)`.
pub const HYPERVISOR_nmi_op: u64 = 28;
/// `sched_op(int cmd, void *arg)`; see [`crate::sched`].
pub const HYPERVISOR_sched_op: u64 = 29;
/// `callback_op(int cmd, const void *arg)`; see [`crate::callback`].
pub const HYPERVISOR_callback_op: u64 = 30;
/// `xenoprof_op` (dropped in Xen 4.22).
pub const HYPERVISOR_xenoprof_op: u64 = 31;
/// `event_channel_op(int cmd, void *arg)`; see [`crate::evtchn`].
pub const HYPERVISOR_event_channel_op: u64 = 32;
/// `physdev_op(int cmd, void *arg)`.
pub const HYPERVISOR_physdev_op: u64 = 33;
/// `hvm_op`.
pub const HYPERVISOR_hvm_op: u64 = 34;
/// `sysctl`.
pub const HYPERVISOR_sysctl: u64 = 35;
/// `domctl`.
pub const HYPERVISOR_domctl: u64 = 36;
/// `kexec_op`.
pub const HYPERVISOR_kexec_op: u64 = 37;
/// `tmem_op` (no handler).
pub const HYPERVISOR_tmem_op: u64 = 38;
/// `argo_op`.
pub const HYPERVISOR_argo_op: u64 = 39;
/// `xenpmu_op`.
pub const HYPERVISOR_xenpmu_op: u64 = 40;
/// `dm_op`.
pub const HYPERVISOR_dm_op: u64 = 41;
/// `hypfs_op`.
pub const HYPERVISOR_hypfs_op: u64 = 42;
/// Architecture-specific hypercall 0.
pub const HYPERVISOR_arch_0: u64 = 48;
/// `mca(xen_mc_t *op)`: the x86 use of `arch_0`.
pub const HYPERVISOR_mca: u64 = HYPERVISOR_arch_0;
/// Architecture-specific hypercall 1.
pub const HYPERVISOR_arch_1: u64 = 49;
/// Architecture-specific hypercall 2.
pub const HYPERVISOR_arch_2: u64 = 50;
/// Architecture-specific hypercall 3.
pub const HYPERVISOR_arch_3: u64 = 51;
/// Architecture-specific hypercall 4.
pub const HYPERVISOR_arch_4: u64 = 52;
/// Architecture-specific hypercall 5.
pub const HYPERVISOR_arch_5: u64 = 53;
/// Architecture-specific hypercall 6.
pub const HYPERVISOR_arch_6: u64 = 54;
/// Architecture-specific hypercall 7.
pub const HYPERVISOR_arch_7: u64 = 55;

/// Maximum number of register arguments a hypercall takes
/// (`rdi, rsi, rdx, r10, r8`).
pub const HYPERCALL_MAX_ARGS: usize = 5;

/// Value a **debug** Xen writes into each argument register a returning
/// hypercall used (release builds leave them alone; guests must treat them
/// as clobbered either way).
pub const HYPERCALL_DEBUG_CLOBBER: u64 = 0xDEAD_BEEF_DEAD_F00D;

/// Size of the hypercall page.
pub const HYPERCALL_PAGE_SIZE: usize = 4096;
/// Number of slots in the hypercall page.
pub const HYPERCALL_PAGE_SLOTS: usize = 128;
/// Size of one hypercall-page slot; slot `n` starts at `n * 32`.
pub const HYPERCALL_SLOT_SIZE: usize = 32;
/// The `iret` slot, whose stub pushes `rax` too and never returns (guests
/// jump to it).
pub const HYPERCALL_IRET_SLOT: usize = 23;
/// Filler for the bytes of a slot after its stub (`int3`). The spec fixes
/// only the stub bytes; the filler is this crate's choice.
pub const HYPERCALL_STUB_FILL: u8 = 0xCC;

abi_enum! {
    /// A hypercall number (the value in `rax`).
    pub enum Hypercall: u32, raw u64 {
        /// 0
        SetTrapTable = HYPERVISOR_set_trap_table as u32 => "set_trap_table",
        /// 1
        MmuUpdate = HYPERVISOR_mmu_update as u32 => "mmu_update",
        /// 2
        SetGdt = HYPERVISOR_set_gdt as u32 => "set_gdt",
        /// 3
        StackSwitch = HYPERVISOR_stack_switch as u32 => "stack_switch",
        /// 4
        SetCallbacks = HYPERVISOR_set_callbacks as u32 => "set_callbacks",
        /// 5
        FpuTaskswitch = HYPERVISOR_fpu_taskswitch as u32 => "fpu_taskswitch",
        /// 6
        SchedOpCompat = HYPERVISOR_sched_op_compat as u32 => "sched_op_compat",
        /// 7
        PlatformOp = HYPERVISOR_platform_op as u32 => "platform_op",
        /// 8
        SetDebugreg = HYPERVISOR_set_debugreg as u32 => "set_debugreg",
        /// 9
        GetDebugreg = HYPERVISOR_get_debugreg as u32 => "get_debugreg",
        /// 10
        UpdateDescriptor = HYPERVISOR_update_descriptor as u32 => "update_descriptor",
        /// 12 (11 is unused)
        MemoryOp = HYPERVISOR_memory_op as u32 => "memory_op",
        /// 13
        Multicall = HYPERVISOR_multicall as u32 => "multicall",
        /// 14
        UpdateVaMapping = HYPERVISOR_update_va_mapping as u32 => "update_va_mapping",
        /// 15
        SetTimerOp = HYPERVISOR_set_timer_op as u32 => "set_timer_op",
        /// 16
        EventChannelOpCompat = HYPERVISOR_event_channel_op_compat as u32 => "event_channel_op_compat",
        /// 17
        XenVersion = HYPERVISOR_xen_version as u32 => "xen_version",
        /// 18
        ConsoleIo = HYPERVISOR_console_io as u32 => "console_io",
        /// 19
        PhysdevOpCompat = HYPERVISOR_physdev_op_compat as u32 => "physdev_op_compat",
        /// 20
        GrantTableOp = HYPERVISOR_grant_table_op as u32 => "grant_table_op",
        /// 21
        VmAssist = HYPERVISOR_vm_assist as u32 => "vm_assist",
        /// 22
        UpdateVaMappingOtherdomain = HYPERVISOR_update_va_mapping_otherdomain as u32 => "update_va_mapping_otherdomain",
        /// 23
        Iret = HYPERVISOR_iret as u32 => "iret",
        /// 24
        VcpuOp = HYPERVISOR_vcpu_op as u32 => "vcpu_op",
        /// 25
        SetSegmentBase = HYPERVISOR_set_segment_base as u32 => "set_segment_base",
        /// 26
        MmuextOp = HYPERVISOR_mmuext_op as u32 => "mmuext_op",
        /// 27
        XsmOp = HYPERVISOR_xsm_op as u32 => "xsm_op",
        /// 28
        NmiOp = HYPERVISOR_nmi_op as u32 => "nmi_op",
        /// 29
        SchedOp = HYPERVISOR_sched_op as u32 => "sched_op",
        /// 30
        CallbackOp = HYPERVISOR_callback_op as u32 => "callback_op",
        /// 31
        XenoprofOp = HYPERVISOR_xenoprof_op as u32 => "xenoprof_op",
        /// 32
        EventChannelOp = HYPERVISOR_event_channel_op as u32 => "event_channel_op",
        /// 33
        PhysdevOp = HYPERVISOR_physdev_op as u32 => "physdev_op",
        /// 34
        HvmOp = HYPERVISOR_hvm_op as u32 => "hvm_op",
        /// 35
        Sysctl = HYPERVISOR_sysctl as u32 => "sysctl",
        /// 36
        Domctl = HYPERVISOR_domctl as u32 => "domctl",
        /// 37
        KexecOp = HYPERVISOR_kexec_op as u32 => "kexec_op",
        /// 38
        TmemOp = HYPERVISOR_tmem_op as u32 => "tmem_op",
        /// 39
        ArgoOp = HYPERVISOR_argo_op as u32 => "argo_op",
        /// 40
        XenpmuOp = HYPERVISOR_xenpmu_op as u32 => "xenpmu_op",
        /// 41
        DmOp = HYPERVISOR_dm_op as u32 => "dm_op",
        /// 42
        HypfsOp = HYPERVISOR_hypfs_op as u32 => "hypfs_op",
        /// 48: `arch_0`, used as `mca` on x86.
        Mca = HYPERVISOR_mca as u32 => "mca",
        /// 49
        Arch1 = HYPERVISOR_arch_1 as u32 => "arch_1",
        /// 50
        Arch2 = HYPERVISOR_arch_2 as u32 => "arch_2",
        /// 51
        Arch3 = HYPERVISOR_arch_3 as u32 => "arch_3",
        /// 52
        Arch4 = HYPERVISOR_arch_4 as u32 => "arch_4",
        /// 53
        Arch5 = HYPERVISOR_arch_5 as u32 => "arch_5",
        /// 54
        Arch6 = HYPERVISOR_arch_6 as u32 => "arch_6",
        /// 55
        Arch7 = HYPERVISOR_arch_7 as u32 => "arch_7",
    }
}

raw_error! {
    /// A hypercall number that Xen does not define (the call returns
    /// `-ENOSYS`).
    UnknownHypercall(u64), "unknown hypercall number {}"
}

abi_try_from!(Hypercall, u64, UnknownHypercall);

impl TryFrom<u32> for Hypercall {
    type Error = UnknownHypercall;

    fn try_from(value: u32) -> Result<Self, UnknownHypercall> {
        Self::try_from(u64::from(value))
    }
}

impl From<Hypercall> for u64 {
    fn from(value: Hypercall) -> u64 {
        value.number()
    }
}

impl Hypercall {
    /// The hypercall number as it appears in `rax`.
    #[must_use]
    pub const fn number(self) -> u64 {
        self as u64
    }

    /// Number of register arguments the 64-bit PV handler takes (so the
    /// registers a debug Xen clobbers on return), for the hypercalls whose
    /// argument list the spec gives; `None` for the others.
    #[must_use]
    pub const fn nr_args(self) -> Option<usize> {
        Some(match self {
            Self::Iret => 0,
            Self::SetTrapTable
            | Self::FpuTaskswitch
            | Self::PlatformOp
            | Self::GetDebugreg
            | Self::SetTimerOp
            | Self::XsmOp
            | Self::Mca => 1,
            Self::SetGdt
            | Self::StackSwitch
            | Self::SchedOpCompat
            | Self::SetDebugreg
            | Self::UpdateDescriptor
            | Self::MemoryOp
            | Self::Multicall
            | Self::XenVersion
            | Self::VmAssist
            | Self::SetSegmentBase
            | Self::NmiOp
            | Self::SchedOp
            | Self::CallbackOp
            | Self::EventChannelOp
            | Self::PhysdevOp => 2,
            Self::SetCallbacks
            | Self::UpdateVaMapping
            | Self::ConsoleIo
            | Self::GrantTableOp
            | Self::VcpuOp => 3,
            Self::MmuUpdate | Self::UpdateVaMappingOtherdomain | Self::MmuextOp => 4,
            _ => return None,
        })
    }

    /// Byte offset of this hypercall's slot in the hypercall page.
    #[must_use]
    pub const fn slot_offset(self) -> usize {
        self as usize * HYPERCALL_SLOT_SIZE
    }
}

/// The 32 bytes Xen writes into hypercall-page slot `nr` for a 64-bit PV
/// guest, or `None` if `nr >= 128`.
///
/// Ordinary slot: `push %rcx; push %r11; mov $nr,%eax; syscall; pop %r11;
/// pop %rcx; ret`. The `iret` slot (23): `push %rcx; push %r11; push %rax;
/// mov $23,%eax; syscall` (never returns). The rest of the slot is
/// [`HYPERCALL_STUB_FILL`].
#[must_use]
pub const fn hypercall_slot(nr: u32) -> Option<[u8; HYPERCALL_SLOT_SIZE]> {
    if nr as usize >= HYPERCALL_PAGE_SLOTS {
        return None;
    }
    let n = nr.to_le_bytes();
    let mut slot = [HYPERCALL_STUB_FILL; HYPERCALL_SLOT_SIZE];
    if nr as usize == HYPERCALL_IRET_SLOT {
        let code = [
            0x51, 0x41, 0x53, 0x50, 0xB8, n[0], n[1], n[2], n[3], 0x0F, 0x05,
        ];
        let mut i = 0;
        while i < code.len() {
            slot[i] = code[i];
            i += 1;
        }
    } else {
        let code = [
            0x51, 0x41, 0x53, 0xB8, n[0], n[1], n[2], n[3], 0x0F, 0x05, 0x41, 0x5B, 0x59, 0xC3,
        ];
        let mut i = 0;
        while i < code.len() {
            slot[i] = code[i];
            i += 1;
        }
    }
    Some(slot)
}

/// The whole hypercall page as Xen writes it for a 64-bit PV guest
/// (every slot from [`hypercall_slot`]).
#[must_use]
pub const fn hypercall_page() -> [u8; HYPERCALL_PAGE_SIZE] {
    let mut page = [HYPERCALL_STUB_FILL; HYPERCALL_PAGE_SIZE];
    let mut nr = 0;
    while nr < HYPERCALL_PAGE_SLOTS {
        if let Some(slot) = hypercall_slot(nr as u32) {
            let mut i = 0;
            while i < HYPERCALL_SLOT_SIZE {
                page[nr * HYPERCALL_SLOT_SIZE + i] = slot[i];
                i += 1;
            }
        }
        nr += 1;
    }
    page
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::string::ToString;

    #[test]
    fn round_trip_all() {
        for &h in Hypercall::ALL {
            assert_eq!(Hypercall::try_from(h.number()), Ok(h));
            assert_eq!(Hypercall::try_from(u32::from(h)), Ok(h));
            assert_eq!(u64::from(h), h.number());
            assert!(h.slot_offset() < HYPERCALL_PAGE_SIZE);
        }
        assert_eq!(Hypercall::ALL.len(), 50);
        assert_eq!(
            Hypercall::try_from(HYPERVISOR_mmu_update),
            Ok(Hypercall::MmuUpdate)
        );
        assert_eq!(Hypercall::try_from(48u64), Ok(Hypercall::Mca));
        assert_eq!(Hypercall::Iret.slot_offset(), 23 * 32);
    }

    #[test]
    fn rejections() {
        for bad in [11u64, 43, 44, 45, 46, 47, 56, 127, 128, 1 << 32, u64::MAX] {
            assert_eq!(Hypercall::try_from(bad), Err(UnknownHypercall(bad)));
        }
        assert_eq!(Hypercall::try_from(11u32), Err(UnknownHypercall(11)));
    }

    #[test]
    fn display() {
        assert_eq!(
            UnknownHypercall(11).to_string(),
            "unknown hypercall number 11"
        );
        assert_eq!(Hypercall::MmuUpdate.to_string(), "mmu_update");
        assert_eq!(Hypercall::MmuextOp.name(), "mmuext_op");
    }

    #[test]
    fn nr_args() {
        assert_eq!(Hypercall::MmuUpdate.nr_args(), Some(4));
        assert_eq!(Hypercall::Iret.nr_args(), Some(0));
        assert_eq!(Hypercall::Sysctl.nr_args(), None);
        for &h in Hypercall::ALL {
            assert!(h.nr_args().unwrap_or(0) <= HYPERCALL_MAX_ARGS);
        }
    }

    #[test]
    fn stubs() {
        let s = hypercall_slot(1).unwrap();
        assert_eq!(
            &s[..14],
            &[
                0x51, 0x41, 0x53, 0xB8, 1, 0, 0, 0, 0x0F, 0x05, 0x41, 0x5B, 0x59, 0xC3
            ]
        );
        assert!(s[14..].iter().all(|&b| b == HYPERCALL_STUB_FILL));
        let i = hypercall_slot(23).unwrap();
        assert_eq!(
            &i[..11],
            &[0x51, 0x41, 0x53, 0x50, 0xB8, 23, 0, 0, 0, 0x0F, 0x05]
        );
        assert!(hypercall_slot(128).is_none());
        assert!(hypercall_slot(u32::MAX).is_none());
        let page = hypercall_page();
        assert_eq!(&page[32 * 127..32 * 128], &hypercall_slot(127).unwrap()[..]);
        assert_eq!(&page[32 * 23..32 * 24], &i[..]);
        assert_ne!(page[0], 0xC3);
    }
}
