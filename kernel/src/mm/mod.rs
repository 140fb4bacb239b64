//! Memory: typed physical addresses, the physical frame allocator and the
//! kernel heap (with the reserve that bounds what peers can make it hold).

pub mod addr;
pub mod frames;

#[cfg(target_os = "none")]
mod heap;

#[cfg(target_os = "none")]
pub use heap::*;
