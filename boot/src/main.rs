//! `BOOTX64.EFI`: the UEFI loader of the hypervisor.
//!
//! It reads the kernel ELF, the config text and the guest modules from the
//! ESP, finds the ACPI RSDP, builds page tables (all physical memory
//! identity-mapped, the kernel at its linked higher-half address), exits boot
//! services and jumps to the kernel with a [`boot::BootInfo`].
//!
//! Every message goes to COM1 (the operator's console) and, while boot
//! services are up, to the firmware's text console too. Any failure before
//! `ExitBootServices` prints `boot: error: ...` and returns to the firmware;
//! nothing here hangs.
#![cfg_attr(target_os = "uefi", no_std, no_main)]

#[cfg(target_os = "uefi")]
mod loader;

#[cfg(not(target_os = "uefi"))]
fn main() {
    eprintln!("bootx64 is a UEFI application: build it with `cargo xtask build`");
    std::process::exit(2);
}
