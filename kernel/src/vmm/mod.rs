//! The VMM: guests under VT-x with EPT, time-sliced on the boot CPU.
//!
//! Pure logic, host-tested: the device models ([`devices`]), the MMIO
//! instruction decoder ([`mmio`]) and the VMX capability report
//! ([`vmxcaps`]). On the target, [`vm`] holds the VM manager.

/// Smallest guest RAM: the guest's page tables, stack and a 1 MiB image area.
pub const MIN_VM_MIB: u64 = 4;
/// Largest guest RAM: guest-physical memory stays below the 3 GiB MMIO hole.
pub const MAX_VM_MIB: u64 = 3072;

pub mod devices;
pub mod mmio;
pub mod vmxcaps;

#[cfg(target_os = "none")]
mod vm;

#[cfg(target_os = "none")]
pub use vm::*;
