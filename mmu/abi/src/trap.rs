//! `set_trap_table` entries, the `iret` hypercall frame and related
//! constants.
#![allow(non_upper_case_globals)]

use crate::bytes::{get_u8, get_u16, get_u32, get_u64, put_u8, put_u16, put_u32, put_u64};

/// `trap_info.flags` bits 1:0: the DPL for software `int n` (0 nobody,
/// 1 kernel, 3 everyone).
pub const TI_DPL_MASK: u8 = 3;
/// `trap_info.flags` bit 2: mask events (set `upcall_mask`) on entry.
pub const TI_MASK_EVENTS: u8 = 4;

/// `iret_context.flags`: the frame came from a `syscall`, so `rcx`/`r11`
/// are **not** restored.
pub const VGCF_in_syscall: u64 = 0x100;

/// In a PV bounce frame, the saved upcall mask sits in bits 39:32 of the
/// CS slot; this is their shift.
pub const BOUNCE_CS_UPCALL_MASK_SHIFT: u32 = 32;

/// `trap_info_t` (16 bytes): one virtual IDT entry. A table is read until
/// an entry with `address == 0`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[repr(C)]
pub struct TrapInfo {
    /// Exception/interrupt vector.
    pub vector: u8,
    /// [`TI_DPL_MASK`] | [`TI_MASK_EVENTS`].
    pub flags: u8,
    /// Code selector (RPL fixed up by Xen).
    pub cs: u16,
    /// Padding (bytes 4..8).
    pub _pad: u32,
    /// Handler address (0 terminates the table).
    pub address: u64,
}

const _: () = assert!(core::mem::size_of::<TrapInfo>() == 16);
const _: () = assert!(core::mem::align_of::<TrapInfo>() == 8);
const _: () = assert!(core::mem::offset_of!(TrapInfo, vector) == 0);
const _: () = assert!(core::mem::offset_of!(TrapInfo, flags) == 1);
const _: () = assert!(core::mem::offset_of!(TrapInfo, cs) == 2);
const _: () = assert!(core::mem::offset_of!(TrapInfo, _pad) == 4);
const _: () = assert!(core::mem::offset_of!(TrapInfo, address) == 8);

impl TrapInfo {
    /// The DPL (`flags & 3`).
    #[must_use]
    pub const fn dpl(&self) -> u8 {
        self.flags & TI_DPL_MASK
    }

    /// `true` if events are masked on entry (`flags & 4`).
    #[must_use]
    pub const fn masks_events(&self) -> bool {
        self.flags & TI_MASK_EVENTS != 0
    }

    /// `true` for the table terminator (`address == 0`).
    #[must_use]
    pub const fn is_terminator(&self) -> bool {
        self.address == 0
    }

    /// Decodes from the 16-byte little-endian encoding.
    #[must_use]
    pub fn from_bytes(b: &[u8; 16]) -> Self {
        Self {
            vector: get_u8(b, 0),
            flags: get_u8(b, 1),
            cs: get_u16(b, 2),
            _pad: get_u32(b, 4),
            address: get_u64(b, 8),
        }
    }

    /// Encodes as 16 little-endian bytes.
    #[must_use]
    pub fn to_bytes(&self) -> [u8; 16] {
        let mut b = [0; 16];
        put_u8(&mut b, 0, self.vector);
        put_u8(&mut b, 1, self.flags);
        put_u16(&mut b, 2, self.cs);
        put_u32(&mut b, 4, self._pad);
        put_u64(&mut b, 8, self.address);
        b
    }
}

impl_abi_bytes!(TrapInfo, 16);

/// The frame the `iret` hypercall reads from the guest stack (72 bytes,
/// `struct iret_context`), lowest address first: the hypercall-page stub
/// pushed `rcx`, `r11`, `rax` on top of the guest's `flags` word and an
/// IRET-style frame.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[repr(C)]
pub struct IretContext {
    /// Saved `rax`: the hypercall's "return value".
    pub rax: u64,
    /// Saved `r11` (restored unless [`VGCF_in_syscall`]).
    pub r11: u64,
    /// Saved `rcx` (restored unless [`VGCF_in_syscall`]).
    pub rcx: u64,
    /// `0` or [`VGCF_in_syscall`].
    pub flags: u64,
    /// Return `rip`.
    pub rip: u64,
    /// Return `cs` (`cs & 3 == 3` → switch to guest user mode).
    pub cs: u64,
    /// Return `rflags`.
    pub rflags: u64,
    /// Return `rsp`.
    pub rsp: u64,
    /// Return `ss`.
    pub ss: u64,
}

const _: () = assert!(core::mem::size_of::<IretContext>() == 72);
const _: () = assert!(core::mem::offset_of!(IretContext, rax) == 0);
const _: () = assert!(core::mem::offset_of!(IretContext, r11) == 8);
const _: () = assert!(core::mem::offset_of!(IretContext, rcx) == 16);
const _: () = assert!(core::mem::offset_of!(IretContext, flags) == 24);
const _: () = assert!(core::mem::offset_of!(IretContext, rip) == 32);
const _: () = assert!(core::mem::offset_of!(IretContext, cs) == 40);
const _: () = assert!(core::mem::offset_of!(IretContext, rflags) == 48);
const _: () = assert!(core::mem::offset_of!(IretContext, rsp) == 56);
const _: () = assert!(core::mem::offset_of!(IretContext, ss) == 64);

impl IretContext {
    /// `true` if `flags` has [`VGCF_in_syscall`].
    #[must_use]
    pub const fn in_syscall(&self) -> bool {
        self.flags & VGCF_in_syscall != 0
    }

    /// Decodes from the 72-byte little-endian encoding.
    #[must_use]
    pub fn from_bytes(b: &[u8; 72]) -> Self {
        Self {
            rax: get_u64(b, 0),
            r11: get_u64(b, 8),
            rcx: get_u64(b, 16),
            flags: get_u64(b, 24),
            rip: get_u64(b, 32),
            cs: get_u64(b, 40),
            rflags: get_u64(b, 48),
            rsp: get_u64(b, 56),
            ss: get_u64(b, 64),
        }
    }

    /// Encodes as 72 little-endian bytes.
    #[must_use]
    pub fn to_bytes(&self) -> [u8; 72] {
        let mut b = [0; 72];
        for (i, v) in [
            self.rax,
            self.r11,
            self.rcx,
            self.flags,
            self.rip,
            self.cs,
            self.rflags,
            self.rsp,
            self.ss,
        ]
        .into_iter()
        .enumerate()
        {
            put_u64(&mut b, 8 * i, v);
        }
        b
    }
}

impl_abi_bytes!(IretContext, 72);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trap_info() {
        let t = TrapInfo {
            vector: 14,
            flags: TI_MASK_EVENTS | 3,
            cs: 0xe033,
            _pad: 0,
            address: 0xFFFF_8800_0010_0000,
        };
        let b = t.to_bytes();
        assert_eq!(&b[..4], &[14, 7, 0x33, 0xe0]);
        assert_eq!(b[8..16], 0xFFFF_8800_0010_0000u64.to_le_bytes());
        assert_eq!(TrapInfo::from_bytes(&b), t);
        assert_eq!(t.dpl(), 3);
        assert!(t.masks_events());
        assert!(!t.is_terminator());
        assert!(TrapInfo::default().is_terminator());
        let raw: [u8; 16] = core::array::from_fn(|i| i as u8 + 0x80);
        assert_eq!(TrapInfo::from_bytes(&raw).to_bytes(), raw);
    }

    #[test]
    fn iret_context() {
        let raw: [u8; 72] = core::array::from_fn(|i| i as u8);
        let c = IretContext::from_bytes(&raw);
        assert_eq!(c.rax, u64::from_le_bytes([0, 1, 2, 3, 4, 5, 6, 7]));
        assert_eq!(c.ss, u64::from_le_bytes([64, 65, 66, 67, 68, 69, 70, 71]));
        assert_eq!(c.to_bytes(), raw);
        let c = IretContext {
            flags: VGCF_in_syscall,
            ..IretContext::default()
        };
        assert!(c.in_syscall());
        assert_eq!(IretContext::from_bytes(&c.to_bytes()), c);
    }
}
