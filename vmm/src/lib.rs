//! The pvmmu VMM: the KVM layer that boots Xen PV guests and serves their hypercalls
//! through the `pvmmu` library.
//!
//! It sits on the KVM-free [`platform`] crate (the domain description and builder,
//! hypercall dispatch, traces) and adds what needs `/dev/kvm`, split by job:
//!
//! - [`vm`]: the VM ([`vm::Vm`]): memory registered with KVM, the domain, the devices,
//!   and the run loop that routes every exit (hypercall, exception, device).
//! - [`vcpu`] and [`arch::regs`]: the PV vCPU and the pure builders of its registers.
//! - [`fault`]: exceptions that reach the hypervisor area's stubs (frame, report);
//!   [`emulate`]: instructions the VMM carries out for the guest (writable page tables).
//! - [`flush`]: host-side invalidation of the library's flushes on KVM.
//! - [`bus`]: port-I/O and MMIO buses over the `devices` crate.
//! - [`tracer`]: recording a run for `pvmmu replay`.
//! - [`runner`]: the vCPU thread, signals and the event loop, as the binary runs them.
//! - [`guests`], [`mod@bench`]: the built-in test guests and `pvmmu bench`.
//! - [`xtf`]: `pvmmu xtf`, running Xen's own test kernels (XTF) with their verdicts.
//!
//! ```no_run
//! use std::sync::atomic::AtomicBool;
//! use platform::DomainSpec;
//! use vmm::vm::{GuestExit, Vm, VmConfig};
//!
//! let image = vmm::guests::find("demo").unwrap().image.to_vec();
//! let cfg = VmConfig::new(DomainSpec::new(image, 64));
//! let report = Vm::new(cfg)?.run_to_end(&AtomicBool::new(false))?;
//! assert_eq!(report.exit, GuestExit::Shutdown(0));
//! # Ok::<(), vmm::vm::VmError>(())
//! ```

pub mod arch;
pub mod bench;
pub mod bus;
pub mod emulate;
pub mod fault;
pub mod flush;
pub mod guests;
pub mod runner;
pub mod tracer;
pub mod vcpu;
pub mod vm;
pub mod xtf;
