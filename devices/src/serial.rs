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

/// Input held beyond the UART's receive FIFO (64 bytes), so that pasted or piped input
/// is not lost while the guest reads slowly.
const BACKLOG_MAX: usize = 1 << 20;

/// The console UART with its output sink.
pub struct SerialConsole {
    uart: Serial<NoTrigger, NoEvents, Box<dyn Write + Send>>,
    backlog: std::collections::VecDeque<u8>,
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
            backlog: std::collections::VecDeque::new(),
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

    /// Queues input bytes for the guest: into the receive FIFO as far as it has room,
    /// the rest held until the guest has read what is there (up to 1 MiB; beyond that
    /// input is dropped). Returns how many were kept.
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        let keep = bytes.len().min(BACKLOG_MAX - self.backlog.len());
        if keep < bytes.len() {
            warn!(
                "console input backlog full: {} bytes dropped",
                bytes.len() - keep
            );
        }
        self.backlog.extend(&bytes[..keep]);
        self.refill();
        keep
    }

    /// Moves held input into the receive FIFO as far as it has room.
    fn refill(&mut self) {
        while !self.backlog.is_empty() {
            let (front, _) = self.backlog.as_slices();
            match self.uart.enqueue_raw_bytes(front) {
                Ok(n) if n > 0 => {
                    self.backlog.drain(..n);
                }
                _ => return,
            }
        }
    }

    /// Takes up to `buf.len()` received bytes (as a guest reading the data register while
    /// the line status says data is ready).
    pub fn receive(&mut self, buf: &mut [u8]) -> usize {
        let mut n = 0;
        while n < buf.len() && self.uart.read(LSR) & LSR_DATA_READY != 0 {
            buf[n] = self.uart.read(DATA);
            n += 1;
            if self.uart.read(LSR) & LSR_DATA_READY == 0 {
                self.refill();
            }
        }
        n
    }
}

impl PioDevice for SerialConsole {
    fn read(&mut self, offset: u16, data: &mut [u8]) {
        if let (Some(b), Ok(off)) = (data.first_mut(), u8::try_from(offset)) {
            *b = self.uart.read(off);
            if off == DATA {
                self.refill();
            }
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

    #[test]
    fn input_beyond_the_fifo_is_held_not_lost() {
        let mut s = SerialConsole::new(Box::new(Sink::default()));
        let input: Vec<u8> = (0..1000u32).map(|i| b'a' + (i % 26) as u8).collect();
        assert_eq!(s.enqueue_input(&input), 1000);
        let mut got = Vec::new();
        let mut buf = [0u8; 100];
        loop {
            let n = s.receive(&mut buf);
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(got, input);
        // Through the data register, byte by byte, too.
        s.enqueue_input(&input[..200]);
        let mut got = Vec::new();
        for _ in 0..200 {
            let mut b = [0u8];
            PioDevice::read(&mut s, LSR.into(), &mut b);
            assert_ne!(b[0] & LSR_DATA_READY, 0);
            PioDevice::read(&mut s, DATA.into(), &mut b);
            got.push(b[0]);
        }
        assert_eq!(got, input[..200]);
    }
}
