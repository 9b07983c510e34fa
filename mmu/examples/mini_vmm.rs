//! A VMM in miniature embedding pvmmu the way a real one would, without KVM:
//! - its own guest memory type: `GuestMemoryMmap<AtomicBitmap>`, vm-memory's dirty
//!   bitmap, which the library marks for every page-table entry it writes (what live
//!   migration needs);
//! - its own vCPU threads: each "vCPU" is a thread playing guest code, which writes its
//!   hypercall arguments into guest memory and traps to the VMM;
//! - its own hypercall transport: a vCPU serves its `mmu_update` calls itself through
//!   the `SharedMachine` all threads share (`SharedMachine::hypercall_mmu_update`: the
//!   L1 updates of its own tables concurrently with the other vCPUs', as Xen does), and
//!   traps everything else, and whatever part of a batch needs the whole machine, over
//!   a channel to the VMM thread, which serves it with `Machine::hypercall` under
//!   `SharedMachine::lock` (the PV MMU hypercalls the library's, the others its own
//!   `HypercallHandler`) and answers RAX.
//!
//! `cargo run -p pvmmu --example mini_vmm` (CI runs it; it exits non-zero if any
//! result differs from what Xen answers).

use std::error::Error;
use std::ops::ControlFlow;
use std::sync::mpsc;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use pvmmu::{
    Caller, DomainConfig, Level, Machine, MachineConfig, Mfn, Pte, PteFlags, RecordingFlush,
    SharedCall, SharedMachine, VaRange, Visit, Walker,
};
use pvmmu_abi::hypercall::{HYPERVISOR_mmu_update, HYPERVISOR_multicall, HYPERVISOR_xen_version};
use pvmmu_abi::mmu::{MMUEXT_NEW_BASEPTR, MMUEXT_PIN_L4_TABLE};
use pvmmu_abi::{DOMID_SELF, Errno, MmuUpdate, MmuUpdateCmd, MmuextOp, MulticallEntry};
use vm_memory::bitmap::{AtomicBitmap, Bitmap};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

type Mem = GuestMemoryMmap<AtomicBitmap>;
type Vmm = Machine<Mem, RecordingFlush>;

/// Each vCPU's data page (its arguments) and the VA range it remaps.
const ARGS: [u64; 2] = [0x190, 0x191];
const VA: u64 = 0x40_0000;
/// The domain's frames: tables from 0x100, data from 0x180.
const DOM_FRAMES: std::ops::Range<u64> = 0x100..0x200;
const SELF: u64 = DOMID_SELF as u64;

/// One trap from a vCPU thread: its index, the hypercall number and the argument
/// registers, and where to send RAX.
struct Trap {
    vcpu: u32,
    nr: u64,
    args: [u64; 5],
    reply: mpsc::Sender<i64>,
}

/// The VMM's own hypercalls (those the library does not serve).
fn platform(_: &mut Vmm, _: Caller, nr: u64, _: [u64; 5]) -> i64 {
    if nr == HYPERVISOR_xen_version {
        0x4_0011
    } else {
        Errno::ENOSYS.neg()
    }
}

/// Guest code of vCPU `v`: remaps its own page of the range with one `mmu_update`
/// (requests written into its argument page, read by the library through the guest's
/// page tables), then a multicall of `xen_version` and an unknown call.
fn vcpu(
    v: u32,
    mem: Mem,
    l1: Mfn,
    shared: Arc<SharedMachine<Mem, RecordingFlush>>,
    concurrent: Arc<AtomicU32>,
    trap: mpsc::Sender<Trap>,
) -> Result<Vec<i64>, String> {
    let (reply, answers) = mpsc::channel();
    let trap_to_vmm = |nr, args| -> Result<i64, String> {
        trap.send(Trap {
            vcpu: v,
            nr,
            args,
            reply: reply.clone(),
        })
        .map_err(|e| e.to_string())?;
        answers.recv().map_err(|e| e.to_string())
    };
    let call = |nr, mut args| -> Result<i64, String> {
        if nr != HYPERVISOR_mmu_update {
            return trap_to_vmm(nr, args);
        }
        // Served on this thread as far as it runs concurrently; the rest by the VMM.
        loop {
            match shared
                .hypercall_mmu_update(Caller::new(1, v), args)
                .map_err(|e| e.to_string())?
            {
                SharedCall::Done(rax) => {
                    concurrent.fetch_add(1, Ordering::Relaxed);
                    return Ok(rax);
                }
                // A real VMM resumes the guest at its hypercall instruction.
                SharedCall::Preempted(next) => args = next,
                SharedCall::Exclusive(rest) => return trap_to_vmm(nr, rest),
            }
        }
    };
    let args = GuestAddress(ARGS[v as usize] << 12);
    let page = u64::from(v);
    let req = MmuUpdate::new(
        MmuUpdateCmd::NormalPtUpdate,
        l1.addr() + 8 * (((VA >> 12) + page) & 511),
        Pte::new(Mfn(0x1f0 + page), PteFlags::PRESENT | PteFlags::ACCESSED).raw(),
    );
    let w = |e: vm_memory::GuestMemoryError| e.to_string();
    mem.write_slice(&req.to_bytes(), args).map_err(w)?;
    // The guest's VAs are its pseudo-physical addresses here (identity-mapped args).
    let va = ARGS[v as usize] << 12;
    let rc = call(HYPERVISOR_mmu_update, [va, 1, va + 0x800, SELF, 0])?;
    let done: u32 = mem.read_obj(GuestAddress(args.0 + 0x800)).map_err(w)?;
    let entries = [
        MulticallEntry {
            op: HYPERVISOR_xen_version,
            result: 0,
            args: [0; 6],
        },
        MulticallEntry {
            op: 99,
            result: 0,
            args: [0; 6],
        },
    ];
    let list = args.0 + 0x400;
    for (i, e) in entries.iter().enumerate() {
        mem.write_slice(&e.to_bytes(), GuestAddress(list + i as u64 * 64))
            .map_err(w)?;
    }
    let mc = call(HYPERVISOR_multicall, [list, 2, 0, 0, 0])?;
    let r0: u64 = mem.read_obj(GuestAddress(list + 8)).map_err(w)?;
    let r1: u64 = mem.read_obj(GuestAddress(list + 64 + 8)).map_err(w)?;
    Ok(vec![rc, i64::from(done), mc, r0 as i64, r1 as i64])
}

fn check(what: &str, got: i64, want: i64) -> Result<(), Box<dyn Error>> {
    println!("  {what}: {got:#x}");
    if got != want {
        return Err(format!("{what}: got {got:#x}, want {want:#x}").into());
    }
    Ok(())
}

fn main() -> Result<(), Box<dyn Error>> {
    // Guest memory with a dirty bitmap, and the PV MMU over it.
    let mem = Mem::from_ranges(&[(GuestAddress(0), 4 << 20)])?;
    let mut config = MachineConfig::default();
    config.xen_l4_slots[0] = (0x10 << 12) | 0x5;
    let mut m = Machine::with_flusher(mem.clone(), config, RecordingFlush::default())?;
    m.reserve_xen_frames((0x10..0x14).map(Mfn))?;
    let dom = m.create_domain(DomainConfig::new(1).vcpus(2))?;
    m.assign_frames(dom, DOM_FRAMES.map(Mfn))?;

    // The domain builder's part: an identity map of the domain's frames (tables
    // read-only) and 16 pages at VA, built with the walker, pinned, installed on both
    // vCPUs.
    let l4 = Mfn(DOM_FRAMES.start);
    let mut next = l4.0 + 1;
    let mut tables = vec![l4];
    let mut alloc = |_: Level| {
        next += 1;
        tables.push(Mfn(next - 1));
        Some(Mfn(next - 1))
    };
    let walker = Walker::new(m.memory());
    let ident = VaRange::new(
        DOM_FRAMES.start << 12,
        (DOM_FRAMES.end - DOM_FRAMES.start) << 12,
    )?;
    let range = VaRange::new(VA, 16 << 12)?;
    let mut l1 = None;
    for r in [ident, range] {
        let _: ControlFlow<()> =
            walker.apply_to_page_range(l4, r, &mut alloc, |_| ControlFlow::Continue(()))?;
    }
    let _: ControlFlow<()> = walker.apply_to_existing_page_range(l4, ident, |v| {
        if let Visit::Ptes(b) = v {
            for i in 0..b.len() {
                let f = b.va(i) >> 12;
                let rw = if tables.contains(&Mfn(f)) {
                    PteFlags::empty()
                } else {
                    PteFlags::RW
                };
                b.set(
                    i,
                    Pte::new(Mfn(f), PteFlags::PRESENT | PteFlags::ACCESSED | rw),
                );
            }
        }
        ControlFlow::Continue(())
    })?;
    let _: ControlFlow<()> = walker.apply_to_existing_page_range(l4, range, |v| {
        if let Visit::Ptes(b) = v {
            l1 = Some(b.table());
            for i in 0..b.len() {
                b.set(
                    i,
                    Pte::new(
                        Mfn(0x180 + i as u64),
                        PteFlags::PRESENT | PteFlags::RW | PteFlags::ACCESSED,
                    ),
                );
            }
        }
        ControlFlow::Continue(())
    })?;
    let l1 = l1.ok_or("no L1")?;
    for v in 0..2 {
        let ops = [MMUEXT_PIN_L4_TABLE, MMUEXT_NEW_BASEPTR].map(|c| MmuextOp::new(c, l4.0, 0));
        let ops = if v == 0 { &ops[..] } else { &ops[1..] };
        m.mmuext_op(Caller::new(dom, v), ops, DOMID_SELF.into())?
            .result?;
    }
    // Forget the builder's own writes: from here the bitmap shows the guest's run.
    for region in m.memory().iter() {
        std::ops::Deref::deref(region).bitmap().reset();
    }

    // Two vCPU threads sharing the machine, trapping the rest into the VMM thread over
    // a channel.
    let shared = Arc::new(SharedMachine::new(m));
    let concurrent = Arc::new(AtomicU32::new(0));
    let (trap, traps) = mpsc::channel::<Trap>();
    let threads: Vec<_> = (0..2u32)
        .map(|v| {
            let (mem, trap) = (mem.clone(), trap.clone());
            let (shared, concurrent) = (shared.clone(), concurrent.clone());
            std::thread::spawn(move || vcpu(v, mem, l1, shared, concurrent, trap))
        })
        .collect();
    drop(trap);
    let mut handler = platform;
    for t in traps {
        let r = shared
            .lock()
            .hypercall(Caller::new(dom, t.vcpu), t.nr, t.args, &mut handler)?;
        let _ = t.reply.send(r.rax);
    }
    let mut results = Vec::new();
    for t in threads {
        results.push(t.join().map_err(|_| "vCPU thread panicked")??);
    }
    let mut m = Arc::into_inner(shared)
        .ok_or("the machine is still shared")?
        .into_inner();
    // Both remaps are L1 updates of the domain's own table: served on the vCPU threads.
    check(
        "mmu_update calls served concurrently",
        i64::from(concurrent.load(Ordering::Relaxed)),
        2,
    )?;
    for (v, r) in results.into_iter().enumerate() {
        println!("vCPU {v}:");
        check("mmu_update rc", r[0], 0)?;
        check("mmu_update *pdone", r[1], 1)?;
        check("multicall rc", r[2], 0)?;
        check("multicall xen_version", r[3], 0x4_0011)?;
        check("multicall unknown call", r[4], Errno::ENOSYS.neg())?;
        let t = Walker::new(m.memory())
            .translate(l4, VA + ((v as u64) << 12))?
            .ok_or("unmapped")?;
        check("page now maps frame", t.mfn().0 as i64, 0x1f0 + v as i64)?;
        check("read-only", i64::from(t.writable()), 0)?;
    }
    // The dirty bitmap names the L1 the library wrote (and the vCPUs' argument pages).
    let dirty = |f: u64| {
        m.memory()
            .iter()
            .any(|r| r.bitmap().dirty_at((f << 12) as usize))
    };
    check("L1 frame dirty", i64::from(dirty(l1.0)), 1)?;
    check("an untouched data frame clean", i64::from(dirty(0x185)), 0)?;
    m.audit()?;
    m.destroy_domain(dom)?;
    m.audit()?;
    println!("mini VMM: two vCPU threads served, dirty log as expected, audit clean");
    Ok(())
}
