//! `pvmmu replay`: a recorded trace ([`crate::trace`]) re-executed against the library,
//! without KVM, from the same domain the run started with; every hypercall's result, the
//! batch entries it read, and every writable-page-table write must come out the same.

use pvmmu::{Caller, RecordingFlush};
use vm_memory::{Bytes, GuestAddress};

use crate::dispatch::{self, DomainState, NullConsole};
use crate::domain::{DOMID, Domain, DomainError};
use crate::layout::PAGE;
use crate::pv::PvVcpu;
use crate::trace::{Record, TraceHeader, outcome_code, ptwr_code};

/// Errors that stop a replay (a divergence is a result, not an error).
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The recorded domain cannot be built.
    #[error("{0}")]
    Domain(#[from] DomainError),
    /// A page record names a frame outside guest memory.
    #[error("trace page {pfn:#x}: {source}")]
    Page {
        /// The frame.
        pfn: u64,
        /// Why it could not be written.
        source: vm_memory::GuestMemoryError,
    },
    /// A record names a vCPU or domain the machine does not have.
    #[error("pvmmu: {0}")]
    Machine(#[from] pvmmu::MachineError),
}

/// The first point where a replay differs from the recording.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Divergence {
    /// Index of the record.
    pub index: usize,
    /// What the record was.
    pub what: String,
    /// Recorded result.
    pub recorded: String,
    /// Replayed result.
    pub replayed: String,
}

/// Result of a replay.
#[derive(Debug)]
pub struct ReplayReport {
    /// Records replayed.
    pub records: usize,
    /// Hypercalls replayed.
    pub hypercalls: usize,
    /// The first divergence, if any.
    pub divergence: Option<Divergence>,
    /// Audit of the replayed machine at the end.
    pub audit: Result<(), pvmmu::AuditError>,
}

/// Replays a parsed trace against the library, without KVM.
pub fn replay(header: &TraceHeader, records: &[Record]) -> Result<ReplayReport, ReplayError> {
    let d = Domain::create(&header.spec(), RecordingFlush::default())?;
    let mut pv: Vec<PvVcpu> = (0..header.vcpus.max(1)).map(|v| d.pv_vcpu(v)).collect();
    let mut dom = DomainState::new(&d.boot, header.vcpus.max(1));
    let Domain { machine: mut m, .. } = d;
    m.record_reads(true);
    let mut report = ReplayReport {
        records: 0,
        hypercalls: 0,
        divergence: None,
        audit: Ok(()),
    };
    'records: for (index, r) in records.iter().enumerate() {
        report.records += 1;
        match r {
            Record::Pages(pages) => {
                for (pfn, bytes) in pages {
                    if let Some(d) = table_overwrite(&m, index, *pfn, bytes) {
                        report.divergence = Some(d);
                        break 'records;
                    }
                    let at = pfn.checked_mul(PAGE).unwrap_or(u64::MAX);
                    m.memory()
                        .write_slice(bytes, GuestAddress(at))
                        .map_err(|source| ReplayError::Page { pfn: *pfn, source })?;
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
                report.hypercalls += 1;
                let pv = pv.get_mut(*vcpu as usize).ok_or(ReplayError::Machine(
                    pvmmu::MachineError::NoVcpu(DOMID, *vcpu),
                ))?;
                let mut ctx = *context;
                let got = dispatch::dispatch(
                    &mut m,
                    &mut NullConsole,
                    &mut dom,
                    pv,
                    &mut ctx,
                    *nr,
                    *args,
                )?;
                let what = || format!("hypercall {} args {:#x?}", dispatch::name(*nr), args);
                if outcome_code(&got.outcome) != outcome_code(outcome) {
                    report.divergence = Some(Divergence {
                        index,
                        what: what(),
                        recorded: format!("{outcome:?}"),
                        replayed: format!("{:?}", got.outcome),
                    });
                    break;
                }
                if got.reads != *batch {
                    report.divergence = Some(Divergence {
                        index,
                        what: what(),
                        recorded: format!("{} bytes of batch entries read", batch.len()),
                        replayed: format!(
                            "{} bytes, differing from byte {}",
                            got.reads.len(),
                            first_difference(batch, &got.reads)
                        ),
                    });
                    break;
                }
            }
            Record::Ptwr {
                vcpu,
                fault_va,
                write,
                outcome,
            } => {
                let got = m.ptwr_write(Caller::new(DOMID, *vcpu), *fault_va, *write)?;
                let code = ptwr_code(&got);
                if code != *outcome {
                    report.divergence = Some(Divergence {
                        index,
                        what: format!("ptwr write {write:?} at fault VA {fault_va:#x}"),
                        recorded: format!("{outcome:?}"),
                        replayed: format!("{code:?} ({got:?})"),
                    });
                    break;
                }
            }
        }
    }
    report.audit = m.audit();
    Ok(report)
}

/// A page record may carry a frame that is a live page table at that point only with
/// the Accessed/Dirty bits of its present entries changed (the CPU's walker sets them;
/// dirty logging then records the page): any other change is one no guest can make (it
/// writes tables only through hypercalls and emulated writes, both recorded as such),
/// so the record is corrupt. Returns the divergence naming it.
fn table_overwrite<M: vm_memory::GuestMemory, F: pvmmu::TlbFlush>(
    m: &pvmmu::Machine<M, F>,
    index: usize,
    pfn: u64,
    bytes: &[u8],
) -> Option<Divergence> {
    let p = m.frames().get(pvmmu::Mfn(pfn))?;
    if !(p.validated && p.is_live_page_table()) {
        return None;
    }
    let level = p.ty.level()?;
    let current = pvmmu::visit_table(m.memory(), pvmmu::Mfn(pfn), level, |b| b.snapshot()).ok()?;
    const AD: u64 = pvmmu::PTE_AD_MASK;
    let changed = current
        .iter()
        .zip(bytes.chunks_exact(8))
        .enumerate()
        .find_map(|(i, (old, new))| {
            let new = u64::from_le_bytes(new.try_into().ok()?);
            let old = old.raw();
            let ad_only = old & 1 != 0 && (old ^ new) & !AD == 0;
            (old != new && !ad_only).then_some((i, old, new))
        });
    let whole = bytes.len() == PAGE as usize;
    if changed.is_none() && whole {
        return None;
    }
    let (i, old, new) = changed.unwrap_or((bytes.len() / 8, 0, 0));
    Some(Divergence {
        index,
        what: format!(
            "a page record writing frame {pfn:#x}, a live {} table: a guest changes its tables only through hypercalls and emulated writes (corrupt record)",
            p.ty
        ),
        recorded: if whole {
            format!("entry {i} = {new:#x}")
        } else {
            format!("{} bytes for a 4096-byte page", bytes.len())
        },
        replayed: format!(
            "entry {i} = {old:#x} (only its A/D bits may change behind the hypervisor)"
        ),
    })
}

fn first_difference(a: &[u8], b: &[u8]) -> usize {
    a.iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .unwrap_or(a.len().min(b.len()))
}
