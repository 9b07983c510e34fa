//! Hypercall traces: `pvmmu run --trace FILE` records every hypercall a guest issues
//! (number, arguments, the batch read from guest memory, the result) and every
//! writable-page-table write, together with the guest's own memory writes between them
//! (from KVM's dirty log); `pvmmu replay FILE` replays them against the library without
//! KVM and checks that every result is identical.
//!
//! # Format (version 3, all integers little endian; versions 1 (without the context)
//! and 2 (without the initrd) are still read)
//!
//! ```text
//! header  : "PVMMUTRC" u32:version u32:memory_mib u32:vcpus u8:iomem
//!           u32:cmdline_len cmdline  u64:image_len image
//!           u8:has_initrd [u64:initrd_len initrd]
//! record  : u8:tag, then
//!   0x01 pages     : u32:n, n x (u64:pfn, 4096 bytes)      guest writes since the last record
//!   0x02 hypercall : u32:vcpu u64:nr 5 x u64:args u32:batch_len batch
//!                    u8:outcome (0 return, 1 shutdown, 2 crash) i64:value
//!                    7 x u64:context (RIP CS RFLAGS RSP SS RCX R11 at the call)
//!   0x03 ptwr      : u32:vcpu u64:fault_va u64:addr u8:size u64:value u8:has_cmpxchg
//!                    u64:cmpxchg u8:outcome (0 written, 1 mismatch, 2 refused) u64:value
//!   0xff end
//! ```
//!
//! A trace replays from the same start as the run: the domain is rebuilt from the image
//! in the header, then page records are written into guest memory and the hypercalls and
//! ptwr writes re-executed in order ([`crate::replay`]).

use std::io::{BufWriter, Read, Write};

use pvmmu::{PtwrOutcome, PtwrRefusal, PtwrWrite};

use crate::dispatch::Outcome;
use crate::domain::DomainSpec;
use crate::layout::PAGE;
use crate::pv::{Crash, GuestContext};

/// Magic at the start of every trace.
pub const MAGIC: &[u8; 8] = b"PVMMUTRC";
/// The format version written.
pub const VERSION: u32 = 3;
/// The oldest format version read.
pub const OLDEST_VERSION: u32 = 1;

const TAG_PAGES: u8 = 0x01;
const TAG_HYPERCALL: u8 = 0x02;
const TAG_PTWR: u8 = 0x03;
const TAG_END: u8 = 0xff;
/// Largest image or batch a trace may hold (guards against corrupt lengths).
const MAX_BLOB: u64 = 256 << 20;

/// Errors reading a trace.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    /// Not a trace.
    #[error("not a pvmmu trace (bad magic)")]
    Magic,
    /// A version this build cannot read.
    #[error(
        "trace version {0} is not supported (this build reads versions {OLDEST_VERSION}..={VERSION})"
    )]
    Version(u32),
    /// The file ends inside a header or record.
    #[error("trace truncated at byte {0}")]
    Truncated(u64),
    /// An unknown record type.
    #[error("unknown record tag {tag:#x} at byte {offset}")]
    Tag {
        /// The tag.
        tag: u8,
        /// Where.
        offset: u64,
    },
    /// A length field too large to be real.
    #[error("implausible length {len} at byte {offset}")]
    Length {
        /// The length.
        len: u64,
        /// Where.
        offset: u64,
    },
    /// I/O.
    #[error("reading the trace: {0}")]
    Io(#[from] std::io::Error),
}

/// The run a trace belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceHeader {
    /// Guest memory in MiB.
    pub memory_mib: u32,
    /// vCPUs.
    pub vcpus: u32,
    /// I/O-memory permission for the MMIO test device.
    pub iomem: bool,
    /// Guest command line.
    pub cmdline: String,
    /// The guest image.
    pub image: Vec<u8>,
    /// The boot module (initrd), if any.
    pub initrd: Option<Vec<u8>>,
}

impl TraceHeader {
    /// The header of a run of `spec`.
    pub fn new(spec: &DomainSpec) -> TraceHeader {
        TraceHeader {
            memory_mib: u32::try_from(spec.memory_mib).unwrap_or(u32::MAX),
            vcpus: spec.vcpus,
            iomem: spec.iomem,
            cmdline: spec.cmdline.clone(),
            image: spec.image.clone(),
            initrd: spec.initrd.clone(),
        }
    }

    /// The domain the trace was recorded on.
    pub fn spec(&self) -> DomainSpec {
        DomainSpec {
            memory_mib: u64::from(self.memory_mib),
            vcpus: self.vcpus,
            image: self.image.clone(),
            cmdline: self.cmdline.clone(),
            iomem: self.iomem,
            initrd: self.initrd.clone(),
        }
    }
}

/// One record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// Guest memory pages (pfn, contents) written by the guest since the last record.
    Pages(Vec<(u64, Vec<u8>)>),
    /// A hypercall and its result.
    Hypercall {
        /// vCPU.
        vcpu: u32,
        /// Number.
        nr: u64,
        /// Arguments.
        args: [u64; 5],
        /// The batch entries the library read from guest memory, in order (requests of
        /// `mmu_update` and `mmuext_op`, multicall entries and their batches).
        batch: Vec<u8>,
        /// Result.
        outcome: Outcome,
        /// The vCPU's context at the call (what `iret` reads its frame through).
        context: GuestContext,
    },
    /// A writable-page-table write and what the library made of it.
    Ptwr {
        /// vCPU.
        vcpu: u32,
        /// The faulting VA.
        fault_va: u64,
        /// The decoded write.
        write: PtwrWrite,
        /// 0 written, 1 mismatch (value = current), 2 refused (value = errno or 0).
        outcome: (u8, u64),
    },
}

/// How an outcome is stored: (kind, value). A crash is stored by its kind only, so two
/// outcomes are the same for a replay when their codes are.
pub fn outcome_code(o: &Outcome) -> (u8, i64) {
    match o {
        Outcome::Return(v) => (0, *v),
        Outcome::Shutdown(r) => (1, i64::from(*r)),
        Outcome::Crash(c) => (2, c.code() as i64),
    }
}

fn context_words(c: &GuestContext) -> [u64; 7] {
    [c.rip, c.cs, c.rflags, c.rsp, c.ss, c.rcx, c.r11]
}

fn context_from_words(w: [u64; 7]) -> GuestContext {
    GuestContext {
        rip: w[0],
        cs: w[1],
        rflags: w[2],
        rsp: w[3],
        ss: w[4],
        rcx: w[5],
        r11: w[6],
    }
}

/// Encodes a ptwr result for the trace.
pub fn ptwr_code(r: &Result<PtwrOutcome, PtwrRefusal>) -> (u8, u64) {
    match r {
        Ok(PtwrOutcome::Written) => (0, 0),
        Ok(PtwrOutcome::Mismatch { current }) => (1, *current),
        Err(PtwrRefusal::Refused(e)) => (2, e.code() as u64),
        Err(_) => (2, 0),
    }
}

/// Writes a trace.
pub struct TraceWriter {
    out: BufWriter<std::fs::File>,
}

impl std::fmt::Debug for TraceWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TraceWriter").finish_non_exhaustive()
    }
}

impl TraceWriter {
    /// Creates `path` and writes the header.
    pub fn create(path: &std::path::Path, h: &TraceHeader) -> std::io::Result<TraceWriter> {
        let mut out = BufWriter::new(std::fs::File::create(path)?);
        out.write_all(MAGIC)?;
        out.write_all(&VERSION.to_le_bytes())?;
        out.write_all(&h.memory_mib.to_le_bytes())?;
        out.write_all(&h.vcpus.to_le_bytes())?;
        out.write_all(&[u8::from(h.iomem)])?;
        out.write_all(&(h.cmdline.len() as u32).to_le_bytes())?;
        out.write_all(h.cmdline.as_bytes())?;
        out.write_all(&(h.image.len() as u64).to_le_bytes())?;
        out.write_all(&h.image)?;
        out.write_all(&[u8::from(h.initrd.is_some())])?;
        if let Some(rd) = &h.initrd {
            out.write_all(&(rd.len() as u64).to_le_bytes())?;
            out.write_all(rd)?;
        }
        Ok(TraceWriter { out })
    }

    /// Appends a record.
    pub fn record(&mut self, r: &Record) -> std::io::Result<()> {
        let o = &mut self.out;
        match r {
            Record::Pages(pages) => {
                o.write_all(&[TAG_PAGES])?;
                o.write_all(&(pages.len() as u32).to_le_bytes())?;
                for (pfn, bytes) in pages {
                    o.write_all(&pfn.to_le_bytes())?;
                    o.write_all(bytes)?;
                }
            }
            Record::Hypercall {
                vcpu,
                nr,
                args,
                batch,
                outcome,
                context,
            } => {
                o.write_all(&[TAG_HYPERCALL])?;
                o.write_all(&vcpu.to_le_bytes())?;
                o.write_all(&nr.to_le_bytes())?;
                for a in args {
                    o.write_all(&a.to_le_bytes())?;
                }
                o.write_all(&(batch.len() as u32).to_le_bytes())?;
                o.write_all(batch)?;
                let (kind, value) = outcome_code(outcome);
                o.write_all(&[kind])?;
                o.write_all(&value.to_le_bytes())?;
                for w in context_words(context) {
                    o.write_all(&w.to_le_bytes())?;
                }
            }
            Record::Ptwr {
                vcpu,
                fault_va,
                write,
                outcome,
            } => {
                o.write_all(&[TAG_PTWR])?;
                o.write_all(&vcpu.to_le_bytes())?;
                o.write_all(&fault_va.to_le_bytes())?;
                o.write_all(&write.addr.to_le_bytes())?;
                o.write_all(&[write.size])?;
                o.write_all(&write.value.to_le_bytes())?;
                o.write_all(&[u8::from(write.cmpxchg.is_some())])?;
                o.write_all(&write.cmpxchg.unwrap_or(0).to_le_bytes())?;
                o.write_all(&[outcome.0])?;
                o.write_all(&outcome.1.to_le_bytes())?;
            }
        }
        Ok(())
    }

    /// Writes the end marker and flushes.
    pub fn finish(mut self) -> std::io::Result<()> {
        self.out.write_all(&[TAG_END])?;
        self.out.flush()
    }
}

/// A cursor over trace bytes with bounds-checked reads.
struct Cursor<'a> {
    b: &'a [u8],
    at: usize,
}

impl Cursor<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], TraceError> {
        let end = self.at.checked_add(n).filter(|e| *e <= self.b.len());
        let end = end.ok_or(TraceError::Truncated(self.b.len() as u64))?;
        let s = &self.b[self.at..end];
        self.at = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, TraceError> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, TraceError> {
        let mut a = [0u8; 4];
        a.copy_from_slice(self.take(4)?);
        Ok(u32::from_le_bytes(a))
    }
    fn u64(&mut self) -> Result<u64, TraceError> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(a))
    }
    fn blob(&mut self, len: u64) -> Result<Vec<u8>, TraceError> {
        if len > MAX_BLOB {
            return Err(TraceError::Length {
                len,
                offset: self.at as u64,
            });
        }
        Ok(self.take(len as usize)?.to_vec())
    }
}

/// Parses a whole trace.
pub fn parse(bytes: &[u8]) -> Result<(TraceHeader, Vec<Record>), TraceError> {
    let mut c = Cursor { b: bytes, at: 0 };
    if c.take(8).map_err(|_| TraceError::Magic)? != MAGIC {
        return Err(TraceError::Magic);
    }
    let version = c.u32()?;
    if !(OLDEST_VERSION..=VERSION).contains(&version) {
        return Err(TraceError::Version(version));
    }
    let memory_mib = c.u32()?;
    let vcpus = c.u32()?;
    let iomem = c.u8()? != 0;
    let cl = u64::from(c.u32()?);
    let cmdline = String::from_utf8_lossy(&c.blob(cl)?).into_owned();
    let il = c.u64()?;
    let image = c.blob(il)?;
    let initrd = if version >= 3 && c.u8()? != 0 {
        let len = c.u64()?;
        Some(c.blob(len)?)
    } else {
        None
    };
    let header = TraceHeader {
        memory_mib,
        vcpus,
        iomem,
        cmdline,
        image,
        initrd,
    };
    let mut records = Vec::new();
    loop {
        let offset = c.at as u64;
        match c.u8()? {
            TAG_END => break,
            TAG_PAGES => {
                let n = c.u32()?;
                if u64::from(n) * PAGE > MAX_BLOB * 16 {
                    return Err(TraceError::Length {
                        len: n.into(),
                        offset,
                    });
                }
                let mut pages = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    let pfn = c.u64()?;
                    pages.push((pfn, c.blob(PAGE)?));
                }
                records.push(Record::Pages(pages));
            }
            TAG_HYPERCALL => {
                let vcpu = c.u32()?;
                let nr = c.u64()?;
                let mut args = [0u64; 5];
                for a in &mut args {
                    *a = c.u64()?;
                }
                let bl = u64::from(c.u32()?);
                let batch = c.blob(bl)?;
                let kind = c.u8()?;
                let value = c.u64()? as i64;
                let outcome = match kind {
                    0 => Outcome::Return(value),
                    1 => Outcome::Shutdown(value as u32),
                    2 => Outcome::Crash(Crash::from_code(value as u64)),
                    tag => return Err(TraceError::Tag { tag, offset }),
                };
                let mut w = [0u64; 7];
                if version >= 2 {
                    for x in &mut w {
                        *x = c.u64()?;
                    }
                }
                records.push(Record::Hypercall {
                    vcpu,
                    nr,
                    args,
                    batch,
                    outcome,
                    context: context_from_words(w),
                });
            }
            TAG_PTWR => {
                let vcpu = c.u32()?;
                let fault_va = c.u64()?;
                let addr = c.u64()?;
                let size = c.u8()?;
                let value = c.u64()?;
                let has = c.u8()? != 0;
                let cmp = c.u64()?;
                let kind = c.u8()?;
                let v = c.u64()?;
                records.push(Record::Ptwr {
                    vcpu,
                    fault_va,
                    write: PtwrWrite {
                        addr,
                        size,
                        value,
                        cmpxchg: has.then_some(cmp),
                    },
                    outcome: (kind, v),
                });
            }
            tag => return Err(TraceError::Tag { tag, offset }),
        }
    }
    Ok((header, records))
}

/// Reads a whole trace file.
pub fn read_file(path: &std::path::Path) -> Result<(TraceHeader, Vec<Record>), TraceError> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)?.read_to_end(&mut bytes)?;
    parse(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn corrupt_traces_give_clear_errors() {
        assert!(matches!(parse(b"nope"), Err(TraceError::Magic)));
        let mut b = MAGIC.to_vec();
        b.extend_from_slice(&7u32.to_le_bytes());
        assert!(matches!(parse(&b), Err(TraceError::Version(7))));
        let mut b = MAGIC.to_vec();
        b.extend_from_slice(&VERSION.to_le_bytes());
        b.extend_from_slice(&64u32.to_le_bytes());
        assert!(matches!(parse(&b), Err(TraceError::Truncated(_))));
        // A huge image length is refused before allocating.
        let mut b = MAGIC.to_vec();
        for v in [VERSION, 64, 1] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b.push(1);
        b.extend_from_slice(&0u32.to_le_bytes());
        b.extend_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(parse(&b), Err(TraceError::Length { .. })));
    }
}
