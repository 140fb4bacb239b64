//! QEMU's own live migration of the `dirty` guest, for comparison with the
//! hypervisor's: [`qemu_migration`] runs two `qemu-system-x86_64` processes
//! (TCG) on this machine, the source booting the guest image directly (its
//! PVH entry, see `guests/src/rt.rs`), the destination waiting with
//! `-incoming`, and migrates between them over loopback TCP through QMP.
//!
//! `cargo xtask bench migrate-qemu [--mem MIB] [--rate N] [--bandwidth MIBPS]
//! [--downtime MS] [--warmup S] [--image PATH]` runs it once and prints one
//! line of figures.
//!
//! **Guest time under TCG.** QEMU stops the guest's clocks while the VM is
//! stopped: the TSC (`cpu_get_ticks`) and the virtual clock that drives the
//! PIT are frozen at the stop and migrated as such, so on the destination
//! they continue from the value they had when the source stopped. The guest
//! therefore cannot see its downtime from its TSC or its ticks: the
//! `count` lines stay 500 ms of guest time apart across the switch-over.
//! The only measure of the blackout the guest would feel is the host
//! clock: [`QemuFigures::guest_gap_ms`]. [`QemuFigures::guest_tsc_gap_ms`]
//! gives the same gap as the guest's TSC saw it, to check that claim on
//! each run.
//!
//! **QEMU 7.2 TCG dirty tracking.** QEMU before 9.0 clears a page's
//! migration dirty bit without re-arming the vCPU's TLB entries that let
//! writes to it through untracked, so writes through them are lost. The
//! `dirty` guest empties its TLB before each write when it runs without the
//! hypervisor to stay clear of that (see `guests/src/bin/dirty.rs`); a
//! broken handover shows as `counter_ok == false` or a gap of seconds.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use hv_tests::regex::Regex;

/// How long a whole migration may take before both QEMUs are killed.
const MIGRATION_TIMEOUT: Duration = Duration::from_secs(15 * 60);
/// How often `query-migrate` is polled.
const POLL: Duration = Duration::from_millis(100);
/// The guest prints a `count` line every 50 ticks at 100 Hz.
const COUNT_SPACING_MS: f64 = 500.0;

/// QEMU's figures for one migration, and the guest's view of the handover.
#[derive(Debug, Clone, PartialEq)]
pub struct QemuFigures {
    /// `total-time`: from `migrate` to completion, in seconds.
    pub total_s: f64,
    /// `downtime`: QEMU's own measure of the stop-and-copy phase, in ms.
    pub downtime_ms: f64,
    /// The host-clock gap between the source's last `count` line and the
    /// destination's first, minus the normal 500 ms spacing: the blackout
    /// as an outside observer of the guest sees it.
    pub guest_gap_ms: f64,
    /// The same gap by the guest's TSC (rate taken from the source's lines),
    /// minus 500 ms; about 0 under TCG, whose TSC stands still while the
    /// VM is stopped. `None` when the source printed too few lines.
    pub guest_tsc_gap_ms: Option<f64>,
    /// `ram.dirty-sync-count`: dirty-bitmap syncs, i.e. pre-copy rounds
    /// (the bulk round included) plus the final one.
    pub rounds: u64,
    /// `ram.transferred`: bytes sent for RAM.
    pub bytes: u64,
    /// `ram.duplicate`: zero pages (sent as a flag, not their contents).
    pub zero_pages: u64,
    /// `ram.total`: the RAM migrated (guest RAM plus QEMU's ROM blocks).
    pub ram_bytes: u64,
    /// `ram.downtime-bytes`: bytes sent while the VM was stopped (the last
    /// round), when this QEMU reports it (7.1 and later).
    pub last_round_bytes: Option<u64>,
    /// The destination's first `count` is the source's last plus one.
    pub counter_ok: bool,
    /// The last count the source printed and the first on the destination.
    pub counts: (u64, u64),
}

/// Migrates a `dirty` guest (`image`, `mem_mib` MiB of RAM, `rate` pages a
/// second) between two QEMUs on this machine after `warmup` of dirtying
/// (counted from its first `count` line), with `max-bandwidth` =
/// `bandwidth_bytes_per_s` and `downtime-limit` = `downtime_limit_ms`.
///
/// Fails when a QEMU does not start or dies, the guest prints nothing, the
/// migration fails (with QEMU's `error-desc`) or takes longer than 15
/// minutes, or the destination never prints a `count` line. Both QEMUs are
/// killed on every path.
pub fn qemu_migration(
    image: &Path,
    mem_mib: u64,
    rate: u64,
    bandwidth_bytes_per_s: u64,
    downtime_limit_ms: u64,
    warmup: Duration,
) -> Result<QemuFigures, String> {
    let epoch = Instant::now();
    let mut run = Run::new()?;
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| format!("no free TCP port: {e}"))?
        .port();
    let src = run.spawn("src", image, mem_mib, rate, None, epoch)?;
    let dst = run.spawn("dst", image, mem_mib, rate, Some(port), epoch)?;
    let mut qmp_src = run.qmp("src")?;
    let _qmp_dst = run.qmp("dst")?;

    run.wait_for_count(src, Duration::from_secs(60))
        .map_err(|e| format!("source guest: {e}"))?;
    let warm_until = Instant::now() + warmup;
    while Instant::now() < warm_until {
        run.check_alive()?;
        thread::sleep(POLL);
    }

    // Like ours, QEMU slows a guest that dirties faster than the link
    // (its vCPU throttle); without it, a rate above the link never ends.
    qmp_src.execute(
        "migrate-set-capabilities",
        r#"{"capabilities": [{"capability": "auto-converge", "state": true}]}"#,
    )?;
    qmp_src.execute(
        "migrate-set-parameters",
        &format!(
            r#"{{"max-bandwidth": {bandwidth_bytes_per_s}, "downtime-limit": {downtime_limit_ms}}}"#
        ),
    )?;
    qmp_src.execute("migrate", &format!(r#"{{"uri": "tcp:127.0.0.1:{port}"}}"#))?;
    let deadline = Instant::now() + MIGRATION_TIMEOUT;
    let reply = loop {
        let r = qmp_src.execute("query-migrate", "{}")?;
        match json_str(&r, "status").as_deref() {
            Some("completed") => break r,
            Some("failed") => {
                return Err(format!(
                    "QEMU migration failed: {}",
                    json_str(&r, "error-desc").unwrap_or_else(|| r.trim().to_string())
                ));
            }
            _ => {}
        }
        if Instant::now() > deadline {
            return Err(format!(
                "QEMU migration not done after {} s: {}",
                MIGRATION_TIMEOUT.as_secs(),
                r.trim()
            ));
        }
        run.check_alive()?;
        thread::sleep(POLL);
    };
    let stats = MigrateStats::parse(&reply)?;

    run.wait_for_count(dst, Duration::from_secs(30))
        .map_err(|e| format!("destination guest after the migration: {e}"))?;
    // Both outputs are final once the QEMUs are gone (the source is paused
    // since the switch-over).
    let [src_out, dst_out] = run.finish();
    let h = handover(&src_out.lines, &src_out.tail, &dst_out.lines).ok_or_else(|| {
        format!(
            "no count lines to compare (source printed {}, destination {})",
            src_out.lines.len(),
            dst_out.lines.len()
        )
    })?;
    Ok(QemuFigures {
        total_s: stats.total_ms as f64 / 1000.0,
        downtime_ms: stats.downtime_ms as f64,
        guest_gap_ms: (h.first_dst.t - h.last_src.t) * 1000.0 - COUNT_SPACING_MS,
        guest_tsc_gap_ms: h.tsc_gap_ms(),
        rounds: stats.rounds,
        bytes: stats.transferred,
        zero_pages: stats.duplicate,
        ram_bytes: stats.total,
        last_round_bytes: stats.downtime_bytes,
        counter_ok: h.first_dst.count == h.last_src.count + 1,
        counts: (h.last_src.count, h.first_dst.count),
    })
}

/// What `query-migrate` says once the migration completed.
#[derive(Debug, Clone, PartialEq, Eq)]
struct MigrateStats {
    total_ms: u64,
    downtime_ms: u64,
    transferred: u64,
    duplicate: u64,
    total: u64,
    rounds: u64,
    downtime_bytes: Option<u64>,
}

impl MigrateStats {
    fn parse(reply: &str) -> Result<MigrateStats, String> {
        let bad = |what: &str| format!("query-migrate: no {what} in {}", reply.trim());
        let ram = object(reply, "ram").ok_or_else(|| bad("ram"))?;
        let top = |k: &str| json_u64(reply, k).ok_or_else(|| bad(k));
        let in_ram = |k: &str| json_u64(ram, k).ok_or_else(|| bad(k));
        Ok(MigrateStats {
            total_ms: top("total-time")?,
            downtime_ms: top("downtime")?,
            transferred: in_ram("transferred")?,
            duplicate: in_ram("duplicate")?,
            total: in_ram("total")?,
            rounds: in_ram("dirty-sync-count")?,
            downtime_bytes: json_u64(ram, "downtime-bytes"),
        })
    }
}

/// The unsigned integer value of the first `"key": <n>` in `json`.
fn json_u64(json: &str, key: &str) -> Option<u64> {
    let re = Regex::new(&format!(r#""{}"\s*:\s*(\d+)"#, regex_escape(key))).ok()?;
    re.captures(json)?.get(1)?.as_str().parse().ok()
}

/// The string value of the first `"key": "<s>"` in `json` (escapes kept).
fn json_str(json: &str, key: &str) -> Option<String> {
    let re = Regex::new(&format!(
        r#""{}"\s*:\s*"((?:[^"\\]|\\.)*)""#,
        regex_escape(key)
    ))
    .ok()?;
    Some(re.captures(json)?.get(1)?.as_str().to_string())
}

/// The text of the object `"key": {...}` (without nested objects, as
/// `ram` in `query-migrate`).
fn object<'a>(json: &'a str, key: &str) -> Option<&'a str> {
    let re = Regex::new(&format!(r#""{}"\s*:\s*\{{[^{{}}]*\}}"#, regex_escape(key))).ok()?;
    re.find(json).map(|m| m.as_str())
}

fn regex_escape(s: &str) -> String {
    hv_tests::regex::escape(s)
}

/// A complete serial line and when the host read it (seconds since the
/// start of the run).
#[derive(Debug, Clone, PartialEq)]
struct Line {
    t: f64,
    text: String,
}

/// A `dirty: count <n> tsc <t> gap <g>` line.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Count {
    count: u64,
    tsc: u64,
    t: f64,
}

fn count_line(text: &str, t: f64) -> Option<Count> {
    let rest = text.trim_end_matches('\r').strip_prefix("dirty: count ")?;
    let (n, tsc) = rest.split_once(" tsc ")?;
    Some(Count {
        count: n.parse().ok()?,
        // `tsc <t> gap <g>`: the gap (TSC ticks between wake-ups) is not used here.
        tsc: tsc.split_whitespace().next()?.parse().ok()?,
        t,
    })
}

/// The source's last `count` line and the destination's first, plus the
/// source's lines to rate its TSC.
#[derive(Debug, Clone, PartialEq)]
struct Handover {
    first_src: Count,
    last_src: Count,
    first_dst: Count,
}

impl Handover {
    /// The TSC gap across the switch-over in ms, minus 500 ms, at the
    /// TSC rate the source's lines show against the host clock.
    fn tsc_gap_ms(&self) -> Option<f64> {
        let (a, b) = (self.first_src, self.last_src);
        if b.count < a.count + 4 || b.t <= a.t {
            return None;
        }
        let hz = b.tsc.checked_sub(a.tsc)? as f64 / (b.t - a.t);
        let gap = self.first_dst.tsc.checked_sub(b.tsc)? as f64;
        Some(gap / hz * 1000.0 - COUNT_SPACING_MS)
    }
}

/// Finds the handover. A line cut by the switch-over starts on the source
/// (its unterminated `src_tail`) and ends on the destination, so the tail is
/// put in front of the destination's first line.
fn handover(src: &[Line], src_tail: &str, dst: &[Line]) -> Option<Handover> {
    let counts: Vec<Count> = src
        .iter()
        .filter_map(|l| count_line(&l.text, l.t))
        .collect();
    let first_dst = dst.iter().enumerate().find_map(|(i, l)| {
        if i == 0 && !src_tail.is_empty() {
            count_line(&format!("{src_tail}{}", l.text), l.t)
        } else {
            count_line(&l.text, l.t)
        }
    })?;
    Some(Handover {
        first_src: *counts.first()?,
        last_src: *counts.last()?,
        first_dst,
    })
}

/// A QEMU's serial output: complete lines, and what follows the last
/// newline.
#[derive(Debug, Default, Clone)]
struct Serial {
    lines: Vec<Line>,
    tail: String,
}

/// Reads `out` until EOF into `serial`, stamping each line.
fn read_serial(mut out: impl Read, serial: Arc<Mutex<Serial>>, epoch: Instant) {
    let mut buf = [0u8; 4096];
    let mut pending = Vec::new();
    while let Ok(n) = out.read(&mut buf) {
        if n == 0 {
            break;
        }
        let t = epoch.elapsed().as_secs_f64();
        pending.extend_from_slice(&buf[..n]);
        let mut s = serial.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(i) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=i).collect();
            let text = String::from_utf8_lossy(&line[..i])
                .trim_end_matches('\r')
                .to_string();
            s.lines.push(Line { t, text });
        }
        s.tail = String::from_utf8_lossy(&pending).into_owned();
    }
}

/// One QEMU: its process, its serial output and the thread reading it.
struct Proc {
    name: String,
    child: Child,
    serial: Arc<Mutex<Serial>>,
    reader: Option<JoinHandle<()>>,
}

/// The two QEMUs and their temporary directory; dropping it kills both
/// and removes the directory.
struct Run {
    dir: PathBuf,
    procs: Vec<Proc>,
}

impl Run {
    fn new() -> Result<Run, String> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let dir = std::env::temp_dir().join(format!(
            "hv-qemu-migrate-{}-{nanos:08x}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        Ok(Run {
            dir,
            procs: Vec::new(),
        })
    }

    /// Starts a QEMU named `name` (index into `procs` returned); with
    /// `incoming` it waits for a migration on that port.
    fn spawn(
        &mut self,
        name: &str,
        image: &Path,
        mem_mib: u64,
        rate: u64,
        incoming: Option<u16>,
        epoch: Instant,
    ) -> Result<usize, String> {
        let mut c = Command::new("qemu-system-x86_64");
        c.args([
            "-machine",
            "pc",
            "-accel",
            "tcg",
            "-nodefaults",
            "-smp",
            "1",
        ])
        .args(["-m", &mem_mib.to_string()])
        .arg("-kernel")
        .arg(image)
        .args(["-append", &rate.to_string()])
        .args(["-display", "none", "-monitor", "none", "-serial", "stdio"])
        .arg("-no-reboot")
        .arg("-qmp")
        .arg(format!(
            "unix:{},server=on,wait=off",
            self.dir.join(format!("{name}.qmp")).display()
        ));
        if let Some(port) = incoming {
            c.args(["-incoming", &format!("tcp:127.0.0.1:{port}")]);
        }
        let log = std::fs::File::create(self.dir.join(format!("{name}.log")))
            .map_err(|e| format!("cannot create the {name} log: {e}"))?;
        c.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(log);
        let mut child = c
            .spawn()
            .map_err(|e| format!("cannot start qemu-system-x86_64: {e}"))?;
        let serial = Arc::new(Mutex::new(Serial::default()));
        let reader = child.stdout.take().map(|out| {
            let s = Arc::clone(&serial);
            thread::spawn(move || read_serial(out, s, epoch))
        });
        self.procs.push(Proc {
            name: name.to_string(),
            child,
            serial,
            reader,
        });
        Ok(self.procs.len() - 1)
    }

    /// An error naming the first QEMU that has exited, with its stderr.
    fn check_alive(&mut self) -> Result<(), String> {
        for Proc { name, child, .. } in &mut self.procs {
            if let Ok(Some(status)) = child.try_wait() {
                let log = std::fs::read_to_string(self.dir.join(format!("{name}.log")))
                    .unwrap_or_default();
                return Err(format!("{name} QEMU exited ({status}): {}", log.trim()));
            }
        }
        Ok(())
    }

    /// Connects to QEMU `name`'s QMP socket once it exists.
    fn qmp(&mut self, name: &str) -> Result<Qmp, String> {
        let path = self.dir.join(format!("{name}.qmp"));
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match UnixStream::connect(&path) {
                Ok(s) => return Qmp::handshake(s, &path),
                Err(e) if Instant::now() > deadline => {
                    return Err(format!("cannot connect to QMP at {}: {e}", path.display()));
                }
                Err(_) => {
                    self.check_alive()?;
                    thread::sleep(Duration::from_millis(50));
                }
            }
        }
    }

    /// Waits until QEMU `i` has printed a `count` line.
    fn wait_for_count(&mut self, i: usize, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            {
                let s = self.procs[i]
                    .serial
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                if s.lines.iter().any(|l| count_line(&l.text, 0.0).is_some()) {
                    return Ok(());
                }
                if Instant::now() > deadline {
                    let last: Vec<&str> = s
                        .lines
                        .iter()
                        .rev()
                        .take(5)
                        .map(|l| l.text.as_str())
                        .collect();
                    return Err(format!(
                        "no `dirty: count` line after {} s (last lines: {last:?}, tail {:?})",
                        timeout.as_secs(),
                        s.tail
                    ));
                }
            }
            self.check_alive()?;
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills both QEMUs and returns their whole serial output.
    fn finish(&mut self) -> [Serial; 2] {
        self.kill_all();
        let mut out = self
            .procs
            .iter()
            .map(|p| p.serial.lock().unwrap_or_else(|e| e.into_inner()).clone());
        [
            out.next().unwrap_or_default(),
            out.next().unwrap_or_default(),
        ]
    }

    fn kill_all(&mut self) {
        for p in &mut self.procs {
            let _ = p.child.kill();
            let _ = p.child.wait();
            if let Some(r) = p.reader.take() {
                let _ = r.join();
            }
        }
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        self.kill_all();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A QMP connection (capabilities negotiated).
struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Qmp {
    /// Reads the greeting and negotiates capabilities on `stream`.
    fn handshake(stream: UnixStream, path: &Path) -> Result<Qmp, String> {
        let err = |e: std::io::Error| format!("QMP {}: {e}", path.display());
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .map_err(err)?;
        let writer = stream.try_clone().map_err(err)?;
        let mut q = Qmp {
            reader: BufReader::new(stream),
            writer,
        };
        let greeting = q.line()?;
        if !greeting.contains("\"QMP\"") {
            return Err(format!("not a QMP greeting: {}", greeting.trim()));
        }
        q.execute("qmp_capabilities", "{}")?;
        Ok(q)
    }

    fn line(&mut self) -> Result<String, String> {
        let mut l = String::new();
        match self.reader.read_line(&mut l) {
            Ok(0) => Err("QMP connection closed".into()),
            Ok(_) => Ok(l),
            Err(e) => Err(format!("QMP read: {e}")),
        }
    }

    /// Runs `command` with `arguments` (a JSON object); returns the reply
    /// line (events in between are skipped), or QEMU's error.
    fn execute(&mut self, command: &str, arguments: &str) -> Result<String, String> {
        let msg = format!("{{\"execute\": \"{command}\", \"arguments\": {arguments}}}\n");
        self.writer
            .write_all(msg.as_bytes())
            .map_err(|e| format!("QMP write: {e}"))?;
        loop {
            let l = self.line()?;
            if l.contains("\"return\"") {
                return Ok(l);
            }
            if l.contains("\"error\"") {
                return Err(format!(
                    "QMP {command}: {}",
                    json_str(&l, "desc").unwrap_or_else(|| l.trim().to_string())
                ));
            }
        }
    }
}

/// `cargo xtask bench migrate-qemu [--mem MIB] [--rate N] [--bandwidth
/// MIBPS] [--downtime MS] [--warmup S] [--image PATH]`.
pub fn main(args: &[String]) -> crate::Result {
    let mut mem = 64u64;
    let mut rate = 100u64;
    let mut bandwidth = 0.7f64;
    let mut downtime = 300u64;
    let mut warmup = 20u64;
    let mut image = None;
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let value = it
            .next()
            .ok_or_else(|| format!("bench migrate-qemu: {flag} needs a value"))?;
        let bad = || format!("bench migrate-qemu: bad {flag} '{value}'");
        match flag.as_str() {
            "--mem" => mem = value.parse().ok().filter(|m| *m >= 8).ok_or_else(bad)?,
            "--rate" => rate = value.parse().map_err(|_| bad())?,
            "--bandwidth" => {
                bandwidth = value
                    .parse()
                    .ok()
                    .filter(|b: &f64| *b > 0.0)
                    .ok_or_else(bad)?
            }
            "--downtime" => downtime = value.parse().map_err(|_| bad())?,
            "--warmup" => warmup = value.parse().map_err(|_| bad())?,
            "--image" => image = Some(PathBuf::from(value)),
            _ => {
                return Err(format!(
                    "bench migrate-qemu: unexpected argument '{flag}' (expected --mem MIB, --rate N, --bandwidth MIBPS, --downtime MS, --warmup S, --image PATH)"
                ));
            }
        }
    }
    if hv_tests::host::find_command("qemu-system-x86_64").is_none() {
        return Err("bench migrate-qemu: qemu-system-x86_64 is missing (cargo xtask setup)".into());
    }
    let image = match image {
        Some(p) => p,
        None => {
            crate::setup::rust_targets()?;
            crate::build_guests()?;
            crate::guest_path("dirty")
        }
    };
    let bytes_per_s = (bandwidth * 1048576.0).round() as u64;
    let wall = Instant::now();
    let f = qemu_migration(
        &image,
        mem,
        rate,
        bytes_per_s,
        downtime,
        Duration::from_secs(warmup),
    )?;
    println!("{}", summary(mem, rate, bandwidth, &f));
    eprintln!("xtask: wall {:.1} s", wall.elapsed().as_secs_f64());
    Ok(())
}

/// One line of figures.
fn summary(mem: u64, rate: u64, bandwidth: f64, f: &QemuFigures) -> String {
    let mib = |b: u64| b as f64 / 1048576.0;
    format!(
        "qemu {mem} MiB, {rate} pages/s, {bandwidth} MiB/s: total {:.2} s, downtime {:.0} ms (QEMU), guest gap {:.0} ms (host clock; {} by its TSC), {} rounds, {:.2} MiB sent, {} zero pages, last round {}, counter {} ({} -> {})",
        f.total_s,
        f.downtime_ms,
        f.guest_gap_ms,
        f.guest_tsc_gap_ms
            .map_or("n/a".to_string(), |g| format!("{g:.0} ms")),
        f.rounds,
        mib(f.bytes),
        f.zero_pages,
        f.last_round_bytes.map_or("n/a".to_string(), |b| format!(
            "{:.1} KiB",
            b as f64 / 1024.0
        )),
        if f.counter_ok { "ok" } else { "BROKEN" },
        f.counts.0,
        f.counts.1,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reply captured from QEMU 7.2 (64 MiB guest, 100 pages/s, 0.7 MiB/s).
    const COMPLETED: &str = r#"{"return": {"status": "completed", "setup-time": 1, "downtime": 1, "total-time": 10817, "ram": {"total": 67641344, "postcopy-requests": 0, "dirty-sync-count": 10, "multifd-bytes": 0, "pages-per-second": 180, "downtime-bytes": 205200, "page-size": 4096, "remaining": 0, "postcopy-bytes": 0, "mbps": 6.2172921597633142, "transferred": 8292124, "dirty-sync-missed-zero-copy": 0, "precopy-bytes": 8086924, "duplicate": 15625, "dirty-pages-rate": 0, "skipped": 0, "normal-bytes": 8134656, "normal": 1986}}}"#;

    #[test]
    fn parses_a_completed_query_migrate() {
        assert_eq!(json_str(COMPLETED, "status").as_deref(), Some("completed"));
        assert_eq!(
            MigrateStats::parse(COMPLETED),
            Ok(MigrateStats {
                total_ms: 10817,
                downtime_ms: 1,
                transferred: 8292124,
                duplicate: 15625,
                total: 67641344,
                rounds: 10,
                downtime_bytes: Some(205200),
            })
        );
    }

    #[test]
    fn total_is_not_total_time() {
        // "total-time" comes first at the top level; "total" is in ram.
        let ram = object(COMPLETED, "ram").expect("ram object");
        assert_eq!(json_u64(ram, "total"), Some(67641344));
        assert_eq!(json_u64(COMPLETED, "total-time"), Some(10817));
    }

    #[test]
    fn a_failed_migration_gives_its_error() {
        let r = r#"{"return": {"status": "failed", "error-desc": "Unable to write to socket: Broken \"pipe\""}}"#;
        assert_eq!(json_str(r, "status").as_deref(), Some("failed"));
        assert_eq!(
            json_str(r, "error-desc").as_deref(),
            Some(r#"Unable to write to socket: Broken \"pipe\""#)
        );
        assert!(MigrateStats::parse(r).is_err());
    }

    #[test]
    fn older_qemu_without_downtime_bytes() {
        let r = COMPLETED.replace(r#""downtime-bytes": 205200, "#, "");
        assert_eq!(MigrateStats::parse(&r).map(|s| s.downtime_bytes), Ok(None));
    }

    fn lines(v: &[(f64, &str)]) -> Vec<Line> {
        v.iter()
            .map(|(t, s)| Line {
                t: *t,
                text: s.to_string(),
            })
            .collect()
    }

    fn source() -> Vec<Line> {
        lines(&[
            (1.0, "dirty: 15612 pages, 100 pages/s"),
            (1.5, "dirty: count 1 tsc 1000000000"),
            (2.0, "dirty: count 2 tsc 2000000000"),
            (2.5, "dirty: count 3 tsc 3000000000"),
            (3.0, "dirty: count 4 tsc 4000000000"),
            (3.5, "dirty: count 5 tsc 5000000000"),
        ])
    }

    #[test]
    fn a_continuous_counter() {
        let dst = lines(&[
            (4.2, "dirty: count 6 tsc 6000000000 gap 10000"),
            (4.7, "dirty: count 7 tsc 7000000000"),
        ]);
        let h = handover(&source(), "", &dst).expect("handover");
        assert_eq!((h.last_src.count, h.first_dst.count), (5, 6));
        assert!((h.first_dst.t - h.last_src.t - 0.7).abs() < 1e-9);
        // 2 GHz by the source's lines; the guest saw exactly 500 ms.
        let g = h.tsc_gap_ms().expect("tsc gap");
        assert!(g.abs() < 1e-6, "{g}");
    }

    #[test]
    fn a_gap_or_a_repeat_is_seen() {
        let gap = lines(&[(4.2, "dirty: count 7 tsc 7000000000")]);
        let h = handover(&source(), "", &gap).expect("handover");
        assert_ne!(h.first_dst.count, h.last_src.count + 1);
        let repeat = lines(&[(4.2, "dirty: count 5 tsc 5000000000")]);
        let h = handover(&source(), "", &repeat).expect("handover");
        assert_ne!(h.first_dst.count, h.last_src.count + 1);
    }

    #[test]
    fn a_line_cut_by_the_switch_over_is_joined() {
        let dst = lines(&[
            (4.1, "c 6000000000"),
            (4.6, "dirty: count 7 tsc 7000000000"),
        ]);
        let h = handover(&source(), "dirty: count 6 ts", &dst).expect("handover");
        assert_eq!(
            (h.last_src.count, h.first_dst.count, h.first_dst.tsc),
            (5, 6, 6000000000)
        );
    }

    #[test]
    fn nothing_on_the_destination() {
        assert!(handover(&source(), "", &[]).is_none());
        assert!(handover(&source(), "", &lines(&[(4.0, "garbage")])).is_none());
    }

    #[test]
    fn reads_lines_with_a_tail() {
        let s = Arc::new(Mutex::new(Serial::default()));
        read_serial(&b"a\r\nb\nc"[..], Arc::clone(&s), Instant::now());
        let s = s.lock().expect("lock");
        let texts: Vec<&str> = s.lines.iter().map(|l| l.text.as_str()).collect();
        assert_eq!((texts, s.tail.as_str()), (vec!["a", "b"], "c"));
    }
}
