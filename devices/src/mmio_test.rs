//! A small MMIO device for PV MMU tests: placed outside RAM and owned by `DOMID_IO`, a
//! guest with I/O-memory permission maps it with one batched `mmu_update`.
//!
//! Registers (64-bit, little endian):
//! - `0x00` ID: reads [`ID_VALUE`];
//! - `0x08` SCRATCH: reads back what was written;
//! - `0x10` READS: number of register reads so far;
//! - `0x18` WRITES: number of register writes so far.

use crate::MmioDevice;

/// Guest-physical base address where the VMM places the device: 4 GiB, the first
/// address above the largest guest RAM the VMM builds (RAM starts at 0), so no memory
/// size can put RAM under it.
pub const MMIO_TEST_BASE: u64 = 0x1_0000_0000;
/// Size of the device's window.
pub const MMIO_TEST_SIZE: u64 = 0x1000;
/// The ID register value ("PVMMUDEV").
pub const ID_VALUE: u64 = u64::from_le_bytes(*b"PVMMUDEV");

/// The device state.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct MmioTestDevice {
    scratch: u64,
    reads: u64,
    writes: u64,
}

impl MmioTestDevice {
    /// The scratch register.
    pub fn scratch(&self) -> u64 {
        self.scratch
    }

    /// Number of reads and writes seen.
    pub fn counts(&self) -> (u64, u64) {
        (self.reads, self.writes)
    }

    fn register(&self, offset: u64) -> u64 {
        match offset & !7 {
            0x00 => ID_VALUE,
            0x08 => self.scratch,
            0x10 => self.reads,
            0x18 => self.writes,
            _ => 0,
        }
    }
}

impl MmioDevice for MmioTestDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        self.reads += 1;
        let bytes = self.register(offset).to_le_bytes();
        let start = (offset & 7) as usize;
        for (i, d) in data.iter_mut().enumerate() {
            *d = bytes.get(start + i).copied().unwrap_or(0);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        self.writes += 1;
        if offset & !7 == 0x08 {
            let mut bytes = self.scratch.to_le_bytes();
            let start = (offset & 7) as usize;
            for (i, d) in data.iter().enumerate() {
                if let Some(b) = bytes.get_mut(start + i) {
                    *b = *d;
                }
            }
            self.scratch = u64::from_le_bytes(bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registers() {
        let mut d = MmioTestDevice::default();
        d.write(8, &0x1122_3344_5566_7788u64.to_le_bytes());
        let mut b = [0u8; 4];
        d.read(8, &mut b);
        assert_eq!(u32::from_le_bytes(b), 0x5566_7788);
        d.read(0x200, &mut b);
        assert_eq!(b, [0; 4]);
        assert_eq!(d.counts(), (2, 1));
        d.write(0, &[0xff; 8]);
        assert_eq!(d.scratch(), 0x1122_3344_5566_7788, "ID is read-only");
    }
}
