//! Access to one page-table page in guest memory, and the [`PteBatch`] handed to walker
//! callbacks.
//!
//! This is the one place where pvmmu reaches guest memory through a raw pointer: a table
//! page is looked up once through `vm-memory`, its pointer guard is kept for as long as
//! the page is in use, and through the guard it is viewed as 512 `AtomicU64`s, so the
//! walker's per-entry work is a plain atomic load or store. Views of the entries borrow
//! the page (and so the guard), which makes them sound over any `GuestMemory`, including
//! backends whose guard owns a temporary mapping (vm-memory's `xen` grant regions).
//! Every entry access is an atomic 8-byte operation, because a hardware walker (or
//! another vCPU) may set A/D bits in the same table concurrently.

use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicU64, Ordering};

use vm_memory::bitmap::BitmapSlice;
use vm_memory::volatile_memory::PtrGuardMut;
use vm_memory::{GuestAddress, GuestMemory, Permissions, VolatileSlice};

use crate::entry::{Mfn, PTE_AD_MASK, Pte};
use crate::paging::{ENTRIES_PER_TABLE, Level, PAGE_SIZE, PagingMode};

/// Errors reaching a page-table page.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TableError {
    /// The frame is not (wholly, contiguously) backed by the guest memory.
    #[error("frame {0} is not backed by guest memory")]
    OutsideMemory(Mfn),
    /// The host mapping of the frame is not 8-byte aligned.
    #[error("host mapping of frame {0} is not 8-byte aligned")]
    Unaligned(Mfn),
}

/// The host view of one page-table page: the `vm-memory` slice it came from (kept for
/// dirty-page tracking) and the pointer guard that keeps its host mapping alive.
///
/// The 512 atomics are borrowed from the page ([`TablePage::entries`]), so no view of
/// them can outlive the guard, whatever kind of mapping the `GuestMemory` hands out.
pub(crate) struct TablePage<'m, B> {
    slice: VolatileSlice<'m, B>,
    /// Owns the host mapping for memories that map on demand (vm-memory's `xen` grant
    /// regions without advance mapping unmap when the guard drops); for memory mapped
    /// in advance it is just the address. Its pointer was checked to be 8-byte aligned when the page was built.
    guard: PtrGuardMut,
}

impl<B: BitmapSlice> TablePage<'_, B> {
    /// The entries of the page, borrowed for as long as the page (and so its mapping)
    /// lives.
    #[inline]
    pub(crate) fn entries(&self) -> &[AtomicU64; ENTRIES_PER_TABLE] {
        let ptr = self.guard.as_ptr().cast::<[AtomicU64; ENTRIES_PER_TABLE]>();
        // SAFETY: the pointer is valid for reads and writes of PAGE_SIZE bytes for as
        // long as `self.guard` lives, whichever way the memory is mapped:
        // - memory mapped in advance (`GuestMemoryMmap`/`GuestRegionMmap` without
        //   vm-memory's `xen` feature; with it, Unix and foreign regions and grant
        //   regions mapped in advance): the guard is only the address inside the
        //   region's mapping, which stays mapped while the memory is borrowed for 'm,
        //   and `self` holds that borrow;
        // - guard-owned mappings (the `xen` backend's grant regions with
        //   `NO_ADVANCE_MAP`): the guard owns a temporary mapping of just this slice and
        //   unmaps it when dropped, and `self` owns the guard.
        // The returned reference borrows `self`, so in both cases it cannot outlive the
        // mapping. `table_page` checked that the guard covers PAGE_SIZE bytes and is
        // 8-byte aligned; `AtomicU64` has the size and alignment of a `u64`, so the page
        // is exactly 512 of them. Guest memory is shared with the guest and other
        // threads, so it is only ever accessed through these atomics (interior
        // mutability), never through a `&mut` or a plain integer reference.
        unsafe { &*ptr }
    }

    /// Records in the embedder's dirty bitmap that entries `[first, first + n)` changed.
    pub(crate) fn mark_dirty(&self, first: usize, n: usize) {
        self.slice.bitmap().mark_dirty(first * 8, n * 8);
    }
}

/// Looks up the host memory of frame `mfn` of `mem`, once.
pub(crate) fn table_page<M: GuestMemory + ?Sized>(
    mem: &M,
    mfn: Mfn,
) -> Result<TablePage<'_, vm_memory::bitmap::BS<'_, M::Bitmap>>, TableError> {
    let addr = mfn
        .0
        .checked_mul(PAGE_SIZE)
        .ok_or(TableError::OutsideMemory(mfn))?;
    let slice = mem
        .get_slices(
            GuestAddress(addr),
            PAGE_SIZE as usize,
            Permissions::ReadWrite,
        )
        .ok()
        .and_then(|mut it| it.next())
        .and_then(Result::ok)
        .filter(|s| s.len() == PAGE_SIZE as usize)
        .ok_or(TableError::OutsideMemory(mfn))?;
    let guard = slice.ptr_guard_mut();
    if guard.len() != PAGE_SIZE as usize {
        return Err(TableError::OutsideMemory(mfn));
    }
    if !guard.as_ptr().cast::<AtomicU64>().is_aligned() {
        return Err(TableError::Unaligned(mfn));
    }
    Ok(TablePage { slice, guard })
}

/// A run of consecutive entries of one page-table page, as handed to walker callbacks:
/// the batch.
///
/// The host memory of the page was looked up once; each access below is one atomic
/// 8-byte operation on guest memory. Index `i` of the batch is entry
/// `first_index() + i` of the table.
pub struct PteBatch<'p> {
    entries: &'p [AtomicU64],
    level: Level,
    mode: PagingMode,
    table: Mfn,
    first_index: usize,
    first_linear: u64,
    path: Path,
    written: bool,
}

/// The entries that led from the root to a table, top level first.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Path {
    entries: [Pte; 5],
    len: usize,
}

impl Path {
    pub(crate) fn push(mut self, pte: Pte) -> Path {
        if let Some(slot) = self.entries.get_mut(self.len) {
            *slot = pte;
            self.len += 1;
        }
        self
    }

    pub(crate) fn as_slice(&self) -> &[Pte] {
        &self.entries[..self.len]
    }
}

impl<'p> PteBatch<'p> {
    /// Builds a batch over entries `first..=last` of `page`, borrowing the page (and so
    /// its mapping) for the batch's lifetime.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new<B: BitmapSlice>(
        page: &'p TablePage<'_, B>,
        level: Level,
        mode: PagingMode,
        table: Mfn,
        first: usize,
        last: usize,
        table_linear: u64,
        path: Path,
    ) -> PteBatch<'p> {
        let entries = page.entries();
        let last = last.min(ENTRIES_PER_TABLE - 1);
        let first = first.min(last);
        PteBatch {
            entries: &entries[first..=last],
            level,
            mode,
            table,
            first_index: first,
            first_linear: table_linear + ((first as u64) << level.shift()),
            path,
            written: false,
        }
    }

    /// The table indices covered by this batch if any entry was written through it
    /// (dirty tracking is per page, so the run as a whole is reported).
    pub(crate) fn written(&self) -> Option<(usize, usize)> {
        self.written
            .then(|| (self.first_index, self.first_index + self.entries.len() - 1))
    }

    /// Number of entries in the batch (1..=512).
    #[allow(clippy::len_without_is_empty)]
    #[inline]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Level of the table these entries belong to.
    #[inline]
    pub fn level(&self) -> Level {
        self.level
    }

    /// The frame of the page-table page.
    #[inline]
    pub fn table(&self) -> Mfn {
        self.table
    }

    /// Index within the table of the batch's first entry.
    #[inline]
    pub fn first_index(&self) -> usize {
        self.first_index
    }

    /// Guest-physical address of entry `i` of the batch (the PTE's own address).
    #[inline]
    pub fn entry_addr(&self, i: usize) -> u64 {
        self.table.addr() + ((self.first_index + i) as u64) * 8
    }

    /// The virtual address that entry `i` of the batch maps (its first byte).
    #[inline]
    pub fn va(&self, i: usize) -> u64 {
        self.mode
            .va(self.first_linear + ((i as u64) << self.level.shift()))
    }

    /// The upper-level entries that led from the root to this table, top level first
    /// (empty for a table visited on its own).
    #[inline]
    pub fn path(&self) -> &[Pte] {
        self.path.as_slice()
    }

    /// Reads entry `i` (an atomic 8-byte load). Panics if `i >= len()`, like slice
    /// indexing: `i` is the caller's loop index, never a guest value.
    ///
    /// Loads and stores are `Relaxed`: they cannot tear, and the only concurrent writer
    /// they race with is a hardware walker setting A/D bits. Ordering against other
    /// memory is the embedder's locking, as with any guest memory.
    #[inline]
    pub fn get(&self, i: usize) -> Pte {
        Pte(self.entries[i].load(Ordering::Relaxed))
    }

    /// Writes entry `i` (an atomic 8-byte store).
    #[inline]
    pub fn set(&mut self, i: usize, pte: Pte) {
        self.entries[i].store(pte.0, Ordering::Relaxed);
        self.written = true;
    }

    /// Replaces entry `i` with `new` if it still holds `current`: returns the previous
    /// value, `Ok` if it was `current`.
    #[inline]
    pub fn compare_exchange(&mut self, i: usize, current: Pte, new: Pte) -> Result<Pte, Pte> {
        let r = self.entries[i]
            .compare_exchange(current.0, new.0, Ordering::AcqRel, Ordering::Acquire)
            .map(Pte)
            .map_err(Pte);
        if r.is_ok() {
            self.written = true;
        }
        r
    }

    /// Writes `new` into entry `i` while keeping whatever Accessed/Dirty bits the entry
    /// holds at the moment of the store (a compare-exchange loop, so A/D bits a hardware
    /// walker sets concurrently are not lost). Returns the value replaced.
    pub fn set_preserving_ad(&mut self, i: usize, new: Pte) -> Pte {
        let mut old = self.get(i);
        loop {
            let want = Pte(new.0 | (old.0 & PTE_AD_MASK));
            match self.compare_exchange(i, old, want) {
                Ok(prev) => return prev,
                Err(seen) => old = seen,
            }
        }
    }

    /// Rewrites every entry of the batch with `f(index, old)`: the bulk form of
    /// [`PteBatch::get`] + [`PteBatch::set`]. On x86-64 two entries are read with one
    /// aligned 16-byte load and written back with one 16-byte store (see
    /// [`PteSnapshot`] for why no entry can tear), with `f` in between, so the loop
    /// keeps `f`'s state in registers. As with `get` then `set`, an A/D bit a hardware
    /// walker sets between the read and the store of an entry (or of its neighbour in
    /// the pair) is overwritten: use [`PteBatch::set_preserving_ad`] where that
    /// matters.
    #[inline]
    pub fn rewrite(&mut self, mut f: impl FnMut(usize, Pte) -> Pte) {
        let run = Pairs::new(self.entries);
        if let Some(e) = run.head {
            e.store(f(0, Pte(e.load(Ordering::Relaxed))).0, Ordering::Relaxed);
        }
        let mut j = run.first;
        for pair in run.body {
            let [a, b] = load_pair(pair);
            store_pair(pair, [f(j, a), f(j + 1, b)]);
            j += 2;
        }
        if let Some(e) = run.tail {
            e.store(f(j, Pte(e.load(Ordering::Relaxed))).0, Ordering::Relaxed);
        }
        self.written = true;
    }

    /// Folds over the entry values of the batch: `f(acc, index, value)` for each entry
    /// in order, two entries per aligned 16-byte load on x86-64 (see
    /// [`PteSnapshot`]), nothing copied. The accumulator stays in registers, but
    /// each step waits for the previous one; a reduction the compiler could
    /// vectorise is faster over [`PteBatch::with_values`].
    ///
    /// ```
    /// use pvmmu::{visit_table, Level, Mfn, Pte};
    /// use vm_memory::{GuestAddress, GuestMemoryMmap};
    /// let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x4000)]).unwrap();
    /// let present = visit_table(&mem, Mfn(1), Level::L1, |batch| {
    ///     batch.set(4, Pte(0x5001));
    ///     batch.set(9, Pte(0x6001));
    ///     batch.fold(0, |n, _, e| n + usize::from(e.is_present()))
    /// })
    /// .unwrap();
    /// assert_eq!(present, 2);
    /// ```
    #[inline]
    pub fn fold<A>(&self, init: A, mut f: impl FnMut(A, usize, Pte) -> A) -> A {
        let run = Pairs::new(self.entries);
        let mut acc = init;
        if let Some(e) = run.head {
            acc = f(acc, 0, Pte(e.load(Ordering::Relaxed)));
        }
        let mut j = run.first;
        for pair in run.body {
            let [a, b] = load_pair(pair);
            acc = f(acc, j, a);
            acc = f(acc, j + 1, b);
            j += 2;
        }
        if let Some(e) = run.tail {
            acc = f(acc, j, Pte(e.load(Ordering::Relaxed)));
        }
        acc
    }

    /// The entry values of the batch, copied out of guest memory in bulk: each entry
    /// as one untorn 8-byte value (not the batch as one atomic whole).
    ///
    /// [`PteBatch::get`] is one relaxed atomic load, and LLVM treats an atomic (or
    /// volatile) load as a possible write to memory, so a loop that calls it cannot
    /// keep state it reaches through references in registers or be vectorised; a
    /// loop over a snapshot is a plain loop over plain memory. On x86-64 the copy is
    /// made with aligned 16-byte loads, two entries at a time (see [`PteSnapshot`]
    /// for why no entry can tear). [`PteBatch::with_values`] does the same without
    /// moving the 4 KiB copy.
    ///
    /// ```
    /// use pvmmu::{visit_table, Level, Mfn, Pte};
    /// use vm_memory::{GuestAddress, GuestMemoryMmap};
    /// let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x4000)]).unwrap();
    /// let present = visit_table(&mem, Mfn(2), Level::L1, |batch| {
    ///     batch.set(3, Pte(0x7003));
    ///     let snap = batch.snapshot();
    ///     assert_eq!(snap.as_slice()[3], Pte(0x7003));
    ///     snap.iter().filter(|e| e.is_present()).count()
    /// })
    /// .unwrap();
    /// assert_eq!(present, 1);
    /// ```
    #[inline]
    pub fn snapshot(&self) -> PteSnapshot {
        let mut snap = PteSnapshot {
            entries: [const { MaybeUninit::uninit() }; ENTRIES_PER_TABLE],
            len: self.entries.len(),
        };
        load_entries(self.entries, &mut snap.entries[..self.entries.len()]);
        snap
    }

    /// Calls `f` with the values of all the batch's entries, read in bulk (as
    /// [`PteBatch::snapshot`], into a buffer that is not moved): the fastest way to
    /// read a whole batch when `f` is a loop the compiler can vectorise.
    ///
    /// ```
    /// use pvmmu::{visit_table, Level, Mfn, Pte};
    /// use vm_memory::{GuestAddress, GuestMemoryMmap};
    /// let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x4000)]).unwrap();
    /// let sum = visit_table(&mem, Mfn(1), Level::L1, |batch| {
    ///     batch.set(0, Pte(0x1000));
    ///     batch.set(511, Pte(0x2000));
    ///     batch.with_values(|v| v.iter().map(|e| e.raw()).sum::<u64>())
    /// })
    /// .unwrap();
    /// assert_eq!(sum, 0x3000);
    /// ```
    #[inline]
    pub fn with_values<R>(&self, f: impl FnOnce(&[Pte]) -> R) -> R {
        // Cache-line aligned, so the copy's 16-byte stores never split a line.
        let mut buf = Aligned([const { MaybeUninit::<Pte>::uninit() }; ENTRIES_PER_TABLE]);
        let n = self.entries.len();
        let buf = &mut buf.0[..n];
        load_entries(self.entries, buf);
        // SAFETY: load_entries initialised every element of `buf`; `MaybeUninit<Pte>`
        // has the layout of `Pte`, so `buf` is a `[Pte]` of the same length.
        let vals = unsafe { &*(buf as *const [MaybeUninit<Pte>] as *const [Pte]) };
        f(vals)
    }

    /// Iterates over the entry values of the batch, one relaxed atomic load per entry
    /// as the iteration reaches it. To read many entries, [`PteBatch::with_values`],
    /// [`PteBatch::fold`] or [`PteBatch::snapshot`] is faster.
    #[inline]
    pub fn iter(&self) -> impl Iterator<Item = Pte> + '_ {
        self.entries.iter().map(|e| Pte(e.load(Ordering::Relaxed)))
    }
}

/// A cache-line aligned buffer.
#[repr(align(64))]
struct Aligned<T>(T);

/// The values of a batch's entries at the moment they were read
/// ([`PteBatch::snapshot`]): plain memory, up to 512 entries.
///
///
/// # Why bulk access may use vector loads
///
/// This and [`PteBatch::rewrite`], [`PteBatch::fold`] and [`PteBatch::with_values`]
/// read (and `rewrite` writes) two entries per aligned 16-byte access on x86-64: the entries are shared with
/// agents outside the Rust abstract machine (the guest's vCPUs, the CPU's page walker
/// setting A/D bits), in memory that is no Rust allocation (the VMM's mapping of guest
/// RAM), so, as everywhere in pvmmu and vm-memory, they are only accessed with atomic
/// or volatile operations, never through plain references. What must hold is that
/// no entry is seen half old and half new. x86-64 reads a naturally aligned quadword
/// in one access (Intel SDM vol. 3A, "Guaranteed Atomic Operations"; AMD APM vol. 2,
/// "Memory Access Atomicity"); an aligned 16-byte SSE load is either one access
/// (processors with AVX guarantee it for `movdqa`-class loads) or split into its two
/// aligned quadwords, each read in one access. So an aligned 16-byte load of two
/// entries yields two untorn entries, which is all a relaxed 8-byte atomic load per
/// entry promises; neither implies any order between entries. The stores of
/// `rewrite` rest on the same guarantee for writes. Elsewhere, and for an
/// entry at an odd index, the copy is one relaxed atomic load per entry.
#[derive(Clone)]
pub struct PteSnapshot {
    /// `entries[..len]` are initialised.
    entries: [MaybeUninit<Pte>; ENTRIES_PER_TABLE],
    len: usize,
}

impl PteSnapshot {
    /// The values, index `i` being entry `i` of the batch.
    #[inline]
    pub fn as_slice(&self) -> &[Pte] {
        let init = &self.entries[..self.len.min(ENTRIES_PER_TABLE)];
        // SAFETY: `snapshot` wrote entries[..len] (load_entries writes every element of
        // the slice it is given) and nothing un-writes them; `MaybeUninit<Pte>` has the
        // layout of `Pte`, so the initialised prefix is a `[Pte]` of that length.
        unsafe { &*(init as *const [MaybeUninit<Pte>] as *const [Pte]) }
    }

    /// Iterates over the values.
    #[inline]
    pub fn iter(&self) -> std::iter::Copied<std::slice::Iter<'_, Pte>> {
        self.as_slice().iter().copied()
    }

    /// Number of entries.
    #[allow(clippy::len_without_is_empty)]
    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }
}

impl std::fmt::Debug for PteSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.as_slice()).finish()
    }
}

/// A run of entries split for bulk access: an entry at an odd index first (one
/// relaxed atomic), then 16-byte aligned pairs, read and written on x86-64 with one
/// volatile 16-byte access each (see [`PteSnapshot`] for why no entry can tear), then
/// an odd last entry. Elsewhere a pair is two relaxed atomics.
struct Pairs<'a> {
    head: Option<&'a AtomicU64>,
    /// Index of the first entry of the first pair.
    first: usize,
    /// The pairs.
    body: &'a [[AtomicU64; 2]],
    tail: Option<&'a AtomicU64>,
}

impl<'a> Pairs<'a> {
    #[inline(always)]
    fn new(entries: &'a [AtomicU64]) -> Pairs<'a> {
        let aligned = entries.as_ptr().align_offset(16) == 0;
        let first = usize::from(!aligned).min(entries.len());
        let (body, rest) = entries[first..].as_chunks::<2>();
        Pairs {
            head: if aligned { None } else { entries.first() },
            first,
            body,
            tail: rest.first(),
        }
    }
}

/// The two entries of an aligned pair.
#[inline(always)]
fn load_pair(pair: &[AtomicU64; 2]) -> [Pte; 2] {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::__m128i;
        let p = pair.as_ptr().cast::<__m128i>();
        debug_assert!(p.is_aligned());
        // SAFETY: `p` covers the two entries of `pair`, 16-byte aligned (`Pairs::new`
        // started the pairs on a 16-byte boundary; entries are 8 bytes). The memory is
        // a table page's mapping, valid for the borrow of `pair`: guest memory outside
        // any Rust allocation, shared with the guest, so accessed only with volatile
        // or atomic operations.
        let v = unsafe { std::ptr::read_volatile(p) };
        // SAFETY: `__m128i` and `[u64; 2]` are both 16 plain bytes.
        let [a, b] = unsafe { std::mem::transmute::<__m128i, [u64; 2]>(v) };
        [Pte(a), Pte(b)]
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        [
            Pte(pair[0].load(Ordering::Relaxed)),
            Pte(pair[1].load(Ordering::Relaxed)),
        ]
    }
}

/// Writes the two entries of an aligned pair.
#[inline(always)]
fn store_pair(pair: &[AtomicU64; 2], new: [Pte; 2]) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::__m128i;
        // Guest memory is written through the atomics' interior mutability.
        let p = pair.as_ptr().cast::<__m128i>().cast_mut();
        debug_assert!(p.is_aligned());
        // SAFETY: `__m128i` and `[u64; 2]` are both 16 plain bytes.
        let v = unsafe { std::mem::transmute::<[u64; 2], __m128i>([new[0].0, new[1].0]) };
        // SAFETY: as for `load_pair`: the same aligned pair, valid for writes through
        // the atomics' interior mutability.
        unsafe { std::ptr::write_volatile(p, v) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        pair[0].store(new[0].0, Ordering::Relaxed);
        pair[1].store(new[1].0, Ordering::Relaxed);
    }
}

/// Copies `src.len()` entries of guest memory into `dst`, each entry an untorn 8-byte
/// value (see [`PteSnapshot`] for why the vector loads cannot tear one).
#[inline]
fn load_entries(src: &[AtomicU64], dst: &mut [MaybeUninit<Pte>]) {
    debug_assert_eq!(src.len(), dst.len());
    let run = Pairs::new(src);
    if let (Some(e), Some(d)) = (run.head, dst.first_mut()) {
        d.write(Pte(e.load(Ordering::Relaxed)));
    }
    let (pairs, _) = dst[run.first..].as_chunks_mut::<2>();
    for (d, pair) in pairs.iter_mut().zip(run.body) {
        let [a, b] = load_pair(pair);
        d[0].write(a);
        d[1].write(b);
    }
    if let (Some(e), Some(d)) = (run.tail, dst.last_mut()) {
        d.write(Pte(e.load(Ordering::Relaxed)));
    }
}

impl std::fmt::Debug for PteBatch<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PteBatch")
            .field("level", &self.level)
            .field("table", &self.table)
            .field("first_index", &self.first_index)
            .field("len", &self.entries.len())
            .field("first_va", &format_args!("{:#x}", self.va(0)))
            .finish()
    }
}

/// Visits all 512 entries of the page-table page `mfn`, treated as a table of `level`,
/// in one batch. This is how code that works on whole tables (validation, audit) reads
/// and writes them.
///
/// ```
/// use pvmmu::{visit_table, Level, Mfn, Pte};
/// use vm_memory::{GuestAddress, GuestMemoryMmap};
/// let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
/// let present = visit_table(&mem, Mfn(3), Level::L2, |batch| {
///     batch.set(7, Pte(0x5003));
///     batch.iter().filter(|e| e.is_present()).count()
/// })
/// .unwrap();
/// assert_eq!(present, 1);
/// ```
pub fn visit_table<M, R>(
    mem: &M,
    mfn: Mfn,
    level: Level,
    f: impl FnOnce(&mut PteBatch<'_>) -> R,
) -> Result<R, TableError>
where
    M: GuestMemory + ?Sized,
{
    let page = table_page(mem, mfn)?;
    Ok(visit_page(&page, mfn, level, f))
}

/// The page handle of a memory `M`.
pub(crate) type PageOf<'m, M> =
    TablePage<'m, vm_memory::bitmap::BS<'m, <M as GuestMemory>::Bitmap>>;

/// `visit_table` on an already looked-up page.
pub(crate) fn visit_page<B: BitmapSlice, R>(
    page: &TablePage<'_, B>,
    mfn: Mfn,
    level: Level,
    f: impl FnOnce(&mut PteBatch<'_>) -> R,
) -> R {
    let mut batch = PteBatch::new(
        page,
        level,
        PagingMode::FourLevel,
        mfn,
        0,
        ENTRIES_PER_TABLE - 1,
        0,
        Path::default(),
    );
    let r = f(&mut batch);
    if let Some((lo, hi)) = batch.written() {
        page.mark_dirty(lo, hi - lo + 1);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::PteFlags;
    use vm_memory::{Bytes, GuestMemoryMmap};

    fn mem() -> GuestMemoryMmap<()> {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x4000)]).unwrap()
    }

    #[test]
    fn frames_outside_memory_are_refused() {
        let m = mem();
        assert_eq!(
            visit_table(&m, Mfn(4), Level::L1, |_| ()),
            Err(TableError::OutsideMemory(Mfn(4)))
        );
        assert_eq!(
            visit_table(&m, Mfn(u64::MAX), Level::L1, |_| ()),
            Err(TableError::OutsideMemory(Mfn(u64::MAX)))
        );
    }

    #[test]
    fn batch_reads_and_writes_guest_memory() {
        let m = mem();
        m.write_obj(0x1234_5067u64, GuestAddress(0x1008)).unwrap();
        visit_table(&m, Mfn(1), Level::L1, |b| {
            assert_eq!(b.len(), 512);
            assert_eq!(b.get(1), Pte(0x1234_5067));
            assert_eq!(b.entry_addr(1), 0x1008);
            // Preserving A/D keeps the old A (0x20) and D (0x40) bits.
            let old = b.set_preserving_ad(1, Pte(0x9001));
            assert_eq!(old, Pte(0x1234_5067));
            assert_eq!(b.get(1), Pte(0x9061));
            assert_eq!(b.compare_exchange(1, Pte(0), Pte(5)), Err(Pte(0x9061)));
            assert_eq!(b.compare_exchange(1, Pte(0x9061), Pte(5)), Ok(Pte(0x9061)));
        })
        .unwrap();
        assert_eq!(m.read_obj::<u64>(GuestAddress(0x1008)).unwrap(), 5);
    }

    // The tests below exercise the atomics view itself (they are the ones scripts/miri.sh
    // runs): aliasing views of one page, views alongside vm-memory's own accesses, and
    // views used from several threads at once.

    #[test]
    fn two_views_of_one_page_alias() {
        let m = mem();
        let a = table_page(&m, Mfn(2)).unwrap();
        {
            let b = table_page(&m, Mfn(2)).unwrap();
            a.entries()[511].store(0xabc, Ordering::Relaxed);
            assert_eq!(b.entries()[511].load(Ordering::Relaxed), 0xabc);
            b.entries()[0].store(7, Ordering::Relaxed);
        }
        // The first view outlives the second.
        assert_eq!(a.entries()[0].load(Ordering::Relaxed), 7);
        // vm-memory's own (volatile) accesses see, and are seen by, the view.
        m.write_obj(0x55u64, GuestAddress(0x2000 + 8 * 3)).unwrap();
        assert_eq!(a.entries()[3].load(Ordering::Relaxed), 0x55);
        assert_eq!(m.read_obj::<u64>(GuestAddress(0x2ff8)).unwrap(), 0xabc);
        // Neighbouring frames are untouched.
        assert_eq!(m.read_obj::<u64>(GuestAddress(0x1ff8)).unwrap(), 0);
        assert_eq!(m.read_obj::<u64>(GuestAddress(0x3000)).unwrap(), 0);
    }

    #[test]
    fn batch_bounds_and_bulk_rewrite() {
        let m = mem();
        let page = table_page(&m, Mfn(3)).unwrap();
        let mut batch = PteBatch::new(
            &page,
            Level::L1,
            PagingMode::FourLevel,
            Mfn(3),
            510,
            700, // clipped to the last entry
            0,
            Path::default(),
        );
        assert_eq!((batch.first_index(), batch.len()), (510, 2));
        assert_eq!(batch.written(), None);
        batch.rewrite(|i, old| Pte(old.raw() + 0x1000 * (i as u64 + 1)));
        assert_eq!(batch.written(), Some((510, 511)));
        assert_eq!(batch.iter().collect::<Vec<_>>(), [Pte(0x1000), Pte(0x2000)]);
        assert_eq!(batch.entry_addr(1), 0x3ff8);
        assert_eq!(m.read_obj::<u64>(GuestAddress(0x3ff0)).unwrap(), 0x1000);
        assert_eq!(m.read_obj::<u64>(GuestAddress(0x3fe8)).unwrap(), 0);
    }

    #[test]
    fn bulk_reads_and_rewrites_agree_with_single_entries_for_every_run() {
        let m = mem();
        for i in 0..512u64 {
            m.write_obj(0x1000 * i + 7, GuestAddress(0x3000 + 8 * i))
                .unwrap();
        }
        let page = table_page(&m, Mfn(3)).unwrap();
        // Runs starting at even and odd indices (aligned and unaligned pairs), of odd
        // and even lengths, down to a single entry, up to the whole page.
        let edges = [0usize, 1, 2, 3, 254, 255, 256, 509, 510, 511];
        for &first in &edges {
            for &last in edges.iter().filter(|&&l| l >= first) {
                let b = PteBatch::new(
                    &page,
                    Level::L1,
                    PagingMode::FourLevel,
                    Mfn(3),
                    first,
                    last,
                    0,
                    Path::default(),
                );
                let want: Vec<Pte> = (0..b.len()).map(|i| b.get(i)).collect();
                assert_eq!(b.snapshot().as_slice(), &want[..], "{first}..={last}");
                assert_eq!(b.snapshot().len(), want.len());
                assert_eq!(b.with_values(|v| v.to_vec()), want, "{first}..={last}");
                assert_eq!(b.iter().collect::<Vec<_>>(), want);
                let seen = b.fold(Vec::new(), |mut v, i, e| {
                    v.push((i, e));
                    v
                });
                let idx: Vec<(usize, Pte)> = want.iter().copied().enumerate().collect();
                assert_eq!(seen, idx, "{first}..={last}");
            }
        }
        // A rewrite touches exactly its run, each entry once with its own index.
        for &(first, last) in &[(0usize, 511usize), (1, 510), (3, 3), (4, 4), (7, 300)] {
            let mut b = PteBatch::new(
                &page,
                Level::L1,
                PagingMode::FourLevel,
                Mfn(3),
                first,
                last,
                0,
                Path::default(),
            );
            let before: Vec<u64> = (0..512u64)
                .map(|i| m.read_obj(GuestAddress(0x3000 + 8 * i)).unwrap())
                .collect();
            let mut calls = 0;
            b.rewrite(|i, old| {
                calls += 1;
                Pte(old.raw() ^ (0x100 + i as u64) << 52)
            });
            assert_eq!(calls, last - first + 1);
            assert_eq!(b.written(), Some((first, last)));
            for (i, &old) in before.iter().enumerate() {
                let now: u64 = m.read_obj(GuestAddress(0x3000 + 8 * i as u64)).unwrap();
                let want = if (first..=last).contains(&i) {
                    old ^ ((0x100 + (i - first) as u64) << 52)
                } else {
                    old
                };
                assert_eq!(now, want, "entry {i} after rewriting {first}..={last}");
            }
        }
    }

    #[test]
    fn unaligned_host_mapping_is_refused() {
        // A region that starts 4 bytes into a page puts frame 1 four bytes past an
        // 8-byte boundary of the host allocation.
        let m = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0x4), 0x3000)]).unwrap();
        assert_eq!(
            table_page(&m, Mfn(1)).err(),
            Some(TableError::Unaligned(Mfn(1)))
        );
        // Frame 0 is only partly backed.
        assert_eq!(
            table_page(&m, Mfn(0)).err(),
            Some(TableError::OutsideMemory(Mfn(0)))
        );
    }

    #[test]
    fn concurrent_ad_bits_survive_preserving_writes() {
        let m = mem();
        let writes = 64u64;
        std::thread::scope(|s| {
            // A "hardware walker" sets Accessed, then Dirty, on entry 9.
            s.spawn(|| {
                let page = table_page(&m, Mfn(1)).unwrap();
                for bit in [PteFlags::ACCESSED, PteFlags::DIRTY] {
                    page.entries()[9].fetch_or(bit.bits(), Ordering::Relaxed);
                }
            });
            // Meanwhile the hypervisor rewrites the entry's frame, keeping A/D bits.
            s.spawn(|| {
                for n in 1..=writes {
                    visit_table(&m, Mfn(1), Level::L1, |b| {
                        b.set_preserving_ad(9, Pte::new(Mfn(n), PteFlags::PRESENT));
                    })
                    .unwrap();
                }
            });
        });
        let e = Pte(m.read_obj::<u64>(GuestAddress(0x1000 + 9 * 8)).unwrap());
        assert_eq!(e.mfn(), Mfn(writes));
        assert!(e.has(PteFlags::PRESENT | PteFlags::ACCESSED | PteFlags::DIRTY));
    }
}
