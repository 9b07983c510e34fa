//! Transfers of control into the guest kernel and back: exception delivery through a
//! bounce frame (Xen's `pv_inject_event` and `create_bounce_frame`), software
//! interrupts by the trap table's DPL, user-mode system calls to the syscall callback,
//! and the `iret` hypercall (Xen's `do_iret`).

use pvmmu::TlbFlush;
use pvmmu_abi::IretContext;
use pvmmu_abi::layout::{HYPERVISOR_VIRT_END, HYPERVISOR_VIRT_START};
use pvmmu_abi::selector::{FLAT_KERNEL_CS64, FLAT_RING3_SS64};
use pvmmu_abi::shared_info::VCPU_INFO_ARCH_CR2_OFFSET;
use pvmmu_abi::trap::{BOUNCE_CS_UPCALL_MASK_SHIFT, TI_MASK_EVENTS, VGCF_in_syscall};
use vm_memory::{Bytes, GuestAddress};

use super::{
    Crash, GuestContext, Mach, PFEC_USER, PvVcpu, Transfer, has_error_code, rflags, segments,
};

/// The pseudo-vector an event upcall's crash report names.
pub const EVENT_VECTOR: u8 = 0xff;

impl PvVcpu {
    /// Delivers exception `vector` (with `error`, when the vector has one) to the guest
    /// kernel's handler, as Xen's `pv_inject_event` and `create_bounce_frame` do: the
    /// frame `{RCX, R11, [error], RIP, CS|mask<<32, RFLAGS, RSP, SS}` goes on the kernel
    /// stack (the current one in kernel mode, with the saved CS's RPL cleared; the
    /// `stack_switch` one from user mode, switching to kernel mode), events are masked if
    /// the trap asks, and `ctx` continues at the handler. For #PF, `cr2` becomes the
    /// guest's CR2 and the error code's user bit follows the PV mode.
    pub fn inject_exception<F: TlbFlush>(
        &mut self,
        m: &mut Mach<F>,
        ctx: &mut GuestContext,
        vector: u8,
        error: Option<u32>,
        cr2: Option<u64>,
    ) -> Result<Transfer, Crash> {
        let trap = self.trap(vector);
        let mut error = error.filter(|_| has_error_code(vector));
        if vector == 14 {
            if let Some(cr2) = cr2 {
                self.cr2 = cr2;
                let at = GuestAddress(self.vcpu_info + VCPU_INFO_ARCH_CR2_OFFSET as u64);
                let _ = m.memory().write_obj(cr2, at);
            }
            let user = if self.in_kernel(m) { 0 } else { PFEC_USER };
            error = error.map(|e| (e & !PFEC_USER) | user);
        }
        if trap.address == 0 {
            return Err(Crash::NoHandler {
                vector,
                error: error.unwrap_or(0),
            });
        }
        self.bounce(
            m,
            ctx,
            vector,
            trap.address,
            trap.flags & TI_MASK_EVENTS != 0,
            error,
        )
    }

    /// Delivers a pending event upcall, as Xen does on the way back to the guest: if
    /// `vcpu_info.evtchn_upcall_pending` is set, upcalls are not masked and an event
    /// callback is registered, `ctx` continues at the callback with a bounce frame
    /// (no error code) on the kernel stack and upcalls masked. `None` when nothing is
    /// delivered.
    pub fn deliver_upcall<F: TlbFlush>(
        &mut self,
        m: &mut Mach<F>,
        ctx: &mut GuestContext,
    ) -> Option<Result<Transfer, Crash>> {
        if !self.upcall_due(m) {
            return None;
        }
        // The frame's "vector" only names the event in a crash report.
        let handler = self.callbacks.event;
        Some(self.bounce(m, ctx, EVENT_VECTOR, handler, true, None))
    }

    /// Whether an upcall would be delivered now: one is pending, upcalls are not
    /// masked and an event callback is registered (cheap: the embedder asks before it
    /// builds the interrupted context).
    pub fn upcall_due<F: TlbFlush>(&self, m: &Mach<F>) -> bool {
        use pvmmu_abi::shared_info::VCPU_INFO_UPCALL_PENDING_OFFSET;
        let pending: u8 = m
            .memory()
            .read_obj(GuestAddress(
                self.vcpu_info + VCPU_INFO_UPCALL_PENDING_OFFSET as u64,
            ))
            .unwrap_or(0);
        pending != 0 && self.upcall_mask(m) == 0 && self.callbacks.event != 0
    }

    /// A software interrupt `int $vector` at `ctx.rip` (an instruction of `len` bytes),
    /// as Xen's #GP handler treats one: if the virtual IDT's DPL for the vector permits
    /// it from the current mode (at least 1 from kernel mode, 3 from user mode), the
    /// vector is delivered with RIP past the instruction and no error code; otherwise the
    /// guest gets #GP with error code `vector * 8 + 2` at the instruction.
    pub fn software_interrupt<F: TlbFlush>(
        &mut self,
        m: &mut Mach<F>,
        ctx: &mut GuestContext,
        vector: u8,
        len: u64,
    ) -> Result<Transfer, Crash> {
        let trap = self.trap(vector);
        let needed = if self.in_kernel(m) { 1 } else { 3 };
        if trap.flags & 3 >= needed {
            if trap.address == 0 {
                return Err(Crash::NoHandler { vector, error: 0 });
            }
            ctx.rip = ctx.rip.wrapping_add(len);
            let mask = trap.flags & TI_MASK_EVENTS != 0;
            self.bounce(m, ctx, vector, trap.address, mask, None)
        } else {
            let error = u32::from(vector) * 8 + 2;
            self.inject_exception(m, ctx, 13, Some(error), None)
        }
    }

    /// A `syscall` from guest user mode (Xen's `switch_to_kernel`): `ctx` holds the
    /// state after the instruction (RIP and RFLAGS as the CPU put them in RCX and R11).
    /// It is delivered to the registered syscall callback in kernel mode, DF cleared;
    /// with no callback, the guest gets #UD at the instruction (`len` bytes back).
    pub fn user_syscall<F: TlbFlush>(
        &mut self,
        m: &mut Mach<F>,
        ctx: &mut GuestContext,
        len: u64,
    ) -> Result<Transfer, Crash> {
        /// RFLAGS.DF.
        const DF: u64 = 1 << 10;
        let cb = self.callbacks;
        if cb.syscall == 0 {
            ctx.rip = ctx.rip.wrapping_sub(len);
            return self.inject_exception(m, ctx, 6, None, None);
        }
        let t = self.bounce(m, ctx, 0, cb.syscall, cb.syscall_masks, None)?;
        ctx.rflags &= !DF;
        Ok(t)
    }

    /// `create_bounce_frame`: the frame and the jump to `handler`.
    fn bounce<F: TlbFlush>(
        &mut self,
        m: &mut Mach<F>,
        ctx: &mut GuestContext,
        vector: u8,
        handler: u64,
        mask_events: bool,
        error: Option<u32>,
    ) -> Result<Transfer, Crash> {
        let mut transfer = Transfer::default();
        let mut saved_cs = ctx.cs;
        let sp = if self.in_kernel(m) {
            saved_cs &= !3;
            ctx.rsp
        } else {
            self.toggle_mode(m);
            transfer.mode_switched = true;
            self.kernel_sp
        };
        let sp = sp & !0xf;
        if sp > HYPERVISOR_VIRT_START && sp < HYPERVISOR_VIRT_END + 8 * 8 {
            return Err(Crash::BadStack { vector, rsp: sp });
        }
        let saved_mask = self.upcall_mask(m);
        if mask_events {
            self.set_upcall_mask(m, 1);
        }
        let mut flags = ctx.rflags & !(rflags::IF | rflags::IOPL);
        if saved_mask == 0 {
            flags |= rflags::IF;
        }
        if self.architectural_iopl(m) {
            flags |= self.iopl;
        }
        let mut frame = vec![ctx.rcx, ctx.r11];
        if let Some(e) = error {
            frame.push(u64::from(e));
        }
        frame.extend_from_slice(&[
            ctx.rip,
            (saved_cs & 0xffff) | u64::from(saved_mask) << BOUNCE_CS_UPCALL_MASK_SHIFT,
            flags,
            ctx.rsp,
            ctx.ss,
        ]);
        let bytes: Vec<u8> = frame.iter().flat_map(|w| w.to_le_bytes()).collect();
        let new_sp = sp.wrapping_sub(bytes.len() as u64);
        if m.kernel_view(self.caller).write(new_sp, &bytes).is_err() {
            return Err(Crash::StackFault {
                vector,
                rsp: new_sp,
            });
        }
        ctx.rflags &= !(rflags::AC | rflags::VM | rflags::RF | rflags::NT | rflags::TF);
        ctx.ss = u64::from(FLAT_RING3_SS64);
        ctx.rsp = new_sp;
        ctx.cs = u64::from(FLAT_KERNEL_CS64);
        ctx.rip = handler;
        Ok(transfer)
    }

    /// The `iret` hypercall (Xen's `do_iret`): reads the iret context at `ctx.rsp`,
    /// switches to user mode if its CS has RPL 3, and continues there. Returns the
    /// saved RAX (the hypercall's return value).
    pub fn iret<F: TlbFlush>(
        &mut self,
        m: &mut Mach<F>,
        ctx: &mut GuestContext,
    ) -> Result<(i64, Transfer), Crash> {
        let mut b = [0u8; IretContext::SIZE];
        m.kernel_view(self.caller)
            .read(ctx.rsp, &mut b)
            .map_err(|_| Crash::IretFrame { rsp: ctx.rsp })?;
        let saved = IretContext::from_bytes(&b);
        let mut transfer = Transfer::default();
        if saved.cs & 3 == 3 && self.in_kernel(m) {
            if m.user_root(self.caller).is_none() {
                return Err(Crash::NoUserRoot);
            }
            self.toggle_mode(m);
            transfer.mode_switched = true;
        }
        if self.architectural_iopl(m) {
            self.iopl = saved.rflags & rflags::IOPL;
        }
        ctx.rip = saved.rip;
        // Selectors are 16 bits wide in Xen's frame; RPL forced to 3.
        ctx.cs = (saved.cs | 3) & 0xffff;
        ctx.rflags =
            (saved.rflags & rflags::ALL & !(rflags::IOPL | rflags::VM)) | rflags::IF | rflags::MBS;
        ctx.rsp = saved.rsp;
        ctx.ss = (saved.ss | 3) & 0xffff;
        if saved.flags & VGCF_in_syscall == 0 {
            ctx.r11 = saved.r11;
            ctx.rcx = saved.rcx;
        }
        self.set_upcall_mask(m, u8::from(saved.rflags & rflags::IF == 0));
        if !ctx.has_flat_segments() {
            let (cs, ss) = (ctx.cs as u16, ctx.ss as u16);
            let cs_desc = segments::descriptor(m, self.caller, cs).map(|d| d.0);
            let ss_desc = segments::descriptor(m, self.caller, ss).map(|d| d.0);
            if let Some((vector, error)) = segments::return_fault(cs, cs_desc, ss, ss_desc) {
                // Xen's fix-up for a faulting `iretq`: the guest gets the fault as if
                // raised at its target (the frame holds the target's RIP, CS and SS).
                let t = self.inject_exception(m, ctx, vector, Some(error), None)?;
                transfer.mode_switched ^= t.mode_switched;
            }
        }
        Ok((saved.rax as i64, transfer))
    }
}
