//! Fault tolerance when things go wrong: `ft enable` refused for every
//! reason a twin can give, a fake secondary on the link that sends
//! corrupted, truncated and lying frames, and fake primaries that send
//! garbage to `ft listen`.
//!
//! What would be false if the error handling were broken:
//! - every refused `ft enable` prints exactly one `error:` line that names
//!   the reason (the twin's own: its free memory, the CPU features it
//!   lacks), and the guest's counter goes on, one line after the other;
//! - a secondary that sends a bad frame ends protection: the primary says
//!   `unprotected: <why>`, tells the twin the same reason in an End frame,
//!   `ft status` shows nothing protected, and the guest goes on;
//! - garbage and wrong keys at `ft listen` close only that connection,
//!   with a reason: the host answers `status` after each, its own guest
//!   keeps running, and no half-arrived copy stays behind (nor its RAM).

mod common;

use std::io::Write;
use std::net::{Ipv4Addr, TcpStream};
use std::time::{Duration, Instant};

use common::{KEY, OTHER_KEY, bochs_on, caps, num};
use ft_lockstep::{Ack, FRAME_ACK, FRAME_END, FRAME_LOG, Frame};
use hv_tests::hubpeer::HubPeer;
use hv_tests::peer::HostPeer;
use hv_tests::random::XorShift;
use hv_tests::regex::Regex;
use hv_tests::{Link, Machine, secs};
use migrate::dest::{Dest, DestAction, DestHost};
use migrate::proto::{Message, decode, encode};
use netstack::channel::{Channel, ChannelOptions, Listener};
use netstack::codec::Key;

/// A channel frame: type and payload.
type RawFrame = (u8, Vec<u8>);

/// A guest's progress as its console lines show it: a counter that goes
/// up by one a line.
struct Progress {
    vm: &'static str,
    pattern: String,
}

impl Progress {
    /// The `dirty` guest: `[vm] dirty: count <n> tsc <t> gap <g>`.
    fn dirty(vm: &'static str) -> Progress {
        Progress {
            vm,
            pattern: format!(r"\[{vm}\] dirty: count (\d+) tsc \d+ gap \d+"),
        }
    }

    /// The `ticks` guest run forever: `[vm] ticks: alive <k>`.
    fn ticks(vm: &'static str) -> Progress {
        Progress {
            vm,
            pattern: format!(r"\[{vm}\] ticks: alive (\d+)"),
        }
    }

    /// Its next value.
    fn next(&self, m: &mut Machine) -> u64 {
        m.expect_line(&self.pattern, secs(60)).num(1)
    }

    /// Two more lines, the first beyond `before` and the second right
    /// after it: the guest runs on after `what`.
    fn goes_on(&self, m: &mut Machine, before: u64, what: &str) {
        let x = self.next(m);
        let y = self.next(m);
        m.check(x > before && y == x + 1, || {
            format!(
                "after `{what}`: {} printed {before}, then {x}, then {y}",
                self.vm
            )
        });
    }
}

/// Lines of everything `m` printed so far that start with `error:`.
fn error_lines(m: &Machine) -> usize {
    m.output()
        .lines()
        .filter(|l| l.trim_start().starts_with("error:"))
        .count()
}

/// Sends `cmd`, which must fail with one line `error: ...` matching
/// `pattern` (and no other error line, now or in the seconds after), no
/// protection starting; `guest` runs on throughout. Returns the line.
fn refused(m: &mut Machine, cmd: &str, pattern: &str, guest: &Progress) -> String {
    let errors = error_lines(m);
    let before = guest.next(m);
    m.send_line(cmd);
    let e = m.expect_line(r"error: .*", secs(300));
    let line = e.text.trim_end().to_string();
    m.check(Regex::new(pattern).unwrap().is_match(&line), || {
        format!("`{cmd}`: expected /{pattern}/, got: {line}")
    });
    m.check(!e.before.contains("protected by"), || {
        format!("`{cmd}` was refused, yet protection began:\n{}", e.before)
    });
    m.expect_prompt(m.command_timeout());
    println!("{cmd}: {line}");
    guest.goes_on(m, before, cmd);
    let now = error_lines(m);
    m.check(now == errors + 1, || {
        format!("`{cmd}`: {} error lines instead of one", now - errors)
    });
    line
}

// ---------------------------------------------------------------------
// A. Every `ft enable` refusal.

/// One primary and one twin it cannot protect a guest on, for each reason
/// in turn: no key (on the twin, before it has one), an unknown VM, nobody
/// listening, another key, too little memory, an older CPU. Then a fake
/// primary of the test's own sends the twin a Hello it accepts and
/// garbage after it. Two boots for all of it.
#[test]
fn bochs_ft_enable_errors_leave_the_guest_running() {
    let link = Link::bochs_with_peer();
    // The twin: an older CPU (no AVX2, no AVX-512), little memory, no key.
    // Both boot side by side.
    let mut a = bochs_on(&link, "prim", "10.0.0.1/24", Some(KEY))
        .bochs_model("corei7_skylake_x")
        .memory_mib(256)
        .start();
    let mut b = bochs_on(&link, "twin", "10.0.0.2/24", None)
        .bochs_model("corei7_sandy_bridge_2600k")
        .memory_mib(64)
        .start();
    a.boot_to_prompt();
    b.boot_to_prompt();

    // A host without a key protects nothing and listens for nothing; its
    // own guest runs on (and keeps running here to the end: the twin's
    // witness).
    let t = Progress::ticks("t");
    b.send_line("vm create t mem=8 image=ticks arg=1 cpu=x86-64");
    b.expect_line(r"vm t: created .*", secs(60));
    b.send_line("vm start t");
    t.next(&mut b);
    refused(
        &mut b,
        "ft enable t 10.0.0.1 witness=none",
        r"^error: ft: t: no channel key: set one with net key <hex> first; t keeps running unprotected$",
        &t,
    );
    refused(&mut b, "ft listen", r"^error: ft: no channel key", &t);

    let d = Progress::dirty("d");
    a.send_line("vm create d mem=16 image=dirty arg=200 cpu=x86-64");
    a.expect_line(r"vm d: created .*", secs(60));
    a.send_line("vm start d");
    d.next(&mut a);
    refused(
        &mut a,
        "ft enable nosuch 10.0.0.2 witness=none",
        r"^error: ft: nosuch: no VM named 'nosuch'",
        &d,
    );
    // The twin is up, but nothing listens on its port 7003.
    refused(
        &mut a,
        "ft enable d 10.0.0.2 witness=none",
        r"^error: ft: d: .*connection refused.*; d keeps running unprotected$",
        &d,
    );

    // A twin that listens with another key: the handshake fails on both
    // sides and the twin says so.
    b.send_line(&format!("net key {OTHER_KEY}"));
    b.expect_line(r"net: key set .*", secs(30));
    b.send_line("ft listen");
    let free = b
        .expect_line(
            r"ft: listening on port 7003 for guests to protect \(free RAM for guests (\d+) MiB\)",
            secs(30),
        )
        .num(1);
    refused(
        &mut a,
        "ft enable d 10.0.0.2 witness=none",
        r"^error: ft: d: .*authentication failed.*; d keeps running unprotected$",
        &d,
    );
    let l = b.expect_line(r"ft: 10\.0\.0\.1:\d+: (.*)", secs(60));
    b.check(
        Regex::new(r"(?i)key|handshake")
            .unwrap()
            .is_match(l.get(1).unwrap_or_default().trim_end()),
        || format!("the twin's line for the wrong key: {}", l.text),
    );
    println!("the twin, with another key: {}", l.text.trim());
    b.send_line(&format!("net key {KEY}"));
    b.expect_line(r"net: key set .*", secs(30));

    // A guest just bigger than the twin's free RAM.
    let need = free + 4;
    let big = Progress::ticks("big");
    a.send_line(&format!(
        "vm create big mem={need} image=ticks arg=1 cpu=x86-64"
    ));
    a.expect_line(r"vm big: created .*", secs(60));
    a.send_line("vm start big");
    big.next(&mut a);
    let line = refused(
        &mut a,
        "ft enable big 10.0.0.2 witness=none",
        &format!(
            r"^error: ft: big: .*not enough memory: the guest needs {need} MiB, \d+ MiB free; big keeps running unprotected$"
        ),
        &big,
    );
    let theirs = num(&caps(&a, &line, r"(\d+) MiB free"), 1);
    a.check(theirs < need && theirs + 8 >= free, || {
        format!(
            "the twin listened with {free} MiB free, then refused {need} MiB with {theirs} MiB free"
        )
    });
    b.expect_line(
        &format!(r"ft: .*10\.0\.0\.1:\d+.*not enough memory: the guest needs {need} MiB.*"),
        secs(60),
    );

    // A CPU profile the twin's CPU cannot offer.
    let sky = Progress::ticks("sky");
    a.send_line("vm create sky mem=8 image=ticks arg=1 cpu=skylake-server");
    a.expect_line(r"vm sky: created .*", secs(60));
    a.send_line("vm start sky");
    sky.next(&mut a);
    refused(
        &mut a,
        "ft enable sky 10.0.0.2 witness=none",
        r"^error: ft: sky: .*CPU profile skylake-server: this host lacks .*\bavx2\b.*\bavx512f\b.*; sky keeps running unprotected$",
        &sky,
    );
    b.expect_line(
        r"ft: .*10\.0\.0\.1:\d+.*skylake-server.*avx512f.*",
        secs(60),
    );

    // A fake primary: a Hello the twin accepts (it reserves the RAM and
    // answers Ready), then garbage instead of the copy.
    let mut peer = HubPeer::join(&link, "10.0.0.9/24").unwrap_or_else(|e| b.fail(&e.0));
    let ((hello_ty, hello), log) = hello_and_empty_log();
    let fakes: Vec<(&str, Vec<RawFrame>, &str)> = vec![
        (
            "a Hello, then a log frame in the middle of the copy",
            vec![(hello_ty, hello.clone()), log],
            r"^malformed message from the source: unknown migration message type 48$",
        ),
        (
            "a Hello, then garbage as Pages",
            vec![(hello_ty, hello), (36, XorShift::new(7).bytes(300))],
            r"^malformed message from the source: ",
        ),
    ];
    for (i, (what, frames, why)) in fakes.into_iter().enumerate() {
        let before = t.next(&mut b);
        let (first, rest) = frames.split_first().unwrap();
        let answer = fake_primary(&mut peer, &b, i as u8, first, rest);
        let at = b.expect_line(r"ft: initial copy of g from (10\.0\.0\.9:\d+)", secs(60));
        let from = hv_tests::regex::escape(at.get(1).unwrap_or_default());
        let gone = b.expect_line(
            &format!(r"ft: incoming g from {from} discarded: (.*)"),
            secs(60),
        );
        b.check(
            Regex::new(why)
                .unwrap()
                .is_match(gone.get(1).unwrap_or_default().trim_end()),
            || format!("{what}: expected a reason /{why}/, got: {}", gone.text),
        );
        println!("{what}: {} (the fake got {answer:?})", gone.text.trim());
        t.goes_on(&mut b, before, what);
        b.send_line("status");
        b.expect_line(r"host: twin", secs(30));
    }

    // Nothing stayed on the twin but its own guest; it still listens.
    b.send_line("vm list");
    let l = b.expect_line(r"t +(running|halted) +8 MiB ticks +-", secs(30));
    let rest = b.expect_prompt(b.command_timeout());
    let listed = format!("{}{}", l.before, rest.before);
    b.check(!listed.lines().any(|l| l.starts_with("g ")), || {
        format!("the fake primary's guest stayed on the twin:\n{listed}")
    });
    b.send_line("ft status");
    b.expect_line(r"ft: listening on port 7003", secs(30));
    b.expect_line(r"ft: no protected guests", secs(30));
    // The discarded copies' RAM is free again.
    b.send_line("ft listen stop");
    b.expect_line(r"ft: no longer listening", secs(30));
    b.send_line("ft listen");
    let again = b
        .expect_line(
            r"ft: listening on port 7003 for guests to protect \(free RAM for guests (\d+) MiB\)",
            secs(30),
        )
        .num(1);
    b.check(again == free, || {
        format!(
            "the twin had {free} MiB free for guests before the fake primaries, {again} MiB after"
        )
    });
    // Every guest still runs on the primary, none of them protected.
    a.send_line("ft status");
    a.expect_line(r"ft: not listening \(ft listen\)", secs(30));
    a.expect_line(r"ft: no protected guests", secs(30));
    a.send_line("vm list");
    a.expect_line(r"d +(running|halted) +16 MiB dirty +-", secs(30));
    a.expect_line(
        &format!(r"big +(running|halted) +{need} MiB ticks +-"),
        secs(30),
    );
    a.expect_line(r"sky +(running|halted) +8 MiB ticks +-", secs(30));
}

/// The `x86-64` CPU profile, which every VT-x host here can offer.
fn x86_64_profile() -> vcpu::profile::Profile {
    vcpu::profile::Profile::resolve(
        "x86-64",
        &AnyHost.cpu_offer(),
        vcpu::profile::RandExits::default(),
    )
    .unwrap()
}

/// Options of the test's own channels.
fn options() -> ChannelOptions {
    ChannelOptions {
        max_payload: 256 * 1024,
        timeout_us: 30_000_000,
        tx_limit: 512 * 1024,
    }
}

/// Moves `peer`'s frames and `chan`'s bytes once.
fn turn(peer: &mut HubPeer, chan: &mut Channel) {
    peer.poll();
    let now = peer.now_us();
    chan.poll(peer.stack(), now);
}

/// A fake primary on the link: an authenticated channel to the twin's
/// `ft listen`, `hello`, which the twin must accept (Ready), then `rest`.
/// The twin must close the channel; returns what it sent after Ready.
fn fake_primary(
    peer: &mut HubPeer,
    b: &Machine,
    n: u8,
    hello: &RawFrame,
    rest: &[RawFrame],
) -> Vec<Result<Message, String>> {
    let key = Key::from_hex(KEY).unwrap();
    let now = peer.now_us();
    let mut chan = Channel::connect(
        peer.stack(),
        (Ipv4Addr::new(10, 0, 0, 2), ft_lockstep::DEFAULT_PORT),
        &key,
        [0x40 + n; 32],
        options(),
        now,
    )
    .unwrap_or_else(|e| b.fail(&format!("fake primary: cannot connect: {e}")));
    let deadline = Instant::now() + secs(60);
    while !chan.is_open() {
        if chan.is_closed() || Instant::now() > deadline {
            b.fail(&format!(
                "fake primary: no channel to the twin: {:?}",
                chan.close_reason()
            ));
        }
        turn(peer, &mut chan);
        peer.wait(Duration::from_millis(5));
    }
    chan.send(hello.0, &hello.1).unwrap();
    let answer = loop {
        turn(peer, &mut chan);
        if let Some((ty, p)) = chan.recv(peer.stack()) {
            break decode(ty, &p);
        }
        if chan.is_closed() || Instant::now() > deadline {
            b.fail(&format!(
                "fake primary: no answer to the Hello: {:?}",
                chan.close_reason()
            ));
        }
        peer.wait(Duration::from_millis(5));
    };
    b.check(answer == Ok(Message::Ready), || {
        format!("fake primary: the twin answered the Hello with {answer:?}")
    });
    for (ty, p) in rest {
        chan.send(*ty, p).unwrap();
    }
    let mut after = Vec::new();
    while !chan.is_closed() {
        if Instant::now() > deadline {
            b.fail("fake primary: the twin kept the channel open after the garbage");
        }
        turn(peer, &mut chan);
        while let Some((ty, p)) = chan.recv(peer.stack()) {
            after.push(decode(ty, &p).map_err(|e| e.to_string()));
        }
        peer.wait(Duration::from_millis(5));
    }
    chan.release(peer.stack());
    after
}

// ---------------------------------------------------------------------
// B. A fake secondary with bad frames.

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

/// What the fake secondary saw of one protection.
struct Seen {
    /// Log records received before it answered with its bad frames.
    records: u64,
    /// The reason of the End frame the primary sent before it closed.
    end: Option<String>,
    /// Wall time to the connection, to Committed, and in all.
    times: [Duration; 3],
}

/// Accepts one initial copy as a secondary would (the migration protocol
/// up to Committed), receives log frames for 1 s without acknowledging
/// any, then sends `bad(records received)`; waits for the primary to close.
/// (1 s: the primary has sent hundreds of records and holds the guest's
/// output for want of an acknowledgement.)
fn fake_secondary(
    peer: &mut HubPeer,
    listener: &mut Listener,
    a: &mut Machine,
    bad: &dyn Fn(u64) -> Vec<RawFrame>,
) -> Seen {
    let key = Key::from_hex(KEY).unwrap();
    let start = Instant::now();
    let deadline = start + Duration::from_secs(300);
    let h = loop {
        peer.poll();
        let now = peer.now_us();
        if let Some(h) = listener.accept(peer.stack(), 0, now) {
            break h;
        }
        if Instant::now() > deadline {
            give_up(a, "the primary never connected to the fake secondary");
        }
        peer.wait(Duration::from_millis(5));
    };
    let now = peer.now_us();
    let connected = start.elapsed();
    let mut committed_at = Duration::ZERO;
    let mut chan = Channel::accept(peer.stack(), h, &key, [7; 32], options(), now);
    let mut dest = Dest::new();
    let mut mem = NoMemory(0);
    let mut committed = false;
    let mut records = 0u64;
    let mut log_since: Option<Instant> = None;
    // Heartbeats, as a live secondary sends them (the primary gives up on
    // a secondary silent for its 1 s timeout).
    let mut heartbeat = (0u64, Instant::now());
    loop {
        if committed && heartbeat.1.elapsed() >= Duration::from_millis(100) {
            heartbeat = (heartbeat.0 + 1, Instant::now());
            let (ty, p) = ft_lockstep::encode(&Frame::Heartbeat { seq: heartbeat.0 });
            chan.send(ty, &p).unwrap();
        }
        turn(peer, &mut chan);
        while let Some((ty, p)) = chan.recv(peer.stack()) {
            if committed {
                match ft_lockstep::decode(ty, &p) {
                    Ok(Frame::Log { records: r, .. }) => {
                        records += r.len() as u64;
                        log_since.get_or_insert_with(Instant::now);
                    }
                    Ok(Frame::Heartbeat { .. } | Frame::Arbiter { .. }) => {}
                    other => give_up(a, &format!("the primary sent {other:?}")),
                }
                continue;
            }
            let msg = decode(ty, &p).unwrap_or_else(|e| give_up(a, &format!("copy: {e}")));
            for act in dest.on_message(msg, Some(&mut mem), &AnyHost) {
                match act {
                    DestAction::Send(m) => {
                        let (ty, p) = encode(&m);
                        chan.send(ty, &p).unwrap();
                        if matches!(m, Message::Committed) {
                            committed = true;
                            committed_at = start.elapsed();
                        }
                    }
                    DestAction::Reserve { mem_bytes, .. } => mem = NoMemory(mem_bytes / 4096),
                    DestAction::Start { .. } => {}
                    other => give_up(a, &format!("the copy failed: {other:?}")),
                }
            }
        }
        if log_since.is_some_and(|t| t.elapsed() > Duration::from_secs(1)) {
            break;
        }
        if chan.is_closed() || Instant::now() > deadline {
            give_up(
                a,
                &format!(
                    "the fake secondary lost the primary ({}, {records} log records received): {:?}",
                    if committed {
                        "after Committed"
                    } else {
                        "during the initial copy"
                    },
                    chan.close_reason(),
                ),
            );
        }
        peer.wait(Duration::from_millis(2));
    }
    a.check(records > 0, || {
        "1 s of protection and not one log record".into()
    });
    for (ty, p) in bad(records) {
        chan.send(ty, &p).unwrap();
    }
    // The primary says why it ends protection, then closes.
    let mut end = None;
    let until = Instant::now() + Duration::from_secs(60);
    while !chan.is_closed() {
        if Instant::now() > until {
            give_up(a, "the primary kept the channel open after the bad frames");
        }
        turn(peer, &mut chan);
        while let Some((ty, p)) = chan.recv(peer.stack()) {
            if let Ok(Frame::End { reason }) = ft_lockstep::decode(ty, &p) {
                end = Some(reason);
            }
        }
        peer.wait(Duration::from_millis(5));
    }
    chan.release(peer.stack());
    Seen {
        records,
        end,
        times: [connected, committed_at, start.elapsed()],
    }
}

/// Fails with `what`, once the primary had up to 10 s to say its part
/// (an `error:` line), so that the report shows both sides.
fn give_up(a: &mut Machine, what: &str) -> ! {
    let _ = a.try_expect(&hv_tests::line_pattern(r"error: .*"), secs(10));
    a.fail(what)
}

/// An acknowledgement frame's payload.
fn ack(received: u64, replayed: u64) -> Vec<u8> {
    ft_lockstep::encode(&Frame::Ack(Ack {
        received,
        replayed,
        exits: 0,
        checks_ok: 0,
    }))
    .1
}

type BadFrames = Box<dyn Fn(u64) -> Vec<RawFrame>>;

/// The test's own secondary on the link takes the real primary's initial
/// copy (the migrate crate's `Dest` engine, pages dropped), so that the
/// guest is protected; then, holding the key, it answers with one bad
/// frame per protection: corrupted, truncated, lying acknowledgements of
/// three kinds, a log frame of its own, an End. One boot.
#[test]
fn bochs_ft_fake_secondary_with_bad_frames_leaves_the_primary_unprotected() {
    let link = Link::bochs_with_peer();
    let mut a = bochs_on(&link, "prim", "10.0.0.1/24", Some(KEY))
        .bochs_model("corei7_skylake_x")
        .memory_mib(256)
        .start();
    a.boot_to_prompt();
    // The firmware draws with escape sequences; from here on the console
    // is the kernel's alone.
    let kernel_from = a.raw_output().len();
    let mut peer = HubPeer::join(&link, "10.0.0.9/24").unwrap_or_else(|e| a.fail(&e.0));
    let mut listener = Listener::new(peer.stack(), ft_lockstep::DEFAULT_PORT, 4).unwrap();
    let d = Progress::dirty("d");
    // Few pages dirtied a second: every initial copy stays short.
    a.send_line("vm create d mem=8 image=dirty arg=10 cpu=x86-64");
    a.expect_line(r"vm d: created .*", secs(60));
    a.send_line("vm start d");
    d.next(&mut a);

    // (what, the frames given the records received, the reason expected:
    // a regex, `{n}` standing for the records received).
    let cases: Vec<(&str, BadFrames, &str)> = vec![
        (
            // Refused and logged, nothing else: protection ends only for
            // the acknowledgement after it.
            "a heartbeat repeated, a garbage heartbeat, then an acknowledgement of too much",
            Box::new(|_| {
                vec![
                    ft_lockstep::encode(&Frame::Heartbeat { seq: 1 }),
                    (ft_lockstep::FRAME_HEARTBEAT, vec![0xee; 5]),
                    (FRAME_ACK, ack(1 << 40, 0)),
                ]
            }),
            r"^the secondary sent a bad acknowledgement: acknowledgement of 1099511627776 records when (\d+) were sent$",
        ),
        (
            "a corrupted acknowledgement",
            Box::new(|_| vec![(FRAME_ACK, vec![0xff; 34])]),
            r"^bad frame from the secondary: .*version 65535",
        ),
        (
            "a truncated acknowledgement",
            Box::new(|_| vec![(FRAME_ACK, ack(0, 0)[..9].to_vec())]),
            r"^bad frame from the secondary: truncated",
        ),
        (
            "an acknowledgement of more records than were sent",
            Box::new(|_| vec![(FRAME_ACK, ack(1 << 40, 0))]),
            r"^the secondary sent a bad acknowledgement: acknowledgement of 1099511627776 records when (\d+) were sent$",
        ),
        (
            "an acknowledgement taken back",
            Box::new(|n| vec![(FRAME_ACK, ack(n, 0)), (FRAME_ACK, ack(n - 1, 0))]),
            r"^the secondary sent a bad acknowledgement: acknowledgement of {n-1} records after one of {n}$",
        ),
        (
            "a replay position beyond what was received",
            Box::new(|n| vec![(FRAME_ACK, ack(n, n + 1))]),
            r"^the secondary sent a bad acknowledgement: replay position {n+1} with {n} records received",
        ),
        (
            "a log frame from the secondary",
            Box::new(|_| {
                vec![ft_lockstep::encode(&Frame::Log {
                    first: 0,
                    records: vec![],
                })]
            }),
            r"^the secondary sent a log frame$",
        ),
        (
            "an End (with an escape sequence in its reason)",
            Box::new(|_| {
                vec![ft_lockstep::encode(&Frame::End {
                    reason: "\x1b[2Jgone".into(),
                })]
            }),
            r"^the secondary ended protection: [^\x1b]*gone$",
        ),
    ];
    let repeated = Regex::new(
        r"WARN +ft: d: heartbeat 1 from the secondary 10\.0\.0\.9 repeats \d+ \(ignored\)",
    )
    .unwrap();
    for (what, bad, why) in cases {
        let t0 = Instant::now();
        let before = d.next(&mut a);
        a.send_line("ft enable d 10.0.0.9 witness=none");
        let seen = fake_secondary(&mut peer, &mut listener, &mut a, &*bad);
        let n = seen.records;
        let why = why
            .replace("{n-1}", &(n - 1).to_string())
            .replace("{n+1}", &(n + 1).to_string())
            .replace("{n}", &n.to_string());
        a.expect_line(r"ft: d: protected by 10\.0\.0\.9: lockstep .*", secs(60));
        let line = a.expect_line(r"ft: d: unprotected: (.*); d keeps running", secs(120));
        let reason = line.get(1).unwrap_or_default().trim_end().to_string();
        let re = Regex::new(&why).unwrap();
        a.check(re.is_match(&reason), || {
            format!("{what}: expected /{why}/, got: {}", line.text)
        });
        if let Some(c) = re.captures(&reason)
            && let Some(sent) = c.get(1)
        {
            let sent: u64 = sent.as_str().parse().unwrap();
            a.check(sent >= n, || {
                format!("{what}: the primary says it sent {sent} records, the fake got {n}")
            });
        }
        // The twin was told the same reason.
        a.check(seen.end.as_deref() == Some(reason.as_str()), || {
            format!(
                "{what}: the primary ended with {reason:?} but told the twin {:?}",
                seen.end
            )
        });
        a.expect_prompt(a.command_timeout());
        if what.starts_with("a heartbeat repeated") {
            a.check(repeated.is_match(&a.output()), || {
                "the repeated heartbeat was not logged".into()
            });
            a.check(
                a.output()
                    .contains("ft: d: bad heartbeat from the secondary 10.0.0.9: "),
                || "the garbage heartbeat was not logged".into(),
            );
        }
        d.goes_on(&mut a, before, what);
        a.send_line("ft status");
        a.expect_line(r"ft: no protected guests", secs(30));
        let [c, k, all] = seen.times;
        println!(
            "{what} ({n} records received first; connected {:.1} s, committed {:.1} s, closed {:.1} s, case {:.1} s): {}",
            c.as_secs_f64(),
            k.as_secs_f64(),
            all.as_secs_f64(),
            t0.elapsed().as_secs_f64(),
            line.text.trim()
        );
    }
    let raw = a.raw_output();
    a.check(!raw[kernel_from..].contains(&0x1b), || {
        "an escape sequence from the network reached the console".into()
    });
}

// ---------------------------------------------------------------------
// C. Fake primaries sending garbage to `ft listen` (QEMU: the listener
// needs no VT-x).

/// A fake primary's Hello for a 4 MiB guest `g`, and an empty log frame.
fn hello_and_empty_log() -> (RawFrame, RawFrame) {
    let hello = encode(&Message::Hello {
        version: migrate::proto::PROTOCOL_VERSION,
        vm: "g".into(),
        mem_bytes: 4 << 20,
        profile: x86_64_profile(),
        devices: AnyHost.devices(),
    });
    let log = ft_lockstep::encode(&Frame::Log {
        first: 0,
        records: vec![],
    });
    (hello, log)
}

/// A host with no key refuses `ft enable` and `ft listen`; with a key it
/// listens, and every connection that brings garbage, the wrong key, FT
/// frames before any copy or a Hello it cannot take is dropped with a
/// reason, while the host answers `status` after each. One boot.
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
    let out = m.cmd("ft enable x 10.0.2.2 witness=none");
    m.check(out.starts_with("error: ft: x: no channel key"), || {
        out.clone()
    });
    let out = m.cmd("ft listen");
    m.check(out.starts_with("error: ft: no channel key"), || out.clone());
    m.cmd(&format!("net key {KEY}"));
    let out = m.cmd("ft listen");
    m.check(out.starts_with("ft: listening on port 7003"), || {
        out.clone()
    });
    let fwd = m.forwarded_port(port);
    let kernel_from = m.raw_output().len();

    // Each connection the listener drops is reported with its peer's port
    // (QEMU's forward keeps it) and a reason matching `why`; the host
    // closes that connection and answers `status`.
    let dropped = |m: &mut Machine, local: u16, what: &str, why: &str| {
        let line = m.expect_line(
            &format!(
                r"ft: (?:(?:incoming|refusing) .*? from )?10\.0\.2\.2:{local}(?: discarded)?: (.*)"
            ),
            secs(60),
        );
        m.check(
            Regex::new(why)
                .unwrap()
                .is_match(line.get(1).unwrap_or_default().trim_end()),
            || format!("{what}: expected a reason /{why}/, got: {}", line.text),
        );
        println!("{what}: {}", line.text.trim());
    };
    let alive = |m: &mut Machine| {
        m.send_line("status");
        m.expect_line(r"host: twin", secs(30));
    };

    // Garbage instead of a handshake.
    let mut s = TcpStream::connect(("127.0.0.1", fwd)).unwrap();
    let local = s.local_addr().unwrap().port();
    s.write_all(b"\x16\x03\x01garbage garbage garbage\r\n")
        .unwrap();
    dropped(
        &mut m,
        local,
        "garbage before the handshake",
        r"(?i)not a channel peer|magic",
    );
    common::expect_closed(&m, "garbage before the handshake", &mut s);
    alive(&mut m);
    // The wrong key.
    let mut s = TcpStream::connect(("127.0.0.1", fwd)).unwrap();
    let local = s.local_addr().unwrap().port();
    s.set_read_timeout(Some(secs(30))).unwrap();
    common::handshake_with_the_wrong_key(&mut s);
    drop(s);
    dropped(&mut m, local, "the wrong key", r"(?i)key|handshake");
    alive(&mut m);

    // The key, then FT frames (48..=50), well-formed or not, before any
    // Hello; an unknown type; a Hello (refused here: no VT-x), then garbage.
    let key = Key::from_hex(KEY).unwrap();
    let mut seed = XorShift::new(0x9e37_79b9_7f4a_7c15);
    let ((hello_ty, hello), log) = hello_and_empty_log();
    let cases: Vec<(&str, Vec<RawFrame>, &str)> = vec![
        (
            "a log frame before any copy",
            vec![log.clone()],
            r"unknown migration message type 48",
        ),
        (
            "an acknowledgement before any copy",
            vec![(FRAME_ACK, ack(1, 1))],
            r"unknown migration message type 49",
        ),
        (
            "an End before any copy",
            vec![ft_lockstep::encode(&Frame::End {
                reason: "\x1b[2Jbye".into(),
            })],
            r"unknown migration message type 50",
        ),
        (
            "garbage as a log frame",
            vec![(FRAME_LOG, seed.bytes(5000))],
            r"unknown migration message type 48",
        ),
        (
            "garbage as an acknowledgement",
            vec![(FRAME_ACK, seed.bytes(40))],
            r"unknown migration message type 49",
        ),
        (
            "garbage as an End",
            vec![(FRAME_END, seed.bytes(300))],
            r"unknown migration message type 50",
        ),
        (
            "an unknown frame type",
            vec![(200, seed.bytes(64))],
            r"unknown migration message type 200",
        ),
        (
            "a Hello (refused: no VT-x here), then garbage",
            vec![(hello_ty, hello), (FRAME_LOG, seed.bytes(100))],
            r"VT-x is not available",
        ),
    ];
    for (what, frames, why) in cases {
        let mut p = HostPeer::connect(fwd, &key).unwrap_or_else(|e| m.fail(&e));
        let local = p.stream.local_addr().unwrap().port();
        for (ty, payload) in frames {
            p.send(ty, &payload).unwrap();
        }
        dropped(&mut m, local, what, why);
        if what.starts_with("a Hello") {
            // Its reservation failed: reported once more as the discard.
            m.expect_line(
                &format!(r"ft: incoming g from 10\.0\.2\.2:{local} discarded: .*"),
                secs(30),
            );
        }
        common::expect_closed(&m, what, &mut p.stream);
        alive(&mut m);
    }

    // The host listens still and holds no half-arrived guest.
    m.send_line("ft status");
    m.expect_line(r"ft: listening on port 7003", secs(30));
    m.expect_line(r"ft: no protected guests", secs(30));
    m.send_line("vm list");
    m.expect_line(r"no VMs \(create one with 'vm create'\)", secs(30));
    let raw = m.raw_output();
    m.check(!raw[kernel_from..].contains(&0x1b), || {
        "an escape sequence from the network reached the console".into()
    });
}
