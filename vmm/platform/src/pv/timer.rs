//! A PV vCPU's timers, as Xen keeps them: the single-shot timer (`set_timer_op`,
//! `VCPUOP_set_singleshot_timer` / `stop_singleshot_timer`) and the periodic one (10 ms
//! for a PV vCPU until the guest changes or stops it: `VCPUOP_set_periodic_timer` /
//! `stop_periodic_timer`). Both raise VIRQ_TIMER when they expire; the embedder asks
//! for the next deadline, waits for it (or kicks the vCPU out of the guest at it) and
//! calls [`PvVcpu::expire_timers`]. Times are nanoseconds of system time.

use pvmmu::{Errno, TlbFlush};

use super::{Mach, PvVcpu};

/// Xen's default period for a PV vCPU's periodic timer (10 ms).
pub const DEFAULT_PERIOD_NS: u64 = 10_000_000;
/// Shortest period `VCPUOP_set_periodic_timer` accepts (1 ms).
pub(crate) const MIN_PERIOD_NS: u64 = 1_000_000;
/// Longest time delta Xen accepts (`STIME_DELTA_MAX`, 2^62 - 1 ns).
pub(crate) const STIME_DELTA_MAX: u64 = u64::MAX >> 2;
/// Where Xen puts a "huge" single-shot timeout instead (100 ms from now).
const HUGE_TIMEOUT_DELAY_NS: u64 = 100_000_000;

/// `VCPUOP_set_periodic_timer`.
pub(crate) const VCPUOP_SET_PERIODIC_TIMER: u32 = 6;
/// `VCPUOP_stop_periodic_timer`.
pub(crate) const VCPUOP_STOP_PERIODIC_TIMER: u32 = 7;
/// `VCPUOP_set_singleshot_timer`.
pub(super) const VCPUOP_SET_SINGLESHOT_TIMER: u32 = 8;
/// `VCPUOP_stop_singleshot_timer`.
pub(super) const VCPUOP_STOP_SINGLESHOT_TIMER: u32 = 9;

/// The timers of one vCPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timers {
    /// The single-shot deadline, if armed.
    pub singleshot: Option<u64>,
    /// The periodic timer's period (0: stopped).
    pub period: u64,
    /// When the periodic timer fires next.
    pub periodic_next: u64,
}

impl Default for Timers {
    fn default() -> Self {
        Timers {
            singleshot: None,
            period: DEFAULT_PERIOD_NS,
            periodic_next: DEFAULT_PERIOD_NS,
        }
    }
}

impl PvVcpu {
    /// `set_timer_op(timeout)` (Xen's `do_set_timer_op`): 0 stops the single-shot
    /// timer; a timeout that is negative or more than 2^50 ns ahead is taken as 100 ms
    /// from now (Xen's workaround for old Linux); anything else arms it. Always 0.
    pub fn set_timer_op(&mut self, timeout: u64) -> i64 {
        let now = self.system_time_ns();
        if timeout == 0 {
            self.timers.singleshot = None;
        } else if (timeout as i64) < 0 || (timeout > now && (timeout - now) >> 50 != 0) {
            self.timers.singleshot = Some(now + HUGE_TIMEOUT_DELAY_NS);
        } else {
            self.timers.singleshot = Some(timeout);
        }
        0
    }

    /// The timer commands of `vcpu_op` for the calling vCPU.
    pub(super) fn timer_op<F: TlbFlush>(&mut self, m: &Mach<F>, cmd: u32, arg: u64) -> i64 {
        match cmd {
            VCPUOP_SET_PERIODIC_TIMER => {
                // struct vcpu_set_periodic_timer { uint64_t period_ns; }
                let period = match m.kernel_view(self.caller).read_u64(arg) {
                    Ok(p) => p,
                    Err(e) => return e.neg(),
                };
                if !(MIN_PERIOD_NS..=STIME_DELTA_MAX).contains(&period) {
                    return Errno::EINVAL.neg();
                }
                self.timers.period = period;
                self.timers.periodic_next = self.system_time_ns() + period;
                0
            }
            VCPUOP_STOP_PERIODIC_TIMER => {
                self.timers.period = 0;
                0
            }
            VCPUOP_SET_SINGLESHOT_TIMER => {
                // struct vcpu_set_singleshot_timer { uint64_t timeout_abs_ns;
                //                                    uint32_t flags; } (16 bytes). Xen
                // ignores the flags (VCPU_SSHOTTMR_future included): a timeout in the
                // past fires at once.
                let b = match m.kernel_view(self.caller).read_array::<16>(arg) {
                    Ok(b) => b,
                    Err(e) => return e.neg(),
                };
                let timeout = u64::from_le_bytes(b[..8].try_into().unwrap_or_default());
                self.timers.singleshot = Some(timeout);
                0
            }
            _ => {
                self.timers.singleshot = None;
                0
            }
        }
    }

    /// When a timer fires next, in system time.
    pub fn next_deadline(&self) -> Option<u64> {
        let periodic = (self.timers.period != 0).then_some(self.timers.periodic_next);
        match (self.timers.singleshot, periodic) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Expires the timers due at `now`: whether VIRQ_TIMER is to be raised. A fired
    /// single-shot timer is disarmed; the periodic one moves on by whole periods.
    pub fn expire_timers(&mut self, now: u64) -> bool {
        let mut fired = false;
        if self.timers.singleshot.is_some_and(|d| d <= now) {
            self.timers.singleshot = None;
            fired = true;
        }
        let t = &mut self.timers;
        if t.period != 0 && t.periodic_next <= now {
            let missed = (now - t.periodic_next) / t.period + 1;
            t.periodic_next += missed * t.period;
            fired = true;
        }
        fired
    }
}
