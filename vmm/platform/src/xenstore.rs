//! A small xenstore for one domain, on the store ring start_info names (xenstored's
//! side of `xenstore_domain_interface`): the standard keys a domU finds under
//! `/local/domain/<id>` on a Xen host with no PV devices, reads, writes, directories,
//! removals, permissions answered as the domain's own, transactions (applied at once:
//! nothing else writes, so none can conflict) and watches (fired when registered and
//! on every change at or below their path). Requests are taken when the guest notifies
//! the store port; responses go on the response ring and the port is raised.

use std::collections::{BTreeMap, VecDeque};

use vm_memory::{Bytes, GuestAddress, GuestMemory};

/// Ring offsets in the store page.
const REQ: u64 = 0;
const RSP: u64 = 1024;
const RING_SIZE: u32 = 1024;
const REQ_CONS: u64 = 2048;
const REQ_PROD: u64 = 2052;
const RSP_CONS: u64 = 2056;
const RSP_PROD: u64 = 2060;
/// Largest payload (`XENSTORE_PAYLOAD_MAX`).
const PAYLOAD_MAX: u32 = 4096;

/// Message types (`xsd_sockmsg_type`).
const XS_DIRECTORY: u32 = 1;
const XS_READ: u32 = 2;
const XS_GET_PERMS: u32 = 3;
const XS_WATCH: u32 = 4;
const XS_UNWATCH: u32 = 5;
const XS_TRANSACTION_START: u32 = 6;
const XS_TRANSACTION_END: u32 = 7;
const XS_GET_DOMAIN_PATH: u32 = 10;
const XS_WRITE: u32 = 11;
const XS_MKDIR: u32 = 12;
const XS_RM: u32 = 13;
const XS_SET_PERMS: u32 = 14;
const XS_WATCH_EVENT: u32 = 15;
const XS_ERROR: u32 = 16;
const XS_RESET_WATCHES: u32 = 21;

/// One domain's store.
#[derive(Debug, Clone, Default)]
pub struct Xenstore {
    /// Guest-physical address of the ring page (0: none).
    gpa: u64,
    /// The domain.
    domid: u16,
    /// Nodes by absolute path (no trailing slash), with their values.
    nodes: BTreeMap<String, Vec<u8>>,
    /// Watches: (absolute path, token, whether registered relative).
    watches: Vec<(String, String, bool)>,
    /// Response bytes waiting for room on the ring.
    out: VecDeque<u8>,
    /// Request bytes taken from the ring, not yet a whole message.
    input: Vec<u8>,
    /// The next transaction id.
    next_tx: u32,
}

impl Xenstore {
    /// The store of domain `domid` with `memory_kib` of RAM and `vcpus` vCPUs, on the
    /// ring at `gpa`, with the keys a domU finds at boot (each vCPU's
    /// `cpu/N/availability` "online", as the toolstack writes it).
    pub fn new(gpa: u64, domid: u16, memory_kib: u64, vcpus: u32) -> Xenstore {
        let mut s = Xenstore {
            gpa,
            domid,
            next_tx: 1,
            ..Xenstore::default()
        };
        let home = s.home();
        for (k, v) in [
            (String::from("/local"), String::new()),
            (String::from("/local/domain"), String::new()),
            (home.clone(), String::new()),
            (format!("{home}/domid"), domid.to_string()),
            (format!("{home}/name"), String::from("pvmmu-guest")),
            (format!("{home}/memory"), String::new()),
            (format!("{home}/memory/target"), memory_kib.to_string()),
            (format!("{home}/memory/static-max"), memory_kib.to_string()),
            (format!("{home}/cpu"), String::new()),
            (format!("{home}/device"), String::new()),
            (format!("{home}/control"), String::new()),
            (format!("{home}/data"), String::new()),
        ] {
            s.nodes.insert(k, v.into_bytes());
        }
        for v in 0..vcpus {
            s.nodes.insert(format!("{home}/cpu/{v}"), Vec::new());
            s.nodes
                .insert(format!("{home}/cpu/{v}/availability"), b"online".to_vec());
        }
        s
    }

    /// `/local/domain/<id>`.
    fn home(&self) -> String {
        format!("/local/domain/{}", self.domid)
    }

    /// The value at absolute path `path`, if the node exists.
    pub fn read(&self, path: &str) -> Option<&[u8]> {
        self.nodes.get(path).map(Vec::as_slice)
    }

    /// An absolute path from the guest's (relative ones are under its home).
    fn absolute(&self, path: &str) -> String {
        let p = if path.starts_with('/') {
            path.to_string()
        } else {
            format!("{}/{path}", self.home())
        };
        p.trim_end_matches('/').to_string()
    }

    /// Takes every complete request from the ring, answers it, and writes as much of
    /// the answers as fits: whether anything was written (then the guest is notified).
    pub fn process<M: GuestMemory>(&mut self, mem: &M) -> bool {
        if self.gpa == 0 {
            return false;
        }
        let gpa = self.gpa;
        let at = |off: u64| GuestAddress(gpa + off);
        let (Ok(cons), Ok(prod)) = (
            mem.read_obj::<u32>(at(REQ_CONS)),
            mem.read_obj::<u32>(at(REQ_PROD)),
        ) else {
            return false;
        };
        // Take every byte the guest produced (a guest writes a message in pieces and
        // notifies only when the ring was empty, as Linux does: the backend must
        // consume what is there). A wild producer index (more than a ring ahead) is
        // ignored, as xenstored does.
        let mut cons = cons;
        if prod.wrapping_sub(cons) <= RING_SIZE {
            while cons != prod {
                let b = mem
                    .read_obj(at(REQ + u64::from(cons % RING_SIZE)))
                    .unwrap_or(0u8);
                self.input.push(b);
                cons = cons.wrapping_add(1);
            }
        }
        // Answer every complete message.
        while self.input.len() >= 16 {
            let word = |i: usize| {
                u32::from_le_bytes(self.input[i * 4..i * 4 + 4].try_into().unwrap_or_default())
            };
            let (ty, req_id, tx_id, len) = (word(0), word(1), word(2), word(3));
            if len > PAYLOAD_MAX {
                // A corrupt message: drop what was received (xenstored closes the
                // connection).
                self.input.clear();
                break;
            }
            if self.input.len() < 16 + len as usize {
                break;
            }
            let payload: Vec<u8> = self.input[16..16 + len as usize].to_vec();
            self.input.drain(..16 + len as usize);
            self.answer(ty, req_id, tx_id, &payload);
        }
        let _ = mem.write_obj(cons, at(REQ_CONS));
        self.flush(mem)
    }

    /// Writes pending responses into the response ring: whether any were.
    fn flush<M: GuestMemory>(&mut self, mem: &M) -> bool {
        let gpa = self.gpa;
        let at = |off: u64| GuestAddress(gpa + off);
        let (Ok(cons), Ok(mut prod)) = (
            mem.read_obj::<u32>(at(RSP_CONS)),
            mem.read_obj::<u32>(at(RSP_PROD)),
        ) else {
            return false;
        };
        let mut wrote = false;
        while let Some(&b) = self.out.front() {
            if prod.wrapping_sub(cons) >= RING_SIZE {
                break;
            }
            let _ = mem.write_obj(b, at(RSP + u64::from(prod % RING_SIZE)));
            prod = prod.wrapping_add(1);
            self.out.pop_front();
            wrote = true;
        }
        let _ = mem.write_obj(prod, at(RSP_PROD));
        wrote
    }

    fn reply(&mut self, ty: u32, req_id: u32, tx_id: u32, payload: &[u8]) {
        for w in [ty, req_id, tx_id, payload.len() as u32] {
            self.out.extend(w.to_le_bytes());
        }
        self.out.extend(payload);
    }

    fn error(&mut self, req_id: u32, tx_id: u32, err: &str) {
        let mut p = err.as_bytes().to_vec();
        p.push(0);
        self.reply(XS_ERROR, req_id, tx_id, &p);
    }

    fn ok(&mut self, ty: u32, req_id: u32, tx_id: u32) {
        self.reply(ty, req_id, tx_id, b"OK\0");
    }

    /// Fires the watches at or above `path` (absolute).
    fn changed(&mut self, path: &str) {
        let home = format!("{}/", self.home());
        let events: Vec<Vec<u8>> = self
            .watches
            .iter()
            .filter(|(w, _, _)| path == w || path.starts_with(&format!("{w}/")))
            .map(|(_, token, relative)| {
                let shown = if *relative {
                    path.strip_prefix(&home).unwrap_or(path)
                } else {
                    path
                };
                let mut p = shown.as_bytes().to_vec();
                p.push(0);
                p.extend(token.as_bytes());
                p.push(0);
                p
            })
            .collect();
        for e in events {
            self.reply(XS_WATCH_EVENT, 0, 0, &e);
        }
    }

    /// Creates `path` and its missing parents (empty values).
    fn create(&mut self, path: &str) {
        let mut at = String::new();
        for part in path.split('/').filter(|p| !p.is_empty()) {
            at.push('/');
            at.push_str(part);
            self.nodes.entry(at.clone()).or_default();
        }
    }

    fn answer(&mut self, ty: u32, req_id: u32, tx_id: u32, payload: &[u8]) {
        // Arguments are NUL-terminated strings; a write's value is the rest.
        let mut args = payload.split(|&b| b == 0);
        let first = String::from_utf8_lossy(args.next().unwrap_or_default()).into_owned();
        log::debug!("xenstore: request {ty} ({req_id}, tx {tx_id}) for {first:?}");
        match ty {
            XS_READ => match self.nodes.get(&self.absolute(&first)) {
                Some(v) => {
                    let v = v.clone();
                    self.reply(ty, req_id, tx_id, &v);
                }
                None => self.error(req_id, tx_id, "ENOENT"),
            },
            XS_DIRECTORY => {
                let path = self.absolute(&first);
                if !self.nodes.contains_key(&path) {
                    return self.error(req_id, tx_id, "ENOENT");
                }
                let prefix = format!("{path}/");
                let mut out = Vec::new();
                for k in self.nodes.keys() {
                    if let Some(child) = k.strip_prefix(&prefix)
                        && !child.contains('/')
                    {
                        out.extend(child.as_bytes());
                        out.push(0);
                    }
                }
                self.reply(ty, req_id, tx_id, &out);
            }
            XS_WRITE => {
                let path = self.absolute(&first);
                let value = payload.get(first.len() + 1..).unwrap_or_default().to_vec();
                self.create(&path);
                self.nodes.insert(path.clone(), value);
                self.ok(ty, req_id, tx_id);
                self.changed(&path);
            }
            XS_MKDIR => {
                let path = self.absolute(&first);
                self.create(&path);
                self.ok(ty, req_id, tx_id);
                self.changed(&path);
            }
            XS_RM => {
                let path = self.absolute(&first);
                let prefix = format!("{path}/");
                self.nodes
                    .retain(|k, _| k != &path && !k.starts_with(&prefix));
                self.ok(ty, req_id, tx_id);
                self.changed(&path);
            }
            XS_GET_PERMS => {
                if self.nodes.contains_key(&self.absolute(&first)) {
                    let p = format!("n{}\0", self.domid);
                    self.reply(ty, req_id, tx_id, p.as_bytes());
                } else {
                    self.error(req_id, tx_id, "ENOENT");
                }
            }
            XS_SET_PERMS | XS_UNWATCH | XS_RESET_WATCHES => {
                if ty == XS_RESET_WATCHES {
                    self.watches.clear();
                }
                if ty == XS_UNWATCH {
                    let token =
                        String::from_utf8_lossy(args.next().unwrap_or_default()).into_owned();
                    let path = self.absolute(&first);
                    self.watches
                        .retain(|(w, t, _)| !(w == &path && t == &token));
                }
                self.ok(ty, req_id, tx_id);
            }
            XS_WATCH => {
                let token = String::from_utf8_lossy(args.next().unwrap_or_default()).into_owned();
                let path = self.absolute(&first);
                self.watches
                    .push((path.clone(), token, !first.starts_with('/')));
                self.ok(ty, req_id, tx_id);
                // A new watch fires once at once, as xenstored's do.
                let home = format!("{}/", self.home());
                let shown = if first.starts_with('/') {
                    path.clone()
                } else {
                    path.strip_prefix(&home).unwrap_or(&path).to_string()
                };
                if let Some((_, token, _)) = self.watches.last().cloned() {
                    let mut p = shown.into_bytes();
                    p.push(0);
                    p.extend(token.as_bytes());
                    p.push(0);
                    self.reply(XS_WATCH_EVENT, 0, 0, &p);
                }
            }
            XS_TRANSACTION_START => {
                let id = format!("{}\0", self.next_tx);
                self.next_tx = self.next_tx.wrapping_add(1).max(1);
                self.reply(ty, req_id, tx_id, id.as_bytes());
            }
            XS_TRANSACTION_END => self.ok(ty, req_id, tx_id),
            XS_GET_DOMAIN_PATH => {
                let d: u16 = first.parse().unwrap_or(self.domid);
                let p = format!("/local/domain/{d}\0");
                self.reply(ty, req_id, tx_id, p.as_bytes());
            }
            _ => self.error(req_id, tx_id, "EINVAL"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    /// Puts a request on the ring (at producer `prod`) and returns the new producer.
    fn request(mem: &GuestMemoryMmap<()>, prod: u32, ty: u32, payload: &[u8]) -> u32 {
        let mut m = Vec::new();
        for w in [ty, 7, 0, payload.len() as u32] {
            m.extend(w.to_le_bytes());
        }
        m.extend(payload);
        for (i, b) in m.iter().enumerate() {
            let at = 0x1000 + u64::from((prod + i as u32) % RING_SIZE);
            mem.write_obj(*b, GuestAddress(at)).unwrap();
        }
        let prod = prod + m.len() as u32;
        mem.write_obj(prod, GuestAddress(0x1000 + REQ_PROD))
            .unwrap();
        prod
    }

    /// The responses on the ring from `cons`: (type, payload) each, and the new consumer.
    fn responses(mem: &GuestMemoryMmap<()>, mut cons: u32) -> (Vec<(u32, Vec<u8>)>, u32) {
        let prod: u32 = mem.read_obj(GuestAddress(0x1000 + RSP_PROD)).unwrap();
        let byte = |i: u32| -> u8 {
            mem.read_obj(GuestAddress(0x1000 + RSP + u64::from(i % RING_SIZE)))
                .unwrap()
        };
        let mut out = Vec::new();
        while cons < prod {
            let w = |k: u32| u32::from_le_bytes([0, 1, 2, 3].map(|j| byte(cons + k * 4 + j)));
            let (ty, len) = (w(0), w(3));
            out.push((ty, (0..len).map(|i| byte(cons + 16 + i)).collect()));
            cons += 16 + len;
        }
        mem.write_obj(cons, GuestAddress(0x1000 + RSP_CONS))
            .unwrap();
        (out, cons)
    }

    #[test]
    fn a_domu_reads_writes_lists_and_watches() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x3000)]).unwrap();
        let mut xs = Xenstore::new(0x1000, 1, 262_144, 1);
        let mut prod = request(&mem, 0, XS_READ, b"domid\0");
        prod = request(&mem, prod, XS_READ, b"/local/domain/1/memory/target\0");
        prod = request(&mem, prod, XS_READ, b"nope\0");
        assert!(xs.process(&mem));
        let (r, cons) = responses(&mem, 0);
        assert_eq!(r[0], (XS_READ, b"1".to_vec()));
        assert_eq!(r[1], (XS_READ, b"262144".to_vec()));
        assert_eq!(r[2], (XS_ERROR, b"ENOENT\0".to_vec()));
        // A watch fires at once, and again on a write below it.
        prod = request(&mem, prod, XS_WATCH, b"control/shutdown\0tok\0");
        prod = request(&mem, prod, XS_WRITE, b"control/shutdown\0poweroff");
        let _ = request(&mem, prod, XS_DIRECTORY, b"control\0");
        assert!(xs.process(&mem));
        let (r, _) = responses(&mem, cons);
        assert_eq!(r[0], (XS_WATCH, b"OK\0".to_vec()));
        assert_eq!(r[1], (XS_WATCH_EVENT, b"control/shutdown\0tok\0".to_vec()));
        assert_eq!(r[2], (XS_WRITE, b"OK\0".to_vec()));
        assert_eq!(r[3], (XS_WATCH_EVENT, b"control/shutdown\0tok\0".to_vec()));
        assert_eq!(r[4], (XS_DIRECTORY, b"shutdown\0".to_vec()));
        assert_eq!(
            xs.read("/local/domain/1/control/shutdown"),
            Some(&b"poweroff"[..])
        );
    }

    #[test]
    fn a_message_written_in_pieces_is_answered_when_whole() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x3000)]).unwrap();
        let mut xs = Xenstore::new(0x1000, 1, 1024, 1);
        // The header alone (as Linux writes it first): consumed, nothing answered.
        let mut hdr = Vec::new();
        for w in [XS_READ, 9u32, 0, 6] {
            hdr.extend(w.to_le_bytes());
        }
        for (i, b) in hdr.iter().enumerate() {
            mem.write_obj(*b, GuestAddress(0x1000 + i as u64)).unwrap();
        }
        mem.write_obj(16u32, GuestAddress(0x1000 + REQ_PROD))
            .unwrap();
        assert!(!xs.process(&mem));
        assert_eq!(
            mem.read_obj::<u32>(GuestAddress(0x1000 + REQ_CONS))
                .unwrap(),
            16
        );
        // Then the payload.
        mem.write_slice(b"domid\0", GuestAddress(0x1000 + 16))
            .unwrap();
        mem.write_obj(22u32, GuestAddress(0x1000 + REQ_PROD))
            .unwrap();
        assert!(xs.process(&mem));
        let (r, _) = responses(&mem, 0);
        assert_eq!(r, vec![(XS_READ, b"1".to_vec())]);
    }
}
