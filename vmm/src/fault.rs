//! Guest exceptions that reach the hypervisor area's ring-0 stubs: the frame the stub
//! leaves on the ring-0 stack (read from and written back to guest memory here, and
//! nowhere else), and the report of an exception the VMM does not handle. Writable
//! page tables are tried first ([`crate::emulate`]); delivering exceptions to the
//! guest kernel's own handlers (Xen's trap bounce) belongs here.

use std::fmt;

use platform::pv::GuestContext;
use vm_memory::{Bytes, GuestAddress, GuestMemoryError, GuestMemoryMmap};

/// Words the stub leaves on the ring-0 stack: vector, error code, then the CPU's
/// frame (RIP, CS, RFLAGS, RSP, SS).
const FRAME_WORDS: usize = 7;
/// Word index of RIP in the frame.
const RIP_WORD: u64 = 2;
/// Word index of RFLAGS in the frame.
const RFLAGS_WORD: u64 = 4;
/// RFLAGS.ZF.
const ZF: u64 = 0x40;
/// RFLAGS.CF.
const CF: u64 = 0x1;

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
    pub fn from_words(w: [u64; FRAME_WORDS]) -> Frame {
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

impl Frame {
    /// A write to a present page from guest mode (error code P, W, U; not a fetch or a
    /// reserved bit): what writable page tables may emulate.
    pub fn is_ptwr_candidate(&self) -> bool {
        self.vector == 14 && self.error & 0b11011 == 0b00011
    }
}

/// The stub's frame where it lies in guest memory: the ring-0 stack's guest-physical
/// address for the stub's RSP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExceptionFrame {
    /// Guest-physical address of the first word.
    pub gpa: u64,
    /// The decoded words.
    pub frame: Frame,
}

impl ExceptionFrame {
    /// Reads the frame at ring-0 RSP `rsp`, the stack being mapped at `stack_va` and
    /// backed by guest-physical `stack_gpa`.
    pub fn read(
        mem: &GuestMemoryMmap<()>,
        stack_va: u64,
        stack_gpa: u64,
        rsp: u64,
    ) -> Result<ExceptionFrame, GuestMemoryError> {
        let gpa = stack_gpa.wrapping_add(rsp.wrapping_sub(stack_va));
        let mut words = [0u64; FRAME_WORDS];
        for (i, w) in words.iter_mut().enumerate() {
            *w = mem.read_obj(GuestAddress(gpa.wrapping_add(i as u64 * 8)))?;
        }
        Ok(ExceptionFrame {
            gpa,
            frame: Frame::from_words(words),
        })
    }

    /// Resumes the guest at `rip` (the stub's `iretq` pops it).
    pub fn set_rip(&self, mem: &GuestMemoryMmap<()>, rip: u64) -> Result<(), GuestMemoryError> {
        mem.write_obj(rip, GuestAddress(self.gpa + RIP_WORD * 8))
    }

    /// The guest context the exception interrupted (RCX and R11 from the registers,
    /// which the stub leaves alone).
    pub fn context(&self, rcx: u64, r11: u64) -> GuestContext {
        let f = &self.frame;
        GuestContext {
            rip: f.rip,
            cs: f.cs,
            rflags: f.rflags,
            rsp: f.rsp,
            ss: f.ss,
            rcx,
            r11,
        }
    }

    /// Resumes the guest in `ctx` (RIP, CS, RFLAGS, RSP, SS; the stub's `iretq` loads
    /// them). RCX and R11 are the registers' own business.
    pub fn set_context(
        &self,
        mem: &GuestMemoryMmap<()>,
        ctx: &GuestContext,
    ) -> Result<(), GuestMemoryError> {
        for (word, v) in [ctx.rip, ctx.cs, ctx.rflags, ctx.rsp, ctx.ss]
            .into_iter()
            .enumerate()
        {
            mem.write_obj(v, GuestAddress(self.gpa + (RIP_WORD + word as u64) * 8))?;
        }
        Ok(())
    }

    /// Sets or clears ZF in the RFLAGS the guest resumes with.
    pub fn set_zf(&self, mem: &GuestMemoryMmap<()>, zf: bool) -> Result<(), GuestMemoryError> {
        self.set_flags(mem, Some(zf), None)
    }

    /// Sets or clears ZF and CF (where given) in the RFLAGS the guest resumes with.
    pub fn set_flags(
        &self,
        mem: &GuestMemoryMmap<()>,
        zf: Option<bool>,
        cf: Option<bool>,
    ) -> Result<(), GuestMemoryError> {
        let mut fl = self.frame.rflags;
        for (bit, on) in [(ZF, zf), (CF, cf)] {
            match on {
                Some(true) => fl |= bit,
                Some(false) => fl &= !bit,
                None => {}
            }
        }
        mem.write_obj(fl, GuestAddress(self.gpa + RFLAGS_WORD * 8))
    }
}

/// The name of exception vector `v`.
pub fn vector_name(v: u64) -> &'static str {
    NAMES.get(v as usize).copied().unwrap_or("?")
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
        let name = vector_name(f0.vector);
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
