//! Boot sequence: from the loader's hand-over to the console prompt.

use core::fmt::Write as _;

use boot::{BootInfo, ConfigStatus, MemoryKind, MemoryRegion, Module};

use crate::{arch, println};

/// Reports a problem the kernel cannot boot past, and stops.
fn die(msg: core::fmt::Arguments<'_>) -> ! {
    let _ = writeln!(crate::drivers::serial::emergency(), "hv: fatal: {msg}");
    arch::halt_forever()
}

/// Kernel main, called by `_start` on the kernel's own stack with the
/// physical (identity-mapped) address of the loader's [`BootInfo`].
pub fn kmain(boot_info: u64) -> ! {
    crate::arch::time::mark_kernel_start();
    crate::drivers::serial::init();
    crate::arch::cpu::init();
    println!("hv {} starting", env!("CARGO_PKG_VERSION"));

    if boot_info == 0 || !boot_info.is_multiple_of(8) {
        die(format_args!("bad boot info pointer {boot_info:#x}"));
    }
    // SAFETY: the loader passes the address of a BootInfo it wrote, in
    // identity-mapped Loader memory; magic/version/size are checked before
    // any other field is trusted.
    let bi: BootInfo = unsafe { core::ptr::read(boot_info as *const BootInfo) };
    if bi.magic != boot::BOOT_MAGIC
        || bi.version != boot::BOOT_VERSION
        || bi.size as usize != core::mem::size_of::<BootInfo>()
    {
        die(format_args!(
            "boot info mismatch: magic {:#x} version {} size {} (kernel expects version {} size {}): loader and kernel are from different builds",
            bi.magic,
            bi.version,
            bi.size,
            boot::BOOT_VERSION,
            core::mem::size_of::<BootInfo>()
        ));
    }
    crate::drivers::serial::init_logger(log::LevelFilter::Info);

    // SAFETY: the loader wrote memory_map_len regions at memory_map, in
    // Loader memory that the kernel never frees. Kinds are re-validated
    // below through MemoryKind::from_raw before use.
    let raw_regions: &[MemoryRegion] = unsafe {
        core::slice::from_raw_parts(
            bi.memory_map as *const MemoryRegion,
            bi.memory_map_len as usize,
        )
    };
    for r in raw_regions {
        // SAFETY: reading the discriminant as a plain u32 is always valid.
        let raw = unsafe { *(core::ptr::addr_of!(r.kind) as *const u32) };
        if MemoryKind::from_raw(raw).is_none() {
            die(format_args!(
                "memory map entry at {:#x} has unknown kind {raw}",
                r.start
            ));
        }
    }
    if let Err(e) = crate::mm::init(raw_regions, bi.kernel_phys) {
        die(format_args!("{e}"));
    }

    // Config text (now that the heap exists).
    let config_bytes: &[u8] = if bi.config_status == ConfigStatus::Loaded && bi.config != 0 {
        // SAFETY: the loader copied config_len bytes of the file there, in
        // Loader memory that stays mapped and untouched.
        unsafe { core::slice::from_raw_parts(bi.config as *const u8, bi.config_len as usize) }
    } else {
        &[]
    };
    let (config, diagnostics) = crate::config::parse(config_bytes);
    log::set_max_level(config.log_level);
    match bi.config_status {
        ConfigStatus::Loaded => {}
        ConfigStatus::Missing => {
            log::warn!("config: {} not found; using defaults", boot::CONFIG_PATH)
        }
        ConfigStatus::Unreadable => log::warn!(
            "config: {} could not be read; using defaults",
            boot::CONFIG_PATH
        ),
    }
    for d in &diagnostics {
        log::warn!("{d}");
    }

    // Clock and timer.
    let apic_ok = crate::arch::apic::present();
    if apic_ok {
        crate::arch::apic::init(crate::arch::apic::base_from_msr());
    }
    match crate::arch::apic::calibrate() {
        Some(hz) => log::info!(
            "time: TSC {}.{:03} MHz, APIC timer {} kHz (calibrated against the PIT)",
            hz / 1_000_000,
            hz / 1000 % 1000,
            crate::arch::apic::timer_hz() / 1000
        ),
        None => {
            let hz = cpuid_tsc_hz().unwrap_or(1_000_000_000);
            crate::arch::time::set_tsc_hz(hz);
            log::warn!(
                "time: the PIT did not respond; assuming a TSC of {} MHz",
                hz / 1_000_000
            );
        }
    }
    let timer_running = crate::arch::apic::start_periodic();
    if timer_running {
        arch::sti();
    } else {
        log::warn!("time: no APIC timer; the console polls instead of sleeping");
    }

    let platform = crate::arch::platform::discover(bi.rsdp);
    if let Some(why) = platform.acpi_problem {
        log::warn!("acpi: {why}; running on the boot CPU alone, PCI through ports 0xCF8/0xCFC");
    }
    log::info!(
        "cpus: {} (boot CPU APIC ID {}), local APIC at {:#x}",
        platform.cpus.len(),
        crate::arch::apic::id(),
        platform.lapic_base
    );

    let vmx = crate::vmm::vmxcaps::VmxCaps::probe(arch::cpuid(1, 0).2, &mut |msr| {
        // SAFETY: VmxCaps::probe reads VMX MSRs only after seeing
        // CPUID.1:ECX.VMX, and each further MSR only when the previous ones
        // report it exists (SDM Vol. 3D A.1-A.10).
        unsafe { arch::rdmsr(msr) }
    });
    log::info!(
        "vmx: {}{}",
        if vmx.vmx {
            "available"
        } else {
            "not available"
        },
        if vmx.vmx {
            alloc::format!(
                " (ept {}, unrestricted guest {}, ept a/d {}, pml {}, preemption timer {}, vpid {})",
                vmx.ept,
                vmx.unrestricted_guest,
                vmx.ept_ad,
                vmx.pml,
                vmx.preemption_timer,
                vmx.vpid
            )
        } else {
            alloc::string::String::new()
        }
    );

    crate::arch::entropy::init();
    crate::ft::configure(config.ft);

    let pci = match crate::drivers::pci::port::PortConfigSpace::take() {
        Some(mut cs) => {
            let pci = crate::drivers::pci::enumerate(&mut cs);
            log::info!("pci: {} functions", pci.len());
            crate::net::init(
                &pci,
                &mut cs,
                config.net_ip,
                config.net_key.clone(),
                config.net_max_pending,
            );
            pci
        }
        None => alloc::vec::Vec::new(),
    };

    let modules: &[Module] = if bi.modules_len == 0 {
        &[]
    } else {
        // SAFETY: the loader wrote modules_len Module records at modules,
        // in Loader memory the kernel keeps.
        unsafe { core::slice::from_raw_parts(bi.modules as *const Module, bi.modules_len as usize) }
    };
    let mut images = alloc::vec::Vec::new();
    for m in modules {
        log::info!("module {}: {} bytes at {:#x}", m.name(), m.len, m.start);
        // SAFETY: the loader copied the module's `len` bytes to `start`, in
        // Loader memory the kernel never frees or writes.
        let data = unsafe { core::slice::from_raw_parts(m.start as *const u8, m.len as usize) };
        images.push((alloc::string::String::from(m.name()), data));
    }
    crate::vmm::set_modules(images);

    let u = crate::mm::usage();
    log::info!(
        "memory: {} MiB usable, {} KiB used by the hypervisor",
        (u.usable_frames * 4096) >> 20,
        u.used_frames * 4
    );
    println!(
        "hv: ready: loader-to-prompt {} ms, reset-to-prompt {} ms (emulated time)",
        crate::arch::time::tsc_to_ms(arch::rdtsc().saturating_sub(bi.loader_start_tsc)),
        crate::arch::time::since_reset_ms()
    );
    crate::console::run(crate::console::System {
        hostname: config.hostname,
        platform,
        vmx,
        pci,
        timer_running,
    })
}

/// TSC frequency from CPUID leaf 0x15 (crystal ratio) or 0x16 (base MHz).
fn cpuid_tsc_hz() -> Option<u64> {
    let max = arch::cpuid(0, 0).0;
    if max >= 0x15 {
        let (den, num, crystal, _) = arch::cpuid(0x15, 0);
        if den != 0 && num != 0 && crystal != 0 {
            return Some(u64::from(crystal) * u64::from(num) / u64::from(den));
        }
    }
    if max >= 0x16 {
        let mhz = arch::cpuid(0x16, 0).0 & 0xffff;
        if mhz != 0 {
            return Some(u64::from(mhz) * 1_000_000);
        }
    }
    None
}

/// Resets the machine: the keyboard controller, then the chipset reset
/// register, then a triple fault.
pub fn reboot() -> ! {
    arch::cli();
    // SAFETY: 0x64 (8042 command: pulse reset) and 0xCF9 (reset control,
    // PIIX/ICH: hard reset) are platform reset mechanisms; the machine is
    // going down on purpose.
    unsafe { arch::outb(0x64, 0xfe) };
    crate::arch::time::delay_ms(50);
    // SAFETY: as above.
    unsafe {
        arch::outb(0xcf9, 0x02);
        arch::outb(0xcf9, 0x06);
    }
    crate::arch::time::delay_ms(50);
    // Last resort: an empty IDT makes the next exception a triple fault.
    let empty = x86_64::structures::DescriptorTablePointer {
        limit: 0,
        base: x86_64::VirtAddr::new(0),
    };
    // SAFETY: deliberately loading an empty IDT so that int3 triple-faults
    // and resets the CPU.
    unsafe {
        x86_64::instructions::tables::lidt(&empty);
        core::arch::asm!("int3");
    }
    arch::halt_forever()
}
