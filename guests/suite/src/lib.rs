//! Helpers shared by the scenario guests.
#![no_std]

/// Pushes the caller-saved registers a Rust handler may clobber, besides RAX, RCX and
/// R11 (which each entry handles its own way): for the guests' assembly entries.
macro_rules! push_scratch {
    () => {
        "push %rdx\npush %rsi\npush %rdi\npush %r8\npush %r9\npush %r10\n"
    };
}

/// Pops what [`push_scratch`] pushed.
macro_rules! pop_scratch {
    () => {
        "pop %r10\npop %r9\npop %r8\npop %rdi\npop %rsi\npop %rdx\n"
    };
}

pub mod events;
pub mod traps;

use rt::abi::MmuUpdate;
use rt::{mem, peek};

/// Present.
pub const P: u64 = 1;
/// Writable.
pub const RW: u64 = 2;
/// Accessed.
pub const A: u64 = 0x20;

/// Hands out free pseudo-physical frames after the builder's areas.
pub struct Frames {
    next: u64,
}

impl Frames {
    /// Starts after the boot stack.
    pub fn new() -> Frames {
        Frames {
            next: mem::first_free_pfn(),
        }
    }
    /// One frame.
    pub fn take(&mut self) -> u64 {
        self.next += 1;
        self.next - 1
    }
}

impl Default for Frames {
    fn default() -> Self {
        Frames::new()
    }
}

/// Machine address of the L1 entry that maps `va` in the builder's initial tables.
pub fn l1e_addr(va: u64) -> u64 {
    let si = rt::start_info();
    let mut table_va = si.pt_base;
    for shift in [39u32, 30, 21] {
        let e = peek(table_va + ((va >> shift) & 511) * 8);
        if e & P == 0 {
            rt::finish(Some("path to a builder mapping not present"));
        }
        // The domain's pfn == mfn and the builder maps it identically.
        table_va = mem::pfn_to_va((e & 0x000f_ffff_ffff_f000) >> 12);
    }
    (mem::pfn_to_mfn(table_va >> 12) << 12) + ((va >> 12) & 511) * 8
}

/// Makes `pfn`'s own mapping read-only, so the frame can become a page table.
pub fn make_readonly(pfn: u64) -> MmuUpdate {
    MmuUpdate {
        ptr: l1e_addr(mem::pfn_to_va(pfn)),
        val: (mem::pfn_to_mfn(pfn) << 12) | P | A,
    }
}

/// Zeroes a frame through its builder mapping.
pub fn zero(pfn: u64) {
    for i in 0..512 {
        rt::poke(mem::pfn_to_va(pfn) + i * 8, 0);
    }
}

/// Builds an L2 (`l2`) + L1 (`l1`) under L3 slot `l3_slot` of the builder's L3 (for VA
/// `l3_slot << 30`), the L1 mapping the frames `data` read-write, in one batched
/// mmu_update. `l2` and `l1` must lie in the builder's initial mapping (they are zeroed
/// through it). Returns the L1's mfn.
pub fn map_range(l2: u64, l1: u64, l3_slot: u64, data: &[u64]) -> u64 {
    let si = rt::start_info();
    zero(l2);
    zero(l1);
    let (l1_mfn, l2_mfn) = (mem::pfn_to_mfn(l1), mem::pfn_to_mfn(l2));
    let l3 = peek(si.pt_base) & 0x000f_ffff_ffff_f000;
    let mut batch = [MmuUpdate::default(); 4 + 512];
    batch[0] = make_readonly(l2);
    batch[1] = make_readonly(l1);
    let mut n = 2;
    for (i, pfn) in data.iter().enumerate().take(512) {
        batch[n] = MmuUpdate {
            ptr: (l1_mfn << 12) + i as u64 * 8,
            val: (mem::pfn_to_mfn(*pfn) << 12) | P | RW | A,
        };
        n += 1;
    }
    batch[n] = MmuUpdate {
        ptr: l2_mfn << 12,
        val: (l1_mfn << 12) | P | RW | A,
    };
    batch[n + 1] = MmuUpdate {
        ptr: l3 + l3_slot * 8,
        val: (l2_mfn << 12) | P | RW | A,
    };
    let (rc, _) = rt::mmu_update(&batch[..n + 2], u32::from(rt::abi::DOMID_SELF));
    if rc != 0 {
        rt::println!("map_range: rc {rc}");
        rt::finish(Some("map_range"));
    }
    l1_mfn
}

/// A zeroed frame from `frames` whose own mapping was made read-only: ready to become a
/// page table. Returns its pfn (== mfn).
pub fn table_frame(frames: &mut Frames) -> u64 {
    let f = frames.take();
    zero(f);
    let (rc, _) = rt::mmu_update(&[make_readonly(f)], u32::from(rt::abi::DOMID_SELF));
    if rc != 0 {
        rt::finish(Some("table_frame: making the frame read-only"));
    }
    f
}

/// The MFN of the L4 the builder installed.
pub fn builder_l4() -> u64 {
    rt::mem::pfn_to_mfn(rt::start_info().pt_base >> 12)
}

/// The MFN of the builder's L3 (under L4 slot 0).
pub fn builder_l3() -> u64 {
    (rt::peek(rt::start_info().pt_base) & 0x000f_ffff_ffff_f000) >> 12
}

/// Collects check results; `finish` reports the verdict as the last console line.
pub struct Check {
    failures: u32,
    first: Option<&'static str>,
    checks: u32,
}

impl Check {
    /// No checks yet.
    pub const fn new() -> Check {
        Check {
            failures: 0,
            first: None,
            checks: 0,
        }
    }

    /// Records `what`: `got` must equal `want`.
    pub fn eq(&mut self, what: &'static str, got: i64, want: i64) {
        self.checks += 1;
        if got != want {
            rt::println!("FAIL {what}: got {got} ({got:#x}), want {want} ({want:#x})");
            self.failures += 1;
            self.first.get_or_insert(what);
        }
    }

    /// Records `what`: `cond` must hold.
    pub fn ok(&mut self, what: &'static str, cond: bool) {
        self.eq(what, i64::from(cond), 1);
    }

    /// An mmu_update batch must end with `rc` after `done` entries.
    pub fn update(&mut self, what: &'static str, reqs: &[MmuUpdate], fd: u32, rc: i64, done: u32) {
        let (r, d) = rt::mmu_update(reqs, fd);
        self.eq(what, r, rc);
        self.eq(what, i64::from(d), i64::from(done));
    }

    /// An mmuext_op batch must end with `rc` after `done` entries.
    pub fn ext(
        &mut self,
        what: &'static str,
        ops: &[rt::abi::MmuextOp],
        fd: u32,
        rc: i64,
        done: u32,
    ) {
        let (r, d) = rt::mmuext_op(ops, fd);
        self.eq(what, r, rc);
        self.eq(what, i64::from(d), i64::from(done));
    }

    /// Prints the totals and, when every check passed, the verdict before running
    /// `end`, which must end the domain (a failure if it returns).
    pub fn finish_with(self, end: impl FnOnce()) -> ! {
        rt::println!("{} checks, {} failed", self.checks, self.failures);
        if self.failures > 0 {
            rt::finish(self.first)
        }
        rt::println!("Test result: SUCCESS");
        end();
        rt::finish(Some("the domain did not end"))
    }

    /// Prints the totals and the verdict, and shuts down.
    pub fn finish(self) -> ! {
        rt::println!("{} checks, {} failed", self.checks, self.failures);
        rt::finish(self.first)
    }
}

impl Default for Check {
    fn default() -> Self {
        Check::new()
    }
}

/// `-errno` as a hypercall returns it.
pub const fn err(e: rt::abi::Errno) -> i64 {
    e.neg()
}

/// The caller's own domain as a `foreigndom` argument.
pub const SELF: u32 = rt::abi::DOMID_SELF as u32;

/// Zeroes a frame whose own mapping is read-only, through mmu_update plain writes (the
/// frame must not be a page table at the moment).
pub fn zero_ro(pfn: u64) {
    let mfn = rt::mem::pfn_to_mfn(pfn);
    for chunk in 0..8u64 {
        let reqs: [MmuUpdate; 64] = core::array::from_fn(|i| MmuUpdate {
            ptr: (mfn << 12) + (chunk * 64 + i as u64) * 8,
            val: 0,
        });
        if rt::mmu_update(&reqs, u32::from(rt::abi::DOMID_SELF)).0 != 0 {
            rt::finish(Some("zero_ro"));
        }
    }
}
