//! `cargo xtask <command>`: the project's tasks, in Rust so they need nothing
//! but cargo.
//!
//! ```text
//! setup                 install what the others need (rust targets, apt packages)
//! build                 build the loader, the kernel and the test guests (release)
//! image                 build, then make target/image/esp.img (guests as modules)
//! run [--emulator bochs|qemu|kvm] [--cpus N] [--model M]
//!                       boot the image with the serial console on this terminal
//! test [-- ARGS]        host unit tests of every crate, then the system tests
//! bench boot [--runs N] boot timing and memory use in QEMU and Bochs
//! bench vmx            VM exit round-trip cost in Bochs
//! bench net [--mib N]  net bench throughput: two QEMU hosts, host program via port forward, two Bochs hosts
//! bench migrate [--quick] live migration in Bochs (64/256 MiB, 3 dirty rates) beside QEMU's own
//! bench migrate-qemu [--mem MIB] [--rate N] [--bandwidth MIBPS]
//!                      QEMU's own live migration of the dirty guest (TCG, two processes)
//! bench ft [--quick] [--only d1,d2,x,t] fault tolerance between two Bochs hosts: throughput on/off, log, lag
//! ```
//!
//! Emulators are started through the `hv-tests` harness, so the emulator
//! configurations exist once. The profiles abort on panic, so this binary
//! uses the harness' `try_` API and never panics on an expected failure:
//! an abort would skip restoring the terminal.

mod bench;
mod bench_ft;
mod bench_ft_failover;
mod bench_migrate;
mod bench_migrate_qemu;
mod bench_net;
mod run;
mod setup;

use std::env;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use hv_tests::image::{self, EspContents};

const USAGE: &str = "\
usage: cargo xtask <command>

commands:
  setup                  install the rust targets and apt packages the others need
  build                  build the loader (bootx64.efi), the kernel and the test guests (release)
  image                  build, then write target/image/esp.img (the guests as modules)
  run [--emulator bochs|qemu|kvm] [--cpus N] [--model <bochs cpu model>]
                         boot the image; serial console on this terminal (Ctrl-] quits)
  test [-- <test args>]  host unit tests of every crate, then the system tests
  bench boot [--runs N]  boot time and memory use in QEMU and Bochs (default 5 runs)
  bench vmx              VM exit round trips per second (CPUID and port I/O loops) in Bochs
  bench net [--mib N]    net bench throughput between two hosts (QEMU, Bochs) and from a host program
  bench migrate [--quick] live migration of the dirty guest between two Bochs hosts (64 and 256 MiB,
                         3 dirty rates) beside QEMU's own live migration of it at the same bandwidth
  bench migrate-qemu [--mem MIB] [--rate N] [--bandwidth MIBPS] [--downtime MS] [--warmup S] [--image PATH]
                         QEMU's own live migration of the dirty guest between two QEMUs (TCG)
  bench ft [--quick] [--only d1,d2,x,t,fo] [--kills N] fault tolerance between two Bochs hosts (dirty at two
                         rates, exitbench, ticks): throughput protected/unprotected, log rate, lag, output
                         latency; fo: N kills of the primary (default 5) with a witness: failover time,
                         detection, drain, records drained; a state check's cost; re-sync time
  campaign ft [--runs N] kill the primary of a protected guest at N random points (default 20, three
                         fresh hosts each) and summarise: failures, failover time distribution
";

/// An error message for the user; `main` prints it as `error: <msg>`.
type Result<T = ()> = std::result::Result<T, String>;

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    let Some((cmd, rest)) = args.split_first() else {
        eprint!("{USAGE}");
        return ExitCode::from(2);
    };
    let res = match cmd.as_str() {
        "setup" => no_args(cmd, rest).and_then(|()| setup::setup()),
        "build" => no_args(cmd, rest).and_then(|()| setup::rust_targets().and_then(|()| build())),
        "image" => no_args(cmd, rest).and_then(|()| setup::setup().and_then(|()| make_image())),
        "run" => run::main(rest),
        "test" => test(rest),
        "bench" => bench::main(rest),
        "campaign" => campaign(rest),
        "help" | "-h" | "--help" => {
            print!("{USAGE}");
            Ok(())
        }
        other => Err(format!("unknown command '{other}'\n{USAGE}")),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.is_empty() => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn no_args(cmd: &str, rest: &[String]) -> Result {
    match rest.first() {
        None => Ok(()),
        Some(a) => Err(format!("{cmd} takes no arguments (got '{a}')")),
    }
}

/// The workspace root: the parent of this crate's directory.
fn root() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.parent().unwrap_or(here).to_path_buf()
}

/// `cargo`, as the one running us (`$CARGO`) if there is one.
fn cargo() -> Command {
    let mut c = Command::new(env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo")));
    c.current_dir(root());
    c
}

/// Runs `cmd`, echoing it; an error if it cannot start or fails.
fn run_cmd(mut cmd: Command) -> Result {
    let shown = format!(
        "{} {}",
        Path::new(cmd.get_program())
            .file_name()
            .unwrap_or_default()
            .to_string_lossy(),
        cmd.get_args()
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ")
    );
    eprintln!("xtask: {shown}");
    let status = cmd
        .status()
        .map_err(|e| format!("cannot run `{shown}`: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("`{shown}` failed ({status})"))
    }
}

const UEFI_TARGET: &str = "x86_64-unknown-uefi";
const KERNEL_TARGET: &str = "x86_64-unknown-none";
/// The test guests (binaries of the `guests` crate, built for
/// [`KERNEL_TARGET`]); each goes into the image as module `<name>`.
const GUESTS: [&str; 7] = [
    "hello",
    "ticks",
    "memtest",
    "rogue",
    "exitbench",
    "dirty",
    "fpu",
];

fn loader_path() -> PathBuf {
    root()
        .join("target")
        .join(UEFI_TARGET)
        .join("release")
        .join("bootx64.efi")
}

fn kernel_path() -> PathBuf {
    root()
        .join("target")
        .join(KERNEL_TARGET)
        .join("release")
        .join("kernel")
}

fn guest_path(name: &str) -> PathBuf {
    root()
        .join("target")
        .join(KERNEL_TARGET)
        .join("release")
        .join(name)
}

fn build() -> Result {
    let mut c = cargo();
    c.args([
        "build",
        "--release",
        "-p",
        "boot",
        "--bin",
        "bootx64",
        "--target",
        UEFI_TARGET,
    ]);
    run_cmd(c)?;
    let mut c = cargo();
    c.args([
        "build",
        "--release",
        "-p",
        "kernel",
        "--bin",
        "kernel",
        "--target",
        KERNEL_TARGET,
    ]);
    run_cmd(c)?;
    build_guests()
}

/// Builds the test guests (bare-metal ELFs, see `guest_path`).
fn build_guests() -> Result {
    let mut c = cargo();
    c.args([
        "build",
        "--release",
        "-p",
        "guests",
        "--target",
        KERNEL_TARGET,
    ]);
    run_cmd(c)
}

/// Builds, then writes the ESP image to `target/image/esp.img`.
fn make_image() -> Result {
    build()?;
    let out = hv_tests::host::default_image_path();
    let contents = EspContents {
        loader: loader_path(),
        kernel: kernel_path(),
        config: root().join("config").join("hv.cfg"),
        modules: GUESTS
            .iter()
            .map(|g| (g.to_string(), guest_path(g)))
            .collect(),
    };
    image::build_esp(&out, &contents)?;
    eprintln!("xtask: wrote {}", out.display());
    Ok(())
}

/// Clippy on every crate for the target it really builds for, warnings
/// as errors: the workspace lints (`undocumented_unsafe_blocks` among
/// them) are only enforced by clippy. Stops at the first failure.
fn clippy() -> Result {
    let runs: [(&[&str], Option<&str>); 3] = [
        (
            &["--workspace", "--exclude", "guests", "--all-targets"],
            None,
        ),
        (&["-p", "kernel", "-p", "guests"], Some(KERNEL_TARGET)),
        (&["-p", "boot"], Some(UEFI_TARGET)),
    ];
    for (crates, target) in runs {
        let mut c = cargo();
        c.arg("clippy").args(crates);
        if let Some(t) = target {
            c.args(["--target", t]);
        }
        c.args(["--", "-D", "warnings"]);
        run_cmd(c)?;
    }
    Ok(())
}

/// The hypervisor switches guests' x87/SSE/AVX registers only when another
/// guest is about to run (vmm/context.rs): that is sound only while the
/// kernel itself never touches them. The soft-float target and the
/// portable crypto backends see to that; this check keeps it so, by
/// disassembling the kernel and refusing any instruction that names an
/// XMM, YMM or ZMM register.
fn kernel_leaves_vector_registers_alone() -> Result {
    let kernel = kernel_path();
    let out = Command::new("objdump")
        .args(["-d", "--no-show-raw-insn"])
        .arg(&kernel)
        .output()
        .map_err(|e| format!("objdump (package binutils): {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "objdump -d {} failed: {}",
            kernel.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut function = "";
    let mut hits = Vec::new();
    for line in text.lines() {
        if line.ends_with(">:") {
            function = line;
        } else if ["%xmm", "%ymm", "%zmm"].iter().any(|r| line.contains(r)) {
            hits.push(format!("{function} {}", line.trim()));
        }
    }
    if hits.is_empty() {
        eprintln!("xtask: the kernel uses no XMM/YMM/ZMM register");
        return Ok(());
    }
    Err(format!(
        "the kernel touches vector registers, which would corrupt guests' state ({} instructions), first: {}",
        hits.len(),
        hits.iter().take(5).cloned().collect::<Vec<_>>().join("; ")
    ))
}

/// `campaign ft [--runs N]`: the random-kill failover test, N runs.
fn campaign(rest: &[String]) -> Result {
    let runs = match rest {
        [what] if what == "ft" => 20,
        [what, flag, n] if what == "ft" && flag == "--runs" => {
            n.parse::<u32>().ok().filter(|&n| n >= 1).ok_or_else(|| {
                format!("campaign: --runs wants a whole number of at least 1, got '{n}'")
            })?
        }
        _ => {
            return Err(format!(
                "usage: cargo xtask campaign ft [--runs N]\n{USAGE}"
            ));
        }
    };
    setup::setup()?;
    make_image()?;
    let img = hv_tests::host::default_image_path();
    let mut c = cargo();
    c.args([
        "test",
        "-p",
        "hv-tests",
        "--test",
        "ft_failover",
        "bochs_ft_failover_primary_killed_at_random_points",
        "--",
        "--exact",
        "--nocapture",
    ])
    .env("HV_IMAGE", &img)
    .env("HV_FT_RUNS", runs.to_string());
    run_cmd(c)
}

fn test(rest: &[String]) -> Result {
    let passthrough: &[String] = match rest.split_first() {
        None => &[],
        Some((dd, tail)) if dd == "--" => tail,
        Some((a, _)) => {
            return Err(format!(
                "test: unexpected argument '{a}' (put test arguments after --)"
            ));
        }
    };
    setup::setup()?;
    clippy()?;
    make_image()?;
    kernel_leaves_vector_registers_alone()?;
    let img = hv_tests::host::default_image_path();

    let mut unit = cargo();
    unit.args(["test", "--workspace", "--exclude", "hv-tests"]);
    let unit_res = run_cmd(unit);

    let mut system = cargo();
    system
        .args(["test", "-p", "hv-tests", "--", "--test-threads=2"])
        .args(passthrough)
        .env("HV_IMAGE", &img);
    let system_res = run_cmd(system);

    match (unit_res, system_res) {
        (Ok(()), Ok(())) => {
            eprintln!("xtask: all tests passed");
            Ok(())
        }
        (u, s) => {
            let failed: Vec<&str> = [
                ("host unit tests", u.is_err()),
                ("system tests", s.is_err()),
            ]
            .into_iter()
            .filter(|(_, bad)| *bad)
            .map(|(n, _)| n)
            .collect();
            Err(format!("{} failed", failed.join(" and ")))
        }
    }
}
