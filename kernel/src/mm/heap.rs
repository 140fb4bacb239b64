//! Physical memory, the kernel heap and the kernel's own page tables.
//!
//! Order matters at boot: the frame allocator is built from the loader's
//! memory map (its bitmap carved out of the first usable region that fits),
//! the heap is one contiguous run of frames, then the kernel replaces the
//! loader's page tables with its own:
//!
//! - physical memory identity-mapped (so physical = virtual for the kernel's
//!   data structures, ACPI tables and MMIO), never executable, with page 0
//!   left unmapped so a null pointer faults; RAM write-back, everything else
//!   below 4 GiB uncached;
//! - the kernel image at its linked higher-half address, text read-only and
//!   executable, rodata read-only, data and bss writable, both non-executable.

use core::fmt;

use boot::{MemoryKind, MemoryRegion};
use linked_list_allocator::LockedHeap;
use spin::Mutex;
use x86_64::structures::paging::{
    FrameAllocator as X86FrameAllocator, Mapper, OffsetPageTable, Page, PageTable,
    PageTableFlags as F, PhysFrame, Size1GiB, Size2MiB, Size4KiB,
};
use x86_64::{PhysAddr, VirtAddr};

use crate::mm::addr::{Hpa, PAGE_SIZE};
use crate::mm::frames::{FrameAllocator, bitmap_words};

/// Kernel heap size.
pub const HEAP_SIZE: u64 = 8 << 20;

/// Heap bytes the network must leave free when it allocates a connection
/// (see [`netstack::stack::Stack::set_memory_budget`]): the rest of the
/// host (console, VM bookkeeping, migration state) lives here too.
pub const HEAP_RESERVE: usize = 2 << 20;

/// Free heap bytes now.
pub fn heap_free() -> usize {
    HEAP.lock().free()
}

#[global_allocator]
static HEAP: LockedHeap = LockedHeap::empty();

/// The frame allocator, once [`init`] has run.
pub static FRAMES: Mutex<Option<FrameAllocator<'static>>> = Mutex::new(None);

/// Memory figures for `mem` and `status`.
#[derive(Debug, Clone, Copy)]
pub struct Usage {
    pub usable_frames: u64,
    pub used_frames: u64,
    pub free_frames: u64,
    pub heap_bytes: u64,
    pub heap_used: u64,
    /// Memory the loader handed over (kernel image, boot data, modules).
    pub loader_bytes: u64,
}

/// Why memory set-up failed (fatal at boot).
#[derive(Debug)]
pub enum MemoryError {
    NoRoomForBitmap(u64),
    Frames(crate::mm::frames::FrameError),
    NoHeap,
    PageTables(&'static str),
}

impl fmt::Display for MemoryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MemoryError::NoRoomForBitmap(n) => {
                write!(f, "no usable region holds the {n}-byte frame bitmap")
            }
            MemoryError::Frames(e) => write!(f, "frame allocator: {e}"),
            MemoryError::NoHeap => write!(
                f,
                "no {} MiB run of free frames for the heap",
                HEAP_SIZE >> 20
            ),
            MemoryError::PageTables(what) => write!(f, "building the kernel page tables: {what}"),
        }
    }
}

static LOADER_BYTES: spin::Once<u64> = spin::Once::new();

/// Sets up frames, heap and page tables. `kernel_phys` is where the loader
/// put the image.
pub fn init(regions: &[MemoryRegion], kernel_phys: u64) -> Result<(), MemoryError> {
    let usable = || regions.iter().filter(|r| r.kind == MemoryKind::Usable);
    let max = usable().map(|r| r.end()).max().unwrap_or(0);
    let words = bitmap_words(Hpa::new(max));
    let bytes = (words as u64 * 8).div_ceil(PAGE_SIZE) * PAGE_SIZE;
    let home = usable()
        .filter_map(|r| {
            // Not frame 0: it stays unmapped so that null pointers fault.
            let start = r.start.max(PAGE_SIZE).div_ceil(PAGE_SIZE) * PAGE_SIZE;
            (start.checked_add(bytes)? <= r.end()).then_some(start)
        })
        .next()
        .ok_or(MemoryError::NoRoomForBitmap(bytes))?;
    // SAFETY: `home..home+bytes` lies inside a usable region, which nothing
    // else uses yet (the loader's data is in Loader regions, the firmware's
    // GDT/IDT were replaced by cpu::init, and the stack is in .bss); physical
    // memory is identity-mapped, and the allocator reserves this range below
    // so it is never handed out. It lives for the kernel's lifetime.
    let storage = unsafe { core::slice::from_raw_parts_mut(home as *mut u64, words) };
    let mut frames = FrameAllocator::new(
        storage,
        Hpa::new(max),
        usable().map(|r| (Hpa::new(r.start), r.len)),
    )
    .map_err(MemoryError::Frames)?;
    frames.reserve(Hpa::new(home), bytes);
    frames.reserve(Hpa::new(0), PAGE_SIZE);

    let heap = frames
        .alloc_contiguous((HEAP_SIZE / PAGE_SIZE) as usize, PAGE_SIZE)
        .ok_or(MemoryError::NoHeap)?;
    // SAFETY: the frames were just taken from the allocator, so they are
    // unused, identity-mapped, and owned by the heap from now on.
    unsafe {
        HEAP.lock()
            .init(heap.as_u64() as *mut u8, HEAP_SIZE as usize)
    };

    let pml4 = build_page_tables(&mut frames, regions, kernel_phys)?;
    // SAFETY: the new tables map everything in use at the same addresses:
    // the kernel image at its linked address with the same physical frames,
    // and all physical memory (stack-free: the stack is in .bss) identity.
    unsafe { crate::arch::write_cr3(pml4) };
    *FRAMES.lock() = Some(frames);
    LOADER_BYTES.call_once(|| {
        regions
            .iter()
            .filter(|r| r.kind == MemoryKind::Loader)
            .map(|r| r.len)
            .sum()
    });
    Ok(())
}

/// Current memory figures.
pub fn usage() -> Usage {
    let (usable, used, free) = FRAMES
        .lock()
        .as_ref()
        .map(|f| (f.usable_frames(), f.used_frames(), f.free_frames()))
        .unwrap_or((0, 0, 0));
    let heap = HEAP.lock();
    Usage {
        usable_frames: usable,
        used_frames: used,
        free_frames: free,
        heap_bytes: heap.size() as u64,
        heap_used: heap.used() as u64,
        loader_bytes: LOADER_BYTES.get().copied().unwrap_or(0),
    }
}

/// Hands page-table frames from the bitmap allocator to the `x86_64` mapper.
struct TableFrames<'a, 'b>(&'a mut FrameAllocator<'b>);

// SAFETY: frames come from the kernel's allocator, which never hands out a
// frame twice; they are zeroed before use as a page table.
unsafe impl X86FrameAllocator<Size4KiB> for TableFrames<'_, '_> {
    fn allocate_frame(&mut self) -> Option<PhysFrame<Size4KiB>> {
        let pa = self.0.alloc()?;
        // SAFETY: a fresh, identity-mapped frame that nothing else references.
        unsafe { core::ptr::write_bytes(pa.as_u64() as *mut u8, 0, PAGE_SIZE as usize) };
        PhysFrame::from_start_address(PhysAddr::new(pa.as_u64())).ok()
    }
}

unsafe extern "C" {
    static __kernel_start: u8;
    static __text_end: u8;
    static __rodata_start: u8;
    static __data_start: u8;
    static __kernel_end: u8;
}

fn sym(s: &u8) -> u64 {
    s as *const u8 as u64
}

fn is_ram(kind: MemoryKind) -> bool {
    !matches!(kind, MemoryKind::Reserved | MemoryKind::Unusable)
}

fn build_page_tables(
    frames: &mut FrameAllocator<'_>,
    regions: &[MemoryRegion],
    kernel_phys: u64,
) -> Result<u64, MemoryError> {
    let mut tf = TableFrames(frames);
    let pml4_frame = tf
        .allocate_frame()
        .ok_or(MemoryError::PageTables("no frame for the PML4"))?;
    let pml4_pa = pml4_frame.start_address().as_u64();
    // SAFETY: a fresh zeroed frame, identity-mapped, used only as this PML4.
    let pml4 = unsafe { &mut *(pml4_pa as *mut PageTable) };
    // SAFETY: physical memory is identity-mapped by the loader's tables
    // (still active), so offset 0 walks the new tables correctly.
    let mut m = unsafe { OffsetPageTable::new(pml4, VirtAddr::new(0)) };

    let top = regions
        .iter()
        .filter(|r| is_ram(r.kind))
        .map(|r| r.end())
        .max()
        .unwrap_or(0)
        .max(4 << 30)
        .div_ceil(2 << 20)
        * (2 << 20);
    let overlaps_ram = |start: u64, len: u64| {
        regions
            .iter()
            .any(|r| is_ram(r.kind) && r.start < start + len && start < r.end())
    };
    let flags_for = |start: u64, len: u64| {
        let base = F::PRESENT | F::WRITABLE | F::NO_EXECUTE | F::GLOBAL;
        if overlaps_ram(start, len) {
            base
        } else {
            base | F::NO_CACHE | F::WRITE_THROUGH
        }
    };
    let gib = x86_64_has_1gib_pages();
    fn err<T>(_: T) -> MemoryError {
        MemoryError::PageTables("identity map")
    }
    // First 2 MiB with 4 KiB pages so that page 0 stays unmapped.
    for pa in (PAGE_SIZE..(2 << 20)).step_by(PAGE_SIZE as usize) {
        let page = Page::<Size4KiB>::containing_address(VirtAddr::new(pa));
        let frame = PhysFrame::<Size4KiB>::containing_address(PhysAddr::new(pa));
        // SAFETY: identity mappings in fresh tables alias nothing.
        unsafe { m.map_to(page, frame, flags_for(pa, PAGE_SIZE), &mut tf) }
            .map_err(err)?
            .ignore();
    }
    let mut pa: u64 = 2 << 20;
    while pa < top {
        if gib && pa.is_multiple_of(1 << 30) && top - pa >= (1 << 30) && overlaps_ram(pa, 1 << 30) {
            let page = Page::<Size1GiB>::containing_address(VirtAddr::new(pa));
            let frame = PhysFrame::<Size1GiB>::containing_address(PhysAddr::new(pa));
            // SAFETY: as above.
            unsafe { m.map_to(page, frame, flags_for(pa, 1 << 30), &mut tf) }
                .map_err(err)?
                .ignore();
            pa += 1 << 30;
        } else {
            let page = Page::<Size2MiB>::containing_address(VirtAddr::new(pa));
            let frame = PhysFrame::<Size2MiB>::containing_address(PhysAddr::new(pa));
            // SAFETY: as above.
            unsafe { m.map_to(page, frame, flags_for(pa, 2 << 20), &mut tf) }
                .map_err(err)?
                .ignore();
            pa += 2 << 20;
        }
    }

    // SAFETY: the linker script defines these symbols; only their addresses are used.
    let (start, text_end, ro_start, data_start, end) = unsafe {
        (
            sym(&__kernel_start),
            sym(&__text_end),
            sym(&__rodata_start),
            sym(&__data_start),
            sym(&__kernel_end),
        )
    };
    let mut va = start;
    while va < end {
        let flags = if va < text_end.div_ceil(PAGE_SIZE) * PAGE_SIZE {
            F::PRESENT | F::GLOBAL
        } else if va >= ro_start && va < data_start {
            F::PRESENT | F::GLOBAL | F::NO_EXECUTE
        } else {
            F::PRESENT | F::GLOBAL | F::WRITABLE | F::NO_EXECUTE
        };
        let page = Page::<Size4KiB>::containing_address(VirtAddr::new(va));
        let frame =
            PhysFrame::<Size4KiB>::containing_address(PhysAddr::new(kernel_phys + (va - start)));
        // SAFETY: the kernel image's pages map to the frames the loader put
        // it in, exactly as in the loader's tables, each page once.
        unsafe { m.map_to(page, frame, flags, &mut tf) }
            .map_err(|_| MemoryError::PageTables("kernel image"))?
            .ignore();
        va += PAGE_SIZE;
    }
    Ok(pml4_pa)
}

fn x86_64_has_1gib_pages() -> bool {
    crate::arch::cpuid(0x8000_0000, 0).0 >= 0x8000_0001
        && crate::arch::cpuid(0x8000_0001, 0).3 & (1 << 26) != 0
}
