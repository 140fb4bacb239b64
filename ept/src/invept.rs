//! Operands of the INVEPT instruction (SDM Vol. 3C 31.3, "INVEPT"). The
//! instruction itself is executed by the kernel's `vmx` wrapper; this module
//! only builds what it takes.

/// The INVEPT type, passed in the register operand.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u64)]
pub enum InveptKind {
    /// Invalidate mappings derived from the EPTP in the descriptor.
    SingleContext = 1,
    /// Invalidate mappings derived from every EPTP (the descriptor's EPTP is
    /// ignored).
    AllContext = 2,
}

impl InveptKind {
    /// The value for the register operand.
    pub const fn value(self) -> u64 {
        self as u64
    }
}

/// The 128-bit INVEPT descriptor for `eptp`: bits 63:0 hold the EPTP,
/// bits 127:64 are reserved and must be 0. As an array it is laid out in
/// memory exactly as the instruction reads it (little-endian, low word first).
pub const fn invept_descriptor(eptp: u64) -> [u64; 2] {
    [eptp, 0]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptor_and_kinds() {
        assert_eq!(invept_descriptor(0x1234_505e), [0x1234_505e, 0]);
        assert_eq!(InveptKind::SingleContext.value(), 1);
        assert_eq!(InveptKind::AllContext.value(), 2);
    }
}
