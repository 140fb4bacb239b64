//! What the firmware's ACPI tables say about the machine: the CPUs (MADT)
//! and the local APIC address. Without an RSDP (OVMF under Bochs has none)
//! the kernel runs on the boot CPU alone, with the APIC address from
//! IA32_APIC_BASE.

use alloc::vec::Vec;
use core::ptr::NonNull;

use acpi::madt::{Madt, MadtEntry};
use acpi::{AcpiHandler, AcpiTables, PhysicalMapping};

/// One CPU from the MADT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cpu {
    /// Local APIC (or x2APIC) ID.
    pub apic_id: u32,
    /// This is the CPU the kernel runs on.
    pub bsp: bool,
}

/// Where the CPU list came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CpuSource {
    /// The ACPI MADT.
    Madt,
    /// No usable ACPI tables: the boot CPU only.
    BootCpuOnly,
}

/// The platform as discovered at boot.
#[derive(Debug, Clone)]
pub struct Platform {
    pub cpus: Vec<Cpu>,
    pub source: CpuSource,
    pub lapic_base: u64,
    /// Why ACPI was not used, if it was not.
    pub acpi_problem: Option<&'static str>,
}

/// Physical memory is identity-mapped, so a "mapping" is the address itself.
#[derive(Clone, Copy)]
struct IdentityHandler;

impl AcpiHandler for IdentityHandler {
    unsafe fn map_physical_region<T>(
        &self,
        physical_address: usize,
        size: usize,
    ) -> PhysicalMapping<Self, T> {
        let ptr = NonNull::new(physical_address as *mut T).unwrap_or(NonNull::dangling());
        // SAFETY: all physical memory is identity-mapped by the kernel's page
        // tables, so the physical range is readable at the same address; the
        // acpi crate guarantees the range holds a T.
        unsafe { PhysicalMapping::new(physical_address, ptr, size, size, *self) }
    }

    fn unmap_physical_region<T>(_region: &PhysicalMapping<Self, T>) {}
}

/// Discovers the CPUs. `rsdp` is the physical address the loader found, or 0.
pub fn discover(rsdp: u64) -> Platform {
    let bsp_id = crate::arch::apic::id();
    let msr_base = crate::arch::apic::base_from_msr();
    let fallback = |why: &'static str| Platform {
        cpus: alloc::vec![Cpu {
            apic_id: bsp_id,
            bsp: true
        }],
        source: CpuSource::BootCpuOnly,
        lapic_base: msr_base,
        acpi_problem: Some(why),
    };
    if rsdp == 0 {
        return fallback("the firmware passed no ACPI RSDP");
    }
    // SAFETY: rsdp is the address the firmware published in its
    // configuration table; the acpi crate validates signature and checksum
    // before trusting it.
    let tables = match unsafe { AcpiTables::from_rsdp(IdentityHandler, rsdp as usize) } {
        Ok(t) => t,
        Err(_) => return fallback("the ACPI RSDP or RSDT/XSDT is invalid"),
    };
    let madt = match tables.find_table::<Madt>() {
        Ok(m) => m,
        Err(_) => return fallback("the ACPI tables have no MADT"),
    };
    let mut cpus = Vec::new();
    let mut lapic_base = u64::from(madt.get().local_apic_address);
    for e in madt.get().entries() {
        match e {
            MadtEntry::LocalApic(l) => {
                // Bit 0 enabled, bit 1 online-capable (ACPI 6.5, 5.2.12.2).
                let flags = l.flags;
                if flags & 0b11 != 0 {
                    let id = u32::from(l.apic_id);
                    cpus.push(Cpu {
                        apic_id: id,
                        bsp: id == bsp_id,
                    });
                }
            }
            MadtEntry::LocalX2Apic(l) => {
                let flags = l.flags;
                if flags & 0b11 != 0 {
                    let id = l.x2apic_id;
                    cpus.push(Cpu {
                        apic_id: id,
                        bsp: id == bsp_id,
                    });
                }
            }
            MadtEntry::LocalApicAddressOverride(o) => lapic_base = o.local_apic_address,
            _ => {}
        }
    }
    if cpus.is_empty() {
        return fallback("the MADT lists no enabled CPU");
    }
    Platform {
        cpus,
        source: CpuSource::Madt,
        lapic_base,
        acpi_problem: None,
    }
}
