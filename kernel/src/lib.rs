//! The hypervisor kernel, laid out by subsystem:
//!
//! | folder | what |
//! |---|---|
//! | [`arch`] | x86-64 instructions, GDT/IDT/TSS, local APIC, time, ACPI platform, entropy |
//! | [`mm`] | physical addresses, the frame allocator, the kernel heap |
//! | [`drivers`] | the host's own devices: COM1, PCI, the e1000 NIC |
//! | [`vmm`] | guests under VT-x/EPT: lifecycle, run loop, exits, device bus and models, vCPU state |
//! | [`net`] | the host's network stack and its services (sink, bench, ping) |
//! | [`migration`] | live migration: the source and destination engines on the wire, the `migrate` commands |
//! | [`ft`] | fault tolerance: the initial copy, the log link between twins, the `ft` commands |
//! | [`console`] | the operator's shell: line editor, parser, command output |
//!
//! Dependencies point down the table's reverse: the console uses every
//! service; `vmm`, `net` and `migration` never call the console, and
//! `migration` runs on `net` as a registered [`net::Service`] that `net`
//! knows only through that trait. What they
//! have to say on their own (guest output, a VM stopping, a peer dropped)
//! goes through [`events`], which the console drains.
//!
//! Modules that need the CPU are compiled only for `target_os = "none"`; the
//! rest is pure logic, unit-tested on the host with `cargo test -p kernel`.
#![cfg_attr(not(test), no_std)]

extern crate alloc;

pub mod arch;
pub mod config;
pub mod console;
pub mod drivers;
pub mod mm;
pub mod text;
pub mod vmm;

#[cfg(target_os = "none")]
pub mod events;
#[cfg(target_os = "none")]
pub mod ft;
#[cfg(target_os = "none")]
pub mod migration;
#[cfg(target_os = "none")]
pub mod net;

#[cfg(target_os = "none")]
mod start;
#[cfg(target_os = "none")]
pub use start::{kmain, reboot};
