//! Helpers for the KVM integration tests that boot guests through the `vmm` library
//! API: the `/dev/kvm` gate, output capture, and Debian's packages for the Linux boot.

pub mod debian;

use std::io::Write;
use std::sync::{Arc, Mutex};

/// Whether KVM tests should run: `/dev/kvm` must be there unless `PVMMU_SKIP_KVM=1`,
/// in which case they are skipped. A missing `/dev/kvm` without that setting is a test
/// failure, loudly.
pub fn kvm_available() -> bool {
    if std::env::var("PVMMU_SKIP_KVM").is_ok_and(|v| v == "1") {
        eprintln!("PVMMU_SKIP_KVM=1: skipping a KVM test");
        return false;
    }
    assert!(
        std::path::Path::new("/dev/kvm").exists(),
        "/dev/kvm is missing: KVM tests cannot run (set PVMMU_SKIP_KVM=1 to skip them)"
    );
    true
}

/// A console sink that keeps what the guest printed.
#[derive(Debug, Clone, Default)]
pub struct Capture(pub Arc<Mutex<Vec<u8>>>);

impl Capture {
    /// Everything written so far, as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().map(|v| v.clone()).unwrap_or_default()).into_owned()
    }
}

impl Write for Capture {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut v) = self.0.lock() {
            v.extend_from_slice(b);
        }
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The last non-empty line of `text`.
pub fn last_line(text: &str) -> &str {
    text.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
}
