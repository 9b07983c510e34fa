//! The domain's vCPUs as the others see them: which are initialised and which are up,
//! and the context `VCPUOP_initialise` gave a vCPU whose thread has yet to start. The
//! embedder runs a vCPU while it is up and starts it (from [`StartContext`]) the first
//! time it comes up.

use pvmmu::{Caller, Errno, TlbFlush};
use pvmmu_abi::layout::{is_canonical, is_guest_va};

use crate::domain::Mach;
use crate::evtchn::EventChannels;
use crate::pv::{PvVcpu, rflags};

/// One vCPU's state as the domain sees it.
#[derive(Debug, Clone, Default)]
pub struct VcpuSlot {
    /// Its context is set (vCPU 0 by the domain builder, the others by
    /// `VCPUOP_initialise`): Xen's `is_initialised`.
    pub initialised: bool,
    /// It runs (Xen: `_VPF_down` clear).
    pub up: bool,
    /// Whether the embedder has started it (a thread runs it).
    pub started: bool,
    /// The context to start it from, until the embedder takes it.
    pub start: Option<Box<StartContext>>,
    /// A runstate area another vCPU registered for it (guest virtual), which it
    /// follows.
    pub runstate_area: Option<u64>,
    /// A periodic-timer period another vCPU set for it (0: stopped), which it follows.
    pub period: Option<u64>,
    /// A secondary time area another vCPU registered for it (guest virtual; 0:
    /// unregistered), which it follows.
    pub time_area: Option<u64>,
}

/// Where a vCPU starts: its PV state and its registers.
#[derive(Debug, Clone)]
pub struct StartContext {
    /// The PV state (trap table, callbacks, kernel stack, ...).
    pub pv: PvVcpu,
    /// The registers.
    pub regs: StartRegs,
}

/// The registers a vCPU starts with (`vcpu_guest_context.user_regs` and the segment
/// bases), as Xen loads them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StartRegs {
    /// RAX, RBX, RCX, RDX, RSI, RDI, RBP, R8..R15.
    pub rax: u64,
    /// RBX.
    pub rbx: u64,
    /// RCX.
    pub rcx: u64,
    /// RDX.
    pub rdx: u64,
    /// RSI.
    pub rsi: u64,
    /// RDI.
    pub rdi: u64,
    /// RBP.
    pub rbp: u64,
    /// R8..R15.
    pub r: [u64; 8],
    /// RIP.
    pub rip: u64,
    /// RSP.
    pub rsp: u64,
    /// RFLAGS.
    pub rflags: u64,
    /// Code selector.
    pub cs: u16,
    /// Stack selector.
    pub ss: u16,
    /// FS base.
    pub fs_base: u64,
    /// The kernel's GS base.
    pub gs_base_kernel: u64,
    /// The user's GS base.
    pub gs_base_user: u64,
    /// Whether it starts in guest kernel mode (`VGCF_in_kernel`).
    pub kernel: bool,
}

/// The vCPUs of a domain of `n` vCPUs at creation: vCPU 0 initialised and up, the
/// others neither.
///
/// ```
/// let v = platform::vcpus::at_creation(3);
/// assert!(v[0].initialised && v[0].up);
/// assert!(!v[1].initialised && !v[2].up);
/// ```
pub fn at_creation(n: u32) -> Vec<VcpuSlot> {
    (0..n)
        .map(|v| VcpuSlot {
            initialised: v == 0,
            up: v == 0,
            started: v == 0,
            start: None,
            runstate_area: None,
            period: None,
            time_area: None,
        })
        .collect()
}

/// `VCPUOP_initialise`.
pub const VCPUOP_INITIALISE: u32 = 0;
/// `VCPUOP_up`.
pub const VCPUOP_UP: u32 = 1;
/// `VCPUOP_down`.
pub const VCPUOP_DOWN: u32 = 2;
/// `VCPUOP_is_up`.
pub const VCPUOP_IS_UP: u32 = 3;

/// Size of `struct vcpu_guest_context` (x86-64).
pub const VCPU_GUEST_CONTEXT_SIZE: usize = 5168;

/// `VGCF_in_kernel`: start in guest kernel mode.
const VGCF_IN_KERNEL: u64 = 1 << 2;
/// `VGCF_failsafe_disables_events`.
const VGCF_FAILSAFE_DISABLES_EVENTS: u64 = 1 << 3;
/// `VGCF_syscall_disables_events`.
const VGCF_SYSCALL_DISABLES_EVENTS: u64 = 1 << 4;
/// `VGCF_online`: the vCPU is up once initialised.
const VGCF_ONLINE: u64 = 1 << 5;

/// Offsets in `struct vcpu_guest_context`.
mod ctx {
    pub const FLAGS: usize = 512;
    pub const USER_REGS: usize = 520;
    pub const TRAP_CTXT: usize = 720;
    pub const LDT_BASE: usize = 4816;
    pub const LDT_ENTS: usize = 4824;
    pub const GDT_FRAMES: usize = 4832;
    pub const GDT_ENTS: usize = 4960;
    pub const KERNEL_SS: usize = 4968;
    pub const KERNEL_SP: usize = 4976;
    pub const CTRLREG: usize = 4984;
    pub const DEBUGREG: usize = 5048;
    pub const EVENT_CALLBACK: usize = 5112;
    pub const FAILSAFE_CALLBACK: usize = 5120;
    pub const SYSCALL_CALLBACK: usize = 5128;
    pub const FS_BASE: usize = 5144;
    pub const GS_BASE_KERNEL: usize = 5152;
    pub const GS_BASE_USER: usize = 5160;
}

/// RPL forced to 3 (the PV vCPU's selector fixup), for a 16-bit selector field.
fn selector(sel: u64) -> u16 {
    crate::pv::fixup_selector(sel & 0xffff) as u16
}

/// A context word.
fn word(c: &[u8], at: usize) -> u64 {
    c.get(at..at + 8)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u64::from_le_bytes)
}

/// A user_regs word (offset within `struct cpu_user_regs`).
fn reg(c: &[u8], at: usize) -> u64 {
    word(c, ctx::USER_REGS + at)
}

/// `VCPUOP_initialise(target, ctxt)` from `me`, as Xen's `default_initialise_vcpu` and
/// `arch_set_info_guest` serve a 64-bit PV domU: a target with no `vcpu_info` (the
/// dummy) -EINVAL, the context unreadable -EFAULT, a target initialised already
/// -EEXIST; then the context's own checks in Xen's order (debug registers, canonical
/// addresses, the trap table, the LDT, the GDT size, a user-mode start without a user
/// root: -EINVAL), the GDT frames and the roots (-EINVAL when refused, nothing kept).
/// On success the target is initialised, down unless `VGCF_online`, and its start
/// context waits in its slot.
pub fn initialise<F: TlbFlush>(
    m: &mut Mach<F>,
    slots: &mut [VcpuSlot],
    evtchn: &EventChannels,
    me: &PvVcpu,
    target: u32,
    arg: u64,
) -> i64 {
    let caller = me.caller();
    let info = evtchn.vcpu_info.get(target as usize).copied().unwrap_or(0);
    if info == 0 {
        return Errno::EINVAL.neg();
    }
    let mut c = vec![0u8; VCPU_GUEST_CONTEXT_SIZE];
    if let Err(e) = m.kernel_view(caller).read(arg, &mut c) {
        return e.neg();
    }
    let Some(slot) = slots.get_mut(target as usize) else {
        return Errno::ENOENT.neg();
    };
    if slot.initialised {
        return Errno::EEXIST.neg();
    }
    match check_and_build(m, me, target, info, &c) {
        Ok(start) => {
            slot.initialised = true;
            slot.up = word(&c, ctx::FLAGS) & VGCF_ONLINE != 0;
            slot.start = Some(Box::new(start));
            0
        }
        Err(e) => e.neg(),
    }
}

/// `arch_set_info_guest` for a vCPU that has no context yet.
fn check_and_build<F: TlbFlush>(
    m: &mut Mach<F>,
    me: &PvVcpu,
    target: u32,
    vcpu_info: u64,
    c: &[u8],
) -> Result<StartContext, Errno> {
    use crate::pv::{Trap, cr4};
    let einval = Err(Errno::EINVAL);
    let dr = |i: usize| word(c, ctx::DEBUGREG + i * 8);
    if dr(6) >> 32 != 0 || dr(7) >> 32 != 0 || !(0..4).all(|i| is_guest_va(dr(i))) {
        return einval;
    }
    let flags = word(c, ctx::FLAGS);
    let ldt_base = word(c, ctx::LDT_BASE);
    let ldt_ents = word(c, ctx::LDT_ENTS);
    let mut addrs = vec![
        reg(c, 128),
        reg(c, 152),
        word(c, ctx::KERNEL_SP),
        word(c, ctx::FS_BASE),
        word(c, ctx::GS_BASE_KERNEL),
        word(c, ctx::GS_BASE_USER),
        word(c, ctx::EVENT_CALLBACK),
        word(c, ctx::SYSCALL_CALLBACK),
        word(c, ctx::FAILSAFE_CALLBACK),
    ];
    if ldt_ents != 0 {
        addrs.push(ldt_base);
    }
    if !addrs.into_iter().all(is_canonical) {
        return einval;
    }
    let trap = |v: usize| {
        let at = ctx::TRAP_CTXT + v * 16;
        (
            c.get(at + 1).copied().unwrap_or(0),
            word(c, at) >> 16 & 0xffff,
            word(c, at + 8),
        )
    };
    if !(0..256).all(|v| is_canonical(trap(v).2)) {
        return einval;
    }
    if !is_guest_va(ldt_base) || ldt_base & 0xfff != 0 || ldt_ents > 8192 {
        return einval;
    }
    let kernel = flags & VGCF_IN_KERNEL != 0;
    let gdt_ents = word(c, ctx::GDT_ENTS);
    let gdt_frames = gdt_ents.div_ceil(512);
    if gdt_frames > 16 {
        return einval;
    }
    let ctrlreg = |i: usize| word(c, ctx::CTRLREG + i * 8);
    if !kernel && ctrlreg(1) == 0 {
        return einval;
    }
    // The virtual I/O privilege level leaves RFLAGS; the real IF is always on.
    let raw_flags = reg(c, 144);
    let iopl = raw_flags & 0x3000;
    let rflags = (raw_flags & rflags::ALL & !0x3000 & !rflags::VM) | rflags::IF | rflags::MBS;
    let tc = Caller::new(me.caller().dom, target);
    let mut pv = me.sibling(tc, vcpu_info);
    for v in 0..256 {
        let (tflags, cs, address) = trap(v);
        pv.set_trap(
            v,
            Trap {
                flags: tflags,
                cs: selector(cs),
                address,
            },
        );
    }
    // The whole word, as Xen keeps it (`stack_switch` keeps it whole too).
    pv.kernel_ss = crate::pv::fixup_selector(word(c, ctx::KERNEL_SS));
    pv.kernel_sp = word(c, ctx::KERNEL_SP);
    pv.callbacks.event = word(c, ctx::EVENT_CALLBACK);
    pv.callbacks.failsafe = word(c, ctx::FAILSAFE_CALLBACK);
    pv.callbacks.failsafe_masks = flags & VGCF_FAILSAFE_DISABLES_EVENTS != 0;
    pv.callbacks.syscall = word(c, ctx::SYSCALL_CALLBACK);
    pv.callbacks.syscall_masks = flags & VGCF_SYSCALL_DISABLES_EVENTS != 0;
    pv.iopl = iopl;
    pv.cr0_ts = ctrlreg(0) & 8 != 0;
    pv.cr0_dirty = pv.cr0_ts;
    pv.cr4 = cr4::fixup(ctrlreg(4), false);
    // Debug registers as `set_debugreg` takes them, a refused value leaving the reset
    // one (Xen ignores the result).
    for i in [0u32, 1, 2, 3, 6, 7] {
        let _ = pv.set_debugreg(i, dr(i as usize));
    }
    // The GDT, then the roots and the LDT; a refused root releases the GDT again.
    if gdt_ents > crate::hvarea::FIRST_RESERVED_GDT_ENTRY as u64 {
        return einval;
    }
    let frames: Vec<u64> = (0..gdt_frames as usize)
        .map(|i| word(c, ctx::GDT_FRAMES + i * 8))
        .collect();
    match m.set_gdt(tc, &frames, gdt_ents as u32) {
        Ok(Ok(())) => {}
        _ => return einval,
    }
    let roots = m.initialise_vcpu(
        tc,
        ctrlreg(3) >> 12,
        ctrlreg(1) >> 12,
        ldt_base,
        ldt_ents as u32,
    );
    if !matches!(roots, Ok(Ok(()))) {
        let _ = m.set_gdt(tc, &[], 0);
        return einval;
    }
    let _ = m.set_kernel_mode(tc, kernel);
    let regs = StartRegs {
        rax: reg(c, 80),
        rbx: reg(c, 40),
        rcx: reg(c, 88),
        rdx: reg(c, 96),
        rsi: reg(c, 104),
        rdi: reg(c, 112),
        rbp: reg(c, 32),
        r: [
            reg(c, 72),
            reg(c, 64),
            reg(c, 56),
            reg(c, 48),
            reg(c, 24),
            reg(c, 16),
            reg(c, 8),
            reg(c, 0),
        ],
        rip: reg(c, 128),
        rsp: reg(c, 152),
        rflags,
        cs: selector(reg(c, 136)),
        ss: selector(reg(c, 160)),
        fs_base: word(c, ctx::FS_BASE),
        gs_base_kernel: word(c, ctx::GS_BASE_KERNEL),
        gs_base_user: word(c, ctx::GS_BASE_USER),
        kernel,
    };
    Ok(StartContext { pv, regs })
}

/// `VCPUOP_up(target)`: -EINVAL before `VCPUOP_initialise`; else the vCPU is up (a
/// no-op when it is up already). Returns RAX.
pub fn up(slots: &mut [VcpuSlot], evtchn: &EventChannels, target: u32) -> i64 {
    let Some(slot) = slots.get_mut(target as usize) else {
        return Errno::ENOENT.neg();
    };
    if !slot.initialised {
        return Errno::EINVAL.neg();
    }
    if !slot.up {
        slot.up = true;
        evtchn.kick(target);
    }
    0
}

/// `VCPUOP_down(target)`: the vCPU stops (at once for the others' view; a running
/// target stops at its next exit, the caller on its way out of the hypercall). With no
/// other vCPU up, the domain powers off instead (`Some(SHUTDOWN_poweroff)`), as Xen
/// does since 4.11. Returns RAX and the shutdown.
pub fn down(slots: &mut [VcpuSlot], evtchn: &EventChannels, target: u32) -> (i64, Option<u32>) {
    if target as usize >= slots.len() {
        return (Errno::ENOENT.neg(), None);
    }
    let others_up = slots
        .iter()
        .enumerate()
        .any(|(v, s)| v != target as usize && s.up);
    if !others_up {
        return (0, Some(pvmmu_abi::sched::SHUTDOWN_poweroff));
    }
    if let Some(slot) = slots.get_mut(target as usize)
        && slot.up
    {
        slot.up = false;
        evtchn.kick(target);
    }
    (0, None)
}
