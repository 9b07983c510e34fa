//! Replays every input that ever found a bug (`mmu/fuzz/regressions/<target>/*`) and the
//! seed corpus through the harnesses on stable, and runs a deterministic batch of random
//! inputs as a smoke test, so CI keeps every finding fixed without a fuzzing engine.

use std::path::PathBuf;

fn inputs(kind: &str, target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz")
        .join(kind)
        .join(target);
    let mut out: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(&dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.is_file())
                .filter_map(|p| std::fs::read(&p).ok().map(|b| (p, b)))
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// xorshift64*: deterministic bytes for the smoke runs.
fn random_bytes(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8
        })
        .collect()
}

#[test]
fn mmu_ops_regressions_and_corpus_stay_fixed() {
    let files: Vec<_> = inputs("regressions", "mmu_ops")
        .into_iter()
        .chain(inputs("corpus", "mmu_ops"))
        .collect();
    for (path, bytes) in &files {
        eprintln!("replaying {}", path.display());
        pvmmu_fuzzing::mmu_ops(bytes);
    }
}

#[test]
fn vmm_hypercall_regressions_and_corpus_stay_fixed() {
    let files: Vec<_> = inputs("regressions", "vmm_hypercall")
        .into_iter()
        .chain(inputs("corpus", "vmm_hypercall"))
        .collect();
    for (path, bytes) in &files {
        eprintln!("replaying {}", path.display());
        pvmmu_fuzzing::vmm_hypercall(bytes);
    }
}

#[test]
fn mmu_ops_random_smoke() {
    for seed in 0..300 {
        pvmmu_fuzzing::mmu_ops(&random_bytes(seed, 64 + (seed as usize * 37) % 2000));
    }
}

#[test]
fn vmm_hypercall_random_smoke() {
    for seed in 0..40 {
        pvmmu_fuzzing::vmm_hypercall(&random_bytes(seed, 64 + (seed as usize * 53) % 1500));
    }
}

/// The `mmu_ops` corpus and regressions (the same input format) and the shared target's
/// own, through `SharedMachine` against a plain `Machine`.
#[test]
fn shared_ops_agree_on_the_corpus() {
    let files: Vec<_> = inputs("regressions", "shared_ops")
        .into_iter()
        .chain(inputs("corpus", "shared_ops"))
        .chain(inputs("regressions", "mmu_ops"))
        .chain(inputs("corpus", "mmu_ops"))
        .collect();
    assert!(!files.is_empty());
    for (path, bytes) in &files {
        eprintln!("replaying {}", path.display());
        pvmmu_fuzzing::shared_ops(bytes);
    }
}

#[test]
fn shared_ops_random_smoke() {
    for seed in 0..100 {
        pvmmu_fuzzing::shared_ops(&random_bytes(seed, 64 + (seed as usize * 37) % 2000));
    }
}

#[test]
fn reservation_ops_regressions_corpus_and_random_inputs_hold() {
    let files: Vec<_> = inputs("regressions", "reservation_ops")
        .into_iter()
        .chain(inputs("corpus", "reservation_ops"))
        .collect();
    for (path, bytes) in &files {
        eprintln!("replaying {}", path.display());
        pvmmu_fuzzing::reservation_ops(bytes);
    }
    for seed in 0..400u64 {
        let bytes = random_bytes(seed, 64 + (seed as usize % 7) * 96);
        pvmmu_fuzzing::reservation_ops(&bytes);
    }
}

#[test]
fn descriptor_ops_regressions_corpus_and_random_inputs_hold() {
    let files: Vec<_> = inputs("regressions", "descriptor_ops")
        .into_iter()
        .chain(inputs("corpus", "descriptor_ops"))
        .collect();
    for (path, bytes) in &files {
        eprintln!("replaying {}", path.display());
        pvmmu_fuzzing::descriptor_ops(bytes);
    }
    for seed in 0..400u64 {
        let bytes = random_bytes(seed ^ 0xde5c, 64 + (seed as usize % 7) * 96);
        pvmmu_fuzzing::descriptor_ops(&bytes);
    }
}

#[test]
fn evtchn_ops_regressions_corpus_and_random_inputs_hold() {
    let files: Vec<_> = inputs("regressions", "evtchn_ops")
        .into_iter()
        .chain(inputs("corpus", "evtchn_ops"))
        .collect();
    for (path, bytes) in &files {
        eprintln!("replaying {}", path.display());
        pvmmu_fuzzing::evtchn_ops(bytes);
    }
    for seed in 0..200u64 {
        let bytes = random_bytes(seed ^ 0xe7c4, 64 + (seed as usize % 7) * 96);
        pvmmu_fuzzing::evtchn_ops(&bytes);
    }
}
