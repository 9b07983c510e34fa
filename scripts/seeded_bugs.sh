#!/usr/bin/env bash
# Seeded bugs: puts one known bug at a time into a scratch copy of the library, builds
# the `mmu_ops` fuzz target (stable, no sanitizer) and fuzzes it from an empty corpus
# until it reports a failure or the time limit passes; prints the seconds each bug took
# to find (or "not found") and the start of the failing oracle's message. The
# repository itself is never changed.
#
# Usage: scripts/seeded_bugs.sh [SECONDS_PER_BUG] [corpus]   (default 120; with
#        `corpus`, each run starts from the committed mmu_ops corpus, not an empty one)
# Environment: BUGS="0 2" runs only those bugs (by index, in the order below);
#        RUNS=n fuzzes each bug n times (libFuzzer seeds 1..n) and prints every time;
#        REV=<commit> takes the library and harness from that commit (default HEAD).
set -euo pipefail
limit=${1:-120}
seed=${2:-}
runs=${RUNS:-1}
rev=${REV:-HEAD}
root="$(cd "$(dirname "$0")/.." && pwd)"
scratch=$(mktemp -d /tmp/pvmmu-seeded.XXXXXX)
trap 'rm -rf "$scratch"' EXIT
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
git -C "$root" archive "$rev" | tar -x -C "$scratch"

# The bugs: name, file, text to replace, replacement.
cat >"$scratch/bugs.py" <<'PY'
import sys
BUGS = [
    ("type check dropped (a frame joins another type)", "mmu/src/frame/mod.rs",
     "        } else if word::type_of(t) != ty {", "        } else if false {"),
    ("PSE allowed at L2", "mmu/abi/src/pte.rs",
     "pub const L2_DISALLOW_MASK: u64 = BASE_DISALLOW_MASK;",
     "pub const L2_DISALLOW_MASK: u64 = BASE_DISALLOW_MASK & !0x80;"),
    ("linear chains allowed (XSA-240 counters ignored)", "mmu/src/validate.rs",
     "        if pp.linear < 0 || pp.linear == i16::MAX || tp.linear > 0 || tp.linear == i16::MIN {",
     "        if false {"),
    ("XSA-286 flush after non-leaf updates removed", "mmu/src/mmu_update.rs",
     "        if non_leaf {", "        if false && non_leaf {"),
    ("last reserved L4 slot left to the guest", "mmu/src/validate.rs",
     "    i >= FIRST_XEN_L4_SLOT && i < FIRST_XEN_L4_SLOT + XEN_L4_SLOTS",
     "    i >= FIRST_XEN_L4_SLOT && i < FIRST_XEN_L4_SLOT + XEN_L4_SLOTS - 1"),
]
cmd, i, root = sys.argv[1], int(sys.argv[2]), sys.argv[3]
name, f, old, new = BUGS[i] if i < len(BUGS) else (None, None, None, None)
if cmd == "count":
    print(len(BUGS))
elif cmd == "name":
    print(name)
elif cmd == "apply":
    p = f"{root}/{f}"
    s = open(p).read()
    assert old in s, f"seeded bug does not apply: {old!r}"
    open(p + ".orig", "w").write(s)
    open(p, "w").write(s.replace(old, new.replace("\\n", "\n"), 1))
elif cmd == "revert":
    p = f"{root}/{f}"
    open(p, "w").write(open(p + ".orig").read())
PY
bug() { python3 "$scratch/bugs.py" "$1" "$2" "$scratch"; }

printf '%-70s %s\n' "seeded bug" "found after"
for i in ${BUGS:-$(seq 0 $(( $(bug count 0) - 1 )))}; do
    name=$(bug name "$i")
    bug apply "$i"
    if ! (cd "$scratch/mmu/fuzz" && cargo fuzz build mmu_ops --sanitizer none -O >"$scratch/build.log" 2>&1); then
        printf '%-70s %s\n' "$name" "does not build (see the script's scratch build log)"
        bug revert "$i"
        continue
    fi
    for r in $(seq 1 "$runs"); do
        work="$scratch/run"; rm -rf "$work"; mkdir -p "$work/corpus" "$work/artifacts"
        if [ "$seed" = corpus ]; then
            cp "$scratch/mmu/fuzz/corpus/mmu_ops/"* "$work/corpus/"
        fi
        start=$(date +%s.%N)
        if (cd "$scratch/mmu/fuzz" && timeout $((limit + 30)) cargo fuzz run mmu_ops --sanitizer none -O \
                "$work/corpus" -- -max_total_time="$limit" -seed="$r" -artifact_prefix="$work/artifacts/" \
                >"$work/log" 2>&1); then
            result="not found in ${limit} s"
        else
            end=$(date +%s.%N)
            if ls "$work/artifacts"/crash-* >/dev/null 2>&1; then
                result=$(python3 -c "print(f'{$end - $start:.1f} s')")
                # Which oracle failed: the first line of the panic message.
                why=$(grep -m1 -A1 "panicked at" "$work/log" | tail -1 | cut -c1-110)
                result="$result  ($why)"
            else
                result="fuzzer error"
            fi
        fi
        printf '%-70s %s\n' "$name" "$result"
    done
    bug revert "$i"
done
