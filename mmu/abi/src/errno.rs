//! Xen errno values (`xen/include/public/errno.h`).
//!
//! Hypercalls return `-errno` in `rax`; [`Errno::neg`] and [`Errno::ret`]
//! produce that value and `Errno::try_from(rax as i64)` decodes it.

abi_enum! {
    /// A Xen errno value. Hypercalls return its negation.
    #[allow(clippy::upper_case_acronyms)]
    pub enum Errno: i32, raw i32 {
        /// Operation not permitted.
        EPERM = 1 => "EPERM",
        /// No such file or directory (also: frame paged out).
        ENOENT = 2 => "ENOENT",
        /// No such process (unknown domain).
        ESRCH = 3 => "ESRCH",
        /// Interrupted.
        EINTR = 4 => "EINTR",
        /// I/O error.
        EIO = 5 => "EIO",
        /// No such device or address.
        ENXIO = 6 => "ENXIO",
        /// Argument list too long.
        E2BIG = 7 => "E2BIG",
        /// Try again.
        EAGAIN = 11 => "EAGAIN",
        /// Out of memory.
        ENOMEM = 12 => "ENOMEM",
        /// Permission denied.
        EACCES = 13 => "EACCES",
        /// Bad address (guest copy fault).
        EFAULT = 14 => "EFAULT",
        /// Device or resource busy.
        EBUSY = 16 => "EBUSY",
        /// No such device.
        ENODEV = 19 => "ENODEV",
        /// Exists.
        EEXIST = 17 => "EEXIST",
        /// Invalid argument.
        EINVAL = 22 => "EINVAL",
        /// No space left.
        ENOSPC = 28 => "ENOSPC",
        /// Result out of range.
        ERANGE = 34 => "ERANGE",
        /// Deadlock would occur.
        EDEADLK = 35 => "EDEADLK",
        /// Function not implemented (unknown hypercall / sub-command).
        ENOSYS = 38 => "ENOSYS",
        /// No data available.
        ENODATA = 61 => "ENODATA",
        /// Timer expired.
        ETIME = 62 => "ETIME",
        /// Value too large.
        EOVERFLOW = 75 => "EOVERFLOW",
        /// Illegal byte sequence.
        EILSEQ = 84 => "EILSEQ",
        /// Restart the operation (Xen-internal: becomes a continuation).
        ERESTART = 85 => "ERESTART",
        /// Operation not supported.
        EOPNOTSUPP = 95 => "EOPNOTSUPP",
    }
}

raw_error! {
    /// A hypercall return value that is not a negated Xen errno (it is
    /// non-negative, or its magnitude is not a known errno).
    NotAnErrno(i64), "not a negated Xen errno: {}"
}

impl Errno {
    /// The positive errno number.
    #[must_use]
    pub const fn code(self) -> i32 {
        self as i32
    }

    /// The hypercall return value for this error: `-code`.
    #[must_use]
    pub const fn neg(self) -> i64 {
        -(self as i64)
    }

    /// The `rax` value for this error (`-code` as two's complement).
    #[must_use]
    pub const fn ret(self) -> u64 {
        self.neg() as u64
    }

    /// Decodes a hypercall return value given as the raw `rax` bits.
    #[must_use]
    pub const fn from_ret(rax: u64) -> Option<Self> {
        Self::from_neg(rax as i64)
    }

    /// Decodes a negative hypercall return value; `None` if it is not one.
    #[must_use]
    pub const fn from_neg(value: i64) -> Option<Self> {
        if value >= 0 || value < -(i32::MAX as i64) {
            return None;
        }
        Self::from_raw((-value) as i32)
    }
}

impl TryFrom<i64> for Errno {
    type Error = NotAnErrno;

    /// Decodes a **negative** hypercall return value (`-EINVAL` → `EINVAL`).
    fn try_from(value: i64) -> Result<Self, NotAnErrno> {
        Self::from_neg(value).ok_or(NotAnErrno(value))
    }
}

impl From<Errno> for i64 {
    fn from(e: Errno) -> i64 {
        e.neg()
    }
}

impl core::error::Error for Errno {}

#[cfg(test)]
mod tests {
    use super::*;
    use std::string::ToString;

    #[test]
    fn round_trip() {
        assert_eq!(Errno::ALL.len(), 25);
        for &e in Errno::ALL {
            assert_eq!(Errno::try_from(e.neg()), Ok(e));
            assert_eq!(Errno::from_ret(e.ret()), Some(e));
            assert_eq!(Errno::from_raw(e.code()), Some(e));
            assert_eq!(i64::from(e), -i64::from(e.code()));
            assert_eq!(e.to_string(), e.name());
        }
        assert_eq!(Errno::EINVAL.neg(), -22);
        assert_eq!(Errno::ENOSYS.ret(), (-38i64) as u64);
        assert_eq!(Errno::try_from(-85), Ok(Errno::ERESTART));
        assert_eq!(Errno::EOPNOTSUPP.to_string(), "EOPNOTSUPP");
    }

    #[test]
    fn rejections() {
        for bad in [0i64, 1, 22, -8, -96, -1000, i64::MIN, i64::MAX, -(1 << 40)] {
            assert_eq!(Errno::try_from(bad), Err(NotAnErrno(bad)));
        }
        assert_eq!(Errno::from_ret(0), None);
        assert_eq!(NotAnErrno(5).to_string(), "not a negated Xen errno: 5");
    }
}
