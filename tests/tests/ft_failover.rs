//! Fault tolerance, part 2: the primary's host dies (its emulator is
//! killed at a random point of a protected `dirty` guest's run) and the
//! guest carries on on the secondary, decided by a witness on a third host
//! (QEMU on the Bochs hub: it needs no VMX).
//!
//! What would be false if failover were broken:
//! - the secondary prints `ft: d: live here (primary 10.0.0.1 lost, ...)`
//!   within seconds of the kill, and the witness says it won;
//! - the guest's counter goes on from where the primary's output stopped:
//!   no value missing (the first live count is at most one more than the
//!   primary's last), repeated only as far as the README allows (lines whose release
//!   marker was lost with the primary), consecutive afterwards;
//! - the guest's memory checksum still matches what it wrote;
//! - the failover time (kill to first line on the secondary) is printed.

mod common;

use std::time::{Duration, Instant};

use common::{KEY, bochs_on};
use hv_tests::random::{XorShift, spread};
use hv_tests::{Link, Machine, secs};

/// The three hosts: primary, secondary (Bochs, VT-x) and the witness.
pub struct Trio {
    pub link: Link,
    pub a: Machine,
    pub b: Machine,
    pub w: Machine,
}

pub fn trio() -> Trio {
    trio_with("")
}

/// [`trio`], the twins' hv.cfg with `extra` lines.
pub fn trio_with(extra: &str) -> Trio {
    let link = Link::bochs_with_peer();
    let twin = |name: &str, ip: &str| {
        bochs_on(&link, name, ip, Some(KEY))
            .config(&format!(
                "hostname = {name}\nnet.ip = {ip}\nnet.key = {KEY}\n{extra}"
            ))
            .bochs_model("corei7_skylake_x")
            .memory_mib(256)
            .start()
    };
    let a = twin("prim", "10.0.0.1/24");
    let b = twin("twin", "10.0.0.2/24");
    let w = Machine::qemu()
        .hostname("wit")
        .config(&format!(
            "hostname = wit\nnet.ip = 10.0.0.3/24\nnet.key = {KEY}\n"
        ))
        .hub_station(&link, "b0:c4:20:00:00:03")
        .start();
    let mut t = Trio { link, a, b, w };
    t.w.boot_to_prompt();
    t.a.boot_to_prompt();
    t.b.boot_to_prompt();
    t.w.send_line("ft witness");
    t.w.expect_line(r"ft: witness on port 7004", secs(30));
    t.b.send_line("ft listen");
    t.b.expect_line(r"ft: listening on port 7003 .*", secs(30));
    t
}

/// `dirty: count <n>` values in `lines` of `vm`'s console output of `m`,
/// from byte `from` on.
pub fn counts_since(m: &Machine, vm: &str, from: usize) -> Vec<u64> {
    let out = m.output();
    let tag = format!("[{vm}] dirty: count ");
    out[from.min(out.len())..]
        .lines()
        .filter_map(|l| {
            let i = l.find(&tag)?;
            l[i + tag.len()..].split_whitespace().next()?.parse().ok()
        })
        .collect()
}

/// Starts `d` (a `dirty` guest, 4 MiB written at 50 pages/s) on `a` and
/// protects it on 10.0.0.2 with the witness 10.0.0.3.
pub fn protect_dirty(t: &mut Trio) {
    t.a.cmd_echoed("vm create d mem=8 image=dirty arg=50");
    t.a.send_line("vm start d");
    t.a.expect_line(r"\[d\] dirty: count \d+ .*", secs(60));
    t.a.send_line("ft enable d 10.0.0.2 witness=10.0.0.3");
    let done = t.a.expect_line(
        r"(ft: d: protected by 10\.0\.0\.2: lockstep .*|error: ft: .*)",
        secs(300),
    );
    t.a.check(done.text.contains("protected by"), || done.text.clone());
    t.b.expect_line(r"ft: d: secondary of [\d.:]+: replaying", secs(60));
    t.w.expect_line(
        r"ft: witness: d: generation \d+ begun by 10\.0\.0\.1",
        secs(30),
    );
    println!("{}", done.text.trim());
}

/// The kill times: seeded from `HV_FT_SEED` or the clock; the seed is
/// printed so a run can be redone.
pub struct Rng(XorShift);

impl Default for Rng {
    fn default() -> Self {
        Rng::new()
    }
}

impl Rng {
    pub fn new() -> Rng {
        let seed = std::env::var("HV_FT_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos() as u64)
            })
            | 1;
        println!("random seed {seed} (HV_FT_SEED={seed} redoes these kill times)");
        Rng(XorShift::new(seed))
    }

    /// Uniform in `lo..hi` milliseconds.
    pub fn ms(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.0.next_u64() % (hi - lo).max(1))
    }
}

/// What one failover showed.
#[derive(Debug, Clone)]
pub struct Failover {
    /// Kill to the `live here` line (wall clock).
    pub live_ms: u64,
    /// Kill to the first guest line on the secondary (wall clock).
    pub first_line_ms: u64,
    /// What the secondary said: records drained, its own ms.
    pub drained: u64,
    pub reported_ms: u64,
    /// Counts repeated (the README's allowance).
    pub repeated: u64,
}

/// Kills the primary after `after` of protected running and checks that
/// the guest lives on on the secondary with nothing lost.
pub fn kill_primary_and_check(t: &mut Trio, after: Duration) -> Failover {
    let b_from = t.b.output().len();
    std::thread::sleep(after);
    // What the world saw of the guest: the primary's last count.
    let seen = counts_since(&t.a, "d", 0);
    t.a.kill();
    let killed = Instant::now();
    let a_last = *seen.last().unwrap_or(&0);
    let live = t.b.expect_line(
        r"ft: d: live here \(primary 10\.0\.0\.1 lost, (\d+) records drained, (\d+) ms\)",
        secs(60),
    );
    let live_ms = killed.elapsed().as_millis() as u64;
    let drained = live.num(1);
    let reported_ms = live.num(2);
    t.w.expect_line(
        r"ft: witness: d: generation \d+: 10\.0\.0\.2 \(secondary\) claims: won",
        secs(30),
    );
    // The counter goes on, here now.
    let first = t.b.expect_line(r"\[d\] dirty: count (\d+) .*", secs(60));
    let first_line_ms = killed.elapsed().as_millis() as u64;
    let b_first = first.num(1);
    t.b.expect_line(
        &format!(r"\[d\] dirty: count {} .*", b_first.max(a_last) + 2),
        secs(60),
    );
    let mine = counts_since(&t.b, "d", b_from);
    t.b.check(b_first <= a_last + 1, || {
        format!(
            "counts {}..={b_first} are missing: the primary printed up to {a_last}, the secondary went on at {b_first}",
            a_last + 1
        )
    });
    for w in mine.windows(2) {
        t.b.check(w[1] == w[0] + 1, || {
            format!("the secondary's counts are not consecutive: {mine:?}")
        });
    }
    let repeated = (a_last + 1).saturating_sub(b_first);
    t.b.send_line("vm checksum d");
    let sum = t.b.expect_line(
        r"\[d\] dirty: checksum ([0-9a-f]+) expected ([0-9a-f]+) (\w+) after (\d+) writes",
        secs(60),
    );
    t.b.check(sum.get(3) == Some("ok") && sum.get(1) == sum.get(2), || {
        format!("the guest's memory after the failover: {}", sum.text)
    });
    let f = Failover {
        live_ms,
        first_line_ms,
        drained,
        reported_ms,
        repeated,
    };
    println!(
        "failover after {} ms of protection: primary's last count {a_last}, secondary's first {b_first} ({repeated} repeated); live after {live_ms} ms, first line after {first_line_ms} ms (the secondary says {reported_ms} ms since the primary's last frame, {drained} records drained)",
        after.as_millis()
    );
    f
}

/// The primary killed at random points. `HV_FT_RUNS` runs (default 3:
/// what `cargo xtask test` runs; `cargo xtask campaign ft --runs N` sets
/// more), each on three fresh hosts; every run is checked, the summary
/// printed, and the test fails if any run did.
#[test]
fn bochs_ft_failover_primary_killed_at_random_points() {
    let runs: usize = std::env::var("HV_FT_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let mut rng = Rng::new();
    let mut ok = Vec::new();
    let mut failed = Vec::new();
    for run in 1..=runs {
        let after = rng.ms(1_000, 12_000);
        println!(
            "run {run}/{runs}: kill after {} ms of protection",
            after.as_millis()
        );
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let mut t = trio();
            protect_dirty(&mut t);
            kill_primary_and_check(&mut t, after)
        }));
        match r {
            Ok(f) => ok.push(f),
            Err(e) => {
                let why = e
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                println!("run {run}: FAILED: {}", why.lines().next().unwrap_or(""));
                failed.push((run, why));
            }
        }
    }
    println!("ft campaign: {runs} runs, {} failed", failed.len());
    // min / p50 / p90 / max
    const Q: &[usize] = &[0, 50, 90, 100];
    println!(
        "  failover, kill to first guest line on the secondary (ms, min / p50 / p90 / max): {}",
        spread(&ok.iter().map(|f| f.first_line_ms).collect::<Vec<_>>(), Q)
    );
    println!(
        "  kill to `live here` (ms): {}",
        spread(&ok.iter().map(|f| f.live_ms).collect::<Vec<_>>(), Q)
    );
    println!(
        "  the secondary's own figure, last frame to live (ms): {}",
        spread(&ok.iter().map(|f| f.reported_ms).collect::<Vec<_>>(), Q)
    );
    println!(
        "  records drained: {}; counts repeated: {}",
        spread(&ok.iter().map(|f| f.drained).collect::<Vec<_>>(), Q),
        spread(&ok.iter().map(|f| f.repeated).collect::<Vec<_>>(), Q)
    );
    if let Some((run, why)) = failed.first() {
        panic!("{} of {runs} runs failed; run {run}: {why}", failed.len());
    }
}

/// Whether `m` runs `vm` (`vm list` shows it running or halted).
fn runs(m: &mut Machine, vm: &str) -> bool {
    let out = m.cmd_echoed("vm list");
    out.lines().any(|l| {
        let w: Vec<&str> = l.split_whitespace().collect();
        w.len() >= 2 && w[0] == vm && (w[1] == "running" || w[1] == "halted")
    })
}

/// The twins cut apart (`net filter drop` on the primary), both still
/// reaching the witness: exactly one of them runs the guest afterwards.
#[test]
fn bochs_ft_partition_runs_the_guest_once() {
    let mut t = trio();
    protect_dirty(&mut t);
    t.a.expect_line(r"\[d\] dirty: count \d+ .*", secs(60));
    let out = t.a.cmd_echoed("net filter drop 10.0.0.2");
    t.a.check(
        out.contains("net: filter: dropping frames to and from 10.0.0.2"),
        || out.clone(),
    );
    let ra =
        t.a.expect_line(r"ft: d: (unprotected: .*|stopped here: .*)", secs(60));
    let rb = t.b.expect_line(
        r"ft: d: (live here .*|secondary copy discarded: .*)",
        secs(60),
    );
    let a_runs = ra.text.contains("keeps running");
    let b_runs = rb.text.contains("live here");
    println!("primary: {}\nsecondary: {}", ra.text.trim(), rb.text.trim());
    t.a.check(a_runs != b_runs, || {
        format!(
            "after the partition the primary says {:?} and the secondary {:?}: {} copies run",
            ra.text.trim(),
            rb.text.trim(),
            usize::from(a_runs) + usize::from(b_runs)
        )
    });
    t.w.expect_line(r"ft: witness: d: generation \d+: .* claims: won", secs(30));
    let (winner, loser) = if a_runs {
        (&mut t.a, &mut t.b)
    } else {
        (&mut t.b, &mut t.a)
    };
    let before = winner.output().len();
    winner.expect_line(r"\[d\] dirty: count \d+ .*", secs(60));
    winner.expect_line(r"\[d\] dirty: count \d+ .*", secs(60));
    let (w_runs, l_runs) = (runs(winner, "d"), runs(loser, "d"));
    winner.check(w_runs, || "the winner does not run d".into());
    loser.check(!l_runs, || "the loser still runs d".into());
    let since = counts_since(winner, "d", before);
    println!("the winner's counter goes on: {since:?}");
}

/// The witness gone and the twins cut apart: neither goes live; the
/// primary holds the guest paused and says why.
#[test]
fn bochs_ft_witness_unreachable_nobody_goes_live() {
    let mut t = trio();
    protect_dirty(&mut t);
    t.w.kill();
    t.a.cmd_echoed("net filter drop 10.0.0.2");
    let pa = t.a.expect_line(
        r"ft: d: paused: secondary 10\.0\.0\.2 lost: .*, and witness 10\.0\.0\.3 unreachable \(.*\); d stays paused rather than risk two copies.*",
        secs(60),
    );
    let pb = t.b.expect_line(
        r"ft: d: not going live: primary 10\.0\.0\.1 lost: .*, and witness 10\.0\.0\.3 unreachable \(.*\).*",
        secs(60),
    );
    println!("{}\n{}", pa.text.trim(), pb.text.trim());
    // For a while, nothing runs: no count on either side, nobody live.
    let (fa, fb) = (t.a.output().len(), t.b.output().len());
    std::thread::sleep(Duration::from_secs(8));
    for (m, from) in [(&t.a, fa), (&t.b, fb)] {
        let c = counts_since(m, "d", from);
        m.check(c.is_empty(), || format!("the guest ran on: {c:?}"));
        m.check(!m.output()[from..].contains("live here"), || {
            "a twin went live without the witness".into()
        });
    }
    let st = t.a.cmd_echoed("vm stats d");
    t.a.check(st.contains(", paused"), || {
        format!("vm stats d on the primary: {st}")
    });
}

/// A byte flipped on the secondary: the next state check (every 2 s here)
/// finds it, the secondary is discarded and re-created from the primary,
/// and the guest's counter on the primary never stops.
#[test]
fn bochs_ft_divergence_recreates_the_secondary() {
    let mut t = trio_with("ft.check_s = 2\n");
    protect_dirty(&mut t);
    t.a.expect_line(r"\[d\] dirty: count \d+ .*", secs(60));
    let a_from = t.a.output().len();
    let out = t.b.cmd_echoed("ft flip d 0x300000");
    t.b.check(out.contains("ft: d: flipped the byte at 0x300000"), || {
        out.clone()
    });
    let flipped = Instant::now();
    let gone =
        t.b.expect_line(r"ft: d: secondary copy discarded: diverged: .*", secs(60));
    let found_s = flipped.elapsed().as_secs_f64();
    let div = t.a.expect_line(
        r"ft: d: divergence: the secondary diverged: .*; re-creating the secondary on 10\.0\.0\.2",
        secs(60),
    );
    let again = t.a.expect_line(
        r"ft: d: protected by 10\.0\.0\.2: lockstep \(initial copy (\d+) ms, pause (\d+) ms, re-sync\)",
        secs(300),
    );
    t.b.expect_line(r"ft: d: secondary of [\d.:]+: replaying", secs(60));
    println!(
        "{}\n{}\n{}\nfound {found_s:.1} s after the flip",
        gone.text.trim(),
        div.text.trim(),
        again.text.trim()
    );
    // Found within one check interval (2 s of guest time; the wall clock
    // of two emulators on a shared machine runs slower).
    t.a.check(found_s < 30.0, || {
        format!("the divergence was found after {found_s:.1} s")
    });
    t.a.expect_line(r"\[d\] dirty: count \d+ .*", secs(60));
    let c = counts_since(&t.a, "d", a_from);
    for w in c.windows(2) {
        t.a.check(w[1] == w[0] + 1, || {
            format!("the primary's counter skipped: {c:?}")
        });
    }
    let st = t.a.cmd_echoed("ft status d");
    t.a.check(st.contains("1 divergences, 1 re-syncs"), || {
        format!("ft status d: {st}")
    });
}

/// The secondary's host dies: the primary runs on unprotected and says so;
/// a freshly booted host (on the dead one's hub port) protects it again,
/// and a second failover, the primary killed this time, then works.
#[test]
fn bochs_ft_secondary_killed_then_reprotected_then_failover() {
    let mut t = trio();
    protect_dirty(&mut t);
    t.a.expect_line(r"\[d\] dirty: count \d+ .*", secs(60));
    t.b.kill();
    let killed = Instant::now();
    let u = t.a.expect_line(
        r"ft: d: unprotected: secondary 10\.0\.0\.2 lost: .*; d keeps running",
        secs(60),
    );
    println!(
        "{} ({} ms after the kill)",
        u.text.trim(),
        killed.elapsed().as_millis()
    );
    t.w.expect_line(
        r"ft: witness: d: generation \d+: 10\.0\.0\.1 \(primary\) claims: won",
        secs(30),
    );
    // The guest goes on, its output no longer held.
    let from = t.a.output().len();
    t.a.expect_line(r"\[d\] dirty: count \d+ .*", secs(60));
    t.a.expect_line(r"\[d\] dirty: count \d+ .*", secs(60));
    let c = counts_since(&t.a, "d", from);
    println!("unprotected, the counter goes on: {c:?}");

    // A new host where the dead one was: its hub port and its MAC (bxhub
    // keeps the MAC it first learnt on a port), another address.
    let port = t.link.port() + 2;
    let mut c = Machine::bochs()
        .hostname("new")
        .config(&format!(
            "hostname = new\nnet.ip = 10.0.0.4/24\nnet.key = {KEY}\n"
        ))
        .bochs_model("corei7_skylake_x")
        .memory_mib(256)
        .hub_port(port, "b0:c4:20:00:00:02")
        .start();
    c.boot_to_prompt();
    c.send_line("ft listen");
    c.expect_line(r"ft: listening on port 7003 .*", secs(30));
    let started = Instant::now();
    t.a.send_line("ft enable d 10.0.0.4 witness=10.0.0.3");
    let done = t.a.expect_line(
        r"(ft: d: protected by 10\.0\.0\.4: lockstep .*|error: ft: .*)",
        secs(300),
    );
    t.a.check(done.text.contains("protected by"), || done.text.clone());
    println!(
        "re-protected in {} ms: {}",
        started.elapsed().as_millis(),
        done.text.trim()
    );
    c.expect_line(r"ft: d: secondary of [\d.:]+: replaying", secs(60));
    let st = t.a.cmd_echoed("ft status d");
    t.a.check(st.contains("d: history: protected 2 times"), || {
        format!("ft status d: {st}")
    });

    // The second failover: the primary dies, the new host goes live.
    let mut t2 = Trio {
        link: t.link.clone(),
        a: t.a,
        b: c,
        w: t.w,
    };
    let b_from = t2.b.output().len();
    std::thread::sleep(Duration::from_secs(3));
    let seen = counts_since(&t2.a, "d", 0);
    t2.a.kill();
    let a_last = *seen.last().unwrap_or(&0);
    let live = t2.b.expect_line(
        r"ft: d: live here \(primary 10\.0\.0\.1 lost, \d+ records drained, \d+ ms\)",
        secs(60),
    );
    println!("{}", live.text.trim());
    t2.b.expect_line(&format!(r"\[d\] dirty: count {} .*", a_last + 2), secs(60));
    let mine = counts_since(&t2.b, "d", b_from);
    t2.b.check(mine.first().is_some_and(|&f| f <= a_last + 1), || {
        format!("the primary printed up to {a_last}; the new host went on with {mine:?}")
    });
    t2.b.send_line("vm checksum d");
    let sum = t2.b.expect_line(
        r"\[d\] dirty: checksum ([0-9a-f]+) expected ([0-9a-f]+) (\w+) after (\d+) writes",
        secs(60),
    );
    t2.b.check(sum.get(3) == Some("ok"), || sum.text.clone());
    drop(t.b);
}
