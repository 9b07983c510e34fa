//! Descriptor tables from inside: the guest's own GDT (`set_gdt`) with a selector of it
//! loaded, `update_descriptor` refusals, and the LDT (`MMUEXT_SET_LDT`): filled on first
//! use and its selectors loaded, a selector beyond it #GP, an LDT page that cannot be a
//! descriptor page (mapped writable) delivered as a #PF at the LDT's own address, and
//! the page released when the LDT changes.
#![no_std]
#![no_main]

use core::arch::asm;
use core::sync::atomic::Ordering;

use rt::abi::StartInfo;
use rt::abi::hypercall::{HYPERVISOR_set_gdt, HYPERVISOR_update_descriptor};
use rt::abi::mmu::MMUEXT_SET_LDT;
use rt::abi::{Errno, MmuUpdate};
use rt::mem::{pfn_to_mfn, pfn_to_va};
use suite::traps::{self, expect_one};
use suite::{A, Check, Frames, P, RW, SELF, err, l1e_addr, make_readonly, table_frame};

/// A present writable data segment with DPL 0 ...
const DATA_R0: u64 = 0x00cf_9200_0000_ffff;
/// ... as Xen stores it (DPL 3: the kernel's ring).
const DATA_R3: u64 = 0x00cf_f200_0000_ffff;
/// A 64-bit code segment with DPL 3.
const CODE64_R3: u64 = 0x00af_fb00_0000_ffff;
/// A present TSS descriptor: refused.
const TSS: u64 = 0x0000_8900_0000_0067;
/// GDT entry 1 and LDT entry 1 with RPL 3.
const GDT_SEL: u64 = 0x0b;
const LDT_SEL: u64 = 0x0f;

fn update_descriptor(maddr: u64, desc: u64) -> i64 {
    // SAFETY: no pointers.
    unsafe { rt::hypercall(HYPERVISOR_update_descriptor, maddr, desc, 0, 0, 0) }
}

#[unsafe(no_mangle)]
pub fn guest_main(_si: &'static StartInfo) {
    let mut c = Check::new();
    let mut frames = Frames::new();
    c.eq("set_trap_table", traps::install(), 0);

    // ---- The guest's GDT.
    let gdt = table_frame(&mut frames);
    let gdt_m = pfn_to_mfn(gdt) << 12;
    c.eq(
        "update_descriptor: data, DPL 0",
        update_descriptor(gdt_m + 8, DATA_R0),
        0,
    );
    c.eq(
        "update_descriptor: a TSS",
        update_descriptor(gdt_m + 16, TSS),
        err(Errno::EINVAL),
    );
    c.eq(
        "update_descriptor: misaligned",
        update_descriptor(gdt_m + 4, 0),
        err(Errno::EINVAL),
    );
    c.eq(
        "DPL raised to 3",
        rt::peek(pfn_to_va(gdt) + 8) as i64,
        DATA_R3 as i64,
    );
    let list = [pfn_to_mfn(gdt)];
    // SAFETY: `list` lives on the stack for the call.
    let rc = unsafe { rt::hypercall(HYPERVISOR_set_gdt, list.as_ptr() as u64, 16, 0, 0, 0) };
    c.eq("set_gdt", rc, 0);
    c.eq("a GDT selector loads", faults_loading(GDT_SEL), 0);
    let (v, e, _, _) = expect_one(2, || {
        load_ds(16 << 3 | 3);
    });
    c.eq("GDT entry 16 of 16: #GP", v as i64, 13);
    c.eq("#GP error is the selector", e as i64, 16 << 3);
    // In use, the frame cannot be mapped writable.
    let rw = MmuUpdate {
        ptr: l1e_addr(pfn_to_va(gdt)),
        val: (pfn_to_mfn(gdt) << 12) | P | RW | A,
    };
    c.update(
        "GDT frame mapped writable",
        &[rw],
        SELF,
        err(Errno::EBUSY),
        0,
    );

    // ---- set_segment_base(SEGBASE_GS_USER_SEL): the user GS base comes from the
    // descriptor (the shadow GS base in kernel mode); a selector that cannot be loaded
    // gives base 0 and the call still succeeds.
    c.eq(
        "GDT data with a base",
        update_descriptor(gdt_m + 8 * 8, 0x12cf_f334_5000_ffff),
        0,
    );
    let shadow_gs = || {
        let (lo, hi): (u32, u32);
        // SAFETY: rdmsr of IA32_KERNEL_GS_BASE is emulated for a PV kernel.
        unsafe { asm!("rdmsr", in("ecx") 0xc000_0102u32, out("eax") lo, out("edx") hi) };
        (u64::from(hi) << 32 | u64::from(lo)) as i64
    };
    // SAFETY: set_segment_base(SEGBASE_GS_USER_SEL, selector): no pointers.
    let gs_sel = |sel: u64| unsafe { rt::hypercall(25, 3, sel, 0, 0, 0) };
    c.eq("GS_USER_SEL 0x40", gs_sel(0x40), 0);
    c.eq("user GS base from the descriptor", shadow_gs(), 0x1234_5000);
    c.eq("GS_USER_SEL of a zero descriptor", gs_sel(0x38), 0);
    c.eq("user GS base 0", shadow_gs(), 0);
    c.eq("GS_USER_SEL 0x43 again", gs_sel(0x43), 0);
    c.eq("GS_USER_SEL null", gs_sel(0), 0);
    c.eq("null: base 0", shadow_gs(), 0);

    // ---- `iret` to the guest's own code and stack segments (GDT entries 6 and 5), and
    // back to Xen's; a zero descriptor as CS (entry 7) is Xen's #GP at the target.
    c.eq("GDT code64", update_descriptor(gdt_m + 6 * 8, CODE64_R3), 0);
    c.eq("GDT data", update_descriptor(gdt_m + 5 * 8, DATA_R3), 0);
    c.eq(
        "iret to CS 0x33 (frame RPL 0)",
        cs_after_iret(0x30, 0x28),
        0x30,
    );
    c.eq(
        "iret back to CS 0xe033",
        cs_after_iret(0xe030, 0xe028),
        0xe030,
    );
    traps::FLAT_RESUME.store(true, Ordering::SeqCst);
    let (v, e, rip, cs) = expect_one(2, || {
        iret_with(0x38, 0x28);
    });
    c.eq("iret to a zero CS: #GP", v as i64, 13);
    c.eq("#GP error is the selector", e as i64, 0x38);
    c.eq(
        "the frame holds the refused CS (kernel RPL 0)",
        cs as i64,
        0x38,
    );
    c.ok("... and the target RIP", rip != 0);
    traps::FLAT_RESUME.store(true, Ordering::SeqCst);
    let (v, e, _, _) = expect_one(2, || {
        iret_with(0x30, 0x30);
    });
    c.eq("iret with a code segment as SS: #GP", v as i64, 13);
    c.eq("#GP error is the SS selector", e as i64, 0x30);

    // ---- The LDT, filled on first use.
    let ldt = table_frame(&mut frames);
    let ldt_m = pfn_to_mfn(ldt) << 12;
    c.eq("LDT descriptor", update_descriptor(ldt_m + 8, DATA_R0), 0);
    c.eq("SET_LDT", rt::mmuext(MMUEXT_SET_LDT, pfn_to_va(ldt), 4), 0);
    c.eq("an LDT selector loads", faults_loading(LDT_SEL), 0);
    let (v, e, _, _) = expect_one(2, || {
        load_ds(5 << 3 | 7);
    });
    c.eq("LDT entry 5 of 4: #GP", v as i64, 13);
    c.eq("#GP error is the selector", e as i64, 5 << 3 | 4);
    let ldt_rw = MmuUpdate {
        ptr: l1e_addr(pfn_to_va(ldt)),
        val: (pfn_to_mfn(ldt) << 12) | P | RW | A,
    };
    c.update(
        "LDT page in use mapped writable",
        &[ldt_rw],
        SELF,
        err(Errno::EBUSY),
        0,
    );

    // An LDT page mapped writable cannot be a descriptor page: the guest gets the #PF,
    // at the LDT's own address. Made read-only, it is filled.
    let w = frames.take();
    rt::poke(pfn_to_va(w) + 8, DATA_R3);
    c.eq(
        "SET_LDT to a writable page",
        rt::mmuext(MMUEXT_SET_LDT, pfn_to_va(w), 4),
        0,
    );
    let (v, _, _, _) = expect_one(2, || {
        load_ds(LDT_SEL);
    });
    c.eq("writable LDT page: #PF", v as i64, 14);
    let cr2: u64;
    // SAFETY: CR2 reads are emulated for a PV kernel.
    unsafe { asm!("mov %cr2, {r}", r = out(reg) cr2, options(att_syntax, nomem, nostack)) };
    c.eq(
        "CR2 is the descriptor's LDT address",
        cr2 as i64,
        pfn_to_va(w) as i64 + 8,
    );
    c.update("make it read-only", &[make_readonly(w)], SELF, 0, 1);
    c.eq("now it loads", faults_loading(LDT_SEL), 0);
    // A new LDT releases the page: it can be mapped writable again.
    c.eq(
        "SET_LDT back",
        rt::mmuext(MMUEXT_SET_LDT, pfn_to_va(ldt), 4),
        0,
    );
    let w_rw = MmuUpdate {
        ptr: l1e_addr(pfn_to_va(w)),
        val: (pfn_to_mfn(w) << 12) | P | RW | A,
    };
    c.update("released page mapped writable", &[w_rw], SELF, 0, 1);
    c.eq("the old LDT's selector loads", faults_loading(LDT_SEL), 0);
    // No LDT: every LDT selector faults.
    c.eq("SET_LDT none", rt::mmuext(MMUEXT_SET_LDT, 0, 0), 0);
    let (v, e, _, _) = expect_one(2, || {
        load_ds(LDT_SEL);
    });
    c.eq("no LDT: #GP", v as i64, 13);
    c.eq("#GP error is the selector", e as i64, 0x0c);
    c.finish();
}

/// Loads `sel` into %ds (the faulting instruction is the two-byte `mov %eax, %ds`, for
/// `expect_one` to skip), then the null selector again. (Reading %ds back is no test
/// on this host: KVM-PVM reads every data selector back as 0.)
#[inline(never)]
fn load_ds(sel: u64) {
    // SAFETY: selector loads only; in 64-bit mode %ds is not used for addressing, and
    // the null selector is loaded again at the end.
    unsafe {
        asm!(
            "mov %eax, %ds",
            "xor %eax, %eax",
            "mov %eax, %ds",
            inout("eax") sel as u32 => _,
            options(att_syntax, nostack),
        );
    }
}

/// How many exceptions loading `sel` into %ds raised (0: the descriptor was accepted).
fn faults_loading(sel: u64) -> i64 {
    let before = traps::COUNT.load(Ordering::SeqCst);
    traps::SKIP.store(2, Ordering::SeqCst);
    load_ds(sel);
    (traps::COUNT.load(Ordering::SeqCst) - before) as i64
}

/// Returns with the `iret` hypercall to the next instruction, with code selector `cs`
/// and stack selector `ss` (RPL 0: staying in kernel mode; Xen loads them with RPL 3),
/// and raises #UD there (`ud2`, for `expect_one` to skip): the #UD frame's CS is the
/// code selector the vCPU ran with. (Reading %cs is no test on this host: KVM-PVM reads
/// it back as 0x33 whatever is loaded.)
#[inline(never)]
fn iret_with(cs: u64, ss: u64) {
    // SAFETY: the frame returns to label 2 with this stack pointer and flags; RAX, RCX
    // and R11 come back from the frame the hypercall page builds.
    unsafe {
        asm!(
            "mov {tmp}, rsp",
            "push {ss}",
            "push {tmp}",
            "pushfq",
            "push {cs}",
            "lea {tmp}, [rip + 2f]",
            "push {tmp}",
            "push 0",
            "jmp hypercall_page + 23 * 32",
            "2:",
            "ud2",
            ss = in(reg) ss,
            cs = in(reg) cs,
            tmp = out(reg) _,
        );
    }
}

/// The CS a #UD right after `iret_with(cs, ss)` reports in its frame.
fn cs_after_iret(cs: u64, ss: u64) -> i64 {
    let (v, _, _, frame_cs) = expect_one(2, || iret_with(cs, ss));
    if v != 6 {
        return -(v as i64);
    }
    (frame_cs & 0xffff) as i64
}
