//! Instruction emulation: the guest instructions the VMM carries out on the guest's
//! behalf, decoded with iced-x86.
//!
//! - Writable page tables: a store (`mov`, `xchg`, `cmpxchg`) that faulted on one of the
//!   guest's own L1 tables is validated and applied by the library
//!   ([`pvmmu::Machine::ptwr_write`]), and its effect on the registers and flags
//!   computed.
//! - Xen's forced-emulation prefix (`ud2; .ascii "xen"`) followed by `cpuid`: the only
//!   instruction Xen emulates after it for a PV guest.
//! - Privileged instructions a PV kernel executes at CPL3 and Xen emulates (#GP): reads
//!   of CR2 and CR3 today.
//! - Loads from the read-only M2P at Xen's address, which this host's KVM faults (see
//!   `docs/kvm-host.md`): the load is carried out from the M2P itself.

use iced_x86::{Decoder, DecoderOptions, Instruction, Mnemonic, OpKind, Register};
use kvm_bindings::{kvm_regs, kvm_sregs};
use pvmmu::{Caller, GuestView, PtwrOutcome, PtwrWrite};

use crate::fault::Frame;
use crate::flush::Vmm;

/// Xen's forced-emulation prefix, `ud2; .ascii "xen"`.
pub const FEP: [u8; 5] = [0x0f, 0x0b, b'x', b'e', b'n'];
/// `cpuid`.
const CPUID: [u8; 2] = [0x0f, 0xa2];

/// Longest x86 instruction.
const MAX_INSN: u64 = 15;

/// The instruction bytes at guest `rip` under `root` (up to 15; fewer where the mapping
/// ends): the part in `rip`'s page, then the rest from the next page if it is mapped.
pub fn fetch<M: vm_memory::GuestMemory>(mem: &M, root: Option<pvmmu::Mfn>, rip: u64) -> Vec<u8> {
    let mut view = GuestView::new(mem, root);
    let first = (pvmmu::PAGE_SIZE - (rip & (pvmmu::PAGE_SIZE - 1))).min(MAX_INSN) as usize;
    let mut bytes = vec![0u8; MAX_INSN as usize];
    if view.read(rip, &mut bytes[..first]).is_err() {
        return Vec::new();
    }
    let rest = rip.wrapping_add(first as u64);
    if first < bytes.len() && view.read(rest, &mut bytes[first..]).is_err() {
        bytes.truncate(first);
    }
    bytes
}

/// Whether `bytes` are the forced-emulation prefix and `cpuid`: the length to skip.
pub fn forced_cpuid(bytes: &[u8]) -> Option<u64> {
    let n = FEP.len() + CPUID.len();
    (bytes.len() >= n && bytes[..FEP.len()] == FEP && bytes[FEP.len()..n] == CPUID)
        .then_some(n as u64)
}

/// Decodes the instruction in `bytes` at `rip`.
pub fn decode(bytes: &[u8], rip: u64) -> Option<Instruction> {
    let ins = Decoder::with_ip(64, bytes, rip, DecoderOptions::NONE).decode();
    (!ins.is_invalid()).then_some(ins)
}

/// The selector a segment-loading instruction at `rip` loads: a far `call`/`jmp`
/// through memory, `mov` to a segment register, `pop %fs`/`%gs`, `lfs`/`lgs`/`lss`.
/// `amd` decodes as AMD CPUs do (a far branch through memory ignores REX.W and reads a
/// 32-bit offset). `read` reads two bytes at a guest virtual address; `None` when the
/// instruction loads no selector or its operand cannot be read.
pub fn loaded_selector(
    bytes: &[u8],
    rip: u64,
    amd: bool,
    regs: &kvm_regs,
    sregs: &kvm_sregs,
    read: &mut dyn FnMut(u64) -> Option<u16>,
) -> Option<u16> {
    use iced_x86::MemorySize;
    let options = if amd {
        DecoderOptions::AMD
    } else {
        DecoderOptions::NONE
    };
    let ins = Decoder::with_ip(64, bytes, rip, options).decode();
    if ins.is_invalid() {
        return None;
    }
    // The memory operand's address (by its operand index, as iced counts them).
    let address = |ins: &Instruction| {
        let op = (0..ins.op_count()).find(|&i| ins.op_kind(i) == OpKind::Memory)?;
        ins.virtual_address(op, 0, |r, _, _| reg_value(regs, sregs, r))
    };
    // A far pointer in memory: the selector follows the offset.
    let far = |ins: &Instruction, read: &mut dyn FnMut(u64) -> Option<u16>| {
        let offset = match ins.memory_size() {
            MemorySize::SegPtr16 => 2,
            MemorySize::SegPtr32 => 4,
            MemorySize::SegPtr64 => 8,
            _ => return None,
        };
        read(address(ins)?.wrapping_add(offset))
    };
    match ins.mnemonic() {
        Mnemonic::Call | Mnemonic::Jmp | Mnemonic::Lfs | Mnemonic::Lgs | Mnemonic::Lss => {
            far(&ins, read)
        }
        Mnemonic::Mov
            if ins.op_kind(0) == OpKind::Register && ins.op_register(0).is_segment_register() =>
        {
            match ins.op_kind(1) {
                OpKind::Register => reg_value(regs, sregs, ins.op_register(1)).map(|v| v as u16),
                OpKind::Memory => read(address(&ins)?),
                _ => None,
            }
        }
        Mnemonic::Pop
            if ins.op_kind(0) == OpKind::Register && ins.op_register(0).is_segment_register() =>
        {
            read(regs.rsp)
        }
        _ => None,
    }
}

/// A privileged instruction Xen emulates for a PV kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrivilegedOp {
    /// `mov %crN, reg`.
    ReadCr {
        /// Which control register.
        cr: u8,
        /// The destination.
        dst: Register,
    },
    /// `mov reg, %crN`.
    WriteCr {
        /// Which control register.
        cr: u8,
        /// The source.
        src: Register,
    },
    /// `mov %drN, reg`.
    ReadDr {
        /// Which debug register.
        dr: u32,
        /// The destination.
        dst: Register,
    },
    /// `mov reg, %drN`.
    WriteDr {
        /// Which debug register.
        dr: u32,
        /// The source.
        src: Register,
    },
    /// `cli` or `sti`.
    InterruptFlag,
    /// `in` to `dst` (AL, AX or EAX).
    In {
        /// The destination.
        dst: Register,
    },
    /// `out`.
    Out,
    /// `clts`.
    Clts,
    /// `wbinvd` (or `invd`).
    Wbinvd,
    /// `hlt`.
    Hlt,
    /// `rdmsr`.
    Rdmsr,
    /// `wrmsr`.
    Wrmsr,
}

/// The privileged operation `ins` is, if the VMM emulates it.
pub fn privileged_op(ins: &Instruction) -> Option<PrivilegedOp> {
    match ins.mnemonic() {
        Mnemonic::Cli | Mnemonic::Sti => return Some(PrivilegedOp::InterruptFlag),
        Mnemonic::In if ins.op_kind(0) == OpKind::Register => {
            return Some(PrivilegedOp::In {
                dst: ins.op_register(0),
            });
        }
        Mnemonic::Out => return Some(PrivilegedOp::Out),
        Mnemonic::Rdmsr => return Some(PrivilegedOp::Rdmsr),
        Mnemonic::Clts => return Some(PrivilegedOp::Clts),
        Mnemonic::Wbinvd | Mnemonic::Invd => return Some(PrivilegedOp::Wbinvd),
        Mnemonic::Hlt => return Some(PrivilegedOp::Hlt),
        Mnemonic::Wrmsr => return Some(PrivilegedOp::Wrmsr),
        _ => {}
    }
    if ins.mnemonic() != Mnemonic::Mov || ins.op_count() != 2 {
        return None;
    }
    if ins.op_kind(0) != OpKind::Register || ins.op_kind(1) != OpKind::Register {
        return None;
    }
    let cr_number = |r: Register| match r {
        Register::CR0 => Some(0),
        Register::CR2 => Some(2),
        Register::CR3 => Some(3),
        Register::CR4 => Some(4),
        _ => None,
    };
    let dr_number = |r: Register| {
        let n = r as u32;
        let first = Register::DR0 as u32;
        (first..first + 8).contains(&n).then(|| n - first)
    };
    if let Some(dr) = dr_number(ins.op_register(1)) {
        return Some(PrivilegedOp::ReadDr {
            dr,
            dst: ins.op_register(0),
        });
    }
    if let Some(dr) = dr_number(ins.op_register(0)) {
        return Some(PrivilegedOp::WriteDr {
            dr,
            src: ins.op_register(1),
        });
    }
    if let Some(cr) = cr_number(ins.op_register(1)) {
        return Some(PrivilegedOp::ReadCr {
            cr,
            dst: ins.op_register(0),
        });
    }
    cr_number(ins.op_register(0)).map(|cr| PrivilegedOp::WriteCr {
        cr,
        src: ins.op_register(1),
    })
}

/// Whether a #SS(0) at `ins` is one hardware would raise: a stack access (an implicit
/// one, or a memory operand based on RSP or RBP). In 64-bit mode segment overrides are
/// ignored, so a non-canonical access through any other base is #GP(0), whatever prefix
/// the instruction carries (this host's KVM reports #SS for a `%ss:` override).
pub fn is_stack_access(ins: &Instruction) -> bool {
    ins.is_stack_instruction()
        || matches!(
            ins.memory_base().full_register(),
            Register::RSP | Register::RBP
        )
}

/// A load `ins` performs: (destination register, bytes loaded, zero-extended), for the
/// plain `mov reg, mem` forms a guest reads a table with.
pub fn plain_load(ins: &Instruction) -> Option<(Register, usize)> {
    let load = matches!(ins.mnemonic(), Mnemonic::Mov | Mnemonic::Movzx)
        && ins.op_count() == 2
        && ins.op_kind(0) == OpKind::Register
        && ins.op_kind(1) == OpKind::Memory;
    load.then(|| (ins.op_register(0), ins.memory_size().size()))
}

/// The value of general register `r` (any width) in `regs`.
pub fn gpr(regs: &kvm_regs, r: Register) -> Option<u64> {
    reg_value(regs, &kvm_sregs::default(), r)
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

/// The selector held in segment register `r`.
fn selector(sregs: &kvm_sregs, r: Register) -> Option<u64> {
    let seg = match r {
        Register::ES => &sregs.es,
        Register::CS => &sregs.cs,
        Register::SS => &sregs.ss,
        Register::DS => &sregs.ds,
        Register::FS => &sregs.fs,
        Register::GS => &sregs.gs,
        _ => return None,
    };
    Some(u64::from(seg.selector))
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
    /// ZF to set (CMPXCHG, and/or/xor).
    pub zf: Option<bool>,
    /// CF to set (bit test and reset/set).
    pub cf: Option<bool>,
}

/// Why a write fault was not emulated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotEmulated {
    /// Not a write to a present page from guest mode.
    #[error("not a write to a present page")]
    NotAWrite,
    /// The faulting instruction is not a store the VMM emulates.
    #[error("instruction at {0:#x} is not an emulated store")]
    NotAStore(u64),
    /// An operand the emulation does not handle.
    #[error("unsupported operand: {0}")]
    Operand(&'static str),
    /// The mnemonic is a store, but not one emulated on page tables.
    #[error("{0:?} is not emulated on page tables")]
    Mnemonic(Mnemonic),
    /// The old entry (for XCHG) could not be read.
    #[error("reading the old entry: {0}")]
    OldEntry(pvmmu::Errno),
    /// The library refused the caller (an embedder error).
    #[error("pvmmu: {0}")]
    Machine(#[from] pvmmu::MachineError),
    /// The library refused the write.
    #[error("writable page tables: {0}")]
    Refused(pvmmu::PtwrRefusal),
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
) -> Result<Emulated, NotEmulated> {
    // Present, write, user-mode (the PV kernel runs at CPL3), not a fetch or RSVD.
    if !frame.is_ptwr_candidate() {
        return Err(NotEmulated::NotAWrite);
    }
    let bytes = fetch(m.memory(), m.kernel_root(caller), frame.rip);
    let plan = plan_store(&bytes, frame.rip, regs, sregs, &mut |addr, buf| {
        m.kernel_view(caller).read(addr, buf)
    })?;
    let result = m.ptwr_write(caller, cr2, plan.write)?;
    on_write(&plan.write, &result);
    let outcome = result.map_err(NotEmulated::Refused)?;
    Ok(plan.complete(outcome, regs))
}

/// A store to a page-table entry, decoded: the write to ask the library for and what
/// the instruction does to registers and flags with each result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct StorePlan {
    write: PtwrWrite,
    len: u64,
    size: usize,
    /// For XCHG: the register operand and the old entry it receives.
    xchg: Option<(Register, u64)>,
    /// Read-modify-write forms: the flags they set.
    rmw_cf: Option<bool>,
    rmw_zf: Option<bool>,
}

/// Reads `buf.len()` bytes of guest memory at a guest virtual address.
type ReadEntry<'a> = dyn FnMut(u64, &mut [u8]) -> Result<(), pvmmu::Errno> + 'a;

/// Decodes the store at `rip` (`bytes`) against the registers; `read_old` reads the
/// current entry for the read-modify-write forms.
fn plan_store(
    bytes: &[u8],
    rip: u64,
    regs: &kvm_regs,
    sregs: &kvm_sregs,
    read_old: &mut ReadEntry<'_>,
) -> Result<StorePlan, NotEmulated> {
    let mut dec = Decoder::with_ip(64, bytes, rip, DecoderOptions::NONE);
    let ins: Instruction = dec.decode();
    if ins.is_invalid() || ins.op_count() < 2 || ins.op_kind(0) != OpKind::Memory {
        return Err(NotEmulated::NotAStore(rip));
    }
    let size = ins.memory_size().size();
    if !(1..=8).contains(&size) {
        return Err(NotEmulated::Operand("store size"));
    }
    let addr = ins
        .virtual_address(0, 0, |r, _, _| reg_value(regs, sregs, r))
        .ok_or(NotEmulated::Operand("store address"))?;
    let src = match ins.op_kind(1) {
        // `mov m16, Sreg` stores the selector (the address above used segment bases).
        OpKind::Register if ins.op_register(1).is_segment_register() => {
            selector(sregs, ins.op_register(1)).ok_or(NotEmulated::Operand("source register"))?
        }
        OpKind::Register => reg_value(regs, sregs, ins.op_register(1))
            .ok_or(NotEmulated::Operand("source register"))?,
        OpKind::Immediate8
        | OpKind::Immediate16
        | OpKind::Immediate32
        | OpKind::Immediate8to16
        | OpKind::Immediate8to32
        | OpKind::Immediate8to64
        | OpKind::Immediate32to64
        | OpKind::Immediate64 => ins.immediate(1),
        _ => return Err(NotEmulated::Operand("source")),
    };
    let mask = if size >= 8 {
        u64::MAX
    } else {
        (1u64 << (size * 8)) - 1
    };
    let mut old = || -> Result<u64, NotEmulated> {
        let mut b = [0u8; 8];
        read_old(addr, &mut b[..size]).map_err(NotEmulated::OldEntry)?;
        Ok(u64::from_le_bytes(b))
    };
    // Read-modify-write forms (Linux clears and tests PTE bits with `lock and` and
    // `lock btr`): the new value from the old, written as a compare-and-exchange with
    // the old value, so nothing in between is lost; CF for the bit tests, ZF for the
    // logic operations.
    let mut plan = StorePlan {
        write: PtwrWrite {
            addr,
            size: size as u8,
            value: 0,
            cmpxchg: None,
        },
        len: ins.len() as u64,
        size,
        xchg: None,
        rmw_cf: None,
        rmw_zf: None,
    };
    let (value, cmpxchg) = match ins.mnemonic() {
        Mnemonic::Mov => (src, None),
        Mnemonic::Xchg => {
            plan.xchg = Some((ins.op_register(1), old()?));
            (src, None)
        }
        Mnemonic::Cmpxchg => (src, Some(regs.rax)),
        Mnemonic::And | Mnemonic::Or | Mnemonic::Xor => {
            let o = old()?;
            let v = match ins.mnemonic() {
                Mnemonic::And => o & src,
                Mnemonic::Or => o | src,
                _ => o ^ src,
            } & mask;
            plan.rmw_zf = Some(v == 0);
            (v, Some(o))
        }
        Mnemonic::Btr | Mnemonic::Bts if ins.op_kind(1) != OpKind::Register => {
            let o = old()?;
            let bit = src & (size as u64 * 8 - 1);
            plan.rmw_cf = Some(o >> bit & 1 != 0);
            let v = if ins.mnemonic() == Mnemonic::Btr {
                o & !(1 << bit)
            } else {
                o | (1 << bit)
            };
            (v, Some(o))
        }
        other => return Err(NotEmulated::Mnemonic(other)),
    };
    plan.write.value = value & mask;
    plan.write.cmpxchg = cmpxchg.map(|c| c & mask);
    Ok(plan)
}

impl StorePlan {
    /// What the instruction leaves in registers and flags, given the library's result.
    fn complete(&self, outcome: PtwrOutcome, regs: &kvm_regs) -> Emulated {
        let rmw = self.rmw_cf.is_some() || self.rmw_zf.is_some();
        let mut em = Emulated {
            len: self.len,
            rax: None,
            xchg: None,
            zf: None,
            cf: None,
        };
        match outcome {
            PtwrOutcome::Written if rmw => {
                em.zf = self.rmw_zf;
                em.cf = self.rmw_cf;
            }
            // The entry changed under a read-modify-write (another writer): the
            // instruction runs again.
            PtwrOutcome::Mismatch { .. } if rmw => em.len = 0,
            PtwrOutcome::Written => {
                em.xchg = self.xchg;
                if self.write.cmpxchg.is_some() {
                    em.zf = Some(true);
                }
            }
            PtwrOutcome::Mismatch { current } => {
                em.zf = Some(false);
                // A failed CMPXCHG loads the accumulator: a 32-bit load zero-extends
                // into RAX, 8- and 16-bit loads keep the rest of it.
                let mask = (1u64 << (self.size.min(4) * 8)) - 1;
                em.rax = Some(if self.size >= 4 {
                    current
                } else {
                    (regs.rax & !mask) | (current & mask)
                });
            }
        }
        em
    }
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
        Register::RSP => &mut regs.rsp,
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Selector loads read from a fake memory where the word at `a` is `a as u16`.
    fn sel(bytes: &[u8], amd: bool, regs: &kvm_regs) -> Option<u16> {
        let mut read = |a: u64| Some(a as u16);
        loaded_selector(bytes, 0x1000, amd, regs, &kvm_sregs::default(), &mut read)
    }

    #[test]
    fn far_branch_selector_follows_the_offset() {
        let regs = kvm_regs {
            rax: 0x5000,
            ..Default::default()
        };
        // rex64 lcall *(%rax): m16:64 on Intel, m16:32 on AMD.
        assert_eq!(sel(&[0x48, 0xff, 0x18], false, &regs), Some(0x5008));
        assert_eq!(sel(&[0x48, 0xff, 0x18], true, &regs), Some(0x5004));
        // ljmp *(%rax) (m16:32).
        assert_eq!(sel(&[0xff, 0x28], false, &regs), Some(0x5004));
        // A near call through memory loads no selector.
        assert_eq!(sel(&[0xff, 0x10], false, &regs), None);
        // lgs (%rax),%ecx.
        assert_eq!(sel(&[0x0f, 0xb5, 0x08], false, &regs), Some(0x5004));
    }

    #[test]
    fn segment_register_loads() {
        let regs = kvm_regs {
            rax: 0x1_2345_1007,
            rsp: 0x7000,
            ..Default::default()
        };
        // mov %eax,%ds; mov (%rsp),%es; pop %fs.
        assert_eq!(sel(&[0x8e, 0xd8], false, &regs), Some(0x1007));
        assert_eq!(sel(&[0x8e, 0x04, 0x24], false, &regs), Some(0x7000));
        assert_eq!(sel(&[0x0f, 0xa1], false, &regs), Some(0x7000));
        // mov %ds,%eax stores one.
        assert_eq!(sel(&[0x8c, 0xd8], false, &regs), None);
    }

    fn plan(bytes: &[u8], regs: &kvm_regs, sregs: &kvm_sregs, old: u64) -> StorePlan {
        plan_store(bytes, 0x1000, regs, sregs, &mut |_, buf| {
            let n = buf.len();
            buf.copy_from_slice(&old.to_le_bytes()[..n]);
            Ok(())
        })
        .expect("an emulated store")
    }

    #[test]
    fn a_segment_register_source_stores_its_selector() {
        let regs = kvm_regs {
            rax: 0x5000,
            ..Default::default()
        };
        let mut sregs = kvm_sregs::default();
        sregs.ss.selector = 0xe02b;
        sregs.ds.selector = 0x0023;
        sregs.fs.selector = 0x0063;
        sregs.fs.base = 0x7777_0000;
        // mov %ss,(%rax): two bytes, the selector.
        let p = plan(&[0x8c, 0x10], &regs, &sregs, 0);
        assert_eq!((p.write.addr, p.write.size), (0x5000, 2));
        assert_eq!(p.write.value, 0xe02b);
        // mov %ds,(%rax) and mov %fs,(%rax): the selector, not the base.
        assert_eq!(plan(&[0x8c, 0x18], &regs, &sregs, 0).write.value, 0x23);
        assert_eq!(plan(&[0x8c, 0x20], &regs, &sregs, 0).write.value, 0x63);
        // A general register source is unchanged: mov %eax,(%rax).
        assert_eq!(plan(&[0x89, 0x00], &regs, &sregs, 0).write.value, 0x5000);
    }

    #[test]
    fn a_failed_cmpxchg_loads_the_accumulator_as_the_hardware_does() {
        let regs = kvm_regs {
            rax: 0xaaaa_bbbb_cccc_dddd,
            rcx: 0x1234,
            rdx: 0x5000,
            ..Default::default()
        };
        let sregs = kvm_sregs::default();
        let miss = |bytes: &[u8], current: u64| {
            plan(bytes, &regs, &sregs, 0)
                .complete(PtwrOutcome::Mismatch { current }, &regs)
                .rax
        };
        // cmpxchg %ecx,(%rdx): EAX loaded, RAX's top half zeroed.
        assert_eq!(miss(&[0x0f, 0xb1, 0x0a], 0x1111_2222), Some(0x1111_2222));
        // cmpxchg %rcx,(%rdx): all of RAX.
        assert_eq!(
            miss(&[0x48, 0x0f, 0xb1, 0x0a], 0x1_1111_2222),
            Some(0x1_1111_2222)
        );
        // cmpxchg %cx,(%rdx) and cmpxchg %cl,(%rdx): AX and AL, the rest kept.
        assert_eq!(
            miss(&[0x66, 0x0f, 0xb1, 0x0a], 0x4242),
            Some(0xaaaa_bbbb_cccc_4242)
        );
        assert_eq!(miss(&[0x0f, 0xb0, 0x0a], 0x42), Some(0xaaaa_bbbb_cccc_dd42));
        // A successful one leaves RAX alone and sets ZF.
        let hit = plan(&[0x0f, 0xb1, 0x0a], &regs, &sregs, 0);
        assert_eq!(hit.write.cmpxchg, Some(0xcccc_dddd));
        let em = hit.complete(PtwrOutcome::Written, &regs);
        assert_eq!((em.rax, em.zf), (None, Some(true)));
    }

    #[test]
    fn read_modify_write_forms_compare_against_the_old_entry() {
        let regs = kvm_regs {
            rdx: 0x5000,
            ..Default::default()
        };
        let sregs = kvm_sregs::default();
        // lock btrq $1,(%rdx) on an entry with RW set: CF=1, RW cleared.
        let p = plan(&[0xf0, 0x48, 0x0f, 0xba, 0x32, 0x01], &regs, &sregs, 0x1003);
        assert_eq!((p.write.value, p.write.cmpxchg), (0x1001, Some(0x1003)));
        let em = p.complete(PtwrOutcome::Written, &regs);
        assert_eq!(em.cf, Some(true));
        // Changed under it: the instruction runs again.
        let em = p.complete(PtwrOutcome::Mismatch { current: 0 }, &regs);
        assert_eq!(em.len, 0);
    }
}
