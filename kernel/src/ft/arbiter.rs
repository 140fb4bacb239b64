//! Who runs a protected guest when its twins lose each other.
//!
//! An [`Arbiter`] answers one question for one twin: "may I run this
//! guest now?" The witness ([`Witness`], `ft witness` on any host) answers
//! with its atomic test-and-set; [`NoWitness`] (`witness=none`) always
//! says yes, which a network partition can turn into two running copies.
//! Another coordination service (etcd's lease and compare-and-swap) would
//! be one more implementation of the trait.

use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use ft_lockstep::witness::{self, Role, Verdict, WitnessFrame};
use netstack::channel::{Channel, ChannelOptions};
use netstack::codec::Key;
use netstack::stack::{IpAddress, Ipv4Address, Stack};

use super::{ARBITER_RETRY_US, WITNESS_TIMEOUT_US};

/// What one network turn gives an arbiter.
pub(super) struct Turn<'a> {
    pub(super) stack: &'a mut Stack,
    pub(super) key: Option<&'a Key>,
    pub(super) nonce: &'a mut dyn FnMut() -> [u8; 32],
    pub(super) now: u64,
}

/// An arbiter's answer so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Claim {
    /// No answer yet.
    Pending,
    /// This twin runs the guest.
    Won,
    /// The other twin does (why, for the operator).
    Lost(String),
    /// The arbiter could not be asked (why); it is asked again later, and
    /// until then [`Claim::Pending`] is returned.
    Unreachable(String),
}

/// Decides which twin runs a guest.
pub(super) trait Arbiter: Send {
    /// For the operator: "witness 10.0.0.9", "no witness".
    fn describe(&self) -> String;
    /// Asks that this twin run the guest; called every turn until it
    /// answers [`Claim::Won`] or [`Claim::Lost`].
    fn claim(&mut self, t: &mut Turn<'_>) -> Claim;
    /// Gives back what it holds on the network.
    fn release(self: Box<Self>, stack: &mut Stack);
}

/// The arbiter of `witness` (None: `witness=none`) for `vm` at
/// `generation`, claiming as `role`.
pub(super) fn arbiter(
    witness: Option<Ipv4Address>,
    vm: &str,
    generation: u64,
    role: Role,
) -> Box<dyn Arbiter> {
    match witness {
        None => Box::new(NoWitness),
        Some(addr) => Box::new(Witness {
            addr,
            vm: String::from(vm),
            generation,
            role,
            call: None,
            next_try_us: 0,
        }),
    }
}

/// `witness=none`: every claim wins.
pub(super) struct NoWitness;

impl Arbiter for NoWitness {
    fn describe(&self) -> String {
        String::from("no witness")
    }

    fn claim(&mut self, _: &mut Turn<'_>) -> Claim {
        Claim::Won
    }

    fn release(self: Box<Self>, _: &mut Stack) {}
}

/// A claim at an `ft witness` host.
pub(super) struct Witness {
    addr: Ipv4Address,
    vm: String,
    generation: u64,
    role: Role,
    call: Option<Call>,
    next_try_us: u64,
}

impl Arbiter for Witness {
    fn describe(&self) -> String {
        format!("witness {}", self.addr)
    }

    fn claim(&mut self, t: &mut Turn<'_>) -> Claim {
        if self.call.is_none() {
            if t.now < self.next_try_us {
                return Claim::Pending;
            }
            let req = WitnessFrame::Claim {
                vm: self.vm.clone(),
                generation: self.generation,
                role: self.role,
            };
            match Call::start(t, self.addr, &req) {
                Ok(c) => self.call = Some(c),
                Err(e) => {
                    self.next_try_us = t.now + ARBITER_RETRY_US;
                    return Claim::Unreachable(e);
                }
            }
        }
        let Some(call) = self.call.as_mut() else {
            return Claim::Pending;
        };
        let Some(answer) = call.poll(t) else {
            return Claim::Pending;
        };
        if let Some(c) = self.call.take() {
            c.release(t.stack);
        }
        let fail = |why: String, me: &mut Self, now: u64| {
            me.next_try_us = now + ARBITER_RETRY_US;
            Claim::Unreachable(why)
        };
        match answer {
            Ok(WitnessFrame::Verdict {
                vm,
                generation,
                verdict,
            }) if vm == self.vm && generation == self.generation => match verdict {
                Verdict::Won => Claim::Won,
                Verdict::Lost { holder, role } => Claim::Lost(format!(
                    "the {} {} holds it",
                    role.name(),
                    Ipv4Address::from(holder)
                )),
                Verdict::Stale { current } => Claim::Lost(format!(
                    "its protection (generation {}) was replaced by generation {current}",
                    self.generation
                )),
                Verdict::Refused => fail(
                    String::from("the witness keeps too many guests"),
                    self,
                    t.now,
                ),
            },
            Ok(other) => fail(
                format!(
                    "the witness answered {}",
                    crate::text::peer(&format!("{other:?}"))
                ),
                self,
                t.now,
            ),
            Err(e) => fail(e, self, t.now),
        }
    }

    fn release(self: Box<Self>, stack: &mut Stack) {
        if let Some(c) = self.call {
            c.release(stack);
        }
    }
}

/// One request to a witness and its answer, on a channel of its own.
pub(super) struct Call {
    chan: Channel,
    request: Option<(u8, Vec<u8>)>,
    deadline_us: u64,
}

impl Call {
    /// Connects to the witness at `addr` and queues `req`.
    pub(super) fn start(
        t: &mut Turn<'_>,
        addr: Ipv4Address,
        req: &WitnessFrame,
    ) -> Result<Call, String> {
        let key = t.key.ok_or_else(|| String::from("no channel key set"))?;
        let opts = ChannelOptions {
            max_payload: 4096,
            timeout_us: WITNESS_TIMEOUT_US,
            ..ChannelOptions::default()
        };
        let chan = Channel::connect(
            t.stack,
            (addr, ft_lockstep::WITNESS_PORT),
            key,
            (t.nonce)(),
            opts,
            t.now,
        )
        .map_err(|e| format!("{e}"))?;
        Ok(Call {
            chan,
            request: Some(witness::encode(req)),
            deadline_us: t.now + WITNESS_TIMEOUT_US,
        })
    }

    /// The answer, once there is one (or why there will be none).
    pub(super) fn poll(&mut self, t: &mut Turn<'_>) -> Option<Result<WitnessFrame, String>> {
        self.chan.poll(t.stack, t.now);
        if self.chan.is_open()
            && let Some((ty, p)) = self.request.take()
            && self.chan.send(ty, &p).is_err()
        {
            return Some(Err(String::from("could not send to the witness")));
        }
        if let Some((ty, p)) = self.chan.recv(t.stack) {
            return Some(
                witness::decode(ty, &p).map_err(|e| format!("bad answer from the witness: {e}")),
            );
        }
        if self.chan.is_closed() {
            return Some(Err(match self.chan.close_reason() {
                Some(r) => format!("{r}"),
                None => String::from("connection closed"),
            }));
        }
        if t.now >= self.deadline_us {
            return Some(Err(format!(
                "no answer in {} ms",
                WITNESS_TIMEOUT_US / 1000
            )));
        }
        None
    }

    /// Closes the channel.
    pub(super) fn release(mut self, stack: &mut Stack) {
        self.chan.close(stack);
        self.chan.release(stack);
    }
}

/// The IPv4 address of a channel's peer.
pub(super) fn peer_v4(chan: &Channel) -> Option<Ipv4Address> {
    match chan.peer()?.addr {
        IpAddress::Ipv4(a) => Some(a),
    }
}
