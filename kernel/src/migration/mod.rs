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
use migrate::proto::{Message, decode, encode};
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

mod commands;
mod error;
mod incoming;
mod outgoing;
mod service;

pub use commands::{cancel, check, listen, out, status};
pub use error::MigrationError;
pub use incoming::MigrationService;
pub use outgoing::{CLOSE_GRACE_US, Outbound, Outgoing, check_out};
pub use service::Migrations;
