//! `cargo xtask bench ft [--quick]`: fault tolerance between two Bochs
//! hosts joined by bxhub. Per guest (`dirty` at two rates, `exitbench`,
//! `ticks`): its progress unprotected and then protected over the same
//! wall time (the throughput ratio), the initial copy and its pause, the
//! log's records and bandwidth, the lag (a record's creation to its replay
//! on the secondary) p50/p99/max, the latency the output rule adds, and
//! the secondary's breakpoint hits (forced landmarks it had to find).
//!
//! Progress is counted from the guests' own counters (dirty: `count`
//! lines; ticks: `alive` lines; exitbench: the exits/s it measures with
//! its TSC, which under FT is the primary's, logged) per wall second:
//! protection costs wall time, not guest time. Times in `ft status` are
//! the hosts' emulated time (the TSC under `clock: sync=none`).
//!
//! A benchmark, not a test: it prints figures and fails only when a host
//! does not boot or protection cannot start.

use std::time::Duration;

use hv_tests::regex::Regex;
use hv_tests::{Link, Machine};

use crate::bench_migrate::linked_host;
use crate::{Result, make_image, setup};

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// One guest to measure.
struct Guest {
    label: &'static str,
    vm: &'static str,
    create: &'static str,
    /// A line of progress, group 1 its counter (or rate, for exitbench).
    progress: &'static str,
    /// The counter is a rate the guest measured itself (exits/s).
    is_rate: bool,
}

const GUESTS: &[Guest] = &[
    Guest {
        label: "dirty 100 pages/s",
        vm: "d1",
        create: "vm create d1 mem=16 image=dirty arg=100",
        progress: r"\[d1\] dirty: count (\d+) .*",
        is_rate: false,
    },
    Guest {
        label: "dirty 1000 pages/s",
        vm: "d2",
        create: "vm create d2 mem=16 image=dirty arg=1000",
        progress: r"\[d2\] dirty: count (\d+) .*",
        is_rate: false,
    },
    Guest {
        label: "exitbench (port I/O)",
        vm: "x",
        create: "vm create x mem=4 image=exitbench arg=1000000",
        // Its second loop: the first runs while protection starts.
        progress: r"\[x\] exitbench: io \d+ exits, \d+ cycles/exit, (\d+) exits/s",
        is_rate: true,
    },
    Guest {
        label: "ticks (100 Hz, HLT)",
        vm: "t",
        create: "vm create t mem=4 image=ticks arg=1",
        progress: r"\[t\] ticks: alive (\d+)",
        is_rate: false,
    },
];

#[derive(Debug, Default, Clone)]
struct Figures {
    off: Option<f64>,
    on: Option<f64>,
    copy_ms: u64,
    pause_ms: u64,
    records: u64,
    kib: u64,
    kib_s: u64,
    lag: (u64, u64, u64),
    out_lat: (u64, u64),
    throttled: u64,
    checks: (u64, u64),
    breakpoints: u64,
    exits: u64,
    failed: Option<String>,
}

fn caps(re: &str, text: &str) -> Vec<u64> {
    Regex::new(re)
        .ok()
        .and_then(|r| r.captures(text))
        .map(|c| {
            (1..c.len())
                .filter_map(|i| c.get(i)?.as_str().parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The host's uptime (emulated seconds).
fn uptime(a: &mut Machine) -> Result<f64> {
    a.send_line("status");
    let f = a
        .try_expect(r"(?m)^uptime: ([\d.]+) s\r?\n", Duration::from_secs(60))
        .map_err(err)?;
    f.get(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad uptime line {}", f.text))
}

/// The last counter value of `g` printed so far.
fn last_counter(a: &Machine, g: &Guest) -> Option<u64> {
    let re = Regex::new(&format!(r"(?m)^{}\r?$", g.progress)).ok()?;
    re.captures_iter(&a.output())
        .filter_map(|c| c.get(1)?.as_str().parse().ok())
        .last()
}

/// Progress of `g` per emulated second of its host over `window` (wall):
/// emulated time is what the guest lives in (Bochs skips idle time, so
/// wall-clock rates of guests that sleep mean nothing). exitbench reports
/// its own rate, measured with its TSC.
fn progress(a: &mut Machine, g: &Guest, window: Duration) -> Result<Option<f64>> {
    if g.is_rate {
        let f = a
            .try_expect(&format!(r"(?m)^{}\r?\n", g.progress), window)
            .map_err(err)?;
        return Ok(f.get(1).and_then(|s| s.parse().ok()));
    }
    let (u0, c0) = (uptime(a)?, last_counter(a, g));
    std::thread::sleep(window);
    let (u1, c1) = (uptime(a)?, last_counter(a, g));
    Ok(match (c0, c1) {
        (Some(c0), Some(c1)) if u1 > u0 => Some((c1 - c0) as f64 / (u1 - u0)),
        _ => None,
    })
}

/// The capture groups of `re` in the next line of `a` matching it.
fn line(a: &mut Machine, re: &str) -> Result<Vec<u64>> {
    let f = a
        .try_expect(&format!(r"(?m)^{re}\r?\n"), Duration::from_secs(60))
        .map_err(err)?;
    Ok(caps(re, &f.text))
}

fn one(a: &mut Machine, b: &mut Machine, g: &Guest, window: Duration) -> Result<Figures> {
    let mut f = Figures::default();
    a.command(g.create, Duration::from_secs(60));
    a.send_line(&format!("vm start {}", g.vm));
    if !g.is_rate {
        a.try_expect(
            &format!(r"(?m)^{}\r?\n", g.progress),
            Duration::from_secs(120),
        )
        .map_err(err)?;
        f.off = progress(a, g, window)?;
    } else {
        // exitbench reports once per run: one unprotected run, then the
        // protected one in a second VM of the same arguments.
        f.off = progress(a, g, Duration::from_secs(600))?;
        a.try_expect(
            &format!(r"(?m)^vm {}: exited with code 0\r?\n", g.vm),
            Duration::from_secs(600),
        )
        .map_err(err)?;
        a.command(&format!("vm start {}", g.vm), Duration::from_secs(60));
    }
    a.send_line(&format!("ft enable {} 10.0.0.2 witness=none", g.vm));
    let done = a
        .try_expect(
            &format!(
                r"(?m)^(ft: {}: protected by 10\.0\.0\.2: lockstep \(initial copy (\d+) ms, pause (\d+) ms\)|error: ft: .*)\r?\n",
                g.vm
            ),
            Duration::from_secs(600),
        )
        .map_err(err)?;
    if done.text.contains("error") {
        return Err(done.text.trim().to_string());
    }
    let c = caps(r"initial copy (\d+) ms, pause (\d+) ms", &done.text);
    (f.copy_ms, f.pause_ms) = (
        c.first().copied().unwrap_or(0),
        c.get(1).copied().unwrap_or(0),
    );
    f.on = progress(
        a,
        g,
        if g.is_rate {
            Duration::from_secs(600)
        } else {
            window
        },
    )?;
    a.send_line(&format!("ft status {}", g.vm));
    if let [exits, records, kib, kib_s, ..] = line(
        a,
        r"  log: (\d+) exits, (\d+) records, (\d+) KiB \((\d+) KiB/s\).*",
    )?[..]
    {
        (f.exits, f.records, f.kib, f.kib_s) = (exits, records, kib, kib_s);
    }
    if let [_, p50, p99, max, thr, ..] = line(
        a,
        r"  lag (\d+) ms \(p50 (\d+) ms, p99 (\d+) ms, max (\d+) ms\); throttled slices (\d+)",
    )?[..]
    {
        f.lag = (p50, p99, max);
        f.throttled = thr;
    }
    if let [_, _, p50, max, ..] = line(
        a,
        r"  output: (\d+) lines held, (\d+) released, added latency p50 (\d+) ms, max (\d+) ms",
    )?[..]
    {
        f.out_lat = (p50, max);
    }
    if let [.., sent, ok] = line(
        a,
        r"  secondary acknowledged .*; checks (\d+) sent, (\d+) matched",
    )?[..]
    {
        f.checks = (sent, ok);
    }
    b.send_line(&format!("ft status {}", g.vm));
    if let [_, hits, ..] = line(
        b,
        r"  events (\d+), breakpoint hits (\d+), checks matched \d+, guest lines \d+ \(not printed\)",
    )?[..]
    {
        f.breakpoints = hits;
    }
    a.send_line(&format!("ft disable {}", g.vm));
    a.try_expect(
        &format!(
            r"(?m)^(ft: {0}: protection disabled.*|error: ft: {0} is not protected.*)\r?\n",
            g.vm
        ),
        Duration::from_secs(60),
    )
    .map_err(err)?;
    a.send_line(&format!("vm stop {}", g.vm));
    a.send_line(&format!("vm delete {}", g.vm));
    a.try_expect(
        &format!(r"(?m)^vm {}: deleted\r?\n", g.vm),
        Duration::from_secs(60),
    )
    .map_err(err)?;
    Ok(f)
}

pub fn main(args: &[String]) -> Result {
    let mut quick = false;
    let mut kills = 5usize;
    let mut only: Option<Vec<String>> = None;
    let mut rest = args.iter();
    while let Some(a) = rest.next() {
        match a.as_str() {
            "--quick" => quick = true,
            "--only" => {
                let list = rest
                    .next()
                    .ok_or("bench ft: --only takes a list of parts (d1,d2,x,t,fo)")?;
                only = Some(list.split(',').map(String::from).collect());
            }
            "--kills" => {
                kills = rest
                    .next()
                    .and_then(|n| n.parse().ok())
                    .filter(|&n| n >= 1)
                    .ok_or("bench ft: --kills takes a whole number of at least 1")?;
            }
            other => {
                return Err(format!(
                    "bench ft: unexpected argument '{other}' (expected --quick, --only d1,d2,x,t,fo, --kills N)"
                ));
            }
        }
    }
    setup::setup()?;
    make_image()?;
    let failover = only.as_ref().is_none_or(|l| l.iter().any(|v| v == "fo"));
    let lockstep = only.as_ref().is_none_or(|l| l.iter().any(|v| v != "fo"));
    if lockstep {
        lockstep_figures(quick, only.as_deref())?;
    }
    if failover {
        crate::bench_ft_failover::main(if quick { 2 } else { kills })?;
    }
    Ok(())
}

/// The lockstep part: throughput, log, lag and output latency per guest.
fn lockstep_figures(quick: bool, only: Option<&[String]>) -> Result {
    let window = Duration::from_secs(if quick { 15 } else { 30 });
    let link = Link::bochs();
    let mut a = linked_host("ft", &link, "prim", "10.0.0.1/24", 256)?;
    let mut b = linked_host("ft", &link, "twin", "10.0.0.2/24", 256)?;
    b.command("ft listen", Duration::from_secs(60));
    let mut rows = Vec::new();
    let chosen = |g: &&Guest| match only {
        Some(list) => list.iter().any(|v| v == g.vm),
        None => !quick || g.vm != "d2",
    };
    for g in GUESTS.iter().filter(chosen) {
        eprintln!("xtask: bench ft: {}", g.label);
        let f = one(&mut a, &mut b, g, window).unwrap_or_else(|e| {
            eprintln!("xtask: bench ft: {}: {e}", g.label);
            Figures {
                failed: Some(e),
                ..Default::default()
            }
        });
        eprintln!("xtask: bench ft: {}: {f:?}", g.label);
        rows.push((g, f));
    }
    print_table(&rows);
    Ok(())
}

fn print_table(rows: &[(&Guest, Figures)]) {
    println!();
    println!("fault tolerance, two Bochs hosts (corei7_skylake_x) through bxhub");
    println!(
        "{:<20} {:>9} {:>9} {:>6} {:>8} {:>6} {:>8} {:>8} {:>8} {:>14} {:>10} {:>7} {:>7}",
        "guest",
        "off",
        "on",
        "ratio",
        "copy ms",
        "pause",
        "rec/s",
        "KiB/s",
        "Mbit/s",
        "lag p50/99/max",
        "out p50/max",
        "checks",
        "bp hits"
    );
    for (g, f) in rows {
        if let Some(e) = &f.failed {
            println!("{:<20} failed: {e}", g.label);
            continue;
        }
        let fmt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1}"));
        let ratio = match (f.off, f.on) {
            (Some(off), Some(on)) if off > 0.0 => format!("{:.2}", on / off),
            _ => "-".into(),
        };
        let secs = if f.kib_s > 0 {
            (f.kib as f64 / f.kib_s as f64).max(1.0)
        } else {
            1.0
        };
        println!(
            "{:<20} {:>9} {:>9} {:>6} {:>8} {:>6} {:>8.0} {:>8} {:>8.3} {:>14} {:>10} {:>7} {:>7}",
            g.label,
            fmt(f.off),
            fmt(f.on),
            ratio,
            f.copy_ms,
            f.pause_ms,
            f.records as f64 / secs,
            f.kib_s,
            f.kib_s as f64 * 8.0 * 1024.0 / 1e6,
            format!("{}/{}/{}", f.lag.0, f.lag.1, f.lag.2),
            format!("{}/{}", f.out_lat.0, f.out_lat.1),
            format!("{}/{}", f.checks.1, f.checks.0),
            f.breakpoints
        );
    }
    println!(
        "units: dirty counts and ticks alive lines per emulated second of the primary, exitbench port-I/O exits/s (its TSC); lag and output latency in ms (emulated)"
    );
    println!(
        "VMware FT (published): throughput 0.94-0.99 of non-FT, logging 1.5-18 Mbit/s, lag well under 1 s"
    );
}
