//! The pvmmu VMM: a small KVM VMM on rust-vmm crates that boots Xen PV guests and serves
//! their MMU hypercalls through the `pvmmu` library.
//!
//! [`vm::Vm`] builds a VM (guest memory, the hypervisor area in Xen's reserved L4 slots,
//! the PV MMU, the domain from a PV ELF image) and runs its vCPU, serving hypercall,
//! fault and device exits. The binary `pvmmu` wraps it in a CLI with an event loop.
//!
//! ```no_run
//! use std::sync::atomic::AtomicBool;
//! use vmm::vm::{GuestExit, Vm, VmConfig};
//!
//! let cfg = VmConfig {
//!     memory_mib: 64,
//!     vcpus: 1,
//!     image: vmm::guests::find("demo").unwrap().image.to_vec(),
//!     cmdline: String::new(),
//!     console_out: Box::new(std::io::stdout()),
//!     iomem: true,
//! };
//! let report = Vm::new(cfg)?.run_to_end(&AtomicBool::new(false))?;
//! assert_eq!(report.exit, GuestExit::Shutdown(0));
//! # Ok::<(), vmm::vm::VmError>(())
//! ```

pub mod bench;
pub mod builder;
pub mod elf;
pub mod fault;
pub mod flush;
pub mod guests;
pub mod hvarea;
pub mod hypercall;
pub mod layout;
pub mod trace;
pub mod vm;
