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
    /// How it ends.
    pub expect: Expect,
    /// Whether the domain may map the MMIO test device.
    pub iomem: bool,
    /// vCPUs it runs with.
    pub vcpus: u32,
}

/// How a built-in guest is expected to end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Prints `Test result: SUCCESS` and powers off.
    Success,
    /// The VMM reports a guest fault (exit code 3).
    Fault,
    /// The VMM crashes the domain, as Xen would (exit code 2).
    Crash,
    /// Runs until stopped.
    Runs,
    /// A hostile guest: ends by its own shutdown, a reported fault or a domain crash,
    /// whichever its seed leads to, and never by a VMM error (tested with fixed seeds).
    Hostile,
}

include!(concat!(env!("OUT_DIR"), "/guests_table.rs"));

/// The built-in guest called `name`.
pub fn find(name: &str) -> Option<&'static Guest> {
    GUESTS.iter().find(|g| g.name == name)
}
