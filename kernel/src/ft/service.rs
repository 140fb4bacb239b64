//! The FT service on the host network: `ft listen`, the initial copies
//! under way, and one link per protected guest (primary or secondary).

use alloc::collections::VecDeque;
use alloc::string::String;
use alloc::vec::Vec;

use ft_lockstep::{Ack, Frame};
use netstack::channel::{Channel, SendError};
use netstack::codec::Key;
use netstack::stack::{Ipv4Address, Stack};

use crate::events::emit as async_line;
use crate::migration::{MigrationService, Outbound};
use crate::net::{Service, Turn};

use super::{ACK_EVERY_US, END_GRACE_US, KEEPALIVE_US, SILENCE_US};

/// An initial copy under way (the guest keeps running here).
pub(super) struct Copy {
    pub(super) out: Outbound,
    pub(super) peer: Ipv4Address,
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
    /// When the twin was last heard from, and when we last sent.
    heard_us: u64,
    sent_us: u64,
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
            heard_us: crate::arch::time::now_us(),
            sent_us: 0,
        }
    }

    /// Whether the twin has been silent too long (a dead host, a cut
    /// link): protection cannot go on. Part of every turn; the twin sends
    /// at least every [`KEEPALIVE_US`].
    fn silent(&self, now: u64) -> Option<String> {
        (now.saturating_sub(self.heard_us) >= SILENCE_US).then(|| {
            alloc::format!(
                "the {} sent nothing for {} s",
                match self.side {
                    Side::Primary => "secondary",
                    Side::Secondary => "primary",
                },
                SILENCE_US / 1_000_000
            )
        })
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
        if self.chan.is_open() {
            // Log the twin will not replay need not go; the End must, and
            // whole, before the close.
            self.backlog.clear();
            self.send(&Frame::End {
                reason: String::from(tell),
            });
        }
        crate::vmm::ft_end(&self.vm);
        async_line(format_args!("{report}"));
        self.chan.close(stack);
        self.release_at = crate::arch::time::now_us() + super::CLOSE_GRACE_US;
    }

    /// The primary's turn: acknowledgements in, log out.
    fn primary_turn(&mut self, stack: &mut Stack, now: u64) {
        while let Some((ty, p)) = self.chan.recv(stack) {
            self.heard_us = now;
            let why = match ft_lockstep::decode(ty, &p) {
                Ok(Frame::Ack(a)) => match crate::vmm::ft_on_ack(&self.vm, a) {
                    Ok(()) => continue,
                    Err(e) => alloc::format!("the secondary sent a {e}"),
                },
                Ok(Frame::End { reason }) => {
                    alloc::format!(
                        "the secondary ended protection: {}",
                        crate::text::peer(&reason)
                    )
                }
                Ok(Frame::Log { .. }) => String::from("the secondary sent a log frame"),
                Err(e) => alloc::format!("bad frame from the secondary: {e}"),
            };
            return self.unprotect(stack, &why);
        }
        if self.chan.is_closed() {
            let why = self
                .chan
                .close_reason()
                .map(|r| alloc::format!("link to {} lost: {r}", self.peer))
                .unwrap_or_else(|| alloc::format!("link to {} lost", self.peer));
            return self.unprotect(stack, &why);
        }
        if let Some(why) = self.silent(now) {
            return self.unprotect(stack, &why);
        }
        let poll = crate::vmm::ft_poll(&self.vm);
        if let Some(why) = &poll.ended {
            let at = *self.ending_at.get_or_insert(now + END_GRACE_US);
            if poll.drained || now >= at {
                let why = alloc::format!("{why} on the primary");
                let report = alloc::format!("ft: {}: protection ended: {why}", self.vm);
                return self.end(stack, &why, &report);
            }
        }
        self.flush();
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
                // Nothing logged: an empty frame says we are alive.
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
                self.unprotect(stack, &why)
            }
        }
    }

    fn unprotect(&mut self, stack: &mut Stack, why: &str) {
        let vm = self.vm.clone();
        let report = alloc::format!("ft: {vm}: unprotected: {why}; {vm} keeps running");
        self.end(stack, why, &report);
    }

    /// The secondary's turn: log in, acknowledgements out.
    fn secondary_turn(&mut self, stack: &mut Stack, now: u64) {
        let mut got_log = false;
        while let Some((ty, p)) = self.chan.recv(stack) {
            self.heard_us = now;
            let why = match ft_lockstep::decode(ty, &p) {
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
                Ok(Frame::End { reason }) => {
                    alloc::format!(
                        "the primary ended protection: {}",
                        crate::text::peer(&reason)
                    )
                }
                Ok(Frame::Ack(_)) => String::from("the primary sent an acknowledgement"),
                Err(e) => alloc::format!("bad frame from the primary: {e}"),
            };
            return self.discard(stack, &why);
        }
        if self.chan.is_closed() {
            let why = self
                .chan
                .close_reason()
                .map(|r| alloc::format!("link to the primary lost: {r}"))
                .unwrap_or_else(|| String::from("link to the primary lost"));
            return self.discard(stack, &why);
        }
        if let Some(why) = self.silent(now) {
            return self.discard(stack, &why);
        }
        let poll = crate::vmm::ft_poll(&self.vm);
        if let Some(why) = poll.diverged {
            let why = alloc::format!("diverged: {why}");
            return self.discard(stack, &why);
        }
        if let Some(ack) = poll.ack
            && !got_log
            && ((self.last_ack != Some(ack)
                && now.saturating_sub(self.last_ack_us) >= ACK_EVERY_US)
                || now.saturating_sub(self.last_ack_us) >= KEEPALIVE_US)
        {
            self.ack(ack, now);
        }
        self.flush();
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
    pub(super) copies: Vec<Copy>,
    pub(super) links: Vec<Link>,
}

impl FtService {
    fn copies_turn(&mut self, stack: &mut Stack, now: u64) {
        let mut i = 0;
        while i < self.copies.len() {
            let finished = self.copies[i].out.step(stack, now);
            if self.copies[i].out.outcome() == Some(true) {
                let c = self.copies.swap_remove(i);
                self.protect(c, stack);
                continue;
            }
            if finished {
                let c = self.copies.swap_remove(i);
                c.out.release(stack);
                continue;
            }
            i += 1;
        }
    }

    /// The initial copy committed: the lockstep begins.
    fn protect(&mut self, c: Copy, stack: &mut Stack) {
        let vm = String::from(c.out.vm());
        let (total, pause) = c
            .out
            .summary()
            .map_or((0, 0), |s| (s.total_us / 1000, s.downtime_us / 1000));
        let mut chan = c.out.into_channel();
        match crate::vmm::ft_start_primary(
            &vm,
            &alloc::format!("{}", c.peer),
            crate::vmm::CHECK_EVERY_US,
        ) {
            Ok(()) => {
                async_line(format_args!(
                    "ft: {vm}: protected by {}: lockstep (initial copy {total} ms, pause {pause} ms)",
                    c.peer
                ));
                self.links.push(Link::new(
                    vm,
                    Side::Primary,
                    alloc::format!("{}", c.peer),
                    chan,
                ));
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
        self.copies_turn(stack, now);
        for link in &mut self.links {
            link.chan.poll(stack, now);
            if link.closed {
                continue;
            }
            match link.side {
                Side::Primary => link.primary_turn(stack, now),
                Side::Secondary => link.secondary_turn(stack, now),
            }
        }
        // Closed links go once their last frames (End) have left.
        let mut i = 0;
        while i < self.links.len() {
            let l = &self.links[i];
            if l.closed && (l.chan.is_closed() || now >= l.release_at) {
                let l = self.links.swap_remove(i);
                l.chan.release(stack);
            } else {
                i += 1;
            }
        }
        let busy = !self.copies.is_empty()
            || !self.links.is_empty()
            || self.listener.as_ref().is_some_and(|l| l.busy());
        Turn {
            busy,
            queued: busy || self.listener.is_some(),
        }
    }
}

/// The FT service on `net`, registered at first use.
pub(super) fn ft(net: &mut crate::net::Net) -> &mut FtService {
    net.service::<FtService>()
}
