//! Reading a PV guest's ELF image and its Xen ELF notes (`docs/xen-pv-boot.md` §1).

use goblin::elf::Elf;
use goblin::elf::header::{EM_X86_64, ET_EXEC};
use goblin::elf::program_header::{PT_LOAD, PT_NOTE};
use pvmmu_abi::elfnote::{
    XEN_ELFNOTE_ENTRY, XEN_ELFNOTE_FEATURES, XEN_ELFNOTE_HYPERCALL_PAGE, XEN_ELFNOTE_MOD_START_PFN,
    XEN_ELFNOTE_PADDR_OFFSET, XEN_ELFNOTE_VIRT_BASE, XEN_ELFNOTE_XEN_VERSION, feature_by_name,
};

/// Errors in a guest image.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ElfError {
    /// Not a parsable ELF file.
    #[error("not an ELF file: {0}")]
    Parse(String),
    /// Not a 64-bit x86 executable.
    #[error("not a 64-bit x86-64 executable ELF image")]
    Kind,
    /// A program header points outside the file or wraps.
    #[error("segment {0} lies outside the file or wraps the address space")]
    Segment(usize),
    /// No loadable segment.
    #[error("no loadable segment")]
    Empty,
    /// No Xen notes: not a PV kernel.
    #[error("no Xen ELF notes: not a Xen PV kernel")]
    NotPv,
    /// A required feature (`!name` in XEN_ELFNOTE_FEATURES) is not supported.
    #[error("the image requires feature '{0}', which this hypervisor does not support")]
    Feature(String),
    /// A malformed note.
    #[error("malformed Xen note {0}")]
    Note(u32),
}

/// One loadable segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Virtual address: its physical address placed as Xen's loader places it
    /// (`p_paddr + VIRT_BASE - PADDR_OFFSET`).
    pub vaddr: u64,
    /// Offset of its bytes in the file.
    pub offset: usize,
    /// Bytes in the file.
    pub filesz: usize,
    /// Bytes in memory (the rest zero-filled).
    pub memsz: u64,
}

/// What the domain builder needs from an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestImage {
    /// Entry point (XEN_ELFNOTE_ENTRY, else `e_entry`).
    pub entry: u64,
    /// VIRT_BASE (0 when absent).
    pub virt_base: u64,
    /// HYPERCALL_PAGE, if requested.
    pub hypercall_page: Option<u64>,
    /// Loadable segments.
    pub segments: Vec<Segment>,
    /// Lowest and one-past-highest virtual address of the segments (page aligned).
    pub v_start: u64,
    /// See `v_start`.
    pub v_end: u64,
    /// Features the image asked for (name, required).
    pub features: Vec<(String, bool)>,
    /// XEN_ELFNOTE_MOD_START_PFN: the kernel takes `start_info.mod_start` as a PFN.
    pub mod_start_pfn: bool,
}

/// Features this hypervisor supports for PV guests.
pub const SUPPORTED_FEATURES: &[&str] = &[
    "writable_page_tables",
    "pae_pgdir_above_4gb",
    "mmu_pt_update_preserve_ad",
];

fn note_u64(n_type: u32, desc: &[u8]) -> Result<u64, ElfError> {
    let b: [u8; 8] = desc
        .get(..8)
        .and_then(|d| d.try_into().ok())
        .ok_or(ElfError::Note(n_type))?;
    Ok(u64::from_le_bytes(b))
}

fn note_str(desc: &[u8]) -> String {
    let end = desc.iter().position(|&b| b == 0).unwrap_or(desc.len());
    String::from_utf8_lossy(&desc[..end]).into_owned()
}

/// Parses `bytes` as a 64-bit Xen PV kernel.
pub fn parse(bytes: &[u8]) -> Result<GuestImage, ElfError> {
    let elf = Elf::parse(bytes).map_err(|e| ElfError::Parse(e.to_string()))?;
    if !elf.is_64 || elf.header.e_machine != EM_X86_64 || elf.header.e_type != ET_EXEC {
        return Err(ElfError::Kind);
    }
    // The Xen notes first: where the segments go depends on VIRT_BASE and PADDR_OFFSET.
    let mut entry = None;
    let mut virt_base = 0;
    let mut paddr_offset = 0;
    let mut hypercall_page = None;
    let mut features = Vec::new();
    let mut mod_start_pfn = false;
    let mut xen_notes = 0;
    let has_note_segment = elf.program_headers.iter().any(|p| p.p_type == PT_NOTE);
    let notes = if has_note_segment {
        elf.iter_note_headers(bytes)
    } else {
        elf.iter_note_sections(bytes, None)
    };
    for note in notes.into_iter().flatten() {
        let Ok(note) = note else {
            return Err(ElfError::Note(0));
        };
        if note.name != "Xen" {
            continue;
        }
        xen_notes += 1;
        match note.n_type {
            XEN_ELFNOTE_ENTRY => entry = Some(note_u64(note.n_type, note.desc)?),
            XEN_ELFNOTE_VIRT_BASE => virt_base = note_u64(note.n_type, note.desc)?,
            XEN_ELFNOTE_PADDR_OFFSET => paddr_offset = note_u64(note.n_type, note.desc)?,
            XEN_ELFNOTE_MOD_START_PFN => {
                mod_start_pfn = note.desc.first().is_some_and(|&b| b != 0);
            }
            XEN_ELFNOTE_HYPERCALL_PAGE => hypercall_page = Some(note_u64(note.n_type, note.desc)?),
            XEN_ELFNOTE_XEN_VERSION => {
                let v = note_str(note.desc);
                if !v.starts_with("xen-3") {
                    return Err(ElfError::Note(note.n_type));
                }
            }
            XEN_ELFNOTE_FEATURES => {
                for f in note_str(note.desc).split('|').filter(|f| !f.is_empty()) {
                    let (name, required) = match f.strip_prefix('!') {
                        Some(n) => (n, true),
                        None => (f, false),
                    };
                    if required
                        && (!SUPPORTED_FEATURES.contains(&name) || feature_by_name(name).is_none())
                    {
                        return Err(ElfError::Feature(name.to_string()));
                    }
                    features.push((name.to_string(), required));
                }
            }
            _ => {}
        }
    }
    if xen_notes == 0 {
        return Err(ElfError::NotPv);
    }
    // Xen's libelf places every loadable segment by its physical address: at
    // `p_paddr + VIRT_BASE - PADDR_OFFSET` (not at `p_vaddr`, which Linux's per-CPU
    // segment leaves at 0).
    let virt_offset = virt_base.wrapping_sub(paddr_offset);
    let mut segments = Vec::new();
    for (i, ph) in elf.program_headers.iter().enumerate() {
        if ph.p_type != PT_LOAD || ph.p_memsz == 0 {
            continue;
        }
        let offset = usize::try_from(ph.p_offset).map_err(|_| ElfError::Segment(i))?;
        let filesz = usize::try_from(ph.p_filesz).map_err(|_| ElfError::Segment(i))?;
        let in_file = offset.checked_add(filesz).is_some_and(|e| e <= bytes.len());
        let vaddr = ph.p_paddr.wrapping_add(virt_offset);
        let fits = vaddr.checked_add(ph.p_memsz).is_some() && ph.p_filesz <= ph.p_memsz;
        if !in_file || !fits {
            return Err(ElfError::Segment(i));
        }
        segments.push(Segment {
            vaddr,
            offset,
            filesz,
            memsz: ph.p_memsz,
        });
    }
    if segments.is_empty() {
        return Err(ElfError::Empty);
    }
    let image = GuestImage {
        entry: entry.unwrap_or(elf.header.e_entry),
        virt_base,
        hypercall_page,
        v_start: segments.iter().map(|s| s.vaddr).min().unwrap_or(0) & !0xfff,
        v_end: segments
            .iter()
            .map(|s| s.vaddr + s.memsz)
            .max()
            .unwrap_or(0)
            .checked_add(0xfff)
            .ok_or(ElfError::Segment(0))?
            & !0xfff,
        segments,
        features,
        mod_start_pfn,
    };
    Ok(image)
}

/// Where [`minimal_image`] loads its code.
pub const MINIMAL_IMAGE_BASE: u64 = 0x20_0000;

/// A minimal Xen PV kernel image: one loadable segment at [`MINIMAL_IMAGE_BASE`] with
/// `code` at its start (the entry point), a hypercall page in the page after the code,
/// and the Xen notes (ENTRY, HYPERCALL_PAGE, VIRT_BASE 0, XEN_VERSION). For tests,
/// fuzzers and examples that need a domain without a real guest; [`parse`] reads it as
/// it reads any kernel.
///
/// ```
/// let image = platform::elf::minimal_image(&[0x0f, 0x0b]);
/// let parsed = platform::elf::parse(&image).unwrap();
/// assert_eq!(parsed.entry, platform::elf::MINIMAL_IMAGE_BASE);
/// assert!(parsed.hypercall_page.is_some());
/// ```
pub fn minimal_image(code: &[u8]) -> Vec<u8> {
    const EHDR: usize = 64;
    const PHDR: usize = 56;
    const CODE_AT: usize = 0x1000;
    let code_pages = (code.len().max(1) as u64).div_ceil(0x1000);
    let hypercall_page = MINIMAL_IMAGE_BASE + code_pages * 0x1000;
    let mut notes = Vec::new();
    let mut note = |ty: u32, desc: &[u8]| {
        notes.extend_from_slice(&4u32.to_le_bytes());
        notes.extend_from_slice(&(desc.len() as u32).to_le_bytes());
        notes.extend_from_slice(&ty.to_le_bytes());
        notes.extend_from_slice(b"Xen\0");
        notes.extend_from_slice(desc);
        notes.resize(notes.len().next_multiple_of(4), 0);
    };
    note(XEN_ELFNOTE_ENTRY, &MINIMAL_IMAGE_BASE.to_le_bytes());
    note(XEN_ELFNOTE_HYPERCALL_PAGE, &hypercall_page.to_le_bytes());
    note(XEN_ELFNOTE_VIRT_BASE, &0u64.to_le_bytes());
    note(XEN_ELFNOTE_XEN_VERSION, b"xen-3.0\0");
    let notes_at = EHDR + 2 * PHDR;
    let mut f = vec![0u8; CODE_AT];
    // ELF header: 64-bit, little endian, version 1, ET_EXEC, EM_X86_64.
    f[..4].copy_from_slice(b"\x7fELF");
    f[4..7].copy_from_slice(&[2, 1, 1]);
    f[16..18].copy_from_slice(&ET_EXEC.to_le_bytes());
    f[18..20].copy_from_slice(&EM_X86_64.to_le_bytes());
    f[20..24].copy_from_slice(&1u32.to_le_bytes());
    f[24..32].copy_from_slice(&MINIMAL_IMAGE_BASE.to_le_bytes());
    f[32..40].copy_from_slice(&(EHDR as u64).to_le_bytes());
    f[52..54].copy_from_slice(&(EHDR as u16).to_le_bytes());
    f[54..56].copy_from_slice(&(PHDR as u16).to_le_bytes());
    f[56..58].copy_from_slice(&2u16.to_le_bytes());
    f[58..60].copy_from_slice(&64u16.to_le_bytes());
    let mut phdr = |at: usize, ty: u32, off: u64, va: u64, size: (u64, u64), align: u64| {
        let (filesz, memsz) = size;
        let flags: u32 = if ty == PT_LOAD { 7 } else { 4 };
        f[at..at + 4].copy_from_slice(&ty.to_le_bytes());
        f[at + 4..at + 8].copy_from_slice(&flags.to_le_bytes());
        f[at + 8..at + 16].copy_from_slice(&off.to_le_bytes());
        f[at + 16..at + 24].copy_from_slice(&va.to_le_bytes());
        f[at + 24..at + 32].copy_from_slice(&va.to_le_bytes());
        f[at + 32..at + 40].copy_from_slice(&filesz.to_le_bytes());
        f[at + 40..at + 48].copy_from_slice(&memsz.to_le_bytes());
        f[at + 48..at + 56].copy_from_slice(&align.to_le_bytes());
    };
    let load = (code.len() as u64, (code_pages + 1) * 0x1000);
    phdr(
        EHDR,
        PT_LOAD,
        CODE_AT as u64,
        MINIMAL_IMAGE_BASE,
        load,
        0x1000,
    );
    let n = notes.len() as u64;
    phdr(EHDR + PHDR, PT_NOTE, notes_at as u64, 0, (n, n), 4);
    f[notes_at..notes_at + notes.len()].copy_from_slice(&notes);
    f.extend_from_slice(code);
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_is_refused_cleanly() {
        assert!(matches!(parse(b"not an elf"), Err(ElfError::Parse(_))));
        assert!(matches!(parse(&[]), Err(ElfError::Parse(_))));
        let mut elfish = vec![0u8; 64];
        elfish[..4].copy_from_slice(b"\x7fELF");
        assert!(parse(&elfish).is_err());
    }

    #[test]
    fn segments_are_placed_by_their_physical_address() {
        // Linux's per-CPU segment has p_vaddr 0; Xen's loader goes by p_paddr.
        let mut img = minimal_image(&[0xf4]);
        let phoff = u64::from_le_bytes(img[0x20..0x28].try_into().unwrap()) as usize;
        img[phoff + 16..phoff + 24].copy_from_slice(&0u64.to_le_bytes());
        let parsed = parse(&img).unwrap();
        assert_eq!(parsed.segments[0].vaddr, MINIMAL_IMAGE_BASE);
        assert_eq!(parsed.v_start, MINIMAL_IMAGE_BASE);
    }

    #[test]
    fn the_minimal_image_parses() {
        let img = parse(&minimal_image(&[0x90; 5000])).unwrap();
        assert_eq!(img.entry, MINIMAL_IMAGE_BASE);
        assert_eq!(img.virt_base, 0);
        assert_eq!(img.hypercall_page, Some(MINIMAL_IMAGE_BASE + 0x2000));
        assert_eq!(
            (img.v_start, img.v_end),
            (MINIMAL_IMAGE_BASE, MINIMAL_IMAGE_BASE + 0x3000)
        );
        assert_eq!(img.segments.len(), 1);
        assert_eq!(img.segments[0].filesz, 5000);
    }
}
