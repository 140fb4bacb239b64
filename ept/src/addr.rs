//! Address newtypes: [`Gpa`] (guest-physical), [`Hpa`] (host-physical) and
//! [`Gfn`] (guest 4 KiB frame number).
//!
//! Mixing a guest-physical with a host-physical address is the classic EPT
//! bug, so each has its own type. Like vm-memory's `GuestAddress` (and the
//! kernel's `addr::Hpa`), they deliberately have no `+`: every offset goes
//! through a checked method, so an overflow is a `None` the caller must
//! handle instead of a silent wrap in release builds.

use core::fmt;

/// Size of a base page: the unit of [`Gfn`] and of every table frame.
pub(crate) const PAGE_SIZE: u64 = 4096;

/// log2 of [`PAGE_SIZE`].
const PAGE_SHIFT: u32 = 12;

/// Defines an address newtype with the shared constructors, checked
/// arithmetic and hex formatting.
macro_rules! address {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
        pub struct $name(u64);

        impl $name {
            /// Wraps a raw address.
            pub const fn new(addr: u64) -> Self {
                Self(addr)
            }

            /// The raw value, for the hardware boundary (table entries,
            /// VMCS fields).
            pub const fn as_u64(self) -> u64 {
                self.0
            }

            /// `self + offset`, or `None` on overflow.
            pub const fn checked_add(self, offset: u64) -> Option<Self> {
                match self.0.checked_add(offset) {
                    Some(a) => Some(Self(a)),
                    None => None,
                }
            }

            /// `self - base`, or `None` if `base` lies above `self`.
            pub const fn offset_from(self, base: Self) -> Option<u64> {
                self.0.checked_sub(base.0)
            }

            /// Whether the address is a multiple of `align`. An `align` of
            /// zero is a multiple of nothing, so it gives `false` rather than
            /// a division by zero.
            pub const fn is_aligned(self, align: u64) -> bool {
                match self.0.checked_rem(align) {
                    Some(rest) => rest == 0,
                    None => false,
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:#x}", self.0)
            }
        }

        // Debug is the same as Display: in a `{:?}` of a struct full of
        // addresses the hex value is what one wants to read, not `Gpa(4096)`.
        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(self, f)
            }
        }

        impl fmt::LowerHex for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::LowerHex::fmt(&self.0, f)
            }
        }
    };
}

address! {
    /// A guest-physical address: what the guest puts on its (virtual) bus,
    /// the input of an EPT walk.
    Gpa
}

address! {
    /// A host-physical address: the output of an EPT walk, and where the
    /// EPT tables themselves live.
    Hpa
}

address! {
    /// A guest frame number: a guest-physical address divided by 4 KiB, the
    /// unit of dirty tracking.
    Gfn
}

impl Gpa {
    /// The 4 KiB guest frame that contains this address.
    pub const fn gfn(self) -> Gfn {
        Gfn(self.0 >> PAGE_SHIFT)
    }
}

impl Gfn {
    /// First byte of the frame, or `None` if the frame lies beyond the
    /// 64-bit address space (frame numbers of 2^52 and up).
    pub const fn gpa(self) -> Option<Gpa> {
        match self.0.checked_mul(PAGE_SIZE) {
            Some(a) => Some(Gpa(a)),
            None => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checked_arithmetic() {
        assert_eq!(Gpa::new(0x1000).checked_add(0x234), Some(Gpa::new(0x1234)));
        assert_eq!(Gpa::new(u64::MAX).checked_add(1), None);
        assert_eq!(Hpa::new(0x3000).offset_from(Hpa::new(0x1000)), Some(0x2000));
        assert_eq!(Hpa::new(0x1000).offset_from(Hpa::new(0x3000)), None);
    }

    #[test]
    fn alignment_never_panics() {
        assert!(Gpa::new(0x20_0000).is_aligned(0x20_0000));
        assert!(!Gpa::new(0x20_1000).is_aligned(0x20_0000));
        assert!(Hpa::new(0x3000).is_aligned(0x3000));
        assert!(!Hpa::new(0x3000).is_aligned(0));
        assert!(!Hpa::new(0).is_aligned(0));
    }

    #[test]
    fn frames() {
        assert_eq!(Gpa::new(0x20_1fff).gfn(), Gfn::new(0x201));
        assert_eq!(Gfn::new(0x201).gpa(), Some(Gpa::new(0x20_1000)));
        assert_eq!(Gfn::new(1 << 52).gpa(), None);
    }

    #[test]
    fn formatting_is_lower_case_hex_with_prefix() {
        assert_eq!(format!("{}", Gpa::new(0x20_0000)), "0x200000");
        assert_eq!(format!("{:?}", Some(Hpa::new(0xABC))), "Some(0xabc)");
        assert_eq!(format!("{:x}", Gfn::new(0xabc)), "abc");
    }
}
