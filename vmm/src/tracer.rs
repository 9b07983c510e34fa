//! Recording a run for `pvmmu replay`: the trace file (format in [`platform::trace`])
//! and KVM's dirty log, from which the guest's own memory writes between two records
//! are taken.

use std::path::Path;
use std::sync::Arc;

use kvm_bindings::{KVM_MEM_LOG_DIRTY_PAGES, kvm_userspace_memory_region};
use kvm_ioctls::VmFd;
use platform::layout::PAGE;
use platform::trace::{Record, TraceHeader, TraceWriter};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Errors recording a trace.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    /// KVM refused dirty logging or the dirty bitmap.
    #[error("dirty log: {0}")]
    DirtyLog(#[from] kvm_ioctls::Error),
    /// Reading a dirty page.
    #[error("reading dirty page {pfn:#x}: {source}")]
    Page {
        /// The frame.
        pfn: u64,
        /// Why.
        source: vm_memory::GuestMemoryError,
    },
    /// Writing the trace file.
    #[error("writing the trace: {0}")]
    Io(#[from] std::io::Error),
}

/// The RAM memslot a tracer logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RamSlot {
    /// Slot number.
    pub slot: u32,
    /// Size in bytes.
    pub size: u64,
    /// Host address.
    pub host: u64,
}

/// Records one run.
pub struct Tracer {
    vm: Arc<VmFd>,
    ram: RamSlot,
    out: TraceWriter,
}

impl std::fmt::Debug for Tracer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracer").field("ram", &self.ram).finish()
    }
}

impl Tracer {
    /// Creates `path` with `header` and turns on dirty logging of `ram`.
    pub fn start(
        vm: Arc<VmFd>,
        ram: RamSlot,
        path: &Path,
        header: &TraceHeader,
    ) -> Result<Tracer, TraceError> {
        let region = kvm_userspace_memory_region {
            slot: ram.slot,
            flags: KVM_MEM_LOG_DIRTY_PAGES,
            guest_phys_addr: 0,
            memory_size: ram.size,
            userspace_addr: ram.host,
        };
        // SAFETY: the same mapping the VM registered for this slot, only with dirty
        // logging on; the VM keeps the memory alive.
        unsafe { vm.set_user_memory_region(region)? };
        let out = TraceWriter::create(path, header)?;
        Ok(Tracer { vm, ram, out })
    }

    /// Records the pages the guest wrote since the last call.
    pub fn pages(&mut self, mem: &GuestMemoryMmap<()>) -> Result<(), TraceError> {
        let bitmap = self
            .vm
            .get_dirty_log(self.ram.slot, self.ram.size as usize)?;
        let mut pages = Vec::new();
        for (w, bits) in bitmap.iter().enumerate() {
            let mut b = *bits;
            while b != 0 {
                let pfn = w as u64 * 64 + u64::from(b.trailing_zeros());
                b &= b - 1;
                let mut page = vec![0u8; PAGE as usize];
                mem.read_slice(&mut page, GuestAddress(pfn * PAGE))
                    .map_err(|source| TraceError::Page { pfn, source })?;
                pages.push((pfn, page));
            }
        }
        if !pages.is_empty() {
            self.out.record(&Record::Pages(pages))?;
        }
        Ok(())
    }

    /// Appends a record.
    pub fn record(&mut self, r: &Record) -> Result<(), TraceError> {
        Ok(self.out.record(r)?)
    }

    /// Ends the trace.
    pub fn finish(self) -> Result<(), TraceError> {
        Ok(self.out.finish()?)
    }
}
