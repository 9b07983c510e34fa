//! Hypercall dispatch, from the vCPU's registers to a result: Xen's 64-bit register ABI
//! (number in RAX; arguments in RDI, RSI, RDX, R10, R8; result in RAX). The PV MMU
//! hypercalls are the library's ([`pvmmu::Machine::hypercall`]); this module is the
//! embedder's [`HypercallHandler`] for the rest: `console_io`, `sched_op` and
//! `xen_version` here, `-ENOSYS` for everything else. `multicall` entries reach the
//! same handler through the library.

#![allow(non_upper_case_globals)] // Xen's names for hypercall and command numbers

use std::collections::BTreeMap;

use log::debug;
use pvmmu::{Caller, Errno, GuestView, HypercallHandler, MachineError, Roots, TlbFlush};
use pvmmu_abi::console::{CONSOLEIO_read, CONSOLEIO_write};
use pvmmu_abi::hypercall::{HYPERVISOR_console_io, HYPERVISOR_sched_op, HYPERVISOR_xen_version};
use pvmmu_abi::sched::{SCHEDOP_block, SCHEDOP_shutdown, SCHEDOP_yield};
use pvmmu_abi::version::{
    XENVER_capabilities, XENVER_extraversion, XENVER_get_features, XENVER_pagesize, XENVER_version,
};

use crate::domain::Mach;

/// Largest console write served in one call (longer writes are truncated, as Xen's
/// console ring would).
const CONSOLE_MAX: u64 = 64 * 1024;

/// What the vCPU must do after a hypercall.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Return this value in RAX.
    Return(i64),
    /// The guest asked to shut down with this reason.
    Shutdown(u32),
}

/// One served hypercall.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Served {
    /// What the vCPU does next.
    pub outcome: Outcome,
    /// The caller's page-table roots, when the call changed them (load the kernel root
    /// into CR3 before resuming).
    pub roots: Option<Roots>,
    /// The batch entries the library read, when recording (traces).
    pub reads: Vec<u8>,
}

/// Where console output goes and input comes from.
pub trait Console {
    /// Writes guest console output.
    fn write(&mut self, bytes: &[u8]);
    /// Reads pending console input into `buf`; returns the count.
    fn read(&mut self, buf: &mut [u8]) -> usize;
}

/// A console that drops output and has no input (replay, fuzzing, dump).
#[derive(Debug, Clone, Copy, Default)]
pub struct NullConsole;

impl Console for NullConsole {
    fn write(&mut self, _bytes: &[u8]) {}
    fn read(&mut self, _buf: &mut [u8]) -> usize {
        0
    }
}

/// Per-VM hypercall counters.
#[derive(Debug, Clone, Default)]
pub struct HypercallStats {
    /// Direct calls per hypercall number (a multicall counts once).
    pub by_number: BTreeMap<u64, u64>,
}

/// The platform's hypercalls for one domain: its console, and a shutdown request noted
/// while serving (it may come inside a multicall, whose later entries still run, as on
/// Xen, where the shutdown takes effect when the vCPU would return to the guest).
pub struct Platform<'c> {
    console: &'c mut dyn Console,
    shutdown: Option<u32>,
}

impl std::fmt::Debug for Platform<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Platform")
            .field("shutdown", &self.shutdown)
            .finish_non_exhaustive()
    }
}

impl<'c> Platform<'c> {
    /// The platform over `console`.
    pub fn new(console: &'c mut dyn Console) -> Platform<'c> {
        Platform {
            console,
            shutdown: None,
        }
    }
}

/// The name of hypercall `nr`, for logs and reports.
pub fn name(nr: u64) -> String {
    pvmmu_abi::Hypercall::try_from(nr).map_or_else(|_| format!("#{nr}"), |h| h.to_string())
}

/// Serves hypercall `nr` with arguments `args` for `caller`: the whole route from the
/// registers to the result. Logged at debug level (number, arguments, result).
pub fn dispatch<F: TlbFlush>(
    m: &mut Mach<F>,
    console: &mut dyn Console,
    stats: &mut HypercallStats,
    caller: Caller,
    nr: u64,
    args: [u64; 5],
) -> Result<Served, MachineError> {
    *stats.by_number.entry(nr).or_default() += 1;
    let mut platform = Platform::new(console);
    let r = m.hypercall(caller, nr, args, &mut platform)?;
    let outcome = match platform.shutdown {
        Some(reason) => Outcome::Shutdown(reason),
        None => Outcome::Return(r.rax),
    };
    debug!(
        "hypercall {} ({nr}) {:#x?} from {}.{}: {outcome:?}",
        name(nr),
        args,
        caller.dom,
        caller.vcpu
    );
    Ok(Served {
        outcome,
        roots: r.roots,
        reads: r.reads,
    })
}

impl<F: TlbFlush> HypercallHandler<vm_memory::GuestMemoryMmap<()>, F> for Platform<'_> {
    fn hypercall(&mut self, m: &mut Mach<F>, caller: Caller, nr: u64, a: [u64; 5]) -> i64 {
        match nr {
            HYPERVISOR_console_io => self.console_io(m, caller, a),
            HYPERVISOR_sched_op => self.sched_op(m, caller, a),
            HYPERVISOR_xen_version => xen_version(m, caller, a),
            _ => Errno::ENOSYS.neg(),
        }
    }
}

impl Platform<'_> {
    fn console_io<F: TlbFlush>(&mut self, m: &Mach<F>, caller: Caller, a: [u64; 5]) -> i64 {
        let (cmd, count, buf) = (a[0] as u32, u64::from(a[1] as u32), a[2]);
        let mut view = GuestView::new(m.memory(), m.kernel_root(caller));
        match cmd {
            CONSOLEIO_write => {
                let n = count.min(CONSOLE_MAX) as usize;
                let mut bytes = vec![0u8; n];
                if let Err(e) = view.read(buf, &mut bytes) {
                    return e.neg();
                }
                // Only printable characters (and line structure) from a domU, as Xen does.
                bytes.retain(|&b| b == b'\n' || b == b'\t' || (0x20..0x7f).contains(&b));
                self.console.write(&bytes);
                0
            }
            CONSOLEIO_read => {
                if count > i32::MAX as u64 {
                    return Errno::E2BIG.neg();
                }
                let mut bytes = vec![0u8; count.min(4096) as usize];
                let n = self.console.read(&mut bytes);
                match view.write(buf, &bytes[..n]) {
                    Ok(()) => n as i64,
                    Err(e) => e.neg(),
                }
            }
            _ => Errno::ENOSYS.neg(),
        }
    }

    fn sched_op<F: TlbFlush>(&mut self, m: &Mach<F>, caller: Caller, a: [u64; 5]) -> i64 {
        match a[0] as u32 {
            SCHEDOP_yield | SCHEDOP_block => 0,
            SCHEDOP_shutdown => {
                let mut b = [0u8; 4];
                match GuestView::new(m.memory(), m.kernel_root(caller)).read(a[1], &mut b) {
                    Ok(()) => {
                        self.shutdown = Some(u32::from_le_bytes(b));
                        0
                    }
                    Err(e) => e.neg(),
                }
            }
            _ => Errno::ENOSYS.neg(),
        }
    }
}

fn rc(r: Result<(), Errno>) -> i64 {
    r.map_or_else(|e| e.neg(), |()| 0)
}

fn xen_version<F: TlbFlush>(m: &Mach<F>, caller: Caller, a: [u64; 5]) -> i64 {
    let mut view = GuestView::new(m.memory(), m.kernel_root(caller));
    let mut put = |bytes: &[u8]| rc(view.write(a[1], bytes));
    match a[0] as u32 {
        XENVER_version => i64::from(pvmmu_abi::version::XEN_VERSION_VALUE),
        XENVER_extraversion => {
            let mut b = [0u8; 16];
            b[..6].copy_from_slice(b"-pvmmu");
            put(&b)
        }
        XENVER_capabilities => {
            let mut b = [0u8; 1024];
            b[..14].copy_from_slice(b"xen-3.0-x86_64");
            put(&b)
        }
        XENVER_get_features => {
            // struct { u32 submap_idx; u32 submap; }: bit 0 writable_page_tables,
            // bit 5 mmu_pt_update_preserve_ad.
            let mut idx = [0u8; 4];
            if let Err(e) = view.read(a[1], &mut idx) {
                return e.neg();
            }
            let submap: u32 = if u32::from_le_bytes(idx) == 0 {
                1 | (1 << 5)
            } else {
                0
            };
            rc(view.write(a[1] + 4, &submap.to_le_bytes()))
        }
        XENVER_pagesize => 4096,
        _ => Errno::ENOSYS.neg(),
    }
}
