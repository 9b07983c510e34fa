//! Spins forever: the VMM must stop it cleanly on SIGINT.
#![no_std]
#![no_main]

use rt::abi::StartInfo;

#[unsafe(no_mangle)]
pub fn guest_main(_si: &'static StartInfo) {
    rt::println!("spin guest: spinning");
    loop {
        core::hint::spin_loop();
    }
}
