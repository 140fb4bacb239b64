//! Checks shared by the system tests: parsers for the console contract.
#![allow(dead_code)] // Each test binary uses a different subset.

use hv_tests::regex::Regex;
use hv_tests::{Builder, Found, Link, Machine, secs};

/// Every console command, in the order `help` lists them.
pub const COMMANDS: [&str; 14] = [
    "help", "version", "status", "mem", "cpus", "pci", "vmx", "log", "vm", "net", "migrate", "ft",
    "reboot", "crash",
];

/// The `vmx` command's eight lines, in order.
pub const VMX_FEATURES: [&str; 8] = [
    "vmx",
    "ept",
    "unrestricted guest",
    "ept a/d",
    "pml",
    "preemption timer",
    "vpid",
    "mtf",
];

/// A regex for a kernel log line `[    0.123] LEVEL message` (level padded to
/// five characters), `message` being a regex.
pub fn log_line(level: &str, message: &str) -> String {
    format!(r"(?m)^\[ *\d+\.\d{{3}}\] {level:<5} {message}")
}

/// The captures of `pattern` in `text`, or a failure with the console.
pub fn caps(m: &Machine, text: &str, pattern: &str) -> Vec<String> {
    let re = Regex::new(pattern).unwrap_or_else(|e| panic!("bad pattern {pattern}: {e}"));
    match re.captures(text) {
        Some(c) => c
            .iter()
            .map(|g| g.map(|g| g.as_str().to_string()).unwrap_or_default())
            .collect(),
        None => m.fail(&format!("/{pattern}/ not found in:\n{text}")),
    }
}

/// Group `i` of `caps` as a number.
pub fn num(c: &[String], i: usize) -> u64 {
    c[i].parse()
        .unwrap_or_else(|_| panic!("{:?} is not a number", c[i]))
}

/// Runs `cmd` and checks that it prints exactly the one line `expected`.
pub fn expect_single_line(m: &mut Machine, cmd: &str, expected: &str) {
    let out = m.cmd(cmd);
    m.check(out == expected, || {
        format!("`{cmd}` printed {out:?}, expected exactly {expected:?}")
    });
}

/// Runs `vmx` and returns the eight `(feature, yes)` pairs, checking their
/// names, order and format. The eight lines come first; lines after them
/// (extra detail such as the VMCS revision) are allowed.
pub fn vmx_features(m: &mut Machine) -> Vec<(String, bool)> {
    let out = m.cmd("vmx");
    let lines: Vec<&str> = out.lines().collect();
    m.check(lines.len() >= VMX_FEATURES.len(), || {
        format!("`vmx` printed {} lines, expected 8:\n{out}", lines.len())
    });
    VMX_FEATURES
        .iter()
        .zip(&lines)
        .map(|(name, line)| {
            let yes = match line.strip_prefix(&format!("{name}: ")) {
                Some("yes") => true,
                Some("no") => false,
                _ => m.fail(&format!(
                    "expected `{name}: yes|no`, got {line:?} in:\n{out}"
                )),
            };
            (name.to_string(), yes)
        })
        .collect()
}

/// Whether `features` (from [`vmx_features`]) has `name: yes`.
pub fn has(features: &[(String, bool)], name: &str) -> bool {
    features.iter().any(|(n, yes)| n == name && *yes)
}

/// Checks the `pci` output format and returns its lines. A BAR may carry
/// flags after a comma (`,pf` for prefetchable).
pub fn pci_lines(m: &mut Machine) -> Vec<String> {
    let out = m.cmd("pci");
    let line = Regex::new(
        r"(?i)^[0-9a-f]{2}:[0-9a-f]{2}\.[0-7] [0-9a-f]{4}:[0-9a-f]{4} class [0-9a-f]{2}\.[0-9a-f]{2}\.[0-9a-f]{2}( .*)?$",
    )
    .expect("static regex");
    let bar = Regex::new(r"(?i)^bar[0-5]=(mem32|mem64|io):0x[0-9a-f]+/0x[0-9a-f]+(,[a-z0-9]+)*$")
        .expect("static regex");
    let lines: Vec<String> = out.lines().map(str::to_string).collect();
    m.check(!lines.is_empty(), || "`pci` printed nothing".into());
    for l in &lines {
        m.check(line.is_match(l), || {
            format!("bad `pci` line {l:?} in:\n{out}")
        });
        for word in l
            .split_whitespace()
            .filter(|w| w.to_ascii_lowercase().starts_with("bar"))
        {
            m.check(bar.is_match(word), || format!("bad BAR {word:?} in {l:?}"));
        }
    }
    lines
}

/// The `pci` line of vendor:device `id` (lower case), if any.
pub fn pci_find<'a>(lines: &'a [String], id: &str) -> Option<&'a String> {
    lines
        .iter()
        .find(|l| l.to_ascii_lowercase().split_whitespace().nth(1) == Some(id))
}

/// Checks the e1000 line: class 02.00.00, a 128 KiB memory BAR 0 and a
/// 64-byte I/O BAR 1.
pub fn check_e1000(m: &Machine, lines: &[String]) {
    let Some(l) = pci_find(lines, "8086:100e") else {
        m.fail(&format!(
            "no 8086:100e (e1000) in `pci`:\n{}",
            lines.join("\n")
        ))
    };
    let l = l.to_ascii_lowercase();
    m.check(l.contains(" class 02.00.00"), || {
        format!("e1000 class: {l}")
    });
    let bar0 = Regex::new(r" bar0=mem(32|64):0x[0-9a-f]+/0x20000\b").expect("static regex");
    let bar1 = Regex::new(r" bar1=io:0x[0-9a-f]+/0x40\b").expect("static regex");
    m.check(bar0.is_match(&l) && bar1.is_match(&l), || {
        format!("e1000 BARs: expected bar0=mem32:<addr>/0x20000 bar1=io:<port>/0x40 in {l:?}")
    });
}

/// Checks the host bridge line: vendor:device `id` at 00:00.0, class 06.00.00.
pub fn check_host_bridge(m: &Machine, lines: &[String], id: &str) {
    let Some(l) = pci_find(lines, id) else {
        m.fail(&format!(
            "no host bridge {id} in `pci`:\n{}",
            lines.join("\n")
        ))
    };
    let l = l.to_ascii_lowercase();
    m.check(
        l.starts_with("00:00.0 ") && l.contains(" class 06.00.00"),
        || format!("host bridge line: expected 00:00.0 {id} class 06.00.00, got {l:?}"),
    );
}

/// Runs `cpus` and returns `(index, apic id, bsp)` per CPU and the last line.
pub fn cpus(m: &mut Machine) -> (Vec<(u64, u64, bool)>, String) {
    let out = m.cmd("cpus");
    let re = Regex::new(r"^cpu (\d+): apic id (\d+)( \(bsp\))?$").expect("static regex");
    let mut lines: Vec<&str> = out.lines().collect();
    let Some(last) = lines.pop() else {
        m.fail("`cpus` printed nothing")
    };
    let cpus = lines
        .iter()
        .map(|l| match re.captures(l) {
            Some(c) => (
                c[1].parse().unwrap_or(u64::MAX),
                c[2].parse().unwrap_or(u64::MAX),
                c.get(3).is_some(),
            ),
            None => m.fail(&format!("bad `cpus` line {l:?} in:\n{out}")),
        })
        .collect();
    (cpus, last.to_string())
}

/// Runs `mem`, checks the numbers are consistent and returns
/// `(usable, used, free)` frames and `(heap, heap used)` KiB.
pub fn mem(m: &mut Machine) -> ((u64, u64, u64), (u64, u64)) {
    let out = m.cmd("mem");
    let f = caps(
        m,
        &out,
        r"(?m)^frames: usable (\d+) \((\d+) MiB\), used (\d+) \((\d+) MiB\), free (\d+) \((\d+) MiB\)$",
    );
    let h = caps(m, &out, r"(?m)^heap: (\d+) KiB, used (\d+) KiB$");
    let (usable, used, free) = (num(&f, 1), num(&f, 3), num(&f, 5));
    let (heap, heap_used) = (num(&h, 1), num(&h, 2));
    m.check(used > 0, || format!("`mem`: no frame used?\n{out}"));
    m.check(used < usable, || format!("`mem`: used >= usable\n{out}"));
    m.check(used + free == usable, || {
        format!("`mem`: used + free != usable\n{out}")
    });
    // 4 KiB frames: 256 per MiB (rounding either way).
    for (frames, mib) in [(usable, num(&f, 2)), (used, num(&f, 4)), (free, num(&f, 6))] {
        m.check((frames / 256).abs_diff(mib) <= 1, || {
            format!("`mem`: {frames} frames is not {mib} MiB\n{out}")
        });
    }
    m.check(heap > 0 && heap_used <= heap, || {
        format!("`mem`: bad heap numbers\n{out}")
    });
    ((usable, used, free), (heap, heap_used))
}

/// The next counter line of the `dirty` guest `d`:
/// `[d] dirty: count <n> tsc <t> gap <g>`.
pub fn dirty_count(m: &mut Machine) -> Found {
    m.expect_line(r"\[d\] dirty: count (\d+) tsc (\d+) gap (\d+)", secs(60))
}

/// Creates and starts the `dirty` guest `d` (16 MiB, `rate` pages/s) on
/// `m`, waits until it prints twice and returns its second count.
pub fn start_dirty(m: &mut Machine, rate: u64) -> u64 {
    m.cmd(&format!("vm create d mem=16 image=dirty arg={rate}"));
    m.send_line("vm start d");
    dirty_count(m);
    dirty_count(m).num(1)
}

/// The highest count the `dirty` guest `d` printed on `m` so far (at least
/// `at_least`): where its counter stood when it left a source.
pub fn highest_dirty_count(m: &Machine, at_least: u64) -> u64 {
    m.output()
        .lines()
        .filter_map(|line| {
            line.split("[d] dirty: count ")
                .nth(1)
                .and_then(|r| r.split_whitespace().next())
                .and_then(|n| n.parse::<u64>().ok())
        })
        .fold(at_least, u64::max)
}

/// A key the hosts under test do not hold.
pub const OTHER_KEY: &str = "ffeeddccbbaa99887766554433221100";

/// Opens a channel handshake on `s` with [`OTHER_KEY`] and checks the host
/// refuses to prove a key it cannot share: the client sees `WrongKey`.
pub fn handshake_with_the_wrong_key(s: &mut std::net::TcpStream) {
    use std::io::{Read, Write};
    let key = netstack::codec::Key::from_hex(OTHER_KEY).unwrap();
    let mut hs = netstack::codec::Handshake::client(&key, [1; 32], 1 << 20);
    s.write_all(&hs.take_output()).unwrap();
    let mut buf = [0u8; 256];
    let n = s.read(&mut buf).unwrap();
    let err = hs.feed(&buf[..n]).unwrap_err();
    assert_eq!(err, netstack::codec::ChannelError::WrongKey);
}

/// The channel key the linked test hosts share.
pub const KEY: &str = "00112233445566778899aabbccddeeff";

/// A Bochs host named `name` on `link` at `ip`, with the channel key
/// `key` in its configuration (none: the host starts without one), not
/// started yet: starting two builders before booting either boots them
/// side by side.
pub fn bochs_on(link: &Link, name: &str, ip: &str, key: Option<&str>) -> Builder {
    let key = key.map(|k| format!("net.key = {k}\n")).unwrap_or_default();
    Machine::bochs()
        .hostname(name)
        .config(&format!("hostname = {name}\nnet.ip = {ip}\n{key}"))
        .link(link)
}

/// A Bochs host named `name` on `link` at `ip` with [`KEY`], booted to
/// its prompt; `tune` sets the rest (CPU model, memory).
pub fn linked_bochs(
    link: &Link,
    name: &str,
    ip: &str,
    tune: impl FnOnce(Builder) -> Builder,
) -> Machine {
    let mut m = tune(bochs_on(link, name, ip, Some(KEY))).start();
    m.boot_to_prompt();
    m
}

/// Reads from `s` until the host ends the connection (EOF or reset);
/// fails if it is still open after 30 s.
pub fn expect_closed(m: &Machine, what: &str, s: &mut std::net::TcpStream) {
    use std::io::{ErrorKind, Read};
    s.set_read_timeout(Some(secs(30))).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => continue,
            Err(e) if matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::BrokenPipe) => {
                return;
            }
            Err(e) => m.fail(&format!("{what}: the connection was not closed: {e}")),
        }
    }
}
