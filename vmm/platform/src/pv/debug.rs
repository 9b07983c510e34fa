//! The debug registers as Xen keeps them for a PV guest: `set_debugreg`,
//! `get_debugreg` and `mov %drN` share these rules; the VMM loads the result into the
//! vCPU and merges what hardware reports at a #DB.

use pvmmu::Errno;

use super::{PvVcpu, cr4};

/// The debug registers as a PV guest sees them (Xen's `arch.dr*` and `dr7_emul`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DebugRegs {
    /// DR0..DR3.
    pub dr: [u64; 4],
    /// DR6.
    pub dr6: u64,
    /// DR7 as loaded into hardware (I/O breakpoints removed).
    pub dr7: u64,
    /// DR7's I/O-breakpoint enables, which hardware cannot do for a PV guest.
    pub dr7_emul: u64,
    /// Whether hardware must be loaded again.
    pub dirty: bool,
}

/// Debug-register constants.
pub mod dr {
    /// DR6's value with nothing recorded.
    pub const DR6_DEFAULT: u64 = 0xffff_0ff0;
    /// DR6 bits forced to 0.
    pub const DR6_ZEROS: u64 = 0x1000;
    /// DR6's breakpoint-hit bits.
    pub const DR6_BP: u64 = 0xf;
    /// Every DR6 status bit known (B0-3, BLD, BD, BS, BT, RTM).
    pub const DR6_KNOWN: u64 = 0xf | (1 << 11) | (1 << 13) | (1 << 14) | (1 << 15) | (1 << 16);
    /// DR7's value with nothing enabled.
    pub const DR7_DEFAULT: u64 = 0x400;
    /// DR7 bits forced to 0 (with RTM debugging, which is not offered).
    pub const DR7_ZEROS: u64 = 0xd000 | (1 << 11);
    /// DR7's enable bits (L0-3, G0-3).
    pub const DR7_ACTIVE: u64 = 0xff;
    /// DR7.GD.
    pub const DR7_GD: u64 = 1 << 13;
}

impl Default for DebugRegs {
    fn default() -> Self {
        DebugRegs {
            dr: [0; 4],
            dr6: dr::DR6_DEFAULT,
            dr7: dr::DR7_DEFAULT,
            dr7_emul: 0,
            dirty: false,
        }
    }
}

impl PvVcpu {
    /// Xen's `set_debugreg` (the `set_debugreg` hypercall and `mov %reg, %drN`).
    pub fn set_debugreg(&mut self, reg: u32, value: u64) -> Result<(), Errno> {
        let de = self.cr4 & cr4::DE != 0;
        let d = &mut self.debug;
        match reg {
            0..=3 => {
                // Xen's breakpoint_addr_ok: the guest's half or above the hypervisor's
                // range (a non-canonical address is refused too).
                if !pvmmu_abi::layout::is_guest_va(value) {
                    return Err(Errno::EPERM);
                }
                d.dr[reg as usize] = value;
            }
            4 | 6 => {
                if reg == 4 && de {
                    return Err(Errno::ENODEV);
                }
                if value >> 32 != 0 {
                    return Err(Errno::EINVAL);
                }
                d.dr6 = (value | dr::DR6_DEFAULT) & !dr::DR6_ZEROS;
            }
            5 | 7 => {
                if reg == 5 && de {
                    return Err(Errno::ENODEV);
                }
                if value >> 32 != 0 {
                    return Err(Errno::EINVAL);
                }
                let mut value = (value & !dr::DR7_ZEROS) | dr::DR7_DEFAULT;
                if value & dr::DR7_GD != 0 {
                    return Err(Errno::EPERM);
                }
                let mut io_enable = 0;
                if value & dr::DR7_ACTIVE != 0 {
                    for i in 0..4u32 {
                        // R/W bits of breakpoint i: 2 means an I/O breakpoint, which
                        // needs CR4.DE and is emulated, not loaded.
                        if (value >> (16 + 4 * i)) & 3 == 2 {
                            if !de {
                                return Err(Errno::EPERM);
                            }
                            io_enable |= value & (3 << (2 * i));
                        }
                    }
                }
                d.dr7_emul = io_enable;
                value &= !io_enable;
                d.dr7 = value;
            }
            _ => return Err(Errno::ENODEV),
        }
        d.dirty = true;
        Ok(())
    }

    /// Xen's debug-register read (the `get_debugreg` hypercall and `mov %drN, %reg`):
    /// `None` where the read faults (DR4/DR5 with CR4.DE).
    pub fn get_debugreg(&self, reg: u32) -> Option<u64> {
        let de = self.cr4 & cr4::DE != 0;
        let d = &self.debug;
        match reg {
            0..=3 => Some(d.dr[reg as usize]),
            4 | 5 if de => None,
            4 | 6 => Some(d.dr6),
            5 | 7 => Some(d.dr7 | d.dr7_emul),
            _ => None,
        }
    }

    /// Folds what hardware reported in DR6 at a #DB into the guest's DR6 (Xen's
    /// `x86_merge_dr6`): breakpoint bits replaced, the others accumulated.
    pub fn merge_dr6(&mut self, hardware: u64) {
        let new = (hardware ^ dr::DR6_DEFAULT) & dr::DR6_KNOWN;
        let dr6 = ((self.debug.dr6 ^ dr::DR6_DEFAULT) & !dr::DR6_BP) | new;
        self.debug.dr6 = ((dr6 ^ dr::DR6_DEFAULT) | dr::DR6_DEFAULT) & !dr::DR6_ZEROS;
        // Hardware's DR6 is reset with the guest's for the next #DB.
        self.debug.dirty = true;
    }
}
