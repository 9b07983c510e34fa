//! Frames leaving and joining live domains against a model of Xen's memory-op rules
//! (see `pvmmu_fuzzing::reservation_ops`).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| pvmmu_fuzzing::reservation_ops(data));
