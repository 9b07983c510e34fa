//! The backend of the PV console ring (`xencons_interface` in the page start_info names,
//! notified through its event channel): what the guest produced in `out` is taken and
//! written to the console, and `out_cons` caught up, as xenconsoled does; console input
//! is put into `in` as far as the guest has made room, `in_prod` last. A guest waits
//! for the ring to drain (XTF spins on `SCHEDOP_yield`), so the ring is drained on
//! every notification and every yield.

use pvmmu_abi::console::{
    XENCONS_IN_CONS_OFFSET, XENCONS_IN_OFFSET, XENCONS_IN_PROD_OFFSET, XENCONS_IN_SIZE,
    XENCONS_OUT_CONS_OFFSET, XENCONS_OUT_OFFSET, XENCONS_OUT_PROD_OFFSET, XENCONS_OUT_SIZE,
    xencons_in_idx, xencons_out_idx,
};
use vm_memory::{Bytes, GuestAddress, GuestMemory};

use crate::console::Console;

/// One domain's console ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConsoleRing {
    /// Guest-physical address of the ring page.
    pub gpa: u64,
    /// Its event channel.
    pub port: u32,
    /// Whether the guest has used it (then its `console_io` writes are the same
    /// text again, and the console prints the ring only).
    pub used: bool,
    /// Whether the guest has notified the ring's event channel (it listens for input).
    pub notified: bool,
}

impl ConsoleRing {
    /// The ring at `gpa`, notified on `port`.
    pub fn new(gpa: u64, port: u32) -> ConsoleRing {
        ConsoleRing {
            gpa,
            port,
            used: false,
            notified: false,
        }
    }

    /// Moves everything the guest produced to `console`; returns the byte count.
    ///
    /// ```
    /// use platform::console::Console;
    /// use platform::ring::ConsoleRing;
    /// use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
    ///
    /// struct Out(Vec<u8>);
    /// impl Console for Out {
    ///     fn write(&mut self, b: &[u8]) { self.0.extend_from_slice(b) }
    ///     fn read(&mut self, _: &mut [u8]) -> usize { 0 }
    /// }
    /// let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x2000)]).unwrap();
    /// mem.write_slice(b"hi\n", GuestAddress(0x1000 + 1024)).unwrap();
    /// mem.write_obj(3u32, GuestAddress(0x1000 + 3084)).unwrap(); // out_prod
    /// let mut ring = ConsoleRing::new(0x1000, 1);
    /// let mut out = Out(Vec::new());
    /// assert_eq!(ring.drain(&mem, &mut out), 3);
    /// assert_eq!(out.0, b"hi\n");
    /// assert_eq!(mem.read_obj::<u32>(GuestAddress(0x1000 + 3080)).unwrap(), 3); // out_cons
    /// ```
    pub fn drain<M: GuestMemory>(&mut self, mem: &M, console: &mut dyn Console) -> usize {
        let at = |off: usize| GuestAddress(self.gpa + off as u64);
        let (Ok(cons), Ok(prod)) = (
            mem.read_obj::<u32>(at(XENCONS_OUT_CONS_OFFSET)),
            mem.read_obj::<u32>(at(XENCONS_OUT_PROD_OFFSET)),
        ) else {
            return 0;
        };
        let pending = prod.wrapping_sub(cons) as usize;
        if pending == 0 {
            return 0;
        }
        self.used = true;
        // A guest that claims more than the ring holds gets the ring's worth.
        let n = pending.min(XENCONS_OUT_SIZE);
        let mut bytes = Vec::with_capacity(n);
        for i in 0..n {
            let idx = xencons_out_idx(cons.wrapping_add(i as u32));
            let b = mem
                .read_obj::<u8>(at(XENCONS_OUT_OFFSET + idx))
                .unwrap_or(b'?');
            bytes.push(b);
        }
        console.write(&bytes);
        let _ = mem.write_obj(prod, at(XENCONS_OUT_CONS_OFFSET));
        n
    }

    /// Moves console input into the guest's `in` ring, as much as it has room for
    /// (`in_prod - in_cons` at most the ring's size; a guest whose indices claim more
    /// than that gets nothing); returns the byte count (the caller notifies the guest
    /// when it is not 0).
    ///
    /// ```
    /// use platform::console::Console;
    /// use platform::ring::ConsoleRing;
    /// use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
    ///
    /// struct In(Vec<u8>);
    /// impl Console for In {
    ///     fn write(&mut self, _: &[u8]) {}
    ///     fn read(&mut self, b: &mut [u8]) -> usize {
    ///         let n = b.len().min(self.0.len());
    ///         b[..n].copy_from_slice(&self.0[..n]);
    ///         self.0.drain(..n);
    ///         n
    ///     }
    /// }
    /// let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x2000)]).unwrap();
    /// let mut ring = ConsoleRing::new(0x1000, 1);
    /// assert_eq!(ring.fill(&mem, &mut In(b"ls\n".to_vec())), 3);
    /// assert_eq!(mem.read_obj::<u32>(GuestAddress(0x1000 + 3076)).unwrap(), 3); // in_prod
    /// let mut got = [0u8; 3];
    /// mem.read_slice(&mut got, GuestAddress(0x1000)).unwrap();
    /// assert_eq!(&got, b"ls\n");
    /// ```
    pub fn fill<M: GuestMemory>(&mut self, mem: &M, console: &mut dyn Console) -> usize {
        let at = |off: usize| GuestAddress(self.gpa + off as u64);
        let (Ok(cons), Ok(prod)) = (
            mem.read_obj::<u32>(at(XENCONS_IN_CONS_OFFSET)),
            mem.read_obj::<u32>(at(XENCONS_IN_PROD_OFFSET)),
        ) else {
            return 0;
        };
        let used = prod.wrapping_sub(cons) as usize;
        let Some(room) = XENCONS_IN_SIZE.checked_sub(used).filter(|&r| r > 0) else {
            return 0;
        };
        let mut bytes = vec![0u8; room];
        let n = console.read(&mut bytes).min(room);
        for (i, b) in bytes[..n].iter().enumerate() {
            let idx = xencons_in_idx(prod.wrapping_add(i as u32));
            let _ = mem.write_obj(*b, at(XENCONS_IN_OFFSET + idx));
        }
        if n > 0 {
            std::sync::atomic::fence(std::sync::atomic::Ordering::Release);
            let _ = mem.write_obj(prod.wrapping_add(n as u32), at(XENCONS_IN_PROD_OFFSET));
        }
        n
    }
}
