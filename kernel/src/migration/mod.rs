//! Live migration over the host network: the `migrate` commands, the
//! source loop that drives [`migrate::Source`] and the destination service
//! that drives one [`migrate::Dest`] per incoming guest.
//!
//! Frames travel on an authenticated [`netstack::channel::Channel`]; the VM
//! manager ([`crate::vm`]) supplies pages, dirty sets, pause and state. The
//! destination owns nothing until `Commit`: an incoming guest is a VM in
//! state `incoming`, freed again on any abort or lost link.

use alloc::string::String;
use alloc::vec::Vec;

use migrate::dest::{Dest, DestAction, DestHost};
use migrate::proto::{CpuFeature, Message, decode, encode};
use migrate::source::{Action, Policy, Source, VmDescription};
use migrate::{GuestMemory, GuestMemoryMut};
use netstack::channel::{Channel, ChannelOptions, Listener};
use netstack::stack::{Ipv4Address, Stack};

use crate::events::emit as async_line;
use crate::println;

pub use migrate::DEFAULT_PORT as MIGRATE_PORT;

/// How long an incoming migration may go without a frame before the guest
/// runs here. A source always has something to send (pages, a round's
/// end, the state) or is waiting for our answer, which we give at once;
/// TCP keep-alive notices a dead peer, this one a live but silent one.
pub const IDLE_TIMEOUT_US: u64 = 30_000_000;

/// Migrations (incoming and outgoing together) a host runs at once.
pub const MAX_MIGRATIONS: usize = 2;

/// Largest frame a migration channel carries (page messages are built to
/// at most [`ROOM_CAP`]; state and control messages are small).
const MAX_FRAME: u32 = 256 * 1024;
/// Most message bytes the source hands the channel in one turn.
const ROOM_CAP: usize = 128 * 1024;

fn options() -> ChannelOptions {
    ChannelOptions {
        max_payload: MAX_FRAME,
        timeout_us: 5_000_000,
        tx_limit: 512 * 1024,
    }
}

/// The CPU features a guest sees here (CPUID passes them through).
pub fn cpu_features() -> u64 {
    let (_, _, c1, _) = crate::arch::cpuid(1, 0);
    let (_, b7, _, _) = if crate::arch::cpuid(0, 0).0 >= 7 {
        crate::arch::cpuid(7, 0)
    } else {
        (0, 0, 0, 0)
    };
    let bit = |reg: u32, n: u32, f: u64| if reg & (1 << n) != 0 { f } else { 0 };
    bit(c1, 0, CpuFeature::SSE3)
        | bit(c1, 9, CpuFeature::SSSE3)
        | bit(c1, 19, CpuFeature::SSE4_1)
        | bit(c1, 20, CpuFeature::SSE4_2)
        | bit(c1, 23, CpuFeature::POPCNT)
        | bit(c1, 25, CpuFeature::AES)
        | bit(c1, 1, CpuFeature::PCLMULQDQ)
        | bit(c1, 28, CpuFeature::AVX)
        | bit(b7, 5, CpuFeature::AVX2)
        | bit(c1, 12, CpuFeature::FMA)
        | bit(b7, 3, CpuFeature::BMI1)
        | bit(b7, 8, CpuFeature::BMI2)
        | bit(c1, 30, CpuFeature::RDRAND)
        | bit(b7, 18, CpuFeature::RDSEED)
        | bit(c1, 26, CpuFeature::XSAVE)
        | bit(c1, 17, CpuFeature::PCID)
}

/// This host as an incoming migration sees it; `active`: migrations running
/// here (incoming past Hello and outgoing).
struct ThisHost {
    active: usize,
}

impl DestHost for ThisHost {
    fn free_bytes(&self) -> u64 {
        crate::vmm::free_ram_bytes()
    }
    fn cpu_features(&self) -> u64 {
        cpu_features()
    }
    fn devices(&self) -> Vec<String> {
        crate::vmm::DEVICES
            .iter()
            .map(|d| String::from(*d))
            .collect()
    }
    fn blockers(&self, vm: &str) -> Vec<String> {
        let mut r = Vec::new();
        if crate::vmm::exists(vm) {
            r.push(alloc::format!("a VM named '{vm}' already exists here"));
        }
        if self.active >= MAX_MIGRATIONS {
            r.push(alloc::format!(
                "this host already runs {} migrations (the limit is {MAX_MIGRATIONS})",
                self.active
            ));
        }
        r
    }
}

/// The source's view of a migrating VM's RAM.
struct SourceMem<'a> {
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

/// The destination's view of an incoming VM's RAM.
struct IncomingMem {
    vm: String,
}

impl GuestMemoryMut for IncomingMem {
    fn page_count(&self) -> u64 {
        crate::vmm::incoming_pages(&self.vm)
    }
    fn write_page(&mut self, gfn: u64, data: Option<&[u8; 4096]>) {
        crate::vmm::write_incoming_page(&self.vm, gfn, data);
    }
}

/// One guest arriving.
struct Incoming {
    chan: Channel,
    dest: Dest,
    /// When the vCPU state arrived. The guest's TSC in it was read when it
    /// left the source (the pause up to then included); the time from here
    /// to the start is added to it.
    paused_at_us: Option<u64>,
    /// When the last frame arrived (or the connection was accepted): a
    /// peer silent for [`IDLE_TIMEOUT_US`] before the guest runs here is
    /// given up on and its reservation freed.
    heard_at_us: u64,
    /// Answered and closing (a refusal or a check): no more frames taken.
    answered: bool,
    done: bool,
}

/// `migrate listen`: accepts migrations while a key is set.
pub struct MigrationService {
    listener: Listener,
    incoming: Vec<Incoming>,
}

fn send(chan: &mut Channel, msg: &Message) -> Result<(), String> {
    let (ty, payload) = encode(msg);
    chan.send(ty, &payload).map_err(|e| alloc::format!("{e}"))
}

fn peer(chan: &Channel) -> String {
    chan.peer()
        .map(|p| alloc::format!("{p}"))
        .unwrap_or_else(|| String::from("?"))
}

impl MigrationService {
    /// Listens on [`MIGRATE_PORT`].
    pub fn new(stack: &mut Stack, max_pending: usize) -> Result<MigrationService, String> {
        Ok(MigrationService {
            listener: Listener::new(stack, MIGRATE_PORT, max_pending)
                .map_err(|e| alloc::format!("{e}"))?,
            incoming: Vec::new(),
        })
    }

    /// Migrations in progress.
    pub fn busy(&self) -> bool {
        !self.incoming.is_empty()
    }

    /// One line per incoming migration.
    pub fn status(&self) -> Vec<String> {
        self.incoming
            .iter()
            .map(|i| {
                alloc::format!(
                    "incoming {} from {}: {}",
                    if i.dest.vm().is_empty() {
                        String::from("?")
                    } else {
                        crate::text::peer(i.dest.vm())
                    },
                    peer(&i.chan),
                    if i.dest.is_running() {
                        "running here"
                    } else {
                        "receiving"
                    }
                )
            })
            .collect()
    }

    /// Incoming migrations past their Hello and not finished.
    pub fn active(&self) -> usize {
        self.incoming
            .iter()
            .filter(|i| !i.dest.vm().is_empty() && !i.dest.is_closed() && !i.done && !i.answered)
            .count()
    }

    /// Accepts, receives and starts guests; call after every stack poll.
    pub fn poll(
        &mut self,
        stack: &mut Stack,
        key: &netstack::codec::Key,
        nonce: &mut dyn FnMut() -> [u8; 32],
        now: u64,
        outgoing: usize,
    ) {
        loop {
            let pending = self.incoming.iter().filter(|i| i.chan.is_pending()).count();
            let Some(h) = self.listener.accept(stack, pending, now) else {
                break;
            };
            let chan = Channel::accept(stack, h, key, nonce(), options(), now);
            self.incoming.push(Incoming {
                chan,
                dest: Dest::new(),
                paused_at_us: None,
                heard_at_us: now,
                answered: false,
                done: false,
            });
        }
        // Guests leaving count against the same per-host limit.
        let mut active = self.active() + outgoing;
        for inc in &mut self.incoming {
            inc.chan.poll(stack, now);
            if inc.answered {
                inc.done |= inc.chan.is_closed();
                continue;
            }
            let mut actions = Vec::new();
            while let Some((ty, payload)) = inc.chan.recv(stack) {
                inc.heard_at_us = now;
                // Decoded once; Hello, Probe and their refusals are the
                // Dest's (with this host's blockers).
                let msg = decode(ty, &payload);
                if let Ok(Message::VcpuState(_)) = &msg {
                    inc.paused_at_us = Some(now);
                }
                let host = ThisHost { active };
                let vm = String::from(inc.dest.vm());
                let mut mem = IncomingMem { vm };
                let acts = match msg {
                    Ok(m) => inc.dest.on_message(m, Some(&mut mem), &host),
                    Err(e) => inc.dest.on_bad_frame(&e),
                };
                if acts.iter().any(|a| matches!(a, DestAction::Reserve { .. })) {
                    active += 1;
                    async_line(format_args!(
                        "migrate: incoming guest from {}",
                        peer(&inc.chan)
                    ));
                }
                actions.extend(acts);
                if !run_dest_actions(inc, stack, &mut actions, now) || inc.answered {
                    break;
                }
            }
            if inc.answered {
                continue;
            }
            if !inc.chan.is_closed()
                && !inc.dest.is_closed()
                && !inc.dest.is_running()
                && now.saturating_sub(inc.heard_at_us) >= IDLE_TIMEOUT_US
            {
                let why = alloc::format!(
                    "the source sent nothing for {} s",
                    IDLE_TIMEOUT_US / 1_000_000
                );
                let mut acts = inc.dest.on_timeout(&why);
                run_dest_actions(inc, stack, &mut acts, now);
                // Whatever the peer does now, the channel goes.
                inc.chan.close(stack);
            }
            if inc.chan.is_closed() && !inc.dest.is_closed() && !inc.dest.is_running() {
                let why = inc
                    .chan
                    .close_reason()
                    .map(|r| alloc::format!("{r}"))
                    .unwrap_or_else(|| String::from("link lost"));
                let mut acts = inc.dest.on_link_lost(&why);
                run_dest_actions(inc, stack, &mut acts, now);
            }
            if inc.chan.is_closed() {
                inc.done = true;
            }
        }
        let mut i = 0;
        while i < self.incoming.len() {
            if self.incoming[i].done {
                let inc = self.incoming.swap_remove(i);
                inc.chan.release(stack);
            } else {
                i += 1;
            }
        }
    }

    /// Stops listening; incoming guests not yet committed are discarded.
    pub fn close(self, stack: &mut Stack) {
        for mut inc in self.incoming {
            if inc.dest.has_reservation() {
                let vm = String::from(inc.dest.vm());
                crate::vmm::discard_incoming(&vm);
            }
            inc.chan.close(stack);
            inc.chan.release(stack);
        }
        self.listener.close(stack);
    }
}

/// Carries out destination actions in order; false if the rest of the
/// batch was dropped (a reservation or start failed).
fn run_dest_actions(
    inc: &mut Incoming,
    stack: &mut Stack,
    acts: &mut Vec<DestAction>,
    now: u64,
) -> bool {
    let mut queue: Vec<DestAction> = core::mem::take(acts);
    let mut ok = true;
    while !queue.is_empty() {
        let a = queue.remove(0);
        match a {
            DestAction::Send(msg) => {
                if let Err(e) = send(&mut inc.chan, &msg) {
                    log::warn!(
                        "migrate: sending {} to {}: {e}",
                        msg.name(),
                        peer(&inc.chan)
                    );
                }
            }
            DestAction::Reserve { vm, mem_bytes } => {
                if let Err(e) = crate::vmm::reserve_incoming(&vm, mem_bytes) {
                    async_line(format_args!(
                        "migrate: refusing {} from {}: {}",
                        crate::text::peer(&vm),
                        peer(&inc.chan),
                        crate::text::peer(&e)
                    ));
                    queue = inc.dest.refuse(&e);
                    ok = false;
                } else {
                    log::info!(
                        "migrate: {vm}: {} MiB reserved for the incoming guest",
                        mem_bytes >> 20
                    );
                }
            }
            DestAction::Start { vcpu, devices } => {
                let vm = String::from(inc.dest.vm());
                let paused_us = inc.paused_at_us.map_or(0, |t| now.saturating_sub(t));
                match crate::vmm::start_incoming(&vm, &vcpu, &devices, paused_us) {
                    Ok(()) => {
                        async_line(format_args!(
                            "migrate: {vm} from {} now runs here (gratuitous ARP for its MAC: the guest has no NIC yet)",
                            peer(&inc.chan)
                        ));
                    }
                    Err(e) => {
                        async_line(format_args!(
                            "migrate: cannot start {}: {}",
                            crate::text::peer(&vm),
                            crate::text::peer(&e)
                        ));
                        // start_failed yields the Discard that frees the RAM.
                        queue = inc.dest.start_failed(&e);
                        ok = false;
                    }
                }
            }
            DestAction::Close(reason) => {
                // Nothing was reserved: a refused Hello, an answered probe
                // (`migrate check`, routine: logged only), a peer gone or
                // silent before its Hello.
                let reason = crate::text::peer(&reason);
                if inc.dest.answered_probe() {
                    log::info!("migrate: {}: {reason}", peer(&inc.chan));
                } else {
                    async_line(format_args!("migrate: {}: {reason}", peer(&inc.chan)));
                }
                // Released once the answer and the close have left.
                inc.chan.close(stack);
                inc.answered = true;
                inc.done |= inc.chan.is_closed();
            }
            DestAction::Discard(reason) => {
                // Only after a Reserve: the name is an accepted Hello's, valid.
                let vm = inc.dest.vm();
                crate::vmm::discard_incoming(vm);
                async_line(format_args!(
                    "migrate: incoming {vm} from {} discarded: {}",
                    peer(&inc.chan),
                    crate::text::peer(&reason)
                ));
                inc.chan.close(stack);
            }
        }
    }
    ok
}

/// Options of an outgoing migration.
pub struct Outgoing<'a> {
    pub vm: &'a str,
    pub target: Ipv4Address,
    pub port: u16,
    pub downtime_ms: u64,
    pub bandwidth_mib: Option<u64>,
}

/// How long a finished migration waits for its close or abort to leave.
const CLOSE_GRACE_US: u64 = 200_000;

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
}

impl Outbound {
    /// Starts moving `o.vm`: dirty tracking on, the channel connecting.
    pub fn start(
        net: &mut crate::net::Net,
        key: &netstack::codec::Key,
        nonce: [u8; 32],
        o: &Outgoing<'_>,
    ) -> Result<Outbound, String> {
        let info = crate::vmm::migration_begin(o.vm)?;
        let now = crate::arch::time::now_us();
        let chan = match Channel::connect(
            &mut net.stack,
            (o.target, o.port),
            key,
            nonce,
            options(),
            now,
        ) {
            Ok(c) => c,
            Err(e) => {
                crate::vmm::migration_end(o.vm, false);
                return Err(alloc::format!("{e}"));
            }
        };
        let desc = VmDescription {
            vm: String::from(o.vm),
            mem_bytes: info.mem_bytes,
            cpu_features: cpu_features(),
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
        println!(
            "migrate: {} ({} MiB) to {}:{}, downtime budget {} ms",
            o.vm,
            info.mem_bytes >> 20,
            o.target,
            o.port,
            o.downtime_ms
        );
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
        })
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
                        "migrate: {vm}: dirtying faster than the link; slowing the guest (level {level})"
                    ));
                }
                Action::PauseGuest => crate::vmm::set_paused(&vm, true),
                Action::NeedState => match crate::vmm::save_state(&vm) {
                    Ok((vcpu, devices)) => self.source.provide_state(vcpu, devices),
                    Err(e) => {
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
                    async_line(format_args!("migrate: {vm}: {line}"));
                    self.last_round = Some(line);
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
            Ok(()) => {
                crate::vmm::migration_end(&vm, true);
                self.chan.close(stack);
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
    let mem_bytes = match crate::vmm::running_ram(vm) {
        Ok(b) => b,
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
        cpu_features: cpu_features(),
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
