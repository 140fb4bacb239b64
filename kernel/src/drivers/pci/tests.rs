//! Host tests of the pci driver.
use super::*;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec;

fn at(bus: u8, device: u8, function: u8) -> PciAddress {
    PciAddress {
        bus,
        device,
        function,
    }
}

/// Status bits that are write-one-to-clear (§6.2.3): parity, system
/// error, master/target abort, signalled target abort, master data parity.
const STATUS_RW1C: u32 = 0xf900;

/// One fake function: 64 config dwords and, per dword, which bits a write
/// changes (the rest are read-only, like BAR type bits and the low
/// address bits that encode a BAR's size).
#[derive(Clone)]
struct FakeFn {
    addr: PciAddress,
    regs: [u32; 64],
    writable: [u32; 64],
    /// Answers for every function number of its device (a single-function
    /// device that does not decode the function number).
    alias_functions: bool,
}

impl FakeFn {
    fn new(addr: PciAddress, vendor: u16, device: u16, class: [u8; 3], header_type: u8) -> Self {
        let mut regs = [0; 64];
        let mut writable = [0; 64];
        regs[0] = u32::from(device) << 16 | u32::from(vendor);
        regs[2] = u32::from_le_bytes([0x02, class[2], class[1], class[0]]);
        regs[3] = u32::from(header_type) << 16;
        writable[1] = 0x0000_07ff; // command bits; status handled as RW1C
        if header_type & 0x7f == 1 {
            writable[6] = 0x00ff_ffff; // bus numbers
        }
        FakeFn {
            addr,
            regs,
            writable,
            alias_functions: false,
        }
    }

    fn command(mut self, command: u16, status: u16) -> Self {
        self.regs[1] = u32::from(status) << 16 | u32::from(command);
        self
    }

    fn io_bar(mut self, index: usize, port: u32, size: u32, decode_bits: u32) -> Self {
        self.regs[4 + index] = port | 1;
        self.writable[4 + index] = !(size - 1) & decode_bits & !0x3;
        self
    }

    fn mem32_bar(mut self, index: usize, addr: u32, size: u32, pf: bool) -> Self {
        self.regs[4 + index] = addr | if pf { 0x8 } else { 0 };
        self.writable[4 + index] = !(size - 1) & !0xf;
        self
    }

    fn mem64_bar(mut self, index: usize, addr: u64, size: u64, pf: bool) -> Self {
        let mask = !(size - 1) & !0xf;
        self.regs[4 + index] = (addr as u32) | 0x4 | if pf { 0x8 } else { 0 };
        self.regs[5 + index] = (addr >> 32) as u32;
        self.writable[4 + index] = mask as u32;
        self.writable[5 + index] = (mask >> 32) as u32;
        self
    }

    fn buses(mut self, primary: u8, secondary: u8, subordinate: u8) -> Self {
        self.regs[6] = u32::from_le_bytes([primary, secondary, subordinate, 0]);
        self
    }

    fn aliased(mut self) -> Self {
        self.alias_functions = true;
        self
    }
}

#[derive(Default)]
struct FakeBus {
    fns: Vec<FakeFn>,
    reads: Vec<(PciAddress, u8)>,
    writes: Vec<(PciAddress, u8, u32)>,
    /// Protocol violations seen (BAR probed with decoding on, unaligned
    /// offsets).
    violations: Vec<String>,
}

impl FakeBus {
    fn new(fns: Vec<FakeFn>) -> Self {
        FakeBus {
            fns,
            ..Default::default()
        }
    }

    fn find(&self, addr: PciAddress) -> Option<usize> {
        self.fns.iter().position(|f| f.addr == addr).or_else(|| {
            self.fns.iter().position(|f| {
                f.alias_functions && f.addr.bus == addr.bus && f.addr.device == addr.device
            })
        })
    }
}

impl ConfigSpace for FakeBus {
    fn read32(&mut self, addr: PciAddress, offset: u8) -> u32 {
        self.reads.push((addr, offset));
        if !offset.is_multiple_of(4) {
            self.violations
                .push(format!("unaligned read {addr} {offset:#x}"));
        }
        match self.find(addr) {
            Some(i) => self.fns[i].regs[usize::from(offset / 4)],
            None => u32::MAX,
        }
    }

    fn write32(&mut self, addr: PciAddress, offset: u8, value: u32) {
        self.writes.push((addr, offset, value));
        if !offset.is_multiple_of(4) {
            self.violations
                .push(format!("unaligned write {addr} {offset:#x}"));
        }
        let Some(n) = self.find(addr) else { return };
        let f = &mut self.fns[n];
        let i = usize::from(offset / 4);
        let host_bridge = f.regs[2] >> 16 == 0x0600;
        let decoding = f.regs[1] & 0x3 != 0;
        if i == 1 {
            let status = (f.regs[1] >> 16) & !(value >> 16 & STATUS_RW1C);
            let command = value & f.writable[1];
            f.regs[1] = status << 16 | command;
        } else {
            f.regs[i] = (value & f.writable[i]) | (f.regs[i] & !f.writable[i]);
        }
        if (0x10..=0x24).contains(&offset) && value == u32::MAX && decoding && !host_bridge {
            self.violations
                .push(format!("{addr} BAR at {offset:#x} probed with decoding on"));
        }
    }
}

/// A q35-like machine: bus 0 with the usual devices, a bridge to bus 1,
/// a bridge behind it to bus 2, and two misprogrammed bridges on bus 2
/// pointing back at buses 1 and 2.
fn q35_like() -> Vec<FakeFn> {
    vec![
        FakeFn::new(at(0, 0, 0), 0x8086, 0x29c0, [0x06, 0x00, 0x00], 0x00).command(0x0006, 0x0000),
        FakeFn::new(at(0, 1, 0), 0x1234, 0x1111, [0x03, 0x00, 0x00], 0x00)
            .command(0x0003, 0x0000)
            .mem32_bar(0, 0xfd00_0000, 0x100_0000, true)
            .mem32_bar(2, 0xfebd_4000, 0x1000, false),
        FakeFn::new(at(0, 2, 0), 0x8086, 0x100e, [0x02, 0x00, 0x00], 0x00)
            // Status: capability list (read-only) plus a pending
            // signalled-system-error bit that must survive the scan.
            .command(0x0107, 0x4010)
            .mem32_bar(0, 0xfebc_0000, 0x2_0000, false)
            .io_bar(1, 0xc000, 0x40, u32::MAX),
        FakeFn::new(at(0, 3, 0), 0x1af4, 0x1041, [0x02, 0x00, 0x00], 0x00)
            .command(0x0007, 0x0010)
            .mem32_bar(1, 0xfebd_5000, 0x1000, false)
            .mem64_bar(4, 0x8_0000_0000, 0x4000, true),
        FakeFn::new(at(0, 4, 0), 0x1b36, 0x0010, [0x01, 0x08, 0x02], 0x00)
            .command(0x0002, 0x0010)
            .mem64_bar(0, 0xfebd_0000, 0x4000, false),
        // Single-function device that answers for every function number.
        FakeFn::new(at(0, 5, 0), 0x8086, 0x7010, [0x01, 0x01, 0x80], 0x00)
            .command(0x0001, 0x0000)
            .io_bar(4, 0xc040, 0x10, 0xffff)
            .aliased(),
        // Function 1 without a function 0: not a device.
        FakeFn::new(at(0, 6, 1), 0x8086, 0xdead, [0x02, 0x00, 0x00], 0x00),
        // Function 3 on a device whose function 0 is not multi-function.
        FakeFn::new(at(0, 7, 0), 0x8086, 0x1234, [0xff, 0x00, 0x00], 0x00),
        FakeFn::new(at(0, 7, 3), 0x8086, 0xbeef, [0x02, 0x00, 0x00], 0x00),
        // Bridge the firmware left unconfigured (secondary bus 0).
        FakeFn::new(at(0, 0x1c, 0), 0x8086, 0x2940, [0x06, 0x04, 0x00], 0x01)
            .command(0x0000, 0x0010),
        FakeFn::new(at(0, 0x1e, 0), 0x8086, 0x244e, [0x06, 0x04, 0x01], 0x01)
            .command(0x0007, 0x0000)
            .mem32_bar(0, 0xfebd_6000, 0x1000, false)
            .buses(0, 1, 3),
        FakeFn::new(at(0, 0x1f, 0), 0x8086, 0x2918, [0x06, 0x01, 0x00], 0x80)
            .command(0x0007, 0x0000),
        FakeFn::new(at(0, 0x1f, 2), 0x8086, 0x2922, [0x01, 0x06, 0x01], 0x00)
            .command(0x0007, 0x0010)
            .io_bar(4, 0xc060, 0x20, u32::MAX)
            .mem32_bar(5, 0xfebd_7000, 0x1000, false),
        FakeFn::new(at(0, 0x1f, 3), 0x8086, 0x2930, [0x0c, 0x05, 0x00], 0x00)
            .command(0x0001, 0x0000)
            .io_bar(4, 0x0700, 0x40, u32::MAX),
        // Bus 1, behind 00:1e.0.
        FakeFn::new(at(1, 0, 0), 0x8086, 0x10d3, [0x02, 0x00, 0x00], 0x00)
            .command(0x0003, 0x0000)
            .mem32_bar(0, 0xfe80_0000, 0x2_0000, false)
            .io_bar(2, 0xd000, 0x20, u32::MAX),
        FakeFn::new(at(1, 1, 0), 0x1b36, 0x0001, [0x06, 0x04, 0x00], 0x01)
            .command(0x0003, 0x0000)
            .buses(1, 2, 3),
        // Bus 2: a bridge back to bus 1, one to itself, and a device.
        FakeFn::new(at(2, 0, 0), 0x1b36, 0x0001, [0x06, 0x04, 0x00], 0x01).buses(2, 1, 1),
        FakeFn::new(at(2, 1, 0), 0x1b36, 0x0001, [0x06, 0x04, 0x00], 0x01).buses(2, 2, 2),
        FakeFn::new(at(2, 3, 0), 0x1af4, 0x1042, [0x01, 0x00, 0x00], 0x00)
            .command(0x0002, 0x0000)
            .mem64_bar(4, 0xfe00_0000, 0x4000, true),
    ]
}

const Q35_EXPECTED: &[&str] = &[
    "00:00.0 8086:29c0 class 06.00.00 host bridge",
    "00:01.0 1234:1111 class 03.00.00 VGA controller bar0=mem32:0xfd000000/0x1000000,pf \
     bar2=mem32:0xfebd4000/0x1000",
    "00:02.0 8086:100e class 02.00.00 ethernet controller bar0=mem32:0xfebc0000/0x20000 \
     bar1=io:0xc000/0x40",
    "00:03.0 1af4:1041 class 02.00.00 ethernet controller bar1=mem32:0xfebd5000/0x1000 \
     bar4=mem64:0x800000000/0x4000,pf",
    "00:04.0 1b36:0010 class 01.08.02 NVMe controller bar0=mem64:0xfebd0000/0x4000",
    "00:05.0 8086:7010 class 01.01.80 IDE controller bar4=io:0xc040/0x10",
    "00:07.0 8086:1234 class ff.00.00 unknown",
    "00:1c.0 8086:2940 class 06.04.00 PCI bridge",
    "00:1e.0 8086:244e class 06.04.01 PCI bridge bar0=mem32:0xfebd6000/0x1000",
    "00:1f.0 8086:2918 class 06.01.00 ISA bridge",
    "00:1f.2 8086:2922 class 01.06.01 SATA controller bar4=io:0xc060/0x20 \
     bar5=mem32:0xfebd7000/0x1000",
    "00:1f.3 8086:2930 class 0c.05.00 SMBus controller bar4=io:0x700/0x40",
    "01:00.0 8086:10d3 class 02.00.00 ethernet controller bar0=mem32:0xfe800000/0x20000 \
     bar2=io:0xd000/0x20",
    "01:01.0 1b36:0001 class 06.04.00 PCI bridge",
    "02:00.0 1b36:0001 class 06.04.00 PCI bridge",
    "02:01.0 1b36:0001 class 06.04.00 PCI bridge",
    "02:03.0 1af4:1042 class 01.00.00 SCSI controller bar4=mem64:0xfe000000/0x4000,pf",
];

fn lines(fns: &[Function]) -> Vec<String> {
    fns.iter().map(|f| f.to_string()).collect()
}

#[test]
fn q35_like_enumeration_display() {
    let mut bus = FakeBus::new(q35_like());
    let found = enumerate(&mut bus);
    assert_eq!(lines(&found), Q35_EXPECTED);
    assert!(bus.violations.is_empty(), "{:?}", bus.violations);
}

#[test]
fn q35_like_fields() {
    let mut bus = FakeBus::new(q35_like());
    let found = enumerate(&mut bus);
    let e1000 = found.iter().find(|f| f.addr == at(0, 2, 0)).unwrap();
    assert_eq!(
        *e1000,
        Function {
            addr: at(0, 2, 0),
            vendor_id: 0x8086,
            device_id: 0x100e,
            class: 0x02,
            subclass: 0x00,
            prog_if: 0x00,
            revision: 0x02,
            header_type: 0x00,
            bars: vec![
                Bar::Mem32 {
                    index: 0,
                    addr: 0xfebc_0000,
                    size: 0x2_0000,
                    prefetchable: false
                },
                Bar::Io {
                    index: 1,
                    port: 0xc000,
                    size: 0x40
                },
            ],
        }
    );
    let lpc = found.iter().find(|f| f.addr == at(0, 0x1f, 0)).unwrap();
    assert!(lpc.is_multi_function() && !lpc.is_bridge());
    let bridge = found.iter().find(|f| f.addr == at(0, 0x1e, 0)).unwrap();
    assert!(bridge.is_bridge() && !bridge.is_multi_function());
    assert_eq!(bridge.class_name(), "PCI bridge");
}

#[test]
fn registers_are_restored() {
    let before = q35_like();
    let mut bus = FakeBus::new(before.clone());
    enumerate(&mut bus);
    for (b, a) in before.iter().zip(&bus.fns) {
        assert_eq!(b.regs, a.regs, "{} changed", b.addr);
    }
    // The pending RW1C status bit of the e1000 was not cleared.
    assert_eq!(bus.fns[2].regs[1] >> 16, 0x4010);
}

#[test]
fn command_register_protocol() {
    let mut bus = FakeBus::new(q35_like());
    enumerate(&mut bus);
    let cmd_writes = |a: PciAddress| -> Vec<u32> {
        bus.writes
            .iter()
            .filter(|w| w.0 == a && w.1 == REG_COMMAND)
            .map(|w| w.2)
            .collect()
    };
    // Decoding off, then the original command back; status half zero.
    assert_eq!(cmd_writes(at(0, 2, 0)), [0x0104, 0x0107]);
    assert_eq!(cmd_writes(at(0, 4, 0)), [0x0000, 0x0002]);
    assert_eq!(cmd_writes(at(0, 5, 0)), [0x0000, 0x0001]);
    // Decoding already off: no command writes at all.
    assert_eq!(cmd_writes(at(0, 0x1c, 0)), []);
    // The host bridge keeps decoding (see probe_function).
    assert_eq!(cmd_writes(at(0, 0, 0)), []);
    // Every BAR write on the e1000 happens between the two command writes.
    let e1000: Vec<_> = bus.writes.iter().filter(|w| w.0 == at(0, 2, 0)).collect();
    assert_eq!(e1000.first().unwrap().1, REG_COMMAND);
    assert_eq!(e1000.last().unwrap().1, REG_COMMAND);
    assert_eq!(e1000.len(), 2 + 6 * 2);
}

#[test]
fn bridges_size_two_bars_and_never_touch_bus_numbers() {
    let mut bus = FakeBus::new(q35_like());
    enumerate(&mut bus);
    for bridge in [at(0, 0x1e, 0), at(1, 1, 0), at(2, 0, 0)] {
        let offsets: Vec<u8> = bus
            .writes
            .iter()
            .filter(|w| w.0 == bridge && w.1 != REG_COMMAND)
            .map(|w| w.1)
            .collect();
        assert_eq!(offsets, [0x10, 0x10, 0x14, 0x14], "{bridge}");
    }
}

#[test]
fn single_function_devices_are_not_probed_beyond_function_0() {
    let mut bus = FakeBus::new(q35_like());
    enumerate(&mut bus);
    for device in [5, 6, 7] {
        let probed: Vec<u8> = bus
            .reads
            .iter()
            .filter(|r| r.0.bus == 0 && r.0.device == device && r.0.function != 0)
            .map(|r| r.0.function)
            .collect();
        assert_eq!(probed, [], "00:{device:02x}");
    }
    // The multi-function device had all of 1-7 probed.
    let mut probed: Vec<u8> = bus
        .reads
        .iter()
        .filter(|r| r.0.bus == 0 && r.0.device == 0x1f && r.1 == REG_ID)
        .map(|r| r.0.function)
        .collect();
    probed.dedup();
    assert_eq!(probed, [0, 1, 2, 3, 4, 5, 6, 7]);
}

#[test]
fn each_bus_scanned_once_despite_loops() {
    let mut bus = FakeBus::new(q35_like());
    let found = enumerate(&mut bus);
    for b in 0..=2u8 {
        let id_reads = bus
            .reads
            .iter()
            .filter(|r| r.0.bus == b && r.0.function == 0 && r.1 == REG_ID);
        assert_eq!(id_reads.count(), 32, "bus {b}");
    }
    // Bus 3 is in 00:1e.0's subordinate range but no bridge leads there.
    assert!(bus.reads.iter().all(|r| r.0.bus <= 2));
    let mut addrs: Vec<_> = found.iter().map(|f| f.addr).collect();
    addrs.dedup();
    assert_eq!(addrs.len(), found.len());
}

#[test]
fn empty_bus() {
    let mut bus = FakeBus::new(Vec::new());
    assert!(enumerate(&mut bus).is_empty());
    assert_eq!(bus.reads.len(), 32);
    assert!(bus.writes.is_empty());
}

#[test]
fn vendor_zero_is_absent() {
    let mut bus = FakeBus::new(vec![FakeFn::new(
        at(0, 3, 0),
        0x0000,
        0x0000,
        [0x02, 0, 0],
        0,
    )]);
    assert!(enumerate(&mut bus).is_empty());
}

#[test]
fn bridge_chain_to_a_high_bus() {
    // A bridge on bus 0 to bus 0x80, and a bridge there to 0xff.
    let mut bus = FakeBus::new(vec![
        FakeFn::new(at(0, 1, 0), 0x1b36, 0x0001, [0x06, 0x04, 0x00], 0x01).buses(0, 0x80, 0xff),
        FakeFn::new(at(0x80, 0x1f, 0), 0x1b36, 0x0001, [0x06, 0x04, 0x00], 0x01)
            .buses(0x80, 0xff, 0xff),
        FakeFn::new(at(0xff, 0x1f, 7), 0x1b36, 0x0002, [0x07, 0x00, 0x02], 0x00),
        FakeFn::new(at(0xff, 0x1f, 0), 0x1b36, 0x0002, [0x07, 0x00, 0x02], 0x80),
    ]);
    let found = enumerate(&mut bus);
    assert_eq!(
        lines(&found),
        [
            "00:01.0 1b36:0001 class 06.04.00 PCI bridge",
            "80:1f.0 1b36:0001 class 06.04.00 PCI bridge",
            "ff:1f.0 1b36:0002 class 07.00.02 serial controller",
            "ff:1f.7 1b36:0002 class 07.00.02 serial controller",
        ]
    );
}

#[test]
fn large_and_odd_bars() {
    let dev = FakeFn::new(at(0, 1, 0), 0x1234, 0x5678, [0x12, 0x00, 0x00], 0x00)
        .command(0x0002, 0)
        // 8 GiB above 4 GiB: the low dword has no writable address bits.
        .mem64_bar(0, 0x40_0000_0000, 0x2_0000_0000, true)
        // Legacy "below 1 MiB" type: decoded as 32-bit.
        .mem32_bar(2, 0x000d_0000, 0x1_0000, false);
    let mut dev = dev;
    dev.regs[6] |= 0x2;
    // Reserved memory type 3: skipped.
    dev.regs[7] = 0xfebf_0006;
    dev.writable[7] = 0xffff_f000;
    // 4 GiB 32-bit BAR cannot exist, but the largest one can: 2 GiB.
    dev = dev.mem32_bar(4, 0x8000_0000, 0x8000_0000, false);
    // A 64-bit BAR in the last slot has no high half: skipped.
    dev.regs[9] = 0xfebe_0004;
    dev.writable[9] = 0xffff_f000;
    let mut bus = FakeBus::new(vec![dev]);
    let found = enumerate(&mut bus);
    assert_eq!(
        lines(&found),
        ["00:01.0 1234:5678 class 12.00.00 processing accelerator \
          bar0=mem64:0x4000000000/0x200000000,pf bar2=mem32:0xd0000/0x10000 \
          bar4=mem32:0x80000000/0x80000000"]
    );
    assert!(bus.violations.is_empty(), "{:?}", bus.violations);
}

#[test]
fn last_64bit_bar_of_a_bridge_does_not_eat_the_bus_numbers() {
    let mut dev = FakeFn::new(at(0, 1, 0), 0x1234, 0x5678, [0x06, 0x04, 0x00], 0x01).buses(0, 0, 0);
    dev.regs[5] = 0x0000_0004; // BAR1: 64-bit, would need slot 2 (0x18)
    dev.writable[5] = 0xffff_f000;
    let mut bus = FakeBus::new(vec![dev]);
    let found = enumerate(&mut bus);
    assert_eq!(found[0].bars, []);
    assert!(bus.writes.iter().all(|w| w.1 != REG_BRIDGE_BUSES));
}

#[test]
fn cardbus_bars_are_not_decoded() {
    let mut dev = FakeFn::new(at(0, 1, 0), 0x104c, 0xac50, [0x06, 0x07, 0x00], 0x02);
    dev = dev.mem32_bar(0, 0xfebf_0000, 0x1000, false);
    let mut bus = FakeBus::new(vec![dev]);
    let found = enumerate(&mut bus);
    assert_eq!(
        lines(&found),
        ["00:01.0 104c:ac50 class 06.07.00 CardBus bridge"]
    );
    assert!(bus.writes.is_empty());
}

#[test]
fn address_display_and_cf8() {
    assert_eq!(at(0, 0, 0).to_string(), "00:00.0");
    assert_eq!(at(0xab, 0x1f, 7).to_string(), "ab:1f.7");
    assert_eq!(at(0, 2, 0).config_address(0x10), 0x8000_1010);
    assert_eq!(at(0xff, 0x1f, 7).config_address(0xfc), 0x80ff_fffc);
    assert_eq!(at(1, 0, 0).config_address(0x0), 0x8001_0000);
    // Out-of-range fields and unaligned offsets cannot corrupt the rest.
    assert_eq!(at(0, 0x20, 8).config_address(0x13), 0x8000_0010);
    assert!(at(0, 0x1f, 0) < at(1, 0, 0));
    assert!(at(0, 2, 7) < at(0, 3, 0));
}

#[test]
fn bar_display() {
    assert_eq!(
        Bar::Io {
            index: 1,
            port: 0xc000,
            size: 0x40
        }
        .to_string(),
        "bar1=io:0xc000/0x40"
    );
    assert_eq!(
        Bar::Mem32 {
            index: 0,
            addr: 0xfebc_0000,
            size: 0x2_0000,
            prefetchable: false
        }
        .to_string(),
        "bar0=mem32:0xfebc0000/0x20000"
    );
    assert_eq!(
        Bar::Mem32 {
            index: 2,
            addr: 0xfd00_0000,
            size: 0x100_0000,
            prefetchable: true
        }
        .to_string(),
        "bar2=mem32:0xfd000000/0x1000000,pf"
    );
    let b = Bar::Mem64 {
        index: 4,
        addr: 0x8_0000_0000,
        size: 0x4000,
        prefetchable: true,
    };
    assert_eq!(b.to_string(), "bar4=mem64:0x800000000/0x4000,pf");
    assert_eq!(b.index(), 4);
    assert_eq!(
        Bar::Mem64 {
            index: 0,
            addr: 0xfebd_0000,
            size: 0x4000,
            prefetchable: false
        }
        .to_string(),
        "bar0=mem64:0xfebd0000/0x4000"
    );
}

#[test]
fn class_names() {
    for (class, subclass, name) in [
        (0x06, 0x00, "host bridge"),
        (0x06, 0x01, "ISA bridge"),
        (0x06, 0x04, "PCI bridge"),
        (0x06, 0x80, "bridge"),
        (0x01, 0x01, "IDE controller"),
        (0x01, 0x06, "SATA controller"),
        (0x01, 0x08, "NVMe controller"),
        (0x01, 0x42, "storage controller"),
        (0x02, 0x00, "ethernet controller"),
        (0x02, 0x80, "network controller"),
        (0x03, 0x00, "VGA controller"),
        (0x0c, 0x03, "USB controller"),
        (0x0c, 0x05, "SMBus controller"),
        (0x08, 0x80, "system peripheral"),
        (0x13, 0x00, "unknown"),
        (0xff, 0x00, "unknown"),
    ] {
        assert_eq!(
            class_name(class, subclass),
            name,
            "{class:02x}.{subclass:02x}"
        );
    }
}
