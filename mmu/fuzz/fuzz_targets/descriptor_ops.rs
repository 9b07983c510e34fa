//! Descriptor tables against a model of Xen's rules (see
//! `pvmmu_fuzzing::descriptor_ops`).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| pvmmu_fuzzing::descriptor_ops(data));
