//! Loader failures: a clear `boot: error:` line, then back to the firmware.

use hv_tests::image::KERNEL_PATH;
use hv_tests::{LOADER_PATTERN, Machine, line_pattern};

#[test]
fn qemu_missing_kernel_is_reported() {
    let mut m = Machine::qemu().without_kernel().start();
    let t = m.emulator().boot_timeout();
    m.expect(&line_pattern(LOADER_PATTERN), t);
    m.expect(&line_pattern(r"boot: error: .*\\EFI\\hv\\kernel\.elf.*"), t);
}

#[test]
fn qemu_garbage_kernel_is_rejected() {
    // Deterministic noise, not an ELF file.
    let mut x: u32 = 0x1234_5678;
    let garbage: Vec<u8> = (0..64 * 1024)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x.to_le_bytes()[0]
        })
        .collect();
    let mut m = Machine::qemu().write_file(KERNEL_PATH, garbage).start();
    let t = m.emulator().boot_timeout();
    m.expect(&line_pattern(LOADER_PATTERN), t);
    m.expect(
        &line_pattern(r"boot: error: \\EFI\\hv\\kernel\.elf is not a valid kernel: .+"),
        t,
    );
}
