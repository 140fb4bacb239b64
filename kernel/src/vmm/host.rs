//! VMX on the host CPU: enabling it, the controls it negotiates, VMCS
//! access, and the page frames and physical-memory view EPT is built from.

use vmx::caps::VmxCapabilities;

use super::prelude::*;

/// Enables VMX operation on the boot CPU. Called once, at the first `vm create`.
pub(super) fn enable_vmx() -> Result<Host, VmError> {
    let cpuid1 = arch::cpuid(1, 0).2;
    let caps = VmxCapabilities::read(&mut |msr| crate::vmm::vmxcaps::read_msr(msr), cpuid1)
        .map_err(|e| VmError::Vmx(format!("VT-x is not available: {e}")))?;
    if !caps.ept() {
        return Err(VmError::Vmx(
            "this CPU has VT-x but no EPT; guests need EPT".into(),
        ));
    }
    use vmx::controls::negotiate;
    let pin = negotiate(
        "pin-based",
        caps.pin,
        (PinControls::EXTERNAL_INTERRUPT_EXITING | PinControls::NMI_EXITING).bits(),
        PinControls::PREEMPTION_TIMER.bits(),
    )
    .map_err(|e| VmError::Vmx(e.to_string()))?;
    let primary = negotiate(
        "primary processor-based",
        caps.proc,
        (PrimaryControls::HLT_EXITING
            | PrimaryControls::UNCONDITIONAL_IO_EXITING
            | PrimaryControls::USE_TSC_OFFSETTING
            | PrimaryControls::ACTIVATE_SECONDARY_CONTROLS)
            .bits(),
        0,
    )
    .map_err(|e| VmError::Vmx(e.to_string()))?;
    let secondary = negotiate(
        "secondary processor-based",
        caps.proc2,
        SecondaryControls::ENABLE_EPT.bits(),
        // RDRAND/RDSEED exit where the CPU can make them: their values
        // then come through the hypervisor (guest_random); where it cannot,
        // CPU profiles hide the instructions.
        (SecondaryControls::UNRESTRICTED_GUEST
            | SecondaryControls::ENABLE_RDTSCP
            | SecondaryControls::RDRAND_EXITING
            | SecondaryControls::RDSEED_EXITING)
            .bits(),
    )
    .map_err(|e| VmError::Vmx(e.to_string()))?;
    let exit = negotiate(
        "VM-exit",
        caps.exit,
        (ExitControls::HOST_ADDRESS_SPACE_SIZE
            | ExitControls::SAVE_IA32_EFER
            | ExitControls::LOAD_IA32_EFER
            // The guest's DR7/DEBUGCTL and PAT are its own: saved on exit,
            // loaded on entry, the host's PAT restored.
            | ExitControls::SAVE_DEBUG_CONTROLS
            | ExitControls::SAVE_IA32_PAT
            | ExitControls::LOAD_IA32_PAT)
            .bits(),
        0,
    )
    .map_err(|e| VmError::Vmx(e.to_string()))?;
    let entry = negotiate(
        "VM-entry",
        caps.entry,
        (EntryControls::IA32E_MODE_GUEST
            | EntryControls::LOAD_IA32_EFER
            | EntryControls::LOAD_DEBUG_CONTROLS
            | EntryControls::LOAD_IA32_PAT)
            .bits(),
        0,
    )
    .map_err(|e| VmError::Vmx(e.to_string()))?;

    // IA32_FEATURE_CONTROL: OVMF leaves it unlocked (TESTBED.md); lock it
    // with "VMX outside SMX" as firmware would. Locked without it: refuse.
    let fc = crate::vmm::vmxcaps::read_msr(crate::vmm::vmxcaps::MSR_FEATURE_CONTROL);
    if fc & 1 == 0 {
        // SAFETY: the MSR exists (CPUID.1:ECX.VMX is set) and is unlocked;
        // setting lock + VMX-outside-SMX is what firmware does at boot.
        unsafe { arch::wrmsr(crate::vmm::vmxcaps::MSR_FEATURE_CONTROL, fc | 1 | (1 << 2)) };
    } else if fc & (1 << 2) == 0 {
        return Err(VmError::Vmx(
            "the firmware locked IA32_FEATURE_CONTROL with VMX disabled; enable VT-x in its setup"
                .into(),
        ));
    }
    // The host itself runs with paging and protection on, so it takes the
    // strict CR0 fixed bits (SDM 24.8); guests get their own in setup_vmcs.
    let cr0_fixed = (caps.cr0_fixed.fixed0, caps.cr0_fixed.fixed1);
    let cr4_fixed = (caps.cr4_fixed.fixed0, caps.cr4_fixed.fixed1);
    // SAFETY: CR0/CR4 are adjusted to the VMX fixed bits (SDM 24.8), which
    // only force bits such as CR0.NE and CR4.VMXE that the kernel does not
    // rely on being clear.
    unsafe {
        arch::write_cr0((arch::cr0() | cr0_fixed.0) & cr0_fixed.1);
        arch::write_cr4((arch::cr4() | cr4_fixed.0 | (1 << 13)) & cr4_fixed.1);
    }
    let region = alloc_page().ok_or(VmError::NoPage("VMXON region"))?;
    // SAFETY: region is a fresh zeroed frame; the revision id goes first.
    unsafe { core::ptr::write_volatile(region as *mut u32, caps.basic.revision_id) };
    // SAFETY: CR4.VMXE is set, CR0/CR4 satisfy the fixed bits, feature
    // control allows VMXON outside SMX and `region` is a 4 KiB-aligned
    // VMXON region with the right revision id.
    unsafe { insn::vmxon(region) }.map_err(|e| VmError::VmxInsn {
        what: "VMXON",
        why: format!("{e:?}"),
    })?;
    let timer_rate = u32::from(caps.misc.preemption_timer_rate);
    log::info!(
        "vmx: enabled (VMCS revision {:#x}, preemption timer {})",
        caps.basic.revision_id,
        if pin & PinControls::PREEMPTION_TIMER.bits() != 0 {
            "on"
        } else {
            "off"
        }
    );
    let ept_ad = caps.ept_ad();
    let pml = caps.pml() && ept_ad;
    let dirty_mechanism = ept::choose(ept_ad, pml);
    let rand_exits = vcpu::profile::RandExits {
        rdrand: secondary & SecondaryControls::RDRAND_EXITING.bits() != 0,
        rdseed: secondary & SecondaryControls::RDSEED_EXITING.bits() != 0,
    };
    let offer = offerable(vcpu::profile::HostOffer::read(&HostCpuid), rand_exits);
    let xstate = context::host_init(&offer);
    log::info!(
        "vmx: guest extended state by {} (xcr0 up to {:#x}, {} bytes)",
        if xstate.xsave { "XSAVE" } else { "FXSAVE" },
        xstate.xcr0_max,
        xstate.area_size
    );
    log::info!("vmx: dirty-page tracking by {dirty_mechanism}");
    Ok(Host {
        caps,
        pin,
        primary,
        secondary,
        exit,
        entry,
        timer_rate,
        cr0_fixed,
        cr4_fixed,
        ept_ad,
        dirty_mechanism,
        xstate,
        offer,
        rand_exits,
    })
}

/// Zeroes 2 MiB chunks of guest RAM.
pub(super) fn zero_chunks(chunks: &[u64]) {
    for &c in chunks {
        // SAFETY: each chunk is 2 MiB of guest RAM this module allocated,
        // identity-mapped, and no guest runs on it while it is zeroed (a
        // VM being created or started is not scheduled).
        unsafe { core::ptr::write_bytes(c as *mut u8, 0, MIB2 as usize) };
    }
}

pub(super) fn alloc_page() -> Option<u64> {
    let pa = crate::mm::FRAMES.lock().as_mut()?.alloc()?.as_u64();
    // SAFETY: a fresh frame from the allocator, identity-mapped, ours.
    unsafe { core::ptr::write_bytes(pa as *mut u8, 0, PAGE_SIZE as usize) };
    Some(pa)
}

pub(super) fn free_page(pa: u64) {
    if let Some(f) = crate::mm::FRAMES.lock().as_mut() {
        let _ = f.free(crate::mm::addr::Hpa::new(pa));
    }
}

/// Physical memory through the kernel's identity map, for the EPT code.
pub(super) struct IdentityMem;

impl ept::PhysMem for IdentityMem {
    fn read_u64(&self, pa: ept::Hpa) -> u64 {
        // SAFETY: EPT table pages are frames the kernel allocated, identity-
        // mapped and 8-byte aligned entries.
        unsafe { core::ptr::read_volatile(pa.as_u64() as *const u64) }
    }

    fn write_u64(&mut self, pa: ept::Hpa, v: u64) {
        // SAFETY: as read_u64.
        unsafe { core::ptr::write_volatile(pa.as_u64() as *mut u64, v) }
    }
}

/// Page-table frames for EPT from the kernel's allocator.
pub(super) struct KernelFrames;

impl ept::FrameAlloc for KernelFrames {
    fn alloc_zeroed(&mut self) -> Option<ept::Hpa> {
        alloc_page().map(ept::Hpa::new)
    }

    fn free(&mut self, pa: ept::Hpa) {
        free_page(pa.as_u64());
    }
}

// ---------------------------------------------------------------------------
// VMCS access

/// Reads a field of the current VMCS.
pub(super) fn vmread(f: Field) -> u64 {
    // SAFETY: only called while this CPU is in VMX operation with a current
    // VMCS (the manager vmptrlds before touching a VM); a field this CPU
    // does not support fails cleanly and reads as 0.
    unsafe { insn::vmread(f) }.unwrap_or(0)
}

/// Writes a field of the current VMCS.
pub(super) fn vmwrite(f: Field, v: u64) {
    // SAFETY: as vmread; a failure is reported, not ignored silently.
    if let Err(e) = unsafe { insn::vmwrite(f, v) } {
        log::error!("vmx: VMWRITE {:#x} = {v:#x} failed: {e:?}", f.0);
    }
}

pub(super) fn make_current(m: &mut Manager, vmcs: u64) {
    if m.current_vmcs != vmcs {
        // SAFETY: `vmcs` is a VMCS region this manager initialised with
        // VMCLEAR and the right revision id.
        if let Err(e) = unsafe { insn::vmptrld(vmcs) } {
            log::error!("vmx: VMPTRLD {vmcs:#x} failed: {e:?}");
        }
        m.current_vmcs = vmcs;
    }
}

/// What CPU profiles may offer on a host whose CPUID offers `offer`:
/// everything but RDRAND/RDSEED where the CPU cannot make them exit (their
/// values must come through the hypervisor).
pub fn offerable(
    mut offer: vcpu::profile::HostOffer,
    exits: vcpu::profile::RandExits,
) -> vcpu::profile::HostOffer {
    if !exits.rdrand {
        offer.features.remove("rdrand");
    }
    if !exits.rdseed {
        offer.features.remove("rdseed");
    }
    offer
}

/// The host CPU's CPUID, for CPU profiles.
pub struct HostCpuid;

impl vcpu::profile::CpuidSource for HostCpuid {
    fn cpuid(&self, leaf: u32, sub: u32) -> [u32; 4] {
        let (a, b, c, d) = arch::cpuid(leaf, sub);
        [a, b, c, d]
    }
}
