//! Traces: a run recorded with `--trace` replays against the library without KVM with
//! every result identical; a tampered trace reports its first divergence; a corrupt or
//! truncated trace gives a clear error.

use std::process::Command;

mod common;

use common::{kvm_available, pvmmu_binary};
use platform::Outcome;
use platform::trace::{self, Record, TraceWriter};

fn record(guest: &str, path: &std::path::Path) {
    let out = Command::new(pvmmu_binary())
        .args(["run", "--guest", guest, "--trace"])
        .arg(path)
        .output()
        .expect("pvmmu run");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn recorded_runs_replay_identically_and_tampering_is_caught() {
    if !kvm_available() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("pvmmu-trace-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    for guest in ["demo", "refusals", "address_space"] {
        let path = dir.join(format!("{guest}.trc"));
        record(guest, &path);
        let out = Command::new(pvmmu_binary())
            .arg("replay")
            .arg(&path)
            .output()
            .expect("replay");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{guest}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains("every result identical"), "{stdout}");

        // Flip the recorded result of the first mmu_update: the replay must name it.
        let (header, mut records) = trace::read_file(&path).expect("parse");
        let (index, rec) = records
            .iter_mut()
            .enumerate()
            .find(|(_, r)| matches!(r, Record::Hypercall { nr: 1, .. }))
            .expect("an mmu_update");
        if let Record::Hypercall { outcome, .. } = rec {
            *outcome = Outcome::Return(-99);
        }
        let tampered = dir.join(format!("{guest}-tampered.trc"));
        let mut w = TraceWriter::create(&tampered, &header).expect("create");
        for r in &records {
            w.record(r).expect("record");
        }
        w.finish().expect("finish");
        let report = platform::replay::replay(&header, &records).expect("replay");
        let d = report.divergence.expect("divergence");
        assert_eq!(d.index, index);
        assert!(d.what.contains("mmu_update"), "{}", d.what);
        let out = Command::new(pvmmu_binary())
            .arg("replay")
            .arg(&tampered)
            .output()
            .expect("replay");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1));
        assert!(
            stderr.contains(&format!("first divergence at record {index}")),
            "{stderr}"
        );
        assert!(stderr.contains("recorded: Return(-99)"), "{stderr}");

        // The batch recorded is what the library read, whole requests; changing it is
        // caught too.
        let (_, mut records) = trace::read_file(&path).expect("parse");
        if let Record::Hypercall { batch, .. } = &mut records[index] {
            assert!(!batch.is_empty(), "{guest}: no batch recorded");
            assert_eq!(batch.len() % pvmmu_abi::MmuUpdate::SIZE, 0);
            batch[0] ^= 0x10;
        }
        let report = platform::replay::replay(&header, &records).expect("replay");
        let d = report.divergence.expect("divergence");
        assert_eq!(d.index, index);
        assert!(d.recorded.contains("batch entries read"), "{}", d.recorded);

        // Truncated: a clear error, exit code 1.
        let bytes = std::fs::read(&path).expect("read");
        let cut = dir.join(format!("{guest}-cut.trc"));
        std::fs::write(&cut, &bytes[..bytes.len() / 2]).expect("write");
        let out = Command::new(pvmmu_binary())
            .arg("replay")
            .arg(&cut)
            .output()
            .expect("replay");
        assert_eq!(out.status.code(), Some(1));
        assert!(String::from_utf8_lossy(&out.stderr).contains("truncated"));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_trace_with_trap_delivery_and_iret_replays_identically() {
    if !kvm_available() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("pvmmu-trace-pv-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("pv_traps.trc");
    record("pv_traps", &path);
    // The iret hypercalls read their frames through the recorded vCPU context.
    let (header, records) = trace::read_file(&path).expect("parse");
    let irets = records
        .iter()
        .filter(|r| matches!(r, Record::Hypercall { nr: 23, .. }))
        .count();
    assert!(irets >= 7, "{irets} iret hypercalls recorded");
    let report = platform::replay::replay(&header, &records).expect("replay");
    assert_eq!(report.divergence, None);
    assert!(report.audit.is_ok());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_domain_with_an_initrd_is_traced_with_it_and_replays() {
    if !kvm_available() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("pvmmu-trace-rd-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let kernel = dir.join("demo");
    std::fs::write(&kernel, vmm::guests::find("demo").expect("demo").image).expect("write");
    let initrd = dir.join("initrd");
    let module: Vec<u8> = (0..50_000u32).map(|i| (i * 7) as u8).collect();
    std::fs::write(&initrd, &module).expect("write");
    let path = dir.join("rd.trc");
    let out = Command::new(pvmmu_binary())
        .args(["run", "--kernel"])
        .arg(&kernel)
        .arg("--initrd")
        .arg(&initrd)
        .arg("--trace")
        .arg(&path)
        .output()
        .expect("pvmmu run");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (header, _) = trace::read_file(&path).expect("parse");
    assert_eq!(
        header.initrd.as_deref(),
        Some(&module[..]),
        "the module is in the trace"
    );
    let out = Command::new(pvmmu_binary())
        .arg("replay")
        .arg(&path)
        .output()
        .expect("replay");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("every result identical"), "{stdout}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_instruction_kvm_cannot_emulate_crashes_the_domain_and_the_trace_still_ends() {
    if !kvm_available() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("pvmmu-trace-xsave-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("mmio_xsave.trc");
    let out = Command::new(pvmmu_binary())
        .args(["run", "--guest", "mmio_xsave", "--trace"])
        .arg(&path)
        .output()
        .expect("pvmmu run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    // A guest crash (exit 2) naming the instruction, not a VMM error (exit 1).
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("the domain crashed: the host cannot emulate the instruction at 0x"),
        "{stderr}"
    );
    assert!(!stderr.contains("audit failed"), "{stderr}");
    // The trace has its end record: it parses whole and replays to the same results.
    let (header, records) = trace::read_file(&path).expect("a complete trace");
    assert!(
        records
            .iter()
            .any(|r| matches!(r, Record::Hypercall { nr: 1, .. })),
        "the mapping of the device is recorded"
    );
    let report = platform::replay::replay(&header, &records).expect("replay");
    assert_eq!(report.divergence, None);
    assert!(report.audit.is_ok());
    let _ = std::fs::remove_dir_all(&dir);
}
