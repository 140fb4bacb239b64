//! The two narrow traits through which the EPT code touches the machine:
//! memory that holds the tables, and a source of 4 KiB frames for them.
//!
//! They are separate so the kernel can implement each on its own type (its
//! identity map, its frame allocator) and lend both to one call.

use crate::addr::Hpa;

/// Host-physical memory holding EPT tables.
///
/// Addresses handed in are always 8-byte aligned and lie in a frame that
/// [`FrameAlloc::alloc_zeroed`] returned and that has not been freed since.
pub trait PhysMem {
    /// Reads the 64-bit word at `pa`.
    fn read_u64(&self, pa: Hpa) -> u64;

    /// Writes the 64-bit word at `pa`.
    ///
    /// Implementations on real hardware must do this as one 64-bit store
    /// (a volatile write of a `u64`): a processor may walk the tables at the
    /// same time, and an entry written in two halves could be seen half old,
    /// half new.
    fn write_u64(&mut self, pa: Hpa, v: u64);
}

/// A source of 4 KiB host frames for EPT tables.
pub trait FrameAlloc {
    /// A 4 KiB aligned frame filled with zeros, or `None` when none is left.
    ///
    /// Zeros matter: a fresh table is linked into the tree as it comes, and
    /// any non-zero word in it would be taken as an entry.
    fn alloc_zeroed(&mut self) -> Option<Hpa>;

    /// Gives back a frame that `alloc_zeroed` returned.
    fn free(&mut self, pa: Hpa);
}
