//! `memtest`: writes [`guests::memtest::pattern`] over every word of RAM
//! from the end of its image to the end of RAM (RDI), reads it all back and
//! prints `memtest: ok <n> MiB checksum 0x<16 hex>` (FNV-1a of the words;
//! [`guests::memtest::expected_checksum`] predicts it), or
//! `memtest: FAIL at 0x<addr>` and exit code 4. The seed is the VM's
//! argument. Its stack (0x10000-0x80000) and the hypervisor's tables lie
//! below the image, so the range never touches them.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(not(target_os = "none"))]
fn main() {
    println!(
        "memtest is a guest program for the hv hypervisor (build it with --target x86_64-unknown-none)"
    );
}

#[cfg(target_os = "none")]
guests::entry!("memtest", main);

#[cfg(target_os = "none")]
fn main(boot: guests::Boot) -> ! {
    use guests::memtest::{Fnv1a, pattern};
    use guests::{console, exit_code, rt, say};

    let start = rt::image_end().next_multiple_of(8);
    let end = boot.ram & !7;
    let seed = boot.arg;
    if end <= start {
        say!("FAIL no RAM above the image (image ends at {start:#x}, ram {end:#x})");
        console::exit(exit_code::MEMTEST_FAILED);
    }
    say!("testing {start:#x}-{end:#x}, seed {seed:#x}");
    let word = |addr: u64| core::ptr::with_exposed_provenance_mut::<u64>(addr as usize);

    let mut addr = start;
    while addr < end {
        // SAFETY: [start, end) is guest RAM above the image (the linker's
        // __image_end) and below RDI: no Rust object, stack or page table
        // lives there, so this loop is its only user.
        unsafe { core::ptr::write_volatile(word(addr), pattern(addr, seed)) };
        addr += 8;
    }

    let mut sum = Fnv1a::new();
    let mut addr = start;
    while addr < end {
        // SAFETY: as above; the word was written by the first loop.
        let got = unsafe { core::ptr::read_volatile(word(addr)) };
        if got != pattern(addr, seed) {
            say!("read {got:#018x}, wrote {:#018x}", pattern(addr, seed));
            say!("FAIL at {addr:#x}");
            console::exit(exit_code::MEMTEST_FAILED);
        }
        sum.word(got);
        addr += 8;
    }
    say!(
        "ok {} MiB checksum {:#018x}",
        (end - start) >> 20,
        sum.value()
    );
    console::exit(exit_code::OK)
}
