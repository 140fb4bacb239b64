//! A small deterministic machine driven through record → encode → decode →
//! replay, with random inputs, random asynchronous events (right after
//! deterministic exits and at arbitrary instructions), random frame sizes
//! and random delivery and acknowledgement times.
//!
//! Properties: the secondary ends in exactly the primary's state; it never
//! needs an input the log does not hold yet; the output gate releases no
//! item before the secondary acknowledged the log up to it, and releases
//! every item once, in order.

use ft_lockstep::{
    Ack, Event, Frame, Input, LagController, Landmark, OutputGate, Record, Recorder, Replayer,
    Step, decode, encode, gpr_digest,
};
use proptest::prelude::*;

/// Instructions of the model's program (by `pc`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Insn {
    /// Arithmetic on registers (no exit).
    Compute,
    /// IN from a port: a deterministic exit that reads an input.
    In,
    /// RDTSC: likewise.
    Rdtsc,
    /// OUT to the console: a deterministic exit that produces output.
    Out,
    /// A backward branch taken when `acc` is even (RIPs are revisited).
    Loop,
}

const PROGRAM: usize = 37;

/// Every third instruction is a deterministic exit (so the machine never
/// runs forever without one); the others compute or branch back over one.
fn insn(pc: u64) -> Insn {
    let h = pc.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 59;
    if pc % 3 == 2 {
        match h % 3 {
            0 => Insn::In,
            1 => Insn::Rdtsc,
            _ => Insn::Out,
        }
    } else if h.is_multiple_of(3) {
        Insn::Loop
    } else {
        Insn::Compute
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Guest {
    pc: u64,
    acc: u64,
    regs: [u64; 4],
    /// An IRQ raised and not yet taken.
    irr: bool,
    /// Interrupts taken (their handler's effect).
    taken: u64,
    out: Vec<u64>,
    exits: u64,
}

impl Guest {
    fn here(&self) -> (u64, u64) {
        let mut g = [0u64; 16];
        g[..4].copy_from_slice(&self.regs);
        g[4] = self.acc;
        g[5] = u64::from(self.irr);
        g[6] = self.taken;
        (self.pc, gpr_digest(&g, self.pc, 0x202))
    }

    /// One instruction. A deterministic exit calls `exit` (with what it
    /// reads, if anything: the value comes back) and returns true; output
    /// goes to `out`.
    fn step(&mut self, exit_fn: &mut dyn FnMut(Option<Input>) -> [u64; 2]) -> bool {
        let i = insn(self.pc);
        let mut exit = false;
        match i {
            Insn::Compute => {
                self.acc = self
                    .acc
                    .wrapping_mul(31)
                    .wrapping_add(self.regs[(self.pc % 4) as usize]);
                self.regs[((self.pc + 1) % 4) as usize] ^= self.acc;
            }
            Insn::In => {
                self.exits += 1;
                self.acc ^= exit_fn(Some(Input::Pio {
                    port: 0x60,
                    size: 1,
                }))[0];
                exit = true;
            }
            Insn::Rdtsc => {
                self.exits += 1;
                self.regs[0] = exit_fn(Some(Input::Rdtsc))[0];
                exit = true;
            }
            Insn::Out => {
                self.exits += 1;
                exit_fn(None);
                self.out.push(self.acc);
                exit = true;
            }
            Insn::Loop => {
                if self.acc.is_multiple_of(2) && self.pc >= 3 {
                    self.pc -= 3;
                    self.acc = self.acc.wrapping_add(1);
                    return false;
                }
            }
        }
        self.pc = (self.pc + 1) % PROGRAM as u64;
        exit
    }

    fn apply(&mut self, e: Event) {
        match e {
            Event::Irq { .. } => self.irr = true,
            Event::Inject { .. } => {
                assert!(self.irr, "an injection without a raised IRQ");
                self.irr = false;
                self.taken += 1;
                self.acc = self.acc.wrapping_add(1000);
                self.regs[3] = self.pc;
            }
            Event::Request => self.regs[2] = self.regs[2].wrapping_add(1),
        }
    }
}

/// What the random schedule decides at each primary step.
#[derive(Debug, Clone)]
struct Plan {
    seed: u64,
    steps: usize,
    /// In 256ths: chance of an event at a step.
    event_rate: u8,
    frame_bytes: usize,
}

fn rng(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

/// One instruction on the primary: inputs drawn at random and logged.
fn primary_step(primary: &mut Guest, rec: &mut Recorder, r: &mut u64, now: u64) -> bool {
    let exits = primary.exits;
    let mut logged = Vec::new();
    let exit = primary.step(&mut |i| {
        let Some(i) = i else { return [0, 0] };
        let v = [rng(r), 0];
        logged.push(Record::Input {
            exits: exits + 1,
            input: i,
            value: v,
        });
        v
    });
    for l in logged {
        rec.record(l, now);
    }
    exit
}

/// Returns (events at forced landmarks, events right after exits, outputs).
fn run(plan: &Plan) -> (u64, u64, usize) {
    let mut r = plan.seed | 1;
    let mut primary = Guest::default();
    let mut secondary = Guest::default();
    let mut rec = Recorder::new(1 << 30);
    let mut gate: OutputGate<(usize, u64)> = OutputGate::new();
    let mut lag = LagController::new();
    let mut rep = Replayer::new();
    let mut fresh_p = true;
    let mut fresh_s = true;
    let mut wire: Vec<(u8, Vec<u8>)> = Vec::new();
    let mut acks: Vec<Ack> = Vec::new();
    let mut released: Vec<(usize, u64)> = Vec::new();
    let mut acked = 0u64;
    let mut now = 0u64;
    let mut out_seen = 0usize;
    let (mut forced, mut at_exit) = (0u64, 0u64);

    // The secondary's turn: replay as far as the log allows.
    let replay = |rep: &mut Replayer, s: &mut Guest, fresh: &mut bool, budget: usize| {
        for _ in 0..budget {
            let here = s.here();
            match rep.next(*fresh, &mut || here).expect("replay") {
                Step::Apply(e) => s.apply(e),
                Step::Check(d) => assert_eq!(d, s.here().1, "state check"),
                Step::Wait => return,
                step @ (Step::Run | Step::RunTo { .. }) => {
                    let target = match step {
                        Step::RunTo { rip, .. } => Some(rip),
                        _ => None,
                    };
                    // Run to the next exit, or to the breakpoint (a hit
                    // that did not match is stepped over, as RF does).
                    let mut n = 0u64;
                    loop {
                        n += 1;
                        assert!(
                            n < 1_000_000,
                            "the replay ran away from the log at pc {} ({step:?})",
                            s.pc
                        );
                        let exit = s.step(&mut |i| {
                            rep.on_exit();
                            match i.map(|i| rep.input(i)) {
                                None => [0, 0],
                                Some(Ok(v)) => v,
                                Some(Err(e)) => panic!("replay needed {i:?}: {e}"),
                            }
                        });
                        *fresh = exit;
                        if exit {
                            break;
                        }
                        if target == Some(s.pc) {
                            break;
                        }
                    }
                }
            }
        }
    };

    for step in 0..plan.steps {
        now += 10;
        // An asynchronous event at this point, on the primary.
        if rng(&mut r) % 256 < u64::from(plan.event_rate) {
            if fresh_p {
                at_exit += 1;
            } else {
                forced += 1;
            }
            let at = if fresh_p {
                Landmark::Exit {
                    exits: primary.exits,
                }
            } else {
                let (rip, digest) = primary.here();
                Landmark::Forced {
                    exits: primary.exits,
                    rip,
                    digest,
                    branches: None,
                }
            };
            let event = match rng(&mut r) % 3 {
                0 if primary.irr => Event::Inject { vector: 0x20 },
                1 => Event::Request,
                _ => Event::Irq { line: 0 },
            };
            rec.record(Record::Event { at, event }, now);
            primary.apply(event);
        }
        let exit = primary_step(&mut primary, &mut rec, &mut r, now);
        fresh_p = exit;
        while primary.out.len() > out_seen {
            gate.hold(rec.position(), (out_seen, primary.out[out_seen]), now);
            out_seen += 1;
        }
        if exit && rng(&mut r).is_multiple_of(8) {
            rec.record(
                Record::Check {
                    exits: primary.exits,
                    digest: primary.here().1,
                },
                now,
            );
        }
        // The network turn: frames out, frames in, acks back, at random.
        if rng(&mut r).is_multiple_of(4) {
            rec.record(
                Record::Horizon {
                    exits: primary.exits,
                },
                now,
            );
            while let Some(f) = rec.take_frame(plan.frame_bytes) {
                wire.push(encode(&f));
            }
        }
        if rng(&mut r).is_multiple_of(3) && !wire.is_empty() {
            let n = 1 + (rng(&mut r) as usize % wire.len());
            for (ty, p) in wire.drain(..n) {
                let Ok(Frame::Log { first, records }) = decode(ty, &p) else {
                    panic!("a frame did not decode")
                };
                rep.push(first, records).expect("in order");
                acks.push(rep.ack(0));
            }
        }
        if rng(&mut r).is_multiple_of(2) {
            replay(&mut rep, &mut secondary, &mut fresh_s, 1 + (step % 7));
            acks.push(rep.ack(0));
        }
        if rng(&mut r).is_multiple_of(3) {
            for a in acks.drain(..) {
                let (ty, p) = encode(&Frame::Ack(a));
                let Ok(Frame::Ack(a)) = decode(ty, &p) else {
                    panic!()
                };
                rec.on_ack(a.received, a.replayed, now, &mut lag)
                    .expect("honest ack");
                acked = a.received;
                for item in gate.release(acked, now) {
                    released.push(item);
                }
            }
        }
        // The output rule: nothing released is ahead of the acknowledgement.
        assert!(gate.last_released_pos() <= acked);
    }
    // The primary stops right after a deterministic exit.
    let mut n = 0u64;
    while !fresh_p {
        n += 1;
        assert!(n < 1_000_000, "the primary never exits");
        fresh_p = primary_step(&mut primary, &mut rec, &mut r, now);
        while primary.out.len() > out_seen {
            gate.hold(rec.position(), (out_seen, primary.out[out_seen]), now);
            out_seen += 1;
        }
    }
    rec.record(
        Record::Horizon {
            exits: primary.exits,
        },
        now,
    );
    while let Some(f) = rec.take_frame(plan.frame_bytes) {
        wire.push(encode(&f));
    }
    for (ty, p) in wire.drain(..) {
        let Ok(Frame::Log { first, records }) = decode(ty, &p) else {
            panic!()
        };
        rep.push(first, records).unwrap();
    }
    replay(&mut rep, &mut secondary, &mut fresh_s, usize::MAX / 2);
    assert_eq!(secondary, primary, "the replay ends in the primary's state");
    assert_eq!(rep.exits(), primary.exits);
    let a = rep.ack(0);
    rec.on_ack(a.received, a.replayed, now, &mut lag).unwrap();
    released.extend(gate.release(a.received, now));
    let expected: Vec<(usize, u64)> = primary.out.iter().copied().enumerate().collect();
    assert_eq!(released, expected, "every output once, in order");
    assert_eq!(rec.buffered_bytes(), 0);
    (forced, at_exit, primary.out.len())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn replay_reproduces_the_primary(
        seed in any::<u64>(),
        steps in 1usize..2000,
        event_rate in 0u8..128,
        frame_bytes in 1usize..600,
    ) {
        run(&Plan { seed, steps, event_rate, frame_bytes });
    }
}

#[test]
fn a_long_run_with_many_events() {
    let (forced, at_exit, outputs) = run(&Plan {
        seed: 0x1234_5678,
        steps: 50_000,
        event_rate: 64,
        frame_bytes: 400,
    });
    // The run exercised both kinds of landmark and the gate.
    assert!(
        forced > 1000 && at_exit > 100 && outputs > 0,
        "{forced} {at_exit} {outputs}"
    );
}

/// A corrupted value in a log frame is not something the codec can catch
/// (any 64-bit value is valid; the channel's AEAD catches it on the wire):
/// the replay then either reports a divergence or ends in another state,
/// never silently in the same one with a different input.
#[test]
fn a_corrupted_input_value_shows_as_another_state() {
    let mut rec = Recorder::new(1 << 20);
    rec.record(
        Record::Input {
            exits: 1,
            input: Input::Rdtsc,
            value: [5, 0],
        },
        0,
    );
    rec.record(Record::Horizon { exits: 1 }, 0);
    let (ty, mut p) = encode(&rec.take_frame(1000).unwrap());
    // The value's first byte (version 2, first 8, n 4, tag 1, exits 8,
    // kind 1, a 8, b 4).
    p[2 + 8 + 4 + 1 + 8 + 1 + 8 + 4] ^= 1;
    let Ok(Frame::Log { first, records }) = decode(ty, &p) else {
        panic!()
    };
    let mut rep = Replayer::new();
    rep.push(first, records).unwrap();
    rep.on_exit();
    assert_eq!(rep.input(Input::Rdtsc), Ok([4, 0]));
}
