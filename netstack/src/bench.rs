//! `net bench` and `net sink`: a measured bulk transfer over an
//! authenticated channel, verified by a checksum at the receiving end.
//!
//! ```text
//! sender                                   sink
//!   Start { total: u64 }            ──────▶
//!   Data  (pseudo-random bytes) ... ──────▶  checksum as it arrives
//!   End   { bytes: u64, sum: u64 }  ──────▶  compare
//!                                   ◀──────  Result { ok: u8, bytes: u64, sum: u64 }
//!   close                           ──────▶
//! ```

use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use smoltcp::wire::IpEndpoint;

use crate::channel::{Channel, ChannelOptions, CloseReason, Listener, SendError};
use crate::codec::{FrameType, Key};
use crate::stack::{Stack, StackError};

/// Frame types of the bench protocol.
pub const T_START: FrameType = 16;
pub const T_DATA: FrameType = 17;
pub const T_END: FrameType = 18;
pub const T_RESULT: FrameType = 19;

/// The port `net sink` listens on.
pub const SINK_PORT: u16 = 7001;

/// Payload bytes per data frame.
pub const CHUNK: usize = 32 * 1024;

/// A 64-bit checksum of a byte stream that does not depend on how the
/// stream is cut into pieces (FNV-1a over little-endian 8-byte words).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checksum {
    h: u64,
    pending: [u8; 8],
    npending: usize,
    len: u64,
}

impl Default for Checksum {
    fn default() -> Self {
        Checksum {
            h: 0xcbf2_9ce4_8422_2325,
            pending: [0; 8],
            npending: 0,
            len: 0,
        }
    }
}

impl Checksum {
    fn word(&mut self, w: u64) {
        self.h = (self.h ^ w).wrapping_mul(0x0000_0100_0000_01b3);
    }

    /// Adds bytes.
    pub fn update(&mut self, mut data: &[u8]) {
        self.len += data.len() as u64;
        if self.npending > 0 {
            let take = (8 - self.npending).min(data.len());
            self.pending[self.npending..self.npending + take].copy_from_slice(&data[..take]);
            self.npending += take;
            data = &data[take..];
            if self.npending < 8 {
                return;
            }
            self.word(u64::from_le_bytes(self.pending));
            self.npending = 0;
        }
        let mut words = data.chunks_exact(8);
        for w in &mut words {
            self.word(u64::from_le_bytes([
                w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7],
            ]));
        }
        let rest = words.remainder();
        self.pending[..rest.len()].copy_from_slice(rest);
        self.npending = rest.len();
    }

    /// The checksum of everything so far (length included).
    pub fn value(&self) -> u64 {
        let mut c = *self;
        if c.npending > 0 {
            let mut last = [0u8; 8];
            last[..c.npending].copy_from_slice(&c.pending[..c.npending]);
            c.word(u64::from_le_bytes(last));
        }
        c.word(c.len);
        c.h
    }
}

/// Pseudo-random bench data (xorshift64*), so the bytes are not trivially
/// compressible and a dropped or repeated chunk changes the checksum.
pub struct Pattern(u64);

impl Pattern {
    /// A stream from `seed` (any value).
    pub fn new(seed: u64) -> Pattern {
        Pattern(seed | 1)
    }
    /// Fills `buf` with the next bytes.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            let v = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

fn u64_at(p: &[u8], i: usize) -> Option<u64> {
    p.get(i..i + 8)
        .map(|b| u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
}

/// The result of a finished bench.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BenchReport {
    pub bytes: u64,
    /// From the channel opening to the sink's verdict.
    pub elapsed_us: u64,
    pub sent_sum: u64,
    pub sink_sum: u64,
    /// The sink saw every byte and the checksum matched.
    pub ok: bool,
}

impl BenchReport {
    /// Throughput in MiB/s × 100 (two decimals without floats).
    pub fn mib_per_s_x100(&self) -> u64 {
        if self.elapsed_us == 0 {
            return 0;
        }
        ((self.bytes as u128 * 100 * 1_000_000) / ((self.elapsed_us as u128) << 20)) as u64
    }
}

/// Where a bench stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BenchStatus {
    Connecting,
    Running { sent: u64 },
    Done(BenchReport),
    Failed(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Start,
    Data,
    End,
    Wait,
    Finished,
}

/// The sending side of `net bench`.
pub struct BenchSender {
    chan: Channel,
    total: u64,
    sent: u64,
    pattern: Pattern,
    sum: Checksum,
    step: Step,
    started_us: Option<u64>,
    buf: Vec<u8>,
    status: BenchStatus,
}

impl BenchSender {
    /// Connects to a sink and prepares to send `total` bytes.
    pub fn start(
        stack: &mut Stack,
        sink: (smoltcp::wire::Ipv4Address, u16),
        key: &Key,
        nonce: [u8; 32],
        total: u64,
        now_us: u64,
    ) -> Result<BenchSender, StackError> {
        let opts = ChannelOptions {
            max_payload: 4096,
            ..ChannelOptions::default()
        };
        let chan = Channel::connect(stack, sink, key, nonce, opts, now_us)?;
        Ok(BenchSender {
            chan,
            total,
            sent: 0,
            pattern: Pattern::new(now_us ^ total),
            sum: Checksum::default(),
            step: Step::Start,
            started_us: None,
            buf: vec![0; CHUNK],
            status: BenchStatus::Connecting,
        })
    }

    /// Drives the transfer; call after every [`Stack::poll`].
    pub fn poll(&mut self, stack: &mut Stack, now_us: u64) -> &BenchStatus {
        if matches!(self.status, BenchStatus::Done(_) | BenchStatus::Failed(_)) {
            return &self.status;
        }
        self.chan.poll(stack, now_us);
        if self.chan.is_open() && self.started_us.is_none() {
            self.started_us = Some(now_us);
            self.status = BenchStatus::Running { sent: 0 };
        }
        while self.chan.is_open() {
            let r = match self.step {
                Step::Start => self.chan.send(T_START, &self.total.to_le_bytes()),
                Step::Data => {
                    let n = (self.total - self.sent).min(CHUNK as u64) as usize;
                    if !self.chan.can_send(n) {
                        Err(SendError::WouldBlock)
                    } else {
                        self.pattern.fill(&mut self.buf[..n]);
                        self.sum.update(&self.buf[..n]);
                        self.sent += n as u64;
                        self.chan.send(T_DATA, &self.buf[..n])
                    }
                }
                Step::End => {
                    let mut p = [0u8; 16];
                    p[..8].copy_from_slice(&self.sent.to_le_bytes());
                    p[8..].copy_from_slice(&self.sum.value().to_le_bytes());
                    self.chan.send(T_END, &p)
                }
                Step::Wait | Step::Finished => break,
            };
            match r {
                Ok(()) => {
                    self.step = match self.step {
                        Step::Start if self.total == 0 => Step::End,
                        Step::Start => Step::Data,
                        Step::Data if self.sent >= self.total => Step::End,
                        Step::Data => Step::Data,
                        _ => Step::Wait,
                    };
                    self.status = BenchStatus::Running { sent: self.sent };
                }
                Err(SendError::WouldBlock) => {
                    // Push what is queued into the socket and come back later.
                    self.chan.poll(stack, now_us);
                    break;
                }
                Err(e) => {
                    self.status = BenchStatus::Failed(alloc::format!("{e}"));
                    return &self.status;
                }
            }
        }
        while let Some((ty, p)) = self.chan.recv(stack) {
            if ty == T_RESULT && self.step == Step::Wait {
                let ok = p.first() == Some(&1);
                let bytes = u64_at(&p, 1).unwrap_or(0);
                let sink_sum = u64_at(&p, 9).unwrap_or(0);
                let elapsed_us = now_us - self.started_us.unwrap_or(now_us);
                self.step = Step::Finished;
                self.status = BenchStatus::Done(BenchReport {
                    bytes,
                    elapsed_us,
                    sent_sum: self.sum.value(),
                    sink_sum,
                    ok: ok && bytes == self.total && sink_sum == self.sum.value(),
                });
                self.chan.close(stack);
                self.chan.poll(stack, now_us);
                return &self.status;
            }
        }
        if self.chan.is_closed() {
            let why = self
                .chan
                .close_reason()
                .cloned()
                .unwrap_or(CloseReason::PeerGone);
            self.status = BenchStatus::Failed(alloc::format!("{why}"));
        }
        &self.status
    }

    /// Gives up (Ctrl-C) or cleans up after the end; frees the socket.
    pub fn finish(mut self, stack: &mut Stack) {
        self.chan.close(stack);
        self.chan.release(stack);
    }

    /// Whether the close frame has left (so `finish` loses nothing).
    pub fn flushed(&self) -> bool {
        self.chan.is_closed()
    }

    /// Polls the channel only (to flush the close after `Done`).
    pub fn poll_channel(&mut self, stack: &mut Stack, now_us: u64) {
        self.chan.poll(stack, now_us);
    }
}

/// What the sink reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SinkEvent {
    /// A peer authenticated.
    Opened { peer: Option<IpEndpoint> },
    /// A transfer ended: bytes received, time, and whether the checksum matched.
    Received {
        peer: Option<IpEndpoint>,
        bytes: u64,
        elapsed_us: u64,
        ok: bool,
    },
    /// A connection ended abnormally (wrong key, garbage, oversize, drop).
    Dropped {
        peer: Option<IpEndpoint>,
        reason: CloseReason,
    },
}

struct SinkSession {
    chan: Channel,
    expected: Option<u64>,
    got: u64,
    sum: Checksum,
    started_us: u64,
    was_open: bool,
    done: bool,
}

/// The receiving side: accepts bench connections and verifies them.
pub struct Sink {
    listener: Listener,
    sessions: Vec<SinkSession>,
    /// Concurrent sessions allowed (others are refused at once).
    pub max_sessions: usize,
}

impl Sink {
    /// Listens on `port`.
    pub fn new(stack: &mut Stack, port: u16, max_pending: usize) -> Result<Sink, StackError> {
        Ok(Sink {
            listener: Listener::new(stack, port, max_pending)?,
            sessions: Vec::new(),
            max_sessions: 4,
        })
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.listener.port()
    }

    /// Whether any transfer is in progress (the caller should poll often).
    pub fn busy(&self) -> bool {
        !self.sessions.is_empty()
    }

    /// Accepts, receives and verifies; call after every [`Stack::poll`].
    pub fn poll(
        &mut self,
        stack: &mut Stack,
        key: &Key,
        nonce: &mut dyn FnMut() -> [u8; 32],
        now_us: u64,
    ) -> Vec<SinkEvent> {
        let mut events = Vec::new();
        loop {
            let pending = self.sessions.iter().filter(|s| s.chan.is_pending()).count();
            let Some(h) = self.listener.accept(stack, pending, now_us) else {
                break;
            };
            let opts = ChannelOptions {
                max_payload: (CHUNK + 64) as u32,
                ..ChannelOptions::default()
            };
            let chan = Channel::accept(stack, h, key, nonce(), opts, now_us);
            if self.sessions.len() >= self.max_sessions {
                log::warn!(
                    "net sink: refusing {:?}: {} sessions already",
                    chan.peer(),
                    self.max_sessions
                );
                chan.release(stack);
                continue;
            }
            self.sessions.push(SinkSession {
                chan,
                expected: None,
                got: 0,
                sum: Checksum::default(),
                started_us: now_us,
                was_open: false,
                done: false,
            });
        }
        for s in &mut self.sessions {
            s.chan.poll(stack, now_us);
            if s.chan.is_open() && !s.was_open {
                s.was_open = true;
                s.started_us = now_us;
                events.push(SinkEvent::Opened {
                    peer: s.chan.peer(),
                });
            }
            while let Some((ty, p)) = s.chan.recv(stack) {
                match (ty, s.expected) {
                    (T_START, None) => s.expected = Some(u64_at(&p, 0).unwrap_or(0)),
                    (T_DATA, Some(_)) => {
                        s.got += p.len() as u64;
                        s.sum.update(&p);
                    }
                    (T_END, Some(total)) => {
                        let bytes = u64_at(&p, 0).unwrap_or(u64::MAX);
                        let sum = u64_at(&p, 8).unwrap_or(0);
                        let ok = bytes == s.got && total == s.got && sum == s.sum.value();
                        let mut r = [0u8; 17];
                        r[0] = ok as u8;
                        r[1..9].copy_from_slice(&s.got.to_le_bytes());
                        r[9..].copy_from_slice(&s.sum.value().to_le_bytes());
                        // The queue is empty here: the sender waits for this.
                        let _ = s.chan.send(T_RESULT, &r);
                        s.chan.poll(stack, now_us);
                        s.done = true;
                        events.push(SinkEvent::Received {
                            peer: s.chan.peer(),
                            bytes: s.got,
                            elapsed_us: now_us - s.started_us,
                            ok,
                        });
                    }
                    _ => {
                        log::warn!(
                            "net sink: {:?}: unexpected frame type {ty}; closing",
                            s.chan.peer()
                        );
                        s.chan.close(stack);
                        s.done = true;
                    }
                }
            }
        }
        let mut i = 0;
        while i < self.sessions.len() {
            if self.sessions[i].chan.is_closed() {
                let s = self.sessions.swap_remove(i);
                let reason = s
                    .chan
                    .close_reason()
                    .cloned()
                    .unwrap_or(CloseReason::PeerGone);
                if !s.done {
                    events.push(SinkEvent::Dropped {
                        peer: s.chan.peer(),
                        reason,
                    });
                }
                s.chan.release(stack);
            } else {
                i += 1;
            }
        }
        events
    }

    /// Stops listening and drops every session.
    pub fn close(self, stack: &mut Stack) {
        for s in self.sessions {
            s.chan.release(stack);
        }
        self.listener.close(stack);
    }
}
