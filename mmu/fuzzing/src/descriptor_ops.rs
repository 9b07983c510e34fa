//! The `descriptor_ops` harness: descriptor tables of a 64-bit PV domain with two vCPUs
//! (`set_gdt`, `update_descriptor`) among what competes for the same frames (writable
//! mappings through pinned L1 tables, L1 pins, the guest's own writes to frames it may
//! write, teardown).
//!
//! The oracle is a model of Xen's rules written from them (`pv_set_gdt`,
//! `do_update_descriptor`, `check_descriptor` for a 64-bit guest), not from the library:
//! from each frame's state before an operation (owner, general count, type and type
//! count, whether its descriptor type is validated) it predicts the result, every
//! frame's counts after, each vCPU's GDT, and the contents of every descriptor page
//! (descriptors are fixed up in place when a frame is validated, and `update_descriptor`
//! stores the fixed form). After every operation the audit must be clean; after
//! teardown every frame must be free.

use std::collections::BTreeMap;

use arbitrary::{Arbitrary, Unstructured};
use pvmmu::{
    Caller, DomainConfig, Errno, Machine, MachineConfig, Mfn, NoFlush, PageInfo, PageType,
};
use pvmmu_abi::mmu::{MMUEXT_PIN_L1_TABLE, MMUEXT_UNPIN_TABLE};
use pvmmu_abi::{DOMID_SELF, MmuUpdate, MmuextOp};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

type M = Machine<GuestMemoryMmap<()>, NoFlush>;

/// Machine frames (1 MiB); the domain owns `FIRST..END`.
const FRAMES: u64 = 256;
const FIRST: u64 = 0x40;
const END: u64 = 0x80;
const DOM: u16 = 1;
/// Descriptors per page, and the first entry Xen reserves (14 pages of guest GDT).
const PER_PAGE: u64 = 512;
const FIRST_RESERVED_GDT_ENTRY: u64 = 14 * PER_PAGE;
/// Xen's flat 64-bit kernel code selector (the one a call gate may name besides the
/// guest's own GDT and LDT selectors).
const FLAT_KERNEL_CS: u32 = 0xe033;

/// A frame, mostly the domain's.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum FrameSel {
    /// One of the domain's frames.
    Own(u8),
    /// Any frame of the machine, or beyond it.
    Raw(u16),
}

/// A descriptor, mostly among the kinds the rules tell apart.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Desc {
    /// A code or data segment (S set) with this DPL, present or not.
    Segment(u8, bool, u32),
    /// A 64-bit call gate naming `selector`, with DPL and the low byte of the high word
    /// (reserved: must be zero).
    Gate(u16, u8, u8),
    /// A system descriptor of this type (LDT 2, TSS 9, interrupt gate 14, ...).
    System(u8, bool),
    /// Type 0 (the second half of a call gate).
    Zero(u32),
    /// Anything.
    Raw(u64),
}

impl Desc {
    fn value(self) -> u64 {
        const P: u64 = 1 << 47;
        match self {
            Desc::Segment(dpl, present, base) => {
                let flags = (1 << 44) | (u64::from(dpl & 3) << 45) | 0x0a << 40; // code, RX
                let p = if present { P } else { 0 };
                flags | p | u64::from(base & 0xff00_ffff) | (0xaf << 48)
            }
            Desc::Gate(sel, dpl, reserved) => {
                let sel = match sel % 5 {
                    0 => u64::from(FLAT_KERNEL_CS),
                    1 => 0xe008,                              // Xen's own, refused
                    2 => 0x4 | u64::from(sel & 0xfff8),       // an LDT selector
                    3 => (FIRST_RESERVED_GDT_ENTRY << 3) | 3, // first reserved entry
                    _ => u64::from(sel) & ((FIRST_RESERVED_GDT_ENTRY << 3) - 1),
                };
                (sel << 16)
                    | 0x1234
                    | P
                    | (0x0c << 40)
                    | (u64::from(dpl & 3) << 45)
                    | (u64::from(reserved % 4) << 32)
            }
            Desc::System(ty, present) => {
                (u64::from(ty & 0xf) << 40) | if present { P } else { 0 } | 0x67
            }
            Desc::Zero(low) => u64::from(low) | P,
            Desc::Raw(v) => v,
        }
    }
}

/// One operation.
#[derive(Arbitrary, Debug, Clone)]
pub enum Op {
    /// `set_gdt` for vCPU `.0`: frames and the number of entries.
    SetGdt(bool, Vec<FrameSel>, u16),
    /// `update_descriptor` by vCPU `.0` at descriptor `.2` of a frame (`.3`: misaligned).
    Update(bool, FrameSel, u16, bool, Desc),
    /// The guest writes a descriptor into a frame it may write (one with no type, or a
    /// writable one).
    GuestWrite(FrameSel, u16, Desc),
    /// `MMUEXT_PIN_L1_TABLE` of a frame (zeroed first when the guest may write it).
    Pin(FrameSel),
    /// `MMUEXT_UNPIN_TABLE`.
    Unpin(FrameSel),
    /// An entry of a pinned table mapping a frame read-only or writable, or nothing.
    Map(u8, u16, Option<(FrameSel, bool)>),
    /// Domain teardown.
    Teardown,
}

/// What the rules read and predict of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Frame {
    count: u64,
    ty: PageType,
    type_count: u64,
    validated: bool,
}

impl From<PageInfo> for Frame {
    fn from(p: PageInfo) -> Frame {
        Frame {
            count: p.count,
            ty: p.ty,
            type_count: p.type_count,
            validated: p.validated,
        }
    }
}

/// Xen's `check_descriptor` for a 64-bit PV guest, from its rules: `Some(stored form)`
/// or `None` (refused).
fn xen_check_descriptor(d: u64) -> Option<u64> {
    let (mut a, mut b) = (d as u32, (d >> 32) as u32);
    // Not present: always faults, so anything goes.
    if b & (1 << 15) == 0 {
        return Some(d);
    }
    // The DPL is raised to the guest kernel's (ring 3 for a 64-bit PV kernel).
    let mut dpl = (b >> 13) & 3;
    if dpl < 3 {
        dpl = 3;
    }
    b = (b & !(3 << 13)) | (dpl << 13);
    if b & (1 << 12) != 0 {
        // Code and data segments: no base or limit checks.
        return Some(u64::from(a) | u64::from(b) << 32);
    }
    let ty = (b >> 8) & 0xf;
    if ty == 0 {
        return Some(d); // the second half of a call gate: harmless, unchanged
    }
    if ty != 0xc {
        return None; // every system type but a call gate
    }
    let cs = a >> 16;
    let gdt_entry = u64::from(cs >> 3) < FIRST_RESERVED_GDT_ENTRY;
    if !(gdt_entry || cs == FLAT_KERNEL_CS || cs & 4 != 0) {
        return None;
    }
    // DPL forced to 0 (so using the gate faults into the hypervisor), the original DPL
    // kept in the selector's RPL.
    b &= !(3 << 13);
    a = (a & 0xffff) | (((cs & !3) | dpl) << 16);
    if b & 0xff != 0 {
        return None; // reserved bits
    }
    Some(u64::from(a) | u64::from(b) << 32)
}

struct World {
    m: M,
    alive: bool,
    /// Each vCPU's GDT as the model has it: frames and entries.
    gdt: [(Vec<u64>, u64); 2],
}

fn frames_of(m: &M) -> BTreeMap<u64, Frame> {
    m.frames().iter().map(|(f, p)| (f.0, p.into())).collect()
}

fn page(m: &M, f: u64) -> Vec<u64> {
    let mut b = vec![0u8; 4096];
    if m.memory()
        .read_slice(&mut b, GuestAddress(f << 12))
        .is_err()
    {
        return Vec::new();
    }
    b.chunks(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
        .collect()
}

impl World {
    fn new() -> World {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), (FRAMES << 12) as usize)])
            .expect("memory");
        let mut m = Machine::new(mem, MachineConfig::default()).expect("machine");
        m.create_domain(DomainConfig::new(DOM).vcpus(2))
            .expect("domain");
        m.assign_frames(DOM, (FIRST..END).map(Mfn)).expect("frames");
        World {
            m,
            alive: true,
            gdt: [(Vec::new(), 0), (Vec::new(), 0)],
        }
    }

    fn frame(&self, sel: FrameSel) -> u64 {
        match sel {
            FrameSel::Own(i) => FIRST + u64::from(i) % (END - FIRST),
            FrameSel::Raw(r) => u64::from(r) % (FRAMES + 16),
        }
    }

    /// Whether the guest may write frame `f` itself (mapped writable, it would be):
    /// its own, with no type or a writable one.
    fn guest_writable(&self, f: u64) -> bool {
        self.m.frames().get(Mfn(f)).is_some_and(|p| {
            p.owner == DOM && p.count > 0 && matches!(p.ty, PageType::None | PageType::Writable)
        })
    }

    fn apply(&mut self, op: &Op) -> Result<(), String> {
        if !self.alive {
            return Ok(());
        }
        let before = frames_of(&self.m);
        match op {
            Op::SetGdt(v, sels, entries) => {
                let vcpu = usize::from(*v);
                let entries = u64::from(*entries) % (FIRST_RESERVED_GDT_ENTRY + 64);
                let frames: Vec<u64> = sels.iter().take(16).map(|s| self.frame(*s)).collect();
                let mut model = before.clone();
                let mut pages = BTreeMap::new();
                let want = self.predict_set_gdt(&mut model, &mut pages, vcpu, &frames, entries);
                let got = self
                    .m
                    .set_gdt(Caller::new(DOM, vcpu as u32), &frames, entries as u32)
                    .map_err(|e| format!("set_gdt: {e}"))?;
                if got != want {
                    return Err(format!(
                        "set_gdt({frames:x?}, {entries}): got {got:?}, want {want:?}"
                    ));
                }
                self.check(&model, &pages, "set_gdt")?;
            }
            Op::Update(v, sel, idx, misaligned, desc) => {
                let f = self.frame(*sel);
                let maddr = (f << 12) + u64::from(idx % 512) * 8 + if *misaligned { 4 } else { 0 };
                let d = desc.value();
                let mut pages = BTreeMap::new();
                let want = self.predict_update(&before, &mut pages, maddr, d);
                let got = self
                    .m
                    .hypercall_update_descriptor(Caller::new(DOM, u32::from(*v)), maddr, d)
                    .map_err(|e| format!("update_descriptor: {e}"))?;
                if got != want {
                    return Err(format!(
                        "update_descriptor({maddr:#x}, {d:#x}): got {got}, want {want}"
                    ));
                }
                self.check(&before, &pages, "update_descriptor")?;
            }
            Op::GuestWrite(sel, idx, desc) => {
                let f = self.frame(*sel);
                if self.guest_writable(f) {
                    let at = (f << 12) + u64::from(idx % 512) * 8;
                    let _ = self.m.memory().write_obj(desc.value(), GuestAddress(at));
                }
            }
            Op::Pin(sel) => {
                let f = self.frame(*sel);
                if self.guest_writable(f) {
                    let _ = self
                        .m
                        .memory()
                        .write_slice(&[0u8; 4096], GuestAddress(f << 12));
                }
                self.ext(MMUEXT_PIN_L1_TABLE, f);
            }
            Op::Unpin(sel) => {
                let f = self.frame(*sel);
                self.ext(MMUEXT_UNPIN_TABLE, f);
            }
            Op::Map(t, slot, target) => {
                let tables: Vec<u64> = self
                    .m
                    .frames()
                    .iter()
                    .filter(|(_, p)| p.owner == DOM && p.pinned)
                    .map(|(f, _)| f.0)
                    .collect();
                let Some(&table) = tables.get(usize::from(*t) % tables.len().max(1)) else {
                    return Ok(());
                };
                let val = target.map_or(0, |(sel, rw)| {
                    (self.frame(sel) << 12) | 0x21 | if rw { 2 } else { 0 }
                });
                let req = MmuUpdate {
                    ptr: (table << 12) + u64::from(slot % 512) * 8,
                    val,
                };
                let _ = self
                    .m
                    .mmu_update(Caller::new(DOM, 0), &[req], DOMID_SELF.into())
                    .map_err(|e| format!("mmu_update: {e}"))?;
            }
            Op::Teardown => {
                self.m
                    .destroy_domain(DOM)
                    .map_err(|e| format!("teardown: {e}"))?;
                self.alive = false;
            }
        }
        self.m
            .audit()
            .map_err(|e| format!("audit after {op:?}: {e}"))?;
        for v in 0..2u32 {
            let (frames, ents) = self.m.gdt(Caller::new(DOM, v));
            let frames: Vec<u64> = frames.iter().map(|f| f.0).collect();
            if self.alive && (frames.clone(), u64::from(ents)) != self.gdt[v as usize] {
                return Err(format!(
                    "vCPU {v}'s GDT is {frames:x?} / {ents}, want {:x?}",
                    self.gdt[v as usize]
                ));
            }
        }
        Ok(())
    }

    fn ext(&mut self, cmd: u32, f: u64) {
        let _ = self.m.mmuext_op(
            Caller::new(DOM, 0),
            &[MmuextOp::new(cmd, f, 0)],
            DOMID_SELF.into(),
        );
    }

    /// `pv_set_gdt`: too many entries EINVAL; each of the first `ceil(entries / 512)`
    /// frames must be the domain's and take the descriptor type (a frame whose type
    /// count is 0 changes type, its descriptors checked and fixed up in place unless
    /// already validated as descriptors; one typed otherwise is refused), else every
    /// reference taken so far goes back and EINVAL; on success the old GDT's frames
    /// are released.
    fn predict_set_gdt(
        &mut self,
        model: &mut BTreeMap<u64, Frame>,
        pages: &mut BTreeMap<u64, Vec<u64>>,
        vcpu: usize,
        frames: &[u64],
        entries: u64,
    ) -> Result<(), Errno> {
        if entries > FIRST_RESERVED_GDT_ENTRY {
            return Err(Errno::EINVAL);
        }
        let n = entries.div_ceil(PER_PAGE) as usize;
        if frames.len() < n {
            return Err(Errno::EINVAL);
        }
        let snapshot = model.clone();
        for &f in &frames[..n] {
            let owned = self
                .m
                .frames()
                .get(Mfn(f))
                .is_some_and(|p| p.owner == DOM && p.count > 0);
            let Some(p) = model.get_mut(&f).filter(|_| owned) else {
                *model = snapshot;
                pages.clear();
                return Err(Errno::EINVAL);
            };
            if p.type_count > 0 && p.ty != PageType::SegDesc {
                *model = snapshot;
                pages.clear();
                return Err(Errno::EINVAL);
            }
            if p.type_count == 0 && !(p.ty == PageType::SegDesc && p.validated) {
                // Validation: every descriptor checked, fixed up in place.
                let current = pages.get(&f).cloned().unwrap_or_else(|| page(&self.m, f));
                let fixed: Option<Vec<u64>> =
                    current.iter().map(|d| xen_check_descriptor(*d)).collect();
                let Some(fixed) = fixed else {
                    *model = snapshot;
                    pages.clear();
                    return Err(Errno::EINVAL);
                };
                pages.insert(f, fixed);
                p.ty = PageType::SegDesc;
                p.validated = true;
            }
            p.count += 1;
            p.type_count += 1;
        }
        // The old GDT's references go.
        for f in std::mem::take(&mut self.gdt[vcpu].0) {
            if let Some(p) = model.get_mut(&f) {
                p.count -= 1;
                p.type_count -= 1;
            }
        }
        self.gdt[vcpu] = (frames[..n].to_vec(), entries);
        Ok(())
    }

    /// `do_update_descriptor`: misaligned or refused by `check_descriptor` EINVAL; the
    /// frame must be the domain's and take its own descriptor type if it has it, the
    /// writable type otherwise; then the fixed descriptor is stored. Counts end as
    /// they were.
    fn predict_update(
        &self,
        before: &BTreeMap<u64, Frame>,
        pages: &mut BTreeMap<u64, Vec<u64>>,
        maddr: u64,
        d: u64,
    ) -> i64 {
        let einval = Errno::EINVAL.neg();
        if !maddr.is_multiple_of(8) {
            return einval;
        }
        let Some(fixed) = xen_check_descriptor(d) else {
            return einval;
        };
        let f = maddr >> 12;
        let owned = self
            .m
            .frames()
            .get(Mfn(f))
            .is_some_and(|p| p.owner == DOM && p.count > 0);
        let Some(p) = before.get(&f).filter(|_| owned) else {
            return einval;
        };
        let mut content = page(&self.m, f);
        let ok = match p.ty {
            // A descriptor page not validated yet is validated (and fixed up) now.
            PageType::SegDesc if p.type_count == 0 && !p.validated => {
                match content.iter().map(|d| xen_check_descriptor(*d)).collect() {
                    Some(v) => {
                        content = v;
                        true
                    }
                    None => false,
                }
            }
            PageType::SegDesc | PageType::None | PageType::Writable => true,
            // Another type: the writable type only when no reference holds it.
            _ => p.type_count == 0,
        };
        if !ok {
            return einval;
        }
        if let Some(slot) = content.get_mut(((maddr & 0xfff) / 8) as usize) {
            *slot = fixed;
        }
        pages.insert(f, content);
        0
    }

    fn check(
        &self,
        model: &BTreeMap<u64, Frame>,
        pages: &BTreeMap<u64, Vec<u64>>,
        what: &str,
    ) -> Result<(), String> {
        let now = frames_of(&self.m);
        for (f, w) in model {
            let Some(g) = now.get(f) else { continue };
            // The type of a frame no reference holds is the library's business.
            let same = (g.count, g.type_count) == (w.count, w.type_count)
                && (w.type_count == 0 || g.ty == w.ty);
            if !same {
                return Err(format!("{what}: frame {f:#x} is {g:?}, want {w:?}"));
            }
        }
        for (f, want) in pages {
            if &page(&self.m, *f) != want {
                return Err(format!("{what}: the descriptors of frame {f:#x} differ"));
            }
        }
        Ok(())
    }

    fn finish(mut self) -> Result<(), String> {
        if self.alive {
            self.m
                .destroy_domain(DOM)
                .map_err(|e| format!("teardown: {e}"))?;
        }
        if let Some((f, p)) = self.m.frames().iter().find(|(_, p)| p.count != 0) {
            return Err(format!("frame {f} not returned after teardown: {p:?}"));
        }
        self.m
            .audit()
            .map_err(|e| format!("audit after teardown: {e}"))
    }
}

/// The harness: decode `data` into operations, run them, check the oracles, tear down;
/// panics when an oracle fails.
pub fn descriptor_ops(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let Ok(ops) = Vec::<Op>::arbitrary(&mut u) else {
        return;
    };
    let mut w = World::new();
    for op in ops.iter().take(48) {
        if let Err(e) = w.apply(op) {
            panic!("{e}");
        }
    }
    if let Err(e) = w.finish() {
        panic!("{e}");
    }
}

#[cfg(test)]
mod tests {
    use super::xen_check_descriptor;

    #[test]
    fn the_models_descriptor_rules() {
        // Ring-0 code: DPL raised to 3.
        assert_eq!(
            xen_check_descriptor(0x00af_9a00_0000_ffff),
            Some(0x00af_fa00_0000_ffff)
        );
        // A present TSS: refused; not present: anything.
        assert_eq!(xen_check_descriptor(0x0000_8900_0000_0067), None);
        assert_eq!(
            xen_check_descriptor(0x0000_0900_0000_0067),
            Some(0x0000_0900_0000_0067)
        );
        // A call gate to the flat kernel CS, DPL 3: stored with DPL 0 and RPL 3.
        let gate = (0xe033u64 << 16) | 0x1234 | (0xec00u64 << 32);
        assert_eq!(
            xen_check_descriptor(gate),
            Some((0xe033u64 << 16) | 0x1234 | (0x8c00u64 << 32))
        );
        // To Xen's own code segment: refused; with a reserved bit: refused.
        assert_eq!(
            xen_check_descriptor((0xe008u64 << 16) | (0xec00u64 << 32)),
            None
        );
        assert_eq!(xen_check_descriptor(gate | (1 << 32)), None);
    }
}
