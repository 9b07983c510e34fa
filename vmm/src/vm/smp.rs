//! Secondary vCPUs: loading the context `VCPUOP_initialise` gave a vCPU into its KVM
//! vCPU when its thread starts.

use platform::vcpus::StartRegs;

use super::{Exit, VmError};
use crate::vcpu::SegmentBase;

impl Exit<'_> {
    /// Loads `start` into the vCPU: its general registers, its code and stack
    /// selectors, its segment bases, the root of its mode and its descriptor tables (the
    /// library holds the roots, GDT and LDT `VCPUOP_initialise` set).
    pub(super) fn load_start_context(&mut self, start: &StartRegs) -> Result<(), VmError> {
        let mut regs = self.cpu.vcpu.regs();
        regs.rax = start.rax;
        regs.rbx = start.rbx;
        regs.rcx = start.rcx;
        regs.rdx = start.rdx;
        regs.rsi = start.rsi;
        regs.rdi = start.rdi;
        regs.rbp = start.rbp;
        [
            regs.r8, regs.r9, regs.r10, regs.r11, regs.r12, regs.r13, regs.r14, regs.r15,
        ] = start.r;
        regs.rip = start.rip;
        regs.rsp = start.rsp;
        regs.rflags = start.rflags;
        self.cpu.vcpu.set_regs(regs);
        // In kernel mode the kernel's GS base is the active one.
        let (active, shadow) = if start.kernel {
            (start.gs_base_kernel, start.gs_base_user)
        } else {
            (start.gs_base_user, start.gs_base_kernel)
        };
        self.cpu
            .vcpu
            .set_segment_base(SegmentBase::Fs, start.fs_base)?;
        self.cpu.vcpu.set_segment_base(SegmentBase::Gs, active)?;
        self.cpu
            .vcpu
            .set_segment_base(SegmentBase::ShadowGs, shadow)?;
        let root = self.current_root();
        self.cpu.vcpu.load_root(root)?;
        self.sync_descriptor_tables()?;
        self.load_code_and_stack(start.cs, start.ss)?;
        self.load_debugregs()?;
        self.load_cr0_ts()?;
        Ok(())
    }
}
