//! The destination side: `migrate listen`, each incoming guest's `Dest`
//! engine and the actions it returns (reserve RAM, write pages, start).

use super::*;
use alloc::string::ToString;

/// This host as an incoming migration sees it; `active`: migrations running
/// here (incoming past Hello and outgoing).
pub(super) struct ThisHost {
    active: usize,
}

impl DestHost for ThisHost {
    fn free_bytes(&self) -> u64 {
        crate::vmm::free_ram_bytes()
    }
    fn cpu_offer(&self) -> vcpu::profile::HostOffer {
        crate::vmm::cpu_offer()
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

/// The destination's view of an incoming VM's RAM.
pub(super) struct IncomingMem {
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
pub(super) struct Incoming {
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
    /// Fault tolerance: the guest started as a replaying secondary; the
    /// channel goes to the FT service.
    handed_over: bool,
}

/// `migrate listen`: accepts migrations while a key is set. The same
/// service, in FT mode, is `ft listen`: the initial copy of a protected
/// guest arrives as a migration and starts as a replaying secondary.
pub struct MigrationService {
    listener: Listener,
    incoming: Vec<Incoming>,
    ft: bool,
    /// FT mode: secondaries started, their channels not yet taken.
    secondaries: Vec<(String, Channel)>,
}

pub(super) fn send(chan: &mut Channel, msg: &Message) -> Result<(), netstack::channel::SendError> {
    let (ty, payload) = encode(msg);
    chan.send(ty, &payload)
}

pub(super) fn peer(chan: &Channel) -> String {
    chan.peer()
        .map(|p| alloc::format!("{p}"))
        .unwrap_or_else(|| String::from("?"))
}

impl MigrationService {
    /// Listens on [`MIGRATE_PORT`].
    pub fn new(stack: &mut Stack, max_pending: usize) -> Result<MigrationService, MigrationError> {
        Ok(MigrationService {
            listener: Listener::new(stack, MIGRATE_PORT, max_pending)?,
            incoming: Vec::new(),
            ft: false,
            secondaries: Vec::new(),
        })
    }

    /// `ft listen`: on `port`, every guest arriving starts as a secondary.
    pub fn new_ft(
        stack: &mut Stack,
        port: u16,
        max_pending: usize,
    ) -> Result<MigrationService, MigrationError> {
        Ok(MigrationService {
            listener: Listener::new(stack, port, max_pending)?,
            incoming: Vec::new(),
            ft: true,
            secondaries: Vec::new(),
        })
    }

    /// FT mode: the secondaries started since the last call, with the
    /// channel their log arrives on.
    pub fn take_secondaries(&mut self) -> Vec<(String, Channel)> {
        core::mem::take(&mut self.secondaries)
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
                handed_over: false,
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
                    if self.ft {
                        async_line(format_args!(
                            "ft: initial copy of {} from {}",
                            crate::text::peer(inc.dest.vm()),
                            peer(&inc.chan)
                        ));
                    } else {
                        async_line(format_args!(
                            "migrate: incoming guest from {}",
                            peer(&inc.chan)
                        ));
                    }
                }
                actions.extend(acts);
                if !run_dest_actions(inc, stack, &mut actions, now, self.ft)
                    || inc.answered
                    || inc.handed_over
                {
                    break;
                }
            }
            if inc.answered || inc.handed_over {
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
                run_dest_actions(inc, stack, &mut acts, now, self.ft);
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
                run_dest_actions(inc, stack, &mut acts, now, self.ft);
            }
            if inc.chan.is_closed() {
                inc.done = true;
            }
        }
        let mut i = 0;
        while i < self.incoming.len() {
            if self.incoming[i].handed_over {
                let inc = self.incoming.swap_remove(i);
                self.secondaries
                    .push((String::from(inc.dest.vm()), inc.chan));
            } else if self.incoming[i].done {
                let inc = self.incoming.swap_remove(i);
                inc.chan.release(stack);
            } else {
                i += 1;
            }
        }
    }

    /// Stops listening; incoming guests not yet committed are discarded.
    pub fn close(self, stack: &mut Stack) {
        for (vm, mut chan) in self.secondaries {
            crate::vmm::ft_end(&vm);
            chan.close(stack);
            chan.release(stack);
        }
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
pub(super) fn run_dest_actions(
    inc: &mut Incoming,
    stack: &mut Stack,
    acts: &mut Vec<DestAction>,
    now: u64,
    ft: bool,
) -> bool {
    let label = if ft { "ft" } else { "migrate" };
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
            DestAction::Reserve {
                vm,
                mem_bytes,
                profile,
            } => {
                if let Err(e) = crate::vmm::reserve_incoming(&vm, mem_bytes, profile) {
                    let e = e.to_string();
                    async_line(format_args!(
                        "{label}: refusing {} from {}: {}",
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
                let started = if ft {
                    crate::vmm::ft_start_secondary(&vm, &vcpu, &devices, &peer(&inc.chan))
                } else {
                    crate::vmm::start_incoming(&vm, &vcpu, &devices, paused_us)
                };
                match started {
                    Ok(()) if ft => {
                        async_line(format_args!(
                            "ft: {vm}: secondary of {}: replaying",
                            peer(&inc.chan)
                        ));
                        // Committed still goes out (the rest of this batch);
                        // then the channel is the FT log's.
                        inc.handed_over = true;
                    }
                    Ok(()) => {
                        async_line(format_args!(
                            "migrate: {vm} from {} now runs here (gratuitous ARP for its MAC: the guest has no NIC yet)",
                            peer(&inc.chan)
                        ));
                    }
                    Err(e) => {
                        let e = e.to_string();
                        async_line(format_args!(
                            "{label}: cannot start {}: {}",
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
                    log::info!("{label}: {}: {reason}", peer(&inc.chan));
                } else {
                    async_line(format_args!("{label}: {}: {reason}", peer(&inc.chan)));
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
                    "{label}: incoming {vm} from {} discarded: {}",
                    peer(&inc.chan),
                    crate::text::peer(&reason)
                ));
                inc.chan.close(stack);
            }
        }
    }
    ok
}
