//! Virtual-address ranges handed to the walker.

use std::ops::Range;

use crate::paging::PagingMode;

/// Errors in a virtual-address range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RangeError {
    /// The end lies below the start.
    #[error("inverted range {start:#x}..{end:#x}")]
    Inverted {
        /// First address.
        start: u64,
        /// Exclusive end.
        end: u64,
    },
    /// `start + len` runs past the top of the 64-bit address space.
    #[error("range of {len:#x} bytes at {start:#x} wraps past the top of the address space")]
    Wraps {
        /// First address.
        start: u64,
        /// Length in bytes.
        len: u64,
    },
    /// The range touches non-canonical addresses (it starts or ends in the canonical
    /// hole, or spans it).
    #[error("range {start:#x}..={last:#x} is not canonical")]
    NonCanonical {
        /// First address.
        start: u64,
        /// Last address (inclusive).
        last: u64,
    },
}

/// A range of virtual addresses: `len` bytes from `start`. The walker visits every page
/// the range touches.
///
/// The end is held as a length so that a range may reach the very top of the address
/// space (`start + len == 2^64`) without overflow.
///
/// ```
/// use pvmmu::VaRange;
/// let r = VaRange::try_from(0x1000..0x3000).unwrap();
/// assert_eq!((r.start(), r.len(), r.last()), (0x1000, 0x2000, Some(0x2fff)));
/// let top = VaRange::to_top(0xffff_ffff_ffff_f000);
/// assert_eq!(top.last(), Some(u64::MAX));
/// assert!(VaRange::new(u64::MAX, 2).is_err());
/// assert!(VaRange::try_from(0x3000..0x1000).is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct VaRange {
    start: u64,
    len: u64,
}

impl VaRange {
    /// `len` bytes from `start`; an error if it would wrap past 2^64.
    pub fn new(start: u64, len: u64) -> Result<VaRange, RangeError> {
        if len > 0 && start.checked_add(len - 1).is_none() {
            return Err(RangeError::Wraps { start, len });
        }
        Ok(VaRange { start, len })
    }

    /// From `start` to the top of the 64-bit address space.
    pub const fn to_top(start: u64) -> VaRange {
        VaRange {
            start,
            // `start == 0` would need 2^64 bytes; cap at the largest representable length
            // (the final byte is outside every canonical half-range that starts at 0).
            len: if start == 0 {
                u64::MAX
            } else {
                0u64.wrapping_sub(start)
            },
        }
    }

    /// The single page containing `va`.
    pub const fn page(va: u64) -> VaRange {
        VaRange {
            start: va & !0xfff,
            len: 0x1000,
        }
    }

    /// The whole lower canonical half of `mode`'s address space.
    pub const fn lower_half(mode: PagingMode) -> VaRange {
        VaRange {
            start: 0,
            len: mode.lower_half_last() + 1,
        }
    }

    /// The whole upper canonical half of `mode`'s address space.
    pub const fn upper_half(mode: PagingMode) -> VaRange {
        VaRange::to_top(mode.upper_half_start())
    }

    /// First address.
    pub const fn start(&self) -> u64 {
        self.start
    }

    /// Length in bytes.
    pub const fn len(&self) -> u64 {
        self.len
    }

    /// Whether the range is empty.
    pub const fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Last address (inclusive), or `None` for an empty range.
    pub const fn last(&self) -> Option<u64> {
        if self.len == 0 {
            None
        } else {
            Some(self.start + (self.len - 1))
        }
    }

    /// The linear offsets (see [`PagingMode::linear`]) of the first and last byte, or
    /// `None` if the range is empty; an error if any address of it is not canonical.
    pub(crate) fn linear_bounds(&self, mode: PagingMode) -> Result<Option<(u64, u64)>, RangeError> {
        let Some(last) = self.last() else {
            return Ok(None);
        };
        let bad = RangeError::NonCanonical {
            start: self.start,
            last,
        };
        // Both ends canonical and in the same half: then every address between is too.
        let same_half = (self.start <= mode.lower_half_last()) == (last <= mode.lower_half_last());
        if !mode.is_canonical(self.start) || !mode.is_canonical(last) || !same_half {
            return Err(bad);
        }
        Ok(Some((mode.linear(self.start), mode.linear(last))))
    }
}

impl TryFrom<Range<u64>> for VaRange {
    type Error = RangeError;

    fn try_from(r: Range<u64>) -> Result<VaRange, RangeError> {
        if r.end < r.start {
            return Err(RangeError::Inverted {
                start: r.start,
                end: r.end,
            });
        }
        VaRange::new(r.start, r.end - r.start)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: PagingMode = PagingMode::FourLevel;

    #[test]
    fn empty_range_has_no_bounds() {
        let r = VaRange::new(0x5000, 0).unwrap();
        assert!(r.is_empty());
        assert_eq!(r.linear_bounds(M), Ok(None));
        // Even an empty range at a non-canonical address is accepted: nothing to visit.
        assert_eq!(
            VaRange::new(0x8000_0000_0000, 0).unwrap().linear_bounds(M),
            Ok(None)
        );
    }

    #[test]
    #[allow(clippy::reversed_empty_ranges)]
    fn wrap_and_inversion() {
        assert_eq!(
            VaRange::new(0xffff_ffff_ffff_f000, 0x2000),
            Err(RangeError::Wraps {
                start: 0xffff_ffff_ffff_f000,
                len: 0x2000
            })
        );
        assert!(VaRange::new(0xffff_ffff_ffff_f000, 0x1000).is_ok());
        assert_eq!(
            VaRange::try_from(5..4),
            Err(RangeError::Inverted { start: 5, end: 4 })
        );
    }

    #[test]
    fn canonical_hole_is_refused() {
        // Ends in the hole.
        let r = VaRange::new(0x7fff_ffff_f000, 0x2000).unwrap();
        assert!(matches!(
            r.linear_bounds(M),
            Err(RangeError::NonCanonical { .. })
        ));
        // Starts in the hole.
        let r = VaRange::new(0xffff_7fff_ffff_f000, 0x2000).unwrap();
        assert!(matches!(
            r.linear_bounds(M),
            Err(RangeError::NonCanonical { .. })
        ));
        // Spans the hole with both ends canonical.
        let r = VaRange::try_from(0x1000..0xffff_8000_0000_1000).unwrap();
        assert!(matches!(
            r.linear_bounds(M),
            Err(RangeError::NonCanonical { .. })
        ));
        // Exactly the halves.
        assert_eq!(
            VaRange::lower_half(M).linear_bounds(M),
            Ok(Some((0, 0x7fff_ffff_ffff)))
        );
        assert_eq!(
            VaRange::upper_half(M).linear_bounds(M),
            Ok(Some((0x8000_0000_0000, 0xffff_ffff_ffff)))
        );
    }
}
