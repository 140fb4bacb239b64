//! Fault tolerance, part 2: the primary's host dies (its emulator is
//! killed at a random point of a protected `dirty` guest's run) and the
//! guest carries on on the secondary, decided by a witness on a third host
//! (QEMU on the Bochs hub: it needs no VMX).
//!
//! What would be false if failover were broken:
//! - the secondary prints `ft: d: live here (primary 10.0.0.1 lost, ...)`
//!   within seconds of the kill, and the witness says it won;
//! - the guest's counter goes on from where the primary's output stopped:
//!   no value missing (the first live count is at most the primary's last
//!   + 1), repeated only as far as the README allows (lines whose release
//!   marker was lost with the primary), consecutive afterwards;
//! - the guest's memory checksum still matches what it wrote;
//! - the failover time (kill to first line on the secondary) is printed.

mod common;

use std::time::{Duration, Instant};

use common::{KEY, bochs_on};
use hv_tests::{Link, Machine, secs};

/// The three hosts: primary, secondary (Bochs, VT-x) and the witness.
pub struct Trio {
    pub link: Link,
    pub a: Machine,
    pub b: Machine,
    pub w: Machine,
}

pub fn trio() -> Trio {
    let link = Link::bochs_with_peer();
    let a = bochs_on(&link, "prim", "10.0.0.1/24", Some(KEY))
        .bochs_model("corei7_skylake_x")
        .memory_mib(256)
        .start();
    let b = bochs_on(&link, "twin", "10.0.0.2/24", Some(KEY))
        .bochs_model("corei7_skylake_x")
        .memory_mib(256)
        .start();
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
    t.a.cmd("vm create d mem=8 image=dirty arg=50");
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

/// A small deterministic generator (xorshift), seeded from
/// `HV_FT_SEED` or the clock; the seed is printed so a run can be redone.
pub struct Rng(u64);

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
        Rng(seed)
    }

    /// Uniform in `lo..hi` milliseconds.
    pub fn ms(&mut self, lo: u64, hi: u64) -> Duration {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        Duration::from_millis(lo + self.0 % (hi - lo).max(1))
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

#[test]
fn bochs_ft_failover_primary_killed_at_random_points() {
    let mut rng = Rng::new();
    let mut all = Vec::new();
    for run in 1..=3 {
        println!("run {run}/3");
        let mut t = trio();
        protect_dirty(&mut t);
        let after = rng.ms(1_000, 12_000);
        all.push(kill_primary_and_check(&mut t, after));
        let _ = &t.link;
    }
    let mut ms: Vec<u64> = all.iter().map(|f| f.first_line_ms).collect();
    ms.sort_unstable();
    println!("failover (kill to first guest line on the secondary), ms: {ms:?}");
}
