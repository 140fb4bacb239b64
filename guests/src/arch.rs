//! The guest's privileged instructions, each wrapped once.
//!
//! As in the kernel's `arch`: instructions that can break memory safety or
//! the machine's state (port writes, WRMSR, LIDT, STI, loads from arbitrary
//! addresses) are `unsafe fn` with their preconditions under `# Safety`;
//! CPUID, RDTSC, CLI and HLT are safe. Reference: Intel SDM Vol. 2
//! (instruction set), revision 084.

use core::arch::asm;

/// CPUID with a leaf and sub-leaf; returns (eax, ebx, ecx, edx).
pub fn cpuid(leaf: u32, subleaf: u32) -> (u32, u32, u32, u32) {
    let r = core::arch::x86_64::__cpuid_count(leaf, subleaf);
    (r.eax, r.ebx, r.ecx, r.edx)
}

/// The time-stamp counter (no VM exit under the hypervisor).
pub fn rdtsc() -> u64 {
    // SAFETY: RDTSC reads a counter and has no memory effects.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Writes a byte to an I/O port.
///
/// # Safety
/// `port` must be a device this guest drives (COM1, the PIC, the PIT), and
/// the write must be one that device expects in its current state.
pub unsafe fn outb(port: u16, value: u8) {
    // SAFETY: the caller guarantees the port and value; OUT touches no memory.
    unsafe {
        asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags))
    };
}

/// Writes a doubleword to an I/O port.
///
/// # Safety
/// As [`outb`]; on the exit port (0xF4) the write ends the VM.
pub unsafe fn outl(port: u16, value: u32) {
    // SAFETY: as outb.
    unsafe {
        asm!("out dx, eax", in("dx") port, in("eax") value, options(nomem, nostack, preserves_flags))
    };
}

/// Reads a byte from an I/O port.
///
/// # Safety
/// `port` must be a device this guest drives and whose registers have no
/// read side effects it does not expect.
pub unsafe fn inb(port: u16) -> u8 {
    let value: u8;
    // SAFETY: the caller guarantees the port; IN touches no memory.
    unsafe {
        asm!("in al, dx", in("dx") port, out("al") value, options(nomem, nostack, preserves_flags))
    };
    value
}

/// Writes a model-specific register.
///
/// # Safety
/// The write must not break the guest's own state (EFER, the GS base...);
/// an MSR outside the hypervisor's allow list raises #GP, so an IDT with a
/// #GP handler that resumes the guest must be loaded.
pub unsafe fn wrmsr(msr: u32, value: u64) {
    let (lo, hi) = (value as u32, (value >> 32) as u32);
    // SAFETY: the caller guarantees the MSR write is harmless or handled.
    unsafe {
        asm!("wrmsr", in("ecx") msr, in("eax") lo, in("edx") hi, options(nostack, preserves_flags))
    };
}

/// Loads the IDT register.
///
/// # Safety
/// `base..=base + limit` must hold valid gate descriptors for as long as an
/// interrupt or exception can occur (an empty table, limit 0, is allowed: the
/// next exception then ends in a triple fault).
pub unsafe fn lidt(base: u64, limit: u16) {
    #[repr(C, packed)]
    struct Pointer {
        limit: u16,
        base: u64,
    }
    let p = Pointer { limit, base };
    // SAFETY: the caller guarantees the table; LIDT only reads the 10-byte
    // pointer, which lives on this stack frame.
    unsafe { asm!("lidt [{}]", in(reg) &raw const p, options(readonly, nostack, preserves_flags)) };
}

/// Enables interrupts (STI).
///
/// # Safety
/// An IDT whose entries cover every vector that can now arrive must be
/// loaded (see `idt::install`).
pub unsafe fn sti() {
    // SAFETY: the caller guarantees the IDT; STI changes only RFLAGS.IF.
    // Not `nomem`: interrupt handlers may change memory from here on, so
    // this is a compiler barrier.
    unsafe { asm!("sti", options(nostack)) };
}

/// Disables interrupts (CLI).
pub fn cli() {
    // SAFETY: CLI only clears RFLAGS.IF; code never relies on interrupts
    // arriving for memory safety. Not `nomem`, so that memory accesses do
    // not move across it.
    unsafe { asm!("cli", options(nostack)) };
}

/// HLT: sleeps until the next interrupt (under the hypervisor: until the
/// next timer interrupt; with interrupts off and no timer the hypervisor
/// stops the VM).
pub fn hlt() {
    // SAFETY: HLT waits; it touches no memory itself. Not `nomem`: the
    // interrupt that ends it runs a handler that may (the tick count), so
    // loads after it must not be moved before it.
    unsafe { asm!("hlt", options(nostack, preserves_flags)) };
}

/// Reloads CR3 with its own value: drops every cached (non-global)
/// translation. The `dirty` guest does it under QEMU's TCG, whose
/// migration dirty tracking otherwise misses writes (see `dirty`).
pub fn flush_tlb() {
    // SAFETY: CR3 gets the value it already holds, so the mappings stay the
    // same; only the TLB is emptied. Not `nomem`: a barrier for the
    // compiler, so the writes around it stay on their side.
    unsafe {
        asm!(
            "mov {t}, cr3",
            "mov cr3, {t}",
            t = out(reg) _,
            options(nostack, preserves_flags)
        )
    };
}

/// CR2: the linear address of the last page fault.
pub fn cr2() -> u64 {
    let v: u64;
    // SAFETY: reading CR2 at CPL 0 has no side effects.
    unsafe { asm!("mov {}, cr2", out(reg) v, options(nomem, nostack, preserves_flags)) };
    v
}

/// The stack pointer (where the caller's frame is, give or take).
pub fn rsp() -> u64 {
    let v: u64;
    // SAFETY: reading RSP into a register has no side effects.
    unsafe { asm!("mov {}, rsp", out(reg) v, options(nomem, nostack, preserves_flags)) };
    v
}

/// Loads 8 bytes from `addr` with one MOV, whatever lies there; for the
/// rogue guest, which reads outside its RAM on purpose.
///
/// # Safety
/// `addr` must be mapped by the guest page tables (the first 4 GiB are);
/// outside guest RAM the hypervisor stops the VM instead of completing it.
pub unsafe fn load_u64(addr: u64) -> u64 {
    let v: u64;
    // SAFETY: the caller guarantees the address is mapped; the load changes
    // no memory.
    unsafe {
        asm!("mov {}, qword ptr [{}]", out(reg) v, in(reg) addr, options(readonly, nostack, preserves_flags))
    };
    v
}

/// INT3 (a breakpoint exception).
///
/// # Safety
/// With no usable IDT this triple-faults (what the rogue guest wants);
/// otherwise the #BP handler runs.
pub unsafe fn int3() {
    // SAFETY: the caller accepts whatever the #BP delivery does.
    unsafe { asm!("int3", options(nomem, nostack)) };
}

/// Spins forever without an instruction that could cause a VM exit (not
/// even PAUSE, which can exit under PAUSE-loop exiting).
pub fn spin_forever() -> ! {
    // SAFETY: a jump to itself; no memory, no stack.
    unsafe { asm!("2:", "jmp 2b", options(noreturn, nomem, nostack)) }
}

/// CR4.OSFXSR (bit 9): FXSAVE/FXRSTOR and the SSE instructions are enabled.
pub const CR4_OSFXSR: u64 = 1 << 9;
/// CR4.OSXMMEXCPT (bit 10): unmasked SIMD floating-point exceptions raise #XM.
pub const CR4_OSXMMEXCPT: u64 = 1 << 10;
/// CR4.OSXSAVE (bit 18): XSAVE, XGETBV/XSETBV and the VEX (AVX) encodings.
pub const CR4_OSXSAVE: u64 = 1 << 18;

/// CR4 as the guest sees it (the hypervisor's read shadow for the bits it owns).
pub fn read_cr4() -> u64 {
    let v: u64;
    // SAFETY: reading CR4 at CPL 0 has no side effects.
    unsafe { asm!("mov {}, cr4", out(reg) v, options(nomem, nostack, preserves_flags)) };
    v
}

/// Writes CR4.
///
/// # Safety
/// `value` must keep paging as it is (PAE) and set only bits this CPU
/// supports (else #GP, and this guest has no handler that resumes).
pub unsafe fn write_cr4(value: u64) {
    // SAFETY: the caller guarantees the value. Not `nomem`: enabling SSE or
    // AVX changes what later instructions do, so nothing moves across it.
    unsafe { asm!("mov cr4, {}", in(reg) value, options(nostack, preserves_flags)) };
}

/// XSETBV: writes extended control register `xcr` (0 is XCR0, the state
/// components XSAVE manages and AVX needs enabled). Under VMX it always
/// exits to the hypervisor.
///
/// # Safety
/// CR4.OSXSAVE must be set and `value` a valid XCR0 (x87 set, AVX only with
/// SSE, only components CPUID.(EAX=0xD,ECX=0) offers), else #UD or #GP.
pub unsafe fn xsetbv(xcr: u32, value: u64) {
    let (lo, hi) = (value as u32, (value >> 32) as u32);
    // SAFETY: the caller guarantees the preconditions; XSETBV touches no memory.
    unsafe {
        asm!("xsetbv", in("ecx") xcr, in("eax") lo, in("edx") hi, options(nomem, nostack, preserves_flags))
    };
}

/// XGETBV: reads extended control register `xcr`.
///
/// # Safety
/// CR4.OSXSAVE must be set, else #UD.
pub unsafe fn xgetbv(xcr: u32) -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: the caller guarantees CR4.OSXSAVE; XGETBV touches no memory.
    unsafe {
        asm!("xgetbv", in("ecx") xcr, out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags))
    };
    u64::from(hi) << 32 | u64::from(lo)
}

// The vector registers. The guests are built soft-float: the compiler
// never allocates XMM or YMM registers, so only these four functions touch
// them, and what they load stays there until one of them runs again (or
// the hypervisor changes it: what the `fpu` guest looks for). That is also
// why they declare no clobbers (the target has no vector register class).

/// Loads XMM0-15 from lanes 0-1 of each register of `regs` (MOVDQU, SSE).
///
/// # Safety
/// CR4.OSFXSR must be set (else #UD).
pub unsafe fn load_xmm(regs: &crate::fpu::VectorRegs) {
    // SAFETY: the caller guarantees SSE is on; the loads read only `regs`
    // (16 × 16 bytes at a 32-byte stride inside its 512 bytes).
    unsafe {
        asm!(
            ".irp r,0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15",
            "movdqu xmm\\r, xmmword ptr [{p} + 32*\\r]",
            ".endr",
            p = in(reg) regs,
            options(readonly, nostack, preserves_flags)
        )
    };
}

/// Stores XMM0-15 into lanes 0-1 of each register of `regs` (MOVDQU, SSE);
/// lanes 2-3 are left as they are.
///
/// # Safety
/// CR4.OSFXSR must be set (else #UD).
pub unsafe fn store_xmm(regs: &mut crate::fpu::VectorRegs) {
    // SAFETY: the caller guarantees SSE is on; the stores write only inside
    // `regs`, which is borrowed mutably.
    unsafe {
        asm!(
            ".irp r,0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15",
            "movdqu xmmword ptr [{p} + 32*\\r], xmm\\r",
            ".endr",
            p = in(reg) regs,
            options(nostack, preserves_flags)
        )
    };
}

/// Loads YMM0-15, all four lanes (VMOVDQU, AVX).
///
/// # Safety
/// CR4.OSXSAVE must be set and XCR0 must enable SSE and AVX state (else #UD).
pub unsafe fn load_ymm(regs: &crate::fpu::VectorRegs) {
    // SAFETY: the caller guarantees AVX is on; the loads read only `regs`.
    unsafe {
        asm!(
            ".irp r,0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15",
            "vmovdqu ymm\\r, ymmword ptr [{p} + 32*\\r]",
            ".endr",
            p = in(reg) regs,
            options(readonly, nostack, preserves_flags)
        )
    };
}

/// Stores YMM0-15, all four lanes (VMOVDQU, AVX).
///
/// # Safety
/// As [`load_ymm`].
pub unsafe fn store_ymm(regs: &mut crate::fpu::VectorRegs) {
    // SAFETY: the caller guarantees AVX is on; the stores write only inside
    // `regs`, which is borrowed mutably.
    unsafe {
        asm!(
            ".irp r,0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15",
            "vmovdqu ymmword ptr [{p} + 32*\\r], ymm\\r",
            ".endr",
            p = in(reg) regs,
            options(nostack, preserves_flags)
        )
    };
}
