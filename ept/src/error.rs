//! Errors of the EPT operations.

use crate::addr::{Gpa, Hpa};

/// Why an [`crate::Ept`] operation was refused or failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EptError {
    /// A guest-physical address is not 4 KiB aligned.
    #[error("Guest-physical {0} is not 4 KiB aligned")]
    UnalignedGpa(Gpa),
    /// A host-physical address is not 4 KiB aligned.
    #[error("Host-physical {0} is not 4 KiB aligned")]
    UnalignedHpa(Hpa),
    /// A length is not a multiple of 4 KiB.
    #[error("Length {0:#x} at guest-physical {1} is not a multiple of 4 KiB")]
    UnalignedLength(u64, Gpa),
    /// A length is zero.
    #[error("Zero-length range at guest-physical {0}")]
    ZeroLength(Gpa),
    /// The range does not fit below 2^48, the limit of a 4-level walk, or
    /// its end overflows 64 bits.
    #[error("Guest-physical range {gpa} + {len:#x} is beyond the 48-bit EPT address space")]
    GpaOutOfRange {
        /// Start of the range.
        gpa: Gpa,
        /// Length of the range.
        len: u64,
    },
    /// The host range does not fit below 2^52, the widest address an EPT
    /// entry can hold, or its end overflows 64 bits.
    #[error("Host-physical range {hpa} + {len:#x} is beyond the 52-bit physical address space")]
    HpaOutOfRange {
        /// Start of the range.
        hpa: Hpa,
        /// Length of the range.
        len: u64,
    },
    /// Write without read is an EPT misconfiguration (SDM 29.3.3.1).
    #[error("Write without read access at guest-physical {0} is an EPT misconfiguration")]
    WriteWithoutRead(Gpa),
    /// A page of the range to map is mapped already.
    #[error("Guest-physical {0} is already mapped")]
    AlreadyMapped(Gpa),
    /// A page of the range to change is not mapped.
    #[error("Guest-physical {0} is not mapped")]
    NotMapped(Gpa),
    /// The frame allocator had no frame for a table. The caller knows which
    /// range it was mapping; the operation changed no translation.
    #[error("Out of frames for EPT tables")]
    OutOfFrames,
    /// The frame allocator returned a frame that cannot hold a table (not
    /// 4 KiB aligned, or beyond what an entry can address). It was handed
    /// back.
    #[error("Frame allocator returned {0}, which cannot hold an EPT table")]
    BadFrame(Hpa),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_address() {
        assert_eq!(
            EptError::AlreadyMapped(Gpa::new(0x20_0000)).to_string(),
            "Guest-physical 0x200000 is already mapped"
        );
        assert_eq!(
            EptError::GpaOutOfRange {
                gpa: Gpa::new(0xffff_ffff_f000),
                len: 0x2000
            }
            .to_string(),
            "Guest-physical range 0xfffffffff000 + 0x2000 is beyond the 48-bit EPT address space"
        );
        assert_eq!(
            EptError::UnalignedLength(0x1800, Gpa::new(0x1000)).to_string(),
            "Length 0x1800 at guest-physical 0x1000 is not a multiple of 4 KiB"
        );
    }
}
