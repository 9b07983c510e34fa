//! Descriptor tables: `set_gdt` (hypercall 2) and `update_descriptor` (hypercall 10),
//! against Xen's rules for them (`docs/xen-pv-mmu-rules.md`, "Descriptor tables").
//! One file, like `pv_rules.rs`: the tests read in order as the rule book.
//!
//! Every refusal asserts the exact errno and that nothing changed (memory, counts, the
//! GDT, no GDT flush, no GDT change reported), and sits next to the same input minus
//! the bad bit being accepted, so that it cannot pass for the wrong reason. Every test
//! audits after each step and ends with a teardown that must leave no reference.

mod support;

use pvmmu::descriptor::{FIRST_RESERVED_GDT_ENTRY, check_descriptor};
use pvmmu::{
    Caller, Errno, FlushReason, FlushRequest, FlushScope, Mfn, NoHandler, PageType, PtwrRefusal,
    PtwrWrite, VcpuSet,
};
use pvmmu_abi::hypercall::{HYPERVISOR_set_gdt, HYPERVISOR_update_descriptor};
use pvmmu_abi::mmu::{
    MMUEXT_CLEAR_PAGE, MMUEXT_COPY_PAGE, MMUEXT_PIN_L1_TABLE, MMUEXT_PIN_L2_TABLE,
    MMUEXT_UNPIN_TABLE,
};
use pvmmu_abi::vmassist::VMASST_TYPE_writable_pagetables;
use support::*;

// ---------------------------------------------------------------- descriptors

/// The present bit of a descriptor.
const P_BIT: u64 = 1 << 47;
/// A present 64-bit code segment with DPL 0 ...
const CODE64_R0: u64 = 0x00af_9a00_0000_ffff;
/// ... as Xen stores it: DPL 3 (a 64-bit PV kernel runs in ring 3).
const CODE64_R3: u64 = 0x00af_fa00_0000_ffff;
/// A present writable data segment with DPL 0 ...
const DATA_R0: u64 = 0x00cf_9200_0000_ffff;
/// ... with DPL 1 ...
const DATA_R1: u64 = 0x00cf_b200_0000_ffff;
/// ... and both as stored: DPL 3.
const DATA_R3: u64 = 0x00cf_f200_0000_ffff;
/// A 64-bit user code segment the guest already gives DPL 3: stored unchanged.
const USER_CODE: u64 = 0x00af_fb00_0000_ffff;
/// A present 64-bit TSS (system type 9): refused.
const TSS: u64 = 0x0000_8900_0000_0067;
/// A present LDT descriptor (system type 2): refused.
const LDT: u64 = 0x0000_8200_0000_ffff;
/// A present system descriptor of type 0 (the upper half of a call gate): harmless,
/// stored unchanged (not even its DPL is touched).
const SYS_TYPE0: u64 = 0x0000_8000_1234_5678;
/// A 64-bit call gate with DPL 3 to the guest's selector 0x10 ...
const GATE: u64 = (0xec00 << 32) | (0x10 << 16) | 0x1000;
/// ... as Xen stores it: DPL 0 (every use faults for emulation), the DPL in the RPL.
const GATE_STORED: u64 = (0x8c00 << 32) | (0x13 << 16) | 0x1000;
/// The same gate naming the hypervisor's code selector 0xe008: refused.
const GATE_TO_XEN: u64 = (0xec00 << 32) | (0xe008 << 16) | 0x1000;
/// The same gate with a reserved bit (bit 0 of the high word) set: refused.
const GATE_RESERVED: u64 = GATE | (1 << 32);
/// Every refused descriptor used below; each is accepted with its present bit clear.
const REFUSED: [u64; 4] = [TSS, LDT, GATE_TO_XEN, GATE_RESERVED];

#[test]
fn the_descriptors_used_here_are_what_xen_makes_of_them() {
    assert_eq!(check_descriptor(CODE64_R0), Some(CODE64_R3));
    assert_eq!(check_descriptor(DATA_R0), Some(DATA_R3));
    assert_eq!(check_descriptor(DATA_R1), Some(DATA_R3));
    assert_eq!(check_descriptor(USER_CODE), Some(USER_CODE));
    assert_eq!(check_descriptor(SYS_TYPE0), Some(SYS_TYPE0));
    assert_eq!(check_descriptor(GATE), Some(GATE_STORED));
    assert_eq!(check_descriptor(0), Some(0));
    for bad in REFUSED {
        assert_eq!(check_descriptor(bad), None, "{bad:#x}");
        // Not present: always safe, stored as given.
        assert_eq!(
            check_descriptor(bad & !P_BIT),
            Some(bad & !P_BIT),
            "{bad:#x}"
        );
    }
    // Xen's flat 64-bit kernel CS (0xe033) and any LDT selector are valid gate targets;
    // the GDT entry just above the guest's part (7168) is not.
    let gate_to = |sel: u64| (0xec00 << 32) | (sel << 16);
    assert!(check_descriptor(gate_to(0xe033)).is_some());
    assert!(check_descriptor(gate_to(0xe00c)).is_some(), "LDT selector");
    assert!(check_descriptor(gate_to((7167 << 3) | 3)).is_some());
    assert_eq!(check_descriptor(gate_to(7168 << 3)), None);
    assert_eq!(FIRST_RESERVED_GDT_ENTRY, 14 * 512);
}

// ---------------------------------------------------------------- helpers

fn vcpu1(g: &Guest) -> Caller {
    Caller::new(g.c.dom, 1)
}

/// Both vCPUs of domain 1.
fn vcpus(g: &Guest) -> [Caller; 2] {
    [g.c, vcpu1(g)]
}

fn set_gdt(g: &mut Guest, c: Caller, frames: &[Mfn], entries: u32) -> Result<(), Errno> {
    let raw: Vec<u64> = frames.iter().map(|f| f.0).collect();
    set_gdt_raw(g, c, &raw, entries)
}

fn set_gdt_raw(g: &mut Guest, c: Caller, frames: &[u64], entries: u32) -> Result<(), Errno> {
    g.m.set_gdt(c, frames, entries).expect("caller exists")
}

fn update_descriptor(g: &mut Guest, maddr: u64, desc: u64) -> i64 {
    let c = g.c;
    g.m.hypercall_update_descriptor(c, maddr, desc)
        .expect("caller exists")
}

/// A frame of the domain ready to become a GDT page: zeroed, mapped read-only only.
fn gdt_frame(g: &mut Guest) -> Mfn {
    g.table_frame()
}

/// The machine address of descriptor `i` of frame `f`.
fn slot(f: Mfn, i: u64) -> u64 {
    f.addr() + i * 8
}

/// Sets the KBASE mapping of `f` (its only mapping in the fixture) to `flags`.
fn map_own(g: &mut Guest, f: Mfn, flags: u64) -> Result<(), Errno> {
    let ptr = g.pte_addr(va_of(f.0));
    g.update(&[(ptr, (f.0 << 12) | flags)]).result
}

/// The GDT flushes recorded since the last call.
fn gdt_flushes(g: &mut Guest) -> Vec<FlushRequest> {
    g.m.flusher()
        .take()
        .into_iter()
        .filter(|r| r.reason == FlushReason::Gdt)
        .collect()
}

/// Asserts exactly one local GDT flush for `c` (Xen's `flush_tlb_local()` on success).
fn assert_gdt_flushed(g: &mut Guest, c: Caller) {
    let f: Vec<_> = gdt_flushes(g)
        .into_iter()
        .map(|r| (r.domain, r.vcpus, r.scope))
        .collect();
    assert_eq!(
        f,
        vec![(c.dom, VcpuSet::one(c.vcpu), FlushScope::AllNonGlobal)],
        "one local flush for {c:?}"
    );
}

/// Asserts that `c`'s GDT is `frames` with `entries` entries, that the number of frames
/// is the `DIV_ROUND_UP(entries, 512)` Xen installs, that each is a validated
/// seg_desc page in use, and that the audit is clean.
fn assert_gdt(g: &Guest, c: Caller, frames: &[Mfn], entries: u32) {
    assert_eq!(g.m.gdt(c), (frames.to_vec(), entries), "GDT of {c:?}");
    assert_eq!(
        frames.len(),
        entries.div_ceil(512) as usize,
        "frames for entries"
    );
    for &f in frames {
        let p = g.info(f);
        assert_eq!(p.ty, PageType::SegDesc, "{f}");
        assert!(p.type_count > 0 && p.validated, "{f}: {p:?}");
    }
    g.audit();
}

/// Runs `f` and asserts that guest memory, the frame table and both vCPUs' GDTs are
/// exactly as before, that no GDT flush was made and no GDT change is reported.
fn unchanged(g: &mut Guest, f: impl FnOnce(&mut Guest)) {
    let cs = vcpus(g);
    g.m.flusher().take();
    for c in cs {
        g.m.take_gdt_change(c);
    }
    let (mem, frames, gdts) = (g.snapshot(), g.counts(), cs.map(|c| g.m.gdt(c)));
    f(g);
    assert!(g.snapshot() == mem, "guest memory changed");
    assert!(g.counts() == frames, "frame table changed");
    assert_eq!(cs.map(|c| g.m.gdt(c)), gdts, "GDT changed");
    for c in cs {
        assert_eq!(g.m.take_gdt_change(c), None, "GDT change reported");
    }
    assert_eq!(gdt_flushes(g), vec![], "GDT flush on a refusal");
    g.audit();
}

// ---------------------------------------------------------------- set_gdt

#[test]
fn set_gdt_takes_a_general_and_a_seg_desc_reference_per_frame() {
    let mut g = guest();
    let c = g.c;
    let (a, b) = (gdt_frame(&mut g), gdt_frame(&mut g));
    let (ca, cb) = (g.info(a).count, g.info(b).count);
    assert_eq!((g.info(a).type_count, g.info(b).type_count), (0, 0));
    g.m.flusher().take();
    g.m.take_gdt_change(c);

    assert_eq!(set_gdt(&mut g, c, &[a, b], 1024), Ok(()));
    for (f, count) in [(a, ca), (b, cb)] {
        let p = g.info(f);
        assert_eq!(
            (p.ty, p.type_count, p.count),
            (PageType::SegDesc, 1, count + 1)
        );
    }
    assert_gdt(&g, c, &[a, b], 1024);
    assert_gdt_flushed(&mut g, c);
    assert_eq!(g.m.take_gdt_change(c), Some((vec![a, b], 1024)));
    assert_eq!(g.m.take_gdt_change(c), None, "reported once");
    assert_eq!(g.m.gdt(vcpu1(&g)), (vec![], 0), "per vCPU");

    // 513 entries need two frames; the same frames swapped: counts unchanged.
    assert_eq!(set_gdt(&mut g, c, &[b, a], 513), Ok(()));
    assert_gdt(&g, c, &[b, a], 513);
    assert_gdt_flushed(&mut g, c);
    assert_eq!(g.m.take_gdt_change(c), Some((vec![b, a], 513)));
    assert_eq!((g.info(a).type_count, g.info(b).type_count), (1, 1));
    assert_eq!((g.info(a).count, g.info(b).count), (ca + 1, cb + 1));
    teardown(g);
}

#[test]
fn set_gdt_validation_fixes_dpls_up_in_place() {
    let mut g = guest();
    let c = g.c;
    let f = gdt_frame(&mut g);
    let layout = [
        (1, CODE64_R0, CODE64_R3),
        (2, DATA_R0, DATA_R3),
        (3, DATA_R1, DATA_R3),
        (4, USER_CODE, USER_CODE),
        (5, TSS & !P_BIT, TSS & !P_BIT),
        (6, SYS_TYPE0, SYS_TYPE0),
        (7, GATE, GATE_STORED),
        (8, 0, 0),
        (511, CODE64_R0, CODE64_R3),
    ];
    for (i, given, _) in layout {
        g.write_raw(slot(f, i), given);
    }
    assert_eq!(set_gdt(&mut g, c, &[f], 512), Ok(()));
    for (i, _, stored) in layout {
        assert_eq!(g.read(slot(f, i)), stored, "descriptor {i}");
    }
    for i in (9..511).chain([0]) {
        assert_eq!(g.read(slot(f, i)), 0, "descriptor {i} untouched");
    }
    assert_gdt(&g, c, &[f], 512);
    // Even a GDT of one entry checks (and fixes) the whole page.
    let h = gdt_frame(&mut g);
    g.write_raw(slot(h, 300), DATA_R0);
    assert_eq!(set_gdt(&mut g, c, &[h], 1), Ok(()));
    assert_eq!(g.read(slot(h, 300)), DATA_R3);
    assert_gdt(&g, c, &[h], 1);
    teardown(g);
}

#[test]
fn set_gdt_entries_above_the_reserved_limit_are_refused_before_anything() {
    let mut g = guest();
    let c = g.c;
    let frames: Vec<Mfn> = (0..15).map(|_| gdt_frame(&mut g)).collect();
    // A ring-0 descriptor in each: validating any frame would change memory.
    for &f in &frames {
        g.write_raw(slot(f, 1), CODE64_R0);
    }
    unchanged(&mut g, |g| {
        assert_eq!(set_gdt(g, c, &frames[..14], 7169), Err(Errno::EINVAL));
        assert_eq!(set_gdt(g, c, &frames, 7169), Err(Errno::EINVAL));
        assert_eq!(set_gdt(g, c, &frames, 15 * 512), Err(Errno::EINVAL));
        assert_eq!(set_gdt(g, c, &frames[..14], u32::MAX), Err(Errno::EINVAL));
    });
    // 14 pages, 7168 entries: the largest GDT a guest may have.
    assert_eq!(set_gdt(&mut g, c, &frames[..14], 7168), Ok(()));
    assert_gdt(&g, c, &frames[..14], 7168);
    for &f in &frames[..14] {
        assert_eq!(g.read(slot(f, 1)), CODE64_R3);
    }
    assert_eq!(g.read(slot(frames[14], 1)), CODE64_R0);
    teardown(g);
}

#[test]
fn set_gdt_refuses_a_frame_mapped_writable() {
    let mut g = guest();
    let c = g.c;
    let good = gdt_frame(&mut g);
    // Still mapped RW at KBASE.
    let own = g.take();
    g.write_raw_page_zero(own);
    // Mapped read-only at KBASE, but RW through another L1 entry.
    let other = gdt_frame(&mut g);
    let alias = g.pte_addr(va_of(0x300));
    assert_eq!(
        g.update(&[(alias, (other.0 << 12) | P | RW)]).result,
        Ok(())
    );
    assert_eq!(g.info(other).ty, PageType::Writable);
    for bad in [own, other] {
        unchanged(&mut g, |g| {
            assert_eq!(set_gdt(g, c, &[bad], 512), Err(Errno::EINVAL));
            // The good frame before it is taken, then released again.
            assert_eq!(set_gdt(g, c, &[good, bad], 1024), Err(Errno::EINVAL));
        });
    }
    // Minus RW: accepted.
    assert_eq!(map_own(&mut g, own, P | A), Ok(()));
    assert_eq!(g.update(&[(alias, (other.0 << 12) | P)]).result, Ok(()));
    assert_eq!(set_gdt(&mut g, c, &[good, own, other], 1536), Ok(()));
    assert_gdt(&g, c, &[good, own, other], 1536);
    teardown(g);
}

#[test]
fn set_gdt_refuses_a_live_page_table() {
    let mut g = guest();
    let c = g.c;
    let good = gdt_frame(&mut g);
    let t = g.table_frame();
    assert_eq!(g.ext(MMUEXT_PIN_L1_TABLE, t.0, 0).result, Ok(()));
    let tree_l1 = Mfn::containing(g.pte_addr(va_of(0x300)));
    let l4 = g.l4;
    for bad in [t, tree_l1, l4] {
        unchanged(&mut g, |g| {
            assert_eq!(set_gdt(g, c, &[bad], 512), Err(Errno::EINVAL), "{bad}");
            assert_eq!(set_gdt(g, c, &[good, bad], 1024), Err(Errno::EINVAL));
        });
    }
    // The same frame once it is no longer a table: accepted.
    assert_eq!(g.ext(MMUEXT_UNPIN_TABLE, t.0, 0).result, Ok(()));
    assert_eq!(set_gdt(&mut g, c, &[good, t], 1024), Ok(()));
    assert_gdt(&g, c, &[good, t], 1024);
    teardown(g);
}

#[test]
fn set_gdt_refuses_frames_that_are_not_the_callers() {
    let mut g = guest();
    let c = g.c;
    let good = gdt_frame(&mut g);
    let good2 = gdt_frame(&mut g);
    let free = 0xa00;
    assert_eq!(g.info(Mfn(free)).owner, pvmmu_abi::DOMID_INVALID);
    for bad in [DOM2_FIRST, XEN_FRAME, free, FRAMES, 1 << 40, u64::MAX] {
        unchanged(&mut g, |g| {
            let r = set_gdt_raw(g, c, &[bad], 512);
            assert_eq!(r, Err(Errno::EINVAL), "{bad:#x}");
            let r = set_gdt_raw(g, c, &[good.0, bad], 1024);
            assert_eq!(r, Err(Errno::EINVAL), "{bad:#x}");
        });
    }
    assert_eq!(set_gdt(&mut g, c, &[good, good2], 1024), Ok(()));
    assert_gdt(&g, c, &[good, good2], 1024);
    // Domain 2's frame is fine for domain 2 itself.
    let d2 = Caller::new(2, 0);
    assert_eq!(set_gdt(&mut g, d2, &[Mfn(DOM2_FIRST)], 512), Ok(()));
    assert_gdt(&g, d2, &[Mfn(DOM2_FIRST)], 512);
    assert_eq!(g.info(Mfn(DOM2_FIRST)).count, 2);
    teardown(g);
}

#[test]
fn set_gdt_refuses_a_frame_holding_a_refused_descriptor_and_keeps_the_old_gdt() {
    for bad_desc in REFUSED {
        let mut g = guest();
        let c = g.c;
        let old = gdt_frame(&mut g);
        assert_eq!(set_gdt(&mut g, c, &[old], 512), Ok(()));
        let (a, b, bad) = (gdt_frame(&mut g), gdt_frame(&mut g), gdt_frame(&mut g));
        g.write_raw(slot(bad, 0), CODE64_R0);
        g.write_raw(slot(bad, 100), bad_desc);
        g.write_raw(slot(bad, 200), DATA_R0);
        g.m.flusher().take();
        g.m.take_gdt_change(c);
        let before = g.counts();

        assert_eq!(
            set_gdt(&mut g, c, &[a, b, bad], 1536),
            Err(Errno::EINVAL),
            "{bad_desc:#x}"
        );
        // a and b were taken, then released: no reference leaks; the old GDT stays.
        assert!(g.counts() == before, "frame table changed");
        for f in [a, b, bad] {
            assert_eq!(g.info(f).type_count, 0, "{f}");
        }
        assert_gdt(&g, c, &[old], 512);
        assert_eq!(g.m.take_gdt_change(c), None);
        assert_eq!(gdt_flushes(&mut g), vec![]);
        // Xen's validate_segdesc_page fixes each descriptor up in place as it checks
        // it and stops at the first refused one.
        assert_eq!(g.read(slot(bad, 0)), CODE64_R3);
        assert_eq!(g.read(slot(bad, 100)), bad_desc);
        assert_eq!(g.read(slot(bad, 200)), DATA_R0, "not reached");
        // The bad frame first: a is never touched.
        assert_eq!(set_gdt(&mut g, c, &[bad, a], 1024), Err(Errno::EINVAL));
        assert!(g.counts() == before, "frame table changed");
        assert_gdt(&g, c, &[old], 512);

        // The same descriptor not present: accepted, the old GDT's frame released.
        g.write_raw(slot(bad, 100), bad_desc & !P_BIT);
        assert_eq!(set_gdt(&mut g, c, &[a, b, bad], 1536), Ok(()));
        assert_gdt(&g, c, &[a, b, bad], 1536);
        assert_gdt_flushed(&mut g, c);
        assert_eq!(g.read(slot(bad, 100)), bad_desc & !P_BIT);
        assert_eq!(g.read(slot(bad, 200)), DATA_R3);
        assert_eq!(g.info(old).type_count, 0);
        assert_eq!(map_own(&mut g, old, P | A | RW), Ok(()));
        teardown(g);
    }
}

// Xen's pv_set_gdt reads frames[0 .. DIV_ROUND_UP(entries, 512)] and nothing more: the
// GDT of a vCPU always holds exactly that many frames. `Machine::set_gdt` takes the
// frames as a slice, so its length and `entries` can disagree; these three tests pin
// down what Xen's array semantics give.

#[test]
fn set_gdt_ignores_frames_beyond_the_entries() {
    let mut g = guest();
    let c = g.c;
    let (a, b) = (gdt_frame(&mut g), gdt_frame(&mut g));
    let rw = g.take(); // mapped writable: can never be a GDT frame
    assert_eq!(set_gdt(&mut g, c, &[a, b], 512), Ok(()));
    assert_gdt(&g, c, &[a], 512);
    assert_eq!(
        g.info(b).type_count,
        0,
        "frame beyond the entries not taken"
    );
    // A frame that could not be taken, beyond the entries: never looked at.
    assert_eq!(set_gdt(&mut g, c, &[b, rw], 512), Ok(()));
    assert_gdt(&g, c, &[b], 512);
    assert_eq!(g.info(a).type_count, 0);
    teardown(g);
}

#[test]
fn set_gdt_with_no_entries_takes_no_frame() {
    let mut g = guest();
    let c = g.c;
    let a = gdt_frame(&mut g);
    let idle = g.info(a);
    assert_eq!(set_gdt(&mut g, c, &[a], 0), Ok(()));
    assert_gdt(&g, c, &[], 0);
    let p = g.info(a);
    assert_eq!(
        (p.count, p.type_count),
        (idle.count, 0),
        "no entries: no frames"
    );
    teardown(g);
}

#[test]
fn set_gdt_never_installs_entries_without_their_frames() {
    let mut g = guest();
    let c = g.c;
    let (a, b) = (gdt_frame(&mut g), gdt_frame(&mut g));
    assert_eq!(set_gdt(&mut g, c, &[a], 512), Ok(()));
    unchanged(&mut g, |g| {
        let r = g.m.set_gdt(c, &[], 512);
        assert!(!matches!(r, Ok(Ok(()))), "512 entries in no frame: {r:?}");
        let r = g.m.set_gdt(c, &[b.0], 513);
        assert!(!matches!(r, Ok(Ok(()))), "513 entries in one frame: {r:?}");
    });
    assert_gdt(&g, c, &[a], 512);
    // Minus the missing frame: accepted.
    assert_eq!(set_gdt(&mut g, c, &[b, a], 513), Ok(()));
    assert_gdt(&g, c, &[b, a], 513);
    teardown(g);
}

// ---------------------------------------------------------------- GDT frames in use

#[test]
fn a_gdt_frame_cannot_be_mapped_writable_or_pinned_while_in_use() {
    let mut g = guest();
    let c = g.c;
    let (f, other) = (gdt_frame(&mut g), gdt_frame(&mut g));
    assert_eq!(set_gdt(&mut g, c, &[f], 512), Ok(()));
    let alias = g.pte_addr(va_of(0x300));
    let own = g.pte_addr(va_of(f.0));
    unchanged(&mut g, |g| {
        let o = g.update(&[(alias, (f.0 << 12) | P | RW)]);
        assert_refused(o, Errno::EBUSY, 0);
        let o = g.update(&[(own, (f.0 << 12) | P | A | RW)]);
        assert_refused(o, Errno::EBUSY, 0);
        let r =
            g.m.hypercall_update_va_mapping(c, va_of(0x300), (f.0 << 12) | P | RW, 0);
        assert_eq!(r.unwrap(), Errno::EBUSY.neg());
        assert_refused(g.ext(MMUEXT_PIN_L1_TABLE, f.0, 0), Errno::EINVAL, 0);
        assert_refused(g.ext(MMUEXT_PIN_L2_TABLE, f.0, 0), Errno::EINVAL, 0);
    });
    // Read-only is fine: a general reference, no type reference.
    let before = g.info(f);
    assert_eq!(g.update(&[(alias, (f.0 << 12) | P)]).result, Ok(()));
    assert_eq!(g.info(f).count, before.count + 1);
    assert_eq!(g.info(f).type_count, before.type_count);
    assert_gdt(&g, c, &[f], 512);
    // Once the GDT is replaced the frame is ordinary memory again.
    assert_eq!(set_gdt(&mut g, c, &[other], 512), Ok(()));
    assert_eq!(g.info(f).type_count, 0);
    assert_eq!(g.update(&[(alias, (f.0 << 12) | P | RW)]).result, Ok(()));
    assert_eq!(map_own(&mut g, f, P | A | RW), Ok(()));
    assert_eq!(
        (g.info(f).ty, g.info(f).type_count),
        (PageType::Writable, 2)
    );
    g.audit();
    // ... and, mapped writable, cannot become a GDT frame again.
    unchanged(&mut g, |g| {
        assert_eq!(set_gdt(g, c, &[f], 512), Err(Errno::EINVAL));
    });
    teardown(g);
}

#[test]
fn a_gdt_frame_changes_only_through_update_descriptor() {
    let mut g = guest();
    let c = g.c;
    let f = gdt_frame(&mut g);
    let other = gdt_frame(&mut g);
    // A page holding a refused descriptor, and a data frame to copy into.
    let src = g.take();
    g.write_raw(slot(src, 1), TSS);
    let dst = g.take();
    assert_eq!(set_gdt(&mut g, c, &[f], 512), Ok(()));
    g.m.hypercall_vm_assist(c, 0, u64::from(VMASST_TYPE_writable_pagetables))
        .unwrap();
    // The guest's read-only view of descriptor 1.
    let va = va_of(f.0) + 8;
    let write = PtwrWrite {
        addr: va,
        size: 8,
        value: TSS,
        cmpxchg: None,
    };
    unchanged(&mut g, |g| {
        // MMUEXT_CLEAR_PAGE / COPY_PAGE need a writable type on the destination.
        assert_refused(g.ext(MMUEXT_CLEAR_PAGE, f.0, 0), Errno::EINVAL, 0);
        assert_refused(g.ext(MMUEXT_COPY_PAGE, f.0, src.0), Errno::EINVAL, 0);
        // A write fault on it is no page-table write to emulate.
        let r = g.m.ptwr_write(c, va, write).unwrap();
        assert_eq!(r, Err(PtwrRefusal::NotL1Table));
    });
    // As a source it is fine; into an ordinary frame it is fine.
    assert_eq!(g.ext(MMUEXT_COPY_PAGE, dst.0, f.0).result, Ok(()));
    assert_eq!(g.ext(MMUEXT_COPY_PAGE, dst.0, src.0).result, Ok(()));
    assert_eq!(g.read(slot(dst, 1)), TSS);
    assert_eq!(g.ext(MMUEXT_CLEAR_PAGE, dst.0, 0).result, Ok(()));
    assert_gdt(&g, c, &[f], 512);
    // Once released, the former GDT frame can be overwritten: taking it again then
    // revalidates it.
    assert_eq!(set_gdt(&mut g, c, &[other], 512), Ok(()));
    assert_eq!(g.ext(MMUEXT_COPY_PAGE, f.0, src.0).result, Ok(()));
    assert_eq!(g.info(f).ty, PageType::Writable);
    unchanged(&mut g, |g| {
        assert_eq!(set_gdt(g, c, &[f], 512), Err(Errno::EINVAL));
    });
    assert_eq!(g.ext(MMUEXT_CLEAR_PAGE, f.0, 0).result, Ok(()));
    assert_eq!(set_gdt(&mut g, c, &[f], 512), Ok(()));
    assert_gdt(&g, c, &[f], 512);
    teardown(g);
}

#[test]
fn a_released_gdt_frame_may_become_a_page_table() {
    let mut g = guest();
    let c = g.c;
    let f = gdt_frame(&mut g);
    assert_eq!(set_gdt(&mut g, c, &[f], 512), Ok(()));
    unchanged(&mut g, |g| {
        assert_refused(g.ext(MMUEXT_PIN_L1_TABLE, f.0, 0), Errno::EINVAL, 0);
    });
    assert_eq!(set_gdt(&mut g, c, &[], 0), Ok(()));
    assert_eq!(g.ext(MMUEXT_PIN_L1_TABLE, f.0, 0).result, Ok(()));
    assert_eq!((g.info(f).ty, g.info(f).type_count), (PageType::L1, 1));
    g.audit();
    // A live L1 now: refused as a GDT frame.
    unchanged(&mut g, |g| {
        assert_eq!(set_gdt(g, c, &[f], 512), Err(Errno::EINVAL));
    });
    teardown(g);
}

#[test]
fn replacing_or_emptying_the_gdt_releases_the_old_frames() {
    #[derive(Debug, Clone, Copy)]
    enum How {
        OtherFrames,
        EmptyList,
        HypercallZeroEntries,
        Hypercall,
    }
    for how in [
        How::OtherFrames,
        How::EmptyList,
        How::HypercallZeroEntries,
        How::Hypercall,
    ] {
        let mut g = guest();
        let c = g.c;
        let (f, other) = (gdt_frame(&mut g), gdt_frame(&mut g));
        let list = g.take();
        g.write_raw(list.addr(), other.0);
        let idle = g.info(f);
        assert_eq!(set_gdt(&mut g, c, &[f], 512), Ok(()));
        assert_eq!(g.info(f).count, idle.count + 1);
        g.m.flusher().take();
        g.m.take_gdt_change(c);
        let (want, ents) = match how {
            How::OtherFrames => {
                assert_eq!(set_gdt(&mut g, c, &[other], 512), Ok(()));
                (vec![other], 512)
            }
            How::EmptyList => {
                assert_eq!(set_gdt(&mut g, c, &[], 0), Ok(()));
                (vec![], 0)
            }
            How::HypercallZeroEntries => {
                // No frame is read: even an unmapped list pointer is fine.
                assert_eq!(g.m.hypercall_set_gdt(c, 0x1000, 0).unwrap(), 0);
                (vec![], 0)
            }
            How::Hypercall => {
                let r = g.m.hypercall_set_gdt(c, va_of(list.0), 512).unwrap();
                assert_eq!(r, 0);
                (vec![other], 512)
            }
        };
        assert_gdt(&g, c, &want, ents);
        assert_gdt_flushed(&mut g, c);
        assert_eq!(g.m.take_gdt_change(c), Some((want, ents)), "{how:?}");
        let p = g.info(f);
        assert_eq!((p.count, p.type_count), (idle.count, 0), "{how:?}");
        assert_eq!(map_own(&mut g, f, P | A | RW), Ok(()), "{how:?}");
        teardown(g);
    }
}

#[test]
fn the_same_frame_may_back_several_slots_and_vcpus() {
    let mut g = guest();
    let (c0, c1) = (g.c, vcpu1(&g));
    let f = gdt_frame(&mut g);
    let idle = g.info(f).count;
    g.m.flusher().take();
    assert_eq!(set_gdt(&mut g, c0, &[f, f], 1024), Ok(()));
    assert_gdt_flushed(&mut g, c0);
    assert_eq!((g.info(f).count, g.info(f).type_count), (idle + 2, 2));
    assert_eq!(set_gdt(&mut g, c1, &[f], 512), Ok(()));
    assert_gdt_flushed(&mut g, c1);
    assert_eq!((g.info(f).count, g.info(f).type_count), (idle + 3, 3));
    assert_gdt(&g, c0, &[f, f], 1024);
    assert_gdt(&g, c1, &[f], 512);
    assert_eq!(g.m.take_gdt_change(c1), Some((vec![f], 512)));
    // vCPU 0 lets go; vCPU 1 still holds it.
    assert_eq!(set_gdt(&mut g, c0, &[], 0), Ok(()));
    assert_eq!((g.info(f).count, g.info(f).type_count), (idle + 1, 1));
    assert_eq!(g.m.take_gdt_change(c1), None);
    unchanged(&mut g, |g| {
        assert_eq!(map_own(g, f, P | A | RW), Err(Errno::EBUSY));
    });
    assert_gdt(&g, c1, &[f], 512);
    teardown(g);
}

#[test]
fn the_audit_counts_gdt_references() {
    let mut g = guest();
    let (c0, c1) = (g.c, vcpu1(&g));
    let (a, b) = (gdt_frame(&mut g), gdt_frame(&mut g));
    assert_eq!(set_gdt(&mut g, c0, &[a], 512), Ok(()));
    assert_eq!(set_gdt(&mut g, c1, &[a, b], 1024), Ok(()));
    g.audit();
    // One reference too few or too many is reported.
    for f in [a, b] {
        let p = g.info(f);
        for (count, type_count) in [
            (p.count, p.type_count - 1),
            (p.count - 1, p.type_count),
            (p.count + 1, p.type_count + 1),
        ] {
            g.m.frames_mut_for_test()
                .set_counts_for_test(f, count, type_count);
            assert!(g.m.audit().is_err(), "{f}: {count}/{type_count}");
        }
        g.m.frames_mut_for_test()
            .set_counts_for_test(f, p.count, p.type_count);
        g.audit();
    }
    teardown(g);
}

// ---------------------------------------------------------------- hypercall_set_gdt

#[test]
fn hypercall_set_gdt_reads_the_frame_list_through_the_guest_page_tables() {
    let mut g = guest();
    let c = g.c;
    // The list lives in the domain's last frame, so that it can straddle the end of the
    // KBASE mapping.
    let list = g.take();
    assert_eq!(list, Mfn(DOM_END - 1));
    let (a, b) = (gdt_frame(&mut g), gdt_frame(&mut g));
    g.write_raw(list.addr(), a.0);
    g.write_raw(list.addr() + 8, b.0);
    g.write_raw(list.addr() + 4088, a.0);
    let va = va_of(list.0);
    let last = va_of(DOM_END) - 8; // list[0] mapped, list[1] not
    assert_eq!(g.translate(va_of(DOM_END)), None);
    let unmapped = 0x1000;
    let xen_va = 0xffff_8000_0000_0000;
    unchanged(&mut g, |g| {
        for (at, n) in [(unmapped, 512), (last, 1024), (last, 7168), (xen_va, 512)] {
            let r = g.m.hypercall_set_gdt(c, at, n).unwrap();
            assert_eq!(r, Errno::EFAULT.neg(), "{at:#x} x {n}");
        }
        // The entry limit comes before the copy.
        let r = g.m.hypercall_set_gdt(c, unmapped, 7169).unwrap();
        assert_eq!(r, Errno::EINVAL.neg());
        let r = g.m.hypercall_set_gdt(c, va, 7169).unwrap();
        assert_eq!(r, Errno::EINVAL.neg());
    });
    // Minus the bad bit: the list fully readable.
    assert_eq!(g.m.hypercall_set_gdt(c, last, 512).unwrap(), 0);
    assert_gdt(&g, c, &[a], 512);
    assert_eq!(g.m.hypercall_set_gdt(c, va, 1024).unwrap(), 0);
    assert_gdt(&g, c, &[a, b], 1024);
    // `entries` is an unsigned int in Xen's hypercall table: the upper half of the
    // register is ignored.
    assert_eq!(g.m.hypercall_set_gdt(c, va, (1 << 32) | 512).unwrap(), 0);
    assert_gdt(&g, c, &[a], 512);
    assert_eq!(g.info(b).type_count, 0);
    // A refused frame in a readable list is -EINVAL, nothing leaks.
    g.write_raw(list.addr() + 8, DOM2_FIRST);
    unchanged(&mut g, |g| {
        assert_eq!(
            g.m.hypercall_set_gdt(c, va, 1024).unwrap(),
            Errno::EINVAL.neg()
        );
    });
    teardown(g);
}

#[test]
fn set_gdt_and_update_descriptor_through_the_hypercall_entry() {
    let mut g = guest();
    let c = g.c;
    let list = g.take();
    let f = gdt_frame(&mut g);
    g.write_raw(list.addr(), f.0);
    let r = g.m.hypercall(
        c,
        HYPERVISOR_set_gdt,
        [va_of(list.0), 512, 0, 0, 0],
        &mut NoHandler,
    );
    assert_eq!(r.unwrap().rax, 0);
    assert_gdt(&g, c, &[f], 512);
    let nr = HYPERVISOR_update_descriptor;
    let r =
        g.m.hypercall(c, nr, [slot(f, 5), DATA_R0, 0, 0, 0], &mut NoHandler);
    assert_eq!(r.unwrap().rax, 0);
    assert_eq!(g.read(slot(f, 5)), DATA_R3);
    unchanged(&mut g, |g| {
        let r =
            g.m.hypercall(c, nr, [slot(f, 5), TSS, 0, 0, 0], &mut NoHandler);
        assert_eq!(r.unwrap().rax, Errno::EINVAL.neg());
        let r = g.m.hypercall(
            c,
            HYPERVISOR_set_gdt,
            [0x1000, 512, 0, 0, 0],
            &mut NoHandler,
        );
        assert_eq!(r.unwrap().rax, Errno::EFAULT.neg());
    });
    assert_gdt(&g, c, &[f], 512);
    teardown(g);
}

// ---------------------------------------------------------------- update_descriptor

#[test]
fn update_descriptor_into_a_gdt_frame_is_checked_and_fixed_up() {
    let mut g = guest();
    let c = g.c;
    let f = gdt_frame(&mut g);
    assert_eq!(set_gdt(&mut g, c, &[f], 512), Ok(()));
    let before = g.info(f);
    for (i, given, stored) in [
        (3, CODE64_R0, CODE64_R3),
        (4, DATA_R1, DATA_R3),
        (5, USER_CODE, USER_CODE),
        (6, GATE, GATE_STORED),
        (511, DATA_R0, DATA_R3),
    ] {
        assert_eq!(update_descriptor(&mut g, slot(f, i), given), 0, "{i}");
        assert_eq!(g.read(slot(f, i)), stored, "{i}");
        assert_eq!(g.info(f), before, "counts and type unchanged");
        assert_gdt(&g, c, &[f], 512);
    }
    for bad in REFUSED {
        unchanged(&mut g, |g| {
            assert_eq!(update_descriptor(g, slot(f, 7), bad), Errno::EINVAL.neg());
        });
        assert_eq!(update_descriptor(&mut g, slot(f, 7), bad & !P_BIT), 0);
        assert_eq!(g.read(slot(f, 7)), bad & !P_BIT);
        assert_gdt(&g, c, &[f], 512);
    }
    // Still in use: still not mappable writable.
    unchanged(&mut g, |g| {
        assert_eq!(map_own(g, f, P | A | RW), Err(Errno::EBUSY));
    });
    teardown(g);
}

#[test]
fn update_descriptor_refuses_a_misaligned_address() {
    let mut g = guest();
    let c = g.c;
    let f = gdt_frame(&mut g);
    let d = g.take();
    assert_eq!(set_gdt(&mut g, c, &[f], 512), Ok(()));
    for frame in [f, d] {
        for off in 1..8 {
            unchanged(&mut g, |g| {
                let r = update_descriptor(g, slot(frame, 8) + off, USER_CODE);
                assert_eq!(r, Errno::EINVAL.neg(), "{frame} +{off}");
            });
        }
        assert_eq!(update_descriptor(&mut g, slot(frame, 8), USER_CODE), 0);
        assert_eq!(g.read(slot(frame, 8)), USER_CODE);
    }
    assert_gdt(&g, c, &[f], 512);
    teardown(g);
}

#[test]
fn update_descriptor_into_ordinary_data_frames() {
    let mut g = guest();
    let c = g.c;
    // Mapped writable: the write takes and drops a writable type reference.
    let d = g.take();
    // Mapped read-only only, type count 0.
    let r = gdt_frame(&mut g);
    // A former GDT frame: seg_desc type, count 0.
    let old = gdt_frame(&mut g);
    assert_eq!(set_gdt(&mut g, c, &[old], 512), Ok(()));
    assert_eq!(set_gdt(&mut g, c, &[], 0), Ok(()));
    assert_eq!(
        (g.info(old).ty, g.info(old).type_count),
        (PageType::SegDesc, 0)
    );
    for f in [d, r, old] {
        let before = g.info(f);
        assert_eq!(update_descriptor(&mut g, slot(f, 9), CODE64_R0), 0, "{f}");
        assert_eq!(
            g.read(slot(f, 9)),
            CODE64_R3,
            "checked even in a data frame"
        );
        let after = g.info(f);
        assert_eq!(
            (after.count, after.type_count),
            (before.count, before.type_count),
            "{f}"
        );
        g.audit();
        for bad in REFUSED {
            unchanged(&mut g, |g| {
                assert_eq!(update_descriptor(g, slot(f, 10), bad), Errno::EINVAL.neg());
            });
        }
    }
    // The former GDT frame, updated, can be a GDT frame again.
    assert_eq!(set_gdt(&mut g, c, &[old], 512), Ok(()));
    assert_gdt(&g, c, &[old], 512);
    teardown(g);
}

#[test]
fn update_descriptor_refuses_frames_that_are_not_the_callers() {
    let mut g = guest();
    let mine = g.take();
    let free = 0xa00u64;
    for bad in [
        DOM2_FIRST << 12,
        XEN_FRAME << 12,
        free << 12,
        FRAMES << 12,
        !0xfff,
    ] {
        unchanged(&mut g, |g| {
            let r = update_descriptor(g, bad + 16, USER_CODE);
            assert_eq!(r, Errno::EINVAL.neg(), "{bad:#x}");
        });
    }
    assert_eq!(update_descriptor(&mut g, slot(mine, 2), USER_CODE), 0);
    assert_eq!(g.read(slot(mine, 2)), USER_CODE);
    // Domain 2 may write into its own frame.
    let d2 = Caller::new(2, 0);
    let r =
        g.m.hypercall_update_descriptor(d2, (DOM2_FIRST << 12) + 16, DATA_R0);
    assert_eq!(r.unwrap(), 0);
    assert_eq!(g.read((DOM2_FIRST << 12) + 16), DATA_R3);
    g.audit();
    teardown(g);
}

#[test]
fn update_descriptor_refuses_a_live_page_table() {
    let mut g = guest();
    let t = g.table_frame();
    assert_eq!(g.ext(MMUEXT_PIN_L1_TABLE, t.0, 0).result, Ok(()));
    let tree_l1 = Mfn::containing(g.pte_addr(va_of(0x300)));
    let l4 = g.l4;
    // Descriptors with the PTE present bit clear: harmless as entries, so the refusal
    // can only be the frame's type.
    let desc = CODE64_R0 & !1;
    assert_eq!(check_descriptor(desc), Some(CODE64_R3 & !1));
    for table in [t, tree_l1, l4] {
        unchanged(&mut g, |g| {
            assert_eq!(
                update_descriptor(g, slot(table, 3), desc),
                Errno::EINVAL.neg()
            );
            assert_eq!(update_descriptor(g, slot(table, 3), 0), Errno::EINVAL.neg());
        });
    }
    // The same frame once it is no longer a table.
    assert_eq!(g.ext(MMUEXT_UNPIN_TABLE, t.0, 0).result, Ok(()));
    assert_eq!(update_descriptor(&mut g, slot(t, 3), desc), 0);
    assert_eq!(g.read(slot(t, 3)), CODE64_R3 & !1);
    assert_eq!(g.info(t).type_count, 0);
    g.audit();
    teardown(g);
}

// ---------------------------------------------------------------- teardown

#[test]
fn teardown_releases_every_vcpus_gdt() {
    let mut g = guest();
    let (c0, c1) = (g.c, vcpu1(&g));
    let (a, b, x) = (gdt_frame(&mut g), gdt_frame(&mut g), gdt_frame(&mut g));
    assert_eq!(set_gdt(&mut g, c0, &[a, b], 1024), Ok(()));
    assert_eq!(set_gdt(&mut g, c1, &[b, x], 600), Ok(()));
    // A read-only alias too.
    let alias = g.pte_addr(va_of(0x300));
    assert_eq!(g.update(&[(alias, (b.0 << 12) | P)]).result, Ok(()));
    let d2 = Caller::new(2, 0);
    assert_eq!(set_gdt(&mut g, d2, &[Mfn(DOM2_FIRST + 1)], 512), Ok(()));
    g.audit();
    teardown(g);
}
