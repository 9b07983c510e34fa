#!/bin/bash -eu
# Run by the OSS-Fuzz / ClusterFuzzLite builder: builds every cargo-fuzz target of
# mmu/fuzz with the sanitizer the builder asks for (cargo fuzz reads $SANITIZER through
# the builder's RUSTFLAGS), and ships each with its seed corpus (mmu/fuzz/corpus/<t>,
# which also holds the regression inputs `cargo test` replays).
cd "$SRC/pvmmu/mmu/fuzz"
cargo fuzz build -O
for target in $(cargo fuzz list); do
    cp "target/x86_64-unknown-linux-gnu/release/$target" "$OUT/"
    seed="corpus/$target"
    # shared_ops takes mmu_ops's inputs: its corpus is the seed until it has its own.
    if [ "$target" = shared_ops ] && [ ! -d "$seed" ]; then seed=corpus/mmu_ops; fi
    if [ -d "$seed" ]; then
        (cd "$seed" && zip -q -r "$OUT/${target}_seed_corpus.zip" .)
    fi
done
