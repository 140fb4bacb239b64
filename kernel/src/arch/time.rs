//! The monotonic clock: the TSC, calibrated against the legacy PIT.
//!
//! The PIT's channel 2 is gated through port 0x61, counts at a fixed
//! 1.193182 MHz and can be polled without interrupts, which makes it the one
//! reference every PC (and both emulators) has. One 20 ms one-shot measures
//! the TSC and the local APIC timer together (see [`crate::apic`]).
//! Reference: Intel 8254 datasheet (mode 0), SDM Vol. 3B 18.17 (TSC).

use core::sync::atomic::{AtomicU64, Ordering};

use crate::arch::{inb, outb, rdtsc};

/// PIT input clock in Hz.
const PIT_HZ: u64 = 1_193_182;
/// Calibration window.
pub const CALIBRATION_MS: u64 = 20;

static TSC_HZ: AtomicU64 = AtomicU64::new(0);
static KERNEL_START_TSC: AtomicU64 = AtomicU64::new(0);

/// Records the TSC at kernel entry (uptime is measured from here).
pub fn mark_kernel_start() {
    KERNEL_START_TSC.store(rdtsc(), Ordering::Relaxed);
}

/// TSC frequency in Hz, 0 before calibration.
pub fn tsc_hz() -> u64 {
    TSC_HZ.load(Ordering::Relaxed)
}

/// Converts a TSC delta to milliseconds (0 before calibration).
pub fn tsc_to_ms(delta: u64) -> u64 {
    let hz = tsc_hz();
    if hz == 0 {
        return 0;
    }
    (u128::from(delta) * 1000 / u128::from(hz)) as u64
}

/// Converts a TSC delta to microseconds (0 before calibration).
pub fn tsc_to_us(delta: u64) -> u64 {
    let hz = tsc_hz();
    if hz == 0 {
        return 0;
    }
    (u128::from(delta) * 1_000_000 / u128::from(hz)) as u64
}

/// Milliseconds since kernel entry.
pub fn uptime_ms() -> u64 {
    tsc_to_ms(rdtsc().saturating_sub(KERNEL_START_TSC.load(Ordering::Relaxed)))
}

/// Milliseconds since the CPU's reset (the TSC starts at 0 at reset).
pub fn since_reset_ms() -> u64 {
    tsc_to_ms(rdtsc())
}

/// Result of one calibration window.
pub struct Calibration {
    /// TSC ticks per second.
    pub tsc_hz: u64,
    /// Value `sample` returned at the end of the window.
    pub sample_end: u32,
}

/// Runs a [`CALIBRATION_MS`] one-shot on PIT channel 2 and measures the TSC
/// across it; `start` is called right when the window opens and `sample`
/// right when it closes (the APIC timer is read through these). Returns
/// `None` if the PIT never fires (no PIT, or a broken emulation).
pub fn calibrate(start: &mut dyn FnMut(), sample: &mut dyn FnMut() -> u32) -> Option<Calibration> {
    let count = PIT_HZ * CALIBRATION_MS / 1000;
    // SAFETY: ports 0x61 (system control port B) and 0x42/0x43 (PIT) belong
    // to the kernel; channel 2 only drives the PC speaker, which stays off
    // (bit 1 of port 0x61 clear).
    let (t0, t1, end) = unsafe {
        let ctl = inb(0x61);
        outb(0x61, ctl & !0x03); // gate low, speaker off
        outb(0x43, 0b1011_0000); // channel 2, lobyte/hibyte, mode 0, binary
        outb(0x42, (count & 0xff) as u8);
        outb(0x42, (count >> 8) as u8);
        let ctl = inb(0x61);
        outb(0x61, (ctl & !0x02) | 0x01); // gate high: counting starts
        start();
        let t0 = rdtsc();
        // Bound the wait by TSC cycles: 2^34 is several seconds on any CPU.
        let mut fired = false;
        while rdtsc().wrapping_sub(t0) < (1 << 34) {
            if inb(0x61) & 0x20 != 0 {
                fired = true;
                break;
            }
        }
        let t1 = rdtsc();
        let end = sample();
        outb(0x61, inb(0x61) & !0x01);
        if !fired {
            return None;
        }
        (t0, t1, end)
    };
    let hz = (t1 - t0) * 1000 / CALIBRATION_MS;
    TSC_HZ.store(hz, Ordering::Relaxed);
    Some(Calibration {
        tsc_hz: hz,
        sample_end: end,
    })
}

/// TSC cycles between consecutive edges of PIT channel 2's output, run as
/// a square wave: the two clocks come from different crystals, so the low
/// bits of these deltas wander (entropy; see [`crate::entropy`]). Fills as
/// much of `out` as it can within 50 ms (256 edges take ~7 ms; a machine
/// without a legacy PIT gives up after that); returns the count (0
/// without a working PIT).
pub fn pit_tick_deltas(out: &mut [u64]) -> usize {
    // 64 PIT clocks a period: an edge every ~27 µs.
    const COUNT: u16 = 64;
    // 50 ms of TSC once calibrated; 2^26 cycles (50 ms at 1.3 GHz) before.
    let budget = match tsc_hz() {
        0 => 1 << 26,
        hz => hz / 20,
    };
    let mut n = 0;
    // SAFETY: ports 0x61 (system control port B) and 0x42/0x43 (PIT)
    // belong to the kernel; channel 2 only drives the PC speaker, which
    // stays off (bit 1 of port 0x61 clear), and is gated off again after.
    unsafe {
        let ctl = inb(0x61);
        outb(0x61, ctl & !0x03);
        outb(0x43, 0b1011_0110); // channel 2, lobyte/hibyte, mode 3, binary
        outb(0x42, (COUNT & 0xff) as u8);
        outb(0x42, (COUNT >> 8) as u8);
        outb(0x61, (inb(0x61) & !0x02) | 0x01);
        let t0 = rdtsc();
        let mut last_level = inb(0x61) & 0x20;
        let mut last_edge = None;
        while n < out.len() && rdtsc().wrapping_sub(t0) < budget {
            let level = inb(0x61) & 0x20;
            if level == last_level {
                continue;
            }
            last_level = level;
            let now = rdtsc();
            if let Some(prev) = last_edge {
                out[n] = now.wrapping_sub(prev);
                n += 1;
            }
            last_edge = Some(now);
        }
        outb(0x61, inb(0x61) & !0x01);
    }
    n
}

/// Sets the TSC frequency when the PIT is unusable (from CPUID leaf 0x15/0x16).
pub fn set_tsc_hz(hz: u64) {
    TSC_HZ.store(hz, Ordering::Relaxed);
}

/// Busy-waits for `ms` milliseconds (needs a calibrated TSC).
pub fn delay_ms(ms: u64) {
    let hz = tsc_hz().max(1_000_000);
    let t0 = rdtsc();
    while rdtsc().wrapping_sub(t0) < ms * hz / 1000 {
        crate::arch::pause();
    }
}

/// Microseconds since kernel entry (the network stack's clock).
pub fn now_us() -> u64 {
    let hz = tsc_hz();
    if hz == 0 {
        return 0;
    }
    let delta = rdtsc().saturating_sub(KERNEL_START_TSC.load(Ordering::Relaxed));
    (u128::from(delta) * 1_000_000 / u128::from(hz)) as u64
}
