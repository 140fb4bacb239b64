//! The x86-64 machine the kernel runs on: privileged instructions
//! ([`instr`], re-exported here), the kernel's GDT/IDT/TSS ([`cpu`]), the
//! local APIC, time keeping, ACPI platform discovery and the entropy pool.

pub mod entropy;

#[cfg(target_os = "none")]
pub mod apic;
#[cfg(target_os = "none")]
pub mod cpu;
#[cfg(target_os = "none")]
mod instr;
#[cfg(target_os = "none")]
pub mod platform;
#[cfg(target_os = "none")]
pub mod time;

#[cfg(target_os = "none")]
pub use instr::*;

/// A fault the `crash` console command can raise ([`raise`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Page fault: read of the unmapped page 0.
    PageFault,
    /// General protection: access through a non-canonical address.
    GeneralProtection,
    /// Invalid opcode: `ud2`.
    InvalidOpcode,
    /// Divide error: division by zero.
    DivideError,
}
