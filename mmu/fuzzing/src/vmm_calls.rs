//! The `vmm_hypercall` harness: raw hypercall registers and guest memory contents against
//! the VMM's dispatch, over a domain the VMM's own recipe built ([`platform::Domain`],
//! no KVM).

use std::sync::OnceLock;

use arbitrary::{Arbitrary, Unstructured};
use platform::dispatch::{self, DomainState, NullConsole};
use platform::pv::GuestContext;
use platform::trace::{Record, TraceHeader};
use platform::{DOMID, Domain, DomainSpec};
use pvmmu::{Caller, RecordingFlush};
use vm_memory::{Bytes, GuestAddress};

/// Guest memory for the harness (the VMM's minimum).
const MEMORY_MIB: u64 = 16;

/// An argument register value.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Arg {
    /// A VA inside the builder's initial mapping (so the guest could have put data there).
    Mapped(u16),
    /// A small number.
    Small(u8),
    /// Anything.
    Raw(u64),
}

/// One hypercall.
#[derive(Arbitrary, Debug, Clone)]
pub struct Call {
    nr: u8,
    args: [Arg; 5],
}

/// Guest memory the guest wrote before its calls.
#[derive(Arbitrary, Debug, Clone)]
pub struct Write {
    page: u16,
    offset: u16,
    bytes: Vec<u8>,
}

/// A harness input.
#[derive(Arbitrary, Debug, Clone)]
pub struct Input {
    writes: Vec<Write>,
    calls: Vec<Call>,
}

/// The harness's guest: a minimal PV image (its code never runs; the calls are the
/// fuzzer's).
fn image() -> &'static [u8] {
    static IMAGE: OnceLock<Vec<u8>> = OnceLock::new();
    IMAGE.get_or_init(|| platform::elf::minimal_image(&[0x0f, 0x0b]))
}

/// The harness. An input that is a pvmmu trace (`pvmmu run --trace`) is replayed with
/// the oracles checked after every record, so recorded runs seed the corpus; any other
/// input is decoded with `arbitrary`.
pub fn vmm_hypercall(data: &[u8]) {
    if data.starts_with(platform::trace::MAGIC) {
        if let Ok((header, records)) = platform::trace::parse(data) {
            replay_checked(&header, &records);
        }
        return;
    }
    let _ = run(data);
}

/// A fuzzer input as a trace (header and records), with the results this build gives:
/// findings written this way replay with `pvmmu replay`.
pub fn to_trace(data: &[u8]) -> Option<(TraceHeader, Vec<Record>)> {
    run(data)
}

fn replay_checked(header: &TraceHeader, records: &[Record]) {
    if !(16..=64).contains(&header.memory_mib) {
        return;
    }
    let spec = DomainSpec {
        vcpus: 1,
        ..header.spec()
    };
    let Ok(d) = Domain::create(&spec, RecordingFlush::default()) else {
        return;
    };
    let mut pv = d.pv_vcpu(0);
    let mut dom = DomainState::new(&d.boot, 1);
    let Domain { machine: mut m, .. } = d;
    for r in records.iter().take(4096) {
        match r {
            Record::Pages(pages) => {
                // Only pages the guest could have written: its own frames that are not
                // live page tables (a mutated trace may name any page).
                for (pfn, bytes) in pages {
                    let guest_writable = m.frames().get(pvmmu::Mfn(*pfn)).is_some_and(|p| {
                        p.owner == DOMID && p.count > 0 && !p.is_live_page_table()
                    });
                    if guest_writable && let Some(at) = pfn.checked_mul(4096) {
                        let _ = m.memory().write_slice(bytes, GuestAddress(at));
                    }
                }
            }
            Record::Hypercall {
                nr, args, context, ..
            } => {
                let mut ctx = *context;
                let r = dispatch::dispatch(
                    &mut m,
                    &mut NullConsole,
                    &mut dom,
                    &mut pv,
                    &mut ctx,
                    *nr,
                    *args,
                );
                assert!(r.is_ok(), "dispatch refused a valid caller: {r:?}");
            }
            Record::Ptwr {
                fault_va, write, ..
            } => {
                let _ = m.ptwr_write(Caller::new(DOMID, 0), *fault_va, *write);
            }
        }
        if let Err(e) = m.audit() {
            let what = match r {
                Record::Pages(p) => {
                    format!("pages {:x?}", p.iter().map(|x| x.0).collect::<Vec<_>>())
                }
                Record::Hypercall { nr, args, .. } => format!("hypercall {nr} {args:#x?}"),
                Record::Ptwr {
                    fault_va, write, ..
                } => format!("ptwr at {fault_va:#x}: {write:?}"),
            };
            panic!("audit failed after trace record {what}: {e}");
        }
    }
    let _ = m.destroy_domain(DOMID);
    if let Err(e) = m.audit() {
        panic!("audit failed after teardown: {e}");
    }
}

fn run(data: &[u8]) -> Option<(TraceHeader, Vec<Record>)> {
    let mut u = Unstructured::new(data);
    let input = Input::arbitrary(&mut u).ok()?;
    let spec = DomainSpec::new(image().to_vec(), MEMORY_MIB);
    let d = Domain::create(&spec, RecordingFlush::default()).expect("the harness domain builds");
    let mut pv = d.pv_vcpu(0);
    let mut dom = DomainState::new(&d.boot, 1);
    let Domain {
        machine: mut m,
        boot,
        ..
    } = d;
    m.record_reads(true);
    let mapped = boot.mapped_pages.max(1);
    let header = TraceHeader::new(&spec);
    let mut records = Vec::new();
    // Guest writes land only in pages the guest could write: its mapped, writable ones.
    for w in input.writes.iter().take(16) {
        let page = u64::from(w.page) % mapped;
        let writable = pvmmu::Walker::new(m.memory())
            .translate(boot.l4, page << 12)
            .ok()
            .flatten()
            .is_some_and(|t| t.writable());
        if writable {
            let at = (page << 12) + u64::from(w.offset % 4096);
            let n = w.bytes.len().min((4096 - (at & 0xfff)) as usize);
            let _ = m.memory().write_slice(&w.bytes[..n], GuestAddress(at));
            let mut content = vec![0u8; 4096];
            let _ = m
                .memory()
                .read_slice(&mut content, GuestAddress(page << 12));
            records.push(Record::Pages(vec![(page, content)]));
        }
    }
    for call in input.calls.iter().take(32) {
        let nr = u64::from(call.nr % 40);
        let args = call.args.map(|a| match a {
            Arg::Mapped(p) => (u64::from(p) % mapped) << 12 | u64::from(p >> 8 & 0xff0),
            Arg::Small(s) => u64::from(s),
            Arg::Raw(r) => r,
        });
        // The stack a call like `iret` reads: the last argument, as the guest's RSP.
        let context = GuestContext {
            rsp: args[4],
            ..GuestContext::default()
        };
        let mut ctx = context;
        let r = dispatch::dispatch(
            &mut m,
            &mut NullConsole,
            &mut dom,
            &mut pv,
            &mut ctx,
            nr,
            args,
        );
        assert!(r.is_ok(), "dispatch refused a valid caller: {r:?}");
        if let Ok(served) = r {
            records.push(Record::Hypercall {
                vcpu: 0,
                nr,
                args,
                batch: served.reads,
                outcome: served.outcome,
                context,
            });
        }
        if let Err(e) = m.audit() {
            panic!("audit failed after hypercall {nr} {args:#x?}: {e}");
        }
    }
    m.destroy_domain(DOMID)
        .expect("teardown returns every frame");
    if let Err(e) = m.audit() {
        panic!("audit failed after teardown: {e}");
    }
    Some((header, records))
}
