//! Hypercall dispatch: Xen's 64-bit register ABI (number in RAX, arguments in RDI, RSI,
//! RDX, R10, R8, result in RAX). MMU hypercalls go to the `pvmmu` library; console_io,
//! sched_op, xen_version and vm_assist are served here; everything else is -ENOSYS.

#![allow(non_upper_case_globals)] // Xen's names for hypercall and command numbers

use std::collections::BTreeMap;

use kvm_bindings::kvm_regs;
use pvmmu::{Caller, Errno, GuestView, Machine, MachineError, TlbFlush};
use pvmmu_abi::console::{CONSOLEIO_read, CONSOLEIO_write};
use pvmmu_abi::hypercall::*;
use pvmmu_abi::sched::{SCHEDOP_block, SCHEDOP_shutdown, SCHEDOP_yield};
use pvmmu_abi::version::{
    XENVER_capabilities, XENVER_extraversion, XENVER_get_features, XENVER_pagesize, XENVER_version,
};
use vm_memory::GuestMemoryMmap;

use crate::flush::KvmFlush;

/// The machine type the VMM drives.
pub type Vmm = Machine<GuestMemoryMmap<()>, KvmFlush>;

/// The machine over the VMM's guest memory with any flush hook (KVM's, or a recording
/// one for fuzzing and trace replay).
pub type Mach<F> = Machine<GuestMemoryMmap<()>, F>;

/// Largest console write served in one call (longer writes are truncated, as Xen's
/// console ring would).
const CONSOLE_MAX: u64 = 64 * 1024;

/// What the vCPU loop must do after a hypercall.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Return this value in RAX.
    Return(i64),
    /// The guest asked to shut down with this reason.
    Shutdown(u32),
}

/// Where console output goes and input comes from.
pub trait Console {
    /// Writes guest console output.
    fn write(&mut self, bytes: &[u8]);
    /// Reads pending console input into `buf`; returns the count.
    fn read(&mut self, buf: &mut [u8]) -> usize;
}

/// A console that drops output and has no input (replay, fuzzing).
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
    /// Calls per hypercall number.
    pub by_number: BTreeMap<u64, u64>,
}

fn rc(r: Result<(), Errno>) -> i64 {
    r.map_or_else(|e| e.neg(), |()| 0)
}

/// The arguments of a hypercall from the vCPU's registers.
pub fn args(regs: &kvm_regs) -> [u64; 5] {
    [regs.rdi, regs.rsi, regs.rdx, regs.r10, regs.r8]
}

/// Serves hypercall `nr` with `a` for `caller`.
pub fn dispatch<F: TlbFlush>(
    m: &mut Mach<F>,
    console: &mut dyn Console,
    stats: &mut HypercallStats,
    caller: Caller,
    nr: u64,
    a: [u64; 5],
) -> Result<Outcome, MachineError> {
    *stats.by_number.entry(nr).or_default() += 1;
    let ret = match nr {
        HYPERVISOR_mmu_update => m.hypercall_mmu_update(caller, a[0], a[1], a[2], a[3])?,
        HYPERVISOR_mmuext_op => m.hypercall_mmuext_op(caller, a[0], a[1], a[2], a[3])?,
        HYPERVISOR_update_va_mapping => m.hypercall_update_va_mapping(caller, a[0], a[1], a[2])?,
        HYPERVISOR_update_va_mapping_otherdomain => {
            m.hypercall_update_va_mapping_otherdomain(caller, a[0], a[1], a[2], a[3])?
        }
        HYPERVISOR_vm_assist => m.hypercall_vm_assist(caller, a[0], a[1])?,
        HYPERVISOR_multicall => {
            let mut shutdown = None;
            let mut other = |m: &mut Mach<F>, c: Caller, op: u64, args: [u64; 5]| -> i64 {
                match dispatch(m, console, stats, c, op, args) {
                    Ok(Outcome::Return(v)) => v,
                    Ok(Outcome::Shutdown(r)) => {
                        shutdown = Some(r);
                        0
                    }
                    Err(_) => Errno::EINVAL.neg(),
                }
            };
            let v = m.hypercall_multicall(caller, a[0], a[1], &mut other)?;
            if let Some(r) = shutdown {
                return Ok(Outcome::Shutdown(r));
            }
            v
        }
        HYPERVISOR_console_io => console_io(m, console, caller, a),
        HYPERVISOR_sched_op => match a[0] as u32 {
            SCHEDOP_yield | SCHEDOP_block => 0,
            SCHEDOP_shutdown => {
                let root = m.kernel_root(caller);
                let mut b = [0u8; 4];
                match GuestView::new(m.memory(), root).read(a[1], &mut b) {
                    Ok(()) => return Ok(Outcome::Shutdown(u32::from_le_bytes(b))),
                    Err(e) => e.neg(),
                }
            }
            _ => Errno::ENOSYS.neg(),
        },
        HYPERVISOR_xen_version => xen_version(m, caller, a),
        _ => Errno::ENOSYS.neg(),
    };
    Ok(Outcome::Return(ret))
}

fn console_io<F: TlbFlush>(
    m: &Mach<F>,
    console: &mut dyn Console,
    caller: Caller,
    a: [u64; 5],
) -> i64 {
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
            console.write(&bytes);
            0
        }
        CONSOLEIO_read => {
            if count > i32::MAX as u64 {
                return Errno::E2BIG.neg();
            }
            let mut bytes = vec![0u8; count.min(4096) as usize];
            let n = console.read(&mut bytes);
            match view.write(buf, &bytes[..n]) {
                Ok(()) => n as i64,
                Err(e) => e.neg(),
            }
        }
        _ => Errno::ENOSYS.neg(),
    }
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
