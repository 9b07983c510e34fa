//! Guest exceptions that reach the ring-0 stubs: writable-page-table emulation for
//! write faults on the guest's own L1 tables (decoded with iced-x86, validated and
//! applied by the library), and clear reports for everything else.

use std::fmt;
use std::ops::ControlFlow;

use iced_x86::{Decoder, DecoderOptions, Instruction, Mnemonic, OpKind, Register};
use kvm_bindings::{kvm_regs, kvm_sregs};
use pvmmu::{Caller, GuestView, Mfn, PtwrOutcome, PtwrWrite, VaRange, Visit, Walker};
use vm_memory::GuestMemoryMmap;

use crate::hypercall::Vmm;

/// The hardware exception frame the stub left on the ring-0 stack, above the vector and
/// error code it pushed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame {
    /// Vector.
    pub vector: u64,
    /// Error code (0 when the CPU pushes none).
    pub error: u64,
    /// Faulting RIP.
    pub rip: u64,
    /// CS.
    pub cs: u64,
    /// RFLAGS.
    pub rflags: u64,
    /// RSP.
    pub rsp: u64,
    /// SS.
    pub ss: u64,
}

impl Frame {
    /// Decodes the seven words at the stub's RSP.
    pub fn from_words(w: [u64; 7]) -> Frame {
        Frame {
            vector: w[0],
            error: w[1],
            rip: w[2],
            cs: w[3],
            rflags: w[4],
            rsp: w[5],
            ss: w[6],
        }
    }
}

/// A guest exception the VMM does not handle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FaultReport {
    /// The frame.
    pub frame: Frame,
    /// CR2 at the fault.
    pub cr2: u64,
    /// The guest's page-table path to CR2.
    pub path: String,
    /// Why the VMM did not fix it up (for page faults on tables: the ptwr refusal).
    pub note: Option<String>,
}

const NAMES: [&str; 32] = [
    "#DE", "#DB", "NMI", "#BP", "#OF", "#BR", "#UD", "#NM", "#DF", "CSO", "#TS", "#NP", "#SS",
    "#GP", "#PF", "#15", "#MF", "#AC", "#MC", "#XM", "#VE", "#CP", "#22", "#23", "#24", "#25",
    "#26", "#27", "#HV", "#VC", "#SX", "#31",
];

impl fmt::Display for FaultReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let f0 = &self.frame;
        let name = NAMES.get(f0.vector as usize).copied().unwrap_or("?");
        write!(
            f,
            "guest fault: vector {} ({name}) error code {:#x} at RIP {:#x} (CS {:#x}, RSP {:#x}, RFLAGS {:#x})",
            f0.vector, f0.error, f0.rip, f0.cs, f0.rsp, f0.rflags
        )?;
        if f0.vector == 14 {
            write!(
                f,
                ", CR2 {:#x}\n  page-table path to CR2: {}",
                self.cr2, self.path
            )?;
        }
        if let Some(n) = &self.note {
            write!(f, "\n  {n}")?;
        }
        Ok(())
    }
}

/// The guest's page-table path to `va` under `root`, for reports.
pub fn describe_path(mem: &GuestMemoryMmap<()>, root: Option<Mfn>, va: u64) -> String {
    let Some(root) = root else {
        return "no kernel root".into();
    };
    let mut out = format!("L4 {root}");
    let r = Walker::new(mem).apply_to_existing_page_range(root, VaRange::page(va), |v| {
        match v {
            Visit::Ptes(b) => {
                for (e, l) in b.path().iter().zip(["L4e", "L3e", "L2e"]) {
                    out.push_str(&format!(" -> {l} {e}"));
                }
                out.push_str(&format!(" -> L1e {}", b.get(0)));
            }
            Visit::Superpage(b) => {
                out.push_str(&format!(" -> {} superpage {}", b.level(), b.get(0)))
            }
            Visit::Hole(h) => out.push_str(&format!(" -> not present at {}", h.level)),
        }
        ControlFlow::<()>::Break(())
    });
    if let Err(e) = r {
        out.push_str(&format!(" -> {e}"));
    }
    out
}

fn reg_value(regs: &kvm_regs, sregs: &kvm_sregs, r: Register) -> Option<u64> {
    let full = match r.full_register() {
        Register::RAX => regs.rax,
        Register::RBX => regs.rbx,
        Register::RCX => regs.rcx,
        Register::RDX => regs.rdx,
        Register::RSI => regs.rsi,
        Register::RDI => regs.rdi,
        Register::RBP => regs.rbp,
        Register::RSP => regs.rsp,
        Register::R8 => regs.r8,
        Register::R9 => regs.r9,
        Register::R10 => regs.r10,
        Register::R11 => regs.r11,
        Register::R12 => regs.r12,
        Register::R13 => regs.r13,
        Register::R14 => regs.r14,
        Register::R15 => regs.r15,
        Register::RIP => regs.rip,
        Register::FS => return Some(sregs.fs.base),
        Register::GS => return Some(sregs.gs.base),
        Register::ES | Register::CS | Register::SS | Register::DS => return Some(0),
        _ => return None,
    };
    Some(match r {
        Register::AH | Register::BH | Register::CH | Register::DH => (full >> 8) & 0xff,
        _ => {
            let size = r.size();
            if size >= 8 {
                full
            } else {
                full & ((1u64 << (size * 8)) - 1)
            }
        }
    })
}

/// A write fault the VMM emulated: what to change in the guest before resuming.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Emulated {
    /// Bytes to skip (the instruction length).
    pub len: u64,
    /// New RAX (CMPXCHG mismatch), if any.
    pub rax: Option<u64>,
    /// New value for the register operand (XCHG), if any: (register, value).
    pub xchg: Option<(Register, u64)>,
    /// ZF to set (CMPXCHG).
    pub zf: Option<bool>,
}

/// Tries writable-page-table emulation of the write fault described by `frame`.
pub fn try_ptwr(
    m: &mut Vmm,
    caller: Caller,
    frame: &Frame,
    cr2: u64,
    regs: &kvm_regs,
    sregs: &kvm_sregs,
    on_write: &mut dyn FnMut(&PtwrWrite, &Result<PtwrOutcome, pvmmu::PtwrRefusal>),
) -> Result<Emulated, String> {
    // Present, write, user-mode (the PV kernel runs at CPL3), not a fetch or RSVD.
    if frame.error & 0b11011 != 0b00011 {
        return Err("not a write to a present page".into());
    }
    let root = m.kernel_root(caller);
    let mut bytes = [0u8; 15];
    let mut n = 0;
    {
        let mut view = GuestView::new(m.memory(), root);
        while n < 15
            && view
                .read(frame.rip + n as u64, &mut bytes[n..n + 1])
                .is_ok()
        {
            n += 1;
        }
    }
    let mut dec = Decoder::with_ip(64, &bytes[..n], frame.rip, DecoderOptions::NONE);
    let ins: Instruction = dec.decode();
    if ins.is_invalid() || ins.op_count() < 2 || ins.op_kind(0) != OpKind::Memory {
        return Err(format!(
            "instruction at {:#x} is not an emulated store",
            frame.rip
        ));
    }
    let size = ins.memory_size().size();
    let addr = ins
        .virtual_address(0, 0, |r, _, _| reg_value(regs, sregs, r))
        .ok_or("cannot compute the store address")?;
    let src = match ins.op_kind(1) {
        OpKind::Register => {
            reg_value(regs, sregs, ins.op_register(1)).ok_or("unsupported source register")?
        }
        OpKind::Immediate8
        | OpKind::Immediate16
        | OpKind::Immediate32
        | OpKind::Immediate8to16
        | OpKind::Immediate8to32
        | OpKind::Immediate8to64
        | OpKind::Immediate32to64
        | OpKind::Immediate64 => ins.immediate(1),
        _ => return Err("unsupported source operand".into()),
    };
    let cmpxchg = match ins.mnemonic() {
        Mnemonic::Mov | Mnemonic::Xchg => None,
        Mnemonic::Cmpxchg => Some(regs.rax),
        other => return Err(format!("{other:?} is not emulated on page tables")),
    };
    let mask = if size >= 8 {
        u64::MAX
    } else {
        (1u64 << (size * 8)) - 1
    };
    let old = if ins.mnemonic() == Mnemonic::Xchg {
        let mut b = [0u8; 8];
        GuestView::new(m.memory(), root)
            .read(addr, &mut b[..size])
            .map_err(|e| format!("reading the old entry: {e}"))?;
        Some(u64::from_le_bytes(b))
    } else {
        None
    };
    let write = PtwrWrite {
        addr,
        size: size as u8,
        value: src & mask,
        cmpxchg: cmpxchg.map(|c| c & mask),
    };
    let result = m
        .ptwr_write(caller, cr2, write)
        .map_err(|e| e.to_string())?;
    on_write(&write, &result);
    let outcome = result.map_err(|e| format!("writable page tables: {e}"))?;
    let mut em = Emulated {
        len: ins.len() as u64,
        rax: None,
        xchg: None,
        zf: None,
    };
    match outcome {
        PtwrOutcome::Written => {
            if let Some(o) = old {
                em.xchg = Some((ins.op_register(1), o));
            }
            if cmpxchg.is_some() {
                em.zf = Some(true);
            }
        }
        PtwrOutcome::Mismatch { current } => {
            em.zf = Some(false);
            em.rax = Some(if size >= 8 {
                current
            } else {
                (regs.rax & !mask) | current
            });
        }
    }
    Ok(em)
}

/// Applies an XCHG result to the register file.
pub fn set_reg(regs: &mut kvm_regs, r: Register, value: u64) {
    let size = r.size();
    let slot = match r.full_register() {
        Register::RAX => &mut regs.rax,
        Register::RBX => &mut regs.rbx,
        Register::RCX => &mut regs.rcx,
        Register::RDX => &mut regs.rdx,
        Register::RSI => &mut regs.rsi,
        Register::RDI => &mut regs.rdi,
        Register::RBP => &mut regs.rbp,
        Register::R8 => &mut regs.r8,
        Register::R9 => &mut regs.r9,
        Register::R10 => &mut regs.r10,
        Register::R11 => &mut regs.r11,
        Register::R12 => &mut regs.r12,
        Register::R13 => &mut regs.r13,
        Register::R14 => &mut regs.r14,
        Register::R15 => &mut regs.r15,
        _ => return,
    };
    *slot = match size {
        8 => value,
        4 => value & 0xffff_ffff,
        _ => {
            let mask = (1u64 << (size * 8)) - 1;
            (*slot & !mask) | (value & mask)
        }
    };
}
