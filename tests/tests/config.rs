//! The boot configuration file (`/EFI/hv/hv.cfg`): diagnostics, defaults,
//! the hostname in the prompt.

mod common;

use common::{expect_single_line, log_line};
use hv_tests::Machine;
use hv_tests::regex::Regex;

/// Whether `pattern` matches somewhere in the console output so far.
fn printed(m: &Machine, pattern: &str) -> bool {
    Regex::new(pattern)
        .unwrap_or_else(|e| panic!("bad pattern {pattern}: {e}"))
        .is_match(&m.output())
}

#[test]
fn qemu_bad_config_lines_are_reported_and_defaults_used() {
    let cfg = "# three mistakes, on lines 3, 4 and 5\n\
               \n\
               colour = blue\n\
               log = loud\n\
               this line has no equals sign\n";
    let mut m = Machine::qemu().config(cfg).start();
    // The prompt is the default `hv> `.
    m.boot_to_prompt();
    for diag in [
        r"config: line 3: unknown key 'colour' \(ignored\)\r?$",
        r"config: line 4: bad value 'loud' for 'log' \(expected [^)\r\n]+\); using default 'info'\r?$",
        r"config: line 5: expected 'key = value'\r?$",
    ] {
        let p = log_line("WARN", diag);
        m.check(printed(&m, &p), || format!("no warning /{p}/"));
    }
    let all = Regex::new(r"config: line \d+:").expect("static regex");
    let n = all.find_iter(&m.output()).count();
    m.check(n == 3, || format!("expected 3 config diagnostics, got {n}"));
    expect_single_line(&mut m, "log", "log level: info");
}

#[test]
fn qemu_hostname_from_config() {
    let mut m = Machine::qemu()
        .config("# custom host\nhostname = alpha\nlog = info\n")
        .hostname("alpha")
        .start();
    m.boot_to_prompt();
    let s = m.cmd("status");
    m.check(s.lines().any(|l| l == "host: alpha"), || {
        format!("`status`:\n{s}")
    });
    m.check(!printed(&m, r"config: line \d+:"), || {
        "unexpected config diagnostics".into()
    });
}

#[test]
fn qemu_missing_config_means_defaults() {
    let mut m = Machine::qemu().without_config().start();
    m.boot_to_prompt();
    // The kernel says so in a log line (any level) naming the config and
    // saying it is absent.
    let line = Regex::new(r"(?m)^\[ *\d+\.\d{3}\] [A-Z]+ +.*$").expect("static regex");
    let mentions = Regex::new(r"(?i)(config|hv\.cfg)").expect("static regex");
    let absent = Regex::new(r"(?i)(missing|not found|no such|absent|no config|defaults)")
        .expect("static regex");
    let out = m.output();
    m.check(
        line.find_iter(&out)
            .any(|l| mentions.is_match(l.as_str()) && absent.is_match(l.as_str())),
        || "no kernel log line says the config file is missing".into(),
    );
    expect_single_line(&mut m, "log", "log level: info");
}
