//! The host's IPv4 socket tables (`/proc/net/tcp`, `/proc/net/udp`) and
//! which process owns a socket: how the harness checks, without touching
//! them, that an emulator listens on a port or is connected to a peer.

use std::collections::HashSet;
use std::fs;
use std::net::Ipv4Addr;

/// TCP state `ESTABLISHED` as `/proc/net/tcp` writes it.
pub const TCP_ESTABLISHED: u8 = 0x01;
/// TCP state `LISTEN`.
pub const TCP_LISTEN: u8 = 0x0a;
/// What `/proc/net/udp` shows for a bound, unconnected UDP socket.
pub const UDP_UNCONNECTED: u8 = 0x07;

/// One row of `/proc/net/tcp` or `/proc/net/udp`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketRow {
    /// Local address.
    pub local: (Ipv4Addr, u16),
    /// Remote address (0.0.0.0:0 when not connected).
    pub remote: (Ipv4Addr, u16),
    /// Kernel state code ([`TCP_LISTEN`], [`TCP_ESTABLISHED`], ...).
    pub state: u8,
    /// Socket inode (what `/proc/<pid>/fd/*` links to as `socket:[inode]`).
    pub inode: u64,
}

fn parse_addr(s: &str) -> Option<(Ipv4Addr, u16)> {
    let (ip, port) = s.split_once(':')?;
    // The kernel prints the address's in-memory bytes as a native u32.
    let ip = Ipv4Addr::from(u32::from_str_radix(ip, 16).ok()?.to_ne_bytes());
    Some((ip, u16::from_str_radix(port, 16).ok()?))
}

/// Parses the text of `/proc/net/tcp` or `/proc/net/udp`.
pub fn parse_table(text: &str) -> Vec<SocketRow> {
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            Some(SocketRow {
                local: parse_addr(f.get(1)?)?,
                remote: parse_addr(f.get(2)?)?,
                state: u8::from_str_radix(f.get(3)?, 16).ok()?,
                inode: f.get(9)?.parse().ok()?,
            })
        })
        .collect()
}

/// The host's IPv4 TCP sockets.
pub fn tcp() -> Vec<SocketRow> {
    parse_table(&fs::read_to_string("/proc/net/tcp").unwrap_or_default())
}

/// The host's IPv4 UDP sockets.
pub fn udp() -> Vec<SocketRow> {
    parse_table(&fs::read_to_string("/proc/net/udp").unwrap_or_default())
}

/// Inodes of the sockets process `pid` has open.
pub fn socket_inodes(pid: u32) -> HashSet<u64> {
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return HashSet::new();
    };
    dir.flatten()
        .filter_map(|e| {
            let target = fs::read_link(e.path()).ok()?;
            let t = target.to_str()?;
            t.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
        })
        .collect()
}

/// Whether process `pid` has a TCP socket listening on `port`.
pub fn tcp_listening(pid: u32, port: u16) -> bool {
    let mine = socket_inodes(pid);
    tcp()
        .iter()
        .any(|r| r.state == TCP_LISTEN && r.local.1 == port && mine.contains(&r.inode))
}

/// Whether process `pid` has an established TCP connection to
/// `127.0.0.1:port` (as the client).
pub fn tcp_connected_to(pid: u32, port: u16) -> bool {
    let mine = socket_inodes(pid);
    tcp().iter().any(|r| {
        r.state == TCP_ESTABLISHED
            && r.remote == (Ipv4Addr::LOCALHOST, port)
            && mine.contains(&r.inode)
    })
}

/// Established TCP connections whose local end is `port` (the server side
/// of connections accepted on `port`).
pub fn tcp_established_on(port: u16) -> Vec<SocketRow> {
    tcp()
        .into_iter()
        .filter(|r| r.state == TCP_ESTABLISHED && r.local.1 == port)
        .collect()
}

/// Whether process `pid` has a UDP socket bound to `port`.
pub fn udp_bound(pid: u32, port: u16) -> bool {
    let mine = socket_inodes(pid);
    udp()
        .iter()
        .any(|r| r.local.1 == port && mine.contains(&r.inode))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_net_tcp() {
        let text = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 0100007F:B7A2 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 123456 1 0000000000000000 100 0 0 10 0\n   1: 0100007F:C446 0100007F:B7A2 01 00000000:00000000 00:00000000 00000000     0        0 123457 1 0000000000000000 20 4 30 10 -1\n";
        let rows = parse_table(text);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].local, (Ipv4Addr::LOCALHOST, 0xb7a2));
        assert_eq!(rows[0].state, TCP_LISTEN);
        assert_eq!(rows[0].inode, 123456);
        assert_eq!(rows[1].remote, (Ipv4Addr::LOCALHOST, 0xb7a2));
        assert_eq!(rows[1].state, TCP_ESTABLISHED);
    }

    #[test]
    fn finds_our_own_listener() {
        let l = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = l.local_addr().unwrap().port();
        assert!(tcp_listening(std::process::id(), port));
        let c = std::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port)).unwrap();
        let _s = l.accept().unwrap();
        assert!(tcp_connected_to(std::process::id(), port));
        assert_eq!(tcp_established_on(port).len(), 1);
        drop(c);
        let u = std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        assert!(udp_bound(
            std::process::id(),
            u.local_addr().unwrap().port()
        ));
    }
}
