//! Simulated guest memory, host, link and guest workload wiring both engines together.
#![allow(dead_code)]

use std::collections::VecDeque;

use migrate::proto::{self, PAGE_SIZE};
use migrate::{
    Action, Dest, DestAction, DestHost, GuestMemory, GuestMemoryMut, Policy, RoundReport,
    SaveRestore, Source, Summary, VmDescription,
};
use vcpu::profile::{HostOffer, Profile};

/// Source RAM with dirty tracking.
#[derive(Clone)]
pub struct SimMemory {
    pub data: Vec<u8>,
    dirty: Vec<u64>,
}

impl SimMemory {
    pub fn new(pages: u64) -> SimMemory {
        SimMemory {
            data: vec![0; pages as usize * PAGE_SIZE],
            dirty: Vec::new(),
        }
    }
    pub fn write(&mut self, gfn: u64, offset: usize, bytes: &[u8]) {
        let start = gfn as usize * PAGE_SIZE + offset;
        self.data[start..start + bytes.len()].copy_from_slice(bytes);
        self.dirty.push(gfn);
    }
    pub fn zero(&mut self, gfn: u64) {
        let start = gfn as usize * PAGE_SIZE;
        self.data[start..start + PAGE_SIZE].fill(0);
        self.dirty.push(gfn);
    }
}

impl GuestMemory for SimMemory {
    fn page_count(&self) -> u64 {
        (self.data.len() / PAGE_SIZE) as u64
    }
    fn read_page(&self, gfn: u64, buf: &mut [u8; 4096]) {
        let start = gfn as usize * PAGE_SIZE;
        buf.copy_from_slice(&self.data[start..start + PAGE_SIZE]);
    }
    fn take_dirty(&mut self, f: &mut dyn FnMut(u64)) {
        for g in self.dirty.drain(..) {
            f(g);
        }
    }
}

/// Destination RAM, filled with garbage so unwritten pages show.
pub struct DestMemory {
    pub data: Vec<u8>,
}

impl DestMemory {
    pub fn new(pages: u64) -> DestMemory {
        DestMemory {
            data: vec![0xEE; pages as usize * PAGE_SIZE],
        }
    }
}

impl GuestMemoryMut for DestMemory {
    fn page_count(&self) -> u64 {
        (self.data.len() / PAGE_SIZE) as u64
    }
    fn write_page(&mut self, gfn: u64, data: Option<&[u8; 4096]>) {
        let start = gfn as usize * PAGE_SIZE;
        let dst = &mut self.data[start..start + PAGE_SIZE];
        match data {
            Some(d) => dst.copy_from_slice(d),
            None => dst.fill(0),
        }
    }
}

pub struct SimHost {
    pub free: u64,
    pub offer: HostOffer,
    pub devices: Vec<String>,
    /// VMs that exist on this host.
    pub vms: Vec<String>,
    /// Migrations this host runs already (the limit is 2).
    pub migrations: usize,
}

impl SimHost {
    pub fn new(free: u64, offer: HostOffer, devices: Vec<String>) -> SimHost {
        SimHost {
            free,
            offer,
            devices,
            vms: Vec::new(),
            migrations: 0,
        }
    }
}

impl DestHost for SimHost {
    fn free_bytes(&self) -> u64 {
        self.free
    }
    fn cpu_offer(&self) -> HostOffer {
        self.offer
    }
    fn devices(&self) -> Vec<String> {
        self.devices.clone()
    }
    fn blockers(&self, vm: &str) -> Vec<String> {
        let mut r = Vec::new();
        if self.vms.iter().any(|v| v == vm) {
            r.push(format!("a VM named '{vm}' already exists here"));
        }
        if self.migrations >= 2 {
            r.push(format!(
                "this host already runs {} migrations (the limit is 2)",
                self.migrations
            ));
        }
        r
    }
}

/// A device model whose state is a counter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counter {
    pub name: String,
    pub value: u64,
}

impl SaveRestore for Counter {
    fn name(&self) -> &str {
        &self.name
    }
    fn save(&self) -> Vec<u8> {
        self.value.to_le_bytes().to_vec()
    }
    fn restore(&mut self, data: &[u8]) -> Result<(), String> {
        let b: [u8; 8] = data
            .try_into()
            .map_err(|_| format!("{} state: bad length", self.name))?;
        self.value = u64::from_le_bytes(b);
        Ok(())
    }
}

pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// What to do to the n-th frame delivered to the destination.
#[derive(Clone, Copy, Debug)]
pub enum Fault {
    None,
    /// Cut the link (both ends notified) just before delivering frame n.
    CutAt(usize),
    /// Truncate frame n by one byte (or give it an unknown type if empty).
    CorruptAt(usize),
}

pub struct Config {
    pub pages: u64,
    /// Pages the guest writes per simulated ms at full speed.
    pub dirty_per_ms: u64,
    /// Writes go to gfns 0..hot_pages.
    pub hot_pages: u64,
    /// One write in `zero_one_in` zeroes the page instead.
    pub zero_one_in: u64,
    /// Link bytes per simulated ms.
    pub link_bytes_per_ms: u64,
    /// Channel buffer (room) in bytes.
    pub buffer: usize,
    pub policy: Policy,
    pub seed: u64,
    pub fault: Fault,
    /// Pages initialised with random data before the migration.
    pub initial_nonzero: u64,
    /// Tell the source the link's queued bytes before each poll.
    pub report_in_flight: bool,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            pages: 1024,
            dirty_per_ms: 4,
            hot_pages: 256,
            zero_one_in: 8,
            link_bytes_per_ms: 50_000,
            buffer: 300 * 1024,
            policy: Policy {
                downtime_budget_us: 2_000,
                ..Policy::default()
            },
            seed: 1,
            fault: Fault::None,
            initial_nonzero: 512,
            report_in_flight: false,
        }
    }
}

/// A host whose CPU lacks `features` (and the XCR0 components `xcr0`).
pub fn offer_without(features: &[&str], xcr0: u64) -> HostOffer {
    let mut o = HostOffer::everything();
    for f in features {
        o.features.remove(f);
    }
    o.xcr0 &= !xcr0;
    o
}

/// A host CPU with no feature at all.
pub fn bare_offer() -> HostOffer {
    HostOffer {
        features: vcpu::profile::FeatureSet::empty(),
        xcr0: 3,
        signature: 0,
    }
}

pub fn host_for(desc: &VmDescription) -> SimHost {
    SimHost::new(
        desc.mem_bytes * 2,
        HostOffer::everything(),
        desc.devices.clone(),
    )
}

pub fn desc(pages: u64) -> VmDescription {
    VmDescription {
        vm: "web1".into(),
        mem_bytes: pages * PAGE_SIZE as u64,
        profile: Profile::baseline("haswell").unwrap(),
        devices: vec!["serial".into(), "virtio-net".into()],
    }
}

/// The vCPU blob and device states the destination started with.
pub type Started = (Vec<u8>, Vec<(String, Vec<u8>)>);

pub struct Sim {
    pub cfg: Config,
    pub src: Source,
    pub dst: Dest,
    pub smem: SimMemory,
    pub dmem: DestMemory,
    pub host: SimHost,
    pub now_us: u64,
    rng: Rng,
    link: VecDeque<(u64, u8, Vec<u8>)>,
    link_free_at: u64,
    in_flight: usize,
    pub delivered: usize,
    pub wire_bytes: u64,
    pub running: bool,
    pub slow: u8,
    pub slow_seen: Vec<u8>,
    pub reports: Vec<RoundReport>,
    pub done: Option<Summary>,
    pub failed: Option<String>,
    pub discarded: Option<String>,
    /// The destination's `Close` (it ended with nothing reserved).
    pub closed: Option<String>,
    /// The destination asked for a reservation.
    pub reserved: bool,
    pub dest_sent_abort: bool,
    pub devices: Vec<Counter>,
    pub started: Option<Started>,
    pub snapshot: Option<Vec<u8>>,
    pub link_cut: bool,
    pub max_poll_overrun: usize,
}

impl Sim {
    pub fn new(cfg: Config) -> Sim {
        let d = desc(cfg.pages);
        let mut rng = Rng(cfg.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        let mut smem = SimMemory::new(cfg.pages);
        for _ in 0..cfg.initial_nonzero {
            let gfn = rng.below(cfg.pages);
            let v = rng.next().to_le_bytes();
            smem.write(gfn, (rng.below(512) * 8) as usize, &v);
        }
        let host = host_for(&d);
        let src = Source::new(
            d.clone(),
            vec![(0, cfg.pages * PAGE_SIZE as u64)],
            cfg.policy.clone(),
            0,
        );
        let devices = d
            .devices
            .iter()
            .map(|n| Counter {
                name: n.clone(),
                value: rng.next(),
            })
            .collect();
        Sim {
            dmem: DestMemory::new(cfg.pages),
            cfg,
            src,
            dst: Dest::new(),
            smem,
            host,
            now_us: 0,
            rng,
            link: VecDeque::new(),
            link_free_at: 0,
            in_flight: 0,
            delivered: 0,
            wire_bytes: 0,
            running: true,
            slow: 0,
            slow_seen: Vec::new(),
            reports: Vec::new(),
            done: None,
            failed: None,
            discarded: None,
            closed: None,
            reserved: false,
            dest_sent_abort: false,
            devices,
            started: None,
            snapshot: None,
            link_cut: false,
            max_poll_overrun: 0,
        }
    }

    /// How the destination ended without running the guest: its `Discard`
    /// or `Close` reason.
    pub fn dest_end(&self) -> Option<&str> {
        self.discarded.as_deref().or(self.closed.as_deref())
    }

    pub fn finished(&self) -> bool {
        self.src.is_finished() && (self.dst.is_running() || self.dst.is_closed())
    }

    fn guest_runs(&mut self) {
        if !self.running {
            return;
        }
        let n = self.cfg.dirty_per_ms >> self.slow;
        for _ in 0..n {
            let gfn = self.rng.below(self.cfg.hot_pages.min(self.cfg.pages));
            if self.rng.below(self.cfg.zero_one_in) == 0 {
                self.smem.zero(gfn);
            } else {
                let v = self.rng.next().to_le_bytes();
                let off = (self.rng.below(512) * 8) as usize;
                self.smem.write(gfn, off, &v);
            }
        }
        for d in &mut self.devices {
            d.value = d.value.wrapping_add(1);
        }
    }

    fn cut(&mut self) {
        self.link_cut = true;
        self.link.clear();
        self.in_flight = 0;
        let a = self.src.on_link_lost("simulated cable pull");
        self.src_actions(a);
        let d = self.dst.on_link_lost("simulated cable pull");
        self.dest_actions(d);
    }

    fn deliver(&mut self) {
        while let Some(&(at, _, _)) = self.link.front() {
            if at > self.now_us {
                break;
            }
            let Some((_, mut ty, mut payload)) = self.link.pop_front() else {
                break;
            };
            self.in_flight -= payload.len();
            let idx = self.delivered;
            self.delivered += 1;
            match self.cfg.fault {
                Fault::CutAt(n) if n == idx => {
                    self.cut();
                    return;
                }
                Fault::CorruptAt(n) if n == idx => {
                    // Empty payloads cannot be truncated: send an unknown type instead.
                    ty = if payload.pop().is_some() { ty } else { 200 };
                }
                _ => {}
            }
            let acts = self
                .dst
                .on_frame(ty, &payload, Some(&mut self.dmem), &self.host);
            self.dest_actions(acts);
        }
    }

    fn dest_actions(&mut self, acts: Vec<DestAction>) {
        for a in acts {
            match a {
                DestAction::Send(m) => {
                    if matches!(m, migrate::Message::Abort { .. }) {
                        self.dest_sent_abort = true;
                    }
                    if self.link_cut {
                        continue;
                    }
                    // The reverse direction is tiny: deliver at once, through the codec.
                    let (ty, payload) = proto::encode(&m);
                    let now = self.now_us;
                    let acts = self.src.on_frame(ty, &payload, now);
                    self.src_actions(acts);
                }
                DestAction::Reserve { mem_bytes, .. } => {
                    assert_eq!(mem_bytes, self.cfg.pages * PAGE_SIZE as u64);
                    assert!(!self.reserved, "reserved twice");
                    self.reserved = true;
                }
                DestAction::Start { vcpu, devices } => {
                    assert!(self.started.is_none(), "started twice");
                    self.started = Some((vcpu, devices));
                }
                DestAction::Discard(why) => {
                    assert!(self.reserved, "Discard without Reserve: {why}");
                    assert!(self.dest_end().is_none(), "ended twice: {why}");
                    self.discarded = Some(why);
                }
                DestAction::Close(why) => {
                    assert!(!self.reserved, "Close after Reserve: {why}");
                    assert!(self.dest_end().is_none(), "ended twice: {why}");
                    self.closed = Some(why);
                }
            }
        }
    }

    fn src_actions(&mut self, acts: Vec<Action>) {
        for a in acts {
            match a {
                Action::Send(m) => {
                    if self.link_cut {
                        continue;
                    }
                    let (ty, payload) = proto::encode(&m);
                    assert!(payload.len() <= proto::MAX_MESSAGE);
                    assert_eq!(payload.len(), proto::encoded_len(&m));
                    let len = payload.len() as u64;
                    let start = self.link_free_at.max(self.now_us);
                    self.link_free_at = start + (len * 1000).div_ceil(self.cfg.link_bytes_per_ms);
                    self.in_flight += payload.len();
                    self.wire_bytes += len;
                    self.link.push_back((self.link_free_at, ty, payload));
                }
                Action::SlowGuest(l) => {
                    assert_eq!(l, self.slow + 1, "slow levels go up one at a time");
                    self.slow = l;
                    self.slow_seen.push(l);
                }
                Action::PauseGuest => {
                    assert!(self.running);
                    self.running = false;
                    self.snapshot = Some(self.smem.data.clone());
                }
                Action::NeedState => {
                    let vcpu = self.now_us.to_le_bytes().to_vec();
                    let devs = self
                        .devices
                        .iter()
                        .map(|d| (d.name.clone(), d.save()))
                        .collect();
                    self.src.provide_state(vcpu, devs);
                }
                Action::Progress(r) => self.reports.push(r),
                Action::Done(s) => {
                    assert!(self.done.is_none());
                    self.done = Some(s);
                }
                Action::Failed(why) => {
                    assert!(self.failed.is_none());
                    self.failed = Some(why);
                    self.running = true;
                    self.slow = 0;
                }
            }
        }
    }

    fn poll(&mut self) {
        let room = self.cfg.buffer.saturating_sub(self.in_flight);
        if self.cfg.report_in_flight {
            self.src.set_in_flight(self.in_flight as u64);
        }
        let acts = self.src.poll(&mut self.smem, room, self.now_us);
        let sent: usize = acts
            .iter()
            .map(|a| match a {
                Action::Send(m) => proto::encoded_len(m),
                _ => 0,
            })
            .sum();
        // Abort is urgent and allowed past the room.
        let aborting = acts.iter().any(|a| matches!(a, Action::Failed(_)));
        if !aborting {
            assert!(sent <= room, "poll sent {sent} bytes with room {room}");
        }
        let pause = acts.contains(&Action::PauseGuest);
        self.src_actions(acts);
        if pause {
            self.poll();
        }
    }

    /// Runs until both sides finished or `max_ms` simulated ms passed.
    pub fn run(&mut self, max_ms: u64) {
        for _ in 0..max_ms {
            if self.finished() {
                return;
            }
            self.guest_runs();
            self.now_us += 1000;
            self.deliver();
            if !self.link_cut {
                self.poll();
            }
        }
    }
}

/// Round-0 `Pages` of `n` zero pages from `first_gfn`.
pub fn zero_pages(first_gfn: u64, n: u32) -> migrate::proto::Message {
    let mut runs = migrate::proto::PageRuns::new();
    runs.push_zeros(first_gfn, n).unwrap();
    migrate::proto::Message::Pages { round: 0, runs }
}

/// The destination aborted: it told the source why (`needle` in the
/// reason) and freed the RAM, for the same reason.
pub fn expect_abort(out: &[migrate::dest::DestAction], needle: &str) {
    use migrate::dest::DestAction;
    use migrate::proto::Message;
    let [
        DestAction::Send(Message::Abort { reason }),
        DestAction::Discard(why),
    ] = out
    else {
        panic!("expected Abort + Discard, got {out:?}")
    };
    assert!(reason.contains(needle), "{reason:?} lacks {needle:?}");
    assert_eq!(reason, why);
}
