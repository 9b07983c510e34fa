//! `grant_table_op` (hypercall 20): the commands and argument layouts of the grant table
//! (its frames, size and version) and of grant mappings (map, unmap, unmap and replace).
#![allow(non_upper_case_globals)]

use crate::bytes::{get_u16, get_u32, get_u64, put_u16, put_u32, put_u64};

/// Map a grant reference.
pub const GNTTABOP_map_grant_ref: u32 = 0;
/// Unmap a grant mapping.
pub const GNTTABOP_unmap_grant_ref: u32 = 1;
/// Unmap a host mapping, moving the PTE of another address into its place.
pub const GNTTABOP_unmap_and_replace: u32 = 7;
/// Set up (grow) the grant table and list its frames ([`GnttabSetupTable`]).
pub const GNTTABOP_setup_table: u32 = 2;
/// Current and largest number of frames ([`GnttabQuerySize`]).
pub const GNTTABOP_query_size: u32 = 6;
/// Switch the entry format ([`GnttabSetVersion`]).
pub const GNTTABOP_set_version: u32 = 8;
/// List the v2 status frames ([`GnttabGetStatusFrames`]).
pub const GNTTABOP_get_status_frames: u32 = 9;
/// Read the entry format ([`GnttabGetVersion`]).
pub const GNTTABOP_get_version: u32 = 10;

/// `GNTST_okay`.
pub const GNTST_okay: i16 = 0;
/// `GNTST_general_error`.
pub const GNTST_general_error: i16 = -1;
/// `GNTST_bad_domain`.
pub const GNTST_bad_domain: i16 = -2;
/// `GNTST_bad_gntref`: an unknown or unusable grant reference.
pub const GNTST_bad_gntref: i16 = -3;
/// `GNTST_bad_handle`: an unknown mapping handle.
pub const GNTST_bad_handle: i16 = -4;
/// `GNTST_bad_virt_addr`.
pub const GNTST_bad_virt_addr: i16 = -5;
/// `GNTST_bad_dev_addr`: the device address does not match the mapping.
pub const GNTST_bad_dev_addr: i16 = -6;
/// `GNTST_permission_denied`.
pub const GNTST_permission_denied: i16 = -8;
/// `GNTST_bad_page`: the granted frame is not the granting domain's.
pub const GNTST_bad_page: i16 = -9;
/// `GNTST_no_space`: no mapping handle left.
pub const GNTST_no_space: i16 = -13;

/// `GNTMAP_device_map`: a device (bus address) mapping.
pub const GNTMAP_device_map: u32 = 1 << 0;
/// `GNTMAP_host_map`: a mapping in the mapper's page tables.
pub const GNTMAP_host_map: u32 = 1 << 1;
/// `GNTMAP_readonly`: read-only access.
pub const GNTMAP_readonly: u32 = 1 << 2;
/// `GNTMAP_application_map`: the host mapping is a user mapping.
pub const GNTMAP_application_map: u32 = 1 << 3;
/// `GNTMAP_contains_pte`: `host_addr` is the machine address of the PTE to write.
pub const GNTMAP_contains_pte: u32 = 1 << 4;
/// First of the bits the guest passes through into the PTE's available bits.
pub const GNTMAP_guest_avail0_shift: u32 = 16;

/// `GTF_permit_access`: the entry grants access to a frame.
pub const GTF_permit_access: u16 = 1;
/// `GTF_type_mask`.
pub const GTF_type_mask: u16 = 3;
/// `GTF_transitive` (version 2).
pub const GTF_transitive: u16 = 3;
/// `GTF_readonly`: only read access is granted.
pub const GTF_readonly: u16 = 1 << 2;
/// `GTF_reading`: the hypervisor has the frame mapped (set by it).
pub const GTF_reading: u16 = 1 << 3;
/// `GTF_writing`: the hypervisor has the frame mapped writable (set by it).
pub const GTF_writing: u16 = 1 << 4;
/// `GTF_PWT`, `GTF_PCD`, `GTF_PAT`: cache attributes of a granted I/O frame.
pub const GTF_cache_mask: u16 = 7 << 5;
/// `GTF_sub_page` (version 2): only part of the frame is granted.
pub const GTF_sub_page: u16 = 1 << 8;

/// Bytes of a v1 grant entry.
pub const GRANT_ENTRY_V1_SIZE: usize = 8;
/// Bytes of a v2 grant entry.
pub const GRANT_ENTRY_V2_SIZE: usize = 16;
/// Bytes of a v2 status entry.
pub const GRANT_STATUS_SIZE: usize = 2;
/// Entries reserved for the toolstack (kept across a version switch).
pub const GNTTAB_NR_RESERVED_ENTRIES: usize = 8;

/// `struct gnttab_setup_table` (24 bytes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GnttabSetupTable {
    /// Domain whose table (IN).
    pub dom: u16,
    /// Frames wanted (IN).
    pub nr_frames: u32,
    /// `GNTST_*` (OUT).
    pub status: i16,
    /// Guest array of `nr_frames` frame numbers (OUT through it).
    pub frame_list: u64,
}

impl GnttabSetupTable {
    /// Size in bytes.
    pub const SIZE: usize = 24;
    /// Offset of `status`.
    pub const STATUS_OFFSET: u64 = 8;

    /// Decodes the little-endian encoding.
    ///
    /// ```
    /// use pvmmu_abi::grant::GnttabSetupTable;
    /// let s = GnttabSetupTable { dom: 0x7ff0, nr_frames: 2, status: -1, frame_list: 0x1000 };
    /// assert_eq!(GnttabSetupTable::from_bytes(&s.to_bytes()), s);
    /// ```
    #[must_use]
    pub fn from_bytes(b: &[u8; Self::SIZE]) -> Self {
        Self {
            dom: get_u16(b, 0),
            nr_frames: get_u32(b, 4),
            status: get_u16(b, 8) as i16,
            frame_list: get_u64(b, 16),
        }
    }

    /// Encodes as little-endian bytes.
    #[must_use]
    pub fn to_bytes(&self) -> [u8; Self::SIZE] {
        let mut b = [0; Self::SIZE];
        put_u16(&mut b, 0, self.dom);
        put_u32(&mut b, 4, self.nr_frames);
        put_u16(&mut b, 8, self.status as u16);
        put_u64(&mut b, 16, self.frame_list);
        b
    }
}

/// `struct gnttab_query_size` (16 bytes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GnttabQuerySize {
    /// Domain (IN).
    pub dom: u16,
    /// Current frames (OUT).
    pub nr_frames: u32,
    /// Largest number of frames (OUT).
    pub max_nr_frames: u32,
    /// `GNTST_*` (OUT).
    pub status: i16,
}

impl GnttabQuerySize {
    /// Size in bytes.
    pub const SIZE: usize = 16;

    /// Decodes the little-endian encoding.
    ///
    /// ```
    /// use pvmmu_abi::grant::GnttabQuerySize;
    /// let q = GnttabQuerySize { dom: 1, nr_frames: 1, max_nr_frames: 32, status: 0 };
    /// assert_eq!(GnttabQuerySize::from_bytes(&q.to_bytes()), q);
    /// ```
    #[must_use]
    pub fn from_bytes(b: &[u8; Self::SIZE]) -> Self {
        Self {
            dom: get_u16(b, 0),
            nr_frames: get_u32(b, 4),
            max_nr_frames: get_u32(b, 8),
            status: get_u16(b, 12) as i16,
        }
    }

    /// Encodes as little-endian bytes.
    #[must_use]
    pub fn to_bytes(&self) -> [u8; Self::SIZE] {
        let mut b = [0; Self::SIZE];
        put_u16(&mut b, 0, self.dom);
        put_u32(&mut b, 4, self.nr_frames);
        put_u32(&mut b, 8, self.max_nr_frames);
        put_u16(&mut b, 12, self.status as u16);
        b
    }
}

/// `struct gnttab_set_version` (4 bytes): the version wanted in, the version in force
/// out.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GnttabSetVersion {
    /// 1 or 2.
    pub version: u32,
}

/// `struct gnttab_get_status_frames` (16 bytes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GnttabGetStatusFrames {
    /// Frames wanted (IN).
    pub nr_frames: u32,
    /// Domain (IN).
    pub dom: u16,
    /// `GNTST_*` (OUT).
    pub status: i16,
    /// Guest array of `nr_frames` 64-bit frame numbers (OUT through it).
    pub frame_list: u64,
}

impl GnttabGetStatusFrames {
    /// Size in bytes.
    pub const SIZE: usize = 16;
    /// Offset of `status`.
    pub const STATUS_OFFSET: u64 = 6;

    /// Decodes the little-endian encoding.
    ///
    /// ```
    /// use pvmmu_abi::grant::GnttabGetStatusFrames;
    /// let g = GnttabGetStatusFrames { nr_frames: 1, dom: 0x7ff0, status: -1, frame_list: 8 };
    /// assert_eq!(GnttabGetStatusFrames::from_bytes(&g.to_bytes()), g);
    /// ```
    #[must_use]
    pub fn from_bytes(b: &[u8; Self::SIZE]) -> Self {
        Self {
            nr_frames: get_u32(b, 0),
            dom: get_u16(b, 4),
            status: get_u16(b, 6) as i16,
            frame_list: get_u64(b, 8),
        }
    }

    /// Encodes as little-endian bytes.
    #[must_use]
    pub fn to_bytes(&self) -> [u8; Self::SIZE] {
        let mut b = [0; Self::SIZE];
        put_u32(&mut b, 0, self.nr_frames);
        put_u16(&mut b, 4, self.dom);
        put_u16(&mut b, 6, self.status as u16);
        put_u64(&mut b, 8, self.frame_list);
        b
    }
}

/// `struct gnttab_get_version` (8 bytes): domain in, version out.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GnttabGetVersion {
    /// Domain (IN).
    pub dom: u16,
    /// Version (OUT).
    pub version: u32,
}

impl GnttabGetVersion {
    /// Size in bytes.
    pub const SIZE: usize = 8;
}

/// `struct gnttab_map_grant_ref` (32 bytes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GnttabMapGrantRef {
    /// Where to map: a linear address, or a PTE's machine address (IN).
    pub host_addr: u64,
    /// `GNTMAP_*` (IN).
    pub flags: u32,
    /// Grant reference (IN).
    pub r#ref: u32,
    /// Granting domain (IN).
    pub dom: u16,
    /// `GNTST_*` (OUT).
    pub status: i16,
    /// Mapping handle (OUT).
    pub handle: u32,
    /// Bus address of the frame (OUT).
    pub dev_bus_addr: u64,
}

impl GnttabMapGrantRef {
    /// Size in bytes.
    pub const SIZE: usize = 32;

    /// Decodes the little-endian encoding.
    ///
    /// ```
    /// use pvmmu_abi::grant::GnttabMapGrantRef;
    /// let m = GnttabMapGrantRef { host_addr: 0x1000, flags: 2, r#ref: 8, dom: 1, status: -1,
    ///     handle: 3, dev_bus_addr: 0x5000 };
    /// assert_eq!(GnttabMapGrantRef::from_bytes(&m.to_bytes()), m);
    /// ```
    #[must_use]
    pub fn from_bytes(b: &[u8; Self::SIZE]) -> Self {
        Self {
            host_addr: get_u64(b, 0),
            flags: get_u32(b, 8),
            r#ref: get_u32(b, 12),
            dom: get_u16(b, 16),
            status: get_u16(b, 18) as i16,
            handle: get_u32(b, 20),
            dev_bus_addr: get_u64(b, 24),
        }
    }

    /// Encodes as little-endian bytes.
    #[must_use]
    pub fn to_bytes(&self) -> [u8; Self::SIZE] {
        let mut b = [0; Self::SIZE];
        put_u64(&mut b, 0, self.host_addr);
        put_u32(&mut b, 8, self.flags);
        put_u32(&mut b, 12, self.r#ref);
        put_u16(&mut b, 16, self.dom);
        put_u16(&mut b, 18, self.status as u16);
        put_u32(&mut b, 20, self.handle);
        put_u64(&mut b, 24, self.dev_bus_addr);
        b
    }
}

/// `struct gnttab_unmap_grant_ref` and `struct gnttab_unmap_and_replace` (24 bytes each,
/// the same shape: the second word is `dev_bus_addr` in the first and `new_addr` in the
/// second).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GnttabUnmap {
    /// The host mapping's address, 0 for none (IN).
    pub host_addr: u64,
    /// `dev_bus_addr` (unmap) or `new_addr` (unmap and replace) (IN).
    pub second: u64,
    /// Mapping handle (IN).
    pub handle: u32,
    /// `GNTST_*` (OUT).
    pub status: i16,
}

impl GnttabUnmap {
    /// Size in bytes.
    pub const SIZE: usize = 24;
    /// Offset of `status` (the only field written back).
    pub const STATUS_OFFSET: u64 = 20;

    /// Decodes the little-endian encoding.
    ///
    /// ```
    /// use pvmmu_abi::grant::GnttabUnmap;
    /// let u = GnttabUnmap { host_addr: 0x1000, second: 0x2000, handle: 7, status: -4 };
    /// assert_eq!(GnttabUnmap::from_bytes(&u.to_bytes()), u);
    /// ```
    #[must_use]
    pub fn from_bytes(b: &[u8; Self::SIZE]) -> Self {
        Self {
            host_addr: get_u64(b, 0),
            second: get_u64(b, 8),
            handle: get_u32(b, 16),
            status: get_u16(b, 20) as i16,
        }
    }

    /// Encodes as little-endian bytes.
    #[must_use]
    pub fn to_bytes(&self) -> [u8; Self::SIZE] {
        let mut b = [0; Self::SIZE];
        put_u64(&mut b, 0, self.host_addr);
        put_u64(&mut b, 8, self.second);
        put_u32(&mut b, 16, self.handle);
        put_u16(&mut b, 20, self.status as u16);
        b
    }
}
