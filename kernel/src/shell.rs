//! Console command parsing: from a line the operator typed to a [`Command`],
//! or to the one-line error the shell prints. Execution lives in
//! `console.rs`, next to the hardware it reports on.

use alloc::format;
use alloc::string::String;

/// Every console command: (name, usage, one-line description).
pub const COMMANDS: &[(&str, &str, &str)] = &[
    ("help", "help", "this list"),
    ("version", "version", "hypervisor version and boot ABI"),
    ("status", "status", "host name, uptime, memory, CPUs, VT-x"),
    ("mem", "mem", "physical frames and kernel heap"),
    ("cpus", "cpus", "CPUs and their local APIC IDs"),
    ("pci", "pci", "PCI functions with their BARs"),
    (
        "vmx",
        "vmx [msrs]",
        "VT-x capabilities of this CPU (msrs: the raw capability MSRs)",
    ),
    (
        "log",
        "log [off|error|warn|info|debug|trace]",
        "show or set the log level",
    ),
    ("reboot", "reboot", "reset the machine"),
    (
        "crash",
        "crash pf|gp|ud|de",
        "fault on purpose to test the crash report (halts the host)",
    ),
];

/// A fault the `crash` command can raise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Page fault: read of the unmapped page 0.
    PageFault,
    /// General protection: access through a non-canonical address.
    GeneralProtection,
    /// Invalid opcode: `ud2`.
    InvalidOpcode,
    /// Divide error: division by zero.
    DivideError,
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

/// Echoing back a pasted megabyte helps nobody.
fn shorten(s: &str) -> String {
    if s.chars().count() <= 40 {
        String::from(s)
    } else {
        let mut t: String = s.chars().take(40).collect();
        t.push_str("...");
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_command() {
        for (name, _, _) in COMMANDS.iter().filter(|c| c.0 != "crash") {
            assert!(parse(name).is_ok(), "{name}");
        }
        assert_eq!(parse("vmx msrs"), Ok(Command::VmxMsrs));
        assert_eq!(parse("vmx x").unwrap_err(), "usage: vmx [msrs]");
        assert_eq!(parse("crash pf"), Ok(Command::Crash(Fault::PageFault)));
        assert_eq!(parse("crash").unwrap_err(), "usage: crash pf|gp|ud|de");
        assert_eq!(parse("  status  "), Ok(Command::Status));
        assert_eq!(parse(""), Ok(Command::Empty));
        assert_eq!(parse("   \t"), Ok(Command::Empty));
        assert_eq!(parse("log"), Ok(Command::Log(None)));
        assert_eq!(
            parse("log DEBUG"),
            Ok(Command::Log(Some(log::LevelFilter::Debug)))
        );
    }

    #[test]
    fn reports_errors() {
        assert_eq!(
            parse("frobnicate").unwrap_err(),
            "unknown command 'frobnicate' (type 'help' for a list)"
        );
        assert_eq!(parse("mem now").unwrap_err(), "mem takes no arguments");
        assert_eq!(
            parse("log loud").unwrap_err(),
            "unknown log level 'loud' (expected off, error, warn, info, debug, trace)"
        );
        assert!(parse("log info debug").is_err());
        let long = "x".repeat(1000);
        assert!(parse(&long).unwrap_err().len() < 100);
    }
}
