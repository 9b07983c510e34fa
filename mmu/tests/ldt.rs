//! The LDT: `MMUEXT_SET_LDT` and the window the CPU reads it through, filled on first
//! use and emptied as Xen empties it (`docs/xen-pv-mmu-rules.md`, "The LDT").
//!
//! Every refusal asserts the exact result and that nothing changed; every test audits
//! after its steps and ends with a teardown that must leave no reference.

mod support;

use pvmmu::{Caller, Errno, FlushReason, FlushScope, LdtFault, Mfn, PageType, VcpuSet};
use pvmmu_abi::MmuextOp;
use pvmmu_abi::mmu::{MMUEXT_NEW_BASEPTR, MMUEXT_PIN_L1_TABLE, MMUEXT_SET_LDT};
use support::*;

/// A present data segment with DPL 0, and as Xen stores it (DPL 3).
const DATA_R0: u64 = 0x00cf_9200_0000_ffff;
const DATA_R3: u64 = 0x00cf_f200_0000_ffff;
/// A present TSS descriptor: refused in a descriptor page.
const TSS: u64 = 0x0000_8900_0000_0067;

fn set_ldt(g: &mut Guest, c: Caller, base: u64, ents: u64) -> Result<(), Errno> {
    g.m.mmuext_op(c, &[MmuextOp::new(MMUEXT_SET_LDT, base, ents)], SELF)
        .expect("caller exists")
        .result
}

fn map(g: &mut Guest, c: Caller, offset: u32) -> Result<Mfn, LdtFault> {
    g.m.map_ldt_page(c, offset).expect("caller exists")
}

/// The LDT flushes recorded since the last call: (vCPUs, scope).
fn ldt_flushes(g: &mut Guest) -> Vec<(VcpuSet, FlushScope)> {
    g.m.flusher()
        .take()
        .into_iter()
        .filter(|r| r.reason == FlushReason::Ldt)
        .map(|r| (r.vcpus, r.scope))
        .collect()
}

/// A zeroed frame mapped read-only (its only mapping), holding `descs` from entry 0.
fn ldt_frame(g: &mut Guest, descs: &[u64]) -> Mfn {
    let f = g.table_frame();
    for (i, d) in descs.iter().enumerate() {
        g.write_raw(f.addr() + i as u64 * 8, *d);
    }
    f
}

/// Gives vCPU 1 the same kernel root as vCPU 0.
fn second_vcpu(g: &mut Guest) -> Caller {
    let c1 = Caller::new(g.c.dom, 1);
    let o =
        g.m.mmuext_op(c1, &[MmuextOp::new(MMUEXT_NEW_BASEPTR, g.l4.0, 0)], SELF)
            .unwrap();
    assert_eq!(o.result, Ok(()));
    c1
}

#[test]
fn set_ldt_records_the_ldt_and_maps_nothing() {
    let mut g = guest();
    let c = g.c;
    let f = ldt_frame(&mut g, &[]);
    let before = g.info(f);
    g.m.flusher().take();
    assert_eq!(set_ldt(&mut g, c, va_of(f.0), 16), Ok(()));
    let ldt = g.m.ldt(c);
    assert_eq!(
        (ldt.base, ldt.ents, ldt.limit_bytes()),
        (va_of(f.0), 16, 128)
    );
    assert_eq!(ldt.mapped, [None; 16]);
    assert_eq!(g.info(f), before, "no reference until first use");
    assert_eq!(ldt_flushes(&mut g), vec![], "nothing mapped: no flush");
    assert_eq!(g.m.take_ldt_change(c), Some(ldt));
    assert_eq!(g.m.take_ldt_change(c), None, "reported once");
    // The same LDT again changes nothing.
    assert_eq!(set_ldt(&mut g, c, va_of(f.0), 16), Ok(()));
    assert_eq!(g.m.take_ldt_change(c), None);
    // No entries: the base is not looked at, and recorded as 0.
    assert_eq!(set_ldt(&mut g, c, 0x1234, 0), Ok(()));
    assert_eq!((g.m.ldt(c).base, g.m.ldt(c).ents), (0, 0));
    teardown(g);
}

#[test]
fn set_ldt_refuses_bad_arguments() {
    let mut g = guest();
    let c = g.c;
    let base = va_of(g.take().0);
    for (what, b, ents, want) in [
        ("misaligned base", base + 8, 1, Err(Errno::EINVAL)),
        ("aligned base", base, 1, Ok(())),
        ("8193 entries", base, 8193, Err(Errno::EINVAL)),
        ("8192 entries", base, 8192, Ok(())),
        (
            "hypervisor address",
            0xffff_8000_0000_0000,
            1,
            Err(Errno::EINVAL),
        ),
        (
            "end of the hypervisor range",
            0xffff_8800_0000_0000,
            1,
            Ok(()),
        ),
    ] {
        let old = g.m.ldt(c);
        assert_eq!(set_ldt(&mut g, c, b, ents), want, "{what}");
        if want.is_err() {
            assert_eq!(g.m.ldt(c), old, "{what}: LDT unchanged");
        }
    }
    // Another domain's LDT: -EPERM, whatever the arguments.
    let o = g.ext_fd(MMUEXT_SET_LDT, base, 1, 2);
    assert_refused(o, Errno::EPERM, 0);
    g.audit();
    teardown(g);
}

#[test]
fn first_use_maps_the_page_and_checks_its_descriptors() {
    let mut g = guest();
    let c = g.c;
    let f = ldt_frame(&mut g, &[0, DATA_R0]);
    let before = g.info(f);
    assert_eq!(set_ldt(&mut g, c, va_of(f.0), 512), Ok(()));
    g.m.take_ldt_change(c);
    assert_eq!(map(&mut g, c, 8), Ok(f));
    let p = g.info(f);
    assert_eq!(
        (p.ty, p.type_count, p.count, p.validated),
        (PageType::SegDesc, 1, before.count + 1, true)
    );
    assert_eq!(g.read(f.addr() + 8), DATA_R3, "DPL fixed up in place");
    let ldt = g.m.take_ldt_change(c).expect("window change reported");
    assert_eq!(ldt.mapped[0], Some(f));
    g.audit();
    // Touching the page again takes nothing more.
    assert_eq!(map(&mut g, c, 4088), Ok(f));
    assert_eq!(g.info(f), p);
    assert_eq!(g.m.take_ldt_change(c), None);
    // Beyond the entries: refused, nothing mapped.
    assert_eq!(
        map(&mut g, c, 4096),
        Err(LdtFault::Limit {
            offset: 4096,
            ents: 512
        })
    );
    g.audit();
    teardown(g);
}

#[test]
fn a_page_that_cannot_be_a_descriptor_page_is_refused() {
    let mut g = guest();
    let c = g.c;
    // Mapped writable (an ordinary data frame).
    let w = g.take();
    // Holding a refused descriptor; the same page without it is accepted below.
    let bad = ldt_frame(&mut g, &[0, TSS]);
    // A live page table (mapped read-only, as every table of the fixture is).
    let table = g.tables[3];
    // Not mapped at all: the LDT runs past the end of the domain's mapping.
    let last = Mfn(DOM_END - 1);
    for (what, f, offset, want) in [
        (
            "writable",
            w,
            0,
            LdtFault::Refused {
                va: va_of(w.0),
                mfn: w,
            },
        ),
        (
            "bad descriptor",
            bad,
            8,
            LdtFault::Refused {
                va: va_of(bad.0) + 8,
                mfn: bad,
            },
        ),
        (
            "page table",
            table,
            0,
            LdtFault::Refused {
                va: va_of(table.0),
                mfn: table,
            },
        ),
        (
            "not mapped",
            last,
            4096 + 16,
            LdtFault::NotPresent {
                va: va_of(DOM_END) + 16,
            },
        ),
    ] {
        assert_eq!(set_ldt(&mut g, c, va_of(f.0), 1024), Ok(()), "{what}");
        let (mem, frames) = (g.snapshot(), g.counts());
        assert_eq!(map(&mut g, c, offset), Err(want), "{what}");
        assert_eq!(want.fault_va(), Some(va_of(f.0) + u64::from(offset)));
        assert!(g.snapshot() == mem, "{what}: memory changed");
        assert!(g.counts() == frames, "{what}: frame table changed");
        assert_eq!(g.m.ldt(c).mapped, [None; 16], "{what}");
        g.audit();
    }
    // The bad page minus its bad descriptor is accepted.
    g.write_raw(bad.addr() + 8, 0);
    assert_eq!(set_ldt(&mut g, c, va_of(bad.0), 1024), Ok(()));
    assert_eq!(map(&mut g, c, 8), Ok(bad));
    g.audit();
    teardown(g);
}

#[test]
fn a_mapped_ldt_page_cannot_be_made_writable_or_a_table() {
    let mut g = guest();
    let c = g.c;
    let f = ldt_frame(&mut g, &[]);
    assert_eq!(set_ldt(&mut g, c, va_of(f.0), 16), Ok(()));
    assert_eq!(map(&mut g, c, 0), Ok(f));
    let alias = g.pte_addr(va_of(0x300));
    let (mem, frames) = (g.snapshot(), g.counts());
    assert_refused(g.update(&[(alias, (f.0 << 12) | P | RW)]), Errno::EBUSY, 0);
    assert_refused(g.ext(MMUEXT_PIN_L1_TABLE, f.0, 0), Errno::EINVAL, 0);
    assert!(g.snapshot() == mem && g.counts() == frames);
    g.audit();
    teardown(g);
}

#[test]
fn a_new_ldt_or_kernel_root_empties_the_window() {
    let mut g = guest();
    let c = g.c;
    let f = ldt_frame(&mut g, &[]);
    let before = g.info(f);
    assert_eq!(set_ldt(&mut g, c, va_of(f.0), 16), Ok(()));
    assert_eq!(map(&mut g, c, 0), Ok(f));
    g.m.flusher().take();
    g.m.take_ldt_change(c);
    // Another LDT: the reference goes, the vCPU is flushed once.
    assert_eq!(set_ldt(&mut g, c, va_of(f.0), 32), Ok(()));
    assert_eq!(g.info(f).count, before.count);
    assert_eq!(g.info(f).type_count, 0);
    assert_eq!(
        ldt_flushes(&mut g),
        vec![(VcpuSet::one(0), FlushScope::AllNonGlobal)]
    );
    let ldt = g.m.take_ldt_change(c).expect("reported");
    assert_eq!((ldt.ents, ldt.mapped), (32, [None; 16]));
    g.audit();
    // NEW_BASEPTR (even to the same root) empties it too.
    assert_eq!(map(&mut g, c, 0), Ok(f));
    let o = g.ext(MMUEXT_NEW_BASEPTR, g.l4.0, 0);
    assert_eq!(o.result, Ok(()));
    assert_eq!(g.info(f).type_count, 0);
    assert_eq!(g.m.ldt(c).mapped, [None; 16]);
    assert_eq!(g.m.ldt(c).ents, 32, "the LDT itself stays");
    g.audit();
    teardown(g);
}

#[test]
fn dropping_any_mapping_of_a_descriptor_page_empties_every_window() {
    let mut g = guest();
    let c0 = g.c;
    let c1 = second_vcpu(&mut g);
    let f = ldt_frame(&mut g, &[]);
    let alias = g.pte_addr(va_of(0x300));
    assert_eq!(g.update(&[(alias, (f.0 << 12) | P)]).result, Ok(()));
    for c in [c0, c1] {
        assert_eq!(set_ldt(&mut g, c, va_of(f.0), 16), Ok(()));
        assert_eq!(map(&mut g, c, 0), Ok(f));
    }
    assert_eq!(g.info(f).type_count, 2);
    g.audit();
    // Dropping a read-only mapping of an ordinary page leaves the windows alone.
    let plain = g.take();
    let plain_pte = g.pte_addr(va_of(plain.0));
    assert_eq!(g.update(&[(plain_pte, (plain.0 << 12) | P)]).result, Ok(()));
    g.m.flusher().take();
    assert_eq!(g.update(&[(plain_pte, 0)]).result, Ok(()));
    assert_eq!(g.info(f).type_count, 2);
    assert_eq!(ldt_flushes(&mut g), vec![]);
    // Dropping the alias (not the mapping the LDT was found through) empties both.
    assert_eq!(g.update(&[(alias, 0)]).result, Ok(()));
    assert_eq!(g.info(f).type_count, 0);
    for c in [c0, c1] {
        assert_eq!(g.m.ldt(c).mapped, [None; 16]);
    }
    assert_eq!(
        ldt_flushes(&mut g),
        vec![(VcpuSet(0b11), FlushScope::AllNonGlobal)]
    );
    g.audit();
    // They refill on demand through the remaining mapping.
    assert_eq!(map(&mut g, c1, 0), Ok(f));
    g.audit();
    teardown(g);
}

#[test]
fn teardown_releases_mapped_ldt_pages() {
    let mut g = guest();
    let c = g.c;
    let f = ldt_frame(&mut g, &[]);
    assert_eq!(set_ldt(&mut g, c, va_of(f.0), 8192), Ok(()));
    assert_eq!(map(&mut g, c, 0), Ok(f));
    teardown(g);
}
