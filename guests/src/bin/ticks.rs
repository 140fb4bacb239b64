//! `ticks`: programs the PIC and the PIT for 100 Hz, sleeps in HLT between
//! interrupts and counts them for one second of TSC time (its rate from
//! CPUID 0x4000_0010); exits with 0 if it saw 80-120, else 3.
//!
//! With a non-zero argument it runs forever instead, printing
//! `ticks: alive <k>` every 100 interrupts: a guest that always makes
//! progress, to run beside another.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(not(target_os = "none"))]
fn main() {
    println!(
        "ticks is a guest program for the hv hypervisor (build it with --target x86_64-unknown-none)"
    );
}

#[cfg(target_os = "none")]
guests::entry!("ticks", main);

#[cfg(target_os = "none")]
fn main(boot: guests::Boot) -> ! {
    use guests::timing::{TICKS_ACCEPTED, TICKS_HZ, TICKS_WINDOW_MS, rate_hz, tsc_to_ms};
    use guests::{arch, console, exit_code, hv, pic, say};

    let tsc_khz = u64::from(arch::cpuid(hv::LEAF_TSC_KHZ, 0).0);
    if tsc_khz == 0 {
        say!("cpuid 0x40000010 gives no TSC frequency");
        say!("FAIL");
        console::exit(exit_code::TICKS_FAILED);
    }
    pic::start_timer(TICKS_HZ);
    // SAFETY: rt::start installed the IDT; its timer vector counts ticks
    // and sends the EOI.
    unsafe { arch::sti() };

    if boot.arg != 0 {
        say!("running forever at {TICKS_HZ} Hz (tsc {tsc_khz} kHz)");
        let mut k = 0u64;
        loop {
            arch::hlt();
            if pic::ticks() >= (k + 1) * 100 {
                k += 1;
                say!("alive {k}");
            }
        }
    }

    let t0 = arch::rdtsc();
    let n0 = pic::ticks();
    let deadline = t0 + tsc_khz * TICKS_WINDOW_MS;
    while arch::rdtsc() < deadline {
        arch::hlt();
    }
    let n = pic::ticks() - n0;
    let ms = tsc_to_ms(arch::rdtsc() - t0, tsc_khz);
    arch::cli();
    say!("{n} interrupts in {ms} ms ({} Hz)", rate_hz(n, ms));
    if TICKS_ACCEPTED.contains(&n) {
        say!("ok");
        console::exit(exit_code::OK)
    } else {
        say!("FAIL");
        console::exit(exit_code::TICKS_FAILED)
    }
}
