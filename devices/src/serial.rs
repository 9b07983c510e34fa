//! The 16550 serial console (vm-superio): the VMM's console. Guest `console_io` output is
//! written through it, and stdin input is queued into its receive FIFO.

use std::io::Write;

use log::warn;
use vm_superio::serial::NoEvents;
use vm_superio::{Serial, Trigger};

use crate::PioDevice;

/// The usual base port of COM1.
pub const COM1_PORT: u16 = 0x3f8;
/// Ports the UART decodes.
pub const COM1_LEN: u16 = 8;

/// Receive-buffer / transmit-holding register offset.
const DATA: u8 = 0;
/// Line status register offset and its data-ready bit.
const LSR: u8 = 5;
const LSR_DATA_READY: u8 = 1;

/// PV guests take no interrupts from the UART: the trigger does nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoTrigger;

impl Trigger for NoTrigger {
    type E = std::io::Error;
    fn trigger(&self) -> Result<(), Self::E> {
        Ok(())
    }
}

/// The console UART with its output sink.
pub struct SerialConsole {
    uart: Serial<NoTrigger, NoEvents, Box<dyn Write + Send>>,
}

impl std::fmt::Debug for SerialConsole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SerialConsole").finish_non_exhaustive()
    }
}

impl SerialConsole {
    /// A UART writing to `out`.
    pub fn new(out: Box<dyn Write + Send>) -> SerialConsole {
        SerialConsole {
            uart: Serial::new(NoTrigger, out),
        }
    }

    /// Transmits `bytes` as if the guest wrote them to the data register.
    pub fn transmit(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if let Err(e) = self.uart.write(DATA, b) {
                warn!("serial output failed: {e:?}");
                return;
            }
        }
        let _ = self.uart.writer_mut().flush();
    }

    /// Queues input bytes into the receive FIFO; returns how many fit.
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        self.uart.enqueue_raw_bytes(bytes).unwrap_or(0)
    }

    /// Takes up to `buf.len()` received bytes (as a guest reading the data register while
    /// the line status says data is ready).
    pub fn receive(&mut self, buf: &mut [u8]) -> usize {
        let mut n = 0;
        while n < buf.len() && self.uart.read(LSR) & LSR_DATA_READY != 0 {
            buf[n] = self.uart.read(DATA);
            n += 1;
        }
        n
    }
}

impl PioDevice for SerialConsole {
    fn read(&mut self, offset: u16, data: &mut [u8]) {
        if let (Some(b), Ok(off)) = (data.first_mut(), u8::try_from(offset)) {
            *b = self.uart.read(off);
        }
    }

    fn write(&mut self, offset: u16, data: &[u8]) {
        if let (Some(&b), Ok(off)) = (data.first(), u8::try_from(offset)) {
            let _ = self.uart.write(off, b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn transmit_and_receive() {
        let sink = Sink::default();
        let mut s = SerialConsole::new(Box::new(sink.clone()));
        s.transmit(b"hi\n");
        assert_eq!(sink.0.lock().unwrap().as_slice(), b"hi\n");
        assert_eq!(s.enqueue_input(b"ab"), 2);
        let mut buf = [0u8; 4];
        assert_eq!(s.receive(&mut buf), 2);
        assert_eq!(&buf[..2], b"ab");
        assert_eq!(s.receive(&mut buf), 0);
        // Port access: the guest view of the same UART.
        PioDevice::write(&mut s, 0, b"x");
        assert_eq!(sink.0.lock().unwrap().last(), Some(&b'x'));
    }
}
