//! Start-up and panics; the `_start` that calls [`start`] comes from
//! [`entry!`](crate::entry) in each guest binary.

use core::panic::PanicInfo;

use crate::{Boot, console, exit_code, idt, say};

unsafe extern "C" {
    /// First byte after the image, page aligned (`guest.ld`).
    static __image_end: u8;
}

/// Guest-physical address of the first byte after the loaded image
/// (code, data and BSS): RAM from here to [`Boot::ram`] is free.
pub fn image_end() -> u64 {
    // Only the address is taken; the byte itself is never read.
    (&raw const __image_end) as u64
}

// The PVH entry: lets QEMU boot a guest image directly
// (`qemu-system-x86_64 -kernel <guest> -append <arg>`; QEMU 7.2 honours
// the `XEN_ELFNOTE_PHYS32_ENTRY` note of an ELF kernel, and its `pvh.bin`
// option ROM enters `pvh_start32` in 32-bit protected mode, paging off,
// EBX = the physical address of a `struct hvm_start_info`). It builds what
// the hypervisor builds (see the crate docs) and jumps to `_start`:
//
// - RSI = the command line read as a decimal number (leading spaces
//   skipped, stops at the first non-digit; 32 bits; 0 if there is none);
// - RDI = the end of the e820 RAM entry (type 1) that contains 1 MiB,
//   clamped to 4 GiB and rounded down to 2 MiB, so whatever the firmware
//   reserved at the top of RAM (SeaBIOS' tables, ACPI) stays outside it;
// - page tables at 0x1000-0x6FFF (4 GiB identity-mapped, 2 MiB pages), the
//   GDT at 0x8000 (0x08 64-bit code, 0x10 data), CR4 = PAE, EFER = LME |
//   NXE, CR0 = PG | WP | NE | ET | MP | PE, RSP = 0x80000, interrupts off.
//
// Both values are read before anything is written, since the boot info may
// lie anywhere below 1 MiB. If there is no memory map, or no RAM entry
// holds 1 MiB, it halts. `guest.ld` keeps the note (in its own PT_NOTE) and
// pulls this code in (`EXTERN(pvh_start32)`); the hypervisor ignores both,
// it loads the PT_LOAD segments and starts at `_start`.
//
// Layouts: hvm_start_info has version at +4, cmdline_paddr at +24,
// memmap_paddr at +40 and memmap_entries at +48 (from version 1); a memmap
// entry is {addr u64, size u64, type u32, reserved u32}, 24 bytes (Xen's
// public/arch-x86/hvm/start_info.h).
core::arch::global_asm!(
    r#"
    .pushsection .note.Xen, "a", @note
    .balign 4
    .long 4, 8, 18          /* namesz, descsz, XEN_ELFNOTE_PHYS32_ENTRY */
    .asciz "Xen"
    .balign 4
    .quad pvh_start32
    .popsection

    .pushsection .rodata.pvh_gdtr, "a", @progbits
    .balign 8
pvh_gdtr:
    .word 23
    .long 0x8000
    .popsection

    .pushsection .text.pvh_start32, "ax", @progbits
    .code32
    .global pvh_start32
pvh_start32:
    cli
    cld
    /* The argument: decimal digits of the command line, into ESI. */
    xorl %esi, %esi
    movl 24(%ebx), %edx
    testl %edx, %edx
    jz 3f
1:  cmpb $0x20, (%edx)
    jne 2f
    incl %edx
    jmp 1b
2:  movzbl (%edx), %eax
    subl $0x30, %eax
    cmpl $9, %eax
    ja 3f
    imull $10, %esi, %esi
    addl %eax, %esi
    incl %edx
    jmp 2b
    /* RAM: the end of the type-1 memmap entry holding 1 MiB, into EBP. */
3:  cmpl $1, 4(%ebx)
    jb 9f
    movl 48(%ebx), %ecx
    movl 40(%ebx), %edx
4:  testl %ecx, %ecx
    jz 9f
    cmpl $1, 16(%edx)
    jne 5f
    cmpl $0, 4(%edx)
    jne 5f
    cmpl $0x100000, (%edx)
    ja 5f
    movl (%edx), %eax
    movl 12(%edx), %ebp
    addl 8(%edx), %eax
    adcl $0, %ebp
    jnz 6f
    cmpl $0x100000, %eax
    ja 7f
5:  addl $24, %edx
    decl %ecx
    jmp 4b
6:  movl $0xffe00000, %eax       /* reaches 4 GiB or beyond: clamp */
7:  andl $0xffe00000, %eax
    jz 9f
    movl %eax, %ebp

    /* Page tables: PML4 0x1000, PDPT 0x2000, four PDs 0x3000-0x6FFF. */
    movl $0x1000, %edi
    movl $(0x6000 / 4), %ecx
    xorl %eax, %eax
    rep stosl
    movl $0x2003, 0x1000
    movl $0x3003, 0x2000
    movl $0x4003, 0x2008
    movl $0x5003, 0x2010
    movl $0x6003, 0x2018
    movl $0x3000, %edi
    movl $0x83, %eax
    movl $2048, %ecx
8:  movl %eax, (%edi)
    addl $0x200000, %eax
    addl $8, %edi
    decl %ecx
    jnz 8b
    /* GDT: null, 64-bit code (0x08), data (0x10). */
    movl $0, 0x8000
    movl $0, 0x8004
    movl $0x0000ffff, 0x8008
    movl $0x00af9b00, 0x800c
    movl $0x0000ffff, 0x8010
    movl $0x00cf9300, 0x8014
    lgdt pvh_gdtr
    movl $0x10, %eax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movw %ax, %fs
    movw %ax, %gs
    movl $0x80000, %esp
    movl $0x20, %eax
    movl %eax, %cr4
    movl $0x1000, %eax
    movl %eax, %cr3
    movl $0xc0000080, %ecx
    rdmsr
    orl $0x900, %eax
    wrmsr
    movl $0x80010033, %eax
    movl %eax, %cr0
    ljmp $0x08, $10f
9:  hlt
    jmp 9b

    .code64
10: movl %ebp, %edi
    movl %esi, %esi
    jmp _start
    .popsection
"#,
    options(att_syntax)
);

/// The Rust side of `_start`: names the console lines, installs the IDT,
/// runs `main`. BSS is already zero (`_start` clears it).
pub fn start(name: &str, ram: u64, arg: u64, main: fn(Boot) -> !) -> ! {
    console::set_name(name);
    idt::install();
    main(Boot { ram, arg })
}

/// The guest's panic handler: one line, then exit code
/// [`exit_code::PANIC`].
pub fn panic(info: &PanicInfo<'_>) -> ! {
    match info.location() {
        Some(l) => say!("panic at {}:{}: {}", l.file(), l.line(), info.message()),
        None => say!("panic: {}", info.message()),
    }
    console::exit(exit_code::PANIC)
}

/// Defines a guest binary's ELF entry point `_start` and its panic handler.
///
/// `guests::entry!("hello", main);` where `main` is a `fn(Boot) -> !`.
/// `_start` keeps RDI (RAM size) and RSI (the VM's argument), clears BSS,
/// aligns the stack for the System V ABI and calls
/// [`rt::start`](crate::rt::start), which never returns.
#[macro_export]
macro_rules! entry {
    ($name:literal, $main:path) => {
        /// The ELF entry point (see the `guests` crate docs for the state
        /// the hypervisor starts it in).
        #[unsafe(no_mangle)]
        #[unsafe(naked)]
        pub extern "sysv64" fn _start() -> ! {
            core::arch::naked_asm!(
                "cld",
                "mov r12, rdi",
                "mov r13, rsi",
                "lea rdi, [rip + __bss_start]",
                "lea rcx, [rip + __bss_end]",
                "sub rcx, rdi",
                "xor eax, eax",
                "rep stosb",
                "mov rdi, r12",
                "mov rsi, r13",
                "and rsp, -16",
                "xor ebp, ebp",
                "call {start}",
                "ud2",
                start = sym __guest_start,
            )
        }

        extern "sysv64" fn __guest_start(ram: u64, arg: u64) -> ! {
            $crate::rt::start($name, ram, arg, $main)
        }

        #[panic_handler]
        fn __guest_panic(info: &core::panic::PanicInfo<'_>) -> ! {
            $crate::rt::panic(info)
        }
    };
}
