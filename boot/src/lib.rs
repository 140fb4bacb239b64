//! The `BootInfo` ABI between the UEFI loader (`BOOTX64.EFI`, this crate's
//! binary) and the kernel.
//!
//! The loader fills one [`BootInfo`] in memory it allocated before
//! `ExitBootServices`, and passes its physical address to the kernel entry
//! point in `rdi` (System V calling convention). Every pointer in it is a
//! physical address; the loader's page tables identity-map all physical
//! memory, so the kernel can read them directly until it switches to its own
//! tables (which keep that identity map).
//!
//! The layout is `#[repr(C)]` and versioned: the kernel checks [`BOOT_MAGIC`],
//! [`BOOT_VERSION`] and `size` before touching anything else, so a loader and a
//! kernel from different builds fail with a clear message instead of reading
//! garbage.
//!
//! This crate is also what is not the loader: it holds no code that talks to
//! firmware, so the kernel can depend on it.
#![cfg_attr(not(test), no_std)]

/// "HVBOOT" followed by two zero bytes, little-endian.
pub const BOOT_MAGIC: u64 = u64::from_le_bytes(*b"HVBOOT\0\0");
/// Bumped on every incompatible change of [`BootInfo`] or the types it points to.
pub const BOOT_VERSION: u32 = 1;

/// Directory on the ESP that holds the kernel, its config and guest modules.
pub const ESP_DIR: &str = "\\EFI\\hv";
/// Kernel ELF on the ESP.
pub const KERNEL_PATH: &str = "\\EFI\\hv\\kernel.elf";
/// Boot configuration text on the ESP.
pub const CONFIG_PATH: &str = "\\EFI\\hv\\hv.cfg";
/// Every regular file in this directory is loaded as a module.
pub const MODULES_DIR: &str = "\\EFI\\hv\\modules";

/// Longest config file the loader accepts.
pub const MAX_CONFIG_LEN: usize = 64 * 1024;
/// Longest module name (bytes, UTF-8).
pub const MAX_MODULE_NAME: usize = 64;

/// What the loader hands the kernel.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct BootInfo {
    /// [`BOOT_MAGIC`].
    pub magic: u64,
    /// [`BOOT_VERSION`].
    pub version: u32,
    /// `size_of::<BootInfo>()` as the loader saw it.
    pub size: u32,
    /// Physical address of the first [`MemoryRegion`].
    pub memory_map: u64,
    /// Number of [`MemoryRegion`]s.
    pub memory_map_len: u64,
    /// Physical address of the ACPI 2.0 RSDP, or 0 when the firmware gave none
    /// (OVMF under Bochs has no ACPI tables).
    pub rsdp: u64,
    /// Physical address of the config text (UTF-8 not guaranteed), or 0.
    pub config: u64,
    /// Length of the config text in bytes.
    pub config_len: u64,
    /// What the loader found about the config file.
    pub config_status: ConfigStatus,
    /// Padding; zero.
    pub _reserved: u32,
    /// Physical address of the first [`Module`].
    pub modules: u64,
    /// Number of [`Module`]s.
    pub modules_len: u64,
    /// TSC value when the loader started (for boot timing).
    pub loader_start_tsc: u64,
    /// Physical range of the kernel image as loaded (start, length in bytes).
    pub kernel_phys: u64,
    /// Length of the loaded kernel image in bytes (page-rounded).
    pub kernel_len: u64,
}

/// Whether the loader found a config file.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigStatus {
    /// Read; `config`/`config_len` point to it.
    Loaded = 0,
    /// No file at [`CONFIG_PATH`]: the kernel uses its defaults.
    Missing = 1,
    /// The file exists but could not be read or is larger than
    /// [`MAX_CONFIG_LEN`]: the kernel uses its defaults and says so.
    Unreadable = 2,
}

/// One range of physical memory, page aligned.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryRegion {
    /// First byte.
    pub start: u64,
    /// Length in bytes (a multiple of 4096).
    pub len: u64,
    /// What the range holds.
    pub kind: MemoryKind,
    /// Padding; zero.
    pub _reserved: u32,
}

impl MemoryRegion {
    /// One past the last byte.
    pub fn end(&self) -> u64 {
        self.start.saturating_add(self.len)
    }
}

/// The kernel's view of a UEFI memory type.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemoryKind {
    /// Free for the kernel (UEFI conventional and boot-services memory).
    Usable = 0,
    /// Holds what the loader produced: the kernel image, its first page
    /// tables, the `BootInfo`, the config text and modules. The kernel keeps it.
    Loader = 1,
    /// ACPI tables; reclaimable once the kernel has parsed them.
    AcpiReclaimable = 2,
    /// ACPI NVS; never touched.
    AcpiNvs = 3,
    /// UEFI runtime services code and data; never touched.
    FirmwareRuntime = 4,
    /// Memory-mapped I/O and everything else the kernel must not use.
    Reserved = 5,
    /// Memory reported as failing.
    Unusable = 6,
}

impl MemoryKind {
    /// Short name for console output.
    pub fn name(self) -> &'static str {
        match self {
            MemoryKind::Usable => "usable",
            MemoryKind::Loader => "loader",
            MemoryKind::AcpiReclaimable => "acpi-reclaim",
            MemoryKind::AcpiNvs => "acpi-nvs",
            MemoryKind::FirmwareRuntime => "firmware",
            MemoryKind::Reserved => "reserved",
            MemoryKind::Unusable => "unusable",
        }
    }

    /// Parses the raw value found in memory (never transmute: an unknown
    /// discriminant would be undefined behaviour).
    pub fn from_raw(raw: u32) -> Option<Self> {
        Some(match raw {
            0 => MemoryKind::Usable,
            1 => MemoryKind::Loader,
            2 => MemoryKind::AcpiReclaimable,
            3 => MemoryKind::AcpiNvs,
            4 => MemoryKind::FirmwareRuntime,
            5 => MemoryKind::Reserved,
            6 => MemoryKind::Unusable,
            _ => return None,
        })
    }
}

/// A file the loader read from [`MODULES_DIR`] (a guest image, for instance).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct Module {
    /// Physical address of the contents (page aligned).
    pub start: u64,
    /// Length in bytes.
    pub len: u64,
    /// File name, UTF-8, `name_len` bytes used.
    pub name: [u8; MAX_MODULE_NAME],
    /// Used bytes of `name`.
    pub name_len: u32,
    /// Padding; zero.
    pub _reserved: u32,
}

impl Module {
    /// The file name, or `"?"` if it is not valid UTF-8.
    pub fn name(&self) -> &str {
        let len = (self.name_len as usize).min(MAX_MODULE_NAME);
        core::str::from_utf8(&self.name[..len]).unwrap_or("?")
    }
}

/// Virtual address the kernel is linked at (see `kernel/linker.ld`).
pub const KERNEL_BASE: u64 = 0xffff_ffff_8000_0000;

pub mod elf;
