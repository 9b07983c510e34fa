//! With writable page tables enabled, stores into its own L1 table an entry that maps
//! the L4 writable: Xen refuses the emulation, the store is a page fault, and the VMM
//! reports it (no exception bouncing yet).
#![no_std]
#![no_main]

use rt::abi::StartInfo;
use rt::mem;
use suite::{A, P, RW};

#[unsafe(no_mangle)]
pub fn guest_main(si: &'static StartInfo) {
    if rt::vm_assist(0, rt::abi::vmassist::VMASST_TYPE_writable_pagetables) != 0 {
        rt::finish(Some("vm_assist"));
    }
    // The L1 entry mapping the first free page, in the builder's first L1 table.
    let va = mem::pfn_to_va(mem::first_free_pfn());
    let entry = suite::l1e_addr(va);
    let entry_va = mem::pfn_to_va(entry >> 12) + (entry & 0xfff);
    let l4 = mem::pfn_to_mfn(si.pt_base >> 12);
    rt::println!("ptwr_bad: storing a writable mapping of the L4 into L1 at {entry_va:#x}");
    rt::poke(entry_va, (l4 << 12) | P | RW | A);
    rt::finish(Some("the refused store was applied"));
}
