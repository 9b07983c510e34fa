//! A domain named in a hypercall argument (`domid_t dom`), as Xen resolves it for an
//! unprivileged domain under the default XSM policy: `DOMID_SELF` or its own id is the
//! caller's own; another existing domain is not its to touch.

use pvmmu::{Caller, Errno, TlbFlush};
use pvmmu_abi::DOMID_SELF;

/// The machine the domains live in.
type Mach<F> = pvmmu::Machine<vm_memory::GuestMemoryMmap<()>, F>;

/// The domain `dom` names: `DOMID_SELF` is the caller's own, any other id stands for
/// itself (whether it exists is the caller's question to ask).
pub fn resolve(caller: Caller, dom: u16) -> u16 {
    if dom == DOMID_SELF { caller.dom } else { dom }
}

/// Whether `dom` names the caller's own domain: Ok, or -ESRCH for a domain that does
/// not exist and -EPERM for another one.
pub fn own_domain<F: TlbFlush>(m: &Mach<F>, caller: Caller, dom: u16) -> Result<(), Errno> {
    if resolve(caller, dom) == caller.dom {
        Ok(())
    } else if m.domain(dom).is_some() {
        Err(Errno::EPERM)
    } else {
        Err(Errno::ESRCH)
    }
}
