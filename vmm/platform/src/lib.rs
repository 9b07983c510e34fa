//! The KVM-free layer of the pvmmu VMM.
//!
//! Everything here runs without `/dev/kvm`: the `pvmmu` binary's KVM layer (crate
//! `vmm`) sits on top of it, and so do `pvmmu dump`, `pvmmu replay` and the fuzzing
//! harnesses, which therefore build every domain the same way.
//!
//! - [`domain`]: the domain description ([`DomainSpec`]) and the one recipe that builds
//!   it ([`Domain::build`]): guest memory, the hypervisor area, the PV MMU, the guest.
//! - [`elf`], [`builder`], [`hvarea`], [`layout`]: reading a PV ELF image, laying the
//!   guest out as Xen's builder does, the hypervisor's own pages in Xen's reserved L4
//!   slots, and where everything lives.
//! - [`dispatch`]: a hypercall from registers to result, through
//!   [`pvmmu::Machine::hypercall`] with the platform's own hypercalls (console,
//!   scheduling, version) as its handler.
//! - [`trace`] and [`replay`]: the trace format and its replay against the library.
//!
//! ```
//! use platform::domain::{DOMID, Domain, DomainSpec};
//! use platform::elf::minimal_image;
//!
//! // A tiny PV kernel image, built in memory.
//! let spec = DomainSpec::new(minimal_image(&[0xf4]), 16);
//! let d = Domain::create(&spec, pvmmu::NoFlush)?;
//! assert_eq!(d.machine.kernel_root(pvmmu::Caller::new(DOMID, 0)), Some(d.boot.l4));
//! assert!(d.machine.audit().is_ok());
//! # Ok::<(), platform::domain::DomainError>(())
//! ```

pub mod builder;
pub mod bzimage;
pub mod console;
pub mod cpuid;
pub mod dispatch;
pub mod domain;
pub mod elf;
pub mod evtchn;
pub mod grant;
pub mod hvarea;
pub mod layout;
pub mod memory;
pub mod named;
pub mod pv;
pub mod replay;
pub mod ring;
pub mod trace;
pub mod vcpus;
pub mod xenstore;

pub use console::{Console, NullConsole};
pub use dispatch::{Outcome, Served};
pub use domain::{BACKEND_DOMID, DOMID, Domain, DomainError, DomainSpec};
