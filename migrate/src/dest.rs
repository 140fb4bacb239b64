//! The destination side of a migration: a sans-IO state machine.
//!
//! The kernel decodes each incoming frame once ([`proto::decode`]), hands
//! the message to [`Dest::on_message`] (or the error to
//! [`Dest::on_bad_frame`]) and carries out the returned [`DestAction`]s in
//! order. It also reports a lost link ([`Dest::on_link_lost`]) and a peer
//! silent for too long ([`Dest::on_timeout`]); the clock is the kernel's.
//! Two actions may fail in the kernel; it then drops the rest of that batch
//! and reports the failure: [`DestAction::Reserve`] → [`Dest::refuse`],
//! [`DestAction::Start`] → [`Dest::start_failed`].
//!
//! The first message decides what the channel is for: `Hello` starts a
//! migration, `Probe` only asks whether one could (answered `Ready` or
//! `Refuse`, nothing reserved). Both are checked by [`check`], which includes
//! the host's own [`DestHost::blockers`].
//!
//! Every path that ends an incoming migration before its guest runs ends
//! with exactly one terminal action: [`DestAction::Discard`] if a
//! [`DestAction::Reserve`] was issued (so the kernel frees the RAM exactly
//! once), [`DestAction::Close`] otherwise (nothing to free: a refused Hello,
//! an answered Probe, a peer gone before Hello). After it, every call
//! returns no action.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;

use crate::GuestMemoryMut;
use crate::names;
use crate::proto::{self, Message, PAGE_SIZE, PageRuns, ProtoError};

/// What the destination host offers.
pub trait DestHost {
    /// RAM available for a new guest, in bytes.
    fn free_bytes(&self) -> u64;
    /// What this host's CPU can give a guest
    /// ([`vcpu::profile::HostOffer::read`] of its CPUID), without
    /// `rdrand` / `rdseed` if this CPU cannot make them exit (as
    /// [`vcpu::profile::Profile::resolve`] would drop them here): the
    /// guest's profile must be a subset of it.
    fn cpu_offer(&self) -> vcpu::profile::HostOffer;
    /// Device models this host implements, by name.
    fn devices(&self) -> Vec<String>;
    /// Reasons specific to this host that it cannot take a guest named `vm`
    /// right now (a VM of that name exists here, the host already runs as
    /// many migrations as it allows...), one per blocker; empty if none.
    /// [`check`] asks for every `Hello` and `Probe` whose name is valid
    /// (so `vm` is always 1-16 letters, digits, `-` or `_`).
    fn blockers(&self, vm: &str) -> Vec<String>;
}

/// What the kernel must do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DestAction {
    /// Give this message to the channel.
    Send(Message),
    /// Reserve the guest's RAM now; on failure drop the rest of the batch and call [`Dest::refuse`].
    Reserve {
        /// VM name.
        vm: String,
        /// Bytes to reserve.
        mem_bytes: u64,
        /// The CPU the guest sees (checked: this host can offer it).
        profile: vcpu::profile::Profile,
    },
    /// After `Commit`: restore the state and run the guest (the next action sends
    /// `Committed`). On failure drop the rest of the batch and call [`Dest::start_failed`].
    Start {
        /// vCPU state blob.
        vcpu: Vec<u8>,
        /// Device states, in `Hello` order.
        devices: Vec<(String, Vec<u8>)>,
    },
    /// The migration ended before the guest ran: free what the
    /// [`DestAction::Reserve`] reserved (if the reservation failed, whatever
    /// part of it exists) and close the channel once the messages before
    /// this one left. Issued exactly once after a `Reserve`, never without
    /// one. The reason is for the log.
    Discard(String),
    /// The migration ended before anything was reserved (a refused `Hello`,
    /// an answered `Probe`, a peer that failed or left before `Hello`):
    /// close the channel once the messages before this one left; nothing to
    /// free. The reason is for the log.
    Close(String),
}

const MIB: u64 = 1024 * 1024;

/// Every reason this host cannot take the guest announced by `hello`, a
/// `Hello` or a `Probe` (empty: it can), the host's
/// [`DestHost::blockers`] included. Peer strings in the reasons are
/// escaped and shortened ([`names::printable`]).
pub fn check(hello: &Message, host: &dyn DestHost) -> Vec<String> {
    let (Message::Hello {
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
    }) = hello
    else {
        return vec![format!("expected Hello or Probe, got {}", hello.name())];
    };
    let mut reasons = Vec::new();
    if let Err(e) = proto::check_version(*version) {
        reasons.push(e.to_string());
    }
    let name_ok = match names::check_vm_name(vm) {
        Ok(()) => true,
        Err(e) => {
            reasons.push(e.to_string());
            false
        }
    };
    if *mem_bytes == 0 || *mem_bytes % PAGE_SIZE as u64 != 0 {
        reasons.push(format!(
            "guest memory size {mem_bytes} bytes is not a positive multiple of 4096"
        ));
    }
    let free = host.free_bytes();
    if *mem_bytes > free {
        reasons.push(format!(
            "not enough memory: the guest needs {} MiB, {} MiB free",
            mem_bytes.div_ceil(MIB),
            free / MIB
        ));
    }
    // One reason for the whole profile: a guest needs all of it, and one
    // line naming every missing feature reads better than one line each
    // (and fits the reason limit where 40 lines would not).
    let missing = profile.missing_on(&host.cpu_offer());
    if !missing.is_empty() {
        reasons.push(format!(
            "CPU profile {}: this host lacks {}",
            profile.name(),
            missing.join(", ")
        ));
    }
    let host_devices = host.devices();
    for (i, d) in devices.iter().enumerate() {
        let shown = names::printable(d, names::SHOWN_CHARS);
        if devices[..i].contains(d) {
            reasons.push(format!("device {shown} listed twice"));
        } else if !host_devices.contains(d) {
            reasons.push(format!("device model {shown} not available on this host"));
        }
    }
    if name_ok {
        reasons.extend(host.blockers(vm));
    }
    reasons
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    AwaitHello,
    AwaitLayout,
    Receiving,
    Final,
    Running,
    Closed,
}

/// One layout region in frames, with its index in the received-page bitmap.
#[derive(Debug, Clone, Copy)]
struct Region {
    first: u64,
    pages: u64,
    offset: u64,
}

/// The destination engine.
#[derive(Debug)]
pub struct Dest {
    phase: Phase,
    /// A `Reserve` was issued and no `Discard` yet.
    reserved: bool,
    /// The channel carried a `Probe` (see [`Dest::answered_probe`]).
    probe: bool,
    vm: String,
    mem_bytes: u64,
    devices: Vec<String>,
    layout: Vec<Region>,
    received: Vec<u64>,
    missing: u64,
    round: u32,
    round_pages: u64,
    vcpu: Option<Vec<u8>>,
    states: Vec<(String, Vec<u8>)>,
}

impl Default for Dest {
    fn default() -> Dest {
        Dest::new()
    }
}

impl Dest {
    /// A destination waiting for `Hello`. Host limits are read from the
    /// [`DestHost`] given with each message.
    pub fn new() -> Dest {
        Dest {
            phase: Phase::AwaitHello,
            reserved: false,
            probe: false,
            vm: String::new(),
            mem_bytes: 0,
            devices: Vec::new(),
            layout: Vec::new(),
            received: Vec::new(),
            missing: 0,
            round: 0,
            round_pages: 0,
            vcpu: None,
            states: Vec::new(),
        }
    }

    /// Whether the guest was started here.
    pub fn is_running(&self) -> bool {
        self.phase == Phase::Running
    }

    /// Whether the migration ended here without starting the guest.
    pub fn is_closed(&self) -> bool {
        self.phase == Phase::Closed
    }

    /// The VM name from an accepted `Hello` (empty before, and if it was
    /// refused or the channel carried a `Probe`): always a valid name.
    pub fn vm(&self) -> &str {
        &self.vm
    }

    /// Whether this channel carried a `Probe` (a `migrate check`), answered
    /// and closed: routine, not an incident.
    pub fn answered_probe(&self) -> bool {
        self.probe
    }

    /// Whether RAM is reserved for a guest that does not run yet: a
    /// `Reserve` was issued and neither `Discard` nor a successful start
    /// followed.
    pub fn has_reservation(&self) -> bool {
        self.reserved && self.phase != Phase::Running
    }

    /// Ends the migration here: `msg` to the source if any, then the one
    /// terminal action (`Discard` if RAM was reserved, else `Close`).
    fn end(&mut self, msg: Option<Message>, why: String) -> Vec<DestAction> {
        self.phase = Phase::Closed;
        let mut out: Vec<DestAction> = msg.into_iter().map(DestAction::Send).collect();
        out.push(if core::mem::take(&mut self.reserved) {
            DestAction::Discard(why)
        } else {
            DestAction::Close(why)
        });
        out
    }

    fn abort(&mut self, reason: String) -> Vec<DestAction> {
        log::warn!("incoming migration of {:?} aborted: {reason}", self.vm);
        self.end(Some(Message::abort(reason.clone())), reason)
    }

    fn region_of(&self, gfn: u64) -> Option<Region> {
        let i = self.layout.partition_point(|r| r.first <= gfn);
        let r = *self.layout.get(i.checked_sub(1)?)?;
        (gfn - r.first < r.pages).then_some(r)
    }

    fn on_hello(&mut self, msg: &Message, host: &dyn DestHost) -> Vec<DestAction> {
        let reasons = check(msg, host);
        let Message::Hello {
            vm,
            mem_bytes,
            devices,
            profile,
            ..
        } = msg
        else {
            return self.abort(format!("expected Hello, got {}", msg.name()));
        };
        if !reasons.is_empty() {
            let why = format!("refused: {}", reasons.join("; "));
            log::warn!("incoming migration {why}");
            return self.end(Some(Message::refuse(reasons)), why);
        }
        self.vm = vm.clone();
        self.mem_bytes = *mem_bytes;
        self.devices = devices.clone();
        self.phase = Phase::AwaitLayout;
        self.reserved = true;
        vec![
            DestAction::Reserve {
                vm: vm.clone(),
                mem_bytes: *mem_bytes,
                profile: profile.clone(),
            },
            DestAction::Send(Message::Ready),
        ]
    }

    fn on_probe(&mut self, msg: &Message, host: &dyn DestHost) -> Vec<DestAction> {
        self.probe = true;
        let reasons = check(msg, host);
        if reasons.is_empty() {
            self.end(Some(Message::Ready), "probe answered: ready".to_string())
        } else {
            let why = format!("probe answered: refused: {}", reasons.join("; "));
            self.end(Some(Message::refuse(reasons)), why)
        }
    }

    fn on_layout(&mut self, regions: &[(u64, u64)]) -> Vec<DestAction> {
        let page = PAGE_SIZE as u64;
        let mut layout = Vec::with_capacity(regions.len());
        let mut end = 0u64;
        let mut total = 0u64;
        for (i, &(gpa, len)) in regions.iter().enumerate() {
            if gpa % page != 0 || len % page != 0 || len == 0 {
                return self.abort(format!(
                    "memory region {i} ({gpa:#x}, {len:#x} bytes) is empty or not page-aligned"
                ));
            }
            let Some(region_end) = gpa.checked_add(len) else {
                return self.abort(format!("memory region {i} at {gpa:#x} overflows"));
            };
            if i > 0 && gpa < end {
                return self.abort(format!(
                    "memory region {i} at {gpa:#x} overlaps or precedes the previous one (ends at {end:#x})"
                ));
            }
            // Pages land by frame number in RAM of `mem_bytes`: a region
            // past its end could never be written, so Commit would wait
            // for pages that cannot arrive.
            if region_end > self.mem_bytes {
                return self.abort(format!(
                    "memory region {i} ends at {region_end:#x}, beyond the {} bytes of guest RAM announced in Hello",
                    self.mem_bytes
                ));
            }
            end = region_end;
            layout.push(Region {
                first: gpa / page,
                pages: len / page,
                offset: total / page,
            });
            total = total.saturating_add(len);
        }
        // Every byte of the guest's RAM must be covered: Commit waits for
        // each page of the layout, so a short layout would start the
        // guest on whatever the reserved frames held.
        if total != self.mem_bytes {
            return self.abort(format!(
                "memory layout covers {total} bytes, but Hello announced {} bytes of guest RAM",
                self.mem_bytes
            ));
        }
        let pages = total / page;
        self.received = vec![0u64; pages.div_ceil(64) as usize];
        self.missing = pages;
        self.layout = layout;
        self.phase = Phase::Receiving;
        Vec::new()
    }

    fn on_pages(
        &mut self,
        round: u32,
        runs: &PageRuns,
        mem: Option<&mut dyn GuestMemoryMut>,
    ) -> Vec<DestAction> {
        if round != self.round {
            return self.abort(format!(
                "Pages for round {round} during round {}",
                self.round
            ));
        }
        let Some(mem) = mem else {
            return self.abort("no reserved memory to write pages into".to_string());
        };
        let limit = mem.page_count();
        for (gfn, page) in runs.pages() {
            let Some(region) = self.region_of(gfn) else {
                return self.abort(format!("page gfn {gfn:#x} is outside the memory layout"));
            };
            if gfn >= limit {
                return self.abort(format!(
                    "page gfn {gfn:#x} is beyond the {limit} reserved pages"
                ));
            }
            mem.write_page(gfn, page.data());
            let bit = region.offset + (gfn - region.first);
            let (word, mask) = ((bit / 64) as usize, 1u64 << (bit % 64));
            if let Some(w) = self.received.get_mut(word)
                && *w & mask == 0
            {
                *w |= mask;
                self.missing -= 1;
            }
            self.round_pages += 1;
        }
        Vec::new()
    }

    /// Handles a message from the source. `mem` is the reserved RAM (needed for `Pages`).
    pub fn on_message(
        &mut self,
        msg: Message,
        mem: Option<&mut dyn GuestMemoryMut>,
        host: &dyn DestHost,
    ) -> Vec<DestAction> {
        use Phase::*;
        match (self.phase, msg) {
            (Closed, m) => {
                log::debug!("migration message {} after the end, ignored", m.name());
                Vec::new()
            }
            (Running, m) => {
                log::warn!("migration message {} after Commit, ignored", m.name());
                Vec::new()
            }
            (_, Message::Abort { reason }) => self.end(None, format!("source aborted: {reason}")),
            (AwaitHello, m @ Message::Hello { .. }) => self.on_hello(&m, host),
            (AwaitHello, m @ Message::Probe { .. }) => self.on_probe(&m, host),
            (AwaitHello, m) => self.abort(format!("{} before Hello", m.name())),
            (_, Message::Hello { .. }) => self.abort("second Hello during a migration".to_string()),
            (_, Message::Probe { .. }) => self.abort("probe after Hello".to_string()),
            (AwaitLayout, Message::MemoryLayout { regions }) => self.on_layout(&regions),
            (_, Message::MemoryLayout { .. }) => {
                self.abort(format!("MemoryLayout in phase {:?}", self.phase))
            }
            (Receiving | Final, Message::Pages { round, runs }) => self.on_pages(round, &runs, mem),
            (AwaitLayout, Message::Pages { .. }) => {
                self.abort("Pages before MemoryLayout".to_string())
            }
            (
                Receiving | Final,
                Message::RoundEnd {
                    round, pages_sent, ..
                },
            ) => {
                if round != self.round {
                    return self.abort(format!(
                        "RoundEnd for round {round} during round {}",
                        self.round
                    ));
                }
                if pages_sent != self.round_pages {
                    return self.abort(format!(
                        "round {round}: the source sent {pages_sent} pages, {} arrived",
                        self.round_pages
                    ));
                }
                self.round = self.round.saturating_add(1);
                self.round_pages = 0;
                Vec::new()
            }
            (Receiving, Message::Pause) => {
                if self.round_pages != 0 {
                    return self.abort(format!("Pause in the middle of round {}", self.round));
                }
                self.phase = Final;
                Vec::new()
            }
            (Final, Message::VcpuState(data)) => {
                if self.vcpu.is_some() {
                    return self.abort("second VcpuState".to_string());
                }
                self.vcpu = Some(data);
                Vec::new()
            }
            (Final, Message::DeviceState { name, data }) => {
                if !self.devices.contains(&name) {
                    let name = names::printable(&name, names::SHOWN_CHARS);
                    return self.abort(format!("state for device {name}, not listed in Hello"));
                }
                if self.states.iter().any(|(n, _)| *n == name) {
                    let name = names::printable(&name, names::SHOWN_CHARS);
                    return self.abort(format!("second state for device {name}"));
                }
                self.states.push((name, data));
                Vec::new()
            }
            (Final, Message::Commit) => self.on_commit(),
            (_, Message::Commit) => self.abort(format!(
                "Commit before the guest was paused (phase {:?})",
                self.phase
            )),
            (phase, m @ (Message::VcpuState(_) | Message::DeviceState { .. })) => {
                self.abort(format!("{} before Pause (phase {phase:?})", m.name()))
            }
            (phase, m) => self.abort(format!("unexpected {} in phase {phase:?}", m.name())),
        }
    }

    fn on_commit(&mut self) -> Vec<DestAction> {
        if self.round_pages != 0 {
            return self.abort(format!("Commit in the middle of round {}", self.round));
        }
        if self.missing != 0 {
            return self.abort(format!("Commit with {} pages never received", self.missing));
        }
        let Some(vcpu) = self.vcpu.take() else {
            return self.abort("Commit before the vCPU state".to_string());
        };
        let mut devices = Vec::with_capacity(self.devices.len());
        for name in &self.devices {
            match self.states.iter().position(|(n, _)| n == name) {
                Some(i) => devices.push(self.states.swap_remove(i)),
                None => {
                    let reason = format!("Commit before the state of device {name}");
                    return self.abort(reason);
                }
            }
        }
        self.phase = Phase::Running;
        log::info!("incoming migration of {:?} committed", self.vm);
        vec![
            DestAction::Start { vcpu, devices },
            DestAction::Send(Message::Committed),
        ]
    }

    /// Decodes a frame and handles it; a malformed frame aborts the migration.
    pub fn on_frame(
        &mut self,
        ty: u8,
        payload: &[u8],
        mem: Option<&mut dyn GuestMemoryMut>,
        host: &dyn DestHost,
    ) -> Vec<DestAction> {
        match proto::decode(ty, payload) {
            Ok(msg) => self.on_message(msg, mem, host),
            Err(e) => self.on_bad_frame(&e),
        }
    }

    /// A frame from the source failed to decode: refuse it if it came
    /// instead of `Hello` or `Probe`, abort otherwise (unless the guest
    /// already runs here).
    pub fn on_bad_frame(&mut self, err: &ProtoError) -> Vec<DestAction> {
        // A peer of another version is not malformed: its Hello is
        // refused by version before the fields its version lays out.
        let why = match err {
            ProtoError::Version { .. } => err.to_string(),
            _ => format!("malformed message from the source: {err}"),
        };
        match self.phase {
            Phase::Running | Phase::Closed => Vec::new(),
            Phase::AwaitHello => {
                log::warn!("incoming migration refused: {why}");
                self.end(Some(Message::refuse(vec![why.clone()])), why)
            }
            _ => self.abort(why),
        }
    }

    /// The kernel could not reserve the RAM after [`DestAction::Reserve`]:
    /// refuse (and `Discard`, for whatever part of the reservation exists).
    pub fn refuse(&mut self, reason: &str) -> Vec<DestAction> {
        if self.phase != Phase::AwaitLayout {
            return Vec::new();
        }
        self.end(
            Some(Message::refuse(vec![reason.to_string()])),
            format!("refused: {reason}"),
        )
    }

    /// The source has been silent longer than the kernel allows: abort
    /// (unless the guest already runs here or the migration ended).
    pub fn on_timeout(&mut self, why: &str) -> Vec<DestAction> {
        match self.phase {
            Phase::Running | Phase::Closed => Vec::new(),
            _ => self.abort(format!("timed out: {why}")),
        }
    }

    /// Restoring or starting the guest failed after [`DestAction::Start`]: abort.
    pub fn start_failed(&mut self, reason: &str) -> Vec<DestAction> {
        if self.phase != Phase::Running {
            return Vec::new();
        }
        self.abort(format!("start failed: {reason}"))
    }

    /// The channel broke: free everything unless the guest already runs here.
    pub fn on_link_lost(&mut self, why: &str) -> Vec<DestAction> {
        match self.phase {
            Phase::Running | Phase::Closed => Vec::new(),
            _ => self.end(None, format!("link lost: {why}")),
        }
    }
}
