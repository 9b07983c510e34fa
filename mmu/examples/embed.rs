//! A VMM embedding pvmmu over plain `GuestMemoryMmap` memory, without KVM: it plays Xen's
//! domain builder (builds and pins a guest's page tables), then serves the guest's
//! `mmu_update` hypercall and tears the domain down (`cargo run -p pvmmu --example embed`).

use std::error::Error;
use std::ops::ControlFlow;

use pvmmu::{
    Caller, DomainConfig, Level, Machine, MachineConfig, Mfn, Pte, PteFlags, RecordingFlush,
    VaRange, Visit, Walker,
};
use pvmmu_abi::mmu::{MMUEXT_NEW_BASEPTR, MMUEXT_PIN_L4_TABLE, MMUEXT_TLB_FLUSH_LOCAL};
use pvmmu_abi::{DOMID_SELF, MmuUpdate, MmuUpdateCmd, MmuextOp};
use vm_memory::{GuestAddress, GuestMemory, GuestMemoryMmap};

/// `foreigndom` meaning "the caller itself".
const SELF: u32 = DOMID_SELF as u32;
/// The guest VA where the example maps 16 pages.
const VA: u64 = 0x40_0000;
/// The domain's frames: the L4 first, then the other tables, data frames from 0x180.
const DOM_FRAMES: std::ops::Range<u64> = 0x100..0x200;
const DATA: u64 = 0x180;

/// Prints where the first four pages of `VA` lead under `root`.
fn show(mem: &impl GuestMemory, root: Mfn, when: &str) -> Result<(), Box<dyn Error>> {
    for page in 0..4 {
        let va = VA + (page << 12);
        let t = Walker::new(mem).translate(root, va)?.ok_or("unmapped")?;
        let rw = if t.writable() { "rw" } else { "ro" };
        println!("  {when:6} {va:#010x} -> frame {} ({rw})", t.mfn());
    }
    Ok(())
}

fn main() -> Result<(), Box<dyn Error>> {
    // 1. Guest memory: 4 MiB (1024 frames) of anonymous host memory.
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 4 << 20)])?;

    // 2. The machine. Every L4 the library validates gets Xen's slots 256..=271 from this
    //    template; slot 256 (the read-only M2P) points at frames reserved for the VMM.
    let mut config = MachineConfig::default();
    config.xen_l4_slots[0] = (0x10 << 12) | 0x5; // present, user, read-only
    let mut m = Machine::with_flusher(mem, config, RecordingFlush::default())?;
    m.reserve_xen_frames((0x10..0x14).map(Mfn))?;

    // 3. Domain 1 with one vCPU owns frames 0x100..0x200, with its M2P entries set.
    let dom = m.create_domain(DomainConfig::new(1))?;
    m.assign_frames(dom, DOM_FRAMES.map(Mfn))?;
    for f in DOM_FRAMES {
        m.set_m2p(Mfn(f), f - DOM_FRAMES.start);
    }
    let caller = Caller::new(dom, 0);

    // 4. Build the tree with the walker: root L4 at 0x100, missing L3/L2/L1 tables taken
    //    from 0x101.., 16 pages at VA mapped read-write to data frames 0x180... The table
    //    frames are mapped nowhere, so no writable mapping of them exists.
    let l4 = Mfn(DOM_FRAMES.start);
    let mut next = l4.0 + 1;
    let mut alloc = |_: Level| {
        next += 1;
        Some(Mfn(next - 1))
    };
    let mut l1 = None;
    let flags = PteFlags::PRESENT | PteFlags::RW | PteFlags::ACCESSED;
    let range = VaRange::new(VA, 16 << 12)?;
    let walker = Walker::new(m.memory());
    let _: ControlFlow<()> = walker.apply_to_page_range(l4, range, &mut alloc, |v| {
        if let Visit::Ptes(b) = v {
            l1 = Some(b.table());
            for i in 0..b.len() {
                b.set(i, Pte::new(Mfn(DATA + i as u64), flags));
            }
        }
        ControlFlow::Continue(())
    })?;
    let l1 = l1.ok_or("no L1 table")?;

    // 5. Pin the L4 (validates the whole tree) and make it vCPU 0's kernel root.
    let ops = [MMUEXT_PIN_L4_TABLE, MMUEXT_NEW_BASEPTR].map(|cmd| MmuextOp::new(cmd, l4.0, 0));
    m.mmuext_op(caller, &ops, SELF)?.result?;
    println!("pinned L4 {l4}: {} entries validated", m.stats().validated);
    let root = m.kernel_root(caller).ok_or("no kernel root")?;
    show(m.memory(), root, "before")?;

    // 6. The guest's batched mmu_update: remap pages 1..=3 to frames 0x1f1..=0x1f3, page 2
    //    read-only. `ptr` is the machine address of the L1 entry, plus the command.
    let (ro, rw) = (PteFlags::PRESENT | PteFlags::ACCESSED, PteFlags::RW);
    let mut reqs = Vec::new();
    for page in 1..=3u64 {
        let ptr = l1.addr() + 8 * (((VA >> 12) + page) & 511);
        let val = Pte::new(Mfn(0x1f0 + page), if page == 2 { ro } else { ro | rw });
        reqs.push(MmuUpdate::new(MmuUpdateCmd::NormalPtUpdate, ptr, val.raw()));
    }
    let o = m.mmu_update(caller, &reqs, SELF)?;
    let (done, rc) = (o.done, o.rc());
    println!(
        "mmu_update: {done} of {} requests done, rc {rc}",
        reqs.len()
    );
    show(m.memory(), root, "after")?;

    // 7. The guest flushes its TLB: the library hands the embedder a flush request (here
    //    recorded) naming the frames whose old translations went stale.
    let flush = MmuextOp::new(MMUEXT_TLB_FLUSH_LOCAL, 0, 0);
    m.mmuext_op(caller, &[flush], SELF)?.result?;
    for f in m.flusher().take() {
        let stale: Vec<String> = f.stale.iter().map(ToString::to_string).collect();
        let (why, scope, vcpus, stale) = (f.reason, f.scope, f.vcpus.0, stale.join(" "));
        println!("  flush {why:?} {scope:?} vcpus {vcpus:#x} stale [{stale}]");
    }

    // 8. Recompute every reference count from the tables and check the invariants.
    m.audit()?;
    println!("audit ok; stats {:?}", m.stats());

    // 9. Tear the domain down: roots dropped, tables unpinned and de-validated, frames freed.
    m.destroy_domain(dom)?;
    let free = DOM_FRAMES
        .filter(|&f| m.frames().get(Mfn(f)).is_some_and(|p| p.count == 0))
        .count();
    println!("domain {dom} destroyed: {free} of 256 frames free again");
    m.audit()?;
    Ok(())
}
