//! What live migration needs from the VM manager: the RAM, dirty pages,
//! pausing, and the vCPU and device state on both sides.

use super::prelude::*;

/// Guest-state VMCS fields that travel with a migrating vCPU (everything
/// setup_vmcs gives a guest, as the guest has changed it since).
pub(super) const MIGRATED_FIELDS: &[Field] = &[
    Field::GUEST_RIP,
    Field::GUEST_RSP,
    Field::GUEST_RFLAGS,
    Field::GUEST_CR0,
    Field::GUEST_CR3,
    Field::GUEST_CR4,
    Field::CR0_READ_SHADOW,
    Field::CR4_READ_SHADOW,
    Field::GUEST_IA32_EFER,
    Field::GUEST_DR7,
    Field::GUEST_ES_SELECTOR,
    Field::GUEST_ES_BASE,
    Field::GUEST_ES_LIMIT,
    Field::GUEST_ES_ACCESS_RIGHTS,
    Field::GUEST_CS_SELECTOR,
    Field::GUEST_CS_BASE,
    Field::GUEST_CS_LIMIT,
    Field::GUEST_CS_ACCESS_RIGHTS,
    Field::GUEST_SS_SELECTOR,
    Field::GUEST_SS_BASE,
    Field::GUEST_SS_LIMIT,
    Field::GUEST_SS_ACCESS_RIGHTS,
    Field::GUEST_DS_SELECTOR,
    Field::GUEST_DS_BASE,
    Field::GUEST_DS_LIMIT,
    Field::GUEST_DS_ACCESS_RIGHTS,
    Field::GUEST_FS_SELECTOR,
    Field::GUEST_FS_BASE,
    Field::GUEST_FS_LIMIT,
    Field::GUEST_FS_ACCESS_RIGHTS,
    Field::GUEST_GS_SELECTOR,
    Field::GUEST_GS_BASE,
    Field::GUEST_GS_LIMIT,
    Field::GUEST_GS_ACCESS_RIGHTS,
    Field::GUEST_LDTR_SELECTOR,
    Field::GUEST_LDTR_BASE,
    Field::GUEST_LDTR_LIMIT,
    Field::GUEST_LDTR_ACCESS_RIGHTS,
    Field::GUEST_TR_SELECTOR,
    Field::GUEST_TR_BASE,
    Field::GUEST_TR_LIMIT,
    Field::GUEST_TR_ACCESS_RIGHTS,
    Field::GUEST_GDTR_BASE,
    Field::GUEST_GDTR_LIMIT,
    Field::GUEST_IDTR_BASE,
    Field::GUEST_IDTR_LIMIT,
    Field::GUEST_INTERRUPTIBILITY_STATE,
    Field::GUEST_ACTIVITY_STATE,
    Field::GUEST_PENDING_DEBUG_EXCEPTIONS,
    Field::GUEST_IA32_SYSENTER_CS,
    Field::GUEST_IA32_SYSENTER_ESP,
    Field::GUEST_IA32_SYSENTER_EIP,
    Field::GUEST_IA32_DEBUGCTL,
    Field::GUEST_IA32_PAT,
];

/// The devices every guest has, as the migration protocol names them.
pub use crate::vmm::devices::DEVICES;

/// What a migration needs to know about a VM before it starts.
pub struct MigrationSource {
    pub mem_bytes: u64,
    /// The CPU the guest sees; the destination must offer all of it.
    pub profile: Profile,
}

/// Runs `f` on the VM named `name` with its VMCS current.
pub(super) fn with_vm<T>(
    name: &str,
    f: impl FnOnce(&Host, &mut Vm) -> Result<T, VmError>,
) -> Result<T, VmError> {
    with_vm_owner(name, |host, _, vm| f(host, vm))
}

/// As [`with_vm`], also passing the id of the VM whose guest context the
/// CPU holds.
pub(super) fn with_vm_owner<T>(
    name: &str,
    f: impl FnOnce(&Host, u64, &mut Vm) -> Result<T, VmError>,
) -> Result<T, VmError> {
    let mut m = MANAGER.lock();
    let i = find(&mut m, name)?;
    let vmcs = m.vms[i].vmcs;
    make_current(&mut m, vmcs);
    let Manager {
        host,
        vms,
        ctx_owner,
        ..
    } = &mut *m;
    let host = host.as_ref().ok_or(VmError::NoVmx)?;
    f(host, *ctx_owner, &mut vms[i])
}

/// What this host can offer a migrating guest's CPU profile (VMX is
/// enabled for the answer if it is not yet; without VT-x, the CPUID
/// features alone, RDRAND/RDSEED hidden).
pub fn cpu_offer() -> vcpu::profile::HostOffer {
    let mut m = MANAGER.lock();
    if m.host.is_none() {
        m.host = enable_vmx().ok();
    }
    match m.host.as_ref() {
        Some(host) => host.offer,
        None => offerable(
            vcpu::profile::HostOffer::read(&HostCpuid),
            vcpu::profile::RandExits::default(),
        ),
    }
}

/// The CPU profile of a VM, for migration.
pub fn profile_of(name: &str) -> Result<Profile, VmError> {
    let mut m = MANAGER.lock();
    let i = find(&mut m, name)?;
    Ok(m.vms[i].profile.clone())
}

/// RAM of a running VM, for `migrate check`.
pub fn running_ram(name: &str) -> Result<u64, VmError> {
    let mut m = MANAGER.lock();
    let i = find(&mut m, name)?;
    let vm = &m.vms[i];
    vm.must_run()?;
    Ok(vm.ram_bytes())
}

/// Whether a VM of that name exists here.
pub fn exists(name: &str) -> bool {
    MANAGER.lock().vms.iter().any(|v| v.name == name)
}

/// Starts migrating `name` away: turns dirty tracking on.
pub fn migration_begin(name: &str) -> Result<MigrationSource, VmError> {
    with_vm(name, |host, vm| {
        if vm.migrating {
            return Err(VmError::AlreadyMigrating(name.into()));
        }
        if vm.ft.is_some() {
            return Err(VmError::Protected(name.into()));
        }
        vm.must_run()?;
        vm.migration_view = Some(dirty_open(host, vm)?);
        vm.migrating = true;
        Ok(MigrationSource {
            mem_bytes: vm.ram_bytes(),
            profile: vm.profile.clone(),
        })
    })
}

/// Copies guest page `gfn` into `buf` (zeros if out of range).
pub fn read_page(name: &str, gfn: u64, buf: &mut [u8; 4096]) {
    let m = MANAGER.lock();
    let Some(vm) = m.vms.iter().find(|v| v.name == name) else {
        buf.fill(0);
        return;
    };
    match vm.host_ptr(gfn * PAGE_SIZE, PAGE_SIZE) {
        // SAFETY: the page lies inside one 2 MiB chunk of this VM's RAM,
        // which the guest cannot write now (its VM is not running: the
        // caller runs between slices on this single CPU).
        Some(p) => buf.copy_from_slice(unsafe { core::slice::from_raw_parts(p, 4096) }),
        None => buf.fill(0),
    }
}

/// The pages dirtied since the last call (the migration's own view).
pub fn take_dirty(name: &str, f: &mut dyn FnMut(u64)) -> Result<(), VmError> {
    with_vm(name, |_, vm| {
        let view = vm.migration_view.ok_or(VmError::NotTracked)?;
        let b = dirty_take(vm, view)?;
        b.iter().for_each(&mut *f);
        Ok(())
    })
}

/// Pauses or resumes a migrating VM; sets its auto-converge level.
pub fn set_paused(name: &str, paused: bool) {
    let _ = with_vm(name, |_, vm| {
        vm.paused = paused;
        Ok(())
    });
}

/// Auto-converge: one timer tick in 2^level reaches the guest.
pub fn set_slow(name: &str, level: u8) {
    let _ = with_vm(name, |_, vm| {
        vm.slow = level.min(6);
        Ok(())
    });
}

/// The vCPU and device state of a paused VM.
/// Saved devices: (name, state) pairs.
pub type DeviceStates = Vec<(String, Vec<u8>)>;

pub fn save_state(name: &str) -> Result<(Vec<u8>, DeviceStates), VmError> {
    with_vm_owner(name, |host, owner, vm| {
        // The CPU may hold this guest's registers: into its context first.
        sync_context(host, owner, vm);
        let r = &vm.regs;
        let now = arch::rdtsc();
        let state = vcpu::state::VcpuState {
            gprs: [
                r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rbp, r.r8, r.r9, r.r10, r.r11, r.r12,
                r.r13, r.r14, r.r15,
            ],
            cr2: r.cr2,
            // The guest's TSC now: the destination continues from it.
            guest_tsc: vm.clock.tsc(now),
            halted: vm.state == State::Halted,
            rdtsc_exiting: vm.clock.exiting,
            vmcs: MIGRATED_FIELDS.iter().map(|&f| (f.0, vmread(f))).collect(),
            xcr0: vm.ctx.xcr0,
            xsave: vm.ctx.xsave.to_image(&host.xstate, vm.xcr0_allowed),
            dr: vm.ctx.dr,
            dr6: vm.ctx.dr6,
            msrs: context::SYSCALL_MSRS
                .iter()
                .copied()
                .zip(vm.ctx.msrs)
                .collect(),
            // An event the next entry would inject (one whose delivery an
            // exit interrupted, a #GP for a refused instruction).
            pending: vcpu::state::PendingEvent {
                info: vmread(Field::ENTRY_INTERRUPTION_INFO) as u32,
                error_code: vmread(Field::ENTRY_EXCEPTION_ERROR_CODE) as u32,
                instruction_len: vmread(Field::ENTRY_INSTRUCTION_LENGTH) as u32,
            },
            timer: vm.clock.phase(now),
        };
        // Every device on the bus (DEVICES), even those without state.
        Ok((state.encode(), vm.bus.save()))
    })
}

/// Ends an outgoing migration: on commit the VM is freed here (it runs on
/// the destination); otherwise it resumes at full speed, untracked.
pub fn migration_end(name: &str, committed: bool) {
    let r = with_vm(name, |host, vm| {
        vm.migrating = false;
        vm.paused = false;
        vm.slow = 0;
        if let Some(view) = vm.migration_view.take() {
            dirty_close(host, vm, view);
        }
        Ok(())
    });
    if committed
        && r.is_ok()
        && let Err(e) = delete(name)
    {
        log::warn!("migrate: freeing {name}: {e}");
    }
}

/// Free RAM for guests, in bytes (what a destination can reserve).
pub fn free_ram_bytes() -> u64 {
    crate::mm::FRAMES
        .lock()
        .as_ref()
        .map_or(0, |f| f.free_frames() * PAGE_SIZE)
}

/// Reserves RAM and a VMCS for a guest migrating here.
pub fn reserve_incoming(name: &str, mem_bytes: u64, profile: Profile) -> Result<(), VmError> {
    migrate::names::check_vm_name(name).map_err(|e| VmError::BadName(e.to_string()))?;
    if mem_bytes == 0 || !mem_bytes.is_multiple_of(MIB2) || mem_bytes > super::MAX_VM_MIB << 20 {
        return Err(VmError::BadRamSize(mem_bytes));
    }
    let mut m = MANAGER.lock();
    if m.vms.iter().any(|v| v.name == name) {
        return Err(VmError::ExistsHere(name.into()));
    }
    if m.host.is_none() {
        m.host = Some(enable_vmx()?);
    }
    if let Some(host) = m.host.as_ref() {
        let missing = profile.missing_on(&host.offer);
        if !missing.is_empty() {
            return Err(VmError::ProfileMissing {
                profile: profile.name().into(),
                missing: missing.join(", "),
            });
        }
    }
    let mut vm = new_vm(
        &mut m,
        name,
        mem_bytes,
        "(migrated)",
        0,
        State::Incoming,
        profile,
    )
    .map_err(|free| VmError::NoMemoryIncoming {
        mib: mem_bytes >> 20,
        free: free >> 20,
    })??;
    // Pages from the source land here: a later `vm start` must zero again.
    vm.ram_zeroed = false;
    m.vms.push(vm);
    Ok(())
}

/// Writes one page of an incoming guest (`None`: a zero page).
pub fn write_incoming_page(name: &str, gfn: u64, data: Option<&[u8; 4096]>) {
    let m = MANAGER.lock();
    let Some(vm) = m
        .vms
        .iter()
        .find(|v| v.name == name && v.state == State::Incoming)
    else {
        return;
    };
    if let Some(p) = vm.host_ptr(gfn * PAGE_SIZE, PAGE_SIZE) {
        // SAFETY: the page lies in one 2 MiB chunk of this incoming VM's
        // RAM, which no guest runs on yet.
        unsafe {
            match data {
                Some(d) => core::ptr::copy_nonoverlapping(d.as_ptr(), p, 4096),
                None => core::ptr::write_bytes(p, 0, 4096),
            }
        }
    }
}

/// Pages of an incoming guest (0 if there is none by that name).
pub fn incoming_pages(name: &str) -> u64 {
    let m = MANAGER.lock();
    m.vms
        .iter()
        .find(|v| v.name == name && v.state == State::Incoming)
        .map_or(0, |v| v.ram_bytes() / PAGE_SIZE)
}

/// Starts an incoming guest from its vCPU and device state. `paused_us`:
/// how long ago its state arrived (the TSC in the state was read as it
/// left the source, its pause so far included): the TSC moves on by that
/// much, so the guest sees the whole downtime and no more.
pub fn start_incoming(
    name: &str,
    vcpu: &[u8],
    devices: &[(String, Vec<u8>)],
    paused_us: u64,
) -> Result<(), VmError> {
    let mut m = MANAGER.lock();
    let i = find(&mut m, name)?;
    if m.vms[i].state != State::Incoming {
        return Err(VmError::NotIncoming(name.into()));
    }
    fresh_launch(&mut m, i)?;
    let Manager { host, vms, .. } = &mut *m;
    let host = host.as_ref().ok_or(VmError::NoVmx)?;
    let vm = &mut vms[i];
    let state = vcpu::state::VcpuState::decode(vcpu).map_err(|e| VmError::State(e.to_string()))?;
    let listed: Vec<u32> = state.vmcs.iter().map(|&(f, _)| f).collect();
    if !listed
        .iter()
        .copied()
        .eq(MIGRATED_FIELDS.iter().map(|f| f.0))
    {
        return Err(VmError::State("wrong field list".into()));
    }
    let pat = state
        .vmcs
        .iter()
        .find(|&&(f, _)| f == Field::GUEST_IA32_PAT.0);
    if pat.is_some_and(|&(_, v)| !pat_ok(v)) {
        return Err(VmError::State("invalid PAT".into()));
    }
    if !context::SYSCALL_MSRS
        .iter()
        .copied()
        .eq(state.msrs.iter().map(|&(m, _)| m))
        || !state
            .msrs
            .iter()
            .all(|&(m, v)| context::syscall_msr_ok(m, v))
    {
        return Err(VmError::State("bad SYSCALL MSRs".into()));
    }
    // XCR0 as XSETBV would have to accept it here (a lying source cannot
    // make the hypervisor load a value the CPU refuses).
    if host.xstate.xsave {
        vcpu::xcr0::check_xsetbv(0, state.xcr0, vm.xcr0_allowed)
            .map_err(|e| VmError::State(e.to_string()))?;
    } else if state.xcr0 != 1 {
        return Err(VmError::State(format!(
            "XCR0 {:#x} on a host without XSAVE",
            state.xcr0
        )));
    }
    let xsave = context::XsaveArea::from_image(&host.xstate, vm.xcr0_allowed, &state.xsave)
        .map_err(|e| VmError::State(e.to_string()))?;
    let g = &state.gprs;
    let regs = GuestRegs {
        rax: g[0],
        rbx: g[1],
        rcx: g[2],
        rdx: g[3],
        rsi: g[4],
        rdi: g[5],
        rbp: g[6],
        r8: g[7],
        r9: g[8],
        r10: g[9],
        r11: g[10],
        r12: g[11],
        r13: g[12],
        r14: g[13],
        r15: g[14],
        cr2: state.cr2,
    };
    let guest_tsc = state.guest_tsc;
    let halted = state.halted;
    let mut bus = crate::vmm::devices::platform().map_err(VmError::Platform)?;
    bus.restore(devices).map_err(VmError::Devices)?;
    // Controls and host state as for any guest, then its own state.
    setup_vmcs(host, vm, 0);
    for &(f, v) in &state.vmcs {
        vmwrite(Field(f), v);
    }
    let p = state.pending;
    vmwrite(Field::ENTRY_INTERRUPTION_INFO, u64::from(p.info));
    vmwrite(Field::ENTRY_EXCEPTION_ERROR_CODE, u64::from(p.error_code));
    vmwrite(
        Field::ENTRY_INSTRUCTION_LENGTH,
        u64::from(p.instruction_len),
    );
    vm.ctx = GuestContext {
        xsave,
        xcr0: state.xcr0,
        dr: state.dr,
        dr6: state.dr6,
        msrs: core::array::from_fn(|k| state.msrs[k].1),
        dr_virtual: false,
    };
    let now = arch::rdtsc();
    let jump = crate::arch::time::tsc_hz() / 1_000_000 * paused_us;
    vm.clock.restart(now, guest_tsc.wrapping_add(jump));
    // rdtsc=exit (a VM option) moves with the guest.
    vm.clock.exiting = state.rdtsc_exiting;
    vmwrite(Field::TSC_OFFSET, vm.clock.offset());
    vm.regs = regs;
    // The timer resumes where it was in its period (the period itself
    // from the PIT, in this host's TSC ticks).
    vm.clock.resume_phase(
        crate::vmm::clock::TimerPhase {
            period: bus
                .timer_period_tsc(crate::arch::time::tsc_hz())
                .unwrap_or(0),
            next_in: state.timer.next_in,
        },
        now,
    );
    let _ = bus.take_timer_change();
    vm.bus = bus;
    vm.launched = false;
    vm.state = if halted {
        State::Halted
    } else {
        State::Running
    };
    vm.started_tsc = now;
    Ok(())
}

/// Frees an incoming guest that will not start (abort, link lost).
pub fn discard_incoming(name: &str) {
    let is_incoming = MANAGER
        .lock()
        .vms
        .iter()
        .any(|v| v.name == name && v.state == State::Incoming);
    if is_incoming {
        let _ = delete(name);
    }
}
