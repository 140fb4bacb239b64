//! Console command parsing: from a line the operator typed to a [`Command`],
//! or to the one-line error the shell prints. Execution lives in
//! `console.rs`, next to the hardware it reports on.

use alloc::format;
use alloc::string::String;

/// Every console command, or family of commands: (name, usage, one-line
/// summary). `help` prints these; the families (`vm`, `net`, `migrate`)
/// detail their sub-commands in `<family> help` ([`FAMILIES`]).
pub const COMMANDS: &[(&str, &str, &str)] = &[
    (
        "help",
        "help",
        "this list; vm help, net help, migrate help, ft help",
    ),
    ("version", "version", "hypervisor version and boot ABI"),
    ("status", "status", "host name, uptime, memory, CPUs, VT-x"),
    ("mem", "mem", "physical frames and kernel heap"),
    ("cpus", "cpus", "CPUs and their local APIC IDs"),
    ("pci", "pci", "PCI functions with their BARs"),
    (
        "vmx",
        "vmx [msrs]",
        "VT-x capabilities (msrs: the raw capability MSRs)",
    ),
    (
        "log",
        "log [<level>]",
        "show or set the log level (off ... trace)",
    ),
    (
        "vm",
        "vm <command>",
        "guests: create, start, stop, list... (vm help)",
    ),
    (
        "net",
        "net <command>",
        "host network: address, ping, key... (net help)",
    ),
    (
        "migrate",
        "migrate <command>",
        "live migration to another host (migrate help)",
    ),
    (
        "ft",
        "ft <command>",
        "fault tolerance: a twin replays the guest (ft help)",
    ),
    ("reboot", "reboot", "reset the machine"),
    (
        "crash",
        "crash pf|gp|ud|de",
        "fault on purpose to test the crash report",
    ),
];

/// The console's width: no help line is longer.
pub const HELP_WIDTH: usize = crate::text::WIDTH;

/// A usage longer than this gets a line of its own, its description on
/// the next one, so one long usage does not push every description right.
const USAGE_COLUMN_MAX: usize = 40;

/// Lays out (usage, description) pairs as help lines: two spaces, the
/// usage padded to the family's column, a space, the description.
pub fn help_lines(entries: &[(&str, &str)]) -> alloc::vec::Vec<String> {
    let column = entries
        .iter()
        .map(|(usage, _)| usage.len())
        .filter(|n| *n <= USAGE_COLUMN_MAX)
        .max()
        .unwrap_or(0);
    let mut lines = alloc::vec::Vec::new();
    for (usage, what) in entries {
        if usage.len() <= column {
            lines.push(format!("  {usage:<column$} {what}"));
        } else {
            lines.push(format!("  {usage}"));
            lines.push(format!("  {:<column$} {what}", ""));
        }
    }
    lines
}

/// What `help` prints: one line per command or family.
pub fn help() -> alloc::vec::Vec<String> {
    let entries: alloc::vec::Vec<(&str, &str)> = COMMANDS
        .iter()
        .map(|(_, usage, what)| (*usage, *what))
        .collect();
    help_lines(&entries)
}

/// What `<family> help` prints (without `vm help`'s list of images).
pub fn family_help(family: &str) -> Option<alloc::vec::Vec<String>> {
    FAMILIES
        .iter()
        .find(|(name, _)| *name == family)
        .map(|(_, entries)| help_lines(entries))
}

pub use crate::text::wrap_list;

/// The families of commands with sub-commands, and what `<family> help`
/// lists for each.
pub const FAMILIES: &[(&str, &[(&str, &str)])] = &[
    ("vm", VM_USAGE),
    ("net", NET_USAGE),
    ("migrate", MIGRATE_USAGE),
    ("ft", FT_USAGE),
];

pub use crate::arch::Fault;

pub use crate::vmm::{MAX_VM_MIB, MIN_VM_MIB};
/// Longest VM name.
pub const MAX_VM_NAME: usize = migrate::names::MAX_VM_NAME;

/// The `vm` sub-commands: (usage, description).
pub const VM_USAGE: &[(&str, &str)] = &[
    ("vm list", "name, state, RAM, exit code"),
    (
        "vm create <name> mem=<MiB> image=<module> [arg=<n>]",
        "reserve RAM for a guest (4 to 3072 MiB)",
    ),
    (
        "  [cpu=host|x86-64|haswell|skylake-server] [rdtsc=exit]",
        "CPU profile (default host); RDTSC exits",
    ),
    (
        "vm start <name>",
        "run it (again, from the image, if it stopped)",
    ),
    ("vm stop <name>", "stop it; its RAM stays allocated"),
    ("vm delete <name>", "stop it and free its RAM"),
    ("vm show <name>", "its RAM, image, CPU profile and features"),
    ("vm stats <name>", "exits by reason, run time"),
    (
        "vm checksum <name>",
        "ask the guest for its memory checksum (port 0xF5)",
    ),
    (
        "vm dirty <name>",
        "dirty pages: tracking on, then written since last look",
    ),
];

/// A parsed `vm` command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmCommand {
    Help,
    List,
    Create {
        name: String,
        mem_mib: u64,
        image: String,
        arg: u64,
        /// CPU profile (`host` unless told).
        cpu: String,
        /// RDTSC and RDTSCP exit to the guest clock.
        rdtsc_exit: bool,
    },
    Start(String),
    Show(String),
    Stop(String),
    Delete(String),
    Stats(String),
    Checksum(String),
    Dirty(String),
}

/// The `net` sub-commands: (usage, description).
pub const NET_USAGE: &[(&str, &str)] = &[
    ("net show", "MAC, link, address, key, counters"),
    (
        "net set ip=<a.b.c.d/len> [gw=<a.b.c.d>]",
        "set the host's address",
    ),
    (
        "net ping <a.b.c.d> [count]",
        "ICMP echo (count 1-100, default 4)",
    ),
    ("net key <hex>", "channel key, 32-128 hex digits, hidden"),
    (
        "net bench <a.b.c.d>[:port] [MiB]",
        "send MiB (default 16) to a sink",
    ),
    ("net sink [stop]", "accept bench transfers on port 7001"),
    (
        "net filter [drop <a.b.c.d> | clear]",
        "drop frames to and from an address",
    ),
];

/// Default and largest `net bench` size (MiB).
pub const BENCH_DEFAULT_MIB: u64 = 16;
pub const BENCH_MAX_MIB: u64 = 4096;

/// A parsed `net` command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetCommand {
    Help,
    Show,
    Set(netstack::stack::IpConfig),
    Ping {
        target: netstack::stack::Ipv4Address,
        count: u16,
    },
    Key(netstack::codec::Key),
    Bench {
        target: netstack::stack::Ipv4Address,
        port: u16,
        mib: u64,
    },
    Sink(bool),
    FilterShow,
    FilterDrop(netstack::stack::Ipv4Address),
    FilterClear,
}

/// The `migrate` sub-commands: (usage, description).
pub const MIGRATE_USAGE: &[(&str, &str)] = &[
    (
        "migrate <vm> <ip>[:port] [downtime=<ms>] [bandwidth=<MiB/s>] [background]",
        "move a running guest there; Ctrl-C cancels",
    ),
    (
        "  downtime=<ms>",
        "longest guest pause (1-60000, default 300)",
    ),
    ("  bandwidth=<MiB/s>", "most of the link to use (1-100000)"),
    (
        "  background",
        "back to the prompt at once; progress follows",
    ),
    (
        "migrate cancel <vm>",
        "stop a migration; the guest stays here",
    ),
    (
        "migrate check <vm> <ip>[:port]",
        "could the guest move there? (lists blockers)",
    ),
    (
        "migrate listen [stop]",
        "accept incoming guests on port 7002",
    ),
    (
        "migrate [status]",
        "listening, incoming and outgoing migrations",
    ),
];

/// The `ft` sub-commands: (usage, description).
pub const FT_USAGE: &[(&str, &str)] = &[
    (
        "ft enable <vm> <ip>[:port] [witness=<ip>|none]",
        "protect a running guest: its twin replays it there",
    ),
    (
        "  witness=<ip>|none",
        "who decides if the twins lose each other (ft.witness)",
    ),
    (
        "ft disable <vm>",
        "end protection on both hosts; the primary runs on",
    ),
    (
        "ft listen [stop]",
        "be a twin: accept guests to replay on port 7003",
    ),
    (
        "ft status [<vm>]",
        "role, log position, lag, held output, checks",
    ),
    (
        "ft watch <vm> on|off",
        "secondary: show the guest lines it replays",
    ),
    (
        "ft witness [stop]",
        "arbitrate for twins (port 7004); no VMX needed",
    ),
    (
        "ft flip <vm> <gpa>",
        "diagnostic: flip a guest byte on the secondary",
    ),
];

/// The port `ft listen` takes connections on.
pub const FT_PORT: u16 = ft_lockstep::DEFAULT_PORT;

/// A parsed `ft` command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FtCommand {
    Help,
    Listen(bool),
    Status(Option<String>),
    Enable {
        vm: String,
        target: netstack::stack::Ipv4Address,
        port: u16,
        /// `witness=`: `Some(None)` is `none`; `None` not given (hv.cfg's
        /// `ft.witness` then).
        witness: Option<Option<netstack::stack::Ipv4Address>>,
    },
    Disable(String),
    Watch {
        vm: String,
        on: bool,
    },
    Witness(bool),
    Flip {
        vm: String,
        gpa: u64,
    },
}

fn parse_ft(args: &[&str]) -> Result<FtCommand, String> {
    let usage = "usage: ft enable <vm> <ip>[:port] [witness=<ip>|none] | ft disable <vm> | ft listen [stop] | ft status [<vm>] | ft watch <vm> on|off | ft witness [stop] | ft flip <vm> <gpa>";
    let enable_usage = "usage: ft enable <vm> <ip>[:port] [witness=<ip>|none]";
    match args {
        ["help"] => Ok(FtCommand::Help),
        [] | ["status"] => Ok(FtCommand::Status(None)),
        ["status", vm] => Ok(FtCommand::Status(Some(check_vm_name(vm)?))),
        ["listen"] => Ok(FtCommand::Listen(true)),
        ["listen", "stop"] => Ok(FtCommand::Listen(false)),
        ["enable", vm, peer, rest @ ..] if rest.len() <= 1 => {
            let vm = check_vm_name(vm)?;
            let (target, port) = parse_peer(peer, FT_PORT)?;
            let witness = match rest {
                [] => None,
                [w] => match w.strip_prefix("witness=") {
                    Some("none") => Some(None),
                    Some(ip) => Some(Some(
                        netstack::stack::parse_ipv4(ip)
                            .map_err(|e| format!("bad witness address: {e}"))?,
                    )),
                    None => return Err(String::from(enable_usage)),
                },
                _ => return Err(String::from(enable_usage)),
            };
            Ok(FtCommand::Enable {
                vm,
                target,
                port,
                witness,
            })
        }
        ["enable", ..] => Err(String::from(enable_usage)),
        ["witness"] => Ok(FtCommand::Witness(true)),
        ["witness", "stop"] => Ok(FtCommand::Witness(false)),
        ["witness", ..] => Err(String::from("usage: ft witness [stop]")),
        ["flip", vm, gpa] => {
            let vm = check_vm_name(vm)?;
            let digits = gpa.strip_prefix("0x").unwrap_or(gpa);
            let gpa = u64::from_str_radix(digits, 16)
                .map_err(|_| String::from("usage: ft flip <vm> <gpa> (a hex guest address)"))?;
            Ok(FtCommand::Flip { vm, gpa })
        }
        ["flip", ..] => Err(String::from(
            "usage: ft flip <vm> <gpa> (a hex guest address)",
        )),
        ["disable", vm] => Ok(FtCommand::Disable(check_vm_name(vm)?)),
        ["disable", ..] => Err(String::from("usage: ft disable <vm>")),
        ["watch", vm, on @ ("on" | "off")] => Ok(FtCommand::Watch {
            vm: check_vm_name(vm)?,
            on: *on == "on",
        }),
        ["watch", ..] => Err(String::from("usage: ft watch <vm> on|off")),
        _ => Err(String::from(usage)),
    }
}

/// A parsed `migrate` command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MigrateCommand {
    Help,
    Listen(bool),
    Status,
    Check {
        vm: String,
        target: netstack::stack::Ipv4Address,
        port: u16,
    },
    Out {
        vm: String,
        target: netstack::stack::Ipv4Address,
        port: u16,
        downtime_ms: u64,
        bandwidth_mib: Option<u64>,
        /// `background`: back to the prompt at once; progress arrives as
        /// lines of their own, `migrate cancel <vm>` stops it.
        background: bool,
    },
    /// `migrate cancel <vm>`: stops an outgoing migration; the guest keeps
    /// running here.
    Cancel(String),
}

/// The port `migrate listen` takes connections on.
pub const MIGRATE_PORT: u16 = migrate::DEFAULT_PORT;

/// Default downtime budget of a migration (ms).
pub const DEFAULT_DOWNTIME_MS: u64 = 300;

/// `a.b.c.d[:port]`, with `default_port` when none is given.
fn parse_peer(
    peer: &str,
    default_port: u16,
) -> Result<(netstack::stack::Ipv4Address, u16), String> {
    let (ip, port) = match peer.split_once(':') {
        Some((ip, port)) => (
            ip,
            port.parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| format!("bad port '{}'", shorten(port)))?,
        ),
        None => (peer, default_port),
    };
    Ok((parse_ip(ip)?, port))
}

fn parse_migrate(args: &[&str]) -> Result<MigrateCommand, String> {
    let usage = "usage: migrate <vm> <ip>[:port] [downtime=<ms>] [bandwidth=<MiB/s>] [background] | migrate cancel <vm> | migrate check <vm> <ip>[:port] | migrate listen [stop] | migrate status";
    match args {
        ["check", vm, peer] => {
            let vm = check_vm_name(vm)?;
            let (target, port) = parse_peer(peer, MIGRATE_PORT)?;
            Ok(MigrateCommand::Check { vm, target, port })
        }
        ["check", ..] => Err(String::from("usage: migrate check <vm> <ip>[:port]")),
        ["cancel", vm] => Ok(MigrateCommand::Cancel(check_vm_name(vm)?)),
        ["cancel", ..] => Err(String::from("usage: migrate cancel <vm>")),
        ["help"] => Ok(MigrateCommand::Help),
        [] | ["status"] => Ok(MigrateCommand::Status),
        ["listen"] => Ok(MigrateCommand::Listen(true)),
        ["listen", "stop"] => Ok(MigrateCommand::Listen(false)),
        [vm, peer, opts @ ..] if *vm != "listen" && *vm != "status" => {
            let vm = check_vm_name(vm)?;
            let (target, port) = parse_peer(peer, MIGRATE_PORT)?;
            let (mut downtime_ms, mut bandwidth_mib) = (DEFAULT_DOWNTIME_MS, None);
            let mut background = false;
            for opt in opts {
                if *opt == "background" {
                    background = true;
                    continue;
                }
                match opt.split_once('=') {
                    Some(("downtime", v)) => {
                        downtime_ms = parse_u64(v)
                            .filter(|d| (1..=60_000).contains(d))
                            .ok_or_else(|| {
                                format!("bad downtime '{}' (expected 1 to 60000 ms)", shorten(v))
                            })?
                    }
                    Some(("bandwidth", v)) => {
                        bandwidth_mib = Some(
                            parse_u64(v)
                                .filter(|b| (1..=100_000).contains(b))
                                .ok_or_else(|| {
                                    format!(
                                        "bad bandwidth '{}' (expected 1 to 100000 MiB/s)",
                                        shorten(v)
                                    )
                                })?,
                        )
                    }
                    _ => return Err(format!("unknown option '{}' ({usage})", shorten(opt))),
                }
            }
            Ok(MigrateCommand::Out {
                vm,
                target,
                port,
                downtime_ms,
                bandwidth_mib,
                background,
            })
        }
        _ => Err(String::from(usage)),
    }
}

/// A parsed command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Blank line: just print a new prompt.
    Empty,
    Help,
    Version,
    Status,
    Mem,
    Cpus,
    Pci,
    Vmx,
    /// `vmx msrs`: the raw IA32_VMX_* capability MSRs.
    VmxMsrs,
    /// `log` (show) or `log <level>` (set).
    Log(Option<log::LevelFilter>),
    Reboot,
    Crash(Fault),
    Vm(VmCommand),
    Net(NetCommand),
    Migrate(MigrateCommand),
    Ft(FtCommand),
}

/// Parses one line. The error is the full message after `error: `.
pub fn parse(line: &str) -> Result<Command, String> {
    let mut words = line.split_whitespace();
    let Some(name) = words.next() else {
        return Ok(Command::Empty);
    };
    let args: alloc::vec::Vec<&str> = words.collect();
    let no_args = |c: Command| {
        if args.is_empty() {
            Ok(c)
        } else {
            Err(format!("{name} takes no arguments"))
        }
    };
    match name {
        "help" | "?" => no_args(Command::Help),
        "version" => no_args(Command::Version),
        "status" => no_args(Command::Status),
        "mem" => no_args(Command::Mem),
        "cpus" => no_args(Command::Cpus),
        "pci" => no_args(Command::Pci),
        "vmx" => match args.as_slice() {
            [] => Ok(Command::Vmx),
            ["msrs"] => Ok(Command::VmxMsrs),
            _ => Err(String::from("usage: vmx [msrs]")),
        },
        "reboot" => no_args(Command::Reboot),
        "log" => match args.as_slice() {
            [] => Ok(Command::Log(None)),
            [level] => crate::config::parse_level(level)
                .map(|l| Command::Log(Some(l)))
                .ok_or_else(|| {
                    format!(
                        "unknown log level '{}' (expected off, error, warn, info, debug, trace)",
                        shorten(level)
                    )
                }),
            _ => Err(String::from("usage: log [off|error|warn|info|debug|trace]")),
        },
        "vm" => parse_vm(&args).map(Command::Vm),
        "net" => parse_net(&args).map(Command::Net),
        "migrate" => parse_migrate(&args).map(Command::Migrate),
        "ft" => parse_ft(&args).map(Command::Ft),
        "crash" => match args.as_slice() {
            ["pf"] => Ok(Command::Crash(Fault::PageFault)),
            ["gp"] => Ok(Command::Crash(Fault::GeneralProtection)),
            ["ud"] => Ok(Command::Crash(Fault::InvalidOpcode)),
            ["de"] => Ok(Command::Crash(Fault::DivideError)),
            _ => Err(String::from("usage: crash pf|gp|ud|de")),
        },
        other => Err(format!(
            "unknown command '{}' (type 'help' for a list)",
            shorten(other)
        )),
    }
}

fn parse_ip(s: &str) -> Result<netstack::stack::Ipv4Address, String> {
    netstack::stack::parse_ipv4(s).map_err(|e| format!("'{}': {e}", shorten(s)))
}

fn parse_net(args: &[&str]) -> Result<NetCommand, String> {
    match args.first().copied() {
        None => Ok(NetCommand::Show),
        Some("show") if args.len() == 1 => Ok(NetCommand::Show),
        Some("show") => Err(String::from("net show takes no arguments")),
        Some("help") => Ok(NetCommand::Help),
        Some("set") => {
            let usage = "usage: net set ip=<a.b.c.d/len> [gw=<a.b.c.d>]";
            let (mut ip, mut gw) = (None, None);
            for opt in &args[1..] {
                match opt.split_once('=') {
                    Some(("ip", v)) => ip = Some(v),
                    Some(("gw", v)) => gw = Some(v),
                    _ => return Err(format!("unknown option '{}' ({usage})", shorten(opt))),
                }
            }
            let ip = ip.ok_or(usage)?;
            netstack::stack::parse_ip_config(ip, gw)
                .map(NetCommand::Set)
                .map_err(|e| match netstack::stack::parse_ip_config(ip, None) {
                    Ok(_) => format!("gw={}: {e}", shorten(gw.unwrap_or(""))),
                    Err(_) => format!("ip={}: {e}", shorten(ip)),
                })
        }
        Some("ping") => {
            let usage = "usage: net ping <a.b.c.d> [count]";
            let (target, count) = match &args[1..] {
                [t] => (parse_ip(t)?, 4),
                [t, c] => {
                    let count = parse_u64(c)
                        .filter(|c| (1..=100).contains(c))
                        .ok_or_else(|| format!("bad count '{}' (expected 1 to 100)", shorten(c)))?;
                    (parse_ip(t)?, count as u16)
                }
                _ => return Err(String::from(usage)),
            };
            Ok(NetCommand::Ping { target, count })
        }
        Some("key") => match &args[1..] {
            // The key itself is never repeated in a message.
            [hex] => netstack::codec::Key::from_hex(hex)
                .map(NetCommand::Key)
                .map_err(|e| format!("bad key: {e}")),
            _ => Err(String::from("usage: net key <hex> (32 to 128 hex digits)")),
        },
        Some("bench") => {
            let usage = "usage: net bench <a.b.c.d>[:port] [MiB]";
            let (peer, mib) = match &args[1..] {
                [p] => (*p, BENCH_DEFAULT_MIB),
                [p, m] => (
                    *p,
                    parse_u64(m)
                        .filter(|m| (1..=BENCH_MAX_MIB).contains(m))
                        .ok_or_else(|| {
                            format!(
                                "bad size '{}' (expected 1 to {BENCH_MAX_MIB} MiB)",
                                shorten(m)
                            )
                        })?,
                ),
                _ => return Err(String::from(usage)),
            };
            let (target, port) = parse_peer(peer, netstack::bench::SINK_PORT)?;
            Ok(NetCommand::Bench { target, port, mib })
        }
        Some("sink") => match &args[1..] {
            [] => Ok(NetCommand::Sink(true)),
            ["stop"] => Ok(NetCommand::Sink(false)),
            _ => Err(String::from("usage: net sink [stop]")),
        },
        Some("filter") => match &args[1..] {
            [] => Ok(NetCommand::FilterShow),
            ["drop", ip] => parse_ip(ip).map(NetCommand::FilterDrop),
            ["clear"] => Ok(NetCommand::FilterClear),
            _ => Err(String::from("usage: net filter [drop <a.b.c.d> | clear]")),
        },
        Some(other) => Err(format!(
            "unknown net command '{}' (try net help)",
            shorten(other)
        )),
    }
}

fn parse_vm(args: &[&str]) -> Result<VmCommand, String> {
    let name_arg = |sub: &str| -> Result<String, String> {
        match &args[1..] {
            [name] => check_vm_name(name),
            _ => Err(format!("usage: vm {sub} <name>")),
        }
    };
    match args.first().copied() {
        None | Some("help") => Ok(VmCommand::Help),
        Some("list") if args.len() == 1 => Ok(VmCommand::List),
        Some("list") => Err(String::from("vm list takes no arguments")),
        Some("start") => name_arg("start").map(VmCommand::Start),
        Some("stop") => name_arg("stop").map(VmCommand::Stop),
        Some("delete") => name_arg("delete").map(VmCommand::Delete),
        Some("stats") => name_arg("stats").map(VmCommand::Stats),
        Some("show") => name_arg("show").map(VmCommand::Show),
        Some("checksum") => name_arg("checksum").map(VmCommand::Checksum),
        Some("dirty") => name_arg("dirty").map(VmCommand::Dirty),
        Some("create") => {
            let usage =
                "usage: vm create <name> mem=<MiB> image=<module> [arg=<n>] [cpu=<profile>]";
            let name = check_vm_name(args.get(1).ok_or(usage)?)?;
            let (mut mem, mut image, mut arg) = (None, None, 0u64);
            let (mut cpu, mut rdtsc_exit) = (String::from("host"), false);
            for opt in &args[2..] {
                let (key, value) = opt
                    .split_once('=')
                    .ok_or_else(|| format!("expected key=value, got '{}'", shorten(opt)))?;
                match key {
                    "mem" => {
                        let mib = parse_u64(value)
                            .filter(|m| (MIN_VM_MIB..=MAX_VM_MIB).contains(m))
                            .ok_or_else(|| {
                                format!(
                                    "bad size 'mem={}' (expected {MIN_VM_MIB} to {MAX_VM_MIB} MiB)",
                                    shorten(value)
                                )
                            })?;
                        mem = Some(mib);
                    }
                    "image" if !value.is_empty() => image = Some(String::from(value)),
                    "arg" => {
                        arg = parse_u64(value).ok_or_else(|| {
                            format!("bad value 'arg={}' (expected a number)", shorten(value))
                        })?
                    }
                    "cpu" if is_profile_name(value) => cpu = String::from(value),
                    "cpu" => {
                        return Err(format!(
                            "bad CPU profile 'cpu={}' (a name such as host or skylake-server)",
                            shorten(value)
                        ));
                    }
                    "rdtsc" => {
                        rdtsc_exit = match value {
                            "exit" => true,
                            "native" => false,
                            _ => {
                                return Err(format!(
                                    "bad value 'rdtsc={}' (expected exit or native)",
                                    shorten(value)
                                ));
                            }
                        }
                    }
                    _ => return Err(format!("unknown option '{}' ({usage})", shorten(opt))),
                }
            }
            match (mem, image) {
                (Some(mem_mib), Some(image)) => Ok(VmCommand::Create {
                    name,
                    mem_mib,
                    image,
                    arg,
                    cpu,
                    rdtsc_exit,
                }),
                _ => Err(String::from(usage)),
            }
        }
        Some(other) => Err(format!(
            "unknown vm command '{}' (type 'vm help')",
            shorten(other)
        )),
    }
}

/// A CPU profile's name as the console accepts it: 1-32 characters of
/// `a-z`, `0-9` and `-` (whether it exists is `vm create`'s question).
fn is_profile_name(s: &str) -> bool {
    (1..=32).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

fn check_vm_name(name: &str) -> Result<String, String> {
    // One rule for the console and for names arriving from a peer.
    migrate::names::check_vm_name(name)
        .map(|()| String::from(name))
        .map_err(|e| format!("{e}"))
}

/// Decimal, or hexadecimal with `0x`.
fn parse_u64(s: &str) -> Option<u64> {
    match s.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

/// Echoing back a pasted megabyte helps nobody.
fn shorten(s: &str) -> String {
    crate::text::quote(s, crate::text::OPERATOR_CHARS)
}

#[cfg(test)]
mod tests;
