//! `pvmmu`: boots Xen PV guests on KVM with the pvmmu PV MMU. Parses the command line,
//! builds a configuration and calls the library; every job is in `vmm` and `platform`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use platform::DomainSpec;
use vmm::guests;
use vmm::runner::{RunOptions, run};
use vmm::vm::{GuestExit, RunReport, VmConfig};

/// Exit codes of `pvmmu`.
mod code {
    pub const POWEROFF: u8 = 0;
    pub const VMM_ERROR: u8 = 1;
    pub const CRASH: u8 = 2;
    pub const FAULT: u8 = 3;
    pub const OTHER_SHUTDOWN: u8 = 4;
    /// A command-line mistake (sysexits' EX_USAGE), never a guest's verdict.
    pub const USAGE: u8 = 64;
    pub const INTERRUPTED: u8 = 130;
}

#[derive(Parser, Debug)]
#[command(
    name = "pvmmu",
    version,
    about = "Boot Xen PV guests on KVM, their page tables validated by the pvmmu library",
    after_help = "Exit codes: 0 poweroff, 1 VMM error or bad input, 2 guest crash, 3 guest \
                  fault or triple fault, 4 other shutdown reasons, 64 command-line usage \
                  error, 130 stopped by SIGINT/SIGTERM."
)]
struct Cli {
    /// Log level (error, warn, info, debug, trace). `debug` logs every hypercall and
    /// every guest exception.
    #[arg(long, global = true, default_value = "warn")]
    log_level: String,
    /// What to do (default: `run`, booting the demo guest).
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

/// Which guest, and how much memory.
#[derive(clap::Args, Debug, Default)]
struct GuestArgs {
    /// A Xen PV kernel to boot instead of a built-in guest: an ELF image, or a bzImage
    /// as distributions ship it.
    file: Option<PathBuf>,
    /// The same as FILE, under the name `xl` users know.
    #[arg(long, value_name = "FILE", conflicts_with = "file")]
    kernel: Option<PathBuf>,
    /// A built-in guest (see `pvmmu guests`; default: demo).
    #[arg(long, conflicts_with_all = ["file", "kernel"])]
    guest: Option<String>,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 64)]
    memory: u64,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Boot a guest (the built-in demo guest by default). Exit code: 0 poweroff, 2 crash,
    /// 3 guest fault or triple fault, 4 other shutdown reasons, 1 VMM error, 130 SIGINT.
    Run {
        #[command(flatten)]
        guest: GuestArgs,
        /// Number of vCPUs (vCPU 0 starts; the guest brings the others up with
        /// VCPUOP_initialise and VCPUOP_up).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
        vcpus: u32,
        /// Guest command line (start_info.cmd_line).
        #[arg(long, default_value = "")]
        cmdline: String,
        /// A boot module for the kernel (an initrd): start_info.mod_start/mod_len.
        #[arg(long, value_name = "FILE")]
        initrd: Option<PathBuf>,
        /// Print counters (exits, hypercalls, entries validated/applied/rejected,
        /// flushes) on exit.
        #[arg(long)]
        stats: bool,
        /// Record every hypercall (and the guest's memory writes between them) into
        /// this trace file, for `pvmmu replay`.
        #[arg(long, value_name = "FILE")]
        trace: Option<PathBuf>,
        /// How the VMM makes KVM drop translations it changed host-side: `auto` (by
        /// need, cheapest first), or forced `mprotect` (leaf changes always by
        /// protecting the old frames) or `memslot` (every invalidation a memslot cycle).
        #[arg(long, default_value = "auto", value_name = "POLICY")]
        invalidation: vmm::flush::InvalidationPolicy,
    },
    /// Build a guest's domain (without running it) and print its initial page tables,
    /// ptdump style.
    Dump {
        #[command(flatten)]
        guest: GuestArgs,
    },
    /// Replay a trace recorded with `run --trace` against the library, without KVM, and
    /// check that every result is identical. Exit code 0 if so, 1 otherwise.
    Replay {
        /// The trace file.
        file: PathBuf,
    },
    /// List the built-in guests.
    Guests,
    /// Run every 64-bit PV test of a built XTF tree and print XTF's verdict for each,
    /// then a summary. Exit code 0 when no test reported FAILURE or crashed.
    Xtf {
        /// The XTF tree (or its `tests` directory).
        dir: PathBuf,
        /// Only tests whose name contains this.
        #[arg(long)]
        filter: Option<String>,
        /// Seconds before a test that has not finished counts as crashed.
        #[arg(long, default_value_t = 30)]
        timeout: u64,
    },
    /// Measure guest launch and end-to-end mmu_update cost against the library's own.
    Bench {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Launches of the demo guest to time.
        #[arg(long, default_value_t = 5)]
        launches: usize,
        /// Boot this kernel instead (ELF or bzImage) and report its boot: time to
        /// /init and to the end, exits by reason, hypercalls, host-side invalidation.
        #[arg(long, value_name = "FILE")]
        kernel: Option<PathBuf>,
        /// The kernel's initrd.
        #[arg(long, value_name = "FILE", requires = "kernel")]
        initrd: Option<PathBuf>,
        /// The kernel's command line.
        #[arg(long, default_value = "console=hvc0 loglevel=4", requires = "kernel")]
        cmdline: String,
        /// Guest memory in MiB for the kernel.
        #[arg(long, default_value_t = 256, requires = "kernel")]
        memory: u64,
        /// The first console line containing this text marks /init running.
        #[arg(long, default_value = "init:", requires = "kernel")]
        init_marker: String,
        /// How the VMM invalidates translations it changed host-side (as `run`).
        #[arg(long, default_value = "auto", value_name = "POLICY")]
        invalidation: vmm::flush::InvalidationPolicy,
    },
}

fn main() -> ExitCode {
    // Output into a closed pipe (`pvmmu guests | head`) ends the process quietly, as
    // for any Unix tool, instead of a panic in `println!`.
    // SAFETY: restoring the default disposition of SIGPIPE at start-up, before any
    // thread exists; no handler is involved.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { code::USAGE } else { 0 });
        }
    };
    env_logger::Builder::new()
        .parse_filters(&cli.log_level)
        .init();
    let cmd = cli.cmd.unwrap_or(Cmd::Run {
        guest: GuestArgs {
            memory: 64,
            ..GuestArgs::default()
        },
        vcpus: 1,
        cmdline: String::new(),
        initrd: None,
        stats: false,
        trace: None,
        invalidation: vmm::flush::InvalidationPolicy::Auto,
    });
    let result = match cmd {
        Cmd::Run {
            guest,
            vcpus,
            cmdline,
            initrd,
            stats,
            trace,
            invalidation,
        } => domain(guest).and_then(|mut spec| {
            // A built-in guest's own vCPU count unless `--vcpus` asks for more.
            spec.vcpus = spec.vcpus.max(vcpus);
            spec.cmdline = cmdline;
            if let Some(path) = initrd {
                let data = std::fs::read(&path)
                    .map_err(|e| format!("pvmmu: cannot read {}: {e}", path.display()))?;
                spec.initrd = Some(data);
            }
            let report = run(
                VmConfig::new(spec),
                &RunOptions {
                    trace,
                    invalidation,
                },
            )
            .map_err(|e| format!("pvmmu: {e}"))?;
            if stats {
                print_stats(&report);
            }
            Ok(exit_code(&report))
        }),
        Cmd::Dump { guest } => domain(guest).and_then(|spec| {
            let lines = platform::domain::dump(&spec).map_err(|e| format!("pvmmu dump: {e}"))?;
            for l in lines {
                println!("{l}");
            }
            Ok(code::POWEROFF)
        }),
        Cmd::Replay { file } => replay(&file),
        Cmd::Xtf {
            dir,
            filter,
            timeout,
        } => xtf(&dir, filter.as_deref(), timeout),
        Cmd::Guests => {
            for g in guests::GUESTS {
                println!("{:<12} {}", g.name, g.about);
            }
            Ok(code::POWEROFF)
        }
        Cmd::Bench {
            json,
            kernel: Some(kernel),
            initrd,
            cmdline,
            memory,
            init_marker,
            invalidation,
            ..
        } => linux_bench(
            &kernel,
            initrd.as_deref(),
            cmdline,
            memory,
            init_marker,
            json,
            invalidation,
        ),
        Cmd::Bench {
            json,
            launches,
            invalidation,
            ..
        } => match vmm::bench::run(launches, invalidation) {
            Ok(r) if json => {
                println!("{}", r.to_json());
                Ok(code::POWEROFF)
            }
            Ok(r) => {
                print!("{}", vmm::bench::table(&r));
                Ok(code::POWEROFF)
            }
            Err(e) => Err(format!("pvmmu bench: {e}")),
        },
    };
    match result {
        Ok(c) => ExitCode::from(c),
        Err(msg) => {
            eprintln!("{msg}");
            ExitCode::from(code::VMM_ERROR)
        }
    }
}

/// `pvmmu bench --kernel`.
fn linux_bench(
    kernel: &std::path::Path,
    initrd: Option<&std::path::Path>,
    cmdline: String,
    memory_mib: u64,
    init_marker: String,
    json: bool,
    invalidation: vmm::flush::InvalidationPolicy,
) -> Result<u8, String> {
    let read = |p: &std::path::Path| {
        std::fs::read(p).map_err(|e| format!("pvmmu bench: cannot read {}: {e}", p.display()))
    };
    let image = platform::bzimage::unpack(&read(kernel)?)
        .map_err(|e| format!("pvmmu bench: {}: {e}", kernel.display()))?;
    let b = vmm::bench::LinuxBench {
        kernel: image,
        initrd: initrd.map(read).transpose()?,
        cmdline,
        memory_mib,
        init_marker,
        invalidation,
    };
    let f = vmm::bench::linux(&b).map_err(|e| format!("pvmmu bench: {e}"))?;
    if json {
        println!("{}", f.to_json());
    } else {
        print!("{}", f.table());
    }
    Ok(code::POWEROFF)
}

/// The domain a `run` or `dump` asks for.
fn domain(g: GuestArgs) -> Result<DomainSpec, String> {
    let mut iomem = true;
    let mut vcpus = 1;
    let image = match (g.file.or(g.kernel), g.guest) {
        (Some(path), _) => {
            let bytes = std::fs::read(&path)
                .map_err(|e| format!("pvmmu: cannot read {}: {e}", path.display()))?;
            // A distribution's bzImage carries the ELF kernel compressed.
            platform::bzimage::unpack(&bytes)
                .map_err(|e| format!("pvmmu: {}: {e}", path.display()))?
        }
        (None, name) => {
            let name = name.unwrap_or_else(|| "demo".into());
            let b = guests::find(&name).ok_or(format!(
                "pvmmu: no built-in guest '{name}' (see `pvmmu guests`)"
            ))?;
            iomem = b.iomem;
            vcpus = b.vcpus;
            b.image.to_vec()
        }
    };
    Ok(DomainSpec {
        iomem,
        vcpus,
        ..DomainSpec::new(image, g.memory)
    })
}

fn exit_code(r: &RunReport) -> u8 {
    if let Err(e) = &r.audit {
        eprintln!("pvmmu: PV MMU audit failed {e}");
        return code::VMM_ERROR;
    }
    match &r.exit {
        GuestExit::Shutdown(0) => code::POWEROFF,
        GuestExit::Shutdown(3) => {
            eprintln!("pvmmu: the guest crashed (shutdown reason crash)");
            code::CRASH
        }
        GuestExit::Shutdown(reason) => {
            eprintln!("pvmmu: the guest shut down with reason {reason}");
            code::OTHER_SHUTDOWN
        }
        GuestExit::Fault(f) => {
            eprintln!("pvmmu: {f}");
            code::FAULT
        }
        GuestExit::TripleFault { rip } => {
            eprintln!("pvmmu: the guest triple-faulted (RIP {rip:#x})");
            code::FAULT
        }
        GuestExit::ExitPort(c) => *c,
        GuestExit::Crash(c) => {
            eprintln!("pvmmu: the domain crashed: {c}");
            code::CRASH
        }
        GuestExit::Stopped => {
            eprintln!("pvmmu: stopped");
            code::INTERRUPTED
        }
    }
}

fn print_stats(r: &RunReport) {
    let s = &r.stats;
    eprintln!("--- stats ({:?} wall)", s.wall);
    eprintln!(
        "vcpu exits: {} ({} mmu_update exits served without the domain lock, {} of them overlapping another; {} entries applied that way)",
        s.exits, s.concurrent_exits, s.concurrent_overlaps, s.mmu.concurrent
    );
    for (nr, n) in &s.hypercalls.by_number {
        eprintln!("hypercall {}: {n}", platform::dispatch::name(*nr));
    }
    eprintln!(
        "entries: {} validated, {} applied, {} rejected; ptwr writes emulated: {}; batches preempted and re-issued: {}",
        s.mmu.validated, s.mmu.applied, s.mmu.rejected, s.ptwr, s.continuations
    );
    eprintln!(
        "flushes: {} requested; host-side: {} mprotect runs, {} memslot cycles, {} needing nothing ({:?} in all); guest rewrites: {} returns, {} entries",
        s.flush.requests,
        s.flush.mprotects,
        s.flush.memslot_cycles,
        s.flush.nothing,
        s.flush.time,
        s.flush.rewrites,
        s.flush.rewritten_entries
    );
}

fn replay(file: &std::path::Path) -> Result<u8, String> {
    let (header, records) = platform::trace::read_file(file)
        .map_err(|e| format!("pvmmu replay: {}: {e}", file.display()))?;
    let r =
        platform::replay::replay(&header, &records).map_err(|e| format!("pvmmu replay: {e}"))?;
    println!(
        "replayed {} records ({} hypercalls)",
        r.records, r.hypercalls
    );
    if let Some(d) = &r.divergence {
        return Err(format!(
            "pvmmu replay: first divergence at record {}: {}\n  recorded: {}\n  replayed: {}",
            d.index, d.what, d.recorded, d.replayed
        ));
    }
    if let Err(e) = &r.audit {
        return Err(format!("pvmmu replay: audit after the replay failed: {e}"));
    }
    println!("every result identical; audit clean");
    Ok(code::POWEROFF)
}

fn xtf(dir: &std::path::Path, filter: Option<&str>, timeout: u64) -> Result<u8, String> {
    use vmm::xtf::{Verdict, find_tests, run_one};
    let exe = std::env::current_exe().map_err(|e| format!("pvmmu xtf: {e}"))?;
    let tests = find_tests(dir).map_err(|e| format!("pvmmu xtf: {e}"))?;
    let mut counts = std::collections::BTreeMap::new();
    for t in tests
        .iter()
        .filter(|t| filter.is_none_or(|f| t.name.contains(f)))
    {
        let o = run_one(&exe, t, std::time::Duration::from_secs(timeout));
        println!("{:<45} {:<8} {}", t.name, o.verdict.to_string(), o.detail);
        *counts.entry(o.verdict).or_insert(0u32) += 1;
    }
    let summary: Vec<String> = counts.iter().map(|(v, n)| format!("{n} {v}")).collect();
    println!("{}", summary.join(", "));
    let bad = counts.contains_key(&Verdict::Failure) || counts.contains_key(&Verdict::Crash);
    Ok(if bad { code::VMM_ERROR } else { code::POWEROFF })
}
