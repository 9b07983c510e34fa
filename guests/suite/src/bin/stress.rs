//! 100,000 random valid and invalid L1 updates against a shadow model kept by the guest.
//!
//! One L1 table (built with `map_range`, VA range R of 512 pages) maps data frames, each
//! holding a unique tag in its first 8 bytes (written through R). Requests, drawn with a fixed-seed xorshift
//! PRNG and issued in mmu_update batches of 64..=128 entries:
//! - map entry i to a random data frame, RW or RO, with random A, D and software bits,
//!   as MMU_NORMAL_PT_UPDATE, MMU_PT_UPDATE_NO_TRANSLATE or MMU_PT_UPDATE_PRESERVE_AD
//!   (valid);
//! - unmap entry i (valid);
//! - map entry i RW to one of the guest's page-table frames (-EBUSY);
//! - map with a cache bit PWT/PCD/PAT set, whatever the frame: -EINVAL for an ordinary
//!   domain; a domain with I/O rights (Xen's `cache_flush_permitted`, probed by mapping
//!   the MMIO test device with FD = DOMID_IO) has an empty L1 disallow mask, so there the
//!   request is judged as without the bits (data frame: accepted and stored with them;
//!   page table RW or hypervisor frame: -EBUSY);
//! - map a hypervisor frame (nr_pages + 5: another owner's, -EBUSY);
//! - an unknown command in ptr bits 2:0 (-ENOSYS).
//!
//! For each batch the guest predicts the first failing entry and its errno and checks rc
//! and done exactly; it applies the successful prefix to its model and resubmits the
//! entries after the failing one in the next batch. After each batch it flushes its TLB
//! and checks every entry: the table (read through the L1's read-only identity mapping)
//! holds exactly the expected adjusted value (0 when not present), and every present page
//! reads its frame's tag through R. Reading through an entry whose A bit is clear may
//! make the CPU set it: the entry is read back after the access and A is the only bit
//! allowed to have changed.
#![no_std]
#![no_main]

use rt::abi::mmu::{MMU_PT_UPDATE_NO_TRANSLATE, MMU_PT_UPDATE_PRESERVE_AD, MMUEXT_TLB_FLUSH_LOCAL};
use rt::abi::{Errno, MmuUpdate, StartInfo};
use rt::{mem, peek, poke, println};
use suite::{A, Check, Frames, P, RW, SELF, err};

const TOTAL: u64 = 100_000;
const N: usize = 512;
const MAX_BATCH: usize = 128;
const L3_SLOT: u64 = 1;
const R: u64 = L3_SLOT << 30;
const US: u64 = 1 << 2;
const PWT: u64 = 1 << 3;
const PCD: u64 = 1 << 4;
const D: u64 = 1 << 6;
const PAT: u64 = 1 << 7;
const GUEST_KERNEL: u64 = 1 << 52;
/// The VMM's MMIO test device (guest-physical address).
const MMIO_TEST_BASE: u64 = 0x1_0000_0000;
/// Data frames at most.
const MAX_POOL: usize = 720;
/// Local mismatches after which the run stops (so a systematic failure doesn't flood).
const MAX_BAD: u32 = 20;

fn tag(pfn: u64) -> u64 {
    0x5354_5245_0000_0000 | pfn
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn bit(&mut self) -> bool {
        self.next() & 1 != 0
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Map,
    Unmap,
    PtRw,
    CacheBits,
    Hypervisor,
    BadCmd,
}

const KINDS: [Kind; 6] = [
    Kind::Map,
    Kind::Unmap,
    Kind::PtRw,
    Kind::CacheBits,
    Kind::Hypervisor,
    Kind::BadCmd,
];
const KIND_NAMES: [&str; 6] = [
    "map a data frame",
    "unmap",
    "RW map of a page table (-EBUSY)",
    "PWT/PCD/PAT set (-EINVAL, or as without them with I/O rights)",
    "hypervisor frame (-EBUSY)",
    "unknown command (-ENOSYS)",
];

#[derive(Clone, Copy)]
struct Req {
    req: MmuUpdate,
    kind: Kind,
    /// Entry index.
    idx: usize,
    /// The hypercall result this request must produce on its own.
    expect: i64,
    /// The data frame it maps when it succeeds (None: it unmaps).
    frame: Option<u64>,
}

impl Req {
    const NONE: Req = Req {
        req: MmuUpdate { ptr: 0, val: 0 },
        kind: Kind::Unmap,
        idx: 0,
        expect: 0,
        frame: None,
    };
}

struct Ctx<'a> {
    l1: u64,
    pool: &'a [u64],
    pts: &'a [u64],
    hyp: u64,
    /// The domain has I/O rights (Xen's cache_flush_permitted): its L1 disallow mask
    /// is empty, so PWT/PCD/PAT are allowed.
    relaxed: bool,
}

/// Random software-available and A/D bits for a present entry.
fn extra_bits(rng: &mut Rng) -> u64 {
    let mut v = 0;
    if rng.bit() {
        v |= A;
    }
    if rng.below(4) == 0 {
        v |= D;
    }
    v |= rng.below(8) << 9; // bits 9..11
    if rng.below(4) == 0 {
        v |= rng.below(64) << 53; // bits 53..58
    }
    v
}

fn gen_req(rng: &mut Rng, cx: &Ctx) -> Req {
    let idx = rng.below(N as u64) as usize;
    let ptr = (cx.l1 << 12) + idx as u64 * 8;
    let r = rng.below(1000);
    let cmd = match rng.below(8) {
        0 => MMU_PT_UPDATE_NO_TRANSLATE,
        1 => MMU_PT_UPDATE_PRESERVE_AD,
        _ => 0,
    };
    let rw = if rng.bit() { RW } else { 0 };
    let data = cx.pool[rng.below(cx.pool.len() as u64) as usize];
    let pt = cx.pts[rng.below(cx.pts.len() as u64) as usize];
    let busy = err(Errno::EBUSY);
    if r < 8 {
        // Refused, or (cache bits with I/O rights) maybe not.
        return match r % 4 {
            0 => Req {
                req: MmuUpdate {
                    ptr: ptr | cmd,
                    val: (pt << 12) | P | RW | extra_bits(rng),
                },
                kind: Kind::PtRw,
                idx,
                expect: busy,
                frame: None,
            },
            1 => {
                let bad = [
                    PWT,
                    PCD,
                    PAT,
                    PWT | PCD,
                    PWT | PAT,
                    PCD | PAT,
                    PWT | PCD | PAT,
                ][rng.below(7) as usize];
                // Any frame: without I/O rights the flag check comes first; with them
                // the request is judged as without the bits (page tables only RW).
                let (f, rw, outcome, frame) = match rng.below(3) {
                    0 => (pt, RW, busy, None),
                    1 => (cx.hyp, rw, busy, None),
                    _ => (data, rw, 0, Some(data)),
                };
                let expect = if cx.relaxed {
                    outcome
                } else {
                    err(Errno::EINVAL)
                };
                Req {
                    req: MmuUpdate {
                        ptr: ptr | cmd,
                        val: (f << 12) | P | rw | extra_bits(rng) | bad,
                    },
                    kind: Kind::CacheBits,
                    idx,
                    expect,
                    frame,
                }
            }
            2 => Req {
                req: MmuUpdate {
                    ptr: ptr | cmd,
                    val: (cx.hyp << 12) | P | rw | extra_bits(rng),
                },
                kind: Kind::Hypervisor,
                idx,
                expect: busy,
                frame: None,
            },
            // Otherwise a perfectly valid mapping.
            _ => Req {
                req: MmuUpdate {
                    ptr: ptr | (4 + rng.below(4)),
                    val: (data << 12) | P | rw | A,
                },
                kind: Kind::BadCmd,
                idx,
                expect: err(Errno::ENOSYS),
                frame: None,
            },
        };
    }
    if r < 700 {
        Req {
            req: MmuUpdate {
                ptr: ptr | cmd,
                val: (data << 12) | P | rw | extra_bits(rng),
            },
            kind: Kind::Map,
            idx,
            expect: 0,
            frame: Some(data),
        }
    } else {
        // Unmap (no PRESERVE_AD: it would keep the old A/D bits in the empty entry).
        let cmd = if cmd == MMU_PT_UPDATE_PRESERVE_AD {
            0
        } else {
            cmd
        };
        Req {
            req: MmuUpdate {
                ptr: ptr | cmd,
                val: 0,
            },
            kind: Kind::Unmap,
            idx,
            expect: 0,
            frame: None,
        }
    }
}

/// The shadow model: the value each entry must hold, and the frame it maps.
struct Model {
    val: [u64; N],
    frame: [Option<u64>; N],
}

impl Model {
    /// Applies a request the hypervisor accepted.
    fn apply(&mut self, r: &Req) {
        if r.frame.is_some() {
            let mut v = r.req.val;
            if v & US == 0 {
                v |= US | GUEST_KERNEL;
            }
            if r.req.ptr & 7 == MMU_PT_UPDATE_PRESERVE_AD {
                v |= self.val[r.idx] & (A | D);
            }
            self.val[r.idx] = v;
        } else {
            self.val[r.idx] = r.req.val;
        }
        self.frame[r.idx] = r.frame;
    }
}

/// Whether the domain has I/O-memory rights: mapping the MMIO test device with
/// FD = DOMID_IO succeeds (rc 0) or is refused (-EPERM). Probed on entry 0 of `l1`,
/// which is restored to `restore` afterwards.
fn io_rights(c: &mut Check, l1: u64, restore: u64) -> bool {
    let ptr = l1 << 12;
    let (rc, _) = rt::mmu_update(
        &[MmuUpdate {
            ptr,
            val: MMIO_TEST_BASE | P | A,
        }],
        u32::from(rt::abi::DOMID_IO),
    );
    c.ok(
        "stress: MMIO probe: mapped or -EPERM",
        rc == 0 || rc == err(Errno::EPERM),
    );
    c.update(
        "stress: MMIO probe: entry restored",
        &[MmuUpdate { ptr, val: restore }],
        SELF,
        0,
        1,
    );
    rc == 0
}

#[unsafe(no_mangle)]
pub fn guest_main(si: &'static StartInfo) {
    let mut c = Check::new();
    let mut frames = Frames::new();
    let (l2, l1) = (frames.take(), frames.take());
    // Data frames: MAX_POOL of them, or as many as the domain has.
    let mut pool_buf = [0u64; MAX_POOL];
    let mut n_pool = 0;
    while n_pool < MAX_POOL {
        let f = frames.take();
        if f >= si.nr_pages {
            break;
        }
        pool_buf[n_pool] = f;
        n_pool += 1;
    }
    let pool = &pool_buf[..n_pool];
    if pool.len() < N {
        println!("stress: only {} data frames", pool.len());
        rt::finish(Some("stress: not enough data frames"));
    }
    let l1 = suite::map_range(l2, l1, L3_SLOT, &pool[..N]);
    // Tag every data frame through R (frames beyond the builder's mapping can only be
    // written that way): the first 512 as mapped, the rest 512 at a time, remapped.
    let mut batch = [MmuUpdate::default(); N];
    for (k, chunk) in pool.chunks(N).enumerate() {
        if k > 0 {
            for (i, &f) in chunk.iter().enumerate() {
                batch[i] = MmuUpdate {
                    ptr: (l1 << 12) + i as u64 * 8,
                    val: (f << 12) | P | RW | A,
                };
            }
            c.update(
                "stress: map frames to tag them",
                &batch[..chunk.len()],
                SELF,
                0,
                chunk.len() as u32,
            );
            c.eq("stress: flush", rt::mmuext(MMUEXT_TLB_FLUSH_LOCAL, 0, 0), 0);
        }
        for (i, &f) in chunk.iter().enumerate() {
            poke(R + i as u64 * 4096, tag(f));
        }
    }
    if pool.len() > N {
        for (i, &f) in pool[..N].iter().enumerate() {
            batch[i] = MmuUpdate {
                ptr: (l1 << 12) + i as u64 * 8,
                val: (f << 12) | P | RW | A,
            };
        }
        c.update(
            "stress: back to the first frames",
            &batch,
            SELF,
            0,
            N as u32,
        );
        c.eq("stress: flush", rt::mmuext(MMUEXT_TLB_FLUSH_LOCAL, 0, 0), 0);
    }
    let first_pt = si.pt_base >> 12;
    let mut pts_buf = [0u64; 64];
    let mut n_pts = 0;
    for p in first_pt..first_pt + si.nr_pt_frames {
        pts_buf[n_pts] = p;
        n_pts += 1;
    }
    pts_buf[n_pts] = l2;
    pts_buf[n_pts + 1] = l1;
    let pts = &pts_buf[..n_pts + 2];
    let relaxed = io_rights(&mut c, l1, (pool[0] << 12) | P | RW | A);
    let cx = Ctx {
        l1,
        pool,
        pts,
        hyp: si.nr_pages + 5,
        relaxed,
    };
    println!(
        "stress: L1 {:#x}, {} data frames {:#x}..={:#x}, {} page-table frames, hypervisor frame {:#x}",
        l1,
        pool.len(),
        pool[0],
        pool[pool.len() - 1],
        pts.len(),
        cx.hyp
    );
    println!(
        "stress: the domain {} I/O-memory rights: PWT/PCD/PAT in L1 entries are {}",
        if relaxed { "has" } else { "has no" },
        if relaxed {
            "allowed"
        } else {
            "refused with -EINVAL"
        }
    );

    let mut model = Model {
        val: [0; N],
        frame: [None; N],
    };
    for (i, &f) in pool[..N].iter().enumerate() {
        model.val[i] = (f << 12) | P | RW | A | US | GUEST_KERNEL;
        model.frame[i] = Some(f);
    }

    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut queue = [Req::NONE; MAX_BATCH];
    let mut queued = 0usize;
    let mut generated = 0u64;
    let (mut batches, mut full_batches, mut applied, mut refused) = (0u64, 0u64, 0u64, 0u64);
    let mut by_kind = [0u64; 6];
    let mut reads = 0u64;
    let mut bad = 0u32;
    let mut reqs = [MmuUpdate::default(); MAX_BATCH];
    let mut a_set_by_access = 0u64;

    while generated < TOTAL || queued > 0 {
        // Top the queue up to this batch's size.
        let size = 64 + rng.below(MAX_BATCH as u64 - 64 + 1) as usize;
        while queued < size && generated < TOTAL {
            let r = gen_req(&mut rng, &cx);
            by_kind[KINDS.iter().position(|k| *k == r.kind).unwrap_or(0)] += 1;
            queue[queued] = r;
            queued += 1;
            generated += 1;
        }
        let n = queued;
        for i in 0..n {
            reqs[i] = queue[i].req;
        }
        let fail = queue[..n].iter().position(|r| r.expect != 0);
        let (want_rc, want_done) = match fail {
            Some(k) => (queue[k].expect, k as u32),
            None => (0, n as u32),
        };
        let (rc, done) = rt::mmu_update(&reqs[..n], SELF);
        batches += 1;
        if rc != want_rc || done != want_done {
            bad += 1;
            println!(
                "stress: batch {batches} of {n}: rc {rc} done {done}, want rc {want_rc} done {want_done}"
            );
            if let Some(k) = fail {
                println!(
                    "  first invalid entry {k}: ptr {:#x} val {:#x}",
                    queue[k].req.ptr, queue[k].req.val
                );
            }
        }
        c.eq("stress: batch rc", rc, want_rc);
        c.eq("stress: batch done", i64::from(done), i64::from(want_done));
        // Apply what the hypervisor applied (its own count: the checks below then still
        // compare the model with the tables even after a misprediction).
        let done = (done as usize).min(n);
        for r in &queue[..done] {
            model.apply(r);
        }
        applied += done as u64;
        let consumed = if done < n {
            refused += 1;
            done + 1
        } else {
            full_batches += 1;
            n
        };
        queue.copy_within(consumed..n, 0);
        queued = n - consumed;

        // Check every entry, then read through every present one.
        c.eq("stress: flush", rt::mmuext(MMUEXT_TLB_FLUSH_LOCAL, 0, 0), 0);
        let table = mem::pfn_to_va(l1);
        for i in 0..N {
            let got = peek(table + i as u64 * 8);
            if got != model.val[i] {
                bad += 1;
                println!(
                    "stress: batch {batches}: L1[{i}] = {got:#x}, want {:#x}",
                    model.val[i]
                );
            }
            c.eq("stress: table entry", got as i64, model.val[i] as i64);
        }
        for i in 0..N {
            if let Some(f) = model.frame[i] {
                let got = peek(R + i as u64 * 4096);
                reads += 1;
                if got != tag(f) {
                    bad += 1;
                    println!(
                        "stress: batch {batches}: page {i} reads {got:#x}, want frame {f:#x}'s tag {:#x}",
                        tag(f)
                    );
                }
                c.eq("stress: tag through R", got as i64, tag(f) as i64);
                // The access may have set A; nothing else may change.
                let after = peek(table + i as u64 * 8);
                let ok = after == model.val[i] || after == model.val[i] | A;
                if !ok {
                    bad += 1;
                    println!(
                        "stress: batch {batches}: L1[{i}] = {after:#x} after the access, want {:#x} (A may be set)",
                        model.val[i]
                    );
                } else if after != model.val[i] {
                    a_set_by_access += 1;
                    model.val[i] = after;
                }
                c.ok("stress: entry after the access", ok);
            }
        }
        if bad > MAX_BAD {
            println!("stress: too many mismatches, stopping after {generated} requests");
            c.finish();
        }
    }

    let present = model.frame.iter().filter(|f| f.is_some()).count();
    println!(
        "stress: {generated} requests in {batches} batches ({full_batches} complete, {refused} stopped at a refusal): {applied} applied, {refused} refused"
    );
    for (k, name) in KIND_NAMES.iter().enumerate() {
        println!("stress:   {:>6} {}", by_kind[k], name);
    }
    println!(
        "stress: {reads} reads through R, A set by the access {a_set_by_access} times, {present} entries present at the end"
    );
    // Clean up: unhook the range.
    let l3e = (suite::builder_l3() << 12) + L3_SLOT * 8;
    c.update(
        "stress: unhook the range",
        &[MmuUpdate { ptr: l3e, val: 0 }],
        SELF,
        0,
        1,
    );
    c.finish();
}
