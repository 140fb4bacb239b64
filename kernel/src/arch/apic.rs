//! The boot CPU's local APIC (xAPIC, memory-mapped) and its timer.
//!
//! The timer runs periodic at [`TIMER_HZ`] on [`crate::arch::cpu::TIMER_VECTOR`];
//! the shell idles with `sti; hlt` between ticks. Its rate is calibrated
//! together with the TSC against the PIT ([`crate::arch::time::calibrate`]).
//! Reference: SDM Vol. 3A, chapter 11 (APIC), 11.5.4 (APIC timer).

use core::sync::atomic::{AtomicU64, Ordering};

use crate::arch::rdmsr;

const IA32_APIC_BASE: u32 = 0x1b;
const REG_ID: u64 = 0x20;
const REG_EOI: u64 = 0xb0;
const REG_SVR: u64 = 0xf0;
const REG_LVT_TIMER: u64 = 0x320;
const REG_TIMER_INIT: u64 = 0x380;
const REG_TIMER_CUR: u64 = 0x390;
const REG_TIMER_DIV: u64 = 0x3e0;

/// Periodic timer rate.
pub const TIMER_HZ: u64 = 100;

/// Physical (= virtual, identity-mapped) base of the xAPIC registers; 0 until [`init`].
static BASE: AtomicU64 = AtomicU64::new(0);
/// APIC timer ticks (after the divider) per second, 0 if not calibrated.
static TIMER_RATE: AtomicU64 = AtomicU64::new(0);

fn read(reg: u64) -> u32 {
    let base = BASE.load(Ordering::Relaxed);
    // SAFETY: BASE is the identity-mapped xAPIC page set by init (non-zero
    // there), and reg is a register offset inside that 4 KiB page.
    unsafe { core::ptr::read_volatile((base + reg) as *const u32) }
}

fn write(reg: u64, v: u32) {
    let base = BASE.load(Ordering::Relaxed);
    // SAFETY: as read.
    unsafe { core::ptr::write_volatile((base + reg) as *mut u32, v) }
}

/// Physical address of the local APIC from IA32_APIC_BASE.
pub fn base_from_msr() -> u64 {
    // SAFETY: IA32_APIC_BASE exists on every CPU with an APIC, which
    // CPUID.1:EDX[9] reports; checked by the caller (kmain) first.
    unsafe { rdmsr(IA32_APIC_BASE) & 0x000f_ffff_ffff_f000 }
}

/// True if CPUID reports an on-chip APIC.
pub fn present() -> bool {
    crate::arch::cpuid(1, 0).3 & (1 << 9) != 0
}

/// Software-enables the local APIC at `base` with the spurious vector.
pub fn init(base: u64) {
    BASE.store(base, Ordering::Relaxed);
    write(
        REG_SVR,
        0x100 | u32::from(crate::arch::cpu::SPURIOUS_VECTOR),
    );
}

/// This CPU's APIC ID.
pub fn id() -> u32 {
    if BASE.load(Ordering::Relaxed) == 0 {
        return crate::arch::cpuid(1, 0).1 >> 24;
    }
    read(REG_ID) >> 24
}

/// Signals end of interrupt.
pub fn eoi() {
    if BASE.load(Ordering::Relaxed) != 0 {
        write(REG_EOI, 0);
    }
}

/// Calibrates the TSC and the APIC timer against the PIT. Returns the TSC
/// frequency, or `None` if the PIT did not fire.
pub fn calibrate() -> Option<u64> {
    let have_apic = BASE.load(Ordering::Relaxed) != 0;
    let mut start = || {
        if have_apic {
            write(REG_TIMER_DIV, 0b1011); // divide by 1
            write(REG_LVT_TIMER, 1 << 16); // masked, one-shot
            write(REG_TIMER_INIT, u32::MAX);
        }
    };
    let mut sample = || {
        if have_apic {
            read(REG_TIMER_CUR)
        } else {
            u32::MAX
        }
    };
    let c = crate::arch::time::calibrate(&mut start, &mut sample)?;
    if have_apic {
        let elapsed = u64::from(u32::MAX - c.sample_end);
        TIMER_RATE.store(
            elapsed * 1000 / crate::arch::time::CALIBRATION_MS,
            Ordering::Relaxed,
        );
        write(REG_TIMER_INIT, 0);
    }
    Some(c.tsc_hz)
}

/// APIC timer input frequency measured by [`calibrate`] (0 if unknown).
pub fn timer_hz() -> u64 {
    TIMER_RATE.load(Ordering::Relaxed)
}

/// Starts the periodic timer at [`TIMER_HZ`]. Returns false when the timer
/// could not be calibrated (the caller then polls instead of halting).
pub fn start_periodic() -> bool {
    let rate = timer_hz();
    if BASE.load(Ordering::Relaxed) == 0 || rate < TIMER_HZ {
        return false;
    }
    let count = (rate / TIMER_HZ).min(u64::from(u32::MAX)) as u32;
    write(REG_TIMER_DIV, 0b1011);
    write(
        REG_LVT_TIMER,
        (1 << 17) | u32::from(crate::arch::cpu::TIMER_VECTOR),
    ); // periodic
    write(REG_TIMER_INIT, count);
    true
}
