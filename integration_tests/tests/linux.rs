//! Debian's stock amd64 kernel, unmodified, boots as a PV guest through pvmmu and runs
//! `/init` from an initramfs built here around Debian's busybox-static: it mounts proc,
//! sys and tmpfs, prints the kernel release, memory and Xen features, writes and reads a
//! file, forks, reads a line typed at the console (the PV console ring), lists the CPUs
//! online and runs a shell on the last of them, and powers off. Once with one vCPU and
//! once with two (the secondary CPU brought up with `VCPUOP_initialise` and `up`).
//! The packages come from apt (downloaded once into the test's cache); without the
//! registry the test fails, unless `PVMMU_SKIP_LINUX=1`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use integration_tests::debian::{self, Entry, newc_archive};
use integration_tests::{Capture, kvm_available};
use platform::DomainSpec;
use vmm::vm::{GuestExit, Vm, VmConfig};

/// Longest the boot may take before the test stops it.
const TIMEOUT: Duration = Duration::from_secs(600);

const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /tmp /dev
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
echo "init: uname -r: $(uname -r)"
grep MemTotal /proc/meminfo
echo "init: xen features: $(cat /sys/hypervisor/properties/features)"
mount -t tmpfs tmpfs /tmp && echo hello-tmpfs > /tmp/f && echo "init: tmpfs: $(cat /tmp/f)"
sh -c 'echo "init: forked child $$"'
echo "init: cpus online: $(cat /sys/devices/system/cpu/online)"
last=$(($(nproc) - 1))
taskset -c $last sh -c "echo init: ran on cpu \$(cut -d' ' -f39 /proc/self/stat)"
read -t 20 -r line && echo "init: console input: $line"
echo "Test result: SUCCESS"
poweroff -f
"#;

#[test]
fn debian_linux_boots_to_init_and_powers_off() {
    boot(1, "0");
}

#[test]
fn debian_linux_boots_with_two_vcpus() {
    boot(2, "0-1");
}

/// One boot at a time: they share the package cache, and each wants the host's cores.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Boots the kernel with `vcpus` vCPUs; `online` is what it must list as online.
fn boot(vcpus: u32, online: &str) {
    let _one = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if std::env::var("PVMMU_SKIP_LINUX").is_ok_and(|v| v == "1") {
        eprintln!("PVMMU_SKIP_LINUX=1: skipping the Linux boot");
        return;
    }
    if !kvm_available() {
        return;
    }
    let cache = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("debian");
    let pkgs = debian::fetch(&cache).unwrap_or_else(|e| {
        panic!("Debian packages unavailable ({e}); set PVMMU_SKIP_LINUX=1 to skip this test")
    });
    let vmlinuz = std::fs::read(&pkgs.kernel).expect("kernel");
    let kernel = platform::bzimage::unpack(&vmlinuz).expect("bzImage");
    let busybox = std::fs::read(&pkgs.busybox).expect("busybox");
    let initrd = newc_archive(&[
        Entry {
            name: "bin",
            mode: 0o040755,
            data: &[],
        },
        Entry {
            name: "bin/busybox",
            mode: 0o100755,
            data: &busybox,
        },
        Entry {
            name: "init",
            mode: 0o100755,
            data: INIT.as_bytes(),
        },
    ]);
    let out = Capture::default();
    let cfg = VmConfig {
        domain: DomainSpec {
            cmdline: "console=hvc0 loglevel=4".into(),
            initrd: Some(initrd),
            iomem: false,
            vcpus,
            ..DomainSpec::new(kernel, 256)
        },
        console_out: Box::new(out.clone()),
    };
    let vm = Vm::new(cfg).expect("VM");
    // Console input, typed before the guest looks: it reaches /init through the PV
    // console ring.
    vm.serial
        .lock()
        .expect("serial")
        .enqueue_input(b"typed-at-the-console\n");
    let stop = vm.stop_flag();
    let done = Arc::new(AtomicBool::new(false));
    let watchdog = {
        let (stop, done) = (stop.clone(), done.clone());
        std::thread::spawn(move || {
            let start = std::time::Instant::now();
            while !done.load(Ordering::SeqCst) && start.elapsed() < TIMEOUT {
                std::thread::sleep(Duration::from_millis(100));
            }
            stop.store(true, Ordering::SeqCst);
        })
    };
    let report = vm.run_to_end(&AtomicBool::new(false)).expect("run");
    done.store(true, Ordering::SeqCst);
    let _ = watchdog.join();
    let text = out.text();
    let tail: String = text.lines().rev().take(40).collect::<Vec<_>>().join("\n");
    for want in [
        format!("init: uname -r: {}", pkgs.release),
        "init: xen features: ".into(),
        "init: tmpfs: hello-tmpfs".into(),
        "init: forked child".into(),
        "init: console input: typed-at-the-console".into(),
        format!("init: cpus online: {online}"),
        format!("init: ran on cpu {}", vcpus - 1),
        "MemTotal:".into(),
        "Test result: SUCCESS".into(),
    ] {
        assert!(
            text.contains(&want),
            "no '{want}' in the console; its end:\n{tail}"
        );
    }
    assert_eq!(report.exit, GuestExit::Shutdown(0), "console end:\n{tail}");
    assert_eq!(report.audit, Ok(()), "audit after the run and teardown");
    eprintln!(
        "Linux {} booted to /init on {vcpus} vCPU(s) and powered off in {:.1} s ({} exits)",
        pkgs.release,
        report.stats.wall.as_secs_f64(),
        report.stats.exits
    );
}
