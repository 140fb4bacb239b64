//! Drivers for the host's own hardware: COM1 (the console), PCI
//! enumeration and configuration, and the Intel e1000 NIC.

pub mod e1000;
pub mod pci;

#[cfg(target_os = "none")]
pub mod serial;
