//! Polled driver for the Intel 82540EM gigabit Ethernet controller
//! (PCI 8086:100E, QEMU `-device e1000`, Bochs `e1000`).
//!
//! The driver is pure logic over two small traits: [`Regs`] (32-bit access
//! to the memory-mapped registers behind BAR0) and [`Dma`] (physically
//! contiguous memory the device can reach). The kernel glue implements them
//! with volatile MMIO and the frame allocator; the unit tests implement them
//! with a fake controller.
//!
//! References are to the *PCI/PCI-X Family of Gigabit Ethernet Controllers
//! Software Developer's Manual* (8254x SDM, 317453): chapter 3 (receive and
//! transmit descriptors), chapter 13 (register descriptions) and chapter 14
//! (general initialization).
//!
//! # Descriptor ring ownership
//!
//! Both rings are circular arrays of 16-byte legacy descriptors, each
//! pointing at its own 2048-byte buffer. The head register (RDH/TDH) is
//! advanced by the hardware, the tail register (RDT/TDT) by software.
//! Hardware owns the descriptors from head up to, *but not including*, tail;
//! head == tail means the hardware owns nothing (SDM 3.2.6 and 3.4).
//!
//! ```text
//!  Receive ring (128 entries)            Transmit ring (64 entries)
//!
//!   rx_next        RDH       RDT          tx_head      TDH       TDT = tx_tail
//!      |            |         |              |          |          |
//!  ... [D][D][D][D][ ][ ][ ][ ][s] ...   ... [D][D][D][D][q][q][q][ ][ ] ...
//!       \---------/ \-------/   |             \--------/ \------/ \-----/
//!       filled, DD   empty,     kept by        sent, DD   queued,  free for
//!       set: SW      owned by   SW (RDT        set: SW    owned by SW to fill
//!       reads them   the NIC    itself)        reclaims   the NIC
//!
//!  Both rings wrap around: on the receive side rx_next == RDT + 1 (mod 128).
//! ```
//!
//! * Receive: the NIC writes a frame into the buffer of descriptor RDH, sets
//!   the descriptor's DD (and EOP) status bits and advances RDH. Software
//!   walks from `rx_next` while DD is set, copies the frame out, clears the
//!   status and hands the descriptor back by writing its index to RDT. One
//!   descriptor is therefore always held by software (RDT == RDH would mean
//!   "ring empty" to the NIC), so 127 of the 128 buffers can hold frames.
//! * Transmit: software fills the descriptor at `tx_tail` and advances TDT
//!   past it; the NIC sends descriptors from TDH up to TDT, setting DD in each
//!   (requested with the RS command bit) and advancing TDH. Software reclaims
//!   descriptors from `tx_head` once their DD bit is set. The ring is full
//!   when advancing `tx_tail` would reach `tx_head` (63 frames in flight).
//!
//! Descriptor memory is shared with the device, so it is only accessed with
//! volatile reads and writes, and a full fence separates filling a
//! descriptor from bumping the tail register, and seeing DD from reading the
//! data (x86 keeps DMA coherent with the caches; the fence also stops the
//! compiler from moving the buffer copies across the descriptor accesses).
//!
//! The driver never frees its DMA memory: it lives as long as the kernel.

use core::fmt;
use core::sync::atomic::{Ordering, fence};

// ---------------------------------------------------------------------------
// Traits the kernel glue implements.
// ---------------------------------------------------------------------------

/// 32-bit register access to BAR0 (offsets in bytes).
pub trait Regs {
    fn read(&mut self, offset: u32) -> u32;
    fn write(&mut self, offset: u32, value: u32);
}

/// Physically contiguous, zeroed, 4 KiB-aligned DMA memory the device can reach.
///
/// Contract for implementations: a returned region's `ptr` must be valid for
/// CPU reads and writes of `len` bytes, refer to the same memory as `phys`,
/// and be handed over exclusively to the caller for the rest of the program
/// (the driver keeps using it and never gives it back).
pub trait Dma {
    /// `bytes` is a multiple of 4096. Returns the physical address and a pointer the CPU can use
    /// for the same memory (on the kernel they are equal; in tests they differ).
    fn alloc(&mut self, bytes: usize) -> Option<DmaRegion>;
}

/// A block of DMA memory: its physical (bus) address and its CPU pointer.
#[derive(Debug, Clone, Copy)]
pub struct DmaRegion {
    pub phys: u64,
    pub ptr: *mut u8,
    pub len: usize,
}

mod regs;
pub use regs::*;

// Descriptors (SDM 3.2.3 "Receive Descriptor Format", 3.3.3 "Legacy Transmit
// Descriptor Format"). Both are 16 bytes; offsets of the fields used.

/// Size of one legacy descriptor in bytes.
pub const DESC_SIZE: usize = 16;
/// Descriptor field: buffer address (u64), both rings.
const DESC_ADDR: usize = 0;
/// Descriptor field: length (u16), both rings.
const DESC_LENGTH: usize = 8;
/// Receive descriptor field: status (u8).
const RXD_STATUS: usize = 12;
/// Receive descriptor field: errors (u8).
const RXD_ERRORS: usize = 13;
/// Transmit descriptor field: checksum offset (u8).
const TXD_CSO: usize = 10;
/// Transmit descriptor field: command (u8).
const TXD_CMD: usize = 11;
/// Transmit descriptor field: status (u8).
const TXD_STATUS: usize = 12;
/// Transmit descriptor field: checksum start (u8).
const TXD_CSS: usize = 13;
/// Descriptor field: special / VLAN tag (u16), both rings.
const DESC_SPECIAL: usize = 14;

/// RX status DD: descriptor done (SDM 3.2.3.1, "Receive Descriptor Status Field").
pub const RXD_STAT_DD: u8 = 1 << 0;
/// RX status EOP: end of packet.
pub const RXD_STAT_EOP: u8 = 1 << 1;
/// RX errors CE: CRC or alignment error (SDM 3.2.3.2, "Receive Descriptor Errors Field").
pub const RXD_ERR_CE: u8 = 1 << 0;

/// TX command EOP: end of packet (SDM 3.3.3.1, "Transmit Descriptor Command Field").
pub const TXD_CMD_EOP: u8 = 1 << 0;
/// TX command IFCS: insert the Ethernet CRC.
pub const TXD_CMD_IFCS: u8 = 1 << 1;
/// TX command RS: report status (set DD when done).
pub const TXD_CMD_RS: u8 = 1 << 3;
/// TX status DD: descriptor done (SDM 3.3.3.2, "Transmit Descriptor Status Field").
pub const TXD_STAT_DD: u8 = 1 << 0;
/// TX status EC: excess collisions, frame not sent.
pub const TXD_STAT_EC: u8 = 1 << 1;
/// TX status LC: late collision, frame not sent.
pub const TXD_STAT_LC: u8 = 1 << 2;

/// Receive descriptors in the ring.
pub const RX_RING_LEN: usize = 128;
/// Transmit descriptors in the ring.
pub const TX_RING_LEN: usize = 64;
/// Size of each descriptor's buffer (RCTL.BSIZE = 2048).
pub const BUF_SIZE: usize = 2048;
/// Shortest frame `transmit` accepts: an Ethernet header.
pub const MIN_FRAME: usize = 14;
/// Longest frame `transmit` accepts (no CRC, no VLAN tag).
pub const MAX_FRAME: usize = 1514;

/// CTRL reads before giving up on the self-clearing reset.
const RESET_POLL_LIMIT: u32 = 200_000;
/// EERD reads before giving up on one EEPROM word.
const EEPROM_POLL_LIMIT: u32 = 100_000;

const PAGE: usize = 4096;

// ---------------------------------------------------------------------------
// Errors and counters.
// ---------------------------------------------------------------------------

/// Why the controller could not be brought up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum E1000Error {
    /// CTRL.RST did not self-clear.
    ResetTimeout,
    /// EERD.DONE never set while reading the MAC address.
    EepromTimeout,
    /// The DMA allocator had no (usable) memory for the rings and buffers.
    NoDmaMemory,
    /// The EEPROM holds an all-zero or multicast MAC address.
    BadMac([u8; 6]),
}

impl fmt::Display for E1000Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            E1000Error::ResetTimeout => {
                write!(
                    f,
                    "e1000: controller reset did not complete (CTRL.RST stuck)"
                )
            }
            E1000Error::EepromTimeout => {
                write!(f, "e1000: EEPROM read timed out (EERD.DONE never set)")
            }
            E1000Error::NoDmaMemory => {
                write!(f, "e1000: no DMA memory for descriptor rings and buffers")
            }
            E1000Error::BadMac(m) => {
                write!(f, "e1000: invalid MAC address in EEPROM: {}", MacFmt(m))
            }
        }
    }
}

/// Why a frame was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxError {
    /// All transmit descriptors are in flight; retry after `can_transmit`.
    Full,
    /// The frame is longer than 1514 bytes (its length).
    TooLong(usize),
    /// The frame is shorter than an Ethernet header, 14 bytes (its length).
    TooShort(usize),
}

impl fmt::Display for TxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TxError::Full => write!(f, "e1000: transmit ring full"),
            TxError::TooLong(n) => {
                write!(f, "e1000: frame of {n} bytes exceeds {MAX_FRAME} bytes")
            }
            TxError::TooShort(n) => {
                write!(
                    f,
                    "e1000: frame of {n} bytes is shorter than {MIN_FRAME} bytes"
                )
            }
        }
    }
}

/// Formats a MAC address as `aa:bb:cc:dd:ee:ff`.
struct MacFmt<'a>(&'a [u8; 6]);

impl fmt::Display for MacFmt<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

/// Traffic counters since `new`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Good frames handed to the caller by `receive`.
    pub rx_frames: u64,
    /// Bytes in those frames (without CRC).
    pub rx_bytes: u64,
    /// Frames the NIC reported sent (DD without EC/LC).
    pub tx_frames: u64,
    /// Bytes in those frames (without padding and CRC).
    pub tx_bytes: u64,
    /// Received descriptors with error bits set.
    pub rx_errors: u64,
    /// Transmitted frames that failed (excess or late collisions).
    pub tx_errors: u64,
    /// Frames lost: hardware MPC (missed) plus frames the driver dropped
    /// (errors, multi-descriptor frames, caller buffer too small).
    pub rx_dropped: u64,
    /// Hardware CRCERRS.
    pub crc_errors: u64,
    /// Hardware RNBC: times the NIC found no free receive descriptor
    /// (informational; actual losses show up in MPC).
    pub rx_no_buffer: u64,
    /// Hardware GPRC: good frames the NIC received.
    pub hw_rx_good: u64,
    /// Hardware GPTC: good frames the NIC transmitted.
    pub hw_tx_good: u64,
}

// ---------------------------------------------------------------------------
// DMA memory access: the only unsafe code in the driver.
// ---------------------------------------------------------------------------

/// Integer types that are valid for every bit pattern (volatile access).
trait Pod: Copy {}
impl Pod for u8 {}
impl Pod for u16 {}
impl Pod for u32 {}
impl Pod for u64 {}

/// A DMA region checked once at construction; all accesses are bounds- and
/// alignment-checked.
struct DmaBuf {
    phys: u64,
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the region is exclusively owned by this `DmaBuf` (contract of
// `Dma::alloc`), so moving it to another CPU moves sole ownership with it;
// the raw pointer is only ever dereferenced through `&self`/`&mut self` of
// the owning driver.
unsafe impl Send for DmaBuf {}

impl DmaBuf {
    /// Allocates `bytes` (rounded up to 4 KiB) and validates the region.
    fn alloc(dma: &mut dyn Dma, bytes: usize) -> Result<Self, E1000Error> {
        let bytes = bytes.div_ceil(PAGE) * PAGE;
        let Some(r) = dma.alloc(bytes) else {
            log::error!("e1000: DMA allocation of {bytes} bytes failed");
            return Err(E1000Error::NoDmaMemory);
        };
        if r.len < bytes
            || r.ptr.is_null()
            || !(r.ptr as usize).is_multiple_of(16)
            || !r.phys.is_multiple_of(16)
        {
            log::error!("e1000: unusable DMA region {r:?} for {bytes} bytes");
            return Err(E1000Error::NoDmaMemory);
        }
        Ok(DmaBuf {
            phys: r.phys,
            ptr: r.ptr,
            len: bytes,
        })
    }

    /// Pointer to `size` bytes at `off`, panicking when out of bounds or
    /// misaligned for `align`.
    fn at(&self, off: usize, size: usize, align: usize) -> *mut u8 {
        assert!(
            off.checked_add(size).is_some_and(|end| end <= self.len),
            "DMA access out of bounds"
        );
        let p = self.ptr.wrapping_add(off);
        assert!((p as usize).is_multiple_of(align), "misaligned DMA access");
        p
    }

    fn read<T: Pod>(&self, off: usize) -> T {
        let p = self.at(off, size_of::<T>(), align_of::<T>()).cast::<T>();
        // SAFETY: `p` lies within the region (checked by `at`), which is
        // valid for reads and exclusively ours (contract of `Dma::alloc`),
        // is aligned for `T`, and `T` is an integer valid for any bits.
        unsafe { core::ptr::read_volatile(p) }
    }

    fn write<T: Pod>(&self, off: usize, value: T) {
        let p = self.at(off, size_of::<T>(), align_of::<T>()).cast::<T>();
        // SAFETY: as in `read`; the region is valid for writes.
        unsafe { core::ptr::write_volatile(p, value) }
    }

    /// Copies `dst.len()` bytes from the region at `off` into `dst`.
    fn copy_out(&self, off: usize, dst: &mut [u8]) {
        let p = self.at(off, dst.len(), 1);
        // SAFETY: the source range is inside the region (checked by `at`);
        // `dst` is a distinct Rust slice, so the ranges cannot overlap.
        unsafe { core::ptr::copy_nonoverlapping(p, dst.as_mut_ptr(), dst.len()) }
    }

    /// Copies `src` into the region at `off`.
    fn copy_in(&self, off: usize, src: &[u8]) {
        let p = self.at(off, src.len(), 1);
        // SAFETY: the destination range is inside the region (checked by
        // `at`); `src` is a distinct Rust slice, so they cannot overlap.
        unsafe { core::ptr::copy_nonoverlapping(src.as_ptr(), p, src.len()) }
    }
}

/// A descriptor ring plus one `BUF_SIZE` buffer per descriptor.
struct Ring {
    desc: DmaBuf,
    bufs: DmaBuf,
    len: usize,
}

impl Ring {
    fn new(dma: &mut dyn Dma, len: usize) -> Result<Self, E1000Error> {
        let desc = DmaBuf::alloc(dma, len * DESC_SIZE)?;
        let bufs = DmaBuf::alloc(dma, len * BUF_SIZE)?;
        let ring = Ring { desc, bufs, len };
        for i in 0..len {
            // Write every field: the memory is documented as zeroed, but the
            // driver must not depend on it.
            for off in (0..DESC_SIZE).step_by(8) {
                ring.desc.write::<u64>(i * DESC_SIZE + off, 0);
            }
            ring.desc
                .write::<u64>(i * DESC_SIZE + DESC_ADDR, ring.buf_phys(i));
        }
        Ok(ring)
    }

    fn buf_phys(&self, i: usize) -> u64 {
        self.bufs.phys + (i * BUF_SIZE) as u64
    }

    fn d(i: usize, field: usize) -> usize {
        i * DESC_SIZE + field
    }

    fn next(&self, i: usize) -> usize {
        (i + 1) % self.len
    }
}

fn lo(x: u64) -> u32 {
    x as u32
}

fn hi(x: u64) -> u32 {
    (x >> 32) as u32
}

// ---------------------------------------------------------------------------
// The driver.
// ---------------------------------------------------------------------------

/// An initialized 82540EM, polled (all interrupts masked).
pub struct E1000<R: Regs> {
    regs: R,
    mac: [u8; 6],
    rx: Ring,
    /// Next receive descriptor to look at (the one after RDT).
    rx_next: usize,
    /// Inside a frame that spans several descriptors: drop up to its EOP.
    rx_discarding: bool,
    tx: Ring,
    /// Oldest transmit descriptor not yet reclaimed.
    tx_head: usize,
    /// Next transmit descriptor to fill (= TDT).
    tx_tail: usize,
    counters: Counters,
}

impl<R: Regs> E1000<R> {
    /// Resets the controller, reads the MAC from the EEPROM, sets up rings, enables RX and TX, sets link up.
    pub fn new(mut regs: R, dma: &mut dyn Dma) -> Result<Self, E1000Error> {
        // Reset (SDM 14.3; 13.4 CTRL.RST). Mask interrupts first so none
        // fire around the reset, and again afterwards (reset unmasks).
        regs.write(REG_IMC, 0xFFFF_FFFF);
        let ctrl = regs.read(REG_CTRL);
        regs.write(REG_CTRL, ctrl | CTRL_RST);
        let mut cleared = false;
        for _ in 0..RESET_POLL_LIMIT {
            if regs.read(REG_CTRL) & CTRL_RST == 0 {
                cleared = true;
                break;
            }
        }
        if !cleared {
            log::error!("e1000: CTRL.RST still set after {RESET_POLL_LIMIT} reads");
            return Err(E1000Error::ResetTimeout);
        }
        regs.write(REG_IMC, 0xFFFF_FFFF);
        let _ = regs.read(REG_ICR);

        // Link: set link up with auto speed detection (SDM 14.3).
        let ctrl = regs.read(REG_CTRL);
        let ctrl =
            (ctrl | CTRL_SLU | CTRL_ASDE) & !(CTRL_LRST | CTRL_PHY_RST | CTRL_ILOS | CTRL_VME);
        regs.write(REG_CTRL, ctrl);
        // No flow control: program the flow control registers to 0 (SDM 14.3).
        for reg in [REG_FCAL, REG_FCAH, REG_FCT, REG_FCTTV] {
            regs.write(reg, 0);
        }

        // MAC address: EEPROM words 0..=2, little-endian (SDM 5.6.1).
        let mut mac = [0u8; 6];
        for word in 0..3u32 {
            let w = read_eeprom(&mut regs, word)?;
            mac[word as usize * 2..word as usize * 2 + 2].copy_from_slice(&w.to_le_bytes());
        }
        if mac == [0; 6] || mac[0] & 1 != 0 {
            log::error!("e1000: bad MAC {} in EEPROM", MacFmt(&mac));
            return Err(E1000Error::BadMac(mac));
        }

        // Receive address filter: entry 0 = our MAC (Bochs leaves RAL0/RAH0
        // zero after a reset), the other entries invalid, no multicast.
        let ral = u32::from_le_bytes([mac[0], mac[1], mac[2], mac[3]]);
        let rah = u32::from(u16::from_le_bytes([mac[4], mac[5]])) | RAH_AV;
        regs.write(REG_RAL0, ral);
        regs.write(REG_RAH0, rah);
        for n in 1..RA_ENTRIES {
            regs.write(REG_RAL0 + 8 * n, 0);
            regs.write(REG_RAH0 + 8 * n, 0);
        }
        for n in 0..MTA_DWORDS {
            regs.write(REG_MTA + 4 * n, 0);
        }

        let rx = Ring::new(dma, RX_RING_LEN)?;
        let tx = Ring::new(dma, TX_RING_LEN)?;

        // Receive (SDM 14.4): ring registers, then RCTL.
        regs.write(REG_RDBAL, lo(rx.desc.phys));
        regs.write(REG_RDBAH, hi(rx.desc.phys));
        regs.write(REG_RDLEN, (RX_RING_LEN * DESC_SIZE) as u32);
        regs.write(REG_RDH, 0);
        regs.write(REG_RDT, (RX_RING_LEN - 1) as u32);
        regs.write(REG_RDTR, 0);
        // BSIZE = 00 with BSEX = 0: 2048-byte buffers. No SBP/UPE/MPE/LPE.
        regs.write(REG_RCTL, RCTL_EN | RCTL_BAM | RCTL_SECRC);

        // Transmit (SDM 14.5): ring registers, then TCTL and TIPG.
        regs.write(REG_TDBAL, lo(tx.desc.phys));
        regs.write(REG_TDBAH, hi(tx.desc.phys));
        regs.write(REG_TDLEN, (TX_RING_LEN * DESC_SIZE) as u32);
        regs.write(REG_TDH, 0);
        regs.write(REG_TDT, 0);
        regs.write(
            REG_TCTL,
            TCTL_EN
                | TCTL_PSP
                | (TCTL_CT_DEFAULT << TCTL_CT_SHIFT)
                | (TCTL_COLD_FULL_DUPLEX << TCTL_COLD_SHIFT),
        );
        regs.write(REG_TIPG, TIPG_VALUE);

        // Statistics clear on read: start from zero.
        for reg in [REG_CRCERRS, REG_MPC, REG_RNBC, REG_GPRC, REG_GPTC] {
            let _ = regs.read(reg);
        }

        let mut dev = E1000 {
            regs,
            mac,
            rx,
            rx_next: 0,
            rx_discarding: false,
            tx,
            tx_head: 0,
            tx_tail: 0,
            counters: Counters::default(),
        };
        match dev.link_speed_mbps() {
            Some(s) => log::info!("e1000: MAC {}, link up at {s} Mb/s", MacFmt(&mac)),
            None => log::info!("e1000: MAC {}, link down", MacFmt(&mac)),
        }
        Ok(dev)
    }

    /// The station address read from the EEPROM.
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// STATUS.LU.
    pub fn link_up(&mut self) -> bool {
        self.regs.read(REG_STATUS) & STATUS_LU != 0
    }

    /// Link speed from STATUS.SPEED, or None when the link is down.
    pub fn link_speed_mbps(&mut self) -> Option<u32> {
        let status = self.regs.read(REG_STATUS);
        if status & STATUS_LU == 0 {
            return None;
        }
        Some(match (status >> STATUS_SPEED_SHIFT) & STATUS_SPEED_MASK {
            0b00 => 10,
            0b01 => 100,
            _ => 1000,
        })
    }

    /// Copies the next received good frame into `buf` (2048 bytes suffice) and returns its length;
    /// None if nothing is pending. Frames with error bits, or spanning several descriptors (no EOP), are
    /// dropped and counted. Gives the descriptor back to the NIC (advance RDT).
    /// A good frame longer than `buf` is dropped and counted as well.
    pub fn receive(&mut self, buf: &mut [u8]) -> Option<usize> {
        // At most one full ring of descriptors per call.
        for _ in 0..self.rx.len {
            let i = self.rx_next;
            let status: u8 = self.rx.desc.read(Ring::d(i, RXD_STATUS));
            if status & RXD_STAT_DD == 0 {
                return None;
            }
            // The NIC wrote the descriptor before setting DD; read the rest
            // (and the buffer) only after seeing DD.
            fence(Ordering::SeqCst);
            let len = usize::from(self.rx.desc.read::<u16>(Ring::d(i, DESC_LENGTH)));
            let errors: u8 = self.rx.desc.read(Ring::d(i, RXD_ERRORS));
            let eop = status & RXD_STAT_EOP != 0;

            let mut delivered = None;
            if self.rx_discarding {
                // Tail of a frame already counted as dropped.
                if eop {
                    self.rx_discarding = false;
                }
            } else if !eop {
                log::debug!("e1000: dropping frame spanning several descriptors");
                self.counters.rx_dropped += 1;
                self.rx_discarding = true;
            } else if errors != 0 {
                log::debug!("e1000: dropping frame with errors {errors:#04x}");
                self.counters.rx_errors += 1;
                self.counters.rx_dropped += 1;
            } else if len == 0 || len > BUF_SIZE || len > buf.len() {
                log::warn!(
                    "e1000: dropping frame of {len} bytes (buffer {} bytes)",
                    buf.len()
                );
                self.counters.rx_dropped += 1;
            } else {
                self.rx.bufs.copy_out(i * BUF_SIZE, &mut buf[..len]);
                self.counters.rx_frames += 1;
                self.counters.rx_bytes += len as u64;
                delivered = Some(len);
            }

            // Give the descriptor back: clear its status, then move RDT onto
            // it (the NIC may now fill everything before it).
            self.rx.desc.write::<u8>(Ring::d(i, RXD_STATUS), 0);
            self.rx.desc.write::<u8>(Ring::d(i, RXD_ERRORS), 0);
            self.rx.desc.write::<u16>(Ring::d(i, DESC_LENGTH), 0);
            self.rx
                .desc
                .write::<u64>(Ring::d(i, DESC_ADDR), self.rx.buf_phys(i));
            fence(Ordering::SeqCst);
            self.regs.write(REG_RDT, i as u32);
            self.rx_next = self.rx.next(i);

            if delivered.is_some() {
                return delivered;
            }
        }
        None
    }

    /// True if a TX descriptor is free (reclaims completed ones: DD set).
    pub fn can_transmit(&mut self) -> bool {
        self.reclaim_tx();
        !self.tx_full()
    }

    /// Queues one frame (copied into the descriptor's own buffer; 14..=1514 bytes, the NIC pads short
    /// frames with TCTL.PSP). Err(TxError::Full) when the ring is full, Err(TxError::TooLong(n)).
    pub fn transmit(&mut self, frame: &[u8]) -> Result<(), TxError> {
        let n = frame.len();
        if n > MAX_FRAME {
            return Err(TxError::TooLong(n));
        }
        if n < MIN_FRAME {
            return Err(TxError::TooShort(n));
        }
        if self.tx_full() {
            self.reclaim_tx();
            if self.tx_full() {
                return Err(TxError::Full);
            }
        }
        let i = self.tx_tail;
        self.tx.bufs.copy_in(i * BUF_SIZE, frame);
        let d = &self.tx.desc;
        d.write::<u64>(Ring::d(i, DESC_ADDR), self.tx.buf_phys(i));
        d.write::<u16>(Ring::d(i, DESC_LENGTH), n as u16);
        d.write::<u8>(Ring::d(i, TXD_CSO), 0);
        d.write::<u8>(Ring::d(i, TXD_CMD), TXD_CMD_EOP | TXD_CMD_IFCS | TXD_CMD_RS);
        d.write::<u8>(Ring::d(i, TXD_STATUS), 0);
        d.write::<u8>(Ring::d(i, TXD_CSS), 0);
        d.write::<u16>(Ring::d(i, DESC_SPECIAL), 0);
        // Buffer and descriptor must be in memory before the NIC sees TDT.
        fence(Ordering::SeqCst);
        self.tx_tail = self.tx.next(i);
        self.regs.write(REG_TDT, self.tx_tail as u32);
        Ok(())
    }

    /// Software counters plus the hardware statistics registers, accumulated (the hardware ones clear on read).
    pub fn counters(&mut self) -> Counters {
        self.reclaim_tx();
        let c = &mut self.counters;
        let r = &mut self.regs;
        c.crc_errors += u64::from(r.read(REG_CRCERRS));
        c.rx_dropped += u64::from(r.read(REG_MPC));
        c.rx_no_buffer += u64::from(r.read(REG_RNBC));
        c.hw_rx_good += u64::from(r.read(REG_GPRC));
        c.hw_tx_good += u64::from(r.read(REG_GPTC));
        *c
    }

    fn tx_full(&self) -> bool {
        self.tx.next(self.tx_tail) == self.tx_head
    }

    /// Reclaims sent descriptors from `tx_head` while their DD bit is set.
    fn reclaim_tx(&mut self) {
        while self.tx_head != self.tx_tail {
            let i = self.tx_head;
            let status: u8 = self.tx.desc.read(Ring::d(i, TXD_STATUS));
            if status & TXD_STAT_DD == 0 {
                break;
            }
            fence(Ordering::SeqCst);
            let len = u64::from(self.tx.desc.read::<u16>(Ring::d(i, DESC_LENGTH)));
            if status & (TXD_STAT_EC | TXD_STAT_LC) != 0 {
                log::debug!("e1000: transmit failed, status {status:#04x}");
                self.counters.tx_errors += 1;
            } else {
                self.counters.tx_frames += 1;
                self.counters.tx_bytes += len;
            }
            self.tx.desc.write::<u8>(Ring::d(i, TXD_STATUS), 0);
            self.tx_head = self.tx.next(i);
        }
    }
}

/// Reads one 16-bit EEPROM word through EERD (82540EM layout).
fn read_eeprom<R: Regs>(regs: &mut R, word: u32) -> Result<u16, E1000Error> {
    regs.write(REG_EERD, (word << EERD_ADDR_SHIFT) | EERD_START);
    for _ in 0..EEPROM_POLL_LIMIT {
        let v = regs.read(REG_EERD);
        if v & EERD_DONE != 0 {
            return Ok((v >> EERD_DATA_SHIFT) as u16);
        }
    }
    log::error!("e1000: EEPROM word {word} read timed out");
    Err(E1000Error::EepromTimeout)
}

#[cfg(test)]
mod tests;
