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
];

/// Version of the vCPU state blob.
pub(super) const VCPU_STATE_VERSION: u8 = 1;

/// The devices every guest has, as the migration protocol names them.
pub use crate::vmm::devices::DEVICES;

/// What a migration needs to know about a VM before it starts.
pub struct MigrationSource {
    pub mem_bytes: u64,
}

pub(super) fn with_vm<T>(
    name: &str,
    f: impl FnOnce(&Host, &mut Vm) -> Result<T, String>,
) -> Result<T, String> {
    let mut m = MANAGER.lock();
    let i = find(&mut m, name)?;
    let vmcs = m.vms[i].vmcs;
    make_current(&mut m, vmcs);
    let Manager { host, vms, .. } = &mut *m;
    let host = host.as_ref().ok_or("VMX is not enabled")?;
    f(host, &mut vms[i])
}

/// RAM of a running VM, for `migrate check`.
pub fn running_ram(name: &str) -> Result<u64, String> {
    let mut m = MANAGER.lock();
    let i = find(&mut m, name)?;
    let vm = &m.vms[i];
    if !vm.state.runs() {
        return Err(format!("VM '{name}' is not running ({})", vm.state.name()));
    }
    Ok(vm.ram_bytes())
}

/// Whether a VM of that name exists here.
pub fn exists(name: &str) -> bool {
    MANAGER.lock().vms.iter().any(|v| v.name == name)
}

/// Starts migrating `name` away: turns dirty tracking on.
pub fn migration_begin(name: &str) -> Result<MigrationSource, String> {
    with_vm(name, |host, vm| {
        if vm.migrating {
            return Err(format!("VM '{name}' is already being migrated"));
        }
        if !vm.state.runs() {
            return Err(format!("VM '{name}' is not running ({})", vm.state.name()));
        }
        dirty_start(host, vm)?;
        vm.migrating = true;
        Ok(MigrationSource {
            mem_bytes: vm.ram_bytes(),
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

/// The pages dirtied since the last call.
pub fn take_dirty(name: &str, f: &mut dyn FnMut(u64)) -> Result<(), String> {
    with_vm(name, |_, vm| {
        let b = dirty_take(vm)?;
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

pub fn save_state(name: &str) -> Result<(Vec<u8>, DeviceStates), String> {
    with_vm(name, |_, vm| {
        let r = &vm.regs;
        let mut v = alloc::vec![VCPU_STATE_VERSION];
        for x in [
            r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rbp, r.r8, r.r9, r.r10, r.r11, r.r12,
            r.r13, r.r14, r.r15, r.cr2,
        ] {
            v.extend_from_slice(&x.to_le_bytes());
        }
        // The guest's TSC now: the destination continues from it.
        let guest_tsc = arch::rdtsc().wrapping_add(vm.tsc_offset);
        v.extend_from_slice(&guest_tsc.to_le_bytes());
        v.push(u8::from(vm.state == State::Halted));
        v.push(vm.requests());
        v.extend_from_slice(&(MIGRATED_FIELDS.len() as u32).to_le_bytes());
        for &f in MIGRATED_FIELDS {
            v.extend_from_slice(&f.0.to_le_bytes());
            v.extend_from_slice(&vmread(f).to_le_bytes());
        }
        // Every device on the bus (DEVICES), even those without state.
        Ok((v, vm.bus.save()))
    })
}

/// Ends an outgoing migration: on commit the VM is freed here (it runs on
/// the destination); otherwise it resumes at full speed, untracked.
pub fn migration_end(name: &str, committed: bool) {
    let r = with_vm(name, |host, vm| {
        vm.migrating = false;
        vm.paused = false;
        vm.slow = 0;
        dirty_stop(host, vm);
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
pub fn reserve_incoming(name: &str, mem_bytes: u64) -> Result<(), String> {
    migrate::names::check_vm_name(name).map_err(|e| format!("{e}"))?;
    if mem_bytes == 0 || !mem_bytes.is_multiple_of(MIB2) || mem_bytes > super::MAX_VM_MIB << 20 {
        return Err(format!("bad guest RAM size {mem_bytes}"));
    }
    let mut m = MANAGER.lock();
    if m.vms.iter().any(|v| v.name == name) {
        return Err(format!("a VM named '{name}' already exists here"));
    }
    if m.host.is_none() {
        m.host = Some(enable_vmx()?);
    }
    let mut vm =
        new_vm(&m, name, mem_bytes, "(migrated)", 0, State::Incoming).map_err(|free| {
            format!(
                "not enough memory: the guest needs {} MiB, {} MiB free",
                mem_bytes >> 20,
                free >> 20
            )
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

pub(super) fn u64_at(b: &[u8], at: usize) -> Result<u64, String> {
    b.get(at..at + 8)
        .and_then(|s| s.try_into().ok())
        .map(u64::from_le_bytes)
        .ok_or_else(|| String::from("vcpu state: truncated"))
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
) -> Result<(), String> {
    let mut m = MANAGER.lock();
    let i = find(&mut m, name)?;
    if m.vms[i].state != State::Incoming {
        return Err(format!("VM '{name}' is not an incoming guest"));
    }
    fresh_launch(&mut m, i)?;
    let Manager { host, vms, .. } = &mut *m;
    let host = host.as_ref().ok_or("VMX is not enabled")?;
    let vm = &mut vms[i];
    if vcpu.first() != Some(&VCPU_STATE_VERSION) {
        return Err(String::from("vcpu state: unknown version"));
    }
    let mut regs = GuestRegs::default();
    let slots: [&mut u64; 16] = [
        &mut regs.rax,
        &mut regs.rbx,
        &mut regs.rcx,
        &mut regs.rdx,
        &mut regs.rsi,
        &mut regs.rdi,
        &mut regs.rbp,
        &mut regs.r8,
        &mut regs.r9,
        &mut regs.r10,
        &mut regs.r11,
        &mut regs.r12,
        &mut regs.r13,
        &mut regs.r14,
        &mut regs.r15,
        &mut regs.cr2,
    ];
    for (k, slot) in slots.into_iter().enumerate() {
        *slot = u64_at(vcpu, 1 + 8 * k)?;
    }
    let mut at = 1 + 8 * 16;
    let guest_tsc = u64_at(vcpu, at)?;
    at += 8;
    // The request counter also travels as the request port's state,
    // which is what the guest reads.
    let (&halted, &_requests) = (
        vcpu.get(at).ok_or("vcpu state: truncated")?,
        vcpu.get(at + 1).ok_or("vcpu state: truncated")?,
    );
    at += 2;
    let n = vcpu
        .get(at..at + 4)
        .and_then(|s| s.try_into().ok())
        .map(u32::from_le_bytes)
        .ok_or("vcpu state: truncated")? as usize;
    at += 4;
    if n != MIGRATED_FIELDS.len() || vcpu.len() != at + n * 12 {
        return Err(String::from("vcpu state: wrong field list"));
    }
    let mut fields = Vec::with_capacity(n);
    for (k, &f) in MIGRATED_FIELDS.iter().enumerate() {
        let o = at + k * 12;
        let enc = u32::from_le_bytes([vcpu[o], vcpu[o + 1], vcpu[o + 2], vcpu[o + 3]]);
        if enc != f.0 {
            return Err(format!("vcpu state: unexpected field {enc:#x}"));
        }
        fields.push((f, u64_at(vcpu, o + 4)?));
    }
    let mut bus = crate::vmm::devices::platform().map_err(|e| e.to_string())?;
    bus.restore(devices).map_err(|e| e.to_string())?;
    // Controls and host state as for any guest, then its own state.
    setup_vmcs(host, vm, 0);
    for (f, v) in fields {
        vmwrite(f, v);
    }
    let now = arch::rdtsc();
    let jump = crate::arch::time::tsc_hz() / 1_000_000 * paused_us;
    vm.tsc_offset = guest_tsc.wrapping_add(jump).wrapping_sub(now);
    vmwrite(Field::TSC_OFFSET, vm.tsc_offset);
    vm.regs = regs;
    vm.tick_period = bus
        .timer_period_tsc(crate::arch::time::tsc_hz())
        .unwrap_or(0);
    vm.next_tick = now.saturating_add(vm.tick_period);
    let _ = bus.take_timer_change();
    vm.bus = bus;
    vm.launched = false;
    vm.state = if halted == 1 {
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
