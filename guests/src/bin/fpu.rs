//! `fpu`: a hard-float guest that keeps a pattern in its vector registers
//! and checks, over and over, that nobody else changed them: the test of
//! the hypervisor's guest context switch (another guest on the same CPU,
//! a migration to another host).
//!
//! The argument is `mode × 1000000 + seed`. The seed (tests give each VM
//! its own, so two guests never hold the same pattern) derives a
//! different 64-bit value for every lane of XMM0-15, and with AVX of the
//! upper halves of YMM0-15. Mode 0 uses AVX when CPUID offers it (setting
//! CR4.OSXSAVE and XCR0 = x87|SSE|AVX with XSETBV), mode 1 stays with SSE.
//!
//! It prints `fpu: seed <s>, pattern in xmm0-15` (or `ymm0-15`), then
//! `fpu: alive <k> checks <n> (sse|avx)` about once a second, and stops at
//! the first difference with `fpu: MISMATCH <reg> lane <l>: expected
//! <hex> got <hex>` and exit code [`guests::exit_code::FPU_FAILED`]. Every
//! few hundred checks it executes CPUID, an exit to the hypervisor.
//!
//! The Rust code is soft-float (target x86_64-unknown-none): only the
//! inline assembly here touches vector registers, so their contents
//! between two asm blocks are the pattern and nothing else.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(not(target_os = "none"))]
fn main() {
    println!(
        "fpu is a guest program for the hv hypervisor (build it with --target x86_64-unknown-none)"
    );
}

#[cfg(target_os = "none")]
guests::entry!("fpu", main);

/// 16 registers × 4 lanes of 64 bits (a YMM register each).
#[cfg(target_os = "none")]
#[repr(C, align(32))]
struct Regs([u64; 64]);

/// The pattern's value for register `reg`, lane `lane` (a SplitMix64
/// step of the three, so every lane of every guest differs).
#[cfg(target_os = "none")]
fn pattern(seed: u64, reg: usize, lane: usize) -> u64 {
    let mut z = seed
        .wrapping_mul(0x9e37_79b9_7f4a_7c15)
        .wrapping_add((reg * 4 + lane) as u64 + 1);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Loads XMM0-15 (SSE) or YMM0-15 (AVX) from `r`.
#[cfg(target_os = "none")]
fn load(r: &Regs, avx: bool) {
    let p = r.0.as_ptr();
    // SAFETY: `p` points at 512 readable, 32-byte aligned bytes; the
    // instructions only write vector registers, which nothing else in
    // this program uses (soft-float target).
    unsafe {
        if avx {
            core::arch::asm!(
                "vmovdqu ymm0, [{p}]", "vmovdqu ymm1, [{p} + 32]",
                "vmovdqu ymm2, [{p} + 64]", "vmovdqu ymm3, [{p} + 96]",
                "vmovdqu ymm4, [{p} + 128]", "vmovdqu ymm5, [{p} + 160]",
                "vmovdqu ymm6, [{p} + 192]", "vmovdqu ymm7, [{p} + 224]",
                "vmovdqu ymm8, [{p} + 256]", "vmovdqu ymm9, [{p} + 288]",
                "vmovdqu ymm10, [{p} + 320]", "vmovdqu ymm11, [{p} + 352]",
                "vmovdqu ymm12, [{p} + 384]", "vmovdqu ymm13, [{p} + 416]",
                "vmovdqu ymm14, [{p} + 448]", "vmovdqu ymm15, [{p} + 480]",
                p = in(reg) p, options(nostack, readonly, preserves_flags),
            );
        } else {
            core::arch::asm!(
                "movdqu xmm0, [{p}]", "movdqu xmm1, [{p} + 32]",
                "movdqu xmm2, [{p} + 64]", "movdqu xmm3, [{p} + 96]",
                "movdqu xmm4, [{p} + 128]", "movdqu xmm5, [{p} + 160]",
                "movdqu xmm6, [{p} + 192]", "movdqu xmm7, [{p} + 224]",
                "movdqu xmm8, [{p} + 256]", "movdqu xmm9, [{p} + 288]",
                "movdqu xmm10, [{p} + 320]", "movdqu xmm11, [{p} + 352]",
                "movdqu xmm12, [{p} + 384]", "movdqu xmm13, [{p} + 416]",
                "movdqu xmm14, [{p} + 448]", "movdqu xmm15, [{p} + 480]",
                p = in(reg) p, options(nostack, readonly, preserves_flags),
            );
        }
    }
}

/// Stores XMM0-15 or YMM0-15 into `r` (SSE: lanes 2-3 of each slot keep
/// what they held).
#[cfg(target_os = "none")]
fn store(r: &mut Regs, avx: bool) {
    let p = r.0.as_mut_ptr();
    // SAFETY: `p` points at 512 writable, 32-byte aligned bytes that `r`
    // borrows exclusively; the instructions only read vector registers.
    unsafe {
        if avx {
            core::arch::asm!(
                "vmovdqu [{p}], ymm0", "vmovdqu [{p} + 32], ymm1",
                "vmovdqu [{p} + 64], ymm2", "vmovdqu [{p} + 96], ymm3",
                "vmovdqu [{p} + 128], ymm4", "vmovdqu [{p} + 160], ymm5",
                "vmovdqu [{p} + 192], ymm6", "vmovdqu [{p} + 224], ymm7",
                "vmovdqu [{p} + 256], ymm8", "vmovdqu [{p} + 288], ymm9",
                "vmovdqu [{p} + 320], ymm10", "vmovdqu [{p} + 352], ymm11",
                "vmovdqu [{p} + 384], ymm12", "vmovdqu [{p} + 416], ymm13",
                "vmovdqu [{p} + 448], ymm14", "vmovdqu [{p} + 480], ymm15",
                p = in(reg) p, options(nostack, preserves_flags),
            );
        } else {
            core::arch::asm!(
                "movdqu [{p}], xmm0", "movdqu [{p} + 32], xmm1",
                "movdqu [{p} + 64], xmm2", "movdqu [{p} + 96], xmm3",
                "movdqu [{p} + 128], xmm4", "movdqu [{p} + 160], xmm5",
                "movdqu [{p} + 192], xmm6", "movdqu [{p} + 224], xmm7",
                "movdqu [{p} + 256], xmm8", "movdqu [{p} + 288], xmm9",
                "movdqu [{p} + 320], xmm10", "movdqu [{p} + 352], xmm11",
                "movdqu [{p} + 384], xmm12", "movdqu [{p} + 416], xmm13",
                "movdqu [{p} + 448], xmm14", "movdqu [{p} + 480], xmm15",
                p = in(reg) p, options(nostack, preserves_flags),
            );
        }
    }
}

/// Turns on SSE, and AVX if `want_avx` and CPUID offers it; returns
/// whether AVX is on.
#[cfg(target_os = "none")]
fn enable(want_avx: bool) -> bool {
    let (_, _, ecx, _) = guests::arch::cpuid(1, 0);
    let avx = want_avx && ecx & (1 << 26) != 0 && ecx & (1 << 28) != 0;
    let osfxsr_osxmmexcpt = (1u64 << 9) | (1 << 10);
    let osxsave = if avx { 1u64 << 18 } else { 0 };
    // SAFETY: setting CR4.OSFXSR/OSXMMEXCPT (and OSXSAVE when CPUID has
    // XSAVE) only enables instructions; XSETBV with x87|SSE|AVX is valid
    // once OSXSAVE is set and CPUID reports AVX.
    unsafe {
        core::arch::asm!(
            "mov {t}, cr4", "or {t}, {bits}", "mov cr4, {t}",
            t = out(reg) _, bits = in(reg) osfxsr_osxmmexcpt | osxsave,
            options(nostack, nomem),
        );
        if avx {
            core::arch::asm!("xsetbv", in("ecx") 0u32, in("eax") 7u32, in("edx") 0u32,
                options(nostack, nomem));
        }
    }
    avx
}

#[cfg(target_os = "none")]
fn main(boot: guests::Boot) -> ! {
    use guests::{arch, console, exit_code, hv, say};

    let seed = boot.arg % 1_000_000;
    let avx = enable(boot.arg / 1_000_000 == 0);
    let (what, lanes) = if avx { ("avx", 4) } else { ("sse", 2) };
    let tsc_khz = u64::from(arch::cpuid(hv::LEAF_TSC_KHZ, 0).0).max(1);
    let mut want = Regs([0; 64]);
    for reg in 0..16 {
        for lane in 0..4 {
            want.0[reg * 4 + lane] = if lane < lanes {
                pattern(seed, reg, lane)
            } else {
                0
            };
        }
    }
    load(&want, avx);
    say!(
        "seed {seed}, pattern in {}",
        if avx { "ymm0-15" } else { "xmm0-15" }
    );

    let mut got = Regs([0; 64]);
    let mut checks = 0u64;
    let mut alive = 0u64;
    let mut next_report = arch::rdtsc() + tsc_khz * 1000;
    loop {
        store(&mut got, avx);
        checks += 1;
        for reg in 0..16 {
            for lane in 0..lanes {
                let (w, g) = (want.0[reg * 4 + lane], got.0[reg * 4 + lane]);
                if w != g {
                    let name = if avx { "ymm" } else { "xmm" };
                    say!("MISMATCH {name}{reg} lane {lane}: expected {w:#018x} got {g:#018x}");
                    console::exit(exit_code::FPU_FAILED);
                }
            }
        }
        if checks.is_multiple_of(256) {
            // An exit to the hypervisor (and maybe a turn of another guest).
            core::hint::black_box(arch::cpuid(0, 0));
        }
        if arch::rdtsc() >= next_report {
            alive += 1;
            say!("alive {alive} checks {checks} ({what})");
            next_report = arch::rdtsc() + tsc_khz * 1000;
        }
    }
}
