//! The console a domain writes to (`console_io`, the PV console ring) and reads from.

/// Where console output goes and input comes from.
pub trait Console {
    /// Writes guest console output.
    fn write(&mut self, bytes: &[u8]);
    /// Reads pending console input into `buf`; returns the count.
    fn read(&mut self, buf: &mut [u8]) -> usize;
}

/// A console that drops output and has no input (replay, fuzzing, dump).
#[derive(Debug, Clone, Copy, Default)]
pub struct NullConsole;

impl Console for NullConsole {
    fn write(&mut self, _bytes: &[u8]) {}
    fn read(&mut self, _buf: &mut [u8]) -> usize {
        0
    }
}
