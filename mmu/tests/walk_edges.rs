//! Edge cases of the batched walker: boundaries at every level, the canonical hole, the
//! top of the address space, empty ranges, allocator exhaustion, bad frames, stopping.

use std::ops::ControlFlow;

use pvmmu::{
    EntryVisit, Level, Mfn, PagingMode, Pte, PteFlags, RangeError, TableError, VaRange, Visit,
    WalkError, Walker,
};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const ROOT: Mfn = Mfn(0);

fn memory(frames: u64) -> GuestMemoryMmap<()> {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), (frames << 12) as usize)]).unwrap()
}

/// Hands out frames `from`, `from + 1`, ... up to `limit` (exclusive).
fn pool_from(from: u64, limit: u64) -> impl FnMut(Level) -> Option<Mfn> {
    let mut next = from;
    move |_| {
        (next < limit).then(|| {
            next += 1;
            Mfn(next - 1)
        })
    }
}

fn pool(limit: u64) -> impl FnMut(Level) -> Option<Mfn> {
    pool_from(1, limit)
}

/// (table, first index, len, first va) of every batch of an allocating walk over `range`.
fn batches(
    mem: &GuestMemoryMmap<()>,
    mode: PagingMode,
    range: VaRange,
    alloc: &mut impl FnMut(Level) -> Option<Mfn>,
) -> Vec<(Mfn, usize, usize, u64)> {
    let mut out = vec![];
    assert!(
        Walker::new(mem)
            .with_mode(mode)
            .apply_to_page_range(ROOT, range, alloc, |v| {
                if let Visit::Ptes(b) = v {
                    out.push((b.table(), b.first_index(), b.len(), b.va(0)));
                    for i in 0..b.len() {
                        b.set(i, Pte(b.va(i) & 0x000f_ffff_ffff_f000 | 1));
                    }
                }
                ControlFlow::<()>::Continue(())
            })
            .unwrap()
            .is_continue()
    );
    out
}

#[test]
fn range_crossing_each_level_boundary_splits_batches_there() {
    let mem = memory(64);
    let mut alloc = pool(1 << 20);
    // The end of an L1, L2 and L3 table is a boundary of an L2, L3 and L4 entry.
    for level in [Level::L1, Level::L2, Level::L3] {
        // Two pages on either side of a boundary of a `level` table.
        let boundary = level.table_span() as u64;
        let range = VaRange::new(boundary - 0x2000, 0x4000).unwrap();
        let b = batches(&mem, PagingMode::FourLevel, range, &mut alloc);
        assert_eq!(b.len(), 2, "boundary of {level}: {b:?}");
        assert_eq!((b[0].1, b[0].2, b[0].3), (510, 2, boundary - 0x2000));
        assert_eq!((b[1].1, b[1].2, b[1].3), (0, 2, boundary));
        assert_ne!(b[0].0, b[1].0, "different L1 tables");
    }
    // A whole L1 table's worth, aligned: one batch of 512.
    let b = batches(
        &mem,
        PagingMode::FourLevel,
        VaRange::new(0x4000_0000, 0x20_0000).unwrap(),
        &mut alloc,
    );
    assert_eq!(
        b.iter().map(|x| (x.1, x.2)).collect::<Vec<_>>(),
        vec![(0, 512)]
    );
}

#[test]
fn unaligned_range_covers_every_touched_page() {
    let mem = memory(16);
    let mut alloc = pool(1 << 20);
    let b = batches(
        &mem,
        PagingMode::FourLevel,
        VaRange::new(0x1fff, 2).unwrap(),
        &mut alloc,
    );
    assert_eq!(
        b.iter().map(|x| (x.1, x.2, x.3)).collect::<Vec<_>>(),
        vec![(1, 2, 0x1000)]
    );
}

#[test]
fn empty_range_visits_nothing() {
    let mem = memory(4);
    let mut calls = 0;
    let r = Walker::new(&mem).apply_to_page_range(
        ROOT,
        VaRange::new(0x1000, 0).unwrap(),
        &mut pool(4),
        |_| {
            calls += 1;
            ControlFlow::<()>::Continue(())
        },
    );
    assert_eq!(r, Ok(ControlFlow::Continue(())));
    assert_eq!(calls, 0);
}

#[test]
fn canonical_hole_is_an_error_and_nothing_is_touched() {
    let mem = memory(8);
    let bad = [
        VaRange::new(0x7fff_ffff_f000, 0x2000).unwrap(),
        VaRange::new(0x8000_0000_0000, 0x1000).unwrap(),
        VaRange::try_from(0..0xffff_8000_0000_1000).unwrap(),
    ];
    for range in bad {
        let r = Walker::new(&mem).apply_to_page_range(ROOT, range, &mut pool(8), |_| {
            ControlFlow::<()>::Continue(())
        });
        assert!(
            matches!(r, Err(WalkError::Range(RangeError::NonCanonical { .. }))),
            "{range:?}: {r:?}"
        );
    }
    let root: u64 = mem.read_obj(GuestAddress(0)).unwrap();
    assert_eq!(root, 0, "no table was linked");
}

#[test]
fn top_of_the_address_space_is_reachable() {
    let mem = memory(8);
    let mut alloc = pool(1 << 20);
    let b = batches(
        &mem,
        PagingMode::FourLevel,
        VaRange::to_top(0xffff_ffff_ffff_e000),
        &mut alloc,
    );
    assert_eq!(b.len(), 1);
    assert_eq!((b[0].1, b[0].2, b[0].3), (510, 2, 0xffff_ffff_ffff_e000));
    let w = Walker::new(&mem);
    let t = w.translate(ROOT, 0xffff_ffff_ffff_f123).unwrap().unwrap();
    assert_eq!(t.paddr, 0x000f_ffff_ffff_f123 & 0x000f_ffff_ffff_ffff);
    // The L4 entry used is slot 511.
    let l4e: u64 = mem.read_obj(GuestAddress(511 * 8)).unwrap();
    assert!(l4e & 1 == 1);
}

#[test]
fn five_level_paging_walks_from_an_l5_root() {
    let mem = memory(16);
    let mut alloc = pool(1 << 20);
    let start = 0xff00_0000_0000_0000u64; // first upper-half VA with LA57
    let b = batches(
        &mem,
        PagingMode::FiveLevel,
        VaRange::new(start, 0x1000).unwrap(),
        &mut alloc,
    );
    assert_eq!(
        b,
        vec![(Mfn(4), 0, 1, start)],
        "L4, L3, L2 and L1 tables are frames 1..=4"
    );
    let l5e: u64 = mem.read_obj(GuestAddress(256 * 8)).unwrap();
    assert_eq!(l5e & !0xfff, 0x1000);
    let t = Walker::new(&mem)
        .with_mode(PagingMode::FiveLevel)
        .translate(ROOT, start)
        .unwrap();
    assert!(t.is_some());
    // The same memory read as four-level paging does not map it.
    let r = Walker::new(&mem).translate(ROOT, start);
    assert!(matches!(r, Err(WalkError::Range(_))));
}

#[test]
fn allocator_exhaustion_midway_reports_progress_and_stays_consistent() {
    let mem = memory(16);
    // Junk in the free frames: linked tables must be zeroed first.
    for f in 1..16u64 {
        mem.write_slice(&[0xffu8; 4096], GuestAddress(f << 12))
            .unwrap();
    }
    mem.write_slice(&[0u8; 4096], GuestAddress(0)).unwrap();
    // Range spans two L2 entries (two L1 tables); frames for L3, L2, one L1 only.
    let range = VaRange::new(0x1f_f000, 0x2000).unwrap();
    let mut visited = vec![];
    let r = Walker::new(&mem).apply_to_page_range(ROOT, range, &mut pool(4), |v| {
        if let Visit::Ptes(b) = v {
            for i in 0..b.len() {
                visited.push(b.va(i));
                b.set(i, Pte::new(Mfn(0x77), PteFlags::PRESENT));
            }
        }
        ControlFlow::<()>::Continue(())
    });
    assert_eq!(
        r,
        Err(WalkError::OutOfFrames {
            level: Level::L1,
            va: 0x20_0000
        })
    );
    assert_eq!(visited, vec![0x1f_f000]);
    let w = Walker::new(&mem);
    assert_eq!(
        w.translate(ROOT, 0x1f_f000).unwrap().map(|t| t.paddr),
        Some(0x77000)
    );
    assert_eq!(w.translate(ROOT, 0x20_0000).unwrap(), None);
    // Every other entry of the linked tables is zero, not junk.
    let mut present = 0;
    assert!(
        w.for_each_pte(ROOT, VaRange::new(0, 1 << 30).unwrap(), |e| {
            if let EntryVisit::Pte(p) = e {
                present += usize::from(p.get().raw() != 0);
            }
            ControlFlow::<()>::Continue(())
        })
        .unwrap()
        .is_continue()
    );
    assert_eq!(present, 1);
}

#[test]
fn root_and_tables_outside_memory_are_errors() {
    let mem = memory(4);
    let range = VaRange::new(0, 0x1000).unwrap();
    let r = Walker::new(&mem)
        .apply_to_existing_page_range(Mfn(4), range, |_| ControlFlow::<()>::Continue(()));
    assert_eq!(
        r,
        Err(WalkError::Table {
            level: Level::L4,
            mfn: Mfn(4),
            va: 0,
            source: TableError::OutsideMemory(Mfn(4))
        })
    );
    // An L4 entry naming a frame past the end of memory.
    mem.write_obj(0x9_0000_0027u64, GuestAddress(0)).unwrap();
    let r = Walker::new(&mem)
        .apply_to_existing_page_range(ROOT, range, |_| ControlFlow::<()>::Continue(()));
    assert!(
        matches!(
            r,
            Err(WalkError::Table {
                level: Level::L3,
                mfn: Mfn(0x90_0000),
                ..
            })
        ),
        "{r:?}"
    );
    // An allocator handing out a frame outside memory.
    mem.write_obj(0u64, GuestAddress(0)).unwrap();
    let mut bad = |_: Level| Some(Mfn(1 << 40));
    let r = Walker::new(&mem)
        .apply_to_page_range(ROOT, range, &mut bad, |_| ControlFlow::<()>::Continue(()));
    assert!(
        matches!(
            r,
            Err(WalkError::Table {
                level: Level::L3,
                ..
            })
        ),
        "{r:?}"
    );
    assert_eq!(
        mem.read_obj::<u64>(GuestAddress(0)).unwrap(),
        0,
        "nothing linked"
    );
}

#[test]
fn holes_and_superpages_are_reported_not_skipped() {
    let mem = memory(8);
    // L4[0] -> L3 at frame 1; L3[0] -> L2 at frame 2; L3[1] = 1 GiB superpage;
    // L2[1] = 2 MiB superpage; the rest not present.
    mem.write_obj(0x1027u64, GuestAddress(0)).unwrap();
    mem.write_obj(0x2027u64, GuestAddress(0x1000)).unwrap();
    mem.write_obj(0x4000_00a7u64, GuestAddress(0x1008)).unwrap();
    mem.write_obj(0x60_00a7u64, GuestAddress(0x2008)).unwrap();
    let mut seen = vec![];
    assert!(
        Walker::new(&mem)
            .apply_to_existing_page_range(ROOT, VaRange::new(0, 3 << 30).unwrap(), |v| {
                seen.push(match v {
                    Visit::Ptes(b) => format!("ptes {:#x}+{}", b.va(0), b.len()),
                    Visit::Superpage(b) => format!("super {} {:#x}", b.level(), b.va(0)),
                    Visit::Hole(h) => format!("hole {} {:#x}-{:#x}", h.level, h.start, h.last),
                });
                ControlFlow::<()>::Continue(())
            })
            .unwrap()
            .is_continue()
    );
    assert_eq!(
        seen,
        vec![
            "hole L2 0x0-0x1fffff",
            "super L2 0x200000",
            "hole L2 0x400000-0x3fffffff",
            "super L3 0x40000000",
            "hole L3 0x80000000-0xbfffffff",
        ]
    );
    // The allocating walk reports the superpages too, and does not allocate under them.
    let mut supers = 0;
    let mut alloc = pool_from(3, 8);
    assert!(
        Walker::new(&mem)
            .apply_to_page_range(
                ROOT,
                VaRange::new(0x20_0000, 0x40_0000).unwrap(),
                &mut alloc,
                |v| {
                    supers += usize::from(matches!(v, Visit::Superpage(_)));
                    ControlFlow::<()>::Continue(())
                },
            )
            .unwrap()
            .is_continue()
    );
    assert_eq!(supers, 1);
    assert_eq!(
        alloc(Level::L1),
        Some(Mfn(4)),
        "one L1 table (frame 3) allocated for 0x400000.."
    );
}

#[test]
fn callback_can_stop_the_walk() {
    let mem = memory(16);
    let mut calls = 0;
    let r = Walker::new(&mem).apply_to_page_range(
        ROOT,
        VaRange::new(0, 8 << 20).unwrap(),
        &mut pool(16),
        |v| {
            calls += 1;
            match v {
                Visit::Ptes(b) if b.va(0) == 0x20_0000 => ControlFlow::Break(b.va(0)),
                _ => ControlFlow::Continue(()),
            }
        },
    );
    assert_eq!(r, Ok(ControlFlow::Break(0x20_0000)));
    assert_eq!(calls, 2);
}

#[test]
fn per_entry_adapter_sees_every_entry_once() {
    let mem = memory(16);
    let mut alloc = pool(1 << 20);
    batches(
        &mem,
        PagingMode::FourLevel,
        VaRange::new(0x1f_e000, 0x5000).unwrap(),
        &mut alloc,
    );
    let mut vas = vec![];
    assert!(
        Walker::new(&mem)
            .for_each_pte(ROOT, VaRange::new(0x1f_e000, 0x5000).unwrap(), |e| {
                if let EntryVisit::Pte(mut p) = e {
                    vas.push(p.va());
                    let old = p.get();
                    p.set(old.set(PteFlags::RW));
                }
                ControlFlow::<()>::Continue(())
            })
            .unwrap()
            .is_continue()
    );
    assert_eq!(
        vas,
        vec![0x1f_e000, 0x1f_f000, 0x20_0000, 0x20_1000, 0x20_2000]
    );
    let t = Walker::new(&mem)
        .translate(ROOT, 0x20_1000)
        .unwrap()
        .unwrap();
    assert!(t.pte.has(PteFlags::RW));
}

#[test]
fn dump_merges_ranges_like_ptdump() {
    let mem = memory(16);
    let mut alloc = pool(1 << 20);
    batches(
        &mem,
        PagingMode::FourLevel,
        VaRange::new(0x40_0000, 0x4000).unwrap(),
        &mut alloc,
    );
    batches(
        &mem,
        PagingMode::FourLevel,
        VaRange::new(0xffff_8800_0000_0000, 0x2000).unwrap(),
        &mut alloc,
    );
    // Make one page read-only: it splits the first range.
    assert!(
        Walker::new(&mem)
            .for_each_pte(ROOT, VaRange::page(0x40_2000), |e| {
                if let EntryVisit::Pte(mut p) = e {
                    let old = p.get();
                    p.set(old.set(PteFlags::RW | PteFlags::USER | PteFlags::NX));
                }
                ControlFlow::<()>::Continue(())
            })
            .unwrap()
            .is_continue()
    );
    let lines: Vec<String> = Walker::new(&mem)
        .dump(ROOT)
        .unwrap()
        .iter()
        .map(|r| r.to_string())
        .collect();
    assert_eq!(
        lines,
        vec![
            "0x0000000000400000-0x0000000000402000     8K  ro                 x   pte",
            "0x0000000000402000-0x0000000000403000     4K  RW USR             NX  pte",
            "0x0000000000403000-0x0000000000404000     4K  ro                 x   pte",
            "0xffff880000000000-0xffff880000002000     8K  ro                 x   pte",
        ]
    );
}
