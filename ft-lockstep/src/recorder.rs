//! The primary's log: records in order, handed out in frames, kept until
//! the secondary has replayed them.
//!
//! The secondary acknowledges two positions: records *received* (what the
//! output rule waits for: a secondary that holds the log can reproduce the
//! output) and records *replayed* (how far its guest got). The buffer keeps
//! what is not yet replayed, so its cap bounds the secondary's backlog as
//! well as the primary's memory, and the lag is the age of the oldest
//! record not yet replayed.

use alloc::collections::VecDeque;
use alloc::vec::Vec;

use crate::codec::{Frame, record_len};
use crate::lag::LagController;
use crate::record::Record;

/// An acknowledgement no honest secondary sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AckError {
    /// It acknowledges records never sent.
    #[error("acknowledgement of {acked} records when {sent} were sent")]
    Beyond {
        /// Records acknowledged.
        acked: u64,
        /// Records sent.
        sent: u64,
    },
    /// It takes back an earlier acknowledgement.
    #[error("acknowledgement of {acked} records after one of {before}")]
    Backwards {
        /// Records acknowledged now.
        acked: u64,
        /// Records acknowledged before.
        before: u64,
    },
    /// It claims to have replayed records it has not received, or fewer
    /// than it said before.
    #[error("replay position {replayed} with {received} records received (before: {before})")]
    Replayed {
        /// Records replayed, as claimed.
        replayed: u64,
        /// Records received, as claimed.
        received: u64,
        /// Records replayed, as claimed before.
        before: u64,
    },
}

struct Entry {
    record: Record,
    created_us: u64,
    len: usize,
}

/// The primary's side of the log.
pub struct Recorder {
    /// Records not yet replayed, from sequence number `replayed`.
    entries: VecDeque<Entry>,
    acked: u64,
    replayed: u64,
    sent: u64,
    next: u64,
    buffered: usize,
    cap: usize,
    total_bytes: u64,
}

impl Recorder {
    /// A log that holds up to `cap_bytes` unacknowledged (see [`Self::full`]).
    pub fn new(cap_bytes: usize) -> Recorder {
        Recorder {
            entries: VecDeque::new(),
            acked: 0,
            replayed: 0,
            sent: 0,
            next: 0,
            buffered: 0,
            cap: cap_bytes,
            total_bytes: 0,
        }
    }

    /// Appends `r`; returns its sequence number. Never drops a record: the
    /// caller stops the guest while [`Self::full`].
    pub fn record(&mut self, r: Record, now_us: u64) -> u64 {
        let len = record_len(&r);
        self.entries.push_back(Entry {
            record: r,
            created_us: now_us,
            len,
        });
        self.buffered += len;
        self.total_bytes += len as u64;
        self.next += 1;
        self.next - 1
    }

    /// Records logged so far (the next sequence number).
    pub fn position(&self) -> u64 {
        self.next
    }

    /// Records handed out in frames.
    pub fn sent(&self) -> u64 {
        self.sent
    }

    /// Records the secondary acknowledged (received).
    pub fn acked(&self) -> u64 {
        self.acked
    }

    /// Records the secondary replayed.
    pub fn replayed(&self) -> u64 {
        self.replayed
    }

    /// Encoded bytes not yet replayed.
    pub fn buffered_bytes(&self) -> usize {
        self.buffered
    }

    /// The buffer is at its cap: the guest must wait.
    pub fn full(&self) -> bool {
        self.buffered >= self.cap
    }

    /// The next `Log` frame: unsent records, at most `max_bytes` of them
    /// encoded (but at least one). None when everything was sent.
    pub fn take_frame(&mut self, max_bytes: usize) -> Option<Frame> {
        let skip = (self.sent - self.replayed) as usize;
        let mut records = Vec::new();
        let mut bytes = 0;
        for e in self.entries.iter().skip(skip) {
            if !records.is_empty() && bytes + e.len > max_bytes {
                break;
            }
            bytes += e.len;
            records.push(e.record);
        }
        if records.is_empty() {
            return None;
        }
        let first = self.sent;
        self.sent += records.len() as u64;
        Some(Frame::Log { first, records })
    }

    /// The secondary holds `received` records and replayed `replayed`:
    /// the replayed ones leave the buffer, and the age of the oldest of
    /// them feeds `lag`.
    pub fn on_ack(
        &mut self,
        received: u64,
        replayed: u64,
        now_us: u64,
        lag: &mut LagController,
    ) -> Result<(), AckError> {
        if received > self.sent {
            return Err(AckError::Beyond {
                acked: received,
                sent: self.sent,
            });
        }
        if received < self.acked {
            return Err(AckError::Backwards {
                acked: received,
                before: self.acked,
            });
        }
        if replayed > received || replayed < self.replayed {
            return Err(AckError::Replayed {
                replayed,
                received,
                before: self.replayed,
            });
        }
        self.acked = received;
        let n = (replayed - self.replayed) as usize;
        if n > 0 {
            if let Some(e) = self.entries.front() {
                lag.sample(now_us.saturating_sub(e.created_us));
            }
            for e in self.entries.drain(..n) {
                self.buffered -= e.len;
            }
            self.replayed = replayed;
        }
        Ok(())
    }

    /// Age of the oldest record not yet replayed (0 if none): the lag as
    /// it stands.
    pub fn oldest_unacked_age(&self, now_us: u64) -> u64 {
        self.entries
            .front()
            .map_or(0, |e| now_us.saturating_sub(e.created_us))
    }

    /// Records logged since the start.
    pub fn total_records(&self) -> u64 {
        self.next
    }

    /// Encoded bytes logged since the start.
    pub fn total_bytes(&self) -> u64 {
        self.total_bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(exits: u64) -> Record {
        Record::Horizon { exits }
    }

    #[test]
    fn frames_cover_the_log_once_in_order() {
        let mut r = Recorder::new(1 << 20);
        for k in 0..10 {
            assert_eq!(r.record(h(k), 0), k);
        }
        let Some(Frame::Log { first, records }) = r.take_frame(9 * 4) else {
            panic!()
        };
        assert_eq!((first, records.len()), (0, 4));
        let Some(Frame::Log { first, records }) = r.take_frame(1) else {
            panic!()
        };
        assert_eq!((first, records), (4, alloc::vec![h(4)]), "at least one");
        let Some(Frame::Log { first, records }) = r.take_frame(1000) else {
            panic!()
        };
        assert_eq!((first, records.len()), (5, 5));
        assert!(r.take_frame(1000).is_none());
        assert_eq!(r.sent(), 10);
    }

    #[test]
    fn acks_free_the_buffer_and_lying_ones_are_refused() {
        let mut r = Recorder::new(30);
        let mut lag = LagController::new();
        for k in 0..4 {
            r.record(h(k), 100 * k);
        }
        assert!(r.full(), "36 bytes over a 30-byte cap");
        assert_eq!(r.oldest_unacked_age(1000), 1000);
        assert_eq!(
            r.on_ack(1, 0, 1000, &mut lag),
            Err(AckError::Beyond { acked: 1, sent: 0 })
        );
        r.take_frame(1000);
        // Received, not replayed: still buffered.
        r.on_ack(3, 0, 1000, &mut lag).unwrap();
        assert_eq!((r.acked(), r.buffered_bytes()), (3, 36));
        assert!(matches!(
            r.on_ack(3, 4, 1000, &mut lag),
            Err(AckError::Replayed { .. })
        ));
        r.on_ack(3, 3, 1000, &mut lag).unwrap();
        assert_eq!((r.acked(), r.replayed()), (3, 3));
        assert_eq!(r.buffered_bytes(), 9);
        assert!(!r.full());
        assert_eq!(r.oldest_unacked_age(1000), 700);
        assert_eq!(lag.stats().max_us, 1000);
        assert_eq!(
            r.on_ack(2, 2, 1000, &mut lag),
            Err(AckError::Backwards {
                acked: 2,
                before: 3
            })
        );
        assert!(matches!(
            r.on_ack(3, 2, 1000, &mut lag),
            Err(AckError::Replayed { .. })
        ));
        assert_eq!(
            r.on_ack(5, 3, 1000, &mut lag),
            Err(AckError::Beyond { acked: 5, sent: 4 })
        );
        r.on_ack(4, 4, 2000, &mut lag).unwrap();
        assert_eq!(r.oldest_unacked_age(5000), 0);
        // Frames after an ack start where the sent ones ended.
        r.record(h(9), 0);
        let Some(Frame::Log { first, .. }) = r.take_frame(100) else {
            panic!()
        };
        assert_eq!(first, 4);
        assert_eq!((r.total_records(), r.total_bytes()), (5, 45));
    }
}
