//! One machine served from several threads at once: [`SharedMachine`].
//!
//! Xen serves `mmu_update` from every vCPU of a domain in parallel: it takes no domain
//! lock, only the lock of the page-table page it writes, and moves the reference counts
//! of the frames an entry maps with compare-and-swap (`get_page`, `get_page_type`,
//! `put_page`, `put_page_type`). Everything rarer (pinning and unpinning, new roots,
//! type changes that validate a tree, rights, reservations) takes locks that serialise
//! it against the rest.
//!
//! pvmmu does the same with two modes. The common request, an `mmu_update` of an L1
//! entry of the caller's own validated table mapping the caller's own RAM, runs under a
//! shared (read) lock: the entry is replaced by compare-and-swap on the entry itself
//! (which also serves as Xen's page lock: a racing writer of the same entry sees the
//! swap fail, gives its references back and tries again), and the references move by
//! compare-and-swap on the frame's count and type words (see `frame::word`). Every
//! other request, and every step one word cannot express (freeing a frame whose last
//! reference goes, a type change that needs validation, an LDT to drop, I/O memory,
//! foreign frames), runs under the exclusive (write) lock through the ordinary
//! [`Machine`] code. A batch runs its concurrent prefix under the read lock and hands
//! the rest to the exclusive path, in order, so its result is that of one
//! [`Machine::mmu_update`] call.
//!
//! The stale-TLB bookkeeping of removed or downgraded entries (see
//! [`FlushRequest`](crate::FlushRequest)) is logged by the concurrent path and replayed
//! into the domain's lists whenever the exclusive lock is taken, so every flush, audit
//! or other exclusive operation sees it.

use std::sync::atomic::Ordering;
use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use pvmmu_abi::pte::{PAGE_PAT, PAGE_PCD, PAGE_PWT, PAGE_RW};
use pvmmu_abi::{Errno, MmuUpdate, MmuUpdateCmd};
use vm_memory::GuestMemory;

use crate::batch::{
    BatchOutcome, Caller, Entries, GuestEntries, SliceEntries, batch_args, continued, finish,
};
use crate::concurrent::Deferred;
use crate::entry::{Mfn, PTE_AD_MASK, Pte};
use crate::flush::{NoFlush, TlbFlush};
use crate::frame::word::{CI_COUNT, CI_SHARED, EntryRefs, Plan, Word, replace_entry, type_of};
use crate::frame::{Owner, PageType};
use crate::guest::GuestView;
use crate::machine::{Core, Machine, MachineError};
use crate::mmu_update::needs_full_path;
use crate::paging::Level;
use crate::validate::adjust;

/// The stale-TLB notes of one concurrent batch: the entries it revoked and the frames
/// whose stale mark it set (the marks themselves are set at once, atomically).
#[derive(Debug, Default)]
struct Notes {
    /// `(entry, frame)` per revoked entry, in order.
    revoked: Vec<(u64, Mfn)>,
    /// Frames whose stale mark this batch set.
    marked: Vec<Mfn>,
}

impl<F: TlbFlush> Core<F> {
    /// Replays what concurrent batches left behind: last references, then stale
    /// notes, in their order; and their counts.
    pub(crate) fn absorb_concurrent(&mut self) {
        let log = std::mem::take(
            self.concurrent
                .log
                .get_mut()
                .unwrap_or_else(PoisonError::into_inner),
        );
        let applied = std::mem::take(self.concurrent.applied.get_mut());
        self.stats.applied += applied;
        self.stats.concurrent += applied;
        for d in log {
            match d {
                Deferred::Put(mfn) => self.frames.put_page(mfn),
                Deferred::Stale { d, old, new, entry } => {
                    self.note_stale(d, old, new, Some(entry));
                }
            }
        }
    }
}

/// How far the concurrent prefix of a batch went.
struct Prefix {
    /// Whether the batch qualified at all (its owners decoded to the caller, no
    /// preemption budget); if not, all of it goes to the exclusive path.
    ran: bool,
    done: usize,
    /// Set when the batch ends here (EINTR), not in the exclusive path.
    stop: Option<Errno>,
    /// Whether it stopped because its budget of entries was used up (entries left).
    preempted: bool,
    /// Whether the batch must take the exclusive lock before it returns: it logged a
    /// last reference (the frame must be free when the caller resumes), or the log is
    /// long (it must not grow without bound while no exclusive operation runs).
    absorb: bool,
}

/// Length of the log of deferred work at which a concurrent batch absorbs it.
const LOG_ABSORB_AT: usize = crate::flush::NEWLY_STALE_MAX;

/// The cache attributes of an L1 entry.
const CACHE_ATTR_BITS: u64 = PAGE_PAT | PAGE_PCD | PAGE_PWT;

impl<F: TlbFlush> Core<F> {
    /// Drops a general reference taken or held by the concurrent path; the last one is
    /// logged for the exclusive path.
    fn release_ref(&self, mfn: Mfn, log: &mut Vec<Deferred>) {
        if !self.frames.put_ref_shared(mfn) {
            log.push(Deferred::Put(mfn));
        }
    }

    /// `get_page_from_l1e` for a present entry `nl` of domain `d` mapping `d`'s own RAM,
    /// where every step is one word's compare-and-swap. `false` (nothing held) sends
    /// the entry to the exclusive path, which gives Xen's full answer.
    fn take_l1e_shared(&self, nl: u64, d: Owner, log: &mut Vec<Deferred>) -> bool {
        let mfn = Pte(nl).mfn();
        let Some(ci) = self.frames.count_word(mfn) else {
            return false; // I/O memory
        };
        // Frames the hypervisor shares keep write-back caching (-EACCES there).
        if ci & CI_SHARED != 0 && nl & CACHE_ATTR_BITS != 0 {
            return false;
        }
        // `d`'s own RAM only (the caller is a real domain, never DOMID_IO).
        if !self.frames.get_ref_shared(mfn, d) {
            return false;
        }
        if nl & PAGE_RW != 0 && !self.frames.get_writable_shared(mfn) {
            self.release_ref(mfn, log);
            return false;
        }
        true
    }

    /// Gives back what `take_l1e_shared` took.
    fn untake_l1e_shared(&self, nl: u64, log: &mut Vec<Deferred>) {
        let mfn = Pte(nl).mfn();
        if nl & PAGE_RW != 0 {
            // Our own reference is held: never the last one of a table type.
            let dropped = self.frames.put_type_shared(mfn);
            debug_assert!(dropped);
        }
        self.release_ref(mfn, log);
    }

    /// Whether `put_page_from_l1e(old)` for a table of `d` needs nothing but word
    /// changes: `old` maps nothing, or `d`'s own RAM that is not a descriptor page in
    /// use (whose read-only mappings drop LDTs). I/O memory and foreign frames go to
    /// the exclusive path, whose stale-TLB bookkeeping for them is not per frame.
    fn releasable_shared(&self, old: u64, d: Owner) -> bool {
        let pte = Pte(old);
        if !pte.is_present() {
            return true;
        }
        let mfn = pte.mfn();
        let (Some(owner), Some(ci), Some(ti)) = (
            self.frames.owner(mfn),
            self.frames.count_word(mfn),
            self.frames.type_word(mfn),
        ) else {
            return false;
        };
        owner == d
            && ci & CI_COUNT > 0
            && (old & PAGE_RW != 0
                || !(type_of(ti) == PageType::SegDesc && ti & crate::frame::word::TI_COUNT > 0))
    }

    /// `put_page_from_l1e(old)` after `releasable_shared` said yes.
    fn release_l1e_shared(&self, old: u64, log: &mut Vec<Deferred>) {
        let pte = Pte(old);
        if !pte.is_present() {
            return;
        }
        let mfn = pte.mfn();
        if old & PAGE_RW != 0 {
            // A writable mapping holds a writable type reference: never a table's.
            let dropped = self.frames.put_type_shared(mfn);
            debug_assert!(dropped);
        }
        self.release_ref(mfn, log);
    }

    /// The concurrent prefix of `mmu_update(src)` by `caller` (see the module docs),
    /// stopping before entry `budget` (never before the first), as the exclusive path
    /// stops at its preemption points once `budget` entries are done.
    fn mmu_update_prefix<M: GuestMemory + ?Sized, E: Entries<MmuUpdate> + ?Sized>(
        &self,
        mem: &M,
        caller: Caller,
        src: &mut E,
        foreigndom: u32,
        budget: Option<u64>,
    ) -> Prefix {
        let d = caller.dom;
        let mut p = Prefix {
            ran: false,
            done: 0,
            stop: None,
            preempted: false,
            absorb: false,
        };
        if !matches!(self.mmu_update_owners(d, foreigndom), Ok((a, b)) if a == d && b == d) {
            return p;
        }
        p.ran = true;
        let mask = self.l1_disallow_mask(d);
        let mut log = Vec::new();
        let mut notes = Notes::default();
        let mut cache: Option<(Mfn, crate::table::PageOf<'_, M>)> = None;
        let limit = src.count() as usize;
        while p.done < limit {
            if p.done > 0 && self.interrupted() {
                p.stop = Some(Errno::EINTR);
                break;
            }
            if p.done > 0 && budget.is_some_and(|b| p.done as u64 >= b) {
                p.preempted = true;
                break;
            }
            // An entry that cannot be read goes to the exclusive path, which reads it
            // again and fails there.
            let Ok(req) = src.read(p.done as u32) else {
                break;
            };
            let preserve_ad = match req.cmd() {
                Ok(MmuUpdateCmd::NormalPtUpdate | MmuUpdateCmd::PtUpdateNoTranslate) => false,
                Ok(MmuUpdateCmd::PtUpdatePreserveAd) => true,
                _ => break,
            };
            let ptr = req.addr();
            let table = Mfn::containing(ptr);
            let idx = ((ptr & 0xfff) >> 3) as usize;
            let live_l1 = self.frames.get(table).is_some_and(|t| {
                t.owner == d
                    && t.count > 0
                    && t.ty == PageType::L1
                    && t.type_count > 0
                    && t.validated
            });
            if !live_l1 {
                break;
            }
            if cache.as_ref().map(|c| c.0) != Some(table) {
                match crate::table::table_page(mem, table) {
                    Ok(page) => cache = Some((table, page)),
                    Err(_) => break,
                }
            }
            let Some((_, page)) = cache.as_ref() else {
                break;
            };
            let new = req.val;
            if new & 1 != 0 && new & mask != 0 {
                break; // the exclusive path refuses it
            }
            let nl = if new & 1 != 0 {
                adjust(Level::L1, new)
            } else {
                new
            };
            let mut refs = L1Refs {
                core: self,
                d,
                nl,
                preserve_ad,
                log: &mut log,
                last_put: false,
            };
            let slot = EntrySlot {
                entry: &page.entries()[idx],
                spurious: &self.concurrent.spurious,
            };
            let replaced = replace_entry(&slot, &mut refs);
            let last_put = refs.last_put;
            let Some((old, stored)) = replaced else {
                break;
            };
            page.mark_dirty(idx, 1);
            let entry = table.addr() + idx as u64 * 8;
            // A batch read from guest memory reads its later entries through the
            // tables as they are now.
            src.entry_written(entry);
            if crate::flush::stale::revokes(old, stored) {
                if last_put {
                    // After the frame is freed, as the exclusive path notes it.
                    log.push(Deferred::Stale {
                        d,
                        old,
                        new: stored,
                        entry,
                    });
                } else {
                    let mfn = Pte(old).mfn();
                    notes.revoked.push((entry, mfn));
                    if self.frames.mark_stale_shared(mfn) {
                        notes.marked.push(mfn);
                    }
                }
            }
            p.done += 1;
        }
        self.concurrent
            .applied
            .fetch_add(p.done as u64, Ordering::Relaxed);
        if !notes.revoked.is_empty()
            && let Some(dom) = self.domains.get(&d)
        {
            let mut tlb = dom.tlb.lock();
            for (entry, mfn) in notes.revoked {
                tlb.note_revoked_entry(entry, Some(mfn));
            }
            tlb.stale.extend(notes.marked);
        }
        if !log.is_empty() {
            let mut pending = self
                .concurrent
                .log
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            p.absorb |= log.iter().any(|e| matches!(e, Deferred::Put(_)))
                || pending.len() + log.len() >= LOG_ABSORB_AT;
            pending.append(&mut log);
        }
        p
    }
}

/// A page-table entry as the concurrent path swaps it: a compare-and-swap that may fail
/// spuriously, as `compare_exchange_weak` may, and does so on demand for tests (see
/// [`SharedMachine::fail_entry_swaps_for_test`]).
struct EntrySlot<'a> {
    entry: &'a std::sync::atomic::AtomicU64,
    spurious: &'a std::sync::atomic::AtomicU32,
}

impl Word for EntrySlot<'_> {
    #[inline]
    fn load(&self) -> u64 {
        Word::load(self.entry)
    }

    #[inline]
    fn cas(&self, current: u64, new: u64) -> Result<u64, u64> {
        if self.spurious.load(Ordering::Relaxed) > 0
            && self
                .spurious
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_ok()
        {
            return Err(current);
        }
        self.entry.cas(current, new)
    }
}

/// The reference work of one concurrent L1 entry replacement by domain `d` with `nl`.
struct L1Refs<'a, F> {
    core: &'a Core<F>,
    d: Owner,
    nl: u64,
    preserve_ad: bool,
    log: &'a mut Vec<Deferred>,
    /// Whether releasing the old value left its frame's last reference in the log.
    last_put: bool,
}

impl<F: TlbFlush> EntryRefs for L1Refs<'_, F> {
    fn plan(&mut self, old: u64) -> Option<Plan> {
        let nl = self.nl;
        if !self.core.releasable_shared(old, self.d) {
            return None;
        }
        // Only the flag whitelist changing on a present entry moves no reference (the
        // present bit is not in the whitelist, so a not-present `old` always does).
        let take = nl & 1 != 0 && needs_full_path(old, nl);
        let want = if self.preserve_ad {
            nl | (old & PTE_AD_MASK)
        } else {
            nl
        };
        Some(Plan {
            want,
            take,
            release: take || nl & 1 == 0,
        })
    }

    fn take(&mut self, want: u64) -> bool {
        self.core.take_l1e_shared(want, self.d, self.log)
    }

    fn untake(&mut self, want: u64) {
        self.core.untake_l1e_shared(want, self.log);
    }

    fn release(&mut self, old: u64) {
        let before = self.log.len();
        self.core.release_l1e_shared(old, self.log);
        self.last_put = self.log.len() > before;
    }
}

/// How far [`SharedMachine::hypercall_mmu_update`] served a guest's `mmu_update`
/// without the exclusive lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SharedCall {
    /// All of it: the value for RAX (`*pdone` written where Xen writes it).
    Done(i64),
    /// It stopped at a preemption point with entries left (the budget of
    /// [`Machine::set_preempt_budget`] used up): the embedder resumes the guest at its
    /// hypercall instruction with these argument registers (RDI, RSI, RDX, R10, R8),
    /// as for [`HypercallResult::continuation`](crate::HypercallResult::continuation);
    /// `*pdone` holds what was done.
    Preempted([u64; 5]),
    /// The rest needs the whole machine: the embedder serves `HYPERVISOR_mmu_update`
    /// with these argument registers through [`Machine::hypercall`] under
    /// [`SharedMachine::lock`], now. When part of the batch ran they are Xen's
    /// continuation of it (the rest of the array, the count with
    /// `MMU_UPDATE_PREEMPTED`, `*pdone` holding what was done), so the two parts give
    /// one call's result; otherwise they are the call's own.
    Exclusive([u64; 5]),
}

/// A [`Machine`] that several threads (an embedder's vCPU threads) use at once.
///
/// [`SharedMachine::mmu_update`] serves batches of L1 updates concurrently, the way Xen
/// does (see the module docs); everything else goes through [`SharedMachine::lock`],
/// which gives the whole machine to one thread at a time.
///
/// ```
/// use pvmmu::{Caller, DomainConfig, Machine, MachineConfig, Mfn, SharedMachine};
/// use pvmmu_abi::mmu::MMUEXT_PIN_L1_TABLE;
/// use pvmmu_abi::{MmuUpdate, MmuextOp, DOMID_SELF};
/// use vm_memory::{GuestAddress, GuestMemoryMmap};
///
/// let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
/// let mut m = Machine::new(mem, MachineConfig::default()).unwrap();
/// m.create_domain(DomainConfig::new(1).vcpus(2)).unwrap();
/// m.assign_frames(1, (0x10..0x100).map(Mfn)).unwrap();
/// let pin = |t: u64| MmuextOp::new(MMUEXT_PIN_L1_TABLE, t, 0);
/// m.mmuext_op(Caller::new(1, 0), &[pin(0x10), pin(0x11)], DOMID_SELF.into())?;
///
/// // Two vCPUs fill one L1 table each, at the same time, mapping the same frame.
/// let shared = SharedMachine::new(m);
/// std::thread::scope(|s| {
///     for vcpu in 0..2u32 {
///         let shared = &shared;
///         s.spawn(move || {
///             let table = 0x10_000 + u64::from(vcpu) * 0x1000;
///             let reqs: Vec<MmuUpdate> = (0..512)
///                 .map(|i| MmuUpdate { ptr: table + i * 8, val: 0x20_003 })
///                 .collect();
///             let o = shared.mmu_update(Caller::new(1, vcpu), &reqs, DOMID_SELF.into());
///             assert_eq!(o.map(|o| (o.done, o.result)), Ok((512, Ok(()))));
///         });
///     }
/// });
/// let m = shared.lock();
/// let target = m.frames().get(Mfn(0x20)).unwrap();
/// assert_eq!((target.count, target.type_count), (1 + 1024, 1024));
/// assert!(m.audit().is_ok());
/// # Ok::<(), pvmmu::MachineError>(())
/// ```
#[derive(Debug)]
pub struct SharedMachine<M, F = NoFlush> {
    inner: RwLock<Machine<M, F>>,
}

/// The whole machine, held by one thread (see [`SharedMachine::lock`]).
pub type MachineGuard<'a, M, F> = RwLockWriteGuard<'a, Machine<M, F>>;

/// The machine read while concurrent batches may run (see [`SharedMachine::read`]).
pub type MachineReadGuard<'a, M, F> = RwLockReadGuard<'a, Machine<M, F>>;

impl<M: GuestMemory, F: TlbFlush> SharedMachine<M, F> {
    /// Shares `machine` between threads.
    pub fn new(machine: Machine<M, F>) -> Self {
        SharedMachine {
            inner: RwLock::new(machine),
        }
    }

    /// The machine for one thread's exclusive use, with the bookkeeping of every
    /// concurrent batch so far applied. A thread that panicked while holding it leaves
    /// the machine as it was at the panic (the lock is not poisoned for the others).
    pub fn lock(&self) -> MachineGuard<'_, M, F> {
        let mut m = self.inner.write().unwrap_or_else(PoisonError::into_inner);
        m.core.absorb_concurrent();
        m
    }

    /// The machine to read while other threads may run concurrent batches (which hold
    /// the same shared lock): guest memory, a domain's or vCPU's state, a frame's
    /// snapshot. Reference counts of frames that concurrent batches map or unmap may be
    /// part-way through a change, and their stale-TLB notes not yet absorbed: audit
    /// and compare through [`SharedMachine::lock`].
    ///
    /// ```
    /// use pvmmu::{DomainConfig, Machine, MachineConfig, SharedMachine};
    /// use vm_memory::{GuestAddress, GuestMemoryMmap};
    ///
    /// let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
    /// let mut m = Machine::new(mem, MachineConfig::default()).unwrap();
    /// m.create_domain(DomainConfig::new(1).vcpus(2)).unwrap();
    /// let shared = SharedMachine::new(m);
    /// assert_eq!(shared.read().domain(1).map(|d| d.vcpus().len()), Some(2));
    /// ```
    pub fn read(&self) -> MachineReadGuard<'_, M, F> {
        self.inner.read().unwrap_or_else(PoisonError::into_inner)
    }

    #[doc(hidden)]
    /// Test hook: the next `n` entry swaps of the concurrent path fail as a weak
    /// compare-and-swap may (as if another vCPU had changed the entry), so that the
    /// give-back-and-retry path runs deterministically.
    pub fn fail_entry_swaps_for_test(&self, n: u32) {
        self.inner
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .core
            .concurrent
            .spurious
            .store(n, Ordering::Relaxed);
    }

    /// The machine back, with every concurrent batch's bookkeeping applied.
    pub fn into_inner(self) -> Machine<M, F> {
        let mut m = self
            .inner
            .into_inner()
            .unwrap_or_else(PoisonError::into_inner);
        m.core.absorb_concurrent();
        m
    }

    /// Hypercall `mmu_update` with argument registers `args` (RDI, RSI, RDX, R10, R8)
    /// from one of several threads, the request array read from guest memory through
    /// `caller`'s kernel root as [`Machine::hypercall`] reads it: the concurrent prefix
    /// of the batch (see the module docs) under the shared lock, and what is left
    /// handed back as a [`SharedCall`]. A call recording its reads
    /// ([`Machine::record_reads`]) goes to the exclusive path whole.
    ///
    /// ```
    /// use pvmmu::shared::SharedCall;
    /// use pvmmu::{Caller, DomainConfig, Machine, MachineConfig, Mfn, SharedMachine};
    /// use pvmmu_abi::DOMID_SELF;
    /// use vm_memory::{GuestAddress, GuestMemoryMmap};
    ///
    /// let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
    /// let mut m = Machine::new(mem, MachineConfig::default()).unwrap();
    /// m.create_domain(DomainConfig::new(1)).unwrap();
    /// let shared = SharedMachine::new(m);
    /// // A vCPU without a kernel root maps no request array: nothing runs
    /// // concurrently, and the exclusive path gives Xen's answer (-EFAULT).
    /// let args = [0x1000, 1, 0, DOMID_SELF.into(), 0];
    /// let call = shared.hypercall_mmu_update(Caller::new(1, 0), args)?;
    /// assert_eq!(call, SharedCall::Exclusive(args));
    /// # Ok::<(), pvmmu::MachineError>(())
    /// ```
    pub fn hypercall_mmu_update(
        &self,
        caller: Caller,
        args: [u64; 5],
    ) -> Result<SharedCall, MachineError> {
        let [reqs, count, pdone, foreigndom, _] = args;
        let (call, absorb) = {
            let m = self.inner.read().unwrap_or_else(PoisonError::into_inner);
            m.vcpu_check(caller.dom, caller.vcpu)?;
            if m.reads.is_some() {
                return Ok(SharedCall::Exclusive(args));
            }
            let root = m.kernel_root(caller);
            let Machine { mem, core, .. } = &*m;
            let mut view = GuestView::new(mem, root);
            let Ok((n, carried)) = batch_args(&mut view, reqs, count, pdone, MmuUpdate::SIZE)
            else {
                return Ok(SharedCall::Exclusive(args));
            };
            let mut src = GuestEntries {
                view: &mut view,
                va: reqs,
                count: n,
                log: None,
                page: Default::default(),
            };
            let budget = core.preempt.budget;
            let p = core.mmu_update_prefix(mem, caller, &mut src, foreigndom as u32, budget);
            // `done` fits: it is at most `n`.
            let done = p.done as u32;
            let ended = |result| {
                Ok(BatchOutcome {
                    done,
                    result,
                    writes_pdone: true,
                    preempted: false,
                })
            };
            let call = if let Some(e) = p.stop {
                SharedCall::Done(finish(&mut view, ended(Err(e)), carried, pdone))
            } else if p.ran && done == n {
                SharedCall::Done(finish(&mut view, ended(Ok(())), carried, pdone))
            } else if done == 0 {
                SharedCall::Exclusive(args)
            } else {
                // Stopped part-way: what was done goes to `*pdone`, as at Xen's
                // preemption points (a fault writing it is not reported, as there).
                if pdone != 0 {
                    let _ = view.write_u32(pdone, carried.wrapping_add(done));
                }
                let rest = continued(reqs, MmuUpdate::SIZE, n, done, pdone, foreigndom);
                // With most of the budget used, the guest re-issues the rest, so that
                // no vCPU is held for more than about one budget.
                if p.preempted || budget.is_some_and(|b| u64::from(done) >= b / 2) {
                    SharedCall::Preempted(rest)
                } else {
                    SharedCall::Exclusive(rest)
                }
            };
            (call, p.absorb)
        };
        if absorb {
            drop(self.lock());
        }
        Ok(call)
    }

    /// [`Machine::mmu_update`] from one of several threads: the same outcome, with L1
    /// updates of the caller's own tables served concurrently with other threads'.
    pub fn mmu_update(
        &self,
        caller: Caller,
        reqs: &[MmuUpdate],
        foreigndom: u32,
    ) -> Result<BatchOutcome, MachineError> {
        let prefix = {
            let m = self.inner.read().unwrap_or_else(PoisonError::into_inner);
            m.vcpu_check(caller.dom, caller.vcpu)?;
            let mut src = SliceEntries(reqs);
            m.core
                .mmu_update_prefix(&m.mem, caller, &mut src, foreigndom, None)
        };
        // `done` fits: the prefix stops at u32::MAX entries.
        let done = prefix.done as u32;
        if let Some(e) = prefix.stop {
            if prefix.absorb {
                drop(self.lock());
            }
            return Ok(BatchOutcome {
                done,
                result: Err(e),
                writes_pdone: true,
                preempted: false,
            });
        }
        if prefix.ran && prefix.done == reqs.len() {
            if prefix.absorb {
                drop(self.lock());
            }
            return Ok(BatchOutcome {
                done,
                result: Ok(()),
                writes_pdone: true,
                preempted: false,
            });
        }
        let mut m = self.lock();
        let rest = m.mmu_update(caller, &reqs[prefix.done..], foreigndom)?;
        Ok(if prefix.done == 0 {
            rest
        } else {
            BatchOutcome {
                done: done.saturating_add(rest.done),
                ..rest
            }
        })
    }
}
