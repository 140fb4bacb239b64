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
//!    |--- End{reason} <-------------------------------------------->| either side: protection ends
//! ```
//!
//! The VM side (what is recorded, replayed, held) is `crate::vmm`'s
//! lockstep; the log's format and the engines are the `ft_lockstep`
//! crate. A bad frame, a lying acknowledgement or a lost link ends
//! protection: the primary keeps running unprotected and says so, the
//! secondary discards its copy.

mod commands;
mod service;

pub use commands::{disable, enable, listen, status, watch};
pub use service::FtService;

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

/// A twin silent this long is given up on (part 1: protection ends; the
/// failover of part 2 replaces this with heartbeats and a witness).
pub const SILENCE_US: u64 = 10_000_000;

/// How long a link that ended may take to hand its last frames (the End
/// after what the channel already sealed) to the twin before it is
/// released.
pub const CLOSE_GRACE_US: u64 = 2_000_000;

/// Least time between two acknowledgements that only report replay
/// progress (one is sent at once for every log frame received).
pub const ACK_EVERY_US: u64 = 20_000;
