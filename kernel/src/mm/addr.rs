//! Address newtypes.
//!
//! A raw `u64` says nothing about which address space it lives in; mixing a
//! host physical address with a guest physical or a virtual one is the
//! classic hypervisor bug. [`Hpa`] is a host physical address. Like
//! vm-memory's `GuestAddress`, it deliberately has no `+`: every offset goes
//! through a checked method, so an overflow is a `None` the caller must
//! handle instead of a silent wrap in release builds.
//!
//! Not for: guest addresses (`Gpa`, `Gfn` belong next to the EPT code) or
//! virtual addresses.

use core::fmt;

/// Size of a base page (and of a frame handed out by the frame allocator).
pub const PAGE_SIZE: u64 = 4096;

/// log2 of [`PAGE_SIZE`].
const PAGE_SHIFT: u32 = 12;

/// A host physical address.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Hpa(u64);

impl Hpa {
    /// Wraps a raw host physical address.
    pub const fn new(addr: u64) -> Self {
        Hpa(addr)
    }

    /// The raw value, for the hardware boundary (page-table entries, MSRs,
    /// port I/O).
    pub const fn as_u64(self) -> u64 {
        self.0
    }

    /// `self + offset`, or `None` on overflow.
    pub const fn checked_add(self, offset: u64) -> Option<Hpa> {
        match self.0.checked_add(offset) {
            Some(a) => Some(Hpa(a)),
            None => None,
        }
    }

    /// Rounds down to a multiple of `align`.
    ///
    /// # Panics
    ///
    /// If `align` is not a power of two. Alignments are constants chosen by
    /// the programmer, never outside input, so a wrong one is a bug to catch
    /// at once rather than an error to propagate.
    pub const fn align_down(self, align: u64) -> Hpa {
        assert!(align.is_power_of_two(), "alignment must be a power of two");
        Hpa(self.0 & !(align - 1))
    }

    /// Rounds up to a multiple of `align`, or `None` if that does not fit in
    /// 64 bits.
    ///
    /// # Panics
    ///
    /// If `align` is not a power of two (see [`Hpa::align_down`]).
    pub const fn align_up(self, align: u64) -> Option<Hpa> {
        assert!(align.is_power_of_two(), "alignment must be a power of two");
        match self.0.checked_add(align - 1) {
            Some(a) => Some(Hpa(a & !(align - 1))),
            None => None,
        }
    }

    /// Whether the address is a multiple of `align`.
    ///
    /// # Panics
    ///
    /// If `align` is not a power of two (see [`Hpa::align_down`]).
    pub const fn is_aligned(self, align: u64) -> bool {
        assert!(align.is_power_of_two(), "alignment must be a power of two");
        self.0 & (align - 1) == 0
    }

    /// Number of the 4 KiB frame that contains this address.
    pub const fn frame_number(self) -> u64 {
        self.0 >> PAGE_SHIFT
    }

    /// First byte of 4 KiB frame `frame`, or `None` if the frame lies beyond
    /// the 64-bit address space (frame numbers of 2^52 and up).
    pub const fn from_frame_number(frame: u64) -> Option<Hpa> {
        match frame.checked_mul(PAGE_SIZE) {
            Some(a) => Some(Hpa(a)),
            None => None,
        }
    }
}

impl fmt::Display for Hpa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

// Debug is the same as Display: in a `{:?}` of a struct full of addresses the
// hex value is what one wants to read, not `Hpa(4096)`.
impl fmt::Debug for Hpa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::LowerHex for Hpa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::LowerHex::fmt(&self.0, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::format;

    #[test]
    fn new_and_as_u64_round_trip() {
        assert_eq!(Hpa::new(0).as_u64(), 0);
        assert_eq!(Hpa::new(0xdead_b000).as_u64(), 0xdead_b000);
        assert_eq!(Hpa::new(u64::MAX).as_u64(), u64::MAX);
        assert_eq!(Hpa::default(), Hpa::new(0));
    }

    #[test]
    fn checked_add_detects_overflow() {
        assert_eq!(Hpa::new(0x1000).checked_add(0x234), Some(Hpa::new(0x1234)));
        assert_eq!(Hpa::new(u64::MAX).checked_add(0), Some(Hpa::new(u64::MAX)));
        assert_eq!(Hpa::new(u64::MAX).checked_add(1), None);
        assert_eq!(Hpa::new(1).checked_add(u64::MAX), None);
    }

    #[test]
    fn align_down_rounds_toward_zero() {
        assert_eq!(Hpa::new(0x1fff).align_down(PAGE_SIZE), Hpa::new(0x1000));
        assert_eq!(Hpa::new(0x1000).align_down(PAGE_SIZE), Hpa::new(0x1000));
        assert_eq!(Hpa::new(0xfff).align_down(PAGE_SIZE), Hpa::new(0));
        assert_eq!(Hpa::new(0x12_3456).align_down(0x20_0000), Hpa::new(0));
        assert_eq!(
            Hpa::new(u64::MAX).align_down(PAGE_SIZE),
            Hpa::new(0xffff_ffff_ffff_f000)
        );
        assert_eq!(Hpa::new(7).align_down(1), Hpa::new(7));
    }

    #[test]
    fn align_up_rounds_away_from_zero_and_checks_overflow() {
        assert_eq!(Hpa::new(0x1001).align_up(PAGE_SIZE), Some(Hpa::new(0x2000)));
        assert_eq!(Hpa::new(0x1000).align_up(PAGE_SIZE), Some(Hpa::new(0x1000)));
        assert_eq!(Hpa::new(0).align_up(PAGE_SIZE), Some(Hpa::new(0)));
        assert_eq!(
            Hpa::new(0xffff_ffff_ffff_f000).align_up(PAGE_SIZE),
            Some(Hpa::new(0xffff_ffff_ffff_f000))
        );
        assert_eq!(Hpa::new(0xffff_ffff_ffff_f001).align_up(PAGE_SIZE), None);
        assert_eq!(Hpa::new(u64::MAX).align_up(2), None);
        assert_eq!(Hpa::new(u64::MAX).align_up(1), Some(Hpa::new(u64::MAX)));
    }

    #[test]
    fn is_aligned() {
        assert!(Hpa::new(0).is_aligned(PAGE_SIZE));
        assert!(Hpa::new(0x20_0000).is_aligned(0x20_0000));
        assert!(!Hpa::new(0x20_1000).is_aligned(0x20_0000));
        assert!(Hpa::new(0x20_1000).is_aligned(PAGE_SIZE));
        assert!(!Hpa::new(0x20_1001).is_aligned(PAGE_SIZE));
        assert!(Hpa::new(3).is_aligned(1));
    }

    #[test]
    #[should_panic(expected = "power of two")]
    fn non_power_of_two_alignment_panics() {
        let _ = Hpa::new(0x3000).align_down(3 * PAGE_SIZE);
    }

    #[test]
    #[should_panic(expected = "power of two")]
    fn zero_alignment_panics() {
        let _ = Hpa::new(0x3000).is_aligned(0);
    }

    #[test]
    fn frame_numbers() {
        assert_eq!(Hpa::new(0).frame_number(), 0);
        assert_eq!(Hpa::new(0xfff).frame_number(), 0);
        assert_eq!(Hpa::new(0x1000).frame_number(), 1);
        assert_eq!(Hpa::new(0xfebc_0123).frame_number(), 0xfebc0);
        assert_eq!(Hpa::new(u64::MAX).frame_number(), (1 << 52) - 1);
        assert_eq!(Hpa::from_frame_number(0), Some(Hpa::new(0)));
        assert_eq!(Hpa::from_frame_number(0xfebc0), Some(Hpa::new(0xfebc_0000)));
        assert_eq!(
            Hpa::from_frame_number((1 << 52) - 1),
            Some(Hpa::new(0xffff_ffff_ffff_f000))
        );
        assert_eq!(Hpa::from_frame_number(1 << 52), None);
        for a in [0u64, 0x1000, 0x7654_3000, 0xffff_ffff_ffff_f000] {
            let h = Hpa::new(a);
            assert_eq!(Hpa::from_frame_number(h.frame_number()), Some(h));
        }
    }

    #[test]
    fn formatting_is_lower_case_hex_with_prefix() {
        assert_eq!(format!("{}", Hpa::new(0xFEBC_0000)), "0xfebc0000");
        assert_eq!(format!("{:?}", Hpa::new(0)), "0x0");
        assert_eq!(format!("{:?}", Some(Hpa::new(0x1000))), "Some(0x1000)");
        assert_eq!(format!("{:x}", Hpa::new(0xabc)), "abc");
        assert_eq!(format!("{:#x}", Hpa::new(0xabc)), "0xabc");
    }

    #[test]
    fn ordering_follows_the_address() {
        assert!(Hpa::new(0x1000) < Hpa::new(0x2000));
        assert_eq!(Hpa::new(5).max(Hpa::new(9)), Hpa::new(9));
    }
}
