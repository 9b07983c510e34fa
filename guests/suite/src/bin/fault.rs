//! Reads an unmapped address: the VMM must report the page fault (vector, error code,
//! CR2, RIP, page-table path) and exit with its fault code.
#![no_std]
#![no_main]

use rt::abi::StartInfo;

#[unsafe(no_mangle)]
pub fn guest_main(_si: &'static StartInfo) {
    rt::println!("fault guest: reading 0x40000000, which nothing maps");
    let v = rt::peek(0x4000_0000);
    rt::println!("read {v:#x}: the fault was not delivered");
    rt::finish(Some("no fault"));
}
