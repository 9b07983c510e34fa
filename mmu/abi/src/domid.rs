//! Domain ids (`domid_t`) and the `foreigndom` argument of `mmu_update` /
//! `mmuext_op`.

/// Raw `domid_t` value.
pub type DomIdRaw = u16;

/// First reserved domain id; ids `>= 0x7FF0` are never real domains.
pub const DOMID_FIRST_RESERVED: u16 = 0x7FF0;
/// The calling domain.
pub const DOMID_SELF: u16 = 0x7FF0;
/// I/O (MMIO) frames, mapped with the caller's own I/O permissions.
pub const DOMID_IO: u16 = 0x7FF1;
/// Xen's own frames (privileged callers only).
pub const DOMID_XEN: u16 = 0x7FF2;
/// Copy-on-write shared frames (mem-sharing).
pub const DOMID_COW: u16 = 0x7FF3;
/// Invalid domain.
pub const DOMID_INVALID: u16 = 0x7FF4;
/// Any domain.
pub const DOMID_ANY: u16 = 0x7FF5;
/// The idle domain.
pub const DOMID_IDLE: u16 = 0x7FFF;
/// Mask of the meaningful bits of a domain id.
pub const DOMID_MASK: u16 = 0x7FFF;

/// A domain id.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(transparent)]
pub struct DomId(pub u16);

impl DomId {
    /// [`DOMID_SELF`].
    pub const SELF: Self = Self(DOMID_SELF);
    /// [`DOMID_IO`].
    pub const IO: Self = Self(DOMID_IO);
    /// [`DOMID_XEN`].
    pub const XEN: Self = Self(DOMID_XEN);
    /// [`DOMID_COW`].
    pub const COW: Self = Self(DOMID_COW);
    /// [`DOMID_INVALID`].
    pub const INVALID: Self = Self(DOMID_INVALID);
    /// [`DOMID_ANY`].
    pub const ANY: Self = Self(DOMID_ANY);
    /// [`DOMID_IDLE`].
    pub const IDLE: Self = Self(DOMID_IDLE);

    /// The raw value.
    #[must_use]
    pub const fn raw(self) -> u16 {
        self.0
    }

    /// `true` for ids `>= DOMID_FIRST_RESERVED` (not a real domain).
    #[must_use]
    pub const fn is_reserved(self) -> bool {
        self.0 >= DOMID_FIRST_RESERVED
    }

    /// `true` for [`DOMID_SELF`].
    #[must_use]
    pub const fn is_self(self) -> bool {
        self.0 == DOMID_SELF
    }

    /// The symbolic name of a reserved id, if it has one.
    #[must_use]
    pub const fn special_name(self) -> Option<&'static str> {
        Some(match self.0 {
            DOMID_SELF => "DOMID_SELF",
            DOMID_IO => "DOMID_IO",
            DOMID_XEN => "DOMID_XEN",
            DOMID_COW => "DOMID_COW",
            DOMID_INVALID => "DOMID_INVALID",
            DOMID_ANY => "DOMID_ANY",
            DOMID_IDLE => "DOMID_IDLE",
            _ => return None,
        })
    }
}

impl From<u16> for DomId {
    fn from(v: u16) -> Self {
        Self(v)
    }
}

impl From<DomId> for u16 {
    fn from(v: DomId) -> u16 {
        v.0
    }
}

impl core::fmt::Display for DomId {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self.special_name() {
            Some(name) => f.write_str(name),
            None => write!(f, "d{}", self.0),
        }
    }
}

/// Decodes the `foreigndom` argument of `mmu_update` (an `unsigned int`,
/// so pass the low 32 bits of the register).
///
/// Returns `(fd, pfd)`:
/// - `fd` = bits 15:0: the **FD**, the domain expected to own the *mapped
///   data frames* (may be [`DOMID_SELF`], [`DOMID_IO`], [`DOMID_XEN`] or a
///   domain id);
/// - `pfd` = bits 31:16 minus one: the **PFD**, owner of the *page-table*
///   pages being written. Bits 31:16 hold `PFD + 1`; 0 there means "self",
///   returned as `None`. So `pfd` is in `0..=0xFFFE` when present.
///
/// For `mmuext_op` only `fd` is meaningful (no PFD part). Note that a
/// caller naming its **own numeric id** instead of `DOMID_SELF` is refused
/// by Xen with `-ESRCH`; that check is the caller's job.
///
/// ```
/// use pvmmu_abi::{decode_foreigndom, DOMID_IO, DOMID_SELF};
/// assert_eq!(decode_foreigndom(u32::from(DOMID_SELF)), (DOMID_SELF, None));
/// assert_eq!(decode_foreigndom((3 + 1) << 16 | u32::from(DOMID_IO)), (DOMID_IO, Some(3)));
/// ```
#[must_use]
pub const fn decode_foreigndom(foreigndom: u32) -> (u16, Option<u16>) {
    let fd = (foreigndom & 0xFFFF) as u16;
    let pfd = match (foreigndom >> 16) as u16 {
        0 => None,
        n => Some(n - 1),
    };
    (fd, pfd)
}

/// Builds a `foreigndom` argument from FD and an optional PFD (the inverse
/// of [`decode_foreigndom`]); `None` if `pfd == Some(0xFFFF)`, which cannot
/// be encoded.
#[must_use]
pub const fn encode_foreigndom(fd: u16, pfd: Option<u16>) -> Option<u32> {
    let hi = match pfd {
        None => 0,
        Some(p) => match p.checked_add(1) {
            Some(v) => v as u32,
            None => return None,
        },
    };
    Some(hi << 16 | fd as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::string::ToString;

    #[test]
    fn foreigndom_decode() {
        assert_eq!(decode_foreigndom(0), (0, None));
        assert_eq!(decode_foreigndom(0x7FF0), (DOMID_SELF, None));
        assert_eq!(decode_foreigndom(0x0001_7FF0), (DOMID_SELF, Some(0)));
        assert_eq!(decode_foreigndom(0x0006_0005), (5, Some(5)));
        assert_eq!(decode_foreigndom(0xFFFF_FFFF), (0xFFFF, Some(0xFFFE)));
        assert_eq!(decode_foreigndom(0x7FF1_7FF2), (DOMID_XEN, Some(0x7FF0)));
    }

    #[test]
    fn foreigndom_round_trip() {
        for fd in [0u16, 1, 0x7FF0, 0x7FF1, 0xFFFF] {
            for pfd in [None, Some(0u16), Some(7), Some(0x7FF0), Some(0xFFFE)] {
                let raw = encode_foreigndom(fd, pfd).unwrap();
                assert_eq!(decode_foreigndom(raw), (fd, pfd));
            }
        }
        assert_eq!(encode_foreigndom(0, Some(0xFFFF)), None);
    }

    #[test]
    fn domid() {
        assert!(DomId::SELF.is_self());
        assert!(DomId::IDLE.is_reserved());
        assert!(!DomId(0x7FEF).is_reserved());
        assert_eq!(DomId::IO.to_string(), "DOMID_IO");
        assert_eq!(DomId(3).to_string(), "d3");
        assert_eq!(DomId(0x7FF6).to_string(), "d32758");
        assert_eq!(u16::from(DomId::from(9)), 9);
        assert_eq!(DOMID_IDLE & DOMID_MASK, DOMID_IDLE);
    }
}
