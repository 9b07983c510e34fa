//! An independent reference model of Xen's L1-entry rules (docs/xen-pv-mmu-rules.md
//! §4.2, §4.4): what `mmu_update` must answer for one L1 entry, from the frame table as it was
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

/// What Xen answers for writing `new` over `old` in entry `index` of the `level` table
/// (L2..L4) of domain `pt`, when that can be told without validating a new subtree:
/// `None` where the answer depends on validating the target's contents or on the
/// linear-page-table rules.
pub fn upper_update<F: TlbFlush>(
    m: &Machine<GuestMemoryMmap<()>, F>,
    pt: u16,
    level: u8,
    index: usize,
    old: u64,
    new: u64,
) -> Option<Result<(), Errno>> {
    if level == 4 && (256..272).contains(&index) {
        return Some(Err(Errno::EINVAL));
    }
    if new & 1 == 0 {
        return Some(Ok(()));
    }
    if new & 0x198 != 0 {
        return Some(Err(Errno::EINVAL));
    }
    let adjusted = new | 4 | if level == 4 { 0x20 } else { 0 };
    if old & 1 != 0 && (old ^ adjusted) & !WHITELIST == 0 {
        return Some(Ok(()));
    }
    let mfn = Mfn((new & ADDR) >> 12);
    let Some(p) = m.frames().get(mfn) else {
        return Some(Err(Errno::EINVAL));
    };
    if p.owner != pt || p.count == 0 {
        return Some(Err(Errno::EINVAL));
    }
    let lower = match level {
        2 => PageType::L1,
        3 => PageType::L2,
        _ => PageType::L3,
    };
    let same = match level {
        2 => PageType::L2,
        3 => PageType::L3,
        _ => PageType::L4,
    };
    if p.type_count == 0 || p.ty == same {
        return None; // validation of the target, or the linear rules
    }
    if p.ty == lower && p.validated {
        Some(Ok(()))
    } else {
        Some(Err(Errno::EINVAL))
    }
}

/// What Xen answers for pinning `mfn` as a table of `level` (1..=4) for domain `d`, when
/// that can be told without validating it.
pub fn pin<F: TlbFlush>(
    m: &Machine<GuestMemoryMmap<()>, F>,
    d: u16,
    level: u8,
    mfn: Mfn,
) -> Option<Result<(), Errno>> {
    let Some(p) = m.frames().get(mfn) else {
        return Some(Err(Errno::EINVAL));
    };
    if p.owner != d || p.count == 0 {
        return Some(Err(Errno::EINVAL));
    }
    let want = match level {
        1 => PageType::L1,
        2 => PageType::L2,
        3 => PageType::L3,
        _ => PageType::L4,
    };
    if p.type_count == 0 {
        return None; // validation decides
    }
    if p.ty != want || p.pinned {
        return Some(Err(Errno::EINVAL));
    }
    Some(Ok(()))
}

/// What Xen answers for unpinning `mfn` for domain `d`.
pub fn unpin<F: TlbFlush>(
    m: &Machine<GuestMemoryMmap<()>, F>,
    d: u16,
    mfn: Mfn,
) -> Result<(), Errno> {
    match m.frames().get(mfn) {
        Some(p) if p.owner == d && p.count > 0 && p.pinned => Ok(()),
        _ => Err(Errno::EINVAL),
    }
}
