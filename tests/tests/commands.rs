//! Every console command answers as the contract says (QEMU, two CPUs).

mod common;

use common::{
    COMMANDS, caps, check_e1000, check_host_bridge, cpus, expect_single_line, mem, num, pci_lines,
    vmx_features,
};
use hv_tests::{LOADER_PATTERN, Machine, READY_PATTERN, line_pattern};

#[test]
fn qemu_information_commands() {
    let mut m = Machine::qemu().cpus(2).start();
    m.boot_to_prompt();

    let help = m.cmd("help");
    for cmd in COMMANDS {
        m.check(
            help.lines().any(|l| {
                l.strip_prefix("  ")
                    .and_then(|r| r.strip_prefix(cmd))
                    .is_some_and(|r| r.is_empty() || r.starts_with(char::is_whitespace))
            }),
            || format!("`help` does not list `{cmd}`:\n{help}"),
        );
    }
    m.check(help.lines().all(|l| l.starts_with("  ")), || {
        format!("every `help` line starts with two spaces:\n{help}")
    });
    // Each family of commands details itself; nothing is wider than the console.
    for (what, out) in [
        ("help", help.clone()),
        ("vm help", m.cmd("vm help")),
        ("net help", m.cmd("net help")),
        ("migrate help", m.cmd("migrate help")),
        ("ft help", m.cmd("ft help")),
    ] {
        m.check(
            out.lines().count() > 1
                && out
                    .lines()
                    .all(|l| l.starts_with("  ") && l.chars().count() <= 80),
            || format!("`{what}`: lines of two spaces and at most 80 columns:\n{out}"),
        );
    }

    let version = m.cmd("version");
    let v = caps(&m, &version, r"^hv (\S+) \(boot abi (\d+)\)$");
    m.check(v[1] == env!("CARGO_PKG_VERSION"), || {
        format!(
            "`version` says {}, the workspace is {}",
            v[1],
            env!("CARGO_PKG_VERSION")
        )
    });

    let status = m.cmd("status");
    caps(&m, &status, r"(?m)^host: hv$");
    let up = caps(&m, &status, r"(?m)^uptime: (\d+)\.(\d{3}) s$");
    m.check(num(&up, 1) * 1000 + num(&up, 2) > 0, || {
        format!("uptime 0:\n{status}")
    });
    let mib = caps(
        &m,
        &status,
        r"(?m)^memory: (\d+) MiB usable, (\d+) MiB used, (\d+) MiB free$",
    );
    let (usable, used, free) = (num(&mib, 1), num(&mib, 2), num(&mib, 3));
    m.check(usable > 64 && usable <= 256, || {
        format!("256 MiB machine, usable {usable} MiB?")
    });
    m.check(used < usable, || format!("used >= usable:\n{status}"));
    // Each figure is rounded on its own: allow 1 MiB.
    m.check((used + free).abs_diff(usable) <= 1, || {
        format!("used + free != usable:\n{status}")
    });
    caps(&m, &status, r"(?m)^cpus: 2$");
    caps(&m, &status, r"(?m)^vt-x: no$");

    let ((frames_usable, _, _), _) = mem(&mut m);
    m.check((frames_usable / 256).abs_diff(usable) <= 1, || {
        format!("`mem` says {frames_usable} usable frames, `status` {usable} MiB")
    });

    // QEMU provides a MADT.
    let (list, last) = cpus(&mut m);
    m.check(last == "cpus: 2 (from ACPI MADT)", || {
        format!("`cpus` last line: {last:?}")
    });
    m.check(list.len() == 2, || format!("`cpus` with -smp 2: {list:?}"));
    m.check(list.iter().filter(|c| c.2).count() == 1, || {
        format!("one bsp: {list:?}")
    });
    m.check(
        list[0].0 == 0 && list[1].0 == 1 && list[0].1 != list[1].1,
        || format!("`cpus`: indexes 0, 1 with distinct APIC ids: {list:?}"),
    );

    let pci = pci_lines(&mut m);
    check_host_bridge(&m, &pci, "8086:29c0");
    check_e1000(&m, &pci);

    // TCG has no VT-x: nothing under it either.
    let f = vmx_features(&mut m);
    m.check(f.iter().all(|(_, yes)| !yes), || {
        format!("`vmx` in QEMU TCG: {f:?}")
    });

    // Still answering after all that, uptime moving forward.
    let status2 = m.cmd("status");
    let up2 = caps(&m, &status2, r"(?m)^uptime: (\d+)\.(\d{3}) s$");
    m.check(
        num(&up2, 1) * 1000 + num(&up2, 2) > num(&up, 1) * 1000 + num(&up, 2),
        || format!("uptime did not advance: {up:?} then {up2:?}"),
    );
}

#[test]
fn qemu_log_level_and_reboot() {
    let mut m = Machine::qemu().start();
    m.boot_to_prompt();

    expect_single_line(&mut m, "log", "log level: info");
    expect_single_line(&mut m, "log debug", "log level: debug");
    expect_single_line(&mut m, "log", "log level: debug");
    expect_single_line(&mut m, "log info", "log level: info");

    let t = m.emulator().boot_timeout();
    m.send_line("reboot");
    m.expect(&line_pattern("rebooting"), m.command_timeout());
    // The firmware runs again, then the loader and the kernel.
    m.expect(&line_pattern(LOADER_PATTERN), t);
    m.expect(&line_pattern(READY_PATTERN), t);
    m.expect_prompt(t);
    let v = m.cmd("version");
    m.check(v.starts_with("hv "), || {
        format!("`version` after reboot printed {v:?}")
    });
}
