//! Exit routing to devices: a port-I/O bus and an MMIO bus, each a set of
//! non-overlapping ranges with a device behind each (the `devices` crate's traits).
//! Accesses nobody claims read as all-ones and are dropped, as on a PC.

use std::sync::{Arc, Mutex};

use devices::{MmioDevice, PioDevice};
use log::debug;

/// A range that overlaps one already on the bus.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("bus range {base:#x}+{len:#x} overlaps a device already there")]
pub struct BusOverlap {
    /// Base of the refused range.
    pub base: u64,
    /// Its length.
    pub len: u64,
}

/// Devices by address range.
struct Ranges<D: ?Sized> {
    entries: Vec<(u64, u64, Arc<Mutex<D>>)>,
}

impl<D: ?Sized> Ranges<D> {
    fn insert(&mut self, base: u64, len: u64, dev: Arc<Mutex<D>>) -> Result<(), BusOverlap> {
        let end = base.checked_add(len).ok_or(BusOverlap { base, len })?;
        if len == 0
            || self
                .entries
                .iter()
                .any(|(b, l, _)| base < b + l && *b < end)
        {
            return Err(BusOverlap { base, len });
        }
        self.entries.push((base, len, dev));
        Ok(())
    }

    fn find(&self, addr: u64) -> Option<(u64, &Arc<Mutex<D>>)> {
        self.entries
            .iter()
            .find(|(b, l, _)| (*b..b + l).contains(&addr))
            .map(|(b, _, d)| (addr - b, d))
    }
}

/// The port-I/O bus.
pub struct PioBus(Ranges<dyn PioDevice>);

/// The MMIO bus.
pub struct MmioBus(Ranges<dyn MmioDevice>);

impl std::fmt::Debug for PioBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.0.entries.iter().map(|(b, l, _)| (b, l)))
            .finish()
    }
}

impl std::fmt::Debug for MmioBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.0.entries.iter().map(|(b, l, _)| (b, l)))
            .finish()
    }
}

impl Default for PioBus {
    fn default() -> Self {
        PioBus(Ranges {
            entries: Vec::new(),
        })
    }
}

impl Default for MmioBus {
    fn default() -> Self {
        MmioBus(Ranges {
            entries: Vec::new(),
        })
    }
}

impl PioBus {
    /// Puts `dev` at ports `base..base + len`.
    ///
    /// ```
    /// use std::sync::{Arc, Mutex};
    /// let mut bus = vmm::bus::PioBus::default();
    /// let exit = Arc::new(Mutex::new(devices::ExitPort::default()));
    /// bus.insert(0x501, 1, exit.clone()).unwrap();
    /// bus.write(0x501, &[7]);
    /// assert_eq!(exit.lock().unwrap().code(), Some(7));
    /// assert!(bus.insert(0x500, 2, exit).is_err());
    /// ```
    pub fn insert(
        &mut self,
        base: u16,
        len: u16,
        dev: Arc<Mutex<dyn PioDevice>>,
    ) -> Result<(), BusOverlap> {
        self.0.insert(u64::from(base), u64::from(len), dev)
    }

    /// An `in` from `port`.
    pub fn read(&self, port: u16, data: &mut [u8]) {
        match self.0.find(u64::from(port)) {
            Some((off, d)) => match d.lock() {
                Ok(mut d) => d.read(off as u16, data),
                Err(_) => data.fill(0xff),
            },
            None => data.fill(0xff),
        }
    }

    /// An `out` to `port`.
    pub fn write(&self, port: u16, data: &[u8]) {
        match self.0.find(u64::from(port)) {
            Some((off, d)) => {
                if let Ok(mut d) = d.lock() {
                    d.write(off as u16, data);
                }
            }
            None => debug!("out to unclaimed port {port:#x}"),
        }
    }
}

impl MmioBus {
    /// Puts `dev` at guest-physical `base..base + len`.
    pub fn insert(
        &mut self,
        base: u64,
        len: u64,
        dev: Arc<Mutex<dyn MmioDevice>>,
    ) -> Result<(), BusOverlap> {
        self.0.insert(base, len, dev)
    }

    /// A load from `addr`.
    pub fn read(&self, addr: u64, data: &mut [u8]) {
        match self.0.find(addr) {
            Some((off, d)) => match d.lock() {
                Ok(mut d) => d.read(off, data),
                Err(_) => data.fill(0xff),
            },
            None => data.fill(0xff),
        }
    }

    /// A store to `addr`.
    pub fn write(&self, addr: u64, data: &[u8]) {
        match self.0.find(addr) {
            Some((off, d)) => {
                if let Ok(mut d) = d.lock() {
                    d.write(off, data);
                }
            }
            None => debug!("store to unclaimed MMIO {addr:#x}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mmio_routes_by_offset_and_ignores_holes() {
        let mut bus = MmioBus::default();
        let dev = Arc::new(Mutex::new(devices::MmioTestDevice::default()));
        bus.insert(0x1000, 0x1000, dev.clone()).unwrap();
        bus.write(0x1008, &0x55u64.to_le_bytes());
        let mut b = [0u8; 8];
        bus.read(0x1008, &mut b);
        assert_eq!(u64::from_le_bytes(b), 0x55);
        bus.read(0x3000, &mut b);
        assert_eq!(b, [0xff; 8]);
        assert!(bus.insert(0x1fff, 1, dev.clone()).is_err());
        assert!(bus.insert(u64::MAX, 2, dev.clone()).is_err());
        bus.insert(0x2000, 1, dev).unwrap();
    }
}
