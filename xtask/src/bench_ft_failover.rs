//! `cargo xtask bench ft`'s failover part: three hosts on one bxhub (two
//! Bochs twins, a QEMU witness), a protected `dirty` guest (16 MiB, 100
//! pages/s), and for each of N runs the primary's emulator killed at a
//! random point. Per run: wall time from the kill to the secondary's
//! `live here` line and to its first guest line, and the secondary's own
//! account (emulated time: detection after the last frame, then log drain,
//! witness and go-live; records drained; lines re-emitted). Then on the
//! last pair: what a state check costs (`ft status`), and a divergence
//! provoked with `ft flip` to time the re-sync (re-protection).
//!
//! A benchmark: it prints figures, and fails only when a host does not
//! boot or protection cannot start.

use std::time::{Duration, Instant};

use hv_tests::random::{XorShift, spread};
use hv_tests::{Link, Machine};

use crate::Result;

const KEY: &str = "00112233445566778899aabbccddeeff";

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

fn twin(link: &Link, name: &str, ip: &str) -> Result<Machine> {
    Machine::bochs()
        .bochs_model("corei7_skylake_x")
        .memory_mib(256)
        .name(&format!("bench-ftfo-{name}"))
        .hostname(name)
        .config(&format!(
            "hostname = {name}\nnet.ip = {ip}\nnet.key = {KEY}\n"
        ))
        .link(link)
        .try_start()
        .map_err(err)
}

struct Trio {
    _link: Link,
    a: Machine,
    b: Machine,
    w: Machine,
}

fn trio() -> Result<Trio> {
    let link = Link::try_bochs_with_peer().map_err(err)?;
    let mut a = twin(&link, "prim", "10.0.0.1/24")?;
    let mut b = twin(&link, "twin", "10.0.0.2/24")?;
    let mut w = Machine::qemu()
        .name("bench-ftfo-wit")
        .hostname("wit")
        .config(&format!(
            "hostname = wit\nnet.ip = 10.0.0.3/24\nnet.key = {KEY}\n"
        ))
        .hub_station(&link, "b0:c4:20:00:00:03")
        .try_start()
        .map_err(err)?;
    for m in [&mut w, &mut a, &mut b] {
        m.try_boot_to_prompt().map_err(err)?;
    }
    w.cmd_echoed("ft witness");
    b.cmd_echoed("ft listen");
    a.cmd_echoed("vm create d mem=16 image=dirty arg=100");
    a.send_line("vm start d");
    let t = Duration::from_secs(60);
    a.try_expect(&hv_tests::line_pattern(r"\[d\] dirty: count \d+ .*"), t)
        .map_err(err)?;
    a.send_line("ft enable d 10.0.0.2 witness=10.0.0.3");
    let done = a
        .try_expect(
            &hv_tests::line_pattern(r"(ft: d: protected by .*|error: ft: .*)"),
            Duration::from_secs(600),
        )
        .map_err(err)?;
    if !done.text.contains("protected by") {
        return Err(done.text.trim().to_string());
    }
    eprintln!("xtask: bench ft: {}", done.text.trim());
    Ok(Trio {
        _link: link,
        a,
        b,
        w,
    })
}

fn expect(m: &mut Machine, re: &str, secs: u64) -> Result<hv_tests::Found> {
    m.try_expect(&hv_tests::line_pattern(re), Duration::from_secs(secs))
        .map_err(err)
}

/// One failover's figures.
#[derive(Debug, Default, Clone)]
struct Run {
    live_ms: u64,
    first_line_ms: u64,
    detect_ms: u64,
    decide_ms: u64,
    drained: u64,
    reemitted: u64,
}

fn one_kill(t: &mut Trio, after: Duration) -> Result<Run> {
    std::thread::sleep(after);
    t.a.kill();
    let killed = Instant::now();
    let live = expect(
        &mut t.b,
        r"ft: d: live here \(primary 10\.0\.0\.1 lost, (\d+) records drained, (\d+) ms\)",
        60,
    )?;
    let live_ms = killed.elapsed().as_millis() as u64;
    let why = expect(
        &mut t.b,
        r".*ft: d: failover: detected (\d+) ms after the last frame, drained and decided in (\d+) ms \(.*\), (\d+) lines re-emitted",
        30,
    )?;
    expect(&mut t.b, r"\[d\] dirty: count \d+ .*", 60)?;
    Ok(Run {
        live_ms,
        first_line_ms: killed.elapsed().as_millis() as u64,
        detect_ms: why.num(1),
        decide_ms: why.num(2),
        drained: live.num(1),
        reemitted: why.num(3),
    })
}

/// The failover figures: `runs` kills, then a check's cost and a re-sync.
pub fn main(runs: usize) -> Result {
    let mut rng = XorShift::new(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(7, |d| d.as_nanos() as u64),
    );
    let mut out = Vec::new();
    for run in 1..=runs {
        let after = Duration::from_millis(2_000 + rng.next_u64() % 10_000);
        eprintln!("xtask: bench ft: failover run {run}/{runs}, kill after {after:?}");
        let r = trio().and_then(|mut t| one_kill(&mut t, after));
        match r {
            Ok(r) => {
                eprintln!("xtask: bench ft: {r:?}");
                out.push(r);
            }
            Err(e) => eprintln!("xtask: bench ft: failover run {run}: {e}"),
        }
    }
    // A check's cost and a re-sync, on a fresh pair.
    let mut check = String::from("-");
    let mut resync = String::from("-");
    match trio() {
        Ok(mut t) => {
            std::thread::sleep(Duration::from_secs(12));
            let st = t.a.cmd_echoed("ft status d");
            if let Some(l) = st.lines().find(|l| l.contains("checks every")) {
                check = l.trim().to_string();
            }
            t.b.cmd_echoed("ft flip d 0x300000");
            let flipped = Instant::now();
            let r = expect(
                &mut t.a,
                r"ft: d: protected by 10\.0\.0\.2: lockstep \(initial copy (\d+) ms, pause (\d+) ms, re-sync\)",
                600,
            );
            resync = match r {
                Ok(f) => format!(
                    "{} ms from the flip to protected again (initial copy {} ms, pause {} ms)",
                    flipped.elapsed().as_millis(),
                    f.num(1),
                    f.num(2)
                ),
                Err(e) => e,
            };
            let _ = &t.w;
        }
        Err(e) => eprintln!("xtask: bench ft: check and re-sync: {e}"),
    }
    println!();
    println!(
        "failover: {} of {runs} kills of the primary (dirty 16 MiB at 100 pages/s, witness on a QEMU host; ft.heartbeat_ms 100, ft.timeout_ms 1000)",
        out.len()
    );
    println!("                                              min / p50 / max");
    println!(
        "  kill to first guest line on the secondary   {} ms (wall)",
        spread(
            &out.iter().map(|r| r.first_line_ms).collect::<Vec<_>>(),
            &[0, 50, 100]
        )
    );
    println!(
        "  kill to `live here`                         {} ms (wall)",
        spread(
            &out.iter().map(|r| r.live_ms).collect::<Vec<_>>(),
            &[0, 50, 100]
        )
    );
    println!(
        "  detection: last frame to declared lost      {} ms (emulated)",
        spread(
            &out.iter().map(|r| r.detect_ms).collect::<Vec<_>>(),
            &[0, 50, 100]
        )
    );
    println!(
        "  drain + witness + go-live                   {} ms (emulated)",
        spread(
            &out.iter().map(|r| r.decide_ms).collect::<Vec<_>>(),
            &[0, 50, 100]
        )
    );
    println!(
        "  records drained                             {}",
        spread(
            &out.iter().map(|r| r.drained).collect::<Vec<_>>(),
            &[0, 50, 100]
        )
    );
    println!(
        "  lines re-emitted                            {}",
        spread(
            &out.iter().map(|r| r.reemitted).collect::<Vec<_>>(),
            &[0, 50, 100]
        )
    );
    println!("divergence check: {check}");
    println!("re-protection (re-sync after ft flip): {resync}");
    Ok(())
}
