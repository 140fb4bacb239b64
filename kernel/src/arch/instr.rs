//! Privileged x86-64 instructions, each wrapped once.
//!
//! Everything here is `unsafe fn` where the instruction can break memory
//! safety or the machine's state (port writes, MSR writes, CR3 loads), with the
//! preconditions in a `# Safety` section. Reads that cannot, CPUID and RDTSC,
//! are safe. Reference: Intel SDM Vol. 2 (instruction set), revision 084.

use core::arch::asm;

/// CPUID with a leaf and sub-leaf; returns (eax, ebx, ecx, edx).
pub fn cpuid(leaf: u32, subleaf: u32) -> (u32, u32, u32, u32) {
    let r = core::arch::x86_64::__cpuid_count(leaf, subleaf);
    (r.eax, r.ebx, r.ecx, r.edx)
}

/// The time-stamp counter.
pub fn rdtsc() -> u64 {
    // SAFETY: RDTSC reads a counter and has no memory effects.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Reads a model-specific register.
///
/// # Safety
/// The MSR must exist on this CPU (RDMSR of an unimplemented MSR raises #GP),
/// which the caller checks through CPUID first.
pub unsafe fn rdmsr(msr: u32) -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: the caller guarantees the MSR exists; RDMSR touches no memory.
    unsafe {
        asm!("rdmsr", in("ecx") msr, out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags))
    };
    (u64::from(hi) << 32) | u64::from(lo)
}

/// Writes a model-specific register.
///
/// # Safety
/// The MSR must exist and the value must be valid for it; many MSRs change
/// how the CPU behaves (the caller owns that change).
pub unsafe fn wrmsr(msr: u32, v: u64) {
    // SAFETY: the caller guarantees the MSR exists and the value is valid.
    unsafe {
        asm!("wrmsr", in("ecx") msr, in("eax") v as u32, in("edx") (v >> 32) as u32, options(nostack, preserves_flags))
    };
}

/// Reads CR0.
pub fn cr0() -> u64 {
    let v: u64;
    // SAFETY: reading CR0 has no side effects.
    unsafe { asm!("mov {}, cr0", out(reg) v, options(nomem, nostack, preserves_flags)) };
    v
}

/// Writes CR0.
///
/// # Safety
/// The new value must keep paging, protection and write-protect as the
/// kernel relies on them (PG, PE, WP set).
pub unsafe fn write_cr0(v: u64) {
    // SAFETY: the caller keeps the kernel's invariants.
    unsafe { asm!("mov cr0, {}", in(reg) v, options(nostack, preserves_flags)) };
}

/// Reads CR4.
pub fn cr4() -> u64 {
    let v: u64;
    // SAFETY: reading CR4 has no side effects.
    unsafe { asm!("mov {}, cr4", out(reg) v, options(nomem, nostack, preserves_flags)) };
    v
}

/// Writes CR4.
///
/// # Safety
/// The new value must keep PAE (long mode) and everything the kernel uses.
pub unsafe fn write_cr4(v: u64) {
    // SAFETY: the caller keeps the kernel's invariants.
    unsafe { asm!("mov cr4, {}", in(reg) v, options(nostack, preserves_flags)) };
}

/// Reads an I/O port byte.
///
/// # Safety
/// Reading some ports has side effects on devices (it acknowledges, pops a
/// FIFO...): the caller owns the device behind `port`.
pub unsafe fn inb(port: u16) -> u8 {
    let v: u8;
    // SAFETY: the caller owns the device; IN touches no memory.
    unsafe {
        asm!("in al, dx", in("dx") port, out("al") v, options(nomem, nostack, preserves_flags))
    };
    v
}

/// Writes an I/O port byte.
///
/// # Safety
/// The caller owns the device behind `port` and the write is valid for it.
pub unsafe fn outb(port: u16, v: u8) {
    // SAFETY: the caller owns the device; OUT touches no memory.
    unsafe {
        asm!("out dx, al", in("dx") port, in("al") v, options(nomem, nostack, preserves_flags))
    };
}

/// Reads an I/O port dword.
///
/// # Safety
/// As [`inb`].
pub unsafe fn inl(port: u16) -> u32 {
    let v: u32;
    // SAFETY: as inb.
    unsafe {
        asm!("in eax, dx", in("dx") port, out("eax") v, options(nomem, nostack, preserves_flags))
    };
    v
}

/// Writes an I/O port dword.
///
/// # Safety
/// As [`outb`].
pub unsafe fn outl(port: u16, v: u32) {
    // SAFETY: as outb.
    unsafe {
        asm!("out dx, eax", in("dx") port, in("eax") v, options(nomem, nostack, preserves_flags))
    };
}

/// Reads CR2 (the faulting address of the last page fault).
pub fn cr2() -> u64 {
    let v: u64;
    // SAFETY: reading CR2 has no side effects.
    unsafe { asm!("mov {}, cr2", out(reg) v, options(nomem, nostack, preserves_flags)) };
    v
}

/// Reads CR3.
pub fn cr3() -> u64 {
    let v: u64;
    // SAFETY: reading CR3 has no side effects.
    unsafe { asm!("mov {}, cr3", out(reg) v, options(nomem, nostack, preserves_flags)) };
    v
}

/// Loads CR3 (switches address space, flushes non-global TLB entries).
///
/// # Safety
/// `pml4` is the physical address of a valid PML4 that maps the currently
/// executing code, its stack and every object still in use at the same
/// virtual addresses.
pub unsafe fn write_cr3(pml4: u64) {
    // SAFETY: the caller guarantees the new tables keep everything in use mapped.
    unsafe { asm!("mov cr3, {}", in(reg) pml4, options(nostack, preserves_flags)) };
}

/// Disables interrupts.
pub fn cli() {
    // SAFETY: masking interrupts cannot break memory safety.
    unsafe { asm!("cli", options(nomem, nostack)) };
}

/// Atomically enables interrupts and halts until the next one.
pub fn sti_hlt() {
    // SAFETY: the IDT is loaded before interrupts are ever enabled (see
    // kmain); `sti; hlt` has no window in which a wake-up is lost.
    unsafe { asm!("sti", "hlt", options(nomem, nostack)) };
}

/// Opens a window for pending interrupts, with interrupts disabled on
/// entry and on return. The NOP matters: STI only takes effect after the
/// next instruction (SDM Vol. 2B, STI), so `sti; cli` would deliver nothing.
pub fn interrupt_window() {
    // SAFETY: the IDT is in place (kmain) before any caller exists.
    unsafe { asm!("sti", "nop", "cli", options(nomem, nostack)) };
}

/// Enables interrupts.
pub fn sti() {
    // SAFETY: as sti_hlt: the IDT is in place first.
    unsafe { asm!("sti", options(nomem, nostack)) };
}

/// Stops this CPU for good.
pub fn halt_forever() -> ! {
    loop {
        cli();
        // SAFETY: HLT with interrupts off waits for NMI/SMI only.
        unsafe { asm!("hlt", options(nomem, nostack)) };
    }
}

/// Spin-loop hint.
pub fn pause() {
    core::hint::spin_loop();
}

/// Raises a CPU exception on purpose (the `crash` console command), to show
/// that the exception handlers report it. Never returns: the handlers halt.
pub fn raise(fault: super::Fault) -> ! {
    use super::Fault;
    // SAFETY: each instruction faults before it has any effect; the
    // exception handler reports and halts, so control never comes back.
    unsafe {
        match fault {
            Fault::PageFault => asm!("mov rax, [0]", out("rax") _, options(nostack)),
            Fault::GeneralProtection => {
                asm!("mov rax, [{}]", in(reg) 0x8000_0000_0000_0000u64, lateout("rax") _, options(nostack))
            }
            Fault::InvalidOpcode => asm!("ud2", options(nostack)),
            Fault::DivideError => asm!("xor edx, edx", "xor eax, eax", "xor ecx, ecx", "div ecx",
                out("eax") _, out("ecx") _, out("edx") _, options(nostack)),
        }
    }
    halt_forever()
}

/// A seed from the CPU's entropy source (RDSEED), if the CPU has the
/// instruction and it delivers within a few tries.
pub fn rdseed() -> Option<u64> {
    if cpuid(0, 0).0 < 7 || cpuid(7, 0).1 & (1 << 18) == 0 {
        return None;
    }
    for _ in 0..10 {
        let (v, ok): (u64, u8);
        // SAFETY: CPUID.(EAX=7,ECX=0):EBX.RDSEED says the instruction
        // exists; it only writes the output register and CF.
        unsafe {
            asm!("rdseed {v}", "setc {ok}", v = out(reg) v, ok = out(reg_byte) ok, options(nomem, nostack))
        };
        if ok == 1 {
            return Some(v);
        }
    }
    None
}

/// A hardware random number (RDRAND), if the CPU has the instruction and
/// it delivers within a few tries.
pub fn rdrand() -> Option<u64> {
    if cpuid(1, 0).2 & (1 << 30) == 0 {
        return None;
    }
    for _ in 0..10 {
        let (v, ok): (u64, u8);
        // SAFETY: CPUID.1:ECX.RDRAND says the instruction exists; it only
        // writes the output register and CF.
        unsafe {
            asm!("rdrand {v}", "setc {ok}", v = out(reg) v, ok = out(reg_byte) ok, options(nomem, nostack))
        };
        if ok == 1 {
            return Some(v);
        }
    }
    None
}

/// Extended-state (x87/SSE/AVX) save and restore, for guest contexts. The
/// kernel itself never touches those registers (soft-float target); these
/// are the only instructions in it that do.
pub mod xstate {
    use core::arch::asm;

    /// CR4.OSFXSR: FXSAVE/FXRSTOR and SSE enabled.
    pub const CR4_OSFXSR: u64 = 1 << 9;
    /// CR4.OSXMMEXCPT: unmasked SSE exceptions raise #XM.
    pub const CR4_OSXMMEXCPT: u64 = 1 << 10;
    /// CR4.OSXSAVE: XSAVE/XRSTOR/XSETBV enabled.
    pub const CR4_OSXSAVE: u64 = 1 << 18;

    /// Writes XCR0.
    ///
    /// # Safety
    /// CR4.OSXSAVE is set and `v` is a valid XCR0 for this CPU (bit 0 set,
    /// only supported components, dependent components together).
    pub unsafe fn xsetbv(v: u64) {
        // SAFETY: the caller guarantees OSXSAVE and a valid value.
        unsafe {
            asm!("xsetbv", in("ecx") 0u32, in("eax") v as u32, in("edx") (v >> 32) as u32,
                options(nomem, nostack, preserves_flags))
        };
    }

    /// Reads XCR0.
    ///
    /// # Safety
    /// CR4.OSXSAVE is set.
    pub unsafe fn xgetbv() -> u64 {
        let (lo, hi): (u32, u32);
        // SAFETY: the caller guarantees OSXSAVE; XGETBV only reads.
        unsafe {
            asm!("xgetbv", in("ecx") 0u32, out("eax") lo, out("edx") hi,
                options(nomem, nostack, preserves_flags))
        };
        (u64::from(hi) << 32) | u64::from(lo)
    }

    /// XSAVE (standard format, 64-bit) of every component enabled in XCR0.
    ///
    /// # Safety
    /// CR4.OSXSAVE is set; `area` is 64-byte aligned and at least as large
    /// as CPUID.(EAX=0DH,ECX=0):EBX for the current XCR0.
    pub unsafe fn xsave(area: *mut u8) {
        // SAFETY: the caller guarantees alignment, size and OSXSAVE.
        unsafe {
            asm!("xsave64 [{}]", in(reg) area, in("eax") u32::MAX, in("edx") u32::MAX,
                options(nostack, preserves_flags))
        };
    }

    /// XRSTOR (standard format, 64-bit) of every component enabled in XCR0:
    /// components whose XSTATE_BV bit is clear are put in their initial
    /// state.
    ///
    /// # Safety
    /// As [`xsave`], and the area holds a valid XSAVE image (reserved header
    /// bytes zero, XSTATE_BV within XCR0, a valid MXCSR), else #GP.
    pub unsafe fn xrstor(area: *const u8) {
        // SAFETY: the caller guarantees a valid, aligned image and OSXSAVE.
        unsafe {
            asm!("xrstor64 [{}]", in(reg) area, in("eax") u32::MAX, in("edx") u32::MAX,
                options(nostack, preserves_flags))
        };
    }

    /// FXSAVE (64-bit) of the x87 and SSE state, for CPUs without XSAVE.
    ///
    /// # Safety
    /// CR4.OSFXSR is set; `area` is 16-byte aligned and 512 bytes.
    pub unsafe fn fxsave(area: *mut u8) {
        // SAFETY: the caller guarantees alignment and size.
        unsafe { asm!("fxsave64 [{}]", in(reg) area, options(nostack, preserves_flags)) };
    }

    /// FXRSTOR (64-bit).
    ///
    /// # Safety
    /// As [`fxsave`], and the image's MXCSR is valid for this CPU.
    pub unsafe fn fxrstor(area: *const u8) {
        // SAFETY: the caller guarantees a valid, aligned image.
        unsafe { asm!("fxrstor64 [{}]", in(reg) area, options(nostack, preserves_flags)) };
    }

    /// Reads DR0-DR3 and DR6.
    pub fn debug_regs() -> ([u64; 4], u64) {
        let (d0, d1, d2, d3, d6): (u64, u64, u64, u64, u64);
        // SAFETY: reading debug registers at CPL 0 has no side effects
        // (DR7.GD is never set by this kernel).
        unsafe {
            asm!("mov {}, dr0", "mov {}, dr1", "mov {}, dr2", "mov {}, dr3", "mov {}, dr6",
                out(reg) d0, out(reg) d1, out(reg) d2, out(reg) d3, out(reg) d6,
                options(nomem, nostack, preserves_flags))
        };
        ([d0, d1, d2, d3], d6)
    }

    /// Loads DR0-DR3 and DR6.
    ///
    /// # Safety
    /// DR7 disables every breakpoint while the host runs (a VM exit sets it
    /// to 0x400), so the addresses cannot trap host code; DR6 bits 63:32
    /// must be zero.
    pub unsafe fn set_debug_regs(dr: &[u64; 4], dr6: u64) {
        // SAFETY: the caller guarantees the breakpoints are disabled.
        unsafe {
            asm!("mov dr0, {}", "mov dr1, {}", "mov dr2, {}", "mov dr3, {}", "mov dr6, {}",
                in(reg) dr[0], in(reg) dr[1], in(reg) dr[2], in(reg) dr[3], in(reg) dr6 & 0xffff_ffff,
                options(nomem, nostack, preserves_flags))
        };
    }
}
