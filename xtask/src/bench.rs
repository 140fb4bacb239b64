//! `cargo xtask bench boot [--runs N]`: boots the image N times in QEMU and
//! in Bochs (one at a time, so the runs do not compete for the two cores) and
//! prints boot times and the hypervisor's memory use.
//!
//! `cargo xtask bench vmx`: runs the `exitbench` guest in Bochs (two CPU
//! models) and prints VM exit round trips per second for a CPUID loop and a
//! port-I/O loop, what an RDTSC costs natively and with RDTSC exiting (a
//! second VM created with `rdtsc=exit`), and the TSC cycles each round
//! trip costs as the guest sees it (under Bochs with `ips=100000000` the
//! TSC runs at 100 MHz, one tick per emulated instruction, so cycles =
//! instructions per round trip). Then two `fpu` guests run side by side
//! and `vm stats` gives the cost of a guest context switch (XSAVE/XRSTOR).
//!
//! A benchmark, not a test: it reports numbers and fails only when a boot
//! does not reach the prompt.

use std::time::Duration;

use hv_tests::regex::Regex;
use hv_tests::{Emulator, Machine};

use crate::{Result, make_image, setup};

struct Sample {
    wall: Duration,
    loader_to_prompt_ms: f64,
    reset_to_prompt_ms: f64,
    /// `used <n> (<b> MiB)` of the `frames:` line, as printed.
    frames_used: Option<String>,
    /// `used <k> KiB` of the `heap:` line.
    heap_used_kib: Option<u64>,
}

fn parse(args: &[String]) -> Result<u32> {
    let Some((what, rest)) = args.split_first() else {
        return Err("bench: say what to benchmark: cargo xtask bench boot [--runs N]".into());
    };
    if what != "boot" {
        return Err(format!(
            "bench: unknown benchmark '{what}' (expected boot, vmx, net, migrate, migrate-qemu or ft)"
        ));
    }
    match rest {
        [] => Ok(5),
        [flag, n] if flag == "--runs" => n
            .parse()
            .ok()
            .filter(|n| *n >= 1)
            .ok_or_else(|| format!("bench: bad --runs '{n}' (expected a number >= 1)")),
        _ => Err(format!(
            "bench boot: unexpected arguments {rest:?} (expected --runs N)"
        )),
    }
}

fn one_boot(emulator: Emulator, run: u32) -> Result<Sample> {
    let mut m = Machine::builder(emulator)
        .name(&format!("bench-{emulator}-{run}"))
        .try_start()
        .map_err(|e| e.to_string())?;
    let ready = m.try_boot_to_prompt().map_err(|e| e.to_string())?;
    let mem = m
        .try_command("mem", emulator.command_timeout())
        .map_err(|e| e.to_string())?;
    let frames = Regex::new(r"(?m)^frames: .*used (\d+ \(\d+ MiB\))").expect("static regex");
    let heap = Regex::new(r"(?m)^heap: \d+ KiB, used (\d+) KiB").expect("static regex");
    Ok(Sample {
        wall: ready.wall,
        loader_to_prompt_ms: ready.loader_to_prompt_ms,
        reset_to_prompt_ms: ready.reset_to_prompt_ms,
        frames_used: frames.captures(&mem).map(|c| c[1].to_string()),
        heap_used_kib: heap.captures(&mem).and_then(|c| c[1].parse().ok()),
    })
}

/// Median, minimum and maximum (`v` non-empty).
fn stats(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    (median, v[0], v[n - 1])
}

/// One value if all samples agree, else "min-max" / "varies".
fn same_or_range<T: PartialEq + Clone + std::fmt::Display>(v: &[Option<T>]) -> String {
    match v.first() {
        Some(Some(first)) if v.iter().all(|x| x.as_ref() == Some(first)) => first.to_string(),
        Some(_) if v.iter().all(Option::is_none) => "not printed".into(),
        _ => "varies".into(),
    }
}

/// Exit round trips measured by the `exitbench` guest per loop.
const EXITBENCH_LOOPS: u32 = 20_000;

/// `cargo xtask bench vmx`.
fn vmx(args: &[String]) -> Result {
    if !args.is_empty() {
        return Err(format!("bench vmx: unexpected arguments {args:?}"));
    }
    setup::setup()?;
    make_image()?;
    let line =
        Regex::new(r"\[(\w+)\] exitbench: (\w+) (\d+) exits, (\d+) cycles/exit, (\d+) exits/s")
            .expect("static regex");
    let mut rows = Vec::new();
    let mut switch_rows = Vec::new();
    for model in ["corei7_skylake_x", "corei7_sandy_bridge_2600k"] {
        let mut m = Machine::builder(Emulator::Bochs)
            .bochs_model(model)
            .name(&format!("bench-vmx-{model}"))
            .try_start()
            .map_err(|e| e.to_string())?;
        m.try_boot_to_prompt().map_err(|e| e.to_string())?;
        let t = Emulator::Bochs.command_timeout();
        // One at a time: a guest's TSC runs on while another has the CPU,
        // which would count into its cycles per exit. `c` has RDTSC
        // exiting on: its rdtsc line is what exiting costs.
        for (vm, extra) in [("b", ""), ("c", " rdtsc=exit")] {
            m.try_command(
                &format!("vm create {vm} mem=8 image=exitbench arg={EXITBENCH_LOOPS}{extra}"),
                t,
            )
            .map_err(|e| e.to_string())?;
            m.send_line(&format!("vm start {vm}"));
            let done = m
                .try_expect(
                    &format!(r"vm {vm}: (exited with code \d+|stopped: .*|crashed: .*)\r?\n"),
                    Duration::from_secs(300),
                )
                .map_err(|e| e.to_string())?;
            eprintln!("xtask: {model}: {}", done.text.trim());
        }
        let out = m.output();
        for c in line.captures_iter(&out) {
            let what = match (&c[1], &c[2]) {
                ("c", "rdtsc") => String::from("rdtsc (exiting)"),
                ("c", _) => continue,
                (_, "rdtsc") => String::from("rdtsc (native)"),
                (_, w) => String::from(w),
            };
            rows.push((model, what, c[4].to_string(), c[5].to_string()));
        }
        // Two guests whose x87/SSE/AVX state is live, side by side: every
        // turn switches the guest context (XSAVE of one, XRSTOR of the other).
        for vm in ["f1", "f2"] {
            let arg = if vm == "f1" { 1 } else { 2 };
            m.try_command(&format!("vm create {vm} mem=8 image=fpu arg={arg}"), t)
                .map_err(|e| e.to_string())?;
            m.try_command(&format!("vm start {vm}"), t)
                .map_err(|e| e.to_string())?;
        }
        std::thread::sleep(Duration::from_secs(10));
        // Guest lines interleave with the answer: wait for the line itself.
        m.send_line("vm stats f1");
        let found = m
            .try_expect(
                r"guest context switches \(all VMs\): (\d+), (\d+) TSC cycles each",
                Duration::from_secs(60),
            )
            .map_err(|e| e.to_string())?;
        switch_rows.push((model, found.num(1).to_string(), found.num(2).to_string()));
    }
    println!();
    println!(
        "VM exit round trips, exitbench guest in Bochs ({EXITBENCH_LOOPS} per loop; TSC 100 MHz = 1 cycle per emulated instruction)"
    );
    println!();
    println!(
        "{:<28} {:<16} {:>12} {:>14}",
        "cpu model", "loop", "cycles/exit", "exits/s"
    );
    for (model, what, cycles, rate) in &rows {
        println!("{model:<28} {what:<16} {cycles:>12} {rate:>14}");
    }
    println!();
    println!(
        "guest context switch (XSAVE + XRSTOR, DR0-3/DR6, SYSCALL MSRs), two fpu guests for 10 s"
    );
    println!();
    println!(
        "{:<28} {:>10} {:>16}",
        "cpu model", "switches", "cycles/switch"
    );
    for (model, n, cycles) in &switch_rows {
        println!("{model:<28} {n:>10} {cycles:>16}");
    }
    if rows.is_empty() {
        return Err("bench vmx: the exitbench guest printed no results".into());
    }
    Ok(())
}

/// `cargo xtask bench boot [--runs N]` and `cargo xtask bench vmx`.
pub fn main(args: &[String]) -> Result {
    if args.first().map(String::as_str) == Some("vmx") {
        return vmx(&args[1..]);
    }
    if args.first().map(String::as_str) == Some("net") {
        return crate::bench_net::main(&args[1..]);
    }
    if args.first().map(String::as_str) == Some("migrate") {
        return crate::bench_migrate::main(&args[1..]);
    }
    if args.first().map(String::as_str) == Some("ft") {
        return crate::bench_ft::main(&args[1..]);
    }
    if args.first().map(String::as_str) == Some("migrate-qemu") {
        return crate::bench_migrate_qemu::main(&args[1..]);
    }
    let runs = parse(args)?;
    setup::setup()?;
    make_image()?;

    let mut rows = Vec::new();
    for emulator in [Emulator::Qemu, Emulator::Bochs] {
        let mut samples = Vec::new();
        for run in 1..=runs {
            let s = one_boot(emulator, run)?;
            eprintln!(
                "xtask: {emulator} run {run}/{runs}: prompt after {:.2} s wall; loader-to-prompt {} ms, reset-to-prompt {} ms",
                s.wall.as_secs_f64(),
                s.loader_to_prompt_ms,
                s.reset_to_prompt_ms
            );
            samples.push(s);
        }
        rows.push((emulator, samples));
    }

    println!();
    println!("boot benchmark, {runs} run(s) per emulator, one at a time");
    println!(
        "wall: emulator spawn to first prompt; loader and reset times are emulated, from the ready line"
    );
    println!();
    println!(
        "{:<8} {:>11} {:>8} {:>8}   {:>22}   {:>22}   hv memory used",
        "emulator", "wall median", "min", "max", "loader-to-prompt ms", "reset-to-prompt ms"
    );
    for (emulator, samples) in &rows {
        let (wm, wmin, wmax) = stats(samples.iter().map(|s| s.wall.as_secs_f64()).collect());
        let (lm, lmin, lmax) = stats(samples.iter().map(|s| s.loader_to_prompt_ms).collect());
        let (rm, rmin, rmax) = stats(samples.iter().map(|s| s.reset_to_prompt_ms).collect());
        let frames: Vec<Option<String>> = samples.iter().map(|s| s.frames_used.clone()).collect();
        let heap: Vec<Option<u64>> = samples.iter().map(|s| s.heap_used_kib).collect();
        println!(
            "{:<8} {:>9.2} s {:>6.2} s {:>6.2} s   {:>22}   {:>22}   frames {}, heap {} KiB",
            emulator.name(),
            wm,
            wmin,
            wmax,
            format!("{lm:.0} ({lmin:.0}-{lmax:.0})"),
            format!("{rm:.0} ({rmin:.0}-{rmax:.0})"),
            same_or_range(&frames),
            same_or_range(&heap),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_of_odd_and_even_counts() {
        assert_eq!(stats(vec![3.0, 1.0, 2.0]), (2.0, 1.0, 3.0));
        assert_eq!(stats(vec![4.0, 1.0, 2.0, 3.0]), (2.5, 1.0, 4.0));
    }

    #[test]
    fn runs_option() {
        let a = |v: &[&str]| parse(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(a(&["boot"]), Ok(5));
        assert_eq!(a(&["boot", "--runs", "2"]), Ok(2));
        assert!(a(&["boot", "--runs", "0"]).is_err());
        assert!(a(&["net"]).is_err());
        assert!(a(&[]).is_err());
    }

    #[test]
    fn same_or_range_reports_agreement() {
        assert_eq!(same_or_range(&[Some(3), Some(3)]), "3");
        assert_eq!(same_or_range(&[Some(3), Some(4)]), "varies");
        assert_eq!(same_or_range::<u64>(&[None, None]), "not printed");
    }
}
