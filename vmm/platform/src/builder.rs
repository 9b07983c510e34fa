//! The domain builder: lays a PV guest out in memory as Xen's builder does
//! (`docs/xen-pv-boot.md` §2): image, p2m list, start_info, xenstore and console
//! pages, page tables mapped read-only, boot stack; builds the initial page tables with
//! the walker, pins the L4 through the library's validation (no bypass), and writes the
//! hypercall page.

use std::ops::ControlFlow;

use pvmmu::{Caller, Level, Machine, Mfn, Pte, PteFlags, TlbFlush, VaRange, Visit, Walker};
use pvmmu_abi::mmu::{MMUEXT_NEW_BASEPTR, MMUEXT_PIN_L4_TABLE};
use pvmmu_abi::{DOMID_SELF, MmuextOp, StartInfo};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::elf::GuestImage;
use crate::layout::{HYPERCALL_PORT, PAGE};

/// Errors building a domain.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The image does not fit the domain's memory, or overlaps the builder's areas.
    #[error("the image ({start:#x}..{end:#x}) does not fit in the domain's {frames} frames")]
    TooBig {
        /// First VA.
        start: u64,
        /// End VA.
        end: u64,
        /// Domain frames.
        frames: u64,
    },
    /// The boot module does not fit in the domain's memory after the kernel.
    #[error(
        "the initrd ({len} bytes) does not fit in the domain's {frames} frames after the kernel ({kernel_frames} frames)"
    )]
    InitrdTooBig {
        /// Bytes of the module.
        len: u64,
        /// Domain frames.
        frames: u64,
        /// Frames the kernel image takes.
        kernel_frames: u64,
    },
    /// The hypercall page lies outside the image.
    #[error("the hypercall page {0:#x} lies outside the loaded image")]
    HypercallPage(u64),
    /// Guest memory access failed.
    #[error("guest memory: {0}")]
    Memory(#[from] vm_memory::GuestMemoryError),
    /// Building the page tables failed.
    #[error("initial page tables: {0}")]
    Walk(#[from] pvmmu::WalkError),
    /// The library refused the initial page tables.
    #[error("pinning the initial L4 failed: {0}")]
    Pin(pvmmu::Errno),
    /// Embedder error from the library.
    #[error("{0}")]
    Machine(#[from] pvmmu::MachineError),
}

/// What the vCPU needs to start the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootInfo {
    /// Entry point.
    pub entry: u64,
    /// Initial RSP (top of the boot stack).
    pub stack_top: u64,
    /// VA of start_info (RSI).
    pub start_info: u64,
    /// The L4 (CR3 = its address).
    pub l4: Mfn,
    /// Pages the initial page tables map, from `virt_base`.
    pub mapped_pages: u64,
    /// Guest-physical address of the shared_info page (`start_info.shared_info`).
    pub shared_info: u64,
    /// Guest-physical address of the PV console ring (`start_info.console.domU.mfn`).
    pub console_ring: u64,
    /// Guest-physical address of the xenstore ring (`start_info.store_mfn`).
    pub store_ring: u64,
    /// Pages of the guest's pseudo-physical RAM (`start_info.nr_pages`).
    pub nr_pages: u64,
    /// First frame of the domain's grant area (`crate::grant`), above its RAM; 0 when
    /// the embedder built the domain without one.
    pub grant_first: u64,
    /// Frames of the whole machine (guest memory); 0 when the embedder did not say.
    pub machine_frames: u64,
    /// First frame of the M2P table (`crate::memory`); 0 when the embedder did not say.
    pub m2p_first: u64,
}

/// The event channel of the PV console ring (`start_info.console.domU.evtchn`).
pub const CONSOLE_EVTCHN: u32 = 1;
/// The event channel of the xenstore ring (`start_info.store_evtchn`).
pub const STORE_EVTCHN: u32 = 2;

/// Number of page-table frames needed to map `[start, end)` with 4 KiB pages.
fn tables_needed(start: u64, end: u64) -> u64 {
    let span = |shift: u32| ((end - 1) >> shift) - (start >> shift) + 1;
    1 + span(39) + span(30) + span(21)
}

/// The hypercall stub for slot `n`: `mov $n, %eax; out %al, $port; ret`, and for `iret`
/// Xen's pushes of RCX, R11, RAX before the exit (it never returns).
fn hypercall_stub(n: u32) -> [u8; 32] {
    let mut s = [0xcc; 32];
    let mut code = Vec::new();
    if n == 23 {
        code.extend_from_slice(&[0x51, 0x41, 0x53, 0x50]);
    }
    code.push(0xb8);
    code.extend_from_slice(&n.to_le_bytes());
    code.extend_from_slice(&[0xe6, HYPERCALL_PORT as u8]);
    code.push(if n == 23 { 0x0f } else { 0xc3 });
    if n == 23 {
        code.push(0x0b); // ud2: iret never returns here
    }
    s[..code.len()].copy_from_slice(&code);
    s
}

/// Builds domain `dom` of `machine` from `image` (whose bytes are `bytes`). The domain
/// owns frames `0..frames` (pfn == mfn); the last of them is its shared_info page,
/// which, as on Xen, is not part of its pseudo-physical RAM (`nr_pages` and the p2m
/// list stop before it), so no guest takes it for free memory.
pub fn build<F: TlbFlush>(
    machine: &mut Machine<GuestMemoryMmap<()>, F>,
    dom: u16,
    frames: u64,
    image: &GuestImage,
    bytes: &[u8],
    cmdline: &str,
    initrd: Option<&[u8]>,
) -> Result<BootInfo, BuildError> {
    let shared_info = frames.checked_sub(1).ok_or(BuildError::TooBig {
        start: image.v_start,
        end: image.v_end,
        frames,
    })?;
    let frames = shared_info;
    let vb = image.virt_base;
    let pfn = |va: u64| (va - vb) / PAGE;
    let too_big = || BuildError::TooBig {
        start: image.v_start,
        end: image.v_end,
        frames,
    };
    if image.v_start < vb || pfn(image.v_end) > frames {
        return Err(too_big());
    }
    // Allocation after the image, in Xen's order.
    let mut next = pfn(image.v_end);
    let take = |next: &mut u64, n: u64| {
        *next += n;
        *next - n
    };
    // The boot module (initrd) right after the kernel, as Xen's builder places it.
    let module = initrd.map(|data| (take(&mut next, (data.len() as u64).div_ceil(PAGE)), data));
    if let Some((_, data)) = module
        && next > frames
    {
        return Err(BuildError::InitrdTooBig {
            len: data.len() as u64,
            frames,
            kernel_frames: pfn(image.v_end),
        });
    }
    let p2m_pages = (frames * 8).div_ceil(PAGE);
    let p2m = take(&mut next, p2m_pages);
    let (si_pfn, store, console) = (take(&mut next, 1), take(&mut next, 1), take(&mut next, 1));
    let pt_start = next;
    let mut nr_pt = 1;
    let map_end = loop {
        let stack_end = pt_start + nr_pt + 1;
        let end = ((stack_end * PAGE + (512 << 10)).div_ceil(4 << 20) * (4 << 20)) / PAGE;
        let need = tables_needed(vb, vb + end * PAGE);
        if need <= nr_pt {
            break end;
        }
        nr_pt = need;
    };
    take(&mut next, nr_pt);
    let stack = take(&mut next, 1);
    if next > frames || map_end > frames {
        return Err(too_big());
    }
    let mem = machine.memory();
    let va = |p: u64| vb + p * PAGE;

    // The image.
    for s in &image.segments {
        let gpa = GuestAddress(s.vaddr - vb);
        let data = bytes
            .get(s.offset..s.offset + s.filesz)
            .ok_or_else(too_big)?;
        mem.write_slice(data, gpa)?;
        let zeros = vec![0u8; (s.memsz - s.filesz as u64) as usize];
        mem.write_slice(&zeros, GuestAddress(gpa.0 + s.filesz as u64))?;
    }
    if let Some(hp) = image.hypercall_page {
        if hp < image.v_start
            || hp.checked_add(PAGE).is_none_or(|e| e > image.v_end)
            || hp % PAGE != 0
        {
            return Err(BuildError::HypercallPage(hp));
        }
        let mut page = vec![0u8; PAGE as usize];
        for n in 0..128u32 {
            page[n as usize * 32..n as usize * 32 + 32].copy_from_slice(&hypercall_stub(n));
        }
        mem.write_slice(&page, GuestAddress(hp - vb))?;
    }
    // Zero the builder's pages.
    let zero = [0u8; PAGE as usize];
    for p in (p2m..next).chain([shared_info]) {
        mem.write_slice(&zero, GuestAddress(p * PAGE))?;
    }
    // Every vCPU starts with its upcalls masked, as Xen's domain builder leaves them.
    for v in 0..pvmmu_abi::shared_info::XEN_LEGACY_MAX_VCPUS as u64 {
        let at = shared_info * PAGE
            + v * pvmmu_abi::shared_info::VCPU_INFO_SIZE as u64
            + pvmmu_abi::shared_info::VCPU_INFO_UPCALL_MASK_OFFSET as u64;
        mem.write_obj(1u8, GuestAddress(at))?;
    }
    // p2m list: pfn -> mfn (identity).
    let list: Vec<u8> = (0..frames).flat_map(|p| p.to_le_bytes()).collect();
    mem.write_slice(&list, GuestAddress(p2m * PAGE))?;
    for p in 0..frames {
        machine.set_m2p(Mfn(p), p);
    }
    let mem = machine.memory();

    // Page tables: map [virt_base, map_end) 4 KiB, identity; tables read-only.
    let mut pt_next = pt_start;
    let mut alloc = |_: Level| {
        (pt_next < pt_start + nr_pt).then(|| {
            pt_next += 1;
            Mfn(pt_next - 1)
        })
    };
    let root = alloc(Level::L4).ok_or(BuildError::Walk(pvmmu::WalkError::OutOfFrames {
        level: Level::L4,
        va: vb,
    }))?;
    struct Linker<A>(A);
    impl<A: FnMut(Level) -> Option<Mfn>> pvmmu::FrameAllocator for Linker<A> {
        fn allocate(&mut self, level: Level) -> Option<Mfn> {
            (self.0)(level)
        }
        fn link_flags(&self, _: Level) -> PteFlags {
            PteFlags::PRESENT | PteFlags::RW | PteFlags::ACCESSED | PteFlags::DIRTY | PteFlags::USER
        }
    }
    let mut linker = Linker(&mut alloc);
    let range = VaRange::new(vb, map_end * PAGE).map_err(pvmmu::WalkError::from)?;
    let pt_range = pt_start..pt_start + nr_pt;
    let _ = Walker::new(mem).apply_to_page_range(root, range, &mut linker, |v| {
        if let Visit::Ptes(b) = v {
            for i in 0..b.len() {
                let p = (b.va(i) - vb) / PAGE;
                let rw = if pt_range.contains(&p) {
                    PteFlags::empty()
                } else {
                    PteFlags::RW
                };
                b.set(
                    i,
                    Pte::new(Mfn(p), PteFlags::PRESENT | PteFlags::ACCESSED | rw),
                );
            }
        }
        ControlFlow::<()>::Continue(())
    })?;

    // start_info.
    let mut si = StartInfo::new();
    si.nr_pages = frames;
    si.shared_info = shared_info * PAGE;
    si.store_mfn = store;
    si.store_evtchn = STORE_EVTCHN;
    si.console_mfn = console;
    si.console_evtchn = CONSOLE_EVTCHN;
    si.pt_base = va(pt_start);
    si.nr_pt_frames = nr_pt;
    si.mfn_list = va(p2m);
    if let Some((pfn, data)) = module {
        mem.write_slice(data, GuestAddress(pfn * PAGE))?;
        // A kernel that asks for it gets a PFN, any other the module's address.
        if image.mod_start_pfn {
            si.mod_start = pfn;
            si.flags |= pvmmu_abi::start_info::SIF_MOD_START_PFN;
        } else {
            si.mod_start = va(pfn);
        }
        si.mod_len = data.len() as u64;
    }
    si.set_cmd_line(cmdline.as_bytes());
    mem.write_slice(&si.to_bytes(), GuestAddress(si_pfn * PAGE))?;

    // Pin and install the L4 through the library: no bypass.
    let me = Caller::new(dom, 0);
    let self_dom = u32::from(DOMID_SELF);
    for cmd in [MMUEXT_PIN_L4_TABLE, MMUEXT_NEW_BASEPTR] {
        let o = machine.mmuext_op(me, &[MmuextOp::new(cmd, root.0, 0)], self_dom)?;
        o.result.map_err(BuildError::Pin)?;
    }
    Ok(BootInfo {
        entry: image.entry,
        stack_top: va(stack + 1),
        start_info: va(si_pfn),
        l4: root,
        mapped_pages: map_end,
        shared_info: shared_info * PAGE,
        console_ring: console * PAGE,
        store_ring: store * PAGE,
        nr_pages: frames,
        grant_first: 0,
        machine_frames: 0,
        m2p_first: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_counts() {
        assert_eq!(tables_needed(0, 4 << 20), 1 + 1 + 1 + 2);
        assert_eq!(tables_needed(0, 1 << 30), 1 + 1 + 1 + 512);
    }

    #[test]
    fn stubs() {
        assert_eq!(
            &hypercall_stub(1)[..8],
            &[0xb8, 1, 0, 0, 0, 0xe6, HYPERCALL_PORT as u8, 0xc3]
        );
        assert_eq!(&hypercall_stub(23)[..4], &[0x51, 0x41, 0x53, 0x50]);
    }
}
