//! A booted machine as a test sees it: an [`Instance`] plus its [`Console`],
//! with every failure turned into a message that carries the console and the
//! emulator's log.

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::console::{self, Console, ExpectError, Found, line_pattern};
use crate::emulator::{self, Emulator, ImageEdit, Instance, NetBackend, ReservedPort, Spec};
use crate::host;
use crate::image;
use crate::link::Link;
use crate::slots::{self, SlotGuard};

/// Console lines shown in a failure message.
const CONSOLE_TAIL: usize = 50;
/// Longest console line shown whole in a failure message (characters).
const CONSOLE_LINE_MAX: usize = 1000;
/// Emulator log lines shown in a failure message (per log file).
const LOG_TAIL: usize = 30;

/// A harness failure, with the console and log context in its message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error(pub String);

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

/// What the first prompt of a boot reported.
#[derive(Debug, Clone, PartialEq)]
pub struct Ready {
    /// Version in the loader's first line (`boot: hv loader <version>`).
    pub loader_version: String,
    /// The kernel's own share: loader start to prompt, in ms (emulated time).
    pub loader_to_prompt_ms: f64,
    /// Machine reset to prompt, in ms (emulated time).
    pub reset_to_prompt_ms: f64,
    /// Wall time from spawning the emulator to seeing the prompt.
    pub wall: Duration,
    /// The ready line as printed.
    pub line: String,
}

/// Regex of the kernel's ready line; groups 1 and 2 are the two times.
pub const READY_PATTERN: &str = r"hv: ready: loader-to-prompt (\d+(?:\.\d+)?) ms, reset-to-prompt (\d+(?:\.\d+)?) ms \(emulated time\)";
/// Regex of the loader's first line; group 1 is its version.
pub const LOADER_PATTERN: &str = r"boot: hv loader (\S+)";

/// Configures and starts a [`Machine`]: `Machine::qemu().cpus(2).start()`.
#[derive(Debug, Clone)]
#[must_use]
pub struct Builder {
    spec: Spec,
    image: Option<PathBuf>,
    edits: Vec<ImageEdit>,
    hostname: String,
    name: Option<String>,
    link: Option<Link>,
    forwards: Vec<u16>,
}

/// Starts with ports the harness picks (a link's server port, forwarded
/// ports) are retried with fresh ports this many times in all: another
/// process may take a port between the pick and the emulator's bind.
const PORT_ATTEMPTS: u32 = 3;

impl Builder {
    /// Number of CPUs (default 1).
    pub fn cpus(mut self, n: u32) -> Self {
        self.spec.cpus = n;
        self
    }

    /// Bochs CPU model (default `corei7_skylake_x`); ignored by QEMU.
    pub fn bochs_model(mut self, model: &str) -> Self {
        self.spec.bochs_model = model.to_string();
        self
    }

    /// Guest memory in MiB (default 256).
    pub fn memory_mib(mut self, mib: u32) -> Self {
        self.spec.memory_mib = mib;
        self
    }

    /// Attach the e1000 NIC (default true).
    pub fn nic(mut self, on: bool) -> Self {
        self.spec.nic = on;
        self
    }

    /// Boot this image instead of [`host::image_path`].
    pub fn image(mut self, path: impl Into<PathBuf>) -> Self {
        self.image = Some(path.into());
        self
    }

    /// Replace `/EFI/hv/hv.cfg` with `text`.
    pub fn config(self, text: &str) -> Self {
        self.write_file(image::CONFIG_PATH, text.as_bytes())
    }

    /// Remove `/EFI/hv/hv.cfg`.
    pub fn without_config(self) -> Self {
        self.delete_file(image::CONFIG_PATH)
    }

    /// Remove `/EFI/hv/kernel.elf`.
    pub fn without_kernel(self) -> Self {
        self.delete_file(image::KERNEL_PATH)
    }

    /// Write `contents` to `path` (absolute, `/`-separated) in the image copy.
    pub fn write_file(mut self, path: &str, contents: impl Into<Vec<u8>>) -> Self {
        self.edits.push(ImageEdit::Write {
            path: path.to_string(),
            contents: contents.into(),
        });
        self
    }

    /// Copy host file `source` to `path` in the image copy.
    pub fn copy_file(mut self, path: &str, source: impl Into<PathBuf>) -> Self {
        self.edits.push(ImageEdit::Copy {
            path: path.to_string(),
            source: source.into(),
        });
        self
    }

    /// Add a module: a file `name` in `/EFI/hv/modules`.
    pub fn module(self, name: &str, contents: impl Into<Vec<u8>>) -> Self {
        self.write_file(&format!("{}/{name}", image::MODULES_DIR), contents)
    }

    /// Delete `path` from the image copy.
    pub fn delete_file(mut self, path: &str) -> Self {
        self.edits.push(ImageEdit::Delete(path.to_string()));
        self
    }

    /// Create directory `path` in the image copy.
    pub fn mkdir(mut self, path: &str) -> Self {
        self.edits.push(ImageEdit::Mkdir(path.to_string()));
        self
    }

    /// The hostname the prompt shows (default `hv`): [`Machine::expect_prompt`]
    /// waits for `<hostname>> `.
    pub fn hostname(mut self, hostname: &str) -> Self {
        self.hostname = hostname.to_string();
        self
    }

    /// Plug the e1000 into `link` instead of the default backend (see
    /// [`Link`]): the first machine started on it listens, the second
    /// connects. The link must be for this emulator.
    pub fn link(mut self, link: &Link) -> Self {
        self.link = Some(link.clone());
        self
    }

    /// Plug the e1000 into the third port of a Bochs link's hub (see
    /// [`Link::bochs_with_peer`]) as a host of its own, QEMU or Bochs (a
    /// QEMU host on a Bochs network: TESTBED.md), with MAC `mac`.
    pub fn hub_station(self, link: &Link, mac: &str) -> Self {
        let port = link
            .peer_port()
            .expect("hub_station needs a link with a third port (Link::bochs_with_peer)");
        self.hub_port(port, mac)
    }

    /// Plug the e1000 into hub port `port` of a Bochs link (`B + 2k` for
    /// port k: [`Link::port`]) as a host of its own, QEMU or Bochs: for a
    /// host booted in place of one that died on that port.
    pub fn hub_port(mut self, port: u16, mac: &str) -> Self {
        self.spec.nic = true;
        self.spec.mac = Some(mac.to_string());
        self.spec.net = match self.spec.emulator {
            Emulator::Bochs => crate::emulator::NetBackend::BochsHub { port },
            _ => crate::emulator::NetBackend::Dgram { port },
        };
        self
    }

    /// QEMU only: forward a free TCP port of 127.0.0.1, picked at the start,
    /// to `guest_port` of the guest on the user-mode network (the guest is
    /// 10.0.2.15/24, the host 10.0.2.2). [`Machine::forwarded_port`] tells
    /// which port. May be called several times.
    pub fn user_net_forward(mut self, guest_port: u16) -> Self {
        self.forwards.push(guest_port);
        self
    }

    /// The e1000's MAC address (default: the emulator's, or the link's).
    pub fn mac(mut self, mac: &str) -> Self {
        self.spec.mac = Some(mac.to_string());
        self
    }

    /// Append an argument to QEMU's command line.
    pub fn qemu_arg(mut self, arg: &str) -> Self {
        self.spec.extra_qemu_args.push(arg.to_string());
        self
    }

    /// Append a line to the `.bxrc`.
    pub fn bochs_line(mut self, line: &str) -> Self {
        self.spec.extra_bochs_lines.push(line.to_string());
        self
    }

    /// Name used in failure messages and for kept logs (default: the
    /// current thread's name, which libtest sets to the test's name).
    pub fn name(mut self, name: &str) -> Self {
        self.name = Some(name.to_string());
        self
    }

    /// The machine that will be emulated.
    pub fn spec(&self) -> &Spec {
        &self.spec
    }

    /// Starts the emulator without a [`Console`] (for a caller that bridges
    /// the serial port itself, like `cargo xtask run`).
    pub fn spawn(&self) -> Result<Instance, Error> {
        let img = self.image.clone().unwrap_or_else(host::image_path);
        Instance::spawn(&self.spec, &img, &self.edits).map_err(|e| {
            Error(format!(
                "[{}] {}: {e}",
                self.display_name(),
                self.spec.emulator
            ))
        })
    }

    /// Starts the emulator and connects the console; does not wait for the
    /// boot (see [`Machine::boot_to_prompt`]). Waits first for a free
    /// emulator slot (see [`crate::slots`]) unless the machine is on a
    /// [`Link`], which holds slots for its machines. A machine on a link
    /// is plugged in when this returns.
    pub fn try_start(self) -> Result<Machine, Error> {
        let name = self.display_name();
        let emu = self.spec.emulator;
        let fail = |e: &str| Error(format!("[{name}] {emu}: {e}"));
        if self.link.is_some() && !self.forwards.is_empty() {
            return Err(fail("a machine on a link cannot also forward ports"));
        }
        if (self.link.is_some() || !self.forwards.is_empty()) && !self.spec.nic {
            return Err(fail("a link or a port forward needs the NIC (nic(true))"));
        }
        if !self.forwards.is_empty() && emu == Emulator::Bochs {
            return Err(fail("port forwards need QEMU's user-mode network"));
        }
        let slot = self.link.is_none().then(|| slots::acquire(1));
        let img = self.image.clone().unwrap_or_else(host::image_path);
        let mut spec = self.spec.clone();
        let mut failures: Vec<String> = Vec::new();
        let mut attempt = 0;
        let (instance, ports, link) = loop {
            attempt += 1;
            let mut ports = Vec::new();
            let mut link = None;
            if !self.forwards.is_empty() {
                let mut fwds = Vec::new();
                for &guest in &self.forwards {
                    let host = emulator::reserve_port()
                        .map_err(|e| fail(&format!("cannot pick a port: {e}")))?;
                    ports.push(ReservedPort(host));
                    fwds.push((host, guest));
                }
                spec.net = NetBackend::UserForward(fwds);
                spec.capture = true;
            }
            if let Some(l) = &self.link {
                let (index, backend, mac) = l.plan(emu).map_err(|e| fail(&e))?;
                spec.net = backend;
                if self.spec.mac.is_none() {
                    spec.mac = Some(mac);
                }
                spec.capture = emu.is_qemu();
                link = Some((l.clone(), index));
            }
            match Instance::spawn(&spec, &img, &self.edits) {
                Ok(i) => break (i, ports, link),
                Err(e) => {
                    failures.push(e);
                    // Only ports the harness picked can be picked again.
                    let repick = match &link {
                        Some((l, 0)) if emu.is_qemu() => l.repick_port().is_ok(),
                        Some(_) => false,
                        None => !self.forwards.is_empty(),
                    };
                    if !repick || attempt >= PORT_ATTEMPTS {
                        return Err(fail(&failures.join("\n")));
                    }
                }
            }
        };
        let log = fs::File::create(instance.dir().join("serial.log")).ok();
        let stream = instance
            .serial()
            .try_clone()
            .map_err(|e| Error(format!("[{name}] cannot clone the console socket: {e}")))?;
        let console = Console::new(stream, log)
            .map_err(|e| Error(format!("[{name}] cannot start the console reader: {e}")))?;
        let forwards = match &spec.net {
            NetBackend::UserForward(f) => f.iter().map(|&(h, g)| (g, h)).collect(),
            _ => Vec::new(),
        };
        let machine = Machine {
            instance,
            console,
            name,
            hostname: self.hostname,
            link,
            forwards,
            _ports: ports,
            _slot: slot,
        };
        if let Some((l, index)) = &machine.link {
            let pid = machine.instance.pid().unwrap_or(0);
            if let Err(e) = l.plugged(*index, pid) {
                return Err(Error(machine.report(&e)));
            }
        }
        Ok(machine)
    }

    /// [`Builder::try_start`], panicking on failure.
    #[track_caller]
    pub fn start(self) -> Machine {
        or_panic(self.try_start())
    }

    fn display_name(&self) -> String {
        self.name
            .clone()
            .or_else(|| std::thread::current().name().map(str::to_string))
            .unwrap_or_else(|| "hv".to_string())
    }
}

/// A running emulator and its console. Dropping it kills the emulator.
///
/// Keep it on the thread that started it: the emulator is also killed when
/// that thread dies (see [`crate::emulator`]).
pub struct Machine {
    instance: Instance,
    console: Console,
    name: String,
    hostname: String,
    /// The link and this machine's index on it.
    link: Option<(Link, usize)>,
    /// `(guest port, host port)` forwards.
    forwards: Vec<(u16, u16)>,
    // Dropped after the emulator is killed (in `Drop::drop`).
    _ports: Vec<ReservedPort>,
    _slot: Option<SlotGuard>,
}

impl fmt::Debug for Machine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Machine")
            .field("name", &self.name)
            .field("instance", &self.instance)
            .finish_non_exhaustive()
    }
}

impl Machine {
    /// A builder for `emulator` with the defaults.
    pub fn builder(emulator: Emulator) -> Builder {
        Builder {
            spec: Spec::new(emulator),
            image: None,
            edits: Vec::new(),
            hostname: "hv".to_string(),
            name: None,
            link: None,
            forwards: Vec::new(),
        }
    }

    /// A builder for QEMU (TCG).
    pub fn qemu() -> Builder {
        Self::builder(Emulator::Qemu)
    }

    /// A builder for Bochs.
    pub fn bochs() -> Builder {
        Self::builder(Emulator::Bochs)
    }

    /// The emulator kind.
    pub fn emulator(&self) -> Emulator {
        self.instance.spec().emulator
    }

    /// The running instance.
    pub fn instance(&self) -> &Instance {
        &self.instance
    }

    /// The instance's temporary directory.
    pub fn dir(&self) -> &Path {
        self.instance.dir()
    }

    /// The e1000's MAC address (`None` without a NIC).
    pub fn mac(&self) -> Option<String> {
        self.instance.spec().effective_mac()
    }

    /// The link this machine is on and its index there (0: started first).
    pub fn link(&self) -> Option<(&Link, usize)> {
        self.link.as_ref().map(|(l, i)| (l, *i))
    }

    /// The port of 127.0.0.1 forwarded to `guest_port`, if
    /// [`Builder::user_net_forward`] asked for it.
    pub fn try_forwarded_port(&self, guest_port: u16) -> Option<u16> {
        self.forwards
            .iter()
            .find(|(g, _)| *g == guest_port)
            .map(|(_, h)| *h)
    }

    /// [`Machine::try_forwarded_port`], panicking when there is none.
    #[track_caller]
    pub fn forwarded_port(&self, guest_port: u16) -> u16 {
        self.try_forwarded_port(guest_port).unwrap_or_else(|| {
            self.fail(&format!(
                "guest port {guest_port} is not forwarded (Builder::user_net_forward)"
            ))
        })
    }

    /// Sets the hostname [`Machine::expect_prompt`] waits for.
    pub fn set_hostname(&mut self, hostname: &str) {
        self.hostname = hostname.to_string();
    }

    /// The regex of the prompt: `<hostname>> ` at the start of a line.
    pub fn prompt_pattern(&self) -> String {
        format!(r"(?m)^{}> ", regex::escape(&self.hostname))
    }

    /// Default timeout of a console command in this emulator.
    pub fn command_timeout(&self) -> Duration {
        self.emulator().command_timeout()
    }

    /// Everything the console has printed so far, made readable.
    pub fn output(&self) -> String {
        console::readable(&self.console.output())
    }

    /// Everything the console has printed so far, byte for byte: escape
    /// sequences and control characters included (the firmware's screen
    /// drawing too), for tests about what reaches the operator's terminal.
    pub fn raw_output(&self) -> Vec<u8> {
        self.console.output()
    }

    /// A failure message: `what`, the last console lines and the emulator's
    /// log tail.
    pub fn report(&self, what: &str) -> String {
        let mut s = format!(
            "[{}] {}: {what}\n--- last {CONSOLE_TAIL} console lines ---\n{}\n",
            self.name,
            self.emulator(),
            console::shorten_lines(
                &console::last_lines(&self.output(), CONSOLE_TAIL),
                CONSOLE_LINE_MAX
            ),
        );
        s.push_str(&self.instance.log_tail(LOG_TAIL));
        if let Some(how) = self.instance.exited() {
            s.push_str(&format!("--- the emulator {how} ---\n"));
        }
        for f in self.instance.failed_starts() {
            s.push_str(&format!("(earlier {f})\n"));
        }
        s
    }

    /// Panics with [`Machine::report`]`(what)`.
    #[track_caller]
    pub fn fail(&self, what: &str) -> ! {
        panic!("{}", self.report(what))
    }

    /// Panics with the report unless `ok`.
    #[track_caller]
    pub fn check(&self, ok: bool, what: impl FnOnce() -> String) {
        if !ok {
            self.fail(&what());
        }
    }

    /// Sends raw bytes to the console.
    pub fn try_send_raw(&mut self, bytes: &[u8]) -> Result<(), Error> {
        self.console
            .send_raw(bytes)
            .map_err(|e| Error(self.report(&format!("cannot send {bytes:?}: {e}"))))
    }

    /// Sends raw bytes to the console, panicking on failure.
    #[track_caller]
    pub fn send_raw(&mut self, bytes: &[u8]) {
        or_panic(self.try_send_raw(bytes));
    }

    /// Sends `line` and `\r`.
    pub fn try_send_line(&mut self, line: &str) -> Result<(), Error> {
        self.console
            .send_line(line)
            .map_err(|e| Error(self.report(&format!("cannot send {line:?}: {e}"))))
    }

    /// Sends `line` and `\r`, panicking on failure.
    #[track_caller]
    pub fn send_line(&mut self, line: &str) {
        or_panic(self.try_send_line(line));
    }

    /// Waits for `pattern` (a regex) in the output after the previous
    /// match's end.
    pub fn try_expect(&mut self, pattern: &str, timeout: Duration) -> Result<Found, Error> {
        self.expect_after(pattern, timeout, "")
    }

    /// [`Machine::try_expect`], the failure message starting with `context`.
    fn expect_after(
        &mut self,
        pattern: &str,
        timeout: Duration,
        context: &str,
    ) -> Result<Found, Error> {
        self.console.expect(pattern, timeout).map_err(|e| {
            let what = context.to_string()
                + &match e {
                    ExpectError::BadPattern(m) => format!("bad pattern /{pattern}/: {m}"),
                    ExpectError::Timeout => format!(
                        "timed out after {:.1} s waiting for /{pattern}/",
                        timeout.as_secs_f64()
                    ),
                    ExpectError::Closed(why) => format!("{why} while waiting for /{pattern}/"),
                };
            Error(self.report(&what))
        })
    }

    /// [`Machine::try_expect`], panicking on failure.
    #[track_caller]
    pub fn expect(&mut self, pattern: &str, timeout: Duration) -> Found {
        or_panic(self.try_expect(pattern, timeout))
    }

    /// Waits for a whole line (fully received) matching `pattern`.
    #[track_caller]
    pub fn expect_line(&mut self, pattern: &str, timeout: Duration) -> Found {
        self.expect(&line_pattern(pattern), timeout)
    }

    /// Waits for the prompt.
    pub fn try_expect_prompt(&mut self, timeout: Duration) -> Result<Found, Error> {
        let p = self.prompt_pattern();
        self.try_expect(&p, timeout)
    }

    /// Waits for the prompt, panicking on failure.
    #[track_caller]
    pub fn expect_prompt(&mut self, timeout: Duration) -> Found {
        or_panic(self.try_expect_prompt(timeout))
    }

    /// Sends `cmd` and returns its output: the text up to the next prompt,
    /// without the echoed command line, with `\n` line endings and no
    /// trailing newline. Call it at a prompt.
    pub fn try_command(&mut self, cmd: &str, timeout: Duration) -> Result<String, Error> {
        self.try_send_line(cmd)?;
        let p = self.prompt_pattern();
        let f = self.expect_after(&p, timeout, &format!("sent `{cmd}`, then "))?;
        Ok(command_output(cmd, &f.before))
    }

    /// Sends `cmd` and returns its output, found after the prompt line that
    /// echoes it: unlike [`Machine::cmd`] it cannot take a prompt the
    /// console reprinted after an asynchronous line (a guest's output, an
    /// FT event) for the end of this command.
    #[track_caller]
    pub fn cmd_echoed(&mut self, cmd: &str) -> String {
        let t = self.command_timeout();
        self.send_line(cmd);
        // The prompt before the echo may have been consumed already (by
        // the boot, or a previous command).
        let echo = format!(
            r"(?m)(?:^|{}> ){}[ \t]*\r?\n",
            regex::escape(&self.hostname),
            regex::escape(cmd)
        );
        or_panic(self.expect_after(&echo, t, &format!("sent `{cmd}`, then ")));
        let f = self.expect_prompt(t);
        command_output("", &f.before)
    }

    /// [`Machine::try_command`], panicking on failure.
    #[track_caller]
    pub fn command(&mut self, cmd: &str, timeout: Duration) -> String {
        or_panic(self.try_command(cmd, timeout))
    }

    /// [`Machine::command`] with the emulator's default command timeout.
    #[track_caller]
    pub fn cmd(&mut self, cmd: &str) -> String {
        let t = self.command_timeout();
        self.command(cmd, t)
    }

    /// Waits for a complete boot: the loader's first line, the kernel's ready
    /// line and the prompt, all within the emulator's boot timeout counted
    /// from the spawn.
    pub fn try_boot_to_prompt(&mut self) -> Result<Ready, Error> {
        let start = self.instance.spawned_at();
        let deadline = start + self.emulator().boot_timeout();
        let left = || deadline.saturating_duration_since(Instant::now());
        let loader = self.try_expect(&line_pattern(LOADER_PATTERN), left())?;
        let ready = self.try_expect(&line_pattern(READY_PATTERN), left())?;
        self.try_expect_prompt(left())?;
        let wall = start.elapsed();
        Ok(Ready {
            loader_version: loader.get(1).unwrap_or_default().to_string(),
            loader_to_prompt_ms: ready.float(1),
            reset_to_prompt_ms: ready.float(2),
            wall,
            line: ready.text.trim_end().to_string(),
        })
    }

    /// [`Machine::try_boot_to_prompt`], panicking on failure.
    #[track_caller]
    pub fn boot_to_prompt(&mut self) -> Ready {
        or_panic(self.try_boot_to_prompt())
    }

    /// Output received but not consumed by an expect yet, made readable.
    pub fn pending(&self) -> String {
        console::readable(&self.console.pending())
    }

    /// Kills the emulator now (dropping the machine does too).
    pub fn kill(&mut self) {
        self.instance.kill();
    }

    /// Copies the logs and generated configs of the instance directory to
    /// `target/hv-tests/logs/<name>-<emulator>-<pid>-<n>/` and returns that
    /// directory. Dropping a machine does this when its test panics, or always
    /// when `HV_KEEP_LOGS` is set.
    pub fn keep_logs(&self) -> Option<PathBuf> {
        static N: AtomicU32 = AtomicU32::new(0);
        let safe: String = self
            .name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let dest = host::workspace_root()
            .join("target")
            .join("hv-tests")
            .join("logs")
            .join(format!(
                "{safe}-{}-{}-{}",
                self.emulator(),
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
        fs::create_dir_all(&dest).ok()?;
        for entry in fs::read_dir(self.dir()).ok()?.flatten() {
            let p = entry.path();
            let is_file = entry.metadata().map(|m| m.is_file()).unwrap_or(false);
            let ext = p.extension().and_then(|e| e.to_str()).unwrap_or("");
            // Not the disk image nor the firmware: only text worth reading.
            if is_file && !matches!(ext, "img" | "fd" | "lock") {
                let _ = fs::copy(&p, dest.join(entry.file_name()));
            }
        }
        Some(dest)
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        self.instance.kill();
        let keep = std::thread::panicking() || std::env::var_os("HV_KEEP_LOGS").is_some();
        if keep && let Some(d) = self.keep_logs() {
            eprintln!(
                "[{}] console and emulator logs kept in {}",
                self.name,
                d.display()
            );
        }
    }
}

/// Unwraps `r`, panicking with the error's message at the caller's location.
#[track_caller]
fn or_panic<T>(r: Result<T, Error>) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("{e}"),
    }
}

/// The output of `cmd` from the console text between sending it and the
/// next prompt: line endings normalised, the echo of the command dropped.
pub fn command_output(cmd: &str, raw: &str) -> String {
    let text = raw.replace("\r\n", "\n").replace('\r', "");
    let text = match text.split_once('\n') {
        Some((first, rest)) if first.trim_end() == cmd.trim_end() => rest,
        None if text.trim_end() == cmd.trim_end() => "",
        _ => &text,
    };
    text.trim_end_matches('\n').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_output_drops_the_echo() {
        assert_eq!(
            command_output("version", "version\r\nhv 0.1.0 (boot abi 1)\r\n"),
            "hv 0.1.0 (boot abi 1)"
        );
        assert_eq!(command_output("log", "log\r\n"), "");
        assert_eq!(command_output("log", "log"), "");
        assert_eq!(
            command_output("x", "no echo\r\nline 2\r\n"),
            "no echo\nline 2"
        );
    }

    #[test]
    fn ready_pattern_matches_the_contract() {
        let re = regex::Regex::new(READY_PATTERN).unwrap();
        let c = re
            .captures("hv: ready: loader-to-prompt 35 ms, reset-to-prompt 2104 ms (emulated time)")
            .unwrap();
        assert_eq!((&c[1], &c[2]), ("35", "2104"));
        assert!(re.is_match(
            "hv: ready: loader-to-prompt 3.5 ms, reset-to-prompt 2104.25 ms (emulated time)"
        ));
    }
}
