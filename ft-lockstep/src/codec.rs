//! The FT channel's frames and their binary encoding.
//!
//! Every frame is one channel frame `(type, payload)`; types 0..32 belong to
//! the channel, 32..=44 to migration (`migrate::proto`), FT uses 48..=52
//! (the witness's frames, 56..=59, are [`crate::witness`]'s).
//! Every payload starts with the format's version (`u16`, [`VERSION`]); a
//! frame of another version is refused before anything after it is read.
//! Integers are little-endian.
//!
//! | type | frame | payload after the version |
//! |------|-------|---------------------------|
//! | 48   | `Log` | `u64 first, u32 n, n × record` |
//! | 49   | `Ack` | `u64 received, u64 replayed, u64 exits, u64 checks_ok` |
//! | 50   | `End` | `u32 len, len bytes of UTF-8 (at most 1024)` |
//! | 51   | `Heartbeat` | `u64 seq` (both ways, every `ft.heartbeat_ms`) |
//! | 52   | `Arbiter` | `u8 kind (0 none, 1 witness), 4 bytes IPv4, u64 generation` (primary, first frame) |
//!
//! A record is a tag byte and its fields:
//!
//! | tag | record | fields |
//! |-----|--------|--------|
//! | 1 | `Input` | `u64 exits, u8 kind, u64 a, u32 b, u64 value0, u64 value1` |
//! | 2 | `Event` | `landmark, u8 event, u8 arg` |
//! | 3 | `Horizon` | `u64 exits` |
//! | 4 | `Check` | `u64 exits, u64 digest` |
//! | 5 | `Released` | `u64 seq` |
//!
//! Input kinds (`a`, `b`): 0 port read (port, size), 1 MMIO load (gpa,
//! size), 2 RDTSC, 3 RDTSCP, 4 RDMSR (0, msr), 5 RDRAND/RDSEED (seed 0/1,
//! 0), 6 CPUID (leaf, sub); unused fields are 0 and must be. A landmark
//! is `u8 0, u64 exits` (right after that exit) or `u8 1, u64 exits, u64
//! rip, u64 digest, u8 has_branches, u64 branches` (at a forced exit).
//! Events: 0 IRQ raised (arg: line), 1 interrupt injected (arg: vector),
//! 2 request (arg 0).
//!
//! Decoding never panics and allocates no more than the payload's length
//! justifies; a frame with bytes after its last field is refused.

use alloc::string::String;
use alloc::vec::Vec;

use crate::VERSION;
use crate::record::{Event, Input, Landmark, Record};

/// `Log` frames (primary to secondary).
pub const FRAME_LOG: u8 = 48;
/// `Ack` frames (secondary to primary).
pub const FRAME_ACK: u8 = 49;
/// `End` frames (either way).
pub const FRAME_END: u8 = 50;

/// `Heartbeat` frames (either way).
pub const FRAME_HEARTBEAT: u8 = 51;
/// `Arbiter` frames (primary to secondary, first on the link).
pub const FRAME_ARBITER: u8 = 52;

/// Longest `End` reason.
pub const MAX_REASON: usize = 1024;

/// The secondary's acknowledgement.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ack {
    /// Log records received (the next sequence number it expects).
    pub received: u64,
    /// Records the replay consumed.
    pub replayed: u64,
    /// Deterministic exits replayed.
    pub exits: u64,
    /// State checks that matched.
    pub checks_ok: u64,
}

/// One FT frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Records `first..first + records.len()` of the log.
    Log {
        /// Sequence number of the first record (0-based).
        first: u64,
        /// The records.
        records: Vec<Record>,
    },
    /// The secondary's acknowledgement.
    Ack(Ack),
    /// Protection ends; why, for the other side's log.
    End {
        /// The reason.
        reason: String,
    },
    /// "I am alive": sent every heartbeat interval whatever else flows;
    /// `seq` counts up from 1 on each side.
    Heartbeat {
        /// This side's heartbeat number.
        seq: u64,
    },
    /// Who decides, should the twins lose each other: the witness (its
    /// IPv4 address) or nobody, and this protection's generation there.
    Arbiter {
        /// The witness's address; `None`: no witness (`witness=none`).
        witness: Option<[u8; 4]>,
        /// The generation the witness granted at `ft enable`.
        generation: u64,
    },
}

/// Why a frame was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// Another version of the log format.
    #[error("log format version {got} (this host reads version {want})")]
    Version {
        /// The frame's.
        got: u16,
        /// Ours.
        want: u16,
    },
    /// The payload ends inside a field.
    #[error("truncated {0} frame")]
    Truncated(&'static str),
    /// Bytes after the last field.
    #[error("{0} bytes after the end of the frame")]
    Trailing(usize),
    /// An unknown record tag.
    #[error("unknown record tag {0}")]
    BadTag(u8),
    /// An unknown input, landmark or event kind, or a non-zero unused field.
    #[error("bad {what} {value}")]
    BadField {
        /// Which field.
        what: &'static str,
        /// Its value.
        value: u64,
    },
    /// Not an FT frame type.
    #[error("frame type {0} is not an FT frame")]
    UnknownType(u8),
    /// More records than the payload could hold.
    #[error("a log frame announces {0} records, more than it holds")]
    TooMany(u32),
    /// An `End` reason longer than [`MAX_REASON`] or not UTF-8.
    #[error("bad End reason")]
    BadReason,
    /// `first + n` overflows.
    #[error("log positions overflow")]
    Overflow,
}

/// Smallest encoded record (`Horizon`, `Released`).
const MIN_RECORD: usize = 9;

/// Encoded size of one record.
pub fn record_len(r: &Record) -> usize {
    match r {
        Record::Input { .. } => 1 + 8 + 1 + 8 + 4 + 8 + 8,
        Record::Event { at, .. } => {
            1 + match at {
                Landmark::Exit { .. } => 9,
                Landmark::Forced { .. } => 9 + 8 + 8 + 9,
            } + 2
        }
        Record::Horizon { .. } | Record::Released { .. } => 9,
        Record::Check { .. } => 17,
    }
}

fn put_record(out: &mut Vec<u8>, r: &Record) {
    match *r {
        Record::Input {
            exits,
            input,
            value,
        } => {
            let (kind, a, b): (u8, u64, u32) = match input {
                Input::Pio { port, size } => (0, u64::from(port), u32::from(size)),
                Input::Mmio { gpa, size } => (1, gpa, u32::from(size)),
                Input::Rdtsc => (2, 0, 0),
                Input::Rdtscp => (3, 0, 0),
                Input::Msr { msr } => (4, 0, msr),
                Input::Rand { seed } => (5, u64::from(seed), 0),
                Input::Cpuid { leaf, sub } => (6, u64::from(leaf), sub),
            };
            out.push(1);
            out.extend_from_slice(&exits.to_le_bytes());
            out.push(kind);
            out.extend_from_slice(&a.to_le_bytes());
            out.extend_from_slice(&b.to_le_bytes());
            out.extend_from_slice(&value[0].to_le_bytes());
            out.extend_from_slice(&value[1].to_le_bytes());
        }
        Record::Event { at, event } => {
            out.push(2);
            match at {
                Landmark::Exit { exits } => {
                    out.push(0);
                    out.extend_from_slice(&exits.to_le_bytes());
                }
                Landmark::Forced {
                    exits,
                    rip,
                    digest,
                    branches,
                } => {
                    out.push(1);
                    out.extend_from_slice(&exits.to_le_bytes());
                    out.extend_from_slice(&rip.to_le_bytes());
                    out.extend_from_slice(&digest.to_le_bytes());
                    out.push(u8::from(branches.is_some()));
                    out.extend_from_slice(&branches.unwrap_or(0).to_le_bytes());
                }
            }
            let (kind, arg) = match event {
                Event::Irq { line } => (0, line),
                Event::Inject { vector } => (1, vector),
                Event::Request => (2, 0),
            };
            out.push(kind);
            out.push(arg);
        }
        Record::Horizon { exits } => {
            out.push(3);
            out.extend_from_slice(&exits.to_le_bytes());
        }
        Record::Check { exits, digest } => {
            out.push(4);
            out.extend_from_slice(&exits.to_le_bytes());
            out.extend_from_slice(&digest.to_le_bytes());
        }
        Record::Released { seq } => {
            out.push(5);
            out.extend_from_slice(&seq.to_le_bytes());
        }
    }
}

/// Encodes a frame: its channel frame type and payload.
pub fn encode(f: &Frame) -> (u8, Vec<u8>) {
    let mut out = Vec::new();
    out.extend_from_slice(&VERSION.to_le_bytes());
    let ty = match f {
        Frame::Log { first, records } => {
            out.reserve(12 + records.iter().map(record_len).sum::<usize>());
            out.extend_from_slice(&first.to_le_bytes());
            out.extend_from_slice(&(records.len() as u32).to_le_bytes());
            for r in records {
                put_record(&mut out, r);
            }
            FRAME_LOG
        }
        Frame::Ack(a) => {
            for v in [a.received, a.replayed, a.exits, a.checks_ok] {
                out.extend_from_slice(&v.to_le_bytes());
            }
            FRAME_ACK
        }
        Frame::End { reason } => {
            // Cut at a character boundary to what the decoder accepts.
            let mut end = reason.len().min(MAX_REASON);
            while !reason.is_char_boundary(end) {
                end -= 1;
            }
            out.extend_from_slice(&(end as u32).to_le_bytes());
            out.extend_from_slice(&reason.as_bytes()[..end]);
            FRAME_END
        }
        Frame::Heartbeat { seq } => {
            out.extend_from_slice(&seq.to_le_bytes());
            FRAME_HEARTBEAT
        }
        Frame::Arbiter {
            witness,
            generation,
        } => {
            out.push(u8::from(witness.is_some()));
            out.extend_from_slice(&witness.unwrap_or([0; 4]));
            out.extend_from_slice(&generation.to_le_bytes());
            FRAME_ARBITER
        }
    };
    (ty, out)
}

struct Reader<'a> {
    buf: &'a [u8],
    frame: &'static str,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], CodecError> {
        if self.buf.len() < n {
            return Err(CodecError::Truncated(self.frame));
        }
        let (a, b) = self.buf.split_at(n);
        self.buf = b;
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, CodecError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, CodecError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, CodecError> {
        let mut w = [0u8; 4];
        w.copy_from_slice(self.take(4)?);
        Ok(u32::from_le_bytes(w))
    }
    fn u64(&mut self) -> Result<u64, CodecError> {
        let mut w = [0u8; 8];
        w.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(w))
    }
}

fn bad(what: &'static str, value: u64) -> CodecError {
    CodecError::BadField { what, value }
}

fn get_record(r: &mut Reader<'_>) -> Result<Record, CodecError> {
    match r.u8()? {
        1 => {
            let exits = r.u64()?;
            let kind = r.u8()?;
            let a = r.u64()?;
            let b = r.u32()?;
            let value = [r.u64()?, r.u64()?];
            let small = |v: u32, max: u32| {
                if !v.is_power_of_two() || v > max {
                    Err(bad("access size", u64::from(v)))
                } else {
                    Ok(v as u8)
                }
            };
            let zero = |what, v: u64| if v == 0 { Ok(()) } else { Err(bad(what, v)) };
            let input = match kind {
                0 => Input::Pio {
                    port: u16::try_from(a).map_err(|_| bad("port", a))?,
                    size: small(b, 4)?,
                },
                1 => Input::Mmio {
                    gpa: a,
                    size: small(b, 8)?,
                },
                2 | 3 => {
                    zero("unused field", a)?;
                    zero("unused field", u64::from(b))?;
                    if kind == 2 {
                        Input::Rdtsc
                    } else {
                        Input::Rdtscp
                    }
                }
                4 => {
                    zero("unused field", a)?;
                    Input::Msr { msr: b }
                }
                5 => {
                    zero("unused field", u64::from(b))?;
                    match a {
                        0 => Input::Rand { seed: false },
                        1 => Input::Rand { seed: true },
                        other => return Err(bad("RDSEED flag", other)),
                    }
                }
                6 => Input::Cpuid {
                    leaf: u32::try_from(a).map_err(|_| bad("CPUID leaf", a))?,
                    sub: b,
                },
                other => return Err(bad("input kind", u64::from(other))),
            };
            Ok(Record::Input {
                exits,
                input,
                value,
            })
        }
        2 => {
            let at = match r.u8()? {
                0 => Landmark::Exit { exits: r.u64()? },
                1 => {
                    let exits = r.u64()?;
                    let rip = r.u64()?;
                    let digest = r.u64()?;
                    let has = r.u8()?;
                    let n = r.u64()?;
                    let branches = match has {
                        0 if n == 0 => None,
                        0 => return Err(bad("unused field", n)),
                        1 => Some(n),
                        other => return Err(bad("branch flag", u64::from(other))),
                    };
                    Landmark::Forced {
                        exits,
                        rip,
                        digest,
                        branches,
                    }
                }
                other => return Err(bad("landmark kind", u64::from(other))),
            };
            let kind = r.u8()?;
            let arg = r.u8()?;
            let event = match kind {
                0 => Event::Irq { line: arg },
                1 => Event::Inject { vector: arg },
                2 if arg == 0 => Event::Request,
                2 => return Err(bad("unused field", u64::from(arg))),
                other => return Err(bad("event kind", u64::from(other))),
            };
            Ok(Record::Event { at, event })
        }
        3 => Ok(Record::Horizon { exits: r.u64()? }),
        4 => Ok(Record::Check {
            exits: r.u64()?,
            digest: r.u64()?,
        }),
        5 => Ok(Record::Released { seq: r.u64()? }),
        tag => Err(CodecError::BadTag(tag)),
    }
}

/// Decodes a frame of channel type `ty`.
pub fn decode(ty: u8, payload: &[u8]) -> Result<Frame, CodecError> {
    let frame = match ty {
        FRAME_LOG => "Log",
        FRAME_ACK => "Ack",
        FRAME_END => "End",
        FRAME_HEARTBEAT => "Heartbeat",
        FRAME_ARBITER => "Arbiter",
        other => return Err(CodecError::UnknownType(other)),
    };
    let mut r = Reader {
        buf: payload,
        frame,
    };
    let version = r.u16()?;
    if version != VERSION {
        return Err(CodecError::Version {
            got: version,
            want: VERSION,
        });
    }
    let f = match ty {
        FRAME_LOG => {
            let first = r.u64()?;
            let n = r.u32()?;
            if (n as usize).saturating_mul(MIN_RECORD) > r.buf.len() {
                return Err(CodecError::TooMany(n));
            }
            first
                .checked_add(u64::from(n))
                .ok_or(CodecError::Overflow)?;
            let mut records = Vec::with_capacity(n as usize);
            for _ in 0..n {
                records.push(get_record(&mut r)?);
            }
            Frame::Log { first, records }
        }
        FRAME_ACK => Frame::Ack(Ack {
            received: r.u64()?,
            replayed: r.u64()?,
            exits: r.u64()?,
            checks_ok: r.u64()?,
        }),
        FRAME_HEARTBEAT => Frame::Heartbeat { seq: r.u64()? },
        FRAME_ARBITER => {
            let kind = r.u8()?;
            let ip: [u8; 4] = r
                .take(4)?
                .try_into()
                .map_err(|_| CodecError::Truncated(frame))?;
            let generation = r.u64()?;
            let witness = match kind {
                0 if ip == [0; 4] => None,
                1 => Some(ip),
                _ => return Err(bad("arbiter kind", u64::from(kind))),
            };
            Frame::Arbiter {
                witness,
                generation,
            }
        }
        _ => {
            let len = r.u32()? as usize;
            if len > MAX_REASON {
                return Err(CodecError::BadReason);
            }
            let bytes = r.take(len)?;
            let reason = core::str::from_utf8(bytes).map_err(|_| CodecError::BadReason)?;
            Frame::End {
                reason: String::from(reason),
            }
        }
    };
    if !r.buf.is_empty() {
        return Err(CodecError::Trailing(r.buf.len()));
    }
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;
    use proptest::prelude::*;

    fn every_record() -> Vec<Record> {
        let inputs = [
            Input::Pio {
                port: 0x21,
                size: 1,
            },
            Input::Mmio {
                gpa: 0xfe00_0005,
                size: 8,
            },
            Input::Rdtsc,
            Input::Rdtscp,
            Input::Msr { msr: 0x10 },
            Input::Rand { seed: true },
            Input::Rand { seed: false },
            Input::Cpuid {
                leaf: 0x4000_0010,
                sub: 3,
            },
        ];
        let mut v: Vec<Record> = inputs
            .iter()
            .enumerate()
            .map(|(k, &input)| Record::Input {
                exits: k as u64 + 1,
                input,
                value: [u64::MAX - k as u64, k as u64],
            })
            .collect();
        for at in [
            Landmark::Exit { exits: 9 },
            Landmark::Forced {
                exits: 9,
                rip: 0x10_2030,
                digest: 0xdead_beef,
                branches: None,
            },
            Landmark::Forced {
                exits: 10,
                rip: 1,
                digest: 2,
                branches: Some(3),
            },
        ] {
            for event in [
                Event::Irq { line: 0 },
                Event::Inject { vector: 0x20 },
                Event::Request,
            ] {
                v.push(Record::Event { at, event });
            }
        }
        v.push(Record::Horizon { exits: 11 });
        v.push(Record::Check {
            exits: 11,
            digest: 42,
        });
        v.push(Record::Released { seq: 7 });
        v
    }

    fn every_frame() -> Vec<Frame> {
        vec![
            Frame::Log {
                first: 100,
                records: every_record(),
            },
            Frame::Log {
                first: 0,
                records: vec![],
            },
            Frame::Ack(Ack {
                received: 1,
                replayed: 2,
                exits: 3,
                checks_ok: 4,
            }),
            Frame::End {
                reason: String::from("disabled by the operator"),
            },
            Frame::Heartbeat { seq: 7 },
            Frame::Arbiter {
                witness: Some([10, 0, 0, 9]),
                generation: 3,
            },
            Frame::Arbiter {
                witness: None,
                generation: 0,
            },
        ]
    }

    #[test]
    fn every_frame_round_trips_and_sizes_add_up() {
        for f in every_frame() {
            let (ty, p) = encode(&f);
            assert_eq!(decode(ty, &p), Ok(f.clone()));
            if let Frame::Log { records, .. } = &f {
                let sum: usize = records.iter().map(record_len).sum();
                assert_eq!(p.len(), 2 + 12 + sum);
            }
        }
    }

    #[test]
    fn every_truncation_and_any_trailing_byte_is_refused() {
        for f in every_frame() {
            let (ty, p) = encode(&f);
            for cut in 0..p.len() {
                assert!(decode(ty, &p[..cut]).is_err(), "{f:?} cut at {cut}");
            }
            let mut longer = p.clone();
            longer.push(0);
            assert_eq!(decode(ty, &longer), Err(CodecError::Trailing(1)));
        }
    }

    #[test]
    fn wrong_version_type_tag_and_fields_are_refused() {
        let (ty, mut p) = encode(&Frame::Ack(Ack::default()));
        p[0] = 2;
        assert_eq!(decode(ty, &p), Err(CodecError::Version { got: 2, want: 1 }));
        assert_eq!(decode(41, &[1, 0]), Err(CodecError::UnknownType(41)));
        let (ty, mut p) = encode(&Frame::Log {
            first: 0,
            records: vec![Record::Horizon { exits: 1 }],
        });
        p[14] = 9;
        assert_eq!(decode(ty, &p), Err(CodecError::BadTag(9)));
        // A port read of size 3, an RDTSC with a stray field.
        for (kind, a, b) in [(0u8, 0x21u64, 3u32), (2, 1, 0), (0, 0x1_0000, 1), (7, 0, 0)] {
            let mut p = vec![1, 0];
            p.extend_from_slice(&0u64.to_le_bytes());
            p.extend_from_slice(&1u32.to_le_bytes());
            p.push(1);
            p.extend_from_slice(&1u64.to_le_bytes());
            p.push(kind);
            p.extend_from_slice(&a.to_le_bytes());
            p.extend_from_slice(&b.to_le_bytes());
            p.extend_from_slice(&[0; 16]);
            assert!(
                matches!(decode(FRAME_LOG, &p), Err(CodecError::BadField { .. })),
                "kind {kind} a {a} b {b}"
            );
        }
    }

    #[test]
    fn a_huge_record_count_allocates_nothing() {
        let mut p = vec![1, 0];
        p.extend_from_slice(&0u64.to_le_bytes());
        p.extend_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(decode(FRAME_LOG, &p), Err(CodecError::TooMany(u32::MAX)));
        let mut p = vec![1, 0];
        p.extend_from_slice(&u64::MAX.to_le_bytes());
        p.extend_from_slice(&1u32.to_le_bytes());
        p.push(3);
        p.extend_from_slice(&0u64.to_le_bytes());
        assert_eq!(decode(FRAME_LOG, &p), Err(CodecError::Overflow));
    }

    #[test]
    fn long_reasons_are_cut_where_the_decoder_accepts_them() {
        let reason = "é".repeat(MAX_REASON);
        let (ty, p) = encode(&Frame::End { reason });
        match decode(ty, &p) {
            Ok(Frame::End { reason }) => assert!(reason.len() <= MAX_REASON && !reason.is_empty()),
            other => panic!("{other:?}"),
        }
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(ty in 46u8..54, bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = decode(ty, &bytes);
        }

        #[test]
        fn flipped_bytes_never_panic(k in 0usize..1000, x in 1u8..=255) {
            for f in every_frame() {
                let (ty, mut p) = encode(&f);
                if p.is_empty() { continue; }
                let i = k % p.len();
                p[i] ^= x;
                let _ = decode(ty, &p);
            }
        }
    }
}
