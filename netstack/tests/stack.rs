//! Two stacks joined by an in-memory cable: ARP, ping, TCP channels, the
//! bench protocol, and what happens to bad peers.

use netstack::bench::{BenchSender, BenchStatus, SINK_PORT, Sink, SinkEvent};
use netstack::channel::{Channel, ChannelOptions, CloseReason, SendError};
use netstack::codec::{ChannelError, Handshake, Key};
use netstack::nic::{MemNic, pair};
use netstack::stack::{IpConfig, Ping, PingEvent, Stack, parse_ip_config, parse_ipv4};
use smoltcp::wire::Ipv4Address;

const KEY: &str = "00112233445566778899aabbccddeeff";
const OTHER_KEY: &str = "ffeeddccbbaa99887766554433221100";

struct Net {
    a: Stack,
    na: MemNic,
    b: Stack,
    nb: MemNic,
    now_us: u64,
    nonce: u8,
}

fn ip(s: &str) -> Ipv4Address {
    parse_ipv4(s).unwrap()
}

impl Net {
    fn new() -> Net {
        let (mut na, mut nb) = pair([0x02, 0, 0, 0, 0, 1], [0x02, 0, 0, 0, 0, 2], 256);
        let mut a = Stack::new(&mut na, 1, 0).unwrap();
        let mut b = Stack::new(&mut nb, 2, 0).unwrap();
        a.set_ip(parse_ip_config("10.0.0.1/24", None).unwrap());
        b.set_ip(parse_ip_config("10.0.0.2/24", None).unwrap());
        Net {
            a,
            na,
            b,
            nb,
            now_us: 1_000,
            nonce: 0,
        }
    }

    /// Advances the clock by 100 µs and polls both stacks.
    fn step(&mut self) {
        self.now_us += 100;
        self.a.poll(&mut self.na, self.now_us);
        self.b.poll(&mut self.nb, self.now_us);
    }

    fn nonce(&mut self) -> [u8; 32] {
        self.nonce += 1;
        [self.nonce; 32]
    }
}

fn key(s: &str) -> Key {
    Key::from_hex(s).unwrap()
}

#[test]
fn ip_config_parsing() {
    let c = parse_ip_config("10.1.2.3/16", Some("10.1.0.1")).unwrap();
    assert_eq!(c.addr, ip("10.1.2.3"));
    assert_eq!(c.prefix, 16);
    assert_eq!(c.to_string(), "10.1.2.3/16 gw 10.1.0.1");
    for bad in [
        "10.0.0.1",
        "10.0.0/24",
        "10.0.0.256/24",
        "10.0.0.1/33",
        "10.0.0.1/0",
        "10.0.0.255/24",
        "10.0.0.0/24",
        "224.0.0.1/8",
        "127.0.0.1/8",
        "a.b.c.d/8",
        "1.2.3.4.5/8",
        "",
    ] {
        assert!(parse_ip_config(bad, None).is_err(), "{bad} accepted");
    }
    assert!(parse_ip_config("10.0.0.1/24", Some("10.0.1.1")).is_err());
    assert!(parse_ip_config("10.0.0.1/24", Some("10.0.0.1")).is_err());
}

#[test]
fn gratuitous_arp_announces_our_address() {
    let mut n = Net::new();
    assert!(n.a.announce(&mut n.na));
    // What went on the wire: a broadcast ARP request for our own address.
    let mut frame = [0u8; 64];
    let len = netstack::nic::Nic::receive(&mut n.nb, &mut frame).unwrap();
    assert_eq!(len, 42);
    assert_eq!(&frame[..6], &[0xff; 6]);
    assert_eq!(&frame[6..12], &[2, 0, 0, 0, 0, 1]);
    assert_eq!(&frame[12..14], &[0x08, 0x06]);
    assert_eq!(&frame[20..22], &[0, 1], "ARP request");
    assert_eq!(&frame[28..32], &[10, 0, 0, 1], "sender IP");
    assert_eq!(&frame[38..42], &[10, 0, 0, 1], "target IP");
}

#[test]
fn ping_gets_replies_with_round_trip_times() {
    let mut n = Net::new();
    let mut p = Ping::start(&mut n.a, ip("10.0.0.2"), 3, 1_000_000, n.now_us).unwrap();
    let mut events = Vec::new();
    for _ in 0..50_000 {
        n.step();
        events.extend(p.poll(&mut n.a, n.now_us));
        if p.done() {
            break;
        }
    }
    assert!(p.done(), "ping did not finish: {events:?}");
    let seqs: Vec<u16> = events
        .iter()
        .map(|e| match e {
            PingEvent::Reply { seq, rtt_us } => {
                assert!(*rtt_us < 10_000, "rtt {rtt_us}");
                *seq
            }
            PingEvent::Timeout { seq } => panic!("seq {seq} timed out"),
        })
        .collect();
    assert_eq!(seqs, vec![0, 1, 2]);
    p.finish(&mut n.a);
    assert_eq!(n.a.socket_count(), 0);
}

#[test]
fn ping_to_a_silent_address_times_out() {
    let mut n = Net::new();
    let mut p = Ping::start(&mut n.a, ip("10.0.0.9"), 2, 500_000, n.now_us).unwrap();
    let mut events = Vec::new();
    for _ in 0..100_000 {
        n.step();
        events.extend(p.poll(&mut n.a, n.now_us));
        if p.done() {
            break;
        }
    }
    assert_eq!(
        events,
        vec![PingEvent::Timeout { seq: 0 }, PingEvent::Timeout { seq: 1 }]
    );
    // Off-link without a gateway is refused at once.
    assert!(Ping::start(&mut n.a, ip("192.168.1.1"), 1, 1, n.now_us).is_err());
}

/// Runs a bench of `total` bytes from A to a sink on B; returns the
/// sender's final status and the sink's events.
fn bench(
    n: &mut Net,
    total: u64,
    sender_key: &str,
    sink_key: &str,
) -> (BenchStatus, Vec<SinkEvent>) {
    let mut sink = Sink::new(&mut n.b, SINK_PORT, 4).unwrap();
    let nonce = n.nonce();
    let mut s = BenchSender::start(
        &mut n.a,
        (ip("10.0.0.2"), SINK_PORT),
        &key(sender_key),
        nonce,
        total,
        n.now_us,
    )
    .unwrap();
    let sink_key = key(sink_key);
    let mut events = Vec::new();
    let mut counter = 100u8;
    let status = loop {
        n.step();
        let st = s.poll(&mut n.a, n.now_us).clone();
        events.extend(sink.poll(
            &mut n.b,
            &sink_key,
            &mut || {
                counter = counter.wrapping_add(1);
                [counter; 32]
            },
            n.now_us,
        ));
        if matches!(st, BenchStatus::Done(_) | BenchStatus::Failed(_)) {
            break st;
        }
        assert!(n.now_us < 600_000_000, "bench stuck: {st:?}");
    };
    // Let the close and the sink's clean-up happen.
    for _ in 0..2000 {
        n.step();
        s.poll_channel(&mut n.a, n.now_us);
        events.extend(sink.poll(&mut n.b, &sink_key, &mut || [7; 32], n.now_us));
    }
    s.finish(&mut n.a);
    sink.close(&mut n.b);
    for _ in 0..10 {
        n.step();
    }
    assert_eq!(n.a.socket_count(), 0, "sender leaked a socket");
    assert_eq!(n.b.socket_count(), 0, "sink leaked a socket");
    (status, events)
}

#[test]
fn bench_moves_data_with_a_matching_checksum() {
    let mut n = Net::new();
    let (st, events) = bench(&mut n, 4 << 20, KEY, KEY);
    let BenchStatus::Done(r) = st else {
        panic!("{st:?}")
    };
    assert!(r.ok, "{r:?}");
    assert_eq!(r.bytes, 4 << 20);
    assert_eq!(r.sent_sum, r.sink_sum);
    assert!(
        events
            .iter()
            .any(|e| matches!(e, SinkEvent::Received { bytes, ok: true, .. } if *bytes == 4 << 20)),
        "{events:?}"
    );
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, SinkEvent::Dropped { .. })),
        "{events:?}"
    );
}

#[test]
fn bench_survives_a_lossy_link() {
    let mut n = Net::new();
    n.na.drop_every = 13;
    n.nb.drop_every = 17;
    let (st, _) = bench(&mut n, 1 << 20, KEY, KEY);
    let BenchStatus::Done(r) = st else {
        panic!("{st:?}")
    };
    assert!(r.ok && r.bytes == 1 << 20, "{r:?}");
}

#[test]
fn zero_byte_bench_is_fine() {
    let mut n = Net::new();
    let (st, _) = bench(&mut n, 0, KEY, KEY);
    assert!(
        matches!(st, BenchStatus::Done(r) if r.ok && r.bytes == 0),
        "{st:?}"
    );
}

#[test]
fn wrong_key_is_refused_and_both_hosts_keep_working() {
    let mut n = Net::new();
    let (st, events) = bench(&mut n, 1 << 20, OTHER_KEY, KEY);
    assert_eq!(st, BenchStatus::Failed(ChannelError::WrongKey.to_string()),);
    assert!(
        events
            .iter()
            .all(|e| !matches!(e, SinkEvent::Opened { .. } | SinkEvent::Received { .. })),
        "the sink accepted a peer without the key: {events:?}"
    );
    assert!(
        events
            .iter()
            .any(|e| matches!(e, SinkEvent::Dropped { .. })),
        "{events:?}"
    );
    // Same hosts, right key: works.
    let (st, _) = bench(&mut n, 256 << 10, KEY, KEY);
    assert!(matches!(st, BenchStatus::Done(r) if r.ok), "{st:?}");
}

/// A raw TCP connection from A to B's sink port.
fn raw_connect(n: &mut Net) -> smoltcp::iface::SocketHandle {
    let h = n.a.tcp_connect((ip("10.0.0.2"), SINK_PORT)).unwrap();
    for _ in 0..1000 {
        n.step();
        if n.a.tcp(h).may_send() {
            return h;
        }
    }
    panic!("raw connect failed");
}

/// Feeds raw bytes to a sink and returns why it dropped the connection.
fn sink_drop_reason(
    n: &mut Net,
    mut bytes_after_connect: impl FnMut(&mut Net, smoltcp::iface::SocketHandle),
) -> CloseReason {
    let mut sink = Sink::new(&mut n.b, SINK_PORT, 4).unwrap();
    let k = key(KEY);
    let mut events = Vec::new();
    let h = raw_connect(n);
    for _ in 0..5000 {
        // The peer's side, one step at a time.
        bytes_after_connect(n, h);
        n.step();
        events.extend(sink.poll(&mut n.b, &k, &mut || [9; 32], n.now_us));
        if let Some(SinkEvent::Dropped { reason, .. }) = events
            .iter()
            .find(|e| matches!(e, SinkEvent::Dropped { .. }))
        {
            let reason = reason.clone();
            // The sink still serves honest peers afterwards.
            n.a.tcp(h).abort();
            n.step();
            n.a.remove(h);
            sink.close(&mut n.b);
            return reason;
        }
    }
    panic!("sink did not drop the connection: {events:?}");
}

#[test]
fn garbage_on_the_channel_port_closes_that_connection() {
    let mut n = Net::new();
    let mut sent = false;
    let reason = sink_drop_reason(&mut n, |n, h| {
        if std::mem::replace(&mut sent, true) {
            return;
        }
        n.a.tcp(h)
            .send_slice(b"GET / HTTP/1.0\r\n\r\nxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx")
            .unwrap();
    });
    assert_eq!(reason, CloseReason::Protocol(ChannelError::BadMagic));
    let (st, _) = bench(&mut n, 64 << 10, KEY, KEY);
    assert!(matches!(st, BenchStatus::Done(r) if r.ok), "{st:?}");
}

#[test]
fn oversized_frame_after_a_valid_handshake_closes_that_connection() {
    let mut n = Net::new();
    let mut hs = Handshake::client(&key(KEY), [3; 32], 1 << 20);
    let mut rx = Vec::new();
    let mut done = false;
    let reason = sink_drop_reason(&mut n, |n, h| {
        // A peer with the key that then announces a 100 MiB frame.
        if done {
            return;
        }
        let out = hs.take_output();
        if !out.is_empty() {
            n.a.tcp(h).send_slice(&out).unwrap();
        }
        let mut buf = [0u8; 512];
        if let Ok(k) = n.a.tcp(h).recv_slice(&mut buf) {
            rx.extend_from_slice(&buf[..k]);
        }
        let used = hs.feed(&rx).unwrap();
        rx.drain(..used);
        if hs.is_done() {
            let out = hs.take_output();
            n.a.tcp(h).send_slice(&out).unwrap();
            let mut header = Vec::new();
            header.extend_from_slice(&(100u32 << 20).to_le_bytes());
            header.push(17);
            header.extend_from_slice(&0u64.to_le_bytes());
            n.a.tcp(h).send_slice(&header).unwrap();
            done = true;
        }
    });
    assert!(
        matches!(reason, CloseReason::Protocol(ChannelError::Oversized { len, .. }) if len == 100 << 20),
        "{reason:?}"
    );
}

#[test]
fn a_slow_reader_bounds_the_writers_memory() {
    let mut n = Net::new();
    let k = key(KEY);
    let mut listener = netstack::channel::Listener::new(&mut n.b, 7000, 4).unwrap();
    let opts = ChannelOptions {
        max_payload: 8192,
        tx_limit: 64 * 1024,
        ..Default::default()
    };
    let mut c = Channel::connect(
        &mut n.a,
        (ip("10.0.0.2"), 7000),
        &k,
        [1; 32],
        opts,
        n.now_us,
    )
    .unwrap();
    let mut server = None;
    let payload = vec![0x5a; 8000];
    let mut accepted = 0u64;
    let mut blocked = 0u64;
    for _ in 0..20_000 {
        n.step();
        if server.is_none()
            && let Some(h) = listener.accept(&mut n.b, 0, n.now_us)
        {
            server = Some(Channel::accept(&mut n.b, h, &k, [2; 32], opts, n.now_us));
        }
        if let Some(s) = server.as_mut() {
            // Polled (so TCP and the handshake run) but never read.
            s.poll(&mut n.b, n.now_us);
            assert!(
                s.buffered() <= 13 + 8192 + 32 + 16 * 1024,
                "reader buffered {}",
                s.buffered()
            );
        }
        c.poll(&mut n.a, n.now_us);
        match c.send(20, &payload) {
            Ok(()) => accepted += payload.len() as u64,
            Err(SendError::WouldBlock) => blocked += 1,
            Err(SendError::NotOpen) => {}
            Err(e) => panic!("{e}"),
        }
        assert!(
            c.queued_bytes() <= opts.tx_limit,
            "writer queued {}",
            c.queued_bytes()
        );
    }
    assert!(blocked > 10_000, "the writer never blocked");
    // Frames sealed but still queued beyond TCP are not in TCP's hands (a
    // migration source must not count a Commit queued here as sent).
    assert_eq!(
        c.sealed_offset() - c.handed_to_tcp(),
        c.queued_bytes() as u64
    );
    assert!(c.handed_to_tcp() < c.sealed_offset());
    // What the peer has not acknowledged: the channel queue plus a full
    // TCP send buffer.
    let unacked = c.unacked_bytes(&mut n.a);
    assert!(
        unacked >= c.queued_bytes() + netstack::stack::TCP_BUFFER / 2,
        "unacked {unacked}, queued {}",
        c.queued_bytes()
    );
    // TCP buffers on both sides plus the two channel buffers, no more.
    let bound = (2 * netstack::stack::TCP_BUFFER + opts.tx_limit + 2 * 8192 + 16 * 1024) as u64;
    assert!(accepted <= bound, "accepted {accepted} > {bound}");
    // The reader catches up and gets every frame in order.
    let mut s = server.unwrap();
    let mut got = 0u64;
    for _ in 0..20_000 {
        n.step();
        c.poll(&mut n.a, n.now_us);
        s.poll(&mut n.b, n.now_us);
        while let Some((ty, p)) = s.recv(&mut n.b) {
            assert_eq!((ty, p.len()), (20, 8000));
            got += p.len() as u64;
        }
        if got == accepted {
            break;
        }
    }
    assert_eq!(got, accepted);
    assert_eq!(c.handed_to_tcp(), c.sealed_offset());
    for _ in 0..100 {
        n.step();
        c.poll(&mut n.a, n.now_us);
        s.poll(&mut n.b, n.now_us);
    }
    assert_eq!(
        c.unacked_bytes(&mut n.a),
        0,
        "everything read is acknowledged"
    );
    c.close(&mut n.a);
    for _ in 0..100 {
        n.step();
        c.poll(&mut n.a, n.now_us);
        s.poll(&mut n.b, n.now_us);
        let _ = s.recv(&mut n.b);
    }
    assert_eq!(s.close_reason(), Some(&CloseReason::Clean));
    assert!(c.is_closed());
    let _ = IpConfig {
        addr: ip("10.0.0.1"),
        prefix: 24,
        gateway: None,
    };
    c.release(&mut n.a);
    s.release(&mut n.b);
    listener.close(&mut n.b);
}

#[test]
fn connect_to_a_closed_port_fails_quickly() {
    let mut n = Net::new();
    let mut c = Channel::connect(
        &mut n.a,
        (ip("10.0.0.2"), 7999),
        &key(KEY),
        [1; 32],
        ChannelOptions::default(),
        n.now_us,
    )
    .unwrap();
    for _ in 0..10_000 {
        n.step();
        c.poll(&mut n.a, n.now_us);
        if c.is_closed() {
            break;
        }
    }
    assert_eq!(c.close_reason(), Some(&CloseReason::ConnectFailed));
    assert!(n.now_us < 100_000, "took {} µs", n.now_us);
}

#[test]
fn connect_to_a_silent_host_times_out() {
    let mut n = Net::new();
    let opts = ChannelOptions {
        timeout_us: 2_000_000,
        ..Default::default()
    };
    let mut c = Channel::connect(
        &mut n.a,
        (ip("10.0.0.77"), 7001),
        &key(KEY),
        [1; 32],
        opts,
        n.now_us,
    )
    .unwrap();
    let start = n.now_us;
    while !c.is_closed() {
        n.step();
        c.poll(&mut n.a, n.now_us);
        assert!(n.now_us - start < 3_000_000);
    }
    assert_eq!(c.close_reason(), Some(&CloseReason::ConnectFailed));
    assert!(n.now_us - start >= 2_000_000);
}

#[test]
fn a_peer_that_vanishes_is_noticed() {
    let mut n = Net::new();
    let k = key(KEY);
    let mut listener = netstack::channel::Listener::new(&mut n.b, 7000, 4).unwrap();
    let mut c = Channel::connect(
        &mut n.a,
        (ip("10.0.0.2"), 7000),
        &k,
        [1; 32],
        ChannelOptions::default(),
        n.now_us,
    )
    .unwrap();
    let mut server = None;
    while !c.is_open() {
        n.step();
        if server.is_none()
            && let Some(h) = listener.accept(&mut n.b, 0, n.now_us)
        {
            server = Some(Channel::accept(
                &mut n.b,
                h,
                &k,
                [2; 32],
                ChannelOptions::default(),
                n.now_us,
            ));
        }
        if let Some(s) = server.as_mut() {
            s.poll(&mut n.b, n.now_us);
        }
        c.poll(&mut n.a, n.now_us);
        assert!(n.now_us < 5_000_000);
    }
    // B dies: nothing it had reaches A any more, and A's frames vanish.
    n.na.link = false;
    let died = n.now_us;
    c.send(20, &[1; 100]).unwrap();
    while !c.is_closed() {
        n.now_us += 10_000;
        n.a.poll(&mut n.na, n.now_us);
        c.poll(&mut n.a, n.now_us);
        assert!(
            n.now_us - died < 30_000_000,
            "a dead peer went unnoticed for 30 s"
        );
    }
    assert_eq!(c.close_reason(), Some(&CloseReason::PeerGone));
}

/// Half-open connections beyond the listener's cap are reset at once; the
/// ones it keeps time out; an honest peer is served afterwards.
#[test]
fn a_burst_of_half_open_connections_is_capped() {
    let mut n = Net::new();
    let k = key(KEY);
    let mut sink = Sink::new(&mut n.b, SINK_PORT, 2).unwrap();
    let sockets_before = n.b.socket_count();
    // Twenty peers connect and never say a word.
    let raw: Vec<_> = (0..20)
        .map(|_| n.a.tcp_connect((ip("10.0.0.2"), SINK_PORT)).unwrap())
        .collect();
    let mut most_sockets = 0;
    for _ in 0..2000 {
        n.step();
        let _ = sink.poll(&mut n.b, &k, &mut || [9; 32], n.now_us);
        most_sockets = most_sockets.max(n.b.socket_count());
    }
    let established = raw
        .iter()
        .filter(|&&h| n.a.tcp(h).state() == smoltcp::socket::tcp::State::Established)
        .count();
    // The listening socket plus two pending ones: never more sockets on B
    // (and so never more than 3 x TCP_SOCKET_BYTES of heap) however many
    // peers knock. Refused peers were reset.
    assert!(
        most_sockets <= sockets_before + 2 + 1,
        "B held {most_sockets} sockets (had {sockets_before})"
    );
    assert!(established <= 2, "{established} connections kept");
    let reset = raw
        .iter()
        .filter(|&&h| n.a.tcp(h).state() == smoltcp::socket::tcp::State::Closed)
        .count();
    assert!(reset >= 10, "only {reset} of 20 refused at once");
    // The two kept ones time out (5 s handshake limit); then an honest
    // bench gets through.
    for _ in 0..60_000 {
        n.step();
        let _ = sink.poll(&mut n.b, &k, &mut || [9; 32], n.now_us);
    }
    assert!(!sink.busy(), "the silent peers were not timed out");
    for &h in &raw {
        n.a.tcp(h).abort();
    }
    n.step();
    for h in raw {
        n.a.remove(h);
    }
    sink.close(&mut n.b);
    let (st, _) = bench(&mut n, 64 << 10, KEY, KEY);
    assert!(matches!(st, BenchStatus::Done(r) if r.ok), "{st:?}");
}

/// A socket that does not fit above the memory reserve is not allocated:
/// the listener stops listening instead of exhausting the heap, and comes
/// back once memory is free.
#[test]
fn sockets_are_allocated_within_the_memory_budget() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static FREE: AtomicUsize = AtomicUsize::new(usize::MAX);
    fn free() -> usize {
        FREE.load(Ordering::Relaxed)
    }
    let mut n = Net::new();
    n.b.set_memory_budget(free, 1 << 20);
    FREE.store(
        (1 << 20) + netstack::stack::TCP_SOCKET_BYTES - 1,
        Ordering::Relaxed,
    );
    assert!(matches!(
        n.b.tcp_listen(7000),
        Err(netstack::stack::StackError::NoMemory { .. })
    ));
    FREE.store(usize::MAX, Ordering::Relaxed);
    let mut listener = netstack::channel::Listener::new(&mut n.b, 7000, 4).unwrap();
    // The next listening socket cannot be had: the connection is handed
    // out, the listener stops listening.
    FREE.store(1 << 20, Ordering::Relaxed);
    let h = n.a.tcp_connect((ip("10.0.0.2"), 7000)).unwrap();
    let mut got = None;
    for _ in 0..1000 {
        n.step();
        if let Some(c) = listener.accept(&mut n.b, 0, n.now_us) {
            got = Some(c);
            break;
        }
    }
    assert!(got.is_some(), "no connection");
    assert!(!listener.is_listening());
    // Memory comes back: so does the listener.
    FREE.store(usize::MAX, Ordering::Relaxed);
    assert!(listener.accept(&mut n.b, 0, n.now_us).is_none());
    assert!(listener.is_listening());
    n.a.tcp(h).abort();
    listener.close(&mut n.b);
}
