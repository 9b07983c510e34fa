//! `grant_table_op` (hypercall 20): the commands and argument layouts of the grant table
//! itself (its frames, size and version). Mapping grants is not offered yet.
#![allow(non_upper_case_globals)]

use crate::bytes::{get_u16, get_u32, get_u64, put_u16, put_u32, put_u64};

/// Map a grant reference.
pub const GNTTABOP_map_grant_ref: u32 = 0;
/// Unmap a grant mapping.
pub const GNTTABOP_unmap_grant_ref: u32 = 1;
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
/// `GNTST_bad_virt_addr`.
pub const GNTST_bad_virt_addr: i16 = -5;
/// `GNTST_permission_denied`.
pub const GNTST_permission_denied: i16 = -8;

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
