//! # pvmmu
//!
//! A hypervisor-side page-table service for paravirtualised (Xen PV) guests, over any
//! [`vm_memory::GuestMemory`]. A PV guest kernel keeps its x86-64 page tables in its own
//! memory but may not write them; it asks through Xen's PV MMU hypercalls, and this
//! library validates every request by Xen's rules (page types, reference counts,
//! per-level flag rules, linear page tables, reserved slots) before applying it, with
//! the same results and errno values as Xen 4.23.
//!
//! Two layers:
//!
//! - **The batched page-table walker** ([`Walker`]): one way to walk a range of page
//!   tables that calls back once per page-table page with the run of entries the range
//!   covers ([`PteBatch`]), so the callback's cost is amortised over up to 512 entries.
//!   Translation ([`Walker::translate`]), the ptdump-style dump ([`Walker::dump`]), guest
//!   virtual memory access ([`GuestView`]) and the PV MMU itself all walk through it.
//! - **Xen's PV MMU** ([`Machine`]): the frame table shared by all domains, the domains
//!   and their vCPUs, and the hypercalls `mmu_update`, `mmuext_op`,
//!   `update_va_mapping(_otherdomain)`, `multicall`, `vm_assist`, writable-page-table
//!   emulation ([`Machine::ptwr_write`]), [`Machine::audit`] and domain teardown. TLB
//!   flushes are handed to the embedder through [`TlbFlush`] at exactly the points where
//!   Xen flushes.
//!
//! ## Embedding in a VMM
//!
//! ```
//! use pvmmu::{Caller, DomainConfig, Machine, MachineConfig, Mfn};
//! use pvmmu_abi::mmu::MMUEXT_PIN_L1_TABLE;
//! use pvmmu_abi::{MmuUpdate, MmuextOp, DOMID_SELF};
//! use vm_memory::{GuestAddress, GuestMemoryMmap};
//!
//! let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
//! let mut m = Machine::new(mem, MachineConfig::default()).unwrap();
//! m.create_domain(DomainConfig::new(1)).unwrap();
//! m.assign_frames(1, (0x10..0x100).map(Mfn)).unwrap();
//! let me = Caller::new(1, 0);
//!
//! // Pin frame 0x10 as an L1 table, then map frame 0x20 read-write through it.
//! let o = m.mmuext_op(me, &[MmuextOp::new(MMUEXT_PIN_L1_TABLE, 0x10, 0)], DOMID_SELF.into())?;
//! assert_eq!(o.result, Ok(()));
//! let o = m.mmu_update(me, &[MmuUpdate { ptr: 0x10_000, val: 0x20_003 }], DOMID_SELF.into())?;
//! assert_eq!((o.done, o.result), (1, Ok(())));
//! // Mapping the table itself writable is refused with Xen's errno.
//! let o = m.mmu_update(me, &[MmuUpdate { ptr: 0x10_008, val: 0x10_003 }], DOMID_SELF.into())?;
//! assert_eq!(o.result, Err(pvmmu::Errno::EBUSY));
//! assert!(m.audit().is_ok());
//! # Ok::<(), pvmmu::MachineError>(())
//! ```
//!
//! A VMM hands each hypercall exit to [`Machine::hypercall`] with the guest's raw
//! register arguments, and its own hypercalls as a [`HypercallHandler`]: pointers are
//! guest *virtual* addresses, read and written through the vCPU's current kernel page
//! tables, and the result carries the value for RAX and any change of the vCPU's roots.
//!
//! ## The walker
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

pub mod area;
pub mod audit;
pub mod batch;
mod concurrent;
pub mod descriptor;
pub mod domain;
pub mod dump;
pub mod entry;
pub mod flush;
pub mod frame;
pub mod grant;
pub mod guest;
pub mod hypercall;
pub mod ldt;
pub mod machine;
mod maptrack;
pub mod mmu_update;
pub mod mmuext;
pub mod multicall;
pub mod paging;
pub mod ptwr;
pub mod range;
pub mod reservation;
pub mod rights;
pub mod shared;
pub mod table;
pub mod translate;
pub mod va_mapping;
mod validate;
pub mod vcpu_context;
pub mod vmassist;
pub mod walk;
mod write;

pub use area::{GUEST_AREA_NONE, GuestArea};
pub use audit::AuditError;
pub use batch::{BatchOutcome, Caller};
pub use domain::{Domain, DomainConfig, Vcpu};
pub use dump::DumpRange;
pub use entry::{Mfn, PTE_AD_MASK, PTE_ADDR_MASK, Pte, PteFlags};
pub use flush::{
    FlushReason, FlushRequest, FlushScope, NEWLY_STALE_MAX, NoFlush, RecordingFlush, TlbFlush,
    VcpuSet,
};
pub use frame::{FrameTable, PageInfo, PageType};
pub use guest::{GuestView, guest_range_ok};
pub use hypercall::{HypercallHandler, HypercallResult, NoHandler, Roots};
pub use ldt::{LDT_PAGES, Ldt, LdtFault};
pub use machine::{MULTICALL_ENTRY_UNITS, Machine, MachineConfig, MachineError, Stats};
pub use paging::{ENTRIES_PER_TABLE, Level, PAGE_SIZE, PagingMode};
pub use ptwr::{PtwrOutcome, PtwrRefusal, PtwrWrite};
pub use pvmmu_abi::Errno;
pub use range::{RangeError, VaRange};
pub use shared::{MachineGuard, MachineReadGuard, SharedCall, SharedMachine};
pub use table::{PteBatch, PteSnapshot, TableError, visit_table};
pub use translate::{Translation, effective_flags};
pub use walk::{
    EntryVisit, FrameAllocator, Hole, PteSlot, Visit, WalkError, Walker,
    apply_to_existing_page_range, apply_to_page_range,
};
