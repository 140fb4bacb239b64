//! The run loop: picking the next VM, a time slice of VM entries, timer
//! interrupts and their injection, guest console output and faults.

use super::prelude::*;

/// Runs one slice of the next runnable VM. Returns false when no VM could
/// run (the caller may then sleep until the next host interrupt).
pub fn run_slice() -> bool {
    let mut m = MANAGER.lock();
    let n = m.vms.len();
    if n == 0 || m.host.is_none() {
        return false;
    }
    let now = arch::rdtsc();
    for k in 0..n {
        let i = (m.next + k) % n;
        let vm = &mut m.vms[i];
        update_timer(vm, now);
        if vm.paused || lockstep::throttled(vm) {
            continue;
        }
        if runnable(vm) {
            m.next = (i + 1) % n;
            let vmcs = m.vms[i].vmcs;
            make_current(&mut m, vmcs);
            own_context(&mut m, i);
            let Manager { host, vms, .. } = &mut *m;
            if let Some(host) = host.as_ref() {
                run_for_a_slice(host, &mut vms[i], now);
            }
            return true;
        }
    }
    false
}

/// Gives VM `i` the CPU's guest context (x87/SSE/AVX, debug and SYSCALL
/// registers), saving the previous owner's first.
pub(super) fn own_context(m: &mut Manager, i: usize) {
    let Manager {
        host,
        vms,
        ctx_owner,
        ctx_switches,
        ctx_switch_cycles,
        ..
    } = m;
    let Some(host) = host.as_ref() else { return };
    if *ctx_owner == vms[i].id {
        return;
    }
    let t0 = arch::rdtsc();
    if let Some(prev) = vms.iter_mut().find(|v| v.id == *ctx_owner) {
        prev.ctx.save(&host.xstate);
    }
    vms[i].ctx.load(&host.xstate);
    *ctx_owner = vms[i].id;
    *ctx_switches += 1;
    *ctx_switch_cycles += arch::rdtsc().saturating_sub(t0);
}

/// Saves the CPU's guest context into VM `i` if it owns it (before its
/// state leaves the host).
pub(super) fn sync_context(host: &Host, owner: u64, vm: &mut Vm) {
    if owner == vm.id {
        vm.ctx.save(&host.xstate);
    }
}

/// Runs `vm` (its VMCS current) through exits until it has had
/// [`SLICE_MS`] or cannot go on (halted with nothing pending, stopped,
/// paused). One entry per turn is not enough: when the host does other
/// work between turns (a migration's pages), a guest whose timer tick
/// costs a few exits (injection, EOI, interrupt window) would spend every
/// entry in its tick handler and never reach its own code.
pub(super) fn run_for_a_slice(host: &Host, vm: &mut Vm, start: u64) {
    let end = start.saturating_add(crate::arch::time::tsc_hz() / 1000 * SLICE_MS);
    loop {
        run_vm(host, vm);
        let now = arch::rdtsc();
        if now >= end || vm.paused {
            return;
        }
        update_timer(vm, now);
        if !runnable(vm) {
            return;
        }
    }
}

/// Running, or halted with an interrupt to deliver; under fault
/// tolerance also as the lockstep allows (a secondary runs only on log).
pub(super) fn runnable(vm: &Vm) -> bool {
    if lockstep::replaying(vm) {
        return vm.state.runs() && lockstep::may_run(vm);
    }
    let ready = match vm.state {
        State::Running => true,
        State::Halted => vm.bus.pending_vector().is_some() || lockstep::has_pending(vm),
        _ => false,
    };
    ready && lockstep::may_run(vm)
}

/// Raises the timer's IRQ (the PIT's IRQ0) through the bus when its
/// period has elapsed.
pub(super) fn update_timer(vm: &mut Vm, now: u64) {
    if vm.bus.take_timer_change() {
        let period = vm
            .bus
            .timer_period_tsc(crate::arch::time::tsc_hz())
            .unwrap_or(0);
        vm.clock.set_period(period, now);
    }
    // A paused guest's ticks wait for its resumption: its state may be
    // on its way to another host (a migration's final round, the initial
    // copy of fault tolerance) and must not change under it.
    if !vm.paused && vm.clock.tick_due(now) {
        // Auto-converge (a migration the guest outruns): deliver one timer
        // tick in 2^slow, so a guest that works per tick works that much
        // less. Its TSC keeps real time.
        vm.skipped = vm.skipped.wrapping_add(1);
        if vm.slow == 0 || vm.skipped.is_multiple_of(1 << vm.slow) {
            lockstep::timer_tick(vm);
        }
    }
}

pub(super) fn run_vm(host: &Host, vm: &mut Vm) {
    // Deliver a pending interrupt if the guest can take it now, else ask
    // for an exit as soon as it can (interrupt-window exiting). An event
    // whose delivery an exit interrupted goes first (handle_exit queued it).
    let mut primary = host.primary;
    if vm.clock.exiting {
        primary |= PrimaryControls::RDTSC_EXITING.bits();
    }
    let replay = lockstep::replaying(vm);
    if vm.ft.is_some() {
        // The guest's debug registers are virtual while protected.
        primary |= PrimaryControls::MOV_DR_EXITING.bits();
        if replay {
            // Every event comes from the log, at its landmark.
            if !lockstep::secondary_before_entry(vm) {
                return;
            }
        } else {
            lockstep::primary_before_entry(vm);
        }
    }
    let reinjecting = vmread(Field::ENTRY_INTERRUPTION_INFO) & (1 << 31) != 0;
    if replay {
    } else if reinjecting {
        if vm.bus.pending_vector().is_some() {
            primary |= PrimaryControls::INTERRUPT_WINDOW_EXITING.bits();
        }
    } else if let Some(vector) = vm.bus.pending_vector() {
        let rflags = vmread(Field::GUEST_RFLAGS);
        let blocked = vmread(Field::GUEST_INTERRUPTIBILITY_STATE) & 0x3 != 0;
        if rflags & 0x200 != 0 && !blocked {
            let info = InterruptionInfo::external_interrupt(vector);
            vmwrite(Field::ENTRY_INTERRUPTION_INFO, u64::from(info.encode()));
            lockstep::injected(vm, vector);
            vm.bus.acknowledge(vector);
            vm.state = State::Running;
        } else {
            primary |= PrimaryControls::INTERRUPT_WINDOW_EXITING.bits();
        }
    }
    if vm.ft.is_some() && vm.state == State::Halted {
        // Still halted (the tick's IRQ is masked): entering would run the
        // guest past its HLT.
        return;
    }
    vmwrite(Field::PRIMARY_PROC_CONTROLS, u64::from(primary));
    if host.pin & PinControls::PREEMPTION_TIMER.bits() != 0 {
        let us = lockstep::slice_us(vm, SLICE_MS * 1000);
        let slice = crate::arch::time::tsc_hz() / 1_000_000 * us;
        vmwrite(
            Field::PREEMPTION_TIMER_VALUE,
            (slice >> host.timer_rate).min(u64::from(u32::MAX)),
        );
    }

    context::enter(&host.xstate, &vm.ctx);
    let t0 = arch::rdtsc();
    arch::cli();
    // SAFETY: the VM's VMCS is current and fully initialised (setup_vmcs),
    // HOST_RIP is the exit landing of vm_enter, and interrupts are off so
    // no host handler runs between VM entry and exit.
    let r = unsafe { insn::vm_enter(&mut vm.regs, vm.launched) };
    // Let the host timer interrupt that probably caused this exit in.
    arch::interrupt_window();
    vm.guest_tsc += arch::rdtsc().saturating_sub(t0);
    match r {
        Ok(()) => {
            vm.launched = true;
            handle_exit(vm);
        }
        Err(e) => {
            let why = match e {
                VmFail::Valid(err) => format!("VM entry failed: {err}"),
                VmFail::Invalid => "VM entry failed: no current VMCS".to_string(),
            };
            fault(vm, why);
        }
    }
}

/// The guest's unfinished console line, when it stops.
pub(super) fn flush_output(vm: &mut Vm) {
    if let Some(line) = vm.bus.with(Uart::flush).flatten()
        && let Some(out) = lockstep::output(vm, lockstep::Output::Line(line))
    {
        lockstep::print_output(&vm.name, out);
    }
}

pub(super) fn fault(vm: &mut Vm, why: String) {
    flush_output(vm);
    async_line(format_args!("vm {}: stopped: {why}", vm.name));
    log::debug!("vm {}: faulted: {why}", vm.name);
    vm.state = State::Faulted(why);
}

pub(super) fn skip_instruction() {
    let len = vmread(Field::EXIT_INSTRUCTION_LENGTH);
    vmwrite(Field::GUEST_RIP, vmread(Field::GUEST_RIP) + len);
}
