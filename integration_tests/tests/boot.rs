//! Boots every built-in guest under KVM, through the library API and the binary, and
//! checks the verdict, the exit code, and that the domain audit is clean and every frame
//! was returned after shutdown.

use std::process::Command;
use std::sync::atomic::AtomicBool;

use integration_tests::{Capture, kvm_available, last_line, pvmmu_binary};
use vmm::guests::GUESTS;
use vmm::vm::{GuestExit, Vm, VmConfig};

fn boot(image: &[u8]) -> (vmm::vm::RunReport, String) {
    let out = Capture::default();
    let cfg = VmConfig {
        memory_mib: 64,
        vcpus: 1,
        image: image.to_vec(),
        cmdline: String::new(),
        console_out: Box::new(out.clone()),
    };
    let report = Vm::new(cfg)
        .expect("VM")
        .run_to_end(&AtomicBool::new(false))
        .expect("run");
    (report, out.text())
}

#[test]
fn every_builtin_guest_passes_through_the_library_api() {
    if !kvm_available() {
        return;
    }
    for g in GUESTS {
        let (report, text) = boot(g.image);
        assert_eq!(
            last_line(&text),
            "Test result: SUCCESS",
            "guest {}:\n{text}",
            g.name
        );
        assert_eq!(report.exit, GuestExit::Shutdown(0), "guest {}", g.name);
        assert_eq!(
            report.audit,
            Ok(()),
            "guest {}: audit after shutdown and teardown",
            g.name
        );
        assert_eq!(report.stats.mmu.rejected, 0, "guest {}", g.name);
        assert!(report.stats.mmu.applied > 0);
    }
}

#[test]
fn every_builtin_guest_passes_through_the_binary() {
    if !kvm_available() {
        return;
    }
    for g in GUESTS {
        let out = Command::new(pvmmu_binary())
            .args(["run", "--guest", g.name, "--stats"])
            .output()
            .expect("running pvmmu");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(0),
            "guest {}:\n{stdout}\n{stderr}",
            g.name
        );
        assert_eq!(last_line(&stdout), "Test result: SUCCESS");
        assert!(stderr.contains("hypercall mmu_update"), "{stderr}");
    }
}

#[test]
fn bad_images_are_refused_with_a_message_and_exit_code_1() {
    if !kvm_available() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("pvmmu-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let demo = GUESTS[0].image;
    let cases: [(&str, Vec<u8>, &str); 3] = [
        (
            "garbage",
            b"definitely not an ELF image".to_vec(),
            "not an ELF",
        ),
        ("truncated", demo[..200].to_vec(), "guest image"),
        ("empty", Vec::new(), "not an ELF"),
    ];
    for (name, bytes, msg) in cases {
        let path = dir.join(name);
        std::fs::write(&path, bytes).expect("write");
        let out = Command::new(pvmmu_binary())
            .arg("run")
            .arg(&path)
            .output()
            .expect("pvmmu");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{name}: {stderr}");
        assert!(stderr.contains(msg), "{name}: {stderr}");
    }
    let out = Command::new(pvmmu_binary())
        .args(["run", "--guest", "nope"])
        .output()
        .expect("pvmmu");
    assert_eq!(out.status.code(), Some(1));
    let _ = std::fs::remove_dir_all(&dir);
}
