#!/usr/bin/env bash
# Runs every cargo-fuzz target of mmu/fuzz, time-boxed, in parallel over the cores, in
# libFuzzer's fork mode, on stable Rust (no sanitizer), then prints coverage and
# executions per second per target. New crashes land in mmu/fuzz/artifacts/<target>/.
#
#   scripts/fuzz.sh [SECONDS] [JOBS]        defaults: 300 seconds, all cores
#
# The nightly + AddressSanitizer variant of a single target:
#   cd mmu/fuzz && cargo +nightly fuzz run mmu_ops -- -max_total_time=300
set -euo pipefail
secs=${1:-300}
jobs=${2:-$(nproc)}
cd "$(dirname "$0")/../mmu/fuzz"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
targets=$(cargo fuzz list)
n=$(echo "$targets" | wc -l)
per=$(( jobs / n )); [ "$per" -ge 1 ] || per=1
mkdir -p logs runs
cargo fuzz build --sanitizer none -O
for t in $targets; do
    mkdir -p "runs/$t" "artifacts/$t" "corpus/$t"
    # shared_ops reads mmu_ops's inputs: its corpus seeds it too.
    seeds=("corpus/$t")
    [ "$t" = shared_ops ] && seeds+=("corpus/mmu_ops")
    cargo fuzz run "$t" --sanitizer none -O "runs/$t" "${seeds[@]}" -- \
        -fork="$per" -max_total_time="$secs" -print_final_stats=1 \
        -artifact_prefix="artifacts/$t/" >"logs/$t.log" 2>&1 &
done
wait || true
echo "target           cov      ft   corpus  exec/s  crashes"
for t in $targets; do
    last=$(grep -E 'cov: [0-9]+' "logs/$t.log" | tail -1)
    cov=$(sed -E 's/.*cov: ([0-9]+).*/\1/' <<<"$last")
    ft=$(sed -E 's/.*ft: ([0-9]+).*/\1/' <<<"$last")
    corp=$(sed -E 's/.*corp: ([0-9]+).*/\1/' <<<"$last")
    eps=$(grep -E 'exec/s: [0-9]+' "logs/$t.log" | tail -1 | sed -E 's/.*exec\/s: ([0-9]+).*/\1/')
    crashes=$(find "artifacts/$t" -type f | wc -l)
    printf '%-14s %6s %7s %8s %7s %8s\n' "$t" "$cov" "$ft" "$corp" "$eps" "$crashes"
done
