//! The migration wire protocol: messages and their binary encoding.
//!
//! Every message travels as one channel frame `(type, payload)`. Types 0..32 are
//! reserved for other users of the channel; migration uses 32..=44. Payloads are
//! little-endian; strings and vectors carry a `u32` length/count prefix.
//!
//! | type | message        | payload                                                                 |
//! |------|----------------|-------------------------------------------------------------------------|
//! | 32   | `Hello`        | `u16 version, str vm, u64 mem_bytes, profile, u32 n, n × str`           |
//! | 33   | `Ready`        | empty                                                                   |
//! | 34   | `Refuse`       | `u32 n, n × str`                                                        |
//! | 35   | `MemoryLayout` | `u32 n, n × (u64 gpa, u64 len)`                                         |
//! | 36   | `Pages`        | `u32 round, u32 runs, runs × run` (see below)                           |
//! | 37   | `RoundEnd`     | `u32 round, u64 pages_sent, u64 dirty_left`                             |
//! | 38   | `Pause`        | empty                                                                   |
//! | 39   | `VcpuState`    | `u32 len, bytes`                                                        |
//! | 40   | `DeviceState`  | `str name, u32 len, bytes`                                              |
//! | 41   | `Commit`       | empty                                                                   |
//! | 42   | `Committed`    | empty                                                                   |
//! | 43   | `Abort`        | `str reason`                                                            |
//! | 44   | `Probe`        | as `Hello`                                                              |
//!
//! `str` is `u32 len` + UTF-8 bytes. `profile` is the guest's CPU profile
//! in its own wire form ([`vcpu::profile::Profile::encode`]: name,
//! feature names, family/model/stepping, XCR0 mask), bounded by its
//! decoder. A `Hello` or `Probe` whose version is not ours is refused as
//! [`ProtoError::Version`] before the fields after it are read: another
//! version may lay them out differently.
//!
//! A page run is one of
//!
//! | kind | run              | layout                                            | pages              |
//! |------|------------------|---------------------------------------------------|--------------------|
//! | 0    | zero pages       | `u8 0, u64 first_gfn, u32 n` (13 bytes)           | `first_gfn..+n`    |
//! | 1    | raw pages        | `u8 1, u64 first_gfn, u32 n, n × 4096 bytes`      | `first_gfn..+n`    |
//!
//! with `n >= 1` and `first_gfn + n` representable. A message covers at
//! most [`MAX_PAGES_PER_MESSAGE`] pages in all; decoded, its runs stay one
//! buffer of their wire bytes ([`PageRuns`]), so a frame never takes more
//! memory decoded than it did on the wire.
//!
//! Limits, enforced by [`decode`] with a typed error (a field is never cut):
//! VM name [`MAX_VM_NAME`] bytes; [`MAX_DEVICES`] devices of
//! [`MAX_DEVICE_NAME`] bytes (also the `DeviceState` name); [`MAX_REASONS`]
//! reasons of [`MAX_REASON`] bytes (also the `Abort` reason);
//! [`MAX_REGIONS`] regions. [`Message::refuse`] and [`Message::abort`] build
//! messages within them.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use vcpu::profile::{Profile, ProfileError};

/// Version of this protocol; both ends must speak the same one.
///
/// 2: pages travel in runs of zero pages or of raw pages (1 had a marker
/// per page); peer strings and lists are bounded.
/// 3: `Hello` and `Probe` carry the guest's CPU profile
/// ([`vcpu::profile::Profile`], features by name) instead of a 16-bit
/// feature mask, and the vCPU state blob is [`vcpu::state`] version 2.
pub const PROTOCOL_VERSION: u16 = 3;
/// Size of a guest page in bytes.
pub const PAGE_SIZE: usize = 4096;
/// Largest payload of one channel frame.
pub const MAX_MESSAGE: usize = 1 << 20;
/// First frame type used by migration (lower types belong to other protocols).
pub const FIRST_TYPE: u8 = 32;
/// Last frame type used by migration.
pub const LAST_TYPE: u8 = 44;

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

/// Most pages one `Pages` message covers, zero and raw pages together:
/// what one message makes the destination write is bounded, whatever its
/// encoding.
pub const MAX_PAGES_PER_MESSAGE: u32 = 65_536;
/// Fixed bytes of a `Pages` payload (round + run count).
pub const PAGES_HEADER_WIRE: usize = 4 + 4;
/// Bytes of a run's header inside a `Pages` payload (kind, first gfn, page
/// count); a zero run is only this.
pub const RUN_HEADER_WIRE: usize = 1 + 8 + 4;
/// Bytes a raw page adds to its run.
pub const RAW_PAGE_WIRE: usize = PAGE_SIZE;

const RUN_ZERO: u8 = 0;
const RUN_RAW: u8 = 1;

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
    /// A page run's kind is neither zero pages (0) nor raw pages (1).
    #[error("bad page run kind {0} (expected 0 = zero pages or 1 = raw pages)")]
    BadRunKind(u8),
    /// A page run covers no page.
    #[error("page run at gfn {0:#x} covers no page")]
    EmptyRun(u64),
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
    /// The CPU profile in a `Hello` or `Probe` does not decode.
    #[error("{what}: {err}")]
    Profile {
        /// The field being read.
        what: &'static str,
        /// What is wrong with it.
        err: ProfileError,
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

/// One guest page.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Page<'a> {
    /// A page of zeros (sent in a zero run, no data on the wire).
    Zero,
    /// The page contents.
    Raw(&'a [u8; PAGE_SIZE]),
}

impl<'a> Page<'a> {
    /// The wire form of a page: `Zero` if every byte is zero.
    pub fn from_bytes(data: &'a [u8; PAGE_SIZE]) -> Page<'a> {
        if is_zero(data) {
            Page::Zero
        } else {
            Page::Raw(data)
        }
    }

    /// Whether this is a zero page.
    pub fn is_zero(&self) -> bool {
        matches!(self, Page::Zero)
    }

    /// The contents; `None` for a zero page.
    pub fn data(&self) -> Option<&'a [u8; PAGE_SIZE]> {
        match self {
            Page::Zero => None,
            Page::Raw(d) => Some(d),
        }
    }
}

impl fmt::Debug for Page<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Page::Zero => f.write_str("Zero"),
            Page::Raw(d) => write!(f, "Raw({:02x?}..)", &d[..8]),
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

/// Consecutive pages of one kind, as they travel in a `Pages` message.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum PageRun<'a> {
    /// `count` pages of zeros, frames `first_gfn..first_gfn + count`.
    Zero {
        /// Guest frame number of the first page.
        first_gfn: u64,
        /// Pages in the run (at least 1).
        count: u32,
    },
    /// Raw pages from `first_gfn` on: `data` holds 4096 bytes a page.
    Raw {
        /// Guest frame number of the first page.
        first_gfn: u64,
        /// The pages' contents, back to back.
        data: &'a [u8],
    },
}

impl<'a> PageRun<'a> {
    /// Guest frame number of the first page.
    pub fn first_gfn(&self) -> u64 {
        match *self {
            PageRun::Zero { first_gfn, .. } | PageRun::Raw { first_gfn, .. } => first_gfn,
        }
    }

    /// Pages in the run.
    pub fn len(&self) -> u64 {
        match *self {
            PageRun::Zero { count, .. } => u64::from(count),
            PageRun::Raw { data, .. } => (data.len() / PAGE_SIZE) as u64,
        }
    }

    /// Whether the run covers no page (never, for a run of a [`PageRuns`]).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The run's pages with their frame numbers.
    pub fn pages(&self) -> RunPages<'a> {
        RunPages { run: *self, i: 0 }
    }
}

impl fmt::Debug for PageRun<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = if matches!(self, PageRun::Zero { .. }) {
            "Zero"
        } else {
            "Raw"
        };
        write!(f, "{kind}({:#x} +{})", self.first_gfn(), self.len())
    }
}

/// Iterator over a run's `(gfn, page)`, see [`PageRun::pages`].
#[derive(Debug, Clone)]
pub struct RunPages<'a> {
    run: PageRun<'a>,
    i: u64,
}

impl<'a> Iterator for RunPages<'a> {
    type Item = (u64, Page<'a>);

    fn next(&mut self) -> Option<(u64, Page<'a>)> {
        if self.i >= self.run.len() {
            return None;
        }
        let gfn = self.run.first_gfn().checked_add(self.i)?;
        let page = match self.run {
            PageRun::Zero { .. } => Page::Zero,
            PageRun::Raw { data, .. } => {
                let at = usize::try_from(self.i).ok()?.checked_mul(PAGE_SIZE)?;
                Page::Raw(data.get(at..at.checked_add(PAGE_SIZE)?)?.try_into().ok()?)
            }
        };
        self.i += 1;
        Some((gfn, page))
    }
}

/// The runs of a `Pages` message, held as they travel: one buffer no larger
/// than the payload, whatever the runs cover (a 13-byte zero run may stand
/// for 65,536 pages; nothing is expanded per page). Built with
/// [`PageRuns::push`], which merges a page into the previous run when it
/// follows it and has the same kind; checked once by [`decode`], then read
/// through [`PageRuns::runs`] and [`PageRuns::pages`] as slices of the
/// buffer.
///
/// Invariants (whether built or decoded): every run has a kind, at least
/// one page, a last frame number that does not overflow, and for raw runs
/// all its bytes; at most [`MAX_PAGES_PER_MESSAGE`] pages in all.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct PageRuns {
    /// The runs, encoded as on the wire.
    bytes: Vec<u8>,
    runs: u32,
    pages: u32,
    /// Offset of the last run in `bytes` (when `runs > 0`).
    last: usize,
}

impl PageRuns {
    /// No pages.
    pub fn new() -> PageRuns {
        PageRuns::default()
    }

    /// Number of runs.
    pub fn run_count(&self) -> u32 {
        self.runs
    }

    /// Number of pages, zero and raw.
    pub fn page_count(&self) -> u32 {
        self.pages
    }

    /// Whether no page is held.
    pub fn is_empty(&self) -> bool {
        self.pages == 0
    }

    /// Bytes the runs take on the wire, which is also every byte this value
    /// holds on the heap besides its own size.
    pub fn wire_len(&self) -> usize {
        self.bytes.len()
    }

    /// The runs, in order.
    pub fn runs(&self) -> Runs<'_> {
        Runs {
            rest: &self.bytes,
            left: self.runs,
        }
    }

    /// Every `(gfn, page)`, in order.
    pub fn pages(&self) -> impl Iterator<Item = (u64, Page<'_>)> + '_ {
        self.runs().flat_map(|r| r.pages())
    }

    /// Kind, first gfn and count of the run at `at` in `bytes`.
    fn header(&self, at: usize) -> Option<(u8, u64, u32)> {
        let h = self.bytes.get(at..at.checked_add(RUN_HEADER_WIRE)?)?;
        let first = u64::from_le_bytes(h[1..9].try_into().ok()?);
        let count = u32::from_le_bytes(h[9..13].try_into().ok()?);
        Some((h[0], first, count))
    }

    /// Whether a page of `kind` at `gfn` extends the last run.
    fn extends_last(&self, kind: u8, gfn: u64) -> bool {
        self.runs > 0
            && self.header(self.last).is_some_and(|(k, first, count)| {
                k == kind && first.checked_add(u64::from(count)) == Some(gfn)
            })
    }

    fn check_add(&self, first_gfn: u64, count: u32) -> Result<(), ProtoError> {
        if count == 0 {
            return Err(ProtoError::EmptyRun(first_gfn));
        }
        let total = u64::from(self.pages) + u64::from(count);
        if total > u64::from(MAX_PAGES_PER_MESSAGE) {
            return Err(ProtoError::TooMany {
                what: "Pages pages",
                count: total,
                max: MAX_PAGES_PER_MESSAGE.into(),
            });
        }
        if first_gfn.checked_add(u64::from(count)).is_none() {
            return Err(ProtoError::GfnOverflow {
                first_gfn,
                pages: count.into(),
            });
        }
        Ok(())
    }

    /// Wire bytes [`PageRuns::push`] would add for `page` at `gfn`: 0 when
    /// it extends a zero run. `None` if it cannot be added (the message
    /// already covers [`MAX_PAGES_PER_MESSAGE`] pages, or `gfn` is the last
    /// representable frame).
    pub fn cost(&self, gfn: u64, page: &Page<'_>) -> Option<usize> {
        self.check_add(gfn, 1).ok()?;
        let (kind, data) = match page {
            Page::Zero => (RUN_ZERO, 0),
            Page::Raw(_) => (RUN_RAW, RAW_PAGE_WIRE),
        };
        let header = if self.extends_last(kind, gfn) {
            0
        } else {
            RUN_HEADER_WIRE
        };
        Some(header + data)
    }

    /// Appends `page` at `gfn`, in the last run if it follows it with the
    /// same kind. Fails as [`decode`] would on the result.
    pub fn push(&mut self, gfn: u64, page: Page<'_>) -> Result<(), ProtoError> {
        self.append(gfn, 1, page)
    }

    /// Appends `count` zero pages from `first_gfn`, in the last run if it is
    /// a zero run they follow.
    pub fn push_zeros(&mut self, first_gfn: u64, count: u32) -> Result<(), ProtoError> {
        self.append(first_gfn, count, Page::Zero)
    }

    fn append(&mut self, gfn: u64, count: u32, page: Page<'_>) -> Result<(), ProtoError> {
        self.check_add(gfn, count)?;
        let kind = if page.is_zero() { RUN_ZERO } else { RUN_RAW };
        if self.extends_last(kind, gfn) {
            let at = self.last + 9;
            if let Some((_, _, n)) = self.header(self.last)
                && let Some(c) = self.bytes.get_mut(at..at + 4)
            {
                c.copy_from_slice(&(n + count).to_le_bytes());
            }
        } else {
            self.last = self.bytes.len();
            self.bytes.push(kind);
            self.bytes.extend_from_slice(&gfn.to_le_bytes());
            self.bytes.extend_from_slice(&count.to_le_bytes());
            self.runs += 1;
        }
        if let Page::Raw(d) = page {
            self.bytes.extend_from_slice(d);
        }
        self.pages += count;
        Ok(())
    }

    /// Reads the runs of a `Pages` payload, checking every invariant, into
    /// one copy of their bytes.
    fn read(r: &mut Reader<'_>) -> Result<PageRuns, ProtoError> {
        let n = r.count(RUN_HEADER_WIRE, "Pages runs")?;
        let start = r.buf;
        let mut runs = PageRuns::new();
        for _ in 0..n {
            let at = start.len() - r.buf.len();
            let kind = r.u8("run kind")?;
            let first_gfn = r.u64("run first gfn")?;
            let count = r.u32("run page count")?;
            runs.check_add(first_gfn, count)?;
            match kind {
                RUN_ZERO => {}
                // count <= MAX_PAGES_PER_MESSAGE: no overflow.
                RUN_RAW => {
                    r.take(count as usize * PAGE_SIZE, "raw page data")?;
                }
                k => return Err(ProtoError::BadRunKind(k)),
            }
            runs.pages += count;
            runs.runs += 1;
            runs.last = at;
        }
        let used = start.len() - r.buf.len();
        runs.bytes = start[..used].to_vec();
        Ok(runs)
    }
}

impl fmt::Debug for PageRuns {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const SHOWN: usize = 8;
        write!(f, "PageRuns({} pages in {} runs: ", self.pages, self.runs)?;
        f.debug_list().entries(self.runs().take(SHOWN)).finish()?;
        if self.runs as usize > SHOWN {
            f.write_str("..")?;
        }
        f.write_str(")")
    }
}

/// Iterator over the runs of a [`PageRuns`].
#[derive(Debug, Clone)]
pub struct Runs<'a> {
    rest: &'a [u8],
    left: u32,
}

impl<'a> Iterator for Runs<'a> {
    type Item = PageRun<'a>;

    fn next(&mut self) -> Option<PageRun<'a>> {
        if self.left == 0 {
            return None;
        }
        let mut r = Reader { buf: self.rest };
        let kind = r.u8("").ok()?;
        let first_gfn = r.u64("").ok()?;
        let count = r.u32("").ok()?;
        let run = match kind {
            RUN_ZERO => PageRun::Zero { first_gfn, count },
            _ => PageRun::Raw {
                first_gfn,
                data: r.take((count as usize).checked_mul(PAGE_SIZE)?, "").ok()?,
            },
        };
        self.rest = r.buf;
        self.left -= 1;
        Some(run)
    }
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
        /// The guest's CPU profile: what it sees of the CPU.
        profile: Profile,
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
        /// Runs of zero pages and of raw pages.
        runs: PageRuns,
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
    /// Source → destination, instead of `Hello`: could this guest move
    /// here? Answered `Ready` or `Refuse` (every blocker), reserving
    /// nothing; the destination then closes. Same fields as `Hello`.
    Probe {
        /// Protocol version of the source.
        version: u16,
        /// VM name.
        vm: String,
        /// Guest RAM in bytes.
        mem_bytes: u64,
        /// The guest's CPU profile: what it sees of the CPU.
        profile: Profile,
        /// Device models the guest uses, by name.
        devices: Vec<String>,
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
                Message::Probe { .. } => 12,
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
            Message::Probe { .. } => "Probe",
        }
    }
}

fn str_len(s: &str) -> usize {
    4 + s.len()
}

/// Size in bytes of the payload [`encode`] produces for `msg`, without encoding it.
pub fn encoded_len(msg: &Message) -> usize {
    match msg {
        Message::Hello {
            vm,
            profile,
            devices,
            ..
        }
        | Message::Probe {
            vm,
            profile,
            devices,
            ..
        } => {
            2 + str_len(vm)
                + 8
                + profile.wire_len()
                + 4
                + devices.iter().map(|d| str_len(d)).sum::<usize>()
        }
        Message::Ready | Message::Pause | Message::Commit | Message::Committed => 0,
        Message::Refuse { reasons } => 4 + reasons.iter().map(|r| str_len(r)).sum::<usize>(),
        Message::MemoryLayout { regions } => 4 + 16 * regions.len(),
        Message::Pages { runs, .. } => PAGES_HEADER_WIRE + runs.wire_len(),
        Message::RoundEnd { .. } => 4 + 8 + 8,
        Message::VcpuState(d) => 4 + d.len(),
        Message::DeviceState { name, data } => str_len(name) + 4 + data.len(),
        Message::Abort { reason } => str_len(reason),
    }
}

struct Writer(Vec<u8>);

impl Writer {
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
            profile,
            devices,
        }
        | Message::Probe {
            version,
            vm,
            mem_bytes,
            profile,
            devices,
        } => {
            w.u16(*version);
            w.str(vm);
            w.u64(*mem_bytes);
            profile.encode(&mut w.0);
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
            w.u32(runs.runs);
            w.0.extend_from_slice(&runs.bytes);
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
    /// A protocol version, which must be ours: what follows it is laid
    /// out by that version.
    fn version(&mut self, what: &'static str) -> Result<u16, ProtoError> {
        let v = self.u16(what)?;
        check_version(v)?;
        Ok(v)
    }
    /// A CPU profile in its own wire form (bounded by its decoder).
    fn profile(&mut self, what: &'static str) -> Result<Profile, ProtoError> {
        let (p, used) =
            Profile::decode(self.buf).map_err(|err| ProtoError::Profile { what, err })?;
        self.take(used, what)?;
        Ok(p)
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
            version: r.version("Hello version")?,
            vm: r.string(MAX_VM_NAME, "Hello vm name")?,
            mem_bytes: r.u64("Hello mem_bytes")?,
            profile: r.profile("Hello CPU profile")?,
            devices: r.strings(MAX_DEVICES, MAX_DEVICE_NAME, "Hello devices")?,
        },
        Some(12) => Message::Probe {
            version: r.version("Probe version")?,
            vm: r.string(MAX_VM_NAME, "Probe vm name")?,
            mem_bytes: r.u64("Probe mem_bytes")?,
            profile: r.profile("Probe CPU profile")?,
            devices: r.strings(MAX_DEVICES, MAX_DEVICE_NAME, "Probe devices")?,
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
        Some(4) => Message::Pages {
            round: r.u32("Pages round")?,
            runs: PageRuns::read(&mut r)?,
        },
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

/// Packs pages into `Pages` messages whose payload stays within a byte limit
/// and [`MAX_PAGES_PER_MESSAGE`] pages.
///
/// Consecutive frames of the same kind share one run: a stretch of zero
/// pages costs one 13-byte run header, however long.
#[derive(Debug, Clone)]
pub struct PagesBuilder {
    round: u32,
    limit: usize,
    runs: PageRuns,
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
            runs: PageRuns::new(),
        }
    }

    /// Changes the byte limit for pages added from now on (capped at [`MAX_MESSAGE`]).
    pub fn set_limit(&mut self, limit: usize) {
        self.limit = limit.min(MAX_MESSAGE);
    }

    /// Bytes the pending message would add if `page` for `gfn` were pushed;
    /// `None` if the message cannot take it whatever the limit.
    pub fn cost(&self, gfn: u64, page: &Page<'_>) -> Option<usize> {
        self.runs.cost(gfn, page)
    }

    /// Adds a page if the pending message stays within the limits; otherwise hands it back.
    pub fn try_push<'a>(&mut self, gfn: u64, page: Page<'a>) -> Result<(), Page<'a>> {
        match self.cost(gfn, &page) {
            Some(cost) if self.encoded_len() + cost <= self.limit => {
                self.runs.push(gfn, page).map_err(|_| page)
            }
            _ => Err(page),
        }
    }

    /// Whether no page is pending.
    pub fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }

    /// Encoded size of the pending message.
    pub fn encoded_len(&self) -> usize {
        PAGES_HEADER_WIRE + self.runs.wire_len()
    }

    /// Takes the pending message, if any page is pending, and starts a new one.
    pub fn take(&mut self) -> Option<Message> {
        if self.runs.is_empty() {
            return None;
        }
        Some(Message::Pages {
            round: self.round,
            runs: core::mem::take(&mut self.runs),
        })
    }
}

/// Splits pages into `Pages` messages that each encode to at most
/// [`MAX_MESSAGE`] bytes and cover at most [`MAX_PAGES_PER_MESSAGE`] pages.
pub fn pages_messages<'a>(
    round: u32,
    pages: impl Iterator<Item = (u64, Page<'a>)>,
) -> Vec<Message> {
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
