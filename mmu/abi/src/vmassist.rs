//! `vm_assist` commands and assist types.
//!
//! `vm_assist(cmd, type)`: `cmd` other than enable/disable → `-ENOSYS`;
//! `type` must be `< 64` and in the guest kind's valid set (for 64-bit PV
//! [`PV64_VM_ASSIST_MASK`]), else `-EINVAL`.
#![allow(non_upper_case_globals)]

/// Enable an assist.
pub const VMASST_CMD_enable: u32 = 0;
/// Disable an assist.
pub const VMASST_CMD_disable: u32 = 1;

/// 4 GiB segment emulation.
pub const VMASST_TYPE_4gb_segments: u32 = 0;
/// Notify on 4 GiB segment fixups.
pub const VMASST_TYPE_4gb_segments_notify: u32 = 1;
/// Writable page tables: gates ptwr emulation of guest L1 writes.
pub const VMASST_TYPE_writable_pagetables: u32 = 2;
/// PAE extended CR3 (32-bit).
pub const VMASST_TYPE_pae_extended_cr3: u32 = 3;
/// Architectural IOPL handling.
pub const VMASST_TYPE_architectural_iopl: u32 = 4;
/// Runstate update flag.
pub const VMASST_TYPE_runstate_update_flag: u32 = 5;
/// Strict M2P handling: RO-M2P L4 slot only in kernel roots.
pub const VMASST_TYPE_m2p_strict: u32 = 32;

/// Assist types valid for a 64-bit PV guest (bits 0..=5 and 32).
pub const PV64_VM_ASSIST_MASK: u64 = (1 << VMASST_TYPE_4gb_segments)
    | (1 << VMASST_TYPE_4gb_segments_notify)
    | (1 << VMASST_TYPE_writable_pagetables)
    | (1 << VMASST_TYPE_pae_extended_cr3)
    | (1 << VMASST_TYPE_architectural_iopl)
    | (1 << VMASST_TYPE_runstate_update_flag)
    | (1 << VMASST_TYPE_m2p_strict);

const _: () = assert!(PV64_VM_ASSIST_MASK == 0x1_0000_003F);

/// `true` if `ty` is a valid assist type for a 64-bit PV guest (`< 64` and
/// in [`PV64_VM_ASSIST_MASK`]).
#[must_use]
pub const fn pv64_vm_assist_valid(ty: u32) -> bool {
    ty < 64 && PV64_VM_ASSIST_MASK & (1u64 << ty) != 0
}

abi_enum! {
    /// A `vm_assist` command.
    pub enum VmAssistCmd: u32, raw u32 {
        /// [`VMASST_CMD_enable`]
        Enable = VMASST_CMD_enable => "VMASST_CMD_enable",
        /// [`VMASST_CMD_disable`]
        Disable = VMASST_CMD_disable => "VMASST_CMD_disable",
    }
}

raw_error! {
    /// An unknown `vm_assist` command (`-ENOSYS`).
    UnknownVmAssistCmd(u32), "unknown vm_assist command {}"
}

abi_try_from!(VmAssistCmd, u32, UnknownVmAssistCmd);

abi_enum! {
    /// A `vm_assist` type valid for 64-bit PV.
    pub enum VmAssistType: u32, raw u32 {
        /// [`VMASST_TYPE_4gb_segments`]
        FourGbSegments = VMASST_TYPE_4gb_segments => "VMASST_TYPE_4gb_segments",
        /// [`VMASST_TYPE_4gb_segments_notify`]
        FourGbSegmentsNotify = VMASST_TYPE_4gb_segments_notify => "VMASST_TYPE_4gb_segments_notify",
        /// [`VMASST_TYPE_writable_pagetables`]
        WritablePagetables = VMASST_TYPE_writable_pagetables => "VMASST_TYPE_writable_pagetables",
        /// [`VMASST_TYPE_pae_extended_cr3`]
        PaeExtendedCr3 = VMASST_TYPE_pae_extended_cr3 => "VMASST_TYPE_pae_extended_cr3",
        /// [`VMASST_TYPE_architectural_iopl`]
        ArchitecturalIopl = VMASST_TYPE_architectural_iopl => "VMASST_TYPE_architectural_iopl",
        /// [`VMASST_TYPE_runstate_update_flag`]
        RunstateUpdateFlag = VMASST_TYPE_runstate_update_flag => "VMASST_TYPE_runstate_update_flag",
        /// [`VMASST_TYPE_m2p_strict`]
        M2pStrict = VMASST_TYPE_m2p_strict => "VMASST_TYPE_m2p_strict",
    }
}

raw_error! {
    /// A `vm_assist` type not valid for 64-bit PV (`-EINVAL`).
    InvalidVmAssistType(u32), "invalid vm_assist type {}"
}

abi_try_from!(VmAssistType, u32, InvalidVmAssistType);

impl VmAssistType {
    /// This type's bit in a `vm_assist` mask.
    #[must_use]
    pub const fn bit(self) -> u64 {
        1u64 << (self as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmd() {
        for &c in VmAssistCmd::ALL {
            assert_eq!(VmAssistCmd::try_from(c.raw()), Ok(c));
        }
        assert_eq!(VmAssistCmd::try_from(2), Err(UnknownVmAssistCmd(2)));
    }

    #[test]
    fn types() {
        let mut mask = 0;
        for &t in VmAssistType::ALL {
            assert_eq!(VmAssistType::try_from(t.raw()), Ok(t));
            assert!(pv64_vm_assist_valid(t.raw()));
            mask |= t.bit();
        }
        assert_eq!(mask, PV64_VM_ASSIST_MASK);
        for bad in [6u32, 31, 33, 63, 64, 100, u32::MAX] {
            assert_eq!(VmAssistType::try_from(bad), Err(InvalidVmAssistType(bad)));
            assert!(!pv64_vm_assist_valid(bad));
        }
    }
}
