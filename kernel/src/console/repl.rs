//! The operator's shell on COM1: reads lines through the line editor, parses
//! them ([`crate::shell`]) and runs them against the live system.

use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, Ordering};

use crate::console::lineedit::{Action, LineEditor};
use crate::console::shell::{Command, family_help};
use crate::{print, println};

/// Longest command line accepted.
const MAX_LINE: usize = 256;

/// What the shell reports on; gathered once at boot.
pub struct System {
    pub hostname: String,
    pub platform: crate::arch::platform::Platform,
    pub vmx: crate::vmm::vmxcaps::VmxCaps,
    pub pci: Vec<crate::drivers::pci::Function>,
    /// The periodic timer runs, so the idle loop may halt.
    pub timer_running: bool,
}

/// A prompt is on the screen with nothing printed after it but the
/// operator's typing.
static PROMPT_SHOWN: AtomicBool = AtomicBool::new(false);
/// Output appeared after the prompt: print it again.
static REDRAW: AtomicBool = AtomicBool::new(false);

/// Prints a line that arrives on its own (guest output, a VM stopping),
/// not as the answer to a command: it starts on a fresh line, and the shell
/// prints the prompt and the half-typed line again afterwards.
pub fn async_line(args: core::fmt::Arguments<'_>) {
    if PROMPT_SHOWN.swap(false, Ordering::Relaxed) {
        println!();
        REDRAW.store(true, Ordering::Relaxed);
    }
    println!("{args}");
}

/// Runs the shell forever.
pub fn run(sys: System) -> ! {
    crate::events::set_sink(async_line);
    let mut ed = LineEditor::new(MAX_LINE);
    prompt(&sys);
    loop {
        let Some(byte) = crate::drivers::serial::try_read() else {
            let net_busy = crate::net::poll();
            let ran = crate::vmm::run_slice();
            if REDRAW.swap(false, Ordering::Relaxed) {
                prompt(&sys);
                print!("{}", ed.shown());
            }
            if ran || net_busy {
                continue;
            }
            if sys.timer_running {
                // Sleep until the next timer tick (10 ms) instead of spinning.
                crate::arch::sti_hlt();
            } else {
                crate::arch::pause();
            }
            continue;
        };
        match ed.feed(byte, &mut |b| crate::drivers::serial::write_bytes(b)) {
            Action::Pending => {}
            Action::Cancel => prompt(&sys),
            Action::Submit(line) => {
                PROMPT_SHOWN.store(false, Ordering::Relaxed);
                match crate::console::shell::parse(&line) {
                    Ok(cmd) => execute(&sys, cmd),
                    Err(msg) => println!("error: {msg}"),
                }
                prompt(&sys);
            }
        }
    }
}

fn prompt(sys: &System) {
    print!("{}> ", sys.hostname);
    PROMPT_SHOWN.store(true, Ordering::Relaxed);
}

fn yes(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

fn mib(frames: u64) -> u64 {
    (frames * crate::mm::addr::PAGE_SIZE) >> 20
}

fn execute(sys: &System, cmd: Command) {
    match cmd {
        Command::Empty => {}
        Command::Help => {
            for line in crate::console::shell::help() {
                println!("{line}");
            }
        }
        Command::Version => {
            println!(
                "hv {} (boot abi {})",
                env!("CARGO_PKG_VERSION"),
                boot::BOOT_VERSION
            )
        }
        Command::Status => {
            let ms = crate::arch::time::uptime_ms();
            let u = crate::mm::usage();
            println!("host: {}", sys.hostname);
            println!("uptime: {}.{:03} s", ms / 1000, ms % 1000);
            println!(
                "memory: {} MiB usable, {} MiB used, {} MiB free",
                mib(u.usable_frames),
                mib(u.used_frames),
                mib(u.free_frames)
            );
            println!("cpus: {}", sys.platform.cpus.len());
            let why = if sys.vmx.vmx && sys.vmx.disabled_by_firmware {
                " (disabled by firmware)"
            } else {
                ""
            };
            println!("vt-x: {}{why}", yes(sys.vmx.vmx));
        }
        Command::Mem => {
            let u = crate::mm::usage();
            println!(
                "frames: usable {} ({} MiB), used {} ({} MiB), free {} ({} MiB)",
                u.usable_frames,
                mib(u.usable_frames),
                u.used_frames,
                mib(u.used_frames),
                u.free_frames,
                mib(u.free_frames)
            );
            println!(
                "heap: {} KiB, used {} KiB",
                u.heap_bytes >> 10,
                u.heap_used >> 10
            );
            println!(
                "loader data: {} KiB (kernel image, boot info, config, modules, first page tables)",
                u.loader_bytes >> 10
            );
        }
        Command::Cpus => {
            for (i, c) in sys.platform.cpus.iter().enumerate() {
                println!(
                    "cpu {i}: apic id {}{}",
                    c.apic_id,
                    if c.bsp { " (bsp)" } else { "" }
                );
            }
            match sys.platform.source {
                crate::arch::platform::CpuSource::Madt => {
                    println!("cpus: {} (from ACPI MADT)", sys.platform.cpus.len())
                }
                crate::arch::platform::CpuSource::BootCpuOnly => {
                    println!(
                        "cpus: {} (no ACPI tables: boot CPU only)",
                        sys.platform.cpus.len()
                    )
                }
            }
        }
        Command::Pci => {
            if sys.pci.is_empty() {
                println!("no PCI functions found");
            }
            for f in &sys.pci {
                println!("{f}");
            }
        }
        Command::Vmx => {
            for (label, v) in sys.vmx.rows() {
                println!("{label}: {}", yes(v));
            }
            if sys.vmx.vmx {
                println!("vmcs revision: {:#x}", sys.vmx.vmcs_revision);
                if sys.vmx.disabled_by_firmware {
                    println!(
                        "note: IA32_FEATURE_CONTROL is locked with VMX disabled; enable VT-x in the firmware setup"
                    );
                }
            }
        }
        Command::VmxMsrs => {
            if !sys.vmx.vmx {
                println!("error: this CPU has no VMX (CPUID.1:ECX.VMX is clear), so no VMX MSRs");
                return;
            }
            let basic = crate::vmm::vmxcaps::read_msr(crate::vmm::vmxcaps::MSR_VMX_BASIC);
            // IA32_VMX_BASIC .. IA32_VMX_VMFUNC; the TRUE_* ones only when
            // BASIC[55] says they exist, the later ones when the secondary
            // controls or VM functions do (SDM Vol. 3D A.1).
            for msr in 0x480..=0x491u32 {
                let exists = match msr {
                    0x48b => sys.vmx.has_secondary,
                    0x48c => sys.vmx.ept || sys.vmx.vpid,
                    0x48d..=0x490 => basic & (1 << 55) != 0,
                    0x491 => sys.vmx.has_vmfunc,
                    _ => true,
                };
                if exists {
                    println!("msr {msr:#x}: {:#018x}", crate::vmm::vmxcaps::read_msr(msr));
                }
            }
        }
        Command::Log(None) => {
            println!("log level: {}", crate::config::level_name(log::max_level()))
        }
        Command::Log(Some(level)) => {
            log::set_max_level(level);
            println!("log level: {}", crate::config::level_name(level));
        }
        Command::Vm(v) => vm_command(v),
        Command::Net(n) => net_command(n),
        Command::Migrate(c) => migrate_command(c),
        Command::Ft(c) => ft_command(c),
        Command::Crash(fault) => {
            println!("crashing on purpose: {fault:?}");
            crate::arch::raise(fault);
        }
        Command::Reboot => {
            println!("rebooting");
            crate::reboot();
        }
    }
}

/// `<family> help`: its sub-commands, one per line.
fn print_family_help(family: &str) {
    for line in family_help(family).unwrap_or_default() {
        println!("{line}");
    }
}

fn net_command(cmd: crate::console::shell::NetCommand) {
    use crate::console::shell::NetCommand as N;
    match cmd {
        N::Help => print_family_help("net"),
        N::Show => crate::net::show(),
        N::Set(cfg) => crate::net::set(cfg),
        N::Ping { target, count } => crate::net::ping(target, count),
        N::Key(k) => crate::net::set_key(k),
        N::Bench { target, port, mib } => crate::net::bench(target, port, mib),
        N::Sink(on) => crate::net::sink(on),
        N::FilterShow => crate::net::filter_show(),
        N::FilterDrop(ip) => crate::net::filter_drop(ip),
        N::FilterClear => crate::net::filter_clear(),
    }
}

fn ft_command(cmd: crate::console::shell::FtCommand) {
    use crate::console::shell::FtCommand as F;
    match cmd {
        F::Help => print_family_help("ft"),
        F::Listen(on) => crate::ft::listen(on),
        F::Status(vm) => crate::ft::status(vm.as_deref()),
        F::Enable {
            vm,
            target,
            port,
            witness,
        } => crate::ft::enable(&vm, target, port, witness),
        F::Disable(vm) => crate::ft::disable(&vm),
        F::Watch { vm, on } => crate::ft::watch(&vm, on),
        F::Witness(on) => crate::ft::witness(on),
        F::Flip { vm, gpa } => crate::ft::flip(&vm, gpa),
    }
}

fn migrate_command(cmd: crate::console::shell::MigrateCommand) {
    use crate::console::shell::MigrateCommand as M;
    match cmd {
        M::Help => print_family_help("migrate"),
        M::Listen(on) => crate::migration::listen(on),
        M::Status => crate::migration::status(),
        M::Check { vm, target, port } => crate::migration::check(&vm, target, port),
        M::Out {
            vm,
            target,
            port,
            downtime_ms,
            bandwidth_mib,
            background,
        } => crate::migration::out(
            &crate::migration::Outgoing {
                vm: &vm,
                target,
                port,
                downtime_ms,
                bandwidth_mib,
                keep_running: false,
            },
            background,
        ),
        M::Cancel(vm) => crate::migration::cancel(&vm),
    }
}

fn vm_command(cmd: crate::console::shell::VmCommand) {
    use crate::console::shell::VmCommand as V;
    let r = match cmd {
        V::Help => {
            print_family_help("vm");
            // The modules on the ESP, cut to the console's width.
            let modules = crate::vmm::module_names();
            let mut names: Vec<&str> = modules.iter().map(String::as_str).collect();
            if names.is_empty() {
                names.push("none");
            }
            for line in crate::console::shell::wrap_list("images: ", &names) {
                println!("{line}");
            }
            Ok(())
        }
        V::List => {
            crate::vmm::list();
            Ok(())
        }
        V::Create {
            name,
            mem_mib,
            image,
            arg,
            cpu,
            rdtsc_exit,
        } => crate::vmm::create(
            &name,
            mem_mib,
            &image,
            arg,
            &crate::vmm::VmOptions { cpu, rdtsc_exit },
        )
        .map(|()| println!("vm {name}: created ({mem_mib} MiB, image {image})")),
        V::Start(name) => crate::vmm::start(&name).map(|()| println!("vm {name}: started")),
        V::Stop(name) => crate::vmm::stop(&name).map(|()| println!("vm {name}: stopped")),
        V::Delete(name) => crate::vmm::delete(&name).map(|()| println!("vm {name}: deleted")),
        V::Stats(name) => crate::vmm::stats(&name),
        V::Show(name) => crate::vmm::show(&name),
        V::Dirty(name) => crate::vmm::dirty(&name),
        V::Checksum(name) => crate::vmm::request(&name)
            .map(|n| println!("vm {name}: checksum request {n} sent (port 0xf5)")),
    };
    if let Err(e) = r {
        println!("error: {e}");
    }
}
