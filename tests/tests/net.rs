//! The host network: two hypervisor hosts on one Ethernet link (QEMU
//! `-netdev stream`, Bochs through `bxhub`), and a host-side program talking
//! to a hypervisor through a QEMU user-net port forward.
//!
//! Each host's address and key come from its hv.cfg; everything else is
//! typed on the consoles.

mod common;

use common::OTHER_KEY;

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use hv_tests::peer::HostPeer;
use hv_tests::{Link, Machine, secs};
use netstack::codec::Key;

const KEY: &str = "00112233445566778899aabbccddeeff";

fn config(host: &str, ip: &str, key: &str) -> String {
    format!("hostname = {host}\nnet.ip = {ip}\nnet.key = {key}\n")
}

fn host(builder: hv_tests::Builder, name: &str, ip: &str) -> Machine {
    let mut m = builder
        .hostname(name)
        .config(&config(name, ip, KEY))
        .start();
    m.boot_to_prompt();
    m
}

/// Runs `cmd` and waits for the line matching `pattern` before its prompt.
fn run(m: &mut Machine, cmd: &str, pattern: &str, timeout: Duration) -> hv_tests::Found {
    m.send_line(cmd);
    let f = m.expect_line(pattern, timeout);
    m.expect_prompt(m.command_timeout());
    f
}

/// `net bench` from `a` to the sink on `b`: both sides must agree on the
/// bytes and the checksum. Returns the sender's summary line.
fn bench(a: &mut Machine, b: &mut Machine, peer: &str, mib: u64, timeout: Duration) -> String {
    let f = run(
        a,
        &format!("net bench {peer} {mib}"),
        &format!(
            r"net bench: {mib} MiB in \d+\.\d+ s = ([\d.]+) MiB/s, checksum (\w+) \(([0-9a-f]+)\)"
        ),
        timeout,
    );
    a.check(f.get(2) == Some("ok"), || format!("sender: {}", f.text));
    let got = b.expect_line(
        &format!(
            r"net sink: [\d.:]+ sent {} bytes in \d+ ms, checksum (\w+)",
            mib << 20
        ),
        secs(10),
    );
    b.check(got.get(1) == Some("ok"), || format!("sink: {}", got.text));
    b.expect_prompt(b.command_timeout());
    println!("{}: {}", a.emulator(), f.text.trim());
    f.text.trim().to_string()
}

fn ping(m: &mut Machine, peer: &str, count: u32) {
    let f = run(
        m,
        &format!("net ping {peer} {count}"),
        r"net ping: (\d+) sent, (\d+) received.*",
        secs(60),
    );
    m.check(f.num(2) == u64::from(count), || format!("ping: {}", f.text));
}

/// Everything shared by the QEMU and Bochs two-host tests.
fn two_hosts(link: &Link, builder: fn() -> hv_tests::Builder, mib: u64) {
    let mut a = host(builder().link(link), "hosta", "10.0.0.1/24");
    let mut b = host(builder().link(link), "hostb", "10.0.0.2/24");

    // Addresses, link and key as configured; the key itself is never shown.
    for m in [&mut a, &mut b] {
        let show = m.cmd("net show");
        m.check(show.contains("link: up"), || format!("net show:\n{show}"));
        m.check(show.contains("key: set (16 bytes, fingerprint "), || {
            format!("net show:\n{show}")
        });
    }
    ping(&mut a, "10.0.0.2", 3);
    ping(&mut b, "10.0.0.1", 2);

    // The host firewall: frames to and from the peer are dropped, both
    // ways, until cleared; typos are refused.
    let out = a.cmd("net filter drop 10.0.0.2");
    a.check(
        out == "net: filter: dropping frames to and from 10.0.0.2",
        || out.clone(),
    );
    for (m, peer) in [(&mut a, "10.0.0.2"), (&mut b, "10.0.0.1")] {
        let f = run(
            m,
            &format!("net ping {peer} 2"),
            r"net ping: (\d+) sent, (\d+) received.*",
            secs(60),
        );
        m.check(f.num(2) == 0, || {
            format!("ping through the filter: {}", f.text)
        });
    }
    let out = a.cmd("net filter");
    let n = common::caps(
        &a,
        &out,
        r"net: filter: drop 10\.0\.0\.2 \((\d+) frames in, (\d+) out dropped\)",
    );
    a.check(n[1] != "0" && n[2] != "0", || format!("net filter: {out}"));
    for bad in ["net filter drop 999.1.1.1", "net filter bogus"] {
        let out = a.cmd(bad);
        a.check(out.starts_with("error: "), || format!("{bad}: {out}"));
    }
    let out = a.cmd("net filter clear");
    a.check(out == "net: filter: cleared (1 addresses)", || out.clone());
    let out = a.cmd("net filter");
    a.check(out == "net: filter: none", || out.clone());
    ping(&mut a, "10.0.0.2", 1);

    run(
        &mut b,
        "net sink",
        r"net sink: listening on port 7001",
        secs(10),
    );
    bench(&mut a, &mut b, "10.0.0.2", mib, secs(600));

    // A peer with another key is refused; the sink says so at once.
    b.cmd(&format!("net key {OTHER_KEY}"));
    run(
        &mut a,
        "net bench 10.0.0.2 1",
        r"error: net bench: authentication failed: the peer does not hold our key.*",
        secs(60),
    );
    b.expect_line(
        r"net sink: [\d.:]+: connection dropped: the peer left during the handshake.*",
        secs(20),
    );
    b.expect_prompt(b.command_timeout());

    // Both hosts keep working.
    ping(&mut a, "10.0.0.2", 1);
    b.cmd(&format!("net key {KEY}"));
    bench(&mut a, &mut b, "10.0.0.2", 1, secs(120));

    let show = a.cmd("net show");
    let tx = common::caps(&a, &show, r"tx: (\d+) frames, (\d+) bytes, (\d+) errors");
    a.check(tx[2].parse::<u64>().unwrap() > mib << 20, || {
        format!("counters:\n{show}")
    });
    for m in [&a, &b] {
        m.check(
            !m.output().contains(KEY) && !m.output().contains(OTHER_KEY),
            || "a key appeared on the console".into(),
        );
    }
}

#[test]
fn qemu_two_hosts_ping_bench_and_refuse_a_wrong_key() {
    let link = Link::qemu();
    two_hosts(&link, Machine::qemu, 64);
}

#[test]
fn bochs_two_hosts_ping_and_bench() {
    let link = Link::bochs();
    two_hosts(&link, Machine::bochs, 4);
}

#[test]
fn qemu_bad_input_from_the_network_closes_only_that_connection() {
    const SINK: u16 = 7001;
    let mut m = Machine::qemu()
        .hostname("hv")
        .config("net.ip = 10.0.2.15/24\nnet.gw = 10.0.2.2\n")
        .user_net_forward(SINK)
        .start();
    m.boot_to_prompt();
    m.cmd(&format!("net key {KEY}"));
    run(
        &mut m,
        "net sink",
        r"net sink: listening on port 7001",
        secs(10),
    );
    let port = m.forwarded_port(SINK);
    let connect = || {
        let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(secs(30))).unwrap();
        s
    };

    // Garbage instead of a handshake.
    let mut s = connect();
    s.write_all(b"GET / HTTP/1.1\r\nHost: hv\r\n\r\n").unwrap();
    m.expect_line(
        r"net sink: [\d.:]+: connection dropped: not a channel peer.*",
        secs(30),
    );
    m.expect_prompt(m.command_timeout());
    drop(s);

    // A peer with the key that announces a frame over the limit.
    let mut s = connect();
    let _session = hv_tests::peer::handshake(&mut s, &Key::from_hex(KEY).unwrap()).unwrap();
    let mut header = Vec::new();
    header.extend_from_slice(&(100u32 << 20).to_le_bytes());
    header.push(17);
    header.extend_from_slice(&0u64.to_le_bytes());
    s.write_all(&header).unwrap();
    m.expect_line(
        r"net sink: [\d.:]+: connection dropped: frame of 104857600 bytes exceeds the \d+-byte limit",
        secs(30),
    );
    m.expect_prompt(m.command_timeout());
    drop(s);

    // A peer without the key cannot even finish the handshake.
    let mut s = connect();
    common::handshake_with_the_wrong_key(&mut s);
    drop(s);
    m.expect_line(r"net sink: [\d.:]+: connection dropped.*", secs(30));
    m.expect_prompt(m.command_timeout());

    // Nothing else changed: the console answers, the sink still listens
    // and an honest peer is served.
    let show = m.cmd("net show");
    m.check(show.contains("sink: listening on port 7001"), || {
        show.clone()
    });
    let mut peer = HostPeer::connect(port, &Key::from_hex(KEY).unwrap()).unwrap();
    let r = peer.bench(100_000).unwrap();
    assert!(r.ok, "the sink rejected an honest transfer: {r:?}");
    m.expect_line(
        r"net sink: [\d.:]+ sent 100000 bytes in \d+ ms, checksum ok",
        secs(30),
    );
}

#[test]
fn qemu_net_commands_explain_what_is_missing() {
    let mut m = Machine::qemu().start();
    m.boot_to_prompt();
    let show = m.cmd("net show");
    for want in [
        "link: up",
        "ip: none (net set ip=<a.b.c.d/len>)",
        "key: none (net key <hex>)",
        "sink: off",
    ] {
        m.check(show.contains(want), || format!("no '{want}' in:\n{show}"));
    }
    for (cmd, answer) in [
        (
            "net ping 10.0.0.2",
            "error: net ping: no IP address set (net set ip=<a.b.c.d/len>)",
        ),
        (
            "net bench 10.0.0.2",
            "error: no channel key: set one with net key <hex> first",
        ),
        (
            "net sink",
            "error: no channel key: set one with net key <hex> first",
        ),
        ("net sink stop", "error: net sink is not running"),
        (
            "net set ip=10.0.0.300/24",
            "error: ip=10.0.0.300/24: not an IPv4 address (expected a.b.c.d)",
        ),
        (
            "net key 0123",
            "error: bad key: the pre-shared key is 2 bytes; it must be at least 16 bytes (32 hex digits)",
        ),
        (
            "net frob",
            "error: unknown net command 'frob' (try net help)",
        ),
    ] {
        // (The echo of `net key` is masked, so it stays in the output.)
        let out = m.cmd(cmd);
        m.check(
            out == answer || out == format!("net key ****\n{answer}"),
            || format!("`{cmd}` answered:\n{out}\nexpected:\n{answer}"),
        );
    }
    m.cmd(&format!("net key {KEY}"));
    m.cmd("net set ip=10.0.0.1/24");
    // Nobody at that address: the connection attempt times out with a clear error.
    let out = m.command("net bench 10.0.0.2 1", secs(60));
    m.check(
        out.ends_with("error: net bench: connection refused or timed out"),
        || format!("net bench to nobody:\n{out}"),
    );
    let help = m.cmd("net help");
    m.check(help.lines().count() == 7, || help.clone());
}

#[test]
fn qemu_without_a_nic_says_so() {
    let mut m = Machine::qemu().nic(false).start();
    m.boot_to_prompt();
    let out = m.cmd("net show");
    m.check(
        out == "error: no e1000 (8086:100e) on PCI: networking is off",
        || format!("net show without a NIC:\n{out}"),
    );
    // The rest of the console is unaffected.
    m.cmd("status");
}
