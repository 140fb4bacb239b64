//! VM exit handlers: CPUID, MSRs, control registers, HLT, EPT violations;
//! port and MMIO I/O go to the device bus (`io.rs`).

use super::prelude::*;

pub(super) fn handle_exit(vm: &mut Vm) {
    let raw = vmread(Field::EXIT_REASON) as u32;
    let info = vmx::exit::ExitInfo::from_raw(raw);
    let basic = (raw & 0xffff) as usize;
    vm.total_exits += 1;
    if let Some(c) = vm.exits.get_mut(basic) {
        *c += 1;
    }
    // An exit in the middle of delivering an event (e.g. an EPT violation
    // on the stack while pushing an interrupt frame) loses the event unless
    // it is injected again on the next entry (SDM 27.2.4, 28.3.2).
    let vectoring = vmread(Field::IDT_VECTORING_INFO);
    if vectoring & (1 << 31) != 0 && !info.entry_failure {
        vmwrite(Field::ENTRY_INTERRUPTION_INFO, vectoring & !(1 << 12));
        if vectoring & (1 << 11) != 0 {
            vmwrite(
                Field::ENTRY_EXCEPTION_ERROR_CODE,
                vmread(Field::IDT_VECTORING_ERROR_CODE),
            );
        }
        // Software interrupts and exceptions need their instruction length.
        if matches!((vectoring >> 8) & 7, 4..=6) {
            vmwrite(
                Field::ENTRY_INSTRUCTION_LENGTH,
                vmread(Field::EXIT_INSTRUCTION_LENGTH),
            );
        }
    }
    if info.entry_failure {
        let qual = vmread(Field::EXIT_QUALIFICATION);
        fault(
            vm,
            format!("VM entry failed: {} (qualification {qual:#x})", info.reason),
        );
        return;
    }
    lockstep::on_exit(vm, info.reason);
    dispatch(vm, info.reason);
    lockstep::after_exit(vm);
}

fn dispatch(vm: &mut Vm, reason: ExitReason) {
    match reason {
        ExitReason::ExternalInterrupt | ExitReason::PreemptionTimer => {}
        ExitReason::InterruptWindow => {}
        ExitReason::Cpuid => {
            emulate_cpuid(vm);
            skip_instruction();
        }
        ExitReason::Hlt => {
            skip_instruction();
            let rflags = vmread(Field::GUEST_RFLAGS);
            if rflags & 0x200 == 0 && vm.clock.period() == 0 {
                fault(
                    vm,
                    format!(
                        "halted with interrupts disabled at rip {:#x}",
                        vmread(Field::GUEST_RIP)
                    ),
                );
            } else {
                vm.state = State::Halted;
            }
        }
        ExitReason::IoInstruction => {
            let raw = vmread(Field::EXIT_QUALIFICATION);
            match IoQualification::try_from(raw) {
                Ok(q) => emulate_io(vm, q),
                Err(e) => fault(vm, format!("bad I/O exit qualification {raw:#x}: {e}")),
            }
        }
        ExitReason::Rdmsr => {
            let msr = vm.regs.rcx as u32;
            match read_msr(vm, msr) {
                Some(v) => {
                    // IA32_TSC is time: logged; the rest follow from the
                    // guest's own state.
                    let v = if msr == 0x10 {
                        lockstep::input(vm, ft_lockstep::Input::Msr { msr }, [v, 0])[0]
                    } else {
                        v
                    };
                    vm.regs.rax = v & 0xffff_ffff;
                    vm.regs.rdx = v >> 32;
                    skip_instruction();
                }
                None => inject_gp(vm, format!("rdmsr {msr:#x}")),
            }
        }
        ExitReason::Wrmsr => {
            let msr = vm.regs.rcx as u32;
            let v = (vm.regs.rdx << 32) | (vm.regs.rax & 0xffff_ffff);
            if write_msr(vm, msr, v) {
                skip_instruction();
            } else {
                inject_gp(vm, format!("wrmsr {msr:#x} = {v:#x}"));
            }
        }
        ExitReason::CrAccess => emulate_cr(vm),
        ExitReason::MovDr if vm.ft.is_some() => lockstep::emulate_mov_dr(vm),
        ExitReason::ExceptionOrNmi
            if vmread(Field::EXIT_INTERRUPTION_INFO) & 0x8000_07ff == 0x8000_0301 =>
        {
            lockstep::debug_exit(vm)
        }
        ExitReason::Rdrand | ExitReason::Rdseed => emulate_rand(vm, reason),
        ExitReason::Rdtsc | ExitReason::Rdtscp => {
            // Only with RDTSC exiting (the clock asked for it): the value
            // comes from the guest clock (or a primary's log).
            let input = if reason == ExitReason::Rdtscp {
                ft_lockstep::Input::Rdtscp
            } else {
                ft_lockstep::Input::Rdtsc
            };
            let [tsc, _] = lockstep::input(vm, input, [vm.clock.tsc(arch::rdtsc()), 0]);
            vm.regs.rax = tsc & 0xffff_ffff;
            vm.regs.rdx = tsc >> 32;
            if reason == ExitReason::Rdtscp {
                // IA32_TSC_AUX is not offered to guests: it reads 0.
                vm.regs.rcx = 0;
            }
            skip_instruction();
        }
        ExitReason::Xsetbv => {
            let index = vm.regs.rcx as u32;
            let v = (vm.regs.rdx << 32) | (vm.regs.rax & 0xffff_ffff);
            match vcpu::xcr0::check_xsetbv(index, v, vm.xcr0_allowed) {
                Ok(()) => {
                    // Loaded into XCR0 before the next VM entry.
                    vm.ctx.xcr0 = v;
                    skip_instruction();
                }
                Err(why) => inject_gp(vm, format!("xsetbv ({why})")),
            }
        }
        ExitReason::EptViolation if vm.bus.on_mmio(vmread(Field::GUEST_PHYSICAL_ADDRESS)) => {
            let gpa = vmread(Field::GUEST_PHYSICAL_ADDRESS);
            let q = vmx::exit::EptViolation::from(vmread(Field::EXIT_QUALIFICATION));
            if let Err(why) = emulate_mmio(vm, gpa, q.write) {
                fault(vm, why);
            }
        }
        ExitReason::PmlFull => drain_pml(vm),
        ExitReason::EptViolation => {
            let gpa = vmread(Field::GUEST_PHYSICAL_ADDRESS);
            let q = vmx::exit::EptViolation::from(vmread(Field::EXIT_QUALIFICATION));
            if q.write && gpa < vm.ram_bytes() {
                // A write-protected page under dirty tracking: record it,
                // give write access back and run the write again.
                let Vm { dirty, ept, .. } = vm;
                if let Some(log) = dirty.as_mut() {
                    match log.on_write_violation(ept, &mut IdentityMem, &mut KernelFrames, gpa) {
                        Ok(true) => {
                            invept_all();
                            return;
                        }
                        Ok(false) => {}
                        Err(e) => log::warn!("vm {}: dirty tracking: {e}", vm.name),
                    }
                }
            }
            let what = if q.fetch {
                "instruction fetch"
            } else if q.write {
                "write"
            } else {
                "read"
            };
            let why = format!(
                "{what} of guest-physical {gpa:#x} outside its {} MiB of RAM at rip {:#x}",
                vm.mem_mib,
                vmread(Field::GUEST_RIP)
            );
            fault(vm, why);
        }
        ExitReason::TripleFault => {
            flush_output(vm);
            let why = format!(
                "triple fault at rip {:#x} rsp {:#x} cr2 {:#x} rax {:#x} rbx {:#x} rcx {:#x} rdx {:#x}",
                vmread(Field::GUEST_RIP),
                vmread(Field::GUEST_RSP),
                vm.regs.cr2,
                vm.regs.rax,
                vm.regs.rbx,
                vm.regs.rcx,
                vm.regs.rdx
            );
            async_line(format_args!("vm {}: crashed: {why}", vm.name));
            log::debug!("vm {}: crashed", vm.name);
            vm.state = State::Crashed(why);
        }
        other => {
            let why = format!(
                "unhandled exit {other} (qualification {:#x}) at rip {:#x}",
                vmread(Field::EXIT_QUALIFICATION),
                vmread(Field::GUEST_RIP)
            );
            fault(vm, why);
        }
    }
}

/// CPUID from the VM's profile: the same values on every host.
pub(super) fn emulate_cpuid(vm: &mut Vm) {
    let leaf = vm.regs.rax as u32;
    let sub = vm.regs.rcx as u32;
    let [a, b, c, d] = vm.cpuid.lookup(leaf, sub).unwrap_or_else(|| {
        // Leaves 1 and 0DH depend on the guest's CR4 and XCR0.
        let osxsave = vmread(Field::GUEST_CR4) & (1 << 18) != 0;
        let inputs = cpuid_inputs(vm.ctx.xcr0, osxsave);
        vm.profile.cpuid(leaf, sub, &inputs, &HostCpuid)
    });
    // The TSC rate in the hypervisor leaves is this host's: logged, so a
    // secondary on another host answers as the primary did.
    let lo = |x: u32, y: u32| u64::from(x) | u64::from(y) << 32;
    let input = ft_lockstep::Input::Cpuid { leaf, sub };
    let [ab, cd] = lockstep::input(vm, input, [lo(a, b), lo(c, d)]);
    let (a, b, c, d) = (ab as u32, (ab >> 32) as u32, cd as u32, (cd >> 32) as u32);
    vm.regs.rax = u64::from(a);
    vm.regs.rbx = u64::from(b);
    vm.regs.rcx = u64::from(c);
    vm.regs.rdx = u64::from(d);
}

/// What a VM's CPUID depends on besides its profile: its APIC ID (one
/// vCPU: 0), this host's TSC rate, and the guest's XCR0 and CR4.OSXSAVE.
pub(super) fn cpuid_inputs(xcr0: u64, cr4_osxsave: bool) -> vcpu::profile::Dynamic {
    vcpu::profile::Dynamic {
        apic_id: 0,
        tsc_khz: (crate::arch::time::tsc_hz() / 1000) as u32,
        xcr0,
        cr4_osxsave,
    }
}

/// MSRs a guest may read: (value source).
pub(super) fn read_msr(vm: &Vm, msr: u32) -> Option<u64> {
    // STAR, LSTAR, CSTAR, FMASK, KERNEL_GS_BASE: the guest's own.
    if let Some(k) = context::syscall_msr_index(msr) {
        return Some(vm.ctx.msrs[k]);
    }
    Some(match msr {
        0x10 => vm.clock.tsc(arch::rdtsc()),           // IA32_TSC
        0x1b => 0xfee0_0900,                           // IA32_APIC_BASE: BSP, enabled
        0x1a0 => 1,                                    // IA32_MISC_ENABLE: fast strings
        0x277 => vmread(Field::GUEST_IA32_PAT),        // IA32_PAT
        0xc000_0080 => vmread(Field::GUEST_IA32_EFER), // IA32_EFER
        0xc000_0100 => vmread(Field::GUEST_FS_BASE),   // FS base
        0xc000_0101 => vmread(Field::GUEST_GS_BASE),   // GS base
        _ => return None,
    })
}

/// MSRs a guest may write. False: the write gets #GP.
pub(super) fn write_msr(vm: &mut Vm, msr: u32, v: u64) -> bool {
    if let Some(k) = context::syscall_msr_index(msr) {
        if !context::syscall_msr_ok(msr, v) {
            return false;
        }
        vm.ctx.msrs[k] = v;
        // The guest owns the CPU's context while its exits are handled.
        // SAFETY: the MSR exists on every x86-64 CPU and the value was
        // checked (canonical, FMASK's reserved bits clear); the host never
        // uses it.
        unsafe { arch::wrmsr(msr, v) };
        return true;
    }
    match msr {
        // Each byte a memory type the PAT can hold (0, 1, 4-7), or VM
        // entry would fail on it.
        0x277 if pat_ok(v) => vmwrite(Field::GUEST_IA32_PAT, v),
        // EFER: only NXE/SCE may change; LME/LMA stay as set up.
        0xc000_0080 if v & !0xd01 == 0 && v & 0x500 == 0x500 => {
            vmwrite(Field::GUEST_IA32_EFER, v | 0x400)
        }
        0xc000_0100 => vmwrite(Field::GUEST_FS_BASE, v),
        0xc000_0101 => vmwrite(Field::GUEST_GS_BASE, v),
        _ => return false,
    }
    true
}

/// Whether every byte of a PAT value is a memory type the PAT can hold
/// (0, 1, 4-7); VM entry fails on any other.
pub(super) fn pat_ok(v: u64) -> bool {
    v.to_le_bytes().iter().all(|&t| matches!(t, 0 | 1 | 4..=7))
}

/// The value of a guest's RDRAND or RDSEED: the one place random numbers
/// enter a guest (a recorder logs them here; a replay feeds them back).
/// None: the hardware source failed (the guest sees CF=0 and retries).
pub(super) fn guest_random(seed: bool) -> Option<u64> {
    if seed { arch::rdseed() } else { arch::rdrand() }
}

/// RDRAND/RDSEED (they exit where the CPU can make them): the value from
/// [`guest_random`] into the destination register, CF set on success
/// (SDM Vol. 2B; exit instruction information, Vol. 3C 27.2.5). A profile
/// without the instruction gets #UD, as the CPU it describes would.
fn emulate_rand(vm: &mut Vm, reason: ExitReason) {
    let seed = reason == ExitReason::Rdseed;
    let name = if seed { "rdseed" } else { "rdrand" };
    if !vm.profile.features().contains(name) {
        log::info!(
            "vm {}: {name} is not in its CPU profile: #UD injected",
            vm.name
        );
        let info = InterruptionInfo::hardware_exception(6, false);
        vmwrite(Field::ENTRY_INTERRUPTION_INFO, u64::from(info.encode()));
        return;
    }
    let ii = vmread(Field::EXIT_INSTRUCTION_INFO);
    let size = match (ii >> 11) & 3 {
        0 => 2,
        1 => 4,
        _ => 8,
    };
    let live = guest_random(seed);
    let input = ft_lockstep::Input::Rand { seed };
    let [v, ok] = lockstep::input(vm, input, [live.unwrap_or(0), u64::from(live.is_some())]);
    let value = (ok != 0).then_some(v);
    if let Some(gpr) = vmx::Gpr::from_index(((ii >> 3) & 0xf) as u8) {
        let old = vm.regs.get(gpr, &CurrentVmcs);
        let v = crate::vmm::mmio::merge_load(old, value.unwrap_or(0), size, false);
        vm.regs.set(gpr, v, &mut CurrentVmcs);
    }
    // CF = success; OF, SF, ZF, AF, PF cleared.
    let flags = vmread(Field::GUEST_RFLAGS) & !0x8d5 | u64::from(value.is_some());
    vmwrite(Field::GUEST_RFLAGS, flags);
    skip_instruction();
}

pub(super) fn inject_gp(vm: &mut Vm, what: String) {
    log::info!("vm {}: {what} refused: #GP injected", vm.name);
    let info = InterruptionInfo::hardware_exception(13, true);
    vmwrite(Field::ENTRY_INTERRUPTION_INFO, u64::from(info.encode()));
    vmwrite(Field::ENTRY_EXCEPTION_ERROR_CODE, 0);
}

/// The current VMCS, for the `vmx` crate's register helpers.
pub(super) struct CurrentVmcs;

impl vmx::Vmcs for CurrentVmcs {
    fn read(&self, f: Field) -> u64 {
        vmread(f)
    }

    fn write(&mut self, f: Field, v: u64) {
        vmwrite(f, v)
    }
}

pub(super) fn emulate_cr(vm: &mut Vm) {
    let q = vmx::exit::CrAccess::from(vmread(Field::EXIT_QUALIFICATION));
    let cr4_fixed0 = vmread(Field::CR4_GUEST_HOST_MASK) & !(1 << 13);
    match q.kind {
        CrAccessKind::MovToCr { gpr } if q.cr == 0 || q.cr == 4 => {
            let v = vm.regs.get(gpr, &CurrentVmcs);
            if q.cr == 0 {
                vmwrite(Field::CR0_READ_SHADOW, v);
                vmwrite(Field::GUEST_CR0, v | 0x20);
            } else {
                vmwrite(Field::CR4_READ_SHADOW, v);
                vmwrite(Field::GUEST_CR4, v | cr4_fixed0 | (1 << 13));
            }
            skip_instruction();
        }
        _ => {
            let why = format!(
                "unsupported control-register access {q:?} at rip {:#x}",
                vmread(Field::GUEST_RIP)
            );
            fault(vm, why);
        }
    }
}
