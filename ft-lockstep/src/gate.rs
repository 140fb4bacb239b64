//! The output rule: guest output produced when the log held `p` records
//! leaves the primary only once the secondary acknowledged `p` records, so
//! a secondary that takes over can reproduce everything the world saw.

use alloc::collections::VecDeque;
use alloc::vec::Vec;

use crate::lag::{LagController, LagStats};

/// Output held back until the log reaches the secondary.
pub struct OutputGate<T> {
    held: VecDeque<(u64, u64, T)>,
    released: u64,
    last_pos: u64,
    latency: LagController,
}

impl<T> Default for OutputGate<T> {
    fn default() -> Self {
        OutputGate::new()
    }
}

impl<T> OutputGate<T> {
    /// Nothing held.
    pub fn new() -> Self {
        OutputGate {
            held: VecDeque::new(),
            released: 0,
            last_pos: 0,
            latency: LagController::new(),
        }
    }

    /// Holds `item`, produced when the log held `pos` records.
    pub fn hold(&mut self, pos: u64, item: T, now_us: u64) {
        self.held.push_back((pos, now_us, item));
    }

    /// Everything held at positions up to `acked`, in production order.
    pub fn release(&mut self, acked: u64, now_us: u64) -> Vec<T> {
        let mut out = Vec::new();
        while self.held.front().is_some_and(|(pos, _, _)| *pos <= acked) {
            if let Some((pos, at, item)) = self.held.pop_front() {
                self.latency.sample(now_us.saturating_sub(at));
                self.last_pos = pos;
                out.push(item);
            }
        }
        self.released += out.len() as u64;
        out
    }

    /// Protection ended: everything, in order.
    pub fn release_all(&mut self, now_us: u64) -> Vec<T> {
        self.release(u64::MAX, now_us)
    }

    /// Items held.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// Items released since the start.
    pub fn released(&self) -> u64 {
        self.released
    }

    /// The log position of the last item released.
    pub fn last_released_pos(&self) -> u64 {
        self.last_pos
    }

    /// The latency the gate added to released items.
    pub fn latency(&self) -> LagStats {
        self.latency.stats()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_leaves_before_its_position_is_acknowledged() {
        let mut g = OutputGate::new();
        g.hold(3, "a", 0);
        g.hold(3, "b", 10);
        g.hold(7, "c", 20);
        assert!(g.release(2, 100).is_empty());
        assert_eq!(g.release(6, 100), ["a", "b"]);
        assert_eq!(g.held(), 1);
        assert_eq!(g.last_released_pos(), 3);
        g.hold(9, "d", 30);
        assert_eq!(g.release_all(130), ["c", "d"]);
        assert_eq!(g.released(), 4);
        assert_eq!(g.latency().max_us, 110, "c waited from 20 to 130");
    }
}
