//! Two vCPUs, as a PV kernel brings up its secondary CPU: `VCPUOP_initialise` refusals
//! (no such vCPU, an unreadable context, a non-canonical RIP, a root that is not a
//! page table, a user-mode start without a user root), then vCPU 1's context (-EEXIST a
//! second time) and `VCPUOP_up`; IPIs both ways, to a vCPU spinning in guest code
//! (it must be kicked) and to one blocked in `SCHEDOP_block`; a remap flushed for
//! vCPU 1 with `MMUEXT_INVLPG_MULTI` and an unmap flushed with `UVMF_ALL`, each seen
//! by vCPU 1 at once (the new frame's contents, then a page fault); vCPU 1 downing
//! itself and resuming after its hypercall when brought up again; vCPU 1 downed from
//! outside while it spins; and the last vCPU's `VCPUOP_down` powering the domain off.
#![no_std]
#![no_main]

use core::arch::{asm, global_asm};
use core::sync::atomic::{AtomicU8, AtomicU64, Ordering};

use rt::abi::hypercall::{HYPERVISOR_sched_op, HYPERVISOR_vcpu_op};
use rt::abi::mmu::{MMUEXT_INVLPG_MULTI, UVMF_ALL, UVMF_INVLPG, UVMF_NONE};
use rt::abi::{MmuextOp, StartInfo};
use rt::{mem, poke};
use suite::events::{self, MASK, byte, evtchn, word};
use suite::traps::{self, expect_one};
use suite::{A, Check, Frames, P, RW, SELF, err};

const VCPUOP_INITIALISE: u64 = 0;
const VCPUOP_UP: u64 = 1;
const VCPUOP_DOWN: u64 = 2;
const VCPUOP_IS_UP: u64 = 3;
const VCPUOP_GET_RUNSTATE_INFO: u64 = 4;
const EVTCHNOP_SEND: u64 = 4;
const EVTCHNOP_BIND_IPI: u64 = 7;
const SCHEDOP_YIELD: u64 = 0;
const SCHEDOP_BLOCK: u64 = 1;
const SCHEDOP_POLL: u64 = 3;

/// Words of `struct vcpu_guest_context` (5168 bytes).
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
const CTX_EVENT_CALLBACK: usize = 639;
const VGCF_IN_KERNEL: u64 = 1 << 2;

/// What vCPU 0 asks vCPU 1 to do next (a sequence number above the command's byte, so
/// each request differs from the last), and vCPU 1's answer (the same value).
static CMD: AtomicU64 = AtomicU64::new(0);
static ACK: AtomicU64 = AtomicU64::new(0);
static SEQ: AtomicU64 = AtomicU64::new(0);
/// A value vCPU 1 reports (what it read, the vector it took).
static RESULT: AtomicU64 = AtomicU64::new(0);
/// Set by vCPU 1 when it returns from downing itself.
static BACK: AtomicU64 = AtomicU64::new(0);
/// Counts while vCPU 1 spins.
static SPINS: AtomicU64 = AtomicU64::new(0);
/// Set once vCPU 1 runs.
static ALIVE: AtomicU64 = AtomicU64::new(0);
/// Events seen, per vCPU and port (ports below 64), and which vCPU each port is for.
static SEEN: [[AtomicU64; 64]; 2] = [const { [const { AtomicU64::new(0) }; 64] }; 2];
static PORT_VCPU: [AtomicU8; 64] = [const { AtomicU8::new(0xff) }; 64];
/// The VA the flush checks use.
static PROBE_VA: AtomicU64 = AtomicU64::new(0);

const READ: u64 = 1;
const SEND: u64 = 2;
const BLOCK: u64 = 3;
const READ_FAULT: u64 = 4;
const DOWN_SELF: u64 = 5;
const SPIN: u64 = 6;
const POLL: u64 = 7;

// vCPU 1's entry (RSP is its stack's top) and its stack.
global_asm!(
    r#"
    .globl smp_ap_entry
smp_ap_entry:
    and $-16, %rsp
    call ap_main
    ud2

    .section .bss.smp_ap_stack, "aw", @nobits
    .balign 4096
    .space 32768
    .globl smp_ap_stack_top
smp_ap_stack_top:
    "#,
    options(att_syntax)
);

unsafe extern "C" {
    fn smp_ap_entry();
    static smp_ap_stack_top: u8;
}

/// The event callback of vCPU `vcpu`: its own `vcpu_info`, and only the ports bound
/// to it (the bitmaps are shared).
#[unsafe(no_mangle)]
extern "C" fn suite_evt_handler(vcpu: u64) {
    events::scan(vcpu, |port| {
        let mine = PORT_VCPU
            .get(port)
            .is_some_and(|v| u64::from(v.load(Ordering::SeqCst)) == vcpu);
        if mine {
            SEEN[vcpu as usize][port].fetch_add(1, Ordering::SeqCst);
        }
        mine
    });
}

fn vcpu_op(cmd: u64, vcpu: u64, arg: u64) -> i64 {
    // SAFETY: `arg` points at the command's argument block (or is a deliberate bad
    // pointer the hypervisor must refuse).
    unsafe { rt::hypercall(HYPERVISOR_vcpu_op, cmd, vcpu, arg, 0, 0) }
}

fn sched_op(cmd: u64) -> i64 {
    // SAFETY: neither command takes an argument block.
    unsafe { rt::hypercall(HYPERVISOR_sched_op, cmd, 0, 0, 0, 0) }
}

/// An IPI port for `vcpu`: the port, or the negative errno.
fn bind_ipi(vcpu: u32) -> i64 {
    let mut arg = [vcpu, 0];
    let rc = evtchn(EVTCHNOP_BIND_IPI, &mut arg);
    if rc != 0 {
        return rc;
    }
    if let Some(p) = PORT_VCPU.get(arg[1] as usize) {
        p.store(vcpu as u8, Ordering::SeqCst);
    }
    i64::from(arg[1])
}

fn send(port: u32) -> i64 {
    evtchn(EVTCHNOP_SEND, &mut [port])
}

fn seen(vcpu: usize, port: u32) -> u64 {
    SEEN[vcpu][port as usize].load(Ordering::SeqCst)
}

/// Reads `va` with a 3-byte instruction (`mov (%rdi), %rax`), for a fault handler to
/// skip.
fn probe(va: u64) -> u64 {
    let v: u64;
    // SAFETY: a plain load; a fault goes to the trap table's #PF handler, which moves
    // RIP past the instruction.
    unsafe {
        asm!("mov rax, [rdi]", in("rdi") va, out("rax") v, options(nostack, readonly));
    }
    v
}

/// Waits, yielding, until `done` holds; false after about a hundred thousand yields.
fn wait_yielding(done: impl Fn() -> bool) -> bool {
    for _ in 0..100_000 {
        if done() {
            return true;
        }
        sched_op(SCHEDOP_YIELD);
    }
    done()
}

/// Gives vCPU 1 command `op`; returns the request to wait for.
fn tell(op: u64) -> u64 {
    let cmd = (SEQ.fetch_add(1, Ordering::SeqCst) + 1) << 8 | op;
    CMD.store(cmd, Ordering::SeqCst);
    cmd
}

/// Whether vCPU 1 has answered request `cmd`.
fn answered(cmd: u64) -> bool {
    ACK.load(Ordering::SeqCst) == cmd
}

/// Gives vCPU 1 command `op` and waits (yielding) for its answer.
fn ask(op: u64) -> bool {
    let cmd = tell(op);
    wait_yielding(|| answered(cmd))
}

/// vCPU 1's program: commands from vCPU 0, one at a time.
#[unsafe(no_mangle)]
extern "C" fn ap_main() -> ! {
    // Events on: the toolstack leaves them masked.
    byte(64 + 1).store(0, Ordering::SeqCst);
    traps::install();
    ALIVE.store(1, Ordering::SeqCst);
    let mut last = 0;
    loop {
        let cmd = CMD.load(Ordering::SeqCst);
        if cmd == last {
            core::hint::spin_loop();
            continue;
        }
        last = cmd;
        match cmd & 0xff {
            READ => RESULT.store(probe(PROBE_VA.load(Ordering::SeqCst)), Ordering::SeqCst),
            SEND => {
                let port = RESULT.load(Ordering::SeqCst) as u32;
                RESULT.store(send(port) as u64, Ordering::SeqCst);
            }
            BLOCK => {
                let port = RESULT.load(Ordering::SeqCst) as u32;
                let mut blocks = 0;
                while seen(1, port) == 0 && blocks < 1000 {
                    sched_op(SCHEDOP_BLOCK);
                    blocks += 1;
                }
                RESULT.store(seen(1, port), Ordering::SeqCst);
            }
            READ_FAULT => {
                let (v, e, _, _) = expect_one(3, || {
                    probe(PROBE_VA.load(Ordering::SeqCst));
                });
                RESULT.store(v << 32 | e, Ordering::SeqCst);
            }
            POLL => {
                // A spinlock waiter: poll one masked port, no timeout.
                let port = RESULT.load(Ordering::SeqCst) as u32;
                let arg = [&port as *const u32 as u64, 1, 0];
                // SAFETY: the poll block and the port live for the call.
                let rc = unsafe {
                    rt::hypercall(
                        HYPERVISOR_sched_op,
                        SCHEDOP_POLL,
                        arg.as_ptr() as u64,
                        0,
                        0,
                        0,
                    )
                };
                RESULT.store(rc as u64, Ordering::SeqCst);
            }
            DOWN_SELF => {
                ACK.store(cmd, Ordering::SeqCst);
                let rc = vcpu_op(VCPUOP_DOWN, 1, 0);
                BACK.store(1 + rc as u64, Ordering::SeqCst);
                continue;
            }
            SPIN => {
                ACK.store(cmd, Ordering::SeqCst);
                loop {
                    SPINS.fetch_add(1, Ordering::SeqCst);
                }
            }
            _ => {}
        }
        ACK.store(cmd, Ordering::SeqCst);
    }
}

#[unsafe(no_mangle)]
pub fn guest_main(si: &'static StartInfo) {
    let mut c = Check::new();
    let mut frames = Frames::new();
    events::map_shared_info(&mut frames, si.shared_info >> 12);
    let rc = events::register_callback();
    c.eq("event callback", rc, 0);
    byte(1).store(0, Ordering::SeqCst);

    // Who is there.
    c.eq("is_up(0)", vcpu_op(VCPUOP_IS_UP, 0, 0), 1);
    c.eq(
        "is_up(1) before it is brought up",
        vcpu_op(VCPUOP_IS_UP, 1, 0),
        0,
    );
    c.eq(
        "is_up(2): no such vCPU",
        vcpu_op(VCPUOP_IS_UP, 2, 0),
        err(rt::abi::Errno::ENOENT),
    );
    c.eq(
        "up(1) before initialise",
        vcpu_op(VCPUOP_UP, 1, 0),
        err(rt::abi::Errno::EINVAL),
    );

    // IPI ports: one for each vCPU (vCPU 1's may be bound while it is down).
    let p0 = bind_ipi(0);
    let p1 = bind_ipi(1);
    c.ok("IPI port for vCPU 0", p0 > 0);
    c.ok("IPI port for vCPU 1", p1 > 0);
    c.eq(
        "IPI port for vCPU 5",
        bind_ipi(5),
        err(rt::abi::Errno::ENOENT),
    );
    let (p0, p1) = (p0 as u32, p1 as u32);

    // vCPU 1's context.
    let top = &raw const smp_ap_stack_top as u64;
    let mut ctx = [0u64; CTX_WORDS];
    ctx[CTX_FLAGS] = VGCF_IN_KERNEL;
    ctx[CTX_RIP] = smp_ap_entry as *const () as u64;
    ctx[CTX_CS] = 0xe033;
    ctx[CTX_RFLAGS] = 0x1000;
    ctx[CTX_RSP] = top;
    ctx[CTX_SS] = 0xe02b;
    ctx[CTX_KERNEL_SS] = 0xe02b;
    ctx[CTX_KERNEL_SP] = top;
    ctx[CTX_CR3] = suite::builder_l4() << 12;
    ctx[CTX_EVENT_CALLBACK] = events::callback(1);
    let einval = err(rt::abi::Errno::EINVAL);
    let init = |ctx: &[u64; CTX_WORDS]| vcpu_op(VCPUOP_INITIALISE, 1, ctx.as_ptr() as u64);
    c.eq(
        "initialise(2): no such vCPU",
        vcpu_op(VCPUOP_INITIALISE, 2, ctx.as_ptr() as u64),
        err(rt::abi::Errno::ENOENT),
    );
    c.eq(
        "initialise from an unmapped context",
        vcpu_op(VCPUOP_INITIALISE, 1, 0x7fff_ffff_0000),
        err(rt::abi::Errno::EFAULT),
    );
    let mut bad = ctx;
    bad[CTX_RIP] = 0x8000_0000_0000_0000;
    c.eq("initialise: non-canonical RIP", init(&bad), einval);
    let mut bad = ctx;
    bad[CTX_CR3] = mem::pfn_to_mfn(frames.take()) << 12;
    c.eq(
        "initialise: a root that cannot be an L4",
        init(&bad),
        einval,
    );
    let mut bad = ctx;
    bad[CTX_FLAGS] = 0;
    c.eq(
        "initialise: user mode without a user root",
        init(&bad),
        einval,
    );
    c.eq("is_up(1) after refusals", vcpu_op(VCPUOP_IS_UP, 1, 0), 0);
    c.eq("initialise(1)", init(&ctx), 0);
    c.eq(
        "initialise(1) again",
        init(&ctx),
        err(rt::abi::Errno::EEXIST),
    );
    c.eq(
        "initialise(0)",
        vcpu_op(VCPUOP_INITIALISE, 0, ctx.as_ptr() as u64),
        err(rt::abi::Errno::EEXIST),
    );
    c.eq(
        "is_up(1) initialised, not up",
        vcpu_op(VCPUOP_IS_UP, 1, 0),
        0,
    );
    c.eq("up(1)", vcpu_op(VCPUOP_UP, 1, 0), 0);
    c.eq("is_up(1)", vcpu_op(VCPUOP_IS_UP, 1, 0), 1);
    c.eq("up(1) again: nothing to do", vcpu_op(VCPUOP_UP, 1, 0), 0);
    c.ok(
        "vCPU 1 runs",
        wait_yielding(|| ALIVE.load(Ordering::SeqCst) == 1),
    );

    // An IPI to vCPU 0 while it spins in its own code: it must be kicked out to take
    // the upcall (no hypercall of its own ends the spin).
    RESULT.store(u64::from(p0), Ordering::SeqCst);
    let sent = tell(SEND);
    let mut spun = 0u64;
    while seen(0, p0) == 0 && spun < 4_000_000_000 {
        core::hint::spin_loop();
        spun += 1;
    }
    c.eq("IPI to a spinning vCPU 0 delivered", seen(0, p0) as i64, 1);
    c.ok("vCPU 1's send", wait_yielding(|| answered(sent)));
    c.eq(
        "vCPU 1's send returned 0",
        RESULT.load(Ordering::SeqCst) as i64,
        0,
    );

    // An IPI to vCPU 1 blocked in SCHEDOP_block: it wakes and takes it.
    RESULT.store(u64::from(p1), Ordering::SeqCst);
    let blocked = tell(BLOCK);
    for _ in 0..200 {
        sched_op(SCHEDOP_YIELD);
    }
    c.eq("send to vCPU 1's port", send(p1), 0);
    c.ok("blocked vCPU 1 woke", wait_yielding(|| answered(blocked)));
    c.eq(
        "vCPU 1 saw its IPI once",
        RESULT.load(Ordering::SeqCst) as i64,
        1,
    );
    c.eq("vCPU 0 saw none of vCPU 1's", seen(0, p1) as i64, 0);

    // vCPU 1 polls a masked port of its own (as a spinlock waiter does); vCPU 0's send
    // wakes it, the mask notwithstanding, and no upcall is taken for it.
    let p2 = bind_ipi(1);
    c.ok("a second port for vCPU 1", p2 > 0);
    let p2 = p2 as u32;
    word(MASK).fetch_or(1 << p2, Ordering::SeqCst);
    RESULT.store(u64::from(p2), Ordering::SeqCst);
    let polled = tell(POLL);
    for _ in 0..200 {
        sched_op(SCHEDOP_YIELD);
    }
    c.ok("vCPU 1 still polling", !answered(polled));
    c.eq("send to the masked port", send(p2), 0);
    c.ok("the poll returned", wait_yielding(|| answered(polled)));
    c.eq("poll's result", RESULT.load(Ordering::SeqCst) as i64, 0);
    c.eq("no upcall for the masked port", seen(1, p2) as i64, 0);

    // Flushes for vCPU 1: it reads a VA, vCPU 0 repoints it, flushes vCPU 1's TLB
    // (INVLPG_MULTI naming vCPU 1 only), and vCPU 1 must read the new frame.
    let (f, g) = (frames.take(), frames.take());
    poke(mem::pfn_to_va(f), 0xf00d_0001);
    poke(mem::pfn_to_va(g), 0xf00d_0002);
    let va = mem::pfn_to_va(frames.take());
    PROBE_VA.store(va, Ordering::SeqCst);
    let pte = |pfn: u64| (mem::pfn_to_mfn(pfn) << 12) | P | RW | A;
    c.eq("map f", rt::update_va_mapping(va, pte(f), UVMF_INVLPG), 0);
    c.ok("vCPU 1 reads", ask(READ));
    c.eq(
        "vCPU 1 reads f",
        RESULT.load(Ordering::SeqCst) as i64,
        0xf00d_0001,
    );
    c.eq(
        "repoint to g, no flush",
        rt::update_va_mapping(va, pte(g), UVMF_NONE),
        0,
    );
    let mask = [2u64];
    let op = MmuextOp::new(MMUEXT_INVLPG_MULTI, va, mask.as_ptr() as u64);
    let (rc, done) = rt::mmuext_op(&[op], SELF);
    c.eq("INVLPG_MULTI for vCPU 1", rc, 0);
    c.eq("INVLPG_MULTI done", i64::from(done), 1);
    c.ok("vCPU 1 reads again", ask(READ));
    c.eq(
        "vCPU 1 reads g after the flush",
        RESULT.load(Ordering::SeqCst) as i64,
        0xf00d_0002,
    );
    // An unmap flushed everywhere: vCPU 1's read faults.
    c.eq(
        "unmap, UVMF_ALL",
        rt::update_va_mapping(va, 0, UVMF_INVLPG | UVMF_ALL),
        0,
    );
    c.ok("vCPU 1 probes", ask(READ_FAULT));
    let r = RESULT.load(Ordering::SeqCst);
    c.eq("vCPU 1 takes a #PF", (r >> 32) as i64, 14);
    c.eq("a read of a not-present page", (r & 0xffff_ffff) as i64, 0);

    // vCPU 1 downs itself: is_up turns 0, its runstate reads offline, and it resumes
    // after its hypercall (rax 0) when brought up again.
    tell(DOWN_SELF);
    c.ok(
        "vCPU 1 went down",
        wait_yielding(|| vcpu_op(VCPUOP_IS_UP, 1, 0) == 0),
    );
    let mut runstate = [0u64; 6];
    c.eq(
        "runstate of vCPU 1",
        vcpu_op(VCPUOP_GET_RUNSTATE_INFO, 1, runstate.as_mut_ptr() as u64),
        0,
    );
    c.eq("vCPU 1 offline", runstate[0] as u32 as i64, 3);
    for _ in 0..200 {
        sched_op(SCHEDOP_YIELD);
    }
    c.eq("vCPU 1 stays down", BACK.load(Ordering::SeqCst) as i64, 0);
    c.eq("up(1) after down", vcpu_op(VCPUOP_UP, 1, 0), 0);
    c.ok(
        "vCPU 1 resumed",
        wait_yielding(|| BACK.load(Ordering::SeqCst) != 0),
    );
    c.eq("its down returned 0", BACK.load(Ordering::SeqCst) as i64, 1);

    // vCPU 1 downed from outside while it spins: it stops counting.
    c.ok("vCPU 1 spins", ask(SPIN));
    c.ok(
        "spinning",
        wait_yielding(|| SPINS.load(Ordering::SeqCst) > 1000),
    );
    c.eq("down(1) from vCPU 0", vcpu_op(VCPUOP_DOWN, 1, 0), 0);
    c.eq("is_up(1) after down(1)", vcpu_op(VCPUOP_IS_UP, 1, 0), 0);
    // Xen's down of another vCPU is asynchronous: wait until the count settles, that
    // is, stays the same over ten windows in a row (a host that deschedules vCPU 1's
    // thread for one window must not pass for a stopped vCPU).
    let mut stopped = SPINS.load(Ordering::SeqCst);
    let mut calm = 0;
    for _ in 0..2000 {
        for _ in 0..20 {
            sched_op(SCHEDOP_YIELD);
        }
        let now = SPINS.load(Ordering::SeqCst);
        if now == stopped {
            calm += 1;
            if calm == 10 {
                break;
            }
        } else {
            calm = 0;
        }
        stopped = now;
    }
    for _ in 0..500 {
        sched_op(SCHEDOP_YIELD);
    }
    c.eq(
        "vCPU 1 no longer runs",
        SPINS.load(Ordering::SeqCst) as i64,
        stopped as i64,
    );
    c.eq("vCPU 0 still up", vcpu_op(VCPUOP_IS_UP, 0, 0), 1);
    // The last vCPU going down powers the domain off (after the verdict).
    c.finish_with(|| {
        vcpu_op(VCPUOP_DOWN, 0, 0);
    });
}
