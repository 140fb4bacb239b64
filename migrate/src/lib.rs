//! Live migration of a running guest by iterative pre-copy.
//!
//! This crate is sans-IO: it holds the wire protocol ([`proto`]) and the two
//! state machines, [`source::Source`] and [`dest::Dest`]. The kernel feeds them
//! messages from the authenticated host-to-host channel and carries out the
//! actions they return (send a message, pause or slow the guest, start it...).
//!
//! ```text
//!  source                                   destination
//!    |--- Hello{version,vm,mem,cpu,devs} ----->|  check version/RAM/CPU profile/devices
//!    |<-- Ready  (RAM reserved) ---------------|  or Refuse{every blocker} -> Failed
//!    |--- MemoryLayout{regions} -------------->|
//!    |--- Pages{round 0, all pages} ---------->|  runs of zero pages / raw pages
//!    |--- RoundEnd{0, sent, dirty_left} ------>|
//!    |--- Pages{round 1, dirty pages} -------->|  repeated while the estimated
//!    |--- RoundEnd{1, ...} ------------------->|  downtime exceeds the budget
//!    |          ...  (SlowGuest if the dirty set stops shrinking)
//!  PauseGuest
//!    |--- Pause ------------------------------>|
//!    |--- Pages{final round} ----------------->|
//!    |--- RoundEnd{final} -------------------->|
//!  NeedState
//!    |--- VcpuState(blob) -------------------->|
//!    |--- DeviceState{name, blob} (each) ----->|
//!    |--- Commit ----------------------------->|  Start{vcpu, devices}
//!    |<-- Committed ---------------------------|  the guest runs here now
//!  Done (free the VM)
//!
//!  Either side may send Abort{reason} before Commit: the source then resumes
//!  the guest (Failed), the destination frees everything (Discard).
//!
//!  migrate check: a Probe instead of the Hello
//!    |--- Probe{version,vm,mem,cpu,devs} ----->|  the same checks, nothing reserved
//!    |<-- Ready or Refuse{every blocker} ------|  then the destination closes
//! ```
#![cfg_attr(not(test), no_std)]
#![warn(missing_docs)]

extern crate alloc;

use alloc::string::String;
use alloc::vec::Vec;

pub mod dest;
pub mod names;
pub mod proto;
pub mod source;

/// The TCP port a destination listens on unless told otherwise.
pub const DEFAULT_PORT: u16 = 7002;

pub use dest::{Dest, DestAction, DestHost};
pub use proto::{Message, Page, PageRun, PageRuns, ProtoError, decode, encode};
pub use source::{Action, NoConvergence, Policy, RoundReport, Source, Summary, VmDescription};

/// Guest RAM as the source engine sees it (pages numbered 0..page_count, i.e. gfn).
pub trait GuestMemory {
    /// Number of guest pages.
    fn page_count(&self) -> u64;
    /// Copies page `gfn` into `buf`.
    fn read_page(&self, gfn: u64, buf: &mut [u8; 4096]);
    /// Calls f for every page written since the last call (or since tracking started), then forgets them.
    /// Called only while the guest is not running.
    fn take_dirty(&mut self, f: &mut dyn FnMut(u64));
}

/// Destination RAM (already reserved).
pub trait GuestMemoryMut {
    /// Number of reserved pages.
    fn page_count(&self) -> u64;
    /// Writes page `gfn`; `None` means a page of zeros.
    fn write_page(&mut self, gfn: u64, data: Option<&[u8; 4096]>);
}

/// vCPU and every device model implement this; no default methods.
pub trait SaveRestore {
    /// Name of the device (matches the names in `Hello`).
    fn name(&self) -> &str;
    /// Serializes the state.
    fn save(&self) -> Vec<u8>;
    /// Restores state produced by [`SaveRestore::save`].
    fn restore(&mut self, data: &[u8]) -> Result<(), String>;
}
