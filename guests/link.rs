//! The build script of every guest binary package (each names it with `build =`): links
//! with the guests' own linker script, freestanding, without a build ID.

fn main() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    println!("cargo:rustc-link-arg=-T{}/link.ld", dir.display());
    for a in [
        "-nostartfiles",
        "-nostdlib",
        "-static",
        "-no-pie",
        "-Wl,--build-id=none",
    ] {
        println!("cargo:rustc-link-arg={a}");
    }
    println!("cargo:rerun-if-changed={}/link.ld", dir.display());
}
