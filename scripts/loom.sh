#!/usr/bin/env bash
# Model-checks the frame-word protocol (compare-and-swap on count and type words and on
# page-table entries, `mmu/src/frame/word.rs`) with loom, over every interleaving of two
# vCPUs. A separate target directory keeps `--cfg loom` from rebuilding the main one.
set -euo pipefail
cd "$(dirname "$0")/.."
RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom \
    cargo test -j2 --release -p pvmmu --lib loom_model -- --test-threads=1 "$@"
