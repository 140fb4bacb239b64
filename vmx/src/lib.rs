//! Intel VT-x (VMX) building blocks for the hypervisor kernel.
//!
//! Section numbers are those of the Intel SDM, revision 084: Volume 3C
//! chapters 25 (the VMCS: controls 25.6-25.8, exit information 25.9),
//! 26 (VM entries), 28 (VM exits, exit qualifications 28.2.1), 31 (VMX
//! instruction reference, error numbers 31.4) and Volume 3D appendices A
//! (capability MSRs), B (VMCS field encodings) and C (exit reasons).
//!
//! What it is for:
//!
//! - [`caps`]: decoding the VMX capability MSRs into [`VmxCapabilities`];
//! - [`controls`]: the VM-execution, VM-exit and VM-entry control bits and
//!   negotiating a wanted set against what the CPU allows, plus the CR0/CR4
//!   bits VMX operation fixes;
//! - [`vmcs`]: VMCS field encodings, the [`Vmcs`] access trait the kernel
//!   implements (and tests fake) and VM-instruction error numbers;
//! - [`exit`]: exit reasons and the exit-qualification and
//!   interruption-information formats, decoded from raw values;
//! - [`regs`]: the guest general-purpose registers the world switch saves;
//! - [`insn`] (x86-64 only): the VMX instructions, each wrapped once as an
//!   `unsafe fn`, and the VM-entry/VM-exit world switch.
//!
//! Everything except [`insn`] is pure: it compiles and is unit-tested on
//! the host with `cargo test -p vmx` (the tests decode values read from
//! Bochs 2.7, the emulator this project runs VMX on).
//!
//! What it is not for: policy (which controls a VM uses, how exits are
//! handled), enabling VMX (IA32_FEATURE_CONTROL, CR4.VMXE, allocating the
//! VMXON region), EPT tables (the `ept` crate), or emulating instructions.
//! It keeps no state and allocates nothing.
#![cfg_attr(not(test), no_std)]

pub mod caps;
pub mod controls;
pub mod exit;
#[cfg(test)]
mod fixtures;
#[cfg(target_arch = "x86_64")]
pub mod insn;
pub mod regs;
pub mod vmcs;

pub use caps::{AllowedSettings, CapsError, VmxCapabilities};
pub use controls::{
    ControlError, EntryControls, ExitControls, PinControls, PrimaryControls, SecondaryControls,
};
pub use exit::{ExitInfo, ExitReason};
pub use regs::{Gpr, GuestRegs};
pub use vmcs::{Field, VmFail, VmInstructionError, Vmcs};
