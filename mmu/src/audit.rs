//! Audit and teardown: recomputing every count and type from the page tables
//! themselves, and returning a dying domain's frames.

use log::warn;
use pvmmu_abi::domid::DOMID_IO;
use pvmmu_abi::vmassist::VMASST_TYPE_m2p_strict;
use vm_memory::GuestMemory;

use crate::entry::{Mfn, Pte, PteFlags};
use crate::flush::TlbFlush;
use crate::frame::PageType;
use crate::machine::{FIRST_XEN_L4_SLOT, Machine, MachineError, XEN_L4_SLOTS};
use crate::paging::{ENTRIES_PER_TABLE, Level};
use crate::table::visit_table;
use crate::validate::is_xen_slot;

/// Discrepancies found by [`Machine::audit`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("audit found {} problem(s): {}", .0.len(), .0.join("; "))]
pub struct AuditError(pub Vec<String>);

#[derive(Default, Clone, Copy)]
struct Expect {
    count: u64,
    type_count: u64,
    linear: i64,
    writable_maps: u64,
}

impl<M: GuestMemory, F: TlbFlush> Machine<M, F> {
    /// Recomputes every general count, type count and linear counter from the frame
    /// states, pins, roots and the entries of every validated table, and checks the
    /// invariants: a frame is a live page table or mapped writable, never both; every
    /// validated L4 holds the hypervisor's slots.
    pub fn audit(&self) -> Result<(), AuditError> {
        let core = &self.core;
        // Indexed by frame; one more for references to frames that are not RAM (which
        // the frame table cannot disagree with).
        let n = core.frames.len();
        let at = |mfn: u64| usize::try_from(mfn).ok().filter(|&i| i < n).unwrap_or(n);
        let mut exp = vec![Expect::default(); n + 1];
        let mut problems = Vec::new();
        for (mfn, p) in core.frames.iter() {
            if p.count == 0 && p.owner == pvmmu_abi::DOMID_INVALID {
                continue;
            }
            let e = &mut exp[at(mfn.0)];
            // An interrupted validation holds a general and a type reference.
            let partial = u64::from(p.partial.is_some());
            e.count += u64::from(p.allocated) + u64::from(p.pinned) + partial;
            e.type_count += u64::from(p.pinned) + u64::from(p.shared) + partial;
        }
        for d in core.domains.values() {
            if let Some(f) = d.pirq_eoi_frame {
                let e = &mut exp[at(f.0)];
                e.count += 1;
                e.type_count += 1;
            }
            // Device halves of grant mappings (host halves are PTEs, counted below).
            for (_, g) in d.maptrack.iter() {
                if g.flags & pvmmu_abi::grant::GNTMAP_device_map != 0 {
                    let e = &mut exp[at(g.mfn.0)];
                    e.count += 1;
                    if g.flags & pvmmu_abi::grant::GNTMAP_readonly == 0 {
                        e.type_count += 1;
                        e.writable_maps += 1;
                    }
                }
            }
            for v in &d.vcpus {
                let gdt = v.gdt_frames.iter().copied();
                let ldt = v.ldt_mapped.iter().flatten().copied();
                let areas =
                    [v.runstate_phys_area, v.time_phys_area].map(|a| a.map(|a| Mfn(a >> 12)));
                for r in [v.kernel_root, v.user_root, v.vcpu_info_frame]
                    .into_iter()
                    .chain(areas)
                    .flatten()
                    .chain(gdt)
                    .chain(ldt)
                {
                    let e = &mut exp[at(r.0)];
                    e.count += 1;
                    e.type_count += 1;
                }
            }
        }
        for (mfn, p) in core.frames.iter() {
            let Some(level) = p.ty.level() else { continue };
            // The entries that hold references: all of a validated table's, those below
            // the stop of an interrupted validation.
            let held = match (p.validated, p.partial) {
                (true, _) => ENTRIES_PER_TABLE,
                (false, Some(k)) => usize::from(k),
                (false, None) => continue,
            };
            if p.type_count == 0 {
                problems.push(format!("{mfn}: validated {} table with type count 0", p.ty));
            }
            let strict = core
                .domains
                .get(&p.owner)
                .is_some_and(|d| d.has_assist(VMASST_TYPE_m2p_strict));
            let _ = visit_table(&self.mem, mfn, level, |b| {
                for i in 0..b.len().min(held) {
                    let raw = b.get(i).raw();
                    if level == Level::L4 && is_xen_slot(i) {
                        if !p.validated {
                            continue; // written when the validation completes
                        }
                        let k = i - FIRST_XEN_L4_SLOT;
                        let want = core.config.xen_l4_slots[k];
                        let ok = raw == want || (k == 0 && (raw == 0 || !strict));
                        if !ok && k < XEN_L4_SLOTS {
                            problems.push(format!("{mfn}: reserved L4 slot {i} holds {raw:#x}"));
                        }
                        continue;
                    }
                    let pte = Pte(raw);
                    if !pte.is_present() {
                        continue;
                    }
                    let target = pte.mfn();
                    let Some(tp) = core.frames.get(target) else {
                        continue;
                    };
                    if level == Level::L1 {
                        if tp.owner == DOMID_IO
                            || tp.count == 0 && tp.owner == pvmmu_abi::DOMID_INVALID
                        {
                            if tp.owner != DOMID_IO {
                                problems.push(format!("{mfn}[{i}] maps free frame {target}"));
                            }
                            continue;
                        }
                        let e = &mut exp[at(target.0)];
                        e.count += 1;
                        if pte.has(PteFlags::RW) {
                            e.type_count += 1;
                            e.writable_maps += 1;
                        }
                    } else {
                        if target == mfn {
                            continue; // self-linear: no reference
                        }
                        let e = &mut exp[at(target.0)];
                        e.count += 1;
                        e.type_count += 1;
                        if tp.ty == p.ty {
                            e.linear -= 1;
                            exp[at(mfn.0)].linear += 1;
                        } else if tp.ty.level() != level.lower() {
                            problems.push(format!(
                                "{mfn}[{i}] ({}) points at {target} of type {}",
                                p.ty, tp.ty
                            ));
                        }
                    }
                }
            });
        }
        for (mfn, p) in core.frames.iter() {
            let e = exp[at(mfn.0)];
            if p.count != e.count {
                problems.push(format!(
                    "{mfn}: general count {} expected {}",
                    p.count, e.count
                ));
            }
            if p.type_count != e.type_count {
                problems.push(format!(
                    "{mfn}: {} type count {} expected {}",
                    p.ty, p.type_count, e.type_count
                ));
            }
            if i64::from(p.linear) != e.linear {
                problems.push(format!(
                    "{mfn}: linear count {} expected {}",
                    p.linear, e.linear
                ));
            }
            if e.writable_maps > 0 && p.ty != PageType::Writable {
                problems.push(format!(
                    "{mfn}: mapped writable {} times but typed {}",
                    e.writable_maps, p.ty
                ));
            }
            if p.ty.is_page_table() && p.type_count > 0 && !p.validated && p.partial.is_none() {
                problems.push(format!("{mfn}: live {} table not validated", p.ty));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(AuditError(problems))
        }
    }

    /// Tears a domain down as Xen's `relinquish_memory` does: drops every vCPU's roots,
    /// unpins every pinned table, force-de-validates what remains (breaking linear
    /// chains), and drops every allocation reference. Afterwards each of its frames is
    /// free, untyped, with count 0, unless another domain still maps it (an error).
    pub fn destroy_domain(&mut self, dom: u16) -> Result<(), MachineError> {
        let Machine { mem, core, .. } = self;
        if !core.domains.contains_key(&dom) {
            return Err(MachineError::NoDomain(dom));
        }
        core.release_grant_mappings(mem, dom);
        let d = core
            .domains
            .get_mut(&dom)
            .ok_or(MachineError::NoDomain(dom))?;
        let mut roots: Vec<Mfn> = d
            .vcpus
            .iter_mut()
            .flat_map(|v| [v.kernel_root.take(), v.user_root.take()])
            .flatten()
            .collect();
        roots.extend(d.pirq_eoi_frame.take());
        for v in &mut d.vcpus {
            v.gdt_ents = 0;
            roots.append(&mut v.gdt_frames);
            roots.extend(std::mem::take(&mut v.ldt_mapped).into_iter().flatten());
            roots.extend(v.vcpu_info_frame.take());
            for a in [v.runstate_phys_area.take(), v.time_phys_area.take()] {
                roots.extend(a.map(|a| Mfn(a >> 12)));
            }
        }
        for r in roots {
            core.put_page_and_type(mem, r);
        }
        let owned: Vec<Mfn> = core
            .frames
            .iter()
            .filter(|(_, p)| p.owner == dom && p.count > 0)
            .map(|(m, _)| m)
            .collect();
        for &m in &owned {
            if core.frames.get(m).is_some_and(|p| p.pinned) {
                if let Some(mut p) = core.frames.get_mut(m) {
                    p.pinned = false;
                }
                core.put_page_and_type(mem, m);
            }
        }
        // Interrupted validations, from the top: what they took goes back.
        for level in [Level::L4, Level::L3, Level::L2] {
            for &m in &owned {
                let partial = core.frames.get(m).is_some_and(|p| {
                    p.owner == dom && p.partial.is_some() && p.ty.level() == Some(level)
                });
                if partial {
                    core.abandon_partial(mem, m, level);
                }
            }
        }
        for level in [Level::L4, Level::L3, Level::L2, Level::L1] {
            for &m in &owned {
                let live = core
                    .frames
                    .get(m)
                    .is_some_and(|p| p.owner == dom && p.validated && p.ty.level() == Some(level));
                if live {
                    if let Some(mut p) = core.frames.get_mut(m) {
                        p.validated = false;
                    }
                    core.demote(mem, m, level);
                }
            }
        }
        let mut left = 0;
        for &m in &owned {
            if core
                .frames
                .get(m)
                .is_some_and(|p| p.owner == dom && p.shared)
            {
                if let Some(mut p) = core.frames.get_mut(m) {
                    p.shared = false;
                }
                core.frames.drop_type(m);
            }
            if core
                .frames
                .get(m)
                .is_some_and(|p| p.owner == dom && p.allocated)
            {
                if let Some(mut p) = core.frames.get_mut(m) {
                    p.allocated = false;
                }
                core.frames.put_page(m);
            }
            if let Some(mut p) = core.frames.get_mut(m)
                && p.owner == dom
            {
                if p.count > 0 {
                    left += 1;
                } else {
                    *p = crate::frame::PageInfo::default();
                }
            }
        }
        core.domains.remove(&dom);
        if left > 0 {
            warn!("domain {dom} torn down with {left} frames still referenced");
            return Err(MachineError::Teardown {
                domain: dom,
                frames: left,
            });
        }
        Ok(())
    }
}
