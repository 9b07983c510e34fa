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

#[test]
fn a_page_record_that_rewrites_a_live_page_table_is_named_as_corrupt() {
    if !kvm_available() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("pvmmu-trace-corrupt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("demo.trc");
    record("demo", &path);
    let (header, records) = trace::read_file(&path).expect("parse");
    let index = records
        .iter()
        .position(|r| matches!(r, Record::Pages(_)))
        .expect("a page record");
    // Add to it a page that rewrites the domain's root L4 (pinned from the start) with
    // entry 5 pointing at the root itself, read-write: an L4 self-map no guest may
    // store directly.
    let d =
        platform::Domain::create(&header.spec(), pvmmu::RecordingFlush::default()).expect("domain");
    let root = d
        .machine
        .kernel_root(pvmmu::Caller::new(platform::DOMID, 0))
        .expect("root");
    let mut page = vec![0u8; 4096];
    use vm_memory::Bytes;
    d.machine
        .memory()
        .read_slice(&mut page, vm_memory::GuestAddress(root.addr()))
        .expect("read root");
    page[40..48].copy_from_slice(&((root.0 << 12) | 0x67).to_le_bytes());
    let mut tampered = records.clone();
    if let Record::Pages(pages) = &mut tampered[index] {
        pages.push((root.0, page));
    }
    let report = platform::replay::replay(&header, &tampered).expect("replay");
    let d = report.divergence.expect("the corrupt record is named");
    assert_eq!(d.index, index);
    assert!(d.what.contains("live l4 table"), "{}", d.what);
    assert!(d.what.contains("corrupt record"), "{}", d.what);
    assert!(d.recorded.contains("entry 5 ="), "{}", d.recorded);
    // The untampered trace still replays clean: A/D-only changes are accepted.
    let clean = platform::replay::replay(&header, &records).expect("replay");
    assert_eq!(clean.divergence, None);
    assert!(clean.audit.is_ok());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn random_damage_to_page_records_is_named_or_harmless_never_an_unexplained_audit_failure() {
    if !kvm_available() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("pvmmu-trace-damage-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("demo.trc");
    record("demo", &path);
    let (header, records) = trace::read_file(&path).expect("parse");
    let pages: Vec<(usize, usize)> = records
        .iter()
        .enumerate()
        .filter_map(|(i, r)| match r {
            Record::Pages(p) => Some((i, p.len())),
            _ => None,
        })
        .collect();
    assert!(!pages.is_empty());
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = |n: usize| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % n as u64) as usize
    };
    let (mut named, mut harmless) = (0, 0);
    for _ in 0..40 {
        let mut damaged = records.clone();
        // 20 random bytes of page contents changed.
        for _ in 0..20 {
            let (ri, n) = pages[next(pages.len())];
            if let Record::Pages(p) = &mut damaged[ri] {
                let page = &mut p[next(n)].1;
                let at = next(page.len());
                page[at] ^= 1 << next(8);
            }
        }
        let report = platform::replay::replay(&header, &damaged).expect("replay");
        match report.divergence {
            Some(_) => named += 1,
            None => {
                assert!(
                    report.audit.is_ok(),
                    "damage replayed without a named record but the audit failed: {:?}",
                    report.audit
                );
                harmless += 1;
            }
        }
    }
    assert_eq!(named + harmless, 40);
    let _ = std::fs::remove_dir_all(&dir);
}
