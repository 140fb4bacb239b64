//! The master 8259A PIC and channel 0 of the 8254 PIT: the guest's periodic
//! timer, and the count of its interrupts.
//!
//! Only the master PIC is programmed: its mask (OCW1) also masks IRQ2, the
//! cascade, so nothing from the slave can arrive. References: Intel 8259A
//! datasheet (ICW1-4, OCW1-2), Intel 8254 datasheet (control word, mode 2).

use core::sync::atomic::{AtomicU64, Ordering};

use crate::arch;
use crate::timing::pit_divisor;

/// Vector of IRQ0 (ICW2); IRQ n arrives at `VECTOR_BASE + n`. The IDT has
/// gates for all 16 of them.
pub const VECTOR_BASE: u8 = 0x20;
/// The PIT's interrupt: IRQ0.
pub const TIMER_VECTOR: u8 = VECTOR_BASE;

const PIC_COMMAND: u16 = 0x20;
const PIC_DATA: u16 = 0x21;
const PIT_CHANNEL0: u16 = 0x40;
const PIT_CONTROL: u16 = 0x43;
/// ICW1: edge triggered, cascade, ICW4 follows.
const ICW1_INIT_WITH_ICW4: u8 = 0x11;
/// ICW3 (master): the slave is on IRQ2.
const ICW3_SLAVE_ON_IRQ2: u8 = 0x04;
/// ICW4: 8086 mode, normal EOI.
const ICW4_8086: u8 = 0x01;
/// OCW1: everything masked but IRQ0.
const MASK_ALL_BUT_IRQ0: u8 = 0xfe;
/// OCW2: non-specific end of interrupt.
const EOI: u8 = 0x20;
/// Channel 0, low then high byte, mode 2 (rate generator), binary.
const PIT_CHANNEL0_RATE: u8 = 0x34;

/// Timer interrupts taken since the guest started.
static TICKS: AtomicU64 = AtomicU64::new(0);

/// Programs the PIC (IRQ0 at [`TIMER_VECTOR`], everything else masked) and
/// the PIT for `hz` interrupts a second. Interrupts stay off: the caller
/// enables them with [`arch::sti`] once it is ready to count.
pub fn start_timer(hz: u32) {
    let divisor = pit_divisor(hz).to_le_bytes();
    // SAFETY: the PIC and the PIT belong to this guest; this is their
    // documented initialisation sequence, written in order, with interrupts
    // off (they are until the caller's STI).
    unsafe {
        arch::outb(PIC_COMMAND, ICW1_INIT_WITH_ICW4);
        arch::outb(PIC_DATA, VECTOR_BASE);
        arch::outb(PIC_DATA, ICW3_SLAVE_ON_IRQ2);
        arch::outb(PIC_DATA, ICW4_8086);
        arch::outb(PIC_DATA, MASK_ALL_BUT_IRQ0);
        arch::outb(PIT_CONTROL, PIT_CHANNEL0_RATE);
        arch::outb(PIT_CHANNEL0, divisor[0]);
        arch::outb(PIT_CHANNEL0, divisor[1]);
    }
}

/// Acknowledges the interrupt in service at the PIC. Every handler of a PIC
/// vector must call it, or no further interrupt of equal or lower priority
/// arrives.
pub fn eoi() {
    // SAFETY: a non-specific EOI to the master PIC this guest programmed.
    unsafe { arch::outb(PIC_COMMAND, EOI) };
}

/// The default handler of [`TIMER_VECTOR`]: counts the tick, then EOI.
pub(crate) fn on_timer() {
    TICKS.fetch_add(1, Ordering::Relaxed);
    eoi();
}

/// Timer interrupts taken so far.
pub fn ticks() -> u64 {
    TICKS.load(Ordering::Relaxed)
}
