//! Helpers for the KVM integration tests: the `/dev/kvm` gate and output capture.

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

/// The `pvmmu` binary of this build, brought up to date first (cargo builds binaries
/// only for their own package's tests, so this crate builds it itself; a no-op build
/// takes a fraction of a second).
pub fn pvmmu_binary() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> -> target/<profile>/pvmmu
    let profile_dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("test executable in target/<profile>/deps");
    let bin = profile_dir.join("pvmmu");
    static BUILT: std::sync::Once = std::sync::Once::new();
    BUILT.call_once(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = std::process::Command::new(cargo);
        cmd.args(["build", "-p", "vmm", "--bin", "pvmmu"]);
        if profile_dir.file_name().is_some_and(|p| p == "release") {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("building pvmmu");
        assert!(status.success(), "building the pvmmu binary failed");
    });
    bin
}
