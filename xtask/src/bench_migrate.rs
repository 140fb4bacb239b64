//! `cargo xtask bench migrate [--quick]`: live migration of the `dirty`
//! guest between two Bochs hosts joined by bxhub, for a 64 MiB and a
//! 256 MiB guest at three dirty rates, and beside each the same guest
//! (same RAM, same rate) moved by QEMU's own live migration between two
//! QEMU processes with `max-bandwidth` capped at the Bochs link's measured
//! bandwidth, so both do the same work over the same pipe.
//!
//! Figures per run: total time, downtime as the hypervisor measured it
//! (pause to commit acknowledged), downtime as the guest saw it (from its
//! TSC: the longest stretch between two of its timer wake-ups around the move),
//! what pre-copy cost the guest (the same stretch during the rounds), pre-copy rounds, bytes sent relative to RAM, and the lower
//! bound on downtime (the final round's dirty bytes over the link
//! bandwidth).
//!
//! Our hypervisor's times are Bochs emulated time (the TSC under
//! `clock: sync=none`), in which the link moves about 1 MiB/s; QEMU's are
//! host time. A benchmark, not a test: it reports numbers and fails only
//! when a run cannot be carried out at all.

use std::time::{Duration, Instant};

use hv_tests::regex::Regex;
use hv_tests::{Link, Machine};

use crate::bench_migrate_qemu::{QemuFigures, qemu_migration};
use crate::{Result, guest_path, make_image, setup};

const KEY: &str = "00112233445566778899aabbccddeeff";
/// Counter lines (0.5 s each) the guest prints before it is moved.
const WARMUP_COUNTS: usize = 20;
/// Downtime budget for both hypervisors (also QEMU's default).
const DOWNTIME_MS: u64 = 300;

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// A Skylake-X Bochs host of `mib` MiB on `link` at `ip` with the bench
/// key, booted to its prompt (`bench` names its emulator logs).
pub(crate) fn linked_host(
    bench: &str,
    link: &Link,
    name: &str,
    ip: &str,
    mib: u32,
) -> Result<Machine> {
    let mut m = Machine::bochs()
        .bochs_model("corei7_skylake_x")
        .memory_mib(mib)
        .name(&format!("bench-{bench}-{name}"))
        .hostname(name)
        .config(&format!(
            "hostname = {name}\nnet.ip = {ip}\nnet.key = {KEY}\n"
        ))
        .link(link)
        .try_start()
        .map_err(err)?;
    m.try_boot_to_prompt().map_err(err)?;
    Ok(m)
}

/// One counter line of guest `d`.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Count {
    n: u64,
    tsc: u64,
    /// Longest TSC stretch between two of the guest's wake-ups since the
    /// line before.
    gap: u64,
}

/// Every complete counter line of guest `d` in `text`.
fn counts(text: &str) -> Vec<Count> {
    let re =
        Regex::new(r"\[d\] dirty: count (\d+) tsc (\d+) gap (\d+)\r?\n").expect("static regex");
    re.captures_iter(text)
        .filter_map(|c| {
            Some(Count {
                n: c[1].parse().ok()?,
                tsc: c[2].parse().ok()?,
                gap: c[3].parse().ok()?,
            })
        })
        .collect()
}

/// TSC ticks per second from counter lines 0.5 s apart (the median gap).
fn tsc_hz(lines: &[Count]) -> Option<f64> {
    let mut gaps: Vec<u64> = lines
        .windows(2)
        .filter(|w| w[1].n == w[0].n + 1)
        .map(|w| w[1].tsc.saturating_sub(w[0].tsc))
        .collect();
    gaps.sort_unstable();
    gaps.get(gaps.len() / 2).map(|g| *g as f64 * 2.0)
}

/// The pause as the guest saw it: the longest stretch between two of its
/// wake-ups in the window of its first line on the destination (ms), and
/// whether the counter continued there with no gap or repeat.
fn guest_downtime_ms(src: &[Count], dst: &[Count], hz: f64) -> Option<(f64, bool)> {
    let last = src.last()?;
    let first = dst.first()?;
    Some((first.gap as f64 / hz * 1000.0, first.n == last.n + 1))
}

/// The longest the guest waited between two wake-ups while it was being
/// copied (its lines after `from`), ms: what pre-copy cost it.
fn precopy_stall_ms(src: &[Count], from: usize, hz: f64) -> f64 {
    src.iter().skip(from).map(|c| c.gap).max().unwrap_or(0) as f64 / hz * 1000.0
}

/// One of our migrations, as its summary line and the guest tell it.
#[derive(Debug, Default, Clone)]
struct OurFigures {
    total_ms: u64,
    downtime_ms: u64,
    guest_ms: Option<f64>,
    stall_ms: f64,
    counter_ok: bool,
    rounds: u64,
    sent_kib: u64,
    zero_pages: u64,
    last_round_kib: u64,
    lower_bound_ms: u64,
    slowed: bool,
    wall_s: f64,
    /// `Err`: the migration failed (its error line).
    failed: Option<String>,
}

/// Measures the link with `net bench` (MiB/s of emulated time).
fn link_mib_s(a: &mut Machine, b: &mut Machine) -> Result<f64> {
    let t = Duration::from_secs(60);
    b.try_command("net sink", t).map_err(err)?;
    a.try_command("net ping 10.0.0.2 1", t).map_err(err)?;
    let out = a
        .try_command("net bench 10.0.0.2 4", Duration::from_secs(600))
        .map_err(err)?;
    let re = Regex::new(r"= ([\d.]+) MiB/s, checksum ok").expect("static regex");
    re.captures(&out)
        .and_then(|c| c[1].parse().ok())
        .ok_or_else(|| format!("bench migrate: no net bench result in:\n{out}"))
}

/// Boots two Bochs hosts, runs `dirty` with `mem` MiB at `rate` pages/s on
/// the first and moves it to the second. With `measure_link`, first
/// measures the link (returned as the second value).
fn ours(mem: u32, rate: u64, measure_link: bool) -> Result<(OurFigures, Option<f64>)> {
    let link = Link::bochs();
    let host_mib = (mem * 2).max(256);
    let mut a = linked_host("migrate", &link, "srca", "10.0.0.1/24", host_mib)?;
    let mut b = linked_host("migrate", &link, "dstb", "10.0.0.2/24", host_mib)?;
    let bw = if measure_link {
        Some(link_mib_s(&mut a, &mut b)?)
    } else {
        None
    };
    let t = Duration::from_secs(120);
    b.try_command("migrate listen", t).map_err(err)?;
    a.try_command(&format!("vm create d mem={mem} image=dirty arg={rate}"), t)
        .map_err(err)?;
    a.try_send_line("vm start d").map_err(err)?;
    for _ in 0..WARMUP_COUNTS {
        a.try_expect(r"\[d\] dirty: count \d+ tsc \d+ gap \d+\r?\n", t)
            .map_err(err)?;
    }
    let warm = counts(&a.output());
    let hz = tsc_hz(&warm).ok_or("bench migrate: no TSC rate from the guest")?;
    let start = Instant::now();
    a.try_send_line("migrate d 10.0.0.2").map_err(err)?;
    let done = a
        .try_expect(
            r"(migrate: d now runs on 10\.0\.0\.2: total (\d+) ms, downtime (\d+) ms, (\d+) rounds, (\d+) KiB sent for \d+ MiB of RAM \((\d+) zero pages\), last round (\d+) KiB, lower bound (\d+) ms|error: migrate: [^\r\n]*\r?\n)",
            Duration::from_secs(3600),
        )
        .map_err(err)?;
    let wall_s = start.elapsed().as_secs_f64();
    let slowed = a
        .output()
        .contains("migrate: d: dirtying faster than the link");
    if done.text.contains("error: migrate:") {
        let f = OurFigures {
            failed: Some(done.text.trim().to_string()),
            wall_s,
            slowed,
            ..Default::default()
        };
        return Ok((f, bw));
    }
    let n = |i| done.num(i);
    b.try_expect(r"\[d\] dirty: count \d+ tsc \d+ gap \d+\r?\n", t)
        .map_err(err)?;
    let dst = counts(&b.output());
    let src = counts(&a.output());
    let guest = guest_downtime_ms(&src, &dst, hz);
    eprintln!(
        "xtask: guest counter: source ends {:?}, destination starts {:?}, TSC {:.0} Hz",
        &src[src.len().saturating_sub(1)..],
        dst.first(),
        hz
    );
    let f = OurFigures {
        total_ms: n(2),
        downtime_ms: n(3),
        guest_ms: guest.map(|g| g.0),
        stall_ms: precopy_stall_ms(&src, warm.len(), hz),
        counter_ok: guest.is_some_and(|g| g.1),
        rounds: n(4),
        sent_kib: n(5),
        zero_pages: n(6),
        last_round_kib: n(7),
        lower_bound_ms: n(8),
        slowed,
        wall_s,
        failed: None,
    };
    // Frames the receiving NIC dropped (ring full) say whether TCP had
    // losses to recover from; the guest prints meanwhile, so match lines.
    let mut rx = String::new();
    for m in [&mut a, &mut b] {
        m.try_send_line("net show").map_err(err)?;
        let l = m
            .try_expect(r"rx: \d+ frames[^\r\n]*\r?\n", t)
            .map_err(err)?;
        rx.push_str(&format!(" [{}]", l.text.trim()));
    }
    eprintln!(
        "xtask: ours {mem} MiB at {rate} pages/s: {} (source, destination:{rx})",
        done.text.trim()
    );
    Ok((f, bw))
}

/// What to run: sizes, rates, and the link rate if already known.
struct Plan {
    sizes: Vec<u32>,
    rates: Vec<u64>,
    link: Option<f64>,
}

fn parse(args: &[String]) -> Result<Plan> {
    let usage =
        "expected [--quick] [--mem <MiB>] [--rate <pages/s>[,<pages/s>...]] [--link <MiB/s>]";
    let mut plan = Plan {
        sizes: vec![64, 256],
        rates: vec![25, 100, 250],
        link: None,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--quick" => {
                plan.sizes = vec![64];
                plan.rates = vec![100];
            }
            "--mem" => {
                let m = it
                    .next()
                    .and_then(|m| m.parse().ok())
                    .filter(|m| (16..=1024).contains(m));
                plan.sizes = vec![m.ok_or_else(|| format!("bench migrate: bad --mem ({usage})"))?];
            }
            "--rate" => {
                // One rate or a comma-separated list.
                let r: Option<Vec<u64>> = it.next().and_then(|r| {
                    r.split(',')
                        .map(|x| x.parse().ok().filter(|x| (1..=100_000).contains(x)))
                        .collect()
                });
                plan.rates = r.ok_or_else(|| format!("bench migrate: bad --rate ({usage})"))?;
            }
            "--link" => {
                let l = it
                    .next()
                    .and_then(|l| l.parse().ok())
                    .filter(|l: &f64| *l > 0.0);
                plan.link = Some(l.ok_or_else(|| format!("bench migrate: bad --link ({usage})"))?);
            }
            _ => {
                return Err(format!(
                    "bench migrate: unexpected argument '{a}' ({usage})"
                ));
            }
        }
    }
    Ok(plan)
}

/// `cargo xtask bench migrate [--quick] [--mem M] [--rate R] [--link MiB/s]`
/// (`--quick`: one 64 MiB run at the middle rate; `--link`: skip measuring
/// the link and cap QEMU at that rate). A run that fails is reported and
/// the others go on.
pub fn main(args: &[String]) -> Result {
    let plan = parse(args)?;
    setup::setup()?;
    make_image()?;
    let mut link = plan.link;
    let mut rows = Vec::new();
    for &mem in &plan.sizes {
        for &rate in &plan.rates {
            let o = match ours(mem, rate, link.is_none()) {
                Ok((o, bw)) => {
                    if let Some(bw) = bw {
                        link = Some(bw);
                        eprintln!("xtask: Bochs link: {bw:.2} MiB/s (emulated time)");
                    }
                    o
                }
                Err(e) => {
                    eprintln!("xtask: ours {mem} MiB at {rate} pages/s: {e}");
                    OurFigures {
                        failed: Some(e.lines().next().unwrap_or_default().to_string()),
                        ..Default::default()
                    }
                }
            };
            let bw_bytes = (link.unwrap_or(1.0) * 1024.0 * 1024.0) as u64;
            let q = qemu_migration(
                &guest_path("dirty"),
                u64::from(mem),
                rate,
                bw_bytes,
                DOWNTIME_MS,
                Duration::from_secs(WARMUP_COUNTS as u64 / 2),
            );
            match &q {
                Ok(q) => eprintln!("xtask: QEMU {mem} MiB at {rate} pages/s: {q:?}"),
                Err(e) => eprintln!("xtask: QEMU {mem} MiB at {rate} pages/s: {e}"),
            }
            rows.push((mem, rate, o, q.ok()));
        }
    }
    print_table(link.unwrap_or(0.0), &rows);
    Ok(())
}

type Row = (u32, u64, OurFigures, Option<QemuFigures>);

fn print_table(link: f64, rows: &[Row]) {
    println!();
    println!(
        "live migration of the dirty guest, downtime budget {DOWNTIME_MS} ms; link {link:.2} MiB/s (Bochs bxhub, emulated time; QEMU max-bandwidth set to the same)"
    );
    println!();
    println!(
        "{:<6} {:>6} {:>6} {:>9} {:>9} {:>9} {:>7} {:>8} {:>8} {:>9} {:>9}  notes",
        "who",
        "MiB",
        "pg/s",
        "total ms",
        "down ms",
        "guest ms",
        "rounds",
        "sent/RAM",
        "zero pg",
        "last KiB",
        "bound ms"
    );
    for (mem, rate, o, q) in rows {
        match &o.failed {
            Some(why) => println!("{:<6} {:>6} {:>6}  failed: {why}", "hv", mem, rate),
            None => println!(
                "{:<6} {:>6} {:>6} {:>9} {:>9} {:>9} {:>7} {:>8.2} {:>8} {:>9} {:>9}  {}{}pre-copy stall {:.0} ms, wall {:.0} s",
                "hv",
                mem,
                rate,
                o.total_ms,
                o.downtime_ms,
                o.guest_ms.map_or("-".into(), |g| format!("{g:.0}")),
                o.rounds,
                (o.sent_kib as f64 / 1024.0) / f64::from(*mem),
                o.zero_pages,
                o.last_round_kib,
                o.lower_bound_ms,
                if o.counter_ok { "" } else { "COUNTER GAP, " },
                if o.slowed { "auto-converge, " } else { "" },
                o.stall_ms,
                o.wall_s
            ),
        }
        match q {
            Some(q) => println!(
                "{:<6} {:>6} {:>6} {:>9.0} {:>9.0} {:>9.0} {:>7} {:>8.2} {:>8} {:>9} {:>9}  {}host time",
                "qemu",
                mem,
                rate,
                q.total_s * 1000.0,
                q.downtime_ms,
                q.guest_gap_ms,
                q.rounds,
                q.bytes as f64 / q.ram_bytes.max(1) as f64,
                q.zero_pages,
                q.last_round_bytes
                    .map_or("-".into(), |b| (b >> 10).to_string()),
                q.last_round_bytes.map_or("-".into(), |b| {
                    format!("{:.0}", b as f64 / (link.max(0.001) * 1048576.0) * 1000.0)
                }),
                if q.counter_ok { "" } else { "COUNTER GAP, " },
            ),
            None => println!("{:<6} {:>6} {:>6}  failed (see above)", "qemu", mem, rate),
        }
    }
    println!();
    println!(
        "total: start to commit; down: pause to commit acknowledged (hypervisor's clock); guest: the longest stretch between two of the guest's wake-ups across the move, from its TSC (QEMU: the host-clock gap between its serial lines beyond 0.5 s, since under TCG its TSC stops while it is paused); pre-copy stall: the same during the rounds; sent/RAM: bytes sent over guest RAM; bound: final round's dirty bytes / link bandwidth."
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tsc_rate_from_counter_lines() {
        let text = "[d] dirty: count 1 tsc 1000 gap 9\n[d] dirty: count 2 tsc 51000 gap 9\nnoise\n[d] dirty: count 3 tsc 101000 gap 9\n[d] dirty: count 4 tsc 151500 gap 9\n[d] dirty: count 5 tsc 2";
        let c = counts(text);
        assert_eq!(c.len(), 4, "the cut last line is not a count");
        assert_eq!(tsc_hz(&c), Some(100_000.0));
    }

    #[test]
    fn guest_downtime_is_the_longest_wake_up_gap_after_the_move() {
        let hz = 100_000.0;
        let c = |n, tsc, gap| Count { n, tsc, gap };
        let src = [c(7, 0, 1_000), c(8, 50_000, 9_000)];
        let dst = [c(9, 130_000, 30_000), c(10, 180_000, 1_000)];
        let (ms, ok) = guest_downtime_ms(&src, &dst, hz).unwrap();
        assert!((ms - 300.0).abs() < 1e-6, "{ms}");
        assert!(ok);
        let (_, ok) = guest_downtime_ms(&src, &[c(8, 130_000, 0)], hz).unwrap();
        assert!(!ok, "a repeated count is not continuity");
        assert!(guest_downtime_ms(&[], &dst, hz).is_none());
        assert!((precopy_stall_ms(&src, 1, hz) - 90.0).abs() < 1e-6);
        assert_eq!(precopy_stall_ms(&src, 2, hz), 0.0);
    }

    #[test]
    fn options_pick_a_subset() {
        let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let p = parse(&args(&["--mem", "256", "--rate", "25,100"])).unwrap();
        assert_eq!((p.sizes, p.rates, p.link), (vec![256], vec![25, 100], None));
        let p = parse(&args(&["--quick", "--link", "0.9"])).unwrap();
        assert_eq!((p.sizes, p.rates, p.link), (vec![64], vec![100], Some(0.9)));
        let p = parse(&[]).unwrap();
        assert_eq!((p.sizes.len(), p.rates.len()), (2, 3));
        for bad in [
            &["--rate", "0"][..],
            &["--rate", "25,x"],
            &["--mem"],
            &["--link", "-1"],
            &["--fast"],
        ] {
            assert!(parse(&args(bad)).is_err(), "{bad:?}");
        }
    }
}
