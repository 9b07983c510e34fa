//! The platform's hypercalls through the dispatch a VMM uses, without KVM: what a domU
//! learns from `xen_version` and the `vcpu_op` calls Linux makes at boot, as Xen answers
//! them.

use platform::dispatch::{self, DomainState, Outcome};
use platform::elf::minimal_image;
use platform::pv::{GuestContext, PvVcpu};
use platform::{Domain, DomainSpec, NullConsole};
use pvmmu::{Errno, GuestView, NoFlush};
use pvmmu_abi::hypercall::{HYPERVISOR_vcpu_op, HYPERVISOR_xen_version};

type Dom = Domain<NoFlush>;

/// Scratch memory in the boot mapping (identity, writable).
const ARG: u64 = 0x15_0000;

struct World {
    d: Dom,
    state: DomainState,
    pv: PvVcpu,
}

fn world() -> World {
    let d = Domain::create(&DomainSpec::new(minimal_image(&[0xf4]), 16), NoFlush).expect("domain");
    let state = DomainState::new(&d.boot);
    let pv = d.pv_vcpu(0);
    World { d, state, pv }
}

impl World {
    fn call(&mut self, nr: u64, args: [u64; 5]) -> i64 {
        let mut ctx = GuestContext::default();
        let served = dispatch::dispatch(
            &mut self.d.machine,
            &mut NullConsole,
            &mut self.state,
            &mut self.pv,
            &mut ctx,
            nr,
            args,
        )
        .expect("dispatch");
        match served.outcome {
            Outcome::Return(v) => v,
            other => panic!("hypercall {nr}: {other:?}"),
        }
    }

    fn poke(&self, va: u64, bytes: &[u8]) {
        let root = self.d.machine.kernel_root(self.pv.caller());
        GuestView::new(self.d.machine.memory(), root)
            .write(va, bytes)
            .expect("guest write");
    }

    fn peek<const N: usize>(&self, va: u64) -> [u8; N] {
        let root = self.d.machine.kernel_root(self.pv.caller());
        let mut b = [0u8; N];
        GuestView::new(self.d.machine.memory(), root)
            .read(va, &mut b)
            .expect("guest read");
        b
    }
}

#[test]
fn the_feature_submap_is_xens_for_a_pv_domu() {
    let mut w = world();
    w.poke(ARG, &[0u8; 8]);
    assert_eq!(w.call(HYPERVISOR_xen_version, [6, ARG, 0, 0, 0]), 0);
    let submap = u32::from_le_bytes(w.peek::<8>(ARG)[4..].try_into().unwrap());
    assert_eq!(submap, dispatch::PV_FEATURES);
    // Linux refuses to run without these two.
    assert_ne!(submap & (1 << 5), 0, "mmu_pt_update_preserve_ad");
    assert_ne!(submap & (1 << 7), 0, "gnttab_map_avail_bits");
    // Not a PV feature: writable page tables are a VM assist for PV.
    assert_eq!(submap & 1, 0);
    // Only submap 0 exists.
    w.poke(ARG, &1u32.to_le_bytes());
    assert_eq!(
        w.call(HYPERVISOR_xen_version, [6, ARG, 0, 0, 0]),
        Errno::EINVAL.neg()
    );
    let _ = HYPERVISOR_vcpu_op;
}
