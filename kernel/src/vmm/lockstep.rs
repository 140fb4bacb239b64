//! Fault tolerance inside the VMM: what a protected VM does differently on
//! the primary (record every input and event, hold its output) and on the
//! secondary (take every input and event from the log, print nothing).
//!
//! The log itself, its codec, the replayer's rules, the output gate and the
//! lag controller are the sans-IO `ft_lockstep` crate; this module is where
//! they meet the exit handlers (see DESIGN.md, "Deterministic replay"):
//!
//! - **Deterministic exits** (the guest's own CPUID, I/O, MMIO, MSR, RDTSC,
//!   RDRAND, HLT, XSETBV, CR and DR accesses) are counted on both sides; host
//!   interrupts, the preemption timer, the interrupt window, dirty-tracking
//!   faults, PML-full and the replayer's own breakpoints are not.
//! - **Synchronous inputs** are logged by value at the exit that consumed
//!   them ([`input`]); the secondary feeds them back at the same exit, and
//!   compares what its own bus answered (a different port value is a
//!   divergence, reported).
//! - **Asynchronous events** (the timer's IRQ raise, an injection, the
//!   operator's `vm checksum` request) happen on the primary only just
//!   before a VM entry, at a landmark: right after deterministic exit *n*
//!   ([`Landmark::Exit`]) or, after a forced exit, at (n, RIP, GPR digest)
//!   ([`Landmark::Forced`]). The secondary reaches a forced landmark with a
//!   hardware execution breakpoint at that RIP (DR0, #DB intercepted),
//!   stepping over hits whose digest differs with RFLAGS.RF. The primary
//!   never places a forced landmark inside a REP string instruction (a
//!   breakpoint there fires only before the first iteration): it delays
//!   the event to the next entry instead.
//! - The guest's debug registers are virtual while protected (MOV-DR
//!   exiting on both sides): the replayer owns DR0 and DR7, and the guest
//!   reads back what it wrote. Its own hardware breakpoints do not fire
//!   while it is protected (as RF in an interrupt frame could differ).

use alloc::boxed::Box;
use alloc::collections::VecDeque;

use ft_lockstep::{
    Ack, Digest, Event, Input, LagController, LagStats, Landmark, OutputGate, Record, Recorder,
    Replayer, Step, gpr_digest,
};

use super::prelude::*;

/// Guest output under the output rule.
#[derive(Debug, Clone)]
pub(super) enum Output {
    /// A console line.
    Line(String),
    /// The exit port's code (the VM already stopped).
    Exited(u32),
}

/// A protected VM's side of the lockstep.
pub(super) struct Lockstep {
    pub(super) role: Role,
    /// The twin's address, for status lines.
    pub(super) peer: String,
    /// Deterministic exits so far (both sides count).
    pub(super) exits: u64,
    /// The guest has not run since deterministic exit `exits` was handled.
    pub(super) fresh: bool,
    /// A digest of every deterministic exit's reason and qualification
    /// (port, MSR...) so far: part of each state check, so an exit of
    /// another kind on the secondary (one that reads nothing, which the
    /// log alone would not catch) shows at the next check.
    pub(super) trail: Digest,
    /// The guest's own DR7 (the VMCS holds the replayer's).
    pub(super) dr7: u64,
    /// RDTSC exiting as the VM was created (FT forces it on).
    pub(super) rdtsc_option: bool,
    /// Host events waiting for a landmark (primary): timer ticks due,
    /// `vm checksum` requests.
    pub(super) ticks: u32,
    pub(super) requests: u32,
    /// When the oldest of those began to wait.
    pub(super) pending_since_us: u64,
    /// The time of the last deterministic exit (its records' time).
    now_us: u64,
    pub(super) since_us: u64,
}

pub(super) enum Role {
    Primary(Box<Primary>),
    Secondary(Box<Secondary>),
}

pub(super) struct Primary {
    pub(super) rec: Recorder,
    pub(super) gate: OutputGate<Output>,
    pub(super) lag: LagController,
    /// The last Horizon record's exit count.
    horizon: u64,
    next_check_us: u64,
    pub(super) check_every_us: u64,
    pub(super) checks: u64,
    /// What the checks cost here: time digesting (all, longest) and bytes
    /// digested by the last one.
    check_us: u64,
    check_max_us: u64,
    check_bytes: u64,
    /// The secondary's last acknowledgement.
    pub(super) peer_ack: Ack,
    /// Slices skipped to let the secondary catch up.
    pub(super) throttled_slices: u64,
    turn: u64,
}

pub(super) struct Secondary {
    pub(super) rep: Replayer,
    /// The breakpoint is armed at this RIP.
    armed: Option<u64>,
    /// The last exit was the breakpoint, hit at this RIP.
    hit: Option<u64>,
    pub(super) checks_ok: u64,
    pub(super) diverged: Option<String>,
    /// Guest lines replayed (not printed), the last few, and whether to
    /// echo them (`ft watch`).
    pub(super) lines: u64,
    pub(super) recent: VecDeque<String>,
    pub(super) watch: bool,
    pub(super) breakpoints: u64,
    pub(super) events: u64,
    /// Replayed output the primary may not have released yet: (item
    /// number since protection began, item). Printed if this copy goes
    /// live; dropped as `Released` records arrive.
    held: VecDeque<(u64, Output)>,
    /// The last TSC value the replay fed the guest (a copy that goes live
    /// never lets its TSC go back).
    last_tsc: u64,
}

/// Replayed output items a secondary keeps at most (the primary's
/// `Released` records normally keep it to a few).
const HELD_MAX: usize = 4096;

/// Lines `ft status` keeps of a secondary's replayed output.
const RECENT_LINES: usize = 4;

impl Lockstep {
    fn new(role: Role, peer: &str, rdtsc_option: bool, dr7: u64) -> Lockstep {
        Lockstep {
            role,
            peer: peer.into(),
            exits: 0,
            fresh: true,
            trail: Digest::new(),
            dr7,
            rdtsc_option,
            ticks: 0,
            requests: 0,
            pending_since_us: 0,
            now_us: 0,
            since_us: crate::arch::time::now_us(),
        }
    }
}

/// Whether a VM exit is caused by the guest's own instruction (and so
/// happens at the same point on both twins).
pub(super) fn deterministic(reason: ExitReason, vm: &Vm) -> bool {
    match reason {
        ExitReason::Cpuid
        | ExitReason::Hlt
        | ExitReason::IoInstruction
        | ExitReason::Rdmsr
        | ExitReason::Wrmsr
        | ExitReason::CrAccess
        | ExitReason::MovDr
        | ExitReason::Rdrand
        | ExitReason::Rdseed
        | ExitReason::Rdtsc
        | ExitReason::Rdtscp
        | ExitReason::Xsetbv
        | ExitReason::TripleFault => true,
        ExitReason::EptViolation => vm.bus.on_mmio(vmread(Field::GUEST_PHYSICAL_ADDRESS)),
        _ => false,
    }
}

/// Counts an exit (called first thing in the exit handler).
pub(super) fn on_exit(vm: &mut Vm, reason: ExitReason) {
    let det = deterministic(reason, vm);
    let Some(ft) = vm.ft.as_mut() else { return };
    ft.fresh = det;
    if let Role::Secondary(s) = &mut ft.role {
        s.hit = None;
    }
    if !det {
        return;
    }
    ft.exits += 1;
    ft.now_us = crate::arch::time::now_us();
    ft.trail.u64(vmread(Field::EXIT_REASON) & 0xffff);
    ft.trail.u64(vmread(Field::EXIT_QUALIFICATION));
    if let Role::Secondary(s) = &mut ft.role {
        s.rep.on_exit();
    }
}

/// After a deterministic exit was handled: the primary's periodic state
/// check.
pub(super) fn after_exit(vm: &mut Vm) {
    let Some(ft) = vm.ft.as_mut() else { return };
    if !ft.fresh {
        return;
    }
    let now = ft.now_us;
    let Role::Primary(p) = &mut ft.role else {
        return;
    };
    if now < p.next_check_us {
        return;
    }
    p.next_check_us = now + p.check_every_us;
    let exits = ft.exits;
    let t0 = crate::arch::time::now_us();
    let digest = state_digest(vm);
    let took = crate::arch::time::now_us().saturating_sub(t0);
    let bytes = vm.chunks.len() as u64 * MIB2;
    if let Some(ft) = vm.ft.as_mut()
        && let Role::Primary(p) = &mut ft.role
    {
        p.rec.record(Record::Check { exits, digest }, now);
        p.checks += 1;
        p.check_us += took;
        p.check_max_us = p.check_max_us.max(took);
        p.check_bytes = bytes;
    }
}

/// The value of a synchronous input: `live` is what this host produced.
/// The primary logs it; the secondary takes the log's (and, for the bus,
/// checks its own device agreed).
pub(super) fn input(vm: &mut Vm, input: Input, live: [u64; 2]) -> [u64; 2] {
    let Some(ft) = vm.ft.as_mut() else {
        return live;
    };
    let (exits, now) = (ft.exits, ft.now_us);
    match &mut ft.role {
        Role::Primary(p) => {
            p.rec.record(
                Record::Input {
                    exits,
                    input,
                    value: live,
                },
                now,
            );
            live
        }
        Role::Secondary(s) => match s.rep.input(input) {
            Ok(v) => {
                if matches!(input, Input::Rdtsc | Input::Rdtscp) {
                    s.last_tsc = v[0];
                }
                let compare = matches!(input, Input::Pio { .. } | Input::Mmio { .. });
                if compare && v != live && s.diverged.is_none() {
                    s.diverged = Some(format!(
                        "exit {exits}: {input:?} read {:#x} here, {:#x} on the primary",
                        live[0], v[0]
                    ));
                }
                v
            }
            Err(e) => {
                s.diverged.get_or_insert_with(|| format!("{e}"));
                live
            }
        },
    }
}

/// Guest output: Some(it) to print now (unprotected), None when the
/// lockstep took it (held on the primary, counted on the secondary).
pub(super) fn output(vm: &mut Vm, out: Output) -> Option<Output> {
    let name = vm.name.clone();
    let Some(ft) = vm.ft.as_mut() else {
        return Some(out);
    };
    match &mut ft.role {
        Role::Primary(p) => {
            let pos = p.rec.position();
            p.gate.hold(pos, out, crate::arch::time::now_us());
            None
        }
        Role::Secondary(s) => {
            let text = match &out {
                Output::Line(l) => format!("[{name}] {l}"),
                Output::Exited(code) => format!("vm {name}: exited with code {code}"),
            };
            s.lines += 1;
            if s.watch {
                async_line(format_args!("ft: replayed {text}"));
            }
            let released = s.rep.released();
            while s.held.front().is_some_and(|(n, _)| *n <= released) || s.held.len() >= HELD_MAX {
                s.held.pop_front();
            }
            if s.lines > released {
                s.held.push_back((s.lines, out));
            }
            if s.recent.len() == RECENT_LINES {
                s.recent.pop_front();
            }
            s.recent.push_back(text);
            None
        }
    }
}

/// Prints guest output (released, or unprotected).
pub(super) fn print_output(name: &str, out: Output) {
    match out {
        Output::Line(l) => async_line(format_args!("[{name}] {l}")),
        Output::Exited(code) => async_line(format_args!("vm {name}: exited with code {code}")),
    }
}

/// Host events (timer ticks, requests) waiting for the primary's next
/// entry: a halted guest with one is runnable.
pub(super) fn has_pending(vm: &Vm) -> bool {
    vm.ft
        .as_ref()
        .is_some_and(|ft| ft.ticks > 0 || ft.requests > 0)
}

/// A timer tick is due: raised at once unprotected, at the next entry's
/// landmark on a primary; a secondary takes its ticks from the log.
pub(super) fn timer_tick(vm: &mut Vm) {
    match vm.ft.as_mut() {
        None => vm.bus.timer_tick(),
        Some(ft) => {
            if matches!(ft.role, Role::Primary(_)) {
                if ft.ticks == 0 && ft.requests == 0 {
                    ft.pending_since_us = crate::arch::time::now_us();
                }
                ft.ticks = ft.ticks.saturating_add(1).min(2);
            }
        }
    }
}

/// The operator's `vm checksum` request, through the log when protected.
pub(super) fn request(vm: &mut Vm) -> Option<u8> {
    match vm.ft.as_mut() {
        None => vm.bus.with(RequestPort::bump),
        Some(ft) if matches!(ft.role, Role::Primary(_)) => {
            if ft.ticks == 0 && ft.requests == 0 {
                ft.pending_since_us = crate::arch::time::now_us();
            }
            ft.requests += 1;
            vm.bus
                .with(|r: &mut RequestPort| r.requests())
                .map(|n| n.wrapping_add(1))
        }
        Some(_) => None,
    }
}

/// Where the guest is now, as a landmark (VMCS current).
fn landmark(vm: &Vm) -> Landmark {
    let ft = vm.ft.as_ref();
    let exits = ft.map_or(0, |f| f.exits);
    if ft.is_some_and(|f| f.fresh) {
        Landmark::Exit { exits }
    } else {
        let (rip, digest) = here(vm);
        Landmark::Forced {
            exits,
            rip,
            digest,
            branches: None,
        }
    }
}

/// (RIP, digest of GPRs and RFLAGS) of the guest now (VMCS current).
fn here(vm: &Vm) -> (u64, u64) {
    here_of(&vm.regs)
}

fn here_of(r: &GuestRegs) -> (u64, u64) {
    let gprs = [
        r.rax,
        r.rcx,
        r.rdx,
        r.rbx,
        vmread(Field::GUEST_RSP),
        r.rbp,
        r.rsi,
        r.rdi,
        r.r8,
        r.r9,
        r.r10,
        r.r11,
        r.r12,
        r.r13,
        r.r14,
        r.r15,
    ];
    let rip = vmread(Field::GUEST_RIP);
    (rip, gpr_digest(&gprs, rip, vmread(Field::GUEST_RFLAGS)))
}

/// Whether the guest stands at a REP string instruction (a forced
/// landmark there could be inside its iterations, where no breakpoint
/// reaches).
fn at_rep_string(vm: &Vm) -> bool {
    let rip = vmread(Field::GUEST_RIP);
    let mut rep = false;
    for k in 0..15u64 {
        let Some(pa) = guest_virt_to_phys(vm, rip + k) else {
            return true;
        };
        let Some(p) = vm.host_ptr(pa, 1) else {
            return true;
        };
        // SAFETY: host_ptr checked the byte lies in this VM's RAM.
        let b = unsafe { core::ptr::read(p) };
        match b {
            0xf2 | 0xf3 => rep = true,
            0x26 | 0x2e | 0x36 | 0x3e | 0x64 | 0x65 | 0x66 | 0x67 | 0x40..=0x4f => {}
            0x6c..=0x6f | 0xa4..=0xa7 | 0xaa..=0xaf => return rep,
            _ => return false,
        }
    }
    false
}

/// Logs an asynchronous event at the guest's current landmark (primary).
fn record_event(vm: &mut Vm, event: Event) {
    let at = landmark(vm);
    if let Some(ft) = vm.ft.as_mut()
        && let Role::Primary(p) = &mut ft.role
    {
        p.rec
            .record(Record::Event { at, event }, crate::arch::time::now_us());
    }
}

/// How long a host event may wait for the guest's next deterministic exit
/// before the primary delivers it where a forced exit stopped the guest.
/// Landmarks at deterministic exits cost the secondary nothing; a forced
/// one costs a breakpoint exit for every pass of its RIP since the last
/// deterministic exit.
pub const FORCE_AFTER_US: u64 = 2_000;

/// The primary's host events, delivered at this entry if the guest stands
/// somewhere a secondary can find again: right after a deterministic exit,
/// or (once they waited [`FORCE_AFTER_US`]) wherever a forced exit stopped
/// it, but never inside a REP string instruction.
pub(super) fn primary_before_entry(vm: &mut Vm) {
    let Some(ft) = vm.ft.as_ref() else { return };
    if !matches!(ft.role, Role::Primary(_)) || (ft.ticks == 0 && ft.requests == 0) {
        return;
    }
    if !ft.fresh {
        let waited = crate::arch::time::now_us().saturating_sub(ft.pending_since_us);
        if waited < FORCE_AFTER_US || at_rep_string(vm) {
            return;
        }
    }
    let (ticks, requests) = (ft.ticks, ft.requests);
    if let Some(ft) = vm.ft.as_mut() {
        ft.ticks = 0;
        ft.requests = 0;
    }
    for _ in 0..requests {
        record_event(vm, Event::Request);
        vm.bus.with(RequestPort::bump);
    }
    for _ in 0..ticks {
        if let Some(line) = vm.bus.timer_line() {
            record_event(vm, Event::Irq { line });
            vm.bus.raise_irq(line);
        }
    }
}

/// The primary injects `vector` at this entry: logged.
pub(super) fn injected(vm: &mut Vm, vector: u8) {
    if vm
        .ft
        .as_ref()
        .is_some_and(|f| matches!(f.role, Role::Primary(_)))
    {
        record_event(vm, Event::Inject { vector });
    }
}

/// Time slice for the next entry: short while a primary's host event waits
/// for a landmark (the preemption timer then forces one soon).
pub(super) fn slice_us(vm: &Vm, default_us: u64) -> u64 {
    if has_pending(vm) {
        default_us.min(FORCE_AFTER_US)
    } else {
        default_us
    }
}

/// Whether the VM is a secondary (it takes no input of its own).
pub(super) fn replaying(vm: &Vm) -> bool {
    vm.ft
        .as_ref()
        .is_some_and(|f| matches!(f.role, Role::Secondary(_)))
}

/// Whether the scheduler may run the VM now: a secondary only with log
/// to go on and no divergence, a primary not while its log buffer is full
/// (the guest waits rather than a record being dropped).
pub(super) fn may_run(vm: &Vm) -> bool {
    match vm.ft.as_ref().map(|f| &f.role) {
        None => true,
        Some(Role::Primary(p)) => !p.rec.full(),
        Some(Role::Secondary(s)) => s.diverged.is_none() && s.rep.can_progress(),
    }
}

/// A primary whose secondary lags more than a second runs one slice in
/// four until the lag recovers: the guest slows down as a whole (its
/// timer ticks still all arrive), as VMware FT does.
pub(super) fn throttled(vm: &mut Vm) -> bool {
    let Some(Role::Primary(p)) = vm.ft.as_mut().map(|f| &mut f.role) else {
        return false;
    };
    if !p.lag.throttling() {
        return false;
    }
    p.turn += 1;
    if p.turn.is_multiple_of(4) {
        return false;
    }
    p.throttled_slices += 1;
    true
}

/// The secondary before an entry: applies the log's events at this
/// position, arms the breakpoint for a forced landmark. False: do not
/// enter (no log yet, or diverged).
pub(super) fn secondary_before_entry(vm: &mut Vm) -> bool {
    loop {
        let fresh = vm.ft.as_ref().is_some_and(|f| f.fresh);
        // Asked only at a forced landmark: the digest costs VMCS reads.
        let regs = vm.regs;
        let mut pos = None;
        let step = {
            let Some(ft) = vm.ft.as_mut() else {
                return true;
            };
            let Role::Secondary(s) = &mut ft.role else {
                return true;
            };
            if s.diverged.is_some() {
                return false;
            }
            match s
                .rep
                .next(fresh, &mut || *pos.get_or_insert_with(|| here_of(&regs)))
            {
                Ok(step) => step,
                Err(e) => {
                    s.diverged = Some(format!("{e}"));
                    return false;
                }
            }
        };
        match step {
            Step::Apply(event) => apply(vm, event),
            Step::Check(digest) => {
                let mine = state_digest(vm);
                if let Some(ft) = vm.ft.as_mut()
                    && let Role::Secondary(s) = &mut ft.role
                {
                    if mine == digest {
                        s.checks_ok += 1;
                    } else {
                        s.diverged = Some(format!(
                            "state check at exit {}: digest {mine:#018x} here, {digest:#018x} on the primary",
                            ft.exits
                        ));
                        return false;
                    }
                }
            }
            Step::RunTo { rip, .. } => {
                if vm.state == State::Halted {
                    return halted_divergence(vm);
                }
                arm(vm, Some(rip));
                // A hit that did not match: run that instruction once
                // without the breakpoint firing again.
                let hit = match vm.ft.as_ref().map(|f| &f.role) {
                    Some(Role::Secondary(s)) => s.hit,
                    _ => None,
                };
                if hit == Some(rip) {
                    let f = vmread(Field::GUEST_RFLAGS);
                    vmwrite(Field::GUEST_RFLAGS, f | (1 << 16));
                }
                return true;
            }
            Step::Run => {
                if vm.state == State::Halted {
                    return halted_divergence(vm);
                }
                arm(vm, None);
                return true;
            }
            Step::Wait => return false,
        }
    }
}

/// Marks a secondary diverged (the first reason stays); `why` gets the
/// exit count.
fn diverge(vm: &mut Vm, why: impl FnOnce(u64) -> String) {
    if let Some(ft) = vm.ft.as_mut() {
        let exits = ft.exits;
        if let Role::Secondary(s) = &mut ft.role {
            s.diverged.get_or_insert_with(|| why(exits));
        }
    }
}

fn halted_divergence(vm: &mut Vm) -> bool {
    diverge(vm, |exits| {
        format!(
            "exit {exits}: the guest is halted here but ran on without an interrupt on the primary"
        )
    });
    false
}

/// Applies a logged event on the secondary.
fn apply(vm: &mut Vm, event: Event) {
    match event {
        // The host raises only the timer's line: any other is a log that
        // does not belong to this guest.
        Event::Irq { line } if vm.bus.timer_line() == Some(line) => vm.bus.raise_irq(line),
        Event::Irq { line } => {
            diverge(vm, |exits| {
                format!("exit {exits}: the log raises IRQ {line}, not the timer's")
            });
            return;
        }
        Event::Request => {
            vm.bus.with(RequestPort::bump);
        }
        Event::Inject { vector } => {
            let pending = vm.bus.pending_vector();
            if pending != Some(vector) {
                diverge(vm, |exits| {
                    format!(
                        "exit {exits}: the primary injected vector {vector:#x}, here the PIC has {pending:?}"
                    )
                });
                return;
            }
            let info = InterruptionInfo::external_interrupt(vector);
            vmwrite(Field::ENTRY_INTERRUPTION_INFO, u64::from(info.encode()));
            vm.bus.acknowledge(vector);
            vm.state = State::Running;
            // Delivered now, before the instruction the breakpoint stopped
            // at: no breakpoint on the way back from the handler.
            arm(vm, None);
        }
    }
    if let Some(ft) = vm.ft.as_mut()
        && let Role::Secondary(s) = &mut ft.role
    {
        s.events += 1;
    }
}

/// Arms (Some(rip)) or disarms the replayer's execution breakpoint.
fn arm(vm: &mut Vm, at: Option<u64>) {
    let Some(ft) = vm.ft.as_mut() else { return };
    let Role::Secondary(s) = &mut ft.role else {
        return;
    };
    match at {
        Some(rip) => {
            // Every time: another guest's context may have loaded DR0
            // since (a protected VM's own DRs are not switched).
            context::set_breakpoint(rip);
            s.armed = Some(rip);
            // L0, execution, one byte; bit 10 reserved as 1.
            vmwrite(Field::GUEST_DR7, 0x401);
            vmwrite(Field::EXCEPTION_BITMAP, 1 << 1);
        }
        None => {
            if s.armed.take().is_some() {
                vmwrite(Field::GUEST_DR7, 0x400);
                vmwrite(Field::EXCEPTION_BITMAP, 0);
            }
        }
    }
}

/// A #DB exit. The secondary's breakpoint: counted, the next entry decides.
/// Any other (the guest's own single-step): delivered to the guest.
pub(super) fn debug_exit(vm: &mut Vm) {
    let rip = vmread(Field::GUEST_RIP);
    // B0 alone: DR0, the replayer's breakpoint. A single-step (BS) or
    // anything else is the guest's own and goes back to it.
    let qual = vmread(Field::EXIT_QUALIFICATION);
    let ours = qual & 0x400f == 1
        && vm.ft.as_mut().is_some_and(|ft| match &mut ft.role {
            Role::Secondary(s) if s.armed.is_some() => {
                s.breakpoints += 1;
                s.hit = Some(rip);
                true
            }
            _ => false,
        });
    // The breakpoint's CPU DR0 stays loaded: the context switch leaves a
    // protected VM's debug registers alone.
    vmwrite(Field::GUEST_PENDING_DEBUG_EXCEPTIONS, 0);
    if !ours {
        // (DR6 stays as the guest wrote it, as on the primary, where the
        // guest's own #DB never exits: DR6 is virtual while protected.)
        let info = InterruptionInfo::hardware_exception(1, false);
        vmwrite(Field::ENTRY_INTERRUPTION_INFO, u64::from(info.encode()));
    }
}

/// MOV to or from a debug register while protected: the guest's own
/// values, never the hardware's.
pub(super) fn emulate_mov_dr(vm: &mut Vm) {
    let q = vmread(Field::EXIT_QUALIFICATION);
    let dr = (q & 7) as usize;
    let from_dr = q & (1 << 4) != 0;
    let Some(gpr) = vmx::Gpr::from_index(((q >> 8) & 0xf) as u8) else {
        return;
    };
    let dr7 = vm.ft.as_ref().map_or(0x400, |f| f.dr7);
    if from_dr {
        let v = match dr {
            0..=3 => vm.ctx.dr[dr],
            4 | 6 => vm.ctx.dr6,
            _ => dr7,
        };
        vm.regs.set(gpr, v, &mut CurrentVmcs);
    } else {
        let v = vm.regs.get(gpr, &CurrentVmcs);
        match dr {
            0..=3 => vm.ctx.dr[dr] = v,
            4 | 6 => vm.ctx.dr6 = v | 0xffff_0ff0,
            _ => {
                if let Some(ft) = vm.ft.as_mut() {
                    ft.dr7 = (v & 0xffff_2bff) | 0x400;
                }
            }
        }
    }
    skip_instruction();
}

/// A digest of everything the guest's future depends on that both twins
/// hold: vCPU registers, device state and all of RAM (VMCS current).
pub(super) fn state_digest(vm: &Vm) -> u64 {
    let mut d = Digest::new();
    let (rip, gprs) = here(vm);
    d.u64(rip);
    d.u64(gprs);
    for f in [
        Field::GUEST_CR0,
        Field::GUEST_CR3,
        Field::GUEST_CR4,
        Field::GUEST_INTERRUPTIBILITY_STATE,
        Field::ENTRY_INTERRUPTION_INFO,
    ] {
        d.u64(vmread(f));
    }
    d.u64(vm.ctx.xcr0);
    d.u64(vm.regs.cr2);
    if let Some(ft) = vm.ft.as_ref() {
        d.u64(ft.exits);
        d.u64(ft.trail.value());
    }
    for (name, blob) in vm.bus.save() {
        d.bytes(name.as_bytes());
        d.bytes(&blob);
    }
    for &c in &vm.chunks {
        // SAFETY: each chunk is 2 MiB of this VM's RAM, identity-mapped;
        // the guest does not run while the hypervisor reads it.
        let ram = unsafe { core::slice::from_raw_parts(c as *const u8, MIB2 as usize) };
        d.bytes(ram);
    }
    d.value()
}

// ---------------------------------------------------------------------------
// Starting and ending protection (called from the FT service).

/// Why a lockstep call could not be made.
fn no_ft(name: &str) -> VmError {
    VmError::NotProtected(name.into())
}

/// Installs `role` on `vm`: the guest's debug registers become virtual
/// (its DR7 kept aside), RDTSC exits (its value is an input).
fn protect(vm: &mut Vm, role: Role, peer: &str) {
    let dr7 = vmread(Field::GUEST_DR7);
    vmwrite(Field::GUEST_DR7, 0x400);
    vm.ctx.dr_virtual = true;
    let rdtsc = vm.clock.exiting;
    vm.clock.exiting = true;
    vm.ft = Some(Box::new(Lockstep::new(role, peer, rdtsc, dr7)));
}

/// Undoes [`protect`] on `vm` (the lockstep already taken out of it):
/// its own DR7 and debug registers, no #DB interception, its own RDTSC
/// option.
fn unprotect(vm: &mut Vm, ft: &Lockstep) {
    vm.ctx.dr_virtual = false;
    vmwrite(Field::GUEST_DR7, ft.dr7);
    vmwrite(Field::EXCEPTION_BITMAP, 0);
    vm.clock.exiting = ft.rdtsc_option;
}

/// Begins protection on the primary after the initial copy committed:
/// dirty tracking off, recording on, the guest resumes from exactly the
/// state the secondary received.
pub fn ft_start_primary(name: &str, peer: &str, check_every_us: u64) -> Result<(), VmError> {
    with_vm(name, |host, vm| {
        vm.migrating = false;
        vm.slow = 0;
        if let Some(view) = vm.migration_view.take() {
            dirty_close(host, vm, view);
        }
        let now = crate::arch::time::now_us();
        protect(
            vm,
            Role::Primary(Box::new(Primary {
                rec: Recorder::new(ft_lockstep::DEFAULT_BUFFER_BYTES),
                gate: OutputGate::new(),
                lag: LagController::new(),
                horizon: 0,
                next_check_us: now + check_every_us,
                check_every_us,
                checks: 0,
                check_us: 0,
                check_max_us: 0,
                check_bytes: 0,
                peer_ack: Ack {
                    received: 0,
                    replayed: 0,
                    exits: 0,
                    checks_ok: 0,
                },
                throttled_slices: 0,
                turn: 0,
            })),
            peer,
        );
        vm.paused = false;
        Ok(())
    })
}

/// Starts the secondary's copy from the initial copy's state, replaying.
pub fn ft_start_secondary(
    name: &str,
    vcpu: &[u8],
    devices: &[(String, Vec<u8>)],
    peer: &str,
) -> Result<(), VmError> {
    start_incoming(name, vcpu, devices, 0)?;
    with_vm(name, |_, vm| {
        protect(
            vm,
            Role::Secondary(Box::new(Secondary {
                rep: Replayer::new(),
                armed: None,
                hit: None,
                checks_ok: 0,
                diverged: None,
                lines: 0,
                recent: VecDeque::new(),
                watch: false,
                breakpoints: 0,
                events: 0,
                held: VecDeque::new(),
                last_tsc: 0,
            })),
            peer,
        );
        Ok(())
    })
}

/// The primary's next frames for the channel, encoded (at most about
/// `max_bytes`), a Horizon record first if the guest moved on. Also feeds
/// the lag controller. Err if `name` is not a protected primary.
pub fn ft_frames(name: &str, max_bytes: usize) -> Result<Vec<(u8, Vec<u8>)>, VmError> {
    let now = crate::arch::time::now_us();
    let mut m = MANAGER.lock();
    let i = find(&mut m, name)?;
    let vm = &mut m.vms[i];
    let ft = vm.ft.as_mut().ok_or_else(|| no_ft(name))?;
    let exits = ft.exits;
    let Role::Primary(p) = &mut ft.role else {
        return Err(no_ft(name));
    };
    if exits > p.horizon {
        p.rec.record(Record::Horizon { exits }, now);
        p.horizon = exits;
    }
    let age = p.rec.oldest_unacked_age(now);
    p.lag.update(age);
    let mut out = Vec::new();
    let mut left = max_bytes;
    while left > 0 {
        let Some(f) = p.rec.take_frame(left.min(60 * 1024)) else {
            break;
        };
        let (ty, payload) = ft_lockstep::encode(&f);
        left = left.saturating_sub(payload.len());
        out.push((ty, payload));
    }
    Ok(out)
}

/// The lockstep role of VM `name`, if it is protected.
fn role_of<'m>(m: &'m Manager, name: &str) -> Option<&'m Role> {
    m.vms
        .iter()
        .find(|v| v.name == name)
        .and_then(|v| v.ft.as_ref())
        .map(|f| &f.role)
}

/// Records of a primary's log handed out so far (where an empty
/// keep-alive frame starts).
pub fn ft_sent(name: &str) -> u64 {
    let m = MANAGER.lock();
    match role_of(&m, name) {
        Some(Role::Primary(p)) => p.rec.sent(),
        _ => 0,
    }
}

/// The secondary acknowledged: released output is printed. Err(why) for
/// an acknowledgement no honest secondary sends.
pub fn ft_on_ack(name: &str, ack: Ack) -> Result<(), String> {
    let now = crate::arch::time::now_us();
    let mut m = MANAGER.lock();
    let Some(vm) = m.vms.iter_mut().find(|v| v.name == name) else {
        return Err(format!("VM '{name}' is gone"));
    };
    let vname = vm.name.clone();
    let Some(Role::Primary(p)) = vm.ft.as_mut().map(|f| &mut f.role) else {
        return Err(format!("'{name}' is not protected"));
    };
    let p = &mut **p;
    p.rec
        .on_ack(ack.received, ack.replayed, now, &mut p.lag)
        .map_err(|e| format!("bad acknowledgement: {e}"))?;
    p.peer_ack = ack;
    let released = p.gate.release(ack.received, now);
    if !released.is_empty() {
        // How much of the guest's output the world has seen: a secondary
        // that goes live re-emits only what comes after.
        let seq = p.gate.released();
        p.rec.record(Record::Released { seq }, now);
    }
    drop(m);
    for out in released {
        print_output(&vname, out);
    }
    Ok(())
}

/// Log frames for the secondary: Ok(acknowledgement) or Err(why the log
/// cannot be replayed).
pub fn ft_push(name: &str, first: u64, records: Vec<Record>) -> Result<Ack, String> {
    let mut m = MANAGER.lock();
    let Some(vm) = m.vms.iter_mut().find(|v| v.name == name) else {
        return Err(format!("VM '{name}' is gone"));
    };
    let Some(Role::Secondary(s)) = vm.ft.as_mut().map(|f| &mut f.role) else {
        return Err(format!("'{name}' is not a secondary"));
    };
    s.rep.push(first, records).map_err(|e| format!("{e}"))?;
    Ok(s.rep.ack(s.checks_ok))
}

/// What the FT service needs to know of a protected VM each turn.
pub struct FtPoll {
    /// The guest no longer runs (stopped, faulted, deleted).
    pub ended: Option<String>,
    /// Secondary: why the replay cannot go on.
    pub diverged: Option<String>,
    /// Secondary: the acknowledgement to send.
    pub ack: Option<Ack>,
    /// Primary: every record acknowledged and no output held.
    pub drained: bool,
}

pub fn ft_poll(name: &str) -> FtPoll {
    let m = MANAGER.lock();
    let Some(vm) = m.vms.iter().find(|v| v.name == name) else {
        return FtPoll {
            ended: Some(String::from("the VM was deleted")),
            diverged: None,
            ack: None,
            drained: true,
        };
    };
    let ended = match &vm.state {
        State::Running | State::Halted => None,
        State::Stopped { code: Some(c) } => Some(format!("the guest exited with code {c}")),
        other => Some(format!("the guest is {}", other.name())),
    };
    match vm.ft.as_ref().map(|f| &f.role) {
        Some(Role::Secondary(s)) => FtPoll {
            ended,
            diverged: s.diverged.clone(),
            ack: Some(s.rep.ack(s.checks_ok)),
            drained: false,
        },
        Some(Role::Primary(p)) => FtPoll {
            ended,
            diverged: None,
            ack: None,
            drained: p.rec.replayed() == p.rec.position() && p.gate.held() == 0,
        },
        None => FtPoll {
            ended: Some(String::from("not protected")),
            diverged: None,
            ack: None,
            drained: true,
        },
    }
}

/// Ends protection. A primary keeps running (its held output is printed:
/// nothing holds it back now); a secondary's copy is deleted.
pub fn ft_end(name: &str) {
    let now = crate::arch::time::now_us();
    let mut released = Vec::new();
    let mut delete_it = false;
    let r = with_vm(name, |_, vm| {
        let Some(ft) = vm.ft.take() else {
            return Ok(());
        };
        unprotect(vm, &ft);
        match ft.role {
            Role::Primary(mut p) => {
                released = p.gate.release_all(now);
                // Ticks that were waiting for a landmark.
                for _ in 0..ft.ticks {
                    vm.bus.timer_tick();
                }
                for _ in 0..ft.requests {
                    vm.bus.with(RequestPort::bump);
                }
            }
            Role::Secondary(_) => delete_it = true,
        }
        Ok(())
    });
    if r.is_err() {
        return;
    }
    for out in released {
        print_output(name, out);
    }
    if delete_it && let Err(e) = delete(name) {
        log::warn!("ft: deleting the secondary copy of {name}: {e}");
    }
}

/// `ft watch`: echo (or not) the lines a secondary replays.
pub fn ft_watch(name: &str, on: bool) -> Result<(), VmError> {
    let mut m = MANAGER.lock();
    let i = find(&mut m, name)?;
    match m.vms[i].ft.as_mut().map(|f| &mut f.role) {
        Some(Role::Secondary(s)) => {
            s.watch = on;
            Ok(())
        }
        _ => Err(VmError::NotSecondary(name.into())),
    }
}

/// Whether `name` is protected (either side).
pub fn ft_protected(name: &str) -> bool {
    MANAGER
        .lock()
        .vms
        .iter()
        .any(|v| v.name == name && v.ft.is_some())
}

/// A protected VM for `ft status`.
pub struct FtStatus {
    pub vm: String,
    pub lines: Vec<String>,
}

/// `ft status` lines of every protected VM (or of `only`).
pub fn ft_status(only: Option<&str>) -> Vec<FtStatus> {
    let now = crate::arch::time::now_us();
    let m = MANAGER.lock();
    let mut out = Vec::new();
    for vm in m.vms.iter().filter(|v| only.is_none_or(|n| n == v.name)) {
        let Some(ft) = vm.ft.as_ref() else { continue };
        let secs = (now.saturating_sub(ft.since_us) / 1000).max(1);
        let mut lines = Vec::new();
        match &ft.role {
            Role::Primary(p) => {
                let lag = p.lag.stats();
                let lat = p.gate.latency();
                lines.push(format!(
                    "{}: primary, protected by {}: {}",
                    vm.name,
                    ft.peer,
                    if p.lag.throttling() {
                        "lockstep, throttling (the secondary lags)"
                    } else {
                        "lockstep"
                    }
                ));
                lines.push(format!(
                    "  log: {} exits, {} records, {} KiB ({} KiB/s); buffered {} KiB",
                    ft.exits,
                    p.rec.total_records(),
                    p.rec.total_bytes() >> 10,
                    p.rec.total_bytes() / secs,
                    p.rec.buffered_bytes() >> 10
                ));
                lines.push(format!(
                    "  lag {} ms (p50 {} ms, p99 {} ms, max {} ms); throttled slices {}",
                    p.rec.oldest_unacked_age(now) / 1000,
                    lag.p50_us / 1000,
                    lag.p99_us / 1000,
                    lag.max_us / 1000,
                    p.throttled_slices
                ));
                lines.push(format!(
                    "  output: {} lines held, {} released, added latency p50 {} ms, max {} ms",
                    p.gate.held(),
                    p.gate.released(),
                    lat.p50_us / 1000,
                    lat.max_us / 1000
                ));
                lines.push(format!(
                    "  secondary acknowledged {} records, replayed {} ({} exits); checks {} sent, {} matched",
                    p.peer_ack.received,
                    p.peer_ack.replayed,
                    p.peer_ack.exits,
                    p.checks,
                    p.peer_ack.checks_ok
                ));
                lines.push(format!(
                    "  checks every {} s: {} KiB of RAM and the vCPU and device state each, {} us on average, {} us at most",
                    p.check_every_us / 1_000_000,
                    p.check_bytes / 1024,
                    p.check_us / p.checks.max(1),
                    p.check_max_us
                ));
            }
            Role::Secondary(s) => {
                lines.push(format!(
                    "{}: secondary of {}: {}",
                    vm.name,
                    ft.peer,
                    match &s.diverged {
                        Some(why) => format!("diverged: {why}"),
                        None if s.rep.can_progress() => String::from("replaying"),
                        None => String::from("replaying, waiting for log"),
                    }
                ));
                lines.push(format!(
                    "  log: received {} records, replayed {} ({} exits), horizon {} exits",
                    s.rep.received(),
                    s.rep.consumed(),
                    s.rep.exits(),
                    s.rep.horizon()
                ));
                lines.push(format!(
                    "  events {}, breakpoint hits {}, checks matched {}, guest lines {} (not printed)",
                    s.events, s.breakpoints, s.checks_ok, s.lines
                ));
                for l in &s.recent {
                    lines.push(format!("  last: {l}"));
                }
            }
        }
        out.push(FtStatus {
            vm: vm.name.clone(),
            lines,
        });
    }
    out
}

/// Lag and output latency of a primary (for `cargo xtask bench ft`).
pub fn ft_lag(name: &str) -> Option<(LagStats, LagStats)> {
    let m = MANAGER.lock();
    let vm = m.vms.iter().find(|v| v.name == name)?;
    match vm.ft.as_ref().map(|f| &f.role) {
        Some(Role::Primary(p)) => Some((p.lag.stats(), p.gate.latency())),
        _ => None,
    }
}

// ---------------------------------------------------------------------------
// Failover (called from the FT service).

/// Whether a secondary replayed everything it received: the log holds
/// nothing more it could act on (the log drain after the primary's death
/// is over). `None` if `name` is not a secondary.
pub fn ft_drained(name: &str) -> Option<bool> {
    let m = MANAGER.lock();
    match role_of(&m, name) {
        Some(Role::Secondary(s)) => Some(!s.rep.can_progress() || s.diverged.is_some()),
        _ => None,
    }
}

/// What a secondary that went live did.
pub struct GoLive {
    /// Log records its replay had consumed in all.
    pub consumed: u64,
    /// Output items re-emitted (those the primary may not have released).
    pub reemitted: usize,
}

/// The primary is gone and the arbiter chose this copy: the guest leaves
/// replay and runs live from exactly where the log ended. Its own clock
/// takes over (the TSC never goes back), its debug registers are its own
/// again, and the output the primary may not have released is printed.
pub fn ft_go_live(name: &str) -> Result<GoLive, VmError> {
    let mut out = Vec::new();
    let mut consumed = 0;
    with_vm(name, |_, vm| {
        if !matches!(
            vm.ft.as_ref().map(|f| &f.role),
            Some(Role::Secondary(s)) if s.diverged.is_none()
        ) {
            return Err(no_ft(name));
        }
        let Some(ft) = vm.ft.take() else {
            return Err(no_ft(name));
        };
        unprotect(vm, &ft);
        let Role::Secondary(s) = ft.role else {
            return Err(no_ft(name));
        };
        let now = crate::arch::rdtsc();
        vm.clock.not_before(now, s.last_tsc.wrapping_add(1));
        vmwrite(Field::TSC_OFFSET, vm.clock.offset());
        consumed = s.rep.consumed();
        let released = s.rep.released();
        out.extend(
            s.held
                .into_iter()
                .filter(|(n, _)| *n > released)
                .map(|(_, o)| o),
        );
        Ok(())
    })?;
    let reemitted = out.len();
    for o in out {
        print_output(name, o);
    }
    Ok(GoLive {
        consumed,
        reemitted,
    })
}

/// The arbiter gave the guest to the secondary: this primary's copy stops
/// at once and its held output (which the world never saw) is dropped.
pub fn ft_stop(name: &str) {
    let r = with_vm(name, |_, vm| {
        if let Some(ft) = vm.ft.take() {
            unprotect(vm, &ft);
        }
        vm.paused = false;
        if matches!(vm.state, State::Running | State::Halted) {
            vm.state = State::Stopped { code: None };
        }
        Ok(())
    });
    if let Err(e) = r {
        log::warn!("ft: stopping {name}: {e}");
    }
}

/// Holds (or lets go) a primary's guest while the arbiter cannot be
/// reached: it must not run on alone.
pub fn ft_pause(name: &str, paused: bool) {
    let mut m = MANAGER.lock();
    if let Some(vm) = m.vms.iter_mut().find(|v| v.name == name) {
        vm.paused = paused;
    }
}

/// Diagnostic (`ft flip`): flips the bits of one guest byte on a
/// secondary, so the next state check finds a divergence.
pub fn ft_flip(name: &str, gpa: u64) -> Result<u8, VmError> {
    let mut m = MANAGER.lock();
    let i = find(&mut m, name)?;
    let vm = &mut m.vms[i];
    if !replaying(vm) {
        return Err(VmError::NotSecondary(name.into()));
    }
    let chunk = usize::try_from(gpa / MIB2)
        .ok()
        .and_then(|k| vm.chunks.get(k).copied())
        .ok_or_else(|| VmError::OutOfRange {
            vm: name.into(),
            gpa,
        })?;
    let p = (chunk + gpa % MIB2) as usize as *mut u8;
    // SAFETY: `chunk` is 2 MiB of this VM's RAM, identity-mapped, and
    // `gpa % MIB2` is inside it; the guest does not run while the manager
    // is locked.
    let old = unsafe {
        let old = p.read_volatile();
        p.write_volatile(!old);
        old
    };
    Ok(old)
}
