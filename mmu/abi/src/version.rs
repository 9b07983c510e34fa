//! `xen_version` commands, the reported version and the result layouts.
#![allow(non_upper_case_globals)]

use crate::bytes::{get_u32, get_u64, put_u32, put_u64};

/// Returns `major << 16 | minor` directly in `rax`.
pub const XENVER_version: u32 = 0;
/// Extra version string (`char[16]`).
pub const XENVER_extraversion: u32 = 1;
/// Compile information (`struct xen_compile_info`).
pub const XENVER_compile_info: u32 = 2;
/// Capabilities string (`char[1024]`).
pub const XENVER_capabilities: u32 = 3;
/// Changeset string (`char[64]`).
pub const XENVER_changeset: u32 = 4;
/// Platform parameters ([`XenPlatformParameters`]).
pub const XENVER_platform_parameters: u32 = 5;
/// Feature submap ([`XenFeatureInfo`]).
pub const XENVER_get_features: u32 = 6;
/// Returns the page size directly in `rax`.
pub const XENVER_pagesize: u32 = 7;
/// Guest handle (`uint8[16]`).
pub const XENVER_guest_handle: u32 = 8;
/// Xen command line (`char[1024]`).
pub const XENVER_commandline: u32 = 9;
/// Build id.
pub const XENVER_build_id: u32 = 10;

/// Xen major version modelled (4.23).
pub const XEN_VERSION_MAJOR: u16 = 4;
/// Xen minor version modelled (4.23).
pub const XEN_VERSION_MINOR: u16 = 23;
/// `XENVER_version` result for 4.23: `0x0004_0017`.
pub const XEN_VERSION_VALUE: u32 = xen_version_encode(XEN_VERSION_MAJOR, XEN_VERSION_MINOR);

const _: () = assert!(XEN_VERSION_VALUE == 0x0004_0017);

/// Encodes a `XENVER_version` result: `major << 16 | minor`.
#[must_use]
pub const fn xen_version_encode(major: u16, minor: u16) -> u32 {
    (major as u32) << 16 | minor as u32
}

/// Splits a `XENVER_version` result into `(major, minor)`.
#[must_use]
pub const fn xen_version_decode(value: u32) -> (u16, u16) {
    ((value >> 16) as u16, value as u16)
}

/// Size of the `XENVER_extraversion` buffer.
pub const XEN_EXTRAVERSION_LEN: usize = 16;
/// Size of the `XENVER_compile_info` structure.
pub const XEN_COMPILE_INFO_LEN: usize = 64 + 16 + 32 + 32;
/// Size of the `XENVER_capabilities` buffer.
pub const XEN_CAPABILITIES_INFO_LEN: usize = 1024;
/// Size of the `XENVER_changeset` buffer.
pub const XEN_CHANGESET_INFO_LEN: usize = 64;
/// Size of the `XENVER_guest_handle` buffer.
pub const XEN_GUEST_HANDLE_LEN: usize = 16;
/// Size of the `XENVER_commandline` buffer.
pub const XEN_COMMANDLINE_LEN: usize = 1024;

abi_enum! {
    /// A `xen_version` command.
    pub enum XenVer: u32, raw u32 {
        /// [`XENVER_version`]
        Version = XENVER_version => "XENVER_version",
        /// [`XENVER_extraversion`]
        Extraversion = XENVER_extraversion => "XENVER_extraversion",
        /// [`XENVER_compile_info`]
        CompileInfo = XENVER_compile_info => "XENVER_compile_info",
        /// [`XENVER_capabilities`]
        Capabilities = XENVER_capabilities => "XENVER_capabilities",
        /// [`XENVER_changeset`]
        Changeset = XENVER_changeset => "XENVER_changeset",
        /// [`XENVER_platform_parameters`]
        PlatformParameters = XENVER_platform_parameters => "XENVER_platform_parameters",
        /// [`XENVER_get_features`]
        GetFeatures = XENVER_get_features => "XENVER_get_features",
        /// [`XENVER_pagesize`]
        Pagesize = XENVER_pagesize => "XENVER_pagesize",
        /// [`XENVER_guest_handle`]
        GuestHandle = XENVER_guest_handle => "XENVER_guest_handle",
        /// [`XENVER_commandline`]
        Commandline = XENVER_commandline => "XENVER_commandline",
        /// [`XENVER_build_id`]
        BuildId = XENVER_build_id => "XENVER_build_id",
    }
}

raw_error! {
    /// An unknown `xen_version` command.
    UnknownXenVer(u32), "unknown xen_version command {}"
}

abi_try_from!(XenVer, u32, UnknownXenVer);

/// `struct xen_feature_info` (8 bytes): `XENVER_get_features` argument and
/// result.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[repr(C)]
pub struct XenFeatureInfo {
    /// IN: which 32-bit submap (only 0 exists).
    pub submap_idx: u32,
    /// OUT: feature bits of that submap (`1 << XENFEAT_*`).
    pub submap: u32,
}

const _: () = assert!(core::mem::size_of::<XenFeatureInfo>() == 8);
const _: () = assert!(core::mem::offset_of!(XenFeatureInfo, submap_idx) == 0);
const _: () = assert!(core::mem::offset_of!(XenFeatureInfo, submap) == 4);

impl XenFeatureInfo {
    /// Decodes from the 8-byte little-endian encoding.
    #[must_use]
    pub fn from_bytes(b: &[u8; 8]) -> Self {
        Self {
            submap_idx: get_u32(b, 0),
            submap: get_u32(b, 4),
        }
    }

    /// Encodes as 8 little-endian bytes.
    #[must_use]
    pub fn to_bytes(&self) -> [u8; 8] {
        let mut b = [0; 8];
        put_u32(&mut b, 0, self.submap_idx);
        put_u32(&mut b, 4, self.submap);
        b
    }
}

impl_abi_bytes!(XenFeatureInfo, 8);

/// `struct xen_platform_parameters` (8 bytes): `XENVER_platform_parameters`
/// result.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[repr(C)]
pub struct XenPlatformParameters {
    /// Start of the hypervisor's VA range
    /// ([`HYPERVISOR_VIRT_START`](crate::layout::HYPERVISOR_VIRT_START)
    /// for 64-bit PV).
    pub virt_start: u64,
}

const _: () = assert!(core::mem::size_of::<XenPlatformParameters>() == 8);
const _: () = assert!(core::mem::offset_of!(XenPlatformParameters, virt_start) == 0);

impl XenPlatformParameters {
    /// Decodes from the 8-byte little-endian encoding.
    #[must_use]
    pub fn from_bytes(b: &[u8; 8]) -> Self {
        Self {
            virt_start: get_u64(b, 0),
        }
    }

    /// Encodes as 8 little-endian bytes.
    #[must_use]
    pub fn to_bytes(&self) -> [u8; 8] {
        let mut b = [0; 8];
        put_u64(&mut b, 0, self.virt_start);
        b
    }
}

impl_abi_bytes!(XenPlatformParameters, 8);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands() {
        assert_eq!(XenVer::ALL.len(), 11);
        for (i, &c) in XenVer::ALL.iter().enumerate() {
            assert_eq!(c.raw(), i as u32);
            assert_eq!(XenVer::try_from(c.raw()), Ok(c));
        }
        for bad in [11u32, 12, u32::MAX] {
            assert_eq!(XenVer::try_from(bad), Err(UnknownXenVer(bad)));
        }
    }

    #[test]
    fn version_value() {
        assert_eq!(XEN_VERSION_VALUE, 0x0004_0017);
        assert_eq!(xen_version_decode(XEN_VERSION_VALUE), (4, 23));
        assert_eq!(
            xen_version_decode(xen_version_encode(0xFFFF, 0xFFFF)),
            (0xFFFF, 0xFFFF)
        );
        assert_eq!(XEN_COMPILE_INFO_LEN, 144);
    }

    #[test]
    fn bytes_round_trip() {
        let f = XenFeatureInfo {
            submap_idx: 0,
            submap: 0x8000_0021,
        };
        assert_eq!(f.to_bytes(), [0, 0, 0, 0, 0x21, 0, 0, 0x80]);
        assert_eq!(XenFeatureInfo::from_bytes(&f.to_bytes()), f);
        let p = XenPlatformParameters {
            virt_start: 0xFFFF_8000_0000_0000,
        };
        assert_eq!(XenPlatformParameters::from_bytes(&p.to_bytes()), p);
    }
}
