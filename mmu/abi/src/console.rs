//! `console_io` commands and the PV console ring page
//! (`struct xencons_interface`).
//!
//! The guest writes bytes into `out`, advances `out_prod` and notifies the
//! console event channel, then (XTF) spins on `SCHEDOP_yield` until
//! `out_cons == out_prod`, so a backend must drain the ring. Indices are
//! free-running `u32`s; mask them with the ring size.
#![allow(non_upper_case_globals)]

use crate::bytes::{get, get_u32, put, put_u32};

/// `console_io` command: write `count` bytes from `buf`.
pub const CONSOLEIO_write: u32 = 0;
/// `console_io` command: read up to `count` bytes into `buf`.
pub const CONSOLEIO_read: u32 = 1;

abi_enum! {
    /// A `console_io` command (unknown commands → `-ENOSYS`).
    pub enum ConsoleIoCmd: u32, raw u32 {
        /// [`CONSOLEIO_write`]
        Write = CONSOLEIO_write => "CONSOLEIO_write",
        /// [`CONSOLEIO_read`]
        Read = CONSOLEIO_read => "CONSOLEIO_read",
    }
}

raw_error! {
    /// An unknown `console_io` command.
    UnknownConsoleIoCmd(u32), "unknown console_io command {}"
}

abi_try_from!(ConsoleIoCmd, u32, UnknownConsoleIoCmd);

/// Size of the `in` ring (backend → guest).
pub const XENCONS_IN_SIZE: usize = 1024;
/// Size of the `out` ring (guest → backend).
pub const XENCONS_OUT_SIZE: usize = 2048;
/// Offset of `in` in the ring page.
pub const XENCONS_IN_OFFSET: usize = 0;
/// Offset of `out` in the ring page.
pub const XENCONS_OUT_OFFSET: usize = 1024;
/// Offset of `in_cons` (u32).
pub const XENCONS_IN_CONS_OFFSET: usize = 3072;
/// Offset of `in_prod` (u32).
pub const XENCONS_IN_PROD_OFFSET: usize = 3076;
/// Offset of `out_cons` (u32).
pub const XENCONS_OUT_CONS_OFFSET: usize = 3080;
/// Offset of `out_prod` (u32).
pub const XENCONS_OUT_PROD_OFFSET: usize = 3084;
/// Size of the structure.
pub const XENCONS_INTERFACE_SIZE: usize = 3088;

/// Index into `in` for a free-running index.
#[must_use]
pub const fn xencons_in_idx(idx: u32) -> usize {
    idx as usize & (XENCONS_IN_SIZE - 1)
}

/// Index into `out` for a free-running index.
#[must_use]
pub const fn xencons_out_idx(idx: u32) -> usize {
    idx as usize & (XENCONS_OUT_SIZE - 1)
}

/// `struct xencons_interface` (3088 bytes, at the start of the console
/// ring page). The C fields `in`/`out` are named `input`/`output` here.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
#[repr(C)]
pub struct XenconsInterface {
    /// `in[1024]`: backend → guest ring.
    pub input: [u8; XENCONS_IN_SIZE],
    /// `out[2048]`: guest → backend ring.
    pub output: [u8; XENCONS_OUT_SIZE],
    /// Consumer index of `in` (advanced by the guest).
    pub in_cons: u32,
    /// Producer index of `in` (advanced by the backend).
    pub in_prod: u32,
    /// Consumer index of `out` (advanced by the backend).
    pub out_cons: u32,
    /// Producer index of `out` (advanced by the guest).
    pub out_prod: u32,
}

const _: () = assert!(core::mem::size_of::<XenconsInterface>() == XENCONS_INTERFACE_SIZE);
const _: () = assert!(core::mem::align_of::<XenconsInterface>() == 4);
const _: () = assert!(core::mem::offset_of!(XenconsInterface, input) == XENCONS_IN_OFFSET);
const _: () = assert!(core::mem::offset_of!(XenconsInterface, output) == XENCONS_OUT_OFFSET);
const _: () = assert!(core::mem::offset_of!(XenconsInterface, in_cons) == XENCONS_IN_CONS_OFFSET);
const _: () = assert!(core::mem::offset_of!(XenconsInterface, in_prod) == XENCONS_IN_PROD_OFFSET);
const _: () = assert!(core::mem::offset_of!(XenconsInterface, out_cons) == XENCONS_OUT_CONS_OFFSET);
const _: () = assert!(core::mem::offset_of!(XenconsInterface, out_prod) == XENCONS_OUT_PROD_OFFSET);

impl Default for XenconsInterface {
    fn default() -> Self {
        Self {
            input: [0; XENCONS_IN_SIZE],
            output: [0; XENCONS_OUT_SIZE],
            in_cons: 0,
            in_prod: 0,
            out_cons: 0,
            out_prod: 0,
        }
    }
}

impl core::fmt::Debug for XenconsInterface {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("XenconsInterface")
            .field("in_cons", &self.in_cons)
            .field("in_prod", &self.in_prod)
            .field("out_cons", &self.out_cons)
            .field("out_prod", &self.out_prod)
            .finish_non_exhaustive()
    }
}

impl XenconsInterface {
    /// Bytes the guest has produced in `out` and the backend not yet
    /// consumed (`out_prod - out_cons`, wrapping).
    #[must_use]
    pub const fn out_pending(&self) -> u32 {
        self.out_prod.wrapping_sub(self.out_cons)
    }

    /// Copies the pending `out` bytes (at most `dst.len()`, and at most one
    /// ring's worth) into `dst`, advances `out_cons` by that many and
    /// returns the count. A corrupt `out_prod` cannot make this read more
    /// than [`XENCONS_OUT_SIZE`] bytes.
    pub fn drain_out(&mut self, dst: &mut [u8]) -> usize {
        let pending = (self.out_pending() as usize).min(XENCONS_OUT_SIZE);
        let n = pending.min(dst.len());
        for (i, d) in dst.iter_mut().take(n).enumerate() {
            let idx = xencons_out_idx(self.out_cons.wrapping_add(i as u32));
            *d = self.output.get(idx).copied().unwrap_or(0);
        }
        self.out_cons = self.out_cons.wrapping_add(n as u32);
        n
    }

    /// Decodes from the 3088-byte little-endian encoding.
    #[must_use]
    pub fn from_bytes(b: &[u8; XENCONS_INTERFACE_SIZE]) -> Self {
        Self {
            input: get(b, XENCONS_IN_OFFSET),
            output: get(b, XENCONS_OUT_OFFSET),
            in_cons: get_u32(b, XENCONS_IN_CONS_OFFSET),
            in_prod: get_u32(b, XENCONS_IN_PROD_OFFSET),
            out_cons: get_u32(b, XENCONS_OUT_CONS_OFFSET),
            out_prod: get_u32(b, XENCONS_OUT_PROD_OFFSET),
        }
    }

    /// Encodes as 3088 little-endian bytes.
    #[must_use]
    pub fn to_bytes(&self) -> [u8; XENCONS_INTERFACE_SIZE] {
        let mut b = [0; XENCONS_INTERFACE_SIZE];
        put(&mut b, XENCONS_IN_OFFSET, self.input);
        put(&mut b, XENCONS_OUT_OFFSET, self.output);
        put_u32(&mut b, XENCONS_IN_CONS_OFFSET, self.in_cons);
        put_u32(&mut b, XENCONS_IN_PROD_OFFSET, self.in_prod);
        put_u32(&mut b, XENCONS_OUT_CONS_OFFSET, self.out_cons);
        put_u32(&mut b, XENCONS_OUT_PROD_OFFSET, self.out_prod);
        b
    }
}

impl_abi_bytes!(XenconsInterface, XENCONS_INTERFACE_SIZE);

#[cfg(test)]
mod tests {
    use super::*;
    use std::format;

    #[test]
    fn cmd() {
        for &c in ConsoleIoCmd::ALL {
            assert_eq!(ConsoleIoCmd::try_from(c.raw()), Ok(c));
        }
        assert_eq!(ConsoleIoCmd::try_from(0), Ok(ConsoleIoCmd::Write));
        assert_eq!(ConsoleIoCmd::try_from(1), Ok(ConsoleIoCmd::Read));
        for bad in [2u32, 3, u32::MAX] {
            assert_eq!(ConsoleIoCmd::try_from(bad), Err(UnknownConsoleIoCmd(bad)));
        }
    }

    #[test]
    fn bytes_round_trip() {
        let mut c = XenconsInterface::default();
        c.input[5] = 0x11;
        c.output[2047] = 0x22;
        c.in_cons = 1;
        c.in_prod = 2;
        c.out_cons = 3;
        c.out_prod = 0xAABB_CCDD;
        let b = c.to_bytes();
        assert_eq!(b[5], 0x11);
        assert_eq!(b[1024 + 2047], 0x22);
        assert_eq!(b[3072..3076], 1u32.to_le_bytes());
        assert_eq!(b[3076..3080], 2u32.to_le_bytes());
        assert_eq!(b[3080..3084], 3u32.to_le_bytes());
        assert_eq!(b[3084..3088], 0xAABB_CCDDu32.to_le_bytes());
        assert_eq!(XenconsInterface::from_bytes(&b), c);
        let raw: [u8; XENCONS_INTERFACE_SIZE] = core::array::from_fn(|i| (i % 251) as u8);
        assert_eq!(XenconsInterface::from_bytes(&raw).to_bytes(), raw);
        assert!(format!("{c:?}").contains("out_prod"));
    }

    #[test]
    fn drain() {
        // Wrapped ring: cons near u32::MAX.
        let mut c = XenconsInterface {
            out_cons: u32::MAX - 1,
            ..XenconsInterface::default()
        };
        for (i, &byte) in b"hello".iter().enumerate() {
            c.output[xencons_out_idx(c.out_cons.wrapping_add(i as u32))] = byte;
        }
        c.out_prod = c.out_cons.wrapping_add(5);
        assert_eq!(c.out_pending(), 5);
        let mut buf = [0u8; 3];
        assert_eq!(c.drain_out(&mut buf), 3);
        assert_eq!(&buf, b"hel");
        let mut buf = [0u8; 16];
        assert_eq!(c.drain_out(&mut buf), 2);
        assert_eq!(&buf[..2], b"lo");
        assert_eq!(c.out_pending(), 0);
        // Corrupt producer: bounded to one ring.
        c.out_prod = c.out_cons.wrapping_add(100_000);
        let mut big = [0u8; 4096];
        assert_eq!(c.drain_out(&mut big), XENCONS_OUT_SIZE);
        assert_eq!(xencons_in_idx(1025), 1);
    }
}
