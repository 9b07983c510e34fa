//! The `mmu_ops` harness restores one starting world between inputs instead of building
//! it for each: every input must get the same result (the outcome of every operation and
//! the `Judged` counts) whatever ran before it in the same thread, as on a freshly built
//! fixture.

use std::path::PathBuf;

use pvmmu_fuzzing::ops::{Judged, mmu_ops_fresh, mmu_ops_outcomes};

fn corpus() -> Vec<(PathBuf, Vec<u8>)> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut out = Vec::new();
    for dir in ["corpus/mmu_ops", "regressions/mmu_ops"] {
        let Ok(rd) = std::fs::read_dir(root.join(dir)) else {
            continue;
        };
        for p in rd.filter_map(Result::ok).map(|e| e.path()) {
            if let Ok(b) = std::fs::read(&p) {
                out.push((p, b));
            }
        }
    }
    out.sort();
    assert!(out.len() > 100, "the mmu_ops corpus is missing");
    out
}

#[test]
fn corpus_results_do_not_depend_on_what_ran_before() {
    let inputs = corpus();
    let fresh: Vec<_> = inputs.iter().map(|(_, b)| mmu_ops_fresh(b)).collect();
    let total = fresh.iter().fold(Judged::default(), |mut t, (j, _)| {
        t += *j;
        t
    });
    assert!(
        total.ops_judged > 500,
        "the corpus judges little: {total:?}"
    );
    // Forwards, then backwards with every input twice in a row.
    let order = (0..inputs.len()).chain((0..inputs.len()).rev().flat_map(|i| [i, i]));
    let mut runs = 0;
    for i in order {
        let (path, bytes) = &inputs[i];
        assert!(
            mmu_ops_outcomes(bytes) == fresh[i],
            "{} gives another result after other inputs than on a fresh fixture",
            path.display()
        );
        runs += 1;
    }
    assert_eq!(runs, 3 * inputs.len());
}

#[test]
fn an_input_that_panics_leaves_nothing_behind() {
    let inputs = corpus();
    let busy = inputs
        .iter()
        .max_by_key(|(_, b)| mmu_ops_fresh(b).0.ops_judged)
        .map(|(_, b)| b.clone())
        .expect("an input");
    let want = mmu_ops_fresh(&busy);
    // An oracle failure panics in the middle of an input, with the world taken.
    for stop in [0, 1, 5] {
        let r = std::panic::catch_unwind(|| {
            pvmmu_fuzzing::ops::mmu_ops_panicking_after_for_test(&busy, stop)
        });
        assert!(r.is_err());
        assert!(
            mmu_ops_outcomes(&busy) == want,
            "after a panic at operation {stop}"
        );
    }
}
