//! Host tests of the console parser and its help text.
use super::*;

#[test]
fn parses_every_command() {
    for (name, _, _) in COMMANDS.iter().filter(|c| c.0 != "crash" && c.0 != "vm") {
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
fn parses_vm_commands() {
    assert_eq!(parse("vm"), Ok(Command::Vm(VmCommand::Help)));
    assert_eq!(parse("vm list"), Ok(Command::Vm(VmCommand::List)));
    assert_eq!(
        parse("vm create g1 mem=16 image=hello"),
        Ok(Command::Vm(VmCommand::Create {
            name: "g1".into(),
            mem_mib: 16,
            image: "hello".into(),
            arg: 0,
            cpu: "host".into(),
            rdtsc_exit: false,
        }))
    );
    assert_eq!(
        parse("vm create g1 mem=16 image=hello cpu=skylake-server rdtsc=exit"),
        Ok(Command::Vm(VmCommand::Create {
            name: "g1".into(),
            mem_mib: 16,
            image: "hello".into(),
            arg: 0,
            cpu: "skylake-server".into(),
            rdtsc_exit: true,
        }))
    );
    assert_eq!(
        parse("vm show g1"),
        Ok(Command::Vm(VmCommand::Show("g1".into())))
    );
    assert_eq!(
        parse("vm create g-2 image=rogue mem=0x20 arg=2"),
        Ok(Command::Vm(VmCommand::Create {
            name: "g-2".into(),
            mem_mib: 32,
            image: "rogue".into(),
            arg: 2,
            cpu: "host".into(),
            rdtsc_exit: false,
        }))
    );
    assert_eq!(
        parse("vm start g1"),
        Ok(Command::Vm(VmCommand::Start("g1".into())))
    );
    assert_eq!(
        parse("vm stats g1"),
        Ok(Command::Vm(VmCommand::Stats("g1".into())))
    );
}

#[test]
fn rejects_bad_vm_commands() {
    assert_eq!(
        parse("vm create g1 mem=2 image=hello").unwrap_err(),
        "bad size 'mem=2' (expected 4 to 3072 MiB)"
    );
    assert_eq!(
        parse("vm create g1 mem=lots image=hello").unwrap_err(),
        "bad size 'mem=lots' (expected 4 to 3072 MiB)"
    );
    assert!(
        parse("vm create g1 mem=16")
            .unwrap_err()
            .starts_with("usage: vm create")
    );
    assert!(
        parse("vm create g1 mem=16 image=x colour=red")
            .unwrap_err()
            .starts_with("unknown option 'colour=red'")
    );
    assert!(
        parse("vm create bad/name mem=16 image=x")
            .unwrap_err()
            .starts_with("bad VM name")
    );
    assert!(
        parse("vm create 12345678901234567 mem=16 image=x")
            .unwrap_err()
            .starts_with("bad VM name")
    );
    assert!(
        parse("vm create g1 mem=16 image=x cpu=Sky/Lake")
            .unwrap_err()
            .starts_with("bad CPU profile 'cpu=Sky/Lake'")
    );
    assert_eq!(
        parse("vm create g1 mem=16 image=x rdtsc=often").unwrap_err(),
        "bad value 'rdtsc=often' (expected exit or native)"
    );
    assert_eq!(parse("vm start").unwrap_err(), "usage: vm start <name>");
    assert_eq!(
        parse("vm frob").unwrap_err(),
        "unknown vm command 'frob' (type 'vm help')"
    );
    assert_eq!(
        parse("vm list x").unwrap_err(),
        "vm list takes no arguments"
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

#[test]
fn net_commands() {
    use netstack::stack::parse_ipv4;
    assert_eq!(parse("net"), Ok(Command::Net(NetCommand::Show)));
    assert_eq!(parse("net show"), Ok(Command::Net(NetCommand::Show)));
    let Ok(Command::Net(NetCommand::Set(c))) = parse("net set ip=10.0.0.1/24 gw=10.0.0.9") else {
        panic!()
    };
    assert_eq!(c.to_string(), "10.0.0.1/24 gw 10.0.0.9");
    assert_eq!(
        parse("net ping 10.0.0.2 3"),
        Ok(Command::Net(NetCommand::Ping {
            target: parse_ipv4("10.0.0.2").unwrap(),
            count: 3
        }))
    );
    assert_eq!(
        parse("net bench 10.0.0.2:9000 64"),
        Ok(Command::Net(NetCommand::Bench {
            target: parse_ipv4("10.0.0.2").unwrap(),
            port: 9000,
            mib: 64
        }))
    );
    assert!(matches!(
        parse("net key 00112233445566778899aabbccddeeff"),
        Ok(Command::Net(NetCommand::Key(_)))
    ));
    assert_eq!(
        parse("net sink stop"),
        Ok(Command::Net(NetCommand::Sink(false)))
    );
    assert_eq!(
        parse("net filter"),
        Ok(Command::Net(NetCommand::FilterShow))
    );
    assert_eq!(
        parse("net filter drop 10.0.0.2"),
        Ok(Command::Net(NetCommand::FilterDrop(
            netstack::stack::parse_ipv4("10.0.0.2").unwrap()
        )))
    );
    assert_eq!(
        parse("net filter clear"),
        Ok(Command::Net(NetCommand::FilterClear))
    );
    for bad in [
        "net filter drop",
        "net filter drop 1.2.3",
        "net filter bogus",
        "net filter clear now",
    ] {
        assert!(parse(bad).is_err(), "{bad}");
    }
    assert_eq!(
        parse("net filter bogus"),
        Err(String::from("usage: net filter [drop <a.b.c.d> | clear]"))
    );
    for (line, err) in [
        ("net set", "usage: net set ip=<a.b.c.d/len> [gw=<a.b.c.d>]"),
        (
            "net set ip=10.0.0.1",
            "ip=10.0.0.1: missing prefix length (expected a.b.c.d/len)",
        ),
        (
            "net set ip=10.0.0.1/24 gw=10.1.0.1",
            "gw=10.1.0.1: the gateway must be another address in the same subnet",
        ),
        (
            "net set mask=1",
            "unknown option 'mask=1' (usage: net set ip=<a.b.c.d/len> [gw=<a.b.c.d>])",
        ),
        ("net ping", "usage: net ping <a.b.c.d> [count]"),
        (
            "net ping 10.0.0.300",
            "'10.0.0.300': not an IPv4 address (expected a.b.c.d)",
        ),
        ("net ping 10.0.0.2 0", "bad count '0' (expected 1 to 100)"),
        (
            "net bench 10.0.0.2 0",
            "bad size '0' (expected 1 to 4096 MiB)",
        ),
        ("net bench 10.0.0.2:0", "bad port '0'"),
        ("net sink now", "usage: net sink [stop]"),
        ("net frob", "unknown net command 'frob' (try net help)"),
        ("net show x", "net show takes no arguments"),
    ] {
        assert_eq!(parse(line), Err(String::from(err)), "{line}");
    }
    // A bad key is described, never quoted.
    let e = parse("net key 0011zz").unwrap_err();
    assert!(e.starts_with("bad key: ") && !e.contains("0011zz"), "{e}");
}

#[test]
fn ft_commands() {
    use netstack::stack::parse_ipv4;
    assert_eq!(parse("ft"), Ok(Command::Ft(FtCommand::Status(None))));
    assert_eq!(
        parse("ft status d"),
        Ok(Command::Ft(FtCommand::Status(Some("d".into()))))
    );
    assert_eq!(parse("ft listen"), Ok(Command::Ft(FtCommand::Listen(true))));
    assert_eq!(
        parse("ft listen stop"),
        Ok(Command::Ft(FtCommand::Listen(false)))
    );
    assert_eq!(
        parse("ft enable d 10.0.0.2"),
        Ok(Command::Ft(FtCommand::Enable {
            vm: "d".into(),
            target: parse_ipv4("10.0.0.2").unwrap(),
            port: FT_PORT,
            witness: None,
        }))
    );
    assert!(matches!(
        parse("ft enable d 10.0.0.2 witness=10.0.0.9"),
        Ok(Command::Ft(FtCommand::Enable { witness: Some(Some(w)), .. })) if w == parse_ipv4("10.0.0.9").unwrap()
    ));
    assert!(matches!(
        parse("ft enable d 10.0.0.2 witness=none"),
        Ok(Command::Ft(FtCommand::Enable {
            witness: Some(None),
            ..
        }))
    ));
    assert_eq!(
        parse("ft witness"),
        Ok(Command::Ft(FtCommand::Witness(true)))
    );
    assert_eq!(
        parse("ft witness stop"),
        Ok(Command::Ft(FtCommand::Witness(false)))
    );
    assert_eq!(
        parse("ft flip d 0x200000"),
        Ok(Command::Ft(FtCommand::Flip {
            vm: "d".into(),
            gpa: 0x20_0000
        }))
    );
    assert!(matches!(
        parse("ft enable d 10.0.0.2:9000"),
        Ok(Command::Ft(FtCommand::Enable { port: 9000, .. }))
    ));
    assert_eq!(
        parse("ft disable d"),
        Ok(Command::Ft(FtCommand::Disable("d".into())))
    );
    assert_eq!(
        parse("ft watch d off"),
        Ok(Command::Ft(FtCommand::Watch {
            vm: "d".into(),
            on: false
        }))
    );
    for (line, err) in [
        (
            "ft enable d",
            "usage: ft enable <vm> <ip>[:port] [witness=<ip>|none]",
        ),
        (
            "ft enable d 10.0.0.2 witnes=none",
            "usage: ft enable <vm> <ip>[:port] [witness=<ip>|none]",
        ),
        ("ft witness now", "usage: ft witness [stop]"),
        (
            "ft flip d zz",
            "usage: ft flip <vm> <gpa> (a hex guest address)",
        ),
        ("ft disable", "usage: ft disable <vm>"),
        ("ft watch d maybe", "usage: ft watch <vm> on|off"),
    ] {
        assert_eq!(parse(line), Err(String::from(err)), "{line}");
    }
    assert!(parse("ft enable d 10.0.0").is_err());
    assert!(
        parse("ft enable d 10.0.0.2 witness=10.0")
            .unwrap_err()
            .starts_with("bad witness address")
    );
    assert!(parse("ft enable d 10.0.0.2:0").is_err());
    assert!(
        parse("ft frobnicate")
            .unwrap_err()
            .starts_with("usage: ft enable")
    );
}

#[test]
fn migrate_commands() {
    use netstack::stack::parse_ipv4;
    assert_eq!(
        parse("migrate listen"),
        Ok(Command::Migrate(MigrateCommand::Listen(true)))
    );
    assert_eq!(
        parse("migrate listen stop"),
        Ok(Command::Migrate(MigrateCommand::Listen(false)))
    );
    assert_eq!(
        parse("migrate status"),
        Ok(Command::Migrate(MigrateCommand::Status))
    );
    assert_eq!(
        parse("migrate d 10.0.0.2 downtime=50 bandwidth=8"),
        Ok(Command::Migrate(MigrateCommand::Out {
            vm: "d".into(),
            target: parse_ipv4("10.0.0.2").unwrap(),
            port: 7002,
            downtime_ms: 50,
            bandwidth_mib: Some(8),
            background: false,
        }))
    );
    assert!(matches!(
        parse("migrate d 10.0.0.2 background"),
        Ok(Command::Migrate(MigrateCommand::Out {
            background: true,
            ..
        }))
    ));
    assert_eq!(
        parse("migrate cancel d"),
        Ok(Command::Migrate(MigrateCommand::Cancel("d".into())))
    );
    assert_eq!(
        parse("migrate cancel"),
        Err(String::from("usage: migrate cancel <vm>"))
    );
    assert!(matches!(
        parse("migrate d 10.0.0.2:9000"),
        Ok(Command::Migrate(MigrateCommand::Out {
            port: 9000,
            downtime_ms: 300,
            bandwidth_mib: None,
            ..
        }))
    ));
    for (line, err) in [
        (
            "migrate d 10.0.0.2 downtime=0",
            "bad downtime '0' (expected 1 to 60000 ms)",
        ),
        (
            "migrate d 10.0.0.2 speed=3",
            "unknown option 'speed=3' (usage: migrate <vm> <ip>[:port] [downtime=<ms>] [bandwidth=<MiB/s>] [background] | migrate cancel <vm> | migrate check <vm> <ip>[:port] | migrate listen [stop] | migrate status)",
        ),
        (
            "migrate d 10.0.0.x",
            "'10.0.0.x': not an IPv4 address (expected a.b.c.d)",
        ),
    ] {
        assert_eq!(parse(line), Err(String::from(err)), "{line}");
    }
    assert_eq!(
        parse("migrate"),
        Ok(Command::Migrate(MigrateCommand::Status))
    );
    assert!(parse("migrate d").is_err());
}

fn check_width(what: &str, lines: &[String]) {
    for l in lines {
        assert!(l.starts_with("  "), "{what}: {l:?}");
        assert!(l.len() <= HELP_WIDTH, "{what}: {} columns: {l:?}", l.len());
    }
}

#[test]
fn help_fits_and_lists_every_command_and_family() {
    let help = help();
    check_width("help", &help);
    assert_eq!(help.len(), COMMANDS.len(), "one line each:\n{help:#?}");
    // As the system test reads it: two spaces, then the name.
    for (name, _, _) in COMMANDS {
        assert!(
            help.iter().any(|l| l[2..]
                .strip_prefix(name)
                .is_some_and(|r| r.is_empty() || r.starts_with(' '))),
            "help does not list {name}:\n{help:#?}"
        );
    }
    for (family, _) in FAMILIES {
        assert!(COMMANDS.iter().any(|c| c.0 == *family), "{family}");
        assert!(
            help.iter().any(|l| l.contains(&format!("{family} help"))),
            "help does not point at `{family} help`"
        );
    }
}

#[test]
fn family_help_fits_and_parses() {
    for (family, entries) in FAMILIES {
        let lines = family_help(family).unwrap();
        check_width(family, &lines);
        assert!(lines.len() >= entries.len(), "{family}");
        for (usage, _) in *entries {
            assert!(lines.iter().any(|l| l.contains(usage)), "{family}: {usage}");
        }
        let expected = match *family {
            "vm" => Command::Vm(VmCommand::Help),
            "net" => Command::Net(NetCommand::Help),
            "migrate" => Command::Migrate(MigrateCommand::Help),
            "ft" => Command::Ft(FtCommand::Help),
            other => panic!("a family without a help command: {other}"),
        };
        assert_eq!(parse(&format!("{family} help")), Ok(expected));
    }
    assert_eq!(family_help("mem"), None);
    // The system test counts `net help`'s lines: one per sub-command.
    assert_eq!(family_help("net").unwrap().len(), NET_USAGE.len());
    // Numbers written into the help text follow the code.
    let all: String = FAMILIES
        .iter()
        .flat_map(|(_, e)| e.iter())
        .map(|(u, w)| format!("{u} {w}\n"))
        .collect();
    assert!(all.contains(&format!("port {}", netstack::bench::SINK_PORT)));
    assert!(all.contains(&format!("port {MIGRATE_PORT}")));
    assert!(all.contains(&format!("port {FT_PORT}")));
    assert!(all.contains(&format!("({MIN_VM_MIB} to {MAX_VM_MIB} MiB)")));
    assert!(all.contains(&format!("default {DEFAULT_DOWNTIME_MS})")));
    assert!(all.contains(&format!("default {BENCH_DEFAULT_MIB})")));
}

#[test]
fn long_usages_take_a_line_of_their_own() {
    let lines = help_lines(&[("a", "first"), (&"b".repeat(50), "second")]);
    assert_eq!(
        lines,
        [
            String::from("  a first"),
            format!("  {}", "b".repeat(50)),
            String::from("    second"),
        ]
    );
}

#[test]
fn image_lists_wrap_at_80_columns() {
    assert_eq!(
        wrap_list("images: ", &["hello", "dirty"]),
        ["  images: hello, dirty"]
    );
    assert_eq!(wrap_list("images: ", &[]), ["  images: "]);
    let many: alloc::vec::Vec<String> = (0..40).map(|i| format!("guest{i}")).collect();
    let names: alloc::vec::Vec<&str> = many.iter().map(String::as_str).collect();
    let lines = wrap_list("images: ", &names);
    check_width("images", &lines);
    assert!(lines.len() > 1);
    let joined: String = lines
        .iter()
        .map(|l| l.trim())
        .collect::<alloc::vec::Vec<_>>()
        .join(" ");
    assert_eq!(joined, format!("images: {}", names.join(", ")));
}
