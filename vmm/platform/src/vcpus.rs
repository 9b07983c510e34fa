//! The domain's vCPUs as the others see them: which are initialised and which are up,
//! and the context `VCPUOP_initialise` gave a vCPU whose thread has yet to start. The
//! embedder runs a vCPU while it is up and starts it (from [`StartContext`]) the first
//! time it comes up.

use crate::pv::PvVcpu;

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
        })
        .collect()
}
