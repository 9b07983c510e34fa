//! The register-ABI entry: one hypercall as a guest issues it (number and up to five
//! argument registers, pointers being guest virtual addresses), for every hypercall.
//!
//! [`Machine::hypercall`] serves the PV MMU hypercalls itself (`mmu_update`,
//! `mmuext_op`, `update_va_mapping`, `update_va_mapping_otherdomain`, `vm_assist`,
//! `set_gdt`, `update_descriptor`, `multicall`) and hands every other number to the embedder's [`HypercallHandler`], so
//! a VMM adds its own hypercalls (console, scheduling, the platform) without repeating
//! the dispatch. `multicall` entries go through the same dispatch.

#![allow(non_upper_case_globals)] // Xen's names for the hypercall numbers

use pvmmu_abi::Errno;
use pvmmu_abi::hypercall::{
    HYPERVISOR_mmu_update, HYPERVISOR_mmuext_op, HYPERVISOR_multicall, HYPERVISOR_set_gdt,
    HYPERVISOR_update_descriptor, HYPERVISOR_update_va_mapping,
    HYPERVISOR_update_va_mapping_otherdomain, HYPERVISOR_vm_assist,
};
use vm_memory::GuestMemory;

use crate::batch::Caller;
use crate::entry::Mfn;
use crate::flush::TlbFlush;
use crate::machine::{Machine, MachineError};

/// The embedder's hypercalls: every number the library does not serve itself.
///
/// Implemented for closures `FnMut(&mut Machine<M, F>, Caller, u64, [u64; 5]) -> i64`.
pub trait HypercallHandler<M, F> {
    /// Serves hypercall `nr` with argument registers `args` for `caller`; returns the
    /// value for RAX (`-ENOSYS` for a number it does not know).
    fn hypercall(
        &mut self,
        machine: &mut Machine<M, F>,
        caller: Caller,
        nr: u64,
        args: [u64; 5],
    ) -> i64;
}

impl<M, F, T> HypercallHandler<M, F> for T
where
    T: FnMut(&mut Machine<M, F>, Caller, u64, [u64; 5]) -> i64,
{
    fn hypercall(
        &mut self,
        machine: &mut Machine<M, F>,
        caller: Caller,
        nr: u64,
        args: [u64; 5],
    ) -> i64 {
        self(machine, caller, nr, args)
    }
}

/// A [`HypercallHandler`] that knows no hypercall: `-ENOSYS` for each.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoHandler;

impl<M, F> HypercallHandler<M, F> for NoHandler {
    fn hypercall(&mut self, _: &mut Machine<M, F>, _: Caller, _: u64, _: [u64; 5]) -> i64 {
        Errno::ENOSYS.neg()
    }
}

/// A vCPU's page-table roots after a call that changed either (`MMUEXT_NEW_BASEPTR`,
/// `MMUEXT_NEW_USER_BASEPTR`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Roots {
    /// The kernel root (CR3 while the vCPU runs in guest kernel mode).
    pub kernel: Option<Mfn>,
    /// The user root (CR3 in guest user mode).
    pub user: Option<Mfn>,
}

/// What a hypercall did, for the embedder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HypercallResult {
    /// The value for RAX.
    pub rax: i64,
    /// The caller's roots, when the call changed them: the embedder loads the new
    /// kernel root into the vCPU's CR3 before it resumes the guest.
    pub roots: Option<Roots>,
    /// The bytes of every batch entry the call read from guest memory, in order, when
    /// [`Machine::record_reads`] is on (empty otherwise).
    pub reads: Vec<u8>,
    /// The call stopped at a preemption point (see [`Machine::set_preempt_budget`]):
    /// the embedder re-issues hypercall `nr` with these argument registers (RDI, RSI,
    /// RDX, R10, R8) by resuming the guest at its hypercall instruction, as Xen's
    /// continuation does; `rax` means nothing then.
    pub continuation: Option<[u64; 5]>,
}

impl<M: GuestMemory, F: TlbFlush> Machine<M, F> {
    /// Serves hypercall `nr` with argument registers `args` (RDI, RSI, RDX, R10, R8) for
    /// `caller`, as Xen's 64-bit PV hypercall entry does: the PV MMU hypercalls here,
    /// every other number through `other`.
    ///
    /// ```
    /// use pvmmu::{Caller, DomainConfig, Machine, MachineConfig, NoHandler};
    /// use pvmmu_abi::hypercall::{HYPERVISOR_vm_assist, HYPERVISOR_xen_version};
    /// use vm_memory::{GuestAddress, GuestMemoryMmap};
    ///
    /// let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
    /// let mut m = Machine::new(mem, MachineConfig::default())?;
    /// m.create_domain(DomainConfig::new(1))?;
    /// let me = Caller::new(1, 0);
    /// // vm_assist(enable, writable_pagetables) is the library's own.
    /// let r = m.hypercall(me, HYPERVISOR_vm_assist, [0, 2, 0, 0, 0], &mut NoHandler)?;
    /// assert_eq!(r.rax, 0);
    /// // xen_version goes to the embedder's handler.
    /// let mut version = |_: &mut Machine<_, _>, _: Caller, _: u64, _: [u64; 5]| 0x4_0017;
    /// let r = m.hypercall(me, HYPERVISOR_xen_version, [0; 5], &mut version)?;
    /// assert_eq!(r.rax, 0x4_0017);
    /// # Ok::<(), pvmmu::MachineError>(())
    /// ```
    pub fn hypercall(
        &mut self,
        caller: Caller,
        nr: u64,
        args: [u64; 5],
        other: &mut dyn HypercallHandler<M, F>,
    ) -> Result<HypercallResult, MachineError> {
        self.vcpu_check(caller.dom, caller.vcpu)?;
        let work = self.core.work_now();
        let p = &mut self.core.preempt;
        (p.armed, p.start, p.continuation) = (true, work, None);
        let rax = self.dispatch(caller, nr, args, other, false);
        self.core.preempt.armed = false;
        let continuation = self.core.preempt.continuation.take();
        Ok(HypercallResult {
            rax: rax?,
            roots: self.take_root_change(caller),
            reads: self.take_reads(),
            continuation,
        })
    }

    /// The one dispatch, for direct calls and multicall entries (`nested`).
    pub(crate) fn dispatch(
        &mut self,
        caller: Caller,
        nr: u64,
        a: [u64; 5],
        other: &mut dyn HypercallHandler<M, F>,
        nested: bool,
    ) -> Result<i64, MachineError> {
        Ok(match nr {
            HYPERVISOR_mmu_update => self.hypercall_mmu_update(caller, a[0], a[1], a[2], a[3])?,
            HYPERVISOR_mmuext_op => self.hypercall_mmuext_op(caller, a[0], a[1], a[2], a[3])?,
            HYPERVISOR_update_va_mapping => {
                self.hypercall_update_va_mapping(caller, a[0], a[1], a[2])?
            }
            HYPERVISOR_update_va_mapping_otherdomain => {
                self.hypercall_update_va_mapping_otherdomain(caller, a[0], a[1], a[2], a[3])?
            }
            HYPERVISOR_vm_assist => self.hypercall_vm_assist(caller, a[0], a[1])?,
            HYPERVISOR_set_gdt => self.hypercall_set_gdt(caller, a[0], a[1])?,
            HYPERVISOR_update_descriptor => self.hypercall_update_descriptor(caller, a[0], a[1])?,
            // A multicall inside a multicall is refused per entry.
            HYPERVISOR_multicall if nested => Errno::EINVAL.neg(),
            HYPERVISOR_multicall => self.hypercall_multicall(caller, a[0], a[1], other)?,
            _ => other.hypercall(self, caller, nr, a),
        })
    }

    /// The caller's roots if a call changed them since the last time this was asked
    /// (for embedders that call the slice forms directly; [`Machine::hypercall`]
    /// reports it in its result).
    pub fn take_root_change(&mut self, caller: Caller) -> Option<Roots> {
        let v = self.core.vcpu_mut(caller)?;
        std::mem::take(&mut v.roots_changed).then_some(Roots {
            kernel: v.kernel_root,
            user: v.user_root,
        })
    }
}
