//! Guest vector registers (x87/SSE/AVX state) belong to their guest, in
//! Bochs (model corei7_skylake_x, which has XSAVE and AVX).
//!
//! The `fpu` guest fills XMM0-15 (or YMM0-15) with a pattern of the seed in
//! its argument and keeps reading it back; it prints
//! `fpu: MISMATCH <reg> lane <k>: expected <hex> got <hex>` and exits with 7
//! when a register changed under it, and `fpu: alive <k> ...` as it goes.
//! Two of them with different seeds on one CPU see each other's values if
//! the hypervisor does not switch the registers between guests; one that
//! is migrated sees zeros or the destination's leftovers if the migration
//! does not carry them. The seeds stand in for the VM names (a guest cannot
//! know its name): VM `a` gets seed 1, `b` seed 2, the migrated `f` seed 3.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use hv_tests::{Link, Machine, line_pattern, secs};

/// `arg` of an `fpu` guest in SSE-only mode: mode 1 × 1000000 + seed.
const SSE_ONLY: u64 = 1_000_000;
/// How long two guests run side by side.
const SIDE_BY_SIDE: Duration = Duration::from_secs(60);
/// How long the migrated guest is watched on the destination.
const AFTER_MIGRATION: Duration = Duration::from_secs(15);
/// How long, at most, one guest may go without an `alive` line before the
/// watch gives up (they come about once a second).
const ALIVE_SLACK: Duration = Duration::from_secs(120);

/// What the watched `fpu` guests of one host have shown so far.
#[derive(Default)]
struct Progress {
    /// VMs whose `vm <name>: created (16 MiB, image fpu)` line came.
    created: Vec<String>,
    /// Per VM: the register kind of its start line (`sse`/`avx`), once seen.
    started: BTreeMap<String, String>,
    /// Per VM: its `alive` counters, with when each line arrived.
    alive: BTreeMap<String, Vec<(Instant, u64)>>,
}

impl Progress {
    /// The number of `alive` lines of `vm` that arrived at or after `t`.
    fn alive_since(&self, vm: &str, t: Instant) -> usize {
        self.alive
            .get(vm)
            .map_or(0, |a| a.iter().filter(|(at, _)| *at >= t).count())
    }

    /// The last `alive` counter of `vm`.
    fn last_alive(&self, vm: &str) -> Option<u64> {
        self.alive.get(vm).and_then(|a| a.last()).map(|&(_, k)| k)
    }

    fn summary(&self) -> String {
        let mut s = String::new();
        for (vm, kind) in &self.started {
            let a = self.alive.get(vm).map_or(&[][..], Vec::as_slice);
            s += &format!(
                "{vm}: started ({kind}), {} alive lines, last {:?}\n",
                a.len(),
                a.last().map(|&(_, k)| k)
            );
        }
        s
    }
}

/// Any line of an `fpu` guest, and the hypervisor's verdict on a VM that
/// ended (a guest that exits or is stopped failed: these run forever), and
/// the `vm create` verdict of an `fpu` VM.
const EVENT: &str = r"\[(\w+)\] fpu: (.*?)\r?|vm (\w+): ((?:stopped|exited|crashed|faulted)\b.*?)\r?|vm (\w+): created \(16 MiB, image fpu\)\r?";

/// Follows the `fpu` guests' lines on `m` until `done(progress)` holds,
/// checking them as they come: fails at once on a MISMATCH, on a guest
/// that ends, or on an `alive` counter that does not go up by one; fails
/// after `timeout` with the progress so far.
fn watch(m: &mut Machine, p: &mut Progress, timeout: Duration, done: impl Fn(&Progress) -> bool) {
    let deadline = Instant::now() + timeout;
    let start = regex(r"^seed \d+, pattern in (xmm|ymm)0-15 \((sse|avx)\)$");
    let alive = regex(r"^alive (\d+) checks \d+ \((sse|avx)\)$");
    while !done(p) {
        let left = deadline.saturating_duration_since(Instant::now());
        let f = match m.try_expect(&line_pattern(EVENT), left) {
            Ok(f) => f,
            Err(e) => panic!("{}\nfpu guests so far:\n{}", e.0, p.summary()),
        };
        let now = Instant::now();
        if let Some(vm) = f.get(5) {
            p.created.push(vm.to_string());
            continue;
        }
        if let Some(vm) = f.get(3) {
            m.fail(&format!(
                "vm {vm} ended: {}\nfpu guests so far:\n{}",
                f.get(4).unwrap_or_default(),
                p.summary()
            ));
        }
        let vm = f.get(1).unwrap_or_default().to_string();
        let text = f.get(2).unwrap_or_default();
        if text.starts_with("MISMATCH") || text.starts_with("xcr0 is") {
            m.fail(&format!(
                "[{vm}] fpu: {text}\nfpu guests so far:\n{}",
                p.summary()
            ));
        } else if let Some(c) = start.captures(text) {
            println!("[{vm}] fpu: {text}");
            p.started.insert(vm, c[2].to_string());
        } else if let Some(c) = alive.captures(text) {
            let k: u64 = c[1].parse().expect("digits");
            let a = p.alive.entry(vm.clone()).or_default();
            if let Some(&(_, last)) = a.last() {
                m.check(k == last + 1, || {
                    format!("[{vm}] fpu: alive {k} after alive {last}")
                });
            }
            a.push((now, k));
        } else {
            println!("[{vm}] fpu: {text}");
        }
    }
}

fn regex(pattern: &str) -> hv_tests::regex::Regex {
    hv_tests::regex::Regex::new(pattern).expect("static regex")
}

/// Creates `vm` running `fpu` with `arg` and starts it, then follows the
/// console until its start line has come. (Other guests may be printing
/// meanwhile: every line goes through `watch`, none is skipped.)
fn start_fpu(m: &mut Machine, p: &mut Progress, vm: &str, arg: u64) {
    start_fpu_with(m, p, vm, arg, "");
}

/// As [`start_fpu`], with more `vm create` options.
fn start_fpu_with(m: &mut Machine, p: &mut Progress, vm: &str, arg: u64, options: &str) {
    m.send_line(&format!(
        "vm create {vm} mem=16 image=fpu arg={arg}{options}"
    ));
    watch(m, p, m.command_timeout(), |p| {
        p.created.iter().any(|c| c == vm)
    });
    m.send_line(&format!("vm start {vm}"));
    watch(m, p, secs(120), |p| p.started.contains_key(vm));
}

/// Runs `guests` (VM name, argument) side by side on one host for a
/// minute; each must print `alive` lines all along and never a MISMATCH.
/// Returns the host and the register kind each used.
fn side_by_side(guests: &[(&str, u64)]) -> (Machine, BTreeMap<String, String>) {
    let mut m = Machine::bochs().start();
    m.boot_to_prompt();
    let mut p = Progress::default();
    for &(vm, arg) in guests {
        start_fpu(&mut m, &mut p, vm, arg);
    }
    let t0 = Instant::now();
    let end = t0 + SIDE_BY_SIDE;
    // Until the minute is over and each has printed a line since (the
    // sentinel that they are still going after it).
    watch(&mut m, &mut p, SIDE_BY_SIDE + ALIVE_SLACK, |p| {
        Instant::now() >= end && guests.iter().all(|&(vm, _)| p.alive_since(vm, end) > 0)
    });
    for &(vm, _) in guests {
        let n = p.alive_since(vm, t0) - p.alive_since(vm, end);
        // Progress all along: about one line a second each when they share
        // the CPU; a quarter of that is plenty to tell "runs" from "stalls".
        m.check(n >= 10, || {
            format!(
                "{vm} printed {n} alive lines in {} s\n{}",
                SIDE_BY_SIDE.as_secs(),
                p.summary()
            )
        });
    }
    println!("{}", p.summary());
    // The CPU really went from one guest's registers to another's.
    m.send_line("vm stats a");
    let s = m.expect_line(
        r"  guest context switches \(all VMs\): (\d+), (\d+) TSC cycles each",
        secs(60),
    );
    m.check(s.num(1) >= 100, || s.text.clone());
    (m, p.started)
}

#[test]
fn two_fpu_guests_do_not_see_each_other() {
    // Mode 0: AVX (XSETBV, then all of YMM0-15) on this CPU model; beside
    // them a third that stays with SSE (its XCR0 stays 1), so turns also
    // go between guests whose XCR0 differ.
    let (mut m, kinds) = side_by_side(&[("a", 1), ("b", 2), ("c", SSE_ONLY + 4)]);
    let kind = |vm: &str| kinds.get(vm).cloned().unwrap_or_default();
    m.check(kind("a") == "avx" && kind("b") == "avx", || {
        format!("corei7_skylake_x has AVX: a and b should use it ({kinds:?})")
    });
    m.check(kind("c") == "sse", || format!("{kinds:?}"));
    m.send_line("vm show a");
    m.expect_line(
        r"  xcr0 up to 0x[0-9a-f]+ \(now 0x7\), rdtsc native",
        secs(60),
    );
    m.send_line("vm show c");
    m.expect_line(
        r"  xcr0 up to 0x[0-9a-f]+ \(now 0x1\), rdtsc native",
        secs(60),
    );
}

#[test]
fn two_sse_only_fpu_guests_do_not_see_each_other() {
    // Mode 1: XMM0-15 only, no XSETBV: the register switch alone.
    let (m, kinds) = side_by_side(&[("a", SSE_ONLY + 1), ("b", SSE_ONLY + 2)]);
    m.check(kinds.values().all(|k| k == "sse"), || format!("{kinds:?}"));
}

fn host(link: &Link, name: &str, ip: &str) -> Machine {
    common::linked_bochs(link, name, ip, |b| {
        b.bochs_model("corei7_skylake_x").memory_mib(256)
    })
}

#[test]
fn fpu_guest_migrated_keeps_its_registers() {
    // Mode 0: AVX if the CPU has it (this model does).
    migrate_fpu(3, "", "0x7", "native");
}

#[test]
fn sse_only_fpu_guest_migrated_keeps_its_registers() {
    // Mode 1: the XMM registers alone, no XSETBV.
    // With RDTSC exiting on (its alive lines are timed by RDTSC): the
    // option moves with the guest.
    migrate_fpu(SSE_ONLY + 3, " rdtsc=exit", "0x1", "exits");
}

/// Runs `fpu` with `arg` as VM `f` on a source host, migrates it and
/// watches it on the destination: no MISMATCH, and its alive counter goes
/// on from where it was on the source.
fn migrate_fpu(arg: u64, options: &str, xcr0: &str, rdtsc: &str) {
    let link = Link::bochs();
    let mut a = host(&link, "srca", "10.0.0.1/24");
    let mut b = host(&link, "dstb", "10.0.0.2/24");
    b.cmd("migrate listen");
    // The destination's CPU already holds another guest's registers.
    let mut other = Progress::default();
    start_fpu(&mut b, &mut other, "other", 9);

    let mut src = Progress::default();
    start_fpu_with(&mut a, &mut src, "f", arg, options);
    watch(&mut a, &mut src, ALIVE_SLACK, |p| {
        p.last_alive("f") >= Some(2)
    });
    let kind = src.started["f"].clone();

    a.send_line("migrate f 10.0.0.2");
    let done = a.expect_line(
        r"(migrate: f now runs on 10\.0\.0\.2: .*|error: migrate: .*)",
        secs(600),
    );
    // What the guest printed on the source while it moved.
    let verdict =
        regex(r"(?m)^(\[f\] fpu: (MISMATCH|xcr0 is).*|vm f: (stopped|exited|crashed|faulted).*)$");
    if let Some(bad) = verdict.find(&done.before) {
        a.fail(&format!(
            "on the source during the migration: {}",
            bad.as_str()
        ));
    }
    a.check(done.text.starts_with("migrate: f now runs"), || {
        done.text.clone()
    });
    println!("{}", done.text.trim());
    // The last alive line the source saw.
    let last_src = done
        .before
        .lines()
        .filter_map(|l| l.split("[f] fpu: alive ").nth(1))
        .filter_map(|r| r.split_whitespace().next()?.parse::<u64>().ok())
        .fold(src.last_alive("f").unwrap_or(0), u64::max);
    b.expect_line(r"migrate: f from [\d.:]+ now runs here.*", secs(60));

    // On the destination: the same registers, and progress, for a while.
    let mut dst = Progress::default();
    dst.started.insert("f".into(), kind.clone());
    let t1 = Instant::now();
    let end = t1 + AFTER_MIGRATION;
    watch(&mut b, &mut dst, AFTER_MIGRATION + ALIVE_SLACK, |p| {
        Instant::now() >= end && p.alive_since("f", end) > 0 && p.alive_since("other", end) > 0
    });
    let first = dst.alive["f"][0].1;
    let last = dst.last_alive("f").unwrap_or(0);
    println!("f ({kind}): alive {last_src} on the source, {first} to {last} on the destination");
    b.check(first > last_src && last > first, || {
        format!(
            "alive {last_src} last on the source, then {first} to {last} on the destination\n{}",
            dst.summary()
        )
    });
    // Its XCR0 and clock option came along (what `vm show` says there).
    b.send_line("vm show f");
    b.expect_line(
        &format!(r"  xcr0 up to 0x[0-9a-f]+ \(now {xcr0}\), rdtsc {rdtsc}"),
        secs(60),
    );
}
