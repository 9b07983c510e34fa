//! The pvmmu KVM VMM: arriving with the VMM issue.
