//! An independent reference model of Xen's L1-entry rules (reference/xen-pvmmu.md §4.2,
//! §4.4): what `mmu_update` must answer for one L1 entry, from the frame table as it was
//! before the update. Written separately from the library's `validate` module, in the
//! plainest terms, so that the two can disagree.

use pvmmu::{Errno, Machine, Mfn, PageType, RecordingFlush, TlbFlush};
use vm_memory::GuestMemoryMmap;

/// Bits a whitelisted (fast-path) change may touch: NX, AVAIL_HIGH, AVAIL, G, D, A, US.
const WHITELIST: u64 = 0xfff0_0000_0000_0f64;
const ADDR: u64 = 0x000f_ffff_ffff_f000;

/// What Xen answers for writing `new` over `old` in an L1 table of domain `pt` with data
/// frames owned by `fd` (both real domains, FD not privileged over others).
pub fn l1_update<F: TlbFlush>(
    m: &Machine<GuestMemoryMmap<()>, F>,
    pt: u16,
    fd: u16,
    old: u64,
    new: u64,
) -> Result<(), Errno> {
    if new & 1 == 0 {
        return Ok(());
    }
    let io_rights = m.domain(pt).is_some_and(|d| d.cache_flush_permitted());
    if !io_rights && new & 0x98 != 0 {
        return Err(Errno::EINVAL);
    }
    // Xen's rewrite of a kernel mapping, then the fast path.
    let mut adjusted = new;
    if adjusted & 4 == 0 {
        adjusted |= 4 | (1 << 52);
    }
    if adjusted & (1 << 52) == 0 {
        adjusted |= 0x104;
    }
    if old & 1 != 0 && (old ^ adjusted) & !WHITELIST == 0 {
        return Ok(());
    }
    let mfn = Mfn((new & ADDR) >> 12);
    match m.frames().get(mfn) {
        None => {
            // Not RAM: I/O memory, mappable with permission only.
            if mfn.0 == ADDR >> 12 {
                return Err(Errno::EINVAL);
            }
            let ok = m.domain(fd).is_some_and(|d| d.iomem_permitted(mfn.0))
                && (fd == pt || m.domain(pt).is_some_and(|d| d.iomem_permitted(mfn.0)));
            if ok { Ok(()) } else { Err(Errno::EPERM) }
        }
        Some(p) if p.owner == pvmmu_abi::DOMID_IO => {
            let ok = m.domain(fd).is_some_and(|d| d.iomem_permitted(mfn.0));
            if ok { Ok(()) } else { Err(Errno::EPERM) }
        }
        Some(p) => {
            if p.owner != fd || p.count == 0 {
                return Err(Errno::EBUSY);
            }
            let busy = p.type_count > 0 && p.ty != PageType::Writable;
            if new & 2 != 0 && busy {
                return Err(Errno::EBUSY);
            }
            Ok(())
        }
    }
}

/// The same for a machine with recorded flushes (the harness's).
pub type HarnessMachine = Machine<GuestMemoryMmap<()>, RecordingFlush>;
