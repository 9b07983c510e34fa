#!/usr/bin/env bash
# Line coverage of the library (mmu/src) reached by replaying the fuzz corpus and the
# regression inputs (mmu/fuzzing/tests/regressions.rs: both harnesses, mmu_ops and
# vmm_hypercall), with LLVM's source-based coverage through cargo-llvm-cov. Prints the
# per-file table of the library and the total over the PV MMU modules (the ones the
# mmu_ops harness drives; the others are reached by other tests and targets).
#
# Usage: scripts/coverage.sh            (installs cargo-llvm-cov and llvm-tools if absent)
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo-llvm-cov >/dev/null || cargo install --locked cargo-llvm-cov
rustup component list --installed 2>/dev/null | grep -q llvm-tools || rustup component add llvm-tools
others=()
for p in pvmmu pvmmu-abi vmm platform devices integration_tests; do
    others+=(--exclude-from-test "$p")
done
out=$(cargo llvm-cov -j2 --workspace "${others[@]}" --test regressions --summary-only 2>/dev/null)
echo "$out" | awk 'NR == 1 || /^mmu\/src\//'
pv="audit batch domain flush/stale frame guest hypercall machine mmu_update mmuext multicall ptwr va_mapping validate vmassist write"
echo "$out" | awk -v pv="$pv" '
    BEGIN { n = split(pv, m, " "); for (i = 1; i <= n; i++) want["mmu/src/" m[i] ".rs"] = 1 }
    $1 in want { lines += $8; missed += $9 }
    END { printf "PV MMU modules: %d of %d lines reached (%.1f%%)\n", lines - missed, lines, 100 * (lines - missed) / lines }'
