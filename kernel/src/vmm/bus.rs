//! The device bus: the one way guest port I/O, MMIO and device interrupts
//! reach the device models, and the one place their state is saved.
//!
//! ```text
//!   I/O exit ──► decode ──► Bus::pio_read/pio_write(port, size[, value])
//!   EPT violation on a     ┐      │ range lookup (last hit cached)
//!   registered MMIO range ─┴► Bus::mmio_read/mmio_write(gpa, size[, value])
//!                                 ▼
//!                       Device::read/write(offset from the range base)
//!                                 │ Effects: console line, stop code,
//!                                 │ IRQ lines raised/lowered
//!                                 ▼
//!                  IRQ lines ──► the interrupt controller (the device that
//!                                offers an IrqChip, the 8259A here)
//!   run loop ──► Bus::pending_vector / acknowledge / timer_tick
//!   migration ──► Bus::save / Bus::restore, by device name
//! ```
//!
//! A device is registered once ([`Bus::add`]) and mapped at any number of
//! port and MMIO ranges ([`Bus::register_pio`], [`Bus::register_mmio`]);
//! ranges never overlap. Ports nobody registered read as all-ones and
//! ignore writes, as on a PC with nothing decoding them.
//!
//! Pure logic: host-tested; nothing here touches hardware.

use alloc::boxed::Box;
use alloc::string::String;
use alloc::vec::Vec;
use core::any::Any;
use core::ops::Range;

/// What a device access produced besides its value: output for the host
/// and interrupt lines. The bus applies the IRQ lines itself; the caller
/// handles the rest.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Effects {
    /// A completed guest console line.
    pub line: Option<String>,
    /// The guest asked to stop with this exit code.
    pub stop: Option<u32>,
    /// IRQ lines raised (bit n: line n).
    pub irq_raise: u16,
    /// IRQ lines lowered (bit n: line n).
    pub irq_lower: u16,
}

/// A saved device state the device does not accept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{device} state: {why}")]
pub struct DeviceError {
    pub device: &'static str,
    pub why: &'static str,
}

/// Address space of a mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Space {
    Pio,
    Mmio,
}

impl core::fmt::Display for Space {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Space::Pio => "ports",
            Space::Mmio => "MMIO",
        })
    }
}

/// Why a registration or a restore was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BusError {
    #[error("{space} {start:#x}..{end:#x} for {device} overlap {other}'s")]
    Overlap {
        space: Space,
        device: &'static str,
        other: &'static str,
        start: u64,
        end: u64,
    },
    #[error("Empty {space} range {start:#x}..{end:#x} for {device}")]
    EmptyRange {
        space: Space,
        device: &'static str,
        start: u64,
        end: u64,
    },
    #[error("A device named {0} is already on the bus")]
    DuplicateName(&'static str),
    #[error("No device with id {0}")]
    NoSuchDevice(usize),
    #[error("A second {0} on the bus ({1} is already it)")]
    SecondCapability(&'static str, &'static str),
    /// The same message as before the bus, which operators know.
    #[error("unknown device or bad state: '{0}'")]
    UnknownDevice(String),
    #[error("Two saved states for device {0}")]
    DuplicateState(&'static str),
    #[error("No saved state for device {0}")]
    MissingDevice(&'static str),
    #[error(transparent)]
    Device(#[from] DeviceError),
}

/// A guest-visible device model.
///
/// `offset` is relative to the base of the range the access hit; `size`
/// is the access width in bytes (1, 2, 4 or 8).
pub trait Device: Any + Send {
    /// Stable name: the migration protocol carries device states by it.
    fn name(&self) -> &'static str;
    /// A guest read.
    fn read(&mut self, offset: u64, size: u8) -> u64;
    /// A guest write; output and IRQ changes go into `fx`.
    fn write(&mut self, offset: u64, size: u8, value: u64, fx: &mut Effects);
    /// Everything the guest can observe, versioned.
    fn save(&self) -> Vec<u8>;
    /// Restores what [`Device::save`] produced; refuses anything else.
    fn restore(&mut self, data: &[u8]) -> Result<(), DeviceError>;
    /// This device as the interrupt controller, if it is one.
    fn irq_chip(&mut self) -> Option<&mut dyn IrqChip> {
        None
    }
    /// This device as the guest's periodic timer, if it is one.
    fn timer(&mut self) -> Option<&mut dyn Timer> {
        None
    }
}

/// The interrupt controller: where every device's IRQ lines end up.
pub trait IrqChip {
    /// An edge (or level going high) on `line`.
    fn raise(&mut self, line: u8);
    /// A level going low on `line`.
    fn lower(&mut self, line: u8);
    /// The vector to deliver now, if any.
    fn pending(&self) -> Option<u8>;
    /// The guest took `vector`.
    fn acknowledge(&mut self, vector: u8);
}

/// The guest's periodic timer; the run loop turns its period into ticks.
pub trait Timer {
    /// The IRQ line a tick raises.
    fn irq(&self) -> u8;
    /// The period in TSC ticks for a TSC of `tsc_hz`, if running.
    fn period_tsc(&self, tsc_hz: u64) -> Option<u64>;
    /// True once after each reprogramming.
    fn take_changed(&mut self) -> bool;
}

/// A device on the bus, as [`Bus::add`] returned it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceId(usize);

#[derive(Debug, Clone, Copy)]
struct Mapping<A> {
    start: A,
    end: A,
    dev: usize,
}

/// How many unmodelled ports are logged (each once); then no more.
const LOGGED_PORTS: usize = 16;

/// Ports, MMIO ranges and the devices behind them.
pub struct Bus {
    devices: Vec<Box<dyn Device>>,
    pio: Vec<Mapping<u16>>,
    mmio: Vec<Mapping<u64>>,
    /// The device that is the interrupt controller.
    irq_chip: Option<usize>,
    /// The device that is the periodic timer.
    timer: Option<usize>,
    /// The controller's pending vector, recomputed whenever its state can
    /// have changed (the run loop asks on every entry: no dispatch then).
    pending: Option<u8>,
    /// The timer was written since the last [`Bus::take_timer_change`].
    timer_written: bool,
    /// Last port looked up (u32::MAX: none) and what serves it; port
    /// loops (a driver polling a status register, POST-code delays on an
    /// unmodelled port) hit it every time, without a search.
    last_port: u32,
    last: Option<Mapping<u16>>,
    /// Unmodelled ports already logged.
    logged: [u16; LOGGED_PORTS],
    logged_len: usize,
}

impl Default for Bus {
    fn default() -> Self {
        Self::new()
    }
}

impl Bus {
    pub const fn new() -> Self {
        Bus {
            devices: Vec::new(),
            pio: Vec::new(),
            mmio: Vec::new(),
            irq_chip: None,
            timer: None,
            pending: None,
            timer_written: false,
            last_port: u32::MAX,
            last: None,
            logged: [0; LOGGED_PORTS],
            logged_len: 0,
        }
    }

    /// Puts a device on the bus (not yet mapped anywhere). Saved states
    /// list devices in this order.
    pub fn add(&mut self, mut dev: Box<dyn Device>) -> Result<DeviceId, BusError> {
        let name = dev.name();
        if self.devices.iter().any(|d| d.name() == name) {
            return Err(BusError::DuplicateName(name));
        }
        let id = self.devices.len();
        if dev.irq_chip().is_some() {
            if let Some(c) = self.irq_chip {
                return Err(BusError::SecondCapability(
                    "interrupt controller",
                    self.devices[c].name(),
                ));
            }
            self.irq_chip = Some(id);
        }
        if dev.timer().is_some() {
            if let Some(t) = self.timer {
                return Err(BusError::SecondCapability("timer", self.devices[t].name()));
            }
            self.timer = Some(id);
        }
        self.devices.push(dev);
        self.refresh_pending();
        Ok(DeviceId(id))
    }

    /// Adds a device mapped at `ports`: a new port device is one line.
    pub fn add_pio(
        &mut self,
        ports: Range<u16>,
        dev: Box<dyn Device>,
    ) -> Result<DeviceId, BusError> {
        let id = self.add(dev)?;
        if let Err(e) = self.register_pio(ports, id) {
            self.remove_last();
            return Err(e);
        }
        Ok(id)
    }

    /// Adds a device mapped at guest-physical `gpas`.
    pub fn add_mmio(
        &mut self,
        gpas: Range<u64>,
        dev: Box<dyn Device>,
    ) -> Result<DeviceId, BusError> {
        let id = self.add(dev)?;
        if let Err(e) = self.register_mmio(gpas, id) {
            self.remove_last();
            return Err(e);
        }
        Ok(id)
    }

    /// Undoes the last [`Bus::add`] (its mapping failed; it has none).
    fn remove_last(&mut self) {
        let id = self.devices.len() - 1;
        self.devices.pop();
        if self.irq_chip == Some(id) {
            self.irq_chip = None;
        }
        if self.timer == Some(id) {
            self.timer = None;
        }
        self.refresh_pending();
    }

    /// Maps ports `ports` to `dev`; refuses a range that overlaps another.
    pub fn register_pio(&mut self, ports: Range<u16>, dev: DeviceId) -> Result<(), BusError> {
        let m = self.check(Space::Pio, &self.pio, ports.start, ports.end, dev)?;
        insert_sorted(&mut self.pio, m);
        self.last_port = u32::MAX;
        Ok(())
    }

    /// Maps guest-physical `gpas` to `dev`; refuses a range that overlaps another.
    pub fn register_mmio(&mut self, gpas: Range<u64>, dev: DeviceId) -> Result<(), BusError> {
        let m = self.check(Space::Mmio, &self.mmio, gpas.start, gpas.end, dev)?;
        insert_sorted(&mut self.mmio, m);
        Ok(())
    }

    fn check<A: Copy + Ord + Into<u64>>(
        &self,
        space: Space,
        maps: &[Mapping<A>],
        start: A,
        end: A,
        dev: DeviceId,
    ) -> Result<Mapping<A>, BusError> {
        let device = self
            .devices
            .get(dev.0)
            .ok_or(BusError::NoSuchDevice(dev.0))?
            .name();
        if start >= end {
            return Err(BusError::EmptyRange {
                space,
                device,
                start: start.into(),
                end: end.into(),
            });
        }
        if let Some(o) = maps.iter().find(|m| start < m.end && m.start < end) {
            return Err(BusError::Overlap {
                space,
                device,
                other: self.devices[o.dev].name(),
                start: start.into(),
                end: end.into(),
            });
        }
        Ok(Mapping {
            start,
            end,
            dev: dev.0,
        })
    }

    /// The mapping serving `port`, if any. Every exit of a port loop
    /// comes here: the cached case stays inline, the search does not.
    #[inline]
    fn pio_slot(&mut self, port: u16) -> Option<Mapping<u16>> {
        if self.last_port == u32::from(port) {
            return self.last;
        }
        self.pio_search(port)
    }

    #[inline(never)]
    fn pio_search(&mut self, port: u16) -> Option<Mapping<u16>> {
        let m = self
            .pio
            .iter()
            .find(|m| m.start <= port && port < m.end)
            .copied();
        if m.is_none() {
            self.note_unmodelled(port);
        }
        self.last_port = u32::from(port);
        self.last = m;
        m
    }

    /// Logs an unmodelled port the first time it is seen (of the first
    /// [`LOGGED_PORTS`]). True when it was logged now.
    fn note_unmodelled(&mut self, port: u16) -> bool {
        if self.logged[..self.logged_len].contains(&port) || self.logged_len == LOGGED_PORTS {
            return false;
        }
        self.logged[self.logged_len] = port;
        self.logged_len += 1;
        log::debug!(
            "bus: port {port:#x} is not modelled: reads return all-ones, writes are ignored"
        );
        true
    }

    /// Unmodelled ports logged so far.
    pub fn unmodelled_ports(&self) -> &[u16] {
        &self.logged[..self.logged_len]
    }

    /// A guest `in` of `size` bytes from `port`: all-ones if unmodelled.
    #[inline]
    pub fn pio_read(&mut self, port: u16, size: u8) -> u64 {
        match self.pio_slot(port) {
            Some(m) => self.devices[m.dev].read(u64::from(port - m.start), size),
            None => u64::MAX,
        }
    }

    /// A guest `out` of `size` bytes to `port`: ignored if unmodelled.
    pub fn pio_write(&mut self, port: u16, size: u8, value: u64) -> Effects {
        let mut fx = Effects::default();
        if let Some(m) = self.pio_slot(port) {
            self.dispatch_write(m.dev, u64::from(port - m.start), size, value, &mut fx);
        }
        fx
    }

    /// Whether a device is mapped at guest-physical `gpa`.
    pub fn on_mmio(&self, gpa: u64) -> bool {
        self.mmio_slot(gpa).is_some()
    }

    fn mmio_slot(&self, gpa: u64) -> Option<Mapping<u64>> {
        self.mmio
            .iter()
            .find(|m| m.start <= gpa && gpa < m.end)
            .copied()
    }

    /// A guest load from `gpa`; None if no device is mapped there.
    pub fn mmio_read(&mut self, gpa: u64, size: u8) -> Option<u64> {
        let m = self.mmio_slot(gpa)?;
        Some(self.devices[m.dev].read(gpa - m.start, size))
    }

    /// A guest store to `gpa`; None if no device is mapped there.
    pub fn mmio_write(&mut self, gpa: u64, size: u8, value: u64) -> Option<Effects> {
        let m = self.mmio_slot(gpa)?;
        let mut fx = Effects::default();
        self.dispatch_write(m.dev, gpa - m.start, size, value, &mut fx);
        Some(fx)
    }

    fn dispatch_write(&mut self, dev: usize, offset: u64, size: u8, value: u64, fx: &mut Effects) {
        self.devices[dev].write(offset, size, value, fx);
        if self.timer == Some(dev) {
            self.timer_written = true;
        }
        if fx.irq_raise | fx.irq_lower != 0 {
            self.apply_irqs(fx.irq_raise, fx.irq_lower);
        } else if self.irq_chip == Some(dev) {
            self.refresh_pending();
        }
    }

    fn apply_irqs(&mut self, raise: u16, lower: u16) {
        if let Some(chip) = self.irq_chip.and_then(|c| self.devices[c].irq_chip()) {
            for line in 0..16 {
                if lower & (1 << line) != 0 {
                    chip.lower(line);
                }
                if raise & (1 << line) != 0 {
                    chip.raise(line);
                }
            }
        }
        self.refresh_pending();
    }

    fn refresh_pending(&mut self) {
        self.pending = self
            .irq_chip
            .and_then(|c| self.devices[c].irq_chip())
            .and_then(|chip| chip.pending());
    }

    /// Raises IRQ `line` on the interrupt controller (a device outside the
    /// bus's own dispatch, e.g. the timer's tick).
    pub fn raise_irq(&mut self, line: u8) {
        self.apply_irqs(1 << (line & 15), 0);
    }

    /// The vector the interrupt controller wants delivered now.
    #[inline]
    pub fn pending_vector(&self) -> Option<u8> {
        self.pending
    }

    /// The guest took `vector` (injected on entry).
    #[inline(never)]
    pub fn acknowledge(&mut self, vector: u8) {
        if let Some(chip) = self.irq_chip.and_then(|c| self.devices[c].irq_chip()) {
            chip.acknowledge(vector);
        }
        self.refresh_pending();
    }

    /// True once after the guest reprogrammed its timer. The run loop
    /// asks after every exit: the common answer is one flag, inline.
    #[inline]
    pub fn take_timer_change(&mut self) -> bool {
        self.timer_written && self.take_timer_change_slow()
    }

    #[cold]
    #[inline(never)]
    fn take_timer_change_slow(&mut self) -> bool {
        self.timer_written = false;
        self.timer
            .and_then(|t| self.devices[t].timer())
            .is_some_and(|t| t.take_changed())
    }

    /// The timer's period in TSC ticks, if it runs.
    #[inline(never)]
    pub fn timer_period_tsc(&mut self, tsc_hz: u64) -> Option<u64> {
        self.timer
            .and_then(|t| self.devices[t].timer())
            .and_then(|t| t.period_tsc(tsc_hz))
    }

    /// A timer period elapsed: raises the timer's IRQ line.
    #[inline(never)]
    pub fn timer_tick(&mut self) {
        if let Some(line) = self
            .timer
            .and_then(|t| self.devices[t].timer())
            .map(|t| t.irq())
        {
            self.raise_irq(line);
        }
    }

    /// Names of the devices, in registration order.
    pub fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.devices.iter().map(|d| d.name())
    }

    /// Every device's state, in registration order.
    pub fn save(&self) -> Vec<(String, Vec<u8>)> {
        self.devices
            .iter()
            .map(|d| (String::from(d.name()), d.save()))
            .collect()
    }

    /// Restores every device from `states` (by name, any order). Refuses
    /// unknown names, a device named twice and a device left without
    /// state. On error some devices may hold restored state: restore into
    /// a fresh bus and swap it in on success.
    pub fn restore(&mut self, states: &[(String, Vec<u8>)]) -> Result<(), BusError> {
        let mut seen = alloc::vec![false; self.devices.len()];
        for (name, data) in states {
            let i = self
                .devices
                .iter()
                .position(|d| d.name() == name)
                .ok_or_else(|| BusError::UnknownDevice(name.clone()))?;
            if core::mem::replace(&mut seen[i], true) {
                return Err(BusError::DuplicateState(self.devices[i].name()));
            }
            self.devices[i].restore(data)?;
        }
        if let Some(i) = seen.iter().position(|s| !s) {
            return Err(BusError::MissingDevice(self.devices[i].name()));
        }
        self.timer_written = true;
        self.refresh_pending();
        Ok(())
    }

    /// The device of type `T`, for host-side views (statistics).
    pub fn find<T: Device>(&self) -> Option<&T> {
        self.devices
            .iter()
            .find_map(|d| (d.as_ref() as &dyn Any).downcast_ref::<T>())
    }

    /// Host-side access to the device of type `T` (a host request, the
    /// console flush when a VM stops); the bus catches up afterwards.
    pub fn with<T: Device, R>(&mut self, f: impl FnOnce(&mut T) -> R) -> Option<R> {
        let i = self
            .devices
            .iter()
            .position(|d| (d.as_ref() as &dyn Any).is::<T>())?;
        let d = (self.devices[i].as_mut() as &mut dyn Any).downcast_mut::<T>()?;
        let r = f(d);
        if self.timer == Some(i) {
            self.timer_written = true;
        }
        self.refresh_pending();
        Some(r)
    }
}

fn insert_sorted<A: Copy + Ord>(maps: &mut Vec<Mapping<A>>, m: Mapping<A>) {
    let at = maps.partition_point(|x| x.start < m.start);
    maps.insert(at, m);
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    /// Records its accesses; its state is the last value written.
    #[derive(Default)]
    struct Probe {
        name: &'static str,
        last: Option<(u64, u8, u64)>,
        raise_on_write: Option<u8>,
    }

    impl Device for Probe {
        fn name(&self) -> &'static str {
            self.name
        }
        fn read(&mut self, offset: u64, size: u8) -> u64 {
            offset << 8 | u64::from(size)
        }
        fn write(&mut self, offset: u64, size: u8, value: u64, fx: &mut Effects) {
            self.last = Some((offset, size, value));
            if let Some(l) = self.raise_on_write {
                fx.irq_raise |= 1 << l;
            }
        }
        fn save(&self) -> Vec<u8> {
            self.last
                .map(|(_, _, v)| v.to_le_bytes().to_vec())
                .unwrap_or_default()
        }
        fn restore(&mut self, data: &[u8]) -> Result<(), DeviceError> {
            let bad = DeviceError {
                device: "probe",
                why: "not 0 or 8 bytes",
            };
            self.last = match data.len() {
                0 => None,
                8 => Some((
                    0,
                    8,
                    u64::from_le_bytes(data.try_into().map_err(|_| bad.clone())?),
                )),
                _ => return Err(bad),
            };
            Ok(())
        }
    }

    fn probe(name: &'static str) -> Box<Probe> {
        Box::new(Probe {
            name,
            ..Probe::default()
        })
    }

    #[test]
    fn overlaps_are_refused() {
        let mut b = Bus::new();
        let a = b.add(probe("a")).unwrap();
        let c = b.add(probe("c")).unwrap();
        b.register_pio(0x40..0x44, a).unwrap();
        b.register_pio(0x44..0x48, c).unwrap();
        b.register_pio(0x20..0x22, c).unwrap();
        for r in [0x40..0x44, 0x43..0x45, 0x30..0x41, 0x41..0x42, 0x00..0x100] {
            let e = b.register_pio(r.clone(), c).unwrap_err();
            assert!(
                matches!(
                    e,
                    BusError::Overlap {
                        space: Space::Pio,
                        ..
                    }
                ),
                "{r:?}: {e}"
            );
        }
        assert!(matches!(
            b.register_pio(0x50..0x50, a),
            Err(BusError::EmptyRange { .. })
        ));
        b.register_mmio(0x1000..0x2000, a).unwrap();
        for r in [
            0x1000..0x2000,
            0xfff..0x1001,
            0x1fff..0x3000,
            0x1100..0x1200,
        ] {
            let e = b.register_mmio(r.clone(), c).unwrap_err();
            assert_eq!(
                e,
                BusError::Overlap {
                    space: Space::Mmio,
                    device: "c",
                    other: "a",
                    start: r.start,
                    end: r.end
                }
            );
        }
        // Ports and MMIO are separate spaces.
        b.register_mmio(0x40..0x44, c).unwrap();
        b.register_mmio(0x2000..0x3000, c).unwrap();
        assert_eq!(b.add(probe("a")).unwrap_err(), BusError::DuplicateName("a"));
        assert_eq!(
            b.register_pio(0x90..0x91, DeviceId(9)),
            Err(BusError::NoSuchDevice(9))
        );
    }

    #[test]
    fn dispatch_reaches_the_device_at_its_offset() {
        let mut b = Bus::new();
        let a = b.add(probe("a")).unwrap();
        let c = b.add(probe("c")).unwrap();
        b.register_pio(0x3f8..0x400, a).unwrap();
        b.register_pio(0x40..0x44, c).unwrap();
        b.register_mmio(0xfe00_0000..0xfe00_1000, a).unwrap();
        assert_eq!(b.pio_read(0x3fd, 1), 5 << 8 | 1);
        assert_eq!(b.pio_read(0x43, 2), 3 << 8 | 2);
        assert_eq!(b.pio_read(0x3fd, 4), 5 << 8 | 4, "cached slot");
        assert_eq!(b.mmio_read(0xfe00_0005, 1), Some(5 << 8 | 1));
        assert_eq!(b.mmio_read(0xfe00_1000, 1), None);
        assert!(b.on_mmio(0xfe00_0fff) && !b.on_mmio(0xfdff_ffff));
        assert_eq!(b.pio_write(0x41, 1, 0x9b), Effects::default());
        assert_eq!(b.find::<Probe>().map(|p| p.name), Some("a"));
        assert_eq!(
            b.with(|p: &mut Probe| p.last),
            Some(None),
            "first Probe is a"
        );
        assert!(b.mmio_write(0xfe00_0003, 4, 7).is_some());
        assert_eq!(b.with(|p: &mut Probe| p.last), Some(Some((3, 4, 7))));
        assert_eq!(
            b.save()[1],
            (String::from("c"), 0x9bu64.to_le_bytes().to_vec())
        );
    }

    #[test]
    fn unmodelled_ports_read_all_ones_and_are_logged_once() {
        let mut b = Bus::new();
        let a = b.add(probe("a")).unwrap();
        b.register_pio(0x20..0x22, a).unwrap();
        assert_eq!(b.pio_read(0x80, 1), u64::MAX);
        assert_eq!(b.pio_read(0x21, 1), 1 << 8 | 1);
        assert_eq!(b.pio_read(0x80, 1), u64::MAX);
        assert_eq!(b.pio_write(0x80, 1, 5), Effects::default());
        assert_eq!(b.pio_read(0x81, 1), u64::MAX);
        assert_eq!(b.unmodelled_ports(), &[0x80, 0x81]);
        // Bounded: a guest probing every port does not grow it.
        for p in 0x100..0x200 {
            b.pio_write(p, 1, 0);
        }
        assert_eq!(b.unmodelled_ports().len(), LOGGED_PORTS);
        assert!(!b.note_unmodelled(0x80));
    }

    #[test]
    fn save_restore_round_trip_by_name() {
        let mut b = Bus::new();
        let a = b.add(probe("a")).unwrap();
        let c = b.add(probe("c")).unwrap();
        b.register_pio(0x10..0x12, a).unwrap();
        b.register_pio(0x12..0x14, c).unwrap();
        b.pio_write(0x10, 1, 42);
        b.pio_write(0x13, 1, 7);
        let saved = b.save();
        assert_eq!(
            saved.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
            ["a", "c"]
        );

        let fresh = || {
            let mut b = Bus::new();
            b.add(probe("a")).unwrap();
            b.add(probe("c")).unwrap();
            b
        };
        let mut r = fresh();
        let reversed: Vec<_> = saved.iter().rev().cloned().collect();
        r.restore(&reversed).unwrap();
        assert_eq!(r.save(), saved);

        let unknown = vec![(String::from("zz"), vec![])];
        assert_eq!(
            fresh().restore(&unknown),
            Err(BusError::UnknownDevice("zz".into()))
        );
        assert_eq!(
            fresh().restore(&saved[..1]),
            Err(BusError::MissingDevice("c"))
        );
        let twice = vec![saved[0].clone(), saved[0].clone()];
        assert_eq!(fresh().restore(&twice), Err(BusError::DuplicateState("a")));
        let bad = vec![saved[0].clone(), (String::from("c"), vec![1, 2])];
        assert!(matches!(fresh().restore(&bad), Err(BusError::Device(_))));
    }

    #[test]
    fn device_irq_lines_reach_the_controller() {
        use crate::vmm::devices::Pic;
        let mut b = Bus::new();
        let pic = b.add(Box::new(Pic::default())).unwrap();
        b.register_pio(0x20..0x22, pic).unwrap();
        let dev = b
            .add(Box::new(Probe {
                name: "irq3",
                raise_on_write: Some(3),
                ..Probe::default()
            }))
            .unwrap();
        b.register_pio(0x2f8..0x300, dev).unwrap();
        for (port, v) in [
            (0x20, 0x11),
            (0x21, 0x20),
            (0x21, 0x04),
            (0x21, 0x01),
            (0x21, 0xf7),
        ] {
            b.pio_write(port, 1, v);
        }
        assert_eq!(b.pending_vector(), None);
        let fx = b.pio_write(0x2f8, 1, 0);
        assert_eq!(fx.irq_raise, 1 << 3);
        assert_eq!(b.pending_vector(), Some(0x23));
        b.acknowledge(0x23);
        assert_eq!(b.pending_vector(), None);
        assert_eq!(b.pio_read(0x21, 1), 0xf7);
    }
}
