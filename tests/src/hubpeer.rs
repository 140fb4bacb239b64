//! A station of the test's own on a Bochs link: the project's TCP/IP
//! stack ([`netstack::stack::Stack`], smoltcp) running in the test process
//! on a [`Nic`] that speaks bxhub's framing.
//!
//! ```no_run
//! use hv_tests::hubpeer::HubPeer;
//! use hv_tests::{Link, Machine};
//!
//! let link = Link::bochs_with_peer();
//! let mut b = Machine::bochs().config("net.ip = 10.0.0.2/24\n").link(&link).start();
//! b.boot_to_prompt();
//! let mut peer = HubPeer::join(&link, "10.0.0.9/24").unwrap();
//! let h = peer.tcp_connect([10, 0, 0, 2].into(), 7002).unwrap();
//! while !peer.tcp(h).may_send() {
//!     peer.poll();
//!     peer.wait(std::time::Duration::from_millis(10));
//! }
//! ```
//!
//! Bochs' socket ethmod carries one raw Ethernet frame (no FCS) per UDP
//! datagram. With `bxhub -ports=3 -base=B` ([`Link::bochs_with_peer`]) the
//! hub sends what it forwards to port 2 to `127.0.0.1:B+4` and takes that
//! port's frames on `B+5`: [`HubNic`] binds the first and sends to the
//! second. bxhub forwards a unicast frame only to a MAC it has seen in a
//! broadcast, so [`HubPeer::join`] sends a gratuitous ARP at once.
//!
//! Everything here runs on the thread that polls it; a `HubPeer` can be
//! moved to a thread of its own. Its frames reach only the emulated link
//! (addresses such as 10.0.0.x exist nowhere else); the UDP sockets are on
//! 127.0.0.1.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use netstack::nic::{MAX_FRAME, Nic};
use netstack::stack::{IpConfig, Stack, StackError, parse_ip_config};
use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp;

use crate::link::Link;
use crate::machine::Error;

/// The MAC [`HubPeer::join`] gives the station (locally administered,
/// unlike the machines' [`crate::BOCHS_LINK_MACS`]).
pub const HUB_PEER_MAC: [u8; 6] = [0x02, 0x68, 0x76, 0x00, 0x00, 0x09];

/// Frame counters of a [`HubNic`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HubNicCounters {
    pub rx_frames: u64,
    pub rx_bytes: u64,
    pub tx_frames: u64,
    pub tx_bytes: u64,
    /// Frames the host's socket refused (buffer full, hub gone).
    pub tx_errors: u64,
}

/// A [`Nic`] on a bxhub port: a non-blocking UDP socket on
/// `127.0.0.1:<port>` that sends to the hub on `port + 1`.
pub struct HubNic {
    sock: UdpSocket,
    hub: SocketAddr,
    mac: [u8; 6],
    counters: HubNicCounters,
}

impl HubNic {
    /// Binds `127.0.0.1:port` (the hub sends there) and sends to `port + 1`.
    pub fn bind(port: u16, mac: [u8; 6]) -> io::Result<HubNic> {
        let sock = UdpSocket::bind((Ipv4Addr::LOCALHOST, port))?;
        sock.set_nonblocking(true)?;
        Ok(HubNic {
            sock,
            hub: SocketAddr::from((Ipv4Addr::LOCALHOST, port + 1)),
            mac,
            counters: HubNicCounters::default(),
        })
    }

    /// Frames and bytes so far.
    pub fn counters(&self) -> HubNicCounters {
        self.counters
    }

    /// Waits up to `timeout` for a frame to arrive (without taking it).
    pub fn wait(&self, timeout: Duration) {
        let mut fd = libc::pollfd {
            fd: self.sock.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = timeout.as_millis().clamp(0, i32::MAX as u128) as i32;
        // SAFETY: `fd` is one valid pollfd that outlives the call, and the
        // count passed is 1.
        unsafe {
            libc::poll(&mut fd, 1, ms);
        }
    }
}

impl Nic for HubNic {
    fn mac(&self) -> [u8; 6] {
        self.mac
    }

    fn link_up(&mut self) -> bool {
        true
    }

    fn receive(&mut self, buf: &mut [u8]) -> Option<usize> {
        loop {
            match self.sock.recv_from(buf) {
                // Only the hub's port speaks to us; anything else is not a frame.
                Ok((n, from)) if from == self.hub => {
                    self.counters.rx_frames += 1;
                    self.counters.rx_bytes += n as u64;
                    return Some(n.min(MAX_FRAME));
                }
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // WouldBlock, or an ICMP error from an earlier send.
                Err(_) => return None,
            }
        }
    }

    fn can_transmit(&mut self) -> bool {
        true
    }

    fn transmit(&mut self, frame: &[u8]) -> bool {
        if frame.len() > MAX_FRAME {
            return false;
        }
        match self.sock.send_to(frame, self.hub) {
            Ok(_) => {
                self.counters.tx_frames += 1;
                self.counters.tx_bytes += frame.len() as u64;
                true
            }
            Err(_) => {
                self.counters.tx_errors += 1;
                false
            }
        }
    }
}

/// A host on the link: [`HubNic`] plus the project's [`Stack`], with its
/// own clock (µs since [`HubPeer::join`]).
pub struct HubPeer {
    nic: HubNic,
    stack: Stack,
    epoch: Instant,
}

impl HubPeer {
    /// Joins `link` (made with [`Link::bochs_with_peer`]) as `cidr`
    /// (`a.b.c.d/len`) with MAC [`HUB_PEER_MAC`], and announces the address
    /// with a gratuitous ARP.
    pub fn join(link: &Link, cidr: &str) -> Result<HubPeer, Error> {
        Self::join_as(link, cidr, HUB_PEER_MAC)
    }

    /// [`HubPeer::join`] with another MAC.
    pub fn join_as(link: &Link, cidr: &str, mac: [u8; 6]) -> Result<HubPeer, Error> {
        let port = link.peer_port().ok_or_else(|| {
            Error("hub peer: the link has no port for it (use Link::bochs_with_peer)".into())
        })?;
        let ip: IpConfig =
            parse_ip_config(cidr, None).map_err(|e| Error(format!("hub peer: {cidr}: {e}")))?;
        let mut nic = HubNic::bind(port, mac)
            .map_err(|e| Error(format!("hub peer: cannot bind UDP 127.0.0.1:{port}: {e}")))?;
        let epoch = Instant::now();
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0x5eed, |d| d.as_nanos() as u64)
            ^ u64::from(std::process::id());
        let mut stack = Stack::new(&mut nic, seed, 0)
            .map_err(|e| Error(format!("hub peer: cannot start the stack: {e}")))?;
        stack.set_ip(ip);
        let mut peer = HubPeer { nic, stack, epoch };
        if !peer.announce() {
            return Err(Error(format!(
                "hub peer: cannot send the gratuitous ARP to the hub on 127.0.0.1:{}",
                port + 1
            )));
        }
        Ok(peer)
    }

    /// Microseconds since the peer joined (the stack's clock).
    pub fn now_us(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }

    /// Broadcasts a gratuitous ARP for the peer's address.
    pub fn announce(&mut self) -> bool {
        self.stack.announce(&mut self.nic)
    }

    /// Moves frames between the hub and the sockets; true if a socket may
    /// have changed state.
    pub fn poll(&mut self) -> bool {
        let now = self.now_us();
        self.stack.poll(&mut self.nic, now)
    }

    /// Sleeps until a frame arrives, the stack's next timer, or `max`,
    /// whichever comes first. Call between polls.
    pub fn wait(&mut self, max: Duration) {
        let now = self.now_us();
        let timer = self
            .stack
            .poll_delay_us(now)
            .map_or(max, Duration::from_micros);
        // Never a busy loop: a timer already due waits for 1 ms at most.
        self.nic.wait(timer.max(Duration::from_millis(1)).min(max));
    }

    /// Polls for `d`, waiting in between.
    pub fn run_for(&mut self, d: Duration) {
        let end = Instant::now() + d;
        while Instant::now() < end {
            self.poll();
            self.wait((end - Instant::now()).min(Duration::from_millis(20)));
        }
    }

    /// Opens a TCP connection to `ip:port` from a fresh ephemeral port.
    pub fn tcp_connect(&mut self, ip: Ipv4Addr, port: u16) -> Result<SocketHandle, StackError> {
        self.stack.tcp_connect((ip, port))
    }

    /// The TCP socket behind `h`.
    pub fn tcp(&mut self, h: SocketHandle) -> &mut tcp::Socket<'static> {
        self.stack.tcp(h)
    }

    /// Resets the connection behind `h` and hands the socket back (it is
    /// freed once the RST has left, on a later poll).
    pub fn abort(&mut self, h: SocketHandle) {
        self.stack.tcp(h).abort();
        self.stack.retire(h);
    }

    /// The stack, for anything else.
    pub fn stack(&mut self) -> &mut Stack {
        &mut self.stack
    }

    /// The NIC's counters.
    pub fn counters(&self) -> HubNicCounters {
        self.nic.counters()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A station on the first machine port of a real bxhub answers the
    /// peer's TCP connection: ARP, the hub's learning and TCP all work
    /// through [`HubNic`] (no emulator needed).
    #[test]
    fn two_stations_talk_tcp_through_bxhub() {
        let link = Link::bochs_with_peer();
        assert_eq!(link.peer_port(), Some(link.port() + 4));
        let mut nic = HubNic::bind(link.port(), [0x02, 0, 0, 0, 0, 2]).unwrap();
        let epoch = Instant::now();
        let now = || epoch.elapsed().as_micros() as u64;
        let mut host = Stack::new(&mut nic, 1, now()).unwrap();
        host.set_ip(parse_ip_config("10.0.0.2/24", None).unwrap());
        assert!(host.announce(&mut nic));
        let server = host.tcp_listen(7).unwrap();

        let mut peer = HubPeer::join(&link, "10.0.0.9/24").unwrap();
        let client = peer.tcp_connect(Ipv4Addr::new(10, 0, 0, 2), 7).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let (mut sent, mut echoed, mut got) = (false, false, Vec::new());
        while got != b"PING" {
            assert!(
                Instant::now() < deadline,
                "no echo within 10 s: client {:?}, server {:?}, peer {:?}, host {:?}",
                peer.tcp(client).state(),
                host.tcp(server).state(),
                peer.counters(),
                nic.counters()
            );
            peer.poll();
            host.poll(&mut nic, now());
            let c = peer.tcp(client);
            if !sent && c.can_send() {
                sent = c.send_slice(b"ping").unwrap() == 4;
            }
            while c.can_recv() {
                c.recv(|b| {
                    got.extend_from_slice(b);
                    (b.len(), ())
                })
                .unwrap();
            }
            let s = host.tcp(server);
            if !echoed && s.can_recv() {
                let mut buf = [0u8; 16];
                let n = s.recv_slice(&mut buf).unwrap();
                echoed = s.send_slice(&buf[..n].to_ascii_uppercase()).unwrap() == n;
            }
            nic.wait(Duration::from_millis(1));
        }
        assert_eq!(peer.tcp(client).remote_endpoint().unwrap().port, 7);
        assert!(peer.counters().rx_frames >= 2 && nic.counters().rx_frames >= 2);
    }
}
