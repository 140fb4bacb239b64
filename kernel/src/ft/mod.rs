//! Fault tolerance (VMware FT's vLockstep) over the host network: the `ft`
//! commands and the service that carries each protected guest's log.
//!
//! ```text
//!  primary (ft enable vm peer)                 secondary (ft listen)
//!    |== initial copy: the migration engine, the guest kept here ==>|
//!    |   (pre-copy while it runs, a brief pause, Commit/Committed)  | starts replaying
//!  resumes, recording                                               |
//!    |--- Log{first, records} (every turn) ------------------------>| replays, never ahead
//!    |<-- Ack{received, replayed, exits, checks_ok} ----------------| at once, and as it replays
//!  releases output up to `received`                                 |
//!    |<-- Heartbeat{seq}, both ways, every ft.heartbeat_ms ---------->|
//!    |--- End{reason} <-------------------------------------------->| either side: protection ends
//! ```
//!
//! Both twins send a `Heartbeat` every `ft.heartbeat_ms` whatever else
//! flows; a twin that sent nothing for `ft.timeout_ms` is dead. Then the
//! arbiter (the witness named at `ft enable`, [`arbiter`]) decides who
//! runs the guest: the secondary drains the log it holds and goes live if
//! it wins; the primary runs on unprotected if it wins, stops its copy if
//! it loses, and holds its guest paused while the witness cannot be
//! reached. A divergence found by a state check discards the secondary and
//! the primary re-creates it with a new initial copy.
//!
//! The VM side (what is recorded, replayed, held) is `crate::vmm`'s
//! lockstep; the log's format and the engines are the `ft_lockstep`
//! crate. A bad frame or a lying acknowledgement ends protection: the
//! primary keeps running unprotected and says so, the secondary discards
//! its copy.

mod arbiter;
mod commands;
mod service;
mod witness;

pub use commands::{disable, enable, flip, listen, status, watch, witness};
pub use service::FtService;

use crate::config::FtConfig;

static SETTINGS: spin::Mutex<Option<FtConfig>> = spin::Mutex::new(None);

/// Takes `ft.*` from the boot configuration.
pub fn configure(c: FtConfig) {
    *SETTINGS.lock() = Some(c);
}

/// The `ft.*` settings (the defaults until [`configure`]).
pub(crate) fn settings() -> FtConfig {
    SETTINGS.lock().unwrap_or_default()
}

/// The End reason a secondary gives when a state check or the replay
/// found a divergence: the primary then re-creates it.
pub(crate) const DIVERGED: &str = "diverged: ";

/// The port `ft listen` takes initial copies and logs on.
pub const FT_PORT: u16 = ft_lockstep::DEFAULT_PORT;

/// Longest pause of the initial copy (its downtime budget).
pub const COPY_PAUSE_MS: u64 = 300;

/// How long a stopped primary waits for the secondary to acknowledge the
/// rest of the log before it ends protection anyway.
pub const END_GRACE_US: u64 = 5_000_000;

/// Most time between two frames to the twin: with nothing else to say,
/// an empty log frame (primary) or a repeated acknowledgement (secondary).
pub const KEEPALIVE_US: u64 = 1_000_000;

/// How often an arbiter that could not be reached is asked again.
pub const ARBITER_RETRY_US: u64 = 500_000;

/// How long one request to the witness may take (connect, handshake,
/// answer) before it counts as unreachable. More than a second: smoltcp
/// sends one ARP request a second for all addresses, so a witness not yet
/// resolved may wait that long before the first SYN leaves.
pub const WITNESS_TIMEOUT_US: u64 = 2_500_000;

/// How long a link that ended may take to hand its last frames (the End
/// after what the channel already sealed) to the twin before it is
/// released.
pub const CLOSE_GRACE_US: u64 = 2_000_000;

/// Least time between two acknowledgements that only report replay
/// progress (one is sent at once for every log frame received).
pub const ACK_EVERY_US: u64 = 20_000;
