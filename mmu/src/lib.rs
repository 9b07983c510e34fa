//! # pvmmu
//!
//! A hypervisor-side page-table service for paravirtualised (Xen PV) guests, over any
//! [`vm_memory::GuestMemory`].
//!
//! Its root is the **batched page-table walker** ([`Walker`]): one way to walk a range of
//! page tables that calls back once per page-table page with the run of entries the
//! range covers ([`PteBatch`]), instead of once per entry, so the callback's cost is
//! amortised over up to 512 entries. Translation ([`Walker::translate`]) and the
//! ptdump-style dump ([`Walker::dump`]) are built on it.
//!
//! ```
//! use std::ops::ControlFlow;
//! use pvmmu::{Level, Mfn, Pte, PteFlags, VaRange, Visit, Walker};
//! use vm_memory::{GuestAddress, GuestMemoryMmap};
//!
//! let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap();
//! let mut free = (1..64).map(Mfn);
//! let mut alloc = |_: Level| free.next();
//! let walker = Walker::new(&mem);
//! // Map 2 MiB at 1 GiB, one callback per L1 table.
//! let range = VaRange::new(1 << 30, 2 << 20).unwrap();
//! let mut calls = 0;
//! walker.apply_to_page_range(Mfn(0), range, &mut alloc, |v| {
//!     if let Visit::Ptes(b) = v {
//!         calls += 1;
//!         for i in 0..b.len() {
//!             b.set(i, Pte::new(Mfn(0x200 + i as u64), PteFlags::PRESENT | PteFlags::RW));
//!         }
//!     }
//!     ControlFlow::<()>::Continue(())
//! })?;
//! assert_eq!(calls, 1);
//! for line in walker.dump(Mfn(0))? {
//!     println!("{line}");
//! }
//! # Ok::<(), pvmmu::WalkError>(())
//! ```

pub mod audit;
pub mod batch;
pub mod domain;
pub mod dump;
pub mod entry;
pub mod flush;
pub mod frame;
pub mod guest;
pub mod machine;
pub mod mmu_update;
pub mod mmuext;
pub mod multicall;
pub mod paging;
pub mod ptwr;
pub mod range;
pub mod table;
pub mod translate;
pub mod va_mapping;
mod validate;
pub mod vmassist;
pub mod walk;

pub use audit::AuditError;
pub use batch::{BatchOutcome, Caller};
pub use domain::{Domain, DomainConfig, Vcpu};
pub use dump::DumpRange;
pub use entry::{Mfn, PTE_AD_MASK, PTE_ADDR_MASK, Pte, PteFlags};
pub use flush::{
    FlushReason, FlushRequest, FlushScope, NoFlush, RecordingFlush, TlbFlush, VcpuSet,
};
pub use frame::{FrameTable, PageInfo, PageType};
pub use guest::{GuestView, guest_range_ok};
pub use machine::{Machine, MachineConfig, MachineError, Stats};
pub use multicall::MulticallDispatch;
pub use paging::{ENTRIES_PER_TABLE, Level, PAGE_SIZE, PagingMode};
pub use ptwr::{PtwrOutcome, PtwrRefusal, PtwrWrite};
pub use pvmmu_abi::Errno;
pub use range::{RangeError, VaRange};
pub use table::{PteBatch, TableError, visit_table};
pub use translate::{Translation, effective_flags};
pub use walk::{
    EntryVisit, FrameAllocator, Hole, PteSlot, Visit, WalkError, Walker,
    apply_to_existing_page_range, apply_to_page_range,
};
