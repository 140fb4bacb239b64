//! `hello`: prints a greeting, checks that CPUID shows the hypervisor as the
//! contract says (leaf 0x4000_0000 signature, CPUID.1:ECX bits 31 and 5),
//! prints the RAM size and argument it was given, and exits with 0 (2 if
//! CPUID is wrong).
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(not(target_os = "none"))]
fn main() {
    println!(
        "hello is a guest program for the hv hypervisor (build it with --target x86_64-unknown-none)"
    );
}

#[cfg(target_os = "none")]
guests::entry!("hello", main);

#[cfg(target_os = "none")]
fn main(boot: guests::Boot) -> ! {
    use guests::{arch, console, exit_code, hv, say};

    say!("hello from a guest");
    let (max_leaf, b, c, d) = arch::cpuid(hv::LEAF_SIGNATURE, 0);
    let sig = hv::signature(b, c, d);
    let (_, _, ecx1, _) = arch::cpuid(1, 0);
    if sig == hv::SIGNATURE && max_leaf >= hv::MAX_LEAF && hv::cpuid1_ecx_ok(ecx1) {
        say!("hypervisor signature ok");
    } else {
        let shown = hv::printable(&sig);
        say!(
            "cpuid 0x40000000: eax {max_leaf:#x} signature \"{}\" (want {:#x} \"hvhypervisor\"); cpuid 1: ecx {ecx1:#x} (want bit 31 set, bit 5 clear)",
            core::str::from_utf8(&shown).unwrap_or("?"),
            hv::MAX_LEAF
        );
        say!("FAIL");
        console::exit(exit_code::HELLO_FAILED);
    }
    say!("ram {} MiB, arg {}", boot.ram >> 20, boot.arg);

    // The same 16550 memory-mapped at hv::MMIO_UART (registers one byte
    // apart): read its line status, then write a line through it.
    let mmio = hv::MMIO_UART as *mut u8;
    // SAFETY: the contract maps the 16550 at MMIO_UART; offset 5 is the LSR,
    // a side-effect-free read.
    let lsr = unsafe { core::ptr::read_volatile(mmio.add(5)) };
    let hex = |n: u8| if n < 10 { b'0' + n } else { b'a' + n - 10 };
    let mut line = *b"hello: via mmio, lsr 0x??\n";
    line[23] = hex(lsr >> 4);
    line[24] = hex(lsr & 0xf);
    for &b in &line {
        // SAFETY: offset 0 is the transmit register of the MMIO 16550.
        unsafe { core::ptr::write_volatile(mmio, b) };
    }
    say!("ok");
    console::exit(exit_code::OK)
}
