//! Guest device models: what a guest sees behind port I/O and MMIO.
//!
//! Pure state machines behind [`crate::vmm::bus::Device`], mapped by
//! [`platform`] (one line per device) and unit-tested on the host. Each
//! answers reads and takes writes for its ranges; none of them touches
//! hardware. The exit and request ports are in `ports.rs`.
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

use alloc::boxed::Box;
use alloc::string::String;
use alloc::vec::Vec;

use super::bus::{Bus, BusError, Device, DeviceError, Effects, IrqChip, Timer};

mod ports;
pub use ports::{ExitPort, RequestPort};

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
fn bad_state(device: &'static str, why: &'static str) -> DeviceError {
    DeviceError { device, why }
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
    pub fn restore(&mut self, data: &[u8]) -> Result<(), DeviceError> {
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
    pub fn restore(&mut self, data: &[u8]) -> Result<(), DeviceError> {
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
    pub fn restore(&mut self, data: &[u8]) -> Result<(), DeviceError> {
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
        assert!(e.to_string().contains("control"), "{e}");
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

// ---------------------------------------------------------------------------
// The models on the bus.

/// The guest's 16550 is also memory-mapped here, registers one byte apart
/// (offsets past the eighth register read 0 and ignore writes).
pub const MMIO_UART_BASE: u64 = 0xfe00_0000;
/// Size of the MMIO 16550's window.
pub const MMIO_UART_LEN: u64 = 0x1000;

/// The devices every guest has, as the migration protocol names them, in
/// the order [`platform`] registers them (a unit test keeps both in step).
pub const DEVICES: &[&str] = &[
    "uart16550",
    "pic8259",
    "pit8254",
    "exit-port",
    "request-port",
];

/// Every guest's devices, one line each. The 16550 is one device mapped
/// twice (ports and MMIO): both paths write one console line buffer and
/// one byte counter, and migrate as one state, as before the bus.
pub fn platform() -> Result<Bus, BusError> {
    let mut bus = Bus::new();
    let uart = bus.add_pio(0x3f8..0x400, Box::new(Uart::default()))?;
    bus.register_mmio(MMIO_UART_BASE..MMIO_UART_BASE + MMIO_UART_LEN, uart)?;
    bus.add_pio(0x20..0x22, Box::new(Pic::default()))?;
    bus.add_pio(0x40..0x44, Box::new(Pit::default()))?;
    bus.add_pio(0xf4..0xf5, Box::new(ExitPort))?;
    bus.add_pio(0xf5..0xf6, Box::new(RequestPort::default()))?;
    Ok(bus)
}

/// A register offset within a device's range; the models' ranges are all
/// under 64 KiB, anything past that is no register of theirs.
fn reg(offset: u64) -> u16 {
    u16::try_from(offset).unwrap_or(u16::MAX)
}

impl Device for Uart {
    fn name(&self) -> &'static str {
        "uart16550"
    }
    fn read(&mut self, offset: u64, _size: u8) -> u64 {
        u64::from(Uart::read(self, reg(offset)))
    }
    fn write(&mut self, offset: u64, _size: u8, value: u64, fx: &mut Effects) {
        // An 8-bit device: the low byte of a wider write.
        fx.line = Uart::write(self, reg(offset), value as u8);
    }
    fn save(&self) -> Vec<u8> {
        Uart::save(self)
    }
    fn restore(&mut self, data: &[u8]) -> Result<(), DeviceError> {
        Uart::restore(self, data)
    }
}

impl Device for Pic {
    fn name(&self) -> &'static str {
        "pic8259"
    }
    fn read(&mut self, offset: u64, _size: u8) -> u64 {
        u64::from(Pic::read(self, reg(offset)))
    }
    fn write(&mut self, offset: u64, _size: u8, value: u64, _fx: &mut Effects) {
        Pic::write(self, reg(offset), value as u8);
    }
    fn save(&self) -> Vec<u8> {
        Pic::save(self)
    }
    fn restore(&mut self, data: &[u8]) -> Result<(), DeviceError> {
        Pic::restore(self, data)
    }
    fn irq_chip(&mut self) -> Option<&mut dyn IrqChip> {
        Some(self)
    }
}

impl IrqChip for Pic {
    fn raise(&mut self, line: u8) {
        Pic::raise(self, line);
    }
    /// Edge-triggered: a request stays in the IRR until acknowledged.
    fn lower(&mut self, _line: u8) {}
    fn pending(&self) -> Option<u8> {
        Pic::pending(self)
    }
    fn acknowledge(&mut self, vector: u8) {
        Pic::acknowledge(self, vector);
    }
}

impl Device for Pit {
    fn name(&self) -> &'static str {
        "pit8254"
    }
    fn read(&mut self, offset: u64, _size: u8) -> u64 {
        u64::from(Pit::read(self, reg(offset)))
    }
    fn write(&mut self, offset: u64, _size: u8, value: u64, _fx: &mut Effects) {
        Pit::write(self, reg(offset), value as u8);
    }
    fn save(&self) -> Vec<u8> {
        Pit::save(self)
    }
    fn restore(&mut self, data: &[u8]) -> Result<(), DeviceError> {
        Pit::restore(self, data)
    }
    fn timer(&mut self) -> Option<&mut dyn Timer> {
        Some(self)
    }
}

impl Timer for Pit {
    /// Channel 0's output is wired to IRQ0.
    fn irq(&self) -> u8 {
        0
    }
    fn period_tsc(&self, tsc_hz: u64) -> Option<u64> {
        Pit::period_tsc(self, tsc_hz)
    }
    fn take_changed(&mut self) -> bool {
        Pit::take_changed(self)
    }
}

#[cfg(test)]
mod platform_tests {
    use super::*;

    #[test]
    fn platform_devices_are_the_protocol_devices_in_order() {
        let bus = platform().unwrap();
        assert_eq!(bus.names().collect::<Vec<_>>(), DEVICES);
        let saved = bus.save();
        assert_eq!(saved.len(), DEVICES.len());
        let mut other = platform().unwrap();
        other.restore(&saved).unwrap();
        assert_eq!(other.save(), saved);
    }

    #[test]
    fn ports_behave_as_before_the_bus() {
        let mut bus = platform().unwrap();
        assert_eq!(bus.pio_read(0x3fd, 1), 0x60, "LSR: transmitter empty");
        assert_eq!(bus.mmio_read(MMIO_UART_BASE + 6, 1), Some(0xb0), "MSR");
        assert_eq!(bus.mmio_read(MMIO_UART_BASE + 0x800, 1), Some(0));
        assert_eq!(bus.pio_read(0x80, 1), u64::MAX);
        assert_eq!(
            bus.pio_read(0xf4, 1),
            u64::MAX,
            "the exit port is write-only"
        );
        assert_eq!(bus.pio_read(0xf5, 1), 0);
        bus.with(|r: &mut RequestPort| r.bump());
        assert_eq!(bus.pio_read(0xf5, 1), 1);
        assert_eq!(bus.pio_write(0xf4, 4, 0x1234).stop, Some(0x1234));
        // One line buffer behind the port and the MMIO window.
        assert_eq!(bus.pio_write(0x3f8, 1, u64::from(b'h')).line, None);
        assert_eq!(
            bus.mmio_write(MMIO_UART_BASE, 1, u64::from(b'i')),
            Some(Effects::default())
        );
        assert_eq!(
            bus.pio_write(0x3f8, 1, u64::from(b'\n')).line.as_deref(),
            Some("hi")
        );
        assert_eq!(bus.find::<Uart>().map(|u| u.bytes), Some(3));
    }

    #[test]
    fn pit_ticks_reach_the_pic_as_irq0() {
        let mut bus = platform().unwrap();
        // PIC: vector base 0x20, single... as the test guests program it.
        for (port, v) in [
            (0x20, 0x11),
            (0x21, 0x20),
            (0x21, 0x04),
            (0x21, 0x01),
            (0x21, 0xfe),
        ] {
            bus.pio_write(port, 1, v);
        }
        assert!(!bus.take_timer_change());
        // PIT channel 0, mode 2, divisor 11932 (~100 Hz).
        for (port, v) in [(0x43, 0x34), (0x40, 0x9c), (0x40, 0x2e)] {
            bus.pio_write(port, 1, v);
        }
        assert!(bus.take_timer_change());
        assert!(!bus.take_timer_change());
        assert_eq!(bus.timer_period_tsc(100_000_000), Some(1_000_015));
        assert_eq!(bus.pending_vector(), None);
        bus.timer_tick();
        assert_eq!(bus.pending_vector(), Some(0x20));
        bus.acknowledge(0x20);
        assert_eq!(bus.pending_vector(), None);
        bus.timer_tick();
        assert_eq!(bus.pending_vector(), None, "in service until EOI");
        bus.pio_write(0x20, 1, 0x20);
        assert_eq!(bus.pending_vector(), Some(0x20));
        // The pending vector survives a migration of the bus.
        let mut other = platform().unwrap();
        other.restore(&bus.save()).unwrap();
        assert_eq!(other.pending_vector(), Some(0x20));
    }
}
