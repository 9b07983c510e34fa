//! The frame table: per machine frame its owner, general reference count and type word
//! (type, type count, validated, pinned), as in Xen's `struct page_info`.
//!
//! This module holds the counters and the primitive transitions on them; the rules that
//! decide *when* a count may move (validation, linear page tables) live in `validate`.

use std::fmt;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};

pub(crate) mod word;

use pvmmu_abi::Errno;
use pvmmu_abi::domid::DOMID_INVALID;

use crate::entry::Mfn;
use crate::paging::Level;

/// The type of a frame (Xen's `PGT_*` in bits 63:61 of the type word).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(u8)]
pub enum PageType {
    /// No type (fresh frame).
    #[default]
    None = 0,
    /// An L1 page table.
    L1 = 1,
    /// An L2 page table.
    L2 = 2,
    /// An L3 page table.
    L3 = 3,
    /// An L4 page table.
    L4 = 4,
    /// A GDT/LDT page.
    SegDesc = 5,
    /// A mem-sharing page (never used by this model).
    Shared = 6,
    /// Ordinary writable memory.
    Writable = 7,
}

impl PageType {
    /// The page-table type of tables of `level` (L1..=L4).
    pub const fn table(level: Level) -> Option<PageType> {
        match level {
            Level::L1 => Some(PageType::L1),
            Level::L2 => Some(PageType::L2),
            Level::L3 => Some(PageType::L3),
            Level::L4 => Some(PageType::L4),
            Level::L5 => None,
        }
    }

    /// The paging level if this is a page-table type.
    pub const fn level(self) -> Option<Level> {
        match self {
            PageType::L1 => Some(Level::L1),
            PageType::L2 => Some(Level::L2),
            PageType::L3 => Some(Level::L3),
            PageType::L4 => Some(Level::L4),
            _ => None,
        }
    }

    /// Whether this is one of the page-table types.
    pub const fn is_page_table(self) -> bool {
        self.level().is_some()
    }
}

impl fmt::Display for PageType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            PageType::None => "none",
            PageType::L1 => "l1",
            PageType::L2 => "l2",
            PageType::L3 => "l3",
            PageType::L4 => "l4",
            PageType::SegDesc => "seg_desc",
            PageType::Shared => "shared",
            PageType::Writable => "writable",
        };
        f.write_str(s)
    }
}

/// Largest general reference count (Xen's count field is 56 bits wide; the top two
/// values are never reached, one being reserved for an internal "light" reference).
pub const COUNT_MASK: u64 = (1 << 56) - 1;
/// Largest type count (55 bits).
pub const TYPE_COUNT_MASK: u64 = (1 << 55) - 1;

/// A frame's owner, as the raw domain id (`DOMID_IO`, `DOMID_XEN` or a real domain), or
/// `DOMID_INVALID` for a free frame.
pub type Owner = u16;

/// The bookkeeping of one machine frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageInfo {
    /// Owning domain (raw id), or `DOMID_INVALID` if free.
    pub owner: Owner,
    /// General reference count; an allocated frame holds one for its allocation.
    pub count: u64,
    /// Current (or, at type count 0, last) type.
    pub ty: PageType,
    /// Number of uses in the current type.
    pub type_count: u64,
    /// Whether the contents were validated for the current type.
    pub validated: bool,
    /// Whether the frame is pinned (holds one type and one general reference).
    pub pinned: bool,
    /// Whether the allocation reference is held (Xen's `PGC_allocated`).
    pub allocated: bool,
    /// Whether the hypervisor shares the frame with its owner (Xen's
    /// `share_xen_page_with_guest`): it then holds one permanent type reference,
    /// writable (read-write sharing) or of no type (read-only sharing).
    pub shared: bool,
    /// XSA-240 linear-use counter: > 0 = contains that many same-level entries,
    /// < 0 = referenced by that many same-level entries.
    pub linear: i16,
    /// Whether a TLB of the owning domain may still hold a translation of this frame
    /// that was removed or downgraded since that domain's last full flush.
    pub stale: bool,
    /// Number of *other* domains whose TLBs may hold such a stale translation (foreign
    /// mappings).
    pub stale_foreign: u16,
    /// Validation of the frame as a table stopped part-way (Xen's `PGT_partial` and
    /// `nr_validated_ptes`): the entries below this index hold their references, the
    /// rest none; the frame holds one type reference (its type count is 1) and one
    /// general reference of its own until the validation is resumed to its end.
    pub partial: Option<u16>,
}

impl Default for PageInfo {
    fn default() -> Self {
        PageInfo {
            owner: DOMID_INVALID,
            count: 0,
            ty: PageType::None,
            type_count: 0,
            validated: false,
            pinned: false,
            allocated: false,
            shared: false,
            linear: 0,
            stale: false,
            stale_foreign: 0,
            partial: None,
        }
    }
}

impl PageInfo {
    /// Whether the frame is a live page table (a page-table type with uses).
    pub fn is_live_page_table(&self) -> bool {
        self.ty.is_page_table() && self.type_count > 0
    }
}

/// Outcome of taking a type reference before validation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TypeTaken {
    /// The frame's contents must now be validated for the type.
    pub needs_validation: bool,
    /// The type changed (from another type, with count 0).
    pub changed: bool,
}

/// One frame's bookkeeping as stored: the words vCPUs change concurrently are atomic
/// (see [`word`]); the rest changes only under exclusive access to the table.
#[derive(Debug)]
struct Slot {
    owner: AtomicU16,
    /// General count and the allocated/shared/stale flags.
    count_info: AtomicU64,
    /// Type, validated, pinned and type count.
    type_info: AtomicU64,
    linear: i16,
    stale_foreign: u16,
    /// Entries validated so far while `TI_PARTIAL` is set.
    partial: u16,
}

impl Slot {
    fn new(p: &PageInfo) -> Slot {
        let mut s = Slot {
            owner: AtomicU16::new(0),
            count_info: AtomicU64::new(0),
            type_info: AtomicU64::new(0),
            linear: 0,
            stale_foreign: 0,
            partial: 0,
        };
        s.store(p);
        s
    }

    #[inline]
    fn load(&self) -> PageInfo {
        let ci = self.count_info.load(Ordering::Acquire);
        let ti = self.type_info.load(Ordering::Acquire);
        PageInfo {
            owner: self.owner.load(Ordering::Acquire),
            count: ci & word::CI_COUNT,
            allocated: ci & word::CI_ALLOCATED != 0,
            shared: ci & word::CI_SHARED != 0,
            stale: ci & word::CI_STALE != 0,
            ty: word::type_of(ti),
            type_count: ti & word::TI_COUNT,
            validated: ti & word::TI_VALIDATED != 0,
            pinned: ti & word::TI_PINNED != 0,
            linear: self.linear,
            stale_foreign: self.stale_foreign,
            partial: (ti & word::TI_PARTIAL != 0).then_some(self.partial),
        }
    }

    #[inline]
    fn store(&mut self, p: &PageInfo) {
        let flag = |b: bool, bit: u64| if b { bit } else { 0 };
        *self.owner.get_mut() = p.owner;
        *self.count_info.get_mut() = (p.count & word::CI_COUNT)
            | flag(p.allocated, word::CI_ALLOCATED)
            | flag(p.shared, word::CI_SHARED)
            | flag(p.stale, word::CI_STALE);
        *self.type_info.get_mut() = ((p.ty as u64) << word::TI_TYPE_SHIFT)
            | (p.type_count & word::TI_COUNT)
            | flag(p.validated, word::TI_VALIDATED)
            | flag(p.pinned, word::TI_PINNED)
            | flag(p.partial.is_some(), word::TI_PARTIAL);
        self.linear = p.linear;
        self.stale_foreign = p.stale_foreign;
        self.partial = p.partial.unwrap_or(0);
    }
}

/// A frame's bookkeeping borrowed for change under exclusive access: edits go to a copy
/// that is stored back when the borrow ends.
pub(crate) struct PageMut<'a> {
    slot: &'a mut Slot,
    info: PageInfo,
}

impl std::ops::Deref for PageMut<'_> {
    type Target = PageInfo;
    #[inline]
    fn deref(&self) -> &PageInfo {
        &self.info
    }
}

impl std::ops::DerefMut for PageMut<'_> {
    #[inline]
    fn deref_mut(&mut self) -> &mut PageInfo {
        &mut self.info
    }
}

impl Drop for PageMut<'_> {
    #[inline]
    fn drop(&mut self) {
        self.slot.store(&self.info);
    }
}

/// The frame table of one machine: `PageInfo` per RAM frame, and the M2P.
///
/// The general count and the type word of each frame are atomic, so that batches served
/// concurrently (see [`SharedMachine`](crate::SharedMachine)) take and drop references
/// by compare-and-swap as Xen does; every other change needs `&mut`.
#[derive(Debug)]
pub struct FrameTable {
    pages: Vec<Slot>,
    m2p: Vec<u64>,
}

impl Clone for FrameTable {
    fn clone(&self) -> FrameTable {
        FrameTable {
            pages: self.pages.iter().map(|s| Slot::new(&s.load())).collect(),
            m2p: self.m2p.clone(),
        }
    }
}

impl FrameTable {
    /// A table for `frames` RAM frames, all free, M2P all invalid.
    pub fn new(frames: usize) -> FrameTable {
        let free = PageInfo::default();
        FrameTable {
            pages: (0..frames).map(|_| Slot::new(&free)).collect(),
            m2p: vec![u64::MAX; frames],
        }
    }

    /// Number of RAM frames covered.
    pub fn len(&self) -> usize {
        self.pages.len()
    }

    /// Whether the table covers no frames.
    pub fn is_empty(&self) -> bool {
        self.pages.is_empty()
    }

    /// Whether `mfn` is a RAM frame known to the table (Xen's `mfn_valid`).
    pub fn is_ram(&self, mfn: Mfn) -> bool {
        (mfn.0 as usize as u64) == mfn.0 && (mfn.0 as usize) < self.pages.len()
    }

    #[inline]
    fn slot(&self, mfn: Mfn) -> Option<&Slot> {
        usize::try_from(mfn.0).ok().and_then(|i| self.pages.get(i))
    }

    /// The bookkeeping of `mfn`, if it is RAM (a snapshot).
    #[inline]
    pub fn get(&self, mfn: Mfn) -> Option<PageInfo> {
        self.slot(mfn).map(Slot::load)
    }

    #[inline]
    pub(crate) fn get_mut(&mut self, mfn: Mfn) -> Option<PageMut<'_>> {
        let slot = usize::try_from(mfn.0)
            .ok()
            .and_then(|i| self.pages.get_mut(i))?;
        let info = slot.load();
        Some(PageMut { slot, info })
    }

    /// Iterates over `(mfn, info)` for every RAM frame.
    pub fn iter(&self) -> impl Iterator<Item = (Mfn, PageInfo)> + '_ {
        self.pages
            .iter()
            .enumerate()
            .map(|(i, p)| (Mfn(i as u64), p.load()))
    }

    /// The M2P entry of `mfn`.
    pub fn m2p(&self, mfn: Mfn) -> Option<u64> {
        usize::try_from(mfn.0)
            .ok()
            .and_then(|i| self.m2p.get(i))
            .copied()
    }

    pub(crate) fn set_m2p(&mut self, mfn: Mfn, pfn: u64) -> bool {
        match usize::try_from(mfn.0)
            .ok()
            .and_then(|i| self.m2p.get_mut(i))
        {
            Some(e) => {
                *e = pfn;
                true
            }
            None => false,
        }
    }

    /// Whether `mfn` is RAM owned by `owner`.
    pub fn owned_by(&self, mfn: Mfn, owner: Owner) -> bool {
        self.slot(mfn).is_some_and(|s| {
            s.owner.load(Ordering::Acquire) == owner
                && s.count_info.load(Ordering::Acquire) & word::CI_COUNT > 0
        })
    }

    /// The owner of `mfn` (a snapshot), if it is RAM.
    #[inline]
    pub(crate) fn owner(&self, mfn: Mfn) -> Option<Owner> {
        self.slot(mfn).map(|s| s.owner.load(Ordering::Acquire))
    }

    /// Owner, general count and type of `mfn` in one look (the fields the hot paths
    /// decide on): `(owner, count, type, type count, validated)`.
    #[inline]
    pub(crate) fn brief(&self, mfn: Mfn) -> Option<(Owner, u64, PageType, u64, bool)> {
        let s = self.slot(mfn)?;
        let ti = s.type_info.load(Ordering::Acquire);
        Some((
            s.owner.load(Ordering::Acquire),
            s.count_info.load(Ordering::Acquire) & word::CI_COUNT,
            word::type_of(ti),
            ti & word::TI_COUNT,
            ti & word::TI_VALIDATED != 0,
        ))
    }

    /// The raw `type_info` word of `mfn` (a snapshot).
    #[inline]
    pub(crate) fn type_word(&self, mfn: Mfn) -> Option<u64> {
        self.slot(mfn).map(|s| s.type_info.load(Ordering::Acquire))
    }

    /// The raw `count_info` word of `mfn` (a snapshot).
    #[inline]
    pub(crate) fn count_word(&self, mfn: Mfn) -> Option<u64> {
        self.slot(mfn).map(|s| s.count_info.load(Ordering::Acquire))
    }

    /// Concurrent `get_page`: a general reference on a frame of `owner` in use.
    #[inline]
    pub(crate) fn get_ref_shared(&self, mfn: Mfn, owner: Owner) -> bool {
        self.slot(mfn).is_some_and(|s| {
            s.owner.load(Ordering::Acquire) == owner && word::get_ref(&s.count_info)
        })
    }

    /// Concurrent `put_page` that is not the last reference (see [`word`]).
    #[inline]
    pub(crate) fn put_ref_shared(&self, mfn: Mfn) -> bool {
        self.slot(mfn)
            .is_some_and(|s| word::put_ref_not_last(&s.count_info))
    }

    /// Concurrent `get_page_type(PGT_writable_page)` where it is one word's change
    /// (see [`word::get_writable`]).
    #[inline]
    pub(crate) fn get_writable_shared(&self, mfn: Mfn) -> bool {
        self.slot(mfn)
            .is_some_and(|s| word::get_writable(&s.type_info))
    }

    /// Concurrent `put_page_type` that needs no de-validation.
    #[inline]
    pub(crate) fn put_type_shared(&self, mfn: Mfn) -> bool {
        self.slot(mfn)
            .is_some_and(|s| word::put_type_no_demote(&s.type_info))
    }

    /// Concurrent marking of `mfn` as possibly held stale by its owner's TLBs: `true`
    /// if this set the mark (the frame is then to be listed for the next full flush).
    #[inline]
    pub(crate) fn mark_stale_shared(&self, mfn: Mfn) -> bool {
        self.slot(mfn).is_some_and(|s| {
            s.count_info.load(Ordering::Acquire) & word::CI_STALE == 0
                && s.count_info.fetch_or(word::CI_STALE, Ordering::AcqRel) & word::CI_STALE == 0
        })
    }

    /// [`FrameTable::mark_stale_shared`] under exclusive access.
    #[inline]
    pub(crate) fn mark_stale(&mut self, mfn: Mfn) -> bool {
        self.slot_mut(mfn).is_some_and(|s| {
            let ci = s.count_info.get_mut();
            let newly = *ci & word::CI_STALE == 0;
            *ci |= word::CI_STALE;
            newly
        })
    }

    /// Xen's `get_page`: takes a general reference if the frame is owned by `owner` and
    /// in use; refuses overflow.
    #[inline]
    pub(crate) fn get_page(&mut self, mfn: Mfn, owner: Owner) -> bool {
        let Some(s) = usize::try_from(mfn.0)
            .ok()
            .and_then(|i| self.pages.get_mut(i))
        else {
            return false;
        };
        let ci = s.count_info.get_mut();
        let n = *ci & word::CI_COUNT;
        if *s.owner.get_mut() == owner && n > 0 && n + 1 < COUNT_MASK - 1 {
            *ci += 1;
            true
        } else {
            false
        }
    }

    #[inline]
    fn slot_mut(&mut self, mfn: Mfn) -> Option<&mut Slot> {
        usize::try_from(mfn.0)
            .ok()
            .and_then(|i| self.pages.get_mut(i))
    }

    /// Xen's `put_page`: drops a general reference. Dropping the last one frees the
    /// frame (owner cleared, type reset).
    #[inline]
    pub(crate) fn put_page(&mut self, mfn: Mfn) {
        let Some(s) = self.slot_mut(mfn) else {
            return;
        };
        let ci = s.count_info.get_mut();
        if *ci & word::CI_COUNT > 1 {
            *ci -= 1;
            return;
        }
        debug_assert!(*ci & word::CI_COUNT > 0, "put_page on free frame {mfn}");
        // The last reference: the frame is free. It may still be in some TLB: keep its
        // staleness.
        let old = s.load();
        s.store(&PageInfo {
            stale: old.stale,
            stale_foreign: old.stale_foreign,
            ..PageInfo::default()
        });
    }

    /// `get_page_from_l1e`'s common case under exclusive access, in one look at the
    /// frame: a reference on RAM of `owner` (not DOMID_IO) in use, and for a writable
    /// mapping one more on a writable type already held. `cache_attrs`: the entry asks
    /// for a cache attribute (refused here for frames the hypervisor shares). `false`
    /// (nothing taken) leaves the case to the full rules.
    #[inline]
    pub(crate) fn get_l1e_refs_common(
        &mut self,
        mfn: Mfn,
        owner: Owner,
        writable: bool,
        cache_attrs: bool,
    ) -> bool {
        let Some(s) = self.slot_mut(mfn) else {
            return false;
        };
        let ci = *s.count_info.get_mut();
        let n = ci & word::CI_COUNT;
        if *s.owner.get_mut() != owner
            || owner == pvmmu_abi::domid::DOMID_IO
            || n == 0
            || n + 1 >= COUNT_MASK - 1
            || (ci & word::CI_SHARED != 0 && cache_attrs)
        {
            return false;
        }
        if writable {
            let ti = s.type_info.get_mut();
            let tc = *ti & word::TI_COUNT;
            if tc == 0 || tc >= TYPE_COUNT_MASK || word::type_of(*ti) != PageType::Writable {
                return false;
            }
            *ti += 1;
        }
        *s.count_info.get_mut() += 1;
        true
    }

    /// First half of Xen's `get_page_type`: takes a type reference on `ty` if the frame's
    /// type allows it. The caller validates when asked to, and calls
    /// [`FrameTable::type_validated`] or [`FrameTable::type_failed`].
    #[inline]
    pub(crate) fn take_type(&mut self, mfn: Mfn, ty: PageType) -> Result<TypeTaken, Errno> {
        const TYPE_MASK: u64 = 7 << word::TI_TYPE_SHIFT;
        let s = self.slot_mut(mfn).ok_or(Errno::EINVAL)?;
        let t = *s.type_info.get_mut();
        let n = t & word::TI_COUNT;
        if n >= TYPE_COUNT_MASK {
            return Err(Errno::EINVAL);
        }
        let mut new = t;
        let mut changed = false;
        if n == 0 {
            if word::type_of(t) != ty {
                new =
                    (t & !(TYPE_MASK | word::TI_VALIDATED)) | ((ty as u64) << word::TI_TYPE_SHIFT);
                s.linear = 0;
                changed = true;
            }
            if matches!(ty, PageType::Writable | PageType::Shared) {
                new |= word::TI_VALIDATED;
            }
        } else if word::type_of(t) != ty {
            return Err(Errno::EINVAL);
        }
        new += 1;
        *s.type_info.get_mut() = new;
        Ok(TypeTaken {
            needs_validation: new & word::TI_VALIDATED == 0,
            changed,
        })
    }

    /// Records how far an interrupted validation of `mfn` got (`None`: not interrupted,
    /// or finished).
    pub(crate) fn set_partial(&mut self, mfn: Mfn, done: Option<u16>) {
        if let Some(s) = self.slot_mut(mfn) {
            let ti = s.type_info.get_mut();
            match done {
                Some(n) => {
                    *ti |= word::TI_PARTIAL;
                    s.partial = n;
                }
                None => {
                    *ti &= !word::TI_PARTIAL;
                    s.partial = 0;
                }
            }
        }
    }

    /// How far an interrupted validation of `mfn` got.
    #[inline]
    pub(crate) fn partial(&self, mfn: Mfn) -> Option<u16> {
        let s = self.slot(mfn)?;
        (s.type_info.load(Ordering::Acquire) & word::TI_PARTIAL != 0).then_some(s.partial)
    }

    /// Takes one more general reference on a frame in use whatever its owner (the
    /// reference an interrupted validation holds; its caller holds one already).
    pub(crate) fn hold(&mut self, mfn: Mfn) {
        if let Some(s) = self.slot_mut(mfn) {
            let ci = s.count_info.get_mut();
            if *ci & word::CI_COUNT > 0 {
                *ci += 1;
            }
        }
    }

    /// Takes one type reference back on a frame whose type count just reached 0 (an
    /// interrupted de-validation keeps it).
    pub(crate) fn hold_type(&mut self, mfn: Mfn) {
        if let Some(s) = self.slot_mut(mfn) {
            *s.type_info.get_mut() += 1;
        }
    }

    /// Marks a frame validated after its first type reference validated it.
    pub(crate) fn type_validated(&mut self, mfn: Mfn) {
        if let Some(mut p) = self.get_mut(mfn) {
            p.validated = true;
        }
    }

    /// Validation failed: the type word is reset to none, count 0 (Xen's behaviour).
    pub(crate) fn type_failed(&mut self, mfn: Mfn) {
        if let Some(mut p) = self.get_mut(mfn) {
            p.ty = PageType::None;
            p.type_count = 0;
            p.validated = false;
            p.pinned = false;
            p.linear = 0;
            p.partial = None;
        }
    }

    /// First half of `put_page_type`: drops a type reference. Returns the page-table
    /// level to de-validate if this was the last reference of a validated table (the
    /// validated bit is already cleared).
    #[inline]
    pub(crate) fn drop_type(&mut self, mfn: Mfn) -> Option<Level> {
        let ti = self.slot_mut(mfn)?.type_info.get_mut();
        let n = *ti & word::TI_COUNT;
        debug_assert!(n > 0, "put_page_type at count 0 on {mfn}");
        if n > 1 {
            *ti -= 1;
            return None;
        }
        let mut new = *ti & !(word::TI_COUNT | word::TI_PINNED);
        let ty = word::type_of(new);
        let demote = ty.is_page_table() && new & word::TI_VALIDATED != 0;
        if demote {
            new &= !word::TI_VALIDATED;
        }
        *ti = new;
        if demote { ty.level() } else { None }
    }

    /// Assigns a free frame to `owner` as a page the hypervisor shares with it: the
    /// allocation reference and a permanent type reference, writable or of no type
    /// (which no other type can join: never mapped writable, never a table).
    pub(crate) fn share(&mut self, mfn: Mfn, owner: Owner, writable: bool) -> bool {
        if !self.allocate(mfn, owner) {
            return false;
        }
        if let Some(mut p) = self.get_mut(mfn) {
            p.shared = true;
            p.ty = if writable {
                PageType::Writable
            } else {
                PageType::None
            };
            p.type_count = 1;
            p.validated = true;
        }
        true
    }

    /// Assigns a free frame to `owner` with its allocation reference.
    pub(crate) fn allocate(&mut self, mfn: Mfn, owner: Owner) -> bool {
        match self.get_mut(mfn) {
            Some(mut p) if p.count == 0 && p.owner == DOMID_INVALID => {
                *p = PageInfo {
                    owner,
                    count: 1,
                    allocated: true,
                    stale: p.stale,
                    stale_foreign: p.stale_foreign,
                    ..PageInfo::default()
                };
                true
            }
            _ => false,
        }
    }

    #[doc(hidden)]
    /// Test hook: overwrite a frame's counts (to reach overflow limits in tests).
    pub fn set_counts_for_test(&mut self, mfn: Mfn, count: u64, type_count: u64) {
        self.edit_for_test(mfn, |p| {
            p.count = count;
            p.type_count = type_count;
        });
    }

    #[doc(hidden)]
    /// Test hook: change a frame's bookkeeping behind the rules' back (to break an
    /// invariant on purpose and check that [`Machine::audit`](crate::Machine::audit)
    /// reports it).
    pub fn edit_for_test(&mut self, mfn: Mfn, edit: impl FnOnce(&mut PageInfo)) {
        if let Some(mut p) = self.get_mut(mfn) {
            edit(&mut p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_changes_only_at_count_zero() {
        let mut ft = FrameTable::new(4);
        assert!(ft.allocate(Mfn(1), 1));
        let t = ft.take_type(Mfn(1), PageType::Writable).unwrap();
        assert_eq!(
            t,
            TypeTaken {
                needs_validation: false,
                changed: true
            }
        );
        assert_eq!(ft.take_type(Mfn(1), PageType::L1), Err(Errno::EINVAL));
        assert_eq!(ft.drop_type(Mfn(1)), None);
        let t = ft.take_type(Mfn(1), PageType::L1).unwrap();
        assert!(t.needs_validation && t.changed);
        ft.type_validated(Mfn(1));
        assert_eq!(ft.drop_type(Mfn(1)), Some(Level::L1));
        assert!(!ft.get(Mfn(1)).unwrap().validated);
    }

    #[test]
    fn overflow_is_refused() {
        let mut ft = FrameTable::new(2);
        assert!(ft.allocate(Mfn(0), 1));
        ft.set_counts_for_test(Mfn(0), COUNT_MASK - 2, TYPE_COUNT_MASK);
        assert!(!ft.get_page(Mfn(0), 1));
        assert_eq!(ft.take_type(Mfn(0), PageType::Writable), Err(Errno::EINVAL));
        ft.set_counts_for_test(Mfn(0), COUNT_MASK - 3, 0);
        assert!(ft.get_page(Mfn(0), 1));
        assert!(!ft.get_page(Mfn(0), 2), "wrong owner");
        assert!(!ft.get_page(Mfn(7), 1), "not RAM");
    }
}
