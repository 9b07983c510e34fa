//! One PV vCPU on KVM: its creation in long mode at CPL3 from the builders in
//! [`crate::arch::regs`], register access through KVM's sync-regs area (an exit costs a
//! few microseconds less than with GET/SET_REGS, `docs/kvm-host.md`), and the page-table
//! root it runs on.

use kvm_bindings::{
    CpuId, KVM_MAX_CPUID_ENTRIES, Msrs, kvm_fpu, kvm_msr_entry, kvm_regs, kvm_sregs, kvm_xcr,
    kvm_xcrs,
};
use kvm_ioctls::{Kvm, SyncReg, VcpuFd, VmFd};
use log::debug;
use platform::builder::BootInfo;
use platform::layout::{RING0_CS, SYSCALL_STUB_VA, XEN_PAT};
use pvmmu::{Caller, Mfn};
use pvmmu_abi::selector::{FLAT_RING3_CS32, FLAT_RING3_CS64, FLAT_RING3_SS64};

use crate::arch::{msr, regs};

/// KVM_CPUID_FLAG_SIGNIFCANT_INDEX.
const CPUID_INDEXED: u32 = 1;
/// CPUID.1:ECX.XSAVE.
const CPUID_XSAVE: u32 = 1 << 26;
/// XCR0: x87 and SSE state.
const XCR0: u64 = 0x3;

/// Errors setting a vCPU up.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    /// KVM refused an ioctl.
    #[error("KVM: {0}")]
    Kvm(#[from] kvm_ioctls::Error),
    /// The MSR list could not be built.
    #[error("MSR list: {0:?}")]
    Msrs(vmm_sys_util::fam::Error),
    /// A segment the hypervisor area does not define.
    #[error("{0}")]
    Segment(#[from] regs::NoDescriptor),
}

/// The host's CPUID as KVM offers it, for [`platform::cpuid::CpuidPolicy`].
pub fn host_cpuid(kvm: &Kvm) -> Result<Vec<platform::cpuid::HostLeaf>, kvm_ioctls::Error> {
    let cpuid = kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)?;
    Ok(cpuid
        .as_slice()
        .iter()
        .map(|e| platform::cpuid::HostLeaf {
            leaf: e.function,
            subleaf: e.index,
            indexed: e.flags & CPUID_INDEXED != 0,
            regs: [e.eax, e.ebx, e.ecx, e.edx],
        })
        .collect())
}

/// Which segment base.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SegmentBase {
    /// FS.
    Fs,
    /// GS (the active one).
    Gs,
    /// The shadow GS (`swapgs`'s other half).
    ShadowGs,
}

/// A PV vCPU.
#[derive(Debug)]
pub struct Vcpu {
    /// The KVM vCPU.
    pub fd: VcpuFd,
    /// Who it is, to the PV MMU.
    pub caller: Caller,
    /// The root CR3 holds.
    cr3: Mfn,
}

impl Vcpu {
    /// Creates vCPU `caller.vcpu` of `vm`, ready to enter the guest at `boot`.
    pub fn new(kvm: &Kvm, vm: &VmFd, caller: Caller, boot: &BootInfo) -> Result<Vcpu, VcpuError> {
        let mut fd = vm.create_vcpu(u64::from(caller.vcpu))?;
        let cpuid: CpuId = kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)?;
        fd.set_cpuid2(&cpuid)?;
        // A CPU running SSE code must have XSAVE enabled where it is offered (this host's
        // KVM does not enforce it; hardware KVM does).
        let xsave = cpuid
            .as_slice()
            .iter()
            .any(|e| e.function == 1 && e.ecx & CPUID_XSAVE != 0);
        let sregs = regs::pv_sregs(fd.get_sregs()?, caller.vcpu, boot.l4.addr(), xsave)?;
        fd.set_sregs(&sregs)?;
        // The special registers come with every exit (no ioctl on the exception path);
        // the copy starts as loaded.
        fd.sync_regs_mut().sregs = sregs;
        let entry = |index, data| kvm_msr_entry {
            index,
            data,
            ..Default::default()
        };
        // `syscall` enters the syscall stub (on hardware KVM in ring 0 with the
        // hypervisor's CS; on KVM-PVM it stays at CPL3), no flags masked.
        let star = (u64::from(FLAT_RING3_CS32) << 48) | (u64::from(RING0_CS) << 32);
        let msrs = Msrs::from_entries(&[
            entry(msr::PAT, XEN_PAT),
            entry(msr::STAR, star),
            entry(msr::LSTAR, SYSCALL_STUB_VA),
            entry(msr::CSTAR, SYSCALL_STUB_VA),
            entry(msr::SFMASK, 0),
        ])
        .map_err(VcpuError::Msrs)?;
        fd.set_msrs(&msrs)?;
        fd.set_fpu(&kvm_fpu {
            fcw: 0x37f,
            mxcsr: 0x1f80,
            ..Default::default()
        })?;
        if xsave {
            let mut xcrs = kvm_xcrs {
                nr_xcrs: 1,
                ..Default::default()
            };
            xcrs.xcrs[0] = kvm_xcr {
                xcr: 0,
                reserved: 0,
                value: XCR0,
            };
            fd.set_xcrs(&xcrs)?;
        }
        fd.set_regs(&regs::boot_regs(boot))?;
        fd.set_sync_valid_reg(SyncReg::Register);
        fd.set_sync_valid_reg(SyncReg::SystemRegister);
        debug!(
            "vCPU {}: efer {:#x} cr0 {:#x} cr4 {:#x}",
            caller.vcpu, sregs.efer, sregs.cr0, sregs.cr4
        );
        Ok(Vcpu {
            fd,
            caller,
            cr3: boot.l4,
        })
    }

    /// The general registers at the current exit.
    pub fn regs(&mut self) -> kvm_regs {
        self.fd.sync_regs().regs
    }

    /// Replaces the general registers (written back on the next entry).
    pub fn set_regs(&mut self, regs: kvm_regs) {
        self.fd.sync_regs_mut().regs = regs;
        self.fd.set_sync_dirty_reg(SyncReg::Register);
    }

    /// Sets RAX (a hypercall's result).
    pub fn set_rax(&mut self, rax: u64) {
        self.fd.sync_regs_mut().regs.rax = rax;
        self.fd.set_sync_dirty_reg(SyncReg::Register);
    }

    /// The special registers at the current exit (KVM copies them out with every
    /// exit; kept current when the VMM loads them).
    pub fn sregs(&self) -> Result<kvm_sregs, kvm_ioctls::Error> {
        Ok(self.fd.sync_regs().sregs)
    }

    /// Loads the special registers, and keeps the exit's copy in step (it is not
    /// marked dirty: the ioctl has loaded them already).
    fn put_sregs(&mut self, sregs: &kvm_sregs) -> Result<(), kvm_ioctls::Error> {
        self.fd.set_sregs(sregs)?;
        self.fd.sync_regs_mut().sregs = *sregs;
        Ok(())
    }

    /// Switches between guest kernel and user mode (Xen's `toggle_guest_mode`): CR3 to
    /// `root` (the new mode's) and the GS bases exchanged, as `swapgs` would.
    pub fn switch_mode(&mut self, root: Option<Mfn>) -> Result<(), kvm_ioctls::Error> {
        let mut sregs = self.sregs()?;
        let shadow = self.shadow_gs_base()?;
        self.set_shadow_gs_base(sregs.gs.base)?;
        sregs.gs.base = shadow;
        if let Some(root) = root {
            sregs.cr3 = root.addr();
            self.cr3 = root;
        }
        self.put_sregs(&sregs)?;
        Ok(())
    }

    /// The guest's TSC now (its IA32_TSC) and the TSC's frequency in kHz.
    pub fn tsc(&self) -> Result<(u64, u32), kvm_ioctls::Error> {
        let mut msrs = Msrs::from_entries(&[kvm_msr_entry {
            index: msr::TSC,
            ..Default::default()
        }])
        .map_err(|_| kvm_ioctls::Error::new(libc::EINVAL))?;
        self.fd.get_msrs(&mut msrs)?;
        let tsc = msrs.as_slice().first().map_or(0, |e| e.data);
        Ok((tsc, self.fd.get_tsc_khz()?))
    }

    /// One MSR-list entry for the shadow GS base.
    fn shadow_gs_msr(data: u64) -> Result<Msrs, kvm_ioctls::Error> {
        Msrs::from_entries(&[kvm_msr_entry {
            index: msr::SHADOW_GS_BASE,
            data,
            ..Default::default()
        }])
        .map_err(|_| kvm_ioctls::Error::new(libc::EINVAL))
    }

    /// The shadow GS base (IA32_KERNEL_GS_BASE).
    fn shadow_gs_base(&self) -> Result<u64, kvm_ioctls::Error> {
        let mut msrs = Self::shadow_gs_msr(0)?;
        self.fd.get_msrs(&mut msrs)?;
        Ok(msrs.as_slice().first().map_or(0, |e| e.data))
    }

    /// Sets the shadow GS base.
    fn set_shadow_gs_base(&self, value: u64) -> Result<(), kvm_ioctls::Error> {
        self.fd.set_msrs(&Self::shadow_gs_msr(value)?).map(|_| ())
    }

    /// After a `syscall` that entered ring 0 (hardware KVM), puts the vCPU back at the
    /// guest's CPL3 selectors; a no-op where `syscall` stays at CPL3 (KVM-PVM).
    pub fn leave_ring0(&mut self) -> Result<(), VcpuError> {
        let mut sregs = self.sregs()?;
        if sregs.cs.dpl == 3 {
            return Ok(());
        }
        sregs.cs = regs::gdt_segment(self.caller.vcpu, FLAT_RING3_CS64)?;
        sregs.ss = regs::gdt_segment(self.caller.vcpu, FLAT_RING3_SS64)?;
        self.put_sregs(&sregs)?;
        Ok(())
    }

    /// The FS base, the GS base and the shadow GS base (what `swapgs` exchanges).
    pub fn segment_bases(&self) -> Result<(u64, u64, u64), kvm_ioctls::Error> {
        let sregs = self.sregs()?;
        Ok((sregs.fs.base, sregs.gs.base, self.shadow_gs_base()?))
    }

    /// Sets the FS base, the GS base or the shadow GS base.
    pub fn set_segment_base(
        &mut self,
        which: SegmentBase,
        value: u64,
    ) -> Result<(), kvm_ioctls::Error> {
        match which {
            SegmentBase::Fs | SegmentBase::Gs => {
                let mut sregs = self.sregs()?;
                if which == SegmentBase::Fs {
                    sregs.fs.base = value;
                } else {
                    sregs.gs.base = value;
                }
                self.put_sregs(&sregs)
            }
            SegmentBase::ShadowGs => self.set_shadow_gs_base(value),
        }
    }

    /// Sets or clears CR0.TS.
    pub fn set_cr0_ts(&mut self, on: bool) -> Result<(), kvm_ioctls::Error> {
        self.set_control_bit(|s| &mut s.cr0, regs::CR0_TS, on)
    }

    /// Sets or clears CR4.FSGSBASE (the guest chose it through its CR4).
    pub fn set_fsgsbase(&mut self, on: bool) -> Result<(), kvm_ioctls::Error> {
        self.set_control_bit(|s| &mut s.cr4, platform::pv::cr4::FSGSBASE, on)
    }

    /// Sets or clears `bit` of the control register `cr` picks; the special registers
    /// are loaded only when it changes.
    fn set_control_bit(
        &mut self,
        cr: fn(&mut kvm_sregs) -> &mut u64,
        bit: u64,
        on: bool,
    ) -> Result<(), kvm_ioctls::Error> {
        let mut sregs = self.sregs()?;
        let reg = cr(&mut sregs);
        let new = if on { *reg | bit } else { *reg & !bit };
        if new != *reg {
            *reg = new;
            self.put_sregs(&sregs)?;
        }
        Ok(())
    }

    /// Loads CS and SS.
    pub fn load_code_and_stack(
        &mut self,
        cs: kvm_bindings::kvm_segment,
        ss: kvm_bindings::kvm_segment,
    ) -> Result<(), kvm_ioctls::Error> {
        let mut sregs = self.sregs()?;
        (sregs.cs, sregs.ss) = (cs, ss);
        self.put_sregs(&sregs)
    }

    /// Loads the LDT register from its descriptor words (`lo`, `hi`; all zero: no LDT,
    /// a null selector).
    pub fn load_ldt(&mut self, lo: u64, hi: u64) -> Result<(), kvm_ioctls::Error> {
        let mut sregs = self.sregs()?;
        sregs.ldt = if lo == 0 {
            regs::no_ldt()
        } else {
            regs::segment_from_descriptor(platform::layout::LDT_SEL, lo, hi)
        };
        self.put_sregs(&sregs)
    }

    /// Loads `root` into CR3, if it is not already there.
    pub fn load_root(&mut self, root: Option<Mfn>) -> Result<(), kvm_ioctls::Error> {
        if let Some(root) = root
            && root != self.cr3
        {
            let mut sregs = self.sregs()?;
            sregs.cr3 = root.addr();
            self.put_sregs(&sregs)?;
            self.cr3 = root;
        }
        Ok(())
    }
}
