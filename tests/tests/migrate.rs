//! Live migration between two Bochs hosts joined by bxhub: the `dirty`
//! guest moves while it writes memory, its counter continues on the
//! destination without a gap or repeat, its memory checksum still matches,
//! and the source no longer runs it. Failures leave it running on the
//! source.

use hv_tests::{Found, Link, Machine, secs};

const KEY: &str = "00112233445566778899aabbccddeeff";

fn host(link: &Link, name: &str, ip: &str, model: &str) -> Machine {
    let mut m = Machine::bochs()
        .bochs_model(model)
        .hostname(name)
        .config(&format!(
            "hostname = {name}\nnet.ip = {ip}\nnet.key = {KEY}\n"
        ))
        .link(link)
        .start();
    m.boot_to_prompt();
    m
}

fn count(m: &mut Machine) -> Found {
    m.expect_line(r"\[d\] dirty: count (\d+) tsc (\d+)", secs(60))
}

/// Starts the dirty guest on `m` and waits until it prints.
fn start_dirty(m: &mut Machine, rate: u64) -> u64 {
    m.cmd(&format!("vm create d mem=16 image=dirty arg={rate}"));
    m.send_line("vm start d");
    count(m);
    count(m).num(1)
}

/// Asks for the guest's checksum on `m` and expects it to match.
fn checksum_ok(m: &mut Machine) {
    m.send_line("vm checksum d");
    let c = m.expect_line(
        r"\[d\] dirty: checksum ([0-9a-f]+) expected ([0-9a-f]+) (\w+) after (\d+) writes",
        secs(120),
    );
    m.check(c.get(3) == Some("ok"), || c.text.clone());
}

fn migrate_dirty_guest(rate: u64) {
    let link = Link::bochs();
    let mut a = host(&link, "srca", "10.0.0.1/24", "corei7_skylake_x");
    let mut b = host(&link, "dstb", "10.0.0.2/24", "corei7_skylake_x");
    b.cmd("migrate listen");
    let before = start_dirty(&mut a, rate);

    a.send_line("migrate d 10.0.0.2");
    let done = a.expect_line(
        r"(migrate: d now runs on 10\.0\.0\.2: total (\d+) ms, downtime (\d+) ms, (\d+) rounds, .*|error: migrate: .*)",
        secs(600),
    );
    a.check(done.text.starts_with("migrate: d now runs"), || {
        done.text.clone()
    });
    println!("rate {rate}: {}", done.text.trim());
    b.expect_line(r"migrate: d from [\d.:]+ now runs here.*", secs(60));

    // The counter goes on over there from the next value: no gap, no repeat.
    let mut last = before;
    let out = a.output();
    for line in out.lines() {
        if let Some(n) = line
            .split("[d] dirty: count ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .and_then(|n| n.parse::<u64>().ok())
        {
            last = last.max(n);
        }
    }
    let next = count(&mut b).num(1);
    b.check(next == last + 1, || {
        format!("source's last count {last}, destination's first {next}")
    });
    let again = count(&mut b).num(1);
    b.check(again == next + 1, || format!("{next} then {again}"));
    checksum_ok(&mut b);
    b.expect_prompt(b.command_timeout());

    // The source no longer has it.
    a.expect_prompt(a.command_timeout());
    let list = a.cmd("vm list");
    a.check(!list.contains("\nd "), || {
        format!("the source still lists d:\n{list}")
    });
    let list = b.cmd("vm list");
    b.check(list.contains("running") || list.contains("halted"), || {
        list.clone()
    });
}

#[test]
fn bochs_migrate_dirty_guest_at_a_low_rate() {
    migrate_dirty_guest(100);
}
