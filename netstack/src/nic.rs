//! The network interface card as the stack sees it, and the adapter that
//! turns any [`Nic`] into a `smoltcp` [`Device`].
//!
//! The trait is deliberately small (copy a frame in, copy a frame out) so a
//! driver implements it in a few lines and host tests can replace the
//! hardware with [`pair`], two NICs joined by an in-memory cable.

use alloc::collections::VecDeque;
use alloc::rc::Rc;
use alloc::vec::Vec;
use core::cell::RefCell;

use smoltcp::phy::{self, Device, DeviceCapabilities, Medium};
use smoltcp::time::Instant;

/// Largest Ethernet frame without the FCS (1500-byte MTU plus the 14-byte header).
pub const MAX_FRAME: usize = 1514;

/// An Ethernet NIC, polled.
pub trait Nic {
    /// The station address.
    fn mac(&self) -> [u8; 6];
    /// Whether the link is up.
    fn link_up(&mut self) -> bool;
    /// Copies the next received frame into `buf` (at least [`MAX_FRAME`]
    /// bytes) and returns its length, or `None` if nothing is pending.
    fn receive(&mut self, buf: &mut [u8]) -> Option<usize>;
    /// Whether [`Nic::transmit`] would accept a frame now.
    fn can_transmit(&mut self) -> bool;
    /// Queues one frame (without FCS). Returns false if it was dropped
    /// (ring full, frame too long).
    fn transmit(&mut self, frame: &[u8]) -> bool;
}

/// Adapts a [`Nic`] to `smoltcp`'s token-based [`Device`].
pub struct NicDevice<'n, N: Nic + ?Sized> {
    nic: &'n mut N,
}

impl<'n, N: Nic + ?Sized> NicDevice<'n, N> {
    /// Wraps `nic` for one poll of the interface.
    pub fn new(nic: &'n mut N) -> Self {
        NicDevice { nic }
    }
}

/// A received frame, copied out of the NIC's ring.
pub struct RxToken {
    buf: [u8; MAX_FRAME],
    len: usize,
}

impl phy::RxToken for RxToken {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.buf[..self.len])
    }
}

/// Permission to send one frame.
pub struct TxToken<'a, N: Nic + ?Sized> {
    nic: &'a mut N,
}

impl<N: Nic + ?Sized> phy::TxToken for TxToken<'_, N> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut buf = [0u8; MAX_FRAME];
        let len = len.min(MAX_FRAME);
        let r = f(&mut buf[..len]);
        // A frame the NIC refuses is lost like a frame on a busy wire;
        // TCP retransmits it.
        let _ = self.nic.transmit(&buf[..len]);
        r
    }
}

impl<N: Nic + ?Sized> Device for NicDevice<'_, N> {
    type RxToken<'a>
        = RxToken
    where
        Self: 'a;
    type TxToken<'a>
        = TxToken<'a, N>
    where
        Self: 'a;

    fn receive(&mut self, _now: Instant) -> Option<(RxToken, TxToken<'_, N>)> {
        let mut buf = [0u8; MAX_FRAME];
        let len = self.nic.receive(&mut buf)?;
        Some((RxToken { buf, len }, TxToken { nic: self.nic }))
    }

    fn transmit(&mut self, _now: Instant) -> Option<TxToken<'_, N>> {
        if self.nic.can_transmit() {
            Some(TxToken { nic: self.nic })
        } else {
            None
        }
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = MAX_FRAME;
        // Bursts of frames the ring can take at once.
        caps.max_burst_size = Some(32);
        caps
    }
}

/// One direction of an in-memory cable.
type Queue = Rc<RefCell<VecDeque<Vec<u8>>>>;

/// One end of [`pair`]: a NIC whose frames arrive at the other end.
pub struct MemNic {
    mac: [u8; 6],
    rx: Queue,
    tx: Queue,
    /// Frames the wire may hold in each direction before it drops (like a ring).
    capacity: usize,
    /// Whether the cable is plugged in.
    pub link: bool,
    /// Drop every n-th transmitted frame (0 = never), to exercise retransmission.
    pub drop_every: usize,
    sent: usize,
}

impl MemNic {
    /// Frames waiting to be received by this end.
    pub fn pending(&self) -> usize {
        self.rx.borrow().len()
    }
    /// Puts a raw frame on the wire towards this end, as if the peer sent it.
    pub fn inject(&self, frame: &[u8]) {
        self.rx.borrow_mut().push_back(frame.to_vec());
    }
}

/// Two NICs joined by a cable that holds up to `capacity` frames per direction.
pub fn pair(mac_a: [u8; 6], mac_b: [u8; 6], capacity: usize) -> (MemNic, MemNic) {
    let ab: Queue = Rc::default();
    let ba: Queue = Rc::default();
    let a = MemNic {
        mac: mac_a,
        rx: ba.clone(),
        tx: ab.clone(),
        capacity,
        link: true,
        drop_every: 0,
        sent: 0,
    };
    let b = MemNic {
        mac: mac_b,
        rx: ab,
        tx: ba,
        capacity,
        link: true,
        drop_every: 0,
        sent: 0,
    };
    (a, b)
}

impl Nic for MemNic {
    fn mac(&self) -> [u8; 6] {
        self.mac
    }
    fn link_up(&mut self) -> bool {
        self.link
    }
    fn receive(&mut self, buf: &mut [u8]) -> Option<usize> {
        let frame = self.rx.borrow_mut().pop_front()?;
        let n = frame.len().min(buf.len());
        buf[..n].copy_from_slice(&frame[..n]);
        Some(n)
    }
    fn can_transmit(&mut self) -> bool {
        self.tx.borrow().len() < self.capacity
    }
    fn transmit(&mut self, frame: &[u8]) -> bool {
        if !self.link || frame.len() > MAX_FRAME || !self.can_transmit() {
            return false;
        }
        self.sent += 1;
        if self.drop_every != 0 && self.sent.is_multiple_of(self.drop_every) {
            return true;
        }
        self.tx.borrow_mut().push_back(frame.to_vec());
        true
    }
}
