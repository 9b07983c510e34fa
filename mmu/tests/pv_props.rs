//! Property test of the PV MMU: random sequences of guest operations (L1 updates with
//! random frames and flags, L2..L4 updates including same-level "linear" entries,
//! unmapping, raw preparation of fresh frames, pin/unpin at every level, NEW_BASEPTR /
//! NEW_USER_BASEPTR on both vCPUs, update_va_mapping) keep the audit clean after every
//! operation and never leave a writable mapping of a page-table frame; tearing the
//! domain down afterwards frees every one of its frames.

mod support;
use support::*;

use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use pvmmu::{Caller, Level, Mfn, PTE_ADDR_MASK, PageType, visit_table};
use pvmmu_abi::DOMID_INVALID;
use pvmmu_abi::mmu::{
    MMU_PT_UPDATE_PRESERVE_AD, MMUEXT_NEW_BASEPTR, MMUEXT_NEW_USER_BASEPTR, MMUEXT_PIN_L1_TABLE,
    MMUEXT_UNPIN_TABLE,
};
use pvmmu_abi::{MmuextOp, is_guest_va};

const PWT: u64 = 0x8;
const PCD: u64 = 0x10;
const PAT: u64 = 0x80;
/// Frames the test prepares up front: the first `MADE_TABLES` are read-only and zeroed
/// (table candidates), the rest stay ordinary writable data frames.
const MADE: usize = 10;
const MADE_TABLES: usize = 8;

/// A frame number chosen by kind, resolved against the current state when the operation
/// runs.
#[derive(Debug, Clone, Copy)]
enum Target {
    /// Any frame of domain 1.
    Own(u16),
    /// A frame of the builder's page-table tree.
    Table(u8),
    /// One of the test's prepared frames.
    Made(u8),
    /// A frame of domain 2.
    Foreign(u8),
    /// A hypervisor frame.
    Xen(u8),
    /// A free RAM frame.
    Free(u16),
    /// A frame beyond RAM (MMIO, which the domain may not map).
    Mmio,
}

/// What an L2..L4 entry points at.
#[derive(Debug, Clone, Copy)]
enum Link {
    /// A table of the next level down (live, or a prepared frame to be validated).
    Lower(u8),
    /// A live table of the same level (a linear entry).
    Same(u8),
    /// The table itself (a self-linear entry).
    SelfRef,
    /// Anything.
    Any(Target),
}

#[derive(Debug, Clone)]
enum Op {
    /// mmu_update of an entry of a live L1 table.
    L1 {
        table: u8,
        idx: u16,
        target: Target,
        flags: u64,
        preserve_ad: bool,
    },
    /// mmu_update of an entry of a live L2, L3 or L4 table.
    Upper {
        table: u8,
        idx: u16,
        link: Link,
        flags: u64,
    },
    /// mmu_update writing a not-present value into an entry of any live table.
    Unmap { table: u8, idx: u16, junk: u64 },
    /// A raw guest write into a prepared frame that is not a live table.
    Fill {
        made: u8,
        idx: u16,
        target: Target,
        flags: u64,
    },
    /// MMUEXT_PIN_L<level>_TABLE of a prepared frame.
    Pin { made: u8, level: u8 },
    /// MMUEXT_UNPIN_TABLE.
    Unpin { target: Target },
    /// NEW_BASEPTR on a vCPU: the builder's L4 (`None`) or a prepared frame.
    BasePtr { root: Option<u8>, vcpu: u32 },
    /// NEW_USER_BASEPTR: 0 clears, 1 the builder's L4, else a prepared frame.
    UserBasePtr { root: u8, vcpu: u32 },
    /// update_va_mapping (`va` None: a non-canonical VA).
    Uvm {
        va: Option<Target>,
        target: Target,
        flags: u64,
        uvmf: u64,
        vcpu: u32,
    },
}

fn target() -> impl Strategy<Value = Target> {
    prop_oneof![
        4 => any::<u16>().prop_map(Target::Own),
        3 => any::<u8>().prop_map(Target::Table),
        4 => any::<u8>().prop_map(Target::Made),
        1 => any::<u8>().prop_map(Target::Foreign),
        1 => any::<u8>().prop_map(Target::Xen),
        1 => any::<u16>().prop_map(Target::Free),
        1 => Just(Target::Mmio),
    ]
}

/// L1 flags: mostly present, every combination of RW/US/A/D/G/NX/bit 52/AVAIL, and now
/// and then a cache attribute (refused for this domain).
fn l1_flags() -> impl Strategy<Value = u64> {
    any::<u32>().prop_map(|r| {
        let mut f = if r % 10 != 0 { P } else { 0 };
        let b = r >> 4;
        for (bit, flag) in [
            (1, RW),
            (2, US),
            (4, A),
            (8, D),
            (0x10, G),
            (0x20, NX),
            (0x40, GK),
            (0x80, 1 << 9),
        ] {
            if b & bit != 0 {
                f |= flag;
            }
        }
        f | match (b >> 8) & 7 {
            1 => PWT,
            2 => PCD,
            3 => PAT,
            _ => 0,
        }
    })
}

/// L2..L4 flags: mostly present, RW half the time (so linear entries are often
/// read-only), rarely PSE / PWT / G (refused).
fn upper_flags() -> impl Strategy<Value = u64> {
    any::<u32>().prop_map(|r| {
        let mut f = if r % 10 != 0 { P } else { 0 };
        let b = r >> 4;
        for (bit, flag) in [
            (1, RW),
            (2, US),
            (4, A),
            (8, D),
            (0x10, NX),
            (0x20, 1 << 10),
        ] {
            if b & bit != 0 {
                f |= flag;
            }
        }
        f | match (b >> 8) & 15 {
            1 => PSE,
            2 => PWT,
            3 => G,
            _ => 0,
        }
    })
}

fn index() -> impl Strategy<Value = u16> {
    prop_oneof![4 => 0u16..8, 1 => 268u16..276, 2 => 0u16..512]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (any::<u8>(), index(), target(), l1_flags(), prop::bool::weighted(0.2)).prop_map(
            |(table, idx, target, flags, preserve_ad)| Op::L1 { table, idx, target, flags, preserve_ad }
        ),
        4 => (
            any::<u8>(),
            index(),
            prop_oneof![
                3 => any::<u8>().prop_map(Link::Lower),
                2 => any::<u8>().prop_map(Link::Same),
                1 => Just(Link::SelfRef),
                1 => target().prop_map(Link::Any),
            ],
            upper_flags(),
        )
            .prop_map(|(table, idx, link, flags)| Op::Upper { table, idx, link, flags }),
        1 => (any::<u8>(), index(), any::<u64>()).prop_map(|(table, idx, junk)| Op::Unmap { table, idx, junk }),
        3 => (any::<u8>(), index(), target(), l1_flags())
            .prop_map(|(made, idx, target, flags)| Op::Fill { made, idx, target, flags }),
        3 => (any::<u8>(), 1u8..=4).prop_map(|(made, level)| Op::Pin { made, level }),
        1 => prop_oneof![any::<u8>().prop_map(Target::Made), Just(Target::Table(0)), target()]
            .prop_map(|target| Op::Unpin { target }),
        1 => (prop::option::weighted(0.7, any::<u8>()), 0u32..2).prop_map(|(root, vcpu)| Op::BasePtr { root, vcpu }),
        1 => (any::<u8>(), 0u32..2).prop_map(|(root, vcpu)| Op::UserBasePtr { root: root % 8, vcpu }),
        2 => (
            prop::option::weighted(0.9, target()),
            target(),
            l1_flags(),
            prop::sample::select(vec![0u64, 1, 2, 5, 6]),
            prop_oneof![3 => Just(0u32), 1 => Just(1u32)],
        )
            .prop_map(|(va, target, flags, uvmf, vcpu)| Op::Uvm { va, target, flags, uvmf, vcpu }),
    ]
}

struct World {
    g: Guest,
    made: Vec<Mfn>,
}

impl World {
    fn new() -> World {
        let mut g = guest();
        let made = (0..MADE)
            .map(|i| {
                if i < MADE_TABLES {
                    g.table_frame()
                } else {
                    g.take()
                }
            })
            .collect();
        World { g, made }
    }

    fn resolve(&self, t: Target) -> u64 {
        match t {
            Target::Own(n) => DOM_FIRST + u64::from(n) % (DOM_END - DOM_FIRST),
            Target::Table(i) => self.g.tables[usize::from(i) % self.g.tables.len()].0,
            Target::Made(i) => self.made[usize::from(i) % MADE].0,
            Target::Foreign(i) => DOM2_FIRST + u64::from(i) % (DOM2_END - DOM2_FIRST),
            Target::Xen(i) => XEN_FRAME + u64::from(i) % 4,
            Target::Free(n) => DOM2_END + u64::from(n) % (FRAMES - DOM2_END),
            Target::Mmio => FRAMES + 0x100,
        }
    }

    /// The live (validated, in use) page tables of domain 1 of the given types.
    fn live(&self, types: &[PageType]) -> Vec<Mfn> {
        self.g
            .m
            .frames()
            .iter()
            .filter(|(_, p)| {
                p.owner == 1 && p.validated && p.type_count > 0 && types.contains(&p.ty)
            })
            .map(|(m, _)| m)
            .collect()
    }

    fn pick(list: &[Mfn], sel: u8) -> Option<Mfn> {
        (!list.is_empty()).then(|| list[usize::from(sel) % list.len()])
    }

    fn ext(&mut self, vcpu: u32, cmd: u32, arg: u64) {
        let _ = self
            .g
            .m
            .mmuext_op(Caller::new(1, vcpu), &[MmuextOp::new(cmd, arg, 0)], SELF)
            .unwrap();
    }

    fn run(&mut self, op: &Op) {
        match *op {
            Op::L1 {
                table,
                idx,
                target,
                flags,
                preserve_ad,
            } => {
                let Some(t) = Self::pick(&self.live(&[PageType::L1]), table) else {
                    return;
                };
                let ptr = Guest::slot(t, usize::from(idx) % 512)
                    | if preserve_ad {
                        MMU_PT_UPDATE_PRESERVE_AD
                    } else {
                        0
                    };
                let val = ((self.resolve(target) << 12) & PTE_ADDR_MASK) | flags;
                let _ = self.g.update(&[(ptr, val)]);
            }
            Op::Upper {
                table,
                idx,
                link,
                flags,
            } => {
                let uppers = self.live(&[PageType::L2, PageType::L3, PageType::L4]);
                let Some(t) = Self::pick(&uppers, table) else {
                    return;
                };
                let ty = self.g.info(t).ty;
                let lower = match ty {
                    PageType::L2 => PageType::L1,
                    PageType::L3 => PageType::L2,
                    _ => PageType::L3,
                };
                let to = match link {
                    Link::Lower(i) => {
                        let mut c = self.live(&[lower]);
                        c.extend(&self.made);
                        Self::pick(&c, i).map(|m| m.0)
                    }
                    Link::Same(i) => Self::pick(&self.live(&[ty]), i).map(|m| m.0),
                    Link::SelfRef => Some(t.0),
                    Link::Any(target) => Some(self.resolve(target)),
                };
                let Some(to) = to else { return };
                let _ = self
                    .g
                    .update(&[(Guest::slot(t, usize::from(idx) % 512), (to << 12) | flags)]);
            }
            Op::Unmap { table, idx, junk } => {
                let all = self.live(&[PageType::L1, PageType::L2, PageType::L3, PageType::L4]);
                let Some(t) = Self::pick(&all, table) else {
                    return;
                };
                let _ = self
                    .g
                    .update(&[(Guest::slot(t, usize::from(idx) % 512), junk & !P)]);
            }
            Op::Fill {
                made,
                idx,
                target,
                flags,
            } => {
                let f = self.made[usize::from(made) % MADE];
                if self.g.info(f).is_live_page_table() {
                    return; // the guest cannot write a live table directly
                }
                let val = ((self.resolve(target) << 12) & PTE_ADDR_MASK) | flags;
                self.g
                    .write_raw(Guest::slot(f, usize::from(idx) % 512), val);
            }
            Op::Pin { made, level } => {
                let f = self.made[usize::from(made) % MADE];
                self.ext(0, MMUEXT_PIN_L1_TABLE + u32::from(level) - 1, f.0);
            }
            Op::Unpin { target } => {
                let f = self.resolve(target);
                self.ext(0, MMUEXT_UNPIN_TABLE, f);
            }
            Op::BasePtr { root, vcpu } => {
                let r = root.map_or(self.g.l4, |i| self.made[usize::from(i) % MADE]);
                self.ext(vcpu, MMUEXT_NEW_BASEPTR, r.0);
            }
            Op::UserBasePtr { root, vcpu } => {
                let r = match root {
                    0 => 0,
                    1 => self.g.l4.0,
                    i => self.made[usize::from(i) % MADE].0,
                };
                self.ext(vcpu, MMUEXT_NEW_USER_BASEPTR, r);
            }
            Op::Uvm {
                va,
                target,
                flags,
                uvmf,
                vcpu,
            } => {
                let va = va.map_or(0x0000_8000_0000_0000, |t| va_of(self.resolve(t)));
                let val = ((self.resolve(target) << 12) & PTE_ADDR_MASK) | flags;
                let rax = self
                    .g
                    .m
                    .hypercall_update_va_mapping(Caller::new(1, vcpu), va, val, uvmf)
                    .unwrap();
                assert!(rax <= 0);
                if !is_guest_va(va) {
                    assert_eq!(rax, pvmmu::Errno::EINVAL.neg());
                }
            }
        }
    }

    /// The audit is clean and no present RW entry of a live L1 table maps a frame whose
    /// type is not `Writable`.
    fn check(&self, after: &dyn std::fmt::Debug) -> Result<(), TestCaseError> {
        let m = &self.g.m;
        if let Err(e) = m.audit() {
            return Err(TestCaseError::fail(format!("audit after {after:?}: {e}")));
        }
        for t in self.live(&[PageType::L1]) {
            let bad = visit_table(m.memory(), t, Level::L1, |b| {
                b.iter().enumerate().find_map(|(i, e)| {
                    if !e.is_present() || e.raw() & RW == 0 {
                        return None;
                    }
                    let p = m.frames().get(e.mfn())?;
                    (p.ty != PageType::Writable || p.type_count == 0).then_some((i, e, p))
                })
            })
            .unwrap();
            if let Some((i, e, p)) = bad {
                return Err(TestCaseError::fail(format!(
                    "after {after:?}: L1 {t}[{i}] = {e:?} maps a frame typed {} (type count {})",
                    p.ty, p.type_count
                )));
            }
        }
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 64,
        failure_persistence: None,
        max_shrink_iters: 2048,
        ..ProptestConfig::default()
    })]

    #[test]
    fn random_operations_keep_the_invariants(ops in prop::collection::vec(op(), 1..40)) {
        let mut w = World::new();
        w.check(&"setup")?;
        for op in &ops {
            w.run(op);
            w.check(op)?;
        }
        let r = w.g.m.destroy_domain(1);
        prop_assert_eq!(r, Ok(()));
        for f in DOM_FIRST..DOM_END {
            let p = w.g.info(Mfn(f));
            prop_assert!(
                p.count == 0 && p.type_count == 0 && p.ty == PageType::None && p.owner == DOMID_INVALID,
                "frame {:#x} not free after teardown: {:?}", f, p
            );
            prop_assert!(!p.pinned && !p.validated && !p.allocated && p.linear == 0, "frame {:#x}: {:?}", f, p);
        }
        for f in DOM2_FIRST..DOM2_END {
            let p = w.g.info(Mfn(f));
            prop_assert_eq!((p.owner, p.count, p.type_count), (2, 1, 0));
        }
        if let Err(e) = w.g.m.audit() {
            return Err(TestCaseError::fail(format!("audit after teardown: {e}")));
        }
    }
}
