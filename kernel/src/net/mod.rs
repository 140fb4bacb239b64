//! The host network: the e1000 found on PCI, the `netstack` interface on
//! it, the channel key, and the `net` console commands.
//!
//! One NIC, polled: from the console loop between keystrokes and guest
//! slices, and continuously while a command (ping, bench) waits on it.
//!
//! Services of other subsystems (live migration) run on it through the
//! [`Service`] trait: the network polls what is registered and knows
//! nothing of what it does, so dependencies point one way (migration uses
//! the network, never the reverse).

use alloc::boxed::Box;
use alloc::string::String;
use alloc::vec::Vec;
use core::any::Any;
use core::fmt::Write;

use netstack::bench::{BenchSender, BenchStatus, Sink, SinkEvent};
use netstack::codec::Key;
use netstack::filter::{Filter, Filtered};
use netstack::nic::Nic;
use netstack::stack::{IpConfig, Ipv4Address, Ping, PingEvent, Stack};
use spin::Mutex;

use crate::drivers::e1000::{Dma, DmaRegion, E1000, Regs};
use crate::drivers::pci::{Bar, ConfigSpace, Function};
use crate::println;

mod error;

pub use error::NetError;

/// Intel 82540EM, as QEMU and Bochs emulate it.
const E1000_IDS: (u16, u16) = (0x8086, 0x100e);

/// BAR0 of the e1000: 128 KiB of registers, identity-mapped uncached by
/// the kernel's page tables (all non-RAM below 4 GiB is).
struct Bar0 {
    base: u64,
}

impl Regs for Bar0 {
    fn read(&mut self, offset: u32) -> u32 {
        // SAFETY: base is the e1000's BAR0 (a 128 KiB register window below
        // 4 GiB, mapped uncached), the driver passes offsets inside it, and
        // registers are 32-bit aligned.
        unsafe { core::ptr::read_volatile((self.base + u64::from(offset)) as *const u32) }
    }
    fn write(&mut self, offset: u32, value: u32) {
        // SAFETY: as read.
        unsafe { core::ptr::write_volatile((self.base + u64::from(offset)) as *mut u32, value) }
    }
}

/// DMA memory from the frame allocator (physical = virtual).
struct FrameDma;

impl Dma for FrameDma {
    fn alloc(&mut self, bytes: usize) -> Option<DmaRegion> {
        let frames = bytes.div_ceil(4096);
        let pa = crate::mm::FRAMES
            .lock()
            .as_mut()?
            .alloc_contiguous(frames, 4096)?
            .as_u64();
        let ptr = pa as *mut u8;
        // SAFETY: the frames were just allocated (free, so no one else
        // uses them) and RAM is identity-mapped writable.
        unsafe { core::ptr::write_bytes(ptr, 0, frames * 4096) };
        Some(DmaRegion {
            phys: pa,
            ptr,
            len: frames * 4096,
        })
    }
}

struct HostNic(E1000<Bar0>);

impl Nic for HostNic {
    fn mac(&self) -> [u8; 6] {
        self.0.mac()
    }
    fn link_up(&mut self) -> bool {
        self.0.link_up()
    }
    fn receive(&mut self, buf: &mut [u8]) -> Option<usize> {
        self.0.receive(buf)
    }
    fn can_transmit(&mut self) -> bool {
        self.0.can_transmit()
    }
    fn transmit(&mut self, frame: &[u8]) -> bool {
        self.0.transmit(frame).is_ok()
    }
}

/// What one turn of a [`Service`] left behind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Turn {
    /// Work in progress: the console loop should poll again soon rather
    /// than sleep until the next tick.
    pub busy: bool,
    /// The service has sockets that may have queued frames: the network
    /// sends them this turn rather than the next.
    pub queued: bool,
}

/// A service of another subsystem that runs on the network in the
/// background (live migration), registered with [`Net::add_service`].
pub trait Service: Any + Send {
    /// One turn, after the NIC was polled: `key` is the channel key (none
    /// set: `None`), `nonce` draws fresh channel nonces, `now` is the time
    /// in microseconds.
    fn poll(
        &mut self,
        stack: &mut Stack,
        key: Option<&Key>,
        nonce: &mut dyn FnMut() -> [u8; 32],
        now: u64,
    ) -> Turn;
}

/// The host network (one NIC) and the services on it.
pub struct Net {
    nic: HostNic,
    pub(crate) stack: Stack,
    key: Option<Key>,
    sink: Option<Sink>,
    /// Other subsystems' services, polled every turn in order.
    services: Vec<Box<dyn Service>>,
    pci: String,
    /// Unauthenticated connections each listener keeps (`net.max_pending`).
    max_pending: usize,
    /// `net filter`: addresses whose frames are dropped.
    filter: Filter,
}

/// One poll of `stack` on `nic`, every frame through `filter`.
fn poll_stack(stack: &mut Stack, nic: &mut HostNic, filter: &mut Filter, now: u64) -> bool {
    stack.poll(&mut Filtered { nic, filter }, now)
}

impl Net {
    fn poll(&mut self) -> u64 {
        let now = crate::arch::time::now_us();
        poll_stack(&mut self.stack, &mut self.nic, &mut self.filter, now);
        now
    }

    /// The channel key, or the error line for the operator.
    pub fn channel_key(&self) -> Result<Key, NetError> {
        self.key.clone().ok_or(NetError::NoKey)
    }

    /// What a listening service needs: a key and an address.
    pub fn can_listen(&self) -> Result<(), NetError> {
        self.channel_key()?;
        match self.stack.ip() {
            Some(_) => Ok(()),
            None => Err(NetError::NoAddress),
        }
    }

    /// Unauthenticated connections a listener may keep (`net.max_pending`).
    pub fn max_pending(&self) -> usize {
        self.max_pending
    }

    /// Registers a background service; it is polled every turn from now on.
    pub fn add_service(&mut self, service: Box<dyn Service>) {
        self.services.push(service);
    }

    /// The service of type `T`, registered (its default) at first use.
    pub fn service<T: Service + Default>(&mut self) -> &mut T {
        if self.service_mut::<T>().is_none() {
            self.add_service(Box::new(T::default()));
        }
        match self.service_mut::<T>() {
            Some(s) => s,
            None => unreachable!("the service was registered just above"),
        }
    }

    /// The registered service of type `T`, if there is one.
    pub fn service_mut<T: Service>(&mut self) -> Option<&mut T> {
        self.services
            .iter_mut()
            .find_map(|s| (&mut **s as &mut dyn Any).downcast_mut::<T>())
    }
}

static NET: Mutex<Option<Net>> = Mutex::new(None);
/// Why there is no network, for `net show`.
static ABSENT: Mutex<Option<NetError>> = Mutex::new(None);

/// Finds the e1000, brings it up and applies the boot configuration.
pub fn init(
    pci: &[Function],
    cs: &mut dyn ConfigSpace,
    ip: Option<IpConfig>,
    key: Option<Key>,
    max_pending: usize,
) {
    let r = bring_up(pci, cs);
    match r {
        Ok(mut net) => {
            net.max_pending = max_pending;
            net.stack
                .set_memory_budget(crate::mm::heap_free, crate::mm::HEAP_RESERVE);
            if let Some(ip) = ip {
                net.stack.set_ip(ip);
                net.stack.announce(&mut net.nic);
            }
            net.key = key;
            let mac = net.nic.mac();
            log::info!(
                "net: e1000 at {}, mac {}, link {}, ip {}",
                net.pci,
                fmt_mac(mac),
                if net.nic.link_up() { "up" } else { "down" },
                ip.map(|c| alloc::format!("{c}"))
                    .unwrap_or_else(|| "none".into())
            );
            *NET.lock() = Some(net);
        }
        Err(why) => {
            log::warn!("net: {why}");
            *ABSENT.lock() = Some(why);
        }
    }
}

fn bring_up(pci: &[Function], cs: &mut dyn ConfigSpace) -> Result<Net, NetError> {
    let f = pci
        .iter()
        .find(|f| (f.vendor_id, f.device_id) == E1000_IDS)
        .ok_or(NetError::NoNic)?;
    let base = f
        .bars
        .iter()
        .find_map(|b| match *b {
            Bar::Mem32 { index: 0, addr, .. } => Some(u64::from(addr)),
            Bar::Mem64 { index: 0, addr, .. } if addr < (1 << 32) => Some(addr),
            _ => None,
        })
        .ok_or(NetError::Bar0(f.addr))?;
    // Memory space and bus mastering (PCI command register bits 1 and 2).
    let cmd = cs.read32(f.addr, 4);
    cs.write32(f.addr, 4, (cmd & 0xffff) | 0b110);
    let nic = E1000::new(Bar0 { base }, &mut FrameDma).map_err(|e| NetError::Nic(f.addr, e))?;
    let mut nic = HostNic(nic);
    // smoltcp draws TCP initial sequence numbers from this seed.
    let seed = crate::arch::entropy::u64();
    let stack = Stack::new(&mut nic, seed, crate::arch::time::now_us())
        .map_err(|e| NetError::Stack(f.addr, e))?;
    Ok(Net {
        nic,
        stack,
        key: None,
        sink: None,
        services: Vec::new(),
        max_pending: netstack::channel::DEFAULT_MAX_PENDING,
        filter: Filter::default(),
        pci: alloc::format!("{}", f.addr),
    })
}

fn fmt_mac(m: [u8; 6]) -> String {
    alloc::format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        m[0],
        m[1],
        m[2],
        m[3],
        m[4],
        m[5]
    )
}

/// Polls the NIC and background services (the sink). Called from the
/// console loop; returns true if something is in progress that wants
/// polling again soon (so the loop should not sleep).
pub fn poll() -> bool {
    match NET.lock().as_mut() {
        Some(net) => net.poll_services().1,
        None => false,
    }
}

impl Net {
    /// One turn of the network: frames in and out, then the registered
    /// services, then the sink. Returns the time and whether something is
    /// in progress.
    fn poll_services(&mut self) -> (u64, bool) {
        let now = self.poll();
        let mut next_nonce = crate::arch::entropy::bytes32;
        let mut busy = false;
        for service in &mut self.services {
            let turn = service.poll(&mut self.stack, self.key.as_ref(), &mut next_nonce, now);
            busy |= turn.busy;
            if turn.queued {
                // Send what the service queued without waiting for the next turn.
                poll_stack(&mut self.stack, &mut self.nic, &mut self.filter, now);
            }
        }
        let Some(key) = self.key.as_ref() else {
            return (now, busy);
        };
        if let Some(sink) = self.sink.as_mut() {
            let events = sink.poll(&mut self.stack, key, &mut next_nonce, now);
            busy |= sink.busy();
            for e in events {
                report_sink(e);
            }
            // Send what the sink queued without waiting for the next turn.
            poll_stack(&mut self.stack, &mut self.nic, &mut self.filter, now);
        }
        (now, busy)
    }

    /// What a command does while it waits on the network: the network
    /// (with the sink) and a slice of the guests, so neither stalls.
    pub(crate) fn wait_turn(&mut self) -> u64 {
        let (now, _) = self.poll_services();
        crate::vmm::run_slice();
        now
    }
}

fn peer_text(p: Option<netstack::stack::IpEndpoint>) -> String {
    p.map(|p| alloc::format!("{p}"))
        .unwrap_or_else(|| String::from("?"))
}

fn report_sink(e: SinkEvent) {
    match e {
        SinkEvent::Opened { peer } => {
            crate::events::emit(format_args!("net sink: {} connected", peer_text(peer)))
        }
        SinkEvent::Received {
            peer,
            bytes,
            elapsed_us,
            ok,
        } => crate::events::emit(format_args!(
            "net sink: {} sent {} bytes in {} ms, checksum {}",
            peer_text(peer),
            bytes,
            elapsed_us / 1000,
            if ok { "ok" } else { "MISMATCH" }
        )),
        SinkEvent::Dropped { peer, reason } => crate::events::emit(format_args!(
            "net sink: {}: connection dropped: {reason}",
            peer_text(peer)
        )),
    }
}

/// Runs `f` on the network, or prints why there is none.
pub fn with_net(f: impl FnOnce(&mut Net)) {
    let mut g = NET.lock();
    match g.as_mut() {
        Some(net) => f(net),
        None => println!(
            "error: {}",
            ABSENT.lock().clone().unwrap_or(NetError::NotInitialised)
        ),
    }
}

/// True if the operator pressed Ctrl-C (other keys wait for the shell).
pub fn interrupted() -> bool {
    crate::drivers::serial::interrupt_pending()
}

/// `net show`.
pub fn show() {
    with_net(|net| {
        let mac = net.nic.mac();
        let up = net.nic.link_up();
        let speed = net.nic.0.link_speed_mbps();
        println!("nic: e1000 at {}", net.pci);
        println!("mac: {}", fmt_mac(mac));
        match (up, speed) {
            (true, Some(s)) => println!("link: up, {s} Mb/s"),
            (true, None) => println!("link: up"),
            (false, _) => println!("link: down"),
        }
        match net.stack.ip() {
            Some(c) => println!("ip: {c}"),
            None => println!("ip: none (net set ip=<a.b.c.d/len>)"),
        }
        match &net.key {
            Some(k) => {
                let f = k.fingerprint();
                println!(
                    "key: set ({} bytes, fingerprint {:02x}{:02x}{:02x}{:02x})",
                    k.len(),
                    f[0],
                    f[1],
                    f[2],
                    f[3]
                )
            }
            None => println!("key: none (net key <hex>)"),
        }
        match &net.sink {
            Some(s) => println!("sink: listening on port {}", s.port()),
            None => println!("sink: off"),
        }
        let c = net.nic.0.counters();
        println!(
            "rx: {} frames, {} bytes, {} errors, {} dropped ({} crc errors)",
            c.rx_frames, c.rx_bytes, c.rx_errors, c.rx_dropped, c.crc_errors
        );
        println!(
            "tx: {} frames, {} bytes, {} errors",
            c.tx_frames, c.tx_bytes, c.tx_errors
        );
    })
}

/// `net set`.
pub fn set(cfg: IpConfig) {
    with_net(|net| {
        net.stack.set_ip(cfg);
        // Neighbours and learning switches learn the (new) address at once.
        net.stack.announce(&mut net.nic);
        println!("net: ip {cfg}");
    })
}

/// `net key`: the key itself is never printed.
pub fn set_key(key: Key) {
    with_net(|net| {
        let f = key.fingerprint();
        net.key = Some(key);
        println!(
            "net: key set (fingerprint {:02x}{:02x}{:02x}{:02x})",
            f[0], f[1], f[2], f[3]
        );
    })
}

/// `net sink` / `net sink stop`.
pub fn sink(on: bool) {
    with_net(|net| {
        if !on {
            match net.sink.take() {
                Some(s) => {
                    s.close(&mut net.stack);
                    println!("net sink: stopped");
                }
                None => println!("error: net sink is not running"),
            }
            return;
        }
        if let Err(e) = net.can_listen() {
            return println!("error: {e}");
        }
        if let Some(s) = &net.sink {
            return println!("error: net sink already listening on port {}", s.port());
        }
        match Sink::new(&mut net.stack, netstack::bench::SINK_PORT, net.max_pending) {
            Ok(s) => {
                println!("net sink: listening on port {}", s.port());
                net.sink = Some(s);
            }
            Err(e) => println!("error: net sink: {e}"),
        }
    })
}

/// `net ping`: prints each reply as it arrives; Ctrl-C stops.
pub fn ping(target: Ipv4Address, count: u16) {
    with_net(|net| {
        let now = net.poll();
        let mut p = match Ping::start(&mut net.stack, target, count, 2_000_000, now) {
            Ok(p) => p,
            Err(e) => return println!("error: net ping: {e}"),
        };
        let (mut ok, mut min, mut max, mut sum) = (0u32, u64::MAX, 0u64, 0u64);
        loop {
            let now = net.wait_turn();
            for e in p.poll(&mut net.stack, now) {
                match e {
                    PingEvent::Reply { seq, rtt_us } => {
                        ok += 1;
                        min = min.min(rtt_us);
                        max = max.max(rtt_us);
                        sum += rtt_us;
                        println!(
                            "reply from {target}: seq={seq} time={}.{:03} ms",
                            rtt_us / 1000,
                            rtt_us % 1000
                        );
                    }
                    PingEvent::Timeout { seq } => println!("no reply from {target}: seq={seq}"),
                }
            }
            // Send the request just queued without waiting for the next turn.
            net.poll();
            if p.done() {
                break;
            }
            if interrupted() {
                println!("^C");
                break;
            }
            crate::arch::pause();
        }
        p.finish(&mut net.stack);
        let mut line = String::new();
        let _ = write!(line, "net ping: {count} sent, {ok} received");
        if ok > 0 {
            let avg = sum / u64::from(ok);
            let _ = write!(
                line,
                ", rtt min/avg/max {}.{:03}/{}.{:03}/{}.{:03} ms",
                min / 1000,
                min % 1000,
                avg / 1000,
                avg % 1000,
                max / 1000,
                max % 1000
            );
        }
        println!("{line}");
    })
}

/// `net bench`: streams `mib` MiB to a sink over an authenticated channel,
/// with a progress line every 25 %; Ctrl-C cancels.
pub fn bench(target: Ipv4Address, port: u16, mib: u64) {
    with_net(|net| {
        let key = match net.channel_key() {
            Ok(k) => k,
            Err(e) => return println!("error: {e}"),
        };
        let total = mib << 20;
        let now = net.poll();
        let nonce = crate::arch::entropy::bytes32();
        let mut b =
            match BenchSender::start(&mut net.stack, (target, port), &key, nonce, total, now) {
                Ok(b) => b,
                Err(e) => return println!("error: net bench: {e}"),
            };
        println!("net bench: sending {mib} MiB to {target}:{port}");
        let mut next_report = total / 4;
        let result = loop {
            let now = net.wait_turn();
            match b.poll(&mut net.stack, now).clone() {
                BenchStatus::Done(r) => break Ok(r),
                BenchStatus::Failed(why) => break Err(why),
                BenchStatus::Running { sent }
                    if mib >= 4 && sent >= next_report && sent < total =>
                {
                    println!("net bench: {} MiB sent", sent >> 20);
                    next_report += total / 4;
                }
                _ => {}
            }
            if interrupted() {
                break Err(String::from("cancelled"));
            }
        };
        // Let the close frame leave, briefly.
        let until = crate::arch::time::now_us() + 200_000;
        while !b.flushed() && crate::arch::time::now_us() < until {
            let now = net.poll();
            b.poll_channel(&mut net.stack, now);
        }
        b.finish(&mut net.stack);
        net.poll();
        match result {
            Ok(r) => {
                let x = r.mib_per_s_x100();
                println!(
                    "net bench: {} MiB in {}.{:03} s = {}.{:02} MiB/s, checksum {} ({:016x})",
                    r.bytes >> 20,
                    r.elapsed_us / 1_000_000,
                    r.elapsed_us / 1000 % 1000,
                    x / 100,
                    x % 100,
                    if r.ok { "ok" } else { "MISMATCH" },
                    r.sent_sum
                );
            }
            Err(why) => println!("error: net bench: {why}"),
        }
    })
}

/// `net filter`: what is dropped.
pub fn filter_show() {
    with_net(|net| {
        let f = &net.filter;
        if f.addresses().is_empty() {
            return println!("net: filter: none");
        }
        let list: Vec<String> = f
            .addresses()
            .iter()
            .map(|a| alloc::format!("{a}"))
            .collect();
        println!(
            "net: filter: drop {} ({} frames in, {} out dropped)",
            list.join(", "),
            f.rx_dropped,
            f.tx_dropped
        );
    })
}

/// `net filter drop <ip>`: no frame to or from `ip` from now on.
pub fn filter_drop(ip: Ipv4Address) {
    with_net(|net| match net.filter.drop_ip(ip) {
        Ok(()) => println!("net: filter: dropping frames to and from {ip}"),
        Err(e) => println!("error: net: filter: {e}"),
    })
}

/// `net filter clear`.
pub fn filter_clear() {
    with_net(|net| {
        let n = net.filter.clear();
        println!("net: filter: cleared ({n} addresses)");
    })
}
