//! Migration as a service of the host network: one object holding the
//! `migrate listen` service and the guests leaving, registered with the
//! network ([`crate::net::Net::add_service`]) at the first `migrate`
//! command and polled by it every turn.

use alloc::vec::Vec;

use netstack::codec::Key;
use netstack::stack::Stack;

use crate::net::{Net, Service, Turn};

use super::{MigrationService, Outbound};

/// Every migration of this host, both ways.
#[derive(Default)]
pub struct Migrations {
    /// `migrate listen`: the listener and the guests arriving.
    pub(super) listener: Option<MigrationService>,
    /// Guests leaving this host (foreground or background).
    pub(super) outgoing: Vec<Outbound>,
}

impl Migrations {
    /// Migrations running on this host, incoming and outgoing together
    /// (what [`super::MAX_MIGRATIONS`] limits).
    pub(super) fn running(&self) -> usize {
        self.outgoing
            .iter()
            .filter(|o| o.outcome().is_none())
            .count()
            + self.listener.as_ref().map_or(0, |m| m.active())
    }
}

impl Service for Migrations {
    /// The guests leaving take a step (with or without a key: theirs are
    /// set up), then the listener accepts and receives.
    fn poll(
        &mut self,
        stack: &mut Stack,
        key: Option<&Key>,
        nonce: &mut dyn FnMut() -> [u8; 32],
        now: u64,
    ) -> Turn {
        let mut i = 0;
        while i < self.outgoing.len() {
            if self.outgoing[i].step(stack, now) {
                let done = self.outgoing.remove(i);
                done.release(stack);
            } else {
                i += 1;
            }
        }
        let outgoing = self.outgoing.len();
        let mut busy = outgoing > 0;
        if let (Some(key), Some(m)) = (key, self.listener.as_mut()) {
            // Guests leaving count against the same per-host limit.
            m.poll(stack, key, nonce, now, outgoing);
            busy |= m.busy();
        }
        Turn {
            busy,
            queued: outgoing > 0 || self.listener.is_some(),
        }
    }
}

/// The migrations on `net`, registered as its service at first use.
pub(super) fn migrations(net: &mut Net) -> &mut Migrations {
    net.service::<Migrations>()
}
