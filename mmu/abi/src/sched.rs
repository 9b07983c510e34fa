//! `sched_op` commands, shutdown reasons and `struct sched_shutdown`.
#![allow(non_upper_case_globals)]

use crate::bytes::{get_u32, put_u32};

/// Yield the vCPU.
pub const SCHEDOP_yield: u32 = 0;
/// Block until an event is pending.
pub const SCHEDOP_block: u32 = 1;
/// Shut the domain down (`arg` → [`SchedShutdown`]).
pub const SCHEDOP_shutdown: u32 = 2;
/// Poll event channels.
pub const SCHEDOP_poll: u32 = 3;
/// Shut another domain down.
pub const SCHEDOP_remote_shutdown: u32 = 4;
/// Record a shutdown code without shutting down.
pub const SCHEDOP_shutdown_code: u32 = 5;
/// Watchdog control.
pub const SCHEDOP_watchdog: u32 = 6;
/// Pin override.
pub const SCHEDOP_pin_override: u32 = 7;

/// Power off.
pub const SHUTDOWN_poweroff: u32 = 0;
/// Reboot.
pub const SHUTDOWN_reboot: u32 = 1;
/// Suspend.
pub const SHUTDOWN_suspend: u32 = 2;
/// Crash (XTF's `panic()`).
pub const SHUTDOWN_crash: u32 = 3;
/// Watchdog expiry.
pub const SHUTDOWN_watchdog: u32 = 4;
/// Soft reset.
pub const SHUTDOWN_soft_reset: u32 = 5;

abi_enum! {
    /// A `sched_op` command.
    pub enum SchedOp: u32, raw u32 {
        /// [`SCHEDOP_yield`]
        Yield = SCHEDOP_yield => "SCHEDOP_yield",
        /// [`SCHEDOP_block`]
        Block = SCHEDOP_block => "SCHEDOP_block",
        /// [`SCHEDOP_shutdown`]
        Shutdown = SCHEDOP_shutdown => "SCHEDOP_shutdown",
        /// [`SCHEDOP_poll`]
        Poll = SCHEDOP_poll => "SCHEDOP_poll",
        /// [`SCHEDOP_remote_shutdown`]
        RemoteShutdown = SCHEDOP_remote_shutdown => "SCHEDOP_remote_shutdown",
        /// [`SCHEDOP_shutdown_code`]
        ShutdownCode = SCHEDOP_shutdown_code => "SCHEDOP_shutdown_code",
        /// [`SCHEDOP_watchdog`]
        Watchdog = SCHEDOP_watchdog => "SCHEDOP_watchdog",
        /// [`SCHEDOP_pin_override`]
        PinOverride = SCHEDOP_pin_override => "SCHEDOP_pin_override",
    }
}

raw_error! {
    /// An unknown `sched_op` command.
    UnknownSchedOp(u32), "unknown sched_op command {}"
}

abi_try_from!(SchedOp, u32, UnknownSchedOp);

abi_enum! {
    /// A shutdown reason (`struct sched_shutdown.reason`).
    pub enum ShutdownReason: u32, raw u32 {
        /// [`SHUTDOWN_poweroff`]
        Poweroff = SHUTDOWN_poweroff => "SHUTDOWN_poweroff",
        /// [`SHUTDOWN_reboot`]
        Reboot = SHUTDOWN_reboot => "SHUTDOWN_reboot",
        /// [`SHUTDOWN_suspend`]
        Suspend = SHUTDOWN_suspend => "SHUTDOWN_suspend",
        /// [`SHUTDOWN_crash`]
        Crash = SHUTDOWN_crash => "SHUTDOWN_crash",
        /// [`SHUTDOWN_watchdog`]
        Watchdog = SHUTDOWN_watchdog => "SHUTDOWN_watchdog",
        /// [`SHUTDOWN_soft_reset`]
        SoftReset = SHUTDOWN_soft_reset => "SHUTDOWN_soft_reset",
    }
}

raw_error! {
    /// An unknown shutdown reason.
    UnknownShutdownReason(u32), "unknown shutdown reason {}"
}

abi_try_from!(ShutdownReason, u32, UnknownShutdownReason);

/// `struct sched_shutdown` (4 bytes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[repr(C)]
pub struct SchedShutdown {
    /// `SHUTDOWN_*` reason.
    pub reason: u32,
}

const _: () = assert!(core::mem::size_of::<SchedShutdown>() == 4);
const _: () = assert!(core::mem::offset_of!(SchedShutdown, reason) == 0);

impl SchedShutdown {
    /// The decoded reason.
    pub fn reason(&self) -> Result<ShutdownReason, UnknownShutdownReason> {
        ShutdownReason::try_from(self.reason)
    }

    /// Decodes from the 4-byte little-endian encoding.
    #[must_use]
    pub fn from_bytes(b: &[u8; 4]) -> Self {
        Self {
            reason: get_u32(b, 0),
        }
    }

    /// Encodes as 4 little-endian bytes.
    #[must_use]
    pub fn to_bytes(&self) -> [u8; 4] {
        let mut b = [0; 4];
        put_u32(&mut b, 0, self.reason);
        b
    }
}

impl_abi_bytes!(SchedShutdown, 4);

#[cfg(test)]
mod tests {
    use super::*;
    use std::string::ToString;

    #[test]
    fn sched_op() {
        assert_eq!(SchedOp::ALL.len(), 8);
        for (i, &op) in SchedOp::ALL.iter().enumerate() {
            assert_eq!(op.raw(), i as u32);
            assert_eq!(SchedOp::try_from(op.raw()), Ok(op));
        }
        for bad in [8u32, 9, u32::MAX] {
            assert_eq!(SchedOp::try_from(bad), Err(UnknownSchedOp(bad)));
        }
        assert_eq!(SchedOp::Shutdown.to_string(), "SCHEDOP_shutdown");
    }

    #[test]
    fn shutdown_reason() {
        assert_eq!(ShutdownReason::ALL.len(), 6);
        for (i, &r) in ShutdownReason::ALL.iter().enumerate() {
            assert_eq!(r.raw(), i as u32);
            assert_eq!(ShutdownReason::try_from(r.raw()), Ok(r));
            let s = SchedShutdown { reason: r.raw() };
            assert_eq!(s.reason(), Ok(r));
            assert_eq!(SchedShutdown::from_bytes(&s.to_bytes()), s);
        }
        for bad in [6u32, 7, u32::MAX] {
            assert_eq!(
                ShutdownReason::try_from(bad),
                Err(UnknownShutdownReason(bad))
            );
        }
        assert_eq!(SchedShutdown { reason: 3 }.to_bytes(), [3, 0, 0, 0]);
        assert_eq!(SchedShutdown::from_bytes(&[1, 2, 3, 4]).reason, 0x0403_0201);
    }
}
