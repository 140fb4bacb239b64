//! The migration wire protocol: messages, their binary encoding, CPU feature names.
//!
//! Every message travels as one channel frame `(type, payload)`. Types 0..32 are
//! reserved for other users of the channel; migration uses 32..=43. Payloads are
//! little-endian; strings and vectors carry a `u32` length/count prefix.
//!
//! | type | message        | payload                                                                 |
//! |------|----------------|-------------------------------------------------------------------------|
//! | 32   | `Hello`        | `u16 version, str vm, u64 mem_bytes, u64 cpu_features, u32 n, n × str`  |
//! | 33   | `Ready`        | empty                                                                   |
//! | 34   | `Refuse`       | `u32 n, n × str`                                                        |
//! | 35   | `MemoryLayout` | `u32 n, n × (u64 gpa, u64 len)`                                         |
//! | 36   | `Pages`        | `u32 round, u32 runs, runs × (u64 first_gfn, u32 n, n × page)`          |
//! | 37   | `RoundEnd`     | `u32 round, u64 pages_sent, u64 dirty_left`                             |
//! | 38   | `Pause`        | empty                                                                   |
//! | 39   | `VcpuState`    | `u32 len, bytes`                                                        |
//! | 40   | `DeviceState`  | `str name, u32 len, bytes`                                              |
//! | 41   | `Commit`       | empty                                                                   |
//! | 42   | `Committed`    | empty                                                                   |
//! | 43   | `Abort`        | `str reason`                                                            |
//!
//! `str` is `u32 len` + UTF-8 bytes. A page is `u8 0` (zero page, 1 byte on the
//! wire) or `u8 1, u32 4096, 4096 bytes` (raw page).
//!
//! Limits, enforced by [`decode`] with a typed error (a field is never cut):
//! VM name [`MAX_VM_NAME`] bytes; [`MAX_DEVICES`] devices of
//! [`MAX_DEVICE_NAME`] bytes (also the `DeviceState` name); [`MAX_REASONS`]
//! reasons of [`MAX_REASON`] bytes (also the `Abort` reason);
//! [`MAX_REGIONS`] regions. [`Message::refuse`] and [`Message::abort`] build
//! messages within them.

use alloc::string::String;
use alloc::vec::Vec;

/// Version of this protocol; both ends must speak the same one.
pub const PROTOCOL_VERSION: u16 = 1;
/// Size of a guest page in bytes.
pub const PAGE_SIZE: usize = 4096;
/// Largest payload of one channel frame.
pub const MAX_MESSAGE: usize = 1 << 20;
/// First frame type used by migration (lower types belong to other protocols).
pub const FIRST_TYPE: u8 = 32;

/// Longest VM name in `Hello`, in bytes (the name rule itself is
/// [`crate::names::check_vm_name`]).
pub const MAX_VM_NAME: usize = crate::names::MAX_VM_NAME;
/// Most devices a `Hello` lists.
pub const MAX_DEVICES: usize = 16;
/// Longest device name (in `Hello` and `DeviceState`), in bytes.
pub const MAX_DEVICE_NAME: usize = 32;
/// Most reasons a `Refuse` carries.
pub const MAX_REASONS: usize = 16;
/// Longest reason in `Refuse` or `Abort`, in bytes.
pub const MAX_REASON: usize = 256;
/// Most regions a `MemoryLayout` holds.
pub const MAX_REGIONS: usize = 64;

/// Bytes a zero page takes inside a `Pages` payload.
pub const ZERO_PAGE_WIRE: usize = 1;
/// Bytes a raw page takes inside a `Pages` payload.
pub const RAW_PAGE_WIRE: usize = 1 + 4 + PAGE_SIZE;
/// Fixed bytes of a `Pages` payload (round + run count).
pub const PAGES_HEADER_WIRE: usize = 4 + 4;
/// Bytes of a run header inside a `Pages` payload (first gfn + page count).
pub const RUN_HEADER_WIRE: usize = 8 + 4;

const PAGE_ZERO: u8 = 0;
const PAGE_RAW: u8 = 1;

/// Errors found while decoding a frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtoError {
    /// The frame type is not a migration message.
    #[error("unknown migration message type {0}")]
    UnknownType(u8),
    /// The payload ended before a field was complete.
    #[error("message truncated while reading {what}")]
    Truncated {
        /// The field being read.
        what: &'static str,
    },
    /// The payload has bytes after the last field.
    #[error("{0} trailing bytes after the message")]
    TrailingBytes(usize),
    /// A page marker is neither zero (0) nor raw (1).
    #[error("bad page kind {0} (expected 0 = zero or 1 = raw)")]
    BadPageKind(u8),
    /// A raw page does not hold exactly 4096 bytes.
    #[error("raw page of {0} bytes (a page is 4096 bytes)")]
    BadPageLength(usize),
    /// The peer speaks another protocol version.
    #[error("protocol version mismatch: we speak {ours}, the peer speaks {theirs}")]
    Version {
        /// Our version.
        ours: u16,
        /// The peer's version.
        theirs: u16,
    },
    /// The payload is larger than [`MAX_MESSAGE`].
    #[error("payload of {0} bytes exceeds the 1 MiB message limit")]
    TooLarge(usize),
    /// A string is not valid UTF-8.
    #[error("{what} is not valid UTF-8")]
    BadUtf8 {
        /// The field being read.
        what: &'static str,
    },
    /// A string field is longer than the protocol allows.
    #[error("{what} is {len} bytes, longer than the {max}-byte limit")]
    TooLong {
        /// The field being read.
        what: &'static str,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A list holds more elements than the protocol allows.
    #[error("{what}: {count} exceed the limit of {max}")]
    TooMany {
        /// The list being read.
        what: &'static str,
        /// How many were announced (or counted so far).
        count: u64,
        /// The limit.
        max: u64,
    },
    /// A page run extends past the largest representable frame number.
    #[error("page run at gfn {first_gfn:#x} with {pages} pages overflows")]
    GfnOverflow {
        /// First frame of the run.
        first_gfn: u64,
        /// Pages in the run.
        pages: u64,
    },
}

/// Checks the peer's protocol version against [`PROTOCOL_VERSION`].
pub fn check_version(theirs: u16) -> Result<(), ProtoError> {
    if theirs == PROTOCOL_VERSION {
        Ok(())
    } else {
        Err(ProtoError::Version {
            ours: PROTOCOL_VERSION,
            theirs,
        })
    }
}

/// One guest page on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Page {
    /// A page of zeros (1-byte marker on the wire).
    Zero,
    /// The page contents, exactly [`PAGE_SIZE`] bytes.
    Raw(Vec<u8>),
}

impl Page {
    /// Builds the wire form of a page: `Zero` if every byte is zero.
    pub fn from_bytes(data: &[u8; PAGE_SIZE]) -> Page {
        if is_zero(data) {
            Page::Zero
        } else {
            Page::Raw(data.to_vec())
        }
    }

    /// Bytes this page takes inside a `Pages` payload.
    pub fn wire_len(&self) -> usize {
        match self {
            Page::Zero => ZERO_PAGE_WIRE,
            Page::Raw(d) => 1 + 4 + d.len(),
        }
    }
}

/// Whether a page holds only zeros.
pub fn is_zero(data: &[u8; PAGE_SIZE]) -> bool {
    // Word by word: the kernel target has no SIMD, and a byte loop costs
    // 4096 iterations a page on every page a round reads.
    data.chunks_exact(8).all(|c| {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        u64::from_ne_bytes(w) == 0
    })
}

/// Consecutive pages starting at `first_gfn`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageRun {
    /// Guest frame number of the first page.
    pub first_gfn: u64,
    /// The pages, for frames `first_gfn`, `first_gfn + 1`, ...
    pub pages: Vec<Page>,
}

/// A migration protocol message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Source → destination: who is coming and what it needs.
    Hello {
        /// Protocol version of the source.
        version: u16,
        /// VM name.
        vm: String,
        /// Guest RAM in bytes.
        mem_bytes: u64,
        /// CPU features the guest sees ([`CpuFeature`] bits).
        cpu_features: u64,
        /// Device models the guest uses, by name.
        devices: Vec<String>,
    },
    /// Destination → source: Hello accepted, RAM reserved.
    Ready,
    /// Destination → source: Hello refused; one entry per blocker.
    Refuse {
        /// Every reason the destination cannot take the guest.
        reasons: Vec<String>,
    },
    /// Source → destination: guest-physical RAM regions (page-aligned, ascending, disjoint).
    MemoryLayout {
        /// `(gpa, len)` pairs.
        regions: Vec<(u64, u64)>,
    },
    /// Source → destination: page contents for one round.
    Pages {
        /// Pre-copy round (the final round follows `Pause`).
        round: u32,
        /// Runs of consecutive pages.
        runs: Vec<PageRun>,
    },
    /// Source → destination: a round is complete.
    RoundEnd {
        /// The round that ended.
        round: u32,
        /// Pages sent in the round.
        pages_sent: u64,
        /// Pages dirtied during the round (to be sent next).
        dirty_left: u64,
    },
    /// Source → destination: the guest is paused; the final round follows.
    Pause,
    /// Source → destination: opaque vCPU state.
    VcpuState(Vec<u8>),
    /// Source → destination: opaque state of one device model.
    DeviceState {
        /// Device name (as listed in `Hello`).
        name: String,
        /// Saved state.
        data: Vec<u8>,
    },
    /// Source → destination: everything was sent.
    Commit,
    /// Destination → source: the guest runs on the destination now.
    Committed,
    /// Either direction: the migration is abandoned.
    Abort {
        /// Why.
        reason: String,
    },
}

/// `s` cut to at most `max` bytes (at a character boundary, ending in `...`
/// when cut).
fn clamp(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max.saturating_sub(3);
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push_str("...");
    }
    s
}

impl Message {
    /// An `Abort` whose reason fits [`MAX_REASON`] (cut if longer), so the
    /// peer can decode it.
    pub fn abort(reason: impl Into<String>) -> Message {
        Message::Abort {
            reason: clamp(reason.into(), MAX_REASON),
        }
    }

    /// A `Refuse` within the protocol limits: each reason cut to
    /// [`MAX_REASON`] bytes; past [`MAX_REASONS`], the last one says how
    /// many more there were.
    pub fn refuse(mut reasons: Vec<String>) -> Message {
        if reasons.len() > MAX_REASONS {
            let more = reasons.len() - (MAX_REASONS - 1);
            reasons.truncate(MAX_REASONS - 1);
            reasons.push(alloc::format!("and {more} more"));
        }
        Message::Refuse {
            reasons: reasons.into_iter().map(|r| clamp(r, MAX_REASON)).collect(),
        }
    }

    /// The channel frame type of this message.
    pub fn frame_type(&self) -> u8 {
        FIRST_TYPE
            + match self {
                Message::Hello { .. } => 0,
                Message::Ready => 1,
                Message::Refuse { .. } => 2,
                Message::MemoryLayout { .. } => 3,
                Message::Pages { .. } => 4,
                Message::RoundEnd { .. } => 5,
                Message::Pause => 6,
                Message::VcpuState(_) => 7,
                Message::DeviceState { .. } => 8,
                Message::Commit => 9,
                Message::Committed => 10,
                Message::Abort { .. } => 11,
            }
    }

    /// The message's name, for logs and error reasons.
    pub fn name(&self) -> &'static str {
        match self {
            Message::Hello { .. } => "Hello",
            Message::Ready => "Ready",
            Message::Refuse { .. } => "Refuse",
            Message::MemoryLayout { .. } => "MemoryLayout",
            Message::Pages { .. } => "Pages",
            Message::RoundEnd { .. } => "RoundEnd",
            Message::Pause => "Pause",
            Message::VcpuState(_) => "VcpuState",
            Message::DeviceState { .. } => "DeviceState",
            Message::Commit => "Commit",
            Message::Committed => "Committed",
            Message::Abort { .. } => "Abort",
        }
    }
}

fn str_len(s: &str) -> usize {
    4 + s.len()
}

/// Size in bytes of the payload [`encode`] produces for `msg`, without encoding it.
pub fn encoded_len(msg: &Message) -> usize {
    match msg {
        Message::Hello { vm, devices, .. } => {
            2 + str_len(vm) + 8 + 8 + 4 + devices.iter().map(|d| str_len(d)).sum::<usize>()
        }
        Message::Ready | Message::Pause | Message::Commit | Message::Committed => 0,
        Message::Refuse { reasons } => 4 + reasons.iter().map(|r| str_len(r)).sum::<usize>(),
        Message::MemoryLayout { regions } => 4 + 16 * regions.len(),
        Message::Pages { runs, .. } => {
            PAGES_HEADER_WIRE
                + runs
                    .iter()
                    .map(|r| RUN_HEADER_WIRE + r.pages.iter().map(Page::wire_len).sum::<usize>())
                    .sum::<usize>()
        }
        Message::RoundEnd { .. } => 4 + 8 + 8,
        Message::VcpuState(d) => 4 + d.len(),
        Message::DeviceState { name, data } => str_len(name) + 4 + data.len(),
        Message::Abort { reason } => str_len(reason),
    }
}

struct Writer(Vec<u8>);

impl Writer {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn len(&mut self, n: usize) {
        // Lengths above u32::MAX cannot occur in a payload that fits MAX_MESSAGE;
        // saturate so an oversized message fails to decode instead of aliasing.
        self.u32(u32::try_from(n).unwrap_or(u32::MAX));
    }
    fn bytes(&mut self, b: &[u8]) {
        self.len(b.len());
        self.0.extend_from_slice(b);
    }
    fn str(&mut self, s: &str) {
        self.bytes(s.as_bytes());
    }
    fn strs(&mut self, v: &[String]) {
        self.len(v.len());
        for s in v {
            self.str(s);
        }
    }
}

/// Encodes a message into its frame type and payload.
pub fn encode(msg: &Message) -> (u8, Vec<u8>) {
    let mut w = Writer(Vec::with_capacity(encoded_len(msg)));
    match msg {
        Message::Hello {
            version,
            vm,
            mem_bytes,
            cpu_features,
            devices,
        } => {
            w.u16(*version);
            w.str(vm);
            w.u64(*mem_bytes);
            w.u64(*cpu_features);
            w.strs(devices);
        }
        Message::Ready | Message::Pause | Message::Commit | Message::Committed => {}
        Message::Refuse { reasons } => w.strs(reasons),
        Message::MemoryLayout { regions } => {
            w.len(regions.len());
            for &(gpa, len) in regions {
                w.u64(gpa);
                w.u64(len);
            }
        }
        Message::Pages { round, runs } => {
            w.u32(*round);
            w.len(runs.len());
            for run in runs {
                w.u64(run.first_gfn);
                w.len(run.pages.len());
                for page in &run.pages {
                    match page {
                        Page::Zero => w.u8(PAGE_ZERO),
                        Page::Raw(d) => {
                            w.u8(PAGE_RAW);
                            w.bytes(d);
                        }
                    }
                }
            }
        }
        Message::RoundEnd {
            round,
            pages_sent,
            dirty_left,
        } => {
            w.u32(*round);
            w.u64(*pages_sent);
            w.u64(*dirty_left);
        }
        Message::VcpuState(d) => w.bytes(d),
        Message::DeviceState { name, data } => {
            w.str(name);
            w.bytes(data);
        }
        Message::Abort { reason } => w.str(reason),
    }
    (msg.frame_type(), w.0)
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], ProtoError> {
        if self.buf.len() < n {
            return Err(ProtoError::Truncated { what });
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }
    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], ProtoError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N, what)?);
        Ok(a)
    }
    fn u8(&mut self, what: &'static str) -> Result<u8, ProtoError> {
        Ok(self.take(1, what)?[0])
    }
    fn u16(&mut self, what: &'static str) -> Result<u16, ProtoError> {
        Ok(u16::from_le_bytes(self.array(what)?))
    }
    fn u32(&mut self, what: &'static str) -> Result<u32, ProtoError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }
    fn u64(&mut self, what: &'static str) -> Result<u64, ProtoError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }
    /// Reads a count of elements that each take at least `min_size` bytes,
    /// rejecting counts the remaining payload cannot hold (no huge allocations).
    fn count(&mut self, min_size: usize, what: &'static str) -> Result<usize, ProtoError> {
        let n = self.u32(what)? as usize;
        if n.saturating_mul(min_size.max(1)) > self.buf.len() {
            return Err(ProtoError::Truncated { what });
        }
        Ok(n)
    }
    fn bytes(&mut self, what: &'static str) -> Result<&'a [u8], ProtoError> {
        let n = self.u32(what)? as usize;
        self.take(n, what)
    }
    /// A string of at most `max` bytes; longer is an error, never cut.
    fn string(&mut self, max: usize, what: &'static str) -> Result<String, ProtoError> {
        let len = self.u32(what)? as usize;
        if len > max {
            return Err(ProtoError::TooLong { what, len, max });
        }
        let b = self.take(len, what)?;
        core::str::from_utf8(b)
            .map(String::from)
            .map_err(|_| ProtoError::BadUtf8 { what })
    }
    /// At most `max_count` strings of at most `max_len` bytes each.
    fn strings(
        &mut self,
        max_count: usize,
        max_len: usize,
        what: &'static str,
    ) -> Result<Vec<String>, ProtoError> {
        let n = self.limited_count(4, max_count, what)?;
        (0..n).map(|_| self.string(max_len, what)).collect()
    }
    /// [`Reader::count`] with a protocol limit on top.
    fn limited_count(
        &mut self,
        min_size: usize,
        max: usize,
        what: &'static str,
    ) -> Result<usize, ProtoError> {
        let n = self.count(min_size, what)?;
        if n > max {
            return Err(ProtoError::TooMany {
                what,
                count: n as u64,
                max: max as u64,
            });
        }
        Ok(n)
    }
}

/// Decodes a frame into a message. Never panics, whatever the input.
pub fn decode(ty: u8, payload: &[u8]) -> Result<Message, ProtoError> {
    if payload.len() > MAX_MESSAGE {
        return Err(ProtoError::TooLarge(payload.len()));
    }
    let mut r = Reader { buf: payload };
    let msg = match ty.checked_sub(FIRST_TYPE) {
        Some(0) => Message::Hello {
            version: r.u16("Hello version")?,
            vm: r.string(MAX_VM_NAME, "Hello vm name")?,
            mem_bytes: r.u64("Hello mem_bytes")?,
            cpu_features: r.u64("Hello cpu_features")?,
            devices: r.strings(MAX_DEVICES, MAX_DEVICE_NAME, "Hello devices")?,
        },
        Some(1) => Message::Ready,
        Some(2) => Message::Refuse {
            reasons: r.strings(MAX_REASONS, MAX_REASON, "Refuse reasons")?,
        },
        Some(3) => {
            let n = r.limited_count(16, MAX_REGIONS, "MemoryLayout regions")?;
            let mut regions = Vec::with_capacity(n);
            for _ in 0..n {
                regions.push((r.u64("region gpa")?, r.u64("region length")?));
            }
            Message::MemoryLayout { regions }
        }
        Some(4) => {
            let round = r.u32("Pages round")?;
            let nruns = r.count(RUN_HEADER_WIRE, "Pages runs")?;
            let mut runs = Vec::with_capacity(nruns);
            for _ in 0..nruns {
                let first_gfn = r.u64("run first gfn")?;
                let n = r.count(ZERO_PAGE_WIRE, "run pages")?;
                if first_gfn.checked_add(n as u64).is_none() {
                    return Err(ProtoError::GfnOverflow {
                        first_gfn,
                        pages: n as u64,
                    });
                }
                let mut pages = Vec::with_capacity(n);
                for _ in 0..n {
                    pages.push(match r.u8("page kind")? {
                        PAGE_ZERO => Page::Zero,
                        PAGE_RAW => {
                            let len = r.u32("raw page length")? as usize;
                            if len != PAGE_SIZE {
                                return Err(ProtoError::BadPageLength(len));
                            }
                            Page::Raw(r.take(PAGE_SIZE, "raw page data")?.to_vec())
                        }
                        k => return Err(ProtoError::BadPageKind(k)),
                    });
                }
                runs.push(PageRun { first_gfn, pages });
            }
            Message::Pages { round, runs }
        }
        Some(5) => Message::RoundEnd {
            round: r.u32("RoundEnd round")?,
            pages_sent: r.u64("RoundEnd pages_sent")?,
            dirty_left: r.u64("RoundEnd dirty_left")?,
        },
        Some(6) => Message::Pause,
        Some(7) => Message::VcpuState(r.bytes("VcpuState data")?.to_vec()),
        Some(8) => Message::DeviceState {
            name: r.string(MAX_DEVICE_NAME, "DeviceState name")?,
            data: r.bytes("DeviceState data")?.to_vec(),
        },
        Some(9) => Message::Commit,
        Some(10) => Message::Committed,
        Some(11) => Message::Abort {
            reason: r.string(MAX_REASON, "Abort reason")?,
        },
        _ => return Err(ProtoError::UnknownType(ty)),
    };
    if !r.buf.is_empty() {
        return Err(ProtoError::TrailingBytes(r.buf.len()));
    }
    Ok(msg)
}

/// Packs pages into `Pages` messages whose payload stays within a byte limit.
///
/// Consecutive frame numbers share one run; a new run starts at every gap.
#[derive(Debug, Clone)]
pub struct PagesBuilder {
    round: u32,
    limit: usize,
    runs: Vec<PageRun>,
    len: usize,
    next_gfn: Option<u64>,
}

impl PagesBuilder {
    /// A builder for `round` whose messages encode to at most [`MAX_MESSAGE`] bytes.
    pub fn new(round: u32) -> PagesBuilder {
        PagesBuilder::with_limit(round, MAX_MESSAGE)
    }

    /// A builder whose messages encode to at most `limit` bytes (capped at [`MAX_MESSAGE`]).
    pub fn with_limit(round: u32, limit: usize) -> PagesBuilder {
        PagesBuilder {
            round,
            limit: limit.min(MAX_MESSAGE),
            runs: Vec::new(),
            len: PAGES_HEADER_WIRE,
            next_gfn: None,
        }
    }

    /// Changes the byte limit for pages added from now on (capped at [`MAX_MESSAGE`]).
    pub fn set_limit(&mut self, limit: usize) {
        self.limit = limit.min(MAX_MESSAGE);
    }

    /// Bytes the pending message would add if `page` for `gfn` were pushed.
    pub fn cost(&self, gfn: u64, page: &Page) -> usize {
        let run = if self.next_gfn == Some(gfn) {
            0
        } else {
            RUN_HEADER_WIRE
        };
        run + page.wire_len()
    }

    /// Adds a page if the pending message stays within the limit; otherwise hands it back.
    pub fn try_push(&mut self, gfn: u64, page: Page) -> Result<(), Page> {
        let cost = self.cost(gfn, &page);
        if self.len + cost > self.limit {
            return Err(page);
        }
        self.len += cost;
        match self.runs.last_mut() {
            Some(run) if self.next_gfn == Some(gfn) => run.pages.push(page),
            _ => self.runs.push(PageRun {
                first_gfn: gfn,
                pages: alloc::vec![page],
            }),
        }
        self.next_gfn = gfn.checked_add(1);
        Ok(())
    }

    /// Whether no page is pending.
    pub fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }

    /// Encoded size of the pending message.
    pub fn encoded_len(&self) -> usize {
        self.len
    }

    /// Takes the pending message, if any page is pending, and starts a new one.
    pub fn take(&mut self) -> Option<Message> {
        if self.runs.is_empty() {
            return None;
        }
        self.len = PAGES_HEADER_WIRE;
        self.next_gfn = None;
        Some(Message::Pages {
            round: self.round,
            runs: core::mem::take(&mut self.runs),
        })
    }
}

/// Splits pages into `Pages` messages that each encode to at most [`MAX_MESSAGE`] bytes.
pub fn pages_messages(round: u32, pages: impl Iterator<Item = (u64, Page)>) -> Vec<Message> {
    let mut out = Vec::new();
    let mut b = PagesBuilder::new(round);
    for (gfn, page) in pages {
        if let Err(page) = b.try_push(gfn, page) {
            out.extend(b.take());
            // A single page always fits an empty message.
            let _ = b.try_push(gfn, page);
        }
    }
    out.extend(b.take());
    out
}

/// CPU features a guest may depend on, as bits of a `u64` mask.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuFeature;

impl CpuFeature {
    /// SSE3.
    pub const SSE3: u64 = 1 << 0;
    /// Supplemental SSE3.
    pub const SSSE3: u64 = 1 << 1;
    /// SSE4.1.
    pub const SSE4_1: u64 = 1 << 2;
    /// SSE4.2.
    pub const SSE4_2: u64 = 1 << 3;
    /// POPCNT.
    pub const POPCNT: u64 = 1 << 4;
    /// AES-NI.
    pub const AES: u64 = 1 << 5;
    /// PCLMULQDQ.
    pub const PCLMULQDQ: u64 = 1 << 6;
    /// AVX.
    pub const AVX: u64 = 1 << 7;
    /// AVX2.
    pub const AVX2: u64 = 1 << 8;
    /// FMA3.
    pub const FMA: u64 = 1 << 9;
    /// BMI1.
    pub const BMI1: u64 = 1 << 10;
    /// BMI2.
    pub const BMI2: u64 = 1 << 11;
    /// RDRAND.
    pub const RDRAND: u64 = 1 << 12;
    /// RDSEED.
    pub const RDSEED: u64 = 1 << 13;
    /// XSAVE.
    pub const XSAVE: u64 = 1 << 14;
    /// Process-context identifiers.
    pub const PCID: u64 = 1 << 15;

    /// Every known feature with its name, in bit order.
    pub const ALL: [(u64, &'static str); 16] = [
        (Self::SSE3, "SSE3"),
        (Self::SSSE3, "SSSE3"),
        (Self::SSE4_1, "SSE4_1"),
        (Self::SSE4_2, "SSE4_2"),
        (Self::POPCNT, "POPCNT"),
        (Self::AES, "AES"),
        (Self::PCLMULQDQ, "PCLMULQDQ"),
        (Self::AVX, "AVX"),
        (Self::AVX2, "AVX2"),
        (Self::FMA, "FMA"),
        (Self::BMI1, "BMI1"),
        (Self::BMI2, "BMI2"),
        (Self::RDRAND, "RDRAND"),
        (Self::RDSEED, "RDSEED"),
        (Self::XSAVE, "XSAVE"),
        (Self::PCID, "PCID"),
    ];

    /// Mask of every known feature bit.
    pub const KNOWN: u64 = (1 << 16) - 1;

    /// The name of a single feature bit, if known.
    pub fn name(bit: u64) -> Option<&'static str> {
        Self::ALL.iter().find(|(b, _)| *b == bit).map(|(_, n)| *n)
    }
}

/// Names of the features the guest sees that the host lacks, in bit order.
///
/// Unknown bits the host lacks are reported once, as `"unknown"`.
pub fn missing_features(guest: u64, host: u64) -> Vec<&'static str> {
    let missing = guest & !host;
    let mut out: Vec<&'static str> = CpuFeature::ALL
        .iter()
        .filter(|(b, _)| missing & b != 0)
        .map(|(_, n)| *n)
        .collect();
    if missing & !CpuFeature::KNOWN != 0 {
        out.push("unknown");
    }
    out
}
