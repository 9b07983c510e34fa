//! The exit port: a test guest with I/O-port access writes an exit code to it to end the
//! run immediately.

use crate::PioDevice;

/// Default port of the exit device.
pub const EXIT_PORT: u16 = 0x501;

/// Records the code written.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ExitPort {
    code: Option<u8>,
}

impl ExitPort {
    /// The code written, if any.
    pub fn code(&self) -> Option<u8> {
        self.code
    }
}

impl PioDevice for ExitPort {
    fn read(&mut self, _offset: u16, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, _offset: u16, data: &[u8]) {
        if let Some(&b) = data.first() {
            self.code = Some(b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_the_code() {
        let mut p = ExitPort::default();
        assert_eq!(p.code(), None);
        p.write(0, &[3]);
        assert_eq!(p.code(), Some(3));
    }
}
