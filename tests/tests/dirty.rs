//! The `dirty` guest and dirty-page tracking, in Bochs: one test per
//! mechanism (PML, EPT dirty flags, write protection), each on a CPU model
//! that makes the hypervisor choose it.

use hv_tests::{Machine, secs};

/// Windows of writes the guest is asked for while tracking is on.
const WINDOWS: usize = 2;
/// Pages the guest dirties between two looks besides a window's: its stack
/// and its variables, and with EPT A/D (PML too) its three page-table
/// pages, whose accessed/dirty updates the CPU counts as writes (the idle
/// look measures them: 2 pages with write protection, 5 with A/D).
const RUNNING_PAGES: u64 = 8;

fn bochs(model: &str) -> Machine {
    let mut m = Machine::bochs().bochs_model(model).start();
    m.boot_to_prompt();
    m
}

fn checksum_ok(m: &mut Machine) -> u64 {
    m.send_line("vm checksum d");
    let c = m.expect_line(
        r"\[d\] dirty: checksum ([0-9a-f]+) expected ([0-9a-f]+) (\w+) after (\d+) writes",
        secs(60),
    );
    m.check(c.get(3) == Some("ok"), || c.text.clone());
    c.num(4)
}

/// The page count of the next `vm d: <n> pages dirty since the last look`.
fn look(m: &mut Machine) -> u64 {
    m.send_line("vm dirty d");
    m.expect_line(r"vm d: (\d+) pages dirty since the last look.*", secs(30))
        .num(1)
}

/// Runs `dirty` in its window mode at `rate` pages/s (a request makes it
/// write `rate` consecutive pages, once each, over one second, then say
/// so), checks its counter and checksum, then tracks its writes with
/// `mechanism` and checks each look against what the guest says it wrote.
///
/// The bound is tight because the window lies wholly between two looks
/// (the test waits for the guest's `window` line before the second one):
/// every one of its pages must be reported, so the count is at least the
/// guest's own figure (a single lost write fails), and at most that plus
/// the few pages the guest dirties just by running (stack, variables),
/// which a look at an idle stretch measures. (The bound this replaces,
/// rate/4 to 1.5 × rate, let three quarters of the writes go missing.)
fn dirty_tracking_counts_the_pages_written(m: &mut Machine, rate: u64, mechanism: &str) {
    m.cmd(&format!(
        "vm create d mem=16 image=dirty arg={}",
        1_000_000 + rate
    ));
    m.send_line("vm start d");
    m.expect_line(
        &format!(r"\[d\] dirty: \d+ pages, {rate} pages/s for 100 ticks after each request"),
        secs(60),
    );
    let a = m.expect_line(r"\[d\] dirty: count (\d+) tsc (\d+) gap (\d+)", secs(60));
    let b = m.expect_line(r"\[d\] dirty: count (\d+) tsc (\d+) gap (\d+)", secs(60));
    m.check(b.num(1) == a.num(1) + 1 && b.num(2) > a.num(2), || {
        format!("counter: {} then {}", a.text, b.text)
    });
    // Untracked: a checksum, and a first window.
    let written = checksum_ok(m);
    m.check(written == 0, || {
        format!("{written} writes before a request")
    });
    let w = m.expect_line(
        r"\[d\] dirty: window (\d+) writes to (\d+) distinct pages",
        secs(60),
    );
    m.check(w.num(1) == rate && w.num(2) == rate, || w.text.clone());

    m.send_line("vm dirty d");
    m.expect_line(
        &format!(r"vm d: dirty tracking on \({mechanism}\)"),
        secs(30),
    );
    // Half a second of the guest only ticking.
    m.expect_line(r"\[d\] dirty: count \d+ .*", secs(60));
    let idle = look(m);
    m.check(idle <= RUNNING_PAGES, || {
        format!("{idle} pages dirty while the guest wrote nothing but its stack and variables")
    });
    let mut counts = Vec::new();
    for _ in 0..WINDOWS {
        let before = checksum_ok(m);
        let w = m.expect_line(
            r"\[d\] dirty: window (\d+) writes to (\d+) distinct pages",
            secs(60),
        );
        let pages = w.num(2);
        m.check(w.num(1) == rate && pages == rate, || w.text.clone());
        let n = look(m);
        counts.push(n);
        m.check(n >= pages && n <= pages + RUNNING_PAGES, || {
            format!(
                "{n} pages reported dirty by {mechanism} for a window of {pages} pages \
                 (after {before} writes; expected {pages} to {})",
                pages + RUNNING_PAGES
            )
        });
    }
    println!("{mechanism}: idle look {idle} pages, windows of {rate} pages: {counts:?}");
    // Tracking did not lose or corrupt a write.
    checksum_ok(m);
    m.expect_line(r"\[d\] dirty: window .*", secs(60));
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
    dirty_tracking_counts_the_pages_written(&mut m, 2000, "pml");
}

#[test]
fn bochs_dirty_tracking_with_ept_dirty_flags_on_haswell() {
    let mut m = bochs("corei7_haswell_4770");
    dirty_tracking_counts_the_pages_written(&mut m, 2000, "ept dirty flags");
}

#[test]
fn bochs_dirty_tracking_by_write_protection_on_sandy_bridge() {
    let mut m = bochs("corei7_sandy_bridge_2600k");
    dirty_tracking_counts_the_pages_written(&mut m, 1000, "write protection");
}
