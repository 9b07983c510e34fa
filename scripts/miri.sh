#!/usr/bin/env bash
# Runs Miri over the unit tests of pvmmu's table and walker modules (mmu/src/table.rs,
# mmu/src/walk.rs): the code that views guest page-table pages as `AtomicU64`s through a
# raw pointer. Miri checks those views for undefined behaviour (aliasing, alignment,
# out-of-bounds, use after unmap) and, in the tests that use several threads, for data
# races.
#
#   scripts/miri.sh          (extra Miri flags: MIRIFLAGS=... scripts/miri.sh)
#
# Needs a nightly toolchain with the `miri` and `rust-src` components. Without them it
# prints one line saying Miri was skipped and why, and exits 0: the components come from
# the Rust distribution server, which not every machine can reach, so CI does not fail on
# their absence.
#
# Guest memory under Miri: the tests use a small `GuestMemoryMmap`. Miri's `mmap` shim
# accepts only MAP_PRIVATE|MAP_ANONYMOUS, and vm-memory maps anonymous regions with
# MAP_NORESERVE as well, so a real mmap would stop Miri; but vm-memory 0.18 has a
# `cfg(miri)` path that backs each region with a zeroed allocation from the global
# allocator (8-byte aligned) instead of mmap, and frees it instead of munmap. So the
# tests need no file mappings, no foreign calls and no `-Zmiri-disable-isolation`. The
# 8-byte alignment is all the atomics view needs (table_page checks it).
set -euo pipefail
cd "$(dirname "$0")/.."

skip() {
    echo "miri: skipped: $*"
    exit 0
}

command -v rustup >/dev/null 2>&1 || skip "rustup is not installed, so there is no nightly toolchain to run Miri with"
rustup toolchain list 2>/dev/null | grep -q '^nightly' ||
    skip "no nightly toolchain is installed (rustup toolchain install nightly --component miri,rust-src)"
installed=$(rustup component list --toolchain nightly --installed 2>/dev/null || true)
for c in miri rust-src; do
    grep -q "^$c" <<<"$installed" ||
        skip "the nightly toolchain lacks the '$c' component (rustup component add --toolchain nightly miri rust-src)"
done

echo "== miri: pvmmu table and walker unit tests"
cargo +nightly miri setup
cargo +nightly miri test -p pvmmu --lib -- table::tests:: walk::tests::
