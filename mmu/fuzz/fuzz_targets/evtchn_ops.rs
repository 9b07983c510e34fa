//! 2-level event channels against a model of Xen's rules (see
//! `pvmmu_fuzzing::evtchn_ops`).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| pvmmu_fuzzing::evtchn_ops(data));
