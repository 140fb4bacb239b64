//! The `dirty` guest and dirty-page tracking, in Bochs.

use hv_tests::{Machine, secs};

fn bochs(model: &str) -> Machine {
    let mut m = Machine::bochs().bochs_model(model).start();
    m.boot_to_prompt();
    m
}

/// Runs `dirty` at `rate` pages/s, waits for two counter lines, asks for
/// a checksum and expects it to match.
fn dirty_guest_checks_its_memory(m: &mut Machine, rate: u64) {
    m.cmd(&format!("vm create d mem=16 image=dirty arg={rate}"));
    m.send_line("vm start d");
    m.expect(r"\[d\] dirty: \d+ pages, \d+ pages/s", secs(60));
    let a = m.expect_line(r"\[d\] dirty: count (\d+) tsc (\d+)", secs(60));
    let b = m.expect_line(r"\[d\] dirty: count (\d+) tsc (\d+)", secs(60));
    m.check(b.num(1) == a.num(1) + 1 && b.num(2) > a.num(2), || {
        format!("counter: {} then {}", a.text, b.text)
    });
    m.send_line("vm checksum d");
    let c = m.expect_line(
        r"\[d\] dirty: checksum ([0-9a-f]+) expected ([0-9a-f]+) (\w+) after (\d+) writes",
        secs(60),
    );
    m.check(c.get(3) == Some("ok") && c.num(4) > 0, || c.text.clone());
    m.send_line("vm delete d");
    m.expect(r"vm d: deleted", secs(30));
}

#[test]
fn bochs_dirty_guest_on_skylake() {
    let mut m = bochs("corei7_skylake_x");
    dirty_guest_checks_its_memory(&mut m, 2000);
}
