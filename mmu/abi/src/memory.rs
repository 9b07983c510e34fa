//! `memory_op` sub-operations used by PV guests around the MMU.
//!
//! `memory_op(cmd, arg)`: bits 5:0 of `cmd` are the sub-op, bits 6+ the
//! start extent of a continuation. For a PV (non-translated) guest, "GMFN"
//! arguments are machine frames.
#![allow(non_upper_case_globals)]

use crate::bytes::{get_u64, put_u64};

/// Increase reservation.
pub const XENMEM_increase_reservation: u32 = 0;
/// Decrease reservation.
pub const XENMEM_decrease_reservation: u32 = 1;
/// Highest machine page.
pub const XENMEM_maximum_ram_page: u32 = 2;
/// Current reservation of a domain.
pub const XENMEM_current_reservation: u32 = 3;
/// Maximum reservation of a domain.
pub const XENMEM_maximum_reservation: u32 = 4;
/// List of MFNs backing the M2P.
pub const XENMEM_machphys_mfn_list: u32 = 5;
/// Populate the physmap.
pub const XENMEM_populate_physmap: u32 = 6;
/// Add a page to the physmap.
pub const XENMEM_add_to_physmap: u32 = 7;
/// Guest memory map.
pub const XENMEM_memory_map: u32 = 9;
/// Machine memory map.
pub const XENMEM_machine_memory_map: u32 = 10;
/// Exchange pages.
pub const XENMEM_exchange: u32 = 11;
/// Where the read-only M2P is mapped (`arg` → [`XenMachphysMapping`]).
pub const XENMEM_machphys_mapping: u32 = 12;
/// Highest GPFN of a domain.
pub const XENMEM_maximum_gpfn: u32 = 14;

/// Shift of the continuation start extent in the `memory_op` `cmd`.
pub const MEMOP_EXTENT_SHIFT: u32 = 6;
/// Mask of the sub-op bits of the `memory_op` `cmd`.
pub const MEMOP_CMD_MASK: u64 = (1 << MEMOP_EXTENT_SHIFT) - 1;

/// Splits a `memory_op` `cmd` into `(sub_op, start_extent)`.
#[must_use]
pub const fn decode_memory_op_cmd(cmd: u64) -> (u32, u64) {
    ((cmd & MEMOP_CMD_MASK) as u32, cmd >> MEMOP_EXTENT_SHIFT)
}

abi_enum! {
    /// A `memory_op` sub-operation (from [`decode_memory_op_cmd`]).
    pub enum MemoryOp: u32, raw u32 {
        /// [`XENMEM_increase_reservation`]
        IncreaseReservation = XENMEM_increase_reservation => "XENMEM_increase_reservation",
        /// [`XENMEM_decrease_reservation`]
        DecreaseReservation = XENMEM_decrease_reservation => "XENMEM_decrease_reservation",
        /// [`XENMEM_maximum_ram_page`]
        MaximumRamPage = XENMEM_maximum_ram_page => "XENMEM_maximum_ram_page",
        /// [`XENMEM_current_reservation`]
        CurrentReservation = XENMEM_current_reservation => "XENMEM_current_reservation",
        /// [`XENMEM_maximum_reservation`]
        MaximumReservation = XENMEM_maximum_reservation => "XENMEM_maximum_reservation",
        /// [`XENMEM_machphys_mfn_list`]
        MachphysMfnList = XENMEM_machphys_mfn_list => "XENMEM_machphys_mfn_list",
        /// [`XENMEM_populate_physmap`]
        PopulatePhysmap = XENMEM_populate_physmap => "XENMEM_populate_physmap",
        /// [`XENMEM_add_to_physmap`]
        AddToPhysmap = XENMEM_add_to_physmap => "XENMEM_add_to_physmap",
        /// [`XENMEM_memory_map`]
        MemoryMap = XENMEM_memory_map => "XENMEM_memory_map",
        /// [`XENMEM_machine_memory_map`]
        MachineMemoryMap = XENMEM_machine_memory_map => "XENMEM_machine_memory_map",
        /// [`XENMEM_exchange`]
        Exchange = XENMEM_exchange => "XENMEM_exchange",
        /// [`XENMEM_machphys_mapping`]
        MachphysMapping = XENMEM_machphys_mapping => "XENMEM_machphys_mapping",
        /// [`XENMEM_maximum_gpfn`]
        MaximumGpfn = XENMEM_maximum_gpfn => "XENMEM_maximum_gpfn",
    }
}

raw_error! {
    /// A `memory_op` sub-op this crate does not list.
    UnknownMemoryOp(u32), "unknown memory_op sub-op {}"
}

abi_try_from!(MemoryOp, u32, UnknownMemoryOp);

/// `struct xen_machphys_mapping` (24 bytes): where the read-only M2P is
/// mapped and its highest MFN.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[repr(C)]
pub struct XenMachphysMapping {
    /// Start VA of the M2P.
    pub v_start: u64,
    /// End VA of the M2P.
    pub v_end: u64,
    /// Highest MFN covered.
    pub max_mfn: u64,
}

const _: () = assert!(core::mem::size_of::<XenMachphysMapping>() == 24);
const _: () = assert!(core::mem::align_of::<XenMachphysMapping>() == 8);
const _: () = assert!(core::mem::offset_of!(XenMachphysMapping, v_start) == 0);
const _: () = assert!(core::mem::offset_of!(XenMachphysMapping, v_end) == 8);
const _: () = assert!(core::mem::offset_of!(XenMachphysMapping, max_mfn) == 16);

impl XenMachphysMapping {
    /// Decodes from the 24-byte little-endian encoding.
    #[must_use]
    pub fn from_bytes(b: &[u8; 24]) -> Self {
        Self {
            v_start: get_u64(b, 0),
            v_end: get_u64(b, 8),
            max_mfn: get_u64(b, 16),
        }
    }

    /// Encodes as 24 little-endian bytes.
    #[must_use]
    pub fn to_bytes(&self) -> [u8; 24] {
        let mut b = [0; 24];
        put_u64(&mut b, 0, self.v_start);
        put_u64(&mut b, 8, self.v_end);
        put_u64(&mut b, 16, self.max_mfn);
        b
    }
}

impl_abi_bytes!(XenMachphysMapping, 24);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sub_ops() {
        assert_eq!(MemoryOp::ALL.len(), 13);
        for &op in MemoryOp::ALL {
            assert_eq!(MemoryOp::try_from(op.raw()), Ok(op));
        }
        for bad in [8u32, 13, 15, 63, 64, u32::MAX] {
            assert_eq!(MemoryOp::try_from(bad), Err(UnknownMemoryOp(bad)));
        }
    }

    #[test]
    fn cmd_decoding() {
        assert_eq!(decode_memory_op_cmd(12), (12, 0));
        assert_eq!(decode_memory_op_cmd((5 << 6) | 6), (6, 5));
        assert_eq!(decode_memory_op_cmd(u64::MAX), (63, u64::MAX >> 6));
    }

    #[test]
    fn bytes_round_trip() {
        let m = XenMachphysMapping {
            v_start: 0xFFFF_8000_0000_0000,
            v_end: 0xFFFF_8040_0000_0000,
            max_mfn: 0x7_FFFF_FFFF,
        };
        let b = m.to_bytes();
        assert_eq!(b[0..8], m.v_start.to_le_bytes());
        assert_eq!(b[16..24], m.max_mfn.to_le_bytes());
        assert_eq!(XenMachphysMapping::from_bytes(&b), m);
    }
}
