//! The loader proper (UEFI target only).

extern crate alloc;

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Write;
use core::ptr::NonNull;

use boot::elf::{self, KernelImage};
use boot::{BootInfo, ConfigStatus, MemoryKind, MemoryRegion, Module};
use uart_16550::Uart16550;
use uart_16550::backend::PioBackend;
use uefi::boot::{AllocateType, MemoryType};
use uefi::fs::FileSystem;
use uefi::mem::memory_map::MemoryMap;
use uefi::table::cfg::ConfigTableEntry;
use uefi::{CStr16, CString16};
use uefi::{Status, entry};
use x86_64::structures::paging::{
    FrameAllocator, Mapper, OffsetPageTable, Page, PageTable, PageTableFlags as F, PhysFrame,
    Size1GiB, Size2MiB, Size4KiB,
};
use x86_64::{PhysAddr, VirtAddr};

const PAGE: u64 = 4096;

/// COM1, written directly so messages reach the operator's serial console
/// whatever the firmware does with its own text console, and after
/// `ExitBootServices`.
struct Serial(Option<Uart16550<PioBackend>>);

impl Serial {
    fn new() -> Self {
        // SAFETY: 0x3F8 is COM1 on every PC platform this loader targets, and
        // the loader is the only code driving it while it runs (the firmware's
        // serial driver only writes during our calls into it, on this CPU).
        let uart = unsafe { Uart16550::new_port(0x3f8) }.ok();
        Serial(uart.and_then(|mut u| {
            u.init(uart_16550::Config {
                baud_rate: uart_16550::BaudRate::Baud115200,
                ..uart_16550::Config::default()
            })
            .ok()
            .map(|_| u)
        }))
    }
}

impl Write for Serial {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        if let Some(u) = self.0.as_mut() {
            for b in s.bytes() {
                if b == b'\n' {
                    u.send_bytes_exact(b"\r");
                }
                u.send_bytes_exact(&[b]);
            }
        }
        Ok(())
    }
}

/// Prints one `boot: ` line on COM1.
macro_rules! say {
    ($serial:expr, $($arg:tt)*) => {{
        let _ = writeln!($serial, "boot: {}", format_args!($($arg)*));
    }};
}

/// Why the loader gives up.
enum Error {
    Read(&'static str, uefi::Status),
    TooLarge(&'static str, usize),
    Kernel(elf::ElfError),
    Alloc(&'static str, uefi::Status),
    Map(&'static str),
}

impl core::fmt::Display for Error {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Error::Read(path, st) => write!(f, "cannot read {path}: {st:?}"),
            Error::TooLarge(path, n) => write!(f, "{path} is too large ({n} bytes)"),
            Error::Kernel(e) => write!(f, "{} is not a valid kernel: {e}", boot::KERNEL_PATH),
            Error::Alloc(what, st) => write!(f, "out of memory allocating {what}: {st:?}"),
            Error::Map(what) => write!(f, "cannot build page tables: {what}"),
        }
    }
}

#[entry]
fn main() -> Status {
    // SAFETY: RDTSC has no memory effects; every x86-64 CPU has it.
    let start_tsc = unsafe { core::arch::x86_64::_rdtsc() };
    let mut serial = Serial::new();
    let _ = writeln!(serial);
    say!(serial, "hv loader {}", env!("CARGO_PKG_VERSION"));
    match load(&mut serial, start_tsc) {
        Ok(never) => match never {},
        Err(e) => {
            say!(serial, "error: {e}");
            let mut msg = String::new();
            let _ = write!(msg, "boot: error: {e}\r\n");
            if let Ok(text) = CString16::try_from(msg.as_str()) {
                uefi::system::with_stdout(|out| {
                    let _ = out.output_string(&text);
                });
            }
            say!(serial, "returning to the firmware");
            // Give an operator at the firmware screen time to read it.
            uefi::boot::stall(core::time::Duration::from_secs(3));
            Status::LOAD_ERROR
        }
    }
}

fn read_file(fs: &mut FileSystem, path: &'static str) -> Result<Option<Vec<u8>>, Error> {
    let p = CString16::try_from(path).map_err(|_| Error::Read(path, Status::INVALID_PARAMETER))?;
    match fs.read(p.as_ref()) {
        Ok(v) => Ok(Some(v)),
        Err(uefi::fs::Error::Io(e)) if e.uefi_error.status() == Status::NOT_FOUND => Ok(None),
        Err(uefi::fs::Error::Io(e)) => Err(Error::Read(path, e.uefi_error.status())),
        Err(_) => Err(Error::Read(path, Status::LOAD_ERROR)),
    }
}

/// Allocates `bytes` (rounded up to pages) of zeroed loader memory.
fn alloc_zeroed(what: &'static str, bytes: u64) -> Result<NonNull<u8>, Error> {
    let pages = bytes.div_ceil(PAGE).max(1) as usize;
    let p = uefi::boot::allocate_pages(AllocateType::AnyPages, MemoryType::LOADER_DATA, pages)
        .map_err(|e| Error::Alloc(what, e.status()))?;
    // SAFETY: allocate_pages returned `pages` pages of memory we own, mapped
    // identity by the firmware.
    unsafe { core::ptr::write_bytes(p.as_ptr(), 0, pages * PAGE as usize) };
    Ok(p)
}

/// Copies `data` into fresh page-aligned loader memory.
fn copy_to_pages(what: &'static str, data: &[u8]) -> Result<u64, Error> {
    let p = alloc_zeroed(what, data.len() as u64)?;
    // SAFETY: the destination holds at least data.len() bytes and is a fresh
    // allocation, so the ranges cannot overlap.
    unsafe { core::ptr::copy_nonoverlapping(data.as_ptr(), p.as_ptr(), data.len()) };
    Ok(p.as_ptr() as u64)
}

struct UefiFrames;

// SAFETY: every frame returned comes from a fresh `allocate_pages` call and is
// therefore unused and owned by the loader.
unsafe impl FrameAllocator<Size4KiB> for UefiFrames {
    fn allocate_frame(&mut self) -> Option<PhysFrame<Size4KiB>> {
        let p = alloc_zeroed("page tables", PAGE).ok()?;
        PhysFrame::from_start_address(PhysAddr::new(p.as_ptr() as u64)).ok()
    }
}

fn load(serial: &mut Serial, start_tsc: u64) -> Result<core::convert::Infallible, Error> {
    let fs_proto = uefi::boot::get_image_file_system(uefi::boot::image_handle())
        .map_err(|e| Error::Read("the boot volume", e.status()))?;
    let mut fs = FileSystem::new(fs_proto);

    let kernel_file = read_file(&mut fs, boot::KERNEL_PATH)?
        .ok_or(Error::Read(boot::KERNEL_PATH, Status::NOT_FOUND))?;
    let image = elf::parse(&kernel_file).map_err(Error::Kernel)?;

    let (config, config_status) = match read_file(&mut fs, boot::CONFIG_PATH) {
        Ok(Some(c)) if c.len() <= boot::MAX_CONFIG_LEN => {
            let addr = copy_to_pages("the config", &c)?;
            ((addr, c.len() as u64), ConfigStatus::Loaded)
        }
        Ok(Some(c)) => {
            say!(
                serial,
                "warning: {}",
                Error::TooLarge(boot::CONFIG_PATH, c.len())
            );
            ((0, 0), ConfigStatus::Unreadable)
        }
        Ok(None) => ((0, 0), ConfigStatus::Missing),
        Err(e) => {
            say!(serial, "warning: {e}");
            ((0, 0), ConfigStatus::Unreadable)
        }
    };

    let modules = load_modules(serial, &mut fs)?;
    let rsdp = find_rsdp();
    say!(
        serial,
        "kernel {} bytes, config {}, {} module(s), {}",
        kernel_file.len(),
        match config_status {
            ConfigStatus::Loaded => "loaded",
            ConfigStatus::Missing => "missing",
            ConfigStatus::Unreadable => "unreadable",
        },
        modules.len(),
        if rsdp != 0 {
            "ACPI RSDP found"
        } else {
            "no ACPI RSDP from the firmware"
        }
    );

    let kernel_phys = load_kernel(&kernel_file, &image)?;
    drop(kernel_file);
    let cr3 = build_page_tables(&image, kernel_phys)?;

    // The BootInfo, the memory map and the module table share one
    // allocation made now: nothing can be allocated after ExitBootServices.
    let map_capacity = uefi::boot::memory_map(MemoryType::LOADER_DATA)
        .map(|m| m.len())
        .unwrap_or(128)
        + 64;
    let bi_bytes = core::mem::size_of::<BootInfo>() as u64
        + (map_capacity * core::mem::size_of::<MemoryRegion>()) as u64
        + (modules.len() * core::mem::size_of::<Module>()) as u64
        + 64;
    let bi_base = alloc_zeroed("the boot info", bi_bytes)?.as_ptr() as u64;
    let regions_addr = (bi_base + core::mem::size_of::<BootInfo>() as u64 + 15) & !15;
    let modules_addr =
        (regions_addr + (map_capacity * core::mem::size_of::<MemoryRegion>()) as u64 + 15) & !15;
    for (i, m) in modules.iter().enumerate() {
        // SAFETY: modules_addr .. + modules.len() entries lies inside the
        // allocation sized for it above, suitably aligned for Module.
        unsafe { (modules_addr as *mut Module).add(i).write(*m) };
    }

    say!(serial, "starting the kernel");
    let module_count = modules.len();
    drop(fs);
    drop(modules);
    // SAFETY: no protocol, pool string or boot-services reference is used
    // after this point: `fs` and the file buffers were dropped just above.
    let mmap = unsafe { uefi::boot::exit_boot_services(None) };

    // SAFETY: regions_addr points to room for map_capacity regions inside the
    // boot-info allocation, which is identity-mapped and ours.
    let regions =
        unsafe { core::slice::from_raw_parts_mut(regions_addr as *mut MemoryRegion, map_capacity) };
    // The global allocator is gone with boot services: build the sorted list
    // in place instead (insertion sort over a few hundred entries).
    let mut n = 0usize;
    for d in mmap.entries() {
        let kind = kind_of(d.ty);
        let r = MemoryRegion {
            start: d.phys_start,
            len: d.page_count * PAGE,
            kind,
            _reserved: 0,
        };
        if n < map_capacity {
            let mut i = n;
            while i > 0 && regions[i - 1].start > r.start {
                regions[i] = regions[i - 1];
                i -= 1;
            }
            regions[i] = r;
            n += 1;
        }
    }
    // Merge neighbours of the same kind.
    let mut m = 0usize;
    for i in 0..n {
        let r = regions[i];
        if m > 0 && regions[m - 1].kind == r.kind && regions[m - 1].end() == r.start {
            regions[m - 1].len += r.len;
        } else {
            regions[m] = r;
            m += 1;
        }
    }

    let info = BootInfo {
        magic: boot::BOOT_MAGIC,
        version: boot::BOOT_VERSION,
        size: core::mem::size_of::<BootInfo>() as u32,
        memory_map: regions_addr,
        memory_map_len: m as u64,
        rsdp,
        config: config.0,
        config_len: config.1,
        config_status,
        _reserved: 0,
        modules: modules_addr,
        modules_len: module_count as u64,
        loader_start_tsc: start_tsc,
        kernel_phys,
        kernel_len: image.virt_end - image.virt_start,
    };
    // SAFETY: bi_base is the start of a page-aligned allocation large enough
    // for a BootInfo.
    unsafe { (bi_base as *mut BootInfo).write(info) };
    core::mem::forget(mmap);

    // SAFETY: the new tables identity-map all physical memory (so this code,
    // its stack and the boot info stay reachable) and map the kernel's
    // segments at their linked addresses; interrupts are off so no firmware
    // handler runs on the new tables; EFER.NXE is set before any NX entry
    // is used.
    unsafe {
        x86_64::instructions::interrupts::disable();
        x86_64::registers::model_specific::Efer::update(|f| {
            f.insert(x86_64::registers::model_specific::EferFlags::NO_EXECUTE_ENABLE)
        });
        core::arch::asm!("mov cr3, {}", in(reg) cr3, options(nostack));
        let entry: extern "sysv64" fn(u64) -> ! = core::mem::transmute(image.entry as usize);
        entry(bi_base)
    }
}

fn kind_of(ty: MemoryType) -> MemoryKind {
    match ty {
        MemoryType::CONVENTIONAL
        | MemoryType::BOOT_SERVICES_CODE
        | MemoryType::BOOT_SERVICES_DATA => MemoryKind::Usable,
        MemoryType::LOADER_CODE | MemoryType::LOADER_DATA => MemoryKind::Loader,
        MemoryType::ACPI_RECLAIM => MemoryKind::AcpiReclaimable,
        MemoryType::ACPI_NON_VOLATILE => MemoryKind::AcpiNvs,
        MemoryType::RUNTIME_SERVICES_CODE | MemoryType::RUNTIME_SERVICES_DATA => {
            MemoryKind::FirmwareRuntime
        }
        MemoryType::UNUSABLE => MemoryKind::Unusable,
        _ => MemoryKind::Reserved,
    }
}

/// The ACPI 2.0 RSDP if the firmware has one, else the 1.0 one, else 0.
fn find_rsdp() -> u64 {
    use uefi::table::cfg::ConfigTableEntry as E;
    uefi::system::with_config_table(|t: &[ConfigTableEntry]| {
        let find = |g| t.iter().find(|e| e.guid == g).map(|e| e.address as u64);
        find(E::ACPI2_GUID)
            .or_else(|| find(E::ACPI_GUID))
            .unwrap_or(0)
    })
}

/// Reads every regular file of the modules directory into page-aligned memory.
fn load_modules(serial: &mut Serial, fs: &mut FileSystem) -> Result<Vec<Module>, Error> {
    let mut out = Vec::new();
    let dir = CString16::try_from(boot::MODULES_DIR)
        .map_err(|_| Error::Read(boot::MODULES_DIR, Status::INVALID_PARAMETER))?;
    let entries = match fs.read_dir(dir.as_ref()) {
        Ok(it) => it,
        // No modules directory simply means no modules.
        Err(_) => return Ok(out),
    };
    for entry in entries {
        let Ok(info) = entry else { continue };
        if info.is_directory() {
            continue;
        }
        let name: &CStr16 = info.file_name();
        let mut name_utf8 = String::new();
        let _ = write!(name_utf8, "{name}");
        if name_utf8.len() > boot::MAX_MODULE_NAME {
            say!(
                serial,
                "warning: module name {name_utf8} is longer than {} bytes; skipped",
                boot::MAX_MODULE_NAME
            );
            continue;
        }
        let mut path = dir.clone();
        path.push_str(&CString16::try_from("\\").unwrap_or_default());
        path.push_str(name);
        let data = match fs.read(path.as_ref()) {
            Ok(d) => d,
            Err(e) => {
                say!(
                    serial,
                    "warning: cannot read module {name_utf8}: {e:?}; skipped"
                );
                continue;
            }
        };
        let start = copy_to_pages("a module", &data)?;
        let mut m = Module {
            start,
            len: data.len() as u64,
            name: [0; boot::MAX_MODULE_NAME],
            name_len: name_utf8.len() as u32,
            _reserved: 0,
        };
        m.name[..name_utf8.len()].copy_from_slice(name_utf8.as_bytes());
        say!(serial, "module {name_utf8}: {} bytes", data.len());
        out.push(m);
    }
    Ok(out)
}

/// Copies the kernel's segments into one physically contiguous allocation
/// laid out like the virtual image; returns its physical address.
fn load_kernel(file: &[u8], image: &KernelImage) -> Result<u64, Error> {
    let len = image.virt_end - image.virt_start;
    let base = alloc_zeroed("the kernel image", len)?.as_ptr() as u64;
    for s in image.segments() {
        let dst = base + (s.vaddr - image.virt_start);
        let src = &file[s.file_offset as usize..(s.file_offset + s.file_len) as usize];
        // SAFETY: elf::parse checked that every segment lies inside
        // [virt_start, virt_end), so dst..dst+file_len is inside the zeroed
        // allocation of `len` bytes; src was bounds-checked against the file.
        unsafe { core::ptr::copy_nonoverlapping(src.as_ptr(), dst as *mut u8, src.len()) };
    }
    Ok(base)
}

/// Builds the kernel's first page tables: all physical memory (and at least
/// the first 4 GiB, for MMIO such as the local APIC) identity-mapped, the
/// kernel's segments at their linked addresses with their permissions.
fn build_page_tables(image: &KernelImage, kernel_phys: u64) -> Result<u64, Error> {
    let top = uefi::boot::memory_map(MemoryType::LOADER_DATA)
        .map_err(|e| Error::Alloc("the memory map", e.status()))?
        .entries()
        // MMIO windows (flash, 64-bit PCI holes) can sit far above RAM; the
        // kernel maps the MMIO it needs itself.
        .filter(|d| !matches!(d.ty, MemoryType::MMIO | MemoryType::MMIO_PORT_SPACE))
        .map(|d| d.phys_start + d.page_count * PAGE)
        .max()
        .unwrap_or(0)
        .max(4 << 30);
    let mut frames = UefiFrames;
    let pml4_frame = frames
        .allocate_frame()
        .ok_or(Error::Map("no memory for the PML4"))?;
    // SAFETY: the frame is a fresh zeroed page owned by us, identity-mapped.
    let pml4 = unsafe { &mut *(pml4_frame.start_address().as_u64() as *mut PageTable) };
    // SAFETY: physical memory is identity-mapped while boot services run, so
    // physical offset 0 is right for walking the new tables.
    let mut mapper = unsafe { OffsetPageTable::new(pml4, VirtAddr::new(0)) };

    let rw = F::PRESENT | F::WRITABLE;
    let huge = has_1gib_pages();
    let mut addr = 0u64;
    while addr < top {
        if huge && addr.is_multiple_of(1 << 30) && top - addr >= (1 << 30) {
            let page = Page::<Size1GiB>::containing_address(VirtAddr::new(addr));
            let frame = PhysFrame::<Size1GiB>::containing_address(PhysAddr::new(addr));
            // SAFETY: identity mappings of physical memory alias nothing
            // else in these fresh tables.
            unsafe { mapper.map_to(page, frame, rw, &mut frames) }
                .map_err(|_| Error::Map("identity map (1 GiB)"))?
                .ignore();
            addr += 1 << 30;
        } else {
            let page = Page::<Size2MiB>::containing_address(VirtAddr::new(addr));
            let frame = PhysFrame::<Size2MiB>::containing_address(PhysAddr::new(addr));
            // SAFETY: as above.
            unsafe { mapper.map_to(page, frame, rw, &mut frames) }
                .map_err(|_| Error::Map("identity map (2 MiB)"))?
                .ignore();
            addr += 2 << 20;
        }
    }
    for s in image.segments() {
        let mut flags = F::PRESENT | F::GLOBAL;
        if s.writable {
            flags |= F::WRITABLE;
        }
        if !s.executable {
            flags |= F::NO_EXECUTE;
        }
        let pages = s.mem_len.div_ceil(PAGE);
        for i in 0..pages {
            let va = s.vaddr + i * PAGE;
            let pa = kernel_phys + (va - image.virt_start);
            let page = Page::<Size4KiB>::containing_address(VirtAddr::new(va));
            let frame = PhysFrame::<Size4KiB>::containing_address(PhysAddr::new(pa));
            // SAFETY: kernel pages are mapped once each (elf::parse rejects
            // segments sharing a page) to the frames allocated for them.
            unsafe { mapper.map_to(page, frame, flags, &mut frames) }
                .map_err(|_| Error::Map("kernel segment"))?
                .ignore();
        }
    }
    Ok(pml4_frame.start_address().as_u64())
}

/// CPUID.80000001H:EDX.Page1GB[bit 26] (SDM Vol. 2A, CPUID).
fn has_1gib_pages() -> bool {
    use core::arch::x86_64::__cpuid;
    // CPUID is available on every x86-64 CPU and has no side effects.
    if __cpuid(0x8000_0000).eax < 0x8000_0001 {
        return false;
    }
    __cpuid(0x8000_0001).edx & (1 << 26) != 0
}
