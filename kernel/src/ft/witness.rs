//! `ft witness`: this host arbitrates for twins elsewhere (no VMX needed).
//!
//! Each request is one authenticated channel: a `Begin` (at `ft enable`)
//! or a `Claim` (a twin lost the other), answered at once from the
//! [`WitnessTable`]. The table lives for the whole run, outside the
//! service: `ft witness stop` then `ft witness` keeps every generation and
//! holder, so a restarted witness never lets a second twin win.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use ft_lockstep::witness::{self, Entry, WitnessFrame, WitnessTable};
use netstack::channel::{Channel, ChannelOptions, Listener};
use netstack::codec::Key;
use netstack::stack::Stack;
use spin::Mutex;

use crate::events::emit as async_line;

use super::arbiter::peer_v4;

/// Every generation and holder this host decided, for the whole run.
static TABLE: Mutex<WitnessTable> = Mutex::new(WitnessTable::new());

/// Requests served at once (more are refused).
const MAX_SESSIONS: usize = 8;

/// How long a connection may stay without sending its request.
const SESSION_US: u64 = 5_000_000;

struct Session {
    chan: Channel,
    deadline_us: u64,
    done: bool,
}

/// The `ft witness` service.
pub(super) struct Server {
    listener: Listener,
    sessions: Vec<Session>,
    /// Requests answered and refused since it started.
    pub(super) answered: u64,
    pub(super) refused: u64,
}

impl Server {
    pub(super) fn new(stack: &mut Stack, max_pending: usize) -> Result<Server, String> {
        Ok(Server {
            listener: Listener::new(stack, ft_lockstep::WITNESS_PORT, max_pending)
                .map_err(|e| format!("{e}"))?,
            sessions: Vec::new(),
            answered: 0,
            refused: 0,
        })
    }

    pub(super) fn close(self, stack: &mut Stack) {
        for s in self.sessions {
            s.chan.release(stack);
        }
        self.listener.close(stack);
    }

    pub(super) fn busy(&self) -> bool {
        !self.sessions.is_empty()
    }

    pub(super) fn poll(
        &mut self,
        stack: &mut Stack,
        key: &Key,
        nonce: &mut dyn FnMut() -> [u8; 32],
        now: u64,
    ) {
        loop {
            let pending = self.sessions.iter().filter(|s| s.chan.is_pending()).count();
            let Some(h) = self.listener.accept(stack, pending, now) else {
                break;
            };
            let opts = ChannelOptions {
                max_payload: 4096,
                ..ChannelOptions::default()
            };
            let chan = Channel::accept(stack, h, key, nonce(), opts, now);
            if self.sessions.len() >= MAX_SESSIONS {
                log::warn!(
                    "ft: witness: refusing {}: {MAX_SESSIONS} requests in progress",
                    who(&chan)
                );
                self.refused += 1;
                chan.release(stack);
                continue;
            }
            self.sessions.push(Session {
                chan,
                deadline_us: now + SESSION_US,
                done: false,
            });
        }
        for s in &mut self.sessions {
            s.chan.poll(stack, now);
            if s.done {
                continue;
            }
            if let Some((ty, p)) = s.chan.recv(stack) {
                s.done = true;
                match answer(&s.chan, ty, &p) {
                    Ok(reply) => {
                        let (ty, p) = witness::encode(&reply);
                        let _ = s.chan.send(ty, &p);
                        s.chan.poll(stack, now);
                        self.answered += 1;
                    }
                    Err(why) => {
                        async_line(format_args!(
                            "ft: witness: {}: {why}; connection dropped",
                            who(&s.chan)
                        ));
                        self.refused += 1;
                    }
                }
                // The twin closes once it has the answer; this side
                // closes after it (or at the deadline).
                s.deadline_us = now + SESSION_US;
                s.chan.close(stack);
            } else if now >= s.deadline_us {
                if !s.chan.is_pending() {
                    async_line(format_args!(
                        "ft: witness: {}: no request in {} s; connection dropped",
                        who(&s.chan),
                        SESSION_US / 1_000_000
                    ));
                }
                s.done = true;
                s.deadline_us = now + SESSION_US;
                s.chan.close(stack);
            }
        }
        let mut i = 0;
        while i < self.sessions.len() {
            let s = &self.sessions[i];
            if s.chan.is_closed() || (s.done && now >= s.deadline_us) {
                let s = self.sessions.swap_remove(i);
                s.chan.release(stack);
            } else {
                i += 1;
            }
        }
    }
}

fn who(chan: &Channel) -> String {
    peer_v4(chan).map_or_else(|| String::from("?"), |a| format!("{a}"))
}

/// The reply to one request, or why there is none.
fn answer(chan: &Channel, ty: u8, payload: &[u8]) -> Result<WitnessFrame, String> {
    let from = peer_v4(chan).ok_or_else(|| String::from("no peer address"))?;
    let req = witness::decode(ty, payload).map_err(|e| format!("bad request: {e}"))?;
    let mut table = TABLE.lock();
    let reply = table
        .handle(req.clone(), from.octets())
        .ok_or_else(|| String::from("sent an answer, not a request"))?;
    drop(table);
    match (&req, &reply) {
        (WitnessFrame::Begin { vm }, WitnessFrame::Begun { generation: 0, .. }) => async_line(
            format_args!("ft: witness: {vm}: refused for {from}: the table is full"),
        ),
        (WitnessFrame::Begin { vm }, WitnessFrame::Begun { generation, .. }) => async_line(
            format_args!("ft: witness: {vm}: generation {generation} begun by {from}"),
        ),
        (
            WitnessFrame::Claim { vm, role, .. },
            WitnessFrame::Verdict {
                generation,
                verdict,
                ..
            },
        ) => async_line(format_args!(
            "ft: witness: {vm}: generation {generation}: {from} ({}) claims: {}",
            role.name(),
            match verdict {
                witness::Verdict::Won => String::from("won"),
                witness::Verdict::Lost { holder, role } => format!(
                    "lost to {} ({})",
                    netstack::stack::Ipv4Address::from(*holder),
                    role.name()
                ),
                witness::Verdict::Stale { current } =>
                    format!("lost (generation {current} is current)"),
                witness::Verdict::Refused => String::from("refused (the table is full)"),
            }
        )),
        _ => {}
    }
    Ok(reply)
}

/// The table's entries, for `ft witness` and `ft status`.
pub(super) fn entries() -> Vec<(String, Entry)> {
    TABLE
        .lock()
        .entries()
        .map(|(k, e)| (String::from(k), e))
        .collect()
}
