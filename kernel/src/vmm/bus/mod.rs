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
        if let Some(line) = self.timer_line() {
            self.raise_irq(line);
        }
    }

    /// The IRQ line the timer raises (None: no timer on the bus).
    pub fn timer_line(&mut self) -> Option<u8> {
        self.timer
            .and_then(|t| self.devices[t].timer())
            .map(|t| t.irq())
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
mod tests;
