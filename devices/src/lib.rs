//! Devices of the pvmmu VMM: a 16550 serial console, an exit port for test guests, and a
//! small MMIO test device that guests map through `mmu_update` with `DOMID_IO`.
//!
//! ```
//! use devices::{MmioDevice, MmioTestDevice};
//! let mut dev = MmioTestDevice::default();
//! let mut id = [0u8; 8];
//! dev.read(0, &mut id);
//! assert_eq!(u64::from_le_bytes(id), devices::mmio_test::ID_VALUE);
//! ```

pub mod exit;
pub mod mmio_test;
pub mod serial;

pub use exit::ExitPort;
pub use mmio_test::MmioTestDevice;
pub use serial::SerialConsole;

/// A device on the I/O-port bus. `offset` is relative to the device's base port.
pub trait PioDevice: Send {
    /// An `in` of `data.len()` bytes.
    fn read(&mut self, offset: u16, data: &mut [u8]);
    /// An `out` of `data`.
    fn write(&mut self, offset: u16, data: &[u8]);
}

/// A device on the MMIO bus. `offset` is relative to the device's base address.
pub trait MmioDevice: Send {
    /// A load of `data.len()` bytes.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// A store of `data`.
    fn write(&mut self, offset: u64, data: &[u8]);
}
