//! The secondary: the log as it arrives, and what the replaying guest may
//! do next.
//!
//! The kernel asks [`Replayer::next`] before every VM entry and
//! [`Replayer::input`] at every deterministic exit that reads something.
//! The rules keep the replay exactly on the primary's path and never ahead
//! of the log:
//!
//! - the guest enters only when the log proves the primary got past the
//!   next deterministic exit (a record positioned at a later exit, or a
//!   [`Record::Horizon`] beyond the current count): then every input of
//!   that exit and every event before it is already here;
//! - events positioned right after exit *n* are applied right after exit
//!   *n* (before the guest runs again); events at a forced landmark are
//!   applied where the guest stands at that RIP with the same register
//!   digest ([`Step::RunTo`] tells the kernel to put a breakpoint there);
//! - anything else (an input of another kind or port, a landmark the guest
//!   ran past, a record at an exit count already passed) is a divergence,
//!   reported with what each side did, never papered over.

use alloc::collections::VecDeque;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use crate::codec::Ack;
use crate::record::{Event, Input, Landmark, Record};

/// What the guest does before its next VM entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Apply this event now (it left the log).
    Apply(Event),
    /// Compare the local state's digest with this one now (it left the log).
    Check(u64),
    /// A forced landmark at the current exit count: run to a breakpoint at
    /// `rip` and ask again there.
    RunTo {
        /// Where the primary's guest stood.
        rip: u64,
        /// Its register digest there.
        digest: u64,
    },
    /// Enter the guest: the primary got past its next deterministic exit.
    Run,
    /// Do not enter: the log does not go far enough yet.
    Wait,
}

/// Why the replay cannot go on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplayError {
    /// A log frame that does not continue the log (replayed, duplicated,
    /// out of order or with a hole).
    #[error("log frame starting at record {first}, expected record {expected}")]
    OutOfOrder {
        /// The frame's first record.
        first: u64,
        /// The next record expected.
        expected: u64,
    },
    /// The guest did something else than the primary's did.
    #[error("diverged: {0}")]
    Diverged(String),
    /// A record positioned before an earlier one (no honest primary logs
    /// that; a corrupted or forged frame does).
    #[error("log record {seq} is at exit {exits}, before the exit {before} of an earlier record")]
    BadLog {
        /// The record's sequence number.
        seq: u64,
        /// Its exit count.
        exits: u64,
        /// The highest exit count logged before it.
        before: u64,
    },
    /// More log than the secondary holds (the primary ignored the
    /// replay position in the acknowledgements).
    #[error("the primary sent {queued} bytes of log ahead of the replay (at most {max})")]
    Flooded {
        /// Bytes queued with this frame.
        queued: usize,
        /// The limit.
        max: usize,
    },
    /// An input was needed that the log does not hold (the kernel entered
    /// the guest without [`Step::Run`]).
    #[error("exit {exits} needs an input the log does not hold yet")]
    Starved {
        /// The exit.
        exits: u64,
    },
}

/// The secondary's side of the log.
#[derive(Debug, Default)]
pub struct Replayer {
    queue: VecDeque<Record>,
    received: u64,
    consumed: u64,
    exits: u64,
    horizon: u64,
    released: u64,
    /// Encoded bytes of the queued records.
    queued_bytes: usize,
    /// The highest exit count any record received so far is positioned at.
    last_exits: u64,
}

fn diverged(s: String) -> ReplayError {
    ReplayError::Diverged(s)
}

impl Replayer {
    /// At the start of protection: nothing received, no exits.
    pub fn new() -> Replayer {
        Replayer::default()
    }

    /// A `Log` frame: records `first..`. Refused unless it continues the
    /// log exactly.
    pub fn push(&mut self, first: u64, records: Vec<Record>) -> Result<(), ReplayError> {
        if first != self.received {
            return Err(ReplayError::OutOfOrder {
                first,
                expected: self.received,
            });
        }
        let mut last = self.last_exits;
        for (k, r) in records.iter().enumerate() {
            if let Some(e) = r.exits() {
                if e < last {
                    return Err(ReplayError::BadLog {
                        seq: first + k as u64,
                        exits: e,
                        before: last,
                    });
                }
                last = e;
            }
        }
        let bytes: usize = records.iter().map(crate::codec::record_len).sum();
        if self.queued_bytes + bytes > crate::MAX_QUEUED_BYTES {
            return Err(ReplayError::Flooded {
                queued: self.queued_bytes + bytes,
                max: crate::MAX_QUEUED_BYTES,
            });
        }
        self.queued_bytes += bytes;
        self.last_exits = last;
        self.received += records.len() as u64;
        self.queue.extend(records);
        Ok(())
    }

    /// Records received.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Records the replay consumed.
    pub fn consumed(&self) -> u64 {
        self.consumed
    }

    /// Deterministic exits replayed.
    pub fn exits(&self) -> u64 {
        self.exits
    }

    /// The primary's last reported exit count.
    pub fn horizon(&self) -> u64 {
        self.horizon
    }

    /// The last output release position the primary logged.
    pub fn released(&self) -> u64 {
        self.released
    }

    /// Records received and not consumed.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// The guest made its next deterministic exit; returns its number.
    pub fn on_exit(&mut self) -> u64 {
        self.exits += 1;
        self.exits
    }

    /// Consumes the bookkeeping records at the front.
    fn skip_marks(&mut self) {
        while let Some(r) = self.queue.front() {
            match *r {
                Record::Horizon { exits } => self.horizon = self.horizon.max(exits),
                Record::Released { seq } => self.released = self.released.max(seq),
                _ => return,
            }
            self.pop();
        }
    }

    fn pop(&mut self) {
        if let Some(r) = self.queue.pop_front() {
            self.queued_bytes -= crate::codec::record_len(&r);
            self.consumed += 1;
        }
    }

    /// The value of the input the current exit reads.
    pub fn input(&mut self, input: Input) -> Result<[u64; 2], ReplayError> {
        self.skip_marks();
        let exits = self.exits;
        match self.queue.front().copied() {
            None => Err(ReplayError::Starved { exits }),
            Some(Record::Input {
                exits: e,
                input: i,
                value,
            }) if e == exits && i == input => {
                self.pop();
                Ok(value)
            }
            Some(Record::Input {
                exits: e, input: i, ..
            }) if e == exits => Err(diverged(format!(
                "exit {exits}: the guest read {input:?} here, {i:?} on the primary"
            ))),
            Some(other) => Err(diverged(format!(
                "exit {exits}: the guest read {input:?} here; the primary's log has {other:?} next"
            ))),
        }
    }

    /// What to do before the next VM entry. `fresh`: the guest has not run
    /// since exit [`Self::exits`] was handled; `here`: its (RIP, register
    /// digest) now, asked only at a forced landmark.
    pub fn next(
        &mut self,
        fresh: bool,
        here: &mut dyn FnMut() -> (u64, u64),
    ) -> Result<Step, ReplayError> {
        self.skip_marks();
        let exits = self.exits;
        let Some(front) = self.queue.front().copied() else {
            return Ok(if self.horizon > exits {
                Step::Run
            } else {
                Step::Wait
            });
        };
        let past = |what: String| {
            Err(diverged(format!(
                "the guest is at exit {exits}{} but the primary's log has {what} next",
                if fresh { "" } else { " and ran on" }
            )))
        };
        match front {
            Record::Check { exits: e, digest } if e == exits && fresh => {
                self.pop();
                Ok(Step::Check(digest))
            }
            Record::Event {
                at: Landmark::Exit { exits: e },
                event,
            } if e == exits && fresh => {
                self.pop();
                Ok(Step::Apply(event))
            }
            Record::Event {
                at:
                    Landmark::Forced {
                        exits: e,
                        rip,
                        digest,
                        ..
                    },
                event,
            } if e == exits => {
                if here() == (rip, digest) {
                    self.pop();
                    Ok(Step::Apply(event))
                } else {
                    Ok(Step::RunTo { rip, digest })
                }
            }
            // The primary got past the next exit (exits that read nothing
            // leave no record): go on.
            r => match r.exits() {
                Some(e) if e > exits => Ok(Step::Run),
                _ => past(format!("{r:?}")),
            },
        }
    }

    /// Whether [`Self::next`] may return something else than
    /// [`Step::Wait`].
    pub fn can_progress(&self) -> bool {
        self.queue
            .iter()
            .any(|r| !matches!(r, Record::Horizon { .. } | Record::Released { .. }))
            || self.horizon > self.exits
            || self
                .queue
                .iter()
                .any(|r| matches!(r, Record::Horizon { exits } if *exits > self.exits))
    }

    /// The acknowledgement to send now.
    pub fn ack(&self, checks_ok: u64) -> Ack {
        Ack {
            received: self.received,
            replayed: self.consumed,
            exits: self.exits,
            checks_ok,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    const PIC: Input = Input::Pio {
        port: 0x20,
        size: 1,
    };

    fn here(v: (u64, u64)) -> impl FnMut() -> (u64, u64) {
        move || v
    }

    #[test]
    fn frames_must_continue_the_log() {
        let mut r = Replayer::new();
        r.push(0, vec![Record::Horizon { exits: 1 }]).unwrap();
        assert_eq!(
            r.push(0, vec![Record::Horizon { exits: 1 }]),
            Err(ReplayError::OutOfOrder {
                first: 0,
                expected: 1
            })
        );
        assert_eq!(
            r.push(5, vec![]),
            Err(ReplayError::OutOfOrder {
                first: 5,
                expected: 1
            })
        );
        r.push(1, vec![]).unwrap();
        assert_eq!(r.received(), 1);
        // Positions never go back along the log.
        assert_eq!(
            r.push(1, vec![Record::Horizon { exits: 0 }]),
            Err(ReplayError::BadLog {
                seq: 1,
                exits: 0,
                before: 1
            })
        );
        assert_eq!(r.received(), 1, "nothing of a refused frame is kept");
    }

    #[test]
    fn waits_without_log_and_runs_when_the_primary_is_ahead() {
        let mut r = Replayer::new();
        assert!(!r.can_progress());
        assert_eq!(r.next(true, &mut here((0, 0))), Ok(Step::Wait));
        r.push(0, vec![Record::Horizon { exits: 0 }]).unwrap();
        assert_eq!(r.next(true, &mut here((0, 0))), Ok(Step::Wait));
        r.push(1, vec![Record::Horizon { exits: 1 }]).unwrap();
        assert!(r.can_progress());
        assert_eq!(r.next(true, &mut here((0, 0))), Ok(Step::Run));
        assert_eq!(r.on_exit(), 1);
        assert_eq!(r.next(true, &mut here((0, 0))), Ok(Step::Wait));
        assert_eq!(r.consumed(), 2);
    }

    #[test]
    fn inputs_come_back_at_their_exit_and_mismatches_are_divergences() {
        let mut r = Replayer::new();
        r.push(
            0,
            vec![
                Record::Input {
                    exits: 1,
                    input: PIC,
                    value: [0x1, 0],
                },
                Record::Input {
                    exits: 2,
                    input: Input::Rdtsc,
                    value: [99, 0],
                },
            ],
        )
        .unwrap();
        assert_eq!(r.next(true, &mut here((0, 0))), Ok(Step::Run));
        r.on_exit();
        assert_eq!(r.input(PIC), Ok([1, 0]));
        assert_eq!(r.next(true, &mut here((0, 0))), Ok(Step::Run));
        r.on_exit();
        let e = r.input(Input::Pio {
            port: 0x21,
            size: 1,
        });
        match e {
            Err(ReplayError::Diverged(why)) => {
                assert!(why.contains("0x21") || why.contains("33"), "{why}");
                assert!(why.contains("Rdtsc"), "{why}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(r.input(Input::Rdtsc), Ok([99, 0]));
        assert_eq!(
            r.input(Input::Rdtsc),
            Err(ReplayError::Starved { exits: 2 })
        );
    }

    #[test]
    fn an_exit_that_read_nothing_where_the_primary_read_is_caught() {
        let mut r = Replayer::new();
        r.push(
            0,
            vec![Record::Input {
                exits: 1,
                input: PIC,
                value: [0, 0],
            }],
        )
        .unwrap();
        r.on_exit();
        assert!(matches!(
            r.next(true, &mut here((0, 0))),
            Err(ReplayError::Diverged(_))
        ));
    }

    #[test]
    fn events_apply_at_their_landmark() {
        let mut r = Replayer::new();
        let tick = Event::Irq { line: 0 };
        let inject = Event::Inject { vector: 0x20 };
        r.push(
            0,
            vec![
                Record::Event {
                    at: Landmark::Exit { exits: 0 },
                    event: tick,
                },
                Record::Check {
                    exits: 0,
                    digest: 5,
                },
                Record::Event {
                    at: Landmark::Forced {
                        exits: 0,
                        rip: 0x1000,
                        digest: 7,
                        branches: None,
                    },
                    event: inject,
                },
                Record::Horizon { exits: 1 },
            ],
        )
        .unwrap();
        assert_eq!(r.next(true, &mut here((0, 0))), Ok(Step::Apply(tick)));
        assert_eq!(r.next(true, &mut here((0, 0))), Ok(Step::Check(5)));
        assert_eq!(
            r.next(true, &mut here((0x500, 7))),
            Ok(Step::RunTo {
                rip: 0x1000,
                digest: 7
            })
        );
        // A breakpoint hit with other registers: run on.
        assert_eq!(
            r.next(false, &mut here((0x1000, 8))),
            Ok(Step::RunTo {
                rip: 0x1000,
                digest: 7
            })
        );
        assert_eq!(
            r.next(false, &mut here((0x1000, 7))),
            Ok(Step::Apply(inject))
        );
        assert_eq!(r.next(false, &mut here((0x1000, 7))), Ok(Step::Run));
    }

    #[test]
    fn running_past_a_landmark_is_a_divergence() {
        let mut r = Replayer::new();
        r.push(
            0,
            vec![Record::Event {
                at: Landmark::Forced {
                    exits: 0,
                    rip: 1,
                    digest: 2,
                    branches: None,
                },
                event: Event::Request,
            }],
        )
        .unwrap();
        assert!(matches!(
            r.next(true, &mut here((0, 0))),
            Ok(Step::RunTo { .. })
        ));
        r.on_exit();
        assert!(matches!(
            r.next(true, &mut here((0, 0))),
            Err(ReplayError::Diverged(_))
        ));
        let mut r = Replayer::new();
        r.push(
            0,
            vec![Record::Event {
                at: Landmark::Exit { exits: 0 },
                event: Event::Request,
            }],
        )
        .unwrap();
        assert!(matches!(
            r.next(false, &mut here((0, 0))),
            Err(ReplayError::Diverged(_))
        ));
    }

    #[test]
    fn acks_say_how_far_it_got() {
        let mut r = Replayer::new();
        r.push(
            0,
            vec![Record::Released { seq: 4 }, Record::Horizon { exits: 2 }],
        )
        .unwrap();
        assert_eq!(r.next(true, &mut here((0, 0))), Ok(Step::Run));
        r.on_exit();
        assert_eq!(
            r.ack(3),
            Ack {
                received: 2,
                replayed: 2,
                exits: 1,
                checks_ok: 3
            }
        );
        assert_eq!((r.released(), r.horizon(), r.queued()), (4, 2, 0));
    }
}
