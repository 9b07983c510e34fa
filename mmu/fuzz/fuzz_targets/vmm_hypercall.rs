//! Raw hypercall registers and guest memory against the VMM's dispatch, no KVM (see
//! `pvmmu_fuzzing::vmm_calls`).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| pvmmu_fuzzing::vmm_hypercall(data));
