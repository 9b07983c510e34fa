//! Spins forever: the VMM must stop it cleanly on SIGINT. With `watchdog=N` on the
//! command line it first arms a domain watchdog of N seconds, which then ends the
//! domain (`SHUTDOWN_watchdog`).
#![no_std]
#![no_main]

use rt::abi::StartInfo;

#[unsafe(no_mangle)]
pub fn guest_main(si: &'static StartInfo) {
    if let Some(secs) = rt::cmdline_arg(si, b"watchdog") {
        let id = rt::watchdog(0, u32::try_from(secs).unwrap_or(u32::MAX));
        rt::println!("spin guest: watchdog {id} armed for {secs} s");
    }
    rt::println!("spin guest: spinning");
    loop {
        core::hint::spin_loop();
    }
}
