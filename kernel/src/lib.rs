//! The hypervisor kernel.
//!
//! Modules that need the CPU are compiled only for `target_os = "none"`; the
//! rest is pure logic, unit-tested on the host with `cargo test -p kernel`.
#![cfg_attr(not(test), no_std)]

extern crate alloc;

pub mod addr;
pub mod config;
pub mod devices;
pub mod e1000;
pub mod entropy;
pub mod frames;
pub mod lineedit;
pub mod mmio;
pub mod pci;
pub mod shell;
pub mod text;
pub mod vmxcaps;

#[cfg(target_os = "none")]
pub mod apic;
#[cfg(target_os = "none")]
pub mod arch;
#[cfg(target_os = "none")]
pub mod console;
#[cfg(target_os = "none")]
pub mod cpu;
#[cfg(target_os = "none")]
pub mod memory;
#[cfg(target_os = "none")]
pub mod migration;
#[cfg(target_os = "none")]
pub mod net;
#[cfg(target_os = "none")]
pub mod pci_port;
#[cfg(target_os = "none")]
pub mod platform;
#[cfg(target_os = "none")]
pub mod serial;
#[cfg(target_os = "none")]
pub mod time;
#[cfg(target_os = "none")]
pub mod vm;

#[cfg(target_os = "none")]
mod start;
#[cfg(target_os = "none")]
pub use start::{kmain, reboot};
