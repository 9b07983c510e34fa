//! Property tests: the batched walker against a naive reference walker that does one full
//! descent from the root per page, on random sparse page tables with superpages and holes.

use std::collections::BTreeMap;
use std::ops::ControlFlow;

use proptest::prelude::*;
use pvmmu::{Level, Mfn, PagingMode, Pte, VaRange, Visit, WalkError, Walker};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const MEM_FRAMES: u64 = 2048;
const ROOT: Mfn = Mfn(1);
const MODE: PagingMode = PagingMode::FourLevel;
const LINK: u64 = 0x27; // P | RW | US | A

#[derive(Debug, Clone)]
enum Node {
    /// A table of the next level down.
    Table(BTreeMap<usize, Node>),
    /// An L1 table: raw entry values.
    L1(BTreeMap<usize, u64>),
    /// A superpage leaf or any other raw value (present or not) at this level.
    Raw(u64),
}

fn index() -> impl Strategy<Value = usize> {
    prop_oneof![0usize..3, 509usize..512, 0usize..512]
}

fn raw_upper() -> impl Strategy<Value = u64> {
    prop_oneof![
        // Superpage leaf with random frame and flag bits.
        any::<u64>().prop_map(|v| (v & !0x1) | 0x81),
        // Not present, possibly with junk.
        any::<u64>().prop_map(|v| v & !1),
    ]
}

fn l1() -> impl Strategy<Value = Node> {
    prop::collection::btree_map(index(), any::<u64>(), 0..20).prop_map(Node::L1)
}

fn l2() -> impl Strategy<Value = Node> {
    prop::collection::btree_map(
        index(),
        prop_oneof![3 => l1(), 1 => raw_upper().prop_map(Node::Raw)],
        0..5,
    )
    .prop_map(Node::Table)
}

fn l3() -> impl Strategy<Value = Node> {
    prop::collection::btree_map(
        index(),
        prop_oneof![3 => l2(), 1 => raw_upper().prop_map(Node::Raw)],
        0..4,
    )
    .prop_map(Node::Table)
}

fn l4_slot() -> impl Strategy<Value = usize> {
    prop_oneof![
        Just(0usize),
        Just(1),
        Just(255),
        Just(256),
        Just(511),
        0usize..512
    ]
}

fn tree() -> impl Strategy<Value = BTreeMap<usize, Node>> {
    prop::collection::btree_map(l4_slot(), l3(), 1..4)
}

/// Writes `tree` into fresh memory; returns the memory and the first free frame.
fn build(tree: &BTreeMap<usize, Node>) -> (GuestMemoryMmap<()>, u64) {
    let mem =
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), (MEM_FRAMES << 12) as usize)]).unwrap();
    let mut next = ROOT.0 + 1;
    fn write(mem: &GuestMemoryMmap<()>, table: u64, node: &BTreeMap<usize, Node>, next: &mut u64) {
        for (&i, child) in node {
            let val = match child {
                Node::Raw(v) => *v,
                Node::Table(sub) => {
                    let f = *next;
                    *next += 1;
                    write(mem, f, sub, next);
                    (f << 12) | LINK
                }
                Node::L1(entries) => {
                    let f = *next;
                    *next += 1;
                    for (&j, &v) in entries {
                        mem.write_obj(v, GuestAddress((f << 12) + j as u64 * 8))
                            .unwrap();
                    }
                    (f << 12) | LINK
                }
            };
            mem.write_obj(val, GuestAddress((table << 12) + i as u64 * 8))
                .unwrap();
        }
    }
    write(&mem, ROOT.0, tree, &mut next);
    (mem, next)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rec {
    Pte {
        va: u64,
        addr: u64,
        val: u64,
    },
    Super {
        level: Level,
        va: u64,
        addr: u64,
        val: u64,
    },
    Hole {
        level: Level,
        start: u64,
        last: u64,
    },
}

/// What the naive walker finds for one page.
enum Found {
    Leaf {
        addr: u64,
    },
    Super {
        level: Level,
        va: u64,
        addr: u64,
        val: u64,
    },
    Hole {
        level: Level,
        table: u64,
    },
    OutOfFrames,
}

fn sign_extend(lin: u64) -> u64 {
    MODE.va(lin)
}

/// One full four-level descent for the page at linear address `lin`, allocating missing
/// tables from `pool` when given one.
fn descend(mem: &GuestMemoryMmap<()>, lin: u64, pool: &mut Option<&mut Vec<u64>>) -> Found {
    let mut table = ROOT.0;
    for level in [Level::L4, Level::L3, Level::L2, Level::L1] {
        let idx = (lin >> level.shift()) & 511;
        let addr = (table << 12) + idx * 8;
        if level == Level::L1 {
            return Found::Leaf { addr };
        }
        let mut e: u64 = mem.read_obj(GuestAddress(addr)).unwrap();
        if e & 1 == 0 {
            match pool {
                None => return Found::Hole { level, table },
                Some(p) => {
                    if p.is_empty() {
                        return Found::OutOfFrames;
                    }
                    let f = p.remove(0);
                    mem.write_slice(&[0u8; 4096], GuestAddress(f << 12))
                        .unwrap();
                    e = (f << 12) | LINK;
                    mem.write_obj(e, GuestAddress(addr)).unwrap();
                }
            }
        }
        if e & 0x80 != 0 && (level == Level::L2 || level == Level::L3) {
            let span = level.entry_span();
            return Found::Super {
                level,
                va: sign_extend(lin & !(span - 1)),
                addr,
                val: e,
            };
        }
        table = (e & 0x000f_ffff_ffff_f000) >> 12;
    }
    unreachable!()
}

/// The reference walk: returns records in VA order, applying `modify` to L1 entries.
fn naive(
    mem: &GuestMemoryMmap<()>,
    range: VaRange,
    mut pool: Option<&mut Vec<u64>>,
    modify: Option<&dyn Fn(u64, u64) -> u64>,
) -> (Vec<Rec>, Option<u64>) {
    let mut out: Vec<Rec> = Vec::new();
    let Some(last) = range.last() else {
        return (out, None);
    };
    let (mut lin, last) = (
        MODE.linear(range.start()) & !0xfff,
        MODE.linear(last) | 0xfff,
    );
    let mut hole_table = None;
    loop {
        let step_end;
        match descend(mem, lin, &mut pool) {
            Found::Leaf { addr } => {
                let va = sign_extend(lin);
                let mut val: u64 = mem.read_obj(GuestAddress(addr)).unwrap();
                if let Some(m) = modify {
                    val = m(va, val);
                    mem.write_obj(val, GuestAddress(addr)).unwrap();
                }
                out.push(Rec::Pte { va, addr, val });
                step_end = lin | 0xfff;
                hole_table = None;
            }
            Found::Super {
                level,
                va,
                addr,
                val,
            } => {
                if !matches!(out.last(), Some(Rec::Super { addr: a, .. }) if *a == addr) {
                    out.push(Rec::Super {
                        level,
                        va,
                        addr,
                        val,
                    });
                }
                step_end = lin | (level.entry_span() - 1);
                hole_table = None;
            }
            Found::Hole { level, table } => {
                step_end = (lin | (level.entry_span() - 1)).min(last);
                let start = sign_extend(lin);
                match out.last_mut() {
                    Some(Rec::Hole {
                        level: l, last: pl, ..
                    }) if *l == level
                        && hole_table == Some(table)
                        && pl.wrapping_add(1) == start =>
                    {
                        *pl = sign_extend(step_end)
                    }
                    _ => out.push(Rec::Hole {
                        level,
                        start,
                        last: sign_extend(step_end),
                    }),
                }
                hole_table = Some(table);
            }
            Found::OutOfFrames => return (out, Some(sign_extend(lin))),
        }
        if step_end >= last {
            return (out, None);
        }
        lin = step_end + 1;
    }
}

/// The batched walk, producing the same records.
fn batched(
    mem: &GuestMemoryMmap<()>,
    range: VaRange,
    pool: Option<&mut Vec<u64>>,
    modify: Option<&dyn Fn(u64, u64) -> u64>,
) -> (Vec<Rec>, Option<u64>) {
    let mut out = Vec::new();
    let walker = Walker::new(mem);
    let cb = |v: Visit<'_, '_>| {
        match v {
            Visit::Ptes(b) => {
                for i in 0..b.len() {
                    let mut val = b.get(i).raw();
                    if let Some(m) = modify {
                        val = m(b.va(i), val);
                        b.set(i, Pte(val));
                    }
                    out.push(Rec::Pte {
                        va: b.va(i),
                        addr: b.entry_addr(i),
                        val,
                    });
                }
            }
            Visit::Superpage(b) => out.push(Rec::Super {
                level: b.level(),
                va: b.va(0),
                addr: b.entry_addr(0),
                val: b.get(0).raw(),
            }),
            Visit::Hole(h) => out.push(Rec::Hole {
                level: h.level,
                start: h.start,
                last: h.last,
            }),
        }
        ControlFlow::<()>::Continue(())
    };
    let r = match pool {
        None => walker.apply_to_existing_page_range(ROOT, range, cb),
        Some(p) => {
            let mut alloc = |_: Level| {
                if p.is_empty() {
                    None
                } else {
                    Some(Mfn(p.remove(0)))
                }
            };
            walker.apply_to_page_range(ROOT, range, &mut alloc, cb)
        }
    };
    match r {
        Ok(_) => (out, None),
        Err(WalkError::OutOfFrames { va, .. }) => (out, Some(va)),
        Err(e) => panic!("unexpected walk error {e}"),
    }
}

fn range_strategy() -> impl Strategy<Value = VaRange> {
    let start = (l4_slot(), index(), index(), index(), 0u64..4096).prop_map(|(a, b, c, d, off)| {
        sign_extend(
            ((a as u64) << 39) | ((b as u64) << 30) | ((c as u64) << 21) | ((d as u64) << 12) | off,
        )
    });
    let len = prop_oneof![
        0u64..0x4000,
        0u64..(4u64 << 21),
        0u64..(3u64 << 30),
        (0usize..3).prop_map(|k| [1u64 << 21, 1 << 30, 1 << 39][k]),
    ];
    (start, len).prop_filter_map("range must stay in one canonical half", |(start, len)| {
        let r = VaRange::new(start, len).ok()?;
        let half_last = if start < MODE.upper_half_start() {
            MODE.lower_half_last()
        } else {
            u64::MAX
        };
        (r.last().unwrap_or(start) <= half_last).then_some(r)
    })
}

fn snapshot(mem: &GuestMemoryMmap<()>) -> Vec<u8> {
    let mut v = vec![0u8; (MEM_FRAMES << 12) as usize];
    mem.read_slice(&mut v, GuestAddress(0)).unwrap();
    v
}

fn flip(va: u64, old: u64) -> u64 {
    (old ^ 0xe00) ^ (va.rotate_left(17) & 0x0000_0fff_ffff_f000)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn visits_same_entries_superpages_and_holes(t in tree(), range in range_strategy()) {
        let (mem, _) = build(&t);
        let (want, _) = naive(&mem, range, None, None);
        let (got, _) = batched(&mem, range, None, None);
        prop_assert_eq!(got, want);
    }

    #[test]
    fn applies_same_modifications(t in tree(), range in range_strategy()) {
        let (mem_a, _) = build(&t);
        let (mem_b, _) = build(&t);
        let (want, _) = naive(&mem_a, range, None, Some(&flip));
        let (got, _) = batched(&mem_b, range, None, Some(&flip));
        prop_assert_eq!(got, want);
        prop_assert!(snapshot(&mem_a) == snapshot(&mem_b), "memory differs after modification");
    }

    #[test]
    fn allocating_walk_matches_reference_even_when_frames_run_out(
        t in tree(),
        range in range_strategy(),
        frames in prop_oneof![0usize..4, 0usize..64],
    ) {
        let (mem_a, free) = build(&t);
        let (mem_b, _) = build(&t);
        let mut pool_a: Vec<u64> = (free..free + frames as u64).collect();
        let mut pool_b = pool_a.clone();
        let (want, stop_a) = naive(&mem_a, range, Some(&mut pool_a), Some(&flip));
        let (got, stop_b) = batched(&mem_b, range, Some(&mut pool_b), Some(&flip));
        prop_assert_eq!(stop_b, stop_a);
        prop_assert_eq!(pool_b, pool_a);
        prop_assert_eq!(got, want);
        prop_assert!(snapshot(&mem_a) == snapshot(&mem_b), "memory differs after allocating walk");
    }

    #[test]
    fn translate_matches_reference(t in tree(), range in range_strategy()) {
        let (mem, _) = build(&t);
        let walker = Walker::new(&mem);
        let va = range.start();
        let got = walker.translate(ROOT, va).unwrap();
        let lin = MODE.linear(va);
        let want = match descend(&mem, lin, &mut None) {
            Found::Leaf { addr } => {
                let e: u64 = mem.read_obj(GuestAddress(addr)).unwrap();
                (e & 1 != 0).then_some((e & 0x000f_ffff_ffff_f000) | (va & 0xfff))
            }
            Found::Super { level, val, .. } => {
                let span = level.entry_span();
                Some((val & 0x000f_ffff_ffff_f000 & !(span - 1)) | (va & (span - 1)))
            }
            _ => None,
        };
        prop_assert_eq!(got.map(|t| t.paddr), want);
    }
}
