//! XSETBV rules: which values a guest may write to XCR0.
//!
//! XSETBV always exits to the hypervisor (SDM Vol. 3C, 26.1.2), which must
//! then refuse what the processor would refuse, and what the guest's CPU
//! profile does not offer, by injecting #GP(0). [`check_xsetbv`] says
//! whether a write is legal; every error is one reason for #GP. The rules
//! are those of SDM Vol. 1, 13.3 ("Enabling the XSAVE Feature Set and
//! XSAVE-Enabled Features") and the XSETBV entry of Vol. 2D.
//!
//! Not here: the CPL and CR4.OSXSAVE checks (#GP and #UD from the exit
//! handler, which knows the guest's CPL and CR4).

use crate::profile::CpuidSource;

/// x87 state (XCR0 bit 0; always set).
pub const X87: u64 = 1 << 0;
/// SSE state: XMM registers and MXCSR (bit 1).
pub const SSE: u64 = 1 << 1;
/// AVX state: upper halves of YMM0-15 (bit 2).
pub const AVX: u64 = 1 << 2;
/// MPX bound registers BND0-3 (bit 3).
pub const BNDREGS: u64 = 1 << 3;
/// MPX BNDCFGU and BNDSTATUS (bit 4).
pub const BNDCSR: u64 = 1 << 4;
/// AVX-512 opmask registers k0-k7 (bit 5).
pub const OPMASK: u64 = 1 << 5;
/// Upper 256 bits of ZMM0-15 (bit 6).
pub const ZMM_HI256: u64 = 1 << 6;
/// ZMM16-31 (bit 7).
pub const HI16_ZMM: u64 = 1 << 7;
/// Both MPX components: set together or not at all.
pub const MPX: u64 = BNDREGS | BNDCSR;
/// The three AVX-512 components: set together or not at all.
pub const AVX512: u64 = OPMASK | ZMM_HI256 | HI16_ZMM;
/// Every component a CPU profile may allow (`0xe7`): no MPX (deprecated,
/// gone from recent CPUs) and nothing past AVX-512 (PKRU, AMX... would
/// need state the kernel does not migrate).
pub const OFFERABLE: u64 = X87 | SSE | AVX | AVX512;

/// Size of the legacy region (512) plus the XSAVE header (64): the
/// smallest standard-format XSAVE area (SDM Vol. 1, 13.4).
pub const MIN_XSAVE_SIZE: u32 = 576;

/// Why an XSETBV must fault (#GP(0)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Xcr0Error {
    /// ECX named an extended control register other than XCR0.
    #[error("XSETBV to XCR{0}: only XCR0 exists")]
    BadIndex(u32),
    /// The value sets a bit the guest's profile does not allow.
    #[error("XCR0 value {value:#x} sets bits {extra:#x} outside the allowed {allowed:#x}")]
    NotAllowed {
        /// The value written.
        value: u64,
        /// Its bits outside `allowed`.
        extra: u64,
        /// The components the profile allows.
        allowed: u64,
    },
    /// Bit 0 (x87) is clear.
    #[error("XCR0 value {0:#x} clears bit 0 (x87 state must stay enabled)")]
    NoX87(u64),
    /// AVX (bit 2) without SSE (bit 1).
    #[error("XCR0 value {0:#x} enables AVX without SSE")]
    AvxWithoutSse(u64),
    /// Some but not all of bits 5-7 (AVX-512).
    #[error("XCR0 value {0:#x} enables only part of the AVX-512 state (bits 5-7 go together)")]
    PartialAvx512(u64),
    /// AVX-512 state (bits 5-7) without AVX (bit 2).
    #[error("XCR0 value {0:#x} enables AVX-512 state without AVX")]
    Avx512WithoutAvx(u64),
    /// One MPX bit (3 or 4) without the other.
    #[error("XCR0 value {0:#x} enables only one of the two MPX components (bits 3-4 go together)")]
    PartialMpx(u64),
}

/// Whether a guest's `XSETBV` with ECX = `index` and EDX:EAX = `value` is
/// legal when its profile allows the components `allowed` (its
/// [`crate::profile::Profile::xcr0_mask`]). `Ok`: write it; `Err`: inject
/// #GP(0).
pub fn check_xsetbv(index: u32, value: u64, allowed: u64) -> Result<(), Xcr0Error> {
    if index != 0 {
        return Err(Xcr0Error::BadIndex(index));
    }
    let extra = value & !allowed;
    if extra != 0 {
        return Err(Xcr0Error::NotAllowed {
            value,
            extra,
            allowed,
        });
    }
    if value & X87 == 0 {
        return Err(Xcr0Error::NoX87(value));
    }
    if value & AVX != 0 && value & SSE == 0 {
        return Err(Xcr0Error::AvxWithoutSse(value));
    }
    let avx512 = value & AVX512;
    if avx512 != 0 && avx512 != AVX512 {
        return Err(Xcr0Error::PartialAvx512(value));
    }
    if avx512 != 0 && value & AVX == 0 {
        return Err(Xcr0Error::Avx512WithoutAvx(value));
    }
    let mpx = value & MPX;
    if mpx != 0 && mpx != MPX {
        return Err(Xcr0Error::PartialMpx(value));
    }
    Ok(())
}

/// Size of a standard-format XSAVE area holding the components of `xcr0`:
/// the end of the furthest enabled component, at least
/// [`MIN_XSAVE_SIZE`]. Offsets and sizes come from the host's
/// CPUID.(EAX=0DH, ECX=i): EAX size, EBX offset (SDM Vol. 1, 13.2); they
/// are never assumed. Components 0 and 1 live in the legacy region.
pub fn xsave_size(xcr0: u64, host: &dyn CpuidSource) -> u32 {
    let mut end = MIN_XSAVE_SIZE;
    for i in 2..64u32 {
        if xcr0 & (1 << i) != 0 {
            let [size, offset, _, _] = host.cpuid(0xd, i);
            end = end.max(offset.saturating_add(size));
        }
    }
    end
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The rules restated from SDM Vol. 1, 13.3, independently of the
    /// order [`check_xsetbv`] tests them in.
    fn legal(value: u64, allowed: u64) -> bool {
        value & !allowed == 0
            && value & X87 != 0
            && (value & AVX == 0 || value & SSE != 0)
            && (value & AVX512 == 0 || (value & AVX512 == AVX512 && value & AVX != 0))
            && (value & MPX == 0 || value & MPX == MPX)
    }

    #[test]
    fn every_low_byte_against_every_allowed_mask() {
        for allowed in 0..=0xffu64 {
            for value in 0..=0xffu64 {
                assert_eq!(
                    check_xsetbv(0, value, allowed).is_ok(),
                    legal(value, allowed),
                    "value {value:#x} allowed {allowed:#x}"
                );
            }
        }
    }

    #[test]
    fn each_rule_has_its_error() {
        let all = u64::MAX;
        assert_eq!(check_xsetbv(1, 3, all), Err(Xcr0Error::BadIndex(1)));
        assert_eq!(
            check_xsetbv(0, 0x107, OFFERABLE),
            Err(Xcr0Error::NotAllowed {
                value: 0x107,
                extra: 0x100,
                allowed: OFFERABLE
            })
        );
        assert_eq!(check_xsetbv(0, 0x2, all), Err(Xcr0Error::NoX87(2)));
        assert_eq!(check_xsetbv(0, 0x5, all), Err(Xcr0Error::AvxWithoutSse(5)));
        assert_eq!(
            check_xsetbv(0, 0x27, all),
            Err(Xcr0Error::PartialAvx512(0x27))
        );
        assert_eq!(
            check_xsetbv(0, 0xe3, all),
            Err(Xcr0Error::Avx512WithoutAvx(0xe3))
        );
        assert_eq!(check_xsetbv(0, 0xb, all), Err(Xcr0Error::PartialMpx(0xb)));
        assert_eq!(check_xsetbv(0, 0x1f, all), Ok(()));
        // No profile allows MPX: the whole pair is refused as not allowed.
        assert!(matches!(
            check_xsetbv(0, 0x1f, OFFERABLE),
            Err(Xcr0Error::NotAllowed { extra: MPX, .. })
        ));
        for ok in [0x1, 0x3, 0x7, 0xe7] {
            assert_eq!(check_xsetbv(0, ok, OFFERABLE), Ok(()), "{ok:#x}");
        }
    }

    /// A Skylake-SP host: AVX at 576, opmask at 1088, ZMM_Hi256 at 1152,
    /// Hi16_ZMM at 1664 (CPUID dump of a Xeon Gold 6130).
    struct Skx;
    impl CpuidSource for Skx {
        fn cpuid(&self, leaf: u32, sub: u32) -> [u32; 4] {
            match (leaf, sub) {
                (0xd, 2) => [256, 576, 0, 0],
                (0xd, 3) => [64, 960, 0, 0],
                (0xd, 4) => [64, 1024, 0, 0],
                (0xd, 5) => [64, 1088, 0, 0],
                (0xd, 6) => [512, 1152, 0, 0],
                (0xd, 7) => [1024, 1664, 0, 0],
                _ => [0; 4],
            }
        }
    }

    #[test]
    fn xsave_sizes_follow_the_host_offsets() {
        assert_eq!(xsave_size(0x3, &Skx), 576);
        assert_eq!(xsave_size(0x7, &Skx), 832);
        assert_eq!(xsave_size(0xe7, &Skx), 2688);
        assert_eq!(xsave_size(0x1f, &Skx), 1088);
    }

    proptest! {
        #[test]
        fn accepted_values_are_allowed_and_keep_x87(
            index in prop_oneof![Just(0u32), any::<u32>()],
            value in prop_oneof![0..=0xffu64, any::<u64>()],
            allowed in prop_oneof![Just(OFFERABLE), 0..=0xffu64, any::<u64>()],
        ) {
            if check_xsetbv(index, value, allowed).is_ok() {
                prop_assert_eq!(index, 0);
                prop_assert_eq!(value & !allowed, 0);
                prop_assert_ne!(value & X87, 0);
                prop_assert!(legal(value, allowed));
            } else {
                prop_assert!(index != 0 || !legal(value, allowed));
            }
        }
    }
}
