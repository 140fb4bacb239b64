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
