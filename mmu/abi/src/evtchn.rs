//! The one event-channel operation the PV console path needs.
//!
//! XTF's console writer notifies the backend with `EVTCHNOP_send` on
//! `start_info.console.domU.evtchn` via hypercall 32 (`event_channel_op`).
#![allow(non_upper_case_globals)]

use crate::bytes::{get_u32, put_u32};

/// `event_channel_op` command: notify the remote end of a port
/// (`arg` → [`EvtchnSend`]).
pub const EVTCHNOP_send: u32 = 4;
/// `EVTCHNOP_init_control`: register a FIFO control block.
pub const EVTCHNOP_init_control: u32 = 11;
/// `EVTCHNOP_expand_array`: add a FIFO event array page.
pub const EVTCHNOP_expand_array: u32 = 12;

/// `struct evtchn_send` (4 bytes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[repr(C)]
pub struct EvtchnSend {
    /// Local port to notify through.
    pub port: u32,
}

const _: () = assert!(core::mem::size_of::<EvtchnSend>() == 4);
const _: () = assert!(core::mem::offset_of!(EvtchnSend, port) == 0);

impl EvtchnSend {
    /// Decodes from the 4-byte little-endian encoding.
    #[must_use]
    pub fn from_bytes(b: &[u8; 4]) -> Self {
        Self {
            port: get_u32(b, 0),
        }
    }

    /// Encodes as 4 little-endian bytes.
    #[must_use]
    pub fn to_bytes(&self) -> [u8; 4] {
        let mut b = [0; 4];
        put_u32(&mut b, 0, self.port);
        b
    }
}

impl_abi_bytes!(EvtchnSend, 4);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_round_trip() {
        let s = EvtchnSend { port: 0x0102_0304 };
        assert_eq!(s.to_bytes(), [4, 3, 2, 1]);
        assert_eq!(EvtchnSend::from_bytes(&s.to_bytes()), s);
    }
}
