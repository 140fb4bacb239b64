//! The VMM: guests under VT-x with EPT, time-sliced on the boot CPU.
//!
//! Pure logic, host-tested: the device bus ([`bus`]) every guest port,
//! MMIO and IRQ input goes through, the device models ([`devices`]), the MMIO
//! instruction decoder ([`mmio`]) and the VMX capability report
//! ([`vmxcaps`]). On the target, [`vm`] holds the VM manager.

/// Smallest guest RAM: the guest's page tables, stack and a 1 MiB image area.
pub const MIN_VM_MIB: u64 = 4;
/// Largest guest RAM: guest-physical memory stays below the 3 GiB MMIO hole.
pub const MAX_VM_MIB: u64 = 3072;

pub mod bus;
pub mod clock;
pub mod devices;
pub mod error;
pub mod mmio;

pub use error::VmError;
pub mod vmxcaps;

#[cfg(target_os = "none")]
mod context;
#[cfg(target_os = "none")]
mod dirty;
#[cfg(target_os = "none")]
mod exits;
#[cfg(target_os = "none")]
mod host;
#[cfg(target_os = "none")]
mod io;
#[cfg(target_os = "none")]
mod lockstep;
#[cfg(target_os = "none")]
mod memory;
#[cfg(target_os = "none")]
mod run;
#[cfg(target_os = "none")]
mod setup;
#[cfg(target_os = "none")]
mod state;
#[cfg(target_os = "none")]
mod vm;

/// What every part of the VM manager uses.
#[cfg(target_os = "none")]
mod prelude {
    pub(super) use alloc::format;
    pub(super) use alloc::string::{String, ToString};
    pub(super) use alloc::vec::Vec;

    pub(super) use vmx::controls::{
        EntryControls, ExitControls, PinControls, PrimaryControls, SecondaryControls,
    };
    pub(super) use vmx::exit::{CrAccessKind, ExitReason, InterruptionInfo, IoQualification};
    pub(super) use vmx::insn::{self, GuestRegs, VmFail};
    pub(super) use vmx::vmcs::Field;

    pub(super) use super::clock::GuestClock;
    pub(super) use super::context::{self, GuestContext};
    pub(super) use super::dirty::*;
    pub(super) use super::error::VmError;
    pub(super) use super::exits::*;
    pub(super) use super::host::*;
    pub(super) use super::io::*;
    pub(super) use super::lockstep;
    pub(super) use super::memory::*;
    pub(super) use super::run::*;
    pub(super) use super::setup::*;
    pub(super) use super::state::*;
    pub(super) use super::vm::*;
    pub(super) use crate::events::emit as async_line;
    pub(super) use crate::mm::addr::PAGE_SIZE;
    pub(super) use crate::vmm::bus::Bus;
    pub(super) use crate::vmm::devices::{Pic, RequestPort, Uart, platform};
    pub(super) use crate::{arch, println};
    pub(super) use vcpu::profile::Profile;
}

#[cfg(target_os = "none")]
pub use dirty::dirty;
#[cfg(target_os = "none")]
pub use lockstep::{
    FtPoll, FtStatus, GoLive, ft_drained, ft_end, ft_flip, ft_frames, ft_go_live, ft_lag,
    ft_on_ack, ft_pause, ft_poll, ft_protected, ft_push, ft_sent, ft_start_primary,
    ft_start_secondary, ft_status, ft_stop, ft_watch,
};
#[cfg(target_os = "none")]
pub use run::run_slice;
#[cfg(target_os = "none")]
pub use state::*;
#[cfg(target_os = "none")]
pub use vm::*;
