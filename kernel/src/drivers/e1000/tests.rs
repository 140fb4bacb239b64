//! Host tests of the e1000 driver.
use super::*;
use alloc::rc::Rc;
use alloc::vec;
use alloc::vec::Vec;
use core::cell::RefCell;

const PHYS_BASE: u64 = 0x1000_0000;
const ARENA_BYTES: usize = 1 << 20;

/// Fake DMA memory, addressed by fake physical addresses from
/// `PHYS_BASE`. Both the driver (through `DmaRegion::ptr`) and the fake
/// device access it only through the raw pointer `base`.
struct Arena {
    base: *mut u8,
    next: usize,
    limit: usize,
}

impl Arena {
    fn new(limit: usize) -> Self {
        let mem: Vec<u64> = vec![0u64; ARENA_BYTES / 8];
        let base = Box::into_raw(mem.into_boxed_slice()).cast::<u8>();
        Arena {
            base,
            next: 0,
            limit,
        }
    }

    fn off(&self, phys: u64, len: usize) -> usize {
        let off = usize::try_from(phys - PHYS_BASE).unwrap();
        assert!(off + len <= ARENA_BYTES, "fake DMA out of arena");
        off
    }

    fn read(&self, phys: u64, len: usize) -> Vec<u8> {
        let off = self.off(phys, len);
        let mut v = vec![0u8; len];
        // SAFETY: `off..off+len` is inside the arena allocation (checked
        // by `off`); `v` is a separate allocation.
        unsafe { core::ptr::copy_nonoverlapping(self.base.add(off), v.as_mut_ptr(), len) };
        v
    }

    fn write(&self, phys: u64, data: &[u8]) {
        let off = self.off(phys, data.len());
        // SAFETY: as in `read`.
        unsafe { core::ptr::copy_nonoverlapping(data.as_ptr(), self.base.add(off), data.len()) };
    }

    fn read_u64(&self, phys: u64) -> u64 {
        u64::from_le_bytes(self.read(phys, 8).try_into().unwrap())
    }

    fn read_u16(&self, phys: u64) -> u16 {
        u16::from_le_bytes(self.read(phys, 2).try_into().unwrap())
    }
}

impl Drop for Arena {
    fn drop(&mut self) {
        let slice = core::ptr::slice_from_raw_parts_mut(self.base.cast::<u64>(), ARENA_BYTES / 8);
        // SAFETY: `base` came from `Box::into_raw` of a boxed slice of
        // exactly this length, and is freed only here.
        drop(unsafe { Box::from_raw(slice) });
    }
}

type Shared<T> = Rc<RefCell<T>>;

struct FakeDma(Shared<Arena>);

impl Dma for FakeDma {
    fn alloc(&mut self, bytes: usize) -> Option<DmaRegion> {
        assert_eq!(bytes % PAGE, 0);
        let mut a = self.0.borrow_mut();
        if a.next + bytes > a.limit {
            return None;
        }
        let off = a.next;
        a.next += bytes;
        Some(DmaRegion {
            phys: PHYS_BASE + off as u64,
            ptr: a.base.wrapping_add(off),
            len: bytes,
        })
    }
}

/// A fake 82540EM: a register file plus the few behaviours the driver
/// relies on.
struct Dev {
    arena: Shared<Arena>,
    regs: Vec<u32>,
    /// CTRL reads until RST self-clears (`None`: never).
    reset_reads: Option<u32>,
    reset_left: u32,
    eeprom: [u16; 64],
    eeprom_works: bool,
    link_up: bool,
    /// When set, TDT writes do not send; `complete_tx` does.
    tx_paused: bool,
    sent: Vec<Vec<u8>>,
    ctrl_reads: u32,
}

#[derive(Clone)]
struct FakeRegs(Shared<Dev>);

impl Dev {
    fn new(arena: Shared<Arena>, mac: [u8; 6]) -> Self {
        let mut eeprom = [0u16; 64];
        for w in 0..3 {
            eeprom[w] = u16::from_le_bytes([mac[2 * w], mac[2 * w + 1]]);
        }
        Dev {
            arena,
            regs: vec![0; 0x20000 / 4],
            reset_reads: Some(3),
            reset_left: 0,
            eeprom,
            eeprom_works: true,
            link_up: true,
            tx_paused: false,
            sent: Vec::new(),
            ctrl_reads: 0,
        }
    }

    fn r(&self, off: u32) -> u32 {
        self.regs[off as usize / 4]
    }

    fn w(&mut self, off: u32, v: u32) {
        self.regs[off as usize / 4] = v;
    }

    fn bump(&mut self, off: u32) {
        let v = self.r(off) + 1;
        self.w(off, v);
    }

    /// Sends descriptors from TDH up to TDT.
    fn run_tx(&mut self) {
        if self.r(REG_TCTL) & TCTL_EN == 0 {
            return;
        }
        let n = self.r(REG_TDLEN) / DESC_SIZE as u32;
        let base = u64::from(self.r(REG_TDBAL)) | (u64::from(self.r(REG_TDBAH)) << 32);
        while self.r(REG_TDH) != self.r(REG_TDT) {
            let d = base + u64::from(self.r(REG_TDH)) * DESC_SIZE as u64;
            let arena = self.arena.borrow();
            let addr = arena.read_u64(d);
            let len = arena.read_u16(d + 8) as usize;
            let cmd = arena.read(d + 11, 1)[0];
            assert_eq!(cmd, TXD_CMD_EOP | TXD_CMD_IFCS | TXD_CMD_RS);
            let frame = arena.read(addr, len);
            arena.write(d + 12, &[TXD_STAT_DD]);
            drop(arena);
            self.sent.push(frame);
            self.bump(REG_GPTC);
            let h = (self.r(REG_TDH) + 1) % n;
            self.w(REG_TDH, h);
        }
    }

    /// Puts a frame into the descriptor at RDH like the NIC would.
    fn inject_raw(&mut self, frame: &[u8], status: u8, errors: u8) -> bool {
        if self.r(REG_RCTL) & RCTL_EN == 0 || self.r(REG_RDH) == self.r(REG_RDT) {
            self.bump(REG_MPC);
            self.bump(REG_RNBC);
            return false;
        }
        let n = self.r(REG_RDLEN) / DESC_SIZE as u32;
        let base = u64::from(self.r(REG_RDBAL)) | (u64::from(self.r(REG_RDBAH)) << 32);
        let d = base + u64::from(self.r(REG_RDH)) * DESC_SIZE as u64;
        {
            let arena = self.arena.borrow();
            let addr = arena.read_u64(d);
            assert_ne!(addr, 0);
            arena.write(addr, frame);
            arena.write(d + 8, &(frame.len() as u16).to_le_bytes());
            arena.write(d + 13, &[errors]);
            arena.write(d + 12, &[status]);
        }
        if errors & RXD_ERR_CE != 0 {
            self.bump(REG_CRCERRS);
        } else {
            self.bump(REG_GPRC);
        }
        let h = (self.r(REG_RDH) + 1) % n;
        self.w(REG_RDH, h);
        true
    }
}

impl Regs for FakeRegs {
    fn read(&mut self, offset: u32) -> u32 {
        let mut d = self.0.borrow_mut();
        match offset {
            REG_CTRL => {
                d.ctrl_reads += 1;
                let v = d.r(REG_CTRL);
                if v & CTRL_RST != 0 && d.reset_reads.is_some() {
                    if d.reset_left == 0 {
                        d.w(REG_CTRL, v & !CTRL_RST);
                    } else {
                        d.reset_left -= 1;
                    }
                }
                v
            }
            REG_STATUS => {
                if d.link_up {
                    STATUS_FD | STATUS_LU | (0b10 << STATUS_SPEED_SHIFT)
                } else {
                    0
                }
            }
            REG_ICR | REG_CRCERRS | REG_MPC | REG_RNBC | REG_GPRC | REG_GPTC => {
                let v = d.r(offset);
                d.w(offset, 0);
                v
            }
            _ => d.r(offset),
        }
    }

    fn write(&mut self, offset: u32, value: u32) {
        let mut d = self.0.borrow_mut();
        match offset {
            REG_CTRL if value & CTRL_RST != 0 => {
                // Reset: registers back to defaults; like Bochs, the
                // receive address registers read zero afterwards.
                d.regs.iter_mut().for_each(|r| *r = 0);
                d.w(REG_CTRL, value);
                d.reset_left = d.reset_reads.unwrap_or(0);
            }
            REG_EERD => {
                let v = if value & EERD_START != 0 && d.eeprom_works {
                    let word = (value >> EERD_ADDR_SHIFT) & 0xFF;
                    (u32::from(d.eeprom[word as usize]) << EERD_DATA_SHIFT)
                        | (word << EERD_ADDR_SHIFT)
                        | EERD_DONE
                } else {
                    value & !EERD_DONE
                };
                d.w(REG_EERD, v);
            }
            REG_TDT => {
                d.w(REG_TDT, value);
                if !d.tx_paused {
                    d.run_tx();
                }
            }
            _ => d.w(offset, value),
        }
    }
}

const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];

struct Rig {
    dev: Shared<Dev>,
    nic: E1000<FakeRegs>,
}

impl Rig {
    fn inject(&self, frame: &[u8]) -> bool {
        self.dev
            .borrow_mut()
            .inject_raw(frame, RXD_STAT_DD | RXD_STAT_EOP, 0)
    }
    fn reg(&self, off: u32) -> u32 {
        self.dev.borrow().r(off)
    }
}

fn fake(mac: [u8; 6]) -> (Shared<Dev>, FakeRegs, FakeDma) {
    let arena = Rc::new(RefCell::new(Arena::new(ARENA_BYTES)));
    let dev = Rc::new(RefCell::new(Dev::new(arena.clone(), mac)));
    (dev.clone(), FakeRegs(dev), FakeDma(arena))
}

fn rig() -> Rig {
    let (dev, regs, mut dma) = fake(MAC);
    let nic = E1000::new(regs, &mut dma).expect("init");
    Rig { dev, nic }
}

fn frame(seq: u32, len: usize) -> Vec<u8> {
    let mut f = vec![0u8; len];
    f[..6].copy_from_slice(&[0xff; 6]);
    f[6..12].copy_from_slice(&MAC);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    for (k, b) in f[14..].iter_mut().enumerate() {
        *b = (seq as usize * 7 + k) as u8;
    }
    if len >= 18 {
        f[14..18].copy_from_slice(&seq.to_le_bytes());
    }
    f
}

#[test]
fn init_reads_mac_and_programs_filters() {
    let r = rig();
    assert_eq!(r.nic.mac(), MAC);
    assert_eq!(r.reg(REG_RAL0), 0x1200_5452);
    assert_eq!(r.reg(REG_RAH0), 0x5634 | RAH_AV);
    for n in 0..MTA_DWORDS {
        assert_eq!(r.reg(REG_MTA + 4 * n), 0);
    }
    assert_eq!(r.reg(REG_IMC), 0xFFFF_FFFF);
    let ctrl = r.reg(REG_CTRL);
    assert_ne!(ctrl & CTRL_SLU, 0);
    assert_ne!(ctrl & CTRL_ASDE, 0);
    assert_eq!(
        ctrl & (CTRL_LRST | CTRL_PHY_RST | CTRL_ILOS | CTRL_VME | CTRL_RST),
        0
    );
}

#[test]
fn init_programs_rings_and_control_registers() {
    let r = rig();
    let rctl = r.reg(REG_RCTL);
    assert_eq!(
        rctl & (RCTL_EN | RCTL_BAM | RCTL_SECRC),
        RCTL_EN | RCTL_BAM | RCTL_SECRC
    );
    assert_eq!(
        rctl & (RCTL_BSIZE_MASK | RCTL_BSEX | RCTL_LPE | RCTL_SBP | RCTL_UPE | RCTL_MPE),
        0
    );
    assert_eq!(
        r.reg(REG_TCTL),
        TCTL_EN | TCTL_PSP | (0x10 << 4) | (0x40 << 12)
    );
    assert_eq!(r.reg(REG_TIPG), 10 | (8 << 10) | (6 << 20));
    assert_eq!(r.reg(REG_RDLEN), 128 * 16);
    assert_eq!(r.reg(REG_TDLEN), 64 * 16);
    assert_eq!(r.reg(REG_RDH), 0);
    assert_eq!(r.reg(REG_RDT), 127);
    assert_eq!(r.reg(REG_TDH), 0);
    assert_eq!(r.reg(REG_TDT), 0);
    for reg in [REG_RDBAL, REG_TDBAL] {
        assert_eq!(r.reg(reg) % 4096, 0);
        assert!(u64::from(r.reg(reg)) >= PHYS_BASE);
    }
    assert_eq!(r.reg(REG_RDBAH), 0);
}

#[test]
fn link_status() {
    let mut r = rig();
    assert!(r.nic.link_up());
    assert_eq!(r.nic.link_speed_mbps(), Some(1000));
    r.dev.borrow_mut().link_up = false;
    assert!(!r.nic.link_up());
    assert_eq!(r.nic.link_speed_mbps(), None);
}

#[test]
fn reset_timeout() {
    let (dev, regs, mut dma) = fake(MAC);
    dev.borrow_mut().reset_reads = None;
    assert_eq!(
        E1000::new(regs, &mut dma).err(),
        Some(E1000Error::ResetTimeout)
    );
    let reads = dev.borrow().ctrl_reads;
    assert!(
        (RESET_POLL_LIMIT..=RESET_POLL_LIMIT + 2).contains(&reads),
        "{reads}"
    );
}

#[test]
fn eeprom_timeout() {
    let (dev, regs, mut dma) = fake(MAC);
    dev.borrow_mut().eeprom_works = false;
    assert_eq!(
        E1000::new(regs, &mut dma).err(),
        Some(E1000Error::EepromTimeout)
    );
}

#[test]
fn bad_mac_rejected() {
    for mac in [[0u8; 6], [0x01, 0x00, 0x5e, 0, 0, 1], [0xff; 6]] {
        let (_dev, regs, mut dma) = fake(mac);
        assert_eq!(
            E1000::new(regs, &mut dma).err(),
            Some(E1000Error::BadMac(mac))
        );
    }
}

#[test]
fn no_dma_memory() {
    let arena = Rc::new(RefCell::new(Arena::new(64 * 1024)));
    let dev = Rc::new(RefCell::new(Dev::new(arena.clone(), MAC)));
    let mut dma = FakeDma(arena);
    assert_eq!(
        E1000::new(FakeRegs(dev), &mut dma).err(),
        Some(E1000Error::NoDmaMemory)
    );
}

#[test]
fn error_display() {
    let s = alloc::format!("{}", E1000Error::BadMac([1, 2, 3, 0xab, 0xcd, 0xef]));
    assert!(s.contains("01:02:03:ab:cd:ef"), "{s}");
    assert!(alloc::format!("{}", E1000Error::ResetTimeout).contains("reset"));
    assert!(alloc::format!("{}", E1000Error::EepromTimeout).contains("EEPROM"));
    assert!(alloc::format!("{}", E1000Error::NoDmaMemory).contains("DMA"));
    assert!(alloc::format!("{}", TxError::TooLong(1515)).contains("1515"));
}

#[test]
fn transmit_many_wraps_ring() {
    let mut r = rig();
    let mut bytes = 0u64;
    for seq in 0..1000u32 {
        let len = 14 + (seq as usize * 37) % (MAX_FRAME - 13);
        let f = frame(seq, len);
        assert!(r.nic.can_transmit());
        r.nic.transmit(&f).unwrap();
        bytes += len as u64;
        let dev = r.dev.borrow();
        assert_eq!(dev.sent.last().unwrap(), &f);
    }
    assert_eq!(r.dev.borrow().sent.len(), 1000);
    assert_eq!(r.reg(REG_TDT), 1000 % 64);
    let c = r.nic.counters();
    assert_eq!(c.tx_frames, 1000);
    assert_eq!(c.tx_bytes, bytes);
    assert_eq!(c.hw_tx_good, 1000);
    assert_eq!(c.tx_errors, 0);
}

#[test]
fn transmit_length_limits() {
    let mut r = rig();
    assert_eq!(r.nic.transmit(&[0u8; 1515]), Err(TxError::TooLong(1515)));
    assert_eq!(r.nic.transmit(&[0u8; 13]), Err(TxError::TooShort(13)));
    assert_eq!(r.nic.transmit(&[]), Err(TxError::TooShort(0)));
    assert!(r.dev.borrow().sent.is_empty());
    r.nic.transmit(&frame(1, MIN_FRAME)).unwrap();
    r.nic.transmit(&frame(2, MAX_FRAME)).unwrap();
    let dev = r.dev.borrow();
    assert_eq!(dev.sent.len(), 2);
    assert_eq!(dev.sent[1].len(), MAX_FRAME);
}

#[test]
fn transmit_ring_full_and_recovery() {
    let mut r = rig();
    // Advance the ring a little so "full" happens mid-ring.
    for seq in 0..10 {
        r.nic.transmit(&frame(seq, 60)).unwrap();
    }
    r.dev.borrow_mut().tx_paused = true;
    for seq in 0..(TX_RING_LEN as u32 - 1) {
        r.nic.transmit(&frame(100 + seq, 60)).unwrap();
    }
    assert!(!r.nic.can_transmit());
    assert_eq!(r.nic.transmit(&frame(999, 60)), Err(TxError::Full));
    assert_eq!(r.dev.borrow().sent.len(), 10);
    // The NIC catches up.
    {
        let mut d = r.dev.borrow_mut();
        d.tx_paused = false;
        d.run_tx();
    }
    assert!(r.nic.can_transmit());
    r.nic.transmit(&frame(999, 60)).unwrap();
    let dev = r.dev.borrow();
    assert_eq!(dev.sent.len(), 10 + 63 + 1);
    for (k, f) in dev.sent[10..73].iter().enumerate() {
        assert_eq!(f, &frame(100 + k as u32, 60));
    }
    assert_eq!(dev.sent[73], frame(999, 60));
}

#[test]
fn transmit_errors_counted() {
    let mut r = rig();
    r.dev.borrow_mut().tx_paused = true;
    r.nic.transmit(&frame(0, 60)).unwrap();
    r.nic.transmit(&frame(1, 60)).unwrap();
    // Complete both, the first with excess collisions.
    let base = u64::from(r.reg(REG_TDBAL));
    {
        let d = r.dev.borrow();
        let a = d.arena.borrow();
        a.write(base + 12, &[TXD_STAT_DD | TXD_STAT_EC]);
        a.write(base + 16 + 12, &[TXD_STAT_DD]);
    }
    let c = r.nic.counters();
    assert_eq!(c.tx_errors, 1);
    assert_eq!(c.tx_frames, 1);
    assert_eq!(c.tx_bytes, 60);
}

#[test]
fn receive_many_wraps_ring() {
    let mut r = rig();
    let mut buf = [0u8; 2048];
    let mut bytes = 0u64;
    for seq in 0..1000u32 {
        let len = 60 + (seq as usize * 53) % (MAX_FRAME - 59);
        let f = frame(seq, len);
        assert!(r.inject(&f), "frame {seq} missed");
        let n = r.nic.receive(&mut buf).expect("frame pending");
        assert_eq!(&buf[..n], &f[..]);
        bytes += len as u64;
        assert_eq!(r.nic.receive(&mut buf), None);
    }
    // Batches: fill the ring (127 usable descriptors), then drain.
    for round in 0..5u32 {
        let mut sent = Vec::new();
        for k in 0..127u32 {
            let f = frame(round * 1000 + k, 64 + k as usize);
            assert!(r.inject(&f));
            bytes += f.len() as u64;
            sent.push(f);
        }
        for f in &sent {
            let n = r.nic.receive(&mut buf).unwrap();
            assert_eq!(&buf[..n], &f[..]);
        }
        assert_eq!(r.nic.receive(&mut buf), None);
    }
    let c = r.nic.counters();
    assert_eq!(c.rx_frames, 1000 + 5 * 127);
    assert_eq!(c.rx_bytes, bytes);
    assert_eq!(c.hw_rx_good, 1000 + 5 * 127);
    assert_eq!(c.rx_dropped, 0);
}

#[test]
fn receive_empty() {
    let mut r = rig();
    let mut buf = [0u8; 2048];
    assert_eq!(r.nic.receive(&mut buf), None);
    assert_eq!(r.reg(REG_RDT), 127);
}

#[test]
fn receive_drops_error_and_fragmented_frames() {
    let mut r = rig();
    let mut buf = [0u8; 2048];
    {
        let mut d = r.dev.borrow_mut();
        assert!(d.inject_raw(&frame(1, 100), RXD_STAT_DD | RXD_STAT_EOP, RXD_ERR_CE));
        // A frame over three descriptors: two without EOP, one with.
        assert!(d.inject_raw(&frame(2, 100), RXD_STAT_DD, 0));
        assert!(d.inject_raw(&frame(3, 100), RXD_STAT_DD, 0));
        assert!(d.inject_raw(&frame(4, 100), RXD_STAT_DD | RXD_STAT_EOP, 0));
        assert!(d.inject_raw(&frame(5, 100), RXD_STAT_DD | RXD_STAT_EOP, 0));
    }
    let n = r.nic.receive(&mut buf).unwrap();
    assert_eq!(&buf[..n], &frame(5, 100)[..]);
    assert_eq!(r.nic.receive(&mut buf), None);
    // All five descriptors went back to the NIC.
    assert_eq!(r.reg(REG_RDT), 4);
    let c = r.nic.counters();
    assert_eq!(c.rx_frames, 1);
    assert_eq!(c.rx_errors, 1);
    assert_eq!(c.rx_dropped, 2);
    assert_eq!(c.crc_errors, 1);
}

#[test]
fn receive_small_buffer_drops() {
    let mut r = rig();
    assert!(r.inject(&frame(1, 200)));
    assert!(r.inject(&frame(2, 50)));
    let mut small = [0u8; 100];
    let n = r.nic.receive(&mut small).unwrap();
    assert_eq!(&small[..n], &frame(2, 50)[..]);
    assert_eq!(r.nic.counters().rx_dropped, 1);
}

#[test]
fn missed_frames_counted_and_ring_recovers() {
    let mut r = rig();
    let mut buf = [0u8; 2048];
    for k in 0..127 {
        assert!(r.inject(&frame(k, 60)));
    }
    // Ring full: the NIC misses these.
    for k in 0..5 {
        assert!(!r.inject(&frame(500 + k, 60)));
    }
    let c = r.nic.counters();
    assert_eq!(c.rx_dropped, 5);
    assert_eq!(c.rx_no_buffer, 5);
    for k in 0..127 {
        let n = r.nic.receive(&mut buf).unwrap();
        assert_eq!(&buf[..n], &frame(k, 60)[..]);
    }
    assert!(r.inject(&frame(7, 60)));
    assert!(r.nic.receive(&mut buf).is_some());
    // Hardware counters were cleared on read and accumulate.
    assert!(r.inject(&frame(8, 60)));
    assert!(r.nic.receive(&mut buf).is_some());
    let c = r.nic.counters();
    assert_eq!(c.rx_dropped, 5);
    assert_eq!(c.rx_frames, 129);
    assert_eq!(c.hw_rx_good, 129);
    assert_eq!(r.reg(REG_MPC), 0);
}

#[test]
fn round_trip_through_loopback() {
    // Everything the NIC sends comes back in: 1000 frames through both rings.
    let mut r = rig();
    let mut buf = [0u8; 2048];
    for seq in 0..1000u32 {
        let f = frame(seq, 14 + (seq as usize * 11) % 1500);
        r.nic.transmit(&f).unwrap();
        let out = r.dev.borrow_mut().sent.pop().unwrap();
        assert!(r.inject(&out));
        let n = r.nic.receive(&mut buf).unwrap();
        assert_eq!(&buf[..n], &f[..]);
    }
    let c = r.nic.counters();
    assert_eq!(c.tx_frames, 1000);
    assert_eq!(c.rx_frames, 1000);
    assert_eq!(c.tx_bytes, c.rx_bytes);
    assert_eq!(c.rx_dropped + c.rx_errors + c.tx_errors + c.crc_errors, 0);
}
