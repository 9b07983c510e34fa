//! The batched page-table walker.
//!
//! [`Walker::apply_to_page_range`] and [`Walker::apply_to_existing_page_range`] walk a
//! virtual range under a root table and call back **once per page-table page** with the
//! contiguous run of L1 entries of that page which the range covers (a [`PteBatch`] of up
//! to 512 entries), instead of once per entry. Upper-level holes and superpage leaves are
//! reported through the same callback as [`Visit::Hole`] and [`Visit::Superpage`].
//!
//! Every page-table traversal in pvmmu goes through this module.

use std::ops::ControlFlow;

use log::trace;
use vm_memory::GuestMemory;
use vm_memory::bitmap::BitmapSlice;

use crate::entry::{Mfn, Pte, PteFlags};
use crate::paging::{ENTRIES_PER_TABLE, Level, PagingMode};
use crate::range::{RangeError, VaRange};
use crate::table::{Path, PteBatch, TableError, table_page};

/// Errors of a walk. A walk that fails part-way has visited (and applied the callback's
/// changes to) everything below the reported `va`, and nothing from `va` on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WalkError {
    /// The range is inverted, wraps, or is not canonical.
    #[error(transparent)]
    Range(#[from] RangeError),
    /// The root, or a table named by a present upper-level entry, is not backed by guest
    /// memory.
    #[error("{level} table {mfn} (covering {va:#x}) is not accessible: {source}")]
    Table {
        /// Level of the table that could not be reached.
        level: Level,
        /// Its frame.
        mfn: Mfn,
        /// First VA of the walk that the table covers.
        va: u64,
        /// Why.
        source: TableError,
    },
    /// The frame allocator ran dry while a missing table was needed.
    #[error("no frame for a missing {level} table covering {va:#x}")]
    OutOfFrames {
        /// Level of the table that could not be allocated.
        level: Level,
        /// First VA of the walk it would have covered.
        va: u64,
    },
}

/// Supplies frames for missing intermediate tables in [`Walker::apply_to_page_range`].
///
/// The walker zeroes a frame before linking it. Closures `FnMut(Level) -> Option<Mfn>`
/// are allocators.
pub trait FrameAllocator {
    /// A frame for a new table of `level`, or `None` when none is left.
    fn allocate(&mut self, level: Level) -> Option<Mfn>;

    /// The flags of the upper-level entry that links a new table of `level` into its
    /// parent. The default is present, writable, user, accessed.
    fn link_flags(&self, _level: Level) -> PteFlags {
        PteFlags::PRESENT | PteFlags::RW | PteFlags::USER | PteFlags::ACCESSED
    }
}

impl<F: FnMut(Level) -> Option<Mfn>> FrameAllocator for F {
    fn allocate(&mut self, level: Level) -> Option<Mfn> {
        self(level)
    }
}

/// A contiguous span of the walk range left unmapped by non-present upper-level
/// entries of one table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Hole {
    /// Level of the table holding the non-present entries.
    pub level: Level,
    /// First VA of the span (clipped to the walk range).
    pub start: u64,
    /// Last VA of the span (inclusive, clipped to the walk range).
    pub last: u64,
}

/// What a walk reports to its callback.
///
/// `'p` is the borrow of the table page's host mapping: a batch lives no longer than the
/// callback it is handed to, so no view of guest memory outlives the mapping.
#[derive(Debug)]
pub enum Visit<'a, 'p> {
    /// The entries of one L1 table that the range covers, present or not.
    Ptes(&'a mut PteBatch<'p>),
    /// A superpage leaf (an L2 or L3 entry with PSE) covering part of the range, as a
    /// batch of that one entry; `va(0)` is the superpage's first address, which may lie
    /// before the walk range.
    Superpage(&'a mut PteBatch<'p>),
    /// Upper-level entries that are not present (only from
    /// [`Walker::apply_to_existing_page_range`]).
    Hole(Hole),
}

/// Walks the page tables of one guest memory in one paging mode.
///
/// ```
/// use std::ops::ControlFlow;
/// use pvmmu::{Level, Mfn, Pte, PteFlags, VaRange, Visit, Walker};
/// use vm_memory::{GuestAddress, GuestMemoryMmap};
///
/// let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
/// let mut next = 1u64; // frame 0 is the root; hand out 1, 2, 3, ...
/// let mut alloc = |_level: Level| { next += 1; Some(Mfn(next - 1)) };
/// let walker = Walker::new(&mem);
/// let range = VaRange::try_from(0x40_0000..0x40_4000).unwrap();
/// // Map four pages to frames 0x100.. in one batch.
/// walker.apply_to_page_range(Mfn(0), range, &mut alloc, |v| {
///     if let Visit::Ptes(batch) = v {
///         for i in 0..batch.len() {
///             batch.set(i, Pte::new(Mfn(0x100 + i as u64), PteFlags::PRESENT | PteFlags::RW));
///         }
///     }
///     ControlFlow::<()>::Continue(())
/// }).unwrap();
/// let t = walker.translate(Mfn(0), 0x40_2abc).unwrap().unwrap();
/// assert_eq!(t.paddr, 0x102abc);
/// ```
#[derive(Debug, Clone, Copy)]
pub struct Walker<'m, M: ?Sized> {
    mem: &'m M,
    mode: PagingMode,
}

struct NoAlloc;

impl FrameAllocator for NoAlloc {
    fn allocate(&mut self, _level: Level) -> Option<Mfn> {
        None
    }
}

/// State of one walk.
struct Walk<'w, 'm, M: ?Sized, A: ?Sized, F> {
    mem: &'m M,
    mode: PagingMode,
    alloc: Option<&'w mut A>,
    f: F,
}

impl<'m, M: GuestMemory + ?Sized> Walker<'m, M> {
    /// A four-level walker over `mem`.
    pub fn new(mem: &'m M) -> Self {
        Walker {
            mem,
            mode: PagingMode::FourLevel,
        }
    }

    /// The same walker in another paging mode.
    pub fn with_mode(self, mode: PagingMode) -> Self {
        Walker { mode, ..self }
    }

    /// The paging mode.
    pub fn mode(&self) -> PagingMode {
        self.mode
    }

    /// The guest memory walked.
    pub fn memory(&self) -> &'m M {
        self.mem
    }

    /// Walks every L1 entry of `range` under `root`, allocating missing intermediate
    /// tables from `alloc`, and calls `f` once per L1 table with the entries the range
    /// covers. Superpage leaves met on the way are reported, not descended into.
    ///
    /// Returns `Break` with the callback's value if it stopped the walk. If `alloc`
    /// runs dry, everything before the reported VA was walked and every table linked so
    /// far is complete (zeroed, then linked).
    pub fn apply_to_page_range<A, F, B>(
        &self,
        root: Mfn,
        range: VaRange,
        alloc: &mut A,
        f: F,
    ) -> Result<ControlFlow<B>, WalkError>
    where
        A: FrameAllocator + ?Sized,
        F: FnMut(Visit<'_, '_>) -> ControlFlow<B>,
    {
        let mut walk = Walk {
            mem: self.mem,
            mode: self.mode,
            alloc: Some(alloc),
            f,
        };
        walk.run(root, range)
    }

    /// Walks the existing L1 entries of `range` under `root` without allocating; holes
    /// and superpage leaves are reported to `f`.
    pub fn apply_to_existing_page_range<F, B>(
        &self,
        root: Mfn,
        range: VaRange,
        f: F,
    ) -> Result<ControlFlow<B>, WalkError>
    where
        F: FnMut(Visit<'_, '_>) -> ControlFlow<B>,
    {
        let mut walk: Walk<'_, 'm, M, NoAlloc, F> = Walk {
            mem: self.mem,
            mode: self.mode,
            alloc: None,
            f,
        };
        walk.run(root, range)
    }

    /// The per-entry adapter: calls `f` once per existing L1 entry (and once per
    /// superpage leaf and per hole) of `range`, on top of the batched walk.
    pub fn for_each_pte<F, B>(
        &self,
        root: Mfn,
        range: VaRange,
        mut f: F,
    ) -> Result<ControlFlow<B>, WalkError>
    where
        F: FnMut(EntryVisit<'_, '_>) -> ControlFlow<B>,
    {
        self.apply_to_existing_page_range(root, range, |visit| match visit {
            Visit::Ptes(batch) => {
                for i in 0..batch.len() {
                    f(EntryVisit::Pte(PteSlot {
                        batch: &mut *batch,
                        index: i,
                    }))?;
                }
                ControlFlow::Continue(())
            }
            Visit::Superpage(batch) => f(EntryVisit::Superpage(PteSlot { batch, index: 0 })),
            Visit::Hole(h) => f(EntryVisit::Hole(h)),
        })
    }
}

/// What the per-entry adapter [`Walker::for_each_pte`] reports.
#[derive(Debug)]
pub enum EntryVisit<'s, 'p> {
    /// One L1 entry.
    Pte(PteSlot<'s, 'p>),
    /// One superpage leaf.
    Superpage(PteSlot<'s, 'p>),
    /// A hole.
    Hole(Hole),
}

/// One entry of a batch, for the per-entry adapter.
#[derive(Debug)]
pub struct PteSlot<'s, 'p> {
    batch: &'s mut PteBatch<'p>,
    index: usize,
}

impl PteSlot<'_, '_> {
    /// The VA the entry maps.
    #[inline]
    pub fn va(&self) -> u64 {
        self.batch.va(self.index)
    }
    /// The entry's level.
    #[inline]
    pub fn level(&self) -> Level {
        self.batch.level()
    }
    /// Reads the entry.
    #[inline]
    pub fn get(&self) -> Pte {
        self.batch.get(self.index)
    }
    /// Writes the entry.
    #[inline]
    pub fn set(&mut self, pte: Pte) {
        self.batch.set(self.index, pte)
    }
    /// Compare-exchange on the entry (see [`PteBatch::compare_exchange`]).
    #[inline]
    pub fn compare_exchange(&mut self, current: Pte, new: Pte) -> Result<Pte, Pte> {
        self.batch.compare_exchange(self.index, current, new)
    }
    /// The guest-physical address of the entry itself.
    #[inline]
    pub fn entry_addr(&self) -> u64 {
        self.batch.entry_addr(self.index)
    }
}

impl<'m, M, A, F, B> Walk<'_, 'm, M, A, F>
where
    M: GuestMemory + ?Sized,
    A: FrameAllocator + ?Sized,
    F: FnMut(Visit<'_, '_>) -> ControlFlow<B>,
{
    fn run(&mut self, root: Mfn, range: VaRange) -> Result<ControlFlow<B>, WalkError> {
        let Some((first, last)) = range.linear_bounds(self.mode)? else {
            return Ok(ControlFlow::Continue(()));
        };
        // Work on whole pages: every page the range touches.
        let page_mask = Level::L1.entry_span() - 1;
        let (first, last) = (first & !page_mask, last | page_mask);
        trace!(
            "walk {:#x}..={:#x} under root {}",
            range.start(),
            last,
            root
        );
        self.table(self.mode.top(), root, first, last, Path::default())
    }

    /// Walks the part `[first, last]` (linear offsets) of the table `mfn` of `level`.
    fn table(
        &mut self,
        level: Level,
        mfn: Mfn,
        first: u64,
        last: u64,
        path: Path,
    ) -> Result<ControlFlow<B>, WalkError> {
        let mode = self.mode;
        let page = table_page(self.mem, mfn).map_err(|source| WalkError::Table {
            level,
            mfn,
            va: mode.va(first),
            source,
        })?;
        let span_bits = level.shift() + crate::paging::BITS_PER_LEVEL;
        let table_linear = if span_bits >= 64 {
            0
        } else {
            first & !((1u64 << span_bits) - 1)
        };
        let (i0, i1) = (level.index(first), level.index(last));

        let Some(lower) = level.lower() else {
            let mut batch = PteBatch::new(&page, level, mode, mfn, i0, i1, table_linear, path);
            let flow = (self.f)(Visit::Ptes(&mut batch));
            if let Some((lo, hi)) = batch.written() {
                page.mark_dirty(lo, hi - lo + 1);
            }
            return Ok(flow);
        };

        let entries = page.entries();
        let mut hole: Option<u64> = None;
        for (i, entry) in (i0..=i1).zip(&entries[i0..=i1]) {
            let entry_linear = table_linear + ((i as u64) << level.shift());
            let sub_first = first.max(entry_linear);
            let sub_last = last.min(entry_linear + (level.entry_span() - 1));
            let mut pte = Pte(entry.load(std::sync::atomic::Ordering::Acquire));

            if !pte.is_present() {
                if self.alloc.is_none() {
                    hole.get_or_insert(sub_first);
                    continue;
                }
                pte = self.link_new_table(&page, i, lower, mode.va(sub_first))?;
            }
            if let Some(start) = hole.take() {
                let h = Hole {
                    level,
                    start: mode.va(start),
                    last: mode.va(sub_first - 1),
                };
                if let ControlFlow::Break(b) = (self.f)(Visit::Hole(h)) {
                    return Ok(ControlFlow::Break(b));
                }
            }
            let flow = if pte.is_superpage(level) {
                let mut batch = PteBatch::new(&page, level, mode, mfn, i, i, table_linear, path);
                let flow = (self.f)(Visit::Superpage(&mut batch));
                if let Some((lo, hi)) = batch.written() {
                    page.mark_dirty(lo, hi - lo + 1);
                }
                flow
            } else {
                self.table(lower, pte.mfn(), sub_first, sub_last, path.push(pte))?
            };
            if flow.is_break() {
                return Ok(flow);
            }
        }
        if let Some(start) = hole {
            let h = Hole {
                level,
                start: mode.va(start),
                last: mode.va(last),
            };
            return Ok((self.f)(Visit::Hole(h)));
        }
        Ok(ControlFlow::Continue(()))
    }

    /// Allocates, zeroes and links a new table of `level` into entry `index` of `parent`.
    fn link_new_table<P: BitmapSlice>(
        &mut self,
        parent: &crate::table::TablePage<'_, P>,
        index: usize,
        level: Level,
        va: u64,
    ) -> Result<Pte, WalkError> {
        let Some(alloc) = self.alloc.as_deref_mut() else {
            return Err(WalkError::OutOfFrames { level, va });
        };
        let mfn = alloc
            .allocate(level)
            .ok_or(WalkError::OutOfFrames { level, va })?;
        let link = alloc.link_flags(level);
        let child = table_page(self.mem, mfn).map_err(|source| WalkError::Table {
            level,
            mfn,
            va,
            source,
        })?;
        for e in child.entries() {
            e.store(0, std::sync::atomic::Ordering::Relaxed);
        }
        child.mark_dirty(0, ENTRIES_PER_TABLE);
        let pte = Pte::new(mfn, link);
        // Publish the link only after the zeroed table is visible.
        parent.entries()[index].store(pte.0, std::sync::atomic::Ordering::Release);
        parent.mark_dirty(index, 1);
        trace!("linked new {level} table {mfn} for {va:#x}");
        Ok(pte)
    }
}

/// Walks `range` under `root` with four-level paging, allocating missing tables:
/// [`Walker::apply_to_page_range`] as a free function.
pub fn apply_to_page_range<M, A, F, B>(
    memory: &M,
    root: Mfn,
    range: VaRange,
    allocator: &mut A,
    callback: F,
) -> Result<ControlFlow<B>, WalkError>
where
    M: GuestMemory + ?Sized,
    A: FrameAllocator + ?Sized,
    F: FnMut(Visit<'_, '_>) -> ControlFlow<B>,
{
    Walker::new(memory).apply_to_page_range(root, range, allocator, callback)
}

/// Walks the existing entries of `range` under `root` with four-level paging:
/// [`Walker::apply_to_existing_page_range`] as a free function.
pub fn apply_to_existing_page_range<M, F, B>(
    memory: &M,
    root: Mfn,
    range: VaRange,
    callback: F,
) -> Result<ControlFlow<B>, WalkError>
where
    M: GuestMemory + ?Sized,
    F: FnMut(Visit<'_, '_>) -> ControlFlow<B>,
{
    Walker::new(memory).apply_to_existing_page_range(root, range, callback)
}

#[cfg(test)]
mod tests;
