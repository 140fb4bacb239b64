//! `exitbench`: measures the cost of a VM exit round trip from the guest's
//! side. It times `arg` (default 20000) CPUID instructions and as many
//! 1-byte port reads of port 0x80 (unmodelled: the read returns 0xff),
//! each of which exits to the hypervisor and back, with the TSC, and prints
//! TSC cycles per round trip and round trips per second:
//!
//! `exitbench: cpuid <n> exits, <c> cycles/exit, <r> exits/s`
//! `exitbench: io <n> exits, <c> cycles/exit, <r> exits/s`
//! `exitbench: rdtsc <n> exits, <c> cycles/exit, <r> exits/s`
//!
//! The last loop times as many RDTSCs: they exit only in a VM created
//! with `rdtsc=exit` (then the line is what RDTSC exiting costs); in any
//! other VM they run natively and the line is the baseline.
//!
//! `cargo xtask bench vmx` runs it in Bochs and reports these lines.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(not(target_os = "none"))]
fn main() {
    println!(
        "exitbench is a guest program for the hv hypervisor (build it with --target x86_64-unknown-none)"
    );
}

#[cfg(target_os = "none")]
guests::entry!("exitbench", main);

#[cfg(target_os = "none")]
fn main(boot: guests::Boot) -> ! {
    use guests::{arch, console, exit_code, hv, say};

    let n = if boot.arg == 0 { 20_000 } else { boot.arg };
    let (tsc_khz, _, _, _) = arch::cpuid(hv::LEAF_TSC_KHZ, 0);
    let tsc_hz = u64::from(tsc_khz) * 1000;
    let report = |what: &str, cycles: u64| {
        let per = cycles / n;
        let rate = if cycles == 0 {
            0
        } else {
            u128::from(n) * u128::from(tsc_hz) / u128::from(cycles)
        };
        say!("{what} {n} exits, {per} cycles/exit, {rate} exits/s");
    };

    let t0 = arch::rdtsc();
    for i in 0..n {
        core::hint::black_box(arch::cpuid(0, i as u32));
    }
    report("cpuid", arch::rdtsc() - t0);

    let t0 = arch::rdtsc();
    for _ in 0..n {
        // SAFETY: port 0x80 (POST code) is unmodelled by the hypervisor:
        // the read exits and returns 0xff, with no effect on guest state.
        core::hint::black_box(unsafe { arch::inb(0x80) });
    }
    report("io", arch::rdtsc() - t0);

    let t0 = arch::rdtsc();
    for _ in 0..n {
        core::hint::black_box(arch::rdtsc());
    }
    report("rdtsc", arch::rdtsc() - t0);
    console::exit(exit_code::OK)
}
