//! An Ethernet link between two emulated hosts.
//!
//! ```no_run
//! use hv_tests::{Link, Machine};
//!
//! let link = Link::qemu(); // or Link::bochs()
//! let mut a = Machine::qemu().hostname("a").link(&link).start();
//! let mut b = Machine::qemu().hostname("b").link(&link).start();
//! assert!(link.is_connected());
//! a.boot_to_prompt();
//! b.boot_to_prompt();
//! ```
//!
//! * QEMU: the first machine started on the link listens with
//!   `-netdev stream,server=on` on a free TCP port of 127.0.0.1, the second
//!   connects with `server=off`. QEMU 7.2 binds the listening socket while
//!   it sets up its netdevs, before it waits for the console (`wait=on`),
//!   and the connecting side connects exactly once, at that same point of its
//!   start-up, and never retries (no `reconnect` before QEMU 8): a client
//!   started before the server listens stays unplugged without a word. So
//!   [`crate::Builder::start`] waits, after the first machine's start, until
//!   that QEMU owns a listening socket on the port, and after the second's,
//!   until the two QEMUs hold the two ends of one established connection.
//!   Each records its traffic in `link.pcap` in its instance directory.
//! * Bochs: a `bxhub -ports=2 -base=B` runs while the link exists. Machine
//!   `k` gets `ethmod=socket, ethdev=B+2k`: Bochs receives on UDP `B+2k` and
//!   sends to `B+2k+1`, where the hub listens. The hub's log is `hub.log`
//!   in [`Link::dir`]. [`Link::bochs_with_peer`] gives the hub a third port
//!   (`-ports=3`) for a station of the test's own on UDP `B+4`
//!   ([`Link::peer_port`], [`crate::hubpeer::HubPeer`]): raw Ethernet from
//!   the test process, e.g. a burst of connections no port forward can make.
//! * Machine `k` (0 first) gets MAC `QEMU_LINK_MACS[k]` / `BOCHS_LINK_MACS[k]`
//!   ([`crate::Machine::mac`] tells).
//! * A link holds two emulator slots (see [`crate::slots`]) from its
//!   creation until it and its machines are dropped: create it before
//!   starting its machines, not while holding another machine.

use std::fmt;
use std::fs;
use std::net::{Ipv4Addr, UdpSocket};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::emulator::{self, Emulator, NetBackend, ReservedPort};
use crate::machine::Error;
use crate::slots::{self, SlotGuard};
use crate::sockets;

/// MACs of the machines on a QEMU link, by attachment order.
pub const QEMU_LINK_MACS: [&str; 2] = ["52:54:00:12:34:01", "52:54:00:12:34:02"];
/// MACs of the machines on a Bochs link, by attachment order.
pub const BOCHS_LINK_MACS: [&str; 2] = ["b0:c4:20:00:00:01", "b0:c4:20:00:00:02"];
/// How long a started machine gets to plug into the link.
const PLUG_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `bxhub` gets to open its UDP ports.
const HUB_TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts at picking a free port range for `bxhub`.
const HUB_ATTEMPTS: u32 = 3;

/// A link two machines attach to with [`crate::Builder::link`]. Cloning
/// gives another handle to the same link; the link (and `bxhub`) goes
/// away with the last handle, machines included.
#[derive(Clone)]
pub struct Link {
    inner: Arc<Inner>,
}

struct Inner {
    emulator: Emulator,
    dir: tempfile::TempDir,
    state: Mutex<State>,
    /// Bochs: the hub's ports (2, or 3 with a port for the test's own
    /// station). QEMU: 0.
    hub_ports: u16,
    _slots: SlotGuard,
}

struct State {
    /// QEMU: the stream port. Bochs: the hub's base port and the
    /// `2 × hub_ports - 1` above it.
    ports: Vec<ReservedPort>,
    hub: Option<Child>,
    /// Emulator pids of the machines started on the link, in order.
    machines: Vec<u32>,
}

impl fmt::Debug for Link {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Link")
            .field("emulator", &self.inner.emulator)
            .field("port", &self.port())
            .field("machines", &self.state().machines)
            .finish_non_exhaustive()
    }
}

impl Link {
    /// A QEMU link on a free port of 127.0.0.1.
    pub fn try_qemu() -> Result<Link, Error> {
        let slots = slots::acquire(2);
        let port = emulator::reserve_port()
            .map_err(|e| Error(format!("link: cannot pick a port: {e}")))?;
        Self::new(Emulator::Qemu, vec![ReservedPort(port)], None, slots)
    }

    /// [`Link::try_qemu`], panicking on failure.
    #[track_caller]
    pub fn qemu() -> Link {
        Self::try_qemu().unwrap_or_else(|e| panic!("{e}"))
    }

    /// A Bochs link: starts `bxhub -ports=2` on a free UDP port range.
    pub fn try_bochs() -> Result<Link, Error> {
        Self::try_bochs_hub(2)
    }

    /// [`Link::try_bochs`], panicking on failure.
    #[track_caller]
    pub fn bochs() -> Link {
        Self::try_bochs().unwrap_or_else(|e| panic!("{e}"))
    }

    /// A Bochs link whose hub has a third port for a station of the test's
    /// own (`bxhub -ports=3`): the two machines are on `B` and `B+2` as
    /// usual, the station receives on `B+4` ([`Link::peer_port`]) and
    /// sends to `B+5`. See [`crate::hubpeer::HubPeer`].
    pub fn try_bochs_with_peer() -> Result<Link, Error> {
        Self::try_bochs_hub(3)
    }

    /// [`Link::try_bochs_with_peer`], panicking on failure.
    #[track_caller]
    pub fn bochs_with_peer() -> Link {
        Self::try_bochs_with_peer().unwrap_or_else(|e| panic!("{e}"))
    }

    fn try_bochs_hub(hub_ports: u16) -> Result<Link, Error> {
        let slots = slots::acquire(2);
        let dir = tempfile::Builder::new()
            .prefix("hv-link-")
            .tempdir()
            .map_err(|e| Error(format!("link: cannot create a directory: {e}")))?;
        let mut failures = Vec::new();
        for attempt in 1..=HUB_ATTEMPTS {
            let ports = match free_udp_range(2 * hub_ports) {
                Ok(p) => p,
                Err(e) => {
                    failures.push(format!("attempt {attempt}: {e}"));
                    continue;
                }
            };
            match start_hub(dir.path(), ports[0].0, hub_ports) {
                Ok(hub) => {
                    return Ok(Link {
                        inner: Arc::new(Inner {
                            emulator: Emulator::Bochs,
                            dir,
                            state: Mutex::new(State {
                                ports,
                                hub: Some(hub),
                                machines: Vec::new(),
                            }),
                            hub_ports,
                            _slots: slots,
                        }),
                    });
                }
                Err(e) => failures.push(format!("attempt {attempt}: {e}")),
            }
        }
        Err(Error(format!(
            "link: bxhub did not start:\n{}",
            failures.join("\n")
        )))
    }

    fn new(
        emulator: Emulator,
        ports: Vec<ReservedPort>,
        hub: Option<Child>,
        slots: SlotGuard,
    ) -> Result<Link, Error> {
        let dir = tempfile::Builder::new()
            .prefix("hv-link-")
            .tempdir()
            .map_err(|e| Error(format!("link: cannot create a directory: {e}")))?;
        Ok(Link {
            inner: Arc::new(Inner {
                emulator,
                dir,
                state: Mutex::new(State {
                    ports,
                    hub,
                    machines: Vec::new(),
                }),
                hub_ports: 0,
                _slots: slots,
            }),
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The emulator the link is for ([`Emulator::Qemu`] or
    /// [`Emulator::Bochs`]).
    pub fn emulator(&self) -> Emulator {
        self.inner.emulator
    }

    /// QEMU: the TCP port the first machine listens on. Bochs: the hub's
    /// base UDP port `B` (machine `k` is on `B+2k`, the hub on `B+2k+1`).
    pub fn port(&self) -> u16 {
        self.state().ports[0].0
    }

    /// Bochs link with a peer port ([`Link::bochs_with_peer`]): the UDP
    /// port of 127.0.0.1 the test's station receives frames on (`B+4`);
    /// it sends them to the hub on the port above. `None` otherwise.
    pub fn peer_port(&self) -> Option<u16> {
        (self.inner.hub_ports == 3).then(|| self.port() + 4)
    }

    /// The MAC of machine `index` (0 or 1) on this link.
    pub fn mac(&self, index: usize) -> &'static str {
        match self.inner.emulator {
            Emulator::Bochs => BOCHS_LINK_MACS[index],
            _ => QEMU_LINK_MACS[index],
        }
    }

    /// Process id of `bxhub` (Bochs links only, `None` once it exited).
    pub fn hub_pid(&self) -> Option<u32> {
        let mut st = self.state();
        let hub = st.hub.as_mut()?;
        match hub.try_wait() {
            Ok(None) => Some(hub.id()),
            _ => None,
        }
    }

    /// A directory that lives as long as the link (`hub.log` for Bochs).
    pub fn dir(&self) -> &Path {
        self.inner.dir.path()
    }

    /// Emulator pids of the machines started on the link so far.
    pub fn machine_pids(&self) -> Vec<u32> {
        self.state().machines.clone()
    }

    /// Whether both ends are plugged in, as the host's socket tables show.
    /// QEMU: the first machine's QEMU owns an established connection on the
    /// link port and the second's owns its peer. Bochs: the hub is running
    /// with all its UDP ports, and each machine's Bochs has bound its own.
    pub fn is_connected(&self) -> bool {
        let st = self.state();
        let [a, b] = st.machines[..] else {
            return false;
        };
        let port = st.ports[0].0;
        drop(st);
        match self.inner.emulator {
            Emulator::Bochs => {
                let Some(hub) = self.hub_pid() else {
                    return false;
                };
                (0..self.inner.hub_ports).all(|k| sockets::udp_bound(hub, port + 2 * k + 1))
                    && sockets::udp_bound(a, port)
                    && sockets::udp_bound(b, port + 2)
            }
            _ => qemu_accepted(a, port) && sockets::tcp_connected_to(b, port),
        }
    }

    /// For the next machine to start on the link: its index, backend and
    /// MAC.
    pub(crate) fn plan(&self, emulator: Emulator) -> Result<(usize, NetBackend, String), String> {
        let want = self.inner.emulator;
        if emulator != want {
            return Err(format!("a {emulator} machine cannot join a {want} link"));
        }
        let st = self.state();
        let index = st.machines.len();
        if index >= 2 {
            return Err("a link joins two machines; this would be the third".into());
        }
        let port = st.ports[0].0;
        let backend = match want {
            Emulator::Bochs => NetBackend::BochsHub {
                port: port + 2 * index as u16,
            },
            _ => NetBackend::Stream {
                server: index == 0,
                port,
            },
        };
        Ok((index, backend, self.mac(index).to_string()))
    }

    /// Picks another port for a QEMU link's server after a failed start (the
    /// port may have been taken by another process).
    pub(crate) fn repick_port(&self) -> Result<(), String> {
        let mut st = self.state();
        if self.inner.emulator == Emulator::Bochs || !st.machines.is_empty() {
            return Err("the link's port cannot change now".into());
        }
        let port = emulator::reserve_port().map_err(|e| format!("cannot pick a port: {e}"))?;
        st.ports = vec![ReservedPort(port)];
        Ok(())
    }

    /// Waits until machine `index` (emulator process `pid`, console
    /// connected) is plugged in, then records it.
    pub(crate) fn plugged(&self, index: usize, pid: u32) -> Result<(), String> {
        let (port, first) = {
            let st = self.state();
            if st.machines.len() != index {
                return Err(format!("machine {index} started out of order"));
            }
            (st.ports[0].0, st.machines.first().copied())
        };
        let (what, ok): (String, Box<dyn Fn() -> bool>) = match (self.inner.emulator, first) {
            (Emulator::Bochs, _) => {
                let p = port + 2 * index as u16;
                (
                    format!("bochs did not bind UDP port {p} (ethdev)"),
                    Box::new(move || sockets::udp_bound(pid, p)),
                )
            }
            (_, None) => (
                format!("QEMU is not listening on the link port 127.0.0.1:{port}"),
                Box::new(move || sockets::tcp_listening(pid, port)),
            ),
            (_, Some(server)) => (
                format!(
                    "QEMU did not connect to the first machine's QEMU on 127.0.0.1:{port} \
                     (it only tries once, at start-up)"
                ),
                Box::new(move || {
                    sockets::tcp_connected_to(pid, port) && qemu_accepted(server, port)
                }),
            ),
        };
        let deadline = Instant::now() + PLUG_TIMEOUT;
        while !ok() {
            if Instant::now() >= deadline {
                return Err(format!("link: {what} after {} s", PLUG_TIMEOUT.as_secs()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.state().machines.push(pid);
        Ok(())
    }
}

/// Whether QEMU `pid` holds an accepted connection on its stream port.
fn qemu_accepted(pid: u32, port: u16) -> bool {
    let mine = sockets::socket_inodes(pid);
    sockets::tcp_established_on(port)
        .iter()
        .any(|r| mine.contains(&r.inode))
}

impl Drop for Inner {
    fn drop(&mut self) {
        let st = self.state.get_mut().unwrap_or_else(|e| e.into_inner());
        if let Some(mut hub) = st.hub.take() {
            emulator::kill_group(&mut hub);
        }
    }
}

/// `count` consecutive UDP ports `B..B+count-1`, `B` even, free on every
/// address (bxhub binds 0.0.0.0), reserved in this process.
fn free_udp_range(count: u16) -> Result<Vec<ReservedPort>, String> {
    for _ in 0..20 {
        let p = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))
            .and_then(|s| s.local_addr())
            .map_err(|e| format!("cannot bind a UDP socket: {e}"))?
            .port();
        let base = p & !1;
        if !(1024..=u16::MAX - count).contains(&base) {
            continue;
        }
        let free =
            (base..base + count).all(|q| UdpSocket::bind((Ipv4Addr::UNSPECIFIED, q)).is_ok());
        if !free {
            continue;
        }
        let reserved: Vec<ReservedPort> = (base..base + count)
            .filter_map(emulator::reserve_exact)
            .collect();
        if reserved.len() == usize::from(count) {
            return Ok(reserved);
        }
    }
    Err(format!("no free range of {count} UDP ports found"))
}

/// Starts `bxhub -ports=<ports> -base=<base>` in `dir` and waits until it
/// has bound its UDP ports (`base+1`, `base+3`, ...). bxhub prints nothing
/// when ready, so the socket table is the handshake.
fn start_hub(dir: &Path, base: u16, ports: u16) -> Result<Child, String> {
    let log_path = dir.join("hub.log");
    let log = fs::File::create(&log_path).map_err(|e| format!("cannot create hub.log: {e}"))?;
    let err = log
        .try_clone()
        .map_err(|e| format!("cannot dup a file: {e}"))?;
    let mut cmd = Command::new("bxhub");
    cmd.arg(format!("-ports={ports}"))
        .arg(format!("-base={base}"))
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(err))
        .process_group(0);
    emulator::die_with_parent(&mut cmd);
    let mut hub = cmd
        .spawn()
        .map_err(|e| format!("cannot run bxhub (package bochs): {e}"))?;
    let deadline = Instant::now() + HUB_TIMEOUT;
    let pid = hub.id();
    loop {
        if (0..ports).all(|k| sockets::udp_bound(pid, base + 2 * k + 1)) {
            return Ok(hub);
        }
        if let Ok(Some(status)) = hub.try_wait() {
            let log = fs::read_to_string(&log_path).unwrap_or_default();
            return Err(format!("bxhub exited ({status}): {}", log.trim()));
        }
        if Instant::now() >= deadline {
            emulator::kill_group(&mut hub);
            let want: Vec<String> = (0..ports).map(|k| (base + 2 * k + 1).to_string()).collect();
            return Err(format!(
                "bxhub did not bind UDP ports {} within {} s",
                want.join(", "),
                HUB_TIMEOUT.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
