//! Kernel entry point: a small stack switch, then [`kernel::kmain`].
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
mod entry {
    use core::fmt::Write as _;

    const STACK_SIZE: usize = 256 * 1024;

    #[repr(C, align(16))]
    struct Stack([u8; STACK_SIZE]);

    static mut STACK: Stack = Stack([0; STACK_SIZE]);

    /// The loader jumps here with the boot info address in `rdi` (System V),
    /// on its own stack in boot-services memory, which the kernel is about
    /// to reuse: move to the kernel's stack in .bss before anything else.
    #[unsafe(no_mangle)]
    #[unsafe(naked)]
    #[unsafe(link_section = ".text.start")]
    extern "sysv64" fn _start() -> ! {
        core::arch::naked_asm!(
            "lea rsp, [rip + {stack} + {size}]",
            "xor ebp, ebp",
            "call {main}",
            "ud2",
            stack = sym STACK,
            size = const STACK_SIZE,
            main = sym start_rust,
        );
    }

    extern "sysv64" fn start_rust(boot_info: u64) -> ! {
        kernel::kmain(boot_info)
    }

    #[panic_handler]
    fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
        let _ = writeln!(
            kernel::drivers::serial::emergency(),
            "\n!!! kernel panic: {info}"
        );
        kernel::arch::halt_forever()
    }
}

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!("the kernel runs on bare metal: build the boot image with `cargo xtask image`");
    std::process::exit(2);
}
