//! The reference model as an oracle: it judges every operation of the corpus, and it
//! catches a library whose bookkeeping or results were broken on purpose.

use std::path::PathBuf;

use pvmmu::{Caller, Mfn, PageType};
use pvmmu_abi::mmu::MMUEXT_PIN_L1_TABLE;
use pvmmu_abi::{DOMID_SELF, Errno, MmuUpdate, MmuextOp};
use pvmmu_fuzzing::ops::{D1, Dom, Fixture, FrameSel, Judged, KBASE, Op, Val};
use pvmmu_fuzzing::xen_model::{self, ModelOp, Outcome, XenModel};

/// The inputs the regression replay runs: regressions, then the corpus.
fn corpus() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for kind in ["regressions", "corpus"] {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../fuzz")
            .join(kind)
            .join("mmu_ops");
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map(|rd| rd.filter_map(Result::ok).map(|e| e.path()).collect())
            .unwrap_or_default();
        files.sort();
        out.extend(files.iter().filter_map(|p| std::fs::read(p).ok()));
    }
    out
}

/// xorshift64*: deterministic bytes.
fn random_bytes(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8
        })
        .collect()
}

/// Random inputs (`PVMMU_MODEL_SEEDS` of them, 100 by default): the model agrees with
/// the library on every operation (the harness panics otherwise).
#[test]
fn the_model_agrees_on_random_inputs() {
    let seeds: u64 = std::env::var("PVMMU_MODEL_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100);
    let mut total = Judged::default();
    for seed in 0..seeds {
        let bytes = random_bytes(seed ^ 0x5eed, 256 + (seed as usize * 97) % 4000);
        total += pvmmu_fuzzing::mmu_ops_judged(&bytes);
    }
    eprintln!("random: {total:?}");
    assert_eq!(total.ops, total.ops_judged);
}

#[test]
fn the_model_judges_every_operation_of_the_corpus() {
    let mut total = Judged::default();
    for bytes in corpus() {
        total += pvmmu_fuzzing::mmu_ops_judged(&bytes);
    }
    eprintln!("regressions and corpus: {total:?}");
    assert!(total.ops > 500, "the corpus issues operations: {total:?}");
    assert_eq!(total.ops, total.ops_judged);
}

/// A data frame of domain 1 (mapped read-write by its tree, not a table).
const DATA: u64 = D1.0 + 0x30;

#[test]
fn a_broken_general_count_is_reported() {
    let mut f = Fixture::new();
    f.m.frames_mut_for_test()
        .edit_for_test(Mfn(DATA), |p| p.count += 1);
    let e = f
        .try_apply(&Op::VmAssist(Dom::One, true, 2))
        .expect_err("the comparison must see the extra reference");
    assert!(
        e.contains("bookkeeping differs") && e.contains("count: 3"),
        "{e}"
    );
}

#[test]
fn a_wrong_prediction_is_reported() {
    // The library believes a data frame is a live L1 table: it refuses to map it
    // writable (-EBUSY) where Xen (and the model, which kept its own frame table)
    // succeeds.
    let mut f = Fixture::new();
    f.m.frames_mut_for_test().edit_for_test(Mfn(DATA), |p| {
        p.ty = PageType::L1;
        p.type_count = 1;
        p.validated = true;
    });
    let op = Op::Uvm(
        Dom::One,
        false,
        1,
        Val::Map(FrameSel::Own((DATA - D1.0) as u16), 0x3),
        0,
    );
    let e = f.try_apply(&op).expect_err("the outcomes differ");
    assert!(e.contains("the model predicted Rax(0)"), "{e}");
    assert!(e.contains(&format!("Rax({})", Errno::EBUSY.neg())), "{e}");
}

#[test]
fn predictions_of_a_fresh_fixture() {
    // A few outcomes spelled out, as a check of the model itself.
    let mut f = Fixture::new();
    let me = Caller::new(1, 0);
    let table = f.model.kernel_root(me).expect("root");
    let cases: Vec<(ModelOp, Outcome)> = vec![
        // Pinning the installed root again: already pinned.
        (
            ModelOp::Mmuext {
                caller: me,
                ops: vec![MmuextOp::new(3, table, 0)],
                foreigndom: DOMID_SELF.into(),
            },
            batch(0, Err(Errno::EINVAL)),
        ),
        // A data frame mapped writable cannot be pinned as L1.
        (
            ModelOp::Mmuext {
                caller: me,
                ops: vec![MmuextOp::new(MMUEXT_PIN_L1_TABLE, DATA, 0)],
                foreigndom: DOMID_SELF.into(),
            },
            batch(0, Err(Errno::EINVAL)),
        ),
        // Writing a reserved L4 slot; the entry before it succeeds.
        (
            ModelOp::MmuUpdate {
                caller: me,
                reqs: vec![
                    MmuUpdate {
                        ptr: (table << 12) + 8,
                        val: 0,
                    },
                    MmuUpdate {
                        ptr: (table << 12) + 256 * 8,
                        val: 0,
                    },
                ],
                foreigndom: DOMID_SELF.into(),
            },
            batch(1, Err(Errno::EINVAL)),
        ),
        // update_va_mapping through vCPU 1, which has no root.
        (
            ModelOp::UpdateVaMapping {
                caller: Caller::new(1, 1),
                va: KBASE + (DATA << 12),
                val: 0,
                flags: 0,
            },
            Outcome::Rax(Errno::EINVAL.neg()),
        ),
    ];
    for (op, want) in cases {
        let got = xen_model::check(&mut f.model, &mut f.m, &op).expect("model and library agree");
        assert_eq!(got, want, "{op:?}");
    }
}

#[test]
fn a_model_can_start_from_a_running_machine() {
    let mut f = Fixture::new();
    let mut copy = XenModel::from_machine(&f.m).expect("nothing unmodelled");
    copy.compare(&f.m).expect("a fresh copy agrees");
    let op = ModelOp::Teardown { dom: 1 };
    assert_eq!(
        xen_model::check(&mut copy, &mut f.m, &op),
        Ok(Outcome::Teardown(0))
    );
}

fn batch(done: u32, result: Result<(), Errno>) -> Outcome {
    Outcome::Batch(pvmmu::BatchOutcome {
        done,
        result,
        writes_pdone: true,
        preempted: false,
    })
}

/// Structured sequences that build and tear down subtrees, linear entries, pins and
/// roots far more often than decoded random bytes do (`PVMMU_MODEL_SEQS` sequences, 40
/// by default): the model agrees with the library on every operation.
#[test]
fn the_model_agrees_on_structured_sequences() {
    use pvmmu_fuzzing::ops::{Ext, Fd, Req, Slot};
    let seqs: u64 = std::env::var("PVMMU_MODEL_SEQS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(40);
    let mut total = Judged::default();
    let mut tally = std::collections::BTreeMap::new();
    for seed in 0..seqs {
        let mut x = (seed + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let mut next = move |n: u64| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) % n
        };
        let mut f = Fixture::new();
        for _ in 0..120 {
            let dom = if next(5) == 0 { Dom::Two } else { Dom::One };
            let frame = |k: u64, r: u64| match k {
                0..=3 => FrameSel::Own((r % 24 + 0x40) as u16),
                4..=6 => FrameSel::Table(r as u16),
                7 => FrameSel::Own(r as u16),
                8 => FrameSel::Other(r as u16),
                9 => FrameSel::Mmio(r as u8),
                _ => FrameSel::Xen(r as u8),
            };
            let flags = [
                0x1u16, 0x3, 0x5, 0x7, 0x25, 0x61, 0x101, 0x401, 0x207, 0x89, 0x11,
            ][next(11) as usize];
            let val = match next(8) {
                0 => Val::Zero,
                _ => Val::Map(frame(next(11), next(1 << 16)), flags),
            };
            let index = [0u16, 1, 2, 3, 272, 273, 256, 511][next(8) as usize];
            let op = match next(10) {
                _ if next(150) == 0 => Op::Teardown(dom),
                0..=3 => Op::MmuUpdate(
                    dom,
                    (0..1 + next(3))
                        .map(|_| Req {
                            slot: if next(4) == 0 {
                                Slot::Frame(frame(next(4), next(1 << 16)), index)
                            } else {
                                Slot::Table(next(64) as u16, index)
                            },
                            cmd: [0u8, 0, 0, 11, 10][next(5) as usize],
                            val,
                        })
                        .collect(),
                    match next(8) {
                        0 => Fd::Other,
                        1 => Fd::Io,
                        // A foreign page-table owner (PFD) with FD = self or the PFD.
                        2 => Fd::Raw((2 << 16) | u32::from(pvmmu_abi::DOMID_SELF)),
                        3 => Fd::Raw((3 << 16) | 2),
                        _ => Fd::SelfDom,
                    },
                ),
                4..=6 => Op::Mmuext(
                    dom,
                    vec![Ext {
                        cmd: [0u8, 1, 2, 3, 4, 4, 5, 15, 16, 17, 8, 9, 12, 13, 14, 19]
                            [next(16) as usize],
                        frame: frame(next(8), next(1 << 16)),
                        va: next(64) as u16,
                        arg2: frame(next(8), next(1 << 16)),
                    }],
                    if next(6) == 0 { Fd::Other } else { Fd::SelfDom },
                ),
                7 => Op::Uvm(dom, next(4) == 0, next(64) as u16, val, next(16) as u8),
                8 => Op::Ptwr(
                    dom,
                    next(64) as u16,
                    index,
                    val,
                    next(4) as u8,
                    (next(3) == 0).then_some(val),
                ),
                _ => Op::VmAssist(dom, next(3) != 0, [2u8, 32, 2, 7][next(4) as usize]),
            };
            match f.try_apply(&op) {
                Ok(Some(o)) => {
                    let what = format!("{op:?}");
                    let kind = what.split('(').next().unwrap_or("").to_string();
                    *tally.entry(format!("{kind} {o:?}")).or_insert(0u32) += 1;
                }
                Ok(None) => {}
                Err(e) => panic!("sequence {seed}: {e}"),
            }
        }
        total += f.finish();
    }
    if std::env::var("PVMMU_MODEL_TALLY").is_ok() {
        for (k, v) in &tally {
            eprintln!("{v:6} {k}");
        }
    }
    eprintln!("structured: {total:?}");
    assert_eq!(total.ops, total.ops_judged);
}

/// NEW_USER_BASEPTR naming the current user root does nothing in Xen (it returns before
/// taking references or zapping the RO-M2P slot). The library used to zap slot 256
/// again when `m2p_strict` had been enabled since the root was installed; found by the
/// structured sequences above and fixed in `mmuext.rs`.
#[test]
fn new_user_baseptr_twice_leaves_the_m2p_slot() {
    use pvmmu_abi::mmu::MMUEXT_NEW_USER_BASEPTR;
    let mut f = Fixture::new();
    let me = Caller::new(1, 0);
    let root = f.model.kernel_root(me).expect("root");
    let user = |f: &mut Fixture| {
        let op = ModelOp::Mmuext {
            caller: me,
            ops: vec![MmuextOp::new(MMUEXT_NEW_USER_BASEPTR, root, 0)],
            foreigndom: DOMID_SELF.into(),
        };
        xen_model::check(&mut f.model, &mut f.m, &op).expect("model and library agree")
    };
    assert_eq!(user(&mut f), batch(1, Ok(())));
    let strict = ModelOp::VmAssist {
        caller: me,
        cmd: 0,
        ty: 32,
    };
    assert_eq!(
        xen_model::check(&mut f.model, &mut f.m, &strict),
        Ok(Outcome::Rax(0))
    );
    assert_eq!(user(&mut f), batch(1, Ok(())));
    assert_ne!(f.model.entry(root, 256), Some(0), "slot 256 kept");
}

/// A library-vs-Xen difference the model exposed, now fixed: with FD = DOMID_IO, Xen
/// checks the I/O-memory permission of the *calling* domain (`get_page_from_l1e`:
/// "DOMID_IO reverts to caller for privilege checks", `pg_owner = curr->domain`), where
/// the library checked the page-table owner's. They differ when a privileged domain
/// updates another domain's L1 (PFD): domain 2 (privileged, no I/O memory) maps
/// domain 1's I/O frame into domain 1's L1 table: -EPERM from both.
#[test]
fn domid_io_as_fd_stands_for_the_callers_rights() {
    use pvmmu_fuzzing::ops::MMIO;
    let mut f = Fixture::new();
    // Domain 1's L1 table (0x103, after its L4, L3 and L2) maps its frames at indices
    // 256..512; index 5 is empty.
    let l1 = D1.0 + 3;
    let op = ModelOp::MmuUpdate {
        caller: Caller::new(2, 0),
        reqs: vec![MmuUpdate {
            ptr: (l1 << 12) + 5 * 8,
            val: (MMIO << 12) | 0x1,
        }],
        // FD = DOMID_IO, PFD = domain 1.
        foreigndom: u32::from(pvmmu_abi::DOMID_IO) | (2 << 16),
    };
    assert_eq!(
        xen_model::check(&mut f.model, &mut f.m, &op),
        Ok(batch(0, Err(Errno::EPERM))),
        "Xen refuses, and so does the library"
    );
}

/// A second difference the model exposed, now fixed: Xen refuses non-WB cache
/// attributes on a mapping of one of its own "special" pages (Xen-heap pages such as
/// the grant-table frames it shares with a guest) with -EACCES (`get_page_from_l1e`,
/// "Attempt to change cache attributes of Xen heap page"). Only a domain allowed cache
/// attributes at all (one with I/O rights) can reach it.
#[test]
fn an_uncached_mapping_of_a_shared_hypervisor_page_is_eacces() {
    use pvmmu::{DomainConfig, Machine, MachineConfig};
    use vm_memory::{GuestAddress, GuestMemoryMmap};
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).expect("memory");
    let mut m = Machine::new(mem, MachineConfig::default()).expect("machine");
    m.create_domain(DomainConfig::new(1).iomem(0xfe000..=0xfe000))
        .expect("domain");
    m.assign_frames(1, (0x10..0x20).map(Mfn)).expect("frames");
    m.share_frames(1, [Mfn(0x30)], true).expect("shared");
    let mut model = XenModel::from_machine(&m).expect("modelled");
    let me = Caller::new(1, 0);
    let pin = ModelOp::Mmuext {
        caller: me,
        ops: vec![MmuextOp::new(MMUEXT_PIN_L1_TABLE, 0x10, 0)],
        foreigndom: DOMID_SELF.into(),
    };
    assert_eq!(
        xen_model::check(&mut model, &mut m, &pin),
        Ok(batch(1, Ok(())))
    );
    // Map the shared frame read-only, uncached (PCD | PWT).
    let map = ModelOp::MmuUpdate {
        caller: me,
        reqs: vec![MmuUpdate {
            ptr: 0x10_000,
            val: 0x30_000 | 0x19,
        }],
        foreigndom: DOMID_SELF.into(),
    };
    assert_eq!(
        xen_model::check(&mut model, &mut m, &map),
        Ok(batch(0, Err(Errno::EACCES))),
        "Xen refuses, and so does the library (references given back)"
    );
    // Write-back attributes are fine for both.
    let wb = ModelOp::MmuUpdate {
        caller: me,
        reqs: vec![MmuUpdate {
            ptr: 0x10_008,
            val: 0x30_000 | 0x1,
        }],
        foreigndom: DOMID_SELF.into(),
    };
    assert_eq!(
        xen_model::check(&mut model, &mut m, &wb),
        Ok(batch(1, Ok(())))
    );
}

/// The flush oracle: the model lists the flushes Xen performs, and a log of requests
/// that misses one (as a library without XSA-286's flush would make) is reported.
#[test]
fn a_missing_flush_is_reported() {
    use pvmmu::{FlushScope, VcpuSet};
    use xen_model::{FlushNeed, NeedScope, check_flushes};
    let mut f = Fixture::new();
    // Domain 1's L2 (0x102) entry 0 made present: a non-leaf change, so every vCPU of
    // domain 1 (it has two) is flushed after the batch. The target is its L1 (0x103),
    // read-only.
    let op = ModelOp::MmuUpdate {
        caller: Caller::new(1, 0),
        reqs: vec![MmuUpdate {
            ptr: (D1.0 + 2) << 12,
            val: ((D1.0 + 3) << 12) | 1,
        }],
        foreigndom: DOMID_SELF.into(),
    };
    let model_before = f.model.clone();
    xen_model::check_recorded(&mut f.model, &mut f.m, &op).expect("model and library agree");
    let needs = f.model.flush_needs().to_vec();
    assert_eq!(
        needs,
        [FlushNeed {
            domain: 1,
            vcpus: 0b11,
            scope: NeedScope::Tlb,
            last: true
        }]
    );
    // The same operation again on a fresh fixture, keeping the log this time.
    let mut g = Fixture::new();
    g.model = model_before;
    xen_model::check(&mut g.model, &mut g.m, &op).expect("agree");
    let log = g.m.flusher().take();
    assert_eq!(check_flushes(&needs, &log), Ok(()));
    assert!(check_flushes(&needs, &[]).is_err(), "no flush at all");
    // A request for one vCPU only, or for another domain, does not cover it.
    let mut narrow = log.last().expect("a request").clone();
    narrow.vcpus = VcpuSet::one(0);
    assert!(check_flushes(&needs, &[narrow.clone()]).is_err());
    narrow.vcpus = VcpuSet(0b11);
    narrow.domain = 2;
    assert!(check_flushes(&needs, &[narrow.clone()]).is_err());
    // A covering request followed by a narrower one for the same domain: the flush
    // after the batch must be the last.
    narrow.domain = 1;
    let mut later = narrow.clone();
    later.vcpus = VcpuSet::one(1);
    assert!(check_flushes(&needs, &[narrow.clone(), later]).is_err());
    // An INVLPG is covered by an invalidation of that address or of everything, not by
    // a CR3 reload (it keeps global mappings).
    let va = NeedScope::Va(KBASE);
    let need = [FlushNeed {
        domain: 1,
        vcpus: 1,
        scope: va,
        last: false,
    }];
    for (scope, ok) in [
        (FlushScope::Va(KBASE), true),
        (FlushScope::All, true),
        (FlushScope::AllNonGlobal, false),
        (FlushScope::Va(KBASE + 0x1000), false),
    ] {
        narrow.scope = scope;
        assert_eq!(
            check_flushes(&need, &[narrow.clone()]).is_ok(),
            ok,
            "{scope:?}"
        );
    }
}
