#!/usr/bin/env bash
# Instruction counts of the library's hot paths (walk and ops), under valgrind's
# callgrind: repeatable for the same binary and inputs whatever else the machine is
# doing, so a regression shows as a stable number (criterion keeps the time).
#
# Each case of mmu/examples/icount.rs runs with 0 and with N repetitions; the
# difference over N is the count of one repetition, set-up excluded. Printed: per
# repetition, per element (entry or request), and for the walk cases the ratio to the
# plain scan of the same tables (`scan_read`) and to its atomic form.
#
# Usage: scripts/icount.sh [N] [CASE...]   (N defaults to 5; needs valgrind)
set -euo pipefail
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null || { echo "icount: valgrind is not installed (apt-get install valgrind)" >&2; exit 1; }
n=${1:-5}
shift || true
cargo build -q -j2 --release -p pvmmu --example icount
bin=target/release/examples/icount
count() {
    valgrind --tool=callgrind --callgrind-out-file=/dev/null "$bin" "$1" "$2" 2>&1 \
        | sed -n 's/.*Collected : \([0-9]*\).*/\1/p'
}
declare -A per_elem
cases=("$@")
if [ ${#cases[@]} -eq 0 ]; then
    mapfile -t cases < <("$bin" --list | cut -d' ' -f1)
fi
printf '%-22s %16s %12s %10s %12s\n' case instr/rep instr/elem "x scan" "x scan_atomic"
for c in "${cases[@]}"; do
    elems=$("$bin" --list | awk -v c="$c" '$1 == c { print $2 }')
    [ -n "$elems" ] || { echo "icount: unknown case $c" >&2; exit 64; }
    base=$(count "$c" 0)
    full=$(count "$c" "$n")
    rep=$(( (full - base) / n ))
    per_elem[$c]=$(python3 -c "print(f'{$rep / $elems:.3f}')")
done
scan=${per_elem[scan_read]:-}
atomic=${per_elem[scan_atomic_read]:-}
for c in "${cases[@]}"; do
    e=${per_elem[$c]}
    elems=$("$bin" --list | awk -v c="$c" '$1 == c { print $2 }')
    rep=$(python3 -c "print(round($e * $elems))")
    ratio=-; ratio_a=-
    if [[ $c == walk_* || $c == scan_* ]] && [ -n "$scan" ] && [ -n "$atomic" ]; then
        ratio=$(python3 -c "print(f'{$e / $scan:.2f}')")
        ratio_a=$(python3 -c "print(f'{$e / $atomic:.2f}')")
    fi
    printf '%-22s %16s %12s %10s %12s\n' "$c" "$rep" "$e" "$ratio" "$ratio_a"
done
