//! The source side of a migration: a sans-IO state machine driven by the kernel.
//!
//! The kernel calls [`Source::poll`] regularly, always while the guest is not
//! running (between run slices), and hands every incoming message to
//! [`Source::on_message`]. It carries out the returned [`Action`]s in order.

use alloc::collections::VecDeque;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;

use crate::GuestMemory;
use crate::names;
use crate::proto::{
    self, MAX_MESSAGE, Message, PAGE_SIZE, PROTOCOL_VERSION, Page, PagesBuilder, ProtoError,
};

/// Most `Send` actions one call to [`Source::poll`] produces.
pub const MAX_SENDS_PER_POLL: usize = 16;
/// Most pages one [`Source::poll`] reads: zero pages cost the link almost
/// nothing, so without a cap one poll could scan all of RAM while the
/// guest waits for its next turn (1 MiB of reads per turn).
pub const MAX_PAGES_PER_POLL: u64 = 256;
/// Highest auto-converge level.
pub const MAX_SLOW_LEVEL: u8 = 4;
/// Bytes assumed to follow the final pages in the downtime estimate: the
/// `VcpuState`, `DeviceState` and `Commit` messages. Their real size is only
/// known once the guest is paused; a few KiB in practice.
pub const STATE_ESTIMATE_BYTES: u64 = 8 * 1024;

/// µs to move `bytes` at `bw` bytes/s: 0 without a measurement (`None`) or
/// without bytes, `u64::MAX` at zero bandwidth.
fn transfer_us(bytes: u128, bw: Option<u64>) -> u64 {
    match bw {
        None => 0,
        _ if bytes == 0 => 0,
        Some(0) => u64::MAX,
        Some(bw) => (bytes * 1_000_000 / bw as u128).min(u64::MAX as u128) as u64,
    }
}

/// Estimated downtime in µs (from `PauseGuest` to `Committed`) if the guest
/// were paused now:
///
/// ```text
/// (dirty_pages * PAGE_SIZE + in_flight_bytes + STATE_ESTIMATE_BYTES) / bandwidth + rtt_us
/// ```
///
/// - `dirty_pages * PAGE_SIZE`: the final round resends every dirty page
///   (counted as full pages, although zero pages go out without data).
/// - `in_flight_bytes`: bytes already handed out but not on the wire yet
///   (channel queue, the caller's backlog); they leave before the final pages.
/// - [`STATE_ESTIMATE_BYTES`]: vCPU and device state plus `Commit`.
/// - `bandwidth` (bytes/s): as measured so far. `None` (nothing measurable
///   yet) leaves the byte terms out, as the estimate always did; `Some(0)`
///   gives `u64::MAX`.
/// - `rtt_us`: `Commit` → `Committed` round trip including the destination's
///   restore; 0 if unknown.
///
/// Saturates at `u64::MAX`.
pub fn estimate_downtime_us(
    dirty_pages: u64,
    in_flight_bytes: u64,
    bandwidth: Option<u64>,
    rtt_us: u64,
) -> u64 {
    let bytes = dirty_pages as u128 * PAGE_SIZE as u128
        + in_flight_bytes as u128
        + STATE_ESTIMATE_BYTES as u128;
    transfer_us(bytes, bandwidth).saturating_add(rtt_us)
}

/// Bounds of the caller's send window (unacknowledged bytes), see
/// [`send_window`].
pub const MIN_WINDOW: usize = 64 * 1024;
/// See [`MIN_WINDOW`].
pub const MAX_WINDOW: usize = 640 * 1024;

/// Unacknowledged bytes a source should allow itself (the `room` it passes
/// to [`Source::poll`] is at most this minus what is unacknowledged): what
/// the measured link moves in half the downtime budget, within
/// [`MIN_WINDOW`]..=[`MAX_WINDOW`], because everything queued when the
/// guest pauses has to cross before it runs again. Before any measurement,
/// half of [`MAX_WINDOW`].
pub fn send_window(bandwidth: Option<u64>, downtime_budget_us: u64) -> usize {
    match bandwidth {
        Some(bw) => {
            let w = (bw as u128 * downtime_budget_us as u128 / 2_000_000).min(MAX_WINDOW as u128);
            (w as usize).max(MIN_WINDOW)
        }
        None => MAX_WINDOW / 2,
    }
}

/// The VM being migrated, as announced in `Hello`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmDescription {
    /// VM name.
    pub vm: String,
    /// Guest RAM in bytes.
    pub mem_bytes: u64,
    /// The guest's CPU profile (the destination must offer all of it).
    pub profile: vcpu::profile::Profile,
    /// Names of the guest's device models.
    pub devices: Vec<String>,
}

impl VmDescription {
    /// Whether the description fits the protocol: a valid VM name, at most
    /// [`proto::MAX_DEVICES`] devices of at most [`proto::MAX_DEVICE_NAME`]
    /// bytes each (a destination cannot decode a `Hello` beyond these).
    pub fn check(&self) -> Result<(), String> {
        names::check_vm_name(&self.vm).map_err(|e| e.to_string())?;
        if self.devices.len() > proto::MAX_DEVICES {
            return Err(format!(
                "{} devices, more than the {} a migration can describe",
                self.devices.len(),
                proto::MAX_DEVICES
            ));
        }
        if let Some(d) = self
            .devices
            .iter()
            .find(|d| d.len() > proto::MAX_DEVICE_NAME)
        {
            return Err(format!(
                "device name '{}' is longer than {} bytes",
                names::printable(d, names::SHOWN_CHARS),
                proto::MAX_DEVICE_NAME
            ));
        }
        Ok(())
    }

    /// The `Hello` message announcing this VM with [`PROTOCOL_VERSION`].
    pub fn hello(&self) -> Message {
        Message::Hello {
            version: PROTOCOL_VERSION,
            vm: self.vm.clone(),
            mem_bytes: self.mem_bytes,
            profile: self.profile.clone(),
            devices: self.devices.clone(),
        }
    }

    /// The `Probe` message asking whether this VM could move (same fields as [`VmDescription::hello`]).
    pub fn probe(&self) -> Message {
        Message::Probe {
            version: PROTOCOL_VERSION,
            vm: self.vm.clone(),
            mem_bytes: self.mem_bytes,
            profile: self.profile.clone(),
            devices: self.devices.clone(),
        }
    }
}

/// What to do when pre-copy does not converge within `max_rounds`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoConvergence {
    /// Abandon the migration; the guest keeps running on the source.
    Abort,
    /// Pause the guest anyway and accept a longer downtime.
    Force,
}

/// Migration tuning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Longest acceptable pause, in µs (default 300 ms).
    pub downtime_budget_us: u64,
    /// Cap on bytes handed to the channel per second (`None`: unlimited).
    pub bandwidth_limit: Option<u64>,
    /// Pre-copy rounds before giving up or forcing (default 30).
    pub max_rounds: u32,
    /// What to do past `max_rounds`.
    pub on_no_convergence: NoConvergence,
    /// Rounds without the dirty set shrinking before slowing the guest
    /// (default 3; 0 disables auto-converge); once slowed, every further
    /// round that does not shrink steps one more level. "Shrinking" means at
    /// least 1/16 fewer dirty pages than the best round so far.
    pub auto_converge_after: u32,
}

impl Default for Policy {
    fn default() -> Policy {
        Policy {
            downtime_budget_us: 300_000,
            bandwidth_limit: None,
            max_rounds: 30,
            on_no_convergence: NoConvergence::Abort,
            auto_converge_after: 3,
        }
    }
}

/// Statistics of one finished round.
#[derive(Debug, Clone, PartialEq)]
pub struct RoundReport {
    /// Round number (0 = full copy; the last one is the final, paused round).
    pub round: u32,
    /// Pages sent in the round, zero pages included.
    pub pages_sent: u64,
    /// Of which zero pages (sent in zero runs, without data).
    pub zero_pages: u64,
    /// Pages dirtied during the round, to send next.
    pub dirty_left: u64,
    /// Message bytes handed out during the round.
    pub bytes: u64,
    /// Measured bandwidth, MiB/s (0 if not measurable yet).
    pub mib_per_s: f64,
    /// Estimated downtime if the guest were paused now, µs (see
    /// [`estimate_downtime_us`]).
    pub est_downtime_us: u64,
    /// Classic lower bound of that downtime: the dirty pages' bytes over the
    /// measured bandwidth only, µs (0 if not measurable yet).
    pub lower_bound_us: u64,
}

/// Outcome of a successful migration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Time from [`Source::new`] to `Committed`, µs.
    pub total_us: u64,
    /// Time from `PauseGuest` to `Committed`, µs.
    pub downtime_us: u64,
    /// Rounds, the final one included.
    pub rounds: u32,
    /// Message bytes handed out.
    pub bytes: u64,
    /// Zero pages sent (in zero runs, without data).
    pub zero_pages: u64,
    /// Pages sent, zero pages included.
    pub pages_sent: u64,
    /// Bytes of the pages sent in the final, paused round (pages × 4096, zero
    /// pages included).
    pub last_round_dirty_bytes: u64,
    /// `last_round_dirty_bytes` over the bandwidth measured across the whole
    /// migration (from `MemoryLayout` to `Committed`), µs: the classic
    /// downtime lower bound, to compare with `downtime_us`.
    pub lower_bound_us: u64,
}

/// What the kernel must do, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Give this message to the channel.
    Send(Message),
    /// Auto-converge level 1..=4: shorten the guest's run slices.
    SlowGuest(u8),
    /// Stop running the guest now, then call `poll` again.
    PauseGuest,
    /// The guest is paused: call [`Source::provide_state`].
    NeedState,
    /// One per finished round.
    Progress(RoundReport),
    /// The destination committed: free the VM.
    Done(Summary),
    /// Aborted: the guest resumes on the source (resume it if paused, undo any slowing).
    Failed(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Hello,
    AwaitReady,
    Layout,
    Round,
    Pausing,
    Final,
    AwaitState,
    SendState,
    AwaitCommitted,
    Done,
    Failed,
}

/// Pages still to send in the current round.
#[derive(Debug)]
enum Work {
    /// Every page of the layout, from region `region`, frame `next`.
    Layout { region: usize, next: u64 },
    /// Dirty frames, sorted, from index `idx`.
    List { gfns: Vec<u64>, idx: usize },
}

/// Per-poll sending allowance.
struct Budget {
    room: usize,
    sends: usize,
}

/// The source engine.
#[derive(Debug)]
pub struct Source {
    desc: VmDescription,
    regions: Vec<(u64, u64)>,
    /// Layout in frames: `(first_gfn, pages)`.
    layout: Vec<(u64, u64)>,
    layout_error: Option<String>,
    policy: Policy,
    phase: Phase,
    start_us: u64,
    round: u32,
    work: Work,
    builder: PagesBuilder,
    outbox: VecDeque<Message>,
    page_buf: Vec<u8>,
    round_pages: u64,
    round_zero: u64,
    round_bytes: u64,
    total_bytes: u64,
    total_pages: u64,
    total_zero: u64,
    bw_start_us: Option<u64>,
    bw_bytes: u64,
    credit: i64,
    credit_at: u64,
    best_dirty: Option<u64>,
    stalled: u32,
    slow_level: u8,
    pause_us: Option<u64>,
    pending_dirty: Vec<u64>,
    state_error: Option<String>,
    rounds_done: u32,
    /// Bytes in flight as last told by [`Source::set_in_flight`] (`None`: never told).
    in_flight: Option<u64>,
    /// Bytes handed out during the current `poll`.
    poll_bytes: u64,
    /// Pages read during the current `poll`.
    poll_pages: u64,
    /// Whether a round ended during the current `poll`.
    round_ended_in_poll: bool,
    hello_sent_us: Option<u64>,
    rtt_us: Option<u64>,
    final_pages: u64,
}

fn validate_layout(regions: &[(u64, u64)]) -> Result<Vec<(u64, u64)>, String> {
    if regions.len() > proto::MAX_REGIONS {
        return Err(format!(
            "{} regions, more than the {} a MemoryLayout holds",
            regions.len(),
            proto::MAX_REGIONS
        ));
    }
    let page = PAGE_SIZE as u64;
    let mut out = Vec::with_capacity(regions.len());
    let mut end = 0u64;
    for (i, &(gpa, len)) in regions.iter().enumerate() {
        if gpa % page != 0 || len % page != 0 || len == 0 {
            return Err(format!(
                "memory region {i} ({gpa:#x}, {len:#x} bytes) is empty or not page-aligned"
            ));
        }
        let Some(region_end) = gpa.checked_add(len) else {
            return Err(format!("memory region {i} at {gpa:#x} overflows"));
        };
        if i > 0 && gpa < end {
            return Err(format!(
                "memory region {i} at {gpa:#x} overlaps or precedes the previous one (ends at {end:#x})"
            ));
        }
        end = region_end;
        out.push((gpa / page, len / page));
    }
    Ok(out)
}

impl Source {
    /// Starts a migration of `desc` with RAM `layout` (`(gpa, len)` regions,
    /// page-aligned, ascending, disjoint). An invalid layout fails at the first poll.
    pub fn new(
        desc: VmDescription,
        layout: Vec<(u64, u64)>,
        policy: Policy,
        now_us: u64,
    ) -> Source {
        let (gfns, layout_error) = match validate_layout(&layout) {
            Ok(l) => (l, None),
            Err(e) => (Vec::new(), Some(e)),
        };
        let credit = 1;
        Source {
            desc,
            regions: layout,
            layout: gfns,
            layout_error,
            policy,
            phase: Phase::Hello,
            start_us: now_us,
            round: 0,
            work: Work::Layout { region: 0, next: 0 },
            builder: PagesBuilder::new(0),
            outbox: VecDeque::new(),
            page_buf: vec![0u8; PAGE_SIZE],
            round_pages: 0,
            round_zero: 0,
            round_bytes: 0,
            total_bytes: 0,
            total_pages: 0,
            total_zero: 0,
            bw_start_us: None,
            bw_bytes: 0,
            credit,
            credit_at: now_us,
            best_dirty: None,
            stalled: 0,
            slow_level: 0,
            pause_us: None,
            pending_dirty: Vec::new(),
            state_error: None,
            rounds_done: 0,
            in_flight: None,
            poll_bytes: 0,
            poll_pages: 0,
            round_ended_in_poll: false,
            hello_sent_us: None,
            rtt_us: None,
            final_pages: 0,
        }
    }

    /// The current round.
    pub fn round(&self) -> u32 {
        self.round
    }

    /// The current auto-converge level (0 = full speed).
    pub fn slow_level(&self) -> u8 {
        self.slow_level
    }

    /// Tells the engine how many bytes are in flight before a [`Source::poll`]:
    /// handed out but not yet sent, i.e. the channel's send queue plus any
    /// messages the caller holds in its own backlog. The value stands until
    /// the next call; the engine adds the bytes it hands out during each poll
    /// itself. Used in the downtime estimate; a caller that never calls this
    /// leaves that term out (0).
    pub fn set_in_flight(&mut self, bytes: u64) {
        self.in_flight = Some(bytes);
    }

    /// Round trip in µs, measured from handing out `Hello` to receiving
    /// `Ready` (so including the destination's set-up); the minimum over the
    /// samples taken. `None` before `Ready`.
    pub fn rtt_us(&self) -> Option<u64> {
        self.rtt_us
    }

    /// Bytes in flight for the downtime estimate: as last told, plus what
    /// this poll handed out since.
    fn in_flight_now(&self) -> u64 {
        self.in_flight
            .map_or(0, |q| q.saturating_add(self.poll_bytes))
    }

    /// Whether the migration ended (done or failed).
    pub fn is_finished(&self) -> bool {
        matches!(self.phase, Phase::Done | Phase::Failed)
    }

    /// Whether the engine asked for the guest to be paused and has not finished.
    pub fn is_paused(&self) -> bool {
        self.pause_us.is_some() && !self.is_finished()
    }

    fn in_layout(&self, gfn: u64) -> bool {
        let i = self.layout.partition_point(|&(first, _)| first <= gfn);
        i > 0 && {
            let (first, n) = self.layout[i - 1];
            gfn - first < n
        }
    }

    fn fail(&mut self, reason: String, send_abort: bool) -> Vec<Action> {
        log::warn!("migration of {} failed: {reason}", self.desc.vm);
        self.phase = Phase::Failed;
        let mut acts = Vec::new();
        if send_abort {
            acts.push(Action::Send(Message::abort(reason.clone())));
        }
        acts.push(Action::Failed(reason));
        acts
    }

    fn fits(&self, b: &Budget, len: usize) -> bool {
        b.sends < MAX_SENDS_PER_POLL && len <= b.room && self.credit_ok()
    }

    /// Most bandwidth credit that can accumulate: 100 ms worth, between two
    /// raw pages and one full message.
    fn credit_cap(limit: u64) -> i64 {
        (limit / 10).clamp(
            2 * (proto::PAGES_HEADER_WIRE + proto::RUN_HEADER_WIRE + proto::RAW_PAGE_WIRE) as u64,
            MAX_MESSAGE as u64,
        ) as i64
    }

    /// Bytes of page data the bandwidth limit allows now.
    fn page_allowance(&self, room: usize) -> usize {
        match self.policy.bandwidth_limit {
            None => room,
            Some(_) => room.min(self.credit.max(0) as usize),
        }
    }

    fn credit_ok(&self) -> bool {
        self.policy.bandwidth_limit.is_none() || self.credit > 0
    }

    fn send(&mut self, b: &mut Budget, acts: &mut Vec<Action>, msg: Message) {
        let len = proto::encoded_len(&msg);
        b.room = b.room.saturating_sub(len);
        b.sends += 1;
        self.credit = self.credit.saturating_sub(len as i64);
        self.total_bytes += len as u64;
        self.round_bytes += len as u64;
        self.poll_bytes += len as u64;
        if self.bw_start_us.is_some() {
            self.bw_bytes += len as u64;
        }
        acts.push(Action::Send(msg));
    }

    /// Measured bandwidth in bytes/s since round 0 started; `None` if no time
    /// passed. The caller may size its send window from it.
    pub fn bandwidth(&self, now_us: u64) -> Option<u64> {
        let start = self.bw_start_us?;
        let dt = now_us.saturating_sub(start);
        if dt == 0 {
            return None;
        }
        Some(((self.bw_bytes as u128 * 1_000_000) / dt as u128).min(u64::MAX as u128) as u64)
    }

    fn collect_dirty(&self, mem: &mut dyn GuestMemory) -> Vec<u64> {
        let mut v = Vec::new();
        mem.take_dirty(&mut |gfn| v.push(gfn));
        v.sort_unstable();
        v.dedup();
        v.retain(|&g| self.in_layout(g));
        v
    }

    fn next_gfn(&mut self) -> Option<u64> {
        match &mut self.work {
            Work::Layout { region, next } => loop {
                let &(first, n) = self.layout.get(*region)?;
                if *next < first {
                    *next = first;
                }
                if *next < first + n {
                    return Some(*next);
                }
                *region += 1;
            },
            Work::List { gfns, idx } => gfns.get(*idx).copied(),
        }
    }

    fn advance(&mut self) {
        match &mut self.work {
            Work::Layout { next, .. } => *next += 1,
            Work::List { idx, .. } => *idx += 1,
        }
    }

    /// Sends pending pages of the builder if they fit.
    fn flush_builder(&mut self, b: &mut Budget, acts: &mut Vec<Action>) -> bool {
        if self.builder.is_empty() {
            return true;
        }
        if b.sends < MAX_SENDS_PER_POLL && self.builder.encoded_len() <= self.page_allowance(b.room)
        {
            if let Some(m) = self.builder.take() {
                self.send(b, acts, m);
            }
            return true;
        }
        false
    }

    /// Sends pages of the current round; true once every page was handed out.
    fn pump_pages(
        &mut self,
        mem: &dyn GuestMemory,
        b: &mut Budget,
        acts: &mut Vec<Action>,
    ) -> bool {
        loop {
            if b.sends + 1 >= MAX_SENDS_PER_POLL
                || !self.credit_ok()
                || self.poll_pages >= MAX_PAGES_PER_POLL
            {
                self.flush_builder(b, acts);
                return false;
            }
            let Some(gfn) = self.next_gfn() else {
                return self.flush_builder(b, acts);
            };
            self.poll_pages += 1;
            self.builder.set_limit(self.page_allowance(b.room));
            let buf: &mut [u8; PAGE_SIZE] = match self.page_buf.as_mut_slice().try_into() {
                Ok(buf) => buf,
                Err(_) => return false,
            };
            mem.read_page(gfn, buf);
            let page = Page::from_bytes(buf);
            let zero = page.is_zero();
            match self.builder.try_push(gfn, page) {
                Ok(()) => {
                    self.advance();
                    self.round_pages += 1;
                    self.total_pages += 1;
                    if zero {
                        self.round_zero += 1;
                        self.total_zero += 1;
                    }
                }
                Err(_) => {
                    if self.builder.is_empty() || !self.flush_builder(b, acts) {
                        return false;
                    }
                }
            }
        }
    }

    /// Ends the current round once its pages are out. Returns false if blocked.
    fn end_round(
        &mut self,
        mem: &mut dyn GuestMemory,
        now_us: u64,
        b: &mut Budget,
        acts: &mut Vec<Action>,
    ) -> bool {
        let end_len = proto::encoded_len(&Message::RoundEnd {
            round: 0,
            pages_sent: 0,
            dirty_left: 0,
        });
        if !self.fits(b, end_len) {
            return false;
        }
        let is_final = self.phase == Phase::Final;
        let dirty = if is_final {
            Vec::new()
        } else {
            self.collect_dirty(mem)
        };
        let n_dirty = dirty.len() as u64;
        let msg = Message::RoundEnd {
            round: self.round,
            pages_sent: self.round_pages,
            dirty_left: n_dirty,
        };
        self.send(b, acts, msg);
        let bw = self.bandwidth(now_us);
        let est = estimate_downtime_us(n_dirty, self.in_flight_now(), bw, self.rtt_us.unwrap_or(0));
        let lower_bound_us = transfer_us(n_dirty as u128 * PAGE_SIZE as u128, bw);
        acts.push(Action::Progress(RoundReport {
            round: self.round,
            pages_sent: self.round_pages,
            zero_pages: self.round_zero,
            dirty_left: n_dirty,
            bytes: self.round_bytes,
            mib_per_s: bw.map_or(0.0, |bw| bw as f64 / (1024.0 * 1024.0)),
            est_downtime_us: est,
            lower_bound_us,
        }));
        self.rounds_done += 1;
        self.round_ended_in_poll = true;
        log::info!(
            "migration {}: round {} sent {} pages ({} zero), {} dirty left, est. downtime {} us (lower bound {} us)",
            self.desc.vm,
            self.round,
            self.round_pages,
            self.round_zero,
            n_dirty,
            est,
            lower_bound_us
        );
        if is_final {
            self.final_pages = self.round_pages;
        }
        self.round_pages = 0;
        self.round_zero = 0;
        self.round_bytes = 0;
        if is_final {
            acts.push(Action::NeedState);
            self.phase = Phase::AwaitState;
            return true;
        }
        let converged = est <= self.policy.downtime_budget_us;
        let out_of_rounds = self.round.saturating_add(1) >= self.policy.max_rounds;
        if converged || (out_of_rounds && self.policy.on_no_convergence == NoConvergence::Force) {
            self.pending_dirty = dirty;
            self.pause_us = Some(now_us);
            self.phase = Phase::Pausing;
            acts.push(Action::PauseGuest);
            return true;
        }
        if out_of_rounds {
            let reason = format!(
                "no convergence after {} rounds: {} dirty pages left, estimated downtime {} ms exceeds the {} ms budget",
                self.round + 1,
                n_dirty,
                est / 1000,
                self.policy.downtime_budget_us / 1000
            );
            acts.extend(self.fail(reason, true));
            return true;
        }
        // Auto-converge: slow the guest when the dirty set stops shrinking.
        match self.best_dirty {
            Some(best) if n_dirty >= best - best / 16 => self.stalled += 1,
            _ => self.stalled = 0,
        }
        self.best_dirty = Some(self.best_dirty.map_or(n_dirty, |b| b.min(n_dirty)));
        // Once slowing has begun, each further round that does not shrink
        // steps again (rounds on a slow link last long: waiting three more
        // per level cost minutes).
        let needed = if self.slow_level > 0 {
            1
        } else {
            self.policy.auto_converge_after
        };
        if self.policy.auto_converge_after > 0
            && self.stalled >= needed
            && self.slow_level < MAX_SLOW_LEVEL
        {
            self.slow_level += 1;
            self.stalled = 0;
            acts.push(Action::SlowGuest(self.slow_level));
        }
        self.start_round(dirty);
        true
    }

    fn start_round(&mut self, gfns: Vec<u64>) {
        self.round += 1;
        self.work = Work::List { gfns, idx: 0 };
        self.builder = PagesBuilder::new(self.round);
    }

    /// Advances the migration. `room`: how many more message bytes the channel
    /// takes now (payload bytes; never exceeded). Must be called while the guest
    /// is not running. Returns actions in order.
    pub fn poll(&mut self, mem: &mut dyn GuestMemory, room: usize, now_us: u64) -> Vec<Action> {
        let mut acts = Vec::new();
        if self.is_finished() {
            return acts;
        }
        self.poll_bytes = 0;
        self.poll_pages = 0;
        self.round_ended_in_poll = false;
        if let Some(limit) = self.policy.bandwidth_limit {
            let dt = now_us.saturating_sub(self.credit_at) as u128;
            let add = (limit as u128 * dt / 1_000_000).min(i64::MAX as u128) as i64;
            let cap = Self::credit_cap(limit);
            self.credit = self.credit.saturating_add(add).min(cap);
            self.credit_at = now_us;
        }
        let mut b = Budget { room, sends: 0 };
        loop {
            while let Some(msg) = self.outbox.front() {
                let len = proto::encoded_len(msg);
                if !self.fits(&b, len) {
                    return acts;
                }
                if let Some(msg) = self.outbox.pop_front() {
                    if matches!(msg, Message::Hello { .. }) {
                        self.hello_sent_us = Some(now_us);
                    }
                    self.send(&mut b, &mut acts, msg);
                }
            }
            match self.phase {
                Phase::Hello => {
                    if let Err(e) = self.desc.check() {
                        acts.extend(self.fail(format!("cannot migrate: {e}"), false));
                        return acts;
                    }
                    if let Some(e) = self.layout_error.take() {
                        acts.extend(self.fail(format!("invalid memory layout: {e}"), false));
                        return acts;
                    }
                    let pages = mem.page_count();
                    if let Some(&(first, n)) = self.layout.iter().find(|&&(f, n)| f + n > pages) {
                        let reason = format!(
                            "memory layout region at gfn {first:#x} ({n} pages) exceeds the guest's {pages} pages"
                        );
                        acts.extend(self.fail(reason, false));
                        return acts;
                    }
                    self.outbox.push_back(self.desc.hello());
                    self.phase = Phase::AwaitReady;
                }
                Phase::AwaitReady | Phase::AwaitState | Phase::AwaitCommitted => return acts,
                Phase::Done | Phase::Failed => return acts,
                Phase::Layout => {
                    // Start tracking afresh: round 0 sends every page anyway.
                    mem.take_dirty(&mut |_| {});
                    self.outbox.push_back(Message::MemoryLayout {
                        regions: self.regions.clone(),
                    });
                    self.bw_start_us = Some(now_us);
                    self.phase = Phase::Round;
                }
                Phase::Round | Phase::Final => {
                    // The guest did not run since the last round ended in this
                    // poll: ending an empty round now would only repeat that
                    // estimate (and spend a round). Wait for the queue to drain.
                    if self.phase == Phase::Round
                        && self.round_ended_in_poll
                        && self.round_pages == 0
                        && self.builder.is_empty()
                        && self.next_gfn().is_none()
                    {
                        return acts;
                    }
                    if !self.pump_pages(mem, &mut b, &mut acts) {
                        return acts;
                    }
                    if !self.end_round(mem, now_us, &mut b, &mut acts) {
                        return acts;
                    }
                    if matches!(
                        self.phase,
                        Phase::Pausing | Phase::AwaitState | Phase::Failed
                    ) {
                        return acts;
                    }
                }
                Phase::Pausing => {
                    let mut dirty = core::mem::take(&mut self.pending_dirty);
                    dirty.extend(self.collect_dirty(mem));
                    dirty.sort_unstable();
                    dirty.dedup();
                    self.outbox.push_back(Message::Pause);
                    self.start_round(dirty);
                    self.phase = Phase::Final;
                }
                Phase::SendState => {
                    if let Some(e) = self.state_error.take() {
                        acts.extend(self.fail(e, true));
                        return acts;
                    }
                    // The outbox (state + Commit) was drained above.
                    self.phase = Phase::AwaitCommitted;
                    return acts;
                }
            }
        }
    }

    /// Hands over the paused guest's state after [`Action::NeedState`].
    /// Ignored in any other phase.
    pub fn provide_state(&mut self, vcpu: Vec<u8>, devices: Vec<(String, Vec<u8>)>) {
        if self.phase != Phase::AwaitState {
            log::warn!(
                "migration {}: state provided out of turn, ignored",
                self.desc.vm
            );
            return;
        }
        let mut msgs = vec![Message::VcpuState(vcpu)];
        msgs.extend(
            devices
                .into_iter()
                .map(|(name, data)| Message::DeviceState { name, data }),
        );
        for m in &msgs {
            let len = proto::encoded_len(m);
            if len > MAX_MESSAGE {
                let what = match m {
                    Message::DeviceState { name, .. } => format!("state of device {name}"),
                    _ => "vCPU state".to_string(),
                };
                self.state_error = Some(format!(
                    "{what} is {len} bytes, more than one 1 MiB message"
                ));
            }
        }
        if self.state_error.is_none() {
            self.outbox.extend(msgs);
            self.outbox.push_back(Message::Commit);
        }
        self.phase = Phase::SendState;
    }

    /// Handles a message from the destination.
    pub fn on_message(&mut self, msg: Message, now_us: u64) -> Vec<Action> {
        if self.is_finished() {
            return Vec::new();
        }
        match (self.phase, msg) {
            (Phase::AwaitReady, Message::Ready) => {
                if let Some(sent) = self.hello_sent_us {
                    let sample = now_us.saturating_sub(sent);
                    self.rtt_us = Some(self.rtt_us.map_or(sample, |r| r.min(sample)));
                }
                self.phase = Phase::Layout;
                Vec::new()
            }
            (_, Message::Refuse { reasons }) => self.fail(
                format!("destination refused: {}", reasons.join("; ")),
                false,
            ),
            (_, Message::Abort { reason }) => {
                self.fail(format!("destination aborted: {reason}"), false)
            }
            (Phase::AwaitCommitted, Message::Committed) => {
                self.phase = Phase::Done;
                let last_round_dirty_bytes = self.final_pages.saturating_mul(PAGE_SIZE as u64);
                let s = Summary {
                    total_us: now_us.saturating_sub(self.start_us),
                    downtime_us: now_us.saturating_sub(self.pause_us.unwrap_or(now_us)),
                    rounds: self.rounds_done,
                    bytes: self.total_bytes,
                    zero_pages: self.total_zero,
                    pages_sent: self.total_pages,
                    last_round_dirty_bytes,
                    lower_bound_us: transfer_us(
                        last_round_dirty_bytes as u128,
                        self.bandwidth(now_us),
                    ),
                };
                log::info!("migration {} done: {s:?}", self.desc.vm);
                vec![Action::Done(s)]
            }
            (phase, msg) => self.fail(
                format!(
                    "unexpected {} from the destination (source in phase {phase:?})",
                    msg.name()
                ),
                true,
            ),
        }
    }

    /// Decodes a frame and handles it; a malformed frame aborts the migration.
    pub fn on_frame(&mut self, ty: u8, payload: &[u8], now_us: u64) -> Vec<Action> {
        match proto::decode(ty, payload) {
            Ok(msg) => self.on_message(msg, now_us),
            Err(e) => self.on_bad_frame(&e),
        }
    }

    /// A frame from the destination failed to decode: abort.
    pub fn on_bad_frame(&mut self, err: &ProtoError) -> Vec<Action> {
        if self.is_finished() {
            return Vec::new();
        }
        self.fail(
            format!("malformed message from the destination: {err}"),
            true,
        )
    }

    /// Abandons the migration: sends `Abort`, then `Failed`.
    pub fn cancel(&mut self, reason: &str) -> Vec<Action> {
        if self.is_finished() {
            return Vec::new();
        }
        self.fail(format!("cancelled: {reason}"), true)
    }

    /// The channel broke: `Failed` (the guest resumes on the source).
    pub fn on_link_lost(&mut self, why: &str) -> Vec<Action> {
        if self.is_finished() {
            return Vec::new();
        }
        self.fail(format!("link lost: {why}"), false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 1 MB/s: one byte per µs, so every term reads directly in µs.
    const BW: Option<u64> = Some(1_000_000);

    #[test]
    fn send_window_is_half_the_budget_at_the_measured_rate() {
        // 0.7 MiB/s, 300 ms: about 107 KiB.
        let bw = 700 * 1024;
        assert_eq!(send_window(Some(bw), 300_000), bw as usize * 3 / 20);
        assert_eq!(send_window(Some(1024), 300_000), MIN_WINDOW);
        assert_eq!(send_window(Some(1 << 30), 300_000), MAX_WINDOW);
        assert_eq!(send_window(Some(0), 300_000), MIN_WINDOW);
        assert_eq!(send_window(None, 300_000), MAX_WINDOW / 2);
        assert_eq!(send_window(Some(u64::MAX), u64::MAX), MAX_WINDOW);
    }

    #[test]
    fn estimate_adds_every_term() {
        let page = PAGE_SIZE as u64;
        // 10 dirty pages, 1000 bytes in flight, the state estimate, 500 µs rtt.
        assert_eq!(
            estimate_downtime_us(10, 1_000, BW, 500),
            10 * page + 1_000 + STATE_ESTIMATE_BYTES + 500
        );
        let base = estimate_downtime_us(10, 1_000, BW, 500);
        // Each term moves the estimate by exactly its share.
        assert_eq!(estimate_downtime_us(11, 1_000, BW, 500), base + page);
        assert_eq!(estimate_downtime_us(10, 3_000, BW, 500), base + 2_000);
        assert_eq!(estimate_downtime_us(10, 1_000, BW, 1_500), base + 1_000);
        // Nothing dirty nor in flight: the state and the round trip remain.
        assert_eq!(
            estimate_downtime_us(0, 0, BW, 0),
            STATE_ESTIMATE_BYTES // 8 KiB at 1 byte/µs
        );
        // Twice the bandwidth halves the byte terms, not the round trip.
        assert_eq!(
            estimate_downtime_us(10, 1_000, Some(2_000_000), 500),
            (10 * page + 1_000 + STATE_ESTIMATE_BYTES) / 2 + 500
        );
    }

    #[test]
    fn estimate_edge_cases() {
        // No bandwidth measured yet: the byte terms are left out, as before.
        assert_eq!(estimate_downtime_us(1_000, 1 << 20, None, 0), 0);
        assert_eq!(estimate_downtime_us(1_000, 1 << 20, None, 700), 700);
        // Nothing moves at all.
        assert_eq!(estimate_downtime_us(0, 0, Some(0), 0), u64::MAX);
        // Saturates instead of overflowing.
        assert_eq!(
            estimate_downtime_us(u64::MAX, u64::MAX, Some(1), u64::MAX),
            u64::MAX
        );
        assert_eq!(
            estimate_downtime_us(0, 0, Some(u64::MAX), u64::MAX),
            u64::MAX
        );
    }

    #[test]
    fn lower_bound_is_the_dirty_bytes_only() {
        assert_eq!(transfer_us(10 * PAGE_SIZE as u128, BW), 40_960);
        assert_eq!(transfer_us(0, BW), 0);
        assert_eq!(transfer_us(0, Some(0)), 0);
        assert_eq!(transfer_us(1, Some(0)), u64::MAX);
        assert_eq!(transfer_us(1 << 40, None), 0);
    }
}
