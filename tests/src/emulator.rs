//! Emulator configurations and a running emulator process.
//!
//! The command line (QEMU) and the `.bxrc` (Bochs) are generated here and
//! nowhere else: `cargo xtask run`, `cargo xtask bench` and the system tests
//! all start emulators through [`Instance::spawn`].
//!
//! Every instance works in its own temporary directory: a private copy of the
//! disk image (a killed Bochs leaves `disk.img.lock` behind, and tests edit
//! their copy), a private OVMF variable store, and a serial console on a TCP
//! port of its own. The emulator runs in its own process group and is killed
//! (group and all) when the [`Instance`] is dropped; it also gets `SIGKILL`
//! from the kernel if the thread that started it dies without dropping it
//! (`PR_SET_PDEATHSIG`), so a test binary killed by Ctrl-C leaves no orphans.

use std::collections::HashSet;
use std::fmt;
use std::fs;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::host::{OVMF_CODE, OVMF_VARS, VGABIOS};
use crate::image;

/// Which emulator runs the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Emulator {
    /// QEMU with TCG (`-cpu max`): fast, no VT-x. ACPI tables, q35 chipset.
    Qemu,
    /// Bochs: slow, emulates VT-x with EPT. No ACPI tables under OVMF, i440fx.
    Bochs,
    /// QEMU with `-accel kvm -cpu host`: only where KVM offers nested VT-x
    /// (see [`crate::kvm_nested_available`]).
    QemuKvm,
}

impl Emulator {
    /// Short lower-case name (`qemu`, `bochs`, `kvm`), as `--emulator` takes it.
    pub fn name(self) -> &'static str {
        match self {
            Emulator::Qemu => "qemu",
            Emulator::Bochs => "bochs",
            Emulator::QemuKvm => "kvm",
        }
    }

    /// Parses [`Emulator::name`].
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "qemu" => Some(Emulator::Qemu),
            "bochs" => Some(Emulator::Bochs),
            "kvm" => Some(Emulator::QemuKvm),
            _ => None,
        }
    }

    /// Longest time from process start to the first prompt (CI machines are
    /// slow and run two instances at once).
    pub fn boot_timeout(self) -> Duration {
        match self {
            Emulator::Qemu | Emulator::QemuKvm => Duration::from_secs(60),
            Emulator::Bochs => Duration::from_secs(120),
        }
    }

    /// Default time a console command gets to answer.
    pub fn command_timeout(self) -> Duration {
        match self {
            Emulator::Qemu | Emulator::QemuKvm => Duration::from_secs(15),
            Emulator::Bochs => Duration::from_secs(40),
        }
    }

    pub(crate) fn is_qemu(self) -> bool {
        matches!(self, Emulator::Qemu | Emulator::QemuKvm)
    }
}

impl fmt::Display for Emulator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Bochs CPU model used unless told otherwise: it has VMX with EPT,
/// unrestricted guest, EPT A/D, PML and the preemption timer.
pub const DEFAULT_BOCHS_MODEL: &str = "corei7_skylake_x";
/// CPU models Bochs 2.7 knows (`bochs --help cpu`). Bochs exits silently
/// with status 1 on any other name, so the harness checks first. See
/// TESTBED.md for the VMX features of each.
pub const BOCHS_CPU_MODELS: &[&str] = &[
    "bx_generic",
    "pentium",
    "pentium_mmx",
    "amd_k6_2_chomper",
    "p2_klamath",
    "p3_katmai",
    "p4_willamette",
    "core_duo_t2400_yonah",
    "atom_n270",
    "p4_prescott_celeron_336",
    "athlon64_clawhammer",
    "athlon64_venice",
    "turion64_tyler",
    "phenom_8650_toliman",
    "core2_penryn_t9600",
    "corei5_lynnfield_750",
    "corei5_arrandale_m520",
    "corei7_sandy_bridge_2600k",
    "zambezi",
    "trinity_apu",
    "ryzen",
    "corei7_ivy_bridge_3770k",
    "corei7_haswell_4770",
    "broadwell_ult",
    "corei7_skylake_x",
    "corei3_cnl",
    "corei7_icelake_u",
    "tigerlake",
];
/// MAC address QEMU gives the e1000 unless told otherwise.
pub const QEMU_DEFAULT_MAC: &str = "52:54:00:12:34:56";
/// MAC address of the Bochs e1000.
pub const BOCHS_E1000_MAC: &str = "b0:c4:20:00:00:01";
/// Attempts at starting an emulator before giving up (a free port picked
/// for the console, or Bochs' VNC port, can be taken by a parallel instance
/// between the check and the emulator's bind).
const START_ATTEMPTS: u32 = 3;
/// How long the emulator gets to open its serial console port.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// The machine an emulator emulates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    /// Which emulator.
    pub emulator: Emulator,
    /// Number of CPUs.
    pub cpus: u32,
    /// Bochs CPU model (`bochs --help cpu` lists them); ignored by QEMU.
    pub bochs_model: String,
    /// Guest memory in MiB.
    pub memory_mib: u32,
    /// Attach an Intel e1000 NIC (QEMU: user-mode network; Bochs: no backend).
    pub nic: bool,
    /// What the e1000 is plugged into (ignored without `nic`).
    pub net: NetBackend,
    /// The e1000's MAC address; `None`: the emulator's default
    /// (QEMU `52:54:00:12:34:56`, Bochs [`BOCHS_E1000_MAC`]).
    pub mac: Option<String>,
    /// QEMU: record the NIC's traffic in `link.pcap` in the instance
    /// directory (`-object filter-dump`); kept with the logs of a failed test.
    pub capture: bool,
    /// Extra QEMU arguments, appended.
    pub extra_qemu_args: Vec<String>,
    /// Extra `.bxrc` lines, appended.
    pub extra_bochs_lines: Vec<String>,
}

impl Spec {
    /// The defaults: 1 CPU, 256 MiB, an e1000, Bochs model
    /// [`DEFAULT_BOCHS_MODEL`].
    pub fn new(emulator: Emulator) -> Self {
        Spec {
            emulator,
            cpus: 1,
            bochs_model: DEFAULT_BOCHS_MODEL.to_string(),
            memory_mib: 256,
            nic: true,
            net: NetBackend::Default,
            mac: None,
            capture: false,
            extra_qemu_args: Vec::new(),
            extra_bochs_lines: Vec::new(),
        }
    }

    /// The MAC address the e1000 will have (`None` without a NIC).
    pub fn effective_mac(&self) -> Option<String> {
        if !self.nic {
            return None;
        }
        Some(match (&self.mac, self.emulator) {
            (Some(m), _) => m.clone(),
            (None, Emulator::Bochs) => BOCHS_E1000_MAC.to_string(),
            (None, _) => QEMU_DEFAULT_MAC.to_string(),
        })
    }

    /// Arguments for `qemu-system-x86_64` running in `dir` (which holds
    /// `vars.fd` and `disk.img`), serial console on `port`.
    pub fn qemu_args(&self, dir: &Path, port: u16) -> Vec<String> {
        let d = |f: &str| dir.join(f).display().to_string();
        let mut a: Vec<String> = Vec::new();
        let mut push = |s: &[&str]| a.extend(s.iter().map(|x| x.to_string()));
        push(&["-machine", "q35"]);
        if self.emulator == Emulator::QemuKvm {
            push(&["-accel", "kvm", "-cpu", "host"]);
        } else {
            push(&["-accel", "tcg", "-cpu", "max"]);
        }
        push(&[
            "-m",
            &self.memory_mib.to_string(),
            "-smp",
            &self.cpus.to_string(),
        ]);
        push(&[
            "-drive",
            &format!("if=pflash,format=raw,readonly=on,file={OVMF_CODE}"),
            "-drive",
            &format!("if=pflash,format=raw,file={}", d("vars.fd")),
            "-drive",
            &format!("format=raw,file={},if=ide", d("disk.img")),
            "-display",
            "none",
            // wait=on: QEMU starts the machine only once the harness is
            // connected, so no console output is ever lost.
            "-serial",
            &format!("tcp:127.0.0.1:{port},server=on,wait=on"),
            "-monitor",
            "none",
        ]);
        if self.nic {
            let netdev = match &self.net {
                NetBackend::Default | NetBackend::BochsHub { .. } => "user,id=n0".to_string(),
                NetBackend::UserForward(fwds) => {
                    let mut n = "user,id=n0".to_string();
                    for (host, guest) in fwds {
                        n.push_str(&format!(",hostfwd=tcp:127.0.0.1:{host}-:{guest}"));
                    }
                    n
                }
                NetBackend::Dgram { port } => format!(
                    "dgram,id=n0,local.type=inet,local.host=127.0.0.1,local.port={port},remote.type=inet,remote.host=127.0.0.1,remote.port={}",
                    port + 1
                ),
                NetBackend::Stream { server, port } => format!(
                    "stream,id=n0,server={},addr.type=inet,addr.host=127.0.0.1,addr.port={port}",
                    if *server { "on" } else { "off" }
                ),
            };
            let mac = self
                .mac
                .as_ref()
                .map(|m| format!(",mac={m}"))
                .unwrap_or_default();
            // romfile= keeps iPXE off the NIC: OVMF would try a network boot.
            push(&[
                "-netdev",
                &netdev,
                "-device",
                &format!("e1000,netdev=n0{mac},romfile="),
            ]);
            if self.capture {
                push(&[
                    "-object",
                    &format!("filter-dump,id=f0,netdev=n0,file={}", d(CAPTURE_FILE)),
                ]);
            }
        } else {
            push(&["-net", "none"]);
        }
        a.extend(self.extra_qemu_args.iter().cloned());
        a
    }

    /// The `.bxrc` for Bochs running in the instance directory (paths are
    /// relative to it), serial console on `port`.
    pub fn bochs_rc(&self, port: u16) -> String {
        let mut rc = String::from("# Generated by hv-tests (tests/src/emulator.rs).\n");
        let mut line = |s: String| {
            rc.push_str(&s);
            rc.push('\n');
        };
        if self.nic {
            line("plugin_ctrl: e1000=true".into());
        }
        // Debian's Bochs has no `nogui`; timeout=0: do not wait for a VNC client.
        line(r#"display_library: rfb, options="timeout=0""#.into());
        line(format!(
            "cpu: count={}, ips=100000000, model={}, reset_on_triple_fault=0, ignore_bad_msrs=1",
            self.cpus, self.bochs_model
        ));
        // sync=none: emulated time follows the instruction count (deterministic).
        line("clock: sync=none, time0=local, rtc_sync=0".into());
        line(format!(
            "memory: guest={}, host={}",
            self.memory_mib, self.memory_mib
        ));
        // OVMF as one 2 MiB flash image: variables then code.
        line("romimage: file=OVMF.fd, address=0xffe00000, options=none".into());
        line(format!("vgaromimage: file={VGABIOS}"));
        if self.nic {
            line("pci: enabled=1, chipset=i440fx, slot1=e1000".into());
            let mac = self.mac.as_deref().unwrap_or(BOCHS_E1000_MAC);
            match &self.net {
                NetBackend::BochsHub { port } => line(format!(
                    "e1000: enabled=1, mac={mac}, ethmod=socket, ethdev={port}"
                )),
                _ => line(format!("e1000: enabled=1, mac={mac}, ethmod=null")),
            }
        } else {
            line("pci: enabled=1, chipset=i440fx".into());
        }
        line(format!(
            "ata0-master: type=disk, path=disk.img, mode=flat, cylinders={}, heads={}, spt={}",
            image::CYLINDERS,
            image::HEADS,
            image::SECTORS_PER_TRACK
        ));
        line("boot: disk".into());
        line(format!(
            r#"com1: enabled=true, mode=socket-server, dev="127.0.0.1:{port}""#
        ));
        line("log: bochs.log".into());
        // info: ~800 lines/s while the firmware idles; keep it off.
        line("info: action=ignore".into());
        line("debug: action=ignore".into());
        line("error: action=report".into());
        line("panic: action=report".into());
        for l in &self.extra_bochs_lines {
            line(l.clone());
        }
        rc
    }
}

/// What an instance's e1000 is plugged into.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum NetBackend {
    /// QEMU: user-mode network (`-netdev user`); Bochs: no backend
    /// (`ethmod=null`).
    #[default]
    Default,
    /// QEMU user-mode network with TCP forwards `(host port, guest port)`:
    /// `127.0.0.1:<host>` on this machine reaches `<guest>` on the guest
    /// address 10.0.2.15 (the host is 10.0.2.2 from the guest).
    UserForward(Vec<(u16, u16)>),
    /// QEMU: one end of a point-to-point Ethernet link over TCP on
    /// `127.0.0.1:port` (`-netdev stream`). The server end must be
    /// listening before the client end starts (QEMU 7.2 connects once, at
    /// start-up, and never retries).
    Stream {
        /// Listen (`server=on`) or connect (`server=off`).
        server: bool,
        /// TCP port on 127.0.0.1.
        port: u16,
    },
    /// QEMU: a station on a `bxhub` (`-netdev dgram`): receives raw frames
    /// on UDP `port` and sends them to `port + 1`, as Bochs does.
    Dgram {
        /// The station's UDP port.
        port: u16,
    },
    /// Bochs: a port of a `bxhub` (`ethmod=socket, ethdev=<port>`): Bochs
    /// receives on UDP `port` and sends to `port + 1`, where the hub listens.
    BochsHub {
        /// The instance's UDP port: the hub's base + 2 × its port index.
        port: u16,
    },
}

/// File in the instance directory that [`Spec::capture`] writes.
pub const CAPTURE_FILE: &str = "link.pcap";

/// A change to an instance's copy of the image, applied before the start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageEdit {
    /// Write these bytes to this path (replacing a file that is there).
    Write {
        /// Absolute path in the image, `/`-separated.
        path: String,
        /// File contents.
        contents: Vec<u8>,
    },
    /// Copy a host file to this path (replacing a file that is there).
    Copy {
        /// Absolute path in the image.
        path: String,
        /// Host file.
        source: PathBuf,
    },
    /// Delete a file (an error if it is not there).
    Delete(String),
    /// Create a directory (an error if it exists).
    Mkdir(String),
}

impl ImageEdit {
    /// Applies the edit to the image `img`; `scratch` is a directory for
    /// temporary files.
    pub fn apply(&self, img: &Path, scratch: &Path) -> Result<(), String> {
        match self {
            ImageEdit::Write { path, contents } => image::write(img, path, contents, scratch),
            ImageEdit::Copy { path, source } => image::copy_in(img, source, path),
            ImageEdit::Delete(path) => image::delete(img, path),
            ImageEdit::Mkdir(path) => image::mkdir(img, path),
        }
    }
}

/// Ports handed out by this process and not yet released: two instances
/// started at once by one test binary never race for the same port.
static PORTS_IN_USE: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// A port from [`reserve_port`], released on drop.
#[derive(Debug)]
pub(crate) struct ReservedPort(pub(crate) u16);

impl Drop for ReservedPort {
    fn drop(&mut self) {
        release_port(self.0);
    }
}

/// Reserves `port` if no one in this process holds it.
pub(crate) fn reserve_exact(port: u16) -> Option<ReservedPort> {
    let mut used = PORTS_IN_USE.lock().unwrap_or_else(|e| e.into_inner());
    used.get_or_insert_with(HashSet::new)
        .insert(port)
        .then_some(ReservedPort(port))
}

pub(crate) fn reserve_port() -> io::Result<u16> {
    let mut used = PORTS_IN_USE.lock().unwrap_or_else(|e| e.into_inner());
    let used = used.get_or_insert_with(HashSet::new);
    for _ in 0..20 {
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
            .local_addr()?
            .port();
        if used.insert(port) {
            return Ok(port);
        }
    }
    Err(io::Error::other("no free TCP port found"))
}

pub(crate) fn release_port(port: u16) {
    let mut used = PORTS_IN_USE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(used) = used.as_mut() {
        used.remove(&port);
    }
}

/// A running emulator with its serial console connected.
pub struct Instance {
    spec: Spec,
    child: Option<Child>,
    dir: tempfile::TempDir,
    serial: TcpStream,
    port: u16,
    spawned_at: Instant,
    failed_starts: Vec<String>,
}

impl fmt::Debug for Instance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Instance")
            .field("emulator", &self.spec.emulator)
            .field("dir", &self.dir.path())
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

impl Instance {
    /// Starts `spec` on a private copy of `image_file` with `edits` applied,
    /// and connects to its serial console. Retries start failures up to
    /// three times.
    pub fn spawn(spec: &Spec, image_file: &Path, edits: &[ImageEdit]) -> Result<Instance, String> {
        if spec.emulator == Emulator::Bochs
            && !BOCHS_CPU_MODELS.contains(&spec.bochs_model.as_str())
        {
            return Err(format!(
                "unknown Bochs cpu model '{}' (Bochs 2.7 has: {})",
                spec.bochs_model,
                BOCHS_CPU_MODELS.join(", ")
            ));
        }
        if spec.cpus == 0 {
            return Err("a machine needs at least one cpu".into());
        }
        if !image_file.is_file() {
            return Err(format!(
                "image {} does not exist: run `cargo xtask image` first (cargo xtask test does it)",
                image_file.display()
            ));
        }
        let dir = tempfile::Builder::new()
            .prefix(&format!("hv-{}-", spec.emulator.name()))
            .tempdir()
            .map_err(|e| format!("cannot create a temporary directory: {e}"))?;
        let d = dir.path();
        let disk = d.join("disk.img");
        fs::copy(image_file, &disk).map_err(|e| {
            format!(
                "cannot copy {} to {}: {e}",
                image_file.display(),
                disk.display()
            )
        })?;
        for edit in edits {
            edit.apply(&disk, d)
                .map_err(|e| format!("cannot apply {edit:?} to the image: {e}"))?;
        }
        if spec.emulator.is_qemu() {
            fs::copy(OVMF_VARS, d.join("vars.fd"))
                .map_err(|e| format!("cannot copy {OVMF_VARS}: {e}"))?;
        } else {
            let mut fw =
                fs::read(OVMF_VARS).map_err(|e| format!("cannot read {OVMF_VARS}: {e}"))?;
            fw.extend(fs::read(OVMF_CODE).map_err(|e| format!("cannot read {OVMF_CODE}: {e}"))?);
            fs::write(d.join("OVMF.fd"), fw).map_err(|e| format!("cannot write OVMF.fd: {e}"))?;
            // The Debian binary has the debugger built in and stops at its
            // prompt: `c` continues.
            fs::write(d.join("cont.rc"), "c\n")
                .map_err(|e| format!("cannot write cont.rc: {e}"))?;
        }

        let mut failed_starts = Vec::new();
        for attempt in 1..=START_ATTEMPTS {
            match start_once(spec, d) {
                Ok((child, serial, port, spawned_at)) => {
                    return Ok(Instance {
                        spec: spec.clone(),
                        child: Some(child),
                        dir,
                        serial,
                        port,
                        spawned_at,
                        failed_starts,
                    });
                }
                Err(e) => failed_starts.push(format!("start attempt {attempt}: {e}")),
            }
        }
        Err(format!(
            "{} did not start:\n{}",
            spec.emulator,
            failed_starts.join("\n")
        ))
    }

    /// The machine this instance emulates.
    pub fn spec(&self) -> &Spec {
        &self.spec
    }

    /// The instance's temporary directory (image copy, logs, config).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The connected serial console (clone it with `try_clone` for a reader
    /// and a writer).
    pub fn serial(&self) -> &TcpStream {
        &self.serial
    }

    /// When the emulator process of the successful start was spawned.
    pub fn spawned_at(&self) -> Instant {
        self.spawned_at
    }

    /// Messages of start attempts that failed before this one succeeded.
    pub fn failed_starts(&self) -> &[String] {
        &self.failed_starts
    }

    /// Process id of the emulator (`None` once killed).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the emulator has exited, and how.
    pub fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        match self.child.as_mut() {
            Some(c) => c.try_wait(),
            None => Ok(None),
        }
    }

    /// How the emulator ended, if it has: `exited with code 1`, `killed by
    /// signal 11`. The process is not reaped (its status stays for
    /// [`Instance::try_wait`]), so this needs no `&mut`.
    pub fn exited(&self) -> Option<String> {
        let pid = libc::id_t::try_from(self.child.as_ref()?.id()).ok()?;
        // SAFETY: siginfo_t is plain data; all zeroes is a valid value.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: `info` is a valid, writable siginfo_t for the call's
        // duration; WNOWAIT leaves the child waitable, WNOHANG returns at
        // once. The pid is our unreaped child's, so it names no other process.
        let r = unsafe {
            libc::waitid(
                libc::P_PID,
                pid,
                &mut info,
                libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
            )
        };
        // SAFETY: waitid filled `info` (r == 0) for a SIGCHLD-kind record,
        // whose pid and status fields these read.
        let (got, status) = unsafe { (info.si_pid(), info.si_status()) };
        if r != 0 || got == 0 {
            return None;
        }
        Some(match info.si_code {
            libc::CLD_EXITED => format!("exited with code {status}"),
            libc::CLD_KILLED => format!("was killed by signal {status}"),
            libc::CLD_DUMPED => format!("was killed by signal {status} (core dumped)"),
            code => format!("ended (si_code {code}, status {status})"),
        })
    }

    /// Log files worth showing on failure, most useful first.
    pub fn log_files(&self) -> Vec<PathBuf> {
        let mut v = Vec::new();
        if self.spec.emulator == Emulator::Bochs {
            v.push(self.dir().join("bochs.log"));
        }
        v.push(self.dir().join("emulator.out"));
        v
    }

    /// The last `n` lines of each log file, with headers.
    pub fn log_tail(&self, n: usize) -> String {
        let mut s = String::new();
        for f in self.log_files() {
            let text = fs::read(&f)
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_else(|e| format!("({e})"));
            let lines: Vec<&str> = text
                .lines()
                .filter(|l| !l.starts_with("ALSA lib"))
                .collect();
            let name = f.file_name().unwrap_or_default().to_string_lossy();
            s.push_str(&format!("--- last {n} lines of {name} ---\n"));
            for l in &lines[lines.len().saturating_sub(n)..] {
                s.push_str(l);
                s.push('\n');
            }
        }
        s
    }

    /// Kills the emulator's process group and reaps it. Idempotent.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_group(&mut child);
            let _ = self.serial.shutdown(std::net::Shutdown::Both);
            release_port(self.port);
        }
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Kills the process group led by `child` (it was started with
/// `process_group(0)`), then waits for the child.
pub(crate) fn kill_group(child: &mut Child) {
    if let Ok(None) = child.try_wait() {
        if let Ok(pgid) = i32::try_from(child.id()) {
            // SAFETY: kill(2) has no memory-safety preconditions. The target
            // is the group our child leads; the child has not been reaped
            // (try_wait just returned None), so its pid, and with it the
            // group id, cannot have been reused by an unrelated process.
            unsafe {
                libc::kill(-pgid, libc::SIGKILL);
            }
        }
        let _ = child.kill();
    }
    let _ = child.wait();
}

/// Makes the process `cmd` spawns get `SIGKILL` when the calling thread dies.
pub(crate) fn die_with_parent(cmd: &mut Command) {
    let parent = std::process::id();
    // SAFETY: the closure runs in the forked child before exec. It only makes
    // the async-signal-safe system calls prctl(2) and getppid(2), allocates
    // nothing and touches no state shared with the parent.
    unsafe {
        cmd.pre_exec(move || {
            // Die with the thread that started us, even if it is killed.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) == -1 {
                return Err(io::Error::last_os_error());
            }
            // The parent may have died before prctl took effect.
            if u32::try_from(libc::getppid()).ok() != Some(parent) {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
}

/// One start: spawn the emulator and connect to its console.
fn start_once(spec: &Spec, dir: &Path) -> Result<(Child, TcpStream, u16, Instant), String> {
    let port = reserve_port().map_err(|e| format!("cannot pick a port: {e}"))?;
    let res = start_on_port(spec, dir, port);
    if res.is_err() {
        release_port(port);
    }
    res.map(|(c, s, t)| (c, s, port, t))
}

fn start_on_port(
    spec: &Spec,
    dir: &Path,
    port: u16,
) -> Result<(Child, TcpStream, Instant), String> {
    let out_path = dir.join("emulator.out");
    let out = fs::File::create(&out_path)
        .map_err(|e| format!("cannot create {}: {e}", out_path.display()))?;
    let err = out
        .try_clone()
        .map_err(|e| format!("cannot dup a file: {e}"))?;
    let mut cmd;
    if spec.emulator.is_qemu() {
        let args = spec.qemu_args(dir, port);
        let _ = fs::write(
            dir.join("qemu.cmdline"),
            format!("qemu-system-x86_64 {}\n", args.join(" ")),
        );
        cmd = Command::new("qemu-system-x86_64");
        cmd.args(args);
    } else {
        fs::write(dir.join("bochs.bxrc"), spec.bochs_rc(port))
            .map_err(|e| format!("cannot write bochs.bxrc: {e}"))?;
        let _ = fs::remove_file(dir.join("disk.img.lock"));
        let _ = fs::remove_file(dir.join("bochs.log"));
        cmd = Command::new("bochs");
        cmd.args(["-q", "-f", "bochs.bxrc", "-rc", "cont.rc"]);
        // Bochs 2.7 aborts with "buffer overflow detected" while reading its
        // config when LANG names a UTF-8 locale (C.UTF-8 included).
        cmd.env("LC_ALL", "C")
            .env("LANG", "C")
            .env_remove("LANGUAGE");
    }
    cmd.current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .process_group(0);
    die_with_parent(&mut cmd);
    let spawned_at = Instant::now();
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot run {:?}: {e}", cmd.get_program()))?;

    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    // What the emulator prints (on stderr, unbuffered) once it listens on
    // the console port and waits for us. Connecting only after it makes sure
    // we talk to this emulator, not to whatever else took the port after
    // reserve_port released it.
    let listening = if spec.emulator.is_qemu() {
        format!(":{port},server")
    } else {
        format!("port:{port})")
    };
    let deadline = spawned_at + CONNECT_TIMEOUT;
    let failure = loop {
        // A handshake, not a sleep: poll until the emulator says it listens
        // and the connection is made, it exits, or the deadline passes.
        let said = fs::read_to_string(&out_path)
            .map(|t| {
                t.lines()
                    .any(|l| l.contains("waiting for") && l.contains(&listening))
            })
            .unwrap_or(false);
        let error = if said {
            match TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    return Ok((child, s, spawned_at));
                }
                Err(e) => e.to_string(),
            }
        } else {
            "the emulator has not said it listens".to_string()
        };
        if let Ok(Some(status)) = child.try_wait() {
            break format!(
                "{} exited ({status}) before its console port opened",
                spec.emulator
            );
        }
        if let Some(p) = bochs_start_panic(dir) {
            break format!("bochs failed to start: {p}");
        }
        if Instant::now() >= deadline {
            break format!(
                "console port {port} not open after {} s ({error})",
                CONNECT_TIMEOUT.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    kill_group(&mut child);
    let mut msg = failure;
    for f in ["bochs.log", "emulator.out"] {
        let Ok(text) = fs::read_to_string(dir.join(f)) else {
            continue;
        };
        // Skip the noise: ALSA's complaints, plugin loading, banners.
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| {
                !(l.starts_with("ALSA lib")
                    || l.contains("lt_dlhandle")
                    || l.contains("[PLUGIN]")
                    || l.starts_with("=====")
                    || l.trim().is_empty())
            })
            .collect();
        msg.push_str(&format!("\n  last lines of {f}:"));
        for l in &lines[lines.len().saturating_sub(8)..] {
            msg.push_str("\n    ");
            msg.push_str(l);
        }
    }
    Err(msg)
}

/// A `>>PANIC<<` in a Bochs log before the console is up (e.g. its VNC or
/// serial port could not be bound): the start failed.
fn bochs_start_panic(dir: &Path) -> Option<String> {
    let log = fs::read_to_string(dir.join("bochs.log")).ok()?;
    log.lines()
        .find(|l| l.contains(">>PANIC<<"))
        .map(|l| l.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qemu_args_follow_the_recipe() {
        let mut spec = Spec::new(Emulator::Qemu);
        spec.cpus = 2;
        let a = spec.qemu_args(Path::new("/d"), 4444).join(" ");
        for want in [
            "-machine q35",
            "-accel tcg -cpu max",
            "-m 256 -smp 2",
            "file=/usr/share/OVMF/OVMF_CODE.fd",
            "if=pflash,format=raw,file=/d/vars.fd",
            "format=raw,file=/d/disk.img,if=ide",
            "-display none",
            "-serial tcp:127.0.0.1:4444,server=on,wait=on",
            "-monitor none",
            "-netdev user,id=n0 -device e1000,netdev=n0,romfile=",
        ] {
            assert!(a.contains(want), "{want:?} not in {a}");
        }
        spec.nic = false;
        spec.emulator = Emulator::QemuKvm;
        let a = spec.qemu_args(Path::new("/d"), 4444).join(" ");
        assert!(a.contains("-net none") && !a.contains("e1000"), "{a}");
        assert!(a.contains("-accel kvm -cpu host"), "{a}");
    }

    #[test]
    fn bochs_rc_follows_the_recipe() {
        let mut spec = Spec::new(Emulator::Bochs);
        spec.cpus = 2;
        spec.bochs_model = "corei7_haswell_4770".into();
        spec.extra_bochs_lines
            .push("plugin_ctrl: unmapped=true".into());
        let rc = spec.bochs_rc(5555);
        for want in [
            "plugin_ctrl: e1000=true\n",
            "display_library: rfb, options=\"timeout=0\"\n",
            "cpu: count=2, ips=100000000, model=corei7_haswell_4770, reset_on_triple_fault=0, ignore_bad_msrs=1\n",
            "clock: sync=none, time0=local, rtc_sync=0\n",
            "memory: guest=256, host=256\n",
            "romimage: file=OVMF.fd, address=0xffe00000, options=none\n",
            "vgaromimage: file=/usr/share/vgabios/vgabios.bin\n",
            "pci: enabled=1, chipset=i440fx, slot1=e1000\n",
            "e1000: enabled=1, mac=b0:c4:20:00:00:01, ethmod=null\n",
            "ata0-master: type=disk, path=disk.img, mode=flat, cylinders=65, heads=16, spt=63\n",
            "boot: disk\n",
            "com1: enabled=true, mode=socket-server, dev=\"127.0.0.1:5555\"\n",
            "log: bochs.log\n",
            "info: action=ignore\n",
            "error: action=report\n",
            "panic: action=report\n",
            "plugin_ctrl: unmapped=true\n",
        ] {
            assert!(rc.contains(want), "{want:?} not in\n{rc}");
        }
        spec.nic = false;
        let rc = spec.bochs_rc(5555);
        assert!(!rc.contains("e1000"), "{rc}");
    }

    #[test]
    fn network_backends_follow_the_recipe() {
        let mut spec = Spec::new(Emulator::Qemu);
        spec.net = NetBackend::Stream {
            server: true,
            port: 4000,
        };
        spec.mac = Some("52:54:00:12:34:01".into());
        spec.capture = true;
        let a = spec.qemu_args(Path::new("/d"), 4444).join(" ");
        for want in [
            "-netdev stream,id=n0,server=on,addr.type=inet,addr.host=127.0.0.1,addr.port=4000 ",
            "-device e1000,netdev=n0,mac=52:54:00:12:34:01,romfile= ",
            "-object filter-dump,id=f0,netdev=n0,file=/d/link.pcap",
        ] {
            assert!(a.contains(want), "{want:?} not in {a}");
        }
        spec.net = NetBackend::Stream {
            server: false,
            port: 4000,
        };
        let a = spec.qemu_args(Path::new("/d"), 4444).join(" ");
        assert!(a.contains("stream,id=n0,server=off,addr.type=inet"), "{a}");
        spec.net = NetBackend::UserForward(vec![(5000, 23), (5001, 80)]);
        spec.mac = None;
        spec.capture = false;
        let a = spec.qemu_args(Path::new("/d"), 4444).join(" ");
        assert!(
            a.contains(
                "-netdev user,id=n0,hostfwd=tcp:127.0.0.1:5000-:23,hostfwd=tcp:127.0.0.1:5001-:80 -device e1000,netdev=n0,romfile="
            ) && !a.contains("filter-dump"),
            "{a}"
        );
        assert_eq!(spec.effective_mac().as_deref(), Some(QEMU_DEFAULT_MAC));

        let mut spec = Spec::new(Emulator::Bochs);
        spec.net = NetBackend::BochsHub { port: 40002 };
        spec.mac = Some("b0:c4:20:00:00:02".into());
        let rc = spec.bochs_rc(5555);
        assert!(
            rc.contains("e1000: enabled=1, mac=b0:c4:20:00:00:02, ethmod=socket, ethdev=40002\n"),
            "{rc}"
        );
        spec.nic = false;
        assert_eq!(spec.effective_mac(), None);
    }

    #[test]
    fn names_round_trip() {
        for e in [Emulator::Qemu, Emulator::Bochs, Emulator::QemuKvm] {
            assert_eq!(Emulator::from_name(e.name()), Some(e));
        }
        assert_eq!(Emulator::from_name("vbox"), None);
    }

    #[test]
    fn unknown_bochs_models_are_refused() {
        let mut spec = Spec::new(Emulator::Bochs);
        spec.bochs_model = "haswell_4770".into();
        let e = Instance::spawn(&spec, Path::new("/nonexistent"), &[]).unwrap_err();
        assert!(e.contains("unknown Bochs cpu model 'haswell_4770'"), "{e}");
        assert!(BOCHS_CPU_MODELS.contains(&DEFAULT_BOCHS_MODEL));
    }

    /// A console port taken by someone else: the start fails fast (the
    /// emulator cannot bind it) and the harness never connects to the
    /// stranger.
    #[test]
    fn a_taken_port_fails_the_start_without_connecting() {
        let stranger = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        stranger.set_nonblocking(true).unwrap();
        let port = stranger.local_addr().unwrap().port();
        for emulator in [Emulator::Qemu, Emulator::Bochs] {
            let dir = tempfile::tempdir().unwrap();
            let d = dir.path();
            fs::File::create(d.join("disk.img"))
                .unwrap()
                .set_len(image::IMAGE_SIZE)
                .unwrap();
            fs::copy(OVMF_VARS, d.join("vars.fd")).unwrap();
            let mut fw = fs::read(OVMF_VARS).unwrap();
            fw.extend(fs::read(OVMF_CODE).unwrap());
            fs::write(d.join("OVMF.fd"), fw).unwrap();
            fs::write(d.join("cont.rc"), "c\n").unwrap();
            let start = Instant::now();
            let r = start_on_port(&Spec::new(emulator), d, port);
            let e = r
                .err()
                .unwrap_or_else(|| panic!("{emulator} started on a taken port"));
            eprintln!("{emulator}: {e}");
            assert!(start.elapsed() < CONNECT_TIMEOUT, "{emulator}: {e}");
            assert!(
                stranger.accept().is_err(),
                "{emulator}: the harness connected to the stranger"
            );
        }
    }

    #[test]
    fn ports_are_not_handed_out_twice() {
        let a = reserve_port().unwrap();
        let b = reserve_port().unwrap();
        assert_ne!(a, b);
        release_port(a);
        release_port(b);
    }
}
