//! Live migration over the host network: the `migrate` commands, the
//! source loop that drives [`migrate::Source`] and the destination service
//! that drives one [`migrate::Dest`] per incoming guest.
//!
//! Frames travel on an authenticated [`netstack::channel::Channel`]; the VM
//! manager ([`crate::vmm`]) supplies pages, dirty sets, pause and state. The
//! destination owns nothing until `Commit`: an incoming guest is a VM in
//! state `incoming`, freed again on any abort or lost link.

use alloc::string::String;
use alloc::vec::Vec;

use migrate::dest::{Dest, DestAction, DestHost};
use migrate::proto::{CpuFeature, Message, decode, encode};
use migrate::source::{Action, Policy, Source, VmDescription};
use migrate::{GuestMemory, GuestMemoryMut};
use netstack::channel::{Channel, ChannelOptions, Listener};
use netstack::stack::{Ipv4Address, Stack};

use crate::events::emit as async_line;
use crate::println;

pub use migrate::DEFAULT_PORT as MIGRATE_PORT;

/// How long an incoming migration may go without a frame before the guest
/// runs here. A source always has something to send (pages, a round's
/// end, the state) or is waiting for our answer, which we give at once;
/// TCP keep-alive notices a dead peer, this one a live but silent one.
pub const IDLE_TIMEOUT_US: u64 = 30_000_000;

/// Migrations (incoming and outgoing together) a host runs at once.
pub const MAX_MIGRATIONS: usize = 2;

/// Largest frame a migration channel carries (page messages are built to
/// at most [`ROOM_CAP`]; state and control messages are small).
pub(super) const MAX_FRAME: u32 = 256 * 1024;
/// Most message bytes the source hands the channel in one turn.
pub(super) const ROOM_CAP: usize = 128 * 1024;

pub(super) fn options() -> ChannelOptions {
    ChannelOptions {
        max_payload: MAX_FRAME,
        timeout_us: 5_000_000,
        tx_limit: 512 * 1024,
    }
}

/// The CPU features a guest sees here (CPUID passes them through).
pub fn cpu_features() -> u64 {
    let (_, _, c1, _) = crate::arch::cpuid(1, 0);
    let (_, b7, _, _) = if crate::arch::cpuid(0, 0).0 >= 7 {
        crate::arch::cpuid(7, 0)
    } else {
        (0, 0, 0, 0)
    };
    let bit = |reg: u32, n: u32, f: u64| if reg & (1 << n) != 0 { f } else { 0 };
    bit(c1, 0, CpuFeature::SSE3)
        | bit(c1, 9, CpuFeature::SSSE3)
        | bit(c1, 19, CpuFeature::SSE4_1)
        | bit(c1, 20, CpuFeature::SSE4_2)
        | bit(c1, 23, CpuFeature::POPCNT)
        | bit(c1, 25, CpuFeature::AES)
        | bit(c1, 1, CpuFeature::PCLMULQDQ)
        | bit(c1, 28, CpuFeature::AVX)
        | bit(b7, 5, CpuFeature::AVX2)
        | bit(c1, 12, CpuFeature::FMA)
        | bit(b7, 3, CpuFeature::BMI1)
        | bit(b7, 8, CpuFeature::BMI2)
        | bit(c1, 30, CpuFeature::RDRAND)
        | bit(b7, 18, CpuFeature::RDSEED)
        | bit(c1, 26, CpuFeature::XSAVE)
        | bit(c1, 17, CpuFeature::PCID)
}

mod commands;
mod error;
mod incoming;
mod outgoing;
mod service;

pub use commands::{cancel, check, listen, out, status};
pub use error::MigrationError;
pub use incoming::MigrationService;
pub use outgoing::{Outbound, Outgoing, check_out};
pub use service::Migrations;
