//! Timer arithmetic for the `ticks` guest: PIT divisors, TSC to
//! milliseconds, and the verdict.

/// The 8254 PIT's input clock in Hz.
pub const PIT_HZ: u32 = 1_193_182;
/// The rate `ticks` programs.
pub const TICKS_HZ: u32 = 100;
/// How long `ticks` counts, in milliseconds of TSC time.
pub const TICKS_WINDOW_MS: u64 = 1000;
/// Interrupts in [`TICKS_WINDOW_MS`] that `ticks` accepts (100 ± 20 %).
pub const TICKS_ACCEPTED: core::ops::RangeInclusive<u64> = 80..=120;

/// The PIT divisor closest to `hz` (1193182 / divisor Hz), clamped to the
/// 16-bit counter (a divisor of 0 means 65536 to the PIT; never produced).
pub const fn pit_divisor(hz: u32) -> u16 {
    if hz == 0 {
        return u16::MAX;
    }
    let d = (PIT_HZ + hz / 2) / hz;
    if d > u16::MAX as u32 {
        u16::MAX
    } else if d == 0 {
        1
    } else {
        d as u16
    }
}

/// Milliseconds in `tsc_ticks` at `tsc_khz` (0 if the frequency is 0).
pub const fn tsc_to_ms(tsc_ticks: u64, tsc_khz: u64) -> u64 {
    match tsc_ticks.checked_div(tsc_khz) {
        Some(ms) => ms,
        None => 0,
    }
}

/// Interrupts per second, rounded: `n` interrupts in `ms` milliseconds.
pub const fn rate_hz(n: u64, ms: u64) -> u64 {
    match (n * 1000 + ms / 2).checked_div(ms) {
        Some(r) => r,
        None => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn divisor_for_100_hz_is_11932() {
        assert_eq!(pit_divisor(100), 11932);
        assert_eq!(PIT_HZ / u32::from(pit_divisor(100)), 99); // 99.998 Hz
        assert_eq!(pit_divisor(1000), 1193);
        assert_eq!(pit_divisor(1), u16::MAX);
        assert_eq!(pit_divisor(0), u16::MAX);
        assert_eq!(pit_divisor(u32::MAX), 1);
    }

    #[test]
    fn tsc_and_rate() {
        // 2 GHz = 2_000_000 kHz: 2e9 ticks are 1000 ms.
        assert_eq!(tsc_to_ms(2_000_000_000, 2_000_000), 1000);
        assert_eq!(tsc_to_ms(5, 0), 0);
        assert_eq!(rate_hz(100, 1000), 100);
        assert_eq!(rate_hz(101, 1010), 100);
        assert_eq!(rate_hz(1, 0), 0);
        assert!(TICKS_ACCEPTED.contains(&80) && TICKS_ACCEPTED.contains(&120));
        assert!(!TICKS_ACCEPTED.contains(&79) && !TICKS_ACCEPTED.contains(&121));
    }
}
