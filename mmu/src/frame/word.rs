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
/// `type_info`: validation stopped part-way (Xen's `PGT_partial`).
pub(crate) const TI_PARTIAL: u64 = 1 << 58;
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

/// Drops a type reference unless it is the last one of a page table (whose
/// de-validation is recursive, or which an interrupted validation holds). The last reference of another type also unpins, as
/// [`super::FrameTable::drop_type`] does.
#[inline]
pub(crate) fn put_type_no_demote(ti: &impl Word) -> bool {
    update(ti, |t| {
        let n = t & TI_COUNT;
        match n {
            0 => None,
            // A table's last reference is never dropped here: validated, it needs
            // de-validation; partial, it belongs to the interrupted validation.
            1 if type_of(t).is_page_table() => None,
            1 => Some((t - 1) & !TI_PINNED),
            _ => Some(t - 1),
        }
    })
}

/// What to store over an entry's current value, and the reference work that goes
/// with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Plan {
    /// The value to store.
    pub want: u64,
    /// Whether `want` needs references taken before the store.
    pub take: bool,
    /// Whether the old value's references are released after the store.
    pub release: bool,
}

/// The reference work around one entry replacement (see [`replace_entry`]).
pub(crate) trait EntryRefs {
    /// What to store over `old`, or `None` to give up (nothing is held).
    fn plan(&mut self, old: u64) -> Option<Plan>;
    /// Takes the references `want` needs; `false` gives up (nothing is held).
    fn take(&mut self, want: u64) -> bool;
    /// Gives back what [`EntryRefs::take`] took for `want`.
    fn untake(&mut self, want: u64);
    /// Releases the references `old` held.
    fn release(&mut self, old: u64);
}

/// Replaces the page-table entry `slot` as `refs` plans it, by compare-and-swap on the
/// entry, which stands in for Xen's page lock: the new value's references are taken
/// before the swap and given back if the entry changed meanwhile (the plan is then
/// remade for what it holds now); the old value's references are released after the
/// swap, by the one writer whose swap removed it. Returns `(old, stored)`, or `None` if
/// the plan gave up (nothing changed, nothing held).
pub(crate) fn replace_entry(slot: &impl Word, refs: &mut impl EntryRefs) -> Option<(u64, u64)> {
    let mut old = slot.load();
    loop {
        let plan = refs.plan(old)?;
        if plan.take && !refs.take(plan.want) {
            return None;
        }
        match slot.cas(old, plan.want) {
            Ok(_) => {
                if plan.release {
                    refs.release(old);
                }
                return Some((old, plan.want));
            }
            Err(seen) => {
                if plan.take {
                    refs.untake(plan.want);
                }
                old = seen;
            }
        }
    }
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
        let partial = ti(PageType::L2, false, 1);
        assert!(!put_type_no_demote(&partial), "a partial table's reference");
        let l1 = ti(PageType::L1, true, 2);
        assert!(put_type_no_demote(&l1));
        let w = AtomicU64::new(Word::load(&ti(PageType::Writable, true, 1)) | TI_PINNED);
        assert!(put_type_no_demote(&w));
        assert_eq!(Word::load(&w) & (TI_COUNT | TI_PINNED), 0);
        assert!(!put_type_no_demote(&ti(PageType::Writable, true, 0)));
    }
}

/// The protocol under `loom`, over every interleaving of two vCPUs: run with
/// `scripts/loom.sh`.
#[cfg(test)]
#[cfg(loom)]
mod loom_model {
    use loom::sync::Arc;
    use loom::sync::atomic::{AtomicU64, Ordering};

    use super::*;

    impl Word for AtomicU64 {
        fn load(&self) -> u64 {
            AtomicU64::load(self, Ordering::Acquire)
        }

        fn cas(&self, current: u64, new: u64) -> Result<u64, u64> {
            self.compare_exchange_weak(current, new, Ordering::AcqRel, Ordering::Acquire)
        }
    }

    const RW: u64 = 2;
    const WRITABLE: u64 = (PageType::Writable as u64) << TI_TYPE_SHIFT;

    /// Frames 1..=3, each a count word and a type word, and one entry.
    struct World {
        count: [AtomicU64; 4],
        ty: [AtomicU64; 4],
        entry: AtomicU64,
    }

    fn pte(frame: u64, rw: bool) -> u64 {
        (frame << 12) | 1 | if rw { RW } else { 0 }
    }

    /// The concurrent path's reference work for one entry, as `shared` does it: take
    /// a general reference (and a writable one for RW), give them back on a lost race,
    /// release the old value's, logging a last reference instead of dropping it.
    struct Refs<'a> {
        w: &'a World,
        new: u64,
        deferred: Vec<u64>,
    }

    impl Refs<'_> {
        fn put(&mut self, frame: u64) {
            if !put_ref_not_last(&self.w.count[frame as usize]) {
                self.deferred.push(frame);
            }
        }
    }

    impl EntryRefs for Refs<'_> {
        fn plan(&mut self, _old: u64) -> Option<Plan> {
            Some(Plan {
                want: self.new,
                take: self.new & 1 != 0,
                release: true,
            })
        }

        fn take(&mut self, want: u64) -> bool {
            let f = (want >> 12) as usize;
            if !get_ref(&self.w.count[f]) {
                return false;
            }
            if want & RW != 0 && !get_writable(&self.w.ty[f]) {
                self.put(f as u64);
                return false;
            }
            true
        }

        fn untake(&mut self, want: u64) {
            let f = want >> 12;
            if want & RW != 0 {
                assert!(put_type_no_demote(&self.w.ty[f as usize]));
            }
            self.put(f);
        }

        fn release(&mut self, old: u64) {
            if old & 1 == 0 {
                return;
            }
            let f = old >> 12;
            if old & RW != 0 {
                assert!(put_type_no_demote(&self.w.ty[f as usize]));
            }
            self.put(f);
        }
    }

    /// The exclusive path's part, after the batch: `put_page` of each reference that
    /// was the last when logged. A mapper may have joined since (as in Xen, where
    /// `put_page_from_l1e` follows the entry's update): then it is not the last any
    /// more and the frame stays.
    fn finish(w: &World, deferred: &[u64]) {
        for &f in deferred {
            let c = &w.count[f as usize];
            let v = AtomicU64::load(c, Ordering::Acquire);
            assert!(v & CI_COUNT >= 1, "a logged reference is still held");
            c.store(v - 1, Ordering::Release);
        }
    }

    fn world(counts: [u64; 4], types: [u64; 4], entry: u64) -> Arc<World> {
        Arc::new(World {
            count: counts.map(AtomicU64::new),
            ty: types.map(AtomicU64::new),
            entry: AtomicU64::new(entry),
        })
    }

    fn replace(w: &World, new: u64) -> Vec<u64> {
        let mut refs = Refs {
            w,
            new,
            deferred: Vec::new(),
        };
        assert!(replace_entry(&w.entry, &mut refs).is_some());
        refs.deferred
    }

    /// Two vCPUs replace the same entry (mapping frame 1 RW) with frame 2 RW and frame
    /// 3 read-only: whichever order the swaps land in, frame 1 loses exactly its one
    /// reference, and each frame ends holding exactly what the final entry holds.
    #[test]
    fn racing_writers_of_one_entry_move_each_reference_once() {
        loom::model(|| {
            let w = world(
                [0, CI_ALLOCATED | 2, CI_ALLOCATED | 1, CI_ALLOCATED | 1],
                [0, WRITABLE | TI_VALIDATED | 1, WRITABLE | TI_VALIDATED, 0],
                pte(1, true),
            );
            let w2 = w.clone();
            let t = loom::thread::spawn(move || replace(&w2, pte(2, true)));
            let mine = replace(&w, pte(3, false));
            let theirs = t.join().unwrap();
            assert!(
                mine.is_empty() && theirs.is_empty(),
                "every frame is allocated"
            );
            let e = AtomicU64::load(&w.entry, Ordering::Acquire);
            let holds = |f: u64| u64::from(e >> 12 == f);
            for f in 1..=3u64 {
                let c = AtomicU64::load(&w.count[f as usize], Ordering::Acquire);
                assert_eq!(c & CI_COUNT, 1 + holds(f), "frame {f} count");
                let t = AtomicU64::load(&w.ty[f as usize], Ordering::Acquire);
                let rw = holds(f) * u64::from(e & RW != 0);
                assert_eq!(t & TI_COUNT, rw, "frame {f} writable count");
            }
        });
    }

    /// Frame 1 is held only by the entry (its allocation given back). One vCPU unmaps
    /// it while another maps it elsewhere: the count never reaches zero while a
    /// mapping holds it, the unmap's reference is dropped after (by the exclusive
    /// path) if it was the last, and the frame ends held by exactly the new mapping.
    #[test]
    fn a_last_reference_is_never_dropped_under_a_racing_mapper() {
        loom::model(|| {
            let w = world([0, 1, 0, 0], [0, 0, 0, 0], pte(1, false));
            let other = Arc::new(AtomicU64::new(0));
            let (w2, other2) = (w.clone(), other.clone());
            let t = loom::thread::spawn(move || {
                let mut refs = Refs {
                    w: &w2,
                    new: pte(1, false),
                    deferred: Vec::new(),
                };
                let mapped = replace_entry(&*other2, &mut refs).is_some();
                (mapped, refs.deferred)
            });
            let unmapped = replace(&w, 0);
            let (mapped, deferred) = t.join().unwrap();
            assert!(deferred.is_empty());
            finish(&w, &unmapped);
            let c = AtomicU64::load(&w.count[1], Ordering::Acquire) & CI_COUNT;
            let held = u64::from(AtomicU64::load(&other, Ordering::Acquire) != 0);
            assert_eq!(held, u64::from(mapped));
            assert_eq!(c, held, "exactly the surviving mapping holds frame 1");
        });
    }

    /// Two vCPUs map a frame of no type writable at once, then unmap it: the type
    /// starts once, is joined once, and ends writable at count zero.
    #[test]
    fn a_writable_type_starts_once_under_racing_mappers() {
        loom::model(|| {
            let w = world([0, CI_ALLOCATED | 1, 0, 0], [0; 4], 0);
            let w2 = w.clone();
            let t = loom::thread::spawn(move || {
                assert!(get_ref(&w2.count[1]) && get_writable(&w2.ty[1]));
            });
            assert!(get_ref(&w.count[1]) && get_writable(&w.ty[1]));
            t.join().unwrap();
            let t = AtomicU64::load(&w.ty[1], Ordering::Acquire);
            assert_eq!(t, WRITABLE | TI_VALIDATED | 2);
            assert_eq!(
                AtomicU64::load(&w.count[1], Ordering::Acquire),
                CI_ALLOCATED | 3
            );
            let w2 = w.clone();
            let t = loom::thread::spawn(move || {
                assert!(put_type_no_demote(&w2.ty[1]) && put_ref_not_last(&w2.count[1]));
            });
            assert!(put_type_no_demote(&w.ty[1]) && put_ref_not_last(&w.count[1]));
            t.join().unwrap();
            assert_eq!(
                AtomicU64::load(&w.ty[1], Ordering::Acquire),
                WRITABLE | TI_VALIDATED
            );
            assert_eq!(
                AtomicU64::load(&w.count[1], Ordering::Acquire),
                CI_ALLOCATED | 1
            );
        });
    }
}
