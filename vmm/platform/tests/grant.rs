//! The grant table without KVM: its frames shared with the guest and grown on demand,
//! its size, its version switched as Xen switches it (reserved entries kept, status
//! frames given back only when the guest no longer maps them: XSA-255), and Xen's
//! errors and statuses for bad arguments.

use platform::elf::minimal_image;
use platform::grant::{GrantTable, MAX_GRANT_FRAMES};
use platform::{DOMID, Domain, DomainSpec};
use pvmmu::{Caller, Errno, GuestView, Mfn, NoFlush, PageType};
use pvmmu_abi::DOMID_SELF;
use pvmmu_abi::grant::{
    GNTMAP_device_map, GNTMAP_host_map, GNTMAP_readonly, GNTST_bad_domain, GNTST_bad_gntref,
    GNTST_bad_handle, GNTST_general_error, GNTST_okay, GNTTABOP_get_status_frames,
    GNTTABOP_get_version, GNTTABOP_map_grant_ref, GNTTABOP_query_size, GNTTABOP_set_version,
    GNTTABOP_setup_table, GNTTABOP_unmap_and_replace, GNTTABOP_unmap_grant_ref,
    GnttabGetStatusFrames, GnttabMapGrantRef, GnttabQuerySize, GnttabSetupTable, GnttabUnmap,
};
use vm_memory::{Bytes, GuestAddress};

type Dom = Domain<NoFlush>;

/// The argument block and the frame list, in the boot mapping (identity, writable).
const UOP: u64 = 0x15_0000;
const LIST: u64 = 0x15_1000;
/// A page of the boot mapping to map grant frames over.
const MAP_VA: u64 = 0x17_0000;

fn me() -> Caller {
    Caller::new(DOMID, 0)
}

fn domain() -> (Dom, GrantTable) {
    let d = Domain::create(&DomainSpec::new(minimal_image(&[0xf4]), 16), NoFlush).expect("domain");
    let gt = GrantTable::new(d.boot.grant_first);
    (d, gt)
}

fn poke(d: &Dom, va: u64, bytes: &[u8]) {
    let root = d.machine.kernel_root(me());
    GuestView::new(d.machine.memory(), root)
        .write(va, bytes)
        .expect("guest write");
}

fn peek<const N: usize>(d: &Dom, va: u64) -> [u8; N] {
    let root = d.machine.kernel_root(me());
    let mut b = [0u8; N];
    GuestView::new(d.machine.memory(), root)
        .read(va, &mut b)
        .expect("guest read");
    b
}

fn op(d: &mut Dom, gt: &mut GrantTable, cmd: u32, uop: u64, count: u64) -> i64 {
    gt.op(&mut d.machine, me(), u64::from(cmd), uop, count)
}

/// `setup_table(dom, n)`: (RAX, status, the frames listed).
fn setup(d: &mut Dom, gt: &mut GrantTable, dom: u16, n: u32) -> (i64, i16, Vec<u64>) {
    poke(d, LIST, &[0xaau8; 8 * 8]);
    let arg = GnttabSetupTable {
        dom,
        nr_frames: n,
        status: 0x55,
        frame_list: LIST,
    };
    poke(d, UOP, &arg.to_bytes());
    let rc = op(d, gt, GNTTABOP_setup_table, UOP, 1);
    let out = GnttabSetupTable::from_bytes(&peek(d, UOP));
    let list = (0..n.min(8))
        .map(|i| u64::from_le_bytes(peek(d, LIST + u64::from(i) * 8)))
        .collect();
    (rc, out.status, list)
}

fn query(d: &mut Dom, gt: &mut GrantTable, dom: u16) -> (i64, GnttabQuerySize) {
    let q = GnttabQuerySize {
        dom,
        ..GnttabQuerySize::default()
    };
    poke(d, UOP, &q.to_bytes());
    let rc = op(d, gt, GNTTABOP_query_size, UOP, 1);
    (rc, GnttabQuerySize::from_bytes(&peek(d, UOP)))
}

/// `set_version(v)`: (RAX, the version written back).
fn set_version(d: &mut Dom, gt: &mut GrantTable, v: u32) -> (i64, u32) {
    poke(d, UOP, &v.to_le_bytes());
    let rc = op(d, gt, GNTTABOP_set_version, UOP, 1);
    (rc, u32::from_le_bytes(peek(d, UOP)))
}

fn get_version(d: &mut Dom, gt: &mut GrantTable) -> u32 {
    poke(d, UOP, &[0xf0, 0x7f, 0, 0, 0xff, 0xff, 0xff, 0xff]);
    assert_eq!(op(d, gt, GNTTABOP_get_version, UOP, 1), 0);
    u32::from_le_bytes(peek::<8>(d, UOP)[4..].try_into().unwrap())
}

/// `get_status_frames(n)`: (RAX, status, the first frame listed).
fn status_frames(d: &mut Dom, gt: &mut GrantTable, n: u32) -> (i64, i16, u64) {
    poke(d, LIST, &[0u8; 8]);
    let arg = GnttabGetStatusFrames {
        nr_frames: n,
        dom: DOMID_SELF,
        status: 0x55,
        frame_list: LIST,
    };
    poke(d, UOP, &arg.to_bytes());
    let rc = op(d, gt, GNTTABOP_get_status_frames, UOP, 1);
    let out = GnttabGetStatusFrames::from_bytes(&peek(d, UOP));
    (rc, out.status, u64::from_le_bytes(peek(d, LIST)))
}

/// Maps frame `f` at [`MAP_VA`] (read-only) or restores the boot mapping there.
fn map(d: &mut Dom, f: Option<Mfn>) {
    let pte = match f {
        Some(f) => (f.0 << 12) | 0x25,
        None => MAP_VA | 0x67,
    };
    let rc = d
        .machine
        .hypercall_update_va_mapping(me(), MAP_VA, pte, 2)
        .unwrap();
    assert_eq!(rc, 0, "update_va_mapping {pte:#x}");
}

fn write_raw(d: &Dom, f: Mfn, off: u64, v: u64) {
    d.machine
        .memory()
        .write_obj(v, GuestAddress(f.addr() + off))
        .unwrap();
}

fn read_raw<T: vm_memory::ByteValued>(d: &Dom, f: Mfn, off: u64) -> T {
    d.machine
        .memory()
        .read_obj(GuestAddress(f.addr() + off))
        .unwrap()
}

#[test]
fn a_fresh_table_has_one_shared_frame_and_no_version() {
    let (mut d, mut gt) = domain();
    let first = Mfn(d.boot.grant_first);
    let p = d.machine.frames().get(first).unwrap();
    assert_eq!((p.owner, p.shared, p.ty), (DOMID, true, PageType::Writable));
    let (rc, q) = query(&mut d, &mut gt, DOMID_SELF);
    assert_eq!(rc, 0);
    assert_eq!(
        (q.nr_frames, q.max_nr_frames, q.status),
        (1, MAX_GRANT_FRAMES, GNTST_okay)
    );
    assert_eq!(get_version(&mut d, &mut gt), 1, "Xen starts at version 1");
    // The grant area lies above the domain's RAM: the guest's p2m does not list it.
    assert!(d.boot.grant_first * 4096 > d.boot.shared_info);
    d.machine.audit().unwrap();
}

#[test]
fn setup_table_lists_and_grows_the_frames() {
    let (mut d, mut gt) = domain();
    let first = d.boot.grant_first;
    assert_eq!(
        setup(&mut d, &mut gt, DOMID_SELF, 1),
        (0, GNTST_okay, vec![first])
    );
    assert_eq!(get_version(&mut d, &mut gt), 1);
    let (rc, st, list) = setup(&mut d, &mut gt, DOMID, 3);
    assert_eq!((rc, st), (0, GNTST_okay));
    assert_eq!(list, vec![first, first + 1, first + 2]);
    for f in &list {
        assert!(d.machine.frames().get(Mfn(*f)).unwrap().shared);
    }
    assert_eq!(query(&mut d, &mut gt, DOMID_SELF).1.nr_frames, 3);
    // The guest can map a grown frame writable.
    let rc = d
        .machine
        .hypercall_update_va_mapping(me(), MAP_VA, ((first + 2) << 12) | 0x67, 2)
        .unwrap();
    assert_eq!(rc, 0);
    d.machine.audit().unwrap();
}

#[test]
fn setup_table_statuses_and_errors() {
    let (mut d, mut gt) = domain();
    // Beyond the maximum: general error, nothing grown, the list untouched.
    let (rc, st, list) = setup(&mut d, &mut gt, DOMID_SELF, MAX_GRANT_FRAMES + 1);
    assert_eq!((rc, st), (0, GNTST_general_error));
    assert!(list.iter().all(|&f| f == 0xaaaa_aaaa_aaaa_aaaa));
    assert_eq!(query(&mut d, &mut gt, DOMID_SELF).1.nr_frames, 1);
    // A domain that does not exist.
    assert_eq!(setup(&mut d, &mut gt, 77, 1).1, GNTST_bad_domain);
    assert_eq!(query(&mut d, &mut gt, 77).1.status, GNTST_bad_domain);
    // count must be 1; the argument must be readable; the list a guest range.
    assert_eq!(
        op(&mut d, &mut gt, GNTTABOP_setup_table, UOP, 2),
        Errno::EINVAL.neg()
    );
    assert_eq!(
        op(&mut d, &mut gt, GNTTABOP_query_size, UOP, 0),
        Errno::EINVAL.neg()
    );
    assert_eq!(
        op(&mut d, &mut gt, GNTTABOP_setup_table, 0x7000_0000_0000, 1),
        Errno::EFAULT.neg()
    );
    let arg = GnttabSetupTable {
        dom: DOMID_SELF,
        nr_frames: 1,
        status: 0,
        frame_list: 0xffff_8000_0000_0000,
    };
    poke(&d, UOP, &arg.to_bytes());
    assert_eq!(
        op(&mut d, &mut gt, GNTTABOP_setup_table, UOP, 1),
        Errno::EFAULT.neg()
    );
    // A command Xen does not know; a continuation argument on a command that takes none.
    assert_eq!(op(&mut d, &mut gt, 99, UOP, 1), Errno::ENOSYS.neg());
    assert_eq!(
        op(&mut d, &mut gt, GNTTABOP_query_size | 1 << 12, UOP, 1),
        Errno::EINVAL.neg()
    );
    // A batch whose array leaves the guest's address range: -EFAULT before any entry.
    assert_eq!(
        op(
            &mut d,
            &mut gt,
            GNTTABOP_map_grant_ref,
            0x7fff_ffff_f000,
            0x1000
        ),
        Errno::EFAULT.neg()
    );
    // A domain built without a grant area has no table at all.
    let mut none = GrantTable::default();
    assert_eq!(
        none.op(&mut d.machine, me(), u64::from(GNTTABOP_query_size), UOP, 1),
        Errno::ENOSYS.neg()
    );
    d.machine.audit().unwrap();
}

#[test]
fn set_version_checks_and_writes_back_the_version_in_force() {
    let (mut d, mut gt) = domain();
    assert_eq!(set_version(&mut d, &mut gt, 3), (Errno::EINVAL.neg(), 1));
    assert_eq!(
        set_version(&mut d, &mut gt, 1),
        (0, 1),
        "same version: nothing"
    );
    assert_eq!(set_version(&mut d, &mut gt, 0), (Errno::EINVAL.neg(), 1));
    // Version 1 has no status frames.
    assert_eq!(status_frames(&mut d, &mut gt, 1).1, GNTST_general_error);
    assert_eq!(
        op(&mut d, &mut gt, GNTTABOP_set_version, 0x7000_0000_0000, 1),
        Errno::EFAULT.neg()
    );
}

#[test]
fn switching_versions_keeps_the_reserved_entries_and_clears_the_rest() {
    let (mut d, mut gt) = domain();
    let f = Mfn(d.boot.grant_first);
    assert_eq!(set_version(&mut d, &mut gt, 1), (0, 1));
    // v1 entry 3: permit access, reading, domid 0, frame 0x1234; entry 9 is not kept.
    write_raw(&d, f, 3 * 8, 0x1234_u64 << 32 | 1 | 1 << 3);
    write_raw(&d, f, 9 * 8, 0x5678_u64 << 32 | 1);
    assert_eq!(set_version(&mut d, &mut gt, 2), (0, 2));
    let (rc, st, status) = status_frames(&mut d, &mut gt, 1);
    assert_eq!((rc, st), (0, GNTST_okay));
    assert_eq!(status, d.boot.grant_first + u64::from(MAX_GRANT_FRAMES));
    assert_eq!(status_frames(&mut d, &mut gt, 2).1, GNTST_general_error);
    // v2: header flags without the in-use bits, the frame; the bits in the status.
    assert_eq!(read_raw::<u64>(&d, f, 3 * 16), 1);
    assert_eq!(read_raw::<u64>(&d, f, 3 * 16 + 8), 0x1234);
    assert_eq!(read_raw::<u16>(&d, Mfn(status), 3 * 2), 1 << 3);
    assert_eq!(read_raw::<u64>(&d, f, 9 * 16), 0, "entry 9 cleared");
    // And back: the status folded into the flags again.
    assert_eq!(set_version(&mut d, &mut gt, 1), (0, 1));
    assert_eq!(read_raw::<u64>(&d, f, 3 * 8), 0x1234_u64 << 32 | 1 | 1 << 3);
    assert_eq!(
        d.machine.frames().get(Mfn(status)).unwrap().count,
        0,
        "status frame freed"
    );
    // A reserved v2 entry whose frame does not fit v1: -ERANGE, version kept.
    assert_eq!(set_version(&mut d, &mut gt, 2), (0, 2));
    write_raw(&d, f, 16, 1);
    write_raw(&d, f, 16 + 8, 1 << 32);
    assert_eq!(set_version(&mut d, &mut gt, 1), (Errno::ERANGE.neg(), 2));
    d.machine.audit().unwrap();
}

#[test]
fn xsa_255_status_frames_stay_while_the_guest_maps_them() {
    let (mut d, mut gt) = domain();
    assert_eq!(set_version(&mut d, &mut gt, 2), (0, 2));
    let (_, st, status) = status_frames(&mut d, &mut gt, 1);
    assert_eq!(st, GNTST_okay);
    map(&mut d, Some(Mfn(status)));
    let before = d.machine.frames().get(Mfn(status)).unwrap();
    assert_eq!(set_version(&mut d, &mut gt, 1), (Errno::EBUSY.neg(), 2));
    assert_eq!(d.machine.frames().get(Mfn(status)).unwrap(), before);
    assert_eq!(get_version(&mut d, &mut gt), 2);
    d.machine.audit().unwrap();
    map(&mut d, None);
    assert_eq!(set_version(&mut d, &mut gt, 1), (0, 1));
    assert!(!d.machine.frames().get(Mfn(status)).unwrap().shared);
    d.machine.audit().unwrap();
}

/// Grants frame `frame` to `domid` in v1 entry `r` with `flags`.
fn grant_v1(d: &Dom, r: u64, flags: u16, domid: u16, frame: u64) {
    let f = Mfn(d.boot.grant_first);
    write_raw(
        d,
        f,
        r * 8,
        (frame << 32) | u64::from(domid) << 16 | u64::from(flags),
    );
}

fn entry_flags(d: &Dom, r: u64) -> u16 {
    read_raw::<u16>(d, Mfn(d.boot.grant_first), r * 8)
}

/// One `map_grant_ref`: (RAX, what was written back).
fn map_ref(
    d: &mut Dom,
    gt: &mut GrantTable,
    r: u32,
    dom: u16,
    flags: u32,
    host_addr: u64,
) -> (i64, GnttabMapGrantRef) {
    let arg = GnttabMapGrantRef {
        host_addr,
        flags,
        r#ref: r,
        dom,
        status: 0x55,
        handle: 0xdead,
        dev_bus_addr: 0,
    };
    poke(d, UOP, &arg.to_bytes());
    let rc = op(d, gt, GNTTABOP_map_grant_ref, UOP, 1);
    (rc, GnttabMapGrantRef::from_bytes(&peek(d, UOP)))
}

/// `unmap_grant_ref` (or `unmap_and_replace`) of a batch: (RAX, the statuses).
fn unmap_refs(
    d: &mut Dom,
    gt: &mut GrantTable,
    ops: &[GnttabUnmap],
    replace: bool,
) -> (i64, Vec<i16>) {
    for (i, u) in ops.iter().enumerate() {
        poke(d, LIST + i as u64 * 24, &u.to_bytes());
    }
    let cmd = if replace {
        GNTTABOP_unmap_and_replace
    } else {
        GNTTABOP_unmap_grant_ref
    };
    let rc = op(d, gt, cmd, LIST, ops.len() as u64);
    let st = (0..ops.len())
        .map(|i| GnttabUnmap::from_bytes(&peek(d, LIST + i as u64 * 24)).status)
        .collect();
    (rc, st)
}

const HOST: u32 = GNTMAP_host_map;
const GTF_PERMIT: u16 = 1;
const GTF_RO: u16 = 1 << 2;
const READING: u16 = 1 << 3;
const WRITING: u16 = 1 << 4;
/// A frame of the boot mapping to grant.
const GRANTED: u64 = 0x16;

#[test]
fn mapping_an_own_grant_marks_the_entry_and_unmapping_clears_it() {
    let (mut d, mut gt) = domain();
    grant_v1(&d, 8, GTF_PERMIT, DOMID, GRANTED);
    let before = d.machine.frames().get(Mfn(GRANTED)).unwrap();
    let (rc, out) = map_ref(&mut d, &mut gt, 8, DOMID, HOST | GNTMAP_device_map, MAP_VA);
    assert_eq!((rc, out.status), (0, GNTST_okay));
    assert_eq!(out.dev_bus_addr, GRANTED << 12);
    assert_eq!(entry_flags(&d, 8), GTF_PERMIT | READING | WRITING);
    let now = d.machine.frames().get(Mfn(GRANTED)).unwrap();
    assert_eq!(
        now.type_count,
        before.type_count + 2,
        "host and device halves"
    );
    // The host mapping is visible through the guest's tables.
    assert_eq!(peek::<8>(&d, MAP_VA), peek::<8>(&d, GRANTED << 12));
    d.machine.audit().unwrap();
    // Unmap the host half, then the device half.
    let u = GnttabUnmap {
        host_addr: MAP_VA,
        second: 0,
        handle: out.handle,
        status: 0x55,
    };
    assert_eq!(
        unmap_refs(&mut d, &mut gt, &[u], false),
        (0, vec![GNTST_okay])
    );
    assert_eq!(
        entry_flags(&d, 8),
        GTF_PERMIT | READING | WRITING,
        "device half left"
    );
    let u = GnttabUnmap {
        host_addr: 0,
        second: GRANTED << 12,
        ..u
    };
    assert_eq!(
        unmap_refs(&mut d, &mut gt, &[u], false),
        (0, vec![GNTST_okay])
    );
    assert_eq!(entry_flags(&d, 8), GTF_PERMIT, "no longer in use");
    assert_eq!(d.machine.frames().get(Mfn(GRANTED)).unwrap(), before);
    // The handle is gone.
    assert_eq!(
        unmap_refs(&mut d, &mut gt, &[u], false),
        (0, vec![GNTST_bad_handle])
    );
    d.machine.audit().unwrap();
}

#[test]
fn map_statuses_in_xens_order() {
    let (mut d, mut gt) = domain();
    grant_v1(&d, 8, GTF_PERMIT, DOMID, GRANTED);
    grant_v1(&d, 9, GTF_PERMIT, DOMID + 1, GRANTED);
    grant_v1(&d, 10, GTF_PERMIT | GTF_RO, DOMID, GRANTED);
    grant_v1(&d, 11, 0, DOMID, GRANTED);
    let cases: [(u32, u16, u32, i16); 9] = [
        (8, DOMID, 0, GNTST_bad_gntref),         // neither half
        (8, 5, HOST, GNTST_bad_domain),          // no such domain
        (8, DOMID_SELF, HOST, GNTST_bad_domain), // not a domain id
        (8, platform::BACKEND_DOMID, HOST, GNTST_general_error), // grants nothing
        (600, platform::BACKEND_DOMID, HOST, GNTST_bad_gntref),
        (512, DOMID, HOST, GNTST_bad_gntref), // one frame: 512 entries
        (9, DOMID, HOST, GNTST_general_error), // granted to another domain
        (10, DOMID, HOST, GNTST_general_error), // read-only grant, RW map
        (11, DOMID, HOST, GNTST_general_error), // not granted
    ];
    for (r, dom, flags, want) in cases {
        let mem = d.machine.frames().get(Mfn(GRANTED));
        let (rc, out) = map_ref(&mut d, &mut gt, r, dom, flags, MAP_VA);
        assert_eq!(
            (rc, out.status),
            (0, want),
            "ref {r} dom {dom} flags {flags:#x}"
        );
        assert_eq!(d.machine.frames().get(Mfn(GRANTED)), mem);
    }
    for r in [8, 9, 10, 11] {
        assert_eq!(
            entry_flags(&d, r) & (READING | WRITING),
            0,
            "entry {r} untouched"
        );
    }
    // The read-only grant maps read-only, and only reading is marked.
    let (rc, out) = map_ref(&mut d, &mut gt, 10, DOMID, HOST | GNTMAP_readonly, MAP_VA);
    assert_eq!((rc, out.status), (0, GNTST_okay));
    assert_eq!(entry_flags(&d, 10), GTF_PERMIT | GTF_RO | READING);
    // A frame outside the domain: a bad page, and the entry is released again.
    grant_v1(&d, 12, GTF_PERMIT, DOMID, 0xf_ffff);
    let (_, out) = map_ref(&mut d, &mut gt, 12, DOMID, HOST, MAP_VA);
    assert_eq!(out.status, pvmmu_abi::grant::GNTST_bad_page);
    assert_eq!(entry_flags(&d, 12), GTF_PERMIT);
    // A guest pointer that cannot be read: -EFAULT.
    assert_eq!(
        op(&mut d, &mut gt, GNTTABOP_map_grant_ref, 0x7000_0000_0000, 1),
        Errno::EFAULT.neg()
    );
    d.machine.audit().unwrap();
}

#[test]
fn a_version_switch_waits_for_grants_in_use_but_not_for_reserved_ones() {
    let (mut d, mut gt) = domain();
    grant_v1(&d, 3, GTF_PERMIT, DOMID, GRANTED);
    grant_v1(&d, 8, GTF_PERMIT, DOMID, GRANTED + 1);
    let (_, reserved) = map_ref(&mut d, &mut gt, 3, DOMID, GNTMAP_device_map, 0);
    assert_eq!(reserved.status, GNTST_okay);
    let (_, out) = map_ref(&mut d, &mut gt, 8, DOMID, GNTMAP_device_map, 0);
    assert_eq!(out.status, GNTST_okay);
    assert_eq!(set_version(&mut d, &mut gt, 2), (Errno::EBUSY.neg(), 1));
    let u = GnttabUnmap {
        host_addr: 0,
        second: (GRANTED + 1) << 12,
        handle: out.handle,
        status: 0,
    };
    assert_eq!(
        unmap_refs(&mut d, &mut gt, &[u], false),
        (0, vec![GNTST_okay])
    );
    assert_eq!(set_version(&mut d, &mut gt, 2), (0, 2));
    d.machine.audit().unwrap();
}

#[test]
fn unmap_batches_complete_the_entries_before_a_fault() {
    let (mut d, mut gt) = domain();
    grant_v1(&d, 8, GTF_PERMIT, DOMID, GRANTED);
    let (_, out) = map_ref(&mut d, &mut gt, 8, DOMID, HOST, MAP_VA);
    assert_eq!(out.status, GNTST_okay);
    let before = d.machine.frames().get(Mfn(GRANTED)).unwrap().type_count;
    // The batch's second entry lies beyond the end of the boot mapping.
    let root = d.machine.kernel_root(me());
    let readable = |d: &Dom, va: u64| {
        GuestView::new(d.machine.memory(), root)
            .read(va, &mut [0u8; 1])
            .is_ok()
    };
    let mut page = UOP;
    while readable(&d, page + 0x1000) {
        page += 0x1000;
    }
    let end = page + 0x1000 - 24;
    let u = GnttabUnmap {
        host_addr: MAP_VA,
        second: 0,
        handle: out.handle,
        status: 0x55,
    };
    poke(&d, end, &u.to_bytes());
    assert_eq!(
        op(&mut d, &mut gt, GNTTABOP_unmap_grant_ref, end, 2),
        Errno::EFAULT.neg()
    );
    assert_eq!(GnttabUnmap::from_bytes(&peek(&d, end)).status, GNTST_okay);
    assert_eq!(
        d.machine.frames().get(Mfn(GRANTED)).unwrap().type_count,
        before - 1
    );
    assert_eq!(entry_flags(&d, 8), GTF_PERMIT);
    d.machine.audit().unwrap();
}

#[test]
fn unmap_and_replace_moves_the_other_pte() {
    let (mut d, mut gt) = domain();
    grant_v1(&d, 8, GTF_PERMIT, DOMID, GRANTED);
    let (_, out) = map_ref(&mut d, &mut gt, 8, DOMID, HOST | GNTMAP_readonly, MAP_VA);
    assert_eq!(out.status, GNTST_okay);
    let other = MAP_VA + 0x1000;
    let seen = peek::<8>(&d, other);
    let u = GnttabUnmap {
        host_addr: MAP_VA,
        second: other,
        handle: out.handle,
        status: 0x55,
    };
    assert_eq!(
        unmap_refs(&mut d, &mut gt, &[u], true),
        (0, vec![GNTST_okay])
    );
    assert_eq!(
        peek::<8>(&d, MAP_VA),
        seen,
        "the other page now appears here"
    );
    let root = d.machine.kernel_root(me());
    assert!(
        GuestView::new(d.machine.memory(), root)
            .read(other, &mut [0u8; 1])
            .is_err()
    );
    assert_eq!(entry_flags(&d, 8), GTF_PERMIT);
    d.machine.audit().unwrap();
}
