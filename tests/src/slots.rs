//! Emulator slots: how many emulators one test process runs at once.
//!
//! CI runs the system tests with `--test-threads=2`, which bounds the number
//! of *tests* running at once, not the number of emulators: a test that
//! boots two linked machines would make three emulators next to another
//! test's one. Every [`crate::Machine`] therefore holds a slot while its
//! emulator runs, and a [`crate::Link`] takes the two slots of its machines
//! at once, when it is created.
//!
//! * Capacity: `$HV_EMULATOR_SLOTS`, default 2 (the CI setting).
//! * Slots are handed out first come, first served: a waiter for two slots is
//!   not starved by a stream of single-slot waiters, and since nobody waits
//!   for slots while holding some (see below), there is no deadlock.
//! * A thread that already holds slots (a test that keeps one machine and
//!   starts another, or starts a machine outside its link) is never made to
//!   wait: it would wait for itself. It goes over the capacity instead.
//! * A request larger than the capacity is cut to the capacity.

use std::cell::Cell;
use std::sync::{Condvar, Mutex, OnceLock};

/// Default number of emulators at once (what CI's `--test-threads=2` meant).
pub const DEFAULT_SLOTS: u32 = 2;

struct State {
    free: i64,
    next_ticket: u64,
    serving: u64,
}

struct Slots {
    capacity: u32,
    state: Mutex<State>,
    changed: Condvar,
}

thread_local! {
    static HELD: Cell<u32> = const { Cell::new(0) };
}

fn slots() -> &'static Slots {
    static SLOTS: OnceLock<Slots> = OnceLock::new();
    SLOTS.get_or_init(|| {
        let capacity = std::env::var("HV_EMULATOR_SLOTS")
            .ok()
            .and_then(|v| v.trim().parse::<u32>().ok())
            .filter(|&n| n > 0)
            .unwrap_or(DEFAULT_SLOTS);
        Slots {
            capacity,
            state: Mutex::new(State {
                free: i64::from(capacity),
                next_ticket: 0,
                serving: 0,
            }),
            changed: Condvar::new(),
        }
    })
}

/// Slots held; released on drop (on any thread).
#[derive(Debug)]
#[must_use = "the slots are released when the guard is dropped"]
pub struct SlotGuard {
    n: u32,
    owner: std::thread::ThreadId,
}

impl SlotGuard {
    /// Number of slots held.
    pub fn count(&self) -> u32 {
        self.n
    }
}

/// The number of emulators allowed at once.
pub fn capacity() -> u32 {
    slots().capacity
}

/// Takes `n` slots, waiting (in arrival order) until they are free, unless
/// this thread already holds slots.
pub fn acquire(n: u32) -> SlotGuard {
    let s = slots();
    let n = n.min(s.capacity);
    let mut st = s.state.lock().unwrap_or_else(|e| e.into_inner());
    if HELD.with(Cell::get) == 0 {
        let ticket = st.next_ticket;
        st.next_ticket += 1;
        while !(st.serving == ticket && st.free >= i64::from(n)) {
            st = s.changed.wait(st).unwrap_or_else(|e| e.into_inner());
        }
        st.serving += 1;
    }
    st.free -= i64::from(n);
    drop(st);
    s.changed.notify_all();
    HELD.with(|h| h.set(h.get() + n));
    SlotGuard {
        n,
        owner: std::thread::current().id(),
    }
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        let s = slots();
        let mut st = s.state.lock().unwrap_or_else(|e| e.into_inner());
        st.free += i64::from(self.n);
        drop(st);
        if std::thread::current().id() == self.owner {
            HELD.with(|h| h.set(h.get().saturating_sub(self.n)));
        }
        s.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Duration;

    #[test]
    fn never_more_than_the_capacity_across_threads_and_no_deadlock() {
        let running = Arc::new(AtomicU32::new(0));
        let peak = Arc::new(AtomicU32::new(0));
        let threads: Vec<_> = (0..6)
            .map(|i| {
                let (running, peak) = (running.clone(), peak.clone());
                std::thread::spawn(move || {
                    for _ in 0..5 {
                        let g = acquire(1 + i % 2);
                        let now = running.fetch_add(g.count(), Ordering::SeqCst) + g.count();
                        peak.fetch_max(now, Ordering::SeqCst);
                        std::thread::sleep(Duration::from_millis(2));
                        running.fetch_sub(g.count(), Ordering::SeqCst);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert!(peak.load(Ordering::SeqCst) <= capacity());
    }

    #[test]
    fn a_holder_does_not_wait_for_itself() {
        let a = acquire(capacity());
        let b = acquire(1);
        assert_eq!(b.count(), 1);
        drop(a);
        drop(b);
    }
}
