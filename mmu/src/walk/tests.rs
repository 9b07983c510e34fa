//! Unit tests of the walker: small walks over a small `GuestMemoryMmap`, cheap enough
//! for Miri (scripts/miri.sh); they reach the table pages only through the atomics view.

use super::*;
use crate::translate::Translation;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const FRAMES: u64 = 16;
const ROOT: Mfn = Mfn(0);

fn mem() -> GuestMemoryMmap<()> {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), (FRAMES * 4096) as usize)]).unwrap()
}

/// Hands out frames 1, 2, ... up to the end of `mem()`.
fn frames() -> impl FnMut(Level) -> Option<Mfn> {
    let mut next = 1;
    move |_| {
        (next < FRAMES).then(|| {
            next += 1;
            Mfn(next - 1)
        })
    }
}

fn map(mem: &GuestMemoryMmap<()>, alloc: &mut impl FrameAllocator, start: u64, pages: u64) {
    let range = VaRange::new(start, pages * 4096).unwrap();
    let flow = Walker::new(mem).apply_to_page_range(ROOT, range, alloc, |v| {
        if let Visit::Ptes(b) = v {
            for i in 0..b.len() {
                let frame = Mfn(0x100 + (b.va(i) >> 12));
                b.set(i, Pte::new(frame, PteFlags::PRESENT | PteFlags::RW));
            }
        }
        ControlFlow::<()>::Continue(())
    });
    assert_eq!(flow, Ok(ControlFlow::Continue(())));
}

#[test]
fn a_range_across_two_l1_tables_is_two_batches() {
    let m = mem();
    let mut alloc = frames();
    let range = VaRange::new(0x1f_e000, 0x4000).unwrap();
    let mut seen = vec![];
    let _ = Walker::new(&m)
        .apply_to_page_range(ROOT, range, &mut alloc, |v| {
            if let Visit::Ptes(b) = v {
                seen.push((b.table(), b.first_index(), b.len(), b.va(0)));
                for i in 0..b.len() {
                    b.set(i, Pte::new(Mfn(0x100 + i as u64), PteFlags::PRESENT));
                }
            }
            ControlFlow::<()>::Continue(())
        })
        .unwrap();
    // L3 is frame 1, L2 frame 2, the two L1 tables frames 3 and 4.
    assert_eq!(
        seen,
        [(Mfn(3), 510, 2, 0x1f_e000), (Mfn(4), 0, 2, 0x20_0000)]
    );
    let link = PteFlags::PRESENT | PteFlags::RW | PteFlags::USER | PteFlags::ACCESSED;
    assert_eq!(
        m.read_obj::<u64>(GuestAddress(0)).unwrap(),
        Pte::new(Mfn(1), link).raw()
    );
    assert_eq!(
        m.read_obj::<u64>(GuestAddress(0x4008)).unwrap(),
        Pte::new(Mfn(0x101), PteFlags::PRESENT).raw()
    );
    let t: Translation = Walker::new(&m).translate(ROOT, 0x20_1abc).unwrap().unwrap();
    assert_eq!((t.paddr, t.level), (0x10_1abc, Level::L1));
}

#[test]
fn existing_walk_reports_entries_superpages_and_holes() {
    let m = mem();
    let mut alloc = frames();
    // Four pages in the first L1 table (frame 3), one in the second (frame 4).
    map(&m, &mut alloc, 0x1000, 4);
    map(&m, &mut alloc, 0x20_0000, 1);
    // A 2 MiB superpage in entry 2 of the L2 table (frame 2); entry 3 stays empty.
    let big = Pte::new(Mfn(0x400), PteFlags::PRESENT | PteFlags::PSE);
    visit_table_entry(&m, Mfn(2), 2, big);

    let (mut ptes, mut present, mut supers, mut holes) = (0, 0, vec![], vec![]);
    let _ = Walker::new(&m)
        .for_each_pte(ROOT, VaRange::new(0, 0x80_0000).unwrap(), |v| {
            match v {
                EntryVisit::Pte(slot) => {
                    ptes += 1;
                    present += usize::from(slot.get().is_present());
                }
                EntryVisit::Superpage(slot) => supers.push((slot.va(), slot.level())),
                EntryVisit::Hole(h) => holes.push(h),
            }
            ControlFlow::<()>::Continue(())
        })
        .unwrap();
    assert_eq!((ptes, present), (1024, 5));
    assert_eq!(supers, [(0x40_0000, Level::L2)]);
    assert_eq!(
        holes,
        [Hole {
            level: Level::L2,
            start: 0x60_0000,
            last: 0x7f_ffff
        }]
    );
    let t = Walker::new(&m).translate(ROOT, 0x41_2345).unwrap().unwrap();
    assert_eq!((t.paddr, t.level), (0x41_2345, Level::L2));
}

fn visit_table_entry(m: &GuestMemoryMmap<()>, table: Mfn, index: usize, pte: Pte) {
    crate::table::visit_table(m, table, Level::L2, |b| b.set(index, pte)).unwrap();
}

#[test]
fn missing_tables_and_frames_are_errors() {
    let m = mem();
    let range = VaRange::new(0x1000, 0x1000).unwrap();
    let mut none = |_: Level| None;
    let r = Walker::new(&m)
        .apply_to_page_range(ROOT, range, &mut none, |_| ControlFlow::<()>::Continue(()));
    assert_eq!(
        r,
        Err(WalkError::OutOfFrames {
            level: Level::L3,
            va: 0x1000
        })
    );
    let r = Walker::new(&m)
        .apply_to_existing_page_range(Mfn(FRAMES), range, |_| ControlFlow::<()>::Continue(()));
    assert!(matches!(
        r,
        Err(WalkError::Table {
            level: Level::L4,
            source: TableError::OutsideMemory(_),
            ..
        })
    ));
}

#[test]
fn concurrent_walks_over_shared_tables() {
    let m = mem();
    let mut alloc = frames();
    map(&m, &mut alloc, 0, 8);
    std::thread::scope(|s| {
        // One thread rewrites the first four entries of the shared L1 table and links
        // a new L1 table under the shared L2 table...
        s.spawn(|| {
            let walker = Walker::new(&m);
            let _ =
                walker.apply_to_existing_page_range(ROOT, VaRange::new(0, 0x4000).unwrap(), |v| {
                    if let Visit::Ptes(b) = v {
                        b.rewrite(|_, e| e.set(PteFlags::USER));
                    }
                    ControlFlow::<()>::Continue(())
                });
            map(&m, &mut alloc, 0x20_0000, 2);
        });
        // ...while another reads the other four and walks over the new table's slot,
        // which it sees either as a hole or as the published, zeroed-then-filled table.
        s.spawn(|| {
            let mut present = 0;
            let _ =
                Walker::new(&m).for_each_pte(ROOT, VaRange::new(0x4000, 0x20_0000).unwrap(), |v| {
                    if let EntryVisit::Pte(slot) = v {
                        present += usize::from(slot.get().is_present());
                    }
                    ControlFlow::<()>::Continue(())
                });
            assert!((4..=6).contains(&present), "{present}");
        });
    });
    let t = Walker::new(&m).translate(ROOT, 0x3000).unwrap().unwrap();
    assert!(t.user());
    let t = Walker::new(&m).translate(ROOT, 0x20_1000).unwrap().unwrap();
    assert_eq!(t.paddr, 0x20_1000 + (0x100 << 12));
}
