//! Batch plumbing shared by the batched hypercalls: the caller, where a batch's entries
//! come from (a Rust slice, or guest virtual memory), the decoding of a batch's
//! arguments (`count` with Xen's continuation flag, `*pdone`), how a batch ends (an
//! outcome, or a refusal before the first entry) and owner resolution (`foreigndom`).

use pvmmu_abi::Errno;
use pvmmu_abi::domid::{DOMID_IO, DOMID_SELF, DOMID_XEN};
use pvmmu_abi::mmu::split_preempted_count;
use vm_memory::GuestMemory;

use crate::domain::Vcpu;
use crate::entry::Mfn;
use crate::frame::Owner;
use crate::guest::{GuestView, guest_range_ok};
use crate::machine::Core;
use crate::paging::PAGE_SIZE;

/// Who issues a hypercall: a domain and one of its vCPUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Caller {
    /// Domain id.
    pub dom: u16,
    /// vCPU number.
    pub vcpu: u32,
}

impl Caller {
    /// `vcpu` of domain `dom`.
    pub const fn new(dom: u16, vcpu: u32) -> Caller {
        Caller { dom, vcpu }
    }
}

/// The result of a batched hypercall.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchOutcome {
    /// Entries that completed in this call (on failure: the failing entry's index).
    pub done: u32,
    /// `Ok` or the failing entry's errno.
    pub result: Result<(), Errno>,
    /// Whether Xen writes `*pdone` for this outcome: it does when the batch ran (to
    /// the end or to a failing entry) and for the refusals that leave through the
    /// batch's common exit, not for those it returns at once (an embedder reading the
    /// guest's arguments itself writes `*pdone`, with the count carried over from a
    /// continuation, exactly when this is set).
    pub writes_pdone: bool,
    /// Whether the call stopped at a preemption point with entries left (`done` of them
    /// done, `result` `Ok`): the embedder re-issues it for the rest (see
    /// [`Machine::set_preempt_budget`](crate::Machine::set_preempt_budget)).
    pub preempted: bool,
}

impl BatchOutcome {
    /// The hypercall's return value: 0 or `-errno`.
    pub fn rc(&self) -> i64 {
        match self.result {
            Ok(()) => 0,
            Err(e) => e.neg(),
        }
    }
}

/// A batched hypercall refused before its first entry. Xen returns some of these
/// before it writes `*pdone` and some after; the difference is visible to the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Xen returns at once: `*pdone` is not written.
    Early(Errno),
    /// Xen leaves through the batch's common exit: `*pdone` is written (with the
    /// count carried over from a continuation).
    AtEntry(Errno),
}

impl Refusal {
    /// The errno.
    pub(crate) fn errno(self) -> Errno {
        match self {
            Refusal::Early(e) | Refusal::AtEntry(e) => e,
        }
    }

    /// As an outcome with nothing done.
    pub(crate) fn outcome(self) -> BatchOutcome {
        BatchOutcome {
            done: 0,
            result: Err(self.errno()),
            writes_pdone: matches!(self, Refusal::AtEntry(_)),
            preempted: false,
        }
    }
}

/// A source of batch entries.
pub(crate) trait Entries<T> {
    fn count(&self) -> u32;
    fn read(&mut self, i: u32) -> Result<T, Errno>;
    /// The page-table entry at machine address `addr` was written: cached translations
    /// through it (and bytes read from its frame) are stale.
    fn entry_written(&mut self, _addr: u64) {}
    /// The vCPU's kernel root changed.
    fn root_changed(&mut self, _root: Option<Mfn>) {}
}

pub(crate) struct SliceEntries<'a, T>(pub &'a [T]);

impl<T: Copy> Entries<T> for SliceEntries<'_, T> {
    fn count(&self) -> u32 {
        u32::try_from(self.0.len()).unwrap_or(u32::MAX)
    }
    fn read(&mut self, i: u32) -> Result<T, Errno> {
        self.0.get(i as usize).copied().ok_or(Errno::EFAULT)
    }
}

/// Plain-data ABI structures read from guest memory, with their size from the ABI.
pub(crate) trait FromGuest: Sized {
    const SIZE: usize;
    fn decode(bytes: &[u8]) -> Option<Self>;
}

macro_rules! from_guest {
    ($($t:ty),*) => {$(
        impl FromGuest for $t {
            const SIZE: usize = <$t>::SIZE;
            #[inline]
            fn decode(b: &[u8]) -> Option<Self> {
                Some(Self::from_bytes(b.try_into().ok()?))
            }
        }
    )*};
}

from_guest!(
    pvmmu_abi::MmuUpdate,
    pvmmu_abi::MmuextOp,
    pvmmu_abi::MulticallEntry
);

/// The largest [`FromGuest`] entry.
const MAX_ENTRY: usize = pvmmu_abi::MulticallEntry::SIZE;

/// Entries read from guest virtual memory, `T::SIZE` bytes each from `va`.
pub(crate) struct GuestEntries<'v, 'm, 'l, M: ?Sized> {
    pub view: &'v mut GuestView<'m, M>,
    pub va: u64,
    pub count: u32,
    /// Where the bytes of every entry read are appended, when the embedder records
    /// them (traces).
    pub log: Option<&'l mut Vec<u8>>,
    /// The array's bytes from the current entry to the end of its page.
    pub page: PageBuf,
}

/// The bytes of a batch array read a page at a time (one translation and one copy per
/// page of requests), with the four entries that map them and the frame they came
/// from: a write to one of those entries (a request remapping the array itself), or
/// into that frame (an array kept in a page table, rewritten by its own requests),
/// drops them, so later entries are read as they are then, as Xen reads each entry
/// when it comes to it. A write to any other entry of the same tables keeps them.
#[derive(Debug, Default)]
pub(crate) struct PageBuf {
    va: u64,
    bytes: Vec<u8>,
    entries: [u64; 4],
    frame: Mfn,
}

impl PageBuf {
    #[inline]
    fn get(&self, va: u64, len: usize) -> Option<&[u8]> {
        let off = usize::try_from(va.checked_sub(self.va)?).ok()?;
        self.bytes.get(off..off.checked_add(len)?)
    }
}

impl<M: GuestMemory + ?Sized> GuestEntries<'_, '_, '_, M> {
    /// The entry at `va` when it is not in the page already copied: the rest of the
    /// array on its page is copied (one translation), or an entry across a page
    /// boundary is read as it lies.
    #[cold]
    #[inline(never)]
    fn read_uncached<T: FromGuest>(&mut self, va: u64) -> Result<T, Errno> {
        let mut buf = [0u8; MAX_ENTRY];
        let buf = buf.get_mut(..T::SIZE).ok_or(Errno::EFAULT)?;
        let page_end = (va | (PAGE_SIZE - 1)).wrapping_add(1);
        let array_end = self
            .va
            .saturating_add(u64::from(self.count) * T::SIZE as u64);
        let n = page_end.min(array_end).wrapping_sub(va);
        if (T::SIZE as u64) <= n && n <= PAGE_SIZE {
            self.page.bytes.resize(n as usize, 0);
            (self.page.entries, self.page.frame) =
                self.view.read_in_page(va, &mut self.page.bytes)?;
            self.page.va = va;
            buf.copy_from_slice(&self.page.bytes[..T::SIZE]);
        } else {
            self.view.read(va, buf)?;
        }
        if let Some(log) = self.log.as_deref_mut() {
            log.extend_from_slice(buf);
        }
        T::decode(buf).ok_or(Errno::EFAULT)
    }
}

impl<T: FromGuest, M: GuestMemory + ?Sized> Entries<T> for GuestEntries<'_, '_, '_, M> {
    fn count(&self) -> u32 {
        self.count
    }
    #[inline]
    fn read(&mut self, i: u32) -> Result<T, Errno> {
        let va = self
            .va
            .checked_add(u64::from(i) * T::SIZE as u64)
            .ok_or(Errno::EFAULT)?;
        // The common case: the entry lies in the page already copied.
        if let Some(b) = self.page.get(va, T::SIZE) {
            if let Some(log) = self.log.as_deref_mut() {
                log.extend_from_slice(b);
            }
            return T::decode(b).ok_or(Errno::EFAULT);
        }
        self.read_uncached(va)
    }
    #[inline]
    fn entry_written(&mut self, addr: u64) {
        let addr = addr & !7;
        if self.page.entries.contains(&addr) || Mfn::containing(addr) == self.page.frame {
            self.page.bytes.clear();
        }
        self.view.entry_written(addr);
    }
    fn root_changed(&mut self, root: Option<Mfn>) {
        self.page.bytes.clear();
        self.view.set_root(root);
    }
}

impl<F> Core<F> {
    /// The state of `caller`'s vCPU, if its domain and vCPU exist.
    pub(crate) fn vcpu(&self, caller: Caller) -> Option<&Vcpu> {
        self.domains
            .get(&caller.dom)?
            .vcpus
            .get(caller.vcpu as usize)
    }

    /// The state of `caller`'s vCPU, mutably, if its domain and vCPU exist.
    pub(crate) fn vcpu_mut(&mut self, caller: Caller) -> Option<&mut Vcpu> {
        self.domains
            .get_mut(&caller.dom)?
            .vcpus
            .get_mut(caller.vcpu as usize)
    }

    /// Xen's `get_pg_owner`: resolves an FD argument for `caller`.
    pub(crate) fn pg_owner(&self, caller: u16, fd: u16) -> Result<Owner, Errno> {
        if fd == DOMID_SELF {
            return Ok(caller);
        }
        if fd == caller {
            return Err(Errno::ESRCH); // own numeric id is refused
        }
        match fd {
            DOMID_IO | DOMID_XEN => Ok(fd),
            _ if self.domains.contains_key(&fd) => Ok(fd),
            _ => Err(Errno::ESRCH),
        }
    }

    /// Whether `caller` may use `target` as FD/PFD (the dummy XSM's `XSM_TARGET`: itself
    /// or a domain it controls). Only `mmu_update` exempts DOMID_IO as FD (Xen's
    /// `xsm_mmu_update`); `mmuext_op` and `update_va_mapping_otherdomain` do not.
    pub(crate) fn may_use(&self, caller: u16, target: Owner) -> bool {
        target == caller
            || self.domains.get(&caller).is_some_and(|d| {
                d.may_control(target) && (target != DOMID_XEN || d.config().privileged)
            })
    }
}

/// Decodes the `count` of a batched hypercall from the guest (continuation flag, `done`
/// carried over in `*pdone`) and checks that the array of `entry_size`-byte entries lies
/// in guest space: `(count, carried)`, or the RAX Xen returns up front.
pub(crate) fn batch_args<M: GuestMemory + ?Sized>(
    view: &mut GuestView<'_, M>,
    array: u64,
    count: u64,
    pdone: u64,
    entry_size: usize,
) -> Result<(u32, u32), i64> {
    let (count, carried) = continuation(view, count as u32, pdone);
    if !guest_range_ok(array, u64::from(count) * entry_size as u64) {
        return Err(Errno::EFAULT.neg());
    }
    Ok((count, carried))
}

/// Handles Xen's continuation flag in `count`: returns the real count and the `done`
/// carried over from `*pdone`.
fn continuation<M: GuestMemory + ?Sized>(
    view: &mut GuestView<'_, M>,
    count: u32,
    pdone: u64,
) -> (u32, u32) {
    let (count, preempted) = split_preempted_count(count);
    if !preempted || pdone == 0 {
        return (count, 0);
    }
    let mut b = [0u8; 4];
    let carried = match view.read(pdone, &mut b) {
        Ok(()) => u32::from_le_bytes(b),
        Err(_) => 0,
    };
    (count, carried)
}

/// The arguments a batched call stopped after `done` of its `count` entries (of
/// `entry_size` bytes, from `array`) is re-issued with, as Xen's continuation rewrites
/// them: the rest of the array, the count left with `MMU_UPDATE_PREEMPTED` (so that
/// `*pdone`, which holds what was done, is read back), the same `pdone` and foreign
/// domain.
pub(crate) fn continued(
    array: u64,
    entry_size: usize,
    count: u32,
    done: u32,
    pdone: u64,
    foreigndom: u64,
) -> [u64; 5] {
    [
        array.wrapping_add(u64::from(done) * entry_size as u64),
        u64::from((count - done) | pvmmu_abi::mmu::MMU_UPDATE_PREEMPTED),
        pdone,
        foreigndom,
        0,
    ]
}

/// Writes `*pdone` (where Xen does) and turns the outcome into RAX.
pub(crate) fn finish<M: GuestMemory + ?Sized>(
    view: &mut GuestView<'_, M>,
    outcome: Result<BatchOutcome, Refusal>,
    carried: u32,
    pdone: u64,
) -> i64 {
    let o = outcome.unwrap_or_else(Refusal::outcome);
    if o.writes_pdone && pdone != 0 {
        // A fault writing the count is not reported (as in Xen).
        let _ = view.write_u32(pdone, carried.wrapping_add(o.done));
    }
    o.rc()
}
