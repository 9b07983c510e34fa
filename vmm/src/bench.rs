//! `pvmmu bench`: guest launch to shutdown for the demo guest, and end-to-end cost of
//! mmu_update batches of 1, 8, 64 and 512 L1 remaps from a guest, each followed by the
//! TLB flush a kernel makes (and the host-side invalidation it causes), next to the
//! VMM's own cost and the exit cost, all from the same run.
//!
//! The formula for a batch round (one `mmu_update` of N remaps, one `mmuext_op`
//! `TLB_FLUSH_LOCAL`), per update:
//!
//! ```text
//! end to end      = interval between consecutive batches / N   (measured)
//! bound           = (served(batch) + served(flush) + 2 * exit) / N
//! exit            = null-hypercall interval - served(null hypercall)
//! ```
//!
//! `served` is the time the VMM spends on a hypercall from its exit to its return
//! (library, request reading, host invalidation); `exit` is what a hypercall costs
//! outside it (KVM's exit and re-entry, the guest's side of the call), counted once per
//! hypercall; what the bound leaves out is the guest's own work between calls (filling
//! the request array).

use std::sync::atomic::AtomicBool;
use std::time::Instant;

use crate::guests;
use crate::vm::{GuestExit, HypercallTiming, Vm, VmConfig, VmError};

/// Batch sizes the bench guest issues.
pub const SIZES: [u64; 4] = [1, 8, 64, 512];

/// Results for one batch size (all per update, ns).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BatchFigures {
    /// Entries per mmu_update.
    pub size: u64,
    /// End to end: interval between consecutive batch rounds (the batch and its
    /// flush, two hypercalls) divided by the batch size.
    pub end_to_end_ns: f64,
    /// The `mmu_update`'s time in the VMM (the library and reading the requests).
    pub library_ns: f64,
    /// The flush's time in the VMM, host-side invalidation included.
    pub flush_ns: f64,
    /// Host-side invalidation within the round.
    pub invalidation_ns: f64,
}

/// All figures of one `pvmmu bench`.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchReport {
    /// Demo guest: VM creation to shutdown, median, ms.
    pub launch_ms: f64,
    /// One hypercall round trip (null hypercall), median, ns.
    pub exit_ns: f64,
    /// The same less the VMM's serving of it: the exit itself, median, ns.
    pub pure_exit_ns: f64,
    /// An exception delivered to the guest's handler and returned from with `iret`,
    /// median, ns.
    pub bounce_ns: f64,
    /// Per batch size.
    pub batches: Vec<BatchFigures>,
    /// The guest's own TSC timings (medians), when it printed them.
    pub ticks: Option<GuestTicks>,
    /// The kernel patterns, in the guest's order.
    pub patterns: Vec<PatternFigures>,
    /// The library alone on the same batch shape, in this process (the baseline the
    /// in-VMM figure is compared with).
    pub baseline: Baseline,
}

/// The library alone on a batch of 512 L1 remaps (each entry moved to another writable
/// frame, each batch followed by a TLB flush, as the bench guest's rounds do), from a
/// slice, in the bench's own process: median ns per update.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Baseline {
    /// `Machine::mmu_update`.
    pub exclusive_ns: f64,
    /// `SharedMachine::mmu_update` (the path the VMM's `mmu_update` exits take).
    pub shared_ns: f64,
}

/// Measures [`Baseline`]: `rounds` batches each way, alternating between two sets of
/// target frames so that every request moves its entry.
pub fn library_baseline(rounds: usize) -> Result<Baseline, BenchError> {
    use pvmmu::{Caller, DomainConfig, Machine, MachineConfig, Mfn, SharedMachine};
    use pvmmu_abi::mmu::{MMUEXT_PIN_L1_TABLE, MMUEXT_TLB_FLUSH_LOCAL};
    use pvmmu_abi::{DOMID_SELF, MmuUpdate, MmuextOp};
    use vm_memory::{GuestAddress, GuestMemoryMmap};
    const TABLE: u64 = 0x10;
    const DATA: u64 = 0x100;
    let setup = |e: String| BenchError::Baseline(e);
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 4 << 20)])
        .map_err(|e| setup(e.to_string()))?;
    let mut m = Machine::new(mem, MachineConfig::default()).map_err(|e| setup(e.to_string()))?;
    m.create_domain(DomainConfig::new(1))
        .map_err(|e| setup(e.to_string()))?;
    m.assign_frames(1, (TABLE..0x400).map(Mfn))
        .map_err(|e| setup(e.to_string()))?;
    let c = Caller::new(1, 0);
    let fd = u32::from(DOMID_SELF);
    let pin = [MmuextOp::new(MMUEXT_PIN_L1_TABLE, TABLE, 0)];
    let o = m.mmuext_op(c, &pin, fd).map_err(|e| setup(e.to_string()))?;
    if o.result.is_err() {
        return Err(setup(format!("pin: {o:?}")));
    }
    let reqs: [Vec<MmuUpdate>; 2] = [1u64, 2].map(|off| {
        (0..512u64)
            .map(|i| MmuUpdate {
                ptr: (TABLE << 12) + i * 8,
                val: ((DATA + i + off) << 12) | 0x23, // P | RW | A
            })
            .collect()
    });
    // Each round is timed alone and followed, untimed, by the TLB flush the guest's
    // rounds make (which also empties the domain's stale-TLB lists, as in the VMM).
    let flush = [MmuextOp::new(MMUEXT_TLB_FLUSH_LOCAL, 0, 0)];
    let time = |f: &mut dyn FnMut(&[MmuUpdate]) -> Option<std::time::Duration>| {
        let mut per = Vec::with_capacity(rounds);
        for k in 0..rounds {
            let took = f(&reqs[k % 2]).ok_or(setup("a baseline batch was refused".into()))?;
            per.push(took.as_nanos() as f64 / 512.0);
        }
        Ok::<f64, BenchError>(median(per))
    };
    let exclusive_ns = time(&mut |r| {
        let start = Instant::now();
        let ok = m
            .mmu_update(c, r, fd)
            .is_ok_and(|o| o.done == 512 && o.result.is_ok());
        let took = start.elapsed();
        let flushed = m.mmuext_op(c, &flush, fd).is_ok_and(|o| o.result.is_ok());
        (ok && flushed).then_some(took)
    })?;
    let shared = SharedMachine::new(m);
    let shared_ns = time(&mut |r| {
        let start = Instant::now();
        let ok = shared
            .mmu_update(c, r, fd)
            .is_ok_and(|o| o.done == 512 && o.result.is_ok());
        let took = start.elapsed();
        let flushed = shared
            .lock()
            .mmuext_op(c, &flush, fd)
            .is_ok_and(|o| o.result.is_ok());
        (ok && flushed).then_some(took)
    })?;
    Ok(Baseline {
        exclusive_ns,
        shared_ns,
    })
}

/// One kernel pattern of the bench guest: what one operation costs end to end (median
/// interval between consecutive operations, exit included), inside the VMM, and in
/// host-side invalidation.
#[derive(Debug, Clone, PartialEq)]
pub struct PatternFigures {
    /// What it is.
    pub name: &'static str,
    /// End to end per operation, ns.
    pub end_to_end_ns: f64,
    /// Served in the VMM per operation (all its hypercalls), ns.
    pub served_ns: f64,
    /// Host-side invalidation per operation, ns.
    pub invalidation_ns: f64,
}

/// The bench guest's phase marker (`xen_version(0, MARKER + k)`).
const MARKER: u64 = 0xbe00;
/// The patterns, by phase: name, and the hypercall that starts each operation.
const PATTERNS: [(&str, u64); 4] = [
    ("hook-in: one non-leaf entry, not present -> present", 1),
    ("replace: one present non-leaf entry -> another L1", 1),
    ("pin + unpin of a fresh L1", 26),
    ("remap storm: one L1 remap + INVLPG", 1),
];

/// The kernel patterns from the bench guest's timings.
fn patterns(t: &[HypercallTiming]) -> Vec<PatternFigures> {
    let xv = pvmmu_abi::hypercall::HYPERVISOR_xen_version;
    let mark = |k: u64| t.iter().position(|h| h.nr == xv && h.count == MARKER + k);
    let mut out = Vec::new();
    for (k, (name, first)) in PATTERNS.iter().enumerate() {
        let (Some(a), Some(b)) = (mark(k as u64), mark(k as u64 + 1)) else {
            continue;
        };
        let phase = &t[a + 1..b];
        let starts: Vec<usize> = (0..phase.len())
            .filter(|&i| phase[i].nr == *first)
            .collect();
        // For pin + unpin, an operation starts at every other mmuext_op.
        let starts: Vec<usize> = if *first == 26 {
            starts.into_iter().step_by(2).collect()
        } else {
            starts
        };
        let mut gaps = Vec::new();
        let mut served = Vec::new();
        let mut inval = Vec::new();
        for w in starts.windows(2) {
            gaps.push((phase[w[1]].at - phase[w[0]].at).as_nanos() as f64);
            let ops = &phase[w[0]..w[1]];
            served.push(ops.iter().map(|h| h.served.as_nanos() as f64).sum());
            inval.push(ops.iter().map(|h| h.invalidation.as_nanos() as f64).sum());
        }
        out.push(PatternFigures {
            name,
            end_to_end_ns: median(gaps),
            served_ns: median(served),
            invalidation_ns: median(inval),
        });
    }
    out
}

/// What the bench guest timed with its own TSC, in ticks (medians of its rounds).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GuestTicks {
    /// A null hypercall (the exit cost).
    pub exit: f64,
    /// A call of the ring-0 probe: an exception into ring 0 and straight back, no exit
    /// (the floor of any exception round trip through ring 0 on this host).
    pub probe: f64,
    /// An exception bounced to the guest's handler and returned from with `iret`.
    pub bounce: f64,
}

impl GuestTicks {
    /// Parses the guest's `bench-ticks exit=E probe=P bounce=B` line in `console`.
    ///
    /// ```
    /// let t = vmm::bench::GuestTicks::parse("x\nbench-ticks exit=100 probe=46 bounce=250\n").unwrap();
    /// assert_eq!((t.exit, t.probe, t.bounce), (100.0, 46.0, 250.0));
    /// assert!(vmm::bench::GuestTicks::parse("bench-ticks exit=1").is_none());
    /// ```
    pub fn parse(console: &str) -> Option<GuestTicks> {
        let line = console
            .lines()
            .find_map(|l| l.trim().strip_prefix("bench-ticks "))?;
        let field = |name: &str| -> Option<f64> {
            line.split(' ')
                .find_map(|w| w.strip_prefix(name)?.strip_prefix('='))?
                .parse()
                .ok()
        };
        Some(GuestTicks {
            exit: field("exit")?,
            probe: field("probe")?,
            bounce: field("bounce")?,
        })
    }
}

/// A console sink that keeps what the guest printed.
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut v) = self.0.lock() {
            v.extend_from_slice(buf);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl BenchReport {
    /// The bound of a batch round per update: what the VMM served (batch and flush)
    /// plus one exit per hypercall (two), divided by the batch size (see the module
    /// documentation).
    pub fn bound_ns(&self, b: &BatchFigures) -> f64 {
        b.library_ns + b.flush_ns + 2.0 * self.pure_exit_ns / b.size as f64
    }

    /// At batch 512: end to end over the bound, and whether that is within 1.5x.
    pub fn target_512(&self) -> Option<(f64, bool)> {
        let b = self.batches.iter().find(|b| b.size == 512)?;
        let ratio = b.end_to_end_ns / self.bound_ns(b);
        Some((ratio, ratio <= 1.5))
    }

    /// At batch 512: the library's cost per update inside the VMM (its `mmu_update`
    /// exits, requests read from guest memory) over the same library path alone in
    /// this process, and whether that is within 1.5x.
    pub fn in_vmm_512(&self) -> Option<(f64, bool)> {
        let b = self.batches.iter().find(|b| b.size == 512)?;
        let ratio = b.library_ns / self.baseline.shared_ns;
        Some((ratio, ratio <= 1.5))
    }

    /// As JSON.
    pub fn to_json(&self) -> serde_json::Value {
        let (ratio, met) = self.target_512().unwrap_or((f64::NAN, false));
        let (in_vmm, in_vmm_met) = self.in_vmm_512().unwrap_or((f64::NAN, false));
        serde_json::json!({
            "launch_ms": self.launch_ms,
            "exit_ns": self.exit_ns,
            "pure_exit_ns": self.pure_exit_ns,
            "bounce_round_trip_ns": self.bounce_ns,
            "guest_ticks": self.ticks.map(|t| serde_json::json!({
                "exit": t.exit, "probe": t.probe, "bounce": t.bounce,
                "bounce_over_exit": t.bounce / t.exit, "probe_over_exit": t.probe / t.exit,
            })),
            "batches": self.batches.iter().map(|b| serde_json::json!({
                "size": b.size,
                "end_to_end_ns_per_update": b.end_to_end_ns,
                "library_ns_per_update": b.library_ns,
                "flush_ns_per_update": b.flush_ns,
                "host_invalidation_ns_per_update": b.invalidation_ns,
                "bound_ns_per_update": self.bound_ns(b),
            })).collect::<Vec<_>>(),
            "target_512": { "ratio": ratio, "met": met },
            "library_alone_512": {
                "exclusive_ns_per_update": self.baseline.exclusive_ns,
                "shared_ns_per_update": self.baseline.shared_ns,
                "in_vmm_over_alone": in_vmm,
                "met": in_vmm_met,
            },
            "kernel_patterns": self.patterns.iter().map(|p| serde_json::json!({
                "name": p.name,
                "end_to_end_ns": p.end_to_end_ns,
                "served_ns": p.served_ns,
                "host_invalidation_ns": p.invalidation_ns,
            })).collect::<Vec<_>>(),
        })
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Intervals between consecutive calls of hypercall `nr` with argument `count` (when
/// `Some`), and their serve times.
fn series(t: &[HypercallTiming], nr: u64, count: Option<u64>) -> (Vec<f64>, Vec<f64>) {
    let calls: Vec<&HypercallTiming> = t
        .iter()
        .filter(|h| h.nr == nr && count.is_none_or(|c| h.count == c))
        .collect();
    let gaps = calls
        .windows(2)
        .map(|w| (w[1].at - w[0].at).as_nanos() as f64)
        .collect();
    let served = calls.iter().map(|h| h.served.as_nanos() as f64).collect();
    (gaps, served)
}

fn quiet_config(image: &[u8]) -> VmConfig {
    VmConfig {
        domain: platform::DomainSpec::new(image.to_vec(), 64),
        console_out: Box::new(std::io::sink()),
    }
}

/// Errors of `pvmmu bench`.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The VM failed.
    #[error(transparent)]
    Vm(#[from] VmError),
    /// A built-in guest is missing from this build.
    #[error("no built-in guest '{0}'")]
    NoGuest(&'static str),
    /// A guest did not power off.
    #[error("the {0} guest ended with {1:?}")]
    Guest(&'static str, GuestExit),
    /// The in-process library baseline could not be set up.
    #[error("library baseline: {0}")]
    Baseline(String),
}

/// Runs the benchmark.
pub fn run(
    launches: usize,
    policy: crate::flush::InvalidationPolicy,
) -> Result<BenchReport, BenchError> {
    let stop = AtomicBool::new(false);
    let demo = guests::find("demo").ok_or(BenchError::NoGuest("demo"))?;
    let mut walls = Vec::new();
    for _ in 0..launches.max(1) {
        let mut vm = Vm::new(quiet_config(demo.image))?;
        vm.set_invalidation(policy);
        let r = vm.run_to_end(&stop)?;
        if r.exit != GuestExit::Shutdown(0) {
            return Err(BenchError::Guest("demo", r.exit));
        }
        walls.push(r.stats.wall.as_secs_f64() * 1e3);
    }
    let bench = guests::find("bench").ok_or(BenchError::NoGuest("bench"))?;
    let console = Captured::default();
    let mut config = quiet_config(bench.image);
    config.domain.cmdline = format!("probe={:#x}", platform::layout::PROBE_VA);
    config.console_out = Box::new(console.clone());
    let mut vm = Vm::new(config)?;
    vm.set_invalidation(policy);
    vm.timings = Some(Vec::with_capacity(4096));
    let r = vm.run_to_end(&stop)?;
    if r.exit != GuestExit::Shutdown(0) {
        return Err(BenchError::Guest("bench", r.exit));
    }
    let t = &r.timings;
    let (exit_gaps, exit_served) = series(t, pvmmu_abi::hypercall::HYPERVISOR_xen_version, None);
    // Consecutive `iret`s: each gap is one exception, its delivery and the return.
    let (bounce_gaps, _) = series(t, pvmmu_abi::hypercall::HYPERVISOR_iret, None);
    // The batch rounds come before the kernel patterns' first marker.
    let first_mark = t
        .iter()
        .position(|h| h.nr == pvmmu_abi::hypercall::HYPERVISOR_xen_version && h.count == MARKER)
        .unwrap_or(t.len());
    let rounds = &t[..first_mark];
    let batches = SIZES
        .iter()
        .map(|&size| batch_figures(rounds, size))
        .collect();
    let exit_ns = median(exit_gaps);
    Ok(BenchReport {
        launch_ms: median(walls),
        exit_ns,
        pure_exit_ns: exit_ns - median(exit_served),
        bounce_ns: median(bounce_gaps),
        batches,
        ticks: console
            .0
            .lock()
            .ok()
            .and_then(|v| GuestTicks::parse(&String::from_utf8_lossy(&v))),
        patterns: patterns(t),
        baseline: library_baseline(400)?,
    })
}

/// The figures of the rounds of batch size `size`: each round is an `mmu_update` of
/// `size` requests and the `mmuext_op` (flush) right after it.
fn batch_figures(t: &[HypercallTiming], size: u64) -> BatchFigures {
    let mmu_update = pvmmu_abi::hypercall::HYPERVISOR_mmu_update;
    let starts: Vec<usize> = (0..t.len())
        .filter(|&i| t[i].nr == mmu_update && t[i].count == size)
        .collect();
    let mut gaps = Vec::new();
    let (mut batch, mut flush, mut inval) = (Vec::new(), Vec::new(), Vec::new());
    for (k, &i) in starts.iter().enumerate() {
        if let Some(&next) = starts.get(k + 1) {
            gaps.push((t[next].at - t[i].at).as_nanos() as f64);
        }
        batch.push(t[i].served.as_nanos() as f64);
        let f = t
            .get(i + 1)
            .filter(|h| h.nr == pvmmu_abi::hypercall::HYPERVISOR_mmuext_op);
        flush.push(f.map_or(0.0, |h| h.served.as_nanos() as f64));
        inval.push(
            (t[i].invalidation + f.map_or(std::time::Duration::ZERO, |h| h.invalidation)).as_nanos()
                as f64,
        );
    }
    let n = size as f64;
    BatchFigures {
        size,
        end_to_end_ns: median(gaps) / n,
        library_ns: median(batch) / n,
        flush_ns: median(flush) / n,
        invalidation_ns: median(inval) / n,
    }
}

/// A human-readable table.
pub fn table(r: &BenchReport) -> String {
    let mut s = format!(
        "demo guest launch to shutdown: {:.1} ms (median)\nhypercall round trip (exit cost): {:.1} us\n\n",
        r.launch_ms,
        r.exit_ns / 1e3
    );
    s.push_str(&format!(
        "batch rounds: one mmu_update of N L1 remaps + the TLB flush a kernel makes after it\n\
         bound = (served(batch) + served(flush) + 2 x exit) / N, exit = {:.1} us (the round trip less its serving)\n",
        r.pure_exit_ns / 1e3
    ));
    s.push_str(
        "batch | end to end ns/update | bound ns/update | library ns/update | flush ns/update | host inval ns/update\n",
    );
    for b in &r.batches {
        s.push_str(&format!(
            "{:>5} | {:>19.1} | {:>15.1} | {:>17.1} | {:>15.1} | {:>20.1}\n",
            b.size,
            b.end_to_end_ns,
            r.bound_ns(b),
            b.library_ns,
            b.flush_ns,
            b.invalidation_ns,
        ));
    }
    s.push_str(&format!(
        "\nexception bounced to the guest and back with iret: {:.1} us = {:.2}x the exit cost (target <= 0.5x)\n",
        r.bounce_ns / 1e3,
        r.bounce_ns / r.exit_ns
    ));
    if let Some(t) = &r.ticks {
        s.push_str(&format!(
            "  timed by the guest (TSC): bounce round trip {:.2}x a hypercall; an exception into ring 0 and \
             straight back (no exit) {:.2}x: the floor of any round trip through ring 0 here\n",
            t.bounce / t.exit,
            t.probe / t.exit
        ));
    }
    if !r.patterns.is_empty() {
        s.push_str("\nkernel pattern (per operation)                      | end to end us | in the VMM us | host invalidation us\n");
        for p in &r.patterns {
            s.push_str(&format!(
                "{:<52} | {:>13.1} | {:>13.1} | {:>20.1}\n",
                p.name,
                p.end_to_end_ns / 1e3,
                p.served_ns / 1e3,
                p.invalidation_ns / 1e3
            ));
        }
        if let (Some(hook), Some(replace)) = (r.patterns.first(), r.patterns.get(1)) {
            s.push_str(&format!(
                "targets: hook-in <= exit cost + 2 us ({:.1} <= {:.1}: {}); replace <= 50 us ({:.1}: {})\n",
                hook.end_to_end_ns / 1e3,
                (r.exit_ns + 2000.0) / 1e3,
                if hook.end_to_end_ns <= r.exit_ns + 2000.0 { "met" } else { "missed" },
                replace.end_to_end_ns / 1e3,
                if replace.end_to_end_ns <= 50_000.0 { "met" } else { "missed" },
            ));
        }
    }
    if let Some((ratio, met)) = r.target_512() {
        s.push_str(&format!(
            "\nbatch 512: end to end = {ratio:.2}x the bound; target <= 1.5x: {}\n",
            if met { "met" } else { "missed" }
        ));
    }
    if let Some((ratio, met)) = r.in_vmm_512() {
        s.push_str(&format!(
            "batch 512: the library alone in this process (requests from a slice): {:.1} ns/update \
             through SharedMachine ({:.1} through Machine); in the VMM {ratio:.2}x that; target <= 1.5x: {}\n",
            r.baseline.shared_ns,
            r.baseline.exclusive_ns,
            if met { "met" } else { "missed" }
        ));
    }
    s
}

/// What `pvmmu bench --kernel` boots: a real kernel with its initrd.
#[derive(Debug, Clone)]
pub struct LinuxBench {
    /// The kernel (ELF, or unpacked from a bzImage).
    pub kernel: Vec<u8>,
    /// The initrd.
    pub initrd: Option<Vec<u8>>,
    /// Kernel command line.
    pub cmdline: String,
    /// Guest memory, MiB.
    pub memory_mib: u64,
    /// The first console line containing this marks `/init` running.
    pub init_marker: String,
    /// How host-side invalidation is done.
    pub invalidation: crate::flush::InvalidationPolicy,
}

/// Figures of one Linux boot.
#[derive(Debug, Clone)]
pub struct LinuxFigures {
    /// VM creation to the first console line with the marker (`None`: never seen).
    pub to_init: Option<std::time::Duration>,
    /// VM creation to the end of the run.
    pub to_end: std::time::Duration,
    /// How it ended.
    pub exit: GuestExit,
    /// Exits, by reason.
    pub exits: u64,
    /// Exits by reason.
    pub exit_reasons: Vec<(String, u64)>,
    /// Hypercalls by name, most frequent first.
    pub hypercalls: Vec<(String, u64)>,
    /// Time in host-side invalidation, and its counts.
    pub invalidation: crate::flush::FlushStats,
}

/// Console lines with when they ended, and the line being written.
type TimedLines = (Vec<u8>, Vec<(std::time::Duration, String)>);

/// A console sink that notes when each line arrived.
#[derive(Clone)]
struct Timed {
    start: std::time::Instant,
    lines: std::sync::Arc<std::sync::Mutex<TimedLines>>,
}

impl std::io::Write for Timed {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut g) = self.lines.lock() {
            let (partial, lines) = &mut *g;
            for &b in buf {
                if b == b'\n' {
                    let line = String::from_utf8_lossy(partial).into_owned();
                    lines.push((self.start.elapsed(), line));
                    partial.clear();
                } else {
                    partial.push(b);
                }
            }
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Boots `b` once and measures it.
pub fn linux(b: &LinuxBench) -> Result<LinuxFigures, BenchError> {
    let start = std::time::Instant::now();
    let console = Timed {
        start,
        lines: Default::default(),
    };
    let config = VmConfig {
        domain: platform::DomainSpec {
            cmdline: b.cmdline.clone(),
            initrd: b.initrd.clone(),
            iomem: false,
            ..platform::DomainSpec::new(b.kernel.clone(), b.memory_mib)
        },
        console_out: Box::new(console.clone()),
    };
    let mut vm = Vm::new(config)?;
    vm.set_invalidation(b.invalidation);
    let r = vm.run_to_end(&AtomicBool::new(false))?;
    let to_end = start.elapsed();
    let to_init = console.lines.lock().ok().and_then(|g| {
        g.1.iter()
            .find(|(_, l)| l.contains(&b.init_marker))
            .map(|(t, _)| *t)
    });
    let mut hypercalls: Vec<(String, u64)> = r
        .stats
        .hypercalls
        .by_number
        .iter()
        .map(|(nr, n)| (platform::dispatch::name(*nr), *n))
        .collect();
    hypercalls.sort_by_key(|h| std::cmp::Reverse(h.1));
    let mut exit_reasons: Vec<(String, u64)> = r.stats.exit_reasons.into_iter().collect();
    exit_reasons.sort_by_key(|r| std::cmp::Reverse(r.1));
    Ok(LinuxFigures {
        to_init,
        to_end,
        exit: r.exit,
        exits: r.stats.exits,
        exit_reasons,
        hypercalls,
        invalidation: r.stats.flush,
    })
}

impl LinuxFigures {
    /// A human-readable report.
    pub fn table(&self) -> String {
        let secs = |d: std::time::Duration| d.as_secs_f64();
        let mut s = match self.to_init {
            Some(t) => format!("VM creation to /init: {:.2} s\n", secs(t)),
            None => "VM creation to /init: the marker never appeared\n".into(),
        };
        s.push_str(&format!(
            "VM creation to the end ({:?}): {:.2} s\n",
            self.exit,
            secs(self.to_end)
        ));
        let inv = &self.invalidation;
        s.push_str(&format!(
            "host-side invalidation: {:.3} s = {:.1}% of the run ({} mprotect runs, {} memslot cycles, {} requests needing nothing of {}; {} returns through the guest's rewrite of {} entries)\n",
            secs(inv.time),
            100.0 * secs(inv.time) / secs(self.to_end),
            inv.mprotects,
            inv.memslot_cycles,
            inv.nothing,
            inv.requests,
            inv.rewrites,
            inv.rewritten_entries
        ));
        s.push_str(&format!("\nexits: {}\n", self.exits));
        for (r, n) in &self.exit_reasons {
            s.push_str(&format!("  {r:<24} {n:>9}\n"));
        }
        s.push_str("\nhypercalls:\n");
        for (h, n) in &self.hypercalls {
            s.push_str(&format!("  {h:<24} {n:>9}\n"));
        }
        s
    }

    /// As JSON.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "to_init_s": self.to_init.map(|t| t.as_secs_f64()),
            "to_end_s": self.to_end.as_secs_f64(),
            "exit": format!("{:?}", self.exit),
            "exits": self.exits,
            "exit_reasons": self.exit_reasons.iter().cloned().collect::<std::collections::BTreeMap<_, _>>(),
            "hypercalls": self.hypercalls.iter().cloned().collect::<std::collections::BTreeMap<_, _>>(),
            "invalidation_s": self.invalidation.time.as_secs_f64(),
            "mprotect_runs": self.invalidation.mprotects,
            "memslot_cycles": self.invalidation.memslot_cycles,
            "rewrite_returns": self.invalidation.rewrites,
            "rewritten_entries": self.invalidation.rewritten_entries,
        })
    }
}
