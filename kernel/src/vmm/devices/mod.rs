//! Guest device models: what a guest sees behind port I/O.
//!
//! Pure state machines, driven by the VM exit handler and unit-tested on the
//! host. Each answers reads and takes writes for its ports; none of them
//! touches hardware.
//!
//! - [`Uart`]: the transmit side of a 16550 at 0x3F8 (guest console output,
//!   collected into lines for the host console) with a line-status register
//!   that always reports "transmitter empty".
//! - [`Pic`]: the master 8259A at 0x20/0x21, enough for a guest to program
//!   its vector base, mask IRQ0 and acknowledge with a non-specific EOI.
//! - [`Pit`]: channel 0 of the 8254 at 0x40/0x43 in rate-generator/square
//!   wave modes: the guest's periodic timer.
//!
//! References: PC16550D datasheet; Intel 8259A datasheet (ICW1-4, OCW1-3);
//! Intel 8254 datasheet.

use alloc::string::String;
use alloc::vec::Vec;

/// Longest guest console line kept before it is flushed anyway.
pub const MAX_LINE: usize = 200;

/// The transmit half of a 16550 UART.
#[derive(Debug, Default)]
pub struct Uart {
    line: Vec<u8>,
    /// Bytes written by the guest since creation.
    pub bytes: u64,
}

impl Uart {
    /// Port offsets relative to 0x3F8.
    pub const BASE: u16 = 0x3f8;

    /// A guest read of `BASE + offset`.
    pub fn read(&self, offset: u16) -> u8 {
        match offset {
            // LSR: THR empty (bit 5) and transmitter empty (bit 6), no data ready.
            5 => 0x60,
            // MSR: CTS, DSR, DCD asserted, so guests that wait for a modem see one.
            6 => 0xb0,
            _ => 0,
        }
    }

    /// A guest write to `BASE + offset`; returns a completed line, if any.
    pub fn write(&mut self, offset: u16, value: u8) -> Option<String> {
        if offset != 0 {
            // Divisor, line control, FIFO control...: accepted and ignored.
            return None;
        }
        self.bytes += 1;
        match value {
            b'\n' => Some(self.take_line()),
            b'\r' => None,
            // Keep printable ASCII and tabs; anything else would let a guest
            // drive the operator's terminal.
            0x20..=0x7e | b'\t' => {
                self.line.push(value);
                (self.line.len() >= MAX_LINE).then(|| self.take_line())
            }
            _ => {
                self.line
                    .extend_from_slice(alloc::format!("\\x{value:02x}").as_bytes());
                (self.line.len() >= MAX_LINE).then(|| self.take_line())
            }
        }
    }

    /// Whatever is buffered without a newline (for when the VM stops).
    pub fn flush(&mut self) -> Option<String> {
        (!self.line.is_empty()).then(|| self.take_line())
    }

    fn take_line(&mut self) -> String {
        let s = String::from_utf8_lossy(&self.line).into_owned();
        self.line.clear();
        s
    }
}

/// Initialisation state of the 8259A.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum PicInit {
    /// Not initialised, or fully initialised.
    #[default]
    Ready,
    /// ICW1 seen, waiting for ICW2 (vector base).
    Icw2 { icw4: bool, single: bool },
    /// Waiting for ICW3 (cascade).
    Icw3 { icw4: bool },
    /// Waiting for ICW4.
    Icw4,
}

/// The master 8259A PIC (IRQ0-7).
#[derive(Debug, Clone)]
pub struct Pic {
    init: PicInit,
    initialised: bool,
    /// Vector of IRQ0 (ICW2, low 3 bits cleared).
    pub vector_base: u8,
    /// Interrupt mask register (OCW1): a set bit masks that IRQ.
    pub imr: u8,
    /// In-service register.
    pub isr: u8,
    /// Interrupt request register.
    pub irr: u8,
    read_isr: bool,
}

impl Default for Pic {
    fn default() -> Self {
        Pic {
            init: PicInit::Ready,
            initialised: false,
            vector_base: 0x08,
            imr: 0xff,
            isr: 0,
            irr: 0,
            read_isr: false,
        }
    }
}

impl Pic {
    /// A guest read of port 0x20 (`offset` 0) or 0x21 (`offset` 1).
    pub fn read(&self, offset: u16) -> u8 {
        match offset {
            0 if self.read_isr => self.isr,
            0 => self.irr,
            _ => self.imr,
        }
    }

    /// A guest write of port 0x20 (`offset` 0) or 0x21 (`offset` 1).
    pub fn write(&mut self, offset: u16, value: u8) {
        match (offset, self.init) {
            (0, _) if value & 0x10 != 0 => {
                // ICW1: restart initialisation.
                self.init = PicInit::Icw2 {
                    icw4: value & 1 != 0,
                    single: value & 2 != 0,
                };
                self.imr = 0;
                self.isr = 0;
                self.irr = 0;
                self.read_isr = false;
            }
            (0, _) if value & 0x18 == 0x08 => {
                // OCW3: select IRR or ISR for reads.
                if value & 0x02 != 0 {
                    self.read_isr = value & 0x01 != 0;
                }
            }
            (0, _) => {
                // OCW2: EOI (non-specific 0x20, specific 0x60 | level).
                match value & 0xe0 {
                    0x20 => self.eoi_highest(),
                    0x60 => self.isr &= !(1 << (value & 7)),
                    _ => {}
                }
            }
            (_, PicInit::Icw2 { icw4, single }) => {
                self.vector_base = value & 0xf8;
                self.init = match (single, icw4) {
                    (false, icw4) => PicInit::Icw3 { icw4 },
                    (true, true) => PicInit::Icw4,
                    (true, false) => self.finish_init(),
                };
            }
            (_, PicInit::Icw3 { icw4 }) => {
                self.init = if icw4 {
                    PicInit::Icw4
                } else {
                    self.finish_init()
                };
            }
            (_, PicInit::Icw4) => self.init = self.finish_init(),
            (_, PicInit::Ready) => self.imr = value,
        }
    }

    fn finish_init(&mut self) -> PicInit {
        self.initialised = true;
        PicInit::Ready
    }

    fn eoi_highest(&mut self) {
        if self.isr != 0 {
            self.isr &= self.isr - 1; // clears the lowest set bit = highest priority
        }
    }

    /// Raises IRQ `irq` (edge).
    pub fn raise(&mut self, irq: u8) {
        self.irr |= 1 << (irq & 7);
    }

    /// The vector to deliver now, if any: highest-priority requested,
    /// unmasked IRQ that no equal-or-higher-priority IRQ in service blocks.
    pub fn pending(&self) -> Option<u8> {
        if !self.initialised {
            return None;
        }
        let ready = self.irr & !self.imr;
        if ready == 0 {
            return None;
        }
        let irq = ready.trailing_zeros() as u8;
        let blocking = if self.isr == 0 {
            8
        } else {
            self.isr.trailing_zeros() as u8
        };
        (irq < blocking).then_some(self.vector_base + irq)
    }

    /// The guest took the interrupt for `vector`: move it to in-service.
    pub fn acknowledge(&mut self, vector: u8) {
        let irq = vector.wrapping_sub(self.vector_base) & 7;
        self.irr &= !(1 << irq);
        self.isr |= 1 << irq;
    }
}

/// PIT input clock.
pub const PIT_HZ: u64 = 1_193_182;

/// Channel 0 of the 8254.
#[derive(Debug, Clone, Default)]
pub struct Pit {
    /// Reload value; 0 means not programmed.
    reload: u32,
    mode: u8,
    /// Next byte written to port 0x40 is the high byte.
    high_next: bool,
    low: u8,
    /// Period changed since the last [`Pit::take_changed`].
    changed: bool,
}

impl Pit {
    /// A guest write of port 0x40 + `offset` (0 = channel 0 data, 3 = mode).
    pub fn write(&mut self, offset: u16, value: u8) {
        match offset {
            3 => {
                let channel = value >> 6;
                let access = (value >> 4) & 3;
                if channel == 0 && access != 0 {
                    self.mode = (value >> 1) & 7;
                    self.high_next = false;
                }
            }
            0 => {
                if self.high_next {
                    let r = u32::from(value) << 8 | u32::from(self.low);
                    self.reload = if r == 0 { 0x10000 } else { r };
                    self.high_next = false;
                    self.changed = true;
                } else {
                    self.low = value;
                    self.high_next = true;
                }
            }
            _ => {}
        }
    }

    /// A guest read of port 0x40 + `offset`. The counter itself is not
    /// modelled (guests here time with the TSC).
    pub fn read(&self, _offset: u16) -> u8 {
        0
    }

    /// Period in PIT ticks for a periodic mode (2 or 3), or None.
    pub fn period_ticks(&self) -> Option<u32> {
        (self.reload != 0 && matches!(self.mode, 2 | 3 | 6 | 7)).then_some(self.reload)
    }

    /// Converts the period to TSC ticks for a TSC of `tsc_hz`.
    pub fn period_tsc(&self, tsc_hz: u64) -> Option<u64> {
        self.period_ticks()
            .map(|t| (u128::from(t) * u128::from(tsc_hz) / u128::from(PIT_HZ)) as u64)
            .filter(|&p| p > 0)
    }

    /// True once after each reprogramming.
    pub fn take_changed(&mut self) -> bool {
        core::mem::take(&mut self.changed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uart_collects_lines_and_escapes_control_bytes() {
        let mut u = Uart::default();
        assert_eq!(u.read(5), 0x60);
        for b in b"hi\r" {
            assert_eq!(u.write(0, *b), None);
        }
        assert_eq!(u.write(0, b'\n').as_deref(), Some("hi"));
        assert_eq!(u.write(0, 0x1b), None);
        assert_eq!(u.flush().as_deref(), Some("\\x1b"));
        assert_eq!(u.flush(), None);
        assert_eq!(u.write(3, 0x80), None, "LCR writes are ignored");
        let mut last = None;
        for _ in 0..MAX_LINE {
            last = u.write(0, b'x');
        }
        assert_eq!(last.map(|l| l.len()), Some(MAX_LINE));
    }

    fn init_pic(p: &mut Pic, base: u8) {
        p.write(0, 0x11);
        p.write(1, base);
        p.write(1, 0x04);
        p.write(1, 0x01);
    }

    #[test]
    fn pic_delivers_unmasked_irq0_once_until_eoi() {
        let mut p = Pic::default();
        p.raise(0);
        assert_eq!(p.pending(), None, "not initialised");
        init_pic(&mut p, 0x20);
        p.write(1, 0xff);
        p.raise(0);
        assert_eq!(p.pending(), None, "masked");
        p.write(1, 0xfe);
        assert_eq!(p.pending(), Some(0x20));
        p.acknowledge(0x20);
        assert_eq!(p.pending(), None);
        p.raise(0);
        assert_eq!(p.pending(), None, "in service until EOI");
        p.write(0, 0x20);
        assert_eq!(p.pending(), Some(0x20));
        assert_eq!(p.read(1), 0xfe);
    }

    #[test]
    fn pit_period_from_divisor() {
        let mut t = Pit::default();
        assert_eq!(t.period_ticks(), None);
        t.write(3, 0x34);
        t.write(0, (11932 & 0xff) as u8);
        assert_eq!(t.period_ticks(), None, "half-written reload");
        t.write(0, (11932 >> 8) as u8);
        assert_eq!(t.period_ticks(), Some(11932));
        assert!(t.take_changed());
        assert!(!t.take_changed());
        // 11932 / 1193182 s on a 100 MHz TSC: 1,000,015 ticks (~100 Hz).
        assert_eq!(t.period_tsc(100_000_000), Some(1_000_015));
    }
}

// ---------------------------------------------------------------------------
// Saved state (live migration). Each format starts with a version byte;
// restore refuses anything it does not fully understand.

/// Why a saved device state was refused.
fn bad_state(device: &str, why: &str) -> String {
    alloc::format!("{device} state: {why}")
}

impl Uart {
    /// The half-received output line and the byte counter.
    pub fn save(&self) -> Vec<u8> {
        let mut v = alloc::vec![1u8];
        v.extend_from_slice(&self.bytes.to_le_bytes());
        v.extend_from_slice(&(self.line.len() as u32).to_le_bytes());
        v.extend_from_slice(&self.line);
        v
    }

    /// Restores what [`Uart::save`] produced.
    pub fn restore(&mut self, data: &[u8]) -> Result<(), String> {
        let (&[1], rest) = data
            .split_at_checked(1)
            .ok_or_else(|| bad_state("uart", "empty"))?
        else {
            return Err(bad_state("uart", "unknown version"));
        };
        let bytes = rest
            .get(..8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
            .ok_or_else(|| bad_state("uart", "truncated"))?;
        let len = rest
            .get(8..12)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_le_bytes)
            .ok_or_else(|| bad_state("uart", "truncated"))? as usize;
        let line = rest
            .get(12..)
            .filter(|l| l.len() == len)
            .ok_or_else(|| bad_state("uart", "bad line length"))?;
        // What `write` keeps: under MAX_LINE bytes of printable ASCII and
        // tabs. Anything else came from a peer that lies, and would reach
        // the operator's terminal raw.
        if line.len() >= MAX_LINE {
            return Err(bad_state("uart", "line longer than a guest line can be"));
        }
        if !line.iter().all(|&b| matches!(b, 0x20..=0x7e | b'\t')) {
            return Err(bad_state("uart", "line with control or non-ASCII bytes"));
        }
        self.bytes = bytes;
        self.line = line.to_vec();
        Ok(())
    }
}

impl Pic {
    /// Every register and the initialisation sequence's position.
    pub fn save(&self) -> Vec<u8> {
        let (init, flags) = match self.init {
            PicInit::Ready => (0u8, 0u8),
            PicInit::Icw2 { icw4, single } => (1, u8::from(icw4) | u8::from(single) << 1),
            PicInit::Icw3 { icw4 } => (2, u8::from(icw4)),
            PicInit::Icw4 => (3, 0),
        };
        alloc::vec![
            1,
            init,
            flags,
            u8::from(self.initialised),
            self.vector_base,
            self.imr,
            self.isr,
            self.irr,
            u8::from(self.read_isr)
        ]
    }

    /// Restores what [`Pic::save`] produced.
    pub fn restore(&mut self, data: &[u8]) -> Result<(), String> {
        let &[
            1,
            init,
            flags,
            initialised,
            vector_base,
            imr,
            isr,
            irr,
            read_isr,
        ] = data
        else {
            return Err(bad_state("pic", "wrong length or version"));
        };
        let (icw4, single) = (flags & 1 != 0, flags & 2 != 0);
        self.init = match init {
            0 => PicInit::Ready,
            1 => PicInit::Icw2 { icw4, single },
            2 => PicInit::Icw3 { icw4 },
            3 => PicInit::Icw4,
            _ => return Err(bad_state("pic", "bad init state")),
        };
        if initialised > 1 || read_isr > 1 {
            return Err(bad_state("pic", "bad flag"));
        }
        self.initialised = initialised == 1;
        self.vector_base = vector_base;
        self.imr = imr;
        self.isr = isr;
        self.irr = irr;
        self.read_isr = read_isr == 1;
        Ok(())
    }
}

impl Pit {
    /// Channel 0's programming.
    pub fn save(&self) -> Vec<u8> {
        let mut v = alloc::vec![1u8];
        v.extend_from_slice(&self.reload.to_le_bytes());
        v.extend_from_slice(&[
            self.mode,
            u8::from(self.high_next),
            self.low,
            u8::from(self.changed),
        ]);
        v
    }

    /// Restores what [`Pit::save`] produced.
    pub fn restore(&mut self, data: &[u8]) -> Result<(), String> {
        let &[1, r0, r1, r2, r3, mode, high_next, low, changed] = data else {
            return Err(bad_state("pit", "wrong length or version"));
        };
        let reload = u32::from_le_bytes([r0, r1, r2, r3]);
        if reload > 0x10000 || mode > 7 || high_next > 1 || changed > 1 {
            return Err(bad_state("pit", "value out of range"));
        }
        self.reload = reload;
        self.mode = mode;
        self.high_next = high_next == 1;
        self.low = low;
        self.changed = changed == 1;
        Ok(())
    }
}

#[cfg(test)]
mod saved_state_tests {
    use super::*;

    #[test]
    fn devices_round_trip_and_refuse_garbage() {
        let mut u = Uart::default();
        for b in b"half a li" {
            u.write(0, *b);
        }
        let mut u2 = Uart::default();
        u2.restore(&u.save()).unwrap();
        assert_eq!(u2.save(), u.save());
        assert!(u2.restore(&[2]).is_err());
        assert!(u2.restore(&u.save()[..5]).is_err());
        // A peer's state whose pending line holds what a guest write can
        // never leave there (ESC, an over-long line) is refused, not
        // printed later on the operator's terminal.
        let forged = |line: &[u8]| {
            let mut v = alloc::vec![1u8];
            v.extend_from_slice(&0u64.to_le_bytes());
            v.extend_from_slice(&(line.len() as u32).to_le_bytes());
            v.extend_from_slice(line);
            v
        };
        assert!(u2.restore(&forged(b"ok\tline")).is_ok());
        let e = u2.restore(&forged(b"\x1b[2Jgone")).unwrap_err();
        assert!(e.contains("control"), "{e}");
        assert!(u2.restore(&forged(&[b'a'; MAX_LINE])).is_err());
        assert!(u2.restore(&forged("caf\u{e9}".as_bytes())).is_err());

        let mut p = Pic::default();
        for (port, v) in [(0, 0x11), (1, 0x20), (1, 0x04), (1, 0x01), (1, 0xfe)] {
            p.write(port, v);
        }
        let mut p2 = Pic::default();
        p2.restore(&p.save()).unwrap();
        assert_eq!((p2.vector_base, p2.imr), (0x20, 0xfe));
        assert_eq!(p2.save(), p.save());
        assert!(p2.restore(&[1, 9, 0, 0, 0, 0, 0, 0, 0]).is_err());

        let mut t = Pit::default();
        for (port, v) in [(3, 0x34), (0, 0x9b), (0, 0x2e)] {
            t.write(port, v);
        }
        let mut t2 = Pit::default();
        t2.restore(&t.save()).unwrap();
        assert_eq!(t2.save(), t.save());
        assert!(t2.restore(&[]).is_err());
    }
}
