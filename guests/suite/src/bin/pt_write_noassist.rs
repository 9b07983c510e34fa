//! Stores to its own read-only L1 table without enabling writable page tables: the store
//! is the page fault it is, and the VMM reports it.
#![no_std]
#![no_main]

use rt::abi::StartInfo;
use rt::{mem, peek};

#[unsafe(no_mangle)]
pub fn guest_main(_si: &'static StartInfo) {
    let va = mem::pfn_to_va(mem::first_free_pfn());
    let entry = suite::l1e_addr(va);
    let entry_va = mem::pfn_to_va(entry >> 12) + (entry & 0xfff);
    let same = peek(entry_va);
    rt::println!("pt_write_noassist: storing into the L1 entry at {entry_va:#x}");
    rt::poke(entry_va, same);
    rt::finish(Some("the store to a read-only page table did not fault"));
}
