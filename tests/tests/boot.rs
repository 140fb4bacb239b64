//! Boots the image to the prompt in QEMU (TCG) and in Bochs (VT-x).
//!
//! The Bochs boot is the only one in the suite (it takes ~10 s before the
//! loader even starts), so it also covers what only Bochs can show: VT-x
//! features, a machine without ACPI tables, and the i440fx PCI bus.

mod common;

use common::{VMX_FEATURES, check_e1000, check_host_bridge, cpus, has, pci_lines, vmx_features};
use hv_tests::{Machine, line_pattern};

#[test]
fn qemu_boots_to_the_prompt() {
    let mut m = Machine::qemu().start();
    let r = m.boot_to_prompt();
    m.check(!r.loader_version.is_empty(), || {
        "empty loader version".into()
    });
    m.check(r.reset_to_prompt_ms > 0.0, || {
        format!("ready line {:?}: no reset time", r.line)
    });
    m.check(r.loader_to_prompt_ms <= r.reset_to_prompt_ms, || {
        format!(
            "ready line {:?}: loader-to-prompt > reset-to-prompt",
            r.line
        )
    });
    // A prompt answers.
    let v = m.cmd("version");
    m.check(v.starts_with("hv "), || format!("`version` printed {v:?}"));
}

#[test]
fn bochs_boots_with_vmx_and_without_acpi() {
    let mut m = Machine::bochs().start();
    let r = m.boot_to_prompt();
    m.check(r.loader_to_prompt_ms <= r.reset_to_prompt_ms, || {
        format!(
            "ready line {:?}: loader-to-prompt > reset-to-prompt",
            r.line
        )
    });

    // corei7_skylake_x, as measured in TESTBED.md: everything but MTF.
    let f = vmx_features(&mut m);
    // The first six lines: vmx .. preemption timer (vpid is not checked).
    for name in &VMX_FEATURES[..6] {
        m.check(has(&f, name), || {
            format!("`vmx` in Bochs corei7_skylake_x: expected `{name}: yes`, got {f:?}")
        });
    }
    m.check(!has(&f, "mtf"), || {
        format!("`vmx`: this model offers no MTF, got {f:?}")
    });

    // OVMF under Bochs provides no ACPI tables: the boot CPU only.
    let (list, last) = cpus(&mut m);
    m.check(last == "cpus: 1 (no ACPI tables: boot CPU only)", || {
        format!("`cpus` last line in Bochs: {last:?}")
    });
    m.check(list.len() == 1 && list[0].0 == 0 && list[0].2, || {
        format!("`cpus` in Bochs: expected one line `cpu 0: apic id N (bsp)`, got {list:?}")
    });

    let status = m.cmd("status");
    m.check(status.lines().any(|l| l == "vt-x: yes"), || {
        format!("`status` in Bochs:\n{status}")
    });

    // i440fx without ECAM: configuration through ports 0xCF8/0xCFC.
    let pci = pci_lines(&mut m);
    check_host_bridge(&m, &pci, "8086:1237");
    check_e1000(&m, &pci);

    // The reset path works on the i440fx too (0xCF9, then the 8042).
    let t = m.emulator().boot_timeout();
    m.send_line("reboot");
    m.expect(&line_pattern("rebooting"), m.command_timeout());
    m.expect(r"boot: hv loader ", t);
    m.expect(r"hv: ready: ", t);
    m.expect_prompt(t);

    // And an exception is reported rather than triple-faulting.
    m.send_line("crash gp");
    let c = m.command_timeout();
    m.expect(
        r"!!! kernel exception: vector 13 general protection \(#GP\)",
        c,
    );
    m.expect(r"rip 0xffffffff8[0-9a-f]{7} ", c);
    m.expect(r"!!! system halted", c);
}

/// Without RDRAND (QEMU's `qemu64` CPU has neither RDRAND nor RDSEED) the
/// kernel says so at boot instead of mixing in a silent zero, and names
/// the source it falls back on.
#[test]
fn qemu_without_rdrand_says_where_its_entropy_comes_from() {
    let mut m = Machine::qemu().qemu_arg("-cpu").qemu_arg("qemu64").start();
    m.boot_to_prompt();
    let out = m.output();
    let line = out
        .lines()
        .find(|l| l.contains("entropy: "))
        .unwrap_or_else(|| m.fail("no entropy line at boot"));
    m.check(
        line.contains("WARN")
            && line.contains("neither RDRAND nor RDSEED")
            && line.contains("TSC jitter against the PIT (256 samples"),
        || format!("entropy line {line:?}"),
    );
    // With the default CPU (`-cpu max`, RDRAND) it is an info line.
    drop(m);
    let mut m = Machine::qemu().start();
    m.boot_to_prompt();
    let out = m.output();
    m.check(
        out.lines()
            .any(|l| l.contains("INFO  entropy: RDRAND") && l.contains("TSC jitter")),
        || "no `INFO  entropy: RDRAND ...` line with -cpu max".into(),
    );
}
