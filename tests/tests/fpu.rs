//! Guest x87/SSE/AVX registers belong to their guest: `fpu` guests (each
//! keeps its own pattern in XMM/YMM0-15 and re-checks it without end)
//! side by side on one host, and one migrated to a host that runs another.
//! Before the hypervisor switched guest vector state, the SSE pair saw
//! each other's patterns within a second and the AVX guests were stopped
//! at XSETBV.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use hv_tests::{Link, Machine, secs};

const KEY: &str = "00112233445566778899aabbccddeeff";

/// A guest's line that ends the test: a pattern changed, or the VM ended.
const FAILURE: &str = r"\[\w+\] fpu: MISMATCH .*|vm \w+: (stopped|exited|crashed).*";

fn bochs(name: &str, ip: &str, link: Option<&Link>) -> Machine {
    let mut b = Machine::bochs().hostname(name);
    if let Some(link) = link {
        b = b
            .config(&format!(
                "hostname = {name}\nnet.ip = {ip}\nnet.key = {KEY}\n"
            ))
            .link(link);
    } else {
        b = b.config(&format!("hostname = {name}\n"));
    }
    let mut m = b.start();
    m.boot_to_prompt();
    m
}

/// Creates and starts an `fpu` guest and waits for its first line, which
/// names the registers it filled.
fn start_fpu(m: &mut Machine, vm: &str, arg: u64, regs: &str) {
    m.cmd(&format!("vm create {vm} mem=8 image=fpu arg={arg}"));
    m.send_line(&format!("vm start {vm}"));
    m.expect_line(
        &format!(r"\[{vm}\] fpu: seed {}, pattern in {regs}", arg % 1_000_000),
        secs(60),
    );
}

/// Watches `m` for `how_long`: every `alive` line of the guests counts,
/// any failure line ends the test with the console's last lines. Returns
/// the highest `alive` count each guest reached.
fn watch(m: &mut Machine, how_long: Duration) -> BTreeMap<String, u64> {
    let mut alive = BTreeMap::new();
    let start = Instant::now();
    while start.elapsed() < how_long {
        let l = m.expect_line(
            &format!(r"(\[(\w+)\] fpu: alive (\d+) checks \d+ \((sse|avx)\)|{FAILURE})"),
            secs(60),
        );
        m.check(l.text.contains("fpu: alive"), || l.text.clone());
        let n = l.num(3);
        let k = alive
            .entry(l.get(2).unwrap_or_default().to_string())
            .or_insert(0);
        *k = n.max(*k);
    }
    alive
}

#[test]
fn bochs_fpu_guests_side_by_side_keep_their_registers() {
    let mut m = bochs("fpu", "", None);
    // Two AVX guests (YMM, XSETBV) and two that stay with SSE (XCR0 1):
    // turns go between guests whose XCR0 differ. (Without the switch, the
    // SSE pair saw each other's XMM0 within a second: `[a] fpu: MISMATCH
    // xmm0 lane 0: expected 0x910a2dec89025cc1 got 0xbeeb8da1658eec67`,
    // b's value; the AVX guests were stopped at XSETBV.)
    start_fpu(&mut m, "a", 1, "ymm0-15");
    start_fpu(&mut m, "b", 2, "ymm0-15");
    start_fpu(&mut m, "c", 1_000_003, "xmm0-15");
    start_fpu(&mut m, "d", 1_000_004, "xmm0-15");
    let alive = watch(&mut m, Duration::from_secs(60));
    // Each made progress all along (an alive line per second of its TSC).
    for vm in ["a", "b", "c", "d"] {
        let n = alive.get(vm).copied().unwrap_or(0);
        m.check(n >= 10, || {
            format!("{vm} reached alive {n} in a minute: {alive:?}")
        });
    }
    // The CPU really went from one guest's registers to another's.
    m.send_line("vm stats a");
    let s = m.expect_line(
        r"  guest context switches \(all VMs\): (\d+), (\d+) TSC cycles each",
        secs(30),
    );
    m.check(s.num(1) >= 100, || s.text.clone());
    m.send_line("vm show a");
    m.expect_line(
        r"  xcr0 up to 0x[0-9a-f]+ \(now 0x7\), rdtsc native",
        secs(30),
    );
}

#[test]
fn bochs_fpu_guest_migrated_keeps_its_registers() {
    let link = Link::bochs();
    let mut a = bochs("srca", "10.0.0.1/24", Some(&link));
    let mut b = bochs("dstb", "10.0.0.2/24", Some(&link));
    // The destination's CPU holds another guest's registers already.
    start_fpu(&mut b, "other", 9, "ymm0-15");
    b.cmd("migrate listen");
    start_fpu(&mut a, "f", 5, "ymm0-15");
    let before = watch(&mut a, Duration::from_secs(3));
    a.check(before.contains_key("f"), || format!("{before:?}"));

    a.send_line("migrate f 10.0.0.2");
    let done = a.expect_line(
        r"(migrate: f now runs on 10\.0\.0\.2: .*|error: migrate: .*)",
        secs(600),
    );
    a.check(done.text.starts_with("migrate: f now runs"), || {
        done.text.clone()
    });
    b.expect_line(r"migrate: f from [\d.:]+ now runs here.*", secs(60));

    // Over there: its own pattern, checked on and on, beside the other
    // guest's, and its alive count goes on from where it was.
    let after = watch(&mut b, Duration::from_secs(15));
    let (f, other) = (
        after.get("f").copied().unwrap_or(0),
        after.get("other").copied().unwrap_or(0),
    );
    b.check(f > before["f"] + 5 && other > 5, || {
        format!("before {before:?}, after {after:?}")
    });
}
