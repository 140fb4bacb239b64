//! Attacks on the migration listener (`migrate listen`, TCP port 7002)
//! from the network.
//!
//! * A flood: a station of the test's own on a Bochs link
//!   ([`HubPeer`]) holds many half-open and garbage connections to the
//!   destination at once, which a QEMU port forward cannot do (it
//!   serializes connections). The destination keeps at most
//!   `net.max_pending` unauthenticated handshakes, refuses the rest at once
//!   with a log line, answers its console throughout, and afterwards takes
//!   a live migration as usual.
//! * Malformed input on an authenticated migration channel, through a QEMU
//!   port forward: each bad connection is dropped alone, with a log line
//!   naming the reason; peer-supplied names never reach the console raw;
//!   an honest peer is served afterwards.

mod common;

use common::{dirty_count, start_dirty};

use std::io::Write;
use std::net::{Ipv4Addr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use hv_tests::hubpeer::{HubNicCounters, HubPeer};
use hv_tests::peer::HostPeer;
use hv_tests::regex::Regex;
use hv_tests::smoltcp::iface::SocketHandle;
use hv_tests::smoltcp::socket::tcp::State;
use hv_tests::{Found, Link, Machine, line_pattern, secs};
use migrate::proto::{Message, PageRuns, encode};
use netstack::codec::{Handshake, Key};

const KEY: &str = "00112233445566778899aabbccddeeff";
const MIGRATE_PORT: u16 = 7002;
/// `net.max_pending` in the destination's hv.cfg.
const MAX_PENDING: usize = 4;
/// A frame type the migration protocol does not have (it uses 32..=44).
const UNKNOWN_TYPE: u8 = 200;

/// A Hello as a source would send it, for `vm` with `mem_bytes` of RAM,
/// no CPU features and no devices.
fn hello(vm: &str, mem_bytes: u64) -> Message {
    Message::Hello {
        version: migrate::proto::PROTOCOL_VERSION,
        vm: vm.to_string(),
        mem_bytes,
        profile: no_features(),
        devices: Vec::new(),
    }
}

/// A CPU profile with no feature and only x87/SSE state, which every
/// host can offer: `none`, 0 features, signature 0, XCR0 mask 3, in the
/// profile's wire form.
fn no_features() -> vcpu::profile::Profile {
    let mut wire = vec![4];
    wire.extend_from_slice(b"none");
    wire.extend_from_slice(&0u16.to_le_bytes());
    wire.extend_from_slice(&0u32.to_le_bytes());
    wire.extend_from_slice(&3u64.to_le_bytes());
    vcpu::profile::Profile::decode(&wire)
        .expect("a minimal profile decodes")
        .0
}

// ---------------------------------------------------------------------
// The flood.

/// What a flood connection does once TCP is up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Nothing: a connection that never starts its handshake.
    Silent,
    /// The first 20 bytes of a client handshake, then nothing.
    Partial,
    /// An HTTP request and random bytes instead of a handshake.
    Garbage,
}

struct Conn {
    handle: SocketHandle,
    started: Instant,
    established: Option<Instant>,
    sent: bool,
}

struct Slot {
    kind: Kind,
    conn: Option<Conn>,
    next_at: Instant,
}

/// Limits of one flood.
#[derive(Debug, Clone, Copy)]
struct FloodPlan {
    silent: usize,
    partial: usize,
    garbage: usize,
    /// Connection attempts in all.
    max_attempts: u64,
    /// How long the flood lasts (unless stopped earlier).
    duration: Duration,
    /// Shortest time between two connection attempts (all slots together).
    interval: Duration,
    /// How long a slot waits after its connection ended before the next.
    retry: Duration,
}

/// What the flood saw, from the attacker's side.
#[derive(Debug, Default, Clone)]
struct FloodReport {
    attempts: u64,
    /// Connections that reached Established.
    established: u64,
    /// Connections reset or timed out before they were established.
    never_established: u64,
    /// Silent or partial connections the host ended within a second of
    /// their establishment (refused at once; garbage is dropped at once in
    /// any case).
    refused_at_once: u64,
    /// Connections reset in answer to their SYN (no listening socket free
    /// at that instant: the stack has one per port between two accepts).
    reset_at_syn: u64,
    /// Established connections the host ended (reset, FIN).
    ended_by_host: u64,
    garbage_sent: u64,
    partial_sent: u64,
    /// Longest time a connection stayed established, until the host ended
    /// it or the flood did.
    longest_open: Duration,
    /// Most connections established for at least [`SETTLED`] at one time.
    most_settled_at_once: usize,
    /// Connections still established when the flood ended.
    open_at_end: usize,
    elapsed: Duration,
}

/// How long a connection must have been up to count as kept by the host
/// (an RST that was lost is repaired by the keep-alive probe after 2 s).
const SETTLED: Duration = Duration::from_millis(2500);

fn garbage_bytes(seed: u64) -> Vec<u8> {
    let mut out = b"GET /migrate HTTP/1.1\r\nHost: 10.0.0.2\r\n\r\n".to_vec();
    out.extend(hv_tests::random::XorShift::new(seed).bytes(256));
    out
}

/// Runs a flood against `target:7002` until `plan.duration` has passed,
/// `plan.max_attempts` connections were tried or `stop` is set; then resets
/// every connection still open.
fn flood(peer: &mut HubPeer, target: Ipv4Addr, plan: FloodPlan, stop: &AtomicBool) -> FloodReport {
    let key = Key::from_hex(KEY).unwrap();
    let partial = Handshake::client(&key, [7; 32], 1 << 20).take_output()[..20].to_vec();
    let start = Instant::now();
    // The kinds interleaved, so that any stretch of slots mixes them.
    let mut slots: Vec<Slot> = Vec::new();
    for i in 0..plan.silent.max(plan.partial).max(plan.garbage) {
        for (kind, n) in [
            (Kind::Silent, plan.silent),
            (Kind::Partial, plan.partial),
            (Kind::Garbage, plan.garbage),
        ] {
            if i < n {
                slots.push(Slot {
                    kind,
                    conn: None,
                    next_at: start,
                });
            }
        }
    }
    let mut r = FloodReport::default();
    let mut next_connect = start;
    let mut turn = 0;
    while !stop.load(Ordering::Relaxed) && start.elapsed() < plan.duration {
        peer.poll();
        let now = Instant::now();
        let mut settled = 0;
        for slot in &mut slots {
            let Some(c) = slot.conn.as_mut() else {
                continue;
            };
            let s = peer.tcp(c.handle);
            let state = s.state();
            if c.established.is_none() && matches!(state, State::Established | State::CloseWait) {
                c.established = Some(now);
                r.established += 1;
            }
            if c.established.is_some() && !c.sent && s.can_send() {
                match slot.kind {
                    Kind::Silent => {}
                    Kind::Partial => {
                        if s.send_slice(&partial).is_ok() {
                            r.partial_sent += 1;
                        }
                    }
                    Kind::Garbage => {
                        if s.send_slice(&garbage_bytes(r.attempts)).is_ok() {
                            r.garbage_sent += 1;
                        }
                    }
                }
                c.sent = true;
            }
            // Anything the host says is dropped: we only hold connections.
            while s.can_recv() {
                if s.recv(|b| (b.len(), ())).is_err() {
                    break;
                }
            }
            let ended = state == State::Closed || (c.established.is_some() && !s.may_recv());
            if ended {
                match c.established {
                    Some(at) => {
                        let open = now - at;
                        r.ended_by_host += 1;
                        r.longest_open = r.longest_open.max(open);
                        if slot.kind != Kind::Garbage && open < Duration::from_secs(1) {
                            r.refused_at_once += 1;
                        }
                    }
                    None => {
                        r.never_established += 1;
                        // A reset answering the SYN (a timeout takes 10 s).
                        if now - c.started < Duration::from_secs(1) {
                            r.reset_at_syn += 1;
                        }
                    }
                }
                let h = c.handle;
                slot.conn = None;
                slot.next_at = now + plan.retry;
                peer.abort(h);
            } else if state == State::Established
                && c.established.is_some_and(|at| now - at >= SETTLED)
            {
                settled += 1;
            }
        }
        r.most_settled_at_once = r.most_settled_at_once.max(settled);
        // One new connection per interval, the free slots taking turns.
        if r.attempts < plan.max_attempts && now >= next_connect {
            let n = slots.len();
            let due = (0..n)
                .map(|k| (turn + k) % n)
                .find(|&i| slots[i].conn.is_none() && now >= slots[i].next_at);
            if let Some(i) = due {
                if let Ok(handle) = peer.tcp_connect(target, MIGRATE_PORT) {
                    slots[i].conn = Some(Conn {
                        handle,
                        started: now,
                        established: None,
                        sent: false,
                    });
                    r.attempts += 1;
                }
                turn = i + 1;
                next_connect = now + plan.interval;
            }
        }
        peer.wait(Duration::from_millis(5));
    }
    let now = Instant::now();
    for slot in &mut slots {
        if let Some(c) = slot.conn.take() {
            if let Some(at) = c.established {
                r.longest_open = r.longest_open.max(now - at);
                if peer.tcp(c.handle).state() == State::Established {
                    r.open_at_end += 1;
                }
            }
            peer.abort(c.handle);
        }
    }
    // Let the resets leave.
    peer.run_for(Duration::from_millis(500));
    r.elapsed = start.elapsed();
    r
}

/// A flood running on a thread of its own (stopped when dropped).
struct Flood {
    stop: Arc<AtomicBool>,
    running: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<(FloodReport, HubNicCounters)>>,
}

impl Flood {
    fn start(mut peer: HubPeer, target: Ipv4Addr, plan: FloodPlan) -> Flood {
        let stop = Arc::new(AtomicBool::new(false));
        let running = Arc::new(AtomicBool::new(true));
        let thread = {
            let (stop, running) = (Arc::clone(&stop), Arc::clone(&running));
            thread::Builder::new()
                .name("flood".into())
                .spawn(move || {
                    let r = flood(&mut peer, target, plan, &stop);
                    running.store(false, Ordering::SeqCst);
                    (r, peer.counters())
                })
                .unwrap()
        };
        Flood {
            stop,
            running,
            thread: Some(thread),
        }
    }

    /// Waits for the flood to run its planned time and returns what it saw.
    fn join(&mut self) -> Option<(FloodReport, HubNicCounters)> {
        self.thread.take()?.join().ok()
    }

    /// Stops the flood (if it still runs) and returns what it saw.
    fn finish(&mut self) -> Option<(FloodReport, HubNicCounters)> {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.take()?.join().ok()
    }

    /// Fails with `report` (a machine's) and the flood's numbers so far.
    fn fail(&mut self, report: &str) -> ! {
        let seen = match self.finish() {
            Some((r, c)) => format!("{r:?}\nstation frames: {c:?}"),
            None => "(the flood thread panicked)".into(),
        };
        panic!("{report}\n--- the flood so far ---\n{seen}")
    }

    fn check(&mut self, b: &Machine, ok: bool, what: &str) {
        if !ok {
            let report = b.report(what);
            self.fail(&report);
        }
    }

    /// [`Machine::expect`] while the flood runs: a timeout, or a kernel
    /// panic on the way, fails at once with the flood's numbers.
    fn expect(&mut self, b: &mut Machine, pattern: &str, timeout: Duration) -> Found {
        // The panic line and the message on the next one, both whole.
        let either = format!("(?:{pattern})|(?P<panic>!!! kernel panic[^\r\n]*\r?\n[^\r\n]*\r?\n)");
        match b.try_expect(&either, timeout) {
            Ok(f) if f.name("panic").is_some() => {
                let what = format!("the host halted under the flood: {}", f.text.trim_end());
                let report = b.report(&what);
                self.fail(&report)
            }
            Ok(f) => f,
            Err(e) => self.fail(&e.0),
        }
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// The destination's log line for a refused connection; groups: peer
/// address, pending handshakes, the limit.
const REFUSING: &str = r"net: port 7002: refusing (\d+\.\d+\.\d+\.\d+):\d+: (\d+) handshakes pending \(the limit is (\d+)\)";
/// The once-a-second summary of further refusals; group 1: how many.
const REFUSED_MORE: &str = r"net: port 7002: refused (\d+) more connections";

#[test]
fn bochs_migration_listener_survives_a_connection_flood() {
    let link = Link::bochs_with_peer();
    let config = |name: &str, ip: &str| {
        format!(
            "hostname = {name}\nnet.ip = {ip}\nnet.key = {KEY}\nnet.max_pending = {MAX_PENDING}\n"
        )
    };
    let mut a = Machine::bochs()
        .hostname("srca")
        .config(&config("srca", "10.0.0.1/24"))
        .link(&link)
        .start();
    let mut b = Machine::bochs()
        .hostname("dstb")
        .config(&config("dstb", "10.0.0.2/24"))
        .link(&link)
        .start();
    // Both boot at once.
    a.boot_to_prompt();
    b.boot_to_prompt();
    if b.output().contains("unknown key 'net.max_pending'") {
        eprintln!("note: this kernel does not know net.max_pending (it ignores the line)");
    }
    let out = b.cmd("migrate listen");
    b.check(out.contains("migrate: listening on port 7002"), || {
        out.clone()
    });
    let (_, (heap, heap_idle)) = common::mem(&mut b);
    start_dirty(&mut a, 100);

    // The station can reach the listener at all: one connection, then a reset.
    let mut peer = HubPeer::join(&link, "10.0.0.9/24").unwrap_or_else(|e| panic!("{e}"));
    let target = Ipv4Addr::new(10, 0, 0, 2);
    let h = peer.tcp_connect(target, MIGRATE_PORT).unwrap();
    let deadline = Instant::now() + secs(30);
    while peer.tcp(h).state() != State::Established {
        if Instant::now() > deadline {
            b.fail(&format!(
                "the test's station (10.0.0.9 on the hub) could not connect to 10.0.0.2:7002 \
                 in 30 s (socket {:?}, frames {:?})",
                peer.tcp(h).state(),
                peer.counters()
            ));
        }
        peer.poll();
        peer.wait(Duration::from_millis(20));
    }
    peer.abort(h);
    peer.run_for(Duration::from_millis(200));

    // The flood runs on a thread of its own for a fixed time; the consoles
    // are checked meanwhile.
    let plan = FloodPlan {
        silent: 32,
        partial: 32,
        garbage: 32,
        max_attempts: 1500,
        duration: secs(25),
        interval: Duration::from_millis(20),
        retry: Duration::from_millis(250),
    };
    let mut fl = Flood::start(peer, target, plan);

    // Refusals are logged, with the station's address and the configured
    // limit; further ones are summarized.
    let refusal = fl.expect(&mut b, REFUSING, secs(90));
    let limit = refusal.num(3);
    fl.check(&b, refusal.get(1) == Some("10.0.0.9"), &refusal.text);
    fl.check(
        &b,
        limit == MAX_PENDING as u64,
        &format!(
            "net.max_pending = {MAX_PENDING} did not take: {}",
            refusal.text
        ),
    );
    fl.check(
        &b,
        refusal.num(2) >= limit,
        &format!("refused below the limit: {}", refusal.text),
    );
    fl.expect(&mut b, REFUSED_MORE, secs(30));
    // The console answers during the flood (log lines may come in between:
    // match lines, not prompts).
    b.send_line("status");
    fl.expect(&mut b, &line_pattern("host: dstb"), secs(60));
    fl.expect(&mut b, &line_pattern(r"uptime: \d+\.\d+ s"), secs(30));
    b.send_line("mem");
    let heap_flood = fl
        .expect(
            &mut b,
            &line_pattern(r"heap: (\d+) KiB, used (\d+) KiB"),
            secs(60),
        )
        .num(2);
    fl.check(
        &b,
        fl.running.load(Ordering::SeqCst),
        "the flood was over before the console had answered: the checks did not run under load",
    );
    println!("heap: {heap} KiB; used {heap_idle} KiB listening, {heap_flood} KiB during the flood");
    fl.check(
        &b,
        heap_flood * 4 < heap * 3,
        &format!("heap used during the flood: {heap_flood} of {heap} KiB (idle {heap_idle} KiB)"),
    );

    // The console was checked under load; the flood now runs its course
    // (its whole planned time, so every kind of connection was tried).
    let (r, counters) = fl.join().expect("the flood thread panicked");
    println!("flood: {r:?}\nstation frames: {counters:?}");
    b.check(
        r.attempts >= (plan.silent + plan.partial + plan.garbage) as u64,
        || format!("the flood tried only {} connections: {r:?}", r.attempts),
    );
    b.check(r.established >= MAX_PENDING as u64, || {
        format!("the host accepted fewer than {MAX_PENDING} connections: {r:?}")
    });
    b.check(r.refused_at_once > 0, || {
        format!("no connection was refused at once: {r:?}")
    });
    b.check(r.most_settled_at_once <= MAX_PENDING + 1, || {
        format!(
            "{} unauthenticated connections were kept at once (limit {MAX_PENDING}): {r:?}",
            r.most_settled_at_once
        )
    });
    // Handshakes time out after 5 s; the flood lasted 25 s.
    b.check(r.longest_open < secs(10), || {
        format!(
            "a connection without a handshake stayed open for {:?}: {r:?}",
            r.longest_open
        )
    });

    // Nothing is left of the flood on the destination (a connection it
    // still holds goes at its handshake timeout at the latest).
    let deadline = Instant::now() + secs(30);
    loop {
        b.send_line("migrate status");
        b.expect_line("migrate: listening on port 7002", secs(60));
        let rest = b.expect_prompt(b.command_timeout()).before;
        if !rest.lines().any(|l| l.starts_with("incoming ")) {
            break;
        }
        if Instant::now() > deadline {
            b.fail(&format!(
                "connections of the flood are still listed 30 s after it ended:\n{rest}"
            ));
        }
        thread::sleep(Duration::from_secs(1));
    }
    b.send_line("mem");
    let heap_after = b
        .expect_line(r"heap: (\d+) KiB, used (\d+) KiB", secs(60))
        .num(2);
    println!("heap used after the flood: {heap_after} KiB");

    // Now an ordinary live migration to the flooded host.
    a.send_line("migrate d 10.0.0.2");
    let done = a.expect_line(
        r"(migrate: d now runs on 10\.0\.0\.2: total (\d+) ms, downtime (\d+) ms, (\d+) rounds, .*|error: migrate: .*)",
        secs(600),
    );
    a.check(done.text.starts_with("migrate: d now runs"), || {
        done.text.clone()
    });
    println!("{}", done.text.trim());
    b.expect_line(r"migrate: d from [\d.:]+ now runs here.*", secs(60));
    let next = dirty_count(&mut b).num(1);
    let again = dirty_count(&mut b).num(1);
    b.check(again == next + 1, || format!("{next} then {again}"));
    b.send_line("vm checksum d");
    let c = b.expect_line(
        r"\[d\] dirty: checksum ([0-9a-f]+) expected ([0-9a-f]+) (\w+) after (\d+) writes",
        secs(120),
    );
    b.check(c.get(3) == Some("ok"), || c.text.clone());
    b.send_line("vm list");
    b.expect_line(r"d +(running|halted) +16 MiB \(migrated\) +-", secs(30));
}

// ---------------------------------------------------------------------
// Malformed input on the migration port.

/// The destination's line for a connection it dropped: `migrate: incoming
/// <vm> from <peer> discarded: <why>` (RAM had been reserved), `migrate:
/// refusing <vm> from <peer>: <why>` (the reservation failed) or
/// `migrate: <peer>: <why>` (nothing reserved: a refused Hello, a peer
/// gone before its Hello), for the connection from `port` (the QEMU
/// forward keeps the client's port). Group 1: the reason.
fn dropped_pattern(port: u16) -> String {
    format!(r"migrate: (?:(?:incoming|refusing) .*? from )?10\.0\.2\.2:{port}(?: discarded)?: (.*)")
}

/// Waits for the line that drops the connection from `port`; a reason not
/// matching `why` (a regex) is added to `problems` (the test goes on, so
/// one run shows every defect).
fn expect_dropped(m: &mut Machine, problems: &mut Vec<String>, what: &str, port: u16, why: &str) {
    let line = m.expect_line(&dropped_pattern(port), secs(30));
    let reason = line.get(1).unwrap_or_default();
    let text = hv_tests::console::shorten_lines(
        &hv_tests::console::readable(line.text.trim_end().as_bytes()),
        300,
    );
    if !Regex::new(why).unwrap().is_match(reason) {
        problems.push(format!(
            "{what}: expected a reason matching /{why}/, got: {text}"
        ));
    }
    println!("{what}: {text}");
}

fn connect(port: u16) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(secs(30))).unwrap();
    s
}

/// An authenticated channel that sends one frame `(ty, payload)`; the
/// hypervisor must drop it with a reason matching `why`. Returns the
/// frames it sent back before closing.
fn bad_frame(
    m: &mut Machine,
    problems: &mut Vec<String>,
    port: u16,
    (what, ty, payload, why): (&str, u8, &[u8], &str),
) -> Vec<u8> {
    let key = Key::from_hex(KEY).unwrap();
    let mut p = HostPeer::connect(port, &key).unwrap_or_else(|e| m.fail(&format!("{what}: {e}")));
    p.stream.set_read_timeout(Some(secs(30))).unwrap();
    let local = p.stream.local_addr().unwrap().port();
    p.send(ty, payload)
        .unwrap_or_else(|e| m.fail(&format!("{what}: cannot send: {e}")));
    expect_dropped(m, problems, what, local, why);
    // Whatever it answers (Refuse, Abort, the channel's close), then the end.
    let mut types = Vec::new();
    loop {
        match p.recv() {
            Ok((ty, _)) => types.push(ty),
            Err(e) if e.contains("closed the channel") || e.contains("reset") => break,
            Err(e) => m.fail(&format!("{what}: the connection was not closed: {e}")),
        }
    }
    types
}

/// Longest console line accepted when a peer sends a huge string.
const MAX_LINE: usize = 4096;

#[test]
fn qemu_malformed_migration_frames_close_only_that_connection() {
    let mut m = Machine::qemu()
        .hostname("dst")
        .config(&format!(
            "hostname = dst\nnet.ip = 10.0.2.15/24\nnet.gw = 10.0.2.2\nnet.key = {KEY}\n"
        ))
        .user_net_forward(MIGRATE_PORT)
        .start();
    m.boot_to_prompt();
    let out = m.cmd("migrate listen");
    m.check(out.contains("migrate: listening on port 7002"), || {
        out.clone()
    });
    // The firmware draws with escape sequences; from here on the console is
    // the kernel's alone.
    let kernel_from = m.raw_output().len();
    let port = m.forwarded_port(MIGRATE_PORT);
    let mut problems = Vec::new();

    // (a) Garbage instead of a handshake.
    let mut s = connect(port);
    let local = s.local_addr().unwrap().port();
    s.write_all(b"GET / HTTP/1.1\r\nHost: hv\r\n\r\n").unwrap();
    expect_dropped(
        &mut m,
        &mut problems,
        "garbage before the handshake",
        local,
        r"(?i)not a channel peer|handshake|magic",
    );
    common::expect_closed(&m, "garbage before the handshake", &mut s);

    // (b) The key, then malformed migration frames.
    let (hello_ty, full) = encode(&hello("t", 16 << 20));
    let mut runs = PageRuns::new();
    runs.push_zeros(0, 1).unwrap();
    let pages = encode(&Message::Pages { round: 0, runs });
    let huge = format!("\x1b[2J{}", "R".repeat(200_000));
    let refuse = encode(&Message::Refuse {
        reasons: vec![huge.clone()],
    });
    let abort = encode(&Message::Abort { reason: huge });
    let cases: Vec<(&str, u8, Vec<u8>, &str)> = vec![
        (
            "a truncated Hello",
            hello_ty,
            full[..7].to_vec(),
            r"(?i)truncated",
        ),
        (
            "an unknown message type",
            UNKNOWN_TYPE,
            vec![1, 2, 3],
            r"(?i)unknown",
        ),
        (
            "Pages before Hello",
            pages.0,
            pages.1,
            r"(?i)before hello|expected hello",
        ),
        (
            "a VM name with a space",
            hello_ty,
            encode(&hello("bad name", 16 << 20)).1,
            r"(?i)name",
        ),
        (
            "a VM name with an escape sequence",
            hello_ty,
            encode(&hello("x\x1b[2J", 16 << 20)).1,
            r"(?i)name",
        ),
        (
            "a Hello for 1 TiB of RAM",
            hello_ty,
            encode(&hello("big", 1 << 40)).1,
            r"(?i)memory",
        ),
        (
            "a huge Refuse",
            refuse.0,
            refuse.1,
            r"(?i)refuse|expected hello",
        ),
        ("a huge Abort", abort.0, abort.1, r"(?i)abort"),
    ];
    for (what, ty, payload, why) in &cases {
        bad_frame(&mut m, &mut problems, port, (what, *ty, payload, why));
    }

    // (c) A peer without the key cannot finish the handshake.
    let mut s = connect(port);
    let local = s.local_addr().unwrap().port();
    common::handshake_with_the_wrong_key(&mut s);
    drop(s);
    expect_dropped(
        &mut m,
        &mut problems,
        "the wrong key",
        local,
        r"(?i)key|handshake|authenticat",
    );

    // An honest peer is served: a check-only Hello gets its answer.
    let mut p = HostPeer::connect(port, &Key::from_hex(KEY).unwrap())
        .unwrap_or_else(|e| m.fail(&format!("honest peer: {e}")));
    let (probe_ty, probe) = encode(&Message::Probe {
        version: migrate::proto::PROTOCOL_VERSION,
        vm: "probe".to_string(),
        mem_bytes: 16 << 20,
        profile: no_features(),
        devices: Vec::new(),
    });
    p.send(probe_ty, &probe).unwrap();
    let (ty, payload) = p
        .recv()
        .unwrap_or_else(|e| m.fail(&format!("honest peer: no answer to a check: {e}")));
    let answer = migrate::proto::decode(ty, &payload);
    m.check(answer == Ok(Message::Ready), || {
        format!("honest peer: the check was answered {answer:?}")
    });
    drop(p);

    // The console works, and nothing is left of the bad connections. (The
    // shell shows its prompt again after the drop lines: skip to it first.)
    m.expect_prompt(m.command_timeout());
    let show = m.cmd("net show");
    m.check(show.contains("link: up"), || show.clone());
    let deadline = Instant::now() + secs(20);
    loop {
        let st = m.cmd("migrate status");
        m.check(st.starts_with("migrate: listening on port 7002"), || {
            st.clone()
        });
        if st == "migrate: listening on port 7002" {
            break;
        }
        if Instant::now() > deadline {
            m.fail(&format!(
                "leftover migrations 20 s after the last connection:\n{st}"
            ));
        }
        thread::sleep(Duration::from_millis(500));
    }
    let vms = m.cmd("vm list");
    m.check(vms.starts_with("no VMs"), || format!("vm list:\n{vms}"));

    // Names and strings from the network never reach the terminal raw.
    let raw = m.raw_output();
    let kernel = &raw[kernel_from..];
    for line in kernel.split(|&b| b == b'\n') {
        if line.contains(&0x1b) {
            let shown: String = String::from_utf8_lossy(line).chars().take(200).collect();
            problems.push(format!(
                "an ESC byte from the network reached the console: {shown:?}"
            ));
        }
        if line.len() > MAX_LINE {
            let shown: String = String::from_utf8_lossy(line).chars().take(120).collect();
            problems.push(format!(
                "a console line of {} bytes (a peer's string printed whole): {shown:?}...",
                line.len()
            ));
        }
    }
    m.check(problems.is_empty(), || problems.join("\n"));
}
