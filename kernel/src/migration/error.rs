//! Why a migration could not start or a message could not go. Each
//! message is what the console prints after `error: migrate: `.

use netstack::stack::StackError;

/// An error of this host's side of a migration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MigrationError {
    /// The VM manager's answer (no such VM, not running, already moving).
    #[error("{0}")]
    Vm(#[from] crate::vmm::VmError),
    /// A socket for the listener or the channel.
    #[error("{0}")]
    Network(#[from] StackError),
}
