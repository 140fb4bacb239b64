//! Fault tolerance when things go wrong: `ft enable` refused for every
//! reason the issue names (one clear `error:` line each, the guest
//! untouched), a fake secondary on the link that sends corrupted,
//! truncated and lying frames (the primary goes on unprotected and says
//! so), and a fake primary that sends garbage to `ft listen` (the host
//! stays up).

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{KEY, OTHER_KEY, dirty_count, linked_bochs, start_dirty};
use ft_lockstep::{Ack, FRAME_ACK, FRAME_END, FRAME_LOG, Frame};
use hv_tests::hubpeer::HubPeer;
use hv_tests::peer::HostPeer;
use hv_tests::{Link, Machine, secs};
use migrate::dest::{Dest, DestAction, DestHost};
use migrate::proto::{Message, decode, encode};
use netstack::channel::{Channel, ChannelOptions, Listener};
use netstack::codec::Key;

/// `cmd` fails with one `error: ft: ...` line matching `pattern`, and the
/// `dirty` guest `d` goes on counting.
fn refused(a: &mut Machine, cmd: &str, pattern: &str) {
    let before = dirty_count(a).num(1);
    a.send_line(cmd);
    let e = a.expect_line(r"error: ft: .*", secs(300));
    a.check(
        hv_tests::regex::Regex::new(pattern)
            .unwrap()
            .is_match(&e.text),
        || format!("{cmd}: expected /{pattern}/, got: {}", e.text),
    );
    println!("{cmd}: {}", e.text.trim());
    let after = dirty_count(a).num(1);
    let next = dirty_count(a).num(1);
    a.check(after > before && next == after + 1, || {
        format!("counter {before}, {after}, {next}")
    });
    a.expect_prompt(a.command_timeout());
}

#[test]
fn bochs_ft_enable_errors_leave_the_guest_running() {
    let link = Link::bochs();
    let mut a = linked_bochs(&link, "prim", "10.0.0.1/24", |b| {
        b.bochs_model("corei7_skylake_x").memory_mib(256)
    });
    // An older CPU (no AVX2, no AVX-512) with little memory.
    let mut b = linked_bochs(&link, "twin", "10.0.0.2/24", |b| {
        b.bochs_model("corei7_sandy_bridge_2600k").memory_mib(64)
    });
    a.cmd("vm create d mem=16 image=dirty arg=200 cpu=x86-64");
    a.send_line("vm start d");
    dirty_count(&mut a);

    refused(
        &mut a,
        "ft enable nosuch 10.0.0.2",
        r"error: ft: nosuch: no VM named 'nosuch'",
    );
    // Nobody listens on the twin yet.
    refused(
        &mut a,
        "ft enable d 10.0.0.2",
        r"error: ft: d: .*(refused|connect).*; d keeps running unprotected",
    );
    // A twin with another key.
    b.cmd(&format!("net key {OTHER_KEY}"));
    b.cmd("ft listen");
    refused(
        &mut a,
        "ft enable d 10.0.0.2",
        r"error: ft: d: .*authentication failed.*; d keeps running unprotected",
    );
    b.send_line(&format!("net key {KEY}"));
    b.expect_line(r"net: key set .*", secs(30));
    // Too big for the twin's RAM; a CPU profile it cannot offer.
    a.cmd("vm create big mem=96 image=ticks arg=1 cpu=x86-64");
    a.send_line("vm start big");
    a.expect_line(r"\[big\] ticks: alive 1", secs(60));
    a.expect_prompt(a.command_timeout());
    refused(
        &mut a,
        "ft enable big 10.0.0.2",
        r"error: ft: big: .*not enough memory: the guest needs 96 MiB.*; big keeps running unprotected",
    );
    a.cmd("vm create sky mem=8 image=ticks arg=1 cpu=skylake-server");
    a.send_line("vm start sky");
    a.expect_line(r"\[sky\] ticks: alive 1", secs(60));
    a.expect_prompt(a.command_timeout());
    refused(
        &mut a,
        "ft enable sky 10.0.0.2",
        r"error: ft: sky: .*CPU profile skylake-server: this host lacks .*avx512f.*; sky keeps running unprotected",
    );
    // Nothing stayed on the twin; every guest still runs here.
    b.send_line("vm list");
    b.expect_line(r"no VMs \(create one with 'vm create'\)", secs(30));
    a.send_line("ft status");
    a.expect_line(r"ft: no protected guests", secs(30));
    a.send_line("vm list");
    a.expect_line(r"d +(running|halted) +16 MiB dirty +-", secs(30));
    a.expect_line(r"big +(running|halted) +96 MiB ticks +-", secs(30));
    a.expect_line(r"sky +(running|halted) +8 MiB ticks +-", secs(30));
}

/// A twin that takes any guest: the test's own secondary.
struct AnyHost;

impl DestHost for AnyHost {
    fn free_bytes(&self) -> u64 {
        1 << 40
    }
    fn cpu_offer(&self) -> vcpu::profile::HostOffer {
        vcpu::profile::HostOffer {
            features: vcpu::profile::FeatureSet::all(),
            xcr0: vcpu::xcr0::OFFERABLE,
            signature: 0x906ea,
        }
    }
    fn devices(&self) -> Vec<String> {
        [
            "uart16550",
            "pic8259",
            "pit8254",
            "exit-port",
            "request-port",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }
    fn blockers(&self, _vm: &str) -> Vec<String> {
        Vec::new()
    }
}

/// Pages go nowhere: the fake secondary only needs the protocol.
struct NoMemory(u64);

impl migrate::GuestMemoryMut for NoMemory {
    fn page_count(&self) -> u64 {
        self.0
    }
    fn write_page(&mut self, _gfn: u64, _data: Option<&[u8; 4096]>) {}
}

/// A channel frame: type and payload.
type RawFrame = (u8, Vec<u8>);

fn options() -> ChannelOptions {
    ChannelOptions {
        max_payload: 256 * 1024,
        timeout_us: 30_000_000,
        tx_limit: 512 * 1024,
    }
}

/// Accepts one initial copy as a secondary would (the migration protocol
/// up to Committed), receives log frames for a moment, then sends
/// `(ty, payload)` as its answer. Returns the log records it got.
fn fake_secondary(peer: &mut HubPeer, listener: &mut Listener, a: &Machine, bad: RawFrame) -> u64 {
    let key = Key::from_hex(KEY).unwrap();
    let deadline = Instant::now() + Duration::from_secs(300);
    let h = loop {
        peer.poll();
        let now = peer.now_us();
        if let Some(h) = listener.accept(peer.stack(), 0, now) {
            break h;
        }
        if Instant::now() > deadline {
            a.fail("the primary never connected to the fake secondary");
        }
        peer.wait(Duration::from_millis(5));
    };
    let now = peer.now_us();
    let mut chan = Channel::accept(peer.stack(), h, &key, [7; 32], options(), now);
    let mut dest = Dest::new();
    let mut mem = NoMemory(0);
    let mut committed = false;
    let mut records = 0u64;
    let mut log_since: Option<Instant> = None;
    loop {
        peer.poll();
        let now = peer.now_us();
        chan.poll(peer.stack(), now);
        while let Some((ty, p)) = chan.recv(peer.stack()) {
            if committed {
                match ft_lockstep::decode(ty, &p) {
                    Ok(Frame::Log { records: r, .. }) => {
                        records += r.len() as u64;
                        log_since.get_or_insert_with(Instant::now);
                    }
                    other => a.fail(&format!("the primary sent {other:?}")),
                }
                continue;
            }
            let msg = decode(ty, &p).unwrap_or_else(|e| a.fail(&format!("copy: {e}")));
            for act in dest.on_message(msg, Some(&mut mem), &AnyHost) {
                match act {
                    DestAction::Send(m) => {
                        let (ty, p) = encode(&m);
                        chan.send(ty, &p).unwrap();
                        if matches!(m, Message::Committed) {
                            committed = true;
                        }
                    }
                    DestAction::Reserve { mem_bytes, .. } => mem = NoMemory(mem_bytes / 4096),
                    DestAction::Start { .. } => {}
                    other => a.fail(&format!("the copy failed: {other:?}")),
                }
            }
        }
        if log_since.is_some_and(|t| t.elapsed() > Duration::from_secs(2)) {
            break;
        }
        if chan.is_closed() || Instant::now() > deadline {
            a.fail("the fake secondary lost the primary");
        }
        peer.wait(Duration::from_millis(2));
    }
    chan.send(bad.0, &bad.1).unwrap();
    // Let the frame leave, then wait for the primary to end the link.
    let until = Instant::now() + Duration::from_secs(60);
    while !chan.is_closed() && Instant::now() < until {
        peer.poll();
        let now = peer.now_us();
        chan.poll(peer.stack(), now);
        while chan.recv(peer.stack()).is_some() {}
        peer.wait(Duration::from_millis(5));
    }
    chan.release(peer.stack());
    records
}

#[test]
fn bochs_ft_fake_secondary_with_bad_frames_leaves_the_primary_unprotected() {
    let link = Link::bochs_with_peer();
    let mut a = linked_bochs(&link, "prim", "10.0.0.1/24", |b| {
        b.bochs_model("corei7_skylake_x").memory_mib(256)
    });
    let mut peer = HubPeer::join(&link, "10.0.0.9/24").unwrap_or_else(|e| panic!("{e}"));
    let mut listener = Listener::new(peer.stack(), ft_lockstep::DEFAULT_PORT, 4).unwrap();
    start_dirty(&mut a, 100);

    let ack = |received: u64, replayed: u64| {
        ft_lockstep::encode(&Frame::Ack(Ack {
            received,
            replayed,
            exits: 0,
            checks_ok: 0,
        }))
        .1
    };
    let cases: Vec<(&str, RawFrame, &str)> = vec![
        (
            "a corrupted acknowledgement",
            (FRAME_ACK, vec![0xff; 34]),
            r"bad frame from the secondary: .*version",
        ),
        (
            "a truncated acknowledgement",
            (FRAME_ACK, ack(0, 0)[..9].to_vec()),
            r"bad frame from the secondary: truncated",
        ),
        (
            "an acknowledgement of records never sent",
            (FRAME_ACK, ack(1 << 40, 0)),
            r"the secondary sent a bad acknowledgement: .*sent",
        ),
        (
            "a log frame from the secondary",
            (
                FRAME_LOG,
                ft_lockstep::encode(&Frame::Log {
                    first: 0,
                    records: vec![],
                })
                .1,
            ),
            r"the secondary sent a log frame",
        ),
    ];
    for (what, bad, why) in cases {
        a.send_line("ft enable d 10.0.0.9");
        let records = fake_secondary(&mut peer, &mut listener, &a, bad);
        a.expect_line(r"ft: d: protected by 10\.0\.0\.9: lockstep .*", secs(60));
        let line = a.expect_line(r"ft: d: unprotected: (.*); d keeps running", secs(120));
        a.check(
            hv_tests::regex::Regex::new(why)
                .unwrap()
                .is_match(line.get(1).unwrap_or_default()),
            || format!("{what}: expected /{why}/, got: {}", line.text),
        );
        println!(
            "{what} ({records} records received first): {}",
            line.text.trim()
        );
        // The guest goes on, its lines no longer held.
        let c = dirty_count(&mut a).num(1);
        let next = dirty_count(&mut a).num(1);
        a.check(next == c + 1, || format!("counter {c} then {next}"));
        a.expect_prompt(a.command_timeout());
    }
    // An End from the secondary is not an attack, but ends protection too.
    a.send_line("ft enable d 10.0.0.9");
    let end = ft_lockstep::encode(&Frame::End {
        reason: "\x1b[2Jgone".into(),
    });
    fake_secondary(&mut peer, &mut listener, &a, (FRAME_END, end.1));
    let line = a.expect_line(r"ft: d: unprotected: (.*); d keeps running", secs(120));
    a.check(
        line.text.contains("the secondary ended protection") && !line.text.contains('\x1b'),
        || line.text.clone(),
    );
}

#[test]
fn qemu_ft_listener_survives_garbage_and_wrong_keys() {
    let port = ft_lockstep::DEFAULT_PORT;
    let mut m = Machine::qemu()
        .hostname("twin")
        .config("hostname = twin\nnet.ip = 10.0.2.15/24\nnet.gw = 10.0.2.2\n")
        .user_net_forward(port)
        .start();
    m.boot_to_prompt();
    // No key: nothing to protect with, nothing to listen with.
    let out = m.cmd("ft enable x 10.0.2.2");
    m.check(out.contains("error: ft: x:") && out.contains("key"), || {
        out.clone()
    });
    let out = m.cmd("ft listen");
    m.check(out.contains("error: ft:") && out.contains("key"), || {
        out.clone()
    });
    m.cmd(&format!("net key {KEY}"));
    let out = m.cmd("ft listen");
    m.check(out.contains("ft: listening on port 7003"), || out.clone());
    let fwd = m.forwarded_port(port);

    // Garbage instead of a handshake; the wrong key. Each connection the
    // listener drops is reported with its peer's port (QEMU's forward
    // keeps it) and the reason.
    let dropped = |m: &mut Machine, local: u16, what: &str| {
        let line = m.expect_line(
            &format!(
                r"ft: (?:(?:incoming|refusing) .*? from )?10\.0\.2\.2:{local}(?: discarded)?: (.*)"
            ),
            secs(60),
        );
        println!("{what}: {}", line.text.trim());
    };
    let mut s = TcpStream::connect(("127.0.0.1", fwd)).unwrap();
    let local = s.local_addr().unwrap().port();
    s.write_all(b"\x16\x03\x01garbage garbage garbage\r\n")
        .unwrap();
    dropped(&mut m, local, "garbage before the handshake");
    drop(s);
    let mut s = TcpStream::connect(("127.0.0.1", fwd)).unwrap();
    let local = s.local_addr().unwrap().port();
    s.set_read_timeout(Some(secs(30))).unwrap();
    common::handshake_with_the_wrong_key(&mut s);
    drop(s);
    dropped(&mut m, local, "the wrong key");

    // The key, then FT frames before any copy, garbage of every FT type,
    // a Hello then garbage.
    let key = Key::from_hex(KEY).unwrap();
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut garbage = |n: usize| -> Vec<u8> {
        (0..n)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect()
    };
    let (hello_ty, hello) = encode(&Message::Hello {
        version: migrate::proto::PROTOCOL_VERSION,
        vm: "g".into(),
        mem_bytes: 4 << 20,
        profile: vcpu::profile::Profile::resolve(
            "x86-64",
            &AnyHost.cpu_offer(),
            vcpu::profile::RandExits::default(),
        )
        .unwrap(),
        devices: AnyHost.devices(),
    });
    let cases: Vec<(&str, Vec<RawFrame>)> = vec![
        (
            "a log frame before any copy",
            vec![(
                FRAME_LOG,
                ft_lockstep::encode(&Frame::Log {
                    first: 0,
                    records: vec![],
                })
                .1,
            )],
        ),
        (
            "garbage as an acknowledgement",
            vec![(FRAME_ACK, garbage(40))],
        ),
        ("garbage as an End", vec![(FRAME_END, garbage(300))]),
        ("garbage as a log frame", vec![(FRAME_LOG, garbage(5000))]),
        ("an unknown frame type", vec![(200, garbage(64))]),
        (
            "a Hello, then garbage",
            vec![(hello_ty, hello.clone()), (FRAME_LOG, garbage(100))],
        ),
    ];
    for (what, frames) in cases {
        let mut p = HostPeer::connect(fwd, &key).unwrap_or_else(|e| m.fail(&e));
        let local = p.stream.local_addr().unwrap().port();
        for (ty, payload) in frames {
            p.send(ty, &payload).unwrap();
        }
        dropped(&mut m, local, what);
    }
    // The refused Hello had reserved nothing: its reservation failed
    // (no VT-x here), which is reported once more as the discard.
    m.expect_line(
        r"ft: incoming g from 10\.0\.2\.2:\d+ discarded: .*",
        secs(30),
    );
    // The host is up, listens still, and holds no half-arrived guest
    // (lines, not prompts: reports may come between).
    m.send_line("status");
    m.expect_line(r"host: twin", secs(30));
    m.send_line("ft status");
    m.expect_line(r"ft: listening on port 7003", secs(30));
    m.send_line("vm list");
    m.expect_line(r"no VMs \(create one with 'vm create'\)", secs(30));
}
