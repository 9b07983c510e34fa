//! Helpers for the binary's tests: the `/dev/kvm` gate, the binary, output lines.
#![allow(dead_code)]

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

/// The `pvmmu` binary cargo built for these tests.
pub fn pvmmu_binary() -> &'static str {
    env!("CARGO_BIN_EXE_pvmmu")
}

/// The last non-empty line of `text`.
pub fn last_line(text: &str) -> &str {
    text.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
}
