//! `shared_info` / `vcpu_info` layout constants (x86-64).
//!
//! `shared_info` is a Xen-owned frame the guest maps itself (its machine
//! address is in [`StartInfo::shared_info`](crate::StartInfo::shared_info)).
//! It starts with 32 `vcpu_info` slots, followed by the 2-level event
//! channel `evtchn_pending` and `evtchn_mask` bitmaps.

/// Size of one `vcpu_info`.
pub const VCPU_INFO_SIZE: usize = 64;
/// Number of `vcpu_info` slots embedded in `shared_info`
/// (`XEN_LEGACY_MAX_VCPUS`).
pub const XEN_LEGACY_MAX_VCPUS: usize = 32;
/// Offset of `vcpu_info[0]` in `shared_info`.
pub const SHARED_INFO_VCPU_INFO_OFFSET: usize = 0;
/// Offset of `evtchn_pending[64]` (64 `u64` words) in `shared_info`.
pub const SHARED_INFO_EVTCHN_PENDING_OFFSET: usize = 2048;
/// Number of `u64` words in `evtchn_pending` and in `evtchn_mask`.
pub const SHARED_INFO_EVTCHN_WORDS: usize = 64;
/// Offset of `evtchn_mask[64]` (right after `evtchn_pending`).
pub const SHARED_INFO_EVTCHN_MASK_OFFSET: usize =
    SHARED_INFO_EVTCHN_PENDING_OFFSET + SHARED_INFO_EVTCHN_WORDS * 8;
/// Number of 2-level event channels (ports must be below this).
pub const EVTCHN_2L_NR_CHANNELS: usize = SHARED_INFO_EVTCHN_WORDS * 64;

/// `vcpu_info.evtchn_upcall_pending` (u8) offset.
pub const VCPU_INFO_UPCALL_PENDING_OFFSET: usize = 0;
/// `vcpu_info.evtchn_upcall_mask` (u8) offset. The builder sets it to 1 in
/// every `vcpu_info`, so events start masked.
pub const VCPU_INFO_UPCALL_MASK_OFFSET: usize = 1;
/// `vcpu_info.evtchn_pending_sel` (u64) offset.
pub const VCPU_INFO_PENDING_SEL_OFFSET: usize = 8;
/// `vcpu_info.arch.cr2` (u64) offset: CR2 of the last #PF delivered.
pub const VCPU_INFO_ARCH_CR2_OFFSET: usize = 16;
/// `vcpu_info.time` (32-byte `vcpu_time_info`) offset.
pub const VCPU_INFO_TIME_OFFSET: usize = 32;

/// Offset of `vcpu_info[vcpu]` in `shared_info`, or `None` if `vcpu` has
/// no embedded slot.
#[must_use]
pub const fn vcpu_info_offset(vcpu: usize) -> Option<usize> {
    if vcpu < XEN_LEGACY_MAX_VCPUS {
        Some(SHARED_INFO_VCPU_INFO_OFFSET + vcpu * VCPU_INFO_SIZE)
    } else {
        None
    }
}

const _: () = assert!(XEN_LEGACY_MAX_VCPUS * VCPU_INFO_SIZE == SHARED_INFO_EVTCHN_PENDING_OFFSET);
const _: () = assert!(SHARED_INFO_EVTCHN_MASK_OFFSET == 2560);
const _: () = assert!(EVTCHN_2L_NR_CHANNELS == 4096);
const _: () = assert!(VCPU_INFO_TIME_OFFSET + 32 == VCPU_INFO_SIZE);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets() {
        assert_eq!(vcpu_info_offset(0), Some(0));
        assert_eq!(vcpu_info_offset(31), Some(31 * 64));
        assert_eq!(vcpu_info_offset(32), None);
        assert_eq!(vcpu_info_offset(usize::MAX), None);
    }
}
