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
