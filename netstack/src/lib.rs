//! TCP/IP for the hypervisor.
#![cfg_attr(not(test), no_std)]

extern crate alloc;

pub mod bench;
pub mod channel;
pub mod codec;
pub mod filter;
pub mod nic;
pub mod stack;
