//! `multicall`: batched hypercalls.
//!
//! Each entry's `op` is dispatched with `args[0..=4]` (`args[5]` is
//! ignored) and its return value written to `result`. A failing sub-call
//! does not stop the batch. An `iret` entry ends the batch; nested
//! `multicall` entries get `-EINVAL`.

use crate::bytes::{get_u64, put_u64};

/// Number of `args` slots in a [`MulticallEntry`].
pub const MULTICALL_NR_ARGS: usize = 6;
/// Number of `args` Xen actually passes to the sub-call (`args[0..=4]`).
pub const MULTICALL_NR_ARGS_USED: usize = 5;
/// Byte a **debug** Xen fills the whole guest entry with before writing
/// `result`.
pub const MULTICALL_DEBUG_POISON: u8 = 0xAA;

/// `multicall_entry_t` (64 bytes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[repr(C)]
pub struct MulticallEntry {
    /// Hypercall number.
    pub op: u64,
    /// Return value of the sub-call (written by Xen).
    pub result: u64,
    /// Arguments; only `args[0..=4]` are used.
    pub args: [u64; MULTICALL_NR_ARGS],
}

const _: () = assert!(core::mem::size_of::<MulticallEntry>() == 64);
const _: () = assert!(core::mem::align_of::<MulticallEntry>() == 8);
const _: () = assert!(core::mem::offset_of!(MulticallEntry, op) == 0);
const _: () = assert!(core::mem::offset_of!(MulticallEntry, result) == 8);
const _: () = assert!(core::mem::offset_of!(MulticallEntry, args) == 16);

/// Byte offset of `result` inside a [`MulticallEntry`] (for writing back
/// just the result).
pub const MULTICALL_RESULT_OFFSET: usize = 8;

impl MulticallEntry {
    /// The decoded hypercall, if `op` is a known number.
    pub fn hypercall(&self) -> Result<crate::Hypercall, crate::hypercall::UnknownHypercall> {
        crate::Hypercall::try_from(self.op)
    }

    /// The five arguments Xen passes to the sub-call.
    #[must_use]
    pub const fn used_args(&self) -> [u64; MULTICALL_NR_ARGS_USED] {
        [
            self.args[0],
            self.args[1],
            self.args[2],
            self.args[3],
            self.args[4],
        ]
    }

    /// Decodes from the 64-byte little-endian encoding.
    #[must_use]
    pub fn from_bytes(b: &[u8; 64]) -> Self {
        Self {
            op: get_u64(b, 0),
            result: get_u64(b, 8),
            args: core::array::from_fn(|i| get_u64(b, 16 + 8 * i)),
        }
    }

    /// Encodes as 64 little-endian bytes.
    #[must_use]
    pub fn to_bytes(&self) -> [u8; 64] {
        let mut b = [0; 64];
        put_u64(&mut b, 0, self.op);
        put_u64(&mut b, 8, self.result);
        for (i, a) in self.args.iter().enumerate() {
            put_u64(&mut b, 16 + 8 * i, *a);
        }
        b
    }
}

impl_abi_bytes!(MulticallEntry, 64);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Hypercall;

    #[test]
    fn bytes_round_trip() {
        let e = MulticallEntry {
            op: 14,
            result: (-22i64) as u64,
            args: [1, 2, 3, 4, 5, 0xFFFF_FFFF_FFFF_FFFF],
        };
        let b = e.to_bytes();
        assert_eq!(b[0], 14);
        assert_eq!(b[16], 1);
        assert_eq!(b[56..64], [0xFF; 8]);
        assert_eq!(MulticallEntry::from_bytes(&b), e);
        let raw: [u8; 64] = core::array::from_fn(|i| (i * 13) as u8);
        assert_eq!(MulticallEntry::from_bytes(&raw).to_bytes(), raw);
        assert_eq!(e.hypercall(), Ok(Hypercall::UpdateVaMapping));
        assert_eq!(e.used_args(), [1, 2, 3, 4, 5]);
        assert_eq!(
            u64::from_le_bytes(b[MULTICALL_RESULT_OFFSET..][..8].try_into().unwrap()),
            e.result
        );
    }
}
