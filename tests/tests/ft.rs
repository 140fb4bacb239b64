//! Fault tolerance, part 1: two Bochs hosts joined by bxhub run one guest
//! in lockstep. The primary records every input and event of its guests
//! and holds their output until the secondary has the log; the secondary
//! replays them with no input of its own.
//!
//! What would be false if the lockstep were broken:
//! - the secondary's replayed lines (`ft watch`) are the primary's lines,
//!   the same values in the same order (the `dirty` guest prints its TSC
//!   readings: only a replay that feeds the logged values reproduces them);
//! - state checks (vCPU, devices and all of RAM, digested on both sides at
//!   the same exit) match, at least 5 of them, and none differs;
//! - with the secondary's emulator stopped (SIGSTOP) the primary releases
//!   no guest line; after SIGCONT they all arrive, in order, once.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{KEY, linked_bochs};
use hv_tests::hubpeer::HubPeer;
use hv_tests::{Link, Machine, secs};

/// A twin whose failure detector waits 20 s: the output-rule check below
/// stops the secondary's emulator for 3.5 s, which the default 1 s timeout
/// would (rightly) treat as a dead host (`ft_failover.rs` tests that).
fn host(link: &Link, name: &str, ip: &str) -> Machine {
    linked_bochs(link, name, ip, |b| {
        b.bochs_model("corei7_skylake_x")
            .memory_mib(256)
            .config(&format!(
                "hostname = {name}\nnet.ip = {ip}\nnet.key = {KEY}\nft.timeout_ms = 20000\n"
            ))
    })
}

/// The lines of `m`'s console that start with `tag` (after a prompt the
/// line may share), without it.
fn tagged(m: &Machine, tag: &str) -> Vec<String> {
    m.output()
        .lines()
        .map(|l| match l.find("> ") {
            Some(i) if !l[..i].contains(' ') => &l[i + 2..],
            _ => l,
        })
        .filter_map(|l| l.strip_prefix(tag).map(|r| r.trim_end().to_string()))
        .filter(|l| !l.is_empty())
        .collect()
}

/// Guest lines of `vm` printed on the primary (`[vm] ...`), in order.
fn primary_lines(m: &Machine, vm: &str) -> Vec<String> {
    tagged(m, &format!("[{vm}] "))
}

/// Guest lines of `vm` the secondary replayed (`ft: replayed [vm] ...`).
fn replayed_lines(m: &Machine, vm: &str) -> Vec<String> {
    tagged(m, &format!("ft: replayed [{vm}] "))
}

/// The `dirty: count <n>` values of `vm` in `lines`.
fn counts(lines: &[String]) -> Vec<u64> {
    lines
        .iter()
        .filter_map(|l| l.strip_prefix("dirty: count "))
        .filter_map(|r| r.split_whitespace().next()?.parse().ok())
        .collect()
}

/// The secondary replayed exactly what the primary printed (a prefix of
/// it: the replay runs a little behind), and at least `min` lines.
fn same_lines(a: &Machine, b: &Machine, vm: &str, min: usize) {
    let p = primary_lines(a, vm);
    let r = replayed_lines(b, vm);
    b.check(r.len() >= min, || {
        format!(
            "{vm}: the secondary replayed {} lines, expected at least {min}",
            r.len()
        )
    });
    // Lines from before protection began are the primary's alone.
    let start = p
        .iter()
        .position(|l| Some(l) == r.first())
        .unwrap_or_else(|| {
            b.fail(&format!(
                "{vm}: first replayed line {:?} never printed on the primary",
                r.first()
            ))
        });
    for (k, line) in r.iter().enumerate() {
        let theirs = p.get(start + k);
        b.check(theirs == Some(line), || {
            format!("{vm}: replayed line {k} is {line:?}, the primary printed {theirs:?}")
        });
    }
    println!("{vm}: {} replayed lines match the primary's", r.len());
}

/// `ft status <vm>` on the primary: (checks sent, checks matched).
fn checks(a: &mut Machine, vm: &str) -> (u64, u64) {
    a.send_line(&format!("ft status {vm}"));
    let c = a.expect_line(
        r"  secondary acknowledged \d+ records, replayed \d+ \(\d+ exits\); checks (\d+) sent, (\d+) matched",
        secs(60),
    );
    (c.num(1), c.num(2))
}

/// A station of the test's own on the hub connects to `b`'s port 7003
/// twice: with another key, then with garbage. `b` must close both and
/// say why.
fn strangers(link: &Link, b: &mut Machine) {
    use netstack::channel::{Channel, ChannelOptions};
    use netstack::codec::Key;
    let mut peer = HubPeer::join(link, "10.0.0.9/24").unwrap_or_else(|e| b.fail(&e.0));
    let twin = (netstack::stack::Ipv4Address::new(10, 0, 0, 2), 7003);
    let key = Key::from_hex(common::OTHER_KEY).unwrap();
    let now = peer.now_us();
    let mut chan = Channel::connect(
        peer.stack(),
        twin,
        &key,
        [3; 32],
        ChannelOptions::default(),
        now,
    )
    .unwrap_or_else(|e| b.fail(&format!("connect: {e}")));
    let until = Instant::now() + Duration::from_secs(60);
    while !chan.is_closed() && Instant::now() < until {
        peer.poll();
        let now = peer.now_us();
        chan.poll(peer.stack(), now);
        peer.wait(Duration::from_millis(5));
    }
    b.check(chan.is_closed(), || {
        "a handshake with another key stayed open".into()
    });
    chan.release(peer.stack());
    let l = b.expect_line(
        r"ft: (?:(?:incoming|refusing) .*? from )?10\.0\.0\.9:\d+(?: discarded)?: (.*)",
        secs(60),
    );
    println!("another key: {}", l.text.trim());
    let h = peer.stack().tcp_connect(twin).unwrap();
    let mut sent = false;
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        peer.poll();
        let s = peer.stack().tcp(h);
        if !sent && s.may_send() {
            s.send_slice(b"GET / HTTP/1.0\r\n\r\n garbage, not a handshake")
                .unwrap();
            sent = true;
        }
        if sent && !s.is_active() || !s.is_open() {
            break;
        }
        if sent && !s.may_recv() {
            break;
        }
        if Instant::now() > until {
            b.fail("a connection sending garbage stayed open");
        }
        peer.wait(Duration::from_millis(5));
    }
    peer.stack().remove(h);
    let l = b.expect_line(
        r"ft: (?:(?:incoming|refusing) .*? from )?10\.0\.0\.9:\d+(?: discarded)?: (.*)",
        secs(60),
    );
    println!("garbage: {}", l.text.trim());
}

fn protect(a: &mut Machine, vm: &str) {
    a.send_line(&format!("ft enable {vm} 10.0.0.2 witness=none"));
    let done = a.expect_line(
        &format!(
            r"(ft: {vm}: protected by 10\.0\.0\.2: lockstep \(initial copy (\d+) ms, pause (\d+) ms\)|error: ft: .*)"
        ),
        secs(600),
    );
    a.check(done.text.contains("protected by"), || done.text.clone());
    println!("{}", done.text.trim());
}

#[test]
fn bochs_ft_lockstep_dirty_ticks_and_fpu() {
    let link = Link::bochs_with_peer();
    let mut a = host(&link, "prim", "10.0.0.1/24");
    let mut b = host(&link, "twin", "10.0.0.2/24");
    b.cmd("ft listen");

    // dirty computes with interrupts on (forced landmarks), ticks sleeps
    // in HLT between interrupts, fpu keeps a pattern in its XMM registers.
    a.cmd("vm create d mem=16 image=dirty arg=200");
    a.cmd("vm create t mem=4 image=ticks arg=1");
    a.cmd("vm create f mem=16 image=fpu arg=1000003");
    for vm in ["d", "t", "f"] {
        a.send_line(&format!("vm start {vm}"));
    }
    a.expect_line(r"\[d\] dirty: count \d+ .*", secs(60));
    a.expect_line(r"\[f\] fpu: alive \d+ .*", secs(60));
    for vm in ["d", "t", "f"] {
        protect(&mut a, vm);
        b.expect_line(
            &format!(r"ft: {vm}: secondary of [\d.:]+: replaying"),
            secs(60),
        );
        b.cmd(&format!("ft watch {vm} on"));
    }

    // Strangers on the twin's FT port while it replays: a handshake with
    // another key, and bytes that are no handshake at all. Each is refused
    // and said; the lockstep does not notice (checked below: every line
    // replayed, no divergence, nothing unprotected).
    strangers(&link, &mut b);

    // At least 60 s of guest time: dirty counts twice a second.
    let first = *counts(&primary_lines(&a, "d")).last().unwrap_or(&0);
    let deadline = Instant::now() + Duration::from_secs(900);
    loop {
        let c = a
            .expect_line(r"\[d\] dirty: count (\d+) .*", secs(120))
            .num(1);
        if c >= first + 120 {
            break;
        }
        if Instant::now() > deadline {
            a.fail("the protected dirty guest did not run 60 s of guest time in 15 minutes");
        }
    }
    // Let the replay catch up with what the primary released.
    b.expect_line(
        &format!(r"ft: replayed \[d\] dirty: count {} .*", first + 120),
        secs(120),
    );
    let (sent, matched) = checks(&mut a, "d");
    a.check(matched >= 5 && matched <= sent, || {
        format!("state checks: {sent} sent, {matched} matched (expected at least 5)")
    });
    same_lines(&a, &b, "d", 100);
    same_lines(&a, &b, "t", 3);
    same_lines(&a, &b, "f", 3);
    for m in [&a, &b] {
        let out = m.output();
        m.check(
            !out.contains("MISMATCH") && !out.contains("diverged") && !out.contains("unprotected"),
            || "a guest saw a register change, or the lockstep broke".to_string(),
        );
    }

    // The output rule: the secondary's emulator stops; the primary
    // releases nothing it printed since.
    let pid = b.instance().pid().expect("the secondary's emulator pid");
    b.check(unsafe_kill(pid, "STOP"), || "SIGSTOP failed".into());
    std::thread::sleep(Duration::from_millis(500));
    let mark = a.output().len();
    let before = counts(&primary_lines(&a, "d"));
    std::thread::sleep(Duration::from_secs(3));
    let during = a.output()[mark..].to_string();
    a.send_line("ft status d");
    let held = a
        .expect_line(r"  output: (\d+) lines held, .*", secs(30))
        .num(1);
    b.check(unsafe_kill(pid, "CONT"), || "SIGCONT failed".into());
    a.check(!during.contains("[d] dirty: count"), || {
        format!("the primary released guest lines while the secondary was stopped:\n{during}")
    });
    a.check(held > 0, || {
        "no line was held while the secondary was stopped".into()
    });
    let last_before = *before.last().unwrap_or(&0);
    a.expect_line(
        &format!(r"\[d\] dirty: count {} .*", last_before + 1),
        secs(120),
    );
    a.expect_line(
        &format!(r"\[d\] dirty: count {} .*", last_before + 4),
        secs(120),
    );
    let all = counts(&primary_lines(&a, "d"));
    let mut seen = BTreeMap::new();
    for w in all.windows(2) {
        a.check(w[1] == w[0] + 1, || {
            format!(
                "dirty counts out of order or repeated: {} then {}",
                w[0], w[1]
            )
        });
    }
    for c in &all {
        *seen.entry(*c).or_insert(0) += 1;
    }
    a.check(seen.values().all(|&n| n == 1), || {
        "a count printed twice".into()
    });
    println!("output rule: {held} lines held while the secondary was stopped, released in order");

    // Protection ends on both sides; the primary runs on.
    a.send_line("ft disable d");
    a.expect_line(
        r"ft: d: protection disabled; d keeps running unprotected",
        secs(60),
    );
    b.expect_line(
        r"ft: d: secondary copy discarded: .*disabled by the operator.*",
        secs(60),
    );
    let c = a
        .expect_line(r"\[d\] dirty: count (\d+) .*", secs(60))
        .num(1);
    a.expect_line(&format!(r"\[d\] dirty: count {} .*", c + 1), secs(60));
}

/// Sends SIGSTOP/SIGCONT with kill(1).
fn unsafe_kill(pid: u32, sig: &str) -> bool {
    std::process::Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .is_ok_and(|s| s.success())
}
