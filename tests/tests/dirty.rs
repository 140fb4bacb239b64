//! The `dirty` guest and dirty-page tracking, in Bochs.

use hv_tests::{Machine, secs};

fn bochs(model: &str) -> Machine {
    let mut m = Machine::bochs().bochs_model(model).start();
    m.boot_to_prompt();
    m
}

/// Runs `dirty` at `rate` pages/s, waits for two counter lines, asks for
/// a checksum and expects it to match; then tracks its writes with
/// `mechanism` and checks the count against the rate.
fn dirty_guest_checks_its_memory(m: &mut Machine, rate: u64, mechanism: &str) {
    m.cmd(&format!("vm create d mem=16 image=dirty arg={rate}"));
    m.send_line("vm start d");
    m.expect(r"\[d\] dirty: \d+ pages, \d+ pages/s", secs(60));
    let a = m.expect_line(r"\[d\] dirty: count (\d+) tsc (\d+) gap (\d+)", secs(60));
    let b = m.expect_line(r"\[d\] dirty: count (\d+) tsc (\d+) gap (\d+)", secs(60));
    m.check(b.num(1) == a.num(1) + 1 && b.num(2) > a.num(2), || {
        format!("counter: {} then {}", a.text, b.text)
    });
    m.send_line("vm checksum d");
    let c = m.expect_line(
        r"\[d\] dirty: checksum ([0-9a-f]+) expected ([0-9a-f]+) (\w+) after (\d+) writes",
        secs(60),
    );
    m.check(c.get(3) == Some("ok") && c.num(4) > 0, || c.text.clone());
    m.expect_prompt(m.command_timeout());

    // Dirty tracking: on, then the pages of half a second of guest time.
    m.send_line("vm dirty d");
    m.expect_line(
        &format!(r"vm d: dirty tracking on \({mechanism}\)"),
        secs(30),
    );
    m.expect_line(r"\[d\] dirty: count (\d+) tsc (\d+) gap (\d+)", secs(60));
    m.send_line("vm dirty d");
    m.expect_line(r"vm d: \d+ pages dirty since the last look.*", secs(30));
    let t0 = m.expect_line(r"\[d\] dirty: count (\d+) tsc (\d+) gap (\d+)", secs(60));
    m.send_line("vm dirty d");
    let n = m.expect_line(r"vm d: (\d+) pages dirty since the last look.*", secs(30));
    let t1 = m.expect_line(r"\[d\] dirty: count (\d+) tsc (\d+) gap (\d+)", secs(60));
    // Between the two looks: at least the writes of the half second between
    // two counter lines (rate/2, fewer when a page is hit twice), at most
    // those of a second and a half plus the guest's stack and variables.
    let pages = n.num(1);
    m.check(pages >= rate / 4 && pages <= rate * 3 / 2 + 32, || {
        format!(
            "{pages} dirty pages at {rate} pages/s ({} .. {})",
            t0.text, t1.text
        )
    });
    // Tracking did not lose or corrupt a write.
    m.send_line("vm checksum d");
    let c = m.expect_line(
        r"\[d\] dirty: checksum ([0-9a-f]+) expected ([0-9a-f]+) (\w+) after (\d+) writes",
        secs(60),
    );
    m.check(c.get(3) == Some("ok"), || c.text.clone());
    m.expect_prompt(m.command_timeout());
    // (The guest keeps printing: match the line, not the prompt.)
    m.send_line("vm stats d");
    m.expect_line(
        &format!(r"  dirty tracking: {mechanism} \(\d+ pages reported, .*\)"),
        secs(30),
    );
    m.send_line("vm delete d");
    m.expect(r"vm d: deleted", secs(30));
}

#[test]
fn bochs_dirty_tracking_with_pml_on_skylake() {
    let mut m = bochs("corei7_skylake_x");
    dirty_guest_checks_its_memory(&mut m, 2000, "pml");
}

#[test]
fn bochs_dirty_tracking_by_write_protection_on_sandy_bridge() {
    let mut m = bochs("corei7_sandy_bridge_2600k");
    dirty_guest_checks_its_memory(&mut m, 1000, "write protection");
}
