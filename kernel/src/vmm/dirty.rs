//! Dirty-page tracking for live migration and `vm dirty`.

use super::prelude::*;

/// Drops every cached EPT translation (after write access was removed or
/// dirty flags cleared).
pub(super) fn invept_all() {
    // SAFETY: VMX is on (a VM exists); all-context INVEPT is supported by
    // every CPU with EPT that Bochs or hardware offers with A/D or WP
    // tracking (IA32_VMX_EPT_VPID_CAP bit 26 is checked at enable time in
    // practice; a VMfail here is only logged).
    if let Err(e) = unsafe { insn::invept(insn::InveptKind::AllContext, 0) } {
        log::warn!("vmx: INVEPT failed: {e:?}");
    }
}

/// Records the PML buffer's entries and resets its index (a PML-full exit,
/// or before taking the dirty set). The VM's VMCS must be current.
pub(super) fn drain_pml(vm: &mut Vm) {
    let (Some(log), page) = (vm.dirty.as_mut(), vm.pml_page) else {
        return;
    };
    if page == 0 {
        return;
    }
    // SAFETY: pml_page is this VM's 4 KiB PML buffer (identity-mapped RAM);
    // the CPU writes it only while the guest runs, which it does not now.
    let buffer = unsafe { &*(page as *const [u64; 512]) };
    let index = vmread(Field::PML_INDEX) as u16;
    let reset = log.drain_pml(buffer, index);
    vmwrite(Field::PML_INDEX, u64::from(reset));
}

/// Opens a view of the dirty log for one consumer of a VM whose VMCS is
/// current, turning tracking on if it is off. The view sees the pages
/// written from now on.
pub(super) fn dirty_open(host: &Host, vm: &mut Vm) -> Result<ept::ViewId, VmError> {
    dirty_start(host, vm)?;
    let log = vm.dirty.as_mut().ok_or(VmError::DirtyOff)?;
    log.open_view().map_err(VmError::Dirty)
}

/// Closes a consumer's view; tracking stops with the last one.
pub(super) fn dirty_close(host: &Host, vm: &mut Vm, view: ept::ViewId) {
    let Some(log) = vm.dirty.as_mut() else {
        return;
    };
    if let Err(e) = log.close_view(view) {
        log::warn!("vm {}: {e}", vm.name);
    }
    if !log.has_views() {
        dirty_stop(host, vm);
    }
}

/// Turns dirty tracking on for a VM whose VMCS is current.
fn dirty_start(host: &Host, vm: &mut Vm) -> Result<(), VmError> {
    if vm.dirty.is_some() {
        return Ok(());
    }
    let pages = vm.ram_bytes() / PAGE_SIZE;
    let mut log = ept::DirtyLog::new(host.dirty_mechanism, pages);
    if host.dirty_mechanism == ept::Mechanism::Pml {
        let page = alloc_page().ok_or(VmError::NoPage("PML buffer"))?;
        vmwrite(Field::PML_ADDRESS, page);
        vmwrite(Field::PML_INDEX, u64::from(ept::DirtyLog::PML_INDEX_RESET));
        vm.pml_page = page;
    }
    match log.start(&mut vm.ept, &mut IdentityMem, &mut KernelFrames) {
        Ok(flush) => {
            if flush {
                invept_all();
            }
        }
        Err(e) => {
            if vm.pml_page != 0 {
                free_page(core::mem::take(&mut vm.pml_page));
            }
            return Err(VmError::Dirty(e.into()));
        }
    }
    if vm.pml_page != 0 {
        let secondary = host.secondary | SecondaryControls::ENABLE_PML.bits();
        vmwrite(Field::SECONDARY_PROC_CONTROLS, u64::from(secondary));
    }
    vm.dirty = Some(log);
    Ok(())
}

/// The pages written since this view's last take (or since it opened).
/// The VM's VMCS must be current and the guest not running.
pub(super) fn dirty_take(vm: &mut Vm, view: ept::ViewId) -> Result<ept::DirtyBitmap, VmError> {
    drain_pml(vm);
    let Vm { dirty, ept, .. } = vm;
    let log = dirty.as_mut().ok_or(VmError::DirtyOff)?;
    let (bitmap, flush) = log
        .take(view, ept, &mut IdentityMem, &mut KernelFrames)
        .map_err(VmError::Dirty)?;
    if flush {
        invept_all();
    }
    Ok(bitmap)
}

/// Turns dirty tracking off (VMCS current), restoring the EPT as it was;
/// every view closes with it.
pub(super) fn dirty_stop(host: &Host, vm: &mut Vm) {
    vm.migration_view = None;
    vm.console_view = None;
    let Some(mut log) = vm.dirty.take() else {
        return;
    };
    match log.stop(&mut vm.ept, &mut IdentityMem, &mut KernelFrames) {
        Ok(true) => invept_all(),
        Ok(false) => {}
        Err(e) => log::warn!("vm {}: stopping dirty tracking: {e}", vm.name),
    }
    if vm.pml_page != 0 {
        vmwrite(Field::SECONDARY_PROC_CONTROLS, u64::from(host.secondary));
        free_page(core::mem::take(&mut vm.pml_page));
    }
}

/// `vm dirty <name>`: turns tracking on, or reports the pages written
/// since the last look.
pub fn dirty(name: &str) -> Result<(), VmError> {
    with_vm(name, |host, vm| {
        vm.must_run()?;
        dirty_look(host, vm, name)
    })
}

/// The console's own view: a `vm dirty` during a live migration sees the
/// guest's writes without taking them from the migration.
pub(super) fn dirty_look(host: &Host, vm: &mut Vm, name: &str) -> Result<(), VmError> {
    if let Some(view) = vm.console_view {
        let b = dirty_take(vm, view)?;
        println!(
            "vm {name}: {} pages dirty since the last look ({})",
            b.count(),
            host.dirty_mechanism
        );
    } else {
        vm.console_view = Some(dirty_open(host, vm)?);
        println!("vm {name}: dirty tracking on ({})", host.dirty_mechanism);
    }
    Ok(())
}
