//! The PV vCPU, as Xen keeps it for a 64-bit PV guest: the virtual IDT (`set_trap_table`),
//! the kernel stack (`stack_switch`), the callbacks (`callback_op`, `set_callbacks`), the
//! guest's view of CR2, and the two transfers of control between the hypervisor and the
//! guest kernel: exception delivery through a bounce frame on the guest kernel's stack
//! (Xen's `pv_inject_event` + `create_bounce_frame`), and the `iret` hypercall (Xen's
//! `do_iret`).
//!
//! Everything here works on a [`GuestContext`], the part of the register state that a
//! transfer changes, so it runs without KVM: the VMM fills the context from a vCPU exit
//! and carries the result back into the vCPU. Guest kernel versus user mode is the PV
//! MMU's (`pvmmu::Vcpu::in_kernel`); a transfer that switches mode says so, and the VMM
//! loads the other root and swaps the GS bases.

#![allow(non_upper_case_globals)] // Xen's names for the callback constants

use pvmmu::{Caller, TlbFlush};
use pvmmu_abi::callback::{
    CALLBACKF_mask_events, CALLBACKOP_register, CALLBACKOP_unregister, CALLBACKTYPE_event,
    CALLBACKTYPE_failsafe, CALLBACKTYPE_nmi, CALLBACKTYPE_syscall, CALLBACKTYPE_syscall32,
    CALLBACKTYPE_sysenter,
};
use pvmmu_abi::layout::is_canonical;
use pvmmu_abi::selector::{FLAT_KERNEL_CS64, FLAT_RING3_CS64, FLAT_RING3_SS64};
use pvmmu_abi::shared_info::VCPU_INFO_UPCALL_MASK_OFFSET;
use pvmmu_abi::trap::TI_MASK_EVENTS;
use pvmmu_abi::vmassist::VMASST_TYPE_architectural_iopl;
use pvmmu_abi::{CallbackRegister, CallbackUnregister, Errno, TrapInfo};
use vm_memory::{Bytes, GuestAddress};

mod bounce;
mod debug;
pub mod segments;
pub mod selector;
pub mod time;
pub mod timer;
pub mod vcpu_op;

pub use debug::{DebugRegs, dr};

/// The PV MMU the vCPU belongs to.
type Mach<F> = pvmmu::Machine<vm_memory::GuestMemoryMmap<()>, F>;

/// RFLAGS bits.
pub mod rflags {
    /// Trap flag.
    pub const TF: u64 = 1 << 8;
    /// Interrupt enable.
    pub const IF: u64 = 1 << 9;
    /// I/O privilege level.
    pub const IOPL: u64 = 3 << 12;
    /// Nested task.
    pub const NT: u64 = 1 << 14;
    /// Resume flag.
    pub const RF: u64 = 1 << 16;
    /// Virtual-8086 mode.
    pub const VM: u64 = 1 << 17;
    /// Alignment check.
    pub const AC: u64 = 1 << 18;
    /// The bit that is always one.
    pub const MBS: u64 = 1 << 1;
    /// Every architectural flag (Xen's `X86_EFLAGS_ALL`).
    pub const ALL: u64 = 0x003f_7fd5;
}

/// The guest's view of CR0 and CR4.
pub mod cr4 {
    /// CR4.TSD.
    pub const TSD: u64 = 1 << 2;
    /// CR4.DE.
    pub const DE: u64 = 1 << 3;
    /// CR4.PAE.
    pub const PAE: u64 = 1 << 5;
    /// CR4.MCE.
    pub const MCE: u64 = 1 << 6;
    /// CR4.OSFXSR.
    pub const OSFXSR: u64 = 1 << 9;
    /// CR4.OSXMMEXCPT.
    pub const OSXMMEXCPT: u64 = 1 << 10;
    /// CR4.FSGSBASE.
    pub const FSGSBASE: u64 = 1 << 16;
    /// CR4.OSXSAVE.
    pub const OSXSAVE: u64 = 1 << 18;
    /// Bits the guest controls (Xen's `PV_CR4_GUEST_MASK`).
    pub const GUEST: u64 = TSD | DE | FSGSBASE | OSXSAVE;
    /// Hardware bits the guest sees (Xen's `PV_CR4_GUEST_VISIBLE_MASK`, as Xen runs).
    pub const VISIBLE: u64 = PAE | MCE | OSFXSR | OSXMMEXCPT;
    /// CR0 as a PV guest reads it (PE MP ET NE WP AM PG), TS added when set.
    pub const CR0: u64 = 0x8005_0033;

    /// Xen's `pv_fixup_guest_cr4`: the guest's choice of the bits it controls (FSGSBASE
    /// only when offered), and the visible hardware bits.
    pub const fn fixup(cr4: u64, fsgsbase: bool) -> u64 {
        let allowed = if fsgsbase { GUEST } else { GUEST & !FSGSBASE };
        (cr4 & allowed) | VISIBLE
    }
}

/// Vectors whose exceptions carry an error code (Xen's `X86_EXC_HAVE_EC`).
pub const fn has_error_code(vector: u8) -> bool {
    matches!(vector, 8 | 10..=14 | 17 | 21 | 29 | 30)
}

impl GuestContext {
    /// Whether CS and SS are Xen's flat 64-bit selectors (what a PV guest runs with
    /// unless it loads others with `iret`).
    pub fn has_flat_segments(&self) -> bool {
        (self.cs, self.ss) == (u64::from(FLAT_RING3_CS64), u64::from(FLAT_RING3_SS64))
    }
}

/// The page-fault error code's user-mode bit.
const PFEC_USER: u32 = 1 << 2;

/// The registers a transfer of control reads and changes. CS and SS are the selectors
/// the guest sees (their RPL tells kernel from user context in a bounce frame).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GuestContext {
    /// RIP.
    pub rip: u64,
    /// CS.
    pub cs: u64,
    /// RFLAGS.
    pub rflags: u64,
    /// RSP.
    pub rsp: u64,
    /// SS.
    pub ss: u64,
    /// RCX (saved in a bounce frame, restored by `iret`).
    pub rcx: u64,
    /// R11 (likewise).
    pub r11: u64,
}

/// What the VMM must do after a transfer, besides taking the new context.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Transfer {
    /// The vCPU switched between guest kernel and user mode: load the root of the new
    /// mode into CR3 and swap the GS bases (Xen's `toggle_guest_mode`).
    pub mode_switched: bool,
}

/// Why the domain must be crashed, as Xen crashes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Crash {
    /// An exception with no handler in the virtual IDT.
    #[error("no handler registered for vector {vector} (error code {error:#x})")]
    NoHandler {
        /// The vector.
        vector: u8,
        /// Its error code (0 if none).
        error: u32,
    },
    /// The stack a bounce frame goes on lies in the hypervisor's range.
    #[error("bounce frame for vector {vector}: stack pointer {rsp:#x} is not a guest address")]
    BadStack {
        /// The vector.
        vector: u8,
        /// The stack pointer.
        rsp: u64,
    },
    /// Writing the bounce frame faulted.
    #[error("bounce frame for vector {vector}: the guest stack at {rsp:#x} is not writable")]
    StackFault {
        /// The vector.
        vector: u8,
        /// Where the frame went.
        rsp: u64,
    },
    /// The `iret` context could not be read from the guest stack.
    #[error("iret: cannot read the iret context at {rsp:#x}")]
    IretFrame {
        /// The guest stack pointer.
        rsp: u64,
    },
    /// `iret` to user mode without user page tables.
    #[error("iret: switching to user mode with no user page tables")]
    NoUserRoot,
    /// An instruction the host had to emulate and could not (KVM's internal-error exit,
    /// e.g. `fxsave64` or `xsave64` into a mapped MMIO page). On Xen the hardware runs
    /// it against the device; here nothing can complete it, so the domain ends as one
    /// that cannot continue, with the instruction named.
    #[error(
        "the host cannot emulate the instruction at {rip:#x} (KVM internal error, suberror {suberror})"
    )]
    Unemulated {
        /// Where the instruction is.
        rip: u64,
        /// KVM's `internal.suberror` (1: emulation failure).
        suberror: u32,
    },
}

impl Crash {
    /// The kind of crash as a number (traces store it).
    pub fn code(&self) -> u64 {
        match self {
            Crash::NoHandler { .. } => 1,
            Crash::BadStack { .. } => 2,
            Crash::StackFault { .. } => 3,
            Crash::IretFrame { .. } => 4,
            Crash::NoUserRoot => 5,
            Crash::Unemulated { .. } => 6,
        }
    }

    /// A crash of kind `code` (details unknown: zero).
    pub fn from_code(code: u64) -> Crash {
        match code {
            1 => Crash::NoHandler {
                vector: 0,
                error: 0,
            },
            2 => Crash::BadStack { vector: 0, rsp: 0 },
            3 => Crash::StackFault { vector: 0, rsp: 0 },
            4 => Crash::IretFrame { rsp: 0 },
            6 => Crash::Unemulated {
                rip: 0,
                suberror: 0,
            },
            _ => Crash::NoUserRoot,
        }
    }
}

/// One entry of the virtual IDT.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Trap {
    /// DPL (bits 0-1) and mask-events (bit 2).
    pub flags: u8,
    /// Code selector (RPL fixed up to 3).
    pub cs: u16,
    /// Handler address (0: none).
    pub address: u64,
}

/// The registered callbacks (Xen's `*_callback_eip` and their event masking).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Callbacks {
    /// Event upcall.
    pub event: u64,
    /// Failsafe (segment reload failed on return to the guest).
    pub failsafe: u64,
    /// Whether the failsafe callback masks events.
    pub failsafe_masks: bool,
    /// 64-bit `syscall` from guest user mode.
    pub syscall: u64,
    /// Whether the syscall callback masks events.
    pub syscall_masks: bool,
    /// 32-bit `syscall`.
    pub syscall32: u64,
    /// Whether it masks events.
    pub syscall32_masks: bool,
    /// `sysenter`.
    pub sysenter: u64,
    /// Whether it masks events.
    pub sysenter_masks: bool,
}

/// Fixes up the RPL of a guest selector for a 64-bit PV guest (kernel RPL 3).
pub(crate) const fn fixup_selector(sel: u64) -> u64 {
    if sel & 3 >= 3 { sel } else { (sel & !3) | 3 }
}

/// The PV state of one vCPU.
#[derive(Debug, Clone)]
pub struct PvVcpu {
    caller: Caller,
    traps: Vec<Trap>,
    /// Kernel stack selector (`stack_switch`).
    pub kernel_ss: u64,
    /// Kernel stack pointer (`stack_switch`): where bounces from user mode go.
    pub kernel_sp: u64,
    /// The callbacks.
    pub callbacks: Callbacks,
    /// The guest's CR2 (what `mov %cr2` reads).
    pub cr2: u64,
    /// The guest's CR4 (Xen's `ctrlreg[4]`): the bits it controls and the hardware bits
    /// it may see.
    pub cr4: u64,
    /// The debug registers.
    pub debug: DebugRegs,
    /// CR0.TS as the guest set it (`fpu_taskswitch`, `clts`).
    pub cr0_ts: bool,
    /// Whether CR0.TS must be loaded into the vCPU again.
    pub cr0_dirty: bool,
    /// The virtual I/O privilege level, as RFLAGS.IOPL bits (`PHYSDEVOP_set_iopl`, or
    /// `iret` with the architectural_iopl assist).
    pub iopl: u64,
    /// Guest-physical address of this vCPU's `vcpu_info`.
    pub(crate) vcpu_info: u64,
    /// The registered runstate area (guest virtual), if any.
    pub runstate_area: Option<u64>,
    /// The registered secondary time area (guest virtual), if any.
    pub time_area: Option<u64>,
    /// The last `vcpu_time_info` written into `vcpu_info`, for the secondary areas.
    pub(crate) last_time: Option<[u8; vcpu_op::TIME_INFO_SIZE]>,
    /// When the vCPU was created: system time 0.
    epoch: std::time::Instant,
    /// The timers.
    pub timers: timer::Timers,
}

impl PvVcpu {
    /// vCPU `caller`, whose `vcpu_info` is at guest-physical `vcpu_info`.
    pub fn new(caller: Caller, vcpu_info: u64) -> PvVcpu {
        PvVcpu {
            caller,
            traps: vec![Trap::default(); 256],
            kernel_ss: 0,
            kernel_sp: 0,
            callbacks: Callbacks::default(),
            cr2: 0,
            cr4: cr4::fixup(0, false),
            debug: DebugRegs::default(),
            cr0_ts: false,
            cr0_dirty: false,
            iopl: 0,
            vcpu_info,
            runstate_area: None,
            time_area: None,
            last_time: None,
            epoch: std::time::Instant::now(),
            timers: timer::Timers::default(),
        }
    }

    /// Another vCPU of the same domain (`caller`, its `vcpu_info` at `vcpu_info`), with
    /// the same system time 0, in its initial state.
    pub fn sibling(&self, caller: Caller, vcpu_info: u64) -> PvVcpu {
        PvVcpu {
            epoch: self.epoch,
            ..PvVcpu::new(caller, vcpu_info)
        }
    }

    /// Sets entry `vector` of the virtual IDT (`VCPUOP_initialise` copies all 256).
    pub(crate) fn set_trap(&mut self, vector: usize, trap: Trap) {
        if let Some(t) = self.traps.get_mut(vector) {
            *t = trap;
        }
    }

    /// Where this vCPU's `vcpu_info` is (guest-physical).
    pub fn vcpu_info(&self) -> u64 {
        self.vcpu_info
    }

    /// Follows what another vCPU set for this one: a `vcpu_info`, a runstate area, a
    /// periodic timer's period (0: stopped; the next expiry one period from now), a
    /// secondary time area (0: unregistered; written from the next time update on).
    pub fn follow(
        &mut self,
        vcpu_info: u64,
        runstate_area: Option<u64>,
        period: Option<u64>,
        time_area: Option<u64>,
    ) {
        if vcpu_info != 0 {
            self.vcpu_info = vcpu_info;
        }
        if runstate_area.is_some() {
            self.runstate_area = runstate_area;
        }
        if let Some(va) = time_area {
            self.time_area = (va != 0).then_some(va);
        }
        if let Some(p) = period {
            self.timers.period = p;
            self.timers.periodic_next = self.system_time_ns().saturating_add(p);
        }
    }

    /// When the vCPU was created: its system time 0.
    pub fn epoch(&self) -> std::time::Instant {
        self.epoch
    }

    /// The vCPU.
    pub fn caller(&self) -> Caller {
        self.caller
    }

    /// The virtual IDT entry of `vector`.
    pub fn trap(&self, vector: u8) -> Trap {
        self.traps[usize::from(vector)]
    }

    /// Whether the domain runs with the architectural_iopl assist.
    pub(super) fn architectural_iopl<F: TlbFlush>(&self, m: &Mach<F>) -> bool {
        m.domain(self.caller.dom)
            .is_some_and(|d| d.has_assist(VMASST_TYPE_architectural_iopl))
    }

    /// Xen's `iopl_ok`: whether the virtual IOPL admits I/O instructions (and `cli`,
    /// `sti`) at the guest's privilege: 3 in user mode, 1 in kernel mode (0 with the
    /// architectural_iopl assist).
    pub fn iopl_ok<F: TlbFlush>(&self, m: &Mach<F>) -> bool {
        let cpl: u64 = match (self.in_kernel(m), self.architectural_iopl(m)) {
            (false, _) => 3,
            (true, true) => 0,
            (true, false) => 1,
        };
        cpl << 12 <= self.iopl
    }

    /// `PHYSDEVOP_set_iopl`. Returns RAX.
    pub fn set_iopl(&mut self, iopl: u32) -> i64 {
        if iopl > 3 {
            return Errno::EINVAL.neg();
        }
        self.iopl = u64::from(iopl) << 12;
        0
    }

    /// Whether the vCPU is in guest kernel mode.
    pub fn in_kernel<F: TlbFlush>(&self, m: &Mach<F>) -> bool {
        m.domain(self.caller.dom)
            .and_then(|d| d.vcpus().get(self.caller.vcpu as usize))
            .is_none_or(|v| v.in_kernel)
    }

    /// The current upcall mask (`vcpu_info.evtchn_upcall_mask`).
    pub fn upcall_mask<F: TlbFlush>(&self, m: &Mach<F>) -> u8 {
        m.memory()
            .read_obj(GuestAddress(
                self.vcpu_info + VCPU_INFO_UPCALL_MASK_OFFSET as u64,
            ))
            .unwrap_or(1)
    }

    pub(crate) fn set_upcall_mask<F: TlbFlush>(&self, m: &Mach<F>, mask: u8) {
        let at = GuestAddress(self.vcpu_info + VCPU_INFO_UPCALL_MASK_OFFSET as u64);
        let _ = m.memory().write_obj(mask, at);
    }

    /// Xen's `toggle_guest_mode`: flips kernel/user mode in the PV MMU.
    pub(super) fn toggle_mode<F: TlbFlush>(&self, m: &mut Mach<F>) {
        let in_kernel = self.in_kernel(m);
        let _ = m.set_kernel_mode(self.caller, !in_kernel);
    }

    /// `set_trap_table(traps)`: entries until one with address 0; a null pointer clears
    /// the whole table. Returns RAX.
    pub fn set_trap_table<F: TlbFlush>(&mut self, m: &Mach<F>, traps: u64) -> i64 {
        if traps == 0 {
            self.traps.fill(Trap::default());
            return 0;
        }
        let mut view = m.kernel_view(self.caller);
        let mut at = traps;
        loop {
            let mut b = [0u8; TrapInfo::SIZE];
            if view.read(at, &mut b).is_err() {
                return Errno::EFAULT.neg();
            }
            let t = TrapInfo::from_bytes(&b);
            if t.address == 0 {
                return 0;
            }
            if !is_canonical(t.address) {
                return Errno::EINVAL.neg();
            }
            self.traps[usize::from(t.vector)] = Trap {
                flags: t.flags,
                cs: fixup_selector(u64::from(t.cs)) as u16,
                address: t.address,
            };
            at = at.wrapping_add(TrapInfo::SIZE as u64);
        }
    }

    /// `fpu_taskswitch(set)` (and `clts`, with `set` false): the guest's CR0.TS, which
    /// the vCPU then runs with, so the next FPU instruction raises #NM. Returns RAX.
    pub fn fpu_taskswitch(&mut self, set: bool) -> i64 {
        self.cr0_ts = set;
        self.cr0_dirty = true;
        0
    }

    /// CR0 as the guest reads it.
    pub fn cr0(&self) -> u64 {
        /// CR0.TS.
        const TS: u64 = 1 << 3;
        if self.cr0_ts { cr4::CR0 | TS } else { cr4::CR0 }
    }

    /// `stack_switch(ss, esp)`. Returns RAX.
    pub fn stack_switch(&mut self, ss: u64, sp: u64) -> i64 {
        self.kernel_ss = fixup_selector(ss);
        self.kernel_sp = sp;
        0
    }

    /// Registers one callback (Xen's `register_guest_callback`). Returns RAX.
    fn register_callback(&mut self, reg: &CallbackRegister) -> i64 {
        if !is_canonical(reg.address) {
            return Errno::EINVAL.neg();
        }
        let masks = reg.flags & CALLBACKF_mask_events != 0;
        let c = &mut self.callbacks;
        match reg.ty {
            CALLBACKTYPE_event => c.event = reg.address,
            CALLBACKTYPE_failsafe => (c.failsafe, c.failsafe_masks) = (reg.address, masks),
            CALLBACKTYPE_syscall => (c.syscall, c.syscall_masks) = (reg.address, masks),
            CALLBACKTYPE_syscall32 => (c.syscall32, c.syscall32_masks) = (reg.address, masks),
            CALLBACKTYPE_sysenter => (c.sysenter, c.sysenter_masks) = (reg.address, masks),
            CALLBACKTYPE_nmi => {
                // The NMI callback is the virtual IDT's vector 2, events masked.
                self.traps[2] = Trap {
                    flags: TI_MASK_EVENTS,
                    cs: FLAT_KERNEL_CS64,
                    address: reg.address,
                };
            }
            _ => return Errno::ENOSYS.neg(),
        }
        0
    }

    /// `callback_op(cmd, arg)`. Returns RAX.
    pub fn callback_op<F: TlbFlush>(&mut self, m: &Mach<F>, cmd: u64, arg: u64) -> i64 {
        let mut view = m.kernel_view(self.caller);
        match cmd as u32 {
            CALLBACKOP_register => {
                let mut b = [0u8; CallbackRegister::SIZE];
                if view.read(arg, &mut b).is_err() {
                    return Errno::EFAULT.neg();
                }
                self.register_callback(&CallbackRegister::from_bytes(&b))
            }
            CALLBACKOP_unregister => {
                let mut b = [0u8; CallbackUnregister::SIZE];
                if view.read(arg, &mut b).is_err() {
                    return Errno::EFAULT.neg();
                }
                match CallbackUnregister::from_bytes(&b).ty {
                    CALLBACKTYPE_event
                    | CALLBACKTYPE_failsafe
                    | CALLBACKTYPE_syscall
                    | CALLBACKTYPE_syscall32
                    | CALLBACKTYPE_sysenter => Errno::EINVAL.neg(),
                    CALLBACKTYPE_nmi => {
                        self.traps[2] = Trap::default();
                        0
                    }
                    _ => Errno::ENOSYS.neg(),
                }
            }
            _ => Errno::ENOSYS.neg(),
        }
    }

    /// `set_callbacks(event, failsafe, syscall)`: always 0 (bad addresses are ignored,
    /// as Xen ignores them).
    pub fn set_callbacks(&mut self, event: u64, failsafe: u64, syscall: u64) -> i64 {
        for (kind, address) in [
            (CALLBACKTYPE_event, event),
            (CALLBACKTYPE_failsafe, failsafe),
            (CALLBACKTYPE_syscall, syscall),
        ] {
            let reg = CallbackRegister {
                ty: kind,
                flags: 0,
                address,
                ..CallbackRegister::default()
            };
            let _ = self.register_callback(&reg);
        }
        0
    }
}
