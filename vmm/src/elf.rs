//! Reading a PV guest's ELF image and its Xen ELF notes (reference/xen-pv-boot.md §2.1).

use goblin::elf::Elf;
use goblin::elf::header::{EM_X86_64, ET_EXEC};
use goblin::elf::program_header::{PT_LOAD, PT_NOTE};
use pvmmu_abi::elfnote::{
    XEN_ELFNOTE_ENTRY, XEN_ELFNOTE_FEATURES, XEN_ELFNOTE_HYPERCALL_PAGE, XEN_ELFNOTE_VIRT_BASE,
    XEN_ELFNOTE_XEN_VERSION, feature_by_name,
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
    /// Virtual address.
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
    let mut segments = Vec::new();
    for (i, ph) in elf.program_headers.iter().enumerate() {
        if ph.p_type != PT_LOAD || ph.p_memsz == 0 {
            continue;
        }
        let offset = usize::try_from(ph.p_offset).map_err(|_| ElfError::Segment(i))?;
        let filesz = usize::try_from(ph.p_filesz).map_err(|_| ElfError::Segment(i))?;
        let in_file = offset.checked_add(filesz).is_some_and(|e| e <= bytes.len());
        let fits = ph.p_vaddr.checked_add(ph.p_memsz).is_some() && ph.p_filesz <= ph.p_memsz;
        if !in_file || !fits {
            return Err(ElfError::Segment(i));
        }
        segments.push(Segment {
            vaddr: ph.p_vaddr,
            offset,
            filesz,
            memsz: ph.p_memsz,
        });
    }
    if segments.is_empty() {
        return Err(ElfError::Empty);
    }
    let mut image = GuestImage {
        entry: elf.header.e_entry,
        virt_base: 0,
        hypercall_page: None,
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
        features: Vec::new(),
    };
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
            XEN_ELFNOTE_ENTRY => image.entry = note_u64(note.n_type, note.desc)?,
            XEN_ELFNOTE_VIRT_BASE => image.virt_base = note_u64(note.n_type, note.desc)?,
            XEN_ELFNOTE_HYPERCALL_PAGE => {
                image.hypercall_page = Some(note_u64(note.n_type, note.desc)?)
            }
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
                    image.features.push((name.to_string(), required));
                }
            }
            _ => {}
        }
    }
    if xen_notes == 0 {
        return Err(ElfError::NotPv);
    }
    Ok(image)
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
}
