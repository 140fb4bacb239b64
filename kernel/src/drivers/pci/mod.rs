//! PCI enumeration: finds every function reachable from bus 0 and decodes
//! and sizes its BARs.
//!
//! Pure logic over the [`ConfigSpace`] trait. The kernel implements it with
//! configuration mechanism #1 (ports 0xCF8/0xCFC, address built by
//! [`PciAddress::config_address`]); tests implement it with a fake bus.
//!
//! References (section numbers from these revisions):
//! - PCI Local Bus Specification, Rev. 3.0: §3.2.2.3.2 (configuration
//!   mechanism #1), §6.1 (type 0 header, vendor ID 0xFFFF = no function),
//!   §6.2.2 (command register), §6.2.5.1 (BAR layout and sizing).
//! - PCI-to-PCI Bridge Architecture Specification, Rev. 1.2: §3.2 (type 1
//!   header: two BARs, then the bus numbers at 0x18).
//! - PCI Code and ID Assignment Specification, Rev. 1.11: class codes.
//!
//! Scan order: bus 0, then the secondary bus of every PCI-to-PCI bridge
//! found, each bus at most once, so a misprogrammed bridge that points back
//! at a bus already scanned (or at its own bus) cannot make the scan loop.
//! Bus numbers are taken as firmware assigned them; this module does not
//! (re)number buses or assign BAR addresses.
//!
//! Not for: capabilities, MSI, PCIe extended configuration space (ECAM), or
//! driving any device.

use alloc::vec::Vec;
use core::fmt;

/// Offset of vendor ID (bits 15:0) and device ID (31:16).
const REG_ID: u8 = 0x00;
/// Offset of command (15:0) and status (31:16).
const REG_COMMAND: u8 = 0x04;
/// Offset of revision (7:0), programming interface, subclass, class (31:24).
const REG_CLASS: u8 = 0x08;
/// Offset of cache line size, latency timer, header type (23:16) and BIST.
const REG_HEADER: u8 = 0x0c;
/// Offset of BAR 0; BAR n is at `REG_BAR0 + 4 * n`.
const REG_BAR0: u8 = 0x10;
/// Type 1 header: primary (7:0), secondary (15:8) and subordinate (23:16) bus.
const REG_BRIDGE_BUSES: u8 = 0x18;

/// Command register: respond to I/O space accesses (§6.2.2).
const CMD_IO_SPACE: u32 = 1 << 0;
/// Command register: respond to memory space accesses (§6.2.2).
const CMD_MEMORY_SPACE: u32 = 1 << 1;

/// Header type bit 7: the device implements functions other than 0.
const HEADER_MULTI_FUNCTION: u8 = 0x80;
/// Header type bits 6:0: layout of the rest of the header.
const HEADER_LAYOUT_MASK: u8 = 0x7f;
/// Layout of an ordinary function: six BARs.
const HEADER_LAYOUT_DEVICE: u8 = 0x00;
/// Layout of a PCI-to-PCI bridge: two BARs.
const HEADER_LAYOUT_BRIDGE: u8 = 0x01;

/// BAR bit 0: I/O space (1) or memory space (0).
const BAR_IO: u32 = 1 << 0;
/// Memory BAR bits 2:1: where the BAR may be mapped.
const BAR_MEM_TYPE_SHIFT: u32 = 1;
/// Memory BAR bit 3: reads have no side effects.
const BAR_MEM_PREFETCHABLE: u32 = 1 << 3;
/// Address bits of an I/O BAR (bit 1 is reserved).
const BAR_IO_ADDR_MASK: u32 = !0x3;
/// Address bits of a memory BAR.
const BAR_MEM_ADDR_MASK: u32 = !0xf;

/// Bus, device and function number of a PCI function.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PciAddress {
    /// Bus number, 0-255.
    pub bus: u8,
    /// Device number, 0-31.
    pub device: u8,
    /// Function number, 0-7.
    pub function: u8,
}

impl PciAddress {
    /// The value to write to port 0xCF8 to access the dword at `offset` of
    /// this function's configuration space (mechanism #1, §3.2.2.3.2): enable
    /// bit 31, bus in 23:16, device in 15:11, function in 10:8, register in
    /// 7:2. Out-of-range device or function numbers and the low two offset
    /// bits are masked off rather than spilling into the neighbouring fields.
    pub fn config_address(self, offset: u8) -> u32 {
        0x8000_0000
            | u32::from(self.bus) << 16
            | u32::from(self.device & 0x1f) << 11
            | u32::from(self.function & 0x7) << 8
            | u32::from(offset & 0xfc)
    }
}

impl fmt::Display for PciAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:02x}:{:02x}.{:x}",
            self.bus, self.device, self.function
        )
    }
}

/// Access to PCI configuration space.
///
/// Offsets are dword aligned (multiples of 4, below 256). A read of a
/// function that does not exist returns all ones, as the host bridge does.
pub trait ConfigSpace {
    /// Reads the dword at `offset`.
    fn read32(&mut self, addr: PciAddress, offset: u8) -> u32;
    /// Writes the dword at `offset`.
    fn write32(&mut self, addr: PciAddress, offset: u8, value: u32);
}

/// A decoded, sized base address register. Unimplemented BARs are omitted;
/// `index` is the BAR number (for a 64-bit BAR, that of its low half).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bar {
    /// I/O port range.
    Io {
        /// BAR number.
        index: u8,
        /// First port.
        port: u32,
        /// Length in ports.
        size: u32,
    },
    /// Memory range below 4 GiB (also the legacy "below 1 MiB" type).
    Mem32 {
        /// BAR number.
        index: u8,
        /// Physical address as programmed by firmware.
        addr: u32,
        /// Length in bytes.
        size: u32,
        /// Reads have no side effects, so the range may be mapped write-combining.
        prefetchable: bool,
    },
    /// Memory range anywhere in the 64-bit space; occupies two BAR slots.
    Mem64 {
        /// BAR number of the low half.
        index: u8,
        /// Physical address as programmed by firmware.
        addr: u64,
        /// Length in bytes.
        size: u64,
        /// Reads have no side effects.
        prefetchable: bool,
    },
}

impl Bar {
    /// The BAR number.
    pub fn index(&self) -> u8 {
        match *self {
            Bar::Io { index, .. } | Bar::Mem32 { index, .. } | Bar::Mem64 { index, .. } => index,
        }
    }
}

impl fmt::Display for Bar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let prefetchable = match *self {
            Bar::Io { index, port, size } => {
                return write!(f, "bar{index}=io:{port:#x}/{size:#x}");
            }
            Bar::Mem32 {
                index,
                addr,
                size,
                prefetchable,
            } => {
                write!(f, "bar{index}=mem32:{addr:#x}/{size:#x}")?;
                prefetchable
            }
            Bar::Mem64 {
                index,
                addr,
                size,
                prefetchable,
            } => {
                write!(f, "bar{index}=mem64:{addr:#x}/{size:#x}")?;
                prefetchable
            }
        };
        if prefetchable {
            f.write_str(",pf")
        } else {
            Ok(())
        }
    }
}

/// One PCI function found by [`enumerate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Function {
    /// Where it is.
    pub addr: PciAddress,
    /// Vendor ID.
    pub vendor_id: u16,
    /// Device ID.
    pub device_id: u16,
    /// Base class code.
    pub class: u8,
    /// Subclass code.
    pub subclass: u8,
    /// Programming interface.
    pub prog_if: u8,
    /// Revision ID.
    pub revision: u8,
    /// Raw header type byte: layout in bits 6:0, multi-function flag in bit 7.
    pub header_type: u8,
    /// Implemented BARs, in index order.
    pub bars: Vec<Bar>,
}

impl Function {
    /// Whether this is a PCI-to-PCI bridge (type 1 header).
    pub fn is_bridge(&self) -> bool {
        self.header_type & HEADER_LAYOUT_MASK == HEADER_LAYOUT_BRIDGE
    }

    /// Whether the header type's multi-function bit is set.
    pub fn is_multi_function(&self) -> bool {
        self.header_type & HEADER_MULTI_FUNCTION != 0
    }

    /// Human-readable class, see [`class_name`].
    pub fn class_name(&self) -> &'static str {
        class_name(self.class, self.subclass)
    }
}

impl fmt::Display for Function {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {:04x}:{:04x} class {:02x}.{:02x}.{:02x} {}",
            self.addr,
            self.vendor_id,
            self.device_id,
            self.class,
            self.subclass,
            self.prog_if,
            self.class_name()
        )?;
        for bar in &self.bars {
            write!(f, " {bar}")?;
        }
        Ok(())
    }
}

/// A short name for a class/subclass pair (PCI Code and ID Assignment
/// Specification), falling back to the base class, then to `"unknown"`.
pub fn class_name(class: u8, subclass: u8) -> &'static str {
    match (class, subclass) {
        (0x00, 0x01) => "VGA-compatible device",
        (0x00, _) => "unclassified device",

        (0x01, 0x00) => "SCSI controller",
        (0x01, 0x01) => "IDE controller",
        (0x01, 0x02) => "floppy controller",
        (0x01, 0x04) => "RAID controller",
        (0x01, 0x05) => "ATA controller",
        (0x01, 0x06) => "SATA controller",
        (0x01, 0x07) => "SAS controller",
        (0x01, 0x08) => "NVMe controller",
        (0x01, _) => "storage controller",

        (0x02, 0x00) => "ethernet controller",
        (0x02, 0x80) => "network controller",
        (0x02, _) => "network controller",

        (0x03, 0x00) => "VGA controller",
        (0x03, 0x01) => "XGA controller",
        (0x03, 0x02) => "3D controller",
        (0x03, _) => "display controller",

        (0x04, 0x00) => "video device",
        (0x04, 0x01) => "audio device",
        (0x04, 0x03) => "HD audio device",
        (0x04, _) => "multimedia controller",

        (0x05, 0x00) => "RAM controller",
        (0x05, _) => "memory controller",

        (0x06, 0x00) => "host bridge",
        (0x06, 0x01) => "ISA bridge",
        (0x06, 0x02) => "EISA bridge",
        (0x06, 0x04) => "PCI bridge",
        (0x06, 0x07) => "CardBus bridge",
        (0x06, 0x09) => "PCI bridge",
        (0x06, _) => "bridge",

        (0x07, 0x00) => "serial controller",
        (0x07, 0x01) => "parallel controller",
        (0x07, _) => "communication controller",

        (0x08, 0x00) => "interrupt controller",
        (0x08, 0x01) => "DMA controller",
        (0x08, 0x02) => "timer",
        (0x08, 0x03) => "RTC",
        (0x08, 0x05) => "SD host controller",
        (0x08, 0x06) => "IOMMU",
        (0x08, _) => "system peripheral",

        (0x09, _) => "input device controller",
        (0x0a, _) => "docking station",
        (0x0b, _) => "processor",

        (0x0c, 0x00) => "FireWire controller",
        (0x0c, 0x03) => "USB controller",
        (0x0c, 0x04) => "Fibre Channel controller",
        (0x0c, 0x05) => "SMBus controller",
        (0x0c, _) => "serial bus controller",

        (0x0d, _) => "wireless controller",
        (0x0e, _) => "intelligent controller",
        (0x0f, _) => "satellite controller",
        (0x10, _) => "encryption controller",
        (0x11, _) => "signal processing controller",
        (0x12, _) => "processing accelerator",
        _ => "unknown",
    }
}

/// Finds every function reachable from bus 0, sorted by address.
///
/// BAR sizing briefly disables each function's I/O and memory decoding
/// (except on host bridges, which keep decoding: on some chipsets turning
/// that off cuts the CPU off from RAM). Only the command register and the
/// BARs are written, and both are restored before the next function is
/// probed; nothing is logged while a function's decoding is off.
pub fn enumerate(cs: &mut dyn ConfigSpace) -> Vec<Function> {
    let mut found = Vec::new();
    // A bus is claimed when it is queued, so that two bridges naming the same
    // secondary bus, or a bridge naming a bus already scanned, are caught
    // before the bus is scanned a second time.
    let mut claimed = [false; 256];
    claimed[0] = true;
    let mut pending: Vec<u8> = Vec::from([0]);

    while let Some(bus) = pending.pop() {
        for device in 0..32 {
            let first = found.len();
            scan_device(cs, bus, device, &mut found);
            for function in &found[first..] {
                if !function.is_bridge() {
                    continue;
                }
                let [_primary, secondary, _subordinate, _] =
                    cs.read32(function.addr, REG_BRIDGE_BUSES).to_le_bytes();
                if secondary == 0 {
                    // Bus 0 is never behind a bridge: 0 means firmware left
                    // this bridge unconfigured, and there is nothing to follow.
                    log::warn!(
                        "pci: bridge {} has no secondary bus; not scanning behind it",
                        function.addr
                    );
                } else if claimed[usize::from(secondary)] {
                    log::warn!(
                        "pci: bridge {} leads to bus {secondary:02x}, which is already scanned; \
                         ignoring (bridge loop or overlapping bus ranges)",
                        function.addr
                    );
                } else {
                    claimed[usize::from(secondary)] = true;
                    pending.push(secondary);
                }
            }
        }
    }
    found.sort_by_key(|f| f.addr);
    found
}

/// Probes function 0 of a device and, if it says it is multi-function,
/// functions 1-7, appending what exists to `found`.
fn scan_device(cs: &mut dyn ConfigSpace, bus: u8, device: u8, found: &mut Vec<Function>) {
    let Some(f0) = probe_function(
        cs,
        PciAddress {
            bus,
            device,
            function: 0,
        },
    ) else {
        // A device must implement function 0 (§6.1), so nothing else is there.
        return;
    };
    // Single-function devices may decode only the device number and answer
    // for every function number with function 0's registers; without this
    // check they would be listed eight times.
    let multi = f0.is_multi_function();
    found.push(f0);
    if multi {
        for function in 1..8 {
            if let Some(f) = probe_function(
                cs,
                PciAddress {
                    bus,
                    device,
                    function,
                },
            ) {
                found.push(f);
            }
        }
    }
}

fn probe_function(cs: &mut dyn ConfigSpace, addr: PciAddress) -> Option<Function> {
    let [vendor_lo, vendor_hi, device_lo, device_hi] = cs.read32(addr, REG_ID).to_le_bytes();
    let vendor_id = u16::from_le_bytes([vendor_lo, vendor_hi]);
    // 0xFFFF is what a read of an absent function returns; 0x0000 is not a
    // valid vendor either and is what some broken bridges return instead.
    if vendor_id == 0xffff || vendor_id == 0x0000 {
        return None;
    }
    let device_id = u16::from_le_bytes([device_lo, device_hi]);
    let [revision, prog_if, subclass, class] = cs.read32(addr, REG_CLASS).to_le_bytes();
    let [_, _, header_type, _] = cs.read32(addr, REG_HEADER).to_le_bytes();
    let bar_count = match header_type & HEADER_LAYOUT_MASK {
        HEADER_LAYOUT_DEVICE => 6,
        HEADER_LAYOUT_BRIDGE => 2,
        // CardBus bridges (layout 2) and anything newer: not decoded.
        _ => 0,
    };
    // Linux keeps decoding on while sizing a host bridge's BARs
    // (quirk_mmio_always_on): on some chipsets turning off the host bridge's
    // memory decoding cuts the CPU off from RAM.
    let keep_decoding = class == 0x06 && subclass == 0x00;
    let raw = size_bars(cs, addr, bar_count, keep_decoding);
    let bars = decode_bars(addr, &raw[..bar_count]);
    Some(Function {
        addr,
        vendor_id,
        device_id,
        class,
        subclass,
        prog_if,
        revision,
        header_type,
        bars,
    })
}

/// What one BAR slot held and what it read back after all ones were written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct RawBar {
    original: u32,
    probe: u32,
}

/// Sizes the first `count` BAR slots (§6.2.5.1): for each, save it, write all
/// ones, read back which address bits stuck, and write the saved value back.
///
/// The function's I/O and memory decoding are off meanwhile (unless
/// `keep_decoding`): with all ones in a BAR the function would otherwise
/// claim accesses at the top of the address space (or, with a 64-bit BAR
/// half-written, anywhere), stealing cycles meant for other devices or RAM.
/// Each dword of a 64-bit BAR is sized on its own, as Linux does; with
/// decoding off the intermediate state is harmless.
///
/// Nothing is logged in here: if the console sits behind this very function
/// (a framebuffer, a PCI UART), a log line would go nowhere or fault.
fn size_bars(
    cs: &mut dyn ConfigSpace,
    addr: PciAddress,
    count: usize,
    keep_decoding: bool,
) -> [RawBar; 6] {
    let mut raw = [RawBar::default(); 6];
    if count == 0 {
        return raw;
    }
    // Only the command half is written back: status bits are
    // write-one-to-clear (§6.2.3), so writing the status we read would clear
    // any error bits it holds. Zeros leave them alone.
    let command = cs.read32(addr, REG_COMMAND) & 0xffff;
    let decode = command & (CMD_IO_SPACE | CMD_MEMORY_SPACE);
    let disable = decode != 0 && !keep_decoding;
    if disable {
        cs.write32(addr, REG_COMMAND, command & !decode);
    }
    for (slot, offset) in raw.iter_mut().zip((REG_BAR0..).step_by(4)).take(count) {
        let original = cs.read32(addr, offset);
        cs.write32(addr, offset, u32::MAX);
        let probe = cs.read32(addr, offset);
        cs.write32(addr, offset, original);
        *slot = RawBar { original, probe };
    }
    if disable {
        cs.write32(addr, REG_COMMAND, command);
    }
    raw
}

/// Turns sized BAR slots into [`Bar`]s, skipping unimplemented ones.
fn decode_bars(addr: PciAddress, raw: &[RawBar]) -> Vec<Bar> {
    let mut bars = Vec::new();
    let mut slots = raw.iter().zip(0u8..);
    while let Some((bar, index)) = slots.next() {
        if bar.original & BAR_IO != 0 {
            let mask = bar.probe & BAR_IO_ADDR_MASK;
            // The size is the lowest address bit that stuck. Not `!mask + 1`:
            // many I/O BARs decode only 16 bits, so the upper half reads 0.
            if mask != 0 {
                bars.push(Bar::Io {
                    index,
                    port: bar.original & BAR_IO_ADDR_MASK,
                    size: lowest_bit32(mask),
                });
            }
            continue;
        }
        let prefetchable = bar.original & BAR_MEM_PREFETCHABLE != 0;
        match (bar.original >> BAR_MEM_TYPE_SHIFT) & 0x3 {
            // 0: anywhere in 32 bits; 1: below 1 MiB (PCI 2.x legacy).
            0 | 1 => {
                let mask = bar.probe & BAR_MEM_ADDR_MASK;
                if mask != 0 {
                    bars.push(Bar::Mem32 {
                        index,
                        addr: bar.original & BAR_MEM_ADDR_MASK,
                        size: lowest_bit32(mask),
                        prefetchable,
                    });
                }
            }
            2 => {
                let Some((high, _)) = slots.next() else {
                    log::warn!("pci: {addr} bar{index} is 64-bit but is the last BAR; ignored");
                    break;
                };
                let mask = u64::from(high.probe) << 32 | u64::from(bar.probe & BAR_MEM_ADDR_MASK);
                if mask != 0 {
                    bars.push(Bar::Mem64 {
                        index,
                        addr: u64::from(high.original) << 32
                            | u64::from(bar.original & BAR_MEM_ADDR_MASK),
                        size: mask & mask.wrapping_neg(),
                        prefetchable,
                    });
                }
            }
            _ => log::warn!(
                "pci: {addr} bar{index} has the reserved memory type ({:#010x}); ignored",
                bar.original
            ),
        }
    }
    bars
}

/// The lowest set bit of a non-zero value.
fn lowest_bit32(v: u32) -> u32 {
    v & v.wrapping_neg()
}

#[cfg(target_os = "none")]
pub mod port;

#[cfg(test)]
mod tests;
