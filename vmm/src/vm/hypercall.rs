//! The hypercall exits: a call through the hypercall page or a `syscall`, from guest
//! kernel mode a hypercall (dispatch, trace, result, CR3, the platform's register
//! changes), from guest user mode a system call for the guest kernel.

use std::sync::atomic::Ordering;
use std::time::Instant;

use platform::dispatch::{self, Outcome, Served};
use platform::layout::{HYPERCALL_PORT, SYSCALL_PORT};
use platform::pv::{GuestContext, Transfer};
use platform::trace::Record;
use pvmmu_abi::selector::{FLAT_RING3_CS64, FLAT_RING3_SS64};

use pvmmu::SharedCall;
use pvmmu_abi::hypercall::HYPERVISOR_mmu_update;

use super::{Cpu, Entry, Exit, GuestExit, HypercallTiming, SerialSink, Shared, VmError, Wait};
use crate::arch::regs::hypercall_args;

/// What an `mmu_update` exit served without the domain lock leaves to the ordinary
/// (locked) path, with the time the exit arrived.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Handoff {
    /// Served: the value for RAX. The return needs the domain (a timer or an event
    /// upcall is due).
    Return(i64),
    /// Stopped at a preemption point: the guest re-issues it with these arguments.
    Preempted([u64; 5]),
    /// The rest needs the whole machine: serve these arguments now.
    Rest([u64; 5]),
}

/// Serves an `mmu_update` exit (through the hypercall page, or a `syscall` from guest
/// kernel mode) without the domain lock,
/// as far as the library runs it concurrently with other vCPUs' (L1 updates of the
/// caller's own tables: [`pvmmu::SharedMachine::hypercall_mmu_update`]); the shared
/// lock of the machine is all it holds. Returns whether the exit is done: the call
/// ran to its end and nothing else is due on the way back (no timer expired, no event
/// upcall pending; a stop request, a watchdog or another vCPU's kick is seen at the
/// next exit, as after any exit). Otherwise the vCPU carries a [`Handoff`] for the
/// locked path, which finishes the return exactly as for any hypercall. A call from
/// guest user mode, or any other number, goes the ordinary way untouched.
pub(super) fn concurrent_mmu_update(
    shared: &Shared,
    cpu: &mut Cpu,
    entry: Entry,
) -> Result<bool, VmError> {
    // A `syscall` goes this way once it is known to stay at CPL3 on this host (the
    // first one takes the ordinary path, which finds out).
    if entry == Entry::Syscall && cpu.syscall_ring0 != Some(false) {
        return Ok(false);
    }
    // Timed as the ordinary path times a call: from the exit to the library's answer.
    let arrived = Instant::now();
    let mut regs = cpu.vcpu.regs();
    if regs.rax != HYPERVISOR_mmu_update || !cpu.pv.in_kernel(&shared.machine.read()) {
        return Ok(false);
    }
    let args = hypercall_args(&regs);
    let caller = cpu.vcpu.caller;
    // Whether another vCPU's exit is being served this way at the same moment.
    if shared.in_flight.fetch_add(1, Ordering::SeqCst) > 0 {
        shared.concurrent_overlaps.fetch_add(1, Ordering::Relaxed);
    }
    let call = shared.machine.hypercall_mmu_update(caller, args);
    let served = arrived.elapsed();
    shared.in_flight.fetch_sub(1, Ordering::SeqCst);
    let rax = match call? {
        SharedCall::Done(rax) => rax,
        SharedCall::Preempted(next) => {
            cpu.handoff = Some((arrived, Handoff::Preempted(next)));
            return Ok(false);
        }
        SharedCall::Exclusive(rest) => {
            cpu.handoff = Some((arrived, Handoff::Rest(rest)));
            return Ok(false);
        }
    };
    let now = cpu.pv.system_time_ns();
    if cpu.pv.next_deadline().is_some_and(|d| d <= now) || cpu.pv.upcall_due(&shared.machine.read())
    {
        cpu.handoff = Some((arrived, Handoff::Return(rax)));
        return Ok(false);
    }
    match entry {
        Entry::Page => cpu.vcpu.set_rax(rax as u64),
        Entry::Syscall => {
            // Back after the `syscall`, as the ordinary path returns.
            regs.rax = rax as u64;
            regs.rip = regs.rcx;
            regs.rflags = regs.r11 | platform::pv::rflags::IF;
            cpu.vcpu.set_regs(regs);
        }
    }
    shared.concurrent_exits.fetch_add(1, Ordering::Relaxed);
    if let Ok(mut t) = shared.concurrent_timings.lock()
        && let Some(t) = t.as_mut()
    {
        t.push(HypercallTiming {
            nr: HYPERVISOR_mmu_update,
            count: args[1],
            at: arrived - shared.started,
            served,
            invalidation: std::time::Duration::ZERO,
        });
    }
    log::debug!(
        "hypercall mmu_update {args:#x?} from {}.{} (concurrent): {rax}",
        caller.dom,
        caller.vcpu
    );
    Ok(true)
}

/// A plain return of `rax`, nothing else to do.
fn returned(rax: i64) -> Served {
    Served {
        outcome: Outcome::Return(rax),
        roots: None,
        reads: Vec::new(),
        context_changed: false,
        transfer: Default::default(),
        segment_base: None,
        block: false,
        poll: None,
        continuation: None,
    }
}

impl Exit<'_> {
    /// A `syscall` or hypercall-page exit. From guest kernel mode it is a hypercall:
    /// dispatch, trace, result, CR3. From guest user mode it is a system call for the
    /// guest kernel, as Xen treats a `syscall` there (the hypercall page's too).
    pub(super) fn hypercall(&mut self, entry: Entry) -> Result<Option<GuestExit>, VmError> {
        let handoff = self.cpu.handoff.take();
        let arrived = handoff.map_or_else(Instant::now, |(at, _)| at);
        let invalidated = self.m.flusher().stats.time;
        let mut regs = self.cpu.vcpu.regs();
        if entry == Entry::Syscall && self.cpu.syscall_ring0 != Some(false) {
            // Where `syscall` entered ring 0 (hardware KVM), go back to CPL3 first.
            let ring0 = self.cpu.vcpu.sregs()?.cs.dpl == 0;
            self.cpu.syscall_ring0 = Some(ring0);
            if ring0 {
                self.cpu.vcpu.leave_ring0()?;
            }
        }
        if !self.cpu.pv.in_kernel(self.m) {
            return self.user_syscall(entry, regs);
        }
        let (nr, args) = (regs.rax, hypercall_args(&regs));
        if let Some(t) = self.c.tracer.as_mut() {
            t.pages(self.m.memory())?;
        }
        let mut console = SerialSink(self.s.serial.clone());
        let caller = self.cpu.vcpu.caller;
        // A plain return through the hypercall page can go through the rewrite
        // trampoline (decided once the call is served).
        let running = (0u32..64)
            .zip(&self.c.platform.vcpus)
            .filter(|(_, slot)| slot.up && slot.started)
            .fold(0u64, |m, (v, _)| m | 1 << v);
        let flusher = self.m.flusher();
        flusher.rewrite_possible = true;
        flusher.caller = caller.vcpu;
        flusher.running = running;
        let context = call_context(&regs, regs.rip, regs.rflags);
        let mut ctx = context;
        let counted = |c: &mut super::Core| {
            *c.platform.stats.by_number.entry(nr).or_default() += 1;
        };
        let served = match handoff.map(|(_, h)| h) {
            Some(Handoff::Return(rax)) => {
                counted(self.c);
                returned(rax)
            }
            Some(Handoff::Preempted(next)) => {
                counted(self.c);
                Served {
                    continuation: Some(next),
                    ..returned(0)
                }
            }
            // The exclusive rest of a concurrent call, or the call itself.
            rest => {
                let args = match rest {
                    Some(Handoff::Rest(rest)) => rest,
                    _ => args,
                };
                dispatch::dispatch(
                    self.m,
                    &mut console,
                    &mut self.c.platform,
                    &mut self.cpu.pv,
                    &mut ctx,
                    nr,
                    args,
                )?
            }
        };
        if let Some(t) = self.c.tracer.as_mut() {
            t.record(&Record::Hypercall {
                vcpu: caller.vcpu,
                nr,
                args,
                batch: served.reads,
                outcome: served.outcome,
                context,
            })?;
        }
        if let Some(t) = self.c.timings.as_mut() {
            t.push(HypercallTiming {
                nr,
                count: args[1],
                at: arrived - self.s.started,
                served: arrived.elapsed(),
                invalidation: self.m.flusher().stats.time - invalidated,
            });
        }
        if let (Outcome::Return(_), Some(args)) = (&served.outcome, served.continuation) {
            return self.continue_later(entry, regs, nr, args, served.roots);
        }
        match served.outcome {
            Outcome::Return(v) => {
                let mut syscall_return = None;
                if served.context_changed {
                    // `iret`: the guest continues where the frame says (RIP differs
                    // from the `out`, so KVM does not complete it by skipping).
                    regs.rax = v as u64;
                    regs.rip = ctx.rip;
                    regs.rsp = ctx.rsp;
                    regs.rflags = ctx.rflags;
                    regs.rcx = ctx.rcx;
                    regs.r11 = ctx.r11;
                    self.cpu.vcpu.set_regs(regs);
                    self.load_code_and_stack(ctx.cs as u16, ctx.ss as u16)?;
                } else if entry == Entry::Syscall {
                    // Back after the `syscall`, as Xen's return to the guest does.
                    regs.rax = v as u64;
                    regs.rip = regs.rcx;
                    regs.rflags = regs.r11 | platform::pv::rflags::IF;
                    self.cpu.vcpu.set_regs(regs);
                    syscall_return = Some(regs.rcx);
                } else {
                    self.cpu.vcpu.set_rax(v as u64);
                }
                self.transfer(served.transfer)?;
                self.load_debugregs()?;
                self.load_cr0_ts()?;
                if let Some((which, base)) = served.segment_base {
                    use crate::vcpu::SegmentBase as B;
                    use platform::dispatch::SegmentBase as S;
                    // In kernel mode the user GS base is the shadow one.
                    let which = match which {
                        S::Fs => B::Fs,
                        S::GsKernel => B::Gs,
                        S::GsUser => B::ShadowGs,
                    };
                    self.cpu.vcpu.set_segment_base(which, base)?;
                }
                self.sync_descriptor_tables()?;
                if let Some(roots) = served.roots
                    && self.cpu.pv.in_kernel(self.m)
                {
                    self.cpu.vcpu.load_root(roots.kernel)?;
                }
                // The call may have set a timer; one may be due.
                self.service_timers();
                // A hypercall page `out` not redirected: the guest continues after it.
                let out_pending = entry == Entry::Page && !served.context_changed;
                // A wait happens after the exit, without the domain lock; the upcall
                // that ends it is delivered then.
                if served.block {
                    self.cpu.wait = Some(Wait::Block(out_pending));
                } else if let Some(poll) = served.poll {
                    self.cpu.wait = Some(Wait::Poll(poll, out_pending));
                }
                if self.m.flusher().rewrite_pending() {
                    // Entries changed host-side wait for the guest's own rewrite: on
                    // the way back, before any guest code (an upcall handler would run
                    // first: then host-side invalidation instead).
                    let resume = if out_pending { Some(0) } else { syscall_return };
                    if let Some(resume) = resume
                        && self.cpu.wait.is_none()
                        && !self.cpu.pv.upcall_due(self.m)
                    {
                        return self.return_through_rewrite(resume);
                    }
                    self.m.flusher().rewrite_impossible();
                }
                self.m.flusher().rewrite_possible = false;
                if self.cpu.wait.is_some() {
                    // The wait delivers it.
                    return Ok(None);
                }
                self.deliver_pending_upcall(out_pending)
            }
            Outcome::Shutdown(reason) => {
                self.m.flusher().take_rewrite();
                Ok(Some(GuestExit::Shutdown(reason)))
            }
            Outcome::Crash(c) => {
                self.m.flusher().take_rewrite();
                Ok(Some(GuestExit::Crash(c)))
            }
        }
    }

    /// A call that stopped at a preemption point: the guest resumes at its hypercall
    /// instruction with the rewritten arguments (RAX the number again), so that it
    /// issues the rest, as after Xen's continuation; pending events are delivered
    /// first, with that instruction as the interrupted context. The stub's `mov $nr,
    /// %eax` before its `out` (or the `syscall`) runs again: RIP differs from the
    /// exit's, so hardware KVM does not skip the `out` either.
    fn continue_later(
        &mut self,
        entry: Entry,
        mut regs: kvm_bindings::kvm_regs,
        nr: u64,
        args: [u64; 5],
        roots: Option<pvmmu::Roots>,
    ) -> Result<Option<GuestExit>, VmError> {
        [regs.rdi, regs.rsi, regs.rdx, regs.r10, regs.r8] = args;
        regs.rax = nr;
        match entry {
            Entry::Page => regs.rip = self.after_out(regs.rip).wrapping_sub(2 + 5),
            Entry::Syscall => {
                regs.rip = regs.rcx.wrapping_sub(2);
                regs.rflags = regs.r11 | platform::pv::rflags::IF;
            }
        }
        self.cpu.vcpu.set_regs(regs);
        self.c.stats.continuations += 1;
        // What the part done changed reaches the vCPU before it runs again.
        if self.m.flusher().rewrite_pending() {
            self.m.flusher().rewrite_impossible();
        }
        self.m.flusher().rewrite_possible = false;
        self.sync_descriptor_tables()?;
        if let Some(roots) = roots
            && self.cpu.pv.in_kernel(self.m)
        {
            self.cpu.vcpu.load_root(roots.kernel)?;
        }
        self.service_timers();
        self.deliver_pending_upcall(false)
    }

    /// Returns from the hypercall through the rewrite trampoline: the entries to
    /// rewrite go into the ring-0 list, and the guest resumes at the trampoline's
    /// `int3` (whose ring-0 handler rewrites them and flushes the TLB), then at
    /// `resume` (a `syscall` hypercall's return address), or, with `resume` 0, at the
    /// trampoline's `ret`, the one the hypercall page's stub would have made. RAX (and
    /// the rest of the return) is already set.
    fn return_through_rewrite(&mut self, resume: u64) -> Result<Option<GuestExit>, VmError> {
        use platform::layout::{DIRECT_MAP_VA, STORE_VA};
        use vm_memory::Bytes;
        let entries = self.m.flusher().take_rewrite();
        let mut list = Vec::with_capacity((entries.len() + 2) * 8);
        list.extend_from_slice(&(entries.len() as u64).to_le_bytes());
        list.extend_from_slice(&resume.to_le_bytes());
        for a in &entries {
            list.extend_from_slice(&(DIRECT_MAP_VA + (a & !7)).to_le_bytes());
        }
        let at = self
            .c
            .hv
            .vcpu(self.cpu.vcpu.caller.vcpu)
            .map_err(platform::domain::DomainError::from)?
            .store_list_gpa;
        self.m
            .memory()
            .write_slice(&list, vm_memory::GuestAddress(at))?;
        self.m.flusher().note_rewrite(entries.len());
        let mut regs = self.cpu.vcpu.regs();
        regs.rip = STORE_VA;
        self.cpu.vcpu.set_regs(regs);
        Ok(None)
    }

    /// A system call from guest user mode (a `syscall`, or a call through the hypercall
    /// page, which is a `syscall` on Xen): delivered to the guest kernel's syscall
    /// callback.
    fn user_syscall(
        &mut self,
        entry: Entry,
        mut regs: kvm_bindings::kvm_regs,
    ) -> Result<Option<GuestExit>, VmError> {
        if entry == Entry::Page {
            // The page's `out` stands for the `syscall` Xen's page holds: it returns
            // after it, with the flags at the call.
            regs.rcx = self.after_out(regs.rip);
            regs.r11 = regs.rflags;
        }
        let mut ctx = call_context(&regs, regs.rcx, regs.r11);
        match self.cpu.pv.user_syscall(self.m, &mut ctx, 2) {
            Ok(t) => {
                regs.rip = ctx.rip;
                regs.rsp = ctx.rsp;
                regs.rflags = ctx.rflags | platform::pv::rflags::IF;
                self.cpu.vcpu.set_regs(regs);
                self.load_code_and_stack(ctx.cs as u16, ctx.ss as u16)?;
                self.transfer(t)?;
                Ok(None)
            }
            Err(c) => Ok(Some(GuestExit::Crash(c))),
        }
    }

    /// Delivers a pending event upcall on the way back to the guest (Xen's check on
    /// every return to guest context). `out_pending`: the vCPU exited on the hypercall
    /// page's two-byte `out` and continues after it (see [`Vm::after_out`]): the
    /// interrupted context is the instruction after it.
    pub(super) fn deliver_pending_upcall(
        &mut self,
        out_pending: bool,
    ) -> Result<Option<GuestExit>, VmError> {
        // Nothing to deliver (the common case): nothing to read either.
        if !self.cpu.pv.upcall_due(self.m) {
            return Ok(None);
        }
        let mut regs = self.cpu.vcpu.regs();
        let (cs, ss) = if self.cpu.nonflat_segments {
            let s = self.cpu.vcpu.sregs()?;
            (u64::from(s.cs.selector), u64::from(s.ss.selector))
        } else {
            (u64::from(FLAT_RING3_CS64), u64::from(FLAT_RING3_SS64))
        };
        let mut ctx = GuestContext {
            rip: if out_pending {
                self.after_out(regs.rip)
            } else {
                regs.rip
            },
            cs,
            rflags: regs.rflags,
            rsp: regs.rsp,
            ss,
            rcx: regs.rcx,
            r11: regs.r11,
        };
        match self.cpu.pv.deliver_upcall(self.m, &mut ctx) {
            None => Ok(None),
            Some(Ok(t)) => {
                regs.rip = ctx.rip;
                regs.rsp = ctx.rsp;
                regs.rflags = ctx.rflags;
                self.cpu.vcpu.set_regs(regs);
                self.load_code_and_stack(ctx.cs as u16, ctx.ss as u16)?;
                self.transfer(t)?;
                Ok(None)
            }
            Some(Err(c)) => Ok(Some(GuestExit::Crash(c))),
        }
    }

    /// Where the guest continues after the hypercall page's two-byte `out` it exited on:
    /// hardware KVM reports RIP at the `out` and skips it on the next entry; this host's
    /// KVM-PVM reports RIP already past it. Told apart by the bytes at RIP (the `out`
    /// is followed by a `ret`, never by another `out`).
    pub(super) fn after_out(&self, rip: u64) -> u64 {
        let mut view = pvmmu::GuestView::new(self.m.memory(), self.current_root());
        let mut b = [0u8; 2];
        let at_out = view.read(rip, &mut b).is_ok()
            && b[0] == 0xe6
            && matches!(u16::from(b[1]), HYPERCALL_PORT | SYSCALL_PORT);
        if at_out { rip + 2 } else { rip }
    }

    /// Carries out a kernel/user mode switch: CR3 to the new mode's root, GS swapped.
    pub(super) fn transfer(&mut self, t: Transfer) -> Result<(), VmError> {
        if t.mode_switched {
            self.cpu.vcpu.switch_mode(self.current_root())?;
        }
        Ok(())
    }
}

/// The guest context at a call made from CPL3 (a hypercall or a system call): the flat
/// ring-3 selectors, the registers of the exit, and where it returns to with what flags.
fn call_context(regs: &kvm_bindings::kvm_regs, rip: u64, rflags: u64) -> GuestContext {
    GuestContext {
        rip,
        cs: u64::from(FLAT_RING3_CS64),
        rflags,
        rsp: regs.rsp,
        ss: u64::from(FLAT_RING3_SS64),
        rcx: regs.rcx,
        r11: regs.r11,
    }
}
