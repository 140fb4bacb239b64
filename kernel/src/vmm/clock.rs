//! The guest clock: the one place guest time comes from.
//!
//! Every time value a guest can observe goes through a VM's [`GuestClock`]:
//! its TSC (RDTSC and RDTSCP when they exit, IA32_TSC reads, the value the
//! TSC offset is computed from), and the raises of its periodic timer
//! ([`GuestClock::tick_due`]). Live, the clock is the host's TSC plus an
//! offset; a replaying secondary (fault tolerance) will feed the same calls
//! from its log instead, so nothing else in the VMM may read the host TSC
//! on a guest's behalf.
//!
//! RDTSC exiting is off unless something needs it ([`GuestClock::exiting`]):
//! with it off the CPU adds the offset itself at no cost; with it on each
//! RDTSC costs a VM exit (`cargo xtask bench vmx` measures how much).
//!
//! Pure logic: the host TSC is passed in, so the host tests drive it.

/// A VM's clock. All times are TSC ticks; `now` is always the host's TSC.
#[derive(Debug, Clone, Default)]
pub struct GuestClock {
    /// Guest TSC = host TSC + offset (wrapping), as the VMCS TSC offset.
    offset: u64,
    /// RDTSC and RDTSCP exit and are answered by [`GuestClock::tsc`].
    pub exiting: bool,
    /// Timer period in TSC ticks (0: the timer is off).
    period: u64,
    /// Host TSC at which the next timer tick is due.
    next: u64,
}

/// Where the timer is in its period (what a migrating guest carries so
/// that its next tick comes as late as it would have at the source): the
/// vCPU state's own type.
pub use vcpu::state::TimerPhase;

impl GuestClock {
    /// A clock whose guest TSC reads `guest_tsc` at host time `now`.
    pub fn starting_at(now: u64, guest_tsc: u64) -> GuestClock {
        GuestClock {
            offset: guest_tsc.wrapping_sub(now),
            ..GuestClock::default()
        }
    }

    /// Starts the clock again (a VM start, an incoming guest): its TSC
    /// reads `guest_tsc` at `now`, the timer is off; RDTSC exiting, the
    /// VM's option, stays as it was.
    pub fn restart(&mut self, now: u64, guest_tsc: u64) {
        *self = GuestClock {
            exiting: self.exiting,
            ..GuestClock::starting_at(now, guest_tsc)
        };
    }

    /// Makes the guest's TSC read at least `floor` at `now` (a replayed
    /// guest going live on a host whose clock is behind what it was fed),
    /// keeping the timer as it is.
    pub fn not_before(&mut self, now: u64, floor: u64) {
        if self.tsc(now) < floor {
            self.offset = floor.wrapping_sub(now);
        }
    }

    /// The guest's TSC at host time `now`.
    pub fn tsc(&self, now: u64) -> u64 {
        now.wrapping_add(self.offset)
    }

    /// The VMCS TSC offset that makes the CPU's RDTSC read [`Self::tsc`].
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// (Re)programs the periodic timer: `period` ticks from `now` (0: off).
    pub fn set_period(&mut self, period: u64, now: u64) {
        self.period = period;
        self.next = now.saturating_add(period);
    }

    /// The timer's period (0: off).
    pub fn period(&self) -> u64 {
        self.period
    }

    /// Ticks until the next raise (0 if due or off).
    pub fn until_next(&self, now: u64) -> u64 {
        self.next.saturating_sub(now)
    }

    /// Whether a timer tick is due at `now`; if so the next one is
    /// scheduled one period later, keeping the phase (no drift) but never
    /// queueing more than one late tick.
    pub fn tick_due(&mut self, now: u64) -> bool {
        if self.period == 0 || now < self.next {
            return false;
        }
        self.next = self.next.saturating_add(self.period).max(now);
        true
    }

    /// The timer's phase at `now`, for migration.
    pub fn phase(&self, now: u64) -> TimerPhase {
        TimerPhase {
            period: self.period,
            next_in: if self.period == 0 {
                0
            } else {
                self.until_next(now)
            },
        }
    }

    /// Resumes a migrated timer at `now` where `phase` left it (a next
    /// tick never more than one period away).
    pub fn resume_phase(&mut self, phase: TimerPhase, now: u64) {
        self.period = phase.period;
        self.next = now.saturating_add(phase.next_in.min(phase.period));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clock_behind_is_moved_forward_never_back() {
        let mut c = GuestClock::starting_at(100, 1000);
        c.not_before(200, 500);
        assert_eq!(c.tsc(200), 1100, "already past the floor: unchanged");
        c.not_before(200, 5000);
        assert_eq!(c.tsc(200), 5000);
        assert_eq!(c.tsc(300), 5100);
    }

    #[test]
    fn tsc_is_host_plus_offset_and_wraps() {
        let c = GuestClock::starting_at(1_000, 50);
        assert_eq!(c.tsc(1_000), 50);
        assert_eq!(c.tsc(1_100), 150);
        let c = GuestClock::starting_at(10, u64::MAX);
        assert_eq!(c.tsc(11), 0);
        assert_eq!(c.offset(), u64::MAX.wrapping_sub(10));
    }

    #[test]
    fn ticks_keep_their_phase_and_never_queue() {
        let mut c = GuestClock::default();
        assert!(!c.tick_due(0), "off");
        c.set_period(100, 0);
        assert!(!c.tick_due(99));
        assert!(c.tick_due(100));
        assert!(!c.tick_due(150));
        assert!(c.tick_due(205), "phase kept: due at 200");
        assert_eq!(c.until_next(205), 95);
        // Late by many periods: the tick, one late tick queued (not the
        // hundred missed), then a period later.
        assert!(c.tick_due(10_000));
        assert!(c.tick_due(10_000));
        assert!(!c.tick_due(10_000));
        assert!(c.tick_due(10_100));
    }

    #[test]
    fn phase_survives_a_migration() {
        let mut src = GuestClock::default();
        src.set_period(1_000, 0);
        assert!(src.tick_due(1_000));
        let phase = src.phase(1_300);
        assert_eq!(
            phase,
            TimerPhase {
                period: 1_000,
                next_in: 700
            }
        );
        let mut dst = GuestClock::starting_at(50_000, 0);
        dst.resume_phase(phase, 50_000);
        assert!(!dst.tick_due(50_699));
        assert!(dst.tick_due(50_700));
        // A lying or stale phase cannot delay the tick past one period.
        dst.resume_phase(
            TimerPhase {
                period: 10,
                next_in: u64::MAX,
            },
            0,
        );
        assert!(dst.tick_due(10));
        assert_eq!(GuestClock::default().phase(5), TimerPhase::default());
    }
}
