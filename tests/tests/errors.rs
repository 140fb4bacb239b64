//! Mistakes at the console: one `error:` line each, and the console goes on.
//! Line editing: backspace and Ctrl-C.

mod common;

use common::expect_single_line;
use hv_tests::{Machine, line_pattern};

#[test]
fn qemu_errors_and_line_editing() {
    let mut m = Machine::qemu().start();
    m.boot_to_prompt();

    expect_single_line(
        &mut m,
        "frobnicate",
        "error: unknown command 'frobnicate' (type 'help' for a list)",
    );
    let v = m.cmd("version");
    m.check(v.starts_with("hv "), || {
        format!("`version` after an unknown command: {v:?}")
    });

    expect_single_line(
        &mut m,
        "log loud",
        "error: unknown log level 'loud' (expected off, error, warn, info, debug, trace)",
    );
    expect_single_line(&mut m, "log", "log level: info");
    expect_single_line(&mut m, "status now", "error: status takes no arguments");
    expect_single_line(&mut m, "version 2", "error: version takes no arguments");
    let s = m.cmd("status");
    m.check(s.lines().any(|l| l == "host: hv"), || {
        format!("`status` after errors:\n{s}")
    });

    let t = m.command_timeout();
    // DEL (0x7f) corrects a typo.
    m.send_raw(b"verzz\x7f\x7fsion\r");
    m.expect(&line_pattern(r"hv \S+ \(boot abi \d+\)"), t);
    m.expect_prompt(t);
    // So does BS (0x08).
    m.send_raw(b"stax\x08\x08atus\r");
    m.expect(&line_pattern("host: hv"), t);
    m.expect_prompt(t);

    // Ctrl-C abandons the line: `reboot` is not run.
    m.send_raw(b"reboot\x03");
    m.expect(r"\^C", t);
    let p = m.expect_prompt(t);
    m.check(!p.before.contains("rebooting"), || {
        "Ctrl-C ran the line".into()
    });
    let v = m.cmd("version");
    m.check(v.starts_with("hv "), || {
        format!("`version` after Ctrl-C printed {v:?}")
    });
    m.check(!m.output().contains("rebooting"), || {
        "Ctrl-C ran the line".into()
    });
}

/// A CPU exception in the kernel is reported (vector, error code, RIP, CR2,
/// registers) and the machine halts: no silent triple fault and reset.
#[test]
fn qemu_kernel_exception_is_reported() {
    let mut m = Machine::qemu().start();
    m.boot_to_prompt();
    let t = m.command_timeout();
    m.send_line("crash pf");
    m.expect(
        r"!!! kernel exception: vector 14 page fault \(#PF\), error code 0x0\r?\n",
        t,
    );
    // The kernel runs in the higher half; the fault address is page 0.
    m.expect(r"rip 0xffffffff8[0-9a-f]{7} cs 0x8 ", t);
    m.expect(r"cr2 0x0000000000000000 cr3 0x[0-9a-f]{16}", t);
    m.expect(
        r"rax 0x[0-9a-f]{16} rbx 0x[0-9a-f]{16} rcx 0x[0-9a-f]{16} rdx",
        t,
    );
    m.expect(
        r"r13 0x[0-9a-f]{16} r14 0x[0-9a-f]{16} r15 0x[0-9a-f]{16}",
        t,
    );
    m.expect(r"!!! system halted", t);
}
