//! The `fpu` guest's pure side: its argument, the register pattern and the
//! comparison (the instructions themselves are in `arch`).
//!
//! The guest fills XMM0-15 (with AVX, all of YMM0-15) with a pattern that
//! depends on its seed, the register, the 64-bit lane and a round number,
//! then keeps reading the registers back. Two `fpu` guests with different
//! seeds on one CPU therefore see each other's values if the hypervisor does
//! not switch the vector registers between them. A guest cannot know its VM
//! name, so tests give each VM its own seed through `arg`.

/// 64-bit lanes of a YMM register (lanes 0-1 are its XMM half).
pub const LANES: usize = 4;
/// Vector registers in 64-bit mode: XMM0-15 / YMM0-15.
pub const REGS: usize = 16;

/// `arg` = mode × [`MODE_UNIT`] + seed.
pub const MODE_UNIT: u64 = 1_000_000;

/// Checks between two `fpu: alive` lines: about two a second per guest in
/// Bochs with two guests sharing the CPU (measured: 2^14 gave 14 a second
/// beside a spinning guest).
pub const ALIVE_EVERY: u64 = 1 << 17;
/// Checks between two deliberate VM exits (a CPUID), so the hypervisor's
/// own code runs often between two checks, besides its 5 ms preemption.
pub const EXIT_EVERY: u64 = 1 << 6;
/// Checks between two re-fills with the next round's pattern, so that a
/// register stuck at an older value of this same guest is caught too.
pub const ROTATE_EVERY: u64 = 1 << 10;

/// Which registers the guest uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Mode 0: YMM0-15 if CPUID shows XSAVE and AVX (after enabling AVX
    /// state with XSETBV), else XMM0-15.
    Auto,
    /// Mode 1: XMM0-15 only, with the legacy SSE instructions; no XSETBV.
    SseOnly,
}

/// Splits `arg` into mode and seed; `None` for an unknown mode.
pub fn parse_arg(arg: u64) -> Option<(Mode, u64)> {
    let mode = match arg / MODE_UNIT {
        0 => Mode::Auto,
        1 => Mode::SseOnly,
        _ => return None,
    };
    Some((mode, arg % MODE_UNIT))
}

/// The 16 vector registers as they are stored to and loaded from memory:
/// register `r` at byte `32 × r`, lane `k` (bits 64k..64k+63) at `8 × k`
/// within it. In SSE mode only lanes 0 and 1 are used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C, align(32))]
pub struct VectorRegs(pub [[u64; LANES]; REGS]);

impl VectorRegs {
    /// All zero.
    pub const fn zero() -> VectorRegs {
        VectorRegs([[0; LANES]; REGS])
    }

    /// The pattern of `seed` in `round`, in every register and lane.
    pub fn pattern(seed: u64, round: u64) -> VectorRegs {
        let mut v = VectorRegs::zero();
        for (r, reg) in v.0.iter_mut().enumerate() {
            for (k, lane) in reg.iter_mut().enumerate() {
                *lane = value(seed, round, r, k);
            }
        }
        v
    }

    /// The first difference in lanes `0..lanes` of the registers:
    /// `(register, lane, expected, got)`.
    pub fn first_mismatch(
        &self,
        got: &VectorRegs,
        lanes: usize,
    ) -> Option<(usize, usize, u64, u64)> {
        (0..REGS)
            .flat_map(|r| (0..lanes).map(move |k| (r, k)))
            .find(|&(r, k)| self.0[r][k] != got.0[r][k])
            .map(|(r, k)| (r, k, self.0[r][k], got.0[r][k]))
    }
}

/// One lane's value: a SplitMix64 finaliser over seed, round, register and
/// lane, so that every lane of every register differs, from seed to seed
/// and from round to round, and none is zero (what a register the
/// hypervisor reset, or never restored, would hold).
pub fn value(seed: u64, round: u64, reg: usize, lane: usize) -> u64 {
    let mut z = seed
        .wrapping_mul(0x9e37_79b9_7f4a_7c15)
        .wrapping_add(round.wrapping_mul(0xbf58_476d_1ce4_e5b9))
        .wrapping_add(((reg * LANES + lane) as u64 + 1).wrapping_mul(0x94d0_49bb_1331_11eb));
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    if z == 0 { 1 } else { z }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arg_is_mode_and_seed() {
        assert_eq!(parse_arg(0), Some((Mode::Auto, 0)));
        assert_eq!(parse_arg(2), Some((Mode::Auto, 2)));
        assert_eq!(parse_arg(1_000_001), Some((Mode::SseOnly, 1)));
        assert_eq!(parse_arg(2_000_000), None);
    }

    #[test]
    fn every_lane_differs_across_registers_seeds_and_rounds() {
        let mut all = std::collections::HashSet::new();
        for seed in 0..4 {
            for round in 0..4 {
                for reg in 0..REGS {
                    for lane in 0..LANES {
                        let v = value(seed, round, reg, lane);
                        assert_ne!(v, 0);
                        assert!(all.insert(v), "{seed} {round} {reg} {lane}");
                    }
                }
            }
        }
    }

    #[test]
    fn finds_the_first_mismatch_in_the_lanes_it_is_asked_about() {
        let a = VectorRegs::pattern(1, 0);
        let mut b = a;
        assert_eq!(a.first_mismatch(&b, LANES), None);
        b.0[5][3] = 0;
        // Lane 3 is a YMM upper lane: not looked at in SSE mode.
        assert_eq!(a.first_mismatch(&b, 2), None);
        assert_eq!(a.first_mismatch(&b, LANES), Some((5, 3, a.0[5][3], 0)));
        b.0[2][1] = 7;
        assert_eq!(a.first_mismatch(&b, 2), Some((2, 1, a.0[2][1], 7)));
    }

    #[test]
    fn layout_is_32_bytes_a_register() {
        assert_eq!(core::mem::size_of::<VectorRegs>(), 512);
        assert_eq!(core::mem::align_of::<VectorRegs>(), 32);
    }
}
