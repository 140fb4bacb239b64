//! The interface: one `smoltcp` [`Interface`] with its sockets, a static
//! IPv4 address, ARP, ICMP echo (answered by `smoltcp` itself) and TCP.
//!
//! The stack owns no NIC: every [`Stack::poll`] borrows one, so the kernel
//! keeps its driver where it likes and host tests pass an in-memory
//! [`crate::nic::MemNic`].

use alloc::vec;
use alloc::vec::Vec;
use core::fmt;

use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::socket::{icmp, tcp};
use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, HardwareAddress, Icmpv4Packet, Icmpv4Repr, IpCidr};

use crate::nic::{Nic, NicDevice};

pub use smoltcp::wire::{IpAddress, IpEndpoint, Ipv4Address};

/// TCP buffer size per direction and connection. Large enough for a
/// window that keeps an emulated link busy; small enough for a 4 MiB heap
/// to hold a few connections.
pub const TCP_BUFFER: usize = 128 * 1024;

/// Heap bytes one TCP socket's buffers take (both directions): what a
/// listener spends on each connection, authenticated or not.
pub const TCP_SOCKET_BYTES: usize = 2 * TCP_BUFFER;

/// A static IPv4 configuration: `a.b.c.d/len`, optionally a gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpConfig {
    pub addr: Ipv4Address,
    pub prefix: u8,
    pub gateway: Option<Ipv4Address>,
}

impl fmt::Display for IpConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)?;
        if let Some(gw) = self.gateway {
            write!(f, " gw {gw}")?;
        }
        Ok(())
    }
}

/// Parses a dotted-quad IPv4 address, with a message for the operator.
pub fn parse_ipv4(s: &str) -> Result<Ipv4Address, AddrError> {
    let mut octets = [0u8; 4];
    let mut parts = s.split('.');
    for o in octets.iter_mut() {
        let part = parts.next().ok_or(AddrError::NotIpv4)?;
        if part.is_empty() || part.len() > 3 || !part.bytes().all(|b| b.is_ascii_digit()) {
            return Err(AddrError::NotIpv4);
        }
        *o = part.parse().map_err(|_| AddrError::NotIpv4)?;
    }
    if parts.next().is_some() {
        return Err(AddrError::NotIpv4);
    }
    Ok(Ipv4Address::from_octets(octets))
}

/// Parses `a.b.c.d/len` (a unicast host address) and an optional gateway,
/// which must lie in that subnet.
pub fn parse_ip_config(cidr: &str, gateway: Option<&str>) -> Result<IpConfig, AddrError> {
    let (addr, len) = cidr.split_once('/').ok_or(AddrError::NoPrefix)?;
    let addr = parse_ipv4(addr)?;
    let prefix: u8 = match len.parse() {
        Ok(p) if (1..=30).contains(&p) => p,
        _ => return Err(AddrError::BadPrefix),
    };
    if addr.is_unspecified() || addr.is_broadcast() || addr.is_multicast() || addr.is_loopback() {
        return Err(AddrError::NotUnicast);
    }
    let cidr = smoltcp::wire::Ipv4Cidr::new(addr, prefix);
    if Some(addr) == cidr.broadcast() || addr == cidr.network().address() {
        return Err(AddrError::NotUnicast);
    }
    let gateway = match gateway {
        None => None,
        Some(g) => {
            let g = parse_ipv4(g)?;
            if !cidr.contains_addr(&g) || g == addr {
                return Err(AddrError::GatewayOutside);
            }
            Some(g)
        }
    };
    Ok(IpConfig {
        addr,
        prefix,
        gateway,
    })
}

/// A gratuitous ARP: a broadcast ARP request for our own address. It
/// announces (or re-announces, after a migration) which MAC owns `ip`, so
/// neighbours update their caches and learning switches learn our port
/// (Bochs' bxhub forwards unicast frames only to MACs it has seen
/// broadcast).
pub fn gratuitous_arp(mac: [u8; 6], ip: Ipv4Address) -> Vec<u8> {
    use smoltcp::wire::{
        ArpOperation, ArpPacket, ArpRepr, EthernetFrame, EthernetProtocol, EthernetRepr,
    };
    let arp = ArpRepr::EthernetIpv4 {
        operation: ArpOperation::Request,
        source_hardware_addr: EthernetAddress(mac),
        source_protocol_addr: ip,
        target_hardware_addr: EthernetAddress([0; 6]),
        target_protocol_addr: ip,
    };
    let eth = EthernetRepr {
        src_addr: EthernetAddress(mac),
        dst_addr: EthernetAddress::BROADCAST,
        ethertype: EthernetProtocol::Arp,
    };
    let mut buf = vec![0u8; eth.buffer_len() + arp.buffer_len()];
    let mut frame = EthernetFrame::new_unchecked(&mut buf[..]);
    eth.emit(&mut frame);
    arp.emit(&mut ArpPacket::new_unchecked(frame.payload_mut()));
    buf
}

/// Why an address was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AddrError {
    #[error("not an IPv4 address (expected a.b.c.d)")]
    NotIpv4,
    #[error("missing prefix length (expected a.b.c.d/len)")]
    NoPrefix,
    #[error("prefix length must be 1..30")]
    BadPrefix,
    #[error("not a unicast host address")]
    NotUnicast,
    #[error("the gateway must be another address in the same subnet")]
    GatewayOutside,
}

/// Why a stack operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StackError {
    #[error("the NIC's MAC address {0} is not a unicast address")]
    BadMac(EthernetAddress),
    #[error("no IP address set (net set ip=<a.b.c.d/len>)")]
    NoAddress,
    #[error("{0} is not reachable: not in our subnet and no gateway")]
    Unreachable(Ipv4Address),
    #[error("cannot connect: {0}")]
    Connect(tcp::ConnectError),
    #[error("cannot listen on port {0}: {1}")]
    Listen(u16, tcp::ListenError),
    #[error("not enough memory for a TCP connection ({need} KiB needed, {free} KiB free beyond the reserve)", need = .need / 1024, free = .free / 1024)]
    NoMemory { need: usize, free: usize },
}

/// The TCP/IP stack of one host.
pub struct Stack {
    iface: Interface,
    sockets: SocketSet<'static>,
    ip: Option<IpConfig>,
    next_port: u16,
    /// Closed or aborted sockets kept until their FIN or RST has left
    /// (µs deadline after which they go regardless).
    retiring: Vec<(SocketHandle, u64)>,
    now_us: u64,
    /// Free heap bytes, and what must stay free: a socket is only
    /// allocated when its buffers fit above the reserve.
    budget: Option<(fn() -> usize, usize)>,
}

/// Microseconds to a `smoltcp` instant.
fn at(now_us: u64) -> Instant {
    Instant::from_micros(now_us as i64)
}

impl Stack {
    /// A stack on `nic`'s MAC with no address yet. `seed` should differ on
    /// every boot (TCP initial sequence numbers, ports).
    pub fn new<N: Nic + ?Sized>(nic: &mut N, seed: u64, now_us: u64) -> Result<Stack, StackError> {
        let mac = EthernetAddress(nic.mac());
        if !mac.is_unicast() {
            return Err(StackError::BadMac(mac));
        }
        let mut config = Config::new(HardwareAddress::Ethernet(mac));
        config.random_seed = seed;
        let iface = Interface::new(config, &mut NicDevice::new(nic), at(now_us));
        Ok(Stack {
            iface,
            sockets: SocketSet::new(vec![]),
            ip: None,
            next_port: 49152 + (seed % 8192) as u16,
            retiring: Vec::new(),
            now_us,
            budget: None,
        })
    }

    /// Sets (replaces) the address and default route.
    pub fn set_ip(&mut self, cfg: IpConfig) {
        self.iface.update_ip_addrs(|addrs| {
            addrs.clear();
            // Capacity is at least one address, and it is empty now.
            let _ = addrs.push(IpCidr::new(IpAddress::Ipv4(cfg.addr), cfg.prefix));
        });
        let routes = self.iface.routes_mut();
        routes.remove_default_ipv4_route();
        if let Some(gw) = cfg.gateway {
            // The table was just emptied of its default route.
            let _ = routes.add_default_ipv4_route(gw);
        }
        self.ip = Some(cfg);
    }

    /// Broadcasts a gratuitous ARP for our address (if set) through `nic`.
    pub fn announce<N: Nic + ?Sized>(&mut self, nic: &mut N) -> bool {
        match self.ip {
            Some(cfg) => nic.transmit(&gratuitous_arp(self.mac(), cfg.addr)),
            None => false,
        }
    }

    /// The configured address, if any.
    pub fn ip(&self) -> Option<IpConfig> {
        self.ip
    }

    /// The station address.
    pub fn mac(&self) -> [u8; 6] {
        match self.iface.hardware_addr() {
            HardwareAddress::Ethernet(m) => m.0,
        }
    }

    /// Moves frames between the NIC and the sockets. Returns true if a
    /// socket may have changed state.
    pub fn poll<N: Nic + ?Sized>(&mut self, nic: &mut N, now_us: u64) -> bool {
        self.now_us = now_us;
        let r = self
            .iface
            .poll(at(now_us), &mut NicDevice::new(nic), &mut self.sockets);
        // Sockets handed back: gone once closed (the RST or final ACK has
        // been sent by the poll above) or past their deadline.
        let mut i = 0;
        while i < self.retiring.len() {
            let (h, deadline) = self.retiring[i];
            let s = self.sockets.get::<tcp::Socket>(h);
            if matches!(s.state(), tcp::State::Closed | tcp::State::TimeWait) || now_us >= deadline
            {
                self.sockets.remove(h);
                self.retiring.swap_remove(i);
            } else {
                i += 1;
            }
        }
        r == smoltcp::iface::PollResult::SocketStateChanged
    }

    /// How long (µs) until the stack needs polling again with no input,
    /// if it has timers running.
    pub fn poll_delay_us(&mut self, now_us: u64) -> Option<u64> {
        self.iface
            .poll_delay(at(now_us), &self.sockets)
            .map(|d| d.total_micros())
    }

    /// Checks that `ip` can be reached (address set, on link or via a gateway).
    pub fn route_check(&self, ip: Ipv4Address) -> Result<(), StackError> {
        let cfg = self.ip.ok_or(StackError::NoAddress)?;
        let net = smoltcp::wire::Ipv4Cidr::new(cfg.addr, cfg.prefix);
        if net.contains_addr(&ip) || cfg.gateway.is_some() {
            Ok(())
        } else {
            Err(StackError::Unreachable(ip))
        }
    }

    /// Checks free memory before every socket allocation: `free` tells the
    /// heap's free bytes, `reserve` is what must stay free for the rest of
    /// the host. A socket that does not fit fails with
    /// [`StackError::NoMemory`] instead of exhausting the heap.
    pub fn set_memory_budget(&mut self, free: fn() -> usize, reserve: usize) {
        self.budget = Some((free, reserve));
    }

    /// A zeroed buffer, or `NoMemory` (never an allocation failure).
    fn buffer(len: usize) -> Result<Vec<u8>, StackError> {
        let mut v = Vec::new();
        v.try_reserve_exact(len).map_err(|_| StackError::NoMemory {
            need: TCP_SOCKET_BYTES,
            free: 0,
        })?;
        v.resize(len, 0);
        Ok(v)
    }

    fn tcp_socket(&self) -> Result<tcp::Socket<'static>, StackError> {
        if let Some((free, reserve)) = self.budget {
            let above = free().saturating_sub(reserve);
            if above < TCP_SOCKET_BYTES {
                return Err(StackError::NoMemory {
                    need: TCP_SOCKET_BYTES,
                    free: above,
                });
            }
        }
        let rx = Self::buffer(TCP_BUFFER)?;
        let tx = Self::buffer(TCP_BUFFER)?;
        let mut s = tcp::Socket::new(tcp::SocketBuffer::new(rx), tcp::SocketBuffer::new(tx));
        // Channel frames are written whole; do not hold back the tail of one.
        s.set_nagle_enabled(false);
        // Without congestion control a sender puts the peer's whole window
        // on the wire at once; links that drop bursts (bxhub, a busy
        // emulated NIC) then lose frames and stall on the 1 s minimum RTO.
        s.set_congestion_control(tcp::CongestionControl::Reno);
        // A peer that vanishes (host dead, cable cut) must not leave the
        // connection hanging: give up after 10 s without an ACK, and probe
        // an idle connection every 2 s so that is noticed too.
        s.set_timeout(Some(smoltcp::time::Duration::from_secs(10)));
        s.set_keep_alive(Some(smoltcp::time::Duration::from_secs(2)));
        s.set_ack_delay(None);
        Ok(s)
    }

    /// Opens a TCP connection to `remote` from a fresh ephemeral port.
    pub fn tcp_connect(&mut self, remote: (Ipv4Address, u16)) -> Result<SocketHandle, StackError> {
        self.route_check(remote.0)?;
        let port = self.next_port;
        self.next_port = if port == u16::MAX { 49152 } else { port + 1 };
        let mut s = self.tcp_socket()?;
        s.connect(
            self.iface.context(),
            IpEndpoint::new(IpAddress::Ipv4(remote.0), remote.1),
            port,
        )
        .map_err(StackError::Connect)?;
        Ok(self.sockets.add(s))
    }

    /// A socket listening on `port`; it becomes the connection of the first
    /// peer that connects.
    pub fn tcp_listen(&mut self, port: u16) -> Result<SocketHandle, StackError> {
        let mut s = self.tcp_socket()?;
        s.listen(port).map_err(|e| StackError::Listen(port, e))?;
        Ok(self.sockets.add(s))
    }

    /// The TCP socket behind `h`.
    pub fn tcp(&mut self, h: SocketHandle) -> &mut tcp::Socket<'static> {
        self.sockets.get_mut::<tcp::Socket>(h)
    }

    /// Frees a socket at once (its RST or FIN may not have left yet:
    /// prefer [`Stack::retire`] for TCP).
    pub fn remove(&mut self, h: SocketHandle) {
        self.sockets.remove(h);
    }

    /// Hands back a TCP socket after `close()` or `abort()`: the stack
    /// frees it once its FIN or RST has gone out (at most 2 s later), so
    /// the peer learns the connection ended instead of timing out.
    pub fn retire(&mut self, h: SocketHandle) {
        let deadline = self.now_us + 2_000_000;
        self.retiring.push((h, deadline));
    }

    /// Number of sockets, including retiring ones (for leak checks).
    pub fn socket_count(&self) -> usize {
        self.sockets.iter().count()
    }

    fn icmp_socket(&mut self, ident: u16) -> SocketHandle {
        let mut s = icmp::Socket::new(
            icmp::PacketBuffer::new(vec![icmp::PacketMetadata::EMPTY; 8], vec![0; 2048]),
            icmp::PacketBuffer::new(vec![icmp::PacketMetadata::EMPTY; 8], vec![0; 2048]),
        );
        // A fresh socket binds to any identifier.
        let _ = s.bind(icmp::Endpoint::Ident(ident));
        self.sockets.add(s)
    }
}

/// One result of a [`Ping`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PingEvent {
    Reply { seq: u16, rtt_us: u64 },
    Timeout { seq: u16 },
}

/// `count` ICMP echo requests to one host, one per second (the next one
/// goes out at once when a reply arrives), each waiting up to a timeout.
pub struct Ping {
    handle: SocketHandle,
    target: Ipv4Address,
    ident: u16,
    count: u16,
    /// Send time of each request (µs), by sequence number.
    sent_at: Vec<Option<u64>>,
    answered: Vec<bool>,
    next_send_us: u64,
    timeout_us: u64,
    reported: u16,
}

/// Bytes of payload in each echo request.
const PING_PAYLOAD: usize = 56;

impl Ping {
    /// Starts pinging; the first request leaves on the next poll.
    pub fn start(
        stack: &mut Stack,
        target: Ipv4Address,
        count: u16,
        timeout_us: u64,
        now_us: u64,
    ) -> Result<Ping, StackError> {
        stack.route_check(target)?;
        let ident = 0x4876 ^ (now_us as u16);
        let handle = stack.icmp_socket(ident);
        Ok(Ping {
            handle,
            target,
            ident,
            count: count.max(1),
            sent_at: Vec::new(),
            answered: Vec::new(),
            next_send_us: now_us,
            timeout_us,
            reported: 0,
        })
    }

    /// Sends what is due and collects replies. Call after [`Stack::poll`].
    pub fn poll(&mut self, stack: &mut Stack, now_us: u64) -> Vec<PingEvent> {
        let mut events = Vec::new();
        let sock = stack.sockets.get_mut::<icmp::Socket>(self.handle);
        while let Ok((data, from)) = sock.recv() {
            if from != IpAddress::Ipv4(self.target) {
                continue;
            }
            let Ok(pkt) = Icmpv4Packet::new_checked(data) else {
                continue;
            };
            let Ok(repr) = Icmpv4Repr::parse(&pkt, &Default::default()) else {
                continue;
            };
            if let Icmpv4Repr::EchoReply { ident, seq_no, .. } = repr {
                let i = seq_no as usize;
                if ident == self.ident
                    && i < self.sent_at.len()
                    && !self.answered[i]
                    && let Some(t) = self.sent_at[i]
                {
                    self.answered[i] = true;
                    events.push(PingEvent::Reply {
                        seq: seq_no,
                        rtt_us: now_us.saturating_sub(t),
                    });
                    // The next request need not wait the full second.
                    self.next_send_us = self.next_send_us.min(now_us + 200_000);
                }
            }
        }
        // Timeouts, in order.
        for i in 0..self.sent_at.len() {
            if let Some(t) = self.sent_at[i]
                && !self.answered[i]
                && now_us >= t + self.timeout_us
            {
                self.answered[i] = true;
                events.push(PingEvent::Timeout { seq: i as u16 });
            }
        }
        let sent = self.sent_at.len() as u16;
        if sent < self.count && now_us >= self.next_send_us && sock.can_send() {
            let payload = [0xA5u8; PING_PAYLOAD];
            let repr = Icmpv4Repr::EchoRequest {
                ident: self.ident,
                seq_no: sent,
                data: &payload,
            };
            if let Ok(buf) = sock.send(repr.buffer_len(), IpAddress::Ipv4(self.target)) {
                let mut pkt = Icmpv4Packet::new_unchecked(buf);
                repr.emit(&mut pkt, &Default::default());
                self.sent_at.push(Some(now_us));
                self.answered.push(false);
                self.next_send_us = now_us + 1_000_000;
            }
        }
        self.reported += events.len() as u16;
        events
    }

    /// Every request got its reply or timed out.
    pub fn done(&self) -> bool {
        self.reported >= self.count
    }

    /// Frees the socket.
    pub fn finish(self, stack: &mut Stack) {
        stack.remove(self.handle);
    }
}
