//! The source side: one `Outbound` per guest leaving this host (its
//! `Source` engine, channel and progress lines) and `migrate check`.

use super::incoming::send;
use super::*;
use alloc::string::ToString;

/// The source's view of a migrating VM's RAM.
pub(super) struct SourceMem<'a> {
    vm: &'a str,
    pages: u64,
}

impl GuestMemory for SourceMem<'_> {
    fn page_count(&self) -> u64 {
        self.pages
    }
    fn read_page(&self, gfn: u64, buf: &mut [u8; 4096]) {
        crate::vmm::read_page(self.vm, gfn, buf);
    }
    fn take_dirty(&mut self, f: &mut dyn FnMut(u64)) {
        if let Err(e) = crate::vmm::take_dirty(self.vm, f) {
            log::warn!("migrate {}: {e}", self.vm);
        }
    }
}

/// Options of an outgoing migration.
pub struct Outgoing<'a> {
    pub vm: &'a str,
    pub target: Ipv4Address,
    pub port: u16,
    pub downtime_ms: u64,
    pub bandwidth_mib: Option<u64>,
    /// Fault tolerance's initial copy: after the commit the guest stays
    /// here (paused, for the lockstep to resume) and the channel carries
    /// on as the FT log's ([`Outbound::into_channel`]).
    pub keep_running: bool,
}

/// How long a finished migration waits for its close or abort to leave.
pub const CLOSE_GRACE_US: u64 = 200_000;

/// One guest leaving: drives a [`Source`] over its channel, a turn at a
/// time, from the network poll (so it runs in the background as well as
/// under a waiting `migrate` command).
pub struct Outbound {
    vm: String,
    target: Ipv4Address,
    port: u16,
    mem_bytes: u64,
    downtime_us: u64,
    chan: Channel,
    source: Source,
    /// Encoded messages the channel could not take yet (backpressure).
    backlog: alloc::collections::VecDeque<(u8, Vec<u8>)>,
    /// Where Commit ends in the channel's stream, once sealed: Commit may
    /// have reached the destination once that much was handed to TCP.
    commit_end: Option<u64>,
    /// Set by `migrate cancel` or Ctrl-C; acted on at the next turn.
    cancel: Option<String>,
    /// The last progress line, for `migrate status`.
    last_round: Option<String>,
    /// `Some(Ok)` once committed, `Some(Err)` once failed.
    outcome: Option<Result<(), String>>,
    /// When the channel is released however the close went.
    release_at: Option<u64>,
    /// See [`Outgoing::keep_running`].
    keep_running: bool,
    /// The engine's summary once committed.
    summary: Option<migrate::Summary>,
}

impl Outbound {
    /// Starts moving `o.vm`: dirty tracking on, the channel connecting.
    pub fn start(
        stack: &mut Stack,
        key: &netstack::codec::Key,
        nonce: [u8; 32],
        o: &Outgoing<'_>,
    ) -> Result<Outbound, MigrationError> {
        let info = crate::vmm::migration_begin(o.vm).map_err(MigrationError::Vm)?;
        let now = crate::arch::time::now_us();
        let chan = match Channel::connect(stack, (o.target, o.port), key, nonce, options(), now) {
            Ok(c) => c,
            Err(e) => {
                crate::vmm::migration_end(o.vm, false);
                return Err(MigrationError::Network(e));
            }
        };
        let desc = VmDescription {
            vm: String::from(o.vm),
            mem_bytes: info.mem_bytes,
            profile: info.profile,
            devices: crate::vmm::DEVICES
                .iter()
                .map(|d| String::from(*d))
                .collect(),
        };
        let policy = Policy {
            downtime_budget_us: o.downtime_ms * 1000,
            bandwidth_limit: o.bandwidth_mib.map(|m| m << 20),
            ..Policy::default()
        };
        if o.keep_running {
            println!(
                "ft: {}: initial copy ({} MiB) to {}:{}, pause budget {} ms",
                o.vm,
                info.mem_bytes >> 20,
                o.target,
                o.port,
                o.downtime_ms
            );
        } else {
            println!(
                "migrate: {} ({} MiB) to {}:{}, downtime budget {} ms",
                o.vm,
                info.mem_bytes >> 20,
                o.target,
                o.port,
                o.downtime_ms
            );
        }
        Ok(Outbound {
            vm: String::from(o.vm),
            target: o.target,
            port: o.port,
            mem_bytes: info.mem_bytes,
            downtime_us: o.downtime_ms * 1000,
            chan,
            source: Source::new(desc, alloc::vec![(0, info.mem_bytes)], policy, now),
            backlog: Default::default(),
            commit_end: None,
            cancel: None,
            last_round: None,
            outcome: None,
            release_at: None,
            keep_running: o.keep_running,
            summary: None,
        })
    }

    /// The engine's summary (total time, pause) once committed.
    pub fn summary(&self) -> Option<&migrate::Summary> {
        self.summary.as_ref()
    }

    /// The channel of a committed initial copy (fault tolerance): it
    /// carries the log from here on.
    pub fn into_channel(self) -> Channel {
        self.chan
    }

    /// What the progress and error lines start with.
    fn label(&self) -> String {
        if self.keep_running {
            alloc::format!("ft: {}: initial copy", self.vm)
        } else {
            alloc::format!("migrate: {}", self.vm)
        }
    }

    /// The VM being moved.
    pub fn vm(&self) -> &str {
        &self.vm
    }

    /// Committed (`Some(true)`), failed (`Some(false)`) or still going.
    pub fn outcome(&self) -> Option<bool> {
        self.outcome.as_ref().map(|o| o.is_ok())
    }

    /// Asks the migration to stop at its next turn (before the commit the
    /// guest resumes here; after it, nothing can be undone).
    pub fn cancel(&mut self, why: &str) {
        if self.outcome.is_none() {
            self.cancel = Some(String::from(why));
        }
    }

    /// One line for `migrate status`.
    pub fn status(&self) -> String {
        let state = match (&self.outcome, &self.last_round) {
            (Some(Ok(())), _) => String::from("committed"),
            (Some(Err(_)), _) => String::from("failed"),
            (None, _) if self.source.is_paused() => String::from("paused for the switchover"),
            (None, Some(r)) => r.clone(),
            (None, None) => String::from("starting"),
        };
        alloc::format!(
            "outgoing {} ({} MiB) to {}:{}: {state}",
            self.vm,
            self.mem_bytes >> 20,
            self.target,
            self.port
        )
    }

    /// Whether Commit may have reached the destination: it was handed to
    /// TCP (not merely queued behind the backlog or the channel).
    fn commit_sent(&self) -> bool {
        self.commit_end
            .is_some_and(|end| self.chan.handed_to_tcp() >= end)
    }

    /// Seals one frame; notes where Commit ends in the stream.
    fn seal(&mut self, ty: u8, payload: &[u8]) -> Result<(), netstack::channel::SendError> {
        self.chan.send(ty, payload)?;
        if ty == Message::Commit.frame_type() {
            self.commit_end = Some(self.chan.sealed_offset());
        }
        Ok(())
    }

    /// Queues `msg` behind the backlog; an error ends the migration.
    fn send_msg(&mut self, msg: &Message) {
        let (ty, payload) = encode(msg);
        if !self.backlog.is_empty() {
            self.backlog.push_back((ty, payload));
            return;
        }
        match self.seal(ty, &payload) {
            Ok(()) => {}
            Err(netstack::channel::SendError::WouldBlock) => self.backlog.push_back((ty, payload)),
            // An Abort that cannot go (the channel is still connecting, or
            // already gone) changes nothing: the destination learns of the
            // end when the channel closes, and the reason the migration
            // ends is the one that made us abort (a cancel, an error), not
            // this send.
            Err(_) if matches!(msg, Message::Abort { .. }) => {}
            Err(e) => {
                self.outcome
                    .get_or_insert(Err(alloc::format!("sending {}: {e}", msg.name())));
            }
        }
    }

    /// One turn: network, engine, guest. True once finished and released.
    pub fn step(&mut self, stack: &mut Stack, now: u64) -> bool {
        if let Some(at) = self.release_at {
            self.chan.poll(stack, now);
            return self.chan.is_closed() || now >= at;
        }
        self.chan.poll(stack, now);
        while let Some((ty, payload)) = self.backlog.pop_front() {
            match self.seal(ty, &payload) {
                Ok(()) => {}
                Err(netstack::channel::SendError::WouldBlock) => {
                    self.backlog.push_front((ty, payload));
                    break;
                }
                Err(e) => {
                    self.outcome
                        .get_or_insert(Err(alloc::format!("sending: {e}")));
                    break;
                }
            }
        }
        let mut acts = Vec::new();
        while let Some((ty, p)) = self.chan.recv(stack) {
            acts.extend(self.source.on_frame(ty, &p, now));
        }
        if self.chan.is_closed() && !self.source.is_finished() {
            let why = self
                .chan
                .close_reason()
                .map(|r| alloc::format!("{r}"))
                .unwrap_or_else(|| String::from("link lost"));
            acts.extend(self.source.on_link_lost(&why));
        } else if self.chan.is_open() && self.backlog.is_empty() && self.outcome.is_none() {
            // Everything queued when the guest pauses adds to its downtime:
            // keep no more unacknowledged than half the budget's worth.
            let unacked = self.chan.unacked_bytes(stack);
            let window = migrate::source::send_window(self.source.bandwidth(now), self.downtime_us);
            let room = self
                .chan
                .tx_limit()
                .saturating_sub(self.chan.queued_bytes())
                .min(window.saturating_sub(unacked))
                .min(ROOM_CAP);
            let backlog: usize = self.backlog.iter().map(|(_, p)| p.len()).sum();
            self.source.set_in_flight((unacked + backlog) as u64);
            let pages = self.mem_bytes / 4096;
            let mut mem = SourceMem {
                vm: &self.vm,
                pages,
            };
            acts.extend(self.source.poll(&mut mem, room, now));
        }
        if let Some(why) = self.cancel.take() {
            acts.extend(self.source.cancel(&why));
        }
        self.run(acts);
        if let Some(outcome) = &self.outcome {
            self.finish(outcome.clone(), stack);
            self.release_at = Some(now + CLOSE_GRACE_US);
        }
        false
    }

    fn run(&mut self, acts: Vec<Action>) {
        let vm = self.vm.clone();
        for a in acts {
            match a {
                Action::Send(msg) => self.send_msg(&msg),
                Action::SlowGuest(level) => {
                    crate::vmm::set_slow(&vm, level);
                    async_line(format_args!(
                        "{}: dirtying faster than the link; slowing the guest (level {level})",
                        self.label()
                    ));
                }
                Action::PauseGuest => crate::vmm::set_paused(&vm, true),
                Action::NeedState => match crate::vmm::save_state(&vm) {
                    Ok((vcpu, devices)) => self.source.provide_state(vcpu, devices),
                    Err(e) => {
                        let e = e.to_string();
                        for a in self.source.cancel(&e) {
                            if let Action::Send(m) = a {
                                let _ = send(&mut self.chan, &m);
                            }
                        }
                        self.outcome.get_or_insert(Err(e));
                    }
                },
                Action::Progress(r) => {
                    let line = alloc::format!(
                        "round {}: {} pages sent ({} zero), {} dirty left, {:.1} MiB/s, estimated downtime {} ms",
                        r.round,
                        r.pages_sent,
                        r.zero_pages,
                        r.dirty_left,
                        r.mib_per_s,
                        r.est_downtime_us / 1000
                    );
                    async_line(format_args!("{}: {line}", self.label()));
                    self.last_round = Some(line);
                }
                Action::Done(s) if self.keep_running => {
                    self.summary = Some(s);
                    self.outcome.get_or_insert(Ok(()));
                }
                Action::Done(s) => {
                    async_line(format_args!(
                        "migrate: {vm} now runs on {}: total {} ms, downtime {} ms, {} rounds, {} KiB sent for {} MiB of RAM ({} zero pages), last round {} KiB, lower bound {} ms",
                        self.target,
                        s.total_us / 1000,
                        s.downtime_us / 1000,
                        s.rounds,
                        s.bytes >> 10,
                        self.mem_bytes >> 20,
                        s.zero_pages,
                        s.last_round_dirty_bytes >> 10,
                        s.lower_bound_us / 1000
                    ));
                    self.outcome.get_or_insert(Ok(()));
                }
                Action::Failed(why) => {
                    self.outcome.get_or_insert(Err(why));
                }
            }
        }
    }

    /// Frees the VM here after a commit, or gives it back to the scheduler.
    fn finish(&mut self, outcome: Result<(), String>, stack: &mut Stack) {
        let vm = self.vm.clone();
        match outcome {
            // The lockstep takes the guest (paused) and the channel over.
            Ok(()) if self.keep_running => {}
            Ok(()) => {
                crate::vmm::migration_end(&vm, true);
                self.chan.close(stack);
            }
            Err(why) if self.keep_running => {
                // Nothing was committed anywhere that runs: the secondary
                // only replays, so the guest goes on here.
                crate::vmm::migration_end(&vm, false);
                async_line(format_args!(
                    "error: ft: {vm}: {}; {vm} keeps running unprotected",
                    crate::text::peer(&why)
                ));
            }
            Err(why) if self.commit_sent() && self.source.is_paused() => {
                // The destination may have started the guest: running it here
                // too could put one guest on two hosts. Leave it paused.
                async_line(format_args!(
                    "error: migrate: {} after the commit: {vm} stays paused here and may be running on {}; check there first",
                    crate::text::peer(&why),
                    self.target
                ));
            }
            Err(why) => {
                crate::vmm::migration_end(&vm, false);
                async_line(format_args!(
                    "error: migrate: {vm}: {}; {vm} keeps running here",
                    crate::text::peer(&why)
                ));
            }
        }
    }

    /// Gives the channel's socket back (after [`Outbound::step`] said done).
    pub fn release(self, stack: &mut Stack) {
        self.chan.release(stack);
    }
}

/// `migrate check`: asks the destination whether `vm` could move there,
/// without moving or reserving anything, and lists every blocker.
pub fn check_out(
    net: &mut crate::net::Net,
    key: &netstack::codec::Key,
    nonce: [u8; 32],
    vm: &str,
    target: Ipv4Address,
    port: u16,
) {
    let (mem_bytes, profile) = match crate::vmm::running_ram(vm)
        .and_then(|b| crate::vmm::profile_of(vm).map(|p| (b, p)))
    {
        Ok(v) => v,
        Err(e) => return println!("error: migrate check: {e}"),
    };
    let now = net.wait_turn();
    let mut chan =
        match Channel::connect(&mut net.stack, (target, port), key, nonce, options(), now) {
            Ok(c) => c,
            Err(e) => return println!("error: migrate check: {e}"),
        };
    let probe = VmDescription {
        vm: String::from(vm),
        mem_bytes,
        profile,
        devices: crate::vmm::DEVICES
            .iter()
            .map(|d| String::from(*d))
            .collect(),
    }
    .probe();
    let (ty, payload) = encode(&probe);
    let deadline = now + 15_000_000;
    let mut sent = false;
    let answer = loop {
        let now = net.wait_turn();
        chan.poll(&mut net.stack, now);
        if chan.is_open() && !sent {
            sent = chan.send(ty, &payload).is_ok();
        }
        if let Some((ty, p)) = chan.recv(&mut net.stack) {
            break decode(ty, &p).map_err(|e| alloc::format!("{e}"));
        }
        if chan.is_closed() {
            break Err(chan
                .close_reason()
                .map(|r| alloc::format!("{r}"))
                .unwrap_or_else(|| String::from("link lost")));
        }
        if now > deadline {
            break Err(String::from("no answer from the destination"));
        }
    };
    match answer {
        Ok(Message::Ready) => println!("migrate check: {vm} can move to {target}"),
        Ok(Message::Refuse { reasons }) => {
            println!("migrate check: {vm} cannot move to {target}:");
            for r in reasons {
                println!("  blocker: {}", crate::text::peer(&r));
            }
        }
        Ok(other) => println!("error: migrate check: unexpected answer {}", other.name()),
        Err(e) => println!("error: migrate check: {}", crate::text::peer(&e)),
    }
    chan.close(&mut net.stack);
    chan.poll(&mut net.stack, crate::arch::time::now_us());
    chan.release(&mut net.stack);
}
