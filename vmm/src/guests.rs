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
}

/// How a built-in guest is expected to end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Prints `Test result: SUCCESS` and powers off.
    Success,
    /// The VMM reports a guest fault (exit code 3).
    Fault,
    /// Runs until stopped.
    Runs,
}

/// Every built-in guest.
pub const GUESTS: &[Guest] = &[
    Guest {
        name: "demo",
        about: "maps, remaps and unmaps a range with batched mmu_update, writes its own L1 (ptwr), switches to a second L4, maps the MMIO device",
        image: include_bytes!(env!("GUEST_DEMO")),
        expect: Expect::Success,
    },
    Guest {
        name: "bench",
        about: "null hypercalls, then mmu_update batches of 1, 8, 64, 512 validated L1 remaps (for `pvmmu bench`)",
        image: include_bytes!(env!("GUEST_BENCH")),
        expect: Expect::Success,
    },
    Guest {
        name: "fault",
        about: "reads an unmapped address: the VMM reports the page fault",
        image: include_bytes!(env!("GUEST_FAULT")),
        expect: Expect::Fault,
    },
    Guest {
        name: "ptwr_bad",
        about: "stores a writable mapping of its L4 into its own L1: ptwr refuses, the VMM reports the fault",
        image: include_bytes!(env!("GUEST_PTWR_BAD")),
        expect: Expect::Fault,
    },
    Guest {
        name: "spin",
        about: "spins forever (stop it with SIGINT)",
        image: include_bytes!(env!("GUEST_SPIN")),
        expect: Expect::Runs,
    },
];

/// The built-in guest called `name`.
pub fn find(name: &str) -> Option<&'static Guest> {
    GUESTS.iter().find(|g| g.name == name)
}
