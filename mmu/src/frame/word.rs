//! The two words of a frame's bookkeeping that vCPUs change concurrently, and the
//! compare-and-swap transitions on them (Xen's `count_info` and `type_info` with
//! `cmpxchg` loops in `get_page`, `put_page`, `get_page_type` and `put_page_type`).
//!
//! A transition here never does more than one word can say: it takes or drops one
//! reference, and it refuses (returns `false`, changing nothing) whenever the step would
//! need more than that: the last general reference (freeing the frame), a type that is
//! not already held, or the last type reference of a validated page table (recursive
//! de-validation). Those steps are left to the caller's exclusive path. The protocol is
//! written against [`Word`] so that `loom` can check it over every interleaving.

use std::sync::atomic::{AtomicU64, Ordering};

use super::{COUNT_MASK, PageType, TYPE_COUNT_MASK};

/// `count_info`: the general reference count in bits 0..=55.
pub(crate) const CI_COUNT: u64 = COUNT_MASK;
/// `count_info`: the allocation reference is held (Xen's `PGC_allocated`).
pub(crate) const CI_ALLOCATED: u64 = 1 << 56;
/// `count_info`: shared by the hypervisor with its owner.
pub(crate) const CI_SHARED: u64 = 1 << 57;
/// `count_info`: a TLB of the owner may hold a stale translation.
pub(crate) const CI_STALE: u64 = 1 << 58;

/// `type_info`: the type count in bits 0..=54.
pub(crate) const TI_COUNT: u64 = TYPE_COUNT_MASK;
/// `type_info`: pinned.
pub(crate) const TI_PINNED: u64 = 1 << 59;
/// `type_info`: validated for the current type.
pub(crate) const TI_VALIDATED: u64 = 1 << 60;
/// `type_info`: the type, bits 63:61.
pub(crate) const TI_TYPE_SHIFT: u32 = 61;

/// The type field of a `type_info` word.
pub(crate) const fn type_of(ti: u64) -> PageType {
    match ti >> TI_TYPE_SHIFT {
        1 => PageType::L1,
        2 => PageType::L2,
        3 => PageType::L3,
        4 => PageType::L4,
        5 => PageType::SegDesc,
        6 => PageType::Shared,
        7 => PageType::Writable,
        _ => PageType::None,
    }
}

/// One 64-bit word changed by compare-and-swap.
pub(crate) trait Word {
    /// The current value.
    fn load(&self) -> u64;
    /// Replaces `current` by `new`; on failure returns the value found.
    fn cas(&self, current: u64, new: u64) -> Result<u64, u64>;
}

impl Word for AtomicU64 {
    #[inline]
    fn load(&self) -> u64 {
        AtomicU64::load(self, Ordering::Acquire)
    }

    #[inline]
    fn cas(&self, current: u64, new: u64) -> Result<u64, u64> {
        self.compare_exchange_weak(current, new, Ordering::AcqRel, Ordering::Acquire)
    }
}

/// Applies `step` to the word until a compare-and-swap succeeds, or until `step`
/// refuses the value it sees.
#[inline]
fn update(w: &impl Word, step: impl Fn(u64) -> Option<u64>) -> bool {
    let mut cur = w.load();
    loop {
        let Some(new) = step(cur) else {
            return false;
        };
        match w.cas(cur, new) {
            Ok(_) => return true,
            Err(seen) => cur = seen,
        }
    }
}

/// Takes a general reference on a frame in use (count > 0), refusing overflow (Xen's
/// `get_page` limit: the top two counts are never reached).
#[inline]
pub(crate) fn get_ref(ci: &impl Word) -> bool {
    update(ci, |c| {
        let n = c & CI_COUNT;
        (n > 0 && n + 1 < COUNT_MASK - 1).then_some(c + 1)
    })
}

/// Drops a general reference unless it is the last one (which frees the frame).
#[inline]
pub(crate) fn put_ref_not_last(ci: &impl Word) -> bool {
    update(ci, |c| (c & CI_COUNT > 1).then_some(c - 1))
}

/// Takes a writable type reference, as [`super::FrameTable::take_type`] does for
/// `Writable`, where that is one word's change: joining a writable type already held,
/// or taking it on a frame of no type or of the writable type at type count 0. Another
/// type at count 0 (a former table or descriptor page) is refused: its change resets
/// bookkeeping outside this word.
#[inline]
pub(crate) fn get_writable(ti: &impl Word) -> bool {
    const WRITABLE: u64 = (PageType::Writable as u64) << TI_TYPE_SHIFT;
    update(ti, |t| {
        let n = t & TI_COUNT;
        match (type_of(t), n) {
            (PageType::Writable, 1..TYPE_COUNT_MASK) => Some(t + 1),
            (PageType::Writable | PageType::None, 0) => Some(WRITABLE | TI_VALIDATED | 1),
            _ => None,
        }
    })
}

/// Drops a type reference unless it is the last one of a validated page table (whose
/// de-validation is recursive). The last reference of another type also unpins, as
/// [`super::FrameTable::drop_type`] does.
#[inline]
pub(crate) fn put_type_no_demote(ti: &impl Word) -> bool {
    update(ti, |t| {
        let n = t & TI_COUNT;
        match n {
            0 => None,
            1 if type_of(t).is_page_table() && t & TI_VALIDATED != 0 => None,
            1 => Some((t - 1) & !TI_PINNED),
            _ => Some(t - 1),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ti(ty: PageType, validated: bool, n: u64) -> AtomicU64 {
        let v = if validated { TI_VALIDATED } else { 0 };
        AtomicU64::new(((ty as u64) << TI_TYPE_SHIFT) | v | n)
    }

    #[test]
    fn general_references_never_reach_zero_or_overflow() {
        let ci = AtomicU64::new(CI_ALLOCATED | 1);
        assert!(
            !put_ref_not_last(&ci),
            "the last reference is not ours to drop"
        );
        assert!(get_ref(&ci));
        assert_eq!(Word::load(&ci), CI_ALLOCATED | 2);
        assert!(put_ref_not_last(&ci));
        assert_eq!(Word::load(&ci), CI_ALLOCATED | 1);
        let free = AtomicU64::new(0);
        assert!(!get_ref(&free), "a free frame takes no reference");
        let full = AtomicU64::new(COUNT_MASK - 2);
        assert!(!get_ref(&full));
        let below = AtomicU64::new(COUNT_MASK - 3);
        assert!(get_ref(&below));
    }

    #[test]
    fn writable_references_join_or_start_only_a_writable_type() {
        let w = ti(PageType::Writable, true, 1);
        assert!(get_writable(&w));
        assert_eq!(Word::load(&w) & TI_COUNT, 2);
        for start in [
            ti(PageType::Writable, true, 0),
            ti(PageType::None, false, 0),
        ] {
            assert!(get_writable(&start));
            assert_eq!(
                Word::load(&start),
                Word::load(&ti(PageType::Writable, true, 1))
            );
        }
        for refused in [
            ti(PageType::L1, true, 1),
            ti(PageType::L1, false, 0),
            ti(PageType::SegDesc, true, 0),
            ti(PageType::Writable, true, TYPE_COUNT_MASK),
        ] {
            let before = Word::load(&refused);
            assert!(!get_writable(&refused));
            assert_eq!(Word::load(&refused), before, "a refusal changes nothing");
        }
    }

    #[test]
    fn the_last_reference_of_a_validated_table_is_refused() {
        let l1 = ti(PageType::L1, true, 1);
        assert!(!put_type_no_demote(&l1));
        let l1 = ti(PageType::L1, true, 2);
        assert!(put_type_no_demote(&l1));
        let w = AtomicU64::new(Word::load(&ti(PageType::Writable, true, 1)) | TI_PINNED);
        assert!(put_type_no_demote(&w));
        assert_eq!(Word::load(&w) & (TI_COUNT | TI_PINNED), 0);
        assert!(!put_type_no_demote(&ti(PageType::Writable, true, 0)));
    }
}
