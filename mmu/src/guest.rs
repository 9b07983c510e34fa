//! Access to guest *virtual* memory, as Xen's `copy_from_guest`/`copy_to_guest` do it:
//! through the guest's current kernel page tables (walked with the batched walker), as
//! a supervisor access (present everywhere; RW everywhere for writes), refusing
//! addresses in the hypervisor's range. Any failure is `-EFAULT`.

use std::ops::ControlFlow;

use pvmmu_abi::Errno;
use pvmmu_abi::layout::is_guest_va;
use vm_memory::{Bytes, GuestAddress, GuestMemory};

use crate::entry::{Mfn, PteFlags};
use crate::paging::Level;
use crate::paging::PAGE_SIZE;
use crate::range::VaRange;
use crate::walk::{Visit, Walker};

/// Xen's `access_ok` for an array of `len` bytes at `va` (64-bit PV): only where it
/// starts matters, the guest's half of the address space or above the hypervisor's
/// range. As Xen's own comment says, an array that runs on from there reaches a
/// non-canonical address, and faults, before the hypervisor's range; so a batch whose
/// array runs off the end is refused at the entry that cannot be read, not up front.
pub fn guest_range_ok(va: u64, len: u64) -> bool {
    let _ = len;
    is_guest_va(va)
}

#[derive(Debug, Clone, Copy)]
struct Cached {
    page: u64,
    paddr: u64,
    writable: bool,
    tables: [Mfn; 4],
    /// Machine addresses of the four entries on the path (L4e first).
    entries: [u64; 4],
}

/// A view of one vCPU's guest-virtual memory through its kernel root, with a one-page
/// translation cache that is dropped whenever a table on the cached path is written.
#[derive(Debug)]
pub struct GuestView<'m, M: ?Sized> {
    mem: &'m M,
    root: Option<Mfn>,
    cache: Option<Cached>,
}

impl<'m, M: GuestMemory + ?Sized> GuestView<'m, M> {
    /// A view through `root` (`None`: nothing is mapped).
    pub fn new(mem: &'m M, root: Option<Mfn>) -> Self {
        GuestView {
            mem,
            root,
            cache: None,
        }
    }

    /// Tells the view that an entry of the table `table` changed.
    pub fn table_written(&mut self, table: Mfn) {
        if self.cache.is_some_and(|c| c.tables.contains(&table)) {
            self.cache = None;
        }
    }

    /// Tells the view that the entry at machine address `addr` changed: the cached
    /// translation goes only if that entry is on its path.
    pub fn entry_written(&mut self, addr: u64) {
        if self.cache.is_some_and(|c| c.entries.contains(&(addr & !7))) {
            self.cache = None;
        }
    }

    /// Switches to another root.
    pub fn set_root(&mut self, root: Option<Mfn>) {
        self.root = root;
        self.cache = None;
    }

    fn translate(&mut self, va: u64, write: bool) -> Result<u64, Errno> {
        if !is_guest_va(va) {
            return Err(Errno::EFAULT);
        }
        let page = va & !(PAGE_SIZE - 1);
        if let Some(c) = self.cache.filter(|c| c.page == page) {
            return if write && !c.writable {
                Err(Errno::EFAULT)
            } else {
                Ok(c.paddr + (va - page))
            };
        }
        let root = self.root.ok_or(Errno::EFAULT)?;
        let mut found = None;
        let walk =
            Walker::new(self.mem).apply_to_existing_page_range(root, VaRange::page(va), |v| {
                if let Visit::Ptes(b) = v {
                    let pte = b.get(0);
                    if pte.is_present() {
                        let path = b.path();
                        let writable =
                            pte.has(PteFlags::RW) && path.iter().all(|e| e.has(PteFlags::RW));
                        let mut tables = [root; 4];
                        for (k, e) in path.iter().take(2).enumerate() {
                            tables[k + 1] = e.mfn();
                        }
                        tables[3] = b.table();
                        let levels = [Level::L4, Level::L3, Level::L2];
                        let mut entries = [0u64; 4];
                        for (k, level) in levels.into_iter().enumerate() {
                            entries[k] = tables[k].addr() + level.index(va) as u64 * 8;
                        }
                        entries[3] = b.entry_addr(0);
                        found = Some(Cached {
                            page,
                            paddr: pte.addr(),
                            writable,
                            tables,
                            entries,
                        });
                    }
                }
                // Superpages cannot exist in validated PV tables; treat them as faults.
                ControlFlow::<()>::Break(())
            });
        if walk.is_err() {
            return Err(Errno::EFAULT);
        }
        let c = found.ok_or(Errno::EFAULT)?;
        self.cache = Some(c);
        if write && !c.writable {
            return Err(Errno::EFAULT);
        }
        Ok(c.paddr + (va - page))
    }

    /// Copies `buf.len()` bytes from guest VA `va`, which must lie in one page, and
    /// returns the machine addresses of the four entries on the path that maps it
    /// (L4e first) and the frame the bytes came from: a caller keeping the bytes knows
    /// which entry writes make them stale (one of those entries, or any entry of the
    /// frame itself when the bytes lie in a page table).
    pub(crate) fn read_in_page(
        &mut self,
        va: u64,
        buf: &mut [u8],
    ) -> Result<([u64; 4], Mfn), Errno> {
        let pa = self.translate(va, false)?;
        let entries = self.cache.map(|c| c.entries).ok_or(Errno::EFAULT)?;
        self.mem
            .read_slice(buf, GuestAddress(pa))
            .map_err(|_| Errno::EFAULT)?;
        Ok((entries, Mfn::containing(pa)))
    }

    /// Copies `buf.len()` bytes from guest VA `va`.
    pub fn read(&mut self, va: u64, buf: &mut [u8]) -> Result<(), Errno> {
        let mut done = 0usize;
        while done < buf.len() {
            let cur = va.checked_add(done as u64).ok_or(Errno::EFAULT)?;
            let room = (PAGE_SIZE - (cur & (PAGE_SIZE - 1))) as usize;
            let n = room.min(buf.len() - done);
            let pa = self.translate(cur, false)?;
            self.mem
                .read_slice(&mut buf[done..done + n], GuestAddress(pa))
                .map_err(|_| Errno::EFAULT)?;
            done += n;
        }
        Ok(())
    }

    /// Copies `buf` to guest VA `va`.
    pub fn write(&mut self, va: u64, buf: &[u8]) -> Result<(), Errno> {
        let mut done = 0usize;
        while done < buf.len() {
            let cur = va.checked_add(done as u64).ok_or(Errno::EFAULT)?;
            let room = (PAGE_SIZE - (cur & (PAGE_SIZE - 1))) as usize;
            let n = room.min(buf.len() - done);
            let pa = self.translate(cur, true)?;
            self.mem
                .write_slice(&buf[done..done + n], GuestAddress(pa))
                .map_err(|_| Errno::EFAULT)?;
            done += n;
        }
        Ok(())
    }

    /// Reads `N` bytes (a hypercall argument structure, say).
    pub fn read_array<const N: usize>(&mut self, va: u64) -> Result<[u8; N], Errno> {
        let mut b = [0u8; N];
        self.read(va, &mut b)?;
        Ok(b)
    }

    /// Reads a little-endian `u64`.
    pub fn read_u64(&mut self, va: u64) -> Result<u64, Errno> {
        self.read_array(va).map(u64::from_le_bytes)
    }

    /// Reads a little-endian `u32`.
    pub fn read_u32(&mut self, va: u64) -> Result<u32, Errno> {
        self.read_array(va).map(u32::from_le_bytes)
    }

    /// Writes a little-endian `u32`.
    pub fn write_u32(&mut self, va: u64, v: u32) -> Result<(), Errno> {
        self.write(va, &v.to_le_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_ok_edges() {
        // Only the start matters, as in Xen: the rest faults when it is copied.
        assert!(guest_range_ok(0, 0));
        assert!(guest_range_ok(0x7fff_ffff_f000, 0x1000));
        assert!(guest_range_ok(0x7fff_ffff_f000, 0x1001));
        assert!(!guest_range_ok(0x8000_0000_0000, 8), "non-canonical start");
        assert!(
            !guest_range_ok(0xffff_8000_0000_0000, 8),
            "the hypervisor's range"
        );
        assert!(!guest_range_ok(0xffff_87ff_ffff_fff8, 8));
        assert!(guest_range_ok(0xffff_8800_0000_0000, 8));
        assert!(guest_range_ok(u64::MAX, 2));
    }
}
