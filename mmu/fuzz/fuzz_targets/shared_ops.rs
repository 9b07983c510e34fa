//! The `mmu_ops` sequences through `SharedMachine` against a plain `Machine` (see
//! `pvmmu_fuzzing::shared_ops`).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| pvmmu_fuzzing::shared_ops(data));
