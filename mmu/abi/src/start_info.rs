//! `start_info`: the page Xen (the domain builder) hands a PV guest in
//! `rsi` at boot (64-bit layout, 1168 bytes).

use crate::bytes::{EscapedBytes, c_str, get, get_u32, get_u64, put, put_u32, put_u64};

/// Magic string at the start of a 64-bit PV `start_info`.
pub const START_INFO_MAGIC: &str = "xen-3.0-x86_64";
/// Size of the `magic` field.
pub const START_INFO_MAGIC_LEN: usize = 32;
/// Size of the `cmd_line` field (`MAX_GUEST_CMDLINE`).
pub const MAX_GUEST_CMDLINE: usize = 1024;
/// Size of the structure.
pub const START_INFO_SIZE: usize = 1168;

/// `flags`: the domain is privileged.
pub const SIF_PRIVILEGED: u32 = 1;
/// `flags`: the domain is the initial (control) domain. XTF skips PV
/// console and xenbus setup when set.
pub const SIF_INITDOMAIN: u32 = 2;
/// `flags`: `mod_start` points to a multiboot module list.
pub const SIF_MULTIBOOT_MOD: u32 = 4;
/// `flags`: `mod_start` is a PFN, not a virtual address.
pub const SIF_MOD_START_PFN: u32 = 8;
/// `flags`: the virtually mapped p2m is for tools only.
pub const SIF_VIRT_P2M_4TOOLS: u32 = 16;

/// The 32-byte `magic` field for [`START_INFO_MAGIC`] (NUL padded).
#[must_use]
pub const fn start_info_magic() -> [u8; START_INFO_MAGIC_LEN] {
    let mut m = [0u8; START_INFO_MAGIC_LEN];
    let s = START_INFO_MAGIC.as_bytes();
    let mut i = 0;
    while i < s.len() {
        m[i] = s[i];
        i += 1;
    }
    m
}

/// `start_info_t` for a 64-bit PV guest (1168 bytes).
///
/// `console_mfn`/`console_evtchn` are the `console.domU` view of a union;
/// for dom0 the same bytes are `console.dom0.{info_off, info_size}`
/// (see [`StartInfo::dom0_console_info_off`]).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
#[repr(C)]
pub struct StartInfo {
    /// `"xen-3.0-x86_64"`, NUL padded.
    pub magic: [u8; START_INFO_MAGIC_LEN],
    /// Total pages allocated to the domain.
    pub nr_pages: u64,
    /// **Machine** address of the shared_info frame.
    pub shared_info: u64,
    /// `SIF_*` flags.
    pub flags: u32,
    /// Padding (bytes 52..56).
    pub _pad0: u32,
    /// MFN of the xenstore ring page.
    pub store_mfn: u64,
    /// Xenstore event channel (0 = no xenstore).
    pub store_evtchn: u32,
    /// Padding (bytes 68..72).
    pub _pad1: u32,
    /// `console.domU.mfn`: MFN of the console ring page.
    pub console_mfn: u64,
    /// `console.domU.evtchn`: console event channel.
    pub console_evtchn: u32,
    /// Padding (bytes 84..88).
    pub _pad2: u32,
    /// Virtual address of the bootstrap L4.
    pub pt_base: u64,
    /// Number of bootstrap page-table frames.
    pub nr_pt_frames: u64,
    /// Virtual address of the p2m list (`mfn_list`).
    pub mfn_list: u64,
    /// Virtual address (or PFN with [`SIF_MOD_START_PFN`]) of the module.
    pub mod_start: u64,
    /// Length of the module in bytes.
    pub mod_len: u64,
    /// Kernel command line, NUL terminated.
    pub cmd_line: [u8; MAX_GUEST_CMDLINE],
    /// First PFN of the p2m (if mapped separately).
    pub first_p2m_pfn: u64,
    /// Number of p2m frames.
    pub nr_p2m_frames: u64,
}

const _: () = assert!(core::mem::size_of::<StartInfo>() == START_INFO_SIZE);
const _: () = assert!(core::mem::align_of::<StartInfo>() == 8);
const _: () = assert!(core::mem::offset_of!(StartInfo, magic) == 0);
const _: () = assert!(core::mem::offset_of!(StartInfo, nr_pages) == 32);
const _: () = assert!(core::mem::offset_of!(StartInfo, shared_info) == 40);
const _: () = assert!(core::mem::offset_of!(StartInfo, flags) == 48);
const _: () = assert!(core::mem::offset_of!(StartInfo, _pad0) == 52);
const _: () = assert!(core::mem::offset_of!(StartInfo, store_mfn) == 56);
const _: () = assert!(core::mem::offset_of!(StartInfo, store_evtchn) == 64);
const _: () = assert!(core::mem::offset_of!(StartInfo, _pad1) == 68);
const _: () = assert!(core::mem::offset_of!(StartInfo, console_mfn) == 72);
const _: () = assert!(core::mem::offset_of!(StartInfo, console_evtchn) == 80);
const _: () = assert!(core::mem::offset_of!(StartInfo, _pad2) == 84);
const _: () = assert!(core::mem::offset_of!(StartInfo, pt_base) == 88);
const _: () = assert!(core::mem::offset_of!(StartInfo, nr_pt_frames) == 96);
const _: () = assert!(core::mem::offset_of!(StartInfo, mfn_list) == 104);
const _: () = assert!(core::mem::offset_of!(StartInfo, mod_start) == 112);
const _: () = assert!(core::mem::offset_of!(StartInfo, mod_len) == 120);
const _: () = assert!(core::mem::offset_of!(StartInfo, cmd_line) == 128);
const _: () = assert!(core::mem::offset_of!(StartInfo, first_p2m_pfn) == 1152);
const _: () = assert!(core::mem::offset_of!(StartInfo, nr_p2m_frames) == 1160);

impl Default for StartInfo {
    /// All zero (no magic); see [`StartInfo::new`].
    fn default() -> Self {
        Self {
            magic: [0; START_INFO_MAGIC_LEN],
            nr_pages: 0,
            shared_info: 0,
            flags: 0,
            _pad0: 0,
            store_mfn: 0,
            store_evtchn: 0,
            _pad1: 0,
            console_mfn: 0,
            console_evtchn: 0,
            _pad2: 0,
            pt_base: 0,
            nr_pt_frames: 0,
            mfn_list: 0,
            mod_start: 0,
            mod_len: 0,
            cmd_line: [0; MAX_GUEST_CMDLINE],
            first_p2m_pfn: 0,
            nr_p2m_frames: 0,
        }
    }
}

impl core::fmt::Debug for StartInfo {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("StartInfo")
            .field("magic", &EscapedBytes(c_str(&self.magic)))
            .field("nr_pages", &self.nr_pages)
            .field("shared_info", &format_args!("{:#x}", self.shared_info))
            .field("flags", &format_args!("{:#x}", self.flags))
            .field("store_mfn", &format_args!("{:#x}", self.store_mfn))
            .field("store_evtchn", &self.store_evtchn)
            .field("console_mfn", &format_args!("{:#x}", self.console_mfn))
            .field("console_evtchn", &self.console_evtchn)
            .field("pt_base", &format_args!("{:#x}", self.pt_base))
            .field("nr_pt_frames", &self.nr_pt_frames)
            .field("mfn_list", &format_args!("{:#x}", self.mfn_list))
            .field("mod_start", &format_args!("{:#x}", self.mod_start))
            .field("mod_len", &self.mod_len)
            .field("cmd_line", &EscapedBytes(self.cmd_line_bytes()))
            .field("first_p2m_pfn", &format_args!("{:#x}", self.first_p2m_pfn))
            .field("nr_p2m_frames", &self.nr_p2m_frames)
            .finish_non_exhaustive()
    }
}

impl StartInfo {
    /// A zeroed structure with `magic` set to [`START_INFO_MAGIC`].
    #[must_use]
    pub fn new() -> Self {
        Self {
            magic: start_info_magic(),
            ..Self::default()
        }
    }

    /// `true` if `magic` is exactly [`START_INFO_MAGIC`] followed by NULs.
    #[must_use]
    pub fn has_valid_magic(&self) -> bool {
        self.magic == start_info_magic()
    }

    /// The command line up to (excluding) the first NUL.
    #[must_use]
    pub fn cmd_line_bytes(&self) -> &[u8] {
        c_str(&self.cmd_line)
    }

    /// Sets the command line: copies at most 1023 bytes of `line` (stopping
    /// early at a NUL in `line`), zero-fills the rest, and returns the
    /// number of bytes copied.
    pub fn set_cmd_line(&mut self, line: &[u8]) -> usize {
        self.cmd_line = [0; MAX_GUEST_CMDLINE];
        let line = c_str(line);
        let n = line.len().min(MAX_GUEST_CMDLINE - 1);
        for (dst, src) in self.cmd_line.iter_mut().zip(line.iter().take(n)) {
            *dst = *src;
        }
        n
    }

    /// `true` if all bits of `flag` (`SIF_*`) are set.
    #[must_use]
    pub const fn has_flag(&self, flag: u32) -> bool {
        self.flags & flag == flag
    }

    /// `console.dom0.info_off` (the dom0 view of the console union: the low
    /// 32 bits of `console_mfn`).
    #[must_use]
    pub const fn dom0_console_info_off(&self) -> u32 {
        self.console_mfn as u32
    }

    /// `console.dom0.info_size` (the high 32 bits of `console_mfn`).
    #[must_use]
    pub const fn dom0_console_info_size(&self) -> u32 {
        (self.console_mfn >> 32) as u32
    }

    /// Decodes from the 1168-byte little-endian encoding.
    #[must_use]
    pub fn from_bytes(b: &[u8; START_INFO_SIZE]) -> Self {
        Self {
            magic: get(b, 0),
            nr_pages: get_u64(b, 32),
            shared_info: get_u64(b, 40),
            flags: get_u32(b, 48),
            _pad0: get_u32(b, 52),
            store_mfn: get_u64(b, 56),
            store_evtchn: get_u32(b, 64),
            _pad1: get_u32(b, 68),
            console_mfn: get_u64(b, 72),
            console_evtchn: get_u32(b, 80),
            _pad2: get_u32(b, 84),
            pt_base: get_u64(b, 88),
            nr_pt_frames: get_u64(b, 96),
            mfn_list: get_u64(b, 104),
            mod_start: get_u64(b, 112),
            mod_len: get_u64(b, 120),
            cmd_line: get(b, 128),
            first_p2m_pfn: get_u64(b, 1152),
            nr_p2m_frames: get_u64(b, 1160),
        }
    }

    /// Encodes as 1168 little-endian bytes.
    #[must_use]
    pub fn to_bytes(&self) -> [u8; START_INFO_SIZE] {
        let mut b = [0; START_INFO_SIZE];
        put(&mut b, 0, self.magic);
        put_u64(&mut b, 32, self.nr_pages);
        put_u64(&mut b, 40, self.shared_info);
        put_u32(&mut b, 48, self.flags);
        put_u32(&mut b, 52, self._pad0);
        put_u64(&mut b, 56, self.store_mfn);
        put_u32(&mut b, 64, self.store_evtchn);
        put_u32(&mut b, 68, self._pad1);
        put_u64(&mut b, 72, self.console_mfn);
        put_u32(&mut b, 80, self.console_evtchn);
        put_u32(&mut b, 84, self._pad2);
        put_u64(&mut b, 88, self.pt_base);
        put_u64(&mut b, 96, self.nr_pt_frames);
        put_u64(&mut b, 104, self.mfn_list);
        put_u64(&mut b, 112, self.mod_start);
        put_u64(&mut b, 120, self.mod_len);
        put(&mut b, 128, self.cmd_line);
        put_u64(&mut b, 1152, self.first_p2m_pfn);
        put_u64(&mut b, 1160, self.nr_p2m_frames);
        b
    }
}

impl_abi_bytes!(StartInfo, START_INFO_SIZE);

#[cfg(test)]
mod tests {
    use super::*;
    use std::format;

    fn sample() -> StartInfo {
        let mut si = StartInfo::new();
        si.nr_pages = 32768;
        si.shared_info = 0x1234_5000;
        si.flags = SIF_INITDOMAIN | SIF_PRIVILEGED;
        si.store_mfn = 0x153;
        si.store_evtchn = 1;
        si.console_mfn = 0x154;
        si.console_evtchn = 2;
        si.pt_base = 0x155000;
        si.nr_pt_frames = 5;
        si.mfn_list = 0x112000;
        si.mod_start = 0xAAAA;
        si.mod_len = 0xBBBB;
        si.set_cmd_line(b"hypercall");
        si.first_p2m_pfn = 0xCCCC;
        si.nr_p2m_frames = 0xDDDD;
        si
    }

    #[test]
    fn bytes_round_trip_and_offsets() {
        let si = sample();
        let b = si.to_bytes();
        assert_eq!(&b[..15], b"xen-3.0-x86_64\0");
        assert_eq!(b[32..40], 32768u64.to_le_bytes());
        assert_eq!(b[40..48], 0x1234_5000u64.to_le_bytes());
        assert_eq!(b[48..52], 3u32.to_le_bytes());
        assert_eq!(b[56..64], 0x153u64.to_le_bytes());
        assert_eq!(b[64..68], 1u32.to_le_bytes());
        assert_eq!(b[72..80], 0x154u64.to_le_bytes());
        assert_eq!(b[80..84], 2u32.to_le_bytes());
        assert_eq!(b[88..96], 0x155000u64.to_le_bytes());
        assert_eq!(b[96..104], 5u64.to_le_bytes());
        assert_eq!(b[104..112], 0x112000u64.to_le_bytes());
        assert_eq!(b[112..120], 0xAAAAu64.to_le_bytes());
        assert_eq!(b[120..128], 0xBBBBu64.to_le_bytes());
        assert_eq!(&b[128..138], b"hypercall\0");
        assert_eq!(b[1152..1160], 0xCCCCu64.to_le_bytes());
        assert_eq!(b[1160..1168], 0xDDDDu64.to_le_bytes());
        assert_eq!(StartInfo::from_bytes(&b), si);

        let raw: [u8; START_INFO_SIZE] = core::array::from_fn(|i| (i * 31 + 7) as u8);
        assert_eq!(StartInfo::from_bytes(&raw).to_bytes(), raw);
    }

    #[test]
    fn helpers() {
        let mut si = sample();
        assert!(si.has_valid_magic());
        assert!(!StartInfo::default().has_valid_magic());
        assert!(si.has_flag(SIF_INITDOMAIN));
        assert!(!si.has_flag(SIF_MOD_START_PFN));
        assert_eq!(si.cmd_line_bytes(), b"hypercall");
        assert_eq!(si.set_cmd_line(&[b'x'; 5000]), 1023);
        assert_eq!(si.cmd_line_bytes().len(), 1023);
        assert_eq!(si.cmd_line[1023], 0);
        assert_eq!(si.set_cmd_line(b"a\0b"), 1);
        assert_eq!(si.cmd_line_bytes(), b"a");
        si.console_mfn = 0x0000_0010_0000_0020;
        assert_eq!(si.dom0_console_info_off(), 0x20);
        assert_eq!(si.dom0_console_info_size(), 0x10);
        let dbg = format!("{:?}", sample());
        assert!(dbg.contains("xen-3.0-x86_64"));
        assert!(dbg.contains("hypercall"));
        assert_eq!(
            [
                SIF_PRIVILEGED,
                SIF_INITDOMAIN,
                SIF_MULTIBOOT_MOD,
                SIF_MOD_START_PFN,
                SIF_VIRT_P2M_4TOOLS
            ],
            [1, 2, 4, 8, 16]
        );
    }
}
