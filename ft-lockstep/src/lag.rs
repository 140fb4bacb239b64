//! How far the secondary trails the primary, and when to slow the primary.

use alloc::vec::Vec;

/// Percentiles of a set of samples (microseconds).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LagStats {
    /// Samples taken (since the start).
    pub samples: u64,
    /// Median of the recent samples.
    pub p50_us: u64,
    /// 99th percentile of the recent samples.
    pub p99_us: u64,
    /// Largest sample since the start.
    pub max_us: u64,
}

/// Samples kept for the percentiles.
const WINDOW: usize = 1024;

/// Lag samples and the throttle decision, with hysteresis.
#[derive(Debug, Clone, Default)]
pub struct LagController {
    recent: Vec<u64>,
    next: usize,
    samples: u64,
    max: u64,
    last: u64,
    throttling: bool,
    throttle_events: u64,
}

impl LagController {
    /// Lag above which the primary slows its guest.
    pub const THROTTLE_US: u64 = 1_000_000;
    /// Lag under which it runs at full speed again.
    pub const RECOVER_US: u64 = 250_000;

    /// No samples yet, not throttling.
    pub fn new() -> LagController {
        LagController::default()
    }

    /// One measured lag (a record's creation to its acknowledgement).
    pub fn sample(&mut self, lag_us: u64) {
        if self.recent.len() < WINDOW {
            self.recent.push(lag_us);
        } else {
            self.recent[self.next] = lag_us;
        }
        self.next = (self.next + 1) % WINDOW;
        self.samples += 1;
        self.max = self.max.max(lag_us);
        self.last = lag_us;
    }

    /// The lag as it stands (the oldest unacknowledged record's age):
    /// whether to throttle now.
    pub fn update(&mut self, current_lag_us: u64) -> bool {
        if !self.throttling && current_lag_us > Self::THROTTLE_US {
            self.throttling = true;
            self.throttle_events += 1;
        } else if self.throttling && current_lag_us < Self::RECOVER_US {
            self.throttling = false;
        }
        self.throttling
    }

    /// Whether the primary is slowing its guest.
    pub fn throttling(&self) -> bool {
        self.throttling
    }

    /// Times throttling began.
    pub fn throttle_events(&self) -> u64 {
        self.throttle_events
    }

    /// The last sample.
    pub fn last_us(&self) -> u64 {
        self.last
    }

    /// Percentiles of the recent samples, the maximum of all.
    pub fn stats(&self) -> LagStats {
        let mut v = self.recent.clone();
        v.sort_unstable();
        let pick = |q: usize| {
            if v.is_empty() {
                0
            } else {
                v[((v.len() - 1) * q).div_ceil(100)]
            }
        };
        LagStats {
            samples: self.samples,
            p50_us: pick(50),
            p99_us: pick(99),
            max_us: self.max,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_and_max() {
        let mut l = LagController::new();
        assert_eq!(l.stats(), LagStats::default());
        for k in 1..=100 {
            l.sample(k * 1000);
        }
        let s = l.stats();
        assert_eq!(
            (s.samples, s.p50_us, s.p99_us, s.max_us),
            (100, 51_000, 100_000, 100_000)
        );
        // The window forgets old samples; the maximum stays.
        for _ in 0..WINDOW {
            l.sample(5);
        }
        let s = l.stats();
        assert_eq!((s.p50_us, s.p99_us, s.max_us), (5, 5, 100_000));
        assert_eq!(l.last_us(), 5);
    }

    #[test]
    fn throttles_above_a_second_until_under_a_quarter() {
        let mut l = LagController::new();
        assert!(!l.update(900_000));
        assert!(l.update(1_100_000));
        assert!(l.update(500_000), "hysteresis");
        assert!(!l.update(200_000));
        assert!(!l.update(900_000));
        assert!(l.update(2_000_000));
        assert_eq!(l.throttle_events(), 2);
    }
}
