//! Builds the freestanding test guests (their own workspace in `../guests`) for the host
//! target on stable, with the host's RUSTFLAGS kept out, and hands their paths to the
//! crate for `include_bytes!`.

use std::path::PathBuf;
use std::process::Command;

/// The built-in guests (binary names).
const GUESTS: &[&str] = &["demo", "fault", "spin", "bench", "ptwr_bad"];

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
    for g in GUESTS {
        let path = out.join("release").join(g);
        println!(
            "cargo:rustc-env=GUEST_{}={}",
            g.to_uppercase(),
            path.display()
        );
    }
    for p in ["Cargo.toml", "Cargo.lock", "link.ld", "rt", "demo", "suite"] {
        println!("cargo:rerun-if-changed={}", dir.join(p).display());
    }
    println!("cargo:rerun-if-changed=../mmu/abi/src");
}
