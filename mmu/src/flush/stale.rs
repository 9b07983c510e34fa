//! The stale-TLB bookkeeping: which frames each domain's TLBs may still translate with
//! rights since removed, whether a non-leaf entry changed since the last full flush,
//! and the hand-over of each flush to the embedder with that information.

use pvmmu_abi::pte::{PAGE_RW, PAGE_USER};

use super::tlb::NEWLY_STALE_MAX;
use super::{FlushReason, FlushRequest, FlushScope, TlbFlush, VcpuSet};
use crate::entry::{Mfn, Pte};
use crate::frame::Owner;
use crate::machine::Core;

/// Whether replacing entry `old` by `new` revokes something a TLB or paging-structure
/// cache may hold from `old`: `old` was present and `new` is not, maps another frame, or
/// lost write or user access or gained NX. (A non-present entry is never cached, so
/// making one present revokes nothing.)
pub(crate) fn revokes(old: u64, new: u64) -> bool {
    let (o, n) = (Pte(old), Pte(new));
    if !o.is_present() {
        return false;
    }
    let lost = |bit: u64| o.raw() & bit != 0 && n.raw() & bit == 0;
    let nx = crate::entry::PteFlags::NX.bits();
    !n.is_present()
        || n.mfn() != o.mfn()
        || lost(PAGE_RW)
        || lost(PAGE_USER)
        || (n.raw() & nx != 0 && o.raw() & nx == 0)
}

/// The stale-TLB bookkeeping behind every request: which frames each domain's TLBs may
/// still translate with rights since removed, whether a non-leaf entry changed, and the
/// hand-over to the embedder.
impl<F: TlbFlush> Core<F> {
    /// Records that the TLBs of domain `d` (whose tables held `old`, in the entry at
    /// machine address `entry`) may still hold a translation that `new` removed or
    /// downgraded. `entry` is `None` for an entry of a table being de-validated: no
    /// walk can reach it any more (its type count reached 0, so no entry and no root
    /// holds it, and its unhooking was recorded where it happened), so host-side
    /// invalidation has nothing to do for it; only the guest-TLB view (`stale`, for
    /// the flush before a type change) records the frame.
    pub(crate) fn note_stale(&mut self, d: Owner, old: u64, new: u64, entry: Option<u64>) {
        if !revokes(old, new) {
            return;
        }
        let mfn = Pte(old).mfn();
        let owner = self.frames.owner(mfn);
        if let (Some(at), Some(dom)) = (entry, self.domains.get_mut(&d)) {
            dom.tlb
                .get_mut()
                .note_revoked_entry(at, owner.is_some().then_some(mfn));
        }
        let Some(owner) = owner else {
            return; // I/O memory: not RAM
        };
        if owner == d {
            if self.frames.mark_stale(mfn)
                && let Some(dom) = self.domains.get_mut(&d)
            {
                dom.tlb.get_mut().stale.push(mfn);
            }
        } else if self.stale_foreign.insert((d, mfn.0))
            && let Some(mut p) = self.frames.get_mut(mfn)
        {
            p.stale_foreign = p.stale_foreign.saturating_add(1);
        }
    }

    /// Records that a present non-leaf entry of domain `d`, at machine address `entry`,
    /// was removed, repointed or lost rights.
    pub(crate) fn note_non_leaf_revoked(&mut self, d: Owner, entry: u64) {
        if let Some(dom) = self.domains.get_mut(&d) {
            let dom = dom.tlb.get_mut();
            dom.non_leaf_revoked = true;
            if dom.revoked_entries.len() >= NEWLY_STALE_MAX {
                dom.revoked_entries_unknown = true;
                dom.revoked_entries = Vec::new();
            } else if !dom.revoked_entries_unknown {
                dom.revoked_entries.push(entry);
            }
        }
    }

    /// Hands a flush of domain `d` to the embedder, with the frames `d`'s TLBs may hold
    /// stale and whether a non-leaf entry changed. Only a flush of every vCPU of `d`
    /// including global entries forgets them.
    pub(crate) fn flush(
        &mut self,
        d: Owner,
        vcpus: VcpuSet,
        scope: FlushScope,
        reason: FlushReason,
    ) {
        let all = self.all_vcpus(d);
        let full = scope == FlushScope::All && vcpus.0 & all.0 == all.0;
        let mut stale: Vec<Mfn> = self
            .domains
            .get(&d)
            .map(|x| x.tlb.lock().stale.clone())
            .unwrap_or_default();
        stale.extend(
            self.stale_foreign
                .iter()
                .filter(|(x, _)| *x == d)
                .map(|(_, m)| Mfn(*m)),
        );
        let non_leaf = self.domains.get(&d).is_some_and(|x| x.non_leaf_pending);
        let (mut newly_stale, non_leaf_revoked, mut entries, unknown) =
            match self.domains.get_mut(&d) {
                Some(dom) => {
                    let dom = dom.tlb.get_mut();
                    (
                        std::mem::take(&mut dom.newly_stale),
                        std::mem::take(&mut dom.non_leaf_revoked),
                        std::mem::take(&mut dom.revoked_entries),
                        std::mem::take(&mut dom.revoked_entries_unknown),
                    )
                }
                None => (Vec::new(), false, Vec::new(), false),
            };
        newly_stale.sort_unstable();
        newly_stale.dedup();
        entries.sort_unstable();
        entries.dedup();
        if full {
            if let Some(dom) = self.domains.get_mut(&d) {
                dom.non_leaf_pending = false;
                for m in std::mem::take(&mut dom.tlb.get_mut().stale) {
                    if let Some(mut p) = self.frames.get_mut(m) {
                        p.stale = false;
                    }
                }
            }
            let frames = &mut self.frames;
            self.stale_foreign.retain(|(x, m)| {
                if *x != d {
                    return true;
                }
                if let Some(mut p) = frames.get_mut(Mfn(*m)) {
                    p.stale_foreign = p.stale_foreign.saturating_sub(1);
                }
                false
            });
        }
        let req = FlushRequest {
            domain: d,
            vcpus,
            scope,
            stale,
            non_leaf,
            newly_stale,
            non_leaf_revoked,
            revoked_entries: (!unknown).then_some(entries),
            reason,
        };
        self.stats.flushes += 1;
        self.flusher.flush(&req);
    }

    /// Before `mfn` becomes a page table: a full flush of every domain whose TLBs may
    /// still translate it (with rights since removed, writable among them).
    pub(crate) fn flush_before_type_change(&mut self, mfn: Mfn) {
        let Some(p) = self.frames.get(mfn) else {
            return;
        };
        if !p.stale && p.stale_foreign == 0 {
            return;
        }
        let doms: Vec<Owner> = self
            .domains
            .keys()
            .copied()
            .filter(|x| (*x == p.owner && p.stale) || self.stale_foreign.contains(&(*x, mfn.0)))
            .collect();
        for x in doms {
            let vcpus = self.all_vcpus(x);
            self.flush(x, vcpus, FlushScope::All, FlushReason::TypeChange);
        }
    }

    pub(crate) fn all_vcpus(&self, d: Owner) -> VcpuSet {
        self.domains
            .get(&d)
            .map_or(VcpuSet(0), |dom| VcpuSet::first(dom.vcpus.len() as u32))
    }
}

#[cfg(test)]
mod tests {
    use super::revokes;

    const P: u64 = 1;
    const RW: u64 = 2;
    const US: u64 = 4;
    const A: u64 = 0x20;
    const NX: u64 = 1 << 63;
    const F1: u64 = 0x1000;
    const F2: u64 = 0x2000;

    #[test]
    fn revocation_is_exactly_a_lost_right_or_a_different_frame() {
        // Nothing cached from a non-present entry.
        assert!(!revokes(0, F1 | P | RW | US));
        assert!(!revokes(F1 | RW, F2 | P));
        // Removed, or another frame.
        assert!(revokes(F1 | P, 0));
        assert!(revokes(F1 | P, F2 | P));
        // Rights lost: write, user; NX gained.
        assert!(revokes(F1 | P | RW, F1 | P));
        assert!(revokes(F1 | P | US, F1 | P));
        assert!(revokes(F1 | P, F1 | P | NX));
        // Nothing lost: the same rights, or more, or other bits.
        assert!(!revokes(F1 | P, F1 | P));
        assert!(!revokes(F1 | P, F1 | P | A));
        assert!(!revokes(F1 | P | RW, F1 | P | RW | A));
        assert!(!revokes(F1 | P, F1 | P | RW | US));
        assert!(!revokes(F1 | P | US, F1 | P | US | RW));
        assert!(!revokes(F1 | P | NX, F1 | P));
        assert!(!revokes(F1 | P | NX, F1 | P | NX | A));
        // Read-only stays read-only, user-less stays user-less: nothing lost.
        assert!(!revokes(F1 | P | A, F1 | P));
    }
}
