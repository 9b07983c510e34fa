//! The hypervisor area: the VMM's own supervisor-only pages in the Xen-reserved L4 slots
//! (GDT with Xen's flat selectors, IDT, TSS with RSP0 and an I/O bitmap that opens only
//! the hypercall and syscall ports, ring-0 exception stubs, a ring-0 stack, and the
//! user-executable syscall entry stub) and the guest-readable
//! read-only M2P at 0xFFFF800000000000. Its page tables are built with the batched
//! walker in frames owned by `DOMID_XEN`; the library copies the resulting L4 slots into
//! every L4 it validates.
//!
//! KVM-PVM quirk (measured here): CPL3 accesses to L4 slot 256 fault whatever the page
//! tables say, so the M2P is also mapped, identically, at [`M2P_ALIAS_VA`] (slot 257,
//! Xen's unused MMCONFIG slot). On hardware-assisted KVM the ABI address works.

use std::ops::ControlFlow;

use pvmmu::{Level, Mfn, Pte, PteFlags, VaRange, Visit, Walker};
use pvmmu_abi::layout::RO_MPT_VIRT_START;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::layout::*;

/// Errors building the area.
#[derive(Debug, thiserror::Error)]
pub enum HvAreaError {
    /// Guest memory too small for the area.
    #[error("guest memory too small for the hypervisor area ({0} frames needed)")]
    TooSmall(u64),
    /// Writing guest memory failed.
    #[error("writing the hypervisor area: {0}")]
    Memory(#[from] vm_memory::GuestMemoryError),
    /// The page-table walk failed.
    #[error("building the hypervisor page tables: {0}")]
    Walk(#[from] pvmmu::WalkError),
    /// The area was built for fewer vCPUs.
    #[error("the hypervisor area has no vCPU {0}")]
    NoVcpu(u32),
}

/// What the VMM needs to know about the built area.
#[derive(Debug, Clone)]
pub struct HvArea {
    /// First frame of the area (everything from here to the end of RAM is the VMM's).
    pub first_frame: u64,
    /// Raw L4 entries for slots 256..=271.
    pub l4_slots: [u64; 16],
    /// Guest-physical address of the M2P (contiguous, 8 bytes per frame).
    pub m2p_gpa: u64,
    /// A root (L4) holding the area's slots, to walk its tables with.
    pub root: Mfn,
    /// The zero page that backs the guest part of the GDT until a guest `set_gdt`.
    pub zero_frame: Mfn,
    /// Each vCPU's own pages.
    pub vcpus: Vec<HvVcpu>,
}

/// Where one vCPU's own pages of the area are in guest-physical memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HvVcpu {
    /// Its ring-0 stack's lowest page ([`stack_va`]).
    pub stack_gpa: u64,
    /// Its reserved GDT page.
    pub reserved_gdt_gpa: u64,
    /// Its rewrite list ([`store_list_va`]).
    pub store_list_gpa: u64,
}

impl HvArea {
    /// vCPU `v`'s pages.
    pub fn vcpu(&self, v: u32) -> Result<&HvVcpu, HvAreaError> {
        self.vcpus.get(v as usize).ok_or(HvAreaError::NoVcpu(v))
    }
}

/// The guest part of vCPU `vcpu`'s GDT area: pages `0..14` map `frames` (the guest's
/// GDT, supervisor read-write as Xen maps it) and the zero page after them. Returns the
/// frames the pages mapped before, whose translations are now stale.
pub fn map_guest_gdt(
    mem: &GuestMemoryMmap<()>,
    area: &HvArea,
    vcpu: u32,
    frames: &[Mfn],
) -> Result<Vec<Mfn>, HvAreaError> {
    area.vcpu(vcpu)?;
    let base = gdt_va(vcpu);
    let range = VaRange::new(base, GDT_RESERVED_PAGE * PAGE).map_err(pvmmu::WalkError::from)?;
    let mut old = Vec::new();
    let flags =
        PteFlags::PRESENT | PteFlags::RW | PteFlags::ACCESSED | PteFlags::DIRTY | PteFlags::NX;
    let _ = Walker::new(mem).apply_to_existing_page_range(area.root, range, |v| {
        if let Visit::Ptes(b) = v {
            for i in 0..b.len() {
                let page = ((b.va(i) - base) / PAGE) as usize;
                let target = frames.get(page).copied().unwrap_or(area.zero_frame);
                let prev = b.get(i);
                if prev.is_present() && prev.mfn() != target {
                    old.push(prev.mfn());
                }
                b.set(i, Pte::new(target, flags));
            }
        }
        ControlFlow::<()>::Continue(())
    })?;
    Ok(old)
}

/// Hands out frames downwards from the top of the area.
struct Frames {
    next: u64,
    end: u64,
    link: PteFlags,
}

impl pvmmu::FrameAllocator for Frames {
    fn allocate(&mut self, _level: Level) -> Option<Mfn> {
        (self.next < self.end).then(|| {
            self.next += 1;
            Mfn(self.next - 1)
        })
    }
    fn link_flags(&self, _level: Level) -> PteFlags {
        self.link
    }
}

fn descriptor(base: u64, limit: u32, access: u8, flags: u8) -> u64 {
    (u64::from(limit) & 0xffff)
        | ((base & 0xff_ffff) << 16)
        | (u64::from(access) << 40)
        | ((u64::from(limit) >> 16 & 0xf) << 48)
        | (u64::from(flags & 0xf) << 52)
        | ((base >> 24 & 0xff) << 56)
}

/// vCPU `vcpu`'s LDT window: page `i` maps `mapped[i]` (supervisor read-write, as Xen
/// maps a filled LDT page: the CPU sets descriptors' accessed bits) or nothing. Returns
/// the frames the window mapped before and no longer does (their translations are
/// now stale).
pub fn map_ldt_window(
    mem: &GuestMemoryMmap<()>,
    area: &HvArea,
    vcpu: u32,
    mapped: &[Option<Mfn>; pvmmu::LDT_PAGES],
) -> Result<Vec<Mfn>, HvAreaError> {
    area.vcpu(vcpu)?;
    let base = ldt_va(vcpu);
    let range =
        VaRange::new(base, pvmmu::LDT_PAGES as u64 * PAGE).map_err(pvmmu::WalkError::from)?;
    let mut old = Vec::new();
    let flags =
        PteFlags::PRESENT | PteFlags::RW | PteFlags::ACCESSED | PteFlags::DIRTY | PteFlags::NX;
    let _ = Walker::new(mem).apply_to_existing_page_range(area.root, range, |v| {
        if let Visit::Ptes(b) = v {
            for i in 0..b.len() {
                let page = ((b.va(i) - base) / PAGE) as usize;
                let target = mapped.get(page).copied().flatten();
                let prev = b.get(i);
                if prev.is_present() && Some(prev.mfn()) != target {
                    old.push(prev.mfn());
                }
                b.set(i, target.map_or(Pte(0), |f| Pte::new(f, flags)));
            }
        }
        ControlFlow::<()>::Continue(())
    })?;
    Ok(old)
}

/// vCPU `vcpu`'s LDT register descriptor for an LDT of `limit_bytes` (none when 0):
/// written into its reserved GDT page, so that a reload of the register from its
/// selector agrees with what the VMM loads. Returns the (low, high) descriptor words.
pub fn set_ldt_descriptor(
    mem: &GuestMemoryMmap<()>,
    area: &HvArea,
    vcpu: u32,
    limit_bytes: u32,
) -> Result<(u64, u64), HvAreaError> {
    let (lo, hi) = ldt_descriptor(vcpu, limit_bytes);
    let at = area.vcpu(vcpu)?.reserved_gdt_gpa + u64::from(LDT_SEL)
        - FIRST_RESERVED_GDT_ENTRY as u64 * 8;
    mem.write_obj(lo, GuestAddress(at))?;
    mem.write_obj(hi, GuestAddress(at + 8))?;
    Ok((lo, hi))
}

/// The 16-byte LDT descriptor (system type 2) for vCPU `vcpu`'s window with
/// `limit_bytes` of descriptors; all zero (not present) for none.
///
/// ```
/// let (lo, hi) = platform::hvarea::ldt_descriptor(0, 24);
/// assert_eq!(lo & 0xffff, 23, "limit");
/// assert_eq!((lo >> 40) & 0xff, 0x82, "present LDT");
/// assert_eq!(hi, platform::layout::ldt_va(0) >> 32);
/// assert_eq!(platform::hvarea::ldt_descriptor(1, 0), (0, 0));
/// ```
pub fn ldt_descriptor(vcpu: u32, limit_bytes: u32) -> (u64, u64) {
    if limit_bytes == 0 {
        return (0, 0);
    }
    let base = ldt_va(vcpu);
    (descriptor(base, limit_bytes - 1, 0x82, 0), base >> 32)
}

/// First descriptor of the reserved GDT page (Xen's `FIRST_RESERVED_GDT_ENTRY`).
pub const FIRST_RESERVED_GDT_ENTRY: usize = GDT_RESERVED_PAGE as usize * 512;

/// The descriptors of vCPU `vcpu`'s reserved GDT page, as (index within the page, raw
/// 8 bytes): the hypervisor's ring-0 code and data, Xen's flat ring-3 selectors, and the
/// 16-byte descriptor of the vCPU's own TSS (busy). The GDT page and the vCPU's segment
/// registers are both made from this one table.
pub fn reserved_gdt(vcpu: u32) -> [(usize, u64); 7] {
    let tss = tss_va(vcpu);
    [
        (1, descriptor(0, 0xfffff, 0x9b, 0xa)),   // 0xe008 ring-0 CS64
        (2, descriptor(0, 0xfffff, 0x93, 0xc)),   // 0xe010 ring-0 DS
        (4, descriptor(0, 0xfffff, 0xfb, 0xc)),   // 0xe023 FLAT_RING3_CS32
        (5, descriptor(0, 0xfffff, 0xf3, 0xc)),   // 0xe02b FLAT_RING3_DS / SS
        (6, descriptor(0, 0xfffff, 0xfb, 0xa)),   // 0xe033 FLAT_RING3_CS64
        (8, descriptor(tss, TSS_LIMIT, 0x8b, 0)), // 0xe040 TSS (busy), low half
        (9, tss >> 32),                           // its high half
    ]
}

/// The raw eight bytes at `selector`'s slot of vCPU `vcpu`'s reserved GDT page (for a
/// 16-byte system descriptor, `selector + 8` names its upper half); `None` outside the
/// page or for an empty slot.
pub fn gdt_descriptor(vcpu: u32, selector: u16) -> Option<u64> {
    let index = usize::from(selector >> 3).checked_sub(FIRST_RESERVED_GDT_ENTRY)?;
    reserved_gdt(vcpu)
        .iter()
        .find(|(k, _)| *k == index)
        .map(|(_, v)| *v)
}

/// Vectors whose exceptions push an error code.
const fn has_error_code(v: u8) -> bool {
    matches!(v, 8 | 10..=14 | 17 | 21 | 29 | 30)
}

/// The ring-0 stub for vector `v`: push the vector (and a 0 error code where the CPU
/// pushes none), `out` to the fault port, drop both, `iretq`.
fn stub(v: u8) -> [u8; STUB_SIZE as usize] {
    let mut s = [0xcc; STUB_SIZE as usize];
    let mut code = Vec::with_capacity(16);
    if !has_error_code(v) {
        code.extend_from_slice(&[0x6a, 0x00]);
    }
    code.extend_from_slice(&[
        0x6a,
        v,
        0xe6,
        FAULT_PORT as u8,
        0x48,
        0x83,
        0xc4,
        0x10,
        0x48,
        0xcf,
    ]);
    s[..code.len()].copy_from_slice(&code);
    s
}

/// Where in the stub page the #BP entry lives (stub 3 jumps there).
const BP_ENTRY: u64 = 0x200;

/// The #BP entry: an `int3` at [`PROBE_VA`] (its saved RIP is the byte after) returns
/// at once; one at [`STORE_VA`] rewrites the entries of the vCPU's list (at
/// [`store_list_va`], found as the top of the ring-0 stack it runs on), flushes the TLB
/// and returns (to the list's resume address when it has one); any other goes the way
/// of every stub (vector 3 to the fault port).
fn bp_entry() -> Vec<u8> {
    const CMP_SAVED_RIP: [u8; 5] = [0x48, 0x39, 0x44, 0x24, 0x08]; // cmp [rsp + 8], rax
    let mut code = vec![0x50, 0x48, 0xb8]; // push rax; mov rax, imm64
    code.extend_from_slice(&(PROBE_VA + 1).to_le_bytes());
    code.extend_from_slice(&CMP_SAVED_RIP);
    let je_probe = code.len();
    code.extend_from_slice(&[0x74, 0]); // je probe
    code.extend_from_slice(&[0x48, 0xb8]); // mov rax, imm64
    code.extend_from_slice(&(STORE_VA + 1).to_le_bytes());
    code.extend_from_slice(&CMP_SAVED_RIP);
    let je_store = code.len();
    code.extend_from_slice(&[0x74, 0]); // je store
    code.push(0x58); // pop rax
    code.extend_from_slice(&stub(3)); // vector 3 to the fault port (ends with iretq)
    let probe = code.len();
    code.extend_from_slice(&[0x58, 0x48, 0xcf]); // pop rax; iretq
    let store = code.len();
    code.extend_from_slice(&[0x51, 0x52]); // push rcx; push rdx
    code.extend_from_slice(&[0x48, 0x89, 0xe2]); // mov rdx, rsp
    code.extend_from_slice(&[0x48, 0x81, 0xca]); // or rdx, STACK_SIZE - 1
    code.extend_from_slice(&((STACK_SIZE - 1) as u32).to_le_bytes());
    code.extend_from_slice(&[0x48, 0xff, 0xc2]); // inc rdx: the stack's top, the list
    code.extend_from_slice(&[
        0x48, 0x8b, 0x0a, // mov rcx, [rdx]              (the count)
        0x48, 0x85, 0xc9, // test rcx, rcx
        0x74, 0x41, // jz done
        0x48, 0x8b, 0x44, 0xca, 0x08, // loop: mov rax, [rdx + rcx * 8 + 8]
        0xf0, 0x48, 0x83, 0x08, 0x00, // lock or qword [rax], 0
        0x48, 0xff, 0xc9, // dec rcx
        0x75, 0xf1, // jnz loop
        0x48, 0xc7, 0x02, 0, 0, 0, 0, // mov qword [rdx], 0
        0x48, 0x8b, 0x42, 0x08, // mov rax, [rdx + 8]          (where to resume)
        0x48, 0x85, 0xc0, // test rax, rax
        0x74, 0x0d, // jz flush
        0x48, 0x89, 0x44, 0x24, 0x18, // mov [rsp + 24], rax    (the frame's RIP)
        0x48, 0xc7, 0x42, 0x08, 0, 0, 0, 0, // mov qword [rdx + 8], 0
        0x0f, 0x20, 0xe0, // flush: mov rax, cr4
        0x48, 0x35, 0x80, 0, 0, 0, // xor rax, PGE
        0x0f, 0x22, 0xe0, // mov cr4, rax                (flushes the TLB, globals too)
        0x48, 0x35, 0x80, 0, 0, 0, // xor rax, PGE
        0x0f, 0x22, 0xe0, // mov cr4, rax
        0x5a, 0x59, 0x58, // done: pop rdx; pop rcx; pop rax
        0x48, 0xcf, // iretq
    ]);
    code[je_probe + 1] = (probe - (je_probe + 2)) as u8;
    code[je_store + 1] = (store - (je_store + 2)) as u8;
    code
}

/// Frames of each vCPU's own pages: reserved GDT page (1), TSS (3), stack (2), rewrite
/// list (1).
const VCPU_FRAMES: u64 = 7;

/// Builds the area for `vcpus` vCPUs in the top frames of `mem` (which has
/// `ram_frames` frames).
pub fn build(
    mem: &GuestMemoryMmap<()>,
    ram_frames: u64,
    vcpus: u32,
) -> Result<HvArea, HvAreaError> {
    if vcpus == 0 || vcpus > MAX_VCPUS {
        return Err(HvAreaError::NoVcpu(vcpus));
    }
    let m2p_frames = (ram_frames * 8).div_ceil(PAGE);
    // zero(1) + idt(1) + stubs(1) + scratch L4 (1) + syscall stub (1) + per vCPU
    // + tables: hv L3/L2 (2) and the L1s of the vCPU blocks (2 MiB each) + for the M2P
    // and its alias each L3/L2 (2) + L1s + the syscall stub's L2 and L1 (its L3 is the
    // M2P alias's).
    let block_l1s = (u64::from(vcpus) * VCPU_STRIDE).div_ceil(1 << 21);
    let tables = 2 + block_l1s + 2 * (2 + m2p_frames.div_ceil(512)) + 2;
    // The direct map: one L2 (of 2 MiB pages) per GiB of RAM.
    let direct_l2s = (ram_frames * PAGE).div_ceil(1 << 30);
    let needed = 5 + VCPU_FRAMES * u64::from(vcpus) + tables + direct_l2s + m2p_frames;
    if needed * 4 > ram_frames {
        return Err(HvAreaError::TooSmall(needed));
    }
    let first = ram_frames - needed;
    let mut next = first;
    let mut take = |n: u64| {
        next += n;
        next - n
    };
    let (zero, idt, stubs, l4) = (take(1), take(1), take(1), take(1));
    let syscall_stub = take(1);
    // Per vCPU: reserved GDT page, TSS (3), stack (2), rewrite list.
    let own: Vec<(u64, u64, u64, u64)> = (0..vcpus)
        .map(|_| (take(1), take(3), take(2), take(1)))
        .collect();
    let direct = take(direct_l2s);
    let m2p = take(m2p_frames);
    let table_frames = take(tables);
    let zero_page = [0u8; PAGE as usize];
    for f in first..ram_frames {
        mem.write_slice(&zero_page, GuestAddress(f * PAGE))?;
    }

    // Each vCPU's reserved GDT page and TSS: RSP0, the I/O bitmap at 0x68 with only the
    // hypercall and syscall ports open.
    for (v, &(gdt, tss, _, _)) in (0..vcpus).zip(&own) {
        let mut page = vec![0u8; PAGE as usize];
        for (index, d) in reserved_gdt(v) {
            page[index * 8..index * 8 + 8].copy_from_slice(&d.to_le_bytes());
        }
        mem.write_slice(&page, GuestAddress(gdt * PAGE))?;
        let mut t = vec![0u8; 3 * PAGE as usize];
        t[4..12].copy_from_slice(&stack_top(v).to_le_bytes());
        t[0x66..0x68].copy_from_slice(&0x68u16.to_le_bytes());
        for b in &mut t[0x68..0x68 + 8192 + 1] {
            *b = 0xff;
        }
        for port in [HYPERCALL_PORT, SYSCALL_PORT] {
            let port = usize::from(port);
            t[0x68 + port / 8] &= !(1 << (port % 8));
        }
        mem.write_slice(&t, GuestAddress(tss * PAGE))?;
    }

    // IDT: 32 interrupt gates, DPL0, to the stubs.
    let mut idt_page = vec![0u8; PAGE as usize];
    let mut stub_page = vec![0xccu8; PAGE as usize];
    for v in 0..32u8 {
        let off = STUBS_VA + u64::from(v) * STUB_SIZE;
        // Interrupt gates, DPL 0 (a guest's `int $n` faults), but for #BP and #OF, which
        // `int3` and `into` raise from CPL3, as in Xen's IDT.
        let access: u64 = if matches!(v, 3 | 4) { 0xee } else { 0x8e };
        let lo = (off & 0xffff)
            | (u64::from(RING0_CS) << 16)
            | (access << 40)
            | ((off >> 16 & 0xffff) << 48);
        let hi = off >> 32;
        let at = usize::from(v) * 16;
        idt_page[at..at + 8].copy_from_slice(&lo.to_le_bytes());
        idt_page[at + 8..at + 16].copy_from_slice(&hi.to_le_bytes());
        let s = usize::from(v) * STUB_SIZE as usize;
        stub_page[s..s + STUB_SIZE as usize].copy_from_slice(&stub(v));
    }
    // Stub 3: `jmp rel32` to the #BP entry.
    let at = 3 * STUB_SIZE;
    let rel = (BP_ENTRY - (at + 5)) as u32;
    stub_page[at as usize] = 0xe9;
    stub_page[at as usize + 1..at as usize + 5].copy_from_slice(&rel.to_le_bytes());
    let bp = bp_entry();
    stub_page[BP_ENTRY as usize..BP_ENTRY as usize + bp.len()].copy_from_slice(&bp);
    mem.write_slice(&idt_page, GuestAddress(idt * PAGE))?;
    mem.write_slice(&stub_page, GuestAddress(stubs * PAGE))?;

    // The syscall stub: `out %al, $SYSCALL_PORT; ud2` (the VMM never lets it go on).
    let mut stub_bytes = vec![0xccu8; PAGE as usize];
    stub_bytes[..4].copy_from_slice(&[0xe6, SYSCALL_PORT as u8, 0x0f, 0x0b]);
    let probe = (PROBE_VA - SYSCALL_STUB_VA) as usize;
    stub_bytes[probe..probe + 2].copy_from_slice(&[0xcc, 0xc3]); // int3; ret
    let store = (STORE_VA - SYSCALL_STUB_VA) as usize;
    stub_bytes[store..store + 2].copy_from_slice(&[0xcc, 0xc3]); // int3; ret
    mem.write_slice(&stub_bytes, GuestAddress(syscall_stub * PAGE))?;

    // Page tables: the supervisor-only area and the user-readable read-only M2P.
    let walker = Walker::new(mem);
    let root = Mfn(l4);
    let mut alloc = Frames {
        next: table_frames,
        end: table_frames + tables,
        link: PteFlags::PRESENT | PteFlags::RW | PteFlags::ACCESSED,
    };
    // Supervisor data: writable, never executable.
    let sup =
        PteFlags::PRESENT | PteFlags::RW | PteFlags::ACCESSED | PteFlags::DIRTY | PteFlags::NX;
    let mut area: Vec<(u64, u64, PteFlags)> = vec![
        (IDT_VA, idt, sup),
        (STUBS_VA, stubs, PteFlags::PRESENT | PteFlags::ACCESSED),
    ];
    for (v, &(gdt, tss, stack, list)) in (0..vcpus).zip(&own) {
        area.extend((0..16).map(|i| {
            let f = if i == GDT_RESERVED_PAGE { gdt } else { zero };
            (gdt_va(v) + i * PAGE, f, sup)
        }));
        area.extend((0..3).map(|i| (tss_va(v) + i * PAGE, tss + i, sup)));
        area.extend((0..2).map(|i| (stack_va(v) + i * PAGE, stack + i, sup)));
        area.push((store_list_va(v), list, sup));
    }
    for (va, frame, flags) in area {
        let _ = walker.apply_to_page_range(root, VaRange::page(va), &mut alloc, |v| {
            if let Visit::Ptes(b) = v {
                b.set(0, Pte::new(Mfn(frame), flags));
            }
            ControlFlow::<()>::Continue(())
        })?;
    }
    // The LDT windows: their tables exist, their pages are filled on demand.
    for v in 0..vcpus {
        let ldt_range = VaRange::new(ldt_va(v), pvmmu::LDT_PAGES as u64 * PAGE)
            .map_err(pvmmu::WalkError::from)?;
        let _ = walker.apply_to_page_range(root, ldt_range, &mut alloc, |_| {
            ControlFlow::<()>::Continue(())
        })?;
    }
    alloc.link = PteFlags::PRESENT | PteFlags::USER | PteFlags::ACCESSED;
    for base in [RO_MPT_VIRT_START, M2P_ALIAS_VA] {
        let m2p_range = VaRange::new(base, m2p_frames * PAGE).map_err(pvmmu::WalkError::from)?;
        let _ = walker.apply_to_page_range(root, m2p_range, &mut alloc, |v| {
            if let Visit::Ptes(b) = v {
                for i in 0..b.len() {
                    let frame = m2p + ((b.va(i) - base) >> 12);
                    let flags =
                        PteFlags::PRESENT | PteFlags::USER | PteFlags::ACCESSED | PteFlags::NX;
                    b.set(i, Pte::new(Mfn(frame), flags));
                }
            }
            ControlFlow::<()>::Continue(())
        })?;
    }
    let _ = walker.apply_to_page_range(root, VaRange::page(SYSCALL_STUB_VA), &mut alloc, |v| {
        if let Visit::Ptes(b) = v {
            let flags = PteFlags::PRESENT | PteFlags::USER | PteFlags::ACCESSED;
            b.set(0, Pte::new(Mfn(syscall_stub), flags));
        }
        ControlFlow::<()>::Continue(())
    })?;
    // The direct map: L3 entries 1.. of the area's L3 point at L2s of 2 MiB pages
    // covering RAM (supervisor, writable, never executable).
    let hv_l3 = Pte(mem.read_obj(GuestAddress(l4 * PAGE + HV_SLOT as u64 * 8))?).mfn();
    let first_l3 = (DIRECT_MAP_VA >> 30) & 511;
    let big = PteFlags::PRESENT
        | PteFlags::RW
        | PteFlags::ACCESSED
        | PteFlags::DIRTY
        | PteFlags::PSE
        | PteFlags::NX;
    for k in 0..direct_l2s {
        let l2 = direct + k;
        let link = Pte::new(
            Mfn(l2),
            PteFlags::PRESENT | PteFlags::RW | PteFlags::ACCESSED,
        );
        mem.write_obj(link.raw(), GuestAddress(hv_l3.addr() + (first_l3 + k) * 8))?;
        let mut page = vec![0u8; PAGE as usize];
        for i in 0..512u64 {
            let at = (k << 30) + (i << 21);
            if at < ram_frames * PAGE {
                let e = Pte::new(Mfn(at >> 12), big);
                page[i as usize * 8..i as usize * 8 + 8].copy_from_slice(&e.raw().to_le_bytes());
            }
        }
        mem.write_slice(&page, GuestAddress(l2 * PAGE))?;
    }
    let mut l4_slots = [0u64; 16];
    for (k, slot) in l4_slots.iter_mut().enumerate() {
        *slot = mem.read_obj(GuestAddress(l4 * PAGE + (256 + k as u64) * 8))?;
    }
    Ok(HvArea {
        first_frame: first,
        l4_slots,
        m2p_gpa: m2p * PAGE,
        root,
        zero_frame: Mfn(zero),
        vcpus: own
            .iter()
            .map(|&(gdt, _, stack, list)| HvVcpu {
                stack_gpa: stack * PAGE,
                reserved_gdt_gpa: gdt * PAGE,
                store_list_gpa: list * PAGE,
            })
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn area_translates_through_its_own_tables() {
        let frames = 4096u64;
        let mem =
            GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), (frames * PAGE) as usize)])
                .unwrap();
        let a = build(&mem, frames, 2).unwrap();
        assert!(a.first_frame > frames - 64);
        // Put the template into a scratch L4 and translate through it.
        let l4 = Mfn(1);
        for (k, e) in a.l4_slots.iter().enumerate() {
            mem.write_obj(*e, GuestAddress(l4.addr() + (256 + k as u64) * 8))
                .unwrap();
        }
        let w = Walker::new(&mem);
        for v in 0..2 {
            let own = a.vcpu(v).unwrap();
            let t = w.translate(l4, stack_top(v) - 8).unwrap().unwrap();
            assert_eq!(t.paddr, own.stack_gpa + 0x2000 - 8);
            assert!(!t.user() && t.writable());
            // RSP0 of the vCPU's own TSS is the top of its own stack; its GDT's TSS
            // descriptor names that TSS.
            let tss = w.translate(l4, tss_va(v)).unwrap().unwrap().paddr;
            let rsp0: u64 = mem.read_obj(GuestAddress(tss + 4)).unwrap();
            assert_eq!(rsp0, stack_top(v));
            let gdt = w
                .translate(l4, gdt_va(v) + GDT_RESERVED_PAGE * PAGE)
                .unwrap()
                .unwrap();
            assert_eq!(gdt.paddr, own.reserved_gdt_gpa);
            let d: u64 = mem
                .read_obj(GuestAddress(
                    own.reserved_gdt_gpa + u64::from(TSS_SEL) % PAGE,
                ))
                .unwrap();
            assert_eq!(d, gdt_descriptor(v, TSS_SEL).unwrap());
            let base = (d >> 16 & 0xff_ffff) | (d >> 56 & 0xff) << 24;
            assert_eq!(base, tss_va(v) & 0xffff_ffff);
            // The rewrite list is the page above the stack.
            let list = w.translate(l4, store_list_va(v)).unwrap().unwrap();
            assert_eq!(list.paddr, own.store_list_gpa);
            assert!(!list.user() && list.writable());
        }
        assert!(a.vcpu(2).is_err());
        let m = w
            .translate(l4, RO_MPT_VIRT_START + 8 * 100)
            .unwrap()
            .unwrap();
        assert_eq!(m.paddr, a.m2p_gpa + 800);
        let alias = w.translate(l4, M2P_ALIAS_VA + 8 * 100).unwrap().unwrap();
        assert_eq!(alias.paddr, m.paddr);
        assert!(m.user() && !m.writable());
        assert_eq!(a.l4_slots[HV_SLOT - 256] & PteFlags::USER.bits(), 0);
        // The I/O bitmap opens the hypercall and syscall ports only (0xf1 and 0xf2 share
        // a byte).
        let tss = w.translate(l4, tss_va(0)).unwrap().unwrap().paddr;
        let byte: u8 = mem
            .read_obj(GuestAddress(tss + 0x68 + u64::from(HYPERCALL_PORT) / 8))
            .unwrap();
        let open = (1u8 << (HYPERCALL_PORT % 8)) | (1 << (SYSCALL_PORT % 8));
        assert_eq!(byte, !open);
        // The syscall stub is user-executable and read-only.
        let stub = w.translate(l4, SYSCALL_STUB_VA).unwrap().unwrap();
        assert!(stub.user() && !stub.writable() && !stub.flags.contains(PteFlags::NX));
        let code: [u8; 2] = mem.read_obj(GuestAddress(stub.paddr)).unwrap();
        assert_eq!(code, [0xe6, SYSCALL_PORT as u8]);
        // The probe beside it: int3; ret.
        let probe = w.translate(l4, PROBE_VA).unwrap().unwrap();
        let code: [u8; 2] = mem.read_obj(GuestAddress(probe.paddr)).unwrap();
        assert_eq!(code, [0xcc, 0xc3]);
        // Stub 3 jumps to the #BP entry, which compares the saved RIP with the probe's.
        let stubs = w.translate(l4, STUBS_VA).unwrap().unwrap().paddr;
        let jmp: [u8; 5] = mem.read_obj(GuestAddress(stubs + 48)).unwrap();
        let rel = u32::from_le_bytes([jmp[1], jmp[2], jmp[3], jmp[4]]);
        assert_eq!(jmp[0], 0xe9);
        assert_eq!(48 + 5 + u64::from(rel), BP_ENTRY);
        let imm: u64 = mem.read_obj(GuestAddress(stubs + BP_ENTRY + 3)).unwrap();
        assert_eq!(imm, PROBE_VA + 1);
        // Then the rewrite trampoline's: `int3; ret` beside the probe, its list page
        // supervisor read-write, and every RAM frame reachable through the direct map.
        let imm: u64 = mem.read_obj(GuestAddress(stubs + BP_ENTRY + 20)).unwrap();
        assert_eq!(imm, STORE_VA + 1);
        let store = w.translate(l4, STORE_VA).unwrap().unwrap();
        let code: [u8; 2] = mem.read_obj(GuestAddress(store.paddr)).unwrap();
        assert_eq!(code, [0xcc, 0xc3]);
        for frame in [0, 1, 0x200, 0x201, frames - 1] {
            let t = w
                .translate(l4, DIRECT_MAP_VA + frame * PAGE + 0x18)
                .unwrap()
                .unwrap();
            assert_eq!(t.paddr, frame * PAGE + 0x18, "frame {frame:#x}");
            assert!(!t.user() && t.writable());
        }
        assert_eq!(
            w.translate(l4, DIRECT_MAP_VA + frames * PAGE).unwrap(),
            None
        );
        let byte: u8 = mem.read_obj(GuestAddress(tss + 0x68 + 0x3f8 / 8)).unwrap();
        assert_eq!(byte, 0xff);
    }

    #[test]
    fn descriptors_by_selector() {
        use pvmmu_abi::selector::{FLAT_RING3_CS64, FLAT_RING3_SS64};
        assert_eq!(
            gdt_descriptor(0, FLAT_RING3_CS64),
            Some(0x00af_fb00_0000_ffff)
        );
        assert_eq!(
            gdt_descriptor(0, FLAT_RING3_SS64),
            Some(0x00cf_f300_0000_ffff)
        );
        let lo = gdt_descriptor(0, TSS_SEL).unwrap();
        assert_eq!(gdt_descriptor(0, TSS_SEL + 8), Some(tss_va(0) >> 32));
        assert_ne!(gdt_descriptor(1, TSS_SEL), Some(lo));
        assert_eq!(lo >> 40 & 0xff, 0x8b);
        assert_eq!(gdt_descriptor(0, 0x08), None);
        assert_eq!(gdt_descriptor(0, 0xe018), None);
    }

    #[test]
    fn stubs_have_the_expected_shape() {
        assert_eq!(
            &stub(6)[..12],
            &[
                0x6a, 0, 0x6a, 6, 0xe6, 0xf0, 0x48, 0x83, 0xc4, 0x10, 0x48, 0xcf
            ]
        );
        assert_eq!(
            &stub(14)[..10],
            &[0x6a, 14, 0xe6, 0xf0, 0x48, 0x83, 0xc4, 0x10, 0x48, 0xcf]
        );
    }
}
