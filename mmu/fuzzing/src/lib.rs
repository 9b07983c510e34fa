//! Fuzzing harnesses for pvmmu, usable on stable Rust: `cargo fuzz` targets in
//! `mmu/fuzz` call them, and `cargo test` replays every input in `mmu/fuzz/regressions`
//! through them, so every finding stays fixed without a fuzzing engine.
//!
//! - [`mmu_ops`]: a structured sequence of PV MMU operations on two domains that start
//!   from a builder-like state (pinned trees, a privileged domain, I/O memory), decoded
//!   with `arbitrary` and biased toward frames and entries that exist.
//! - [`shared_ops()`]: the same sequences through a `SharedMachine` (its concurrent
//!   `mmu_update` path) against a plain `Machine`: the two must agree after every
//!   operation.
//! - [`descriptor_ops()`]: `set_gdt` and `update_descriptor` on two vCPUs among
//!   writable mappings, pins and the guest's own writes, against a model of Xen's
//!   descriptor rules.
//! - [`evtchn_ops()`]: a domain's 2-level event channels (allocation, loopback
//!   binding, VIRQs, IPIs, close, send, unmask, vCPU binding) among the guest's own
//!   mask and acknowledge work, against a model of Xen's event-channel rules.
//! - [`reservation_ops()`]: frames leaving and joining live domains (decrease,
//!   increase, populate, exchange, `max_pages`) among pins, unpins and mappings that
//!   keep them referenced and typed, against a model of Xen's memory-op rules.
//! - [`vmm_hypercall`]: raw hypercall registers and guest memory contents against the
//!   VMM's hypercall dispatch, over a domain built by the VMM's own builder, no KVM.
//!
//! After every operation the oracles run: no panic, `audit()` clean (which includes "no
//! frame with a page-table type mapped writable" and "reserved L4 slots intact"), the
//! outcome (errno and `done` count of every batch, RAX, ptwr outcome) equals the
//! prediction of an independent reference model of Xen's PV MMU ([`xen_model`]), whose
//! own frame table, roots and memory then agree with the library's, and after teardown
//! every frame is free, untyped, with count 0.
//!
//! ```
//! // Any bytes are a valid input; the harness panics only if an oracle fails.
//! pvmmu_fuzzing::mmu_ops(&[0u8; 64]);
//! pvmmu_fuzzing::mmu_ops(b"arbitrary bytes decode to operations");
//! ```

pub mod descriptor_ops;
pub mod evtchn_ops;
pub mod ops;
pub mod reservation_ops;
pub mod shared_ops;
pub mod vmm_calls;
pub mod xen_model;

pub use descriptor_ops::descriptor_ops;
pub use evtchn_ops::evtchn_ops;
pub use ops::{mmu_ops, mmu_ops_judged};
pub use reservation_ops::reservation_ops;
pub use shared_ops::shared_ops;
pub use vmm_calls::vmm_hypercall;
