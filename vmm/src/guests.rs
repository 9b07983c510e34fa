//! The built-in test guests, built by `build.rs` and embedded in the binary.

/// A built-in guest.
#[derive(Debug, Clone, Copy)]
pub struct Guest {
    /// Name for `--guest`.
    pub name: &'static str,
    /// One line on what it does.
    pub about: &'static str,
    /// The ELF image.
    pub image: &'static [u8],
}

/// Every built-in guest.
pub const GUESTS: &[Guest] = &[Guest {
    name: "demo",
    about: "maps, remaps and unmaps a range with batched mmu_update, switches to a second L4, maps the MMIO device",
    image: include_bytes!(env!("GUEST_DEMO")),
}];

/// The built-in guest called `name`.
pub fn find(name: &str) -> Option<&'static Guest> {
    GUESTS.iter().find(|g| g.name == name)
}
