//! `rogue`: does what a guest may not, to show that the hypervisor contains
//! it, by the VM's argument:
//!
//! - 0: writes IA32_FEATURE_CONTROL (0x3A), which must raise #GP (the
//!   handler says so and skips the 2-byte WRMSR), then reads guest-physical
//!   0xC000_0000 (3 GiB, mapped by the guest's identity map, outside its
//!   RAM): the hypervisor must stop the VM;
//! - 1: the same WRMSR, then loads an empty IDT and executes INT3: a triple
//!   fault, which must stop the VM as crashed;
//! - 2: spins forever with interrupts off and no exiting instruction: only
//!   the hypervisor's preemption timer gets the CPU back.
//!
//! Surviving 0 or 1 (or a WRMSR that does not fault) prints
//! `rogue: FAIL ...` and exits with 5.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(not(target_os = "none"))]
fn main() {
    println!(
        "rogue is a guest program for the hv hypervisor (build it with --target x86_64-unknown-none)"
    );
}

#[cfg(target_os = "none")]
guests::entry!("rogue", guest::main);

#[cfg(target_os = "none")]
mod guest {
    use core::sync::atomic::{AtomicBool, Ordering};

    use guests::idt::{self, Frame};
    use guests::{arch, console, exit_code, say};

    /// IA32_FEATURE_CONTROL: the host's, never a guest's to write.
    const MSR_FEATURE_CONTROL: u32 = 0x3a;
    /// WRMSR's encoding, 0F 30: what the #GP handler expects at RIP.
    const WRMSR: [u8; 2] = [0x0f, 0x30];
    /// Guest-physical 3 GiB: identity-mapped, never guest RAM here.
    const OUTSIDE_RAM: u64 = 0xc000_0000;
    const GP: u8 = 13;

    static EXPECT_GP: AtomicBool = AtomicBool::new(false);
    static GOT_GP: AtomicBool = AtomicBool::new(false);

    /// #GP: expected only on the WRMSR; skip it. Anything else is a bug.
    fn on_gp(frame: &mut Frame) {
        // SAFETY: RIP points at the faulting instruction in this guest's
        // text, which is mapped and readable; two bytes are read.
        let insn = unsafe {
            core::ptr::read_volatile(core::ptr::with_exposed_provenance::<[u8; 2]>(
                frame.rip as usize,
            ))
        };
        if EXPECT_GP.swap(false, Ordering::Relaxed) && insn == WRMSR {
            say!("#GP as expected");
            GOT_GP.store(true, Ordering::Relaxed);
            frame.rip += WRMSR.len() as u64;
        } else {
            idt::report_and_exit(frame);
        }
    }

    fn forbidden_wrmsr() {
        idt::set_handler(GP, on_gp);
        say!("wrmsr {MSR_FEATURE_CONTROL:#x}");
        EXPECT_GP.store(true, Ordering::Relaxed);
        // SAFETY: the hypervisor refuses this write with #GP, which on_gp
        // handles; were it to let it through, the value (lock bit, VMX
        // enabled) is what the host already set.
        unsafe { arch::wrmsr(MSR_FEATURE_CONTROL, 0x5) };
        if !GOT_GP.load(Ordering::Relaxed) {
            say!("FAIL wrmsr {MSR_FEATURE_CONTROL:#x} did not fault");
            console::exit(exit_code::ROGUE_FAILED);
        }
    }

    pub fn main(boot: guests::Boot) -> ! {
        match boot.arg {
            0 => {
                forbidden_wrmsr();
                if boot.ram > OUTSIDE_RAM {
                    say!(
                        "FAIL {OUTSIDE_RAM:#x} is inside this VM's RAM ({} MiB)",
                        boot.ram >> 20
                    );
                    console::exit(exit_code::ROGUE_FAILED);
                }
                say!("reading outside RAM");
                // SAFETY: the address is identity-mapped by the guest's page
                // tables and outside its RAM: the hypervisor stops the VM on
                // the access, which is the point.
                let v = unsafe { arch::load_u64(OUTSIDE_RAM) };
                say!("FAIL still running (read {v:#x} at {OUTSIDE_RAM:#x})");
                console::exit(exit_code::ROGUE_FAILED)
            }
            1 => {
                forbidden_wrmsr();
                say!("triple fault");
                // SAFETY: deliberately breaks the guest: with an empty IDT
                // the breakpoint cannot be delivered (#GP, then #DF, then a
                // triple fault), which stops the VM.
                unsafe {
                    arch::lidt(0, 0);
                    arch::int3();
                }
                say!("FAIL still running after a triple fault");
                console::exit(exit_code::ROGUE_FAILED)
            }
            2 => {
                say!("spinning");
                arch::cli();
                arch::spin_forever()
            }
            other => {
                say!(
                    "FAIL unknown argument {other} (0: read outside RAM, 1: triple fault, 2: spin)"
                );
                console::exit(exit_code::ROGUE_FAILED)
            }
        }
    }
}
