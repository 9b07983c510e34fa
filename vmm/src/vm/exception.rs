//! The exception exits: what the hypervisor decides itself (writable page tables, the
//! instructions it emulates: forced-emulation CPUID, control and debug registers, MSRs,
//! I/O under the virtual IOPL, M2P loads at Xen's address), then delivery to the guest
//! kernel's handler; with no handler, a fault report.

use log::debug;
use platform::domain::{DomainError, describe_path};
use platform::layout::stack_va;
use platform::pv::Crash;
use platform::trace::{Record, ptwr_code};
use pvmmu_abi::layout::RO_MPT_VIRT_START;
use vm_memory::{Bytes, GuestAddress};

use super::descriptors::LdtOutcome;
use super::{Exit, GuestExit, VmError};
use crate::arch::msr;
use crate::emulate;
use crate::fault::{ExceptionFrame, FaultReport, vector_name};

impl Exit<'_> {
    /// An exception exit. First what the hypervisor itself decides (writable page
    /// tables, M2P reads at Xen's address, the forced-emulation CPUID, privileged
    /// instructions), then delivery to the guest kernel's handler; with no handler, a
    /// fault report.
    pub(super) fn exception(&mut self) -> Result<Option<GuestExit>, VmError> {
        let mut regs = self.cpu.vcpu.regs();
        let sregs = self.cpu.vcpu.sregs()?;
        let mem = self.m.memory();
        let me = self.cpu.vcpu.caller.vcpu;
        let stack_gpa = self.c.hv.vcpu(me).map_err(DomainError::from)?.stack_gpa;
        let ef = ExceptionFrame::read(mem, stack_va(me), stack_gpa, regs.rsp)?;
        let frame = ef.frame;
        let reason = format!("exception {}", vector_name(frame.vector));
        *self.c.stats.exit_reasons.entry(reason).or_default() += 1;
        debug!(
            "exception {} ({}) error {:#x} at {:#x} (CS {:#x}), CR2 {:#x}",
            frame.vector,
            vector_name(frame.vector),
            frame.error,
            frame.rip,
            frame.cs,
            sregs.cr2
        );
        let caller = self.cpu.vcpu.caller;
        // The guest's registers: the stub's own RSP is not the guest's.
        let mut gregs = regs;
        gregs.rsp = frame.rsp;
        gregs.rip = frame.rip;
        let mut note = None;
        // A fault in the LDT window: the CPU reading the guest's LDT. Filled, or the
        // fault goes to the guest as Xen passes it on (a #PF at the LDT's own address,
        // or #GP).
        let mut cr2 = sregs.cr2;
        let mut redirect = None;
        if frame.vector == 14 {
            match self.ldt_fault(sregs.cr2)? {
                Some(LdtOutcome::Mapped) => return Ok(None),
                Some(LdtOutcome::PageFault(va)) => {
                    cr2 = va;
                    redirect = Some((14u8, frame.error));
                }
                Some(LdtOutcome::GeneralProtection(ec)) => redirect = Some((13, u64::from(ec))),
                None => {}
            }
        }
        if redirect.is_none() && frame.is_ptwr_candidate() {
            if let Some(t) = self.c.tracer.as_mut() {
                t.pages(self.m.memory())?;
            }
            let mut seen = None;
            let mut on_write =
                |w: &pvmmu::PtwrWrite, r: &Result<pvmmu::PtwrOutcome, pvmmu::PtwrRefusal>| {
                    seen = Some((*w, ptwr_code(r)));
                };
            let result = emulate::try_ptwr(
                self.m,
                caller,
                &frame,
                sregs.cr2,
                &gregs,
                &sregs,
                &mut on_write,
            );
            if let (Some(t), Some((write, outcome))) = (self.c.tracer.as_mut(), seen) {
                t.record(&Record::Ptwr {
                    vcpu: caller.vcpu,
                    fault_va: sregs.cr2,
                    write,
                    outcome,
                })?;
            }
            match result {
                Ok(em) => {
                    self.c.stats.ptwr += 1;
                    let mem = self.m.memory();
                    ef.set_rip(mem, frame.rip + em.len)?;
                    if em.zf.is_some() || em.cf.is_some() {
                        ef.set_flags(mem, em.zf, em.cf)?;
                    }
                    if let Some(rax) = em.rax {
                        regs.rax = rax;
                    }
                    if let Some((r, v)) = em.xchg {
                        emulate::set_reg(&mut regs, r, v);
                    }
                    self.cpu.vcpu.set_regs(regs);
                    // A dropped mapping of a descriptor page empties LDT windows.
                    self.sync_descriptor_tables()?;
                    debug!("emulated a page-table write at {:#x}", frame.rip);
                    return Ok(None);
                }
                Err(why) => note = Some(why.to_string()),
            }
        }
        // The faulting instruction, read once for whatever below decodes it (through the
        // root the vCPU runs on).
        let m2p_len = self.m.frames().len() as u64 * 8;
        let in_m2p = (RO_MPT_VIRT_START..RO_MPT_VIRT_START + m2p_len).contains(&sregs.cr2);
        let bytes = if redirect.is_some() {
            Vec::new()
        } else if matches!(frame.vector, 6 | 12 | 13) || (frame.vector == 14 && in_m2p) {
            emulate::fetch(self.m.memory(), self.current_root(), frame.rip)
        } else {
            Vec::new()
        };
        if let Some((skip, new_rsp)) = self.emulate(&frame, sregs.cr2, &bytes, &mut regs, &gregs)? {
            let mut ctx = ef.context(regs.rcx, regs.r11);
            ctx.rip = frame.rip.wrapping_add(skip);
            if let Some(rsp) = new_rsp {
                ctx.rsp = rsp;
            }
            ef.set_context(self.m.memory(), &ctx)?;
            self.cpu.nonflat_segments = !ctx.has_flat_segments();
            self.cpu.vcpu.set_regs(regs);
            return Ok(None);
        }
        // A page fault whose cause the tables no longer show (a flush the hardware had
        // not seen yet): Xen's spurious-fault check retries the access. Once per
        // address and RIP, so that a fault the tables cannot explain still reaches
        // the guest.
        if frame.vector == 14 && redirect.is_none() {
            let key = (frame.rip, sregs.cr2);
            if self.cpu.last_spurious != Some(key) && self.fault_is_spurious(frame.error, sregs.cr2)
            {
                debug!(
                    "spurious page fault at {:#x} for {:#x}: retried",
                    frame.rip, sregs.cr2
                );
                self.cpu.last_spurious = Some(key);
                return Ok(None);
            }
            self.cpu.last_spurious = None;
        }
        // Deliver it to the guest kernel, as Xen does. A software interrupt `int $n`
        // arrives as #GP(n*8+2) from a gate the guest may not use (hardware KVM) or as
        // #UD at the instruction (this host's KVM-PVM): both become Xen's softint rule.
        let (mut vector, mut raw_error) = redirect.unwrap_or((frame.vector as u8, frame.error));
        if vector == 12
            && raw_error == 0
            && emulate::decode(&bytes, frame.rip).is_some_and(|i| !emulate::is_stack_access(&i))
        {
            (vector, raw_error) = (13, 0);
        }
        if vector == 13
            && raw_error == 0
            && let Some(e) = self.selector_fault(&bytes, frame.rip, &gregs, &sregs)
        {
            raw_error = u64::from(e);
        }
        let mut ctx = ef.context(regs.rcx, regs.r11);
        let softint = match vector {
            6 => match bytes.as_slice() {
                [0xcd, n, ..] => Some((*n, 2)),
                _ => None,
            },
            13 if raw_error & 3 == 2 => {
                // The instruction's length: `int3` and `into` are one byte.
                let len = if matches!(bytes.first(), Some(0xcc | 0xce)) {
                    1
                } else {
                    2
                };
                Some(((raw_error >> 3) as u8, len))
            }
            _ => None,
        };
        let delivered = match softint {
            Some((n, len)) => self.cpu.pv.software_interrupt(self.m, &mut ctx, n, len),
            None => {
                if vector == 1 {
                    // What hardware recorded goes into the guest's DR6, and hardware's
                    // DR6 is reset for the next #DB.
                    let hw = self.cpu.vcpu.fd.get_debug_regs()?;
                    self.cpu.pv.merge_dr6(hw.dr6);
                    self.load_debugregs()?;
                }
                let error = emulate_error_code(vector, raw_error);
                let cr2 = (vector == 14).then_some(cr2);
                self.cpu
                    .pv
                    .inject_exception(self.m, &mut ctx, vector, error, cr2)
            }
        };
        match delivered {
            Ok(t) => {
                ef.set_context(self.m.memory(), &ctx)?;
                self.cpu.nonflat_segments = !ctx.has_flat_segments();
                self.transfer(t)?;
                debug!(
                    "delivered {} to the guest handler at {:#x}",
                    vector_name(frame.vector),
                    ctx.rip
                );
                Ok(None)
            }
            Err(Crash::NoHandler { .. }) => {
                let path = describe_path(self.m.memory(), self.m.kernel_root(caller), sregs.cr2);
                Ok(Some(GuestExit::Fault(Box::new(FaultReport {
                    frame,
                    cr2: sregs.cr2,
                    path,
                    note,
                }))))
            }
            Err(c) => Ok(Some(GuestExit::Crash(c))),
        }
    }

    /// The instructions the hypervisor carries out itself at an exception: the forced-
    /// emulation CPUID (#UD), privileged instructions (#GP), loads from the M2P at Xen's
    /// address (#PF); `bytes` is the instruction, fetched when the vector is one of
    /// these. Results go to `regs` (the exit's registers); operands are read from
    /// `operands` (the guest's registers: RSP and RIP as the exception frame has them).
    /// Returns the bytes to skip when it emulated one, and the guest's new RSP when the
    /// instruction wrote it (it lives in the exception frame).
    fn emulate(
        &mut self,
        frame: &crate::fault::Frame,
        cr2: u64,
        bytes: &[u8],
        regs: &mut kvm_bindings::kvm_regs,
        operands: &kvm_bindings::kvm_regs,
    ) -> Result<Option<(u64, Option<u64>)>, VmError> {
        let caller = self.cpu.vcpu.caller;
        if bytes.is_empty() || !matches!(frame.vector, 6 | 13 | 14) {
            return Ok(None);
        }
        if frame.vector == 6 {
            let Some(len) = emulate::forced_cpuid(bytes) else {
                return Ok(None);
            };
            let [a, b, c, d] = self.c.cpuid.query(regs.rax as u32, regs.rcx as u32);
            (regs.rax, regs.rbx, regs.rcx, regs.rdx) =
                (u64::from(a), u64::from(b), u64::from(c), u64::from(d));
            debug!("forced-emulation cpuid at {:#x}", frame.rip);
            return Ok(Some((len, None)));
        }
        let Some(ins) = emulate::decode(bytes, frame.rip) else {
            return Ok(None);
        };
        if frame.vector == 13 {
            let len = ins.len() as u64;
            let kernel = self.cpu.pv.in_kernel(self.m);
            let value = match emulate::privileged_op(&ins) {
                // Control registers, from guest kernel mode only (user mode gets the #GP).
                Some(emulate::PrivilegedOp::ReadCr { cr, dst }) if kernel => {
                    let v = match cr {
                        0 => self.cpu.pv.cr0(),
                        2 => self.cpu.pv.cr2,
                        3 => self.m.kernel_root(caller).map_or(0, |r| r.addr()),
                        _ => self.cpu.pv.cr4,
                    };
                    (dst, v)
                }
                Some(emulate::PrivilegedOp::WriteCr { cr: 4, src }) if kernel => {
                    let v = emulate::gpr(operands, src).unwrap_or(0);
                    let fsgsbase = self.c.cpuid.query(7, 0)[1] & 1 != 0;
                    self.cpu.pv.cr4 = platform::pv::cr4::fixup(v, fsgsbase);
                    // The guest's FSGSBASE choice is the hardware's.
                    self.cpu
                        .vcpu
                        .set_fsgsbase(self.cpu.pv.cr4 & platform::pv::cr4::FSGSBASE != 0)?;
                    return Ok(Some((len, None)));
                }
                // With the I/O privilege the guest asked for: `cli`/`sti` do nothing
                // (Xen does not track them), port reads from ports a domU does not own
                // give all ones and writes are dropped, as Xen's emulation does.
                Some(emulate::PrivilegedOp::InterruptFlag | emulate::PrivilegedOp::Out)
                    if self.cpu.pv.iopl_ok(self.m) =>
                {
                    return Ok(Some((len, None)));
                }
                Some(emulate::PrivilegedOp::In { dst }) if self.cpu.pv.iopl_ok(self.m) => {
                    (dst, u64::MAX)
                }
                Some(emulate::PrivilegedOp::ReadDr { dr, dst }) if kernel => {
                    match self.cpu.pv.get_debugreg(dr) {
                        Some(v) => (dst, v),
                        None => return Ok(None),
                    }
                }
                Some(emulate::PrivilegedOp::WriteDr { dr, src }) if kernel => {
                    let v = emulate::gpr(operands, src).unwrap_or(0);
                    if self.cpu.pv.set_debugreg(dr, v).is_err() {
                        return Ok(None);
                    }
                    self.load_debugregs()?;
                    return Ok(Some((len, None)));
                }
                Some(emulate::PrivilegedOp::Clts) if kernel => {
                    self.cpu.pv.fpu_taskswitch(false);
                    self.load_cr0_ts()?;
                    return Ok(Some((len, None)));
                }
                // A domU may not flush caches: Xen ignores it.
                Some(emulate::PrivilegedOp::Wbinvd) if kernel => return Ok(Some((len, None))),
                // `hlt` blocks the vCPU until an event (as SCHEDOP_block); with no
                // event sources yet, it returns at once.
                Some(emulate::PrivilegedOp::Hlt) if kernel => return Ok(Some((len, None))),
                Some(emulate::PrivilegedOp::Rdmsr) if kernel => {
                    match self.read_msr(regs.rcx as u32)? {
                        Some(v) => {
                            regs.rax = v & 0xffff_ffff;
                            regs.rdx = v >> 32;
                            return Ok(Some((len, None)));
                        }
                        None => return Ok(None),
                    }
                }
                Some(emulate::PrivilegedOp::Wrmsr) if kernel => {
                    let v = (regs.rdx << 32) | (regs.rax & 0xffff_ffff);
                    return Ok(self.write_msr(regs.rcx as u32, v)?.then_some((len, None)));
                }
                // The rest: the guest gets the #GP.
                _ => return Ok(None),
            };
            return Ok(Some((
                len,
                set_operand(regs, value.0, value.1, operands.rsp),
            )));
        }
        // A load from the read-only M2P: read the M2P itself (the guest may read any
        // of it; a load straddling its end reads what there is).
        let Some((dst, size)) = emulate::plain_load(&ins) else {
            return Ok(None);
        };
        let mut b = [0u8; 8];
        let n = size.min(8);
        let at = self.c.hv.m2p_gpa + (cr2 - RO_MPT_VIRT_START);
        if self
            .m
            .memory()
            .read_slice(&mut b[..n], GuestAddress(at))
            .is_err()
        {
            return Ok(None);
        }
        let new_rsp = set_operand(regs, dst, u64::from_le_bytes(b), operands.rsp);
        Ok(Some((ins.len() as u64, new_rsp)))
    }

    /// The #GP error code hardware gives when the instruction in `bytes` loads a
    /// selector beyond the guest's descriptor tables (`platform::pv::selector`),
    /// decoded the way the CPU's vendor decodes it: this host reads a `rex64 lcall`'s
    /// far pointer the Intel way on AMD and reports #GP(0) for the null selector it
    /// finds there; AMD hardware (and so Xen) reports the selector the AMD form reads.
    /// `None` for any other #GP(0).
    fn selector_fault(
        &self,
        bytes: &[u8],
        rip: u64,
        regs: &kvm_bindings::kvm_regs,
        sregs: &kvm_bindings::kvm_sregs,
    ) -> Option<u32> {
        let caller = self.cpu.vcpu.caller;
        let v = self
            .m
            .domain(caller.dom)?
            .vcpus()
            .get(caller.vcpu as usize)?;
        let (gdt_ents, ldt_ents) = (v.gdt_ents, v.ldt_ents);
        let mut view = pvmmu::GuestView::new(self.m.memory(), self.current_root());
        let mut read = |va: u64| view.read_array::<2>(va).ok().map(u16::from_le_bytes);
        let sel =
            emulate::loaded_selector(bytes, rip, self.c.cpuid.is_amd(), regs, sregs, &mut read)?;
        platform::pv::selector::beyond_table_error(sel, gdt_ents, ldt_ents)
    }

    /// Whether the guest's current tables allow the access a #PF with `error` at `va`
    /// reported (present, writable for a write, executable for a fetch, user-visible:
    /// the guest runs at CPL3).
    fn fault_is_spurious(&self, error: u64, va: u64) -> bool {
        const WRITE: u64 = 1 << 1;
        const FETCH: u64 = 1 << 4;
        const RSVD: u64 = 1 << 3;
        if error & RSVD != 0 {
            return false;
        }
        let Some(root) = self.current_root() else {
            return false;
        };
        let Ok(Some(t)) = pvmmu::Walker::new(self.m.memory()).translate(root, va) else {
            return false;
        };
        let f = t.flags;
        f.contains(pvmmu::PteFlags::PRESENT | pvmmu::PteFlags::USER)
            && (error & WRITE == 0 || f.contains(pvmmu::PteFlags::RW))
            && (error & FETCH == 0 || !f.contains(pvmmu::PteFlags::NX))
    }

    /// Loads the guest's CR0.TS into the vCPU when it changed.
    pub(super) fn load_cr0_ts(&mut self) -> Result<(), VmError> {
        if !self.cpu.pv.cr0_dirty {
            return Ok(());
        }
        self.cpu.pv.cr0_dirty = false;
        self.cpu.vcpu.set_cr0_ts(self.cpu.pv.cr0_ts)?;
        Ok(())
    }

    /// Loads the guest's debug registers into the vCPU when they changed.
    pub(super) fn load_debugregs(&mut self) -> Result<(), VmError> {
        let d = &mut self.cpu.pv.debug;
        if !d.dirty {
            return Ok(());
        }
        d.dirty = false;
        let regs = kvm_bindings::kvm_debugregs {
            db: d.dr,
            dr6: d.dr6,
            dr7: d.dr7,
            ..Default::default()
        };
        self.cpu.vcpu.fd.set_debug_regs(&regs)?;
        Ok(())
    }

    /// RDMSR as Xen emulates it for a 64-bit PV kernel: `None` means #GP. Unlisted MSRs
    /// read as 0 while the guest has no #GP handler (Xen's early-boot leniency), else
    /// fault.
    fn read_msr(&mut self, index: u32) -> Result<Option<u64>, VmError> {
        Ok(match index {
            msr::FS_BASE | msr::GS_BASE | msr::SHADOW_GS_BASE => {
                let (fs, gs, shadow) = self.cpu.vcpu.segment_bases()?;
                Some(match index {
                    msr::FS_BASE => fs,
                    msr::GS_BASE => gs,
                    _ => shadow,
                })
            }
            msr::EFER => Some(crate::arch::regs::EFER),
            msr::PAT => Some(platform::layout::XEN_PAT),
            msr::APIC_BASE => {
                let bsp = if self.cpu.vcpu.caller.vcpu == 0 {
                    1 << 8
                } else {
                    0
                };
                Some(0xfee0_0000 | (1 << 11) | bsp)
            }
            msr::PERF_CAPABILITIES => Some(0),
            // Xen's virtual machine-check architecture for PV (vmce): two banks, no
            // error ever logged; MCi_CTL reads all ones.
            msr::MCG_CAP => Some(if self.c.cpuid.is_amd() {
                msr::GUEST_MC_BANKS
            } else {
                msr::MCG_TES_P | msr::MCG_SER_P | msr::GUEST_MC_BANKS
            }),
            msr::MCG_STATUS => Some(self.cpu.vmce[0]),
            msr::MCG_CTL => Some(0),
            msr::MC_BANKS_FIRST..=msr::MC_BANKS_LAST => {
                Some(match (index - msr::MC_BANKS_FIRST) % 4 {
                    0 => u64::MAX,
                    r => {
                        let bank = (index - msr::MC_BANKS_FIRST) / 4;
                        if bank < msr::GUEST_MC_BANKS as u32 {
                            self.cpu.vmce[1 + bank as usize * 3 + r as usize - 1]
                        } else {
                            0
                        }
                    }
                })
            }
            _ if self.cpu.pv.trap(13).address == 0 && index >> 16 != 0x4000 => Some(0),
            _ => None,
        })
    }

    /// WRMSR as Xen emulates it for a 64-bit PV kernel: `false` means #GP.
    fn write_msr(&mut self, index: u32, value: u64) -> Result<bool, VmError> {
        use crate::vcpu::SegmentBase;
        let which = match index {
            msr::FS_BASE => SegmentBase::Fs,
            msr::GS_BASE => SegmentBase::Gs,
            msr::SHADOW_GS_BASE => SegmentBase::ShadowGs,
            // Writing EFER back unchanged is allowed (Linux does); changing it is not.
            msr::EFER => return Ok(value == crate::arch::regs::EFER),
            msr::MCG_STATUS => {
                self.cpu.vmce[0] = value;
                return Ok(true);
            }
            msr::MCG_CTL => return Ok(true),
            msr::MC_BANKS_FIRST..=msr::MC_BANKS_LAST => {
                let (bank, r) = (
                    (index - msr::MC_BANKS_FIRST) / 4,
                    (index - msr::MC_BANKS_FIRST) % 4,
                );
                if r != 0 && bank < msr::GUEST_MC_BANKS as u32 {
                    self.cpu.vmce[1 + bank as usize * 3 + r as usize - 1] = value;
                }
                return Ok(true);
            }
            _ => return Ok(false),
        };
        if !pvmmu_abi::layout::is_canonical(value) {
            return Ok(false);
        }
        self.cpu.vcpu.set_segment_base(which, value)?;
        Ok(true)
    }
}

/// Writes an emulated instruction's result to register `r`: into `regs`, or, for RSP,
/// as the guest's new RSP (returned; it belongs in the exception frame).
fn set_operand(
    regs: &mut kvm_bindings::kvm_regs,
    r: iced_x86::Register,
    value: u64,
    guest_rsp: u64,
) -> Option<u64> {
    if r.full_register() == iced_x86::Register::RSP {
        let mut scratch = kvm_bindings::kvm_regs {
            rsp: guest_rsp,
            ..Default::default()
        };
        emulate::set_reg(&mut scratch, r, value);
        return Some(scratch.rsp);
    }
    emulate::set_reg(regs, r, value);
    None
}

/// The error code exception `vector` delivers, if it has one.
fn emulate_error_code(vector: u8, error: u64) -> Option<u32> {
    platform::pv::has_error_code(vector).then_some(error as u32)
}
