//! Guest port I/O and MMIO exits: decode the access, ask the bus, act on
//! what the device reported. Nothing else produces a value for the guest
//! (see [`super::bus`]).

use super::prelude::*;
use crate::vmm::bus::Effects;
use crate::vmm::mmio::{Access, merge_load};

/// An I/O instruction exit (IN/OUT; string forms are refused).
pub(super) fn emulate_io(vm: &mut Vm, q: IoQualification) {
    if q.string || q.rep {
        fault(
            vm,
            format!("string I/O on port {:#x} is not supported", q.port),
        );
        return;
    }
    skip_instruction();
    if q.input {
        let v = vm.bus.pio_read(q.port, q.size);
        let input = ft_lockstep::Input::Pio {
            port: q.port,
            size: q.size,
        };
        let v = lockstep::input(vm, input, [v, 0])[0];
        // Same register rules as a load: `in eax` clears bits 63:32.
        vm.regs.rax = merge_load(vm.regs.rax, v, q.size, false);
        return;
    }
    // The low `size` bytes of RAX, as OUT sends them.
    let value = merge_load(0, vm.regs.rax, q.size, true);
    let fx = vm.bus.pio_write(q.port, q.size, value);
    apply_effects(vm, fx);
}

/// What a device write reported: a console line goes to the host console
/// with the VM's name, a stop request stops the VM with its code. (IRQ
/// lines the bus has already taken to the interrupt controller.)
pub(super) fn apply_effects(vm: &mut Vm, fx: Effects) {
    if let Some(line) = fx.line
        && let Some(out) = lockstep::output(vm, lockstep::Output::Line(line))
    {
        lockstep::print_output(&vm.name, out);
    }
    if let Some(code) = fx.stop {
        flush_output(vm);
        if let Some(out) = lockstep::output(vm, lockstep::Output::Exited(code)) {
            lockstep::print_output(&vm.name, out);
        }
        log::debug!("vm {}: exited with code {code}", vm.name);
        vm.state = State::Stopped { code: Some(code) };
    }
}

/// Emulates the instruction that touched `gpa`, an address some MMIO
/// device on the bus answers (EPT violations there are not faults).
pub(super) fn emulate_mmio(vm: &mut Vm, gpa: u64, write: bool) -> Result<(), String> {
    let rip = vmread(Field::GUEST_RIP);
    let mut bytes = [0u8; 15];
    let mut fetched = 0;
    while fetched < bytes.len() {
        let Some(pa) = guest_virt_to_phys(vm, rip + fetched as u64) else {
            break;
        };
        let Some(p) = vm.host_ptr(pa, 1) else { break };
        // SAFETY: host_ptr checked the byte lies in this VM's RAM.
        bytes[fetched] = unsafe { core::ptr::read(p) };
        fetched += 1;
    }
    let insn = crate::vmm::mmio::decode(&bytes[..fetched])
        .map_err(|e| format!("MMIO access to {gpa:#x} at rip {rip:#x}: {e}"))?;
    let nothing_there = || format!("MMIO access to {gpa:#x} at rip {rip:#x}: no device there");
    match (insn.access, write) {
        (Access::Load { reg, zero_extend }, false) => {
            let gpr = vmx::Gpr::from_index(reg).ok_or("bad register")?;
            let value = vm.bus.mmio_read(gpa, insn.size).ok_or_else(nothing_there)?;
            let input = ft_lockstep::Input::Mmio {
                gpa,
                size: insn.size,
            };
            let value = lockstep::input(vm, input, [value, 0])[0];
            let old = vm.regs.get(gpr, &CurrentVmcs);
            vm.regs.set(
                gpr,
                merge_load(old, value, insn.size, zero_extend),
                &mut CurrentVmcs,
            );
        }
        (Access::Store { reg, high_byte }, true) => {
            let gpr = vmx::Gpr::from_index(reg).ok_or("bad register")?;
            let v = vm.regs.get(gpr, &CurrentVmcs) >> if high_byte { 8 } else { 0 };
            let v = merge_load(0, v, insn.size, true);
            let fx = vm
                .bus
                .mmio_write(gpa, insn.size, v)
                .ok_or_else(nothing_there)?;
            apply_effects(vm, fx);
        }
        (Access::StoreImm(v), true) => {
            let v = merge_load(0, v, insn.size, true);
            let fx = vm
                .bus
                .mmio_write(gpa, insn.size, v)
                .ok_or_else(nothing_there)?;
            apply_effects(vm, fx);
        }
        _ => {
            return Err(format!(
                "MMIO access to {gpa:#x} at rip {rip:#x}: decoded {insn:?} disagrees with the exit"
            ));
        }
    }
    vmwrite(Field::GUEST_RIP, rip + u64::from(insn.len));
    Ok(())
}
