//! `callback_op`: registering guest entry points (event upcall, syscall,
//! ...).
#![allow(non_upper_case_globals)]

use crate::bytes::{get_u16, get_u32, get_u64, put_u16, put_u32, put_u64};

/// Register a callback (`arg` → [`CallbackRegister`]).
pub const CALLBACKOP_register: u32 = 0;
/// Unregister a callback (`arg` → [`CallbackUnregister`]).
pub const CALLBACKOP_unregister: u32 = 1;

/// Event-channel upcall.
pub const CALLBACKTYPE_event: u16 = 0;
/// Failsafe (Xen could not reload guest segment registers).
pub const CALLBACKTYPE_failsafe: u16 = 1;
/// 64-bit `syscall` from guest user mode.
pub const CALLBACKTYPE_syscall: u16 = 2;
/// NMI.
pub const CALLBACKTYPE_nmi: u16 = 4;
/// `sysenter`.
pub const CALLBACKTYPE_sysenter: u16 = 5;
/// 32-bit (compat) `syscall`.
pub const CALLBACKTYPE_syscall32: u16 = 7;

/// `CallbackRegister::flags`: mask events on entry.
pub const CALLBACKF_mask_events: u16 = 1;

abi_enum! {
    /// A `callback_op` command.
    pub enum CallbackOp: u32, raw u32 {
        /// [`CALLBACKOP_register`]
        Register = CALLBACKOP_register => "CALLBACKOP_register",
        /// [`CALLBACKOP_unregister`]
        Unregister = CALLBACKOP_unregister => "CALLBACKOP_unregister",
    }
}

raw_error! {
    /// An unknown `callback_op` command.
    UnknownCallbackOp(u32), "unknown callback_op command {}"
}

abi_try_from!(CallbackOp, u32, UnknownCallbackOp);

abi_enum! {
    /// A callback type (64-bit PV).
    pub enum CallbackType: u16, raw u16 {
        /// [`CALLBACKTYPE_event`]
        Event = CALLBACKTYPE_event => "CALLBACKTYPE_event",
        /// [`CALLBACKTYPE_failsafe`]
        Failsafe = CALLBACKTYPE_failsafe => "CALLBACKTYPE_failsafe",
        /// [`CALLBACKTYPE_syscall`]
        Syscall = CALLBACKTYPE_syscall => "CALLBACKTYPE_syscall",
        /// [`CALLBACKTYPE_nmi`]
        Nmi = CALLBACKTYPE_nmi => "CALLBACKTYPE_nmi",
        /// [`CALLBACKTYPE_sysenter`]
        Sysenter = CALLBACKTYPE_sysenter => "CALLBACKTYPE_sysenter",
        /// [`CALLBACKTYPE_syscall32`]
        Syscall32 = CALLBACKTYPE_syscall32 => "CALLBACKTYPE_syscall32",
    }
}

raw_error! {
    /// An unknown callback type.
    UnknownCallbackType(u16), "unknown callback type {}"
}

abi_try_from!(CallbackType, u16, UnknownCallbackType);

/// `struct callback_register` (16 bytes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[repr(C)]
pub struct CallbackRegister {
    /// `type`: `CALLBACKTYPE_*`.
    pub ty: u16,
    /// `CALLBACKF_*` flags.
    pub flags: u16,
    /// Padding (bytes 4..8).
    pub _pad: u32,
    /// Entry point address.
    pub address: u64,
}

const _: () = assert!(core::mem::size_of::<CallbackRegister>() == 16);
const _: () = assert!(core::mem::align_of::<CallbackRegister>() == 8);
const _: () = assert!(core::mem::offset_of!(CallbackRegister, ty) == 0);
const _: () = assert!(core::mem::offset_of!(CallbackRegister, flags) == 2);
const _: () = assert!(core::mem::offset_of!(CallbackRegister, _pad) == 4);
const _: () = assert!(core::mem::offset_of!(CallbackRegister, address) == 8);

impl CallbackRegister {
    /// The decoded callback type.
    pub fn callback_type(&self) -> Result<CallbackType, UnknownCallbackType> {
        CallbackType::try_from(self.ty)
    }

    /// `true` if [`CALLBACKF_mask_events`] is set.
    #[must_use]
    pub const fn masks_events(&self) -> bool {
        self.flags & CALLBACKF_mask_events != 0
    }

    /// Decodes from the 16-byte little-endian encoding.
    #[must_use]
    pub fn from_bytes(b: &[u8; 16]) -> Self {
        Self {
            ty: get_u16(b, 0),
            flags: get_u16(b, 2),
            _pad: get_u32(b, 4),
            address: get_u64(b, 8),
        }
    }

    /// Encodes as 16 little-endian bytes.
    #[must_use]
    pub fn to_bytes(&self) -> [u8; 16] {
        let mut b = [0; 16];
        put_u16(&mut b, 0, self.ty);
        put_u16(&mut b, 2, self.flags);
        put_u32(&mut b, 4, self._pad);
        put_u64(&mut b, 8, self.address);
        b
    }
}

impl_abi_bytes!(CallbackRegister, 16);

/// `struct callback_unregister` (4 bytes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[repr(C)]
pub struct CallbackUnregister {
    /// `type`: `CALLBACKTYPE_*`.
    pub ty: u16,
    /// Unused (bytes 2..4).
    pub _pad: u16,
}

const _: () = assert!(core::mem::size_of::<CallbackUnregister>() == 4);
const _: () = assert!(core::mem::offset_of!(CallbackUnregister, ty) == 0);
const _: () = assert!(core::mem::offset_of!(CallbackUnregister, _pad) == 2);

impl CallbackUnregister {
    /// The decoded callback type.
    pub fn callback_type(&self) -> Result<CallbackType, UnknownCallbackType> {
        CallbackType::try_from(self.ty)
    }

    /// Decodes from the 4-byte little-endian encoding.
    #[must_use]
    pub fn from_bytes(b: &[u8; 4]) -> Self {
        Self {
            ty: get_u16(b, 0),
            _pad: get_u16(b, 2),
        }
    }

    /// Encodes as 4 little-endian bytes.
    #[must_use]
    pub fn to_bytes(&self) -> [u8; 4] {
        let mut b = [0; 4];
        put_u16(&mut b, 0, self.ty);
        put_u16(&mut b, 2, self._pad);
        b
    }
}

impl_abi_bytes!(CallbackUnregister, 4);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enums() {
        for &c in CallbackOp::ALL {
            assert_eq!(CallbackOp::try_from(c.raw()), Ok(c));
        }
        assert_eq!(CallbackOp::try_from(2), Err(UnknownCallbackOp(2)));
        assert_eq!(CallbackType::ALL.len(), 6);
        for &t in CallbackType::ALL {
            assert_eq!(CallbackType::try_from(t.raw()), Ok(t));
        }
        for bad in [3u16, 6, 8, u16::MAX] {
            assert_eq!(CallbackType::try_from(bad), Err(UnknownCallbackType(bad)));
        }
    }

    #[test]
    fn bytes_round_trip() {
        let r = CallbackRegister {
            ty: CALLBACKTYPE_syscall32,
            flags: CALLBACKF_mask_events,
            _pad: 0,
            address: 0xFFFF_8800_1234_5678,
        };
        let b = r.to_bytes();
        assert_eq!(&b[..4], &[7, 0, 1, 0]);
        assert_eq!(b[8..16], 0xFFFF_8800_1234_5678u64.to_le_bytes());
        assert_eq!(CallbackRegister::from_bytes(&b), r);
        assert_eq!(r.callback_type(), Ok(CallbackType::Syscall32));
        assert!(r.masks_events());
        let raw: [u8; 16] = core::array::from_fn(|i| 0xF0 - i as u8);
        assert_eq!(CallbackRegister::from_bytes(&raw).to_bytes(), raw);

        let u = CallbackUnregister { ty: 5, _pad: 0 };
        assert_eq!(u.to_bytes(), [5, 0, 0, 0]);
        assert_eq!(CallbackUnregister::from_bytes(&u.to_bytes()), u);
        assert_eq!(u.callback_type(), Ok(CallbackType::Sysenter));
        assert_eq!(
            CallbackUnregister::from_bytes(&[3, 0, 9, 9]).callback_type(),
            Err(UnknownCallbackType(3))
        );
    }
}
