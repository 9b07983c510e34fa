//! Where things live: guest-physical layout, the hypervisor area's virtual layout, the
//! VMM's private I/O ports and the selectors of the reserved GDT page.

/// Hypercall port: the hypercall page's stubs `out` to it from CPL3 (the only port the
/// TSS I/O bitmap opens).
pub const HYPERCALL_PORT: u16 = 0xf1;
/// Syscall port: the syscall entry stub `out`s to it (from CPL3 on KVM-PVM, where
/// `syscall` does not change privilege; from ring 0 on hardware KVM).
pub const SYSCALL_PORT: u16 = 0xf2;
/// Fault port: the ring-0 exception stubs `out` to it.
pub const FAULT_PORT: u16 = 0xf0;

/// L4 slot of the hypervisor area (inside Xen's reserved 256..=271; 256 is the M2P).
pub const HV_SLOT: usize = 260;
/// Base VA of the hypervisor area.
pub const HV_BASE: u64 = 0xffff_8000_0000_0000 + ((HV_SLOT as u64 - 256) << 39);
/// Bytes between two vCPUs' blocks in the hypervisor area. Each vCPU has its own GDT,
/// TSS, ring-0 stack, rewrite list and LDT window at the same offsets in its block
/// (vCPU `v`'s block starts at `HV_BASE + v * VCPU_STRIDE`); the IDT and the exception
/// stubs are shared, in vCPU 0's block.
pub const VCPU_STRIDE: u64 = 0x4_0000;
/// Most vCPUs a domain can have (the library's limit).
pub const MAX_VCPUS: u32 = 64;

/// Base VA of vCPU `v`'s block.
const fn vcpu_block(v: u32) -> u64 {
    HV_BASE + v as u64 * VCPU_STRIDE
}

/// vCPU `v`'s GDT: 16 pages (8192 descriptors); page 14 is the reserved page with Xen's
/// flat selectors, the others map the guest's GDT frames or a shared zero page.
///
/// ```
/// use platform::layout::*;
/// assert_eq!(gdt_va(0), HV_BASE);
/// assert_eq!(gdt_va(2) - gdt_va(1), VCPU_STRIDE);
/// ```
pub const fn gdt_va(v: u32) -> u64 {
    vcpu_block(v)
}
/// GDT page holding the reserved descriptors (entries 7168..7679).
pub const GDT_RESERVED_PAGE: u64 = 14;
/// The IDT (256 gates), shared by every vCPU.
pub const IDT_VA: u64 = HV_BASE + 0x1_0000;
/// vCPU `v`'s TSS (with its I/O permission bitmap): 3 pages.
pub const fn tss_va(v: u32) -> u64 {
    vcpu_block(v) + 0x1_1000
}
/// Size of the TSS with the bitmap and its terminating byte.
pub const TSS_LIMIT: u32 = 0x68 + 8192;
/// The ring-0 exception stubs, shared by every vCPU.
pub const STUBS_VA: u64 = HV_BASE + 0x1_4000;
/// Bytes per exception stub.
pub const STUB_SIZE: u64 = 16;
/// Size of a ring-0 stack: 8 KiB, aligned to its size, so that ring-0 code finds the
/// top (and the vCPU's rewrite list just above it) from RSP alone.
pub const STACK_SIZE: u64 = 0x2000;
/// vCPU `v`'s ring-0 stack (2 pages, below it an unmapped guard page); RSP0 is its top.
pub const fn stack_va(v: u32) -> u64 {
    vcpu_block(v) + 0x1_6000
}
/// Top of vCPU `v`'s ring-0 stack.
pub const fn stack_top(v: u32) -> u64 {
    stack_va(v) + STACK_SIZE
}

/// vCPU `v`'s LDT window (16 pages, 8192 descriptors): the CPU reads the guest's LDT
/// here, each page filled the first time it is touched (`pvmmu::ldt`).
pub const fn ldt_va(v: u32) -> u64 {
    vcpu_block(v) + 0x2_0000
}

const _: () =
    assert!(stack_va(0).is_multiple_of(STACK_SIZE) && VCPU_STRIDE.is_multiple_of(STACK_SIZE));
const _: () = assert!(ldt_va(0) + 0x1_0000 <= vcpu_block(1));

/// Ring-0 code selector (reserved GDT page).
pub const RING0_CS: u16 = 0xe008;
/// Ring-0 data selector.
pub const RING0_DS: u16 = 0xe010;
/// TSS selector.
pub const TSS_SEL: u16 = 0xe040;
/// LDT selector (the LDT register's descriptor, 16 bytes, in the reserved GDT page).
pub const LDT_SEL: u16 = 0xe050;

/// An alias of the read-only M2P in L4 slot 257: KVM-PVM faults CPL3 accesses to slot
/// 256, where Xen's ABI puts the M2P.
pub const M2P_ALIAS_VA: u64 = 0xffff_8080_0000_0000;

/// The syscall entry stub (LSTAR and CSTAR point here): a user-executable, read-only
/// page in L4 slot 257, so that it runs whether `syscall` enters ring 0 or not.
pub const SYSCALL_STUB_VA: u64 = M2P_ALIAS_VA + (256 << 30);

/// The ring-0 probe, in the syscall stub's page: `int3; ret`. Its #BP is returned from
/// by the ring-0 stub at once, without an exit: a call to it costs the floor of any
/// exception round trip through ring 0 on this host (`pvmmu bench` measures it).
pub const PROBE_VA: u64 = SYSCALL_STUB_VA + 0x10;

/// The entry rewrite trampoline, in the syscall stub's page: `int3; ret`. The VMM
/// returns from a hypercall through it when page-table entries it changed host-side
/// must be invalidated by the guest's own rewrite (see [`store_list_va`]): its #BP is
/// handled in ring 0, without an exit, and `ret` then returns from the hypercall.
pub const STORE_VA: u64 = SYSCALL_STUB_VA + 0x20;

/// vCPU `v`'s rewrite list (supervisor read-write), the page just above its ring-0
/// stack (so the ring-0 handler finds it from RSP): word 0 the count, word 1 where to
/// resume (0: after the trampoline's `int3`, where its `ret` returns from a
/// hypercall-page call; else that address, for a `syscall` hypercall), words
/// 2..count+2 the [`DIRECT_MAP_VA`] addresses of the page-table entries the ring-0 #BP
/// handler rewrites with their own value (`lock or $0`), which a shadow MMU traps and
/// turns into an exact invalidation of each entry; the handler then flushes the vCPU's
/// TLB (CR4.PGE toggled) and clears the count and the resume address.
pub const fn store_list_va(v: u32) -> u64 {
    stack_top(v)
}
/// Most entries one pass of the list rewrites.
pub const STORE_LIST_MAX: usize = 510;

/// Bound on the hypervisor area's per-vCPU blocks: the direct map starts above them.
const _: () = assert!(vcpu_block(MAX_VCPUS) <= DIRECT_MAP_VA);

/// A supervisor read-write map of all guest RAM (2 MiB pages, up to 4 GiB), for the
/// ring-0 rewrite of page-table entries: machine address `a` is at `DIRECT_MAP_VA + a`.
pub const DIRECT_MAP_VA: u64 = HV_BASE + (1 << 30);

/// Xen's PAT MSR value: WB, WT, UC-, UC, WC, WP, UC, UC.
pub const XEN_PAT: u64 = 0x0000_0501_0007_0406;

/// Page size.
pub const PAGE: u64 = 4096;
