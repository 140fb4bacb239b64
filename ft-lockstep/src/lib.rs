//! Fault tolerance by record/replay (VMware FT's vLockstep), sans-IO.
//!
//! The primary runs a guest for real and records everything it observes
//! that is not a function of its own state ([`record`]); the log travels
//! to a secondary in frames ([`codec`]) that replays it with no input of
//! its own ([`replayer`]). Output leaves the primary only once the
//! secondary holds the log up to it ([`gate`]); a secondary that falls
//! behind slows the primary ([`lag`]). Each twin sends heartbeats and
//! declares the other lost after a silence ([`detector`]); who then runs
//! the guest is decided by a witness's test-and-set ([`witness`]). The
//! kernel feeds these engines from its exit handlers and its network turns.
//!
//! ```text
//!  primary                                        secondary
//!  Recorder::record (each input, event, check)
//!    |--- Log{first, records} ------------------->| Replayer::push
//!    |                                             | Replayer::next / input at each exit
//!    |<-- Ack{received, replayed, exits, checks} --| at once, and as the replay moves
//!  Recorder::on_ack, OutputGate::release(received)
//!    |<-- Heartbeat{seq} ------------------------->| both ways, every interval
//!    |--- End{reason} <-------------------------->| either side: protection ends
//!  silence past the timeout: Claim{vm, generation} at the witness; the
//!  first claimant runs the guest (the secondary after draining its log)
//! ```
#![cfg_attr(not(test), no_std)]
#![warn(missing_docs)]

extern crate alloc;

pub mod codec;
pub mod detector;
pub mod gate;
pub mod lag;
pub mod record;
pub mod recorder;
pub mod replayer;
pub mod witness;

pub use codec::{
    Ack, CodecError, FRAME_ACK, FRAME_ARBITER, FRAME_END, FRAME_HEARTBEAT, FRAME_LOG, Frame,
    decode, encode, record_len,
};
pub use detector::Detector;
pub use gate::OutputGate;
pub use lag::{LagController, LagStats};
pub use record::{Event, Input, Landmark, Record};
pub use recorder::{AckError, Recorder};
pub use replayer::{ReplayError, Replayer, Step};

/// The TCP port `ft listen` takes initial copies and logs on.
pub const DEFAULT_PORT: u16 = 7003;

/// The TCP port `ft witness` answers on.
pub const WITNESS_PORT: u16 = 7004;

/// The log format's version, the first field of every frame.
pub const VERSION: u16 = 1;

/// Bytes of log a primary keeps unreplayed before its guest waits.
pub const DEFAULT_BUFFER_BYTES: usize = 512 << 10;

/// Bytes of log (encoded) a secondary queues at most: twice what an
/// honest primary lets it hold. A primary that sends more is refused.
pub const MAX_QUEUED_BYTES: usize = 2 * DEFAULT_BUFFER_BYTES;

/// FNV-1a's 64-bit prime and offset basis, the mixing of [`Digest`].
const PRIME: u64 = 0x0000_0100_0000_01b3;
const BASIS: u64 = 0xcbf2_9ce4_8422_2325;

/// A 64-bit digest of a sequence of words: FNV-1a over 64-bit words with
/// a fold (a multiply, a shift and two xors each: it digests whole guest
/// RAM on an emulator),
/// with a final avalanche so nearby inputs differ in every bit. Not a
/// cryptographic hash: it detects divergence between two honest twins; the
/// channel's AEAD protects the log against everyone else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Digest(u64);

impl Default for Digest {
    fn default() -> Self {
        Digest::new()
    }
}

impl Digest {
    /// An empty digest.
    pub fn new() -> Digest {
        Digest(BASIS)
    }

    /// Adds one word. The fold of the high half into the low one before
    /// the multiply matters: with FNV's xor-then-multiply alone a change
    /// of bit 63 only ever reaches bit 63, so the same flip in two words
    /// cancels out.
    pub fn u64(&mut self, v: u64) {
        let x = self.0 ^ v;
        self.0 = (x ^ (x >> 32)).wrapping_mul(PRIME);
    }

    /// Adds bytes: little-endian words, the tail zero-padded, then the
    /// length (so a trailing zero byte is not the same as none).
    pub fn bytes(&mut self, b: &[u8]) {
        let mut chunks = b.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.u64(u64::from_le_bytes(w));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            self.u64(u64::from_le_bytes(w));
        }
        self.u64(b.len() as u64);
    }

    /// The digest so far.
    pub fn value(&self) -> u64 {
        // splitmix64's finaliser.
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// RFLAGS.RF: set by the replayer to step over a breakpoint; never part of
/// a landmark.
pub const RFLAGS_RF: u64 = 1 << 16;

/// The digest of a landmark: the 16 GPRs (in the caller's fixed order),
/// RIP and RFLAGS without RF.
pub fn gpr_digest(gprs: &[u64; 16], rip: u64, rflags: u64) -> u64 {
    let mut d = Digest::new();
    for &g in gprs {
        d.u64(g);
    }
    d.u64(rip);
    d.u64(rflags & !RFLAGS_RF);
    d.value()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_sees_every_word_order_and_length() {
        let mut a = Digest::new();
        a.bytes(&[1, 2, 3]);
        let mut b = Digest::new();
        b.bytes(&[1, 2, 3, 0]);
        assert_ne!(a.value(), b.value(), "a trailing zero counts");
        let mut c = Digest::new();
        c.u64(1);
        c.u64(2);
        let mut d = Digest::new();
        d.u64(2);
        d.u64(1);
        assert_ne!(c.value(), d.value(), "order counts");
        assert_eq!(Digest::new().value(), Digest::default().value());
        // The top bit flipped in two neighbouring words does not cancel.
        let mut e = Digest::new();
        e.u64(1 << 63);
        e.u64(1 << 63);
        let mut z = Digest::new();
        z.u64(0);
        z.u64(0);
        assert_ne!(e.value(), z.value());
    }

    #[test]
    fn gpr_digest_ignores_rf_only() {
        let g = [7u64; 16];
        assert_eq!(
            gpr_digest(&g, 1, 0x202),
            gpr_digest(&g, 1, 0x202 | RFLAGS_RF)
        );
        assert_ne!(gpr_digest(&g, 1, 0x202), gpr_digest(&g, 1, 0x203));
        assert_ne!(gpr_digest(&g, 1, 0x202), gpr_digest(&g, 2, 0x202));
        let mut h = g;
        h[15] = 8;
        assert_ne!(gpr_digest(&g, 1, 0x202), gpr_digest(&h, 1, 0x202));
    }
}
