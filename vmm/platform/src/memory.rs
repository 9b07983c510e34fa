//! `memory_op` (hypercall 12) as Xen answers a 64-bit PV domU: the domain's memory map
//! (set by the toolstack, here the VMM, or by the guest itself with
//! `XENMEM_set_memory_map`, which Xen allows a domain for itself), the machine's size,
//! the domain's reservation and largest frame, where the read-only M2P is mapped and
//! which frames back it. The host's memory map is privileged (-EPERM). The reservation
//! changes with `decrease_reservation`, `increase_reservation` and `populate_physmap`
//! (the rules are the library's, `pvmmu::reservation`; here the guest's arguments, and
//! Xen's way of answering: the number of extents done, the continuation's start when
//! the arguments are refused), and `exchange` with Xen's checks in Xen's order.

#![allow(non_upper_case_globals)] // Xen's names for the sub-operations

use pvmmu::{Caller, Errno, TlbFlush};
use pvmmu_abi::memory::{
    XENMEM_current_reservation, XENMEM_decrease_reservation, XENMEM_exchange,
    XENMEM_increase_reservation, XENMEM_machine_memory_map, XENMEM_machphys_mapping,
    XENMEM_machphys_mfn_list, XENMEM_maximum_gpfn, XENMEM_maximum_ram_page,
    XENMEM_maximum_reservation, XENMEM_memory_map, XENMEM_populate_physmap, decode_memory_op_cmd,
};
use vm_memory::{Bytes, GuestAddress};

use crate::named::own_domain;

/// The machine the domain lives in.
type Mach<F> = pvmmu::Machine<vm_memory::GuestMemoryMmap<()>, F>;

/// `XENMEM_set_memory_map` (13).
pub const XENMEM_set_memory_map: u32 = 13;
/// Largest memory map Xen keeps for a domain (`E820MAX`).
pub const E820_MAX: u32 = 1024;
/// E820 type of RAM.
pub const E820_RAM: u32 = 1;
/// Bytes of an E820 entry (`addr`, `size`, `type`, packed).
const E820_ENTRY: u64 = 20;
/// Offset of `arch.max_pfn` in the shared_info page (after the vCPU infos, the event
/// bitmaps and the wallclock words).
const SHARED_INFO_MAX_PFN: u64 = 3088;
/// Bytes of M2P one `machphys_mfn_list` extent covers (a 2 MiB superpage).
const M2P_EXTENT: u64 = 2 << 20;

/// One E820 entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct E820Entry {
    /// Start address.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// Type (1: RAM).
    pub kind: u32,
}

impl E820Entry {
    fn to_bytes(self) -> [u8; E820_ENTRY as usize] {
        let mut b = [0u8; E820_ENTRY as usize];
        b[..8].copy_from_slice(&self.addr.to_le_bytes());
        b[8..16].copy_from_slice(&self.size.to_le_bytes());
        b[16..].copy_from_slice(&self.kind.to_le_bytes());
        b
    }

    fn from_bytes(b: &[u8]) -> E820Entry {
        let word = |i: usize| {
            b.get(i..i + 8)
                .map_or(0, |s| u64::from_le_bytes(s.try_into().unwrap_or_default()))
        };
        let kind = b
            .get(16..20)
            .map_or(0, |s| u32::from_le_bytes(s.try_into().unwrap_or_default()));
        E820Entry {
            addr: word(0),
            size: word(8),
            kind,
        }
    }
}

/// What `memory_op` knows of a domain and its machine.
#[derive(Debug, Clone, Default)]
pub struct MemoryOps {
    /// The domain's memory map (empty: none, -ENOSYS as Xen answers then).
    pub e820: Vec<E820Entry>,
    /// `max_pages`: the reservation the toolstack allows.
    pub max_pages: u64,
    /// Frames of the machine (Xen's `max_page`).
    pub machine_frames: u64,
    /// First frame of the M2P table.
    pub m2p_first: u64,
    /// Guest-physical address of the domain's shared_info page.
    pub shared_info: u64,
}

impl MemoryOps {
    /// The memory operations of a domain built with `boot`: a memory map of one RAM
    /// region holding its `nr_pages` (what the VMM, as toolstack, sets), and a
    /// reservation of that size.
    pub fn new(boot: &crate::builder::BootInfo) -> MemoryOps {
        MemoryOps {
            e820: vec![E820Entry {
                addr: 0,
                size: boot.nr_pages * 4096,
                kind: E820_RAM,
            }],
            max_pages: boot.nr_pages,
            machine_frames: boot.machine_frames,
            m2p_first: boot.m2p_first,
            shared_info: boot.shared_info,
        }
    }

    /// `memory_op(cmd, arg)` for `caller`; returns RAX.
    pub fn op<F: TlbFlush>(&mut self, m: &mut Mach<F>, caller: Caller, cmd: u64, arg: u64) -> i64 {
        let (op, start_extent) = decode_memory_op_cmd(cmd);
        let r = match op {
            XENMEM_increase_reservation | XENMEM_decrease_reservation | XENMEM_populate_physmap => {
                Ok(reservation(m, caller, op, start_extent, arg) as i64)
            }
            XENMEM_exchange if start_extent != 0 => Err(Errno::EINVAL),
            XENMEM_exchange => exchange(m, caller, arg).map(|()| 0),
            XENMEM_maximum_ram_page if start_extent != 0 => Err(Errno::EINVAL),
            XENMEM_maximum_ram_page => Ok(self.machine_frames as i64),
            XENMEM_current_reservation | XENMEM_maximum_reservation | XENMEM_maximum_gpfn => {
                if start_extent != 0 {
                    Err(Errno::EINVAL)
                } else {
                    self.reservation(m, caller, op, arg)
                }
            }
            XENMEM_memory_map => self.memory_map(m, caller, arg).map(|()| 0),
            XENMEM_set_memory_map => self.set_memory_map(m, caller, arg).map(|()| 0),
            // The host's map is the privileged domain's business.
            XENMEM_machine_memory_map => Err(Errno::EPERM),
            XENMEM_machphys_mapping => machphys_mapping(m, caller, arg).map(|()| 0),
            XENMEM_machphys_mfn_list => self.machphys_mfn_list(m, caller, arg).map(|()| 0),
            _ => Err(Errno::ENOSYS),
        };
        r.unwrap_or_else(Errno::neg)
    }

    /// `current_reservation`, `maximum_reservation`, `maximum_gpfn` of the domain named
    /// by the `domid_t` at `arg` (only the caller's own, for a domU).
    fn reservation<F: TlbFlush>(
        &self,
        m: &Mach<F>,
        caller: Caller,
        op: u32,
        arg: u64,
    ) -> Result<i64, Errno> {
        let b = m.kernel_view(caller).read_array::<2>(arg)?;
        own_domain(m, caller, u16::from_le_bytes(b))?;
        Ok(match op {
            XENMEM_current_reservation => {
                // Xen's tot_pages, less the shared_info frame (the hypervisor's own
                // page on Xen, a frame of the domain's here).
                let si = pvmmu::Mfn(self.shared_info / 4096);
                let si = u64::from(m.frames().owned_by(si, caller.dom));
                (m.tot_pages(caller.dom) - si) as i64
            }
            XENMEM_maximum_reservation => self.max_pages as i64,
            _ => {
                // PV guests write the number of frames into shared_info's arch.max_pfn.
                let max_pfn: u64 = m
                    .memory()
                    .read_obj(GuestAddress(self.shared_info + SHARED_INFO_MAX_PFN))
                    .unwrap_or(0);
                (max_pfn.max(1) - 1) as i64
            }
        })
    }

    /// `struct xen_memory_map { u32 nr_entries; handle buffer; }`: copies up to
    /// `nr_entries` entries and writes back how many.
    fn memory_map<F: TlbFlush>(&self, m: &Mach<F>, caller: Caller, arg: u64) -> Result<(), Errno> {
        let mut view = m.kernel_view(caller);
        let b = view.read_array::<16>(arg)?;
        if self.e820.is_empty() {
            return Err(Errno::ENOSYS);
        }
        let want = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        let buffer = u64::from_le_bytes(b[8..].try_into().unwrap_or_default());
        let n = (want as usize).min(self.e820.len());
        let bytes: Vec<u8> = self.e820[..n].iter().flat_map(|e| e.to_bytes()).collect();
        view.write(buffer, &bytes)?;
        view.write(arg, &(n as u32).to_le_bytes())
    }

    /// `struct xen_foreign_memory_map { domid_t domid; struct xen_memory_map map; }`.
    fn set_memory_map<F: TlbFlush>(
        &mut self,
        m: &Mach<F>,
        caller: Caller,
        arg: u64,
    ) -> Result<(), Errno> {
        let mut view = m.kernel_view(caller);
        let b = view.read_array::<24>(arg)?;
        let nr = u32::from_le_bytes([b[8], b[9], b[10], b[11]]);
        let buffer = u64::from_le_bytes(b[16..].try_into().unwrap_or_default());
        if nr > E820_MAX {
            return Err(Errno::EINVAL);
        }
        own_domain(m, caller, u16::from_le_bytes([b[0], b[1]]))?;
        let mut raw = vec![0u8; nr as usize * E820_ENTRY as usize];
        view.read(buffer, &mut raw)?;
        self.e820 = raw
            .chunks(E820_ENTRY as usize)
            .map(E820Entry::from_bytes)
            .collect();
        Ok(())
    }

    /// `struct xen_machphys_mfn_list { u32 max_extents; handle extent_start; u32
    /// nr_extents; }`: the first frame of each 2 MiB of the M2P, up to `max_extents`.
    fn machphys_mfn_list<F: TlbFlush>(
        &self,
        m: &Mach<F>,
        caller: Caller,
        arg: u64,
    ) -> Result<(), Errno> {
        let mut view = m.kernel_view(caller);
        let mut b = view.read_array::<24>(arg)?;
        let max = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        let list = u64::from_le_bytes(b[8..16].try_into().unwrap_or_default());
        let extents = (self.machine_frames * 8).div_ceil(M2P_EXTENT);
        let mut i = 0u32;
        while i != max && u64::from(i) < extents {
            let mfn = self.m2p_first + u64::from(i) * (M2P_EXTENT / 4096);
            view.write(list.wrapping_add(u64::from(i) * 8), &mfn.to_le_bytes())?;
            i += 1;
        }
        b[16..20].copy_from_slice(&i.to_le_bytes());
        view.write(arg, &b)
    }
}

/// `XENMEM_machphys_mapping`: where the read-only M2P is, in the layout Xen describes to
/// a 64-bit PV guest. The window given is the M2P's alias in L4 slot 257
/// (`layout::M2P_ALIAS_VA`), which guests read without a fault on every KVM, where Xen's
/// own address (slot 256) faults on this host's KVM-PVM and costs an emulated exit per
/// read (Linux reads the M2P for every PTE it inspects).
fn machphys_mapping<F: TlbFlush>(m: &Mach<F>, caller: Caller, arg: u64) -> Result<(), Errno> {
    use pvmmu_abi::layout::{MACH2PHYS_VIRT_END, MACH2PHYS_VIRT_START};
    let size = MACH2PHYS_VIRT_END - MACH2PHYS_VIRT_START;
    let max_mfn = size / 8 - 1;
    let start = crate::layout::M2P_ALIAS_VA;
    let mut b = [0u8; 24];
    b[..8].copy_from_slice(&start.to_le_bytes());
    b[8..16].copy_from_slice(&(start + size).to_le_bytes());
    b[16..].copy_from_slice(&max_mfn.to_le_bytes());
    m.kernel_view(caller).write(arg, &b)
}

/// Entries `range` of the guest's list of 64-bit frame numbers at `list`, up to the
/// first that cannot be read.
fn read_list<M: vm_memory::GuestMemory>(
    view: &mut pvmmu::GuestView<'_, M>,
    list: u64,
    range: std::ops::Range<u64>,
) -> Vec<u64> {
    range
        .map_while(|i| view.read_u64(list.wrapping_add(i * 8)).ok())
        .collect()
}

/// Extents handled per step of a reservation call (bounds the memory a long list takes).
const GROUP: u64 = 4096;

/// `struct xen_memory_reservation`: `extent_start` (handle), `nr_extents`,
/// `extent_order`, `mem_flags`, `domid`.
const RESERVATION_SIZE: usize = 32;

/// `increase_reservation`, `decrease_reservation`, `populate_physmap` as Xen's
/// `do_memory_op` answers them: the extents done counted from `start` (a continuation's
/// start), and `start` itself when the arguments are refused.
fn reservation<F: TlbFlush>(m: &mut Mach<F>, caller: Caller, op: u32, start: u64, arg: u64) -> u64 {
    let Ok(b) = m.kernel_view(caller).read_array::<RESERVATION_SIZE>(arg) else {
        return start;
    };
    let word = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap_or_default());
    let list = word(0);
    let nr = word(8);
    let order = u32::from_le_bytes(b[16..20].try_into().unwrap_or_default());
    let address_bits = b[20];
    let dom = u16::from_le_bytes([b[24], b[25]]);
    if nr > u64::from(u32::MAX >> pvmmu_abi::memory::MEMOP_EXTENT_SHIFT)
        || start >= nr
        || own_domain(m, caller, dom).is_err()
        || (address_bits != 0 && address_bits < 12)
        || order > pvmmu::reservation::DOMU_MAX_ORDER
    {
        return start;
    }
    // The part of the list this call covers must lie in guest space (a null list is
    // allowed for increase_reservation).
    let nullable = op == XENMEM_increase_reservation && list == 0;
    if !nullable && !pvmmu::guest_range_ok(list.wrapping_add(start * 8), (nr - start) * 8) {
        return start;
    }
    let dom = caller.dom;
    // A group of extents at a time, so a huge list costs no more memory than a group.
    let mut at = start;
    while at < nr {
        let n = (nr - at).min(GROUP);
        // The group's entries, up to the first that cannot be read (the batch stops
        // there, after what came before).
        let entries: Vec<u64> = if op == XENMEM_increase_reservation {
            Vec::new()
        } else {
            read_list(&mut m.kernel_view(caller), list, at..at + n)
        };
        let outcome = match op {
            XENMEM_decrease_reservation => m.decrease_reservation(dom, &entries, order),
            XENMEM_increase_reservation => m.increase_reservation(dom, n as usize, order),
            _ => m.populate_physmap(dom, &entries, order),
        };
        let Ok(o) = outcome else {
            return at;
        };
        // Each new extent's first frame goes back into the list; a write that faults
        // ends the count there (the frame stays the domain's, as on Xen).
        if op != XENMEM_decrease_reservation && list != 0 {
            let mut view = m.kernel_view(caller);
            for (i, f) in o.frames.iter().enumerate() {
                let to = list.wrapping_add((at + i as u64) * 8);
                if view.write(to, &f.0.to_le_bytes()).is_err() {
                    return at + i as u64;
                }
            }
        }
        at += o.done as u64;
        let short = op != XENMEM_increase_reservation && (entries.len() as u64) < n;
        if o.stopped.is_some() || short || (o.done as u64) < n {
            break;
        }
    }
    at
}

/// `XENMEM_exchange` (Xen's `memory_exchange`): `struct xen_memory_exchange { in, out:
/// xen_memory_reservation; nr_exchanged }`. The checks come in Xen's order (orders,
/// sizes, nothing left, list ranges, domain), `nr_exchanged` is written back on every
/// path but the early ones Xen returns from directly, and each output frame goes into
/// the output list in place of the pseudo-physical frame it was asked for.
fn exchange<F: TlbFlush>(m: &mut Mach<F>, caller: Caller, arg: u64) -> Result<(), Errno> {
    let b = m.kernel_view(caller).read_array::<72>(arg)?;
    let word = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap_or_default());
    let half = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().unwrap_or_default());
    let (in_list, in_nr, in_order) = (word(0), word(8), half(16));
    let in_dom = u16::from_le_bytes([b[24], b[25]]);
    let (out_list, out_nr, out_order) = (word(32), word(40), half(48));
    let out_dom = u16::from_le_bytes([b[56], b[57]]);
    let done = word(64);
    let write_done = |m: &Mach<F>, n: u64| m.kernel_view(caller).write(arg + 64, &n.to_le_bytes());
    let max = pvmmu::reservation::DOMU_MAX_ORDER;
    let fail = |m: &Mach<F>, e: Errno, n: u64| write_done(m, n).and(Err(e));
    if in_order.max(out_order) > max {
        return fail(m, Errno::EPERM, done);
    }
    let overflow = |nr: u64, order: u32| (u64::MAX >> order) < nr;
    if done > in_nr
        || in_dom != out_dom
        || overflow(in_nr, in_order)
        || overflow(out_nr, out_order)
        || in_nr << in_order != out_nr << out_order
    {
        return fail(m, Errno::EINVAL, done);
    }
    if done == in_nr {
        return Ok(());
    }
    let (in_chunk, out_chunk) = if in_order <= out_order {
        (1u64 << (out_order - in_order), 1u64)
    } else {
        (1u64, 1u64 << (in_order - out_order))
    };
    let out_from = done / in_chunk * out_chunk;
    if !pvmmu::guest_range_ok(in_list.wrapping_add(done * 8), (in_nr - done) * 8)
        || !pvmmu::guest_range_ok(out_list.wrapping_add(out_from * 8), (out_nr - out_from) * 8)
    {
        return fail(m, Errno::EFAULT, done);
    }
    if let Err(e) = own_domain(m, caller, in_dom) {
        return fail(m, e, done);
    }
    // Whole chunks from where a continuation left off, a group at a time (bounded
    // memory); a list entry that cannot be read ends the batch there with -EFAULT.
    let mut start = done / in_chunk * in_chunk;
    let mut out_at = out_from;
    let mut rc = Ok(());
    let mut stopped = None;
    while start < in_nr {
        let chunks = ((in_nr - start) / in_chunk).min(GROUP);
        let mut view = m.kernel_view(caller);
        let ins = read_list(&mut view, in_list, start..start + chunks * in_chunk);
        let outs = read_list(&mut view, out_list, out_at..out_at + chunks * out_chunk);
        let whole = (ins.len() as u64 / in_chunk).min(outs.len() as u64 / out_chunk);
        let n_in = (whole * in_chunk) as usize;
        let n_out = (whole * out_chunk) as usize;
        let o = m
            .exchange(
                caller.dom,
                &ins[..n_in],
                in_order,
                &outs[..n_out],
                out_order,
            )
            .map_err(|_| Errno::EINVAL)?;
        let mut view = m.kernel_view(caller);
        for (j, f) in o.frames.iter().enumerate() {
            let at = out_list.wrapping_add((out_at + j as u64) * 8);
            if view.write(at, &f.0.to_le_bytes()).is_err() {
                rc = Err(Errno::EFAULT);
            }
        }
        start += o.done as u64;
        out_at += o.frames.len() as u64;
        stopped = o.stopped.or((whole < chunks).then_some(Errno::EFAULT));
        if stopped.is_some() {
            break;
        }
    }
    let total = if stopped.is_none() { in_nr } else { start };
    write_done(m, total)?;
    match stopped {
        Some(e) => Err(e),
        None => rc,
    }
}
