//! Live migration between two Bochs hosts joined by bxhub: the `dirty`
//! guest moves while it writes memory, its counter continues on the
//! destination without a gap or repeat, its memory checksum still matches,
//! and the source no longer runs it. Failures leave it running on the
//! source.

mod common;

use common::{KEY, dirty_count, highest_dirty_count, linked_bochs, start_dirty};
use hv_tests::{Link, Machine, secs};

fn host(link: &Link, name: &str, ip: &str, model: &str) -> Machine {
    host_with(link, name, ip, model, 256)
}

fn host_with(link: &Link, name: &str, ip: &str, model: &str, mib: u32) -> Machine {
    linked_bochs(link, name, ip, |b| b.bochs_model(model).memory_mib(mib))
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

fn migrate_dirty_guest(rate: u64, options: &str) {
    let link = Link::bochs();
    let mut a = host(&link, "srca", "10.0.0.1/24", "corei7_skylake_x");
    let mut b = host(&link, "dstb", "10.0.0.2/24", "corei7_skylake_x");
    b.cmd("migrate listen");
    let before = start_dirty(&mut a, rate);
    a.send_line("migrate check d 10.0.0.2");
    a.expect_line(r"migrate check: d can move to 10\.0\.0\.2", secs(120));

    a.send_line(&format!("migrate d 10.0.0.2{options}"));
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
    let last = highest_dirty_count(&a, before);
    let next = dirty_count(&mut b).num(1);
    b.check(next == last + 1, || {
        format!("source's last count {last}, destination's first {next}")
    });
    let again = dirty_count(&mut b).num(1);
    b.check(again == next + 1, || format!("{next} then {again}"));
    checksum_ok(&mut b);
    b.expect_prompt(b.command_timeout());

    // The source no longer has it.
    a.expect_prompt(a.command_timeout());
    let list = a.cmd("vm list");
    a.check(!list.contains("\nd "), || {
        format!("the source still lists d:\n{list}")
    });
    // (The guest prints on the destination: match its line, not prompts.)
    b.send_line("vm list");
    b.expect_line(r"d +(running|halted) +16 MiB \(migrated\) +-", secs(30));
}

#[test]
fn bochs_migrate_dirty_guest_at_a_low_rate() {
    migrate_dirty_guest(100, "");
}

#[test]
fn bochs_migrate_dirty_guest_at_a_high_rate() {
    // Faster than the Bochs link (about 180 pages/s): auto-converge has
    // to slow the guest before the final round fits a 1 s budget.
    migrate_dirty_guest(400, " downtime=1000");
}

/// `migrate` fails with `pattern`; the guest keeps running on the source
/// with its counter going on from where it was.
fn refused(a: &mut Machine, cmd: &str, pattern: &str) {
    let before = dirty_count(a).num(1);
    a.send_line(cmd);
    let e = a.expect_line(r"error: migrate: .*", secs(300));
    a.check(
        hv_tests::regex::Regex::new(pattern)
            .unwrap()
            .is_match(&e.text),
        || format!("expected /{pattern}/, got: {}", e.text),
    );
    a.check(e.text.contains("keeps running here"), || e.text.clone());
    let after = dirty_count(a).num(1);
    a.check(after > before, || format!("counter {before} then {after}"));
    let next = dirty_count(a).num(1);
    a.check(next == after + 1, || format!("counter {after} then {next}"));
    a.expect_prompt(a.command_timeout());
}

#[test]
fn bochs_failed_migrations_leave_the_guest_on_the_source() {
    let link = Link::bochs();
    let mut a = host(&link, "srca", "10.0.0.1/24", "corei7_skylake_x");
    // An older CPU (no AVX2, BMI, ...) with little memory.
    let mut b = host_with(
        &link,
        "dstb",
        "10.0.0.2/24",
        "corei7_sandy_bridge_2600k",
        64,
    );
    b.cmd("net key ffeeddccbbaa99887766554433221100");
    b.cmd("migrate listen");
    start_dirty(&mut a, 200);

    // Wrong key.
    refused(&mut a, "migrate d 10.0.0.2", "authentication failed");

    // Right key, but the destination lacks CPU features the guest sees and
    // memory for a big guest: every blocker is named. (The destination's
    // console had output of its own: match lines, not prompts.)
    b.send_line(&format!("net key {KEY}"));
    b.expect_line(r"net: key set .*", secs(30));
    refused(&mut a, "migrate d 10.0.0.2", "(?i)refused.*(avx2|bmi)");
    a.cmd("vm create big mem=96 image=hello");
    a.send_line("vm start big");
    a.expect_line(r"vm big: exited with code 0", secs(60));
    a.expect_prompt(a.command_timeout());
    a.cmd("vm create spin mem=96 image=ticks arg=1");
    a.send_line("vm start spin");
    a.expect_line(r"\[spin\] ticks: alive 1", secs(60));
    a.expect_prompt(a.command_timeout());
    // migrate check names every blocker, one per line, and moves nothing.
    a.send_line("migrate check spin 10.0.0.2");
    a.expect_line(
        r"migrate check: spin cannot move to 10\.0\.0\.2:",
        secs(120),
    );
    a.expect_line(
        r"  blocker: not enough memory: the guest needs 96 MiB, \d+ MiB free",
        secs(10),
    );
    // The guest's CPU profile (host: the source's own features) against
    // what the destination can offer, features named as in /proc/cpuinfo.
    let cpu = a.expect_line(
        r"  blocker: CPU profile host: this host lacks (.*)",
        secs(10),
    );
    a.check(
        cpu.text.contains("avx2") && cpu.text.contains("bmi1"),
        || cpu.text.clone(),
    );
    a.expect_prompt(a.command_timeout());
    a.send_line("migrate spin 10.0.0.2");
    let e = a.expect_line(r"error: migrate: .*", secs(120));
    a.check(
        e.text.contains("not enough memory: the guest needs 96 MiB"),
        || e.text.clone(),
    );
    a.check(e.text.contains("avx2") && e.text.contains("bmi1"), || {
        e.text.clone()
    });
    a.expect_prompt(a.command_timeout());
    // A VM on a named baseline: the destination names what it lacks of it.
    a.cmd("vm create sky mem=8 image=ticks arg=1 cpu=skylake-server");
    a.send_line("vm show sky");
    a.expect_line(r"  cpu skylake-server \(\d+ features\)", secs(30));
    a.expect_line(r"  features: fpu, .*", secs(30));
    a.expect_prompt(a.command_timeout());
    a.send_line("vm start sky");
    a.expect_line(r"\[sky\] ticks: alive 1", secs(60));
    a.expect_prompt(a.command_timeout());
    a.send_line("migrate check sky 10.0.0.2");
    a.expect_line(r"migrate check: sky cannot move to 10\.0\.0\.2:", secs(120));
    let sky = a.expect_line(
        r"  blocker: CPU profile skylake-server: this host lacks (.*)",
        secs(10),
    );
    a.check(
        sky.text.contains("avx512f") && sky.text.contains("avx2"),
        || sky.text.clone(),
    );
    a.expect_prompt(a.command_timeout());
    // The destination holds nothing afterwards.
    b.send_line("vm list");
    b.expect_line(r"no VMs \(create one with 'vm create'\)", secs(30));
    // Both guests still run on the source (it prints meanwhile: match
    // lines, not prompts).
    a.send_line("vm list");
    a.expect_line(r"d +(running|halted) +16 MiB dirty +-", secs(30));
    a.expect_line(r"spin +(running|halted) +96 MiB ticks +-", secs(30));
    a.expect_line(r"sky +(running|halted) +8 MiB ticks +-", secs(30));
}

#[test]
fn bochs_background_migrations_cancel_limit_and_a_dying_destination() {
    let link = Link::bochs();
    let mut a = host(&link, "srca", "10.0.0.1/24", "corei7_skylake_x");
    let mut b = host(&link, "dstb", "10.0.0.2/24", "corei7_skylake_x");
    b.cmd("migrate listen");
    let before = start_dirty(&mut a, 2000);
    a.cmd("vm create e mem=16 image=dirty arg=2000");
    a.send_line("vm start e");
    a.expect_line(r"\[e\] dirty: count 1 .*", secs(60));
    a.send_line("vm create f mem=16 image=ticks arg=1");
    a.expect_line(r"vm f: created.*", secs(30));
    // Two migrations at once, both slow enough to still be going below.
    for vm in ["d", "e"] {
        a.send_line(&format!("migrate {vm} 10.0.0.2 bandwidth=1 background"));
        a.expect_line(
            &format!(r"migrate: {vm} moves in the background.*"),
            secs(60),
        );
    }
    // A third is over the per-host limit: refused before anything moves.
    a.send_line("migrate f 10.0.0.2");
    a.expect_line(
        r"error: migrate: this host already runs 2 migrations \(the limit is 2\); f keeps running here",
        secs(60),
    );
    a.send_line("migrate status");
    a.expect_line(r"outgoing d \(16 MiB\) to 10\.0\.0\.2:7002: .*", secs(60));
    a.expect_line(r"outgoing e \(16 MiB\) to 10\.0\.0\.2:7002: .*", secs(10));
    // Cancelled from the console while it runs: e stays here, and the
    // destination drops what it had of it. "While it runs": once the
    // destination has taken e's Hello and reserved its RAM (a cancel
    // before that only closes a connection the destination never saw a
    // guest on).
    b.expect_line(
        r"(?:dstb> )?\[ *[\d.]+\] INFO  migrate: e: 16 MiB reserved for the incoming guest",
        secs(120),
    );
    a.send_line("migrate cancel e");
    let e = a.expect_line(r"error: migrate: e: .*", secs(120));
    a.check(
        e.text.contains("cancelled: by the operator") && e.text.contains("e keeps running here"),
        || e.text.clone(),
    );
    b.expect_line(r"migrate: incoming e from .* discarded: .*", secs(120));
    a.expect_line(r"\[e\] dirty: count \d+ .*", secs(60));

    // The destination dies while d is still in its rounds.
    a.expect_line(r"migrate: d: round \d+: .*", secs(300));
    b.kill();
    let e = a.expect_line(r"error: migrate: d: .*", secs(300));
    a.check(e.text.contains("d keeps running here"), || e.text.clone());
    let after = dirty_count(&mut a).num(1);
    a.check(after > before, || format!("counter {before} then {after}"));
    checksum_ok(&mut a);
    a.send_line("vm list");
    a.expect_line(r"d +(running|halted) +16 MiB dirty +-", secs(30));
    a.expect_line(r"e +(running|halted) +16 MiB dirty +-", secs(30));
}

/// Moves the dirty guest, writing `rate` pages a second, from a `model`
/// source to a Skylake destination in several rounds, and checks that the
/// source tracked its writes with `mechanism` (the hypervisor picks it from
/// the CPU: the model has no PML, or not even EPT A/D flags), that pages
/// written during the rounds were sent again, and that on arrival the
/// guest's memory checksum matches what it wrote.
fn migrate_tracked_by(model: &str, mechanism: &str, rate: u64) {
    let link = Link::bochs();
    let mut a = host(&link, "srca", "10.0.0.1/24", model);
    let mut b = host(&link, "dstb", "10.0.0.2/24", "corei7_skylake_x");
    b.cmd("migrate listen");
    let mut before = start_dirty(&mut a, rate);
    // Eight seconds of writes give round 0 a few MiB of data to send, so
    // it lasts long enough for the guest to dirty pages for more rounds.
    while before < 16 {
        before = dirty_count(&mut a).num(1);
    }
    a.send_line("vm stats d");
    a.expect_line(
        &format!(r"  dirty tracking: off \(this CPU would use {mechanism}\)"),
        secs(30),
    );
    // The cap (256 pages/s) keeps the rounds long even on a fast link.
    a.send_line("migrate d 10.0.0.2 bandwidth=1 background");
    a.expect_line(r"migrate: d moves in the background.*", secs(60));
    let round = r"migrate: d: round (\d+): (\d+) pages sent \((\d+) zero\), (\d+) dirty left, .*";
    let r0 = a.expect_line(round, secs(120));
    a.check(r0.num(1) == 0 && r0.num(4) > 0, || r0.text.clone());
    // While it moves: the migration's tracking, by this CPU's mechanism.
    a.send_line("vm stats d");
    let s = a.expect_line(
        r"  dirty tracking: ([a-z ]+) \((\d+) pages reported, (\d+) tracking faults, .*\)",
        secs(30),
    );
    a.check(s.get(1) == Some(mechanism) && s.num(2) > 0, || {
        format!("expected {mechanism} with pages reported: {}", s.text)
    });
    // Write protection learns of each first write through a fault.
    a.check(mechanism != "write protection" || s.num(3) > 0, || {
        s.text.clone()
    });
    // Pages sent per round (the outer group shifts the round's groups).
    let mut resent = vec![r0.num(2)];
    // The console's own view of the dirty log: `vm dirty` while the
    // migration tracks the guest sees its writes and takes none from the
    // migration (the destination's checksum below would catch a lost
    // page). Round lines arriving meanwhile are kept.
    let console_look = |a: &mut Machine, want: &str, resent: &mut Vec<u64>| loop {
        let l = a.expect_line(&format!(r"({round}|{want})"), secs(120));
        if l.text.starts_with("migrate: d: round") {
            resent.push(l.num(3));
            continue;
        }
        break l;
    };
    a.send_line("vm dirty d");
    console_look(&mut a, r"vm d: dirty tracking on \(.*\)", &mut resent);
    // A second of the guest's writes (its count line) between the looks.
    console_look(&mut a, r"\[d\] dirty: count \d+ .*", &mut resent);
    a.send_line("vm dirty d");
    let look = console_look(
        &mut a,
        r"vm d: (\d+) pages dirty since the last look \(.*\)",
        &mut resent,
    );
    // (Groups: 1 the whole, 2-5 the round's, 6 the pages.)
    a.check(look.num(6) > 0, || look.text.clone());
    let done = loop {
        let l = a.expect_line(
            &format!(r"({round}|migrate: d now runs on 10\.0\.0\.2: .* (\d+) rounds, .*|error: migrate: .*)"),
            secs(300),
        );
        if l.text.starts_with("migrate: d: round") {
            resent.push(l.num(3));
            continue;
        }
        break l;
    };
    a.check(done.text.starts_with("migrate: d now runs"), || {
        done.text.clone()
    });
    println!(
        "{mechanism}: pages sent per round: {resent:?}; {}",
        done.text.trim()
    );
    // Pages the guest wrote during the rounds went again: each round after
    // round 0 sent some, over at least three rounds.
    a.check(
        resent.len() >= 3 && resent[1..].iter().all(|&n| n > 0),
        || format!("pages sent per round: {resent:?}"),
    );
    b.expect_line(r"migrate: d from [\d.:]+ now runs here.*", secs(60));

    // The counter goes on over there from the next value.
    let last = highest_dirty_count(&a, before);
    let next = dirty_count(&mut b).num(1);
    b.check(next == last + 1, || {
        format!("source's last count {last}, destination's first {next}")
    });
    checksum_ok(&mut b);
}

#[test]
fn bochs_migrate_tracked_by_ept_dirty_flags_from_haswell() {
    migrate_tracked_by("corei7_haswell_4770", "ept dirty flags", 100);
}

#[test]
fn bochs_migrate_tracked_by_write_protection_from_sandy_bridge() {
    migrate_tracked_by("corei7_sandy_bridge_2600k", "write protection", 100);
}
