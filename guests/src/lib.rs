//! Test guests for the hypervisor, and the tiny `no_std` runtime they share.
//!
//! The binaries (`src/bin/`), each a bare-metal ELF when built with
//! `cargo build --release -p guests --target x86_64-unknown-none`, copied
//! into the boot image as `/EFI/hv/modules/<name>` and run with
//! `vm create <vm> mem=<MiB> image=<name> [arg=<n>]`:
//!
//! | guest | what it checks | exit code |
//! |---|---|---|
//! | `hello` | console output, the CPUID leaves, RDI/RSI | 0, or 2 on a bad CPUID |
//! | `ticks` | PIC + PIT interrupts at 100 Hz against the TSC, HLT | 0, or 3; `arg` != 0: runs forever |
//! | `memtest` | every word of RAM above the image (pattern, checksum) | 0, or 4 |
//! | `dirty` | `arg` = mode × 1000000 + rate. Mode 0 writes `rate` pages a second across its RAM, mode 1 `rate` consecutive pages in the second after each request (then `dirty: window <w> writes to <p> distinct pages`); both print `dirty: count <n> tsc <t> gap <g>` twice a second (`g`: longest TSC stretch between two wake-ups), `dirty: scan: <n> stale words in <p> pages` (a filling guest's leftovers) at start and, when port 0xF5 changes, `dirty: checksum <sum> expected <sum> ok\|MISMATCH` and the scan line again. Mode 2 fills its RAM with that tagged pattern: `dirty: filled <n> pages of <total>` | 6 on a mismatch; modes 0-1 run until stopped, mode 2 exits with 0 |
//! | `fpu` | `arg` = mode × 1000000 + seed. Fills XMM0-15 (mode 0 with XSAVE+AVX: enables AVX with XSETBV, then YMM0-15; mode 1: SSE only) with a pattern of its seed and keeps reading it back: `fpu: seed <s>, pattern in <xmm\|ymm>0-15 (<sse\|avx>)`, then `fpu: alive <k> checks <n> (<sse\|avx>)` every 131072 checks; a register that changed under it prints `fpu: MISMATCH <reg> lane <k>: expected <hex> got <hex>`. Give each VM its own seed | 7 on a mismatch (or XCR0 not as written); runs until stopped |
//! | `rogue` | arg 0: a refused WRMSR gets #GP, then a read outside RAM; 1: the WRMSR, then a triple fault; 2: a spin with interrupts off | 5 if it survives |
//!
//! Every line a guest prints is `<guest>: <text>\n` and its last line before
//! exiting is its verdict. This crate is not a guest OS: no allocator, no
//! paging of its own, one CPU, no devices beyond the ones below.
//!
//! On the host (`cargo build`/`cargo test --workspace`) the binaries only
//! print that they are guest programs, and the library is the pure helpers
//! below ([`hv`], [`timing`], [`memtest`], [`idt`]'s layouts), unit-tested
//! there. The runtime (`arch`, `console`, `idt`'s table, `pic`, `rt`, the
//! `say!` and `entry!` macros) exists only for `target_os = "none"`.
//!
//! # The guest environment (the contract with the hypervisor)
//!
//! **Image.** An ELF64 `ET_EXEC` for x86-64 whose `PT_LOAD` segments are
//! page aligned, share no page, lie at guest-physical = virtual addresses
//! from 0x100000 (1 MiB) up and inside guest RAM, with the entry point
//! `_start` in an executable segment and no relocations (`guest.ld`). The
//! hypervisor zeroes RAM, then copies each segment's file bytes; `_start`
//! clears BSS again anyway.
//!
//! **CPU state at `_start`.** 64-bit long mode at CPL 0; paging on, the
//! first 4 GiB of guest-physical memory identity-mapped (2 MiB pages) by
//! page tables the hypervisor built in guest RAM below 0x10000; CR0.WP and
//! EFER.NXE set; RFLAGS = 0x2 (interrupts off); CS = 0x08 (flat 64-bit code),
//! DS = ES = SS = FS = GS = 0x10 (flat data) from a GDT at guest-physical
//! 0x8000 that the guest may keep using; no IDT (base 0, limit 0); RSP =
//! 0x80000; RIP = the ELF entry; RDI = guest RAM size in bytes (a multiple
//! of 2 MiB); RSI = the VM's argument (`arg=<n>` of `vm create`, default 0).
//!
//! ```text
//!  guest-physical
//!  0x0000_0000 ┌──────────────────────────────┐
//!              │ page tables, GDT at 0x8000   │ the hypervisor's: do not touch
//!  0x0001_0000 ├──────────────────────────────┤
//!              │ stack (grows down from RSP)  │
//!  0x0008_0000 ├──────────────────────────────┤ RSP at entry
//!              │ unused                       │
//!  0x0010_0000 ├──────────────────────────────┤ image: text, rodata, data+bss
//!              │ ...                          │
//!  __image_end ├──────────────────────────────┤ free RAM (memtest's range)
//!              │ ...                          │
//!  RDI         └──────────────────────────────┘ end of RAM; beyond it any
//!                                               access stops the VM
//! ```
//!
//! **Devices (port I/O; `IN`/`OUT` only, string I/O is not emulated).**
//! - COM1 at 0x3F8: bytes written to 0x3F8 appear on the host console,
//!   line by line, as `[<vm>] <line>` (`\r` is dropped); the LSR (0x3FD)
//!   reads 0x60, transmitter empty. The same 16550 is also memory-mapped
//!   at guest-physical 0xFE00_0000 ([`hv::MMIO_UART`]), registers one byte
//!   apart, for plain `MOV` accesses (the hypervisor decodes them).
//! - Exit device at 0xF4: a 32-bit `out dx, eax` of the exit code stops the
//!   VM with that code (0 = success; see [`exit_code`]).
//! - A master 8259 PIC (0x20/0x21) and PIT channel 0 (0x40/0x43): ICW1 0x11,
//!   ICW2 = vector base, ICW3 0x04, ICW4 0x01, then OCW1 = the mask; PIT
//!   control 0x34 then the 16-bit divisor low byte, high byte, for
//!   1193182 / divisor Hz. IRQ0 arrives at base + 0 once interrupts are on;
//!   the handler sends a non-specific EOI (`out 0x20, 0x20`). See `pic`.
//!
//! **CPUID.** Leaf 0x4000_0000: EAX = 0x4000_0010 (the highest hypervisor
//! leaf), EBX:ECX:EDX = `"hvhypervisor"`; leaf 0x4000_0010: EAX = the TSC
//! frequency in kHz. CPUID.1:ECX bit 31 (hypervisor present) is set, bit 5
//! (VMX) clear. Every CPUID exits to the hypervisor. See [`hv`].
//!
//! **Time.** RDTSC runs without an exit and is monotonic, at the rate of
//! leaf 0x4000_0010. HLT sleeps until the next timer interrupt; HLT with
//! interrupts off and no timer programmed stops the VM.
//!
//! **Faults.** Any access to guest-physical memory outside RAM (below 4 GiB
//! it is mapped by the guest's tables, so the access reaches the
//! hypervisor) stops the VM, and the host reports the address. RDMSR/WRMSR
//! of an MSR outside the hypervisor's allow list gets #GP injected (error
//! code 0). A triple fault stops the VM as crashed. The hypervisor's
//! preemption timer takes the CPU back from a guest that never exits.
//!
//! **Vector registers.** CR0.EM is clear and CR0.MP set; a guest enables
//! SSE itself (CR4.OSFXSR, CR4.OSXMMEXCPT) and AVX with CR4.OSXSAVE and
//! XSETBV (XCR0 = x87|SSE|AVX), which exits to the hypervisor. Its x87,
//! XMM and YMM contents and its XCR0 are its own: no other guest sees or
//! changes them, and a migration carries them (what `fpu` checks). Until the
//! hypervisor switches that state, `fpu` fails on it: two SSE guests see
//! each other's values and XSETBV stops the VM as an unhandled exit.
//!
//! Reference for the x86 details: Intel SDM, revision 084.
#![cfg_attr(not(test), no_std)]

pub mod dirty;
pub mod fpu;
pub mod hv;
pub mod idt;
pub mod memtest;
pub mod timing;

#[cfg(target_os = "none")]
pub mod arch;
#[cfg(target_os = "none")]
pub mod console;
#[cfg(target_os = "none")]
pub mod pic;
#[cfg(target_os = "none")]
pub mod rt;

/// What a guest's `main` is given: the contents of RDI and RSI at entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Boot {
    /// Guest RAM in bytes (RDI).
    pub ram: u64,
    /// The VM's argument (RSI; `arg=<n>` of `vm create`, default 0).
    pub arg: u64,
}

/// Exit codes written to the exit device. Each guest has its own failure
/// code, so a code alone says which check failed.
pub mod exit_code {
    /// Every check passed.
    pub const OK: u32 = 0;
    /// The guest panicked (a bug in the guest, printed as `<guest>: panic ...`).
    pub const PANIC: u32 = 1;
    /// `hello`: CPUID did not show the hypervisor as specified.
    pub const HELLO_FAILED: u32 = 2;
    /// `ticks`: the timer rate was off, or no TSC frequency.
    pub const TICKS_FAILED: u32 = 3;
    /// `memtest`: a word read back differed, or there was no RAM to test.
    pub const MEMTEST_FAILED: u32 = 4;
    /// `rogue`: the guest survived something that should have stopped it.
    pub const ROGUE_FAILED: u32 = 5;
    /// `dirty`: its memory checksum did not match what it wrote.
    pub const DIRTY_FAILED: u32 = 6;
    /// `fpu`: a vector register did not hold what the guest put there, or
    /// XCR0 read back differently from what it wrote.
    pub const FPU_FAILED: u32 = 7;

    /// An unexpected exception or interrupt at `vector`: 0xE0 + vector
    /// (0xE0-0xFF for the exceptions, 0x100-0x10F for the PIC vectors).
    pub const fn exception(vector: u8) -> u32 {
        0xe0 + vector as u32
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn exception_codes_are_distinct_from_the_verdicts() {
            assert_eq!(super::exception(13), 0xed);
            assert_eq!(super::exception(0x20), 0x100);
            assert!(super::exception(0) > super::ROGUE_FAILED);
        }
    }
}
