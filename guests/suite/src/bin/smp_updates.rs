//! Two vCPUs updating one domain's page tables at the same time, as an SMP kernel's
//! CPUs do: each issues `mmu_update` batches of L1 updates (maps read-write and
//! read-only, remaps, unmaps) on its own table and on its half of a table both use,
//! plus a few entries of that common table both write (racing for them). After every
//! batch each vCPU checks the result (rc 0, every entry done); every fourth batch it
//! flushes its own TLB and checks each of its entries: the table holds what it last
//! wrote (frame and present bit), and every present page reads its frame's tag. At the
//! end the contested entries must each hold one of the values written there (a
//! present read-only mapping of a tagged frame, read back through the table), and the
//! VMM's audit after the run checks that every reference count adds up.
#![no_std]
#![no_main]

use core::arch::global_asm;
use core::sync::atomic::{AtomicU64, Ordering};

use rt::abi::hypercall::{HYPERVISOR_sched_op, HYPERVISOR_vcpu_op};
use rt::abi::mmu::MMUEXT_TLB_FLUSH_LOCAL;
use rt::abi::{MmuUpdate, StartInfo};
use rt::{mem, peek, poke};
use suite::{A, Check, Frames, P, RW, SELF};

const VCPUOP_INITIALISE: u64 = 0;
const VCPUOP_UP: u64 = 1;
const SCHEDOP_YIELD: u64 = 0;
/// Words of `struct vcpu_guest_context`, and the ones set here.
const CTX_WORDS: usize = 646;
const CTX_FLAGS: usize = 64;
const CTX_RIP: usize = 81;
const CTX_CS: usize = 82;
const CTX_RFLAGS: usize = 83;
const CTX_RSP: usize = 84;
const CTX_SS: usize = 85;
const CTX_KERNEL_SS: usize = 621;
const CTX_KERNEL_SP: usize = 622;
const CTX_CR3: usize = 626;
const VGCF_IN_KERNEL: u64 = 1 << 2;

/// Batches per vCPU.
const ROUNDS: u64 = 3000;
/// Entries per batch: half on the vCPU's own table, half on the common one, one of
/// them contested.
const BATCH: usize = 64;
/// Entries of each table in play.
const SLOTS: u64 = 128;
/// The contested entries of the common table (both vCPUs write them).
const CONTESTED: core::ops::Range<u64> = 500..504;
/// Tagged data frames.
const DATA: usize = 48;
/// VA of the L3 slots of the three tables (vCPU 0's, vCPU 1's, the common one).
const L3_SLOTS: [u64; 3] = [1, 2, 3];
const ADDR: u64 = 0x000f_ffff_ffff_f000;

/// The pfns of the data frames and the mfns of the three L1 tables, set by vCPU 0
/// before vCPU 1 starts.
static DATA_PFNS: [AtomicU64; DATA] = [const { AtomicU64::new(0) }; DATA];
static TABLES: [AtomicU64; 3] = [const { AtomicU64::new(0) }; 3];
/// Set by vCPU 0 to start both at once; each vCPU's end (1 + failures).
static GO: AtomicU64 = AtomicU64::new(0);
static ENDED: [AtomicU64; 2] = [const { AtomicU64::new(0) }; 2];
/// Each vCPU's batches not accepted whole, and entries found wrong.
static BAD_BATCHES: [AtomicU64; 2] = [const { AtomicU64::new(0) }; 2];
static BAD_ENTRIES: [AtomicU64; 2] = [const { AtomicU64::new(0) }; 2];

// vCPU 1's entry (RSP is its stack's top) and its stack.
global_asm!(
    r#"
    .globl smpu_ap_entry
smpu_ap_entry:
    and $-16, %rsp
    call smpu_ap_main
    ud2

    .section .bss.smpu_ap_stack, "aw", @nobits
    .balign 4096
    .space 32768
    .globl smpu_ap_stack_top
smpu_ap_stack_top:
    "#,
    options(att_syntax)
);

unsafe extern "C" {
    fn smpu_ap_entry();
    static smpu_ap_stack_top: u8;
}

fn tag(pfn: u64) -> u64 {
    0x534d_5055_0000_0000 | pfn
}

/// xorshift64, one per vCPU.
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
}

fn vcpu_op(cmd: u64, vcpu: u64, arg: u64) -> i64 {
    // SAFETY: `arg` is null or points at a context that lives for the call.
    unsafe { rt::hypercall(HYPERVISOR_vcpu_op, cmd, vcpu, arg, 0, 0) }
}

fn yield_now() {
    // SAFETY: no pointers.
    unsafe { rt::hypercall(HYPERVISOR_sched_op, SCHEDOP_YIELD, 0, 0, 0, 0) };
}

/// The VA entry `slot` of table `t` maps.
fn va(t: usize, slot: u64) -> u64 {
    (L3_SLOTS[t] << 30) + (slot << 12)
}

/// What one vCPU believes of the entries it alone writes: per table (own, common),
/// per slot, the data frame mapped (0: not present).
struct Model {
    own: [u64; SLOTS as usize],
    common: [u64; SLOTS as usize],
}

/// vCPU `me`'s work: `ROUNDS` batches, with checks.
fn work(me: usize) {
    let own = me;
    let data = |i: u64| DATA_PFNS[i as usize].load(Ordering::SeqCst);
    let table = |t: usize| TABLES[t].load(Ordering::SeqCst);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ ((me as u64 + 1) * 0x1234_5678_9abc_def1));
    // The tables start with entries 0..DATA mapping the data frames read-write.
    let mut model = Model {
        own: [0; SLOTS as usize],
        common: [0; SLOTS as usize],
    };
    for i in 0..DATA as u64 {
        model.own[i as usize] = data(i);
        model.common[i as usize] = data(i);
    }
    let mut bad_entries = 0u64;
    let mut batch = [MmuUpdate::default(); BATCH];
    for round in 0..ROUNDS {
        for (k, req) in batch.iter_mut().enumerate() {
            let (t, slot) = if k == BATCH - 1 {
                // A contested entry of the common table: a read-only mapping.
                let slot = CONTESTED.start + rng.below(CONTESTED.end - CONTESTED.start);
                let f = data(rng.below(DATA as u64));
                *req = MmuUpdate {
                    ptr: (table(2) << 12) + slot * 8,
                    val: (mem::pfn_to_mfn(f) << 12) | P | A,
                };
                continue;
            } else if k % 2 == 0 {
                (own, rng.below(SLOTS))
            } else {
                // This vCPU's half of the common table: slots of its parity.
                (2, rng.below(SLOTS / 2) * 2 + me as u64)
            };
            let (val, f) = match rng.below(8) {
                0 => (0, 0),
                n => {
                    let f = data(rng.below(DATA as u64));
                    let rw = if n < 5 { RW } else { 0 };
                    ((mem::pfn_to_mfn(f) << 12) | P | A | rw, f)
                }
            };
            *req = MmuUpdate {
                ptr: (table(t) << 12) + slot * 8,
                val,
            };
            let m = if t == 2 {
                &mut model.common
            } else {
                &mut model.own
            };
            m[slot as usize] = f;
        }
        let (rc, done) = rt::mmu_update(&batch, SELF);
        if rc != 0 || done != BATCH as u32 {
            if BAD_BATCHES[me].fetch_add(1, Ordering::SeqCst) < 3 {
                rt::println!("vCPU {me} round {round}: rc {rc}, done {done}");
            }
            continue;
        }
        if round % 4 != 3 {
            continue;
        }
        // Read back through the tables and through the mappings.
        rt::mmuext(MMUEXT_TLB_FLUSH_LOCAL, 0, 0);
        for (t, m) in [(own, &model.own), (2, &model.common)] {
            for slot in 0..SLOTS {
                if t == 2 && slot % 2 != me as u64 {
                    continue;
                }
                let want = m[slot as usize];
                let e = peek(mem::pfn_to_va(table(t)) + slot * 8);
                let ok = if want == 0 {
                    e & P == 0
                } else {
                    e & P != 0
                        && (e & ADDR) >> 12 == mem::pfn_to_mfn(want)
                        && peek(va(t, slot)) == tag(want)
                };
                if !ok {
                    bad_entries += 1;
                    if bad_entries <= 3 {
                        rt::println!(
                            "vCPU {me} round {round}: table {t} slot {slot}: entry {e:#x}, want frame {want:#x}"
                        );
                    }
                }
            }
        }
    }
    BAD_ENTRIES[me].store(bad_entries, Ordering::SeqCst);
}

/// vCPU 1's program.
#[unsafe(no_mangle)]
extern "C" fn smpu_ap_main() -> ! {
    while GO.load(Ordering::SeqCst) == 0 {
        core::hint::spin_loop();
    }
    work(1);
    ENDED[1].store(1, Ordering::SeqCst);
    loop {
        yield_now();
    }
}

#[unsafe(no_mangle)]
pub fn guest_main(_si: &'static StartInfo) {
    let mut c = Check::new();
    let mut frames = Frames::new();
    let mut data = [0u64; DATA];
    for (i, d) in data.iter_mut().enumerate() {
        *d = frames.take();
        poke(mem::pfn_to_va(*d), tag(*d));
        DATA_PFNS[i].store(*d, Ordering::SeqCst);
    }
    for (t, slot) in L3_SLOTS.iter().enumerate() {
        let (l2, l1) = (frames.take(), frames.take());
        TABLES[t].store(suite::map_range(l2, l1, *slot, &data), Ordering::SeqCst);
    }
    // vCPU 1 starts in kernel mode on the builder's tables.
    let top = &raw const smpu_ap_stack_top as u64;
    let mut ctx = [0u64; CTX_WORDS];
    ctx[CTX_FLAGS] = VGCF_IN_KERNEL;
    ctx[CTX_RIP] = smpu_ap_entry as *const () as u64;
    ctx[CTX_CS] = 0xe033;
    ctx[CTX_RFLAGS] = 0x1000;
    ctx[CTX_RSP] = top;
    ctx[CTX_SS] = 0xe02b;
    ctx[CTX_KERNEL_SS] = 0xe02b;
    ctx[CTX_KERNEL_SP] = top;
    ctx[CTX_CR3] = suite::builder_l4() << 12;
    c.eq(
        "initialise(1)",
        vcpu_op(VCPUOP_INITIALISE, 1, ctx.as_ptr() as u64),
        0,
    );
    c.eq("up(1)", vcpu_op(VCPUOP_UP, 1, 0), 0);
    GO.store(1, Ordering::SeqCst);
    work(0);
    ENDED[0].store(1, Ordering::SeqCst);
    let mut waited = 0u64;
    while ENDED[1].load(Ordering::SeqCst) == 0 && waited < 1_000_000 {
        yield_now();
        waited += 1;
    }
    c.eq("vCPU 1 finished", ENDED[1].load(Ordering::SeqCst) as i64, 1);
    for v in 0..2 {
        c.eq(
            "batches accepted whole",
            BAD_BATCHES[v].load(Ordering::SeqCst) as i64,
            0,
        );
        c.eq(
            "entries read back as written",
            BAD_ENTRIES[v].load(Ordering::SeqCst) as i64,
            0,
        );
    }
    // Each contested entry holds one of the values written to it: a read-only
    // present mapping of a tagged data frame.
    let common = TABLES[2].load(Ordering::SeqCst);
    for slot in CONTESTED {
        let e = peek(mem::pfn_to_va(common) + slot * 8);
        let f = (e & ADDR) >> 12;
        c.ok(
            "a contested entry holds a value written there",
            e & P != 0 && e & RW == 0 && data.iter().any(|d| mem::pfn_to_mfn(*d) == f),
        );
        c.eq(
            "a contested entry maps its frame",
            peek(va(2, slot)) as i64,
            tag(data
                .iter()
                .copied()
                .find(|d| mem::pfn_to_mfn(*d) == f)
                .unwrap_or(0)) as i64,
        );
    }
    c.finish();
}
