//! x86-64 specifics of the PV vCPU: pure builders of the register state KVM is given.

pub mod msr;
pub mod regs;
