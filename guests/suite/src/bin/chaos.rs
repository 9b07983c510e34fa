//! A hostile guest: seeded, it issues random and adversarial hypercalls of every number
//! (through the hypercall page and, for numbers past it, the raw `syscall` entry), with
//! wild pointers (the hypervisor area, the canonical hole, its own page tables, the
//! hypercall page, unmapped addresses), huge and continuation-flagged counts, batches
//! that rewrite the entries mapping themselves, and faults and traps (#UD, #BP, #GP from
//! privileged instructions and I/O, #PF, `int $0x80`/`int $0x81`) for a bounded number
//! of steps. It prints its seed first; `--cmdline seed=N` picks another, `steps=N` the
//! length. Whatever the hypervisor answers, it goes on; the run must end with its own
//! shutdown (or a domain crash the VMM reports), never with a VMM error, a hang or a
//! leak (the audit after teardown).
#![no_std]
#![no_main]
// The hypercall numbers keep Xen's names (`HYPERVISOR_iret`), matched in patterns here.
#![allow(non_upper_case_globals)]

use core::sync::atomic::Ordering;

use rt::abi::StartInfo;
use rt::abi::hypercall::*;
use suite::{A, Frames, P, RW, traps};

/// A small, good-enough generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len() as u64) as usize]
    }
}

/// Hypercalls that would end or stall the run early are left out of the random mix:
/// `iret` (a random frame), `sched_op` (shutdown, block, poll), `set_trap_table` and
/// `set_callbacks`/`callback_op` (handlers at random addresses), `stack_switch`,
/// `fpu_taskswitch`. Every other number, known or not, is fair game.
fn ends_the_run(nr: u64) -> bool {
    matches!(
        nr,
        HYPERVISOR_iret
            | HYPERVISOR_sched_op
            | HYPERVISOR_sched_op_compat
            | HYPERVISOR_set_trap_table
            | HYPERVISOR_set_callbacks
            | HYPERVISOR_callback_op
            | HYPERVISOR_stack_switch
            | HYPERVISOR_fpu_taskswitch
    )
}

struct World {
    rng: Rng,
    /// A scratch page mapped read-write at `buf`, and the machine address of the L1
    /// entry that maps it (for self-referencing batches).
    buf: u64,
    buf_pte: u64,
    /// Its own L1 (read-only to it) and a data frame.
    l1_mfn: u64,
    data_mfn: u64,
}

impl World {
    /// An adversarial 64-bit value: pointers good and bad, counts small and huge.
    fn value(&mut self) -> u64 {
        let r = &mut self.rng;
        match r.below(16) {
            0 => 0,
            1 => u64::MAX,
            2 => r.below(8),
            3 => 0x7fff_ffff,
            4 => 0x8000_0000 | r.below(64), // continuation flag on a count
            5 => 0xffff_ffff,
            6 => self.buf + r.below(4096),
            7 => self.buf + 4096 - r.below(16), // runs off the end of the page
            8 => 0xffff_8000_0000_0000 + r.below(1 << 44), // hypervisor area
            9 => 0x0000_8000_0000_0000 + r.below(1 << 20), // canonical hole
            // Its own memory past what it runs on (the image, its stack and the frames
            // it took are below `spare`), or just past the end of what is mapped.
            10 | 11 => {
                let spare = rt::mem::first_free_pfn() + 16;
                rt::mem::pfn_to_va(spare + r.below(rt::mem::mapped_end_pfn() + 8 - spare))
            }
            12 => (self.l1_mfn << 12) | r.below(4),
            13 => (self.data_mfn << 12) | 0x67,
            14 => 0x1000_0000 + r.below(1 << 30), // unmapped low addresses
            _ => r.next(),
        }
    }

    /// Fills the scratch page: random words, requests aimed at its own mapping, or
    /// mmuext ops on its own tables.
    fn fill(&mut self) {
        let words = 512;
        let kind = self.rng.below(4);
        for i in 0..words {
            let v = match kind {
                0 => self.value(),
                // mmu_update requests: ptr = the entry mapping this page (or its
                // neighbours), val = something.
                1 if i % 2 == 0 => self.buf_pte + 8 * self.rng.below(3),
                1 => {
                    let f = self.rng.pick(&[self.data_mfn, self.l1_mfn, 0]);
                    (f << 12) | self.rng.pick(&[P | RW | A, P | A, 0, P | RW | A | 0x80])
                }
                // mmuext ops: cmd, then frames of its own.
                2 if i % 4 == 0 => self.rng.below(24),
                2 => {
                    let v = self.value();
                    self.rng.pick(&[self.l1_mfn, self.data_mfn, v])
                }
                _ => 0,
            };
            // SAFETY: `buf` is the scratch page, mapped read-write, 512 words.
            unsafe { (self.buf as *mut u64).add(i).write_volatile(v) };
        }
    }

    fn hypercall_step(&mut self) {
        let nr = if self.rng.below(8) == 0 {
            let past = 64 + self.rng.below(64);
            self.rng.pick(&[128, 255, 0x1_0000, u64::MAX, past])
        } else {
            self.rng.below(64)
        };
        if ends_the_run(nr) {
            return;
        }
        let mut a: [u64; 5] = core::array::from_fn(|_| self.value());
        match nr {
            // Remapping its own code or stack would end the run by self-destruction,
            // which tests nothing of the hypervisor: VA-taking calls aim at the
            // scratch page (or at addresses no mapping of its own can be).
            HYPERVISOR_update_va_mapping | HYPERVISOR_update_va_mapping_otherdomain => {
                let buf = self.buf;
                a[0] = self.rng.pick(&[buf, 0x0000_8000_0000_0000, u64::MAX, 0]);
            }
            // VCPUOP_down of its only vCPU would stop the domain for good, as on Xen.
            HYPERVISOR_vcpu_op if a[0] == 2 => return,
            // A multicall list read from anywhere else (zeroed memory is a list of
            // `set_trap_table(NULL)`) would disarm its handlers: lists come from the
            // scratch page, tamed.
            HYPERVISOR_multicall => {
                self.tame_multicall();
                a[0] = self.buf;
            }
            _ => {}
        }
        if nr < 128 {
            // SAFETY: the hypervisor validates every argument; the pointers are the
            // test. Only the scratch page and the hypervisor-checked areas are named as
            // writable, and the guest reads nothing it cannot afford to lose.
            let _ = unsafe { rt::hypercall(nr, a[0], a[1], a[2], a[3], a[4]) };
        } else {
            raw_syscall(nr, a);
        }
    }

    fn batch_step(&mut self) {
        let count = self
            .rng
            .pick(&[1u64, 2, 255, 256, 257, 1 << 20, 0x8000_0003]);
        let fd = self
            .rng
            .pick(&[0x7ff0u64, 0x7ff1, 0x7ff2, 0, 1, 2, u64::MAX]);
        let buf = self.buf;
        let pdone = self.rng.pick(&[0u64, buf + 4088, buf + 4095, 8]);
        let nr = self.rng.pick(&[
            HYPERVISOR_mmu_update,
            HYPERVISOR_mmuext_op,
            HYPERVISOR_multicall,
        ]);
        if nr == HYPERVISOR_multicall {
            self.tame_multicall();
        }
        // SAFETY: as in `hypercall_step`.
        let _ = unsafe { rt::hypercall(nr, self.buf, count, pdone, fd, 0) };
    }

    /// Multicall entries (64 bytes: op, result, six arguments) in the scratch page get
    /// the same limits as single calls: no call that ends the run, no `VCPUOP_down`;
    /// and none that remaps the scratch page itself (`update_va_mapping`,
    /// `mmu_update`), since the hypervisor reads each entry as it comes to it (as Xen
    /// does) and the rest of the list would then come from whatever frame is mapped
    /// there (a zeroed one reads as `set_trap_table(NULL)`).
    fn tame_multicall(&mut self) {
        let words = self.buf as *mut u64;
        for e in 0..64 {
            // SAFETY: entry `e` lies in the scratch page (64 entries of 8 words).
            unsafe {
                let op = words.add(8 * e).read_volatile();
                let arg0 = words.add(8 * e + 2);
                let remaps = matches!(
                    op,
                    HYPERVISOR_update_va_mapping
                        | HYPERVISOR_update_va_mapping_otherdomain
                        | HYPERVISOR_mmu_update
                );
                if ends_the_run(op)
                    || remaps
                    || (op == HYPERVISOR_vcpu_op && arg0.read_volatile() == 2)
                {
                    words.add(8 * e).write_volatile(HYPERVISOR_xen_version);
                }
                // An entry writing into the list (xen_version, memory_op, ... with a
                // pointer into it) would rewrite the entries after it.
                for k in 2..8 {
                    let arg = words.add(8 * e + k);
                    if (self.buf..self.buf + 4096).contains(&arg.read_volatile()) {
                        arg.write_volatile(0x1000_0000);
                    }
                }
            }
        }
    }

    fn mapping_step(&mut self) {
        // update_va_mapping of the scratch page: remapped, made read-only, unmapped,
        // pointed at its own L1 (refused), then put back.
        let va = self.buf;
        let vals = [
            (self.data_mfn << 12) | P | A,
            (self.l1_mfn << 12) | P | RW | A,
            0,
            (self.data_mfn << 12) | P | RW | A | 0x80,
        ];
        let v = self.rng.pick(&vals);
        let flags = self.rng.pick(&[0u64, 1, 2, 3, 5, 6, 7, u64::MAX]);
        let _ = rt::update_va_mapping(va, v, flags);
        let _ = rt::update_va_mapping(va, (self.data_mfn << 12) | P | RW | A, 2);
    }

    fn trap_step(&mut self) {
        let k = self.rng.below(8);
        // SAFETY: each instruction faults (or traps) into the handlers installed at
        // start, which skip it by the length set just before; none changes state the
        // guest relies on.
        unsafe {
            match k {
                0 => {
                    traps::SKIP.store(2, Ordering::SeqCst);
                    core::arch::asm!("ud2");
                }
                1 => {
                    traps::SKIP.store(0, Ordering::SeqCst);
                    core::arch::asm!("int3");
                }
                2 => {
                    traps::SKIP.store(1, Ordering::SeqCst);
                    core::arch::asm!("cli");
                }
                3 => {
                    traps::SKIP.store(1, Ordering::SeqCst);
                    core::arch::asm!("in al, dx", in("dx") self.rng.below(0x10000) as u16, out("al") _);
                }
                4 => {
                    traps::SKIP.store(2, Ordering::SeqCst);
                    core::arch::asm!("rdmsr", in("ecx") self.rng.next() as u32, out("eax") _, out("edx") _);
                }
                5 => {
                    traps::SKIP.store(2, Ordering::SeqCst);
                    core::arch::asm!("int 0x81");
                }
                6 => {
                    traps::SKIP.store(0, Ordering::SeqCst);
                    core::arch::asm!("int 0x80");
                }
                _ => {
                    // A read of an unmapped address: 3 bytes (mov (%rax),%rax).
                    traps::SKIP.store(3, Ordering::SeqCst);
                    core::arch::asm!(
                        "mov rax, [rax]",
                        inout("rax") 0x1000_0000u64 + (self.rng.below(1 << 18) << 12) => _,
                    );
                }
            }
        }
    }
}

/// A hypercall through the raw `syscall` entry (Xen's 64-bit PV ABI), for numbers the
/// hypercall page has no slot for.
fn raw_syscall(nr: u64, a: [u64; 5]) {
    // SAFETY: as for `rt::hypercall`; `syscall` clobbers RCX and R11.
    unsafe {
        core::arch::asm!(
            "syscall",
            inlateout("rax") nr => _,
            inlateout("rdi") a[0] => _, inlateout("rsi") a[1] => _,
            inlateout("rdx") a[2] => _, inlateout("r10") a[3] => _, inlateout("r8") a[4] => _,
            out("rcx") _, out("r11") _,
        );
    }
}

#[unsafe(no_mangle)]
pub fn guest_main(si: &'static StartInfo) {
    let seed = rt::cmdline_arg(si, b"seed").unwrap_or(1);
    let steps = rt::cmdline_arg(si, b"steps").unwrap_or(4000);
    rt::println!("chaos seed={seed} steps={steps}");
    if traps::install() != 0 {
        rt::finish(Some("chaos: set_trap_table"));
    }
    let mut frames = Frames::new();
    let (l2, l1, data) = (frames.take(), frames.take(), frames.take());
    let l1m = suite::map_range(l2, l1, 1, &[data]);
    let buf = 1u64 << 30;
    let mut w = World {
        rng: Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1),
        buf,
        buf_pte: l1m << 12,
        l1_mfn: l1m,
        data_mfn: rt::mem::pfn_to_mfn(data),
    };
    let mut done = 0u64;
    while done < steps {
        w.fill();
        match w.rng.below(10) {
            0..=4 => w.hypercall_step(),
            5..=6 => w.batch_step(),
            7 => w.mapping_step(),
            _ => w.trap_step(),
        }
        // Whatever happened to the scratch mapping and the handlers (a list that
        // rewrites itself through a pointer nested in an argument can still reach
        // `set_trap_table(NULL)`), put them back for the next step.
        let _ = rt::update_va_mapping(buf, (w.data_mfn << 12) | P | RW | A, 2);
        if traps::install() != 0 {
            rt::finish(Some("chaos: set_trap_table again"));
        }
        done += 1;
    }
    rt::println!(
        "chaos: {done} steps, {} exceptions handled",
        traps::COUNT.load(Ordering::SeqCst)
    );
    rt::finish(None);
}
