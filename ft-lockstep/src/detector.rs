//! The failure detector of one twin: heartbeats out every interval,
//! whatever else flows; the other twin declared lost once it sent nothing
//! (no frame of any kind) for the timeout. TCP's own keep-alive plays no
//! part: a host that died sends no FIN or RST.

/// Why a heartbeat was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("heartbeat {seq} repeats {last}")]
pub struct Repeated {
    /// The heartbeat's number.
    pub seq: u64,
    /// The last one taken.
    pub last: u64,
}

/// Heartbeats and silence, in microseconds of the caller's clock.
#[derive(Debug, Clone)]
pub struct Detector {
    every_us: u64,
    timeout_us: u64,
    heard_us: u64,
    sent_us: Option<u64>,
    seq: u64,
    heard_seq: u64,
}

impl Detector {
    /// Heartbeats every `every_us`, the twin lost after `timeout_us` of
    /// silence; the twin counts as heard at `now` (the link just began).
    pub fn new(every_us: u64, timeout_us: u64, now: u64) -> Detector {
        Detector {
            every_us,
            timeout_us,
            heard_us: now,
            sent_us: None,
            seq: 0,
            heard_seq: 0,
        }
    }

    /// Any frame arrived from the twin.
    pub fn heard(&mut self, now: u64) {
        self.heard_us = self.heard_us.max(now);
    }

    /// A heartbeat arrived: its number must be above the last one's (a
    /// twin that repeats itself is refused; the frame still counts as
    /// heard, [`Detector::heard`] being called for every frame).
    pub fn heartbeat(&mut self, seq: u64) -> Result<(), Repeated> {
        if seq <= self.heard_seq {
            return Err(Repeated {
                seq,
                last: self.heard_seq,
            });
        }
        self.heard_seq = seq;
        Ok(())
    }

    /// The number of the heartbeat to send now, if one is due.
    pub fn due(&mut self, now: u64) -> Option<u64> {
        if self
            .sent_us
            .is_some_and(|t| now.saturating_sub(t) < self.every_us)
        {
            return None;
        }
        self.sent_us = Some(now);
        self.seq += 1;
        Some(self.seq)
    }

    /// How long the twin has been silent, once that is the timeout or
    /// more.
    pub fn lost(&self, now: u64) -> Option<u64> {
        let quiet = now.saturating_sub(self.heard_us);
        (quiet >= self.timeout_us).then_some(quiet)
    }

    /// When the twin was last heard from.
    pub fn heard_us(&self) -> u64 {
        self.heard_us
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeats_go_out_every_interval_numbered_from_one() {
        let mut d = Detector::new(100, 1000, 0);
        assert_eq!(d.due(0), Some(1));
        assert_eq!(d.due(50), None);
        assert_eq!(d.due(99), None);
        assert_eq!(d.due(100), Some(2));
        assert_eq!(d.due(450), Some(3), "late: the next one at once");
        assert_eq!(d.due(500), None);
    }

    #[test]
    fn the_twin_is_lost_after_the_timeout_of_silence_and_not_before() {
        let mut d = Detector::new(100, 1000, 5_000);
        assert_eq!(d.lost(5_999), None);
        assert_eq!(d.lost(6_000), Some(1000));
        d.heard(5_900);
        assert_eq!(d.lost(6_000), None);
        assert_eq!(d.lost(6_899), None);
        assert_eq!(d.lost(6_900), Some(1000));
        // A frame stamped earlier than the last one changes nothing.
        d.heard(5_000);
        assert_eq!(d.heard_us(), 5_900);
    }

    #[test]
    fn a_repeated_or_old_heartbeat_is_refused() {
        let mut d = Detector::new(100, 1000, 0);
        assert_eq!(d.heartbeat(1), Ok(()));
        assert_eq!(d.heartbeat(5), Ok(()));
        assert_eq!(d.heartbeat(5), Err(Repeated { seq: 5, last: 5 }));
        assert_eq!(d.heartbeat(2), Err(Repeated { seq: 2, last: 5 }));
        assert_eq!(d.heartbeat(6), Ok(()));
        assert_eq!(d.heartbeat(0), Err(Repeated { seq: 0, last: 6 }));
    }
}
