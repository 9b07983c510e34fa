//! XSA-240: chains of linear (same-level) page tables. A table may contain same-level
//! entries or be referenced by them, never both, so no chain A -> B -> C can be built.
//!
//! Three L2 tables A, B, C, validated by hooking each under a free slot of the builder's
//! L3. Then: A -> B (read-only) succeeds; B -> C is -EINVAL (B is referenced); C -> A is
//! -EINVAL (A contains a linear entry). More links that keep every table on one side are
//! accepted (A -> C, self references), and once the links are removed the counts are
//! released so that a link in the other direction works.
#![no_std]
#![no_main]

use rt::abi::{Errno, MmuUpdate, StartInfo};
use rt::peek;
use suite::{A, Check, Frames, P, RW, SELF, err};

const US: u64 = 1 << 2;
/// L3 slots where A, B and C are hooked.
const SLOTS: [u64; 3] = [5, 6, 7];

/// Machine address of slot `slot` in table `t`.
fn at(t: u64, slot: u64) -> u64 {
    (t << 12) + slot * 8
}

/// The read-only linear entry pointing at `t`.
fn link(t: u64) -> u64 {
    (t << 12) | P | A
}

#[unsafe(no_mangle)]
pub fn guest_main(_si: &'static StartInfo) {
    let mut c = Check::new();
    let mut frames = Frames::new();
    let l3 = suite::builder_l3();
    let (a, b, t_c) = (
        suite::table_frame(&mut frames),
        suite::table_frame(&mut frames),
        suite::table_frame(&mut frames),
    );
    rt::println!("xsa240: A {a:#x} B {b:#x} C {t_c:#x} under L3 {l3:#x} slots {SLOTS:?}");

    // Validate the three L2s by hooking them under the L3.
    let hook: [MmuUpdate; 3] = core::array::from_fn(|i| MmuUpdate {
        ptr: at(l3, SLOTS[i]),
        val: ([a, b, t_c][i] << 12) | P | RW | A,
    });
    c.update("hook A, B, C under the L3", &hook, SELF, 0, 3);
    for h in hook {
        c.eq("L3 entry stored", peek(h.ptr) as i64, (h.val | US) as i64);
    }

    // A -> B: a writable link is refused, a read-only one accepted.
    c.update(
        "A -> B writable",
        &[MmuUpdate {
            ptr: at(a, 10),
            val: link(b) | RW,
        }],
        SELF,
        err(Errno::EINVAL),
        0,
    );
    c.eq("A[10] still empty", peek(at(a, 10)) as i64, 0);
    c.update(
        "A -> B read-only",
        &[MmuUpdate {
            ptr: at(a, 10),
            val: link(b),
        }],
        SELF,
        0,
        1,
    );
    c.eq(
        "A[10] = link to B",
        peek(at(a, 10)) as i64,
        (link(b) | US) as i64,
    );
    // XSA-182 on this link: RW with the same frame takes the full path and is refused,
    // leaving the link (and its counts) as they were.
    c.update(
        "A -> B made writable",
        &[MmuUpdate {
            ptr: at(a, 10),
            val: link(b) | US | RW,
        }],
        SELF,
        err(Errno::EINVAL),
        0,
    );
    c.eq(
        "A[10] unchanged",
        peek(at(a, 10)) as i64,
        (link(b) | US) as i64,
    );

    // B -> C: B is referenced linearly, so it may not contain linear entries.
    c.update(
        "B -> C (B is referenced)",
        &[MmuUpdate {
            ptr: at(b, 20),
            val: link(t_c),
        }],
        SELF,
        err(Errno::EINVAL),
        0,
    );
    c.eq("B[20] still empty", peek(at(b, 20)) as i64, 0);
    // C -> A: A contains a linear entry, so it may not be referenced.
    c.update(
        "C -> A (A contains a link)",
        &[MmuUpdate {
            ptr: at(t_c, 30),
            val: link(a),
        }],
        SELF,
        err(Errno::EINVAL),
        0,
    );
    c.eq("C[30] still empty", peek(at(t_c, 30)) as i64, 0);
    // B -> A: both at once.
    c.update(
        "B -> A (both wrong)",
        &[MmuUpdate {
            ptr: at(b, 21),
            val: link(a),
        }],
        SELF,
        err(Errno::EINVAL),
        0,
    );
    c.eq("B[21] still empty", peek(at(b, 21)) as i64, 0);
    // The same refusals inside a batch stop it at their index.
    let batch = [
        MmuUpdate {
            ptr: at(a, 11),
            val: link(b),
        },
        MmuUpdate {
            ptr: at(b, 22),
            val: link(t_c),
        },
        MmuUpdate {
            ptr: at(a, 12),
            val: link(b),
        },
    ];
    c.update(
        "batch: A -> B, B -> C, A -> B",
        &batch,
        SELF,
        err(Errno::EINVAL),
        1,
    );
    c.eq(
        "A[11] = link to B",
        peek(at(a, 11)) as i64,
        (link(b) | US) as i64,
    );
    c.eq("B[22] empty", peek(at(b, 22)) as i64, 0);
    c.eq("A[12] not attempted", peek(at(a, 12)) as i64, 0);

    // Links that keep A a container and B, C referenced are fine: A -> C.
    c.update(
        "A -> C",
        &[MmuUpdate {
            ptr: at(a, 13),
            val: link(t_c),
        }],
        SELF,
        0,
        1,
    );
    c.eq(
        "A[13] = link to C",
        peek(at(a, 13)) as i64,
        (link(t_c) | US) as i64,
    );
    // Now C is referenced too: C -> B is refused.
    c.update(
        "C -> B (C is referenced)",
        &[MmuUpdate {
            ptr: at(t_c, 31),
            val: link(b),
        }],
        SELF,
        err(Errno::EINVAL),
        0,
    );
    c.eq("C[31] still empty", peek(at(t_c, 31)) as i64, 0);
    // Self references take no linear count: allowed in A, B and C alike.
    let selfs = [
        MmuUpdate {
            ptr: at(a, 40),
            val: link(a),
        },
        MmuUpdate {
            ptr: at(b, 40),
            val: link(b),
        },
        MmuUpdate {
            ptr: at(t_c, 40),
            val: link(t_c),
        },
    ];
    c.update("self references", &selfs, SELF, 0, 3);
    for s in selfs {
        c.eq(
            "self reference stored",
            peek(s.ptr) as i64,
            (s.val | US) as i64,
        );
    }

    // Remove every linear entry: the counts are released.
    let unlink = [
        MmuUpdate {
            ptr: at(a, 10),
            val: 0,
        },
        MmuUpdate {
            ptr: at(a, 11),
            val: 0,
        },
        MmuUpdate {
            ptr: at(a, 13),
            val: 0,
        },
        MmuUpdate {
            ptr: at(a, 40),
            val: 0,
        },
        MmuUpdate {
            ptr: at(b, 40),
            val: 0,
        },
        MmuUpdate {
            ptr: at(t_c, 40),
            val: 0,
        },
    ];
    c.update("remove the links", &unlink, SELF, 0, unlink.len() as u32);
    for u in unlink {
        c.eq("link removed", peek(u.ptr) as i64, 0);
    }
    // With all links gone, the other direction works: C -> A, then B -> C is still
    // refused (C now contains one), then C -> A removed again.
    c.update(
        "C -> A after the cleanup",
        &[MmuUpdate {
            ptr: at(t_c, 30),
            val: link(a),
        }],
        SELF,
        0,
        1,
    );
    c.update(
        "B -> C (C contains a link)",
        &[MmuUpdate {
            ptr: at(b, 20),
            val: link(t_c),
        }],
        SELF,
        err(Errno::EINVAL),
        0,
    );
    c.update(
        "A -> B (A is referenced)",
        &[MmuUpdate {
            ptr: at(a, 10),
            val: link(b),
        }],
        SELF,
        err(Errno::EINVAL),
        0,
    );
    c.update(
        "remove C -> A",
        &[MmuUpdate {
            ptr: at(t_c, 30),
            val: 0,
        }],
        SELF,
        0,
        1,
    );
    c.eq("C[30] removed", peek(at(t_c, 30)) as i64, 0);

    // Unhook A, B, C.
    let unhook: [MmuUpdate; 3] = core::array::from_fn(|i| MmuUpdate {
        ptr: at(l3, SLOTS[i]),
        val: 0,
    });
    c.update("unhook A, B, C", &unhook, SELF, 0, 3);
    for u in unhook {
        c.eq("L3 entry removed", peek(u.ptr) as i64, 0);
    }
    c.finish();
}
