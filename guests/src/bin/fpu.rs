//! `fpu`: fills the vector registers with its own pattern and keeps checking
//! that they still hold it, so that it notices when the hypervisor lets
//! another guest's XMM/YMM values (or zeros) into them: across a switch
//! between guests on one CPU, or across a live migration.
//!
//! Its argument is `mode × 1_000_000 + seed` (see `guests::fpu`). The seed
//! (0-999999) picks the pattern: give every `fpu` VM of a test its own
//! (e.g. `arg=1` and `arg=2`), since a guest cannot know its VM name.
//!
//! - mode 0 (`arg=<seed>`): AVX if CPUID.1:ECX shows XSAVE (bit 26) and AVX
//!   (bit 28): sets CR4.OSXSAVE, enables x87|SSE|AVX in XCR0 with XSETBV
//!   (which exits to the hypervisor) and checks it with XGETBV, then uses
//!   all 256 bits of YMM0-15; without AVX, as mode 1;
//! - mode 1 (`arg=1<seed, 6 digits>`, e.g. `1000001`): SSE only, XMM0-15,
//!   no XSETBV.
//!
//! Lines (each after `fpu: `):
//!
//! - `cpuid: xsave <yes|no>, avx <yes|no>, mode <auto|sse only>` at start;
//! - `enabling avx: xcr0 = 0x7` just before the XSETBV;
//! - `seed <s>, pattern in xmm0-15 (sse)` or `seed <s>, pattern in
//!   ymm0-15 (avx)` once the registers are filled: the start sentinel;
//! - `alive <k> checks <n> (<sse|avx>)` every 131072 checks (about twice a
//!   second in Bochs with two guests on the CPU);
//! - `MISMATCH <xmmN|ymmN> lane <k>: expected <hex> got <hex>` (lane `k`
//!   = bits 64k..64k+63), then exit code 7 (`FPU_FAILED`);
//! - `xcr0 is <hex> after xsetbv 0x7`, then exit code 7, if XCR0 reads back
//!   without SSE or AVX enabled.
//!
//! Between checks it executes a CPUID every 64 checks (a VM exit: the
//! hypervisor's own code runs) and re-fills the registers with the next
//! round's pattern every 1024, so a register stuck at this guest's older
//! value fails too. Interrupts stay off: no handler runs between a fill and
//! a check, and the Rust code is soft-float, so only the `arch` vector
//! functions ever touch these registers.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(not(target_os = "none"))]
fn main() {
    println!(
        "fpu is a guest program for the hv hypervisor (build it with --target x86_64-unknown-none)"
    );
}

#[cfg(target_os = "none")]
guests::entry!("fpu", main);

#[cfg(target_os = "none")]
fn main(boot: guests::Boot) -> ! {
    use guests::fpu::{ALIVE_EVERY, EXIT_EVERY, LANES, Mode, ROTATE_EVERY, VectorRegs, parse_arg};
    use guests::{arch, console, exit_code, hv, say};

    /// CPUID.1:ECX bit 26: XSAVE/XRSTOR, XSETBV/XGETBV, XCR0.
    const CPUID1_ECX_XSAVE: u32 = 1 << 26;
    /// CPUID.1:ECX bit 28: AVX.
    const CPUID1_ECX_AVX: u32 = 1 << 28;
    /// XCR0: x87 (bit 0), SSE (bit 1), AVX (bit 2) state.
    const XCR0_X87_SSE_AVX: u64 = 0x7;

    let Some((mode, seed)) = parse_arg(boot.arg) else {
        say!("bad argument {} (mode 0-1 x 1000000 + seed)", boot.arg);
        console::exit(exit_code::FPU_FAILED);
    };
    // SAFETY: OSFXSR and OSXMMEXCPT exist on every x86-64 CPU; the other
    // bits (PAE above all) stay as they are.
    unsafe { arch::write_cr4(arch::read_cr4() | arch::CR4_OSFXSR | arch::CR4_OSXMMEXCPT) };
    let (_, _, ecx, _) = arch::cpuid(1, 0);
    let (xsave, avx_cpu) = (ecx & CPUID1_ECX_XSAVE != 0, ecx & CPUID1_ECX_AVX != 0);
    let yes = |b: bool| if b { "yes" } else { "no" };
    say!(
        "cpuid: xsave {}, avx {}, mode {}",
        yes(xsave),
        yes(avx_cpu),
        if mode == Mode::Auto {
            "auto"
        } else {
            "sse only"
        }
    );
    let avx = mode == Mode::Auto && xsave && avx_cpu;
    if avx {
        // SAFETY: CPUID shows XSAVE, so OSXSAVE can be set.
        unsafe { arch::write_cr4(arch::read_cr4() | arch::CR4_OSXSAVE) };
        say!("enabling avx: xcr0 = {XCR0_X87_SSE_AVX:#x}");
        // SAFETY: OSXSAVE is set; x87|SSE|AVX is a valid XCR0 on a CPU with
        // AVX (CPUID above).
        unsafe { arch::xsetbv(0, XCR0_X87_SSE_AVX) };
        // SAFETY: OSXSAVE is set.
        let xcr0 = unsafe { arch::xgetbv(0) };
        if xcr0 & XCR0_X87_SSE_AVX != XCR0_X87_SSE_AVX {
            say!("xcr0 is {xcr0:#x} after xsetbv {XCR0_X87_SSE_AVX:#x}");
            console::exit(exit_code::FPU_FAILED);
        }
    }
    let (lanes, reg, kind) = if avx {
        (LANES, "ymm", "avx")
    } else {
        (2, "xmm", "sse")
    };
    let load = |regs: &VectorRegs| {
        if avx {
            // SAFETY: OSXSAVE is set and XCR0 enables SSE and AVX (checked).
            unsafe { arch::load_ymm(regs) }
        } else {
            // SAFETY: OSFXSR is set (above).
            unsafe { arch::load_xmm(regs) }
        }
    };
    let store = |regs: &mut VectorRegs| {
        if avx {
            // SAFETY: as in load.
            unsafe { arch::store_ymm(regs) }
        } else {
            // SAFETY: as in load.
            unsafe { arch::store_xmm(regs) }
        }
    };

    let mut round = 0u64;
    let mut expected = VectorRegs::pattern(seed, round);
    load(&expected);
    say!("seed {seed}, pattern in {reg}0-15 ({kind})");
    let mut got = VectorRegs::zero();
    let mut checks = 0u64;
    loop {
        store(&mut got);
        if let Some((r, k, want, have)) = expected.first_mismatch(&got, lanes) {
            say!("MISMATCH {reg}{r} lane {k}: expected {want:#018x} got {have:#018x}");
            console::exit(exit_code::FPU_FAILED);
        }
        checks += 1;
        if checks.is_multiple_of(ALIVE_EVERY) {
            say!("alive {} checks {checks} ({kind})", checks / ALIVE_EVERY);
        }
        if checks.is_multiple_of(EXIT_EVERY) {
            core::hint::black_box(arch::cpuid(hv::LEAF_SIGNATURE, 0));
        }
        if checks.is_multiple_of(ROTATE_EVERY) {
            round += 1;
            expected = VectorRegs::pattern(seed, round);
            load(&expected);
        }
    }
}
