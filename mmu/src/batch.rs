//! Batch plumbing shared by the hypercalls: where a batch's entries come from (a Rust
//! slice, or guest virtual memory), the caller, and owner resolution (`foreigndom`).

use pvmmu_abi::Errno;
use pvmmu_abi::domid::{DOMID_IO, DOMID_SELF, DOMID_XEN};
use vm_memory::GuestMemory;

use crate::entry::Mfn;
use crate::frame::Owner;
use crate::guest::GuestView;
use crate::machine::Core;

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

/// A source of batch entries.
pub(crate) trait Entries<T> {
    fn count(&self) -> u32;
    fn read(&mut self, i: u32) -> Result<T, Errno>;
    /// An entry of page table `table` was written: cached translations through it are
    /// stale.
    fn table_written(&mut self, _table: Mfn) {}
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

/// Plain-data ABI structures read from guest memory.
pub(crate) trait FromGuest: Sized {
    const SIZE: usize;
    fn decode(bytes: &[u8]) -> Option<Self>;
}

impl FromGuest for pvmmu_abi::MmuUpdate {
    const SIZE: usize = 16;
    fn decode(b: &[u8]) -> Option<Self> {
        Some(Self::from_bytes(b.try_into().ok()?))
    }
}

impl FromGuest for pvmmu_abi::MmuextOp {
    const SIZE: usize = 24;
    fn decode(b: &[u8]) -> Option<Self> {
        Some(Self::from_bytes(b.try_into().ok()?))
    }
}

impl FromGuest for pvmmu_abi::MulticallEntry {
    const SIZE: usize = 64;
    fn decode(b: &[u8]) -> Option<Self> {
        Some(Self::from_bytes(b.try_into().ok()?))
    }
}

pub(crate) struct GuestEntries<'v, 'm, M: ?Sized> {
    pub view: &'v mut GuestView<'m, M>,
    pub va: u64,
    pub count: u32,
}

impl<T: FromGuest, M: GuestMemory + ?Sized> Entries<T> for GuestEntries<'_, '_, M> {
    fn count(&self) -> u32 {
        self.count
    }
    fn read(&mut self, i: u32) -> Result<T, Errno> {
        let mut buf = [0u8; 64];
        let buf = &mut buf[..T::SIZE];
        let va = self
            .va
            .checked_add(u64::from(i) * T::SIZE as u64)
            .ok_or(Errno::EFAULT)?;
        self.view.read(va, buf)?;
        T::decode(buf).ok_or(Errno::EFAULT)
    }
    fn table_written(&mut self, table: Mfn) {
        self.view.table_written(table);
    }
    fn root_changed(&mut self, root: Option<Mfn>) {
        self.view.set_root(root);
    }
}

impl<F> Core<F> {
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

    /// Whether `caller` may use `target` as FD/PFD (dummy XSM: itself, DOMID_IO, or a
    /// domain it controls).
    pub(crate) fn may_use(&self, caller: u16, target: Owner) -> bool {
        target == caller
            || target == DOMID_IO
            || self.domains.get(&caller).is_some_and(|d| {
                d.may_control(target) && (target != DOMID_XEN || d.config().privileged)
            })
    }
}
