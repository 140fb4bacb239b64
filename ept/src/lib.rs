//! Extended page tables (EPT): building and editing the second-level
//! translation from guest-physical to host-physical addresses that VMX
//! applies to everything a guest touches.
//!
//! Section numbers are those of the Intel SDM, Volume 3C, revision 084:
//! chapter 29 ("VMX Support for Address Translation"), 29.3.2 (EPT
//! translation mechanism and the entry formats, Tables 29-1 to 29-6),
//! 29.3.3 (EPT-induced VM exits: misconfigurations 29.3.3.1, violations
//! 29.3.3.2), 29.3.5 (accessed and dirty flags), 29.3.7 (memory typing),
//! 29.4.3.4 (when INVEPT is needed); 25.6.11 (the EPTP); 31.3 (INVEPT).
//!
//! ```text
//!  guest-physical address (48 bits used)
//!  47      39 38      30 29      21 20      12 11         0
//! +----------+----------+----------+----------+------------+
//! | PML4 idx | PDPT idx |  PD idx  |  PT idx  |   offset   |
//! +----------+----------+----------+----------+------------+
//!
//!  EPTP --> PML4 --> PDPT --> PD --+--> 2 MiB page   (PDE bit 7 = 1)
//!                                  +--> PT --> 4 KiB page
//! ```
//!
//! What it is for: the pure logic of one guest's EPT. [`Ept`] maps,
//! unmaps and re-protects guest-physical ranges (2 MiB pages where
//! alignment allows, split on demand), translates, walks its leaves, hands
//! out and clears dirty flags for live migration, and produces the EPTP
//! and INVEPT descriptor. It reaches memory only through the [`PhysMem`]
//! and [`FrameAlloc`] traits, so it runs unchanged in the kernel (on the
//! identity map) and in host unit tests (on a `Vec<u8>`), and it contains
//! no `unsafe`.
//!
//! [`DirtyLog`] builds dirty-page tracking on top of it, with one of
//! three mechanisms ([`Mechanism`]): page-modification logging, EPT dirty
//! flags, or write protection; each consumer (live migration, fault
//! tolerance, the console) reads it through its own view ([`ViewId`]).
//!
//! What it is not for: executing INVEPT or VMWRITE (the kernel's `vmx`
//! wrappers do that; see the INVEPT notes on each method), programming the
//! PML address and index VMCS fields (the kernel does that; [`DirtyLog`]
//! only reads the buffer), choosing memory types from MTRRs or deciding
//! guest memory layout, allocating guest memory, locking (the caller
//! serialises edits and keeps vCPUs out while they happen), 1 GiB pages,
//! 5-level EPT, mode-based execute control, sub-page permissions or #VE.
#![cfg_attr(not(test), no_std)]

extern crate alloc;

mod addr;
mod dirty;
mod entry;
mod error;
mod invept;
mod mem;
mod tables;

#[cfg(test)]
mod testkit;

pub use addr::{Gfn, Gpa, Hpa};
pub use dirty::{
    DirtyBitmap, DirtyError, DirtyLog, DirtyStats, MAX_VIEWS, Mechanism, ViewId, choose,
};
pub use entry::{EptEntry, Leaf, MemType, PageSize, Perm};
pub use error::EptError;
pub use invept::{InveptKind, invept_descriptor};
pub use mem::{FrameAlloc, PhysMem};
pub use tables::{Ept, Translation};
