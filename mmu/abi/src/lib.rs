//! Xen's 64-bit PV ABI for the MMU, boot and the calls around them:
//! hypercall numbers, command codes, flag values and the exact layouts of
//! the structures a 64-bit PV guest exchanges with the hypervisor.
//!
//! `#![no_std]`, no dependencies, no `unsafe`. Every structure is
//! `#[repr(C)]` plain data with explicit padding fields, compile-time
//! size/offset checks, and panic-free little-endian `from_bytes` /
//! `to_bytes` (also through the [`AbiBytes`] trait). Raw numbers are
//! `pub const`s with Xen's own names (e.g. [`mmu::MMUEXT_PIN_L4_TABLE`],
//! [`sched::SCHEDOP_shutdown`]); where it helps they also have a typed
//! enum with `TryFrom` (e.g. [`MmuextCmd`], [`SchedOp`]).
//!
//! Modules:
//! - [`hypercall`]: hypercall numbers, [`Hypercall`], the hypercall page.
//! - [`mmu`]: `mmu_update` / `mmuext_op` / `update_va_mapping` requests,
//!   commands and `UVMF_*` flags.
//! - [`pte`]: PTE bits, Xen's disallowed-flag masks, PV PTE adjustment.
//! - [`multicall`]: the batch entry [`MulticallEntry`].
//! - [`domid`]: `DOMID_*`, [`DomId`], [`decode_foreigndom`].
//! - [`errno`]: Xen errno values ([`Errno`]).
//! - [`start_info`]: [`StartInfo`] and `SIF_*`.
//! - [`shared_info`]: `shared_info` / `vcpu_info` offsets.
//! - [`elfnote`]: `XEN_ELFNOTE_*`, `XENFEAT_*`, [`feature_by_name`].
//! - [`sched`], [`console`], [`evtchn`], [`vmassist`], [`trap`],
//!   [`callback`], [`memory`], [`selector`], [`version`]: the calls around
//!   the MMU.
//! - [`layout`]: Xen-reserved L4 slots, `HYPERVISOR_VIRT_START/END`, the
//!   read-only M2P, [`is_xen_l4_slot`], [`is_guest_va`].
//!
//! # Example
//!
//! Decoding an `mmu_update` request and its `foreigndom` argument:
//!
//! ```
//! use pvmmu_abi::{
//!     decode_foreigndom, AbiBytes, Errno, MmuUpdate, MmuUpdateCmd, DOMID_SELF,
//! };
//!
//! // A request as the guest wrote it: PTE at machine address 0x1234_5678
//! // (8-byte aligned) with command 2 in the low bits.
//! let raw: [u8; 16] = MmuUpdate { ptr: 0x1234_5678 | 2, val: 0x9_9000_0067 }.to_bytes();
//! let req = MmuUpdate::from_bytes(&raw);
//! assert_eq!(req.cmd(), Ok(MmuUpdateCmd::PtUpdatePreserveAd));
//! assert_eq!(req.addr(), 0x1234_5678);
//! assert_eq!(req.mfn(), 0x12345);
//!
//! // Commands 4..=7 are invalid: Xen answers -ENOSYS.
//! let bad = MmuUpdate { ptr: 0x1234_5000 | 5, val: 0 };
//! assert!(bad.cmd().is_err());
//! assert_eq!(Errno::ENOSYS.neg(), -38);
//!
//! // foreigndom: FD in bits 15:0, PFD + 1 in bits 31:16 (0 = self).
//! assert_eq!(decode_foreigndom(u32::from(DOMID_SELF)), (DOMID_SELF, None));
//! assert_eq!(decode_foreigndom((7 + 1) << 16 | 7), (7, Some(7)));
//! ```
#![no_std]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

#[cfg(test)]
extern crate std;

#[macro_use]
mod macros;
mod bytes;

pub mod callback;
pub mod console;
pub mod domid;
pub mod elfnote;
pub mod errno;
pub mod evtchn;
pub mod grant;
pub mod hypercall;
pub mod layout;
pub mod memory;
pub mod mmu;
pub mod multicall;
pub mod pte;
pub mod sched;
pub mod selector;
pub mod shared_info;
pub mod start_info;
pub mod trap;
pub mod version;
pub mod vmassist;

pub use bytes::AbiBytes;
pub use callback::{CallbackOp, CallbackRegister, CallbackType, CallbackUnregister};
pub use console::{ConsoleIoCmd, XenconsInterface};
pub use domid::{
    DOMID_ANY, DOMID_COW, DOMID_FIRST_RESERVED, DOMID_IDLE, DOMID_INVALID, DOMID_IO, DOMID_MASK,
    DOMID_SELF, DOMID_XEN, DomId, decode_foreigndom, encode_foreigndom,
};
pub use elfnote::{ElfNoteType, feature_by_name, feature_name, parse_features};
pub use errno::{Errno, NotAnErrno};
pub use evtchn::EvtchnSend;
pub use hypercall::{Hypercall, UnknownHypercall, hypercall_page, hypercall_slot};
pub use layout::{is_canonical, is_guest_va, is_xen_l4_slot};
pub use memory::{MemoryOp, XenMachphysMapping, decode_memory_op_cmd};
pub use mmu::{
    InvalidMmuUpdateCmd, MmuUpdate, MmuUpdateCmd, MmuextCmd, MmuextOp, UnknownMmuextCmd, Uvmf,
    UvmfFlush, UvmfTarget,
};
pub use multicall::MulticallEntry;
pub use sched::{SchedOp, SchedShutdown, ShutdownReason};
pub use selector::SegBase;
pub use start_info::StartInfo;
pub use trap::{IretContext, TrapInfo};
pub use version::{XenFeatureInfo, XenPlatformParameters, XenVer};
pub use vmassist::{VmAssistCmd, VmAssistType};
