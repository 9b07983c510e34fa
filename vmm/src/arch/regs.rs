//! Pure builders of the PV vCPU's register state: segment registers decoded from the
//! descriptors the hypervisor area writes into its GDT (so the two cannot disagree),
//! control registers, and the boot registers of Xen's PV entry (RSI = start_info).
//!
//! The guest kernel runs in 64-bit mode at CPL3 (Xen's flat ring-3 selectors); the
//! hypervisor area's TSS gives the ring-0 stack and the I/O bitmap that opens the
//! hypercall port (`docs/kvm-host.md`: this host ignores IOPL).

use kvm_bindings::{kvm_regs, kvm_segment, kvm_sregs};
use platform::builder::BootInfo;
use platform::hvarea::gdt_descriptor;
use platform::layout::{IDT_VA, TSS_SEL, gdt_va};
use platform::pv::cr4;
use pvmmu_abi::selector::{FLAT_RING3_CS64, FLAT_RING3_SS64};

/// CR0: PE, MP, ET, NE, WP, PG.
pub const CR0: u64 = 0x8001_0033;
/// CR0.TS: the next FPU instruction faults (#NM).
pub const CR0_TS: u64 = 1 << 3;
/// CR4: PAE, PGE, OSFXSR, OSXMMEXCPT.
pub const CR4: u64 = 0x6a0;
/// EFER: SCE, LME, LMA, NXE.
pub const EFER: u64 = 0xd01;
/// RFLAGS at entry: IF and the reserved bit 1.
pub const RFLAGS: u64 = 0x202;
/// Entries of the IDT the hypervisor area fills (the exception vectors).
pub const IDT_ENTRIES: u16 = 32;

/// A selector the hypervisor area's GDT does not define.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("selector {0:#x} has no descriptor in the hypervisor's GDT")]
pub struct NoDescriptor(pub u16);

/// The KVM segment register for `selector`, decoded from the raw descriptor `lo` (and,
/// for a system descriptor, its upper half `hi`, which holds base bits 63:32).
pub fn segment_from_descriptor(selector: u16, lo: u64, hi: u64) -> kvm_segment {
    let access = (lo >> 40) as u8;
    let flags = (lo >> 52) as u8 & 0xf;
    let system = access & 0x10 == 0;
    let mut base = (lo >> 16 & 0xff_ffff) | (lo >> 56 & 0xff) << 24;
    if system {
        base |= hi << 32;
    }
    let raw_limit = (lo & 0xffff) as u32 | ((lo >> 48 & 0xf) as u32) << 16;
    let granular = flags & 0x8 != 0;
    kvm_segment {
        base,
        limit: if granular {
            raw_limit << 12 | 0xfff
        } else {
            raw_limit
        },
        selector,
        type_: access & 0xf,
        present: access >> 7,
        dpl: access >> 5 & 3,
        db: flags >> 2 & 1,
        s: u8::from(!system),
        l: flags >> 1 & 1,
        g: u8::from(granular),
        avl: flags & 1,
        unusable: 0,
        padding: 0,
    }
}

/// The segment register for `selector` from vCPU `vcpu`'s reserved GDT page in the
/// hypervisor area.
pub fn gdt_segment(vcpu: u32, selector: u16) -> Result<kvm_segment, NoDescriptor> {
    let lo = gdt_descriptor(vcpu, selector).ok_or(NoDescriptor(selector))?;
    let hi = gdt_descriptor(vcpu, selector + 8).unwrap_or(0);
    Ok(segment_from_descriptor(selector, lo, hi))
}

/// A null, unusable data segment.
fn null_segment() -> kvm_segment {
    kvm_segment {
        unusable: 1,
        ..Default::default()
    }
}

/// The LDT register with no LDT: a null selector, unusable.
pub fn no_ldt() -> kvm_segment {
    kvm_segment {
        type_: 2,
        ..null_segment()
    }
}

/// PV vCPU `vcpu`'s special registers on top of KVM's reset state `base`: Xen's flat
/// 64-bit ring-3 CS and SS, null data segments, the vCPU's GDT and TSS and the shared
/// IDT in the hypervisor area, long mode with paging on `cr3`, and CR4.OSXSAVE when
/// `xsave`.
pub fn pv_sregs(
    base: kvm_sregs,
    vcpu: u32,
    cr3: u64,
    xsave: bool,
) -> Result<kvm_sregs, NoDescriptor> {
    let mut s = base;
    s.cs = gdt_segment(vcpu, FLAT_RING3_CS64)?;
    s.ss = gdt_segment(vcpu, FLAT_RING3_SS64)?;
    (s.ds, s.es, s.fs, s.gs) = (
        null_segment(),
        null_segment(),
        null_segment(),
        null_segment(),
    );
    s.tr = gdt_segment(vcpu, TSS_SEL)?;
    s.ldt = no_ldt();
    s.gdt.base = gdt_va(vcpu);
    s.gdt.limit = 0xffff;
    s.idt.base = IDT_VA;
    s.idt.limit = IDT_ENTRIES * 16 - 1;
    s.cr0 = CR0;
    s.cr4 = if xsave { CR4 | cr4::OSXSAVE } else { CR4 };
    s.efer = EFER;
    s.cr3 = cr3;
    Ok(s)
}

/// The general registers at the guest's entry point: RIP, the boot stack, RSI =
/// start_info (Xen's PV entry convention).
pub fn boot_regs(boot: &BootInfo) -> kvm_regs {
    kvm_regs {
        rip: boot.entry,
        rsp: boot.stack_top,
        rsi: boot.start_info,
        rflags: RFLAGS,
        ..Default::default()
    }
}

/// A hypercall's argument registers (Xen's 64-bit ABI: RDI, RSI, RDX, R10, R8).
pub fn hypercall_args(regs: &kvm_regs) -> [u64; 5] {
    [regs.rdi, regs.rsi, regs.rdx, regs.r10, regs.r8]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_match_the_measured_settings() {
        let cs = gdt_segment(0, FLAT_RING3_CS64).unwrap();
        assert_eq!(
            (cs.type_, cs.s, cs.dpl, cs.present, cs.l, cs.db, cs.g),
            (0xb, 1, 3, 1, 1, 0, 1)
        );
        assert_eq!((cs.base, cs.limit), (0, 0xffff_ffff));
        let ss = gdt_segment(0, FLAT_RING3_SS64).unwrap();
        assert_eq!(
            (ss.type_, ss.s, ss.dpl, ss.l, ss.db, ss.g),
            (0x3, 1, 3, 0, 1, 1)
        );
        let tr = gdt_segment(0, TSS_SEL).unwrap();
        assert_eq!(
            (tr.type_, tr.s, tr.dpl, tr.present, tr.g),
            (0xb, 0, 0, 1, 0)
        );
        assert_eq!(tr.base, platform::layout::tss_va(0));
        assert_eq!(
            gdt_segment(3, TSS_SEL).unwrap().base,
            platform::layout::tss_va(3)
        );
        assert_eq!(tr.limit, platform::layout::TSS_LIMIT);
        assert_eq!(gdt_segment(0, 0x10), Err(NoDescriptor(0x10)));
    }

    #[test]
    fn sregs_enter_long_mode_at_cpl3() {
        let s = pv_sregs(kvm_sregs::default(), 0, 0x5000, true).unwrap();
        assert_eq!((s.cr0, s.cr3, s.efer), (CR0, 0x5000, EFER));
        assert_eq!(s.cr4, CR4 | cr4::OSXSAVE);
        assert_eq!(s.cs.selector & 3, 3);
        assert_eq!(s.ss.dpl, 3, "SS.DPL decides the CPL on VMX/SVM");
        assert_eq!(s.ds.unusable, 1);
        assert_eq!(s.idt.limit, 32 * 16 - 1);
    }
}
