//! e1000 registers and their bits (Intel 8254x SDM chapter 13, "Register
//! Descriptions"; offsets into BAR0).

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
