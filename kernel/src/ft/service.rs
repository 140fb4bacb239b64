//! The FT service on the host network: `ft listen`, the initial copies
//! under way, and one link per protected guest (primary or secondary).

use alloc::boxed::Box;
use alloc::collections::{BTreeMap, VecDeque};
use alloc::string::String;
use alloc::vec::Vec;

use ft_lockstep::witness::{Role, WitnessFrame};
use ft_lockstep::{Ack, Detector, Frame};
use netstack::channel::{Channel, SendError};
use netstack::codec::Key;
use netstack::stack::{Ipv4Address, Stack};

use crate::events::emit as async_line;
use crate::migration::{MigrationService, Outbound, Outgoing};
use crate::net::{Service, Turn};

use super::arbiter::{self, Arbiter, Call, Claim};
use super::{ACK_EVERY_US, COPY_PAUSE_MS, DIVERGED, END_GRACE_US, KEEPALIVE_US};

/// Who arbitrates a protection: the witness (None: `witness=none`) and
/// the generation it granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct ArbiterInfo {
    pub(super) witness: Option<Ipv4Address>,
    pub(super) generation: u64,
}

/// Where a protection's start is. Few exist at once (one per `ft
/// enable` under way), so both stay inline.
#[allow(clippy::large_enum_variant)]
pub(super) enum Stage {
    /// Asking the witness for a generation.
    Begin(Option<Call>),
    /// The initial copy (the guest keeps running here).
    Copying(Outbound),
}

/// A protection being set up: `ft enable`, or a re-sync after a
/// divergence.
pub(super) struct Copy {
    pub(super) vm: String,
    pub(super) peer: Ipv4Address,
    pub(super) port: u16,
    pub(super) witness: Option<Ipv4Address>,
    generation: u64,
    pub(super) stage: Stage,
    /// Re-creating a secondary that diverged.
    resync: bool,
    /// When it began (for the re-protection time).
    started_us: u64,
    cancelled: Option<String>,
}

impl Copy {
    pub(super) fn new(
        vm: &str,
        peer: Ipv4Address,
        port: u16,
        witness: Option<Ipv4Address>,
        resync: bool,
    ) -> Copy {
        Copy {
            vm: String::from(vm),
            peer,
            port,
            witness,
            generation: 0,
            stage: Stage::Begin(None),
            resync,
            started_us: crate::arch::time::now_us(),
            cancelled: None,
        }
    }

    /// Ends it (the guest runs on unprotected).
    pub(super) fn cancel(&mut self, why: &str) {
        match &mut self.stage {
            Stage::Copying(out) => out.cancel(why),
            Stage::Begin(_) => self.cancelled = Some(String::from(why)),
        }
    }

    /// One line for `ft status`.
    pub(super) fn status(&self) -> String {
        match &self.stage {
            Stage::Begin(_) => alloc::format!(
                "asking witness {} for a generation",
                self.witness
                    .map_or_else(String::new, |w| alloc::format!("{w}"))
            ),
            Stage::Copying(out) => out.status(),
        }
    }
}

/// What happened to a protected guest on this host over the run.
#[derive(Debug, Default)]
pub(super) struct History {
    pub(super) protections: u32,
    pub(super) failovers: u32,
    pub(super) divergences: u32,
    pub(super) resyncs: u32,
    /// Since when it has run unprotected (after having been protected).
    pub(super) unprotected_since: Option<u64>,
    pub(super) unprotected_us: u64,
    /// The last few events, with their time.
    pub(super) events: VecDeque<(u64, String)>,
}

impl History {
    fn event(&mut self, now: u64, what: String) {
        if self.events.len() == 6 {
            self.events.pop_front();
        }
        self.events.push_back((now, what));
    }

    fn protected(&mut self, now: u64) {
        self.protections += 1;
        if let Some(t) = self.unprotected_since.take() {
            self.unprotected_us += now.saturating_sub(t);
        }
    }

    fn unprotected(&mut self, now: u64) {
        self.unprotected_since.get_or_insert(now);
    }

    /// Time unprotected so far (after a first protection).
    pub(super) fn unprotected_total(&self, now: u64) -> u64 {
        self.unprotected_us + self.unprotected_since.map_or(0, |t| now.saturating_sub(t))
    }
}

/// A twin declared lost: the arbiter is being asked.
struct Lost {
    why: String,
    /// When the twin was last heard from.
    heard_us: u64,
    detected_us: u64,
    claim: Box<dyn Arbiter>,
    won: bool,
    /// Unreachable said (and, on a primary, the guest paused).
    held: bool,
    /// Secondary: records its replay had consumed when the primary was
    /// last heard from (what it drains is everything after).
    consumed_at: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Side {
    Primary,
    Secondary,
}

/// One protected guest's channel to its twin.
pub(super) struct Link {
    pub(super) vm: String,
    pub(super) side: Side,
    pub(super) peer: String,
    chan: Channel,
    /// Encoded frames the channel could not take yet.
    backlog: VecDeque<(u8, Vec<u8>)>,
    /// Secondary: the last acknowledgement sent, and when.
    last_ack: Option<Ack>,
    last_ack_us: u64,
    /// Primary: the guest stopped; protection ends once the secondary has
    /// acknowledged everything (or at this time).
    ending_at: Option<u64>,
    /// Protection is over (reported); the link goes once its last frames
    /// left or at `release_at`.
    closed: bool,
    release_at: u64,
    /// When we last sent (a log frame or an acknowledgement).
    sent_us: u64,
    /// Heartbeats out, silence in.
    detector: Detector,
    /// Secondary: records replayed when the primary was last heard from.
    replayed_at_heard: u64,
    /// Who arbitrates (the secondary learns it from the first frame).
    pub(super) arbiter: Option<ArbiterInfo>,
    /// The twin was declared lost.
    lost: Option<Lost>,
    /// Primary: where the secondary listens (address and port), for a
    /// re-sync.
    resync_to: Option<(Ipv4Address, u16)>,
    /// Protection over, and how: for the service's bookkeeping.
    outcome: Option<Outcome>,
    /// The End frame went to the twin already.
    told_end: bool,
}

/// How a link ended, for the history and a re-sync.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// The secondary went live here.
    WentLive,
    /// The primary runs on alone.
    Unprotected,
    /// The secondary diverged: re-create it.
    Diverged,
    /// This copy stopped or was discarded.
    Gone,
}

impl Link {
    fn new(vm: String, side: Side, peer: String, chan: Channel) -> Link {
        Link {
            vm,
            side,
            peer,
            chan,
            backlog: VecDeque::new(),
            last_ack: None,
            last_ack_us: 0,
            ending_at: None,
            closed: false,
            release_at: u64::MAX,
            sent_us: 0,
            detector: {
                let c = super::settings();
                Detector::new(
                    u64::from(c.heartbeat_ms) * 1000,
                    u64::from(c.timeout_ms) * 1000,
                    crate::arch::time::now_us(),
                )
            },
            replayed_at_heard: 0,
            arbiter: None,
            lost: None,
            resync_to: None,
            outcome: None,
            told_end: false,
        }
    }

    /// The twin's name for the operator ("primary 10.0.0.1").
    fn twin(&self) -> String {
        match self.side {
            Side::Primary => alloc::format!("secondary {}", self.peer),
            Side::Secondary => alloc::format!("primary {}", self.peer),
        }
    }

    /// Why the twin counts as lost now, if it does: its link closed, or it
    /// was silent for `ft.timeout_ms` (a dead host, a cut link; it sends a
    /// heartbeat every `ft.heartbeat_ms`).
    fn gone(&self, now: u64) -> Option<String> {
        let twin = self.twin();
        if self.chan.is_closed() {
            return Some(match self.chan.close_reason() {
                Some(r) => alloc::format!("{twin} lost: link closed: {r}"),
                None => alloc::format!("{twin} lost: link closed"),
            });
        }
        self.detector
            .lost(now)
            .map(|quiet| alloc::format!("{twin} lost: no heartbeat for {} ms", quiet / 1000))
    }

    /// Sends a heartbeat when one is due, whatever else flows.
    fn heartbeat(&mut self, now: u64) {
        if let Some(seq) = self.detector.due(now) {
            self.send(&Frame::Heartbeat { seq });
        }
    }

    /// A frame from the twin, decoded; every frame shows the twin alive.
    /// Heartbeats are the detector's: a repeated one (the channel already
    /// refuses replayed bytes; this catches a twin that repeats itself) or
    /// a malformed one carries nothing to act on, so it is logged and
    /// dropped here (`None`).
    fn receive(
        &mut self,
        ty: u8,
        payload: &[u8],
        now: u64,
    ) -> Option<Result<Frame, ft_lockstep::CodecError>> {
        self.detector.heard(now);
        let frame = ft_lockstep::decode(ty, payload);
        let problem = match &frame {
            Ok(Frame::Heartbeat { seq }) => match self.detector.heartbeat(*seq) {
                Ok(()) => return Some(frame),
                Err(e) => alloc::format!(
                    "heartbeat {} from the {} repeats {}",
                    e.seq,
                    self.twin(),
                    e.last
                ),
            },
            Err(e) if ty == ft_lockstep::FRAME_HEARTBEAT => {
                alloc::format!("bad heartbeat from the {}: {e}", self.twin())
            }
            _ => return Some(frame),
        };
        log::warn!("ft: {}: {problem} (ignored)", self.vm);
        None
    }

    fn send(&mut self, f: &Frame) {
        let (ty, p) = ft_lockstep::encode(f);
        self.backlog.push_back((ty, p));
        self.flush();
        self.sent_us = crate::arch::time::now_us();
    }

    /// Hands the backlog to the channel. Frames are never dropped: a log
    /// with a hole would be refused by the secondary.
    fn flush(&mut self) {
        while let Some((ty, p)) = self.backlog.pop_front() {
            match self.chan.send(ty, &p) {
                Ok(()) => {}
                Err(SendError::WouldBlock) => {
                    self.backlog.push_front((ty, p));
                    break;
                }
                Err(_) => break,
            }
        }
    }

    /// Ends protection for this link: tells the twin why (best effort),
    /// ends the lockstep here, reports.
    fn end(&mut self, stack: &mut Stack, tell: &str, report: &str) {
        if self.closed {
            return;
        }
        self.closed = true;
        if self.chan.is_open() && !self.told_end {
            // Log the twin will not replay need not go; the End must, and
            // whole, before the close.
            self.backlog.clear();
            self.send(&Frame::End {
                reason: String::from(tell),
            });
        }
        if self.outcome.is_none() {
            crate::vmm::ft_end(&self.vm);
            self.outcome = Some(match self.side {
                Side::Primary => Outcome::Unprotected,
                Side::Secondary => Outcome::Gone,
            });
        }
        async_line(format_args!("{report}"));
        self.chan.close(stack);
        self.release_at = crate::arch::time::now_us() + super::CLOSE_GRACE_US;
    }

    /// The primary's turn: acknowledgements in, log out.
    fn primary_turn(&mut self, t: &mut arbiter::Turn<'_>) {
        if self.lost.is_some() {
            return self.primary_failover(t);
        }
        let now = t.now;
        while let Some((ty, p)) = self.chan.recv(t.stack) {
            let Some(frame) = self.receive(ty, &p, now) else {
                continue;
            };
            let why = match frame {
                Ok(Frame::Ack(a)) => match crate::vmm::ft_on_ack(&self.vm, a) {
                    Ok(()) => continue,
                    Err(e) => alloc::format!("the secondary sent a {e}"),
                },
                Ok(Frame::End { reason }) if reason.starts_with(DIVERGED) => {
                    // The secondary discarded its copy: nobody else can
                    // run the guest, no arbiter needed.
                    let why = alloc::format!("the secondary {}", crate::text::peer(&reason));
                    let vm = self.vm.clone();
                    let report = alloc::format!(
                        "ft: {vm}: divergence: {why}; re-creating the secondary on {}",
                        self.peer
                    );
                    self.end(t.stack, &why, &report);
                    self.outcome = Some(Outcome::Diverged);
                    return;
                }
                Ok(Frame::End { reason }) => {
                    alloc::format!(
                        "the secondary ended protection: {}",
                        crate::text::peer(&reason)
                    )
                }
                Ok(Frame::Log { .. }) => String::from("the secondary sent a log frame"),
                Ok(Frame::Arbiter { .. }) => String::from("the secondary sent an arbiter frame"),
                Ok(Frame::Heartbeat { .. }) => continue,
                Err(e) => alloc::format!("bad frame from the secondary: {e}"),
            };
            return self.lose(t, why);
        }
        if let Some(why) = self.gone(now) {
            return self.lose(t, why);
        }
        let poll = crate::vmm::ft_poll(&self.vm);
        if let Some(why) = &poll.ended {
            let at = *self.ending_at.get_or_insert(now + END_GRACE_US);
            if poll.drained || now >= at {
                let why = alloc::format!("{why} on the primary");
                let report = alloc::format!("ft: {}: protection ended: {why}", self.vm);
                return self.end(t.stack, &why, &report);
            }
        }
        self.flush();
        self.heartbeat(now);
        if !self.backlog.is_empty() || !self.chan.is_open() {
            return;
        }
        let room = self
            .chan
            .tx_limit()
            .saturating_sub(self.chan.queued_bytes())
            .min(256 * 1024);
        match crate::vmm::ft_frames(&self.vm, room) {
            Ok(frames) if frames.is_empty() && now.saturating_sub(self.sent_us) >= KEEPALIVE_US => {
                // Nothing logged: an empty frame keeps the log's position
                // fresh on the secondary.
                let first = crate::vmm::ft_sent(&self.vm);
                self.send(&Frame::Log {
                    first,
                    records: Vec::new(),
                });
            }
            Ok(frames) => {
                if !frames.is_empty() {
                    self.sent_us = now;
                }
                self.backlog.extend(frames);
                self.flush();
            }
            Err(e) => {
                let why = alloc::format!("{e}");
                self.unprotect(t.stack, &why)
            }
        }
    }

    /// The twin is lost (dead, cut off, or lying): the arbiter decides
    /// whether this copy runs the guest. Nothing more goes to the twin or
    /// is taken from it.
    fn lose(&mut self, t: &mut arbiter::Turn<'_>, why: String) {
        let Some(info) = self.arbiter else {
            // A secondary that never learnt its arbiter cannot go live.
            let why = alloc::format!("{why} before it named an arbiter");
            return self.discard(t.stack, &why);
        };
        let role = match self.side {
            Side::Primary => Role::Primary,
            Side::Secondary => Role::Secondary,
        };
        if self.chan.is_open() {
            // A twin still listening learns it is given up on.
            self.backlog.clear();
            self.send(&Frame::End {
                reason: why.clone(),
            });
            self.told_end = true;
        }
        let claim = arbiter::arbiter(info.witness, &self.vm, info.generation, role);
        let consumed_at = self.replayed_at_heard;
        if info.witness.is_some() || self.side == Side::Secondary {
            async_line(format_args!(
                "ft: {}: {why}{}; asking {}",
                self.vm,
                if self.side == Side::Secondary {
                    ": draining the log"
                } else {
                    ""
                },
                claim.describe()
            ));
        }
        self.lost = Some(Lost {
            why,
            heard_us: self.detector.heard_us(),
            detected_us: t.now,
            claim,
            won: false,
            held: false,
            consumed_at,
        });
    }

    /// The primary lost its secondary: run on alone if the arbiter agrees,
    /// stop if the secondary has the guest, hold it paused while the
    /// arbiter cannot be reached.
    fn primary_failover(&mut self, t: &mut arbiter::Turn<'_>) {
        let Some(lost) = self.lost.as_mut() else {
            return;
        };
        let vm = self.vm.clone();
        match lost.claim.claim(t) {
            Claim::Pending => {}
            Claim::Won => {
                if lost.held {
                    crate::vmm::ft_pause(&vm, false);
                }
                let why = lost.why.clone();
                let report = alloc::format!("ft: {vm}: unprotected: {why}; {vm} keeps running");
                self.finish_lost(t.stack);
                self.end(t.stack, &why, &report);
            }
            Claim::Lost(w) => {
                crate::vmm::ft_stop(&vm);
                let report = alloc::format!(
                    "ft: {vm}: stopped here: {}, and {w}: {vm} runs there now",
                    lost.why
                );
                self.outcome = Some(Outcome::Gone);
                self.finish_lost(t.stack);
                self.end(t.stack, "the secondary runs the guest", &report);
            }
            Claim::Unreachable(w) => {
                if !lost.held {
                    lost.held = true;
                    crate::vmm::ft_pause(&vm, true);
                    async_line(format_args!(
                        "ft: {vm}: paused: {}, and {} unreachable ({w}); {vm} stays paused rather than risk two copies, asking again every {} ms",
                        lost.why,
                        lost.claim.describe(),
                        super::ARBITER_RETRY_US / 1000
                    ));
                }
            }
        }
    }

    /// The arbiter answered: its sockets go.
    fn finish_lost(&mut self, stack: &mut Stack) {
        if let Some(l) = self.lost.take() {
            l.claim.release(stack);
        }
    }

    fn unprotect(&mut self, stack: &mut Stack, why: &str) {
        let vm = self.vm.clone();
        let report = alloc::format!("ft: {vm}: unprotected: {why}; {vm} keeps running");
        self.end(stack, why, &report);
    }

    /// The secondary's turn: log in, acknowledgements out.
    fn secondary_turn(&mut self, t: &mut arbiter::Turn<'_>) {
        if self.lost.is_some() {
            return self.secondary_failover(t);
        }
        let now = t.now;
        let mut got_log = false;
        while let Some((ty, p)) = self.chan.recv(t.stack) {
            let Some(frame) = self.receive(ty, &p, now) else {
                continue;
            };
            let why = match frame {
                Ok(Frame::Log { first, records }) => {
                    match crate::vmm::ft_push(&self.vm, first, records) {
                        Ok(ack) => {
                            got_log = true;
                            self.ack(ack, now);
                            continue;
                        }
                        Err(e) => alloc::format!("bad log from the primary: {e}"),
                    }
                }
                Ok(Frame::Heartbeat { .. }) => continue,
                Ok(Frame::Arbiter {
                    witness,
                    generation,
                }) if self.arbiter.is_none() => {
                    self.arbiter = Some(ArbiterInfo {
                        witness: witness.map(Ipv4Address::from),
                        generation,
                    });
                    continue;
                }
                Ok(Frame::Arbiter { .. }) => String::from("the primary named a second arbiter"),
                Ok(Frame::End { reason }) => {
                    alloc::format!(
                        "the primary ended protection: {}",
                        crate::text::peer(&reason)
                    )
                }
                Ok(Frame::Ack(_)) => String::from("the primary sent an acknowledgement"),
                Err(e) => alloc::format!("bad frame from the primary: {e}"),
            };
            return self.discard(t.stack, &why);
        }
        if let Some(why) = self.gone(now) {
            return self.lose(t, why);
        }
        let poll = crate::vmm::ft_poll(&self.vm);
        if let Some(why) = poll.diverged {
            let why = alloc::format!("{DIVERGED}{why}");
            return self.discard(t.stack, &why);
        }
        if self.detector.heard_us() == now
            && let Some(a) = poll.ack
        {
            self.replayed_at_heard = a.replayed;
        }
        if let Some(ack) = poll.ack
            && !got_log
            && ((self.last_ack != Some(ack)
                && now.saturating_sub(self.last_ack_us) >= ACK_EVERY_US)
                || now.saturating_sub(self.last_ack_us) >= KEEPALIVE_US)
        {
            self.ack(ack, now);
        }
        self.heartbeat(now);
        self.flush();
    }

    /// The primary is lost: drain the log already received, and go live
    /// once the arbiter says this copy runs the guest.
    fn secondary_failover(&mut self, t: &mut arbiter::Turn<'_>) {
        let vm = self.vm.clone();
        if let Some(why) = crate::vmm::ft_poll(&vm).diverged {
            let why = alloc::format!("{DIVERGED}{why} (while draining the log)");
            self.finish_lost(t.stack);
            return self.discard(t.stack, &why);
        }
        let Some(lost) = self.lost.as_mut() else {
            return;
        };
        if !lost.won {
            match lost.claim.claim(t) {
                Claim::Pending => {}
                Claim::Won => lost.won = true,
                Claim::Lost(w) => {
                    let why = alloc::format!("{}, and {w}", lost.why);
                    self.finish_lost(t.stack);
                    return self.discard(t.stack, &why);
                }
                Claim::Unreachable(w) => {
                    if !lost.held {
                        lost.held = true;
                        async_line(format_args!(
                            "ft: {vm}: not going live: {}, and {} unreachable ({w}); asking again every {} ms",
                            lost.why,
                            lost.claim.describe(),
                            super::ARBITER_RETRY_US / 1000
                        ));
                    }
                }
            }
        }
        let Some(lost) = self.lost.as_ref() else {
            return;
        };
        if !lost.won || crate::vmm::ft_drained(&vm) != Some(true) {
            return;
        }
        let (heard, detected, consumed_at) = (lost.heard_us, lost.detected_us, lost.consumed_at);
        let who = self.twin();
        let by = lost.claim.describe();
        match crate::vmm::ft_go_live(&vm) {
            Ok(g) => {
                let now = crate::arch::time::now_us();
                async_line(format_args!(
                    "ft: {vm}: live here ({who} lost, {} records drained, {} ms)",
                    g.consumed.saturating_sub(consumed_at),
                    now.saturating_sub(heard) / 1000
                ));
                log::info!(
                    "ft: {vm}: failover: detected {} ms after the last frame, drained and decided in {} ms ({by}), {} lines re-emitted",
                    detected.saturating_sub(heard) / 1000,
                    now.saturating_sub(detected) / 1000,
                    g.reemitted
                );
                self.outcome = Some(Outcome::WentLive);
                self.finish_lost(t.stack);
                self.closed = true;
                self.chan.close(t.stack);
                self.release_at = now + super::CLOSE_GRACE_US;
            }
            Err(e) => {
                let why = alloc::format!("could not go live: {e}");
                self.finish_lost(t.stack);
                self.discard(t.stack, &why);
            }
        }
    }

    fn ack(&mut self, ack: Ack, now: u64) {
        self.send(&Frame::Ack(ack));
        self.last_ack = Some(ack);
        self.last_ack_us = now;
    }

    fn discard(&mut self, stack: &mut Stack, why: &str) {
        let report = alloc::format!("ft: {}: secondary copy discarded: {why}", self.vm);
        self.end(stack, why, &report);
    }

    /// Protection over; the link waits for its last frames to leave.
    pub(super) fn is_closed(&self) -> bool {
        self.closed
    }

    /// `ft disable` on this host.
    pub(super) fn disable(&mut self, stack: &mut Stack) {
        let vm = self.vm.clone();
        if let Some(l) = self.lost.as_ref()
            && l.held
        {
            crate::vmm::ft_pause(&vm, false);
        }
        self.finish_lost(stack);
        match self.side {
            Side::Primary => self.end(
                stack,
                "disabled by the operator on the primary",
                &alloc::format!("ft: {vm}: protection disabled; {vm} keeps running unprotected"),
            ),
            Side::Secondary => self.end(
                stack,
                "disabled by the operator on the secondary",
                &alloc::format!("ft: {vm}: protection disabled; the secondary copy is discarded"),
            ),
        }
    }
}

/// Every FT activity of this host.
#[derive(Default)]
pub struct FtService {
    /// `ft listen`.
    pub(super) listener: Option<MigrationService>,
    /// `ft witness`.
    pub(super) witness: Option<super::witness::Server>,
    pub(super) copies: Vec<Copy>,
    pub(super) links: Vec<Link>,
    /// Per guest, what fault tolerance did to it on this host.
    pub(super) history: BTreeMap<String, History>,
}

impl FtService {
    fn copies_turn(&mut self, t: &mut arbiter::Turn<'_>) {
        let mut i = 0;
        while i < self.copies.len() {
            match self.copy_step(i, t) {
                Some(true) => {
                    let c = self.copies.swap_remove(i);
                    self.protect(c, t.stack);
                }
                Some(false) => {
                    let c = self.copies.swap_remove(i);
                    if let Stage::Copying(out) = c.stage {
                        out.release(t.stack);
                    }
                }
                None => i += 1,
            }
        }
    }

    /// One step of copy `i`: Some(true) once committed, Some(false) once
    /// it failed (reported), None while under way.
    fn copy_step(&mut self, i: usize, t: &mut arbiter::Turn<'_>) -> Option<bool> {
        let c = &mut self.copies[i];
        let vm = c.vm.clone();
        if let Stage::Begin(call) = &mut c.stage {
            if let Some(why) = c.cancelled.take() {
                if let Some(call) = call.take() {
                    call.release(t.stack);
                }
                async_line(format_args!(
                    "error: ft: {vm}: cancelled {why}; {vm} keeps running unprotected"
                ));
                return Some(false);
            }
            if let Some(witness) = c.witness {
                // Every way the witness can fail ends the start the same way.
                let refused = |why: core::fmt::Arguments<'_>| {
                    async_line(format_args!(
                        "error: ft: {vm}: witness {witness} {why}; {vm} keeps running unprotected"
                    ));
                    Some(false)
                };
                if call.is_none() {
                    match Call::start(t, witness, &WitnessFrame::Begin { vm: vm.clone() }) {
                        Ok(k) => *call = Some(k),
                        Err(e) => return refused(format_args!("unreachable: {e}")),
                    }
                }
                let answer = call.as_mut()?.poll(t)?;
                if let Some(k) = call.take() {
                    k.release(t.stack);
                }
                match answer {
                    Ok(WitnessFrame::Begun { vm: v, generation }) if v == vm && generation > 0 => {
                        c.generation = generation;
                    }
                    Ok(WitnessFrame::Begun { generation: 0, .. }) => {
                        return refused(format_args!("refused: it keeps too many guests"));
                    }
                    Ok(_) => return refused(format_args!("gave a wrong answer")),
                    Err(e) => return refused(format_args!("unreachable: {e}")),
                }
            }
            // A generation granted (or no witness): the copy starts.
            return match start_copy(c, t) {
                Ok(out) => {
                    c.stage = Stage::Copying(out);
                    None
                }
                Err(()) => Some(false),
            };
        }
        let Stage::Copying(out) = &mut c.stage else {
            return None;
        };
        let finished = out.step(t.stack, t.now);
        if out.outcome() == Some(true) {
            return Some(true);
        }
        finished.then_some(false)
    }

    /// The initial copy committed: the lockstep begins.
    fn protect(&mut self, c: Copy, stack: &mut Stack) {
        let Stage::Copying(out) = c.stage else {
            return;
        };
        let vm = c.vm.clone();
        let (total, pause) = out
            .summary()
            .map_or((0, 0), |s| (s.total_us / 1000, s.downtime_us / 1000));
        let mut chan = out.into_channel();
        let check_us = u64::from(super::settings().check_s) * 1_000_000;
        match crate::vmm::ft_start_primary(&vm, &alloc::format!("{}", c.peer), check_us) {
            Ok(()) => {
                let now = crate::arch::time::now_us();
                let h = self.history.entry(vm.clone()).or_default();
                h.protected(now);
                if c.resync {
                    h.resyncs += 1;
                    h.event(
                        now,
                        alloc::format!(
                            "re-synced to {} in {} ms",
                            c.peer,
                            now.saturating_sub(c.started_us) / 1000
                        ),
                    );
                } else {
                    h.event(now, alloc::format!("protected by {}", c.peer));
                }
                async_line(format_args!(
                    "ft: {vm}: protected by {}: lockstep (initial copy {total} ms, pause {pause} ms{})",
                    c.peer,
                    if c.resync { ", re-sync" } else { "" }
                ));
                let info = ArbiterInfo {
                    witness: c.witness,
                    generation: c.generation,
                };
                let mut link = Link::new(vm, Side::Primary, alloc::format!("{}", c.peer), chan);
                link.arbiter = Some(info);
                link.resync_to = Some((c.peer, c.port));
                link.send(&Frame::Arbiter {
                    witness: info.witness.map(|w| w.octets()),
                    generation: info.generation,
                });
                self.links.push(link);
            }
            Err(e) => {
                crate::vmm::migration_end(&vm, false);
                async_line(format_args!(
                    "error: ft: {vm}: {e}; {vm} keeps running unprotected"
                ));
                let _ = chan.send(
                    ft_lockstep::FRAME_END,
                    &ft_lockstep::encode(&Frame::End {
                        reason: alloc::format!("the primary could not start: {e}"),
                    })
                    .1,
                );
                chan.close(stack);
                chan.release(stack);
            }
        }
    }

    /// A link ended: the history, and a re-sync after a divergence.
    fn ended(
        &mut self,
        vm: &str,
        side: Side,
        outcome: Outcome,
        peer: &str,
        resync_to: Option<(Ipv4Address, u16)>,
        info: Option<ArbiterInfo>,
    ) {
        let now = crate::arch::time::now_us();
        let h = self.history.entry(String::from(vm)).or_default();
        match (side, outcome) {
            (Side::Secondary, Outcome::WentLive) => {
                h.failovers += 1;
                h.unprotected(now);
                h.event(now, alloc::format!("went live here (primary {peer} lost)"));
            }
            (Side::Primary, Outcome::Unprotected) => {
                h.unprotected(now);
                h.event(now, alloc::format!("unprotected (secondary {peer})"));
            }
            (Side::Primary, Outcome::Diverged) => {
                h.divergences += 1;
                h.unprotected(now);
                h.event(now, alloc::format!("divergence on {peer}"));
                if let Some((addr, port)) = resync_to {
                    let witness = info.and_then(|i| i.witness);
                    self.copies.push(Copy::new(vm, addr, port, witness, true));
                }
            }
            (Side::Primary, Outcome::Gone) => {
                h.event(
                    now,
                    alloc::format!("stopped here (the secondary {peer} runs it)"),
                );
            }
            (Side::Secondary, _) | (Side::Primary, Outcome::WentLive) => {}
        }
    }
}

/// Starts the initial copy of `c` (reported on failure).
fn start_copy(c: &Copy, t: &mut arbiter::Turn<'_>) -> Result<Outbound, ()> {
    let vm = c.vm.as_str();
    let Some(key) = t.key else {
        async_line(format_args!(
            "error: ft: {vm}: no channel key set; {vm} keeps running unprotected"
        ));
        return Err(());
    };
    let o = Outgoing {
        vm,
        target: c.peer,
        port: c.port,
        downtime_ms: COPY_PAUSE_MS,
        bandwidth_mib: None,
        keep_running: true,
    };
    Outbound::start(t.stack, key, (t.nonce)(), &o).map_err(|e| {
        async_line(format_args!("error: ft: {vm}: {e}"));
    })
}

impl Service for FtService {
    fn poll(
        &mut self,
        stack: &mut Stack,
        key: Option<&Key>,
        nonce: &mut dyn FnMut() -> [u8; 32],
        now: u64,
    ) -> Turn {
        if let (Some(key), Some(l)) = (key, self.listener.as_mut()) {
            l.poll(stack, key, nonce, now, 0);
            for (vm, mut chan) in l.take_secondaries() {
                let peer = chan
                    .peer()
                    .map(|p| alloc::format!("{}", p.addr))
                    .unwrap_or_else(|| String::from("?"));
                chan.poll(stack, now);
                self.links.push(Link::new(vm, Side::Secondary, peer, chan));
            }
        }
        if let (Some(key), Some(w)) = (key, self.witness.as_mut()) {
            w.poll(stack, key, nonce, now);
        }
        let mut t = arbiter::Turn {
            stack,
            key,
            nonce,
            now,
        };
        self.copies_turn(&mut t);
        for link in &mut self.links {
            link.chan.poll(t.stack, now);
            if link.closed {
                continue;
            }
            match link.side {
                Side::Primary => link.primary_turn(&mut t),
                Side::Secondary => link.secondary_turn(&mut t),
            }
        }
        // Closed links go once their last frames (End) have left.
        let mut i = 0;
        let mut ended = Vec::new();
        while i < self.links.len() {
            let l = &mut self.links[i];
            if let (true, Some(o)) = (l.closed, l.outcome.take()) {
                ended.push((
                    l.vm.clone(),
                    l.side,
                    o,
                    l.peer.clone(),
                    l.resync_to,
                    l.arbiter,
                ));
            }
            if l.closed && (l.chan.is_closed() || now >= l.release_at) {
                let l = self.links.swap_remove(i);
                l.chan.release(t.stack);
            } else {
                i += 1;
            }
        }
        for (vm, side, o, peer, resync_to, info) in ended {
            self.ended(&vm, side, o, &peer, resync_to, info);
        }
        let busy = !self.copies.is_empty()
            || !self.links.is_empty()
            || self.listener.as_ref().is_some_and(|l| l.busy())
            || self.witness.as_ref().is_some_and(|w| w.busy());
        Turn {
            busy,
            queued: busy || self.listener.is_some() || self.witness.is_some(),
        }
    }
}

/// The FT service on `net`, registered at first use.
pub(super) fn ft(net: &mut crate::net::Net) -> &mut FtService {
    net.service::<FtService>()
}
