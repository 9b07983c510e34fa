//! Structured PV MMU operation sequences on two domains (see `pvmmu_fuzzing::ops`).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| pvmmu_fuzzing::mmu_ops(data));
