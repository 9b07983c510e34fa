#!/usr/bin/env bash
# Mutation testing of the PV MMU modules with cargo-mutants: each mutant (an operator
# flipped, a function body replaced, ...) is built in a copy of the tree and `cargo
# test -p pvmmu` (and the fuzzing crate's corpus replay and model tests) must fail on
# it. Prints caught / missed / unviable counts; the missed mutants are listed in
# mutants.out/missed.txt, each one a test to write or a reason to give.
#
# Usage: scripts/mutants.sh [FILE...]   (default: the PV MMU modules; hours on 2 cores,
#                                          so pass one or two files for a quick look)
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo-mutants >/dev/null || cargo install --locked cargo-mutants
files=("$@")
if [ ${#files[@]} -eq 0 ]; then
    files=(mmu/src/validate.rs mmu/src/mmu_update.rs mmu/src/mmuext.rs mmu/src/va_mapping.rs
           mmu/src/frame/mod.rs mmu/src/frame/word.rs mmu/src/shared.rs mmu/src/flush/stale.rs
           mmu/src/audit.rs mmu/src/vmassist.rs
           mmu/src/ptwr.rs mmu/src/multicall.rs mmu/src/batch.rs)
fi
args=()
for f in "${files[@]}"; do args+=(-f "$f"); done
cargo mutants --workspace "${args[@]}" --test-package pvmmu --test-package pvmmu-fuzzing \
    --jobs 1 -- -j2 || true
out=mutants.out/outcomes.json
python3 - "$out" <<'PY'
import json, sys
o = json.load(open(sys.argv[1]))
c = {k: o.get(k, 0) for k in ("caught", "missed", "timeout", "unviable")}
viable = c["caught"] + c["missed"] + c["timeout"]
score = 100 * (c["caught"] + c["timeout"]) / viable if viable else 0
print(f"caught {c['caught']}, missed {c['missed']}, timeout {c['timeout']}, "
      f"unviable {c['unviable']}: {score:.1f}% of viable mutants caught")
PY
