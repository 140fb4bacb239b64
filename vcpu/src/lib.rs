//! The guest CPU as a VM sees it, independent of the host it runs on.
//!
//! - [`profile`]: named CPU profiles (`x86-64`, `haswell`,
//!   `skylake-server`, `host`) and the CPUID a guest sees under one, so a
//!   VM looks the same on every host it may migrate to.
//! - [`xcr0`]: the rules XSETBV enforces, checked before the kernel writes
//!   a guest's XCR0.
//! - [`state`]: the versioned codec of a vCPU's state (migration now,
//!   fault tolerance later).
//!
//! This crate is pure: no instruction is executed here. The host's CPUID
//! comes in through [`profile::CpuidSource`], which the kernel implements
//! with the `cpuid` instruction and tests fake. It does not decide how
//! exits are handled, nor which VMCS fields migrate: the kernel does.
//!
//! References are to the Intel SDM (Intel 64 and IA-32 Architectures
//! Software Developer's Manual), revision 086 (December 2024).
#![cfg_attr(not(test), no_std)]
#![warn(missing_docs)]

extern crate alloc;

pub mod profile;
pub mod state;
pub mod xcr0;
