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

// ---------------------------------------------------------------------------
// Registers (SDM chapter 13, "Register Descriptions"; offsets into BAR0).
// ---------------------------------------------------------------------------

/// Device Control (SDM 13.4, "Device Control Register - CTRL").
pub const REG_CTRL: u32 = 0x0000;
/// Device Status (SDM 13.4, "Device Status Register - STATUS").
pub const REG_STATUS: u32 = 0x0008;
/// EEPROM Read (SDM 13.4, "EEPROM Read Register - EERD").
pub const REG_EERD: u32 = 0x0014;
/// Flow Control Address Low (SDM 13.4, "FCAL"); 0 when flow control is unused (SDM 14.3).
pub const REG_FCAL: u32 = 0x0028;
/// Flow Control Address High (SDM 13.4, "FCAH").
pub const REG_FCAH: u32 = 0x002C;
/// Flow Control Type (SDM 13.4, "FCT").
pub const REG_FCT: u32 = 0x0030;
/// Flow Control Transmit Timer Value (SDM 13.4, "FCTTV").
pub const REG_FCTTV: u32 = 0x0170;
/// Interrupt Cause Read, clear on read (SDM 13.4, "Interrupt Cause Read Register - ICR").
pub const REG_ICR: u32 = 0x00C0;
/// Interrupt Mask Clear, write 1s to mask (SDM 13.4, "Interrupt Mask Clear Register - IMC").
pub const REG_IMC: u32 = 0x00D8;
/// Receive Control (SDM 13.4, "Receive Control Register - RCTL").
pub const REG_RCTL: u32 = 0x0100;
/// Transmit Control (SDM 13.4, "Transmit Control Register - TCTL").
pub const REG_TCTL: u32 = 0x0400;
/// Transmit Inter Packet Gap (SDM 13.4, "Transmit IPG Register - TIPG").
pub const REG_TIPG: u32 = 0x0410;
/// Receive Descriptor Base Address Low (SDM 13.4, "RDBAL"); 16-byte aligned.
pub const REG_RDBAL: u32 = 0x2800;
/// Receive Descriptor Base Address High (SDM 13.4, "RDBAH").
pub const REG_RDBAH: u32 = 0x2804;
/// Receive Descriptor Length in bytes, multiple of 128 (SDM 13.4, "RDLEN").
pub const REG_RDLEN: u32 = 0x2808;
/// Receive Descriptor Head (SDM 13.4, "RDH"); advanced by hardware.
pub const REG_RDH: u32 = 0x2810;
/// Receive Descriptor Tail (SDM 13.4, "RDT"); advanced by software.
pub const REG_RDT: u32 = 0x2818;
/// Receive Delay Timer (SDM 13.4, "RDTR"); 0 = no interrupt delay.
pub const REG_RDTR: u32 = 0x2820;
/// Transmit Descriptor Base Address Low (SDM 13.4, "TDBAL"); 16-byte aligned.
pub const REG_TDBAL: u32 = 0x3800;
/// Transmit Descriptor Base Address High (SDM 13.4, "TDBAH").
pub const REG_TDBAH: u32 = 0x3804;
/// Transmit Descriptor Length in bytes, multiple of 128 (SDM 13.4, "TDLEN").
pub const REG_TDLEN: u32 = 0x3808;
/// Transmit Descriptor Head (SDM 13.4, "TDH"); advanced by hardware.
pub const REG_TDH: u32 = 0x3810;
/// Transmit Descriptor Tail (SDM 13.4, "TDT"); advanced by software.
pub const REG_TDT: u32 = 0x3818;
/// CRC Error Count, clear on read (SDM 13.7, "CRCERRS").
pub const REG_CRCERRS: u32 = 0x4000;
/// Missed Packets Count, clear on read (SDM 13.7, "MPC"): frames lost for lack of FIFO/buffers.
pub const REG_MPC: u32 = 0x4010;
/// Good Packets Received Count, clear on read (SDM 13.7, "GPRC").
pub const REG_GPRC: u32 = 0x4074;
/// Good Packets Transmitted Count, clear on read (SDM 13.7, "GPTC").
pub const REG_GPTC: u32 = 0x4080;
/// Receive No Buffers Count, clear on read (SDM 13.7, "RNBC"). Informational: the
/// frame may still be received once buffers are returned; real losses are in MPC.
pub const REG_RNBC: u32 = 0x40A0;
/// Multicast Table Array, 128 dwords (SDM 13.5, "Multicast Table Array - MTA").
pub const REG_MTA: u32 = 0x5200;
/// Number of dwords in the multicast table array.
pub const MTA_DWORDS: u32 = 128;
/// Receive Address Low, entry 0 (SDM 13.5, "Receive Address Low - RAL"); entry n at +8n.
pub const REG_RAL0: u32 = 0x5400;
/// Receive Address High, entry 0 (SDM 13.5, "Receive Address High - RAH"); entry n at +8n.
pub const REG_RAH0: u32 = 0x5404;
/// Number of receive address (RAL/RAH) pairs.
pub const RA_ENTRIES: u32 = 16;

// CTRL bits (SDM 13.4, "Device Control Register - CTRL").

/// CTRL.FD: full duplex.
pub const CTRL_FD: u32 = 1 << 0;
/// CTRL.LRST: link reset; must be 0 for the link to come up.
pub const CTRL_LRST: u32 = 1 << 3;
/// CTRL.ASDE: auto-speed detection enable.
pub const CTRL_ASDE: u32 = 1 << 5;
/// CTRL.SLU: set link up.
pub const CTRL_SLU: u32 = 1 << 6;
/// CTRL.ILOS: invert loss-of-signal; must be 0 for internal-PHY parts.
pub const CTRL_ILOS: u32 = 1 << 7;
/// CTRL.RST: device reset; self-clearing.
pub const CTRL_RST: u32 = 1 << 26;
/// CTRL.VME: VLAN mode enable.
pub const CTRL_VME: u32 = 1 << 30;
/// CTRL.PHY_RST: PHY reset.
pub const CTRL_PHY_RST: u32 = 1 << 31;

// STATUS bits (SDM 13.4, "Device Status Register - STATUS").

/// STATUS.FD: link is full duplex.
pub const STATUS_FD: u32 = 1 << 0;
/// STATUS.LU: link up.
pub const STATUS_LU: u32 = 1 << 1;
/// STATUS.SPEED shift (bits 7:6): 00 = 10, 01 = 100, 10/11 = 1000 Mb/s.
pub const STATUS_SPEED_SHIFT: u32 = 6;
/// STATUS.SPEED mask (after shifting).
pub const STATUS_SPEED_MASK: u32 = 0b11;

// EERD bits for the 82540EM (SDM 13.4, "EEPROM Read Register - EERD").
// (Later parts such as the 82541/82547 move DONE to bit 1 and the address to bit 2.)

/// EERD.START: start a read.
pub const EERD_START: u32 = 1 << 0;
/// EERD.DONE: read finished, data valid.
pub const EERD_DONE: u32 = 1 << 4;
/// EERD.ADDR shift: word address in bits 15:8.
pub const EERD_ADDR_SHIFT: u32 = 8;
/// EERD.DATA shift: word read in bits 31:16.
pub const EERD_DATA_SHIFT: u32 = 16;

/// RAH.AV: address valid (SDM 13.5, "Receive Address High - RAH").
pub const RAH_AV: u32 = 1 << 31;

// RCTL bits (SDM 13.4, "Receive Control Register - RCTL").

/// RCTL.EN: receiver enable.
pub const RCTL_EN: u32 = 1 << 1;
/// RCTL.SBP: store bad packets.
pub const RCTL_SBP: u32 = 1 << 2;
/// RCTL.UPE: unicast promiscuous.
pub const RCTL_UPE: u32 = 1 << 3;
/// RCTL.MPE: multicast promiscuous.
pub const RCTL_MPE: u32 = 1 << 4;
/// RCTL.LPE: long packet enable (frames over 1522 bytes).
pub const RCTL_LPE: u32 = 1 << 5;
/// RCTL.BAM: broadcast accept mode (needed for ARP).
pub const RCTL_BAM: u32 = 1 << 15;
/// RCTL.BSIZE shift (bits 17:16): with BSEX = 0, 00 = 2048 bytes.
pub const RCTL_BSIZE_SHIFT: u32 = 16;
/// RCTL.BSIZE mask (in place).
pub const RCTL_BSIZE_MASK: u32 = 0b11 << RCTL_BSIZE_SHIFT;
/// RCTL.BSEX: buffer size extension (multiplies BSIZE by 16).
pub const RCTL_BSEX: u32 = 1 << 25;
/// RCTL.SECRC: strip the Ethernet CRC from received frames.
pub const RCTL_SECRC: u32 = 1 << 26;

// TCTL bits (SDM 13.4, "Transmit Control Register - TCTL").

/// TCTL.EN: transmitter enable.
pub const TCTL_EN: u32 = 1 << 1;
/// TCTL.PSP: pad short packets to 64 bytes.
pub const TCTL_PSP: u32 = 1 << 3;
/// TCTL.CT shift: collision threshold (bits 11:4).
pub const TCTL_CT_SHIFT: u32 = 4;
/// TCTL.COLD shift: collision distance (bits 21:12).
pub const TCTL_COLD_SHIFT: u32 = 12;
/// Recommended collision threshold (SDM 14.5).
pub const TCTL_CT_DEFAULT: u32 = 0x10;
/// Collision distance for full duplex (SDM 14.5).
pub const TCTL_COLD_FULL_DUPLEX: u32 = 0x40;

/// TIPG for the 82540EM copper PHY: IPGT 10, IPGR1 8, IPGR2 6 (SDM 13.4, "TIPG").
pub const TIPG_VALUE: u32 = 10 | (8 << 10) | (6 << 20);

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
mod tests {
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
            unsafe {
                core::ptr::copy_nonoverlapping(data.as_ptr(), self.base.add(off), data.len())
            };
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
            let slice =
                core::ptr::slice_from_raw_parts_mut(self.base.cast::<u64>(), ARENA_BYTES / 8);
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
}
