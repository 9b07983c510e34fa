//! Devices for the pvmmu VMM (serial console, exit port, MMIO test device): arriving with the VMM.
