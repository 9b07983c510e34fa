//! Time as Xen gives it to a PV guest: `vcpu_info.time` (`struct vcpu_time_info`, the
//! pvclock a guest turns TSC readings into nanoseconds of system time with) and the
//! wallclock in `shared_info`, each written with Xen's version protocol (odd while being
//! updated). System time is nanoseconds since the vCPU was created.

use pvmmu::TlbFlush;
use pvmmu_abi::shared_info::VCPU_INFO_TIME_OFFSET;

use super::vcpu_op::TIME_INFO_SIZE;
use vm_memory::{Bytes, GuestAddress};

use super::{Mach, PvVcpu};

/// Offset of `wc_version` in `shared_info` (then `wc_sec`, `wc_nsec`, `wc_sec_hi`).
pub const SHARED_INFO_WC_VERSION_OFFSET: u64 = 3072;

/// Nanoseconds in a second.
const NS_PER_SEC: u64 = 1_000_000_000;

/// Xen's time scale for a counter of `ticks_per_sec`: `(mul, shift)` such that
/// nanoseconds = ((ticks << shift) * mul) >> 32 (a negative shift shifts right), with
/// `mul` as large as 32 bits allow (Xen's `set_time_scale`). `None` for 0.
///
/// ```
/// use platform::pv::time::{scale_delta, time_scale};
/// let (mul, shift) = time_scale(2_000_000_000).unwrap();
/// assert_eq!(scale_delta(2_000_000_000, mul, shift), 1_000_000_000);
/// let (mul, shift) = time_scale(3_000_000_000).unwrap();
/// assert!(scale_delta(3_000_000_000, mul, shift).abs_diff(1_000_000_000) <= 1);
/// ```
pub fn time_scale(ticks_per_sec: u64) -> Option<(u32, i8)> {
    if ticks_per_sec == 0 {
        return None;
    }
    let mut tps = ticks_per_sec;
    let mut shift: i8 = 0;
    while tps > 2 * NS_PER_SEC {
        tps >>= 1;
        shift -= 1;
    }
    while tps <= NS_PER_SEC {
        tps <<= 1;
        shift += 1;
    }
    // NS_PER_SEC < tps: the fraction is below 1.
    let mul = ((NS_PER_SEC << 32) / tps) as u32;
    Some((mul, shift))
}

/// `ticks` turned into nanoseconds with a time scale from [`time_scale`] (what a guest's
/// pvclock computes).
pub fn scale_delta(ticks: u64, mul: u32, shift: i8) -> u64 {
    let t = if shift < 0 {
        ticks >> -shift
    } else {
        ticks << shift
    };
    ((u128::from(t) * u128::from(mul)) >> 32) as u64
}

impl PvVcpu {
    /// Writes `vcpu_info.time`: the guest's TSC read `tsc` now corresponds to the
    /// current system time, and the TSC runs at `tsc_khz`. Version protocol: the
    /// version goes odd, the fields are written, it goes even.
    pub fn update_time<F: TlbFlush>(&mut self, m: &Mach<F>, tsc: u64, tsc_khz: u32) {
        let Some((mul, shift)) = time_scale(u64::from(tsc_khz) * 1000) else {
            return;
        };
        let base = self.vcpu_info + VCPU_INFO_TIME_OFFSET as u64;
        let mem = m.memory();
        let version: u32 = mem.read_obj(GuestAddress(base)).unwrap_or(0);
        let odd = version.wrapping_add(1) | 1;
        let _ = mem.write_obj(odd, GuestAddress(base));
        let mut b = [0u8; 24];
        b[0..8].copy_from_slice(&tsc.to_le_bytes());
        b[8..16].copy_from_slice(&self.system_time_ns().to_le_bytes());
        b[16..20].copy_from_slice(&mul.to_le_bytes());
        b[20] = shift as u8;
        // flags: TSC stable (PVCLOCK_TSC_STABLE_BIT) only if the host says so; not set.
        let _ = mem.write_slice(&b, GuestAddress(base + 8));
        let _ = mem.write_obj(odd.wrapping_add(1), GuestAddress(base));
        let mut record = [0u8; TIME_INFO_SIZE];
        record[0..4].copy_from_slice(&odd.wrapping_add(1).to_le_bytes());
        record[8..32].copy_from_slice(&b);
        self.last_time = Some(record);
        self.update_secondary_time(m);
    }

    /// Copies the last `vcpu_time_info` into the secondary time area, the one
    /// registered by guest-physical address if any, else the virtual one (Xen's
    /// `update_secondary_system_time`: the version goes odd, the record is written,
    /// the version goes even; it mirrors `vcpu_info`'s). A failed write is ignored.
    pub fn update_secondary_time<F: TlbFlush>(&self, m: &Mach<F>) {
        let Some(record) = self.last_time else {
            return;
        };
        write_secondary_time(m, self.caller, self.caller, self.time_area, &record);
    }

    /// The `vcpu_time_info` another vCPU last published in its `vcpu_info` (at
    /// guest-physical `vcpu_info`; 0: Xen's dummy), which Xen copies into that vCPU's
    /// secondary time area when it is registered (`force_update_secondary_system_time`).
    /// One that was never published (version 0) is this vCPU's last record instead:
    /// every vCPU counts the same system time from the same TSC, so either is exact.
    pub fn time_record_of<F: TlbFlush>(
        &self,
        m: &Mach<F>,
        vcpu_info: u64,
    ) -> Option<[u8; TIME_INFO_SIZE]> {
        let mut b = [0u8; TIME_INFO_SIZE];
        let published = vcpu_info != 0
            && m.memory()
                .read_slice(
                    &mut b,
                    GuestAddress(vcpu_info + VCPU_INFO_TIME_OFFSET as u64),
                )
                .is_ok()
            && b[0..4] != [0; 4];
        if published {
            // An update in progress reads as the version it will end with.
            let v = u32::from_le_bytes(b[0..4].try_into().unwrap_or_default());
            b[0..4].copy_from_slice(&(v.wrapping_add(v & 1)).to_le_bytes());
            Some(b)
        } else {
            self.last_time
        }
    }
}

/// Writes `record` (a `vcpu_time_info` with an even version) into `target`'s secondary
/// time area, the one registered by guest-physical address if any, else the virtual
/// one (`va`, written through `caller`'s kernel page tables, as Xen writes another
/// vCPU's through the current one's): the version goes odd, the record is written, the
/// version goes even. A failed write is ignored.
pub fn write_secondary_time<F: TlbFlush>(
    m: &Mach<F>,
    caller: pvmmu::Caller,
    target: pvmmu::Caller,
    va: Option<u64>,
    record: &[u8; TIME_INFO_SIZE],
) {
    let even = u32::from_le_bytes(record[0..4].try_into().unwrap_or_default());
    let mut odd = *record;
    odd[0..4].copy_from_slice(&even.wrapping_sub(1).to_le_bytes());
    if let Some(gaddr) = m.guest_area(target, pvmmu::GuestArea::Time) {
        let mem = m.memory();
        let _ = mem.write_slice(&odd[0..4], GuestAddress(gaddr));
        let _ = mem.write_slice(&odd, GuestAddress(gaddr));
        let _ = mem.write_slice(&record[0..4], GuestAddress(gaddr));
    } else if let Some(va) = va {
        let mut view = m.kernel_view(caller);
        if view.write(va, &odd[0..4]).is_ok() && view.write(va, &odd).is_ok() {
            let _ = view.write(va, &record[0..4]);
        }
    }
}

impl PvVcpu {
    /// Writes the wallclock into `shared_info` (at guest-physical `shared_info`): the
    /// wall time at system time 0, `unix_ns` nanoseconds since the epoch.
    pub fn set_wallclock<F: TlbFlush>(m: &Mach<F>, shared_info: u64, unix_ns: u64) {
        let base = shared_info + SHARED_INFO_WC_VERSION_OFFSET;
        let mem = m.memory();
        let version: u32 = mem.read_obj(GuestAddress(base)).unwrap_or(0);
        let odd = version.wrapping_add(1) | 1;
        let _ = mem.write_obj(odd, GuestAddress(base));
        let sec = unix_ns / NS_PER_SEC;
        let _ = mem.write_obj(sec as u32, GuestAddress(base + 4));
        let _ = mem.write_obj((unix_ns % NS_PER_SEC) as u32, GuestAddress(base + 8));
        let _ = mem.write_obj((sec >> 32) as u32, GuestAddress(base + 12));
        let _ = mem.write_obj(odd.wrapping_add(1), GuestAddress(base));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scales_cover_slow_and_fast_counters() {
        for hz in [
            1_000_000u64,
            999_999_999,
            1_000_000_001,
            2_500_000_000,
            4_000_000_000,
        ] {
            let (mul, shift) = time_scale(hz).unwrap();
            let ns = scale_delta(hz * 3, mul, shift);
            assert!(ns.abs_diff(3 * NS_PER_SEC) <= 3, "{hz}: {ns}");
        }
        assert_eq!(time_scale(0), None);
    }
}
