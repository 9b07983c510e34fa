//! `mmu_update`, `mmuext_op` and `update_va_mapping`: request structures,
//! command codes and flag encodings.
//!
//! Batch semantics (both `mmu_update` and `mmuext_op`): entries run in
//! order; the first failing entry stops the batch (earlier entries stay
//! applied) and its errno is returned; `*pdone` receives the number of
//! entries completed. Bit 31 of `count` is [`MMU_UPDATE_PREEMPTED`].
#![allow(non_upper_case_globals)]

use crate::bytes::{get_u32, get_u64, put_u32, put_u64};

// ---------------------------------------------------------------------------
// mmu_update
// ---------------------------------------------------------------------------

/// `mmu_update` cmd 0: `ptr` is the machine address of a PTE; write `val`
/// (validated) to it.
pub const MMU_NORMAL_PT_UPDATE: u64 = 0;
/// `mmu_update` cmd 1: `ptr >> 12` is an MFN of FD; `val` becomes its M2P
/// entry.
pub const MMU_MACHPHYS_UPDATE: u64 = 1;
/// `mmu_update` cmd 2: as cmd 0, but OR-in the Accessed/Dirty bits present
/// in the PTE at the moment of the write.
pub const MMU_PT_UPDATE_PRESERVE_AD: u64 = 2;
/// `mmu_update` cmd 3: as cmd 0, but no p2m translation of `val` for a
/// translated FD (identical to cmd 0 for PV).
pub const MMU_PT_UPDATE_NO_TRANSLATE: u64 = 3;
/// Bits of `ptr` Xen decodes as the command (`ptr & 7`); 4..7 → `-ENOSYS`.
pub const MMU_UPDATE_CMD_MASK: u64 = 7;
/// Bit 31 of the `count` argument of `mmu_update` / `mmuext_op`: set in
/// continuations ("count is the remainder; resume `done` from `*pdone`").
pub const MMU_UPDATE_PREEMPTED: u32 = 0x8000_0000;

abi_enum! {
    /// The command in bits 2:0 of an [`MmuUpdate::ptr`].
    pub enum MmuUpdateCmd: u32, raw u64 {
        /// [`MMU_NORMAL_PT_UPDATE`]
        NormalPtUpdate = MMU_NORMAL_PT_UPDATE as u32 => "MMU_NORMAL_PT_UPDATE",
        /// [`MMU_MACHPHYS_UPDATE`]
        MachphysUpdate = MMU_MACHPHYS_UPDATE as u32 => "MMU_MACHPHYS_UPDATE",
        /// [`MMU_PT_UPDATE_PRESERVE_AD`]
        PtUpdatePreserveAd = MMU_PT_UPDATE_PRESERVE_AD as u32 => "MMU_PT_UPDATE_PRESERVE_AD",
        /// [`MMU_PT_UPDATE_NO_TRANSLATE`]
        PtUpdateNoTranslate = MMU_PT_UPDATE_NO_TRANSLATE as u32 => "MMU_PT_UPDATE_NO_TRANSLATE",
    }
}

raw_error! {
    /// An `mmu_update` command (bits 2:0 of `ptr`) of 4..7; Xen returns
    /// `-ENOSYS`. Holds the command bits only.
    InvalidMmuUpdateCmd(u64), "invalid mmu_update command {}"
}

impl TryFrom<u64> for MmuUpdateCmd {
    type Error = InvalidMmuUpdateCmd;

    /// Decodes from the **low 3 bits** of `value` (higher bits are ignored,
    /// so a whole `ptr` may be passed).
    fn try_from(value: u64) -> Result<Self, InvalidMmuUpdateCmd> {
        let cmd = value & MMU_UPDATE_CMD_MASK;
        Self::from_raw(cmd).ok_or(InvalidMmuUpdateCmd(cmd))
    }
}

/// Splits an `mmu_update`/`mmuext_op` `count` argument into the entry count
/// (bit 31 cleared) and whether [`MMU_UPDATE_PREEMPTED`] was set.
#[must_use]
pub const fn split_preempted_count(count: u32) -> (u32, bool) {
    (
        count & !MMU_UPDATE_PREEMPTED,
        count & MMU_UPDATE_PREEMPTED != 0,
    )
}

/// `mmu_update_t`: one `mmu_update` request (16 bytes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[repr(C)]
pub struct MmuUpdate {
    /// Machine address of the target, with the command in bits 2:0.
    pub ptr: u64,
    /// New PTE value (or M2P entry for [`MMU_MACHPHYS_UPDATE`]).
    pub val: u64,
}

const _: () = assert!(core::mem::size_of::<MmuUpdate>() == 16);
const _: () = assert!(core::mem::align_of::<MmuUpdate>() == 8);
const _: () = assert!(core::mem::offset_of!(MmuUpdate, ptr) == 0);
const _: () = assert!(core::mem::offset_of!(MmuUpdate, val) == 8);

impl MmuUpdate {
    /// Builds a request from a command and an (8-byte aligned) address;
    /// the low 3 bits of `addr` are replaced by the command.
    #[must_use]
    pub const fn new(cmd: MmuUpdateCmd, addr: u64, val: u64) -> Self {
        Self {
            ptr: (addr & !MMU_UPDATE_CMD_MASK) | cmd as u64,
            val,
        }
    }

    /// The raw command bits (`ptr & 7`).
    #[must_use]
    pub const fn cmd_bits(&self) -> u64 {
        self.ptr & MMU_UPDATE_CMD_MASK
    }

    /// The decoded command; 4..7 are rejected (Xen: `-ENOSYS`).
    pub fn cmd(&self) -> Result<MmuUpdateCmd, InvalidMmuUpdateCmd> {
        MmuUpdateCmd::try_from(self.ptr)
    }

    /// The target machine address with the command bits cleared (so always
    /// 8-byte aligned).
    #[must_use]
    pub const fn addr(&self) -> u64 {
        self.ptr & !MMU_UPDATE_CMD_MASK
    }

    /// The machine frame of the target (`ptr >> 12`): the page-table frame
    /// for PT updates, the MFN for [`MMU_MACHPHYS_UPDATE`].
    #[must_use]
    pub const fn mfn(&self) -> u64 {
        self.ptr >> 12
    }

    /// Decodes from the 16-byte little-endian encoding.
    #[must_use]
    #[inline]
    pub fn from_bytes(b: &[u8; 16]) -> Self {
        Self {
            ptr: get_u64(b, 0),
            val: get_u64(b, 8),
        }
    }

    /// Encodes as 16 little-endian bytes.
    #[must_use]
    pub fn to_bytes(&self) -> [u8; 16] {
        let mut b = [0; 16];
        put_u64(&mut b, 0, self.ptr);
        put_u64(&mut b, 8, self.val);
        b
    }
}

impl_abi_bytes!(MmuUpdate, 16);

// ---------------------------------------------------------------------------
// mmuext_op
// ---------------------------------------------------------------------------

/// Pin an L1 table (`arg1.mfn`).
pub const MMUEXT_PIN_L1_TABLE: u32 = 0;
/// Pin an L2 table (`arg1.mfn`).
pub const MMUEXT_PIN_L2_TABLE: u32 = 1;
/// Pin an L3 table (`arg1.mfn`).
pub const MMUEXT_PIN_L3_TABLE: u32 = 2;
/// Pin an L4 table (`arg1.mfn`).
pub const MMUEXT_PIN_L4_TABLE: u32 = 3;
/// Unpin a table (`arg1.mfn`).
pub const MMUEXT_UNPIN_TABLE: u32 = 4;
/// Install a new kernel root L4 (`arg1.mfn`).
pub const MMUEXT_NEW_BASEPTR: u32 = 5;
/// Flush this CPU's TLB.
pub const MMUEXT_TLB_FLUSH_LOCAL: u32 = 6;
/// Invalidate one VA locally (`arg1.linear_addr`).
pub const MMUEXT_INVLPG_LOCAL: u32 = 7;
/// Flush the TLBs of the vCPUs in `arg2.vcpumask`.
pub const MMUEXT_TLB_FLUSH_MULTI: u32 = 8;
/// Invalidate one VA (`arg1.linear_addr`) on the vCPUs in `arg2.vcpumask`.
pub const MMUEXT_INVLPG_MULTI: u32 = 9;
/// Flush all CPUs dirty for the domain.
pub const MMUEXT_TLB_FLUSH_ALL: u32 = 10;
/// Invalidate one VA (`arg1.linear_addr`) on all dirty CPUs.
pub const MMUEXT_INVLPG_ALL: u32 = 11;
/// Cache write-back + invalidate (needs I/O resources, else `-EACCES`).
pub const MMUEXT_FLUSH_CACHE: u32 = 12;
/// Set the LDT (`arg1.linear_addr`, `arg2.nr_ents`).
pub const MMUEXT_SET_LDT: u32 = 13;
/// Install a new user root L4 (`arg1.mfn`; 0 clears it). (14 is unused.)
pub const MMUEXT_NEW_USER_BASEPTR: u32 = 15;
/// Zero a page (`arg1.mfn`).
pub const MMUEXT_CLEAR_PAGE: u32 = 16;
/// Copy `arg2.src_mfn` to `arg1.mfn`.
pub const MMUEXT_COPY_PAGE: u32 = 17;
/// Global cache flush (as [`MMUEXT_FLUSH_CACHE`]).
pub const MMUEXT_FLUSH_CACHE_GLOBAL: u32 = 18;
/// Mark a superpage (always `-EOPNOTSUPP`).
pub const MMUEXT_MARK_SUPER: u32 = 19;
/// Unmark a superpage (always `-EOPNOTSUPP`).
pub const MMUEXT_UNMARK_SUPER: u32 = 20;

/// Largest `nr_ents` accepted by [`MMUEXT_SET_LDT`] (more → `-EINVAL`).
pub const MMUEXT_SET_LDT_MAX_ENTS: u32 = 8192;

abi_enum! {
    /// An `mmuext_op` command ([`MmuextOp::cmd`]).
    pub enum MmuextCmd: u32, raw u32 {
        /// [`MMUEXT_PIN_L1_TABLE`]
        PinL1Table = MMUEXT_PIN_L1_TABLE => "MMUEXT_PIN_L1_TABLE",
        /// [`MMUEXT_PIN_L2_TABLE`]
        PinL2Table = MMUEXT_PIN_L2_TABLE => "MMUEXT_PIN_L2_TABLE",
        /// [`MMUEXT_PIN_L3_TABLE`]
        PinL3Table = MMUEXT_PIN_L3_TABLE => "MMUEXT_PIN_L3_TABLE",
        /// [`MMUEXT_PIN_L4_TABLE`]
        PinL4Table = MMUEXT_PIN_L4_TABLE => "MMUEXT_PIN_L4_TABLE",
        /// [`MMUEXT_UNPIN_TABLE`]
        UnpinTable = MMUEXT_UNPIN_TABLE => "MMUEXT_UNPIN_TABLE",
        /// [`MMUEXT_NEW_BASEPTR`]
        NewBaseptr = MMUEXT_NEW_BASEPTR => "MMUEXT_NEW_BASEPTR",
        /// [`MMUEXT_TLB_FLUSH_LOCAL`]
        TlbFlushLocal = MMUEXT_TLB_FLUSH_LOCAL => "MMUEXT_TLB_FLUSH_LOCAL",
        /// [`MMUEXT_INVLPG_LOCAL`]
        InvlpgLocal = MMUEXT_INVLPG_LOCAL => "MMUEXT_INVLPG_LOCAL",
        /// [`MMUEXT_TLB_FLUSH_MULTI`]
        TlbFlushMulti = MMUEXT_TLB_FLUSH_MULTI => "MMUEXT_TLB_FLUSH_MULTI",
        /// [`MMUEXT_INVLPG_MULTI`]
        InvlpgMulti = MMUEXT_INVLPG_MULTI => "MMUEXT_INVLPG_MULTI",
        /// [`MMUEXT_TLB_FLUSH_ALL`]
        TlbFlushAll = MMUEXT_TLB_FLUSH_ALL => "MMUEXT_TLB_FLUSH_ALL",
        /// [`MMUEXT_INVLPG_ALL`]
        InvlpgAll = MMUEXT_INVLPG_ALL => "MMUEXT_INVLPG_ALL",
        /// [`MMUEXT_FLUSH_CACHE`]
        FlushCache = MMUEXT_FLUSH_CACHE => "MMUEXT_FLUSH_CACHE",
        /// [`MMUEXT_SET_LDT`]
        SetLdt = MMUEXT_SET_LDT => "MMUEXT_SET_LDT",
        /// [`MMUEXT_NEW_USER_BASEPTR`]
        NewUserBaseptr = MMUEXT_NEW_USER_BASEPTR => "MMUEXT_NEW_USER_BASEPTR",
        /// [`MMUEXT_CLEAR_PAGE`]
        ClearPage = MMUEXT_CLEAR_PAGE => "MMUEXT_CLEAR_PAGE",
        /// [`MMUEXT_COPY_PAGE`]
        CopyPage = MMUEXT_COPY_PAGE => "MMUEXT_COPY_PAGE",
        /// [`MMUEXT_FLUSH_CACHE_GLOBAL`]
        FlushCacheGlobal = MMUEXT_FLUSH_CACHE_GLOBAL => "MMUEXT_FLUSH_CACHE_GLOBAL",
        /// [`MMUEXT_MARK_SUPER`]
        MarkSuper = MMUEXT_MARK_SUPER => "MMUEXT_MARK_SUPER",
        /// [`MMUEXT_UNMARK_SUPER`]
        UnmarkSuper = MMUEXT_UNMARK_SUPER => "MMUEXT_UNMARK_SUPER",
    }
}

raw_error! {
    /// An unknown `mmuext_op` command (14, or > 20); Xen returns `-ENOSYS`.
    UnknownMmuextCmd(u32), "unknown mmuext_op command {}"
}

abi_try_from!(MmuextCmd, u32, UnknownMmuextCmd);

impl MmuextCmd {
    /// For the `PIN_Ln_TABLE` commands, the page-table level `n` (1..=4).
    #[must_use]
    pub const fn pin_level(self) -> Option<u8> {
        match self {
            Self::PinL1Table => Some(1),
            Self::PinL2Table => Some(2),
            Self::PinL3Table => Some(3),
            Self::PinL4Table => Some(4),
            _ => None,
        }
    }
}

/// `mmuext_op_t` (24 bytes), represented without unions: `arg1` and `arg2`
/// are the raw 8-byte slots; use the accessors for the union members.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[repr(C)]
pub struct MmuextOp {
    /// Command (`MMUEXT_*`).
    pub cmd: u32,
    /// Padding after `cmd` (bytes 4..8); zero when built by this crate.
    pub _pad: u32,
    /// `arg1` union: `mfn` or `linear_addr`.
    pub arg1: u64,
    /// `arg2` union: `nr_ents` (low 32 bits), `vcpumask` or `src_mfn`.
    pub arg2: u64,
}

const _: () = assert!(core::mem::size_of::<MmuextOp>() == 24);
const _: () = assert!(core::mem::align_of::<MmuextOp>() == 8);
const _: () = assert!(core::mem::offset_of!(MmuextOp, cmd) == 0);
const _: () = assert!(core::mem::offset_of!(MmuextOp, _pad) == 4);
const _: () = assert!(core::mem::offset_of!(MmuextOp, arg1) == 8);
const _: () = assert!(core::mem::offset_of!(MmuextOp, arg2) == 16);

impl MmuextOp {
    /// Builds an operation from a raw command and raw argument slots.
    #[must_use]
    pub const fn new(cmd: u32, arg1: u64, arg2: u64) -> Self {
        Self {
            cmd,
            _pad: 0,
            arg1,
            arg2,
        }
    }

    /// Builds an operation from a typed command.
    #[must_use]
    pub const fn with_cmd(cmd: MmuextCmd, arg1: u64, arg2: u64) -> Self {
        Self::new(cmd as u32, arg1, arg2)
    }

    /// The decoded command.
    pub fn command(&self) -> Result<MmuextCmd, UnknownMmuextCmd> {
        MmuextCmd::try_from(self.cmd)
    }

    /// `arg1.mfn` (`PIN_*`, `UNPIN_TABLE`, `NEW_BASEPTR`,
    /// `NEW_USER_BASEPTR`, `CLEAR_PAGE`, `COPY_PAGE` destination,
    /// `MARK_SUPER`, `UNMARK_SUPER`).
    #[must_use]
    pub const fn mfn(&self) -> u64 {
        self.arg1
    }

    /// `arg1.linear_addr` (INVLPG_*, SET_LDT).
    #[must_use]
    pub const fn linear_addr(&self) -> u64 {
        self.arg1
    }

    /// `arg2.nr_ents` (SET_LDT): the low 32 bits of `arg2`.
    #[must_use]
    pub const fn nr_ents(&self) -> u32 {
        self.arg2 as u32
    }

    /// `arg2.vcpumask`: guest pointer to a bitmap of `u64` words, bit `i` of
    /// word `w` = vCPU `w*64+i` (TLB_FLUSH_MULTI, INVLPG_MULTI).
    #[must_use]
    pub const fn vcpumask(&self) -> u64 {
        self.arg2
    }

    /// `arg2.src_mfn` (COPY_PAGE source).
    #[must_use]
    pub const fn src_mfn(&self) -> u64 {
        self.arg2
    }

    /// Decodes from the 24-byte little-endian encoding.
    #[must_use]
    pub fn from_bytes(b: &[u8; 24]) -> Self {
        Self {
            cmd: get_u32(b, 0),
            _pad: get_u32(b, 4),
            arg1: get_u64(b, 8),
            arg2: get_u64(b, 16),
        }
    }

    /// Encodes as 24 little-endian bytes.
    #[must_use]
    pub fn to_bytes(&self) -> [u8; 24] {
        let mut b = [0; 24];
        put_u32(&mut b, 0, self.cmd);
        put_u32(&mut b, 4, self._pad);
        put_u64(&mut b, 8, self.arg1);
        put_u64(&mut b, 16, self.arg2);
        b
    }
}

impl_abi_bytes!(MmuextOp, 24);

// ---------------------------------------------------------------------------
// update_va_mapping flags
// ---------------------------------------------------------------------------

/// Flush type (bits 1:0): none.
pub const UVMF_NONE: u64 = 0;
/// Flush type: full TLB flush.
pub const UVMF_TLB_FLUSH: u64 = 1;
/// Flush type: invalidate the one VA.
pub const UVMF_INVLPG: u64 = 2;
/// Mask of the flush-type bits (value 3 means no flush).
pub const UVMF_FLUSHTYPE_MASK: u64 = 3;
/// Target: this CPU only.
pub const UVMF_LOCAL: u64 = 0;
/// Target: vCPU bitmap whose guest pointer is OR-ed into the flags (the
/// constant itself is 0, i.e. "local" when no pointer is given).
pub const UVMF_MULTI: u64 = 0;
/// Target: all CPUs dirty for the domain.
pub const UVMF_ALL: u64 = 4;

/// Decoded flush type of `update_va_mapping` flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UvmfFlush {
    /// No flush (`flags & 3` is 0 or 3).
    None,
    /// Full TLB flush ([`UVMF_TLB_FLUSH`]).
    TlbFlush,
    /// Single-VA invalidation ([`UVMF_INVLPG`]).
    Invlpg,
}

/// Decoded flush target of `update_va_mapping` flags (`flags & !3`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UvmfTarget {
    /// `flags & !3 == 0`: this CPU ([`UVMF_LOCAL`]).
    Local,
    /// `flags & !3 == 4`: all dirty CPUs ([`UVMF_ALL`]).
    All,
    /// Anything else: guest pointer to a vCPU bitmap ([`UVMF_MULTI`]).
    Multi(u64),
}

/// Decoded `update_va_mapping` flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Uvmf {
    /// What to flush.
    pub flush: UvmfFlush,
    /// On which CPUs.
    pub target: UvmfTarget,
}

impl Uvmf {
    /// Decodes the `flags` argument (never fails: every value has a
    /// meaning).
    #[must_use]
    pub const fn decode(flags: u64) -> Self {
        let flush = match flags & UVMF_FLUSHTYPE_MASK {
            UVMF_TLB_FLUSH => UvmfFlush::TlbFlush,
            UVMF_INVLPG => UvmfFlush::Invlpg,
            _ => UvmfFlush::None,
        };
        let target = match flags & !UVMF_FLUSHTYPE_MASK {
            UVMF_LOCAL => UvmfTarget::Local,
            UVMF_ALL => UvmfTarget::All,
            ptr => UvmfTarget::Multi(ptr),
        };
        Self { flush, target }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::AbiBytes;
    use std::string::ToString;

    #[test]
    fn mmu_update_cmd_round_trip() {
        for &c in MmuUpdateCmd::ALL {
            assert_eq!(MmuUpdateCmd::try_from(u64::from(c.raw())), Ok(c));
            let req = MmuUpdate::new(c, 0x1234_5678_9000, 7);
            assert_eq!(req.cmd(), Ok(c));
            assert_eq!(req.addr(), 0x1234_5678_9000);
            assert_eq!(req.cmd_bits(), u64::from(c.raw()));
        }
        // Only the low 3 bits count.
        assert_eq!(
            MmuUpdateCmd::try_from(0xABC0_0002),
            Ok(MmuUpdateCmd::PtUpdatePreserveAd)
        );
        assert_eq!(
            MmuUpdate::new(MmuUpdateCmd::MachphysUpdate, 0x5007, 0).ptr,
            0x5001
        );
        assert_eq!(
            MmuUpdate {
                ptr: 0x5001,
                val: 0
            }
            .mfn(),
            5
        );
    }

    #[test]
    fn mmu_update_cmd_rejections() {
        for bad in 4u64..8 {
            assert_eq!(MmuUpdateCmd::try_from(bad), Err(InvalidMmuUpdateCmd(bad)));
            assert_eq!(
                MmuUpdateCmd::try_from(0x1000 | bad),
                Err(InvalidMmuUpdateCmd(bad))
            );
            let req = MmuUpdate {
                ptr: 0xFFFF_F000 | bad,
                val: 0,
            };
            assert_eq!(req.cmd(), Err(InvalidMmuUpdateCmd(bad)));
            assert_eq!(req.addr(), 0xFFFF_F000);
        }
        assert_eq!(
            InvalidMmuUpdateCmd(5).to_string(),
            "invalid mmu_update command 5"
        );
    }

    #[test]
    fn mmuext_cmd_round_trip_and_rejections() {
        assert_eq!(MmuextCmd::ALL.len(), 20);
        for &c in MmuextCmd::ALL {
            assert_eq!(MmuextCmd::try_from(c.raw()), Ok(c));
            assert_eq!(MmuextOp::with_cmd(c, 1, 2).command(), Ok(c));
        }
        for bad in [14u32, 21, 22, 100, u32::MAX] {
            assert_eq!(MmuextCmd::try_from(bad), Err(UnknownMmuextCmd(bad)));
        }
        assert_eq!(MmuextCmd::PinL3Table.pin_level(), Some(3));
        assert_eq!(MmuextCmd::UnpinTable.pin_level(), None);
        assert_eq!(MmuextCmd::SetLdt.to_string(), "MMUEXT_SET_LDT");
    }

    #[test]
    fn mmuext_accessors() {
        let op = MmuextOp::new(MMUEXT_SET_LDT, 0xFFFF_8800_0000_0000, 0xDEAD_0000_0000_0010);
        assert_eq!(op.linear_addr(), 0xFFFF_8800_0000_0000);
        assert_eq!(op.nr_ents(), 0x10);
        let op = MmuextOp::new(MMUEXT_COPY_PAGE, 5, 6);
        assert_eq!((op.mfn(), op.src_mfn(), op.vcpumask()), (5, 6, 6));
    }

    #[test]
    fn bytes_round_trip() {
        let u = MmuUpdate {
            ptr: 0x0102_0304_0506_0708,
            val: 0x1112_1314_1516_1718,
        };
        let b = u.to_bytes();
        assert_eq!(b[0], 0x08);
        assert_eq!(b[8], 0x18);
        assert_eq!(MmuUpdate::from_bytes(&b), u);

        let op = MmuextOp {
            cmd: 0xA1A2_A3A4,
            _pad: 0xB1B2_B3B4,
            arg1: 0xC1C2_C3C4_C5C6_C7C8,
            arg2: 0xD1D2_D3D4_D5D6_D7D8,
        };
        let b = op.to_bytes();
        assert_eq!(&b[0..4], &[0xA4, 0xA3, 0xA2, 0xA1]);
        assert_eq!(b[8], 0xC8);
        assert_eq!(b[16], 0xD8);
        assert_eq!(MmuextOp::from_bytes(&b), op);

        let raw: [u8; 24] = core::array::from_fn(|i| i as u8 * 7 + 1);
        assert_eq!(MmuextOp::from_bytes(&raw).to_bytes(), raw);
        assert_eq!(<MmuextOp as AbiBytes<24>>::from_prefix(&raw[..23]), None);
        let mut out = [0u8; 30];
        assert!(op.write_prefix(&mut out));
        assert_eq!(MmuextOp::from_prefix(&out), Some(op));
        assert_eq!(MmuUpdate::SIZE, 16);
        assert_eq!(MmuextOp::SIZE, 24);
    }

    #[test]
    fn preempted_count() {
        assert_eq!(split_preempted_count(5), (5, false));
        assert_eq!(split_preempted_count(0x8000_0005), (5, true));
        assert_eq!(split_preempted_count(MMU_UPDATE_PREEMPTED), (0, true));
    }

    #[test]
    fn uvmf() {
        assert_eq!(
            Uvmf::decode(UVMF_NONE),
            Uvmf {
                flush: UvmfFlush::None,
                target: UvmfTarget::Local
            }
        );
        assert_eq!(
            Uvmf::decode(UVMF_INVLPG | UVMF_ALL),
            Uvmf {
                flush: UvmfFlush::Invlpg,
                target: UvmfTarget::All
            }
        );
        assert_eq!(
            Uvmf::decode(UVMF_TLB_FLUSH | UVMF_MULTI | 0x7000),
            Uvmf {
                flush: UvmfFlush::TlbFlush,
                target: UvmfTarget::Multi(0x7000)
            }
        );
        assert_eq!(Uvmf::decode(3).flush, UvmfFlush::None);
        assert_eq!(Uvmf::decode(u64::MAX).target, UvmfTarget::Multi(!3));
    }
}
