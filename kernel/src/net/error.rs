//! Why the host network or one of its commands could not do something.
//! Each message is what the console prints after `error: `.

use netstack::stack::StackError;

use crate::drivers::e1000::E1000Error;
use crate::drivers::pci::PciAddress;

/// An error of the host network.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetError {
    /// No Intel 82540EM among the PCI functions.
    #[error("no e1000 (8086:100e) on PCI: networking is off")]
    NoNic,
    /// The NIC's registers are not where the kernel maps them uncached.
    #[error("e1000 at {0}: BAR0 is not memory below 4 GiB")]
    Bar0(PciAddress),
    /// The controller did not come up.
    #[error("e1000 at {0}: {1}")]
    Nic(PciAddress, E1000Error),
    /// The network stack could not be built on it.
    #[error("e1000 at {0}: {1}")]
    Stack(PciAddress, StackError),
    /// A command ran before `init`.
    #[error("network not initialised")]
    NotInitialised,
    /// A channel needs the pre-shared key.
    #[error("no channel key: set one with net key <hex> first")]
    NoKey,
    /// A listener needs an address.
    #[error("no IP address: net set ip=<a.b.c.d/len> first")]
    NoAddress,
}
