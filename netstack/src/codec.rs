//! Sans-IO codec for an encrypted, authenticated host-to-host message channel
//! over TCP.
//!
//! The channel carries the fault-tolerance log and live-migration streams
//! (guest RAM, vCPU registers, device state) between two hypervisor hosts that
//! share a pre-shared [`Key`]. Every message is encrypted and authenticated
//! with ChaCha20-Poly1305 under a per-direction session key, carries a
//! sequence number, and anything forged, corrupted, replayed, reordered,
//! reflected or truncated is rejected with a precise [`ChannelError`].
//!
//! The codec does no I/O: the caller feeds it the bytes it received and sends
//! the bytes it produces.
//!
//! # Handshake
//!
//! All handshake messages have a fixed size, so there is no framing ambiguity.
//! Integers are little-endian.
//!
//! | Message     | Direction       | Size | Layout                                                                                   |
//! |-------------|-----------------|-----:|------------------------------------------------------------------------------------------|
//! | `Hello`     | client → server |   44 | `"HVCH"` · version u16 · flags u16 (0) · nonce_c \[32\] · max_payload u32                  |
//! | `Challenge` | server → client |   76 | `"HVCS"` · version u16 · status u16 · nonce_s \[32\] · max_payload u32 · mac_s \[32\]       |
//! | `Auth`      | client → server |   36 | `"HVCA"` · mac_c \[32\]                                                                   |
//!
//! * `status`: 0 = ok, 1 = version not supported.
//! * `mac_s = HMAC-SHA-256(psk, "hv server" ‖ Hello ‖ Challenge[..44])`
//! * `mac_c = HMAC-SHA-256(psk, "hv client" ‖ Hello ‖ Challenge)`
//! * `k_c2s = HMAC-SHA-256(psk, "hv c2s" ‖ nonce_c ‖ nonce_s)`,
//!   `k_s2c = HMAC-SHA-256(psk, "hv s2c" ‖ nonce_c ‖ nonce_s)`: 32-byte
//!   ChaCha20-Poly1305 keys.
//!
//! The client seals with `k_c2s` and opens with `k_s2c`; the server does the
//! opposite, so a frame reflected back to its sender fails authentication.
//! Each side's [`Sealer`] limits payloads to the `max_payload` announced by the
//! *peer*; each [`Opener`] enforces its *own* `max_payload`.
//!
//! Version 1 of this protocol authenticated frames with HMAC-SHA-256 but sent
//! them in clear. A version-2 side refuses a version-1 peer in the handshake
//! (before any frame flows) with [`ChannelError::Version`]; there is no
//! fallback. The version fields are covered by `mac_s`/`mac_c`, so they cannot
//! be altered in a handshake that succeeds. A refusal is not authenticated
//! (the client stops at the version, before the MAC): a man in the middle can
//! fake one, just as it can reset the connection.
//!
//! # Data frames
//!
//! | Offset        | Size | Field                                                   |
//! |---------------|-----:|---------------------------------------------------------|
//! | 0             |    4 | `len`: payload length, u32 (clear, authenticated)       |
//! | 4             |    8 | `seq`: sequence number, u64 (clear, authenticated)      |
//! | 12            |    1 | `ty`: [`FrameType`] (encrypted)                         |
//! | 13            | len  | payload (encrypted)                                     |
//! | 13 + len      |   16 | `tag`: Poly1305 authentication tag                      |
//!
//! `ty ‖ payload` is encrypted with ChaCha20-Poly1305 (RFC 8439) under the
//! direction's key, with the 12-byte header as associated data and the nonce
//! `[0; 4] ‖ seq` (u64 little-endian). A frame is [`Sealer::overhead`] = 29
//! bytes longer than its payload. Only the length and the sequence number are
//! visible on the wire: the length so that the receiver can refuse an oversized
//! frame from its header alone, before buffering it; the sequence number so
//! that it can tell a replayed frame from one that arrived early.
//!
//! **Nonces never repeat under a key.** Each session derives fresh keys from
//! both sides' random handshake nonces, each direction has its own key, and
//! within a direction the sequence number starts at 0 and increases by one per
//! frame. A [`Sealer`] refuses to seal once the sequence number would have to
//! wrap ([`ChannelError::SequenceExhausted`]) and cannot be cloned, so no two
//! frames are ever sealed under the same key and nonce.
//!
//! Frame types `0..=15` are reserved for the codec; only [`TYPE_CLOSE`]
//! (a clean end of stream with an empty payload) is exposed.
//!
//! # Key material
//!
//! [`Key`] wipes its bytes when dropped (clones too). The [`Handshake`] keeps
//! the PSK only as an HMAC state, the [`Sealer`] and [`Opener`] only their
//! ChaCha20-Poly1305 key; all of these, the derived session keys and the
//! per-frame ChaCha20 and Poly1305 states are wiped when dropped (`zeroize`).
//! The cipher object is built once per direction and kept; sealing or opening
//! a frame clones no key object. Not covered: temporaries that the compiler
//! or the `hmac` crate leave on the stack while keying (e.g. HMAC's padded
//! key block, once per handshake).

use alloc::vec::Vec;
use core::fmt;

use chacha20poly1305::{AeadInOut, ChaCha20Poly1305, KeyInit as _};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

type HmacSha256 = Hmac<Sha256>;

/// Version of the channel protocol spoken by this codec (2: encrypted frames).
pub const PROTOCOL_VERSION: u16 = 2;
/// Length of the Poly1305 authentication tag that ends every frame.
pub const TAG_LEN: usize = 16;
/// Length of a data frame's clear header (`len` u32, `seq` u64).
pub const HEADER_LEN: usize = 12;
/// Length of the encrypted frame type that precedes the payload.
const TYPE_LEN: usize = 1;
/// A sensible default for the largest payload a side accepts (1 MiB).
pub const DEFAULT_MAX_PAYLOAD: u32 = 1 << 20;

/// The type of a data frame. Values `0..=15` are reserved for the codec.
pub type FrameType = u8;
/// Reserved frame type marking a clean close of the stream (empty payload).
pub const TYPE_CLOSE: FrameType = 1;
/// The smallest frame type available to callers.
pub const FIRST_USER_TYPE: FrameType = 16;

/// Size of the client's `Hello` message.
pub const HELLO_LEN: usize = 44;
/// Size of the server's `Challenge` message.
pub const CHALLENGE_LEN: usize = 76;
/// Size of the client's `Auth` message.
pub const AUTH_LEN: usize = 36;

/// Length of the HMAC-SHA-256 codes of the handshake (and of a session key).
const MAC_LEN: usize = 32;

const MAGIC_HELLO: &[u8; 4] = b"HVCH";
const MAGIC_CHALLENGE: &[u8; 4] = b"HVCS";
const MAGIC_AUTH: &[u8; 4] = b"HVCA";

const STATUS_OK: u16 = 0;
const STATUS_VERSION: u16 = 1;

/// Offset of `mac_s` inside a `Challenge`.
const CHALLENGE_MAC_OFF: usize = CHALLENGE_LEN - MAC_LEN;

const MIN_KEY: usize = 16;
const MAX_KEY: usize = 64;

/// Total length of the frame whose header starts `buf`, or `None` while fewer
/// than [`HEADER_LEN`] bytes are there. It trusts the (not yet authenticated)
/// length field: use it to know how many bytes to wait for, never as proof.
pub fn frame_len(buf: &[u8]) -> Option<usize> {
    if buf.len() < HEADER_LEN {
        return None;
    }
    Some((u32_at(buf, 0) as usize).saturating_add(Sealer::overhead()))
}

// ---------------------------------------------------------------------------
// Key
// ---------------------------------------------------------------------------

/// Why a pre-shared key was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The key string was empty.
    #[error("the pre-shared key is empty")]
    Empty,
    /// The hex string has an odd number of digits.
    #[error("the pre-shared key has an odd number of hex digits ({0}); each byte needs two")]
    OddLength(usize),
    /// A character that is not a hex digit was found at byte position `pos`.
    #[error("the pre-shared key has a non-hex character at position {pos}")]
    NotHex {
        /// Byte offset of the offending character in the input string.
        pos: usize,
    },
    /// The key is shorter than 16 bytes.
    #[error("the pre-shared key is {bytes} bytes; it must be at least 16 bytes (32 hex digits)")]
    TooShort {
        /// Length of the rejected key in bytes.
        bytes: usize,
    },
    /// The key is longer than 64 bytes.
    #[error("the pre-shared key is {bytes} bytes; it must be at most 64 bytes (128 hex digits)")]
    TooLong {
        /// Length of the rejected key in bytes.
        bytes: usize,
    },
}

/// A pre-shared key of 16 to 64 bytes.
///
/// Its [`Debug`](fmt::Debug) output never shows the key material; use
/// [`Key::fingerprint`] to compare keys between hosts. Its bytes are wiped
/// when it is dropped; that holds for every clone too (the kernel keeps the
/// configured key and hands a clone to each channel it opens).
#[derive(Clone)]
pub struct Key {
    bytes: [u8; MAX_KEY],
    len: usize,
}

impl PartialEq for Key {
    fn eq(&self, other: &Key) -> bool {
        // Constant time in the key bytes: no early exit on the first difference.
        self.len == other.len
            && self
                .bytes
                .iter()
                .zip(other.bytes.iter())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }
}

impl Eq for Key {}

impl Drop for Key {
    fn drop(&mut self) {
        self.bytes.zeroize();
    }
}

impl ZeroizeOnDrop for Key {}

/// A handshake nonce from whatever entropy the caller has (RDRAND output,
/// TSC readings, a counter): SHA-256 of it, so that any input difference
/// gives an unrelated nonce.
pub fn derive_nonce(entropy: &[u8]) -> [u8; 32] {
    Sha256::new()
        .chain_update(b"hv nonce")
        .chain_update(entropy)
        .finalize()
        .into()
}

impl Key {
    /// Parses a key from hex digits (upper or lower case, no separators).
    pub fn from_hex(hex: &str) -> Result<Key, KeyError> {
        let digits = hex.as_bytes();
        if digits.is_empty() {
            return Err(KeyError::Empty);
        }
        if !digits.len().is_multiple_of(2) {
            return Err(KeyError::OddLength(digits.len()));
        }
        // Parsed straight into the key, so that its Drop wipes what was
        // parsed on every path, errors included.
        let mut key = Key {
            bytes: [0u8; MAX_KEY],
            len: 0,
        };
        for (i, pair) in digits.chunks_exact(2).enumerate() {
            let hi = hex_val(pair[0]).ok_or(KeyError::NotHex { pos: 2 * i })?;
            let lo = hex_val(pair[1]).ok_or(KeyError::NotHex { pos: 2 * i + 1 })?;
            if let Some(b) = key.bytes.get_mut(i) {
                *b = (hi << 4) | lo;
            }
        }
        Self::check_len(digits.len() / 2)?;
        key.len = digits.len() / 2;
        Ok(key)
    }

    /// Builds a key from raw bytes (16 to 64 of them).
    pub fn from_bytes(raw: &[u8]) -> Result<Key, KeyError> {
        if raw.is_empty() {
            return Err(KeyError::Empty);
        }
        Self::check_len(raw.len())?;
        let mut key = Key {
            bytes: [0u8; MAX_KEY],
            len: raw.len(),
        };
        key.bytes[..raw.len()].copy_from_slice(raw);
        Ok(key)
    }

    fn check_len(bytes: usize) -> Result<(), KeyError> {
        if bytes < MIN_KEY {
            Err(KeyError::TooShort { bytes })
        } else if bytes > MAX_KEY {
            Err(KeyError::TooLong { bytes })
        } else {
            Ok(())
        }
    }

    /// Length of the key in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always `false`: a key holds at least 16 bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// First 4 bytes of `SHA-256("hv key fingerprint" ‖ key)`: lets operators
    /// check that two hosts hold the same key without revealing it.
    pub fn fingerprint(&self) -> [u8; 4] {
        let digest = Sha256::new()
            .chain_update(b"hv key fingerprint")
            .chain_update(self.as_bytes())
            .finalize();
        [digest[0], digest[1], digest[2], digest[3]]
    }

    fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }

    fn hmac(&self) -> HmacSha256 {
        keyed(self.as_bytes())
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key(<redacted>, {} bytes)", self.len)
    }
}

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

fn keyed(key: &[u8]) -> HmacSha256 {
    // HMAC accepts keys of any length, so this cannot fail.
    match HmacSha256::new_from_slice(key) {
        Ok(mac) => mac,
        Err(_) => unreachable!("HMAC accepts keys of any length"),
    }
}

// The handshake MACs below start from a copy of the PSK's HMAC state: a few
// per handshake, none per frame. Each copy wipes itself when dropped.

fn mac_of(base: &HmacSha256, parts: &[&[u8]]) -> [u8; MAC_LEN] {
    let mut mac = base.clone();
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

/// Like [`mac_of`], for a secret: the result goes straight into `out`.
fn mac_into(base: &HmacSha256, parts: &[&[u8]], out: &mut [u8; MAC_LEN]) {
    let mut mac = base.clone();
    for part in parts {
        mac.update(part);
    }
    let tag = mac.finalize();
    out.copy_from_slice(tag.as_bytes());
}

fn verify(base: &HmacSha256, parts: &[&[u8]], tag: &[u8]) -> bool {
    let mut mac = base.clone();
    for part in parts {
        mac.update(part);
    }
    mac.verify_slice(tag).is_ok()
}

/// The session cipher of one direction, keyed with
/// `HMAC(psk, label ‖ nonce_c ‖ nonce_s)`.
fn session_cipher(
    psk: &HmacSha256,
    label: &[u8],
    nonce_c: &[u8; 32],
    nonce_s: &[u8; 32],
) -> ChaCha20Poly1305 {
    let mut key = Zeroizing::new([0u8; MAC_LEN]);
    mac_into(psk, &[label, nonce_c, nonce_s], &mut key);
    ChaCha20Poly1305::new((&*key).into())
}

/// The AEAD nonce of frame `seq`: `[0; 4] ‖ seq` (little-endian).
fn aead_nonce(seq: u64) -> chacha20poly1305::Nonce {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&seq.to_le_bytes());
    n.into()
}

fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes([b[off], b[off + 1]])
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[off..off + 8]);
    u64::from_le_bytes(v)
}

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

/// Everything that can go wrong on a channel.
///
/// Once a [`Handshake`] or [`Opener`] has reported an error it is poisoned and
/// reports the same error on every later call: the stream must be dropped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChannelError {
    /// A frame (or a payload to seal) is larger than the agreed limit.
    #[error("frame of {len} bytes exceeds the {max}-byte limit")]
    Oversized {
        /// Announced or requested payload length.
        len: u64,
        /// The limit in force.
        max: u32,
    },
    /// The stream ended in the middle of a frame.
    #[error("stream ended inside a frame ({have} of {need} bytes)")]
    Truncated {
        /// Bytes of the partial frame that were received.
        have: usize,
        /// Bytes needed for the frame (or its header, if that was incomplete).
        need: usize,
    },
    /// A frame did not decrypt: its header, ciphertext or tag was altered,
    /// or it was sealed under another key (another session, the other
    /// direction).
    #[error("frame {seq}: authentication failed (corrupted or forged)")]
    BadMac {
        /// Sequence number claimed by the (unauthenticated) header.
        seq: u64,
    },
    /// An authentic frame was received again.
    #[error("frame {got} replayed (expected frame {expected})")]
    Replayed {
        /// Sequence number in the frame.
        got: u64,
        /// Sequence number that was expected.
        expected: u64,
    },
    /// An authentic frame arrived ahead of its predecessors (frames were lost or reordered).
    #[error(
        "frame {got} arrived out of order (expected frame {expected}); frames were lost or reordered"
    )]
    OutOfOrder {
        /// Sequence number in the frame.
        got: u64,
        /// Sequence number that was expected.
        expected: u64,
    },
    /// The peer's handshake message did not start with the expected magic.
    #[error("not a channel peer (bad handshake magic)")]
    BadMagic,
    /// The two sides speak different protocol versions.
    #[error(
        "protocol version mismatch: we speak version {ours}, the peer speaks version {theirs}{}",
        version_hint(*.ours, *.theirs)
    )]
    Version {
        /// Our protocol version.
        ours: u16,
        /// The peer's protocol version.
        theirs: u16,
    },
    /// The peer could not prove that it holds our pre-shared key.
    #[error("authentication failed: the peer does not hold our key (compare key fingerprints)")]
    WrongKey,
    /// A reserved frame type (below 16) was sealed or received.
    #[error("frame type {0} is reserved for the channel codec (user types start at 16)")]
    ReservedType(u8),
    /// The server's Challenge carried a status code this codec does not know.
    #[error("the peer rejected the handshake with unknown status {0}")]
    BadStatus(u16),
    /// The stream ended before the handshake completed.
    #[error("stream ended during the channel handshake")]
    HandshakeTruncated,
    /// Data arrived after the peer's close frame.
    #[error("data received after the peer closed the channel")]
    DataAfterClose,
    /// The sequence numbers of this direction are used up: sealing another
    /// frame would reuse a nonce. Open a new channel (new session keys).
    #[error("no sequence numbers left for this session (2^64 - 1 frames sealed); reconnect")]
    SequenceExhausted,
}

/// What the operator should do about a version mismatch.
fn version_hint(ours: u16, theirs: u16) -> &'static str {
    match theirs {
        1 => " (version 1 sends frames in clear; upgrade the peer)",
        t if t < ours => " (upgrade the peer)",
        t if t > ours => " (upgrade this host)",
        _ => " (yet it refused ours)",
    }
}

// ---------------------------------------------------------------------------
// Handshake
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum State {
    /// Client: Hello sent, waiting for the Challenge.
    ClientAwaitChallenge,
    /// Server: waiting for the Hello.
    ServerAwaitHello,
    /// Server: Challenge sent, waiting for the Auth.
    ServerAwaitAuth,
    /// Handshake complete.
    Done,
}

/// The sans-IO handshake of one side of a channel.
///
/// Create it with [`Handshake::client`] or [`Handshake::server`], then loop:
/// send [`Handshake::take_output`], [`Handshake::feed`] received bytes, until
/// [`Handshake::is_done`]; finally split it with [`Handshake::into_session`].
pub struct Handshake {
    /// The PSK as a keyed HMAC state: key material, wiped when dropped.
    psk: HmacSha256,
    is_client: bool,
    state: State,
    nonce: [u8; 32],
    max_payload: u32,
    peer_max: u32,
    peer_nonce: [u8; 32],
    hello: [u8; HELLO_LEN],
    challenge: [u8; CHALLENGE_LEN],
    rx: Vec<u8>,
    out: Vec<u8>,
    error: Option<ChannelError>,
}

impl fmt::Debug for Handshake {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handshake")
            .field("role", &if self.is_client { "client" } else { "server" })
            .field("state", &self.state)
            .field("max_payload", &self.max_payload)
            .field("pending_output", &self.out.len())
            .field("error", &self.error)
            .finish_non_exhaustive()
    }
}

impl Handshake {
    /// Starts the client side. The `Hello` is queued at once.
    ///
    /// `nonce` must be fresh random bytes; `max_payload` is the largest payload
    /// this side will accept.
    pub fn client(key: &Key, nonce: [u8; 32], max_payload: u32) -> Self {
        let mut hs = Self::new(key, nonce, max_payload, true, State::ClientAwaitChallenge);
        let mut hello = [0u8; HELLO_LEN];
        hello[0..4].copy_from_slice(MAGIC_HELLO);
        hello[4..6].copy_from_slice(&PROTOCOL_VERSION.to_le_bytes());
        hello[6..8].copy_from_slice(&0u16.to_le_bytes());
        hello[8..40].copy_from_slice(&nonce);
        hello[40..44].copy_from_slice(&max_payload.to_le_bytes());
        hs.hello = hello;
        hs.out.extend_from_slice(&hello);
        hs
    }

    /// Starts the server side; it waits for the client's `Hello`.
    ///
    /// `nonce` must be fresh random bytes; `max_payload` is the largest payload
    /// this side will accept.
    pub fn server(key: &Key, nonce: [u8; 32], max_payload: u32) -> Self {
        Self::new(key, nonce, max_payload, false, State::ServerAwaitHello)
    }

    fn new(key: &Key, nonce: [u8; 32], max_payload: u32, is_client: bool, state: State) -> Self {
        Handshake {
            psk: key.hmac(),
            is_client,
            state,
            nonce,
            max_payload,
            peer_max: 0,
            peer_nonce: [0; 32],
            hello: [0; HELLO_LEN],
            challenge: [0; CHALLENGE_LEN],
            rx: Vec::with_capacity(CHALLENGE_LEN),
            out: Vec::new(),
            error: None,
        }
    }

    /// Bytes to send now (drains the queue; empty if none).
    ///
    /// Output queued before an error (such as the server's "version not
    /// supported" Challenge) is still returned, so the peer learns why.
    pub fn take_output(&mut self) -> Vec<u8> {
        core::mem::take(&mut self.out)
    }

    /// Feeds received bytes and returns how many were consumed.
    ///
    /// It never consumes bytes past the last handshake message: data frames
    /// that follow in the same TCP segment must be passed to the [`Opener`].
    /// After an error every later call returns the same error.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<usize, ChannelError> {
        if let Some(e) = &self.error {
            return Err(e.clone());
        }
        match self.feed_inner(bytes) {
            Ok(n) => Ok(n),
            Err(e) => {
                log::warn!("channel handshake failed: {e}");
                self.error = Some(e.clone());
                Err(e)
            }
        }
    }

    fn feed_inner(&mut self, bytes: &[u8]) -> Result<usize, ChannelError> {
        let mut consumed = 0;
        while self.state != State::Done && consumed < bytes.len() {
            let (want, magic) = match self.state {
                State::ClientAwaitChallenge => (CHALLENGE_LEN, MAGIC_CHALLENGE),
                State::ServerAwaitHello => (HELLO_LEN, MAGIC_HELLO),
                State::ServerAwaitAuth => (AUTH_LEN, MAGIC_AUTH),
                State::Done => break,
            };
            let take = (want - self.rx.len()).min(bytes.len() - consumed);
            self.rx.extend_from_slice(&bytes[consumed..consumed + take]);
            consumed += take;
            // Reject a stranger at its first wrong byte.
            let m = self.rx.len().min(magic.len());
            if self.rx[..m] != magic[..m] {
                return Err(ChannelError::BadMagic);
            }
            if self.rx.len() == want {
                let msg = core::mem::take(&mut self.rx);
                match self.state {
                    State::ClientAwaitChallenge => self.on_challenge(&msg)?,
                    State::ServerAwaitHello => self.on_hello(&msg)?,
                    State::ServerAwaitAuth => self.on_auth(&msg)?,
                    State::Done => {}
                }
                self.rx = msg;
                self.rx.clear();
            }
        }
        Ok(consumed)
    }

    fn on_hello(&mut self, msg: &[u8]) -> Result<(), ChannelError> {
        self.hello.copy_from_slice(msg);
        let theirs = u16_at(msg, 4);
        self.peer_nonce.copy_from_slice(&msg[8..40]);
        self.peer_max = u32_at(msg, 40);
        let status = if theirs == PROTOCOL_VERSION {
            STATUS_OK
        } else {
            STATUS_VERSION
        };

        let mut ch = [0u8; CHALLENGE_LEN];
        ch[0..4].copy_from_slice(MAGIC_CHALLENGE);
        ch[4..6].copy_from_slice(&PROTOCOL_VERSION.to_le_bytes());
        ch[6..8].copy_from_slice(&status.to_le_bytes());
        ch[8..40].copy_from_slice(&self.nonce);
        ch[40..44].copy_from_slice(&self.max_payload.to_le_bytes());
        let mac = mac_of(
            &self.psk,
            &[b"hv server", &self.hello, &ch[..CHALLENGE_MAC_OFF]],
        );
        ch[CHALLENGE_MAC_OFF..].copy_from_slice(&mac);
        self.challenge = ch;
        self.out.extend_from_slice(&ch);

        if status != STATUS_OK {
            return Err(ChannelError::Version {
                ours: PROTOCOL_VERSION,
                theirs,
            });
        }
        self.state = State::ServerAwaitAuth;
        Ok(())
    }

    fn on_challenge(&mut self, msg: &[u8]) -> Result<(), ChannelError> {
        let theirs = u16_at(msg, 4);
        let status = u16_at(msg, 6);
        if status == STATUS_VERSION || theirs != PROTOCOL_VERSION {
            return Err(ChannelError::Version {
                ours: PROTOCOL_VERSION,
                theirs,
            });
        }
        if status != STATUS_OK {
            return Err(ChannelError::BadStatus(status));
        }
        let tag = &msg[CHALLENGE_MAC_OFF..];
        if !verify(
            &self.psk,
            &[b"hv server", &self.hello, &msg[..CHALLENGE_MAC_OFF]],
            tag,
        ) {
            return Err(ChannelError::WrongKey);
        }
        self.challenge.copy_from_slice(msg);
        self.peer_nonce.copy_from_slice(&msg[8..40]);
        self.peer_max = u32_at(msg, 40);

        let mac = mac_of(&self.psk, &[b"hv client", &self.hello, &self.challenge]);
        self.out.extend_from_slice(MAGIC_AUTH);
        self.out.extend_from_slice(&mac);
        self.state = State::Done;
        Ok(())
    }

    fn on_auth(&mut self, msg: &[u8]) -> Result<(), ChannelError> {
        if !verify(
            &self.psk,
            &[b"hv client", &self.hello, &self.challenge],
            &msg[4..],
        ) {
            return Err(ChannelError::WrongKey);
        }
        self.state = State::Done;
        Ok(())
    }

    /// `true` once the handshake has completed successfully.
    ///
    /// The client is done as soon as it has verified the server and queued its
    /// `Auth` (send [`Handshake::take_output`] before any data frames).
    pub fn is_done(&self) -> bool {
        self.state == State::Done && self.error.is_none()
    }

    /// The error that poisoned this handshake, if any.
    pub fn error(&self) -> Option<&ChannelError> {
        self.error.as_ref()
    }

    /// Call when the stream ended: `Ok` if the handshake had completed,
    /// otherwise the poisoning error or [`ChannelError::HandshakeTruncated`].
    pub fn at_eof(&self) -> Result<(), ChannelError> {
        if let Some(e) = &self.error {
            Err(e.clone())
        } else if self.state == State::Done {
            Ok(())
        } else {
            Err(ChannelError::HandshakeTruncated)
        }
    }

    /// After [`Handshake::is_done`]: the sending and receiving halves of the
    /// session. `None` if the handshake is not (successfully) complete.
    ///
    /// Any output still queued is discarded, so call
    /// [`Handshake::take_output`] first.
    pub fn into_session(self) -> Option<(Sealer, Opener)> {
        if !self.is_done() {
            return None;
        }
        let (nonce_c, nonce_s) = if self.is_client {
            (&self.nonce, &self.peer_nonce)
        } else {
            (&self.peer_nonce, &self.nonce)
        };
        let c2s = session_cipher(&self.psk, b"hv c2s", nonce_c, nonce_s);
        let s2c = session_cipher(&self.psk, b"hv s2c", nonce_c, nonce_s);
        let (seal_key, open_key) = if self.is_client {
            (c2s, s2c)
        } else {
            (s2c, c2s)
        };
        Some((
            Sealer {
                aead: seal_key,
                seq: 0,
                max_payload: self.peer_max,
            },
            Opener {
                aead: open_key,
                seq: 0,
                max_payload: self.max_payload,
                plain: Vec::new(),
                error: None,
                closed: false,
            },
        ))
    }
}

// ---------------------------------------------------------------------------
// Data frames
// ---------------------------------------------------------------------------

/// The sending half of a session: turns payloads into encrypted frames.
///
/// It cannot be cloned: two copies would seal different frames under the same
/// key and sequence number, i.e. reuse a nonce.
pub struct Sealer {
    /// ChaCha20-Poly1305 under this direction's key (wiped when dropped).
    aead: ChaCha20Poly1305,
    seq: u64,
    max_payload: u32,
}

impl fmt::Debug for Sealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sealer")
            .field("next_seq", &self.seq)
            .field("max_payload", &self.max_payload)
            .finish_non_exhaustive()
    }
}

impl Sealer {
    /// Appends one frame of type `ty` carrying `payload` to `out`.
    ///
    /// Errors: [`ChannelError::Oversized`] if `payload` exceeds the limit the
    /// peer announced, [`ChannelError::ReservedType`] if `ty < 16`,
    /// [`ChannelError::SequenceExhausted`] after 2^64 - 1 frames. On error
    /// nothing is appended and the sequence number is not consumed.
    pub fn seal(
        &mut self,
        ty: FrameType,
        payload: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), ChannelError> {
        if ty < FIRST_USER_TYPE {
            return Err(ChannelError::ReservedType(ty));
        }
        if payload.len() as u64 > u64::from(self.max_payload) {
            return Err(ChannelError::Oversized {
                len: payload.len() as u64,
                max: self.max_payload,
            });
        }
        self.seal_unchecked(ty, payload, out)
    }

    /// Appends a [`TYPE_CLOSE`] frame (empty payload) to `out`: a clean end of
    /// stream that the peer can tell apart from a truncated connection.
    ///
    /// Appends nothing once the sequence numbers are exhausted (the peer then
    /// sees the connection end without a close frame).
    pub fn seal_close(&mut self, out: &mut Vec<u8>) {
        if let Err(e) = self.seal_unchecked(TYPE_CLOSE, &[], out) {
            log::warn!("channel: no close frame: {e}");
        }
    }

    fn seal_unchecked(
        &mut self,
        ty: FrameType,
        payload: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), ChannelError> {
        // u64::MAX itself is never used, so the counter never wraps.
        if self.seq == u64::MAX {
            return Err(ChannelError::SequenceExhausted);
        }
        let mut header = [0u8; HEADER_LEN];
        // The length fits: it is at most `max_payload`, a u32.
        header[0..4].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        header[4..12].copy_from_slice(&self.seq.to_le_bytes());
        let start = out.len();
        out.reserve(payload.len() + Self::overhead());
        out.extend_from_slice(&header);
        out.push(ty);
        out.extend_from_slice(payload);
        let body = &mut out[start + HEADER_LEN..];
        match self
            .aead
            .encrypt_inout_detached(&aead_nonce(self.seq), &header, body.into())
        {
            Ok(tag) => out.extend_from_slice(&tag),
            Err(_) => {
                // Only for messages of 256 GiB and more: unreachable with a
                // u32 length, but leave nothing behind if it happens.
                out.truncate(start);
                return Err(ChannelError::Oversized {
                    len: payload.len() as u64,
                    max: self.max_payload,
                });
            }
        }
        self.seq += 1;
        Ok(())
    }

    /// Sequence number of the next frame to be sealed.
    pub fn next_seq(&self) -> u64 {
        self.seq
    }

    /// Largest payload the peer accepts.
    pub fn max_payload(&self) -> u32 {
        self.max_payload
    }

    /// Bytes a frame adds around its payload: the clear header, the encrypted
    /// type byte and the tag (`HEADER_LEN + 1 + TAG_LEN` = 29).
    pub const fn overhead() -> usize {
        HEADER_LEN + TYPE_LEN + TAG_LEN
    }
}

/// One authenticated, decrypted frame, borrowing its payload from the
/// [`Opener`] that decoded it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    /// Frame type; [`TYPE_CLOSE`] means the peer closed the stream cleanly.
    pub ty: FrameType,
    /// Sequence number (0 for the first frame in each direction).
    pub seq: u64,
    /// The payload.
    pub payload: &'a [u8],
}

/// The receiving half of a session: authenticates, decrypts and orders frames.
///
/// A clone shares nothing with the original (and wipes its own copy of the
/// key when dropped); it is meant for tests and diagnostics.
#[derive(Clone)]
pub struct Opener {
    /// ChaCha20-Poly1305 under this direction's key (wiped when dropped).
    aead: ChaCha20Poly1305,
    seq: u64,
    max_payload: u32,
    /// `ty ‖ payload` of the last frame, decrypted; reused for every frame.
    plain: Vec<u8>,
    error: Option<ChannelError>,
    closed: bool,
}

impl fmt::Debug for Opener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Opener")
            .field("next_seq", &self.seq)
            .field("max_payload", &self.max_payload)
            .field("closed", &self.closed)
            .field("error", &self.error)
            .finish_non_exhaustive()
    }
}

impl Opener {
    /// Decodes the first frame at the start of `buf`.
    ///
    /// Returns `Ok(None)` if more bytes are needed, or `Ok(Some((frame,
    /// consumed)))`; the frame's payload is decrypted into a buffer inside the
    /// Opener and borrowed from there until the next call. An oversized frame
    /// is reported as soon as its 12-byte header is present. Checks run in
    /// this order: length limit, authentication (decryption with the nonce of
    /// the header's sequence number), sequence number, frame type. After any
    /// error the Opener is poisoned and every later call returns the same
    /// error.
    pub fn decode<'a>(
        &'a mut self,
        buf: &[u8],
    ) -> Result<Option<(Frame<'a>, usize)>, ChannelError> {
        if let Some(e) = &self.error {
            return Err(e.clone());
        }
        match self.decode_inner(buf) {
            Ok(None) => Ok(None),
            Ok(Some((ty, seq, consumed))) => Ok(Some((
                Frame {
                    ty,
                    seq,
                    payload: &self.plain[TYPE_LEN..],
                },
                consumed,
            ))),
            Err(e) => {
                log::warn!("channel stream rejected: {e}");
                self.error = Some(e.clone());
                Err(e)
            }
        }
    }

    /// Decrypts the first frame of `buf` into `self.plain`: its type, its
    /// sequence number and the bytes it took.
    fn decode_inner(
        &mut self,
        buf: &[u8],
    ) -> Result<Option<(FrameType, u64, usize)>, ChannelError> {
        if self.closed && !buf.is_empty() {
            return Err(ChannelError::DataAfterClose);
        }
        if buf.len() < HEADER_LEN {
            return Ok(None);
        }
        let len = u32_at(buf, 0);
        let seq = u64_at(buf, 4);
        if len > self.max_payload {
            return Err(ChannelError::Oversized {
                len: u64::from(len),
                max: self.max_payload,
            });
        }
        let body_end = HEADER_LEN + TYPE_LEN + len as usize;
        let total = body_end + TAG_LEN;
        if buf.len() < total {
            return Ok(None);
        }
        let (header, rest) = buf[..total].split_at(HEADER_LEN);
        let (body, tag) = rest.split_at(TYPE_LEN + len as usize);
        let Ok(tag) = <&chacha20poly1305::Tag>::try_from(tag) else {
            unreachable!("the tag slice is TAG_LEN bytes");
        };
        self.plain.clear();
        self.plain.extend_from_slice(body);
        // The tag is checked before anything is decrypted: on failure
        // `plain` holds only ciphertext.
        if self
            .aead
            .decrypt_inout_detached(
                &aead_nonce(seq),
                header,
                self.plain.as_mut_slice().into(),
                tag,
            )
            .is_err()
        {
            self.plain.clear();
            return Err(ChannelError::BadMac { seq });
        }
        if seq < self.seq {
            return Err(ChannelError::Replayed {
                got: seq,
                expected: self.seq,
            });
        }
        if seq > self.seq {
            return Err(ChannelError::OutOfOrder {
                got: seq,
                expected: self.seq,
            });
        }
        let ty = self.plain[0];
        if ty < FIRST_USER_TYPE && ty != TYPE_CLOSE {
            return Err(ChannelError::ReservedType(ty));
        }
        if ty == TYPE_CLOSE {
            if len != 0 {
                return Err(ChannelError::ReservedType(ty));
            }
            self.closed = true;
        }
        // An honest peer never seals u64::MAX, so this cannot overflow on an
        // authentic frame in order.
        self.seq = self.seq.saturating_add(1);
        Ok(Some((ty, seq, total)))
    }

    /// Call at end of stream with the bytes not yet consumed: `Ok` if there are
    /// none, otherwise [`ChannelError::Truncated`] where `need` is the full
    /// frame length if the header is complete, else [`HEADER_LEN`].
    pub fn at_eof(&self, leftover: &[u8]) -> Result<(), ChannelError> {
        if leftover.is_empty() {
            return Ok(());
        }
        Err(ChannelError::Truncated {
            have: leftover.len(),
            need: frame_len(leftover).unwrap_or(HEADER_LEN),
        })
    }

    /// `true` once a [`TYPE_CLOSE`] frame has been decoded.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Sequence number of the next expected frame.
    pub fn next_seq(&self) -> u64 {
        self.seq
    }

    /// Largest payload this side accepts.
    pub fn max_payload(&self) -> u32 {
        self.max_payload
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_parsing() {
        let k = Key::from_hex(&"aB".repeat(16)).unwrap();
        assert_eq!(k.as_bytes(), &[0xab; 16]);
        assert_eq!(hex_val(b'g'), None);
        assert_eq!(hex_val(b'F'), Some(15));
    }

    #[test]
    fn fingerprint_depends_on_key() {
        let a = Key::from_bytes(&[1; 16]).unwrap();
        let b = Key::from_bytes(&[2; 16]).unwrap();
        assert_ne!(a.fingerprint(), b.fingerprint());
        assert_eq!(a.fingerprint(), a.clone().fingerprint());
    }

    #[test]
    fn wire_sizes() {
        let k = Key::from_bytes(&[7; 32]).unwrap();
        let mut c = Handshake::client(&k, [1; 32], 100);
        assert_eq!(c.take_output().len(), HELLO_LEN);
        assert_eq!(Sealer::overhead(), 29);
        assert_eq!(frame_len(&[0; 11]), None);
        assert_eq!(frame_len(&[5, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]), Some(34));
        assert_eq!(
            frame_len(&[0xff; 12]),
            Some(u32::MAX as usize + Sealer::overhead())
        );
    }

    fn session(max: u32) -> ((Sealer, Opener), (Sealer, Opener)) {
        let k = Key::from_bytes(&[9; 32]).unwrap();
        let mut c = Handshake::client(&k, [1; 32], max);
        let mut s = Handshake::server(&k, [2; 32], max);
        s.feed(&c.take_output()).unwrap();
        c.feed(&s.take_output()).unwrap();
        s.feed(&c.take_output()).unwrap();
        (c.into_session().unwrap(), s.into_session().unwrap())
    }

    /// The frame layout and key derivation of the module documentation,
    /// recomputed from the primitives: what a second implementation would do.
    #[test]
    fn frame_matches_documented_layout() {
        let ((mut cs, _), (_, mut so)) = session(1000);
        let mut wire = Vec::new();
        cs.seal(FIRST_USER_TYPE, b"x", &mut wire).unwrap();
        cs.seal(200, b"hello", &mut wire).unwrap();
        let f1 = &wire[30..];
        assert_eq!(f1.len(), HEADER_LEN + 1 + 5 + TAG_LEN);
        assert_eq!(&f1[0..4], &5u32.to_le_bytes());
        assert_eq!(&f1[4..12], &1u64.to_le_bytes());

        let k: [u8; 32] = HmacSha256::new_from_slice(&[9; 32])
            .unwrap()
            .chain_update(b"hv c2s")
            .chain_update([1; 32])
            .chain_update([2; 32])
            .finalize()
            .into_bytes()
            .into();
        let aead = ChaCha20Poly1305::new((&k).into());
        let mut nonce = [0u8; 12];
        nonce[4..].copy_from_slice(&1u64.to_le_bytes());
        let mut body = f1[12..18].to_vec();
        let tag = <&chacha20poly1305::Tag>::try_from(&f1[18..]).unwrap();
        aead.decrypt_inout_detached(&nonce.into(), &f1[..12], body.as_mut_slice().into(), tag)
            .unwrap();
        assert_eq!(body, b"\xc8hello");

        let (f, n) = so.decode(&wire).unwrap().unwrap();
        assert_eq!((f.ty, f.payload, n), (FIRST_USER_TYPE, &b"x"[..], 30));
        let (f, _) = so.decode(&wire[30..]).unwrap().unwrap();
        assert_eq!((f.ty, f.seq, f.payload), (200, 1, &b"hello"[..]));
    }

    #[test]
    fn sequence_numbers_never_wrap() {
        let ((mut cs, _), (_, mut so)) = session(1000);
        cs.seq = u64::MAX - 1;
        so.seq = u64::MAX - 1;
        let mut wire = Vec::new();
        cs.seal(FIRST_USER_TYPE, b"last", &mut wire).unwrap();
        assert_eq!(cs.next_seq(), u64::MAX);
        let len = wire.len();
        assert_eq!(
            cs.seal(FIRST_USER_TYPE, b"one too many", &mut wire),
            Err(ChannelError::SequenceExhausted)
        );
        cs.seal_close(&mut wire);
        assert_eq!(wire.len(), len, "nothing appended");
        assert_eq!(cs.next_seq(), u64::MAX);
        let (f, n) = so.decode(&wire).unwrap().unwrap();
        assert_eq!((f.seq, f.payload, n), (u64::MAX - 1, &b"last"[..], len));
        assert!(
            ChannelError::SequenceExhausted
                .to_string()
                .contains("reconnect")
        );
    }

    #[test]
    fn nonce_is_seq_after_four_zero_bytes() {
        assert_eq!(
            aead_nonce(0x0102_0304_0506_0708).as_slice(),
            &[0, 0, 0, 0, 8, 7, 6, 5, 4, 3, 2, 1]
        );
    }

    /// Every holder of key material wipes it when dropped (checked at compile
    /// time: these bounds fail if a `zeroize` feature goes missing).
    #[test]
    fn key_material_is_zeroize_on_drop() {
        fn wiped<T: ZeroizeOnDrop>() {}
        wiped::<Key>();
        // `Hmac` has no marker, but its state is two SHA-256 cores and a block
        // buffer, which wipe themselves like `Sha256` does.
        wiped::<Sha256>();
        wiped::<ChaCha20Poly1305>();
        wiped::<Zeroizing<[u8; 32]>>();
    }

    #[test]
    fn failed_open_leaves_no_plaintext() {
        let ((mut cs, _), (_, mut so)) = session(1000);
        let mut wire = Vec::new();
        cs.seal(FIRST_USER_TYPE, &[0xaa; 100], &mut wire).unwrap();
        let last = wire.len() - 1;
        wire[last] ^= 1;
        assert_eq!(so.decode(&wire), Err(ChannelError::BadMac { seq: 0 }));
        assert!(so.plain.is_empty());
    }
}
