//! The `reservation_ops` harness: frames leaving and joining live domains
//! (`decrease_reservation`, `increase_reservation`, `populate_physmap`, `exchange`,
//! `max_pages`) mixed with what keeps frames referenced and typed (L1 tables pinned and
//! unpinned, entries mapping frames read-only and writable, teardown).
//!
//! The oracle is a model of Xen's memory-op rules written from them, not from the
//! library: from each frame's state before an operation (owner, general count,
//! allocation reference, shared, pinned) it predicts every reservation operation's
//! result (extents done, the error that stopped it) and every frame's state after
//! (given back: free when only the allocation reference held it, still the domain's
//! and counted otherwise; exchanged: all or nothing per chunk; new extents: naturally
//! aligned blocks that were free, as many as the pool and `max_pages` allow). The
//! library's own choice of which free block to hand out is taken as it comes (Xen's
//! allocator has its own); everything else is checked. After every operation the
//! audit must be clean and `tot_pages` must equal the model's count; after teardown
//! every frame must be free.

use std::collections::{BTreeMap, BTreeSet};

use arbitrary::{Arbitrary, Unstructured};
use pvmmu::reservation::ReservationOutcome;
use pvmmu::{Caller, DomainConfig, Errno, Machine, MachineConfig, Mfn, NoFlush, PageInfo};
use pvmmu_abi::mmu::{MMUEXT_PIN_L1_TABLE, MMUEXT_UNPIN_TABLE};
use pvmmu_abi::{DOMID_INVALID, DOMID_SELF, MmuUpdate, MmuextOp};
use vm_memory::{GuestAddress, GuestMemoryMmap};

type M = Machine<GuestMemoryMmap<()>, NoFlush>;

/// Machine frames (1 MiB).
const FRAMES: u64 = 256;
/// Each domain's frames at the start; the rest (and frame 0..0x10) is the free pool.
const DOMS: [(u16, u64, u64); 2] = [(1, 0x40, 0x80), (2, 0x80, 0x90)];
/// Largest order the harness asks for besides the refused ones (bigger blocks would
/// rarely be free in a 256-frame machine).
const MAX_ORDER: u8 = 3;

/// A frame, mostly among the interesting ones.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum FrameSel {
    /// One of the acting domain's frames now.
    Own(u8),
    /// Any frame of the machine.
    Any(u8),
    /// Beyond the machine (not RAM).
    Beyond(u16),
}

/// An extent order: small mostly, sometimes one Xen refuses.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub struct Order(u8);

impl Order {
    fn get(self) -> u32 {
        if self.0 >= 250 {
            10 + u32::from(self.0 - 250)
        } else {
            u32::from(self.0 % (MAX_ORDER + 1))
        }
    }
}

/// One operation.
#[derive(Arbitrary, Debug, Clone)]
pub enum Op {
    /// `decrease_reservation`.
    Decrease(bool, Vec<FrameSel>, Order),
    /// `increase_reservation` of `n` extents.
    Increase(bool, u8, Order),
    /// `populate_physmap` at these pseudo-physical frames.
    Populate(bool, Vec<u16>, Order),
    /// `exchange`: input extents, their order, the output order.
    Exchange(bool, Vec<FrameSel>, Order, Order),
    /// `max_pages`.
    MaxPages(bool, Option<u8>),
    /// `MMUEXT_PIN_L1_TABLE` of a frame (after zeroing it, so that it validates).
    Pin(bool, FrameSel),
    /// `MMUEXT_UNPIN_TABLE`.
    Unpin(bool, FrameSel),
    /// An entry of a pinned table of the domain mapping a frame (read-only or
    /// writable) or nothing.
    Map(bool, u8, u16, Option<(FrameSel, bool)>),
    /// Domain teardown.
    Teardown(bool),
}

/// The frame state the rules read and predict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Frame {
    owner: u16,
    count: u64,
    allocated: bool,
    shared: bool,
    pinned: bool,
    type_count: u64,
}

impl From<PageInfo> for Frame {
    fn from(p: PageInfo) -> Frame {
        Frame {
            owner: p.owner,
            count: p.count,
            allocated: p.allocated,
            shared: p.shared,
            pinned: p.pinned,
            type_count: p.type_count,
        }
    }
}

const FREE: Frame = Frame {
    owner: DOMID_INVALID,
    count: 0,
    allocated: false,
    shared: false,
    pinned: false,
    type_count: 0,
};

/// The machine and what the harness knows.
struct World {
    m: M,
    alive: [bool; 2],
    /// Each domain's `max_pages`.
    max: [Option<u64>; 2],
}

fn dom_id(second: bool) -> u16 {
    if second { 2 } else { 1 }
}

fn frames_of(m: &M) -> BTreeMap<u64, Frame> {
    m.frames().iter().map(|(f, p)| (f.0, p.into())).collect()
}

/// Xen's `tot_pages` from the frame states: the domain's frames with a reference, not
/// the hypervisor's shared ones.
fn tot(frames: &BTreeMap<u64, Frame>, d: u16) -> u64 {
    frames
        .values()
        .filter(|f| f.owner == d && f.count > 0 && !f.shared)
        .count() as u64
}

/// Whether frame `f` is free in `frames`.
fn is_free(frames: &BTreeMap<u64, Frame>, f: u64) -> bool {
    frames
        .get(&f)
        .is_some_and(|p| p.owner == DOMID_INVALID && p.count == 0)
}

/// How many disjoint naturally aligned free blocks of `size` frames there are (aligned
/// blocks of one size never overlap partly, so any choice of them leaves the same
/// number).
fn free_blocks(frames: &BTreeMap<u64, Frame>, size: u64) -> u64 {
    (0..FRAMES / size)
        .filter(|b| (b * size..(b + 1) * size).all(|f| is_free(frames, f)))
        .count() as u64
}

impl World {
    fn new() -> World {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), (FRAMES << 12) as usize)])
            .expect("memory");
        let mut m = Machine::new(mem, MachineConfig::default()).expect("machine");
        for (id, first, end) in DOMS {
            m.create_domain(DomainConfig::new(id)).expect("domain");
            m.assign_frames(id, (first..end).map(Mfn)).expect("frames");
        }
        World {
            m,
            alive: [true, true],
            max: [None, None],
        }
    }

    fn own_frames(&self, d: u16) -> Vec<u64> {
        self.m
            .frames()
            .iter()
            .filter(|(_, p)| p.owner == d && p.count > 0)
            .map(|(f, _)| f.0)
            .collect()
    }

    fn frame(&self, d: u16, sel: FrameSel) -> u64 {
        match sel {
            FrameSel::Own(i) => {
                let own = self.own_frames(d);
                own.get(usize::from(i) % own.len().max(1))
                    .copied()
                    .unwrap_or(0)
            }
            FrameSel::Any(i) => u64::from(i) % FRAMES,
            FrameSel::Beyond(i) => FRAMES + u64::from(i),
        }
    }

    fn tables(&self, d: u16) -> Vec<u64> {
        self.m
            .frames()
            .iter()
            .filter(|(_, p)| p.owner == d && p.pinned)
            .map(|(f, _)| f.0)
            .collect()
    }

    /// Runs `op`, checks it, returns a description of the first oracle that failed.
    fn apply(&mut self, op: &Op) -> Result<(), String> {
        let before = frames_of(&self.m);
        match op {
            Op::Decrease(s, sels, order) if !self.skip(*s) => {
                let d = dom_id(*s);
                let gmfns: Vec<u64> = sels.iter().take(16).map(|x| self.frame(d, *x)).collect();
                let order = order.get();
                let got = self
                    .m
                    .decrease_reservation(d, &gmfns, order)
                    .map_err(|e| format!("decrease: {e}"))?;
                let (want, after) = predict_decrease(&before, d, &gmfns, order);
                check_outcome("decrease", &got, want)?;
                self.check_frames("decrease", &after)?;
            }
            Op::Increase(s, n, order) if !self.skip(*s) => {
                let d = dom_id(*s);
                let (n, order) = (usize::from(n % 16), order.get());
                let got = self
                    .m
                    .increase_reservation(d, n, order)
                    .map_err(|e| format!("increase: {e}"))?;
                self.check_allocation(&before, d, n, order, &got, None)?;
            }
            Op::Populate(s, pfns, order) if !self.skip(*s) => {
                let d = dom_id(*s);
                let order = order.get();
                let gpfns: Vec<u64> = pfns.iter().take(16).map(|&p| u64::from(p)).collect();
                let got = self
                    .m
                    .populate_physmap(d, &gpfns, order)
                    .map_err(|e| format!("populate: {e}"))?;
                self.check_allocation(&before, d, gpfns.len(), order, &got, Some(&gpfns))?;
            }
            Op::Exchange(s, sels, in_order, out_order) if !self.skip(*s) => {
                let d = dom_id(*s);
                let (io, oo) = (in_order.get(), out_order.get());
                let inputs: Vec<u64> = sels.iter().take(8).map(|x| self.frame(d, *x)).collect();
                if io > 9 || oo > 9 {
                    let got = self
                        .m
                        .exchange(d, &inputs, io, &[], oo)
                        .map_err(|e| format!("exchange: {e}"))?;
                    check_outcome("exchange", &got, (0, Some(Errno::EPERM)))?;
                    self.check_frames("exchange", &before)?;
                } else {
                    // The caller's size check: as many output frames as input frames.
                    let frames_in = (inputs.len() as u64) << io;
                    let n_out = frames_in >> oo;
                    if n_out << oo != frames_in {
                        return Ok(());
                    }
                    let outs: Vec<u64> = (0..n_out).map(|i| 0x1000 + (i << oo)).collect();
                    let got = self
                        .m
                        .exchange(d, &inputs, io, &outs, oo)
                        .map_err(|e| format!("exchange: {e}"))?;
                    self.check_exchange(&before, d, &inputs, io, &outs, oo, &got)?;
                }
            }
            Op::MaxPages(s, max) if !self.skip(*s) => {
                let d = dom_id(*s);
                let max = max.map(|m| u64::from(m) / 2);
                self.m
                    .set_max_pages(d, max)
                    .map_err(|e| format!("max_pages: {e}"))?;
                self.max[usize::from(d - 1)] = max;
            }
            Op::Pin(s, sel) if !self.skip(*s) => {
                let d = dom_id(*s);
                let f = self.frame(d, *sel);
                // Zeroed first only if it is the domain's and no page table (else the
                // pin is refused as it is).
                if self.m.frames().get(Mfn(f)).is_some_and(|p| {
                    p.owner == d && p.count > 0 && !p.ty.is_page_table() && p.type_count == 0
                }) {
                    let zero = [0u8; 4096];
                    let _ = vm_memory::Bytes::write_slice(
                        self.m.memory(),
                        &zero,
                        GuestAddress(f << 12),
                    );
                }
                self.ext(d, MMUEXT_PIN_L1_TABLE, f);
            }
            Op::Unpin(s, sel) if !self.skip(*s) => {
                let d = dom_id(*s);
                let f = self.frame(d, *sel);
                self.ext(d, MMUEXT_UNPIN_TABLE, f);
            }
            Op::Map(s, t, slot, target) if !self.skip(*s) => {
                let d = dom_id(*s);
                let tables = self.tables(d);
                let Some(&table) = tables.get(usize::from(*t) % tables.len().max(1)) else {
                    return Ok(());
                };
                let val = target.map_or(0, |(sel, rw)| {
                    (self.frame(d, sel) << 12) | 0x21 | if rw { 2 } else { 0 }
                });
                let req = MmuUpdate {
                    ptr: (table << 12) + u64::from(slot % 512) * 8,
                    val,
                };
                let _ = self
                    .m
                    .mmu_update(Caller::new(d, 0), &[req], DOMID_SELF.into())
                    .map_err(|e| format!("mmu_update: {e}"))?;
            }
            Op::Teardown(s) if !self.skip(*s) => {
                let d = dom_id(*s);
                self.m
                    .destroy_domain(d)
                    .map_err(|e| format!("teardown: {e}"))?;
                self.alive[usize::from(d - 1)] = false;
                if self.m.frames().iter().any(|(_, p)| p.owner == d) {
                    return Err(format!("domain {d}'s frames outlive it"));
                }
            }
            _ => {}
        }
        self.m
            .audit()
            .map_err(|e| format!("audit after {op:?}: {e}"))?;
        let now = frames_of(&self.m);
        for (i, alive) in self.alive.iter().enumerate() {
            let d = i as u16 + 1;
            if *alive && self.m.tot_pages(d) != tot(&now, d) {
                return Err(format!("tot_pages({d}) is not the count of its frames"));
            }
        }
        Ok(())
    }

    /// A dead domain's operations are not issued.
    fn skip(&self, second: bool) -> bool {
        !self.alive[usize::from(dom_id(second) - 1)]
    }

    fn ext(&mut self, d: u16, cmd: u32, f: u64) {
        let _ = self.m.mmuext_op(
            Caller::new(d, 0),
            &[MmuextOp::new(cmd, f, 0)],
            DOMID_SELF.into(),
        );
    }

    fn check_frames(&self, what: &str, want: &BTreeMap<u64, Frame>) -> Result<(), String> {
        let now = frames_of(&self.m);
        for (f, w) in want {
            let g = now.get(f).copied().unwrap_or(FREE);
            // A frame freed keeps nothing of its past but its (unowned) emptiness.
            let same = if w.owner == DOMID_INVALID && w.count == 0 {
                g.owner == DOMID_INVALID && g.count == 0 && !g.allocated
            } else {
                g == *w
            };
            if !same {
                return Err(format!("{what}: frame {f:#x} is {g:?}, want {w:?}"));
            }
        }
        Ok(())
    }

    /// Increase and populate: as many naturally aligned free blocks as the pool and
    /// `max_pages` allow, each now the domain's with its allocation reference only,
    /// recorded in the M2P (populate); ENOMEM exactly when fewer than asked.
    fn check_allocation(
        &self,
        before: &BTreeMap<u64, Frame>,
        d: u16,
        asked: usize,
        order: u32,
        got: &ReservationOutcome,
        gpfns: Option<&[u64]>,
    ) -> Result<(), String> {
        if order > 9 {
            check_outcome("allocation", got, (0, None))?;
            return self.check_frames("allocation (refused order)", before);
        }
        let size = 1u64 << order;
        let tot0 = tot(before, d);
        let by_max =
            self.max[usize::from(d - 1)].map_or(u64::MAX, |m| m.saturating_sub(tot0) / size);
        let want = (asked as u64).min(free_blocks(before, size)).min(by_max) as usize;
        let stopped = (want < asked).then_some(Errno::ENOMEM);
        check_outcome("allocation", got, (want, stopped))?;
        let mut after = before.clone();
        let mut seen = BTreeSet::new();
        for (i, first) in got.frames.iter().enumerate() {
            if first.0 % size != 0 {
                return Err(format!("allocation: block {first} not aligned to {size}"));
            }
            for f in first.0..first.0 + size {
                if !is_free(before, f) || !seen.insert(f) {
                    return Err(format!("allocation: frame {f:#x} was not free"));
                }
                after.insert(
                    f,
                    Frame {
                        owner: d,
                        count: 1,
                        allocated: true,
                        ..FREE
                    },
                );
                if let Some(gpfns) = gpfns {
                    let want = gpfns[i].wrapping_add(f - first.0);
                    if self.m.frames().m2p(Mfn(f)) != Some(want) {
                        return Err(format!("populate: M2P of {f:#x} is not {want:#x}"));
                    }
                }
            }
        }
        self.check_frames("allocation", &after)
    }

    /// Exchange, chunk by chunk (as many input extents as make one output extent, or
    /// the reverse): all of a chunk's input frames must be the domain's with only their
    /// allocation reference, unpinned, listed once, else EINVAL; its outputs must be
    /// free aligned blocks, else ENOMEM; an exchanged chunk's inputs are free after,
    /// its outputs the domain's, recorded in the M2P.
    #[allow(clippy::too_many_arguments)]
    fn check_exchange(
        &self,
        before: &BTreeMap<u64, Frame>,
        d: u16,
        inputs: &[u64],
        io: u32,
        outs: &[u64],
        oo: u32,
        got: &ReservationOutcome,
    ) -> Result<(), String> {
        let (in_chunk, out_chunk) = if io <= oo {
            (1usize << (oo - io), 1usize)
        } else {
            (1, 1usize << (io - oo))
        };
        let size = 1u64 << oo;
        let mut model = before.clone();
        let mut done = 0;
        let mut stopped = None;
        let mut handed = got.frames.iter();
        let mut m2p = BTreeMap::new();
        for (c, chunk) in inputs.chunks(in_chunk).enumerate() {
            if chunk.len() < in_chunk {
                break;
            }
            let frames: Vec<u64> = chunk
                .iter()
                .flat_map(|&g| (0..1u64 << io).map(move |k| g.wrapping_add(k)))
                .collect();
            let distinct: BTreeSet<u64> = frames.iter().copied().collect();
            let stealable = distinct.len() == frames.len()
                && frames.iter().all(|f| {
                    model.get(f).is_some_and(|p| {
                        p.owner == d && p.allocated && !p.shared && p.count == 1 && !p.pinned
                    })
                });
            if !stealable {
                stopped = Some(Errno::EINVAL);
                break;
            }
            if free_blocks(&model, size) < out_chunk as u64 {
                stopped = Some(Errno::ENOMEM);
                break;
            }
            for f in &frames {
                model.insert(*f, FREE);
            }
            for j in 0..out_chunk {
                let Some(first) = handed.next() else {
                    return Err(format!("exchange: chunk {c} handed out no block {j}"));
                };
                for f in first.0..first.0 + size {
                    if first.0 % size != 0 || !before.contains_key(&f) {
                        return Err(format!("exchange: block {first} is not a block"));
                    }
                    if !is_free(&model, f) && !frames.contains(&f) {
                        return Err(format!("exchange: frame {f:#x} was not free"));
                    }
                    model.insert(
                        f,
                        Frame {
                            owner: d,
                            count: 1,
                            allocated: true,
                            ..FREE
                        },
                    );
                    // A frame handed out can be exchanged away and handed out again
                    // by a later chunk: the last one's M2P stands.
                    m2p.insert(f, outs[c * out_chunk + j].wrapping_add(f - first.0));
                }
            }
            done += in_chunk;
        }
        check_outcome("exchange", got, (done, stopped))?;
        for (f, want) in m2p {
            if self.m.frames().m2p(Mfn(f)) != Some(want) {
                return Err(format!("exchange: M2P of {f:#x} is not {want:#x}"));
            }
        }
        if tot(&frames_of(&self.m), d) != tot(before, d) {
            return Err("exchange changed the domain's page count".into());
        }
        self.check_frames("exchange", &model)
    }

    fn finish(mut self) -> Result<(), String> {
        for d in [1u16, 2] {
            if self.alive[usize::from(d - 1)] {
                self.m
                    .destroy_domain(d)
                    .map_err(|e| format!("teardown: {e}"))?;
            }
        }
        if let Some((f, p)) = self.m.frames().iter().find(|(_, p)| p.count != 0) {
            return Err(format!("frame {f} not returned after teardown: {p:?}"));
        }
        self.m
            .audit()
            .map_err(|e| format!("audit after teardown: {e}"))
    }
}

fn check_outcome(
    what: &str,
    got: &ReservationOutcome,
    want: (usize, Option<Errno>),
) -> Result<(), String> {
    if (got.done, got.stopped) != want {
        return Err(format!(
            "{what}: got ({}, {:?}), want {want:?}",
            got.done, got.stopped
        ));
    }
    Ok(())
}

/// `decrease_reservation` by Xen's `guest_remove_page`, frame by frame: not RAM stops
/// with EPERM, not the domain's (or free) with ENXIO; else the allocation reference goes
/// (unless the hypervisor shares the frame), and a frame left with no reference is free.
fn predict_decrease(
    before: &BTreeMap<u64, Frame>,
    d: u16,
    gmfns: &[u64],
    order: u32,
) -> ((usize, Option<Errno>), BTreeMap<u64, Frame>) {
    let mut after = before.clone();
    if order > 9 {
        return ((0, None), after);
    }
    let mut done = 0;
    for &g in gmfns {
        for j in 0..1u64 << order {
            let f = g.wrapping_add(j);
            let Some(p) = after.get_mut(&f) else {
                return ((done, Some(Errno::EPERM)), after);
            };
            if p.owner != d || p.count == 0 {
                return ((done, Some(Errno::ENXIO)), after);
            }
            if p.allocated && !p.shared {
                p.allocated = false;
                p.count -= 1;
                if p.count == 0 {
                    *p = FREE;
                }
            }
        }
        done += 1;
    }
    ((done, None), after)
}

/// The harness: decode `data` into operations, run them, check the oracles, tear down;
/// panics when an oracle fails.
pub fn reservation_ops(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let Ok(ops) = Vec::<Op>::arbitrary(&mut u) else {
        return;
    };
    let mut w = World::new();
    for op in ops.iter().take(48) {
        if let Err(e) = w.apply(op) {
            panic!("{e}");
        }
    }
    if let Err(e) = w.finish() {
        panic!("{e}");
    }
}
