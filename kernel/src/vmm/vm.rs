//! The VM manager: guests under VT-x with EPT, time-sliced on the boot CPU.
//!
//! ```text
//!   console loop ──► vm::run_slice() ──► pick next runnable VM (round robin)
//!                                         │ vmptrld its VMCS, inject a due
//!                                         │ timer interrupt, arm the
//!                                         │ preemption timer (one slice)
//!                                         ▼
//!                                   VMLAUNCH/VMRESUME ... VM exit
//!                                         │ handle the exit (CPUID, I/O,
//!                                         │ HLT, MSR, CR, EPT violation...)
//!                                         ▼
//!                            back to the console loop (input, other VMs)
//! ```
//!
//! Each guest starts directly in 64-bit mode: the hypervisor writes its
//! page tables (first 4 GiB identity-mapped with 2 MiB pages, at 0x1000-
//! 0x6FFF), a GDT (0x8000) and its registers; see `guests/src/lib.rs` for
//! the whole contract. Guest RAM is host memory in 2 MiB runs, mapped by EPT
//! at guest-physical 0; anything outside it is not mapped, so a guest that
//! touches it exits with an EPT violation and is stopped with a report.
//!
//! Reference: Intel SDM Vol. 3C, chapters 25-28 (VMCS, VM entry, VM exit),
//! revision 084.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use spin::Mutex;
use vmx::caps::VmxCapabilities;
use vmx::controls::{EntryControls, ExitControls, PinControls, PrimaryControls, SecondaryControls};
use vmx::exit::{CrAccessKind, ExitReason, InterruptionInfo, IoQualification};
use vmx::insn::{self, GuestRegs, VmFail};
use vmx::vmcs::Field;

use crate::mm::addr::PAGE_SIZE;
use crate::events::emit as async_line;
use crate::vmm::devices::{Pic, Pit, Uart};
use crate::{arch, println};

const MIB2: u64 = 2 << 20;
/// Guest-physical layout set up by the hypervisor.
const GUEST_PML4: u64 = 0x1000;
const GUEST_PDPT: u64 = 0x2000;
const GUEST_PD: u64 = 0x3000; // four PDs: 0x3000-0x6FFF
const GUEST_GDT: u64 = 0x8000;
const GUEST_STACK_TOP: u64 = 0x80000;
/// Guest images load from 1 MiB up.
pub const GUEST_IMAGE_BASE: u64 = 0x10_0000;
/// The guest's 16550 is also memory-mapped here (registers one byte apart),
/// through EPT violations and [`crate::mmio`] instruction decoding.
pub const MMIO_UART_BASE: u64 = 0xfe00_0000;
const MMIO_UART_LEN: u64 = 0x1000;
/// Time slice per VM entry.
const SLICE_MS: u64 = 5;
/// CPUID leaf 0x40000000 signature (EBX, ECX, EDX): "hvhypervisor".
const SIGNATURE: [u32; 3] = [
    u32::from_le_bytes(*b"hvhy"),
    u32::from_le_bytes(*b"perv"),
    u32::from_le_bytes(*b"isor"),
];

/// Lifecycle of a VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// Created, never started.
    Created,
    /// Running (or runnable).
    Running,
    /// Halted until its next timer interrupt.
    Halted,
    /// Stopped: by the guest through the exit port (with its code), or by the operator.
    Stopped { code: Option<u32> },
    /// Stopped by the hypervisor because the guest did something it may not
    /// (memory outside its RAM, an unsupported exit): the report.
    Faulted(String),
    /// The guest triple-faulted.
    Crashed(String),
    /// RAM reserved for a guest migrating here; not runnable until the
    /// source commits.
    Incoming,
}

impl State {
    fn name(&self) -> &'static str {
        match self {
            State::Created => "created",
            State::Running => "running",
            State::Halted => "halted",
            State::Stopped { .. } => "stopped",
            State::Faulted(_) => "faulted",
            State::Crashed(_) => "crashed",
            State::Incoming => "incoming",
        }
    }

    fn runs(&self) -> bool {
        matches!(self, State::Running | State::Halted)
    }
}

/// One guest.
pub struct Vm {
    name: String,
    mem_mib: u64,
    image: String,
    arg: u64,
    state: State,
    /// Host-physical start of each 2 MiB run of guest RAM, in guest order.
    chunks: Vec<u64>,
    /// RAM is all zeros and nothing has written to it since: the next
    /// `vm start` need not zero it again.
    ram_zeroed: bool,
    ept: ept::Ept,
    vmcs: u64,
    launched: bool,
    regs: GuestRegs,
    uart: Uart,
    pic: Pic,
    pit: Pit,
    tick_period: u64,
    next_tick: u64,
    exits: [u64; 70],
    total_exits: u64,
    guest_tsc: u64,
    started_tsc: u64,
    tsc_offset: u64,
    /// Requests made with `vm checksum` (the guest reads them on port 0xF5).
    requests: u8,
    /// Dirty-page tracking, while on (live migration, `vm dirty`).
    dirty: Option<ept::DirtyLog>,
    /// The PML buffer page while PML tracking is on (0: none).
    pml_page: u64,
    /// Paused by a live migration (the final round): not run.
    paused: bool,
    /// Auto-converge level (0: full speed): one timer tick in 2^level
    /// reaches the guest.
    slow: u8,
    /// Timer ticks due so far (for the auto-converge ratio).
    skipped: u32,
    /// Being migrated away (one migration at a time per VM).
    migrating: bool,
}

/// VT-x state of the host CPU.
struct Host {
    caps: VmxCapabilities,
    pin: u32,
    primary: u32,
    secondary: u32,
    exit: u32,
    entry: u32,
    /// Preemption timer counts once per 2^rate TSC ticks.
    timer_rate: u32,
    cr0_fixed: (u64, u64),
    cr4_fixed: (u64, u64),
    /// EPT accessed/dirty flags are on in every EPTP (the CPU supports them).
    ept_ad: bool,
    /// How this CPU tracks guest writes for live migration.
    dirty_mechanism: ept::Mechanism,
}

struct Manager {
    host: Option<Host>,
    vms: Vec<Vm>,
    next: usize,
    current_vmcs: u64,
}

static MANAGER: Mutex<Manager> = Mutex::new(Manager {
    host: None,
    vms: Vec::new(),
    next: 0,
    current_vmcs: 0,
});

/// Guest images (modules the loader read from the ESP).
static MODULES: spin::Once<Vec<(String, &'static [u8])>> = spin::Once::new();

/// Records the loader's modules as guest images.
pub fn set_modules(modules: Vec<(String, &'static [u8])>) {
    MODULES.call_once(|| modules);
}

fn module(name: &str) -> Option<&'static [u8]> {
    MODULES
        .get()?
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, d)| *d)
}

/// Names of the available guest images.
pub fn module_names() -> Vec<String> {
    MODULES
        .get()
        .map(|m| m.iter().map(|(n, _)| n.clone()).collect())
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------
// Host set-up

/// Enables VMX operation on the boot CPU. Called once, at the first `vm create`.
fn enable_vmx() -> Result<Host, String> {
    let cpuid1 = arch::cpuid(1, 0).2;
    let caps = VmxCapabilities::read(&mut |msr| crate::vmm::vmxcaps::read_msr(msr), cpuid1)
        .map_err(|e| format!("VT-x is not available: {e}"))?;
    if !caps.ept() {
        return Err("this CPU has VT-x but no EPT; guests need EPT".into());
    }
    use vmx::controls::negotiate;
    let pin = negotiate(
        "pin-based",
        caps.pin,
        (PinControls::EXTERNAL_INTERRUPT_EXITING | PinControls::NMI_EXITING).bits(),
        PinControls::PREEMPTION_TIMER.bits(),
    )
    .map_err(|e| e.to_string())?;
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
    .map_err(|e| e.to_string())?;
    let secondary = negotiate(
        "secondary processor-based",
        caps.proc2,
        SecondaryControls::ENABLE_EPT.bits(),
        (SecondaryControls::UNRESTRICTED_GUEST | SecondaryControls::ENABLE_RDTSCP).bits(),
    )
    .map_err(|e| e.to_string())?;
    let exit = negotiate(
        "VM-exit",
        caps.exit,
        (ExitControls::HOST_ADDRESS_SPACE_SIZE
            | ExitControls::SAVE_IA32_EFER
            | ExitControls::LOAD_IA32_EFER)
            .bits(),
        0,
    )
    .map_err(|e| e.to_string())?;
    let entry = negotiate(
        "VM-entry",
        caps.entry,
        (EntryControls::IA32E_MODE_GUEST | EntryControls::LOAD_IA32_EFER).bits(),
        0,
    )
    .map_err(|e| e.to_string())?;

    // IA32_FEATURE_CONTROL: OVMF leaves it unlocked (TESTBED.md); lock it
    // with "VMX outside SMX" as firmware would. Locked without it: refuse.
    let fc = crate::vmm::vmxcaps::read_msr(crate::vmm::vmxcaps::MSR_FEATURE_CONTROL);
    if fc & 1 == 0 {
        // SAFETY: the MSR exists (CPUID.1:ECX.VMX is set) and is unlocked;
        // setting lock + VMX-outside-SMX is what firmware does at boot.
        unsafe { arch::wrmsr(crate::vmm::vmxcaps::MSR_FEATURE_CONTROL, fc | 1 | (1 << 2)) };
    } else if fc & (1 << 2) == 0 {
        return Err(
            "the firmware locked IA32_FEATURE_CONTROL with VMX disabled; enable VT-x in its setup"
                .into(),
        );
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
    let region = alloc_page().ok_or("out of memory for the VMXON region")?;
    // SAFETY: region is a fresh zeroed frame; the revision id goes first.
    unsafe { core::ptr::write_volatile(region as *mut u32, caps.basic.revision_id) };
    // SAFETY: CR4.VMXE is set, CR0/CR4 satisfy the fixed bits, feature
    // control allows VMXON outside SMX and `region` is a 4 KiB-aligned
    // VMXON region with the right revision id.
    unsafe { insn::vmxon(region) }.map_err(|e| format!("VMXON failed: {e:?}"))?;
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
    })
}

/// Zeroes 2 MiB chunks of guest RAM.
fn zero_chunks(chunks: &[u64]) {
    for &c in chunks {
        // SAFETY: each chunk is 2 MiB of guest RAM this module allocated,
        // identity-mapped, and no guest runs on it while it is zeroed (a
        // VM being created or started is not scheduled).
        unsafe { core::ptr::write_bytes(c as *mut u8, 0, MIB2 as usize) };
    }
}

fn alloc_page() -> Option<u64> {
    let pa = crate::mm::FRAMES.lock().as_mut()?.alloc()?.as_u64();
    // SAFETY: a fresh frame from the allocator, identity-mapped, ours.
    unsafe { core::ptr::write_bytes(pa as *mut u8, 0, PAGE_SIZE as usize) };
    Some(pa)
}

fn free_page(pa: u64) {
    if let Some(f) = crate::mm::FRAMES.lock().as_mut() {
        let _ = f.free(crate::mm::addr::Hpa::new(pa));
    }
}

/// Physical memory through the kernel's identity map, for the EPT code.
struct IdentityMem;

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
struct KernelFrames;

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
fn vmread(f: Field) -> u64 {
    // SAFETY: only called while this CPU is in VMX operation with a current
    // VMCS (the manager vmptrlds before touching a VM); a field this CPU
    // does not support fails cleanly and reads as 0.
    unsafe { insn::vmread(f) }.unwrap_or(0)
}

/// Writes a field of the current VMCS.
fn vmwrite(f: Field, v: u64) {
    // SAFETY: as vmread; a failure is reported, not ignored silently.
    if let Err(e) = unsafe { insn::vmwrite(f, v) } {
        log::error!("vmx: VMWRITE {:#x} = {v:#x} failed: {e:?}", f.0);
    }
}

fn make_current(m: &mut Manager, vmcs: u64) {
    if m.current_vmcs != vmcs {
        // SAFETY: `vmcs` is a VMCS region this manager initialised with
        // VMCLEAR and the right revision id.
        if let Err(e) = unsafe { insn::vmptrld(vmcs) } {
            log::error!("vmx: VMPTRLD {vmcs:#x} failed: {e:?}");
        }
        m.current_vmcs = vmcs;
    }
}

// ---------------------------------------------------------------------------
// Guest memory

impl Vm {
    fn ram_bytes(&self) -> u64 {
        self.chunks.len() as u64 * MIB2
    }

    /// Host address of a guest-physical byte range inside one chunk.
    fn host_ptr(&self, gpa: u64, len: u64) -> Option<*mut u8> {
        let chunk = *self.chunks.get((gpa / MIB2) as usize)?;
        let off = gpa % MIB2;
        (off + len <= MIB2).then_some((chunk + off) as *mut u8)
    }

    /// Copies `data` into guest RAM at `gpa` (the hypervisor's own write).
    fn write_guest(&mut self, gpa: u64, data: &[u8]) -> Result<(), String> {
        let mut done = 0usize;
        while done < data.len() {
            let at = gpa + done as u64;
            let n = ((MIB2 - at % MIB2) as usize).min(data.len() - done);
            let dst = self
                .host_ptr(at, n as u64)
                .ok_or_else(|| format!("guest-physical {at:#x} is outside RAM"))?;
            // SAFETY: dst..dst+n lies inside one 2 MiB chunk of this VM's RAM,
            // identity-mapped host memory that only this VM uses.
            unsafe { core::ptr::copy_nonoverlapping(data[done..].as_ptr(), dst, n) };
            if let Some(log) = self.dirty.as_mut() {
                for gfn in at / PAGE_SIZE..(at + n as u64).div_ceil(PAGE_SIZE) {
                    log.mark_hypervisor_write(gfn);
                }
            }
            done += n;
        }
        Ok(())
    }

    /// Zeroes the RAM unless it is still as [`new_vm`] left it (zeroed,
    /// never run): a second pass over gigabytes costs seconds in Bochs.
    fn zero_ram(&mut self) {
        if !core::mem::replace(&mut self.ram_zeroed, false) {
            zero_chunks(&self.chunks);
        }
    }

    fn write_u64s(&mut self, gpa: u64, words: &[u64]) -> Result<(), String> {
        let mut bytes = Vec::with_capacity(words.len() * 8);
        for w in words {
            bytes.extend_from_slice(&w.to_le_bytes());
        }
        self.write_guest(gpa, &bytes)
    }
}

// ---------------------------------------------------------------------------
// Lifecycle

/// `vm create`.
pub fn create(name: &str, mem_mib: u64, image: &str, arg: u64) -> Result<(), String> {
    let mut m = MANAGER.lock();
    if m.vms.iter().any(|v| v.name == name) {
        return Err(format!("a VM named '{name}' already exists"));
    }
    let data = module(image).ok_or_else(|| {
        let names = module_names();
        if names.is_empty() {
            format!("no image '{image}': the ESP has no modules")
        } else {
            format!("no image '{image}' (available: {})", names.join(", "))
        }
    })?;
    let ram = mem_mib.div_ceil(2) * MIB2;
    boot::elf::parse_range(data, GUEST_IMAGE_BASE, ram)
        .map_err(|e| format!("image '{image}' cannot run in {mem_mib} MiB: {e}"))?;
    if m.host.is_none() {
        m.host = Some(enable_vmx()?);
    }
    let vm = new_vm(&m, name, ram, image, arg, State::Created).map_err(|free| {
        format!(
            "not enough memory for {mem_mib} MiB of guest RAM ({} MiB free)",
            free >> 20
        )
    })??;
    m.vms.push(vm);
    log::debug!(
        "vm {name}: created, {mem_mib} MiB RAM, image {image} ({} bytes)",
        data.len()
    );
    Ok(())
}

/// A VM with `ram` bytes of RAM (a multiple of 2 MiB), its EPT and VMCS.
/// Err(free bytes) if the RAM is not there; Ok(Err(why)) if the EPT or
/// VMCS could not be built. Nothing stays allocated on failure.
fn new_vm(
    m: &Manager,
    name: &str,
    ram: u64,
    image: &str,
    arg: u64,
    state: State,
) -> Result<Result<Vm, String>, u64> {
    let chunks_needed = (ram / MIB2) as usize;
    let mut chunks = Vec::with_capacity(chunks_needed);
    {
        let mut frames = crate::mm::FRAMES.lock();
        let Some(f) = frames.as_mut() else {
            return Err(0);
        };
        let free = f.free_frames() * PAGE_SIZE;
        for _ in 0..chunks_needed {
            match f.alloc_contiguous(512, MIB2) {
                Some(pa) => chunks.push(pa.as_u64()),
                None => {
                    for &c in &chunks {
                        let _ = f.free_contiguous(crate::mm::addr::Hpa::new(c), 512);
                    }
                    return Err(free);
                }
            }
        }
    }
    // No frame reaches a guest with what it held before (another guest's
    // RAM, a freed kernel buffer): `vm create` and an incoming migration
    // both come through here.
    zero_chunks(&chunks);
    let revision = m.host.as_ref().map_or(0, |h| h.caps.basic.revision_id);
    let (ept, vmcs) = match build_ept_and_vmcs(&chunks, revision) {
        Ok(v) => v,
        Err(e) => {
            // Nothing of a half-built VM stays allocated.
            free_chunks(&chunks);
            return Ok(Err(e));
        }
    };
    Ok(Ok(Vm {
        name: name.into(),
        mem_mib: ram >> 20,
        image: image.into(),
        arg,
        state,
        chunks,
        ram_zeroed: true,
        ept,
        vmcs,
        launched: false,
        regs: GuestRegs::default(),
        uart: Uart::default(),
        pic: Pic::default(),
        pit: Pit::default(),
        tick_period: 0,
        next_tick: 0,
        exits: [0; 70],
        total_exits: 0,
        guest_tsc: 0,
        started_tsc: 0,
        tsc_offset: 0,
        requests: 0,
        dirty: None,
        pml_page: 0,
        paused: false,
        slow: 0,
        skipped: 0,
        migrating: false,
    }))
}

/// EPT tables mapping `chunks` at guest-physical 0, and a cleared VMCS.
/// On failure everything it allocated is freed again.
fn build_ept_and_vmcs(chunks: &[u64], revision: u32) -> Result<(ept::Ept, u64), String> {
    let mut ept = ept::Ept::new(&mut KernelFrames).map_err(|e| format!("EPT: {e}"))?;
    let mapped = chunks.iter().enumerate().try_for_each(|(i, &c)| {
        ept.map(
            &mut IdentityMem,
            &mut KernelFrames,
            ept::Gpa::new(i as u64 * MIB2),
            ept::Hpa::new(c),
            MIB2,
            ept::Perm::READ | ept::Perm::WRITE | ept::Perm::EXECUTE,
            ept::MemType::WriteBack,
        )
    });
    let vmcs = match (mapped, alloc_page()) {
        (Ok(()), Some(vmcs)) => vmcs,
        (r, page) => {
            page.into_iter().for_each(free_page);
            ept.destroy(&mut IdentityMem, &mut KernelFrames);
            return Err(match r {
                Err(e) => format!("EPT: {e}"),
                Ok(()) => "out of memory for the VMCS".into(),
            });
        }
    };
    // SAFETY: a fresh frame; the VMCS revision id goes in its first dword.
    unsafe { core::ptr::write_volatile(vmcs as *mut u32, revision) };
    // SAFETY: VMX is on; `vmcs` is a VMCS region with the right revision.
    if let Err(e) = unsafe { insn::vmclear(vmcs) } {
        free_page(vmcs);
        ept.destroy(&mut IdentityMem, &mut KernelFrames);
        return Err(format!("VMCLEAR failed: {e:?}"));
    }
    Ok((ept, vmcs))
}

fn free_chunks(chunks: &[u64]) {
    if let Some(f) = crate::mm::FRAMES.lock().as_mut() {
        for &c in chunks {
            let _ = f.free_contiguous(crate::mm::addr::Hpa::new(c), 512);
        }
    }
}

fn find(m: &mut Manager, name: &str) -> Result<usize, String> {
    m.vms
        .iter()
        .position(|v| v.name == name)
        .ok_or_else(|| format!("no VM named '{name}' (see 'vm list')"))
}

/// Clears VM `i`'s launch state (VMCLEAR) and makes its VMCS current, for
/// a first VMLAUNCH: a (re)start or an incoming guest.
fn fresh_launch(m: &mut Manager, i: usize) -> Result<(), String> {
    let vmcs = m.vms[i].vmcs;
    // SAFETY: `vmcs` is this VM's VMCS region; VMX is on.
    unsafe { insn::vmclear(vmcs) }.map_err(|e| format!("VMCLEAR failed: {e:?}"))?;
    m.current_vmcs = 0;
    make_current(m, vmcs);
    Ok(())
}

/// `vm start`: loads the image into fresh RAM and runs it from its entry.
pub fn start(name: &str) -> Result<(), String> {
    let mut m = MANAGER.lock();
    let i = find(&mut m, name)?;
    if m.vms[i].state.runs() {
        return Err(format!("VM '{name}' is already running"));
    }
    fresh_launch(&mut m, i)?;
    let Manager { host, vms, .. } = &mut *m;
    let host = host.as_ref().ok_or("VMX is not enabled")?;
    let vm = &mut vms[i];
    dirty_stop(host, vm);
    let data = module(&vm.image).ok_or_else(|| format!("image '{}' disappeared", vm.image))?;
    let image = boot::elf::parse_range(data, GUEST_IMAGE_BASE, vm.ram_bytes())
        .map_err(|e| e.to_string())?;
    vm.zero_ram();
    for s in image.segments() {
        let src = &data[s.file_offset as usize..(s.file_offset + s.file_len) as usize];
        vm.write_guest(s.vaddr, src)?;
    }
    setup_guest_memory(vm)?;
    setup_vmcs(host, vm, image.entry);
    vm.launched = false;
    vm.regs = GuestRegs::default();
    vm.regs.rdi = vm.ram_bytes();
    vm.regs.rsi = vm.arg;
    vm.uart = Uart::default();
    vm.pic = Pic::default();
    vm.pit = Pit::default();
    vm.tick_period = 0;
    vm.state = State::Running;
    vm.started_tsc = arch::rdtsc();
    log::debug!("vm {name}: started at {:#x}", image.entry);
    Ok(())
}

/// `vm stop`.
pub fn stop(name: &str) -> Result<(), String> {
    let mut m = MANAGER.lock();
    let i = find(&mut m, name)?;
    let vm = &mut m.vms[i];
    if !vm.state.runs() {
        return Err(format!("VM '{name}' is not running ({})", vm.state.name()));
    }
    if vm.migrating {
        return Err(format!(
            "VM '{name}' is being migrated (migrate cancel {name} first)"
        ));
    }
    flush_output(vm);
    vm.state = State::Stopped { code: None };
    log::debug!("vm {name}: stopped by the operator");
    Ok(())
}

/// `vm delete`: stops it and frees its RAM, tables and VMCS.
pub fn delete(name: &str) -> Result<(), String> {
    let mut m = MANAGER.lock();
    let i = find(&mut m, name)?;
    if m.vms[i].migrating {
        return Err(format!(
            "VM '{name}' is being migrated (migrate cancel {name} first)"
        ));
    }
    let vm = m.vms.remove(i);
    if m.current_vmcs == vm.vmcs {
        m.current_vmcs = 0;
    }
    if vm.pml_page != 0 {
        free_page(vm.pml_page);
    }
    // SAFETY: the VMCS region belongs to this VM and VMX is on; clearing
    // it makes the region safe to free.
    let _ = unsafe { insn::vmclear(vm.vmcs) };
    free_page(vm.vmcs);
    let freed_mib = vm.ram_bytes() >> 20;
    vm.ept.destroy(&mut IdentityMem, &mut KernelFrames);
    free_chunks(&vm.chunks);
    log::debug!("vm {name}: deleted, {freed_mib} MiB freed");
    Ok(())
}

/// `vm list`.
pub fn list() {
    let m = MANAGER.lock();
    if m.vms.is_empty() {
        println!("no VMs (create one with 'vm create')");
        return;
    }
    println!(
        "{:<16} {:<8} {:>8} {:<10} exit",
        "name", "state", "ram", "image"
    );
    for vm in &m.vms {
        let exit = match &vm.state {
            State::Stopped { code: Some(c) } => format!("code {c}"),
            State::Faulted(why) | State::Crashed(why) => why.clone(),
            _ => "-".into(),
        };
        println!(
            "{:<16} {:<8} {:>4} MiB {:<10} {exit}",
            vm.name,
            vm.state.name(),
            vm.mem_mib,
            vm.image
        );
    }
}

/// `vm stats`.
/// `vm checksum`: bumps the request counter the guest reads on port 0xF5
/// (the `dirty` guest answers with its memory checksum).
pub fn request(name: &str) -> Result<u8, String> {
    let mut m = MANAGER.lock();
    let i = find(&mut m, name)?;
    let vm = &mut m.vms[i];
    vm.requests = vm.requests.wrapping_add(1);
    Ok(vm.requests)
}

pub fn stats(name: &str) -> Result<(), String> {
    let mut m = MANAGER.lock();
    let i = find(&mut m, name)?;
    let vm = &m.vms[i];
    println!(
        "vm {}: {}, {} exits, {} ms in the guest",
        vm.name,
        vm.state.name(),
        vm.total_exits,
        crate::arch::time::tsc_to_ms(vm.guest_tsc)
    );
    for (reason, &n) in vm.exits.iter().enumerate() {
        if n > 0 {
            println!("  {:<28} {n}", ExitReason::from(reason as u16).to_string());
        }
    }
    let now = arch::rdtsc();
    println!(
        "  pic irr {:#04x} isr {:#04x} imr {:#04x}; timer {}",
        vm.pic.irr,
        vm.pic.isr,
        vm.pic.imr,
        if vm.tick_period == 0 {
            String::from("off")
        } else {
            format!(
                "every {} us, next in {} us{}{}",
                crate::arch::time::tsc_to_us(vm.tick_period),
                crate::arch::time::tsc_to_us(vm.next_tick.saturating_sub(now)),
                if vm.paused { ", paused" } else { "" },
                if vm.migrating { ", migrating" } else { "" }
            )
        }
    );
    println!("  console bytes {}", vm.uart.bytes);
    let mechanism = m.host.as_ref().map(|h| h.dirty_mechanism);
    match (&vm.dirty, mechanism) {
        (Some(log), _) => println!("  dirty tracking: {} ({})", log.mechanism(), log.stats()),
        (None, Some(mech)) => println!("  dirty tracking: off (this CPU would use {mech})"),
        (None, None) => {}
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Dirty-page tracking (live migration)

/// Drops every cached EPT translation (after write access was removed or
/// dirty flags cleared).
fn invept_all() {
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
fn drain_pml(vm: &mut Vm) {
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

/// Turns dirty tracking on for a VM whose VMCS is current.
fn dirty_start(host: &Host, vm: &mut Vm) -> Result<(), String> {
    if vm.dirty.is_some() {
        return Ok(());
    }
    let pages = vm.ram_bytes() / PAGE_SIZE;
    let mut log = ept::DirtyLog::new(host.dirty_mechanism, pages);
    if host.dirty_mechanism == ept::Mechanism::Pml {
        let page = alloc_page().ok_or("out of memory for the PML buffer")?;
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
            return Err(format!("dirty tracking: {e}"));
        }
    }
    if vm.pml_page != 0 {
        let secondary = host.secondary | SecondaryControls::ENABLE_PML.bits();
        vmwrite(Field::SECONDARY_PROC_CONTROLS, u64::from(secondary));
    }
    vm.dirty = Some(log);
    Ok(())
}

/// The pages written since the last call (or since tracking started). The
/// VM's VMCS must be current and the guest not running.
fn dirty_take(vm: &mut Vm) -> Result<ept::DirtyBitmap, String> {
    drain_pml(vm);
    let Vm { dirty, ept, .. } = vm;
    let log = dirty.as_mut().ok_or("dirty tracking is off")?;
    let (bitmap, flush) = log
        .take(ept, &mut IdentityMem, &mut KernelFrames)
        .map_err(|e| format!("dirty tracking: {e}"))?;
    if flush {
        invept_all();
    }
    Ok(bitmap)
}

/// Turns dirty tracking off (VMCS current), restoring the EPT as it was.
fn dirty_stop(host: &Host, vm: &mut Vm) {
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
pub fn dirty(name: &str) -> Result<(), String> {
    with_vm(name, |host, vm| {
        if !vm.state.runs() {
            return Err(format!("VM '{name}' is not running"));
        }
        dirty_look(host, vm, name)
    })
}

fn dirty_look(host: &Host, vm: &mut Vm, name: &str) -> Result<(), String> {
    if vm.dirty.is_none() {
        dirty_start(host, vm)?;
        println!("vm {name}: dirty tracking on ({})", host.dirty_mechanism);
    } else {
        let b = dirty_take(vm)?;
        println!(
            "vm {name}: {} pages dirty since the last look ({})",
            b.count(),
            host.dirty_mechanism
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Guest state

fn setup_guest_memory(vm: &mut Vm) -> Result<(), String> {
    // Identity map of 4 GiB with 2 MiB pages: PML4[0] -> PDPT, PDPT[0..4] -> PDs.
    vm.write_u64s(GUEST_PML4, &[GUEST_PDPT | 0x3])?;
    vm.write_u64s(
        GUEST_PDPT,
        &[
            GUEST_PD | 0x3,
            (GUEST_PD + 0x1000) | 0x3,
            (GUEST_PD + 0x2000) | 0x3,
            (GUEST_PD + 0x3000) | 0x3,
        ],
    )?;
    let pds: Vec<u64> = (0..2048u64).map(|i| (i * MIB2) | 0x83).collect();
    vm.write_u64s(GUEST_PD, &pds)?;
    // Null, 64-bit code (0x08), data (0x10).
    vm.write_u64s(
        GUEST_GDT,
        &[0, 0x00af_9b00_0000_ffff, 0x00cf_9300_0000_ffff],
    )
}

fn setup_vmcs(host: &Host, vm: &mut Vm, entry: u64) {
    use Field as F;
    // Controls.
    vmwrite(F::PIN_BASED_CONTROLS, u64::from(host.pin));
    vmwrite(F::PRIMARY_PROC_CONTROLS, u64::from(host.primary));
    vmwrite(F::SECONDARY_PROC_CONTROLS, u64::from(host.secondary));
    vmwrite(F::EXIT_CONTROLS, u64::from(host.exit));
    vmwrite(F::ENTRY_CONTROLS, u64::from(host.entry));
    vmwrite(F::EXCEPTION_BITMAP, 0);
    vmwrite(F::CR3_TARGET_COUNT, 0);
    vmwrite(F::EXIT_MSR_STORE_COUNT, 0);
    vmwrite(F::EXIT_MSR_LOAD_COUNT, 0);
    vmwrite(F::ENTRY_MSR_LOAD_COUNT, 0);
    vmwrite(F::ENTRY_INTERRUPTION_INFO, 0);
    vmwrite(F::EPT_POINTER, vm.ept.eptp(host.ept_ad));
    vmwrite(F::VMCS_LINK_POINTER, u64::MAX);
    vm.tsc_offset = 0u64.wrapping_sub(arch::rdtsc());
    vmwrite(F::TSC_OFFSET, vm.tsc_offset);

    // Guest CR0/CR4: the VMX fixed bits are forced, and hidden from the
    // guest through the read shadows (CR4.VMXE above all).
    let cr0 = 0x8001_0033u64; // PG, WP, NE, ET, MP, PE
    let cr4 = 0x20u64; // PAE
    let cr0_mask = host.cr0_fixed.0 & !(0x8000_0001) | 0x20;
    let cr4_mask = host.cr4_fixed.0 | (1 << 13);
    vmwrite(F::CR0_GUEST_HOST_MASK, cr0_mask);
    vmwrite(F::CR4_GUEST_HOST_MASK, cr4_mask);
    vmwrite(F::CR0_READ_SHADOW, cr0);
    vmwrite(F::CR4_READ_SHADOW, cr4);
    vmwrite(F::GUEST_CR0, (cr0 | host.cr0_fixed.0) & host.cr0_fixed.1);
    vmwrite(F::GUEST_CR4, (cr4 | host.cr4_fixed.0) & host.cr4_fixed.1);
    vmwrite(F::GUEST_CR3, GUEST_PML4);
    vmwrite(F::GUEST_IA32_EFER, 0xd00); // NXE, LMA, LME
    vmwrite(F::GUEST_DR7, 0x400);
    vmwrite(F::GUEST_RSP, GUEST_STACK_TOP);
    vmwrite(F::GUEST_RIP, entry);
    vmwrite(F::GUEST_RFLAGS, 0x2);
    for (sel, base, limit, ar) in [
        (
            F::GUEST_ES_SELECTOR,
            F::GUEST_ES_BASE,
            F::GUEST_ES_LIMIT,
            F::GUEST_ES_ACCESS_RIGHTS,
        ),
        (
            F::GUEST_SS_SELECTOR,
            F::GUEST_SS_BASE,
            F::GUEST_SS_LIMIT,
            F::GUEST_SS_ACCESS_RIGHTS,
        ),
        (
            F::GUEST_DS_SELECTOR,
            F::GUEST_DS_BASE,
            F::GUEST_DS_LIMIT,
            F::GUEST_DS_ACCESS_RIGHTS,
        ),
        (
            F::GUEST_FS_SELECTOR,
            F::GUEST_FS_BASE,
            F::GUEST_FS_LIMIT,
            F::GUEST_FS_ACCESS_RIGHTS,
        ),
        (
            F::GUEST_GS_SELECTOR,
            F::GUEST_GS_BASE,
            F::GUEST_GS_LIMIT,
            F::GUEST_GS_ACCESS_RIGHTS,
        ),
    ] {
        vmwrite(sel, 0x10);
        vmwrite(base, 0);
        vmwrite(limit, 0xffff_ffff);
        vmwrite(ar, 0xc093);
    }
    vmwrite(F::GUEST_CS_SELECTOR, 0x08);
    vmwrite(F::GUEST_CS_BASE, 0);
    vmwrite(F::GUEST_CS_LIMIT, 0xffff_ffff);
    vmwrite(F::GUEST_CS_ACCESS_RIGHTS, 0xa09b);
    vmwrite(F::GUEST_TR_SELECTOR, 0);
    vmwrite(F::GUEST_TR_BASE, 0);
    vmwrite(F::GUEST_TR_LIMIT, 0xff);
    vmwrite(F::GUEST_TR_ACCESS_RIGHTS, 0x8b);
    vmwrite(F::GUEST_LDTR_SELECTOR, 0);
    vmwrite(F::GUEST_LDTR_BASE, 0);
    vmwrite(F::GUEST_LDTR_LIMIT, 0);
    vmwrite(F::GUEST_LDTR_ACCESS_RIGHTS, 0x1_0000); // unusable
    vmwrite(F::GUEST_GDTR_BASE, GUEST_GDT);
    vmwrite(F::GUEST_GDTR_LIMIT, 23);
    vmwrite(F::GUEST_IDTR_BASE, 0);
    vmwrite(F::GUEST_IDTR_LIMIT, 0);
    vmwrite(F::GUEST_INTERRUPTIBILITY_STATE, 0);
    vmwrite(F::GUEST_ACTIVITY_STATE, 0);
    vmwrite(F::GUEST_PENDING_DEBUG_EXCEPTIONS, 0);
    vmwrite(F::GUEST_IA32_SYSENTER_CS, 0);
    vmwrite(F::GUEST_IA32_SYSENTER_ESP, 0);
    vmwrite(F::GUEST_IA32_SYSENTER_EIP, 0);
    vmwrite(F::GUEST_IA32_DEBUGCTL, 0);

    // Host state: what the CPU loads on every VM exit.
    vmwrite(F::HOST_CR0, arch::cr0());
    vmwrite(F::HOST_CR3, arch::cr3());
    vmwrite(F::HOST_CR4, arch::cr4());
    let sel = crate::arch::cpu::selectors();
    vmwrite(F::HOST_CS_SELECTOR, u64::from(sel.code));
    for f in [
        F::HOST_SS_SELECTOR,
        F::HOST_DS_SELECTOR,
        F::HOST_ES_SELECTOR,
    ] {
        vmwrite(f, u64::from(sel.data));
    }
    vmwrite(F::HOST_FS_SELECTOR, 0);
    vmwrite(F::HOST_GS_SELECTOR, 0);
    vmwrite(F::HOST_TR_SELECTOR, u64::from(sel.tss));
    vmwrite(F::HOST_FS_BASE, 0);
    vmwrite(F::HOST_GS_BASE, 0);
    vmwrite(F::HOST_TR_BASE, sel.tss_base);
    vmwrite(F::HOST_GDTR_BASE, sel.gdt_base);
    vmwrite(F::HOST_IDTR_BASE, sel.idt_base);
    vmwrite(F::HOST_IA32_SYSENTER_CS, 0);
    vmwrite(F::HOST_IA32_SYSENTER_ESP, 0);
    vmwrite(F::HOST_IA32_SYSENTER_EIP, 0);
    // SAFETY: IA32_EFER exists on every x86-64 CPU.
    vmwrite(F::HOST_IA32_EFER, unsafe { arch::rdmsr(0xc000_0080) });
    vmwrite(F::HOST_RIP, insn::vm_exit_rip());
}

// ---------------------------------------------------------------------------
// The run loop

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
        if vm.paused {
            continue;
        }
        if runnable(vm) {
            m.next = (i + 1) % n;
            let vmcs = m.vms[i].vmcs;
            make_current(&mut m, vmcs);
            let Manager { host, vms, .. } = &mut *m;
            if let Some(host) = host.as_ref() {
                run_for_a_slice(host, &mut vms[i], now);
            }
            return true;
        }
    }
    false
}

/// Runs `vm` (its VMCS current) through exits until it has had
/// [`SLICE_MS`] or cannot go on (halted with nothing pending, stopped,
/// paused). One entry per turn is not enough: when the host does other
/// work between turns (a migration's pages), a guest whose timer tick
/// costs a few exits (injection, EOI, interrupt window) would spend every
/// entry in its tick handler and never reach its own code.
fn run_for_a_slice(host: &Host, vm: &mut Vm, start: u64) {
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

/// Running, or halted with an interrupt to deliver.
fn runnable(vm: &Vm) -> bool {
    match vm.state {
        State::Running => true,
        State::Halted => vm.pic.pending().is_some(),
        _ => false,
    }
}

/// Raises IRQ0 when the guest's PIT period has elapsed.
fn update_timer(vm: &mut Vm, now: u64) {
    if vm.pit.take_changed() {
        vm.tick_period = vm.pit.period_tsc(crate::arch::time::tsc_hz()).unwrap_or(0);
        vm.next_tick = now.saturating_add(vm.tick_period);
    }
    if vm.tick_period != 0 && now >= vm.next_tick {
        // Auto-converge (a migration the guest outruns): deliver one timer
        // tick in 2^slow, so a guest that works per tick works that much
        // less. Its TSC keeps real time.
        vm.skipped = vm.skipped.wrapping_add(1);
        if vm.slow == 0 || vm.skipped.is_multiple_of(1 << vm.slow) {
            vm.pic.raise(0);
        }
        // Keep the phase (no drift), but never queue more than one late tick.
        vm.next_tick = vm.next_tick.saturating_add(vm.tick_period).max(now);
    }
}

fn run_vm(host: &Host, vm: &mut Vm) {
    // Deliver a pending interrupt if the guest can take it now, else ask
    // for an exit as soon as it can (interrupt-window exiting). An event
    // whose delivery an exit interrupted goes first (handle_exit queued it).
    let mut primary = host.primary;
    let reinjecting = vmread(Field::ENTRY_INTERRUPTION_INFO) & (1 << 31) != 0;
    if reinjecting {
        if vm.pic.pending().is_some() {
            primary |= PrimaryControls::INTERRUPT_WINDOW_EXITING.bits();
        }
    } else if let Some(vector) = vm.pic.pending() {
        let rflags = vmread(Field::GUEST_RFLAGS);
        let blocked = vmread(Field::GUEST_INTERRUPTIBILITY_STATE) & 0x3 != 0;
        if rflags & 0x200 != 0 && !blocked {
            let info = InterruptionInfo::external_interrupt(vector);
            vmwrite(Field::ENTRY_INTERRUPTION_INFO, u64::from(info.encode()));
            vm.pic.acknowledge(vector);
            vm.state = State::Running;
        } else {
            primary |= PrimaryControls::INTERRUPT_WINDOW_EXITING.bits();
        }
    }
    vmwrite(Field::PRIMARY_PROC_CONTROLS, u64::from(primary));
    if host.pin & PinControls::PREEMPTION_TIMER.bits() != 0 {
        let slice = crate::arch::time::tsc_hz() / 1000 * SLICE_MS;
        vmwrite(
            Field::PREEMPTION_TIMER_VALUE,
            (slice >> host.timer_rate).min(u64::from(u32::MAX)),
        );
    }

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

/// A guest write to its 16550 (port or MMIO): completed lines go to the
/// host console with the VM's name.
fn uart_write(vm: &mut Vm, offset: u16, byte: u8) {
    if let Some(line) = vm.uart.write(offset, byte) {
        async_line(format_args!("[{}] {line}", vm.name));
    }
}

fn flush_output(vm: &mut Vm) {
    if let Some(line) = vm.uart.flush() {
        async_line(format_args!("[{}] {line}", vm.name));
    }
}

fn fault(vm: &mut Vm, why: String) {
    flush_output(vm);
    async_line(format_args!("vm {}: stopped: {why}", vm.name));
    log::debug!("vm {}: faulted: {why}", vm.name);
    vm.state = State::Faulted(why);
}

fn skip_instruction() {
    let len = vmread(Field::EXIT_INSTRUCTION_LENGTH);
    vmwrite(Field::GUEST_RIP, vmread(Field::GUEST_RIP) + len);
}

fn handle_exit(vm: &mut Vm) {
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
    match info.reason {
        ExitReason::ExternalInterrupt | ExitReason::PreemptionTimer => {}
        ExitReason::InterruptWindow => {}
        ExitReason::Cpuid => {
            emulate_cpuid(vm);
            skip_instruction();
        }
        ExitReason::Hlt => {
            skip_instruction();
            let rflags = vmread(Field::GUEST_RFLAGS);
            if rflags & 0x200 == 0 && vm.tick_period == 0 {
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
            if write_msr(msr, v) {
                skip_instruction();
            } else {
                inject_gp(vm, format!("wrmsr {msr:#x} = {v:#x}"));
            }
        }
        ExitReason::CrAccess => emulate_cr(vm),
        ExitReason::EptViolation
            if (MMIO_UART_BASE..MMIO_UART_BASE + MMIO_UART_LEN)
                .contains(&vmread(Field::GUEST_PHYSICAL_ADDRESS)) =>
        {
            let gpa = vmread(Field::GUEST_PHYSICAL_ADDRESS);
            let q = vmx::exit::EptViolation::from(vmread(Field::EXIT_QUALIFICATION));
            if let Err(why) = emulate_mmio_uart(vm, gpa, q.write) {
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

fn emulate_cpuid(vm: &mut Vm) {
    let leaf = vm.regs.rax as u32;
    let sub = vm.regs.rcx as u32;
    let (a, b, c, d) = match leaf {
        0x4000_0000 => (0x4000_0010, SIGNATURE[0], SIGNATURE[1], SIGNATURE[2]),
        0x4000_0010 => ((crate::arch::time::tsc_hz() / 1000) as u32, 0, 0, 0),
        0x4000_0001..=0x4000_00ff => (0, 0, 0, 0),
        1 => {
            let (a, b, c, d) = arch::cpuid(1, sub);
            // Hypervisor present (bit 31) and no VMX (bit 5) for the guest.
            (a, b, (c | (1 << 31)) & !(1 << 5), d)
        }
        _ => arch::cpuid(leaf, sub),
    };
    vm.regs.rax = u64::from(a);
    vm.regs.rbx = u64::from(b);
    vm.regs.rcx = u64::from(c);
    vm.regs.rdx = u64::from(d);
}

fn emulate_io(vm: &mut Vm, q: IoQualification) {
    if q.string || q.rep {
        fault(
            vm,
            format!("string I/O on port {:#x} is not supported", q.port),
        );
        return;
    }
    skip_instruction();
    if q.input {
        let v: u64 = match q.port {
            0x3f8..=0x3ff => u64::from(vm.uart.read(q.port - 0x3f8)),
            0x20 | 0x21 => u64::from(vm.pic.read(q.port - 0x20)),
            0x40..=0x43 => u64::from(vm.pit.read(q.port - 0x40)),
            // The request counter `vm checksum` bumps.
            0xf5 => u64::from(vm.requests),
            _ => u64::MAX,
        };
        // Same register rules as a load: `in eax` clears bits 63:32.
        vm.regs.rax = crate::vmm::mmio::merge_load(vm.regs.rax, v, q.size, false);
        return;
    }
    // The low `size` bytes of RAX, as OUT sends them.
    let value = crate::vmm::mmio::merge_load(0, vm.regs.rax, q.size, true);
    match q.port {
        0x3f8..=0x3ff => uart_write(vm, q.port - 0x3f8, value as u8),
        0x20 | 0x21 => vm.pic.write(q.port - 0x20, value as u8),
        0x40..=0x43 => vm.pit.write(q.port - 0x40, value as u8),
        0xf4 => {
            flush_output(vm);
            let code = value as u32;
            async_line(format_args!("vm {}: exited with code {code}", vm.name));
            log::debug!("vm {}: exited with code {code}", vm.name);
            vm.state = State::Stopped { code: Some(code) };
        }
        _ => log::debug!(
            "vm {}: write {value:#x} to unmodelled port {:#x} ignored",
            vm.name,
            q.port
        ),
    }
}

/// MSRs a guest may read: (value source).
fn read_msr(vm: &Vm, msr: u32) -> Option<u64> {
    Some(match msr {
        0x10 => arch::rdtsc().wrapping_add(vm.tsc_offset), // IA32_TSC
        0x1b => 0xfee0_0900,                               // IA32_APIC_BASE: BSP, enabled
        0x1a0 => 1,                                        // IA32_MISC_ENABLE: fast strings
        0x277 => vmread(Field::GUEST_IA32_PAT),            // IA32_PAT
        0xc000_0080 => vmread(Field::GUEST_IA32_EFER),     // IA32_EFER
        0xc000_0100 => vmread(Field::GUEST_FS_BASE),       // FS base
        0xc000_0101 => vmread(Field::GUEST_GS_BASE),       // GS base
        _ => return None,
    })
}

/// MSRs a guest may write. False: the write gets #GP.
fn write_msr(msr: u32, v: u64) -> bool {
    match msr {
        0x277 => vmwrite(Field::GUEST_IA32_PAT, v),
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

fn inject_gp(vm: &mut Vm, what: String) {
    log::info!("vm {}: {what} refused: #GP injected", vm.name);
    let info = InterruptionInfo::hardware_exception(13, true);
    vmwrite(Field::ENTRY_INTERRUPTION_INFO, u64::from(info.encode()));
    vmwrite(Field::ENTRY_EXCEPTION_ERROR_CODE, 0);
}

/// The current VMCS, for the `vmx` crate's register helpers.
struct CurrentVmcs;

impl vmx::Vmcs for CurrentVmcs {
    fn read(&self, f: Field) -> u64 {
        vmread(f)
    }

    fn write(&mut self, f: Field, v: u64) {
        vmwrite(f, v)
    }
}

fn emulate_cr(vm: &mut Vm) {
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

/// Translates a guest-virtual address with the guest's own page tables
/// (4-level, 4 KiB/2 MiB/1 GiB pages; SDM Vol. 3A 4.5).
fn guest_virt_to_phys(vm: &Vm, gva: u64) -> Option<u64> {
    let cr0 = vmread(Field::GUEST_CR0);
    if cr0 & (1 << 31) == 0 {
        return Some(gva);
    }
    let mut table = vmread(Field::GUEST_CR3) & 0x000f_ffff_ffff_f000;
    for level in (0..4).rev() {
        let index = (gva >> (12 + 9 * level)) & 0x1ff;
        let ptr = vm.host_ptr(table + index * 8, 8)?;
        // SAFETY: host_ptr checked that the 8 bytes lie in this VM's RAM.
        let entry = unsafe { core::ptr::read_unaligned(ptr as *const u64) };
        if entry & 1 == 0 {
            return None;
        }
        let frame = entry & 0x000f_ffff_ffff_f000;
        if level == 0 || (level <= 2 && entry & 0x80 != 0) {
            let page_mask = (1u64 << (12 + 9 * level)) - 1;
            return Some((frame & !page_mask) | (gva & page_mask));
        }
        table = frame;
    }
    None
}

/// Emulates the instruction that touched the MMIO 16550.
fn emulate_mmio_uart(vm: &mut Vm, gpa: u64, write: bool) -> Result<(), String> {
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
    let offset = (gpa - MMIO_UART_BASE) as u16;
    use crate::vmm::mmio::Access;
    match (insn.access, write) {
        (Access::Load { reg, zero_extend }, false) => {
            let gpr = vmx::Gpr::from_index(reg).ok_or("bad register")?;
            let value = u64::from(vm.uart.read(offset));
            let old = vm.regs.get(gpr, &CurrentVmcs);
            vm.regs.set(
                gpr,
                crate::vmm::mmio::merge_load(old, value, insn.size, zero_extend),
                &mut CurrentVmcs,
            );
        }
        (Access::Store { reg, high_byte }, true) => {
            let gpr = vmx::Gpr::from_index(reg).ok_or("bad register")?;
            let v = vm.regs.get(gpr, &CurrentVmcs) >> if high_byte { 8 } else { 0 };
            uart_write(vm, offset, v as u8);
        }
        (Access::StoreImm(v), true) => uart_write(vm, offset, v as u8),
        _ => {
            return Err(format!(
                "MMIO access to {gpa:#x} at rip {rip:#x}: decoded {insn:?} disagrees with the exit"
            ));
        }
    }
    vmwrite(Field::GUEST_RIP, rip + u64::from(insn.len));
    Ok(())
}

/// Module listing for `vm help`.
pub fn describe_images() -> String {
    let names = module_names();
    format!(
        "images: {}",
        if names.is_empty() {
            "none".into()
        } else {
            names.join(", ")
        }
    )
}

// ---------------------------------------------------------------------------
// Live migration: what the migration engines need from the VM manager.

/// Guest-state VMCS fields that travel with a migrating vCPU (everything
/// setup_vmcs gives a guest, as the guest has changed it since).
const MIGRATED_FIELDS: &[Field] = &[
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
const VCPU_STATE_VERSION: u8 = 1;

/// The devices every guest has, as the migration protocol names them.
pub const DEVICES: &[&str] = &[
    "uart16550",
    "pic8259",
    "pit8254",
    "exit-port",
    "request-port",
];

/// What a migration needs to know about a VM before it starts.
pub struct MigrationSource {
    pub mem_bytes: u64,
}

fn with_vm<T>(
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
        v.push(vm.requests);
        v.extend_from_slice(&(MIGRATED_FIELDS.len() as u32).to_le_bytes());
        for &f in MIGRATED_FIELDS {
            v.extend_from_slice(&f.0.to_le_bytes());
            v.extend_from_slice(&vmread(f).to_le_bytes());
        }
        // Every device of DEVICES, even those without state of their own.
        let devices = alloc::vec![
            (String::from("uart16550"), vm.uart.save()),
            (String::from("pic8259"), vm.pic.save()),
            (String::from("pit8254"), vm.pit.save()),
            (String::from("exit-port"), Vec::new()),
            (String::from("request-port"), alloc::vec![vm.requests]),
        ];
        Ok((v, devices))
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
    if mem_bytes == 0
        || !mem_bytes.is_multiple_of(MIB2)
        || mem_bytes > super::MAX_VM_MIB << 20
    {
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

fn u64_at(b: &[u8], at: usize) -> Result<u64, String> {
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
    let (&halted, &requests) = (
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
    let mut uart = Uart::default();
    let mut pic = Pic::default();
    let mut pit = Pit::default();
    for (dev, data) in devices {
        match dev.as_str() {
            "uart16550" => uart.restore(data)?,
            "pic8259" => pic.restore(data)?,
            "pit8254" => pit.restore(data)?,
            "exit-port" if data.is_empty() => {}
            "request-port" if data.len() == 1 => {}
            other => return Err(format!("unknown device or bad state: '{other}'")),
        }
    }
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
    vm.uart = uart;
    vm.pic = pic;
    vm.tick_period = pit.period_tsc(crate::arch::time::tsc_hz()).unwrap_or(0);
    vm.next_tick = now.saturating_add(vm.tick_period);
    let _ = pit.take_changed();
    vm.pit = pit;
    vm.requests = requests;
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
