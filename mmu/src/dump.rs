//! A page-table dump in the style of Linux's ptdump: mapped ranges merged by page size
//! and effective rights, built on the batched walker.

use std::fmt;
use std::ops::ControlFlow;

use vm_memory::GuestMemory;

use crate::entry::{Mfn, PteFlags};
use crate::paging::Level;
use crate::range::VaRange;
use crate::translate::effective_flags;
use crate::walk::{Visit, WalkError, Walker};

/// A run of consecutive virtual pages mapped with the same page size and rights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DumpRange {
    /// First VA.
    pub start: u64,
    /// Last VA (inclusive).
    pub last: u64,
    /// Level of the leaf entries (L1: 4 KiB pages, L2: 2 MiB, L3: 1 GiB).
    pub level: Level,
    /// Effective rights (see [`crate::effective_flags`]) plus the leaf's cache and
    /// global bits.
    pub flags: PteFlags,
}

impl DumpRange {
    /// Size of the range in bytes.
    pub fn size(&self) -> u64 {
        self.last.wrapping_sub(self.start).wrapping_add(1)
    }
}

fn human(size: u64) -> String {
    const UNITS: [(u64, &str); 4] = [
        (1 << 40, "T"),
        (1 << 30, "G"),
        (1 << 20, "M"),
        (1 << 10, "K"),
    ];
    for (unit, name) in UNITS {
        if size >= unit && size.is_multiple_of(unit) {
            return format!("{}{name}", size / unit);
        }
    }
    format!("{size}B")
}

impl fmt::Display for DumpRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let flag = |bit: PteFlags, on: &'static str, off: &'static str| {
            if self.flags.contains(bit) { on } else { off }
        };
        write!(
            f,
            "{:#018x}-{:#018x} {:>6}  {} {} {} {} {} {}  {}",
            self.start,
            self.last.wrapping_add(1),
            human(self.size()),
            flag(PteFlags::RW, "RW", "ro"),
            flag(PteFlags::USER, "USR", "   "),
            flag(PteFlags::PWT, "PWT", "   "),
            flag(PteFlags::PCD, "PCD", "   "),
            flag(PteFlags::GLOBAL, "GLB", "   "),
            flag(PteFlags::NX, "NX", "x "),
            self.level.ptdump_name()
        )
    }
}

impl<'m, M: GuestMemory + ?Sized> Walker<'m, M> {
    /// Dumps every mapped range of `range` under `root`, merged ptdump-style.
    pub fn dump_range(&self, root: Mfn, range: VaRange) -> Result<Vec<DumpRange>, WalkError> {
        let mut out: Vec<DumpRange> = Vec::new();
        let mut push = |start: u64, last: u64, level: Level, flags: PteFlags| {
            if let Some(prev) = out.last_mut()
                && prev.level == level
                && prev.flags == flags
                && prev.last.checked_add(1) == Some(start)
            {
                prev.last = last;
                return;
            }
            out.push(DumpRange {
                start,
                last,
                level,
                flags,
            });
        };
        let kept = PteFlags::PWT | PteFlags::PCD | PteFlags::GLOBAL;
        let range_last = range.last().unwrap_or(range.start());
        let _stopped = self.apply_to_existing_page_range(root, range, |visit| {
            match visit {
                Visit::Ptes(batch) => {
                    for i in 0..batch.len() {
                        let pte = batch.get(i);
                        if pte.is_present() {
                            let flags = effective_flags(batch.path(), pte) | (pte.flags() & kept);
                            let va = batch.va(i);
                            push(va, va + (Level::L1.entry_span() - 1), Level::L1, flags);
                        }
                    }
                }
                Visit::Superpage(batch) => {
                    let pte = batch.get(0);
                    let level = batch.level();
                    let flags = effective_flags(batch.path(), pte) | (pte.flags() & kept);
                    let start = batch.va(0).max(range.start());
                    let last = (batch.va(0) + (level.entry_span() - 1)).min(range_last);
                    push(start, last, level, flags);
                }
                Visit::Hole(_) => {}
            }
            ControlFlow::<()>::Continue(())
        })?;
        Ok(out)
    }

    /// Dumps both canonical halves of the address space under `root`.
    pub fn dump(&self, root: Mfn) -> Result<Vec<DumpRange>, WalkError> {
        let mut out = self.dump_range(root, VaRange::lower_half(self.mode()))?;
        out.extend(self.dump_range(root, VaRange::upper_half(self.mode()))?);
        Ok(out)
    }
}
