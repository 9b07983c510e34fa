//! Panic-free little-endian field access on byte buffers, plus the public
//! [`AbiBytes`] trait.
//!
//! Out-of-range accesses read as zero and writes are dropped; the fixed
//! offsets used by this crate are all in range (checked by the layout
//! assertions and the round-trip tests), so that never happens in practice.

/// A plain-data ABI structure with a fixed little-endian byte encoding of
/// `N` bytes (its exact in-memory size on x86-64).
///
/// Every structure in this crate also has inherent `from_bytes`/`to_bytes`
/// methods; this trait lets code be generic over them.
pub trait AbiBytes<const N: usize>: Sized {
    /// Decodes the structure from its `N`-byte little-endian encoding.
    fn from_bytes(bytes: &[u8; N]) -> Self;

    /// Encodes the structure into its `N`-byte little-endian encoding.
    fn to_bytes(&self) -> [u8; N];

    /// Decodes from the first `N` bytes of `bytes`; `None` if it is shorter.
    fn from_prefix(bytes: &[u8]) -> Option<Self> {
        bytes.first_chunk::<N>().map(Self::from_bytes)
    }

    /// Encodes into the first `N` bytes of `out`; returns `false` (writing
    /// nothing) if `out` is shorter than `N`.
    fn write_prefix(&self, out: &mut [u8]) -> bool {
        match out.first_chunk_mut::<N>() {
            Some(dst) => {
                *dst = self.to_bytes();
                true
            }
            None => false,
        }
    }
}

pub(crate) fn get<const N: usize>(b: &[u8], off: usize) -> [u8; N] {
    b.get(off..)
        .and_then(|s| s.first_chunk::<N>())
        .copied()
        .unwrap_or([0; N])
}

pub(crate) fn put<const N: usize>(b: &mut [u8], off: usize, v: [u8; N]) {
    if let Some(dst) = b.get_mut(off..).and_then(|s| s.first_chunk_mut::<N>()) {
        *dst = v;
    }
}

pub(crate) fn get_u8(b: &[u8], off: usize) -> u8 {
    b.get(off).copied().unwrap_or(0)
}

pub(crate) fn get_u16(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes(get(b, off))
}

pub(crate) fn get_u32(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(get(b, off))
}

pub(crate) fn get_u64(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(get(b, off))
}

pub(crate) fn put_u8(b: &mut [u8], off: usize, v: u8) {
    if let Some(dst) = b.get_mut(off) {
        *dst = v;
    }
}

pub(crate) fn put_u16(b: &mut [u8], off: usize, v: u16) {
    put(b, off, v.to_le_bytes());
}

pub(crate) fn put_u32(b: &mut [u8], off: usize, v: u32) {
    put(b, off, v.to_le_bytes());
}

pub(crate) fn put_u64(b: &mut [u8], off: usize, v: u64) {
    put(b, off, v.to_le_bytes());
}

/// The bytes of a NUL-terminated string field up to (excluding) the first
/// NUL, or the whole field if it has none.
pub(crate) fn c_str(field: &[u8]) -> &[u8] {
    match field.iter().position(|&c| c == 0) {
        Some(n) => field.get(..n).unwrap_or(field),
        None => field,
    }
}

/// Debug-formats a byte string as escaped ASCII in quotes.
pub(crate) struct EscapedBytes<'a>(pub(crate) &'a [u8]);

impl core::fmt::Debug for EscapedBytes<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        use core::fmt::Write;
        f.write_char('"')?;
        for &c in self.0 {
            for e in core::ascii::escape_default(c) {
                f.write_char(char::from(e))?;
            }
        }
        f.write_char('"')
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_range_is_harmless() {
        let mut b = [0u8; 4];
        assert_eq!(get_u64(&b, 0), 0);
        assert_eq!(get_u32(&b, 1), 0);
        assert_eq!(get_u8(&b, 9), 0);
        put_u64(&mut b, 0, u64::MAX);
        put_u16(&mut b, usize::MAX, 0xFFFF);
        put_u8(&mut b, 4, 1);
        assert_eq!(b, [0; 4]);
        put_u16(&mut b, 2, 0xBEEF);
        assert_eq!(b, [0, 0, 0xEF, 0xBE]);
        assert_eq!(get_u16(&b, 2), 0xBEEF);
    }

    #[test]
    fn c_str_stops_at_nul() {
        assert_eq!(c_str(b"abc\0def"), b"abc");
        assert_eq!(c_str(b"abc"), b"abc");
        assert_eq!(c_str(b"\0"), b"");
    }
}
