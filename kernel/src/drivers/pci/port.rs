//! PCI configuration space through the legacy ports 0xCF8/0xCFC
//! (configuration mechanism #1, PCI Local Bus 3.0, 3.2.2.3.2). Every PC
//! chipset and both emulators have it; ECAM (from the ACPI MCFG) is not
//! needed to enumerate and is absent under Bochs.

use crate::arch::{inl, outl};
use crate::drivers::pci::{ConfigSpace, PciAddress};

/// Port-I/O configuration access. Only one exists: [`PortConfigSpace::take`]
/// hands it out once, so two users can never interleave address/data writes.
pub struct PortConfigSpace(());

static TAKEN: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

impl PortConfigSpace {
    /// The one instance, or `None` if it was already taken.
    pub fn take() -> Option<Self> {
        (!TAKEN.swap(true, core::sync::atomic::Ordering::AcqRel)).then_some(PortConfigSpace(()))
    }
}

impl ConfigSpace for PortConfigSpace {
    fn read32(&mut self, addr: PciAddress, offset: u8) -> u32 {
        // SAFETY: 0xCF8/0xCFC are the host bridge's configuration ports and
        // this (unique) value is their only user; a read of an absent
        // function returns all ones with no side effect.
        unsafe {
            outl(0xcf8, addr.config_address(offset));
            inl(0xcfc)
        }
    }

    fn write32(&mut self, addr: PciAddress, offset: u8, value: u32) {
        // SAFETY: as read32; the enumeration code writes only BARs (and
        // restores them) and the command register.
        unsafe {
            outl(0xcf8, addr.config_address(offset));
            outl(0xcfc, value);
        }
    }
}
