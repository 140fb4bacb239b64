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

use spin::Mutex;

use vmx::caps::VmxCapabilities;

use super::prelude::*;

pub(super) const MIB2: u64 = 2 << 20;
/// Guest-physical layout set up by the hypervisor.
pub(super) const GUEST_PML4: u64 = 0x1000;
pub(super) const GUEST_PDPT: u64 = 0x2000;
pub(super) const GUEST_PD: u64 = 0x3000; // four PDs: 0x3000-0x6FFF
pub(super) const GUEST_GDT: u64 = 0x8000;
pub(super) const GUEST_STACK_TOP: u64 = 0x80000;
/// Guest images load from 1 MiB up.
pub const GUEST_IMAGE_BASE: u64 = 0x10_0000;
/// The guest's 16550 is also memory-mapped here (registers one byte apart),
/// through EPT violations and [`crate::vmm::mmio`] instruction decoding.
pub use crate::vmm::devices::MMIO_UART_BASE;
/// Time slice per VM entry.
pub(super) const SLICE_MS: u64 = 5;
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
    pub(super) fn name(&self) -> &'static str {
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

    pub(super) fn runs(&self) -> bool {
        matches!(self, State::Running | State::Halted)
    }
}

/// One guest.
pub struct Vm {
    /// Unique for the life of the host (names are reused).
    pub(super) id: u64,
    pub(super) name: String,
    pub(super) mem_mib: u64,
    pub(super) image: String,
    pub(super) arg: u64,
    pub(super) state: State,
    /// Host-physical start of each 2 MiB run of guest RAM, in guest order.
    pub(super) chunks: Vec<u64>,
    /// RAM is all zeros and nothing has written to it since: the next
    /// `vm start` need not zero it again.
    pub(super) ram_zeroed: bool,
    pub(super) ept: ept::Ept,
    pub(super) vmcs: u64,
    pub(super) launched: bool,
    pub(super) regs: GuestRegs,
    /// x87/SSE/AVX, debug and SYSCALL registers (switched lazily).
    pub(super) ctx: GuestContext,
    /// XCR0 components the guest may enable with XSETBV.
    pub(super) xcr0_allowed: u64,
    /// The CPU this guest sees (CPUID), the same on every host it runs on.
    pub(super) profile: Profile,
    /// Its CPUID answers, computed once from the profile.
    pub(super) cpuid: vcpu::profile::CpuidTable,
    /// Every device the guest sees (ports, MMIO, IRQs): see [`crate::vmm::bus`].
    pub(super) bus: Bus,
    /// Guest time: its TSC and its timer's ticks.
    pub(super) clock: GuestClock,
    pub(super) exits: [u64; 70],
    pub(super) total_exits: u64,
    pub(super) guest_tsc: u64,
    pub(super) started_tsc: u64,
    /// Dirty-page tracking, while on (live migration, `vm dirty`).
    pub(super) dirty: Option<ept::DirtyLog>,
    /// Each consumer's own view of the dirty log: a live migration's, and
    /// the console's (`vm dirty`), which cannot steal each other's pages.
    pub(super) migration_view: Option<ept::ViewId>,
    pub(super) console_view: Option<ept::ViewId>,
    /// The PML buffer page while PML tracking is on (0: none).
    pub(super) pml_page: u64,
    /// Paused by a live migration (the final round): not run.
    pub(super) paused: bool,
    /// Auto-converge level (0: full speed): one timer tick in 2^level
    /// reaches the guest.
    pub(super) slow: u8,
    /// Timer ticks due so far (for the auto-converge ratio).
    pub(super) skipped: u32,
    /// Being migrated away (one migration at a time per VM).
    pub(super) migrating: bool,
    /// Fault tolerance: this VM's side of the lockstep (primary or
    /// secondary), while protected.
    pub(super) ft: Option<alloc::boxed::Box<lockstep::Lockstep>>,
}

/// VT-x state of the host CPU.
pub(super) struct Host {
    pub(super) caps: VmxCapabilities,
    pub(super) pin: u32,
    pub(super) primary: u32,
    pub(super) secondary: u32,
    pub(super) exit: u32,
    pub(super) entry: u32,
    /// Preemption timer counts once per 2^rate TSC ticks.
    pub(super) timer_rate: u32,
    pub(super) cr0_fixed: (u64, u64),
    pub(super) cr4_fixed: (u64, u64),
    /// EPT accessed/dirty flags are on in every EPTP (the CPU supports them).
    pub(super) ept_ad: bool,
    /// How this CPU tracks guest writes for live migration.
    pub(super) dirty_mechanism: ept::Mechanism,
    /// Extended state (XSAVE) this CPU offers guests.
    pub(super) xstate: context::XstateHost,
    /// What CPU profiles may offer on this host ([`offerable`]).
    pub(super) offer: vcpu::profile::HostOffer,
    /// Whether RDRAND/RDSEED exit (else profiles hide them).
    pub(super) rand_exits: vcpu::profile::RandExits,
}

pub(super) struct Manager {
    pub(super) host: Option<Host>,
    pub(super) vms: Vec<Vm>,
    pub(super) next: usize,
    pub(super) current_vmcs: u64,
    /// The VM whose context the CPU holds (0: none).
    pub(super) ctx_owner: u64,
    /// The id the next VM gets.
    pub(super) next_id: u64,
    /// Context switches between guests, and the TSC cycles they took.
    pub(super) ctx_switches: u64,
    pub(super) ctx_switch_cycles: u64,
}

pub(super) static MANAGER: Mutex<Manager> = Mutex::new(Manager {
    host: None,
    vms: Vec::new(),
    next: 0,
    current_vmcs: 0,
    ctx_owner: 0,
    next_id: 1,
    ctx_switches: 0,
    ctx_switch_cycles: 0,
});

/// Guest images (modules the loader read from the ESP).
pub(super) static MODULES: spin::Once<Vec<(String, &'static [u8])>> = spin::Once::new();

/// Records the loader's modules as guest images.
pub fn set_modules(modules: Vec<(String, &'static [u8])>) {
    MODULES.call_once(|| modules);
}

pub(super) fn module(name: &str) -> Option<&'static [u8]> {
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
// Lifecycle

/// `vm create`.
/// What `vm create` may choose beyond RAM, image and argument.
#[derive(Debug, Clone)]
pub struct VmOptions {
    /// CPU profile name (`host`: this host's own features).
    pub cpu: String,
    /// RDTSC/RDTSCP exit to the guest clock.
    pub rdtsc_exit: bool,
}

impl Default for VmOptions {
    fn default() -> VmOptions {
        VmOptions {
            cpu: String::from(vcpu::profile::HOST),
            rdtsc_exit: false,
        }
    }
}

pub fn create(
    name: &str,
    mem_mib: u64,
    image: &str,
    arg: u64,
    opts: &VmOptions,
) -> Result<(), VmError> {
    let mut m = MANAGER.lock();
    if m.vms.iter().any(|v| v.name == name) {
        return Err(VmError::Exists(name.into()));
    }
    let data = module(image).ok_or_else(|| {
        let names = module_names();
        if names.is_empty() {
            VmError::NoModules(image.into())
        } else {
            VmError::NoImage {
                image: image.into(),
                available: names.join(", "),
            }
        }
    })?;
    let ram = mem_mib.div_ceil(2) * MIB2;
    boot::elf::parse_range(data, GUEST_IMAGE_BASE, ram).map_err(|e| VmError::BadImage {
        image: image.into(),
        mib: mem_mib,
        why: e.to_string(),
    })?;
    if m.host.is_none() {
        m.host = Some(enable_vmx()?);
    }
    let profile = {
        let host = m.host.as_ref().ok_or(VmError::NoVmx)?;
        Profile::resolve(&opts.cpu, &host.offer, host.rand_exits)?
    };
    let mut vm =
        new_vm(&mut m, name, ram, image, arg, State::Created, profile).map_err(|free| {
            VmError::NoMemory {
                mib: mem_mib,
                free: free >> 20,
            }
        })??;
    vm.clock.exiting = opts.rdtsc_exit;
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
pub(super) fn new_vm(
    m: &mut Manager,
    name: &str,
    ram: u64,
    image: &str,
    arg: u64,
    state: State,
    profile: Profile,
) -> Result<Result<Vm, VmError>, u64> {
    let Some(xstate) = m.host.as_ref().map(|h| h.xstate) else {
        return Ok(Err(VmError::NoVmx));
    };
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
    let bus = match platform() {
        Ok(bus) => bus,
        Err(e) => {
            free_chunks(&chunks);
            return Ok(Err(VmError::Platform(e)));
        }
    };
    let revision = m.host.as_ref().map_or(0, |h| h.caps.basic.revision_id);
    let (ept, vmcs) = match build_ept_and_vmcs(&chunks, revision) {
        Ok(v) => v,
        Err(e) => {
            // Nothing of a half-built VM stays allocated.
            free_chunks(&chunks);
            return Ok(Err(e));
        }
    };
    let id = m.next_id;
    m.next_id += 1;
    Ok(Ok(Vm {
        id,
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
        ctx: GuestContext::reset(&xstate),
        xcr0_allowed: if xstate.xsave {
            xstate.xcr0_max & profile.xcr0_mask()
        } else {
            0
        },
        cpuid: vcpu::profile::CpuidTable::new(&profile, &cpuid_inputs(1, false), &HostCpuid),
        profile,
        bus,
        clock: GuestClock::default(),
        exits: [0; 70],
        total_exits: 0,
        guest_tsc: 0,
        started_tsc: 0,
        dirty: None,
        migration_view: None,
        console_view: None,
        pml_page: 0,
        paused: false,
        slow: 0,
        skipped: 0,
        migrating: false,
        ft: None,
    }))
}

/// EPT tables mapping `chunks` at guest-physical 0, and a cleared VMCS.
/// On failure everything it allocated is freed again.
pub(super) fn build_ept_and_vmcs(
    chunks: &[u64],
    revision: u32,
) -> Result<(ept::Ept, u64), VmError> {
    let mut ept = ept::Ept::new(&mut KernelFrames).map_err(VmError::Ept)?;
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
                Err(e) => VmError::Ept(e),
                Ok(()) => VmError::NoPage("VMCS"),
            });
        }
    };
    // SAFETY: a fresh frame; the VMCS revision id goes in its first dword.
    unsafe { core::ptr::write_volatile(vmcs as *mut u32, revision) };
    // SAFETY: VMX is on; `vmcs` is a VMCS region with the right revision.
    if let Err(e) = unsafe { insn::vmclear(vmcs) } {
        free_page(vmcs);
        ept.destroy(&mut IdentityMem, &mut KernelFrames);
        return Err(VmError::VmxInsn {
            what: "VMCLEAR",
            why: format!("{e:?}"),
        });
    }
    Ok((ept, vmcs))
}

pub(super) fn free_chunks(chunks: &[u64]) {
    if let Some(f) = crate::mm::FRAMES.lock().as_mut() {
        for &c in chunks {
            let _ = f.free_contiguous(crate::mm::addr::Hpa::new(c), 512);
        }
    }
}

impl Vm {
    /// Ok if the VM runs (running or halted), else why not.
    pub(super) fn must_run(&self) -> Result<(), VmError> {
        if self.state.runs() {
            Ok(())
        } else {
            Err(VmError::NotRunning {
                name: self.name.clone(),
                state: self.state.name(),
            })
        }
    }
}

pub(super) fn find(m: &mut Manager, name: &str) -> Result<usize, VmError> {
    m.vms
        .iter()
        .position(|v| v.name == name)
        .ok_or_else(|| VmError::NoSuchVm(name.into()))
}

/// Clears VM `i`'s launch state (VMCLEAR) and makes its VMCS current, for
/// a first VMLAUNCH: a (re)start or an incoming guest.
pub(super) fn fresh_launch(m: &mut Manager, i: usize) -> Result<(), VmError> {
    let vmcs = m.vms[i].vmcs;
    // SAFETY: `vmcs` is this VM's VMCS region; VMX is on.
    unsafe { insn::vmclear(vmcs) }.map_err(|e| VmError::VmxInsn {
        what: "VMCLEAR",
        why: format!("{e:?}"),
    })?;
    m.current_vmcs = 0;
    make_current(m, vmcs);
    Ok(())
}

/// `vm start`: loads the image into fresh RAM and runs it from its entry.
pub fn start(name: &str) -> Result<(), VmError> {
    let mut m = MANAGER.lock();
    let i = find(&mut m, name)?;
    if m.vms[i].ft.is_some() {
        return Err(VmError::Protected(name.into()));
    }
    if m.vms[i].state.runs() {
        return Err(VmError::AlreadyRunning(name.into()));
    }
    fresh_launch(&mut m, i)?;
    let Manager {
        host,
        vms,
        ctx_owner,
        ..
    } = &mut *m;
    let host = host.as_ref().ok_or(VmError::NoVmx)?;
    let vm = &mut vms[i];
    dirty_stop(host, vm);
    // A restart begins from reset registers: the CPU's copy (if this VM
    // owned it) is stale, the next slice loads the fresh one.
    if *ctx_owner == vm.id {
        *ctx_owner = 0;
    }
    vm.ctx = GuestContext::reset(&host.xstate);
    let data = module(&vm.image).ok_or_else(|| VmError::ImageGone(vm.image.clone()))?;
    let image = boot::elf::parse_range(data, GUEST_IMAGE_BASE, vm.ram_bytes())
        .map_err(|e| VmError::Load(e.to_string()))?;
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
    vm.bus = platform().map_err(VmError::Platform)?;
    vm.state = State::Running;
    vm.started_tsc = arch::rdtsc();
    log::debug!("vm {name}: started at {:#x}", image.entry);
    Ok(())
}

/// `vm stop`.
pub fn stop(name: &str) -> Result<(), VmError> {
    let mut m = MANAGER.lock();
    let i = find(&mut m, name)?;
    let vm = &mut m.vms[i];
    vm.must_run()?;
    if vm.migrating {
        return Err(VmError::Migrating(name.into()));
    }
    if lockstep::replaying(vm) {
        return Err(VmError::Secondary(name.into()));
    }
    flush_output(vm);
    vm.state = State::Stopped { code: None };
    log::debug!("vm {name}: stopped by the operator");
    Ok(())
}

/// `vm delete`: stops it and frees its RAM, tables and VMCS.
pub fn delete(name: &str) -> Result<(), VmError> {
    let mut m = MANAGER.lock();
    let i = find(&mut m, name)?;
    if m.vms[i].migrating {
        return Err(VmError::Migrating(name.into()));
    }
    if m.vms[i].ft.is_some() {
        return Err(VmError::Protected(name.into()));
    }
    let vm = m.vms.remove(i);
    if m.current_vmcs == vm.vmcs {
        m.current_vmcs = 0;
    }
    if m.ctx_owner == vm.id {
        m.ctx_owner = 0;
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
pub fn request(name: &str) -> Result<u8, VmError> {
    let mut m = MANAGER.lock();
    let i = find(&mut m, name)?;
    if lockstep::replaying(&m.vms[i]) {
        return Err(VmError::Secondary(name.into()));
    }
    lockstep::request(&mut m.vms[i]).ok_or_else(|| VmError::NoRequestPort(name.into()))
}

/// `vm show`: what the VM is (its configuration, CPU profile included).
pub fn show(name: &str) -> Result<(), VmError> {
    let mut m = MANAGER.lock();
    let i = find(&mut m, name)?;
    let vm = &m.vms[i];
    println!("vm {}: {}", vm.name, vm.state.name());
    println!(
        "  ram {} MiB, image {}, arg {}",
        vm.mem_mib, vm.image, vm.arg
    );
    println!("  cpu {}", vm.profile);
    let features: Vec<&str> = vm.profile.features().names().collect();
    for line in crate::text::wrap_list("features: ", &features) {
        println!("{line}");
    }
    println!(
        "  xcr0 up to {:#x} (now {:#x}), rdtsc {}",
        vm.xcr0_allowed,
        vm.ctx.xcr0,
        if vm.clock.exiting { "exits" } else { "native" }
    );
    Ok(())
}

pub fn stats(name: &str) -> Result<(), VmError> {
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
    let pic = vm.bus.find::<Pic>().cloned().unwrap_or_default();
    println!(
        "  pic irr {:#04x} isr {:#04x} imr {:#04x}; timer {}",
        pic.irr,
        pic.isr,
        pic.imr,
        if vm.clock.period() == 0 {
            String::from("off")
        } else {
            format!(
                "every {} us, next in {} us{}{}",
                crate::arch::time::tsc_to_us(vm.clock.period()),
                crate::arch::time::tsc_to_us(vm.clock.until_next(now)),
                if vm.paused { ", paused" } else { "" },
                if vm.migrating { ", migrating" } else { "" }
            )
        }
    );
    println!(
        "  console bytes {}",
        vm.bus.find::<Uart>().map_or(0, |u| u.bytes)
    );
    if m.ctx_switches > 0 {
        println!(
            "  guest context switches (all VMs): {}, {} TSC cycles each",
            m.ctx_switches,
            m.ctx_switch_cycles / m.ctx_switches
        );
    }
    let mechanism = m.host.as_ref().map(|h| h.dirty_mechanism);
    match (&vm.dirty, mechanism) {
        (Some(log), _) => println!("  dirty tracking: {} ({})", log.mechanism(), log.stats()),
        (None, Some(mech)) => println!("  dirty tracking: off (this CPU would use {mech})"),
        (None, None) => {}
    }
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
