//! Builds the freestanding test guests (their own workspace in `../guests`) for the host
//! target on stable, with the host's RUSTFLAGS kept out, and hands their paths to the
//! crate for `include_bytes!`.

use std::path::PathBuf;
use std::process::Command;

/// The built-in guests: (binary name, what it does, how it ends, I/O-memory permission
/// for the MMIO test device, vCPUs).
const GUESTS: &[(&str, &str, &str, bool, u32)] = &[
    (
        "demo",
        "maps, remaps and unmaps a range with batched mmu_update, writes its own L1 (ptwr), switches to a second L4, maps the MMIO device",
        "Success",
        true,
        1,
    ),
    (
        "bench",
        "null hypercalls, then mmu_update batches of 1, 8, 64, 512 validated L1 remaps (for `pvmmu bench`)",
        "Success",
        true,
        1,
    ),
    (
        "fault",
        "reads an unmapped address: the VMM reports the page fault",
        "Fault",
        true,
        1,
    ),
    (
        "ptwr_bad",
        "stores a writable mapping of its L4 into its own L1: ptwr refuses, the VMM reports the fault",
        "Fault",
        true,
        1,
    ),
    (
        "bad_bounce",
        "a #PF handler that is not mapped: bounce frames pile up until one cannot be written; the VMM crashes the domain, as Xen",
        "Crash",
        true,
        1,
    ),
    (
        "spin",
        "spins forever (stop it with SIGINT)",
        "Runs",
        true,
        1,
    ),
    (
        "chaos",
        "a hostile guest: seeded random and adversarial hypercalls of every number, wild pointers, huge counts, self-referencing batches, faults and traps (--cmdline seed=N steps=N)",
        "Hostile",
        true,
        1,
    ),
    (
        "hog",
        "one multicall of 16.7 million entries (stop it with SIGINT)",
        "Runs",
        true,
        1,
    ),
    (
        "mapping",
        "maps, remaps, unmaps and downgrades L1 entries with mmu_update; reads after the promised flush",
        "Success",
        true,
        1,
    ),
    (
        "churn",
        "non-leaf churn: L2 and L3 entries hooked in, replaced and removed 150 times, each change read through at once (XSA-286's flush)",
        "Success",
        false,
        1,
    ),
    (
        "uvm_flush",
        "update_va_mapping with every UVMF flush form",
        "Success",
        true,
        1,
    ),
    (
        "address_space",
        "builds an address space L1..L4 with mmu_update, pins, switches to it and back, unpins, reuses the frames",
        "Success",
        true,
        1,
    ),
    (
        "refusals",
        "every refusal a guest can provoke, with the exact errno and done count",
        "Success",
        false,
        1,
    ),
    (
        "multicall",
        "multicall batches with a failing entry in the middle",
        "Success",
        true,
        1,
    ),
    (
        "mmio",
        "maps the MMIO test device with one batched mmu_update and drives its registers",
        "Success",
        true,
        1,
    ),
    (
        "mmio_noperm",
        "without I/O-memory permission the MMIO mapping is refused with -EPERM",
        "Success",
        false,
        1,
    ),
    (
        "mmio_xsave",
        "runs xsave64 into the mapped MMIO test device: where the host cannot emulate it, the domain crashes naming the instruction (never a VMM error)",
        "Crash",
        true,
        1,
    ),
    (
        "pt_write_noassist",
        "stores to its own read-only L1 without writable page tables: the VMM reports the fault",
        "Fault",
        true,
        1,
    ),
    (
        "xsa148",
        "XSA-148: PSE on an existing L2 entry through the fast path",
        "Success",
        true,
        1,
    ),
    (
        "xsa182",
        "XSA-182: RW on a read-only page-table mapping through the fast path",
        "Success",
        true,
        1,
    ),
    (
        "xsa240",
        "XSA-240: chains of linear page tables",
        "Success",
        true,
        1,
    ),
    (
        "xsa279",
        "XSA-279: update_va_mapping with a non-canonical VA and a flush",
        "Success",
        true,
        1,
    ),
    (
        "xsa286",
        "XSA-286: update_va_mapping right after an L2 change uses the new tables",
        "Success",
        true,
        1,
    ),
    (
        "pv_traps",
        "trap table, exception frames, iret, int N by DPL, FEP cpuid, CR2/CR3 reads, syscall hypercall, a user-mode round trip",
        "Success",
        true,
        1,
    ),
    (
        "descriptors",
        "the guest's GDT and LDT: descriptors checked, selectors loaded, the LDT filled on first use, #GP/#PF as Xen delivers them",
        "Success",
        true,
        1,
    ),
    (
        "events",
        "event channels and timers: IPI storms delivered once each, masked ports, the upcall mask, a timer firing during a long mmu_update, SCHEDOP_poll, -ENOSPC; console input with `console-input`",
        "Success",
        false,
        1,
    ),
    (
        "balloon",
        "memory_op reservations: 64 frames given back and populated again, mapped and used; the cap; a mapped frame leaving with its mapping",
        "Success",
        false,
        1,
    ),
    (
        "stress",
        "100,000 random valid and invalid updates against a shadow model, checking every result and translation",
        "Success",
        false,
        1,
    ),
    (
        "smp",
        "two vCPUs: VCPUOP_initialise (refusals, then vCPU 1's context), up, IPIs both ways (a spinning and a blocked target), a remap and an unmap flushed for vCPU 1 and seen there, down and up again, down from outside, and the last vCPU's down powering off",
        "Success",
        false,
        2,
    ),
    (
        "smp_updates",
        "two vCPUs updating one domain's L1 tables at once (own tables, halves of a common one, entries both write), every result and entry checked",
        "Success",
        false,
        2,
    ),
];

fn main() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../guests");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR")).join("guests-target");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(&dir)
        .args(["build", "--release", "--manifest-path"])
        .arg(dir.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&out)
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("RUSTC_WRAPPER")
        .env_remove("CARGO_PROFILE_RELEASE_DEBUG")
        .status()
        .expect("running cargo for the guests");
    assert!(status.success(), "building the test guests failed");
    let mut table = String::from("/// Every built-in guest.\npub const GUESTS: &[Guest] = &[\n");
    for (name, about, expect, iomem, vcpus) in GUESTS {
        let path = out.join("release").join(name).display().to_string();
        table.push_str(&format!(
            "    Guest {{ name: {name:?}, about: {about:?}, image: include_bytes!({path:?}), expect: Expect::{expect}, iomem: {iomem}, vcpus: {vcpus} }},\n"
        ));
    }
    table.push_str("];\n");
    let generated =
        PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR")).join("guests_table.rs");
    std::fs::write(generated, table).expect("writing the guest table");
    for p in [
        "Cargo.toml",
        "Cargo.lock",
        "link.ld",
        "link.rs",
        "rt",
        "demo",
        "suite",
    ] {
        println!("cargo:rerun-if-changed={}", dir.join(p).display());
    }
    println!("cargo:rerun-if-changed=../mmu/abi/src");
}
